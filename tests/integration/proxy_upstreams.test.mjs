// The /v1 proxy's upstreams (UPSTREAMS, docs/proxy.md "Upstreams"): routing by model, weights,
// each upstream's own key, a retry before the first byte that goes to another upstream, and the
// circuit breaker that takes a failing upstream out of the draw. Three upstreams, all real
// servers: the stack's fake upstream ("default"), a second chatweb-fake-upstream ("b", which
// only accepts its own key), and "flaky", a small HTTP server here that answers 503 to
// everything and counts what it got.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import http from 'node:http';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import {
    defaultBinDir, freePort, getJSON, postJSON, startFakeUpstream, startStack, tempDir,
} from './lib/harness.mjs';

const OPS_KEY = 'ops-key-for-proxy-upstream-tests-01';
const B_KEY = 'sk-upstream-b-0123456789abcdef';

async function ops(stack, body) {
    const r = await postJSON(`${stack.url}/accounts`, body, { headers: { opskey: OPS_KEY } });
    assert.equal(r.json().status, 'Success', `${body.action}: ${r.body}`);
    return r.json();
}

async function chat(stack, key, model) {
    return postJSON(`${stack.url}/v1/chat/completions`, { model, messages: [{ role: 'user', content: 'hi [[fake tokens=3]]' }] },
        { headers: { authorization: `Bearer ${key}` } });
}

const count = async (fake) => (await getJSON(`${fake.url}/_fake/requests`)).requests.length;

/** "liar": answers 200 but not what it claims: an HTML page as JSON, a stream whose second event
 * is broken JSON (as a misconfigured gateway or a cut connection in between would). */
function liarServer() {
    return http.createServer((req, res) => {
        let body = '';
        req.on('data', (d) => { body += d; });
        req.on('end', () => {
            if (JSON.parse(body).stream) {
                res.writeHead(200, { 'content-type': 'text/event-stream' });
                res.end('data: {"id":"l1","object":"chat.completion.chunk","created":1,"model":"liar-model",' +
                    '"choices":[{"index":0,"delta":{"role":"assistant","content":"Hel"},"finish_reason":null}]}\n\n' +
                    'data: {"id":"l1","choices":[{"delta":{"content":\n\n');
                return;
            }
            res.writeHead(200, { 'content-type': 'application/json' });
            res.end('<html><body>502 Bad Gateway</body></html>');
        });
    });
}

describe('UPSTREAMS: routing, weights, keys, failover and the circuit breaker', () => {
    let dir, b, flaky, flakyHits = 0, liar, stack, key, user;

    before(async () => {
        dir = tempDir('chatweb-upstreams-');
        b = await startFakeUpstream({ dir, label: 'fake-b', env: { FAKE_API_KEY: B_KEY } });
        flaky = http.createServer((req, res) => {
            flakyHits++;
            req.resume();
            res.writeHead(503, { 'content-type': 'application/json' });
            res.end('{"error":{"message":"flaky is down","type":"server_error","param":null,"code":null}}');
        });
        await new Promise((r) => flaky.listen(0, '127.0.0.1', r));
        liar = liarServer();
        await new Promise((r) => liar.listen(0, '127.0.0.1', r));
        const upstreams = [
            { name: 'default', weight: 1, models: ['gpt-4o', 'gpt-4o-mini', 'flaky-model'] },
            { name: 'b', base_url: b.baseUrl, key_env: 'B_KEY', weight: 3, models: ['gpt-4o-mini', 'b-*'] },
            { name: 'flaky', base_url: `http://127.0.0.1:${flaky.address().port}/v1`, weight: 1000, models: ['flaky-model'] },
            { name: 'liar', base_url: `http://127.0.0.1:${liar.address().port}/v1`, weight: 1, models: ['liar-model'] },
        ];
        stack = await startStack({
            dir: path.join(dir, 'stack'), fakeUpstream: true,
            env: {
                OPS_KEY, OPENAI_PROXY: 'true', B_KEY, UPSTREAMS: JSON.stringify(upstreams),
                UPSTREAM_BREAKER_FAILURES: '2', UPSTREAM_BREAKER_OPEN_MS: '600000',
            },
        });
        user = 'ups';
        await ops(stack, { action: 'register', i_username: user, i_password: 'ups-password', count: 10000000 });
        key = (await ops(stack, { action: 'create_key', i_username: user, name: 'ups' })).data.key;
    }, { timeout: 120000 });
    after(async () => {
        await stack?.stop();
        await b?.kill();
        flaky?.close();
        liar?.close();
    });

    it('a model goes only to the upstreams that serve it; one served by none is 404 and goes nowhere', async () => {
        const [d0, b0] = [await count(stack.fakeUpstream), await count(b)];
        for (let i = 0; i < 5; i++) {
            const r = await chat(stack, key, 'b-special');
            assert.equal(r.status, 200, r.body);
        }
        for (let i = 0; i < 5; i++) assert.equal((await chat(stack, key, 'gpt-4o')).status, 200);
        assert.equal(await count(b) - b0, 5, 'b-* went to b, with b\'s own key (it refuses others)');
        assert.equal(await count(stack.fakeUpstream) - d0, 5, 'gpt-4o went to default');
        const none = await chat(stack, key, 'nobody-serves-this');
        assert.equal(none.status, 404, none.body);
        assert.equal(none.json().error.code, 'model_not_found');
        assert.equal(await count(b) - b0 + await count(stack.fakeUpstream) - d0, 10, 'nothing went upstream');
    });

    it('weights: gpt-4o-mini (default 1, b 3) is shared about 1:3', async () => {
        const [d0, b0] = [await count(stack.fakeUpstream), await count(b)];
        const n = 120;
        for (let i = 0; i < n; i++) assert.equal((await chat(stack, key, 'gpt-4o-mini')).status, 200);
        const [dn, bn] = [await count(stack.fakeUpstream) - d0, await count(b) - b0];
        assert.equal(dn + bn, n);
        // binomial(120, 0.75): mean 90, sd 4.7; 60..115 is more than 5 sd either way
        assert.ok(bn >= 60 && bn <= 115, `b got ${bn} of ${n}`);
    });

    it('a failing upstream: the retry goes to another one, and after 2 failures its circuit opens', async () => {
        const d0 = await count(stack.fakeUpstream);
        const before = (await ops(stack, { action: 'check', i_username: user })).data;
        flakyHits = 0;
        for (let i = 0; i < 10; i++) {
            const r = await chat(stack, key, 'flaky-model');
            assert.equal(r.status, 200, `request ${i}: ${r.body}`);
        }
        assert.equal(flakyHits, 2, 'flaky was asked until its circuit opened, then never');
        assert.equal(await count(stack.fakeUpstream) - d0, 10, 'every request was answered by default');
        let now;
        for (let t = 0; t < 50; t++) {
            now = (await ops(stack, { action: 'check', i_username: user })).data;
            if (now.held === 0) break;
            await new Promise((r) => setTimeout(r, 100));
        }
        assert.equal(now.held, 0, 'one hold per request, each ended once');
        assert.ok(now.usage > before.usage);
    });

    it('a 200 that is not what it claims: JSON that is HTML is a 502; a stream that breaks ends with an error event', async () => {
        const held = async () => {
            let now;
            for (let t = 0; t < 50; t++) {
                now = (await ops(stack, { action: 'check', i_username: user })).data;
                if (now.held === 0) break;
                await new Promise((r) => setTimeout(r, 100));
            }
            return now;
        };
        const before = await held();
        const r = await chat(stack, key, 'liar-model');
        assert.equal(r.status, 502, r.body);
        assert.equal(r.json().error.code, 'upstream_error');
        assert.match(r.json().error.message, /the upstream answered 200 with a body that is not JSON/);
        const s = await postJSON(`${stack.url}/v1/chat/completions`,
            { model: 'liar-model', stream: true, messages: [{ role: 'user', content: 'hi' }] },
            { headers: { authorization: `Bearer ${key}` } });
        assert.equal(s.status, 200, s.body);
        const events = s.body.split('\n\n').filter((e) => e.startsWith('data: ')).map((e) => e.slice(6));
        assert.equal(events.length, 2, s.body);
        assert.equal(JSON.parse(events[0]).choices[0].delta.content, 'Hel', 'the good event passed on');
        const err = JSON.parse(events[1]).error; // what the OpenAI SDKs raise an APIError on
        assert.deepEqual([err.type, err.code, err.message], ['server_error', 'upstream_error', 'malformed upstream event']);
        assert.ok(!s.body.includes('[DONE]'), 'no [DONE]: the stream did not end well');
        // the upstream was sent the prompt and answered: both charged (our count), no hold left
        const now = await held();
        assert.equal(now.held, 0, 'each hold ended once');
        assert.ok(now.usage > before.usage, 'charged');
    });

    it('/metrics counts by upstream name', async () => {
        const r = await fetch(`${stack.services.proxy[0].adminUrl}/metrics`);
        const body = await r.text();
        assert.match(body, /proxy_model_requests_total\{model="b-special",key="[^"]+",upstream="b",status="200"\} 5/);
        assert.match(body, /proxy_model_requests_total\{model="flaky-model",key="[^"]+",upstream="default",status="200"\} 10/);
    });
});

describe('UPSTREAMS: a bad value stops the proxy with one line naming it', () => {
    const base = async () => ({
        PATH: process.env.PATH,
        HTTP_ADDR: `127.0.0.1:${await freePort()}`,
        ADMIN_ADDR: `127.0.0.1:${await freePort()}`,
        AUTH_URL: 'http://127.0.0.1:9',
        BILLING_URL: 'http://127.0.0.1:9',
        REDIS_URL: 'redis://127.0.0.1:9/0',
        DATA_DIR: tempDir('chatweb-upstreams-config-'),
        RPC_SECRET: 'upstreams-test-secret-upstreams-test',
    });
    const cases = [
        ['not JSON', '[{', /not JSON/],
        ['not an array', '{"name":"x"}', /JSON array/],
        ['unknown field', '[{"name":"x","base_url":"http://h/v1","wieght":2}]', /unknown field "wieght"/],
        ['bad name', '[{"name":"a b","base_url":"http://h/v1"}]', /name must be/],
        ['no base_url', '[{"name":"x"}]', /base_url is required/],
        ['bad base_url', '[{"name":"x","base_url":"ftp://h/v1"}]', /http\(s\) URL/],
        ['twice', '[{"name":"x","base_url":"http://h/v1"},{"name":"x","base_url":"http://h/v1"}]', /given twice/],
        ['default with a URL', '[{"name":"default","base_url":"http://h/v1"}]', /given twice/],
        ['key_env unset', '[{"name":"x","base_url":"http://h/v1","key_env":"NO_SUCH_VAR_1234"}]', /key_env NO_SUCH_VAR_1234 is not set/],
        ['bad weight', '[{"name":"x","base_url":"http://h/v1","weight":-1}]', /weight must be/],
        ['bad models', '[{"name":"x","base_url":"http://h/v1","models":"gpt-4o"}]', /models must be/],
        // found by fuzz_config: each was accepted before
        ['key not a string', '[{"name":"x","base_url":"http://h/v1","key":123}]', /key must be a string/],
        ['default twice', '[{"name":"default","weight":2},{"name":"default","models":["x"]}]', /given twice/],
        ['base_url without a host', '[{"name":"x","base_url":"http://"}]', /with a host/],
        ['base_url with a blank', '[{"name":"x","base_url":"http://h/v 1"}]', /without blanks/],
    ];
    for (const [what, value, message] of cases) {
        it(what, async () => {
            const r = spawnSync(path.join(defaultBinDir(), 'chatweb-proxy'), [], {
                env: { ...(await base()), OPENAI_PROXY: 'true', UPSTREAMS: value }, encoding: 'utf8', timeout: 10000,
            });
            assert.equal(r.status, 78, `exit code (stderr: ${r.stderr})`);
            assert.match(r.stderr, /UPSTREAMS: /);
            assert.match(r.stderr, message);
            assert.doesNotMatch(r.stderr, /sk-/, 'no key in the message');
        });
    }
});
