// The Helm chart (deploy/k8s/chatweb, issue 11 items 2 and 4), checked offline: helm lint --strict,
// helm template for the default values and deploy/k8s/examples/production.yaml, every rendered
// manifest validated against the Kubernetes 1.27 schemas, a wrongly typed values file refused, and
// the properties the chart promises (probes, grace period, security, HPA/PDB per service, the
// migration hook, network policies).
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { CHART, ROOT, helm, render, validate, YAML } from './lib.mjs';

const PROD = path.join(ROOT, 'deploy/k8s/examples/production.yaml');
const SERVICES = ['auth', 'billing', 'chat', 'proxy'];
// The two inputs the chart cannot default: where MySQL and Redis are (or in-cluster ones).
const REQUIRED = ['secrets.db=mysql://chatweb:pw@mysql.example:3306/chatweb', 'secrets.redisUrl=redis://:pw@redis.example:6379/0'];

function tmpValues(obj) {
    const f = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'chatweb-values-')), 'values.yaml');
    fs.writeFileSync(f, YAML.stringify(obj));
    return f;
}

const byKind = (docs, kind) => docs.filter((d) => d.kind === kind);
const named = (docs, kind, name) => docs.find((d) => d.kind === kind && d.metadata.name === name);

function assertValid(docs) {
    const errors = [];
    const skipped = [];
    for (const d of docs) {
        const e = validate(d);
        if (e === null) skipped.push(d.kind);
        else for (const m of e) errors.push(`${d.kind}/${d.metadata.name}: ${m}`);
    }
    assert.deepEqual(errors, []);
    // Only the Prometheus operator's CRD has no schema in kubernetes-models.
    assert.deepEqual([...new Set(skipped)].filter((k) => k !== 'ServiceMonitor'), []);
    return docs.length - skipped.length;
}

describe('helm lint --strict', () => {
    it('passes with the default values and with the production example', () => {
        for (const args of [[], ['-f', PROD]]) {
            const r = helm(['lint', '--strict', CHART, ...args]);
            assert.equal(r.code, 0, r.stdout + r.stderr);
        }
    });

    it('fails on a values file with a wrong type, naming the field', () => {
        const r = helm(['lint', '--strict', CHART, '-f', tmpValues({ services: { chat: { replicas: 'two' } }, drainTimeout: '25s' })]);
        assert.notEqual(r.code, 0);
        assert.match(r.stdout + r.stderr, /services\.chat\.replicas: Invalid type\. Expected: integer, given: string/);
        assert.match(r.stdout + r.stderr, /drainTimeout: Invalid type/);
    });

    it('fails on a misspelt key, a secret in the ConfigMap and a short RPC secret', () => {
        for (const [values, re] of [
            [{ ingres: { enabled: true } }, /Additional property ingres is not allowed/],
            [{ config: { OPENAI_KEY: 'sk-x' } }, /config/],
            [{ secrets: { rpcSecret: 'short' } }, /secrets\.rpcSecret/],
        ]) {
            const r = helm(['lint', '--strict', CHART, '-f', tmpValues(values)]);
            assert.notEqual(r.code, 0, JSON.stringify(values));
            assert.match(r.stdout + r.stderr, re);
        }
    });
});

describe('helm template', () => {
    it('refuses to render without a database and a Redis (no silent SQLite per replica)', () => {
        assert.throws(() => render([]), /secrets\.db .* is required/);
        assert.throws(() => render([], [REQUIRED[0]]), /secrets\.redisUrl .* is required/);
    });

    it('the schema check itself catches a wrong type and a missing field', () => {
        const docs = render([], REQUIRED);
        const dep = structuredClone(docs.find((d) => d.kind === 'Deployment'));
        dep.spec.template.spec.containers[0].ports[0].containerPort = '8080x';
        assert.match(validate(dep).join(), /containerPort must be integer/);
        const hpa = structuredClone(docs.find((d) => d.kind === 'HorizontalPodAutoscaler'));
        delete hpa.spec.maxReplicas;
        assert.match(validate(hpa).join(), /required property maxReplicas/);
    });

    it('the default values validate against the Kubernetes 1.27 schemas', () => {
        const docs = render([], REQUIRED);
        assert.ok(assertValid(docs) >= 25);
    });

    it('the production example validates against the Kubernetes 1.27 schemas', () => {
        const docs = render([PROD]);
        assert.ok(assertValid(docs) >= 25);
        const sm = byKind(docs, 'ServiceMonitor');
        assert.equal(sm.length, 1);
        assert.deepEqual(sm[0].spec.endpoints.map((e) => [e.port, e.path]), [['admin', '/metrics']]);
        // It uses the operator's Secret: the chart makes none of its own.
        assert.equal(byKind(docs, 'Secret').length, 0);
    });

    it('the in-cluster stores of a trial validate too', () => {
        const docs = render([], ['redis.internal.enabled=true', 'mysql.internal.enabled=true', 'mysql.internal.persistentSize=5Gi']);
        assertValid(docs);
        const stores = named(docs, 'Secret', 'cw-chatweb-stores');
        assert.match(stores.stringData.DB, /^mysql:\/\/chatweb:[A-Za-z0-9]{48}@cw-chatweb-mysql:3306\/chatweb$/);
        assert.match(stores.stringData.REDIS_URL, /^redis:\/\/:[A-Za-z0-9]{48}@cw-chatweb-redis:6379\/0$/);
        const job = named(docs, 'Job', 'cw-chatweb-migrate');
        assert.equal(job.metadata.annotations['helm.sh/hook'], 'post-install,pre-upgrade');
    });
});

describe('what the chart promises', () => {
    const docs = render([], REQUIRED);
    const prod = render([PROD]);

    it('per service: a Deployment, a Service, an HPA and a PDB; probes on the admin port', () => {
        for (const set of [docs, prod]) {
            for (const s of SERVICES) {
                const name = set === docs ? `cw-chatweb-${s}` : `cw-chatweb-${s}`;
                const dep = named(set, 'Deployment', name);
                assert.ok(dep, name);
                assert.ok(named(set, 'Service', name));
                assert.equal(named(set, 'HorizontalPodAutoscaler', name).spec.scaleTargetRef.name, name);
                assert.ok(named(set, 'PodDisruptionBudget', name));
                const c = dep.spec.template.spec.containers[0];
                assert.deepEqual(c.command, [`/usr/local/bin/chatweb-${s}`]);
                assert.deepEqual(c.livenessProbe.httpGet, { path: '/healthz', port: 'admin' });
                assert.deepEqual(c.readinessProbe.httpGet, { path: '/readyz', port: 'admin' });
                assert.deepEqual(c.ports.map((p) => [p.name, p.containerPort]),
                    [['http', 8080], ['admin', 9090], ...(s === 'auth' ? [['rpc', 8081]] : [])]);
                const env = Object.fromEntries(c.env.filter((e) => 'value' in e).map((e) => [e.name, e.value]));
                // auth's RPC has a port of its own, and every caller names it
                assert.equal(env.AUTH_URL, 'http://cw-chatweb-auth:8081');
                assert.equal(env.RPC_ADDR, s === 'auth' ? '0.0.0.0:8081' : undefined);
                assert.deepEqual(named(set, 'Service', name).spec.ports.map((p) => [p.name, p.port, p.targetPort]),
                    [['http', 8080, 'http'], ['admin', 9090, 'admin'], ...(s === 'auth' ? [['rpc', 8081, 'rpc']] : [])]);
                assert.equal(env.ADMIN_ADDR, '0.0.0.0:9090');
                // X-Real-IP is believed from the pod network (the ingress controller), not from loopback only
                assert.equal(env.TRUSTED_PROXIES, '10.0.0.0/8,172.16.0.0/12,192.168.0.0/16,fc00::/7');
                assert.ok(dep.spec.template.spec.terminationGracePeriodSeconds > Number(env.DRAIN_TIMEOUT) + 5,
                    `${name}: grace ${dep.spec.template.spec.terminationGracePeriodSeconds} vs DRAIN_TIMEOUT ${env.DRAIN_TIMEOUT}`);
                assert.ok(c.resources.requests.cpu && c.resources.requests.memory && c.resources.limits.memory);
                assert.equal(dep.spec.strategy.rollingUpdate.maxUnavailable, 0);
            }
        }
    });

    it('every pod runs as non-root on a read-only root file system', () => {
        for (const set of [docs, prod, render([], ['redis.internal.enabled=true', 'mysql.internal.enabled=true'])]) {
            for (const d of set.filter((x) => ['Deployment', 'StatefulSet', 'Job'].includes(x.kind))) {
                const spec = d.spec.template.spec;
                assert.equal(spec.securityContext.runAsNonRoot, true, d.metadata.name);
                assert.equal(spec.automountServiceAccountToken, false, d.metadata.name);
                for (const c of [...spec.containers, ...(spec.initContainers || [])]) {
                    assert.equal(c.securityContext.readOnlyRootFilesystem, true, `${d.metadata.name}/${c.name}`);
                    assert.equal(c.securityContext.allowPrivilegeEscalation, false);
                }
            }
        }
    });

    it('secrets come from the Secret, only to the services that read them; settings from the ConfigMap', () => {
        const want = {
            auth: ['RPC_SECRET', 'REDIS_URL', 'DB', 'OPS_KEY', 'BASIC_AUTH_PASSWORD'],
            billing: ['RPC_SECRET', 'REDIS_URL', 'DB'],
            chat: ['RPC_SECRET', 'REDIS_URL', 'OPENAI_KEY'],
            proxy: ['RPC_SECRET', 'REDIS_URL', 'OPENAI_KEY'],
        };
        for (const s of SERVICES) {
            const c = named(prod, 'Deployment', `cw-chatweb-${s}`).spec.template.spec.containers[0];
            const refs = c.env.filter((e) => e.valueFrom).map((e) => [e.name, e.valueFrom.secretKeyRef.name]);
            assert.deepEqual(refs, want[s].map((k) => [k, 'chatweb-secrets']));
            assert.deepEqual(c.envFrom, [{ configMapRef: { name: 'cw-chatweb-config' } }]);
        }
        const cm = named(prod, 'ConfigMap', 'cw-chatweb-config');
        assert.equal(cm.data.OPENAI_MAX_TOKENS, '16384');
        const secret = named(docs, 'Secret', 'cw-chatweb');
        assert.equal(secret.stringData.RPC_SECRET.length, 48);
        assert.deepEqual(Object.keys(secret.stringData).sort(), ['DB', 'REDIS_URL', 'RPC_SECRET']);
    });

    it('the migration Job is a pre-install/pre-upgrade hook running auth and billing --migrate', () => {
        for (const set of [docs, prod]) {
            const job = named(set, 'Job', 'cw-chatweb-migrate');
            assert.equal(job.metadata.annotations['helm.sh/hook'], 'pre-install,pre-upgrade');
            const spec = job.spec.template.spec;
            assert.deepEqual(spec.initContainers.map((c) => c.command), [['/usr/local/bin/chatweb-auth', '--migrate']]);
            assert.deepEqual(spec.containers.map((c) => c.command), [['/usr/local/bin/chatweb-billing', '--migrate']]);
            assert.equal(spec.restartPolicy, 'Never');
            const dbRef = spec.containers[0].env.find((e) => e.name === 'DB').valueFrom.secretKeyRef.name;
            if (set === prod) {
                assert.equal(dbRef, 'chatweb-secrets');
            } else {
                // The release's own Secret does not exist yet at pre-install: a hook Secret, made first.
                const hs = named(set, 'Secret', dbRef);
                assert.equal(hs.metadata.annotations['helm.sh/hook'], 'pre-install,pre-upgrade');
                assert.ok(Number(hs.metadata.annotations['helm.sh/hook-weight']) < Number(job.metadata.annotations['helm.sh/hook-weight']));
            }
        }
    });

    it('the Ingress streams: buffering off, long timeouts, body size; never /rpc', () => {
        for (const set of [docs, prod]) {
            const ing = byKind(set, 'Ingress')[0];
            const a = ing.metadata.annotations;
            assert.equal(a['nginx.ingress.kubernetes.io/proxy-buffering'], 'off');
            assert.equal(a['nginx.ingress.kubernetes.io/proxy-request-buffering'], 'off');
            assert.ok(Number(a['nginx.ingress.kubernetes.io/proxy-read-timeout']) >= 3600);
            assert.ok(Number(a['nginx.ingress.kubernetes.io/proxy-send-timeout']) >= 3600);
            assert.equal(a['nginx.ingress.kubernetes.io/proxy-body-size'], '8m');
            for (const r of ing.spec.rules)
                for (const p of r.http.paths) {
                    assert.doesNotMatch(p.path, /^\/rpc/);
                    assert.notEqual(p.backend.service.name, 'cw-chatweb-billing');
                }
        }
    });

    it('NetworkPolicies: billing only from auth, chat and proxy; auth\'s public port from the ingress, its RPC port from chat and proxy', () => {
        for (const set of [docs, prod]) {
            const from = (name, port = 'http') => {
                const np = named(set, 'NetworkPolicy', `cw-chatweb-${name}`);
                const rule = np.spec.ingress.find((r) => r.ports[0].port === port);
                return rule ? rule.from.map((f) => f.podSelector?.matchLabels?.['app.kubernetes.io/component'] ?? 'ingress-controller').sort() : null;
            };
            assert.deepEqual(from('billing'), ['auth', 'chat', 'proxy']);
            assert.deepEqual(from('auth'), ['ingress-controller']);
            assert.deepEqual(from('auth', 'rpc'), ['chat', 'proxy']);
            assert.equal(from('chat', 'rpc'), null);
            assert.deepEqual(from('chat'), ['ingress-controller']);
            assert.deepEqual(from('proxy'), ['ingress-controller']);
            // The ingress controller's rule names its namespace (not "any pod in this namespace").
            const np = named(set, 'NetworkPolicy', 'cw-chatweb-chat');
            assert.ok(np.spec.ingress[0].from[0].namespaceSelector.matchLabels['kubernetes.io/metadata.name']);
        }
    });

    it('the production example makes billing wait for a Redis replica per event (BILLING_EVENTS_REPLICAS)', () => {
        // docs/deploy.md §8: without it a Sentinel or Cluster failover loses the events only the
        // old master had.
        const cm = named(prod, 'ConfigMap', 'cw-chatweb-config');
        assert.ok(Number(cm.data.BILLING_EVENTS_REPLICAS) >= 1, `BILLING_EVENTS_REPLICAS=${cm.data.BILLING_EVENTS_REPLICAS}`);
        const c = named(prod, 'Deployment', 'cw-chatweb-billing').spec.template.spec.containers[0];
        assert.deepEqual(c.envFrom, [{ configMapRef: { name: 'cw-chatweb-config' } }]);
        assert.ok(!c.env.some((e) => e.name === 'BILLING_EVENTS_REPLICAS'), 'billing env does not override it');
    });

    it('the production example makes chat wait for a Redis replica per turn (CHAT_CONTEXT_REPLICAS)', () => {
        // docs/redis.md: without it a conversation written to the old master in a failover
        // goes on without its history.
        const cm = named(prod, 'ConfigMap', 'cw-chatweb-config');
        assert.ok(Number(cm.data.CHAT_CONTEXT_REPLICAS) >= 1, `CHAT_CONTEXT_REPLICAS=${cm.data.CHAT_CONTEXT_REPLICAS}`);
        const c = named(prod, 'Deployment', 'cw-chatweb-chat').spec.template.spec.containers[0];
        assert.ok(!c.env.some((e) => e.name === 'CHAT_CONTEXT_REPLICAS'), 'chat env does not override it');
    });

    it('resources are those of docs/deploy.md §6, in the default render and the production example', () => {
        // The table's last two columns: "CPU, memory / CPU, memory" (requests / limits).
        const doc = fs.readFileSync(path.join(ROOT, 'docs/deploy.md'), 'utf8');
        const sizing = doc.slice(doc.indexOf('## 6. Sizing'), doc.indexOf('## 7.'));
        const rows = {};
        for (const line of sizing.split('\n')) {
            const cells = line.split('|').map((x) => x.trim());
            if (![...SERVICES, 'web'].includes(cells[1]) || cells.length < 8) continue;
            const parse = (cell) => {
                const m = /^(\S+), (\S+) \/ (\S+), (\S+)$/.exec(cell);
                assert.ok(m, `${cells[1]}: "${cell}"`);
                return { requests: { cpu: m[1], memory: m[2] }, limits: { cpu: m[3], memory: m[4] } };
            };
            rows[cells[1]] = { docs: parse(cells[5]), prod: parse(cells[6]) };
        }
        assert.deepEqual(Object.keys(rows).sort(), [...SERVICES, 'web'].sort());
        for (const [name, want] of Object.entries(rows)) {
            for (const [set, which] of [[docs, 'docs'], [prod, 'prod']]) {
                const r = named(set, 'Deployment', `cw-chatweb-${name}`).spec.template.spec.containers[0].resources;
                const got = { requests: { cpu: String(r.requests.cpu), memory: r.requests.memory }, limits: { cpu: String(r.limits.cpu), memory: r.limits.memory } };
                assert.deepEqual(got, want[which], `${name} (${which === 'docs' ? 'default' : 'production example'})`);
            }
        }
    });

    it('proxy.enabled=false removes the proxy and its /v1 route', () => {
        const d = render([], [...REQUIRED, 'services.proxy.enabled=false']);
        assert.equal(named(d, 'Deployment', 'cw-chatweb-proxy'), undefined);
        const paths = byKind(d, 'Ingress')[0].spec.rules[0].http.paths.map((p) => p.path);
        assert.ok(!paths.includes('/v1'));
    });
});
