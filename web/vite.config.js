// Vite build of the two pages the ingress serves: the chat at / and the admin console at /admin/.
// Everything (code, CSS, KaTeX fonts) is bundled into dist/: no CDN, no runtime fetch.
import { resolve } from 'node:path';
import { defineConfig } from 'vite';

export default defineConfig({
    base: '/',
    build: {
        outDir: 'dist',
        emptyOutDir: true,
        target: 'es2020',
        // Report gzip sizes; scripts in tests check the budget (docs/web.md).
        reportCompressedSize: true,
        chunkSizeWarningLimit: 600,
        rollupOptions: {
            input: {
                chat: resolve(import.meta.dirname, 'index.html'),
                admin: resolve(import.meta.dirname, 'admin/index.html'),
            },
        },
    },
    server: {
        // `npm run dev` against a running `make run` stack (port 7080).
        proxy: {
            '/api': { target: 'http://127.0.0.1:7080', changeOrigin: false },
            '/accounts': { target: 'http://127.0.0.1:7080', changeOrigin: false },
        },
    },
});
