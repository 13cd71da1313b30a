//! The `resume` kind's check, pure: which sockets drop when, each socket's stream
//! continuity frame by frame, and its final position against the publisher's receipts.
//!
//! Rule ("no silent loss"): a socket's position is the last event, welcome or resync it
//! saw. The first welcome sets it; a resync sets it (the client reloads state, so what
//! came before is covered); every event must be exactly position + 1 in the same epoch.
//! Skipping ahead, or a new epoch without a resync, is a silent loss; an event at or below
//! the position is a duplicate. A resumed socket keeps its position across the reconnect
//! (`since=` it), so the replay must continue it with no gap. At the end every socket must
//! stand at its session's last accepted event (from the `202` receipts), or past it.

use serde::{Deserialize, Serialize};

use crate::event::{Pos, ServerFrame};

/// What the resume check counted, summed over sockets, workers and processes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResumeCounts {
    /// Sockets dropped with a reset (no close frame).
    pub drops_reset: u64,
    /// Sockets dropped with a close frame (not waiting for the server's).
    pub drops_close: u64,
    /// Reconnects with `since=` that got their welcome.
    pub resumes: u64,
    /// Reconnect attempts that failed (each also counts as an error, and is retried).
    pub resume_failed: u64,
    /// Events received after a resume with seq ≤ the welcome's: the replay.
    pub replayed: u64,
    /// Resync frames received, right after a resume's welcome or at any other time.
    pub resyncs: u64,
    /// Times continuity broke: a seq past position + 1, or a new epoch, with no resync.
    pub gaps: u64,
    /// Events those gaps skipped (a new epoch without a resync counts 1: at least one).
    pub gap_events: u64,
    /// Events at or below the socket's position in the same epoch.
    pub duplicates: u64,
    /// Connections lost without a drop of ours (node killed), reconnected to another node
    /// (`failover = true`).
    #[serde(default)]
    pub failovers: u64,
    /// Drops that came back fresh, without `since` (`resume_share` below 1): the socket
    /// starts over at that welcome's position.
    #[serde(default)]
    pub fresh: u64,
}

impl ResumeCounts {
    pub fn merge(&mut self, o: &ResumeCounts) {
        self.drops_reset += o.drops_reset;
        self.drops_close += o.drops_close;
        self.resumes += o.resumes;
        self.resume_failed += o.resume_failed;
        self.replayed += o.replayed;
        self.resyncs += o.resyncs;
        self.gaps += o.gaps;
        self.gap_events += o.gap_events;
        self.duplicates += o.duplicates;
        self.failovers += o.failovers;
        self.fresh += o.fresh;
    }
}

/// How one event frame stood against the socket's position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// position + 1, live.
    Live,
    /// position + 1, part of a resume's replay (seq ≤ the welcome's).
    Replayed,
    /// At or below the position: not applied.
    Duplicate,
    /// Past position + 1 or on another epoch, with no resync: a silent loss before it.
    AfterGap,
}

/// One socket's stream position and counters, across its reconnects.
#[derive(Debug, Clone)]
pub struct Tracker {
    /// The last event (or welcome/resync) the socket saw: what it resumes `since`.
    pub pos: Pos,
    /// After a resume: the welcome's position; events up to it are the replay.
    replay_to: Option<Pos>,
    pub counts: ResumeCounts,
}

impl Tracker {
    /// A socket whose first welcome announced `welcome`.
    pub fn new(welcome: Pos) -> Self {
        Tracker {
            pos: welcome,
            replay_to: None,
            counts: ResumeCounts::default(),
        }
    }

    /// A reconnect `since` [`Tracker::pos`] got this welcome. The position stays: what
    /// follows (a replay or a resync) must continue it.
    pub fn resumed(&mut self, welcome: Pos) {
        self.counts.resumes += 1;
        self.replay_to =
            (welcome.epoch == self.pos.epoch && welcome.seq > self.pos.seq).then_some(welcome);
    }

    /// A reconnect without `since` got this welcome: the socket starts over there, as a
    /// client that lost its place does; what it missed meanwhile is not a loss.
    pub fn fresh(&mut self, welcome: Pos) {
        self.counts.fresh += 1;
        self.pos = welcome;
        self.replay_to = None;
    }

    /// Applies one server text frame; `Some` for events.
    pub fn frame(&mut self, f: ServerFrame) -> Option<Seen> {
        match f {
            ServerFrame::Event(p) => Some(self.event(p)),
            ServerFrame::Resync(p) => {
                self.counts.resyncs += 1;
                self.pos = p;
                self.replay_to = None;
                None
            }
            // A welcome only comes first on a connection, where `open` reads it.
            ServerFrame::Welcome(_) | ServerFrame::Other => None,
        }
    }

    fn event(&mut self, p: Pos) -> Seen {
        let same = p.epoch == self.pos.epoch;
        if same && p.seq <= self.pos.seq {
            self.counts.duplicates += 1;
            return Seen::Duplicate;
        }
        let gap = if !same {
            Some(1)
        } else if p.seq != self.pos.seq + 1 {
            Some(p.seq - self.pos.seq - 1)
        } else {
            None
        };
        self.pos = p;
        let replayed = match self.replay_to {
            Some(w) if w.epoch == p.epoch && p.seq <= w.seq => {
                self.counts.replayed += 1;
                if p.seq == w.seq {
                    self.replay_to = None;
                }
                true
            }
            _ => {
                self.replay_to = None;
                false
            }
        };
        match gap {
            Some(missed) => {
                self.counts.gaps += 1;
                self.counts.gap_events += missed;
                Seen::AfterGap
            }
            None if replayed => Seen::Replayed,
            None => Seen::Live,
        }
    }
}

/// Where one socket ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResumeTally {
    pub session: u32,
    pub pos: Pos,
}

/// The later of two receipt positions of one session: the higher seq in one epoch; on
/// another epoch (a node restarted mid-run) the one seen last.
pub fn later(a: Pos, b: Pos) -> Pos {
    if a.epoch == b.epoch && a.seq >= b.seq {
        a
    } else {
        b
    }
}

/// Folds one process's last receipts per session into another's (only the publishing
/// process has any; `seq` 0 means none).
pub fn merge_last(into: &mut Vec<Pos>, other: &[Pos]) {
    if into.len() < other.len() {
        into.resize(other.len(), Pos::default());
    }
    for (a, b) in into.iter_mut().zip(other) {
        if b.seq > 0 {
            *a = if a.seq == 0 { *b } else { later(*a, *b) };
        }
    }
}

/// The end check: (events accepted past a socket's final position, sockets that ended on
/// another epoch than their session's receipts). A socket on another epoch counts every
/// accepted event of the receipts' epoch as missing: it never saw them, and no resync
/// moved it there.
pub fn tail_check(last: &[Pos], sockets: &[ResumeTally]) -> (u64, u64) {
    let mut missing = 0;
    let mut mismatched = 0;
    for s in sockets {
        let Some(want) = last.get(s.session as usize).copied() else {
            continue;
        };
        if want.seq == 0 {
            continue;
        }
        if want.epoch != s.pos.epoch {
            mismatched += 1;
            missing += want.seq;
        } else {
            missing += want.seq.saturating_sub(s.pos.seq);
        }
    }
    (missing, mismatched)
}

fn mix(mut z: u64) -> u64 {
    // splitmix64's finaliser.
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A planned drop: nanoseconds into its second, and whether it is a reset (else a close frame).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlannedDrop {
    pub offset_ns: u64,
    pub reset: bool,
}

/// Whether socket `g` drops in second `k` of the run: each socket, each second, with
/// probability `fraction`, at a pseudo-random moment of that second; half the drops are
/// resets. Deterministic in (`seed`, `g`, `k`), so every process of a run agrees.
pub fn drop_in_second(seed: u64, g: u64, k: u64, fraction: f64) -> Option<PlannedDrop> {
    if fraction <= 0.0 {
        return None;
    }
    let h = mix(seed ^ mix(g.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ k.rotate_left(32)));
    let u = (h >> 11) as f64 / (1u64 << 53) as f64;
    if u >= fraction {
        return None;
    }
    let h2 = mix(h);
    Some(PlannedDrop {
        offset_ns: h2 % 1_000_000_000,
        reset: h2 >> 63 == 1,
    })
}

/// Whether socket `g`'s drop at `at_ns` comes back with `since=`: with probability
/// `share`, deterministic in (`seed`, `g`, `at_ns`).
pub fn resumes(seed: u64, g: u64, at_ns: u64, share: f64) -> bool {
    if share >= 1.0 {
        return true;
    }
    let h = mix(seed ^ 0x5EED_F2E5 ^ mix(g ^ at_ns.rotate_left(17)));
    ((h >> 11) as f64 / (1u64 << 53) as f64) < share
}

/// Socket `g`'s next drop at or after `from` (UNIX ns) and before `end_ns`, the scheduled
/// end of a run that started at `start_ns`: (when, which), from [`drop_in_second`] over
/// the seconds of the run.
pub fn next_drop(
    seed: u64,
    g: u64,
    fraction: f64,
    start_ns: u64,
    end_ns: u64,
    from: u64,
) -> Option<(u64, PlannedDrop)> {
    let k0 = from.saturating_sub(start_ns) / 1_000_000_000;
    (k0..)
        .map(|k| (k, start_ns + k * 1_000_000_000))
        .take_while(|(_, second)| *second < end_ns)
        .filter_map(|(k, second)| {
            drop_in_second(seed, g, k, fraction).map(|d| (second + d.offset_ns, d))
        })
        .find(|(at, _)| *at >= from && *at < end_ns)
}

#[cfg(test)]
mod tests {
    use super::*;

    const E: u64 = 0xabc;

    fn at(seq: u64) -> Pos {
        Pos { epoch: E, seq }
    }

    fn ev(seq: u64) -> ServerFrame {
        ServerFrame::Event(at(seq))
    }

    #[test]
    fn a_continuous_stream_is_live() {
        let mut t = Tracker::new(at(0));
        for s in 1..=5 {
            assert_eq!(t.frame(ev(s)), Some(Seen::Live));
        }
        assert_eq!(t.pos, at(5));
        assert_eq!(t.counts, ResumeCounts::default());
    }

    #[test]
    fn a_resume_replays_then_goes_live() {
        let mut t = Tracker::new(at(3));
        t.frame(ev(4));
        // Dropped at 4; the session reached 7 meanwhile.
        t.resumed(at(7));
        assert_eq!(t.frame(ev(5)), Some(Seen::Replayed));
        assert_eq!(t.frame(ev(6)), Some(Seen::Replayed));
        assert_eq!(t.frame(ev(7)), Some(Seen::Replayed));
        assert_eq!(t.frame(ev(8)), Some(Seen::Live));
        assert_eq!(t.counts.resumes, 1);
        assert_eq!(t.counts.replayed, 3);
        assert_eq!(t.counts.gaps, 0);
        // Up to date on return: nothing replayed.
        t.resumed(at(8));
        assert_eq!(t.frame(ev(9)), Some(Seen::Live));
        assert_eq!(t.counts.replayed, 3);
    }

    #[test]
    fn a_fresh_reconnect_starts_over_at_its_welcome() {
        let mut t = Tracker::new(at(3));
        t.frame(ev(4));
        // Dropped at 4, back without `since` when the session stood at 9: 5..=9 are not
        // owed, 10 is live.
        t.fresh(at(9));
        assert_eq!(t.frame(ev(10)), Some(Seen::Live));
        assert_eq!(t.frame(ev(10)), Some(Seen::Duplicate));
        assert_eq!(t.counts.fresh, 1);
        assert_eq!(t.counts.resumes, 0);
        assert_eq!(t.counts.gaps, 0);
    }

    #[test]
    fn resume_share_splits_the_drops() {
        let n = 20_000u64;
        let back = (0..n)
            .filter(|g| resumes(42, *g, 1_000_000_000 + g * 7, 0.5))
            .count() as f64
            / n as f64;
        assert!((back - 0.5).abs() < 0.02, "{back}");
        assert!((0..100).all(|g| resumes(1, g, g, 1.0)));
        assert!(!(0..100).any(|g| resumes(1, g, g, 0.0)));
        assert_eq!(resumes(3, 4, 5, 0.5), resumes(3, 4, 5, 0.5));
    }

    #[test]
    fn a_resync_covers_what_was_missed() {
        let mut t = Tracker::new(at(2));
        t.resumed(at(900));
        assert_eq!(t.frame(ServerFrame::Resync(at(900))), None);
        assert_eq!(t.frame(ev(901)), Some(Seen::Live));
        // A resync at any time, even onto a new epoch.
        let other = Pos { epoch: 7, seq: 40 };
        t.frame(ServerFrame::Resync(other));
        assert_eq!(
            t.frame(ServerFrame::Event(Pos { epoch: 7, seq: 41 })),
            Some(Seen::Live)
        );
        assert_eq!(t.counts.resyncs, 2);
        assert_eq!((t.counts.gaps, t.counts.duplicates), (0, 0));
    }

    #[test]
    fn gaps_epoch_jumps_and_duplicates_are_counted() {
        let mut t = Tracker::new(at(0));
        t.frame(ev(1));
        assert_eq!(t.frame(ev(4)), Some(Seen::AfterGap));
        assert_eq!(t.counts.gap_events, 2);
        assert_eq!(t.frame(ev(4)), Some(Seen::Duplicate));
        assert_eq!(t.frame(ev(2)), Some(Seen::Duplicate));
        assert_eq!(t.pos, at(4));
        assert_eq!(
            t.frame(ServerFrame::Event(Pos { epoch: 1, seq: 1 })),
            Some(Seen::AfterGap)
        );
        assert_eq!(t.counts.gaps, 2);
        assert_eq!(t.counts.gap_events, 3);
        assert_eq!(t.counts.duplicates, 2);
        // A replay that skips one is a gap; the rest of it still counts as replayed.
        let mut t = Tracker::new(at(3));
        t.resumed(at(6));
        assert_eq!(t.frame(ev(5)), Some(Seen::AfterGap));
        assert_eq!(t.frame(ev(6)), Some(Seen::Replayed));
        assert_eq!(t.frame(ev(7)), Some(Seen::Live));
        assert_eq!((t.counts.replayed, t.counts.gap_events), (2, 1));
    }

    #[test]
    fn the_end_check_compares_with_the_receipts() {
        let last = vec![at(10), Pos::default(), at(5)];
        let socks = [
            ResumeTally {
                session: 0,
                pos: at(10),
            },
            ResumeTally {
                session: 0,
                pos: at(8),
            },
            ResumeTally {
                session: 1,
                pos: at(0),
            },
            ResumeTally {
                session: 2,
                pos: Pos { epoch: 1, seq: 9 },
            },
            ResumeTally {
                session: 2,
                pos: at(6),
            },
        ];
        assert_eq!(tail_check(&last, &socks), (2 + 5, 1));
    }

    #[test]
    fn receipts_merge_to_the_latest_position() {
        let mut a = vec![at(3), Pos::default()];
        merge_last(&mut a, &[at(2), at(9), at(1)]);
        assert_eq!(a, vec![at(3), at(9), at(1)]);
        assert_eq!(
            later(at(3), Pos { epoch: 1, seq: 1 }),
            Pos { epoch: 1, seq: 1 }
        );
    }

    #[test]
    fn drops_hit_the_fraction_and_spread_over_the_second() {
        let n = 20_000u64;
        let picked: Vec<PlannedDrop> = (0..n)
            .filter_map(|g| drop_in_second(42, g, 3, 0.1))
            .collect();
        let share = picked.len() as f64 / n as f64;
        assert!((share - 0.1).abs() < 0.01, "{share}");
        assert!(picked.iter().all(|d| d.offset_ns < 1_000_000_000));
        let resets = picked.iter().filter(|d| d.reset).count() as f64 / picked.len() as f64;
        assert!((resets - 0.5).abs() < 0.05, "{resets}");
        let early = picked.iter().filter(|d| d.offset_ns < 500_000_000).count() as f64
            / picked.len() as f64;
        assert!((early - 0.5).abs() < 0.05, "{early}");
        // Another second picks other sockets; the same inputs the same ones.
        let again: Vec<u64> = (0..n)
            .filter(|g| drop_in_second(42, *g, 3, 0.1).is_some())
            .collect();
        let next: Vec<u64> = (0..n)
            .filter(|g| drop_in_second(42, *g, 4, 0.1).is_some())
            .collect();
        assert_eq!(again.len(), picked.len());
        assert_ne!(again, next);
        assert_eq!(drop_in_second(42, 1, 1, 0.0), None);
        assert!((0..100).all(|g| drop_in_second(1, g, 0, 1.0).is_some()));
    }

    #[test]
    fn next_drop_walks_the_seconds_of_the_run_in_order() {
        let start = 1_000_000_000_000u64;
        let end = start + 10_000_000_000;
        // Every second drops at fraction 1: the next drop is in `from`'s second or the next.
        let (at, d) = next_drop(7, 3, 1.0, start, end, start).expect("a drop");
        let first = drop_in_second(7, 3, 0, 1.0).expect("second 0");
        assert_eq!((at, d), (start + first.offset_ns, first));
        let (later, _) = next_drop(7, 3, 1.0, start, end, at + 1).expect("another");
        assert!(
            later > at && later < start + 2_000_000_000,
            "{}",
            later - start
        );
        // Walking from each drop visits one drop per second, all before the end.
        let mut from = start;
        let mut seen = 0;
        while let Some((at, _)) = next_drop(7, 3, 1.0, start, end, from) {
            assert!(at >= from && at < end);
            from = at + 1;
            seen += 1;
        }
        assert_eq!(seen, 10);
        assert_eq!(
            next_drop(7, 3, 1.0, start, end, end),
            None,
            "none past the end"
        );
        assert_eq!(
            next_drop(7, 3, 0.0, start, end, start),
            None,
            "fraction 0 never drops"
        );
    }
}
