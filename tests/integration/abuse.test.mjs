// Abuse of the credentials the auth service checks (issue 10): guessing the operator's secret
// (Opskey, Basic admin:<OPS_KEY>) and other people's passwords. Guesses are sent to the auth
// replicas directly with X-Real-IP and the stack's INGRESS_TOKEN (what the ingress sets), so each
// case has its own source address and the throttles of one case do not touch the others. No
// assertion depends on timing.
import assert from 'node:assert/strict';
import path from 'node:path';
import { spawnSync } from 'node:child_process';
import { describe, it } from 'node:test';
import { basicAuth, defaultBinDir, freePort, tempDir, withStack } from './lib/harness.mjs';
import { authenticate, rpc } from './lib/auth-rpc.mjs';
import { ENV, OPS_KEY, authUrl, logsText, ops, postJSON, request, sleep } from './lib/auth-helpers.mjs';

/** The headers the ingress sets for a client at ip: X-Real-IP and the stack's INGRESS_TOKEN. */
const asIngress = (stack, ip) => ({ 'X-Real-IP': ip, 'X-Ingress-Token': stack.ingressToken });

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

// The services believe X-Real-IP only from TRUSTED_PROXIES (the ingress). Here only 127.0.0.1,
// the address nginx connects from, is trusted; the attacker below reaches auth directly from
// 127.0.0.2 (every 127/8 address is on loopback) and names another source in every request.
describe('X-Real-IP is believed only from TRUSTED_PROXIES', () => {
    const stack = withStack({ env: { ...ENV, TRUSTED_PROXIES: '127.0.0.1/32' } });
    const opsFrom = (localAddress, ip, key) => postJSON(`${authUrl(stack)}/accounts`, { action: 'list' },
        { localAddress, headers: { 'X-Real-IP': ip, 'X-Ingress-Token': stack.ingressToken, Opskey: key } });

    it('a forged X-Real-IP from another peer is throttled under that peer\'s own address', async () => {
        const rs = [];
        for (let i = 0; i < 25; i++) rs.push(await opsFrom('127.0.0.2', `10.77.0.${i}`, `wrong-key-${i}`));
        assert.equal(rs.filter((r) => r.status === 401).length, 20, rs.map((r) => r.status).join(','));
        assert.ok(rs.slice(20).every((r) => r.status === 429), rs.map((r) => r.status).join(','));
        // whatever address it names next, and even with the right key
        assert.equal((await opsFrom('127.0.0.2', '10.77.9.9', OPS_KEY)).status, 429);
        assert.match(logsText(stack), /wrong Opskey from 127\.0\.0\.2/);
        assert.doesNotMatch(logsText(stack), /wrong Opskey from 10\.77\./);
    });

    it('the trusted peer (the ingress) still names its clients', async () => {
        // from 127.0.0.1 the header is believed: 10.77.0.1 is not the throttled 127.0.0.2
        const direct = await opsFrom('127.0.0.1', '10.77.0.1', OPS_KEY);
        assert.equal(direct.status, 200, direct.body);
        // through nginx (on 127.0.0.1) the client is the ingress's $remote_addr, here 127.0.0.1
        const viaIngress = await ops(stack, { action: 'list' });
        assert.equal(viaIngress.status, 200, viaIngress.body);
    });
});

// With INGRESS_TOKEN (make run sets one), even a peer TRUSTED_PROXIES allows (loopback: any
// process on the machine) has its X-Real-IP believed only with the token the ingress sends.
describe('X-Real-IP needs the ingress token (INGRESS_TOKEN)', () => {
    const stack = withStack({ env: ENV });
    const opsAs = (headers, key) => postJSON(`${authUrl(stack)}/accounts`, { action: 'list' },
        { headers: { ...headers, Opskey: key } });

    it('a local process naming a new address in every guess is throttled as itself', async () => {
        assert.ok(stack.ingressToken && stack.ingressToken.length >= 32, 'the stack sets a token, as make run does');
        const rs = [];
        for (let i = 0; i < 25; i++) rs.push(await opsAs({ 'X-Real-IP': `10.55.0.${i}`, 'X-Ingress-Token': `forged-${i}` }, `wrong-key-${i}`));
        assert.equal(rs.filter((r) => r.status === 401).length, 20, rs.map((r) => r.status).join(','));
        assert.ok(rs.slice(20).every((r) => r.status === 429), rs.map((r) => r.status).join(','));
        assert.equal((await opsAs({ 'X-Real-IP': '10.55.9.9' }, OPS_KEY)).status, 429, 'no token: the peer itself, still throttled');
        assert.doesNotMatch(logsText(stack), /wrong Opskey from 10\.55\./);
        // the ingress (the token) still names its clients: 10.55.1.1 is not the throttled peer
        const ok = await opsAs(asIngress(stack, '10.55.1.1'), OPS_KEY);
        assert.equal(ok.status, 200, ok.body);
    });

    it('a token shorter than 32 characters stops a service at start (exit 78)', async () => {
        const env = {
            PATH: process.env.PATH, HTTP_ADDR: `127.0.0.1:${await freePort()}`, ADMIN_ADDR: `127.0.0.1:${await freePort()}`,
            DATA_DIR: tempDir('chatweb-ingress-token-'), OPS_KEY, INGRESS_TOKEN: 'short-token',
        };
        const r = spawnSync(path.join(defaultBinDir(), 'chatweb-auth'), [], { env, encoding: 'utf8', timeout: 10000 });
        assert.equal(r.status, 78, `exit code (stderr: ${r.stderr})`);
        assert.match(r.stderr, /INGRESS_TOKEN: shorter than 32/);
        assert.ok(!r.stderr.includes('short-token'), 'the token itself is not printed');
    });
});

describe('operator secrets are throttled per source address', () => {
    const stack = withStack({ replicas: { auth: 2 }, env: ENV });
    const opsFrom = (i, ip, key) => postJSON(`${authUrl(stack, i)}/accounts`, { action: 'list' },
        { headers: { ...asIngress(stack, ip), ...(key === undefined ? {} : { Opskey: key }) } });
    const adminFrom = (i, ip, user, pw) => postJSON(`${authUrl(stack, i)}/admin/accounts`, { action: 'list' },
        { headers: { ...asIngress(stack, ip), authorization: basicAuth(user, pw) } });

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

describe('password guessing is throttled per account and source, never locking the owner out', () => {
    // AUTH_THROTTLE_IP is lowered so the distinct-accounts rule is reachable in a test.
    const stack = withStack({ replicas: { auth: 2 }, env: { ...ENV, AUTH_THROTTLE_IP: '20' } });
    const fromIp = (ip, extra = {}) => ({ headers: { ...asIngress(stack, ip), ...extra } });
    let token;

    it('60 concurrent wrong logins on two replicas get exactly AUTH_THROTTLE_USER (10) checks', async () => {
        const r = await ops(stack, { action: 'register', i_username: 'nina', i_password: 'nina-pw-123', count: 1000 });
        assert.equal(r.json().message, 'success', r.body);
        // the owner logs in before the attack: her session must keep working
        const login = await postJSON(`${authUrl(stack, 0)}/api/login`, { username: 'nina', password: 'nina-pw-123' }, fromIp('10.88.0.2'));
        token = login.json().data.token;
        assert.match(token, /^cws_/);
        const rs = await Promise.all(Array.from({ length: 60 }, (_, i) =>
            authenticate(authUrl(stack, i % 2), `Bearer nina:wrong-${i}`, { clientIp: '10.88.0.1' })));
        const results = rs.map((x) => x.result);
        assert.equal(results.filter((x) => x === 'AUTH_WRONG_PASSWORD').length, 10, results.join(','));
        assert.equal(results.filter((x) => x === 'AUTH_THROTTLED').length, 50);
        assert.ok(rs.filter((x) => x.result === 'AUTH_THROTTLED').every((x) => x.retryAfterMs > 0));
    });

    it('a throttled source hears "retry after N s" (429 + Retry-After), never that its valid credentials are wrong', async () => {
        const ip = fromIp('10.88.0.1');
        const me = await request(`${authUrl(stack, 1)}/api/me`, { headers: { ...ip.headers, authorization: 'Bearer nina:nina-pw-123' } });
        assert.equal(me.status, 429, me.body);
        assert.notEqual(me.json().status, 'Unauthorized', 'the frontend would drop its token');
        assert.match(me.json().message, /retry after \d+ s/);
        assert.match(me.headers['retry-after'], /^[1-9][0-9]*$/);
        const login = await postJSON(`${authUrl(stack, 0)}/api/login`, { username: 'nina', password: 'nina-pw-123' }, ip);
        assert.equal(login.status, 429);
        assert.match(login.json().message, /retry after \d+ s/);
        assert.match(login.headers['retry-after'], /^[1-9][0-9]*$/);
        const v = await postJSON(`${authUrl(stack, 1)}/api/verify`, { token: 'nina:nina-pw-123' }, ip);
        assert.equal(v.status, 429);
        assert.doesNotMatch(v.json().message, /invalid/i);
        const cc = await rpc(authUrl(stack), 'Auth', 'ChangeCredentials', {
            username: 'nina', currentPassword: 'nina-pw-123', newUsername: 'nina', newPassword: 'nina-pw-456', clientIp: '10.88.0.1',
        });
        assert.equal(cc.message.result, 'CHANGE_DENIED');
        assert.match(cc.message.message, /retry after \d+ s/);
    });

    it('the owner keeps working: her session everywhere, her password from another source', async () => {
        for (const i of [0, 1]) {
            const me = await request(`${authUrl(stack, i)}/api/me`, { headers: { ...asIngress(stack, '10.88.0.1'), authorization: `Bearer ${token}` } });
            assert.equal(me.json().status, 'Success', me.body);
            assert.equal(me.json().data.name, 'nina');
        }
        assert.equal((await authenticate(authUrl(stack, 1), 'Bearer nina:nina-pw-123', { clientIp: '10.88.0.3' })).result, 'AUTH_OK');
        const login = await postJSON(`${authUrl(stack, 1)}/api/login`, { username: 'nina', password: 'nina-pw-123' }, fromIp('10.88.0.4'));
        assert.equal(login.json().status, 'Success', login.body);
    });

    it('a NAT\'d office is not locked by its users\' typos; one address spraying many accounts is', async () => {
        for (let i = 0; i < 15; i++) {
            const name = `office${i}`;
            assert.equal((await ops(stack, { action: 'register', i_username: name, i_password: `${name}-pw`, count: 10 })).json().message, 'success');
        }
        // 15 people behind one address, each mistyping twice: 30 failures, all of them get in
        for (let i = 0; i < 15; i++) {
            for (const pw of ['typo-1', 'typo-2']) {
                assert.equal((await authenticate(authUrl(stack, i % 2), basicAuth(`office${i}`, pw), { clientIp: '10.88.1.1' })).result, 'AUTH_WRONG_PASSWORD');
            }
            assert.equal((await authenticate(authUrl(stack, i % 2), basicAuth(`office${i}`, `office${i}-pw`), { clientIp: '10.88.1.1' })).result, 'AUTH_OK');
        }
        // one address trying 20 different accounts is held back on the next new one
        for (let i = 0; i < 20; i++) {
            assert.equal((await authenticate(authUrl(stack), basicAuth(`spray${i}`, 'password1'), { clientIp: '10.88.2.1' })).result, 'AUTH_UNKNOWN_USER');
        }
        const next = await authenticate(authUrl(stack), basicAuth('office3', 'guess'), { clientIp: '10.88.2.1' });
        assert.equal(next.result, 'AUTH_THROTTLED');
        assert.ok(next.retryAfterMs > 0);
        assert.equal((await authenticate(authUrl(stack), basicAuth('office3', 'office3-pw'), { clientIp: '10.88.2.2' })).result, 'AUTH_OK');
    });
});

// The rule's two other halves (docs/accounts.md, "Failed-login throttling"): past the free
// attempts the delays grow (AUTH_THROTTLE_DELAY_MS, doubled per further attempt, at most
// AUTH_THROTTLE_MAX_DELAY), and static users (BASIC_AUTH_USER, here alice and bob of ENV) are
// throttled the same way as registered ones. AUTH_THROTTLE_USER and AUTH_THROTTLE_MAX_DELAY are
// lowered so that the whole ladder (1 s, 2 s, 4 s, then 4 s again) takes 7 s.
describe('login throttling: the delays grow, and static users are throttled too', () => {
    const FREE = 3;
    const stack = withStack({
        replicas: { auth: 2 },
        env: { ...ENV, AUTH_THROTTLE_USER: String(FREE), AUTH_THROTTLE_DELAY_MS: '1000', AUTH_THROTTLE_MAX_DELAY: '4' },
    });
    const login = (i, ip, username, password) => postJSON(`${authUrl(stack, i)}/api/login`, { username, password },
        { headers: asIngress(stack, ip) });

    it('each attempt past AUTH_THROTTLE_USER doubles the wait (1 s, 2 s, 4 s), up to AUTH_THROTTLE_MAX_DELAY (4 s)', async () => {
        assert.equal((await ops(stack, { action: 'register', i_username: 'gina', i_password: 'gina-pw-123', count: 10 })).json().message, 'success');
        const ip = '10.89.0.1';
        let n = 0;
        const guess = (i) => authenticate(authUrl(stack, i), `Bearer gina:wrong-${n++}`, { clientIp: ip });
        // the free attempts but the last: nothing to wait for after them
        for (let k = 0; k < FREE - 1; k++) assert.equal((await guess(k % 2)).result, 'AUTH_WRONG_PASSWORD');
        // The last free attempt sets the first delay, each attempt let through after waiting it
        // out sets the next. Right after it (elapsed ms later, Redis's clock) an attempt must
        // wait d - elapsed <= retry <= d: with a constant delay the second step would be 1 s,
        // without the bound the fourth 8 s.
        const seen = [];
        for (const [k, d] of [1000, 2000, 4000, 4000].entries()) {
            const t0 = Date.now();
            const counted = await guess(k % 2);
            assert.equal(counted.result, 'AUTH_WRONG_PASSWORD', `step ${k}: checked after waiting (${seen})`);
            const held = await guess((k + 1) % 2);
            const web = await login(k % 2, ip, 'gina', `wrong-web-${k}`);
            const elapsed = Date.now() - t0;
            seen.push(held.retryAfterMs);
            assert.equal(held.result, 'AUTH_THROTTLED', `step ${k}`);
            assert.ok(held.retryAfterMs <= d && held.retryAfterMs >= d - elapsed,
                `step ${k}: retry_after_ms ${held.retryAfterMs}, expected ${d} less at most the ${elapsed} ms gone (seen ${seen})`);
            // the same wait on /api/login, in whole seconds rounded up
            assert.equal(web.status, 429, web.body);
            const ra = Number(web.headers['retry-after']);
            assert.ok(ra <= d / 1000 && ra >= Math.ceil((d - elapsed) / 1000), `step ${k}: Retry-After ${ra}, expected ${d / 1000}`);
            assert.match(web.json().message, new RegExp(`retry after ${ra} s`));
            if (k < 3) await sleep(held.retryAfterMs + 50);
        }
        // the owner, from elsewhere, was never delayed
        assert.equal((await authenticate(authUrl(stack), 'Bearer gina:gina-pw-123', { clientIp: '10.89.0.2' })).result, 'AUTH_OK');
    });

    it('a static user\'s wrong passwords are throttled like a registered user\'s; the right one still works from elsewhere', async () => {
        assert.equal((await ops(stack, { action: 'register', i_username: 'hugo', i_password: 'hugo-pw-123', count: 10 })).json().message, 'success');
        const ip = '10.89.1.1';
        // the same burst of 20 concurrent wrong passwords (Basic, as the browser's dialog sends)
        // on both replicas, at a registered user and at the static user alice
        const burst = async (user) => (await Promise.all(Array.from({ length: 20 }, (_, i) =>
            authenticate(authUrl(stack, i % 2), basicAuth(user, `wrong-${i}`), { clientIp: ip })))).map((x) => x.result);
        const counts = (rs) => `${rs.filter((x) => x === 'AUTH_WRONG_PASSWORD').length} checked, ${rs.filter((x) => x === 'AUTH_THROTTLED').length} throttled`;
        const registered = await burst('hugo');
        const stat = await burst('alice');
        assert.equal(counts(registered), `${FREE} checked, ${20 - FREE} throttled`, registered.join(','));
        assert.equal(counts(stat), counts(registered), stat.join(','));
        // from that address even her right password waits, with every scheme
        const right = await authenticate(authUrl(stack, 0), basicAuth('alice', 'alice-static-pw'), { clientIp: ip });
        assert.equal(right.result, 'AUTH_THROTTLED');
        assert.ok(right.retryAfterMs > 0);
        const web = await login(1, ip, 'alice', 'alice-static-pw');
        assert.equal(web.status, 429, web.body);
        assert.match(web.headers['retry-after'], /^[1-9][0-9]*$/);
        const me = await request(`${authUrl(stack, 0)}/api/me`, { headers: { ...asIngress(stack, ip), authorization: basicAuth('alice', 'alice-static-pw') } });
        assert.equal(me.status, 429, me.body);
        // from another address she gets in at once, and she is the static user
        for (const i of [0, 1]) {
            const ok = await authenticate(authUrl(stack, i), basicAuth('alice', 'alice-static-pw'), { clientIp: `10.89.1.${2 + i}` });
            assert.equal(ok.result, 'AUTH_OK');
        }
        const other = await login(1, '10.89.1.4', 'alice', 'alice-static-pw');
        assert.equal(other.json().status, 'Success', other.body);
        const who = await request(`${authUrl(stack, 0)}/api/me`, { headers: { ...asIngress(stack, '10.89.1.5'), authorization: basicAuth('alice', 'alice-static-pw') } });
        assert.equal(who.json().data.name, 'alice', who.body);
        assert.equal(who.json().data.static, true, who.body);
    });
});
