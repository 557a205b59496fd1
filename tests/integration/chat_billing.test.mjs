// Web chat is billed (issue 4, item 6): chat reserves the worst case before its upstream call and
// settles to the upstream's usage after it. Accounts are made through the ops API (auth), money
// lives in billing, and the fake upstream reports a deterministic usage block.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { basicAuth, getJSON, postJSON, startService, streamBody, withStack } from './lib/harness.mjs';

const OPS_KEY = 'ops-key-for-tests-0123456789';
const BUDGET = 1000;        // OPENAI_MAX_TOKENS: every chat turn holds at most this much
const MIN_REPLY = 100;      // CHAT_MIN_RESPONSE_TOKENS

async function ops(stack, body) {
    const r = await postJSON(`${stack.url}/accounts`, body, { headers: { opskey: OPS_KEY } });
    return { status: r.status, json: r.json() };
}

async function register(stack, name, password, count) {
    const r = await ops(stack, { action: 'register', i_username: name, i_password: password, count });
    assert.equal(r.status, 200, JSON.stringify(r.json));
    assert.equal(r.json.message, 'success', JSON.stringify(r.json));
}

async function check(stack, name) {
    const r = await ops(stack, { action: 'check', i_username: name });
    assert.equal(r.status, 200);
    return r.json.data;
}

function chat(stack, auth, prompt, options = {}) {
    return streamBody(`${stack.url}/api/chat-process`, {
        method: 'POST', headers: { authorization: auth, 'content-type': 'application/json' },
        body: JSON.stringify({ prompt, options }), timeoutMs: 60000,
    });
}

function lastObject(text) {
    const lines = text.split('\n');
    return JSON.parse(lines[lines.length - 1]);
}

for (const backend of ['sqlite', 'mariadb']) describe(`web chat is billed (${backend})`, () => {
    const stack = withStack({
        replicas: { billing: 2 },
        mysql: backend === 'mariadb',
        fastMysql: true,
        env: {
            OPS_KEY, OPENAI_MAX_TOKENS: String(BUDGET), CHAT_MIN_RESPONSE_TOKENS: String(MIN_REPLY),
            BASIC_AUTH_USER: 'root', BASIC_AUTH_PASSWORD: 'root-password-1',
        },
    });

    it("a registered user's balance goes down by exactly the upstream's usage", async () => {
        await register(stack, 'carol', 'carol-password', 5000);
        const before = await check(stack, 'carol');
        const seq0 = (await getJSON(`${stack.fakeUpstream.url}/_fake/requests`)).requests.pop()?.seq || 0;
        const prompt = 'count me [[fake tokens=7]]';
        const r = await chat(stack, basicAuth('carol', 'carol-password'), prompt);
        assert.equal(r.status, 200);
        assert.match(lastObject(r.text).text, /count me/);
        const up = (await getJSON(`${stack.fakeUpstream.url}/_fake/requests?since=${seq0}`)).requests[0];
        assert.deepEqual(up.body.stream_options, { include_usage: true });
        assert.ok(up.body.max_tokens <= BUDGET, `max_tokens ${up.body.max_tokens}`);
        // The fake's usage: prompt = 3 + (4 + words) per message (the directive is part of the
        // content it received); completion = 7 tokens.
        const words = prompt.split(' ').length;
        const expected = 3 + 4 + words + 7;
        let after;
        for (let i = 0; i < 50; i++) {   // settle runs right after the stream ends
            after = await check(stack, 'carol');
            if (after.usage !== before.usage) break;
            await new Promise((res) => setTimeout(res, 20));
        }
        assert.equal(after.usage - before.usage, expected);
        assert.equal(before.balance - after.balance, expected);
    });

    it('a user without balance gets the seed message with the self-service link', async () => {
        await register(stack, 'dave', 'dave-password', 0);
        const r = await chat(stack, basicAuth('dave', 'dave-password'), 'hello');
        const j = JSON.parse(r.text);
        assert.equal(j.status, 'Fail');
        assert.equal(j.message, 'Token数已用尽,请到[自助中心](/admin)补充,您的账号: dave');
    });

    it('a small balance still chats: the completion limit is lowered to fit, never overdrawn', async () => {
        await register(stack, 'erin', 'erin-password', 150);
        const seq0 = (await getJSON(`${stack.fakeUpstream.url}/_fake/requests`)).requests.pop()?.seq || 0;
        const r = await chat(stack, basicAuth('erin', 'erin-password'), 'tiny [[fake tokens=500]]');
        assert.equal(r.status, 200);
        const up = (await getJSON(`${stack.fakeUpstream.url}/_fake/requests?since=${seq0}`)).requests[0];
        assert.ok(up.body.max_tokens < 150, `max_tokens lowered to ${up.body.max_tokens}`);
        assert.equal(lastObject(r.text).detail.choices[0].finish_reason, 'length');
        await new Promise((res) => setTimeout(res, 200));
        const after = await check(stack, 'erin');
        assert.ok(after.balance >= 0, `balance ${after.balance}`);
    });

    it('static users are never refused, and their usage is recorded', async () => {
        const before = await check(stack, 'root');
        const r = await chat(stack, basicAuth('root', 'root-password-1'), 'on the house [[fake tokens=5]]');
        assert.equal(r.status, 200);
        assert.match(lastObject(r.text).text, /on the house/);
        await new Promise((res) => setTimeout(res, 200));
        const after = await check(stack, 'root');
        assert.ok(after.usage > before.usage, 'usage recorded');
    });

    it('a Settle that cannot reach billing is retried until it gets through, and charges exactly', { timeout: 60000 }, async () => {
        if (backend !== 'sqlite') return; // the retry is chat's; one back end is enough
        await register(stack, 'gary', 'gary-password', 100000);
        const before = await check(stack, 'gary');
        const prompt = 'pay later [[fake tps=5 tokens=10]]';
        const pending = chat(stack, basicAuth('gary', 'gary-password'), prompt);
        await new Promise((res) => setTimeout(res, 700)); // reserved, streaming
        const billing = stack.services.billing;
        for (const b of billing) await b.stop();
        const r = await pending;
        assert.equal(r.status, 200);
        assert.match(lastObject(r.text).text, /pay later/);
        await new Promise((res) => setTimeout(res, 500)); // the first Settle fails
        // with billing down nothing is sent upstream: a clear 503, and the unknown hold is released later
        const refused = await chat(stack, basicAuth('gary', 'gary-password'), 'while billing is down');
        assert.equal(refused.status, 503);
        assert.match(JSON.parse(refused.text).message, /Billing service unavailable/);
        const back = await startService('billing', {
            env: { REDIS_URL: stack.redisUrl, ...(stack.db ? { DB: stack.db } : {}), AUTH_URL: stack.authUrl, BILLING_URL: stack.billingUrl },
            dir: stack.dir, logDir: stack.logDir, label: 'billing-restarted', httpAddr: billing[0].httpAddr,
        });
        stack.handles.push(back);
        const expected = 3 + 4 + prompt.split(' ').length + 10;
        let after;
        for (let i = 0; i < 100; i++) {
            after = await check(stack, 'gary');
            if (after.usage !== before.usage) break;
            await new Promise((res) => setTimeout(res, 200));
        }
        assert.equal(after.usage - before.usage, expected, 'the real usage, not the whole hold');
    });

    it('race: a balance for exactly N turns serves exactly N of 200 concurrent chats', { timeout: 120000 }, async () => {
        const N = 7;
        await register(stack, 'frank', 'frank-password', N * BUDGET);
        const before = await check(stack, 'frank');
        const auth = basicAuth('frank', 'frank-password');
        // One verified login first: the 200 below then hit auth's cache instead of 200 argon2id
        // hashes, so every reservation is decided long before the first hold is settled.
        await chat(stack, auth, '/me');
        // A slow first token keeps every hold open until all 200 reservations were decided.
        const results = await Promise.all(Array.from({ length: 200 }, (_, i) =>
            chat(stack, auth, `race ${i} [[fake ttft=5000 tokens=5]]`).then((r) => r, (e) => ({ error: e }))));
        const ok = results.filter((r) => r.status === 200 && /race \d+/.test(lastObject(r.text).text || ''));
        const refused = results.filter((r) => r.status === 200 && /Token数已用尽/.test(r.text));
        const other = results.filter((r) => !ok.includes(r) && !refused.includes(r));
        assert.equal(ok.length, N, `succeeded: ${ok.length}; e.g. ${JSON.stringify(other[0] || refused[0]).slice(0, 300)}`);
        assert.equal(refused.length, 200 - N);
        await new Promise((res) => setTimeout(res, 500));
        const after = await check(stack, 'frank');
        assert.ok(after.balance >= 0);
        const usage = await ops(stack, { action: 'usage', i_username: 'frank' });
        const rows = usage.json.data.entries;
        const sum = rows.reduce((a, e) => a + e.units, 0);
        assert.equal(sum, after.balance - before.balance + N * BUDGET, 'ledger rows add up to the balance change');
    });
});
