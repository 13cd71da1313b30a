//! The shard's one deadline structure for its subscribers: when each next needs
//! attention (a ping, a ping timeout, its token's expiry, a long-poll's deadline, a
//! closing socket's grace, a welcome that waits too long), so housekeeping visits
//! only the subscribers that are due instead of walking them all.
//!
//! A binary heap of `(due, slot, id)` over a slab of the subscribers it tracks.
//! Each tracked subscriber has at most one live entry: the one whose due time
//! equals its [`Timed::next_due`]. Moving a deadline later needs no heap work (the
//! entry pops early, is looked at, and is pushed again for the true time); moving
//! it earlier pushes a new entry and leaves the old one stale. Stale entries, and
//! entries of subscribers that left (their slot is empty or holds a newer one), are
//! dropped when they pop. So the heap holds one entry per subscriber plus the
//! stale ones of the last interval, and each visit costs O(log n).
//!
//! Owns the heap and the slab only: what a subscriber needs when it is due is
//! `housekeeping`'s decision. Shard-local, no I/O.

use std::cell::Cell;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::rc::Rc;

/// What the structure needs of a tracked subscriber: its unique id, and two cells
/// it keeps in it (its slab slot, and the due time of its live entry).
pub trait Timed {
    fn id(&self) -> u64;
    fn timer_slot(&self) -> &Cell<u32>;
    fn next_due(&self) -> &Cell<u64>;
}

/// `next_due` of a subscriber with no live entry.
pub const NOT_DUE: u64 = u64::MAX;
/// `timer_slot` of a subscriber not tracked.
pub const UNTRACKED: u32 = u32::MAX;

/// Deadlines of one shard's subscribers ([`mono_ms`](super::registry::mono_ms)
/// milliseconds).
pub struct Timers<T> {
    heap: BinaryHeap<Reverse<(u64, u32, u64)>>,
    slots: Vec<Option<Rc<T>>>,
    free: Vec<u32>,
}

impl<T> Default for Timers<T> {
    fn default() -> Self {
        Timers {
            heap: BinaryHeap::new(),
            slots: Vec::new(),
            free: Vec::new(),
        }
    }
}

impl<T: Timed> Timers<T> {
    /// Starts tracking `t`, first due at `due`.
    pub fn track(&mut self, t: &Rc<T>, due: u64) {
        if t.timer_slot().get() != UNTRACKED {
            self.schedule(t, due);
            return;
        }
        let slot = match self.free.pop() {
            Some(s) => {
                self.slots[s as usize] = Some(t.clone());
                s
            }
            None => {
                self.slots.push(Some(t.clone()));
                (self.slots.len() - 1) as u32
            }
        };
        t.timer_slot().set(slot);
        t.next_due().set(NOT_DUE);
        self.schedule(t, due);
    }

    /// Stops tracking `t` (its entries are dropped when they pop).
    pub fn untrack(&mut self, t: &T) {
        let slot = t.timer_slot().replace(UNTRACKED);
        t.next_due().set(NOT_DUE);
        if let Some(cell) = self.slots.get_mut(slot as usize) {
            if cell.as_ref().is_some_and(|held| held.id() == t.id()) {
                *cell = None;
                self.free.push(slot);
            }
        }
        // An empty shard gives its memory back (stale entries included).
        if self.free.len() == self.slots.len() {
            self.slots.clear();
            self.free.clear();
            self.heap.clear();
        }
    }

    /// Makes `t` due at `due` at the latest: a later time than its live entry's
    /// changes nothing (that entry will look again), an earlier one pushes an entry.
    pub fn schedule(&mut self, t: &T, due: u64) {
        let slot = t.timer_slot().get();
        if slot == UNTRACKED || due >= t.next_due().get() {
            return;
        }
        t.next_due().set(due);
        self.heap.push(Reverse((due, slot, t.id())));
    }

    /// The next tracked subscriber due at or before `now`, which then has no live
    /// entry (schedule it again to keep it tracked for a later time).
    pub fn pop_due(&mut self, now: u64) -> Option<Rc<T>> {
        while let Some(&Reverse((due, slot, id))) = self.heap.peek() {
            if due > now {
                return None;
            }
            self.heap.pop();
            let Some(Some(t)) = self.slots.get(slot as usize) else {
                continue;
            };
            if t.id() != id || t.next_due().get() != due {
                continue;
            }
            t.next_due().set(NOT_DUE);
            return Some(t.clone());
        }
        None
    }

    /// When the next entry is due ([`NOT_DUE`] if none; it may be stale, which only
    /// makes a look early).
    pub fn next_due(&self) -> u64 {
        self.heap
            .peek()
            .map_or(NOT_DUE, |Reverse((due, _, _))| *due)
    }

    /// Subscribers tracked.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    /// Heap entries, live and stale.
    #[cfg(test)]
    fn entries(&self) -> usize {
        self.heap.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Sub {
        id: u64,
        slot: Cell<u32>,
        due: Cell<u64>,
    }

    impl Timed for Sub {
        fn id(&self) -> u64 {
            self.id
        }
        fn timer_slot(&self) -> &Cell<u32> {
            &self.slot
        }
        fn next_due(&self) -> &Cell<u64> {
            &self.due
        }
    }

    fn sub(id: u64) -> Rc<Sub> {
        Rc::new(Sub {
            id,
            slot: Cell::new(UNTRACKED),
            due: Cell::new(NOT_DUE),
        })
    }

    fn drain(t: &mut Timers<Sub>, now: u64) -> Vec<u64> {
        std::iter::from_fn(|| t.pop_due(now).map(|s| s.id)).collect()
    }

    #[test]
    fn only_what_is_due_pops_in_deadline_order() {
        let mut t = Timers::default();
        let subs: Vec<Rc<Sub>> = (0..5).map(sub).collect();
        for (s, due) in subs.iter().zip([50, 10, 40, 20, 30]) {
            t.track(s, due);
        }
        assert_eq!(drain(&mut t, 5), Vec::<u64>::new());
        assert_eq!(drain(&mut t, 25), [1, 3]);
        assert_eq!(drain(&mut t, 100), [4, 2, 0]);
        // Popped: no live entry until scheduled again.
        assert_eq!(subs[1].due.get(), NOT_DUE);
        t.schedule(&subs[1], 200);
        assert_eq!(drain(&mut t, 199), Vec::<u64>::new());
        assert_eq!(drain(&mut t, 200), [1]);
    }

    #[test]
    fn an_earlier_deadline_wins_and_a_later_one_waits_for_the_entry() {
        let mut t = Timers::default();
        let a = sub(7);
        t.track(&a, 100);
        t.schedule(&a, 30);
        t.schedule(&a, 60);
        assert_eq!(drain(&mut t, 40), [7], "the earlier time");
        // The stale entry at 100 never surfaces on its own.
        assert_eq!(drain(&mut t, 1_000), Vec::<u64>::new());
        assert_eq!(t.entries(), 0);
    }

    #[test]
    fn untracked_subscribers_never_pop_and_their_slot_is_reused_safely() {
        let mut t = Timers::default();
        let (a, b) = (sub(1), sub(2));
        t.track(&a, 10);
        t.track(&b, 20);
        t.untrack(&a);
        // A newcomer takes a's slot; a's old entry must not pop it early.
        let c = sub(3);
        t.track(&c, 50);
        assert_eq!(c.slot.get(), 0);
        assert_eq!(drain(&mut t, 30), [2]);
        assert_eq!(drain(&mut t, 50), [3]);
        assert_eq!(t.len(), 2);
        t.untrack(&b);
        t.untrack(&c);
        assert_eq!(
            (t.len(), t.entries()),
            (0, 0),
            "an empty shard holds nothing"
        );
        // Scheduling an untracked subscriber does nothing.
        t.schedule(&a, 1);
        assert_eq!(drain(&mut t, 100), Vec::<u64>::new());
    }

    #[test]
    fn removal_is_constant_time_whatever_the_population() {
        // Tracking, then untracking in any order, leaves every slot true.
        let mut t = Timers::default();
        let subs: Vec<Rc<Sub>> = (0..1_000).map(sub).collect();
        for (i, s) in subs.iter().enumerate() {
            t.track(s, 1_000 + i as u64);
        }
        for s in subs.iter().step_by(3) {
            t.untrack(s);
        }
        let left: Vec<u64> = drain(&mut t, u64::MAX - 1);
        let expected: Vec<u64> = (0..1_000).filter(|i| i % 3 != 0).collect();
        assert_eq!(left, expected);
    }
}
