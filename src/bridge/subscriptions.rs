//! Subscriptions and what comes in on them: confirming a session's subscription
//! to its shard with the stream's position ([`Bridge::confirm`]), routing incoming
//! events to their sessions' owners, and paying the resyncs owed to sessions that
//! may have missed events (a lost link, a full inbox).
//!
//! Owns the wanted → shard routing of Redis traffic; it changes no subscription
//! itself (that is `requests`' and `run`'s) and touches no shard state: shards
//! hear of it only through the [`crate::router::Router`]. Runs on the bridge thread.

use std::collections::HashMap;

use std::sync::Arc;

use super::delivered::{decode_receipts, split_request};
use super::keys::session_of;
use super::link::{Incoming, Link, Lost};
use super::state::Bridge;
use crate::router::{NodeDelivery, RemoteEvent, ShardMsg};
use crate::stream::StreamPos;

impl Bridge {
    /// Tells each session's owner that its subscription is live, and where its
    /// stream stands.
    pub(super) async fn confirm(&self, link: &mut Link, sessions: &[String]) -> Result<(), Lost> {
        let positions = link.positions(sessions, new_epoch()).await?;
        let mut by_shard: HashMap<usize, Vec<(String, StreamPos)>> = HashMap::new();
        for (s, pos) in sessions.iter().zip(positions) {
            if let Some(&shard) = self.wanted.get(s) {
                by_shard.entry(shard).or_default().push((s.clone(), pos));
            }
        }
        for (shard, sessions) in by_shard {
            let msg = ShardMsg::Subscribed { sessions };
            self.tell(
                shard,
                msg,
                "subscription confirmation could not be delivered",
            );
        }
        Ok(())
    }

    /// Routes incoming events to their sessions' owners, one message per shard,
    /// and receipts for this node's waiting publishes to their shards.
    pub(super) fn route_incoming(&mut self, incoming: Vec<Incoming>) {
        let mut by_shard: HashMap<usize, Vec<RemoteEvent>> = HashMap::new();
        for msg in incoming {
            if *msg.channel == *self.reply_channel {
                self.route_receipts(&msg.payload);
                continue;
            }
            if self.presence_incoming(&msg) {
                continue;
            }
            let Some(session) = session_of(&msg.channel) else {
                continue;
            };
            let Some(&shard) = self.wanted.get(session) else {
                continue;
            };
            let (payload, reply) = split_request(msg.payload);
            by_shard.entry(shard).or_default().push(RemoteEvent {
                session: session.into(),
                payload,
                reply: reply.map(Box::new),
            });
        }
        for (shard, events) in by_shard {
            if let Err((_, ShardMsg::Remote { events })) =
                self.router.send(shard, ShardMsg::Remote { events })
            {
                // The shard is behind: these events are lost to it; say so.
                for ev in events {
                    self.owed_resync.insert(ev.session.into());
                }
            }
        }
    }

    /// Hands a node's receipts to the shards waiting for them. A shard whose inbox
    /// stays full misses them: its publisher counts those nodes late.
    fn route_receipts(&self, payload: &[u8]) {
        let Some((node, receipts)) = decode_receipts(payload) else {
            tracing::warn!("malformed delivery receipts from redis dropped");
            return;
        };
        let node: Arc<str> = node.into();
        let mut by_request: HashMap<(u32, u64), Vec<NodeDelivery>> = HashMap::new();
        for r in receipts {
            by_request
                .entry((r.shard, r.id))
                .or_default()
                .push(NodeDelivery {
                    node: node.clone(),
                    index: r.index,
                    counts: r.counts,
                });
        }
        for ((shard, id), deliveries) in by_request {
            let msg = ShardMsg::Delivered { id, deliveries };
            if (shard as usize) < self.router.shards() {
                self.tell(
                    shard as usize,
                    msg,
                    "delivery receipts could not be delivered",
                );
            }
        }
    }

    /// Sends the resyncs that are owed (with where each stream stands), as far as
    /// the shards can take them.
    pub(super) async fn pay_resyncs(&mut self, link: &mut Link) -> Result<(), Lost> {
        if self.owed_resync.is_empty() {
            return Ok(());
        }
        let sessions: Vec<String> = self
            .owed_resync
            .drain()
            .filter(|s| self.wanted.contains_key(s))
            .collect();
        let positions = link.positions(&sessions, new_epoch()).await?;
        let mut by_shard: HashMap<usize, Vec<(String, StreamPos)>> = HashMap::new();
        for (s, pos) in sessions.into_iter().zip(positions) {
            if let Some(&shard) = self.wanted.get(&s) {
                by_shard.entry(shard).or_default().push((s, pos));
            }
        }
        for (shard, sessions) in by_shard {
            if let Err((_, ShardMsg::Resync { sessions })) =
                self.router.send(shard, ShardMsg::Resync { sessions })
            {
                self.owed_resync
                    .extend(sessions.into_iter().map(|(s, _)| s));
            }
        }
        Ok(())
    }
}

/// An epoch for sessions Redis has no stream for; any fresh value will do.
pub(super) fn new_epoch() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    xxhash_rust::xxh3::xxh3_64(&nanos.to_le_bytes()).max(1)
}
