// Calls the internal protobuf RPC of chatweb services from the integration tests (auth's tests):
// POST /rpc/<Service>/<Method> with Content-Type application/x-protobuf, messages from proto/.
import http from 'node:http';
import path from 'node:path';
import { createRequire } from 'node:module';
import { ROOT } from '../../../deploy/local/stack.mjs';
import { rpcAuthHeaders } from './rpc-sign.mjs';

const require = createRequire(import.meta.url);
const protobuf = require('protobufjs');

const root = new protobuf.Root();
root.loadSync([path.join(ROOT, 'proto', 'auth.proto'), path.join(ROOT, 'proto', 'billing.proto'),
    path.join(ROOT, 'proto', 'rpc.proto')], { keepCase: false });

/** The protobufjs type of a fully qualified message name, e.g. 'chatweb.auth.AuthenticateRequest'. */
export function type(name) {
    return root.lookupType(name);
}

/**
 * Calls baseUrl + /rpc/<svc>/<method> with `req` (a plain object) encoded as <pkg>.<method>Request.
 * Resolves {status, message (decoded <method>Response as a plain object with enums as names and
 * defaults filled in), error (decoded RpcError when status != 200)}. The call is signed with this
 * process's stack secret (secret: another one, or null for an unsigned call).
 */
export function rpc(baseUrl, svc, method, req, { pkg = `chatweb.${svc.toLowerCase()}`, timeoutMs = 5000, secret } = {}) {
    const reqType = type(`${pkg}.${method}Request`);
    const respType = type(`${pkg}.${method}Response`);
    const body = Buffer.from(reqType.encode(reqType.fromObject(req)).finish());
    const url = new URL(`${baseUrl}/rpc/${svc}/${method}`);
    return new Promise((resolve, reject) => {
        const r = http.request(url, {
            method: 'POST', agent: false,
            headers: {
                'content-type': 'application/x-protobuf', 'content-length': body.length,
                ...rpcAuthHeaders(url.pathname, body, { secret }),
            },
        }, (res) => {
            const chunks = [];
            res.on('data', (c) => chunks.push(c));
            res.on('error', reject);
            res.on('end', () => {
                const buf = Buffer.concat(chunks);
                const opts = { enums: String, longs: Number, defaults: true, arrays: true };
                if (res.statusCode === 200) resolve({ status: 200, message: respType.toObject(respType.decode(buf), opts) });
                else {
                    let error = null;
                    try { error = type('chatweb.rpc.RpcError').toObject(type('chatweb.rpc.RpcError').decode(buf), opts); } catch { /* text */ }
                    resolve({ status: res.statusCode, error, text: buf.toString('utf8') });
                }
            });
        });
        r.setTimeout(timeoutMs, () => r.destroy(new Error(`rpc ${svc}.${method}: no answer within ${timeoutMs} ms`)));
        r.on('error', reject);
        r.end(body);
    });
}

/** Authenticate(authorization, cookie, client_ip) against auth at baseUrl. */
export function authenticate(baseUrl, authorization, { cookie = '', clientIp = '127.0.0.1' } = {}) {
    return rpc(baseUrl, 'Auth', 'Authenticate', { authorization, cookie, clientIp }).then((r) => r.message);
}
