//! Presence across nodes, through Redis.
//!
//! - **Each node's share** of a session (its users with their socket counts, and
//!   its sockets) is one field of the session's presence hash
//!   (`relay:v1:{S}:p`, field: the node's tag), written when the owning shard's
//!   coalesced change is due (at most once per session per presence interval),
//!   and published on the session's channel behind a mark byte ([`PRESENCE_MARK`];
//!   an event's payload starts below `0x80`, a request block with `0xFF`), so it
//!   never enters the event stream or the history.
//! - **Heartbeats.** Every third of `RELAY_PRESENCE_NODE_TIMEOUT` a node sets its
//!   heartbeat key (`relay:v1:n:{tag}`, expiring after the timeout), publishes its
//!   tag on [`HEARTBEAT_CHANNEL`], and extends its presence hashes' lifetime. A
//!   node whose heartbeat is not heard for the timeout is dead: every shard drops
//!   its shares, and its users are announced as leaving. A read of a hash keeps
//!   only the fields of nodes whose heartbeat key still exists.
//!
//! Owns the wire format of a share, the hash, the heartbeat and the table of when
//! each other node was last heard. Runs on the bridge thread; shards hear of it
//! only through the [`crate::router::Router`].

use std::collections::HashMap;
use std::time::{Duration, Instant};

use redis::Value;
use serde::{Deserialize, Serialize};

use super::handle::BridgeMsg;
use super::keys::{channel_of, node_key, presence_key, session_of, HEARTBEAT_CHANNEL};
use super::link::{Incoming, Link, Lost};
use super::scripts::bytes;
use super::state::Bridge;
use crate::router::{RemotePresence, ShardMsg};

/// First byte of a presence share published on a session's channel.
pub const PRESENCE_MARK: u8 = 0xFE;

/// One node's share of a session, as kept in the hash and published.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
struct WireShare {
    node: String,
    sockets: u32,
    users: Vec<(String, u32)>,
}

/// A share as published on the session's channel: the mark, then its JSON.
fn encode(share: &WireShare) -> Vec<u8> {
    let mut out = vec![PRESENCE_MARK];
    // Serializing plain strings and numbers into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut out, share);
    out
}

/// The commands that keep a node's share (a published payload, mark and all) in
/// the session's hash, and the hash alive for `ttl_ms`.
fn keep_share(key: &str, node_tag: &str, payload: &[u8], ttl_ms: u64) -> [redis::Cmd; 2] {
    let mut hset = redis::cmd("HSET");
    hset.arg(key).arg(node_tag).arg(&payload[1..]);
    let mut expire = redis::cmd("PEXPIRE");
    expire.arg(key).arg(ttl_ms);
    [hset, expire]
}

/// A published share, or `None` when the payload is not one (or is malformed).
fn decode(payload: &[u8]) -> Option<WireShare> {
    let rest = payload.strip_prefix(&[PRESENCE_MARK])?;
    serde_json::from_slice(rest).ok()
}

/// What the bridge keeps for presence.
#[derive(Debug)]
pub(super) struct PresenceState {
    /// `RELAY_PRESENCE_NODE_TIMEOUT`.
    timeout: Duration,
    /// Sessions this node holds a share of (their hashes' lifetime is extended on
    /// each heartbeat; their shares written again after a reconnect).
    local: HashMap<String, Vec<u8>>,
    /// When each other node was last heard (heartbeat or share).
    last_seen: HashMap<String, Instant>,
    next_beat: Instant,
}

impl PresenceState {
    pub(super) fn new(timeout: Duration) -> PresenceState {
        PresenceState {
            timeout,
            local: HashMap::new(),
            last_seen: HashMap::new(),
            next_beat: Instant::now(),
        }
    }

    fn heard(&mut self, node: &str) {
        match self.last_seen.get_mut(node) {
            Some(t) => *t = Instant::now(),
            None => {
                self.last_seen.insert(node.to_string(), Instant::now());
            }
        }
    }

    /// Nodes not heard within the timeout, forgotten as they are returned.
    fn take_dead(&mut self, now: Instant) -> Vec<String> {
        let timeout = self.timeout;
        let dead: Vec<String> = self
            .last_seen
            .iter()
            .filter(|(_, t)| now.saturating_duration_since(**t) > timeout)
            .map(|(n, _)| n.clone())
            .collect();
        for n in &dead {
            self.last_seen.remove(n);
        }
        dead
    }

    fn hash_ttl_ms(&self) -> u64 {
        (2 * self.timeout).as_millis() as u64
    }
}

impl Bridge {
    /// While Redis is away: a share is remembered (written on the reconnect), a
    /// read fails at once.
    pub(super) fn presence_while_down(&mut self, msg: BridgeMsg) {
        match msg {
            BridgeMsg::PresenceShare {
                session,
                users,
                sockets,
            } => {
                let share = WireShare {
                    node: self.node_tag.to_string(),
                    sockets,
                    users,
                };
                if share.sockets == 0 {
                    self.presence.local.remove(&session);
                } else {
                    self.presence.local.insert(session, encode(&share));
                }
            }
            BridgeMsg::PresenceRead { from, id, session } => {
                self.answer_presence(from, id, &session, None);
            }
            _ => {}
        }
    }

    fn answer_presence(
        &self,
        from: usize,
        id: Option<u64>,
        session: &str,
        shares: Option<Vec<RemotePresence>>,
    ) {
        let msg = match id {
            Some(id) => ShardMsg::PresenceShares { id, shares },
            None => match shares {
                Some(shares) => ShardMsg::PresenceRemote { shares },
                None => return,
            },
        };
        self.tell(from, msg, "presence could not be delivered");
        tracing::trace!(session, "presence read answered");
    }

    /// Writes and publishes this node's changed shares, and answers reads.
    pub(super) async fn serve_presence(
        &mut self,
        link: &mut Link,
        msgs: Vec<BridgeMsg>,
    ) -> Result<(), Lost> {
        let mut shares: HashMap<String, (Vec<(String, u32)>, u32)> = HashMap::new();
        let mut reads = Vec::new();
        for msg in msgs {
            match msg {
                BridgeMsg::PresenceShare {
                    session,
                    users,
                    sockets,
                } => {
                    shares.insert(session, (users, sockets));
                }
                BridgeMsg::PresenceRead { from, id, session } => reads.push((from, id, session)),
                _ => {}
            }
        }
        let ttl = self.presence.hash_ttl_ms();
        let mut cmds = Vec::with_capacity(3 * shares.len());
        for (session, (users, sockets)) in shares {
            let key = presence_key(&session);
            let share = WireShare {
                node: self.node_tag.to_string(),
                sockets,
                users,
            };
            let payload = encode(&share);
            if sockets == 0 {
                cmds.push(redis::cmd("HDEL").arg(&key).arg(&*self.node_tag).clone());
                self.presence.local.remove(&session);
            } else {
                cmds.extend(keep_share(&key, &self.node_tag, &payload, ttl));
                self.presence.local.insert(session.clone(), payload.clone());
            }
            cmds.push(link.publish_cmd(&channel_of(&session), &payload));
        }
        link.run_each(cmds).await?;
        for (from, id, session) in reads {
            let found = self.read_presence(link, &session).await?;
            for r in &found {
                if *r.node != *self.node_tag {
                    self.presence.heard(&r.node);
                }
            }
            let found = match id {
                Some(_) => found,
                None => found
                    .into_iter()
                    .filter(|r| *r.node != *self.node_tag)
                    .collect(),
            };
            self.answer_presence(from, id, &session, Some(found));
        }
        Ok(())
    }

    /// Every live node's share of `session` (a dead node's field is removed).
    async fn read_presence(
        &mut self,
        link: &mut Link,
        session: &str,
    ) -> Result<Vec<RemotePresence>, Lost> {
        let key = presence_key(session);
        let reply = link
            .run_each(vec![redis::cmd("HGETALL").arg(&key).clone()])
            .await?;
        let fields = match reply.into_iter().next() {
            Some(Value::Map(pairs)) => pairs,
            Some(Value::Array(flat)) => {
                let mut it = flat.into_iter();
                let mut pairs = Vec::new();
                while let (Some(k), Some(v)) = (it.next(), it.next()) {
                    pairs.push((k, v));
                }
                pairs
            }
            _ => Vec::new(),
        };
        let shares: Vec<WireShare> = fields
            .iter()
            .filter_map(|(_, v)| serde_json::from_slice(&bytes(v)?).ok())
            .collect();
        let alive = link
            .run_each(
                shares
                    .iter()
                    .map(|s| redis::cmd("EXISTS").arg(node_key(&s.node)).clone())
                    .collect(),
            )
            .await?;
        let mut out = Vec::with_capacity(shares.len());
        let mut gone = Vec::new();
        for (share, alive) in shares.into_iter().zip(alive) {
            if matches!(alive, Value::Int(1)) || *share.node == *self.node_tag {
                out.push(RemotePresence {
                    session: session.to_string(),
                    node: share.node,
                    users: share.users,
                    sockets: share.sockets,
                });
            } else {
                gone.push(redis::cmd("HDEL").arg(&key).arg(&share.node).clone());
            }
        }
        link.run_each(gone).await?;
        Ok(out)
    }

    /// A message on the heartbeat channel or a presence share on a session's
    /// channel; false for anything else (an event).
    pub(super) fn presence_incoming(&mut self, msg: &Incoming) -> bool {
        if msg.channel == HEARTBEAT_CHANNEL {
            if let Ok(node) = std::str::from_utf8(&msg.payload) {
                if *node != *self.node_tag {
                    self.presence.heard(node);
                }
            }
            return true;
        }
        if msg.payload.first() != Some(&PRESENCE_MARK) {
            return false;
        }
        let Some(share) = decode(&msg.payload) else {
            tracing::warn!("malformed presence share from redis dropped");
            return true;
        };
        if *share.node == *self.node_tag {
            return true;
        }
        self.presence.heard(&share.node);
        let Some(session) = session_of(&msg.channel) else {
            return true;
        };
        if let Some(&shard) = self.wanted.get(session) {
            let msg = ShardMsg::PresenceRemote {
                shares: vec![RemotePresence {
                    session: session.to_string(),
                    node: share.node,
                    users: share.users,
                    sockets: share.sockets,
                }],
            };
            if self.router.send(shard, msg).is_err() {
                tracing::warn!(shard, "presence share dropped: the shard is behind");
            }
        }
        true
    }

    /// After a (re)connect: listen for heartbeats, count every known node as
    /// heard now (this node was deaf, not they dead), and write and publish this
    /// node's shares again (Redis may have lost them; nodes that took this one
    /// for dead dropped them).
    pub(super) async fn presence_connected(&mut self, link: &mut Link) -> Result<(), Lost> {
        link.subscribe_channels(vec![HEARTBEAT_CHANNEL.to_string()])
            .await?;
        let now = Instant::now();
        for t in self.presence.last_seen.values_mut() {
            *t = now;
        }
        self.presence.next_beat = now;
        let ttl = self.presence.hash_ttl_ms();
        let mut cmds = Vec::new();
        for (session, payload) in &self.presence.local {
            let key = presence_key(session);
            cmds.extend(keep_share(&key, &self.node_tag, payload, ttl));
            cmds.push(link.publish_cmd(&channel_of(session), payload));
        }
        link.run_each(cmds).await?;
        self.presence_beat(link).await
    }

    /// When due: this node's heartbeat (key, message, its hashes' lifetime), and
    /// the dead nodes' users sent leaving on every shard.
    pub(super) async fn presence_beat(&mut self, link: &mut Link) -> Result<(), Lost> {
        let now = Instant::now();
        let dead = self.presence.take_dead(now);
        if !dead.is_empty() {
            tracing::warn!(nodes = ?dead, "nodes stopped heartbeating; their users leave");
            for shard in 0..self.router.shards() {
                let msg = ShardMsg::PresenceNodesDead {
                    nodes: dead.clone(),
                };
                self.tell(shard, msg, "dead nodes could not be announced");
            }
        }
        if now < self.presence.next_beat {
            return Ok(());
        }
        self.presence.next_beat = now + self.presence.timeout / 3;
        let timeout_ms = self.presence.timeout.as_millis() as u64;
        let ttl = self.presence.hash_ttl_ms();
        let mut cmds = vec![
            redis::cmd("SET")
                .arg(node_key(&self.node_tag))
                .arg(1)
                .arg("PX")
                .arg(timeout_ms)
                .clone(),
            link.publish_cmd(HEARTBEAT_CHANNEL, self.node_tag.as_bytes()),
        ];
        for session in self.presence.local.keys() {
            cmds.push(
                redis::cmd("PEXPIRE")
                    .arg(presence_key(session))
                    .arg(ttl)
                    .clone(),
            );
        }
        link.run_each(cmds).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_share_round_trips_and_an_event_is_not_one() {
        let share = WireShare {
            node: "n1".into(),
            sockets: 3,
            users: vec![("alice".into(), 2), ("b\"ob".into(), 1)],
        };
        assert_eq!(decode(&encode(&share)), Some(share));
        assert_eq!(decode(b"\x00\x01{\"type\":\"event\"}"), None);
        assert_eq!(decode(&[PRESENCE_MARK, b'{']), None, "malformed: dropped");
    }

    #[test]
    fn a_node_not_heard_within_the_timeout_is_dead_once() {
        let mut p = PresenceState::new(Duration::from_secs(3));
        p.heard("n2");
        let now = Instant::now();
        assert!(p.take_dead(now).is_empty());
        assert_eq!(p.take_dead(now + Duration::from_secs(4)), vec!["n2"]);
        assert!(p.take_dead(now + Duration::from_secs(8)).is_empty());
    }
}
