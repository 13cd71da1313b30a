// Virtual time and a scripted WebSocket, so the client's timers run without sleeping.
import type { Clock, SocketLike } from '@relay/client';

export class FakeClock implements Clock {
  t = 1_700_000_000_000;
  private id = 0;
  private timers = new Map<number, { at: number; fn: () => void }>();

  now(): number {
    return this.t;
  }
  setTimeout(fn: () => void, ms: number): unknown {
    const id = ++this.id;
    this.timers.set(id, { at: this.t + Math.max(0, ms), fn });
    return id;
  }
  clearTimeout(h: unknown): void {
    this.timers.delete(h as number);
  }
  /** Runs every timer due within `ms`, in order, letting promises settle between them. */
  async advance(ms: number): Promise<void> {
    const end = this.t + ms;
    for (;;) {
      await settle();
      let next: [number, { at: number; fn: () => void }] | undefined;
      for (const e of this.timers) if (e[1].at <= end && (!next || e[1].at < next[1].at)) next = e;
      if (!next) break;
      this.timers.delete(next[0]);
      this.t = next[1].at;
      next[1].fn();
    }
    this.t = end;
    await settle();
  }
  pending(): number[] {
    return [...this.timers.values()].map((t) => t.at - this.t).sort((a, b) => a - b);
  }
}

export async function settle(): Promise<void> {
  for (let i = 0; i < 10; i++) await Promise.resolve();
}

export class FakeSocket implements SocketLike {
  sent: string[] = [];
  closedWith: { code?: number; reason?: string } | null = null;
  onmessage: ((ev: { data: unknown }) => void) | null = null;
  onclose: ((ev: { code: number; reason: string }) => void) | null = null;
  onerror: ((ev: unknown) => void) | null = null;
  constructor(readonly url: string, readonly protocols: string[]) {}
  send(data: string): void {
    this.sent.push(data);
  }
  close(code?: number, reason?: string): void {
    this.closedWith = { code, reason };
  }
  // The server side.
  frame(f: object): void {
    this.onmessage?.({ data: JSON.stringify(f) });
  }
  welcome(epoch: string, seq: number, session = 's1', conn = 'c1'): void {
    this.frame({ type: 'welcome', session, conn, epoch, seq });
  }
  event(epoch: string, seq: number, data: unknown = seq): void {
    this.frame({ type: 'event', session: 's1', seq, epoch, event: 'e', id: 'id' + seq, data });
  }
  serverClose(code: number, reason = ''): void {
    this.onclose?.({ code, reason });
  }
}

/** A WebSocket constructor that records every socket it makes. */
export function socketFactory(): { WS: new (url: string, protocols: string[]) => FakeSocket; sockets: FakeSocket[] } {
  const sockets: FakeSocket[] = [];
  class WS extends FakeSocket {
    constructor(url: string, protocols: string[]) {
      super(url, protocols);
      sockets.push(this);
    }
  }
  return { WS, sockets };
}

/** An online/offline event source. */
export class FakeWindow {
  online = true;
  private fns = new Map<string, Set<() => void>>();
  addEventListener(type: string, fn: () => void): void {
    if (!this.fns.has(type)) this.fns.set(type, new Set());
    this.fns.get(type)!.add(fn);
  }
  removeEventListener(type: string, fn: () => void): void {
    this.fns.get(type)?.delete(fn);
  }
  fire(type: 'online' | 'offline'): void {
    this.online = type === 'online';
    for (const fn of this.fns.get(type) ?? []) fn();
  }
}

/** An unsigned JWT-shaped token with the given claims (the client never verifies). */
export function fakeToken(claims: object): string {
  const b = (o: object) => Buffer.from(JSON.stringify(o)).toString('base64url');
  return b({ alg: 'HS256', typ: 'JWT' }) + '.' + b(claims) + '.sig';
}

/** Lets streams, fetches and promise chains run (a few turns of the event loop). */
export async function flush(): Promise<void> {
  for (let i = 0; i < 5; i++) await new Promise((r) => setImmediate(r));
}

/** One `GET /sse` the client made: the test plays the relay's side of the stream. */
export class FakeStream {
  readonly headers: Record<string, string>;
  aborted = false;
  private ctl!: ReadableStreamDefaultController<Uint8Array>;
  readonly body = new ReadableStream<Uint8Array>({ start: (c) => void (this.ctl = c) });
  constructor(readonly url: string, init: RequestInit) {
    this.headers = { ...(init.headers as Record<string, string>) };
    init.signal?.addEventListener('abort', () => {
      this.aborted = true;
      try {
        this.ctl.error(new DOMException('aborted', 'AbortError'));
      } catch {
        /* already ended */
      }
    });
  }
  /** The relay writes; into a stream the client closed, it goes nowhere. */
  write(text: string): void {
    try {
      this.ctl.enqueue(new TextEncoder().encode(text));
    } catch {
      /* closed */
    }
  }
  block(event: string, f: object, id?: string): void {
    this.write(`${id ? `id: ${id}\n` : ''}event: ${event}\ndata: ${JSON.stringify(f)}\n\n`);
  }
  welcome(epoch: string, seq: number, conn = 'c1'): void {
    this.block('welcome', { type: 'welcome', session: 's1', conn, epoch, seq }, `${epoch}:${seq}`);
  }
  event(epoch: string, seq: number, data: unknown = seq): void {
    this.block('event', { type: 'event', session: 's1', seq, epoch, event: 'e', id: 'id' + seq, data }, `${epoch}:${seq}`);
  }
  closeWith(code: number, reason = ''): void {
    this.block('close', { type: 'close', code, reason });
    this.end();
  }
  end(): void {
    try {
      this.ctl.close();
    } catch {
      /* already ended */
    }
  }
}

/**
 * The relay's plain HTTP side, for `fetch`: `up` says whether HTTP reaches it (the
 * probes resolve; when false every fetch fails as a browser's does); `transports`
 * is an `X-Relay-Transports` the probe can read (as on the same origin);
 * `refuse` makes event-stream requests fail (as a refused cross-origin request does).
 */
export class FakeHttp {
  up = true;
  refuse = false;
  transports: string | null = null;
  readonly probes: string[] = [];
  readonly streams: FakeStream[] = [];
  readonly fetch = async (url: string, init: RequestInit): Promise<Response> => {
    if (init.mode === 'no-cors') {
      this.probes.push(url);
      if (!this.up) throw new TypeError('Failed to fetch');
      return new Response('', { status: this.transports ? 503 : 400, headers: this.transports ? { 'X-Relay-Transports': this.transports } : {} });
    }
    if (!this.up || this.refuse) throw new TypeError('Failed to fetch');
    const s = new FakeStream(url, init);
    this.streams.push(s);
    return new Response(s.body, { status: 200, headers: { 'Content-Type': 'text/event-stream' } });
  };
  last(): FakeStream {
    return this.streams[this.streams.length - 1]!;
  }
}
