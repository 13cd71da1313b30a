//! Sequencing and fan-out: an event this shard owns (published here or routed
//! here) or one that arrived from Redis gets its place in the session's stream,
//! is encoded once, kept in the ring if someone may resume, and pushed as the same
//! `Rc` bytes onto every socket's bounded queue (a queue that was empty goes on
//! `flush`'s list). Resync frames go out from here too.
//!
//! It may not read the network or Redis: catch-up decisions are `catch_up`'s.

use super::history::{Arrival, ResyncReason, StreamPos};
use super::registry::{Queued, SocketState};
use super::{event_parts, IdSource, Shard, CATCH_UP_HOLD};
use crate::config::SlowConsumer;
use crate::http::publish::PublishBatch;
use crate::router::{DeliveredCounts, Receipt};
use crate::subscribe::Transport;
use crate::ws::close::Disconnect;
use crate::ws::frame::{encode_event, resync_json, EncodedFrame};
use std::rc::Rc;
use std::time::Instant;

impl Shard {
    /// Sequences one event of a batch this shard owns, keeps it for resume, and
    /// writes it to every welcomed socket of its session. `None` for a bad index.
    pub(super) fn deliver(
        &self,
        batch: &PublishBatch,
        index: u32,
        at: Instant,
        ids: IdSource,
        wait: bool,
    ) -> Option<Receipt> {
        let ev = batch.events.get(index as usize)?;
        let session = batch.session(ev);
        let mut history = self.history.borrow_mut();
        let key = history.key(session);
        let id_hash = ev
            .id
            .as_ref()
            .map(|r| xxhash_rust::xxh3::xxh3_64(batch.bytes(r)));
        let placed = history.place(&key, id_hash, at);
        let mut receipt = Receipt {
            index,
            pos: placed.pos,
            duplicate: placed.duplicate,
            written: 0,
            queued: 0,
            dropped: 0,
            receivers: 0,
        };
        if placed.duplicate {
            self.stats.dedupe_hit();
            return Some(receipt);
        }
        let registry = self.registry.borrow();
        let sockets = registry.sockets_of(session);
        let keep = placed.keep;
        if sockets.is_none() && !keep {
            return Some(receipt);
        }
        let generated = self.generated_id(ev, ids, index);
        let frame = Rc::new(encode_event(
            &event_parts(batch, ev, &generated, receipt.pos),
            at,
        ));
        if keep {
            history.retain(&key, &frame);
        }
        drop(history);
        if let Some(sockets) = sockets {
            let (written, queued, dropped) = self.fan_out(sockets, &frame, wait);
            receipt.written = written;
            receipt.queued = queued;
            receipt.dropped = dropped;
        }
        Some(receipt)
    }

    /// An event from Redis: delivered when it is the session's next one, dropped
    /// when already seen; a gap before it resyncs the session's sockets first.
    /// With `wait` (its publisher waits with `?wait=delivered`) it is written
    /// through, and the counts are answered: an event held behind a catch-up counts
    /// as queued on every socket, one already seen counts nothing.
    pub(super) fn deliver_remote(
        &self,
        session: &str,
        frame: EncodedFrame,
        pos: StreamPos,
        now: Instant,
        wait: bool,
    ) -> DeliveredCounts {
        let held_counts = || DeliveredCounts {
            queued: self
                .registry
                .borrow()
                .sockets_of(session)
                .map_or(0, |s| s.len() as u32),
            ..DeliveredCounts::default()
        };
        if let Some(held) = self.catching_up.borrow_mut().get_mut(session) {
            // Behind this event are events being read back from Redis: it waits.
            if held.len() < CATCH_UP_HOLD {
                held.push((frame, pos));
                return held_counts();
            }
        }
        if self.catching_up.borrow().contains_key(session) {
            // Too much arrived meanwhile: give up the catch-up; the gap resyncs.
            self.catching_up.borrow_mut().remove(session);
        } else if pos.seq > 1 && self.can_catch_up(session, pos.epoch, pos.seq - 1) {
            self.start_catch_up(session, pos.seq - 1);
            if let Some(held) = self.catching_up.borrow_mut().get_mut(session) {
                held.push((frame, pos));
                return held_counts();
            }
        }
        let mut history = self.history.borrow_mut();
        let key = history.key(session);
        match history.arrival(&key, pos, now) {
            Arrival::Old => return DeliveredCounts::default(),
            Arrival::Next => {}
            Arrival::Gap(reason) => {
                drop(history);
                self.send_resync(session, reason);
                history = self.history.borrow_mut();
                history.advance(session, pos.seq);
            }
        }
        let frame = Rc::new(frame);
        history.retain(&key, &frame);
        drop(history);
        match self.registry.borrow().sockets_of(session) {
            Some(sockets) => {
                let (written, queued, dropped) = self.fan_out(sockets, &frame, wait);
                DeliveredCounts {
                    written,
                    queued,
                    dropped,
                }
            }
            None => DeliveredCounts::default(),
        }
    }

    /// Tells every welcomed socket of `session` to reload state: events before the
    /// stream's current position may be missing for them.
    pub(super) fn send_resync(&self, session: &str, reason: ResyncReason) {
        let Some(pos) = self.history.borrow().position(session) else {
            return;
        };
        let registry = self.registry.borrow();
        let Some(sockets) = registry.sockets_of(session) else {
            return;
        };
        let json = resync_json(session, pos, reason);
        for s in sockets {
            s.push_message("resync", Some(pos), &json);
        }
        self.stats.resync(reason, sockets.len() as u64);
    }

    /// Queues one frame on every socket of a session. With `wait`, writes through
    /// and returns (written to the kernel, still queued, closed as slow).
    pub(super) fn fan_out(
        &self,
        sockets: &[Rc<SocketState>],
        frame: &Rc<EncodedFrame>,
        wait: bool,
    ) -> (u32, u32, u32) {
        let limits = &self.settings().live.limits;
        let (max, policy) = (limits.max_outbound_bytes, limits.slow_consumer);
        let (mut written, mut queued, mut dropped) = (0, 0, 0);
        for s in sockets {
            let mut slow = false;
            let put = s.queue_event(frame, max);
            if put == Queued::First {
                self.flushes.add(s);
            } else if put == Queued::Full {
                // Full queue: write what the kernel takes now (a long-poll's task
                // reads its queue itself: nothing to write through), then judge.
                let flushed = match s.transport {
                    Transport::Poll => Ok(false),
                    _ => crate::outbound::write_queue_now(s, &self.stats),
                };
                if flushed.is_err() {
                    slow = true;
                } else if !s.push_event(frame, max) {
                    slow = !self.skip_for(s, frame, max, policy);
                }
                if slow {
                    s.request_close(Disconnect::SlowConsumer);
                }
            }
            if wait {
                if slow {
                    dropped += 1;
                } else if s.transport == Transport::Poll {
                    queued += 1;
                } else {
                    match crate::outbound::write_queue_now(s, &self.stats) {
                        Ok(true) => written += 1,
                        Ok(false) => queued += 1,
                        Err(_) => dropped += 1,
                    }
                }
            }
        }
        (written, queued, dropped)
    }

    /// Under `RELAY_SLOW_CONSUMER=skip`, makes room for `frame` on a full queue by
    /// dropping its oldest events (told with a resync) and queues it; false when
    /// the subscriber must be closed instead.
    fn skip_for(
        &self,
        s: &SocketState,
        frame: &Rc<EncodedFrame>,
        max: usize,
        policy: SlowConsumer,
    ) -> bool {
        if policy != SlowConsumer::Skip {
            return false;
        }
        let Some(skipped) = s.skip_oldest(frame, max) else {
            return false;
        };
        self.stats.skipped(skipped);
        self.stats.resync(ResyncReason::Slow, 1);
        s.push_event(frame, max)
    }
}
