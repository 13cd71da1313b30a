// Bundles @relay/client the way an application would (esbuild, minified, ESM) and
// checks that the gzipped bundle stays at most 5 KB. Writes the bundle to
// build/relay-client.min.js (the e2e tests' page loads it) and the figures to
// build/size.json.
import { build } from 'esbuild';
import { gzipSync } from 'node:zlib';
import { mkdirSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const LIMIT = 5 * 1024;
const out = await build({
  entryPoints: [join(root, 'packages/client/src/index.ts')],
  bundle: true,
  minify: true,
  format: 'esm',
  target: 'es2020',
  write: false,
  legalComments: 'none',
});
const code = out.outputFiles[0].contents;
const gz = gzipSync(code, { level: 9 }).length;
mkdirSync(join(root, 'build'), { recursive: true });
writeFileSync(join(root, 'build/relay-client.min.js'), code);
writeFileSync(join(root, 'build/size.json'), JSON.stringify({ minified: code.length, gzip: gz, limit: LIMIT }) + '\n');
const ok = gz <= LIMIT;
console.log(`size: @relay/client ${code.length} B minified, ${gz} B gzipped (limit ${LIMIT} B): ${ok ? 'ok' : 'TOO BIG'}`);
process.exit(ok ? 0 : 1);
