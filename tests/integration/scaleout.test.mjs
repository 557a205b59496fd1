// Scale-out on one machine (issue 11 item 5): two replicas of every service (three of billing)
// behind the local nginx ingress, one MariaDB, one Redis Sentinel set (1 master, 1 replica, 3
// sentinels). Under metered /v1 traffic from several users, chat conversations that go on turn
// after turn and operator traffic (recharges, checks), one replica of every service is SIGKILLed,
// another billing replica is drained (SIGTERM), and the Redis master fails over (SENTINEL
// FAILOVER). Then: every conversation went on with its whole history on the survivors, every
// balance change has exactly one event after de-dup (none lost, although the old master kept
// taking writes until the sentinels demoted it: BILLING_EVENTS_REPLICAS=1 makes the relay resend
// what the replica did not confirm), no request is charged twice, no hold stays open, and the
// time until the stack served again after each fault is printed.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { postJSON, request, tempDir, withStack } from './lib/harness.mjs';
import { readStream } from './lib/billing-rpc.mjs';
import { redisCli, startRedisSentinelSet } from '../../deploy/local/redis-topo.mjs';

const OPS_KEY = 'ops-key-for-scaleout-tests-0123456789';
const OPERATOR_KEY = 'sk-operator-key-for-scaleout-tests-42';
const STREAM = 'chatweb:billing:events';
const USERS = 4;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function ops(stack, body) {
    const r = await postJSON(`${stack.url}/accounts`, body, { headers: { opskey: OPS_KEY }, timeoutMs: 20000 });
    assert.equal(r.status, 200, r.body);
    assert.equal(r.json().status, 'Success', `${body.action}: ${r.body}`);
    return r.json();
}

async function masterPort(set) {
    for (const s of set.sentinels) {
        try {
            const out = (await redisCli(s.port, null, 'SENTINEL', 'get-master-addr-by-name', set.name)).trim().split('\n');
            return Number(out[1]);
        } catch { /* the next sentinel */ }
    }
    throw new Error('no sentinel answered');
}

describe('two replicas of every service, a replica killed, one drained, a Redis failover', () => {
    let set = null;
    const dir = tempDir('chatweb-scaleout-');
    const opts = {
        replicas: { auth: 2, billing: 3, chat: 2, proxy: 2 },
        mysql: true, fastMysql: true,
        fakeUpstream: true,
        fakeUpstreamEnv: { FAKE_API_KEY: OPERATOR_KEY },
        env: {
            OPS_KEY, OPENAI_KEY: OPERATOR_KEY, OPENAI_PROXY: 'true', OPENAI_MODEL: 'gpt-4o',
            PROXY_TPM_LIMIT: '0', BILLING_EVENTS_REPLICAS: '1', BILLING_RELAY_POLL_MS: '20',
            // a hold left by the killed proxy is charged (expired) within seconds, not 10 minutes
            BILLING_HOLD_TTL_MS: '3000', BILLING_SWEEP_INTERVAL_MS: '200',
        },
    };
    before(async () => {
        set = await startRedisSentinelSet({ dir: path.join(dir, 'sentinel') });
        opts.redisUrl = set.url;
    }, { timeout: 60000 });
    const stack = withStack(opts);
    after(async () => {
        for (const h of [...(set?.sentinels || []), set?.replica, set?.master]) if (h) await h.handle.stop().catch(() => {});
        if (!process.env.KEEP_TEST_DIRS) fs.rmSync(dir, { recursive: true, force: true });
    });

    it('loses no event, bills no request twice, and recovers from each fault', { timeout: 120000 }, async () => {
        const users = [];
        for (let i = 0; i < USERS; i++) {
            const name = `so${i}`;
            await ops(stack, { action: 'register', i_username: name, i_password: `${name}-password`, count: 10000000 });
            // an rpm far above the traffic: the rate limiter (async client, Redis) runs on every request
            const { key } = (await ops(stack, { action: 'create_key', i_username: name, name: 'k', rpm: 1000000 })).data;
            users.push({ name, key });
        }
        const log = [];   // {t, ok}
        let stop = false;
        const worker = async (w) => {
            for (let n = 0; !stop; n++) {
                const u = users[(w + n) % USERS];
                let ok = false;
                try {
                    const r = await request(`${stack.url}/v1/chat/completions`, {
                        method: 'POST', headers: { authorization: `Bearer ${u.key}` }, timeoutMs: 15000,
                        json: { model: 'gpt-4o', messages: [{ role: 'user', content: `so ${w} ${n} [[fake tokens=3]]` }] },
                    });
                    ok = r.status === 200;
                } catch { /* counted as failed */ }
                log.push({ t: Date.now(), ok });
                if (!ok) await sleep(20);
            }
        };
        // Chat: one conversation per worker, each turn continuing the last one (the fake answers
        // "Echo(<messages it was sent>)"). The count grows until the context budget caps it; a
        // lost history shows as a count that falls back to the first turn's.
        const chats = { turns: 0, failed: 0, broken: [] };
        const chatWorker = async (w) => {
            const u = users[w % USERS];
            const auth = `Basic ${Buffer.from(`${u.name}:${u.name}-password`).toString('base64')}`;
            let parent = null;
            let msgs = 0;
            while (!stop) {
                let r = null;
                try {
                    r = await request(`${stack.url}/api/chat-process`, {
                        method: 'POST', headers: { authorization: auth }, timeoutMs: 15000,
                        json: { prompt: `turn ${chats.turns} [[fake tokens=2]]`, options: parent ? { parentMessageId: parent } : {} },
                    });
                } catch { /* in flight on a killed replica: the same turn again */ }
                const last = r?.status === 200 ? JSON.parse(r.body.trim().split('\n').pop()) : null;
                const m = /^Echo\((\d+) msgs\)/.exec(last?.text ?? '');
                if (!m) {
                    chats.failed++;
                    await sleep(50);
                    continue;
                }
                const seen = Number(m[1]);
                if (seen < Math.min(msgs, 10)) chats.broken.push({ t: Date.now(), what: `worker ${w}: ${seen} messages after ${msgs}` });
                msgs = seen;
                parent = last.id;
                chats.turns++;
            }
        };
        // Operators: a recharge with an idempotency key, sent twice, and a check, over and over.
        const opsLog = { recharges: 0, failed: 0 };
        const opsWorker = async () => {
            for (let n = 0; !stop; n++) {
                const key = `so-recharge-${n}`;
                try {
                    for (let again = 0; again < 2; again++) {
                        const r = await postJSON(`${stack.url}/accounts`, { action: 'recharge', i_username: users[0].name, count: 1 },
                            { headers: { opskey: OPS_KEY, 'idempotency-key': key }, timeoutMs: 15000 });
                        if (r.status !== 200 || r.json().status !== 'Success') throw new Error(r.body);
                    }
                    opsLog.recharges++;
                } catch {
                    opsLog.failed++;
                    opsLog.unsure = (opsLog.unsure || 0) + 1; // its key may or may not have credited
                }
                await sleep(30);
            }
        };
        const workers = [...Array.from({ length: 6 }, (_, w) => worker(w)),
            ...Array.from({ length: 2 }, (_, w) => chatWorker(w)), opsWorker()];
        const firstOkAfter = (t) => log.find((e) => e.t > t && e.ok)?.t;

        await sleep(1500);
        const tKill = Date.now();
        for (const name of ['proxy', 'auth', 'chat', 'billing'])
            await stack.services[name][0].stop('SIGKILL');
        await sleep(1500);
        const tDrain = Date.now();
        await stack.services.billing[1].stop('SIGTERM');
        await sleep(1500);
        const oldMaster = await masterPort(set);
        const tFail = Date.now();
        for (let i = 0; ; i++) {
            try {
                await redisCli(set.sentinels[0].port, null, 'SENTINEL', 'FAILOVER', set.name);
                break;
            } catch (e) {
                if (i > 50) throw e;
                await sleep(200);
            }
        }
        // until the old master was demoted and the stack kept serving for a while after it
        let tDemoted = 0;
        for (const end = Date.now() + 40000; Date.now() < end; await sleep(200)) {
            const role = await redisCli(oldMaster, set.password, 'ROLE').catch(() => '');
            if (/^slave/m.test(role)) { tDemoted = Date.now(); break; }
        }
        assert.ok(tDemoted, 'the sentinels demoted the old master');
        await sleep(3000);
        stop = true;
        await Promise.all(workers);
        const newMaster = await masterPort(set);
        assert.notEqual(newMaster, oldMaster, 'the master changed');

        // Across the kills and the drain every conversation goes on with its whole history. At the
        // Redis failover the context written to the old master in its last moments may not have
        // reached the replica (asynchronous replication, docs/redis.md "Known limits"): such a
        // conversation goes on without its history; counted and printed, not hidden.
        assert.deepEqual(chats.broken.filter((b) => b.t < tFail).map((b) => b.what), [],
            'every conversation went on with its history across the kills and the drain');
        const lostAtFailover = chats.broken.filter((b) => b.t >= tFail).length;
        assert.ok(chats.turns >= 10, `${chats.turns} chat turns`);
        assert.ok(opsLog.recharges >= 5, `${opsLog.recharges} recharges`);
        const ok = log.filter((e) => e.ok).length;
        const failed = log.length - ok;
        const okAfterDemotion = log.filter((e) => e.ok && e.t > tDemoted).length;
        assert.ok(okAfterDemotion >= 10, `${okAfterDemotion} requests served after the demotion`);

        // No hold stays open (the killed proxy's expire), then the events match the balances.
        const ms = (t) => (t ? `${t} ms` : 'never');
        const ownerUrl = `redis://default:${set.password}@127.0.0.1:${newMaster}/0`;
        let events = [];
        const checks = [];
        for (const u of users) {
            let acct;
            for (const end = Date.now() + 20000; Date.now() < end; await sleep(200)) {
                acct = (await ops(stack, { action: 'check', i_username: u.name })).data;
                if (acct.held === 0) break;
            }
            assert.equal(acct.held, 0, `${u.name}: no hold left open`);
            checks.push({ u, acct });
        }
        for (const { u, acct } of checks) {
            let mine = [];
            for (const end = Date.now() + 20000; Date.now() < end; await sleep(200)) {
                events = await readStream(ownerUrl, STREAM);
                const seen = new Set();
                mine = events.filter((e) => e.json.username === u.name && !seen.has(e.id) && seen.add(e.id));
                if (mine.length && mine.at(-1).json.balance_after === acct.balance) break;
            }
            mine.forEach((e, i) => assert.equal(e.json.user_seq, i + 1, `${u.name}: events in user_seq order, no gap (lost event) at ${i + 1}`));
            assert.equal(mine.reduce((a, e) => a + e.json.units, 0), acct.balance, `${u.name}: the events add up to the balance`);
            assert.equal(mine.at(-1).json.balance_after, acct.balance);
            const charged = new Map();
            for (const e of mine.filter((x) => x.json.type === 'charge' || x.json.type === 'expiry')) {
                assert.ok(!charged.has(e.json.request_id), `${u.name}: request ${e.json.request_id} charged twice`);
                charged.set(e.json.request_id, e);
            }
        }
        const dupes = events.length - new Set(events.map((e) => e.id)).size;
        process.stderr.write(`# scale-out: ${ok} requests served, ${failed} failed; first success after the kill ` +
            `${ms(firstOkAfter(tKill) - tKill)}, after the drain ${ms(firstOkAfter(tDrain) - tDrain)}, ` +
            `after SENTINEL FAILOVER ${ms(firstOkAfter(tFail) - tFail)}; old master demoted after ${tDemoted - tFail} ms, ` +
            `${okAfterDemotion} served after it; ${events.length} stream entries, ${dupes} re-sent duplicates; ` +
            `${chats.turns} chat turns (${chats.failed} retried; ${lostAtFailover} went on without history after the failover), ` +
            `${opsLog.recharges} recharges (${opsLog.failed} failed)\n`);
    });
});
