// Every exit of a metered request ends its hold exactly once, with the right charge
// (services/meter, docs/billing.md "Every exit of a metered request"): after each, no hold is
// left open and the ledger moved by exactly what the upstream's usage, or our exact count of the
// text received, says. Chat is the caller here; the /v1 proxy will run the same cases.
import assert from 'node:assert/strict';
import http from 'node:http';
import { after, describe, it } from 'node:test';
import { get_encoding } from 'tiktoken';
import { basicAuth, getJSON, postJSON, request, withStack } from './lib/harness.mjs';

const OPS_KEY = 'ops-key-for-meter-exit-tests-0123';
const enc = get_encoding('o200k_base');
after(() => enc.free());
const tokens = (text) => enc.encode_ordinary(text).length;
const promptTokens = (prompt) => 3 + 3 + tokens('user') + tokens(prompt);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function ops(stack, body) {
    const r = await postJSON(`${stack.url}/accounts`, body, { headers: { opskey: OPS_KEY } });
    assert.equal(r.json().status, 'Success', r.body);
    return r.json();
}

async function user(stack, name) {
    await ops(stack, { action: 'register', i_username: name, i_password: `${name}-password`, count: 100000 });
    return { auth: basicAuth(name, `${name}-password`), before: (await ops(stack, { action: 'check', i_username: name })).data };
}

/** Waits until no hold is open for name (and, when moved, the usage changed); returns the change. */
async function charged(stack, name, before, { moved = true } = {}) {
    let now;
    for (const t0 = Date.now(); Date.now() - t0 < 8000;) {
        now = (await ops(stack, { action: 'check', i_username: name })).data;
        if (now.held === 0 && (!moved || now.usage !== before.usage)) break;
        await sleep(25);
    }
    assert.equal(now.held, 0, 'no hold left open');
    assert.equal(now.balance - before.balance, before.usage - now.usage, 'balance and usage agree');
    return now.usage - before.usage;
}

function chat(stack, auth, prompt) {
    return request(`${stack.url}/api/chat-process`, {
        method: 'POST', headers: { authorization: auth, 'content-type': 'application/json' },
        body: JSON.stringify({ prompt }), timeoutMs: 30000,
    });
}

const lastObject = (body) => JSON.parse(body.trim().split('\n').pop());

describe('every exit of a metered chat ends its hold once', () => {
    const stack = withStack({
        env: {
            OPS_KEY, OPENAI_MODEL: 'gpt-4o', OPENAI_MAX_TOKENS: '1000', CHAT_MIN_RESPONSE_TOKENS: '100',
            CHAT_UPSTREAM_IDLE_TIMEOUT: '1',
        },
    });

    it("done: the upstream's usage", async () => {
        const { auth, before } = await user(stack, 'exa');
        const prompt = 'all good [[fake tokens=7]]';
        const r = await chat(stack, auth, prompt);
        assert.equal(lastObject(r.body).detail.choices[0].finish_reason, 'stop');
        assert.equal(await charged(stack, 'exa', before), 3 + 4 + prompt.split(' ').length + 7);
    });

    it('the upstream refuses before the first byte: retried twice, then Release, nothing charged', async () => {
        const { auth, before } = await user(stack, 'exb');
        const seq = (await getJSON(`${stack.fakeUpstream.url}/_fake/requests`)).requests.pop()?.seq || 0;
        const r = await chat(stack, auth, 'refuse [[fake error=503]]');
        assert.match(JSON.parse(r.body).message, /\[OpenAI\]/);
        const sent = (await getJSON(`${stack.fakeUpstream.url}/_fake/requests?since=${seq}`)).requests;
        assert.equal(sent.length, 3, 'the first attempt and two retries');
        await sleep(200);
        assert.equal(await charged(stack, 'exb', before, { moved: false }), 0);
        // a client error is not retried
        const seq2 = sent[sent.length - 1].seq;
        await chat(stack, auth, 'bad [[fake error=400]]');
        assert.equal((await getJSON(`${stack.fakeUpstream.url}/_fake/requests?since=${seq2}`)).requests.length, 1);
    });

    it('the upstream cuts the stream: the prompt and the text received, counted', async () => {
        const { auth, before } = await user(stack, 'exc');
        const prompt = 'cut short [[fake tokens=10 cut=3]]';
        const r = await chat(stack, auth, prompt);
        const text = lastObject(r.body).text;
        const received = text.slice(0, text.lastIndexOf('\n['));
        assert.match(text, /the upstream stream broke off/);
        assert.equal(received.split(' ').length, 3, received);
        assert.equal(await charged(stack, 'exc', before), promptTokens(prompt) + tokens(received));
    });

    it('the upstream stalls: abandoned after the idle timeout, the text received counted', async () => {
        const { auth, before } = await user(stack, 'exd');
        const prompt = 'stall please [[fake tokens=10 stall=2]]';
        const r = await chat(stack, auth, prompt);
        const text = lastObject(r.body).text;
        const received = text.slice(0, text.lastIndexOf('\n['));
        assert.match(text, /upstream timed out/);
        assert.equal(await charged(stack, 'exd', before), promptTokens(prompt) + tokens(received));
    });

    it('the client leaves before the first token: the prompt only', async () => {
        const { auth, before } = await user(stack, 'exe');
        const prompt = 'think long [[fake ttft=5000 tokens=5]]';
        await new Promise((resolve) => {
            const req = http.request(`${stack.url}/api/chat-process`, {
                method: 'POST', agent: false, headers: { authorization: auth, 'content-type': 'application/json' },
            });
            req.on('error', () => {});
            req.end(JSON.stringify({ prompt }));
            setTimeout(() => { req.destroy(); resolve(); }, 700); // admitted and waiting upstream
        });
        assert.equal(await charged(stack, 'exe', before), promptTokens(prompt));
        // the upstream saw the close, not a finished reply
        const ev = (await getJSON(`${stack.fakeUpstream.url}/_fake/events`)).events;
        assert.ok(ev.some((e) => e.type === 'client_closed' && e.chunks_sent === 0));
    });
});

describe('a stream still running at the drain deadline ends its hold once', () => {
    const stack = withStack({
        env: { OPS_KEY, OPENAI_MODEL: 'gpt-4o', OPENAI_MAX_TOKENS: '1000', CHAT_MIN_RESPONSE_TOKENS: '100', DRAIN_TIMEOUT: '1' },
    });

    it('SIGTERM with DRAIN_TIMEOUT 1: the stream is ended as if its client left, settled as counted, and chat exits 0', async () => {
        const { auth, before } = await user(stack, 'exf');
        const prompt = 'outlive the drain [[fake tps=5 tokens=100]]';   // 20 s of reply
        const c = stack.services.chat[0];
        const pending = chat(stack, auth, prompt).catch((e) => ({ error: e }));
        await sleep(1200);
        process.kill(c.pid, 'SIGTERM');
        const info = await c.exited;
        assert.deepEqual(info, { code: 0, signal: null }, 'exits 0, not killed by libmicrohttpd');
        const r = await pending;
        const body = r.body || '';
        assert.ok(r.error || !body.includes('"finish_reason":"stop"'), 'the stream was cut, not finished');
        // Settled by what chat counted (the prompt and at least what the client received), not
        // left to expire (a hold's expiry charges the whole reservation, ten minutes later).
        const got = body.trim() ? lastObject(body).text : '';
        const usage = await charged(stack, 'exf', before);
        assert.ok(usage >= promptTokens(prompt) + (got ? tokens(got) : 0), `charged ${usage}`);
        assert.ok(usage < promptTokens(prompt) + 100, `charged ${usage}: less than the whole reply`);
    });
});
