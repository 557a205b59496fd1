// Per-replica balance leases on the /v1 proxy (decision 46, docs/billing.md "Leases"): requests are
// admitted from a lease without a Reserve round trip, their charges reach billing in batches,
// exactly once; a balance that cannot pay is refused exactly where it runs out; a drained replica
// gives its leases back before it exits, a killed one leaves them to billing's expiry. On SQLite
// and on MariaDB.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
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
