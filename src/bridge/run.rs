//! Starting the bridge thread ([`start`]) and its loop: connect, resubscribe and
//! confirm every wanted session, serve until Redis is lost, then back off (with
//! jitter, capped) while failing publishes fast, and connect again.
//!
//! Owns the thread, its tokio runtime and the connected/lost cycle (`BridgeStatus`:
//! connected, reconnects); what is done while connected is `requests`'
//! and `subscriptions`' work. Runs on its own thread, never on a shard core.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::fetches::Fetches;
use super::handle::{BridgeError, BridgeHandle, BridgeStatus, PublishRules, BRIDGE_QUEUE};
use super::keys::reply_channel;
use super::link::{Link, Lost, Target};
use super::state::Bridge;
use super::subscriptions::new_epoch;
use crate::router::Router;

/// How often an idle bridge checks that Redis still answers.
const PING_EVERY: Duration = Duration::from_secs(1);
/// Reconnect backoff: first wait, and the cap.
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_CAP: Duration = Duration::from_secs(5);
/// Incoming messages routed per wake before the bridge looks at its queue again.
const INCOMING_BATCH: usize = 1024;
/// Channels per SUBSCRIBE command when resubscribing a large set.
const SUBSCRIBE_CHUNK: usize = 1000;

/// Starts the bridge thread for `url`.
///
/// `cluster`: `url` is a comma-separated list of seed nodes of a Redis Cluster,
/// and the bridge uses sharded pub/sub.
/// `ca_pem`: CA certificates to trust for `rediss://` (else the system's roots).
/// `node_tag`: the node's name in `?wait=delivered` receipts and presence.
/// `presence_timeout`: a node not heard from this long is dead (presence).
pub fn start(
    url: &str,
    cluster: bool,
    ca_pem: Option<Vec<u8>>,
    rules: PublishRules,
    router: Router,
    node_tag: &str,
    presence_timeout: Duration,
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
    } else {
        // RESP3, so one connection carries commands and the pushes of its
        // subscriptions (bounded: see `pushes`).
        use redis::IntoConnectionInfo;
        let info = url.into_connection_info().map_err(BridgeError::Url)?;
        let settings = info
            .redis_settings()
            .clone()
            .set_protocol(redis::ProtocolVersion::RESP3);
        let info = info.set_redis_settings(settings);
        let client = if url.starts_with("rediss://") {
            redis::Client::build_with_tls(info, certs())
        } else {
            redis::Client::open(info)
        };
        Target::Standalone(client.map_err(BridgeError::Url)?)
    };
    let (tx, rx) = crossbeam_channel::bounded(BRIDGE_QUEUE);
    let wake = Arc::new(tokio::sync::Notify::new());
    let status = Arc::new(BridgeStatus::default());
    let reply_channel: Arc<str> = reply_channel(node_tag, new_epoch()).into();
    let handle = BridgeHandle {
        tx,
        wake: wake.clone(),
        status: status.clone(),
        reply_channel: reply_channel.clone(),
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
        node_tag: node_tag.into(),
        reply_channel,
        fetches: Fetches::default(),
        presence: super::presence::PresenceState::new(presence_timeout),
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

    /// Connects, resubscribes, and serves until Redis is lost.
    async fn connected_period(&mut self, backoff: &mut Duration) -> Result<(), Lost> {
        let mut link = Link::connect(&self.target, self.status.shed.clone()).await?;
        // Receipts for this node's waiting publishes come on its reply channel.
        link.subscribe_channels(vec![self.reply_channel.to_string()])
            .await?;
        self.presence_connected(&mut link).await?;

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
        // Reads on the lost link answer nothing: their sockets resync.
        for job in self.fetches.abandon() {
            self.answer_fetch(job, None);
        }
        // Events Redis sent before the connection failed are still delivered.
        let mut rest = Vec::new();
        while let Some(Some(m)) = link.try_next() {
            rest.push(m);
        }
        self.route_incoming(rest);
        Err(lost)
    }

    /// Waits for one thing to do (a shard's request, events from Redis, a finished
    /// history read, the ping) and does it.
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
            (job, read) = self.fetches.next(), if self.fetches.busy() => {
                let payloads = match read {
                    Ok(p) => p,
                    Err(lost) => {
                        self.answer_fetch(job, None);
                        return Err(lost);
                    }
                };
                self.answer_fetch(job, payloads);
                self.fetches.start(link.reader());
            }
            _ = ping.tick() => link.ping().await?,
        }
        self.serve_queue(link).await?;
        self.pay_resyncs(link).await?;
        self.presence_beat(link).await?;
        Ok(())
    }
}

/// A float in [0, 1) for backoff jitter; quality does not matter here.
fn fastrand_f64() -> f64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    f64::from(nanos % 1_000_000) / 1_000_000.0
}
