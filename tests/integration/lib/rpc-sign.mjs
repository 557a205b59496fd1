// Signs internal RPC calls the way common/rpc.c does (svc_rpc_sign), so the tests can call the
// services' /rpc/ ports directly:
//   X-Rpc-Timestamp: <unix seconds>
//   X-Rpc-Signature: hex HMAC-SHA256(RPC_SECRET, "chatweb-rpc-1\n" + method + "\n" + path + "\n" +
//                                    hex(SHA-256(body)) + "\n" + timestamp)
// The secret defaults to the one deploy/local/stack.mjs gives every service this process starts.
import crypto from 'node:crypto';
import { defaultRpcSecret } from '../../../deploy/local/stack.mjs';

/** The signature of one call (lowercase hex). */
export function rpcSignature(secret, method, pathname, body, timestamp) {
    const bodyHash = crypto.createHash('sha256').update(body).digest('hex');
    return crypto.createHmac('sha256', secret)
        .update(`chatweb-rpc-1\n${method}\n${pathname}\n${bodyHash}\n${timestamp}`).digest('hex');
}

/**
 * The headers that authenticate a POST of body to pathname. secret null: none (an unsigned call);
 * undefined: this process's stack secret. timestamp: unix seconds (default now).
 */
export function rpcAuthHeaders(pathname, body, { secret, timestamp } = {}) {
    if (secret === null) return {};
    const key = secret === undefined ? defaultRpcSecret() : secret;
    const ts = timestamp === undefined ? Math.floor(Date.now() / 1000) : timestamp;
    return { 'x-rpc-timestamp': String(ts), 'x-rpc-signature': rpcSignature(key, 'POST', pathname, body, ts) };
}
