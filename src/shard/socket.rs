//! One subscriber's state, shared between fan-out and its task: the bounded
//! queue of what it is owed ([`Outgoing`], in its transport's bytes), its waker,
//! close request, liveness times and token expiry.
//!
//! Shard-local (`Rc`, `Cell`, `RefCell`). Fan-out and housekeeping push and ask to
//! close; whoever writes the subscriber (the flusher, a WebSocket's turn in
//! `ws::conn`, the `sse::conn` and `poll` tasks) pops what it wrote. Nothing here
//! does I/O, and it knows nothing of sessions' lists (`registry`'s).

use super::timers::{Timed, NOT_DUE, UNTRACKED};
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::os::fd::RawFd;
use std::rc::Rc;
use std::task::Waker;
use std::time::Instant;

use crate::stream::{ResyncReason, StreamPos};
use crate::subscribe::Transport;
use crate::ws::close::Disconnect;
use crate::ws::frame::{resync_json, text_frame, EncodedFrame, PING_FRAME};

/// First byte of an unfragmented pong frame (FIN + opcode 0xA).
pub const PONG_OPCODE_BYTE: u8 = 0x8A;

/// One queued frame.
#[derive(Debug)]
pub enum Outgoing {
    /// An event frame shared with the session's other sockets.
    Event(Rc<EncodedFrame>),
    /// A frame (or the 101 response) for this socket alone.
    Owned(Box<[u8]>),
    /// A constant frame, such as a ping.
    Static(&'static [u8]),
    /// An event frame replayed to a resuming socket: not counted as a delivery
    /// again, and kept out of the latency histogram (it is old on purpose).
    Replay(Rc<EncodedFrame>),
    /// An event for an SSE subscriber: the frame's event-stream block, made once
    /// per event for all of them.
    SseEvent(Rc<EncodedFrame>),
    /// An event replayed to a resuming SSE subscriber.
    SseReplay(Rc<EncodedFrame>),
    /// A frame shared by many subscribers that is not an event (a presence
    /// change), already in the subscriber's transport's bytes.
    Shared(Rc<[u8]>),
    /// The resync that stands where `RELAY_SLOW_CONSUMER=skip` dropped events, in
    /// the subscriber's transport's bytes; a later skip replaces it.
    SlowResync(Box<[u8]>),
}

impl Outgoing {
    pub fn bytes(&self) -> &[u8] {
        match self {
            Outgoing::Event(f) | Outgoing::Replay(f) => f.bytes(),
            Outgoing::SseEvent(f) | Outgoing::SseReplay(f) => f.sse_bytes(),
            Outgoing::Owned(v) | Outgoing::SlowResync(v) => v,
            Outgoing::Static(s) => s,
            Outgoing::Shared(b) => b,
        }
    }
}

/// What queueing an event did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Queued {
    /// The queue was empty: nothing is set to write it yet.
    First,
    /// Queued behind others (or dropped silently: the socket is closing).
    Behind,
    /// Nothing queued: it would pass the queue's byte cap.
    Full,
}

/// A socket's state shared between fan-out and its task.
///
/// Writers: fan-out and housekeeping push frames and request closes; the socket task
/// pops frames, updates `last_heard` and `expires_at`. All on the owning shard.
pub struct SocketState {
    pub id: u64,
    pub session: Rc<str>,
    /// How the subscriber receives its stream: each entry is queued in its bytes.
    pub transport: Transport,
    /// The connection's descriptor, for writes straight from fan-out.
    pub fd: Cell<RawFd>,
    queue: RefCell<VecDeque<Outgoing>>,
    queued_bytes: Cell<usize>,
    /// Bytes of the front frame already written.
    pub head_written: Cell<usize>,
    waker: Cell<Option<Waker>>,
    close_request: Cell<Option<Disconnect>>,
    /// Set once a close frame is queued: nothing may follow it.
    closing: Cell<bool>,
    /// Times are [`mono_ms`] milliseconds: 8 bytes instead of an `Instant`'s 16, on
    /// a struct every socket carries.
    pub last_heard: Cell<u64>,
    pub last_ping: Cell<u64>,
    /// UNIX second at which the token (with leeway) runs out.
    pub expires_at: Cell<u64>,
    /// When a closing socket is dropped even if the peer never answered; 0: not set.
    pub close_deadline: Cell<u64>,
    /// Where the socket sits in its session's welcomed list ([`NOT_WELCOMED`]
    /// before): removal is a swap, O(1) whatever the session's size.
    pub(super) slot: Cell<u32>,
    /// Its slot in the shard's deadline structure (`shard::timers`).
    timer_slot: Cell<u32>,
    /// When housekeeping next looks at it ([`mono_ms`]); see `shard::timers`.
    next_due: Cell<u64>,
    /// Its user as presence tracks it (set once when it arrives; none: not
    /// tracked by name). Written and read by `shard::announce`.
    pub(super) presence_sub: std::cell::OnceCell<Rc<str>>,
    /// The presence frames it gets (set once when it arrives).
    pub(super) presence_mode: Cell<crate::config::PresenceMode>,
    /// It got a presence snapshot since its session's last flush: the next flush
    /// sends it a new snapshot instead of the change (see `shard::announce`).
    pub(super) presence_fresh: Cell<bool>,
}

impl Timed for SocketState {
    fn id(&self) -> u64 {
        self.id
    }
    fn timer_slot(&self) -> &Cell<u32> {
        &self.timer_slot
    }
    fn next_due(&self) -> &Cell<u64> {
        &self.next_due
    }
}

/// [`SocketState`]'s slot before it is welcomed.
pub(super) const NOT_WELCOMED: u32 = u32::MAX;

/// Milliseconds on a monotonic clock that starts with the process (never 0).
pub fn mono_ms() -> u64 {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    epoch.elapsed().as_millis() as u64 + 1
}

impl SocketState {
    pub fn new(
        id: u64,
        session: Rc<str>,
        transport: Transport,
        expires_at: u64,
        now_ms: u64,
    ) -> SocketState {
        SocketState {
            id,
            session,
            transport,
            fd: Cell::new(-1),
            queue: RefCell::new(VecDeque::new()),
            queued_bytes: Cell::new(0),
            head_written: Cell::new(0),
            waker: Cell::new(None),
            close_request: Cell::new(None),
            closing: Cell::new(false),
            last_heard: Cell::new(now_ms),
            last_ping: Cell::new(now_ms),
            expires_at: Cell::new(expires_at),
            close_deadline: Cell::new(0),
            slot: Cell::new(NOT_WELCOMED),
            timer_slot: Cell::new(UNTRACKED),
            next_due: Cell::new(NOT_DUE),
            presence_sub: std::cell::OnceCell::new(),
            presence_mode: Cell::new(crate::config::PresenceMode::Off),
            presence_fresh: Cell::new(false),
        }
    }

    pub fn set_waker(&self, waker: &Waker) {
        let old = self.waker.take();
        match old {
            Some(w) if w.will_wake(waker) => self.waker.set(Some(w)),
            _ => self.waker.set(Some(waker.clone())),
        }
    }

    pub fn wake(&self) {
        if let Some(w) = self.waker.take() {
            w.wake_by_ref();
            self.waker.set(Some(w));
        }
    }

    pub fn queue(&self) -> std::cell::RefMut<'_, VecDeque<Outgoing>> {
        self.queue.borrow_mut()
    }

    pub fn queued_bytes(&self) -> usize {
        self.queued_bytes.get()
    }

    /// Welcomed: events go to it (it left its session's pending list).
    pub fn is_welcomed(&self) -> bool {
        self.slot.get() != NOT_WELCOMED
    }

    pub fn is_closing(&self) -> bool {
        self.closing.get()
    }

    /// Queues an event frame and wakes the socket's task if the queue was empty.
    /// Returns false, queueing nothing, when the queue would pass `max_bytes`; the
    /// caller decides whether the socket is slow.
    pub fn push_event(&self, frame: &Rc<EncodedFrame>, max_bytes: usize) -> bool {
        match self.queue_event(frame, max_bytes) {
            Queued::Full => false,
            Queued::First => {
                self.wake();
                true
            }
            Queued::Behind => true,
        }
    }

    /// Queues an event frame like [`SocketState::push_event`] but wakes no one:
    /// on [`Queued::First`] the caller sees that the queue gets written.
    pub fn queue_event(&self, frame: &Rc<EncodedFrame>, max_bytes: usize) -> Queued {
        if self.closing.get() || self.close_request_pending() {
            return Queued::Behind;
        }
        let len = self.entry_len(frame);
        if self.queued_bytes.get() + len > max_bytes {
            return Queued::Full;
        }
        let out = match self.transport {
            Transport::Ws | Transport::Poll => Outgoing::Event(frame.clone()),
            Transport::Sse => Outgoing::SseEvent(frame.clone()),
        };
        if self.push_quiet(out, len) {
            Queued::First
        } else {
            Queued::Behind
        }
    }

    /// Makes room for `frame` by dropping the oldest queued events that have not
    /// started to go out, and puts a resync (reason `slow`) where they were,
    /// naming the last one dropped: the subscriber continues from there, told.
    /// Returns how many events were dropped, or `None` (nothing changed) when even
    /// dropping every queued event would not make room.
    pub fn skip_oldest(&self, frame: &EncodedFrame, max_bytes: usize) -> Option<u64> {
        let need = self.entry_len(frame);
        let keep = usize::from(self.head_written.get() > 0);
        let mut q = self.queue.borrow_mut();
        let is_event = |o: &Outgoing| {
            matches!(
                o,
                Outgoing::Event(_)
                    | Outgoing::SseEvent(_)
                    | Outgoing::Replay(_)
                    | Outgoing::SseReplay(_)
            )
        };
        let droppable: usize = q
            .iter()
            .skip(keep)
            .filter(|o| is_event(o))
            .map(|o| o.bytes().len())
            .sum();
        // A resync marker is at most this long (session names are short).
        let marker_room = 160 + self.session.len();
        if self.queued_bytes.get() - droppable + marker_room + need > max_bytes {
            return None;
        }
        let mut bytes = self.queued_bytes.get();
        let mut dropped = 0u64;
        let mut last = None;
        let mut kept: VecDeque<Outgoing> = VecDeque::with_capacity(q.len());
        // Where the new resync goes: in place of an earlier one (it told of
        // older drops; the new one covers them too), else where the drops began.
        let mut marker_at = None;
        let mut earlier = None;
        for (i, out) in q.drain(..).enumerate() {
            if i < keep {
                kept.push_back(out);
                continue;
            }
            if matches!(out, Outgoing::SlowResync(_)) && earlier.is_none() {
                earlier = Some(kept.len());
            }
            if is_event(&out) && bytes + marker_room + need > max_bytes {
                if let Outgoing::Event(f)
                | Outgoing::SseEvent(f)
                | Outgoing::Replay(f)
                | Outgoing::SseReplay(f) = &out
                {
                    last = Some(StreamPos {
                        epoch: f.epoch,
                        seq: f.seq,
                    });
                }
                bytes -= out.bytes().len();
                dropped += 1;
                marker_at.get_or_insert(kept.len());
                continue;
            }
            kept.push_back(out);
        }
        if let (Some(at), Some(pos)) = (marker_at, last) {
            let json = resync_json(&self.session, pos, ResyncReason::Slow);
            let marker = match self.transport {
                Transport::Ws => text_frame(&json),
                Transport::Sse => crate::sse::frame::block(Some(pos), "resync", &json),
                Transport::Poll => json,
            };
            bytes += marker.len();
            let marker = Outgoing::SlowResync(marker.into_boxed_slice());
            match earlier {
                Some(i) => {
                    bytes -= kept[i].bytes().len();
                    kept[i] = marker;
                }
                None => kept.insert(at, marker),
            }
        }
        *q = kept;
        self.queued_bytes.set(bytes);
        Some(dropped)
    }

    /// The bytes `frame` takes in this subscriber's queue.
    fn entry_len(&self, frame: &EncodedFrame) -> usize {
        match self.transport {
            Transport::Ws | Transport::Poll => frame.len(),
            Transport::Sse => frame.sse_bytes().len(),
        }
    }

    /// Queues an event a resuming subscriber missed.
    pub fn push_replay(&self, frame: &Rc<EncodedFrame>) {
        self.push_control(match self.transport {
            Transport::Ws | Transport::Poll => Outgoing::Replay(frame.clone()),
            Transport::Sse => Outgoing::SseReplay(frame.clone()),
        });
    }

    /// Queues a message of the relay's own (a welcome, a resync) as this
    /// subscriber's transport carries it: a text frame, an event-stream block
    /// named `event` whose id is `id`, or (for a long-poll, whose task reads its
    /// queue) the JSON itself.
    pub fn push_message(&self, event: &str, id: Option<StreamPos>, json: &[u8]) {
        let bytes = match self.transport {
            Transport::Ws => text_frame(json),
            Transport::Sse => crate::sse::frame::block(id, event, json),
            Transport::Poll => json.to_vec(),
        };
        self.push_control(Outgoing::Owned(bytes.into_boxed_slice()));
    }

    /// Queues a keep-alive: a ping frame, or an event-stream comment. A
    /// long-poll needs none: it answers within its timeout.
    pub fn push_keep_alive(&self) {
        match self.transport {
            Transport::Ws => self.push_control(Outgoing::Static(PING_FRAME)),
            Transport::Sse => self.push_control(Outgoing::Static(crate::sse::frame::KEEP_ALIVE)),
            Transport::Poll => {}
        }
    }

    /// Queues a frame for this socket alone (ignored once closing).
    pub fn push_control(&self, out: Outgoing) {
        if self.closing.get() {
            return;
        }
        let len = out.bytes().len();
        self.push(out, len);
    }

    /// Queues a pong, replacing one that is still waiting unsent: a client that
    /// floods pings and does not read leaves at most one pending pong.
    pub fn push_pong(&self, frame: Box<[u8]>) {
        if self.closing.get() {
            return;
        }
        let mut q = self.queue.borrow_mut();
        let back_unsent = q.len() > 1 || self.head_written.get() == 0;
        if let Some(Outgoing::Owned(last)) = q.back_mut() {
            if back_unsent && last.first() == Some(&PONG_OPCODE_BYTE) {
                let old = last.len();
                let new = frame.len();
                *last = frame;
                drop(q);
                self.queued_bytes.set(self.queued_bytes.get() - old + new);
                return;
            }
        }
        drop(q);
        let len = frame.len();
        self.push(Outgoing::Owned(frame), len);
    }

    /// Queues the close frame: the last frame this socket gets.
    pub fn push_close(&self, frame: Vec<u8>) {
        if self.closing.replace(true) {
            return;
        }
        let len = frame.len();
        self.push(Outgoing::Owned(frame.into_boxed_slice()), len);
    }

    fn push(&self, out: Outgoing, len: usize) {
        if self.push_quiet(out, len) {
            self.wake();
        }
    }

    /// Queues `out` and counts its bytes; true when the queue was empty.
    fn push_quiet(&self, out: Outgoing, len: usize) -> bool {
        let mut q = self.queue.borrow_mut();
        let was_empty = q.is_empty();
        q.push_back(out);
        drop(q);
        self.queued_bytes.set(self.queued_bytes.get() + len);
        was_empty
    }

    /// Drops queued frames that have not started to go out (keeping a partly written
    /// front frame, so the stream stays well-formed). Used before a 4008 close.
    pub fn discard_unsent(&self) {
        let mut q = self.queue.borrow_mut();
        let keep = usize::from(self.head_written.get() > 0);
        while q.len() > keep {
            if let Some(out) = q.pop_back() {
                self.queued_bytes
                    .set(self.queued_bytes.get() - out.bytes().len());
            }
        }
    }

    /// Frees an empty queue's buffer, so a socket that went quiet holds none. For
    /// the turns of a WebSocket's own frames (welcome, ping, pong), not for
    /// fan-out's writes, which keep a small buffer for the next event.
    pub fn release_idle_queue(&self) {
        let mut q = self.queue.borrow_mut();
        if q.is_empty() && q.capacity() > 0 {
            *q = VecDeque::new();
        }
    }

    /// Pops the front frame after it was fully written.
    pub fn pop_written(&self, q: &mut VecDeque<Outgoing>) -> Option<Outgoing> {
        let out = q.pop_front()?;
        self.queued_bytes
            .set(self.queued_bytes.get() - out.bytes().len());
        self.head_written.set(0);
        Some(out)
    }

    /// Asks the socket task to close with `reason` (first request wins).
    pub fn request_close(&self, reason: Disconnect) {
        if self.close_request_pending() || self.closing.get() {
            return;
        }
        self.close_request.set(Some(reason));
        self.wake();
    }

    fn close_request_pending(&self) -> bool {
        let r = self.close_request.get();
        r.is_some()
    }

    pub fn take_close_request(&self) -> Option<Disconnect> {
        self.close_request.take()
    }
}
