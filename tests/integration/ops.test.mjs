// The ops API (POST /accounts with Opskey, /admin/accounts with Basic admin:<OPS_KEY>) through
// the ingress, with the real billing service behind it, on SQLite and MariaDB: the seed's
// actions with the seed's request and reply shapes (S2, S4, C17, C18), the new actions, input
// validation and the audit log. See docs/ops-api.md.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { describe, it } from 'node:test';
import { basicAuth, withStack } from './lib/harness.mjs';
import { authenticate } from './lib/auth-rpc.mjs';
import { ENV, OPS_KEY, authUrl, ops, postJSON, request, within } from './lib/auth-helpers.mjs';

/** The rows of auth_audit, oldest first, as objects (SQLite through node:sqlite is not
 * available on Node 20, so both back ends are read with their command-line clients). */
function auditRows(stack) {
    const sql = 'SELECT actor, client_ip, request_id, action, target, result, detail FROM auth_audit ORDER BY id';
    const r = stack.mariadb
        ? spawnSync('mariadb', ['--no-defaults', `--socket=${stack.mariadb.socket}`, `-u${stack.mariadb.user}`,
            `-p${stack.mariadb.password}`, stack.mariadb.database, '--batch', '--skip-column-names', '-e', sql], { encoding: 'utf8' })
        : spawnSync('sqlite3', ['-separator', '\t', `${stack.dir}/chatweb.db`, sql], { encoding: 'utf8' });
    // scripts/bootstrap installs both clients: a missing one fails the test, never skips it
    assert.ifError(r.error);
    assert.equal(r.status, 0, r.stderr);
    return r.stdout.split('\n').filter(Boolean).map((l) => {
        const [actor, ip, rid, action, target, result, detail] = l.split('\t');
        return { actor, ip, rid, action, target, result, detail };
    });
}

for (const backend of ['sqlite', 'mariadb']) {
    describe(`ops API on ${backend}`, () => {
        const stack = withStack({ mysql: backend === 'mariadb', fastMysql: true, env: ENV });

        it('refuses a missing or wrong Opskey with 401 and the Fail envelope (S2, S4)', async () => {
            for (const key of [null, '', 'admin', `${OPS_KEY}x`, OPS_KEY.slice(0, -1)]) {
                const r = await ops(stack, { action: 'list' }, key);
                assert.equal(r.status, 401, `key ${JSON.stringify(key)}`);
                assert.deepEqual(r.json(), { data: null, message: 'Header Opskey error', status: 'Fail' });
            }
            // Header names are case-insensitive, as with Go's canonicalisation.
            const r = await postJSON(`${stack.url}/accounts`, { action: 'list' }, { headers: { OPSKEY: OPS_KEY } });
            assert.equal(r.status, 200);
        });

        it('/admin/accounts takes Basic admin:<OPS_KEY> only', async () => {
            for (const auth of [undefined, basicAuth('admin', 'admin'), basicAuth('root', OPS_KEY), basicAuth('admin', ''),
                basicAuth('', OPS_KEY), `Bearer ${OPS_KEY}`]) {
                const headers = auth ? { authorization: auth } : {};
                const r = await postJSON(`${stack.url}/admin/accounts`, { action: 'list' }, { headers });
                assert.equal(r.status, 401);
                assert.equal(r.headers['www-authenticate'], 'Basic realm="Authorization Required"');
            }
            const ok = await postJSON(`${stack.url}/admin/accounts`, { action: 'list' },
                { headers: { authorization: basicAuth('admin', OPS_KEY) } });
            assert.equal(ok.status, 200);
            assert.equal(ok.json().message, 'success');
        });

        it('register / check / recharge / grant / list with the seed\'s shapes', async () => {
            let r = await ops(stack, { action: 'register', i_username: 'oscar', i_password: 'oscar-pw-1', count: 1000 });
            assert.equal(r.status, 200);
            let j = r.json();
            assert.equal(j.message, 'success');
            assert.equal(j.status, 'Success');
            assert.equal(j.data.username, 'oscar');

            r = await ops(stack, { action: 'register', i_username: 'oscar', i_password: 'other-pw-1', count: 5 });
            assert.equal(r.status, 200);
            assert.deepEqual(r.json(), { message: '账户名存在', status: 'Fail' });

            r = await ops(stack, { action: 'check', i_username: 'oscar' });
            j = r.json();
            assert.equal(j.message, 'success');
            assert.equal(j.status, 'Success');
            assert.deepEqual(Object.keys(j.data).sort(),
                ['balance', 'blocked', 'created_at', 'granted', 'held', 'id', 'model', 'static', 'unlimited', 'usage', 'username']);
            assert.equal(j.data.username, 'oscar');
            assert.equal(j.data.balance, 1000);
            assert.equal(j.data.usage, 0);
            assert.equal(j.data.blocked, false);
            assert.equal(j.data.model, '');
            assert.ok(j.data.created_at > 1700000000);

            for (const action of ['check', 'recharge', 'grant', 'delete', 'set_password', 'block', 'usage', 'list_keys']) {
                for (const name of ['nobody', '']) {
                    r = await ops(stack, { action, i_username: name, i_password: 'whatever-pw', count: 5 });
                    assert.equal(r.status, 200, `${action} ${name}`);
                    assert.deepEqual(r.json(), { message: 'record not found', status: 'Fail' }, `${action} "${name}" (S1: never user #1)`);
                }
            }

            r = await ops(stack, { action: 'recharge', i_username: 'oscar', count: 500 });
            j = r.json();
            assert.equal(j.message, 'success', r.body);
            assert.equal(j.status, 'Success');
            assert.equal(j.data.granted, 1500);
            r = await ops(stack, { action: 'check', i_username: 'oscar' });
            assert.equal(r.json().data.balance, 1500);
            assert.equal(r.json().data.granted, 1500);

            const me = basicAuth('oscar', 'oscar-pw-1');
            assert.equal((await authenticate(authUrl(stack), me)).result, 'AUTH_OK');
            r = await ops(stack, { action: 'grant', i_username: 'oscar', count: 1 });
            assert.deepEqual(r.json(), { message: 'success', status: 'Success' });
            await within(1000, async () => (await authenticate(authUrl(stack), me)).result === 'AUTH_BLOCKED');
            assert.equal((await ops(stack, { action: 'check', i_username: 'oscar' })).json().data.blocked, true);
            r = await ops(stack, { action: 'grant', i_username: 'oscar', count: 0 });
            assert.deepEqual(r.json(), { message: 'success', status: 'Success' });
            await within(1000, async () => (await authenticate(authUrl(stack), me)).result === 'AUTH_OK');

            r = await ops(stack, { action: 'list' });
            j = r.json();
            assert.equal(j.message, 'success');
            assert.equal(j.status, 'Success');
            assert.ok(Array.isArray(j.data));
            const row = j.data.find((u) => u.Username === 'oscar');
            for (const k of ['ID', 'Username', 'Balance', 'Usage', 'Model', 'Isblock']) assert.ok(k in row, k);
            assert.ok(!('Password' in row), 'list never returns passwords (S3)');
            assert.equal(row.Balance, 1500);
            assert.equal(row.Isblock, 0);
            const alice = j.data.find((u) => u.Username === 'alice');
            assert.equal(alice.Balance, -1, 'static users are unlimited, as in the seed');
        });

        it('register with a negative count makes an unlimited account; recharge with a negative count debits', async () => {
            let r = await ops(stack, { action: 'register', i_username: 'ursula', i_password: 'ursula-pw-1', count: -1 });
            assert.equal(r.json().message, 'success');
            r = await ops(stack, { action: 'check', i_username: 'ursula' });
            assert.equal(r.json().data.unlimited, true);
            assert.equal(r.json().data.balance, -1);
            await ops(stack, { action: 'register', i_username: 'victor', i_password: 'victor-pw-1', count: 100 });
            r = await ops(stack, { action: 'recharge', i_username: 'victor', count: -40 });
            assert.equal(r.json().message, 'success', r.body);
            assert.equal((await ops(stack, { action: 'check', i_username: 'victor' })).json().data.balance, 60);
        });

        it('validates input', async () => {
            const bad = [
                [{ action: 'register', i_username: 'bad name', i_password: 'password1', count: 1 }, /invalid username/],
                [{ action: 'register', i_username: 'x'.repeat(65), i_password: 'password1', count: 1 }, /./],
                [{ action: 'register', i_username: 'shorty', i_password: '123', count: 1 }, /invalid password/],
                [{ action: 'register', i_username: 'shorty', i_password: '', count: 1 }, /invalid password/],
                [{ action: 'register', i_username: 'shorty', i_password: 'password1', count: 'ten' }, /count/],
                [{ action: 'register', i_username: 'shorty', i_password: 'password1', count: 1e13 }, /count/],
                [{ action: 'recharge', i_username: 'oscar', count: 0 }, /count/],
                [{ action: 'recharge', i_username: 'oscar', count: 1.5 }, /count/],
                [{ action: 'create_key', i_username: 'oscar', rpm: -1 }, /rpm/],
                [{ action: 'create_key', i_username: 'oscar', models: [1, 2] }, /models/],
                [{ action: 'list', page: 0 }, /page/],
                [{ action: 'list', per_page: 5000 }, /per_page/],
                [{ action: 'nonsense' }, /unknown action/],
            ];
            for (const [body, re] of bad) {
                const r = await ops(stack, body);
                assert.equal(r.status, 200, JSON.stringify(body));
                assert.equal(r.json().status, 'Fail', JSON.stringify(body));
                assert.match(r.json().message, re, JSON.stringify(body));
            }
            assert.equal((await ops(stack, { action: 'check', i_username: 'shorty' })).json().message, 'record not found');
            // a refused key is not created (each refusal above once created one anyway)
            assert.deepEqual((await ops(stack, { action: 'list_keys', i_username: 'oscar' })).json().data, []);
            const r = await request(`${stack.url}/accounts`, { method: 'POST', headers: { Opskey: OPS_KEY }, body: '{"action":' });
            assert.equal(r.status, 400);
            assert.equal(r.json().status, 'Fail');
        });

        it('API keys: create (shown once), list, set_limits, revoke', async () => {
            await ops(stack, { action: 'register', i_username: 'kate', i_password: 'kate-pw-123', count: 100 });
            let r = await ops(stack, { action: 'create_key', i_username: 'kate', name: 'ci', models: ['gpt-4o-mini'], rpm: 60, tpm: 100000 });
            let j = r.json();
            assert.equal(j.status, 'Success');
            assert.equal(j.message, 'success');
            const { key, prefix } = j.data;
            assert.match(key, /^sk-[0-9a-f]{48}$/);
            assert.equal(prefix, key.slice(0, 11));
            assert.equal(j.data.name, 'ci');

            let a = await authenticate(authUrl(stack), `Bearer ${key}`);
            assert.equal(a.result, 'AUTH_OK');
            assert.equal(a.scheme, 'apikey');
            assert.equal(a.identity.username, 'kate');
            assert.equal(a.identity.keyId, prefix);
            assert.deepEqual(a.identity.allowedModels, ['gpt-4o-mini']);
            assert.equal(a.identity.rpmLimit, 60);
            assert.equal(a.identity.tpmLimit, 100000);

            r = await ops(stack, { action: 'list_keys', i_username: 'kate' });
            j = r.json();
            assert.equal(j.data.length, 1);
            assert.equal(j.data[0].prefix, prefix);
            assert.equal(j.data[0].revoked, false);
            assert.ok(j.data[0].last_used_at > 0, 'last use is recorded');
            assert.ok(!r.body.includes(key), 'the key is shown only once');

            r = await ops(stack, { action: 'set_limits', i_username: 'kate', prefix, models: 'gpt-4o,gpt-4o-mini', rpm: 5, tpm: 0 });
            assert.equal(r.json().message, 'success');
            // refused limits change nothing
            for (const bad of [{ rpm: -5 }, { tpm: 1e13 }, { models: ['gpt 4o'] }, { rpm: 'ten' }]) {
                r = await ops(stack, { action: 'set_limits', i_username: 'kate', prefix, models: 'gpt-4o', rpm: 7, tpm: 7, ...bad });
                assert.equal(r.json().status, 'Fail', JSON.stringify(bad));
            }
            j = (await ops(stack, { action: 'list_keys', i_username: 'kate' })).json();
            assert.deepEqual([j.data[0].models, j.data[0].rpm, j.data[0].tpm], [['gpt-4o', 'gpt-4o-mini'], 5, 0]);
            await within(1000, async () => (await authenticate(authUrl(stack), `Bearer ${key}`)).identity.rpmLimit === 5);
            a = await authenticate(authUrl(stack), `Bearer ${key}`);
            assert.deepEqual(a.identity.allowedModels, ['gpt-4o', 'gpt-4o-mini']);

            r = await ops(stack, { action: 'revoke_key', i_username: 'kate', prefix });
            assert.equal(r.json().message, 'success');
            await within(1000, async () => (await authenticate(authUrl(stack), `Bearer ${key}`)).result === 'AUTH_REVOKED');
            r = await ops(stack, { action: 'revoke_key', i_username: 'kate', prefix });
            assert.equal(r.json().message, 'record not found');
            r = await ops(stack, { action: 'revoke_key', i_username: 'oscar', prefix: 'sk-00000000' });
            assert.equal(r.json().message, 'record not found');
        });

        it('list is paginated and searchable; usage comes from billing; delete removes the user', async () => {
            for (const n of ['pat1', 'pat2', 'pat3']) await ops(stack, { action: 'register', i_username: n, i_password: 'pattern-pw', count: 10 });
            let r = await ops(stack, { action: 'list', search: 'pat', page: 1, per_page: 2 });
            let j = r.json();
            assert.equal(j.total, 3);
            assert.deepEqual(j.data.map((u) => u.Username), ['pat1', 'pat2']);
            r = await ops(stack, { action: 'list', search: 'pat', page: 2, per_page: 2 });
            assert.deepEqual(r.json().data.map((u) => u.Username), ['pat3']);
            r = await ops(stack, { action: 'list', search: '%' });
            assert.equal(r.json().total, 0, 'LIKE wildcards are escaped');

            r = await ops(stack, { action: 'usage', i_username: 'pat1', days: 7 });
            j = r.json();
            assert.equal(j.status, 'Success', r.body);
            assert.ok(Array.isArray(j.data.entries));
            assert.ok(j.data.entries.some((e) => e.kind === 'recharge' && e.units === 10), r.body);

            r = await ops(stack, { action: 'delete', i_username: 'pat3' });
            assert.deepEqual(r.json(), { message: 'success', status: 'Success' });
            assert.equal((await ops(stack, { action: 'check', i_username: 'pat3' })).json().message, 'record not found');
            assert.equal((await authenticate(authUrl(stack), basicAuth('pat3', 'pattern-pw'))).result, 'AUTH_UNKNOWN_USER');
            r = await ops(stack, { action: 'delete', i_username: 'alice' });
            assert.equal(r.json().status, 'Fail', 'static users are managed by the environment');
        });

        it('refuses duplicate JSON keys, grant without count, and API key names with markup or control characters', async () => {
            await ops(stack, { action: 'register', i_username: 'gina', i_password: 'gina-pw-123', count: 10 });
            // Duplicate keys: "last wins" would credit 1000 where a reader of the body sees 1.
            const dup = await request(`${stack.url}/accounts`, {
                method: 'POST', headers: { Opskey: OPS_KEY },
                body: '{"action":"recharge","i_username":"gina","count":1,"count":1000}',
            });
            assert.equal(dup.status, 400, dup.body);
            assert.equal(dup.json().status, 'Fail');
            assert.match(dup.json().message, /duplicate/i);
            assert.equal((await ops(stack, { action: 'check', i_username: 'gina' })).json().data.balance, 10, 'nothing credited');

            // grant without count must not unblock (the seed's grant 0 unblocks; a missing count is not 0).
            assert.equal((await ops(stack, { action: 'block', i_username: 'gina' })).json().message, 'success');
            const g = await ops(stack, { action: 'grant', i_username: 'gina' });
            assert.equal(g.json().status, 'Fail', g.body);
            assert.match(g.json().message, /count/);
            assert.equal((await ops(stack, { action: 'check', i_username: 'gina' })).json().data.blocked, true, 'still blocked');

            for (const name of ['a\u0001b', 'tab\there', 'new\nline', '<script>alert(1)</script>', 'x>y', 'del\u007f',
                'c1\u0085', 'rtl\u202eexe', 'x'.repeat(65)]) {
                const r = await ops(stack, { action: 'create_key', i_username: 'gina', name });
                assert.equal(r.json().status, 'Fail', `name ${JSON.stringify(name)}: ${r.body}`);
                assert.match(r.json().message, /\bname\b/, JSON.stringify(name));
            }
            const keys = await ops(stack, { action: 'list_keys', i_username: 'gina' });
            assert.deepEqual(keys.json().data, [], 'no key was stored');
            const okName = await ops(stack, { action: 'create_key', i_username: 'gina', name: 'laptop ü (home) & co' });
            assert.equal(okName.json().status, 'Success', okName.body);
            assert.equal(okName.json().data.name, 'laptop ü (home) & co');
        });

        it('an unlimited account\'s recharge reply shows the same balance as check', async () => {
            await ops(stack, { action: 'register', i_username: 'uma', i_password: 'uma-pw-1234', count: -1 });
            const r = await ops(stack, { action: 'recharge', i_username: 'uma', count: 5 });
            assert.equal(r.json().status, 'Success', r.body);
            const c = (await ops(stack, { action: 'check', i_username: 'uma' })).json().data;
            assert.equal(c.balance, -1);
            assert.equal(r.json().data.balance, c.balance, 'recharge and check agree');
            assert.equal(r.json().data.granted, c.granted, 'recharge and check agree');
            assert.equal(r.json().data.unlimited, true);
        });

        it('Idempotency-Key: an exact replay answers the original result and says so; another request with the key is 409', async (t) => {
            await ops(stack, { action: 'register', i_username: 'rita', i_password: 'rita-pw-123', count: 10 });
            await ops(stack, { action: 'register', i_username: 'sam', i_password: 'sam-pw-1234', count: 10 });
            const key = `pay-${backend}-8812`;
            const rc = (body) => postJSON(`${stack.url}/accounts`, body, { headers: { Opskey: OPS_KEY, 'Idempotency-Key': key } });
            const first = await rc({ action: 'recharge', i_username: 'rita', count: 100 });
            assert.equal(first.status, 200);
            assert.equal(first.json().status, 'Success', first.body);
            assert.equal(first.json().data.balance, 110);
            assert.equal(first.json().data.replay, false);
            assert.equal(first.headers['idempotent-replayed'], undefined);
            // someone recharges in between: the replay still answers the original result
            await ops(stack, { action: 'recharge', i_username: 'rita', count: 1 });
            const again = await rc({ i_username: 'rita', count: 100, action: 'recharge' });
            assert.equal(again.status, 200);
            assert.equal(again.json().status, 'Success', again.body);
            assert.equal(again.json().data.replay, true);
            assert.equal(again.json().data.balance, 110, 'the original result');
            assert.equal(again.headers['idempotent-replayed'], 'true');
            for (const body of [{ action: 'recharge', i_username: 'rita', count: 999 },
                { action: 'recharge', i_username: 'rita', count: -50 },
                { action: 'recharge', i_username: 'sam', count: 100 }]) {
                const r = await rc(body);
                assert.equal(r.status, 409, `${JSON.stringify(body)}: ${r.body}`);
                assert.equal(r.json().status, 'Fail');
                assert.match(r.json().message, /Idempotency-Key .*different request/);
            }
            assert.equal((await ops(stack, { action: 'check', i_username: 'rita' })).json().data.balance, 111, 'credited once');
            assert.equal((await ops(stack, { action: 'check', i_username: 'sam' })).json().data.balance, 10);
            const bad = await postJSON(`${stack.url}/accounts`, { action: 'recharge', i_username: 'rita', count: 1 },
                { headers: { Opskey: OPS_KEY, 'Idempotency-Key': 'x'.repeat(129) } });
            assert.equal(bad.json().status, 'Fail');
            assert.match(bad.json().message, /Idempotency-Key/);

            const rows = auditRows(stack);
            const mine = rows.filter((r) => r.action === 'recharge' && (r.target === 'rita' || r.target === 'sam') && r.detail.includes(key));
            assert.equal(mine.filter((r) => r.result === 'success').length, 1, JSON.stringify(mine));
            assert.ok(mine.some((r) => r.result === 'replay' && /count=100/.test(r.detail)), JSON.stringify(mine));
            const refused = mine.filter((r) => /different request/.test(r.result));
            assert.equal(refused.length, 3, JSON.stringify(mine));
            for (const r of mine.filter((x) => x.result === 'success' || x.result === 'replay'))
                assert.ok(!/count=(999|-50)/.test(r.detail), `nothing refused is recorded as done: ${JSON.stringify(r)}`);
            assert.ok(refused.every((r) => /^asked /.test(r.detail)), JSON.stringify(refused));
        });

        it('records every ops write in the audit log (who, what, when, from where)', async (t) => {
            const rows = auditRows(stack);
            const reg = rows.find((r) => r.action === 'register' && r.target === 'oscar' && r.result === 'success');
            assert.ok(reg, 'register audited');
            assert.equal(reg.actor, 'opskey');
            assert.equal(reg.ip, '127.0.0.1');
            assert.ok(reg.rid.length > 0);
            assert.ok(rows.some((r) => r.action === 'register' && r.target === 'oscar' && r.result === '账户名存在'), 'failed writes too');
            for (const a of ['recharge', 'grant', 'create_key', 'set_limits', 'revoke_key', 'delete'])
                assert.ok(rows.some((r) => r.action === a), `${a} audited`);
            assert.ok(!rows.some((r) => r.action === 'list' || r.action === 'check'), 'reads are not audited');
            assert.ok(!JSON.stringify(rows).includes('oscar-pw-1'));
        });
    });
}
