//! Presence on the shard: counting subscribers in and out of the shard's
//! presence table (`shard::presence`), announcing the coalesced changes when
//! housekeeping finds sessions due, the snapshot a new subscriber gets after its
//! welcome, other nodes' shares from the bridge, and the query
//! (`GET /sessions/{session}/presence`), asked of the session's owning shard.
//!
//! A change frame is encoded once per session (once per transport and mode) and
//! the same `Rc` bytes are queued to each subscriber that asked for frames; it
//! carries no `seq` and is never kept in history. Long-polls count in presence
//! but get no frames (their answer is a list of events). Redis is reached only
//! through `BridgeMsg`.

use std::collections::HashMap;
use std::rc::Rc;

use super::presence::json::{self, Page};
use super::presence::{Change, View};
use super::registry::{mono_ms, Outgoing, SocketState};
use super::{Shard, SNAPSHOT_TIMEOUT};
use crate::bridge::BridgeMsg;
use crate::config::PresenceMode;
use crate::router::{shard_for, PresenceQuery, RemotePresence, ShardMsg};
use crate::subscribe::Transport;
use crate::ws::frame::text_frame;

/// `limit` of a query when none is given, and the most it may ask for.
pub const DEFAULT_PAGE: usize = 100;
pub const MAX_PAGE: usize = 1000;

/// A presence query could not be answered: the owning shard or the bridge did
/// not answer in time. Retry later (503).
#[derive(Debug, thiserror::Error)]
#[error("presence is not available right now; retry later")]
pub struct PresenceUnavailable;

/// A change's bytes (and the session's snapshot's), made on first use for each
/// transport and mode.
#[derive(Default)]
struct FrameCache {
    frames: HashMap<(bool, bool), Rc<[u8]>>,
    snapshots: HashMap<(bool, bool), Rc<[u8]>>,
}

fn in_transport(body: &[u8], sse: bool) -> Rc<[u8]> {
    let bytes = if sse {
        crate::sse::frame::block(None, "presence", body)
    } else {
        text_frame(body)
    };
    Rc::from(bytes)
}

impl FrameCache {
    fn snapshot(&mut self, view: &View, names: bool, sse: bool) -> Rc<[u8]> {
        self.snapshots
            .entry((names, sse))
            .or_insert_with(|| in_transport(&json::snapshot(view, names), sse))
            .clone()
    }

    fn get(&mut self, change: &Change, names: bool, sse: bool) -> Rc<[u8]> {
        self.frames
            .entry((names, sse))
            .or_insert_with(|| in_transport(&json::change(change, names), sse))
            .clone()
    }
}

impl Shard {
    /// The frames a new subscriber gets: the node's setting, or more if its token's
    /// `presence` claim asks (a long-poll gets none).
    fn presence_mode_for(&self, transport: Transport, claim: Option<&str>) -> PresenceMode {
        if transport == Transport::Poll {
            return PresenceMode::Off;
        }
        let node = self.node.config.presence.mode;
        node.max(claim.map_or(PresenceMode::Off, PresenceMode::from_claim))
    }

    /// Counts a subscriber that arrived (before its welcome) as user `sub`.
    pub(super) fn presence_joined(&self, s: &SocketState, sub: Option<&str>, claim: Option<&str>) {
        let mode = self.presence_mode_for(s.transport, claim);
        s.presence_mode.set(mode);
        let listens = mode != PresenceMode::Off;
        let new_here = !self.presence.borrow().knows(&s.session);
        let (kept, due) = self
            .presence
            .borrow_mut()
            .join(&s.session, sub, listens, mono_ms());
        if new_here {
            // The other nodes' shares so far; later changes come on the channel.
            if let Some(bridge) = &self.node.bridge {
                let msg = BridgeMsg::PresenceRead {
                    from: self.id,
                    id: None,
                    session: s.session.to_string(),
                };
                if bridge.send(msg).is_err() {
                    tracing::warn!(
                        shard = self.id,
                        "presence read not queued; the bridge is behind"
                    );
                }
            }
        }
        if let Some(name) = kept {
            let _ = s.presence_sub.set(name);
        }
        if let Some(at) = due {
            self.alarm.ring_before(at);
        }
    }

    /// Counts a subscriber out, whatever ended it.
    pub(super) fn presence_left(&self, s: &SocketState) {
        let listened = s.presence_mode.get() != PresenceMode::Off;
        let Ok(mut presence) = self.presence.try_borrow_mut() else {
            return;
        };
        let due = presence.leave(&s.session, s.presence_sub.get(), listened, mono_ms());
        drop(presence);
        if let Some(at) = due {
            self.alarm.ring_before(at);
        }
    }

    /// Queues the session's presence now to a subscriber that asked for frames,
    /// right after its welcome.
    pub(super) fn presence_snapshot(&self, s: &SocketState) {
        let mode = s.presence_mode.get();
        if mode == PresenceMode::Off {
            return;
        }
        let list_max = self.node.config.presence.list_max;
        let view = self.presence.borrow().view(&s.session, list_max);
        let names = mode == PresenceMode::Users && view.listed;
        s.push_message("presence", None, &json::snapshot(&view, names));
        s.presence_fresh.set(true);
        self.stats
            .presence
            .frames
            .set(self.stats.presence.frames.get() + 1);
    }

    /// When housekeeping must next flush presence ([`mono_ms`]).
    pub(super) fn presence_next_due(&self) -> u64 {
        self.presence.borrow().next_due()
    }

    /// Announces the changes of every session that is due, and hands this node's
    /// changed shares to the bridge.
    pub(super) fn flush_presence(&self, now: u64) {
        let due = self.presence.borrow_mut().take_due(now);
        let cfg = &self.node.config.presence;
        let max_bytes = self.settings().live.limits.max_outbound_bytes;
        let (mut sent, mut dropped) = (0u64, 0u64);
        let registry = self.registry.borrow();
        for (session, change) in &due.frames {
            let Some(sockets) = registry.sockets_of(session) else {
                continue;
            };
            let list = change.users_total <= cfg.list_max;
            let quiet = change.join.is_empty() && change.leave.is_empty();
            let mut cache = FrameCache::default();
            let mut view = None;
            for s in sockets {
                let mode = s.presence_mode.get();
                if mode == PresenceMode::Off || s.is_closing() {
                    continue;
                }
                let names = list && mode == PresenceMode::Users;
                let sse = s.transport == Transport::Sse;
                // A snapshot taken since the last flush may sit between changes
                // this frame sums up: it gets the whole list again instead.
                let bytes = if s.presence_fresh.replace(false) {
                    let view = view
                        .get_or_insert_with(|| self.presence.borrow().view(session, cfg.list_max));
                    cache.snapshot(view, names, sse)
                } else if quiet {
                    continue;
                } else {
                    cache.get(change, names, sse)
                };
                if s.queued_bytes() + bytes.len() > max_bytes {
                    dropped += 1;
                    continue;
                }
                s.push_control(Outgoing::Shared(bytes));
                sent += 1;
            }
        }
        drop(registry);
        let p = &self.stats.presence;
        p.frames.set(p.frames.get() + sent);
        p.frames_dropped.set(p.frames_dropped.get() + dropped);
        if let Some(bridge) = &self.node.bridge {
            for (session, share) in due.shares {
                let msg = BridgeMsg::PresenceShare {
                    session: session.to_string(),
                    users: share
                        .users
                        .iter()
                        .map(|(s, n)| (s.to_string(), *n))
                        .collect(),
                    sockets: share.sockets,
                };
                if bridge.send(msg).is_err() {
                    tracing::warn!(
                        shard = self.id,
                        "presence share not queued; the bridge is behind"
                    );
                }
            }
        }
    }

    /// Other nodes' shares of sessions this shard owns.
    pub(super) fn presence_remote(&self, shares: Vec<RemotePresence>) {
        let now = mono_ms();
        let mut first = u64::MAX;
        {
            let mut presence = self.presence.borrow_mut();
            for r in shares {
                let session = self.registry.borrow().intern(&r.session);
                if let Some(at) = presence.set_remote(&session, &r.node, &r.users, r.sockets, now) {
                    first = first.min(at);
                }
            }
        }
        self.alarm.ring_before(first);
    }

    /// Other nodes stopped heartbeating: their users leave.
    pub(super) fn presence_nodes_dead(&self, nodes: Vec<String>) {
        let now = mono_ms();
        let mut first = u64::MAX;
        {
            let mut presence = self.presence.borrow_mut();
            for node in nodes {
                if let Some(at) = presence.drop_node(&node, now) {
                    first = first.min(at);
                    let e = &self.stats.presence.nodes_expired;
                    e.set(e.get() + 1);
                }
            }
        }
        self.alarm.ring_before(first);
    }

    /// The owner's answer to a query: this node's part (every node's, with the
    /// shares the bridge read from Redis), one page.
    pub(super) fn presence_answer(&self, q: &PresenceQuery) -> Vec<u8> {
        let s = &self.stats.presence.queries;
        s.set(s.get() + 1);
        let view = match &q.remote {
            None => self
                .presence
                .borrow()
                .view(&q.session, self.node.config.presence.list_max),
            Some(remote) => {
                let local = self.presence.borrow().local_view(&q.session);
                merge(local, remote, &self.node.node_tag)
            }
        };
        json::query(
            &view,
            &Page {
                session: &q.session,
                limit: q.limit,
                after: q.after.as_deref(),
                list_max: self.node.config.presence.list_max,
            },
        )
    }

    /// Answers a query, asking the session's owning shard (and, with Redis, the
    /// bridge for the other nodes' shares first).
    pub async fn presence_query(
        self: &Rc<Self>,
        mut query: PresenceQuery,
    ) -> Result<Vec<u8>, PresenceUnavailable> {
        if let Some(bridge) = &self.node.bridge {
            let id = self.presence_reads.open(1, None);
            let msg = BridgeMsg::PresenceRead {
                from: self.id,
                id: Some(id),
                session: query.session.clone(),
            };
            if bridge.send(msg).is_err() {
                self.presence_reads.cancel(id);
                return Err(PresenceUnavailable);
            }
            let read = self.presence_reads.wait(id, SNAPSHOT_TIMEOUT).await;
            match read.and_then(|r| r.value) {
                Some(shares) => query.remote = Some(shares),
                None => return Err(PresenceUnavailable),
            }
        }
        let owner = shard_for(&query.session, self.node.router.shards());
        if owner == self.id {
            return Ok(self.presence_answer(&query));
        }
        let id = self.presence_answers.open(1, None);
        let ask = ShardMsg::PresenceQuery {
            from: self.id,
            id,
            query: Box::new(query),
        };
        if self.node.router.send(owner, ask).is_err() {
            self.presence_answers.cancel(id);
            return Err(PresenceUnavailable);
        }
        let answer = self.presence_answers.wait(id, SNAPSHOT_TIMEOUT).await;
        answer.and_then(|a| a.value).ok_or(PresenceUnavailable)
    }
}

/// This node's share and the other nodes' (this node's own entry in Redis is
/// skipped: the local table is fresher).
fn merge(local: View, remote: &[RemotePresence], me: &str) -> View {
    let mut users: HashMap<Rc<str>, u32> = local.users.into_iter().collect();
    let mut sockets = local.sockets;
    for r in remote.iter().filter(|r| r.node != me) {
        sockets += r.sockets;
        for (sub, n) in &r.users {
            match users.get_mut(sub.as_str()) {
                Some(c) => *c += n,
                None => {
                    users.insert(Rc::from(sub.as_str()), *n);
                }
            }
        }
    }
    let mut users: Vec<(Rc<str>, u32)> = users.into_iter().filter(|(_, n)| *n > 0).collect();
    users.sort_unstable();
    View {
        total: users.len(),
        users,
        sockets,
        listed: true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_user_on_two_nodes_counts_once_and_this_nodes_stale_entry_is_skipped() {
        let local = View {
            users: vec![(Rc::from("alice"), 1)],
            sockets: 1,
            total: 1,
            listed: true,
        };
        let share = |node: &str, users: &[(&str, u32)]| RemotePresence {
            session: "s".into(),
            node: node.into(),
            users: users.iter().map(|(u, n)| (u.to_string(), *n)).collect(),
            sockets: users.iter().map(|(_, n)| n).sum(),
        };
        let v = merge(
            local,
            &[
                share("me", &[("alice", 5)]),
                share("n2", &[("alice", 1), ("bob", 2)]),
            ],
            "me",
        );
        assert_eq!(v.users, vec![(Rc::from("alice"), 2), (Rc::from("bob"), 2)]);
        assert_eq!(v.sockets, 4);
    }
}
