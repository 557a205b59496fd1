#!/usr/bin/env node
// A stand-in for build/bin/chatweb-fake-upstream, with its process contract: `--listen HOST:PORT`
// (or FAKE_LISTEN; port 0 = a free port), prints "fake-upstream listening on http://HOST:PORT" on
// stdout, exits 0 on SIGTERM. POST /v1/chat/completions with "stream": true sends
// FAKE_REPLY_TOKENS (default 5) SSE chunks at FAKE_TOKENS_PER_SEC (default 10); without stream it
// answers one JSON completion. Everything else: 404.
import http from 'node:http';

const i = process.argv.indexOf('--listen');
const listen = i > 0 ? process.argv[i + 1] : process.env.FAKE_LISTEN || '127.0.0.1:0';
const m = /^(.+):(\d+)$/.exec(listen);
if (!m) {
    process.stderr.write(`fake-upstream: --listen must be HOST:PORT, got ${JSON.stringify(listen)}\n`);
    process.exit(64);
}
const tokens = Number(process.env.FAKE_REPLY_TOKENS || 5);
const perSec = Number(process.env.FAKE_TOKENS_PER_SEC || 10);

const server = http.createServer((req, res) => {
    let body = '';
    req.on('data', (c) => { body += c; });
    req.on('end', () => {
        if (req.method !== 'POST' || !/^\/v1\/chat\/completions$/.test(req.url)) {
            res.writeHead(404, { 'content-type': 'application/json' });
            return res.end('{"error":{"message":"not found"}}');
        }
        let parsed = {};
        try { parsed = JSON.parse(body || '{}'); } catch { /* treated as non-stream */ }
        const id = `chatcmpl-stub-${Date.now()}`;
        if (!parsed.stream) {
            res.writeHead(200, { 'content-type': 'application/json' });
            return res.end(JSON.stringify({ id, object: 'chat.completion', choices: [{ index: 0,
                message: { role: 'assistant', content: 'tok '.repeat(tokens).trim() }, finish_reason: 'stop' }],
            usage: { prompt_tokens: 1, completion_tokens: tokens, total_tokens: tokens + 1 } }));
        }
        res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache' });
        let n = 0;
        const t = setInterval(() => {
            if (n < tokens) {
                res.write(`data: ${JSON.stringify({ id, object: 'chat.completion.chunk', choices: [{ index: 0, delta: { content: 'tok ' } }] })}\n\n`);
                n++;
                return;
            }
            clearInterval(t);
            res.end('data: [DONE]\n\n');
        }, 1000 / perSec);
    });
});
server.listen(Number(m[2]), m[1], () => {
    const a = server.address();
    process.stdout.write(`fake-upstream listening on http://${m[1]}:${a.port}\n`);
});
process.on('SIGTERM', () => {
    server.close();
    server.closeAllConnections?.();
    process.exit(0);
});
