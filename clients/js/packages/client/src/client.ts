import { backoff } from './backoff.js';
import { CLIENT_CODES, closeAction } from './codes.js';
import { Tracker } from './stream.js';
import { tokenExp } from './token.js';
import type {
  Clock,
  EventSourceLike,
  Position,
  RelayClientOptions,
  RelayEvent,
  Resync,
  SocketFactory,
  SocketLike,
  State,
} from './types.js';

/** A socket the relay refused for good (a `stop` close code), or a failed `getToken`. */
export class RelayClientError extends Error {
  constructor(message: string, readonly code: number, readonly cause?: unknown) {
    super(message);
    this.name = 'RelayClientError';
  }
}

const defaultClock: Clock = {
  now: () => Date.now(),
  setTimeout: (fn, ms) => setTimeout(fn, ms),
  clearTimeout: (h) => clearTimeout(h as ReturnType<typeof setTimeout>),
};

type Timer = 'retry' | 'connect' | 'stable' | 'refresh' | 'live';

/**
 * A browser client for one relay session: it connects with the token in the
 * subprotocol, hands every event to `onEvent` exactly once and in order across
 * reconnects, resumes with `since`, refreshes its token in-band, and reconnects by
 * itself with backoff.
 */
export class RelayClient {
  private st: State = { state: 'closed', code: 0, reason: 'not connected yet' };
  private readonly o: RelayClientOptions;
  private readonly urls: string[];
  private readonly clock: Clock;
  private readonly random: () => number;
  private readonly WS: SocketFactory;
  private readonly events: EventSourceLike | null;
  private readonly tracker: Tracker;
  private readonly timers: Partial<Record<Timer, unknown>> = {};
  private ws: SocketLike | null = null;
  private urlIndex = 0;
  private attempt = 0;
  private refreshAttempt = 0;
  /** Bumped by every open and stop: a stale callback sees a different number. */
  private gen = 0;
  private welcomed = false;
  private token = '';
  private exp: number | undefined;
  private tokenAt = 0;
  private lastFrameAt = 0;
  private probed = false;
  private lastCode = 0;

  constructor(options: RelayClientOptions) {
    this.o = options;
    this.urls = Array.isArray(options.url) ? options.url.slice() : [options.url];
    if (this.urls.length === 0) throw new TypeError('RelayClient: no url');
    this.clock = options.clock ?? defaultClock;
    this.random = options.random ?? Math.random;
    this.WS = options.WebSocket ?? (globalThis as unknown as { WebSocket: SocketFactory }).WebSocket;
    const g = globalThis as unknown as Partial<EventSourceLike>;
    this.events =
      options.events !== undefined ? options.events : typeof g.addEventListener === 'function' ? (g as EventSourceLike) : null;
    this.tracker = new Tracker(options.since ? { ...options.since } : null);
  }

  /** The current state. */
  get state(): State {
    return this.st;
  }

  /** The last position handed to the application (what a reconnect resumes from). */
  get position(): Position | null {
    return this.tracker.pos ? { ...this.tracker.pos } : null;
  }

  /** Starts connecting; a no-op unless the client is closed. */
  connect(): void {
    if (this.st.state !== 'closed') return;
    this.events?.addEventListener('online', this.onOnline);
    this.events?.addEventListener('offline', this.onOffline);
    this.attempt = 0;
    void this.open();
  }

  /** Closes the socket and stops for good (until `connect()` again). */
  close(): void {
    this.stop(1000, 'closed by the application');
  }

  // ---- the one transition function -------------------------------------------------

  private set(next: State): void {
    const prev = this.st;
    this.st = next;
    this.call(this.o.onStateChange, next, prev);
  }

  // ---- connecting --------------------------------------------------------------------

  private async open(): Promise<void> {
    const gen = ++this.gen;
    this.clear('retry');
    const url = this.urls[this.urlIndex % this.urls.length]!;
    this.set({ state: 'connecting', url, attempt: this.attempt });
    if (gen !== this.gen) return; // onStateChange called close()
    let token: string;
    try {
      token = await this.o.getToken();
      if (typeof token !== 'string' || !token) throw new TypeError('getToken returned no token');
    } catch (e) {
      if (gen !== this.gen) return;
      this.report(new RelayClientError('getToken failed: ' + String((e as Error)?.message ?? e), this.lastCode, e));
      this.retry(this.lastCode, 'getToken failed', e);
      return;
    }
    if (gen !== this.gen) return;
    if (!this.online()) return this.retry(CLIENT_CODES.offline, 'offline');
    this.useToken(token);
    const protocols = ['relay.v1', 'bearer.' + token];
    const pos = this.tracker.pos;
    if (pos) protocols.push(`since.${pos.epoch}.${pos.seq}`);
    let ws: SocketLike;
    try {
      ws = new this.WS(url, protocols);
    } catch (e) {
      // A URL the browser refuses: no retry can help.
      this.report(new RelayClientError('cannot open ' + url, 1002, e));
      return this.stop(1002, 'bad url');
    }
    this.ws = ws;
    this.welcomed = false;
    ws.onmessage = (m) => this.frame(ws, m.data);
    ws.onclose = (c) => this.closed(ws, c.code, c.reason);
    ws.onerror = () => {};
    this.after('connect', this.o.connectTimeout ?? 10_000, () =>
      this.drop(ws, CLIENT_CODES.connectTimeout, 'no welcome within connectTimeout'),
    );
  }

  private useToken(token: string): void {
    this.token = token;
    this.exp = tokenExp(token);
    this.tokenAt = this.clock.now();
  }

  // ---- frames ------------------------------------------------------------------------

  private frame(ws: SocketLike, data: unknown): void {
    if (ws !== this.ws) return;
    this.lastFrameAt = this.clock.now();
    this.probed = false;
    let f: Record<string, any>;
    try {
      f = JSON.parse(String(data));
    } catch {
      return;
    }
    switch (f.type) {
      case 'event': {
        const step = this.tracker.event(f.epoch, f.seq);
        if (step.resync) this.resynced(step.resync);
        // onResync may have called close(): nothing more reaches the application then.
        if (step.deliver && ws === this.ws) this.call(this.o.onEvent, f as RelayEvent);
        return;
      }
      case 'welcome':
        this.clear('connect');
        this.welcomed = true;
        this.tracker.welcome(f.epoch, f.seq);
        this.set({ state: 'connected', url: this.urls[this.urlIndex % this.urls.length]!, session: f.session, conn: f.conn });
        if (ws !== this.ws) return; // onStateChange called close()
        this.after('stable', this.o.stableAfter ?? 10_000, () => (this.attempt = 0));
        this.scheduleRefresh();
        this.watch();
        return;
      case 'resync':
        this.resynced(this.tracker.resync(f.epoch, f.seq));
        return;
      case 'refreshed':
        if (typeof f.exp === 'number') this.exp = f.exp;
        this.refreshAttempt = 0;
        this.scheduleRefresh();
        this.call(this.o.onRefreshed, f.exp);
        return;
    }
  }

  private resynced(r: Resync): void {
    this.call(this.o.onResync, r);
  }

  // ---- token refresh -----------------------------------------------------------------

  /** Refresh `refreshMargin` before `exp`, or a third of the token's life if that is less. */
  private scheduleRefresh(delay?: number): void {
    this.clear('refresh');
    if (this.exp === undefined) return;
    if (delay === undefined) {
      const now = this.clock.now();
      const expMs = this.exp * 1000;
      const margin = Math.min(this.o.refreshMargin ?? 30_000, Math.max(0, expMs - this.tokenAt) / 3);
      delay = Math.max(0, expMs - margin - now);
    }
    this.after('refresh', delay, () => void this.refresh());
  }

  private async refresh(): Promise<void> {
    const ws = this.ws;
    if (!ws || !this.welcomed) return;
    let token: string;
    try {
      token = await this.o.getToken();
      if (typeof token !== 'string' || !token) throw new TypeError('getToken returned no token');
    } catch (e) {
      if (ws !== this.ws) return;
      this.report(new RelayClientError('getToken failed (refresh): ' + String((e as Error)?.message ?? e), 0, e));
      // Try again with backoff; if it keeps failing the relay closes with 4001 at exp.
      const d = backoff(this.refreshAttempt++, this.o.minDelay ?? 500, this.o.maxDelay ?? 20_000, this.random);
      this.scheduleRefresh(d);
      return;
    }
    if (ws !== this.ws) return;
    this.useToken(token);
    ws.send(JSON.stringify({ type: 'refresh', token }));
    // The ack reschedules; this covers a relay that sends none.
    this.scheduleRefresh();
  }

  // ---- liveness ----------------------------------------------------------------------

  /**
   * Browsers hide pings from scripts, so liveness is judged by frames: after
   * `pingInterval` without one the client sends a refresh with its current token as
   * a probe (the relay answers `refreshed`); after `pingGrace` more it gives up on the
   * socket and reconnects.
   */
  private watch(): void {
    const interval = this.o.pingInterval ?? 25_000;
    const grace = this.o.pingGrace ?? 10_000;
    const idle = this.clock.now() - this.lastFrameAt;
    const ws = this.ws;
    if (!ws) return;
    if (idle >= interval + grace) return this.drop(ws, CLIENT_CODES.dead, 'no frame within pingInterval + pingGrace');
    if (idle >= interval && !this.probed) {
      this.probed = true;
      if (this.exp === undefined || this.exp * 1000 > this.clock.now() + 1000) {
        ws.send(JSON.stringify({ type: 'refresh', token: this.token }));
      }
    }
    const next = (this.probed ? interval + grace : interval) - idle;
    this.after('live', Math.max(1, next), () => this.watch());
  }

  // ---- closing and retrying ----------------------------------------------------------

  /** Gives up on a socket that will not tell us it closed (dead, or no welcome). */
  private drop(ws: SocketLike, code: number, reason: string): void {
    if (ws !== this.ws) return;
    this.closed(ws, code, reason);
    try {
      ws.close(1000);
    } catch {
      /* already closing */
    }
  }

  private closed(ws: SocketLike, code: number, reason: string): void {
    if (ws !== this.ws) return;
    const welcomed = this.welcomed;
    this.detach();
    const action = closeAction(code);
    if (action === 'stop') {
      this.report(new RelayClientError(`relay closed the socket with ${code} (${reason || 'no reason'}): fix the client`, code));
      return this.stop(code, reason);
    }
    // Stay on a node that was serving us (its history is there), unless it is going
    // away or did not answer; otherwise try the next URL.
    if (!welcomed || code === 1012 || code === 1013 || code === CLIENT_CODES.dead) this.urlIndex++;
    this.retry(code, reason);
  }

  private retry(code: number, reason: string, error?: unknown): void {
    this.lastCode = code;
    this.gen++;
    const attempt = this.attempt;
    if (!this.online()) {
      // No spinning while offline: the `online` event brings the next try.
      this.set({ state: 'disconnected', code, reason, delay: Infinity, attempt, error });
      return;
    }
    const delay = backoff(this.attempt++, this.o.minDelay ?? 500, this.o.maxDelay ?? 20_000, this.random);
    const gen = this.gen;
    this.set({ state: 'disconnected', code, reason, delay, attempt, error });
    // onStateChange may have called close() (e.g. to give up after some attempts).
    if (gen !== this.gen) return;
    this.after('retry', delay, () => void this.open());
  }

  private detach(): void {
    const ws = this.ws;
    if (ws) ws.onmessage = ws.onclose = ws.onerror = null;
    this.ws = null;
    this.welcomed = false;
    for (const t of ['connect', 'stable', 'refresh', 'live'] as const) this.clear(t);
  }

  private stop(code: number, reason: string): void {
    const ws = this.ws;
    this.detach();
    this.clear('retry');
    this.gen++;
    if (ws) {
      try {
        ws.close(1000, 'bye');
      } catch {
        /* already closing */
      }
    }
    this.events?.removeEventListener('online', this.onOnline);
    this.events?.removeEventListener('offline', this.onOffline);
    if (this.st.state !== 'closed') this.set({ state: 'closed', code, reason });
  }

  private readonly onOnline = (): void => {
    if (this.st.state !== 'disconnected') return;
    this.attempt = 0;
    void this.open();
  };

  private readonly onOffline = (): void => {
    if (this.st.state === 'closed') return;
    const ws = this.ws;
    this.detach();
    this.clear('retry');
    if (ws) {
      try {
        ws.close(1000);
      } catch {
        /* already closing */
      }
    }
    this.lastCode = CLIENT_CODES.offline;
    this.gen++;
    this.set({ state: 'disconnected', code: CLIENT_CODES.offline, reason: 'offline', delay: Infinity, attempt: this.attempt });
  };

  private online(): boolean {
    if (this.o.isOnline) return this.o.isOnline();
    const nav = (globalThis as { navigator?: { onLine?: boolean } }).navigator;
    return nav?.onLine !== false;
  }

  // ---- helpers -----------------------------------------------------------------------

  private after(t: Timer, ms: number, fn: () => void): void {
    this.clear(t);
    this.timers[t] = this.clock.setTimeout(() => {
      delete this.timers[t];
      fn();
    }, ms);
  }

  private clear(t: Timer): void {
    if (this.timers[t] !== undefined) {
      this.clock.clearTimeout(this.timers[t]);
      delete this.timers[t];
    }
  }

  private report(e: Error): void {
    this.call(this.o.onError, e);
  }

  private call<A extends unknown[]>(fn: ((...a: A) => void) | undefined, ...args: A): void {
    if (!fn) return;
    try {
      fn(...args);
    } catch (e) {
      if ((fn as unknown) !== this.o.onError) this.report(e instanceof Error ? e : new Error(String(e)));
    }
  }
}
