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
        assert.ok(p.chatRecoveryMs >= 0 && p.opsRecoveryMs >= 0 && p.readyRecoveryMs >= 0, `${p.fault} was not recovered from`);
        // (a fault of 2 s may see no new chat at all: the clients can all be waiting on requests
        // sent just before it, which a stall holds for CHAT_UPSTREAM_IDLE_TIMEOUT)
        const chat = p.saw.chat || {};
        // what a user may see: an answer, an envelope Fail, an error in the reply, or 503; never a
        // dropped connection, a timeout or another 5xx
        for (const o of Object.keys(chat)) assert.ok(['200', '200 Fail', '200 error-text', '503'].includes(o), `${p.fault}: chat ${o}`);
    }
    const seen = r.totals.chat || {};
    assert.ok((seen['200 Fail'] || 0) + (seen['200 error-text'] || 0) > 0, 'the upstream faults reached the users as errors');
    assert.ok((seen['503'] || 0) > 0, 'Redis and MariaDB down reached the users as 503');
    assert.ok(r.servicesAlive, 'every service survived');
    assert.ok(r.consistency.ok, r.consistency.problems.join('\n'));
    assert.ok(r.consistency.ledgerRows > 0);
    assert.deepEqual(r.problems, []);
});
