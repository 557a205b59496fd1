// Server-side history (docs/web.md): the browser keeps every conversation in localStorage as a
// cache and mirrors it to POST /api/conversations, so another device or browser sees the same
// list. The last write wins, by the client's `updated` time.
import { conversations } from './api.js';

const ID_OK = /^[A-Za-z0-9_-]{1,64}$/;
const pending = new Map();   // chat id -> timer of a scheduled push

/** What is stored on the server for one message (never the transient loading flag). */
function wire(m) {
    const out = { role: m.role, text: m.text };
    for (const k of ['time', 'error', 'serverId', 'spent', 'raw', 'stopped']) if (m[k]) out[k] = m[k];
    if (m.request) out.request = { prompt: m.request.prompt, parent: m.request.parent || '' };
    return out;
}

export function validId(id) {
    return ID_OK.test(id);
}

/** Upload one conversation now. Resolves true when the server has it. */
export async function push(chat, onSaved) {
    clearTimeout(pending.get(chat.id));
    pending.delete(chat.id);
    if (!chat.messages.length || !validId(chat.id)) return false;
    try {
        await conversations({ action: 'put', id: chat.id, title: chat.title || '', updated_ms: Math.floor(chat.updated || Date.now()),
            messages: chat.messages.filter((m) => !m.loading).map(wire) });
        chat.synced = true;
        if (onSaved) onSaved();
        return true;
    } catch (err) {
        console.warn(`chatweb: saving the conversation on the server failed: ${err.message}`);
        return false;
    }
}

/** Upload soon (coalesces bursts of changes to one conversation). */
export function schedule(chat, onSaved, ms = 300) {
    clearTimeout(pending.get(chat.id));
    pending.set(chat.id, setTimeout(() => push(chat, onSaved), ms));
}

/** Delete one conversation on the server; gone (loadChats) remembers it until the server has
 * no copy left (a reload before this request arrives must not bring it back). */
export async function remove(id, gone) {
    clearTimeout(pending.get(id));
    pending.delete(id);
    if (gone) gone.ids[id] = Date.now();
    try {
        await conversations({ action: 'delete', id });
    } catch (err) {
        console.warn(`chatweb: deleting the conversation on the server failed: ${err.message}`);
    }
}

export async function clear(gone) {
    // An upload still waiting (a rename, an import) would put its conversation back afterwards.
    for (const timer of pending.values()) clearTimeout(timer);
    pending.clear();
    // One already in flight, or this request lost (a reload, the network), would too: every
    // server copy last changed before now is deleted when pull() meets it.
    if (gone) {
        gone.cleared = Date.now();
        gone.ids = {};
    }
    try {
        await conversations({ action: 'clear' });
    } catch (err) {
        console.warn(`chatweb: clearing the conversations on the server failed: ${err.message}`);
    }
}

/**
 * Merge the server's list into state.chats (newest first). A conversation newer on the server is
 * fetched; one the server lacks is uploaded, unless it was synced before (then another device
 * deleted it, and it goes here too). Skips the conversation `busyId` (a reply is streaming into
 * it). Resolves true when something changed here.
 */
export async function pull(state, busyId) {
    let list;
    try {
        list = await conversations({ action: 'list' });
    } catch (err) {
        console.warn(`chatweb: reading the conversations on the server failed: ${err.message}`);
        return false;
    }
    let changed = false;
    const byId = new Map(state.chats.map((c) => [c.id, c]));
    const remote = new Set();
    const gone = state.gone || { cleared: 0, ids: {} };
    for (const r of list) {
        remote.add(r.id);
        // Deleted here, and not changed since (on another device, say): delete it there too.
        // (Times are the browsers' clocks, as for "last write wins".)
        if (r.updated_ms <= gone.cleared || (gone.ids[r.id] !== undefined && r.updated_ms <= gone.ids[r.id])) {
            if (!byId.has(r.id)) {
                await remove(r.id, null);
                continue;
            }
        }
        const local = byId.get(r.id);
        if (r.id === busyId || (local && (local.updated || 0) === r.updated_ms)) continue;
        if (local && (local.updated || 0) > r.updated_ms) {
            await push(local);   // changed here after the last upload (a tab closed too soon)
            continue;
        }
        try {
            const full = await conversations({ action: 'get', id: r.id });
            const chat = { id: full.id, title: full.title, updated: full.updated_ms, synced: true,
                messages: (Array.isArray(full.messages) ? full.messages : []).filter((m) => m && (m.role === 'user' || m.role === 'assistant') && typeof m.text === 'string') };
            if (local) Object.assign(local, chat);
            else state.chats.push(chat);
            changed = true;
        } catch (err) {
            console.warn(`chatweb: reading a conversation failed: ${err.message}`);
        }
    }
    // a deletion the server has carried out is forgotten
    for (const id of Object.keys(gone.ids)) if (!remote.has(id)) delete gone.ids[id];
    for (const c of [...state.chats]) {
        if (remote.has(c.id) || c.id === busyId) continue;
        if (c.synced) {
            state.chats.splice(state.chats.indexOf(c), 1);
            changed = true;
        } else if (c.messages.length) {
            await push(c);
        }
    }
    state.chats.sort((a, b) => (b.updated || 0) - (a.updated || 0));
    return changed;
}
