//! Reconciliation with positions learned from Redis: an event arriving with its
//! own position ([`History::arrival`]: the next one, an old one, or a gap), the
//! stream moved to a position ([`History::rebase`], [`History::settle`]), and the
//! event after a told gap taken as the latest ([`History::advance`]).
//!
//! Owns the rules that move a stream to a position it did not give itself; it
//! says when sockets must resync (a [`ResyncReason`]) but tells no socket and asks
//! Redis nothing (that is the shard's `catch_up` and `deliver`). Pure: no I/O,
//! every call that may make a stream takes `now`.

use std::rc::Rc;
use std::time::Instant;

use super::lifecycle::History;
use crate::stream::{ResyncReason, StreamPos};

/// What an event arriving with its own position (from Redis) means here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// The next event: deliver it.
    Next,
    /// Already seen (or older than the stream's base): drop it.
    Old,
    /// Events between the stream's position and this one were missed; the stream was
    /// rebased just before it. Tell the sockets to resync, then deliver it.
    Gap(ResyncReason),
}

impl History {
    /// Moves a stream to `pos` learned from Redis (a subscription's or a
    /// reconnect's position). Nothing changes when the stream is already there;
    /// otherwise it is rebased, and the reason is returned when sockets had been
    /// told another position. A position behind the stream's in the same epoch
    /// means Redis lost writes (a failover to a lagging replica): the numbers
    /// after it would be reused, so that counts as a new epoch for the sockets.
    pub fn settle(
        &mut self,
        session: &Rc<str>,
        pos: StreamPos,
        now: Instant,
    ) -> Option<ResyncReason> {
        match self.streams.get(&**session) {
            // Events this node already has arrived after the position was read.
            Some(s) if s.live && s.epoch == pos.epoch && pos.seq == s.seq => None,
            _ => self.rebase(session, pos, now),
        }
    }

    /// An event from Redis at `pos` for `session`: where it stands against the
    /// stream. Rebases the stream on a gap or a new epoch.
    pub fn arrival(&mut self, session: &Rc<str>, pos: StreamPos, now: Instant) -> Arrival {
        let s = self.stream(session, now);
        if !s.live {
            // The first event seen before the subscription's position arrived.
            s.epoch = pos.epoch;
            s.seq = pos.seq;
            s.live = true;
            return Arrival::Next;
        }
        if s.epoch == pos.epoch {
            if pos.seq <= s.seq {
                return Arrival::Old;
            }
            if pos.seq == s.seq + 1 {
                s.seq = pos.seq;
                return Arrival::Next;
            }
        }
        let reason = if s.epoch == pos.epoch {
            ResyncReason::Gap
        } else {
            ResyncReason::Epoch
        };
        self.rebase(
            session,
            StreamPos {
                epoch: pos.epoch,
                seq: pos.seq.saturating_sub(1),
            },
            now,
        );
        Arrival::Gap(reason)
    }

    /// Takes the event at `seq` as the stream's latest, after a gap was told.
    pub fn advance(&mut self, session: &str, seq: u64) {
        if let Some(s) = self.streams.get_mut(session) {
            s.seq = s.seq.max(seq);
        }
    }

    /// Moves `session` to `pos`, forgetting frames that cannot bridge to it; marks
    /// it live. Returns what changed: `None` when the stream was already there.
    pub fn rebase(
        &mut self,
        session: &Rc<str>,
        pos: StreamPos,
        now: Instant,
    ) -> Option<ResyncReason> {
        if !self.streams.contains_key(&**session) {
            self.insert(session, pos.epoch, pos.seq, true, now);
            return None;
        }
        let s = self.streams.get_mut(&**session)?;
        let was_live = s.live;
        s.live = true;
        if was_live && s.epoch == pos.epoch && s.seq == pos.seq {
            return None;
        }
        let reason = if s.epoch != pos.epoch || pos.seq < s.seq {
            ResyncReason::Epoch
        } else {
            ResyncReason::Gap
        };
        let before = s.usage();
        s.ring.clear();
        s.epoch = pos.epoch;
        s.seq = pos.seq;
        self.used.follow(before, s.usage());
        // A stream nobody was told about yet has nobody to resync.
        was_live.then_some(reason)
    }
}

#[cfg(test)]
mod tests {
    use super::super::resume::Resume;
    use super::super::session::STREAM_OVERHEAD;
    use super::super::testing::{config, publish};
    use super::*;

    fn at(epoch: u64, seq: u64) -> StreamPos {
        StreamPos { epoch, seq }
    }

    fn history() -> History {
        History::new(config(100, 1 << 20, 1 << 30), 1, 7)
    }

    fn is_live(h: &History, session: &str) -> bool {
        h.get(session).is_some_and(|s| s.live)
    }

    #[test]
    fn arrivals_detect_old_next_and_gaps() {
        let now = Instant::now();
        let mut h = History::new(config(100, 1 << 20, 1 << 30), 1, 7);
        let s: Rc<str> = Rc::from("s");
        assert_eq!(h.rebase(&s, StreamPos { epoch: 9, seq: 3 }, now), None);
        assert_eq!(
            h.arrival(&s, StreamPos { epoch: 9, seq: 3 }, now),
            Arrival::Old
        );
        assert_eq!(
            h.arrival(&s, StreamPos { epoch: 9, seq: 4 }, now),
            Arrival::Next
        );
        assert_eq!(
            h.arrival(&s, StreamPos { epoch: 9, seq: 7 }, now),
            Arrival::Gap(ResyncReason::Gap)
        );
        // The resync names the point before the arriving event; then it is taken.
        assert_eq!(h.position("s"), Some(StreamPos { epoch: 9, seq: 6 }));
        h.advance("s", 7);
        assert_eq!(h.position("s"), Some(StreamPos { epoch: 9, seq: 7 }));
        // Redis behind the stream in the same epoch (lost writes): a new start.
        assert_eq!(
            h.settle(&s, StreamPos { epoch: 9, seq: 3 }, now),
            Some(ResyncReason::Epoch)
        );
        assert_eq!(h.settle(&s, StreamPos { epoch: 9, seq: 3 }, now), None);
        assert_eq!(
            h.arrival(&s, StreamPos { epoch: 5, seq: 1 }, now),
            Arrival::Gap(ResyncReason::Epoch)
        );
    }

    #[test]
    fn arrivals_in_order_advance_the_stream_and_old_ones_change_nothing() {
        let now = Instant::now();
        let mut h = history();
        let s: Rc<str> = Rc::from("s");
        h.rebase(&s, at(9, 3), now);
        for seq in 4..=6 {
            assert_eq!(h.arrival(&s, at(9, seq), now), Arrival::Next);
            assert_eq!(h.position("s"), Some(at(9, seq)));
        }
        // A duplicate of the latest and an older event: dropped, the stream stays.
        assert_eq!(h.arrival(&s, at(9, 6), now), Arrival::Old);
        assert_eq!(h.arrival(&s, at(9, 1), now), Arrival::Old);
        assert_eq!(h.position("s"), Some(at(9, 6)));
    }

    #[test]
    fn the_first_arrival_on_a_pending_stream_sets_its_position() {
        let now = Instant::now();
        let mut h = history();
        let s: Rc<str> = Rc::from("s");
        h.start_pending(&s, now);
        assert!(!is_live(&h, "s"));
        // Before the subscription's position: taken as is, whatever it is.
        assert_eq!(h.arrival(&s, at(5, 10), now), Arrival::Next);
        assert!(is_live(&h, "s"));
        assert_eq!(h.position("s"), Some(at(5, 10)));
        assert_eq!(h.arrival(&s, at(5, 11), now), Arrival::Next);
        assert_eq!(h.arrival(&s, at(5, 2), now), Arrival::Old);
    }

    #[test]
    fn a_gap_into_a_new_epoch_rebases_just_before_the_arrival() {
        let now = Instant::now();
        let mut h = history();
        let s: Rc<str> = Rc::from("s");
        h.rebase(&s, at(9, 3), now);
        assert_eq!(
            h.arrival(&s, at(5, 1), now),
            Arrival::Gap(ResyncReason::Epoch)
        );
        assert_eq!(h.position("s"), Some(at(5, 0)));
        h.advance("s", 1);
        assert_eq!(h.arrival(&s, at(5, 2), now), Arrival::Next);
        assert_eq!(h.position("s"), Some(at(5, 2)));
    }

    #[test]
    fn a_rebase_says_why_only_to_a_stream_sockets_were_told_about() {
        let now = Instant::now();
        let mut h = history();
        let a: Rc<str> = Rc::from("a");
        // Unknown: made live at the position, nobody to tell.
        assert_eq!(h.rebase(&a, at(9, 3), now), None);
        assert!(is_live(&h, "a"));
        assert_eq!(h.position("a"), Some(at(9, 3)));
        assert_eq!(h.rebase(&a, at(9, 3), now), None, "already there");
        assert_eq!(h.rebase(&a, at(9, 5), now), Some(ResyncReason::Gap));
        assert_eq!(
            h.rebase(&a, at(9, 4), now),
            Some(ResyncReason::Epoch),
            "back in the same epoch: Redis lost writes"
        );
        assert_eq!(h.rebase(&a, at(8, 4), now), Some(ResyncReason::Epoch));
        assert_eq!(h.position("a"), Some(at(8, 4)));
        // Pending (waiting for its subscription): made live, nobody to resync.
        let b: Rc<str> = Rc::from("b");
        h.start_pending(&b, now);
        assert_eq!(h.rebase(&b, at(9, 7), now), None);
        assert!(is_live(&h, "b"));
        assert_eq!(h.position("b"), Some(at(9, 7)));
    }

    #[test]
    fn a_rebase_drops_the_frames_that_cannot_bridge_to_it() {
        let now = Instant::now();
        let mut h = history();
        let s: Rc<str> = Rc::from("s");
        for _ in 0..3 {
            publish(&mut h, &s, 10, now);
        }
        assert_eq!(h.figures().frames, 3);
        let epoch = h.position("s").map_or(0, |p| p.epoch);
        assert_eq!(h.rebase(&s, at(epoch, 5), now), Some(ResyncReason::Gap));
        assert_eq!(h.figures().frames, 0);
        assert_eq!(h.figures().bytes, STREAM_OVERHEAD + "s".len());
        assert!(matches!(
            h.resume("s", at(epoch, 3), usize::MAX),
            Resume::Resync(ResyncReason::History)
        ));
    }

    #[test]
    fn advance_never_moves_a_stream_back_nor_makes_one() {
        let now = Instant::now();
        let mut h = history();
        let s: Rc<str> = Rc::from("s");
        h.rebase(&s, at(9, 6), now);
        h.advance("s", 4);
        assert_eq!(h.position("s"), Some(at(9, 6)));
        h.advance("s", 7);
        assert_eq!(h.position("s"), Some(at(9, 7)));
        h.advance("t", 3);
        assert!(h.get("t").is_none());
    }

    #[test]
    fn settle_leaves_a_live_stream_at_the_position_alone() {
        let now = Instant::now();
        let mut h = history();
        let s: Rc<str> = Rc::from("s");
        assert_eq!(h.settle(&s, at(9, 3), now), None, "made there");
        assert_eq!(h.settle(&s, at(9, 3), now), None);
        assert_eq!(
            h.settle(&s, at(9, 5), now),
            Some(ResyncReason::Gap),
            "Redis moved on while the node was away"
        );
        assert_eq!(h.settle(&s, at(4, 5), now), Some(ResyncReason::Epoch));
        // A pending stream learns its position: nobody was told another one.
        let p: Rc<str> = Rc::from("p");
        h.start_pending(&p, now);
        assert_eq!(h.settle(&p, at(2, 8), now), None);
        assert!(is_live(&h, "p"));
        assert_eq!(h.position("p"), Some(at(2, 8)));
    }
}
