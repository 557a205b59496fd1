// deploy/local/redis-topo.mjs: a real Redis Cluster or Sentinel set on free ports of 127.0.0.1,
// for the tests of the client's Sentinel and Cluster support (docs/redis.md). Every server is a
// tracked process of stack.mjs, so stack.stopAll() stops them too.
//
//   startRedisCluster({ dir, masters: 3, replicas: 0 })
//     -> { url: 'redis-cluster://default:PW@127.0.0.1:P1,...', password, nodes: [{port, handle}] }
//   startRedisSentinelSet({ dir })
//     -> { url: 'redis-sentinel://default:PW@127.0.0.1:S1,.../mymaster', password, master, replica,
//          sentinels: [{port, handle}] }
//   redisCli(port, password, ...args) -> stdout (throws on failure)
import crypto from 'node:crypto';
import path from 'node:path';
import { spawn } from 'node:child_process';
import * as stack from './stack.mjs';

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Runs redis-cli against 127.0.0.1:port and resolves its stdout (rejects on a failure). */
export function redisCli(port, password, ...args) {
    return new Promise((resolve, reject) => {
        const argv = ['-h', '127.0.0.1', '-p', String(port), '--no-auth-warning'];
        if (password) argv.push('-a', password);
        const p = spawn('redis-cli', [...argv, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
        let out = '';
        let err = '';
        p.stdout.on('data', (d) => { out += d; });
        p.stderr.on('data', (d) => { err += d; });
        const timer = setTimeout(() => p.kill('SIGKILL'), 30000);
        p.on('error', reject);
        p.on('close', (code) => {
            clearTimeout(timer);
            if (code === 0) resolve(out);
            else reject(new Error(`redis-cli -p ${port} ${args.join(' ')}: exit ${code}: ${err.trim() || out.trim()}`));
        });
    });
}

async function waitFor(label, what, fn, timeoutMs) {
    const deadline = Date.now() + timeoutMs;
    let last = null;
    while (Date.now() < deadline) {
        try {
            if (await fn()) return;
        } catch (e) {
            last = e;
        }
        await sleep(100);
    }
    throw new stack.StackError(label, `timed out waiting for ${what}${last ? `: ${last.message}` : ''}`);
}

async function startNode({ dir, label, conf, args = [], password }) {
    stack.mkdirPrivate(dir);
    const port = await stack.freePort();
    const confPath = path.join(dir, 'redis.conf');
    stack.writePrivate(confPath, `port ${port}\nbind 127.0.0.1\ndir ${dir}\n${conf}`);
    const logFile = path.join(dir, 'redis.log');
    const handle = stack.spawnServer({ label: `${label}:${port}`, cmd: 'redis-server', args: [confPath, ...args], logFile, graceMs: 5000 });
    const url = `redis://${password ? `default:${password}@` : ''}127.0.0.1:${port}/0`;
    await waitFor(label, `PING on ${port}`, async () => {
        if (handle.exitInfo) throw new stack.StackError(label, `exited: ${stack.tailFile(logFile, 10)}`);
        return stack.pingRedis(url, 500);
    }, 10000);
    return { port, handle, dir, logFile };
}

const dataConf = (password) => `requirepass ${password}\nmasterauth ${password}\nsave ""\nappendonly no\n` +
    // a master waits up to 10 s for its replicas on SIGTERM by default: not for a test's servers
    'shutdown-timeout 0\n' +
    'protected-mode yes\nloglevel notice\n';

/** A cluster of `masters` masters (and `replicas` replicas each), slots spread by redis-cli. */
export async function startRedisCluster({ dir, masters = 3, replicas = 0, password, label = 'redis-cluster' } = {}) {
    password = password || crypto.randomBytes(16).toString('hex');
    const n = masters * (1 + replicas);
    const nodes = [];
    for (let i = 0; i < n; i++) {
        const d = path.join(dir, `node${i}`);
        nodes.push(await startNode({
            dir: d, label, password,
            // The bus port is chosen too: the default (port + 10000) may be another program's.
            conf: dataConf(password) + `cluster-enabled yes\ncluster-port ${await stack.freePort()}\n` +
                `cluster-config-file ${path.join(d, 'nodes.conf')}\n` +
                'cluster-node-timeout 1000\ncluster-replica-validity-factor 0\n',
        }));
    }
    await redisCli(nodes[0].port, password, '--cluster', 'create',
        ...nodes.map((x) => `127.0.0.1:${x.port}`), '--cluster-replicas', String(replicas), '--cluster-yes');
    await waitFor(label, 'cluster_state:ok on every node', async () => {
        for (const x of nodes) {
            const info = await redisCli(x.port, password, 'CLUSTER', 'INFO');
            if (!/cluster_state:ok/.test(info)) return false;
        }
        return true;
    }, 20000);
    const hosts = nodes.slice(0, masters).map((x) => `127.0.0.1:${x.port}`).join(',');
    return { url: `redis-cluster://default:${password}@${hosts}`, password, nodes };
}

/** One master, one replica and three sentinels (quorum 2) watching them as `mymaster`. */
export async function startRedisSentinelSet({ dir, password, name = 'mymaster', label = 'redis-sentinel' } = {}) {
    password = password || crypto.randomBytes(16).toString('hex');
    const master = await startNode({ dir: path.join(dir, 'master'), label: `${label}-master`, password, conf: dataConf(password) });
    const replica = await startNode({
        dir: path.join(dir, 'replica'), label: `${label}-replica`, password,
        conf: dataConf(password) + `replicaof 127.0.0.1 ${master.port}\n`,
    });
    await waitFor(label, 'the replica in sync', async () =>
        /master_link_status:up/.test(await redisCli(replica.port, password, 'INFO', 'replication')), 10000);
    const sentinels = [];
    for (let i = 0; i < 3; i++) {
        // Sentinel rewrites its configuration file: each gets its own writable copy.
        sentinels.push(await startNode({
            dir: path.join(dir, `sentinel${i}`), label, args: ['--sentinel'],
            conf: `sentinel monitor ${name} 127.0.0.1 ${master.port} 2\n` +
                `sentinel auth-pass ${name} ${password}\n` +
                `sentinel down-after-milliseconds ${name} 1000\n` +
                `sentinel failover-timeout ${name} 5000\n` +
                `sentinel parallel-syncs ${name} 1\n`,
        }));
    }
    await waitFor(label, 'the sentinels to know the replica and each other', async () => {
        for (const s of sentinels) {
            const reps = await redisCli(s.port, null, 'SENTINEL', 'REPLICAS', name);
            const others = await redisCli(s.port, null, 'SENTINEL', 'SENTINELS', name);
            if (!reps.includes(String(replica.port)) || (others.match(/^ip$/gm) || []).length < 2) return false;
        }
        return true;
    }, 30000);
    const hosts = sentinels.map((x) => `127.0.0.1:${x.port}`).join(',');
    return { url: `redis-sentinel://default:${password}@${hosts}/${name}`, password, name, master, replica, sentinels };
}
