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
//   WEB_ROOT (or the seed's FRONTEND_PATH)     static files for / and /admin/ (default web/dist, the built UI)
//   BUILD_DIR (build)                          where bin/chatweb-* are
//   everything else (OPENAI_MODEL, OPS_KEY, BASIC_AUTH_USER, ...) is passed to the services as is.
//   With neither OPS_KEY nor BASIC_AUTH_USER, the first start makes an operator key and a user
//   "admin" with a random password, kept in DATA_DIR/first-run.json (0600) for the next starts.
// Options: --mysql  start a MariaDB under DATA_DIR/mariadb for the services (instead of SQLite)
//          --tee    also copy every server's log lines to this terminal
import fs from 'node:fs';
import path from 'node:path';
import crypto from 'node:crypto';
import http from 'node:http';
import * as stack from './stack.mjs';

const HELP = fs.readFileSync(new URL(import.meta.url), 'utf8').split('\n').slice(1, 19)
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

// ---------------------------------------------------------------------------------------------
// First run (docs/decisions.md, decision 34): a stack nobody can sign in to is useless, and a
// fixed default key or password is a hole. So, when the operator configured neither OPS_KEY nor
// BASIC_AUTH_USER, the first start makes random ones, keeps them in DATA_DIR/first-run.json (0600,
// like the rest of DATA_DIR) and uses them again on every later start.

const FIRST_RUN_FILE = 'first-run.json';
const ADMIN_USER = 'admin';

/** The first-run credentials to use, or null when the operator configured their own. */
function firstRunCredentials(dataDir) {
    if (env('OPS_KEY') || env('BASIC_AUTH_USER')) return null;
    const file = path.join(dataDir, FIRST_RUN_FILE);
    if (fs.existsSync(file)) {
        let c;
        try {
            c = JSON.parse(fs.readFileSync(file, 'utf8'));
        } catch (err) {
            fail(`${file}: ${err.message} (remove it to make new first-run credentials)`);
        }
        if (!c || typeof c.ops_key !== 'string' || c.ops_key.length < 24 || typeof c.admin_password !== 'string')
            fail(`${file} is not what run.mjs wrote (remove it to make new first-run credentials)`);
        fs.chmodSync(file, 0o600);
        return { ...c, file, fresh: false };
    }
    const c = {
        note: 'made by deploy/local/run.mjs on the first start without OPS_KEY or BASIC_AUTH_USER; used by every later start',
        created_at: new Date().toISOString(),
        ops_key: crypto.randomBytes(24).toString('hex'),
        admin_user: ADMIN_USER,
        admin_password: crypto.randomBytes(15).toString('base64url'),
        admin_created: false,
    };
    stack.writePrivate(file, `${JSON.stringify(c, null, 2)}\n`);
    return { ...c, file, fresh: true };
}

function postJson(url, headers, body) {
    return new Promise((resolve, reject) => {
        const data = JSON.stringify(body);
        const req = http.request(url, { method: 'POST', agent: false, timeout: 10000,
            headers: { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(data), ...headers } }, (res) => {
            let text = '';
            res.setEncoding('utf8');
            res.on('data', (d) => { text += d; });
            res.on('end', () => {
                try {
                    resolve({ status: res.statusCode, body: JSON.parse(text) });
                } catch {
                    resolve({ status: res.statusCode, body: null, text });
                }
            });
        });
        req.on('timeout', () => req.destroy(new Error('timeout after 10 s')));
        req.on('error', reject);
        req.end(data);
    });
}

/** Registers the first admin user through the ops API once; remembers that it did. */
async function ensureAdminUser(url, creds) {
    if (creds.admin_created) return;
    const r = await postJson(`${url}/accounts`, { Opskey: creds.ops_key },
        // A negative count is an unlimited account (docs/ops-api.md): the operator's own user.
        { action: 'register', i_username: creds.admin_user, i_password: creds.admin_password, count: -1 });
    const ok = r.body && (r.body.status === 'Success' || r.body.message === '账户名存在');
    if (!ok) throw new Error(`registering ${creds.admin_user}: HTTP ${r.status} ${r.body ? r.body.message : r.text}`);
    creds.admin_created = true;
    const { file, fresh, ...stored } = creds;
    stack.writePrivate(file, `${JSON.stringify({ ...stored, admin_created: true }, null, 2)}\n`);
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
    const staticRoot = path.resolve(env('WEB_ROOT') || env('FRONTEND_PATH') || stack.WEB_DIST);
    if (!env('WEB_ROOT') && !env('FRONTEND_PATH') && !fs.existsSync(path.join(staticRoot, 'index.html')))
        fail(`the web UI is not built (${staticRoot}/index.html is missing): run \`make web\` (\`make run\` does) or set WEB_ROOT`);
    const wantMysql = args.includes('--mysql');
    if (wantMysql && env('DB')) fail('--mysql and DB are both given: pick one');

    stack.mkdirPrivate(dataDir);
    const creds = firstRunCredentials(dataDir);
    // The services inherit our environment (inheritEnv below), so this is the key auth gets.
    if (creds) process.env.OPS_KEY = creds.ops_key;
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
    if (creds) {
        try {
            await ensureAdminUser(s.url, creds);
        } catch (err) {
            process.stderr.write(`run: first run: ${err.message}\n`);
            await stopAndExit(1);
            return;
        }
    }
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
    if (creds && creds.fresh) {
        const line = '='.repeat(76);
        out.push('', line,
            'FIRST RUN: no OPS_KEY or BASIC_AUTH_USER was set, so these were made for you.',
            'They are shown only this once, and kept (mode 0600) in',
            `    ${creds.file}`,
            `  open        ${shown.split(' ')[0]}`,
            `  sign in as  ${creds.admin_user}  /  ${creds.admin_password}`,
            `  admin page  ${shown.split(' ')[0].replace(/\/$/, '')}/admin/   with the operator key`,
            `  OPS_KEY     ${creds.ops_key}`,
            line);
    } else if (creds) {
        out.push(`  sign in:   user ${creds.admin_user}; password and operator key in ${creds.file}`);
    }
    out.push('Press Ctrl-C to stop.', '');
    process.stdout.write(out.join('\n'));

    setInterval(() => {}, 1 << 30);   // stay in the foreground; the servers themselves are unref'd
}

main().catch(async (err) => {
    process.stderr.write(`run: ${err.stack || err}\n`);
    await stack.stopAll();
    process.exit(1);
});
