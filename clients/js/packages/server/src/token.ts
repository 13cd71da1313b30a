import { createHmac } from 'node:crypto';

export interface SignTokenOptions {
  /** `JWT_SIGNING_SECRET` (one of them, if the relay has several). */
  secret: string;
  /** The one session the socket joins, e.g. `issue:PROJ-1`. */
  session: string;
  /** The user, optional. */
  sub?: string;
  /** Lifetime in seconds (default 900: 15 minutes). */
  ttl?: number;
  /** The tenant (e.g. a Forge installation); written under `tenantClaim`. */
  tenant?: string;
  /** The claim the relay's `RELAY_TENANT_CLAIM` names (default `tenant`). */
  tenantClaim?: string;
  /** Presence frames for this socket whatever `RELAY_PRESENCE` says: `counts` or `users`. */
  presence?: 'counts' | 'users';
  /** `aud` / `iss`, when the relay checks them (`JWT_AUDIENCE` / `JWT_ISSUER`). */
  audience?: string;
  issuer?: string;
  /** Unix seconds; injected for tests. */
  now?: number;
}

const SESSION = /^[A-Za-z0-9._:-]{1,128}$/;

function b64url(data: string | Buffer): string {
  return Buffer.from(data).toString('base64url');
}

/** An HS256 JWT the relay accepts: `session`, `sub`, `iat`, `nbf`, `exp` (and the tenant). */
export function signToken(o: SignTokenOptions): string {
  if (!o.secret) throw new TypeError('signToken: secret is required');
  if (!SESSION.test(o.session)) {
    throw new TypeError('signToken: session must be 1 to 128 of A-Z a-z 0-9 . _ : -');
  }
  const now = o.now ?? Math.floor(Date.now() / 1000);
  const ttl = o.ttl ?? 900;
  if (!(ttl > 0)) throw new TypeError('signToken: ttl must be positive');
  const claims: Record<string, unknown> = { session: o.session, iat: now, nbf: now, exp: now + Math.ceil(ttl) };
  if (o.sub !== undefined) claims.sub = o.sub;
  if (o.tenant !== undefined) claims[o.tenantClaim ?? 'tenant'] = o.tenant;
  if (o.presence !== undefined) claims.presence = o.presence;
  if (o.audience !== undefined) claims.aud = o.audience;
  if (o.issuer !== undefined) claims.iss = o.issuer;
  const head = b64url(JSON.stringify({ alg: 'HS256', typ: 'JWT' })) + '.' + b64url(JSON.stringify(claims));
  const sig = createHmac('sha256', o.secret).update(head).digest('base64url');
  return head + '.' + sig;
}
