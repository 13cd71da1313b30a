import { test } from 'node:test';
import assert from 'node:assert/strict';
import { backoff } from '@relay/client';

test('backoff stays within [min, min*2^(n+1)] capped at max', () => {
  for (let n = 0; n < 40; n++) {
    const ceiling = Math.min(20_000, 500 * 2 ** (n + 1));
    assert.equal(backoff(n, 500, 20_000, () => 0), 500);
    assert.equal(backoff(n, 500, 20_000, () => 0.999999), Math.round(500 + 0.999999 * (ceiling - 500)));
    for (let i = 0; i < 200; i++) {
      const d = backoff(n, 500, 20_000, Math.random);
      assert.ok(d >= 500 && d <= ceiling, `attempt ${n}: ${d} outside [500, ${ceiling}]`);
    }
  }
  // The first retry is quick; from the sixth on the ceiling is max.
  assert.equal(backoff(0, 500, 20_000, () => 1), 1000);
  assert.equal(backoff(5, 500, 20_000, () => 1), 20_000);
  // Configurable bounds; max below min means always max.
  assert.equal(backoff(3, 100, 1000, () => 1), 1000);
  assert.equal(backoff(3, 5000, 1000, () => 0.5), 1000);
});

test('backoff spreads clients over the whole window (full jitter)', () => {
  const n = 6; // ceiling 20 s
  const samples = Array.from({ length: 5000 }, () => backoff(n, 500, 20_000, Math.random));
  const buckets = new Array(10).fill(0);
  for (const d of samples) buckets[Math.min(9, Math.floor(((d - 500) / 19_500) * 10))]++;
  // Uniform: each tenth of the window gets about 500 of 5000; none is empty or crowded.
  for (const b of buckets) assert.ok(b > 350 && b < 650, `buckets ${buckets}`);
  const mean = samples.reduce((a, b) => a + b, 0) / samples.length;
  assert.ok(Math.abs(mean - 10_250) < 600, `mean ${mean}`);
  assert.ok(new Set(samples).size > 3000, 'distinct delays');
});
