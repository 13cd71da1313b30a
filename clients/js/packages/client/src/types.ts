/** The public types of @relay/client; the README documents each of them. */

/** A place in a session's stream: the last event handed to the application. */
export interface Position {
  epoch: string;
  seq: number;
}

/** One event as the relay sends it, handed to `onEvent` exactly once, in `seq` order. */
export interface RelayEvent<T = unknown> {
  session: string;
  seq: number;
  epoch: string;
  event: string;
  id: string;
  data: T;
}

/**
 * Why `onResync` was called: `resync` when the relay said so (a new epoch, or a
 * history too short for the resume), `gap` or `epoch` when the client saw an event
 * that does not follow the last one it delivered.
 */
export type ResyncReason = 'resync' | 'gap' | 'epoch';

/** Events up to `seq` of `epoch` may be missing: reload the state from the backend. */
export interface Resync {
  epoch: string;
  seq: number;
  reason: ResyncReason;
}

/**
 * How the client reaches the relay: a WebSocket (`GET /ws`), or an event stream
 * (`GET /sse`, read with `fetch`) where WebSockets cannot be opened.
 */
export type Transport = 'ws' | 'sse';

/**
 * The client's state: a closed union, changed in one place only.
 * - `connecting`: fetching a token or waiting for the welcome, over `transport`;
 * - `connected`: the welcome arrived, events flow over `transport`;
 * - `disconnected`: waiting `delay` ms before the next try (`Infinity` while the
 *   browser is offline: the next try comes with the `online` event). `code` and
 *   `reason` are those of the last close; `error` is set when `getToken` failed;
 * - `closed`: stopped for good, by `close()` or by a close code that means the
 *   client must be fixed. Also the state before `connect()`.
 */
export type State =
  | { state: 'connecting'; url: string; attempt: number; transport: Transport }
  | { state: 'connected'; url: string; session: string; conn: string; transport: Transport }
  | { state: 'disconnected'; code: number; reason: string; delay: number; attempt: number; error?: unknown }
  | { state: 'closed'; code: number; reason: string };

export type StateName = State['state'];

/**
 * Who holds a socket in the session (the relay's presence frames, when presence is
 * on for this socket: `RELAY_PRESENCE`, or the token's `presence` claim). `users`
 * are the `sub`s, sorted; `null` when the relay sends counts only (`counts` mode,
 * or a session above its list threshold).
 */
export interface PresenceState {
  users: string[] | null;
  usersTotal: number;
  sockets: number;
}

/** Time, injected so that backoff, refresh and liveness are tested without sleeping. */
export interface Clock {
  now(): number;
  setTimeout(fn: () => void, ms: number): unknown;
  clearTimeout(handle: unknown): void;
}

/** The part of the browser's WebSocket the client uses. */
export interface SocketLike {
  send(data: string): void;
  close(code?: number, reason?: string): void;
  onmessage: ((ev: { data: unknown }) => void) | null;
  onclose: ((ev: { code: number; reason: string }) => void) | null;
  onerror: ((ev: unknown) => void) | null;
}

export type SocketFactory = new (url: string, protocols: string[]) => SocketLike;

/** The part of the browser's `fetch` the client uses (the event stream and the probe). */
export type Fetch = (url: string, init: RequestInit) => Promise<Response>;

/** Where `online` and `offline` events come from (the window, by default). */
export interface EventSourceLike {
  addEventListener(type: string, fn: () => void): void;
  removeEventListener(type: string, fn: () => void): void;
}

export interface RelayClientOptions {
  /** `wss://host/ws`, or several: the client moves to the next after a failed try or a 1012. */
  url: string | string[];
  /** Called before every connect and before every refresh; may return a promise. */
  getToken: () => string | Promise<string>;
  onEvent?: (event: RelayEvent) => void;
  onResync?: (resync: Resync) => void;
  onStateChange?: (state: State, previous: State) => void;
  /** A failed `getToken`, a refused client, an exception thrown by a callback. */
  onError?: (error: Error) => void;
  /** The relay acknowledged a refresh; `exp` is the socket's new expiry (Unix seconds). */
  onRefreshed?: (exp: number) => void;
  /** The session's presence changed (a snapshot after each welcome, then joins and leaves). */
  onPresence?: (presence: PresenceState) => void;
  /** Start from this position (e.g. the one the application's state was loaded at). */
  since?: Position | null;
  /** Backoff bounds in ms (defaults 500 and 20,000). */
  minDelay?: number;
  maxDelay?: number;
  /** A connection open this long resets the backoff (ms, default 10,000). */
  stableAfter?: number;
  /** Liveness: after this long without a frame the client probes (ms, default 25,000)... */
  pingInterval?: number;
  /** ...and after this much more it closes the socket and reconnects (ms, default 10,000). */
  pingGrace?: number;
  /** From opening the socket to its welcome (ms, default 10,000). */
  connectTimeout?: number;
  /** Refresh this long before `exp`, at most a third of the token's life (ms, default 30,000). */
  refreshMargin?: number;
  /**
   * The transports the client may use (default both). The WebSocket comes first;
   * `['ws']` never falls back, `['sse']` never tries a WebSocket.
   */
  transports?: Transport[];
  /**
   * Move to the event stream after this many WebSocket tries in a row that got no
   * welcome, while the relay answers plain HTTP (default 3). Sooner when the
   * relay's refusal says WebSockets are switched off and can be read.
   */
  fallbackAfter?: number;
  /**
   * On the event stream, open a WebSocket again after this long (ms, default
   * 300,000); it takes over when it is welcomed, and is tried again as long
   * after each failure.
   */
  wsRetryAfter?: number;
  /** Injected for tests; default the global ones. */
  WebSocket?: SocketFactory;
  fetch?: Fetch;
  clock?: Clock;
  random?: () => number;
  events?: EventSourceLike | null;
  isOnline?: () => boolean;
}
