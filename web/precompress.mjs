// Post-build step (`npm run build`, `make web`): next to every text file Vite wrote into dist/,
// a gzip copy (`x.js` -> `x.js.gz`, level 9) for nginx's gzip_static, so the ingress and the
// chart's web server send the compressed bytes without compressing on each request
// (deploy/local/nginx.conf.tmpl, deploy/k8s/web-nginx.conf; docs/web.md "Size"). A copy that
// would not be smaller is not written. The output is deterministic (no name or time in the
// gzip header). Vite empties dist/ first, so no stale copy survives a build.
import fs from 'node:fs';
import path from 'node:path';
import zlib from 'node:zlib';

const DIST = path.join(import.meta.dirname, 'dist');
const TEXT = /\.(?:js|mjs|css|html|svg|json|txt|map)$/;

function* files(dir) {
    for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
        const p = path.join(dir, e.name);
        if (e.isDirectory()) yield* files(p);
        else if (e.isFile()) yield p;
    }
}

let count = 0;
let before = 0;
let after = 0;
for (const f of files(DIST)) {
    if (!TEXT.test(f)) continue;
    const data = fs.readFileSync(f);
    const gz = zlib.gzipSync(data, { level: 9 });
    if (gz.length >= data.length) continue;
    fs.writeFileSync(`${f}.gz`, gz);
    count++;
    before += data.length;
    after += gz.length;
}
if (!count) {
    console.error(`precompress: no text file in ${DIST}: run vite build first`);
    process.exit(1);
}
console.log(`precompress: ${count} files, ${(before / 1024).toFixed(0)} KB -> ${(after / 1024).toFixed(0)} KB gzipped`);
