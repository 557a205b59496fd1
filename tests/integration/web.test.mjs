// The web UI (web/, docs/web.md) in a real browser: Debian's Chromium driven by playwright-core,
// against a whole stack (nginx serving web/dist, the four services, the fake upstream). Covers
// sign-in, streaming, reload, a phone-sized window, stop, regenerate, exact balance, running out
// of balance, an HTML/script payload rendered inert, Markdown (code, tables, math) through the
// JSON import, the sidebar (rename, search, delete all), the / prompt library, the settings as
// the upstream receives them, zh-CN from the browser, keyboard shortcuts, and the admin console
// (users: create, recharge, block, unblock, page, API keys and their limits, password reset,
// delete; the usage chart and the ledger's pages; model prices; the events stream; service
// health); axe-core audits the main screens (WCAG 2 A/AA, serious and
// critical). The list, one line each: docs/web.md, "Tests". Draws the screenshots the README
// shows (into docs/screenshots/ only with UPDATE_SCREENSHOTS=1).
//
// Chromium missing is a failure, not a skip: scripts/bootstrap installs it (CHROMIUM_PATH
// overrides /usr/bin/chromium).
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, beforeEach, describe, it } from 'node:test';
import zlib from 'node:zlib';
import http from 'node:http';
import { chromium } from 'playwright-core';
import { spawnSync } from 'node:child_process';
import { ROOT, basicAuth, getJSON, postJSON, streamBody, withStack } from './lib/harness.mjs';

const OPS_KEY = 'web-test-ops-key-0123456789abcdef';
const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
const WEB_DIST = path.join(ROOT, 'web', 'dist');
// The screenshots go to $BUILD_DIR/screenshots (or SCREENSHOT_DIR); UPDATE_SCREENSHOTS=1 writes
// the ones the README shows, in docs/screenshots, instead (docs/web.md).
const SHOTS = process.env.UPDATE_SCREENSHOTS === '1' ? path.join(ROOT, 'docs', 'screenshots')
    : path.resolve(ROOT, process.env.SCREENSHOT_DIR || path.join(process.env.BUILD_DIR || 'build', 'screenshots'));
const STEP_MS = 15000;      // any single wait in the browser

async function ops(stack, body) {
    const r = await postJSON(`${stack.url}/accounts`, body, { headers: { Opskey: OPS_KEY } });
    return r.json();
}

async function register(stack, name, password, count) {
    const j = await ops(stack, { action: 'register', i_username: name, i_password: password, count });
    assert.equal(j.status, 'Success', JSON.stringify(j));
}

async function check(stack, name) {
    const j = await ops(stack, { action: 'check', i_username: name });
    assert.equal(j.status, 'Success', JSON.stringify(j));
    return j.data;
}

/** Polls the account until nothing is held any more (settle runs right after the stream). */
async function settled(stack, name) {
    for (let i = 0; i < 200; i++) {
        const d = await check(stack, name);
        if (d.held === 0) return d;
        await new Promise((r) => setTimeout(r, 25));
    }
    throw new Error(`${name}: a hold is still open`);
}

async function signIn(page, url, user, password) {
    await page.goto(url);
    await page.getByLabel('Username').fill(user);
    await page.getByLabel('Password').fill(password);
    await page.getByRole('button', { name: 'Sign in' }).click();
    await page.locator('#composer-input').waitFor({ timeout: STEP_MS });
}

async function sendMessage(page, text) {
    await page.locator('#composer-input').fill(text);
    await page.locator('#composer-input').press('Enter');
}

const lastReply = (page) => page.locator('#messages .msg.assistant').last();

const MARKDOWN = [
    'Here is **C** code:', '', '```c', '#include <stdio.h>', '', 'int main(void) {', '    printf("hello\\n");',
    '    return 0;', '}', '```', '',
    '| model | input | output |', '|---|---|---|', '| gpt-4o | 1.0 | 3.0 |', '| gpt-4o-mini | 0.2 | 0.6 |', '',
    'Euler: $e^{i\\pi} + 1 = 0$', '', '$$\\int_0^1 x^2\\,dx = \\frac{1}{3}$$', '', '<script>window.__pwned=5</script>',
].join('\n');

/** Imports one conversation through Settings > Import JSON and opens it. */
async function importChat(page, title, messages) {
    const file = path.join(os.tmpdir(), `chatweb-import-${process.pid}-${Date.now()}.json`);
    fs.writeFileSync(file, JSON.stringify({ format: 'chatweb-chats', version: 1, chats: [{
        id: `imported-${Date.now()}`, title, updated: Date.now(), messages }] }));
    try {
        await page.locator('#open-settings').click();
        await page.locator('#import-file').setInputFiles(file);
        await page.getByText('Imported 1 conversations').waitFor();
    } finally {
        fs.rmSync(file, { force: true });
    }
    await page.getByRole('button', { name: 'Close' }).click();
    await page.locator('#chat-list .chat-open', { hasText: title }).click();
}

/** GET with the given headers; resolves {status, headers, body (Buffer: the bytes as sent, not decoded)}. */
function getRaw(url, headers = {}) {
    return new Promise((resolve, reject) => {
        const req = http.get(url, { headers, agent: false }, (res) => {
            const chunks = [];
            res.on('data', (c) => chunks.push(c));
            res.on('error', reject);
            res.on('end', () => resolve({ status: res.statusCode, headers: res.headers, body: Buffer.concat(chunks) }));
        });
        req.setTimeout(10000, () => req.destroy(new Error(`GET ${url}: no answer`)));
        req.on('error', reject);
    });
}

/** The scripts an index.html loads (entry and modulepreload), in order. */
function pageScripts(html) {
    return [...html.matchAll(/<(?:script[^>]*\ssrc|link[^>]*rel="modulepreload"[^>]*\shref)="([^"]+)"/g)].map((m) => m[1]);
}

/** WCAG contrast of the composer's placeholder against the background it is drawn on. */
function placeholderContrast(page) {
    return page.evaluate(() => {
        const rgba = (s) => s.match(/[\d.]+/g).map(Number);
        const el = document.querySelector('#composer-input');
        const ph = getComputedStyle(el, '::placeholder');
        let bg = [255, 255, 255];
        for (let e = el; e; e = e.parentElement) {
            const c = rgba(getComputedStyle(e).backgroundColor);
            if (c.length < 4 || c[3] > 0) { bg = c; break; }
        }
        const p = rgba(ph.color);
        const a = (p.length > 3 ? p[3] : 1) * Number(ph.opacity || 1);
        const fg = [0, 1, 2].map((i) => p[i] * a + bg[i] * (1 - a));
        const lum = (c) => c.map((v) => v / 255).map((v) => (v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4))
            .reduce((s, v, i) => s + v * [0.2126, 0.7152, 0.0722][i], 0);
        const [hi, lo] = [lum(fg), lum(bg)].sort((x, y) => y - x);
        return (hi + 0.05) / (lo + 0.05);
    });
}

const AXE = path.join(ROOT, 'tests', 'node_modules', 'axe-core', 'axe.min.js');
const AXE_TAGS = ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa'];

/**
 * axe-core's audit of the page as it is now: the serious and critical violations of the WCAG 2.0
 * and 2.1 A/AA rules, one readable line per rule with the first few elements it flagged.
 */
async function axeViolations(page) {
    if (!(await page.evaluate(() => !!window.axe))) await page.addScriptTag({ path: AXE });
    const res = await page.evaluate((tags) => window.axe.run(document, {
        runOnly: { type: 'tag', values: tags }, resultTypes: ['violations'] }), AXE_TAGS);
    // (An audit that ran no contrast check would prove nothing.)
    assert.ok([...res.passes, ...res.violations, ...res.incomplete].some((r) => r.id === 'color-contrast'), 'axe checked colour contrast');
    return res.violations.filter((v) => v.impact === 'serious' || v.impact === 'critical').map((v) =>
        `${v.id} (${v.impact}): ${v.help}\n${v.nodes.slice(0, 5).map((n) => `    ${n.target.join(' ')}: ${n.failureSummary.replace(/\s+/g, ' ')}`).join('\n')}`);
}

async function waitIdle(page) {
    await page.locator('#messages .msg.loading').waitFor({ state: 'detached', timeout: STEP_MS });
}

describe('web UI build (web/dist)', () => {
    // The 300 KB budget is measured in the browser ("the chat page's first load ..." below).
    it('the chat page\'s scripts are ours, and nothing in the build names another origin', () => {
        const html = fs.readFileSync(path.join(WEB_DIST, 'index.html'), 'utf8');
        const scripts = pageScripts(html);
        assert.ok(scripts.length >= 1, html);
        for (const src of scripts) assert.match(src, /^\/assets\//, 'served by us, no CDN');
        // Nothing in the build names another origin to load from.
        for (const f of fs.readdirSync(path.join(WEB_DIST, 'assets')).filter((x) => /\.(js|css)$/.test(x))) {
            const text = fs.readFileSync(path.join(WEB_DIST, 'assets', f), 'utf8');
            assert.doesNotMatch(text, /(?:src|href)\s*=\s*["']https?:\/\/|@import\s+url\(["']?https?:|url\(["']?https?:\/\//, f);
        }
    });
});

describe('web UI in Chromium', () => {
    const stack = withStack({
        staticRoot: WEB_DIST,
        env: {
            OPS_KEY, AUTH_PWHASH_OPS: '1', AUTH_PWHASH_MEM_KIB: '8192',
            OPENAI_MAX_TOKENS: '1000', CHAT_MIN_RESPONSE_TOKENS: '100', LOG_LEVEL: 'info',
            OPENAI_MODEL: 'gpt-4o-mini', CHAT_MODELS: 'gpt-4o-mini,gpt-4o',
        },
    });
    let browser;
    const consoleErrors = [];

    before(async () => {
        assert.ok(fs.existsSync(path.join(WEB_DIST, 'index.html')), `${WEB_DIST} is not built: run make web (make test does)`);
        assert.ok(fs.existsSync(CHROMIUM), `${CHROMIUM} not found: scripts/bootstrap installs Debian's chromium`);
        fs.mkdirSync(SHOTS, { recursive: true });
        browser = await chromium.launch({
            executablePath: CHROMIUM,
            // Root in a container: Chromium's sandbox needs user namespaces we may not have.
            args: ['--no-sandbox', '--disable-dev-shm-usage', '--disable-gpu'],
        });
        await register(stack, 'wendy', 'wendy-password', 100000);
        await register(stack, 'pete', 'pete-password', 100000);
        await register(stack, 'broke', 'broke-password', 0);
    }, { timeout: 60000 });

    after(async () => {
        if (browser) await browser.close();
    });

    /** A fresh browser context (its own localStorage) that records page errors and off-origin requests. */
    async function context(opts = {}) {
        const ctx = await browser.newContext({ locale: 'en-US', viewport: { width: 1280, height: 800 }, ...opts });
        ctx.setDefaultTimeout(STEP_MS);
        ctx.on('request', (req) => {
            const u = req.url();
            if (!u.startsWith(stack.url) && !u.startsWith('data:') && !u.startsWith('blob:'))
                consoleErrors.push(`request left the origin: ${u}`);
        });
        ctx.on('page', (p) => p.on('pageerror', (err) => consoleErrors.push(`page error: ${err.message}`)));
        return ctx;
    }

    it('the chat page\'s first load takes under 300 KB of compressed JavaScript, measured in the browser', { timeout: 60000 }, async (t) => {
        // Every script response of a first load (empty cache) through sign-in and a reply with
        // math, whoever asked for it: index.html's scripts, module preloads and any chunk
        // loaded later (import()). Sizes as Chromium received them (the encoded body, gzip).
        const ctx = await context();
        const page = await ctx.newPage();
        const scripts = [];
        page.on('requestfinished', (req) => {
            if (req.resourceType() === 'script' || /\.m?js$/.test(new URL(req.url()).pathname)) scripts.push(req);
        });
        await signIn(page, stack.url, 'pete', 'pete-password');
        await sendMessage(page, 'budget: $e^{i\\pi}$ [[fake tokens=40]]');
        await waitIdle(page);
        await lastReply(page).locator('.katex').first().waitFor();
        let total = 0;
        const seen = [];
        for (const req of scripts) {
            const res = await req.response();
            const u = new URL(req.url());
            assert.equal(u.origin, new URL(stack.url).origin, 'no script from another origin');
            assert.equal(res.headers()['content-encoding'], 'gzip', `${u.pathname} sent gzipped`);
            const { responseBodySize } = await req.sizes();
            assert.ok(responseBodySize > 0, u.pathname);
            total += responseBodySize;
            seen.push(u.pathname);
        }
        // The Performance API agrees (what a page itself can measure: encodedBodySize).
        const perf = await page.evaluate(() => performance.getEntriesByType('resource')
            .filter((e) => /\.m?js$/.test(new URL(e.name).pathname)).reduce((n, e) => n + e.encodedBodySize, 0));
        assert.equal(perf, total, 'Performance API encodedBodySize sum');
        // Nothing index.html names is missed, and anything loaded besides it counts.
        const listed = pageScripts(fs.readFileSync(path.join(WEB_DIST, 'index.html'), 'utf8'));
        for (const src of listed) assert.ok(seen.includes(src), `${src} loaded and counted`);
        t.diagnostic(`chat page first load: ${seen.length} scripts (${seen.length - listed.length} not named by index.html), ${(total / 1024).toFixed(1)} KB compressed`);
        assert.ok(total < 300 * 1024, `${total} bytes of compressed JavaScript`);
        await ctx.close();
    });

    it('the ingress sends the page gzipped (under 300 KB of JavaScript on the wire), hashed assets cached for good', async (t) => {
        const gz = { 'Accept-Encoding': 'gzip, deflate, br' };
        const index = await getRaw(`${stack.url}/`, gz);
        assert.equal(index.status, 200);
        assert.equal(index.headers['content-encoding'], 'gzip', 'index.html');
        assert.equal(index.headers['cache-control'], 'no-cache', 'index.html is asked for again every time');
        assert.equal(index.headers['x-frame-options'], 'DENY', 'the security headers stay');
        const scripts = pageScripts(zlib.gunzipSync(index.body).toString('utf8'));
        assert.ok(scripts.length >= 1);
        let wire = 0;
        let raw = 0;
        for (const src of scripts) {
            const r = await getRaw(stack.url + src, gz);
            assert.equal(r.status, 200, src);
            assert.equal(r.headers['content-encoding'], 'gzip', src);
            assert.match(r.headers.vary || '', /Accept-Encoding/i, src);
            assert.equal(r.headers['cache-control'], 'public, max-age=31536000, immutable', src);
            assert.ok(r.headers['content-security-policy'], src);
            const plain = zlib.gunzipSync(r.body);
            assert.deepEqual(plain, fs.readFileSync(path.join(WEB_DIST, src)), `${src}: the same file`);
            wire += r.body.length;
            raw += plain.length;
        }
        t.diagnostic(`chat page JavaScript through the ingress: ${(wire / 1024).toFixed(1)} KB sent for ${(raw / 1024).toFixed(1)} KB`);
        assert.ok(wire < 300 * 1024, `${wire} bytes on the wire`);
        // A client that does not accept gzip gets the file as it is.
        const plain = await getRaw(stack.url + scripts[0]);
        assert.equal(plain.headers['content-encoding'], undefined);
        assert.deepEqual(plain.body, fs.readFileSync(path.join(WEB_DIST, scripts[0])));
        // CSS and the admin page too; API answers are left alone (a stream must not wait in gzip's buffer).
        const css = [...zlib.gunzipSync(index.body).toString('utf8').matchAll(/href="(\/assets\/[^"]+\.css)"/g)].map((m) => m[1]);
        assert.ok(css.length >= 1);
        assert.equal((await getRaw(stack.url + css[0], gz)).headers['content-encoding'], 'gzip', css[0]);
        const admin = await getRaw(`${stack.url}/admin/`, gz);
        assert.equal(admin.headers['content-encoding'], 'gzip', '/admin/');
        assert.equal(admin.headers['cache-control'], 'no-cache');
        const api = await postJSON(`${stack.url}/api/config`, {}, { headers: gz });
        assert.equal(api.status, 200);
        assert.equal(api.headers['content-encoding'], undefined, '/api/config');
        assert.equal(api.headers['cache-control'], undefined, '/api/config');
    });

    it('signs in, streams a reply with a cursor, bills it exactly and keeps it over a reload', { timeout: 60000 }, async () => {
        const ctx = await context({ colorScheme: 'light' });
        const page = await ctx.newPage();
        await signIn(page, stack.url, 'wendy', 'wendy-password');
        const before = await settled(stack, 'wendy');
        await page.locator('#balance-value').waitFor();
        assert.equal(Number(await page.locator('#balance-value').getAttribute('data-units')), before.balance);
        const lightContrast = await placeholderContrast(page);
        assert.ok(lightContrast >= 4.5, `placeholder contrast on light ${lightContrast.toFixed(2)}:1 (WCAG AA: 4.5)`);

        await sendMessage(page, 'Hello there streaming world [[fake tps=25 tokens=40]]');
        // While it streams: the bubble is busy, has some text but not all of it, the Stop button shows.
        const streaming = page.locator('#messages .msg.assistant.loading .content.markdown');
        await streaming.waitFor({ timeout: STEP_MS });
        const partial = await streaming.innerText();
        assert.ok(await page.locator('#stop').isVisible(), 'Stop is offered while the reply streams');
        await waitIdle(page);
        const full = await lastReply(page).locator('.content').innerText();
        assert.match(full, /^Echo\(\d+ msgs\): Hello there streaming world/);
        assert.ok(full.length > partial.length, `the reply grew while streaming (${partial.length} -> ${full.length})`);
        assert.equal(full.split(' ').length, 40, 'all 40 tokens arrived');
        assert.ok(await page.locator('#send').isVisible());

        // The balance shown is billing's, and the reply shows exactly what it cost.
        const after1 = await settled(stack, 'wendy');
        assert.ok(after1.balance < before.balance);
        await page.waitForFunction((v) => document.querySelector('#balance-value')?.dataset.units === String(v), after1.balance, { timeout: STEP_MS });
        const spent = await lastReply(page).locator('.spent').innerText();
        assert.equal(spent, `−${before.balance - after1.balance} tokens`);
        assert.match(await page.locator('#chat-title').innerText(), /Hello there streaming world/);

        // A reload finds the conversation in the sidebar and its messages.
        await page.reload();
        await page.locator('#composer-input').waitFor();
        const item = page.locator('#chat-list .chat-open', { hasText: 'Hello there streaming world' });
        await item.waitFor();
        await item.click();
        assert.equal(await page.locator('#messages .msg').count(), 2);
        assert.equal(await lastReply(page).locator('.content').innerText(), full);

        // A second turn sends the first as context (the fake counts the messages it got).
        await sendMessage(page, 'and again');
        await waitIdle(page);
        assert.match(await lastReply(page).locator('.content').innerText(), /^Echo\(4 msgs\): and again/);
        // The conversation is on the server (history for other devices), both turns of it.
        const token = await page.evaluate(() => localStorage.getItem('chatweb.token'));
        const auth = { headers: { Authorization: `Bearer ${token}` } };
        let stored = null;
        for (let i = 0; i < 100 && !(stored && stored.messages.length === 4); i++) {
            const list = (await postJSON(`${stack.url}/api/conversations`, { action: 'list' }, auth)).json().data;
            const item = list.find((c) => c.title.startsWith('Hello there streaming world'));
            if (item) stored = (await postJSON(`${stack.url}/api/conversations`, { action: 'get', id: item.id }, auth)).json().data;
            if (!(stored && stored.messages.length === 4)) await page.waitForTimeout(50);
        }
        assert.deepEqual(stored.messages.map((m) => m.role), ['user', 'assistant', 'user', 'assistant']);
        assert.match(stored.messages[3].text, /^Echo\(4 msgs\): and again/);
        await ctx.close();
    });

    it('an unlimited account (like the first-run admin) sees what each reply used and the conversation\'s total', { timeout: 60000 }, async () => {
        await register(stack, 'una', 'una-password', -1);   // negative: unlimited
        const ctx = await context();
        const page = await ctx.newPage();
        await signIn(page, stack.url, 'una', 'una-password');
        await page.locator('#balance-value').waitFor();
        assert.equal(await page.locator('#balance-value').innerText(), 'unlimited');
        const before = await settled(stack, 'una');
        assert.equal(before.unlimited, true);
        const total = async (n) => {
            await page.waitForFunction((want) => document.querySelector('#chat-spent')?.textContent === want,
                `This conversation: ${n.toLocaleString('en-US')} tokens`, { timeout: STEP_MS });
        };
        await sendMessage(page, 'how much did this use [[fake tokens=30]]');
        await waitIdle(page);
        const after1 = await settled(stack, 'una');
        const used1 = after1.usage - before.usage;
        assert.ok(used1 > 0, `billing counted ${used1}`);
        await total(used1);
        assert.equal(await lastReply(page).locator('.spent').innerText(), `${used1.toLocaleString('en-US')} tokens used`);
        await sendMessage(page, 'and this one [[fake tokens=10]]');
        await waitIdle(page);
        const after2 = await settled(stack, 'una');
        const used2 = after2.usage - after1.usage;
        await total(used1 + used2);
        assert.equal(await lastReply(page).locator('.spent').innerText(), `${used2.toLocaleString('en-US')} tokens used`);
        assert.equal(await page.locator('#balance-value').innerText(), 'unlimited');
        await ctx.close();
    });

    it('says when the replies come from the built-in test upstream (and not otherwise)', { timeout: 60000 }, async () => {
        // This stack answers with the fake upstream: chat's /api/config says testUpstream: true.
        assert.equal((await postJSON(`${stack.url}/api/config`, {})).json().data.testUpstream, true);
        const ctx = await context();
        const page = await ctx.newPage();
        await signIn(page, stack.url, 'wendy', 'wendy-password');
        const notice = page.getByRole('note');
        await notice.waitFor();
        assert.equal(await notice.innerText(), 'Test mode: replies come from the built-in test upstream, not from a real model.');
        const box = await notice.boundingBox();
        assert.ok(box && box.y >= 0 && box.y + box.height <= 800, 'on screen');
        await ctx.close();
        // A real upstream (the same answer with testUpstream false): no notice.
        const real = await context();
        await real.route('**/api/config', async (route) => {
            const res = await route.fetch();
            const body = await res.json();
            body.data.testUpstream = false;
            await route.fulfill({ response: res, json: body });
        });
        const p = await real.newPage();
        await signIn(p, stack.url, 'wendy', 'wendy-password');
        await p.waitForFunction(() => document.querySelector('#model-picker') && !document.querySelector('#model-picker').hidden);
        assert.equal(await p.locator('#test-upstream').isVisible(), false);
        await real.close();
    });

    it('stops a reply mid-stream and regenerates one', { timeout: 60000 }, async () => {
        const ctx = await context();
        const page = await ctx.newPage();
        await signIn(page, stack.url, 'wendy', 'wendy-password');
        await page.locator('#new-chat').click();
        await sendMessage(page, 'long one [[fake tps=10 tokens=400]]');
        const streaming = page.locator('#messages .msg.assistant.loading .content.markdown');
        await streaming.waitFor({ timeout: STEP_MS });
        await page.locator('#stop').click();
        await waitIdle(page);
        const stopped = await lastReply(page).locator('.content').innerText();
        const words = stopped.split(' ').length;
        assert.ok(words >= 1 && words < 400, `stopped after ${words} tokens`);
        await page.waitForTimeout(400);
        assert.equal(await lastReply(page).locator('.content').innerText(), stopped, 'nothing arrives after Stop');
        assert.ok(await page.locator('#send').isVisible());
        await settled(stack, 'wendy');   // the partial reply was settled, the hold is gone

        // Regenerate replaces the reply in place (same number of messages).
        await page.locator('#new-chat').click();
        await sendMessage(page, 'regen me [[fake tokens=5]]');
        await waitIdle(page);
        const first = await lastReply(page).locator('.content').innerText();
        assert.match(first, /^Echo\(\d+ msgs\): regen me/);
        await lastReply(page).getByRole('button', { name: 'Regenerate' }).click();
        await waitIdle(page);
        assert.equal(await page.locator('#messages .msg').count(), 2);
        assert.match(await lastReply(page).locator('.content').innerText(), /^Echo\(\d+ msgs\): regen me/);
        // Escape also stops.
        await sendMessage(page, 'escape [[fake tps=10 tokens=300]]');
        await page.locator('#messages .msg.assistant.loading .content.markdown').waitFor({ timeout: STEP_MS });
        await page.keyboard.press('Escape');
        await waitIdle(page);
        assert.ok((await lastReply(page).locator('.content').innerText()).split(' ').length < 300);

        // Deleting the conversation deletes it on the server too.
        const token = await page.evaluate(() => localStorage.getItem('chatweb.token'));
        const titles = async () => (await postJSON(`${stack.url}/api/conversations`, { action: 'list' },
            { headers: { Authorization: `Bearer ${token}` } })).json().data.map((c) => c.title);
        for (let i = 0; i < 100 && !(await titles()).some((x) => x.startsWith('regen me')); i++) await page.waitForTimeout(50);
        assert.ok((await titles()).some((x) => x.startsWith('regen me')));
        await page.locator('#chat-list .chat-item.active').getByRole('button', { name: /^Delete/ }).click();
        await page.locator('dialog').getByRole('button', { name: 'Delete' }).click();
        for (let i = 0; i < 100 && (await titles()).some((x) => x.startsWith('regen me')); i++) await page.waitForTimeout(50);
        assert.ok(!(await titles()).some((x) => x.startsWith('regen me')), 'gone from the server');
        assert.equal(await page.locator('#chat-list .chat-open', { hasText: 'regen me' }).count(), 0);
        await ctx.close();
    });

    it('renders an HTML/script payload in a reply as inert text', { timeout: 60000 }, async () => {
        const ctx = await context();
        const page = await ctx.newPage();
        await signIn(page, stack.url, 'wendy', 'wendy-password');
        await page.locator('#new-chat').click();
        const payload = '<img src=x onerror=window.__pwned=1> <script>window.__pwned=2</script> '
            + '<iframe src=javascript:window.__pwned=3></iframe> [click](javascript:window.__pwned=4) <b>bold</b>';
        await sendMessage(page, payload);
        await waitIdle(page);
        const reply = lastReply(page).locator('.content');
        const text = await reply.innerText();
        assert.ok(text.includes('<img src=x onerror=window.__pwned=1>'), text);
        assert.ok(text.includes('<script>window.__pwned=2</script>'), text);
        assert.equal(await page.locator('#messages img, #messages script, #messages iframe, #messages b').count(), 0);
        assert.equal(await page.locator('#messages a[href^="javascript"]').count(), 0);
        await lastReply(page).getByRole('button', { name: 'Copy' }).click();
        await page.waitForTimeout(200);
        assert.equal(await page.evaluate(() => window.__pwned), undefined);
        await ctx.close();
    });

    it('shows no image from another origin in a reply (a link instead) and no data: image', { timeout: 60000 }, async () => {
        await register(stack, 'ivy', 'ivy-password', 100000);   // not in the screenshots' sidebars
        const ctx = await context();
        const page = await ctx.newPage();
        await signIn(page, stack.url, 'ivy', 'ivy-password');
        await sendMessage(page, 'look ![leak](https://example.com/x.png?q=secret) ![proto](//example.com/y.png) '
            + '![dot](data:image/png;base64,iVBORw0KGgo=) ![ours](/assets/no-such.png)');
        await waitIdle(page);
        const reply = lastReply(page).locator('.content');
        assert.deepEqual(await reply.locator('img').evaluateAll((els) => els.map((e) => e.getAttribute('src'))), ['/assets/no-such.png'],
            'only the same-origin image is an image');
        const leak = reply.locator('a', { hasText: 'leak' });
        assert.equal(await leak.getAttribute('href'), 'https://example.com/x.png?q=secret');
        assert.equal(await leak.getAttribute('rel'), 'noopener noreferrer');
        assert.match(await reply.locator('a', { hasText: 'proto' }).getAttribute('href'), /^https?:\/\/example\.com\/y\.png$/);
        assert.match(await reply.innerText(), /\bdot\b/);
        assert.equal(await page.locator('#messages [src^="data:"], #messages a[href^="data:"]').count(), 0);
        await ctx.close();
    });

    it('renders Markdown: highlighted code with a copy button, tables, KaTeX math (JSON import); exports Markdown and JSON', { timeout: 60000 }, async () => {
        const ctx = await context();
        const page = await ctx.newPage();
        await signIn(page, stack.url, 'pete', 'pete-password');
        await importChat(page, 'Imported markdown', [{ role: 'user', text: 'Show me code, a table and some math.' },
            { role: 'assistant', text: MARKDOWN }]);
        const reply = lastReply(page);
        assert.ok(await reply.locator('.code-block .hljs-keyword').count() >= 1, 'code is highlighted');
        assert.equal(await reply.locator('.code-block .code-lang').innerText(), 'c');
        assert.equal(await reply.locator('table td').count(), 6);
        assert.ok(await reply.locator('.katex').count() >= 2, 'inline and display math rendered by KaTeX');
        assert.equal(await reply.locator('.katex-display').count(), 1);
        assert.equal(await page.locator('#messages script').count(), 0);
        await page.screenshot({ path: path.join(SHOTS, 'chat-light.png') });
        // Export as Markdown (the header button) and as JSON (settings): downloads with the text.
        const [md] = await Promise.all([page.waitForEvent('download'), page.locator('#export-md').click()]);
        const mdText = fs.readFileSync(await md.path(), 'utf8');
        assert.equal(md.suggestedFilename(), 'Imported_markdown.md');
        assert.ok(mdText.startsWith('# Imported markdown\n') && mdText.includes('## Assistant') && mdText.includes('int main(void) {'), mdText);
        await page.locator('#open-settings').click();
        const [js] = await Promise.all([page.waitForEvent('download'), page.getByRole('button', { name: 'Export JSON' }).click()]);
        const exported = JSON.parse(fs.readFileSync(await js.path(), 'utf8'));
        assert.equal(exported.format, 'chatweb-chats');
        assert.ok(exported.chats.some((c) => c.title === 'Imported markdown' && c.messages[1].text === MARKDOWN));
        await page.getByRole('button', { name: 'Close' }).click();
        // The copy button copies the code (the clipboard fallback works on plain http too).
        await ctx.grantPermissions(['clipboard-read', 'clipboard-write']);
        await reply.locator('.copy-code').click();
        await reply.getByRole('button', { name: 'Copied' }).waitFor();
        assert.equal(await page.evaluate(() => window.__pwned), undefined);
        await ctx.close();
    });

    it('dark theme; a phone-sized second device: history from the server, auto-scroll that stops when the reader scrolls up', { timeout: 60000 }, async () => {
        const dark = await context({ colorScheme: 'dark' });
        const page = await dark.newPage();
        await signIn(page, stack.url, 'wendy', 'wendy-password');
        assert.equal(await page.evaluate(() => document.documentElement.dataset.theme), 'dark');
        const darkContrast = await placeholderContrast(page);
        assert.ok(darkContrast >= 4.5, `placeholder contrast on dark ${darkContrast.toFixed(2)}:1 (WCAG AA: 4.5)`);
        await importChat(page, 'Imported markdown', [{ role: 'user', text: 'Show me code, a table and some math.' },
            { role: 'assistant', text: MARKDOWN }]);
        await page.screenshot({ path: path.join(SHOTS, 'chat-dark.png') });
        await dark.close();

        const phone = await context({ viewport: { width: 390, height: 844 }, isMobile: true, hasTouch: true, deviceScaleFactor: 2 });
        const p = await phone.newPage();
        await signIn(p, stack.url, 'wendy', 'wendy-password');
        // Another device: the conversation of the first test comes from the server's history.
        await p.locator('#open-menu').click();
        await p.locator('#chat-list .chat-open', { hasText: 'Hello there streaming world' }).click();
        assert.equal(await p.locator('#messages .msg').count(), 4);
        assert.match(await p.locator('#messages .msg.assistant').first().locator('.content').innerText(),
            /^Echo\(\d+ msgs\): Hello there streaming world/);
        await p.locator('#open-menu').click();
        await p.waitForTimeout(300);   // the drawer slides in
        await p.locator('#new-chat').click();
        await p.waitForTimeout(300);   // and out
        // The sidebar is a drawer: hidden until the menu button opens it.
        assert.equal(await p.locator('#chat-list').isVisible(), false);   // hidden off screen, out of the tab order
        const box0 = await p.locator('#sidebar').boundingBox();
        assert.ok(box0.x + box0.width <= 0, `sidebar off screen (x=${box0.x})`);
        // The balance is in the phone's header, on screen without opening the drawer, and follows
        // each reply; so is what the conversation has cost, not cut off.
        const onScreen = async (sel) => {
            const b = await p.locator(sel).boundingBox();
            assert.ok(b && b.width > 0 && b.x >= 0 && b.y >= 0 && b.x + b.width <= 390 && b.y + b.height <= 844, `${sel} on screen: ${JSON.stringify(b)}`);
            assert.ok(await p.locator(sel).evaluate((el) => el.scrollWidth <= el.clientWidth), `${sel} not cut off`);
        };
        const headUnits = () => p.locator('#head-balance').getAttribute('data-units');
        const phone0 = await settled(stack, 'wendy');
        await p.waitForFunction((v) => document.querySelector('#head-balance')?.dataset.units === String(v), phone0.balance);
        await onScreen('#head-balance');
        assert.match(await p.locator('#head-balance').innerText(), new RegExp(phone0.balance.toLocaleString('en-US')));
        await sendMessage(p, 'from my phone [[fake tokens=12]]');
        await waitIdle(p);
        assert.match(await lastReply(p).locator('.content').innerText(), /from my phone/);
        const phone1 = await settled(stack, 'wendy');
        assert.ok(phone1.balance < phone0.balance);
        await p.waitForFunction((v) => document.querySelector('#head-balance')?.dataset.units === String(v), phone1.balance);
        assert.equal(await headUnits(), String(phone1.balance));
        await onScreen('#head-balance');
        assert.match(await p.locator('#chat-spent').innerText(), new RegExp(`${phone0.balance - phone1.balance} tokens`));
        await onScreen('#chat-spent');
        const composer = await p.locator('#composer').boundingBox();
        assert.ok(composer.y + composer.height <= 844 && composer.width <= 390, 'the composer fits the screen');
        await p.screenshot({ path: path.join(SHOTS, 'phone.png') });

        // Auto-scroll: a long reply is followed while the reader is at the bottom, and no longer
        // once they scroll up.
        await sendMessage(p, 'scroll test [[fake tps=80 tokens=600]]');
        const box = p.locator('#messages');
        await p.waitForFunction(() => {
            const m = document.querySelector('#messages');
            return document.querySelector('#messages .msg.loading') && m.scrollHeight > m.clientHeight + 300;
        }, null, { timeout: STEP_MS });
        await p.waitForTimeout(150);
        const following = await box.evaluate((m) => m.scrollHeight - m.clientHeight - m.scrollTop);
        assert.ok(following < 80, `at the bottom while streaming (${following} px left)`);
        await box.evaluate((m) => { m.scrollTop = 0; });
        await p.waitForTimeout(600);
        assert.ok(await p.locator('#messages .msg.loading').count() === 1, 'still streaming');
        assert.equal(await box.evaluate((m) => m.scrollTop), 0, 'stays where the reader scrolled');
        await p.keyboard.press('Escape');
        await waitIdle(p);
        await p.locator('#open-menu').click();
        await p.waitForTimeout(300);
        const box1 = await p.locator('#sidebar').boundingBox();
        assert.ok(box1.x >= 0, 'the drawer opened');
        await p.locator('#chat-list .chat-open', { hasText: 'from my phone' }).waitFor();
        await p.screenshot({ path: path.join(SHOTS, 'phone-menu.png') });
        await phone.close();
    });

    it('a user without balance sees the message and the recharge link', { timeout: 60000 }, async () => {
        const ctx = await context();
        const page = await ctx.newPage();
        await signIn(page, stack.url, 'broke', 'broke-password');
        await page.locator('#recharge-link').waitFor();
        assert.equal(await page.locator('#recharge-link').getAttribute('href'), '/admin');
        assert.match(await page.locator('#balance').innerText(), /used up/);
        await sendMessage(page, 'hello');
        await waitIdle(page);
        const reply = lastReply(page);
        assert.ok(await reply.evaluate((el) => el.classList.contains('error')));
        assert.match(await reply.locator('.content').innerText(), /Token数已用尽/);
        assert.equal(await reply.locator('.content a').getAttribute('href'), '/admin');
        await ctx.close();
    });

    it('the model picker offers CHAT_MODELS and the next reply uses the chosen one', { timeout: 60000 }, async () => {
        await register(stack, 'mo', 'mo-password', 100000);
        const ctx = await context();
        const page = await ctx.newPage();
        await signIn(page, stack.url, 'mo', 'mo-password');
        const picker = page.getByLabel('Model', { exact: true });
        await picker.waitFor();
        assert.deepEqual(await picker.locator('option').allInnerTexts(), ['gpt-4o-mini', 'gpt-4o']);
        assert.equal(await picker.inputValue(), 'gpt-4o-mini');
        await picker.selectOption('gpt-4o');
        for (let i = 0; i < 100 && (await check(stack, 'mo')).model !== 'gpt-4o'; i++) await page.waitForTimeout(50);
        assert.equal((await check(stack, 'mo')).model, 'gpt-4o');
        await sendMessage(page, 'which model [[fake tokens=3]]');
        await waitIdle(page);
        const reqs = (await getJSON(`${stack.fakeUpstream.url}/_fake/requests`)).requests;
        assert.equal(reqs[reqs.length - 1].body.model, 'gpt-4o');
        await page.reload();
        await picker.waitFor();
        assert.equal(await picker.inputValue(), 'gpt-4o');
        await ctx.close();
    });

    it('continues a reply cut by the length limit', { timeout: 60000 }, async () => {
        await register(stack, 'lenny', 'lenny-password', 1000000);
        const ctx = await context();
        const page = await ctx.newPage();
        const sent = [];
        page.on('request', (req) => {
            if (req.url().endsWith('/api/chat-process')) sent.push(JSON.parse(req.postData()));
        });
        await signIn(page, stack.url, 'lenny', 'lenny-password');
        // 1500 planned tokens, at most 1000 in the context budget (OPENAI_MAX_TOKENS): the reply
        // ends with finish_reason "length", and the page asks chat for the rest with an empty
        // prompt whose parent is the cut reply. The fake reads directives only in a last user
        // message, so the continuation is its default 20 tokens and ends with "stop".
        await sendMessage(page, 'go long [[fake tokens=1500]]');
        await waitIdle(page);
        assert.equal(sent.length, 2, JSON.stringify(sent).slice(0, 300));
        assert.equal(sent[0].prompt, 'go long [[fake tokens=1500]]');
        assert.equal(sent[1].prompt, '');
        assert.match(sent[1].options.parentMessageId, /^[0-9a-f-]{36}$/);
        const text = await lastReply(page).locator('.content').innerText();
        assert.ok(text.startsWith('Echo(2 msgs): go long'), text.slice(0, 40));
        assert.match(text, /Echo\(\d msgs\):/g);
        assert.equal(text.match(/Echo\(/g).length, 2, 'the continuation is appended to the same bubble');
        assert.equal(await page.locator('#messages .msg').count(), 2);
        await ctx.close();
    });

    it('signs in with an API key and signs out', { timeout: 60000 }, async () => {
        const k = await ops(stack, { action: 'create_key', i_username: 'pete', name: 'browser' });
        assert.equal(k.status, 'Success');
        const ctx = await context();
        const page = await ctx.newPage();
        await page.goto(stack.url);
        await page.getByRole('tab', { name: 'API key' }).click();
        await page.getByLabel('API key').fill(k.data.key);
        await page.getByRole('button', { name: 'Sign in' }).click();
        await page.locator('#composer-input').waitFor({ timeout: STEP_MS });
        assert.match(await page.locator('.who').innerText(), /pete/);
        await page.waitForTimeout(300);
        assert.equal(await page.locator('#model-picker').isVisible(), false, 'an API key cannot change the model');
        await page.locator('#sign-out').click();
        await page.getByRole('button', { name: 'Sign in' }).waitFor();
        assert.equal(await page.evaluate(() => localStorage.getItem('chatweb.token')), null);
        // A wrong password is refused with the server's message.
        await page.getByLabel('Username').fill('pete');
        await page.getByLabel('Password').fill('not-the-password');
        await page.getByRole('button', { name: 'Sign in' }).click();
        await page.getByText(/Sign-in failed/).waitFor();
        await ctx.close();
    });

    it('admin console: creates a user, recharges and blocks them', { timeout: 60000 }, async () => {
        const ctx = await context();
        const page = await ctx.newPage();
        await page.goto(`${stack.url}/admin/`);
        await page.getByLabel('Operator key').fill('wrong-key-wrong-key-wrong-key');
        await page.getByRole('button', { name: 'Sign in' }).click();
        await page.getByText('Header Opskey error').waitFor();
        await page.getByLabel('Operator key').fill(OPS_KEY);
        await page.getByRole('button', { name: 'Sign in' }).click();
        await page.locator('#users tbody tr').first().waitFor({ timeout: STEP_MS });

        await page.getByLabel('Username').fill('newbie');
        await page.getByLabel('Password').fill('newbie-password');
        await page.getByLabel(/Initial balance/).fill('5000');
        await page.locator('#create-submit').click();
        const row = page.locator('#users tr[data-user="newbie"]');
        await row.waitFor({ timeout: STEP_MS });
        assert.equal((await check(stack, 'newbie')).balance, 5000);

        await row.getByRole('button', { name: 'Recharge' }).click();
        await page.locator('#dlg-f0').fill('2500');
        await page.locator('#dlg-ok').click();
        await page.waitForFunction(() => document.querySelector('#users tr[data-user="newbie"] [data-col="remaining"]')?.textContent === '7,500', null, { timeout: STEP_MS });
        assert.equal((await check(stack, 'newbie')).balance, 7500);

        await row.getByRole('button', { name: 'Block' }).click();
        await page.getByRole('button', { name: 'Block' }).last().click();   // the confirmation
        await page.locator('#users tr[data-user="newbie"] [data-col="state"]', { hasText: 'blocked' }).waitFor({ timeout: STEP_MS });
        assert.equal((await check(stack, 'newbie')).blocked, true);

        // Search narrows the list; the ledger shows the recharge.
        await page.getByLabel('Search users').fill('newb');
        await page.waitForFunction(() => document.querySelectorAll('#users tbody tr').length === 1, null, { timeout: STEP_MS });
        await page.screenshot({ path: path.join(SHOTS, 'admin.png') });
        await page.locator('#users tr[data-user="newbie"]').getByRole('button', { name: 'Usage' }).click();
        await page.locator('#ledger tbody tr').first().waitFor({ timeout: STEP_MS });
        assert.match(await page.locator('#ledger tbody').innerText(), /\b2,500\b/); // units grouped like balances
        await page.getByRole('button', { name: 'Close' }).click();

        // Model prices: set one (stored in SQL by billing), see it listed, delete it.
        await page.getByRole('textbox', { name: /^Model/ }).fill('gpt-4o-mini');
        await page.getByRole('textbox', { name: /^Input/ }).fill('0.15');
        await page.getByRole('textbox', { name: /^Output/ }).fill('0.6');
        await page.locator('#price-submit').click();
        const price = page.locator('#prices tr[data-model="gpt-4o-mini"]');
        await price.waitFor({ timeout: STEP_MS });
        assert.match(await price.innerText(), /0\.15\s+0\.6\s+sql/);
        let listed = (await ops(stack, { action: 'list_prices' })).data.prices;
        assert.deepEqual(listed.filter((p) => p.model === 'gpt-4o-mini').map((p) => [p.input_milli, p.output_milli, p.source]), [[150, 600, 'sql']]);
        await price.getByRole('button', { name: 'Delete' }).click();
        await page.getByRole('button', { name: 'Delete' }).last().click();   // the confirmation
        await price.waitFor({ state: 'detached', timeout: STEP_MS });
        listed = (await ops(stack, { action: 'list_prices' })).data.prices;
        assert.ok(!listed.some((p) => p.model === 'gpt-4o-mini'));
        // The events stream (the recharge above was relayed) and every service's health.
        const events = (await ops(stack, { action: 'events' })).data;
        await page.getByRole('button', { name: 'Refresh: Billing events stream' }).click();
        // wait for the refreshed figure, not one shown before the click
        await page.waitForFunction((min) => {
            const t = document.querySelector('#events-length')?.textContent || '';
            return /^[\d,]+$/.test(t) && Number(t.replace(/,/g, '')) >= min;
        }, events.length, { timeout: STEP_MS });
        assert.ok(Number((await page.locator('#events-length').innerText()).replace(/,/g, '')) >= events.length);
        // every service answers ready (asked again for a while: under a loaded sanitizer build a
        // /readyz can miss HEALTH_TIMEOUT_MS once)
        let health;
        for (const end = Date.now() + STEP_MS; ;) {
            health = (await ops(stack, { action: 'health' })).data;
            if ((health.total >= 4 && health.ready === health.total) || Date.now() > end) break;
            await new Promise((r) => setTimeout(r, 250));
        }
        assert.ok(health.total >= 4 && health.ready === health.total, JSON.stringify(health));
        await page.getByRole('button', { name: 'Refresh: Service health' }).click();
        await page.waitForFunction((n) => document.querySelectorAll('#health-table .pill.ok').length === n,
            health.total, { timeout: STEP_MS });
        assert.equal(await page.locator('#health-table tbody tr').count(), health.total);

        // The key is kept in memory only.
        assert.equal(await page.evaluate(() => JSON.stringify(localStorage) + JSON.stringify(sessionStorage)), '{}{}');
        await page.reload();
        await page.getByLabel('Operator key').waitFor();
        await ctx.close();
    });

    /** The last request the fake upstream got (the chat service's body to /v1/chat/completions). */
    async function lastUpstream() {
        const reqs = (await getJSON(`${stack.fakeUpstream.url}/_fake/requests`)).requests;
        assert.ok(reqs.length > 0, 'the fake upstream got a request');
        return reqs[reqs.length - 1].body;
    }

    /** The titles of the user's conversations on the server (auth's history), with the page's token. */
    async function serverTitles(page) {
        const token = await page.evaluate(() => localStorage.getItem('chatweb.token'));
        const r = await postJSON(`${stack.url}/api/conversations`, { action: 'list' }, { headers: { Authorization: `Bearer ${token}` } });
        return r.json().data.map((c) => c.title);
    }

    /** Polls fn() until pred(value) holds (the page saves to the server a moment after a change). */
    async function eventually(fn, pred, what) {
        let v;
        for (const end = Date.now() + STEP_MS; ;) {
            v = await fn();
            if (pred(v) || Date.now() > end) break;
            await new Promise((r) => setTimeout(r, 50));
        }
        assert.ok(pred(v), `${what}: ${JSON.stringify(v)}`);
        return v;
    }

    it('sidebar: renames a conversation (kept on the server), searches titles and messages, clears everything', { timeout: 60000 }, async () => {
        await register(stack, 'rita', 'rita-password', 100000);
        const ctx = await context();
        const page = await ctx.newPage();
        await signIn(page, stack.url, 'rita', 'rita-password');
        await sendMessage(page, 'apples are red [[fake tokens=3]]');
        await waitIdle(page);
        await page.locator('#new-chat').click();
        await sendMessage(page, 'bananas are yellow [[fake tokens=3]]');
        await waitIdle(page);
        const items = page.locator('#chat-list .chat-item');
        assert.equal(await items.count(), 2);

        // Rename (the pencil shows on hover): Enter keeps the new title, here and on the server.
        const apples = items.filter({ hasText: 'apples are red' });
        await apples.hover();
        await apples.getByRole('button', { name: /^Rename/ }).click();
        await page.locator('#chat-list .rename-input').fill('Fruit salad');
        await page.locator('#chat-list .rename-input').press('Enter');
        await items.filter({ hasText: 'Fruit salad' }).waitFor();
        assert.equal(await items.filter({ hasText: 'apples are red' }).count(), 0);
        await eventually(() => serverTitles(page), (t) => t.includes('Fruit salad') && !t.some((x) => x.startsWith('apples')), 'renamed on the server');
        // Escape gives up a rename.
        const bananas = items.filter({ hasText: 'bananas are yellow' });
        await bananas.getByRole('button', { name: /^Rename/ }).click();   // the active conversation shows its buttons
        await page.locator('#chat-list .rename-input').fill('Not this');
        await page.locator('#chat-list .rename-input').press('Escape');
        await bananas.waitFor();
        assert.equal(await items.filter({ hasText: 'Not this' }).count(), 0);
        await page.reload();
        await items.filter({ hasText: 'Fruit salad' }).waitFor();

        // Search matches titles and the text of messages, case-insensitively.
        const search = page.getByLabel('Search conversations');
        const shown = async () => (await page.locator('#chat-list .chat-open').allInnerTexts()).sort();
        await search.fill('FRUIT');
        assert.deepEqual(await shown(), ['Fruit salad']);
        await search.fill('yellow');
        assert.deepEqual(await shown(), ['bananas are yellow [[fake tokens=3]]']);
        await search.fill('Echo(');   // both replies
        assert.equal((await shown()).length, 2);
        await search.fill('no such words');
        assert.deepEqual(await shown(), []);
        await search.fill('');
        assert.equal((await shown()).length, 2);

        // Delete all: one empty conversation is left, here, on the server and after a reload;
        // a rename made just before (its upload still waiting in sync.js) does not bring one back.
        await bananas.getByRole('button', { name: /^Rename/ }).click();
        await page.locator('#chat-list .rename-input').fill('Last words');
        await page.locator('#chat-list .rename-input').press('Enter');
        await page.locator('#clear-all').click();
        await page.locator('dialog').getByRole('button', { name: 'Delete' }).click();
        await page.locator('dialog').waitFor({ state: 'detached' });   // closing it is a task of its own
        await items.filter({ hasText: 'Fruit salad' }).waitFor({ state: 'detached' });
        assert.deepEqual(await shown(), ['New chat']);
        assert.equal(await page.locator('#messages .msg').count(), 0);
        await eventually(() => serverTitles(page), (t) => t.length === 0, 'nothing left on the server');
        await page.waitForTimeout(600);   // past sync.js's 300 ms upload delay
        assert.deepEqual(await serverTitles(page), [], 'still nothing on the server');
        await page.reload();
        await page.locator('#composer-input').waitFor();
        await page.waitForTimeout(300);   // the history sync after sign-in
        assert.deepEqual(await shown(), ['New chat']);
        await ctx.close();
    });

    it('a deletion that never reached the server is carried out after a reload, not undone', { timeout: 60000 }, async () => {
        await register(stack, 'dora', 'dora-password', 100000);
        const ctx = await context();
        const page = await ctx.newPage();
        await signIn(page, stack.url, 'dora', 'dora-password');
        await sendMessage(page, 'keep me [[fake tokens=3]]');
        await waitIdle(page);
        await page.locator('#new-chat').click();
        await sendMessage(page, 'drop me [[fake tokens=3]]');
        await waitIdle(page);
        await page.locator('#new-chat').click();
        await sendMessage(page, 'and me [[fake tokens=3]]');
        await waitIdle(page);
        await eventually(() => serverTitles(page), (t) => t.length === 3, 'three on the server');
        // The network loses the deletions: the server keeps its copies.
        const lost = [];
        await page.route('**/api/conversations', async (route) => {
            const body = route.request().postDataJSON();
            if (body.action === 'delete' || body.action === 'clear') {
                lost.push(body.action);
                return route.abort();
            }
            return route.continue();
        });
        const items = page.locator('#chat-list .chat-item');
        const drop = items.filter({ hasText: 'drop me' });
        await drop.hover();
        await drop.getByRole('button', { name: /^Delete/ }).click();
        await page.locator('dialog').getByRole('button', { name: 'Delete' }).click();
        await drop.waitFor({ state: 'detached' });
        assert.deepEqual(lost, ['delete']);
        await page.reload();
        await page.locator('#composer-input').waitFor();
        // The sync after sign-in meets the server's copy of "drop me" and deletes it (lost again).
        await eventually(() => Promise.resolve(lost.length), (n) => n >= 2, 'the deletion was sent again');
        await page.unroute('**/api/conversations');
        await page.reload();
        await page.locator('#composer-input').waitFor();
        await eventually(() => serverTitles(page), (t) => t.length === 2 && !t.some((x) => x.startsWith('drop me')), 'deleted on the server');
        assert.equal(await items.filter({ hasText: 'drop me' }).count(), 0, 'not restored here');
        // The same for "delete all".
        await page.route('**/api/conversations', async (route) =>
            (route.request().postDataJSON().action === 'clear' ? route.abort() : route.continue()));
        await page.locator('#clear-all').click();
        await page.locator('dialog').getByRole('button', { name: 'Delete' }).click();
        await page.locator('dialog').waitFor({ state: 'detached' });
        await page.unroute('**/api/conversations');
        assert.equal((await serverTitles(page)).length, 2, 'the clear was lost');
        await page.reload();
        await page.locator('#composer-input').waitFor();
        await eventually(() => serverTitles(page), (t) => t.length === 0, 'cleared on the server after the reload');
        assert.deepEqual(await page.locator('#chat-list .chat-open').allInnerTexts(), ['New chat']);
        await ctx.close();
    });

    it('prompt library: prompts added in the library come up with / in the message box and are sent', { timeout: 60000 }, async () => {
        await register(stack, 'pam', 'pam-password', 100000);
        const ctx = await context();
        const page = await ctx.newPage();
        await signIn(page, stack.url, 'pam', 'pam-password');
        await page.locator('#open-prompts').click();
        const dlg = page.locator('dialog');
        for (const [title, text] of [['French', 'Translate into French: good morning'], ['Summary', 'Summarise this text:']]) {
            await dlg.getByLabel('Title').fill(title);
            await dlg.getByLabel('Prompt', { exact: true }).fill(text);
            await dlg.getByRole('button', { name: 'Add prompt' }).click();
        }
        assert.deepEqual(await dlg.locator('.prompt-list strong').allInnerTexts(), ['French', 'Summary']);
        await dlg.getByRole('button', { name: 'Close' }).click();
        await page.reload();   // the library is kept in the browser

        const input = page.locator('#composer-input');
        const suggest = page.locator('#prompt-suggest');
        await input.click();
        await page.keyboard.type('/');
        await suggest.waitFor();
        assert.deepEqual(await suggest.locator('[role=option] strong').allInnerTexts(), ['French', 'Summary']);
        await page.keyboard.type('fr');
        assert.deepEqual(await suggest.locator('[role=option] strong').allInnerTexts(), ['French']);
        await page.keyboard.press('ArrowDown');
        // The chosen option is announced from the message box, which keeps the focus.
        const chosen = suggest.locator('[role=option][aria-selected="true"]');
        assert.equal(await chosen.locator('strong').innerText(), 'French');
        assert.equal(await input.getAttribute('aria-activedescendant'), await chosen.getAttribute('id'));
        assert.equal(await page.evaluate(() => document.activeElement.id), 'composer-input');
        await page.keyboard.press('Enter');
        assert.equal(await input.inputValue(), 'Translate into French: good morning');
        assert.equal(await input.getAttribute('aria-activedescendant'), null);
        assert.equal(await suggest.isVisible(), false);
        assert.equal(await page.locator('#messages .msg').count(), 0, 'Enter took the prompt, it did not send');
        await page.keyboard.type(' [[fake tokens=3]]');
        await page.keyboard.press('Enter');
        await waitIdle(page);
        const body = await lastUpstream();
        assert.deepEqual(body.messages[body.messages.length - 1], { role: 'user', content: 'Translate into French: good morning [[fake tokens=3]]' });
        // A click picks one too; no match, or a space (a /command's argument), shows nothing.
        await input.fill('');
        await page.keyboard.type('/sum');
        await suggest.locator('[role=option]', { hasText: 'Summary' }).click();
        assert.equal(await input.inputValue(), 'Summarise this text:');
        await input.fill('');
        await page.keyboard.type('/zzz');
        assert.equal(await suggest.isVisible(), false);
        await input.fill('');
        await page.keyboard.type('/model gpt');
        assert.equal(await suggest.isVisible(), false);
        await ctx.close();
    });

    it('settings: the system prompt, temperature and top_p reach the upstream request, and are kept', { timeout: 60000 }, async () => {
        await register(stack, 'sam', 'sam-password', 100000);
        const ctx = await context();
        const page = await ctx.newPage();
        await signIn(page, stack.url, 'sam', 'sam-password');
        // The defaults first (store.js): the default system prompt, temperature 0.8, top_p 1.
        await sendMessage(page, 'defaults [[fake tokens=3]]');
        await waitIdle(page);
        let body = await lastUpstream();
        assert.equal(body.messages[0].role, 'system');
        assert.match(body.messages[0].content, /^You are a helpful assistant/);
        assert.equal(body.temperature, 0.8);
        assert.equal(body.top_p, 1);

        await page.locator('#open-settings').click();
        const dlg = page.locator('dialog');
        await dlg.getByLabel('System prompt').fill('You are a terse pirate.');
        await dlg.getByLabel(/^Temperature/).fill('0.3');
        await dlg.getByLabel(/^Top P/).fill('0.55');
        assert.equal(await dlg.locator('output[for="set-temp"]').innerText(), '0.3', 'the value is shown next to the slider');
        await dlg.getByLabel('Send the conversation as context').uncheck();
        await dlg.getByRole('button', { name: 'Save' }).click();
        await dlg.waitFor({ state: 'detached' });   // the settings apply on the dialog's close event
        await sendMessage(page, 'pirate [[fake tokens=3]]');
        await waitIdle(page);
        body = await lastUpstream();
        // No context: the system prompt and this message only.
        assert.deepEqual(body.messages, [{ role: 'system', content: 'You are a terse pirate.' },
            { role: 'user', content: 'pirate [[fake tokens=3]]' }]);
        assert.equal(body.temperature, 0.3);
        assert.equal(body.top_p, 0.55);

        // Kept over a reload; an empty system prompt sends none; context back on sends the history.
        await page.reload();
        await page.locator('#open-settings').click();
        assert.equal(await dlg.getByLabel('System prompt').inputValue(), 'You are a terse pirate.');
        assert.equal(await dlg.getByLabel(/^Temperature/).inputValue(), '0.3');
        assert.equal(await dlg.getByLabel(/^Top P/).inputValue(), '0.55');
        await dlg.getByLabel('System prompt').fill('');
        await dlg.getByLabel('Send the conversation as context').check();
        await dlg.getByRole('button', { name: 'Save' }).click();
        await dlg.waitFor({ state: 'detached' });
        await sendMessage(page, 'again [[fake tokens=3]]');
        await waitIdle(page);
        body = await lastUpstream();
        assert.deepEqual(body.messages.map((m) => m.role), ['user', 'assistant', 'user']);
        assert.equal(body.messages[0].content, 'pirate [[fake tokens=3]]');
        assert.equal(body.temperature, 0.3);
        await ctx.close();
    });

    it('speaks Chinese to a zh-CN browser (chat and admin), English when chosen in the settings', { timeout: 60000 }, async () => {
        await register(stack, 'zhou', 'zhou-password', 100000);
        const ctx = await context({ locale: 'zh-CN' });
        const page = await ctx.newPage();
        await page.goto(stack.url);
        assert.equal(await page.evaluate(() => document.documentElement.lang), 'zh-CN');
        await page.getByLabel('用户名').fill('zhou');
        await page.getByLabel('密码').fill('zhou-password');
        await page.getByRole('button', { name: '登录' }).click();
        await page.locator('#composer-input').waitFor();
        assert.equal(await page.locator('#new-chat').innerText(), '新建对话');
        assert.match(await page.locator('#composer-input').getAttribute('placeholder'), /^输入消息/);
        assert.match(await page.locator('#balance').innerText(), /^余额: 100,000 tokens/);
        assert.equal(await page.locator('#sign-out').innerText(), '退出登录');
        await page.locator('#test-upstream', { hasText: '测试模式：回复来自内置的测试上游' }).waitFor();
        await page.locator('#open-settings').click();
        await page.getByRole('heading', { name: '设置' }).waitFor();
        await page.getByLabel('语言').selectOption('en');
        await page.getByRole('button', { name: '保存' }).click();
        await page.locator('#new-chat', { hasText: 'New chat' }).waitFor();
        assert.equal(await page.evaluate(() => document.documentElement.lang), 'en');
        await page.reload();
        await page.locator('#new-chat', { hasText: 'New chat' }).waitFor();

        const admin = await ctx.newPage();
        await admin.goto(`${stack.url}/admin/`);
        await admin.getByRole('heading', { name: 'chatweb 管理' }).waitFor();
        await admin.getByLabel('运维密钥 (OPS_KEY)').fill(OPS_KEY);
        await admin.getByRole('button', { name: '登录' }).click();
        await admin.getByRole('heading', { name: '用户', exact: true }).waitFor();
        // the heading shows before the users' list has loaded: wait for the row (CI once counted 0)
        const zhouRow = admin.locator('#users tr[data-user="zhou"]');
        await zhouRow.waitFor();
        assert.equal(await zhouRow.getByRole('button', { name: '充值' }).count(), 1);
        await ctx.close();
    });

    it('keyboard: Shift+Enter for a new line, Enter sends, Ctrl+Shift+O a new chat, Ctrl+K search, Esc closes a dialog', { timeout: 60000 }, async () => {
        await register(stack, 'kay', 'kay-password', 100000);
        const ctx = await context();
        const page = await ctx.newPage();
        await signIn(page, stack.url, 'kay', 'kay-password');
        const focused = () => page.evaluate(() => document.activeElement && document.activeElement.id);
        assert.equal(await focused(), 'composer-input', 'the message box has the focus after sign-in');
        await page.keyboard.type('line one [[fake tokens=3]]');
        await page.keyboard.press('Shift+Enter');
        await page.keyboard.type('line two');
        assert.equal(await page.locator('#composer-input').inputValue(), 'line one [[fake tokens=3]]\nline two');
        assert.equal(await page.locator('#messages .msg').count(), 0);
        await page.keyboard.press('Enter');
        await waitIdle(page);
        assert.equal(await page.locator('#messages .msg.user .content').innerText(), 'line one [[fake tokens=3]]\nline two');
        assert.equal(await page.locator('#composer-input').inputValue(), '');

        await page.keyboard.press('Control+Shift+O');
        await page.locator('#chat-list .chat-item.active', { hasText: 'New chat' }).waitFor();
        assert.equal(await page.locator('#messages .msg').count(), 0);
        assert.equal(await page.locator('#chat-list .chat-item').count(), 2);
        assert.equal(await focused(), 'composer-input');

        await page.keyboard.press('Control+K');
        assert.equal(await focused(), 'chat-search');
        await page.keyboard.type('line two');
        assert.deepEqual(await page.locator('#chat-list .chat-open').allInnerTexts(), ['line one [[fake tokens=3]] line two']);

        await page.locator('#open-settings').click();
        await page.locator('dialog[open]').waitFor();
        await page.keyboard.press('Escape');
        await page.locator('dialog').waitFor({ state: 'detached' });
        assert.equal(await focused(), 'open-settings', 'the focus goes back to the button that opened the dialog');
        await ctx.close();
    });

    it('phone: the closed drawer is out of the tab order, the open one holds the focus, Esc closes it', { timeout: 60000 }, async () => {
        const phone = await context({ viewport: { width: 390, height: 844 }, isMobile: true, hasTouch: true });
        const p = await phone.newPage();
        await signIn(p, stack.url, 'kay', 'kay-password');
        // Where the focus is: 'sidebar', 'main' or the id of something else.
        const where = () => p.evaluate(() => {
            const a = document.activeElement;
            if (!a || a === document.body) return 'body';
            return a.closest('#sidebar') ? 'sidebar' : a.closest('#main') ? 'main' : a.id || a.tagName;
        });
        const tabs = async (n) => {
            const out = [];
            for (let i = 0; i < n; i++) {
                await p.keyboard.press('Tab');
                out.push(await where());
            }
            return out;
        };
        // Closed (off screen): Tab goes round the chat and never into the drawer.
        await p.locator('#open-menu').focus();
        const closed = await tabs(20);
        assert.ok(!closed.includes('sidebar'), `Tab reached the closed drawer: ${closed}`);
        assert.ok(closed.includes('main'));
        // Open: the search has the focus and Tab stays in the drawer.
        await p.locator('#open-menu').click();
        assert.equal(await p.evaluate(() => document.activeElement.id), 'chat-search');
        const open = await tabs(20);
        assert.ok(!open.includes('main'), `Tab left the open drawer for the chat behind it: ${open}`);
        assert.ok(open.includes('sidebar'));
        // Esc closes it and gives the focus back to the menu button.
        await p.keyboard.press('Escape');
        await p.locator('#sidebar').waitFor({ state: 'hidden' });
        assert.equal(await p.evaluate(() => document.activeElement.id), 'open-menu');
        assert.ok(!(await tabs(20)).includes('sidebar'));
        await phone.close();
    });

    /** Signs in to /admin/ with the ops key and waits for the users table. */
    async function adminSignIn(page) {
        await page.goto(`${stack.url}/admin/`);
        await page.getByLabel('Operator key').fill(OPS_KEY);
        await page.getByRole('button', { name: 'Sign in' }).click();
        await page.locator('#users tbody tr').first().waitFor();
    }

    it('admin console: pages through users, API keys (shown once, revoked), password reset, user delete', { timeout: 90000 }, async () => {
        // 25 users that one search finds: two pages of 20 (PER_PAGE in admin.js).
        const names = Array.from({ length: 25 }, (_, i) => `pager${String(i + 1).padStart(2, '0')}`);
        for (const n of names) await register(stack, n, `${n}-password`, 1000);
        const ctx = await context();
        const page = await ctx.newPage();
        await adminSignIn(page);
        await page.getByLabel('Search users').fill('pager');
        await page.locator('#page-info', { hasText: 'Page 1 of 2 (25 users)' }).waitFor();
        const rowNames = () => page.locator('#users tbody tr').evaluateAll((rs) => rs.map((r) => r.dataset.user));
        const first = await rowNames();
        assert.equal(first.length, 20);
        assert.equal(await page.getByRole('button', { name: 'Previous' }).isDisabled(), true);
        await page.getByRole('button', { name: 'Next' }).click();
        await page.locator('#page-info', { hasText: 'Page 2 of 2 (25 users)' }).waitFor();
        const second = await rowNames();
        assert.equal(second.length, 5);
        assert.deepEqual([...first, ...second].sort(), names, 'every user once, on one page or the other');
        assert.equal(await page.getByRole('button', { name: 'Next' }).isDisabled(), true);
        await page.getByRole('button', { name: 'Previous' }).click();
        await page.locator('#page-info', { hasText: 'Page 1 of 2' }).waitFor();
        assert.deepEqual(await rowNames(), first);

        // API keys: the new key is shown once, works, is listed by prefix only, and stops on revoke.
        await page.getByLabel('Search users').fill('pager01');
        await page.locator('#page-info', { hasText: '(1 users)' }).waitFor();
        const row = page.locator('#users tr[data-user="pager01"]');
        await row.getByRole('button', { name: 'Keys' }).click();
        let dlg = page.locator('dialog');
        await dlg.getByText('No keys.').waitFor();
        await dlg.getByLabel('Key name').fill('ci-key');
        await dlg.getByLabel(/^Requests per minute/).fill('30');
        await dlg.getByRole('button', { name: 'Create key' }).click();
        const key = (await dlg.locator('#new-key').innerText()).trim();
        assert.match(key, /^sk-/);
        assert.equal((await postJSON(`${stack.url}/api/verify`, { token: key })).json().status, 'Success', 'the key signs in');
        const listed = (await ops(stack, { action: 'list_keys', i_username: 'pager01' })).data;
        assert.equal(listed.length, 1);
        assert.equal(listed[0].name, 'ci-key');
        assert.equal(listed[0].rpm, 30);
        assert.ok(key.startsWith(listed[0].prefix));
        const keyRow = dlg.locator('tbody tr', { hasText: 'ci-key' });
        await keyRow.waitFor();
        assert.match(await keyRow.innerText(), new RegExp(`${listed[0].prefix}\\s+ci-key\\s+30\\s+0\\s+`));
        await dlg.getByRole('button', { name: 'Close' }).click();
        await row.getByRole('button', { name: 'Keys' }).click();
        dlg = page.locator('dialog');
        await dlg.locator('tbody tr', { hasText: 'ci-key' }).waitFor();
        assert.equal(await dlg.locator('#new-key').count(), 0, 'not shown a second time');
        assert.ok(!(await dlg.innerText()).includes(key));
        await dlg.locator('tbody tr', { hasText: 'ci-key' }).getByRole('button', { name: 'Revoke' }).click();
        await dlg.locator('tbody tr', { hasText: 'ci-key' }).getByText('revoked').waitFor();
        assert.equal((await ops(stack, { action: 'list_keys', i_username: 'pager01' })).data[0].revoked, true);
        await eventually(async () => (await postJSON(`${stack.url}/api/verify`, { token: key })).json().status,
            (s) => s !== 'Success', 'a revoked key is refused');
        await dlg.getByRole('button', { name: 'Close' }).click();

        // Password reset: the new password signs in, the old one no longer does.
        const login = async (password) => (await postJSON(`${stack.url}/api/login`, { username: 'pager01', password })).json().status;
        assert.equal(await login('pager01-password'), 'Success');
        await row.getByRole('button', { name: 'Password' }).click();
        await page.getByLabel('New password').fill('a-brand-new-password');
        await page.locator('#dlg-ok').click();
        await page.locator('#toast', { hasText: 'Done: pager01' }).waitFor();
        assert.equal(await login('a-brand-new-password'), 'Success');
        assert.notEqual(await login('pager01-password'), 'Success');

        // Delete: asked first, then gone from the list and from auth.
        await row.getByRole('button', { name: 'Delete' }).click();
        await page.locator('dialog').getByRole('button', { name: 'Delete' }).click();
        await row.waitFor({ state: 'detached' });
        const gone = await ops(stack, { action: 'check', i_username: 'pager01' });
        assert.notEqual(gone.status, 'Success', JSON.stringify(gone));
        assert.notEqual(await login('a-brand-new-password'), 'Success');
        await page.getByLabel('Search users').fill('pager');
        await page.locator('#page-info', { hasText: 'Page 1 of 2 (24 users)' }).waitFor();
        await ctx.close();
    });

    /** Runs SQL on the stack's SQLite database (this stack has no MariaDB); the rows as arrays of strings. */
    function sqlite(sql) {
        const r = spawnSync('sqlite3', ['-cmd', '.timeout 5000', '-separator', '\t', path.join(stack.dir, 'chatweb.db'), sql], { encoding: 'utf8' });
        assert.ifError(r.error);   // scripts/bootstrap installs sqlite3: missing is a failure
        assert.equal(r.status, 0, r.stderr);
        return r.stdout.split('\n').filter(Boolean).map((l) => l.split('\t'));
    }

    /** Types name into the users search and returns the row once it is the only one listed. */
    async function adminFindUser(page, name) {
        await page.getByLabel('Search users').fill(name);
        await page.waitForFunction((n) => {
            const rows = document.querySelectorAll('#users tbody tr');
            return rows.length === 1 && rows[0].dataset.user === n;
        }, name);
        return page.locator(`#users tr[data-user="${name}"]`);
    }

    // Four more of the console's features on one signed-in page (each sign-in costs about a
    // second of the file's time): an API key's limits, unblocking, the usage chart, the ledger's
    // pages.
    describe('admin console, signed in once', () => {
        let ctx, page;
        before(async () => {
            // An operator far east of UTC: the usage chart's days are billing's (UTC) all the same.
            ctx = await context({ timezoneId: 'Pacific/Kiritimati' });
            page = await ctx.newPage();
            await adminSignIn(page);
        });
        after(async () => {
            if (ctx) await ctx.close();
        });
        // A test that failed with a dialog open leaves the next one the console itself.
        beforeEach(() => page.evaluate(() => document.querySelectorAll('dialog[open]').forEach((d) => d.close())));

        it('admin console: edits an API key\'s limits (models, rpm, tpm) and clears them', { timeout: 30000 }, async () => {
            await register(stack, 'limitkeeper', 'limitkeeper-password', 1000);
            const keys = async () => (await ops(stack, { action: 'list_keys', i_username: 'limitkeeper' })).data;
            const row = await adminFindUser(page, 'limitkeeper');
            await row.getByRole('button', { name: 'Keys' }).click();
            const panel = page.getByRole('dialog', { name: 'Keys: limitkeeper' });
            // An error from inside the dialog is shown in it, not dimmed (and inert) behind its
            // backdrop; a click dismisses it.
            await panel.getByLabel(/^Allowed models/).fill('gpt 4o');
            await panel.getByRole('button', { name: 'Create key' }).click();
            const toast = page.locator('#toast');
            await toast.waitFor({ state: 'visible' });
            assert.match(await toast.innerText(), /model/i);
            assert.ok(await toast.evaluate((el) => {
                const r = el.getBoundingClientRect();
                return el.contains(document.elementFromPoint(r.left + r.width / 2, r.top + r.height / 2));
            }), 'the message is on top of the dialog');
            await toast.click();
            await toast.waitFor({ state: 'hidden' });
            // Models typed as the list shows them ("a, b"), which the ops API refused as one string.
            await panel.getByLabel('Key name').fill('ci');
            await panel.getByLabel(/^Allowed models/).fill('gpt-4o-mini, gpt-4o');
            await panel.getByLabel(/^Requests per minute/).fill('10');
            await panel.getByRole('button', { name: 'Create key' }).click();
            await panel.locator('#new-key').waitFor();
            let k = (await keys())[0];
            assert.deepEqual([k.name, k.models, k.rpm, k.tpm], ['ci', ['gpt-4o-mini', 'gpt-4o'], 10, 0]);
            const keyRow = panel.locator('tbody tr', { hasText: k.prefix });
            await keyRow.waitFor();
            assert.match(await keyRow.innerText(), new RegExp(`${k.prefix}\\s+ci\\s+gpt-4o-mini, gpt-4o\\s+10\\s+0\\s`));
            // Limits opens with the key's limits; new ones replace them.
            await keyRow.getByRole('button', { name: 'Limits' }).click();
            let form = page.getByRole('dialog', { name: `Limits: ${k.prefix}` });
            assert.deepEqual([await form.getByLabel(/^Allowed models/).inputValue(), await form.getByLabel(/^Requests per minute/).inputValue(),
                await form.getByLabel(/^Tokens per minute/).inputValue()], ['gpt-4o-mini,gpt-4o', '10', '0']);
            await form.getByLabel(/^Allowed models/).fill('gpt-4o , gpt-4.1,');
            await form.getByLabel(/^Requests per minute/).fill('5');
            await form.getByLabel(/^Tokens per minute/).fill('2000');
            await form.getByRole('button', { name: 'OK' }).click();
            await panel.locator('tbody tr', { hasText: k.prefix }).filter({ hasText: '2000' }).waitFor();
            assert.match(await keyRow.innerText(), new RegExp(`${k.prefix}\\s+ci\\s+gpt-4o, gpt-4\\.1\\s+5\\s+2000\\s`));
            k = (await keys())[0];
            assert.deepEqual([k.models, k.rpm, k.tpm], [['gpt-4o', 'gpt-4.1'], 5, 2000]);
            // Cleared: any model, no rate limit.
            await keyRow.getByRole('button', { name: 'Limits' }).click();
            form = page.getByRole('dialog', { name: `Limits: ${k.prefix}` });
            await form.getByLabel(/^Allowed models/).fill('');
            await form.getByLabel(/^Requests per minute/).fill('0');
            await form.getByLabel(/^Tokens per minute/).fill('0');
            await form.getByRole('button', { name: 'OK' }).click();
            await panel.locator('tbody tr', { hasText: k.prefix }).filter({ hasNotText: '2000' }).waitFor();
            assert.match(await keyRow.innerText(), new RegExp(`${k.prefix}\\s+ci\\s+0\\s+0\\s`));
            k = (await keys())[0];
            assert.deepEqual([k.models, k.rpm, k.tpm], [[], 0, 0]);
            await panel.getByRole('button', { name: 'Close' }).click();
        });

        it('admin console: unblocks a blocked user, who can sign in again', { timeout: 30000 }, async () => {
            await register(stack, 'unblockee', 'unblockee-password', 1000);
            assert.equal((await ops(stack, { action: 'block', i_username: 'unblockee' })).status, 'Success');
            const login = async () => (await postJSON(`${stack.url}/api/login`, { username: 'unblockee', password: 'unblockee-password' })).json();
            assert.notEqual((await login()).status, 'Success', 'blocked: refused');
            const row = await adminFindUser(page, 'unblockee');
            assert.equal(await row.locator('[data-col="state"]').innerText(), 'blocked');
            assert.equal(await row.getByRole('button', { name: 'Block', exact: true }).count(), 0);
            await row.getByRole('button', { name: 'Unblock' }).click();
            await row.locator('[data-col="state"]', { hasText: 'active' }).waitFor();
            await row.getByRole('button', { name: 'Block', exact: true }).waitFor();
            assert.equal(await row.getByRole('button', { name: 'Unblock' }).count(), 0);
            assert.equal((await check(stack, 'unblockee')).blocked, false);
            assert.equal((await login()).status, 'Success', 'unblocked: signs in');
        });

        it('admin console: the usage chart draws each of the last 30 days\' charges over its date', { timeout: 30000 }, async () => {
            await register(stack, 'chartist', 'chartist-password', 100000);
            // Four real charges, three of them then moved back in the database (billing has no way
            // to date a charge in the past): today, 3, 12 and 40 days ago.
            for (const tokens of [40, 10, 25, 30]) {
                const r = await streamBody(`${stack.url}/api/chat-process`, { method: 'POST', timeoutMs: STEP_MS,
                    headers: { authorization: basicAuth('chartist', 'chartist-password'), 'content-type': 'application/json' },
                    body: JSON.stringify({ prompt: `chart [[fake tps=0 tokens=${tokens}]]` }) });
                assert.equal(r.status, 200);
                await settled(stack, 'chartist');
            }
            const { id } = await check(stack, 'chartist');
            const charges = sqlite(`SELECT id, day, -units FROM billing_ledger WHERE user_id = ${id} AND kind = 'charge' ORDER BY id`).map((r) => r.map(Number));
            assert.equal(charges.length, 4);
            const DAY = 86400000;
            const AGO = [0, 3, 12, 40];
            charges.forEach(([lid], i) => sqlite(`UPDATE billing_ledger SET day = day - ${AGO[i]}, created_at_ms = created_at_ms - ${AGO[i] * DAY} WHERE id = ${lid}`));
            assert.deepEqual(sqlite(`SELECT day FROM billing_ledger WHERE id IN (${charges.map(([lid]) => lid)}) ORDER BY id`).map(Number),
                charges.map(([, day], i) => day - AGO[i]), 'moved in the database');
            const iso = (day) => new Date(day * DAY).toISOString().slice(0, 10);
            // What billing reports: the three days within 30, oldest first here.
            const want = charges.slice(0, 3).map(([, day, units], i) => ({ day: iso(day - AGO[i]), units, ago: AGO[i] })).reverse();
            const daily = (await ops(stack, { action: 'usage', i_username: 'chartist', days: 30, limit: 1 })).data.daily;
            assert.deepEqual(daily.map((d) => [d.day, d.units]).sort(), want.map((w) => [w.day, w.units]));

            const row = await adminFindUser(page, 'chartist');
            await row.getByRole('button', { name: 'Usage' }).click();
            const dlg = page.getByRole('dialog', { name: 'Usage: chartist' });
            const chart = dlg.getByRole('img', { name: 'Daily usage (last 30 days)' });
            await chart.waitFor();
            // The bars as drawn on screen, left to right: each one's tooltip, centre and height.
            const { box, bars, labels } = await chart.evaluate((svg) => {
                const b = svg.getBoundingClientRect();
                return { box: { left: b.left, right: b.right },
                    bars: [...svg.querySelectorAll('rect')].map((r) => {
                        const rb = r.getBoundingClientRect();
                        return { title: r.querySelector('title').textContent, mid: (rb.left + rb.right) / 2, height: rb.height };
                    }).sort((a, b) => a.mid - b.mid),
                    labels: [...svg.querySelectorAll('text')].map((t) => t.textContent) };
            });
            assert.deepEqual(bars.map((b) => b.title.split(' (')[0]), want.map((w) => `${w.day}: ${w.units}`), 'one bar per day with charges, the 40-day-old one left out');
            // 30 slots ending today: a bar stands over its own day, gaps where nothing was charged.
            const slot = (box.right - box.left) / 30;
            bars.forEach((b, i) => assert.ok(Math.abs(b.mid - (box.right - (want[i].ago + 0.5) * slot)) < 1,
                `${want[i].day}: centred at ${b.mid.toFixed(1)}, its slot's centre is ${(box.right - (want[i].ago + 0.5) * slot).toFixed(1)}`));
            // Heights in proportion to the units, the largest the full height.
            const tallest = Math.max(...bars.map((b) => b.height));
            const most = Math.max(...want.map((w) => w.units));
            bars.forEach((b, i) => assert.ok(Math.abs(b.height - (tallest * want[i].units) / most) < 1, `${want[i].day}: ${b.height.toFixed(1)} px high`));
            assert.ok(labels.includes(want[2].day.slice(5)), `today's date under the chart: ${labels}`);
            await dlg.getByRole('button', { name: 'Close' }).click();
        });

        it('admin console: the ledger pages back 50 entries at a time, each shown once', { timeout: 30000 }, async () => {
            // 60 ledger entries (the initial credit and 59 recharges of 1 to 59 tokens): a page of 50
            // and one of 10.
            await register(stack, 'ledgerly', 'ledgerly-password', 1000);
            for (let i = 1; i <= 59; i++) assert.equal((await ops(stack, { action: 'recharge', i_username: 'ledgerly', count: i })).status, 'Success');
            const { id } = await check(stack, 'ledgerly');
            const stored = sqlite(`SELECT units, balance_after FROM billing_ledger WHERE user_id = ${id} ORDER BY id DESC`).map((r) => r.map(Number));
            assert.equal(stored.length, 60);
            const row = await adminFindUser(page, 'ledgerly');
            const asked = [];   // the page's usage requests
            const onRequest = (req) => req.url().endsWith('/accounts') && JSON.parse(req.postData()).action === 'usage' && asked.push(req);
            page.on('request', onRequest);
            await row.getByRole('button', { name: 'Usage' }).click();
            const dlg = page.getByRole('dialog', { name: 'Usage: ledgerly' });
            const entries = dlg.locator('#ledger tbody tr');
            const shown = () => entries.evaluateAll((rs) => rs.map((r) => [r.children[2].textContent, r.children[5].textContent]
                .map((v) => Number(v.replace(/,/g, '')))));
            await entries.nth(49).waitFor();
            assert.deepEqual(await shown(), stored.slice(0, 50), 'the newest 50, newest first (units, balance after)');
            await dlg.getByText('No usage in the last 30 days.').waitFor();   // recharges are not usage
            // An impatient double click on "Older entries" brings the last 10, once.
            await dlg.getByRole('button', { name: 'Older entries' }).dblclick();
            await entries.nth(59).waitFor();
            await dlg.getByRole('button', { name: 'Older entries' }).waitFor({ state: 'hidden' });
            page.off('request', onRequest);
            await Promise.all(asked.map((req) => req.response()));
            assert.equal(asked.length, 2, 'the first page, then the older one once');
            assert.deepEqual(await shown(), stored, 'all 60, each once, in order');
            await dlg.getByRole('button', { name: 'Close' }).click();
        });
    });

    it('admin console: number headers sit over their values; on a phone each user is a card with its actions on screen', { timeout: 60000 }, async () => {
        await register(stack, 'phoebe', 'phoebe-password', 3000);
        const ctx = await context();
        const page = await ctx.newPage();
        await adminSignIn(page);
        await page.locator('#prices tbody tr').first().waitFor();
        await page.locator('#health-table tbody tr').first().waitFor();
        // Each header is aligned as its column's values (numbers to the right), and every cell of
        // a row ends on the row's bottom border (the Actions cell too).
        for (const sel of ['#users', '#prices', '#health-table']) {
            const cols = await page.evaluate((sel) => {
                const table = document.querySelector(sel);
                const row = table.querySelector('tbody tr');
                return [...table.querySelectorAll('thead th')].map((th, i) => ({
                    name: th.textContent, head: getComputedStyle(th).textAlign, value: getComputedStyle(row.children[i]).textAlign,
                    bottom: row.children[i].getBoundingClientRect().bottom - row.getBoundingClientRect().bottom,
                }));
            }, sel);
            for (const c of cols) {
                assert.equal(c.head, c.value, `${sel} "${c.name}": header ${c.head}, values ${c.value}`);
                assert.ok(Math.abs(c.bottom) < 1, `${sel} "${c.name}": the cell ends ${c.bottom.toFixed(1)} px from its row's bottom`);
            }
        }
        assert.equal(await page.locator('#users thead th', { hasText: 'Remaining' }).evaluate((el) => getComputedStyle(el).textAlign), 'right');
        await ctx.close();

        // A phone: no sideways scrolling, the first user's actions on the first screen.
        const phone = await context({ viewport: { width: 390, height: 844 }, isMobile: true, hasTouch: true, deviceScaleFactor: 2, bypassCSP: true });
        const p = await phone.newPage();
        await adminSignIn(p);
        const noSideways = () => p.evaluate(() => [document.scrollingElement.scrollWidth,
            ...[...document.querySelectorAll('#users, .table-wrap')].map((e) => e.scrollWidth - e.clientWidth + 390)]);
        for (const w of await noSideways()) assert.ok(w <= 390, `content ${w} px wide in a 390 px screen`);
        const first = p.locator('#users tbody tr').first();
        const inView = async (loc, what) => {
            const b = await loc.boundingBox();
            assert.ok(b && b.x >= 0 && b.x + b.width <= 390 && b.y >= 0 && b.y + b.height <= 844, `${what} on screen: ${JSON.stringify(b)}`);
        };
        for (const name of ['Recharge', 'Block', 'Keys', 'Usage']) await inView(first.getByRole('button', { name }), `the first user's ${name}`);
        await inView(first.locator('[data-col="state"]'), 'the first user\'s state');
        // Each value is labelled with its column on the card.
        assert.equal(await first.locator('[data-col="remaining"]').evaluate((el) => getComputedStyle(el, '::before').content), '"Remaining"');
        // And the button works there: recharge phoebe.
        await p.getByLabel('Search users').fill('phoebe');
        await p.waitForFunction(() => document.querySelectorAll('#users tbody tr').length === 1);
        const row = p.locator('#users tr[data-user="phoebe"]');
        await inView(row.getByRole('button', { name: 'Recharge' }), 'phoebe\'s Recharge');
        await row.getByRole('button', { name: 'Recharge' }).tap();
        await p.locator('#dlg-f0').fill('500');
        await p.locator('#dlg-ok').tap();
        await p.waitForFunction(() => document.querySelector('#users tr[data-user="phoebe"] [data-col="remaining"]')?.textContent.endsWith('3,500'));
        assert.equal((await check(stack, 'phoebe')).balance, 3500);
        await p.getByLabel('Search users').fill('');
        await p.waitForFunction(() => document.querySelectorAll('#users tbody tr').length > 1);
        await p.locator('#toast').waitFor({ state: 'hidden' });
        await p.screenshot({ path: path.join(SHOTS, 'admin-phone.png') });
        assert.deepEqual(await axeViolations(p), [], 'axe on the phone-sized admin console');
        await phone.close();
    });

    it('accessibility: axe-core finds no serious or critical WCAG 2 A/AA violation (sign-in, chat light and dark, phone, settings, admin)', { timeout: 120000 }, async () => {
        await register(stack, 'ally', 'ally-password', 100000);
        const found = [];
        const audit = async (page, screen) => {
            const v = await axeViolations(page);
            if (v.length) found.push(`${screen}:\n${v.join('\n')}`);
        };
        // bypassCSP: axe is injected as an inline script, which the page's policy rightly refuses.
        for (const scheme of ['light', 'dark']) {
            const ctx = await context({ colorScheme: scheme, bypassCSP: true });
            const page = await ctx.newPage();
            await page.goto(stack.url);
            await page.getByLabel('Username').waitFor();
            await audit(page, `sign-in (${scheme})`);
            await signIn(page, stack.url, 'ally', 'ally-password');
            if (scheme === 'light') {   // a streamed reply (with its Regenerate button), once
                await sendMessage(page, 'audit me [[fake tokens=8]]');
                await waitIdle(page);
                await lastReply(page).locator('.spent').waitFor();   // what the reply cost, beside its buttons
                await audit(page, 'chat with a streamed reply (light)');
                // The prompt library, then its list under the message box with one chosen.
                await page.locator('#open-prompts').click();
                await page.locator('dialog').getByLabel('Title').fill('Audit');
                await page.locator('dialog').getByLabel('Prompt', { exact: true }).fill('Check this page.');
                await page.locator('dialog').getByRole('button', { name: 'Add prompt' }).click();
                await audit(page, 'prompt library (light)');
                await page.locator('dialog').getByRole('button', { name: 'Close' }).click();
                await page.locator('dialog').waitFor({ state: 'detached' });
                await page.locator('#composer-input').click();
                await page.keyboard.type('/au');
                await page.keyboard.press('ArrowDown');
                await page.locator('#prompt-suggest [aria-selected="true"]').waitFor();
                await audit(page, 'prompt suggestions (light)');
                await page.locator('#composer-input').fill('');
            }
            await importChat(page, `Audit markdown ${scheme}`, [{ role: 'user', text: 'Show me code, a table and some math.' },
                { role: 'assistant', text: MARKDOWN }]);
            await audit(page, `chat (${scheme})`);
            await page.locator('#open-settings').click();
            await page.locator('dialog[open]').waitFor();
            await audit(page, `settings (${scheme})`);
            await ctx.close();
        }
        const phone = await context({ viewport: { width: 390, height: 844 }, isMobile: true, hasTouch: true, bypassCSP: true });
        const p = await phone.newPage();
        await signIn(p, stack.url, 'ally', 'ally-password');
        await p.locator('#chat-list .chat-open', { hasText: 'audit me' }).dispatchEvent('click');
        await audit(p, 'phone chat');
        await p.locator('#open-menu').click();
        await p.waitForTimeout(300);   // the drawer slides in
        await audit(p, 'phone chat, conversations open');
        await phone.close();
        // The admin console in both schemes, with a blocked user's red pill among the rows.
        await register(stack, 'ally-blocked', 'ally-password', 0);
        assert.equal((await ops(stack, { action: 'block', i_username: 'ally-blocked' })).status, 'Success');
        for (const scheme of ['light', 'dark']) {
            const ctx = await context({ colorScheme: scheme, bypassCSP: true });
            const admin = await ctx.newPage();
            await admin.goto(`${stack.url}/admin/`);
            await admin.getByLabel('Operator key').waitFor();
            await audit(admin, `admin sign-in (${scheme})`);
            await adminSignIn(admin);
            await admin.getByLabel('Search users').fill('ally');
            await admin.locator('#page-info', { hasText: '(2 users)' }).waitFor();
            await admin.locator('#users .pill.bad').waitFor();
            await admin.locator('#health-table').waitFor();
            await audit(admin, `admin users (${scheme})`);
            await admin.locator('#users tr[data-user="ally"]').getByRole('button', { name: 'Usage' }).click();
            await admin.locator('#ledger tbody tr').first().waitFor();
            await audit(admin, `admin usage (${scheme})`);
            await admin.locator('dialog').getByRole('button', { name: 'Close' }).click();
            await admin.locator('dialog').waitFor({ state: 'detached' });
            await admin.locator('#users tr[data-user="ally"]').getByRole('button', { name: 'Keys' }).click();
            await admin.locator('dialog').getByRole('button', { name: 'Create key' }).click();
            await admin.locator('dialog #new-key').waitFor();
            await admin.locator('dialog tbody tr').first().waitFor();
            await audit(admin, `admin API keys, a new key shown (${scheme})`);
            await ctx.close();
        }
        assert.deepEqual(found, [], found.join('\n\n'));
    });

    it('no request left the origin and no page threw', () => {
        assert.deepEqual(consoleErrors, []);
    });
});
