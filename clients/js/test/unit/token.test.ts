import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHmac } from 'node:crypto';
import { readClaims, tokenExp } from '@relay/client';
import { signToken } from '@relay/server';

test('tokenExp reads exp without verifying', () => {
  const t = signToken({ secret: 'x'.repeat(32), session: 'issue:PROJ-1', sub: 'åsa ☃', ttl: 600, now: 1_000 });
  assert.equal(tokenExp(t), 1_600);
  const c = readClaims(t)!;
  assert.equal(c.session, 'issue:PROJ-1');
  assert.equal(c.sub, 'åsa ☃');
  assert.equal(c.iat, 1_000);
  assert.equal(c.nbf, 1_000);
});

test('tokenExp is undefined for non-JWTs and tokens without a numeric exp', () => {
  for (const bad of ['', 'abc', 'a.b.c', 'a.%%%.c', 'a..c']) assert.equal(tokenExp(bad), undefined, bad);
  const b = (o: object) => Buffer.from(JSON.stringify(o)).toString('base64url');
  assert.equal(tokenExp('h.' + b({ exp: '12' }) + '.s'), undefined);
  assert.equal(tokenExp('h.' + b({ session: 's' }) + '.s'), undefined);
  assert.equal(tokenExp('h.' + b({ exp: 42 }) + '.s'), 42);
});

test('signToken makes an HS256 JWT the relay can check', () => {
  const secret = 's'.repeat(40);
  const t = signToken({ secret, session: 'a', tenant: 'inst-1', tenantClaim: 'cloudId', ttl: 10, now: 5 });
  const [h, p, sig] = t.split('.');
  assert.deepEqual(JSON.parse(Buffer.from(h!, 'base64url').toString()), { alg: 'HS256', typ: 'JWT' });
  assert.equal(sig, createHmac('sha256', secret).update(h + '.' + p).digest('base64url'));
  assert.deepEqual(readClaims(t), { session: 'a', iat: 5, nbf: 5, exp: 15, cloudId: 'inst-1' });
  assert.throws(() => signToken({ secret, session: 'has space' }), /session/);
  assert.throws(() => signToken({ secret: '', session: 'a' }), /secret/);
});
