// What the chat page keeps in the browser (localStorage): the conversations of each user (keyed
// by user name, so two accounts on one browser never see each other's chats), the settings and
// the prompt library. The conversations are a cache of the server's history (sync.js, docs/web.md).
const SETTINGS_KEY = 'chatweb.settings';
const PROMPTS_KEY = 'chatweb.prompts';
export const DEFAULT_SYSTEM = 'You are a helpful assistant. Follow the user\'s instructions carefully. Respond using Markdown.';

export const defaultSettings = () => ({
    systemMessage: DEFAULT_SYSTEM, temperature: 0.8, top_p: 1, theme: 'auto', lang: 'auto',
    longReply: true, context: true,
});

function read(key, fallback) {
    try {
        const v = JSON.parse(localStorage.getItem(key));
        return v ?? fallback;
    } catch {
        return fallback;
    }
}

function write(key, value) {
    try {
        localStorage.setItem(key, JSON.stringify(value));
    } catch { /* quota: keep going in memory */ }
}

export function loadSettings() {
    return { ...defaultSettings(), ...read(SETTINGS_KEY, {}) };
}

export function saveSettings(s) {
    write(SETTINGS_KEY, s);
}

export function loadPrompts() {
    const p = read(PROMPTS_KEY, []);
    return Array.isArray(p) ? p.filter((x) => x && typeof x.title === 'string' && typeof x.text === 'string') : [];
}

export function savePrompts(p) {
    write(PROMPTS_KEY, p);
}

export function newId() {
    return `${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 10)}`;
}

/**
 * A user's conversations: {active, chats: [{id, title, updated, messages: [...]}], gone}, newest
 * first. gone: what was deleted here ({cleared: ms of the last "delete all", ids: {id: ms}}), so
 * that a copy the server still has (its deletion did not reach it yet) is deleted, not restored.
 */
export function loadChats(user) {
    const v = read(`chatweb.chats.${user}`, null);
    const out = { active: null, chats: [], gone: { cleared: 0, ids: {} } };
    if (v && Array.isArray(v.chats)) {
        out.chats = v.chats.filter(validChat);
        out.active = v.active;
    }
    if (v && v.gone && typeof v.gone === 'object') {
        if (Number.isFinite(v.gone.cleared)) out.gone.cleared = v.gone.cleared;
        for (const [id, ms] of Object.entries(v.gone.ids || {})) if (Number.isFinite(ms)) out.gone.ids[id] = ms;
    }
    for (const c of out.chats) for (const m of c.messages) m.loading = false;   // a reload ends streams
    return out;
}

export function saveChats(user, state) {
    write(`chatweb.chats.${user}`, { active: state.active, chats: state.chats, gone: state.gone });
}

export function validChat(c) {
    return c && typeof c.id === 'string' && typeof c.title === 'string' && Array.isArray(c.messages)
        && c.messages.every((m) => m && (m.role === 'user' || m.role === 'assistant') && typeof m.text === 'string');
}
