//! A shard: one glommio executor pinned to one core, owning the sockets whose
//! sessions [`crate::router::shard_for`] gives it, and those sessions' streams.
//!
//! This file holds the shard's state ([`Shard`]), what every shard shares
//! ([`NodeShared`]) and the reloadable [`Settings`]; each job has a room of its own,
//! as `impl Shard` blocks:
//! - `inbox`: the run loop, accept loops, the inbox and its one `handle` match, drain, scrapes
//! - `publish`: the publish front end; it answers [`ctx::Published`] or
//!   [`ctx::AcceptError`], and `http` renders them
//! - `pending`: one table for requests waiting on answers (publish receipts, scrapes)
//! - `deliver`: sequencing and fan-out, resync frames
//! - `parked`: upgraded WebSockets with no task each, turned by one driver task on
//!   epoll's reports (`crate::ready`) and their state's wakes.
//! - `flush`: writing fanned-out queues from one flusher task, not each socket's
//! - `catch_up`: reading missed events back from Redis, or resyncing
//! - `sockets`: placement (handoff by `dup`), greeting, replay on resume
//! - `housekeeping`: pings, expiry, dead sockets, the history sweep, visiting only
//!   the subscribers `timers` says are due
//! - `timers`: the one deadline structure for the shard's subscribers
//! - `announce`: presence: counting subscribers in and out, the coalesced join and
//!   leave frames when due, the snapshot after a welcome, other nodes' shares, the
//!   query; [`presence`] is its pure table
//! - `retire`: moving subscribers off a transport SIGHUP switched off (1012, spread)
//! - `tasks`: panic containment for connection tasks
//! - [`history`]: each session's stream (pure bookkeeping); [`registry`]: sockets by session
//! - [`ctx`]: [`ctx::ConnCtx`], all a connection loop (`http::conn`, `ws::conn`) sees
//!   of the shard: its fields stay private to these rooms
//!
//! Shard state is `Rc`/`Cell` and never leaves its thread; what other threads see
//! is [`NodeShared`]. Redis is reached only through the bridge's channel
//! (`BridgeMsg`): no shard code holds a Redis connection or does blocking I/O. It
//! does not parse the CLI.

mod announce;
mod catch_up;
pub mod ctx;
mod deliver;
mod flush;
pub mod history;
mod housekeeping;
mod inbox;
mod parked;
mod pending;
pub mod presence;
mod publish;
pub mod registry;
mod retire;
mod socket;
mod sockets;
mod tasks;
mod timers;

pub use announce::{PresenceUnavailable, DEFAULT_PAGE, MAX_PAGE};
pub use registry::SocketGuard;
pub use tasks::spawn_guarded;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub use crate::clock::{unix_now, unix_now_ns};

use crate::auth::JwtVerifier;
use crate::bridge::BridgeHandle;
use crate::config::{Config, LiveConfig};
use crate::http::publish::{EventSpans, PublishBatch, PublishParser};
use crate::metrics::{ShardStats, StatsSnapshot};
use crate::ready::ReadySet;
use crate::router::{Inbox, NodeDelivery, Receipt, Router};
use crate::ws::frame::{EncodedFrame, EventParts};
use history::{History, StreamPos};
use pending::Pending;
use registry::Registry;

/// The shortest nap of housekeeping between passes over due subscribers: the
/// granularity of pings, token expiry and dead-socket detection (a close grace or
/// a poll's deadline wakes it sooner).
pub const HOUSEKEEPING_TICK: Duration = Duration::from_millis(250);
/// Between sweeps of idle rate-limiter keys (shard 0, node-wide).
const LIMITER_SWEEP_EVERY: Duration = Duration::from_secs(10);
/// An event from Redis that arrived while earlier ones were being read back.
type HeldEvent = (EncodedFrame, StreamPos);

/// Events held for one session while its missed events are read back from Redis;
/// past this the catch-up is abandoned for a resync.
const CATCH_UP_HOLD: usize = 10_000;
/// How long a socket may wait for its session's stream before it is closed with
/// 1013 (try again later).
const PENDING_LIMIT: Duration = Duration::from_secs(10);
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
    /// Set on SIGTERM; `/readyz` answers 503 from then on (new work is refused
    /// only after `RELAY_DRAIN_READY_DELAY`, shard by shard).
    pub draining: AtomicBool,
    /// Prefix of relay-generated event ids, random per process.
    pub node_tag: String,
    /// The Redis bridge, when `REDIS_URL` is set.
    pub bridge: Option<BridgeHandle>,
    /// Rate limiters and caps that hold per node, the connection cap among them.
    pub limiters: Arc<crate::limiter::Limiters>,
}

impl NodeShared {
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }
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
/// How long a publish through Redis with `?wait=delivered` waits for the nodes'
/// counts once Redis placed its events; a node that has not answered by then is
/// counted late.
const DELIVERED_WAIT: Duration = Duration::from_secs(1);

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
    stats: ShardStats,
    registry: RefCell<Registry>,
    /// When each subscriber next needs housekeeping.
    timers: RefCell<timers::Timers<registry::SocketState>>,
    /// Wakes housekeeping when a deadline comes before its nap ends.
    alarm: housekeeping::Alarm,
    /// Sockets a fan-out left with bytes to write, for the flusher task.
    flushes: flush::Flushes,
    /// The epoll set that watches upgraded WebSockets' descriptors.
    ready: ReadySet,
    /// Upgraded WebSockets, turned by the driver task (`parked`).
    parked: parked::Parked,
    /// Sessions whose missed events are being read back from Redis, with the events
    /// that arrived meanwhile (held, in order, until the read-back is delivered).
    catching_up: RefCell<HashMap<Rc<str>, Vec<HeldEvent>>>,
    /// Each session's stream: position, resume history, dedupe ids.
    history: RefCell<History>,
    settings: RefCell<Rc<Settings>>,
    parser: RefCell<PublishParser>,
    /// Scratch for socket reads; never held across an await.
    read_scratch: RefCell<Vec<u8>>,
    inbox: Inbox,
    next_socket: Cell<u64>,
    next_event: Cell<u64>,
    /// Scrapes waiting for the other shards' counters.
    snapshots: Pending<StatsSnapshot>,
    /// Publishes waiting for receipts (from owning shards, or the bridge).
    publishes: Pending<Vec<Receipt>>,
    /// Publishes through Redis waiting for the nodes' delivery counts
    /// (`?wait=delivered`).
    deliveries: Pending<Vec<NodeDelivery>>,
    /// Who holds subscribers in the sessions this shard owns (`announce`'s).
    presence: RefCell<presence::Presence>,
    /// Presence queries waiting for the bridge's read of Redis.
    presence_reads: Pending<Option<Vec<crate::router::RemotePresence>>>,
    /// Presence queries waiting for the owning shard's answer.
    presence_answers: Pending<Option<Vec<u8>>>,
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
    pub fn new(id: usize, node: Arc<NodeShared>, inbox: Inbox, ready: ReadySet) -> Shard {
        let settings = Rc::new(Settings::new(Arc::new(node.config.live.clone())));
        let salt = xxhash_rust::xxh3::xxh3_64(
            format!("{}-{id}-{}", node.node_tag, unix_now_ns()).as_bytes(),
        );
        let mut history = History::new(node.config.history.clone(), node.config.shards, salt);
        if node.bridge.is_none() {
            history = history.without_forgotten_report();
        }
        let presence = presence::Presence::new(
            node.config.presence.interval.as_millis() as u64,
            node.config.presence.max_users / node.config.shards.max(1),
        );
        Shard {
            id,
            node,
            stats: ShardStats::default(),
            registry: RefCell::new(Registry::default()),
            timers: RefCell::new(timers::Timers::default()),
            alarm: housekeeping::Alarm::default(),
            flushes: flush::Flushes::default(),
            ready,
            parked: parked::Parked::default(),
            catching_up: RefCell::new(HashMap::new()),
            history: RefCell::new(history),
            settings: RefCell::new(settings),
            parser: RefCell::new(PublishParser::default()),
            read_scratch: RefCell::new(vec![0u8; READ_CHUNK]),
            inbox,
            next_socket: Cell::new(0),
            next_event: Cell::new(0),
            snapshots: Pending::default(),
            publishes: Pending::default(),
            deliveries: Pending::default(),
            presence: RefCell::new(presence),
            presence_reads: Pending::default(),
            presence_answers: Pending::default(),
            draining: Cell::new(false),
            drain_signal: glommio::sync::Semaphore::new(0),
        }
    }

    /// The shard takes nothing new: a drain passed its ready delay.
    pub fn is_draining(&self) -> bool {
        self.draining.get()
    }

    /// `/readyz` answers 503: a drain began (even while still serving).
    pub fn is_unready(&self) -> bool {
        self.draining.get() || self.node.is_draining()
    }

    /// The current reloadable settings.
    pub fn settings(&self) -> Rc<Settings> {
        self.settings.borrow().clone()
    }
}
