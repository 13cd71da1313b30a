//! What shards queued for the bridge: served against a live link
//! ([`Bridge::serve_queue`]: subscription changes, new epochs, one batch with
//! every pending publish, the delivery receipts owed to waiting publishers; history
//! fetches join the reads in flight, `fetches`'), or, while Redis is away, failed
//! fast or remembered for the reconnect.
//!
//! Owns the handling of each [`BridgeMsg`]; the Redis commands are `link`'s, the
//! answers to shards `state`'s. Runs on the bridge thread, never on a shard core.

use std::collections::HashMap;

use super::delivered::{encode_receipts, WireReceipt};
use super::fetches::FetchJob;
use super::handle::{BridgeMsg, OutgoingEvent};
use super::link::{Link, Lost};
use super::state::Bridge;
use super::subscriptions::new_epoch;
use crate::router::{Receipt, ShardMsg};

impl Bridge {
    /// While disconnected: publishes and fetches are answered with a failure at
    /// once; subscription changes and new epochs wait for the reconnect.
    pub(super) fn drain_while_down(&mut self) {
        while let Ok(msg) = self.rx.try_recv() {
            match msg {
                BridgeMsg::Publish { from, id, .. } => self.answer(from, id, None),
                BridgeMsg::Fetch {
                    from,
                    session,
                    after,
                    purpose,
                } => self.answer_fetch(FetchJob::new(from, session, after, purpose), None),
                // Redis is away: the reconnect reads every position again.
                BridgeMsg::NewEpoch { session, .. } => {
                    self.owed_resync.insert(session);
                }
                BridgeMsg::Subscribe { from, session } => {
                    self.wanted.insert(session, from);
                }
                BridgeMsg::Unsubscribe { session } => {
                    self.wanted.remove(&session);
                    self.owed_resync.remove(&session);
                }
                // Their publisher counts them late (it waits no longer than that).
                BridgeMsg::Delivered { .. } => {}
                m @ (BridgeMsg::PresenceShare { .. } | BridgeMsg::PresenceRead { .. }) => {
                    self.presence_while_down(m)
                }
            }
        }
    }

    /// Handles everything the shards queued: subscription changes, then one
    /// batch with every pending publish.
    pub(super) async fn serve_queue(&mut self, link: &mut Link) -> Result<(), Lost> {
        let mut subscribe = Vec::new();
        let mut unsubscribe = Vec::new();
        let mut confirm_only = Vec::new();
        let mut new_epochs = Vec::new();
        let mut publishes: Vec<(usize, u64, Vec<OutgoingEvent>, u64)> = Vec::new();
        let mut delivered: HashMap<Box<str>, Vec<WireReceipt>> = HashMap::new();
        let mut presence = Vec::new();
        while let Ok(msg) = self.rx.try_recv() {
            match msg {
                BridgeMsg::Publish {
                    from,
                    id,
                    events,
                    epoch,
                } => publishes.push((from, id, events, epoch)),
                BridgeMsg::Fetch {
                    from,
                    session,
                    after,
                    purpose,
                } => {
                    let job = FetchJob::new(from, session, after, purpose);
                    if let Err(job) = self.fetches.push(job) {
                        // Too many waiting: the socket resyncs instead of waiting longer.
                        self.answer_fetch(job, None);
                    }
                }
                BridgeMsg::NewEpoch {
                    from,
                    session,
                    went_back,
                    reached,
                } => new_epochs.push((from, session, went_back, reached)),
                BridgeMsg::Subscribe { from, session } => {
                    unsubscribe.retain(|s| s != &session);
                    if self.wanted.insert(session.clone(), from).is_none()
                        || !self.subscribed.contains(&session)
                    {
                        subscribe.push(session);
                    } else {
                        confirm_only.push(session);
                    }
                }
                BridgeMsg::Delivered { channel, receipts } => {
                    delivered.entry(channel).or_default().extend(receipts);
                }
                m @ (BridgeMsg::PresenceShare { .. } | BridgeMsg::PresenceRead { .. }) => {
                    presence.push(m)
                }
                BridgeMsg::Unsubscribe { session } => {
                    subscribe.retain(|s| s != &session);
                    self.wanted.remove(&session);
                    self.owed_resync.remove(&session);
                    if self.subscribed.remove(&session) {
                        unsubscribe.push(session);
                    }
                }
            }
        }
        if !unsubscribe.is_empty() {
            link.unsubscribe(&unsubscribe).await?;
        }
        if !subscribe.is_empty() {
            link.subscribe(&subscribe).await?;
            self.subscribed.extend(subscribe.iter().cloned());
            confirm_only.extend(subscribe);
        }
        if !confirm_only.is_empty() {
            self.confirm(link, &confirm_only).await?;
        }
        for (from, session, went_back, reached) in new_epochs {
            let pos = link
                .new_epoch(&session, went_back, reached, new_epoch())
                .await?;
            tracing::warn!(session = %session, "redis lost writes; the session starts a new epoch");
            let msg = ShardMsg::Resync {
                sessions: vec![(session, pos)],
            };
            self.tell(from, msg, "new epoch could not be delivered");
        }
        // Publishes first: a burst of resumes must not hold up publishers.
        self.publish(link, publishes).await?;
        if !delivered.is_empty() {
            let messages: Vec<(Box<str>, Vec<u8>)> = delivered
                .into_iter()
                .map(|(channel, rs)| {
                    let payload = encode_receipts(&self.node_tag, &rs);
                    (channel, payload)
                })
                .collect();
            link.publish_raw(&messages).await?;
        }
        self.serve_presence(link, presence).await?;
        // Reads run beside the next publishes, never in front of them.
        self.fetches.start(link.reader());
        Ok(())
    }

    /// Places and publishes the publishes taken from the queue, and answers each.
    async fn publish(
        &mut self,
        link: &mut Link,
        publishes: Vec<(usize, u64, Vec<OutgoingEvent>, u64)>,
    ) -> Result<(), Lost> {
        if publishes.is_empty() {
            return Ok(());
        }
        let events: Vec<(&OutgoingEvent, u64)> = publishes
            .iter()
            .flat_map(|(_, _, evs, epoch)| evs.iter().map(move |e| (e, *epoch)))
            .collect();
        let ends: Vec<usize> = publishes
            .iter()
            .scan(0, |end, (_, _, evs, _)| {
                *end += evs.len();
                Some(*end)
            })
            .collect();
        let result = link.publish(&events, &ends, &self.rules).await;
        match result {
            Ok(placed) => {
                let mut placed = placed.into_iter();
                for (from, id, evs, _) in &publishes {
                    let receipts = (0..evs.len())
                        .zip(placed.by_ref())
                        .map(|(i, p)| Receipt {
                            index: i as u32,
                            pos: p.pos,
                            duplicate: p.duplicate,
                            written: 0,
                            queued: 0,
                            dropped: 0,
                            receivers: p.receivers,
                        })
                        .collect();
                    self.answer(*from, *id, Some(receipts));
                }
                Ok(())
            }
            Err(e) => {
                for (from, id, _, _) in &publishes {
                    self.answer(*from, *id, None);
                }
                Err(e)
            }
        }
    }
}
