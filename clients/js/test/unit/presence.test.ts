import { test } from 'node:test';
import assert from 'node:assert/strict';
import { RelayClient, Roster, type PresenceState } from '@relay/client';
import { RelayServer, RelayError } from '@relay/server';
import { FakeClock, FakeWindow, fakeToken, socketFactory } from './fakes.js';

test('a snapshot replaces the list, a change adds joins and removes leaves, counts-only names nobody', () => {
  const r = new Roster();
  assert.deepEqual(r.apply({ type: 'presence', users: [{ sub: 'bob', sockets: 1 }, { sub: 'alice', sockets: 2 }], users_total: 2, sockets: 3 }), {
    users: ['alice', 'bob'],
    usersTotal: 2,
    sockets: 3,
  });
  assert.deepEqual(r.apply({ type: 'presence', join: ['carol'], leave: ['bob'], users_total: 2, sockets: 3 }).users, ['alice', 'carol']);
  assert.deepEqual(r.apply({ type: 'presence', users_total: 40, sockets: 41 }), { users: null, usersTotal: 40, sockets: 41 });
});

test('the browser client hands presence frames to onPresence and keeps the current list, never as events', async () => {
  const clock = new FakeClock();
  const win = new FakeWindow();
  const { WS, sockets } = socketFactory();
  const seen: PresenceState[] = [];
  const events: unknown[] = [];
  const client = new RelayClient({
    url: 'ws://relay.test/ws',
    getToken: async () => fakeToken({ session: 's1', exp: Math.floor(clock.now() / 1000) + 600 }),
    onPresence: (p) => seen.push(p),
    onEvent: (e) => events.push(e),
    WebSocket: WS,
    clock,
    events: win,
    isOnline: () => true,
    fetch: async () => {
      throw new TypeError('Failed to fetch');
    },
  });
  assert.equal(client.presence, null);
  client.connect();
  await clock.advance(0);
  const ws = sockets[0]!;
  ws.welcome('e1', 0);
  ws.frame({ type: 'presence', users: [{ sub: 'alice', sockets: 1 }], users_total: 1, sockets: 1 });
  ws.frame({ type: 'presence', join: ['bob'], leave: [], users_total: 2, sockets: 2 });
  ws.event('e1', 1);
  assert.deepEqual(seen.map((p) => p.users), [['alice'], ['alice', 'bob']]);
  assert.deepEqual(client.presence, { users: ['alice', 'bob'], usersTotal: 2, sockets: 2 });
  assert.equal(events.length, 1, 'presence frames are not events');
  client.close();
});

test('presence(session) follows every page, and its errors are typed', async () => {
  const urls: string[] = [];
  const pages = [
    { session: 's 1', users: [{ sub: 'a', sockets: 1 }], sockets: 3, users_total: 2, next_cursor: '61' },
    { session: 's 1', users: [{ sub: 'b', sockets: 2 }], sockets: 3, users_total: 2 },
  ];
  const f = (async (url: string, init: RequestInit) => {
    urls.push(url);
    assert.equal(init.method, 'GET');
    assert.equal((init.headers as Record<string, string>).authorization, 'Bearer k');
    return new Response(JSON.stringify(pages.shift()), { status: 200 });
  }) as unknown as typeof fetch;
  const relay = new RelayServer({ baseUrl: 'http://r', apiKey: 'k', fetch: f, sleep: async () => {} });
  const p = await relay.presence('s 1', { limit: 1 });
  assert.deepEqual(p, { session: 's 1', users: [{ sub: 'a', sockets: 1 }, { sub: 'b', sockets: 2 }], sockets: 3, users_total: 2 });
  assert.deepEqual(urls, ['http://r/sessions/s%201/presence?limit=1', 'http://r/sessions/s%201/presence?limit=1&cursor=61']);

  const bad = (async () =>
    new Response('{"error":"bad_request","message":"cursor is malformed"}', { status: 400 })) as unknown as typeof fetch;
  const relay2 = new RelayServer({ baseUrl: 'http://r', apiKey: 'k', fetch: bad, sleep: async () => {} });
  await assert.rejects(relay2.presence('s', { cursor: 'zz' }), (e: unknown) => e instanceof RelayError && e.status === 400 && !e.retryable);
});
