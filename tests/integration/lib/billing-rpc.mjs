// Speaks the billing service's protobuf RPC (proto/billing.proto) from Node, with protobufjs
// (tests/package.json), plus a minimal RESP reader for checking the Redis Stream.
//
//   const b = billingClient('http://127.0.0.1:PORT');
//   const r = await b.call('Reserve', { request_id: 'r1', user_id: 7, prompt_tokens: 10, max_completion_tokens: 90 });
//   r.status === 200 ? r.msg.result : r.error.code
import http from 'node:http';
import net from 'node:net';
import path from 'node:path';
import { createRequire } from 'node:module';
import { ROOT } from '../../../deploy/local/stack.mjs';
import { rpcAuthHeaders } from './rpc-sign.mjs';

const require = createRequire(import.meta.url);
const protobuf = require('protobufjs');

const root = new protobuf.Root();
root.loadSync([path.join(ROOT, 'proto', 'billing.proto'), path.join(ROOT, 'proto', 'rpc.proto')], { keepCase: true });
export const types = {
    RpcError: root.lookupType('chatweb.rpc.RpcError'),
    BillingEvent: root.lookupType('chatweb.billing.BillingEvent'),
};
const METHODS = ['CreateAccount', 'GetAccount', 'DeleteAccount', 'Reserve', 'Settle', 'Release', 'LeaseSync',
    'Recharge', 'Adjust', 'Usage', 'ListPrices', 'SetPrice', 'DeletePrice', 'EventsInfo'];
for (const m of METHODS) {
    types[`${m}Request`] = root.lookupType(`chatweb.billing.${m}Request`);
    types[`${m}Response`] = root.lookupType(`chatweb.billing.${m}Response`);
}
const TO_OBJECT = { longs: Number, enums: String, defaults: true, arrays: true };

export function decode(type, buf) {
    return type.toObject(type.decode(buf), TO_OBJECT);
}

/**
 * POST raw bytes to /rpc/Billing/<method>, signed with this process's stack secret (secret: another
 * one, or null for an unsigned call; timestamp: unix seconds to sign with); resolves
 * {status, body: Buffer}.
 */
export function postRaw(baseUrl, method, body, { agent, timeoutMs = 15000, secret, timestamp } = {}) {
    const url = new URL(`${baseUrl}/rpc/Billing/${method}`);
    return new Promise((resolve, reject) => {
        const req = http.request(url, {
            method: 'POST', agent: agent || false,
            headers: {
                'content-type': 'application/x-protobuf', 'content-length': body.length,
                ...rpcAuthHeaders(url.pathname, body, { secret, timestamp }),
            },
        }, (res) => {
            const chunks = [];
            res.on('data', (c) => chunks.push(c));
            res.on('error', reject);
            res.on('end', () => resolve({ status: res.statusCode, body: Buffer.concat(chunks) }));
        });
        req.setTimeout(timeoutMs, () => req.destroy(new Error(`${method}: no answer within ${timeoutMs} ms`)));
        req.on('error', reject);
        req.end(body);
    });
}

/**
 * A client for one base URL with a keep-alive agent. call() resolves {status, msg} or {status, error}.
 * secret: as for postRaw.
 */
export function billingClient(baseUrl, { maxSockets = 64, secret } = {}) {
    const agent = new http.Agent({ keepAlive: true, maxSockets });
    return {
        baseUrl,
        agent,
        async call(method, req) {
            const T = types[`${method}Request`];
            const body = Buffer.from(T.encode(T.fromObject(req)).finish());
            const r = await postRaw(baseUrl, method, body, { agent, secret });
            if (r.status === 200) return { status: 200, msg: decode(types[`${method}Response`], r.body) };
            let error;
            try { error = decode(types.RpcError, r.body); } catch { error = { code: 0, message: r.body.toString() }; }
            return { status: r.status, error };
        },
        /** Like call() but throws unless 200. */
        async ok(method, req) {
            const r = await this.call(method, req);
            if (r.status !== 200) throw new Error(`${method} ${JSON.stringify(req)}: ${r.status} ${JSON.stringify(r.error)}`);
            return r.msg;
        },
        close() { agent.destroy(); },
    };
}

// ---- a minimal RESP client (enough for XRANGE / DEL / PING in tests) ----

function parseResp(buf, i) {
    const end = buf.indexOf('\r\n', i);
    if (end < 0) return null;
    const t = String.fromCharCode(buf[i]);
    const line = buf.toString('utf8', i + 1, end);
    if (t === '+' || t === '-' || t === ':') return { v: t === ':' ? Number(line) : (t === '-' ? new Error(line) : line), i: end + 2 };
    if (t === '$') {
        const n = Number(line);
        if (n < 0) return { v: null, i: end + 2 };
        if (buf.length < end + 2 + n + 2) return null;
        return { v: buf.subarray(end + 2, end + 2 + n), i: end + 2 + n + 2 };
    }
    if (t === '*') {
        const n = Number(line);
        if (n < 0) return { v: null, i: end + 2 };
        const arr = [];
        let j = end + 2;
        for (let k = 0; k < n; k++) {
            const r = parseResp(buf, j);
            if (!r) return null;
            arr.push(r.v);
            j = r.i;
        }
        return { v: arr, i: j };
    }
    throw new Error(`bad RESP type ${t}`);
}

/** Runs one Redis command; resolves the parsed reply (bulk strings as Buffers). */
export function redisCall(url, args, timeoutMs = 5000) {
    const u = new URL(url);
    return new Promise((resolve, reject) => {
        const sock = net.connect({ host: u.hostname, port: Number(u.port || 6379) });
        let buf = Buffer.alloc(0);
        const timer = setTimeout(() => sock.destroy(new Error('redis timeout')), timeoutMs);
        // The stack's Redis has a password (in the URL): AUTH first, and its +OK is skipped.
        const auth = u.password ? (u.username ? ['AUTH', decodeURIComponent(u.username), decodeURIComponent(u.password)]
            : ['AUTH', decodeURIComponent(u.password)]) : null;
        const encode = (cmd) => {
            let out = `*${cmd.length}\r\n`;
            for (const a of cmd) out += `$${Buffer.byteLength(String(a))}\r\n${a}\r\n`;
            return out;
        };
        sock.on('connect', () => sock.write((auth ? encode(auth) : '') + encode(args)));
        sock.on('data', (d) => {
            buf = Buffer.concat([buf, d]);
            let r = parseResp(buf, 0);
            if (r && auth) {
                if (r.v instanceof Error) { clearTimeout(timer); sock.destroy(); resolve(r.v); return; }
                r = parseResp(buf, r.i);
            }
            if (r) { clearTimeout(timer); sock.destroy(); resolve(r.v); }
        });
        sock.on('error', (e) => { clearTimeout(timer); reject(e); });
    });
}

/** Every entry of a stream as {streamId, id, type, v, pb (decoded), json (parsed)}. */
export async function readStream(url, stream) {
    const out = [];
    let start = '-';
    for (;;) {
        const batch = await redisCall(url, ['XRANGE', stream, start, '+', 'COUNT', '1000']);
        if (batch instanceof Error) throw batch;
        for (const [sid, fields] of batch) {
            const f = {};
            for (let k = 0; k < fields.length; k += 2) f[fields[k].toString()] = fields[k + 1];
            out.push({
                streamId: sid.toString(), id: f.id.toString(), type: f.type.toString(), v: f.v.toString(),
                pb: decode(types.BillingEvent, f.pb), json: JSON.parse(f.json.toString()),
            });
        }
        if (batch.length < 1000) return out;
        start = `(${batch[batch.length - 1][0].toString()}`;
    }
}
