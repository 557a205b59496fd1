#!/usr/bin/env node
// A stand-in for a chatweb service binary, for testing deploy/local/stack.mjs before (and
// independently of) the C services. It follows the services' process contract:
//   env HTTP_ADDR=host:port (data plane), ADMIN_ADDR=host:port (/healthz, /readyz, /metrics);
//   a bad config → one-line error on stderr and a non-zero exit; SIGTERM → exit 0.
// Data plane: every request is answered with JSON describing it and the service's environment;
// GET /sse streams 5 events 100 ms apart.
// Knobs: STUB_FAIL_AT_START=msg (exit 78 with that message), STUB_READY_AFTER_MS (readyz 503 until
// then), STUB_EXIT_AFTER_MS (exit 3 after that long, to simulate a crash).
//
// Usage: node stub-service.mjs <service-name>
import http from 'node:http';

const name = process.argv[2] || 'stub';
const started = Date.now();
const log = (msg) => process.stderr.write(`ts=${new Date().toISOString()} service=${name} ${msg}\n`);

function addr(varName) {
    const v = process.env[varName];
    const m = /^(.+):(\d+)$/.exec(v || '');
    if (!m) {
        process.stderr.write(`${name}: ${varName} must be host:port, got ${JSON.stringify(v || '')}\n`);
        process.exit(78);
    }
    return { host: m[1], port: Number(m[2]) };
}

if (process.env.STUB_FAIL_AT_START) {
    process.stderr.write(`${name}: ${process.env.STUB_FAIL_AT_START}\n`);
    process.exit(78);
}
const data = addr('HTTP_ADDR');
const admin = addr('ADMIN_ADDR');
const readyAfter = Number(process.env.STUB_READY_AFTER_MS || 0);
const ENV_KEYS = ['AUTH_URL', 'BILLING_URL', 'REDIS_URL', 'DB', 'DATA_DIR', 'LOG_LEVEL', 'OPENAI_KEY', 'OPENAI_BASE_URL',
    'HTTP_ADDR', 'ADMIN_ADDR'];

const dataServer = http.createServer((req, res) => {
    let size = 0;
    req.on('data', (c) => { size += c.length; });
    req.on('end', () => {
        if (req.url === '/sse') {
            res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache' });
            let i = 0;
            const t = setInterval(() => {
                res.write(`data: ${JSON.stringify({ i, t: Date.now() })}\n\n`);
                if (++i === 5) {
                    clearInterval(t);
                    res.end('data: [DONE]\n\n');
                }
            }, 100);
            return;
        }
        const env = Object.fromEntries(ENV_KEYS.filter((k) => process.env[k] !== undefined).map((k) => [k, process.env[k]]));
        res.writeHead(200, { 'content-type': 'application/json' });
        res.end(JSON.stringify({ service: name, pid: process.pid, method: req.method, url: req.url, headers: req.headers,
            bodyBytes: size, env }));
    });
});

const adminServer = http.createServer((req, res) => {
    if (req.url === '/healthz') return res.end('ok\n');
    if (req.url === '/readyz') {
        const ready = Date.now() - started >= readyAfter;
        res.statusCode = ready ? 200 : 503;
        return res.end(ready ? 'ready\n' : 'starting\n');
    }
    if (req.url === '/metrics') return res.end(`stub_up{service="${name}"} 1\n`);
    res.statusCode = 404;
    res.end();
});

function fail(what, err) {
    process.stderr.write(`${name}: cannot listen on ${what}: ${err.message}\n`);
    process.exit(71);
}
dataServer.on('error', (err) => fail(process.env.HTTP_ADDR, err));
adminServer.on('error', (err) => fail(process.env.ADMIN_ADDR, err));
dataServer.listen(data.port, data.host, () => {
    adminServer.listen(admin.port, admin.host, () => log(`event=listening http=${process.env.HTTP_ADDR} admin=${process.env.ADMIN_ADDR}`));
});

if (process.env.STUB_EXIT_AFTER_MS) {
    setTimeout(() => {
        log('event=crash reason="STUB_EXIT_AFTER_MS"');
        process.exit(3);
    }, Number(process.env.STUB_EXIT_AFTER_MS));
}
process.on('SIGTERM', () => {
    log('event=draining');
    dataServer.close();
    adminServer.close();
    dataServer.closeAllConnections?.();
    adminServer.closeAllConnections?.();
    log('event=stopped');
    process.exit(0);
});
