//! What a resuming client needs ([`History::resume`]): nothing, the ring's frames
//! after its position, or a resync when the ring does not reach back, the epoch
//! differs, or the replay would not fit the socket's queue.
//!
//! Owns the resume decision only: it reads streams and changes none. Pure: no
//! I/O, no clock.

use std::rc::Rc;

use super::lifecycle::History;
use crate::stream::{ResyncReason, StreamPos};
use crate::ws::frame::EncodedFrame;

/// The answer to a resume request.
#[derive(Debug)]
pub enum Resume {
    /// Nothing was missed.
    UpToDate,
    /// These frames, in order, bring the client to the stream's position.
    Replay(Vec<Rc<EncodedFrame>>),
    /// The client must reload its state.
    Resync(ResyncReason),
}

impl History {
    /// What a client at `since` needs to catch up with `session`, which exists.
    /// Replays never exceed `max_bytes` (the socket's queue cap): past it, resync.
    pub fn resume(&self, session: &str, since: StreamPos, max_bytes: usize) -> Resume {
        let Some(s) = self.streams.get(session) else {
            return Resume::Resync(ResyncReason::Epoch);
        };
        if since.epoch != s.epoch || since.seq > s.seq {
            return Resume::Resync(ResyncReason::Epoch);
        }
        if since.seq == s.seq {
            return Resume::UpToDate;
        }
        if since.seq < s.reach() {
            return Resume::Resync(ResyncReason::History);
        }
        let frames = s.ring.after(since.seq);
        let bytes: usize = frames.iter().map(|f| f.len()).sum();
        if bytes > max_bytes {
            return Resume::Resync(ResyncReason::History);
        }
        Resume::Replay(frames)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{config, publish};
    use super::*;
    use std::time::Instant;

    #[test]
    fn replays_exactly_what_was_missed() {
        let now = Instant::now();
        let mut h = History::new(config(100, 1 << 20, 1 << 30), 1, 7);
        let s: Rc<str> = Rc::from("s");
        for _ in 0..10 {
            publish(&mut h, &s, 10, now);
        }
        let epoch = h.position("s").unwrap().epoch;
        match h.resume("s", StreamPos { epoch, seq: 4 }, usize::MAX) {
            Resume::Replay(f) => {
                assert_eq!(
                    f.iter().map(|f| f.seq).collect::<Vec<_>>(),
                    (5..=10).collect::<Vec<_>>()
                )
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            h.resume("s", StreamPos { epoch, seq: 10 }, usize::MAX),
            Resume::UpToDate
        ));
        assert!(matches!(
            h.resume(
                "s",
                StreamPos {
                    epoch: epoch ^ 1,
                    seq: 4
                },
                usize::MAX
            ),
            Resume::Resync(ResyncReason::Epoch)
        ));
        assert!(matches!(
            h.resume("s", StreamPos { epoch, seq: 11 }, usize::MAX),
            Resume::Resync(ResyncReason::Epoch)
        ));
    }

    #[test]
    fn a_resume_from_before_the_ring_resyncs() {
        let now = Instant::now();
        let mut h = History::new(config(5, 1 << 20, 1 << 30), 1, 7);
        let s: Rc<str> = Rc::from("s");
        for _ in 0..10 {
            publish(&mut h, &s, 10, now);
        }
        let epoch = h.position("s").unwrap().epoch;
        assert!(matches!(
            h.resume("s", StreamPos { epoch, seq: 4 }, usize::MAX),
            Resume::Resync(ResyncReason::History)
        ));
        assert!(matches!(
            h.resume("s", StreamPos { epoch, seq: 5 }, usize::MAX),
            Resume::Replay(f) if f.len() == 5
        ));
    }
}
