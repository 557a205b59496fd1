#!/usr/bin/env node
// make faults: dependency faults under load (tests/faults/faults.mjs says what is done and
// checked). Prints what users saw during each fault, the time to recover after it, and whether
// money and events are consistent afterwards; exits 1 when something did not recover, a service
// died, or the ledger, the balances and the event stream disagree.
//
// Environment: FAULT_SECONDS (8) how long each fault lasts, FAULT_SETTLE_SECONDS (3) calm traffic
// between faults, FAULT_CONCURRENCY (4) client workers, FAULTS (all) a comma-separated subset of
// redis, mariadb, upstream-refuse, upstream-stall, upstream-cut, upstream-garbage; BUILD_DIR.
import { ALL_FAULTS, formatReport, runFaults } from './faults.mjs';

const num = (n, d) => (process.env[n] ? Number(process.env[n]) : d);
const faults = process.env.FAULTS ? process.env.FAULTS.split(',') : ALL_FAULTS;
for (const f of faults) {
    if (!ALL_FAULTS.includes(f)) {
        console.error(`faults: unknown fault '${f}' (known: ${ALL_FAULTS.join(', ')})`);
        process.exit(64);
    }
}
const t0 = Date.now();
const log = (m) => console.log(`[faults ${((Date.now() - t0) / 1000).toFixed(1).padStart(6)} s] ${m}`);
runFaults({
    faults, faultSeconds: num('FAULT_SECONDS', 8), settleSeconds: num('FAULT_SETTLE_SECONDS', 3),
    concurrency: num('FAULT_CONCURRENCY', 4), log,
}).then((r) => {
    console.log(`\n${formatReport(r)}`);
    process.exit(r.problems.length ? 1 : 0);
}, (e) => {
    console.error(`faults: ${e.stack || e}`);
    process.exit(1);
});
