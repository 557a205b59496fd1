// The backend API the chat page uses (docs/web.md): /api/login, /api/verify, /api/logout,
// /api/me (auth) and /api/chat-process (chat). Replies are the {status, message, data} envelope;
// the chat stream is newline-separated cumulative JSON objects (the ChatGPT Web contract).
const TOKEN_KEY = 'chatweb.token';

export class ApiError extends Error {
    constructor(message, { status = 'Fail', http = 200 } = {}) {
        super(message);
        this.status = status;
        this.http = http;
    }
}

export function token() {
    return localStorage.getItem(TOKEN_KEY) || '';
}

export function setToken(t) {
    if (t) localStorage.setItem(TOKEN_KEY, t);
    else localStorage.removeItem(TOKEN_KEY);
}

function headers() {
    const h = { 'Content-Type': 'application/json' };
    const t = token();
    if (t) h.Authorization = `Bearer ${t}`;
    return h;
}

async function post(path, body = {}) {
    let res;
    try {
        res = await fetch(path, { method: 'POST', headers: headers(), body: JSON.stringify(body), credentials: 'same-origin' });
    } catch (err) {
        throw new ApiError(err.message || 'network error', { http: 0 });
    }
    let env = null;
    try {
        env = await res.json();
    } catch {
        throw new ApiError(`HTTP ${res.status}`, { http: res.status });
    }
    if (!env || env.status !== 'Success')
        throw new ApiError(env && env.message ? env.message : `HTTP ${res.status}`, { status: env && env.status, http: res.status });
    return env.data;
}

/** Username + password: a login session token (cws_...), kept in localStorage. */
export async function login(username, password) {
    const data = await post('/api/login', { username, password });
    setToken(data.token);
    return data;
}

/** An API key (sk-...) used as the bearer token, once /api/verify accepted it. */
export async function useKey(key) {
    await post('/api/verify', { token: key });
    setToken(key);
}

export async function logout() {
    try {
        await post('/api/logout');
    } finally {
        setToken('');
    }
}

export function me() {
    return post('/api/me');
}

/**
 * POST /api/chat-process and call onSnapshot(obj) with every complete cumulative object.
 * Resolves with the last object; rejects with ApiError for a Fail/Unauthorized envelope, or
 * with the fetch AbortError when signal aborts.
 */
export async function chatProcess(body, { signal, onSnapshot }) {
    const res = await fetch('/api/chat-process', {
        method: 'POST', headers: headers(), body: JSON.stringify(body), signal, credentials: 'same-origin',
    });
    if (!res.body) throw new ApiError(`HTTP ${res.status}`, { http: res.status });
    const reader = res.body.getReader();
    const decoder = new TextDecoder();
    let buf = '';
    let last = null;
    const take = (line) => {
        if (!line.trim()) return;
        let obj;
        try {
            obj = JSON.parse(line);
        } catch {
            return;   // a partial line; the next snapshot carries everything anyway
        }
        if (obj && typeof obj.status === 'string' && obj.text === undefined) {
            throw new ApiError(obj.message || `HTTP ${res.status}`, { status: obj.status, http: res.status });
        }
        last = obj;
        onSnapshot(obj);
    };
    for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += decoder.decode(value, { stream: true });
        const nl = buf.lastIndexOf('\n');
        if (nl >= 0) {
            const lines = buf.slice(0, nl).split('\n');
            buf = buf.slice(nl + 1);
            // Snapshots are cumulative: only the newest complete one matters.
            take(lines[lines.length - 1]);
        }
    }
    buf += decoder.decode();
    take(buf);
    if (!last) throw new ApiError(`HTTP ${res.status}: empty reply`, { http: res.status });
    return last;
}

/** The conversation history on the server (auth, POST /api/conversations; docs/web.md). */
export function conversations(body) {
    return post('/api/conversations', body);
}

/** /api/config (chat): the models the /model command accepts and the default one. */
export function config() {
    return post('/api/config');
}

/**
 * Sets the user's model with the /model chat command (auth keeps it). Resolves on success,
 * rejects with the server's message. The command answers with an envelope even on success.
 */
export async function setModel(name) {
    try {
        await chatProcess({ prompt: `/model ${name}`, options: {} }, { onSnapshot: () => {} });
    } catch (err) {
        if (err.message === 'Updated' || err.message === '更新成功') return;
        throw err;
    }
}
