export { RelayClient, RelayClientError } from './client.js';
export { CLOSE_CODES, CLIENT_CODES, closeAction } from './codes.js';
export type { CloseAction } from './codes.js';
export { backoff } from './backoff.js';
export { readClaims, tokenExp } from './token.js';
export { Tracker } from './stream.js';
export { Roster } from './presence.js';
export { EventStream, SseParser } from './sse.js';
export type {
  Clock,
  EventSourceLike,
  Fetch,
  Position,
  PresenceState,
  RelayClientOptions,
  RelayEvent,
  Resync,
  ResyncReason,
  SocketFactory,
  SocketLike,
  State,
  StateName,
  Transport,
} from './types.js';
