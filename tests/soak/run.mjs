#!/usr/bin/env node
// The soak (make soak): mixed chat and ops traffic against a whole stack (nginx, auth, billing,
// chat, proxy, Redis, MariaDB, the fake upstream) for SOAK_SECONDS, sampling every service's RSS
// and open descriptors every SOAK_SAMPLE_SECONDS. Fails when, between the end of the warm-up and
// the end of the run, a service's RSS floor (the lowest sample of the first and of the last six
// samples) grew more than the bound, or its descriptors (median of the same windows) more than the
// bound; when a request got a 5xx or no answer; when money and events are inconsistent afterwards
// (tests/soak/lib.mjs consistency()); or when a service did not exit cleanly on SIGTERM (a
// sanitizer build exits non-zero on a leak, a data race or undefined behaviour, and its report is
// searched for in the logs too).
//
// Environment (all optional):
//   SOAK_SECONDS          1800   length of the traffic
//   SOAK_WARMUP_SECONDS   min(120, SOAK_SECONDS / 5)   not judged (pools, caches and arenas fill)
//   SOAK_SAMPLE_SECONDS   5
//   SOAK_CONCURRENCY      6      client workers
//   SOAK_RSS_GROWTH_MB    16 (64 in a sanitizer build)  allowed RSS growth per service
//   SOAK_FD_GROWTH        4 x SOAK_CONCURRENCY   allowed growth of open descriptors per service
//   SOAK_SANITIZER        ''     asan | tsan: the build under test (bounds and log checks)
//   BUILD_DIR             build
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { startStack } from '../../deploy/local/stack.mjs';
import {
    ENV, consistency, fmtCounts, makeUsers, procSample, serviceProcs, traffic, until,
} from './lib.mjs';

const num = (name, def) => (process.env[name] !== undefined && process.env[name] !== '' ? Number(process.env[name]) : def);
const SECONDS = num('SOAK_SECONDS', 1800);
const WARMUP = num('SOAK_WARMUP_SECONDS', Math.min(120, Math.round(SECONDS / 5)));
const SAMPLE = num('SOAK_SAMPLE_SECONDS', 5);
const CONCURRENCY = num('SOAK_CONCURRENCY', 6);
const SANITIZER = process.env.SOAK_SANITIZER || '';
const RSS_GROWTH_KB = num('SOAK_RSS_GROWTH_MB', SANITIZER ? 64 : 16) * 1024;
// Connection pools (nginx to each service, a service to the upstream, to auth and to billing)
// grow to the highest concurrency they have seen, which rises slowly as rare overlaps happen: up
// to about one connection per client per pool, so 4 per client; a leak grows without bound.
const FD_GROWTH = num('SOAK_FD_GROWTH', 4 * CONCURRENCY);
const WINDOW = 6; // samples compared at each end: 30 s at the default pace

// ASan keeps freed memory in a quarantine (256 MiB by default) and its allocator does not give
// memory back, so RSS climbs to the quarantine's size whatever the program does: a small one is
// filled during the warm-up, and what grows afterwards is the program's. Leaks themselves are
// LeakSanitizer's job, at exit (a leak makes the service exit non-zero, checked below).
if (SANITIZER === 'asan') {
    process.env.ASAN_OPTIONS = `${process.env.ASAN_OPTIONS ? `${process.env.ASAN_OPTIONS}:` : ''}quarantine_size_mb=8:thread_local_quarantine_size_kb=256`;
}

const median = (a) => {
    const s = [...a].sort((x, y) => x - y);
    return s.length ? s[Math.floor(s.length / 2)] : NaN;
};
const log = (...a) => console.log(`[soak ${new Date().toISOString().slice(11, 19)}]`, ...a);

async function main() {
    if (!(SECONDS > 0) || WARMUP >= SECONDS) throw new Error('SOAK_SECONDS must be > 0 and longer than SOAK_WARMUP_SECONDS');
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'chatweb-soak-'));
    fs.chmodSync(dir, 0o755);
    log(`${SECONDS} s of traffic (${WARMUP} s warm-up), ${CONCURRENCY} clients, a sample every ${SAMPLE} s; ` +
        `bounds after warm-up: RSS +${RSS_GROWTH_KB / 1024} MiB, descriptors +${FD_GROWTH}${SANITIZER ? ` (${SANITIZER} build)` : ''}`);
    const stack = await startStack({ dir, mysql: true, env: ENV, inheritEnv: false });
    const failures = [];
    let stopped = false;
    try {
        const users = await makeUsers(stack, 'soak', 12, 1000000000);
        const procs = serviceProcs(stack);
        const series = new Map(procs.map((p) => [p.label, []]));
        const t0 = Date.now();
        const load = traffic(stack, users, { concurrency: CONCURRENCY });
        while (Date.now() - t0 < SECONDS * 1000) {
            await new Promise((r) => setTimeout(r, SAMPLE * 1000));
            const t = (Date.now() - t0) / 1000;
            for (const p of procs) {
                const s = procSample(p.pid);
                if (s === null) throw new Error(`${p.label} (pid ${p.pid}) is gone after ${t.toFixed(0)} s`);
                series.get(p.label).push({ t, ...s });
            }
            if (Math.round(t) % 60 < SAMPLE) {
                const n = load.events.length;
                log(`t=${t.toFixed(0)} s, ${n} requests, ` + procs.map((p) => {
                    const last = series.get(p.label).at(-1);
                    return `${p.label} ${(last.rss / 1024).toFixed(1)} MiB/${last.fds} fd`;
                }).join(', '));
            }
        }
        await load.stop();
        const total = load.events.length;
        log(`traffic stopped: ${total} requests in ${SECONDS} s (${(total / SECONDS).toFixed(1)}/s)`);
        console.log(fmtCounts(load.counts));
        const errors = load.events.filter((e) => /^(5\d\d|0|-1)$/.test(e.outcome));
        if (errors.length) failures.push(`${errors.length} request(s) got a 5xx or no answer: ${[...new Set(errors.map((e) => `${e.kind} ${e.outcome}`))].join(', ')}`);

        // The series: judged from the end of the warm-up.
        console.log('\nservice        RSS MiB floor: warm-up end -> end (min..max after warm-up)   descriptors: warm-up end -> end (max)');
        for (const p of procs) {
            const all = series.get(p.label);
            const after = all.filter((s) => s.t >= WARMUP);
            if (after.length < 4) throw new Error(`too few samples after the warm-up (${after.length}): run longer`);
            // A leak raises the floor: compare the lowest RSS of the first and of the last window
            // (a password hash or a burst of streams lifts single samples by several MiB).
            const w = Math.max(2, Math.min(WINDOW, Math.floor(after.length / 2)));
            const base = Math.min(...after.slice(0, w).map((s) => s.rss));
            const end = Math.min(...after.slice(-w).map((s) => s.rss));
            const fdBase = median(after.slice(0, w).map((s) => s.fds));
            const fdEnd = median(after.slice(-w).map((s) => s.fds));
            const fdMax = Math.max(...after.map((s) => s.fds));
            const rssMin = Math.min(...after.map((s) => s.rss));
            const rssMax = Math.max(...after.map((s) => s.rss));
            const mb = (k) => (k / 1024).toFixed(1);
            console.log(`${p.label.padEnd(14)} ${mb(base).padStart(7)} -> ${mb(end).padStart(7)} (${mb(rssMin)}..${mb(rssMax)})` +
                `${''.padStart(12)}${String(fdBase).padStart(4)} -> ${String(fdEnd).padStart(4)} (${fdMax})`);
            if (end - base > RSS_GROWTH_KB) failures.push(`${p.label}: RSS grew ${mb(end - base)} MiB after the warm-up (bound ${mb(RSS_GROWTH_KB)} MiB)`);
            if (fdEnd - fdBase > FD_GROWTH) failures.push(`${p.label}: descriptors grew by ${fdEnd - fdBase} after the warm-up (bound ${FD_GROWTH})`);
        }

        // Money and events, once the relay had the time to publish what is left in the outbox.
        let c = null;
        const waited = await until(60000, async () => {
            c = await consistency(stack, stack.mariadb);
            return c.ok;
        }, 1000);
        console.log(`\nconsistency: ${c.users} accounts, ${c.ledgerRows} ledger rows, ${c.streamEvents} stream events ` +
            `(${c.duplicates} duplicated), ${c.openHolds} open holds, outbox ${c.outbox}` +
            `${waited >= 0 ? ` -> consistent (${waited} ms after traffic stopped)` : ''}`);
        if (!c.ok) failures.push(...c.problems);
    } finally {
        const handles = Object.values(stack.services).flat();
        await stack.stop();
        stopped = true;
        for (const h of handles) {
            const info = h.exitInfo;
            if (info && (info.code !== 0 || info.signal)) failures.push(`${h.label} exited with ${info.signal || `code ${info.code}`} on SIGTERM`);
            const text = fs.existsSync(h.logFile) ? fs.readFileSync(h.logFile, 'utf8') : '';
            const m = /(ERROR: (AddressSanitizer|LeakSanitizer)|WARNING: ThreadSanitizer|runtime error:)[^\n]*/.exec(text);
            if (m) failures.push(`${h.label}: ${m[0]} (see ${h.logFile})`);
        }
        if (failures.length === 0 && stopped) fs.rmSync(dir, { recursive: true, force: true });
        else log(`kept ${dir} (logs under logs/)`);
    }
    if (failures.length) {
        console.log(`\nsoak: FAILED\n  ${failures.join('\n  ')}`);
        process.exit(1);
    }
    console.log('\nsoak: passed');
}

main().catch((e) => {
    console.error(`soak: ${e.stack || e}`);
    process.exit(1);
});
