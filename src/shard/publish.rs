//! The publish front end on the accepting shard: ids for events published
//! without one, grouping a batch by owning shard, all-or-nothing dispatch, the
//! Redis publish path, and waiting for the receipts (in the shard's `Pending`
//! tables); and, as a receiving node, sending the delivery counts that waiting
//! publishers elsewhere asked for back through the bridge.
//!
//! It sequences nothing itself (owners do that in `deliver`), and it speaks no
//! HTTP: it answers a [`Published`] or a [`AcceptError`], and `http` renders the
//! 202 or the refusal.

use super::history::StreamPos;
use super::{event_parts, IdSource, Shard, DELIVERED_WAIT, PUBLISH_TIMEOUT};
use crate::bridge::{request_block, BridgeHandle, BridgeMsg, OutgoingEvent, WireReceipt};
use crate::clock::unix_now_ns;
use crate::http::publish::{EventSpans, PublishBatch};
use crate::router::{shard_for, DeliverMsg, DeliveredCounts, NodeDelivery, Receipt, ReplyTo};
use crate::ws::frame::remote_parts;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// An accepted publish: its batch, a receipt per event (in no particular order),
/// and where the ids of events published without one came from.
#[derive(Debug)]
pub struct Published {
    pub batch: Arc<PublishBatch>,
    pub receipts: Vec<Receipt>,
    /// Relay-made ids are `{node_tag}-{id_shard}-{id_base + index}`.
    pub id_shard: usize,
    pub id_base: u64,
    /// With `?wait=delivered`: from acceptance to the end of the fan-out (through
    /// Redis: to the last node's counts, or the wait's end).
    pub took: Option<Duration>,
    /// With `?wait=delivered` through Redis: each node's counts per event, as they
    /// came in time (a receipt's `receivers` says how many were owed).
    pub nodes: Option<Vec<NodeDelivery>>,
}

/// Why a publish was not accepted, or not answered. Every case is worth a retry
/// with the same event ids: an event that did get through is deduplicated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AcceptError {
    /// An owning shard's inbox is full: nothing was sent (all or nothing).
    #[error("the relay is overloaded; retry later")]
    Overloaded,
    /// Redis is unreachable or did not take the batch in time.
    #[error("Redis is unavailable; retry later")]
    RedisUnavailable,
    /// The events were accepted and will be delivered, but the owners' receipts
    /// did not come back in time.
    #[error("the relay is overloaded; retry with the same event ids")]
    ReceiptsLate,
}

impl Shard {
    /// A relay-made id for an event the publisher gave none; empty otherwise.
    pub(super) fn generated_id(&self, ev: &EventSpans, ids: IdSource, index: u32) -> String {
        if ev.id.is_some() {
            return String::new();
        }
        let mut id = String::with_capacity(self.node.node_tag.len() + 24);
        id.push_str(&self.node.node_tag);
        id.push('-');
        id.push_str(itoa::Buffer::new().format(ids.shard));
        id.push('-');
        id.push_str(itoa::Buffer::new().format(ids.base + u64::from(index)));
        id
    }

    /// Reserves ids for a batch's events published without one.
    pub(super) fn reserve_ids(&self, n: usize) -> IdSource {
        let base = self.next_event.get();
        self.next_event.set(base + n as u64);
        IdSource {
            shard: self.id,
            base,
        }
    }

    /// Accepts a validated batch: through Redis when the node has a bridge, else
    /// straight to the owning shards; answers a receipt per event.
    pub async fn publish(
        self: &Rc<Self>,
        batch: PublishBatch,
        wait_delivered: bool,
    ) -> Result<Published, AcceptError> {
        let started = Instant::now();
        let ids = self.reserve_ids(batch.events.len());
        let batch = Arc::new(batch);
        let (receipts, nodes) = match &self.node.bridge {
            Some(bridge) => {
                self.publish_via_redis(bridge, &batch, ids, wait_delivered)
                    .await?
            }
            None => (self.publish_local(&batch, ids, wait_delivered).await?, None),
        };
        Ok(Published {
            batch,
            receipts,
            id_shard: ids.shard,
            id_base: ids.base,
            took: wait_delivered.then(|| started.elapsed()),
            nodes,
        })
    }

    /// Waits for publish `id`'s answers: its receipts, or `None` on a failure or
    /// after [`PUBLISH_TIMEOUT`].
    pub(super) async fn answers(&self, id: u64) -> Option<Vec<Receipt>> {
        let settled = self.publishes.wait(id, PUBLISH_TIMEOUT).await?;
        settled.complete.then_some(settled.value)
    }

    /// Hands the batch to the bridge and waits until Redis took all of it: the 202
    /// promises that every node holding the session will see the events. With
    /// `wait`, then waits (at most [`DELIVERED_WAIT`]) for every node that Redis
    /// published to to send its counts, and answers them too.
    pub(super) async fn publish_via_redis(
        self: &Rc<Self>,
        bridge: &BridgeHandle,
        batch: &PublishBatch,
        ids: IdSource,
        wait: bool,
    ) -> Result<(Vec<Receipt>, Option<Vec<NodeDelivery>>), AcceptError> {
        if !bridge.is_connected() {
            return Err(AcceptError::RedisUnavailable);
        }
        // Opened before the events leave: counts may come back before Redis's
        // answer reaches this shard.
        let waiting = wait.then(|| self.deliveries.open(usize::MAX, Vec::new()));
        let n = batch.events.len();
        let accepted_ns = unix_now_ns();
        let unplaced = StreamPos { epoch: 0, seq: 0 };
        let events: Vec<OutgoingEvent> = batch
            .events
            .iter()
            .enumerate()
            .map(|(i, ev)| {
                let generated = self.generated_id(ev, ids, i as u32);
                let (head, tail) =
                    remote_parts(&event_parts(batch, ev, &generated, unplaced), accepted_ns);
                OutgoingEvent {
                    session: batch.session(ev).to_string(),
                    head,
                    tail,
                    id: ev.id.as_ref().map(|r| batch.bytes(r).to_vec()),
                    reply: match waiting {
                        Some(w) => {
                            request_block(bridge.reply_channel(), self.id as u32, w, i as u32)
                        }
                        None => Vec::new(),
                    },
                }
            })
            .collect();
        // The epoch a session gets if Redis holds none for it (first use, or lost).
        let epoch = self.history.borrow_mut().new_epoch();
        let id = self.publishes.open(1, Vec::new());
        let sent = bridge.send(BridgeMsg::Publish {
            from: self.id,
            id,
            events,
            epoch,
        });
        if sent.is_err() {
            self.publishes.cancel(id);
            if let Some(w) = waiting {
                self.deliveries.cancel(w);
            }
            return Err(AcceptError::RedisUnavailable);
        }
        let Some(receipts) = self.answers(id).await else {
            if let Some(w) = waiting {
                self.deliveries.cancel(w);
            }
            return Err(AcceptError::RedisUnavailable);
        };
        self.stats.add_events(n as u64);
        for _ in receipts.iter().filter(|r| r.duplicate) {
            self.stats.dedupe_hit();
        }
        let Some(w) = waiting else {
            return Ok((receipts, None));
        };
        let owed: usize = receipts.iter().map(|r| r.receivers as usize).sum();
        self.deliveries.expect(w, owed);
        let nodes = self
            .deliveries
            .wait(w, DELIVERED_WAIT)
            .await
            .map(|s| s.value)
            .unwrap_or_default();
        let late = owed.saturating_sub(nodes.len());
        if late > 0 {
            self.stats.receipts_late(late as u64);
        }
        Ok((receipts, Some(nodes)))
    }

    /// Routes a validated batch: local events now, others to their owners, all or
    /// nothing; then waits for the owners' receipts.
    pub(super) async fn publish_local(
        self: &Rc<Self>,
        batch: &Arc<PublishBatch>,
        ids: IdSource,
        wait_delivered: bool,
    ) -> Result<Vec<Receipt>, AcceptError> {
        let accepted_at = Instant::now();
        let n = batch.events.len();
        let shards = self.node.router.shards();
        let mut local: Vec<u32> = Vec::new();
        let mut remote: Vec<Vec<u32>> = vec![Vec::new(); shards];
        for (i, ev) in batch.events.iter().enumerate() {
            let owner = shard_for(batch.session(ev), shards);
            if owner == self.id {
                local.push(i as u32);
            } else {
                remote[owner].push(i as u32);
            }
        }
        let reserved_bytes = batch.body.len();
        let others = remote.iter().filter(|evs| !evs.is_empty()).count();
        // Only answers from other shards are awaited; a request this shard owns
        // whole registers nothing.
        let id = if others > 0 {
            self.publishes
                .open(others, Vec::with_capacity(n - local.len()))
        } else {
            u64::MAX
        };
        let groups: Vec<(usize, DeliverMsg)> = remote
            .into_iter()
            .enumerate()
            .filter(|(_, evs)| !evs.is_empty())
            .map(|(to, events)| {
                (
                    to,
                    DeliverMsg {
                        batch: batch.clone(),
                        events,
                        accepted_at,
                        reserved_bytes,
                        reply: Some((self.id, id)),
                        id_shard: ids.shard,
                        id_base: ids.base,
                        wait_delivered,
                    },
                )
            })
            .collect();
        if !groups.is_empty() {
            if let Err(e) = self.node.router.dispatch(groups) {
                self.publishes.cancel(id);
                tracing::warn!(shard = self.id, error = %e, "publish refused");
                return Err(AcceptError::Overloaded);
            }
        }
        let mut receipts = Vec::with_capacity(local.len());
        if !local.is_empty() {
            self.drain_inbox();
            for i in local {
                if let Some(r) = self.deliver(batch, i, accepted_at, ids, wait_delivered) {
                    receipts.push(r);
                }
            }
        }
        self.stats.add_events(n as u64);
        if others == 0 {
            return Ok(receipts);
        }
        match self.answers(id).await {
            Some(more) => {
                receipts.extend(more);
                Ok(receipts)
            }
            // The events are accepted and will be delivered; only the receipts are
            // late. A retry with the same ids is deduplicated.
            None => Err(AcceptError::ReceiptsLate),
        }
    }

    /// Sends this node's counts for events whose publishers wait
    /// (`?wait=delivered`) to the bridge, one message per reply channel. A full
    /// bridge queue drops them: their publishers count this node late.
    pub(super) fn send_receipts(&self, owed: Vec<(Box<str>, Vec<WireReceipt>)>) {
        let Some(bridge) = &self.node.bridge else {
            return;
        };
        for (channel, receipts) in owed {
            if bridge
                .send(BridgeMsg::Delivered { channel, receipts })
                .is_err()
            {
                tracing::warn!(
                    shard = self.id,
                    "delivery receipts not sent: bridge queue full"
                );
            }
        }
    }
}

/// Adds one event's counts to what is owed to its reply channel.
pub(super) fn owe_receipt(
    owed: &mut Vec<(Box<str>, Vec<WireReceipt>)>,
    reply: ReplyTo,
    counts: DeliveredCounts,
) {
    let receipt = WireReceipt {
        shard: reply.shard,
        id: reply.id,
        index: reply.index,
        counts,
    };
    match owed.iter_mut().find(|(c, _)| *c == reply.channel) {
        Some((_, rs)) => rs.push(receipt),
        None => owed.push((reply.channel, vec![receipt])),
    }
}
