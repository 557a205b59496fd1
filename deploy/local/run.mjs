#!/usr/bin/env node
// deploy/local/run.mjs: the one-machine chatweb stack, what `make run` starts after the build.
// Stays in the foreground; Ctrl-C (or SIGTERM) stops everything it started and exits 0. If any
// server dies on its own, it says which one, stops the rest and exits 1.
//
// Environment (all optional; see docs/operations.md):
//   SERVER_HOST (0.0.0.0), SERVER_PORT (7080)  where nginx listens (the seed's HOST/PORT also work)
//   DATA_DIR (var/ in the checkout)            Redis data, logs, nginx files, SQLite; one stack each
//   REDIS_URL                                  use this Redis instead of starting one
//   DB                                         mysql://user:pass@host:port/db instead of SQLite
//   OPENAI_KEY / OPENAI_BASE_URL               the real upstream; with neither, a FAKE one is started
//   REPLICAS                                   e.g. "chat=2,proxy=2" (default one of each)
//   WEB_ROOT (or the seed's FRONTEND_PATH)     static files for / and /admin/ (default deploy/local/www)
//   BUILD_DIR (build)                          where bin/chatweb-* are
//   everything else (OPENAI_MODEL, OPS_KEY, BASIC_AUTH_USER, ...) is passed to the services as is.
// Options: --mysql  start a MariaDB under DATA_DIR/mariadb for the services (instead of SQLite)
//          --tee    also copy every server's log lines to this terminal
import fs from 'node:fs';
import path from 'node:path';
import * as stack from './stack.mjs';

const HELP = fs.readFileSync(new URL(import.meta.url), 'utf8').split('\n').slice(1, 17)
    .map((l) => l.replace(/^\/\/ ?/, '')).join('\n');

function fail(msg) {
    process.stderr.write(`run: ${msg}\n`);
    process.exit(1);
}

function env(name) {
    const v = process.env[name];
    return v === undefined || v === '' ? undefined : v;
}

function parsePort(name, value) {
    if (!/^\d+$/.test(value) || Number(value) < 1 || Number(value) > 65535)
        fail(`${name}=${JSON.stringify(value)} is not a port number (1-65535)`);
    return Number(value);
}

function parseReplicas(value) {
    const out = {};
    if (!value) return out;
    for (const part of value.split(',')) {
        const m = /^\s*(auth|billing|chat|proxy)\s*=\s*(\d+)\s*$/.exec(part);
        if (!m || Number(m[2]) < 1 || Number(m[2]) > 64)
            fail(`REPLICAS=${JSON.stringify(value)}: expected e.g. "chat=2,proxy=2" (services auth, billing, chat, proxy; 1-64 each)`);
        out[m[1]] = Number(m[2]);
    }
    return out;
}

function fakeBanner() {
    const line = '!'.repeat(76);
    return [
        line,
        '!!  NO OPENAI_KEY OR OPENAI_BASE_URL IS SET: REPLIES ARE FAKE.',
        '!!  A local fake OpenAI upstream answers every chat with generated filler text.',
        '!!  Nothing is sent to OpenAI. For real answers, stop this and start it again with',
        '!!      OPENAI_KEY=sk-...  make run        (or OPENAI_BASE_URL=http://.../v1)',
        line,
    ].join('\n');
}

async function main() {
    const args = process.argv.slice(2);
    for (const a of args) {
        if (a === '-h' || a === '--help') {
            process.stdout.write(`${HELP}\n`);
            return;
        }
        if (a !== '--mysql' && a !== '--tee') fail(`unknown option ${a} (try --help)`);
    }
    const host = env('SERVER_HOST') || env('HOST') || '0.0.0.0';
    const port = parsePort(env('SERVER_PORT') ? 'SERVER_PORT' : 'PORT', env('SERVER_PORT') || env('PORT') || '7080');
    const dataDir = path.resolve(stack.ROOT, env('DATA_DIR') || 'var');
    const replicas = parseReplicas(env('REPLICAS'));
    const staticRoot = path.resolve(env('WEB_ROOT') || env('FRONTEND_PATH') || stack.DEFAULT_STATIC_ROOT);
    const wantMysql = args.includes('--mysql');
    if (wantMysql && env('DB')) fail('--mysql and DB are both given: pick one');

    stack.mkdirPrivate(dataDir);
    let current = null;
    let stopping = false;
    const stopAndExit = async (code) => {
        if (stopping) return;
        stopping = true;
        await stack.stopAll();
        if (current) {
            await current.stop();   // releases DATA_DIR/stack.pid
            fs.rmSync(path.join(dataDir, 'stack.json'), { force: true });
            process.stdout.write('run: stopped\n');
        }
        process.exit(code);
    };
    stack.onSignal(async (sig) => {
        process.stdout.write(`\nrun: ${sig}, stopping everything...\n`);
        await stopAndExit(0);
    });
    stack.onUnexpectedExit(async (h, info) => {
        if (stopping) return;
        const how = info.signal ? `was killed by ${info.signal}` : `exited with code ${info.code}`;
        process.stderr.write(`\nrun: ${h.label} (pid ${h.pid}) ${how} unexpectedly; last lines of ${h.logFile}:\n` +
            `${stack.tailFile(h.logFile, 15, h.logStart).split('\n').map((l) => `    ${l}`).join('\n')}\n` +
            'run: stopping the rest of the stack\n');
        await stopAndExit(1);
    });

    process.stdout.write(`run: starting the chatweb stack (DATA_DIR=${dataDir})\n`);
    const t0 = Date.now();
    try {
        current = await stack.startStack({
            dir: dataDir, listenHost: host, listenPort: port, replicas, mysql: wantMysql, staticRoot,
            inheritEnv: true, persist: true, tee: args.includes('--tee'),
            log: (msg) => process.stdout.write(`  ${msg}\n`),
        });
    } catch (err) {
        process.stderr.write(`run: ${err instanceof stack.StackError ? err.message : err.stack}\n`);
        if (err.code === 'EADDRINUSE' && err.component === 'nginx')
            process.stderr.write('run: is another stack running? Give each stack its own SERVER_PORT and DATA_DIR.\n');
        await stopAndExit(1);
        return;
    }

    const s = current;
    const info = {
        pid: process.pid, url: s.url, listen: `${host}:${s.port}`, dataDir, logDir: s.logDir,
        redisUrl: s.redisUrl, db: s.db ? s.db.replace(/\/\/([^:@/]*):[^@/]*@/, '//$1:***@') : `sqlite under ${dataDir}`,
        fakeUpstream: s.fakeUpstream ? s.fakeUpstream.url : null,
        services: Object.fromEntries(Object.entries(s.services).map(([n, hs]) => [n, hs.map((h) => ({
            pid: h.pid, http: h.httpAddr, admin: h.adminAddr, log: h.logFile,
        }))])),
        authUrl: s.authUrl, billingUrl: s.billingUrl,
        processes: s.handles.map((h) => ({ name: h.label, pid: h.pid, log: h.logFile })),
    };
    // It holds the Redis URL with its password: the owner's only, like the rest of DATA_DIR.
    stack.writePrivate(path.join(dataDir, 'stack.json'), `${JSON.stringify(info, null, 2)}\n`);

    const shown = host === '0.0.0.0' ? `http://127.0.0.1:${s.port}/  (listening on all interfaces, port ${s.port})`
        : `http://${host.includes(':') ? `[${host}]` : host}:${s.port}/`;
    const out = [''];
    if (s.fakeUpstream) out.push(fakeBanner(), '');
    out.push(`chatweb is up in ${((Date.now() - t0) / 1000).toFixed(1)} s: ${shown}`);
    out.push(`  logs:      ${s.logDir}/  (one file per server)`);
    out.push(`  database:  ${info.db}`);
    out.push(`  redis:     ${s.redisUrl.replace(/\/\/[^@/]*@/, '//***@')}${s.redis ? ' (password in stack.json)' : ' (external)'}`);
    out.push(`  addresses: ${path.join(dataDir, 'stack.json')}`);
    out.push('Press Ctrl-C to stop.', '');
    process.stdout.write(out.join('\n'));

    setInterval(() => {}, 1 << 30);   // stay in the foreground; the servers themselves are unref'd
}

main().catch(async (err) => {
    process.stderr.write(`run: ${err.stack || err}\n`);
    await stack.stopAll();
    process.exit(1);
});
