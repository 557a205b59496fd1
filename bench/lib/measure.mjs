// bench/lib/measure.mjs: what the benchmarks in bench/ share. Node built-ins only.
//
//   procStatus(pid)        VmRSS / VmHWM (KiB) and thread count from /proc/<pid>/status
//   procCpuSeconds(pid)    utime + stime of every thread, live or exited (/proc/<pid>/stat)
//   childPids(pid)         direct children (nginx workers of a master)
//   nofileLimits()         this process's RLIMIT_NOFILE {soft, hard}
//   metric(url, name)      one value from a Prometheus /metrics page
//   runLoadgen(args, opts) run build/bin/chatweb-loadgen --json; resolves its report
//   sampler(fn, everyMs)   call fn periodically until stopped
//   table(rows)            a plain-text table with aligned columns
//
// Every figure is read from /proc by the benchmark itself, so it measures any process the same
// way (chat, nginx workers, the fake upstream).

import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import path from 'node:path';

import { defaultBinDir } from '../../deploy/local/stack.mjs';

const CLK_TCK = (() => {
    const r = spawnSync('getconf', ['CLK_TCK'], { encoding: 'utf8' });
    const n = Number((r.stdout || '').trim());
    return Number.isFinite(n) && n > 0 ? n : 100;
})();

/** {rssKiB, hwmKiB, threads} of a live process, or null when it is gone. */
export function procStatus(pid) {
    let text;
    try {
        text = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
    } catch {
        return null;
    }
    const num = (key) => {
        const m = new RegExp(`^${key}:\\s+(\\d+)`, 'm').exec(text);
        return m ? Number(m[1]) : 0;
    };
    return { rssKiB: num('VmRSS'), hwmKiB: num('VmHWM'), threads: num('Threads') };
}

/**
 * CPU seconds used so far by the live threads of pid, in nanoseconds of resolution: the sum of
 * the first field of /proc/<pid>/task/<tid>/schedstat (time on CPU, user and system). Threads that
 * have exited are not counted; see procCpuSeconds for the tick-based total that includes them.
 * null when the process is gone or schedstat is missing.
 */
export function procCpuPreciseSeconds(pid) {
    let ns = 0;
    try {
        for (const tid of fs.readdirSync(`/proc/${pid}/task`)) {
            try {
                ns += Number(fs.readFileSync(`/proc/${pid}/task/${tid}/schedstat`, 'utf8').split(' ')[0]);
            } catch { /* the thread exited meanwhile */ }
        }
    } catch {
        return null;
    }
    return ns / 1e9;
}

/** CPU seconds (user + system) used so far by every thread of pid, live or exited, in clock
 *  ticks (CPU_RESOLUTION_S); null when it is gone. */
export function procCpuSeconds(pid) {
    let text;
    try {
        text = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    } catch {
        return null;
    }
    // The command name (field 2) is in parentheses and may contain spaces: split after it.
    const rest = text.slice(text.lastIndexOf(')') + 2).split(' ');
    // rest[0] is field 3 (state); utime and stime are fields 14 and 15.
    return (Number(rest[11]) + Number(rest[12])) / CLK_TCK;
}

/** The clock-tick resolution of procCpuSeconds, in seconds. */
export const CPU_RESOLUTION_S = 1 / CLK_TCK;

/** Pids whose parent is pid. */
export function childPids(pid) {
    const out = [];
    for (const d of fs.readdirSync('/proc')) {
        if (!/^\d+$/.test(d)) continue;
        try {
            const t = fs.readFileSync(`/proc/${d}/stat`, 'utf8');
            const ppid = Number(t.slice(t.lastIndexOf(')') + 2).split(' ')[1]);
            if (ppid === pid) out.push(Number(d));
        } catch { /* gone meanwhile */ }
    }
    return out;
}

/** Map pid -> {comm, seconds} of every process now (tick-based CPU, exited threads included). */
export function allProcCpu() {
    const out = new Map();
    for (const d of fs.readdirSync('/proc')) {
        if (!/^\d+$/.test(d)) continue;
        try {
            const t = fs.readFileSync(`/proc/${d}/stat`, 'utf8');
            const rest = t.slice(t.lastIndexOf(')') + 2).split(' ');
            out.set(Number(d), { comm: t.slice(t.indexOf('(') + 1, t.lastIndexOf(')')), seconds: (Number(rest[11]) + Number(rest[12])) / CLK_TCK });
        } catch { /* gone meanwhile */ }
    }
    return out;
}

/**
 * CPU used between two allProcCpu() snapshots by processes not in `exclude` (pids), as
 * {seconds, userSeconds (without kernel threads), top: [{comm, pid, seconds}] (the three
 * biggest)}. Processes that exited in between are not seen.
 */
export function otherProcCpu(before, after, exclude) {
    const ex = new Set(exclude);
    const list = [];
    for (const [pid, a] of after) {
        if (ex.has(pid)) continue;
        const b = before.get(pid);
        const d = a.seconds - (b && b.comm === a.comm ? b.seconds : 0);
        if (d > 0) list.push({ pid, comm: a.comm, seconds: d });
    }
    list.sort((x, y) => y.seconds - x.seconds);
    const kernel = /^(kworker|ksoftirqd|rcu_|migration|kdamond|kswapd|kcompactd)/;
    return {
        seconds: list.reduce((n, x) => n + x.seconds, 0),
        userSeconds: list.filter((x) => !kernel.test(x.comm)).reduce((n, x) => n + x.seconds, 0),
        top: list.slice(0, 3),
    };
}

/** Sum of procStatus / procCpuSeconds over several pids. */
export function groupStatus(pids) {
    const s = { rssKiB: 0, hwmKiB: 0, threads: 0 };
    for (const p of pids) {
        const x = procStatus(p);
        if (x) for (const k of Object.keys(s)) s[k] += x[k];
    }
    return s;
}

/** {precise, ticks}: CPU seconds of several pids, by schedstat and by /proc/<pid>/stat. */
export function groupCpuSeconds(pids) {
    let precise = 0;
    let ticks = 0;
    for (const p of pids) {
        precise += procCpuPreciseSeconds(p) || 0;
        ticks += procCpuSeconds(p) || 0;
    }
    return { precise, ticks };
}

/**
 * CPU seconds the whole machine has spent busy so far, from the first line of /proc/stat:
 * {tasks: user + nice + system + steal (time that processes are charged for), irq: hardware and
 * software interrupts (loopback TCP is largely softirq work, charged to no process)}.
 */
export function machineBusySeconds() {
    const f = fs.readFileSync('/proc/stat', 'utf8').split('\n')[0].trim().split(/\s+/).slice(1).map(Number);
    // user nice system idle iowait irq softirq steal (guest time is already in user)
    return { tasks: (f[0] + f[1] + f[2] + (f[7] || 0)) / CLK_TCK, irq: (f[5] + f[6]) / CLK_TCK };
}

/** The 1-minute load average. */
export function loadAverage() {
    return Number(fs.readFileSync('/proc/loadavg', 'utf8').split(' ')[0]);
}

/** RLIMIT_NOFILE of this process (children inherit it). */
export function nofileLimits() {
    const m = /^Max open files\s+(\S+)\s+(\S+)/m.exec(fs.readFileSync('/proc/self/limits', 'utf8'));
    const v = (x) => (x === 'unlimited' ? Infinity : Number(x));
    return m ? { soft: v(m[1]), hard: v(m[2]) } : { soft: Infinity, hard: Infinity };
}

/** GET url; resolves the body (rejects on errors or a status other than 200). */
export function get(url, timeoutMs = 2000) {
    return new Promise((resolve, reject) => {
        const req = http.get(url, { timeout: timeoutMs, agent: false }, (res) => {
            let body = '';
            res.setEncoding('utf8');
            res.on('data', (d) => { body += d; });
            res.on('end', () => (res.statusCode === 200 ? resolve(body) : reject(new Error(`${url}: ${res.statusCode}`))));
        });
        req.on('timeout', () => req.destroy(new Error(`${url}: timed out`)));
        req.on('error', reject);
    });
}

/** The value of an unlabelled metric on a Prometheus text page (NaN when absent or unreachable). */
export async function metric(url, name) {
    try {
        const body = await get(url, 1000);
        const m = new RegExp(`^${name}(?:\\{[^}]*\\})?\\s+(\\S+)`, 'm').exec(body);
        return m ? Number(m[1]) : NaN;
    } catch {
        return NaN;
    }
}

export function sleep(ms) {
    return new Promise((r) => setTimeout(r, ms));
}

/** Calls fn() every everyMs until stop() is called; stop() resolves once the last call is over. */
export function sampler(fn, everyMs) {
    let running = true;
    const done = (async () => {
        while (running) {
            await fn();
            await sleep(everyMs);
        }
    })();
    return { stop: async () => { running = false; await done; } };
}

/** Path of the loadgen binary (BUILD_DIR/bin/chatweb-loadgen). */
export function loadgenPath(binDir = defaultBinDir()) {
    const p = path.join(binDir, 'chatweb-loadgen');
    if (!fs.existsSync(p)) throw new Error(`${p} not found: build first (make build)`);
    return p;
}

/**
 * Runs chatweb-loadgen with args (plus --json --progress). onProgress receives each progress
 * line parsed into {t, inflight, streaming, completed, failed}. Resolves {report, code, stderr}.
 */
export function runLoadgen(args, { binDir, onProgress } = {}) {
    return new Promise((resolve, reject) => {
        const child = spawn(loadgenPath(binDir), [...args, '--json', '--progress'], { stdio: ['ignore', 'pipe', 'pipe'] });
        let out = '';
        let err = '';
        let partial = '';
        child.stdout.setEncoding('utf8');
        child.stderr.setEncoding('utf8');
        child.stdout.on('data', (d) => { out += d; });
        child.stderr.on('data', (d) => {
            const lines = (partial + d).split('\n');
            partial = lines.pop();
            for (const l of lines) {
                const m = /^progress (.*)$/.exec(l);
                if (!m) {
                    err += l + '\n';
                    continue;
                }
                if (onProgress) {
                    const o = {};
                    for (const kv of m[1].split(' ')) {
                        const [k, v] = kv.split('=');
                        o[k] = Number(v);
                    }
                    onProgress(o);
                }
            }
        });
        child.on('error', reject);
        child.on('close', (code) => {
            try {
                resolve({ report: JSON.parse(out), code, stderr: err });
            } catch {
                reject(new Error(`chatweb-loadgen exited with ${code} without a report:\n${err}`));
            }
        });
    });
}

/** Formats rows (arrays of strings) as a table; the first row is the header. */
export function table(rows) {
    const widths = rows[0].map((_, i) => Math.max(...rows.map((r) => String(r[i] ?? '').length)));
    const line = (r) => r.map((c, i) => String(c ?? '').padEnd(widths[i])).join(' | ').trimEnd();
    return [line(rows[0]), widths.map((w) => '-'.repeat(w)).join('-|-'), ...rows.slice(1).map(line)].join('\n');
}

/** A size given in KiB, printed in KiB or MiB. */
export function kib(v) {
    return Math.abs(v) >= 1024 ? `${(v / 1024).toFixed(1)} MiB` : `${v.toFixed(1)} KiB`;
}
