import type { PresenceState } from './types.js';

/**
 * The session's presence as the relay's presence frames tell it: a snapshot
 * (`users`) replaces the list, a change adds its `join`s and removes its
 * `leave`s. Counts-only frames (no names) leave `users` null.
 */
export class Roster {
  private names: Set<string> | null = null;
  state: PresenceState | null = null;

  /** Applies one presence frame; returns the state after it. */
  apply(f: Record<string, any>): PresenceState {
    if (Array.isArray(f.users)) this.names = new Set(f.users.map((u: { sub: string }) => String(u.sub)));
    else if (Array.isArray(f.join) || Array.isArray(f.leave)) {
      this.names ??= new Set();
      for (const j of f.join ?? []) this.names.add(String(j));
      for (const l of f.leave ?? []) this.names.delete(String(l));
    } else this.names = null;
    return (this.state = {
      users: this.names ? [...this.names].sort() : null,
      usersTotal: +f.users_total || 0,
      sockets: +f.sockets || 0,
    });
  }
}
