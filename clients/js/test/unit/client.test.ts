import { test } from 'node:test';
import assert from 'node:assert/strict';
import { RelayClient, CLIENT_CODES, type RelayClientOptions, type RelayEvent, type Resync, type State } from '@relay/client';
import { FakeClock, FakeWindow, fakeToken, socketFactory } from './fakes.js';

function setup(over: Partial<RelayClientOptions> = {}) {
  const clock = new FakeClock();
  const win = new FakeWindow();
  const { WS, sockets } = socketFactory();
  const states: State[] = [];
  const events: RelayEvent[] = [];
  const resyncs: Resync[] = [];
  const errors: Error[] = [];
  let tokens = 0;
  let tokenFails = false;
  const opts: RelayClientOptions = {
    url: 'ws://relay.test/ws',
    getToken: async () => {
      if (tokenFails) throw new Error('backend down');
      tokens++;
      return fakeToken({ session: 's1', exp: Math.floor(clock.now() / 1000) + 600, n: tokens });
    },
    onEvent: (e) => events.push(e),
    onResync: (r) => resyncs.push(r),
    onStateChange: (s) => states.push(s),
    onError: (e) => errors.push(e),
    WebSocket: WS,
    clock,
    random: () => 0.5,
    events: win,
    isOnline: () => win.online,
    // Plain HTTP does not reach the relay either: the client stays on WebSockets.
    fetch: async () => {
      throw new TypeError('Failed to fetch');
    },
    ...over,
  };
  const client = new RelayClient(opts);
  return {
    client, clock, win, sockets, states, events, resyncs, errors,
    last: () => sockets[sockets.length - 1]!,
    tokens: () => tokens,
    failTokens: (v: boolean) => (tokenFails = v),
  };
}

test('connects with the token in the subprotocol, never in the URL', async () => {
  const h = setup();
  h.client.connect();
  await h.clock.advance(0);
  const ws = h.last();
  assert.equal(ws.url, 'ws://relay.test/ws');
  assert.equal(ws.protocols[0], 'relay.v1');
  assert.match(ws.protocols[1]!, /^bearer\.[\w-]+\.[\w-]+\.sig$/);
  assert.equal(ws.protocols.length, 2, 'no since on a first connect');
  assert.equal(h.client.state.state, 'connecting');
  ws.welcome('e1', 7);
  assert.deepEqual(h.client.state, { state: 'connected', url: 'ws://relay.test/ws', session: 's1', conn: 'c1', transport: 'ws' });
  ws.event('e1', 8);
  assert.deepEqual(h.events.map((e) => e.seq), [8]);
  assert.deepEqual(h.client.position, { epoch: 'e1', seq: 8 });
});

test('a drop reconnects with backoff and since; the replay overlap is dropped; no resync', async () => {
  const h = setup();
  h.client.connect();
  await h.clock.advance(0);
  h.last().welcome('e1', 0);
  for (let s = 1; s <= 5; s++) h.last().event('e1', s);
  h.last().serverClose(1006);
  const st = h.client.state;
  assert.equal(st.state, 'disconnected');
  if (st.state === 'disconnected') {
    assert.equal(st.code, 1006);
    assert.equal(st.delay, 750); // attempt 0, random 0.5: 500 + 0.5 * (1000 - 500)
  }
  await h.clock.advance(749);
  assert.equal(h.sockets.length, 1);
  await h.clock.advance(1);
  assert.equal(h.sockets.length, 2);
  assert.equal(h.tokens(), 2, 'getToken before every connect');
  assert.equal(h.last().protocols[2], 'since.e1.5');
  h.last().welcome('e1', 9);
  for (let s = 4; s <= 10; s++) h.last().event('e1', s);
  assert.deepEqual(h.events.map((e) => e.seq), [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
  assert.equal(h.resyncs.length, 0);
});

test('resync calls onResync once and moves the position', async () => {
  const h = setup({ since: { epoch: 'old', seq: 50 } });
  h.client.connect();
  await h.clock.advance(0);
  assert.equal(h.last().protocols[2], 'since.old.50');
  h.last().welcome('new', 3);
  h.last().frame({ type: 'resync', session: 's1', epoch: 'new', seq: 3 });
  h.last().event('new', 4);
  assert.deepEqual(h.resyncs, [{ epoch: 'new', seq: 3, reason: 'resync' }]);
  assert.deepEqual(h.events.map((e) => e.seq), [4]);
});

test('backoff grows across failed tries and resets after a stable connection', async () => {
  const h = setup({ random: () => 1 });
  h.client.connect();
  const delays: number[] = [];
  for (let i = 0; i < 7; i++) {
    await h.clock.advance(0);
    h.last().serverClose(1006);
    const st = h.client.state;
    assert.equal(st.state, 'disconnected');
    if (st.state === 'disconnected') delays.push(st.delay);
    await h.clock.advance(st.state === 'disconnected' ? st.delay : 0);
  }
  assert.deepEqual(delays, [1000, 2000, 4000, 8000, 16000, 20000, 20000]);
  h.last().welcome('e', 0);
  await h.clock.advance(9_999);
  h.last().serverClose(1011);
  assert.equal((h.client.state as { delay: number }).delay, 20000, 'not stable yet');
  await h.clock.advance(20_000);
  h.last().welcome('e', 0);
  await h.clock.advance(10_000);
  h.last().serverClose(1011);
  assert.equal((h.client.state as { delay: number }).delay, 1000, 'reset after stableAfter');
});

test('4001 gets a new token; a failing getToken is reported in the state and retried', async () => {
  const h = setup();
  h.client.connect();
  await h.clock.advance(0);
  h.last().welcome('e', 0);
  h.failTokens(true);
  h.last().serverClose(4001, 'token expired');
  assert.equal(h.client.state.state, 'disconnected');
  for (let i = 0; i < 4; i++) {
    await h.clock.advance(30_000);
    const st = h.client.state as State;
    assert.equal(st.state, 'disconnected');
    if (st.state === 'disconnected') {
      assert.equal(st.code, 4001);
      assert.ok(st.error instanceof Error);
      assert.equal(st.reason, 'getToken failed');
    }
  }
  assert.equal(h.sockets.length, 1, 'no socket without a token');
  assert.ok(h.errors.length >= 4);
  h.failTokens(false);
  for (let i = 0; i < 30 && h.sockets.length < 2; i++) await h.clock.advance(1_000);
  assert.equal(h.sockets.length, 2);
  h.last().welcome('e', 0);
  assert.equal(h.client.state.state, 'connected');
});

test('a stop code closes for good', async () => {
  const h = setup();
  h.client.connect();
  await h.clock.advance(0);
  h.last().welcome('e', 0);
  h.last().serverClose(1008, 'policy');
  assert.deepEqual(h.client.state, { state: 'closed', code: 1008, reason: 'policy' });
  await h.clock.advance(120_000);
  assert.equal(h.sockets.length, 1);
  assert.match(h.errors[0]!.message, /fix the client/);
});

test('refreshes in-band a third of the life before exp, and follows the ack', async () => {
  const h = setup({
    getToken: async () => fakeToken({ session: 's1', exp: Math.floor(h.clock.now() / 1000) + 10 }),
  });
  h.client.connect();
  await h.clock.advance(0);
  const ws = h.last();
  ws.welcome('e', 0);
  await h.clock.advance(6_600);
  assert.equal(ws.sent.length, 0);
  await h.clock.advance(100);
  assert.equal(ws.sent.length, 1);
  const msg = JSON.parse(ws.sent[0]!);
  assert.equal(msg.type, 'refresh');
  assert.match(msg.token, /\.sig$/);
  const exp = Math.floor(h.clock.now() / 1000) + 10;
  let acked = 0;
  (h.client as unknown as { o: RelayClientOptions }).o.onRefreshed = () => acked++;
  ws.frame({ type: 'refreshed', exp });
  assert.equal(acked, 1);
  await h.clock.advance(6_700);
  assert.equal(ws.sent.length, 2, 'the next refresh before the new exp');
  assert.equal(h.client.state.state, 'connected');
});

test('a dead connection is probed, then dropped and reconnected', async () => {
  const h = setup({ pingInterval: 1000, pingGrace: 500 });
  h.client.connect();
  await h.clock.advance(0);
  const ws = h.last();
  ws.welcome('e', 0);
  await h.clock.advance(999);
  assert.equal(ws.sent.length, 0);
  await h.clock.advance(1);
  assert.equal(JSON.parse(ws.sent[0]!).type, 'refresh', 'probe');
  ws.frame({ type: 'refreshed', exp: Math.floor(h.clock.now() / 1000) + 600 }); // alive: the timer starts over
  await h.clock.advance(1_400);
  assert.equal(h.client.state.state, 'connected');
  await h.clock.advance(100);
  const st = h.client.state as State;
  assert.ok(st.state === 'disconnected' && st.code === CLIENT_CODES.dead, JSON.stringify(st));
  assert.deepEqual(ws.closedWith, { code: 1000, reason: undefined });
  await h.clock.advance(1_000);
  assert.equal(h.sockets.length, 2);
});

test('no welcome within connectTimeout: drop and retry', async () => {
  const h = setup({ connectTimeout: 2000 });
  h.client.connect();
  await h.clock.advance(2000);
  const st = h.client.state;
  assert.equal(st.state, 'disconnected');
  if (st.state === 'disconnected') assert.equal(st.code, CLIENT_CODES.connectTimeout);
});

test('offline: no spinning; online: at once', async () => {
  const h = setup();
  h.client.connect();
  await h.clock.advance(0);
  h.last().welcome('e', 0);
  h.win.fire('offline');
  const st = h.client.state;
  assert.equal(st.state, 'disconnected');
  if (st.state === 'disconnected') assert.equal(st.delay, Infinity);
  assert.ok(h.sockets[0]!.closedWith, 'socket closed');
  await h.clock.advance(600_000);
  assert.equal(h.sockets.length, 1, 'no tries while offline');
  h.win.fire('online');
  await h.clock.advance(0);
  assert.equal(h.sockets.length, 2);
  assert.equal(h.last().protocols[2], 'since.e.0');
});

test('several URLs: a failed try or a 1012 moves to the next; a served node is retried first', async () => {
  const h = setup({ url: ['ws://a/ws', 'ws://b/ws'], random: () => 0 });
  h.client.connect();
  await h.clock.advance(0);
  assert.equal(h.last().url, 'ws://a/ws');
  h.last().serverClose(1006); // never welcomed
  await h.clock.advance(1000);
  assert.equal(h.last().url, 'ws://b/ws');
  h.last().welcome('e', 0);
  h.last().serverClose(1011);
  await h.clock.advance(1000);
  assert.equal(h.last().url, 'ws://b/ws');
  h.last().welcome('e', 0);
  h.last().serverClose(1012);
  await h.clock.advance(1000);
  assert.equal(h.last().url, 'ws://a/ws');
});

test('close() stops everything; state changes go through one place', async () => {
  const h = setup();
  h.client.connect();
  await h.clock.advance(0);
  h.last().welcome('e', 0);
  h.client.close();
  assert.deepEqual(h.client.state, { state: 'closed', code: 1000, reason: 'closed by the application' });
  assert.deepEqual(h.clock.pending(), []);
  assert.deepEqual(h.states.map((s) => s.state), ['connecting', 'connected', 'closed']);
});

test('an exception in onEvent is reported and does not stop the stream', async () => {
  const seen: number[] = [];
  const h = setup({
    onEvent: (e) => {
      seen.push(e.seq);
      if (e.seq === 2) throw new Error('app bug');
    },
  });
  h.client.connect();
  await h.clock.advance(0);
  h.last().welcome('e', 0);
  for (let s = 1; s <= 3; s++) h.last().event('e', s);
  assert.deepEqual(seen, [1, 2, 3]);
  assert.equal(h.errors[0]!.message, 'app bug');
});

test('close() called from a callback stops for good (e.g. giving up after some attempts)', async () => {
  let client!: RelayClient;
  const h = setup({
    onStateChange: (s) => {
      if (s.state === 'disconnected' && s.attempt >= 2) client.close();
    },
  });
  client = h.client;
  client.connect();
  for (let i = 0; i < 3; i++) {
    await h.clock.advance(0);
    h.last().serverClose(1006);
    await h.clock.advance(30_000);
  }
  assert.equal(client.state.state, 'closed');
  const made = h.sockets.length;
  await h.clock.advance(600_000);
  assert.equal(h.sockets.length, made, 'no try after close()');
  assert.deepEqual(h.clock.pending(), []);

  // close() from onStateChange('connected') and from onResync, likewise.
  for (const where of ['connected', 'resync'] as const) {
    const seen: number[] = [];
    let c!: RelayClient;
    const g = setup({
      since: { epoch: 'old', seq: 1 },
      onStateChange: (s) => void (where === 'connected' && s.state === 'connected' && c.close()),
      onResync: () => void (where === 'resync' && c.close()),
      onEvent: (e) => void seen.push(e.seq),
    });
    c = g.client;
    c.connect();
    await g.clock.advance(0);
    g.last().welcome('new', 5);
    g.last().event('new', 6); // an unannounced epoch: onResync, then the event
    assert.equal(c.state.state, 'closed', where);
    assert.deepEqual(seen, [], where);
    assert.deepEqual(g.clock.pending(), [], where);
  }
});
