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
}

/// All streams of one shard.
pub struct History {
    pub(super) config: HistoryConfig,
    /// This shard's share of the node's memory cap.
    pub(super) budget: usize,
    pub(super) streams: HashMap<Rc<str>, SessionStream>,
    /// Every retained frame in the order it was added, for the age bound and the
    /// memory cap: the oldest frames of the shard go first, whatever their session.
    /// Entries whose frame a session already dropped are skipped when reached.
    pub(super) order: VecDeque<(Rc<str>, u64)>,
    /// Every stream's frames and bytes (rings, ids and overheads), against `budget`.
    pub(super) used: Usage,
    epoch_salt: u64,
    /// Streams forgotten since the owner last asked (see [`History::take_forgotten`]).
    forgotten: Vec<Rc<str>>,
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
        }
    }

    pub fn config(&self) -> &HistoryConfig {
        &self.config
    }

    pub fn figures(&self) -> HistoryFigures {
        HistoryFigures {
            bytes: self.used.bytes,
            sessions: self.streams.len(),
            frames: self.used.frames,
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
        self.streams.get(session)
    }

    pub fn position(&self, session: &str) -> Option<StreamPos> {
        self.streams.get(session).map(SessionStream::position)
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

    pub(super) fn insert(
        &mut self,
        session: &Rc<str>,
        epoch: u64,
        seq: u64,
        live: bool,
        now: Instant,
    ) {
        self.used.bytes += STREAM_OVERHEAD + session.len();
        self.streams
            .insert(session.clone(), SessionStream::new(epoch, seq, live, now));
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
        if let Some(s) = self.streams.get_mut(session) {
            s.sockets = s.sockets.saturating_sub(1);
            s.touched = now;
        }
    }

    /// Forgets streams without sockets idle for the history's age (or the dedupe
    /// window, while they remember ids): the second half of [`History::sweep`].
    pub(super) fn forget_idle(&mut self, now: Instant) {
        let max_age = self.config.max_age;
        let dedupe = self.config.dedupe_window;
        let idle: Vec<Rc<str>> = self
            .streams
            .iter()
            .filter(|(_, s)| {
                // Ids outlive the history when the dedupe window is longer.
                let linger = if s.ids.is_empty() {
                    max_age.max(MIN_LINGER)
                } else {
                    max_age.max(MIN_LINGER).max(dedupe)
                };
                s.sockets == 0 && now.duration_since(s.touched) >= linger
            })
            .map(|(k, _)| k.clone())
            .collect();
        for k in &idle {
            self.forget(k);
        }
    }

    pub(super) fn forget(&mut self, session: &str) {
        if let Some((k, s)) = self.streams.remove_entry(session) {
            let gone = s.usage();
            self.used.follow(gone, Usage::default());
            self.used.bytes -= STREAM_OVERHEAD + k.len();
            self.forgotten.push(k);
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
