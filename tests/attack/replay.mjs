#!/usr/bin/env node
// Replays the attacks of issue 10 against a running one-machine stack (`make run`), as a hostile
// local user and as a stranger on the network would try them, and prints what each got.
//
//   [OPS_KEY=...] node tests/attack/replay.mjs [--data-dir var]     (make attack-replay)
//
// It reads DATA_DIR/stack.json for the addresses (what a port scan finds; the file is the
// owner's, so run this as the stack's user) and uses the operator key (OPS_KEY, else the one in
// DATA_DIR/first-run.json) only to set up victims and to read balances and ledgers afterwards. Every attack is on the stack's real ports:
//   - a protobuf Recharge posted to billing's RPC port (unsigned, badly signed): no credit, no row;
//   - an unsigned Authenticate to auth's RPC port;
//   - Redis without its password: reading, forging a session;
//   - DATA_DIR read by another user: every file and directory mode;
//   - a stranger's wrong passwords against a user: the user's own session keeps working;
//   - guessing OPS_KEY: throttled (429) after AUTH_OPS_THROTTLE misses;
//   - a recharge replayed with the same Idempotency-Key and another count: 409, nothing credited;
//   - history after a rename: a new holder of the name gets none of the old one's conversation
//     (checked on the fake upstream's request log; reported as not checked with a real upstream).
// Exit 0 when every attack failed as it must, 1 otherwise; one line per attack either way.
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { ROOT } from '../../deploy/local/stack.mjs';
import { types } from '../integration/lib/billing-rpc.mjs';

const { values } = parseArgs({ options: { 'data-dir': { type: 'string', default: process.env.DATA_DIR || path.join(ROOT, 'var') } } });
const dataDir = path.resolve(values['data-dir']);
// the operator key: OPS_KEY, else the one `make run` made on its first start
const firstRun = path.join(dataDir, 'first-run.json');
const OPS_KEY = process.env.OPS_KEY || (fs.existsSync(firstRun) ? JSON.parse(fs.readFileSync(firstRun, 'utf8')).ops_key : '');
if (!OPS_KEY) {
    process.stderr.write(`replay: set OPS_KEY to the running stack's operator key (${firstRun} has none)\n`);
    process.exit(64);
}
const info = JSON.parse(fs.readFileSync(path.join(dataDir, 'stack.json'), 'utf8'));
const base = info.url.replace(/\/+$/, '');
const results = [];
const tag = `r${Date.now().toString(36)}`;

function send(url, { method = 'GET', headers = {}, body } = {}) {
    return new Promise((resolve, reject) => {
        const req = http.request(url, { method, agent: false, headers: { ...(body ? { 'content-length': Buffer.byteLength(body) } : {}), ...headers } }, (res) => {
            const chunks = [];
            res.on('data', (c) => chunks.push(c));
            res.on('end', () => resolve({ status: res.statusCode, headers: res.headers, body: Buffer.concat(chunks) }));
            res.on('error', reject);
        });
        req.on('error', reject);
        req.setTimeout(15000, () => req.destroy(new Error('timed out')));
        req.end(body);
    });
}

async function ops(body, headers = {}) {
    const r = await send(`${base}/accounts`, { method: 'POST', headers: { opskey: OPS_KEY, 'content-type': 'application/json', ...headers }, body: JSON.stringify(body) });
    return { status: r.status, json: JSON.parse(r.body.toString() || 'null') };
}

async function opsOk(body) {
    const r = await ops(body);
    if (r.json?.status !== 'Success') throw new Error(`ops ${body.action}: ${JSON.stringify(r.json)}`);
    return r.json.data;
}

function redis(host, port, args) {
    return new Promise((resolve, reject) => {
        const s = net.connect(port, host);
        let out = '';
        s.setTimeout(5000, () => s.destroy(new Error('redis timed out')));
        s.on('data', (d) => {
            out += d;
            if (out.endsWith('\r\n')) s.end();
        });
        s.on('end', () => resolve(out.split('\r\n')[0]));
        s.on('error', reject);
        s.write(`*${args.length}\r\n${args.map((a) => `$${Buffer.byteLength(a)}\r\n${a}\r\n`).join('')}`);
    });
}

async function attack(name, expected, fn) {
    let got;
    let ok;
    try {
        [ok, got] = await fn();
    } catch (e) {
        [ok, got] = [false, `error: ${e.message}`];
    }
    results.push({ name, expected, got, ok });
    process.stdout.write(`${ok === true ? 'held  ' : ok === null ? 'n/a   ' : 'BROKEN'}  ${name}\n        expected: ${expected}\n        got:      ${got}\n`);
}

const ledgerRows = async (user) => (await opsOk({ action: 'usage', i_username: user, limit: 100, days: 1 }));

// ---- internal RPC ----

await attack('a Recharge posted to billing\'s RPC port, unsigned and with a made-up signature',
    '401 / 403, the balance and the ledger unchanged', async () => {
        const victim = `${tag}-rpc`;
        await opsOk({ action: 'register', i_username: victim, i_password: `${victim}-pw`, count: 10 });
        const id = (await opsOk({ action: 'check', i_username: victim })).id;
        const T = types.RechargeRequest;
        const body = Buffer.from(T.encode(T.fromObject({ user_id: id, units: 1000000, actor: 'attacker' })).finish());
        const billing = `http://${info.services.billing[0].http}/rpc/Billing/Recharge`;
        const before = await ledgerRows(victim);
        const statuses = [];
        for (const headers of [{}, { 'x-rpc-timestamp': String(Math.floor(Date.now() / 1000)), 'x-rpc-signature': 'a'.repeat(64) }]) {
            statuses.push((await send(billing, { method: 'POST', headers: { 'content-type': 'application/x-protobuf', ...headers }, body })).status);
        }
        const after = await opsOk({ action: 'check', i_username: victim });
        const rows = await ledgerRows(victim);
        const same = JSON.stringify(rows) === JSON.stringify(before);
        return [statuses.every((s) => s === 401 || s === 403) && after.balance === 10 && same,
            `statuses ${statuses.join(', ')}; balance ${after.balance}; ledger ${same ? 'unchanged' : 'CHANGED'}`];
    });

await attack('an unsigned Authenticate on auth\'s RPC port', '401', async () => {
    const r = await send(`http://${info.services.auth[0].http}/rpc/Auth/Authenticate`, { method: 'POST', headers: { 'content-type': 'application/x-protobuf' }, body: '' });
    return [r.status === 401, `status ${r.status}`];
});

// ---- Redis and the data directory ----

await attack('Redis without its password: read, and forge a session', 'NOAUTH for both', async () => {
    const u = new URL(info.redisUrl);
    const get = await redis(u.hostname, Number(u.port), ['GET', 'x']);
    const set = await redis(u.hostname, Number(u.port), ['SET', 'cw:auth:sess:{forged}', 'alice']);
    return [/^-NOAUTH/.test(get) && /^-NOAUTH/.test(set), `${get} / ${set}`];
});

await attack('DATA_DIR read by another user', 'DATA_DIR 0700, nothing below it readable or writable by group or others', async () => {
    const open = [];
    const walk = (d) => {
        for (const e of fs.readdirSync(d, { withFileTypes: true })) {
            const p = path.join(d, e.name);
            if (e.isSymbolicLink()) continue;
            // nginx makes its listening Unix sockets 0666 whatever the umask (the ingress's
            // fallback, nginx/fallback.sock): a socket counts as open when its directory is.
            const st = fs.lstatSync(p);
            const mode = st.isSocket() ? fs.statSync(d).mode : st.mode;
            if (mode & 0o077) open.push(`${path.relative(dataDir, p)} ${(mode & 0o777).toString(8)}${st.isSocket() ? ' (its directory)' : ''}`);
            if (e.isDirectory()) walk(p);
        }
    };
    walk(dataDir);
    const top = (fs.statSync(dataDir).mode & 0o777).toString(8);
    return [top === '700' && open.length === 0, `DATA_DIR ${top}; ${open.length} open: ${open.slice(0, 3).join(', ') || 'none'}`];
});

// ---- people ----

await attack('a stranger\'s wrong passwords against a user', 'throttled; the user\'s own session keeps working', async () => {
    const victim = `${tag}-lock`;
    await opsOk({ action: 'register', i_username: victim, i_password: `${victim}-pw`, count: 10 });
    const login = await send(`${base}/api/login`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ username: victim, password: `${victim}-pw` }) });
    const token = JSON.parse(login.body.toString()).data?.token;
    const codes = {};
    for (let i = 0; i < 30; i++) {
        const r = await send(`${base}/api/login`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ username: victim, password: `guess-${i}` }) });
        codes[r.status] = (codes[r.status] || 0) + 1;
    }
    const me = await send(`${base}/api/me`, { method: 'POST', headers: { authorization: `Bearer ${token}` } });
    const status = JSON.parse(me.body.toString()).status;
    return [Boolean(token) && status === 'Success', `stranger's answers ${JSON.stringify(codes)}; the owner's /api/me: ${status}`];
});

await attack('a recharge replayed with the same Idempotency-Key and another count', '409 for the changed replay, one credit in all', async () => {
    const victim = `${tag}-idem`;
    await opsOk({ action: 'register', i_username: victim, i_password: `${victim}-pw`, count: 0 });
    const key = `${tag}-idem-key`;
    const a = await ops({ action: 'recharge', i_username: victim, count: 100 }, { 'idempotency-key': key });
    const b = await ops({ action: 'recharge', i_username: victim, count: 999 }, { 'idempotency-key': key });
    const c = await ops({ action: 'recharge', i_username: victim, count: 100 }, { 'idempotency-key': key });
    const bal = (await opsOk({ action: 'check', i_username: victim })).balance;
    return [a.json.status === 'Success' && b.status === 409 && c.json.data?.replay === true && bal === 100,
        `first ${a.json.status}; changed replay ${b.status}; exact replay ${c.json.data?.replay ? 'a replay' : JSON.stringify(c.json)}; balance ${bal}`];
});

await attack('history after a rename: the new holder of the name continues the old message id', 'no old message reaches the upstream', async () => {
    if (!info.fakeUpstream) return [null, 'not checked: the stack has a real upstream (no request log to read)'];
    // what /user accepts: 4-12 letters and digits, a letter first; passwords 6-12
    const name = `iv${Date.now().toString(36).slice(-6)}`;
    const basic = (u, p) => `Basic ${Buffer.from(`${u}:${p}`).toString('base64')}`;
    const chat = async (auth, prompt, parent) => {
        const r = await send(`${base}/api/chat-process`, { method: 'POST', headers: { authorization: auth, 'content-type': 'application/json' }, body: JSON.stringify({ prompt, options: parent ? { parentMessageId: parent } : {} }) });
        return JSON.parse(r.body.toString().trim().split('\n').pop());
    };
    await opsOk({ action: 'register', i_username: name, i_password: 'secret111', count: 100000 });
    const first = await chat(basic(name, 'secret111'), `my private secret is ${tag}-4711`);
    const renamed = await chat(basic(name, 'secret111'), `/user ${name}x:secret222`);
    if (!/更新成功/.test(`${renamed.text ?? ""} ${renamed.message ?? ""}`)) return [false, `the rename failed: ${JSON.stringify(renamed).slice(0, 120)}`];
    await opsOk({ action: 'register', i_username: name, i_password: 'other-pw-1', count: 100000 });
    const seq = JSON.parse((await send(`${info.fakeUpstream}/_fake/requests`)).body.toString()).requests.pop()?.seq ?? 0;
    await chat(basic(name, 'other-pw-1'), 'continue please', first.id);
    const up = JSON.parse((await send(`${info.fakeUpstream}/_fake/requests?since=${seq}`)).body.toString()).requests;
    const leaked = up.some((r) => JSON.stringify(r.body).includes(`${tag}-4711`));
    return [up.length > 0 && !leaked, `${up.length} upstream request(s); the old prompt ${leaked ? 'LEAKED' : 'absent'}`];
});

// Last: it throttles this address's operator calls for AUTH_OPS_THROTTLE_WINDOW (600 s by default).
await attack('guessing OPS_KEY', '429 after the throttle\'s misses', async () => {
    const codes = [];
    for (let i = 0; i < 40; i++) {
        codes.push((await send(`${base}/accounts`, { method: 'POST', headers: { opskey: `wrong-guess-${i}-xxxxxxxxxxxxxxxxxxxx`, 'content-type': 'application/json' }, body: '{"action":"list"}' })).status);
    }
    const first429 = codes.indexOf(429);
    return [first429 > 0 && codes.slice(first429).every((c) => c === 429), `first 429 at guess ${first429 + 1} of 40`];
});

const broken = results.filter((r) => r.ok === false);
const unchecked = results.filter((r) => r.ok === null);
process.stdout.write(`\n${results.length - broken.length - unchecked.length} of ${results.length} attacks held, ${broken.length} broken, ${unchecked.length} not checked\n`);
process.exit(broken.length ? 1 : 0);
