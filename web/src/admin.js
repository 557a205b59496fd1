// The admin console at /admin/ (docs/web.md): a client of the ops API (POST /accounts with the
// Opskey header, docs/ops-api.md). The ops key lives in this module's memory only: a reload asks
// for it again, and nothing is written to storage.
import './style.css';
import './admin.css';
import { h, applyTheme, confirmDialog, copyText } from './ui.js';
import { t as tr, setLanguage } from './i18n.js';

const PER_PAGE = 20;
let opsKey = '';
const view = { page: 1, search: '', total: 0 };

const $ = (sel) => document.querySelector(sel);

const L = {
    en: {
        title: 'chatweb admin', opsKey: 'Operator key (OPS_KEY)', signIn: 'Sign in', signOut: 'Sign out',
        keyNote: 'The key stays in this tab\'s memory only; reloading the page asks for it again.',
        users: 'Users', search: 'Search users', create: 'Create user', username: 'Username', password: 'Password',
        initial: 'Initial balance (tokens; negative = unlimited)', id: 'ID', remaining: 'Remaining', granted: 'Granted',
        used: 'Used', state: 'State', created: 'Created', actions: 'Actions', blocked: 'blocked', active: 'active',
        static: 'static', unlimited: 'unlimited', recharge: 'Recharge', block: 'Block', unblock: 'Unblock',
        resetPw: 'Password', keys: 'Keys', usage: 'Usage', delete: 'Delete', prev: 'Previous', next: 'Next',
        pageOf: 'Page {p} of {n} ({t} users)', amount: 'Tokens to add (negative to take away)', ok: 'OK', cancel: 'Cancel',
        newPw: 'New password', confirmDelete: 'Delete user {u}? Their keys stop working; the ledger is kept.',
        confirmBlock: 'Block {u}? They are refused everywhere at once.', done: 'Done', keyName: 'Key name',
        models: 'Allowed models (comma-separated, empty = any)', rpm: 'Requests per minute (0 = no limit)',
        tpm: 'Tokens per minute (0 = no limit)', createKey: 'Create key', revoke: 'Revoke', limits: 'Limits',
        keyShown: 'The new key, shown only now. Copy it:', copy: 'Copy', prefix: 'Prefix', lastUsed: 'Last used',
        revoked: 'revoked', never: 'never', ledger: 'Ledger', daily: 'Daily usage (last 30 days)', kind: 'Kind',
        units: 'Units', tokensIO: 'Tokens in/out', model: 'Model', balanceAfter: 'Balance after', when: 'When',
        note: 'Note', more: 'Older entries', noKeys: 'No keys.', noEntries: 'No ledger entries.', noUsage: 'No usage in the last 30 days.', close: 'Close',
        missing: 'Not in the ops API yet: the audit log, the models a user may pick (see docs/web.md).',
        prices: 'Model prices', priceModel: 'Model (* = default)', priceIn: 'Input (units per token)',
        priceOut: 'Output (units per token)', setPrice: 'Set price', source: 'Source', updated: 'Updated',
        priceNote: 'Prices set here override BILLING_PRICES and reach every billing replica within about a second.',
        confirmPriceDelete: 'Remove the price of {m}? BILLING_PRICES or the default applies again.',
        events: 'Billing events stream', refresh: 'Refresh', length: 'Length', lastId: 'Last id', outbox: 'Waiting in the outbox',
        group: 'Consumer group', consumers: 'Consumers', pending: 'Pending', lag: 'Lag', noGroups: 'No consumer groups.',
        noStream: 'No events relayed yet.', health: 'Service health', service: 'Service', ready: 'ready', notReady: 'not ready',
        status: 'Status', ms: 'ms', error: 'Error', noHealth: 'HEALTH_URLS is not set on auth.',
    },
    'zh-CN': {
        title: 'chatweb 管理', opsKey: '运维密钥 (OPS_KEY)', signIn: '登录', signOut: '退出',
        keyNote: '密钥只保存在本页内存中；刷新页面需要重新输入。',
        users: '用户', search: '搜索用户', create: '创建用户', username: '用户名', password: '密码',
        initial: '初始余额（tokens；负数 = 不限）', id: 'ID', remaining: '剩余', granted: '累计充值',
        used: '已用', state: '状态', created: '创建时间', actions: '操作', blocked: '已禁用', active: '正常',
        static: '静态', unlimited: '不限', recharge: '充值', block: '禁用', unblock: '解禁',
        resetPw: '密码', keys: '密钥', usage: '用量', delete: '删除', prev: '上一页', next: '下一页',
        pageOf: '第 {p}/{n} 页（共 {t} 个用户）', amount: '增加的 tokens（负数为扣减）', ok: '确定', cancel: '取消',
        newPw: '新密码', confirmDelete: '删除用户 {u}？其密钥立即失效；账本保留。',
        confirmBlock: '禁用 {u}？立即在所有地方拒绝其请求。', done: '完成', keyName: '密钥名称',
        models: '允许的模型（逗号分隔，空 = 全部）', rpm: '每分钟请求数（0 = 不限）',
        tpm: '每分钟 tokens（0 = 不限）', createKey: '创建密钥', revoke: '吊销', limits: '限额',
        keyShown: '新密钥只显示这一次，请复制：', copy: '复制', prefix: '前缀', lastUsed: '最近使用',
        revoked: '已吊销', never: '从未', ledger: '账本', daily: '每日用量（最近 30 天）', kind: '类型',
        units: '数量', tokensIO: '输入/输出 tokens', model: '模型', balanceAfter: '之后余额', when: '时间',
        note: '备注', more: '更早的记录', noKeys: '没有密钥。', noEntries: '没有账本记录。', noUsage: '最近 30 天没有用量。', close: '关闭',
        missing: '运维 API 尚未提供：审计日志、用户可选的模型列表（见 docs/web.md）。',
        prices: '模型价格', priceModel: '模型（* = 默认）', priceIn: '输入（每 token 单位）',
        priceOut: '输出（每 token 单位）', setPrice: '设置价格', source: '来源', updated: '更新时间',
        priceNote: '此处设置的价格覆盖 BILLING_PRICES，约一秒内在所有计费副本生效。',
        confirmPriceDelete: '删除 {m} 的价格？将恢复 BILLING_PRICES 或默认价格。',
        events: '计费事件流', refresh: '刷新', length: '长度', lastId: '最新 id', outbox: '发件箱中等待',
        group: '消费组', consumers: '消费者', pending: '待确认', lag: '滞后', noGroups: '没有消费组。',
        noStream: '尚未转发任何事件。', health: '服务健康', service: '服务', ready: '就绪', notReady: '未就绪',
        status: '状态', ms: '毫秒', error: '错误', noHealth: 'auth 未设置 HEALTH_URLS。',
    },
};

setLanguage('auto');
const lang = document.documentElement.lang === 'zh-CN' ? 'zh-CN' : 'en';
function t(key, vars) {
    let s = L[lang][key] ?? L.en[key] ?? tr(key);
    if (vars) s = s.replace(/\{(\w+)\}/g, (m, k) => (k in vars ? String(vars[k]) : m));
    return s;
}

class OpsError extends Error {}

/** One ops API call; resolves the whole reply ({status, message, data, total, ...}). */
async function ops(body, { idempotencyKey } = {}) {
    const headers = { 'Content-Type': 'application/json', Opskey: opsKey };
    if (idempotencyKey) headers['Idempotency-Key'] = idempotencyKey;
    let res;
    try {
        res = await fetch('/accounts', { method: 'POST', headers, body: JSON.stringify(body), credentials: 'omit' });
    } catch (err) {
        throw new OpsError(err.message);
    }
    let j = null;
    try {
        j = await res.json();
    } catch { /* below */ }
    if (!j) throw new OpsError(`HTTP ${res.status}`);
    if (j.status !== 'Success') throw new OpsError(j.message || `HTTP ${res.status}`);
    return j;
}

function fmtTime(sec) {
    if (!sec) return '';
    return new Date(sec * 1000).toLocaleString(lang);
}

function fmtNum(n) {
    if (n === null || n === undefined) return '–';
    if (n === -1) return t('unlimited');
    return Number(n).toLocaleString(lang);
}

/**
 * A short message at the bottom of the screen. Put inside the open dialog when there is one: a
 * modal dialog dims and makes inert everything outside it, so an error from an action in the
 * dialog would otherwise sit unseen (and unclickable) behind its backdrop. A click dismisses it.
 */
function toast(msg, bad = false) {
    let el = document.getElementById('toast');
    const host = [...document.querySelectorAll('dialog[open]')].pop() || document.body;

    if (!el) // it went with the dialog it was shown in
        el = h('div', { id: 'toast', class: 'toast', role: 'status', hidden: true, onclick: toastHide });
    if (el.parentNode !== host)
        host.append(el);
    el.textContent = msg;
    el.className = bad ? 'toast bad' : 'toast';
    el.hidden = false;
    clearTimeout(toast.timer);
    toast.timer = setTimeout(toastHide, 4000);
}

function toastHide() {
    const el = document.getElementById('toast');

    clearTimeout(toast.timer);
    if (el) el.hidden = true;
}

// Columns whose values are numbers: their headers are right-aligned like the values (th.num).
const NUM_COLS = new Set(['remaining', 'granted', 'used', 'priceIn', 'priceOut', 'consumers', 'pending', 'lag', 'status', 'ms', 'rpm', 'tpm', 'units', 'tokensIO', 'balanceAfter']);

/** A header row for the column keys (labels t(key), or label(key)); number columns get class num. */
function headRow(keys, label = (k) => t(k)) {
    return h('tr', {}, ...keys.map((k) => h('th', { scope: 'col', class: NUM_COLS.has(k) ? 'num' : null }, label(k))));
}

/**
 * Gives every body cell of table its column's name (data-label), which the phone layout
 * (admin.css, below 760 px: each row a card) shows beside the value. The table's roles are set
 * explicitly too: cells laid out as blocks and flex boxes would otherwise lose them in some
 * browsers' accessibility trees.
 */
function labelCells(table) {
    if (!table) return;
    const heads = [...table.querySelectorAll('thead th')].map((th) => th.textContent);
    table.setAttribute('role', 'table');
    for (const g of table.querySelectorAll('thead, tbody')) g.setAttribute('role', 'rowgroup');
    for (const tr of table.querySelectorAll('tr')) {
        tr.setAttribute('role', 'row');
        [...tr.children].forEach((cell, i) => {
            if (cell.tagName === 'TH') cell.setAttribute('role', cell.getAttribute('scope') === 'row' ? 'rowheader' : 'columnheader');
            else cell.setAttribute('role', 'cell');
            if (tr.parentElement.tagName === 'TBODY' && !cell.hasAttribute('colspan')) cell.dataset.label = heads[i] || '';
        });
    }
}

/** A cell of buttons: the td stays a table cell (its border lines up), the buttons wrap inside. */
function actionsCell(...buttons) {
    return h('td', { class: 'actions' }, h('div', { class: 'btns' }, ...buttons));
}

// ---------------------------------------------------------------------------------------------
// Sign in

function showLogin(msg = '') {
    opsKey = '';
    const key = h('input', { id: 'ops-key', type: 'password', autocomplete: 'off', required: true });
    const err = h('p', { class: 'login-error', role: 'alert' }, msg);
    const btn = h('button', { type: 'submit', class: 'primary' }, t('signIn'));
    const form = h('form', { class: 'login-card', 'aria-labelledby': 'admin-title' },
        h('h1', { id: 'admin-title' }, t('title')),
        h('label', { for: 'ops-key' }, t('opsKey')), key,
        h('p', { class: 'note' }, t('keyNote')), err, btn);
    form.onsubmit = async (e) => {
        e.preventDefault();
        btn.disabled = true;
        opsKey = key.value.trim();
        try {
            await ops({ action: 'list', page: 1, per_page: 1 });
            key.value = '';
            showConsole();
        } catch (ex) {
            opsKey = '';
            err.textContent = ex.message;
            btn.disabled = false;
        }
    };
    $('#root').replaceChildren(h('div', { class: 'login-page' }, form));
    key.focus();
}

// ---------------------------------------------------------------------------------------------
// Users

function showConsole() {
    const search = h('input', { id: 'user-search', type: 'search', placeholder: t('search'), 'aria-label': t('search') });
    let timer = 0;
    search.oninput = () => {
        clearTimeout(timer);
        timer = setTimeout(() => { view.search = search.value.trim(); view.page = 1; loadUsers(); }, 250);
    };
    const u = h('input', { id: 'new-user', autocomplete: 'off', required: true });
    const p = h('input', { id: 'new-pass', type: 'password', autocomplete: 'new-password', required: true, minlength: 6 });
    const c = h('input', { id: 'new-count', type: 'number', value: '100000', step: '1', required: true });
    const create = h('form', { class: 'create-user', 'aria-labelledby': 'create-title' },
        h('h2', { id: 'create-title' }, t('create')),
        h('div', { class: 'grid3' },
            h('div', {}, h('label', { for: 'new-user' }, t('username')), u),
            h('div', {}, h('label', { for: 'new-pass' }, t('password')), p),
            h('div', {}, h('label', { for: 'new-count' }, t('initial')), c)),
        h('button', { type: 'submit', class: 'primary', id: 'create-submit' }, t('create')));
    create.onsubmit = async (e) => {
        e.preventDefault();
        try {
            await ops({ action: 'register', i_username: u.value.trim(), i_password: p.value, count: Number(c.value) });
            toast(`${t('done')}: ${u.value.trim()}`);
            u.value = ''; p.value = '';
            loadUsers();
        } catch (ex) {
            toast(ex.message, true);
        }
    };
    $('#root').replaceChildren(h('div', { class: 'admin' },
        h('header', { class: 'admin-head' }, h('h1', {}, t('title')),
            h('button', { type: 'button', class: 'text-btn', id: 'admin-sign-out', onclick: () => showLogin() }, t('signOut'))),
        h('main', {},
            h('section', { 'aria-labelledby': 'users-title' },
                h('div', { class: 'users-bar' }, h('h2', { id: 'users-title' }, t('users')), search),
                h('div', { class: 'table-wrap' }, h('table', { id: 'users' })),
                h('nav', { class: 'pager', 'aria-label': 'pages' },
                    h('button', { type: 'button', id: 'prev', onclick: () => { view.page--; loadUsers(); } }, t('prev')),
                    h('span', { id: 'page-info', 'aria-live': 'polite' }),
                    h('button', { type: 'button', id: 'next', onclick: () => { view.page++; loadUsers(); } }, t('next')))),
            create,
            pricesSection(),
            eventsSection(),
            healthSection(),
            h('p', { class: 'note' }, t('missing'))),
        h('div', { id: 'toast', class: 'toast', role: 'status', hidden: true, onclick: toastHide })));
    loadUsers();
    loadPrices();
    loadEvents();
    loadHealth();
}

async function loadUsers() {
    let r;
    try {
        r = await ops({ action: 'list', search: view.search, page: view.page, per_page: PER_PAGE });
    } catch (ex) {
        toast(ex.message, true);
        return;
    }
    view.total = r.total || 0;
    const pages = Math.max(1, Math.ceil(view.total / PER_PAGE));
    if (view.page > pages) {
        view.page = pages;
        loadUsers();
        return;
    }
    $('#page-info').textContent = t('pageOf', { p: view.page, n: pages, t: view.total });
    $('#prev').disabled = view.page <= 1;
    $('#next').disabled = view.page >= pages;
    const head = headRow(['id', 'username', 'remaining', 'granted', 'used', 'state', 'created', 'actions']);
    const rows = (r.data || []).map((row) => {
        const blocked = !!row.Isblock;
        const act = (label, fn, cls = '') => h('button', { type: 'button', class: `small-btn ${cls}`, 'data-act': label, onclick: () => fn(row) }, t(label));
        return h('tr', { 'data-user': row.Username },
            h('td', {}, String(row.ID)),
            h('th', { scope: 'row' }, row.Username),
            h('td', { class: 'num', 'data-col': 'remaining' }, fmtNum(row.Remaining)),
            h('td', { class: 'num' }, fmtNum(row.Balance)),
            h('td', { class: 'num' }, fmtNum(row.Usage)),
            h('td', { 'data-col': 'state' }, h('span', { class: `pill ${blocked ? 'bad' : 'ok'}` }, blocked ? t('blocked') : t('active')),
                row.Static ? h('span', { class: 'pill' }, t('static')) : null),
            h('td', {}, fmtTime(row.CreatedAt)),
            actionsCell(
                act('recharge', recharge),
                blocked ? act('unblock', (x) => setBlocked(x, false)) : act('block', (x) => setBlocked(x, true)),
                row.Static ? null : act('resetPw', resetPassword),
                act('keys', showKeys),
                act('usage', showUsage),
                row.Static ? null : act('delete', deleteUser, 'danger-text')));
    });
    $('#users').replaceChildren(h('thead', {}, head), h('tbody', {}, ...rows));
    labelCells($('#users'));
}

/** A small modal form; resolves the values of its inputs, or null when cancelled. */
function formDialog(title, fields) {
    return new Promise((resolve) => {
        const inputs = fields.map((f, i) => h('input', { id: `dlg-f${i}`, type: f.type || 'text', value: f.value ?? '', required: f.required !== false, step: f.step, autocomplete: 'off' }));
        const dlg = h('dialog', { class: 'dialog', 'aria-labelledby': 'dlg-title' },
            h('form', { method: 'dialog' },
                h('h2', { id: 'dlg-title' }, title),
                ...fields.flatMap((f, i) => [h('label', { for: `dlg-f${i}` }, f.label), inputs[i]]),
                h('div', { class: 'row buttons end' },
                    h('button', { value: 'cancel', formnovalidate: true }, t('cancel')),
                    h('button', { value: 'ok', class: 'primary', id: 'dlg-ok' }, t('ok')))));
        dlg.addEventListener('close', () => {
            resolve(dlg.returnValue === 'ok' ? inputs.map((x) => x.value) : null);
            dlg.remove();
        });
        document.body.append(dlg);
        dlg.showModal();
    });
}

async function recharge(row) {
    const v = await formDialog(`${t('recharge')}: ${row.Username}`, [{ label: t('amount'), type: 'number', step: '1', value: '10000' }]);
    if (!v) return;
    try {
        // One key per submitted form: a retried request credits once (docs/ops-api.md).
        const r = await ops({ action: 'recharge', i_username: row.Username, count: Number(v[0]) },
            { idempotencyKey: `admin-${crypto.randomUUID ? crypto.randomUUID() : Date.now() + Math.random()}` });
        toast(`${t('done')}: ${row.Username} → ${fmtNum(r.data && r.data.balance)}`);
        loadUsers();
    } catch (ex) {
        toast(ex.message, true);
    }
}

async function setBlocked(row, block) {
    if (block && !(await confirmDialog(t('confirmBlock', { u: row.Username }), t('block'), t('cancel')))) return;
    try {
        await ops({ action: block ? 'block' : 'unblock', i_username: row.Username });
        toast(`${t('done')}: ${row.Username}`);
        loadUsers();
    } catch (ex) {
        toast(ex.message, true);
    }
}

async function resetPassword(row) {
    const v = await formDialog(`${t('resetPw')}: ${row.Username}`, [{ label: t('newPw'), type: 'password' }]);
    if (!v) return;
    try {
        await ops({ action: 'set_password', i_username: row.Username, i_password: v[0] });
        toast(`${t('done')}: ${row.Username}`);
    } catch (ex) {
        toast(ex.message, true);
    }
}

async function deleteUser(row) {
    if (!(await confirmDialog(t('confirmDelete', { u: row.Username }), t('delete'), t('cancel')))) return;
    try {
        await ops({ action: 'delete', i_username: row.Username });
        toast(`${t('done')}: ${row.Username}`);
        loadUsers();
    } catch (ex) {
        toast(ex.message, true);
    }
}

// ---------------------------------------------------------------------------------------------
// Model prices, the billing events stream, service health (docs/ops-api.md)

function sectionHead(id, title, reload) {
    return h('div', { class: 'users-bar' }, h('h2', { id }, title),
        h('button', { type: 'button', class: 'small-btn', 'aria-label': `${t('refresh')}: ${title}`, onclick: reload }, t('refresh')));
}

function pricesSection() {
    const m = h('input', { id: 'price-model', autocomplete: 'off', required: true });
    const i = h('input', { id: 'price-in', inputmode: 'decimal', autocomplete: 'off', required: true, value: '1' });
    const o = h('input', { id: 'price-out', inputmode: 'decimal', autocomplete: 'off', required: true, value: '1' });
    const form = h('form', { class: 'create-user', 'aria-label': t('setPrice') },
        h('div', { class: 'grid3' },
            h('div', {}, h('label', { for: 'price-model' }, t('priceModel')), m),
            h('div', {}, h('label', { for: 'price-in' }, t('priceIn')), i),
            h('div', {}, h('label', { for: 'price-out' }, t('priceOut')), o)),
        h('button', { type: 'submit', class: 'primary', id: 'price-submit' }, t('setPrice')));
    form.onsubmit = async (e) => {
        e.preventDefault();
        try {
            // ratios as text: the exact decimal the operator typed, checked by billing
            await ops({ action: 'set_price', model: m.value.trim(), input: i.value.trim(), output: o.value.trim() });
            toast(`${t('done')}: ${m.value.trim()}`);
            m.value = '';
            loadPrices();
        } catch (ex) {
            toast(ex.message, true);
        }
    };
    return h('section', { 'aria-labelledby': 'prices-title', id: 'prices-section' },
        sectionHead('prices-title', t('prices'), loadPrices),
        h('div', { class: 'table-wrap' }, h('table', { id: 'prices' })),
        h('p', { class: 'note' }, t('priceNote')), form);
}

async function loadPrices() {
    let r;
    try {
        r = await ops({ action: 'list_prices' });
    } catch (ex) {
        toast(ex.message, true);
        return;
    }
    const head = headRow(['model', 'priceIn', 'priceOut', 'source', 'updated', 'actions']);
    const rows = (r.data.prices || []).map((p) => h('tr', { 'data-model': p.model },
        h('th', { scope: 'row' }, p.model),
        h('td', { class: 'num' }, p.input),
        h('td', { class: 'num' }, p.output),
        h('td', {}, h('span', { class: `pill ${p.source === 'sql' ? 'ok' : ''}` }, p.source)),
        h('td', {}, p.updated_at_ms ? `${fmtTime(p.updated_at_ms / 1000)} (${p.updated_by})` : ''),
        actionsCell(p.source === 'sql'
            ? h('button', { type: 'button', class: 'small-btn danger-text', 'data-act': 'delete-price', onclick: () => deletePrice(p.model) }, t('delete'))
            : null)));
    $('#prices').replaceChildren(h('thead', {}, head), h('tbody', {}, ...rows));
    labelCells($('#prices'));
}

async function deletePrice(model) {
    if (!(await confirmDialog(t('confirmPriceDelete', { m: model }), t('delete'), t('cancel')))) return;
    try {
        await ops({ action: 'delete_price', model });
        toast(`${t('done')}: ${model}`);
        loadPrices();
    } catch (ex) {
        toast(ex.message, true);
    }
}

function eventsSection() {
    return h('section', { 'aria-labelledby': 'events-title', id: 'events-section' },
        sectionHead('events-title', t('events'), loadEvents), h('div', { id: 'events' }));
}

async function loadEvents() {
    let r;
    try {
        r = await ops({ action: 'events' });
    } catch (ex) {
        toast(ex.message, true);
        return;
    }
    const d = r.data;
    const facts = h('dl', { class: 'facts' },
        h('dt', {}, 'Stream'), h('dd', {}, h('code', {}, d.stream)),
        h('dt', {}, t('length')), h('dd', { id: 'events-length' }, d.exists ? fmtNum(d.length) : t('noStream')),
        h('dt', {}, t('lastId')), h('dd', {}, d.last_id || '–'),
        h('dt', {}, t('outbox')), h('dd', { id: 'events-outbox' }, fmtNum(d.outbox_pending)));
    const err = d.redis_error ? h('p', { class: 'login-error', role: 'alert' }, d.redis_error) : null;
    const groups = d.groups.length
        ? h('div', { class: 'table-wrap' }, h('table', { id: 'event-groups' },
            h('thead', {}, headRow(['group', 'consumers', 'pending', 'lag', 'lastId'])),
            h('tbody', {}, ...d.groups.map((g) => h('tr', { 'data-group': g.name },
                h('th', { scope: 'row' }, g.name), h('td', { class: 'num' }, fmtNum(g.consumers)),
                h('td', { class: 'num' }, fmtNum(g.pending)), h('td', { class: 'num' }, g.lag === null ? '?' : fmtNum(g.lag)),
                h('td', {}, g.last_delivered_id))))))
        : h('p', { class: 'note' }, t('noGroups'));
    $('#events').replaceChildren(facts, err || '', groups);
    labelCells($('#event-groups'));
}

function healthSection() {
    return h('section', { 'aria-labelledby': 'health-title', id: 'health-section' },
        sectionHead('health-title', t('health'), loadHealth), h('div', { id: 'health' }));
}

async function loadHealth() {
    let r;
    try {
        r = await ops({ action: 'health' });
    } catch (ex) {
        toast(ex.message, true);
        return;
    }
    const d = r.data;
    if (!d.configured) {
        $('#health').replaceChildren(h('p', { class: 'note' }, t('noHealth')));
        return;
    }
    $('#health').replaceChildren(h('div', { class: 'table-wrap' }, h('table', { id: 'health-table' },
        h('thead', {}, headRow(['service', 'state', 'status', 'ms', 'error'])),
        h('tbody', {}, ...d.services.map((s) => h('tr', { 'data-service': s.name },
            h('th', { scope: 'row', title: s.url }, s.name),
            h('td', {}, h('span', { class: `pill ${s.ready ? 'ok' : 'bad'}` }, s.ready ? t('ready') : t('notReady'))),
            h('td', { class: 'num' }, s.status ? String(s.status) : '–'),
            h('td', { class: 'num' }, String(s.ms)),
            h('td', {}, s.error || '')))))));
    labelCells($('#health-table'));
}

// ---------------------------------------------------------------------------------------------
// API keys

function panel(title, body) {
    const dlg = h('dialog', { class: 'dialog wide', 'aria-labelledby': 'panel-title' },
        h('form', { method: 'dialog' }, h('h2', { id: 'panel-title' }, title), body,
            h('div', { class: 'row buttons end' }, h('button', { value: 'close' }, t('close')))));
    dlg.addEventListener('close', () => dlg.remove());
    document.body.append(dlg);
    dlg.showModal();
    return dlg;
}

/**
 * The models field as the ops API takes it: a list of names. The operator may type them as the
 * key list shows them ("gpt-4o, gpt-4o-mini"); sent as that text, the blank after the comma made
 * the ops API refuse the whole field (a model name has no blank).
 */
function modelList(text) {
    return text.split(',').map((m) => m.trim()).filter(Boolean);
}

async function showKeys(row) {
    const box = h('div', {});
    const name = h('input', { id: 'key-name', value: 'web' });
    const models = h('input', { id: 'key-models' });
    const rpm = h('input', { id: 'key-rpm', type: 'number', value: '0', min: '0' });
    const tpm = h('input', { id: 'key-tpm', type: 'number', value: '0', min: '0' });
    const shown = h('div', { class: 'key-shown', role: 'status' });
    const create = h('button', { type: 'button', class: 'primary', id: 'key-create', onclick: async () => {
        try {
            const r = await ops({ action: 'create_key', i_username: row.Username, name: name.value.trim() || 'key',
                models: modelList(models.value), rpm: Number(rpm.value) || 0, tpm: Number(tpm.value) || 0 });
            const code = h('code', { id: 'new-key' }, r.data.key);
            shown.replaceChildren(t('keyShown'), ' ', code, ' ',
                h('button', { type: 'button', class: 'small-btn', onclick: () => copyText(r.data.key) }, t('copy')));
            draw();
        } catch (ex) {
            toast(ex.message, true);
        }
    } }, t('createKey'));
    async function draw() {
        let r;
        try {
            r = await ops({ action: 'list_keys', i_username: row.Username });
        } catch (ex) {
            box.replaceChildren(h('p', { class: 'login-error' }, ex.message));
            return;
        }
        const keys = r.data || [];
        if (!keys.length) {
            box.replaceChildren(h('p', { class: 'note' }, t('noKeys')));
            return;
        }
        box.replaceChildren(h('div', { class: 'table-wrap' }, h('table', {},
            h('thead', {}, headRow(['prefix', 'keyName', 'models', 'rpm', 'tpm', 'lastUsed', 'state', 'actions'], (k) => t(k).split(' (')[0])),
            h('tbody', {}, ...keys.map((k) => h('tr', {},
                h('td', {}, h('code', {}, k.prefix)), h('td', {}, k.name),
                h('td', {}, Array.isArray(k.models) ? k.models.join(', ') : (k.models || '')),
                h('td', { class: 'num' }, String(k.rpm || 0)), h('td', { class: 'num' }, String(k.tpm || 0)),
                h('td', {}, k.last_used_at ? fmtTime(k.last_used_at) : t('never')),
                h('td', {}, k.revoked ? h('span', { class: 'pill bad' }, t('revoked')) : h('span', { class: 'pill ok' }, t('active'))),
                actionsCell(k.revoked ? null : [
                    h('button', { type: 'button', class: 'small-btn', onclick: () => setLimits(row, k, draw) }, t('limits')),
                    h('button', { type: 'button', class: 'small-btn danger-text', onclick: async () => {
                        try {
                            await ops({ action: 'revoke_key', i_username: row.Username, prefix: k.prefix });
                            draw();
                        } catch (ex) {
                            toast(ex.message, true);
                        }
                    } }, t('revoke'))])))))));
        labelCells(box.querySelector('table'));
    }
    panel(`${t('keys')}: ${row.Username}`, h('div', {}, box,
        h('h3', {}, t('createKey')),
        h('div', { class: 'grid2' },
            h('div', {}, h('label', { for: 'key-name' }, t('keyName')), name),
            h('div', {}, h('label', { for: 'key-models' }, t('models')), models),
            h('div', {}, h('label', { for: 'key-rpm' }, t('rpm')), rpm),
            h('div', {}, h('label', { for: 'key-tpm' }, t('tpm')), tpm)),
        h('div', { class: 'row buttons' }, create), shown));
    draw();
}

async function setLimits(row, k, redraw) {
    const v = await formDialog(`${t('limits')}: ${k.prefix}`, [
        { label: t('models'), value: Array.isArray(k.models) ? k.models.join(',') : (k.models || ''), required: false },
        { label: t('rpm'), type: 'number', value: String(k.rpm || 0) },
        { label: t('tpm'), type: 'number', value: String(k.tpm || 0) }]);
    if (!v) return;
    try {
        await ops({ action: 'set_limits', i_username: row.Username, prefix: k.prefix, models: modelList(v[0]), rpm: Number(v[1]) || 0, tpm: Number(v[2]) || 0 });
        redraw();
    } catch (ex) {
        toast(ex.message, true);
    }
}

// ---------------------------------------------------------------------------------------------
// Ledger and daily usage

const DAY_MS = 86400000;
const CHART_DAYS = 30;

/**
 * The daily usage as a bar chart (our own SVG, no chart library): one slot per day of the last
 * 30, in UTC like billing's days, so a day without charges is a gap and each bar stands over its
 * date. (Drawing only the days that had usage put 3 days that were weeks apart side by side.)
 */
function chart(daily) {
    const dayNum = (d) => Math.floor(Date.parse(`${d.day}T00:00:00Z`) / DAY_MS);
    const days = daily.filter((d) => Number.isFinite(dayNum(d)));
    if (!days.length) return h('p', { class: 'note' }, t('noUsage'));
    // Ends today, or at billing's latest day should this browser's clock be behind its server's.
    const end = Math.max(Math.floor(Date.now() / DAY_MS), ...days.map(dayNum));
    const start = Math.min(end - CHART_DAYS + 1, ...days.map(dayNum));
    const n = end - start + 1;
    const max = Math.max(1, ...days.map((d) => Number(d.units) || 0));
    const W = 600, H = 160, bw = W / n;
    const ns = 'http://www.w3.org/2000/svg';
    const svg = document.createElementNS(ns, 'svg');
    svg.setAttribute('viewBox', `0 0 ${W} ${H + 20}`);
    svg.setAttribute('class', 'chart');
    svg.setAttribute('role', 'img');
    svg.setAttribute('aria-label', t('daily'));
    for (const d of days) {
        const i = dayNum(d) - start;
        const v = Number(d.units) || 0;
        const bh = Math.max(1, (v / max) * H);
        const r = document.createElementNS(ns, 'rect');
        r.setAttribute('x', String(i * bw + bw * 0.15));
        r.setAttribute('y', String(H - bh));
        r.setAttribute('width', String(bw * 0.7));
        r.setAttribute('height', String(bh));
        const title = document.createElementNS(ns, 'title');
        title.textContent = `${d.day}: ${v} (${d.requests} req, ${d.tokens_in}/${d.tokens_out} tokens)`;
        r.append(title);
        svg.append(r);
    }
    // A date under every third day, counted back from the last (today).
    const step = Math.ceil(n / 10);
    for (let i = n - 1; i >= 0; i -= step) {
        const tx = document.createElementNS(ns, 'text');
        tx.setAttribute('x', String(i * bw + bw / 2));
        tx.setAttribute('y', String(H + 15));
        tx.setAttribute('text-anchor', 'middle');
        tx.textContent = new Date((start + i) * DAY_MS).toISOString().slice(5, 10);
        svg.append(tx);
    }
    return svg;
}

async function showUsage(row) {
    const chartBox = h('div', {});
    const body = h('tbody', {});
    const more = h('button', { type: 'button', class: 'small-btn', hidden: true }, t('more'));
    let before = 0;
    async function page(first) {
        let r;
        try {
            r = await ops({ action: 'usage', i_username: row.Username, limit: 50, days: 30, ...(before ? { before_id: before } : {}) });
        } catch (ex) {
            toast(ex.message, true);
            return;
        }
        const d = r.data || {};
        if (first) chartBox.replaceChildren(chart(d.daily || []));
        for (const e of d.entries || []) {
            body.append(h('tr', {},
                h('td', {}, new Date(e.created_at_ms).toLocaleString(lang)), h('td', {}, e.kind),
                h('td', { class: 'num' }, fmtNum(e.units)), h('td', { class: 'num' }, `${e.tokens_in}/${e.tokens_out}`),
                h('td', {}, e.model || ''), h('td', { class: 'num' }, fmtNum(e.balance_after)), h('td', {}, e.note || '')));
        }
        if (first && !(d.entries || []).length) body.append(h('tr', {}, h('td', { colspan: '7', class: 'note' }, t('noEntries'))));
        labelCells(body.closest('table'));
        before = d.next_before_id || 0;
        more.hidden = !before;
    }
    more.onclick = async () => {
        // One page at a time: a double click asked twice for the same page and listed it twice.
        more.disabled = true;
        try {
            await page(false);
        } finally {
            more.disabled = false;
        }
    };
    panel(`${t('usage')}: ${row.Username}`, h('div', {},
        h('h3', {}, t('daily')), chartBox,
        h('h3', {}, t('ledger')),
        h('div', { class: 'table-wrap' }, h('table', { id: 'ledger' },
            h('thead', {}, headRow(['when', 'kind', 'units', 'tokensIO', 'model', 'balanceAfter', 'note'])),
            body)),
        more));
    page(true);
}

applyTheme('auto');
window.matchMedia('(prefers-color-scheme: dark)').addEventListener('change', () => applyTheme('auto'));
document.title = t('title');
showLogin();
