// Abuse of the credentials the auth service checks (issue 10): guessing the operator's secret
// (Opskey, Basic admin:<OPS_KEY>) and other people's passwords. Guesses are sent to the auth
// replicas directly with X-Real-IP (what the ingress sets), so each case has its own source
// address and the throttles of one case do not touch the others. No assertion depends on timing.
import assert from 'node:assert/strict';
import path from 'node:path';
import { spawnSync } from 'node:child_process';
import { describe, it } from 'node:test';
import { basicAuth, defaultBinDir, freePort, tempDir, withStack } from './lib/harness.mjs';
import { ENV, OPS_KEY, authUrl, logsText, postJSON } from './lib/auth-helpers.mjs';

describe('OPS_KEY', () => {
    it('must have at least 24 characters: a shorter one stops auth with one line naming it (exit 78)', async () => {
        const env = {
            PATH: process.env.PATH, HTTP_ADDR: `127.0.0.1:${await freePort()}`, ADMIN_ADDR: `127.0.0.1:${await freePort()}`,
            DATA_DIR: tempDir('chatweb-opskey-'), OPS_KEY: 'x'.repeat(23),
        };
        const r = spawnSync(path.join(defaultBinDir(), 'chatweb-auth'), [], { env, encoding: 'utf8', timeout: 10000 });
        assert.equal(r.status, 78, `exit code (stderr: ${r.stderr})`);
        const lines = r.stderr.trim().split('\n');
        assert.equal(lines.length, 1, r.stderr);
        assert.match(lines[0], /^auth: .*OPS_KEY.*24/);
        assert.ok(!lines[0].includes('x'.repeat(23)), 'the key itself is not printed');
        assert.ok(OPS_KEY.length >= 24, 'the tests use a key the service accepts');
    });
});

describe('operator secrets are throttled per source address', () => {
    const stack = withStack({ replicas: { auth: 2 }, env: ENV });
    const opsFrom = (i, ip, key) => postJSON(`${authUrl(stack, i)}/accounts`, { action: 'list' },
        { headers: { 'X-Real-IP': ip, ...(key === undefined ? {} : { Opskey: key }) } });
    const adminFrom = (i, ip, user, pw) => postJSON(`${authUrl(stack, i)}/admin/accounts`, { action: 'list' },
        { headers: { 'X-Real-IP': ip, authorization: basicAuth(user, pw) } });

    it('100 wrong Opskey values at once: at most AUTH_OPS_THROTTLE (20) are checked, on both replicas together', async () => {
        const ip = '10.66.0.1';
        const rs = await Promise.all(Array.from({ length: 100 }, (_, i) => opsFrom(i % 2, ip, `wrong-key-${i}`)));
        const checked = rs.filter((r) => r.status === 401).length;
        const throttled = rs.filter((r) => r.status === 429);
        assert.ok(checked <= 20, `${checked} guesses were checked`);
        assert.ok(checked >= 1);
        assert.equal(checked + throttled.length, 100, rs.map((r) => r.status).join(','));
        for (const r of throttled) {
            assert.match(r.headers['retry-after'], /^[1-9][0-9]*$/);
            const j = r.json();
            assert.equal(j.status, 'Fail');
            assert.equal(j.data, null);
            assert.match(j.message, /too many/i);
            assert.match(j.message, new RegExp(`${r.headers['retry-after']} s`));
        }
        // The right key from that address waits too (otherwise a guess that answers 200 instead
        // of 429 would still tell the attacker he found it) ...
        assert.equal((await opsFrom(0, ip, OPS_KEY)).status, 429);
        assert.equal((await opsFrom(1, ip, OPS_KEY)).status, 429);
        // ... while the operator elsewhere is not slowed down.
        const ok = await opsFrom(1, '10.66.0.2', OPS_KEY);
        assert.equal(ok.status, 200, ok.body);
        assert.equal(ok.json().message, 'success');
    });

    it('Basic guesses on /admin/accounts count the same way; successes do not count', async () => {
        const ip = '10.66.0.3';
        for (let i = 0; i < 30; i++) assert.equal((await adminFrom(0, ip, 'admin', OPS_KEY)).status, 200);
        const rs = [];
        for (let i = 0; i < 40; i++) rs.push(await adminFrom(i % 2, ip, 'admin', `guess-${i}`));
        const checked = rs.filter((r) => r.status === 401).length;
        assert.equal(checked, 20, rs.map((r) => r.status).join(','));
        assert.ok(rs.slice(20).every((r) => r.status === 429 && /^[1-9][0-9]*$/.test(r.headers['retry-after'])));
        assert.equal((await adminFrom(1, ip, 'admin', OPS_KEY)).status, 429);
    });

    it('failures are logged at warning with the source address, never with the key', async () => {
        const logs = logsText(stack);
        assert.match(logs, /lvl=warn[^\n]*action="?ops"?[^\n]*wrong Opskey[^\n]*10\.66\.0\.1/);
        assert.match(logs, /lvl=warn[^\n]*refused admin credentials[^\n]*10\.66\.0\.3/);
        assert.ok(!logs.includes(OPS_KEY));
        assert.ok(!/lvl=notice[^\n]*(wrong Opskey|refused admin)/.test(logs), 'not at notice');
    });
});
