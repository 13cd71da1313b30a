//! Closing many subscribers without a stampede: on a drain (SIGTERM) and when
//! the operator switches a transport off (`RELAY_TRANSPORTS` on SIGHUP), each is
//! closed with 1012, in random order, spread over a window, so the clients come
//! back (elsewhere, or on another transport) gradually, not in one burst.
//!
//! Owns only the schedule; closing is the subscriber task's (`request_close`).
//! Runs on the shard's executor, sleeping with glommio's timer between steps.

use std::rc::Rc;
use std::time::Duration;

use super::registry::SocketState;
use super::tasks::spawn_guarded;
use super::Shard;
use crate::subscribe::Transports;
use crate::ws::close::Disconnect;

/// Steps the closes are spread over.
const STEPS: u32 = 20;

impl Shard {
    /// Closes, spread over the drain window, every subscriber whose transport
    /// `offered` no longer includes.
    pub(super) fn retire_transports(self: &Rc<Self>, offered: Transports) {
        let doomed: Vec<Rc<SocketState>> = self
            .registry
            .borrow()
            .welcomed()
            .filter(|s| !offered.allows(s.transport))
            .cloned()
            .collect();
        if doomed.is_empty() {
            return;
        }
        let window = self.settings().live.limits.drain_timeout.mul_f64(0.8);
        tracing::info!(
            shard = self.id,
            subscribers = doomed.len(),
            ?window,
            "transport switched off; moving its subscribers"
        );
        spawn_guarded(self.id, "retire", self.clone().close_spread(doomed, window));
    }

    /// Closes `doomed` with 1012 in random order, in [`STEPS`] steps spread over
    /// `window` (all at once when it is zero). Returns when the last is asked.
    pub(super) async fn close_spread(
        self: Rc<Self>,
        mut doomed: Vec<Rc<SocketState>>,
        window: Duration,
    ) {
        if doomed.is_empty() {
            return;
        }
        shuffle(&mut doomed, crate::clock::unix_now_ns() ^ self.id as u64);
        let step = window / STEPS;
        let per_step = doomed.len().div_ceil(STEPS as usize);
        for (i, chunk) in doomed.chunks(per_step).enumerate() {
            if i > 0 && !step.is_zero() {
                glommio::timer::sleep(step).await;
            }
            for s in chunk {
                s.request_close(Disconnect::Draining);
            }
        }
    }
}

/// Fisher–Yates with a small xorshift: the order needs to be unpredictable
/// between runs, not secret.
fn shuffle<T>(items: &mut [T], seed: u64) {
    let mut x = seed | 1;
    for i in (1..items.len()).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        items.swap(i, (x % (i as u64 + 1)) as usize);
    }
}

#[cfg(test)]
mod tests {
    use super::shuffle;

    #[test]
    fn a_shuffle_keeps_every_item_and_moves_some() {
        let mut v: Vec<u32> = (0..100).collect();
        shuffle(&mut v, 42);
        let mut sorted = v.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..100).collect::<Vec<_>>());
        assert_ne!(v, sorted);
    }
}
