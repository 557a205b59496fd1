// deploy/local/stack.mjs: start real servers (redis-server, mariadbd, nginx, the chatweb services,
// the fake OpenAI upstream) on free ports, wait until each one is ready, and make sure that none
// of them outlives this process.
//
// Used by `make run` (deploy/local/run.mjs), by scripts/with-servers and by the integration tests
// (tests/integration/lib). Node built-ins only; works on Node 18 and newer.
//
// Process hygiene, in order of preference:
//   1. stop()/stopAll(): SIGTERM, wait for the exit, SIGKILL the process group after a grace period;
//      stopAll() goes in reverse start order (ingress first, databases last).
//   2. SIGINT/SIGTERM/SIGHUP to this process: stopAll(), then exit 128+signal (see onSignal()).
//   3. 'exit' of this process, including an uncaught exception or unhandled rejection: every
//      server still running gets SIGTERM, then SIGKILL, synchronously.
//   4. SIGKILL of this process: every server is started through `setpriv --pdeathsig TERM`, so the
//      kernel sends it SIGTERM when its parent dies.
// Each server runs in its own session (detached), so a Ctrl-C in the terminal reaches only this
// process, which then stops the servers in order.

import { spawn, spawnSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import fsp from 'node:fs/promises';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const HERE = path.dirname(fileURLToPath(import.meta.url));

/** The checkout's root directory. */
export const ROOT = path.resolve(HERE, '..', '..');
/** The chatweb services, in start order. */
export const SERVICES = ['auth', 'billing', 'chat', 'proxy'];
/** The placeholder web root shipped with deploy/local, for stacks that serve no web UI (tests). */
export const DEFAULT_STATIC_ROOT = path.join(HERE, 'www');
/** The built web UI (web/, `make build` runs its Vite build): what `make run` serves. */
export const WEB_DIST = path.join(ROOT, 'web', 'dist');

const NGINX_TEMPLATE = path.join(HERE, 'nginx.conf.tmpl');
const NGINX_RPC_TEMPLATE = path.join(HERE, 'nginx-rpc.conf.tmpl');
const EXIT_GRACE_MS = 10000;        // synchronous wait in the 'exit' handler
const POLL_MS = 25;

/** An error from starting or stopping a component; the message starts with "<component>: ". */
export class StackError extends Error {
    constructor(component, message, extra = {}) {
        super(`${component}: ${message}`);
        this.name = 'StackError';
        this.component = component;
        Object.assign(this, extra);
    }
}

/** Directory with the chatweb binaries: $BUILD_DIR/bin, BUILD_DIR defaulting to build/. */
export function defaultBinDir() {
    return path.resolve(ROOT, process.env.BUILD_DIR || 'build', 'bin');
}

// ---------------------------------------------------------------------------------------------
// Ports

const handedOut = new Set();

function listenOnce(host, port) {
    return new Promise((resolve, reject) => {
        const srv = net.createServer();
        srv.unref();
        srv.once('error', reject);
        srv.listen({ host, port, exclusive: true }, () => {
            const p = srv.address().port;
            srv.close(() => resolve(p));
        });
    });
}

/**
 * A port that was free on `host` a moment ago. Binds port 0, closes, and never hands out the same
 * port twice in this process. Another process can still take it before it is used: the start
 * functions retry with a new port when a server reports the address in use.
 */
export async function freePort(host = '127.0.0.1') {
    for (let i = 0; i < 100; i++) {
        const port = await listenOnce(host, 0);
        if (!handedOut.has(port)) {
            handedOut.add(port);
            return port;
        }
    }
    throw new StackError('ports', `no free port found on ${host} after 100 tries`);
}

/** Throws StackError "<component>: host:port is already in use" (or another clear reason). */
export async function assertPortFree(component, host, port) {
    try {
        await listenOnce(host, port);
    } catch (err) {
        const where = `${host}:${port}`;
        if (err.code === 'EADDRINUSE')
            throw new StackError(component, `${where} is already in use`, { code: 'EADDRINUSE', host, port });
        if (err.code === 'EACCES')
            throw new StackError(component, `${where}: permission denied (ports below 1024 need root)`, { code: err.code, host, port });
        if (err.code === 'EADDRNOTAVAIL')
            throw new StackError(component, `${where}: ${host} is not an address of this machine`, { code: err.code, host, port });
        throw new StackError(component, `cannot listen on ${where}: ${err.message}`, { code: err.code, host, port });
    }
}

/** "host:port" → {host, port}. */
export function splitAddr(addr) {
    const i = addr.lastIndexOf(':');
    return { host: addr.slice(0, i).replace(/^\[|\]$/g, ''), port: Number(addr.slice(i + 1)) };
}

/** The address a client on this machine uses to reach a server listening on `host`. */
export function connectHost(host) {
    return host === '0.0.0.0' || host === '' || host === '::' ? '127.0.0.1' : host;
}

// ---------------------------------------------------------------------------------------------
// Small utilities

function sleep(ms) {
    return new Promise((resolve) => setTimeout(resolve, ms));
}

/**
 * Servers are unref'd child processes (a script that forgets to stop them still exits, and the
 * 'exit' hook stops them), so whoever awaits one of their events holds the event loop open.
 */
async function keepAlive(promise) {
    const timer = setInterval(() => {}, 60000);
    try {
        return await promise;
    } finally {
        clearInterval(timer);
    }
}

const syncSleepCell = new Int32Array(new SharedArrayBuffer(4));
function sleepSync(ms) {
    Atomics.wait(syncSleepCell, 0, 0, ms);
}

/** True when `pid` is a live process (a zombie that nobody has reaped yet counts as dead). */
export function pidAlive(pid) {
    let stat;
    try {
        stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    } catch {
        return false;
    }
    const state = stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
    return state !== 'Z' && state !== 'X';
}

/** The last `lines` lines of a log file, only from byte `from` on ('' when it cannot be read). */
export function tailFile(file, lines = 20, from = 0) {
    try {
        const fd = fs.openSync(file, 'r');
        try {
            const size = fs.fstatSync(fd).size;
            const start = Math.max(from, size - 64 * 1024, 0);
            const len = Math.max(size - start, 0);
            const buf = Buffer.alloc(len);
            fs.readSync(fd, buf, 0, len, start);
            return buf.toString('utf8').split('\n').filter((l) => l.trim() !== '').slice(-lines).join('\n');
        } finally {
            fs.closeSync(fd);
        }
    } catch {
        return '';
    }
}

function indent(text) {
    return text ? text.split('\n').map((l) => `    ${l}`).join('\n') : '    (log is empty)';
}

function which(cmd) {
    if (cmd.includes('/')) return fs.existsSync(cmd) ? cmd : null;
    for (const dir of (process.env.PATH || '/usr/local/bin:/usr/bin:/bin').split(':').concat(['/usr/sbin', '/sbin'])) {
        const p = path.join(dir, cmd);
        try {
            fs.accessSync(p, fs.constants.X_OK);
            return p;
        } catch { /* next */ }
    }
    return null;
}

function requireCommand(component, cmd, hint = 'run scripts/bootstrap') {
    const p = which(cmd);
    if (!p) throw new StackError(component, `${cmd} not found (${hint})`);
    return p;
}

const SETPRIV = which('setpriv');

// ---------------------------------------------------------------------------------------------
// Private files and secrets

/**
 * Run fn() with the process umask 077, so what it spawns creates files for its own user only
 * (Redis dumps, MariaDB files, nginx logs, the services' SQLite database). spawn() forks at once,
 * so the child keeps 077 after the umask here is restored.
 */
function withPrivateUmask(fn) {
    const old = process.umask(0o077);
    try {
        return fn();
    } finally {
        process.umask(old);
    }
}

/** mkdir -p whose new directories are 0700; dir itself is made 0700 even when it existed. */
export function mkdirPrivate(dir) {
    fs.mkdirSync(dir, { recursive: true, mode: 0o700 });
    fs.chmodSync(dir, 0o700);
    return dir;
}

/** Write a file readable by its owner only (also when it existed with a wider mode). */
export function writePrivate(file, data) {
    fs.writeFileSync(file, data, { mode: 0o600 });
    fs.chmodSync(file, 0o600);
}

let processRpcSecret = null;

/**
 * The RPC_SECRET every service started by this process gets unless its env names one (or sets
 * RPC_INSECURE): random, made once per process, so the replicas of a stack, and a replica a test
 * starts later, can call each other, and the test clients (tests/integration/lib) sign with it.
 */
export function defaultRpcSecret() {
    if (!processRpcSecret) processRpcSecret = crypto.randomBytes(32).toString('hex');
    return processRpcSecret;
}

let processIngressToken = null;

/**
 * The INGRESS_TOKEN of the stacks this process starts (the same way): the ingress sends it as
 * X-Ingress-Token, and the services believe its X-Real-IP only with it, so that another process
 * on this machine, which TRUSTED_PROXIES (loopback) lets reach them, cannot name its address.
 */
export function defaultIngressToken() {
    if (!processIngressToken) processIngressToken = crypto.randomBytes(32).toString('hex');
    return processIngressToken;
}

/** The environment with RPC_SECRET filled in from defaultRpcSecret() unless it is configured, and
 * INGRESS_TOKEN from defaultIngressToken() unless env names it (an empty one: none required). */
function withSecrets(env) {
    const out = { ...env };
    if (!nonEmpty(env.RPC_SECRET) && !nonEmpty(env.RPC_INSECURE)) out.RPC_SECRET = defaultRpcSecret();
    if (env.INGRESS_TOKEN === undefined) out.INGRESS_TOKEN = defaultIngressToken();
    return out;
}

/** GET a URL; resolves {status, body}, rejects on connection errors or after timeoutMs. */
export function httpGet(url, timeoutMs = 2000) {
    return new Promise((resolve, reject) => {
        const req = http.get(url, { agent: false, timeout: timeoutMs }, (res) => {
            let body = '';
            res.setEncoding('utf8');
            res.on('data', (c) => { body += c; });
            res.on('end', () => resolve({ status: res.statusCode, body }));
            res.on('error', reject);
        });
        req.on('timeout', () => req.destroy(new Error(`timeout after ${timeoutMs} ms`)));
        req.on('error', reject);
    });
}

/**
 * Send raw RESP commands (arrays of strings) and resolve the first line of each reply.
 * Enough for PING/AUTH readiness checks; not a Redis client.
 */
export function redisCommands(host, port, commands, timeoutMs = 2000) {
    return new Promise((resolve, reject) => {
        const sock = net.connect({ host, port });
        let buf = '';
        const timer = setTimeout(() => sock.destroy(new Error(`timeout after ${timeoutMs} ms`)), timeoutMs);
        sock.on('connect', () => {
            let out = '';
            for (const cmd of commands) {
                out += `*${cmd.length}\r\n`;
                for (const a of cmd) out += `$${Buffer.byteLength(a)}\r\n${a}\r\n`;
            }
            sock.write(out);
        });
        sock.setEncoding('utf8');
        sock.on('data', (d) => {
            buf += d;
            const lines = buf.split('\r\n').filter((l) => /^[+\-:]/.test(l));
            if (lines.length >= commands.length) {
                clearTimeout(timer);
                sock.destroy();
                resolve(lines.slice(0, commands.length));
            }
        });
        sock.on('error', (err) => { clearTimeout(timer); reject(err); });
        sock.on('close', () => { clearTimeout(timer); reject(new Error('connection closed')); });
    });
}

/** PING a Redis URL (redis://[user:pass@]host:port[/db]); resolves true or throws. */
export async function pingRedis(url, timeoutMs = 2000) {
    const u = new URL(url);
    const cmds = [];
    if (u.password) cmds.push(u.username ? ['AUTH', decodeURIComponent(u.username), decodeURIComponent(u.password)]
        : ['AUTH', decodeURIComponent(u.password)]);
    cmds.push(['PING']);
    const replies = await redisCommands(u.hostname || '127.0.0.1', Number(u.port || 6379), cmds, timeoutMs);
    const last = replies[replies.length - 1];
    const err = replies.find((r) => r.startsWith('-'));
    if (err) throw new Error(err.slice(1));
    if (last !== '+PONG') throw new Error(`unexpected reply ${JSON.stringify(last)}`);
    return true;
}

/**
 * Resolves when a MySQL/MariaDB server on host:port answers: its handshake (protocol 10), or error
 * 1130 "Host is not allowed to connect", which a fresh install sends over TCP once its grant tables
 * are loaded (it has no user for 127.0.0.1 yet).
 */
function mysqlHandshake(host, port, timeoutMs = 1000) {
    return new Promise((resolve, reject) => {
        const sock = net.connect({ host, port });
        const timer = setTimeout(() => sock.destroy(new Error('timeout')), timeoutMs);
        sock.once('data', (d) => {
            clearTimeout(timer);
            sock.destroy();
            if (d.length > 4 && d[4] === 10) resolve(true);
            else if (d.length > 6 && d[4] === 0xff && d.readUInt16LE(5) === 1130) resolve(true);
            else reject(new Error(d.length > 7 ? d.subarray(7).toString('utf8') : 'bad handshake'));
        });
        sock.on('error', (err) => { clearTimeout(timer); reject(err); });
    });
}

// ---------------------------------------------------------------------------------------------
// Process tracking

const tracked = new Set();          // live handles, in start order
const unexpectedListeners = new Set();
const exitCleanups = new Set();     // synchronous cleanups for process exit (lock files)
let hooksInstalled = false;
let customSignalHandler = null;
let signalled = false;
let stopAllPromise = null;

function installProcessHooks() {
    if (hooksInstalled) return;
    hooksInstalled = true;
    process.on('exit', killAllSync);
    for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP']) process.on(sig, handleSignal);
}

function handleSignal(sig) {
    if (signalled) {
        // A second Ctrl-C: do not wait for graceful shutdowns any longer.
        process.stderr.write(`stack: ${sig} again, killing all servers now\n`);
        for (const h of tracked) killGroup(h.pid, 'SIGKILL');
        process.exit(128 + (os.constants.signals[sig] || 0));
    }
    signalled = true;
    if (customSignalHandler) {
        Promise.resolve().then(() => customSignalHandler(sig)).catch((err) => {
            process.stderr.write(`stack: signal handler failed: ${err && err.stack || err}\n`);
            process.exit(1);
        });
        return;
    }
    stopAll().finally(() => process.exit(128 + (os.constants.signals[sig] || 0)));
}

/**
 * Replace the default reaction to SIGINT/SIGTERM/SIGHUP (stopAll, then exit 128+signal) with
 * fn(signalName). fn is responsible for stopping and exiting. A second signal always kills
 * everything at once and exits.
 */
export function onSignal(fn) {
    customSignalHandler = fn;
    installProcessHooks();
}

/**
 * Call fn(handle, {code, signal}) when a started server exits while nobody asked it to stop.
 * Returns a function that removes the listener.
 */
export function onUnexpectedExit(fn) {
    unexpectedListeners.add(fn);
    return () => unexpectedListeners.delete(fn);
}

/**
 * Signal a server and its process group (it leads one, being detached; nginx's workers are in it).
 * Only for servers whose exit has not been seen yet: until then the pid is not reaped and cannot
 * have been reused.
 */
function killGroup(pid, signal) {
    try { process.kill(-pid, signal); } catch { /* gone */ }
    try { process.kill(pid, signal); } catch { /* gone */ }
}

/**
 * After a server exited: kill what is left of its process group (nginx workers whose master was
 * killed). A group id stays allocated while it has members, so it cannot name another process.
 */
function reapGroup(pid) {
    try {
        process.kill(-pid, 0);
    } catch {
        return;   // no members left
    }
    try { process.kill(-pid, 'SIGKILL'); } catch { /* gone meanwhile */ }
}

function killAllSync() {
    const alive = [...tracked].reverse().filter((h) => !h.exitInfo && pidAlive(h.pid));
    for (const h of alive) {
        h.stopping = true;
        try { process.kill(h.pid, 'SIGTERM'); } catch { /* gone */ }
    }
    const deadline = Date.now() + EXIT_GRACE_MS;
    while (alive.some((h) => pidAlive(h.pid)) && Date.now() < deadline) sleepSync(20);
    for (const h of alive) killGroup(h.pid, 'SIGKILL');
    for (const fn of exitCleanups) {
        try { fn(); } catch { /* best effort */ }
    }
}

function waitExit(h, ms) {
    if (h.exitInfo) return Promise.resolve(h.exitInfo);
    return new Promise((resolve) => {
        const timer = setTimeout(() => resolve(null), ms);
        h._exited.then((info) => { clearTimeout(timer); resolve(info); });
    });
}

async function stopHandle(h, signal = 'SIGTERM', graceMs = h.graceMs) {
    h.stopping = true;
    if (!h.exitInfo) {
        if (signal === 'SIGKILL') {
            killGroup(h.pid, 'SIGKILL');
        } else {
            try { process.kill(h.pid, signal); } catch { /* gone */ }
            if (!(await waitExit(h, graceMs))) {
                process.stderr.write(`stack: ${h.label} (pid ${h.pid}) still running ${graceMs} ms after ${signal}; sending SIGKILL\n`);
                killGroup(h.pid, 'SIGKILL');
            }
        }
    }
    return keepAlive(h._exited);
}

/**
 * Spawn a tracked server. stdout/stderr go to logFile (append); with tee they are also copied to
 * this process's stderr, each line prefixed with "[label] ". Returns a handle:
 *   {label, pid, logFile, exited: Promise<{code, signal}>, exitInfo, stop(signal, graceMs), kill()}
 */
export function spawnServer({ label, cmd, args = [], env = process.env, cwd = ROOT, logFile, tee = false,
    stdout = 'log', graceMs = 10000 }) {
    installProcessHooks();
    const exe = requireCommand(label, cmd);
    fs.mkdirSync(path.dirname(logFile), { recursive: true, mode: 0o700 });
    // Logs carry user names, client addresses and request paths: the owner's only, also when an
    // older run left the file with a wider mode.
    const fd = fs.openSync(logFile, 'a', 0o600);
    fs.fchmodSync(fd, 0o600);
    const logStart = fs.fstatSync(fd).size;   // logs are appended across runs: errors come from here on
    const argv = SETPRIV ? ['--pdeathsig', 'TERM', '--', exe, ...args] : args;
    let child;
    try {
        child = withPrivateUmask(() => spawn(SETPRIV || exe, argv, {
            env, cwd, detached: true,
            stdio: ['ignore', stdout === 'pipe' || tee ? 'pipe' : fd, tee ? 'pipe' : fd],
        }));
    } finally {
        if (!tee) fs.closeSync(fd);
    }
    if (tee) {
        const prefix = `[${label}] `;
        const copy = (stream, alsoToLog) => {
            let partial = '';
            stream.on('data', (chunk) => {
                if (alsoToLog) fs.writeSync(fd, chunk);
                const text = partial + chunk.toString('utf8');
                const lines = text.split('\n');
                partial = lines.pop();
                for (const l of lines) process.stderr.write(prefix + l + '\n');
            });
            stream.on('end', () => { if (partial) process.stderr.write(prefix + partial + '\n'); });
            stream.unref?.();
        };
        if (stdout !== 'pipe') copy(child.stdout, true);
        copy(child.stderr, true);
        child.once('close', () => { try { fs.closeSync(fd); } catch { /* closed */ } });
    } else if (stdout === 'pipe') {
        child.stdout.unref?.();
    }
    const h = {
        label, pid: child.pid, child, logFile, logStart, graceMs, cmd: exe, args,
        exitInfo: null, stopping: false, ready: false,
    };
    h._exited = new Promise((resolve) => {
        child.once('exit', (code, signal) => {
            reapGroup(child.pid);
            h.exitInfo = { code, signal };
            tracked.delete(h);
            resolve(h.exitInfo);
            if (h.ready && !h.stopping)
                for (const fn of unexpectedListeners) fn(h, h.exitInfo);
        });
        child.once('error', (err) => {
            // spawn itself failed (the binary was checked above, so this is rare: EACCES, ENOMEM)
            h.spawnError = err;
            if (!h.exitInfo) {
                h.exitInfo = { code: 127, signal: null };
                tracked.delete(h);
                resolve(h.exitInfo);
            }
        });
    });
    // Awaiting `exited` holds the event loop open (the child itself is unref'd).
    Object.defineProperty(h, 'exited', { enumerable: true, get: () => keepAlive(h._exited) });
    h.stop = (signal, ms) => stopHandle(h, signal, ms);
    h.kill = () => stopHandle(h, 'SIGKILL', 0);
    child.unref();
    if (child.pid) tracked.add(h);
    return h;
}

function describeExit(info) {
    if (!info) return 'is still running';
    return info.signal ? `was killed by ${info.signal}` : `exited with code ${info.code}`;
}

/**
 * Poll check() until it resolves truthy. Throws StackError when the process exits first (with the
 * tail of its log) or after timeoutMs (after killing the process).
 */
async function waitReady(h, what, check, timeoutMs) {
    const deadline = Date.now() + timeoutMs;
    let lastErr = null;
    for (let delay = POLL_MS; ; delay = Math.min(delay * 1.5, 200)) {
        if (h.exitInfo) {
            const tail = tailFile(h.logFile, 20, h.logStart);
            throw new StackError(h.label,
                `${describeExit(h.exitInfo)} before it was ready${h.spawnError ? ` (${h.spawnError.message})` : ''}; ` +
                `last lines of ${h.logFile}:\n${indent(tail)}`, { exitInfo: h.exitInfo, logTail: tail });
        }
        try {
            if (await check()) {
                h.ready = true;
                return;
            }
            lastErr = null;
        } catch (err) {
            lastErr = err;
        }
        if (Date.now() >= deadline) {
            await h.kill();
            throw new StackError(h.label,
                `not ready after ${timeoutMs} ms (${what}${lastErr ? `: ${lastErr.message}` : ''}); ` +
                `last lines of ${h.logFile}:\n${indent(tailFile(h.logFile, 20, h.logStart))}`);
        }
        await sleep(delay);
    }
}

const IN_USE = /address already in use|is already in use|EADDRINUSE|errno\s*[:=]?\s*98\b|\(98:/i;

/** Run start(attempt) again with fresh ports when it fails because a port was taken meanwhile. */
async function retryOnPortClash(autoPorts, start) {
    for (let attempt = 1; ; attempt++) {
        try {
            return await start(attempt);
        } catch (err) {
            if (!autoPorts || attempt >= 3 || !IN_USE.test(err.logTail || err.message)) throw err;
        }
    }
}

/** Stop every server this process started, newest first. Safe to call many times. */
export function stopAll() {
    if (!stopAllPromise) {
        stopAllPromise = (async () => {
            const handles = [...tracked].reverse();
            for (const h of handles) h.stopping = true;
            for (const h of handles) await h.stop().catch(() => {});
        })().finally(() => { stopAllPromise = null; });
    }
    return stopAllPromise;
}

/** Handles of the servers still running, in start order. */
export function running() {
    return [...tracked];
}

// ---------------------------------------------------------------------------------------------
// Redis

/**
 * Start redis-server in the foreground on 127.0.0.1, with a password (requirepass): a local
 * process that can reach the port cannot read or forge sessions without it.
 * opts: dir (data dir, required; made 0700), port (default: a free port), logFile (default
 *       dir/redis.log), persist (append-only file; default false = no persistence), password
 *       (default: the one in dir/redis.conf from an earlier start, else random; '' runs without
 *       one), tee, readyTimeoutMs.
 * The password is given in dir/redis.conf (0600), never on the command line, which every local
 * user can read in /proc.
 * Returns {kind:'redis', label, pid, host, port, password, url: 'redis://default:PASSWORD@127.0.0.1:PORT/0',
 *          dir, logFile, exited, stop(), kill()}.
 */
export async function startRedis({ dir, port, host = '127.0.0.1', logFile, persist = false, password, tee = false,
    readyTimeoutMs = 10000, label = 'redis' } = {}) {
    if (!dir) throw new StackError(label, 'startRedis needs a dir');
    requireCommand(label, 'redis-server');
    dir = path.resolve(dir);
    mkdirPrivate(dir);
    logFile = logFile || path.join(dir, 'redis.log');
    const confPath = path.join(dir, 'redis.conf');
    if (password === undefined || password === null) {
        // A Redis started again on the same dir (a restart, a persisted stack) keeps its password,
        // so the clients that have its URL still get in.
        let old = null;
        try {
            old = /^requirepass (\S+)$/m.exec(fs.readFileSync(confPath, 'utf8'));
        } catch { /* first start */ }
        password = old ? old[1] : crypto.randomBytes(24).toString('hex');
    }
    if (/[\s"'\\]/.test(password)) throw new StackError(label, 'the password must not hold blanks, quotes or backslashes');
    writePrivate(confPath, password ? `requirepass ${password}\n` : '# no password\n');
    // "default:" (Redis's own user) rather than ":" so that redis-cli -u accepts the URL too.
    const auth = password ? `default:${encodeURIComponent(password)}@` : '';
    return retryOnPortClash(!port, async () => {
        const p = port || await freePort(host);
        if (port) await assertPortFree(label, host, p);
        const args = [confPath, '--port', String(p), '--bind', host, '--daemonize', 'no', '--dir', dir,
            '--logfile', logFile, '--loglevel', 'notice', '--protected-mode', 'yes'];
        if (persist) args.push('--appendonly', 'yes', '--appendfsync', 'everysec');
        else args.push('--save', '', '--appendonly', 'no');
        const url = `redis://${auth}${host}:${p}/0`;
        const h = spawnServer({ label, cmd: 'redis-server', args, logFile, tee, graceMs: 10000 });
        await waitReady(h, `PING on ${host}:${p}`, () => pingRedis(url, 1000), readyTimeoutMs);
        return Object.assign(h, { kind: 'redis', host, port: p, password, url, dir });
    });
}

// ---------------------------------------------------------------------------------------------
// MariaDB

function runSql(component, socket, sql) {
    const mariadb = requireCommand(component, 'mariadb');
    const r = spawnSync(mariadb, ['--no-defaults', `--socket=${socket}`, '-uroot', '--batch'],
        { input: sql, encoding: 'utf8', timeout: 30000 });
    if (r.status !== 0)
        throw new StackError(component, `SQL setup failed: ${(r.stderr || r.error?.message || '').trim()}`);
    return r.stdout;
}

/**
 * Start mariadbd on 127.0.0.1, running mariadb-install-db into dir/data first when needed, then
 * create database `database` and user `user` (random password) with all rights on it and on
 * `<database>_*` (so tests can create scratch databases).
 * opts: dir (required), port (default free), database ('chatweb'), user ('chatweb'), password
 *       (default random), logFile (default dir/mariadb.log), fast (relax fsync: tests only), tee.
 * Returns {kind:'mariadb', label, pid, host, port, socket, database, user, password,
 *          dsn: 'mysql://user:pass@127.0.0.1:PORT/database', dir, logFile, exited, stop(), kill()}.
 */
export async function startMariadb({ dir, port, host = '127.0.0.1', database = 'chatweb', user = 'chatweb',
    password, logFile, fast = false, tee = false, readyTimeoutMs = 60000, label = 'mariadb' } = {}) {
    if (!dir) throw new StackError(label, 'startMariadb needs a dir');
    if (!/^\w+$/.test(database) || !/^\w+$/.test(user)) throw new StackError(label, 'database and user must be [A-Za-z0-9_]+');
    requireCommand(label, 'mariadbd');
    dir = path.resolve(dir);
    mkdirPrivate(dir);
    const dataDir = path.join(dir, 'data');
    logFile = logFile || path.join(dir, 'mariadb.log');
    const asRoot = process.getuid && process.getuid() === 0;
    if (!fs.existsSync(path.join(dataDir, 'mysql'))) {
        const installDb = requireCommand(label, 'mariadb-install-db');
        const installLog = path.join(dir, 'install.log');
        const args = ['--no-defaults', `--datadir=${dataDir}`, '--auth-root-authentication-method=socket',
            '--skip-test-db'];
        if (asRoot) args.splice(1, 0, '--user=root');
        const r = await new Promise((resolve) => {
            const out = fs.openSync(installLog, 'w', 0o600);
            const c = withPrivateUmask(() => spawn(installDb, args, { stdio: ['ignore', out, out] }));
            fs.closeSync(out);
            c.on('error', (err) => resolve({ code: 127, err }));
            c.on('exit', (code) => resolve({ code }));
        });
        if (r.code !== 0) {
            fs.rmSync(dataDir, { recursive: true, force: true });
            throw new StackError(label, `mariadb-install-db failed (exit ${r.code}); last lines of ${installLog}:\n` +
                indent(tailFile(installLog)));
        }
    }
    // A unix socket path is limited to 107 bytes; deep DATA_DIRs get one under the temp dir.
    let socket = path.join(dir, 'mysqld.sock');
    if (Buffer.byteLength(socket) > 100)
        socket = path.join(os.tmpdir(), `chatweb-mysqld-${crypto.createHash('sha1').update(dir).digest('hex').slice(0, 12)}.sock`);
    password = password || crypto.randomBytes(18).toString('hex');

    return retryOnPortClash(!port, async () => {
        const p = port || await freePort(host);
        if (port) await assertPortFree(label, host, p);
        const args = ['--no-defaults', `--datadir=${dataDir}`, `--socket=${socket}`, `--port=${p}`,
            `--bind-address=${host}`, `--pid-file=${path.join(dir, 'mariadbd.pid')}`, `--log-error=${logFile}`,
            '--skip-log-bin', '--skip-name-resolve', '--innodb-buffer-pool-size=64M', '--innodb-log-file-size=16M',
            '--max-connections=1000', '--character-set-server=utf8mb4', '--collation-server=utf8mb4_unicode_ci'];
        if (asRoot) args.splice(1, 0, '--user=root');
        if (fast) args.push('--innodb-flush-log-at-trx-commit=2', '--innodb-doublewrite=0', '--sync-binlog=0');
        const h = spawnServer({ label, cmd: 'mariadbd', args, logFile, tee, graceMs: 30000 });
        await waitReady(h, `handshake on ${host}:${p}`, () => mysqlHandshake(host, p), readyTimeoutMs);
        const q = (s) => s.replace(/'/g, "''");
        const grants = [`\`${database}\`.*`, `\`${database}\\_%\`.*`];
        let sql = `CREATE DATABASE IF NOT EXISTS \`${database}\` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci;\n`;
        for (const from of ['localhost', '127.0.0.1']) {
            sql += `CREATE USER IF NOT EXISTS '${user}'@'${from}' IDENTIFIED BY '${q(password)}';\n`;
            sql += `ALTER USER '${user}'@'${from}' IDENTIFIED BY '${q(password)}';\n`;
            for (const g of grants) sql += `GRANT ALL PRIVILEGES ON ${g} TO '${user}'@'${from}';\n`;
        }
        sql += 'FLUSH PRIVILEGES;\n';
        try {
            runSql(label, socket, sql);
        } catch (err) {
            await h.stop();
            throw err;
        }
        return Object.assign(h, {
            kind: 'mariadb', host, port: p, socket, database, user, password, dir,
            dsn: `mysql://${user}:${password}@${host}:${p}/${database}`,
        });
    });
}

// ---------------------------------------------------------------------------------------------
// nginx

/** Replace every {{name}} in text; throws on a name that has no value. */
export function renderTemplate(text, vars) {
    return text.replace(/\{\{(\w+)\}\}/g, (_, name) => {
        if (vars[name] === undefined || vars[name] === null) throw new Error(`template variable {{${name}}} has no value`);
        return String(vars[name]);
    });
}

function nginxPath(component, p) {
    if (/["\n\\$;{}]/.test(p)) throw new StackError(component, `path ${JSON.stringify(p)} has a character nginx config cannot hold`);
    return p;
}

// passive: the ingress takes a failing replica out for a few seconds (another replica answers);
// the internal RPC balancer never does, like a Kubernetes Service: a replica refusing while it
// starts must not make every caller fail for the next seconds.
function upstreamServers(component, service, addrs, passive = true) {
    if (!addrs || addrs.length === 0)
        return `        # no ${service} address given: requests routed here get 502\n        server 127.0.0.1:9 down;`;
    return addrs.map((a) => {
        if (!/^[\w.\-[\]:]+:\d+$/.test(a)) throw new StackError(component, `bad ${service} upstream address ${JSON.stringify(a)}`);
        // One replica is never marked down (nginx ignores max_fails for a lone server, but not
        // beside the ingress's backup, the fallback): it is tried by every request.
        return `        server ${a} ${passive && addrs.length > 1 ? 'max_fails=1 fail_timeout=5s' : 'max_fails=0'};`;
    }).join('\n');
}

function commonNginxVars(component, dir, logDir, workerProcesses) {
    const asRoot = process.getuid && process.getuid() === 0;
    return {
        // Workers of a root master run as nobody unless told otherwise, and then cannot read a
        // checkout or write temp files under a 0700 dir (toolchain notes §3 pitfall).
        user_directive: asRoot ? 'user root;' : '# not root: workers run as the current user',
        worker_processes: workerProcesses,
        prefix: nginxPath(component, dir),
        error_log: nginxPath(component, path.join(logDir, `${component}-error.log`)),
        access_log: nginxPath(component, path.join(logDir, `${component}-access.log`)),
        mime_types: fs.existsSync('/etc/nginx/mime.types') ? 'include /etc/nginx/mime.types;' : 'types { text/html html; text/css css; application/javascript js; }',
    };
}

/** The hard RLIMIT_NOFILE of this process (children inherit it; nginx may raise its soft limit to it). */
function hardNofile() {
    try {
        const m = /^Max open files\s+\S+\s+(\S+)/m.exec(fs.readFileSync('/proc/self/limits', 'utf8'));
        return m && m[1] !== 'unlimited' ? Number(m[1]) : Infinity;
    } catch {
        return Infinity;
    }
}

/**
 * Render deploy/local/nginx.conf.tmpl (the ingress) to a string. Options as for startNginx, with
 * listenPort already chosen. Returns {conf, readyToken, errorLog, accessLog}.
 */
export function renderNginxConf({ dir, logDir, listenHost = '127.0.0.1', listenPort, upstreams = {},
    staticRoot = DEFAULT_STATIC_ROOT, workerProcesses = 2, workerConnections = 16384, label = 'nginx',
    readTimeout = '1h', ingressToken = null }) {
    if (!/^[1-9][0-9]*(ms|s|m|h)?$/.test(String(readTimeout))) throw new StackError(label, `bad read timeout ${JSON.stringify(readTimeout)}`);
    if (ingressToken && !/^[A-Za-z0-9._~+/=-]+$/.test(ingressToken))
        throw new StackError(label, 'INGRESS_TOKEN: only letters, digits and ._~+/=- fit the nginx config');
    // The fallback server's socket (nginx.conf.tmpl): a Unix socket path holds at most 107 bytes.
    const fallback = path.join(path.resolve(dir), 'fallback.sock');
    if (Buffer.byteLength(fallback) > 107) throw new StackError(label, `${fallback}: too long for a Unix socket (107 bytes); use a shorter DATA_DIR`);
    const readyToken = crypto.randomBytes(12).toString('hex');
    // A proxied request holds two descriptors; stay within the hard limit, which a process
    // without CAP_SYS_RESOURCE cannot raise (nginx would log a setrlimit alert).
    const nofile = Math.min(workerConnections * 2 + 1024, hardNofile());
    const vars = {
        ...commonNginxVars(label, dir, logDir, workerProcesses),
        worker_connections: Math.max(1024, Math.min(workerConnections, Math.floor((nofile - 1024) / 2))),
        worker_rlimit_nofile: nofile,
        listen: `${listenHost.includes(':') ? `[${listenHost}]` : listenHost}:${listenPort}`,
        static_root: nginxPath(label, path.resolve(staticRoot)),
        ready_token: readyToken,
        auth_servers: upstreamServers(label, 'auth', upstreams.auth),
        chat_servers: upstreamServers(label, 'chat', upstreams.chat),
        proxy_servers: upstreamServers(label, 'proxy', upstreams.proxy),
        proxy_read_timeout: String(readTimeout),
        ingress_token: ingressToken ? `proxy_set_header X-Ingress-Token "${ingressToken}";` : '# no INGRESS_TOKEN',
    };
    const conf = renderTemplate(fs.readFileSync(NGINX_TEMPLATE, 'utf8'), vars);
    return { conf, readyToken, errorLog: vars.error_log, accessLog: vars.access_log };
}

async function launchNginx({ label, dir, logDir, confText, errorLog, host, port, readyToken, tee, readyTimeoutMs }) {
    // Private like the rest of DATA_DIR: the workers run as this user (or as root when we are
    // root, see commonNginxVars), so they need no wider mode (toolchain notes §3).
    mkdirPrivate(dir);
    mkdirPrivate(path.join(dir, 'tmp'));
    fs.mkdirSync(logDir, { recursive: true, mode: 0o700 });
    const confPath = path.join(dir, 'nginx.conf');
    writePrivate(confPath, confText);
    const h = spawnServer({
        label, cmd: 'nginx', args: ['-p', dir + '/', '-e', errorLog, '-c', confPath],
        logFile: errorLog, tee, graceMs: 5000,
    });
    const url = `http://${connectHost(host)}:${port}`;
    try {
        await waitReady(h, `GET ${url}/_stack/ready`, async () => {
            const r = await httpGet(`${url}/_stack/ready`, 1000);
            return r.status === 200 && r.body === readyToken;
        }, readyTimeoutMs);
    } catch (err) {
        if (IN_USE.test(err.logTail || '')) throw new StackError(label, `${host}:${port} is already in use`, { code: 'EADDRINUSE', host, port });
        throw err;
    }
    return Object.assign(h, { confPath, errorLog, url });
}

/**
 * Start nginx as the ingress, rendering deploy/local/nginx.conf.tmpl.
 * opts: dir (prefix: nginx.conf, nginx.pid, tmp/; required), logDir (default dir/logs),
 *       listenHost ('127.0.0.1'), listenPort (default: a free port),
 *       upstreams {auth:[addr], chat:[addr], proxy:[addr], billing: ignored (no public route)},
 *       staticRoot (web root for / and /admin/; default deploy/local/www), workerProcesses (2), tee,
 *       readTimeout (proxy_read_timeout, default 1h), ingressToken (sent as X-Ingress-Token, the
 *       services' INGRESS_TOKEN; null: none).
 * A taken listen port fails with StackError "nginx: HOST:PORT is already in use".
 * Returns {kind:'nginx', label, pid, host, port, url, confPath, errorLog, accessLog, dir, exited,
 *          stop(), kill()}.
 */
export async function startNginx({ dir, logDir, listenHost = '127.0.0.1', listenPort, upstreams = {},
    staticRoot = DEFAULT_STATIC_ROOT, workerProcesses = 2, tee = false, readyTimeoutMs = 10000, label = 'nginx',
    readTimeout = '1h', ingressToken = null } = {}) {
    if (!dir) throw new StackError(label, 'startNginx needs a dir');
    requireCommand(label, 'nginx');
    dir = path.resolve(dir);
    logDir = path.resolve(logDir || path.join(dir, 'logs'));
    if (!fs.existsSync(staticRoot) || !fs.statSync(staticRoot).isDirectory())
        throw new StackError(label, `static root ${staticRoot} is not a directory`);
    return retryOnPortClash(!listenPort, async () => {
        const port = listenPort || await freePort(listenHost);
        await assertPortFree(label, listenHost, port);
        const r = renderNginxConf({ dir, logDir, listenHost, listenPort: port, upstreams, staticRoot, workerProcesses, label, readTimeout, ingressToken });
        // A fallback socket left by an nginx that was killed would make this one fail to bind.
        fs.rmSync(path.join(dir, 'fallback.sock'), { force: true });
        const h = await launchNginx({ label, dir, logDir, confText: r.conf, errorLog: r.errorLog, host: listenHost, port,
            readyToken: r.readyToken, tee, readyTimeoutMs });
        return Object.assign(h, { kind: 'nginx', host: listenHost, port, accessLog: r.accessLog, dir });
    });
}

/**
 * Start an internal nginx that load-balances the RPC port of services with several replicas, the
 * way a Kubernetes Service does (deploy/local/nginx-rpc.conf.tmpl). Listens on 127.0.0.1 only.
 * opts: dir, logDir, backends {service: [addr, ...]}, tee.
 * Returns the handle plus urls {service: 'http://127.0.0.1:PORT'}.
 */
export async function startRpcBalancer({ dir, logDir, backends, tee = false, readyTimeoutMs = 10000, label = 'nginx-rpc' } = {}) {
    requireCommand(label, 'nginx');
    dir = path.resolve(dir);
    logDir = path.resolve(logDir || path.join(dir, 'logs'));
    return retryOnPortClash(true, async () => {
        const readyToken = crypto.randomBytes(12).toString('hex');
        const ports = {};
        let upstreamBlocks = '';
        let serverBlocks = '';
        for (const [svc, addrs] of Object.entries(backends)) {
            ports[svc] = await freePort('127.0.0.1');
            upstreamBlocks += `    upstream rpc_${svc} {\n${upstreamServers(label, svc, addrs, false)}\n        keepalive 64;\n    }\n`;
            serverBlocks += `    server {\n        listen 127.0.0.1:${ports[svc]};\n` +
                `        location = /_stack/ready { access_log off; default_type text/plain; return 200 "${readyToken}"; }\n` +
                `        location / { proxy_pass http://rpc_${svc}; }\n    }\n`;
        }
        const readyPort = Object.values(ports)[0];
        const vars = {
            ...commonNginxVars(label, dir, logDir, 1),
            ready_token: readyToken, upstreams: upstreamBlocks, servers: serverBlocks,
        };
        const conf = renderTemplate(fs.readFileSync(NGINX_RPC_TEMPLATE, 'utf8'), vars);
        const h = await launchNginx({ label, dir, logDir, confText: conf, errorLog: vars.error_log, host: '127.0.0.1',
            port: readyPort, readyToken, tee, readyTimeoutMs });
        const urls = Object.fromEntries(Object.entries(ports).map(([s, p]) => [s, `http://127.0.0.1:${p}`]));
        return Object.assign(h, { kind: 'nginx-rpc', urls, accessLog: vars.access_log, dir });
    });
}

// ---------------------------------------------------------------------------------------------
// chatweb services and the fake upstream

const PASS_ENV = ['PATH', 'HOME', 'LANG', 'LC_ALL', 'TZ', 'TMPDIR', 'ASAN_OPTIONS', 'UBSAN_OPTIONS', 'LSAN_OPTIONS',
    'TSAN_OPTIONS', 'MSAN_OPTIONS', 'CHATWEB_HTTP1_CLIENT', 'CHATWEB_HTTP2_CLIENT'];

/** The environment a server starts from: all of ours (inheritEnv) or only PATH, HOME, locale, sanitizers. */
export function baseEnv(inheritEnv = false) {
    if (inheritEnv) return { ...process.env };
    const env = {};
    for (const k of PASS_ENV) if (process.env[k] !== undefined) env[k] = process.env[k];
    return env;
}

function binary(label, binDir, name) {
    const bin = path.join(binDir || defaultBinDir(), name);
    if (!fs.existsSync(bin)) throw new StackError(label, `${bin} not found: build first (make build)`);
    return bin;
}

/**
 * Start one replica of a chatweb service: $BUILD_DIR/bin/chatweb-<name>.
 * opts: env (service configuration; HTTP_ADDR/ADMIN_ADDR are set here), dir (DATA_DIR, required),
 *       logDir (default dir/logs; the log is <label>.log), replica (number, for the label
 *       "<name>-<replica>"), httpAddr / adminAddr (default 127.0.0.1:<free port>), inheritEnv
 *       (start from our whole environment instead of a minimal one), binDir, tee,
 *       readyTimeoutMs (10000), graceMs (15000, SIGTERM → SIGKILL).
 * Waits until GET http://ADMIN_ADDR/readyz answers 200. An exit before that throws StackError with
 * the tail of the log.
 * Returns {kind:'service', name, label, replica, pid, httpAddr, adminAddr, url, adminUrl, logFile,
 *          exited, stop(signal), kill()}.
 */
export async function startService(name, { env = {}, dir, logDir, replica, label, httpAddr, adminAddr,
    host = '127.0.0.1', inheritEnv = false, binDir, tee = false, readyTimeoutMs = 10000, graceMs = 15000 } = {}) {
    label = label || (replica ? `${name}-${replica}` : name);
    if (!dir) throw new StackError(label, 'startService needs a dir (DATA_DIR)');
    dir = path.resolve(dir);
    const bin = binary(label, binDir, `chatweb-${name}`);
    const logFile = path.join(path.resolve(logDir || path.join(dir, 'logs')), `${label}.log`);
    mkdirPrivate(dir);
    return retryOnPortClash(!httpAddr || !adminAddr, async () => {
        const h1 = httpAddr || `${host}:${await freePort(host)}`;
        const a1 = adminAddr || `${host}:${await freePort(host)}`;
        const fullEnv = withSecrets({ ...baseEnv(inheritEnv), DATA_DIR: dir, LOG_LEVEL: 'info', ...env, HTTP_ADDR: h1, ADMIN_ADDR: a1 });
        const h = spawnServer({ label, cmd: bin, env: fullEnv, logFile, tee, graceMs });
        const adminUrl = `http://${connectHost(splitAddr(a1).host)}:${splitAddr(a1).port}`;
        await waitReady(h, `GET ${adminUrl}/readyz`, async () => {
            const r = await httpGet(`${adminUrl}/readyz`, 1000);
            if (r.status !== 200) throw new Error(`answered ${r.status}`);
            return true;
        }, readyTimeoutMs);
        return Object.assign(h, {
            kind: 'service', name, replica, httpAddr: h1, adminAddr: a1, adminUrl, rpcSecret: fullEnv.RPC_SECRET || null,
            url: `http://${connectHost(splitAddr(h1).host)}:${splitAddr(h1).port}`,
        });
    });
}

/**
 * Start $BUILD_DIR/bin/chatweb-fake-upstream (a fake OpenAI API) and read the address from its
 * "fake-upstream listening on http://HOST:PORT" line.
 * opts: env (FAKE_TOKENS_PER_SEC, FAKE_TTFT_MS, FAKE_REPLY_TOKENS, FAKE_REQUEST_LOG, ...), dir
 *       (required; log dir/logs/fake-upstream.log unless logDir), listen ('127.0.0.1:0'), binDir, tee.
 * Returns {kind:'fake-upstream', label, pid, url, addr, baseUrl: url + '/v1', logFile, exited, stop(), kill()},
 * plus frontUrl (https:// or http://) when FAKE_FRONT_LISTEN started its TLS/HTTP/2 front.
 */
export async function startFakeUpstream({ env = {}, dir, logDir, listen = '127.0.0.1:0', binDir, tee = false,
    inheritEnv = false, readyTimeoutMs = 10000, label = 'fake-upstream' } = {}) {
    if (!dir) throw new StackError(label, 'startFakeUpstream needs a dir');
    const bin = binary(label, binDir, 'chatweb-fake-upstream');
    const logFile = path.join(path.resolve(logDir || path.join(dir, 'logs')), `${label}.log`);
    const h = spawnServer({
        label, cmd: bin, args: ['--listen', listen], env: { ...baseEnv(inheritEnv), ...env }, logFile, tee,
        stdout: 'pipe', graceMs: 5000,
    });
    const url = await keepAlive(new Promise((resolve) => {
        let buf = '';
        let found = null;
        const wantFront = nonEmpty(env.FAKE_FRONT_LISTEN);
        h.child.stdout.on('data', (chunk) => {
            fs.appendFileSync(logFile, chunk);
            if (found) return;
            buf += chunk.toString('utf8');
            // the plain port's line comes first; the front's follows in the same write
            const m = /^fake-upstream listening on (https?:\/\/[^\s]+)/m.exec(buf);
            const f = /front listening on (https?:\/\/[^\s]+)/.exec(buf);
            if (m && (!wantFront || f)) {
                found = m[1].replace(/\/+$/, '');
                if (f) h.frontUrl = f[1];
                resolve(found);
            }
        });
        h._exited.then(() => resolve(null));
        setTimeout(() => resolve(null), readyTimeoutMs).unref();
    }));
    if (!url) {
        const exited = h.exitInfo;
        if (!exited) await h.kill();
        throw new StackError(label, `${exited ? describeExit(exited) : `printed no "listening on" line within ${readyTimeoutMs} ms`}; ` +
            `last lines of ${logFile}:\n${indent(tailFile(logFile, 20, h.logStart))}`);
    }
    h.ready = true;
    const u = new URL(url);
    return Object.assign(h, { kind: 'fake-upstream', url, addr: `${u.hostname}:${u.port}`, baseUrl: `${url}/v1` });
}

// ---------------------------------------------------------------------------------------------
// Lock: one stack per DATA_DIR

/**
 * Take DATA_DIR/stack.pid for this process. Throws StackError when a live process holds it;
 * a stale file (dead pid) is replaced. Returns release().
 */
export function lockDataDir(dir) {
    const lockPath = path.join(dir, 'stack.pid');
    mkdirPrivate(dir);
    for (let i = 0; i < 2; i++) {
        try {
            fs.writeFileSync(lockPath, `${process.pid}\n`, { flag: 'wx', mode: 0o600 });
            const release = () => {
                exitCleanups.delete(release);
                try {
                    if (fs.readFileSync(lockPath, 'utf8').trim() === String(process.pid)) fs.unlinkSync(lockPath);
                } catch { /* already gone */ }
            };
            exitCleanups.add(release);
            installProcessHooks();
            return release;
        } catch (err) {
            if (err.code !== 'EEXIST') throw new StackError('stack', `cannot write ${lockPath}: ${err.message}`);
        }
        const pid = Number(fs.readFileSync(lockPath, 'utf8').trim());
        if (pid && pid !== process.pid && pidAlive(pid))
            throw new StackError('stack', `DATA_DIR ${dir} is in use by another stack (pid ${pid}, see ${lockPath}); ` +
                'stop that one first, or give this one its own DATA_DIR and SERVER_PORT');
        fs.rmSync(lockPath, { force: true });
    }
    throw new StackError('stack', `cannot take ${lockPath}`);
}

// ---------------------------------------------------------------------------------------------
// The whole stack

function nonEmpty(v) {
    return v !== undefined && v !== null && v !== '';
}

/**
 * Start a whole chatweb stack under one DATA_DIR:
 *   redis (unless redisUrl) → mariadb (when mysql and no db) → fake upstream (when the env has
 *   neither OPENAI_KEY nor OPENAI_BASE_URL) → [RPC balancer when auth or billing has several
 *   replicas] → auth×N → billing×N → chat×N → proxy×N → nginx in front.
 * Every service gets AUTH_URL and BILLING_URL (the balancer, or the single replica).
 * opts:
 *   dir            DATA_DIR (required); layout: logs/, redis/, mariadb/, nginx/, nginx-rpc/, stack.pid
 *   listenHost     ingress host ('127.0.0.1'); listenPort: ingress port (default: a free port)
 *   replicas       {auth, billing, chat, proxy} counts (default 1 each)
 *   services       which services to start (default all four; nginx routes to missing ones give 502)
 *   redisUrl       use this Redis instead of starting one (checked with PING)
 *   db             DB for the services (mysql://...); mysql: true starts a MariaDB for them instead
 *   env            environment for every service (on top of our whole env when inheritEnv)
 *   serviceEnv     {auth: {...}, chat: {...}, ...} per-service additions
 *   fakeUpstream   true/false to force; default: only when OPENAI_KEY and OPENAI_BASE_URL are unset
 *   fakeUpstreamEnv  FAKE_* knobs for the fake upstream
 *   staticRoot     web root served by nginx at / and /admin/ (default deploy/local/www)
 *   persist        Redis with an append-only file (default false); fastMysql relaxes fsync
 *   nginxReadTimeout  the ingress's proxy_read_timeout (default '1h'; tests of its 504 use less)
 *   authRpcPort    auth serves its RPC on a port of its own (RPC_ADDR), as the Helm chart does;
 *                  AUTH_URL then names that port, and auth's HTTP_ADDR has no /rpc/
 *   binDir, inheritEnv, tee, logLevel, log (progress callback), lock (default true)
 * Returns {dir, logDir, url, host, port, redisUrl, db, mariadb, redis, fakeUpstream, authUrl, rpcSecret,
 *          billingUrl, services: {name: [handles]}, nginx, rpc, handles, stop()}.
 * On failure everything it started is stopped again before the error is thrown.
 */
export async function startStack(opts = {}) {
    const {
        dir, listenHost = '127.0.0.1', listenPort = 0, replicas = {}, services = SERVICES, mysql = false,
        redisUrl, db, env = {}, serviceEnv = {}, fakeUpstream, fakeUpstreamEnv = {}, staticRoot = DEFAULT_STATIC_ROOT,
        persist = false, fastMysql = false, binDir, inheritEnv = false, tee = false, logLevel, log = () => {},
        lock = true, nginxReadTimeout = '1h', authRpcPort = false,
    } = opts;
    if (!dir) throw new StackError('stack', 'startStack needs a dir (DATA_DIR)');
    const root = path.resolve(dir);
    const logDir = path.join(root, 'logs');
    // DATA_DIR holds the database (password and key hashes), the Redis dump and the logs: 0700,
    // also when an older run left it 0755.
    mkdirPrivate(root);
    mkdirPrivate(logDir);
    const handles = [];
    const started = (h) => { handles.push(h); return h; };
    const release = lock ? lockDataDir(root) : () => {};
    const result = {
        dir: root, logDir, handles, services: {}, redis: null, mariadb: null, fakeUpstream: null, nginx: null, rpc: null,
        async stop() {
            for (const h of [...handles].reverse()) await h.stop().catch(() => {});
            release();
        },
    };
    try {
        // Everything that can be checked is checked before anything slow starts.
        for (const s of services)
            if (!SERVICES.includes(s)) throw new StackError('stack', `unknown service ${JSON.stringify(s)}`);
        const count = (s) => {
            const n = replicas[s] === undefined ? 1 : replicas[s];
            if (!Number.isInteger(n) || n < 0 || n > 64) throw new StackError('stack', `replicas.${s} must be an integer 0..64, got ${n}`);
            return services.includes(s) ? n : 0;
        };
        const svcEnv = withSecrets({ ...baseEnv(inheritEnv), ...env, DATA_DIR: root });
        result.rpcSecret = svcEnv.RPC_SECRET || null;
        result.ingressToken = svcEnv.INGRESS_TOKEN || null;
        if (logLevel) svcEnv.LOG_LEVEL = logLevel;
        const wantFake = fakeUpstream !== undefined ? fakeUpstream
            : !nonEmpty(svcEnv.OPENAI_KEY) && !nonEmpty(svcEnv.OPENAI_BASE_URL);
        for (const s of SERVICES) if (count(s) > 0) binary(s, binDir, `chatweb-${s}`);
        if (wantFake) binary('fake-upstream', binDir, 'chatweb-fake-upstream');
        if (listenPort) {
            await assertPortFree('nginx', listenHost, listenPort);
            /* the services' ports come from freePort: never the ingress's, which nginx binds last */
            handedOut.add(listenPort);
        }

        const extRedis = nonEmpty(redisUrl) ? redisUrl : nonEmpty(svcEnv.REDIS_URL) ? svcEnv.REDIS_URL : null;
        if (extRedis) {
            const shown = extRedis.replace(/\/\/[^@/]*@/, '//***@');
            try {
                if (/^redis:/.test(extRedis)) await pingRedis(extRedis, 3000);
            } catch (err) {
                throw new StackError('redis', `cannot reach REDIS_URL ${shown}: ${err.message}`);
            }
            result.redisUrl = extRedis;
            log(`redis: using ${shown}`);
        } else {
            result.redis = started(await startRedis({ dir: path.join(root, 'redis'), logFile: path.join(logDir, 'redis.log'), persist, tee }));
            result.redisUrl = result.redis.url;
            log(`redis: ${result.redis.url.replace(/\/\/[^@/]*@/, '//***@')} (pid ${result.redis.pid})`);
        }
        svcEnv.REDIS_URL = result.redisUrl;

        const extDb = nonEmpty(db) ? db : nonEmpty(svcEnv.DB) ? svcEnv.DB : null;
        if (extDb) {
            result.db = extDb;
        } else if (mysql) {
            result.mariadb = started(await startMariadb({ dir: path.join(root, 'mariadb'), logFile: path.join(logDir, 'mariadb.log'),
                fast: fastMysql, tee }));
            result.db = result.mariadb.dsn;
            log(`mariadb: 127.0.0.1:${result.mariadb.port} (pid ${result.mariadb.pid})`);
        } else {
            result.db = null;   // the services use SQLite under DATA_DIR
            delete svcEnv.DB;
        }
        if (result.db) svcEnv.DB = result.db;

        if (wantFake) {
            result.fakeUpstream = started(await startFakeUpstream({ dir: root, logDir, env: fakeUpstreamEnv, binDir, tee }));
            svcEnv.OPENAI_BASE_URL = result.fakeUpstream.baseUrl;
            if (!nonEmpty(svcEnv.OPENAI_KEY)) svcEnv.OPENAI_KEY = 'sk-fake-upstream-not-a-real-key';
            svcEnv.CHAT_TEST_UPSTREAM = 'true';   // /api/config says so: the web UI's notice
            log(`fake-upstream: ${result.fakeUpstream.url} (pid ${result.fakeUpstream.pid})`);
        }

        // auth and billing call each other, and chat and proxy call both, so their RPC (data)
        // addresses are fixed before any of them starts. Several replicas of one of them get an
        // nginx in front, like a Kubernetes Service; one replica is called directly.
        const rpcAddrs = {};
        for (const s of ['auth', 'billing']) {
            rpcAddrs[s] = [];
            for (let i = 0; i < count(s); i++) rpcAddrs[s].push(`127.0.0.1:${await freePort('127.0.0.1')}`);
        }
        // auth's public routes then stay on its HTTP_ADDR, its RPC moves to RPC_ADDR
        const authHttpAddrs = [];
        if (authRpcPort)
            for (let i = 0; i < count('auth'); i++) authHttpAddrs.push(`127.0.0.1:${await freePort('127.0.0.1')}`);
        const lb = {};
        for (const s of ['auth', 'billing']) if (rpcAddrs[s].length > 1) lb[s] = rpcAddrs[s];
        if (Object.keys(lb).length) {
            result.rpc = started(await startRpcBalancer({ dir: path.join(root, 'nginx-rpc'), logDir, backends: lb, tee }));
            log(`nginx-rpc: ${Object.entries(result.rpc.urls).map(([s, u]) => `${s} ${u}`).join(', ')} (pid ${result.rpc.pid})`);
        }
        for (const s of ['auth', 'billing']) {
            const url = (result.rpc && result.rpc.urls[s]) || (rpcAddrs[s][0] && `http://${rpcAddrs[s][0]}`);
            if (url) svcEnv[s === 'auth' ? 'AUTH_URL' : 'BILLING_URL'] = url;
        }
        result.authUrl = svcEnv.AUTH_URL;
        result.billingUrl = svcEnv.BILLING_URL;

        // Admin addresses are fixed up front too: auth's ops action `health` reads every
        // replica's /readyz from HEALTH_URLS (docs/ops-api.md), like the chart's Services.
        const adminAddrs = {};
        const healthUrls = [];
        for (const s of SERVICES) {
            adminAddrs[s] = [];
            for (let i = 1; i <= count(s); i++) {
                const a = `127.0.0.1:${await freePort('127.0.0.1')}`;
                adminAddrs[s].push(a);
                healthUrls.push(`${count(s) > 1 ? `${s}-${i}` : s}=http://${a}`);
            }
        }
        const startReplicas = async (name) => {
            const n = count(name);
            result.services[name] = [];
            for (let i = 1; i <= n; i++) {
                const env1 = { ...svcEnv, ...(serviceEnv[name] || {}) };
                if (name === 'auth' && env1.HEALTH_URLS === undefined) env1.HEALTH_URLS = healthUrls.join(',');
                let httpAddr = rpcAddrs[name] && rpcAddrs[name][i - 1];
                if (name === 'auth' && authRpcPort) {
                    env1.RPC_ADDR = httpAddr;
                    httpAddr = authHttpAddrs[i - 1];
                }
                const h = started(await startService(name, {
                    env: env1, dir: root, logDir, replica: n > 1 ? i : undefined,
                    httpAddr, adminAddr: adminAddrs[name][i - 1], binDir, tee,
                }));
                if (env1.RPC_ADDR) h.rpcAddr = env1.RPC_ADDR;
                result.services[name].push(h);
                log(`${h.label}: http ${h.httpAddr}, admin ${h.adminAddr} (pid ${h.pid})`);
            }
        };
        await startReplicas('auth');
        await startReplicas('billing');
        await startReplicas('chat');
        await startReplicas('proxy');

        const addrs = (s) => result.services[s].map((h) => h.httpAddr);
        result.nginx = started(await startNginx({
            dir: path.join(root, 'nginx'), logDir, listenHost, listenPort,
            upstreams: { auth: addrs('auth'), chat: addrs('chat'), proxy: addrs('proxy') }, staticRoot, tee,
            readTimeout: nginxReadTimeout, ingressToken: svcEnv.INGRESS_TOKEN || null,
        }));
        result.url = result.nginx.url;
        result.host = listenHost;
        result.port = result.nginx.port;
        log(`nginx: ${listenHost}:${result.nginx.port} (pid ${result.nginx.pid})`);
        return result;
    } catch (err) {
        await result.stop();
        throw err;
    }
}
