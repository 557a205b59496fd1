// Per-replica balance leases on the /v1 proxy (decision 46, docs/billing.md "Leases"): requests are
// admitted from a lease without a Reserve round trip, their charges reach billing in batches,
// exactly once; a balance that cannot pay is refused exactly where it runs out; a drained replica
// gives its leases back before it exits, a killed one leaves them to billing's expiry. On SQLite
// and on MariaDB.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { redisCall } from './lib/billing-rpc.mjs';
import { postJSON, request, withStack } from './lib/harness.mjs';

const OPS_KEY = 'ops-key-for-lease-tests-0123456789';
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function ops(stack, body) {
    const r = await postJSON(`${stack.url}/accounts`, body, { headers: { opskey: OPS_KEY } });
    return r.json();
}

async function userWithKey(stack, name, count) {
    await ops(stack, { action: 'register', i_username: name, i_password: `${name}-password`, count });
    const d = (await ops(stack, { action: 'create_key', i_username: name, name: 'k' })).data;
    return { name, key: d.key };
}

const check = async (stack, name) => (await ops(stack, { action: 'check', i_username: name })).data;

/** Waits until no hold or lease of the user is open; returns the account then. */
async function settled(stack, name, ms = 15000) {
    let now;
    for (const t0 = Date.now(); Date.now() - t0 < ms;) {
        now = await check(stack, name);
        if (now.held === 0) return now;
        await sleep(50);
    }
    assert.fail(`units still held after ${ms} ms: ${JSON.stringify(now)}`);
}

function metric(body, name) {
    const line = body.split('\n').find((l) => l.startsWith(`${name} `));
    return line === undefined ? 0 : Number(line.slice(name.length + 1));
}

async function billingMetrics(stack) {
    const bodies = await Promise.all(stack.services.billing.map(async (b) => (await request(`${b.adminUrl}/metrics`)).body));
    const sum = (name) => bodies.reduce((a, b) => a + metric(b, name), 0);
    return { reserves: sum('billing_reserve_total') + sum('billing_reserve_refused_total'), syncs: sum('billing_lease_sync_total'), charges: sum('billing_lease_charges_total') };
}

function chat(base, key, content, extra = {}) {
    return postJSON(`${base}/v1/chat/completions`, { model: 'gpt-4o-mini', messages: [{ role: 'user', content }], ...extra },
        { headers: { authorization: `Bearer ${key}` } });
}

for (const backend of ['sqlite', 'mariadb']) describe(`balance leases on the /v1 proxy (${backend})`, () => {
    const stack = withStack({
        replicas: { proxy: 2 },
        mysql: backend === 'mariadb',
        env: {
            OPS_KEY, OPENAI_PROXY: 'true', PROXY_RPM_LIMIT: '0', PROXY_TPM_LIMIT: '0',
            PROXY_LEASE_IDLE_MS: '300', BILLING_LEASE_TTL_MS: '3000', BILLING_SWEEP_INTERVAL_MS: '200',
        },
    });
    const base = (i) => stack.services.proxy[i].url;

    it('requests are admitted from a lease: no Reserve call, each charge reported once, usage exact', async () => {
        const u = await userWithKey(stack, 'lease1', 1000000000); // 60 at once may ask for 128k each
        const before = await check(stack, u.name);
        const m0 = await billingMetrics(stack);
        let used = 0;
        for (let i = 0; i < 30; i++) {
            const r = await chat(base(0), u.key, `one by one ${i} [[fake tokens=7]]`);
            assert.equal(r.status, 200);
            used += (await r.json()).usage.total_tokens;
        }
        const answers = await Promise.all(Array.from({ length: 60 }, (_, i) => chat(base(i % 2), u.key, `all at once ${i} [[fake tokens=5]]`)));
        for (const r of answers) {
            assert.equal(r.status, 200);
            used += (await r.json()).usage.total_tokens;
        }
        const now = await settled(stack, u.name);
        assert.equal(now.usage - before.usage, used, 'usage moved by exactly the upstream\'s usage');
        assert.equal(before.balance - now.balance, used, 'and the balance by the same');
        const m1 = await billingMetrics(stack);
        assert.equal(m1.reserves - m0.reserves, 0, 'no Reserve call');
        assert.equal(m1.charges - m0.charges, 90, 'one charge per request');
        assert.ok(m1.syncs - m0.syncs < 90, `charges are reported in batches (${m1.syncs - m0.syncs} LeaseSync calls)`);
    });

    it('the end of a balance: a 40-way race never goes below zero, one request after another is exact', async () => {
        const probe = await userWithKey(stack, 'lease2probe', 1000000);
        const body = 'count me [[fake tokens=10]]';
        const p = (await (await chat(base(0), probe.key, body, { max_tokens: 10 })).json()).usage.prompt_tokens;
        const cost = p + 10;
        // 40 at once over both replicas (4 event loops) on a balance for 10
        const u = await userWithKey(stack, 'lease2', 10 * cost + Math.floor(cost / 2));
        const answers = await Promise.all(Array.from({ length: 40 }, (_, i) => chat(base(i % 2), u.key, body, { max_tokens: 10 })));
        const ok = answers.filter((r) => r.status === 200).length;
        for (const r of answers.filter((x) => x.status !== 200)) {
            assert.equal(r.status, 429);
            assert.equal((await r.json()).error.code, 'insufficient_quota');
        }
        let now = await settled(stack, u.name);
        assert.ok(now.balance >= 0, `never below zero (${now.balance})`);
        assert.ok(ok >= 1 && ok <= 10, `${ok} answered`);
        assert.equal(now.usage, ok * cost, 'each answered request charged its usage, nothing else');
        assert.equal(now.balance, 10 * cost + Math.floor(cost / 2) - ok * cost);
        // one after another, alternating replicas: exactly what the balance pays, then refused
        const v = await userWithKey(stack, 'lease2seq', 10 * cost + Math.floor(cost / 2));
        const statuses = [];
        for (let i = 0; i < 12; i++) statuses.push((await chat(base(i % 2), v.key, body, { max_tokens: 10 })).status);
        assert.deepEqual(statuses, [...Array(10).fill(200), 429, 429]);
        now = await settled(stack, v.name);
        assert.equal(now.usage, 10 * cost);
    });

    it('SIGTERM: a draining replica reports its charges and gives its leases back before it exits', async () => {
        const u = await userWithKey(stack, 'lease3', 10000000);
        const before = await check(stack, u.name);
        const victim = stack.services.proxy[1];
        let used = 0;
        for (let i = 0; i < 10; i++) {
            const r = await chat(victim.url, u.key, `drain ${i} [[fake tokens=3]]`);
            used += (await r.json()).usage.total_tokens;
        }
        process.kill(victim.pid, 'SIGTERM');
        const info = await victim.exited;
        assert.equal(info.code, 0, JSON.stringify(info));
        const now = await check(stack, u.name);
        assert.equal(now.held, 0, 'nothing held once the replica is gone');
        assert.equal(now.usage - before.usage, used, 'every charge was reported');
    });

    it('SIGKILL mid-stream: the lease expires, what was in flight is charged in full, the rest comes back', async () => {
        const u = await userWithKey(stack, 'lease4', 10000000);
        const before = await check(stack, u.name);
        const victim = stack.services.proxy[0];
        const pending = chat(victim.url, u.key, 'slow [[fake tps=5 tokens=100]]', { max_tokens: 200 }).catch((e) => ({ error: e }));
        await sleep(600);
        const during = await check(stack, u.name);
        assert.ok(during.held > 0, 'the lease holds units');
        await victim.kill();
        await pending;
        const now = await settled(stack, u.name, 20000);
        assert.ok(now.usage > before.usage, 'the request in flight was charged');
        assert.ok(now.usage - before.usage <= during.held, 'no more than the lease held');
        assert.equal(before.balance - now.balance, now.usage - before.usage, 'balance and usage moved together');
        assert.ok(now.balance >= 0);
    });
});

// The charge journal (decision 58, docs/billing.md "The charge journal"): a replica writes what it
// admits and what each request cost to Redis as it happens, so one killed before its next LeaseSync
// is charged exactly by the lease's expiry, instead of only what it had reported in flight.
describe('the charge journal: a replica killed before it reported its charges', () => {
    const stack = withStack({
        env: {
            OPS_KEY, OPENAI_PROXY: 'true', PROXY_RPM_LIMIT: '0', PROXY_TPM_LIMIT: '0',
            // charges wait up to 1 s for their LeaseSync, the renewal comes 1 s after an answer:
            // the requests below end well inside that window
            PROXY_LEASE_FLUSH_MS: '1000', BILLING_LEASE_TTL_MS: '4000', BILLING_SWEEP_INTERVAL_MS: '200',
            WORKERS: '1', // one loop, so one lease: its size is known
        },
    });
    const journals = async () => (await redisCall(stack.redisUrl, ['KEYS', 'cw:lj:*'])).map(String);

    it('every request it answered is charged its usage; the journal is gone after the expiry', async () => {
        const u = await userWithKey(stack, 'journal1', 10000000);
        const before = await check(stack, u.name);
        const victim = stack.services.proxy[0];
        // the first request sizes the lease (4 of its worst case); the 19 small ones after it fit
        // in it, so no LeaseSync is due before the flush or the renewal
        const first = await chat(victim.url, u.key, 'journal first [[fake tokens=11]]', { max_tokens: 4096 });
        assert.equal(first.status, 200);
        let used = (await first.json()).usage.total_tokens;
        const answers = await Promise.all(Array.from({ length: 19 }, (_, i) =>
            chat(victim.url, u.key, `journal ${i} [[fake tokens=${3 + i}]]`, { max_tokens: 32 })));
        for (const r of answers) {
            assert.equal(r.status, 200);
            used += (await r.json()).usage.total_tokens;
        }
        const keys = await journals();
        assert.equal(keys.length, 1, `one lease, one journal: ${keys}`);
        const entries = [];
        for (const k of keys) {
            const fields = (await redisCall(stack.redisUrl, ['HGETALL', k])).map(String);
            assert.equal(fields[fields.indexOf('_') + 1], 'ok', k);
            assert.ok(!fields.includes('_b'), `no LeaseSync has carried a charge yet: ${fields}`);
            entries.push(...fields.filter((_, i) => i % 2 === 1 && !fields[i - 1].startsWith('_')));
        }
        assert.equal(entries.length, 20, `no charge reported yet, each in the journal: ${entries.join('|')}`);
        assert.ok(entries.every((v) => /^e \d+ \d+ \d+ 0 px-\S+ gpt-4o-mini$/.test(v)), entries.join('|'));
        await victim.kill();
        const now = await settled(stack, u.name, 20000);
        assert.equal(now.usage - before.usage, used, 'usage moved by exactly what the killed replica answered');
        assert.equal(before.balance - now.balance, used, 'and the balance by the same');
        assert.deepEqual(await journals(), [], 'the sweeper dropped the journal');
        // each request its own charge row, as its LeaseSync would have written
        const rows = (await ops(stack, { action: 'usage', i_username: u.name, limit: 100 })).data.entries;
        const charges = rows.filter((r) => r.kind === 'charge');
        assert.equal(charges.length, 20);
        assert.equal(new Set(charges.map((r) => r.request_id)).size, 20);
        assert.ok(charges.every((r) => r.request_id.startsWith('px-') && r.model === 'gpt-4o-mini' &&
            r.note === 'from the charge journal of its expired lease'), JSON.stringify(charges[0]));
        assert.equal(rows.filter((r) => r.kind === 'expiry').length, 0, 'nothing was in flight');
    });
});
