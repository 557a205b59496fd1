// Small DOM helpers shared by the chat page and the admin console.

/**
 * Create an element. attrs: on* functions become listeners, true/false/null toggle boolean
 * attributes, everything else is setAttribute. Children: nodes or strings (as text, never HTML).
 */
export function h(tag, attrs = {}, ...children) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
        if (v === null || v === undefined || v === false) continue;
        if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
        else if (k === 'value' && (tag === 'input' || tag === 'textarea' || tag === 'select')) el.value = v;
        else if (k === 'checked') el.checked = !!v;
        else if (k === 'selected') el.selected = !!v;
        else if (v === true) el.setAttribute(k, '');
        else el.setAttribute(k, String(v));
    }
    for (const c of children.flat()) {
        if (c === null || c === undefined || c === false) continue;
        el.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return el;
}

// Icons: inline SVG paths (our own, 24x24, stroke), so nothing is fetched at run time.
const PATHS = {
    plus: 'M12 5v14M5 12h14',
    x: 'M6 6l12 12M18 6L6 18',
    menu: 'M4 6h16M4 12h16M4 18h16',
    send: 'M4 12l16-8-6 16-2-7-8-1z',
    stop: 'M7 7h10v10H7z',
    copy: 'M9 9h10v10H9zM5 15V5h10',
    trash: 'M5 7h14M10 7V4h4v3M7 7l1 13h8l1-13',
    refresh: 'M20 12a8 8 0 1 1-2.3-5.7M20 4v5h-5',
    edit: 'M4 20h4L19 9l-4-4L4 16v4z',
    gear: 'M12 9a3 3 0 1 0 0 6 3 3 0 0 0 0-6zM12 2v3M12 19v3M2 12h3M19 12h3M4.9 4.9l2.1 2.1M17 17l2.1 2.1M4.9 19.1L7 17M17 7l2.1-2.1',
    book: 'M5 4h11a3 3 0 0 1 3 3v13H8a3 3 0 0 1-3-3V4zM5 17a3 3 0 0 1 3-3h11',
    download: 'M12 4v11M7 10l5 5 5-5M5 20h14',
    code: 'M8 8l-4 4 4 4M16 8l4 4-4 4',
};

export function icon(name) {
    const ns = 'http://www.w3.org/2000/svg';
    const svg = document.createElementNS(ns, 'svg');
    svg.setAttribute('viewBox', '0 0 24 24');
    svg.setAttribute('aria-hidden', 'true');
    svg.setAttribute('class', 'icon');
    const p = document.createElementNS(ns, 'path');
    p.setAttribute('d', PATHS[name] || '');
    svg.append(p);
    return svg;
}

/** theme: 'auto' | 'light' | 'dark'; auto follows the operating system. */
export function applyTheme(theme) {
    const dark = theme === 'dark' || (theme !== 'light' && window.matchMedia('(prefers-color-scheme: dark)').matches);
    document.documentElement.dataset.theme = dark ? 'dark' : 'light';
    document.documentElement.style.colorScheme = dark ? 'dark' : 'light';
}

/** Copy text; falls back to a hidden textarea where the Clipboard API is unavailable (plain http). */
export async function copyText(text) {
    try {
        if (navigator.clipboard && window.isSecureContext) {
            await navigator.clipboard.writeText(text);
            return true;
        }
    } catch { /* fall back */ }
    const ta = document.createElement('textarea');
    ta.value = text;
    ta.setAttribute('readonly', '');
    ta.style.position = 'fixed';
    ta.style.opacity = '0';
    document.body.append(ta);
    ta.select();
    let ok = false;
    try {
        ok = document.execCommand('copy');
    } catch { /* nothing more to try */ }
    ta.remove();
    return ok;
}

export function download(name, text, type) {
    const url = URL.createObjectURL(new Blob([text], { type }));
    const a = h('a', { href: url, download: name });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 1000);
}

/** A modal yes/no question; resolves true for yes. */
export function confirmDialog(question, yes, no) {
    return new Promise((resolve) => {
        const dlg = h('dialog', { class: 'dialog confirm', role: 'alertdialog', 'aria-label': question },
            h('form', { method: 'dialog' },
                h('p', {}, question),
                h('div', { class: 'row buttons end' },
                    h('button', { value: 'no', autofocus: true }, no),
                    h('button', { value: 'yes', class: 'danger-btn' }, yes))));
        dlg.addEventListener('close', () => {
            resolve(dlg.returnValue === 'yes');
            dlg.remove();
        });
        document.body.append(dlg);
        dlg.showModal();
    });
}
