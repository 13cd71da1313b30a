// A tiny static server for the example page, on 127.0.0.1 only. It serves this
// directory, the @relay/client bundle as /relay-client.js (built with esbuild on
// start), and, when it knows JWT_SIGNING_SECRET, /token?session=S: a token for the
// page (what your backend does in real life; never ship the secret to a browser).
//
//   node examples/browser/serve.mjs            # http://127.0.0.1:8080/?url=ws://127.0.0.1:3000/ws&session=demo
//
// The e2e tests import startPageServer() and provide tokens themselves.
import { createServer } from 'node:http';
import { createHmac } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { dirname, extname, join, normalize } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const repo = join(here, '..', '..');
const types = { '.html': 'text/html', '.js': 'text/javascript', '.mjs': 'text/javascript', '.css': 'text/css' };

/** The bundle: clients/js/build/relay-client.min.js (scripts/size.mjs writes it), or built now. */
async function bundle() {
  const built = join(repo, 'clients/js/build/relay-client.min.js');
  if (existsSync(built)) return readFileSync(built);
  const esbuild = await import(pathToFileURL(join(repo, 'clients/js/node_modules/esbuild/lib/main.js')).href);
  const out = await esbuild.build({
    entryPoints: [join(repo, 'clients/js/packages/client/src/index.ts')],
    bundle: true, minify: true, format: 'esm', write: false,
  });
  return Buffer.from(out.outputFiles[0].contents);
}

function devToken(secret, session, ttl = 900) {
  const b = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
  const now = Math.floor(Date.now() / 1000);
  const head = b({ alg: 'HS256', typ: 'JWT' }) + '.' + b({ session, sub: 'example', iat: now, nbf: now, exp: now + ttl });
  return head + '.' + createHmac('sha256', secret).update(head).digest('base64url');
}

/**
 * Starts the page server. Resolves to { url, close }.
 * @param {{ port?: number, secret?: string }} [opts]
 */
export async function startPageServer(opts = {}) {
  const js = await bundle();
  const server = createServer((req, res) => {
    const u = new URL(req.url ?? '/', 'http://127.0.0.1');
    if (u.pathname === '/relay-client.js') {
      res.writeHead(200, { 'content-type': 'text/javascript', 'cache-control': 'no-store' });
      return res.end(js);
    }
    if (u.pathname === '/token') {
      const session = u.searchParams.get('session') ?? 'demo';
      if (!opts.secret) {
        res.writeHead(404, { 'content-type': 'text/plain' });
        return res.end('no JWT_SIGNING_SECRET: start with it set, or use .env.local from relay serve --dev');
      }
      res.writeHead(200, { 'content-type': 'text/plain', 'cache-control': 'no-store' });
      return res.end(devToken(opts.secret, session));
    }
    const rel = normalize(u.pathname === '/' ? '/index.html' : u.pathname).replace(/^(\.\.[/\\])+/, '');
    const file = join(here, rel);
    if (!file.startsWith(here) || !existsSync(file)) {
      res.writeHead(404);
      return res.end('not found');
    }
    res.writeHead(200, { 'content-type': types[extname(file)] ?? 'application/octet-stream', 'cache-control': 'no-store' });
    res.end(readFileSync(file));
  });
  await new Promise((ok) => server.listen(opts.port ?? 0, '127.0.0.1', ok));
  const addr = server.address();
  return {
    url: `http://127.0.0.1:${addr.port}`,
    close: () => new Promise((ok) => { server.closeAllConnections?.(); server.close(() => ok()); }),
  };
}

/** JWT_SIGNING_SECRET from the environment, else from ./.env.local (relay serve --dev). */
function secretFromEnv() {
  if (process.env.JWT_SIGNING_SECRET) return process.env.JWT_SIGNING_SECRET.split(',')[0];
  for (const f of ['.env.local', join(repo, '.env.local')]) {
    if (!existsSync(f)) continue;
    const m = readFileSync(f, 'utf8').match(/^JWT_SIGNING_SECRET=(.*)$/m);
    if (m) return m[1].trim().replace(/^["']|["']$/g, '').split(',')[0];
  }
  return undefined;
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  const s = await startPageServer({ port: Number(process.env.PAGE_PORT ?? 8080), secret: secretFromEnv() });
  console.log(`example page: http://localhost:${new URL(s.url).port}/?url=ws://127.0.0.1:3000/ws&session=demo`);
}
