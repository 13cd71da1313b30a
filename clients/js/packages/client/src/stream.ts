import type { Position, Resync } from './types.js';

/** What to do with one event frame. */
export interface Step {
  deliver: boolean;
  /** Set when the event does not follow the last delivered one: reload first. */
  resync?: Resync;
}

/**
 * Keeps the position of the last event handed to the application, and decides for
 * each frame: deliver, drop (a duplicate `seq`, e.g. a replay overlapping what was
 * already delivered), or resync first (a gap, or an epoch nobody announced).
 */
export class Tracker {
  constructor(public pos: Position | null = null) {}

  /** A fresh client takes the welcome's position; a resuming one keeps its own. */
  welcome(epoch: string, seq: number): void {
    if (!this.pos) this.pos = { epoch, seq };
  }

  resync(epoch: string, seq: number): Resync {
    this.pos = { epoch, seq };
    return { epoch, seq, reason: 'resync' };
  }

  event(epoch: string, seq: number): Step {
    const p = this.pos;
    let resync: Resync | undefined;
    if (p && p.epoch === epoch) {
      if (seq <= p.seq) return { deliver: false };
      if (seq !== p.seq + 1) resync = { epoch, seq: seq - 1, reason: 'gap' };
    } else if (p) {
      resync = { epoch, seq: seq - 1, reason: 'epoch' };
    }
    this.pos = { epoch, seq };
    return resync ? { deliver: true, resync } : { deliver: true };
  }
}
