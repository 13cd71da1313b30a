// The event-stream block parser (WHATWG HTML, "Server-sent events": interpreting
// an event stream) and the fetch-based reader built on it.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { EventStream, SseParser } from '@relay/client';
import { FakeStream, flush } from './fakes.js';

/** Parses `chunks` in order; returns the dispatched [type, data] pairs and the parser. */
function parse(...chunks: string[]): { got: Array<[string, string]>; p: SseParser } {
  const got: Array<[string, string]> = [];
  const p = new SseParser((type, data) => got.push([type, data]));
  for (const c of chunks) p.push(c);
  return { got, p };
}

test('data lines are joined with \\n; event names the type, message by default', () => {
  const { got } = parse('event: event\ndata: {"a":\ndata:  1}\n\ndata: plain\n\n');
  assert.deepEqual(got, [
    ['event', '{"a":\n 1}'], // one space after the colon is dropped, the rest kept
    ['message', 'plain'],
  ]);
  assert.deepEqual(JSON.parse(got[0]![1]), { a: 1 }, 'a JSON value split over data lines is the same value');
});

test('the relay\'s stream as docs/transports.md shows it', () => {
  const stream =
    'retry: 1000\n\n' +
    'id: 0f3c9a2b5d7e8f10:41\nevent: welcome\ndata: {"type":"welcome","session":"s","conn":"c","epoch":"0f3c9a2b5d7e8f10","seq":41}\n\n' +
    'id: 0f3c9a2b5d7e8f10:42\nevent: event\ndata: {"type":"event","seq":42,"epoch":"0f3c9a2b5d7e8f10","data":{"x":1}}\n\n' +
    ': ping\n\n' +
    'event: close\ndata: {"type":"close","code":4001,"reason":"token expired"}\n\n';
  const { got, p } = parse(stream);
  assert.deepEqual(
    got.map(([t]) => t),
    ['welcome', 'event', ':', 'close'],
  );
  assert.equal(JSON.parse(got[1]![1]).seq, 42);
  assert.equal(got[2]![1], ' ping', 'a comment is reported with its text');
  assert.equal(JSON.parse(got[3]![1]).code, 4001);
  assert.equal(p.retry, 1000);
  assert.equal(p.id, '0f3c9a2b5d7e8f10:42', 'the close block has no id: the last one stays');
});

test('ids: set when their block is dispatched, kept across blocks, even without data; U+0000 ignored', () => {
  const got: Array<[string, string, string]> = [];
  const p = new SseParser((type, data) => got.push([type, data, p.id]));
  p.push('id: a:1\ndata: one\n');
  assert.equal(p.id, '', 'not before the blank line');
  p.push('\n');
  assert.equal(p.id, 'a:1');
  p.push('data: two\n\n');
  assert.equal(p.id, 'a:1', 'kept by a block without id');
  p.push('id: a:3\n\n');
  assert.equal(p.id, 'a:3', 'a block with only an id moves it and dispatches nothing');
  p.push('id: bad\u0000id\ndata: four\n\n');
  assert.equal(p.id, 'a:3', 'an id with U+0000 is ignored');
  p.push('id\ndata: five\n\n');
  assert.equal(p.id, '', 'a bare id field empties it');
  assert.deepEqual(got, [
    ['message', 'one', 'a:1'],
    ['message', 'two', 'a:1'],
    ['message', 'four', 'a:3'],
    ['message', 'five', ''],
  ]);
});

test('comments, retry, fields without a colon, unknown fields', () => {
  const { got, p } = parse(':\n: keep-alive\nretry: 2500\nretry: 3s\nfoo: bar\ndata\ndata\n\n');
  assert.deepEqual(got, [
    [':', ''],
    [':', ' keep-alive'],
    ['message', '\n'], // two empty data lines
  ]);
  assert.equal(p.retry, 2500, 'a retry that is not all digits is ignored');
  const none = parse('event: x\n\n');
  assert.deepEqual(none.got, [], 'a block without data dispatches nothing');
});

test('CRLF, CR and LF end lines, also when a CRLF is split across chunks', () => {
  const text = 'data: a\r\ndata: b\r\rdata: c\n\nid: 7\rdata: d\r\n\r\n';
  const want: Array<[string, string]> = [
    ['message', 'a\nb'],
    ['message', 'c'],
    ['message', 'd'],
  ];
  assert.deepEqual(parse(text).got, want);
  // Every split point, and one character at a time.
  for (let i = 0; i <= text.length; i++) assert.deepEqual(parse(text.slice(0, i), text.slice(i)).got, want, `split at ${i}`);
  assert.deepEqual(parse(...text.split('')).got, want);
  assert.equal(parse(...text.split('')).p.id, '7');
  // A CR that ends a chunk, then an LF that is a blank line of its own.
  assert.deepEqual(parse('data: x\r', '', '\n', '\n').got, [['message', 'x']]);
});

test('an unfinished block is not dispatched', () => {
  const { got } = parse('data: whole\n\ndata: half\n');
  assert.deepEqual(got, [['message', 'whole']]);
});

test('EventStream: Authorization and Last-Event-ID, no token in the URL; blocks in order; a close block; the end', async () => {
  const streams: FakeStream[] = [];
  const fetch = async (url: string, init: RequestInit) => {
    const s = new FakeStream(url, init);
    streams.push(s);
    return new Response(s.body, { status: 200 });
  };
  const es = new EventStream('http://relay.test/sse', 'jwt.token.sig', 'e1:5', fetch);
  const got: string[] = [];
  const closes: Array<{ code: number; reason: string }> = [];
  es.onmessage = (m) => got.push(String(m.data));
  es.onclose = (c) => closes.push(c);
  await flush();
  const s = streams[0]!;
  assert.equal(s.url, 'http://relay.test/sse');
  assert.deepEqual(s.headers, { Authorization: 'Bearer jwt.token.sig', Accept: 'text/event-stream', 'Last-Event-ID': 'e1:5' });
  // Bytes split anywhere, a multi-byte character across two writes.
  const all = new TextEncoder().encode('event: event\ndata: {"n":"é"}\n\n: ping\n\n');
  const cut = all.indexOf(0xc3) + 1;
  (s as unknown as { ctl: ReadableStreamDefaultController<Uint8Array> }).ctl.enqueue(all.slice(0, cut));
  await flush();
  (s as unknown as { ctl: ReadableStreamDefaultController<Uint8Array> }).ctl.enqueue(all.slice(cut));
  await flush();
  assert.deepEqual(got, ['{"n":"é"}', ''], 'a comment comes as an empty message');
  s.end();
  await flush();
  assert.deepEqual(closes, [{ code: 1006, reason: 'stream ended' }]);

  // No Last-Event-ID on a first connect; a refused request ends as 1006.
  const refused = new EventStream('http://relay.test/sse', 't', '', async (_u, init) => {
    assert.equal((init.headers as Record<string, string>)['Last-Event-ID'], undefined);
    return new Response('{"error":"unauthorized"}', { status: 401 });
  });
  const ends: Array<{ code: number; reason: string }> = [];
  refused.onclose = (c) => ends.push(c);
  await flush();
  assert.deepEqual(ends, [{ code: 1006, reason: 'HTTP 401' }]);

  // close() aborts the request.
  const aborted = new EventStream('http://relay.test/sse', 't', '', fetch);
  await flush();
  aborted.close();
  await flush();
  assert.equal(streams[1]!.aborted, true);
});
