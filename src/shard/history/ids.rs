//! One session's dedupe window: publisher ids (hashed) with the sequence number
//! each was given and when, oldest first, counting its own cost.
//!
//! Owns only the ids of one stream; when the shard is over its memory budget,
//! `History` asks it to narrow. Pure: no I/O; every call takes `now`.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

/// What each remembered id costs: its map entry (32 bytes, in a map half to
/// seven eighths full) and its place in the age order (24 bytes, in a queue that
/// grows by doubling).
pub const ID_OVERHEAD: usize = 96;
/// What a window that remembers any id costs besides them: the smallest map and
/// queue allocations (a window of one id holds about 270 bytes).
pub const WINDOW_OVERHEAD: usize = 176;
/// Ids one session remembers for dedupe, at most.
pub const MAX_IDS_PER_SESSION: usize = 4096;

#[derive(Debug, Default)]
pub struct IdWindow {
    /// Publisher id hash → (seq it was given, when).
    ids: HashMap<u64, (u64, Instant)>,
    order: VecDeque<(u64, Instant)>,
}

impl IdWindow {
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// What the window costs.
    pub fn bytes(&self) -> usize {
        match self.ids.len() {
            0 => 0,
            n => WINDOW_OVERHEAD + n * ID_OVERHEAD,
        }
    }

    /// The seq `id_hash` was given within `window` of `now`, if any.
    pub fn seen_within(&self, id_hash: u64, now: Instant, window: Duration) -> Option<u64> {
        let &(seq, at) = self.ids.get(&id_hash)?;
        (now.duration_since(at) < window).then_some(seq)
    }

    /// Remembers that `id_hash` was given `seq`, after forgetting ids older than
    /// `window` and the oldest past [`MAX_IDS_PER_SESSION`].
    pub fn remember(&mut self, id_hash: u64, seq: u64, now: Instant, window: Duration) {
        while let Some(&(h, at)) = self.order.front() {
            if self.order.len() < MAX_IDS_PER_SESSION && now.duration_since(at) < window {
                break;
            }
            self.order.pop_front();
            self.ids.remove(&h);
        }
        if self.ids.insert(id_hash, (seq, now)).is_none() {
            self.order.push_back((id_hash, now));
        }
        self.fit();
    }

    /// Gives back what a window that shrank no longer needs, so the memory follows
    /// the accounting ([`IdWindow::bytes`]) after ids expire or are narrowed away.
    fn fit(&mut self) {
        if self.ids.capacity() > 4 * self.ids.len() + 16 {
            self.ids.shrink_to_fit();
            self.order.shrink_to_fit();
        }
    }

    /// Forgets the oldest id, keeping at least one: dedupe narrows under memory
    /// pressure rather than the cap giving way. False when nothing could go.
    pub fn narrow(&mut self) -> bool {
        if self.order.len() <= 1 {
            return false;
        }
        match self.order.pop_front() {
            Some((h, _)) => {
                self.ids.remove(&h);
                self.fit();
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WINDOW: Duration = Duration::from_secs(60);

    #[test]
    fn an_id_is_known_within_the_window_only() {
        let now = Instant::now();
        let mut w = IdWindow::default();
        w.remember(7, 1, now, WINDOW);
        assert_eq!(
            w.seen_within(7, now + Duration::from_secs(59), WINDOW),
            Some(1)
        );
        assert_eq!(w.seen_within(7, now + WINDOW, WINDOW), None);
        assert_eq!(w.seen_within(8, now, WINDOW), None);
        // Remembering after the window forgets the old id and its cost.
        w.remember(8, 2, now + WINDOW, WINDOW);
        assert_eq!(w.len(), 1);
        assert_eq!(w.bytes(), WINDOW_OVERHEAD + ID_OVERHEAD);
    }

    #[test]
    fn the_window_holds_at_most_its_cap_and_narrows_to_one() {
        let now = Instant::now();
        let mut w = IdWindow::default();
        for i in 0..(MAX_IDS_PER_SESSION as u64 + 10) {
            w.remember(i, i + 1, now, WINDOW);
        }
        assert_eq!(w.len(), MAX_IDS_PER_SESSION);
        assert_eq!(w.seen_within(0, now, WINDOW), None, "the oldest went first");
        while w.narrow() {}
        assert_eq!(w.len(), 1);
        let newest = MAX_IDS_PER_SESSION as u64 + 9;
        assert_eq!(w.seen_within(newest, now, WINDOW), Some(newest + 1));
    }
}
