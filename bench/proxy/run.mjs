#!/usr/bin/env node
// bench/proxy: what the /v1 proxy adds, beside nginx proxy_pass and a direct call to the same fake
// upstream, in the same run (issue 8's targets; docs/benchmarks.md).
//
//   BUILD_DIR=build node bench/proxy/run.mjs [--requests N] [--backend sqlite|mariadb]
//
// One stack (auth, billing, chat, proxy with OPENAI_PROXY=true, Redis, SQLite or MariaDB, the fake
// upstream), a user with a large balance and an API key without limits; a second nginx
// (the ingress template) whose /v1/ goes straight to the fake. chatweb-loadgen drives:
//   - added latency at 1 connection (p50 of the whole request, minus the direct call's):
//       relay    GET /v1/models     (authenticated, unmetered)
//       metered  POST /v1/chat/completions, JSON, 5 tokens (auth, limits, Reserve, Settle)
//   - throughput at 64 connections: metered JSON and SSE, relay, beside nginx.
// Every figure is the median of --rounds (3) rounds in which the targets take turns.
// Targets (design brief §4): relay p50 <= 0.1 ms added, metered <= 0.3 ms; throughput >= 0.7x
// nginx as a relay, >= 0.3x metered. A figure that misses its target is reported, not an error.
import fs from 'node:fs';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { startNginx } from '../../deploy/local/stack.mjs';
import { loadAverage, runLoadgen, table } from '../lib/measure.mjs';
import { chatBody, startProxyStack } from './stack.mjs';

const { values } = parseArgs({
    options: {
        requests: { type: 'string', default: '3000' },
        rounds: { type: 'string', default: '3' },
        backend: { type: 'string', default: 'sqlite' },
        keep: { type: 'boolean', default: false },
    },
});
const N = Number(values.requests);
// Each figure is measured ROUNDS times, the targets interleaved (direct, nginx, proxy, direct,
// ...), and the median is printed with the range: on a shared 2-core machine one short run of
// either side moved by 25 % between runs, and interleaving gives both the same neighbours.
const ROUNDS = Math.max(1, Number(values.rounds));
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor((xs.length - 1) / 2)];
const range = (xs, f) => (xs.length > 1 ? ` (${f(Math.min(...xs))}-${f(Math.max(...xs))})` : '');
const CHAT = chatBody(false);
const CHAT_SSE = chatBody(true);

let dir;
let stack;
let ref;
try {
    let key, ops;
    ({ dir, stack, key, ops } = await startProxyStack({ mysql: values.backend === 'mariadb' }));
    const fakeAddr = new URL(stack.fakeUpstream.url).host;
    ref = await startNginx({ dir: path.join(dir, 'nginx-ref'), upstreams: { proxy: [fakeAddr] }, label: 'nginx-ref' });
    const proxyUrl = stack.services.proxy[0].url;
    const bases = { direct: stack.fakeUpstream.url, nginx: `http://127.0.0.1:${ref.port}`, proxy: proxyUrl };
    const auth = ['-H', `Authorization: Bearer ${key}`];

    const run = async (target, what, c, n) => {
        const args = what === 'relay'
            ? ['-X', 'GET', ...auth, '-c', String(c), '-n', String(n), '-t', c > 1 ? '2' : '1', `${bases[target]}/v1/models`]
            : ['-X', 'POST', ...auth, '-d', what === 'sse' ? CHAT_SSE : CHAT, '-c', String(c), '-n', String(n),
                '-t', c > 1 ? '2' : '1', '--expect', what === 'sse' ? '[DONE]' : 'chat.completion', `${bases[target]}/v1/chat/completions`];
        await runLoadgen([...args.slice(0, -1), '-n', String(Math.min(200, n)), args[args.length - 1]]); // warm-up
        const r = await runLoadgen(args);
        if (r.report.completed !== n) throw new Error(`${target} ${what}: ${JSON.stringify(r.report.failed)} ${JSON.stringify(r.report.errors)}`);
        return r.report;
    };
    const rows = [['figure', 'direct', 'nginx', 'chatweb proxy', 'proxy - direct', 'target']];
    const ms = (v) => `${v.toFixed(3)} ms`;
    for (const what of ['relay', 'json']) {
        const d = [], g = [], p = [], added = [];
        for (let r = 0; r < ROUNDS; r++) {
            d.push((await run('direct', what, 1, N)).latency_ms.total.p50);
            g.push((await run('nginx', what, 1, N)).latency_ms.total.p50);
            p.push((await run('proxy', what, 1, N)).latency_ms.total.p50);
            added.push(p[r] - d[r]);
        }
        rows.push([`p50 at 1 connection, ${what === 'relay' ? 'relay (GET /v1/models)' : 'metered chat JSON'}`,
            ms(median(d)), ms(median(g)), ms(median(p)), ms(median(added)) + range(added, (v) => v.toFixed(3)),
            what === 'relay' ? '<= 0.1 ms added' : '<= 0.3 ms added']);
    }
    for (const what of ['relay', 'json', 'sse']) {
        const g = [], p = [], ratio = [];
        for (let r = 0; r < ROUNDS; r++) {
            g.push((await run('nginx', what, 64, N * 2)).rps);
            p.push((await run('proxy', what, 64, N * 2)).rps);
            ratio.push(p[r] / g[r]);
        }
        rows.push([`req/s at 64 connections, ${what === 'relay' ? 'relay' : `metered chat ${what.toUpperCase()}`}`,
            '-', median(g).toFixed(0), median(p).toFixed(0),
            `${median(ratio).toFixed(2)}x nginx${range(ratio, (v) => v.toFixed(2))}`,
            what === 'relay' ? '>= 0.7x nginx' : '>= 0.3x nginx']);
    }
    // The proxy's balance leases go back PROXY_LEASE_IDLE_MS (2 s) after their last request.
    let check;
    for (const t0 = Date.now(); Date.now() - t0 < 10000;) {
        check = (await ops({ action: 'check', i_username: 'bench' })).data;
        if (check.held === 0) break;
        await new Promise((r) => setTimeout(r, 100));
    }
    console.log(`bench/proxy (${values.backend}, ${N} requests per latency run, ${N * 2} per throughput run, ` +
        `median of ${ROUNDS} interleaved rounds, range in brackets; load average ${loadAverage()})`);
    console.log(table(rows));
    console.log(`the benchmark's account afterwards: usage ${check.usage}, held ${check.held} ${check.held === 0 ? '(every metered call settled, every lease closed)' : '(units still held 10 s after the last request)'}`);
} finally {
    if (ref) await ref.stop();
    if (stack) await stack.stop();
    if (dir && !values.keep) fs.rmSync(dir, { recursive: true, force: true });
}
