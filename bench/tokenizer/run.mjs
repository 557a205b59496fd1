#!/usr/bin/env node
// bench/tokenizer/run.mjs: our tokenizer (common/tokenizer.c, timed in process by
// $BUILD_DIR/bin/chatweb-tokenizer-bench) beside the tiktoken npm package (tests/package.json,
// 1.0.22, WASM of OpenAI's Rust core, timed in this process) on the same text in the same run.
//
//   BUILD_DIR=build node bench/tokenizer/run.mjs [--quick]
//
// Figures:
//   - throughput on ordinary text: the repository's own Markdown and C (English prose and code,
//     2 MB), and on the differential test's mixed multilingual corpus (2 MB, no long runs):
//     MB/s and tokens/s, best of at least 5 runs / 1 s each side, and the ratio (target >= 2x);
//   - 1 MB of one repeated character (one piece of 1 MB for letters, spaces and "!"): our time
//     (target < 1 s), beside tiktoken on 100 KB of "a" (its merge is quadratic: 100x that for 1 MB);
//   - load time of each encoding (our first svc_tokenizer_get; tiktoken's get_encoding).
// Both sides get the same bytes; the token counts are compared as a sanity check. Exits non-zero
// only when something could not be measured.
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import { createRequire } from 'node:module';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import { defaultBinDir } from '../../deploy/local/stack.mjs';
import { table } from '../lib/measure.mjs';
import { tokenCorpus } from '../../tests/integration/lib/token-corpus.mjs';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
const quick = process.argv.includes('--quick');
let tiktoken;
try {
    tiktoken = createRequire(path.join(ROOT, 'tests', 'package.json'))('tiktoken');
} catch {
    console.error('bench/tokenizer: the tiktoken package is missing: run `cd tests && npm ci` (make test does)');
    process.exit(1);
}
const BENCH = path.join(defaultBinDir(), 'chatweb-tokenizer-bench');
if (!fs.existsSync(BENCH)) {
    console.error(`bench/tokenizer: ${BENCH} not found: build first (make build)`);
    process.exit(1);
}
const ENCODINGS = ['cl100k_base', 'o200k_base'];
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'chatweb-tok-bench-'));

/** The repository's Markdown and C files, in name order, concatenated up to `bytes`. */
function repoText(bytes) {
    const files = execFileSync('git', ['ls-files', '*.md', '*.c', '*.h'], { cwd: ROOT, encoding: 'utf8' })
        .split('\n').filter((f) => f && !f.startsWith('data/')).sort();
    const parts = [];
    let n = 0;
    while (n < bytes) {
        for (const f of files) {
            const b = fs.readFileSync(path.join(ROOT, f));
            parts.push(b);
            n += b.length;
            if (n >= bytes) break;
        }
    }
    return Buffer.concat(parts).subarray(0, bytes);
}

function ours(enc, file, minSeconds = quick ? 0.3 : 1) {
    const out = execFileSync(BENCH, ['--encoding', enc, '--repeat', quick ? '2' : '5', '--min-seconds', String(minSeconds), file],
        { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'] });
    return JSON.parse(out);
}

function theirs(enc, text, minSeconds = quick ? 0.3 : 1, minRuns = quick ? 2 : 5) {
    const times = [];
    let tokens = 0;
    const start = process.hrtime.bigint();
    while (times.length < minRuns || Number(process.hrtime.bigint() - start) / 1e9 < minSeconds) {
        const t = process.hrtime.bigint();
        tokens = enc.encode_ordinary(text).length;
        times.push(Number(process.hrtime.bigint() - t) / 1e9);
    }
    return { tokens, best_s: Math.min(...times) };
}

const mbps = (bytes, s) => (bytes / s / 1e6).toFixed(1);
const ktps = (tokens, s) => `${(tokens / s / 1e3).toFixed(0)}k`;
let failed = false;

try {
    console.log(`# tokenizer bench: ${os.cpus().length} cores, load average ${os.loadavg()[0].toFixed(2)}, ` +
        `tiktoken ${tiktoken.get_encoding ? '1.0.22 (npm, WASM)' : '?'}, node ${process.version}`);

    // load times
    const loads = [['encoding', 'ours: first svc_tokenizer_get (best of 3 processes)', 'tiktoken: get_encoding (first in this process)']];
    const encs = {};
    for (const name of ENCODINGS) {
        const f = path.join(dir, 'tiny.txt');
        fs.writeFileSync(f, 'x');
        // ours: a fresh process each time, best of 3 (the embedded data is already paged in)
        const load = Math.min(...[1, 2, 3].map(() => ours(name, f, 0).load_ms));
        const t = process.hrtime.bigint();
        encs[name] = tiktoken.get_encoding(name);
        loads.push([name, `${load.toFixed(1)} ms`, `${(Number(process.hrtime.bigint() - t) / 1e6).toFixed(1)} ms`]);
    }

    // throughput
    const texts = [
        ['repo prose+code', repoText(quick ? 500_000 : 2_000_000)],
        ['mixed multilingual', tokenCorpus({ seed: 7, bytes: quick ? 500_000 : 2_000_000, longRuns: 0 }).buf],
    ];
    const rows = [['text', 'encoding', 'MB', 'tokens', 'ours MB/s', 'ours tok/s', 'tiktoken MB/s', 'tiktoken tok/s', 'ratio']];
    for (const [label, buf] of texts) {
        const file = path.join(dir, 'text.bin');
        fs.writeFileSync(file, buf);
        const text = new TextDecoder().decode(buf);
        for (const name of ENCODINGS) {
            const o = ours(name, file);
            const t = theirs(encs[name], text);
            if (o.tokens !== t.tokens) {
                console.error(`bench/tokenizer: ${label} ${name}: ${o.tokens} tokens here, ${t.tokens} by tiktoken`);
                failed = true;
            }
            rows.push([label, name, (buf.length / 1e6).toFixed(2), String(o.tokens), mbps(buf.length, o.best_s),
                ktps(o.tokens, o.best_s), mbps(buf.length, t.best_s), ktps(t.tokens, t.best_s),
                `${(t.best_s / o.best_s).toFixed(1)}x`]);
        }
    }
    console.log('\nthroughput (best run each side; target ratio >= 2x):');
    console.log(table(rows));

    // 1 MB of one character
    const runs = [['1 MB of', 'encoding', 'pieces', 'tokens', 'ours', 'target']];
    for (const [label, unit] of [['"a"', 'a'], ['" "', ' '], ['"!"', '!'], ['"7"', '7'], ['"中"', '中'], ['"\\n"', '\n']]) {
        const file = path.join(dir, 'run.txt');
        fs.writeFileSync(file, unit.repeat(Math.floor((1 << 20) / Buffer.byteLength(unit))));
        for (const name of ENCODINGS) {
            const o = ours(name, file, 0);
            runs.push([label, name, unit === '7' ? 'of 3 digits' : '1 piece', String(o.tokens),
                `${(o.best_s * 1e3).toFixed(0)} ms`, o.best_s < 1 ? '< 1 s: ok' : '< 1 s: MISSED']);
        }
    }
    console.log('\n1 MB of one repeated character (our best of 5):');
    console.log(table(runs));
    if (!quick) {
        const t = process.hrtime.bigint();
        const n = encs.cl100k_base.encode_ordinary('a'.repeat(100_000)).length;
        const s = Number(process.hrtime.bigint() - t) / 1e9;
        const file = path.join(dir, 'run100k.txt');
        fs.writeFileSync(file, 'a'.repeat(100_000));
        const o = ours('cl100k_base', file, 0);
        console.log(`reference: tiktoken on 100 KB of "a" (cl100k_base, ${n} tokens): ${s.toFixed(2)} s; ` +
            `ours on the same 100 KB: ${(o.best_s * 1e3).toFixed(1)} ms`);
    }

    console.log('\nload time of each encoding (once per process):');
    console.log(table(loads));
    for (const e of Object.values(encs)) e.free();
} finally {
    fs.rmSync(dir, { recursive: true, force: true });
}
process.exitCode = failed ? 1 : 0;
