#!/usr/bin/env node
// Runs bench/chat_auth: a private redis-server (the reference), then
// chatweb-chat-authmemo-bench: the cost chat adds to a request it authenticates from memory.
//   BUILD_DIR=build node bench/chat_auth/run.mjs [iterations]
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { defaultBinDir, startRedis, stopAll } from '../../deploy/local/stack.mjs';

const n = process.argv[2] || '20000';
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'chatweb-chat-auth-bench-'));
try {
    const redis = await startRedis({ dir: path.join(dir, 'redis') });
    const r = spawnSync(path.join(defaultBinDir(), 'chatweb-chat-authmemo-bench'), [n], {
        stdio: 'inherit', env: { ...process.env, REDIS_URL: redis.url },
    });
    process.exitCode = r.status === null ? 1 : r.status;
} finally {
    await stopAll();
    fs.rmSync(dir, { recursive: true, force: true });
}
