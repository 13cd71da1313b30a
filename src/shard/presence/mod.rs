//! Presence on one shard: who holds a subscriber in each session the shard owns
//! (by the `sub` claim; a user with three tabs counts once, with three sockets),
//! what other nodes said they hold (with Redis), and the changes not announced
//! yet, coalesced per session.
//!
//! A session's subscribers on a node all live on its owning shard, so this table
//! knows the node's part of a session's presence without asking anyone. A change
//! (a user's first socket, or its last, here or on another node) marks the
//! session due at most once per interval after its last frame; a user who joins
//! and leaves again inside one interval cancels out, and no frame goes. Only
//! sessions with changes are in the due queue: nothing here walks every session.
//!
//! Pure bookkeeping: no I/O, no clock (every call takes `now`, [`mono_ms`]
//! milliseconds), no sockets. What a change is written as is [`json`]'s; sending
//! it is `shard::announce`'s.
//!
//! [`mono_ms`]: super::registry::mono_ms

pub mod json;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::rc::Rc;

/// One user's sockets in a session: here, and on other nodes together.
#[derive(Debug, Default, Clone, Copy)]
struct Count {
    local: u32,
    remote: u32,
}

impl Count {
    fn total(self) -> u32 {
        self.local + self.remote
    }
}

/// What another node said it holds of a session (its last share).
#[derive(Debug, Default)]
struct RemoteShare {
    users: HashMap<Rc<str>, u32>,
    sockets: u32,
}

/// One session's presence on this shard.
#[derive(Debug, Default)]
struct SessionPresence {
    users: HashMap<Rc<str>, Count>,
    /// Subscribers here, named or not.
    local_sockets: u32,
    /// Other nodes' shares, by node id.
    remote: HashMap<Box<str>, RemoteShare>,
    /// Users who came or went since the last frame (never both).
    joined: HashSet<Rc<str>>,
    left: HashSet<Rc<str>>,
    /// Subscribers here that asked for frames.
    listeners: u32,
    /// When the session was last flushed (a frame, a share for Redis)
    /// ([`mono_ms`](super::registry::mono_ms)); 0: never.
    last_frame: u64,
    /// In the due queue.
    scheduled: bool,
    /// This node's share changed since it was last taken (for Redis).
    share_dirty: bool,
    /// A user came or went since the last frame, even if it cancelled out (a
    /// subscriber whose snapshot was taken in between needs a new one).
    touched: bool,
}

impl SessionPresence {
    fn sockets(&self) -> u32 {
        self.local_sockets + self.remote.values().map(|r| r.sockets).sum::<u32>()
    }

    fn is_empty(&self) -> bool {
        self.local_sockets == 0 && self.remote.is_empty() && self.users.is_empty()
    }

    /// A user's count went from 0 to more.
    fn came(&mut self, sub: &Rc<str>) {
        self.touched = true;
        if !self.left.remove(sub) {
            self.joined.insert(sub.clone());
        }
    }

    /// A user's count went to 0.
    fn went(&mut self, sub: &Rc<str>) {
        self.touched = true;
        if !self.joined.remove(sub) {
            self.left.insert(sub.clone());
        }
    }
}

/// What changed in a session since its last frame, with its counts now. Both
/// lists empty: changes that cancelled out (only subscribers whose snapshot was
/// taken meanwhile need to hear of it, with a new snapshot).
#[derive(Debug, PartialEq, Eq)]
pub struct Change {
    /// Sorted.
    pub join: Vec<Rc<str>>,
    /// Sorted.
    pub leave: Vec<Rc<str>>,
    pub users_total: usize,
    pub sockets: u32,
}

/// A session's presence as the query and the snapshot frame show it.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct View {
    /// Every user with their sockets (here and elsewhere), sorted by `sub`; empty
    /// when the session has more users than the list threshold (`listed` false).
    pub users: Vec<(Rc<str>, u32)>,
    pub sockets: u32,
    pub total: usize,
    /// `users` names everyone.
    pub listed: bool,
}

/// This node's part of a session, for the other nodes (through Redis).
#[derive(Debug, PartialEq, Eq)]
pub struct Share {
    pub users: Vec<(Rc<str>, u32)>,
    pub sockets: u32,
}

/// What one pass over the due sessions found.
#[derive(Debug, Default)]
pub struct Due {
    /// Sessions with listeners here and a change to announce.
    pub frames: Vec<(Rc<str>, Change)>,
    /// Sessions whose share this node must publish.
    pub shares: Vec<(Rc<str>, Share)>,
}

/// Presence of every session one shard owns.
#[derive(Debug)]
pub struct Presence {
    sessions: HashMap<Rc<str>, SessionPresence>,
    /// Sessions with something due: `(when, session)`; stale entries (the session
    /// went, or was flushed and scheduled again) are skipped when they pop.
    due: BinaryHeap<Reverse<(u64, Rc<str>)>>,
    /// Which sessions each other node has a share in, to drop a dead node's.
    by_node: HashMap<Box<str>, HashSet<Rc<str>>>,
    interval_ms: u64,
    /// (session, user) pairs this shard tracks by name, and its cap.
    entries: usize,
    max_entries: usize,
    /// Users not tracked by name because of the cap.
    untracked: u64,
}

impl Presence {
    pub fn new(interval_ms: u64, max_entries: usize) -> Presence {
        Presence {
            sessions: HashMap::new(),
            due: BinaryHeap::new(),
            by_node: HashMap::new(),
            interval_ms: interval_ms.max(1),
            entries: 0,
            max_entries,
            untracked: 0,
        }
    }

    /// (session, user) pairs tracked by name.
    pub fn entries(&self) -> usize {
        self.entries
    }

    /// Sessions with any presence here.
    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// Users that went uncounted by name since start (the cap was reached).
    pub fn untracked(&self) -> u64 {
        self.untracked
    }

    /// When the first due session is due (`u64::MAX`: none).
    pub fn next_due(&self) -> u64 {
        self.due.peek().map_or(u64::MAX, |Reverse((at, _))| *at)
    }

    fn schedule(&mut self, session: &Rc<str>, now: u64) -> Option<u64> {
        let interval = self.interval_ms;
        let p = self.sessions.get_mut(session)?;
        if p.scheduled {
            return None;
        }
        p.scheduled = true;
        let at = if p.last_frame == 0 {
            now
        } else {
            now.max(p.last_frame + interval)
        };
        self.due.push(Reverse((at, session.clone())));
        Some(at)
    }

    /// A subscriber of `session` arrived here, as user `sub` (none: counted as a
    /// socket only). Returns the name to keep for its leave (`None` when it is not
    /// tracked by name) and when the session is due, if that is new.
    pub fn join(
        &mut self,
        session: &Rc<str>,
        sub: Option<&str>,
        listens: bool,
        now: u64,
    ) -> (Option<Rc<str>>, Option<u64>) {
        let full = self.entries >= self.max_entries;
        let p = self.sessions.entry(session.clone()).or_default();
        p.local_sockets += 1;
        p.share_dirty = true;
        if listens {
            p.listeners += 1;
        }
        let mut kept = None;
        if let Some(sub) = sub {
            if let Some((name, count)) = p.users.get_key_value(sub) {
                let name = name.clone();
                let mut c = *count;
                c.local += 1;
                p.users.insert(name.clone(), c);
                if c.total() == 1 {
                    p.came(&name);
                }
                kept = Some(name);
            } else if full {
                self.untracked += 1;
            } else {
                let name: Rc<str> = Rc::from(sub);
                p.users.insert(
                    name.clone(),
                    Count {
                        local: 1,
                        remote: 0,
                    },
                );
                p.came(&name);
                self.entries += 1;
                kept = Some(name);
            }
        }
        (kept, self.schedule(session, now))
    }

    /// A subscriber left: `sub` is what [`Presence::join`] returned for it.
    /// Returns when the session is due, if that is new.
    pub fn leave(
        &mut self,
        session: &Rc<str>,
        sub: Option<&Rc<str>>,
        listened: bool,
        now: u64,
    ) -> Option<u64> {
        let p = self.sessions.get_mut(session)?;
        p.local_sockets = p.local_sockets.saturating_sub(1);
        p.share_dirty = true;
        if listened {
            p.listeners = p.listeners.saturating_sub(1);
        }
        if let Some(sub) = sub {
            if let Some(c) = p.users.get_mut(sub) {
                c.local = c.local.saturating_sub(1);
                if c.total() == 0 {
                    p.users.remove(sub);
                    self.entries -= 1;
                    p.went(sub);
                }
            }
        }
        self.schedule(session, now)
    }

    /// Node `node` now holds `users` (and `sockets` subscribers in all) of
    /// `session`: its earlier share is replaced. An empty share removes it.
    /// Returns when the session is due, if that is new.
    pub fn set_remote(
        &mut self,
        session: &Rc<str>,
        node: &str,
        users: &[(String, u32)],
        sockets: u32,
        now: u64,
    ) -> Option<u64> {
        let mut entries = self.entries;
        let max = self.max_entries;
        let mut untracked = 0;
        // Only sessions with subscribers here need the other nodes' shares (the
        // query reads them from Redis); a session's first subscriber reads them.
        let p = self.sessions.get_mut(session)?;
        let old = p.remote.remove(node).unwrap_or_default();
        let mut share = RemoteShare {
            users: HashMap::with_capacity(users.len()),
            sockets,
        };
        let mut changed = old.sockets != sockets;
        for (sub, n) in users.iter().filter(|(_, n)| *n > 0) {
            let before = old.users.get(sub.as_str()).copied().unwrap_or(0);
            let name = match p.users.get_key_value(sub.as_str()) {
                Some((name, _)) => name.clone(),
                None if entries >= max => {
                    untracked += 1;
                    continue;
                }
                None => {
                    entries += 1;
                    let name: Rc<str> = Rc::from(sub.as_str());
                    p.users.insert(name.clone(), Count::default());
                    name
                }
            };
            if let Some(c) = p.users.get_mut(&name) {
                let was = c.total();
                c.remote = c.remote - before.min(c.remote) + n;
                if was == 0 {
                    p.came(&name);
                }
            }
            changed |= before != *n;
            share.users.insert(name, *n);
        }
        // Users of the old share that are not in the new one.
        for (name, n) in &old.users {
            if share.users.contains_key(name) {
                continue;
            }
            changed = true;
            if let Some(c) = p.users.get_mut(name) {
                c.remote = c.remote.saturating_sub(*n);
                if c.total() == 0 {
                    p.users.remove(name);
                    entries -= 1;
                    p.went(name);
                }
            }
        }
        let node_key: Box<str> = Box::from(node);
        if share.users.is_empty() && share.sockets == 0 {
            if let Some(set) = self.by_node.get_mut(node) {
                set.remove(session);
                if set.is_empty() {
                    self.by_node.remove(node);
                }
            }
        } else {
            p.remote.insert(node_key.clone(), share);
            self.by_node
                .entry(node_key)
                .or_default()
                .insert(session.clone());
        }
        self.entries = entries;
        self.untracked += untracked;
        if !changed {
            if self
                .sessions
                .get(session)
                .is_some_and(SessionPresence::is_empty)
            {
                self.sessions.remove(session);
            }
            return None;
        }
        self.schedule(session, now)
    }

    /// Node `node` is dead: every share it had is dropped (its users leave
    /// unless another node or this one holds them). Returns the earliest new due.
    pub fn drop_node(&mut self, node: &str, now: u64) -> Option<u64> {
        let sessions = self.by_node.remove(node)?;
        let mut first = None;
        for s in sessions {
            if let Some(at) = self.set_remote(&s, node, &[], 0, now) {
                first = Some(first.map_or(at, |f: u64| f.min(at)));
            }
        }
        first
    }

    /// Nodes with a share in any session here.
    pub fn remote_nodes(&self) -> impl Iterator<Item = &str> {
        self.by_node.keys().map(|k| &**k)
    }

    /// Takes what is due at `now`: the changes to announce (only for sessions with
    /// listeners here; the others' changes are dropped, nobody here would read
    /// them) and this node's shares to publish. Forgets sessions left empty.
    pub fn take_due(&mut self, now: u64) -> Due {
        let mut out = Due::default();
        while let Some(Reverse((at, _))) = self.due.peek() {
            if *at > now {
                break;
            }
            let Some(Reverse((_, session))) = self.due.pop() else {
                break;
            };
            let Some(p) = self.sessions.get_mut(&session) else {
                continue;
            };
            if !p.scheduled {
                continue;
            }
            p.scheduled = false;
            // Frames and shares alike: at most one flush per interval.
            p.last_frame = now;
            if p.share_dirty {
                p.share_dirty = false;
                out.shares.push((session.clone(), local_share(p)));
            }
            if p.touched {
                p.touched = false;
                let mut join: Vec<Rc<str>> = p.joined.drain().collect();
                let mut leave: Vec<Rc<str>> = p.left.drain().collect();
                if p.listeners > 0 {
                    join.sort_unstable();
                    leave.sort_unstable();
                    out.frames.push((
                        session.clone(),
                        Change {
                            join,
                            leave,
                            users_total: p.users.len(),
                            sockets: p.sockets(),
                        },
                    ));
                }
            }
            if p.local_sockets == 0 {
                self.forget(&session);
            }
        }
        out
    }

    /// Drops a session with no subscribers here, other nodes' shares included.
    fn forget(&mut self, session: &Rc<str>) {
        let Some(p) = self.sessions.remove(session) else {
            return;
        };
        self.entries -= p.users.len();
        for node in p.remote.keys() {
            if let Some(set) = self.by_node.get_mut(node) {
                set.remove(session);
                if set.is_empty() {
                    self.by_node.remove(node);
                }
            }
        }
    }

    /// The session's presence now (empty for a session unknown here), listing
    /// the users only when there are at most `list_max` of them: a big session's
    /// view costs no more than its counts.
    pub fn view(&self, session: &str, list_max: usize) -> View {
        let Some(p) = self.sessions.get(session) else {
            return View {
                listed: true,
                ..View::default()
            };
        };
        let total = p.users.len();
        let mut users: Vec<(Rc<str>, u32)> = Vec::new();
        if total <= list_max {
            users = p
                .users
                .iter()
                .map(|(k, c)| (k.clone(), c.total()))
                .collect();
            users.sort_unstable();
        }
        View {
            users,
            sockets: p.sockets(),
            total,
            listed: total <= list_max,
        }
    }

    /// Whether the session has any presence here (local or another node's).
    pub fn knows(&self, session: &str) -> bool {
        self.sessions.contains_key(session)
    }

    /// This node's part of the session only (for a query that reads the other
    /// nodes' parts from Redis).
    pub fn local_view(&self, session: &str) -> View {
        let Some(p) = self.sessions.get(session) else {
            return View {
                listed: true,
                ..View::default()
            };
        };
        let share = local_share(p);
        View {
            total: share.users.len(),
            users: share.users,
            sockets: share.sockets,
            listed: true,
        }
    }

    /// Users and sockets of the session without listing them.
    pub fn counts(&self, session: &str) -> (usize, u32) {
        self.sessions
            .get(session)
            .map_or((0, 0), |p| (p.users.len(), p.sockets()))
    }
}

fn local_share(p: &SessionPresence) -> Share {
    let mut users: Vec<(Rc<str>, u32)> = p
        .users
        .iter()
        .filter(|(_, c)| c.local > 0)
        .map(|(k, c)| (k.clone(), c.local))
        .collect();
    users.sort_unstable();
    Share {
        users,
        sockets: p.local_sockets,
    }
}

#[cfg(test)]
mod tests;
