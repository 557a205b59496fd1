#!/usr/bin/env node
// Runs bench/auth: a private redis-server and one chatweb-auth, then chatweb-auth-bench against
// them (in-process cached authentication and the Authenticate RPC, beside a plain Redis GET).
//   BUILD_DIR=build node bench/auth/run.mjs [iterations]
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { defaultBinDir, defaultRpcSecret, startRedis, startService, stopAll } from '../../deploy/local/stack.mjs';

const n = process.argv[2] || '20000';
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'chatweb-auth-bench-'));
try {
    const redis = await startRedis({ dir: path.join(dir, 'redis') });
    const auth = await startService('auth', {
        dir, env: { REDIS_URL: redis.url, BASIC_AUTH_USER: 'bench', BASIC_AUTH_PASSWORD: 'bench-password', LOG_LEVEL: 'warn' },
    });
    const authz = `Basic ${Buffer.from('bench:bench-password').toString('base64')}`;
    const r = spawnSync(path.join(defaultBinDir(), 'chatweb-auth-bench'), [n], {
        stdio: 'inherit',
        env: { ...process.env, REDIS_URL: redis.url, AUTH_URL: auth.url, AUTH_BENCH_AUTHORIZATION: authz, RPC_SECRET: defaultRpcSecret() },
    });
    process.exitCode = r.status === null ? 1 : r.status;
} finally {
    await stopAll();
    fs.rmSync(dir, { recursive: true, force: true });
}
