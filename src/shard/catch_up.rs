//! Catch-up with Redis: when a session's stream learns a position from Redis (a
//! subscription, a reconnect, a gap in arrivals), decide whether to read the
//! missed events back from the Redis Stream, hold live arrivals meanwhile, and
//! deliver them in order, or to resync the session's sockets.
//!
//! It talks to Redis only through `BridgeMsg` on the bridge's channel; it never
//! touches a socket except through `deliver`.

use super::history::StreamPos;
use super::Shard;
use crate::bridge::BridgeMsg;
use crate::clock::unix_now_ns;
use crate::config::HistoryStore;
use crate::router::FetchPurpose;
use crate::ws::frame::frame_from_remote;
use std::rc::Rc;
use std::time::Instant;

impl Shard {
    /// Moves a session's stream to `pos` learned from Redis. With Redis-kept
    /// history, events this node missed in the same epoch are read back and
    /// delivered instead of a resync; otherwise the sockets are told to resync.
    pub(super) fn settle_or_catch_up(&self, session: &str, pos: StreamPos) {
        if self.catching_up.borrow().contains_key(session) {
            return;
        }
        if self.can_catch_up(session, pos.epoch, pos.seq) {
            self.start_catch_up(session, pos.seq);
            return;
        }
        let went_back = self
            .history
            .borrow()
            .get(session)
            .filter(|s| s.live && s.epoch == pos.epoch && pos.seq < s.seq)
            .map(|s| s.seq);
        if let (Some(reached), Some(bridge)) = (went_back, &self.node.bridge) {
            // Redis lost writes: its numbers after `pos` would be given again. A
            // new epoch in Redis makes every client that saw the old ones resync,
            // on every node, including those away right now.
            let msg = BridgeMsg::NewEpoch {
                from: self.id,
                session: session.to_string(),
                went_back: pos,
                reached,
            };
            if bridge.send(msg).is_err() {
                tracing::warn!(
                    shard = self.id,
                    "new epoch not queued; the bridge is behind"
                );
            }
        }
        let key = self.history.borrow().key(session);
        let changed = self.history.borrow_mut().settle(&key, pos, Instant::now());
        if let Some(reason) = changed {
            self.send_resync(session, reason);
        }
    }

    /// True when `session`'s live stream is behind `seq` in `epoch` and the Redis
    /// Stream may hold what lies between.
    pub(super) fn can_catch_up(&self, session: &str, epoch: u64, seq: u64) -> bool {
        self.node.config.history.store == HistoryStore::Redis
            && self.node.bridge.is_some()
            && self
                .history
                .borrow()
                .get(session)
                .is_some_and(|s| s.live && s.epoch == epoch && s.seq < seq)
    }

    /// Asks the bridge for the events after the stream's position; arrivals wait
    /// until they are delivered. `target` is where the stream must get to.
    pub(super) fn start_catch_up(&self, session: &str, target: u64) {
        let (Some(bridge), Some(after)) =
            (&self.node.bridge, self.history.borrow().position(session))
        else {
            return;
        };
        let msg = BridgeMsg::Fetch {
            from: self.id,
            session: session.to_string(),
            after,
            purpose: FetchPurpose::CatchUp { target },
        };
        if bridge.send(msg).is_ok() {
            self.catching_up
                .borrow_mut()
                .insert(Rc::from(session), Vec::new());
        }
    }

    /// Events read back for a catch-up: delivered through the normal arrival path
    /// (a hole the Redis Stream cannot fill resyncs there), then what was held.
    pub(super) fn caught_up(&self, session: &str, target: u64, payloads: Option<Vec<Vec<u8>>>) {
        let held = self
            .catching_up
            .borrow_mut()
            .remove(session)
            .unwrap_or_default();
        let now = Instant::now();
        let now_ns = unix_now_ns();
        let mut read_back = 0u64;
        for p in payloads.unwrap_or_default() {
            if let Some((frame, pos)) = frame_from_remote(&p, now_ns, now) {
                if pos.seq > target {
                    break;
                }
                read_back += 1;
                self.deliver_remote(session, frame, pos, now);
            }
        }
        self.stats.caught_up(read_back);
        let Some(at) = self.history.borrow().position(session) else {
            return;
        };
        if at.seq < target {
            let key = self.history.borrow().key(session);
            let pos = StreamPos {
                epoch: at.epoch,
                seq: target,
            };
            if let Some(reason) = self.history.borrow_mut().settle(&key, pos, Instant::now()) {
                self.send_resync(session, reason);
            }
        }
        for (frame, pos) in held {
            self.deliver_remote(session, frame, pos, now);
        }
    }
}
