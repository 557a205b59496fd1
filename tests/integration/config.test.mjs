// Start-up configuration: a bad value in any environment variable stops the service at once with
// one line on stderr naming the variable (exit code 78, EX_CONFIG); nothing falls back silently.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { describe, it } from 'node:test';
import { defaultBinDir, freePort, tempDir } from './lib/harness.mjs';

const bin = (name) => path.join(defaultBinDir(), `chatweb-${name}`);

async function baseEnv() {
    return {
        PATH: process.env.PATH,
        HTTP_ADDR: `127.0.0.1:${await freePort()}`,
        ADMIN_ADDR: `127.0.0.1:${await freePort()}`,
        AUTH_URL: 'http://127.0.0.1:9',
        BILLING_URL: 'http://127.0.0.1:9',
        REDIS_URL: 'redis://127.0.0.1:9/0',
        DATA_DIR: tempDir('chatweb-config-'),
        RPC_SECRET: 'config-test-secret-config-test-secret',
    };
}

function run(name, env) {
    return spawnSync(bin(name), [], { env, encoding: 'utf8', timeout: 10000 });
}

describe('bad configuration stops a service with one line naming the variable', () => {
    const cases = [
        ['chat', 'CHAT_SESSION_TTL', '30m'],
        ['chat', 'OPENAI_MAX_TOKENS', '-5'],
        ['chat', 'OPENAI_TEMPERATURE', 'hot'],
        ['chat', 'OPENAI_BASE_URL', 'ftp://example.com/v1'],
        ['chat', 'REDIS_URL', 'localhost:6379'],
        ['chat', 'AUTH_URL', 'auth:8080'],
        ['chat', 'CHAT_MIN_RESPONSE_TOKENS', '999999'],
        ['chat', 'HTTP_ADDR', 'nonsense'],
        ['chat', 'WORKERS', '1000'],
        ['chat', 'LOG_LEVEL', 'loud'],
        ['auth', 'HTTP_MAX_BODY', '10'],
        ['auth', 'ADMIN_ADDR', '127.0.0.1:99999'],
        ['auth', 'BASIC_AUTH_USER', 'a,b'],
        ['billing', 'DRAIN_TIMEOUT', 'soon'],
        ['proxy', 'HTTP_IDLE_TIMEOUT', '0'],
        ['auth', 'RPC_SECRET', 'shorter-than-32-characters'],
        ['chat', 'RPC_SECRET', 'x'.repeat(31)],
        ['billing', 'RPC_INSECURE', 'maybe'],
        ['auth', 'TRUSTED_PROXIES', '127.0.0.0/8,10.0.0/8'],
        ['proxy', 'TRUSTED_PROXIES', '10.1.2.3/8'],
        ['auth', 'RPC_ADDR', 'nonsense'],
        ['billing', 'BILLING_EVENTS_STREAM', 'events{}:billing'],
        ['billing', 'BILLING_EVENTS_STREAM', 'events}billing'],
    ];
    for (const [svc, name, value] of cases) {
        it(`${svc}: ${name}=${value}`, async () => {
            const env = { ...(await baseEnv()), [name]: value };
            if (name === 'BASIC_AUTH_USER') env.BASIC_AUTH_PASSWORD = 'only-one-secret';
            const r = run(svc, env);
            assert.equal(r.status, 78, `exit code (stderr: ${r.stderr})`);
            const lines = r.stderr.trim().split('\n');
            assert.equal(lines.length, 1, `one line, got: ${r.stderr}`);
            assert.match(lines[0], new RegExp(`^${svc}: .*${name}`));
            assert.ok(!lines[0].includes('only-one-secret'), 'no secret in the message');
        });
    }

    for (const svc of ['auth', 'billing', 'chat', 'proxy']) {
        it(`${svc}: no RPC_SECRET and no RPC_INSECURE=true refuses to start`, async () => {
            const env = await baseEnv();
            delete env.RPC_SECRET;
            const r = run(svc, env);
            assert.equal(r.status, 78, `exit code (stderr: ${r.stderr})`);
            assert.match(r.stderr.trim(), new RegExp(`^${svc}: RPC_SECRET: not set; .*RPC_INSECURE=true`));
            assert.equal(r.stderr.trim().split('\n').length, 1);
        });
    }

    it('RPC_INSECURE=true runs without RPC_SECRET, and says so at warning', async () => {
        const env = { ...(await baseEnv()), RPC_INSECURE: 'true' };
        delete env.RPC_SECRET;
        const r = spawnSync(bin('proxy'), [], { env, encoding: 'utf8', timeout: 3000, killSignal: 'SIGTERM' });
        assert.notEqual(r.status, 78, r.stderr);
        assert.match(r.stderr, /lvl=warn .*RPC_INSECURE=true: internal RPC is not authenticated/);
    });

    it('a port already in use is reported, never shared', async () => {
        const env = await baseEnv();
        const holder = run('auth', { ...env, HTTP_ADDR: 'bad' }); // sanity: fails fast
        assert.equal(holder.status, 78);
        const net = await import('node:net');
        const srv = net.createServer();
        const port = Number(env.HTTP_ADDR.split(':')[1]);
        await new Promise((r) => srv.listen(port, '127.0.0.1', r));
        try {
            const r = run('auth', env);
            assert.equal(r.status, 78);
            assert.match(r.stderr, /HTTP_ADDR: 127\.0\.0\.1:\d+ is already in use/);
        } finally {
            srv.close();
        }
    });

    it('--describe-config lists every option', () => {
        const r = spawnSync(bin('chat'), ['--describe-config'], { encoding: 'utf8' });
        assert.equal(r.status, 0);
        for (const v of ['OPENAI_KEY', 'OPENAI_BASE_URL', 'CHAT_SESSION_TTL', 'REDIS_URL', 'AUTH_URL', 'HTTP_ADDR', 'ADMIN_ADDR'])
            assert.match(r.stdout, new RegExp(`^${v} `, 'm'));
    });
});
