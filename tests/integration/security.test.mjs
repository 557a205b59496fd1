// Issue 10 item 5 replayed against a whole stack (docs/security.md): what a local process that
// reaches the internal ports, or reads the data directory, can do.
//   - internal RPC: a forged Recharge (no signature, another key's signature, a stale or a
//     tampered one) is refused before it is decoded, and credits nothing;
//   - Redis: nothing without the password, so no forged session;
//   - DATA_DIR: 0700, and the database, logs, Redis dump and nginx files are the owner's only;
//   - the services listen on loopback unless told otherwise.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { spawnSync } from 'node:child_process';
import { describe, it } from 'node:test';
import { basicAuth, defaultBinDir, postJSON, request, withStack } from './lib/harness.mjs';
import { billingClient, postRaw, redisCall, types } from './lib/billing-rpc.mjs';
import { rpcAuthHeaders } from './lib/rpc-sign.mjs';
import { redisCommands } from '../../deploy/local/stack.mjs';

const USER = 'sec-user';
const PASSWORD = 'sec-password-1';

/** POST body to url with the given headers; resolves {status, body: Buffer}. */
function post(url, body, headers) {
    return new Promise((resolve, reject) => {
        const req = http.request(url, {
            method: 'POST', agent: false,
            headers: { 'content-type': 'application/x-protobuf', 'content-length': body.length, ...headers },
        }, (res) => {
            const chunks = [];
            res.on('data', (c) => chunks.push(c));
            res.on('end', () => resolve({ status: res.statusCode, body: Buffer.concat(chunks) }));
            res.on('error', reject);
        });
        req.on('error', reject);
        req.end(body);
    });
}

function encode(method, msg) {
    const T = types[`${method}Request`];
    return Buffer.from(T.encode(T.fromObject(msg)).finish());
}

/** Every file and directory under dir (not following links). */
function walk(dir, out = []) {
    for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
        const p = path.join(dir, e.name);
        out.push(p);
        if (e.isDirectory()) walk(p, out);
    }
    return out;
}

const mode = (p) => fs.lstatSync(p).mode & 0o777;

describe('security: internal ports and data at rest', () => {
    const stack = withStack({
        persist: true,
        env: { BASIC_AUTH_USER: USER, BASIC_AUTH_PASSWORD: PASSWORD, LOG_LEVEL: 'info' },
    });

    it('a forged Recharge on billing\'s RPC port is refused and credits nothing', async () => {
        const billing = stack.services.billing[0].url;
        const b = billingClient(billing);
        try {
            const user = 4242;
            await b.ok('CreateAccount', { user_id: user, username: 'victim', initial_units: 10 });
            const body = encode('Recharge', { user_id: user, units: 5, actor: 'attacker' });
            const pathname = '/rpc/Billing/Recharge';
            const url = `${billing}${pathname}`;
            const now = Math.floor(Date.now() / 1000);
            const attempts = [
                ['no signature', {}, 401],
                ['another secret', rpcAuthHeaders(pathname, body, { secret: 'x'.repeat(64) }), 403],
                ['a stale timestamp', rpcAuthHeaders(pathname, body, { timestamp: now - 600 }), 403],
                ['a future timestamp', rpcAuthHeaders(pathname, body, { timestamp: now + 600 }), 403],
                ['a signature of another body', rpcAuthHeaders(pathname, encode('Recharge', { user_id: user, units: 1 })), 403],
                ['a signature of another method', rpcAuthHeaders('/rpc/Billing/GetAccount', body), 403],
                ['a garbage signature', { 'x-rpc-timestamp': String(now), 'x-rpc-signature': 'zz' }, 403],
            ];
            for (const [what, headers, want] of attempts) {
                const r = await post(url, body, headers);
                assert.equal(r.status, want, `${what}: status`);
                const e = types.RpcError.toObject(types.RpcError.decode(r.body));
                assert.equal(e.code, -9, `${what}: SVC_EDENIED`);
            }
            // An unknown method tells an unauthenticated caller nothing either.
            assert.equal((await post(`${billing}/rpc/Billing/NoSuchMethod`, body, {})).status, 401);
            const acct = (await b.ok('GetAccount', { user_id: user })).account;
            assert.equal(acct.balance, 10, 'nothing was credited');
            const rows = (await b.ok('Usage', { user_id: user, limit: 50 })).entries;
            assert.equal(rows.length, 1, 'no ledger row beyond the initial credit');
            // The same call, signed with the stack's secret, goes through: the check is not a wall.
            const ok = await postRaw(billing, 'Recharge', body);
            assert.equal(ok.status, 200);
            assert.equal((await b.ok('GetAccount', { user_id: user })).account.balance, 15);
            const log = fs.readFileSync(stack.services.billing[0].logFile, 'utf8');
            assert.match(log, /lvl=warn.*rpc refused from peer 127\.0\.0\.1: no signature/);
            assert.match(log, /rpc refused from peer 127\.0\.0\.1: timestamp outside the allowed window/);
            assert.match(log, /rpc refused from peer 127\.0\.0\.1: wrong signature/);
        } finally {
            b.close();
        }
    });

    it('auth\'s RPC port refuses an unsigned Authenticate; signed calls between services work', async () => {
        const r = await post(`${stack.services.auth[0].url}/rpc/Auth/Authenticate`, Buffer.alloc(0), {});
        assert.equal(r.status, 401);
        // chat -> auth (Authenticate) and chat -> billing (GetAccount), signed by common/rpc.c
        const me = await postJSON(`${stack.url}/api/chat-process`, { prompt: '/me' },
            { headers: { authorization: basicAuth(USER, PASSWORD) } });
        assert.equal(me.status, 200, me.body);
        assert.ok(!/Unauthorized|unavailable/i.test(me.body), me.body);
    });

    it('Redis answers nothing without its password, so no session can be forged', async () => {
        const u = new URL(stack.redisUrl);
        assert.ok(u.password.length >= 32, 'the stack\'s Redis has a long random password');
        const [get, set] = await redisCommands(u.hostname, Number(u.port),
            [['GET', 'x'], ['SET', 'auth:session:forged', 'alice']]);
        assert.match(get, /^-NOAUTH/);
        assert.match(set, /^-NOAUTH/);
        const wrong = await redisCommands(u.hostname, Number(u.port), [['AUTH', 'guess'], ['PING']]);
        assert.match(wrong[0], /^-(WRONGPASS|ERR)/);
        assert.equal(await redisCall(stack.redisUrl, ['PING']), 'PONG');
        // never on a command line, which every local user can read
        const cmdline = fs.readFileSync(`/proc/${stack.redis.pid}/cmdline`, 'utf8');
        assert.ok(!cmdline.includes(u.password), 'the password is not on redis-server\'s command line');
    });

    it('DATA_DIR is 0700 and the database, logs, Redis dump and nginx files are the owner\'s only', async () => {
        // something in every file: a chat (logs, SQLite, Redis AOF), an access-log line
        await postJSON(`${stack.url}/api/chat-process`, { prompt: 'hello' },
            { headers: { authorization: basicAuth(USER, PASSWORD) } });
        await request(`${stack.url}/`);
        await redisCall(stack.redisUrl, ['BGREWRITEAOF']);
        await new Promise((r) => setTimeout(r, 500));
        assert.equal(mode(stack.dir), 0o700, 'DATA_DIR');
        const all = walk(stack.dir);
        const names = all.map((p) => path.relative(stack.dir, p));
        for (const want of ['logs/auth.log', 'logs/billing.log', 'logs/chat.log', 'logs/redis.log',
            'logs/nginx-access.log', 'redis/redis.conf', 'nginx/nginx.conf', 'stack.pid'])
            assert.ok(names.includes(want), `${want} exists (have ${names.join(', ')})`);
        assert.ok(names.some((n) => /\.(db|sqlite3?)$/.test(n)), `a SQLite database (have ${names.join(', ')})`);
        assert.ok(names.some((n) => /^redis\/.*(aof|rdb)/.test(n)), `a Redis dump (have ${names.join(', ')})`);
        // nginx makes its listening Unix sockets 0666 whatever the umask (the ingress's fallback,
        // nginx/fallback.sock): the 0700 directories above it are what keep others out.
        const sockets = all.filter((p) => fs.lstatSync(p).isSocket());
        for (const p of sockets) assert.equal(mode(path.dirname(p)) & 0o077, 0, `${path.relative(stack.dir, p)}'s directory`);
        const open = all.filter((p) => (mode(p) & 0o077) !== 0 && !fs.lstatSync(p).isSymbolicLink() && !sockets.includes(p))
            .map((p) => `${path.relative(stack.dir, p)} ${mode(p).toString(8)}`);
        assert.deepEqual(open, [], 'nothing under DATA_DIR is readable by group or others');
        // and nginx still serves bodies larger than its in-memory buffer (temp files in the private dir)
        const big = await postJSON(`${stack.url}/api/chat-process`, { prompt: 'x'.repeat(64 * 1024) },
            { headers: { authorization: basicAuth(USER, PASSWORD) } });
        assert.notEqual(big.status, 500, big.body.slice(0, 200));
    });
});

describe('security: the ingress (deploy/local/nginx.conf.tmpl)', () => {
    const stack = withStack({ services: ['auth', 'billing', 'chat'] });

    it('/admin redirects to a path, never to the Host the client sent', async () => {
        const r = await request(`${stack.url}/admin`, { headers: { host: 'evil.example' } });
        assert.equal(r.status, 301);
        assert.equal(r.headers.location, '/admin/');
    });

    it('static pages and API answers carry nosniff, X-Frame-Options DENY and a CSP', async () => {
        for (const p of ['/', '/admin/', '/api/config', '/no-such-file']) {
            const r = await request(`${stack.url}${p}`, p === '/api/config' ? { method: 'POST', json: {} } : {});
            assert.equal(r.headers['x-content-type-options'], 'nosniff', p);
            assert.equal(r.headers['x-frame-options'], 'DENY', p);
            assert.match(r.headers['content-security-policy'] || '', /default-src 'self'.*frame-ancestors 'none'/, p);
            assert.ok(r.headers['x-request-id'], `${p}: the request id is still there`);
        }
    });

    it('credentials in a query string never reach the access log', async () => {
        const secret = 'sk-query-secret-0123456789';
        await request(`${stack.url}/api/config?key=${secret}`, { method: 'POST', json: {} });
        await request(`${stack.url}/accounts?Opskey=${secret}&x=1`);
        await new Promise((r) => setTimeout(r, 300));
        const log = fs.readFileSync(stack.nginx.accessLog, 'utf8');
        assert.match(log, /path="\/api\/config"/);
        assert.match(log, /path="\/accounts"/);
        assert.ok(!log.includes(secret), 'no query string in the access log');
    });
});

// The Helm chart gives auth's RPC a port of its own (RPC_ADDR), so that its NetworkPolicy lets
// the ingress controller reach the public routes and only chat and proxy reach the RPC.
describe('security: auth\'s RPC on its own port (RPC_ADDR)', () => {
    const stack = withStack({ authRpcPort: true, env: { BASIC_AUTH_USER: USER, BASIC_AUTH_PASSWORD: PASSWORD } });

    it('the RPC is only on RPC_ADDR, the public routes only on HTTP_ADDR; chat signs in through it', async () => {
        const auth = stack.services.auth[0];
        assert.ok(auth.rpcAddr && auth.rpcAddr !== auth.httpAddr, 'a port of its own');
        assert.equal(stack.authUrl, `http://${auth.rpcAddr}`, 'the callers\' AUTH_URL names it');
        // the RPC: refused unsigned on its port (it is there), unknown on the public port
        assert.equal((await post(`http://${auth.rpcAddr}/rpc/Auth/Authenticate`, Buffer.alloc(0), {})).status, 401);
        const onPublic = await post(`http://${auth.httpAddr}/rpc/Auth/Authenticate`, Buffer.alloc(0), {});
        assert.equal(onPublic.status, 404);
        // the public routes: on HTTP_ADDR (and through the ingress), not on the RPC port
        assert.equal((await request(`http://${auth.httpAddr}/api/session`, { method: 'POST', body: '{}' })).status, 200);
        assert.equal((await request(`http://${auth.rpcAddr}/api/session`, { method: 'POST', body: '{}' })).status, 404);
        assert.equal((await request(`${stack.url}/api/session`, { method: 'POST', body: '{}' })).status, 200);
        // chat -> auth (Authenticate) over the RPC port
        const me = await postJSON(`${stack.url}/api/chat-process`, { prompt: '/me' },
            { headers: { authorization: basicAuth(USER, PASSWORD) } });
        assert.equal(me.status, 200, me.body);
        assert.ok(!/Unauthorized|unavailable/i.test(me.body), me.body);
    });

    it('SIGTERM drains both listeners and exits 0', async () => {
        const auth = stack.services.auth[0];
        const exit = await auth.stop('SIGTERM');
        assert.equal(exit.code, 0, JSON.stringify(exit));
        const log = fs.readFileSync(auth.logFile, 'utf8');
        assert.match(log, /serving RPC_ADDR on port \d+/);
        assert.match(log, /drained in \d+ ms/);
    });
});

describe('security: listen addresses', () => {
    for (const svc of ['auth', 'billing', 'chat', 'proxy']) {
        it(`${svc} listens on loopback unless HTTP_ADDR / ADMIN_ADDR say otherwise`, () => {
            const r = spawnSync(path.join(defaultBinDir(), `chatweb-${svc}`), ['--describe-config'], { encoding: 'utf8' });
            assert.equal(r.status, 0, r.stderr);
            assert.match(r.stdout, /^HTTP_ADDR\s+host:port\s+default=127\.0\.0\.1:8080\s/m);
            assert.match(r.stdout, /^ADMIN_ADDR\s+host:port\s+default=127\.0\.0\.1:9090\s/m);
            assert.match(r.stdout, /^RPC_SECRET\s+secret\s+default=\(none\)/m);
        });
    }
});
