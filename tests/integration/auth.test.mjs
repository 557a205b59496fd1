// The auth service against real servers, on SQLite and on MariaDB: the seed's credential defects
// (S1, S3, S13), login sessions, the ChatGPT Web frontend contract end to end through the
// ingress, the verification cache across two replicas, throttling, ChangeCredentials/SetModel.
// The ops API has its own file (ops.test.mjs).
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { basicAuth, startService, streamBody, withStack } from './lib/harness.mjs';
import { authenticate, rpc } from './lib/auth-rpc.mjs';
import {
    ENV, OPS_KEY, UNAUTHORIZED, assertNoSecrets, authUrl, logsText, ops, postJSON, request, sqlText, within,
} from './lib/auth-helpers.mjs';

function chat(stack, authorization, prompt = 'hello [[fake tokens=5]]') {
    const headers = { 'content-type': 'application/json' };
    if (authorization !== undefined) headers.authorization = authorization;
    return streamBody(`${stack.url}/api/chat-process`, {
        method: 'POST', headers, body: JSON.stringify({ prompt, options: {} }), timeoutMs: 20000,
    });
}

function lastObject(text) {
    const lines = text.split('\n');
    return JSON.parse(lines[lines.length - 1]);
}

for (const backend of ['sqlite', 'mariadb']) {
    describe(`auth on ${backend}`, () => {
        const stack = withStack({ mysql: backend === 'mariadb', fastMysql: true, replicas: { auth: 2 }, env: ENV });
        const secrets = ['alice-static-pw', 'bob-static-pw'];
        const register = async (name, pw, count = 100000) => {
            secrets.push(pw);
            const r = await ops(stack, { action: 'register', i_username: name, i_password: pw, count });
            assert.equal(r.json().message, 'success', r.body);
        };

        it('rejects empty user names and passwords (S1): Basic "user:", ":", ":pw"', async () => {
            await register('carol', 'carol-pw-1');
            for (const [u, p] of [['carol', ''], ['', ''], ['', 'carol-pw-1'], ['alice', ''], ['', 'alice-static-pw']]) {
                const a = await authenticate(authUrl(stack), basicAuth(u, p));
                assert.notEqual(a.result, 'AUTH_OK', `Basic ${u}:${p}`);
                assert.equal(a.identity, null);
                const c = await chat(stack, basicAuth(u, p));
                assert.equal(c.status, 200);
                assert.notEqual(c.headers['content-type'], 'application/octet-stream');
                assert.notEqual(JSON.parse(c.text).status, 'Success');
            }
            for (const bearer of ['Bearer :', 'Bearer carol:', 'Bearer :carol-pw-1']) {
                const a = await authenticate(authUrl(stack), bearer);
                assert.notEqual(a.result, 'AUTH_OK', bearer);
            }
            const ok = await authenticate(authUrl(stack), basicAuth('carol', 'carol-pw-1'));
            assert.equal(ok.result, 'AUTH_OK');
            assert.equal(ok.identity.username, 'carol');
            assert.equal(ok.scheme, 'basic');
        });

        it('gives precise Authenticate results', async () => {
            const u = authUrl(stack);
            assert.equal((await authenticate(u, '')).result, 'AUTH_MISSING');
            assert.equal((await authenticate(u, basicAuth('nobody', 'whatever-pw'))).result, 'AUTH_UNKNOWN_USER');
            assert.equal((await authenticate(u, basicAuth('carol', 'wrong-pw'))).result, 'AUTH_WRONG_PASSWORD');
            assert.equal((await authenticate(u, 'Digest abc')).result, 'AUTH_MALFORMED');
            assert.equal((await authenticate(u, 'Bearer sk-000000000000000000000000000000000000000000000000')).result,
                'AUTH_UNKNOWN_USER');
            assert.equal((await authenticate(u, `Bearer cws_${'0'.repeat(64)}`)).result, 'AUTH_REVOKED');
            const s = await authenticate(u, basicAuth('alice', 'alice-static-pw'));
            assert.equal(s.result, 'AUTH_OK');
            assert.equal(s.identity.isStatic, true);
        });

        it('throttles failed logins per account and source: a stranger\'s failures do not lock the owner out', async () => {
            await register('dave', 'dave-pw-123');
            const u = authUrl(stack);
            // a stranger on one address: 10 checks, then "retry after" (never "wrong password")
            const seen = [];
            for (let i = 0; i < 12; i++) seen.push(await authenticate(u, basicAuth('dave', `bad-${i}`), { clientIp: '10.0.0.99' }));
            assert.deepEqual(seen.slice(0, 10).map((r) => r.result), Array(10).fill('AUTH_WRONG_PASSWORD'));
            assert.deepEqual(seen.slice(10).map((r) => r.result), ['AUTH_THROTTLED', 'AUTH_THROTTLED']);
            assert.ok(seen[10].retryAfterMs > 0, 'a throttled answer says how long to wait');
            const there = await authenticate(u, basicAuth('dave', 'dave-pw-123'), { clientIp: '10.0.0.99' });
            assert.equal(there.result, 'AUTH_THROTTLED', 'the attacked source waits, even with the right password');
            // many strangers on many addresses
            for (let i = 0; i < 30; i++) await authenticate(u, basicAuth('dave', `bad-${i}`), { clientIp: `10.0.2.${i}` });
            // the owner elsewhere is not blocked (this assertion encoded the bug before: AUTH_THROTTLED)
            const r = await authenticate(u, basicAuth('dave', 'dave-pw-123'), { clientIp: '10.0.1.1' });
            assert.equal(r.result, 'AUTH_OK');
            const login = await postJSON(`${stack.url}/api/login`, { username: 'dave', password: 'dave-pw-123' });
            assert.equal(login.json().status, 'Success', login.body);
        });

        it('browser login: /api/login, /api/me (Bearer and cookie), /api/logout', async () => {
            await register('erin', 'erin-pw-123', 5000);
            const bad = await postJSON(`${stack.url}/api/login`, { username: 'erin', password: 'nope-nope' });
            assert.equal(bad.status, 200);
            assert.equal(bad.json().status, 'Fail');
            const r = await postJSON(`${stack.url}/api/login`, { username: 'erin', password: 'erin-pw-123' });
            assert.equal(r.status, 200);
            const j = r.json();
            assert.equal(j.status, 'Success');
            const token = j.data.token;
            secrets.push(token);
            assert.match(token, /^cws_[0-9a-f]{64}$/);
            const setCookie = r.headers['set-cookie'].join('\n');
            assert.match(setCookie, /chatweb_session=cws_/);
            assert.match(setCookie, /HttpOnly/);
            assert.match(setCookie, /SameSite=Lax/);
            const cookie = setCookie.split(';')[0];

            const me = await request(`${stack.url}/api/me`, { headers: { authorization: `Bearer ${token}` } });
            const mj = me.json();
            assert.equal(mj.status, 'Success', me.body);
            assert.equal(mj.data.name, 'erin');
            assert.equal(mj.data.balance, 5000);
            assert.equal(mj.data.usage, 0);
            assert.equal(mj.data.model, '');
            const me2 = await request(`${stack.url}/api/me`, { headers: { cookie } });
            assert.equal(me2.json().data.name, 'erin');
            // among the site's other cookies, a malformed one included: the ingress passes on the
            // session cookie alone (deploy/local/nginx.conf.tmpl)
            const me3 = await request(`${stack.url}/api/me`, { headers: { cookie: `theme=dark; a="; ${cookie}; x=1` } });
            assert.equal(me3.json().data?.name, 'erin', me3.body);

            const out = await postJSON(`${stack.url}/api/logout`, {}, { headers: { cookie } });
            assert.equal(out.json().status, 'Success');
            assert.match(out.headers['set-cookie'].join('\n'), /Max-Age=0/);
            // Logged out on every replica within a second.
            await within(1000, async () => {
                const a = await authenticate(authUrl(stack, 0), `Bearer ${token}`);
                const b = await authenticate(authUrl(stack, 1), `Bearer ${token}`);
                return a.result === 'AUTH_REVOKED' && b.result === 'AUTH_REVOKED';
            });
            const gone = await request(`${stack.url}/api/me`, { headers: { authorization: `Bearer ${token}` } });
            assert.deepEqual(gone.json(), UNAUTHORIZED);
            const anon = await request(`${stack.url}/api/me`);
            assert.deepEqual(anon.json(), UNAUTHORIZED);
        });

        it('ChatGPT Web contract through the ingress: session -> verify -> Bearer on every call -> Unauthorized', async () => {
            await register('frank', 'frank-pw-123', 100000);
            const s = await postJSON(`${stack.url}/api/session`, {});
            assert.equal(s.status, 200);
            assert.deepEqual(s.json(), { status: 'Success', message: '', data: { auth: true, model: 'ChatGPTAPI' } });

            const empty = await postJSON(`${stack.url}/api/verify`, { token: '' });
            assert.deepEqual(empty.json(), { status: 'Fail', message: 'Secret key is empty', data: null });
            const wrong = await postJSON(`${stack.url}/api/verify`, { token: 'frank:wrong-pw' });
            assert.deepEqual(wrong.json(), { status: 'Fail', message: '密钥无效 | Secret key is invalid', data: null });
            const v = await postJSON(`${stack.url}/api/verify`, { token: 'frank:frank-pw-123' });
            assert.deepEqual(v.json(), { status: 'Success', message: 'Verify successfully', data: null });

            // The frontend now sends the verified token as Bearer on every call.
            const bearer = 'Bearer frank:frank-pw-123';
            const c = await chat(stack, bearer);
            assert.equal(c.status, 200, c.text);
            assert.match(c.headers['content-type'], /octet-stream/, c.text);
            assert.match(lastObject(c.text).text, /hello/);
            const me = await request(`${stack.url}/api/me`, { headers: { authorization: bearer } });
            assert.equal(me.json().data.name, 'frank');

            // An API key works the same way.
            const k = await ops(stack, { action: 'create_key', i_username: 'frank', name: 'laptop' });
            const key = k.json().data.key;
            secrets.push(key);
            const vk = await postJSON(`${stack.url}/api/verify`, { token: key });
            assert.equal(vk.json().status, 'Success');
            const ck = await chat(stack, `Bearer ${key}`);
            assert.match(ck.headers['content-type'], /octet-stream/, ck.text);

            // A token that no longer works gets the Unauthorized envelope (HTTP 200).
            for (const h of ['Bearer frank:frank-pw-WRONG', 'Bearer nonsense', `Bearer ${key.slice(0, -1)}x`]) {
                const bad = await chat(stack, h);
                assert.equal(bad.status, 200);
                assert.deepEqual(JSON.parse(bad.text), UNAUTHORIZED, h);
                const m = await request(`${stack.url}/api/me`, { headers: { authorization: h } });
                assert.deepEqual(m.json(), UNAUTHORIZED);
            }
        });

        it('a password change, a block and a delete reach both replicas within 1 s', async () => {
            await register('grace', 'grace-pw-123');
            const old = basicAuth('grace', 'grace-pw-123');
            for (const i of [0, 1]) assert.equal((await authenticate(authUrl(stack, i), old)).result, 'AUTH_OK');
            // Warm: a second call is served from the cache.
            for (const i of [0, 1]) assert.equal((await authenticate(authUrl(stack, i), old)).result, 'AUTH_OK');

            const r = await ops(stack, { action: 'set_password', i_username: 'grace', i_password: 'grace-pw-456' });
            assert.equal(r.json().message, 'success');
            secrets.push('grace-pw-456');
            // (polled every 100 ms: each refused try counts towards the username's throttle)
            const t = await within(1000, async () => {
                const a = await authenticate(authUrl(stack, 0), old);
                const b = await authenticate(authUrl(stack, 1), old);
                return a.result === 'AUTH_WRONG_PASSWORD' && b.result === 'AUTH_WRONG_PASSWORD';
            }, 100);
            assert.ok(t < 1000, `password change took ${t} ms`);

            const now = basicAuth('grace', 'grace-pw-456');
            for (const i of [0, 1]) assert.equal((await authenticate(authUrl(stack, i), now)).result, 'AUTH_OK');
            assert.equal((await ops(stack, { action: 'block', i_username: 'grace' })).json().message, 'success');
            await within(1000, async () => {
                const a = await authenticate(authUrl(stack, 0), now);
                const b = await authenticate(authUrl(stack, 1), now);
                return a.result === 'AUTH_BLOCKED' && b.result === 'AUTH_BLOCKED';
            });
            const blocked = await authenticate(authUrl(stack), now);
            assert.equal(blocked.identity.username, 'grace');
            assert.equal(blocked.identity.blocked, true);
            assert.equal((await ops(stack, { action: 'unblock', i_username: 'grace' })).json().message, 'success');
            await within(1000, async () => (await authenticate(authUrl(stack, 1), now)).result === 'AUTH_OK');

            assert.equal((await ops(stack, { action: 'delete', i_username: 'grace' })).json().message, 'success');
            await within(1000, async () => {
                const a = await authenticate(authUrl(stack, 0), now);
                const b = await authenticate(authUrl(stack, 1), now);
                return a.result === 'AUTH_UNKNOWN_USER' && b.result === 'AUTH_UNKNOWN_USER';
            }, 100);
        });

        it('ChangeCredentials: renaming onto an existing name fails cleanly; own account only', async () => {
            await register('heidi', 'heidi-pw-123');
            await register('ivan', 'ivan-pw-123');
            const cc = (req) => rpc(authUrl(stack), 'Auth', 'ChangeCredentials', { clientIp: '127.0.0.1', ...req });
            let r = await cc({ username: 'heidi', currentPassword: 'heidi-pw-123', newUsername: 'ivan', newPassword: 'heidi-pw-999' });
            assert.equal(r.status, 200);
            assert.equal(r.message.result, 'CHANGE_NAME_TAKEN');
            assert.equal(r.message.message, '账户名存在');
            assert.equal((await authenticate(authUrl(stack), basicAuth('heidi', 'heidi-pw-123'))).result, 'AUTH_OK');
            assert.equal((await authenticate(authUrl(stack), basicAuth('ivan', 'ivan-pw-123'))).result, 'AUTH_OK');

            r = await cc({ username: 'heidi', currentPassword: 'wrong-pw', newUsername: 'heidi2', newPassword: 'heidi-pw-999' });
            assert.equal(r.message.result, 'CHANGE_DENIED');
            r = await cc({ username: '', currentPassword: '', newUsername: 'heidi2', newPassword: 'heidi-pw-999' });
            assert.equal(r.message.result, 'CHANGE_DENIED');
            r = await cc({ username: 'alice', currentPassword: 'alice-static-pw', newUsername: 'alice', newPassword: 'xxxxxxxx' });
            assert.equal(r.message.result, 'CHANGE_STATIC');
            r = await cc({ username: 'heidi', currentPassword: 'heidi-pw-123', newUsername: 'heidi2', newPassword: '123' });
            assert.equal(r.message.result, 'CHANGE_INVALID');

            r = await cc({ username: 'heidi', currentPassword: 'heidi-pw-123', newUsername: 'heidi2', newPassword: 'heidi-pw-999' });
            assert.equal(r.message.result, 'CHANGE_OK');
            secrets.push('heidi-pw-999');
            await within(1000, async () => (await authenticate(authUrl(stack, 1), basicAuth('heidi', 'heidi-pw-123'))).result === 'AUTH_UNKNOWN_USER');
            assert.equal((await authenticate(authUrl(stack, 1), basicAuth('heidi2', 'heidi-pw-999'))).result, 'AUTH_OK');
        });

        it('SetModel changes the identity\'s model on every replica', async () => {
            const me = basicAuth('ivan', 'ivan-pw-123');
            const a = await authenticate(authUrl(stack), me);
            const r = await rpc(authUrl(stack), 'Auth', 'SetModel', { userId: a.identity.userId, model: 'gpt-4o-mini' });
            assert.equal(r.message.ok, true);
            await within(1000, async () => (await authenticate(authUrl(stack, 1), me)).identity.model === 'gpt-4o-mini');
            const none = await rpc(authUrl(stack), 'Auth', 'SetModel', { userId: 999999, model: 'x' });
            assert.equal(none.message.ok, false);
        });

        it('keeps passwords, keys and session tokens out of SQL, logs and responses (S3)', async () => {
            const list = await ops(stack, { action: 'list' });
            const check = await ops(stack, { action: 'check', i_username: 'frank' });
            const keys = await ops(stack, { action: 'list_keys', i_username: 'frank' });
            for (const r of [list, check, keys]) {
                assertNoSecrets(r.body, secrets, 'a response');
                assert.ok(!/argon2|pw_hash|password/i.test(r.body), `no hash or password field: ${r.body.slice(0, 200)}`);
            }
            const sql = sqlText(stack);
            assert.ok(sql.includes('$argon2id$'), 'passwords are stored as argon2id hashes');
            assertNoSecrets(sql, secrets, 'SQL');
            assertNoSecrets(logsText(stack), [...secrets, OPS_KEY], 'the service logs');
        });

        if (backend === 'sqlite') {
            it('static users: the environment wins over a stored password at the next start (S13); no default ops key', async () => {
                const env = {
                    DATA_DIR: stack.dir, REDIS_URL: stack.redisUrl, BILLING_URL: stack.billingUrl, LOG_LEVEL: 'info',
                    AUTH_PWHASH_OPS: '1', AUTH_PWHASH_MEM_KIB: '8192',
                    BASIC_AUTH_USER: 'alice,carol', BASIC_AUTH_PASSWORD: 'alice-new-pw,carol-static-pw',
                };
                const h = await startService('auth', { env, dir: stack.dir, logDir: stack.logDir, label: 'auth-restart' });
                try {
                    const u = `http://${h.httpAddr}`;
                    assert.equal((await authenticate(u, basicAuth('alice', 'alice-new-pw'))).result, 'AUTH_OK');
                    assert.equal((await authenticate(u, basicAuth('alice', 'alice-static-pw'))).result, 'AUTH_WRONG_PASSWORD');
                    // carol was a registered user: the environment makes her static with its password.
                    const c = await authenticate(u, basicAuth('carol', 'carol-static-pw'));
                    assert.equal(c.result, 'AUTH_OK');
                    assert.equal(c.identity.isStatic, true);
                    // No OPS_KEY here: no default key opens the ops API.
                    for (const key of ['admin', '', 'x']) {
                        const r = await postJSON(`${u}/accounts`, { action: 'list' }, { headers: { Opskey: key } });
                        assert.equal(r.status, 403);
                        assert.deepEqual(r.json(), { data: null, message: 'ops API disabled: OPS_KEY is not set', status: 'Fail' });
                    }
                    const adm = await postJSON(`${u}/admin/accounts`, { action: 'list' }, { headers: { authorization: basicAuth('admin', 'admin') } });
                    assert.equal(adm.status, 403);
                    const s = await postJSON(`${u}/api/session`, {});
                    assert.equal(s.json().data.auth, false, 'auto: auth:true only with OPS_KEY');
                } finally {
                    await h.stop();
                }
            });
        }
    });
}
