// The billing service against real servers: two chatweb-billing replicas sharing one SQL database
// (SQLite file, then MariaDB) and one Redis, driven over the protobuf RPC (proto/billing.proto).
// Covers issue 4's "done when": the race (exact successes, no overdraft, ledger == balance), the
// crash between Reserve and Settle (expiry), the Redis outage (outbox -> stream, in order), the
// idempotency of Settle and Recharge, and the unhappy paths (malformed protobuf, unknown user,
// bad units, SQL down -> clean RPC errors and /readyz 503).
import assert from 'node:assert/strict';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import { defaultBinDir, startMariadb, startRedis, startService, tempDir } from './lib/harness.mjs';
import { httpGet } from '../../deploy/local/stack.mjs';
import { billingClient, postRaw, readStream } from './lib/billing-rpc.mjs';
import { redisCli, startRedisSentinelSet } from '../../deploy/local/redis-topo.mjs';

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function waitFor(what, fn, timeoutMs = 15000, everyMs = 50) {
    const t0 = Date.now();
    let last;
    for (;;) {
        try {
            last = await fn();
            if (last) return last;
        } catch (err) {
            last = err;
        }
        if (Date.now() - t0 > timeoutMs) throw new Error(`timed out waiting for ${what}: ${last?.message ?? last}`);
        await sleep(everyMs);
    }
}

/** Every ledger row of a user, oldest first, through the Usage RPC (pages of 500). */
async function ledger(b, userId) {
    const rows = [];
    let before = 0;
    for (;;) {
        const u = await b.ok('Usage', { user_id: userId, limit: 500, before_id: before });
        rows.push(...u.entries);
        if (!u.next_before_id) break;
        before = u.next_before_id;
    }
    return rows.reverse();
}

/** Asserts the money invariants of one user with no open holds. Returns the ledger. */
async function assertConsistent(b, userId, { forced = false } = {}) {
    const acct = (await b.ok('GetAccount', { user_id: userId })).account;
    const rows = await ledger(b, userId);
    const sum = rows.reduce((s, r) => s + r.units, 0);
    assert.equal(acct.held, 0, 'no hold left open');
    assert.equal(sum, acct.granted - acct.used, 'sum(ledger) == granted - used');
    assert.equal(sum, acct.balance, 'sum(ledger) == balance');
    let running = 0;
    for (const r of rows) {
        running += r.units;
        assert.equal(r.balance_after, running, `balance_after of ledger row ${r.id}`);
        if (!forced) assert.ok(r.balance_after >= 0, `ledger row ${r.id} balance_after ${r.balance_after} >= 0`);
    }
    return rows;
}

/** Waits until the stream holds one event (after de-dup by id) per ledger row of the user, in user_seq order. */
async function assertEvents(redisUrl, stream, userId, rows) {
    const ids = new Set(rows.map((r) => `bl-${r.id}`));
    const events = await waitFor(`events of user ${userId}`, async () => {
        const all = (await readStream(redisUrl, stream)).filter((e) => e.json.user_id === userId);
        const seen = new Set(all.map((e) => e.id));
        return [...ids].every((id) => seen.has(id)) ? all : null;
    }, 15000, 100);
    const seen = new Set();
    const firsts = [];
    for (const e of events) {
        assert.equal(e.v, '1');
        assert.equal(e.pb.event_id, e.id);
        assert.equal(e.json.event_id, e.id);
        assert.equal(e.type, e.pb.type);
        assert.equal(Number(e.pb.units), e.json.units);
        if (!seen.has(e.id)) { seen.add(e.id); firsts.push(e); }
    }
    assert.equal(firsts.length, rows.length, 'one event per ledger row after de-dup');
    firsts.forEach((e, i) => assert.equal(e.json.user_seq, i + 1, 'events in user_seq order, no gaps'));
    const byLedger = new Map(rows.map((r) => [r.id, r]));
    for (const e of firsts) {
        const r = byLedger.get(e.json.ledger_id);
        assert.ok(r, `event ${e.id} has its ledger row`);
        assert.equal(e.json.units, r.units);
        assert.equal(e.json.type, r.kind);
        assert.equal(e.json.balance_after, r.balance_after);
    }
    return { events, firsts };
}

for (const backend of ['sqlite', 'mariadb']) {
    describe(`billing on ${backend}`, () => {
        const STREAM = `test:${backend}:billing:events`;
        const env = {
            LOG_LEVEL: 'notice', WORKERS: '2',
            BILLING_HOLD_TTL_MS: '1500', BILLING_SWEEP_INTERVAL_MS: '100', BILLING_RELAY_LEASE_MS: '1000',
            BILLING_RELAY_POLL_MS: '20', BILLING_MIN_REPLY_TOKENS: '10', BILLING_EVENTS_STREAM: STREAM,
            BILLING_PRICES: 'priced=2.5:10,cheap=0.001:0.001',
        };
        let dir, redis, mariadb;
        const replicas = [];
        const clients = [];
        let uid = backend === 'sqlite' ? 1000 : 2000;
        const nextUser = () => ++uid;

        const startReplica = async (i) => {
            replicas[i] = await startService('billing', { env, dir, replica: i + 1, readyTimeoutMs: 20000 });
            clients[i] = billingClient(replicas[i].url);
        };

        before(async () => {
            dir = tempDir(`chatweb-billing-${backend}-`);
            redis = await startRedis({ dir: path.join(dir, 'redis'), persist: true });
            env.REDIS_URL = redis.url;
            if (backend === 'mariadb') {
                mariadb = await startMariadb({ dir: path.join(dir, 'mariadb'), fast: true });
                env.DB = mariadb.dsn;
            }
            await startReplica(0);
            await startReplica(1);
        }, { timeout: 120000 });

        after(async () => {
            for (const c of clients) c?.close();
            for (const r of replicas) await r?.stop().catch(() => {});
            await mariadb?.stop().catch(() => {});
            await redis?.stop().catch(() => {});
            if (process.env.KEEP_TEST_DIRS !== '1') (await import('node:fs')).rmSync(dir, { recursive: true, force: true });
            else process.stderr.write(`# kept ${dir}\n`);
        }, { timeout: 60000 });

        it('race: 200 concurrent reserve/settle cycles on two replicas, exactly N succeed', async () => {
            const N = 120;
            const user = nextUser();
            const [a, b] = clients;
            await a.ok('CreateAccount', { user_id: user, username: `race${user}`, initial_units: 100 * N });
            let minSeen = Infinity;
            let polling = true;
            const poller = (async () => {
                while (polling) {
                    const acct = (await b.ok('GetAccount', { user_id: user })).account;
                    minSeen = Math.min(minSeen, acct.balance);
                    await sleep(2);
                }
            })();
            const t0 = Date.now();
            const results = await Promise.all(Array.from({ length: 200 }, async (_, i) => {
                const rid = `race-${backend}-${user}-${i}`;
                const r = await (i % 2 ? a : b).ok('Reserve', {
                    request_id: rid, user_id: user, model: 'm', prompt_tokens: 40, max_completion_tokens: 60, source: 'chat',
                });
                if (r.result !== 'RESERVE_OK') {
                    assert.equal(r.result, 'RESERVE_INSUFFICIENT');
                    return 0;
                }
                assert.equal(r.completion_limit, 60);
                assert.equal(r.held_units, 100);
                assert.ok(r.balance >= 0);
                const s = await (i % 2 ? b : a).ok('Settle', { request_id: rid, prompt_tokens: 40, completion_tokens: 60 });
                assert.equal(s.charged_units, 100);
                assert.equal(s.already_settled, false);
                return 1;
            }));
            const ms = Date.now() - t0;
            polling = false;
            await poller;
            const ok = results.reduce((x, y) => x + y, 0);
            assert.equal(ok, N, 'exactly N cycles succeeded');
            assert.ok(minSeen >= 0, `balance never below zero (min seen ${minSeen})`);
            const rows = await assertConsistent(a, user);
            const acct = (await a.ok('GetAccount', { user_id: user })).account;
            assert.equal(acct.balance, 0);
            assert.equal(acct.used, 100 * N);
            assert.equal(rows.length, N + 1, 'one recharge row + N charge rows');
            await assertEvents(env.REDIS_URL, STREAM, user, rows);
            process.stderr.write(`# ${backend}: race 200 cycles, ${N} ok, ${ms} ms\n`);
        });

        describe('LeaseSync', () => {
            it('a replay of the same (lease_id, seq) with charges charges once, on either replica', async () => {
                const [a, b] = clients;
                const user = nextUser();
                await a.ok('CreateAccount', { user_id: user, initial_units: 1000 });
                const id = `lease-${backend}-${user}`;
                const s1 = await a.ok('LeaseSync', {
                    lease_id: id, user_id: user, seq: 1, want_units: 300, models: ['priced-2024', 'm'], source: 'proxy',
                });
                assert.equal(s1.result, 'RESERVE_OK');
                assert.equal(s1.units, 250, 'a lease grows by a quarter of the free balance at most');
                assert.equal(s1.balance, 750);
                assert.equal(s1.closed, false);
                assert.ok(s1.expires_at_ms > Date.now());
                assert.deepEqual(s1.prices.map((p) => [p.model, p.input_milli, p.output_milli, p.source]),
                    [['priced-2024', 2500, 10000, 'env'], ['m', 1000, 1000, 'default']]);
                // priced=2.5:10: 4 prompt -> 10, 2 completion -> 20
                const req = {
                    lease_id: id, user_id: user, seq: 2, inflight_units: 10, want_units: 300, source: 'proxy',
                    charges: [{ request_id: `${id}-r1`, model: 'priced', prompt_tokens: 4, completion_tokens: 2 }],
                };
                const [x, y] = await Promise.all([a.ok('LeaseSync', req), b.ok('LeaseSync', req)]);
                assert.deepEqual([x.duplicate, y.duplicate].sort(), [false, true]);
                assert.equal(x.charged_units + y.charged_units, 30, 'charged once');
                const z = await a.ok('LeaseSync', req);
                assert.equal(z.duplicate, true);
                assert.equal(z.charged_units, 0);
                assert.equal(z.units, 300);
                let acct = (await b.ok('GetAccount', { user_id: user })).account;
                assert.equal(acct.used, 30);
                assert.equal(acct.held, 300);
                assert.equal(acct.balance, 670);
                // a lease is not a hold, and a hold id is not a lease
                const st = await a.call('Settle', { request_id: id, prompt_tokens: 1, completion_tokens: 1 });
                assert.equal(st.status, 409);
                assert.match(st.error.message, /lease/);
                await a.ok('Reserve', { request_id: `hold-${id}`, user_id: user, prompt_tokens: 1, max_completion_tokens: 1 });
                const hl = await a.call('LeaseSync', { lease_id: `hold-${id}`, user_id: user, seq: 1 });
                assert.equal(hl.status, 409);
                await a.ok('Release', { request_id: `hold-${id}` });
                for (const bad of [{ seq: 0 }, { want_units: -1 }, { lease_id: '' }]) {
                    const r = await a.call('LeaseSync', { ...req, seq: 9, ...bad });
                    assert.equal(r.status, 400, JSON.stringify(bad));
                    assert.equal(r.error.code, -1);
                }
                const c = await b.ok('LeaseSync', { lease_id: id, user_id: user, seq: 3, close: true });
                assert.equal(c.closed, true);
                assert.equal(c.units, 0);
                assert.equal(c.balance, 970);
                acct = (await a.ok('GetAccount', { user_id: user })).account;
                assert.equal(acct.held, 0);
                const rows = await assertConsistent(a, user);
                assert.deepEqual(rows.map((r) => [r.kind, r.units, r.request_id]),
                    [['recharge', 1000, ''], ['charge', -30, `${id}-r1`]]);
                await assertEvents(env.REDIS_URL, STREAM, user, rows);
            });

            it('112 charges in one LeaseSync: one event each, in order, none twice, across passes that cut a range', async () => {
                // The 112 ledger rows go out as 7 outbox rows of 16 (one per multi-row INSERT); a
                // relay pass takes at most 100 events, so the second pass starts inside the 7th
                // range: what the first sent must leave the outbox, and only that.
                const [a] = clients;
                const user = nextUser();
                await a.ok('CreateAccount', { user_id: user, initial_units: 1000000 });
                await assertEvents(env.REDIS_URL, STREAM, user, await ledger(a, user));
                const id = `lease-big-${backend}-${user}`;
                await a.ok('LeaseSync', { lease_id: id, user_id: user, seq: 1, want_units: 1000, source: 'proxy' });
                const charges = Array.from({ length: 112 }, (_, i) =>
                    ({ request_id: `${id}-r${i}`, model: 'm', prompt_tokens: 1 + i, completion_tokens: 2 }));
                await a.ok('LeaseSync', { lease_id: id, user_id: user, seq: 2, charges, close: true, source: 'proxy' });
                const rows = await assertConsistent(a, user);
                assert.equal(rows.length, 113);
                const { events, firsts } = await assertEvents(env.REDIS_URL, STREAM, user, rows);
                assert.equal(events.length, rows.length, 'no event sent twice');
                assert.deepEqual(firsts.map((e) => e.json.request_id), ['', ...charges.map((c) => c.request_id)]);
            });

            it('200 concurrent leases with charges on a small balance never take it below zero', async () => {
                const user = nextUser();
                const balance = 500;
                await clients[0].ok('CreateAccount', { user_id: user, initial_units: balance });
                let minSeen = Infinity;
                let polling = true;
                const poller = (async () => {
                    while (polling) {
                        const acct = (await clients[1].ok('GetAccount', { user_id: user })).account;
                        minSeen = Math.min(minSeen, acct.balance, acct.granted - acct.used - acct.held);
                        await sleep(2);
                    }
                })();
                const t0 = Date.now();
                const charged = await Promise.all(Array.from({ length: 200 }, async (_, i) => {
                    const c = clients[i % 2];
                    const id = `lrace-${backend}-${user}-${i}`;
                    const s1 = await c.ok('LeaseSync', { lease_id: id, user_id: user, seq: 1, want_units: 20, source: 'proxy' });
                    assert.equal(s1.result, 'RESERVE_OK');
                    assert.ok(s1.units >= 0 && s1.units <= 20);
                    assert.ok(s1.balance >= 0);
                    // two requests of 5 + 2 = 7 units each, reported by the other replica, and the lease closed
                    const s2 = await clients[(i + 1) % 2].ok('LeaseSync', {
                        lease_id: id, user_id: user, seq: 2, close: true, source: 'proxy',
                        charges: [0, 1].map((k) => ({ request_id: `${id}-${k}`, model: 'm', prompt_tokens: 5, completion_tokens: 2 })),
                    });
                    assert.equal(s2.closed, true);
                    assert.ok(s2.charged_units <= 14);
                    return s2.charged_units;
                }));
                const ms = Date.now() - t0;
                polling = false;
                await poller;
                const total = charged.reduce((x, y) => x + y, 0);
                assert.ok(minSeen >= 0, `balance never below zero (min seen ${minSeen})`);
                const rows = await assertConsistent(clients[0], user);
                const acct = (await clients[0].ok('GetAccount', { user_id: user })).account;
                assert.equal(acct.used, total, 'charged_units of the answers == used');
                assert.equal(acct.balance, balance - total, 'ledger sum == balance change');
                assert.ok(acct.balance >= 0 && total > 0, `${total} charged, ${acct.balance} left`);
                assert.equal(rows.length, 1 + 400, 'one charge row per reported request');
                await assertEvents(env.REDIS_URL, STREAM, user, rows);
                process.stderr.write(`# ${backend}: 200 leases, ${total} of ${balance} charged, ${ms} ms\n`);
            });
        });

        it('Settle twice charges once; Recharge replayed with its key credits once; Reserve replay returns its hold', async () => {
            const user = nextUser();
            const [a, b] = clients;
            await a.ok('CreateAccount', { user_id: user, username: 'idem', initial_units: 1000 });
            const again = await b.ok('CreateAccount', { user_id: user, username: 'idem', initial_units: 1000 });
            assert.equal(again.existed, true);
            assert.equal(again.account.granted, 1000, 'CreateAccount is idempotent: no second credit');
            const r1 = await a.ok('Reserve', { request_id: `idem-${user}`, user_id: user, prompt_tokens: 10, max_completion_tokens: 100 });
            const r2 = await b.ok('Reserve', { request_id: `idem-${user}`, user_id: user, prompt_tokens: 10, max_completion_tokens: 100 });
            assert.equal(r2.duplicate, true);
            assert.equal(r2.held_units, r1.held_units);
            assert.equal((await a.ok('GetAccount', { user_id: user })).account.held, 110, 'one hold only');
            const [s1, s2] = await Promise.all([
                a.ok('Settle', { request_id: `idem-${user}`, prompt_tokens: 10, completion_tokens: 20 }),
                b.ok('Settle', { request_id: `idem-${user}`, prompt_tokens: 10, completion_tokens: 20 }),
            ]);
            assert.deepEqual([s1.already_settled, s2.already_settled].sort(), [false, true]);
            assert.equal(s1.charged_units, 30);
            assert.equal(s2.charged_units, 30);
            const s3 = await a.ok('Settle', { request_id: `idem-${user}`, prompt_tokens: 99, completion_tokens: 99 });
            assert.equal(s3.already_settled, true);
            assert.equal(s3.charged_units, 30);
            const rc = await Promise.all([a, b, a, b].map((c) => c.ok('Recharge', {
                user_id: user, units: 500, idempotency_key: `pay-evt-${user}`, actor: 'webhook',
            })));
            assert.equal(rc.filter((x) => !x.duplicate).length, 1, 'one credit for four deliveries');
            assert.equal(new Set(rc.map((x) => x.ledger_id)).size, 1, 'every delivery names the same ledger row');
            const acct = (await a.ok('GetAccount', { user_id: user })).account;
            assert.equal(acct.balance, 1000 - 30 + 500);
            // a released hold: nothing charged; settle after release is refused cleanly
            await a.ok('Reserve', { request_id: `rel-${user}`, user_id: user, prompt_tokens: 10, max_completion_tokens: 100 });
            const rel = await b.ok('Release', { request_id: `rel-${user}`, reason: 'upstream 502' });
            assert.equal(rel.refunded_units, 110);
            assert.equal((await a.ok('Release', { request_id: `rel-${user}` })).already_closed, true);
            const late = await a.call('Settle', { request_id: `rel-${user}`, prompt_tokens: 1, completion_tokens: 1 });
            assert.equal(late.status, 409);
            // the adjust rules
            const neg = await a.call('Adjust', { user_id: user, units: -10000 });
            assert.equal(neg.status, 409);
            assert.equal(neg.error.code, -10);
            const forced = await a.ok('Adjust', { user_id: user, units: -10000, force: true, actor: 'ops', note: 'chargeback' });
            assert.equal(forced.account.balance, 1470 - 10000);
            await a.ok('Adjust', { user_id: user, units: 10000, idempotency_key: 'undo', actor: 'ops' });
            assert.equal((await b.ok('Adjust', { user_id: user, units: 10000, idempotency_key: 'undo' })).duplicate, true);
            const rows = await assertConsistent(a, user, { forced: true });
            assert.deepEqual(rows.map((r) => r.kind), ['recharge', 'charge', 'recharge', 'adjustment', 'adjustment']);
            await assertEvents(env.REDIS_URL, STREAM, user, rows);
        });

        it('caps a hold to a small balance, refuses below prompt + minimum reply, prices exactly', async () => {
            const user = nextUser();
            const [a] = clients;
            await a.ok('CreateAccount', { user_id: user, initial_units: 100 });
            const r = await a.ok('Reserve', { request_id: `cap-${user}`, user_id: user, prompt_tokens: 30, max_completion_tokens: 1000 });
            assert.equal(r.result, 'RESERVE_OK');
            assert.equal(r.completion_limit, 70);
            assert.equal(r.held_units, 100);
            assert.equal(r.balance, 0);
            await a.ok('Settle', { request_id: `cap-${user}`, prompt_tokens: 30, completion_tokens: 70 });
            await a.ok('Recharge', { user_id: user, units: 35 });
            const fixed = await a.ok('Reserve', { request_id: `fix-${user}`, user_id: user, prompt_tokens: 10, max_completion_tokens: 100, completion_limit_fixed: true });
            assert.equal(fixed.result, 'RESERVE_INSUFFICIENT', 'a fixed max_tokens is refused, never lowered');
            const low = await a.ok('Reserve', { request_id: `low-${user}`, user_id: user, prompt_tokens: 30, max_completion_tokens: 100 });
            assert.equal(low.result, 'RESERVE_INSUFFICIENT', '35 < 30 + 10 (minimum reply)');
            const ok = await a.ok('Reserve', { request_id: `ok-${user}`, user_id: user, prompt_tokens: 25, max_completion_tokens: 100 });
            assert.equal(ok.completion_limit, 10);
            // priced=2.5:10: prompt 3 -> ceil(7.5) = 8, completion 1 -> 10
            await a.ok('Recharge', { user_id: user, units: 1000 });
            const p = await a.ok('Reserve', { request_id: `price-${user}`, user_id: user, model: 'priced', prompt_tokens: 3, max_completion_tokens: 50 });
            assert.equal(p.held_units, 8 + 500);
            const ps = await a.ok('Settle', { request_id: `price-${user}`, prompt_tokens: 3, completion_tokens: 1 });
            assert.equal(ps.charged_units, 18);
            const c = await a.ok('Reserve', { request_id: `cheap-${user}`, user_id: user, model: 'cheap', prompt_tokens: 1, max_completion_tokens: 1 });
            assert.equal(c.held_units, 2, 'a non-zero usage never rounds to 0');
            await a.ok('Release', { request_id: `cheap-${user}` });
            await a.ok('Release', { request_id: `ok-${user}` });
            // unlimited (static) users: never refused, usage recorded
            const st = nextUser();
            const u = await a.ok('Reserve', { request_id: `st-${st}`, user_id: st, username: 'static', create_unlimited: true, prompt_tokens: 10, max_completion_tokens: 5000 });
            assert.equal(u.result, 'RESERVE_OK');
            assert.equal(u.unlimited, true);
            assert.equal(u.completion_limit, 5000);
            const us = await a.ok('Settle', { request_id: `st-${st}`, prompt_tokens: 10, completion_tokens: 4000 });
            assert.equal(us.charged_units, 4010);
            const urows = await ledger(a, st);
            assert.deepEqual(urows.map((x) => [x.kind, x.units, x.tokens_out]), [['charge', -4010, 4000]]);
            const daily = await a.ok('Usage', { user_id: user, days: 2 });
            assert.equal(daily.daily.length, 1);
            assert.equal(daily.daily[0].requests, 2);
            assert.equal(daily.daily[0].units, 100 + 18);
            await assertConsistent(a, user);
        });

        it('rejects malformed protobuf, unknown users and methods, bad and overflowing units cleanly', async () => {
            const [a] = clients;
            const bad = await postRaw(a.baseUrl, 'Reserve', Buffer.from([0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f]));
            assert.equal(bad.status, 400);
            const nom = await postRaw(a.baseUrl, 'NoSuchMethod', Buffer.alloc(0));
            assert.equal(nom.status, 404);
            const unknown = 987654;
            assert.equal((await a.ok('Reserve', { request_id: 'nobody', user_id: unknown, prompt_tokens: 1, max_completion_tokens: 1 })).result, 'RESERVE_NO_ACCOUNT');
            for (const [m, req] of [
                ['GetAccount', { user_id: unknown }],
                ['Recharge', { user_id: unknown, units: 5 }],
                ['Settle', { request_id: 'never-reserved', prompt_tokens: 1, completion_tokens: 1 }],
                ['Release', { request_id: 'never-reserved' }],
                ['Usage', { user_id: unknown }],
            ]) {
                const r = await a.call(m, req);
                assert.equal(r.status, 404, `${m} of an unknown user/hold`);
                assert.equal(r.error.code, -6);
            }
            const user = nextUser();
            await a.ok('CreateAccount', { user_id: user, initial_units: 10 });
            for (const [m, req] of [
                ['Recharge', { user_id: user, units: -5 }],
                ['Recharge', { user_id: user, units: 0 }],
                ['Recharge', { user_id: user, units: '4611686018427387904' }],
                ['Adjust', { user_id: user, units: '-9223372036854775808', force: true }],
                ['Adjust', { user_id: user, units: 0 }],
                ['CreateAccount', { user_id: user + 1, initial_units: -1 }],
                ['CreateAccount', { user_id: 0 }],
                ['Reserve', { request_id: 'neg', user_id: user, prompt_tokens: -1, max_completion_tokens: 1 }],
                ['Reserve', { request_id: 'big', user_id: user, prompt_tokens: '9223372036854775807', max_completion_tokens: 1 }],
                ['Reserve', { request_id: '', user_id: user, prompt_tokens: 1, max_completion_tokens: 1 }],
                ['Reserve', { request_id: 'x'.repeat(129), user_id: user, prompt_tokens: 1, max_completion_tokens: 1 }],
                ['Settle', { request_id: 'neg', prompt_tokens: 1, completion_tokens: -7 }],
                ['Usage', { user_id: user, limit: 501 }],
                ['Usage', { user_id: user, days: 367 }],
            ]) {
                const r = await a.call(m, req);
                assert.equal(r.status, 400, `${m} ${JSON.stringify(req)} -> ${r.status} ${JSON.stringify(r.error)}`);
                assert.equal(r.error.code, -1);
                assert.ok(r.error.message.length > 0);
            }
            const acct = (await a.ok('GetAccount', { user_id: user })).account;
            assert.equal(acct.balance, 10, 'nothing changed');
            // delete keeps the ledger, releases holds, and the account is gone for RPCs
            await a.ok('Reserve', { request_id: `del-${user}`, user_id: user, prompt_tokens: 1, max_completion_tokens: 5 });
            assert.equal((await a.ok('DeleteAccount', { user_id: user, actor: 'ops' })).deleted, true);
            assert.equal((await a.ok('DeleteAccount', { user_id: user })).deleted, false);
            assert.equal((await a.call('GetAccount', { user_id: user })).status, 404);
            assert.equal((await a.ok('Release', { request_id: `del-${user}` })).already_closed, true);
        });

        it('an idempotency key reused with a different request is refused (409), never answered as done', async () => {
            const [a, b] = clients;
            const user = nextUser();
            await a.ok('CreateAccount', { user_id: user, initial_units: 10 });
            const key = `pay-diff-${user}`;
            const first = await a.ok('Recharge', { user_id: user, units: 100, idempotency_key: key, actor: 'webhook' });
            assert.equal(first.duplicate, false);
            const replay = await b.ok('Recharge', { user_id: user, units: 100, idempotency_key: key, actor: 'webhook' });
            assert.equal(replay.duplicate, true);
            assert.equal(replay.ledger_id, first.ledger_id);
            for (const c of [a, b]) {
                const r = await c.call('Recharge', { user_id: user, units: 999, idempotency_key: key, actor: 'webhook' });
                assert.equal(r.status, 409, JSON.stringify(r.error));
                assert.equal(r.error.code, -10);
                assert.match(r.error.message, /different request/);
            }
            await a.ok('Adjust', { user_id: user, units: -5, idempotency_key: key });
            const adj = await a.call('Adjust', { user_id: user, units: -6, idempotency_key: key });
            assert.equal(adj.status, 409);
            assert.match(adj.error.message, /different request/);
            assert.equal((await a.ok('GetAccount', { user_id: user })).account.balance, 10 + 100 - 5);
        });

        it('keeps every balance exact in JavaScript: no value leaves +-(2^53 - 1)', async () => {
            const [a] = clients;
            const user = nextUser();
            const SAFE = Number.MAX_SAFE_INTEGER; // 2^53 - 1 = 9007199254740991
            await a.ok('CreateAccount', { user_id: user, initial_units: 1e15 });
            for (let i = 0; i < 8; i++) await a.ok('Recharge', { user_id: user, units: 1e15 });
            const over = await a.call('Recharge', { user_id: user, units: 1e15 });
            assert.equal(over.status, 413, JSON.stringify(over.error));
            assert.equal(over.error.code, -5);
            assert.match(over.error.message, /9007199254740991|2\^53/);
            let acct = (await a.ok('GetAccount', { user_id: user })).account;
            assert.equal(acct.balance, 9e15, 'nothing credited');
            const rest = SAFE - 9e15;
            acct = (await a.ok('Recharge', { user_id: user, units: rest })).account;
            assert.equal(acct.balance, SAFE, 'up to 2^53 - 1 exactly');
            assert.equal((await a.call('Adjust', { user_id: user, units: 1 })).status, 413);
            // and downwards: a forced adjustment cannot push a balance below -(2^53 - 1)
            const neg = nextUser();
            await a.ok('CreateAccount', { user_id: neg, initial_units: 0 });
            for (let i = 0; i < 9; i++) await a.ok('Adjust', { user_id: neg, units: -1e15, force: true });
            const under = await a.call('Adjust', { user_id: neg, units: -1e15, force: true });
            assert.equal(under.status, 413, JSON.stringify(under.error));
            assert.equal((await a.ok('GetAccount', { user_id: neg })).account.balance, -9e15);
        });

        it('crash: a replica SIGKILLed between Reserve and Settle; the hold expires with a ledger row and events', async () => {
            const user = nextUser();
            const [a, b] = clients;
            await b.ok('CreateAccount', { user_id: user, initial_units: 1000 });
            const r = await a.ok('Reserve', { request_id: `crash-${user}`, user_id: user, prompt_tokens: 50, max_completion_tokens: 250 });
            assert.equal(r.held_units, 300);
            const r2 = await a.ok('Reserve', { request_id: `crash2-${user}`, user_id: user, prompt_tokens: 50, max_completion_tokens: 50 });
            await replicas[0].kill();
            clients[0].close();
            const acct = await waitFor('the sweeper of the surviving replica', async () => {
                const x = (await b.ok('GetAccount', { user_id: user })).account;
                return x.held === 0 ? x : null;
            }, 10000, 100);
            assert.equal(acct.balance, 1000 - 300 - r2.held_units, 'expiry charges the held worst case');
            let rows = await assertConsistent(b, user);
            assert.deepEqual(rows.map((x) => x.kind), ['recharge', 'expiry', 'expiry']);
            // the caller comes back late with the real usage: the expiry charge is corrected once
            const late = await b.ok('Settle', { request_id: `crash-${user}`, prompt_tokens: 50, completion_tokens: 10 });
            assert.equal(late.charged_units, 60);
            assert.equal(late.refunded_units, 240);
            assert.equal((await b.ok('Settle', { request_id: `crash-${user}`, prompt_tokens: 50, completion_tokens: 10 })).already_settled, true);
            const lateRel = await b.ok('Release', { request_id: `crash2-${user}`, reason: 'upstream failed' });
            assert.equal(lateRel.refunded_units, r2.held_units);
            rows = await assertConsistent(b, user);
            assert.deepEqual(rows.map((x) => x.kind), ['recharge', 'expiry', 'expiry', 'refund', 'refund']);
            assert.equal((await b.ok('GetAccount', { user_id: user })).account.balance, 1000 - 60);
            await assertEvents(env.REDIS_URL, STREAM, user, rows);
            await startReplica(0);
        });

        it('Redis outage: events wait in the outbox and all arrive in order after Redis returns', async () => {
            const user = nextUser();
            const [a, b] = clients;
            await a.ok('CreateAccount', { user_id: user, initial_units: 10000 });
            await assertEvents(env.REDIS_URL, STREAM, user, await ledger(a, user));
            const port = redis.port;
            await redis.stop();
            for (let i = 0; i < 20; i++) {
                const c = i % 2 ? a : b;
                await c.ok('Reserve', { request_id: `out-${user}-${i}`, user_id: user, prompt_tokens: 5, max_completion_tokens: 20 });
                await c.ok('Settle', { request_id: `out-${user}-${i}`, prompt_tokens: 5, completion_tokens: i });
            }
            await a.ok('Recharge', { user_id: user, units: 7, idempotency_key: `outage-${user}` });
            const rows = await assertConsistent(a, user);
            assert.equal(rows.length, 22);
            const pending = await waitFor('billing_outbox_pending on the relaying replica', async () => {
                for (const r of replicas) {
                    const m = /^billing_outbox_pending (\d+)/m.exec((await httpGet(`${r.adminUrl}/metrics`)).body);
                    if (m && Number(m[1]) >= 21) return Number(m[1]);
                }
                return null;
            }, 5000, 100);
            assert.ok(pending >= 21, 'the events wait in the outbox');
            await sleep(300);
            redis = await startRedis({ dir: path.join(dir, 'redis'), port, persist: true });
            const { firsts } = await assertEvents(env.REDIS_URL, STREAM, user, rows);
            assert.deepEqual(firsts.map((e) => e.json.ledger_id), rows.map((r) => r.id));
        });

        if (backend === 'sqlite') {
            it('tools/billing_consumer reads every event once, acknowledges, and resumes', async () => {
                const out = path.join(dir, 'events.jsonl');
                const run = () => new Promise((resolve, reject) => {
                    execFile(path.join(defaultBinDir(), 'chatweb-billing-consumer'),
                        ['--group', 'test', '--consumer', 'c1', '--out', out, '--idle-exit', '1000'],
                        { env: { ...process.env, REDIS_URL: env.REDIS_URL, BILLING_EVENTS_STREAM: STREAM }, timeout: 20000 },
                        (err, stdout, stderr) => (err ? reject(new Error(`${err.message}: ${stderr}`)) : resolve(stderr)));
                });
                await run();
                const lines = fs.readFileSync(out, 'utf8').trim().split('\n').map((l) => JSON.parse(l));
                const unique = new Set(lines.map((e) => e.event_id));
                assert.equal(unique.size, lines.length, 'no duplicates in the output');
                const streamIds = new Set((await readStream(env.REDIS_URL, STREAM)).map((e) => e.id));
                assert.deepEqual([...unique].sort(), [...streamIds].sort(), 'every event of the stream');
                const user = nextUser();
                await clients[1].ok('CreateAccount', { user_id: user, initial_units: 5 });
                await waitFor('the new event', async () => (await readStream(env.REDIS_URL, STREAM)).some((e) => e.json.user_id === user));
                await run();
                const after = fs.readFileSync(out, 'utf8').trim().split('\n').map((l) => JSON.parse(l));
                assert.equal(after.length, lines.length + 1, 'a second run reads only what is new (the rest was acknowledged)');
                assert.equal(after[after.length - 1].user_id, user);
            });
        }

        if (backend === 'mariadb') {
            it('SQL down: clean RPC errors (503 UNAVAIL) and /readyz 503', async () => {
                const [a] = clients;
                await mariadb.stop();
                const r = await a.call('GetAccount', { user_id: 1 });
                assert.equal(r.status, 503);
                assert.equal(r.error.code, -4);
                const rs = await a.call('Reserve', { request_id: 'sqldown', user_id: 1, prompt_tokens: 1, max_completion_tokens: 1 });
                assert.equal(rs.status, 503);
                const ready = await httpGet(`${replicas[0].adminUrl}/readyz`, 5000);
                assert.equal(ready.status, 503);
                const health = await httpGet(`${replicas[0].adminUrl}/healthz`, 5000);
                assert.equal(health.status, 200, 'alive, only not ready');
            });
        }
    });
}

// BILLING_EVENTS_REPLICAS=1 while the master has lost its replica: every relay pass finds the
// WAIT short and keeps the rows in the outbox. The events must reach the stream once, not once
// per pass (relay.c stream_has looks for them in the stream's tail first), and flow out of the
// outbox as soon as a replica confirms them.
describe('billing events unconfirmed by a replica are not sent twice', () => {
    const STREAM = 'test:unconfirmed:billing:events';
    let dir, set, billing, client;
    let redisUrl;
    const pending = async () => Number(/^billing_outbox_pending (\d+)/m.exec((await httpGet(`${billing.adminUrl}/metrics`)).body)[1]);

    before(async () => {
        dir = tempDir('chatweb-billing-unconfirmed-');
        set = await startRedisSentinelSet({ dir: path.join(dir, 'redis') });
        for (const s of set.sentinels) await s.handle.stop(); // this test moves the replica itself
        redisUrl = `redis://default:${set.password}@127.0.0.1:${set.master.port}/0`;
        billing = await startService('billing', {
            dir, readyTimeoutMs: 20000,
            env: { LOG_LEVEL: 'notice', REDIS_URL: redisUrl, BILLING_EVENTS_STREAM: STREAM, BILLING_EVENTS_REPLICAS: '1', BILLING_RELAY_POLL_MS: '20' },
        });
        client = billingClient(billing.url);
    }, { timeout: 120000 });

    after(async () => {
        client?.close();
        await billing?.stop().catch(() => {});
        for (const h of [set?.replica, set?.master]) if (h) await h.handle.stop().catch(() => {});
        if (process.env.KEEP_TEST_DIRS !== '1') fs.rmSync(dir, { recursive: true, force: true });
    }, { timeout: 60000 });

    it('the stream gets each event once while it waits, and the outbox drains when a replica is back', { timeout: 60000 }, async () => {
        const user = 7001;
        await client.ok('CreateAccount', { user_id: user, initial_units: 10 });
        await waitFor('the first event, confirmed', async () => (await readStream(redisUrl, STREAM)).length === 1 && (await pending()) === 0, 15000, 100);

        await redisCli(set.replica.port, set.password, 'REPLICAOF', 'NO', 'ONE');
        for (let i = 0; i < 5; i++)
            await client.ok('Recharge', { user_id: user, units: 1, idempotency_key: `unconfirmed-${i}` });
        await sleep(3500); // three or more passes, each with a WAIT that times out after 1 s
        assert.ok(await pending() >= 5, 'the unconfirmed events wait in the outbox');
        let events = await readStream(redisUrl, STREAM);
        assert.deepEqual(events.map((e) => e.json.balance_after), [10, 11, 12, 13, 14, 15], 'each event once, in order');

        await redisCli(set.replica.port, set.password, 'REPLICAOF', '127.0.0.1', String(set.master.port));
        await waitFor('the outbox to drain', async () => (await pending()) === 0, 20000, 200);
        events = await readStream(redisUrl, STREAM);
        assert.deepEqual(events.map((e) => e.json.balance_after), [10, 11, 12, 13, 14, 15], 'still each event once');
        assert.equal(new Set(events.map((e) => e.id)).size, 6);
    });
});
