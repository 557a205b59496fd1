// Helpers shared by auth.test.mjs and ops.test.mjs.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { postJSON, request } from './harness.mjs';

export const OPS_KEY = 'test-ops-key-0123456789-abcdef';
export const STATIC = { BASIC_AUTH_USER: 'alice,bob', BASIC_AUTH_PASSWORD: 'alice-static-pw,bob-static-pw' };
export const UNAUTHORIZED = { status: 'Unauthorized', message: 'Error: 无访问权限 | No access rights', data: null };

/** Environment of a test stack: cheap argon2 parameters keep the suite fast (the service
 * default is 2 passes over 19 MiB). */
export const ENV = {
    ...STATIC, OPS_KEY, LOG_LEVEL: 'info', AUTH_PWHASH_OPS: '1', AUTH_PWHASH_MEM_KIB: '8192',
};

/** POST /accounts with the Opskey header. */
export function ops(stack, body, key = OPS_KEY) {
    const headers = key === null ? {} : { Opskey: key };
    return postJSON(`${stack.url}/accounts`, body, { headers });
}

/** The direct data-plane URL of the i-th auth replica. */
export function authUrl(stack, i = 0) {
    return `http://${stack.services.auth[i].httpAddr}`;
}

export function sleep(ms) {
    return new Promise((r) => setTimeout(r, ms));
}

/** Polls fn() until it returns true; resolves the elapsed ms, throws after limitMs. */
export async function within(limitMs, fn, stepMs = 20) {
    const t0 = Date.now();
    for (;;) {
        if (await fn()) return Date.now() - t0;
        if (Date.now() - t0 > limitMs) throw new Error(`condition not met within ${limitMs} ms`);
        await sleep(stepMs);
    }
}

/** Every byte the auth tables hold, as text (SQLite file or a MariaDB dump of the auth tables). */
export function sqlText(stack) {
    if (stack.mariadb) {
        const m = stack.mariadb;
        const r = spawnSync('mariadb', ['--no-defaults', `--socket=${m.socket}`, `-u${m.user}`, `-p${m.password}`,
            m.database, '--batch', '-e', 'SELECT * FROM auth_users; SELECT * FROM auth_api_keys; SELECT * FROM auth_audit;'],
        { encoding: 'utf8' });
        assert.equal(r.status, 0, r.stderr);
        assert.ok(r.stdout.includes('pw_hash'), 'the dump has the users table');
        return r.stdout;
    }
    let text = '';
    for (const f of fs.readdirSync(stack.dir)) {
        if (/^chatweb\.db/.test(f)) text += fs.readFileSync(path.join(stack.dir, f)).toString('latin1');
    }
    assert.ok(text.length > 0, 'the SQLite files exist');
    return text;
}

/** Every service log of the stack, concatenated. */
export function logsText(stack) {
    let text = '';
    for (const f of fs.readdirSync(stack.logDir)) text += fs.readFileSync(path.join(stack.logDir, f), 'utf8');
    return text;
}

/** Asserts that none of the secrets occurs in text. */
export function assertNoSecrets(text, secrets, where) {
    for (const s of secrets) assert.ok(!text.includes(s), `${where} contains a secret (${s.slice(0, 6)}...)`);
}

export { postJSON, request };
