import { defineConfig } from 'vite';
import react from '@vitejs/plugin-react';

// `npm run dev` proxies the API to a running coordinator's HTTP listener
// (FERRY_HTTP, e.g. http://127.0.0.1:8081).
const target = process.env.FERRY_HTTP ?? 'http://127.0.0.1:8081';

export default defineConfig({
  plugins: [react()],
  base: '/',
  build: {
    outDir: 'dist',
    emptyOutDir: true,
    assetsDir: 'assets',
    sourcemap: false,
    chunkSizeWarningLimit: 1024,
  },
  server: {
    proxy: {
      '/api': { target, changeOrigin: false, ws: true },
    },
  },
});
