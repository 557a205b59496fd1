// HTTP helpers for the integration tests (node:http only; no keep-alive, so nothing lingers).
import http from 'node:http';

/** "Basic base64(user:pass)". */
export function basicAuth(user, password) {
    return `Basic ${Buffer.from(`${user}:${password}`).toString('base64')}`;
}

function send(url, { method = 'GET', headers = {}, body, json, timeoutMs = 10000, localAddress } = {}, onResponse) {
    return new Promise((resolve, reject) => {
        const h = { ...headers };
        let payload = body;
        if (json !== undefined) {
            payload = JSON.stringify(json);
            if (!Object.keys(h).some((k) => k.toLowerCase() === 'content-type')) h['content-type'] = 'application/json';
        }
        if (payload !== undefined) h['content-length'] = Buffer.byteLength(payload);
        const req = http.request(url, { method, headers: h, agent: false, localAddress }, (res) => onResponse(res, resolve, reject));
        req.setTimeout(timeoutMs, () => req.destroy(new Error(`${method} ${url}: no answer within ${timeoutMs} ms`)));
        req.on('error', reject);
        req.end(payload);
    });
}

/**
 * One request; resolves {status, headers, body (string), json()} once the whole body arrived.
 * opts: method, headers, body (string/Buffer) or json (serialized, content-type set), timeoutMs,
 * localAddress (the source address to connect from, e.g. 127.0.0.2: another peer on loopback).
 */
export function request(url, opts = {}) {
    return send(url, opts, (res, resolve, reject) => {
        const chunks = [];
        res.on('data', (c) => chunks.push(c));
        res.on('error', reject);
        res.on('end', () => {
            const body = Buffer.concat(chunks).toString('utf8');
            resolve({ status: res.statusCode, headers: res.headers, body, json: () => JSON.parse(body) });
        });
    });
}

/** POST a JSON body; same result as request(). */
export function postJSON(url, value, opts = {}) {
    return request(url, { ...opts, method: opts.method || 'POST', json: value });
}

/** GET and parse JSON; throws when the status is not 2xx. */
export async function getJSON(url, opts = {}) {
    const r = await request(url, opts);
    if (r.status < 200 || r.status > 299) throw new Error(`GET ${url}: ${r.status} ${r.body.slice(0, 200)}`);
    return r.json();
}

/**
 * A request whose body is read chunk by chunk, with the time each chunk arrived. Resolves
 * {status, headers, chunks: [{ms, text}], text, firstChunkMs, lastChunkMs} where ms counts from
 * the moment the request was sent. Same options as request().
 */
export function streamBody(url, opts = {}) {
    const t0 = process.hrtime.bigint();
    const ms = () => Number(process.hrtime.bigint() - t0) / 1e6;
    return send(url, opts, (res, resolve, reject) => {
        const chunks = [];
        res.setEncoding('utf8');
        res.on('data', (text) => chunks.push({ ms: ms(), text }));
        res.on('error', reject);
        res.on('end', () => resolve({
            status: res.statusCode, headers: res.headers, chunks, text: chunks.map((c) => c.text).join(''),
            firstChunkMs: chunks.length ? chunks[0].ms : null,
            lastChunkMs: chunks.length ? chunks[chunks.length - 1].ms : null,
        }));
    });
}

/** Parse a text/event-stream body into [{event, data, id}] (data lines joined with "\n"). */
export function parseSSE(text) {
    const events = [];
    for (const block of text.split(/\r?\n\r?\n/)) {
        if (!block.trim()) continue;
        const ev = { event: 'message', data: [], id: undefined };
        for (const line of block.split(/\r?\n/)) {
            if (line.startsWith(':')) continue;
            const i = line.indexOf(':');
            const field = i < 0 ? line : line.slice(0, i);
            const value = i < 0 ? '' : line.slice(i + 1).replace(/^ /, '');
            if (field === 'data') ev.data.push(value);
            else if (field === 'event') ev.event = value;
            else if (field === 'id') ev.id = value;
        }
        events.push({ ...ev, data: ev.data.join('\n') });
    }
    return events;
}
