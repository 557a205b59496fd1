// The machinery that starts real servers (deploy/local/stack.mjs), tested with real redis-server,
// mariadbd and nginx, Node stand-ins for the chatweb services (lib/stub-service.mjs) and, when it
// is built, the real build/bin/chatweb-fake-upstream.
//
//   node --test tests/integration/stack.test.mjs
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { fileURLToPath, pathToFileURL } from 'node:url';
import {
    ROOT, StackError, basicAuth, defaultBinDir, freePort, hasBinary, parseSSE, pidAlive, postJSON, request,
    startMariadb, startNginx, startRedis, startStack, streamBody, tempDir, withServers, withStack,
} from './lib/harness.mjs';
import * as stackLib from '../../deploy/local/stack.mjs';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const STACK_URL = pathToFileURL(path.join(ROOT, 'deploy/local/stack.mjs')).href;

const dirs = [];
function scratch(prefix) {
    const d = tempDir(prefix);
    dirs.push(d);
    return d;
}
after(() => {
    if (process.env.KEEP_TEST_DIRS === '1') return;
    for (const d of dirs) fs.rmSync(d, { recursive: true, force: true });
});

/** A bin directory whose chatweb-* are the Node stand-ins of lib/ (created synchronously). */
function standInBinDir(dir = scratch('chatweb-stub-bin-')) {
    fs.mkdirSync(dir, { recursive: true });
    const sh = (script, arg = '') => `#!/bin/sh\nexec ${process.execPath} ${path.join(HERE, 'lib', script)} ${arg} "$@"\n`;
    for (const s of ['auth', 'billing', 'chat', 'proxy'])
        fs.writeFileSync(path.join(dir, `chatweb-${s}`), sh('stub-service.mjs', s), { mode: 0o755 });
    fs.writeFileSync(path.join(dir, 'chatweb-fake-upstream'), sh('stub-fake-upstream.mjs'), { mode: 0o755 });
    return dir;
}

/** pids whose parent is `pid` (nginx workers of a master). */
function childPids(pid) {
    const out = [];
    for (const e of fs.readdirSync('/proc')) {
        if (!/^\d+$/.test(e)) continue;
        try {
            const stat = fs.readFileSync(`/proc/${e}/stat`, 'utf8');
            const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
            if (ppid === pid) out.push(Number(e));
        } catch { /* gone */ }
    }
    return out;
}

async function waitGone(pids, ms = 5000) {
    const deadline = Date.now() + ms;
    while (pids.some(pidAlive) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 25));
    return pids.filter(pidAlive);
}

/** An HTTP server on a free port answering JSON {upstream, method, url, headers, bodyBytes}. */
async function echoServer(name) {
    const server = http.createServer((req, res) => {
        let n = 0;
        req.on('data', (c) => { n += c.length; });
        req.on('end', () => {
            if (req.url.startsWith('/v1/sse')) {
                res.writeHead(200, { 'content-type': 'text/event-stream' });
                let i = 0;
                const t = setInterval(() => {
                    res.write(`data: ${i}\n\n`);
                    if (++i === 5) { clearInterval(t); res.end(); }
                }, 100);
                return;
            }
            res.writeHead(200, { 'content-type': 'application/json' });
            res.end(JSON.stringify({ upstream: name, method: req.method, url: req.url, headers: req.headers, bodyBytes: n }));
        });
    });
    const port = await freePort();
    await new Promise((r) => server.listen(port, '127.0.0.1', r));
    return { name, server, addr: `127.0.0.1:${port}`, close: () => new Promise((r) => { server.closeAllConnections?.(); server.close(r); }) };
}

function mysqlQuery(m, sql) {
    return spawnSync('mariadb', ['--no-defaults', '-h127.0.0.1', `-P${m.port}`, `-u${m.user}`, `-p${m.password}`,
        m.database, '--batch', '--skip-column-names', '-e', sql], { encoding: 'utf8' });
}

/** Run a node ES module snippet in a child process; resolves {code, signal, stdout, stderr, child}. */
function nodeChild(code, onLine) {
    const child = spawn(process.execPath, ['--input-type=module', '-e', code], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => {
        stdout += d;
        if (onLine) for (const l of String(d).split('\n')) if (l.trim()) onLine(l, child);
    });
    child.stderr.on('data', (d) => { stderr += d; });
    return new Promise((resolve) => child.on('exit', (c, s) => resolve({ code: c, signal: s, stdout, stderr })));
}

describe('servers on free ports', () => {
    it('redis, mariadb and nginx start on free ports and stop leaving no process', { timeout: 120000 }, async () => {
        const dir = scratch('chatweb-stack-test-');
        const redis = await startRedis({ dir: path.join(dir, 'redis') });
        const maria = await startMariadb({ dir: path.join(dir, 'mariadb'), fast: true });
        const nginx = await startNginx({ dir: path.join(dir, 'nginx') });
        const ports = [redis.port, maria.port, nginx.port];
        assert.equal(new Set(ports).size, 3, `distinct ports: ${ports}`);

        assert.equal(await stackLib.pingRedis(redis.url), true);
        assert.match(redis.url, /^redis:\/\/default:[0-9a-f]{48}@127\.0\.0\.1:\d+\/0$/);

        assert.match(maria.dsn, /^mysql:\/\/chatweb:[0-9a-f]+@127\.0\.0\.1:\d+\/chatweb$/);
        const q = mysqlQuery(maria, 'SELECT @@character_set_server, DATABASE()');
        assert.equal(q.status, 0, q.stderr);
        assert.equal(q.stdout.trim(), 'utf8mb4\tchatweb');
        // the user may create scratch databases named chatweb_*
        const c = mysqlQuery(maria, 'CREATE DATABASE chatweb_scratch; DROP DATABASE chatweb_scratch');
        assert.equal(c.status, 0, c.stderr);

        const page = await request(`${nginx.url}/`);
        assert.equal(page.status, 200);
        const workers = childPids(nginx.pid);
        assert.equal(workers.length, 2, 'worker_processes 2');

        const pids = [redis.pid, maria.pid, nginx.pid, ...workers];
        await nginx.stop();
        await maria.stop();
        await redis.stop();
        assert.deepEqual(await waitGone(pids, 2000), [], 'no process left');
        assert.deepEqual(stackLib.running(), []);
    });

    it('two nginx instances run side by side', async () => {
        const a = await startNginx({ dir: scratch('chatweb-nginx-a-') });
        const b = await startNginx({ dir: scratch('chatweb-nginx-b-') });
        try {
            assert.notEqual(a.port, b.port);
            assert.equal((await request(`${a.url}/`)).status, 200);
            assert.equal((await request(`${b.url}/`)).status, 200);
        } finally {
            await a.stop();
            await b.stop();
        }
        assert.deepEqual(await waitGone([a.pid, b.pid]), []);
    });

    it('an nginx master that is killed takes its workers along', async () => {
        const n = await startNginx({ dir: scratch('chatweb-nginx-crash-') });
        const workers = childPids(n.pid);
        assert.equal(workers.length, 2);
        process.kill(n.pid, 'SIGKILL');
        assert.equal((await n.exited).signal, 'SIGKILL');
        assert.deepEqual(await waitGone(workers, 2000), []);
    });

    it('a taken port gives a clear error naming the component and the port', async () => {
        const blocker = net.createServer();
        const port = await freePort();
        await new Promise((r) => blocker.listen(port, '127.0.0.1', r));
        try {
            await assert.rejects(startNginx({ dir: scratch('chatweb-nginx-taken-'), listenPort: port }), (err) => {
                assert.ok(err instanceof StackError);
                assert.equal(err.message, `nginx: 127.0.0.1:${port} is already in use`);
                return true;
            });
            await assert.rejects(startRedis({ dir: scratch('chatweb-redis-taken-'), port }),
                { message: `redis: 127.0.0.1:${port} is already in use` });
        } finally {
            blocker.close();
        }
        assert.deepEqual(stackLib.running(), []);
    });
});

describe('nginx ingress routes', () => {
    const ups = {};
    let nginx;
    before(async () => {
        for (const n of ['auth', 'chat', 'proxy']) ups[n] = await echoServer(n);
        nginx = await startNginx({
            dir: scratch('chatweb-ingress-'),
            upstreams: { auth: [ups.auth.addr], chat: [ups.chat.addr], proxy: [ups.proxy.addr] },
        });
    });
    after(async () => {
        await nginx?.stop();
        for (const u of Object.values(ups)) await u.close();
    });

    const routes = [
        ['POST', '/api/session', 'auth'], ['POST', '/api/verify', 'auth'], ['POST', '/api/login', 'auth'],
        ['POST', '/api/logout', 'auth'], ['GET', '/api/me', 'auth'], ['POST', '/accounts', 'auth'],
        ['GET', '/accounts/42', 'auth'], ['POST', '/admin/accounts', 'auth'],
        ['POST', '/api/config', 'chat'], ['POST', '/api/chat-process', 'chat'], ['GET', '/api/anything-else', 'chat'],
        ['POST', '/api/sessionx', 'chat'],
        ['GET', '/v1/models', 'proxy'], ['POST', '/v1/chat/completions', 'proxy'],
    ];
    for (const [method, p, want] of routes) {
        it(`${method} ${p} → ${want}`, async () => {
            const r = await request(`${nginx.url}${p}`, { method, json: method === 'POST' ? {} : undefined });
            assert.equal(r.status, 200, r.body);
            const got = r.json();
            assert.equal(got.upstream, want);
            assert.equal(got.url, p, 'path passed unchanged');
        });
    }

    it('/rpc/ is never exposed', async () => {
        for (const p of ['/rpc/', '/rpc/Auth/Whoami', '/rpc']) {
            const r = await request(`${nginx.url}${p}`, { method: 'POST', body: 'x' });
            assert.equal(r.status, 404, p);
            assert.doesNotMatch(r.body, /upstream/);
        }
    });

    it('/ and /admin/ serve the static root (the API-only placeholder)', async () => {
        const root = await request(`${nginx.url}/`);
        assert.equal(root.status, 200);
        assert.match(root.headers['content-type'], /text\/html/);
        assert.match(root.body, /API-only build/);
        const admin = await request(`${nginx.url}/admin/`);
        assert.equal(admin.status, 200);
        assert.match(admin.body, /API-only build/);
        assert.equal((await request(`${nginx.url}/no-such-file.js`)).status, 404);
    });

    it('passes a request id and the client address, and returns the id', async () => {
        const r = await request(`${nginx.url}/api/config`, { method: 'POST', json: {}, headers: { 'x-forwarded-for': '203.0.113.9' } });
        const h = r.json().headers;
        assert.match(h['x-request-id'], /^[0-9a-f]{32}$/);
        assert.equal(r.headers['x-request-id'], h['x-request-id']);
        assert.equal(h['x-real-ip'], '127.0.0.1');
        assert.equal(h['x-forwarded-for'], '203.0.113.9, 127.0.0.1');
        assert.equal(h.connection, undefined, 'Connection header cleared for upstream keep-alive');
    });

    it('accepts bodies up to 8 MB and refuses larger ones', async () => {
        const big = await request(`${nginx.url}/v1/files`, { method: 'POST', body: Buffer.alloc(7 * 1024 * 1024, 97) });
        assert.equal(big.status, 200);
        assert.equal(big.json().bodyBytes, 7 * 1024 * 1024);
        const tooBig = await request(`${nginx.url}/v1/files`, { method: 'POST', body: Buffer.alloc(9 * 1024 * 1024, 97) });
        assert.equal(tooBig.status, 413);
    });

    it('nginx logs no alert at start (e.g. no setrlimit failure)', () => {
        const log = fs.readFileSync(nginx.errorLog, 'utf8');
        assert.doesNotMatch(log, /\[(alert|emerg|crit)\]/);
    });

    it('streams SSE without buffering', async () => {
        const r = await streamBody(`${nginx.url}/v1/sse`);
        assert.equal(r.status, 200);
        assert.equal(parseSSE(r.text).length, 5);
        assert.ok(r.chunks.length >= 4, `chunks arrived one by one (${r.chunks.length})`);
        assert.ok(r.lastChunkMs - r.firstChunkMs >= 300, `spread over time: ${r.chunks.map((c) => Math.round(c.ms))}`);
    });
});

describe('the real fake upstream behind nginx', { skip: !hasBinary('chatweb-fake-upstream') && 'build/bin/chatweb-fake-upstream is not built' }, () => {
    let fake;
    let nginx;
    before(async () => {
        const dir = scratch('chatweb-fake-');
        fake = await stackLib.startFakeUpstream({ dir, env: { FAKE_TOKENS_PER_SEC: '20', FAKE_REPLY_TOKENS: '10', FAKE_TTFT_MS: '50' } });
        nginx = await startNginx({ dir: path.join(dir, 'nginx'), upstreams: { proxy: [fake.addr] } });
    });
    after(async () => {
        await nginx?.stop();
        await fake?.stop();
    });

    it('streams a chat completion through nginx chunk by chunk', async () => {
        const r = await streamBody(`${nginx.url}/v1/chat/completions`, {
            method: 'POST', headers: { authorization: 'Bearer sk-test' },
            json: { model: 'gpt-3.5-turbo', stream: true, messages: [{ role: 'user', content: 'hi' }] },
        });
        assert.equal(r.status, 200, r.text);
        const events = parseSSE(r.text);
        assert.ok(events.length >= 10, `events: ${events.length}`);
        assert.ok(r.chunks.length >= 5, `chunks: ${r.chunks.length}`);
        assert.ok(r.lastChunkMs - r.firstChunkMs >= 250, `spread: ${r.chunks.map((c) => Math.round(c.ms))}`);
    });
});

describe('nothing is left behind', () => {
    const childCode = (after) => `
        import * as s from ${JSON.stringify(STACK_URL)};
        import fs from 'node:fs';
        const dir = fs.mkdtempSync('/tmp/chatweb-leak-');
        const r = await s.startRedis({ dir: dir + '/redis' });
        const n = await s.startNginx({ dir: dir + '/nginx' });
        await new Promise((res) => setTimeout(res, 200));
        console.log(JSON.stringify({ dir, pids: [r.pid, n.pid] }));
        ${after}`;

    async function runChild(after, onPids) {
        let info = null;
        const res = await nodeChild(childCode(after), (line, child) => {
            if (line.startsWith('{')) {
                info = JSON.parse(line);
                info.workers = childPids(info.pids[1]);
                onPids?.(child, info);
            }
        });
        assert.ok(info, `child printed its pids; stderr:\n${res.stderr}`);
        dirs.push(info.dir);
        return { ...res, info };
    }

    it('an uncaught error (a failing test) stops every server', async () => {
        const { code, stderr, info } = await runChild(`throw new Error('simulated test failure');`);
        assert.equal(code, 1);
        assert.match(stderr, /simulated test failure/);
        assert.deepEqual(await waitGone([...info.pids, ...info.workers], 1000), []);
    });

    it('an unhandled rejection stops every server', async () => {
        const { code, info } = await runChild(`Promise.reject(new Error('simulated rejection'));`);
        assert.equal(code, 1);
        assert.deepEqual(await waitGone([...info.pids, ...info.workers], 1000), []);
    });

    it('a script that forgets to stop its servers still exits and stops them', async () => {
        const { code, info } = await runChild('');
        assert.equal(code, 0);
        assert.deepEqual(await waitGone([...info.pids, ...info.workers], 1000), []);
    });

    it('SIGINT and SIGTERM stop every server in order, then exit 128+signal', async () => {
        for (const [sig, want] of [['SIGINT', 130], ['SIGTERM', 143]]) {
            const { code, info } = await runChild('setInterval(() => {}, 1000);', (child) => child.kill(sig));
            assert.equal(code, want, sig);
            assert.deepEqual(await waitGone([...info.pids, ...info.workers], 1000), [], sig);
        }
    });

    it('SIGKILL of the parent stops every server (parent-death signal)', async () => {
        const { signal, info } = await runChild('setInterval(() => {}, 1000);', (child) => child.kill('SIGKILL'));
        assert.equal(signal, 'SIGKILL');
        assert.deepEqual(await waitGone([...info.pids, ...info.workers], 5000), []);
    });
});

describe('startStack with stand-in services', () => {
    let binDir;
    before(() => { binDir = standInBinDir(); });

    it('starts redis, the fake upstream, every service and nginx, wired together', { timeout: 60000 }, async () => {
        const dir = scratch('chatweb-stack-');
        const unexpected = [];
        const off = stackLib.onUnexpectedExit((h) => unexpected.push(h.label));
        const s = await startStack({
            dir, binDir, replicas: { auth: 2, chat: 2 },
            serviceEnv: { proxy: { STUB_EXIT_AFTER_MS: '1500' } },
        });
        try {
            assert.deepEqual(s.services.auth.map((h) => h.label), ['auth-1', 'auth-2']);
            assert.deepEqual(s.services.billing.map((h) => h.label), ['billing']);
            assert.deepEqual(s.services.chat.map((h) => h.label), ['chat-1', 'chat-2']);
            assert.ok(s.rpc, 'an RPC balancer for the two auth replicas');
            assert.equal(s.authUrl, s.rpc.urls.auth);
            assert.equal(s.billingUrl, `http://${s.services.billing[0].httpAddr}`);
            assert.ok(fs.existsSync(path.join(dir, 'stack.pid')));

            const cfg = (await postJSON(`${s.url}/api/config`, {})).json();
            assert.equal(cfg.service, 'chat');
            assert.equal(cfg.env.AUTH_URL, s.authUrl);
            assert.equal(cfg.env.BILLING_URL, s.billingUrl);
            assert.equal(cfg.env.REDIS_URL, s.redisUrl);
            assert.equal(cfg.env.OPENAI_BASE_URL, `${s.fakeUpstream.url}/v1`);
            assert.equal(cfg.env.DATA_DIR, dir);
            assert.equal(cfg.env.DB, undefined, 'no DB: SQLite under DATA_DIR');
            assert.match(cfg.headers['x-request-id'], /^[0-9a-f]{32}$/);

            // both chat replicas get traffic; the balancer reaches both auth replicas
            const chatPids = new Set();
            const authPids = new Set();
            for (let i = 0; i < 6; i++) {
                chatPids.add((await postJSON(`${s.url}/api/chat-process`, {})).json().pid);
                authPids.add((await request(`${s.authUrl}/rpc/Auth/Check`, { method: 'POST', body: 'x' })).json().pid);
            }
            assert.equal(chatPids.size, 2);
            assert.equal(authPids.size, 2);
            assert.equal((await postJSON(`${s.url}/api/session`, {})).json().service, 'auth');

            // the fake upstream answers
            const fake = await postJSON(`${s.fakeUpstream.baseUrl}/chat/completions`, { messages: [] });
            assert.equal(fake.status, 200);

            // the proxy stand-in crashes after 1.5 s: reported as an unexpected exit
            await s.services.proxy[0].exited;
            await new Promise((r) => setTimeout(r, 50));
            assert.deepEqual(unexpected, ['proxy']);
        } finally {
            off();
            await s.stop();
        }
        const pids = s.handles.map((h) => h.pid);
        assert.deepEqual(await waitGone(pids, 1000), []);
        assert.ok(!fs.existsSync(path.join(dir, 'stack.pid')), 'lock released');
        assert.deepEqual(unexpected, ['proxy'], 'stop() is not reported as unexpected');
    });

    it('a service that fails at start: error with its log, everything started before is stopped', { timeout: 30000 }, async () => {
        const dir = scratch('chatweb-stack-fail-');
        const before = stackLib.running().length;
        await assert.rejects(startStack({ dir, binDir, serviceEnv: { billing: { STUB_FAIL_AT_START: 'DB: not a valid DSN' } } }),
            (err) => {
                assert.match(err.message, /^billing: exited with code 78 before it was ready; last lines of .*billing\.log:\n {4}billing: DB: not a valid DSN/);
                return true;
            });
        assert.equal(stackLib.running().length, before);
        assert.ok(!fs.existsSync(path.join(dir, 'stack.pid')));
    });

    it('a service that never becomes ready times out with a clear error', { timeout: 30000 }, async () => {
        const dir = scratch('chatweb-svc-slow-');
        await assert.rejects(stackLib.startService('auth', { dir, binDir, env: { STUB_READY_AFTER_MS: '60000' }, readyTimeoutMs: 500 }),
            /^StackError: auth: not ready after 500 ms \(GET http:\/\/127\.0\.0\.1:\d+\/readyz: answered 503\); last lines of .*auth\.log:\n.*event=listening/);
        assert.deepEqual(stackLib.running(), []);
    });

    it('a missing binary is named before anything starts', async () => {
        const dir = scratch('chatweb-stack-nobin-');
        await assert.rejects(startStack({ dir, binDir: path.join(dir, 'nowhere') }),
            { message: `auth: ${path.join(dir, 'nowhere', 'chatweb-auth')} not found: build first (make build)` });
        assert.deepEqual(stackLib.running(), []);
    });

    it('a taken ingress port fails fast', async () => {
        const blocker = net.createServer();
        const port = await freePort();
        await new Promise((r) => blocker.listen(port, '127.0.0.1', r));
        try {
            await assert.rejects(startStack({ dir: scratch('chatweb-stack-port-'), binDir, listenPort: port }),
                { message: `nginx: 127.0.0.1:${port} is already in use` });
        } finally {
            blocker.close();
        }
        assert.deepEqual(stackLib.running(), []);
    });

    it('a second stack on the same DATA_DIR is refused', { timeout: 60000 }, async () => {
        const dir = scratch('chatweb-stack-lock-');
        const s = await startStack({ dir, binDir, services: ['auth'] });
        try {
            const other = await nodeChild(`
                import * as s from ${JSON.stringify(STACK_URL)};
                try { await s.startStack({ dir: ${JSON.stringify(dir)}, binDir: ${JSON.stringify(binDir)} }); }
                catch (e) { console.log(e.message); process.exit(2); }`);
            assert.equal(other.code, 2, other.stderr);
            assert.match(other.stdout, new RegExp(`^stack: DATA_DIR ${dir} is in use by another stack \\(pid ${process.pid}`));
        } finally {
            await s.stop();
        }
    });
});

describe('scripts/with-servers', () => {
    const script = path.join(ROOT, 'scripts/with-servers');

    it('exports REDIS_URL and TEST_MYSQL_DSN, returns the command status, leaves nothing', { timeout: 60000 }, async () => {
        const r = spawnSync(script, ['--redis', '--mariadb', '--', 'sh', '-c',
            'redis-cli -u "$REDIS_URL" ping && echo "dsn=$TEST_MYSQL_DSN" && echo "dir=$WITH_SERVERS_DIR" && ' +
            'echo "require=$TEST_REQUIRE_MYSQL" && p=${REDIS_URL##*:} && redis-cli -h 127.0.0.1 -p "${p%%/*}" ping; exit 3'],
        { encoding: 'utf8' });
        assert.equal(r.status, 3, r.stderr);
        assert.match(r.stdout, /^PONG$/m);
        assert.match(r.stdout, /^NOAUTH/m, 'the Redis has a password: nothing without it');
        assert.match(r.stdout, /^require=1$/m, 'MariaDB was asked for: unit tests may not skip it');
        assert.match(r.stdout, /^dsn=mysql:\/\/chatweb:[0-9a-f]+@127\.0\.0\.1:\d+\/chatweb$/m);
        const dir = /^dir=(.*)$/m.exec(r.stdout)[1];
        assert.ok(!fs.existsSync(dir), 'temporary directory removed');
    });

    it('a unit test with a MariaDB half is skipped (77) without a DSN, and fails when MariaDB was asked for', { timeout: 120000 }, () => {
        const bin = path.join(defaultBinDir(), 'test_db');
        const env = { PATH: process.env.PATH, HOME: process.env.HOME };
        const skipped = spawnSync(bin, [], { env, encoding: 'utf8', timeout: 100000 });
        assert.equal(skipped.status, 77, skipped.stderr.slice(-500));
        const required = spawnSync(bin, [], { env: { ...env, TEST_REQUIRE_MYSQL: '1' }, encoding: 'utf8', timeout: 100000 });
        assert.equal(required.status, 1, required.stderr.slice(-500));
        assert.match(required.stderr, /TEST_MYSQL_DSN unset but TEST_REQUIRE_MYSQL=1/);
    });

    it('a command that cannot be started gives 127', () => {
        const r = spawnSync(script, ['--redis', '--', 'no-such-command-here'], { encoding: 'utf8' });
        assert.equal(r.status, 127);
        assert.match(r.stderr, /with-servers: cannot run no-such-command-here/);
    });

    it('without a command it prints the usage', () => {
        const r = spawnSync(script, ['--redis'], { encoding: 'utf8' });
        assert.equal(r.status, 2);
        assert.match(r.stderr, /usage: scripts\/with-servers/);
    });
});

describe('deploy/local/run.mjs (make run) with stand-in services', () => {
    it('starts, says replies are fake, serves, and stops everything on SIGINT with exit 0', { timeout: 60000 }, async () => {
        const buildDir = scratch('chatweb-run-build-');
        standInBinDir(path.join(buildDir, 'bin'));
        const dataDir = scratch('chatweb-run-data-');
        const port = await freePort();
        const env = { PATH: process.env.PATH, HOME: process.env.HOME, BUILD_DIR: buildDir, DATA_DIR: dataDir,
            SERVER_HOST: '127.0.0.1', SERVER_PORT: String(port), REPLICAS: 'chat=2',
            // A configured key: the first-run setup registers a user through the real auth
            // service, which the stand-ins are not (run.test.mjs covers it).
            OPS_KEY: 'stand-in-ops-key-0123456789abcdef' };
        const child = spawn(process.execPath, [path.join(ROOT, 'deploy/local/run.mjs')], { env, stdio: ['ignore', 'pipe', 'pipe'] });
        let out = '';
        child.stdout.on('data', (d) => { out += d; });
        child.stderr.on('data', (d) => { out += d; });
        const exited = new Promise((r) => child.on('exit', (code, signal) => r({ code, signal })));
        const deadline = Date.now() + 20000;
        while (!/Press Ctrl-C to stop/.test(out) && Date.now() < deadline && child.exitCode === null)
            await new Promise((r) => setTimeout(r, 50));
        assert.match(out, /Press Ctrl-C to stop/, out);
        assert.match(out, /REPLIES ARE FAKE/);
        assert.match(out, new RegExp(`chatweb is up in [0-9.]+ s: http://127\\.0\\.0\\.1:${port}/`));

        const info = JSON.parse(fs.readFileSync(path.join(dataDir, 'stack.json'), 'utf8'));
        assert.equal(info.services.chat.length, 2);
        assert.equal((await postJSON(`http://127.0.0.1:${port}/api/config`, {})).json().service, 'chat');
        assert.ok(fs.existsSync(path.join(dataDir, 'logs', 'chat-2.log')));
        assert.ok(fs.existsSync(path.join(dataDir, 'redis')));

        const pids = info.processes.map((p) => p.pid);
        assert.deepEqual(info.processes.map((p) => p.name),
            ['redis', 'fake-upstream', 'auth', 'billing', 'chat-1', 'chat-2', 'proxy', 'nginx']);
        child.kill('SIGINT');
        const { code } = await exited;
        assert.equal(code, 0, out);
        assert.deepEqual(await waitGone(pids, 1000), []);
        assert.ok(!fs.existsSync(path.join(dataDir, 'stack.pid')));
        assert.ok(!fs.existsSync(path.join(dataDir, 'stack.json')));
    });

    it('refuses a bad SERVER_PORT with a message naming it', () => {
        const r = spawnSync(process.execPath, [path.join(ROOT, 'deploy/local/run.mjs')],
            { env: { PATH: process.env.PATH, SERVER_PORT: 'http', DATA_DIR: scratch('chatweb-run-bad-') }, encoding: 'utf8' });
        assert.equal(r.status, 1);
        assert.equal(r.stderr, 'run: SERVER_PORT="http" is not a port number (1-65535)\n');
    });
});

describe('tests/integration/lib/harness.mjs', () => {
    const stack = withStack({ binDir: standInBinDir(), services: ['auth', 'chat'], replicas: { chat: 2 } });
    const servers = withServers({ redis: true });

    it('withStack starts a stack before the tests', async () => {
        assert.match(stack.url, /^http:\/\/127\.0\.0\.1:\d+$/);
        assert.equal(stack.services.chat.length, 2);
        assert.equal((await postJSON(`${stack.url}/api/session`, {})).json().service, 'auth');
        const r = await streamBody(`${stack.services.chat[0].url}/sse`);
        assert.equal(parseSSE(r.text).length, 6);
    });

    it('withServers starts only the servers asked for', async () => {
        assert.equal(await stackLib.pingRedis(servers.redisUrl), true);
        assert.equal(servers.mysqlDsn, undefined);
    });

    it('basicAuth builds the header', () => {
        assert.equal(basicAuth('ops', 'p@ss:word'), `Basic ${Buffer.from('ops:p@ss:word').toString('base64')}`);
    });
});

describe('defaults', () => {
    it('binaries are looked up in $BUILD_DIR/bin', () => {
        assert.equal(defaultBinDir(), path.resolve(ROOT, process.env.BUILD_DIR || 'build', 'bin'));
    });
});
