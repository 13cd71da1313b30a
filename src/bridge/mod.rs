//! The Redis bridge: the only part of the relay that knows Redis exists.
//!
//! With `REDIS_URL` set, each node runs one bridge thread (a current-thread tokio
//! runtime driving redis-rs). Shards talk to it over a bounded crossbeam channel
//! ([`BridgeHandle::send`]); it talks to shards through the [`Router`], like any
//! other cross-core message.
//!
//! - **Publishing.** A shard hands over a validated request's events, encoded
//!   around their place in the stream; the bridge runs the publish script for every
//!   pending request's events in one pipeline, in arrival order. The script gives
//!   each event its session's next `seq` (and epoch), drops a retried id, keeps it
//!   in the session's Redis Stream with `--history redis`, and publishes it, all at
//!   once; each request is answered with its receipts only after Redis replied. The
//!   publishing node delivers its own events from its subscription, like every
//!   other node, so all nodes see one order and the same numbers.
//! - **Subscriptions follow session streams.** A shard asks for a session's channel
//!   when it makes the session's stream (its first local socket) and gives it up when
//!   it forgets the stream (the history's age after the last socket left); the
//!   bridge batches the changes and answers with each session's position. Channel
//!   names are a fixed prefix plus a validated session name in a hash tag; nothing
//!   user-supplied reaches a pattern subscription.
//! - **Outages.** Losing Redis (an error, a closed connection, or a ping that does
//!   not come back within its timeout) marks the node not ready, fails publishes
//!   fast, and reconnects with exponential backoff and jitter capped at 5 s. Back
//!   online, the bridge resubscribes the whole current set and sends every session's
//!   position; a shard whose stream fell behind catches up from the Redis Stream or
//!   resyncs its sockets (`{"type":"resync",…}`).
//! - **History.** `Fetch` reads a session's Redis Stream after a position, for a
//!   resuming socket or a catch-up.
//!
//! Every queue is bounded: the shard→bridge channel, and what the bridge keeps per
//! pending publish. Incoming events that a full shard inbox cannot take become a
//! resync for their session, never a silent loss.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};

use crate::router::{FetchPurpose, Receipt, RemoteEvent, Router, ShardMsg};
use crate::stream::StreamPos;

mod link;
use link::{Incoming, Link, Lost, Target};

/// Every session channel is this prefix plus the session name in braces (a Cluster
/// hash tag, so the channel and the session's keys share a slot).
pub const CHANNEL_PREFIX: &str = "relay:v1:s:";
/// Prefix of a session's keys: `relay:v1:{S}` (position), `relay:v1:{S}:h`
/// (history stream), `relay:v1:{S}:d:ID` (a dedupe id).
pub const KEY_PREFIX: &str = "relay:v1:";
/// Events read from a history stream for one resume, at most.
const FETCH_MAX: usize = 10_000;
/// Requests and subscription changes waiting for the bridge.
pub const BRIDGE_QUEUE: usize = 8192;
/// How often an idle bridge checks that Redis still answers.
const PING_EVERY: Duration = Duration::from_secs(1);
/// Reconnect backoff: first wait, and the cap.
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_CAP: Duration = Duration::from_secs(5);
/// Incoming messages routed per wake before the bridge looks at its queue again.
const INCOMING_BATCH: usize = 1024;
/// Pause between tries when a shard's inbox is full.
const SEND_PAUSE: Duration = Duration::from_micros(200);
/// Channels per SUBSCRIBE command when resubscribing a large set.
const SUBSCRIBE_CHUNK: usize = 1000;

/// One event on its way to Redis, before Redis places it in its session's stream.
#[derive(Debug)]
pub struct OutgoingEvent {
    pub session: String,
    /// The payload around the position: see `ws::frame::remote_parts`.
    pub head: Vec<u8>,
    pub tail: Vec<u8>,
    /// The publisher's id (its JSON literal), for dedupe.
    pub id: Option<Vec<u8>>,
}

/// What the publish script needs from the configuration.
#[derive(Debug, Clone, Copy)]
pub struct PublishRules {
    pub dedupe_secs: u64,
    /// Entries kept in each session's history stream; 0: no stream.
    pub history_len: usize,
}

/// What shards ask of the bridge.
#[derive(Debug)]
pub enum BridgeMsg {
    /// Place and publish `events`, then answer shard `from` with
    /// `ShardMsg::PublishDone { id }`. `epoch` starts a session Redis has no
    /// stream for.
    Publish {
        from: usize,
        id: u64,
        events: Vec<OutgoingEvent>,
        epoch: u64,
    },
    /// Read `session`'s history stream after `after`; answer `ShardMsg::Fetched`.
    Fetch {
        from: usize,
        session: String,
        after: StreamPos,
        purpose: FetchPurpose,
    },
    /// The session's position went back to `went_back` in Redis after shard `from`
    /// had reached `reached`: start a new epoch, then resync the session there.
    NewEpoch {
        from: usize,
        session: String,
        went_back: StreamPos,
        reached: u64,
    },
    /// The session's first local socket arrived on shard `from`.
    Subscribe { from: usize, session: String },
    /// The session's last local socket left.
    Unsubscribe { session: String },
}

/// Why the bridge could not start.
#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    #[error("REDIS_URL is invalid: {0}")]
    Url(redis::RedisError),
    #[error("cannot start the bridge thread: {0}")]
    Thread(std::io::Error),
}

/// Counters the bridge keeps; read by `/metrics` and `/readyz` from any shard.
#[derive(Debug, Default)]
pub struct BridgeStatus {
    pub connected: AtomicBool,
    pub reconnects: AtomicU64,
}

/// The shards' side of the bridge. Cheap to clone.
#[derive(Debug, Clone)]
pub struct BridgeHandle {
    tx: Sender<BridgeMsg>,
    wake: Arc<tokio::sync::Notify>,
    pub status: Arc<BridgeStatus>,
}

impl BridgeHandle {
    /// Queues a message; hands it back when the bridge is behind.
    pub fn send(&self, msg: BridgeMsg) -> Result<(), BridgeMsg> {
        match self.tx.try_send(msg) {
            Ok(()) => {
                self.wake.notify_one();
                Ok(())
            }
            Err(TrySendError::Full(m)) | Err(TrySendError::Disconnected(m)) => Err(m),
        }
    }

    pub fn is_connected(&self) -> bool {
        self.status.connected.load(Ordering::Acquire)
    }
}

/// The channel of a session.
pub fn channel_of(session: &str) -> String {
    format!("{CHANNEL_PREFIX}{{{session}}}")
}

/// The session a channel belongs to.
fn session_of(channel: &str) -> Option<&str> {
    channel
        .strip_prefix(CHANNEL_PREFIX)?
        .strip_prefix('{')?
        .strip_suffix('}')
}

/// The hash holding a session's epoch and last sequence number.
pub fn position_key(session: &str) -> String {
    format!("{KEY_PREFIX}{{{session}}}")
}

/// The stream holding a session's recent events (`--history redis`).
pub fn history_key(session: &str) -> String {
    format!("{KEY_PREFIX}{{{session}}}:h")
}

/// The key remembering one published id of a session. The id is hashed: ids are
/// publisher input, and keys stay short whatever they look like.
pub fn dedupe_key(session: &str, id: &[u8]) -> String {
    let h = xxhash_rust::xxh3::xxh3_128(id);
    format!("{KEY_PREFIX}{{{session}}}:d:{h:032x}")
}

/// Starts the bridge thread for `url`.
///
/// `cluster`: `url` is a comma-separated list of seed nodes of a Redis Cluster,
/// and the bridge uses sharded pub/sub.
/// `ca_pem`: CA certificates to trust for `rediss://` (else the system's roots).
pub fn start(
    url: &str,
    cluster: bool,
    ca_pem: Option<Vec<u8>>,
    rules: PublishRules,
    router: Router,
) -> Result<BridgeHandle, BridgeError> {
    // rustls needs one process-wide crypto provider; a second install is a no-op error.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let certs = || redis::TlsCertificates {
        client_tls: None,
        root_cert: ca_pem.clone(),
    };
    let target = if cluster {
        let seeds: Vec<String> = url.split(',').map(|u| u.trim().to_string()).collect();
        for seed in &seeds {
            redis::Client::open(seed.as_str()).map_err(BridgeError::Url)?;
        }
        Target::Cluster {
            seeds,
            certs: certs(),
        }
    } else if url.starts_with("rediss://") {
        Target::Standalone(redis::Client::build_with_tls(url, certs()).map_err(BridgeError::Url)?)
    } else {
        Target::Standalone(redis::Client::open(url).map_err(BridgeError::Url)?)
    };
    let (tx, rx) = crossbeam_channel::bounded(BRIDGE_QUEUE);
    let wake = Arc::new(tokio::sync::Notify::new());
    let status = Arc::new(BridgeStatus::default());
    let handle = BridgeHandle {
        tx,
        wake: wake.clone(),
        status: status.clone(),
    };
    let mut bridge = Bridge {
        target,
        rx,
        wake,
        status,
        router,
        rules,
        wanted: HashMap::new(),
        subscribed: HashSet::new(),
        owed_resync: HashSet::new(),
    };
    std::thread::Builder::new()
        .name("redis-bridge".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!(error = %e, "cannot start the bridge runtime");
                    return;
                }
            };
            rt.block_on(bridge.run());
        })
        .map_err(BridgeError::Thread)?;
    Ok(handle)
}

struct Bridge {
    target: Target,
    rx: Receiver<BridgeMsg>,
    wake: Arc<tokio::sync::Notify>,
    status: Arc<BridgeStatus>,
    router: Router,
    rules: PublishRules,
    /// Sessions some local socket needs, with the shard that owns them.
    wanted: HashMap<String, usize>,
    /// Sessions Redis confirmed we are subscribed to, on this connection.
    subscribed: HashSet<String>,
    /// Sessions that may have missed events and whose resync did not reach their
    /// shard yet (its inbox was full).
    owed_resync: HashSet<String>,
}

impl Bridge {
    async fn run(&mut self) {
        let mut backoff = BACKOFF_FIRST;
        let mut ever_connected = false;
        loop {
            match self.connected_period(&mut backoff).await {
                Ok(()) => return,
                Err(e) => {
                    if self.status.connected.swap(false, Ordering::AcqRel) {
                        tracing::warn!(error = %e, "redis lost; publishes answer 503 until it is back");
                        self.status.reconnects.fetch_add(1, Ordering::Relaxed);
                        ever_connected = true;
                    } else if !ever_connected {
                        tracing::warn!(error = %e, "cannot reach redis; retrying");
                    }
                }
            }
            // Everything subscribed so far may miss events from now on.
            let lost: Vec<String> = self.subscribed.drain().collect();
            self.owed_resync.extend(lost);
            let jitter = 0.5 + fastrand_f64();
            let wait = backoff.mul_f64(jitter).min(BACKOFF_CAP);
            self.idle_until(Instant::now() + wait).await;
            backoff = (backoff * 2).min(BACKOFF_CAP);
        }
    }

    /// While disconnected: fail publishes at once, keep track of subscriptions.
    async fn idle_until(&mut self, until: Instant) {
        loop {
            self.drain_while_down();
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            let _ = tokio::time::timeout(left, self.wake.notified()).await;
        }
    }

    fn drain_while_down(&mut self) {
        while let Ok(msg) = self.rx.try_recv() {
            match msg {
                BridgeMsg::Publish { from, id, .. } => self.answer(from, id, None),
                BridgeMsg::Fetch {
                    from,
                    session,
                    after,
                    purpose,
                } => self.answer_fetch(from, session, after, purpose, None),
                // Redis is away: the reconnect reads every position again.
                BridgeMsg::NewEpoch { session, .. } => {
                    self.owed_resync.insert(session);
                }
                BridgeMsg::Subscribe { from, session } => {
                    self.wanted.insert(session, from);
                }
                BridgeMsg::Unsubscribe { session } => {
                    self.wanted.remove(&session);
                    self.owed_resync.remove(&session);
                }
            }
        }
    }

    fn answer_fetch(
        &self,
        shard: usize,
        session: String,
        after: StreamPos,
        purpose: FetchPurpose,
        payloads: Option<Vec<Vec<u8>>>,
    ) {
        let msg = ShardMsg::Fetched {
            session,
            after,
            purpose,
            payloads,
        };
        self.tell(
            shard,
            msg,
            "history could not be delivered; the socket stays pending",
        );
    }

    /// Sends a shard a message it waits for, retrying briefly while its inbox is
    /// full (it drains continuously); logs `failure` if it never fits.
    #[allow(clippy::disallowed_methods)] // the bridge thread, never a shard core
    fn tell(&self, shard: usize, msg: ShardMsg, failure: &str) {
        if self
            .router
            .send_retrying(shard, msg, 100, SEND_PAUSE)
            .is_err()
        {
            tracing::error!(shard, "{failure}");
        }
    }

    fn answer(&self, shard: usize, id: u64, receipts: Option<Vec<Receipt>>) {
        let msg = ShardMsg::PublishDone { id, receipts };
        self.tell(
            shard,
            msg,
            "publish answer could not be delivered; the request times out",
        );
    }

    /// Connects, resubscribes, and serves until Redis is lost.
    async fn connected_period(&mut self, backoff: &mut Duration) -> Result<(), Lost> {
        let mut link = Link::connect(&self.target).await?;

        // Resubscribe the whole current set before saying we are ready.
        let wanted: Vec<String> = self.wanted.keys().cloned().collect();
        for chunk in wanted.chunks(SUBSCRIBE_CHUNK) {
            link.subscribe(chunk).await?;
        }
        self.subscribed.extend(wanted.iter().cloned());
        // Where each stream stands now: a session whose position moved while we
        // were away gets a resync (or, if Redis lost it, a new epoch).
        for chunk in wanted.chunks(SUBSCRIBE_CHUNK) {
            self.confirm(&mut link, chunk).await?;
        }
        self.owed_resync.clear();
        self.status.connected.store(true, Ordering::Release);
        *backoff = BACKOFF_FIRST;
        tracing::info!(sessions = wanted.len(), "redis connected");

        let mut ping = tokio::time::interval(PING_EVERY);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let lost = loop {
            if let Err(lost) = self.serve_once(&mut link, &mut ping).await {
                break lost;
            }
        };
        // Events Redis sent before the connection failed are still delivered.
        let mut rest = Vec::new();
        while let Some(Some(m)) = link.try_next() {
            rest.push(m);
        }
        self.route_incoming(rest);
        Err(lost)
    }

    /// Waits for one thing to do (a shard's request, events from Redis, the ping)
    /// and does it.
    async fn serve_once(
        &mut self,
        link: &mut Link,
        ping: &mut tokio::time::Interval,
    ) -> Result<(), Lost> {
        tokio::select! {
            _ = self.wake.notified() => {}
            first = link.next() => {
                let Some(first) = first else { return Err(Lost::Closed) };
                let mut incoming = vec![first];
                while incoming.len() < INCOMING_BATCH {
                    match link.try_next() {
                        Some(Some(m)) => incoming.push(m),
                        _ => break,
                    }
                }
                self.route_incoming(incoming);
            }
            _ = ping.tick() => link.ping().await?,
        }
        self.serve_queue(link).await?;
        self.pay_resyncs(link).await?;
        Ok(())
    }

    /// Handles everything the shards queued: subscription changes, then one
    /// batch with every pending publish.
    async fn serve_queue(&mut self, link: &mut Link) -> Result<(), Lost> {
        let mut subscribe = Vec::new();
        let mut unsubscribe = Vec::new();
        let mut confirm_only = Vec::new();
        let mut fetches = Vec::new();
        let mut new_epochs = Vec::new();
        let mut publishes: Vec<(usize, u64, Vec<OutgoingEvent>, u64)> = Vec::new();
        while let Ok(msg) = self.rx.try_recv() {
            match msg {
                BridgeMsg::Publish {
                    from,
                    id,
                    events,
                    epoch,
                } => publishes.push((from, id, events, epoch)),
                BridgeMsg::Fetch {
                    from,
                    session,
                    after,
                    purpose,
                } => fetches.push((from, session, after, purpose)),
                BridgeMsg::NewEpoch {
                    from,
                    session,
                    went_back,
                    reached,
                } => new_epochs.push((from, session, went_back, reached)),
                BridgeMsg::Subscribe { from, session } => {
                    unsubscribe.retain(|s| s != &session);
                    if self.wanted.insert(session.clone(), from).is_none()
                        || !self.subscribed.contains(&session)
                    {
                        subscribe.push(session);
                    } else {
                        confirm_only.push(session);
                    }
                }
                BridgeMsg::Unsubscribe { session } => {
                    subscribe.retain(|s| s != &session);
                    self.wanted.remove(&session);
                    self.owed_resync.remove(&session);
                    if self.subscribed.remove(&session) {
                        unsubscribe.push(session);
                    }
                }
            }
        }
        if !unsubscribe.is_empty() {
            link.unsubscribe(&unsubscribe).await?;
        }
        if !subscribe.is_empty() {
            link.subscribe(&subscribe).await?;
            self.subscribed.extend(subscribe.iter().cloned());
            confirm_only.extend(subscribe);
        }
        if !confirm_only.is_empty() {
            self.confirm(link, &confirm_only).await?;
        }
        for (from, session, went_back, reached) in new_epochs {
            let pos = link
                .new_epoch(&session, went_back, reached, new_epoch())
                .await?;
            tracing::warn!(session = %session, "redis lost writes; the session starts a new epoch");
            let msg = ShardMsg::Resync {
                sessions: vec![(session, pos)],
            };
            self.tell(from, msg, "new epoch could not be delivered");
        }
        for (from, session, after, purpose) in fetches {
            let payloads = link.fetch(&session, after.seq, FETCH_MAX).await?;
            self.answer_fetch(from, session, after, purpose, payloads);
        }
        if publishes.is_empty() {
            return Ok(());
        }
        let events: Vec<(&OutgoingEvent, u64)> = publishes
            .iter()
            .flat_map(|(_, _, evs, epoch)| evs.iter().map(move |e| (e, *epoch)))
            .collect();
        let result = link.publish(&events, &self.rules).await;
        match result {
            Ok(placed) => {
                let mut placed = placed.into_iter();
                for (from, id, evs, _) in &publishes {
                    let receipts = (0..evs.len())
                        .zip(placed.by_ref())
                        .map(|(i, p)| Receipt {
                            index: i as u32,
                            pos: p.pos,
                            duplicate: p.duplicate,
                            written: 0,
                            queued: 0,
                            dropped: 0,
                        })
                        .collect();
                    self.answer(*from, *id, Some(receipts));
                }
                Ok(())
            }
            Err(e) => {
                for (from, id, _, _) in &publishes {
                    self.answer(*from, *id, None);
                }
                Err(e)
            }
        }
    }

    /// Tells each session's owner that its subscription is live, and where its
    /// stream stands.
    async fn confirm(&self, link: &mut Link, sessions: &[String]) -> Result<(), Lost> {
        let positions = link.positions(sessions, new_epoch()).await?;
        let mut by_shard: HashMap<usize, Vec<(String, StreamPos)>> = HashMap::new();
        for (s, pos) in sessions.iter().zip(positions) {
            if let Some(&shard) = self.wanted.get(s) {
                by_shard.entry(shard).or_default().push((s.clone(), pos));
            }
        }
        for (shard, sessions) in by_shard {
            let msg = ShardMsg::Subscribed { sessions };
            self.tell(
                shard,
                msg,
                "subscription confirmation could not be delivered",
            );
        }
        Ok(())
    }

    /// Routes incoming events to their sessions' owners, one message per shard.
    fn route_incoming(&mut self, incoming: Vec<Incoming>) {
        let mut by_shard: HashMap<usize, Vec<RemoteEvent>> = HashMap::new();
        for msg in incoming {
            let Some(session) = session_of(&msg.channel) else {
                continue;
            };
            let Some(&shard) = self.wanted.get(session) else {
                continue;
            };
            by_shard.entry(shard).or_default().push(RemoteEvent {
                session: session.into(),
                payload: msg.payload,
            });
        }
        for (shard, events) in by_shard {
            if let Err((_, ShardMsg::Remote { events })) =
                self.router.send(shard, ShardMsg::Remote { events })
            {
                // The shard is behind: these events are lost to it; say so.
                for ev in events {
                    self.owed_resync.insert(ev.session.into());
                }
            }
        }
    }

    /// Sends the resyncs that are owed (with where each stream stands), as far as
    /// the shards can take them.
    async fn pay_resyncs(&mut self, link: &mut Link) -> Result<(), Lost> {
        if self.owed_resync.is_empty() {
            return Ok(());
        }
        let sessions: Vec<String> = self
            .owed_resync
            .drain()
            .filter(|s| self.wanted.contains_key(s))
            .collect();
        let positions = link.positions(&sessions, new_epoch()).await?;
        let mut by_shard: HashMap<usize, Vec<(String, StreamPos)>> = HashMap::new();
        for (s, pos) in sessions.into_iter().zip(positions) {
            if let Some(&shard) = self.wanted.get(&s) {
                by_shard.entry(shard).or_default().push((s, pos));
            }
        }
        for (shard, sessions) in by_shard {
            if let Err((_, ShardMsg::Resync { sessions })) =
                self.router.send(shard, ShardMsg::Resync { sessions })
            {
                self.owed_resync
                    .extend(sessions.into_iter().map(|(s, _)| s));
            }
        }
        Ok(())
    }
}

/// An epoch for sessions Redis has no stream for; any fresh value will do.
fn new_epoch() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    xxhash_rust::xxh3::xxh3_64(&nanos.to_le_bytes()).max(1)
}

/// A float in [0, 1) for backoff jitter; quality does not matter here.
fn fastrand_f64() -> f64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    f64::from(nanos % 1_000_000) / 1_000_000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_names_carry_the_fixed_prefix() {
        assert_eq!(channel_of("s1"), "relay:v1:s:{s1}");
        assert_eq!(session_of("relay:v1:s:{s1}"), Some("s1"));
        assert_eq!(session_of("relay:v1:s:s1"), None);
        assert_eq!(position_key("a:b"), "relay:v1:{a:b}");
    }
}
