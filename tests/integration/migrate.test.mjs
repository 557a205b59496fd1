// `--migrate` (the Helm chart's migration Job, docs/deploy.md): auth and billing apply their SQL
// schema and exit without serving; chat and the proxy, which have none, refuse the flag; and a
// service refuses a database that a newer release migrated, both in --migrate mode and at start.
// Real binaries against a real MariaDB (the production back end) and a SQLite DATA_DIR.
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { withServers, tempDir } from './lib/harness.mjs';

const BIN = path.resolve(process.env.BUILD_DIR || 'build', 'bin');

function run(service, args, env) {
    const r = spawnSync(path.join(BIN, `chatweb-${service}`), args, {
        // A minimal environment: no RPC_SECRET, no Redis, no listener addresses, as in the Job.
        env: { PATH: process.env.PATH, LOG_LEVEL: 'notice', ...env },
        encoding: 'utf8',
        timeout: 30000,
    });
    return { code: r.status, signal: r.signal, stderr: r.stderr };
}

describe('--migrate', () => {
    const servers = withServers({ mariadb: true });

    function sql(query) {
        const m = servers.mariadb;
        const r = spawnSync('mariadb', ['--no-defaults', `--socket=${m.socket}`, `-u${m.user}`,
            `-p${m.password}`, m.database, '--batch', '--skip-column-names', '-e', query],
        { encoding: 'utf8' });
        assert.equal(r.status, 0, r.stderr);
        return r.stdout.trim();
    }

    it('auth and billing apply their schema to MariaDB and exit 0; a second run is a no-op', () => {
        for (const svc of ['billing', 'auth']) {
            const t0 = Date.now();
            const r = run(svc, ['--migrate'], { DB: servers.mysqlDsn });
            assert.equal(r.code, 0, `${svc}: ${r.stderr}`);
            assert.match(r.stderr, new RegExp(`${svc} schema is current`));
            assert.ok(Date.now() - t0 < 20000);
        }
        const versions = sql('SELECT component, MAX(version) FROM schema_migrations GROUP BY component ORDER BY component');
        assert.match(versions, /^auth\t\d+\nbilling\t\d+$/);
        const again = run('billing', ['--migrate'], { DB: servers.mysqlDsn });
        assert.equal(again.code, 0, again.stderr);
        assert.doesNotMatch(again.stderr, /applied billing version/);
        assert.equal(sql('SELECT component, MAX(version) FROM schema_migrations GROUP BY component ORDER BY component'), versions);
        // Migration 14 renames the relay's lease row: a relay of a release before it (which
        // would send only the first event of a multi-row outbox row) finds nothing to renew.
        assert.equal(sql('SELECT name FROM billing_relay_lease ORDER BY name'), 'relay-runs');
    });

    it('a database migrated by a newer release is refused by --migrate and at start', () => {
        const known = Number(sql("SELECT MAX(version) FROM schema_migrations WHERE component = 'billing'"));
        sql(`INSERT INTO schema_migrations (component, version, applied_at) VALUES ('billing', ${known + 1}, 0)`);
        try {
            const m = run('billing', ['--migrate'], { DB: servers.mysqlDsn });
            assert.equal(m.code, 69, m.stderr);
            assert.match(m.stderr, new RegExp(`database has billing schema version ${known + 1}, this binary knows up to ${known}`));
            const s = run('billing', [], {
                DB: servers.mysqlDsn, RPC_SECRET: 'x'.repeat(32),
                HTTP_ADDR: '127.0.0.1:0', ADMIN_ADDR: '127.0.0.1:0', REDIS_URL: '',
            });
            assert.equal(s.code, 69, s.stderr);
            assert.match(s.stderr, /newer release migrated it/);
            // auth's own component is unaffected: it knows its version.
            assert.equal(run('auth', ['--migrate'], { DB: servers.mysqlDsn }).code, 0);
        } finally {
            sql(`DELETE FROM schema_migrations WHERE component = 'billing' AND version = ${known + 1}`);
        }
    });

    it('works on SQLite (DATA_DIR) too', () => {
        const dir = tempDir('chatweb-migrate-');
        try {
            for (const svc of ['auth', 'billing']) {
                const r = run(svc, ['--migrate'], { DATA_DIR: dir });
                assert.equal(r.code, 0, `${svc}: ${r.stderr}`);
            }
        } finally {
            fs.rmSync(dir, { recursive: true, force: true });
        }
    });

    it('chat and proxy have no schema and refuse --migrate (exit 78)', () => {
        for (const svc of ['chat', 'proxy']) {
            const r = run(svc, ['--migrate'], {
                RPC_SECRET: 'x'.repeat(32), AUTH_URL: 'http://127.0.0.1:1', BILLING_URL: 'http://127.0.0.1:1',
                HTTP_ADDR: '127.0.0.1:0', ADMIN_ADDR: '127.0.0.1:0',
            });
            assert.equal(r.code, 78, `${svc}: ${r.stderr}`);
            assert.match(r.stderr, /--migrate: this service has no SQL schema/);
        }
    });

    it('an unknown argument is still refused', () => {
        const r = run('auth', ['--migrat'], {});
        assert.equal(r.code, 78);
        assert.match(r.stderr, /unknown argument "--migrat"/);
    });
});
