/**
 * What each close code means for the client: the single table. It is the
 * "Close codes" table of docs/protocol.md, and test/unit/codes.test.ts keeps the two
 * equal.
 * - `retry`: reconnect with backoff, resuming with `since`;
 * - `token`: get a new token, then reconnect with `since`;
 * - `stop`: the client sent something the relay refuses; retrying would repeat it.
 */
export type CloseAction = 'retry' | 'token' | 'stop';

export const CLOSE_CODES: Readonly<Record<number, CloseAction>> = {
  1001: 'retry', // silent for the ping timeout
  1002: 'stop', // protocol error
  1007: 'stop', // invalid UTF-8
  1008: 'stop', // message refused, or refresh for another session
  1009: 'stop', // client message too large
  1011: 'retry', // internal error
  1012: 'retry', // node restarting or draining: to another node if there is one
  1013: 'retry', // node overloaded: later
  4001: 'token', // token expired without a refresh
  4008: 'retry', // could not keep up
};

/**
 * Codes the client reports in `disconnected` for what it saw itself. They never go
 * on the wire. 1006 (no close frame: the network, or a refused handshake) is the
 * browser's own.
 */
export const CLIENT_CODES = {
  /** no frame within `pingInterval` + `pingGrace` */
  dead: 4900,
  /** no welcome within `connectTimeout` */
  connectTimeout: 4901,
  /** the browser went offline */
  offline: 4902,
} as const;

/** Any code not in the table (1000, 1005, 1006, the client's own) is retried. */
export function closeAction(code: number): CloseAction {
  return CLOSE_CODES[code] ?? 'retry';
}
