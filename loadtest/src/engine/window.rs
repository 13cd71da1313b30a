//! When a receiving socket reads and when it stops, as pure decisions over instants the
//! caller reads: a receiver reads until the scheduled end, then polls while the publisher
//! is still busy or frames still arrive, and stops after `drain` of silence or at a hard
//! cap past the end.
//!
//! Owns: the receive window and its bounds ([`DRAIN_CAP`], [`DONE_POLL`]), and the
//! UNIX-ns → tokio-instant conversion. May not touch sockets or measurements; only
//! [`instant_at`] and [`ReceiveWindow::new`] read the clock.

use std::time::Duration;

use tokio::time::Instant;

use crate::event::unix_ns;

/// Longest a receiver waits past `duration + drain` for a node that is still delivering.
pub(super) const DRAIN_CAP: Duration = Duration::from_secs(60);
/// How often receivers re-check "publishing is over and I have everything".
pub(super) const DONE_POLL: Duration = Duration::from_millis(50);

/// Tokio instant for a UNIX-ns time (now, if it is in the past).
pub(super) fn instant_at(ns: u64) -> Instant {
    let now_ns = unix_ns();
    let now = Instant::now();
    now + Duration::from_nanos(ns.saturating_sub(now_ns))
}

/// The bounds of one receiving socket's run.
#[derive(Debug, Clone, Copy)]
pub(super) struct ReceiveWindow {
    /// The scheduled end of publishing: before it, a receiver just reads.
    pub publish_end: Instant,
    /// Past it the receiver stops whatever the publisher is doing: end + drain + [`DRAIN_CAP`].
    pub hard_end: Instant,
    /// Silence after the end (and after the publisher is done) that ends the read.
    pub drain: Duration,
}

/// What a receiver does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Step {
    /// Stop reading: the window is over.
    Stop,
    /// Read until this instant, then decide again.
    ReadUntil(Instant),
}

impl ReceiveWindow {
    /// The window of a run that started at `start_ns` (UNIX ns).
    pub fn new(start_ns: u64, duration_ns: u64, drain: Duration) -> Self {
        let end_ns = start_ns.saturating_add(duration_ns);
        let drain_ns = u64::try_from(drain.as_nanos()).unwrap_or(u64::MAX);
        ReceiveWindow {
            publish_end: instant_at(end_ns),
            hard_end: instant_at(
                end_ns
                    .saturating_add(drain_ns)
                    .saturating_add(DRAIN_CAP.as_nanos() as u64),
            ),
            drain,
        }
    }

    /// At `now`, with the last frame read at `last_frame` (start it at `publish_end`) and
    /// the publisher in this process still sending or not: stop, or read until when.
    pub fn step(&self, now: Instant, last_frame: Instant, publisher_busy: bool) -> Step {
        if now >= self.hard_end {
            return Step::Stop;
        }
        if now >= self.publish_end
            && !publisher_busy
            && now >= last_frame.max(self.publish_end) + self.drain
        {
            return Step::Stop;
        }
        Step::ReadUntil(if now < self.publish_end {
            self.publish_end
        } else {
            (now + DONE_POLL).min(self.hard_end)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn window(t0: Instant) -> ReceiveWindow {
        ReceiveWindow {
            publish_end: t0 + 10 * S,
            hard_end: t0 + 72 * S,
            drain: 2 * S,
        }
    }

    #[test]
    fn before_the_scheduled_end_a_receiver_reads_until_it() {
        let t0 = Instant::now();
        let w = window(t0);
        assert_eq!(
            w.step(t0, w.publish_end, false),
            Step::ReadUntil(t0 + 10 * S)
        );
        assert_eq!(
            w.step(t0 + 9 * S, w.publish_end, true),
            Step::ReadUntil(t0 + 10 * S)
        );
    }

    #[test]
    fn after_the_end_it_polls_until_drain_of_silence() {
        let t0 = Instant::now();
        let w = window(t0);
        let poll = |now| Step::ReadUntil(now + DONE_POLL);
        assert_eq!(w.step(t0 + 11 * S, w.publish_end, false), poll(t0 + 11 * S));
        assert_eq!(w.step(t0 + 12 * S, w.publish_end, false), Step::Stop);
        // A frame at 11 s pushes the stop to 13 s.
        assert_eq!(w.step(t0 + 12 * S, t0 + 11 * S, false), poll(t0 + 12 * S));
        assert_eq!(w.step(t0 + 13 * S, t0 + 11 * S, false), Step::Stop);
    }

    #[test]
    fn a_busy_publisher_is_waited_for_up_to_the_hard_end() {
        let t0 = Instant::now();
        let w = window(t0);
        assert_eq!(
            w.step(t0 + 50 * S, w.publish_end, true),
            Step::ReadUntil(t0 + 50 * S + DONE_POLL)
        );
        // The last poll is cut at the hard end, and at the hard end it stops.
        let near = w.hard_end - Duration::from_millis(10);
        assert_eq!(
            w.step(near, w.publish_end, true),
            Step::ReadUntil(w.hard_end)
        );
        assert_eq!(w.step(w.hard_end, near, true), Step::Stop);
    }

    #[test]
    fn the_hard_end_is_drain_and_the_cap_past_the_scheduled_end() {
        let start = unix_ns();
        let w = ReceiveWindow::new(start, 5_000_000_000, 2 * S);
        let span = w.hard_end - w.publish_end;
        // Each bound converts a UNIX time to an Instant with its own reading of both
        // clocks, so the two can differ by whatever passed (or the wall clock was
        // slewed) between the readings: allow a second, far below the cap.
        assert!(span <= 2 * S + DRAIN_CAP + Duration::from_secs(1));
        assert!(span > 2 * S + DRAIN_CAP - Duration::from_secs(1));
    }
}
