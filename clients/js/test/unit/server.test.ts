import { test } from 'node:test';
import assert from 'node:assert/strict';
import { RelayServer, RelayError, parseRetryAfter } from '@relay/server';

type Call = { url: string; body: string; headers: Record<string, string> };

function scripted(answers: Array<(() => Response) | Error>) {
  const calls: Call[] = [];
  const f = (async (url: string, init: RequestInit) => {
    calls.push({ url, body: init.body as string, headers: init.headers as Record<string, string> });
    const a = answers.shift();
    if (!a) throw new Error('no more answers');
    if (a instanceof Error) throw a;
    return a();
  }) as unknown as typeof fetch;
  return { f, calls };
}

const receipts = (body: string) => {
  const j = JSON.parse(body);
  const evs = j.events ?? [j];
  return () =>
    new Response(
      JSON.stringify({ accepted: evs.length, events: evs.map((e: any, i: number) => ({ session: e.session, seq: i + 1, epoch: 'ab', id: e.id })) }),
      { status: 202 },
    );
};

test('publish gives every event an id and keeps the same body across retries', async () => {
  const sleeps: number[] = [];
  const answers: Array<(() => Response) | Error> = [];
  const { f, calls } = scripted(answers);
  const relay = new RelayServer({ baseUrl: 'http://r/', apiKey: 'k', fetch: f, sleep: async (ms) => void sleeps.push(ms), random: () => 0 });
  answers.push(
    new TypeError('fetch failed'),
    () => new Response('{"error":"unavailable","message":"draining"}', { status: 503, headers: { 'retry-after': '1' } }),
    () => new Response('{"error":"rate_limited","message":"slow down"}', { status: 429, headers: { 'retry-after': '2' } }),
  );
  const p = relay.publish([
    { session: 's', event: 'a', data: 1 },
    { session: 's', event: 'b', data: 2, id: 'mine' },
  ]);
  // The fourth try succeeds: answer it from the body it sent.
  const orig = answers.push.bind(answers);
  orig(() => receipts(calls[calls.length - 1]!.body)());
  const r = await p;
  assert.equal(calls.length, 4);
  assert.equal(calls[0]!.url, 'http://r/events');
  assert.equal(calls[0]!.headers.authorization, 'Bearer k');
  for (const c of calls) assert.equal(c.body, calls[0]!.body, 'same body, same ids');
  const sent = JSON.parse(calls[0]!.body).events;
  assert.match(sent[0].id, /^[0-9a-f-]{36}$/);
  assert.equal(sent[1].id, 'mine');
  assert.deepEqual(r.map((x) => x.id), [sent[0].id, 'mine']);
  // Backoff 200 ms, then Retry-After wins: 1 s, 2 s.
  assert.deepEqual(sleeps, [200, 1000, 2000]);
});

test('errors are typed: a 400 is not retried', async () => {
  const { f, calls } = scripted([() => new Response('{"error":"bad_request","message":"missing field `event`"}', { status: 400 })]);
  const relay = new RelayServer({ baseUrl: 'http://r', apiKey: 'k', fetch: f, sleep: async () => {} });
  await assert.rejects(relay.publish({ session: 's', event: 'e' }), (e: unknown) => {
    assert.ok(e instanceof RelayError);
    assert.equal(e.status, 400);
    assert.equal(e.code, 'bad_request');
    assert.equal(e.retryable, false);
    assert.match(e.message, /missing field/);
    return true;
  });
  assert.equal(calls.length, 1);
  assert.deepEqual(JSON.parse(calls[0]!.body).data, null, 'data defaults to null');
});

test('retries give up after `attempts`, with a retryable error', async () => {
  const answers = Array.from({ length: 3 }, () => () => new Response('{"error":"unavailable","message":"x"}', { status: 503 }));
  const { f, calls } = scripted(answers);
  const relay = new RelayServer({ baseUrl: 'http://r', apiKey: 'k', fetch: f, sleep: async () => {}, attempts: 3 });
  await assert.rejects(relay.publish({ session: 's', event: 'e', data: {} }), (e: unknown) => {
    assert.ok(e instanceof RelayError && e.retryable && e.status === 503 && e.code === 'unavailable');
    return true;
  });
  assert.equal(calls.length, 3);
  const ids = new Set(calls.map((c) => JSON.parse(c.body).id));
  assert.equal(ids.size, 1);
});

test('wait and tenant reach the request; big arrays go as several batches in order', async () => {
  const answers: Array<() => Response> = [];
  const calls: Call[] = [];
  const f = (async (url: string, init: RequestInit) => {
    calls.push({ url, body: init.body as string, headers: init.headers as Record<string, string> });
    return receipts(init.body as string)();
  }) as unknown as typeof fetch;
  void answers;
  const relay = new RelayServer({ baseUrl: 'http://r', apiKey: 'k', fetch: f, maxBatch: 2 });
  const r = await relay.publish(
    [1, 2, 3, 4, 5].map((n) => ({ session: 's', event: 'e', data: n })),
    { wait: 'delivered', tenant: 'inst-1' },
  );
  assert.equal(calls.length, 3);
  assert.equal(calls[0]!.url, 'http://r/events?wait=delivered');
  assert.equal(calls[0]!.headers['x-relay-tenant'], 'inst-1');
  assert.deepEqual(calls.map((c) => JSON.parse(c.body).events.map((e: any) => e.data)), [[1, 2], [3, 4], [5]]);
  assert.equal(r.length, 5);
});

test('Retry-After parses seconds and HTTP dates', () => {
  assert.equal(parseRetryAfter('3'), 3);
  assert.equal(parseRetryAfter(null), undefined);
  assert.equal(parseRetryAfter('soon'), undefined);
  const d = parseRetryAfter(new Date(Date.now() + 5000).toUTCString())!;
  assert.ok(d > 3 && d <= 5, String(d));
});
