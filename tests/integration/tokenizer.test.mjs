// The tokenizer against tiktoken itself: chatweb-tokenize's ids must equal the tiktoken npm
// package's encode_ordinary (tests/package.json pins 1.0.22) on a generated mixed corpus of more
// than 5 MB (lib/token-corpus.mjs: prose, code, CJK, emoji, RTL, combining marks, whitespace of
// every kind, digits, contractions in all cases, special-token text, random code points, invalid
// UTF-8, NUL, long single-character runs), for both encodings. tiktoken sees the bytes decoded the
// way a client decodes them (TextDecoder, U+FFFD per maximal subpart). Also: --count, --model
// with MODEL_WINDOWS, and the CLI's exit codes.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { createRequire } from 'node:module';
import path from 'node:path';
import { describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';

import { defaultBinDir } from './lib/harness.mjs';
import { tokenCorpus } from './lib/token-corpus.mjs';

const require = createRequire(path.join(path.dirname(fileURLToPath(import.meta.url)), '..', 'package.json'));
const { get_encoding } = require('tiktoken');

const BIN = path.join(defaultBinDir(), 'chatweb-tokenize');
const ENCODINGS = ['cl100k_base', 'o200k_base'];

function tokenize(args, input, env = {}) {
    return spawnSync(BIN, args, {
        input,
        env: { PATH: process.env.PATH, ...env },
        maxBuffer: 1 << 28,
        timeout: 120000,
        encoding: 'utf8',
    });
}

function ids(args, input, env) {
    const r = tokenize(args, input, env);
    assert.equal(r.status, 0, `chatweb-tokenize ${args.join(' ')}: exit ${r.status} ${r.signal ?? ''}\n${r.stderr}`);
    assert.ok(r.stdout.endsWith('\n'), 'output ends with a newline');
    const line = r.stdout.slice(0, -1);
    assert.ok(!line.includes('\n'), 'ids are on one line');
    return line === '' ? [] : line.split(' ').map(Number);
}

/** The first index where a and b differ, or -1. */
function firstDiff(a, b) {
    const n = Math.min(a.length, b.length);
    for (let i = 0; i < n; i++) if (a[i] !== b[i]) return i;
    return a.length === b.length ? -1 : n;
}

/** Where token i starts in the decoded text's UTF-8 bytes, and what is around it. */
function context(enc, ref, i, text) {
    const bytes = Buffer.from(text, 'utf8');
    let off = 0;
    for (let k = 0; k < i; k++) off += enc.decode_single_token_bytes(ref[k]).length;
    const around = bytes.subarray(Math.max(0, off - 60), off + 60);
    return { off, text: JSON.stringify(around.toString('utf8')) };
}

describe('chatweb-tokenize against tiktoken (differential)', () => {
    const started = Date.now();
    const { buf, parts } = tokenCorpus({ seed: 20251202, bytes: 5_250_000 });
    const text = new TextDecoder().decode(buf);
    const kinds = {};
    for (const p of parts) kinds[p.kind] = (kinds[p.kind] || 0) + (p.end - p.start);
    process.stderr.write(`corpus: ${buf.length} bytes in ${Date.now() - started} ms; ` +
        `${Object.entries(kinds).map(([k, n]) => `${k} ${n}`).join(', ')}\n`);

    it('is at least 5 MB and has every kind of text', () => {
        assert.ok(buf.length >= 5_000_000, `${buf.length} bytes`);
        for (const k of ['prose', 'code', 'cjk', 'emoji', 'rtl', 'combining', 'whitespace', 'digits',
            'contractions', 'specials', 'random', 'invalid', 'controls', 'run']) {
            assert.ok(kinds[k] > 0, `no ${k} in the corpus`);
        }
        assert.ok(buf.includes(0), 'NUL bytes');
        assert.ok(text.includes('\ufffd'), 'invalid UTF-8');
    });

    for (const name of ENCODINGS) {
        it(`gives tiktoken's ids for ${name}`, () => {
            const enc = get_encoding(name);
            try {
                let t = Date.now();
                const ref = Array.from(enc.encode_ordinary(text));
                const tRef = Date.now() - t;
                t = Date.now();
                const got = ids(['--encoding', name], buf);
                const tGot = Date.now() - t;
                process.stderr.write(`${name}: ${ref.length} tokens; tiktoken ${tRef} ms, ` +
                    `chatweb-tokenize ${tGot} ms (process, start-up included)\n`);
                const i = firstDiff(got, ref);
                if (i >= 0) {
                    const c = context(enc, ref, i, text);
                    assert.fail(`${name}: first difference at token ${i} (byte ${c.off} of the decoded text): ` +
                        `ours ${JSON.stringify(got.slice(i, i + 8))}, tiktoken ${JSON.stringify(ref.slice(i, i + 8))} ` +
                        `(${got.length} vs ${ref.length} tokens); text around it: ${c.text}`);
                }
                // --count agrees with the ids
                const r = tokenize(['--encoding', name, '--count'], buf);
                assert.equal(r.status, 0, r.stderr);
                assert.equal(r.stdout, `${ref.length}\n`);
            } finally {
                enc.free();
            }
        });
    }
});

describe('chatweb-tokenize options', () => {
    const sample = Buffer.from("Hello world! It's 2025: 日本語 👍🏽 \xff<|endoftext|>\n", 'utf8');

    it('--model picks the encoding from the model map', () => {
        const cl = ids(['--encoding', 'cl100k_base'], sample);
        const o2 = ids(['--encoding', 'o200k_base'], sample);
        assert.notDeepEqual(cl, o2);
        assert.deepEqual(ids(['--model', 'gpt-4o'], sample), o2);
        assert.deepEqual(ids(['--model=gpt-4o-mini-2024-07-18'], sample), o2);
        assert.deepEqual(ids(['--model', 'o3-mini'], sample), o2);
        assert.deepEqual(ids(['--model', 'gpt-4'], sample), cl);
        assert.deepEqual(ids(['--model', 'gpt-3.5-turbo'], sample), cl);
        assert.deepEqual(ids(['--model', 'ft:gpt-4o:acme::x1'], sample), o2);
        assert.deepEqual(ids(['--model', 'some-local-model'], sample), cl); // the default
    });

    it('--model honours MODEL_WINDOWS', () => {
        const o2 = ids(['--encoding', 'o200k_base'], sample);
        const cl = ids(['--encoding', 'cl100k_base'], sample);
        assert.deepEqual(ids(['--model', 'my-llama-3'], sample, { MODEL_WINDOWS: 'my-llama=8192:o200k_base' }), o2);
        assert.deepEqual(ids(['--model', 'gpt-4o'], sample, { MODEL_WINDOWS: 'gpt-4o=1000:cl100k_base' }), cl);
        assert.deepEqual(ids(['--model', 'unknown'], sample, { MODEL_WINDOWS: '*=32000:o200k_base' }), o2);
        const r = tokenize(['--model', 'gpt-4o'], sample, { MODEL_WINDOWS: 'gpt-4o=lots' });
        assert.equal(r.status, 78);
        assert.match(r.stderr, /MODEL_WINDOWS entry "gpt-4o=lots"/);
        assert.equal(r.stdout, '');
    });

    it('--count, empty input, and the same ids as tiktoken on a sample', () => {
        for (const name of ENCODINGS) {
            const enc = get_encoding(name);
            try {
                const ref = Array.from(enc.encode_ordinary(new TextDecoder().decode(sample)));
                assert.deepEqual(ids(['--encoding', name], sample), ref);
                assert.equal(tokenize(['--count', '--encoding', name], sample).stdout, `${ref.length}\n`);
            } finally {
                enc.free();
            }
            assert.deepEqual(ids([`--encoding=${name}`], Buffer.alloc(0)), []);
            assert.equal(tokenize(['--encoding', name, '--count'], Buffer.alloc(0)).stdout, '0\n');
        }
    });

    it('bad or missing flags exit 64 with the usage on stderr', () => {
        for (const args of [[], ['--count'], ['--encoding'], ['--encoding', 'p50k_base'], ['--encoding='],
            ['--bogus'], ['--encoding', 'cl100k_base', '--model', 'gpt-4o'], ['--model'],
            ['--encoding', 'cl100k_base', 'extra'], ['--encoding', 'cl100k_base', '--encoding', 'o200k_base'],
            ['-c']]) {
            const r = tokenize(args, sample);
            assert.equal(r.status, 64, `${JSON.stringify(args)}: exit ${r.status}`);
            assert.match(r.stderr, /^usage: chatweb-tokenize /m, JSON.stringify(args));
            assert.equal(r.stdout, '');
        }
        const h = tokenize(['--help'], Buffer.alloc(0));
        assert.equal(h.status, 0);
        assert.match(h.stdout, /^usage: chatweb-tokenize /);
    });

    it('refuses more than 64 MiB of input', () => {
        const r = tokenize(['--encoding', 'cl100k_base', '--count'], Buffer.alloc((64 << 20) + 1, 0x61));
        assert.equal(r.status, 65, r.stderr);
        assert.match(r.stderr, /larger than 64 MiB/);
        const ok = tokenize(['--encoding', 'cl100k_base', '--count'], Buffer.alloc(1 << 20, 0x20));
        assert.equal(ok.status, 0, ok.stderr);
    });
});
