//! The subscribers one shard owns, by session: welcomed and waiting lists (O(1)
//! removal by slot), and [`SocketGuard`], which unregisters a subscriber and
//! gives back its slots whatever ended its task. Each subscriber's own state and
//! queue are `shard::socket`'s, re-exported here.
//!
//! Shard-local (`Rc`, `Cell`, `RefCell`): only the owning shard's executor touches
//! any of it. Nothing here does I/O beyond the best-effort 1011 of a failed task.

use std::collections::HashMap;
use std::rc::Rc;
use std::time::Instant;

use super::ctx::ConnCtx;
use super::socket::NOT_WELCOMED;
pub use super::socket::{mono_ms, Outgoing, Queued, SocketState, PONG_OPCODE_BYTE};
use super::Shard;
use crate::limiter::SocketPermit;
use crate::stream::StreamPos;
use crate::subscribe::Transport;
use crate::ws::close::Disconnect;

/// A socket whose 101 and welcome wait for its session's stream: its subscription
/// (with Redis) or the events it resumes from (with Redis-kept history).
pub struct PendingHello {
    pub socket: Rc<SocketState>,
    /// The 101 response.
    pub response: Box<[u8]>,
    pub conn_id: Box<str>,
    /// Where the client asked to resume from.
    pub since: Option<StreamPos>,
    /// Waiting for the events it missed, from Redis.
    pub fetching: bool,
}

/// One session's sockets on this shard.
#[derive(Default)]
pub struct SessionEntry {
    /// Welcomed sockets: events go to these.
    pub sockets: Vec<Rc<SocketState>>,
    /// Sockets not welcomed yet; events do not go to them.
    pub pending: Vec<PendingHello>,
}

/// Sessions → sockets, for one shard.
#[derive(Default)]
pub struct Registry {
    sessions: HashMap<Rc<str>, SessionEntry>,
    sockets: usize,
    /// `sockets` by transport ([`Transport::index`]).
    by_transport: [usize; Transport::ALL.len()],
}

impl Registry {
    /// The interned name of `session`, shared by all its sockets.
    pub fn intern(&self, session: &str) -> Rc<str> {
        match self.sessions.get_key_value(session) {
            Some((k, _)) => k.clone(),
            None => Rc::from(session),
        }
    }

    /// Sockets of `session` here, welcomed or not.
    pub fn session_size(&self, session: &str) -> usize {
        self.sessions
            .get(session)
            .map_or(0, |e| e.sockets.len() + e.pending.len())
    }

    /// Adds a socket that is not welcomed yet.
    pub fn add_pending(&mut self, hello: PendingHello) {
        self.sockets += 1;
        self.by_transport[hello.socket.transport.index()] += 1;
        self.sessions
            .entry(hello.socket.session.clone())
            .or_default()
            .pending
            .push(hello);
    }

    /// Takes the pending sockets of `session` (all, or the one with id `only`).
    pub fn take_pending(&mut self, session: &str, only: Option<u64>) -> Vec<PendingHello> {
        let Some(entry) = self.sessions.get_mut(session) else {
            return Vec::new();
        };
        match only {
            None => std::mem::take(&mut entry.pending),
            Some(id) => match entry.pending.iter().position(|p| p.socket.id == id) {
                Some(i) => vec![entry.pending.swap_remove(i)],
                None => Vec::new(),
            },
        }
    }

    /// Puts a socket back among the pending ones (its welcome waits again).
    pub fn repend(&mut self, hello: PendingHello) {
        if let Some(entry) = self.sessions.get_mut(&hello.socket.session) {
            entry.pending.push(hello);
        }
    }

    /// Makes a socket taken from the pending ones receive events from now on.
    pub fn welcome(&mut self, socket: Rc<SocketState>) {
        if let Some(entry) = self.sessions.get_mut(&socket.session) {
            socket.slot.set(entry.sockets.len() as u32);
            entry.sockets.push(socket);
        }
    }

    /// Removes a socket; true when it was its session's last one here.
    pub fn remove(&mut self, socket: &SocketState) -> bool {
        let Some(entry) = self.sessions.get_mut(&socket.session) else {
            return false;
        };
        let before = entry.sockets.len() + entry.pending.len();
        let slot = socket.slot.replace(NOT_WELCOMED);
        if slot == NOT_WELCOMED {
            // Still waiting for its welcome: the pending list is short-lived.
            entry.pending.retain(|p| p.socket.id != socket.id);
        } else if entry
            .sockets
            .get(slot as usize)
            .is_some_and(|s| s.id == socket.id)
        {
            entry.sockets.swap_remove(slot as usize);
            if let Some(moved) = entry.sockets.get(slot as usize) {
                moved.slot.set(slot);
            }
        }
        let removed = before - entry.sockets.len() - entry.pending.len();
        self.sockets -= removed;
        self.by_transport[socket.transport.index()] -= removed;
        if entry.sockets.is_empty() && entry.pending.is_empty() {
            self.sessions.remove(&socket.session);
            return true;
        }
        false
    }

    /// The sockets that events of `session` go to (those already welcomed).
    pub fn sockets_of(&self, session: &str) -> Option<&[Rc<SocketState>]> {
        self.sessions
            .get(session)
            .map(|e| e.sockets.as_slice())
            .filter(|s| !s.is_empty())
    }

    /// Every welcomed socket.
    pub fn welcomed(&self) -> impl Iterator<Item = &Rc<SocketState>> {
        self.sessions.values().flat_map(|e| e.sockets.iter())
    }

    /// Takes every pending socket that joined at or before `joined_by` (a
    /// [`mono_ms`] time; a pending socket has not spoken, so `last_heard` is when
    /// it joined).
    pub fn take_pending_since(&mut self, joined_by: u64) -> Vec<PendingHello> {
        let mut out = Vec::new();
        for entry in self.sessions.values_mut() {
            let mut i = 0;
            while i < entry.pending.len() {
                if entry.pending[i].socket.last_heard.get() <= joined_by {
                    out.push(entry.pending.swap_remove(i));
                } else {
                    i += 1;
                }
            }
        }
        out
    }

    /// Every socket, welcomed or not.
    pub fn all(&self) -> impl Iterator<Item = &Rc<SocketState>> {
        self.sessions
            .values()
            .flat_map(|e| e.sockets.iter().chain(e.pending.iter().map(|p| &p.socket)))
    }

    pub fn socket_count(&self) -> usize {
        self.sockets
    }

    /// Open subscribers by transport ([`Transport::index`]).
    pub fn socket_counts(&self) -> [usize; Transport::ALL.len()] {
        self.by_transport
    }

    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }
}

/// Unregisters a socket when its task ends, normally or by a panic, so a bug in
/// one socket's handling never leaves a ghost in the registry or the counters.
/// It also holds the socket's node and tenant slots, released when it drops.
pub struct SocketGuard {
    ctx: ConnCtx,
    pub state: Rc<SocketState>,
    /// Set by the task when it ends normally; a panic leaves `Internal`.
    pub reason: Disconnect,
    _permit: SocketPermit,
}

impl SocketGuard {
    pub(super) fn new(shard: Rc<Shard>, state: Rc<SocketState>, permit: SocketPermit) -> Self {
        SocketGuard {
            ctx: ConnCtx::new(shard),
            state,
            // Every task sets its ending; one that never does (it panicked) is
            // ours to report as 1011.
            reason: Disconnect::Internal,
            _permit: permit,
        }
    }

    /// What the socket's task may see and ask of its shard.
    pub fn ctx(&self) -> &ConnCtx {
        &self.ctx
    }
}

impl Drop for SocketGuard {
    fn drop(&mut self) {
        if self.reason == Disconnect::Internal {
            tell_internal_error(&self.state);
        }
        let shard = &self.ctx.shard;
        if let Ok(mut timers) = shard.timers.try_borrow_mut() {
            timers.untrack(&self.state);
        }
        shard.presence_left(&self.state);
        if let Ok(mut reg) = shard.registry.try_borrow_mut() {
            reg.remove(&self.state);
            shard.stats.set_connected(reg.socket_counts());
            shard.stats.sessions.set(reg.session_count() as u64);
        }
        // The stream lingers for the history's age, so the client can resume; its
        // Redis subscription goes when housekeeping forgets it.
        if let Ok(mut history) = shard.history.try_borrow_mut() {
            history.socket_left(&self.state.session, Instant::now());
        }
        shard.stats.disconnect(self.state.transport, self.reason);
        tracing::debug!(
            shard = shard.id,
            socket = self.state.id,
            reason = self.reason.metric_reason(),
            "socket closed"
        );
        // The connection is about to close: nothing may write to its number (the
        // flush list can still hold the state).
        self.state.fd.set(-1);
    }
}

/// Best effort, for a subscriber whose task died (a panic): one non-blocking
/// write of its transport's 1011 ending, unless something partly written or a
/// close already queued would make it garbage. Its connection is still open
/// here: the task's stream drops after its guard.
fn tell_internal_error(state: &SocketState) {
    if state.is_closing() || state.head_written.get() > 0 {
        return;
    }
    let d = Disconnect::Internal;
    let code = d.close_code().unwrap_or(1011);
    let bytes = match state.transport {
        Transport::Ws => crate::ws::frame::close_frame(code, d.close_reason()),
        Transport::Sse => crate::sse::frame::close_block(code, d.close_reason()),
        // A poll's answer is a whole HTTP response; its client sees the
        // connection end and polls again.
        Transport::Poll => return,
    };
    let fd = state.fd.get();
    if fd < 0 {
        return;
    }
    // SAFETY: send(2) on the socket's own descriptor, still open (see above),
    // from a buffer that outlives the call.
    unsafe {
        libc::send(
            fd,
            bytes.as_ptr().cast(),
            bytes.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ws::frame::EncodedFrame;
    use crate::ws::frame::{encode_event, EventParts};

    fn frame(n: usize) -> Rc<EncodedFrame> {
        let data = vec![b'1'; n];
        Rc::new(encode_event(
            &EventParts {
                session: "s",
                pos: StreamPos { epoch: 1, seq: 1 },
                event: b"\"e\"",
                id: Some(b"\"i\""),
                generated_id: "",
                data: &data,
            },
            Instant::now(),
        ))
    }

    fn event(seq: u64, n: usize) -> Rc<EncodedFrame> {
        let data = vec![b'1'; n];
        Rc::new(encode_event(
            &EventParts {
                session: "s",
                pos: StreamPos { epoch: 1, seq },
                event: b"\"e\"",
                id: Some(b"\"i\""),
                generated_id: "",
                data: &data,
            },
            Instant::now(),
        ))
    }

    /// What the queue holds, as the client will read it: event seqs, and the
    /// resync markers' seqs as negative numbers.
    fn read_back(s: &SocketState) -> Vec<i64> {
        s.queue()
            .iter()
            .map(|o| match o {
                Outgoing::Event(f) => f.seq as i64,
                Outgoing::SlowResync(b) => {
                    let text = String::from_utf8_lossy(b);
                    let at = text.find("\"seq\":").unwrap() + 6;
                    let digits: String = text[at..]
                        .chars()
                        .take_while(char::is_ascii_digit)
                        .collect();
                    assert!(text.contains("\"reason\":\"slow\""));
                    -digits.parse::<i64>().unwrap()
                }
                _ => 0,
            })
            .collect()
    }

    #[test]
    fn skipping_drops_the_oldest_events_and_says_so_once() {
        let s = SocketState::new(1, Rc::from("s"), Transport::Ws, u64::MAX, mono_ms());
        let max = 5_300;
        let mut seq = 0;
        while s.push_event(&event(seq + 1, 900), max) {
            seq += 1;
        }
        assert_eq!(seq, 5);
        let next = event(6, 900);
        assert_eq!(s.skip_oldest(&next, max), Some(1));
        assert!(s.push_event(&next, max));
        assert_eq!(read_back(&s), vec![-1, 2, 3, 4, 5, 6]);
        // A second skip replaces the resync: the client is told once, of the last.
        let next = event(7, 900);
        assert_eq!(s.skip_oldest(&next, max), Some(1));
        assert!(s.push_event(&next, max));
        assert_eq!(read_back(&s), vec![-2, 3, 4, 5, 6, 7]);
        let bytes: usize = s.queue().iter().map(|o| o.bytes().len()).sum();
        assert_eq!(s.queued_bytes(), bytes, "the byte count follows the queue");
        assert!(s.queued_bytes() <= max);
        // A frame larger than the whole cap cannot be made room for.
        assert_eq!(s.skip_oldest(&event(8, 6_000), max), None);
        assert_eq!(
            read_back(&s),
            vec![-2, 3, 4, 5, 6, 7],
            "a refusal changes nothing"
        );
    }

    #[test]
    fn removing_a_socket_is_a_swap_that_keeps_every_slot_true() {
        let mut r = Registry::default();
        let sockets: Vec<Rc<SocketState>> = (0..5)
            .map(|i| {
                Rc::new(SocketState::new(
                    i,
                    r.intern("s1"),
                    Transport::Ws,
                    0,
                    mono_ms(),
                ))
            })
            .collect();
        for s in &sockets {
            r.add_pending(PendingHello {
                socket: s.clone(),
                response: Box::new([]),
                conn_id: "c".into(),
                since: None,
                fetching: false,
            });
            let hello = r.take_pending("s1", Some(s.id)).pop().unwrap();
            r.welcome(hello.socket);
        }
        let check = |r: &Registry| {
            for (i, s) in r.sockets_of("s1").unwrap_or(&[]).iter().enumerate() {
                assert_eq!(
                    s.slot.get() as usize,
                    i,
                    "socket {} thinks it is elsewhere",
                    s.id
                );
            }
        };
        assert!(!r.remove(&sockets[1]));
        check(&r);
        assert!(!r.remove(&sockets[4]));
        check(&r);
        assert!(!r.remove(&sockets[1]), "removing twice changes nothing");
        assert_eq!(r.socket_count(), 3);
        let left: Vec<u64> = r.sockets_of("s1").unwrap().iter().map(|s| s.id).collect();
        assert_eq!(left.len(), 3);
        assert!(left.contains(&0) && left.contains(&2) && left.contains(&3));
        assert!(!r.remove(&sockets[0]));
        assert!(!r.remove(&sockets[3]));
        assert!(r.remove(&sockets[2]), "the last one empties the session");
        assert_eq!(r.socket_count(), 0);
    }

    #[test]
    fn queue_refuses_past_its_cap() {
        let s = SocketState::new(1, Rc::from("s"), Transport::Ws, u64::MAX, mono_ms());
        let f = frame(1000);
        let mut pushed = 0;
        while s.push_event(&f, 10_000) {
            pushed += 1;
            assert!(pushed < 100);
        }
        assert!(s.queued_bytes() <= 10_000);
    }

    #[test]
    fn a_pong_waiting_unsent_is_replaced_not_stacked() {
        let s = SocketState::new(1, Rc::from("s"), Transport::Ws, u64::MAX, mono_ms());
        s.push_control(Outgoing::Static(b"xx"));
        s.push_pong(Box::from(&[0x8A, 1, b'a'][..]));
        s.push_pong(Box::from(&[0x8A, 1, b'b'][..]));
        assert_eq!(s.queue().len(), 2);
        assert_eq!(
            s.queue().back().map(|o| o.bytes().to_vec()),
            Some(vec![0x8A, 1, b'b'])
        );
        assert_eq!(s.queued_bytes(), 5);
    }

    #[test]
    fn nothing_follows_the_close_frame() {
        let s = SocketState::new(1, Rc::from("s"), Transport::Ws, u64::MAX, mono_ms());
        s.push_close(vec![0x88, 0]);
        s.push_event(&frame(10), 1 << 20);
        s.push_control(Outgoing::Static(b"x"));
        assert_eq!(s.queue().len(), 1);
    }

    fn hello(socket: &Rc<SocketState>) -> PendingHello {
        PendingHello {
            socket: socket.clone(),
            response: Box::from(&b"101"[..]),
            conn_id: Box::from("c"),
            since: None,
            fetching: false,
        }
    }

    #[test]
    fn a_socket_not_welcomed_gets_no_events() {
        let mut r = Registry::default();
        let a = Rc::new(SocketState::new(
            1,
            r.intern("s1"),
            Transport::Ws,
            0,
            mono_ms(),
        ));
        r.add_pending(hello(&a));
        assert!(r.sockets_of("s1").is_none());
        assert_eq!(r.session_size("s1"), 1);
        let waiting = r.take_pending("s1", None);
        assert_eq!(waiting.len(), 1);
        r.welcome(a.clone());
        assert_eq!(r.sockets_of("s1").map(<[_]>::len), Some(1));
        assert_eq!(r.all().count(), 1);
    }

    #[test]
    fn registry_tracks_sessions_and_sockets() {
        let mut r = Registry::default();
        let a = Rc::new(SocketState::new(
            1,
            r.intern("s1"),
            Transport::Ws,
            0,
            mono_ms(),
        ));
        let b = Rc::new(SocketState::new(
            2,
            r.intern("s1"),
            Transport::Ws,
            0,
            mono_ms(),
        ));
        r.add_pending(hello(&a));
        r.add_pending(hello(&b));
        assert_eq!(r.take_pending("s1", Some(1)).len(), 1);
        r.welcome(a.clone());
        assert_eq!(r.session_count(), 1);
        assert_eq!(r.socket_count(), 2);
        assert_eq!(r.sockets_of("s1").map(<[_]>::len), Some(1));
        assert!(!r.remove(&a));
        assert!(r.remove(&b));
        assert_eq!(r.session_count(), 0);
        assert_eq!(r.socket_count(), 0);
    }
}
