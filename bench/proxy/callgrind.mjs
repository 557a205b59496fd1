#!/usr/bin/env node
// bench/proxy/callgrind.mjs: instructions per /v1 request of the proxy, counted by valgrind's
// callgrind (repeatable to about 1-2 %, unlike CPU time on a shared machine; docs/benchmarks.md
// "Instructions per request (callgrind)").
//
//   BUILD_DIR=build node bench/proxy/callgrind.mjs [--requests N] [--what sse,json,relay]
//       [--env '{"NAME":"value"}'] [--proxy PATH] [--out DIR]
//
// One stack (SQLite, OPENAI_PROXY=true, the fake upstream), a user and a key as bench/proxy/run.mjs
// makes them, then a second proxy with the stack proxy's environment (its own ports, plus --env)
// under `valgrind --tool=callgrind`. For each workload: 200 requests to warm it, counters zeroed,
// N requests (default 2,000) from chatweb-loadgen -c 8, a 3 s wait (leases give back), a dump.
// Prints Ir / N per workload; the dumps stay in --out for callgrind_annotate.
//   sse    POST /v1/chat/completions, stream, 5 tokens, metered
//   json   the same without stream
//   relay  GET /v1/models
// Under callgrind the proxy runs some 50 times slower, so the work it does per unit of time (the
// auth memo's expiry, PROXY_AUTH_CACHE_MS; the lease syncs, PROXY_LEASE_FLUSH_MS) falls on 50
// times fewer requests than at full speed and adds a noisy part to each figure:
// --env '{"PROXY_AUTH_CACHE_MS":"1000","PROXY_LEASE_FLUSH_MS":"1000"}' leaves mostly the
// per-request work.
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { defaultBinDir, freePort, httpGet } from '../../deploy/local/stack.mjs';
import { runLoadgen, sleep } from '../lib/measure.mjs';
import { chatBody, startProxyStack } from './stack.mjs';

const { values } = parseArgs({
    options: {
        requests: { type: 'string', default: '2000' },
        what: { type: 'string', default: 'sse,json,relay' },
        env: { type: 'string', default: '{}' },
        proxy: { type: 'string' },
        out: { type: 'string' },
    },
});
const N = Number(values.requests);
const WHAT = values.what.split(',');
const OUT = path.resolve(values.out || fs.mkdtempSync(path.join(os.tmpdir(), 'chatweb-callgrind-')));

if (spawnSync('valgrind', ['--version']).status !== 0) {
    console.error('valgrind not found (apt-get install valgrind)');
    process.exit(70);
}
fs.mkdirSync(OUT, { recursive: true });
let dir;
let stack;
let vg;
try {
    let key;
    ({ dir, stack, key } = await startProxyStack({ prefix: 'chatweb-callgrind-stack-' }));

    // the stack proxy's environment, on ports of its own
    const env = {};
    for (const kv of fs.readFileSync(`/proc/${stack.services.proxy[0].pid}/environ`, 'utf8').split('\0')) {
        const i = kv.indexOf('=');
        if (i > 0) env[kv.slice(0, i)] = kv.slice(i + 1);
    }
    const httpPort = await freePort();
    const adminPort = await freePort();
    Object.assign(env, { HTTP_ADDR: `127.0.0.1:${httpPort}`, ADMIN_ADDR: `127.0.0.1:${adminPort}` }, JSON.parse(values.env));
    const bin = values.proxy || path.join(defaultBinDir(), 'chatweb-proxy');
    vg = spawn('valgrind', ['--tool=callgrind', `--callgrind-out-file=${OUT}/callgrind.out.%p`, bin], {
        env, stdio: ['ignore', 'ignore', fs.openSync(path.join(OUT, 'proxy.log'), 'w')],
    });
    for (let i = 0; ; i++) {
        const r = await httpGet(`http://127.0.0.1:${adminPort}/readyz`, 1000).catch(() => null);
        if (r && r.status === 200) break;
        if (i === 300 || vg.exitCode !== null) throw new Error(`the proxy under callgrind did not get ready; see ${OUT}/proxy.log`);
        await sleep(200);
    }
    const base = `http://127.0.0.1:${httpPort}`;
    const auth = ['-H', `Authorization: Bearer ${key}`];
    const args = (what, n) => (what === 'relay'
        ? ['-X', 'GET', ...auth, '-c', '8', '-n', String(n), `${base}/v1/models`]
        : ['-X', 'POST', ...auth, '-d', chatBody(what === 'sse'), '-c', '8', '-n', String(n),
            '--expect', what === 'sse' ? '[DONE]' : 'chat.completion', `${base}/v1/chat/completions`]);
    const control = (...a) => {
        if (spawnSync('callgrind_control', [...a, String(vg.pid)], { stdio: 'ignore' }).status !== 0)
            throw new Error(`callgrind_control ${a.join(' ')} failed`);
    };
    const rows = [];
    for (const what of WHAT) {
        for (const [n, zero] of [[200, false], [N, true]]) {
            if (zero) {
                await sleep(500);
                control('-z');
            }
            const r = await runLoadgen(args(what, n));
            if (r.report.completed !== n) throw new Error(`${what}: ${JSON.stringify(r.report.failed)} ${JSON.stringify(r.report.errors)}`);
        }
        await sleep(3000); // the leases' Settles and the idle lease's return, in this dump
        const before = new Set(fs.readdirSync(OUT));
        control(`--dump=${what}`);
        await sleep(500);
        const file = fs.readdirSync(OUT).find((f) => !before.has(f) && f.startsWith('callgrind.out.'));
        const text = file ? fs.readFileSync(path.join(OUT, file), 'utf8') : '';
        const m = /^(?:summary|totals): (\d+)/m.exec(text);
        if (!m) throw new Error(`no callgrind dump for ${what} in ${OUT}`);
        rows.push([what, Math.round(Number(m[1]) / N), file]);
    }
    console.log(`callgrind, ${N} requests per workload at 8 connections${values.env !== '{}' ? `, env ${values.env}` : ''}`);
    for (const [what, ir, file] of rows) console.log(`${what.padEnd(6)} ${String(ir).padStart(8)} Ir/request   ${path.join(OUT, file)}`);
    console.log(`callgrind_annotate --inclusive=yes <dump> | head -60   # where they go`);
} finally {
    if (vg && vg.exitCode === null) {
        vg.kill('SIGTERM');
        await new Promise((r) => vg.once('exit', r));
    }
    if (stack) await stack.stop();
    if (dir) fs.rmSync(dir, { recursive: true, force: true });
}
