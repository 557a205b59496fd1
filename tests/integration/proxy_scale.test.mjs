// The /v1 proxy with two replicas (issue 8, docs/proxy.md): requests and tokens per minute are
// one count in Redis for all replicas, exact to the request and to the token; a concurrent mix
// of chat JSON, chat streams and embeddings is billed exactly the upstream's usage.
// Expected usages come from the fake upstream's deterministic rule (docs/fake-upstream.md),
// prompt counts from the `tiktoken` npm package.
import assert from 'node:assert/strict';
import { after, describe, it } from 'node:test';
import OpenAI from 'openai';
import { get_encoding } from 'tiktoken';
import { postJSON, withStack } from './lib/harness.mjs';

const OPS_KEY = 'ops-key-for-proxy-scale-tests-0123';
const enc = get_encoding('cl100k_base');
after(() => enc.free());
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const words = (s) => s.split(/\s+/).filter(Boolean).length;
const tokens = (text) => enc.encode_ordinary(text).length;

async function ops(stack, body) {
    const r = await postJSON(`${stack.url}/accounts`, body, { headers: { opskey: OPS_KEY } });
    assert.equal(r.status, 200, r.body);
    assert.equal(r.json().status, 'Success', `${body.action}: ${r.body}`);
    return r.json();
}

async function userWithKey(stack, name, { count = 10000000, ...keyFields } = {}) {
    await ops(stack, { action: 'register', i_username: name, i_password: `${name}-password`, count });
    const d = (await ops(stack, { action: 'create_key', i_username: name, name: 'scale', ...keyFields })).data;
    return { name, key: d.key };
}

const check = async (stack, name) => (await ops(stack, { action: 'check', i_username: name })).data;

/** One SDK client per proxy replica (straight to its data port) and one through the ingress. */
function clients(stack, key) {
    const bases = [...stack.services.proxy.map((h) => h.url), stack.url];
    return bases.map((b) => new OpenAI({ apiKey: key, baseURL: `${b}/v1`, maxRetries: 0, timeout: 60000 }));
}

/** Waits, when needed, so that what follows starts at least `need` s before the minute ends. */
async function wellInsideWindow(need) {
    const left = 60 - (Date.now() / 1000) % 60;
    if (left < need) await sleep(left * 1000 + 250);
}

async function settledTo(stack, name, before, expected) {
    let now;
    for (const t0 = Date.now(); Date.now() - t0 < 20000;) {
        now = await check(stack, name);
        if (now.held === 0 && now.usage - before.usage >= expected) break;
        await sleep(50);
    }
    return now;
}

describe('two proxy replicas share the limits and bill exactly', () => {
    const stack = withStack({
        replicas: { proxy: 2 },
        env: { OPS_KEY, OPENAI_PROXY: 'true', OPENAI_MODEL: 'gpt-3.5-turbo', PROXY_RPM_LIMIT: '0', PROXY_TPM_LIMIT: '0' },
    });

    it('a 60 rpm key gets exactly 60 successes in one window across both replicas, the rest 429', { timeout: 120000 }, async () => {
        const u = await userWithKey(stack, 'srpm', { rpm: 60 });
        const cs = clients(stack, u.key).slice(0, 2);
        const messages = [{ role: 'user', content: 'rpm [[fake tokens=1]]' }];
        await wellInsideWindow(25);
        const results = await Promise.allSettled(Array.from({ length: 75 },
            (_, i) => cs[i % 2].chat.completions.create({ model: 'gpt-3.5-turbo', messages })));
        const ok = results.filter((r) => r.status === 'fulfilled');
        const refused = results.filter((r) => r.status === 'rejected');
        for (const r of refused) {
            assert.ok(r.reason instanceof OpenAI.RateLimitError, `${r.reason?.constructor?.name}: ${r.reason?.message}`);
            assert.equal(r.reason.error?.type, 'requests');
            assert.equal(r.reason.error?.code, 'rate_limit_exceeded');
            assert.equal(r.reason.headers.get('x-ratelimit-limit-requests'), '60');
            assert.equal(r.reason.headers.get('x-ratelimit-remaining-requests'), '0');
            assert.ok(r.reason.headers.get('x-ratelimit-reset-requests'));
            assert.ok(Number(r.reason.headers.get('retry-after')) >= 1);
        }
        assert.equal(ok.length, 60, `exactly 60 successes (got ${ok.length}, ${refused.length} refused)`);
        assert.equal(refused.length, 15);
    });

    it('tokens per minute: admitted by the exact prompt tokens, corrected to the usage, across both replicas', { timeout: 120000 }, async () => {
        const LIMIT = 400;
        const u = await userWithKey(stack, 'stpm', { tpm: LIMIT });
        const cs = clients(stack, u.key).slice(0, 2);
        const prompt = 'tpm probe [[fake tokens=40]]';
        const messages = [{ role: 'user', content: prompt }];
        const counted = 3 + 3 + tokens('user') + tokens(prompt); // OpenAI's chat format, cl100k_base
        const usage = 3 + 4 + words(prompt) + 40; // the fake's usage
        await wellInsideWindow(25);
        let used = 0;
        let served = 0;
        for (let i = 0; i < 20; i++) {
            const call = () => cs[i % 2].chat.completions.create({ model: 'gpt-3.5-turbo', messages });
            if (used + counted > LIMIT) {
                let e;
                try { await call(); } catch (err) { e = err; }
                assert.ok(e instanceof OpenAI.RateLimitError, `request ${i}: used ${used} + ${counted} > ${LIMIT}: ${e?.constructor?.name ?? 'served'}`);
                assert.equal(e.error?.type, 'tokens');
                assert.equal(e.error?.code, 'rate_limit_exceeded');
                assert.equal(e.headers.get('x-ratelimit-limit-tokens'), String(LIMIT));
                assert.equal(e.headers.get('x-ratelimit-remaining-tokens'), String(Math.max(0, LIMIT - used)));
                assert.ok(e.headers.get('x-ratelimit-reset-tokens'));
                const ra = Number(e.headers.get('retry-after'));
                assert.ok(ra >= 1 && ra <= 60, `Retry-After ${e.headers.get('retry-after')}`);
                break;
            }
            const r = await call();
            assert.equal(r.usage.total_tokens, usage);
            used += usage;
            served++;
        }
        assert.equal(served, Math.floor((LIMIT - counted) / usage) + 1, 'served exactly what the limit allows');
        // A prompt larger than the whole limit is never admitted, even in a fresh window.
        const huge = [{ role: 'user', content: 'x' + ' y'.repeat(LIMIT + 10) }];
        let e;
        try { await cs[0].chat.completions.create({ model: 'gpt-3.5-turbo', messages: huge }); } catch (err) { e = err; }
        assert.ok(e instanceof OpenAI.RateLimitError, 'a prompt over the limit is refused');
        assert.equal(e.error?.type, 'tokens');
    });

    it("1,000 mixed requests, 100 at a time (chat JSON, chat streams, embeddings), are billed exactly the upstream's usage", { timeout: 300000 }, async () => {
        const u = await userWithKey(stack, 'smix');
        const before = await check(stack, u.name);
        const cs = clients(stack, u.key);
        const N = 1000;
        let expected = 0;
        const jobs = []; // functions: started 100 at a time below
        for (let i = 0; i < N; i++) {
            const c = cs[i % cs.length];
            const n = 1 + (i % 13);
            const kind = i % 4;
            if (kind === 3) {
                const input = Array.from({ length: 1 + (i % 3) }, (_, j) => `item ${i} part ${j}`);
                expected += input.reduce((a, s) => a + words(s), 0);
                jobs.push(() => c.embeddings.create({ model: 'text-embedding-3-small', input, encoding_format: i % 2 ? 'float' : 'base64' })
                    .then((r) => { assert.equal(r.data.length, input.length); return r.usage.prompt_tokens; }));
                continue;
            }
            const messages = [{ role: 'user', content: `mixed request number ${i} [[fake tokens=${n}]]` }];
            const want = 3 + 4 + words(messages[0].content) + n;
            expected += want;
            if (kind === 0) {
                jobs.push(() => c.chat.completions.create({ model: 'gpt-3.5-turbo', messages })
                    .then((r) => { assert.equal(r.usage.total_tokens, want); return want; }));
            } else {
                const includeUsage = kind === 2;
                jobs.push(async () => {
                    const s = await c.chat.completions.create({
                        model: 'gpt-3.5-turbo', messages, stream: true, ...(includeUsage ? { stream_options: { include_usage: true } } : {}),
                    });
                    let text = '';
                    let seenUsage = null;
                    for await (const ch of s) {
                        text += ch.choices[0]?.delta?.content ?? '';
                        if (ch.usage) seenUsage = ch.usage;
                    }
                    assert.equal(words(text), n, `stream ${i}: ${n} tokens`);
                    if (includeUsage) assert.equal(seenUsage?.total_tokens, want, `stream ${i}: the usage chunk`);
                    else assert.equal(seenUsage, null, `stream ${i}: no usage chunk shown`);
                    return want;
                });
            }
        }
        const results = new Array(N);
        let next = 0;
        const worker = async () => {
            while (next < N) {
                const i = next++;
                results[i] = await jobs[i]().then((value) => ({ status: 'fulfilled', value }), (reason) => ({ status: 'rejected', reason }));
            }
        };
        await Promise.all(Array.from({ length: 100 }, worker));
        const failed = results.map((r, i) => [i, r]).filter(([, r]) => r.status === 'rejected');
        assert.deepEqual(failed.slice(0, 5).map(([i, r]) => `${i}: ${r.reason?.status ?? ''} ${r.reason?.message}`), [], `${failed.length} of ${N} failed`);
        const now = await settledTo(stack, u.name, before, expected);
        assert.equal(now.held, 0, 'no hold left open');
        assert.equal(now.usage - before.usage, expected, 'usage = the sum of the upstream usages');
        assert.equal(before.balance - now.balance, expected, 'balance down by the same');
        const entries = [];
        for (let cursor = 0; ;) {
            const d = (await ops(stack, { action: 'usage', i_username: u.name, limit: 500, ...(cursor ? { before_id: cursor } : {}) })).data;
            entries.push(...d.entries);
            if (!d.next_before_id) break;
            cursor = d.next_before_id;
        }
        const charges = entries.filter((x) => x.kind !== 'recharge');
        assert.equal(charges.length, N, 'one ledger row per request');
        assert.ok(charges.every((x) => x.kind === 'charge'), 'all charges (no expiry, no refund)');
        assert.equal(charges.reduce((a, x) => a - x.units, 0), expected, 'ledger sum');
    });
});
