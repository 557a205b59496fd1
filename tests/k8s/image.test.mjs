// The image recipe (issue 11, item 1): the Dockerfile runs exactly the steps of
// scripts/image-steps, in its order, and those steps produce a tree whose binaries start and whose
// web root the web server config serves. No container engine runs here, so this is as close to
// "what CI tests is what the image ships" as the machine allows.
import { describe, it, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { freePort } from '../../deploy/local/stack.mjs';
import { ROOT, parseDockerfile } from './lib.mjs';

const STEPS = path.join(ROOT, 'scripts/image-steps');

function steps() {
    const r = spawnSync(STEPS, ['--list'], { encoding: 'utf8' });
    assert.equal(r.status, 0, r.stderr);
    return r.stdout.trim().split('\n');
}

const WORKDIR = '/src';

// The files the build stage copies before its deps step: [{src, dest}], dest relative to WORKDIR.
function depsInputs() {
    const df = parseDockerfile(fs.readFileSync(path.join(ROOT, 'Dockerfile'), 'utf8'));
    const ins = df.stages[0].instructions;
    const depsAt = ins.findIndex((i) => i.op === 'RUN' && i.args === 'scripts/image-steps deps');
    assert.deepEqual(ins.find((i) => i.op === 'WORKDIR'), { op: 'WORKDIR', args: WORKDIR });
    const out = [];
    for (const i of ins.slice(0, depsAt).filter((x) => x.op === 'COPY')) {
        const words = i.args.split(' ');
        assert.ok(!words.some((w) => w.startsWith('--')), `COPY ${i.args}: no flags before deps`);
        const dest = words.pop();
        assert.ok(words.length === 1 || dest.endsWith('/'), `COPY ${i.args}: several sources need a directory`);
        for (const src of words) {
            const d = dest.endsWith('/') ? dest + path.basename(src) : dest;
            out.push({ src, dest: path.posix.isAbsolute(d) ? path.posix.relative(WORKDIR, d) : path.posix.normalize(d) });
        }
    }
    return out;
}

// A directory holding only depsInputs(), where the build stage's WORKDIR would be at the deps step.
function depsSandbox() {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'chatweb-deps-'));
    process.on('exit', () => fs.rmSync(dir, { recursive: true, force: true }));
    for (const { src, dest } of depsInputs()) {
        fs.mkdirSync(path.dirname(path.join(dir, dest)), { recursive: true });
        fs.copyFileSync(path.join(ROOT, src), path.join(dir, dest));
        fs.chmodSync(path.join(dir, dest), fs.statSync(path.join(ROOT, src)).mode & 0o7777);
    }
    return dir;
}

// Runs DIR/scripts/image-steps deps with stand-ins for the package tools: dpkg-query says a
// package is installed once the stand-in apt-get has "installed" it, and apt-get logs its calls.
function runDeps(dir) {
    const fake = fs.mkdtempSync(path.join(os.tmpdir(), 'chatweb-deps-bin-'));
    try {
        const standIn = (name, body) => fs.writeFileSync(path.join(fake, name), `#!/bin/sh\n${body}\n`, { mode: 0o755 });
        standIn('apt-get', [
            'echo "apt-get $*" >> "$FAKE/apt.log"',
            '[ "$1" = install ] || exit 0',
            'for a; do case $a in install | -*) ;; *) echo "$a" >> "$FAKE/installed" ;; esac; done',
        ].join('\n'));
        standIn('dpkg-query', [
            'for a; do pkg=$a; done',
            'grep -qx -- "$pkg" "$FAKE/installed" 2>/dev/null || exit 1',
            'printf "install ok installed"',
        ].join('\n'));
        standIn('sudo', 'exec "$@"');
        const r = spawnSync(path.join(dir, 'scripts/image-steps'), ['deps'], {
            encoding: 'utf8',
            cwd: os.tmpdir(),
            env: { ...process.env, PATH: `${fake}:${process.env.PATH}`, FAKE: fake },
        });
        if (r.error) throw r.error;
        const apt = fs.existsSync(path.join(fake, 'apt.log')) ? fs.readFileSync(path.join(fake, 'apt.log'), 'utf8') : '';
        return { status: r.status, stdout: r.stdout, stderr: r.stderr, apt };
    } finally {
        fs.rmSync(fake, { recursive: true, force: true });
    }
}

describe('Dockerfile and scripts/image-steps', () => {
    const df = parseDockerfile(fs.readFileSync(path.join(ROOT, 'Dockerfile'), 'utf8'));

    it('has a build stage and a runtime stage, both Debian 12 slim', () => {
        assert.equal(df.stages.length, 2);
        assert.equal(df.stages[0].from, 'debian:12-slim AS build');
        assert.equal(df.stages[1].from, 'debian:12-slim');
    });

    it('the build stage runs every image step, in the order --list prints, and nothing else', () => {
        const runs = df.stages[0].instructions.filter((i) => i.op === 'RUN').map((i) => i.args);
        const called = runs.map((r) => {
            const m = /^scripts\/image-steps (\S+)(?: \S+)?$/.exec(r);
            assert.ok(m, `a RUN that is not one image step: ${r}`);
            return m[1];
        });
        assert.deepEqual(called, steps());
    });

    // The deps step (minutes of apt-get) gets its own layer: only the files it reads are copied
    // before it, so a commit that changes none of them reuses the installed packages.
    const build = df.stages[0].instructions;
    const depsAt = build.findIndex((i) => i.op === 'RUN' && i.args === 'scripts/image-steps deps');

    it('copies only single files before the deps step, and the whole tree right after it', () => {
        assert.ok(depsAt > 0, 'no RUN scripts/image-steps deps');
        assert.deepEqual(build.slice(0, depsAt).map((i) => i.op).filter((op) => op !== 'COPY'), ['WORKDIR']);
        assert.ok(depsInputs().length > 0, 'nothing copied before the deps step');
        // A directory (`COPY . .`, `COPY scripts/ scripts/`) would bring files the step does not
        // read, and their every change would rerun the package install.
        for (const { src } of depsInputs())
            assert.ok(fs.statSync(path.join(ROOT, src)).isFile(), `${src} (copied before deps) is not a single file`);
        assert.deepEqual(build[depsAt + 1], { op: 'COPY', args: '. .' });
    });

    it('the deps step reads no file but those copied before it', () => {
        // It runs twice with stand-ins for apt-get, dpkg-query and sudo (every package missing
        // until apt-get "installs" it; nothing is installed for real): in a directory holding only
        // the files the Dockerfile copies before it, and in the whole tree. A file it reads that is
        // not copied makes the first run fail or act differently (another package list).
        const runs = [depsSandbox(), ROOT].map((dir) => runDeps(dir));
        assert.equal(runs[0].status, 0, `deps with only the copied files: ${runs[0].stderr}`);
        assert.match(runs[0].apt, /^apt-get install -y -qq cmake /m, 'the stand-ins were not used');
        assert.deepEqual(runs[0], runs[1]);
    });

    it('the runtime stage installs the staged package list, copies the tree and runs as chatweb (10001)', () => {
        const ins = df.stages[1].instructions;
        const runs = ins.filter((i) => i.op === 'RUN').map((i) => i.args);
        assert.deepEqual(runs, ['/tmp/image-steps runtime /tmp/runtime-packages && rm /tmp/image-steps /tmp/runtime-packages']);
        assert.ok(ins.some((i) => i.op === 'COPY' && i.args === '--from=build /out/ /'));
        const users = ins.filter((i) => i.op === 'USER').map((i) => i.args);
        assert.deepEqual(users, ['10001:10001']);
        // The user comes after the last RUN: nothing runs as root once the tree is in place.
        const lastRun = ins.map((i) => i.op).lastIndexOf('RUN');
        assert.ok(ins.findIndex((i) => i.op === 'USER') > lastRun);
        assert.match(fs.readFileSync(STEPS, 'utf8'), /CHATWEB_UID=10001/);
    });

    it('CI runs the same steps on the host', () => {
        const ci = fs.readFileSync(path.join(ROOT, '.ci/run'), 'utf8');
        assert.match(ci, /^\s*IMAGE_BUILD_DIR=build scripts\/image-steps all \S+/m);
    });

    it('needs no BuildKit frontend: no syntax line, nothing the classic builder lacks', () => {
        // A `# syntax=` line makes BuildKit pull its frontend from Docker Hub (scripts/image-check
        // builds offline with DOCKER_BUILDKIT=0); these forms exist only in BuildKit.
        const text = fs.readFileSync(path.join(ROOT, 'Dockerfile'), 'utf8');
        assert.doesNotMatch(text, /^#\s*syntax\s*=/im);
        for (const s of df.stages)
            for (const i of s.instructions) {
                assert.doesNotMatch(i.args, /^--(mount|network|security|link|chmod|parents|exclude)\b/, `${i.op} ${i.args}`);
                assert.doesNotMatch(i.args, /<<-?["']?\w+/, `a heredoc: ${i.op} ${i.args}`);
            }
    });

    it('.dockerignore keeps build trees and node_modules out of the context', () => {
        const ign = fs.readFileSync(path.join(ROOT, '.dockerignore'), 'utf8').split('\n');
        for (const p of ['build', 'build-*', '**/node_modules', 'var', '.git']) assert.ok(ign.includes(p), p);
    });
});

describe('the staged tree', () => {
    const dest = fs.mkdtempSync(path.join(os.tmpdir(), 'chatweb-image-'));
    after(() => fs.rmSync(dest, { recursive: true, force: true }));
    const env = { ...process.env, IMAGE_BUILD_DIR: path.resolve(ROOT, process.env.BUILD_DIR || 'build') };

    it('stage and check succeed on the build and list the runtime packages', () => {
        for (const step of ['stage', 'check']) {
            const r = spawnSync(STEPS, [step, dest], { encoding: 'utf8', env });
            assert.equal(r.status, 0, `${step}: ${r.stderr}`);
        }
        for (const s of ['auth', 'billing', 'chat', 'proxy'])
            assert.ok(fs.statSync(path.join(dest, `usr/local/bin/chatweb-${s}`)).mode & 0o111);
        const pkgs = fs.readFileSync(path.join(dest, 'usr/share/chatweb/runtime-packages'), 'utf8').trim().split('\n');
        for (const p of ['libhiredis0.14', 'libcurl4', 'libmariadb3', 'libsodium23'])
            assert.ok(pkgs.includes(p), `${p} in ${pkgs.join(' ')}`);
        assert.ok(!pkgs.includes('libc6'));
        const web = fs.existsSync(path.join(ROOT, 'web/dist/index.html')) ? 'web/dist' : 'deploy/local/www';
        assert.equal(fs.readFileSync(path.join(dest, 'usr/share/chatweb/www-source'), 'utf8').trim(), web);
    });

    it('the web server config serves the web root like the local ingress', async () => {
        const port = await freePort();
        const conf = fs.readFileSync(path.join(dest, 'etc/chatweb/web-nginx.conf'), 'utf8')
            .replaceAll('/tmp/', `${dest}/`)
            .replaceAll('/usr/share/chatweb/www', path.join(dest, 'usr/share/chatweb/www'))
            .replace('listen 8080;', `listen 127.0.0.1:${port};`);
        const user = process.getuid() === 0 ? 'user root;\n' : '';
        fs.writeFileSync(path.join(dest, 'web.conf'), user + conf);
        const ng = spawn('nginx', ['-e', 'stderr', '-p', dest, '-c', path.join(dest, 'web.conf')], { stdio: ['ignore', 'ignore', 'pipe'] });
        let err = '';
        ng.stderr.on('data', (d) => { err += d; });
        try {
            const base = `http://127.0.0.1:${port}`;
            let up = false;
            for (let i = 0; i < 100 && !up; i++) {
                try { up = (await fetch(`${base}/healthz`)).status === 200; } catch { await new Promise((r) => setTimeout(r, 50)); }
            }
            assert.ok(up, `web nginx did not start: ${err}`);
            const get = (p) => fetch(base + p, { redirect: 'manual' });
            assert.equal((await get('/')).status, 200);
            assert.equal((await get('/admin/')).status, 200);
            const a = await get('/admin');
            assert.equal(a.status, 301);
            assert.equal(a.headers.get('location'), '/admin/');
            assert.equal((await get('/rpc/Auth/Authenticate')).status, 404);
            assert.equal((await get('/no-such-file')).status, 404);
            assert.equal((await get('/')).headers.get('x-frame-options'), 'DENY');
            // gzip (fetch asks for it) and caching like the local ingress's static root: the built
            // UI's .gz copies when it is staged, else the placeholder compressed on the fly.
            const index = await get('/');
            assert.equal(index.headers.get('content-encoding'), 'gzip');
            assert.equal(index.headers.get('cache-control'), 'no-cache');
            assert.equal((await get('/healthz')).headers.get('cache-control'), null);
            const html = await index.text();
            for (const [, src] of html.matchAll(/(?:src|href)="(\/assets\/[^"]+\.(?:js|css))"/g)) {
                const r = await get(src);
                assert.equal(r.headers.get('content-encoding'), 'gzip', src);
                assert.equal(r.headers.get('cache-control'), 'public, max-age=31536000, immutable', src);
                assert.equal(Buffer.compare(Buffer.from(await r.arrayBuffer()), fs.readFileSync(path.join(dest, 'usr/share/chatweb/www', src))), 0, src);
            }
        } finally {
            ng.kill('SIGTERM');
            await new Promise((r) => ng.once('exit', r));
        }
    });
});
