// The Forge example's handlers against a real relay node: the resolver's token opens
// a socket on the issue's session, and the trigger's publish reaches it, once even
// when Forge retries the invocation. Uses the clients' e2e harness (build first:
// npm --prefix clients/js run build) and @relay/server as built.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import net from 'node:net';
import { RelayNode, publisher } from '../../../clients/js/build/test/e2e/harness.js';
import { createHandlers, sessionForIssue, socketUrl } from '../src/handlers.js';

/** A bare WebSocket client (Node 18 has no global WebSocket): the token in the subprotocol. */
function openSocket(port, token) {
  return new Promise((resolve, reject) => {
    const s = net.connect(port, '127.0.0.1');
    const frames = [];
    const waiters = [];
    let buf = Buffer.alloc(0);
    let open = false;
    const push = (f) => (waiters.length ? waiters.shift()(f) : frames.push(f));
    s.on('error', reject);
    s.on('connect', () =>
      s.write(
        `GET /ws HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n` +
          `Sec-WebSocket-Key: ${randomBytes(16).toString('base64')}\r\nSec-WebSocket-Version: 13\r\n` +
          `Sec-WebSocket-Protocol: relay.v1, bearer.${token}\r\n\r\n`,
      ),
    );
    s.on('data', (d) => {
      buf = Buffer.concat([buf, d]);
      if (!open) {
        const end = buf.indexOf('\r\n\r\n');
        if (end < 0) return;
        const head = buf.subarray(0, end).toString();
        buf = buf.subarray(end + 4);
        if (!head.startsWith('HTTP/1.1 101')) return reject(new Error('upgrade refused: ' + head.split('\r\n')[0]));
        assert.match(head, /sec-websocket-protocol: relay\.v1/i);
        open = true;
        resolve({
          next: (ms = 5000) =>
            frames.length
              ? Promise.resolve(frames.shift())
              : new Promise((ok, fail) => {
                  const t = setTimeout(() => fail(new Error('no frame within ' + ms + ' ms')), ms);
                  waiters.push((f) => (clearTimeout(t), ok(f)));
                }),
          pending: () => frames.length,
          close: () => s.destroy(),
        });
      }
      while (buf.length >= 2) {
        const op = buf[0] & 0x0f;
        let len = buf[1] & 0x7f;
        let off = 2;
        if (len === 126) (len = buf.readUInt16BE(2)), (off = 4);
        else if (len === 127) (len = Number(buf.readBigUInt64BE(2))), (off = 10);
        if (buf.length < off + len) return;
        const payload = buf.subarray(off, off + len);
        buf = buf.subarray(off + len);
        if (op === 1) push(JSON.parse(payload.toString()));
      }
    });
  });
}

const node = await RelayNode.start();
after(() => node.stop());
const relay = publisher(node);
const handlers = createHandlers({ relay, baseUrl: node.http, ttl: 60 });

const context = {
  accountId: '5b10a2844c20165700ede21g',
  cloudId: 'a436116f-02ce-4520-8fbb-7301462a1674',
  extension: { type: 'jira:issuePanel', issue: { key: 'PROJ-7', id: '10007' } },
};

test('sessions and URLs', () => {
  assert.equal(sessionForIssue('PROJ-7'), 'issue:PROJ-7');
  assert.throws(() => sessionForIssue('proj 7'));
  assert.throws(() => sessionForIssue(undefined));
  assert.equal(socketUrl('https://relay.example.com'), 'wss://relay.example.com/ws');
  assert.equal(socketUrl('http://127.0.0.1:3000/'), 'ws://127.0.0.1:3000/ws');
});

test('the resolver mints a token the relay accepts, for the issue of the context', async () => {
  const r = handlers.getRelayToken({ payload: { session: 'issue:OTHER-1' }, context });
  assert.equal(r.session, 'issue:PROJ-7', 'the payload cannot choose the session');
  assert.equal(r.url, node.ws);
  const ws = await openSocket(node.port, r.token);
  const welcome = await ws.next();
  assert.equal(welcome.type, 'welcome');
  assert.equal(welcome.session, 'issue:PROJ-7');
  ws.close();
  assert.throws(() => handlers.getRelayToken({ context: { extension: {} } }), /not an issue key/);
});

test('the issue-updated trigger publishes to the issue session, once across retries', async () => {
  const ws = await openSocket(node.port, handlers.getRelayToken({ context }).token);
  assert.equal((await ws.next()).type, 'welcome');
  const event = {
    eventType: 'avi:jira:updated:issue',
    atlassianId: context.accountId,
    issue: { id: '10007', key: 'PROJ-7', fields: { summary: 'Fix login', status: { name: 'In Progress' }, updated: '2026-12-04T10:00:00.000+0000' } },
    changelog: { id: '10042', items: [{ field: 'status', fromString: 'To Do', toString: 'In Progress' }] },
  };
  const first = await handlers.onIssueUpdated(event, { installContext: 'ari:cloud:jira::site/' + context.cloudId });
  assert.equal(first.id, 'jira-updated:10007:10042');
  assert.equal(first.duplicate, undefined);
  const again = await handlers.onIssueUpdated(event, {}); // Forge retried the invocation
  assert.equal(again.duplicate, true);
  assert.equal(again.seq, first.seq);
  const f = await ws.next();
  assert.equal(f.type, 'event');
  assert.equal(f.event, 'issue.updated');
  assert.equal(f.session, 'issue:PROJ-7');
  assert.deepEqual(f.data, {
    key: 'PROJ-7', summary: 'Fix login', status: 'In Progress',
    changes: [{ field: 'status', from: 'To Do', to: 'In Progress' }], by: context.accountId,
  });
  await new Promise((r) => setTimeout(r, 300));
  assert.equal(ws.pending(), 0, 'the retry was not delivered again');
  ws.close();
});

test('the tenant comes from the cloud id or the installation ARI', async () => {
  const { tenantOf } = await import('../src/handlers.js');
  assert.equal(tenantOf({ cloudId: 'abc' }), 'abc');
  assert.equal(tenantOf({ installContext: 'ari:cloud:jira::site/a436116f-02ce' }), 'a436116f-02ce');
  assert.equal(tenantOf({}), undefined);
});
