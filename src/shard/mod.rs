//! A shard: one glommio executor pinned to one core, owning the sockets whose
//! sessions [`crate::router::shard_for`] gives it.
//!
//! It runs four kinds of tasks: accept loops (one per listener), one task per
//! connection (`http::conn`, then `ws::conn` after an upgrade), the inbox loop
//! (messages from other shards), and housekeeping (pings, expiry, dead sockets).
//! Shard state is `Rc`/`Cell` and never leaves its thread; what other threads see
//! is [`NodeShared`]. This module may not know about Redis or the CLI.

pub mod history;
pub mod registry;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

pub use crate::clock::{unix_now, unix_now_ns};

use glommio::net::{TcpListener, TcpStream};

use crate::auth::JwtVerifier;
use crate::bridge::{BridgeHandle, BridgeMsg, OutgoingEvent};
use crate::config::HistoryStore;
use crate::config::{Config, LiveConfig};
use crate::http::publish::{EventSpans, PublishBatch, PublishParser};
use crate::http::response::Refusal;
use crate::metrics::{RedisFigures, ShardStats, StatsSnapshot};
use crate::router::{
    shard_for, AdoptMsg, DeliverMsg, FetchPurpose, Inbox, Receipt, Router, ShardMsg,
};
use crate::ws::close::Disconnect;
use crate::ws::frame::{
    encode_event, frame_from_remote, remote_parts, resync_frame, welcome_frame, EncodedFrame,
    EventParts, PING_FRAME,
};
use crate::ws::upgrade::AcceptedUpgrade;
use history::{Arrival, History, Resume, ResyncReason, StreamPos};
use registry::{mono_ms, Outgoing, PendingHello, Registry, SocketState};

/// How often housekeeping looks at every socket: the granularity of pings, token
/// expiry and dead-socket detection.
pub const HOUSEKEEPING_TICK: Duration = Duration::from_millis(250);
/// Housekeeping ticks between sweeps of idle rate-limiter keys (10 s).
const LIMITER_SWEEP_TICKS: u64 = 40;
/// An event from Redis that arrived while earlier ones were being read back.
type HeldEvent = (EncodedFrame, StreamPos);

/// Events held for one session while its missed events are read back from Redis;
/// past this the catch-up is abandoned for a resync.
const CATCH_UP_HOLD: usize = 10_000;
/// How long a socket may wait for its session's stream before it is closed with
/// 1013 (try again later).
const PENDING_LIMIT: Duration = Duration::from_secs(10);
/// Housekeeping ticks between sweeps of old history and idle streams (1 s).
const HISTORY_SWEEP_TICKS: u64 = 4;
/// How long a closing socket waits for the peer's close frame before dropping it.
pub const CLOSE_GRACE: Duration = Duration::from_secs(1);
/// How long a scrape waits for the other shards' counters.
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(2);
/// Bytes read from a socket at a time, into the shard's scratch buffer.
pub const READ_CHUNK: usize = 16 * 1024;

/// What every shard and the signal thread share. Written rarely; read anywhere.
#[derive(Debug)]
pub struct NodeShared {
    pub config: Config,
    pub router: Router,
    /// Open WebSockets on the node, against `limits.max_connections`.
    pub open_sockets: AtomicUsize,
    /// Set on SIGTERM; `/readyz` answers 503 from then on.
    pub draining: AtomicBool,
    /// Prefix of relay-generated event ids, random per process.
    pub node_tag: String,
    /// The Redis bridge, when `REDIS_URL` is set.
    pub bridge: Option<BridgeHandle>,
    /// Rate limiters and caps that hold per node.
    pub limiters: crate::limiter::Limiters,
    /// `RELAY_MAX_CONNECTIONS`, which SIGHUP may change.
    pub max_connections: AtomicUsize,
}

impl NodeShared {
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Takes one connection slot, or refuses when the node is full.
    pub fn reserve_socket(&self) -> bool {
        let max = self.max_connections.load(Ordering::Relaxed);
        if self.open_sockets.fetch_add(1, Ordering::AcqRel) >= max {
            self.open_sockets.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        true
    }

    pub fn release_socket(&self) {
        self.open_sockets.fetch_sub(1, Ordering::AcqRel);
    }

    /// Gives back everything an accepted upgrade held: its connection slot and its
    /// tenant's socket slot.
    pub fn release_upgrade(&self, tenant: Option<&str>) {
        self.release_socket();
        if let Some(t) = tenant {
            self.limiters.tenant_release(t);
        }
    }
}

/// A scrape waiting for other shards' counters.
struct PendingSnapshot {
    remaining: usize,
    merged: StatsSnapshot,
    waker: Option<Waker>,
}

/// A publish waiting for receipts: from the shards that own its sessions, or from
/// the bridge once Redis took it.
#[derive(Default)]
struct PendingPublish {
    /// Answers still to come.
    remaining: usize,
    receipts: Vec<Receipt>,
    failed: bool,
    waker: Option<Waker>,
}

/// Where ids of events published without one come from: `{node}-{shard}-{base + i}`
/// for the event at index `i`, so the owner and the publisher make the same id.
#[derive(Debug, Clone, Copy)]
struct IdSource {
    shard: usize,
    base: u64,
}

/// How long a publish waits for Redis before answering 503.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(5);

/// What a shard reads from the configuration that SIGHUP may change. Replaced
/// whole by a `Reload` message, never mutated: readers hold an `Rc` for as long as
/// they need a consistent view.
pub struct Settings {
    pub live: Arc<LiveConfig>,
    pub verifier: JwtVerifier,
}

impl Settings {
    pub fn new(live: Arc<LiveConfig>) -> Settings {
        let verifier = JwtVerifier::new(&live.jwt_secrets, &live.jwt);
        Settings { live, verifier }
    }
}

/// One shard's state. Lives in an `Rc` on its executor.
pub struct Shard {
    pub id: usize,
    pub node: Arc<NodeShared>,
    pub stats: ShardStats,
    pub registry: RefCell<Registry>,
    /// Sessions whose missed events are being read back from Redis, with the events
    /// that arrived meanwhile (held, in order, until the read-back is delivered).
    catching_up: RefCell<HashMap<Rc<str>, Vec<HeldEvent>>>,
    /// Each session's stream: position, resume history, dedupe ids.
    pub history: RefCell<History>,
    settings: RefCell<Rc<Settings>>,
    pub parser: RefCell<PublishParser>,
    /// Scratch for socket reads; never held across an await.
    pub read_scratch: RefCell<Vec<u8>>,
    inbox: Inbox,
    next_socket: Cell<u64>,
    next_event: Cell<u64>,
    next_snapshot: Cell<u64>,
    pending_snapshots: RefCell<HashMap<u64, PendingSnapshot>>,
    next_publish: Cell<u64>,
    pending_publishes: RefCell<HashMap<u64, PendingPublish>>,
    draining: Cell<bool>,
    drain_signal: glommio::sync::Semaphore,
}

/// The pieces of one event's frame, from a validated batch.
fn event_parts<'a>(
    batch: &'a PublishBatch,
    ev: &'a EventSpans,
    generated: &'a str,
    pos: StreamPos,
) -> EventParts<'a> {
    EventParts {
        session: batch.session(ev),
        pos,
        event: batch.bytes(&ev.event),
        id: ev.id.as_ref().map(|r| batch.bytes(r)),
        generated_id: generated,
        data: batch.bytes(&ev.data),
    }
}

impl Shard {
    pub fn new(id: usize, node: Arc<NodeShared>, inbox: Inbox) -> Shard {
        let settings = Rc::new(Settings::new(Arc::new(node.config.live.clone())));
        let salt = xxhash_rust::xxh3::xxh3_64(
            format!("{}-{id}-{}", node.node_tag, unix_now_ns()).as_bytes(),
        );
        let history = History::new(node.config.history.clone(), node.config.shards, salt);
        Shard {
            id,
            node,
            stats: ShardStats::default(),
            registry: RefCell::new(Registry::default()),
            catching_up: RefCell::new(HashMap::new()),
            history: RefCell::new(history),
            settings: RefCell::new(settings),
            parser: RefCell::new(PublishParser::default()),
            read_scratch: RefCell::new(vec![0u8; READ_CHUNK]),
            inbox,
            next_socket: Cell::new(0),
            next_event: Cell::new(0),
            next_snapshot: Cell::new(0),
            pending_snapshots: RefCell::new(HashMap::new()),
            next_publish: Cell::new(0),
            pending_publishes: RefCell::new(HashMap::new()),
            draining: Cell::new(false),
            drain_signal: glommio::sync::Semaphore::new(0),
        }
    }

    pub fn is_draining(&self) -> bool {
        self.draining.get() || self.node.is_draining()
    }

    /// The current reloadable settings.
    pub fn settings(&self) -> Rc<Settings> {
        self.settings.borrow().clone()
    }

    /// Runs the shard until it has drained. `listeners` are (listener, is_admin).
    pub async fn run(self: Rc<Self>, listeners: Vec<(TcpListener, bool)>) {
        let mut accept_tasks = Vec::new();
        for (listener, admin) in listeners {
            let shard = self.clone();
            accept_tasks.push(glommio::spawn_local(accept_loop(shard, listener, admin)));
        }
        let inbox_shard = self.clone();
        glommio::spawn_local(async move { inbox_shard.inbox_loop().await }).detach();
        let hk = self.clone();
        glommio::spawn_local(async move { hk.housekeeping().await }).detach();

        let _ = self.drain_signal.acquire(1).await;
        self.draining.set(true);
        for t in accept_tasks {
            t.cancel().await;
        }
        let pending = self.registry.borrow_mut().take_pending_since(u64::MAX);
        for hello in pending {
            self.abandon(hello, Disconnect::Draining);
        }
        let sockets: Vec<Rc<SocketState>> = self.registry.borrow().all().cloned().collect();
        tracing::info!(shard = self.id, sockets = sockets.len(), "draining");
        for s in &sockets {
            s.request_close(Disconnect::Draining);
        }
        drop(sockets);
        let deadline = Instant::now() + self.settings().live.limits.drain_timeout;
        while self.registry.borrow().socket_count() > 0 && Instant::now() < deadline {
            glommio::timer::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits on the doorbell and handles every message in the inbox.
    async fn inbox_loop(self: Rc<Self>) {
        let mut waiter = match self.inbox.waiter() {
            Ok(w) => w,
            Err(e) => {
                tracing::error!(shard = self.id, error = %e, "cannot watch the inbox");
                return;
            }
        };
        loop {
            waiter.rearm();
            self.drain_inbox();
            if let Err(e) = waiter.wait().await {
                tracing::error!(shard = self.id, error = %e, "inbox doorbell broke");
                return;
            }
        }
    }

    /// Handles every message waiting in the inbox. Also called before a local
    /// delivery, so events routed here earlier go out first.
    pub fn drain_inbox(self: &Rc<Self>) {
        while let Ok(msg) = self.inbox.rx.try_recv() {
            let reserved = match &msg {
                ShardMsg::Deliver(d) => d.reserved_bytes,
                _ => 0,
            };
            self.handle(msg);
            self.inbox.budget.release(reserved);
        }
    }

    fn handle(self: &Rc<Self>, msg: ShardMsg) {
        match msg {
            ShardMsg::Deliver(d) => {
                let ids = IdSource {
                    shard: d.id_shard,
                    base: d.id_base,
                };
                let mut receipts = Vec::with_capacity(d.events.len());
                for &i in &d.events {
                    if let Some(r) = self.deliver(&d.batch, i, d.accepted_at, ids, d.wait_delivered)
                    {
                        receipts.push(r);
                    }
                }
                if let Some((from, id)) = d.reply {
                    let reply = ShardMsg::Sequenced { id, receipts };
                    // Room for the reply was reserved when the publish was
                    // dispatched: this never waits (see `Router::dispatch`).
                    let sent = self.node.router.send_reserved(from, reply);
                    if sent.is_err() {
                        tracing::error!(
                            shard = self.id,
                            "receipts not sent; the publish times out"
                        );
                    }
                }
            }
            ShardMsg::Adopt(a) => self.adopt(*a),
            ShardMsg::Remote { events } => {
                let now = Instant::now();
                let now_ns = unix_now_ns();
                for ev in events {
                    match frame_from_remote(&ev.payload, now_ns, now) {
                        Some((frame, pos)) => self.deliver_remote(&ev.session, frame, pos, now),
                        None => {
                            tracing::warn!(shard = self.id, "malformed event from redis dropped")
                        }
                    }
                }
            }
            ShardMsg::Sequenced { id, receipts } => {
                if let Some(p) = self.pending_publishes.borrow_mut().get_mut(&id) {
                    p.receipts.extend(receipts);
                    p.remaining = p.remaining.saturating_sub(1);
                    if p.remaining == 0 {
                        if let Some(w) = p.waker.take() {
                            w.wake();
                        }
                    }
                }
            }
            ShardMsg::PublishDone { id, receipts } => {
                if let Some(p) = self.pending_publishes.borrow_mut().get_mut(&id) {
                    match receipts {
                        Some(r) => p.receipts.extend(r),
                        None => p.failed = true,
                    }
                    p.remaining = 0;
                    if let Some(w) = p.waker.take() {
                        w.wake();
                    }
                }
            }
            ShardMsg::Subscribed { sessions } => {
                for (session, pos) in sessions {
                    self.settle_or_catch_up(&session, pos);
                    self.greet_pending(&session);
                }
            }
            ShardMsg::Resync { sessions } => {
                for (session, pos) in sessions {
                    if self.history.borrow().get(&session).is_some() {
                        self.settle_or_catch_up(&session, pos);
                    }
                }
            }
            ShardMsg::Fetched {
                session,
                after,
                purpose,
                payloads,
            } => self.fetched(&session, after, purpose, payloads),
            ShardMsg::SnapshotRequest { from, id } => {
                let snapshot = Box::new(self.snapshot());
                let reply = ShardMsg::SnapshotReply { id, snapshot };
                if let Err((e, _)) = self.node.router.send(from, reply) {
                    tracing::warn!(shard = self.id, error = %e, "snapshot reply not sent");
                }
            }
            ShardMsg::SnapshotReply { id, snapshot } => {
                if let Some(p) = self.pending_snapshots.borrow_mut().get_mut(&id) {
                    p.merged.merge(&snapshot);
                    p.remaining = p.remaining.saturating_sub(1);
                    if p.remaining == 0 {
                        if let Some(w) = p.waker.take() {
                            w.wake();
                        }
                    }
                }
            }
            ShardMsg::Reload(config) => {
                *self.settings.borrow_mut() = Rc::new(Settings::new(config));
            }
            ShardMsg::Drain => {
                self.draining.set(true);
                self.drain_signal.signal(1);
            }
        }
    }

    /// This shard's counters, with its history's figures.
    fn snapshot(&self) -> StatsSnapshot {
        let figures = self.history.borrow().figures();
        self.stats.history_bytes.set(figures.bytes as u64);
        self.stats.history_sessions.set(figures.sessions as u64);
        self.stats.snapshot()
    }

    /// Sequences one event of a batch this shard owns, keeps it for resume, and
    /// writes it to every welcomed socket of its session. `None` for a bad index.
    fn deliver(
        &self,
        batch: &PublishBatch,
        index: u32,
        at: Instant,
        ids: IdSource,
        wait: bool,
    ) -> Option<Receipt> {
        let ev = batch.events.get(index as usize)?;
        let session = batch.session(ev);
        let mut history = self.history.borrow_mut();
        let key = history.key(session);
        let id_hash = ev
            .id
            .as_ref()
            .map(|r| xxhash_rust::xxh3::xxh3_64(batch.bytes(r)));
        let placed = history.place(&key, id_hash, at);
        let mut receipt = Receipt {
            index,
            pos: placed.pos,
            duplicate: placed.duplicate,
            written: 0,
            queued: 0,
            dropped: 0,
        };
        if placed.duplicate {
            self.stats.dedupe_hit();
            return Some(receipt);
        }
        let registry = self.registry.borrow();
        let sockets = registry.sockets_of(session);
        let keep = placed.keep;
        if sockets.is_none() && !keep {
            return Some(receipt);
        }
        let generated = self.generated_id(ev, ids, index);
        let frame = Rc::new(encode_event(
            &event_parts(batch, ev, &generated, receipt.pos),
            at,
        ));
        if keep {
            history.retain(&key, &frame);
        }
        drop(history);
        if let Some(sockets) = sockets {
            let (written, queued, dropped) = self.fan_out(sockets, &frame, wait);
            receipt.written = written;
            receipt.queued = queued;
            receipt.dropped = dropped;
        }
        Some(receipt)
    }

    /// An event from Redis: delivered when it is the session's next one, dropped
    /// when already seen; a gap before it resyncs the session's sockets first.
    fn deliver_remote(&self, session: &str, frame: EncodedFrame, pos: StreamPos, now: Instant) {
        if let Some(held) = self.catching_up.borrow_mut().get_mut(session) {
            // Behind this event are events being read back from Redis: it waits.
            if held.len() < CATCH_UP_HOLD {
                held.push((frame, pos));
                return;
            }
        }
        if self.catching_up.borrow().contains_key(session) {
            // Too much arrived meanwhile: give up the catch-up; the gap resyncs.
            self.catching_up.borrow_mut().remove(session);
        } else if pos.seq > 1 && self.can_catch_up(session, pos.epoch, pos.seq - 1) {
            self.start_catch_up(session, pos.seq - 1);
            if let Some(held) = self.catching_up.borrow_mut().get_mut(session) {
                held.push((frame, pos));
                return;
            }
        }
        let mut history = self.history.borrow_mut();
        let key = history.key(session);
        match history.arrival(&key, pos, now) {
            Arrival::Old => return,
            Arrival::Next => {}
            Arrival::Gap(reason) => {
                drop(history);
                self.send_resync(session, reason);
                history = self.history.borrow_mut();
                history.advance(session, pos.seq);
            }
        }
        let frame = Rc::new(frame);
        history.retain(&key, &frame);
        drop(history);
        if let Some(sockets) = self.registry.borrow().sockets_of(session) {
            self.fan_out(sockets, &frame, false);
        }
    }

    /// Moves a session's stream to `pos` learned from Redis. With Redis-kept
    /// history, events this node missed in the same epoch are read back and
    /// delivered instead of a resync; otherwise the sockets are told to resync.
    fn settle_or_catch_up(&self, session: &str, pos: StreamPos) {
        if self.catching_up.borrow().contains_key(session) {
            return;
        }
        if self.can_catch_up(session, pos.epoch, pos.seq) {
            self.start_catch_up(session, pos.seq);
            return;
        }
        let went_back = self
            .history
            .borrow()
            .get(session)
            .filter(|s| s.live && s.epoch == pos.epoch && pos.seq < s.seq)
            .map(|s| s.seq);
        if let (Some(reached), Some(bridge)) = (went_back, &self.node.bridge) {
            // Redis lost writes: its numbers after `pos` would be given again. A
            // new epoch in Redis makes every client that saw the old ones resync,
            // on every node, including those away right now.
            let msg = BridgeMsg::NewEpoch {
                from: self.id,
                session: session.to_string(),
                went_back: pos,
                reached,
            };
            if bridge.send(msg).is_err() {
                tracing::warn!(
                    shard = self.id,
                    "new epoch not queued; the bridge is behind"
                );
            }
        }
        let key = self.history.borrow().key(session);
        let changed = self.history.borrow_mut().settle(&key, pos);
        if let Some(reason) = changed {
            self.send_resync(session, reason);
        }
    }

    /// True when `session`'s live stream is behind `seq` in `epoch` and the Redis
    /// Stream may hold what lies between.
    fn can_catch_up(&self, session: &str, epoch: u64, seq: u64) -> bool {
        self.node.config.history.store == HistoryStore::Redis
            && self.node.bridge.is_some()
            && self
                .history
                .borrow()
                .get(session)
                .is_some_and(|s| s.live && s.epoch == epoch && s.seq < seq)
    }

    /// Asks the bridge for the events after the stream's position; arrivals wait
    /// until they are delivered. `target` is where the stream must get to.
    fn start_catch_up(&self, session: &str, target: u64) {
        let (Some(bridge), Some(after)) =
            (&self.node.bridge, self.history.borrow().position(session))
        else {
            return;
        };
        let msg = BridgeMsg::Fetch {
            from: self.id,
            session: session.to_string(),
            after,
            purpose: FetchPurpose::CatchUp { target },
        };
        if bridge.send(msg).is_ok() {
            self.catching_up
                .borrow_mut()
                .insert(Rc::from(session), Vec::new());
        }
    }

    /// Events read back for a catch-up: delivered through the normal arrival path
    /// (a hole the Redis Stream cannot fill resyncs there), then what was held.
    fn caught_up(&self, session: &str, target: u64, payloads: Option<Vec<Vec<u8>>>) {
        let held = self
            .catching_up
            .borrow_mut()
            .remove(session)
            .unwrap_or_default();
        let now = Instant::now();
        let now_ns = unix_now_ns();
        let mut read_back = 0u64;
        for p in payloads.unwrap_or_default() {
            if let Some((frame, pos)) = frame_from_remote(&p, now_ns, now) {
                if pos.seq > target {
                    break;
                }
                read_back += 1;
                self.deliver_remote(session, frame, pos, now);
            }
        }
        self.stats.caught_up(read_back);
        let Some(at) = self.history.borrow().position(session) else {
            return;
        };
        if at.seq < target {
            let key = self.history.borrow().key(session);
            let pos = StreamPos {
                epoch: at.epoch,
                seq: target,
            };
            if let Some(reason) = self.history.borrow_mut().settle(&key, pos) {
                self.send_resync(session, reason);
            }
        }
        for (frame, pos) in held {
            self.deliver_remote(session, frame, pos, now);
        }
    }

    /// Tells every welcomed socket of `session` to reload state: events before the
    /// stream's current position may be missing for them.
    fn send_resync(&self, session: &str, reason: ResyncReason) {
        let Some(pos) = self.history.borrow().position(session) else {
            return;
        };
        let registry = self.registry.borrow();
        let Some(sockets) = registry.sockets_of(session) else {
            return;
        };
        let frame = resync_frame(session, pos);
        for s in sockets {
            s.push_control(Outgoing::Owned(frame.clone().into_boxed_slice()));
        }
        self.stats.resync(reason, sockets.len() as u64);
    }

    /// Queues one frame on every socket of a session. With `wait`, writes through
    /// and returns (written to the kernel, still queued, closed as slow).
    fn fan_out(
        &self,
        sockets: &[Rc<SocketState>],
        frame: &Rc<EncodedFrame>,
        wait: bool,
    ) -> (u32, u32, u32) {
        let max = self.settings().live.limits.max_outbound_bytes;
        let (mut written, mut queued, mut dropped) = (0, 0, 0);
        for s in sockets {
            let mut slow = false;
            if !s.push_event(frame, max) {
                // Full queue: write what the kernel takes now, then judge.
                let flushed = crate::ws::conn::write_queue_now(s, &self.stats);
                if flushed.is_err() || !s.push_event(frame, max) {
                    s.request_close(Disconnect::SlowConsumer);
                    slow = true;
                }
            }
            if wait {
                if slow {
                    dropped += 1;
                } else {
                    match crate::ws::conn::write_queue_now(s, &self.stats) {
                        Ok(true) => written += 1,
                        Ok(false) => queued += 1,
                        Err(_) => dropped += 1,
                    }
                }
            }
        }
        (written, queued, dropped)
    }

    /// A relay-made id for an event the publisher gave none; empty otherwise.
    fn generated_id(&self, ev: &EventSpans, ids: IdSource, index: u32) -> String {
        if ev.id.is_some() {
            return String::new();
        }
        let mut id = String::with_capacity(self.node.node_tag.len() + 24);
        id.push_str(&self.node.node_tag);
        id.push('-');
        id.push_str(itoa::Buffer::new().format(ids.shard));
        id.push('-');
        id.push_str(itoa::Buffer::new().format(ids.base + u64::from(index)));
        id
    }

    /// Reserves ids for a batch's events published without one.
    fn reserve_ids(&self, n: usize) -> IdSource {
        let base = self.next_event.get();
        self.next_event.set(base + n as u64);
        IdSource {
            shard: self.id,
            base,
        }
    }

    /// Accepts a validated batch: through Redis when the node has a bridge, else
    /// straight to the owning shards. Returns the 202's body: a receipt per event.
    pub async fn publish(
        self: &Rc<Self>,
        batch: PublishBatch,
        wait_delivered: bool,
    ) -> Result<Vec<u8>, Refusal> {
        let started = Instant::now();
        let ids = self.reserve_ids(batch.events.len());
        let receipts = match &self.node.bridge {
            Some(bridge) => self.publish_via_redis(bridge, &batch, ids).await?,
            None => {
                let batch = Arc::new(batch);
                let r = self.publish_local(&batch, ids, wait_delivered).await?;
                return Ok(self.receipts_body(
                    &batch,
                    ids,
                    r,
                    wait_delivered.then(|| started.elapsed()),
                ));
            }
        };
        Ok(self.receipts_body(&batch, ids, receipts, None))
    }

    /// `{"accepted":N,"events":[{"session","seq","epoch","id"[,"duplicate"]
    /// [,"written","queued","dropped"]}...][,"took_us":T]}`, in request order.
    fn receipts_body(
        &self,
        batch: &PublishBatch,
        ids: IdSource,
        mut receipts: Vec<Receipt>,
        took: Option<Duration>,
    ) -> Vec<u8> {
        use crate::stream::{push_decimal, push_hex16};
        receipts.sort_unstable_by_key(|r| r.index);
        let mut out = Vec::with_capacity(48 + receipts.len() * 112);
        out.extend_from_slice(br#"{"accepted":"#);
        push_decimal(&mut out, receipts.len() as u64);
        out.extend_from_slice(br#","events":["#);
        for (n, r) in receipts.iter().enumerate() {
            let Some(ev) = batch.events.get(r.index as usize) else {
                continue;
            };
            if n > 0 {
                out.push(b',');
            }
            out.extend_from_slice(br#"{"session":""#);
            out.extend_from_slice(batch.session(ev).as_bytes());
            out.extend_from_slice(br#"","seq":"#);
            push_decimal(&mut out, r.pos.seq);
            out.extend_from_slice(br#","epoch":""#);
            push_hex16(&mut out, r.pos.epoch);
            out.extend_from_slice(br#"","id":"#);
            match &ev.id {
                Some(id) => out.extend_from_slice(batch.bytes(id)),
                None => {
                    out.push(b'"');
                    out.extend_from_slice(self.node.node_tag.as_bytes());
                    out.push(b'-');
                    push_decimal(&mut out, ids.shard as u64);
                    out.push(b'-');
                    push_decimal(&mut out, ids.base + u64::from(r.index));
                    out.push(b'"');
                }
            }
            if r.duplicate {
                out.extend_from_slice(br#","duplicate":true"#);
            }
            if took.is_some() {
                out.extend_from_slice(br#","written":"#);
                push_decimal(&mut out, u64::from(r.written));
                out.extend_from_slice(br#","queued":"#);
                push_decimal(&mut out, u64::from(r.queued));
                out.extend_from_slice(br#","dropped":"#);
                push_decimal(&mut out, u64::from(r.dropped));
            }
            out.push(b'}');
        }
        out.push(b']');
        if let Some(t) = took {
            out.extend_from_slice(br#","took_us":"#);
            push_decimal(&mut out, t.as_micros() as u64);
        }
        out.push(b'}');
        out
    }

    /// Registers a publish that waits for `remaining` answers; returns its id.
    fn await_answers(&self, remaining: usize) -> u64 {
        let id = self.next_publish.get();
        self.next_publish.set(id + 1);
        self.pending_publishes.borrow_mut().insert(
            id,
            PendingPublish {
                remaining,
                ..PendingPublish::default()
            },
        );
        id
    }

    /// Waits for publish `id`'s answers: its receipts, or `None` on a failure or
    /// after [`PUBLISH_TIMEOUT`].
    async fn answers(&self, id: u64) -> Option<Vec<Receipt>> {
        let wait = futures_lite::future::poll_fn(|cx| {
            let mut pending = self.pending_publishes.borrow_mut();
            match pending.get_mut(&id) {
                Some(p) if p.failed => Poll::Ready(false),
                Some(p) if p.remaining == 0 => Poll::Ready(true),
                Some(p) => {
                    p.waker = Some(cx.waker().clone());
                    Poll::Pending
                }
                None => Poll::Ready(false),
            }
        });
        let ok = glommio::timer::timeout(PUBLISH_TIMEOUT, async { Ok(wait.await) })
            .await
            .unwrap_or(false);
        let p = self.pending_publishes.borrow_mut().remove(&id)?;
        ok.then_some(p.receipts)
    }

    /// Hands the batch to the bridge and waits until Redis took all of it: the 202
    /// promises that every node holding the session will see the events.
    async fn publish_via_redis(
        self: &Rc<Self>,
        bridge: &BridgeHandle,
        batch: &PublishBatch,
        ids: IdSource,
    ) -> Result<Vec<Receipt>, Refusal> {
        if !bridge.is_connected() {
            return Err(Refusal::redis_unavailable());
        }
        let n = batch.events.len();
        let accepted_ns = unix_now_ns();
        let unplaced = StreamPos { epoch: 0, seq: 0 };
        let events: Vec<OutgoingEvent> = batch
            .events
            .iter()
            .enumerate()
            .map(|(i, ev)| {
                let generated = self.generated_id(ev, ids, i as u32);
                let (head, tail) =
                    remote_parts(&event_parts(batch, ev, &generated, unplaced), accepted_ns);
                OutgoingEvent {
                    session: batch.session(ev).to_string(),
                    head,
                    tail,
                    id: ev.id.as_ref().map(|r| batch.bytes(r).to_vec()),
                }
            })
            .collect();
        // The epoch a session gets if Redis holds none for it (first use, or lost).
        let epoch = self.history.borrow_mut().new_epoch();
        let id = self.await_answers(1);
        let sent = bridge.send(BridgeMsg::Publish {
            from: self.id,
            id,
            events,
            epoch,
        });
        if sent.is_err() {
            self.pending_publishes.borrow_mut().remove(&id);
            return Err(Refusal::redis_unavailable());
        }
        match self.answers(id).await {
            Some(receipts) => {
                self.stats.add_events(n as u64);
                for _ in receipts.iter().filter(|r| r.duplicate) {
                    self.stats.dedupe_hit();
                }
                Ok(receipts)
            }
            None => Err(Refusal::redis_unavailable()),
        }
    }

    /// Routes a validated batch: local events now, others to their owners, all or
    /// nothing; then waits for the owners' receipts.
    async fn publish_local(
        self: &Rc<Self>,
        batch: &Arc<PublishBatch>,
        ids: IdSource,
        wait_delivered: bool,
    ) -> Result<Vec<Receipt>, Refusal> {
        let accepted_at = Instant::now();
        let n = batch.events.len();
        let shards = self.node.router.shards();
        let mut local: Vec<u32> = Vec::new();
        let mut remote: Vec<Vec<u32>> = vec![Vec::new(); shards];
        for (i, ev) in batch.events.iter().enumerate() {
            let owner = shard_for(batch.session(ev), shards);
            if owner == self.id {
                local.push(i as u32);
            } else {
                remote[owner].push(i as u32);
            }
        }
        let reserved_bytes = batch.body.len();
        let others = remote.iter().filter(|evs| !evs.is_empty()).count();
        // Only answers from other shards are awaited; a request this shard owns
        // whole registers nothing.
        let id = if others > 0 {
            self.await_answers(others)
        } else {
            u64::MAX
        };
        let groups: Vec<(usize, DeliverMsg)> = remote
            .into_iter()
            .enumerate()
            .filter(|(_, evs)| !evs.is_empty())
            .map(|(to, events)| {
                (
                    to,
                    DeliverMsg {
                        batch: batch.clone(),
                        events,
                        accepted_at,
                        reserved_bytes,
                        reply: Some((self.id, id)),
                        id_shard: ids.shard,
                        id_base: ids.base,
                        wait_delivered,
                    },
                )
            })
            .collect();
        if !groups.is_empty() {
            if let Err(e) = self.node.router.dispatch(groups) {
                self.pending_publishes.borrow_mut().remove(&id);
                tracing::warn!(shard = self.id, error = %e, "publish refused");
                return Err(Refusal::unavailable("the relay is overloaded; retry later"));
            }
        }
        let mut receipts = Vec::with_capacity(local.len());
        if !local.is_empty() {
            self.drain_inbox();
            for i in local {
                if let Some(r) = self.deliver(batch, i, accepted_at, ids, wait_delivered) {
                    receipts.push(r);
                }
            }
        }
        self.stats.add_events(n as u64);
        if others == 0 {
            return Ok(receipts);
        }
        match self.answers(id).await {
            Some(more) => {
                receipts.extend(more);
                Ok(receipts)
            }
            // The events are accepted and will be delivered; only the receipts are
            // late. A retry with the same ids is deduplicated.
            None => Err(Refusal::unavailable(
                "the relay is overloaded; retry with the same event ids",
            )),
        }
    }

    /// Completes an upgrade on this shard, or hands the socket to its owner.
    pub fn place_socket(
        self: &Rc<Self>,
        stream: TcpStream,
        upgrade: AcceptedUpgrade,
    ) -> Result<(), Box<(TcpStream, Refusal)>> {
        let owner = shard_for(&upgrade.claims.session, self.node.router.shards());
        if owner == self.id {
            self.start_socket(stream, upgrade);
            return Ok(());
        }
        // SAFETY: dup() of a descriptor we own; the duplicate is owned by `fd` only.
        let dup = unsafe { libc::dup(std::os::fd::AsRawFd::as_raw_fd(&stream)) };
        if dup < 0 {
            return Err(Box::new((
                stream,
                Refusal::unavailable("cannot hand the socket over"),
            )));
        }
        // SAFETY: `dup` is a valid, fresh descriptor.
        let fd = unsafe { OwnedFd::from_raw_fd(dup) };
        match self
            .node
            .router
            .send(owner, ShardMsg::Adopt(Box::new(AdoptMsg { fd, upgrade })))
        {
            Ok(()) => {
                self.stats.handoff();
                Ok(())
            }
            Err((e, _)) => {
                tracing::warn!(shard = self.id, error = %e, "socket handoff refused");
                Err(Box::new((
                    stream,
                    Refusal::unavailable("the relay is overloaded; retry later"),
                )))
            }
        }
    }

    fn adopt(self: &Rc<Self>, msg: AdoptMsg) {
        if self.is_draining() {
            self.node.release_upgrade(msg.upgrade.tenant.as_deref());
            return;
        }
        // SAFETY: the descriptor was handed to us whole; nobody else closes it.
        let stream = unsafe { TcpStream::from_raw_fd(msg.fd.into_raw_fd()) };
        self.start_socket(stream, msg.upgrade);
    }

    fn start_socket(self: &Rc<Self>, stream: TcpStream, mut upgrade: AcceptedUpgrade) {
        // Sockets per session: all of a session's sockets are here, so this count
        // is the node's.
        let max = self.node.limiters.config.max_sockets_per_session;
        let in_session = self.registry.borrow().session_size(&upgrade.claims.session);
        if in_session >= max {
            self.stats.rate_limited("session");
            self.stats.upgrade_refused(429);
            self.node.release_upgrade(upgrade.tenant.as_deref());
            let reply =
                Refusal::rate_limited("too many sockets for this session").to_response(false);
            let mut stream = stream;
            spawn_guarded(self.id, "refusal", async move {
                use futures_lite::AsyncWriteExt;
                let _ = stream.write_all(&reply).await;
            });
            return;
        }
        let id = self.next_socket.get();
        self.next_socket.set(id + 1);
        let now = mono_ms();
        let session = self.registry.borrow().intern(&upgrade.claims.session);
        let state = Rc::new(SocketState::new(
            id,
            session.clone(),
            self.settings().verifier.expires_at(&upgrade.claims),
            now,
        ));
        state.fd.set(std::os::fd::AsRawFd::as_raw_fd(&stream));
        let conn_id = format!("{}-{}-{id}", self.node.node_tag, self.id);
        let hello = PendingHello {
            socket: state.clone(),
            response: upgrade.response().into_boxed_slice(),
            conn_id: conn_id.into_boxed_str(),
            since: upgrade.since,
            fetching: false,
        };
        // With Redis, the welcome waits until the session's subscription is live
        // and its position known, so no event published after it can be missed.
        let live = {
            let mut history = self.history.borrow_mut();
            let key = history.key(&session);
            let live = match &self.node.bridge {
                None => {
                    history.stream(&key, Instant::now());
                    true
                }
                Some(bridge) => match history.get(&session) {
                    Some(stream) => stream.live,
                    None => {
                        history.start_pending(&key, Instant::now());
                        let msg = BridgeMsg::Subscribe {
                            from: self.id,
                            session: session.to_string(),
                        };
                        if bridge.send(msg).is_err() {
                            state.request_close(Disconnect::Overloaded);
                        }
                        false
                    }
                },
            };
            history.socket_joined(&session);
            live
        };
        {
            let mut reg = self.registry.borrow_mut();
            reg.add_pending(hello);
            self.stats.connected.set(reg.socket_count() as u64);
            self.stats.sessions.set(reg.session_count() as u64);
        }
        if live {
            let hello = self.registry.borrow_mut().take_pending(&session, Some(id));
            for h in hello {
                self.greet(h);
            }
        }
        let guard = SocketGuard {
            shard: self.clone(),
            state,
            reason: Disconnect::IoError,
            tenant: upgrade.tenant.take().map(String::into_boxed_str),
        };
        spawn_guarded(self.id, "socket", crate::ws::conn::run(guard, stream));
    }

    /// Greets every socket of `session` that waits for its stream (not those
    /// waiting for events fetched from Redis).
    fn greet_pending(self: &Rc<Self>, session: &str) {
        let waiting = self.registry.borrow_mut().take_pending(session, None);
        for h in waiting {
            if h.fetching {
                self.registry.borrow_mut().repend(h);
            } else {
                self.greet(h);
            }
        }
    }

    /// Sends a socket its 101 and welcome (with the stream's position) and, when it
    /// resumes, the events it missed or a resync; from then on it gets events.
    fn greet(self: &Rc<Self>, mut hello: PendingHello) {
        let session = hello.socket.session.clone();
        let pos = self
            .history
            .borrow()
            .position(&session)
            .unwrap_or(StreamPos { epoch: 0, seq: 0 });
        let mut replay = Vec::new();
        let mut resync = None;
        if let Some(since) = hello.since {
            let max = self.settings().live.limits.max_outbound_bytes;
            let resume = self.history.borrow().resume(&session, since, max);
            match resume {
                Resume::UpToDate => {}
                Resume::Replay(frames) => replay = frames,
                Resume::Resync(ResyncReason::History)
                    if self.node.config.history.store == HistoryStore::Redis
                        && since.epoch == pos.epoch =>
                {
                    // The Redis Stream may reach further back than this node's ring.
                    if let Some(bridge) = &self.node.bridge {
                        let msg = BridgeMsg::Fetch {
                            from: self.id,
                            session: session.to_string(),
                            after: since,
                            purpose: FetchPurpose::Resume {
                                socket: hello.socket.id,
                            },
                        };
                        if bridge.send(msg).is_ok() {
                            hello.fetching = true;
                            self.registry.borrow_mut().repend(hello);
                            return;
                        }
                    }
                    resync = Some(ResyncReason::History);
                }
                Resume::Resync(reason) => resync = Some(reason),
            }
        }
        self.send_hello(hello, pos, &replay, resync);
    }

    /// Queues the 101, the welcome, then the replay or the resync, and makes the
    /// socket receive events from now on.
    fn send_hello(
        &self,
        hello: PendingHello,
        pos: StreamPos,
        replay: &[Rc<EncodedFrame>],
        resync: Option<ResyncReason>,
    ) {
        let session = &hello.socket.session;
        let mut first = Vec::from(hello.response);
        // Echo mode serves conformance suites, which expect only their own messages.
        if !self.node.config.echo {
            first.extend_from_slice(&welcome_frame(session, &hello.conn_id, pos));
        }
        // The 101 and the welcome leave in one write, as one queue entry.
        hello
            .socket
            .push_control(Outgoing::Owned(first.into_boxed_slice()));
        if let Some(reason) = resync {
            let frame = resync_frame(session, pos);
            hello
                .socket
                .push_control(Outgoing::Owned(frame.into_boxed_slice()));
            self.stats.resync(reason, 1);
        } else if !replay.is_empty() {
            for f in replay {
                hello.socket.push_control(Outgoing::Replay(f.clone()));
            }
            self.stats.replay(replay.len() as u64);
        }
        self.registry.borrow_mut().welcome(hello.socket);
    }

    /// Closes a socket that was never welcomed: its 101 goes first, so the client
    /// sees a proper close with `reason`, not bytes before a handshake.
    fn abandon(&self, hello: PendingHello, reason: Disconnect) {
        hello.socket.push_control(Outgoing::Owned(hello.response));
        hello.socket.request_close(reason);
        self.registry.borrow_mut().welcome(hello.socket);
    }

    /// Events read back from Redis for a resuming socket: with the ring's newer
    /// frames they must cover everything after its position, else it resyncs.
    fn fetched(
        self: &Rc<Self>,
        session: &str,
        after: StreamPos,
        purpose: FetchPurpose,
        payloads: Option<Vec<Vec<u8>>>,
    ) {
        let socket = match purpose {
            FetchPurpose::Resume { socket } => socket,
            FetchPurpose::CatchUp { target } => return self.caught_up(session, target, payloads),
        };
        let Some(hello) = self
            .registry
            .borrow_mut()
            .take_pending(session, Some(socket))
            .pop()
        else {
            return;
        };
        let Some(pos) = self.history.borrow().position(session) else {
            return;
        };
        let now = Instant::now();
        let now_ns = unix_now_ns();
        let mut frames: Vec<Rc<EncodedFrame>> = Vec::new();
        for p in payloads.unwrap_or_default() {
            if let Some((f, at)) = frame_from_remote(&p, now_ns, now) {
                if at.epoch == pos.epoch && at.seq > after.seq && at.seq <= pos.seq {
                    frames.push(Rc::new(f));
                }
            }
        }
        // The ring holds what arrived here; Redis what came before it.
        let max = self.settings().live.limits.max_outbound_bytes;
        let from_ring = frames.last().map_or(after, |f| StreamPos {
            epoch: pos.epoch,
            seq: f.seq,
        });
        match self.history.borrow().resume(session, from_ring, max) {
            Resume::UpToDate => {}
            Resume::Replay(more) => frames.extend(more),
            Resume::Resync(_) => frames.clear(),
        }
        let bytes: usize = frames.iter().map(|f| f.len()).sum();
        let complete = after.seq <= pos.seq
            && bytes <= max
            && frames.len() as u64 == pos.seq - after.seq
            && frames
                .iter()
                .zip(after.seq + 1..)
                .all(|(f, seq)| f.seq == seq);
        if complete {
            self.send_hello(hello, pos, &frames, None);
        } else {
            self.send_hello(hello, pos, &[], Some(ResyncReason::History));
        }
    }

    /// Pings idle sockets, closes dead and expired ones, and reaps closing ones.
    async fn housekeeping(self: Rc<Self>) {
        let mut ticks = 0u64;
        loop {
            glommio::timer::sleep(HOUSEKEEPING_TICK).await;
            let settings = self.settings();
            let limits = &settings.live.limits;
            ticks += 1;
            if self.id == 0 && ticks % LIMITER_SWEEP_TICKS == 0 {
                self.node.limiters.forget_idle();
            }
            if ticks % HISTORY_SWEEP_TICKS == 0 {
                self.sweep_history();
            }
            let now = mono_ms();
            let unix = unix_now();
            let ping_interval = limits.ping_interval.as_millis() as u64;
            let ping_timeout = limits.ping_timeout.as_millis() as u64;
            // A socket still waiting for its stream (Redis away) is not kept forever.
            let stale = self
                .registry
                .borrow_mut()
                .take_pending_since(now.saturating_sub(PENDING_LIMIT.as_millis() as u64));
            for hello in stale {
                self.abandon(hello, Disconnect::Overloaded);
            }
            let registry = self.registry.borrow();
            for s in registry.welcomed() {
                if s.is_closing() {
                    let deadline = s.close_deadline.get();
                    if deadline != 0 && deadline <= now {
                        s.wake();
                    }
                    continue;
                }
                let silent = now.saturating_sub(s.last_heard.get());
                if s.expires_at.get() <= unix {
                    s.request_close(Disconnect::TokenExpired);
                } else if silent >= ping_timeout {
                    s.request_close(Disconnect::Timeout);
                } else if silent >= ping_interval
                    && now.saturating_sub(s.last_ping.get()) >= ping_interval
                {
                    s.last_ping.set(now);
                    s.push_control(Outgoing::Static(PING_FRAME));
                }
            }
        }
    }

    /// Forgets old history and idle streams; with Redis, gives up their channels.
    fn sweep_history(&self) {
        let forgotten = {
            let mut history = self.history.borrow_mut();
            history.sweep(Instant::now());
            history.take_forgotten()
        };
        if let Some(bridge) = &self.node.bridge {
            for session in forgotten {
                let msg = BridgeMsg::Unsubscribe {
                    session: session.to_string(),
                };
                if bridge.send(msg).is_err() {
                    tracing::warn!(
                        shard = self.id,
                        "unsubscribe not queued; the bridge is behind"
                    );
                }
            }
        }
    }

    /// Counters of every shard, merged. Waits at most [`SNAPSHOT_TIMEOUT`] for the
    /// others; a wedged shard leaves its part out rather than hanging the scrape.
    pub async fn node_snapshot(self: &Rc<Self>) -> StatsSnapshot {
        let mut merged = self.snapshot();
        merged.redis = self.node.bridge.as_ref().map(|b| RedisFigures {
            connected: b.is_connected(),
            reconnects: b.status.reconnects.load(Ordering::Relaxed),
        });
        let shards = self.node.router.shards();
        if shards == 1 {
            return merged;
        }
        let id = self.next_snapshot.get();
        self.next_snapshot.set(id + 1);
        let mut asked = 0;
        for to in (0..shards).filter(|&s| s != self.id) {
            if self
                .node
                .router
                .send(to, ShardMsg::SnapshotRequest { from: self.id, id })
                .is_ok()
            {
                asked += 1;
            }
        }
        self.pending_snapshots.borrow_mut().insert(
            id,
            PendingSnapshot {
                remaining: asked,
                merged: StatsSnapshot::default(),
                waker: None,
            },
        );
        let wait = futures_lite::future::poll_fn(|cx| {
            let mut pending = self.pending_snapshots.borrow_mut();
            match pending.get_mut(&id) {
                Some(p) if p.remaining > 0 => {
                    p.waker = Some(cx.waker().clone());
                    Poll::Pending
                }
                _ => Poll::Ready(()),
            }
        });
        let _ = glommio::timer::timeout(SNAPSHOT_TIMEOUT, async {
            wait.await;
            Ok(())
        })
        .await;
        if let Some(p) = self.pending_snapshots.borrow_mut().remove(&id) {
            merged.merge(&p.merged);
        }
        merged
    }
}

/// Unregisters a socket when its task ends, normally or by a panic, so a bug in
/// one socket's handling never leaves a ghost in the registry or the counters.
pub struct SocketGuard {
    pub shard: Rc<Shard>,
    pub state: Rc<SocketState>,
    /// Set by the task when it ends normally; a panic leaves `IoError`.
    pub reason: Disconnect,
    /// The tenant whose socket slot this socket holds.
    pub tenant: Option<Box<str>>,
}

impl Drop for SocketGuard {
    fn drop(&mut self) {
        let shard = &self.shard;
        if let Ok(mut reg) = shard.registry.try_borrow_mut() {
            reg.remove(&self.state);
            shard.stats.connected.set(reg.socket_count() as u64);
            shard.stats.sessions.set(reg.session_count() as u64);
        }
        // The stream lingers for the history's age, so the client can resume; its
        // Redis subscription goes when housekeeping forgets it.
        if let Ok(mut history) = shard.history.try_borrow_mut() {
            history.socket_left(&self.state.session, Instant::now());
        }
        shard.stats.disconnect(self.reason);
        shard.node.release_upgrade(self.tenant.as_deref());
        tracing::debug!(
            shard = shard.id,
            socket = self.state.id,
            reason = self.reason.metric_reason(),
            "socket closed"
        );
    }
}

pin_project_lite::pin_project! {
    /// A connection's future with its panic caught and logged. A named future rather
    /// than an async block, which would hold the connection's future twice over.
    struct Contained<F> {
        #[pin]
        inner: futures_lite::future::CatchUnwind<std::panic::AssertUnwindSafe<F>>,
        shard: usize,
        what: &'static str,
    }
}

impl<F: std::future::Future<Output = ()>> std::future::Future for Contained<F> {
    type Output = ();
    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<()> {
        let this = self.project();
        this.inner.poll(cx).map(|result| {
            if let Err(panic) = result {
                let msg = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                tracing::error!(shard = *this.shard, what = *this.what, panic = %msg,
                    "connection task panicked; connection dropped");
            }
        })
    }
}

/// Spawns a per-connection task whose panic is logged and contained: one bad
/// connection must never take the shard, and with it the node, down.
pub fn spawn_guarded(
    shard: usize,
    what: &'static str,
    fut: impl std::future::Future<Output = ()> + 'static,
) {
    use futures_lite::FutureExt;
    glommio::spawn_local(Contained {
        inner: std::panic::AssertUnwindSafe(fut).catch_unwind(),
        shard,
        what,
    })
    .detach();
}

async fn accept_loop(shard: Rc<Shard>, listener: TcpListener, admin: bool) {
    loop {
        match listener.accept().await {
            Ok(stream) => {
                let _ = stream.set_nodelay(true);
                let s = shard.clone();
                spawn_guarded(shard.id, "http", crate::http::conn::serve(s, stream, admin));
            }
            Err(e) => {
                // Out of descriptors or memory: back off instead of spinning.
                tracing::warn!(shard = shard.id, error = %e, "accept failed");
                glommio::timer::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}
