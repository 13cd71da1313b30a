//! Catch-up with Redis: when a session's stream learns a position from Redis (a
//! subscription, a reconnect, a gap in arrivals), decide whether to read the
//! missed events back from the Redis Stream, hold live arrivals meanwhile, and
//! deliver them in order, or to resync the session's sockets.
//!
//! The decisions are pure functions of where the stream stands ([`settling`],
//! [`behind`], [`short_of`]), tested below; the `impl Shard` block acts on them.
//! It talks to Redis only through `BridgeMsg` on the bridge's channel; it never
//! touches a socket except through `deliver`, and it moves streams only through
//! `History`'s reconciliation (`settle`, and `deliver_remote`'s arrivals).

use super::history::StreamPos;
use super::Shard;
use crate::bridge::BridgeMsg;
use crate::clock::unix_now_ns;
use crate::config::HistoryStore;
use crate::router::FetchPurpose;
use crate::ws::frame::frame_from_remote;
use std::rc::Rc;
use std::time::Instant;

/// Where a session's stream stands, as far as the catch-up decisions need it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Standing {
    /// With Redis: the subscription is live and the position known.
    pub live: bool,
    pub pos: StreamPos,
}

/// What a position learned from Redis means for a session's stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Settling {
    /// A catch-up is already reading this session back: it settles when done.
    Wait,
    /// The stream is behind in the same epoch and Redis keeps history: read the
    /// missed events back from the Redis Stream, up to `target`.
    CatchUp { target: u64 },
    /// Move the stream to the position (its sockets resync if it moved).
    /// `went_back`: the seq the stream had reached past Redis's in the same epoch:
    /// Redis lost writes, so a new epoch must start.
    Settle { went_back: Option<u64> },
}

/// True when `stream` is live and behind `seq` in `epoch`, and Redis keeps
/// history (`redis_history`), so the Redis Stream may hold what lies between.
/// An arrival at `seq` asks this about `seq - 1`: the events before it.
pub(super) fn behind(redis_history: bool, stream: Option<Standing>, epoch: u64, seq: u64) -> bool {
    redis_history && stream.is_some_and(|s| s.live && s.pos.epoch == epoch && s.pos.seq < seq)
}

/// What to do with `pos`, a session's position learned from Redis.
pub(super) fn settling(
    catching_up: bool,
    redis_history: bool,
    stream: Option<Standing>,
    pos: StreamPos,
) -> Settling {
    if catching_up {
        return Settling::Wait;
    }
    if behind(redis_history, stream, pos.epoch, pos.seq) {
        return Settling::CatchUp { target: pos.seq };
    }
    let went_back = stream
        .filter(|s| s.live && s.pos.epoch == pos.epoch && pos.seq < s.pos.seq)
        .map(|s| s.pos.seq);
    Settling::Settle { went_back }
}

/// After a read-back that left the stream at `at`: the position to settle at
/// (resyncing the sockets) when it fell short of `target`, the Redis Stream not
/// holding every missed event.
pub(super) fn short_of(at: StreamPos, target: u64) -> Option<StreamPos> {
    (at.seq < target).then_some(StreamPos {
        epoch: at.epoch,
        seq: target,
    })
}

impl Shard {
    /// True when history is kept in Redis and the bridge runs.
    fn redis_history(&self) -> bool {
        self.node.config.history.store == HistoryStore::Redis && self.node.bridge.is_some()
    }

    /// Where `session`'s stream stands, if it has one.
    fn standing(&self, session: &str) -> Option<Standing> {
        self.history.borrow().get(session).map(|s| Standing {
            live: s.live,
            pos: s.position(),
        })
    }

    /// Moves a session's stream to `pos` learned from Redis. With Redis-kept
    /// history, events this node missed in the same epoch are read back and
    /// delivered instead of a resync; otherwise the sockets are told to resync.
    pub(super) fn settle_or_catch_up(&self, session: &str, pos: StreamPos) {
        let catching_up = self.catching_up.borrow().contains_key(session);
        let went_back = match settling(
            catching_up,
            self.redis_history(),
            self.standing(session),
            pos,
        ) {
            Settling::Wait => return,
            Settling::CatchUp { target } => {
                self.start_catch_up(session, target);
                return;
            }
            Settling::Settle { went_back } => went_back,
        };
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
        // Per arrival: no stream lookup unless Redis keeps history.
        self.redis_history() && behind(true, self.standing(session), epoch, seq)
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
    pub(super) fn caught_up(&self, session: &str, target: u64, payloads: Option<&[Vec<u8>]>) {
        let held = self
            .catching_up
            .borrow_mut()
            .remove(session)
            .unwrap_or_default();
        let now = Instant::now();
        let now_ns = unix_now_ns();
        let mut read_back = 0u64;
        for p in payloads.unwrap_or_default() {
            if let Some((frame, pos)) = frame_from_remote(p, now_ns, now) {
                if pos.seq > target {
                    break;
                }
                read_back += 1;
                self.deliver_remote(session, frame, pos, now, false);
            }
        }
        self.stats.caught_up(read_back);
        let Some(at) = self.history.borrow().position(session) else {
            return;
        };
        if let Some(pos) = short_of(at, target) {
            let key = self.history.borrow().key(session);
            if let Some(reason) = self.history.borrow_mut().settle(&key, pos, Instant::now()) {
                self.send_resync(session, reason);
            }
        }
        for (frame, pos) in held {
            self.deliver_remote(session, frame, pos, now, false);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(epoch: u64, seq: u64) -> StreamPos {
        StreamPos { epoch, seq }
    }

    fn live(epoch: u64, seq: u64) -> Option<Standing> {
        Some(Standing {
            live: true,
            pos: at(epoch, seq),
        })
    }

    const NOT_BACK: Settling = Settling::Settle { went_back: None };

    #[test]
    fn a_stream_behind_in_its_epoch_catches_up_from_redis_history() {
        assert_eq!(
            settling(false, true, live(9, 3), at(9, 7)),
            Settling::CatchUp { target: 7 }
        );
        // Without history in Redis there is nothing to read back: resync.
        assert_eq!(settling(false, false, live(9, 3), at(9, 7)), NOT_BACK);
    }

    #[test]
    fn a_catch_up_in_flight_settles_nothing_new() {
        for redis_history in [true, false] {
            assert_eq!(
                settling(true, redis_history, live(9, 3), at(9, 7)),
                Settling::Wait
            );
            assert_eq!(
                settling(true, redis_history, live(9, 7), at(9, 3)),
                Settling::Wait
            );
        }
    }

    #[test]
    fn other_positions_settle_and_resync_if_they_moved() {
        // At the position: settling changes nothing.
        assert_eq!(settling(false, true, live(9, 3), at(9, 3)), NOT_BACK);
        // Another epoch: the Redis Stream cannot bridge to it.
        assert_eq!(settling(false, true, live(9, 3), at(4, 7)), NOT_BACK);
        // Pending (waiting for its subscription) or unknown: nobody to catch up.
        let pending = Some(Standing {
            live: false,
            pos: at(0, 0),
        });
        assert_eq!(settling(false, true, pending, at(9, 7)), NOT_BACK);
        assert_eq!(settling(false, true, None, at(9, 7)), NOT_BACK);
    }

    #[test]
    fn redis_behind_the_stream_in_its_epoch_means_lost_writes() {
        for redis_history in [true, false] {
            assert_eq!(
                settling(false, redis_history, live(9, 7), at(9, 3)),
                Settling::Settle { went_back: Some(7) }
            );
        }
        let pending = Some(Standing {
            live: false,
            pos: at(9, 7),
        });
        assert_eq!(settling(false, true, pending, at(9, 3)), NOT_BACK);
    }

    #[test]
    fn an_arrival_past_the_next_one_reads_the_hole_back() {
        // Stream at 5: an arrival at 7 misses 6 (behind 6); at 6 it is the next one.
        assert!(behind(true, live(9, 5), 9, 7 - 1));
        assert!(!behind(true, live(9, 5), 9, 6 - 1));
        assert!(!behind(false, live(9, 5), 9, 7 - 1), "no Redis history");
        assert!(!behind(true, live(8, 5), 9, 7 - 1), "another epoch");
        assert!(!behind(true, None, 9, 7 - 1));
    }

    #[test]
    fn a_read_back_short_of_its_target_resyncs_there() {
        assert_eq!(short_of(at(9, 5), 7), Some(at(9, 7)));
        assert_eq!(short_of(at(9, 7), 7), None);
        assert_eq!(short_of(at(9, 8), 7), None);
    }
}
