#!/usr/bin/env node
// deploy/local/with-servers.mjs (run it as scripts/with-servers): start the servers asked for on
// free ports, run a command with their addresses in its environment, stop the servers, and exit
// with the command's status. The servers are stopped also when the command fails, on Ctrl-C and
// on SIGTERM.
//
//   scripts/with-servers [--redis] [--redis-ha] [--mariadb] [--keep-dir] -- CMD ARGS...
//
// Exports to CMD:
//   --redis    REDIS_URL=redis://default:PASSWORD@127.0.0.1:PORT/0 (and TEST_REDIS_URL, the same); the
//              password is random, like every Redis deploy/local starts
//   --redis-ha TEST_REDIS_CLUSTER_URL=redis-cluster://default:PASSWORD@127.0.0.1:P1,P2,P3 (3 masters)
//              and TEST_REDIS_SENTINEL_URL=redis-sentinel://default:PASSWORD@127.0.0.1:S1,S2,S3/mymaster
//              (1 master, 1 replica, 3 sentinels; deploy/local/redis-topo.mjs), and
//              TEST_REQUIRE_REDIS_HA=1, so tests/unit/test_redis_ha fails instead of skipping
//   --mariadb  TEST_MYSQL_DSN=mysql://chatweb:PASSWORD@127.0.0.1:PORT/chatweb; the user may also
//              create databases named chatweb_* (scratch databases for tests); and
//              TEST_REQUIRE_MYSQL=1, so a test that would skip its MariaDB half fails instead
//   WITH_SERVERS_DIR=the temporary directory with the servers' data and logs (removed afterwards
//              unless --keep-dir)
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { spawn } from 'node:child_process';
import * as stack from './stack.mjs';
import { startRedisCluster, startRedisSentinelSet } from './redis-topo.mjs';

const USAGE = 'usage: scripts/with-servers [--redis] [--redis-ha] [--mariadb] [--keep-dir] -- CMD ARGS...';

function fail(msg, code = 2) {
    process.stderr.write(`with-servers: ${msg}\n`);
    process.exit(code);
}

async function main() {
    const argv = process.argv.slice(2);
    const sep = argv.indexOf('--');
    const opts = sep < 0 ? argv : argv.slice(0, sep);
    const cmd = sep < 0 ? [] : argv.slice(sep + 1);
    if (opts.includes('-h') || opts.includes('--help')) {
        process.stdout.write(`${USAGE}\n`);
        return 0;
    }
    for (const o of opts) if (!['--redis', '--redis-ha', '--mariadb', '--mysql', '--keep-dir'].includes(o)) fail(`unknown option ${o}\n${USAGE}`);
    if (cmd.length === 0) fail(`no command given\n${USAGE}`);
    const wantRedis = opts.includes('--redis');
    const wantHa = opts.includes('--redis-ha');
    const wantMaria = opts.includes('--mariadb') || opts.includes('--mysql');
    const keep = opts.includes('--keep-dir');

    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'chatweb-servers-'));   // 0700
    const cleanDir = () => {
        if (keep) process.stderr.write(`with-servers: kept ${dir}\n`);
        else fs.rmSync(dir, { recursive: true, force: true });
    };

    let child = null;
    // Ctrl-C reaches CMD directly (same process group); we wait for it to finish, then stop the
    // servers. SIGTERM/SIGHUP sent to us alone are passed on to CMD.
    stack.onSignal(async (sig) => {
        if (!child) {
            await stack.stopAll();
            cleanDir();
            process.exit(128 + os.constants.signals[sig]);
        }
        if (sig !== 'SIGINT') child.kill(sig);
    });

    const env = { ...process.env, WITH_SERVERS_DIR: dir };
    try {
        if (wantRedis) {
            const r = await stack.startRedis({ dir: path.join(dir, 'redis') });
            env.REDIS_URL = r.url;
            env.TEST_REDIS_URL = r.url;
        }
        if (wantHa) {
            const c = await startRedisCluster({ dir: path.join(dir, 'redis-cluster') });
            const s = await startRedisSentinelSet({ dir: path.join(dir, 'redis-sentinel') });
            env.TEST_REDIS_CLUSTER_URL = c.url;
            env.TEST_REDIS_SENTINEL_URL = s.url;
            env.TEST_REQUIRE_REDIS_HA = '1';
        }
        if (wantMaria) {
            const m = await stack.startMariadb({ dir: path.join(dir, 'mariadb'), fast: true });
            env.TEST_MYSQL_DSN = m.dsn;
            // MariaDB was asked for: a unit test that would skip its MariaDB half fails instead.
            env.TEST_REQUIRE_MYSQL = '1';
        }
    } catch (err) {
        process.stderr.write(`with-servers: ${err instanceof stack.StackError ? err.message : err.stack}\n`);
        await stack.stopAll();
        cleanDir();
        return 1;
    }

    const childExit = await new Promise((resolve) => {
        child = spawn(cmd[0], cmd.slice(1), { stdio: 'inherit', env });
        child.on('error', (err) => resolve({ code: err.code === 'ENOENT' ? 127 : 126, error: err }));
        child.on('exit', (code, signal) => resolve({ code, signal }));
    });
    if (childExit.error) process.stderr.write(`with-servers: cannot run ${cmd[0]}: ${childExit.error.message}\n`);

    await stack.stopAll();
    cleanDir();
    if (childExit.signal) return 128 + (os.constants.signals[childExit.signal] || 0);
    return childExit.code;
}

main().then((code) => process.exit(code), async (err) => {
    process.stderr.write(`with-servers: ${err.stack || err}\n`);
    await stack.stopAll();
    process.exit(1);
});
