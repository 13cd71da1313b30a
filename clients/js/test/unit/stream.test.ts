import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Tracker } from '@relay/client';

test('exactly once across a replay that overlaps what was delivered', () => {
  const t = new Tracker();
  t.welcome('e1', 0);
  const got: number[] = [];
  const feed = (seqs: number[]) => {
    for (const s of seqs) {
      const step = t.event('e1', s);
      assert.equal(step.resync, undefined, `no resync at ${s}`);
      if (step.deliver) got.push(s);
    }
  };
  feed([1, 2, 3, 4, 5]);
  // A reconnect's replay that starts before the last delivered event, then live ones.
  feed([3, 4, 5, 6, 7]);
  feed([7, 8]);
  assert.deepEqual(got, [1, 2, 3, 4, 5, 6, 7, 8]);
  assert.deepEqual(t.pos, { epoch: 'e1', seq: 8 });
});

test('a resuming client keeps its own position, not the welcome', () => {
  const t = new Tracker({ epoch: 'e1', seq: 10 });
  t.welcome('e1', 15); // the stream's newest; 11..15 are replayed after it
  assert.deepEqual(t.pos, { epoch: 'e1', seq: 10 });
  assert.deepEqual(t.event('e1', 11), { deliver: true });
});

test('a gap or an unannounced epoch is a resync, then delivery goes on', () => {
  const t = new Tracker({ epoch: 'e1', seq: 3 });
  assert.deepEqual(t.event('e1', 6), { deliver: true, resync: { epoch: 'e1', seq: 5, reason: 'gap' } });
  assert.deepEqual(t.event('e1', 7), { deliver: true });
  assert.deepEqual(t.event('e2', 1), { deliver: true, resync: { epoch: 'e2', seq: 0, reason: 'epoch' } });
  // A resync frame moves the position; what it covers is dropped.
  assert.deepEqual(t.resync('e3', 40), { epoch: 'e3', seq: 40, reason: 'resync' });
  assert.deepEqual(t.event('e3', 40), { deliver: false });
  assert.deepEqual(t.event('e3', 41), { deliver: true });
});
