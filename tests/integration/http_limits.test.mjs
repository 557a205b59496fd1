// The HTTP limits every service has (common/http.c), checked on the two server modes: chat
// (event loops) and auth (worker pool). Huge headers, huge bodies, slow-loris clients and
// garbage must get a clear answer or a closed connection, and never hurt the next client.
import assert from 'node:assert/strict';
import net from 'node:net';
import { describe, it } from 'node:test';
import { postJSON, request, withStack } from './lib/harness.mjs';

/** Sends raw bytes, resolves with everything the server answered and how the socket ended. */
function raw(addr, bytes, { waitMs = 3000, halfClose = false } = {}) {
    const [host, port] = addr.split(':');
    return new Promise((resolve) => {
        const t0 = Date.now();
        const s = net.connect(Number(port), host);
        let data = '';
        let done = false;
        const finish = (how) => {
            if (done) return;
            done = true;
            clearTimeout(timer);
            s.destroy();
            resolve({ data, how, ms: Date.now() - t0 });
        };
        const timer = setTimeout(() => finish('timeout'), waitMs);
        s.on('connect', () => {
            if (bytes) s.write(bytes);
            if (halfClose) s.end();
        });
        s.on('data', (d) => { data += d; });
        s.on('end', () => finish('closed'));
        s.on('error', () => finish('error'));
    });
}

describe('HTTP limits on every service', () => {
    const stack = withStack({
        services: ['auth', 'billing', 'chat'],
        env: { HTTP_IDLE_TIMEOUT: '2', HTTP_MAX_BODY: '4096' },
    });
    const targets = () => [['chat', stack.services.chat[0].httpAddr, '/api/config'],
        ['auth', stack.services.auth[0].httpAddr, '/api/session']];

    it('a header block over HTTP_MAX_HEADER (16 KiB) is refused', async () => {
        for (const [name, addr, path] of targets()) {
            const big = `X-Big: ${'a'.repeat(20 * 1024)}\r\n`;
            const r = await raw(addr, `POST ${path} HTTP/1.1\r\nHost: x\r\n${big}Content-Length: 2\r\n\r\n{}`);
            assert.match(r.data, /^HTTP\/1\.1 4(31|13|00)/, `${name}: ${r.data.slice(0, 60)} (${r.how})`);
        }
    });

    it('a body over HTTP_MAX_BODY is a 413 in the route style, declared or chunked', async () => {
        for (const [name, addr, path] of targets()) {
            const r = await request(`http://${addr}${path}`, { method: 'POST', body: 'x'.repeat(8192) });
            assert.equal(r.status, 413, name);
            assert.equal(r.json().status, 'Fail', name);
            const chunked = await raw(addr, `POST ${path} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n` +
                `2000\r\n${'y'.repeat(0x2000)}\r\n0\r\n\r\n`);
            assert.match(chunked.data, /^HTTP\/1\.1 413/, `${name} chunked`);
        }
    });

    it('a slow-loris client is dropped after HTTP_IDLE_TIMEOUT', async () => {
        for (const [name, addr, path] of targets()) {
            const r = await raw(addr, `POST ${path} HTTP/1.1\r\nHost: x\r\n`, { waitMs: 8000 });
            assert.equal(r.how, 'closed', `${name}: ${r.how}`);
            assert.ok(r.ms >= 1500 && r.ms < 7000, `${name}: closed after ${r.ms} ms`);
        }
    });

    it('garbage and truncated requests get a 400 or a close, and the service keeps serving', async () => {
        const junk = ['\x00\x01\x02\xff\r\n\r\n', 'GET\r\n\r\n', 'POST / HTTP/9.9\r\n\r\n',
            'POST /api/config HTTP/1.1\r\nContent-Length: -5\r\n\r\n', 'POST /api/config HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n{}'];
        for (const [name, addr, path] of targets()) {
            for (const j of junk) {
                const r = await raw(addr, j, { waitMs: 4000, halfClose: true });
                assert.ok(r.how !== 'timeout' || r.data === '', `${name} ${JSON.stringify(j)}: ${r.how}`);
                if (r.data) assert.match(r.data, /^HTTP\/1\.[01] [45]\d\d/, `${name} ${JSON.stringify(j)}`);
            }
            const ok = await postJSON(`http://${addr}${path}`, {});
            assert.equal(ok.status, 200, `${name} still serves`);
        }
    });

    it('keep-alive connections serve many requests and carry the request id', async () => {
        const addr = stack.services.chat[0].httpAddr;
        const r = await request(`http://${addr}/api/config`, { method: 'POST', body: '{}', headers: { 'x-request-id': 'trace-123' } });
        assert.equal(r.headers['x-request-id'], 'trace-123');
        const bad = await request(`http://${addr}/api/config`, { method: 'POST', body: '{}', headers: { 'x-request-id': 'bad id with spaces' } });
        assert.match(bad.headers['x-request-id'], /^[0-9a-f]{32}$/, 'an unusable id is replaced');
    });
});

describe('/api/config never shows a proxy secret (the seed\'s S5)', () => {
    const stack = withStack({
        services: ['auth', 'billing', 'chat'],
        env: { SOCKS_PROXY: 'socks5h://proxyuser:proxy-secret-pw@127.0.0.1:9' },
    });

    it('says only that a proxy is configured, and the logs do not hold it either', async () => {
        const r = await postJSON(`${stack.url}/api/config`, {});
        assert.equal(r.status, 200);
        assert.equal(r.json().data.socksProxy, '(configured)');
        assert.ok(!r.body.includes('proxy-secret-pw') && !r.body.includes('proxyuser'));
        const fs = await import('node:fs');
        for (const f of fs.readdirSync(stack.logDir))
            assert.ok(!fs.readFileSync(`${stack.logDir}/${f}`, 'utf8').includes('proxy-secret-pw'), f);
    });
});

describe('/v1 is no open relay (the seed\'s S6)', () => {
    const stack = withStack({ services: ['auth', 'billing', 'chat', 'proxy'] });

    it('nothing under /v1 reaches the upstream without the proxy service', async () => {
        const { getJSON } = await import('./lib/harness.mjs');
        const before = (await getJSON(`${stack.fakeUpstream.url}/_fake/requests`)).requests.length;
        const r = await request(`${stack.url}/v1/chat/completions`, {
            method: 'POST', headers: { authorization: 'Bearer sk-anything', 'content-type': 'application/json' },
            body: JSON.stringify({ model: 'gpt-3.5-turbo', messages: [{ role: 'user', content: 'relay me' }] }),
        });
        assert.equal(r.status, 404);
        assert.ok(r.json().error && r.json().error.message, 'an OpenAI error object');
        const after = (await getJSON(`${stack.fakeUpstream.url}/_fake/requests`)).requests.length;
        assert.equal(after, before, 'the upstream saw nothing');
    });
});
