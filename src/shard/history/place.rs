//! Sequencing and dedupe of a local publish: the next `seq` of a session's stream
//! ([`History::place`]), or, for an id seen within the dedupe window, the one it
//! was given then ([`History::duplicate_of`], [`History::remember_id`]).
//!
//! Owns the numbering of events this shard places itself (without Redis); it
//! keeps no frames (that is `budget`'s) and never moves a stream to a position
//! learned elsewhere (that is `reconcile`'s). Pure: no I/O, every call takes `now`.

use std::rc::Rc;
use std::time::{Duration, Instant};

use super::lifecycle::History;
use super::session::SessionStream;
use crate::stream::StreamPos;

/// Where [`History::place`] put an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    pub pos: StreamPos,
    /// Its id was seen within the dedupe window: `pos` is the first one's.
    pub duplicate: bool,
    /// Its frame is to be kept for resume ([`History::keeps`]).
    pub keep: bool,
}

/// The seq `id_hash` was given in `s` within `window` of `now`, if any.
fn seen_within(s: &SessionStream, id_hash: u64, now: Instant, window: Duration) -> Option<u64> {
    s.ids.seen_within(id_hash, now, window)
}

impl History {
    /// The sequence number an id was given within the dedupe window, if any.
    pub fn duplicate_of(&self, session: &str, id_hash: u64, now: Instant) -> Option<u64> {
        let s = self.streams.get(session)?;
        seen_within(s, id_hash, now, self.config.dedupe_window)
    }

    /// Places the next event of `session` (creating its stream): its position,
    /// or, for an id seen within the dedupe window, the position it was given then.
    /// One pass over the stream for what fan-out needs per event.
    pub fn place(&mut self, session: &Rc<str>, id_hash: Option<u64>, now: Instant) -> Placement {
        let window = self.config.dedupe_window;
        let history_on = self.config.events > 0;
        let s = self.stream(session, now);
        if let Some(seq) = id_hash.and_then(|h| seen_within(s, h, now, window)) {
            return Placement {
                pos: StreamPos {
                    epoch: s.epoch,
                    seq,
                },
                duplicate: true,
                keep: false,
            };
        }
        s.seq += 1;
        let placement = Placement {
            pos: s.position(),
            duplicate: false,
            keep: history_on && s.watched,
        };
        if let Some(h) = id_hash {
            self.remember_id(session, h, placement.pos.seq, now);
        }
        placement
    }

    /// Remembers that `id_hash` was given `seq`.
    pub fn remember_id(&mut self, session: &str, id_hash: u64, seq: u64, now: Instant) {
        let window = self.config.dedupe_window;
        let Some(s) = self.streams.get_mut(session) else {
            return;
        };
        let before = s.usage();
        s.ids.remember(id_hash, seq, now, window);
        self.used.follow(before, s.usage());
        if self.used.bytes > self.budget {
            self.enforce_budget();
        }
        // Still over with frames and idle streams gone: this session remembers
        // fewer ids (dedupe narrows under memory pressure; the cap holds).
        if let Some(s) = self.streams.get_mut(session) {
            while self.used.bytes > self.budget {
                let before = s.usage();
                if !s.ids.narrow() {
                    break;
                }
                self.used.follow(before, s.usage());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{config, publish};
    use super::*;

    #[test]
    fn ids_are_remembered_within_the_window() {
        let now = Instant::now();
        let mut h = History::new(config(100, 1 << 20, 1 << 30), 1, 7);
        let s: Rc<str> = Rc::from("s");
        let seq = publish(&mut h, &s, 10, now);
        h.remember_id("s", 42, seq, now);
        assert_eq!(h.duplicate_of("s", 42, now), Some(seq));
        assert_eq!(h.duplicate_of("s", 43, now), None);
        let later = now + h.config().dedupe_window + Duration::from_secs(1);
        assert_eq!(h.duplicate_of("s", 42, later), None, "outside the window");
        h.remember_id("s", 43, 2, later);
        assert_eq!(h.duplicate_of("s", 42, later), None);
    }
}
