// The ChatGPT Web frontend's own flows (Chanzhaoyu/chatgpt-web, contract §1 in
// /work/shared/specs/chatgpt-web-contract.md) in Chromium, against a whole stack whose nginx
// serves a stand-in for the frontend as its web root, as WEB_ROOT would serve the real build:
// tests/integration/fixtures/chatgpt-web/ (written from the contract, not from the frontend's
// code; no npm package ships the frontend). Every request is same-origin through the ingress:
// /api/session, the 403 modal and /api/verify, /api/config with the Bearer token and axios's
// headers, /api/chat-process with the frontend's exact body read through XMLHttpRequest progress
// events (§1.4's parsing rule), a second turn with options.parentMessageId whose history reaches
// the fake upstream, Stop (xhr.abort) noticed by the server, a reply cut in the middle of its lines
// on the way to the browser (by a TCP relay in this file) read by §1.4's partial-line rule, and a
// revoked token's Unauthorized envelope (HTTP 200) turned into a sign-out (§1.7). docs/web.md,
// "The ChatGPT Web frontend".
import assert from 'node:assert/strict';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { chromium } from 'playwright-core';
import { ROOT, getJSON, postJSON, withStack } from './lib/harness.mjs';

const OPS_KEY = 'flows-test-ops-key-0123456789abcdef';
const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
const FIXTURE = path.join(ROOT, 'tests', 'integration', 'fixtures', 'chatgpt-web');
const STEP_MS = 15000;
const SYSTEM_MESSAGE = "You are ChatGPT, a large language model trained by OpenAI. Follow the user's instructions carefully. Respond using markdown.";
const AXIOS_ACCEPT = 'application/json, text/plain, */*';

const PIECE_MS = 60;   // > Chromium's 50 ms between two XHR progress events: one event per piece

/**
 * Where a paced relay cuts what it read from nginx: before every bare "\n" (the one §1.3 writes
 * before each object; the chunked framing's are "\r\n", and JSON has no raw newline in it), so
 * each piece ends where an object of the body ends, and every such part again in its middle,
 * inside the object. Parts too short to hold an object's bytes (the chunk-size line before a "\n",
 * the last chunk) stay with their neighbour.
 */
function cutPoints(buf) {
    const ends = [];
    for (let i = 1; i < buf.length; i++) if (buf[i] === 0x0a && buf[i - 1] !== 0x0d) ends.push(i);
    ends.push(buf.length);
    const cuts = [];
    let from = 0;
    for (const end of ends) {
        if (end - from < 32) continue;
        cuts.push(from + ((end - from) >> 1), end);
        from = end;
    }
    if (cuts.at(-1) !== buf.length) cuts.push(buf.length);
    return cuts;
}

/**
 * A TCP relay in front of the stack's nginx (`target`: its URL). While `paced` is set, what it
 * reads from nginx goes to the browser in pieces (cutPoints), PIECE_MS apart, so the browser's
 * responseText ends in the middle of a /api/chat-process line, then at that line's end, for every
 * line, however nginx's writes were coalesced on the way. Not paced, bytes pass as they come;
 * requests always do.
 */
async function startRelay(target) {
    const { hostname, port } = new URL(target);
    const sockets = new Set();
    const relay = { paced: false, pieces: 0, url: '' };
    const server = net.createServer((client) => {
        const nginx = net.connect(Number(port), hostname);
        for (const s of [client, nginx]) {
            sockets.add(s);
            s.on('close', () => sockets.delete(s));
            s.on('error', () => { client.destroy(); nginx.destroy(); });
        }
        client.pipe(nginx);
        let queue = Promise.resolve();   // nginx's bytes, in order
        nginx.on('data', (buf) => {
            const paced = relay.paced;
            queue = queue.then(async () => {
                if (!paced) { client.write(buf); return; }
                let from = 0;
                for (const cut of cutPoints(buf)) {
                    if (client.destroyed) return;
                    client.write(buf.subarray(from, cut));
                    from = cut;
                    relay.pieces++;
                    await new Promise((r) => setTimeout(r, PIECE_MS));
                }
            });
        });
        nginx.on('end', () => { queue = queue.then(() => client.end()); });
    });
    await new Promise((resolve, reject) => server.once('error', reject).listen(0, '127.0.0.1', resolve));
    relay.url = `http://127.0.0.1:${server.address().port}`;
    relay.close = () => {
        for (const s of sockets) s.destroy();
        return new Promise((r) => server.close(r));
    };
    return relay;
}

/**
 * The objects of a /api/chat-process body (§1.3: JSON objects, each after a "\n" but the first),
 * each with the offsets [start, end) of its text in the body.
 */
function chatLines(body) {
    const lines = [];
    let start = 0;
    for (const line of body.split('\n')) {
        lines.push({ start, end: start + line.length, data: JSON.parse(line) });
        start += line.length + 1;
    }
    return lines;
}

async function ops(stack, body) {
    const j = (await postJSON(`${stack.url}/accounts`, body, { headers: { Opskey: OPS_KEY } })).json();
    assert.equal(j.status, 'Success', JSON.stringify(j));
    return j.data;
}

async function until(fn, what, ms = STEP_MS) {
    for (const end = Date.now() + ms; ;) {
        const v = await fn();
        if (v) return v;
        if (Date.now() > end) throw new Error(`timed out: ${what}`);
        await new Promise((r) => setTimeout(r, 25));
    }
}

describe('the ChatGPT Web frontend\'s flows in Chromium (contract §1)', () => {
    const stack = withStack({
        staticRoot: FIXTURE,
        env: { OPS_KEY, AUTH_PWHASH_OPS: '1', AUTH_PWHASH_MEM_KIB: '8192', LOG_LEVEL: 'info' },
    });
    let browser;
    let ctx;
    let page;
    let key;
    let prefix;
    const apiRequests = [];    // what the page sent to /api/*: {route, headers, body}
    const apiResponses = [];   // {route, status, type}
    const problems = [];

    const fakeRequests = async (since = 0) => (await getJSON(`${stack.fakeUpstream.url}/_fake/requests?since=${since}`)).requests;
    const lastSeq = async () => { const r = await fakeRequests(); return r.length ? r[r.length - 1].seq : 0; };
    const messages = () => page.evaluate(() => window.cw.messages.map(({ inversion, text, loading, error, conversationOptions, requestOptions }) =>
        ({ inversion, text, loading, error, conversationOptions, requestOptions })));
    const lastBubble = async () => (await messages()).at(-1);
    const sentTo = (route) => apiRequests.filter((r) => r.route === route);

    before(async () => {
        assert.ok(fs.existsSync(CHROMIUM), `${CHROMIUM} not found: scripts/bootstrap installs Debian's chromium`);
        browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox', '--disable-dev-shm-usage', '--disable-gpu'] });
        await ops(stack, { action: 'register', i_username: 'gwen', i_password: 'gwen-password', count: 100000 });
        ({ key, prefix } = await ops(stack, { action: 'create_key', i_username: 'gwen', name: 'chatgpt-web' }));
        ctx = await browser.newContext({ locale: 'en-US' });
        ctx.setDefaultTimeout(STEP_MS);
        ctx.on('request', (req) => {
            const u = new URL(req.url());
            if (u.origin !== new URL(stack.url).origin) problems.push(`request left the origin: ${req.url()}`);
            if (u.pathname.startsWith('/api/'))
                apiRequests.push({ route: u.pathname, method: req.method(), headers: req.headers(), body: req.postData() });
        });
        ctx.on('response', (res) => {
            const u = new URL(res.url());
            if (u.pathname.startsWith('/api/')) apiResponses.push({ route: u.pathname, status: res.status(), type: res.headers()['content-type'] });
        });
        page = await ctx.newPage();
        page.on('pageerror', (err) => problems.push(`page error: ${err.message}`));
    }, { timeout: 60000 });

    after(async () => {
        if (browser) await browser.close();
    });

    it('session, the 403 modal, /api/verify (a wrong key, then the right one), /api/config with the Bearer token', { timeout: 60000 }, async () => {
        await page.goto(`${stack.url}/`);
        // §1.7: OPS_KEY is set, so /api/session says auth:true; no token stored: the modal.
        await page.locator('#auth-modal').waitFor();
        const session = sentTo('/api/session');
        assert.equal(session.length, 1);
        assert.equal(session[0].method, 'POST');
        assert.equal(session[0].body, '{}', 'a call without data still sends {}');
        assert.equal(session[0].headers.authorization, undefined, 'no token yet');
        assert.deepEqual(await page.evaluate(() => window.cw.session), { auth: true, model: 'ChatGPTAPI' });

        // A wrong key: the Fail envelope's message as a toast, nothing stored.
        await page.getByLabel('Secret key').fill('gwen:not-her-password');
        await page.getByRole('button', { name: 'Verify' }).click();
        await page.locator('#toast', { hasText: '密钥无效 | Secret key is invalid' }).waitFor();
        assert.equal(await page.evaluate(() => localStorage.getItem('SECRET_TOKEN')), null);

        // The API key: stored as the frontend stores it, the page reloads into the chat.
        await page.getByLabel('Secret key').fill(key);
        await Promise.all([page.waitForEvent('load'), page.getByRole('button', { name: 'Verify' }).click()]);
        await page.locator('#chat').waitFor();
        await page.waitForFunction(() => window.cw.ready);
        assert.equal(await page.evaluate(() => localStorage.getItem('SECRET_TOKEN')), JSON.stringify({ data: key, expire: null }));
        const verify = sentTo('/api/verify');
        assert.equal(verify.length, 2);
        assert.deepEqual(JSON.parse(verify[1].body), { token: key });
        assert.equal(verify[1].headers.authorization, undefined, '/verify is sent without a token');
        const events = await page.evaluate(() => JSON.parse(sessionStorage.getItem('cw.events')));
        assert.ok(events.some((e) => e.what === 'verified' && e.message === 'Verify successfully'), JSON.stringify(events));

        // After the reload: /session and /config with the token and axios's headers.
        const [, session2] = sentTo('/api/session');
        assert.equal(session2.headers.authorization, `Bearer ${key}`);
        const [config] = sentTo('/api/config');
        assert.ok(config, '/api/config was asked');
        assert.equal(config.headers.authorization, `Bearer ${key}`);
        assert.equal(config.headers.accept, AXIOS_ACCEPT);
        assert.equal(config.headers['content-type'], 'application/json');
        assert.equal(config.body, '{}');
        const data = await page.evaluate(() => window.cw.config);
        assert.equal(data.apiModel, 'ChatGPTAPI');
        for (const k of ['reverseProxy', 'timeoutMs', 'socksProxy', 'httpsProxy', 'usage']) assert.ok(k in data, `/api/config has ${k}`);
        assert.equal(data.testUpstream, true, 'our added field (the fake upstream answers here) is harmless to the frontend');
        // Every envelope so far: HTTP 200, JSON.
        for (const r of apiResponses) {
            assert.equal(r.status, 200, r.route);
            assert.match(r.type, /^application\/json/, r.route);
        }
    });

    it('/api/chat-process: the exact default body, streamed through XHR progress events, a second turn with context', { timeout: 60000 }, async (t) => {
        const seq0 = await lastSeq();
        const sent0 = sentTo('/api/chat-process').length;
        await page.getByLabel('Message').fill('Hello from ChatGPT Web [[fake tps=40 tokens=40]]');
        await page.getByRole('button', { name: 'Send' }).click();
        // While it streams, the bubble shows a growing prefix of the reply.
        await page.locator('#messages .msg.assistant.loading').waitFor();
        await until(async () => { const b = await lastBubble(); return !b.loading && b; }, 'the first reply');
        const first = await lastBubble();
        assert.equal(first.error, false);
        assert.match(first.text, /^Echo\(2 msgs\): Hello from ChatGPT Web/);
        assert.equal(first.text.split(' ').length, 40, 'every token shown');
        const req1 = sentTo('/api/chat-process')[sent0];
        assert.deepEqual(JSON.parse(req1.body), {
            prompt: 'Hello from ChatGPT Web [[fake tps=40 tokens=40]]', options: {},
            systemMessage: SYSTEM_MESSAGE, temperature: 0.8, top_p: 1,
        });
        assert.equal(req1.headers.authorization, `Bearer ${key}`);
        assert.equal(req1.headers.accept, AXIOS_ACCEPT);
        assert.equal(req1.headers['content-type'], 'application/json');
        // §1.4: every progress event re-read the whole body; the text grew over several of them.
        const progress = await page.evaluate(() => window.cw.progress);
        const parsed = progress.filter((p) => p.parsed);
        const lengths = new Set(parsed.map((p) => p.text));
        t.diagnostic(`first turn: ${progress.length} progress events, ${parsed.length} parsed, ${progress.length - parsed.length} partial lines skipped, ${lengths.size} distinct lengths`);
        assert.ok(lengths.size >= 3, `the reply was seen growing (${[...lengths].join(', ')})`);
        assert.equal(parsed.at(-1).text, first.text.length, 'the last complete line is the whole reply');
        assert.ok(first.conversationOptions.parentMessageId, 'the chunk id is kept as the next parent');
        assert.equal(first.conversationOptions.conversationId, undefined, 'no conversationId in API mode');
        const res1 = apiResponses.filter((r) => r.route === '/api/chat-process').at(-1);
        assert.equal(res1.status, 200);
        assert.equal(res1.type, 'application/octet-stream');
        // The upstream got the frontend's system message, temperature and top_p.
        const up1 = (await fakeRequests(seq0)).filter((r) => /chat\/completions/.test(r.path)).at(-1).body;
        assert.deepEqual(up1.messages, [{ role: 'system', content: SYSTEM_MESSAGE },
            { role: 'user', content: 'Hello from ChatGPT Web [[fake tps=40 tokens=40]]' }]);
        assert.equal(up1.temperature, 0.8);
        assert.equal(up1.top_p, 1);

        // §1.8: the second turn sends the last reply's id; chat rebuilds the history from it.
        const seq1 = await lastSeq();
        await page.getByLabel('Message').fill('and a second turn [[fake tokens=6]]');
        await page.getByRole('button', { name: 'Send' }).click();
        await until(async () => { const b = await lastBubble(); return b.inversion === false && !b.loading && b.text && b; }, 'the second reply');
        const second = await lastBubble();
        assert.match(second.text, /^Echo\(4 msgs\): and a second turn/);
        const req2 = JSON.parse(sentTo('/api/chat-process').at(-1).body);
        assert.deepEqual(req2, {
            prompt: 'and a second turn [[fake tokens=6]]', options: { parentMessageId: first.conversationOptions.parentMessageId },
            systemMessage: SYSTEM_MESSAGE, temperature: 0.8, top_p: 1,
        });
        const up2 = (await fakeRequests(seq1)).at(-1).body;
        assert.deepEqual(up2.messages, [
            { role: 'system', content: SYSTEM_MESSAGE },
            { role: 'user', content: 'Hello from ChatGPT Web [[fake tps=40 tokens=40]]' },
            { role: 'assistant', content: first.text },
            { role: 'user', content: 'and a second turn [[fake tokens=6]]' },
        ]);
        assert.equal(up2.temperature, 0.8);
        assert.equal(up2.top_p, 1);
    });

    it('Stop aborts the XHR mid-stream: the partial text stays, the server cancels the upstream', { timeout: 60000 }, async () => {
        const seq0 = await lastSeq();
        const ev0 = (await getJSON(`${stack.fakeUpstream.url}/_fake/events`)).events;
        const evSince = ev0.length ? ev0.at(-1).seq : 0;
        await page.getByLabel('Message').fill('a long one [[fake tps=10 tokens=400]]');
        await page.getByRole('button', { name: 'Send' }).click();
        await until(async () => { const b = await lastBubble(); return !b.inversion && b.loading && b.text.split(' ').length >= 8; }, 'some of the reply');
        await page.getByRole('button', { name: 'Stop Responding' }).click();
        await until(async () => !(await lastBubble()).loading, 'the bubble stops loading');
        const stopped = await lastBubble();
        // §1.6: "canceled" leaves the partial text as it is, no error, no "[canceled]".
        assert.equal(stopped.error, false);
        assert.match(stopped.text, /^Echo\(6 msgs\): a long one/);
        assert.doesNotMatch(stopped.text, /canceled/);
        const words = stopped.text.split(' ').length;
        assert.ok(words >= 8 && words < 400, `stopped after ${words} words`);
        // The server noticed: the fake upstream saw chat close that request.
        const upstream = (await fakeRequests(seq0)).at(-1);
        const closed = await until(async () => (await getJSON(`${stack.fakeUpstream.url}/_fake/events?since=${evSince}`)).events
            .find((e) => e.type === 'client_closed' && e.request_seq === upstream.seq), 'the upstream sees chat close the request');
        assert.ok(closed);
        await page.waitForTimeout(300);
        assert.equal((await lastBubble()).text, stopped.text, 'nothing arrives after Stop');
        // The stopped reply still has its id: the next turn's parent (as in the frontend).
        assert.ok(stopped.conversationOptions.parentMessageId);
    });

    it('a reply cut in the middle of its lines on the way to the browser: §1.4 skips the partial line, the text never goes back', { timeout: 60000 }, async (t) => {
        // The page on the relay's origin (same-origin requests, as ever), signed in with the key.
        const relay = await startRelay(stack.url);
        const ctx2 = await browser.newContext({ locale: 'en-US' });
        try {
            ctx2.setDefaultTimeout(STEP_MS);
            await ctx2.addInitScript((token) => localStorage.setItem('SECRET_TOKEN', JSON.stringify({ data: token, expire: null })), key);
            ctx2.on('request', (req) => {
                if (new URL(req.url()).origin !== relay.url) problems.push(`request left the relay's origin: ${req.url()}`);
            });
            const page2 = await ctx2.newPage();
            page2.on('pageerror', (err) => problems.push(`page error (relay): ${err.message}`));
            await page2.goto(`${relay.url}/`);
            await page2.locator('#chat').waitFor();
            await page2.waitForFunction(() => window.cw.ready);

            // 6 words and the 2 of "Echo(2 msgs):": the reply is exactly them (no filler).
            const words = 'split mid-line one two three four';
            const expected = `Echo(2 msgs): ${words}`;
            relay.paced = true;
            const response = page2.waitForResponse((r) => new URL(r.url()).pathname === '/api/chat-process');
            await page2.getByLabel('Message').fill(`${words} [[fake tps=100 tokens=8]]`);
            await page2.getByRole('button', { name: 'Send' }).click();
            const res = await response;
            assert.equal(res.status(), 200);
            await page2.waitForFunction(() => window.cw.messages.length === 2 && !window.cw.messages[1].loading);
            const body = (await res.body()).toString('utf8');
            const { progress, bubble, screen } = await page2.evaluate(() => ({
                progress: window.cw.progress, bubble: window.cw.messages[1],
                screen: document.querySelector('#messages .msg.assistant').textContent,
            }));

            // The end: the whole reply, exactly, in the store and on screen, no error.
            assert.equal(bubble.text, expected);
            assert.equal(screen, expected);
            assert.equal(bubble.error, false);
            assert.ok(bubble.conversationOptions.parentMessageId);

            // Every progress event against the body the browser received (ASCII: responseText's
            // length is its byte count). An event whose text ends inside a line must be skipped and
            // leave the screen as it was; one that ends at a line's end (or its newline) shows that
            // line's text. So the screen only ever shows a complete line's text, never less than before.
            assert.match(body, /^[\x20-\x7e\n]*$/, 'an ASCII body');
            const lines = chatLines(body);
            assert.equal(lines.at(-1).data.text, expected, 'the last line is the whole reply');
            let want = '';
            let midLine = 0;
            let atEnd = 0;
            const seen = [];
            for (const [i, p] of progress.entries()) {
                assert.ok(p.received <= body.length, `event ${i}: ${p.received} of ${body.length}`);
                const done = lines.findLast((l) => l.end === p.received || l.end + 1 === p.received);
                if (done) {
                    atEnd++;
                    assert.equal(p.parsed, true, `event ${i} ends after line ${lines.indexOf(done)} (${p.received}): parsed`);
                    want = done.data.text;
                } else {
                    const inside = lines.findIndex((l) => l.start < p.received && p.received < l.end);
                    assert.ok(inside >= 0 || p.received === 0, `event ${i} at ${p.received}: neither in nor after a line`);
                    if (inside >= 0) midLine++;
                    assert.equal(p.parsed, false, `event ${i} ends inside line ${inside} (${p.received}): skipped`);
                }
                assert.equal(p.shown, want, `event ${i} at ${p.received}: the screen`);
                assert.ok(expected.startsWith(p.shown), `event ${i}: a prefix of the reply, no garbage`);
                if (seen.at(-1) !== p.shown) seen.push(p.shown);
            }
            assert.equal(progress.at(-1).received, body.length, 'the last event saw the whole body');
            t.diagnostic(`relay: ${relay.pieces} pieces; ${lines.length} lines, ${body.length} bytes; ${progress.length} progress events: ${midLine} ended inside a line, ${atEnd} at a line's end; the screen showed ${seen.length} texts`);
            assert.ok(midLine >= 3, `progress events that saw a partial last line: ${midLine}`);
            assert.ok(seen.length >= 4, `the reply was seen growing: ${JSON.stringify(seen)}`);
            for (let i = 1; i < seen.length; i++) assert.ok(seen[i].startsWith(seen[i - 1]) && seen[i].length > seen[i - 1].length, `never back: ${JSON.stringify(seen)}`);
        } finally {
            await ctx2.close();
            await relay.close();
        }
    });

    it('a revoked token: the Unauthorized envelope with HTTP 200 signs the frontend out (token dropped, reload, 403 modal)', { timeout: 60000 }, async () => {
        await ops(stack, { action: 'revoke_key', i_username: 'gwen', prefix });
        // "stops working everywhere within 250 ms" (ops-api.md); chat may reuse an answer 100 ms.
        await until(async () => (await postJSON(`${stack.url}/api/verify`, { token: key })).json().status === 'Fail', 'the key is refused');
        await page.waitForTimeout(300);
        const before = sentTo('/api/chat-process').length;
        await page.getByLabel('Message').fill('after the revocation');
        await Promise.all([page.waitForEvent('load'), page.getByRole('button', { name: 'Send' }).click()]);
        await page.locator('#auth-modal').waitFor();
        assert.equal(await page.evaluate(() => localStorage.getItem('SECRET_TOKEN')), null, 'the token is dropped');
        const req = sentTo('/api/chat-process')[before];
        assert.equal(req.headers.authorization, `Bearer ${key}`, 'the revoked key was sent');
        const res = apiResponses.filter((r) => r.route === '/api/chat-process').at(-1);
        assert.equal(res.status, 200, 'HTTP 200, as the frontend requires');
        assert.match(res.type, /^application\/json/);
        const events = await page.evaluate(() => JSON.parse(sessionStorage.getItem('cw.events')));
        const unauth = events.filter((e) => e.what === 'unauthorized').at(-1);
        assert.ok(unauth, JSON.stringify(events));
        assert.equal(unauth.route, '/chat-process');
        assert.equal(unauth.httpStatus, 200);
        assert.deepEqual(unauth.envelope, { status: 'Unauthorized', message: 'Error: 无访问权限 | No access rights', data: null });
        // After the reload, /session went without a token and asked for a key again.
        const last = sentTo('/api/session').at(-1);
        assert.equal(last.headers.authorization, undefined);
        assert.equal(await page.locator('#chat').isVisible(), false);
    });

    it('no request left the origin and no page threw', () => {
        assert.deepEqual(problems, []);
    });
});
