// Model prices in SQL, the billing events stream and service health through the ops API
// (docs/ops-api.md "Prices, events and health", docs/billing.md "Prices", decision 37): a price set
// through auth is applied by both billing replicas within BILLING_PRICES_REFRESH_MS (1 s here) and
// overrides BILLING_PRICES; deleting it restores the env price or the default; bad input is
// refused; every write is audited. On SQLite and MariaDB.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { describe, it } from 'node:test';
import { basicAuth, streamBody, withStack } from './lib/harness.mjs';
import { billingClient, redisCall } from './lib/billing-rpc.mjs';
import { ENV, ops, sleep } from './lib/auth-helpers.mjs';

const REFRESH_MS = 1000;   // BILLING_PRICES_REFRESH_MS's default: the documented bound

function auditRows(stack) {
    const sql = "SELECT actor, action, target, result, detail FROM auth_audit WHERE action LIKE '%price%' ORDER BY id";
    const r = stack.mariadb
        ? spawnSync('mariadb', ['--no-defaults', `--socket=${stack.mariadb.socket}`, `-u${stack.mariadb.user}`,
            `-p${stack.mariadb.password}`, stack.mariadb.database, '--batch', '--skip-column-names', '-e', sql], { encoding: 'utf8' })
        : spawnSync('sqlite3', ['-separator', '\t', `${stack.dir}/chatweb.db`, sql], { encoding: 'utf8' });
    assert.equal(r.status, 0, r.stderr);
    return r.stdout.split('\n').filter(Boolean).map((l) => {
        const [actor, action, target, result, detail] = l.split('\t');
        return { actor, action, target, result, detail };
    });
}

const ceil = (tokens, milli) => Math.ceil((tokens * milli) / 1000);

for (const backend of ['sqlite', 'mariadb']) describe(`model prices through the ops API (${backend})`, () => {
    const stack = withStack({
        replicas: { billing: 2 }, mysql: backend === 'mariadb', fastMysql: true,
        env: { ...ENV, BILLING_PRICES: 'gpt-4o=2.5:10,*=1:1', OPENAI_MODEL: 'gpt-4o-mini' },
    });
    let uid = 900;

    /** Reserve + Settle 1000 in / 1000 out of `model` on billing replica i; the units charged. */
    async function charge(i, model) {
        const b = billingClient(stack.services.billing[i].url);
        try {
            const user = ++uid;
            await b.ok('CreateAccount', { user_id: user, username: `p${user}`, initial_units: 10_000_000 });
            const rid = `price-${backend}-${user}`;
            await b.ok('Reserve', { request_id: rid, user_id: user, model, prompt_tokens: 1000, max_completion_tokens: 1000 });
            return (await b.ok('Settle', { request_id: rid, prompt_tokens: 1000, completion_tokens: 1000 })).charged_units;
        } finally { b.close(); }
    }

    /** Waits until both replicas charge `want` for model; returns the ms it took. The bound is one
     * poll period plus a second of slack for a loaded CI machine (measured: 0.75-0.93 s). */
    async function bothCharge(model, want, limitMs = REFRESH_MS + 1000) {
        const t0 = Date.now();
        for (;;) {
            const got = [await charge(0, model), await charge(1, model)];
            if (got[0] === want && got[1] === want) return Date.now() - t0;
            if (Date.now() - t0 > limitMs) assert.fail(`${model}: replicas charge ${got}, want ${want} within ${limitMs} ms`);
            await sleep(100);
        }
    }

    it('lists BILLING_PRICES and the default before any SQL price', async () => {
        const j = (await ops(stack, { action: 'list_prices' })).json();
        assert.equal(j.status, 'Success', JSON.stringify(j));
        assert.deepEqual(j.data.prices.map((p) => [p.model, p.input, p.output, p.source]),
            [['gpt-4o', '2.5', '10', 'env'], ['*', '1', '1', 'env']]);
        assert.equal(j.data.version, 0);
        assert.equal(await charge(0, 'gpt-4o'), 2500 + 10000);
    });

    it('set_price is applied by both replicas within the refresh time, over BILLING_PRICES', async () => {
        let j = (await ops(stack, { action: 'set_price', model: 'gpt-4o-mini', input: '0.15', output: 0.6 })).json();
        assert.equal(j.status, 'Success', JSON.stringify(j));
        assert.deepEqual([j.data.model, j.data.input, j.data.output, j.data.source, j.data.created],
            ['gpt-4o-mini', '0.15', '0.6', 'sql', true]);
        j = (await ops(stack, { action: 'set_price', model: 'gpt-4o', input: 3, output: '12.125' })).json();
        assert.equal(j.status, 'Success', JSON.stringify(j));
        assert.equal(j.data.overrides_env, true);
        const ms = await bothCharge('gpt-4o', 3000 + 12125);
        // the prefix rule applies to SQL names as to BILLING_PRICES's
        await bothCharge('gpt-4o-mini-2024-07-18', 150 + 600);
        process.stderr.write(`# ${backend}: both replicas charged the new price after ${ms} ms\n`);
        j = (await ops(stack, { action: 'list_prices' })).json();
        const byModel = Object.fromEntries(j.data.prices.map((p) => [p.model, p]));
        assert.equal(byModel['gpt-4o'].source, 'sql');
        assert.equal(byModel['gpt-4o'].updated_by, 'opskey');
        assert.equal(byModel['gpt-4o-mini'].input_milli, 150);
        assert.equal(byModel['*'].source, 'env');
        assert.equal(j.data.version, 2);
    });

    it('a web chat is charged with the SQL price', async () => {
        await ops(stack, { action: 'register', i_username: 'pricey', i_password: 'pricey-pw-1', count: 100000 });
        const r = await streamBody(`${stack.url}/api/chat-process`, {
            method: 'POST', headers: { authorization: basicAuth('pricey', 'pricey-pw-1'), 'content-type': 'application/json' },
            body: JSON.stringify({ prompt: 'price me [[fake tokens=41]]' }), timeoutMs: 60000,
        });
        assert.equal(r.status, 200);
        let e;
        for (let i = 0; i < 100 && !e; i++) {
            const u = (await ops(stack, { action: 'usage', i_username: 'pricey' })).json();
            e = u.data.entries.find((x) => x.kind === 'charge');
            if (!e) await sleep(20);
        }
        assert.ok(e, 'the chat was settled');
        assert.match(e.model, /^gpt-4o-mini/);
        assert.equal(e.tokens_out, 41);
        assert.equal(-e.units, ceil(e.tokens_in, 150) + ceil(e.tokens_out, 600));
    });

    it('delete_price restores the BILLING_PRICES entry, or the default', async () => {
        let j = (await ops(stack, { action: 'delete_price', model: 'gpt-4o' })).json();
        assert.equal(j.status, 'Success', JSON.stringify(j));
        j = (await ops(stack, { action: 'delete_price', model: 'gpt-4o-mini' })).json();
        assert.equal(j.status, 'Success', JSON.stringify(j));
        await bothCharge('gpt-4o', 2500 + 10000);
        // no SQL price: BILLING_PRICES's gpt-4o prices gpt-4o-mini by the prefix rule
        await bothCharge('gpt-4o-mini', 2500 + 10000);
        j = (await ops(stack, { action: 'delete_price', model: 'gpt-4o' })).json();
        assert.deepEqual([j.status, j.message], ['Fail', 'record not found']);
        // "*" in SQL overrides BILLING_PRICES's default
        j = (await ops(stack, { action: 'set_price', model: '*', input: '0', output: '3' })).json();
        assert.equal(j.status, 'Success', JSON.stringify(j));
        await bothCharge('some-other-model', 3000);
        assert.equal((await ops(stack, { action: 'delete_price', model: '*' })).json().status, 'Success');
        await bothCharge('some-other-model', 1000 + 1000);
    });

    it('refuses bad models and ratios (BILLING_PRICES precision rules), changing nothing', async () => {
        const before = (await ops(stack, { action: 'list_prices' })).json().data;
        const bad = [
            [{ input: '1', output: '1' }, /model is required/],
            [{ model: 'has space', input: '1', output: '1' }, /model must be/],
            [{ model: '-x', input: '1', output: '1' }, /model must be/],
            [{ model: 'x'.repeat(128), input: '1', output: '1' }, /model must be/],
            [{ model: 'm', input: '1' }, /input and output are required/],
            [{ model: 'm', input: true, output: '1' }, /input and output are required/],
            [{ model: 'm', input: '-1', output: '1' }, /at most 3 decimals/],
            [{ model: 'm', input: '0.1234', output: '1' }, /at most 3 decimals/],
            [{ model: 'm', input: 0.1234, output: '1' }, /at most 3 decimals/],
            [{ model: 'm', input: '1e3', output: '1' }, /at most 3 decimals/],
            [{ model: 'm', input: '1000.001', output: '1' }, /at most 3 decimals/],
            [{ model: 'm', input: '1', output: '' }, /input and output are required/],
            [{ model: 'm', input: '1', output: '.5' }, /at most 3 decimals/],
        ];
        for (const [fields, re] of bad) {
            const j = (await ops(stack, { action: 'set_price', ...fields })).json();
            assert.equal(j.status, 'Fail', JSON.stringify(fields));
            assert.match(j.message, re, JSON.stringify(fields));
        }
        assert.equal((await ops(stack, { action: 'set_price', model: 'm', input: '1000', output: '0' })).json().status, 'Success');
        assert.equal((await ops(stack, { action: 'delete_price', model: 'm' })).json().status, 'Success');
        const after = (await ops(stack, { action: 'list_prices' })).json().data;
        assert.deepEqual(after.prices, before.prices);
    });

    it('audits every price write with the model as target', () => {
        const rows = auditRows(stack);
        assert.ok(rows.some((r) => r.action === 'set_price' && r.target === 'gpt-4o' && r.result === 'success'
            && r.detail === 'input=3 output=12.125' && r.actor === 'opskey'), JSON.stringify(rows));
        assert.ok(rows.some((r) => r.action === 'delete_price' && r.target === 'gpt-4o-mini' && r.result === 'success'));
        assert.ok(rows.some((r) => r.action === 'delete_price' && r.target === 'gpt-4o' && r.result === 'record not found'));
        assert.ok(rows.some((r) => r.action === 'set_price' && r.target === 'm' && /^billing: input and output must be/.test(r.result)
            && r.detail === 'input=0.1234 output=1'));
        assert.ok(!rows.some((r) => r.action === 'list_prices'), 'reads are not audited');
    });

    if (backend === 'sqlite') {
        it('events: the stream length, consumer groups with pending and lag', async () => {
            const stream = 'chatweb:billing:events';
            let j = (await ops(stack, { action: 'events' })).json();
            assert.equal(j.status, 'Success', JSON.stringify(j));
            assert.equal(j.data.stream, stream);
            assert.equal(j.data.exists, true);
            assert.ok(j.data.length > 0, `length ${j.data.length}`);
            assert.deepEqual(j.data.groups, []);
            assert.equal(j.data.redis_error, null);
            // The relay may still be moving the earlier tests' events from the outbox: compare
            // once the stream has stopped growing between the two reads.
            let len = j.data.length;
            let xlen = Number(await redisCall(stack.redisUrl, ['XLEN', stream]));
            for (let i = 0; i < 50 && len !== xlen; i++) {
                await sleep(100);
                len = (await ops(stack, { action: 'events' })).json().data.length;
                xlen = Number(await redisCall(stack.redisUrl, ['XLEN', stream]));
            }
            assert.equal(len, xlen);
            await redisCall(stack.redisUrl, ['XGROUP', 'CREATE', stream, 'ledger', '0']);
            await redisCall(stack.redisUrl, ['XREADGROUP', 'GROUP', 'ledger', 'c1', 'COUNT', '3', 'STREAMS', stream, '>']);
            // The answer reads the length and the group one after the other, and the relay may
            // append between the two reads: ask again until they agree (they must, at rest).
            let g;
            for (let i = 0; i < 50; i++) {
                j = (await ops(stack, { action: 'events' })).json();
                g = j.data.groups.find((x) => x.name === 'ledger');
                if (g.lag === j.data.length - 3) break;
                await sleep(100);
            }
            assert.deepEqual([g.consumers, g.pending, g.lag], [1, 3, j.data.length - 3]);
            assert.match(j.data.last_id, /^\d+-\d+$/);
            assert.equal(typeof j.data.outbox_pending, 'number');
        });

        it('health: each replica\'s /readyz from HEALTH_URLS', async () => {
            let j = (await ops(stack, { action: 'health' })).json();
            assert.equal(j.status, 'Success', JSON.stringify(j));
            assert.deepEqual(j.data.services.map((s) => s.name), ['auth', 'billing-1', 'billing-2', 'chat', 'proxy']);
            assert.ok(j.data.services.every((s) => s.ready && s.status === 200 && s.error === null), JSON.stringify(j.data));
            assert.deepEqual([j.data.ready, j.data.total], [5, 5]);
            await stack.services.billing[1].stop();
            j = (await ops(stack, { action: 'health' })).json();
            const b2 = j.data.services.find((s) => s.name === 'billing-2');
            assert.equal(b2.ready, false);
            assert.equal(typeof b2.error, 'string');
            assert.deepEqual([j.data.ready, j.data.total], [4, 5]);
        });
    }
});
