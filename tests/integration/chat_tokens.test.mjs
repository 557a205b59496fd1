// Every count chat makes is the count OpenAI makes (issue 7): the context budget in chat format,
// the Reserve, the charge of a reply whose client left, tokens per minute across replicas, and
// the request shape of reasoning models. Expected counts come from the `tiktoken` npm package.
import assert from 'node:assert/strict';
import http from 'node:http';
import { after, describe, it } from 'node:test';
import { get_encoding } from 'tiktoken';
import { basicAuth, getJSON, postJSON, request, withStack } from './lib/harness.mjs';

const OPS_KEY = 'ops-key-for-token-tests-0123456789';
const enc = { cl100k_base: get_encoding('cl100k_base'), o200k_base: get_encoding('o200k_base') };
after(() => { enc.cl100k_base.free(); enc.o200k_base.free(); });

const tokens = (e, text) => enc[e].encode_ordinary(text).length;
// OpenAI's chat format (cookbook): 3 per message + its values; 3 to prime the reply.
const messageTokens = (e, role, content) => 3 + tokens(e, role) + tokens(e, content);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function ops(stack, body) {
    const r = await postJSON(`${stack.url}/accounts`, body, { headers: { opskey: OPS_KEY } });
    assert.equal(r.status, 200, r.body);
    assert.equal(r.json().status, 'Success', r.body);
    return r.json();
}

async function register(stack, name, count) {
    await ops(stack, { action: 'register', i_username: name, i_password: `${name}-password`, count });
    return basicAuth(name, `${name}-password`);
}

async function balance(stack, name) {
    return (await ops(stack, { action: 'check', i_username: name })).data;
}

/** Waits until the user's usage changes from before; returns the new check data. */
async function settled(stack, name, before, ms = 5000) {
    let now;
    for (const t0 = Date.now(); Date.now() - t0 < ms;) {
        now = await balance(stack, name);
        if (now.usage !== before.usage) return now;
        await sleep(20);
    }
    return now;
}

function chat(url, auth, prompt, extra = {}) {
    return request(`${url}/api/chat-process`, {
        method: 'POST', headers: { authorization: auth, 'content-type': 'application/json' },
        body: JSON.stringify({ prompt, ...extra }), timeoutMs: 60000,
    });
}

function objects(body) {
    return body.split('\n').filter((l) => l.trim()).map((l) => JSON.parse(l));
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

describe('exact token counts in chat (gpt-4o, budget 1000)', () => {
    const BUDGET = 1000;
    const MIN_REPLY = 100;
    const E = 'o200k_base';
    const stack = withStack({
        env: {
            OPS_KEY, OPENAI_MODEL: 'gpt-4o', OPENAI_MAX_TOKENS: String(BUDGET),
            CHAT_MIN_RESPONSE_TOKENS: String(MIN_REPLY), CHAT_MODELS: 'gpt-4o,o3-mini',
        },
    });

    it('truncates history at the window edge, exactly and maximally', async () => {
        const auth = await register(stack, 'tina', 1000000);
        // Six turns of known size; the fake echoes each prompt, so every message is known.
        const history = []; // oldest first: {role, content}
        let parent = null;
        for (let i = 0; i < 6; i++) {
            const prompt = `turn ${i}:` + ' a'.repeat(60);
            const r = await chat(stack.url, auth, `${prompt} [[fake tokens=30]]`, parent ? { options: { parentMessageId: parent } } : {});
            const last = objects(r.body).pop();
            assert.ok(last.id, r.body.slice(0, 300));
            // chat stores the prompt as sent (directive included) and the reply as received
            history.push({ role: 'user', content: `${prompt} [[fake tokens=30]]` }, { role: 'assistant', content: last.text });
            parent = last.id;
        }
        const limit = BUDGET - MIN_REPLY;
        // The messages that fit for a prompt costing p: newest first while the total stays <= limit.
        const fitting = (p) => {
            let used = 3 + p;
            let n = 0;
            for (let i = history.length - 1; i >= 0; i--) {
                const c = messageTokens(E, history[i].role, history[i].content);
                if (used + c > limit) break;
                used += c;
                n++;
            }
            return { n, used };
        };
        // Pick a prompt that makes the total land exactly on the limit with k messages of history.
        const promptFor = (fill) => 'last' + ' a'.repeat(fill);
        let exact = null;
        for (let fill = 0; fill < 900 && !exact; fill++) {
            const p = messageTokens(E, 'user', promptFor(fill));
            const f = fitting(p);
            if (f.used === limit && f.n > 0 && f.n < history.length) exact = { fill, n: f.n };
        }
        assert.ok(exact, 'found a prompt that fills the budget exactly');
        for (const [fill, n] of [[exact.fill, exact.n], [exact.fill + 1, null]]) {
            const prompt = promptFor(fill);
            const want = n ?? fitting(messageTokens(E, 'user', prompt)).n;
            const seq = await lastSeq(stack);
            const r = await chat(stack.url, auth, prompt, { options: { parentMessageId: parent } });
            assert.equal(r.status, 200);
            const up = (await upstreamSince(stack, seq))[0];
            const sent = up.body.messages;
            assert.deepEqual(sent.slice(0, -1), history.slice(history.length - want),
                `fill ${fill}: the newest ${want} messages of history, oldest first`);
            assert.deepEqual(sent[sent.length - 1], { role: 'user', content: prompt });
            const used = 3 + sent.reduce((a, m) => a + messageTokens(E, m.role, m.content), 0);
            assert.ok(used <= limit, `prompt ${used} within ${limit}`);
            if (want < history.length) {
                const older = history[history.length - want - 1];
                assert.ok(used + messageTokens(E, older.role, older.content) > limit, 'one more older message would not fit');
            }
            // The Reserve holds the exact prompt plus the reply limit: max_tokens is the rest.
            assert.equal(up.body.max_tokens, BUDGET - used, 'max_tokens = budget - exact prompt');
            if (n !== null) assert.equal(used, limit, 'the edge case fills the budget exactly');
        }
    });

    it('a continuation after a reply cut for length sends the tail of that reply, within the budget', async () => {
        const auth = await register(stack, 'cora', 1000000);
        let seq = await lastSeq(stack);
        const first = 'write at length [[fake tokens=5000]]';
        const r1 = await chat(stack.url, auth, first);
        const o1 = objects(r1.body).pop();
        assert.equal(o1.detail.choices[0].finish_reason, 'length');
        const up1 = (await upstreamSince(stack, seq))[0];
        const p1 = 3 + messageTokens(E, 'user', first);
        assert.equal(up1.body.max_tokens, BUDGET - p1);
        // The cut reply alone costs more than the room a continuation has (it filled the budget).
        const limit = BUDGET - MIN_REPLY;
        const p2 = 3;   // an empty prompt sends no user message: the reply priming only
        assert.ok(p2 + messageTokens(E, 'assistant', o1.text) > limit, 'the whole reply cannot fit');

        // The web page's continuation: an empty prompt whose parent is the cut reply.
        seq = await lastSeq(stack);
        const r2 = await chat(stack.url, auth, '', { options: { parentMessageId: o1.id } });
        assert.equal(r2.status, 200);
        const sent = (await upstreamSince(stack, seq))[0].body.messages;
        assert.equal(sent.length, 1, JSON.stringify(sent).slice(0, 300));
        assert.equal(sent[0].role, 'assistant');
        assert.ok(sent[0].content.length > 0 && o1.text.endsWith(sent[0].content), 'a tail of the cut reply');
        const used = p2 + messageTokens(E, 'assistant', sent[0].content);
        assert.ok(used <= limit, `prompt ${used} within ${limit}`);
        // Nearly all the room is used: a tail 8 characters longer would not fit.
        const longer = o1.text.slice(o1.text.length - sent[0].content.length - 8);
        assert.ok(p2 + messageTokens(E, 'assistant', longer) > limit, 'the tail is (nearly) the longest that fits');
        assert.ok(used > limit - 8, `used ${used} of ${limit}`);
        const up2 = (await upstreamSince(stack, seq))[0];
        assert.equal(up2.body.max_tokens, BUDGET - used, 'the reply keeps its exact share of the budget');
    });

    it('refuses a prompt too large on its own, saying by how many tokens', async () => {
        const auth = await register(stack, 'ulla', 1000000);
        const prompt = 'big' + ' b'.repeat(950);
        const p = 3 + messageTokens(E, 'user', prompt);
        const seq = await lastSeq(stack);
        const r = await chat(stack.url, auth, prompt);
        const j = JSON.parse(r.body);
        assert.equal(j.status, 'Fail');
        assert.match(j.message, new RegExp(`${p} tokens, ${p - (BUDGET - MIN_REPLY)} more than fit`), j.message);
        assert.equal((await upstreamSince(stack, seq)).length, 0, 'nothing went upstream');
    });

    it('charges a stream the client left mid-way the exact count of the text received', async () => {
        const auth = await register(stack, 'vera', 1000000);
        const before = await balance(stack, 'vera');
        const prompt = 'leave early [[fake tps=5 tokens=60]]';
        const ev0 = await lastEventSeq(stack);
        const seen = await new Promise((resolve, reject) => {
            const req = http.request(`${stack.url}/api/chat-process`, {
                method: 'POST', agent: false, headers: { authorization: auth, 'content-type': 'application/json' },
            }, (res) => {
                let buf = '';
                let last = null;
                res.setEncoding('utf8');
                res.on('data', (c) => {
                    buf += c;
                    const lines = buf.split('\n');
                    buf = lines.pop();
                    for (const l of lines) if (l.trim()) last = JSON.parse(l);
                    if (buf.trim()) { try { last = JSON.parse(buf); buf = ''; } catch { /* partial */ } }
                    if (last && last.text.split(' ').length >= 12) { req.destroy(); resolve(last.text); }
                });
                res.on('error', () => {});
            });
            req.on('error', (e) => { if (e.code !== 'ECONNRESET') reject(e); });
            req.end(JSON.stringify({ prompt }));
        });
        let closed;
        for (let i = 0; i < 100 && !closed; i++) {
            closed = (await getJSON(`${stack.fakeUpstream.url}/_fake/events?since=${ev0}`)).events.find((e) => e.type === 'client_closed');
            if (!closed) await sleep(20);
        }
        assert.ok(closed, 'the upstream saw the close');
        assert.equal(closed.chunks_sent, seen.split(' ').length, 'chat received what the client saw (tokens 200 ms apart)');
        const after = await settled(stack, 'vera', before);
        const expected = 3 + messageTokens(E, 'user', prompt) + tokens(E, seen);
        assert.equal(after.usage - before.usage, expected, `charged prompt + count(${JSON.stringify(seen.slice(0, 40))}...)`);
        assert.equal(before.balance - after.balance, expected);
    });

    it('o-series models get max_completion_tokens and no sampling options; zeros are sent', async () => {
        const auth = await register(stack, 'xena', 1000000);
        let seq = await lastSeq(stack);
        let r = await chat(stack.url, auth, 'cold', { temperature: 0, top_p: 0 });
        assert.equal(r.status, 200);
        let body = (await upstreamSince(stack, seq))[0].body;
        assert.equal(body.temperature, 0, 'temperature 0 is sent');
        assert.equal(body.top_p, 0, 'top_p 0 is sent');
        assert.ok(Number.isInteger(body.max_tokens));
        const set = await postJSON(`${stack.url}/api/chat-process`, { prompt: '/model o3-mini' }, { headers: { authorization: auth } });
        assert.equal(set.status, 200, set.body);
        seq = await lastSeq(stack);
        r = await chat(stack.url, auth, 'think', { temperature: 0.5, top_p: 0.9 });
        assert.equal(r.status, 200);
        body = (await upstreamSince(stack, seq))[0].body;
        assert.equal(body.model, 'o3-mini');
        for (const k of ['max_tokens', 'temperature', 'top_p', 'presence_penalty', 'frequency_penalty'])
            assert.ok(!(k in body), `${k} not sent to a reasoning model`);
        assert.ok(Number.isInteger(body.max_completion_tokens) && body.max_completion_tokens > 0);
        for (const bad of [{ temperature: 2.5 }, { top_p: -0.1 }, { temperature: 'hot' }]) {
            const x = await chat(stack.url, auth, 'x', bad);
            assert.equal(x.status, 400, JSON.stringify(bad));
        }
    });

    it('/me shows the balance the ledger adds up to', async () => {
        const auth = await register(stack, 'yuri', 50000);
        for (let i = 0; i < 3; i++) await chat(stack.url, auth, `spend ${i} [[fake tokens=9]]`);
        await sleep(300);
        const r = await chat(stack.url, auth, '/me');
        const shown = Number(/(?:Token余额|Token balance)[:：]\s*(-?\d+)/.exec(JSON.parse(r.body).message)?.[1]);
        const data = await balance(stack, 'yuri');
        const entries = (await ops(stack, { action: 'usage', i_username: 'yuri' })).data.entries;
        const sum = entries.reduce((a, e) => a + e.units, 0);
        const me = await request(`${stack.url}/api/me`, { headers: { authorization: auth } });
        assert.equal(shown, data.balance, JSON.parse(r.body).message);
        assert.equal(me.json().data.balance, data.balance, '/api/me shows the same balance');
        assert.equal(sum, data.balance, 'ledger rows add up to the balance');
    });
});

describe('tokens per minute across two chat replicas', () => {
    const LIMIT = 400;
    const E = 'cl100k_base';
    const stack = withStack({
        replicas: { chat: 2 },
        env: { OPS_KEY, OPENAI_MODEL: 'gpt-3.5-turbo', CHAT_TPM_LIMIT: String(LIMIT) },
    });

    it('admits by exact prompt tokens, corrects to the usage, and refuses with 429 + Retry-After', async () => {
        const auth = await register(stack, 'zack', 1000000);
        // One fixed window per minute: start well inside one.
        const left = 60 - (Date.now() / 1000) % 60;
        if (left < 20) await sleep(left * 1000 + 200);
        const prompt = 'tpm probe [[fake tokens=40]]';
        const counted = 3 + messageTokens(E, 'user', prompt);
        const usage = 3 + 4 + prompt.split(' ').length + 40; // the fake's usage
        let used = 0;
        let served = 0;
        for (let i = 0; i < 20; i++) {
            const r = await chat(stack.services.chat[i % 2].url, auth, prompt);
            if (used + counted > LIMIT) {
                assert.equal(r.status, 429, `request ${i}: used ${used} + ${counted} > ${LIMIT}`);
                const j = JSON.parse(r.body);
                assert.equal(j.status, 'Fail');
                assert.match(j.message, /tokens per minute/);
                const ra = Number(r.headers['retry-after']);
                assert.ok(ra >= 1 && ra <= 60, `Retry-After ${r.headers['retry-after']}`);
                break;
            }
            assert.equal(r.status, 200, `request ${i}: used ${used} + ${counted} <= ${LIMIT}: ${r.body.slice(0, 200)}`);
            assert.match(objects(r.body).pop().text, /tpm probe/);
            used += usage;
            served++;
        }
        assert.equal(served, Math.floor((LIMIT - counted) / usage) + 1, 'served exactly what the limit allows');
        // A prompt larger than the whole limit is never admitted.
        const huge = await chat(stack.url, auth, 'x' + ' y'.repeat(LIMIT + 10));
        assert.equal(huge.status, 429);
        assert.match(JSON.parse(huge.body).message, /more than the limit/);
    });
});

describe('a client that leaves (gpt-4o, budget 20000)', () => {
    const stack = withStack({
        // A long drain (its gap is 1/20 of it: 50 ms) so a loaded, sanitized build reads all
        // of what the upstream sent; the default 100 ms does the same on an ordinary machine.
        env: { OPS_KEY, OPENAI_MODEL: 'gpt-4o', OPENAI_MAX_TOKENS: '20000', CHAT_MIN_RESPONSE_TOKENS: '100', CHAT_ABORT_DRAIN_MS: '1000' },
    });

    it("charges the upstream's usage when it arrived before the client left (client stopped reading)", async () => {
        const auth = await register(stack, 'wade', 10000000);
        const before = await balance(stack, 'wade');
        // 3,000 tokens: about 700 KB from the upstream but about 28 MB of cumulative objects for
        // the client, which reads nothing, so most of the reply waits in chat and its sockets.
        const N = 3000;
        const prompt = `long [[fake tokens=${N}]]`;
        const ev0 = await lastEventSeq(stack);
        const sock = await new Promise((resolve, reject) => {
            const req = http.request(`${stack.url}/api/chat-process`, {
                method: 'POST', agent: false, headers: { authorization: auth, 'content-type': 'application/json' },
            }, (res) => { res.pause(); resolve(req); });
            req.on('error', (e) => { if (e.code !== 'ECONNRESET') reject(e); });
            req.end(JSON.stringify({ prompt }));
        });
        let done;
        for (let i = 0; i < 250 && !done; i++) { // the upstream generated the whole reply
            done = (await getJSON(`${stack.fakeUpstream.url}/_fake/events?since=${ev0}`)).events.find((e) => e.type === 'stream_done');
            if (!done) await sleep(20);
        }
        assert.ok(done, 'the upstream finished its reply while the client read nothing');
        sock.destroy();
        const after = await settled(stack, 'wade', before);
        // The fake's usage: prompt = 3 + (4 + words) for the one message; completion = N.
        const usage = 3 + 4 + prompt.split(' ').length + N;
        assert.equal(after.usage - before.usage, usage, "the upstream's own usage, not a count or the hold");
    });
});
