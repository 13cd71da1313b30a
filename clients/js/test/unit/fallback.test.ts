// The client's move to the event stream where WebSockets cannot be opened, and
// back: the decision, the position carried across, and delivery on the stream.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { RelayClient, CLIENT_CODES, type RelayClientOptions, type RelayEvent, type Resync, type State } from '@relay/client';
import { FakeClock, FakeHttp, FakeWindow, fakeToken, flush, socketFactory } from './fakes.js';

function setup(over: Partial<RelayClientOptions> = {}) {
  const clock = new FakeClock();
  const win = new FakeWindow();
  const http = new FakeHttp();
  const { WS, sockets } = socketFactory();
  const states: State[] = [];
  const events: RelayEvent[] = [];
  const resyncs: Resync[] = [];
  const errors: Error[] = [];
  let tokens = 0;
  const client = new RelayClient({
    url: 'ws://relay.test/ws',
    getToken: async () => fakeToken({ session: 's1', exp: Math.floor(clock.now() / 1000) + 600, n: ++tokens }),
    onEvent: (e) => events.push(e),
    onResync: (r) => resyncs.push(r),
    onStateChange: (s) => states.push(s),
    onError: (e) => errors.push(e),
    WebSocket: WS,
    fetch: http.fetch,
    clock,
    random: () => 0.5,
    events: win,
    isOnline: () => win.online,
    ...over,
  });
  const h = {
    client, clock, http, sockets, states, events, resyncs, errors,
    ws: () => sockets[sockets.length - 1]!,
    seqs: () => events.map((e) => e.seq),
    tokens: () => tokens,
    /** Lets the probe and the stream's fetch settle, then runs the timers due within `ms`. */
    async run(ms: number): Promise<void> {
      await flush();
      await clock.advance(ms);
      await flush();
    },
    /** Runs the clock until the next try opens a socket or a stream. */
    async next(): Promise<void> {
      const n = sockets.length + http.streams.length;
      for (let t = 0; t < 60_000 && sockets.length + http.streams.length === n; t += 50) await h.run(50);
      assert.ok(sockets.length + http.streams.length > n, 'a next try');
    },
    /** A socket try fails without a welcome (a refused upgrade is 1006 in a browser); the next try comes. */
    async failWs(): Promise<void> {
      h.ws().serverClose(1006);
      await h.next();
    },
  };
  return h;
}

/** Connected over WebSocket, events 1..3 of epoch e1 delivered, then the socket lost. */
async function onWsThenLost(h: ReturnType<typeof setup>): Promise<void> {
  h.client.connect();
  await h.run(0);
  h.ws().welcome('e1', 0);
  for (let s = 1; s <= 3; s++) h.ws().event('e1', s);
  h.ws().serverClose(1006); // welcomed: not a failed try
  await h.next();
}

test('fallbackAfter WebSocket tries without a welcome while HTTP answers: the event stream, resuming with Last-Event-ID', async () => {
  const h = setup();
  await onWsThenLost(h);
  assert.equal(h.http.probes.length, 0, 'a socket that was welcomed is not a failed try');
  await h.failWs();
  await h.failWs();
  assert.equal(h.sockets.length, 4, 'still WebSockets after 2 failed tries');
  assert.deepEqual(h.http.probes, ['http://relay.test/ws', 'http://relay.test/ws'], 'each failed try probes the same URL over plain HTTP');
  h.ws().serverClose(1006); // the third
  await h.run(0);
  const st = h.client.state;
  assert.ok(st.state === 'disconnected' && st.delay === 750, 'the first backoff step (500-1,000 ms), not the fourth');
  await h.run(750);
  assert.equal(h.sockets.length, 4, 'no WebSocket try after the third');
  assert.equal(h.http.streams.length, 1);
  const s = h.http.last();
  assert.equal(s.url, 'http://relay.test/sse', 'ws→http, /ws→/sse, no token in the URL');
  assert.match(s.headers.Authorization!, /^Bearer [\w-]+\.[\w-]+\.sig$/);
  assert.equal(s.headers['Last-Event-ID'], 'e1:3', 'the position carried from the socket');
  assert.deepEqual({ ...h.client.state, attempt: 0 }, { state: 'connecting', url: 'http://relay.test/sse', attempt: 0, transport: 'sse' });
  // The relay replays from e1:3 (an overlap included) and goes on live.
  s.welcome('e1', 5);
  s.event('e1', 3);
  s.event('e1', 4);
  s.event('e1', 5);
  s.write(': ping\n\n');
  s.event('e1', 6);
  await flush();
  assert.deepEqual(h.client.state, { state: 'connected', url: 'http://relay.test/sse', session: 's1', conn: 'c1', transport: 'sse' });
  assert.deepEqual(h.seqs(), [1, 2, 3, 4, 5, 6], 'exactly once, in order, across the switch');
  assert.equal(h.resyncs.length, 0);
  assert.deepEqual(h.client.position, { epoch: 'e1', seq: 6 });
});

test('no fallback while plain HTTP does not answer either (a node down, the network)', async () => {
  const h = setup();
  h.http.up = false;
  await onWsThenLost(h);
  for (let i = 0; i < 6; i++) await h.failWs();
  await flush();
  assert.equal(h.http.streams.length, 0);
  assert.equal(h.http.probes.length, 6);
  assert.equal(h.sockets.length, 8, 'WebSocket tries only');
  const st = h.client.state;
  assert.ok(st.state === 'connecting' && st.transport === 'ws');
  // HTTP comes back (WebSockets still blocked): the next failed tries move it.
  h.http.up = true;
  await h.failWs();
  assert.equal(h.http.streams.length, 1);
});

test('a readable X-Relay-Transports without ws (same origin) moves at once, after the 1012 of the switch', async () => {
  const h = setup();
  h.http.transports = 'sse,poll';
  h.client.connect();
  await h.run(0);
  h.ws().welcome('e1', 0);
  h.ws().event('e1', 1);
  h.ws().serverClose(1012, 'transport switched off');
  await h.run(1000);
  assert.equal(h.sockets.length, 1, 'no WebSocket try');
  assert.equal(h.http.streams.length, 1);
  assert.equal(h.http.last().headers['Last-Event-ID'], 'e1:1');
  const states = h.states.map((s) => `${s.state}${'transport' in s ? ' ' + s.transport : ''}${'code' in s ? ' ' + s.code : ''}`);
  // The move is told as a second `disconnected`, with the (first-step) delay of the stream's try.
  assert.deepEqual(states, ['connecting ws', 'connected ws', 'disconnected 1012', 'disconnected 1012', 'connecting sse']);
});

test("a 1012 alone (a drain: the header says ws is still offered, or cannot be read) stays on WebSockets", async () => {
  for (const transports of ['ws,sse,poll', null]) {
    const h = setup();
    h.http.transports = transports;
    h.client.connect();
    await h.run(0);
    h.ws().welcome('e1', 0);
    h.ws().serverClose(1012);
    await h.run(1000);
    assert.equal(h.sockets.length, 2, String(transports));
    assert.equal(h.http.streams.length, 0);
  }
});

test("transports: ['ws'] never probes nor falls back; fallbackAfter is configurable", async () => {
  const h = setup({ transports: ['ws'] });
  await onWsThenLost(h);
  for (let i = 0; i < 5; i++) await h.failWs();
  assert.equal(h.http.probes.length, 0);
  assert.equal(h.http.streams.length, 0);

  const one = setup({ fallbackAfter: 1 });
  one.client.connect();
  await one.run(0);
  await one.failWs();
  assert.equal(one.http.streams.length, 1, 'after a single failed try');
});

test("transports: ['sse'] reads the event stream from the start and never opens a WebSocket", async () => {
  const h = setup({ transports: ['sse'], wsRetryAfter: 1000, pingInterval: 1e9 });
  h.client.connect();
  await h.run(0);
  assert.equal(h.http.streams.length, 1);
  assert.equal(h.http.last().headers['Last-Event-ID'], undefined, 'a first connect: no resume point');
  h.http.last().welcome('e1', 10);
  h.http.last().event('e1', 11);
  await h.run(600_000);
  assert.equal(h.sockets.length, 0);
  assert.deepEqual(h.seqs(), [11]);
  // A refused stream is retried on the stream.
  h.http.refuse = true;
  h.http.last().end();
  await h.run(30_000);
  assert.ok(h.http.streams.length === 1 && h.sockets.length === 0);
  const tries = h.states.filter((st) => st.state === 'connecting');
  assert.ok(tries.length >= 4 && tries.every((st) => st.state === 'connecting' && st.transport === 'sse'));
});

test('on the event stream: resync, gaps, duplicates and the close codes of the one table', async () => {
  const h = setup({ transports: ['sse'] });
  h.client.connect();
  await h.run(0);
  let s = h.http.last();
  s.welcome('e1', 0);
  s.event('e1', 1);
  s.event('e1', 1); // duplicate
  s.event('e1', 3); // gap
  s.block('resync', { type: 'resync', session: 's1', epoch: 'e2', seq: 7, reason: 'history' }, 'e2:7');
  s.event('e2', 8);
  await flush();
  assert.deepEqual(h.seqs(), [1, 3, 8]);
  assert.deepEqual(h.resyncs, [
    { epoch: 'e1', seq: 2, reason: 'gap' },
    { epoch: 'e2', seq: 7, reason: 'resync' },
  ]);
  // 4001: no in-band refresh on a stream; a new token from getToken, and Last-Event-ID.
  const before = h.tokens();
  s.closeWith(4001, 'token expired');
  await flush();
  assert.equal(s.aborted, true, 'the request is ended');
  const st = h.client.state;
  assert.ok(st.state === 'disconnected' && st.code === 4001 && st.reason === 'token expired', JSON.stringify(st));
  await h.run(1000);
  assert.equal(h.tokens(), before + 1);
  s = h.http.last();
  assert.equal(h.http.streams.length, 2);
  assert.equal(s.headers['Last-Event-ID'], 'e2:8');
  assert.notEqual(s.headers.Authorization, h.http.streams[0]!.headers.Authorization, 'the new token');
  s.welcome('e2', 8);
  await flush();
  // 1012 (drain, or the stream switched off): retried; 1008: stop, like a socket.
  s.closeWith(1012);
  await flush();
  assert.equal((h.client.state as { code?: number }).code, 1012);
  await h.next();
  assert.equal(h.http.streams.length, 3);
  h.http.last().welcome('e2', 8);
  await flush();
  h.http.last().closeWith(1008, 'policy');
  await flush();
  assert.deepEqual(h.client.state, { state: 'closed', code: 1008, reason: 'policy' });
  assert.match(h.errors[0]!.message, /fix the client/);
  assert.equal(h.http.last().aborted, true);
});

test('no in-band refresh on the stream; comments keep it alive, silence drops it', async () => {
  const h = setup({
    transports: ['sse'],
    pingInterval: 1000,
    pingGrace: 500,
    getToken: async () => fakeToken({ session: 's1', exp: Math.floor(h.clock.now() / 1000) + 9 }),
  });
  h.client.connect();
  await h.run(0);
  h.http.last().welcome('e1', 0);
  await flush();
  for (let i = 0; i < 10; i++) {
    await h.run(900);
    h.http.last().write(': ping\n\n');
    await flush();
  }
  assert.equal((h.client.state as State).state, 'connected', 'comments are frames for liveness');
  assert.equal(h.http.streams.length, 1, 'no refresh reconnect before the relay says 4001');
  await h.run(1500);
  const st = h.client.state;
  assert.ok(st.state === 'disconnected' && st.code === CLIENT_CODES.dead, JSON.stringify(st));
  assert.equal(h.http.streams[0]!.aborted, true);
});

test('an event stream that gets no welcome either sends the client back to WebSockets', async () => {
  const h = setup();
  await onWsThenLost(h);
  for (let i = 0; i < 3; i++) await h.failWs();
  assert.equal(h.http.streams.length, 1);
  h.http.last().end(); // refused, or the network: no welcome
  await h.next();
  assert.equal(h.sockets.length, 5, 'a WebSocket try again');
  assert.equal((h.client.state as { transport?: string }).transport, 'ws');
  h.ws().welcome('e1', 3);
  assert.equal(h.client.state.state, 'connected');
  assert.equal(h.http.probes.length, 3);
});

test('on the stream, a WebSocket is tried after wsRetryAfter: a failure keeps the stream, a welcome takes over exactly once', async () => {
  const h = setup({ wsRetryAfter: 60_000, pingInterval: 1e9 });
  await onWsThenLost(h);
  for (let i = 0; i < 3; i++) await h.failWs();
  const s = h.http.last();
  s.welcome('e1', 3);
  s.event('e1', 4);
  await flush();
  assert.equal((h.client.state as { transport?: string }).transport, 'sse');
  const sockets = h.sockets.length;
  await h.run(58_000); // the move to the stream came < 1 s before it opened
  assert.equal(h.sockets.length, sockets, 'not before wsRetryAfter');
  await h.run(2_000);
  assert.equal(h.sockets.length, sockets + 1, 'a trial WebSocket beside the stream');
  assert.equal(h.ws().protocols[2], 'since.e1.4');
  // It fails: the stream goes on, untouched.
  h.ws().serverClose(1006);
  s.event('e1', 5);
  await flush();
  assert.equal(h.client.state.state, 'connected');
  assert.equal(s.aborted, false);
  assert.deepEqual(h.seqs(), [1, 2, 3, 4, 5]);
  // After as long again, another; the stream delivers meanwhile; the socket is welcomed.
  await h.run(60_000);
  const trial = h.ws();
  assert.equal(h.sockets.length, sockets + 2);
  assert.equal(trial.protocols[2], 'since.e1.5');
  s.event('e1', 6);
  s.event('e1', 7);
  await flush();
  trial.welcome('e1', 7, 's1', 'c9');
  assert.equal(s.aborted, true, 'the stream is closed');
  assert.deepEqual(h.client.state, { state: 'connected', url: 'ws://relay.test/ws', session: 's1', conn: 'c9', transport: 'ws' });
  // Its replay from e1:5 overlaps what the stream delivered: dropped.
  trial.event('e1', 6);
  trial.event('e1', 7);
  trial.event('e1', 8);
  s.event('e1', 9); // a stream that is closed no longer counts
  await flush();
  assert.deepEqual(h.seqs(), [1, 2, 3, 4, 5, 6, 7, 8]);
  assert.equal(h.resyncs.length, 0);
  // Back on WebSockets for good: refreshes in-band again, and no more trials.
  await h.run(600_000);
  assert.ok(trial.sent.some((m) => JSON.parse(m).type === 'refresh'));
  assert.equal(h.sockets.length, sockets + 2);
  assert.equal(h.client.state.state, 'connected');
});

test('close() on the stream, with a trial in flight, stops everything', async () => {
  const h = setup({ wsRetryAfter: 1000 });
  await onWsThenLost(h);
  for (let i = 0; i < 3; i++) await h.failWs();
  h.http.last().welcome('e1', 3);
  await h.run(1000);
  const trial = h.ws();
  h.client.close();
  await flush();
  assert.ok(trial.closedWith, 'the trial is closed');
  assert.equal(h.http.last().aborted, true);
  assert.deepEqual(h.clock.pending(), []);
  const n = h.sockets.length + h.http.streams.length;
  await h.run(600_000);
  assert.equal(h.sockets.length + h.http.streams.length, n);
});

test('connect() after close() starts over on WebSockets', async () => {
  const h = setup();
  await onWsThenLost(h);
  for (let i = 0; i < 3; i++) await h.failWs();
  h.http.last().welcome('e1', 3);
  await flush();
  assert.equal((h.client.state as { transport?: string }).transport, 'sse');
  h.client.close();
  const sockets = h.sockets.length;
  h.client.connect();
  await h.run(0);
  assert.equal(h.sockets.length, sockets + 1);
  assert.equal(h.ws().protocols[2], 'since.e1.3', 'the position is kept');
  assert.equal((h.client.state as { transport?: string }).transport, 'ws');
});
