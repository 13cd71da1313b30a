import { backoff } from './backoff.js';
import { CLIENT_CODES, closeAction } from './codes.js';
import { Roster } from './presence.js';
import { EventStream } from './sse.js';
import { Tracker } from './stream.js';
import { tokenExp } from './token.js';
import type {
  Clock,
  EventSourceLike,
  Fetch,
  Position,
  PresenceState,
  RelayClientOptions,
  RelayEvent,
  Resync,
  SocketFactory,
  SocketLike,
  State,
  Transport,
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

type Timer = 'retry' | 'connect' | 'stable' | 'refresh' | 'live' | 'trial';

/** The event stream's URL: the WebSocket's, with `http(s)` and `/sse` for its last `/ws`. */
const sseUrl = (url: string) => httpUrl(url).replace(/\/ws(?=$|[?#])/, '/sse');
const httpUrl = (url: string) => url.replace(/^ws/, 'http');

/**
 * A browser client for one relay session: it connects with the token in the
 * subprotocol, hands every event to `onEvent` exactly once and in order across
 * reconnects, resumes with `since`, refreshes its token in-band, and reconnects by
 * itself with backoff. Where WebSockets cannot be opened it reads the session's
 * event stream instead (`GET /sse`), with the same guarantees, and goes back to a
 * WebSocket when one opens again.
 */
export class RelayClient {
  private st: State = { state: 'closed', code: 0, reason: 'not connected yet' };
  private readonly o: RelayClientOptions;
  private readonly urls: string[];
  private readonly clock: Clock;
  private readonly random: () => number;
  private readonly WS: SocketFactory;
  private readonly fetch: Fetch;
  private readonly events: EventSourceLike | null;
  private readonly tracker: Tracker;
  private readonly roster = new Roster();
  private readonly timers: Partial<Record<Timer, unknown>> = {};
  /** The connection events come from (a WebSocket or an EventStream). */
  private ws: SocketLike | null = null;
  /** A WebSocket opened beside the event stream, to take over once welcomed. */
  private trial: SocketLike | null = null;
  /** The transport of the next try. */
  private tr: Transport = 'ws';
  /** `ws` is an event stream. */
  private sse = false;
  /** The URL `ws` was opened with. */
  private cur = '';
  /** WebSocket tries in a row that got no welcome. */
  private fails = 0;
  /** On the event stream: time to try a WebSocket again, at the next welcome. */
  private due = false;
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
    this.fetch = options.fetch ?? ((url, init) => fetch(url, init));
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

  /** The session's presence from the last presence frame (`null` before any). */
  get presence(): PresenceState | null {
    return this.roster.state;
  }

  /** Starts connecting; a no-op unless the client is closed. */
  connect(): void {
    if (this.st.state !== 'closed') return;
    this.events?.addEventListener('online', this.onOnline);
    this.events?.addEventListener('offline', this.onOffline);
    this.attempt = 0;
    this.fails = 0;
    this.tr = this.can('ws') ? 'ws' : 'sse';
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
    const sse = this.tr === 'sse';
    const base = this.base();
    const url = sse ? sseUrl(base) : base;
    this.set({ state: 'connecting', url, attempt: this.attempt, transport: this.tr });
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
    const pos = this.tracker.pos;
    let ws: SocketLike;
    try {
      ws = sse ? this.attach(new EventStream(url, token, pos ? pos.epoch + ':' + pos.seq : '', this.fetch)) : this.socket(url, token);
    } catch (e) {
      // A URL the browser refuses: no retry can help.
      this.report(new RelayClientError('cannot open ' + url, 1002, e));
      return this.stop(1002, 'bad url');
    }
    this.ws = ws;
    this.sse = sse;
    this.cur = url;
    this.welcomed = false;
    this.after('connect', this.o.connectTimeout ?? 10_000, () =>
      this.drop(ws, CLIENT_CODES.connectTimeout, 'no welcome within connectTimeout'),
    );
  }

  /** A WebSocket with the token, and the position to resume from, in its subprotocols. */
  private socket(url: string, token: string): SocketLike {
    const protocols = ['relay.v1', 'bearer.' + token];
    const pos = this.tracker.pos;
    if (pos) protocols.push(`since.${pos.epoch}.${pos.seq}`);
    return this.attach(new this.WS(url, protocols));
  }

  private attach(ws: SocketLike): SocketLike {
    ws.onmessage = (m) => this.frame(ws, m.data);
    ws.onclose = (c) => this.closed(ws, c.code, c.reason);
    ws.onerror = () => {};
    return ws;
  }

  private useToken(token: string): void {
    this.token = token;
    this.exp = tokenExp(token);
    this.tokenAt = this.clock.now();
  }

  // ---- frames ------------------------------------------------------------------------

  private frame(ws: SocketLike, data: unknown): void {
    if (ws !== this.ws && ws !== this.trial) return;
    this.lastFrameAt = this.clock.now();
    this.probed = false;
    let f: Record<string, any>;
    try {
      f = JSON.parse(String(data));
    } catch {
      return;
    }
    if (ws === this.trial) {
      if (f.type !== 'welcome') return;
      // A WebSocket opens again: it takes over from the event stream. It resumes
      // from the position the trial was opened with; what the stream delivered
      // since is dropped from its replay as duplicates.
      const stream = this.ws!;
      this.trial = null;
      this.detach();
      stream.close();
      this.ws = ws;
      this.sse = false;
      this.cur = this.base();
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
        if (!this.sse) {
          this.tr = 'ws';
          this.fails = 0;
          this.due = false;
          this.clear('trial');
        }
        this.set({ state: 'connected', url: this.cur, session: f.session, conn: f.conn, transport: this.sse ? 'sse' : 'ws' });
        if (ws !== this.ws) return; // onStateChange called close()
        this.after('stable', this.o.stableAfter ?? 10_000, () => (this.attempt = 0));
        // An event stream has no in-band refresh: it ends with 4001 at exp, and the
        // reconnect gets a new token.
        if (!this.sse) this.scheduleRefresh();
        this.watch();
        void this.tryWs();
        return;
      case 'resync':
        this.resynced(this.tracker.resync(f.epoch, f.seq));
        return;
      case 'presence':
        if (ws === this.ws) this.call(this.o.onPresence, this.roster.apply(f));
        return;
      case 'refreshed':
        if (typeof f.exp === 'number') this.exp = f.exp;
        this.refreshAttempt = 0;
        this.scheduleRefresh();
        this.call(this.o.onRefreshed, f.exp);
        return;
      case 'close':
        // An event stream's last block: the code a WebSocket would have closed with.
        return this.drop(ws, +f.code || 1006, String(f.reason ?? ''));
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
      const d = this.delay(this.refreshAttempt++);
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
    if (ws === this.trial) {
      // Still no WebSocket: stay on the event stream, try again later.
      this.trial = null;
      ws.onmessage = ws.onclose = null;
      try {
        ws.close(1000);
      } catch {
        /* already closing */
      }
      return this.later();
    }
    if (ws !== this.ws) return;
    const welcomed = this.welcomed;
    const sse = this.sse;
    this.detach();
    const action = closeAction(code);
    if (action === 'stop') {
      this.report(new RelayClientError(`relay closed the socket with ${code} (${reason || 'no reason'}): fix the client`, code));
      return this.stop(code, reason);
    }
    if (sse) {
      // The event stream was not welcomed either: back to WebSockets.
      if (!welcomed && this.can('ws')) {
        this.tr = 'ws';
        this.fails = 0;
        this.clear('trial');
      }
    } else if (!welcomed || code === 1012) {
      if (!welcomed) this.fails++;
      this.probe(this.base());
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
    const delay = this.delay(this.attempt++);
    const gen = this.gen;
    this.set({ state: 'disconnected', code, reason, delay, attempt, error });
    // onStateChange may have called close() (e.g. to give up after some attempts).
    if (gen !== this.gen) return;
    this.after('retry', delay, () => void this.open());
  }

  private detach(): void {
    const trial = this.trial;
    for (const s of [this.ws, trial]) if (s) s.onmessage = s.onclose = s.onerror = null;
    this.ws = this.trial = null;
    this.welcomed = false;
    for (const t of ['connect', 'stable', 'refresh', 'live'] as const) this.clear(t);
    if (trial) {
      try {
        trial.close(1000);
      } catch {
        /* already closing */
      }
      this.later();
    }
  }

  // ---- the event stream, and back ----------------------------------------------------

  /**
   * After a WebSocket try that got no welcome, or a 1012, a plain GET on the
   * WebSocket's URL (no-cors: no preflight, nothing to expose) tells whether HTTP
   * reaches the relay: it resolves when anything answers, and fails like the
   * socket when nothing does (a node down, the network). The client moves to the
   * event stream once `fallbackAfter` tries in a row failed and HTTP answers, or
   * at once when the answer is readable (same origin) and its
   * `X-Relay-Transports` offers `sse` but not `ws`. The next try is then the
   * event stream, within the first backoff step; a welcome on a WebSocket
   * meanwhile cancels the move.
   */
  private probe(url: string): void {
    if (!this.can('sse')) return;
    this.fetch(httpUrl(url), { mode: 'no-cors', cache: 'no-store' }).then(
      (r) => {
        const offered = r.headers.get('x-relay-transports');
        if (
          this.tr === 'ws' &&
          !this.welcomed &&
          this.st.state !== 'closed' &&
          (offered ? !offered.includes('ws') && offered.includes('sse') : this.fails >= (this.o.fallbackAfter ?? 3))
        ) {
          this.tr = 'sse';
          this.later();
          // A different transport: the first backoff step, not the socket's next.
          if (this.st.state === 'disconnected' && this.timers.retry !== undefined) {
            const delay = this.delay(0);
            this.after('retry', delay, () => void this.open());
            this.set({ ...this.st, delay });
          }
        }
      },
      () => {},
    );
  }

  /** On the event stream: try a WebSocket again after `wsRetryAfter`. */
  private later(): void {
    const ms = this.o.wsRetryAfter ?? 300_000;
    if (this.can('ws') && ms < 2 ** 31)
      this.after('trial', ms, () => {
        this.due = true;
        void this.tryWs();
      });
  }

  /** Opens the trial WebSocket, when it is due and the event stream is up. */
  private async tryWs(): Promise<void> {
    const stream = this.ws;
    if (!this.due || !this.sse || !this.welcomed || this.trial) return;
    this.due = false;
    let token = '';
    try {
      token = await this.o.getToken();
    } catch {
      /* try later */
    }
    if (stream !== this.ws) {
      // The stream dropped meanwhile: at its next welcome.
      this.due = true;
      return this.tryWs();
    }
    if (typeof token !== 'string' || !token) return this.later();
    this.useToken(token);
    let ws: SocketLike;
    try {
      ws = this.trial = this.socket(this.base(), token);
    } catch {
      return this.later();
    }
    this.after('trial', this.o.connectTimeout ?? 10_000, () => this.closed(ws, CLIENT_CODES.connectTimeout, ''));
  }

  private delay(attempt: number): number {
    return backoff(attempt, this.o.minDelay ?? 500, this.o.maxDelay ?? 20_000, this.random);
  }

  private can(t: Transport): boolean {
    return (this.o.transports ?? ['ws', 'sse']).includes(t);
  }

  private base(): string {
    return this.urls[this.urlIndex % this.urls.length]!;
  }

  private stop(code: number, reason: string): void {
    const ws = this.ws;
    this.detach();
    this.clear('retry');
    this.clear('trial');
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
