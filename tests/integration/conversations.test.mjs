// The web UI's conversation history on the server (POST /api/conversations, auth; docs/web.md):
// per user, through the ingress, on SQLite and MariaDB; bounded; gone with the user.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { postJSON, withStack } from './lib/harness.mjs';

const OPS_KEY = 'conversations-test-ops-key-0123456789';

for (const backend of ['sqlite', 'mariadb']) describe(`conversation history (${backend})`, () => {
    const stack = withStack({
        mysql: backend === 'mariadb', fastMysql: true, services: ['auth', 'billing'],
        env: { OPS_KEY, AUTH_PWHASH_OPS: '1', AUTH_PWHASH_MEM_KIB: '8192' },
    });

    const ops = async (body) => (await postJSON(`${stack.url}/accounts`, body, { headers: { Opskey: OPS_KEY } })).json();
    async function login(name) {
        assert.equal((await ops({ action: 'register', i_username: name, i_password: `${name}-password`, count: 100 })).status, 'Success');
        const r = (await postJSON(`${stack.url}/api/login`, { username: name, password: `${name}-password` })).json();
        assert.equal(r.status, 'Success');
        return r.data.token;
    }
    const conv = async (token, body) => {
        const r = await postJSON(`${stack.url}/api/conversations`, body, token ? { headers: { Authorization: `Bearer ${token}` } } : {});
        return { status: r.status, json: r.json() };
    };

    it('stores, lists, reads and deletes a user\'s conversations; others see none of them', async () => {
        const amy = await login('amy');
        const bob = await login('bob');
        const messages = [{ role: 'user', text: 'héllo <b>' }, { role: 'assistant', text: 'Echo: hi', serverId: 'x' }];
        let r = await conv(amy, { action: 'put', id: 'c-1', title: 'First', updated_ms: 1000, messages });
        assert.deepEqual(r.json, { data: null, message: '', status: 'Success' });
        assert.equal((await conv(amy, { action: 'put', id: 'c-2', title: 'Second', updated_ms: 3000, messages: [] })).json.status, 'Success');
        // An update replaces the row (title, time, messages).
        assert.equal((await conv(amy, { action: 'put', id: 'c-1', title: 'First!', updated_ms: 2000, messages })).json.status, 'Success');
        r = await conv(amy, { action: 'list' });
        assert.deepEqual(r.json.data, [{ id: 'c-2', title: 'Second', updated_ms: 3000 }, { id: 'c-1', title: 'First!', updated_ms: 2000 }]);
        r = await conv(amy, { action: 'get', id: 'c-1' });
        assert.deepEqual(r.json.data, { id: 'c-1', title: 'First!', updated_ms: 2000, messages });

        assert.deepEqual((await conv(bob, { action: 'list' })).json.data, []);
        assert.equal((await conv(bob, { action: 'get', id: 'c-1' })).json.message, 'record not found');
        assert.equal((await conv(bob, { action: 'delete', id: 'c-1' })).json.status, 'Success');   // deletes nothing of amy's
        assert.equal((await conv(amy, { action: 'list' })).json.data.length, 2);

        assert.equal((await conv(amy, { action: 'delete', id: 'c-2' })).json.status, 'Success');
        assert.deepEqual((await conv(amy, { action: 'list' })).json.data.map((c) => c.id), ['c-1']);
        assert.equal((await conv(amy, { action: 'clear' })).json.status, 'Success');
        assert.deepEqual((await conv(amy, { action: 'list' })).json.data, []);
    });

    it('refuses bad input, no credentials and oversized conversations', async () => {
        const cy = await login('cy');
        assert.equal((await conv(null, { action: 'list' })).json.status, 'Unauthorized');
        assert.equal((await conv('cws_' + '0'.repeat(64), { action: 'list' })).json.status, 'Unauthorized');
        const bad = [
            [{ action: 'nope' }, 'unknown action'],
            [{ action: 'put', id: '../x', title: 't', updated_ms: 1, messages: [] }, /^id must be/],
            [{ action: 'put', id: 'x'.repeat(65), title: 't', updated_ms: 1, messages: [] }, /^id must be/],
            [{ action: 'put', id: 'ok', title: 't'.repeat(201), updated_ms: 1, messages: [] }, /^title must be/],
            [{ action: 'put', id: 'ok', title: 't', updated_ms: -1, messages: [] }, /^updated_ms must be/],
            [{ action: 'put', id: 'ok', title: 't', updated_ms: 1, messages: 'no' }, /^messages must be/],
            [{ action: 'put', id: 'ok', title: 't', updated_ms: 1, messages: [{ text: 'x'.repeat(600 * 1024) }] }, /too large/],
        ];
        for (const [body, msg] of bad) {
            const r = await conv(cy, body);
            assert.equal(r.json.status, 'Fail', JSON.stringify(body).slice(0, 80));
            if (msg instanceof RegExp) assert.match(r.json.message, msg);
            else assert.equal(r.json.message, msg);
        }
        assert.deepEqual((await conv(cy, { action: 'list' })).json.data, []);
        const r = await postJSON(`${stack.url}/api/conversations`, [1], { headers: { Authorization: `Bearer ${cy}` } });
        assert.equal(r.status, 400);
    });

    it('a blocked user is refused, and deleting the user deletes the history', async () => {
        const dee = await login('dee');
        assert.equal((await conv(dee, { action: 'put', id: 'keep', title: 't', updated_ms: 1, messages: [] })).json.status, 'Success');
        assert.equal((await ops({ action: 'block', i_username: 'dee' })).status, 'Success');
        await new Promise((r) => setTimeout(r, 400));   // every cached verification rechecks within 250 ms
        assert.match((await conv(dee, { action: 'list' })).json.message, /blocked/);
        assert.equal((await ops({ action: 'unblock', i_username: 'dee' })).status, 'Success');
        assert.equal((await ops({ action: 'delete', i_username: 'dee' })).status, 'Success');
        // The same name registered again starts with no history.
        const dee2 = await login('dee');
        assert.deepEqual((await conv(dee2, { action: 'list' })).json.data, []);
    });
});
