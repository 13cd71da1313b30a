/**
 * Exponential backoff with full jitter: try `attempt` (0-based) waits a uniformly
 * random time between `min` and `min * 2^(attempt + 1)`, the ceiling capped at `max`.
 * So the first retry waits 0.5-1 s by default, and from the sixth on 0.5-20 s.
 */
export function backoff(attempt: number, min: number, max: number, random: () => number): number {
  const floor = Math.min(min, max);
  const ceiling = Math.min(max, floor * 2 ** Math.min(attempt + 1, 30));
  return Math.round(floor + random() * (ceiling - floor));
}
