import { randomUUID } from 'node:crypto';
import { RelayError, retryableStatus } from './errors.js';
import { signToken, type SignTokenOptions } from './token.js';

/** One event to publish. `id` is filled in when absent, so a retry is deduplicated. */
export interface RelayEventInput {
  session: string;
  event: string;
  data?: unknown;
  id?: string;
}

/** The relay's receipt for one event (docs/protocol.md, "Receipts and dedupe"). */
export interface Receipt {
  session: string;
  seq: number;
  epoch: string;
  id: string;
  duplicate?: boolean;
  /** With `wait: 'delivered'`: sockets written, still queued, dropped (on every node). */
  written?: number;
  queued?: number;
  dropped?: number;
  /** With `wait: 'delivered'` through Redis: each node's counts for this event. */
  nodes?: NodeDelivery[];
  /** With `wait: 'delivered'` through Redis: nodes that did not answer within the relay's 1 s wait. */
  nodes_late?: number;
}

/** One node's delivery of one event (`wait: 'delivered'` through Redis). */
export interface NodeDelivery {
  /** The node's tag (the prefix of the ids it makes). */
  node: string;
  written: number;
  queued: number;
  dropped: number;
}

/** One user in a session's presence: their `sub` and how many sockets they hold. */
export interface PresenceUser {
  sub: string;
  sockets: number;
}

/**
 * `GET /sessions/{session}/presence` (docs/protocol.md, "Presence"), on every node
 * with Redis. `users` is absent when the session holds more users than the relay's
 * list threshold (`RELAY_PRESENCE_LIST_MAX`): then only the counts come back.
 * `next_cursor` is set when a page was asked for and more users follow.
 */
export interface Presence {
  session: string;
  users?: PresenceUser[];
  sockets: number;
  users_total: number;
  next_cursor?: string;
}

export interface PresenceOptions {
  /** Users per request (1 to 1,000; default 100). */
  limit?: number;
  /** Ask for one page from this cursor (a previous answer's `next_cursor`); without it every page is read. */
  cursor?: string;
  signal?: AbortSignal;
}

export interface PublishOptions {
  /** `'delivered'`: answer once the frames reached the sockets (adds counts to receipts). */
  wait?: 'delivered';
  /** Sent as `X-Relay-Tenant`, for the relay's per-tenant publish cap. */
  tenant?: string;
  signal?: AbortSignal;
}

export interface RelayServerOptions {
  /** The relay's HTTP(S) base, e.g. `https://relay.example.com`. */
  baseUrl: string;
  /** `RELAY_API_KEY`. */
  apiKey: string;
  /** `JWT_SIGNING_SECRET`, needed only for `signToken`. */
  secret?: string;
  /** Claim for the tenant in tokens (the relay's `RELAY_TENANT_CLAIM`). */
  tenantClaim?: string;
  /** Tries per request, the first included (default 5). */
  attempts?: number;
  /** Backoff bounds in ms (defaults 200 and 5,000); `Retry-After` wins when longer. */
  minDelay?: number;
  maxDelay?: number;
  /** Per-request timeout in ms (default 10,000); a timeout is retried like a network error. */
  timeout?: number;
  /** Events per request (the relay's `RELAY_MAX_BATCH_EVENTS`, default 1,000). */
  maxBatch?: number;
  /** Injected for tests. */
  fetch?: typeof fetch;
  sleep?: (ms: number) => Promise<void>;
  random?: () => number;
  newId?: () => string;
}

const realSleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/**
 * The backend half: signs socket tokens and publishes events. Every event gets an
 * `id` before the first try, and every retry sends the same body, so the relay's
 * dedupe makes a retried publish take effect once.
 */
export class RelayServer {
  private readonly o: RelayServerOptions;
  private readonly base: string;
  private readonly doFetch: typeof fetch;

  constructor(options: RelayServerOptions) {
    if (!options.baseUrl) throw new TypeError('RelayServer: baseUrl is required');
    if (!options.apiKey) throw new TypeError('RelayServer: apiKey is required');
    this.o = options;
    this.base = options.baseUrl.replace(/\/+$/, '');
    this.doFetch = options.fetch ?? globalThis.fetch;
    if (typeof this.doFetch !== 'function') throw new TypeError('RelayServer: no global fetch (Node >= 18 has one)');
  }

  /** A token for one session, signed with `secret`. */
  signToken(o: Omit<SignTokenOptions, 'secret' | 'tenantClaim'> & { secret?: string }): string {
    const secret = o.secret ?? this.o.secret;
    if (!secret) throw new TypeError('RelayServer.signToken: no secret configured');
    return signToken({ ...o, secret, tenantClaim: this.o.tenantClaim });
  }

  /**
   * Publishes one event or many, in order, and returns one receipt per event. More
   * than `maxBatch` events go as several requests, one after the other.
   */
  async publish(events: RelayEventInput | RelayEventInput[], options: PublishOptions = {}): Promise<Receipt[]> {
    const list = (Array.isArray(events) ? events : [events]).map((e) => withId(e, this.o.newId));
    if (list.length === 0) return [];
    const max = this.o.maxBatch ?? 1000;
    const receipts: Receipt[] = [];
    for (let i = 0; i < list.length; i += max) {
      const chunk = list.slice(i, i + max);
      const body = JSON.stringify(chunk.length === 1 && !Array.isArray(events) ? chunk[0] : { events: chunk });
      const url = this.base + '/events' + (options.wait ? '?wait=' + encodeURIComponent(options.wait) : '');
      const answer = (await this.send('POST', url, body, options)) as { events?: Receipt[] };
      receipts.push(...(answer.events ?? []));
    }
    return receipts;
  }

  /**
   * Who holds a socket in `session` now: every user (all pages, unless
   * `options.cursor` asks for one), their sockets, and the totals. An unknown
   * session answers an empty presence, not an error.
   */
  async presence(session: string, options: PresenceOptions = {}): Promise<Presence> {
    if (typeof session !== 'string' || !session) throw new TypeError('presence: session must be a non-empty string');
    const page = async (cursor?: string) => {
      let q = '?limit=' + (options.limit ?? 100);
      if (cursor) q += '&cursor=' + encodeURIComponent(cursor);
      const url = this.base + '/sessions/' + encodeURIComponent(session) + '/presence' + q;
      return (await this.send('GET', url, undefined, { signal: options.signal })) as Presence;
    };
    const first = await page(options.cursor);
    if (options.cursor !== undefined) return first;
    let next = first.next_cursor;
    while (next && first.users) {
      const more = await page(next);
      first.users.push(...(more.users ?? []));
      next = more.next_cursor;
    }
    delete first.next_cursor;
    return first;
  }

  private async send(method: string, url: string, body: string | undefined, o: PublishOptions): Promise<unknown> {
    const headers: Record<string, string> = { authorization: 'Bearer ' + this.o.apiKey };
    if (body !== undefined) headers['content-type'] = 'application/json';
    if (o.tenant) headers['x-relay-tenant'] = o.tenant;
    const attempts = Math.max(1, this.o.attempts ?? 5);
    const sleep = this.o.sleep ?? realSleep;
    const random = this.o.random ?? Math.random;
    for (let attempt = 0; ; attempt++) {
      let err: RelayError;
      try {
        const res = await this.doFetch(url, {
          method,
          headers,
          body,
          signal: anySignal(o.signal, this.o.timeout ?? 10_000),
        });
        const text = await res.text();
        if (res.ok) return text ? JSON.parse(text) : {};
        err = httpError(res.status, text, res.headers.get('retry-after'));
      } catch (e) {
        if (e instanceof RelayError) throw e;
        if (o.signal?.aborted) throw new RelayError({ message: 'request aborted', status: 0, code: 'aborted', retryable: false, cause: e });
        err = new RelayError({ message: 'network error: ' + String((e as Error)?.message ?? e), status: 0, code: 'network', retryable: true, cause: e });
      }
      if (!err.retryable || attempt + 1 >= attempts) throw err;
      const min = this.o.minDelay ?? 200;
      const ceiling = Math.min(this.o.maxDelay ?? 5000, min * 2 ** (attempt + 1));
      const jitter = min + random() * (ceiling - min);
      await sleep(Math.max(jitter, (err.retryAfter ?? 0) * 1000));
    }
  }
}

function withId(e: RelayEventInput, newId?: () => string): RelayEventInput {
  if (!e || typeof e.session !== 'string' || typeof e.event !== 'string') {
    throw new TypeError('publish: every event needs a string session and event');
  }
  const out: RelayEventInput = { session: e.session, event: e.event, data: e.data === undefined ? null : e.data, id: e.id };
  if (!out.id) out.id = newId ? newId() : randomUUID();
  return out;
}

function httpError(status: number, text: string, retryAfter: string | null): RelayError {
  let code = 'http_' + status;
  let message = text.slice(0, 200);
  try {
    const j = JSON.parse(text) as { error?: string; message?: string };
    if (j.error) code = j.error;
    if (j.message) message = j.message;
  } catch {
    /* not JSON */
  }
  return new RelayError({
    message: `relay answered ${status} ${code}: ${message}`,
    status,
    code,
    retryable: retryableStatus(status),
    retryAfter: parseRetryAfter(retryAfter),
  });
}

/** `Retry-After` in seconds: a number, or an HTTP date. */
export function parseRetryAfter(v: string | null): number | undefined {
  if (!v) return undefined;
  const n = Number(v);
  if (Number.isFinite(n) && n >= 0) return n;
  const t = Date.parse(v);
  return Number.isNaN(t) ? undefined : Math.max(0, (t - Date.now()) / 1000);
}

function anySignal(signal: AbortSignal | undefined, timeout: number): AbortSignal {
  const t = AbortSignal.timeout(timeout);
  if (!signal) return t;
  const c = new AbortController();
  const stop = () => c.abort();
  signal.addEventListener('abort', stop, { once: true });
  t.addEventListener('abort', stop, { once: true });
  return c.signal;
}
