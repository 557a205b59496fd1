// bench/lib/streams.mjs: the concurrent-streams benchmark (design brief §3.5 and §4). Run it
// through bench/streams, which sets the descriptor limit first. See bench/README.md.
//
// What it does, in one run on this machine:
//   1. starts redis, the fake upstream (paced: --tps tokens/s, --tokens per reply), auth, billing
//      and ONE replica of the measured service (--service chat or proxy, WORKERS=--workers), all
//      through deploy/local/stack.mjs;
//   2. service run: a warm-up of 20 fast streams, then chatweb-loadgen --hold opens N streams at
//      once (chat: POST /api/chat-process, Basic auth; proxy: POST /v1/chat/completions with
//      stream:true and an API key) and holds them until they end. Meanwhile the service's VmRSS
//      and its streams-open gauge are sampled; VmHWM (reset through /proc/<pid>/clear_refs before
//      the hold) gives the exact peak, utime+stime the CPU;
//   3. stops the service, billing and auth, starts nginx (worker_processes --nginx-workers,
//      proxy_buffering off) in front of the SAME fake upstream and does the same with OpenAI-shaped
//      requests to /v1/chat/completions with stream:true. nginx's figures are those of its workers;
//   4. prints figure | chatweb chat (or proxy) | nginx reference | target, and the fake upstream's
//      own cost.

import { spawnSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';

import {
    defaultBinDir, freePort, spawnServer, startFakeUpstream, startRedis, startService, stopAll,
} from '../../deploy/local/stack.mjs';
import {
    CPU_RESOLUTION_S, allProcCpu, childPids, get, otherProcCpu, groupCpuSeconds, groupStatus, kib, loadAverage, machineBusySeconds,
    loadgenPath, metric, nofileLimits, procStatus, runLoadgen, sampler, sleep, table,
} from './measure.mjs';

const HELP = `usage: bench/streams [options]

  --service S         the chatweb service measured (default chat):
                        chat    POST /api/chat-process on chat, Basic auth
                        proxy   POST /v1/chat/completions (stream:true) on the /v1 proxy
                                (OPENAI_PROXY=true), a Bearer API key, billing leases
  --streams N         streams held at once (default 1000; the target is 10000)
  --tps R             fake upstream pace, tokens per second (default 2)
  --tokens K          tokens per reply (default 20: a stream lasts (K-1)/R s, 9.5 s)
  --workers W         the service's event loops, WORKERS (default 2)
  --nginx-workers W   nginx worker_processes of the reference (default 2)
  --rate R            loadgen: open at most R connections per second (default: all at once)
  --loadgen-threads T loadgen event-loop threads (default 1)
  --upstream U        how the service and nginx reach the fake upstream (default plain):
                        plain   HTTP/1.1, cleartext (the fake's own port)
                        tls     TLS with a private CA, the fake offering h2 (ALPN): the service
                                multiplexes; nginx speaks HTTP/1.1 + TLS (keepalive, session reuse)
                        tls-h1  TLS, the fake offering HTTP/1.1 only (the service's fallback)
                        h2c     cleartext HTTP/2 with prior knowledge for the service
                                (OPENAI_HTTP2=prior-knowledge); nginx HTTP/1.1 to the same port
  --h2-max-streams S  the fake's SETTINGS_MAX_CONCURRENT_STREAMS (default 1000)
  --scale             the scaling check of issue 9: runs this benchmark twice, N = 1,000 (all at
                      once) and N = 10,000 opened over one second (--rate 10000), each with nginx
                      beside the service, then prints CPU per stream and TTFB at both sizes with the
                      targets (10k/1k CPU ratio <= 1.5, TTFB p99 <= 1 s, CPU <= 1.5x nginx,
                      descriptors per stream). --streams and --rate are ignored with it
  --no-nginx          skip the nginx reference
  --no-chat           skip the chatweb service (only the nginx reference)
  --json FILE         also write every figure as JSON to FILE
  --keep              keep the scratch directory (logs, nginx.conf)
  -h, --help

Environment: BUILD_DIR (default build).`;

const { values: opt } = parseArgs({
    options: {
        service: { type: 'string', default: 'chat' },
        streams: { type: 'string', default: '1000' },
        tps: { type: 'string', default: '2' },
        tokens: { type: 'string', default: '20' },
        workers: { type: 'string', default: '2' },
        'nginx-workers': { type: 'string', default: '2' },
        rate: { type: 'string', default: '0' },
        'loadgen-threads': { type: 'string', default: '1' },
        upstream: { type: 'string', default: 'plain' },
        'h2-max-streams': { type: 'string', default: '1000' },
        'no-nginx': { type: 'boolean', default: false },
        scale: { type: 'boolean', default: false },
        'no-chat': { type: 'boolean', default: false },
        json: { type: 'string' },
        keep: { type: 'boolean', default: false },
        help: { type: 'boolean', short: 'h', default: false },
    },
});
if (opt.help) {
    console.log(HELP);
    process.exit(0);
}

function intOpt(name, min, max) {
    const v = Number(opt[name]);
    if (!Number.isInteger(v) || v < min || v > max) {
        console.error(`bench/streams: --${name} must be an integer ${min}..${max}, got ${opt[name]}`);
        process.exit(64);
    }
    return v;
}

const N = intOpt('streams', 1, 100000);
const TOKENS = intOpt('tokens', 2, 100000);
const WORKERS = intOpt('workers', 1, 64);
const NGINX_WORKERS = intOpt('nginx-workers', 1, 16);
const LG_THREADS = intOpt('loadgen-threads', 1, 16);
const TPS = Number(opt.tps);
const UPSTREAM = opt.upstream;
const H2_MAX_STREAMS = intOpt('h2-max-streams', 1, 100000);
if (!['plain', 'tls', 'tls-h1', 'h2c'].includes(UPSTREAM)) {
    console.error(`bench/streams: --upstream must be plain, tls, tls-h1 or h2c, got ${UPSTREAM}`);
    process.exit(64);
}
const SERVICE = opt.service;
if (!['chat', 'proxy'].includes(SERVICE)) {
    console.error(`bench/streams: --service must be chat or proxy, got ${SERVICE}`);
    process.exit(64);
}
const RATE = Number(opt.rate);
if (!(TPS > 0 && TPS <= 1000) || !(RATE >= 0)) {
    console.error('bench/streams: --tps must be in (0, 1000] and --rate >= 0');
    process.exit(64);
}
const STREAM_S = (TOKENS - 1) / TPS;
const WARMUP = 20;
const TIMEOUT_S = Math.ceil(STREAM_S * 2 + 60 + N / 500);
const SAMPLE_MS = 200;
const USER = 'bench';
const PASS = crypto.randomBytes(12).toString('hex');
const OPS_KEY = 'ops-key-for-the-streams-benchmark-0123';

/** What differs between the services --service measures; everything else is shared. */
const SERVICES = {
    chat: {
        gauge: 'chat_streams_open',
        path: '/api/chat-process',
        body: (content) => JSON.stringify({ prompt: content, options: {} }),
        expect: '"finish_reason":"stop"',
        env: {},
        authEnv: () => ({ BASIC_AUTH_USER: USER, BASIC_AUTH_PASSWORD: PASS }),
        // billing only when this chat build has a BILLING_URL option (reserve/settle)
        billing: () => chatOptions().includes('BILLING_URL'),
        credentials: async () => ['--basic', `${USER}:${PASS}`],
    },
    proxy: {
        gauge: 'proxy_streams_open',
        path: '/v1/chat/completions',
        body: (content) => JSON.stringify({ model: 'gpt-4o-mini', stream: true, messages: [{ role: 'user', content }] }),
        expect: 'data: [DONE]',
        env: { OPENAI_PROXY: 'true' },
        // auth's ops API creates the account's balance in billing
        authEnv: (billingUrl) => ({ OPS_KEY, BILLING_URL: billingUrl }),
        billing: () => true,
        // a user whose balance no run exhausts, and an API key without limits
        credentials: async (auth) => {
            const ops = async (body) => {
                const r = await fetch(`${auth.url}/accounts`, { method: 'POST', headers: { opskey: OPS_KEY }, body: JSON.stringify(body) });
                const j = await r.json();
                if (j.status !== 'Success') throw new Error(`ops ${body.action}: ${JSON.stringify(j)}`);
                return j;
            };
            await ops({ action: 'register', i_username: USER, i_password: PASS, count: 1e12 });
            const key = (await ops({ action: 'create_key', i_username: USER, name: 'bench' })).data.key;
            return ['-H', `Authorization: Bearer ${key}`];
        },
    },
};
const SVC = SERVICES[SERVICE];

const log = (s) => process.stderr.write(`[streams] ${s}\n`);

/** Descriptors open in these processes now (sampled: the peak can be missed by up to 200 ms). */
function openFds(pids) {
    let n = 0;
    for (const p of pids) {
        try {
            n += fs.readdirSync(`/proc/${p}/fd`).length;
        } catch { /* gone */ }
    }
    return n;
}

function resetPeak(pid) {
    // Writing 5 to clear_refs resets VmHWM to the current RSS (Linux >= 4.0).
    try {
        fs.writeFileSync(`/proc/${pid}/clear_refs`, '5');
        return true;
    } catch {
        return false;
    }
}

/**
 * One measured run against a server made of `pids()` (re-read at each sample).
 * Returns every figure; sizes in KiB, CPU in seconds.
 */
async function measure({ label, pids, auxPids = [], fakePid, fakeStatsUrl, gauge, warmArgs, holdArgs }) {
    log(`${label}: warm-up (${WARMUP} fast streams)`);
    const warm = await runLoadgen(warmArgs);
    if (warm.report.completed !== WARMUP) {
        throw new Error(`${label}: the warm-up failed: ${JSON.stringify(warm.report.failed)} ` +
            `${JSON.stringify(warm.report.errors)} statuses ${JSON.stringify(warm.report.statuses)}`);
    }
    await sleep(1000);
    const idle = groupStatus(pids());
    const fakeIdle = procStatus(fakePid);
    let hwmExact = true;
    for (const p of [...pids(), fakePid]) hwmExact = resetPeak(p) && hwmExact;
    const cpu0 = groupCpuSeconds(pids());
    const fakeCpu0 = groupCpuSeconds([fakePid]);
    const aux0 = groupCpuSeconds(auxPids);
    const busy0 = machineBusySeconds();
    const self0 = process.cpuUsage();
    const procs0 = allProcCpu();
    const load0 = loadAverage();

    const idleFds = openFds(pids());
    const s = { rssMax: 0, gaugeMax: 0, fakeOpenMax: 0, rssAtGaugeMax: 0, samples: 0, fdMax: 0 };
    const smp = sampler(async () => {
        const st = groupStatus(pids());
        const g = gauge ? await gauge() : NaN;
        let fo = NaN;
        try {
            fo = JSON.parse(await get(fakeStatsUrl, 1000)).open_streams;
        } catch { /* busy: skip this sample */ }
        s.samples++;
        const fds = openFds(pids());
        if (fds > s.fdMax) s.fdMax = fds;
        if (st.rssKiB > s.rssMax) s.rssMax = st.rssKiB;
        if (g > s.gaugeMax) { s.gaugeMax = g; s.rssAtGaugeMax = st.rssKiB; }
        if (fo > s.fakeOpenMax) s.fakeOpenMax = fo;
    }, SAMPLE_MS);

    log(`${label}: holding ${N} streams (each about ${STREAM_S.toFixed(1)} s)`);
    const t0 = Date.now();
    let lastShown = 0;
    const run = await runLoadgen(holdArgs, {
        onProgress: (p) => {
            if (p.t - lastShown >= 5) {
                lastShown = p.t;
                log(`${label}: t=${p.t}s streaming=${p.streaming} completed=${p.completed} failed=${p.failed}`);
            }
        },
    });
    const wall = (Date.now() - t0) / 1000;
    await smp.stop();
    const cpu1 = groupCpuSeconds(pids());
    const fakeCpu1 = groupCpuSeconds([fakePid]);
    const aux1 = groupCpuSeconds(auxPids);
    const busy1 = machineBusySeconds();
    const selfCpu = process.cpuUsage(self0);
    const benchSeconds = (selfCpu.user + selfCpu.system) / 1e6;
    const busy = busy1.tasks - busy0.tasks;
    const others = otherProcCpu(procs0, allProcCpu(), [...pids(), ...auxPids, fakePid, process.pid]);
    const irq = busy1.irq - busy0.irq;
    const peak = groupStatus(pids());
    const fakePeak = procStatus(fakePid);
    await sleep(1000);
    const after = groupStatus(pids());
    const r = run.report;
    const peakKiB = Math.max(peak.hwmKiB, s.rssMax);
    return {
        label, n: N, wallSeconds: wall, report: r, loadgenExit: run.code, hwmExact,
        idleKiB: idle.rssKiB, peakKiB, afterKiB: after.rssKiB, sampledPeakKiB: s.rssMax,
        // divided by the streams that were really open at once (N unless some failed)
        perStreamKiB: (peakKiB - idle.rssKiB) / Math.max(1, r.peak_streaming),
        cpuSeconds: cpu1.precise - cpu0.precise, cpuPerStreamMs: ((cpu1.precise - cpu0.precise) * 1000) / N,
        cpuTickSeconds: cpu1.ticks - cpu0.ticks,
        gaugeMax: s.gaugeMax, rssAtGaugeMaxKiB: s.rssAtGaugeMax, idleFds, fdMax: s.fdMax,
        fdsPerStream: (s.fdMax - idleFds) / Math.max(1, r.peak_streaming), fakeOpenMax: s.fakeOpenMax, samples: s.samples,
        machine: {
            loadAverageBefore: load0, busySeconds: busy + irq, capacitySeconds: wall * os.cpus().length,
            serverSeconds: cpu1.ticks - cpu0.ticks, fakeSeconds: fakeCpu1.ticks - fakeCpu0.ticks,
            auxSeconds: aux1.ticks - aux0.ticks, loadgenSeconds: r.cpu_s || 0, benchSeconds, irqSeconds: irq,
            // interrupt ticks are also charged to the process they interrupted: count them once
            otherSeconds: busy + irq - (cpu1.ticks - cpu0.ticks) - (fakeCpu1.ticks - fakeCpu0.ticks) -
                (aux1.ticks - aux0.ticks) - (r.cpu_s || 0) - benchSeconds,
            others,
        },
        fake: {
            idleKiB: fakeIdle.rssKiB, peakKiB: Math.max(fakePeak.hwmKiB, fakePeak.rssKiB),
            perStreamKiB: (Math.max(fakePeak.hwmKiB, fakePeak.rssKiB) - fakeIdle.rssKiB) / Math.max(1, r.peak_streaming),
            cpuSeconds: fakeCpu1.precise - fakeCpu0.precise,
            cpuPerStreamMs: ((fakeCpu1.precise - fakeCpu0.precise) * 1000) / N,
        },
    };
}

function nginxConf({ dir, port, upstream, workers, nofile, token, tls }) {
    const ssl = tls ? `
            proxy_ssl_trusted_certificate "${tls.ca}";
            proxy_ssl_verify on;
            proxy_ssl_name localhost;
            proxy_ssl_server_name on;
            proxy_ssl_session_reuse on;` : '';
    return `# bench/streams: the nginx reference, a plain streaming reverse proxy.
${process.getuid && process.getuid() === 0 ? 'user root;' : ''}
worker_processes ${workers};
worker_rlimit_nofile ${nofile};
daemon off;
pid "${dir}/nginx.pid";
error_log "${dir}/error.log" warn;
events {
    worker_connections ${Math.max(1024, nofile - 64)};
}
http {
    access_log "${dir}/access.log";
    client_body_temp_path "${dir}/tmp/body";
    proxy_temp_path "${dir}/tmp/proxy";
    fastcgi_temp_path "${dir}/tmp/fastcgi";
    uwsgi_temp_path "${dir}/tmp/uwsgi";
    scgi_temp_path "${dir}/tmp/scgi";
    keepalive_timeout 65s;
    upstream fake {
        server ${upstream};
        keepalive 64;
    }
    server {
        # reuseport: the kernel spreads connections evenly over the workers
        listen 127.0.0.1:${port} reuseport;
        location = /_ready { access_log off; return 200 "${token}"; }
        location /v1/ {
            proxy_pass ${tls ? 'https' : 'http'}://fake;${ssl}
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_request_buffering off;
            proxy_read_timeout 1h;
        }
    }
}
`;
}

async function startNginxReference(dir, upstreamAddr, nofile, tls) {
    const ndir = path.join(dir, 'nginx-ref');
    fs.mkdirSync(path.join(ndir, 'tmp'), { recursive: true });
    fs.chmodSync(ndir, 0o755);
    const port = await freePort();
    const token = crypto.randomBytes(8).toString('hex');
    const confPath = path.join(ndir, 'nginx.conf');
    fs.writeFileSync(confPath, nginxConf({ dir: ndir, port, upstream: upstreamAddr, workers: NGINX_WORKERS, nofile, token, tls }));
    const h = spawnServer({
        label: 'nginx-ref', cmd: 'nginx', args: ['-p', `${ndir}/`, '-e', path.join(ndir, 'error.log'), '-c', confPath],
        logFile: path.join(ndir, 'error.log'), graceMs: 5000,
    });
    const url = `http://127.0.0.1:${port}`;
    for (let i = 0; ; i++) {
        if (h.exitInfo) throw new Error(`nginx-ref exited: ${fs.readFileSync(path.join(ndir, 'error.log'), 'utf8').slice(-2000)}`);
        try {
            if ((await get(`${url}/_ready`, 500)) === token) break;
        } catch { /* not yet */ }
        if (i > 100) throw new Error('nginx-ref: not ready after 10 s');
        await sleep(100);
    }
    let workers = [];
    for (let i = 0; i < 50 && workers.length < NGINX_WORKERS; i++) {
        workers = childPids(h.pid);
        await sleep(50);
    }
    return { h, url, workers, confPath };
}

/** A private CA and a certificate for 127.0.0.1 / localhost signed by it (openssl CLI). */
function makeCerts(dir) {
    const run = (args) => {
        const r = spawnSync('openssl', args, { cwd: dir, encoding: 'utf8' });
        if (r.status !== 0) throw new Error(`openssl ${args.join(' ')}: ${r.stderr}`);
    };
    const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];
    run(['req', '-x509', ...ec, '-keyout', 'ca.key', '-out', 'ca.pem', '-subj', '/CN=bench CA', '-days', '2']);
    run(['req', ...ec, '-keyout', 'server.key', '-out', 'server.csr', '-subj', '/CN=localhost']);
    fs.writeFileSync(path.join(dir, 'san.ext'), 'subjectAltName=IP:127.0.0.1,DNS:localhost\n');
    run(['x509', '-req', '-in', 'server.csr', '-CA', 'ca.pem', '-CAkey', 'ca.key', '-CAcreateserial',
        '-out', 'server.pem', '-days', '2', '-extfile', 'san.ext']);
    return { ca: path.join(dir, 'ca.pem'), cert: path.join(dir, 'server.pem'), key: path.join(dir, 'server.key') };
}

/** The fake front's counters (connections, HTTP/2 streams), or null without a front. */
async function frontStats(url) {
    return JSON.parse(await get(url, 2000)).front;
}

function frontDelta(a, b) {
    // h2_max_streams_per_connection is a high-water mark since the fake started (chat runs first)
    return a && b ? Object.fromEntries(Object.keys(b).map((k) => [k, k === 'h2_max_streams_per_connection' ? b[k] : b[k] - a[k]]))
        : null;
}

/** The option names printed by chatweb-chat --describe-config. */
function chatOptions() {
    const r = spawnSync(path.join(defaultBinDir(), 'chatweb-chat'), ['--describe-config'], { encoding: 'utf8' });
    return `${r.stdout || ''}${r.stderr || ''}`;
}

function ms(v) {
    return `${v.toFixed(1)} ms`;
}

function fmtLat(r, key) {
    const l = r.report.latency_ms[key];
    return l.count ? `${ms(l.p50)} / ${ms(l.p99)} / ${ms(l.max)}` : '-';
}

function failures(r) {
    const f = r.report.failed;
    if (!f.total) return '0';
    return `${f.total} (${Object.entries(f).filter(([k, v]) => k !== 'total' && v).map(([k, v]) => `${k} ${v}`).join(', ')})`;
}

function ratio(a, b) {
    return b > 0 ? ` (${(a / b).toFixed(1)}x nginx)` : '';
}

async function main() {
    loadgenPath(); // fails early, with the path, when the build lacks chatweb-loadgen
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'chatweb-bench-streams-'));
    const limits = nofileLimits();
    const needSvc = 2 * N + 200;
    log(`scratch directory ${dir}`);
    console.log(`bench/streams: ${N} concurrent streams, upstream ${UPSTREAM}, fake upstream at ${TPS} tokens/s x ${TOKENS} tokens ` +
        `(${STREAM_S.toFixed(1)} s per stream); ${SERVICE} WORKERS=${WORKERS}; nginx worker_processes ${NGINX_WORKERS}`);
    console.log(`machine: ${os.cpus().length} CPU(s), ${(os.totalmem() / 2 ** 30).toFixed(1)} GiB, Linux ${os.release()}, ` +
        `RLIMIT_NOFILE ${limits.soft}/${limits.hard}, load average ${loadAverage()}`);
    if (!opt['no-chat'] && limits.soft < needSvc) {
        console.log(`WARNING: ${SERVICE} needs about ${needSvc} descriptors for ${N} streams (a client and an upstream socket ` +
            `each), but RLIMIT_NOFILE is ${limits.soft} (hard ${limits.hard}). Expect failures above about ` +
            `${Math.floor((limits.soft - 200) / 2)} streams; they measure this machine's limit, not ${SERVICE}.`);
    }

    const results = { config: { service: SERVICE, n: N, tps: TPS, tokens: TOKENS, workers: WORKERS, nginxWorkers: NGINX_WORKERS, nofile: limits } };
    const redis = await startRedis({ dir: path.join(dir, 'redis') });
    const fakeEnv = { FAKE_TOKENS_PER_SEC: String(TPS), FAKE_REPLY_TOKENS: String(TOKENS) };
    const certs = UPSTREAM.startsWith('tls') ? makeCerts(dir) : null;
    if (UPSTREAM !== 'plain') {
        Object.assign(fakeEnv, { FAKE_FRONT_LISTEN: '127.0.0.1:0', FAKE_H2: UPSTREAM === 'tls-h1' ? '0' : '1',
            FAKE_H2_MAX_STREAMS: String(H2_MAX_STREAMS) });
        if (certs) Object.assign(fakeEnv, { FAKE_TLS_CERT: certs.cert, FAKE_TLS_KEY: certs.key });
    }
    const fake = await startFakeUpstream({ dir, env: fakeEnv });
    const fakeStats = `${fake.url}/_fake/stats`;
    // where the service and nginx send their requests: the plain port, or the TLS/h2c front
    const upBase = UPSTREAM === 'plain' ? fake.url : fake.frontUrl;
    const upAddr = new URL(upBase).host;
    results.config.upstream = UPSTREAM;
    log(`redis ${redis.url}, fake upstream ${fake.url} (pid ${fake.pid}), upstream for the runs ${upBase}`);

    const common = ['--timeout', String(TIMEOUT_S), '--threads', String(LG_THREADS), ...(RATE > 0 ? ['--rate', String(RATE)] : [])];

    // ---- chat or proxy ----
    if (!opt['no-chat']) {
        const billingUrl = SVC.billing() ? `http://127.0.0.1:${await freePort()}` : null;
        const auth = await startService('auth', { dir, env: { REDIS_URL: redis.url, LOG_LEVEL: 'warn', ...SVC.authEnv(billingUrl) } });
        let billing = null;
        const env = {
            REDIS_URL: redis.url, AUTH_URL: auth.url, OPENAI_BASE_URL: `${upBase}/v1`, OPENAI_KEY: 'sk-bench',
            WORKERS: String(WORKERS), ...SVC.env,
        };
        if (certs) env.OPENAI_CA_FILE = certs.ca;
        if (UPSTREAM === 'h2c') env.OPENAI_HTTP2 = 'prior-knowledge';
        if (billingUrl) {
            billing = await startService('billing', {
                dir, httpAddr: new URL(billingUrl).host, env: { REDIS_URL: redis.url, AUTH_URL: auth.url, LOG_LEVEL: 'warn' },
            });
            env.BILLING_URL = billingUrl;
            log(`billing ${billing.url}`);
        }
        const svc = await startService(SERVICE, { dir, env });
        log(`auth ${auth.url}, ${SERVICE} ${svc.url} (pid ${svc.pid}, admin ${svc.adminUrl})`);
        const coldKiB = procStatus(svc.pid).rssKiB;
        const creds = await SVC.credentials(auth);
        const url = `${svc.url}${SVC.path}`;
        const f0 = await frontStats(fakeStats);
        const r = await measure({
            label: SERVICE,
            pids: () => [svc.pid],
            auxPids: [auth.pid, redis.pid, ...(billing ? [billing.pid] : [])],
            fakePid: fake.pid,
            fakeStatsUrl: fakeStats,
            gauge: () => metric(`${svc.adminUrl}/metrics`, SVC.gauge),
            warmArgs: ['-c', String(WARMUP), '--hold', ...creds, '-d', SVC.body('bench warm-up [[fake tps=0]]'),
                '--expect', SVC.expect, url],
            holdArgs: ['-c', String(N), '--hold', ...creds, '-d', SVC.body('bench stream'),
                '--expect', SVC.expect, ...common, url],
        });
        r.front = frontDelta(f0, await frontStats(fakeStats));
        r.coldKiB = coldKiB;
        r.threads = procStatus(svc.pid).threads;
        r.logBytes = fs.statSync(svc.logFile).size;
        results[SERVICE] = r;
        await svc.stop();
        if (billing) await billing.stop();
        await auth.stop();
    }

    // ---- nginx ----
    if (!opt['no-nginx']) {
        const ng = await startNginxReference(dir, upAddr, limits.soft === Infinity ? 65536 : limits.soft, certs);
        const f0 = await frontStats(fakeStats);
        log(`nginx reference ${ng.url} (master ${ng.h.pid}, workers ${ng.workers.join(' ')})`);
        const oaBody = (content) => JSON.stringify({
            model: 'gpt-3.5-turbo', messages: [{ role: 'user', content }], stream: true,
            stream_options: { include_usage: true },
        });
        const nurl = `${ng.url}/v1/chat/completions`;
        results.nginx = await measure({
            label: 'nginx',
            pids: () => ng.workers,
            fakePid: fake.pid,
            fakeStatsUrl: fakeStats,
            gauge: null,
            warmArgs: ['-c', String(WARMUP), '--hold', '-H', 'Authorization: Bearer sk-bench', '-d', oaBody('bench warm-up [[fake tps=0]]'),
                '--expect', 'data: [DONE]', nurl],
            holdArgs: ['-c', String(N), '--hold', '-H', 'Authorization: Bearer sk-bench', '-d', oaBody('bench stream'),
                '--expect', 'data: [DONE]', ...common, nurl],
        });
        results.nginx.front = frontDelta(f0, await frontStats(fakeStats));
        results.nginx.workers = ng.workers.length;
        await ng.h.stop();
    }
    await stopAll();

    // ---- report ----
    const c = results[SERVICE];
    const x = results.nginx;
    const both = (f, g = f) => [c ? f(c) : 'skipped', x ? g(x) : 'skipped'];
    const vsNginx = (v) => (c && x ? ratio(v(c), v(x)) : '');
    const rows = [
        ['figure', `chatweb ${SERVICE}`, `nginx reference (${NGINX_WORKERS} workers)`, 'target'],
        ['streams completed correctly', ...both((r) => `${r.report.completed} / ${N}`), `${N} / ${N}`],
        ['failures', ...both(failures), '0'],
        ['peak streams open at once (loadgen)', ...both((r) => `${r.report.peak_streaming}`), `${N}`],
        ['peak upstream streams open (fake)', ...both((r) => `${r.fakeOpenMax}`), `${N}`],
        [`peak ${SVC.gauge}`, ...both((r) => `${r.gaugeMax}`, () => '-'), `${N}`],
        ['RSS idle (after warm-up)', ...both((r) => kib(r.idleKiB)), '<= 64 MiB'],
        ['RSS peak (VmHWM)', ...both((r) => kib(r.peakKiB)), '-'],
        ['RSS per open stream', ...both((r) => `${kib(r.perStreamKiB)}${vsNginx((q) => q.perStreamKiB)}`, (r) => kib(r.perStreamKiB)),
            '<= 16 KiB'],
        ['RSS 1 s after the streams ended', ...both((r) => kib(r.afterKiB)), '-'],
        ['CPU per stream (user+sys)', ...both((r) => `${r.cpuPerStreamMs.toFixed(3)} ms${vsNginx((q) => q.cpuPerStreamMs)}`,
            (r) => `${r.cpuPerStreamMs.toFixed(3)} ms`), '-'],
        ['CPU during the hold', ...both((r) => `${r.cpuSeconds.toFixed(3)} s`), '-'],
        ['TTFB p50 / p99 / max', ...both((r) => fmtLat(r, 'ttfb')), '-'],
        ['stream time p50 / p99 / max', ...both((r) => fmtLat(r, 'total')), `~${(STREAM_S * 1000).toFixed(0)} ms`],
        ['connect p50 / p99 / max', ...both((r) => fmtLat(r, 'connect')), '-'],
        ['descriptors: peak (per open stream)', ...both((r) => `${r.fdMax} (${r.fdsPerStream.toFixed(2)})`),
            `10,000 streams under 20,000`],
    ];
    if (UPSTREAM !== 'plain') {
        const fr = (r) => r.front || {};
        rows.push(['upstream connections (fake front)', ...both((r) => `${fr(r).connections}`), UPSTREAM === 'tls' ? 'few (shared)' : '-']);
        rows.push(['upstream HTTP/2 connections / streams', ...both((r) => `${fr(r).h2_connections} / ${fr(r).h2_streams}`), '-']);
        rows.push(['most streams on one connection', ...both((r) => `${fr(r).h2_max_streams_per_connection}`, () => '-'), '-']);
        rows.push(['TLS handshakes (resumed)', ...both((r) => `${fr(r).tls_handshakes} (${fr(r).tls_resumed})`), '-']);
    }
    const runs = [c, x].filter(Boolean);
    console.log('');
    console.log(table(rows));
    console.log('');
    if (c) console.log(`${SERVICE}: RSS ${kib(c.coldKiB)} right after start, ${c.threads} threads; idle is measured 1 s after a warm-up of ${WARMUP} streams.`);
    console.log(`fake upstream (context; the same process serves both runs, RSS ${kib(runs[0].fake.idleKiB)} idle): ` +
        runs.map((r) => `${r.label} run ${kib(r.fake.perStreamKiB)} and ${r.fake.cpuPerStreamMs.toFixed(3)} ms CPU per stream`).join('; ') + '.');
    console.log(`CPU is the time on CPU of the live threads (/proc/<pid>/task/*/schedstat); the tick count of ` +
        `/proc/<pid>/stat (${(CPU_RESOLUTION_S * 1000).toFixed(0)} ms ticks, exited threads included) reads: ` +
        `${runs.map((r) => `${r.label} ${r.cpuTickSeconds.toFixed(2)} s`).join(', ')}. ` +
        `RSS per open stream = (VmHWM during the hold - idle RSS) / streams open at once (loadgen peak: ` +
        `${runs.map((r) => `${r.label} ${r.report.peak_streaming}`).join(', ')}); CPU per stream = CPU during the hold / ${N} requests.` +
        `${runs.every((r) => r.hwmExact) ? '' : ' (VmHWM could not be reset through clear_refs: the peak may include earlier activity.)'}`);
    for (const r of runs) {
        const m = r.machine;
        const cpus = os.cpus().length;
        console.log(`machine during the ${r.label} hold (${r.wallSeconds.toFixed(1)} s, load average ${m.loadAverageBefore} before): ` +
            `${((100 * m.busySeconds) / m.capacitySeconds).toFixed(0)}% of ${cpus} CPUs busy = ${m.serverSeconds.toFixed(2)} s ${r.label}` +
            ` + ${m.fakeSeconds.toFixed(2)} s fake + ${m.auxSeconds.toFixed(2)} s ${r.label === 'nginx' ? 'nginx master/redis' : 'auth/billing/redis'}` +
            ` + ${m.loadgenSeconds.toFixed(2)} s loadgen + ${m.benchSeconds.toFixed(2)} s this script` +
            ` + ${Math.max(0, m.otherSeconds).toFixed(2)} s other work` +
            ` (seen: ${m.others.top.map((o) => `${o.comm} ${o.seconds.toFixed(2)} s`).join(', ') || 'none'}` +
            `${m.otherSeconds - m.others.seconds > 0.5 ? `; ${(m.otherSeconds - m.others.seconds).toFixed(2)} s unattributed: processes that exited, kernel` : ''})` +
            `${m.others.userSeconds > 0.05 * m.capacitySeconds ? '  <-- NOISY: other programs were busy on the machine' : ''}`);
    }
    const errs = runs.flatMap((r) => Object.entries(r.report.errors || {}).map(([k, v]) => `${r.label} first ${k} failure: ${v}`));
    for (const e of errs) console.log(e);

    if (c) {
        const verdict = [
            ['all streams completed', c.report.completed === N],
            ['RSS idle <= 64 MiB', c.idleKiB <= 64 * 1024],
            ['RSS per open stream <= 16 KiB', c.perStreamKiB <= 16],
        ];
        console.log(`${SERVICE} vs targets: ${verdict.map(([k, ok]) => `${k}: ${ok ? 'yes' : 'NO'}`).join('; ')}`);
    }
    if (opt.json) fs.writeFileSync(opt.json, JSON.stringify(results, null, 2) + '\n');
    if (!opt.keep) fs.rmSync(dir, { recursive: true, force: true });
    else log(`kept ${dir}`);
}

/** --scale: N = 1,000 at once, then N = 10,000 over one second, and the scaling figures. */
async function scaleMain() {
    const self = new URL(import.meta.url).pathname;
    const pass = process.argv.slice(2).filter((a, i, all) => a !== '--scale' &&
        !['--streams', '--rate', '--json'].includes(a) && !['--streams', '--rate', '--json'].includes(all[i - 1]));
    const runs = {};
    for (const [key, args] of [['k1', ['--streams', '1000']], ['k10', ['--streams', '10000', '--rate', '10000']]]) {
        const json = path.join(os.tmpdir(), `chatweb-bench-streams-scale-${process.pid}-${key}.json`);
        const r = spawnSync(process.execPath, [self, ...pass, ...args, '--json', json], { stdio: ['ignore', 'inherit', 'inherit'] });
        if (r.status !== 0) throw new Error(`the ${args.join(' ')} run failed (exit ${r.status})`);
        runs[key] = JSON.parse(fs.readFileSync(json, 'utf8'));
        fs.rmSync(json, { force: true });
    }
    const { k1, k10 } = runs;
    const who = [SERVICE, 'nginx'].filter((w) => k1[w] && k10[w]);
    const cpu = (r) => r.cpuPerStreamMs;
    const p99 = (r) => r.report.latency_ms.ttfb.p99;
    const yes = (ok) => (ok ? 'met' : 'NOT met');
    const rows = [['figure', ...who.map((w) => (w === 'nginx' ? 'nginx reference' : `chatweb ${w}`)), 'target']];
    rows.push(['completed, 1,000 / 10,000', ...who.map((w) => `${k1[w].report.completed} / ${k10[w].report.completed}`), '1000 / 10000']);
    rows.push(['CPU per stream at 1,000', ...who.map((w) => `${cpu(k1[w]).toFixed(3)} ms`), '-']);
    rows.push(['CPU per stream at 10,000', ...who.map((w) => `${cpu(k10[w]).toFixed(3)} ms`), '-']);
    rows.push(['CPU per stream, 10,000 / 1,000', ...who.map((w) => `${(cpu(k10[w]) / cpu(k1[w])).toFixed(2)}`), '<= 1.5']);
    rows.push(['TTFB p50 / p99 at 1,000 (all at once)', ...who.map((w) => fmtLat(k1[w], 'ttfb').split(' / ').slice(0, 2).join(' / ')), '-']);
    rows.push(['TTFB p50 / p99 at 10,000 (over 1 s)', ...who.map((w) => fmtLat(k10[w], 'ttfb').split(' / ').slice(0, 2).join(' / ')), 'p99 <= 1000 ms']);
    // streams that fit under 20,000 descriptors at the measured cost per stream (chatweb: one
    // process; nginx: the sum over its workers, each of which has its own limit)
    const fit = (r) => Math.floor((20000 - r.idleFds) / Math.max(0.01, r.fdsPerStream));
    rows.push(['descriptors per open stream at 10,000', ...who.map((w) => `${k10[w].fdsPerStream.toFixed(2)} (peak ${k10[w].fdMax}; ` +
        `${fit(k10[w])} fit in 20,000)`), '10,000 fit in 20,000']);
    if (k10[SERVICE] && k10.nginx) rows.push([`${SERVICE} CPU per stream / nginx, 1,000 and 10,000`,
        `${(cpu(k1[SERVICE]) / cpu(k1.nginx)).toFixed(2)}x and ${(cpu(k10[SERVICE]) / cpu(k10.nginx)).toFixed(2)}x`, '-', '<= 1.5x']);
    console.log('');
    console.log('scaling (issue 9): one replica, the same machine and fake upstream for every run');
    console.log(table(rows));
    if (k1[SERVICE] && k10[SERVICE]) {
        const c1 = k1[SERVICE], c10 = k10[SERVICE];
        console.log(`${SERVICE} vs scaling targets: CPU ratio 10k/1k <= 1.5: ${yes(cpu(c10) / cpu(c1) <= 1.5)}; ` +
            `TTFB p99 <= 1 s at 10,000 over 1 s: ${yes(p99(c10) <= 1000)}; all 10,000 completed: ${yes(c10.report.completed === 10000)}` +
            `${k10.nginx ? `; CPU per stream <= 1.5x nginx at 10,000: ${yes(cpu(c10) <= 1.5 * cpu(k10.nginx))}` : ''}`);
    }
    if (opt.json) fs.writeFileSync(opt.json, JSON.stringify(runs, null, 2) + '\n');
}

(opt.scale ? scaleMain() : main()).catch(async (err) => {
    console.error(`bench/streams: ${err.stack || err.message}`);
    await stopAll();
    process.exit(1);
});
