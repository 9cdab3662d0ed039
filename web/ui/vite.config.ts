// Builds the app into dist/, served by the web app at /. JSX goes through esbuild
// (React's automatic runtime), so no React plugin is needed.
import { defineConfig } from 'vite'

export default defineConfig({
  base: '/',
  esbuild: { jsx: 'automatic' },
  build: { outDir: 'dist', emptyOutDir: true, sourcemap: false, chunkSizeWarningLimit: 1000 },
})
