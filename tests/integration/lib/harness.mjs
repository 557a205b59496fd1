// node:test glue for the integration tests: real servers started through deploy/local/stack.mjs
// in a before() hook and stopped in an after() hook, which node:test runs even when tests fail.
//
//   import { describe, it } from 'node:test';
//   import { withStack, request } from './lib/harness.mjs';
//   describe('chat', () => {
//       const stack = withStack({ replicas: { chat: 2 }, mysql: true });
//       it('answers', async () => { const r = await request(`${stack.url}/api/config`, { method: 'POST' }); ... });
//   });
//
// withStack() must be called at the top of a test file or inside a describe() callback. Each
// stack gets its own temporary DATA_DIR, removed afterwards unless KEEP_TEST_DIRS=1 (then its
// path is printed, with the service logs under logs/).
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before } from 'node:test';
import * as stackLib from '../../../deploy/local/stack.mjs';
import { startRedisSentinelSet } from '../../../deploy/local/redis-topo.mjs';

export * from './http.mjs';
export {
    ROOT, SERVICES, StackError, defaultBinDir, defaultRpcSecret, freePort, pidAlive, running, startFakeUpstream, startMariadb,
    startNginx, startRedis, startService, startStack, stopAll, tailFile,
} from '../../../deploy/local/stack.mjs';

const START_TIMEOUT_MS = 120000;

/** A new temporary directory, 0700 like every DATA_DIR (nginx's workers run as its owner). */
export function tempDir(prefix = 'chatweb-test-') {
    return fs.mkdtempSync(path.join(os.tmpdir(), prefix));
}

function dropDir(dir, label) {
    if (process.env.KEEP_TEST_DIRS === '1') {
        process.stderr.write(`# ${label}: kept ${dir}\n`);
        return;
    }
    fs.rmSync(dir, { recursive: true, force: true });
}

/** True when $BUILD_DIR/bin/<name> exists (e.g. hasBinary('chatweb-chat')). */
export function hasBinary(name) {
    return fs.existsSync(path.join(stackLib.defaultBinDir(), name));
}

/**
 * Start a whole stack (stack.mjs startStack options; dir defaults to a temp dir) before the tests
 * of the enclosing file or describe(), stop it after them. Returns an object that is filled with
 * startStack's result ({url, services, redisUrl, db, fakeUpstream, ...}) once before() has run.
 */
export function withStack(opts = {}) {
    const stack = {};
    let started = null;
    let dir = null;
    before(async () => {
        dir = opts.dir || tempDir('chatweb-stack-');
        started = await stackLib.startStack({ ...opts, dir });
        Object.assign(stack, started);
    }, { timeout: START_TIMEOUT_MS });
    after(async () => {
        if (started) await started.stop();
        if (dir && !opts.dir) dropDir(dir, 'withStack');
    }, { timeout: START_TIMEOUT_MS });
    return stack;
}

/**
 * withStack on a Redis Sentinel set of its own (1 master, 1 replica, 3 sentinels quorum 2:
 * deploy/local/redis-topo.mjs), started before the stack and stopped after it. Returns
 * {stack, set}: set ({url, password, name, master, replica, sentinels}) is filled in before().
 */
export function withSentinelStack(opts = {}) {
    const out = { stack: null, set: null };
    const dir = tempDir('chatweb-sentinel-');
    before(async () => {
        out.set = await startRedisSentinelSet({ dir: path.join(dir, 'sentinel') });
        opts.redisUrl = out.set.url;
    }, { timeout: START_TIMEOUT_MS });
    out.stack = withStack(opts);
    after(async () => {
        const s = out.set;
        for (const h of [...(s?.sentinels || []), s?.replica, s?.master]) if (h) await h.handle.stop().catch(() => {});
        dropDir(dir, 'withSentinelStack');
    }, { timeout: START_TIMEOUT_MS });
    return out;
}

/**
 * Start only the servers asked for ({redis: true, mariadb: true}) for the enclosing tests.
 * Returns an object filled before the tests with {redisUrl, redis, mysqlDsn, mariadb}.
 */
export function withServers({ redis = false, mariadb = false } = {}) {
    const out = {};
    const handles = [];
    let dir = null;
    before(async () => {
        dir = tempDir('chatweb-servers-');
        if (redis) {
            out.redis = await stackLib.startRedis({ dir: path.join(dir, 'redis') });
            handles.push(out.redis);
            out.redisUrl = out.redis.url;
        }
        if (mariadb) {
            out.mariadb = await stackLib.startMariadb({ dir: path.join(dir, 'mariadb'), fast: true });
            handles.push(out.mariadb);
            out.mysqlDsn = out.mariadb.dsn;
        }
    }, { timeout: START_TIMEOUT_MS });
    after(async () => {
        for (const h of handles.reverse()) await h.stop();
        if (dir) dropDir(dir, 'withServers');
    }, { timeout: START_TIMEOUT_MS });
    return out;
}
