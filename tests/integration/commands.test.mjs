// The seed's chat commands inside /api/chat-process (seed-behaviour §4.4.1), answered as the seed
// answers them (HTTP 200, status "Fail", the text as message), without the seed's defects:
// blocked users get only /help (C17), /user needs the current password and only touches the
// caller's own account (S1), /model takes only allowed models (S8).
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { basicAuth, getJSON, postJSON, request, withStack } from './lib/harness.mjs';

const OPS_KEY = 'ops-key-for-command-tests';
const HELP = '#### 帮助命令\n- /help 获取帮助信息\n- /me 获取用户信息、Token余额\n- /model 设置使用模型: ' +
    'model_name,temperature,presence,frequency,max_tokens\n- /user 新账户:新密码 更改账户、密码\n' +
    '- /login 登录、重新登录\n\n[自助中心](https://shop.example/top-up)\n';

function say(stack, prompt, headers = {}) {
    return request(`${stack.url}/api/chat-process`, {
        method: 'POST', headers: { 'content-type': 'application/json', ...headers },
        body: JSON.stringify({ prompt, options: {} }),
    });
}

function failText(r) {
    assert.equal(r.status, 200, r.body);
    const j = JSON.parse(r.body);
    assert.equal(j.status, 'Fail', r.body);
    assert.equal(j.data, null);
    return j.message;
}

async function ops(stack, body) {
    const r = await postJSON(`${stack.url}/accounts`, body, { headers: { opskey: OPS_KEY } });
    assert.equal(r.status, 200, r.body);
    return r.json();
}

describe('chat commands', () => {
    const stack = withStack({
        env: {
            OPS_KEY, OPS_LINK: 'https://shop.example/top-up', CHAT_MODELS: 'gpt-3.5-turbo,gpt-4o',
            BASIC_AUTH_USER: 'root', BASIC_AUTH_PASSWORD: 'root-password',
        },
    });
    const root = { authorization: basicAuth('root', 'root-password') };

    it('/help needs no login and keeps the seed text; English on request', async () => {
        assert.equal(failText(await say(stack, '/help')), HELP);
        const en = failText(await say(stack, '/help', { 'accept-language': 'en-GB,en;q=0.9' }));
        assert.match(en, /^#### Commands\n/);
        assert.match(en, /\[Self-service centre\]\(https:\/\/shop\.example\/top-up\)/);
    });

    it('/login toggles the dologin cookie and the Basic challenge', async () => {
        const first = await say(stack, '/login');
        assert.equal(first.status, 401);
        assert.equal(first.headers['www-authenticate'], 'Basic realm="Restricted"');
        assert.match(String(first.headers['set-cookie']), /dologin=yes; Path=\//);
        const second = await say(stack, '/login', { cookie: 'dologin=yes' });
        assert.equal(failText(second), '登录成功');
        assert.match(String(second.headers['set-cookie']), /Max-Age=0/);
    });

    it('/me without credentials, with wrong ones, and for a static user', async () => {
        assert.equal(failText(await say(stack, '/me')), '未登录');
        assert.equal(failText(await say(stack, '/me', { authorization: basicAuth('root', 'nope') })), '用户信息错误');
        assert.equal(failText(await say(stack, '/me', root)), '账户: root\nToken余额: 无限制\n已用Token: 0');
    });

    it('/me shows a registered user their balance and usage', async () => {
        assert.equal((await ops(stack, { action: 'register', i_username: 'gina', i_password: 'gina-pass', count: 1234 })).message, 'success');
        const gina = { authorization: basicAuth('gina', 'gina-pass') };
        assert.equal(failText(await say(stack, '/me', gina)), '账户: gina\nToken余额: 1234\n已用Token: 0');
        const en = failText(await say(stack, '/me', { ...gina, 'accept-language': 'en' }));
        assert.equal(en, 'Account: gina\nToken balance: 1234\nTokens used: 0');
    });

    it('/model accepts only allowed models and the next chat uses the setting', async () => {
        await ops(stack, { action: 'register', i_username: 'hank', i_password: 'hank-pass', count: 100000 });
        const hank = { authorization: basicAuth('hank', 'hank-pass') };
        assert.match(failText(await say(stack, '/model o1-preview', hank)), /^更新失败:不支持的模型/);
        assert.match(failText(await say(stack, '/models', hank)), /^更新失败:/, 'the seed stored "s"; we refuse it');
        assert.match(failText(await say(stack, '/model gpt-4o,500', hank)), /temperature/);
        // a budget at or below the reply reserve (CHAT_MIN_RESPONSE_TOKENS, 600) would refuse every prompt
        assert.match(failText(await say(stack, '/model gpt-4o,50,0,0,600', hank)), /max_tokens .*601\.\./);
        assert.equal(failText(await say(stack, '/model gpt-4o,50,0,0,1500', hank)), '更新成功');
        assert.equal(failText(await say(stack, '/me', hank)), '账户: hank\nToken余额: 100000\n已用Token: 0\n模型配置: gpt-4o,50,0,0,1500');
        const seq = ((await getJSON(`${stack.fakeUpstream.url}/_fake/requests`)).requests.pop() || { seq: 0 }).seq;
        const r = await say(stack, 'which model?', hank);
        assert.equal(r.status, 200);
        const up = (await getJSON(`${stack.fakeUpstream.url}/_fake/requests?since=${seq}`)).requests[0].body;
        assert.equal(up.model, 'gpt-4o');
        assert.equal(up.temperature, 0.5);
        assert.ok(up.max_tokens < 1500, `max_tokens ${up.max_tokens} within the user's budget`);
        assert.equal(failText(await say(stack, '/model -', hank)), '更新成功');
        assert.doesNotMatch(failText(await say(stack, '/me', hank)), /模型配置/, 'setting cleared');
    });

    it('/user checks the format, renames the caller only, and refuses taken names', async () => {
        await ops(stack, { action: 'register', i_username: 'ivan', i_password: 'ivan-pass', count: 10 });
        await ops(stack, { action: 'register', i_username: 'judy', i_password: 'judy-pass', count: 10 });
        const ivan = { authorization: basicAuth('ivan', 'ivan-pass') };
        assert.equal(failText(await say(stack, '/user x:y', ivan)),
            '账户密码格式不正确\n\n账户格式:大小写字母和数字4-12位,必须字母开头\n密码格式:大小写字母和数字6-12位');
        assert.equal(failText(await say(stack, '/user judy:newpass1', ivan)), '更新失败:账户名存在');
        assert.equal(failText(await say(stack, '/user ivan2:newpass1', ivan)), '更新成功,请输入/login重新登录');
        assert.equal(failText(await say(stack, '/me', ivan)), '用户信息错误', 'the old credentials are gone');
        assert.match(failText(await say(stack, '/me', { authorization: basicAuth('ivan2', 'newpass1') })), /^账户: ivan2\n/);
        assert.match(failText(await say(stack, '/me', { authorization: basicAuth('judy', 'judy-pass') })), /^账户: judy\n/, 'judy untouched');
        assert.equal(failText(await say(stack, '/user anyone:whatever1')), '未登录');
        assert.equal(failText(await say(stack, '/user ghost1:whatever1', { authorization: basicAuth('ghost', 'x') })),
            '当前用户信息错误,请输入/login登录其他账户');
        assert.match(failText(await say(stack, '/user rooty:newpass1', root)), /^更新失败:/, 'static accounts come from the environment');
    });

    it('a blocked user can do nothing but /help', async () => {
        await ops(stack, { action: 'register', i_username: 'kate', i_password: 'kate-pass', count: 1000 });
        assert.equal((await ops(stack, { action: 'grant', i_username: 'kate', count: 1 })).message, 'success');
        const kate = { authorization: basicAuth('kate', 'kate-pass') };
        await new Promise((r) => setTimeout(r, 300));
        assert.equal(failText(await say(stack, 'hello', kate)), '账号未授权,请输入/login登录其他账户');
        assert.equal(failText(await say(stack, '/me', kate)), '用户信息错误');
        assert.match(failText(await say(stack, '/model gpt-4o', kate)), /^当前用户信息错误/);
        assert.match(failText(await say(stack, '/user kate2:newpass1', kate)), /^当前用户信息错误/);
        assert.equal(failText(await say(stack, '/help', kate)), HELP);
    });

    it('a login-session cookie from /api/login authenticates chat, /me and logout ends it', async () => {
        await ops(stack, { action: 'register', i_username: 'lena', i_password: 'lena-pass', count: 5000 });
        const login = await postJSON(`${stack.url}/api/login`, { username: 'lena', password: 'lena-pass' });
        assert.equal(login.status, 200, login.body);
        const cookie = String(login.headers['set-cookie']).split(';')[0];
        assert.match(cookie, /^chatweb_session=cws_/);
        assert.match(String(login.headers['set-cookie']), /HttpOnly/);
        assert.match(failText(await say(stack, '/me', { cookie })), /^账户: lena\n/);
        const chat = await say(stack, 'hello by cookie', { cookie });
        assert.equal(chat.status, 200);
        assert.match(chat.body.split('\n').pop(), /hello by cookie/);
        const out = await postJSON(`${stack.url}/api/logout`, {}, { headers: { cookie } });
        assert.equal(out.status, 200);
        const after = await say(stack, 'hello again', { cookie });
        assert.equal(JSON.parse(after.body).status, 'Unauthorized');
    });

    it("an API key chats within its own model list and requests-per-minute limit", async () => {
        await ops(stack, { action: 'register', i_username: 'mona', i_password: 'mona-pass', count: 100000 });
        const k = await ops(stack, { action: 'create_key', i_username: 'mona', name: 'ci', models: ['gpt-3.5-turbo'], rpm: 3 });
        const key = { authorization: `Bearer ${k.data.key}` };
        // the limit is per calendar minute: do not start the burst at a minute's edge
        const sec = new Date().getUTCSeconds();
        if (sec > 55) await new Promise((r) => setTimeout(r, (61 - sec) * 1000));
        for (let i = 0; i < 3; i++) {
            const r = await say(stack, `key chat ${i}`, key);
            assert.equal(r.status, 200, r.body);
            assert.match(r.body.split('\n').pop(), /key chat/);
        }
        const limited = await say(stack, 'one too many', key);
        assert.equal(limited.status, 429);
        assert.equal(limited.headers['retry-after'], '60');
        assert.deepEqual(JSON.parse(limited.body), { status: 'Fail', message: 'Too many requests, please try again later', data: null });
        // the user's password is another scope, not limited by the key
        const byPassword = await say(stack, 'still fine', { authorization: basicAuth('mona', 'mona-pass') });
        assert.equal(byPassword.status, 200);
        const k2 = await ops(stack, { action: 'create_key', i_username: 'mona', name: 'gpt4', models: 'gpt-4o' });
        // a key calls the service; it cannot manage the account it belongs to
        for (const cmd of ['/model gpt-4o', '/user mona2:monapass2'])
            assert.match(failText(await say(stack, cmd, { authorization: `Bearer ${k2.data.key}` })),
                /API 密钥不能修改账户设置/, cmd);
        assert.match(failText(await say(stack, '/me', { authorization: `Bearer ${k2.data.key}` })), /^账户: mona\n/);
        assert.match(failText(await say(stack, 'which model', { authorization: `Bearer ${k2.data.key}` })),
            /this key may not use model gpt-3\.5-turbo/);
    });

    it("a cross-site form cannot spend a user's cached credentials (the seed's S7)", async () => {
        const evil = await say(stack, 'spend my tokens', { ...root, origin: 'https://evil.example', 'content-type': 'text/plain' });
        assert.equal(evil.status, 403);
        assert.deepEqual(JSON.parse(evil.body), { status: 'Fail', message: 'cross-site request refused', data: null });
        const nullOrigin = await say(stack, 'spend my tokens', { ...root, origin: 'null' });
        assert.equal(nullOrigin.status, 403);
        const host = new URL(stack.url).host;
        const same = await say(stack, 'same site is fine', { ...root, origin: `http://${host}` });
        assert.equal(same.status, 200);
        const login = await postJSON(`${stack.url}/api/login`, { username: 'root', password: 'root-password' },
            { headers: { origin: 'https://evil.example' } });
        assert.equal(login.status, 403);
        const admin = await request(`${stack.url}/admin/accounts`, {
            method: 'POST', headers: { authorization: basicAuth('admin', OPS_KEY), origin: 'https://evil.example' },
            body: JSON.stringify({ action: 'list' }),
        });
        assert.equal(admin.status, 403);
    });

    it('history belongs to the account, not the name: a rename keeps it, a new holder of the name gets none', async () => {
        await ops(stack, { action: 'register', i_username: 'oleg', i_password: 'oleg-pass', count: 100000 });
        const oleg = { authorization: basicAuth('oleg', 'oleg-pass') };
        const chatTurn = async (prompt, headers, parent) => {
            const r = await request(`${stack.url}/api/chat-process`, {
                method: 'POST', headers: { 'content-type': 'application/json', ...headers },
                body: JSON.stringify({ prompt, options: parent ? { parentMessageId: parent } : {} }),
            });
            assert.equal(r.status, 200, r.body);
            return JSON.parse(r.body.split('\n').pop());
        };
        const first = await chatTurn('my private secret is 4711', oleg);
        assert.ok(first.id, JSON.stringify(first));
        assert.equal(failText(await say(stack, '/user olga:olgapass1', oleg)), '更新成功,请输入/login重新登录');
        await ops(stack, { action: 'register', i_username: 'oleg', i_password: 'other-pass', count: 100000 });
        const newOleg = { authorization: basicAuth('oleg', 'other-pass') };
        const seq = (await getJSON(`${stack.fakeUpstream.url}/_fake/requests`)).requests.pop().seq;
        const stranger = await chatTurn('continue please', newOleg, first.id);
        assert.match(stranger.text, /^Echo\(1 msgs\)/, 'the new oleg gets no history');
        const up = (await getJSON(`${stack.fakeUpstream.url}/_fake/requests?since=${seq}`)).requests[0];
        assert.ok(!JSON.stringify(up.body).includes('4711'), 'the old private prompt never reaches the upstream');
        const owner = await chatTurn('what was my secret', { authorization: basicAuth('olga', 'olgapass1') }, first.id);
        assert.match(owner.text, /^Echo\(3 msgs\)/, 'the renamed account keeps its own history');
    });

    it('a throttled login is told to wait (429 + Retry-After), never that its token is wrong', async () => {
        await ops(stack, { action: 'register', i_username: 'tess', i_password: 'tess-pass', count: 1000 });
        let r;
        for (let i = 0; i < 25; i++) {
            r = await say(stack, 'hello', { authorization: 'Bearer tess:wrong-password' });
            if (r.status === 429) break;
        }
        assert.equal(r.status, 429, r.body);
        const j = JSON.parse(r.body);
        assert.equal(j.status, 'Fail');
        assert.match(j.message, /retry after \d+ s/);
        assert.ok(Number(r.headers['retry-after']) >= 1, `Retry-After ${r.headers['retry-after']}`);
    });

    it('other slash prompts are ordinary chat', async () => {
        const r = await say(stack, '/translate this', root);
        assert.equal(r.status, 200);
        assert.match(r.headers['content-type'], /octet-stream/);
        assert.match(r.body.split('\n').pop(), /\/translate this/);
    });
});
