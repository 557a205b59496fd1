// Shared upstream connections (issue 9 item 2, docs/decisions.md 61): chat speaks HTTP/2 to a
// TLS upstream with a private CA (the fake upstream's TLS/HTTP/2 front, docs/fake-upstream.md)
// through our own client (common/fetch_h2.c) and multiplexes concurrent streams over one
// connection, and a burst past one connection's streams over as few as it needs, by name as by
// address, within the server's SETTINGS_MAX_CONCURRENT_STREAMS; a cancelled stream resets only
// itself; a GOAWAY that refuses the streams that had not started loses none of them, nor does a
// connection lost before their first byte (the meter's retry); without the CA, or by a name the
// certificate does not hold, the upstream is refused; an upstream that offers only HTTP/1.1 is
// used with keep-alive and TLS session resumption by our HTTP/1.1 client (common/fetch_h1.c,
// decision 62), after one ALPN probe or, with OPENAI_HTTP2=off, from the first connection, and
// refused there too without the CA; h2c with prior knowledge (OPENAI_HTTP2=prior-knowledge) on a
// cleartext upstream.
// The fake's /_fake/stats counts connections and streams: every figure below comes from it.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import {
    basicAuth, getJSON, postJSON, startFakeUpstream, startService, streamBody, tempDir, withStack,
} from './lib/harness.mjs';

const USERS = { BASIC_AUTH_USER: 'alice', BASIC_AUTH_PASSWORD: 'pw-alice' };
const ALICE = basicAuth('alice', 'pw-alice');
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** A private CA and a certificate for 127.0.0.1 / localhost signed by it (openssl CLI). */
function makeCerts(dir) {
    const run = (args) => execFileSync('openssl', args, { cwd: dir, stdio: ['ignore', 'ignore', 'pipe'] });
    const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];
    run(['req', '-x509', ...ec, '-keyout', 'ca.key', '-out', 'ca.pem', '-subj', '/CN=chatweb test CA', '-days', '2']);
    run(['req', ...ec, '-keyout', 'server.key', '-out', 'server.csr', '-subj', '/CN=localhost']);
    fs.writeFileSync(path.join(dir, 'san.ext'), 'subjectAltName=IP:127.0.0.1,DNS:localhost\n');
    run(['x509', '-req', '-in', 'server.csr', '-CA', 'ca.pem', '-CAkey', 'ca.key', '-CAcreateserial',
        '-out', 'server.pem', '-days', '2', '-extfile', 'san.ext']);
    return { ca: path.join(dir, 'ca.pem'), cert: path.join(dir, 'server.pem'), key: path.join(dir, 'server.key') };
}

/** Splits a chat-process body into its JSON objects. */
function objects(text) {
    return text.split('\n').filter(Boolean).map((line) => JSON.parse(line));
}

async function chat(base, prompt, timeoutMs = 60000) {
    const r = await streamBody(`${base}/api/chat-process`, {
        method: 'POST', headers: { authorization: ALICE, 'content-type': 'application/json' },
        body: JSON.stringify({ prompt }), timeoutMs,
    });
    assert.equal(r.status, 200, r.text);
    const objs = objects(r.text);
    return { last: objs[objs.length - 1], objs, text: r.text };
}

/** A complete answer of the fake for `tokens` tokens: "Echo(n msgs): <words> lorem ...". */
function assertComplete(res, tokens, label) {
    assert.ok(res.last && typeof res.last.text === 'string', `${label}: ${res.text.slice(-300)}`);
    assert.doesNotMatch(res.last.text, /\[\[OpenAI\]/, `${label}: ${res.last.text}`);
    assert.equal(res.last.text.split(' ').length, tokens, `${label}: ${res.last.text}`);
}

const stats = async (fake) => (await getJSON(`${fake.url}/_fake/stats`)).front;

/** The seq of the last request the fake recorded (0 before any). */
async function lastSeq(fake) {
    const { requests } = await getJSON(`${fake.url}/_fake/requests`);
    return requests.length > 0 ? requests[requests.length - 1].seq : 0;
}

/** Waits until the fake has recorded `n` requests after seq `since` (at most about 20 s). */
async function untilRequests(fake, since, n) {
    for (let i = 0; i < 1000; i++) {
        if ((await getJSON(`${fake.url}/_fake/requests?since=${since}`)).requests.length >= n) return;
        await sleep(20);
    }
    assert.fail(`the fake did not receive ${n} requests`);
}

const delta = (a, b) => Object.fromEntries(Object.keys(b).map((k) => [k, b[k] - a[k]]));

describe('chat to a TLS + HTTP/2 upstream', () => {
    const dir = tempDir('chatweb-h2-');
    const certs = makeCerts(dir);
    const fakes = {};
    const extra = [];
    // The TLS front offers h2 with at most 100 streams per connection; one chat worker, so one
    // curl multi and (with multiplexing) one upstream connection.
    before(async () => {
        const tlsEnv = { FAKE_FRONT_LISTEN: '127.0.0.1:0', FAKE_TLS_CERT: certs.cert, FAKE_TLS_KEY: certs.key };
        fakes.h2 = await startFakeUpstream({ dir: path.join(dir, 'fake-h2'), env: { ...tlsEnv, FAKE_H2_MAX_STREAMS: '100' } });
        fakes.h1 = await startFakeUpstream({ dir: path.join(dir, 'fake-h1'), env: { ...tlsEnv, FAKE_H2: '0' } });
        fakes.h2c = await startFakeUpstream({ dir: path.join(dir, 'fake-h2c'), env: { FAKE_FRONT_LISTEN: '127.0.0.1:0' } });
        fakes.h2any = await startFakeUpstream({ dir: path.join(dir, 'fake-h2any'), env: { ...tlsEnv, FAKE_FRONT_LISTEN: '0.0.0.0:0' } });
        fakes.h2small = await startFakeUpstream({ dir: path.join(dir, 'fake-h2small'), env: { ...tlsEnv, FAKE_H2_MAX_STREAMS: '10' } });
        stackEnv.OPENAI_BASE_URL = `${fakes.h2.frontUrl}/v1`;
    }, { timeout: 30000 });
    const stackEnv = {
        ...USERS, WORKERS: '1', OPENAI_KEY: 'sk-fake', OPENAI_CA_FILE: certs.ca, CHAT_UPSTREAM_IDLE_TIMEOUT: '30',
    };
    // withStack's before() runs after ours, so OPENAI_BASE_URL is set by then.
    const stack = withStack({ fakeUpstream: false, env: stackEnv });

    /** One more chat replica beside the stack's, with its own upstream settings. */
    async function extraChat(label, env) {
        const c0 = stack.services.chat[0];
        const h = await startService('chat', {
            dir: stack.dir, logDir: path.join(stack.dir, 'logs'), label,
            env: {
                ...USERS, WORKERS: '1', OPENAI_KEY: 'sk-fake', REDIS_URL: stack.redisUrl, AUTH_URL: stack.authUrl,
                BILLING_URL: stack.billingUrl, RPC_SECRET: c0.rpcSecret, CHAT_UPSTREAM_IDLE_TIMEOUT: '30', ...env,
            },
        });
        extra.push(h);
        return h.url;
    }

    after(async () => {
        for (const h of extra) await h.stop();
        for (const f of Object.values(fakes)) await f.stop();
        if (process.env.KEEP_TEST_DIRS !== '1') fs.rmSync(dir, { recursive: true, force: true });
    }, { timeout: 30000 });

    const chatUrl = () => stack.services.chat[0].url;

    it('multiplexes 30 concurrent streams over one TLS connection (ALPN h2, private CA)', async (t) => {
        const s0 = await stats(fakes.h2);
        const N = 30; // one connection takes up to 100 (common/fetch_h2.h)
        const res = await Promise.all(Array.from({ length: N }, (_, i) => chat(chatUrl(), `s${i} [[fake tps=20 tokens=10]]`)));
        res.forEach((r, i) => assertComplete(r, 10, `stream ${i}`));
        const d = delta(s0, await stats(fakes.h2));
        const s1 = await stats(fakes.h2);
        t.diagnostic(`${N} streams: ${d.connections} connection(s), ${d.h2_streams} HTTP/2 streams, ` +
            `at most ${s1.h2_max_streams_per_connection} open on one connection`);
        assert.equal(d.connections, 1, 'one upstream connection');
        assert.equal(d.tls_handshakes, 1);
        assert.equal(d.h2_connections, 1);
        assert.equal(d.h2_streams, N);
        assert.ok(s1.h2_max_streams_per_connection >= N, `streams open at once: ${s1.h2_max_streams_per_connection}`);
    });

    // libcurl 7.88 over TLS + HTTP/2 left a stream's data in its buffers, and the stream hung
    // until the next byte on the connection, when a reply came faster than its receive buffer
    // took it (4 KiB then; fetch.c leaves HTTP/2 transfers curl's 16 KiB since): 2 of 20 such
    // streams hung in most bursts of bench/streams' warm-up. Here: bursts of 20 replies sent at
    // once (tps=0), about 16 KiB each; a hung stream fails on the 20 s timeout.
    it('replies sent at once, larger than a receive buffer, all complete (no stream left hanging)', { timeout: 120000 }, async () => {
        for (let round = 0; round < 3; round++) {
            const res = await Promise.all(Array.from({ length: 20 },
                (_, i) => chat(chatUrl(), `burst ${round}.${i} [[fake tps=0 tokens=80]]`, 20000)));
            res.forEach((r, i) => assertComplete(r, 80, `round ${round} stream ${i}`));
        }
    });

    it('a cancelled stream resets only its own HTTP/2 stream; the others complete', async () => {
        const s0 = await stats(fakes.h2);
        const others = Array.from({ length: 5 }, (_, i) => chat(chatUrl(), `o${i} [[fake tps=10 tokens=15]]`));
        await new Promise((resolve) => {
            const req = http.request(`${chatUrl()}/api/chat-process`, {
                method: 'POST', agent: false, headers: { authorization: ALICE, 'content-type': 'application/json' },
            }, (res) => {
                res.once('data', () => { req.destroy(); resolve(); });
                res.on('error', () => {});
            });
            req.on('error', () => {});
            req.end(JSON.stringify({ prompt: 'cancel me [[fake tps=5 tokens=100]]' }));
        });
        (await Promise.all(others)).forEach((r, i) => assertComplete(r, 15, `other ${i}`));
        let d;
        for (let i = 0; i < 50; i++) {
            d = delta(s0, await stats(fakes.h2));
            if (d.h2_streams_reset >= 1) break;
            await sleep(20);
        }
        for (let i = 0; i < 50 && d.h2_streams_reset < 1; i++) {
            await sleep(20);
            d = delta(s0, await stats(fakes.h2));
        }
        assert.equal(d.h2_streams_reset, 1, 'one stream reset before its end');
        assert.equal(d.connections, 0, 'the connection stayed up (no new one)');
        assert.equal(d.h2_streams, 6);
    });

    it('GOAWAY refusing the streams that had not started loses none of them', async (t) => {
        const s0 = await stats(fakes.h2);
        const seq0 = await lastSeq(fakes.h2);
        // 4 streams answering at once, then 4 held 1.5 s before their first byte. Each pause
        // also waits until the fake has the requests (chat under ASan on a loaded machine can
        // take longer), so the answering streams have the lower ids and all 8 are in flight.
        const started = Array.from({ length: 4 }, (_, i) => chat(chatUrl(), `a${i} [[fake tps=4 tokens=8]]`));
        await sleep(300);
        await untilRequests(fakes.h2, seq0, 4);
        const waiting = Array.from({ length: 4 }, (_, i) => chat(chatUrl(), `w${i} [[fake ttft=1500 tokens=5]]`));
        await sleep(300);
        await untilRequests(fakes.h2, seq0, 8);
        const s1 = await stats(fakes.h2);
        const g = await postJSON(`${fakes.h2.url}/_fake/goaway?refuse=1`, {});
        assert.equal(g.json().ok, true);
        (await Promise.all(started)).forEach((r, i) => assertComplete(r, 8, `started ${i}`));
        (await Promise.all(waiting)).forEach((r, i) => assertComplete(r, 5, `waiting ${i}`));
        const s2 = await stats(fakes.h2);
        const d = delta(s0, s2);
        const n = delta(s1, s2); // after the GOAWAY
        t.diagnostic(`GOAWAY: ${d.h2_refused_streams} streams refused, ${n.connections} new connection(s) ` +
            `(${n.tls_resumed} TLS sessions resumed), ${d.h2_streams} streams in all`);
        assert.equal(d.h2_goaways_sent, 1);
        assert.equal(d.h2_refused_streams, 4, 'the 4 streams that had not started were refused');
        // our client sends the refused streams again on one new connection (libcurl 7.88, with
        // CHATWEB_HTTP2_CLIENT=libcurl, opens one for each)
        assert.ok(n.connections >= 1 && n.connections <= 4, `they were sent again on new connections: ${n.connections}`);
        assert.equal(d.h2_streams, 12);
        // the new connections start at once; how many find a session ticket by then varies
        // (4 of 4 in the plain build, 2 of 4 under ASan): at least one must resume
        assert.ok(n.tls_resumed >= 1, `TLS sessions resumed: ${n.tls_resumed} of ${n.tls_handshakes}`);
    });

    it('a connection lost before the first byte loses no request: the meter sends them again', async (t) => {
        const s0 = await stats(fakes.h2);
        const waiting = Array.from({ length: 4 }, (_, i) => chat(chatUrl(), `d${i} [[fake ttft=800 tokens=5]]`));
        await sleep(400);
        const g = await postJSON(`${fakes.h2.url}/_fake/goaway?drop=1`, {});
        assert.equal(g.json().ok, true);
        (await Promise.all(waiting)).forEach((r, i) => assertComplete(r, 5, `waiting ${i}`));
        const d = delta(s0, await stats(fakes.h2));
        t.diagnostic(`connection dropped with 4 streams waiting: ${d.connections} new connection(s), ${d.h2_streams} streams in all`);
        assert.ok(d.h2_connections_dropped >= 1, 'every open HTTP/2 connection was closed');
        assert.equal(d.h2_streams, 8, 'each of the 4 was sent twice');
        assert.ok(d.connections >= 1, 'on a new connection');
    });

    it('refuses the upstream without the private CA', async () => {
        const s0 = await stats(fakes.h2);
        const url = await extraChat('chat-no-ca', { OPENAI_BASE_URL: `${fakes.h2.frontUrl}/v1` });
        const r = await chat(url, 'hi');
        assert.equal(r.last.status, 'Fail', r.text);
        const d = delta(s0, await stats(fakes.h2));
        assert.ok(d.tls_failed_handshakes >= 1, 'the handshake failed at the fake');
        assert.equal(d.h2_streams, 0, 'no request reached it');
    });

    it('refuses a certificate that does not name the host (127.0.0.2 is not in it)', async () => {
        const port = new URL(fakes.h2any.frontUrl).port;
        const s0 = await stats(fakes.h2any);
        const url = await extraChat('chat-wrong-name', { OPENAI_BASE_URL: `https://127.0.0.2:${port}/v1`, OPENAI_CA_FILE: certs.ca });
        const r = await chat(url, 'hi');
        assert.equal(r.last.status, 'Fail', r.text);
        const d = delta(s0, await stats(fakes.h2any));
        assert.ok(d.tls_failed_handshakes >= 1, 'the handshake failed at the fake');
        assert.equal(d.h2_streams, 0, 'no request reached it');
        // the same fake by an address the certificate names answers
        const ok = await extraChat('chat-right-name', { OPENAI_BASE_URL: `https://127.0.0.1:${port}/v1`, OPENAI_CA_FILE: certs.ca });
        assertComplete(await chat(ok, 'named [[fake tokens=3]]'), 3, 'by 127.0.0.1');
    });

    it('falls back to HTTP/1.1 with keep-alive when the upstream offers no h2', async (t) => {
        const url = await extraChat('chat-h1', { OPENAI_BASE_URL: `${fakes.h1.frontUrl}/v1`, OPENAI_CA_FILE: certs.ca });
        const s0 = await stats(fakes.h1);
        for (let i = 0; i < 5; i++) assertComplete(await chat(url, `k${i} [[fake tokens=6]]`), 6, `sequential ${i}`);
        const seq = delta(s0, await stats(fakes.h1));
        const conc = await Promise.all(Array.from({ length: 4 }, (_, i) => chat(url, `c${i} [[fake tps=20 tokens=6]]`)));
        conc.forEach((r, i) => assertComplete(r, 6, `concurrent ${i}`));
        const all = delta(s0, await stats(fakes.h1));
        t.diagnostic(`HTTP/1.1: 5 sequential requests used ${seq.connections} connection(s); 4 concurrent ones ` +
            `${all.connections - seq.connections} more, ${all.tls_resumed - seq.tls_resumed} of them resuming a TLS session`);
        assert.equal(all.h2_connections, 0);
        // our HTTP/2 client's first connection learns from ALPN that the origin speaks HTTP/1.1
        // and closes; our HTTP/1.1 client then serves the origin over one keep-alive connection
        assert.equal(seq.connections, 2, 'the ALPN probe, then one keep-alive connection for the sequential requests');
        assert.equal(seq.h1_connections, 2, 'both chose HTTP/1.1 (ALPN)');
        assert.ok(all.connections - seq.connections >= 3, 'concurrent HTTP/1.1 requests need their own connections');
        assert.ok(all.tls_resumed - seq.tls_resumed >= 1, 'a new connection resumes the origin\'s TLS session');
    });

    it('OPENAI_HTTP2=off: HTTP/1.1 over TLS from the first connection, refused without the CA', async (t) => {
        const url = await extraChat('chat-h1-off', { OPENAI_BASE_URL: `${fakes.h1.frontUrl}/v1`, OPENAI_CA_FILE: certs.ca, OPENAI_HTTP2: 'off' });
        const s0 = await stats(fakes.h1);
        for (let i = 0; i < 3; i++) assertComplete(await chat(url, `off${i} [[fake tokens=4]]`), 4, `sequential ${i}`);
        const d = delta(s0, await stats(fakes.h1));
        t.diagnostic(`OPENAI_HTTP2=off: 3 sequential requests over ${d.connections} connection(s)`);
        assert.equal(d.connections, 1, 'no ALPN probe: one keep-alive connection');
        assert.equal(d.h1_connections, 1);
        // without the private CA: the handshake fails and no request reaches the fake
        const bad = await extraChat('chat-h1-no-ca', { OPENAI_BASE_URL: `${fakes.h1.frontUrl}/v1`, OPENAI_HTTP2: 'off' });
        const since = await lastSeq(fakes.h1);
        const s1 = await stats(fakes.h1);
        const r = await chat(bad, 'hi');
        assert.equal(r.last.status, 'Fail', r.text);
        assert.ok((await stats(fakes.h1)).tls_failed_handshakes - s1.tls_failed_handshakes >= 1, 'the handshake failed at the fake');
        assert.equal((await getJSON(`${fakes.h1.url}/_fake/requests?since=${since}`)).requests.length, 0, 'no request reached it');
    });

    it('speaks h2c with OPENAI_HTTP2=prior-knowledge to a cleartext upstream', async (t) => {
        const url = await extraChat('chat-h2c', { OPENAI_BASE_URL: `${fakes.h2c.frontUrl}/v1`, OPENAI_HTTP2: 'prior-knowledge' });
        const s0 = await stats(fakes.h2c);
        const res = await Promise.all(Array.from({ length: 10 }, (_, i) => chat(url, `p${i} [[fake tps=20 tokens=6]]`)));
        res.forEach((r, i) => assertComplete(r, 6, `h2c ${i}`));
        const d = delta(s0, await stats(fakes.h2c));
        // our HTTP/2 client multiplexes h2c like h2 (libcurl < 7.89, with
        // CHATWEB_HTTP2_CLIENT=libcurl, cannot reuse an h2c connection: curl issue 10634)
        const conns = 1;
        t.diagnostic(`h2c: 10 streams over ${d.h2_connections} connection(s)`);
        assert.equal(d.connections, conns);
        assert.equal(d.h2_connections, conns);
        assert.equal(d.h2_streams, 10);
    });

    it('a burst past one connection\'s streams opens only the connections it needs', { timeout: 120000 }, async (t) => {
        // A replica of its own: no connection to the fake yet, so the burst starts from none.
        // Last in this file: its idle connections would count in the GOAWAY test's figures.
        // common/fetch_h2.c opens a connection only for what those being set up cannot take.
        // By name (localhost, in the certificate too): resolved off the loop, sent as SNI and
        // checked against the certificate's DNS name rather than its IP address.
        const byName = fakes.h2.frontUrl.replace('127.0.0.1', 'localhost');
        const url = await extraChat('chat-burst', { OPENAI_BASE_URL: `${byName}/v1`, OPENAI_CA_FILE: certs.ca });
        const s0 = await stats(fakes.h2);
        const N = 250;
        const res = await Promise.all(Array.from({ length: N }, (_, i) => chat(url, `b${i} [[fake tps=5 tokens=10]]`)));
        res.forEach((r, i) => assertComplete(r, 10, `stream ${i}`));
        const d = delta(s0, await stats(fakes.h2));
        const s1 = await stats(fakes.h2);
        t.diagnostic(`${N} streams at once, at most 100 per connection: ` +
            `${d.connections} connection(s), ${d.h2_streams} HTTP/2 streams, at most ` +
            `${s1.h2_max_streams_per_connection} on one`);
        assert.equal(d.h2_streams, N);
        assert.equal(d.h2_refused_streams, 0);
        assert.ok(d.connections >= Math.ceil(N / 100), `at most 100 streams per connection: ${d.connections} connection(s)`);
        assert.ok(d.connections <= Math.ceil(N / 100) + 1, `${N} streams need ${Math.ceil(N / 100)} connections, got ${d.connections}`);
    });

    it('keeps within the server\'s SETTINGS_MAX_CONCURRENT_STREAMS: none refused', { timeout: 120000 }, async (t) => {
        const url = await extraChat('chat-small', { OPENAI_BASE_URL: `${fakes.h2small.frontUrl}/v1`, OPENAI_CA_FILE: certs.ca });
        const s0 = await stats(fakes.h2small);
        const N = 40;
        const res = await Promise.all(Array.from({ length: N }, (_, i) => chat(url, `m${i} [[fake tps=10 tokens=10]]`)));
        res.forEach((r, i) => assertComplete(r, 10, `stream ${i}`));
        const d = delta(s0, await stats(fakes.h2small));
        const s1 = await stats(fakes.h2small);
        t.diagnostic(`${N} streams, the server allows 10 per connection: ${d.connections} connection(s), ` +
            `at most ${s1.h2_max_streams_per_connection} on one, ${d.h2_refused_streams} refused`);
        assert.equal(d.h2_streams, N);
        assert.equal(d.h2_refused_streams, 0, 'no stream past the server\'s limit');
        assert.ok(s1.h2_max_streams_per_connection <= 10);
        assert.ok(d.connections >= N / 10 && d.connections <= N / 10 + 1, `${d.connections} connection(s)`);
    });
});
