// The chart's Ingress routes like the local ingress (deploy/local/nginx.conf.tmpl): both are
// parsed, each is matched the way its implementation matches (nginx's location selection; the
// Kubernetes Ingress Exact/Prefix rules), and every path that either names, plus variants around
// it, must reach the same service. /rpc/ must reach none.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { ROOT, render } from './lib.mjs';

const REQUIRED = ['secrets.db=mysql://u:p@h:3306/d', 'secrets.redisUrl=redis://:p@r:6379/0'];
// What answers a path that reaches no service: nginx's static root (or its return 404/301), the
// chart's web Deployment (the same files, the same 404 and 301).
const NONE = 'web-or-404';

/** The locations of the server block: [{modifier: '=', '^~', '~', '' , path, target}]. */
export function parseNginx(text) {
    const out = [];
    // a location's body may hold one level of blocks (if (...) { ... })
    const re = /location\s+(=|\^~|~\*|~)?\s*(\S+)\s*\{((?:[^{}]|\{[^{}]*\})*)\}/g;
    const named = {};
    const target = (body) => /proxy_pass\s+http:\/\/chatweb_(\w+)\s*;/.exec(body)?.[1] || NONE;
    for (const m of text.matchAll(re)) {
        // a named location (@x) is no route: a public location hands requests to it
        if (m[2].startsWith('@')) named[m[2]] = target(m[3]);
        else out.push({ modifier: m[1] || '', path: m[2], body: m[3] });
    }
    // A public location that hands (some) requests to a named one must reach the same service
    // both ways, or its route depends on the request.
    return out.map(({ modifier, path: p, body }) => {
        const own = target(body);
        const to = /error_page\s+418\s*=\s*(@\w+)\s*;/.exec(body)?.[1];
        return { modifier, path: p, target: to && named[to] !== own ? `${own} or ${named[to]}` : own };
    });
}

/** nginx: exact '=' first; else the longest prefix; '^~' stops there; else the first regex; else that prefix. */
export function nginxRoute(locs, uri) {
    const exact = locs.find((l) => l.modifier === '=' && l.path === uri);
    if (exact) return exact.target;
    let best = null;
    for (const l of locs)
        if ((l.modifier === '' || l.modifier === '^~') && uri.startsWith(l.path) && (!best || l.path.length > best.path.length)) best = l;
    if (best && best.modifier === '^~') return best.target;
    for (const l of locs)
        if ((l.modifier === '~' && new RegExp(l.path).test(uri)) || (l.modifier === '~*' && new RegExp(l.path, 'i').test(uri))) return l.target;
    return best ? best.target : NONE;
}

/** Kubernetes Ingress: an Exact match wins, else the longest Prefix match by path elements. */
export function ingressRoute(paths, uri) {
    const exact = paths.find((p) => p.pathType === 'Exact' && p.path === uri);
    if (exact) return exact.target;
    const elems = (p) => p.split('/').filter((e) => e !== '');
    const u = elems(uri);
    let best = null;
    for (const p of paths) {
        if (p.pathType !== 'Prefix') continue;
        const e = elems(p.path);
        if (e.length <= u.length && e.every((x, i) => x === u[i]) && (!best || e.length > best.len)) best = { len: e.length, target: p.target };
    }
    return best ? best.target : NONE;
}

function ingressPaths(docs) {
    const ing = docs.find((d) => d.kind === 'Ingress');
    return ing.spec.rules.flatMap((r) => r.http.paths.map((p) => {
        const svc = /^cw-chatweb-(\w+)$/.exec(p.backend.service.name)[1];
        return { path: p.path, pathType: p.pathType, target: svc === 'web' ? NONE : svc };
    }));
}

describe('Ingress routes == deploy/local/nginx.conf.tmpl routes', () => {
    const locs = parseNginx(fs.readFileSync(path.join(ROOT, 'deploy/local/nginx.conf.tmpl'), 'utf8'));
    const paths = ingressPaths(render([], REQUIRED));

    it('the parsers see the routes of both', () => {
        assert.deepEqual([...new Set(locs.map((l) => l.target))].sort(), ['auth', 'chat', 'proxy', NONE].sort());
        assert.deepEqual([...new Set(paths.map((p) => p.target))].sort(), ['auth', 'chat', 'proxy', NONE].sort());
        // The matchers agree with what the nginx template says in words.
        assert.equal(nginxRoute(locs, '/api/me/'), 'auth');
        assert.equal(nginxRoute(locs, '/api/mex'), 'chat');
        assert.equal(nginxRoute(locs, '/rpc/Billing/Reserve'), NONE);
        assert.equal(ingressRoute(paths, '/accounts/x'), 'auth');
        assert.equal(ingressRoute(paths, '/accountsx'), NONE);
    });

    it('every path either config names, and variants around it, reach the same service', () => {
        const seeds = new Set(['/', '/index.html', '/assets/app.js', '/rpc', '/rpc/', '/rpc/Auth/Authenticate',
            '/rpc/Billing/Reserve', '/api/', '/api/config', '/api/chat-process', '/api/unknown',
            '/v1/', '/v1/models', '/v1/chat/completions', '/admin', '/admin/', '/admin/index.html']);
        for (const w of ['session', 'verify', 'login', 'logout', 'me', 'conversations']) seeds.add(`/api/${w}`);
        for (const l of locs) if (l.modifier !== '~') seeds.add(l.path);
        for (const p of paths) seeds.add(p.path);
        const probes = new Set();
        for (const s of seeds) {
            const base = s.replace(/\/$/, '') || '/';
            for (const v of [s, base, `${base}/`, `${base}/x`, `${base}x`, `${base}/x/y`]) probes.add(v.replace(/^\/\//, '/'));
        }
        const differ = [];
        for (const p of [...probes].sort()) {
            const a = nginxRoute(locs, p);
            const b = ingressRoute(paths, p);
            if (a !== b) differ.push(`${p}: nginx ${a}, ingress ${b}`);
        }
        // The one difference Kubernetes path types force: a Prefix path also matches itself without
        // the trailing slash, so bare /api and /v1 reach chat and the proxy, which answer 404, where
        // nginx's "location /api/" leaves them to the static root's 404.
        assert.deepEqual(differ, ['/api: nginx web-or-404, ingress chat', '/v1: nginx web-or-404, ingress proxy']);
        assert.ok(probes.size > 100, `${probes.size} probes`);
    });

    it('no /rpc path reaches a service, in the default and the production render', () => {
        for (const docs of [render([], REQUIRED), render([path.join(ROOT, 'deploy/k8s/examples/production.yaml')])]) {
            const ps = ingressPaths(docs);
            for (const p of ['/rpc', '/rpc/', '/rpc/Auth/Authenticate', '/rpc/Billing/Settle', '/rpc/x/y'])
                assert.equal(ingressRoute(ps, p), NONE, p);
        }
    });
});
