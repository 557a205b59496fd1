// Dependency faults under load, the short version of `make faults` (tests/faults/faults.mjs):
// Redis and MariaDB stopped and started again, the upstream refusing, stalling, cutting and
// answering garbage, two seconds each, under mixed chat + ops traffic. Every fault must be
// recovered from, no service may die, and afterwards the ledger sums to each balance and every
// ledger row is in the billing event stream. The report is printed as diagnostics.
import assert from 'node:assert/strict';
import { it } from 'node:test';
import { formatReport, runFaults } from '../faults/faults.mjs';

it('dependency faults under load: recovered from, nothing lost, money and events consistent', { timeout: 240000 }, async (t) => {
    const r = await runFaults({ faultSeconds: 2, settleSeconds: 1, concurrency: 3, recoverLimitMs: 30000 });
    for (const line of formatReport(r).split('\n')) t.diagnostic(line);
    assert.equal(r.phases.length, 6);
    for (const p of r.phases) {
        assert.ok(p.chatRecoveryMs >= 0 && p.opsRecoveryMs >= 0, `${p.fault} was not recovered from`);
        const chat = p.saw.chat || {};
        assert.ok(Object.values(chat).reduce((a, b) => a + b, 0) > 0, `${p.fault}: no chat request finished while it lasted`);
        // what a user may see: an answer, an envelope Fail, an error in the reply, or 503; never a
        // dropped connection, a timeout or another 5xx
        for (const o of Object.keys(chat)) assert.ok(['200', '200 Fail', '200 error-text', '503'].includes(o), `${p.fault}: chat ${o}`);
    }
    assert.ok(r.servicesAlive, 'every service survived');
    assert.ok(r.consistency.ok, r.consistency.problems.join('\n'));
    assert.ok(r.consistency.ledgerRows > 0);
    assert.deepEqual(r.problems, []);
});
