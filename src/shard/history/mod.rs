//! Each session's stream on its owning shard: the epoch, the last sequence number,
//! a bounded ring of recent event frames for resume, and the ids seen lately for
//! dedupe.
//!
//! Bounds: per session in events and bytes, per frame in age, and per shard in
//! total bytes (the node's cap divided among its shards). Frames in the ring are
//! the same `Rc`s the sockets were sent, so history costs no copy of an event.
//! A stream outlives its sockets for the history's age, so a client that drops and
//! comes back within it can resume.
//!
//! Rooms: [`ring`] (one stream's frames), [`ids`] (one stream's dedupe window);
//! this file owns the streams' lifecycle (creation, position, linger, forgetting),
//! the shard-wide budget and the age order, and reconciliation with positions
//! learned from Redis ([`History::settle`], [`History::arrival`]).
//!
//! Pure bookkeeping on shard-local data: no I/O, no sockets, no Redis, and no
//! clock: every function that needs the time takes `now`.

pub mod ids;
pub mod ring;

use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::time::{Duration, Instant};

use crate::config::HistoryConfig;
pub use crate::stream::{ResyncReason, StreamPos};
use crate::ws::frame::EncodedFrame;

use ids::IdWindow;
pub use ids::MAX_IDS_PER_SESSION;
use ring::{frame_cost, Ring, Usage};

/// What a stream costs besides its frames (maps, counters, the session name).
const STREAM_OVERHEAD: usize = 192;

/// The answer to a resume request.
#[derive(Debug)]
pub enum Resume {
    /// Nothing was missed.
    UpToDate,
    /// These frames, in order, bring the client to the stream's position.
    Replay(Vec<Rc<EncodedFrame>>),
    /// The client must reload its state.
    Resync(ResyncReason),
}

/// What an event arriving with its own position (from Redis) means here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// The next event: deliver it.
    Next,
    /// Already seen (or older than the stream's base): drop it.
    Old,
    /// Events between the stream's position and this one were missed; the stream was
    /// rebased just before it. Tell the sockets to resync, then deliver it.
    Gap(ResyncReason),
}

pub struct SessionStream {
    pub epoch: u64,
    /// The last event's sequence number (0: none yet).
    pub seq: u64,
    ring: Ring,
    ids: IdWindow,
    /// When the stream was made or its last socket left: a stream without sockets
    /// is forgotten some time after this, however busy (with Redis, that ends its
    /// subscription on a node nobody listens on).
    touched: Instant,
    /// With Redis: the subscription is live and the position is known.
    pub live: bool,
    /// Sockets of the session on this shard; a stream with none lingers for the
    /// history's age, then is forgotten.
    pub sockets: u32,
    /// A socket joined this stream once: only then can a client hold a position in
    /// it to resume from, so only then are frames kept.
    watched: bool,
}

impl SessionStream {
    pub fn position(&self) -> StreamPos {
        StreamPos {
            epoch: self.epoch,
            seq: self.seq,
        }
    }

    /// The sequence number just before the ring's first frame: a resume from at
    /// least here can be replayed.
    fn reach(&self) -> u64 {
        self.ring.reach(self.seq)
    }

    /// What the stream's ring and id window cost together.
    fn usage(&self) -> Usage {
        let ring = self.ring.usage();
        Usage {
            frames: ring.frames,
            bytes: ring.bytes + self.ids.bytes(),
        }
    }
}

/// Where [`History::place`] put an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    pub pos: StreamPos,
    /// Its id was seen within the dedupe window: `pos` is the first one's.
    pub duplicate: bool,
    /// Its frame is to be kept for resume ([`History::keeps`]).
    pub keep: bool,
}

/// The seq `id_hash` was given in `s` within `window` of `now`, if any.
fn seen_within(s: &SessionStream, id_hash: u64, now: Instant, window: Duration) -> Option<u64> {
    s.ids.seen_within(id_hash, now, window)
}

/// Counters the metrics read.
#[derive(Debug, Default, Clone, Copy)]
pub struct HistoryFigures {
    pub bytes: usize,
    pub sessions: usize,
    pub frames: usize,
}

/// All streams of one shard.
pub struct History {
    config: HistoryConfig,
    /// This shard's share of the node's memory cap.
    budget: usize,
    streams: HashMap<Rc<str>, SessionStream>,
    /// Every retained frame in the order it was added, for the age bound and the
    /// memory cap: the oldest frames of the shard go first, whatever their session.
    /// Entries whose frame a session already dropped are skipped when reached.
    order: VecDeque<(Rc<str>, u64)>,
    /// Every stream's frames and bytes (rings, ids and overheads), against `budget`.
    used: Usage,
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

    /// Moves a stream to `pos` learned from Redis (a subscription's or a
    /// reconnect's position). Nothing changes when the stream is already there;
    /// otherwise it is rebased, and the reason is returned when sockets had been
    /// told another position. A position behind the stream's in the same epoch
    /// means Redis lost writes (a failover to a lagging replica): the numbers
    /// after it would be reused, so that counts as a new epoch for the sockets.
    pub fn settle(
        &mut self,
        session: &Rc<str>,
        pos: StreamPos,
        now: Instant,
    ) -> Option<ResyncReason> {
        match self.streams.get(&**session) {
            // Events this node already has arrived after the position was read.
            Some(s) if s.live && s.epoch == pos.epoch && pos.seq == s.seq => None,
            _ => self.rebase(session, pos, now),
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

    fn insert(&mut self, session: &Rc<str>, epoch: u64, seq: u64, live: bool, now: Instant) {
        self.used.bytes += STREAM_OVERHEAD + session.len();
        self.streams.insert(
            session.clone(),
            SessionStream {
                epoch,
                seq,
                ring: Ring::default(),
                ids: IdWindow::default(),
                touched: now,
                live,
                sockets: 0,
                watched: false,
            },
        );
    }

    /// The sequence number an id was given within the dedupe window, if any.
    pub fn duplicate_of(&self, session: &str, id_hash: u64, now: Instant) -> Option<u64> {
        let s = self.streams.get(session)?;
        seen_within(s, id_hash, now, self.config.dedupe_window)
    }

    /// Places the next event of `session` (creating its stream): its position,
    /// or, for an id seen within the dedupe window, the position it was given then.
    /// One pass over the stream for what fan-out needs per event.
    pub fn place(&mut self, session: &Rc<str>, id_hash: Option<u64>, now: Instant) -> Placement {
        let window = self.config.dedupe_window;
        let history_on = self.config.events > 0;
        let s = self.stream(session, now);
        if let Some(seq) = id_hash.and_then(|h| seen_within(s, h, now, window)) {
            return Placement {
                pos: StreamPos {
                    epoch: s.epoch,
                    seq,
                },
                duplicate: true,
                keep: false,
            };
        }
        s.seq += 1;
        let placement = Placement {
            pos: s.position(),
            duplicate: false,
            keep: history_on && s.watched,
        };
        if let Some(h) = id_hash {
            self.remember_id(session, h, placement.pos.seq, now);
        }
        placement
    }

    /// Remembers that `id_hash` was given `seq`.
    pub fn remember_id(&mut self, session: &str, id_hash: u64, seq: u64, now: Instant) {
        let window = self.config.dedupe_window;
        let Some(s) = self.streams.get_mut(session) else {
            return;
        };
        let before = s.usage();
        s.ids.remember(id_hash, seq, now, window);
        self.used.follow(before, s.usage());
        if self.used.bytes > self.budget {
            self.enforce_budget();
        }
        // Still over with frames and idle streams gone: this session remembers
        // fewer ids (dedupe narrows under memory pressure; the cap holds).
        if let Some(s) = self.streams.get_mut(session) {
            while self.used.bytes > self.budget {
                let before = s.usage();
                if !s.ids.narrow() {
                    break;
                }
                self.used.follow(before, s.usage());
            }
        }
    }

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
    /// (down to seven eighths of the cap, so the scan is not repeated per event).
    fn enforce_budget(&mut self) {
        while self.used.bytes > self.budget {
            let Some((session, seq)) = self.order.pop_front() else {
                break;
            };
            self.drop_front_if(&session, seq);
        }
        if self.used.bytes > self.budget {
            let target = self.budget / 8 * 7;
            let idle: Vec<Rc<str>> = self
                .streams
                .iter()
                .filter(|(_, s)| s.sockets == 0)
                .map(|(k, _)| k.clone())
                .collect();
            for k in idle {
                if self.used.bytes <= target {
                    break;
                }
                self.forget(&k);
            }
        }
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

    /// What a client at `since` needs to catch up with `session`, which exists.
    /// Replays never exceed `max_bytes` (the socket's queue cap): past it, resync.
    pub fn resume(&self, session: &str, since: StreamPos, max_bytes: usize) -> Resume {
        let Some(s) = self.streams.get(session) else {
            return Resume::Resync(ResyncReason::Epoch);
        };
        if since.epoch != s.epoch || since.seq > s.seq {
            return Resume::Resync(ResyncReason::Epoch);
        }
        if since.seq == s.seq {
            return Resume::UpToDate;
        }
        if since.seq < s.reach() {
            return Resume::Resync(ResyncReason::History);
        }
        let frames = s.ring.after(since.seq);
        let bytes: usize = frames.iter().map(|f| f.len()).sum();
        if bytes > max_bytes {
            return Resume::Resync(ResyncReason::History);
        }
        Resume::Replay(frames)
    }

    /// An event from Redis at `pos` for `session`: where it stands against the
    /// stream. Rebases the stream on a gap or a new epoch.
    pub fn arrival(&mut self, session: &Rc<str>, pos: StreamPos, now: Instant) -> Arrival {
        let s = self.stream(session, now);
        if !s.live {
            // The first event seen before the subscription's position arrived.
            s.epoch = pos.epoch;
            s.seq = pos.seq;
            s.live = true;
            return Arrival::Next;
        }
        if s.epoch == pos.epoch {
            if pos.seq <= s.seq {
                return Arrival::Old;
            }
            if pos.seq == s.seq + 1 {
                s.seq = pos.seq;
                return Arrival::Next;
            }
        }
        let reason = if s.epoch == pos.epoch {
            ResyncReason::Gap
        } else {
            ResyncReason::Epoch
        };
        self.rebase(
            session,
            StreamPos {
                epoch: pos.epoch,
                seq: pos.seq.saturating_sub(1),
            },
            now,
        );
        Arrival::Gap(reason)
    }

    /// Takes the event at `seq` as the stream's latest, after a gap was told.
    pub fn advance(&mut self, session: &str, seq: u64) {
        if let Some(s) = self.streams.get_mut(session) {
            s.seq = s.seq.max(seq);
        }
    }

    /// Moves `session` to `pos`, forgetting frames that cannot bridge to it; marks
    /// it live. Returns what changed: `None` when the stream was already there.
    pub fn rebase(
        &mut self,
        session: &Rc<str>,
        pos: StreamPos,
        now: Instant,
    ) -> Option<ResyncReason> {
        if !self.streams.contains_key(&**session) {
            self.insert(session, pos.epoch, pos.seq, true, now);
            return None;
        }
        let s = self.streams.get_mut(&**session)?;
        let was_live = s.live;
        s.live = true;
        if was_live && s.epoch == pos.epoch && s.seq == pos.seq {
            return None;
        }
        let reason = if s.epoch != pos.epoch || pos.seq < s.seq {
            ResyncReason::Epoch
        } else {
            ResyncReason::Gap
        };
        let before = s.usage();
        s.ring.clear();
        s.epoch = pos.epoch;
        s.seq = pos.seq;
        self.used.follow(before, s.usage());
        // A stream nobody was told about yet has nobody to resync.
        was_live.then_some(reason)
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

    fn forget(&mut self, session: &str) {
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
    use super::*;
    use crate::ws::frame::FrameBuilder;

    fn config(events: usize, bytes: usize, memory: usize) -> HistoryConfig {
        HistoryConfig {
            events,
            bytes,
            memory,
            ..HistoryConfig::default()
        }
    }

    fn frame(seq: u64, size: usize, at: Instant) -> Rc<EncodedFrame> {
        let mut b = FrameBuilder::with_capacity(size);
        b.payload().resize(size, b'x');
        let mut f = b.finish(at);
        f.seq = seq;
        Rc::new(f)
    }

    fn publish(h: &mut History, s: &Rc<str>, size: usize, now: Instant) -> u64 {
        if h.get(s).is_none() {
            h.stream(s, now);
            h.socket_joined(s);
            h.socket_left(s, now);
        }
        let pos = h.place(s, None, now).pos;
        h.retain(s, &frame(pos.seq, size, now));
        pos.seq
    }

    #[test]
    fn replays_exactly_what_was_missed() {
        let now = Instant::now();
        let mut h = History::new(config(100, 1 << 20, 1 << 30), 1, 7);
        let s: Rc<str> = Rc::from("s");
        for _ in 0..10 {
            publish(&mut h, &s, 10, now);
        }
        let epoch = h.position("s").unwrap().epoch;
        match h.resume("s", StreamPos { epoch, seq: 4 }, usize::MAX) {
            Resume::Replay(f) => {
                assert_eq!(
                    f.iter().map(|f| f.seq).collect::<Vec<_>>(),
                    (5..=10).collect::<Vec<_>>()
                )
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            h.resume("s", StreamPos { epoch, seq: 10 }, usize::MAX),
            Resume::UpToDate
        ));
        assert!(matches!(
            h.resume(
                "s",
                StreamPos {
                    epoch: epoch ^ 1,
                    seq: 4
                },
                usize::MAX
            ),
            Resume::Resync(ResyncReason::Epoch)
        ));
        assert!(matches!(
            h.resume("s", StreamPos { epoch, seq: 11 }, usize::MAX),
            Resume::Resync(ResyncReason::Epoch)
        ));
    }

    #[test]
    fn a_resume_from_before_the_ring_resyncs() {
        let now = Instant::now();
        let mut h = History::new(config(5, 1 << 20, 1 << 30), 1, 7);
        let s: Rc<str> = Rc::from("s");
        for _ in 0..10 {
            publish(&mut h, &s, 10, now);
        }
        let epoch = h.position("s").unwrap().epoch;
        assert!(matches!(
            h.resume("s", StreamPos { epoch, seq: 4 }, usize::MAX),
            Resume::Resync(ResyncReason::History)
        ));
        assert!(matches!(
            h.resume("s", StreamPos { epoch, seq: 5 }, usize::MAX),
            Resume::Replay(f) if f.len() == 5
        ));
    }

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

    #[test]
    fn ids_are_remembered_within_the_window() {
        let now = Instant::now();
        let mut h = History::new(config(100, 1 << 20, 1 << 30), 1, 7);
        let s: Rc<str> = Rc::from("s");
        let seq = publish(&mut h, &s, 10, now);
        h.remember_id("s", 42, seq, now);
        assert_eq!(h.duplicate_of("s", 42, now), Some(seq));
        assert_eq!(h.duplicate_of("s", 43, now), None);
        let later = now + h.config().dedupe_window + Duration::from_secs(1);
        assert_eq!(h.duplicate_of("s", 42, later), None, "outside the window");
        h.remember_id("s", 43, 2, later);
        assert_eq!(h.duplicate_of("s", 42, later), None);
    }

    #[test]
    fn arrivals_detect_old_next_and_gaps() {
        let now = Instant::now();
        let mut h = History::new(config(100, 1 << 20, 1 << 30), 1, 7);
        let s: Rc<str> = Rc::from("s");
        assert_eq!(h.rebase(&s, StreamPos { epoch: 9, seq: 3 }, now), None);
        assert_eq!(
            h.arrival(&s, StreamPos { epoch: 9, seq: 3 }, now),
            Arrival::Old
        );
        assert_eq!(
            h.arrival(&s, StreamPos { epoch: 9, seq: 4 }, now),
            Arrival::Next
        );
        assert_eq!(
            h.arrival(&s, StreamPos { epoch: 9, seq: 7 }, now),
            Arrival::Gap(ResyncReason::Gap)
        );
        // The resync names the point before the arriving event; then it is taken.
        assert_eq!(h.position("s"), Some(StreamPos { epoch: 9, seq: 6 }));
        h.advance("s", 7);
        assert_eq!(h.position("s"), Some(StreamPos { epoch: 9, seq: 7 }));
        // Redis behind the stream in the same epoch (lost writes): a new start.
        assert_eq!(
            h.settle(&s, StreamPos { epoch: 9, seq: 3 }, now),
            Some(ResyncReason::Epoch)
        );
        assert_eq!(h.settle(&s, StreamPos { epoch: 9, seq: 3 }, now), None);
        assert_eq!(
            h.arrival(&s, StreamPos { epoch: 5, seq: 1 }, now),
            Arrival::Gap(ResyncReason::Epoch)
        );
    }
}
