// Markdown to safe HTML for assistant replies: markdown-it with raw HTML off, highlight.js for
// code (a fixed set of languages, bundled), KaTeX for $…$ / $$…$$, and DOMPurify over the result,
// so neither the model nor the user can inject markup or script (tests/integration/web.test.mjs).
import MarkdownIt from 'markdown-it';
import katexPlugin from '@vscode/markdown-it-katex';
import DOMPurify from 'dompurify';
import hljs from 'highlight.js/lib/core';
import bash from 'highlight.js/lib/languages/bash';
import c from 'highlight.js/lib/languages/c';
import cpp from 'highlight.js/lib/languages/cpp';
import csharp from 'highlight.js/lib/languages/csharp';
import css from 'highlight.js/lib/languages/css';
import diff from 'highlight.js/lib/languages/diff';
import go from 'highlight.js/lib/languages/go';
import java from 'highlight.js/lib/languages/java';
import javascript from 'highlight.js/lib/languages/javascript';
import json from 'highlight.js/lib/languages/json';
import kotlin from 'highlight.js/lib/languages/kotlin';
import markdown from 'highlight.js/lib/languages/markdown';
import php from 'highlight.js/lib/languages/php';
import plaintext from 'highlight.js/lib/languages/plaintext';
import python from 'highlight.js/lib/languages/python';
import ruby from 'highlight.js/lib/languages/ruby';
import rust from 'highlight.js/lib/languages/rust';
import shell from 'highlight.js/lib/languages/shell';
import sql from 'highlight.js/lib/languages/sql';
import swift from 'highlight.js/lib/languages/swift';
import typescript from 'highlight.js/lib/languages/typescript';
import xml from 'highlight.js/lib/languages/xml';
import yaml from 'highlight.js/lib/languages/yaml';
import 'katex/dist/katex.min.css';

const LANGS = { bash, c, cpp, csharp, css, diff, go, java, javascript, json, kotlin, markdown, php, plaintext,
    python, ruby, rust, shell, sql, swift, typescript, xml, yaml };
for (const [name, lang] of Object.entries(LANGS)) hljs.registerLanguage(name, lang);

let copyLabel = 'Copy code';
/** The copy button's label, in the UI language. */
export function setCopyLabel(s) {
    copyLabel = s;
}

function escapeHtml(s) {
    return s.replace(/[&<>"']/g, (ch) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' }[ch]));
}

function highlight(code, info) {
    const lang = (info || '').trim().split(/\s+/)[0].toLowerCase();
    let body;
    let shown = lang;
    try {
        if (lang && hljs.getLanguage(lang)) {
            body = hljs.highlight(code, { language: lang, ignoreIllegals: true }).value;
        } else if (!lang && code.length < 20000) {
            const r = hljs.highlightAuto(code);
            body = r.value;
            shown = r.language || '';
        }
    } catch {
        body = undefined;
    }
    if (body === undefined) body = escapeHtml(code);
    return `<div class="code-block"><div class="code-head"><span class="code-lang">${escapeHtml(shown || 'text')}</span>`
        + `<button type="button" class="copy-code">${escapeHtml(copyLabel)}</button></div>`
        + `<pre><code class="hljs">${body}</code></pre></div>`;
}

const md = new MarkdownIt({ html: false, linkify: true, breaks: false, highlight });
md.use(katexPlugin, { throwOnError: false, trust: false, strict: 'ignore' });

// Links open in a new tab and pass nothing to the target.
const defaultLinkOpen = md.renderer.rules.link_open || ((tokens, idx, options, env, self) => self.renderToken(tokens, idx, options));
md.renderer.rules.link_open = (tokens, idx, options, env, self) => {
    tokens[idx].attrSet('target', '_blank');
    tokens[idx].attrSet('rel', 'noopener noreferrer');
    return defaultLinkOpen(tokens, idx, options, env, self);
};

// Images only from this origin. A reply that names an image elsewhere would have the browser
// fetch it as soon as the reply shows, sending whatever the model put in the URL (a prompt
// injection can make it the conversation) to that server; the CSP's img-src is only the second
// wall. Such an image becomes a link (following it is the reader's choice) and a data: image its
// alt text (no request, but no pictures from the model either).
function webUrl(src) {
    try {
        const u = new URL(src, window.location.href);
        return u.protocol === 'http:' || u.protocol === 'https:' ? u : null;
    } catch {
        return null;
    }
}
const sameOrigin = (src) => webUrl(src)?.origin === window.location.origin;

const defaultImage = md.renderer.rules.image;
md.renderer.rules.image = (tokens, idx, options, env, self) => {
    const url = webUrl(tokens[idx].attrGet('src') || '');
    if (url?.origin === window.location.origin) return defaultImage(tokens, idx, options, env, self);
    const alt = self.renderInlineAsText(tokens[idx].children || [], options, env);
    if (url) return `<a href="${escapeHtml(url.href)}" class="image-link">${escapeHtml(alt || url.href)}</a>`;
    return escapeHtml(alt);
};

// ChatGPT-style \[…\] and \(…\) delimiters become $$…$$ and $…$ outside code.
function normaliseMath(text) {
    const parts = text.split(/(```[\s\S]*?(?:```|$)|`[^`\n]*`)/g);
    return parts.map((p, i) => (i % 2 === 1 ? p
        : p.replace(/\\\[([\s\S]+?)\\\]/g, (m, x) => `$$${x}$$`).replace(/\\\(([\s\S]+?)\\\)/g, (m, x) => `$${x}$`)))
        .join('');
}

DOMPurify.addHook('afterSanitizeAttributes', (node) => {
    // The renderer above makes no other image; this catches any that reaches here another way.
    if (node.tagName === 'IMG' && !sameOrigin(node.getAttribute('src') || '')) node.removeAttribute('src');
    if (node.tagName === 'A') {
        const href = node.getAttribute('href') || '';
        if (!/^(https?:|mailto:|#|\/)/i.test(href)) node.removeAttribute('href');
        node.setAttribute('target', '_blank');
        node.setAttribute('rel', 'noopener noreferrer');
    }
});

/** Markdown to sanitised HTML. */
export function renderMarkdown(text) {
    const html = md.render(normaliseMath(text || ''));
    return DOMPurify.sanitize(html, {
        ADD_ATTR: ['target'],
        FORBID_TAGS: ['style', 'form', 'input', 'textarea', 'select', 'iframe', 'object', 'embed'],
        FORBID_ATTR: ['srcset'],
    });
}
