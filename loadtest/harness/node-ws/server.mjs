// A thin pub/sub server of the harness shape that the relay's loadtest drives with
// `--target-kind harness` (loadtest/README.md), to compare the relay with a plain Node
// `ws` server on one core:
//
//   GET  /ws?session=S   upgrades to a WebSocket that joins topic S (no token, no welcome)
//   POST /publish/S      sends the request body, as one text frame, to every socket of S,
//                        and answers 200 with an empty body
//
// One process, one event loop (one core), no sequencing, history, receipts or dedupe.
// Port: `--port N`, else the PORT environment variable, else 3100. Host: `--host`, else
// HOST, else 127.0.0.1.

import http from 'node:http';
import { WebSocketServer } from 'ws';

const MAX_BODY = 1 << 20;

function option(name, env, fallback) {
  const i = process.argv.indexOf(`--${name}`);
  if (i !== -1 && i + 1 < process.argv.length) return process.argv[i + 1];
  return process.env[env] ?? fallback;
}

const port = Number(option('port', 'PORT', '3100'));
const host = option('host', 'HOST', '127.0.0.1');
if (!Number.isInteger(port) || port < 0 || port > 65535) {
  console.error(`bad port ${JSON.stringify(option('port', 'PORT', ''))}: use --port N or PORT=N`);
  process.exit(2);
}

/** topic name -> Set of open sockets */
const topics = new Map();

function reply(res, status, text = '') {
  res.writeHead(status, {
    'Content-Type': 'text/plain',
    'Content-Length': Buffer.byteLength(text),
  });
  res.end(text);
}

function topicOf(path, prefix) {
  if (!path.startsWith(prefix)) return null;
  try {
    const name = decodeURIComponent(path.slice(prefix.length));
    return name.length > 0 && !name.includes('/') ? name : null;
  } catch {
    return null;
  }
}

function publish(req, res, topic) {
  const chunks = [];
  let size = 0;
  let refused = false;
  req.on('data', (chunk) => {
    if (refused) return;
    size += chunk.length;
    if (size > MAX_BODY) {
      refused = true;
      reply(res, 413, `body above ${MAX_BODY} bytes\n`);
      req.resume();
      return;
    }
    chunks.push(chunk);
  });
  req.on('end', () => {
    if (refused) return;
    const body = chunks.length === 1 ? chunks[0] : Buffer.concat(chunks);
    const sockets = topics.get(topic);
    if (sockets !== undefined) {
      for (const ws of sockets) {
        // ws frames the buffer for each socket; it copies nothing else.
        ws.send(body, { binary: false });
      }
    }
    reply(res, 200);
  });
  req.on('error', () => {});
}

const server = http.createServer((req, res) => {
  const url = new URL(req.url, 'http://harness');
  if (url.pathname.startsWith('/publish/')) {
    const topic = topicOf(url.pathname, '/publish/');
    if (topic === null) return reply(res, 400, 'POST /publish/S needs a topic name S\n');
    if (req.method !== 'POST') return reply(res, 405, 'use POST /publish/S\n');
    return publish(req, res, topic);
  }
  if (url.pathname === '/ws') return reply(res, 426, 'GET /ws?session=S is a WebSocket upgrade\n');
  return reply(res, 404, 'this harness serves GET /ws?session=S and POST /publish/S\n');
});
// The loadtest's publishers keep their connections for the whole run.
server.keepAliveTimeout = 120_000;
server.headersTimeout = 125_000;

const wss = new WebSocketServer({ noServer: true, perMessageDeflate: false, clientTracking: false });

server.on('upgrade', (req, socket, head) => {
  socket.on('error', () => {});
  const url = new URL(req.url, 'http://harness');
  const topic = url.pathname === '/ws' ? url.searchParams.get('session') : null;
  if (topic === null || topic === '') {
    socket.end('HTTP/1.1 400 Bad Request\r\nConnection: close\r\nContent-Length: 0\r\n\r\n');
    return;
  }
  wss.handleUpgrade(req, socket, head, (ws) => {
    let sockets = topics.get(topic);
    if (sockets === undefined) {
      sockets = new Set();
      topics.set(topic, sockets);
    }
    sockets.add(ws);
    ws.on('error', () => {});
    ws.on('close', () => {
      sockets.delete(ws);
      if (sockets.size === 0 && topics.get(topic) === sockets) topics.delete(topic);
    });
  });
});

server.listen(port, host, () => {
  const a = server.address();
  // The test reads this line to learn the port when it asked for port 0.
  console.log(`listening on ${a.address}:${a.port}`);
});

for (const sig of ['SIGINT', 'SIGTERM']) {
  process.on(sig, () => process.exit(0));
}
