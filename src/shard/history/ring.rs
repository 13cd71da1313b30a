//! One session's ring of recent event frames, for resume: the same `Rc`s the
//! sockets were sent, bounded in events and bytes, counting its own cost.
//!
//! Owns only the frames of one stream; the shard-wide budget and the age order
//! are `History`'s. Pure: no I/O, no clock.

use std::collections::VecDeque;
use std::rc::Rc;

use crate::ws::frame::EncodedFrame;

/// What each retained frame costs besides its bytes (ring and age-order slots).
pub const FRAME_OVERHEAD: usize = 48;

/// Frames and bytes held: what a ring (or a whole shard's history) costs.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub frames: usize,
    pub bytes: usize,
}

impl Usage {
    /// Moves this total from a part's `before` to its `after`: the one place the
    /// shard's counts follow a ring's or an id window's.
    pub fn follow(&mut self, before: Usage, after: Usage) {
        self.frames = self.frames + after.frames - before.frames;
        self.bytes = self.bytes + after.bytes - before.bytes;
    }
}

/// A frame's cost in a ring.
pub fn frame_cost(frame: &EncodedFrame) -> usize {
    frame.len() + FRAME_OVERHEAD
}

#[derive(Debug, Default)]
pub struct Ring {
    frames: VecDeque<Rc<EncodedFrame>>,
    bytes: usize,
}

impl Ring {
    pub fn usage(&self) -> Usage {
        Usage {
            frames: self.frames.len(),
            bytes: self.bytes,
        }
    }

    pub fn len(&self) -> usize {
        self.frames.len()
    }

    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    pub fn front(&self) -> Option<&Rc<EncodedFrame>> {
        self.frames.front()
    }

    /// Appends `frame` (the stream's newest), then drops the oldest frames while
    /// the ring holds more than `max_events` or `max_bytes`.
    pub fn push(&mut self, frame: &Rc<EncodedFrame>, max_events: usize, max_bytes: usize) {
        self.frames.push_back(frame.clone());
        self.bytes += frame_cost(frame);
        while self.frames.len() > max_events || self.bytes > max_bytes {
            if self.pop_front().is_none() {
                break;
            }
        }
    }

    /// Drops the oldest frame.
    pub fn pop_front(&mut self) -> Option<Rc<EncodedFrame>> {
        let old = self.frames.pop_front()?;
        self.bytes -= frame_cost(&old);
        Some(old)
    }

    /// Drops the oldest frame if it is `seq`.
    pub fn pop_front_if(&mut self, seq: u64) -> bool {
        if self.frames.front().is_some_and(|f| f.seq == seq) {
            return self.pop_front().is_some();
        }
        false
    }

    pub fn clear(&mut self) {
        self.frames.clear();
        self.bytes = 0;
    }

    /// The sequence number just before the first frame (`last` when empty): a
    /// resume from at least here can be replayed.
    pub fn reach(&self, last: u64) -> u64 {
        self.frames
            .front()
            .map_or(last, |f| f.seq.saturating_sub(1))
    }

    /// The frames after `seq`, in order.
    pub fn after(&self, seq: u64) -> Vec<Rc<EncodedFrame>> {
        self.frames
            .iter()
            .filter(|f| f.seq > seq)
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ws::frame::FrameBuilder;
    use std::time::Instant;

    fn frame(seq: u64, size: usize) -> Rc<EncodedFrame> {
        let mut b = FrameBuilder::with_capacity(size);
        b.payload().extend(std::iter::repeat_n(b'x', size));
        let mut f = b.finish(Instant::now());
        f.seq = seq;
        Rc::new(f)
    }

    #[test]
    fn the_ring_keeps_its_bounds_and_counts_its_bytes() {
        let mut r = Ring::default();
        for seq in 1..=10 {
            r.push(&frame(seq, 100), 4, 1 << 20);
        }
        assert_eq!(r.len(), 4);
        assert_eq!(r.reach(10), 6, "frames 7..=10 are kept");
        assert_eq!(r.usage().bytes, 4 * frame_cost(&frame(0, 100)));
        // A byte bound smaller than two frames keeps one.
        let mut small = Ring::default();
        let cost = frame_cost(&frame(0, 100));
        for seq in 1..=3 {
            small.push(&frame(seq, 100), 100, cost + cost / 2);
        }
        assert_eq!(small.len(), 1);
        assert_eq!(small.front().map(|f| f.seq), Some(3));
    }

    #[test]
    fn replays_start_after_the_asked_seq_and_pops_are_exact() {
        let mut r = Ring::default();
        for seq in 1..=5 {
            r.push(&frame(seq, 10), 100, 1 << 20);
        }
        let seqs: Vec<u64> = r.after(3).iter().map(|f| f.seq).collect();
        assert_eq!(seqs, [4, 5]);
        assert!(!r.pop_front_if(2), "only the front frame is dropped");
        assert!(r.pop_front_if(1));
        assert_eq!(r.reach(5), 1);
        r.clear();
        assert_eq!(r.usage(), Usage::default());
        assert_eq!(r.reach(5), 5);
    }

    #[test]
    fn usage_follows_a_part() {
        let mut total = Usage {
            frames: 10,
            bytes: 1000,
        };
        total.follow(
            Usage {
                frames: 3,
                bytes: 300,
            },
            Usage {
                frames: 1,
                bytes: 120,
            },
        );
        assert_eq!(
            total,
            Usage {
                frames: 8,
                bytes: 820
            }
        );
    }
}
