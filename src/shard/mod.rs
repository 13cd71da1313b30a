//! A shard: one glommio executor pinned to one core, owning the sockets whose
//! sessions [`crate::router::shard_for`] gives it.
//!
//! It runs four kinds of tasks: accept loops (one per listener), one task per
//! connection (`http::conn`, then `ws::conn` after an upgrade), the inbox loop
//! (messages from other shards), and housekeeping (pings, expiry, dead sockets).
//! Shard state is `Rc`/`Cell` and never leaves its thread; what other threads see
//! is [`NodeShared`]. This module may not know about Redis or the CLI.

pub mod registry;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use glommio::net::{TcpListener, TcpStream};

use crate::auth::JwtVerifier;
use crate::bridge::{BridgeHandle, BridgeMsg};
use crate::config::Config;
use crate::http::publish::{EventSpans, PublishBatch, PublishParser};
use crate::http::response::Refusal;
use crate::metrics::{RedisFigures, ShardStats, StatsSnapshot};
use crate::router::{shard_for, AdoptMsg, DeliverMsg, Inbox, Router, ShardMsg};
use crate::ws::close::Disconnect;
use crate::ws::frame::{
    encode_event, frame_from_remote, remote_payload, resync_frame, EncodedFrame, EventParts,
    PING_FRAME,
};
use crate::ws::upgrade::AcceptedUpgrade;
use registry::{mono_ms, Outgoing, Registry, SocketState};

/// How often housekeeping looks at every socket: the granularity of pings, token
/// expiry and dead-socket detection.
pub const HOUSEKEEPING_TICK: Duration = Duration::from_millis(250);
/// Housekeeping ticks between sweeps of idle rate-limiter keys (10 s).
const LIMITER_SWEEP_TICKS: u64 = 40;
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

/// A publish waiting for the bridge's answer.
#[derive(Default)]
struct PendingPublish {
    done: Option<bool>,
    waker: Option<Waker>,
}

/// How long a publish waits for Redis before answering 503.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(5);

/// What a shard reads from the configuration that SIGHUP may change. Replaced
/// whole by a `Reload` message, never mutated: readers hold an `Rc` for as long as
/// they need a consistent view.
pub struct Settings {
    pub config: Arc<Config>,
    pub verifier: JwtVerifier,
}

impl Settings {
    pub fn new(config: Arc<Config>) -> Settings {
        let verifier = JwtVerifier::new(&config.jwt_secrets, &config.jwt);
        Settings { config, verifier }
    }
}

/// One shard's state. Lives in an `Rc` on its executor.
pub struct Shard {
    pub id: usize,
    pub node: Arc<NodeShared>,
    pub stats: ShardStats,
    pub registry: RefCell<Registry>,
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
) -> EventParts<'a> {
    EventParts {
        session: batch.session(ev),
        event: batch.bytes(&ev.event),
        id: ev.id.as_ref().map(|r| batch.bytes(r)),
        generated_id: generated,
        data: batch.bytes(&ev.data),
    }
}

/// Nanoseconds since the UNIX epoch.
pub fn unix_now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// Seconds since the UNIX epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Shard {
    pub fn new(id: usize, node: Arc<NodeShared>, inbox: Inbox) -> Shard {
        let settings = Rc::new(Settings::new(Arc::new(node.config.clone())));
        Shard {
            id,
            node,
            stats: ShardStats::default(),
            registry: RefCell::new(Registry::default()),
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
        let sockets: Vec<Rc<SocketState>> = self.registry.borrow().all().cloned().collect();
        tracing::info!(shard = self.id, sockets = sockets.len(), "draining");
        for s in &sockets {
            s.request_close(Disconnect::Draining);
        }
        drop(sockets);
        let deadline = Instant::now() + self.settings().config.limits.drain_timeout;
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
                for &i in &d.events {
                    if let Some(ev) = d.batch.events.get(i as usize) {
                        self.deliver(&d.batch, ev, d.accepted_at);
                    }
                }
            }
            ShardMsg::Adopt(a) => self.adopt(*a),
            ShardMsg::Remote { events } => {
                let now = Instant::now();
                let now_ns = unix_now_ns();
                for ev in events {
                    let registry = self.registry.borrow();
                    let Some(sockets) = registry.sockets_of(&ev.session) else {
                        continue;
                    };
                    match frame_from_remote(&ev.payload, now_ns, now) {
                        Some(frame) => self.fan_out(sockets, &Rc::new(frame)),
                        None => {
                            tracing::warn!(shard = self.id, "malformed event from redis dropped")
                        }
                    }
                }
            }
            ShardMsg::PublishDone { id, ok } => {
                if let Some(p) = self.pending_publishes.borrow_mut().get_mut(&id) {
                    p.done = Some(ok);
                    if let Some(w) = p.waker.take() {
                        w.wake();
                    }
                }
            }
            ShardMsg::Subscribed { sessions } => {
                for session in sessions {
                    let waiting = self.registry.borrow_mut().set_ready(&session);
                    for (socket, hello) in waiting {
                        socket.push_control(Outgoing::Owned(hello));
                    }
                }
            }
            ShardMsg::Resync { sessions } => {
                let registry = self.registry.borrow();
                for session in sessions {
                    if let Some(sockets) = registry.sockets_of(&session) {
                        let frame = resync_frame(&session);
                        for s in sockets {
                            s.push_control(Outgoing::Owned(frame.clone().into_boxed_slice()));
                        }
                    }
                }
            }
            ShardMsg::SnapshotRequest { from, id } => {
                let snapshot = Box::new(self.stats.snapshot());
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

    /// Writes one event to every local socket of its session.
    fn deliver(&self, batch: &PublishBatch, ev: &EventSpans, at: Instant) {
        let session = batch.session(ev);
        let registry = self.registry.borrow();
        let Some(sockets) = registry.sockets_of(session) else {
            return;
        };
        let generated = self.id_unless_given(ev);
        let frame = Rc::new(encode_event(&event_parts(batch, ev, &generated), at));
        self.fan_out(sockets, &frame);
    }

    /// Queues one frame on every socket of a session.
    fn fan_out(&self, sockets: &[Rc<SocketState>], frame: &Rc<EncodedFrame>) {
        let max = self.settings().config.limits.max_outbound_bytes;
        for s in sockets {
            if !s.push_event(frame, max) {
                // Full queue: write what the kernel takes now, then judge.
                let flushed = crate::ws::conn::write_queue_now(s, &self.stats);
                if flushed.is_err() || !s.push_event(frame, max) {
                    s.request_close(Disconnect::SlowConsumer);
                }
            }
        }
    }

    /// A relay-made id for an event the publisher gave none; empty otherwise.
    fn id_unless_given(&self, ev: &EventSpans) -> String {
        if ev.id.is_some() {
            return String::new();
        }
        let n = self.next_event.get();
        self.next_event.set(n + 1);
        format!("{}-{}-{n}", self.node.node_tag, self.id)
    }

    /// Accepts a validated batch: through Redis when the node has a bridge, else
    /// straight to the owning shards. Returns the number of events accepted.
    pub async fn publish(self: &Rc<Self>, batch: PublishBatch) -> Result<usize, Refusal> {
        match &self.node.bridge {
            Some(bridge) => self.publish_via_redis(bridge, batch).await,
            None => self.publish_local(batch),
        }
    }

    /// Hands the batch to the bridge and waits until Redis took all of it: the 202
    /// promises that every node holding the session will see the events.
    async fn publish_via_redis(
        self: &Rc<Self>,
        bridge: &BridgeHandle,
        batch: PublishBatch,
    ) -> Result<usize, Refusal> {
        if !bridge.is_connected() {
            return Err(Refusal::redis_unavailable());
        }
        let n = batch.events.len();
        let accepted_ns = unix_now_ns();
        let events: Vec<(String, Vec<u8>)> = batch
            .events
            .iter()
            .map(|ev| {
                let generated = self.id_unless_given(ev);
                let payload = remote_payload(&event_parts(&batch, ev, &generated), accepted_ns);
                (batch.session(ev).to_string(), payload)
            })
            .collect();
        let id = self.next_publish.get();
        self.next_publish.set(id + 1);
        self.pending_publishes
            .borrow_mut()
            .insert(id, PendingPublish::default());
        let sent = bridge.send(BridgeMsg::Publish {
            from: self.id,
            id,
            events,
        });
        let outcome = if sent.is_err() {
            None
        } else {
            let wait = futures_lite::future::poll_fn(|cx| {
                let mut pending = self.pending_publishes.borrow_mut();
                match pending.get_mut(&id) {
                    Some(PendingPublish { done: Some(ok), .. }) => Poll::Ready(*ok),
                    Some(p) => {
                        p.waker = Some(cx.waker().clone());
                        Poll::Pending
                    }
                    None => Poll::Ready(false),
                }
            });
            glommio::timer::timeout(PUBLISH_TIMEOUT, async { Ok(wait.await) })
                .await
                .ok()
        };
        self.pending_publishes.borrow_mut().remove(&id);
        match outcome {
            Some(true) => {
                self.stats.add_events(n as u64);
                Ok(n)
            }
            _ => Err(Refusal::redis_unavailable()),
        }
    }

    /// Routes a validated batch: local events now, others to their owners, all or
    /// nothing.
    fn publish_local(self: &Rc<Self>, batch: PublishBatch) -> Result<usize, Refusal> {
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
        let batch = Arc::new(batch);
        let reserved_bytes = batch.body.len();
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
                    },
                )
            })
            .collect();
        if !groups.is_empty() {
            self.node.router.dispatch(groups).map_err(|e| {
                tracing::warn!(shard = self.id, error = %e, "publish refused");
                Refusal::unavailable("the relay is overloaded; retry later")
            })?;
        }
        if !local.is_empty() {
            self.drain_inbox();
            for i in local {
                self.deliver(&batch, &batch.events[i as usize], accepted_at);
            }
        }
        self.stats.add_events(n as u64);
        Ok(n)
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
        let in_session = self
            .registry
            .borrow()
            .sockets_of(&upgrade.claims.session)
            .map_or(0, <[_]>::len);
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
            session,
            self.settings().verifier.expires_at(&upgrade.claims),
            now,
        ));
        state.fd.set(std::os::fd::AsRawFd::as_raw_fd(&stream));
        let conn_id = format!("{}-{}-{id}", self.node.node_tag, self.id);
        // The 101 and the welcome leave in one write, as one queue entry.
        let mut hello = upgrade.response();
        // Echo mode serves conformance suites, which expect only their own messages.
        if !self.node.config.echo {
            hello.extend_from_slice(&crate::ws::frame::welcome_frame(
                &upgrade.claims.session,
                &conn_id,
            ));
        }
        let hello = hello.into_boxed_slice();
        {
            let mut reg = self.registry.borrow_mut();
            let added = reg.add(state.clone(), self.node.bridge.is_none());
            if added.ready {
                state.push_control(Outgoing::Owned(hello));
            } else {
                // With Redis, the welcome waits until the session's subscription is
                // live, so no event published after it can be missed.
                reg.wait_for_ready(state.clone(), hello);
            }
            if added.first {
                if let Some(bridge) = &self.node.bridge {
                    let msg = BridgeMsg::Subscribe {
                        from: self.id,
                        session: upgrade.claims.session.clone(),
                    };
                    if bridge.send(msg).is_err() {
                        state.request_close(Disconnect::Overloaded);
                    }
                }
            }
            self.stats.connected.set(reg.socket_count() as u64);
            self.stats.sessions.set(reg.session_count() as u64);
        }
        let guard = SocketGuard {
            shard: self.clone(),
            state,
            reason: Disconnect::IoError,
            tenant: upgrade.tenant.take().map(String::into_boxed_str),
        };
        spawn_guarded(self.id, "socket", crate::ws::conn::run(guard, stream));
    }

    /// Pings idle sockets, closes dead and expired ones, and reaps closing ones.
    async fn housekeeping(self: Rc<Self>) {
        let mut ticks = 0u64;
        loop {
            glommio::timer::sleep(HOUSEKEEPING_TICK).await;
            let settings = self.settings();
            let limits = &settings.config.limits;
            ticks += 1;
            if self.id == 0 && ticks % LIMITER_SWEEP_TICKS == 0 {
                self.node.limiters.forget_idle();
            }
            let now = mono_ms();
            let unix = unix_now();
            let ping_interval = limits.ping_interval.as_millis() as u64;
            let ping_timeout = limits.ping_timeout.as_millis() as u64;
            let registry = self.registry.borrow();
            for s in registry.all() {
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

    /// Counters of every shard, merged. Waits at most [`SNAPSHOT_TIMEOUT`] for the
    /// others; a wedged shard leaves its part out rather than hanging the scrape.
    pub async fn node_snapshot(self: &Rc<Self>) -> StatsSnapshot {
        let mut merged = self.stats.snapshot();
        merged.redis = self.node.bridge.as_ref().map(|b| RedisFigures {
            connected: b.is_connected(),
            reconnects: b.status.reconnects.load(Ordering::Relaxed),
            resyncs: b.status.resyncs.load(Ordering::Relaxed),
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
            let last = reg.remove(&self.state);
            shard.stats.connected.set(reg.socket_count() as u64);
            shard.stats.sessions.set(reg.session_count() as u64);
            if let (true, Some(bridge)) = (last, &shard.node.bridge) {
                let msg = BridgeMsg::Unsubscribe {
                    session: self.state.session.to_string(),
                };
                if bridge.send(msg).is_err() {
                    tracing::warn!(
                        shard = shard.id,
                        "unsubscribe not queued; the bridge is behind"
                    );
                }
            }
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
