// The attacks of issue 10 replayed against `make run` itself (deploy/local/run.mjs, the real
// one-machine stack with its fake upstream), by tests/attack/replay.mjs (make attack-replay):
// every attack must fail as docs/security.md says, and none may go unchecked here.
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { after, describe, it } from 'node:test';
import { ROOT, freePort, tempDir } from './lib/harness.mjs';

const OPS_KEY = 'attack-replay-ops-key-0123456789ab';

describe('the attack replay against make run', () => {
    const dataDir = tempDir('chatweb-replay-');
    let child = null;
    after(async () => {
        if (child && child.exitCode === null) {
            child.kill('SIGINT');
            await new Promise((r) => { child.on('exit', r); setTimeout(r, 20000).unref(); });
        }
        if (child && child.exitCode === null) child.kill('SIGKILL');
        fs.rmSync(dataDir, { recursive: true, force: true });
    });

    it('every attack fails as it must', { timeout: 180000 }, async () => {
        const port = await freePort();
        let out = '';
        child = spawn(process.execPath, [path.join(ROOT, 'deploy/local/run.mjs')], {
            cwd: ROOT,
            env: {
                PATH: process.env.PATH, BUILD_DIR: process.env.BUILD_DIR || 'build', DATA_DIR: dataDir,
                SERVER_HOST: '127.0.0.1', SERVER_PORT: String(port), OPS_KEY,
            },
            stdio: ['ignore', 'pipe', 'pipe'],
        });
        child.stdout.on('data', (d) => { out += d; });
        child.stderr.on('data', (d) => { out += d; });
        for (let i = 0; i < 1200 && !out.includes('Press Ctrl-C'); i++) {
            if (child.exitCode !== null) break;
            await new Promise((r) => setTimeout(r, 100));
        }
        assert.match(out, /Press Ctrl-C/, out);
        const r = spawnSync(process.execPath, [path.join(ROOT, 'tests/attack/replay.mjs'), '--data-dir', dataDir], {
            env: { ...process.env, OPS_KEY }, encoding: 'utf8', timeout: 150000,
        });
        assert.equal(r.status, 0, `${r.stdout}\n${r.stderr}`);
        assert.match(r.stdout, /^(\d+) of \1 attacks held, 0 broken, 0 not checked$/m, r.stdout);
        assert.doesNotMatch(r.stdout, /BROKEN/);
    });
});
