/**
 * Every failure of the backend client is a RelayError: the HTTP status (0 for a
 * network error or timeout), the relay's error code (`rate_limited`,
 * `unavailable`, ..., or `network`), and whether retrying the same request (same
 * ids) can succeed.
 */
export class RelayError extends Error {
  readonly status: number;
  readonly code: string;
  readonly retryable: boolean;
  /** Seconds from a `Retry-After` header, when the relay sent one. */
  readonly retryAfter: number | undefined;
  override readonly cause: unknown;

  constructor(init: { message: string; status: number; code: string; retryable: boolean; retryAfter?: number; cause?: unknown }) {
    super(init.message);
    this.name = 'RelayError';
    this.status = init.status;
    this.code = init.code;
    this.retryable = init.retryable;
    this.retryAfter = init.retryAfter;
    this.cause = init.cause;
  }
}

/** Statuses worth a retry with the same ids: the relay dedupes what already got through. */
export function retryableStatus(status: number): boolean {
  return status === 408 || status === 429 || status === 502 || status === 503 || status === 504;
}
