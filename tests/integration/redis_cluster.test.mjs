// The whole stack on a real Redis Cluster of 3 masters with a replica each
// (REDIS_URL=redis-cluster://..., docs/redis.md): two chat and two proxy replicas, a key's
// requests-per-minute limit enforced across the cluster, a conversation whose context
// (cw:ctx:{u..}) is read back on the other replica, and the billing events stream: one event per
// balance change, none lost, while the stream's slot is migrated to another master under traffic
// (the relay's XADDs get ASK, then MOVED), and then while that master fails over to its replica
// (CLUSTER FAILOVER: the old master answers MOVED, the slot map is read again).
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { basicAuth, getJSON, postJSON, request, streamBody, tempDir, withStack } from './lib/harness.mjs';
import { readStream, redisCall } from './lib/billing-rpc.mjs';
import { redisCli, startRedisCluster } from '../../deploy/local/redis-topo.mjs';

const OPS_KEY = 'ops-key-for-cluster-tests-0123456789';
const OPERATOR_KEY = 'sk-operator-key-for-cluster-tests-42';
const STREAM = 'chatweb:billing:events';
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function ops(stack, body) {
    const r = await postJSON(`${stack.url}/accounts`, body, { headers: { opskey: OPS_KEY } });
    assert.equal(r.status, 200, r.body);
    assert.equal(r.json().status, 'Success', `${body.action}: ${r.body}`);
    return r.json();
}

const check = async (stack, name) => (await ops(stack, { action: 'check', i_username: name })).data;

function completion(base, key, content) {
    return request(`${base}/v1/chat/completions`, {
        method: 'POST', headers: { authorization: `Bearer ${key}` }, timeoutMs: 30000,
        json: { model: 'gpt-4o', messages: [{ role: 'user', content }] },
    });
}

/** CLUSTER NODES of the first node that answers, as {id, port, master (bool), masterId, slots}. */
async function clusterNodes(cluster) {
    let out = null;
    for (const n of cluster.nodes) {
        out = await redisCli(n.port, cluster.password, 'CLUSTER', 'NODES').catch(() => null);
        if (out) break;
    }
    return out.trim().split('\n').map((line) => {
        const f = line.split(' ');
        return { id: f[0], port: Number(f[1].split('@')[0].split(':')[1]), master: f[2].includes('master'), masterId: f[3], slots: f.slice(8) };
    });
}

/** The redis:// URL of the master that serves key (CLUSTER NODES of the first node). */
async function ownerOf(cluster, key) {
    const slot = Number((await redisCli(cluster.nodes[0].port, cluster.password, 'CLUSTER', 'KEYSLOT', key)).trim());
    const nodes = (await redisCli(cluster.nodes[0].port, cluster.password, 'CLUSTER', 'NODES')).trim().split('\n');
    for (const line of nodes) {
        const f = line.split(' ');
        if (!f[2].includes('master')) continue;
        for (const range of f.slice(8)) {
            const [lo, hi = lo] = range.split('-').map(Number);
            if (slot >= lo && slot <= hi) {
                const port = Number(f[1].split('@')[0].split(':')[1]);
                return { slot, id: f[0], port, url: `redis://default:${cluster.password}@127.0.0.1:${port}/0` };
            }
        }
    }
    throw new Error(`no master serves slot ${slot}`);
}

/** The user's events (first of each id), read from the master that has the stream now. */
async function userEvents(cluster, username) {
    const owner = await ownerOf(cluster, STREAM);
    const seen = new Set();
    return (await readStream(owner.url, STREAM)).filter((e) => {
        if (e.json.username !== username || seen.has(e.id)) return false;
        seen.add(e.id);
        return true;
    });
}

describe('the stack on a 3-master Redis Cluster', () => {
    let cluster = null;
    const dir = tempDir('chatweb-cluster-');
    const opts = {
        replicas: { chat: 2, proxy: 2 },
        fakeUpstream: true,
        fakeUpstreamEnv: { FAKE_API_KEY: OPERATOR_KEY },
        env: {
            OPS_KEY, OPENAI_KEY: OPERATOR_KEY, OPENAI_PROXY: 'true', OPENAI_MODEL: 'gpt-4o',
            PROXY_TPM_LIMIT: '0', BILLING_RELAY_POLL_MS: '20', BILLING_EVENTS_REPLICAS: '1',
        },
    };
    // before() hooks run in order: the cluster is up (and its URL in opts) when withStack starts.
    before(async () => {
        cluster = await startRedisCluster({ dir: path.join(dir, 'cluster'), replicas: 1 });
        opts.redisUrl = cluster.url;
    }, { timeout: 60000 });
    const stack = withStack(opts);
    after(async () => {
        for (const n of cluster?.nodes || []) await n.handle.stop().catch(() => {});
        if (!process.env.KEEP_TEST_DIRS) fs.rmSync(dir, { recursive: true, force: true });
    });

    it('every replica is ready on the cluster', async () => {
        for (const s of [...stack.services.chat, ...stack.services.proxy]) {
            const r = await request(`http://${s.adminAddr}/readyz`);
            assert.equal(r.status, 200, `${s.label}: ${r.body}`);
        }
    });

    it("a key's rpm is counted across both proxy replicas in the cluster", async () => {
        await ops(stack, { action: 'register', i_username: 'crpm', i_password: 'crpm-password', count: 1000000 });
        const { key } = (await ops(stack, { action: 'create_key', i_username: 'crpm', name: 'k', rpm: 3 })).data;
        const left = 60 - (Date.now() / 1000) % 60;
        if (left < 15) await sleep(left * 1000 + 250);
        const [p1, p2] = stack.services.proxy.map((s) => `http://${s.httpAddr}`);
        const statuses = [];
        for (const base of [p1, p2, p1, p2]) statuses.push((await completion(base, key, 'rpm [[fake tokens=1]]')).status);
        assert.deepEqual(statuses, [200, 200, 200, 429]);
    });

    it('a conversation continues on the other chat replica (context in the cluster)', async () => {
        await ops(stack, { action: 'register', i_username: 'cctx', i_password: 'cctx-password', count: 1000000 });
        const auth = basicAuth('cctx', 'cctx-password');
        const [c1, c2] = stack.services.chat.map((s) => `http://${s.httpAddr}`);
        const send = (base, body) => streamBody(`${base}/api/chat-process`, {
            method: 'POST', headers: { 'content-type': 'application/json', authorization: auth }, body: JSON.stringify(body), timeoutMs: 30000,
        });
        const first = await send(c1, { prompt: 'my name is Ada', options: {} });
        assert.equal(first.status, 200, first.text);
        const reply = JSON.parse(first.text.split('\n').pop());
        const seq0 = (await getJSON(`${stack.fakeUpstream.url}/_fake/requests`)).requests.at(-1).seq;
        const second = await send(c2, { prompt: 'what is my name?', options: { parentMessageId: reply.id } });
        assert.equal(second.status, 200, second.text);
        const reqs = (await getJSON(`${stack.fakeUpstream.url}/_fake/requests?since=${seq0}`)).requests;
        assert.deepEqual(reqs.at(-1).body.messages.map((m) => m.content).slice(-3),
            ['my name is Ada', reply.text, 'what is my name?']);
    });

    it('billing events: one per balance change, none lost while the stream moves to another master', async () => {
        await ops(stack, { action: 'register', i_username: 'cbill', i_password: 'cbill-password', count: 1000000 });
        const { key } = (await ops(stack, { action: 'create_key', i_username: 'cbill', name: 'k' })).data;
        const bases = stack.services.proxy.map((s) => `http://${s.httpAddr}`);
        let sent = 0;
        let failed = 0;
        let stop = false;
        const traffic = (async () => {
            while (!stop) {
                const r = await completion(bases[sent % 2], key, 'bill [[fake tokens=3]]');
                if (r.status === 200) sent++;
                else failed++;
            }
        })();
        await sleep(500);
        // Move the stream's slot to another master, as redis-cli --cluster reshard does.
        const src = await ownerOf(cluster, STREAM);
        const dst = (await clusterNodes(cluster)).find((n) => n.master && n.port !== src.port);
        const dstId = (await redisCli(dst.port, cluster.password, 'CLUSTER', 'MYID')).trim();
        assert.equal((await redisCli(dst.port, cluster.password, 'CLUSTER', 'SETSLOT', src.slot, 'IMPORTING', src.id)).trim(), 'OK');
        assert.equal((await redisCli(src.port, cluster.password, 'CLUSTER', 'SETSLOT', src.slot, 'MIGRATING', dstId)).trim(), 'OK');
        await sleep(300);
        const mig = await redisCli(src.port, cluster.password, 'MIGRATE', '127.0.0.1', dst.port, '', '0', '10000',
            'AUTH2', 'default', cluster.password, 'KEYS', STREAM);
        assert.match(mig, /OK|NOKEY/);
        await sleep(300);
        for (const n of (await clusterNodes(cluster)).filter((x) => x.master))
            assert.equal((await redisCli(n.port, cluster.password, 'CLUSTER', 'SETSLOT', src.slot, 'NODE', dstId)).trim(), 'OK');
        await sleep(700);
        stop = true;
        await traffic;
        assert.equal((await ownerOf(cluster, STREAM)).port, dst.port, 'the stream moved');
        assert.ok(sent >= 10, `${sent} completions served during the move (${failed} failed)`);
        assert.equal(failed, 0, 'no request failed while the slot moved');
        // Every balance change of the user has its event, exactly once after de-dup by id.
        let now;
        for (const t1 = Date.now(); Date.now() - t1 < 15000; await sleep(100)) {
            now = await check(stack, 'cbill');
            if (now.held === 0) break;
        }
        assert.equal(now.held, 0, 'no hold left open');
        let events = [];
        for (const t0 = Date.now(); Date.now() - t0 < 15000; await sleep(100)) {
            events = await userEvents(cluster, 'cbill');
            if (events.length && events.at(-1).json.balance_after === now.balance) break;
        }
        const units = events.reduce((a, e) => a + e.json.units, 0);
        assert.equal(units, now.balance, `the events' units add up to the balance (${events.length} events)`);
        assert.equal(events.at(-1).json.balance_after, now.balance);
        events.forEach((e, i) => assert.equal(e.json.user_seq, i + 1, 'events in user_seq order, no gaps'));
        assert.ok(events.length > sent, `${events.length} events for ${sent} completions`);
        process.stderr.write(`# cluster: slot ${src.slot} moved ${src.port} -> ${dst.port} under ${sent} completions; ` +
            `${events.length} events, units == balance\n`);
        // and the relay's own Redis client kept going: it still writes to the new owner
        const probe = await redisCall(`redis://default:${cluster.password}@127.0.0.1:${dst.port}/0`, ['XLEN', STREAM]);
        assert.ok(Number(probe) >= events.length);
    });

    it('the master of the stream fails over to its replica under traffic: no failed request, no event lost', async () => {
        await ops(stack, { action: 'register', i_username: 'cfo', i_password: 'cfo-password', count: 1000000 });
        const { key } = (await ops(stack, { action: 'create_key', i_username: 'cfo', name: 'k', rpm: 1000000 })).data;
        const bases = stack.services.proxy.map((s) => `http://${s.httpAddr}`);
        let sent = 0;
        let failed = 0;
        let stop = false;
        const firstFailures = [];
        const traffic = (async () => {
            while (!stop) {
                const r = await completion(bases[sent % 2], key, 'fo [[fake tokens=2]]');
                if (r.status === 200) sent++;
                else if (failed++ < 3) firstFailures.push(`${r.status} ${r.body.slice(0, 200)}`);
            }
        })();
        await sleep(500);
        const old = await ownerOf(cluster, STREAM);
        const replica = (await clusterNodes(cluster)).find((n) => !n.master && n.masterId === old.id);
        assert.ok(replica, 'the master has a replica');
        const t0 = Date.now();
        assert.equal((await redisCli(replica.port, cluster.password, 'CLUSTER', 'FAILOVER')).trim(), 'OK');
        // While the failover runs, the node asked may for a moment list no master for the slot.
        const ownerPort = () => ownerOf(cluster, STREAM).then((o) => o.port, () => null);
        for (const end = Date.now() + 15000; Date.now() < end && (await ownerPort()) !== replica.port;)
            await sleep(100);
        const tookMs = Date.now() - t0;
        assert.equal((await ownerOf(cluster, STREAM)).port, replica.port, 'the replica serves the stream now');
        await sleep(1000);
        stop = true;
        await traffic;
        assert.equal(failed, 0, `no request failed (${sent} served; ${firstFailures.join('; ')})`);
        let now;
        for (const t1 = Date.now(); Date.now() - t1 < 15000; await sleep(100)) {
            now = await check(stack, 'cfo');
            if (now.held === 0) break;   // settles still in flight hold part of the balance
        }
        assert.equal(now.held, 0, 'no hold left open');
        let events = [];
        for (const t1 = Date.now(); Date.now() - t1 < 15000; await sleep(100)) {
            events = await userEvents(cluster, 'cfo');
            if (events.length && events.at(-1).json.balance_after === now.balance) break;
        }
        events.forEach((e, i) => assert.equal(e.json.user_seq, i + 1, 'events in user_seq order, no gaps'));
        assert.equal(events.reduce((a, e) => a + e.json.units, 0), now.balance, `the events add up to the balance (${events.length} events)`);
        process.stderr.write(`# cluster: master ${old.port} failed over to ${replica.port} in ${tookMs} ms under ${sent} completions, ` +
            `${events.length} events\n`);
    });
});
