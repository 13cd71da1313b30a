//! The shard's streams ([`History`]): making them (live, or pending until Redis
//! gives their position), looking them up, sockets joining and leaving, the linger
//! of a stream without sockets, and forgetting it.
//!
//! Owns the `History` value and its fields; the other rooms add its other jobs
//! (`budget`, `place`, `reconcile`, `resume`) and use this one, never the
//! reverse. Pure: no I/O, no clock (every call that needs the time takes `now`).

use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::time::{Duration, Instant};

use super::ring::Usage;
use super::session::{SessionStream, STREAM_OVERHEAD};
use crate::config::HistoryConfig;
use crate::stream::StreamPos;

/// Counters the metrics read.
#[derive(Debug, Default, Clone, Copy)]
pub struct HistoryFigures {
    pub bytes: usize,
    pub sessions: usize,
    pub frames: usize,
    /// Streams without sockets forgotten before their linger ended, to keep
    /// history within its memory (since the start).
    pub evicted: u64,
}

/// All streams of one shard.
pub struct History {
    pub(super) config: HistoryConfig,
    /// This shard's share of the node's memory cap.
    pub(super) budget: usize,
    /// Boxed: the map's slack (see [`STREAM_OVERHEAD`]) is then a pointer a slot.
    pub(super) streams: HashMap<Rc<str>, Box<SessionStream>>,
    /// Every retained frame in the order it was added, for the age bound and the
    /// memory cap: the oldest frames of the shard go first, whatever their session.
    /// Entries whose frame a session already dropped are skipped when reached.
    pub(super) order: VecDeque<(Rc<str>, u64)>,
    /// Every stream's frames and bytes (rings, ids and overheads), against `budget`.
    pub(super) used: Usage,
    epoch_salt: u64,
    /// Streams forgotten since the owner last asked (see [`History::take_forgotten`]).
    pub(super) forgotten: Vec<Rc<str>>,
    /// Whether anyone asks for [`History::take_forgotten`] (with Redis: the
    /// unsubscribes); without, forgotten names are not kept.
    report_forgotten: bool,
    /// Streams without sockets, in the order they lost their last one (or were made
    /// without any): `(touched, name)`. An entry whose stream has sockets again, or
    /// a later `touched`, or is gone, is stale and skipped. Sweeps and the memory
    /// cap take from the front, so neither scans the streams.
    pub(super) idle: VecDeque<(Instant, Rc<str>)>,
    /// Idle streams past the history's age that still remember ids, waiting out
    /// the (longer) dedupe window; same order, same staleness rule.
    pub(super) idle_ids: VecDeque<(Instant, Rc<str>)>,
    /// See [`HistoryFigures::evicted`].
    pub(super) evicted: u64,
}

impl History {
    pub fn new(config: HistoryConfig, shards: usize, salt: u64) -> History {
        History {
            budget: config.memory / shards.max(1),
            config,
            streams: HashMap::new(),
            order: VecDeque::new(),
            used: Usage::default(),
            epoch_salt: salt,
            forgotten: Vec::new(),
            report_forgotten: true,
            idle: VecDeque::new(),
            idle_ids: VecDeque::new(),
            evicted: 0,
        }
    }

    /// Stops keeping the names of forgotten streams for
    /// [`History::take_forgotten`] (nobody will ask: no Redis).
    pub fn without_forgotten_report(mut self) -> History {
        self.report_forgotten = false;
        self
    }

    /// Streams were forgotten since the last [`History::take_forgotten`].
    pub fn has_forgotten(&self) -> bool {
        !self.forgotten.is_empty()
    }

    pub fn config(&self) -> &HistoryConfig {
        &self.config
    }

    pub fn figures(&self) -> HistoryFigures {
        HistoryFigures {
            bytes: self.used.bytes,
            sessions: self.streams.len(),
            frames: self.used.frames,
            evicted: self.evicted,
        }
    }

    /// A fresh epoch: unique per node run, shard and stream with overwhelming odds.
    pub fn new_epoch(&mut self) -> u64 {
        self.epoch_salt = self.epoch_salt.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let e = xxhash_rust::xxh3::xxh3_64(&self.epoch_salt.to_le_bytes());
        e.max(1)
    }

    /// The stream's own `Rc` of the name when it has one: no allocation per event.
    pub fn key(&self, session: &str) -> Rc<str> {
        match self.streams.get_key_value(session) {
            Some((k, _)) => k.clone(),
            None => Rc::from(session),
        }
    }

    pub fn get(&self, session: &str) -> Option<&SessionStream> {
        self.streams.get(session).map(|s| &**s)
    }

    pub fn position(&self, session: &str) -> Option<StreamPos> {
        self.streams.get(session).map(|s| s.position())
    }

    /// The stream of `session`, made (live, at seq 0, with a new epoch) if absent.
    pub fn stream(&mut self, session: &Rc<str>, now: Instant) -> &mut SessionStream {
        if !self.streams.contains_key(&**session) {
            let epoch = self.new_epoch();
            self.insert(session, epoch, 0, true, now);
        }
        self.streams.get_mut(&**session).expect("inserted above")
    }

    /// Makes a stream that is not live yet (Redis: waiting for its subscription).
    pub fn start_pending(&mut self, session: &Rc<str>, now: Instant) {
        if !self.streams.contains_key(&**session) {
            self.insert(session, 0, 0, false, now);
        }
    }

    /// Makes a stream (with no sockets yet: it starts lingering now). Room is made
    /// first, from streams without sockets, if it would not fit the budget: what a
    /// publisher creates by publishing to sessions nobody holds is bounded too.
    pub(super) fn insert(
        &mut self,
        session: &Rc<str>,
        epoch: u64,
        seq: u64,
        live: bool,
        now: Instant,
    ) {
        self.used.bytes += STREAM_OVERHEAD + session.len();
        if self.used.bytes > self.budget {
            self.enforce_budget();
        }
        self.streams.insert(
            session.clone(),
            Box::new(SessionStream::new(epoch, seq, live, now)),
        );
        self.idle.push_back((now, session.clone()));
    }

    /// Streams forgotten since the last call (with Redis, their subscriptions go).
    pub fn take_forgotten(&mut self) -> Vec<Rc<str>> {
        std::mem::take(&mut self.forgotten)
    }

    /// A socket of `session` joined on this shard (its stream must exist).
    pub fn socket_joined(&mut self, session: &str) {
        if let Some(s) = self.streams.get_mut(session) {
            s.sockets += 1;
            s.watched = true;
        }
    }

    /// A socket of `session` left; the stream lingers from now.
    pub fn socket_left(&mut self, session: &str, now: Instant) {
        let Some(k) = self.streams.get_key_value(session).map(|(k, _)| k.clone()) else {
            return;
        };
        if let Some(s) = self.streams.get_mut(&*k) {
            s.sockets = s.sockets.saturating_sub(1);
            s.touched = now;
            if s.sockets == 0 {
                self.idle.push_back((now, k));
            }
        }
    }

    /// True when an idle-queue entry still stands for its stream.
    fn idle_entry_holds(&self, touched: Instant, session: &str) -> bool {
        self.streams
            .get(session)
            .is_some_and(|s| s.sockets == 0 && s.touched == touched)
    }

    /// Forgets streams without sockets idle for the history's age (or the dedupe
    /// window, while they remember ids): the second half of [`History::sweep`].
    /// Looks only at the fronts of the idle queues: O(streams forgotten).
    pub(super) fn forget_idle(&mut self, now: Instant) {
        let (linger, linger_ids) = self.lingers();
        while let Some((touched, _)) = self.idle.front() {
            if now.duration_since(*touched) < linger {
                break;
            }
            let Some((touched, k)) = self.idle.pop_front() else {
                break;
            };
            if !self.idle_entry_holds(touched, &k) {
                continue;
            }
            // Ids outlive the history when the dedupe window is longer.
            let has_ids = self.streams.get(&*k).is_some_and(|s| !s.ids.is_empty());
            if has_ids && linger_ids > linger {
                self.idle_ids.push_back((touched, k));
            } else {
                self.forget(&k);
            }
        }
        while let Some((touched, _)) = self.idle_ids.front() {
            if now.duration_since(*touched) < linger_ids {
                break;
            }
            let Some((touched, k)) = self.idle_ids.pop_front() else {
                break;
            };
            if self.idle_entry_holds(touched, &k) {
                self.forget(&k);
            }
        }
    }

    /// How long a stream without sockets lingers: without ids, and with ids.
    pub(super) fn lingers(&self) -> (Duration, Duration) {
        let linger = self.config.max_age.max(MIN_LINGER);
        (linger, linger.max(self.config.dedupe_window))
    }

    /// Forgets the stream without sockets that has been idle longest, before its
    /// linger ends (the memory cap needs the room); false when there is none.
    pub(super) fn evict_oldest_idle(&mut self) -> bool {
        loop {
            let take_ids = match (self.idle.front(), self.idle_ids.front()) {
                (None, None) => return false,
                (Some(_), None) => false,
                (None, Some(_)) => true,
                (Some((a, _)), Some((b, _))) => b <= a,
            };
            let entry = if take_ids {
                self.idle_ids.pop_front()
            } else {
                self.idle.pop_front()
            };
            let Some((touched, k)) = entry else {
                return false;
            };
            if self.idle_entry_holds(touched, &k) {
                self.forget(&k);
                self.evicted += 1;
                return true;
            }
        }
    }

    /// When the next stream without sockets is due to be forgotten (it may be a
    /// stale entry: that only makes a sweep early).
    pub(super) fn next_idle_due(&self) -> Option<Instant> {
        let (linger, linger_ids) = self.lingers();
        let a = self.idle.front().map(|(t, _)| *t + linger);
        let b = self.idle_ids.front().map(|(t, _)| *t + linger_ids);
        a.into_iter().chain(b).min()
    }

    pub(super) fn forget(&mut self, session: &str) {
        if let Some((k, s)) = self.streams.remove_entry(session) {
            let gone = s.usage();
            self.used.follow(gone, Usage::default());
            self.used.bytes -= STREAM_OVERHEAD + k.len();
            if self.report_forgotten {
                self.forgotten.push(k);
            }
        }
    }
}

/// A stream without sockets is kept at least this long, even with history off,
/// so its position (and a Redis subscription) survives a quick reconnect.
const MIN_LINGER: Duration = Duration::from_secs(5);

#[cfg(test)]
mod tests {
    use super::super::testing::{config, publish};
    use super::*;

    #[test]
    fn a_stream_with_ids_lingers_for_the_dedupe_window() {
        let start = Instant::now();
        let mut c = config(100, 1 << 20, 1 << 30);
        c.max_age = Duration::from_secs(10);
        c.dedupe_window = Duration::from_secs(60);
        let mut h = History::new(c, 1, 7);
        let s: Rc<str> = Rc::from("s");
        let seq = publish(&mut h, &s, 10, start);
        h.remember_id("s", 1, seq, start);
        h.sweep(start + Duration::from_secs(30));
        assert!(
            h.take_forgotten().is_empty(),
            "a retry within the window is still known"
        );
        assert_eq!(
            h.duplicate_of("s", 1, start + Duration::from_secs(30)),
            Some(seq)
        );
        h.sweep(start + Duration::from_secs(61));
        assert_eq!(h.take_forgotten().len(), 1);
    }
}
