//! The publish front end on the accepting shard: ids for events published
//! without one, grouping a batch by owning shard, all-or-nothing dispatch, the
//! Redis publish path, the pending table of publishes waiting for receipts, and
//! the 202's body.
//!
//! It sequences nothing itself: owners do that in `deliver`.

use super::history::StreamPos;
use super::{event_parts, IdSource, PendingPublish, Shard, PUBLISH_TIMEOUT};
use crate::bridge::{BridgeHandle, BridgeMsg, OutgoingEvent};
use crate::clock::unix_now_ns;
use crate::http::publish::{EventSpans, PublishBatch};
use crate::http::response::Refusal;
use crate::router::{shard_for, DeliverMsg, Receipt};
use crate::ws::frame::remote_parts;
use std::rc::Rc;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

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
    /// straight to the owning shards. Returns the 202's body: a receipt per event.
    pub async fn publish(
        self: &Rc<Self>,
        batch: PublishBatch,
        wait_delivered: bool,
    ) -> Result<Vec<u8>, Refusal> {
        let started = Instant::now();
        let ids = self.reserve_ids(batch.events.len());
        let receipts = match &self.node.bridge {
            Some(bridge) => self.publish_via_redis(bridge, &batch, ids).await?,
            None => {
                let batch = Arc::new(batch);
                let r = self.publish_local(&batch, ids, wait_delivered).await?;
                return Ok(self.receipts_body(
                    &batch,
                    ids,
                    r,
                    wait_delivered.then(|| started.elapsed()),
                ));
            }
        };
        Ok(self.receipts_body(&batch, ids, receipts, None))
    }

    /// `{"accepted":N,"events":[{"session","seq","epoch","id"[,"duplicate"]
    /// [,"written","queued","dropped"]}...][,"took_us":T]}`, in request order.
    pub(super) fn receipts_body(
        &self,
        batch: &PublishBatch,
        ids: IdSource,
        mut receipts: Vec<Receipt>,
        took: Option<Duration>,
    ) -> Vec<u8> {
        use crate::stream::{push_decimal, push_hex16};
        receipts.sort_unstable_by_key(|r| r.index);
        let mut out = Vec::with_capacity(48 + receipts.len() * 112);
        out.extend_from_slice(br#"{"accepted":"#);
        push_decimal(&mut out, receipts.len() as u64);
        out.extend_from_slice(br#","events":["#);
        for (n, r) in receipts.iter().enumerate() {
            let Some(ev) = batch.events.get(r.index as usize) else {
                continue;
            };
            if n > 0 {
                out.push(b',');
            }
            out.extend_from_slice(br#"{"session":""#);
            out.extend_from_slice(batch.session(ev).as_bytes());
            out.extend_from_slice(br#"","seq":"#);
            push_decimal(&mut out, r.pos.seq);
            out.extend_from_slice(br#","epoch":""#);
            push_hex16(&mut out, r.pos.epoch);
            out.extend_from_slice(br#"","id":"#);
            match &ev.id {
                Some(id) => out.extend_from_slice(batch.bytes(id)),
                None => {
                    out.push(b'"');
                    out.extend_from_slice(self.node.node_tag.as_bytes());
                    out.push(b'-');
                    push_decimal(&mut out, ids.shard as u64);
                    out.push(b'-');
                    push_decimal(&mut out, ids.base + u64::from(r.index));
                    out.push(b'"');
                }
            }
            if r.duplicate {
                out.extend_from_slice(br#","duplicate":true"#);
            }
            if took.is_some() {
                out.extend_from_slice(br#","written":"#);
                push_decimal(&mut out, u64::from(r.written));
                out.extend_from_slice(br#","queued":"#);
                push_decimal(&mut out, u64::from(r.queued));
                out.extend_from_slice(br#","dropped":"#);
                push_decimal(&mut out, u64::from(r.dropped));
            }
            out.push(b'}');
        }
        out.push(b']');
        if let Some(t) = took {
            out.extend_from_slice(br#","took_us":"#);
            push_decimal(&mut out, t.as_micros() as u64);
        }
        out.push(b'}');
        out
    }

    /// Registers a publish that waits for `remaining` answers; returns its id.
    pub(super) fn await_answers(&self, remaining: usize) -> u64 {
        let id = self.next_publish.get();
        self.next_publish.set(id + 1);
        self.pending_publishes.borrow_mut().insert(
            id,
            PendingPublish {
                remaining,
                ..PendingPublish::default()
            },
        );
        id
    }

    /// Waits for publish `id`'s answers: its receipts, or `None` on a failure or
    /// after [`PUBLISH_TIMEOUT`].
    pub(super) async fn answers(&self, id: u64) -> Option<Vec<Receipt>> {
        let wait = futures_lite::future::poll_fn(|cx| {
            let mut pending = self.pending_publishes.borrow_mut();
            match pending.get_mut(&id) {
                Some(p) if p.failed => Poll::Ready(false),
                Some(p) if p.remaining == 0 => Poll::Ready(true),
                Some(p) => {
                    p.waker = Some(cx.waker().clone());
                    Poll::Pending
                }
                None => Poll::Ready(false),
            }
        });
        let ok = glommio::timer::timeout(PUBLISH_TIMEOUT, async { Ok(wait.await) })
            .await
            .unwrap_or(false);
        let p = self.pending_publishes.borrow_mut().remove(&id)?;
        ok.then_some(p.receipts)
    }

    /// Hands the batch to the bridge and waits until Redis took all of it: the 202
    /// promises that every node holding the session will see the events.
    pub(super) async fn publish_via_redis(
        self: &Rc<Self>,
        bridge: &BridgeHandle,
        batch: &PublishBatch,
        ids: IdSource,
    ) -> Result<Vec<Receipt>, Refusal> {
        if !bridge.is_connected() {
            return Err(Refusal::redis_unavailable());
        }
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
                }
            })
            .collect();
        // The epoch a session gets if Redis holds none for it (first use, or lost).
        let epoch = self.history.borrow_mut().new_epoch();
        let id = self.await_answers(1);
        let sent = bridge.send(BridgeMsg::Publish {
            from: self.id,
            id,
            events,
            epoch,
        });
        if sent.is_err() {
            self.pending_publishes.borrow_mut().remove(&id);
            return Err(Refusal::redis_unavailable());
        }
        match self.answers(id).await {
            Some(receipts) => {
                self.stats.add_events(n as u64);
                for _ in receipts.iter().filter(|r| r.duplicate) {
                    self.stats.dedupe_hit();
                }
                Ok(receipts)
            }
            None => Err(Refusal::redis_unavailable()),
        }
    }

    /// Routes a validated batch: local events now, others to their owners, all or
    /// nothing; then waits for the owners' receipts.
    pub(super) async fn publish_local(
        self: &Rc<Self>,
        batch: &Arc<PublishBatch>,
        ids: IdSource,
        wait_delivered: bool,
    ) -> Result<Vec<Receipt>, Refusal> {
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
            self.await_answers(others)
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
                self.pending_publishes.borrow_mut().remove(&id);
                tracing::warn!(shard = self.id, error = %e, "publish refused");
                return Err(Refusal::unavailable("the relay is overloaded; retry later"));
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
            None => Err(Refusal::unavailable(
                "the relay is overloaded; retry with the same event ids",
            )),
        }
    }
}
