// Dependency faults under load (tests/faults/run.mjs, tests/integration/faults.test.mjs): a whole
// stack with MariaDB carries mixed chat, /v1 and ops traffic while, one after the other, Redis
// and MariaDB are stopped and started again on the same port, and the upstream refuses
// connections, stalls, cuts replies and answers garbage. For each fault: what users saw
// (outcomes per kind of the requests sent while the fault lasted) and the time to recover, from
// the moment the dependency is back until a chat turn that continues a conversation (so it reads
// Redis), an ops call, and every service's /readyz succeed again. At the end: money and events
// consistent (tests/soak/lib.mjs consistency()) and every service still running.
//
// The upstream faults come from a small proxy in this process between the services and the fake
// upstream (their OPENAI_BASE_URL), so a fault applies to every request at once: the fake
// upstream's knobs (docs/fake-upstream.md) act per request only, and it has none for garbage.
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import {
    pidAlive, startFakeUpstream, startMariadb, startRedis, startStack, stopAll,
} from '../../deploy/local/stack.mjs';
import {
    ENV, call, consistency, makeUsers, ops, outcome, traffic, until,
} from '../soak/lib.mjs';

export const ALL_FAULTS = ['redis', 'mariadb', 'upstream-refuse', 'upstream-stall', 'upstream-cut', 'upstream-garbage'];

/** The proxy between chat and the fake upstream; mode(): ok | refuse | stall | cut | garbage. */
async function faultProxy(target) {
    const sockets = new Set();
    let mode = 'ok';
    let n = 0;
    const server = http.createServer((req, res) => {
        if (mode === 'stall') return; // accepted, never answered: chat's idle timeout ends it
        if (mode === 'garbage') {
            n++;
            if (n % 2) {
                res.writeHead(200, { 'content-type': 'text/event-stream' });
                res.end('data: {"id":"x","choices":[{"delta":{"content":\n\ndata: \u0000\u00ff garbage\n\nevent: ?\n\n');
            } else {
                res.writeHead(200, { 'content-type': 'application/json' });
                res.end('<html>502 Bad Gateway</html>');
            }
            return;
        }
        const up = http.request(`${target}${req.url}`, { method: req.method, headers: req.headers }, (ur) => {
            res.writeHead(ur.statusCode, ur.headers);
            let sent = 0;
            ur.on('data', (d) => {
                if (mode === 'cut' && sent > 200) {
                    res.destroy();
                    ur.destroy();
                    return;
                }
                sent += d.length;
                res.write(d);
            });
            ur.on('end', () => res.end());
            ur.on('error', () => res.destroy());
        });
        up.on('error', () => res.destroy());
        req.pipe(up);
    });
    server.keepAliveTimeout = 5000;
    server.on('connection', (s) => {
        sockets.add(s);
        s.on('close', () => sockets.delete(s));
    });
    await new Promise((r) => server.listen(0, '127.0.0.1', r));
    const port = server.address().port;
    return {
        url: `http://127.0.0.1:${port}`,
        async set(m) {
            if (m === 'refuse' && mode !== 'refuse') {
                await new Promise((r) => { server.close(r); for (const s of sockets) s.destroy(); });
            } else if (m !== 'refuse' && mode === 'refuse') {
                await new Promise((r) => server.listen(port, '127.0.0.1', r));
            }
            if (m === 'ok') for (const s of sockets) s.destroy(); // drop stalled and half-cut leftovers
            mode = m;
        },
        async close() {
            for (const s of sockets) s.destroy();
            if (mode !== 'refuse') await new Promise((r) => server.close(r));
        },
    };
}

/** Counts outcomes per kind of the traffic requests that started in [from, to). */
function window(events, from, to) {
    const out = {};
    for (const e of events) {
        const start = e.t - e.ms;
        if (start < from || start >= to) continue;
        out[e.kind] ??= {};
        out[e.kind][e.outcome] = (out[e.kind][e.outcome] || 0) + 1;
    }
    return out;
}

/**
 * Runs the faults. opts: faults (names from ALL_FAULTS), faultSeconds (how long each lasts),
 * settleSeconds (calm traffic between faults), concurrency, recoverLimitMs, buildDir, log.
 * Resolves a report: {phases: [{fault, saw, chatRecoveryMs, opsRecoveryMs}], consistency,
 * consistentAfterMs, totals, servicesAlive, problems}.
 */
export async function runFaults({
    faults = ALL_FAULTS, faultSeconds = 8, settleSeconds = 3, concurrency = 4, recoverLimitMs = 60000,
    log = () => {},
} = {}) {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'chatweb-faults-'));
    fs.chmodSync(dir, 0o755);
    const problems = [];
    const report = { phases: [], problems, dir };
    const fake = await startFakeUpstream({ dir: path.join(dir, 'fake') });
    const proxy = await faultProxy(fake.url);
    let stack = null;
    try {
        stack = await startStack({
            dir, mysql: true, persist: true, inheritEnv: false,
            env: { ...ENV, OPENAI_BASE_URL: `${proxy.url}/v1`, CHAT_UPSTREAM_IDLE_TIMEOUT: '3' },
        });
        log(`stack up: ${stack.url}`);
        const users = await makeUsers(stack, 'fault', 8, 5000000);
        const [probeUser] = await makeUsers(stack, 'probe', 1, 5000000);
        const load = traffic(stack, users, { concurrency });
        // The probe continues one conversation, so a successful turn also read its history from
        // Redis, and reached billing (Reserve, Settle) and the upstream.
        let probeParent = null;
        const probeOk = async () => {
            const body = { prompt: 'probe [[fake tokens=3]]', options: probeParent ? { parentMessageId: probeParent } : {} };
            const [c, o] = await Promise.all([
                call(`${stack.url}/api/chat-process`, {
                    headers: { authorization: probeUser.auth, 'content-type': 'application/json' },
                    body: JSON.stringify(body), timeoutMs: 5000,
                }),
                ops(stack, { action: 'check', i_username: probeUser.name }),
            ]);
            const chatOk = outcome(c) === '200';
            if (chatOk) probeParent = JSON.parse(c.body.trim().split('\n').pop()).id;
            return { chat: chatOk, ops: o.status === 200 && o.body.includes('"Success"') };
        };
        const allReady = async () => {
            for (const h of Object.values(stack.services).flat()) {
                if ((await call(`${h.adminUrl}/readyz`, { method: 'GET', timeoutMs: 2000 })).status !== 200) return false;
            }
            return true;
        };
        if (!(await probeOk()).chat) throw new Error('the probe chat does not work before any fault');
        await new Promise((r) => setTimeout(r, settleSeconds * 1000));
        for (const fault of faults) {
            const t0 = Date.now();
            log(`fault: ${fault} for ${faultSeconds} s`);
            let restore;
            if (fault === 'redis') {
                const { port } = stack.redis;
                await stack.redis.stop();
                restore = async () => {
                    stack.redis = await startRedis({ dir: path.join(dir, 'redis'), port, persist: true, logFile: path.join(stack.logDir, 'redis.log') });
                };
            } else if (fault === 'mariadb') {
                const m = stack.mariadb;
                await m.stop();
                restore = async () => {
                    stack.mariadb = await startMariadb({
                        dir: path.join(dir, 'mariadb'), port: m.port, password: m.password, database: m.database, user: m.user,
                        logFile: path.join(stack.logDir, 'mariadb.log'),
                    });
                };
            } else {
                await proxy.set(fault.replace('upstream-', ''));
                restore = () => proxy.set('ok');
            }
            await new Promise((r) => setTimeout(r, faultSeconds * 1000));
            await restore();
            const back = Date.now();
            let chatAt = -1;
            let opsAt = -1;
            let readyAt = -1;
            await until(recoverLimitMs, async () => {
                const start = Date.now();
                const [p, ready] = await Promise.all([probeOk(), readyAt < 0 ? allReady() : true]);
                if (p.chat && chatAt < 0) chatAt = start - back;
                if (p.ops && opsAt < 0) opsAt = start - back;
                if (ready && readyAt < 0) readyAt = start - back;
                return chatAt >= 0 && opsAt >= 0 && readyAt >= 0;
            }, 100);
            const phase = {
                fault, seconds: faultSeconds, saw: window(load.events, t0, back),
                chatRecoveryMs: chatAt, opsRecoveryMs: opsAt, readyRecoveryMs: readyAt,
            };
            report.phases.push(phase);
            log(`  recovered: chat ${chatAt} ms, ops ${opsAt} ms, every /readyz ${readyAt} ms after ${fault} was back`);
            if (chatAt < 0 || opsAt < 0 || readyAt < 0) problems.push(`${fault}: not recovered within ${recoverLimitMs} ms`);
            await new Promise((r) => setTimeout(r, settleSeconds * 1000));
        }
        await load.stop();
        report.totals = window(load.events, 0, Infinity);
        const stopAt = Date.now();
        let c = null;
        report.consistentAfterMs = await until(120000, async () => {
            c = await consistency(stack, stack.mariadb);
            return c.ok;
        }, 1000);
        report.consistency = c;
        log(`consistency: ${c.ok ? `ok after ${Date.now() - stopAt} ms` : c.problems.join('; ')}`);
        if (!c.ok) problems.push(...c.problems);
        report.servicesAlive = Object.values(stack.services).flat().every((h) => pidAlive(h.pid) && !h.exitInfo);
        if (!report.servicesAlive) problems.push('a service died during the faults');
    } finally {
        if (stack) await stack.stop();
        await stopAll();
        await proxy.close();
        await fake.stop();
        if (problems.length === 0) fs.rmSync(dir, { recursive: true, force: true });
    }
    return report;
}

/** The report as text. */
export function formatReport(r) {
    const lines = [];
    const fmt = (o) => Object.entries(o || {}).map(([k, v]) => `${k} [${Object.entries(v).sort().map(([s, n]) => `${s}: ${n}`).join(', ')}]`).join('; ');
    lines.push('fault              recovery ms (chat / ops / readyz)   what users saw while it lasted');
    for (const p of r.phases) {
        lines.push(`${p.fault.padEnd(18)} ${String(p.chatRecoveryMs).padStart(6)} / ${String(p.opsRecoveryMs).padStart(6)} / ${String(p.readyRecoveryMs).padStart(6)}     ${fmt(p.saw)}`);
    }
    if (r.totals) lines.push(`whole run: ${fmt(r.totals)}`);
    const c = r.consistency;
    if (c) {
        lines.push(`consistency: ${c.ok ? 'OK' : 'FAILED'} - ${c.users} accounts, ledger sum == balance for each; ${c.ledgerRows} ledger rows, ` +
            `${c.streamEvents} stream events (${c.duplicates} duplicated), ${c.openHolds} open holds, outbox ${c.outbox}` +
            `${r.consistentAfterMs >= 0 ? `; consistent ${r.consistentAfterMs} ms after traffic stopped` : ''}`);
    }
    lines.push(`services alive: ${r.servicesAlive ? 'yes' : 'NO'}`);
    if (r.problems.length) lines.push(`problems:\n  ${r.problems.join('\n  ')}\n(kept ${r.dir})`);
    return lines.join('\n');
}
