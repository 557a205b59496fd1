// bench/proxy/stack.mjs: the stack both /v1 proxy benchmarks measure (run.mjs, callgrind.mjs):
// auth, billing, chat and the proxy with OPENAI_PROXY=true, Redis, SQLite or MariaDB, the fake
// upstream; a user with a balance that never runs out and an API key without limits.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { startStack } from '../../deploy/local/stack.mjs';

const OPS_KEY = 'ops-key-for-the-proxy-benchmark-0123';

/** A chat completion of a 5-token answer, streamed or not. */
export const chatBody = (stream) => JSON.stringify({
    model: 'gpt-4o-mini', ...(stream ? { stream: true } : {}),
    messages: [{ role: 'user', content: 'hi [[fake tokens=5]]' }],
});

/**
 * Starts the stack in a new directory under the system's temporary one. Returns { dir, stack, key }:
 * the caller stops the stack and removes dir.
 */
export async function startProxyStack({ mysql = false, prefix = 'chatweb-proxy-bench-' } = {}) {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
    fs.chmodSync(dir, 0o755);
    const stack = await startStack({
        dir, mysql, fastMysql: true, env: { OPS_KEY, OPENAI_PROXY: 'true', LOG_LEVEL: 'warn' },
    });
    const ops = async (body) => {
        const r = await fetch(`${stack.url}/accounts`, { method: 'POST', headers: { opskey: OPS_KEY }, body: JSON.stringify(body) });
        const j = await r.json();
        if (j.status !== 'Success') throw new Error(`ops ${body.action}: ${JSON.stringify(j)}`);
        return j;
    };
    try {
        await ops({ action: 'register', i_username: 'bench', i_password: 'bench-password', count: 1e12 });
        const key = (await ops({ action: 'create_key', i_username: 'bench', name: 'bench' })).data.key;
        return { dir, stack, key, ops };
    } catch (err) {
        await stack.stop();
        fs.rmSync(dir, { recursive: true, force: true });
        throw err;
    }
}
