// The chat page (docs/web.md). No framework: a few DOM helpers, state in plain objects, and a
// render of the part that changed. Every text from the user or the model reaches the DOM either
// as textContent or through renderMarkdown (markdown-it without HTML, then DOMPurify).
import './style.css';
import * as api from './api.js';
import { renderMarkdown, setCopyLabel } from './markdown.js';
import { t, setLanguage, language } from './i18n.js';
import * as store from './store.js';
import * as sync from './sync.js';
import { h, icon, applyTheme, copyText, download, confirmDialog } from './ui.js';

const LOW_BALANCE = 2000;           // units; below this the balance shows a warning and the link
const MAX_CONTINUATIONS = 3;        // long-reply continuation requests per answer

const state = {
    me: null,
    settings: store.loadSettings(),
    prompts: store.loadPrompts(),
    chats: { active: null, chats: [] },
    search: '',
    busy: null,                     // {controller, msg} while a reply streams
    stick: true,                    // auto-scroll while the user is at the bottom
};

const $ = (sel) => document.querySelector(sel);

// ---------------------------------------------------------------------------------------------
// Start

function boot() {
    setLanguage(state.settings.lang);
    setCopyLabel(t('copyCode'));
    applyTheme(state.settings.theme);
    if (!api.token()) {
        showLogin();
        return;
    }
    api.me().then((me) => startApp(me)).catch((err) => {
        if (err.status === 'Unauthorized') api.setToken('');
        showLogin(err.status === 'Unauthorized' ? t('sessionExpired') : err.message);
    });
}

// ---------------------------------------------------------------------------------------------
// Sign in

function showLogin(message = '') {
    const root = $('#root');
    root.replaceChildren();
    let mode = 'password';
    const err = h('p', { class: 'login-error', role: 'alert' }, message);
    const user = h('input', { id: 'login-user', name: 'username', autocomplete: 'username', required: true });
    const pass = h('input', { id: 'login-pass', name: 'password', type: 'password', autocomplete: 'current-password', required: true });
    const key = h('input', { id: 'login-key', name: 'apikey', type: 'password', autocomplete: 'off', placeholder: 'sk-…' });
    const pwFields = h('div', { class: 'login-fields' },
        h('label', { for: 'login-user' }, t('username')), user,
        h('label', { for: 'login-pass' }, t('password')), pass);
    const keyFields = h('div', { class: 'login-fields', hidden: true },
        h('label', { for: 'login-key' }, t('apiKey')), key);
    const tabPw = h('button', { type: 'button', role: 'tab', 'aria-selected': 'true', class: 'tab' }, t('usePassword'));
    const tabKey = h('button', { type: 'button', role: 'tab', 'aria-selected': 'false', class: 'tab' }, t('useKey'));
    const setMode = (m) => {
        mode = m;
        tabPw.setAttribute('aria-selected', String(m === 'password'));
        tabKey.setAttribute('aria-selected', String(m === 'key'));
        pwFields.hidden = m !== 'password';
        keyFields.hidden = m !== 'key';
        user.required = pass.required = m === 'password';
        key.required = m === 'key';
        (m === 'password' ? user : key).focus();
    };
    tabPw.onclick = () => setMode('password');
    tabKey.onclick = () => setMode('key');
    const submit = h('button', { type: 'submit', class: 'primary' }, t('signIn'));
    const form = h('form', { class: 'login-card', 'aria-labelledby': 'login-title' },
        h('h1', { id: 'login-title' }, t('appName')),
        h('div', { role: 'tablist', class: 'tabs' }, tabPw, tabKey),
        pwFields, keyFields, err, submit);
    form.onsubmit = async (e) => {
        e.preventDefault();
        err.textContent = '';
        submit.disabled = true;
        submit.textContent = t('signingIn');
        try {
            if (mode === 'password') await api.login(user.value.trim(), pass.value);
            else await api.useKey(key.value.trim());
            startApp(await api.me());
        } catch (ex) {
            err.textContent = `${t('signInFailed')}: ${ex.message}`;
            submit.disabled = false;
            submit.textContent = t('signIn');
        }
    };
    root.append(h('div', { class: 'login-page' }, form));
    user.focus();
}

async function signOut() {
    stopReply();
    try {
        await api.logout();
    } catch { /* the token is dropped anyway */ }
    state.me = null;
    showLogin();
}

// ---------------------------------------------------------------------------------------------
// The app shell

function startApp(me) {
    state.me = me;
    state.chats = store.loadChats(me.name);
    if (!state.chats.chats.length) newChat(false);
    if (!state.chats.chats.some((c) => c.id === state.chats.active)) state.chats.active = state.chats.chats[0].id;
    buildShell();
    renderSidebar();
    renderMessages();
    renderBalance();
    $('#composer-input').focus();
    syncNow();
    applyConfig();
}

/** What chat's /api/config tells the page: the test-upstream notice and the model picker. */
async function applyConfig() {
    let cfg;
    try {
        cfg = await api.config();
    } catch {
        return;
    }
    // make run without OPENAI_KEY/OPENAI_BASE_URL answers with its fake upstream: say so.
    const notice = $('#test-upstream');
    if (notice) notice.hidden = cfg.testUpstream !== true;
    setupModelPicker(cfg);
}

/**
 * The model picker: the models /api/config lists (what the /model command accepts), shown when
 * there is a choice. An API key cannot change its account's settings, so key users see none.
 */
function setupModelPicker(cfg) {
    const sel = $('#model-picker');
    const models = Array.isArray(cfg.models) ? cfg.models : [];
    if (!sel || models.length < 2 || api.token().startsWith('sk-')) return;
    const current = (state.me.model || '').split(',')[0] || cfg.model;
    sel.replaceChildren(...models.map((m) => h('option', { value: m, selected: m === current }, m)));
    sel.hidden = false;
    sel.onchange = async () => {
        const want = sel.value;
        sel.disabled = true;
        try {
            await api.setModel(want);
            state.me = await api.me();
        } catch (err) {
            sel.value = (state.me.model || '').split(',')[0] || cfg.model;
            alertBalanceLine(err.message);
        } finally {
            sel.disabled = false;
        }
    };
}

/** A short message under the balance (the sidebar's live region). */
function alertBalanceLine(text) {
    const el = $('#balance');
    if (el) el.append(h('div', { class: 'balance-warn bad' }, text));
}

/** Merge the server's history into the browser's (sync.js) and redraw what changed. */
async function syncNow() {
    if (!state.me) return;
    const busyChat = state.busy ? state.busy.chat : null;
    const changed = await sync.pull(state.chats, busyChat ? busyChat.id : null);
    if (!state.me) return;
    if (!state.chats.chats.length) newChat(false);
    if (!state.chats.chats.some((c) => c.id === state.chats.active)) state.chats.active = state.chats.chats[0].id;
    save();
    if (changed) {
        renderSidebar();
        if (!state.busy) renderMessages();
    }
}

/** A conversation changed: newer than any copy elsewhere, saved here, sent to the server soon. */
function touch(c, now = false) {
    c.updated = Date.now();
    save();
    if (now) sync.push(c, save);
    else sync.schedule(c, save);
}

function buildShell() {
    const root = $('#root');
    root.replaceChildren();
    const search = h('input', { id: 'chat-search', type: 'search', placeholder: t('search'), 'aria-label': t('search') });
    search.oninput = () => { state.search = search.value; renderSidebar(); };
    const sidebar = h('aside', { id: 'sidebar', 'aria-label': t('menu') },
        h('div', { class: 'side-head' },
            h('button', { type: 'button', class: 'primary new-chat', id: 'new-chat', onclick: () => newChat(true) },
                icon('plus'), h('span', {}, t('newChat'))),
            h('button', { type: 'button', class: 'icon-btn only-phone', 'aria-label': t('closeMenu'), onclick: () => toggleMenu(false) }, icon('x'))),
        search,
        h('nav', { id: 'chat-list', 'aria-label': t('menu') }),
        h('div', { class: 'side-foot' },
            h('div', { id: 'balance', class: 'balance', 'aria-live': 'polite' }),
            h('div', { class: 'who' }, t('you_are', { name: state.me.name })),
            h('div', { class: 'foot-buttons' },
                h('button', { type: 'button', class: 'icon-btn', id: 'open-settings', 'aria-label': t('settings'), title: t('settings'), onclick: openSettings }, icon('gear')),
                h('button', { type: 'button', class: 'icon-btn', id: 'open-prompts', 'aria-label': t('prompts'), title: t('prompts'), onclick: openPrompts }, icon('book')),
                h('button', { type: 'button', class: 'icon-btn', id: 'clear-all', 'aria-label': t('clearAll'), title: t('clearAll'), onclick: clearAll }, icon('trash')),
                h('button', { type: 'button', class: 'text-btn', id: 'sign-out', onclick: signOut }, t('signOut')))));
    const input = h('textarea', { id: 'composer-input', rows: 1, placeholder: t('placeholder'), 'aria-label': t('placeholder'), 'aria-controls': 'prompt-suggest' });
    input.oninput = () => { autoGrow(input); updatePromptSuggest(); };
    input.onkeydown = onComposerKey;
    const sendBtn = h('button', { type: 'submit', id: 'send', class: 'primary icon-btn', 'aria-label': t('send'), title: t('send') }, icon('send'));
    const stopBtn = h('button', { type: 'button', id: 'stop', class: 'icon-btn danger', 'aria-label': t('stop'), title: t('stop'), hidden: true, onclick: stopReply }, icon('stop'));
    const form = h('form', { id: 'composer', onsubmit: (e) => { e.preventDefault(); sendFromComposer(); } },
        h('div', { id: 'prompt-suggest', role: 'listbox', hidden: true, 'aria-label': t('prompts') }),
        input, stopBtn, sendBtn);
    const messages = h('div', { id: 'messages', role: 'log', 'aria-live': 'off', tabindex: '0', 'aria-label': t('messages') });
    messages.addEventListener('scroll', () => {
        state.stick = messages.scrollTop + messages.clientHeight >= messages.scrollHeight - 60;
    });
    messages.addEventListener('click', onMessagesClick);
    const main = h('main', { id: 'main' },
        h('header', { class: 'chat-head' },
            h('button', { type: 'button', class: 'icon-btn only-phone', id: 'open-menu', 'aria-label': t('menu'), onclick: () => toggleMenu(true) }, icon('menu')),
            h('h2', { id: 'chat-title' }),
            // What this conversation cost, and (on a phone, where the sidebar is a drawer) the
            // balance: a second line of the header there, always on screen.
            h('div', { class: 'head-sub' },
                h('span', { id: 'chat-spent', class: 'chat-spent', hidden: true }),
                h('span', { id: 'head-balance', class: 'head-balance only-phone' })),
            h('div', { class: 'head-buttons' },
                h('select', { id: 'model-picker', 'aria-label': t('model'), title: t('model'), hidden: true }),
                h('button', { type: 'button', class: 'icon-btn', id: 'export-md', 'aria-label': t('exportMd'), title: t('exportMd'), onclick: exportMarkdown }, icon('download')))),
        h('p', { id: 'test-upstream', class: 'test-upstream', role: 'note', hidden: true }, t('testUpstream')),
        messages, form);
    const overlay = h('div', { id: 'overlay', onclick: () => toggleMenu(false) });
    root.append(h('div', { id: 'app' }, sidebar, overlay, main));
}

// The phone layout (style.css's max-width: 760px), where the sidebar is a drawer.
const PHONE = window.matchMedia('(max-width: 760px)');

/**
 * Open or close the drawer. On a phone the open drawer is modal: the chat behind it is inert
 * (out of the tab order) until it closes, and closing it gives the focus back to the menu button.
 * (The closed drawer is visibility: hidden in style.css, so Tab never reaches it off screen.)
 */
function toggleMenu(open) {
    const wasOpen = document.body.classList.contains('menu-open');
    document.body.classList.toggle('menu-open', open);
    const main = $('#main');
    if (main) main.inert = open && PHONE.matches;
    if (open) $('#chat-search').focus();
    else if (wasOpen && PHONE.matches) $('#open-menu').focus();
}

function activeChat() {
    return state.chats.chats.find((c) => c.id === state.chats.active) || null;
}

function save() {
    store.saveChats(state.me.name, state.chats);
}

// ---------------------------------------------------------------------------------------------
// Sidebar

function newChat(render = true) {
    const cur = activeChat();
    if (render && cur && !cur.messages.length) {
        toggleMenu(false);
        $('#composer-input').focus();
        return;
    }
    const c = { id: store.newId(), title: '', updated: Date.now(), messages: [] };
    // At most one empty conversation: the new one.
    state.chats.chats = state.chats.chats.filter((x) => x.messages.length);
    state.chats.chats.unshift(c);
    state.chats.active = c.id;
    save();
    if (render) {
        stopReply();
        renderSidebar();
        renderMessages();
        toggleMenu(false);
        $('#composer-input').focus();
    }
}

function chatTitle(c) {
    return c.title || t('untitled');
}

function renderSidebar() {
    const list = $('#chat-list');
    const q = state.search.trim().toLowerCase();
    const items = state.chats.chats.filter((c) => !q || chatTitle(c).toLowerCase().includes(q)
        || c.messages.some((m) => m.text.toLowerCase().includes(q)));
    list.replaceChildren(...items.map((c) => {
        const active = c.id === state.chats.active;
        const open = h('button', { type: 'button', class: 'chat-open', 'aria-current': active ? 'page' : null,
            onclick: () => selectChat(c.id) }, chatTitle(c));
        const rename = h('button', { type: 'button', class: 'icon-btn small', 'aria-label': `${t('rename')}: ${chatTitle(c)}`, title: t('rename'),
            onclick: () => startRename(c, item) }, icon('edit'));
        const del = h('button', { type: 'button', class: 'icon-btn small', 'aria-label': `${t('delete')}: ${chatTitle(c)}`, title: t('delete'),
            onclick: () => deleteChat(c) }, icon('trash'));
        const item = h('div', { class: `chat-item${active ? ' active' : ''}`, 'data-id': c.id }, open, rename, del);
        return item;
    }));
    $('#chat-title').textContent = chatTitle(activeChat() || { title: '' });
}

function selectChat(id) {
    if (state.chats.active !== id) {
        stopReply();
        state.chats.active = id;
        // An empty conversation left behind is not worth a line in the list.
        state.chats.chats = state.chats.chats.filter((x) => x.messages.length || x.id === id);
        save();
        renderSidebar();
        renderMessages();
    }
    toggleMenu(false);
}

function startRename(c, item) {
    const input = h('input', { class: 'rename-input', value: chatTitle(c), 'aria-label': t('rename') });
    let finished = false;
    const done = (ok) => {
        // Once only: the redraw below removes the focused input, and Chromium then fires blur,
        // which would save the text that Escape just gave up.
        if (finished) return;
        finished = true;
        if (ok && input.value.trim() && input.value.trim() !== c.title) {
            c.title = input.value.trim().slice(0, 200);
            touch(c);
        }
        renderSidebar();
    };
    input.onkeydown = (e) => {
        if (e.key === 'Enter') { e.preventDefault(); done(true); }
        if (e.key === 'Escape') { e.preventDefault(); e.stopPropagation(); done(false); }
    };
    input.onblur = () => done(true);
    item.replaceChildren(input);
    input.focus();
    input.select();
}

async function deleteChat(c) {
    if (!(await confirmDialog(t('confirmDelete'), t('delete'), t('close')))) return;
    if (state.busy && activeChat() === c) stopReply();
    state.chats.chats = state.chats.chats.filter((x) => x !== c);
    sync.remove(c.id, state.chats.gone);
    if (!state.chats.chats.length) newChat(false);
    if (!state.chats.chats.some((x) => x.id === state.chats.active)) state.chats.active = state.chats.chats[0].id;
    save();
    renderSidebar();
    renderMessages();
}

async function clearAll() {
    if (!(await confirmDialog(t('confirmClearAll'), t('delete'), t('close')))) return;
    stopReply();
    state.chats.chats = [];
    sync.clear(state.chats.gone);
    newChat(false);
    save();
    renderSidebar();
    renderMessages();
}

// ---------------------------------------------------------------------------------------------
// Messages

function messageView(m, idx) {
    const isUser = m.role === 'user';
    const content = h('div', { class: 'content' });
    fillContent(content, m);
    const tools = h('div', { class: 'msg-tools' },
        h('button', { type: 'button', class: 'icon-btn small', 'data-act': 'copy', 'aria-label': t('copy'), title: t('copy') }, icon('copy')),
        isUser || !m.request ? null : h('button', { type: 'button', class: 'icon-btn small', 'data-act': 'regen', 'aria-label': t('regenerate'), title: t('regenerate') }, icon('refresh')),
        isUser ? null : h('button', { type: 'button', class: 'icon-btn small', 'data-act': 'raw', 'aria-label': m.raw ? t('preview') : t('raw'), title: m.raw ? t('preview') : t('raw') }, icon('code')),
        h('button', { type: 'button', class: 'icon-btn small', 'data-act': 'delete', 'aria-label': t('deleteMsg'), title: t('deleteMsg') }, icon('trash')),
        m.spent > 0 ? h('span', { class: 'spent' }, unmetered() ? t('usedReply', { n: m.spent.toLocaleString(language()) })
            : `−${m.spent} ${t('tokens')}`) : null);
    return h('article', {
        class: `msg ${isUser ? 'user' : 'assistant'}${m.loading ? ' loading' : ''}${m.error ? ' error' : ''}`,
        'data-idx': String(idx), 'aria-label': isUser ? t('you') : t('assistant'), 'aria-busy': m.loading ? 'true' : 'false',
    }, content, m.loading ? null : tools);
}

function fillContent(el, m) {
    if (m.role === 'user' || m.raw) {
        el.className = 'content plain';
        el.textContent = m.text;
    } else if (m.loading && !m.text) {
        el.className = 'content thinking';
        el.textContent = t('thinking');
    } else {
        el.className = 'content markdown';
        el.innerHTML = renderMarkdown(m.text);
    }
}

function renderMessages() {
    const c = activeChat();
    const box = $('#messages');
    box.replaceChildren(...(c ? c.messages.map(messageView) : []));
    const spent = c ? c.messages.reduce((s, m) => s + (m.spent || 0), 0) : 0;
    $('#chat-title').textContent = chatTitle(c || { title: '' });
    $('#chat-spent').textContent = spent > 0 ? t('usedThisChat', { n: spent.toLocaleString(language()) }) : '';
    $('#chat-spent').hidden = !(spent > 0);
    state.stick = true;
    scrollToEnd();
    updateComposer();
}

let pendingFrame = 0;
/** Redraw the streaming bubble at most once per frame. */
function renderStreaming(m) {
    if (pendingFrame) return;
    pendingFrame = requestAnimationFrame(() => {
        pendingFrame = 0;
        const c = activeChat();
        const idx = c ? c.messages.indexOf(m) : -1;
        const el = idx >= 0 ? $(`#messages .msg[data-idx="${idx}"] .content`) : null;
        if (el) fillContent(el, m);
        scrollToEnd();
    });
}

function scrollToEnd() {
    const box = $('#messages');
    if (box && state.stick) box.scrollTop = box.scrollHeight;
}

async function onMessagesClick(e) {
    const btn = e.target.closest('button');
    if (!btn) return;
    if (btn.classList.contains('copy-code')) {
        const code = btn.closest('.code-block').querySelector('pre').textContent;
        await copyText(code);
        flash(btn, t('copied'));
        return;
    }
    const art = btn.closest('.msg');
    const c = activeChat();
    if (!art || !c) return;
    const idx = Number(art.dataset.idx);
    const m = c.messages[idx];
    if (!m) return;
    switch (btn.dataset.act) {
    case 'copy':
        await copyText(m.text);
        flash(btn, '✓');
        break;
    case 'delete':
        if (!(await confirmDialog(t('confirmDeleteMsg'), t('delete'), t('close')))) return;
        c.messages.splice(idx, 1);
        touch(c);
        renderMessages();
        break;
    case 'raw':
        m.raw = !m.raw;
        save();
        renderMessages();
        break;
    case 'regen':
        regenerate(m);
        break;
    default:
    }
}

function flash(btn, text) {
    const old = btn.innerHTML;
    const label = btn.getAttribute('aria-label');
    btn.textContent = text;
    btn.setAttribute('aria-label', t('copied'));
    setTimeout(() => { btn.innerHTML = old; if (label) btn.setAttribute('aria-label', label); }, 1200);
}

// ---------------------------------------------------------------------------------------------
// Sending and streaming

function updateComposer() {
    const busy = !!state.busy;
    $('#send').hidden = busy;
    $('#stop').hidden = !busy;
}

function autoGrow(el) {
    el.style.height = 'auto';
    el.style.height = `${Math.min(el.scrollHeight, window.innerHeight * 0.35)}px`;
}

function onComposerKey(e) {
    const sug = $('#prompt-suggest');
    if (!sug.hidden) {
        const items = [...sug.querySelectorAll('[role=option]')];
        let cur = items.findIndex((x) => x.getAttribute('aria-selected') === 'true');
        if (e.key === 'ArrowDown' || e.key === 'ArrowUp') {
            e.preventDefault();
            cur = e.key === 'ArrowDown' ? Math.min(cur + 1, items.length - 1) : Math.max(cur - 1, 0);
            items.forEach((x, i) => x.setAttribute('aria-selected', String(i === cur)));
            // The focus stays in the message box; this tells a screen reader which one is chosen.
            e.target.setAttribute('aria-activedescendant', items[cur].id);
            return;
        }
        if ((e.key === 'Enter' || e.key === 'Tab') && cur >= 0) {
            e.preventDefault();
            items[cur].click();
            return;
        }
        if (e.key === 'Escape') {
            e.preventDefault();
            hideSuggest();
            return;
        }
    }
    if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) {
        e.preventDefault();
        sendFromComposer();
    }
}

function hideSuggest() {
    $('#prompt-suggest').hidden = true;
    $('#composer-input').removeAttribute('aria-activedescendant');
}

function updatePromptSuggest() {
    const input = $('#composer-input');
    const sug = $('#prompt-suggest');
    const v = input.value;
    hideSuggest();   // the list is drawn again below, with nothing chosen yet
    if (!v.startsWith('/') || /\s/.test(v) || !state.prompts.length) return;
    const q = v.slice(1).toLowerCase();
    const hits = state.prompts.filter((p) => p.title.toLowerCase().includes(q)).slice(0, 8);
    sug.replaceChildren(...hits.map((p, i) => h('div', { role: 'option', id: `prompt-option-${i}`, 'aria-selected': 'false', class: 'suggest-item',
        onmousedown: (e) => e.preventDefault(),
        onclick: () => { input.value = p.text; hideSuggest(); autoGrow(input); input.focus(); } },
    h('strong', {}, p.title), h('span', {}, p.text.slice(0, 80)))));
    sug.hidden = hits.length === 0;
}

function sendFromComposer() {
    const input = $('#composer-input');
    const text = input.value.trim();
    if (!text || state.busy) return;
    input.value = '';
    autoGrow(input);
    hideSuggest();
    send(text);
}

/** The server id of the last good assistant reply: the context of the next turn. */
function contextParent(c, before = c.messages.length) {
    if (!state.settings.context) return '';
    for (let i = before - 1; i >= 0; i--) {
        const m = c.messages[i];
        if (m.role === 'assistant' && m.serverId && !m.error) return m.serverId;
    }
    return '';
}

function send(text) {
    const c = activeChat();
    if (!c.title) c.title = text.replace(/\s+/g, ' ').slice(0, 60);
    const parent = contextParent(c);
    c.messages.push({ role: 'user', text, time: Date.now() });
    const m = { role: 'assistant', text: '', time: Date.now(), loading: true, request: { prompt: text, parent } };
    c.messages.push(m);
    c.updated = Date.now();
    // The conversation moves to the top of the list.
    state.chats.chats = [c, ...state.chats.chats.filter((x) => x !== c)];
    save();
    renderSidebar();
    renderMessages();
    run(c, m);
}

function regenerate(m) {
    if (state.busy) return;
    const c = activeChat();
    if (!m.request) return;
    m.text = '';
    m.error = false;
    m.serverId = '';
    m.spent = 0;
    m.loading = true;
    save();
    renderMessages();
    run(c, m);
}

function stopReply() {
    if (state.busy) state.busy.controller.abort();
}

async function run(c, m) {
    const controller = new AbortController();
    state.busy = { controller, msg: m, chat: c };
    updateComposer();
    // What the reply cost: the balance before minus after; for an unlimited account, whose
    // balance does not move, what billing counted as used (the same units, charged in full).
    const before = state.me && !state.me.unlimited && typeof state.me.balance === 'number' ? state.me.balance : null;
    const usedBefore = unmetered() && typeof state.me.usage === 'number' ? state.me.usage : null;
    let prefix = '';
    let prompt = m.request.prompt;
    let parent = m.request.parent;
    try {
        for (let round = 0; ; round++) {
            const body = { prompt, options: parent ? { parentMessageId: parent } : {} };
            if (state.settings.systemMessage) body.systemMessage = state.settings.systemMessage;
            body.temperature = Number(state.settings.temperature);
            body.top_p = Number(state.settings.top_p);
            const last = await api.chatProcess(body, {
                signal: controller.signal,
                onSnapshot: (obj) => {
                    m.text = prefix + (obj.text ?? '');
                    if (obj.id) m.serverId = obj.id;
                    renderStreaming(m);
                },
            });
            const finish = last && last.detail && last.detail.choices && last.detail.choices[0]
                ? last.detail.choices[0].finish_reason : null;
            if (finish !== 'length' || !state.settings.longReply || round + 1 > MAX_CONTINUATIONS || !last.id) break;
            // Long reply: ask the model to go on from where it stopped (an empty prompt).
            prefix = m.text;
            prompt = '';
            parent = last.id;
        }
    } catch (err) {
        if (err.name === 'AbortError') {
            m.stopped = true;
        } else if (err.status === 'Unauthorized') {
            m.loading = false;
            state.busy = null;
            save();
            api.setToken('');
            showLogin(t('sessionExpired'));
            return;
        } else if (m.text) {
            m.text += `\n\n[${err.message || t('errorGeneric')}]`;
        } else {
            m.text = err.message || t('errorGeneric');
            m.error = true;
        }
    } finally {
        if (state.busy && state.busy.msg === m) state.busy = null;
    }
    m.loading = false;
    save();
    if (activeChat() === c) renderMessages();
    updateComposer();
    await refreshBalance();
    // The reply's hold is settled just after its last byte: until billing has it, the balance
    // still lacks the refund of what the reply did not use. Ask again a few times, briefly.
    for (let i = 0; i < 20 && state.me && state.me.held > 0 && !state.busy; i++) {
        await new Promise((r) => setTimeout(r, 250));
        await refreshBalance();
    }
    if (before !== null && state.me && typeof state.me.balance === 'number' && !state.me.unlimited && before > state.me.balance) {
        m.spent = before - state.me.balance;
        if (activeChat() === c) renderMessages();
    } else if (usedBefore !== null && unmetered() && typeof state.me.usage === 'number' && state.me.usage > usedBefore) {
        m.spent = state.me.usage - usedBefore;
        if (activeChat() === c) renderMessages();
    }
    // (Not for a conversation deleted while its reply streamed.)
    if (state.me && state.chats.chats.includes(c)) touch(c, true);
}

// ---------------------------------------------------------------------------------------------
// Balance

async function refreshBalance() {
    try {
        state.me = await api.me();
    } catch (err) {
        if (err.status === 'Unauthorized') {
            api.setToken('');
            showLogin(t('sessionExpired'));
            return;
        }
    }
    renderBalance();
}

/** True for an account whose balance does not go down (unlimited): its replies show usage, not cost. */
function unmetered() {
    return !!(state.me && (state.me.unlimited || state.me.balance === -1));
}

/**
 * What the balance shows, for the sidebar and the phone header: a label alone (blocked, unknown),
 * or a value with its units (data-units; -1 unlimited); level 'bad', 'low' or ''.
 */
function balanceView(me) {
    if (me.blocked) return { label: t('blocked'), level: 'bad' };
    if (me.unlimited || me.balance === -1) return { value: t('unlimited'), units: '-1', level: '' };
    if (typeof me.balance !== 'number') return { label: t('balanceUnknown'), level: '' };
    const level = me.balance >= LOW_BALANCE ? '' : me.balance <= 0 ? 'bad' : 'low';
    return { value: me.balance.toLocaleString(language()), units: String(me.balance), level };
}

function renderBalance() {
    const el = $('#balance');
    if (!el || !state.me) return;
    const me = state.me;
    const v = balanceView(me);
    renderHeadBalance(v);
    el.replaceChildren();
    el.className = 'balance';
    if (v.level) el.classList.add(v.level);
    if (v.label) {
        el.append(v.label);
        return;
    }
    el.append(`${t('balance')}: `, h('strong', { id: 'balance-value', 'data-units': v.units }, v.value));
    if (v.units === '-1') return;
    el.append(` ${t('tokens')}`);
    if (v.level) {
        const link = me.ops_link || '/admin';
        const safe = /^(https?:\/\/|\/)/i.test(link) ? link : '/admin';
        el.append(h('div', { class: 'balance-warn' }, v.level === 'bad' ? t('noBalance') : t('lowBalance'), ' ',
            h('a', { href: safe, target: '_blank', rel: 'noopener noreferrer', id: 'recharge-link' }, t('recharge'))));
    }
}

/** The phone header's short copy of the balance view v (the sidebar's, with its link, is in the drawer). */
function renderHeadBalance(v) {
    const el = $('#head-balance');
    if (!el) return;
    el.className = 'head-balance only-phone';
    if (v.level) el.classList.add(v.level);
    if (v.units !== undefined) el.dataset.units = v.units;
    else delete el.dataset.units;
    el.textContent = v.label || `${t('balance')}: ${v.value}`;
}

// ---------------------------------------------------------------------------------------------
// Settings, prompts, import/export

function openSettings() {
    const s = { ...state.settings };
    const sys = h('textarea', { id: 'set-system', rows: 4 }, s.systemMessage);
    const temp = h('input', { id: 'set-temp', type: 'range', min: 0, max: 2, step: 0.1, value: s.temperature });
    const tempOut = h('output', { for: 'set-temp' }, String(s.temperature));
    temp.oninput = () => { tempOut.textContent = temp.value; };
    const topp = h('input', { id: 'set-topp', type: 'range', min: 0, max: 1, step: 0.05, value: s.top_p });
    const toppOut = h('output', { for: 'set-topp' }, String(s.top_p));
    topp.oninput = () => { toppOut.textContent = topp.value; };
    const opt = (v, label, cur) => h('option', { value: v, selected: v === cur }, label);
    const theme = h('select', { id: 'set-theme' }, opt('auto', t('themeAuto'), s.theme), opt('light', t('themeLight'), s.theme), opt('dark', t('themeDark'), s.theme));
    const lang = h('select', { id: 'set-lang' }, opt('auto', t('langAuto'), s.lang), opt('en', 'English', s.lang), opt('zh-CN', '简体中文', s.lang));
    const longReply = h('input', { id: 'set-long', type: 'checkbox', checked: s.longReply });
    const context = h('input', { id: 'set-context', type: 'checkbox', checked: s.context });
    const file = h('input', { type: 'file', accept: 'application/json,.json', hidden: true, id: 'import-file' });
    const note = h('p', { class: 'note', role: 'status' });
    file.onchange = async () => {
        const f = file.files[0];
        if (!f) return;
        try {
            const n = importChats(JSON.parse(await f.text()));
            note.textContent = t('importDone', { n });
        } catch {
            note.textContent = t('importBad');
        }
        file.value = '';
    };
    const dlg = h('dialog', { class: 'dialog', 'aria-labelledby': 'settings-title' },
        h('form', { method: 'dialog' },
            h('h2', { id: 'settings-title' }, t('settings')),
            h('label', { for: 'set-system' }, t('systemPrompt')), sys,
            h('label', { for: 'set-temp' }, t('temperature'), ' ', tempOut), temp,
            h('label', { for: 'set-topp' }, t('topP'), ' ', toppOut), topp,
            h('div', { class: 'row' },
                h('label', { for: 'set-theme' }, t('theme')), theme,
                h('label', { for: 'set-lang' }, t('language')), lang),
            h('div', { class: 'check' }, longReply, h('label', { for: 'set-long' }, t('longReply'))),
            h('div', { class: 'check' }, context, h('label', { for: 'set-context' }, t('context'))),
            h('div', { class: 'row buttons' },
                h('button', { type: 'button', onclick: exportJson }, t('exportJson')),
                h('button', { type: 'button', onclick: () => file.click() }, t('importJson')), file,
                h('button', { type: 'button', onclick: exportMarkdown }, t('exportMd'))),
            note,
            h('h3', {}, t('shortcuts')),
            h('dl', { class: 'shortcuts' }, ...t('shortcutList').flatMap(([k, v]) => [h('dt', {}, h('kbd', {}, k)), h('dd', {}, v)])),
            h('div', { class: 'row buttons end' },
                h('button', { type: 'button', onclick: () => {
                    const d = store.defaultSettings();
                    sys.value = d.systemMessage; temp.value = d.temperature; topp.value = d.top_p;
                    tempOut.textContent = String(d.temperature); toppOut.textContent = String(d.top_p);
                } }, t('reset')),
                h('button', { value: 'cancel' }, t('close')),
                h('button', { value: 'save', class: 'primary', id: 'settings-save' }, t('save')))));
    dlg.addEventListener('close', () => {
        if (dlg.returnValue === 'save') {
            state.settings = { ...state.settings, systemMessage: sys.value, temperature: Number(temp.value),
                top_p: Number(topp.value), theme: theme.value, lang: lang.value, longReply: longReply.checked, context: context.checked };
            store.saveSettings(state.settings);
            applyTheme(state.settings.theme);
            const oldLang = language();
            setLanguage(state.settings.lang);
            const langChanged = language() !== oldLang;
            setCopyLabel(t('copyCode'));
            if (langChanged) startApp(state.me);
        }
        dlg.remove();
    });
    document.body.append(dlg);
    dlg.showModal();
}

function openPrompts() {
    const list = h('ul', { class: 'prompt-list' });
    const draw = () => {
        list.replaceChildren(...(state.prompts.length ? state.prompts.map((p, i) => h('li', {},
            h('div', {}, h('strong', {}, p.title), h('p', {}, p.text)),
            h('button', { type: 'button', class: 'icon-btn small', 'aria-label': `${t('delete')}: ${p.title}`, onclick: () => {
                state.prompts.splice(i, 1);
                store.savePrompts(state.prompts);
                draw();
            } }, icon('trash'))))
            : [h('li', { class: 'note' }, t('noPrompts'))]));
    };
    draw();
    const title = h('input', { id: 'prompt-title' });
    const text = h('textarea', { id: 'prompt-text', rows: 3 });
    const add = h('button', { type: 'button', class: 'primary', onclick: () => {
        if (!title.value.trim() || !text.value.trim()) return;
        state.prompts.push({ title: title.value.trim(), text: text.value.trim() });
        store.savePrompts(state.prompts);
        title.value = text.value = '';
        draw();
    } }, t('addPrompt'));
    const dlg = h('dialog', { class: 'dialog', 'aria-labelledby': 'prompts-title' },
        h('form', { method: 'dialog' },
            h('h2', { id: 'prompts-title' }, t('prompts')), list,
            h('label', { for: 'prompt-title' }, t('promptTitle')), title,
            h('label', { for: 'prompt-text' }, t('promptText')), text,
            h('div', { class: 'row buttons end' }, add, h('button', { value: 'close' }, t('close')))));
    dlg.addEventListener('close', () => dlg.remove());
    document.body.append(dlg);
    dlg.showModal();
}

function stamp() {
    const d = new Date();
    const p = (n) => String(n).padStart(2, '0');
    return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())}`;
}

function exportJson() {
    const data = { format: 'chatweb-chats', version: 1, exported_at: new Date().toISOString(), user: state.me.name,
        chats: state.chats.chats.map(({ id, title, updated, messages }) => ({ id, title, updated,
            messages: messages.map(({ role, text, time, error, serverId, spent }) => ({ role, text, time, error, serverId, spent })) })) };
    download(`chatweb-chats-${stamp()}.json`, JSON.stringify(data, null, 2), 'application/json');
}

function importChats(data) {
    if (!data || data.format !== 'chatweb-chats' || !Array.isArray(data.chats)) throw new Error('format');
    let n = 0;
    const ids = new Set(state.chats.chats.map((c) => c.id));
    for (const c of data.chats) {
        if (!store.validChat(c)) continue;
        const copy = { id: ids.has(c.id) || !sync.validId(c.id) ? store.newId() : c.id, title: String(c.title).slice(0, 200), updated: Number(c.updated) || Date.now(),
            messages: c.messages.map((m) => ({ role: m.role, text: m.text, time: Number(m.time) || 0, error: !!m.error,
                serverId: typeof m.serverId === 'string' ? m.serverId : '', spent: Number(m.spent) || 0 })) };
        ids.add(copy.id);
        state.chats.chats.push(copy);
        sync.schedule(copy, save);
        n++;
    }
    state.chats.chats.sort((a, b) => b.updated - a.updated);
    save();
    renderSidebar();
    return n;
}

function exportMarkdown() {
    const c = activeChat();
    if (!c) return;
    const lines = [`# ${chatTitle(c)}`, ''];
    for (const m of c.messages) {
        lines.push(`## ${m.role === 'user' ? t('you') : t('assistant')}`, '', m.text, '');
    }
    download(`${chatTitle(c).replace(/[^\p{L}\p{N}_-]+/gu, '_').slice(0, 60) || 'chat'}.md`, lines.join('\n'), 'text/markdown');
}

// ---------------------------------------------------------------------------------------------
// Keyboard shortcuts

document.addEventListener('keydown', (e) => {
    if (!state.me || document.querySelector('dialog[open]')) return;
    if (e.key === 'Escape' && PHONE.matches && document.body.classList.contains('menu-open')) {
        e.preventDefault();
        toggleMenu(false);
    } else if (e.key === 'Escape' && state.busy) {
        e.preventDefault();
        stopReply();
    } else if ((e.ctrlKey || e.metaKey) && e.shiftKey && (e.key === 'O' || e.key === 'o')) {
        e.preventDefault();
        newChat(true);
    } else if ((e.ctrlKey || e.metaKey) && (e.key === 'k' || e.key === 'K')) {
        e.preventDefault();
        toggleMenu(true);
        $('#chat-search').focus();
    }
});

window.matchMedia('(prefers-color-scheme: dark)').addEventListener('change', () => applyTheme(state.settings.theme));
// A window grown past the phone width has no drawer: nothing may stay inert.
PHONE.addEventListener('change', () => {
    if (state.me) toggleMenu(false);
});
// Coming back to the tab picks up what another device changed meanwhile.
document.addEventListener('visibilitychange', () => {
    if (document.visibilityState === 'visible' && state.me && !state.busy) syncNow();
});

boot();
