// Shared by the soak (tests/soak/run.mjs) and the dependency-fault script (tests/faults/run.mjs):
// mixed chat + ops traffic against a stack started with deploy/local/stack.mjs, per-process RSS and
// descriptor sampling from /proc, and the money/event consistency checks (ledger vs balance per
// user, billing events in the Redis Stream vs ledger rows).
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';

export const OPS_KEY = 'soak-ops-key-0123456789-abcdef-xyz';
export const STREAM = 'chatweb:billing:events';

/** Environment of a soak/fault stack: cheap argon2 (the service default is 19 MiB per hash). */
export const ENV = {
    OPS_KEY, LOG_LEVEL: 'notice', AUTH_PWHASH_OPS: '1', AUTH_PWHASH_MEM_KIB: '8192',
    BASIC_AUTH_USER: 'static', BASIC_AUTH_PASSWORD: 'static-password',
    // the metered /v1 proxy, without per-key limits (the traffic is the same few keys all along)
    OPENAI_PROXY: 'true', PROXY_RPM_LIMIT: '0', PROXY_TPM_LIMIT: '0',
    // every event stays in the stream, so consistency() can find each ledger row there
    BILLING_EVENTS_MAXLEN: '1000000000',
};

const agent = new http.Agent({ keepAlive: true, maxSockets: 64 });

/**
 * One request with a keep-alive agent; resolves {status, body, ms} and never rejects: a network
 * error is status 0 with the error text as body, a timeout status -1.
 */
export function call(url, { method = 'POST', headers = {}, body, timeoutMs = 30000 } = {}) {
    const t0 = Date.now();
    return new Promise((resolve) => {
        const h = { ...headers };
        if (body !== undefined) h['content-length'] = Buffer.byteLength(body);
        const req = http.request(url, { method, headers: h, agent }, (res) => {
            const chunks = [];
            res.on('data', (c) => chunks.push(c));
            res.on('error', (e) => resolve({ status: 0, body: String(e.message), ms: Date.now() - t0 }));
            res.on('end', () => resolve({ status: res.statusCode, body: Buffer.concat(chunks).toString('utf8'), ms: Date.now() - t0 }));
        });
        req.setTimeout(timeoutMs, () => {
            req.destroy();
            resolve({ status: -1, body: 'timeout', ms: Date.now() - t0 });
        });
        req.on('error', (e) => resolve({ status: 0, body: String(e.message), ms: Date.now() - t0 }));
        req.end(body);
    });
}

export function basic(user, pw) {
    return `Basic ${Buffer.from(`${user}:${pw}`).toString('base64')}`;
}

export function ops(stack, body, extraHeaders = {}) {
    return call(`${stack.url}/accounts`, {
        headers: { opskey: OPS_KEY, 'content-type': 'application/json', ...extraHeaders }, body: JSON.stringify(body),
    });
}

/**
 * What a user saw: the HTTP status; for a 200, "200 Fail" (the envelope's Fail), "200 error-text"
 * (a chat reply whose last object carries an error in brackets, "...\n[<error>]", the way chat
 * reports an upstream that broke, stalled or answered garbage) or "200".
 */
export function outcome(r) {
    if (r.status !== 200) return String(r.status);
    if (r.body.startsWith('{"status":"Fail"') || r.body.includes('"status":"Fail"')) return '200 Fail';
    try {
        const last = JSON.parse(r.body.trim().split('\n').pop());
        if (typeof last.text === 'string' && /(^|\n)\[[^\n]*\]$/.test(last.text)) return '200 error-text';
    } catch { /* not a chat stream */ }
    return '200';
}

/** Registers n users with `units` each and an API key for /v1; returns [{name, pw, auth, key}]. */
export async function makeUsers(stack, prefix, n, units) {
    const users = [];
    for (let i = 0; i < n; i++) {
        const name = `${prefix}${i}`;
        const pw = `${name}-password`;
        const r = await ops(stack, { action: 'register', i_username: name, i_password: pw, count: units });
        if (!r.body.includes('"Success"')) throw new Error(`register ${name}: ${r.status} ${r.body}`);
        const k = await ops(stack, { action: 'create_key', i_username: name, name: 'soak' });
        const key = k.status === 200 ? JSON.parse(k.body).data?.key : undefined;
        if (!key) throw new Error(`create_key ${name}: ${k.status} ${k.body}`);
        users.push({ name, pw, auth: basic(name, pw), key });
    }
    return users;
}

/**
 * Mixed traffic until stop() is called: `concurrency` workers, each looping over a weighted mix
 * of chat turns (streamed replies from the fake upstream, some continuing the previous turn),
 * ops calls (check, recharge with an idempotency key, usage, list), /api/me, /api/session,
 * /api/config, logins and the metered /v1 proxy (chat completions, streamed or not, with the
 * user's API key; /v1/models). Counts outcomes per kind: counts[kind][outcome].
 */
export function traffic(stack, users, { concurrency = 6, chatShare = 0.6, recharge = 7 } = {}) {
    const counts = {};
    const events = []; // {t, kind, outcome, ms}
    let running = true;
    let seq = 0;
    const note = (kind, r) => {
        const o = outcome(r);
        counts[kind] ??= {};
        counts[kind][o] = (counts[kind][o] || 0) + 1;
        events.push({ t: Date.now(), kind, outcome: o, ms: r.ms });
    };
    const parents = new Map();
    async function one(w) {
        const u = users[(seq++) % users.length];
        const x = Math.random();
        if (x < chatShare) {
            const body = { prompt: `soak ${w} ${seq} [[fake tokens=${5 + (seq % 20)}]]`, options: {} };
            // a third of the turns continue the user's conversation, at most 4 turns deep (the
            // history is sent again each turn: deeper, the balances would run out)
            const conv = parents.get(u.name);
            if (conv && seq % 3 === 0 && conv.depth < 4) body.options.parentMessageId = conv.id;
            const r = await call(`${stack.url}/api/chat-process`, {
                headers: { authorization: u.auth, 'content-type': 'application/json' }, body: JSON.stringify(body),
            });
            note('chat', r);
            if (r.status === 200) {
                try {
                    const last = JSON.parse(r.body.trim().split('\n').pop());
                    const depth = body.options.parentMessageId ? parents.get(u.name).depth + 1 : 1;
                    if (last.id) parents.set(u.name, { id: last.id, depth });
                } catch { /* a Fail envelope or a cut reply: no parent */ }
            }
            return;
        }
        const y = (x - chatShare) / (1 - chatShare);
        if (y < 0.2) note('ops check', await ops(stack, { action: 'check', i_username: u.name }));
        else if (y < 0.35) {
            note('ops recharge', await ops(stack, { action: 'recharge', i_username: u.name, count: recharge },
                { 'idempotency-key': `soak-${process.pid}-${seq}` }));
        } else if (y < 0.45) note('ops usage', await ops(stack, { action: 'usage', i_username: u.name, days: 1 }));
        else if (y < 0.5) note('ops list', await ops(stack, { action: 'list' }));
        else if (y < 0.7) note('me', await call(`${stack.url}/api/me`, { method: 'GET', headers: { authorization: u.auth } }));
        else if (y < 0.8) note('session', await call(`${stack.url}/api/session`, { body: '{}' }));
        else if (y < 0.88) note('config', await call(`${stack.url}/api/config`, { body: '{}' }));
        else if (y < 0.9) {
            note('login', await call(`${stack.url}/api/login`, {
                headers: { 'content-type': 'application/json' }, body: JSON.stringify({ username: u.name, password: u.pw }),
            }));
        } else if (y < 0.97) {
            const stream = seq % 2 === 0;
            const r = await call(`${stack.url}/v1/chat/completions`, {
                headers: { authorization: `Bearer ${u.key}`, 'content-type': 'application/json' },
                body: JSON.stringify({ model: 'gpt-3.5-turbo', stream, messages: [{ role: 'user', content: `soak ${seq} [[fake tokens=8]]` }] }),
            });
            note('v1 chat', r);
        } else note('v1 models', await call(`${stack.url}/v1/models`, { method: 'GET', headers: { authorization: `Bearer ${u.key}` } }));
    }
    const workers = Array.from({ length: concurrency }, async (_, w) => {
        while (running) await one(w);
    });
    return {
        counts,
        events,
        async stop() {
            running = false;
            await Promise.all(workers);
        },
    };
}

/** RSS (KiB) and open descriptors of a pid, or null when it is gone. */
export function procSample(pid) {
    try {
        const status = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
        const rss = Number(/VmRSS:\s+(\d+)/.exec(status)[1]);
        const fds = fs.readdirSync(`/proc/${pid}/fd`).length;
        return { rss, fds };
    } catch {
        return null;
    }
}

/** The chatweb service processes of a stack: [{label, pid}]. */
export function serviceProcs(stack) {
    const out = [];
    for (const hs of Object.values(stack.services)) for (const h of hs) out.push({ label: h.label, pid: h.pid });
    return out;
}

// ---- Redis (a tiny RESP client: the tests use Node's built-ins only) ----

function respParse(buf, i) {
    const t = String.fromCharCode(buf[i]);
    const eol = buf.indexOf('\r\n', i);
    if (eol < 0) return null;
    const line = buf.toString('latin1', i + 1, eol);
    if (t === '+' || t === '-') return { v: t === '-' ? new Error(line) : line, n: eol + 2 };
    if (t === ':') return { v: Number(line), n: eol + 2 };
    if (t === '$') {
        const len = Number(line);
        if (len < 0) return { v: null, n: eol + 2 };
        if (buf.length < eol + 2 + len + 2) return null;
        return { v: buf.subarray(eol + 2, eol + 2 + len), n: eol + 2 + len + 2 };
    }
    if (t === '*') {
        const len = Number(line);
        if (len < 0) return { v: null, n: eol + 2 };
        const arr = [];
        let p = eol + 2;
        for (let k = 0; k < len; k++) {
            const e = respParse(buf, p);
            if (e === null) return null;
            arr.push(e.v);
            p = e.n;
        }
        return { v: arr, n: p };
    }
    throw new Error(`RESP: unexpected ${t}`);
}

/** Runs commands (arrays of strings) on one connection to url; resolves their replies. */
export function redis(url, cmds, timeoutMs = 5000) {
    const u = new URL(url);
    const all = [];
    if (u.password) all.push(u.username ? ['AUTH', decodeURIComponent(u.username), decodeURIComponent(u.password)] : ['AUTH', decodeURIComponent(u.password)]);
    const db = u.pathname.replace('/', '');
    if (db) all.push(['SELECT', db]);
    all.push(...cmds);
    return new Promise((resolve, reject) => {
        const s = net.connect(Number(u.port || 6379), u.hostname);
        let buf = Buffer.alloc(0);
        const replies = [];
        const timer = setTimeout(() => { s.destroy(); reject(new Error('redis: timeout')); }, timeoutMs);
        s.on('error', (e) => { clearTimeout(timer); reject(e); });
        s.on('connect', () => {
            for (const c of all) {
                s.write(`*${c.length}\r\n`);
                for (const a of c) s.write(`$${Buffer.byteLength(String(a))}\r\n${a}\r\n`);
            }
        });
        s.on('data', (d) => {
            buf = Buffer.concat([buf, d]);
            for (;;) {
                const e = buf.length ? respParse(buf, 0) : null;
                if (e === null) break;
                replies.push(e.v);
                buf = buf.subarray(e.n);
            }
            if (replies.length === all.length) {
                clearTimeout(timer);
                s.destroy();
                resolve(replies.slice(all.length - cmds.length));
            }
        });
    });
}

// ---- SQL (the mariadb client, as tests/integration/lib/auth-helpers.mjs does) ----

export function sql(mariadb, query) {
    const r = spawnSync('mariadb', ['--no-defaults', `--socket=${mariadb.socket}`, `-u${mariadb.user}`,
        `-p${mariadb.password}`, mariadb.database, '--batch', '--skip-column-names', '-e', query],
    { encoding: 'utf8', maxBuffer: 1 << 30 });
    if (r.status !== 0) throw new Error(`mariadb: ${r.error ? r.error.message : r.stderr}`);
    return r.stdout.trim().split('\n').filter(Boolean).map((l) => l.split('\t'));
}

/**
 * Money and events: for every billing account, the sum of its ledger rows equals its balance
 * (granted - used - held), the last row's balance_after equals granted - used (a hold is not a
 * ledger row... checked as stated below), and every ledger row is in the Redis Stream exactly
 * as its id (duplicates are allowed: the relay is at-least-once). Also: no hold left open once
 * traffic stopped. Returns {ok, users, ledgerRows, streamIds, missing, extra, problems}.
 */
export async function consistency(stack, mariadb) {
    const problems = [];
    const accounts = sql(mariadb, 'SELECT user_id, granted, used, held, unlimited FROM billing_accounts WHERE deleted = 0');
    const sums = new Map(sql(mariadb, 'SELECT user_id, SUM(units), COUNT(*) FROM billing_ledger GROUP BY user_id')
        .map(([u, s, c]) => [u, { sum: Number(s), rows: Number(c) }]));
    const openHolds = Number(sql(mariadb, 'SELECT COUNT(*) FROM billing_holds WHERE state = 0')[0][0]);
    for (const [uid, granted, used, held, unlimited] of accounts) {
        if (unlimited === '1') continue;
        const balance = Number(granted) - Number(used) - Number(held);
        const s = sums.get(uid) || { sum: 0, rows: 0 };
        if (s.sum !== balance) problems.push(`user ${uid}: ledger sums to ${s.sum}, balance is ${balance} (granted ${granted} used ${used} held ${held})`);
    }
    if (openHolds > 0) problems.push(`${openHolds} hold(s) still open after traffic stopped`);
    const ledgerIds = new Set(sql(mariadb, 'SELECT id FROM billing_ledger').map(([id]) => `bl-${id}`));
    const outbox = Number(sql(mariadb, 'SELECT COALESCE(SUM(n), 0) FROM billing_outbox')[0][0]);
    // The stream in pages (a long soak leaves hundreds of thousands of events), ids only.
    const streamIds = new Map();
    let entries = 0;
    for (let from = '-'; ;) {
        const [page] = await redis(stack.redisUrl, [['XRANGE', STREAM, from, '+', 'COUNT', '1000']], 20000);
        if (!page || page.length === 0) break;
        for (const [eid, fields] of page) {
            entries++;
            for (let k = 0; k < fields.length; k += 2) {
                if (fields[k].toString() === 'id') {
                    const id = fields[k + 1].toString();
                    streamIds.set(id, (streamIds.get(id) || 0) + 1);
                }
            }
            from = `(${eid.toString()}`;
        }
        if (page.length < 1000) break;
    }
    const missing = [...ledgerIds].filter((id) => !streamIds.has(id));
    const extra = [...streamIds.keys()].filter((id) => !ledgerIds.has(id));
    const duplicates = [...streamIds.values()].filter((n) => n > 1).length;
    if (missing.length) problems.push(`${missing.length} ledger row(s) not in the stream (outbox still holds ${outbox}): ${missing.slice(0, 5).join(' ')}`);
    if (extra.length) problems.push(`${extra.length} stream event(s) without a ledger row: ${extra.slice(0, 5).join(' ')}`);
    return {
        ok: problems.length === 0, users: accounts.length, ledgerRows: ledgerIds.size, streamEvents: entries,
        duplicates, outbox, openHolds, problems,
    };
}

/** Polls fn() every stepMs until it returns true or limitMs passes; resolves the ms it took or -1. */
export async function until(limitMs, fn, stepMs = 100) {
    const t0 = Date.now();
    for (;;) {
        if (await fn()) return Date.now() - t0;
        if (Date.now() - t0 > limitMs) return -1;
        await new Promise((r) => setTimeout(r, stepMs));
    }
}

export function fmtCounts(counts) {
    return Object.entries(counts).map(([k, v]) => `  ${k.padEnd(13)} ${Object.entries(v).sort().map(([o, n]) => `${o}: ${n}`).join(', ')}`).join('\n');
}
