// What `make run` does after the build (node deploy/local/run.mjs), with the real binaries: the
// whole stack comes up behind nginx, a static user chats with streamed replies, the previous
// turn's history reaches the (fake) upstream, and Ctrl-C leaves no process behind.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { after, describe, it } from 'node:test';
import { ROOT, basicAuth, freePort, getJSON, pidAlive, postJSON, request, streamBody, tempDir } from './lib/harness.mjs';

/** Starts run.mjs on a free port with env; resolves {child, port, output(), exited} once it is up. */
async function startRun(env) {
    const port = await freePort();
    let out = '';
    const child = spawn(process.execPath, [path.join(ROOT, 'deploy/local/run.mjs')], {
        cwd: ROOT,
        env: { PATH: process.env.PATH, BUILD_DIR: process.env.BUILD_DIR || 'build', SERVER_HOST: '127.0.0.1', SERVER_PORT: String(port), ...env },
        stdio: ['ignore', 'pipe', 'pipe'],
    });
    child.stdout.on('data', (d) => { out += d; });
    child.stderr.on('data', (d) => { out += d; });
    const exited = new Promise((resolve) => child.on('exit', (code, signal) => resolve({ code, signal })));
    for (let i = 0; i < 600 && !out.includes('Press Ctrl-C'); i++) {
        if (child.exitCode !== null) break;
        await new Promise((r) => setTimeout(r, 100));
    }
    assert.match(out, /Press Ctrl-C/, out);
    return { child, port, output: () => out, exited };
}

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

    it('first run without OPS_KEY or BASIC_AUTH_USER: makes, prints once and keeps an operator key and an admin user', { timeout: 120000 }, async () => {
        const dir = tempDir('chatweb-first-run-');
        let run = null;
        try {
            run = await startRun({ DATA_DIR: dir });
            const out = run.output();
            const file = path.join(dir, 'first-run.json');
            assert.equal(fs.statSync(file).mode & 0o777, 0o600, 'first-run.json is 0600');
            const creds = JSON.parse(fs.readFileSync(file, 'utf8'));
            assert.ok(creds.ops_key.length >= 32 && creds.admin_password.length >= 16, 'random and long');
            assert.equal(creds.admin_user, 'admin');
            assert.ok(out.includes(creds.admin_password) && out.includes(creds.ops_key), 'printed with the URL');
            assert.match(out, new RegExp(`FIRST RUN[\\s\\S]*http://127\\.0\\.0\\.1:${run.port}/`));
            const base = `http://127.0.0.1:${run.port}`;
            // The built web UI is what / and /admin/ serve.
            const page = await request(`${base}/`);
            assert.equal(page.status, 200);
            assert.match(page.body, /<div id="root">/);
            assert.match((await request(`${base}/admin/`)).body, /<div id="root">/);
            const login = (await postJSON(`${base}/api/login`, { username: 'admin', password: creds.admin_password })).json();
            assert.equal(login.status, 'Success', JSON.stringify(login));
            const list = (await postJSON(`${base}/accounts`, { action: 'list' }, { headers: { Opskey: creds.ops_key } })).json();
            assert.equal(list.status, 'Success');
            assert.deepEqual(list.data.map((u) => u.Username), ['admin']);
            run.child.kill('SIGINT');
            assert.equal((await run.exited).code, 0);

            // The next start uses them again and does not print them.
            run = await startRun({ DATA_DIR: dir });
            const out2 = run.output();
            assert.ok(!out2.includes(creds.admin_password) && !out2.includes(creds.ops_key), out2);
            assert.match(out2, /password and operator key in .*first-run\.json/);
            assert.deepEqual(JSON.parse(fs.readFileSync(file, 'utf8')).ops_key, creds.ops_key);
            const base2 = `http://127.0.0.1:${run.port}`;
            const again = (await postJSON(`${base2}/api/login`, { username: 'admin', password: creds.admin_password })).json();
            assert.equal(again.status, 'Success', JSON.stringify(again));
            run.child.kill('SIGINT');
            assert.equal((await run.exited).code, 0);
            run = null;

            // An operator's own OPS_KEY wins: nothing is made or used.
            const dir2 = tempDir('chatweb-first-run-');
            try {
                run = await startRun({ DATA_DIR: dir2, OPS_KEY: 'an-operator-key-of-24-chars-or-more' });
                assert.equal(fs.existsSync(path.join(dir2, 'first-run.json')), false);
                assert.doesNotMatch(run.output(), /FIRST RUN/);
                run.child.kill('SIGINT');
                assert.equal((await run.exited).code, 0);
                run = null;
            } finally {
                fs.rmSync(dir2, { recursive: true, force: true });
            }
        } finally {
            if (run && run.child.exitCode === null) run.child.kill('SIGKILL');
            fs.rmSync(dir, { recursive: true, force: true });
        }
    });
});
