// Black-box tests for build/bin/chatweb-fake-upstream (see docs/fake-upstream.md).
// Run: node --test tests/integration/fake_upstream.test.mjs   (BUILD_DIR=build-asan for another build)
// Node 20 built-ins only.
import { test, before, after, describe } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import http from 'node:http';
import net from 'node:net';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { performance } from 'node:perf_hooks';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const BUILD_DIR = path.resolve(ROOT, process.env.BUILD_DIR || 'build');
const BIN = path.join(BUILD_DIR, 'bin', 'chatweb-fake-upstream');
const TMP = fs.mkdtempSync(path.join(os.tmpdir(), 'fake-upstream-test-'));
const LOG = path.join(TMP, 'requests.jsonl');

const procs = new Set();
let srv; // { proc, host, port, base }
// Last resort if the runner dies without running after(): never leave a server behind.
process.on('exit', () => { for (const p of procs) p.kill('SIGKILL'); });

// Start the binary and resolve once it printed its "listening on" line.
function startFake(args = ['--listen', '127.0.0.1:0'], env = {}) {
  return new Promise((resolve, reject) => {
    const proc = spawn(BIN, args, { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    procs.add(proc);
    let out = '';
    let err = '';
    const timer = setTimeout(() => reject(new Error(`no listening line within 5 s; stderr: ${err}`)), 5000);
    proc.stdout.on('data', (d) => {
      out += d;
      const m = out.match(/^fake-upstream listening on http:\/\/([^\s:]+):(\d+)\n/m);
      if (m) {
        clearTimeout(timer);
        resolve({ proc, host: m[1], port: Number(m[2]), base: `http://${m[1]}:${m[2]}`, stderr: () => err });
      }
    });
    proc.stderr.on('data', (d) => { err += d; });
    proc.on('exit', (code) => {
      procs.delete(proc);
      clearTimeout(timer);
      reject(new Error(`exited with ${code} before listening; stderr: ${err}`));
    });
  });
}

// Wait for a process to exit; resolves { code, signal, ms }.
function waitExit(proc, timeoutMs = 5000) {
  const t0 = performance.now();
  return new Promise((resolve) => {
    if (proc.exitCode !== null || proc.signalCode !== null) {
      resolve({ code: proc.exitCode, signal: proc.signalCode, ms: 0 });
      return;
    }
    const timer = setTimeout(() => { proc.kill('SIGKILL'); }, timeoutMs);
    proc.on('exit', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, ms: performance.now() - t0 });
    });
  });
}

const wallMs = () => performance.timeOrigin + performance.now();
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function post(p, body, headers = {}) {
  const res = await fetch(srv.base + p, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...headers },
    body: typeof body === 'string' ? body : JSON.stringify(body),
  });
  const text = await res.text();
  let json;
  try { json = JSON.parse(text); } catch { json = undefined; }
  return { status: res.status, headers: res.headers, text, json };
}

async function get(p) {
  const res = await fetch(srv.base + p);
  return { status: res.status, json: await res.json() };
}

const chatBody = (content, extra = {}) => ({
  model: 'gpt-4o-mini',
  messages: [{ role: 'system', content: 'You are terse.' }, { role: 'user', content }],
  ...extra,
});

// A streamed request over its own connection (node:http, no agent) that records every SSE
// event with its arrival time. Resolves when the response ends or the connection closes.
// opts.onEvent(ev, req) may abort the request (req.destroy()).
function streamReq(p, body, headers = {}, opts = {}) {
  return new Promise((resolve, reject) => {
    const payload = JSON.stringify(body);
    const t0 = performance.now();
    const out = { status: 0, headers: {}, events: [], complete: false, t0, closedAt: 0 };
    const req = http.request(srv.base + p, {
      method: 'POST',
      agent: false,
      headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(payload), ...headers },
    }, (res) => {
      out.status = res.statusCode;
      out.headers = res.headers;
      let buf = '';
      res.setEncoding('utf8');
      res.on('data', (d) => {
        buf += d;
        let i;
        while ((i = buf.indexOf('\n\n')) >= 0) {
          const raw = buf.slice(0, i);
          buf = buf.slice(i + 2);
          const data = raw.replace(/^data: /, '');
          const ev = { t: performance.now() - t0, raw, data: data === '[DONE]' ? '[DONE]' : safeJson(data) };
          out.events.push(ev);
          if (opts.onEvent) opts.onEvent(ev, req, out);
        }
      });
      res.on('error', () => {});
      res.on('close', () => {
        out.complete = res.complete;
        out.rest = buf;
        out.closedAt = performance.now() - t0;
        resolve(out);
      });
    });
    req.on('error', (e) => {
      if (out.aborted) resolve(out); else reject(e);
    });
    req.end(payload);
    out.req = req;
  });
}

function safeJson(s) {
  try { return JSON.parse(s); } catch { return s; }
}

const contentChunks = (events) =>
  events.filter((e) => e.data?.choices?.[0]?.delta?.content !== undefined && e.data.choices[0].delta.role === undefined);

async function eventsFor(seq, type, timeoutMs = 2000) {
  const deadline = performance.now() + timeoutMs;
  for (;;) {
    const { json } = await get('/_fake/events');
    const ev = json.events.find((e) => e.request_seq === seq && (!type || e.type === type));
    if (ev || performance.now() > deadline) return ev;
    await sleep(5);
  }
}

before(async () => {
  assert.ok(fs.existsSync(BIN), `${BIN} not built: cmake --build ${path.relative(ROOT, BUILD_DIR)} --target chatweb-fake-upstream`);
  srv = await startFake(['--listen', '127.0.0.1:0'], { FAKE_REQUEST_LOG: LOG, FAKE_THREADS: '2' });
});

after(async () => {
  for (const p of procs) {
    p.kill('SIGTERM');
    const r = await waitExit(p, 3000);
    if (p === srv?.proc) {
      assert.equal(r.code, 0, `exit code after SIGTERM (stderr: ${srv.stderr()})`);
      assert.ok(r.ms < 1000, `stopped in ${r.ms.toFixed(0)} ms`);
      // Under -DCHATWEB_SANITIZE=ON any ASan/UBSan/LSan report fails the run.
      assert.doesNotMatch(srv.stderr(), /Sanitizer|runtime error/, srv.stderr());
    }
  }
  fs.rmSync(TMP, { recursive: true, force: true });
});

describe('process', () => {
  test('prints the listening line and raises RLIMIT_NOFILE to the hard limit', () => {
    assert.equal(srv.host, '127.0.0.1');
    assert.ok(srv.port > 0);
    const limits = fs.readFileSync(`/proc/${srv.proc.pid}/limits`, 'utf8');
    const m = limits.match(/^Max open files\s+(\d+|unlimited)\s+(\d+|unlimited)/m);
    assert.ok(m, limits);
    assert.equal(m[1], m[2]);
  });

  test('a port in use is a clear error with exit code 2', async () => {
    const proc = spawn(BIN, ['--listen', `127.0.0.1:${srv.port}`], { stdio: ['ignore', 'pipe', 'pipe'] });
    let err = '';
    let out = '';
    proc.stderr.on('data', (d) => { err += d; });
    proc.stdout.on('data', (d) => { out += d; });
    const r = await waitExit(proc, 3000);
    assert.equal(r.code, 2);
    assert.match(err, /already in use/i);
    assert.equal(out, '');
  });

  test('bad configuration names the variable and exits 2', async () => {
    const proc = spawn(BIN, ['--listen', '127.0.0.1:0'], {
      env: { ...process.env, FAKE_TOKENS_PER_SEC: 'fast' }, stdio: ['ignore', 'ignore', 'pipe'],
    });
    let err = '';
    proc.stderr.on('data', (d) => { err += d; });
    const r = await waitExit(proc, 3000);
    assert.equal(r.code, 2);
    assert.match(err, /FAKE_TOKENS_PER_SEC/);
  });

  test('FAKE_LISTEN and env defaults apply; SIGINT exits cleanly', async () => {
    const s2 = await startFake([], { FAKE_LISTEN: '127.0.0.1:0', FAKE_REPLY_TOKENS: '3', FAKE_TTFT_MS: '50' });
    const t0 = performance.now();
    const res = await fetch(`${s2.base}/v1/chat/completions`, { method: 'POST', body: JSON.stringify(chatBody('x')) });
    const j = await res.json();
    assert.ok(performance.now() - t0 >= 45, 'FAKE_TTFT_MS delays the answer');
    assert.equal(j.usage.completion_tokens, 3);
    s2.proc.kill('SIGINT');
    const r = await waitExit(s2.proc);
    assert.equal(r.code, 0);
  });

  test('FAKE_API_KEY makes /v1 answer 401 like OpenAI unless the bearer token matches', async () => {
    const s3 = await startFake(['--listen', '127.0.0.1:0'], { FAKE_API_KEY: 'sk-right-key-123' });
    try {
      const call = (auth) => fetch(`${s3.base}/v1/chat/completions`, {
        method: 'POST', headers: auth ? { authorization: auth } : {}, body: JSON.stringify(chatBody('x')),
      });
      const none = await call();
      assert.equal(none.status, 401);
      assert.match((await none.json()).error.message, /didn't provide an API key/);
      const wrong = await call('Bearer sk-wrong-key-456');
      assert.equal(wrong.status, 401);
      const wj = await wrong.json();
      assert.equal(wj.error.code, 'invalid_api_key');
      assert.doesNotMatch(wj.error.message, /sk-wrong-key-456/, 'the key is masked');
      assert.equal((await call('Bearer sk-right-key-123')).status, 200);
      assert.equal((await fetch(`${s3.base}/healthz`)).status, 200, '/healthz needs no key');
      assert.equal((await fetch(`${s3.base}/_fake/stats`)).status, 200, '/_fake needs no key');
    } finally {
      s3.proc.kill('SIGTERM');
      assert.equal((await waitExit(s3.proc)).code, 0);
    }
  });
});

describe('endpoints and shapes', () => {
  test('GET /v1/models lists the models the stack uses', async () => {
    const { status, json } = await get('/v1/models');
    assert.equal(status, 200);
    assert.equal(json.object, 'list');
    const ids = json.data.map((m) => m.id);
    for (const id of ['gpt-3.5-turbo', 'gpt-4o', 'gpt-4o-mini', 'text-embedding-3-small']) assert.ok(ids.includes(id), id);
    for (const m of json.data) {
      assert.equal(m.object, 'model');
      assert.equal(typeof m.created, 'number');
      assert.equal(typeof m.owned_by, 'string');
    }
    const one = await get('/v1/models/gpt-4o');
    assert.equal(one.json.id, 'gpt-4o');
    const missing = await get('/v1/models/nope');
    assert.equal(missing.status, 404);
    assert.equal(missing.json.error.code, 'model_not_found');
  });

  test('chat completion JSON has the OpenAI shape and the echo reply', async () => {
    const r = await post('/v1/chat/completions', chatBody('hello   wide\nworld'));
    assert.equal(r.status, 200);
    assert.match(r.headers.get('content-type'), /application\/json/);
    const j = r.json;
    assert.match(j.id, /^chatcmpl-/);
    assert.equal(j.object, 'chat.completion');
    assert.equal(typeof j.created, 'number');
    assert.equal(j.model, 'gpt-4o-mini');
    assert.equal(j.choices.length, 1);
    assert.equal(j.choices[0].index, 0);
    assert.equal(j.choices[0].message.role, 'assistant');
    assert.equal(j.choices[0].finish_reason, 'stop');
    const content = j.choices[0].message.content;
    assert.ok(content.startsWith('Echo(2 msgs): hello wide world lorem ipsum'), content);
    assert.equal(content.split(' ').length, 20, 'default 20 tokens = 20 words');
    // prompt = 3 + (4 + 3 words "You are terse.") + (4 + 3 words)
    assert.deepEqual([j.usage.prompt_tokens, j.usage.completion_tokens, j.usage.total_tokens], [17, 20, 37]);
    assert.equal(r.headers.get('x-fake-request-seq'), String(Number(r.headers.get('x-fake-request-seq'))));
  });

  test('prompt_tokens grows with the history', async () => {
    const msgs = [{ role: 'user', content: 'one two' }];
    const a = await post('/v1/chat/completions', { model: 'gpt-4o', messages: msgs });
    msgs.push({ role: 'assistant', content: 'three' }, { role: 'user', content: 'four five six' });
    const b = await post('/v1/chat/completions', { model: 'gpt-4o', messages: msgs });
    assert.equal(a.json.usage.prompt_tokens, 3 + 4 + 2);
    assert.equal(b.json.usage.prompt_tokens, 3 + (4 + 2) + (4 + 1) + (4 + 3));
    assert.ok(b.json.choices[0].message.content.startsWith('Echo(3 msgs): four five six'));
  });

  test('content given as parts is echoed', async () => {
    const r = await post('/v1/chat/completions', {
      model: 'gpt-4o', messages: [{ role: 'user', content: [{ type: 'text', text: 'part one' }, { type: 'text', text: 'two' }] }],
    });
    assert.ok(r.json.choices[0].message.content.startsWith('Echo(1 msgs): part one two'));
  });

  test('streaming: role chunk, one chunk per token, finish chunk, [DONE]', async () => {
    const body = chatBody('stream me please', { stream: true });
    const s = await streamReq('/v1/chat/completions', body, { 'x-fake-tokens': '12' });
    assert.equal(s.status, 200);
    assert.match(s.headers['content-type'], /^text\/event-stream/);
    assert.equal(s.headers['transfer-encoding'], 'chunked');
    assert.ok(s.complete);
    const ev = s.events;
    assert.equal(ev.at(-1).data, '[DONE]');
    for (const e of ev) assert.ok(e.raw.startsWith('data: '), e.raw);
    const chunks = ev.slice(0, -1).map((e) => e.data);
    const id = chunks[0].id;
    for (const c of chunks) {
      assert.equal(c.object, 'chat.completion.chunk');
      assert.equal(c.id, id);
      assert.equal(c.model, 'gpt-4o-mini');
      assert.equal(typeof c.created, 'number');
      assert.ok(!('usage' in c), 'no usage key without include_usage');
    }
    assert.deepEqual(chunks[0].choices[0].delta, { role: 'assistant', content: '', refusal: null });
    assert.equal(chunks[0].choices[0].finish_reason, null);
    const content = chunks.slice(1, -1);
    assert.equal(content.length, 12);
    const text = content.map((c) => c.choices[0].delta.content).join('');
    assert.ok(text.startsWith('Echo(2 msgs): stream me please lorem'), text);
    for (const [i, c] of content.entries()) {
      const tok = c.choices[0].delta.content;
      assert.match(tok, i === 0 ? /^\S+$/ : /^ \S+$/, 'one word per token');
    }
    const fin = chunks.at(-1).choices[0];
    assert.deepEqual(fin.delta, {});
    assert.equal(fin.finish_reason, 'stop');
    // The same request without streaming gives the same text.
    const j = await post('/v1/chat/completions', chatBody('stream me please'), { 'x-fake-tokens': '12' });
    assert.equal(j.json.choices[0].message.content, text);
  });

  test('stream_options.include_usage: usage:null on every chunk, then choices:[] with usage', async () => {
    const s = await streamReq('/v1/chat/completions',
      chatBody('count me', { stream: true, stream_options: { include_usage: true } }), { 'x-fake-tokens': '5' });
    const chunks = s.events.slice(0, -1).map((e) => e.data);
    assert.equal(s.events.at(-1).data, '[DONE]');
    const last = chunks.at(-1);
    assert.deepEqual(last.choices, []);
    assert.deepEqual(
      [last.usage.prompt_tokens, last.usage.completion_tokens, last.usage.total_tokens],
      [3 + 4 + 3 + 4 + 2, 5, 3 + 4 + 3 + 4 + 2 + 5]);
    for (const c of chunks.slice(0, -1)) assert.equal(c.usage, null);
    assert.equal(chunks.at(-2).choices[0].finish_reason, 'stop');
    assert.equal(contentChunks(s.events).length, 5);
  });

  test('stream_options without stream is rejected like OpenAI', async () => {
    const r = await post('/v1/chat/completions', chatBody('x', { stream_options: { include_usage: true } }));
    assert.equal(r.status, 400);
    assert.equal(r.json.error.param, 'stream_options');
  });

  test('max_tokens smaller than the reply: stop there with finish_reason length', async () => {
    const s = await streamReq('/v1/chat/completions',
      chatBody('cut short', { stream: true, max_tokens: 3, stream_options: { include_usage: true } }),
      { 'x-fake-tokens': '10' });
    assert.equal(contentChunks(s.events).length, 3);
    const chunks = s.events.slice(0, -1).map((e) => e.data);
    assert.equal(chunks.at(-2).choices[0].finish_reason, 'length');
    assert.equal(chunks.at(-1).usage.completion_tokens, 3);
    const j = await post('/v1/chat/completions', chatBody('cut short', { max_completion_tokens: 4 }), { 'x-fake-tokens': '10' });
    assert.equal(j.json.choices[0].finish_reason, 'length');
    assert.equal(j.json.usage.completion_tokens, 4);
    assert.equal(j.json.choices[0].message.content, 'Echo(2 msgs): cut short');
    const big = await post('/v1/chat/completions', chatBody('fits', { max_tokens: 100 }), { 'x-fake-tokens': '10' });
    assert.equal(big.json.choices[0].finish_reason, 'stop');
    assert.equal(big.json.usage.completion_tokens, 10);
  });

  test('legacy /v1/completions, JSON and stream', async () => {
    const j = await post('/v1/completions', { model: 'gpt-3.5-turbo-instruct', prompt: 'say this', max_tokens: 6 });
    assert.equal(j.status, 200);
    assert.match(j.json.id, /^cmpl-/);
    assert.equal(j.json.object, 'text_completion');
    assert.equal(j.json.choices[0].text, 'Echo(1 msgs): say this lorem ipsum');
    assert.equal(j.json.choices[0].finish_reason, 'length');
    assert.deepEqual(j.json.usage, { prompt_tokens: 2, completion_tokens: 6, total_tokens: 8 });
    const s = await streamReq('/v1/completions',
      { model: 'gpt-3.5-turbo-instruct', prompt: 'say this', stream: true, stream_options: { include_usage: true } },
      { 'x-fake-tokens': '4' });
    const chunks = s.events.slice(0, -1).map((e) => e.data);
    assert.equal(s.events.at(-1).data, '[DONE]');
    assert.equal(chunks[0].object, 'text_completion');
    const texts = chunks.filter((c) => c.choices.length && c.choices[0].finish_reason === null).map((c) => c.choices[0].text);
    assert.deepEqual(texts, ['Echo(1', ' msgs):', ' say', ' this']);
    assert.equal(chunks.at(-2).choices[0].finish_reason, 'stop');
    assert.equal(chunks.at(-1).usage.completion_tokens, 4);
    const bad = await post('/v1/completions', { model: 'x' });
    assert.equal(bad.status, 400);
    assert.equal(bad.json.error.param, 'prompt');
  });

  test('embeddings are deterministic unit vectors with configurable dims and usage', async () => {
    const a = await post('/v1/embeddings', { model: 'text-embedding-3-small', input: ['the cat sat', 'dog'] });
    assert.equal(a.status, 200);
    assert.equal(a.json.object, 'list');
    assert.equal(a.json.model, 'text-embedding-3-small');
    assert.equal(a.json.data.length, 2);
    assert.equal(a.json.data[0].object, 'embedding');
    assert.equal(a.json.data[1].index, 1);
    assert.equal(a.json.data[0].embedding.length, 1536);
    assert.deepEqual(a.json.usage, { prompt_tokens: 4, total_tokens: 4 });
    const norm = Math.hypot(...a.json.data[0].embedding);
    assert.ok(Math.abs(norm - 1) < 1e-4, `norm ${norm}`);
    const b = await post('/v1/embeddings', { model: 'text-embedding-3-small', input: 'the cat sat' });
    assert.deepEqual(b.json.data[0].embedding, a.json.data[0].embedding);
    assert.notDeepEqual(a.json.data[1].embedding.slice(0, 8), a.json.data[0].embedding.slice(0, 8));
    const small = await post('/v1/embeddings', { model: 'text-embedding-3-small', input: 'x', dimensions: 8 });
    assert.equal(small.json.data[0].embedding.length, 8);
    const b64 = await post('/v1/embeddings', { model: 'text-embedding-3-small', input: 'x', dimensions: 8, encoding_format: 'base64' });
    const buf = Buffer.from(b64.json.data[0].embedding, 'base64');
    const floats = Array.from(new Float32Array(buf.buffer, buf.byteOffset, buf.length / 4));
    assert.equal(floats.length, 8);
    floats.forEach((f, i) => assert.ok(Math.abs(f - small.json.data[0].embedding[i]) < 1e-7));
    const bad = await post('/v1/embeddings', { model: 'text-embedding-3-small' });
    assert.equal(bad.status, 400);
    assert.equal(bad.json.error.param, 'input');
  });

  test('malformed JSON and missing fields give OpenAI 400 error objects', async () => {
    const cases = [
      ['{"model": "gpt-4o", "messages": [', null],
      ['', null],
      [JSON.stringify({ messages: [{ role: 'user', content: 'x' }] }), null],
      [JSON.stringify({ model: 'gpt-4o' }), 'messages'],
      [JSON.stringify({ model: 'gpt-4o', messages: [] }), 'messages'],
      [JSON.stringify({ model: 'gpt-4o', messages: [{ content: 'x' }] }), 'messages[0].role'],
      [JSON.stringify({ model: 'gpt-4o', messages: [{ role: 'user', content: 'x' }], max_tokens: 0 }), 'max_tokens'],
      [JSON.stringify({ model: 'gpt-4o', messages: [{ role: 'user', content: 'x' }], stream: 'yes' }), 'stream'],
    ];
    for (const [body, param] of cases) {
      const r = await post('/v1/chat/completions', body);
      assert.equal(r.status, 400, body);
      assert.equal(r.json.error.type, 'invalid_request_error', body);
      assert.equal(typeof r.json.error.message, 'string');
      assert.ok('param' in r.json.error && 'code' in r.json.error);
      assert.equal(r.json.error.param, param, body);
    }
  });

  test('bodies over 4 MiB get 413 with an error object', async () => {
    const big = JSON.stringify(chatBody('x'.repeat(4 * 1024 * 1024 + 10)));
    const r = await post('/v1/chat/completions', big);
    assert.equal(r.status, 413);
    assert.equal(r.json.error.type, 'invalid_request_error');
    // Just under the limit is fine.
    const ok = await post('/v1/chat/completions', chatBody('y '.repeat(2 * 1024 * 1024 - 200)), { 'x-fake-tokens': '3' });
    assert.equal(ok.status, 200);
  });

  test('unknown paths 404 and wrong methods 405, OpenAI style', async () => {
    const a = await post('/v1/nope', {});
    assert.equal(a.status, 404);
    assert.match(a.json.error.message, /Invalid URL \(POST \/v1\/nope\)/);
    const b = await fetch(srv.base + '/v1/chat/completions');
    assert.equal(b.status, 405);
    assert.equal((await b.json()).error.type, 'invalid_request_error');
  });
});

describe('knobs', () => {
  const openaiErrors = {
    401: { type: 'invalid_request_error', code: 'invalid_api_key' },
    429: { type: 'requests', code: 'rate_limit_exceeded' },
    500: { type: 'server_error', code: null },
    503: { type: 'server_error', code: null },
  };

  for (const [status, want] of Object.entries(openaiErrors)) {
    test(`X-Fake-Error ${status} and [[fake error=${status}]] answer like OpenAI`, async () => {
      const viaHeader = await post('/v1/chat/completions', chatBody('x', { stream: true }), { 'x-fake-error': status });
      const viaDirective = await post('/v1/chat/completions', chatBody(`x [[fake error=${status}]]`, { stream: true }));
      for (const r of [viaHeader, viaDirective]) {
        assert.equal(r.status, Number(status));
        assert.match(r.headers.get('content-type'), /application\/json/);
        assert.equal(r.json.error.type, want.type);
        assert.equal(r.json.error.code, want.code);
        assert.equal(r.json.error.param, null);
        assert.ok(r.json.error.message.length > 10);
      }
    });
  }

  test('error knob also applies to embeddings and models; invalid knob values are 400', async () => {
    const e = await post('/v1/embeddings', { model: 'text-embedding-3-small', input: 'x' }, { 'x-fake-error': '503' });
    assert.equal(e.status, 503);
    const m = await fetch(srv.base + '/v1/models', { headers: { 'x-fake-error': '429' } });
    assert.equal(m.status, 429);
    const bad = await post('/v1/chat/completions', chatBody('x'), { 'x-fake-tps': 'fast' });
    assert.equal(bad.status, 400);
    assert.equal(bad.json.error.code, 'fake_invalid_knob');
    const badDir = await post('/v1/chat/completions', chatBody('x [[fake speed=1]]'));
    assert.equal(badDir.status, 400);
    assert.equal(badDir.json.error.code, 'fake_invalid_directive');
  });

  test('ttft and tps pace the stream', async () => {
    const s = await streamReq('/v1/chat/completions', chatBody('pace', { stream: true }),
      { 'x-fake-ttft-ms': '200', 'x-fake-tps': '20', 'x-fake-tokens': '6' });
    const c = contentChunks(s.events);
    assert.equal(c.length, 6);
    // Token k is due 200 + k * 50 ms after the request, and never arrives before it. The upper
    // bounds are loose: a loaded machine delays tokens, and a late one does not move the next
    // one's due time (the schedule is absolute), so only "not early" is exact.
    c.forEach((x, k) => assert.ok(x.t >= 195 + k * 50, `token ${k} at ${x.t.toFixed(1)} ms, due at ${200 + k * 50}`));
    assert.ok(c.at(-1).t < 3000, `last token at ${c.at(-1).t.toFixed(1)} ms`);
    // Non-streamed: the answer leaves with the last token (200 + 5 * 50 ms).
    const t0 = performance.now();
    const j = await post('/v1/chat/completions', chatBody('pace'), { 'x-fake-ttft-ms': '200', 'x-fake-tps': '20', 'x-fake-tokens': '6' });
    const ms = performance.now() - t0;
    assert.equal(j.status, 200);
    assert.ok(ms >= 440 && ms < 3000, `JSON answer after ${ms.toFixed(0)} ms`);
  });

  test('[[fake ...]] in the last user message drives the stream and is not echoed', async () => {
    const body = chatBody('please [[fake tokens=7 tps=500 ttft=30]] answer', { stream: true });
    const s = await streamReq('/v1/chat/completions', body);
    const c = contentChunks(s.events);
    assert.equal(c.length, 7);
    const text = c.map((e) => e.data.choices[0].delta.content).join('');
    assert.equal(text, 'Echo(2 msgs): please answer lorem ipsum dolor');
    assert.ok(c[0].t >= 28, `ttft from directive: ${c[0].t}`);
    // A directive in an earlier message is ignored.
    const j = await post('/v1/chat/completions', {
      model: 'gpt-4o', messages: [{ role: 'user', content: '[[fake tokens=2]]' }, { role: 'user', content: 'last' }],
    });
    assert.equal(j.json.usage.completion_tokens, 20);
  });

  test('X-Fake-Cut-After: N content chunks, then an abrupt close without [DONE]', async () => {
    const s = await streamReq('/v1/chat/completions', chatBody('cut', { stream: true }),
      { 'x-fake-cut-after': '3', 'x-fake-tokens': '10' });
    assert.equal(s.status, 200);
    assert.equal(contentChunks(s.events).length, 3);
    assert.ok(!s.events.some((e) => e.data === '[DONE]'));
    assert.equal(s.complete, false, 'chunked body never terminated');
    const seq = Number(s.headers['x-fake-request-seq']);
    const ev = await eventsFor(seq, 'stream_cut');
    assert.ok(ev, 'stream_cut event');
    assert.equal(ev.chunks_sent, 3);
    // Same through the directive.
    const d = await streamReq('/v1/chat/completions', chatBody('cut [[fake cut=2 tokens=10]]', { stream: true }));
    assert.equal(contentChunks(d.events).length, 2);
    assert.equal(d.complete, false);
  });

  test('X-Fake-Stall-After: N chunks, then silence on an open connection', async () => {
    let seq = 0;
    const s = await streamReq('/v1/chat/completions', chatBody('stall', { stream: true }),
      { 'x-fake-stall-after': '2', 'x-fake-tokens': '10', 'x-fake-tps': '1000' }, {
        onEvent: (ev, req, out) => {
          seq = Number(out.headers['x-fake-request-seq']);
          if (contentChunks(out.events).length === 2 && !out.timer) {
            out.timer = setTimeout(async () => {
              const stats = await get('/_fake/stats');
              out.openStreams = stats.json.open_streams;
              out.countAtAbort = out.events.length;
              out.aborted = true;
              req.destroy();
            }, 300);
          }
        },
      });
    assert.equal(contentChunks(s.events).length, 2);
    assert.equal(s.events.length, s.countAtAbort, 'nothing after the stall');
    assert.ok(s.openStreams >= 1, 'a stalled stream counts as open');
    const ev = await eventsFor(seq, 'client_closed');
    assert.ok(ev);
    assert.equal(ev.chunks_sent, 2);
    // Directive form.
    const d = await streamReq('/v1/chat/completions', chatBody('x [[fake stall=1 tokens=5]]', { stream: true }), {}, {
      onEvent: (ev, req, out) => {
        if (!out.timer) out.timer = setTimeout(() => { out.aborted = true; req.destroy(); }, 200);
      },
    });
    assert.equal(contentChunks(d.events).length, 1);
  });
});

describe('observability', () => {
  test('/_fake/requests records method, path, lower-case headers and the parsed body; JSONL too', async () => {
    await post('/_fake/reset', '');
    const r = await post('/v1/chat/completions?trace=1', chatBody('record me'), { 'X-Custom-Thing': 'Abc', authorization: 'Bearer sk-test' });
    const seq = Number(r.headers.get('x-fake-request-seq'));
    await post('/v1/chat/completions', '{not json');
    const { json } = await get('/_fake/requests');
    assert.equal(json.requests.length, 2);
    const [a, b] = json.requests;
    assert.equal(a.seq, seq);
    assert.equal(b.seq, seq + 1);
    assert.equal(a.method, 'POST');
    assert.equal(a.path, '/v1/chat/completions?trace=1');
    assert.equal(a.headers['x-custom-thing'], 'Abc');
    assert.equal(a.headers.authorization, 'Bearer sk-test');
    assert.deepEqual(a.body, chatBody('record me'));
    assert.ok(Math.abs(a.t_ms - Date.now()) < 5000);
    assert.equal(b.body, '{not json', 'unparseable bodies are kept as strings');
    const since = await get(`/_fake/requests?since=${seq}`);
    assert.deepEqual(since.json.requests.map((q) => q.seq), [seq + 1]);
    const lines = fs.readFileSync(LOG, 'utf8').trim().split('\n').map((l) => JSON.parse(l));
    assert.deepEqual(lines.find((l) => l.seq === seq).body, chatBody('record me'));
    await post('/_fake/reset', '');
    assert.equal((await get('/_fake/requests')).json.requests.length, 0);
    assert.equal((await get('/_fake/events')).json.events.length, 0);
  });

  test('stream_done event after a complete stream', async () => {
    const s = await streamReq('/v1/chat/completions', chatBody('done', { stream: true }), { 'x-fake-tokens': '4' });
    const ev = await eventsFor(Number(s.headers['x-fake-request-seq']), 'stream_done');
    assert.ok(ev);
    assert.equal(ev.chunks_sent, 4);
  });

  test('a client abort during a slow stream is noticed within 50 ms', async () => {
    const samples = [];
    for (let i = 0; i < 5; i++) {
      let abortAt = 0;
      let seq = 0;
      await streamReq('/v1/chat/completions', chatBody('slow', { stream: true }), { 'x-fake-tps': '1', 'x-fake-tokens': '100' }, {
        onEvent: (ev, req, out) => {
          seq = Number(out.headers['x-fake-request-seq']);
          if (contentChunks(out.events).length === 1 && !out.timer) {
            // Abort between tokens: the next one is ~1 s away.
            out.timer = setTimeout(() => { out.aborted = true; abortAt = wallMs(); req.destroy(); }, 100 + 50 * i);
          }
        },
      });
      const ev = await eventsFor(seq, 'client_closed');
      assert.ok(ev, 'client_closed event');
      assert.equal(ev.chunks_sent, 1);
      samples.push(ev.t_ms - abortAt);
    }
    const worst = Math.max(...samples);
    console.log(`# close-detection latency ms: ${samples.map((x) => x.toFixed(2)).join(' ')}`);
    assert.ok(worst < 50, `worst ${worst.toFixed(2)} ms`);
    assert.ok(Math.min(...samples) > -2, 'event not before the abort');
  });

  test('a client abort while waiting for the first token (ttft) is noticed too', async () => {
    const sock = net.connect(srv.port, '127.0.0.1');
    await new Promise((r) => sock.on('connect', r));
    const body = JSON.stringify(chatBody('wait', { stream: true }));
    sock.write(`POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nX-Fake-Ttft-Ms: 5000\r\nContent-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`);
    await sleep(100);
    const reqs = (await get('/_fake/requests')).json.requests;
    const seq = reqs.at(-1).seq;
    const abortAt = wallMs();
    sock.destroy();
    const ev = await eventsFor(seq, 'client_closed');
    assert.ok(ev);
    assert.equal(ev.chunks_sent, 0);
    assert.ok(ev.t_ms - abortAt < 50, `${(ev.t_ms - abortAt).toFixed(2)} ms`);
  });

  test('/_fake/stats counts open streams and requests', async () => {
    const before = (await get('/_fake/stats')).json;
    await post('/v1/chat/completions', chatBody('x'));
    const afterStats = (await get('/_fake/stats')).json;
    assert.equal(afterStats.total_requests, before.total_requests + 1);
    assert.equal(afterStats.open_streams, 0);
    for (const k of ['open_streams', 'total_requests', 'open_connections']) assert.equal(typeof afterStats[k], 'number');
  });
});

describe('HTTP behaviour', () => {
  test('keep-alive and pipelining on one connection', async () => {
    const sock = net.connect(srv.port, '127.0.0.1');
    await new Promise((r) => sock.on('connect', r));
    const body = JSON.stringify(chatBody('pipe'));
    const one = `POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nX-Fake-Tokens: 3\r\nContent-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`;
    let data = '';
    sock.setEncoding('utf8');
    sock.on('data', (d) => { data += d; });
    sock.write(one + one + 'GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n');
    const deadline = performance.now() + 2000;
    while ((data.match(/HTTP\/1\.1 200 OK/g) || []).length < 3 && performance.now() < deadline) await sleep(5);
    sock.destroy();
    assert.equal((data.match(/HTTP\/1\.1 200 OK/g) || []).length, 3, data);
    assert.equal((data.match(/Echo\(2 msgs\): pipe/g) || []).length, 2);
  });

  test('chunked request bodies and Expect: 100-continue are accepted', async () => {
    const r = await new Promise((resolve, reject) => {
      const req = http.request(srv.base + '/v1/chat/completions', {
        method: 'POST', agent: false, headers: { 'content-type': 'application/json', expect: '100-continue' },
      }, (res) => {
        let t = '';
        res.on('data', (d) => { t += d; });
        res.on('end', () => resolve({ status: res.statusCode, json: JSON.parse(t), continued: req.continued }));
      });
      req.on('continue', () => {
        req.continued = true;
        const s = JSON.stringify(chatBody('chunky body'));
        req.write(s.slice(0, 10));
        setTimeout(() => req.end(s.slice(10)), 20);
      });
      req.on('error', reject);
      req.flushHeaders();
    });
    assert.equal(r.status, 200);
    assert.ok(r.continued);
    assert.ok(r.json.choices[0].message.content.startsWith('Echo(2 msgs): chunky body'));
  });

  test('oversized headers get 431', async () => {
    const res = await new Promise((resolve, reject) => {
      const req = http.request(srv.base + '/v1/models', { agent: false, headers: { 'x-big': 'a'.repeat(40 * 1024) }, maxHeaderSize: 65536 }, resolve);
      req.on('error', reject);
      req.end();
    });
    assert.equal(res.statusCode, 431);
    res.resume();
  });

  test('malformed and truncated HTTP never takes the server down', async () => {
    const raw = (payload, { closeEarly = false, wait = 300 } = {}) => new Promise((resolve) => {
      const sock = net.connect(srv.port, '127.0.0.1');
      let data = '';
      sock.setEncoding('utf8');
      sock.on('data', (d) => { data += d; });
      sock.on('error', () => {});
      sock.on('connect', () => {
        sock.write(payload);
        if (closeEarly) { sock.destroy(); resolve(''); return; }
        setTimeout(() => { sock.destroy(); resolve(data); }, wait);
      });
      sock.on('close', () => resolve(data));
    });
    const statusOf = (d) => Number((d.match(/^HTTP\/1\.1 (\d{3})/) || [])[1]);
    const cases = [
      ['GARBAGE\r\n\r\n', 400],
      ['GET /v1/models HTTP/2.0\r\n\r\n', 505],
      ['GET /v1/models HTTP/1.1\r\nNoColon\r\n\r\n', 400],
      ['GET /v1/models HTTP/1.1\r\nA: b\r\n folded\r\n\r\n', 400],
      ['POST /v1/chat/completions HTTP/1.1\r\nContent-Length: -1\r\n\r\n', 400],
      ['POST /v1/chat/completions HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n', 400],
      ['POST /v1/chat/completions HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n', 501],
      ['POST /v1/chat/completions HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n', 400],
      ['POST /v1/chat/completions HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nFFFFFFFFFFFFFFFF\r\n', 413],
      ['POST /v1/chat/completions HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcXX', 400],
      ['POST /v1/chat/completions HTTP/1.1\r\nContent-Length: 99999999999\r\n\r\n', 413],
      ['GET relative HTTP/1.1\r\n\r\n', 400],
    ];
    for (const [payload, want] of cases) {
      const d = await raw(payload);
      assert.equal(statusOf(d), want, JSON.stringify(payload) + ' -> ' + d.slice(0, 80));
      assert.match(d, /"error":\{"message":/);
    }
    // Half a head, half a body, then gone.
    await raw('POST /v1/chat/completions HTTP/1.1\r\nContent-Le', { closeEarly: true });
    await raw('POST /v1/chat/completions HTTP/1.1\r\nContent-Length: 100\r\n\r\n{"mo', { closeEarly: true });
    await raw('POST /v1/chat/completions HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{"mo', { closeEarly: true });
    // Random bytes.
    for (let i = 0; i < 20; i++) {
      const bytes = Buffer.from(Array.from({ length: 200 + i * 50 }, (_, k) => (k * 7919 + i * 104729) % 256));
      await raw(bytes, { wait: 20 });
    }
    const ok = await fetch(srv.base + '/healthz');
    assert.equal(ok.status, 200);
    assert.equal(await ok.text(), 'ok\n');
  });

  test('HTTP/1.0 clients get a close-delimited stream', async () => {
    const body = JSON.stringify(chatBody('old client', { stream: true }));
    const data = await new Promise((resolve) => {
      const sock = net.connect(srv.port, '127.0.0.1');
      let d = '';
      sock.setEncoding('utf8');
      sock.on('data', (x) => { d += x; });
      sock.on('close', () => resolve(d));
      sock.on('connect', () => sock.write(`POST /v1/chat/completions HTTP/1.0\r\nX-Fake-Tokens: 3\r\nContent-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`));
    });
    assert.match(data, /^HTTP\/1\.1 200 OK/);
    assert.match(data, /Connection: close/);
    assert.doesNotMatch(data, /Transfer-Encoding/);
    assert.ok(data.endsWith('data: [DONE]\n\n'), data.slice(-40));
  });

  test('200 concurrent streams all complete', async () => {
    const N = 200;
    const headers = { 'x-fake-tps': '50', 'x-fake-tokens': '10', 'x-fake-ttft-ms': '300' };
    const all = Array.from({ length: N }, (_, i) =>
      streamReq('/v1/chat/completions', chatBody(`stream ${i}`, { stream: true, stream_options: { include_usage: true } }), headers));
    await sleep(200);
    const mid = (await get('/_fake/stats')).json;
    const t0 = performance.now();
    const results = await Promise.all(all);
    const ms = performance.now() - t0;
    for (const [i, s] of results.entries()) {
      assert.equal(s.status, 200);
      assert.ok(s.complete);
      const c = contentChunks(s.events);
      assert.equal(c.length, 10);
      assert.ok(c.map((e) => e.data.choices[0].delta.content).join('').startsWith(`Echo(2 msgs): stream ${i}`));
      assert.equal(s.events.at(-1).data, '[DONE]');
      assert.equal(s.events.at(-2).data.usage.completion_tokens, 10);
    }
    console.log(`# 200 streams: open_streams mid-flight ${mid.open_streams}, finished ${ms.toFixed(0)} ms after the check`);
    assert.equal(mid.open_streams, N);
    const end = (await get('/_fake/stats')).json;
    assert.equal(end.open_streams, 0);
  });
});
