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
