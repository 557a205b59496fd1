// The metered /v1 proxy (issue 8, docs/proxy.md) driven by the official `openai` npm SDK, pointed
// at the ingress's /v1 with a chatweb API key: chat (JSON and SSE, with and without
// include_usage), legacy completions, embeddings, responses, models, the typed errors, abort
// mid-stream, exact billing; then the settings (OPENAI_PROXY off, PROXY_PASSTHROUGH,
// PROXY_CLIENT_KEYS=relay, PROXY_RPM_LIMIT) and the upstream / billing outages.
// Expected usages come from the fake upstream's deterministic rule (docs/fake-upstream.md);
// counts of text the proxy received come from the `tiktoken` npm package.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import http from 'node:http';
import { after, describe, it } from 'node:test';
import OpenAI from 'openai';
import { get_encoding } from 'tiktoken';
import { getJSON, parseSSE, postJSON, request, streamBody, withStack } from './lib/harness.mjs';

const OPS_KEY = 'ops-key-for-proxy-tests-0123456789';
const OPERATOR_KEY = 'sk-operator-key-for-proxy-tests-42';
const enc = get_encoding('o200k_base');
after(() => enc.free());
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const words = (s) => s.split(/\s+/).filter(Boolean).length;
const contentText = (c) => (typeof c === 'string' ? c : c.filter((p) => p.type === 'text').map((p) => p.text).join(' '));
/** The fake's usage for a chat request: 3 + Σ(4 + words(content)) + the reply's tokens. */
const chatUsage = (messages, completion) => ({
    prompt_tokens: 3 + messages.reduce((a, m) => a + 4 + words(contentText(m.content)), 0),
    completion_tokens: completion,
});
/** OpenAI's chat format for gpt-4o (o200k_base): 3 per message + role + content, 3 to prime the reply. */
const chatPromptCount = (messages) => 3 + messages.reduce((a, m) =>
    a + 3 + enc.encode_ordinary(m.role).length + enc.encode_ordinary(contentText(m.content)).length, 0);
const count = (text) => enc.encode_ordinary(text).length;

// ---------------------------------------------------------------------------------------------
// helpers

async function ops(stack, body) {
    const r = await postJSON(`${stack.url}/accounts`, body, { headers: { opskey: OPS_KEY } });
    assert.equal(r.status, 200, r.body);
    assert.equal(r.json().status, 'Success', `${body.action}: ${r.body}`);
    return r.json();
}

/** A new user with `count` units and one key (create_key fields: models, rpm, tpm); returns {name, key, prefix}. */
async function userWithKey(stack, name, { count = 1000000, ...keyFields } = {}) {
    await ops(stack, { action: 'register', i_username: name, i_password: `${name}-password`, count });
    return { name, ...(await newKey(stack, name, keyFields)) };
}

async function newKey(stack, name, keyFields = {}) {
    const d = (await ops(stack, { action: 'create_key', i_username: name, name: `k-${Date.now()}`, ...keyFields })).data;
    assert.match(d.key, /\S{20,}/, 'create_key returns the key');
    return { key: d.key, prefix: d.prefix };
}

async function check(stack, name) {
    return (await ops(stack, { action: 'check', i_username: name })).data;
}

/** Waits until no hold is open (and, when moved, the usage changed); returns the usage added. */
async function charged(stack, name, before, { moved = true } = {}) {
    if (!moved) await sleep(300);
    let now;
    for (const t0 = Date.now(); Date.now() - t0 < 8000;) {
        now = await check(stack, name);
        if (now.held === 0 && (!moved || now.usage !== before.usage)) break;
        await sleep(25);
    }
    assert.equal(now.held, 0, 'no hold left open');
    assert.equal(before.balance - now.balance, now.usage - before.usage, 'balance and usage moved together');
    return now.usage - before.usage;
}

function sdk(base, apiKey, extra = {}) {
    return new OpenAI({ apiKey, baseURL: `${base}/v1`, maxRetries: 0, timeout: 30000, ...extra });
}

async function lastSeq(stack) {
    const r = (await getJSON(`${stack.fakeUpstream.url}/_fake/requests`)).requests;
    return r.length ? r[r.length - 1].seq : 0;
}

async function upstreamSince(stack, seq) {
    return (await getJSON(`${stack.fakeUpstream.url}/_fake/requests?since=${seq}`)).requests;
}

async function lastEventSeq(stack) {
    const e = (await getJSON(`${stack.fakeUpstream.url}/_fake/events`)).events;
    return e.length ? e[e.length - 1].seq : 0;
}

/** Runs fn, which must throw an SDK error of class cls; returns the error. */
async function sdkError(cls, fn) {
    try {
        await fn();
    } catch (e) {
        assert.ok(e instanceof cls, `expected ${cls.name}, got ${e?.constructor?.name}: ${e?.status} ${JSON.stringify(e?.error ?? e?.message)}`);
        return e;
    }
    assert.fail(`expected ${cls.name}, but the call succeeded`);
}

/** OpenAI's error object: {message: string, type, param, code} with the given type and code. */
function assertErrorObject(error, { type, code, param = null }) {
    assert.equal(typeof error?.message, 'string', `error object: ${JSON.stringify(error)}`);
    assert.ok(error.message.length > 0, 'a message');
    assert.equal(error.type, type, `type: ${JSON.stringify(error)}`);
    assert.equal(error.code, code, `code: ${JSON.stringify(error)}`);
    assert.equal(error.param, param, `param: ${JSON.stringify(error)}`);
}

function assertRequestId(headers, what) {
    const id = typeof headers.get === 'function' ? headers.get('x-request-id') : headers['x-request-id'];
    assert.ok(id && id.length > 0, `${what}: an X-Request-Id header`);
}

function bearer(key) {
    return { authorization: `Bearer ${key}`, 'content-type': 'application/json' };
}

/** Waits, when needed, so that what follows starts at least `need` s before the minute ends. */
async function wellInsideWindow(need = 15) {
    const left = 60 - (Date.now() / 1000) % 60;
    if (left < need) await sleep(left * 1000 + 250);
}

/**
 * The upstream body without the reply limit the proxy adds when the client sent none (max_tokens,
 * max_output_tokens): the spec says it is not added; 'request bodies are forwarded unchanged'
 * checks that separately, so the other tests still check everything else.
 */
function minusAddedLimit(upBody, sent) {
    const b = { ...upBody };
    for (const k of ['max_tokens', 'max_output_tokens']) if (!(k in sent)) delete b[k];
    return b;
}

const normalize = (sse) => sse.replace(/"id":"[^"]*"/g, '"id":"X"').replace(/"created":\d+/g, '"created":0');

// ---------------------------------------------------------------------------------------------

describe('the /v1 proxy through the ingress, with the openai SDK', () => {
    const stack = withStack({
        fakeUpstream: true,
        // The fake refuses every key but the operator's: a chatweb key must never go upstream.
        fakeUpstreamEnv: { FAKE_API_KEY: OPERATOR_KEY },
        env: { OPS_KEY, OPENAI_KEY: OPERATOR_KEY, OPENAI_PROXY: 'true', OPENAI_MODEL: 'gpt-4o', PROXY_RPM_LIMIT: '0', PROXY_TPM_LIMIT: '0' },
    });

    it("chat completion (JSON): the upstream's answer, the body forwarded unchanged with the operator's key, its usage billed", async () => {
        const u = await userWithKey(stack, 'pchat');
        const before = await check(stack, u.name);
        const seq = await lastSeq(stack);
        const body = {
            model: 'gpt-4o', temperature: 0.5, user: 'end-user-7',
            messages: [{ role: 'system', content: 'be brief' }, { role: 'user', content: 'hello proxy [[fake tokens=7]]' }],
        };
        const { data, response } = await sdk(stack.url, u.key).chat.completions.create(body).withResponse();
        assert.equal(response.status, 200);
        assertRequestId(response.headers, 'chat JSON');
        assert.equal(data.object, 'chat.completion');
        assert.match(data.choices[0].message.content, /^Echo\(2 msgs\): hello proxy /);
        assert.equal(words(data.choices[0].message.content), 7);
        assert.equal(data.choices[0].finish_reason, 'stop');
        const want = chatUsage(body.messages, 7);
        assert.equal(data.usage.prompt_tokens, want.prompt_tokens);
        assert.equal(data.usage.completion_tokens, 7);
        const up = await upstreamSince(stack, seq);
        assert.equal(up.length, 1, 'one upstream request');
        assert.equal(up[0].method, 'POST');
        assert.equal(up[0].path, '/v1/chat/completions');
        assert.deepEqual(minusAddedLimit(up[0].body, body), body, 'forwarded unchanged');
        assert.equal(up[0].headers.authorization, `Bearer ${OPERATOR_KEY}`, "the operator's key upstream, never the client's");
        assert.ok(!JSON.stringify(up[0].headers).includes(u.key), 'the chatweb key is not sent upstream');
        assert.equal(await charged(stack, u.name, before), want.prompt_tokens + want.completion_tokens);
    });

    it('chat completion streamed without include_usage: usage asked upstream, hidden from the client, the rest byte-for-byte', async () => {
        const u = await userWithKey(stack, 'pstream');
        const before = await check(stack, u.name);
        const messages = [{ role: 'user', content: 'stream me please [[fake tokens=6]]' }];
        const want = chatUsage(messages, 6);
        // With the SDK: no chunk with a usage reaches the client.
        let seq = await lastSeq(stack);
        const stream = await sdk(stack.url, u.key).chat.completions.create({ model: 'gpt-4o', messages, stream: true });
        let text = '';
        let n = 0;
        let finish = null;
        for await (const chunk of stream) {
            n++;
            assert.ok(chunk.usage === undefined || chunk.usage === null, `no usage shown: ${JSON.stringify(chunk)}`);
            assert.ok(chunk.choices.length === 1, `every chunk has its choice: ${JSON.stringify(chunk)}`);
            text += chunk.choices[0].delta?.content ?? '';
            finish = chunk.choices[0].finish_reason ?? finish;
        }
        assert.match(text, /^Echo\(1 msgs\): stream me please/);
        assert.equal(words(text), 6);
        assert.equal(finish, 'stop');
        assert.equal(n, 1 + 6 + 1, 'role chunk, 6 content chunks, finish chunk');
        let up = await upstreamSince(stack, seq);
        assert.equal(up.length, 1);
        assert.deepEqual(up[0].body.stream_options, { include_usage: true }, 'the proxy asked for the usage');
        const { stream_options: _, ...rest } = minusAddedLimit(up[0].body, {});
        assert.deepEqual(rest, { model: 'gpt-4o', messages, stream: true }, 'otherwise forwarded unchanged');

        // Raw: the same events as the upstream's, minus its usage chunk.
        seq = await lastSeq(stack);
        const sent = { model: 'gpt-4o', messages, stream: true };
        const r = await streamBody(`${stack.url}/v1/chat/completions`, { method: 'POST', headers: bearer(u.key), body: JSON.stringify(sent) });
        assert.equal(r.status, 200, r.text.slice(0, 300));
        assert.match(r.headers['content-type'], /^text\/event-stream/);
        assertRequestId(r.headers, 'chat SSE');
        up = await upstreamSince(stack, seq);
        assert.equal(up.length, 1);
        const direct = await request(`${stack.fakeUpstream.url}${up[0].path}`, {
            method: 'POST', headers: bearer(OPERATOR_KEY), body: JSON.stringify(up[0].body),
        });
        const upstreamEvents = parseSSE(direct.body);
        const usageEvents = upstreamEvents.filter((e) => e.data !== '[DONE]' && JSON.parse(e.data).usage);
        assert.equal(usageEvents.length, 1, 'the upstream sent one usage chunk');
        const expected = direct.body.replace(`data: ${usageEvents[0].data}\n\n`, '');
        assert.notEqual(expected, direct.body, 'usage chunk found in the raw upstream stream');
        assert.equal(normalize(r.text), normalize(expected), 'the events byte-for-byte, without the usage chunk');
        assert.equal(await charged(stack, u.name, before), 2 * (want.prompt_tokens + want.completion_tokens));
    });

    it('chat completion streamed with include_usage: the final usage chunk arrives', async () => {
        const u = await userWithKey(stack, 'pusage');
        const before = await check(stack, u.name);
        const messages = [{ role: 'user', content: 'count me [[fake tokens=4]]' }];
        const want = chatUsage(messages, 4);
        const seq = await lastSeq(stack);
        const body = { model: 'gpt-4o', messages, stream: true, stream_options: { include_usage: true } };
        const chunks = [];
        for await (const chunk of await sdk(stack.url, u.key).chat.completions.create(body)) chunks.push(chunk);
        const last = chunks[chunks.length - 1];
        assert.deepEqual(last.choices, [], 'the usage chunk has no choices');
        assert.equal(last.usage.prompt_tokens, want.prompt_tokens);
        assert.equal(last.usage.completion_tokens, 4);
        for (const c of chunks.slice(0, -1)) assert.equal(c.usage, null, 'earlier chunks carry usage: null');
        assert.equal(chunks.length, 1 + 4 + 1 + 1);
        assert.deepEqual(minusAddedLimit((await upstreamSince(stack, seq))[0].body, body), body, 'forwarded unchanged');
        assert.equal(await charged(stack, u.name, before), want.prompt_tokens + want.completion_tokens);
    });

    it('legacy completions, JSON and streamed: passed through, the usage billed', async () => {
        const u = await userWithKey(stack, 'plegacy');
        const before = await check(stack, u.name);
        const client = sdk(stack.url, u.key);
        const prompt = 'say this now [[fake tokens=5]]';
        const c = await client.completions.create({ model: 'gpt-3.5-turbo-instruct', prompt });
        assert.equal(c.object, 'text_completion');
        assert.match(c.choices[0].text, /^Echo\(1 msgs\): say this now/);
        assert.equal(c.usage.prompt_tokens, words(prompt));
        assert.equal(c.usage.completion_tokens, 5);
        let text = '';
        for await (const chunk of await client.completions.create({ model: 'gpt-3.5-turbo-instruct', prompt, stream: true })) {
            assert.ok(!chunk.usage, `no usage chunk shown to a client that did not ask: ${JSON.stringify(chunk)}`);
            text += chunk.choices[0]?.text ?? '';
        }
        assert.equal(text, c.choices[0].text, 'the same deterministic reply, streamed');
        assert.equal(await charged(stack, u.name, before), 2 * (words(prompt) + 5));
    });

    it('embeddings: the vectors passed through, the prompt tokens billed', async () => {
        const u = await userWithKey(stack, 'pembed');
        const before = await check(stack, u.name);
        const seq = await lastSeq(stack);
        const input = ['alpha beta gamma', 'delta epsilon'];
        const e = await sdk(stack.url, u.key).embeddings.create({ model: 'text-embedding-3-small', input });
        assert.equal(e.data.length, 2);
        assert.equal(e.usage.prompt_tokens, 5);
        const up = await upstreamSince(stack, seq);
        assert.equal(up.length, 1);
        assert.equal(up[0].path, '/v1/embeddings');
        assert.equal(up[0].body.encoding_format, 'base64', 'the SDK asks for base64; forwarded as asked');
        const direct = await sdk(stack.fakeUpstream.url, OPERATOR_KEY).embeddings.create({ model: 'text-embedding-3-small', input });
        assert.deepEqual(e.data.map((d) => d.embedding), direct.data.map((d) => d.embedding), 'the same vectors as the upstream gives');
        assert.equal(await charged(stack, u.name, before), 5);
    });

    it('responses: forwarded unchanged; an upstream without it answers its own 404, nothing is charged', async () => {
        // The fake upstream does not implement /v1/responses: the proxy forwards the request and
        // passes the upstream's error through; the hold is released.
        const u = await userWithKey(stack, 'presp');
        const before = await check(stack, u.name);
        const seq = await lastSeq(stack);
        const body = { model: 'gpt-4o', input: 'hello responses' };
        const err = await sdkError(OpenAI.NotFoundError, () => sdk(stack.url, u.key).responses.create(body));
        assert.equal(err.status, 404);
        assert.equal(err.error.message, 'Invalid URL (POST /v1/responses)', "the upstream's body");
        const up = await upstreamSince(stack, seq);
        assert.equal(up.length, 1);
        assert.equal(up[0].path, '/v1/responses');
        assert.deepEqual(minusAddedLimit(up[0].body, body), body);
        assert.equal(await charged(stack, u.name, before, { moved: false }), 0);
    });

    it('request bodies are forwarded unchanged, except a missing reply limit set to what the hold covers', async () => {
        const u = await userWithKey(stack, 'pbody');
        const client = sdk(stack.url, u.key);
        const messages = [{ role: 'user', content: 'as is [[fake tokens=2]]' }];
        const sent = [
            ['/v1/chat/completions', { model: 'gpt-4o', messages, max_tokens: 50 }],
            ['/v1/chat/completions', { model: 'gpt-4o', messages, stream: true, stream_options: { include_usage: true }, max_tokens: 50 }],
            ['/v1/completions', { model: 'gpt-3.5-turbo-instruct', prompt: 'as is [[fake tokens=2]]', max_tokens: 50 }],
            ['/v1/embeddings', { model: 'text-embedding-3-small', input: 'as is', encoding_format: 'float' }],
        ];
        let seq = await lastSeq(stack);
        for (const [path, body] of sent) {
            const r = await request(`${stack.url}${path}`, { method: 'POST', headers: bearer(u.key), body: JSON.stringify(body) });
            assert.equal(r.status, 200, `${path}: ${r.body.slice(0, 200)}`);
        }
        await client.models.list();
        let up = await upstreamSince(stack, seq);
        assert.deepEqual(up.filter((x) => x.method === 'POST').map((x) => [x.path, x.body]), sent, 'a body with its own limit goes as it came');
        // Without a limit the proxy asks for what the hold covers, so a reply can never outgrow
        // what the balance pays for (docs/proxy.md).
        seq = await lastSeq(stack);
        await request(`${stack.url}/v1/chat/completions`, { method: 'POST', headers: bearer(u.key), body: JSON.stringify({ model: 'gpt-4o', messages }) });
        up = await upstreamSince(stack, seq);
        assert.ok(Number.isInteger(up[0].body.max_tokens) && up[0].body.max_tokens > 0, JSON.stringify(up[0].body));
        assert.deepEqual(minusAddedLimit(up[0].body, { model: 'gpt-4o', messages }), { model: 'gpt-4o', messages });
    });

    it('a body the proxy must change keeps every other byte: the members it adds go in front', async () => {
        const u = await userWithKey(stack, 'pbytes');
        // spacing, key order, an escape and a duplicate-free object that a re-serialisation would all change
        const text = '{ "model" : "gpt-4o",\n  "messages":[{"role":"user","content":"caf\\u00e9 [[fake tokens=2]]"}] ,"stream":true, "temperature":1.0}';
        let seq = await lastSeq(stack);
        let r = await request(`${stack.url}/v1/chat/completions`, { method: 'POST', headers: bearer(u.key), body: text });
        assert.equal(r.status, 200, r.body.slice(0, 200));
        let up = await upstreamSince(stack, seq);
        const m = /^\{"stream_options":\{"include_usage":true\},"max_tokens":(\d+),/.exec(up[0].raw);
        assert.ok(m, up[0].raw);
        assert.equal(up[0].raw, `{"stream_options":{"include_usage":true},"max_tokens":${m[1]},${text.slice(1)}`);
        // a member that is there (stream_options without include_usage) is changed in place, the
        // JSON re-written; an empty object gets its member without a comma
        seq = await lastSeq(stack);
        r = await request(`${stack.url}/v1/chat/completions`, { method: 'POST', headers: bearer(u.key),
            body: '{"model":"gpt-4o","messages":[{"role":"user","content":"x [[fake tokens=1]]"}],"stream":true,"stream_options":{"include_usage":false},"max_tokens":5}' });
        assert.equal(r.status, 200, r.body.slice(0, 200));
        up = await upstreamSince(stack, seq);
        assert.deepEqual(up[0].body.stream_options, { include_usage: true });
        assert.equal(up[0].body.max_tokens, 5);
        assert.equal((up[0].raw.match(/stream_options/g) || []).length, 1, up[0].raw);
    });

    it("models: the upstream's list, filtered to the key's allowed models", async () => {
        const all = (await sdk(stack.fakeUpstream.url, OPERATOR_KEY).models.list()).data.map((m) => m.id).sort();
        const open = await userWithKey(stack, 'pmodels');
        const { data, response } = await sdk(stack.url, open.key).models.list().withResponse();
        assertRequestId(response.headers, 'models');
        assert.deepEqual(data.data.map((m) => m.id).sort(), all, 'a key without a list sees every model');
        const narrow = await newKey(stack, 'pmodels', { models: ['gpt-4o-mini', 'text-embedding-3-small', 'no-such-model'] });
        const seen = (await sdk(stack.url, narrow.key).models.list()).data;
        assert.deepEqual(seen.map((m) => m.id).sort(), ['gpt-4o-mini', 'text-embedding-3-small']);
        for (const m of seen) assert.equal(m.object, 'model');
    });

    it("models.retrieve: an allowed model's object; one outside the key's list is refused", async () => {
        const open = await userWithKey(stack, 'pretrieve');
        const m = await sdk(stack.url, open.key).models.retrieve('gpt-4o');
        assert.equal(m.id, 'gpt-4o');
        const narrow = await newKey(stack, 'pretrieve', { models: ['gpt-4o-mini'] });
        const ok = await sdk(stack.url, narrow.key).models.retrieve('gpt-4o-mini');
        assert.equal(ok.id, 'gpt-4o-mini');
        let e;
        try { await sdk(stack.url, narrow.key).models.retrieve('gpt-4o'); } catch (err) { e = err; }
        assert.ok(e instanceof OpenAI.NotFoundError || e instanceof OpenAI.PermissionDeniedError, `refused: ${e?.constructor?.name} ${e?.status}`);
    });

    it('the api-key header (Azure style) authenticates like Bearer', async () => {
        const u = await userWithKey(stack, 'pazure');
        const before = await check(stack, u.name);
        const messages = [{ role: 'user', content: 'azure style [[fake tokens=3]]' }];
        const r = await postJSON(`${stack.url}/v1/chat/completions`, { model: 'gpt-4o', messages }, { headers: { 'api-key': u.key } });
        assert.equal(r.status, 200, r.body);
        assertRequestId(r.headers, 'api-key');
        const want = chatUsage(messages, 3);
        assert.equal(await charged(stack, u.name, before), want.prompt_tokens + want.completion_tokens);
    });

    it("AuthenticationError (401 invalid_api_key) for a missing, wrong or revoked key and a blocked user's key", async () => {
        const seq = await lastSeq(stack);
        const messages = [{ role: 'user', content: 'hi' }];
        const wrong = await sdkError(OpenAI.AuthenticationError,
            () => sdk(stack.url, 'sk-not-a-chatweb-key-000000000000').chat.completions.create({ model: 'gpt-4o', messages }));
        assert.equal(wrong.status, 401);
        assertErrorObject(wrong.error, { type: 'invalid_request_error', code: 'invalid_api_key' });
        assertRequestId(wrong.headers, '401');
        for (const headers of [{}, { authorization: 'Bearer ' }, { authorization: 'Basic Zm9vOmJhcg==' }, { 'api-key': 'nope' }]) {
            const r = await postJSON(`${stack.url}/v1/chat/completions`, { model: 'gpt-4o', messages }, { headers });
            assert.equal(r.status, 401, `${JSON.stringify(headers)}: ${r.body}`);
            assertErrorObject(r.json().error, { type: 'invalid_request_error', code: 'invalid_api_key' });
        }
        const models = await sdkError(OpenAI.AuthenticationError, () => sdk(stack.url, 'sk-wrong').models.list());
        assertErrorObject(models.error, { type: 'invalid_request_error', code: 'invalid_api_key' });

        const revoked = await userWithKey(stack, 'prevoked');
        await ops(stack, { action: 'revoke_key', i_username: revoked.name, prefix: revoked.prefix });
        await sleep(400); // a revoked key stops working everywhere within 250 ms
        const e1 = await sdkError(OpenAI.AuthenticationError, () => sdk(stack.url, revoked.key).chat.completions.create({ model: 'gpt-4o', messages }));
        assertErrorObject(e1.error, { type: 'invalid_request_error', code: 'invalid_api_key' });

        const blocked = await userWithKey(stack, 'pblocked');
        await sdk(stack.url, blocked.key).chat.completions.create({ model: 'gpt-4o', messages: [{ role: 'user', content: 'ok [[fake tokens=1]]' }] });
        const seq2 = await lastSeq(stack);
        await ops(stack, { action: 'block', i_username: blocked.name });
        await sleep(400); // a blocked user is refused everywhere within 250 ms
        const e2 = await sdkError(OpenAI.AuthenticationError, () => sdk(stack.url, blocked.key).chat.completions.create({ model: 'gpt-4o', messages }));
        assert.equal(e2.status, 401);
        assertErrorObject(e2.error, { type: 'invalid_request_error', code: 'invalid_api_key' });
        assert.equal((await upstreamSince(stack, seq2)).length, 0, 'nothing from the blocked user went upstream');
        assert.equal((await upstreamSince(stack, seq)).length, 1, 'only the one good request went upstream');
    });

    it('PermissionDeniedError (403 model_not_allowed) for a model the key may not use; nothing goes upstream', async () => {
        const u = await userWithKey(stack, 'pperm', { models: ['gpt-4o-mini', 'text-embedding-3-small'] });
        const before = await check(stack, u.name);
        const client = sdk(stack.url, u.key);
        const seq = await lastSeq(stack);
        const calls = [
            () => client.chat.completions.create({ model: 'gpt-4o', messages: [{ role: 'user', content: 'hi' }] }),
            () => client.chat.completions.create({ model: 'gpt-4o', messages: [{ role: 'user', content: 'hi' }], stream: true }),
            () => client.embeddings.create({ model: 'text-embedding-3-large', input: 'hi' }),
            () => client.completions.create({ model: 'gpt-3.5-turbo-instruct', prompt: 'hi' }),
            () => client.responses.create({ model: 'gpt-4o', input: 'hi' }),
        ];
        for (const call of calls) {
            const e = await sdkError(OpenAI.PermissionDeniedError, call);
            assert.equal(e.status, 403);
            assertErrorObject(e.error, { type: 'invalid_request_error', code: 'model_not_allowed', param: e.error?.param ?? null });
            assertRequestId(e.headers, '403');
        }
        assert.equal((await upstreamSince(stack, seq)).length, 0, 'nothing went upstream');
        const ok = await client.chat.completions.create({ model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'mini [[fake tokens=2]]' }] });
        assert.equal(ok.usage.completion_tokens, 2, 'an allowed model works');
        assert.equal(await charged(stack, u.name, before), ok.usage.prompt_tokens + 2);
    });

    it("RateLimitError (429 rate_limit_exceeded, type requests) past the key's rpm, with Retry-After and x-ratelimit headers; set_limits changes it", async () => {
        const u = await userWithKey(stack, 'prpm', { rpm: 3 });
        const client = sdk(stack.url, u.key);
        const messages = [{ role: 'user', content: 'rpm [[fake tokens=1]]' }];
        await wellInsideWindow(20);
        for (let i = 0; i < 3; i++) await client.chat.completions.create({ model: 'gpt-4o', messages });
        const seq = await lastSeq(stack);
        const e = await sdkError(OpenAI.RateLimitError, () => client.chat.completions.create({ model: 'gpt-4o', messages }));
        assert.equal(e.status, 429);
        assertErrorObject(e.error, { type: 'requests', code: 'rate_limit_exceeded' });
        assertRequestId(e.headers, '429');
        const ra = Number(e.headers.get('retry-after'));
        assert.ok(Number.isInteger(ra) && ra >= 1 && ra <= 60, `Retry-After ${e.headers.get('retry-after')}`);
        assert.equal(e.headers.get('x-ratelimit-limit-requests'), '3');
        assert.equal(e.headers.get('x-ratelimit-remaining-requests'), '0');
        assert.ok(e.headers.get('x-ratelimit-reset-requests'), 'x-ratelimit-reset-requests');
        assert.equal((await upstreamSince(stack, seq)).length, 0, 'the refused request did not go upstream');
        // set_limits replaces the key's rpm: 5 in the same window allows more (one or two: whether
        // the refused request counted in the window is the proxy's choice).
        await ops(stack, { action: 'set_limits', i_username: u.name, prefix: u.prefix, rpm: 5 });
        await sleep(500);
        let more = 0;
        let e2;
        for (let i = 0; i < 4 && !e2; i++) {
            try { await client.chat.completions.create({ model: 'gpt-4o', messages }); more++; } catch (err) { e2 = err; }
        }
        assert.ok(more === 1 || more === 2, `${more} more served after set_limits rpm 5`);
        assert.ok(e2 instanceof OpenAI.RateLimitError, `then refused: ${e2?.constructor?.name}`);
        assert.equal(e2.headers.get('x-ratelimit-limit-requests'), '5');
        assertErrorObject(e2.error, { type: 'requests', code: 'rate_limit_exceeded' });
    });

    it('BadRequestError (400 invalid_request_error) for malformed input sent raw and for bad fields; nothing charged', async () => {
        const u = await userWithKey(stack, 'pbad');
        const before = await check(stack, u.name);
        const client = sdk(stack.url, u.key);
        const seq = await lastSeq(stack);
        for (const raw of ['{not json', '', '[1,2]', '"text"', '{"model":"gpt-4o","messages":[{"role":"user","content":"x"}]']) {
            const e = await sdkError(OpenAI.BadRequestError,
                () => client.post('/chat/completions', { body: raw, headers: { 'content-type': 'application/json' } }));
            assert.equal(e.status, 400, JSON.stringify(raw));
            assert.equal(e.error?.type, 'invalid_request_error', `${JSON.stringify(raw)}: ${JSON.stringify(e.error)}`);
            assertRequestId(e.headers, '400');
        }
        for (const raw of ['{oops', '{"model":"text-embedding-3-small","input":']) {
            const e = await sdkError(OpenAI.BadRequestError,
                () => client.post('/embeddings', { body: raw, headers: { 'content-type': 'application/json' } }));
            assert.equal(e.error?.type, 'invalid_request_error');
        }
        assert.equal((await upstreamSince(stack, seq)).length, 0, 'a body that is not JSON never goes upstream');
        for (const body of [
            { model: 'gpt-4o', messages: 'not an array' },
            { model: 'gpt-4o', messages: [] },
            { model: 'gpt-4o', messages: [{ role: 'user', content: 'x' }], max_tokens: 0 },
            { model: 'gpt-4o', messages: [{ role: 'user', content: 'x' }], stream: 'yes' },
            { messages: [{ role: 'user', content: 'x' }] },
        ]) {
            const e = await sdkError(OpenAI.BadRequestError, () => client.chat.completions.create(body));
            assert.equal(e.error?.type, 'invalid_request_error', `${JSON.stringify(body)}: ${JSON.stringify(e.error)}`);
        }
        assert.equal(await charged(stack, u.name, before, { moved: false }), 0);
    });

    it('RateLimitError with insufficient_quota when the balance cannot pay; nothing goes upstream', async () => {
        const u = await userWithKey(stack, 'ppoor', { count: 5 });
        const before = await check(stack, u.name);
        const seq = await lastSeq(stack);
        const client = sdk(stack.url, u.key);
        for (const call of [
            () => client.chat.completions.create({ model: 'gpt-4o', messages: [{ role: 'user', content: 'I have no money at all, really none' }] }),
            () => client.chat.completions.create({ model: 'gpt-4o', messages: [{ role: 'user', content: 'hi' }], stream: true }),
            () => client.embeddings.create({ model: 'text-embedding-3-small', input: 'one two three four five six seven' }),
        ]) {
            const e = await sdkError(OpenAI.RateLimitError, call);
            assert.equal(e.status, 429);
            assertErrorObject(e.error, { type: 'insufficient_quota', code: 'insufficient_quota' });
        }
        assert.equal((await upstreamSince(stack, seq)).length, 0);
        const after = await check(stack, u.name);
        assert.deepEqual([after.balance, after.usage, after.held], [before.balance, before.usage, 0]);
    });

    it('what the ingress refuses itself (a 9 MiB body, a 40 KiB header) is an OpenAI error object', async () => {
        const u = await userWithKey(stack, 'pingress');
        const big = await request(`${stack.url}/v1/chat/completions`, {
            method: 'POST', headers: { authorization: `Bearer ${u.key}`, 'content-type': 'application/json' }, body: 'x'.repeat(9 * 1024 * 1024),
        });
        assert.equal(big.status, 413);
        assertErrorObject(big.json().error, { type: 'invalid_request_error', code: 'request_too_large' });
        const head = await request(`${stack.url}/v1/models`, { headers: { authorization: `Bearer ${u.key}`, 'x-big': 'a'.repeat(40 * 1024) } });
        assert.equal(head.status, 431);
        assertErrorObject(head.json().error, { type: 'invalid_request_error', code: 'request_header_too_large' });
        assert.match(head.headers['content-type'], /application\/json/);
    });

    it('/metrics: requests, tokens, time to first token and duration per model, API key and upstream', async () => {
        const u = await userWithKey(stack, 'pmetrics');
        const client = sdk(stack.url, u.key);
        const metrics = async () => (await request(`${stack.services.proxy[0].adminUrl}/metrics`)).body;
        const h = '{model="gpt-4o-mini",upstream="default"';
        const histo = (body, what) => value(body, `proxy_${what}${h}}`) ?? 0; // by model: shared with other tests
        const value = (body, name) => {
            const line = body.split('\n').find((l) => l.startsWith(`${name} `));
            return line === undefined ? undefined : Number(line.slice(name.length + 1));
        };
        const before = await metrics();
        await client.chat.completions.create({ model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'hi [[fake tokens=7]]' }] });
        const st = await client.chat.completions.create({ model: 'gpt-4o-mini', stream: true, messages: [{ role: 'user', content: 'hi [[fake tokens=9]]' }] });
        for await (const chunk of st) assert.ok(chunk); // read to the end
        await sdkError(OpenAI.RateLimitError, () => client.chat.completions.create({ model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'x [[fake error=429]]' }] }));
        const upstream = 'default'; // OPENAI_BASE_URL's upstream (UPSTREAMS names the others)
        const lbl = (extra = '') => `{model="gpt-4o-mini",key="${u.prefix}",upstream="${upstream}"${extra}}`;
        // the request's end is recorded as the client's connection finishes: wait for it
        let body;
        for (let i = 0; i < 50; i++) {
            body = await metrics();
            if (value(body, `proxy_model_requests_total${lbl(',status="429"')}`) === 1) break;
            await new Promise((r) => setTimeout(r, 100));
        }
        const mine = body.split('\n').filter((l) => l.includes('gpt-4o-mini')).join('\n');
        assert.equal(value(body, `proxy_model_requests_total${lbl(',status="200"')}`), 2, mine);
        assert.equal(value(body, `proxy_model_requests_total${lbl(',status="429"')}`), 1);
        assert.ok(value(body, `proxy_model_prompt_tokens_total${lbl()}`) > 0);
        assert.equal(value(body, `proxy_model_completion_tokens_total${lbl()}`), 16, 'the 7 + 9 tokens the fake produced');
        const delta = (what) => histo(body, what) - histo(before, what);
        assert.equal(delta('time_to_first_token_seconds_count'), 2, 'the two answers that started');
        assert.equal(delta('request_duration_seconds_count'), 3);
        assert.equal(value(body, `proxy_request_duration_seconds_bucket${h},le="+Inf"}`), histo(body, 'request_duration_seconds_count'));
        assert.ok(delta('request_duration_seconds_sum') > 0);
        assert.match(body, /# TYPE proxy_time_to_first_token_seconds histogram/);
    });

    it("upstream HTTP errors pass through with the upstream's status and body; the hold is released", async () => {
        const u = await userWithKey(stack, 'pupfail');
        const before = await check(stack, u.name);
        const client = sdk(stack.url, u.key);
        const direct = sdk(stack.fakeUpstream.url, OPERATOR_KEY);
        for (const [status, cls] of [[429, OpenAI.RateLimitError], [500, OpenAI.InternalServerError], [503, OpenAI.InternalServerError]]) {
            for (const stream of [false, true]) {
                const body = { model: 'gpt-4o', messages: [{ role: 'user', content: `fail [[fake error=${status}]]` }], stream };
                const want = await sdkError(cls, () => direct.chat.completions.create(body));
                const e = await sdkError(cls, () => client.chat.completions.create(body));
                assert.equal(e.status, status);
                assert.deepEqual(e.error, want.error, `${status} stream=${stream}: the upstream's body`);
                assertRequestId(e.headers, `upstream ${status}`);
            }
        }
        assert.equal(await charged(stack, u.name, before, { moved: false }), 0);
    });

    it("an upstream 429 keeps the upstream's x-ratelimit headers (responses pass through unchanged)", async () => {
        const u = await userWithKey(stack, 'pupheaders');
        const e = await sdkError(OpenAI.RateLimitError, () => sdk(stack.url, u.key).chat.completions.create({
            model: 'gpt-4o', messages: [{ role: 'user', content: 'busy [[fake error=429]]' }],
        }));
        assert.equal(e.error.type, 'requests');
        assert.equal(e.headers.get('x-ratelimit-limit-requests'), '3');
        assert.equal(e.headers.get('x-ratelimit-remaining-requests'), '0');
        assert.equal(e.headers.get('x-ratelimit-reset-requests'), '20s');
        assert.match(e.headers.get('x-upstream-request-id') ?? '', /^req_fake/, "the upstream's own request id, renamed");
        assertRequestId(e.headers, 'ours stays X-Request-Id');
    });

    it('a slow client of a stream: the proxy stops and resumes with it, nothing is lost', { timeout: 60000 }, async (t) => {
        const u = await userWithKey(stack, 'pslowreader');
        const tokens = 30000; // about 7 MB of SSE: far more than the socket buffers and 256 KiB
        const body = JSON.stringify({ model: 'gpt-4o', stream: true, messages: [{ role: 'user', content: `long [[fake tokens=${tokens}]]` }] });
        const p = stack.services.proxy[0];
        const text = await new Promise((resolve, reject) => {
            const req = http.request(`${p.url}/v1/chat/completions`, {
                method: 'POST', agent: false,
                headers: { authorization: `Bearer ${u.key}`, 'content-type': 'application/json' },
            }, (res) => {
                let got = '';
                res.setEncoding('utf8');
                res.pause(); // reads nothing for 2 s: the proxy must stop, then resume when it drains
                const stall = setTimeout(() => { req.destroy(); reject(new Error(`stalled after ${got.length} bytes`)); }, 40000);
                setTimeout(() => {
                    res.on('data', (d) => { got += d; });
                    res.on('end', () => { clearTimeout(stall); resolve(got); });
                    res.resume();
                }, 2000);
            });
            req.on('error', reject);
            req.end(body);
        });
        const events = text.split('\n\n').filter((e) => e.startsWith('data: '));
        const content = events.filter((e) => e !== 'data: [DONE]')
            .map((e) => JSON.parse(e.slice(6))).filter((j) => j.choices?.[0]?.delta?.content).length;
        t.diagnostic(`${text.length} bytes, ${content} content chunks after a 2 s pause`);
        assert.equal(content, tokens, 'every token arrived');
        assert.equal(events[events.length - 1], 'data: [DONE]');
    });

    it('abort mid-stream: the upstream sees the close within 100 ms; the prompt and the text received are billed', async (t) => {
        const u = await userWithKey(stack, 'pabort');
        const before = await check(stack, u.name);
        const messages = [{ role: 'user', content: 'leave early please [[fake tps=5 tokens=60]]' }];
        const seq = await lastSeq(stack);
        const ev0 = await lastEventSeq(stack);
        const ac = new AbortController();
        const stream = await sdk(stack.url, u.key).chat.completions.create({ model: 'gpt-4o', messages, stream: true }, { signal: ac.signal });
        let text = '';
        let contentChunks = 0;
        let abortedAt = 0;
        try {
            for await (const chunk of stream) {
                const d = chunk.choices[0]?.delta?.content;
                if (d) { text += d; contentChunks++; }
                if (contentChunks === 10) { abortedAt = Date.now(); ac.abort(); break; }
            }
        } catch (e) {
            if (!(e instanceof OpenAI.APIUserAbortError)) throw e;
        }
        assert.ok(abortedAt > 0, 'aborted after 10 tokens');
        let closed;
        for (let i = 0; i < 100 && !closed; i++) {
            closed = (await getJSON(`${stack.fakeUpstream.url}/_fake/events?since=${ev0}`)).events
                .find((e) => e.type === 'client_closed' && e.request_seq > seq);
            if (!closed) await sleep(20);
        }
        assert.ok(closed, 'the upstream saw the close');
        const lag = closed.t_ms - abortedAt;
        t.diagnostic(`the upstream saw the close ${lag.toFixed(1)} ms after the client aborted`);
        assert.ok(lag < 100, `upstream closed ${lag.toFixed(1)} ms after the abort`);
        assert.equal(closed.chunks_sent, contentChunks, 'the proxy received what the client saw (tokens 200 ms apart)');
        assert.equal(await charged(stack, u.name, before), chatPromptCount(messages) + count(text),
            `prompt ${chatPromptCount(messages)} + count(${JSON.stringify(text)})`);
    });

    it("a mix of calls is billed exactly the upstream's usage, one ledger row each, no hold left", async () => {
        const u = await userWithKey(stack, 'pmix');
        const before = await check(stack, u.name);
        const client = sdk(stack.url, u.key);
        let sum = 0;
        const rows = [];
        const m1 = [{ role: 'user', content: 'one [[fake tokens=3]]' }];
        const a = await client.chat.completions.create({ model: 'gpt-4o', messages: m1 });
        rows.push([a.usage.prompt_tokens, a.usage.completion_tokens]);
        const m2 = [{ role: 'system', content: 'sys here' }, { role: 'user', content: 'two words [[fake tokens=9]]' }];
        let text = '';
        for await (const c of await client.chat.completions.create({ model: 'gpt-4o', messages: m2, stream: true })) text += c.choices[0]?.delta?.content ?? '';
        const w2 = chatUsage(m2, 9);
        assert.equal(words(text), 9);
        rows.push([w2.prompt_tokens, 9]);
        const e = await client.embeddings.create({ model: 'text-embedding-3-small', input: 'x y z w', encoding_format: 'float' });
        assert.equal(e.data[0].embedding.length, 1536);
        rows.push([4, 0]);
        const c = await client.completions.create({ model: 'gpt-3.5-turbo-instruct', prompt: 'legacy words here [[fake tokens=2]]' });
        rows.push([c.usage.prompt_tokens, 2]);
        assert.deepEqual(rows[0], [chatUsage(m1, 3).prompt_tokens, 3]);
        for (const [p, q] of rows) sum += p + q;
        assert.equal(await charged(stack, u.name, before), sum);
        const entries = (await ops(stack, { action: 'usage', i_username: u.name, limit: 50 })).data.entries.filter((x) => x.kind !== 'recharge');
        assert.equal(entries.length, 4, `one ledger row per call: ${JSON.stringify(entries)}`);
        for (const x of entries) assert.equal(x.kind, 'charge');
        assert.deepEqual(entries.map((x) => [x.tokens_in, x.tokens_out]).sort(), rows.slice().sort(), 'tokens of each row');
        assert.equal(entries.reduce((s, x) => s + x.units, 0), -sum);
    });
});

describe('OPENAI_PROXY off: every /v1 path is an OpenAI-style 404', () => {
    const stack = withStack({ env: { OPS_KEY } });

    it('answers 404 with an error object, whatever the key, and sends nothing upstream', async () => {
        await ops(stack, { action: 'register', i_username: 'poff', i_password: 'poff-password', count: 1000 });
        const { key } = await newKey(stack, 'poff');
        const seq = await lastSeq(stack);
        for (const [method, path, body] of [
            ['POST', '/v1/chat/completions', { model: 'gpt-4o', messages: [{ role: 'user', content: 'hi' }] }],
            ['POST', '/v1/embeddings', { model: 'text-embedding-3-small', input: 'hi' }],
            ['GET', '/v1/models'], ['POST', '/v1/responses', { model: 'gpt-4o', input: 'hi' }], ['GET', '/v1/files'],
        ]) {
            for (const headers of [{ authorization: `Bearer ${key}` }, {}]) {
                const r = await request(`${stack.url}${path}`, { method, headers, json: body });
                assert.equal(r.status, 404, `${method} ${path}: ${r.body}`);
                const j = r.json();
                assert.equal(typeof j.error?.message, 'string', r.body);
                for (const f of ['type', 'param', 'code']) assert.ok(f in j.error, `${f} in ${r.body}`);
                assertRequestId(r.headers, '404');
            }
        }
        const e = await sdkError(OpenAI.NotFoundError, () => sdk(stack.url, key).chat.completions.create({ model: 'gpt-4o', messages: [{ role: 'user', content: 'hi' }] }));
        assert.equal(e.status, 404);
        assert.equal((await upstreamSince(stack, seq)).length, 0, 'nothing went upstream');
    });
});

describe('settings: PROXY_PASSTHROUGH, PROXY_CLIENT_KEYS=relay, PROXY_RPM_LIMIT; the upstream and billing down', () => {
    const stack = withStack({
        fakeUpstream: true,
        env: {
            OPS_KEY, OPENAI_KEY: OPERATOR_KEY, OPENAI_PROXY: 'true', PROXY_RPM_LIMIT: '4',
            PROXY_PASSTHROUGH: '/v1/files,/v1/batches', PROXY_CLIENT_KEYS: 'relay', PROXY_UPSTREAM_IDLE_TIMEOUT: '1',
        },
    });

    it('PROXY_PASSTHROUGH: listed paths pass through unmetered for a chatweb key, with their query string; others are 404; no key is 401', async () => {
        const u = await userWithKey(stack, 'ppass');
        const before = await check(stack, u.name);
        const client = sdk(stack.url, u.key);
        let seq = await lastSeq(stack);
        const files = await request(`${stack.url}/v1/files?purpose=batch`, { headers: { authorization: `Bearer ${u.key}` } });
        assert.equal(files.status, 404, files.body);
        assert.equal(files.json().error.message, 'Invalid URL (GET /v1/files)', "the upstream's own answer");
        const batch = { input_file_id: 'file-abc', endpoint: '/v1/chat/completions', completion_window: '24h' };
        const e = await sdkError(OpenAI.NotFoundError, () => client.batches.create(batch));
        assert.equal(e.error.message, 'Invalid URL (POST /v1/batches)', "the upstream's own answer");
        let up = await upstreamSince(stack, seq);
        assert.deepEqual(up.map((r) => `${r.method} ${r.path}`), ['GET /v1/files?purpose=batch', 'POST /v1/batches']);
        // arguments in order, percent-encoding kept where needed, a bare flag kept bare
        seq = await lastSeq(stack);
        await request(`${stack.url}/v1/files?order=desc&after=file%2Fx%20y&flag&limit=2`, { headers: { authorization: `Bearer ${u.key}` } });
        assert.deepEqual((await upstreamSince(stack, seq)).map((r) => r.path), ['/v1/files?order=desc&after=file%2Fx%20y&flag&limit=2']);
        const long = await request(`${stack.url}/v1/files?q=${'x'.repeat(2100)}`, { headers: { authorization: `Bearer ${u.key}` } });
        assert.equal(long.status, 414, long.body);
        assertErrorObject(long.json().error, { type: 'invalid_request_error', code: null });
        assert.equal((await upstreamSince(stack, seq)).length, 1, 'the over-long query did not go upstream');
        assert.deepEqual(up[1].body, batch, 'the body relayed');
        for (const r of up) assert.equal(r.headers.authorization, `Bearer ${OPERATOR_KEY}`);
        seq = await lastSeq(stack);
        const other = await request(`${stack.url}/v1/audio/speech`, { method: 'POST', headers: bearer(u.key), json: { model: 'tts-1', input: 'hi', voice: 'alloy' } });
        assert.equal(other.status, 404, other.body);
        assert.equal(typeof other.json().error.message, 'string');
        const anon = await request(`${stack.url}/v1/files`);
        assert.equal(anon.status, 401, anon.body);
        assertErrorObject(anon.json().error, { type: 'invalid_request_error', code: 'invalid_api_key' });
        up = await upstreamSince(stack, seq);
        assert.equal(up.length, 0, 'neither an unlisted path nor an unauthenticated one went upstream');
        assert.equal(await charged(stack, u.name, before, { moved: false }), 0, 'passthrough is unmetered');
    });

    it("PROXY_CLIENT_KEYS=relay: a key that is not a chatweb key is relayed upstream as is, unmetered; chatweb keys stay metered", async () => {
        const own = 'sk-clients-own-upstream-key-123456';
        let seq = await lastSeq(stack);
        const r = await sdk(stack.url, own).chat.completions.create({ model: 'gpt-4o', messages: [{ role: 'user', content: 'relay me [[fake tokens=5]]' }] });
        assert.match(r.choices[0].message.content, /^Echo\(1 msgs\): relay me/);
        let up = await upstreamSince(stack, seq);
        assert.equal(up.length, 1);
        assert.equal(up[0].headers.authorization, `Bearer ${own}`, "the client's own key upstream");
        const u = await userWithKey(stack, 'prelay');
        const before = await check(stack, u.name);
        seq = await lastSeq(stack);
        const messages = [{ role: 'user', content: 'metered [[fake tokens=2]]' }];
        await sdk(stack.url, u.key).chat.completions.create({ model: 'gpt-4o', messages });
        up = await upstreamSince(stack, seq);
        assert.equal(up[0].headers.authorization, `Bearer ${OPERATOR_KEY}`);
        const w = chatUsage(messages, 2);
        assert.equal(await charged(stack, u.name, before), w.prompt_tokens + w.completion_tokens);
    });

    it("PROXY_RPM_LIMIT is per user (all the user's keys together); a key's own rpm replaces it", async () => {
        await ops(stack, { action: 'register', i_username: 'puserrpm', i_password: 'puserrpm-password', count: 100000 });
        const k1 = await newKey(stack, 'puserrpm');
        const k2 = await newKey(stack, 'puserrpm');
        const own = await userWithKey(stack, 'pkeyrpm', { rpm: 6 });
        const messages = [{ role: 'user', content: 'limit [[fake tokens=1]]' }];
        await wellInsideWindow(20);
        for (const k of [k1, k2, k1, k2]) await sdk(stack.url, k.key).chat.completions.create({ model: 'gpt-4o', messages });
        for (const k of [k1, k2]) {
            const e = await sdkError(OpenAI.RateLimitError, () => sdk(stack.url, k.key).chat.completions.create({ model: 'gpt-4o', messages }));
            assertErrorObject(e.error, { type: 'requests', code: 'rate_limit_exceeded' });
            assert.equal(e.headers.get('x-ratelimit-limit-requests'), '4');
            assert.equal(e.headers.get('x-ratelimit-remaining-requests'), '0');
            assert.ok(Number(e.headers.get('retry-after')) >= 1);
        }
        for (let i = 0; i < 6; i++) await sdk(stack.url, own.key).chat.completions.create({ model: 'gpt-4o', messages });
        const e = await sdkError(OpenAI.RateLimitError, () => sdk(stack.url, own.key).chat.completions.create({ model: 'gpt-4o', messages }));
        assert.equal(e.headers.get('x-ratelimit-limit-requests'), '6');
    });

    it('upstream timeout (PROXY_UPSTREAM_IDLE_TIMEOUT): 504 with an error object; the hold ends (the prompt, as billing.md says for a stall)', async () => {
        const u = await userWithKey(stack, 'pslow');
        const before = await check(stack, u.name);
        const client = sdk(stack.url, u.key);
        const ev0 = await lastEventSeq(stack);
        const prompts = [];
        for (const [stream, content] of [[false, 'never answers [[fake stall=0]]'], [true, 'thinks too long [[fake ttft=8000]]']]) {
            const messages = [{ role: 'user', content }];
            prompts.push(chatPromptCount(messages));
            const e = await sdkError(OpenAI.APIError, () => client.chat.completions.create({ model: 'gpt-4o', messages, stream }));
            assert.equal(e.status, 504, `stream=${stream}: ${e.status} ${JSON.stringify(e.error)}`);
            assert.equal(typeof e.error?.message, 'string');
            assertRequestId(e.headers, '504');
        }
        await sleep(200);
        const closed = (await getJSON(`${stack.fakeUpstream.url}/_fake/events?since=${ev0}`)).events.filter((e) => e.type === 'client_closed');
        assert.equal(closed.length, 2, 'the proxy closed both upstream requests');
        // Nothing was received: the proxy may release the hold or charge the prompts it sent
        // (billing.md leaves an upstream silent from the start open); never anything else.
        const got = await charged(stack, u.name, before, { moved: false });
        assert.ok(got === 0 || got === prompts[0] + prompts[1], `charged ${got}: 0 or the prompts ${prompts[0] + prompts[1]}`);
    });

    it('upstream unreachable: 502 with an error object, the hold released; billing unreachable: 503', async () => {
        const u = await userWithKey(stack, 'pdown');
        const before = await check(stack, u.name);
        const client = sdk(stack.url, u.key);
        await stack.fakeUpstream.stop();
        for (const stream of [false, true]) {
            const e = await sdkError(OpenAI.InternalServerError,
                () => client.chat.completions.create({ model: 'gpt-4o', messages: [{ role: 'user', content: 'anyone?' }], stream }));
            assert.equal(e.status, 502, `stream=${stream}: ${JSON.stringify(e.error)}`);
            assert.equal(typeof e.error?.message, 'string');
            assertRequestId(e.headers, '502');
        }
        assert.equal(await charged(stack, u.name, before, { moved: false }), 0, 'released: nothing charged, no hold');
        for (const b of stack.services.billing) await b.stop();
        const e = await sdkError(OpenAI.InternalServerError,
            () => client.chat.completions.create({ model: 'gpt-4o', messages: [{ role: 'user', content: 'billing?' }] }));
        assert.equal(e.status, 503, JSON.stringify(e.error));
        assert.equal(typeof e.error?.message, 'string');
    });
});

describe('Redis down: the request limit fails closed (503 rate_limiter_unavailable) after asking again', () => {
    const stack = withStack({
        fakeUpstream: true,
        env: { OPS_KEY, OPENAI_KEY: OPERATOR_KEY, OPENAI_PROXY: 'true', PROXY_RPM_LIMIT: '100', LOG_LEVEL: 'info' },
    });

    it('while Redis is down a /v1 call is refused with the error object, never served unlimited', async () => {
        const u = await userWithKey(stack, 'predis');
        const client = sdk(stack.url, u.key);
        const ok = await client.chat.completions.create({ model: 'gpt-4o', messages: [{ role: 'user', content: 'hi' }] });
        assert.ok(ok.choices.length > 0);
        await stack.redis.stop();
        const t0 = Date.now();
        const e = await sdkError(OpenAI.InternalServerError,
            () => client.chat.completions.create({ model: 'gpt-4o', messages: [{ role: 'user', content: 'hi again' }] }));
        assert.equal(e.status, 503, JSON.stringify(e.error));
        assertErrorObject(e.error, { type: 'server_error', code: 'rate_limiter_unavailable' });
        assert.ok(Date.now() - t0 >= 250, 'asked Redis again (3 x 100 ms) before refusing');
        const log = fs.readFileSync(stack.services.proxy[0].logFile, 'utf8');
        assert.match(log, /cannot count this request .*asking again/);
    });
});
