export { RelayServer, parseRetryAfter } from './publish.js';
export type {
  NodeDelivery,
  Presence,
  PresenceOptions,
  PresenceUser,
  PublishOptions,
  Receipt,
  RelayEventInput,
  RelayServerOptions,
} from './publish.js';
export { signToken } from './token.js';
export type { SignTokenOptions } from './token.js';
export { RelayError, retryableStatus } from './errors.js';
