import type { Fetch, SocketLike } from './types.js';

/**
 * An incremental `text/event-stream` parser, as WHATWG HTML's "Server-sent events"
 * interprets a stream. Feed it decoded text in chunks of any size (a `TextDecoder`
 * has already dropped a leading BOM). Lines end with CRLF, LF or CR, also across
 * chunks. A blank line dispatches the block: `on(type, data)` with `type` from
 * `event:` (default `message`) and `data` the block's `data:` lines joined with
 * `\n`; a block without `data:` dispatches nothing. A comment line (`: ping`) calls
 * `on(':', text)`. `id:` (unless it holds U+0000) becomes `id` when its block is
 * dispatched and stays until another replaces it; `retry:` (digits only) sets
 * `retry`. Other fields are ignored; an unfinished block at the end is dropped.
 */
export class SseParser {
  /** The last event ID: the `id:` of the last dispatched block that had one. */
  id = '';
  /** The last `retry:` (ms). */
  retry: number | undefined;
  private buf = '';
  private cr = false;
  private nextId = '';
  private type = '';
  private data: string[] = [];

  constructor(private readonly on: (type: string, data: string) => void) {}

  push(chunk: string): void {
    if (!chunk) return;
    // A CR that ended the last chunk and an LF that starts this one are one line end.
    const lf = this.cr && chunk[0] === '\n';
    this.cr = chunk.endsWith('\r');
    const lines = (this.buf + (lf ? chunk.slice(1) : chunk)).split(/\r\n?|\n/);
    this.buf = lines.pop()!;
    for (const l of lines) this.line(l);
  }

  private line(l: string): void {
    if (!l) {
      this.id = this.nextId;
      if (this.data.length) this.on(this.type || 'message', this.data.join('\n'));
      this.data = [];
      this.type = '';
      return;
    }
    const i = l.indexOf(':');
    if (!i) return this.on(':', l.slice(1));
    const field = i < 0 ? l : l.slice(0, i);
    const v = i < 0 ? '' : l.slice(l[i + 1] === ' ' ? i + 2 : i + 1);
    if (field === 'data') this.data.push(v);
    else if (field === 'event') this.type = v;
    else if (field === 'id' && !v.includes('\0')) this.nextId = v;
    else if (field === 'retry' && /^\d+$/.test(v)) this.retry = +v;
  }
}

/**
 * The relay's event stream (`GET /sse`) read with `fetch`, seen through the
 * WebSocket's interface so the client treats both alike: the token goes in
 * `Authorization` (never in the URL), the resume point in `Last-Event-ID`. Each
 * block's `data` (the JSON a WebSocket frame would carry, `close` included) comes
 * to `onmessage`, a comment as an empty message (it only shows the stream is
 * alive). A refused request, a network error or the end of the stream comes to
 * `onclose` as 1006; `close()` aborts the request.
 */
export class EventStream implements SocketLike {
  onmessage: SocketLike['onmessage'] = null;
  onclose: SocketLike['onclose'] = null;
  onerror: SocketLike['onerror'] = null;
  private readonly ac = new AbortController();

  constructor(url: string, token: string, lastEventId: string, fetch: Fetch) {
    void this.run(url, token, lastEventId, fetch);
  }

  send(): void {}

  close(): void {
    this.ac.abort();
  }

  private async run(url: string, token: string, last: string, fetch: Fetch): Promise<void> {
    let why = 'stream ended';
    try {
      await 0; // the caller sets the handlers first
      const headers: Record<string, string> = { Authorization: 'Bearer ' + token, Accept: 'text/event-stream' };
      if (last) headers['Last-Event-ID'] = last;
      const res = await fetch(url, { headers, cache: 'no-store', signal: this.ac.signal });
      if (!res.ok || !res.body) throw new Error('HTTP ' + res.status);
      const reader = res.body.getReader();
      const text = new TextDecoder();
      const p = new SseParser((type, data) => this.onmessage?.({ data: type === ':' ? '' : data }));
      for (let r; !(r = await reader.read()).done; ) p.push(text.decode(r.value, { stream: true }));
    } catch (e) {
      why = String((e as Error)?.message ?? e);
    }
    this.ac.abort();
    this.onclose?.({ code: 1006, reason: why });
  }
}
