#!/usr/bin/env node
// bench/billing/run.mjs: reserve+settle latency (p50, p99) and throughput on SQLite and MariaDB,
// each beside a bare UPDATE on the same database in the same run.
//
//   node bench/billing/run.mjs [--seconds 3] [--threads 8] [--only sqlite|mariadb] [--fast]
//
// For each back end: starts Redis, MariaDB (durable settings unless --fast), one chatweb-billing
// replica on that database, then runs $BUILD_DIR/bin/chatweb-billing-bench, which measures
//   bare-update   one autocommit UPDATE of one row (the floor of any SQL write)
//   store-cycle   Reserve + Settle as the service runs them (2 transactions), in process
//   rpc-cycle     Reserve + Settle over the protobuf RPC against the running service
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { defaultBinDir, defaultRpcSecret, startMariadb, startRedis, startService } from '../../deploy/local/stack.mjs';

const args = process.argv.slice(2);
const opt = (name, def) => { const i = args.indexOf(name); return i >= 0 ? args[i + 1] : def; };
const seconds = opt('--seconds', '3');
const threads = opt('--threads', '8');
const only = opt('--only', null);
const fast = args.includes('--fast');

console.log(`# chatweb billing bench: ${os.cpus().length} cores, ${seconds} s per row, ${threads} threads for throughput` +
    `${fast ? ', MariaDB with relaxed fsync (--fast)' : ''}`);
for (const backend of ['sqlite', 'mariadb']) {
    if (only && only !== backend) continue;
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), `chatweb-billing-bench-${backend}-`));
    const handles = [];
    try {
        const redis = await startRedis({ dir: path.join(dir, 'redis') });
        handles.push(redis);
        let dsn = '';
        if (backend === 'mariadb') {
            const m = await startMariadb({ dir: path.join(dir, 'mariadb'), fast });
            handles.push(m);
            dsn = m.dsn;
        }
        const env = { REDIS_URL: redis.url, LOG_LEVEL: 'warn' };
        if (dsn) env.DB = dsn;
        const svc = await startService('billing', { env, dir, readyTimeoutMs: 30000 });
        handles.push(svc);
        const out = execFileSync(path.join(defaultBinDir(), 'chatweb-billing-bench'),
            ['--db', dsn, '--data-dir', dir, '--rpc', svc.url, '--seconds', seconds, '--threads', threads],
            { encoding: 'utf8', env: { ...process.env, LOG_LEVEL: 'warn', RPC_SECRET: defaultRpcSecret() }, stdio: ['ignore', 'pipe', 'inherit'] });
        process.stdout.write(out);
    } finally {
        for (const h of handles.reverse()) await h.stop().catch(() => {});
        fs.rmSync(dir, { recursive: true, force: true });
    }
}
