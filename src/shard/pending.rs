//! A table of requests that wait for answers from other shards or the bridge:
//! publishes waiting for their receipts, scrapes waiting for the other shards'
//! counters. One generic [`Pending`] serves both.
//!
//! Each entry counts the answers still to come and folds each one into a value
//! as it arrives; the waiting task is woken when the last one is in, when the
//! request fails, or (by [`Pending::wait`]'s caller) at its deadline. Owns only the
//! table: what an answer means is its caller's business. Shard-local (`RefCell`),
//! never held across an await, no I/O.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::task::{Poll, Waker};
use std::time::Duration;

/// One request's answers so far.
struct Waiting<T> {
    /// Answers still to come.
    remaining: usize,
    /// Answers in so far.
    answered: usize,
    value: T,
    failed: bool,
    waker: Option<Waker>,
}

/// What a wait ended with.
#[derive(Debug, PartialEq, Eq)]
pub struct Settled<T> {
    /// Every answer folded in so far.
    pub value: T,
    /// All answers came and none failed; false after a failure or the deadline.
    pub complete: bool,
}

/// Requests by id, each waiting for a number of answers.
pub struct Pending<T> {
    next: Cell<u64>,
    table: RefCell<HashMap<u64, Waiting<T>>>,
}

impl<T> Default for Pending<T> {
    fn default() -> Self {
        Pending {
            next: Cell::new(0),
            table: RefCell::new(HashMap::new()),
        }
    }
}

impl<T> Pending<T> {
    /// Registers a request that waits for `remaining` answers, starting from
    /// `value`; returns its id.
    pub fn open(&self, remaining: usize, value: T) -> u64 {
        let id = self.next.get();
        self.next.set(id.wrapping_add(1));
        self.table.borrow_mut().insert(
            id,
            Waiting {
                remaining,
                answered: 0,
                value,
                failed: false,
                waker: None,
            },
        );
        id
    }

    /// Folds one answer into request `id`; the last one wakes its waiter. An answer
    /// for a request that is gone (timed out, cancelled) is dropped.
    pub fn answer(&self, id: u64, fold: impl FnOnce(&mut T)) {
        self.answer_many(id, 1, fold);
    }

    /// Folds `n` answers that came together into request `id`.
    pub fn answer_many(&self, id: u64, n: usize, fold: impl FnOnce(&mut T)) {
        let mut table = self.table.borrow_mut();
        if let Some(w) = table.get_mut(&id) {
            fold(&mut w.value);
            w.answered = w.answered.saturating_add(n);
            w.remaining = w.remaining.saturating_sub(n);
            if w.remaining == 0 {
                wake(w);
            }
        }
    }

    /// Sets how many answers request `id` waits for in all, once that is known
    /// (answers may come before it is: they count). Opened with `usize::MAX` until
    /// then.
    pub fn expect(&self, id: u64, total: usize) {
        let mut table = self.table.borrow_mut();
        if let Some(w) = table.get_mut(&id) {
            w.remaining = total.saturating_sub(w.answered);
            if w.remaining == 0 {
                wake(w);
            }
        }
    }

    /// Folds the one answer that settles request `id` whatever it still waited for.
    pub fn finish(&self, id: u64, fold: impl FnOnce(&mut T)) {
        let mut table = self.table.borrow_mut();
        if let Some(w) = table.get_mut(&id) {
            fold(&mut w.value);
            w.remaining = 0;
            wake(w);
        }
    }

    /// Ends request `id` as failed; its waiter gets `complete: false`.
    pub fn fail(&self, id: u64) {
        let mut table = self.table.borrow_mut();
        if let Some(w) = table.get_mut(&id) {
            w.failed = true;
            wake(w);
        }
    }

    /// Forgets request `id` (its sends failed, nobody will wait).
    pub fn cancel(&self, id: u64) {
        self.table.borrow_mut().remove(&id);
    }

    /// Ready once request `id` has all its answers or failed (or is gone).
    pub fn poll_settled(&self, id: u64, waker: &Waker) -> Poll<()> {
        let mut table = self.table.borrow_mut();
        match table.get_mut(&id) {
            Some(w) if !w.failed && w.remaining > 0 => {
                w.waker = Some(waker.clone());
                Poll::Pending
            }
            _ => Poll::Ready(()),
        }
    }

    /// Takes request `id` out of the table with what it has: complete when every
    /// answer came and none failed.
    pub fn take(&self, id: u64) -> Option<Settled<T>> {
        let w = self.table.borrow_mut().remove(&id)?;
        Some(Settled {
            complete: w.remaining == 0 && !w.failed,
            value: w.value,
        })
    }

    /// Waits for request `id` to settle, at most `limit`, then takes it.
    pub async fn wait(&self, id: u64, limit: Duration) -> Option<Settled<T>> {
        let settled = futures_lite::future::poll_fn(|cx| self.poll_settled(id, cx.waker()));
        let _ = glommio::timer::timeout(limit, async {
            settled.await;
            Ok(())
        })
        .await;
        self.take(id)
    }

    /// Requests waiting now.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.table.borrow().len()
    }
}

fn wake<T>(w: &mut Waiting<T>) {
    if let Some(waker) = w.waker.take() {
        waker.wake();
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::Wake;

    /// A waker that counts its wakes (the shard's other tests use it too).
    pub(in crate::shard) struct Count(pub(in crate::shard) AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn waker() -> (Arc<Count>, Waker) {
        let c = Arc::new(Count(AtomicUsize::new(0)));
        (c.clone(), Waker::from(c))
    }

    #[test]
    fn answers_before_the_expected_total_is_known_count_toward_it() {
        let p: Pending<Vec<u32>> = Pending::default();
        let id = p.open(usize::MAX, Vec::new());
        let (woken, w) = waker();
        p.answer_many(id, 2, |v| v.extend([1, 2]));
        assert!(p.poll_settled(id, &w).is_pending());
        p.expect(id, 3);
        assert!(p.poll_settled(id, &w).is_pending());
        p.answer(id, |v| v.push(3));
        assert_eq!(woken.0.load(Ordering::SeqCst), 1);
        let s = p.take(id).expect("settled");
        assert!(s.complete);
        assert_eq!(s.value, [1, 2, 3]);
        // Everything came before the total was known: settled at once.
        let id = p.open(usize::MAX, Vec::new());
        p.answer(id, |v| v.push(9));
        p.expect(id, 1);
        assert!(p.poll_settled(id, &w).is_ready());
        assert!(p.take(id).expect("settled").complete);
        // Nothing to wait for.
        let id = p.open(usize::MAX, Vec::new());
        p.expect(id, 0);
        assert!(p.poll_settled(id, &w).is_ready());
    }

    #[test]
    fn answers_fold_in_and_the_last_one_wakes() {
        let p: Pending<Vec<u32>> = Pending::default();
        let id = p.open(2, Vec::new());
        let (woken, w) = waker();
        assert!(p.poll_settled(id, &w).is_pending());
        p.answer(id, |v| v.push(1));
        assert_eq!(
            woken.0.load(Ordering::SeqCst),
            0,
            "one answer still to come"
        );
        assert!(p.poll_settled(id, &w).is_pending());
        p.answer(id, |v| v.push(2));
        assert_eq!(woken.0.load(Ordering::SeqCst), 1);
        assert!(p.poll_settled(id, &w).is_ready());
        let s = p.take(id).unwrap();
        assert_eq!(s.value, vec![1, 2]);
        assert!(s.complete);
        assert_eq!(p.len(), 0);
    }

    #[test]
    fn a_failure_settles_incomplete_and_late_answers_are_dropped() {
        let p: Pending<u32> = Pending::default();
        let id = p.open(3, 0);
        let (woken, w) = waker();
        assert!(p.poll_settled(id, &w).is_pending());
        p.answer(id, |v| *v += 1);
        p.fail(id);
        assert_eq!(woken.0.load(Ordering::SeqCst), 1);
        assert!(p.poll_settled(id, &w).is_ready());
        assert_eq!(
            p.take(id),
            Some(Settled {
                value: 1,
                complete: false
            })
        );
        p.answer(id, |v| *v += 1);
        assert!(
            p.take(id).is_none(),
            "an answer after the end changes nothing"
        );
    }

    #[test]
    fn finish_settles_whatever_was_left() {
        let p: Pending<u32> = Pending::default();
        let id = p.open(5, 0);
        p.finish(id, |v| *v = 7);
        assert_eq!(
            p.take(id),
            Some(Settled {
                value: 7,
                complete: true
            })
        );
    }

    #[test]
    fn ids_are_distinct_and_cancel_forgets() {
        let p: Pending<()> = Pending::default();
        let a = p.open(1, ());
        let b = p.open(1, ());
        assert_ne!(a, b);
        p.cancel(a);
        assert!(p.take(a).is_none());
        assert_eq!(p.len(), 1);
        let (_, w) = waker();
        assert!(
            p.poll_settled(a, &w).is_ready(),
            "a gone request does not hang"
        );
    }

    #[test]
    fn a_wait_past_its_deadline_returns_what_came() {
        glommio::LocalExecutor::default().run(async {
            let p: Pending<u32> = Pending::default();
            let id = p.open(2, 0);
            p.answer(id, |v| *v += 5);
            let s = p.wait(id, Duration::from_millis(20)).await.unwrap();
            assert_eq!(s.value, 5);
            assert!(!s.complete);
            let id = p.open(1, 0);
            p.answer(id, |v| *v += 1);
            let s = p.wait(id, Duration::from_secs(5)).await.unwrap();
            assert!(s.complete);
        });
    }
}
