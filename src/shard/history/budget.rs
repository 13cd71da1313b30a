//! The shard-wide byte budget and the age order: which frames a stream keeps for
//! resume ([`History::keeps`], [`History::retain`]), and which go, oldest of the
//! shard first, when history is over its share of the node's memory cap or past
//! its age ([`History::sweep`]).
//!
//! Owns the age order and the enforcement of the bounds; it asks `lifecycle` to
//! forget streams and never sequences, dedupes or reconciles. Pure: no I/O, no
//! clock (`sweep` takes `now`).

use std::rc::Rc;
use std::time::Instant;

use super::lifecycle::History;
use super::ring::frame_cost;
use crate::ws::frame::EncodedFrame;

impl History {
    /// True when frames of `session` are kept: history is on and a socket has
    /// joined the stream (nobody can resume a stream nobody was told about).
    pub fn keeps(&self, session: &str) -> bool {
        self.config.events > 0 && self.streams.get(session).is_some_and(|s| s.watched)
    }

    /// Keeps `frame` (whose `seq` is the stream's latest) for resume, within bounds.
    pub fn retain(&mut self, session: &Rc<str>, frame: &Rc<EncodedFrame>) {
        if self.config.events == 0 {
            return;
        }
        let Some(s) = self.streams.get_mut(&**session) else {
            return;
        };
        if !s.watched {
            return;
        }
        let before = s.usage();
        if frame_cost(frame) > self.config.bytes {
            // Too big to keep at all: the ring can no longer bridge this point.
            s.ring.clear();
            self.used.follow(before, s.usage());
            return;
        }
        s.ring.push(frame, self.config.events, self.config.bytes);
        self.used.follow(before, s.usage());
        self.order.push_back((session.clone(), frame.seq));
        self.enforce_budget();
        self.compact_order();
    }

    /// Drops the shard's oldest frames until history fits its share of the cap;
    /// if frames alone cannot make it fit, forgets streams that have no socket here
    /// (down to seven eighths of the cap, so it is not repeated per event).
    pub(super) fn enforce_budget(&mut self) {
        while self.used.bytes > self.budget {
            let Some((session, seq)) = self.order.pop_front() else {
                break;
            };
            self.drop_front_if(&session, seq);
        }
        if self.used.bytes > self.budget {
            // Streams without sockets go, longest idle first, down to seven eighths
            // of the budget: amortized O(1) per stream made or frame kept.
            let target = self.budget / 8 * 7;
            while self.used.bytes > target && self.evict_oldest_idle() {}
        }
    }

    /// Drops `session`'s oldest frame if it is `seq`.
    fn drop_front_if(&mut self, session: &str, seq: u64) {
        if let Some(s) = self.streams.get_mut(session) {
            let before = s.usage();
            if s.ring.pop_front_if(seq) {
                self.used.follow(before, s.usage());
            }
        }
    }

    /// Rebuilds the age order when most of it points at frames already gone, so it
    /// stays within twice the frames retained.
    fn compact_order(&mut self) {
        if self.order.len() <= 2 * self.used.frames + 1024 {
            return;
        }
        let streams = &self.streams;
        self.order.retain(|(session, seq)| {
            streams
                .get(&**session)
                .and_then(|s| s.ring.front().map(|f| (f.seq, s.seq)))
                .is_some_and(|(first, last)| *seq >= first && *seq <= last)
        });
    }

    /// Forgets frames older than the history's age, and streams without sockets
    /// idle that long (see [`History::take_forgotten`]).
    pub fn sweep(&mut self, now: Instant) {
        let max_age = self.config.max_age;
        while let Some((session, seq)) = self.order.front().cloned() {
            let expired = self
                .streams
                .get(&*session)
                .and_then(|s| s.ring.front())
                .is_none_or(|f| f.seq != seq || now.duration_since(f.accepted_at) >= max_age);
            if !expired {
                break;
            }
            self.order.pop_front();
            if let Some(s) = self.streams.get(&*session) {
                if s.ring
                    .front()
                    .is_some_and(|f| f.seq == seq && now.duration_since(f.accepted_at) >= max_age)
                {
                    self.drop_front_if(&session, seq);
                }
            }
        }
        self.forget_idle(now);
    }

    /// When [`History::sweep`] next has something to do: the oldest kept frame
    /// reaching the history's age, an idle stream's linger ending, or streams
    /// already forgotten (by the memory cap) whose Redis subscriptions must go.
    pub fn next_sweep(&self, now: Instant) -> Option<Instant> {
        if !self.forgotten.is_empty() {
            return Some(now);
        }
        let frames = match self.order.front() {
            None => None,
            Some((session, seq)) => {
                let first = self.streams.get(&**session).and_then(|s| s.ring.front());
                match first {
                    Some(f) if f.seq == *seq => Some(f.accepted_at + self.config.max_age),
                    // The front entry's frame is gone: a sweep passes it now.
                    _ => return Some(now),
                }
            }
        };
        frames.into_iter().chain(self.next_idle_due()).min()
    }
}

#[cfg(test)]
mod tests {
    use super::super::session::STREAM_OVERHEAD;
    use super::super::testing::{config, frame, publish};
    use super::*;
    use std::time::Duration;

    #[test]
    fn memory_stays_under_the_cap_with_many_sessions() {
        let now = Instant::now();
        let cap = 4 << 20;
        let mut h = History::new(config(1000, 1 << 20, cap), 1, 7);
        for i in 0..10_000 {
            let s: Rc<str> = Rc::from(format!("session-{i}"));
            for _ in 0..20 {
                publish(&mut h, &s, 200, now);
            }
            assert!(
                h.figures().bytes <= cap + STREAM_OVERHEAD + 32,
                "{}",
                h.figures().bytes
            );
        }
        assert!(h.order.len() <= 2 * h.used.frames + 1024);
    }

    #[test]
    fn old_frames_and_idle_streams_are_forgotten() {
        let start = Instant::now();
        let mut c = config(100, 1 << 20, 1 << 30);
        c.max_age = Duration::from_secs(10);
        let mut h = History::new(c, 1, 7);
        let s: Rc<str> = Rc::from("s");
        publish(&mut h, &s, 10, start);
        publish(&mut h, &s, 10, start + Duration::from_secs(5));
        h.socket_joined("s");
        h.sweep(start + Duration::from_secs(11));
        assert!(h.take_forgotten().is_empty());
        assert_eq!(h.figures().frames, 1);
        h.socket_left("s", start + Duration::from_secs(12));
        h.sweep(start + Duration::from_secs(20));
        assert!(
            h.take_forgotten().is_empty(),
            "lingers after its last socket"
        );
        h.sweep(start + Duration::from_secs(30));
        assert_eq!(h.take_forgotten().len(), 1);
        assert_eq!(h.figures().bytes, 0);
    }

    #[test]
    fn publishing_to_sessions_nobody_holds_stays_within_the_budget() {
        let now = Instant::now();
        let cap = 64 << 10;
        let mut h = History::new(config(100, 1 << 20, cap), 1, 7);
        let per_stream = STREAM_OVERHEAD + "spray-000000".len();
        let slot = std::mem::size_of::<(Rc<str>, Box<super::super::SessionStream>)>() + 1;
        let mut most = 0;
        for i in 0..100_000 {
            let s: Rc<str> = Rc::from(format!("spray-{i:06}"));
            h.place(&s, Some(i), now);
            assert!(
                h.figures().bytes <= cap + per_stream + 64,
                "{}",
                h.figures().bytes
            );
            // The map's table (buckets are a power of two past capacity's 7/8, and
            // forgotten streams' tombstones make it grow while still half empty)
            // stays within the seven slots a stream is charged for.
            most = most.max(h.streams.len());
            let buckets = (h.streams.capacity() * 8 / 7).next_power_of_two();
            assert!(
                buckets * slot <= 7 * slot * most + 1024,
                "{buckets} buckets for at most {most} streams"
            );
        }
        let f = h.figures();
        assert!(f.sessions < cap / STREAM_OVERHEAD, "{}", f.sessions);
        assert_eq!(
            f.evicted as usize + f.sessions,
            100_000,
            "every stream made is kept or counted"
        );
        // The idle queue holds about what is kept, not what was ever made.
        assert!(h.idle.len() <= 2 * f.sessions + 1, "{}", h.idle.len());
        assert!(h.take_forgotten().len() as u64 >= f.evicted);
    }

    #[test]
    fn a_stream_that_gets_a_socket_again_lingers_from_its_new_last_leave() {
        let start = Instant::now();
        let mut c = config(100, 1 << 20, 1 << 30);
        c.max_age = Duration::from_secs(10);
        let mut h = History::new(c, 1, 7);
        let s: Rc<str> = Rc::from("s");
        publish(&mut h, &s, 10, start);
        h.socket_joined("s");
        h.socket_left("s", start + Duration::from_secs(1));
        h.socket_joined("s");
        h.sweep(start + Duration::from_secs(12));
        assert!(h.take_forgotten().is_empty(), "it has a socket");
        h.socket_left("s", start + Duration::from_secs(20));
        h.sweep(start + Duration::from_secs(25));
        assert!(h.take_forgotten().is_empty(), "lingers from the last leave");
        assert_eq!(
            h.next_sweep(start + Duration::from_secs(25)),
            Some(start + Duration::from_secs(30))
        );
        h.sweep(start + Duration::from_secs(30));
        assert_eq!(h.take_forgotten().len(), 1);
        assert_eq!(
            h.next_sweep(start + Duration::from_secs(30)),
            None,
            "nothing left to do"
        );
        assert_eq!(h.figures().evicted, 0, "forgotten on time, not evicted");
    }

    #[test]
    fn a_stream_no_socket_ever_joined_keeps_no_frames() {
        let now = Instant::now();
        let mut h = History::new(config(100, 1 << 20, 1 << 30), 1, 7);
        let s: Rc<str> = Rc::from("s");
        let pos = h.place(&s, None, now).pos;
        assert!(!h.keeps("s"));
        h.retain(&s, &frame(pos.seq, 10, now));
        assert_eq!(h.figures().frames, 0);
        h.socket_joined("s");
        assert!(h.keeps("s"));
    }
}
