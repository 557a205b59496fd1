// The HTTP limits every service has (common/http.c), checked on the two server modes: chat
// (event loops) and auth (worker pool). Huge headers, huge bodies, slow-loris clients and
// garbage must get a clear answer or a closed connection, and never hurt the next client.
import assert from 'node:assert/strict';
import net from 'node:net';
import { describe, it } from 'node:test';
import { postJSON, request, withStack } from './lib/harness.mjs';

/** Sends raw bytes, resolves with everything the server answered and how the socket ended. */
function raw(addr, bytes, { waitMs = 3000, halfClose = false } = {}) {
    const [host, port] = addr.split(':');
    return new Promise((resolve) => {
        const t0 = Date.now();
        const s = net.connect(Number(port), host);
        let data = '';
        let done = false;
        const finish = (how) => {
            if (done) return;
            done = true;
            clearTimeout(timer);
            s.destroy();
            resolve({ data, how, ms: Date.now() - t0 });
        };
        const timer = setTimeout(() => finish('timeout'), waitMs);
        s.on('connect', () => {
            if (bytes) s.write(bytes);
            if (halfClose) s.end();
        });
        s.on('data', (d) => { data += d; });
        s.on('end', () => finish('closed'));
        s.on('error', () => finish('error'));
    });
}

describe('HTTP limits on every service', () => {
    const stack = withStack({
        services: ['auth', 'billing', 'chat'],
        env: { HTTP_IDLE_TIMEOUT: '2', HTTP_MAX_BODY: '4096' },
    });
    const targets = () => [['chat', stack.services.chat[0].httpAddr, '/api/config'],
        ['auth', stack.services.auth[0].httpAddr, '/api/session']];

    it('a header block over HTTP_MAX_HEADER (16 KiB) is refused', async () => {
        for (const [name, addr, path] of targets()) {
            const big = `X-Big: ${'a'.repeat(20 * 1024)}\r\n`;
            const r = await raw(addr, `POST ${path} HTTP/1.1\r\nHost: x\r\n${big}Content-Length: 2\r\n\r\n{}`);
            assert.match(r.data, /^HTTP\/1\.1 4(31|13|00)/, `${name}: ${r.data.slice(0, 60)} (${r.how})`);
        }
    });

    it('a body over HTTP_MAX_BODY is a 413 in the route style, declared or chunked', async () => {
        for (const [name, addr, path] of targets()) {
            const r = await request(`http://${addr}${path}`, { method: 'POST', body: 'x'.repeat(8192) });
            assert.equal(r.status, 413, name);
            assert.equal(r.json().status, 'Fail', name);
            const chunked = await raw(addr, `POST ${path} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n` +
                `2000\r\n${'y'.repeat(0x2000)}\r\n0\r\n\r\n`);
            assert.match(chunked.data, /^HTTP\/1\.1 413/, `${name} chunked`);
        }
    });

    it('a slow-loris client is dropped after HTTP_IDLE_TIMEOUT', async () => {
        for (const [name, addr, path] of targets()) {
            const r = await raw(addr, `POST ${path} HTTP/1.1\r\nHost: x\r\n`, { waitMs: 8000 });
            assert.equal(r.how, 'closed', `${name}: ${r.how}`);
            assert.ok(r.ms >= 1500 && r.ms < 7000, `${name}: closed after ${r.ms} ms`);
        }
    });

    it('garbage and truncated requests get a 400 or a close, and the service keeps serving', async () => {
        const junk = ['\x00\x01\x02\xff\r\n\r\n', 'GET\r\n\r\n', 'POST / HTTP/9.9\r\n\r\n',
            'POST /api/config HTTP/1.1\r\nContent-Length: -5\r\n\r\n', 'POST /api/config HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n{}'];
        for (const [name, addr, path] of targets()) {
            for (const j of junk) {
                const r = await raw(addr, j, { waitMs: 4000, halfClose: true });
                assert.ok(r.how !== 'timeout' || r.data === '', `${name} ${JSON.stringify(j)}: ${r.how}`);
                if (r.data) assert.match(r.data, /^HTTP\/1\.[01] [45]\d\d/, `${name} ${JSON.stringify(j)}`);
            }
            const ok = await postJSON(`http://${addr}${path}`, {});
            assert.equal(ok.status, 200, `${name} still serves`);
        }
    });

    it('keep-alive connections serve many requests and carry the request id', async () => {
        const addr = stack.services.chat[0].httpAddr;
        const r = await request(`http://${addr}/api/config`, { method: 'POST', body: '{}', headers: { 'x-request-id': 'trace-123' } });
        assert.equal(r.headers['x-request-id'], 'trace-123');
        const bad = await request(`http://${addr}/api/config`, { method: 'POST', body: '{}', headers: { 'x-request-id': 'bad id with spaces' } });
        assert.match(bad.headers['x-request-id'], /^[0-9a-f]{32}$/, 'an unusable id is replaced');
    });
});

/** Splits a raw HTTP/1.1 answer into {status, headers (lower-case names), body}. */
function parseAnswer(data) {
    const i = data.indexOf('\r\n\r\n');
    const head = i < 0 ? data : data.slice(0, i);
    const headers = {};
    for (const line of head.split('\r\n').slice(1)) {
        const c = line.indexOf(':');
        if (c > 0) headers[line.slice(0, c).trim().toLowerCase()] = line.slice(c + 1).trim();
    }
    return { status: Number(/^HTTP\/1\.[01] (\d{3})/.exec(head)?.[1]) || 0, headers, body: i < 0 ? '' : data.slice(i + 4) };
}

/** '' when r is the error a route's clients read: the {status, message, data} envelope on /api
 * and /accounts, an OpenAI error object on /v1 (abuse_battery.test.mjs's shapes); else what is wrong. */
function routeShapeProblem(path, r) {
    if (!/^application\/json/.test(r.headers['content-type'] || '')) return `content-type ${r.headers['content-type']}`;
    let j;
    try {
        j = JSON.parse(r.body);
    } catch {
        return `not JSON: ${r.body.slice(0, 80)}`;
    }
    if (path.startsWith('/v1/')) {
        const e = j?.error;
        return typeof e?.message === 'string' && e.message !== '' && typeof e.type === 'string' && 'param' in e && 'code' in e
            && Object.keys(j).length === 1 ? '' : `not an OpenAI error object: ${r.body.slice(0, 80)}`;
    }
    return j?.status === 'Fail' && typeof j.message === 'string' && j.message !== '' && j.data === null
        && Object.keys(j).length === 3 ? '' : `not the envelope: ${r.body.slice(0, 80)}`;
}

// The ingress replaces any 431 a service sends with its own (deploy/local/nginx.conf.tmpl,
// "Answers nginx replaces"), so the tests through it never see the services' own: here each
// service is asked directly, on its HTTP port, the proxy with OPENAI_PROXY=true.
describe('a header block over HTTP_MAX_HEADER is a 431 in the route\'s shape, on each service', () => {
    const stack = withStack({ env: { OPENAI_PROXY: 'true', HTTP_MAX_HEADER: '16384' } });
    const ROUTES = [['auth', '/api/session'], ['auth', '/api/login'], ['auth', '/accounts'],
        ['chat', '/api/chat-process'], ['chat', '/api/config'],
        ['proxy', '/v1/chat/completions'], ['proxy', '/v1/models']];
    // one 20 KiB line, and 300 lines of 70 bytes (21 KiB) as nginx passes a large block on
    const BLOCKS = [['one line', `X-Big: ${'a'.repeat(20 * 1024)}\r\n`],
        ['many lines', Array.from({ length: 300 }, (_, i) => `X-L${i}: ${'v'.repeat(60)}\r\n`).join('')]];

    it('auth, chat and proxy answer 431 with the envelope on /api, an OpenAI error on /v1', async () => {
        const bad = [];
        for (const [svc, p] of ROUTES) {
            const addr = stack.services[svc][0].httpAddr;
            for (const [name, block] of BLOCKS) {
                const r = await raw(addr, `POST ${p} HTTP/1.1\r\nHost: x\r\n${block}Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}`,
                    { waitMs: 5000 });
                const a = parseAnswer(r.data);
                const problem = a.status === 431 ? routeShapeProblem(p, a) : `status ${a.status} (${r.how}): ${r.data.slice(0, 60)}`;
                if (problem) bad.push(`${svc} ${p} (${name}): ${problem}`);
            }
            // and the service goes on serving
            const next = await request(`http://${addr}${p}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{}' });
            if (next.status === 431 || next.status >= 500) bad.push(`${svc} ${p}: then ${next.status}`);
        }
        assert.deepEqual(bad, [], bad.join('\n'));
    });
});

describe('/api/config never shows a proxy secret (the seed\'s S5)', () => {
    const stack = withStack({
        services: ['auth', 'billing', 'chat'],
        env: { SOCKS_PROXY: 'socks5h://proxyuser:proxy-secret-pw@127.0.0.1:9' },
    });

    it('says only that a proxy is configured, and the logs do not hold it either', async () => {
        const r = await postJSON(`${stack.url}/api/config`, {});
        assert.equal(r.status, 200);
        assert.equal(r.json().data.socksProxy, '(configured)');
        assert.ok(!r.body.includes('proxy-secret-pw') && !r.body.includes('proxyuser'));
        const fs = await import('node:fs');
        for (const f of fs.readdirSync(stack.logDir))
            assert.ok(!fs.readFileSync(`${stack.logDir}/${f}`, 'utf8').includes('proxy-secret-pw'), f);
    });
});

describe('/v1 is no open relay (the seed\'s S6)', () => {
    const stack = withStack({ services: ['auth', 'billing', 'chat', 'proxy'] });

    it('nothing under /v1 reaches the upstream without the proxy service', async () => {
        const { getJSON } = await import('./lib/harness.mjs');
        const before = (await getJSON(`${stack.fakeUpstream.url}/_fake/requests`)).requests.length;
        const r = await request(`${stack.url}/v1/chat/completions`, {
            method: 'POST', headers: { authorization: 'Bearer sk-anything', 'content-type': 'application/json' },
            body: JSON.stringify({ model: 'gpt-3.5-turbo', messages: [{ role: 'user', content: 'relay me' }] }),
        });
        assert.equal(r.status, 404);
        assert.ok(r.json().error && r.json().error.message, 'an OpenAI error object');
        const after = (await getJSON(`${stack.fakeUpstream.url}/_fake/requests`)).requests.length;
        assert.equal(after, before, 'the upstream saw nothing');
    });
});
