// Scale-out on one machine (issue 11 item 5): three replicas of every service behind the local
// nginx ingress, one MariaDB, one Redis Sentinel set (1 master, 1 replica, 3 sentinels). Under
// metered /v1 traffic from several users, chat conversations that go on turn after turn and
// operator traffic (recharges, checks), one replica of every service is SIGKILLed, then another of
// every service is drained (SIGTERM: it exits 0 and no request fails meanwhile), and the Redis
// master fails over (SENTINEL FAILOVER). Then: every conversation went on with its whole history
// on the survivors, across the failover too (CHAT_CONTEXT_REPLICAS=1), every balance change has
// exactly one event in the stream (none lost, although the old master kept taking writes until
// the sentinels demoted it: BILLING_EVENTS_REPLICAS=1 makes the relay send again what the
// replica did not confirm and is not on the new master; none twice), no request is charged twice
// and every answered one is charged but those the killed proxy answered as it died, no hold
// stays open. Printed, not asserted (the machine is shared and slow): per fault, the time until
// the requests the test makes are back to normal, in 100 ms windows (see recoveryReport).
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { postJSON, request, withSentinelStack } from './lib/harness.mjs';
import { readStream } from './lib/billing-rpc.mjs';
import { redisCli } from '../../deploy/local/redis-topo.mjs';

const OPS_KEY = 'ops-key-for-scaleout-tests-0123456789';
const OPERATOR_KEY = 'sk-operator-key-for-scaleout-tests-42';
const STREAM = 'chatweb:billing:events';
const USERS = 4;
// each is SIGKILLed (replica 0), then drained (replica 1), in this order; replica 2 stays
const SERVICES = ['proxy', 'auth', 'chat', 'billing'];
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// Recovery, from the requests the test makes anyway ({kind, t0, t, ok}: start, end, success).
// They are cut into WINDOW_MS windows by their end, from the fault on; a window is normal when
// it has requests, none failed, and the p50 latency of each kind with at least 3 requests in it
// (the /v1 calls and the chat turns; ops calls are too few) is within 2x of that kind's p50 in
// the second before the first fault. Recovered: the end of the last window that was not normal
// before the next fault, when at least STEADY_WINDOWS normal ones follow it (0 ms: every window
// was normal). A late window counts too (a Sentinel failover reaches the clients a second or so
// later), so on this shared machine an unrelated slow window can only lengthen the figure.
const WINDOW_MS = 100;
const STEADY_WINDOWS = 5;
const LATENCY_KINDS = ['v1', 'chat'];

function p50(xs) {
    const s = [...xs].sort((a, b) => a - b);
    return s.length ? s[(s.length - 1) >> 1] : NaN;
}

function baselineOf(log, from, to) {
    const base = {};
    for (const k of LATENCY_KINDS)
        base[k] = p50(log.filter((e) => e.kind === k && e.ok && e.t >= from && e.t < to).map((e) => e.t - e.t0));
    return base;
}

// '.' normal, 'x' a request failed, 's' a p50 over 2x its baseline, '-' no request ended.
function windowState(log, base, from, to) {
    const es = log.filter((e) => e.t >= from && e.t < to);
    if (es.length === 0)
        return '-';
    if (es.some((e) => !e.ok))
        return 'x';
    const slow = LATENCY_KINDS.some((k) => {
        const lat = es.filter((e) => e.kind === k).map((e) => e.t - e.t0);
        return lat.length >= 3 && p50(lat) > 2 * base[k];
    });
    return slow ? 's' : '.';
}

// One line per fault ({name, t}, in time order; the last phase ends at tEnd), with its windows.
function recoveryReport(log, base, faults, tEnd) {
    return faults.map((f, i) => {
        const end = i + 1 < faults.length ? faults[i + 1].t : tEnd;
        const n = Math.floor((end - f.t) / WINDOW_MS);
        const states = Array.from({ length: n }, (_, w) => windowState(log, base, f.t + w * WINDOW_MS, f.t + (w + 1) * WINDOW_MS));
        const normal = states.map((x) => x === '.');
        const lastOff = normal.lastIndexOf(false);
        const back = n - (lastOff + 1) >= STEADY_WINDOWS ? (lastOff + 1) * WINDOW_MS : null;
        const failed = log.filter((e) => !e.ok && e.t >= f.t && e.t < end).length;
        const worst = Math.max(...normal.map((_, w) => {
            const lat = log.filter((e) => e.kind === 'v1' && e.ok && e.t >= f.t + w * WINDOW_MS && e.t < f.t + (w + 1) * WINDOW_MS);
            return lat.length ? p50(lat.map((e) => e.t - e.t0)) : 0;
        }));
        return `${f.name}: ${back === null ? `not back to normal for ${STEADY_WINDOWS} windows within ${end - f.t} ms` : `back to normal after ${back} ms`}` +
            ` (${failed} failed; ${normal.filter((x) => !x).length} of ${n} windows not normal; worst /v1 window p50 ${worst} ms)` +
            ` [${states.join('')}]`;
    });
}

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

describe('three replicas of every service, one killed, one drained, a Redis failover', () => {
    const ha = withSentinelStack({
        replicas: { auth: 3, billing: 3, chat: 3, proxy: 3 },
        mysql: true, fastMysql: true,
        fakeUpstream: true,
        fakeUpstreamEnv: { FAKE_API_KEY: OPERATOR_KEY },
        env: {
            OPS_KEY, OPENAI_KEY: OPERATOR_KEY, OPENAI_PROXY: 'true', OPENAI_MODEL: 'gpt-4o',
            PROXY_TPM_LIMIT: '0', BILLING_EVENTS_REPLICAS: '1', BILLING_RELAY_POLL_MS: '20',
            // a turn's context is confirmed by the replica, or stored again on the new master
            CHAT_CONTEXT_REPLICAS: '1',
            // a hold left by the killed proxy is charged (expired) within seconds, not 10 minutes
            BILLING_HOLD_TTL_MS: '3000', BILLING_SWEEP_INTERVAL_MS: '200',
        },
    });
    const { stack } = ha;

    it('loses no event, bills no request twice, and recovers from each fault', { timeout: 120000 }, async () => {
        const { set } = ha;
        const users = [];
        for (let i = 0; i < USERS; i++) {
            const name = `so${i}`;
            await ops(stack, { action: 'register', i_username: name, i_password: `${name}-password`, count: 10000000 });
            // an rpm far above the traffic: the rate limiter (async client, Redis) runs on every request
            const { key } = (await ops(stack, { action: 'create_key', i_username: name, name: 'k', rpm: 1000000 })).data;
            users.push({ name, key });
        }
        const log = [];   // {kind: 'v1' | 'chat' | 'ops', t0, t, ok}: every request the test makes
        const served = []; // the /v1 requests answered 200: {user, t (answered)}
        let stop = false;
        const worker = async (w) => {
            for (let n = 0; !stop; n++) {
                const u = users[(w + n) % USERS];
                let ok = false;
                const t0 = Date.now();
                try {
                    const r = await request(`${stack.url}/v1/chat/completions`, {
                        method: 'POST', headers: { authorization: `Bearer ${u.key}` }, timeoutMs: 15000,
                        json: { model: 'gpt-4o', messages: [{ role: 'user', content: `so ${w} ${n} [[fake tokens=3]]` }] },
                    });
                    ok = r.status === 200;
                    if (ok) served.push({ user: u.name, t: Date.now() });
                } catch { /* counted as failed */ }
                log.push({ kind: 'v1', t0, t: Date.now(), ok });
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
                const t0 = Date.now();
                try {
                    r = await request(`${stack.url}/api/chat-process`, {
                        method: 'POST', headers: { authorization: auth }, timeoutMs: 15000,
                        json: { prompt: `turn ${chats.turns} [[fake tokens=2]]`, options: parent ? { parentMessageId: parent } : {} },
                    });
                } catch { /* in flight on a killed replica: the same turn again */ }
                const last = r?.status === 200 ? JSON.parse(r.body.trim().split('\n').pop()) : null;
                const m = /^Echo\((\d+) msgs\)/.exec(last?.text ?? '');
                log.push({ kind: 'chat', t0, t: Date.now(), ok: !!m });
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
                        const t0 = Date.now();
                        let r = null;
                        try {
                            r = await postJSON(`${stack.url}/accounts`, { action: 'recharge', i_username: users[0].name, count: 1 },
                                { headers: { opskey: OPS_KEY, 'idempotency-key': key }, timeoutMs: 15000 });
                        } catch { /* no answer: logged as failed below */ }
                        let ok = false;
                        try { ok = r?.status === 200 && r.json().status === 'Success'; } catch { /* not JSON */ }
                        log.push({ kind: 'ops', t0, t: Date.now(), ok });
                        if (!ok) throw new Error(r?.body ?? 'no answer');
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

        // One fault at a time, 1.5 s apart, so that each one's recovery is its own.
        const faults = [];
        await sleep(2000);
        const tBase = Date.now();
        const drains = [];
        for (const name of SERVICES) {
            faults.push({ name: `SIGKILL ${name}`, t: Date.now() });
            await stack.services[name][0].stop('SIGKILL');
            await sleep(1500);
        }
        // A drained replica stops accepting, finishes what it holds and exits 0; the ingress
        // sends everything else to the last replica, so no request fails while it drains.
        for (const name of SERVICES) {
            const fault = { name: `SIGTERM ${name} (drain)`, t: Date.now() };
            faults.push(fault);
            const exit = await stack.services[name][1].stop('SIGTERM');
            drains.push({ name, exit, ms: Date.now() - fault.t, fault });
            await sleep(1500);
        }
        const oldMaster = await masterPort(set);
        const tFail = Date.now();
        faults.push({ name: 'SENTINEL FAILOVER', t: tFail });
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
        faults.push({ name: 'old master demoted', t: tDemoted });
        await sleep(3000);
        stop = true;
        const tEnd = Date.now();
        await Promise.all(workers);
        const newMaster = await masterPort(set);
        assert.notEqual(newMaster, oldMaster, 'the master changed');

        // Across the kills, the drains and the failover every conversation goes on with its whole
        // history: CHAT_CONTEXT_REPLICAS=1 stores a turn again on the new master when the old one
        // (no longer replicated) could not confirm it (docs/redis.md).
        assert.deepEqual(chats.broken.filter((b) => b.t < tFail).map((b) => b.what), [],
            'every conversation went on with its history across the kills and the drains');
        const lostAtFailover = chats.broken.filter((b) => b.t >= tFail).length;
        assert.deepEqual(chats.broken.filter((b) => b.t >= tFail).map((b) => b.what), [],
            'every conversation went on with its history across the failover');
        assert.ok(chats.turns >= 10, `${chats.turns} chat turns`);
        assert.ok(opsLog.recharges >= 5, `${opsLog.recharges} recharges`);
        const v1 = log.filter((e) => e.kind === 'v1');
        const ok = v1.filter((e) => e.ok).length;
        const failed = v1.length - ok;
        const okAfterDemotion = v1.filter((e) => e.ok && e.t > tDemoted).length;
        assert.ok(okAfterDemotion >= 10, `${okAfterDemotion} requests served after the demotion`);

        // No hold stays open (the killed proxy's expire), then the events match the balances.
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
        // Every /v1 request answered 200 is charged once under its own request id (the proxy's are
        // "px-..."): by its LeaseSync, or, for those the SIGKILLed proxy answered and had not yet
        // reported, by its lease's expiry from the charge journal it wrote to Redis before
        // answering (decision 58); a request of the exact path by its Settle or its hold's expiry.
        let unbilled = 0, fromJournal = 0;
        const chargedBy = new Map(); // event id -> username, once per event
        for (const e of events)
            if ((e.json.type === 'charge' || e.json.type === 'expiry') && e.json.request_id.startsWith('px-'))
                chargedBy.set(e.id, e.json.username);
        for (const e of events)
            if (e.json.type === 'charge' && e.json.note.startsWith('from the charge journal')) fromJournal++;
        for (const u of users) {
            const charges = [...chargedBy.values()].filter((name) => name === u.name).length;
            const answered = served.filter((x) => x.user === u.name);
            const missing = answered.length - charges;
            unbilled += Math.max(0, missing);
            assert.ok(missing <= 0, `${u.name}: ${answered.length} /v1 requests answered, ${charges} charged`);
        }
        const dupes = events.length - new Set(events.map((e) => e.id)).size;
        // Where the re-sent copies landed: an XADD's stream id starts with the master's clock (ms).
        const firsts = new Set();
        const resent = { before: 0, during: 0, after: 0 };   // the failover, the demotion
        for (const e of events) {
            const at = Number(e.streamId.split('-')[0]);
            if (!firsts.has(e.id)) firsts.add(e.id);
            else resent[at < tFail ? 'before' : at < tDemoted ? 'during' : 'after']++;
        }
        // An event XADDed but not confirmed by the replica is looked for in the stream before
        // it is sent again (billing relay.c stream_has): sent once, even across the failover
        // and the lease moving off the killed and the drained billing replicas (1,400 copies
        // per run before).
        assert.deepEqual(resent, { before: 0, during: 0, after: 0 }, 'no event is in the stream twice');
        const base = baselineOf(log, tBase - 1000, tBase);
        process.stderr.write(`# scale-out: ${ok} /v1 requests served, ${failed} failed; old master demoted ` +
            `${tDemoted - tFail} ms after SENTINEL FAILOVER, ${okAfterDemotion} served after it; ` +
            `${events.length} stream entries, ${dupes} re-sent duplicates ` +
            `(written before SENTINEL FAILOVER ${resent.before}, between it and the demotion ${resent.during}, after ${resent.after}); ` +
            `${unbilled} of ${served.length} /v1 requests answered not charged (${fromJournal} charged from the SIGKILLed proxy's journal); ` +
            `${chats.turns} chat turns (${chats.failed} retried; ${lostAtFailover} went on without history after the failover), ` +
            `${opsLog.recharges} recharges (${opsLog.failed} failed); drained in ` +
            `${drains.map((d) => `${d.name} ${d.ms} ms`).join(', ')}\n` +
            `# recovery, ${WINDOW_MS} ms windows (normal: no failed request, p50 within 2x of the baseline: ` +
            `/v1 ${base.v1} ms, chat ${base.chat} ms; back: after the last window that was not normal):\n` +
            recoveryReport(log, base, faults, tEnd).map((l) => `#   ${l}\n`).join(''));
    });
});
