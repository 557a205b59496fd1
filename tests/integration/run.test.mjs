// What `make run` does after the build (node deploy/local/run.mjs), with the real binaries: the
// whole stack comes up behind nginx, a static user chats with streamed replies, the previous
// turn's history reaches the (fake) upstream, and Ctrl-C leaves no process behind.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { after, describe, it } from 'node:test';
import { ROOT, basicAuth, freePort, getJSON, pidAlive, streamBody, tempDir } from './lib/harness.mjs';

describe('make run (deploy/local/run.mjs)', () => {
    const dataDir = tempDir('chatweb-run-');
    let child = null;
    let stdout = '';
    after(() => {
        if (child && child.exitCode === null) child.kill('SIGKILL');
        fs.rmSync(dataDir, { recursive: true, force: true });
    });

    it('serves a streamed chat with history through nginx, and Ctrl-C stops everything', { timeout: 120000 }, async () => {
        const port = await freePort();
        child = spawn(process.execPath, [path.join(ROOT, 'deploy/local/run.mjs')], {
            cwd: ROOT,
            env: {
                PATH: process.env.PATH, BUILD_DIR: process.env.BUILD_DIR || 'build', DATA_DIR: dataDir,
                SERVER_HOST: '127.0.0.1', SERVER_PORT: String(port),
                BASIC_AUTH_USER: 'alice', BASIC_AUTH_PASSWORD: 'wonderland',
            },
            stdio: ['ignore', 'pipe', 'pipe'],
        });
        child.stdout.on('data', (d) => { stdout += d; });
        child.stderr.on('data', (d) => { stdout += d; });
        const exited = new Promise((resolve) => child.on('exit', (code, signal) => resolve({ code, signal })));
        for (let i = 0; i < 600 && !stdout.includes('Press Ctrl-C'); i++) {
            if (child.exitCode !== null) break;
            await new Promise((r) => setTimeout(r, 100));
        }
        assert.match(stdout, /REPLIES ARE FAKE/, 'the fake upstream is announced loudly');
        assert.match(stdout, new RegExp(`chatweb is up .*http://127\\.0\\.0\\.1:${port}/`), stdout);
        const info = JSON.parse(fs.readFileSync(path.join(dataDir, 'stack.json'), 'utf8'));
        // DATA_DIR and stack.json (the Redis URL with its password) are the owner's only, and the
        // password is not printed
        assert.equal(fs.statSync(dataDir).mode & 0o777, 0o700, 'DATA_DIR is 0700');
        assert.equal(fs.statSync(path.join(dataDir, 'stack.json')).mode & 0o777, 0o600, 'stack.json is 0600');
        const redisPassword = new URL(info.redisUrl).password;
        assert.ok(redisPassword.length >= 32, 'the stack\'s Redis has a password');
        assert.ok(!stdout.includes(redisPassword), 'the Redis password is not printed');

        const url = `http://127.0.0.1:${port}/api/chat-process`;
        const headers = { authorization: basicAuth('alice', 'wonderland'), 'content-type': 'application/json' };
        const first = await streamBody(url, { method: 'POST', headers, body: JSON.stringify({ prompt: 'remember 42', options: {} }) });
        assert.equal(first.status, 200);
        const lines = first.text.split('\n').map((l) => JSON.parse(l));
        assert.ok(lines.length >= 2);
        const parent = lines[lines.length - 1];
        const second = await streamBody(url, {
            method: 'POST', headers, body: JSON.stringify({ prompt: 'what did I say?', options: { parentMessageId: parent.id } }),
        });
        assert.equal(second.status, 200);
        const reqs = (await getJSON(`${info.fakeUpstream}/_fake/requests`)).requests;
        const msgs = reqs[reqs.length - 1].body.messages;
        assert.deepEqual(msgs.map((m) => m.content), ['remember 42', parent.text, 'what did I say?']);

        child.kill('SIGINT');
        const how = await exited;
        assert.equal(how.code, 0, stdout);
        for (const p of info.processes) assert.equal(pidAlive(p.pid), false, `${p.name} (pid ${p.pid}) is gone`);
    });
});
