//! Metric names in one place, per-shard counters, and `/metrics` rendering.
//!
//! Each shard owns a [`ShardStats`] and bumps plain `Cell`s: no atomics, no locks on
//! the delivery path. A scrape asks every shard for a [`StatsSnapshot`] (over the
//! shard channels), merges them and renders Prometheus text with the `prometheus`
//! crate's encoder. This module never talks to shards itself.

mod render;

use std::cell::{Cell, RefCell, RefMut};

use crate::latency::LatencyHistogram;
use crate::stream::ResyncReason;
use crate::subscribe::Transport;
use crate::ws::close::Disconnect;

pub const CONNECTED_CLIENTS: &str = "relay_connected_clients";
pub const EVENTS_TOTAL: &str = "relay_events_total";
pub const DELIVERIES_TOTAL: &str = "relay_deliveries_total";
pub const PUBLISH_ERRORS_TOTAL: &str = "relay_publish_errors_total";
pub const LATENCY_SECONDS: &str = "relay_latency_seconds";
pub const SOCKET_DISCONNECTS_TOTAL: &str = "relay_socket_disconnects_total";
pub const RATE_LIMITER_BLOCKED_TOTAL: &str = "relay_rate_limiter_blocked_total";
pub const SOCKET_HANDOFFS_TOTAL: &str = "relay_socket_handoffs_total";
pub const UPGRADE_REFUSALS_TOTAL: &str = "relay_upgrade_refusals_total";
pub const SESSIONS: &str = "relay_sessions";
pub const REDIS_CONNECTED: &str = "relay_redis_connected";
pub const REDIS_RECONNECTS_TOTAL: &str = "relay_redis_reconnects_total";
pub const REDIS_SHED_TOTAL: &str = "relay_redis_shed_total";
pub const RESYNC_TOTAL: &str = "relay_resync_total";
pub const REPLAYS_TOTAL: &str = "relay_replays_total";
pub const REPLAYED_EVENTS_TOTAL: &str = "relay_replayed_events_total";
pub const DEDUPE_HITS_TOTAL: &str = "relay_dedupe_hits_total";
pub const CAUGHT_UP_EVENTS_TOTAL: &str = "relay_caught_up_events_total";
pub const HISTORY_BYTES: &str = "relay_history_bytes";
pub const HISTORY_SESSIONS: &str = "relay_history_sessions";
pub const LOG_LINES_DROPPED_TOTAL: &str = "relay_log_lines_dropped_total";
pub const SKIPPED_EVENTS_TOTAL: &str = "relay_skipped_events_total";
pub const DELIVERY_RECEIPTS_LATE_TOTAL: &str = "relay_delivery_receipts_late_total";
pub const HISTORY_EVICTED_STREAMS_TOTAL: &str = "relay_history_evicted_streams_total";
pub const PRESENCE_USERS: &str = "relay_presence_users";
pub const PRESENCE_SESSIONS: &str = "relay_presence_sessions";
pub const PRESENCE_UNTRACKED_TOTAL: &str = "relay_presence_untracked_total";
pub const PRESENCE_FRAMES_TOTAL: &str = "relay_presence_frames_total";
pub const PRESENCE_FRAMES_DROPPED_TOTAL: &str = "relay_presence_frames_dropped_total";
pub const PRESENCE_QUERIES_TOTAL: &str = "relay_presence_queries_total";
pub const PRESENCE_NODES_EXPIRED_TOTAL: &str = "relay_presence_nodes_expired_total";

/// Transports a subscriber can use: the `transport` label's values.
pub const TRANSPORTS: usize = Transport::ALL.len();

/// The `reason` label of `relay_publish_errors_total`, by HTTP status.
pub const PUBLISH_ERROR_REASONS: [(u16, &str); 11] = [
    (400, "bad_request"),
    (401, "unauthorized"),
    (405, "method"),
    (408, "timeout"),
    (411, "length_required"),
    (413, "too_large"),
    (415, "media_type"),
    (429, "rate_limited"),
    (501, "not_implemented"),
    (503, "unavailable"),
    // Redis could not take the events (also answered 503, with Retry-After).
    (503, "redis"),
];

/// The `limiter` label of `relay_rate_limiter_blocked_total`: connects per client
/// address, published events per API key, sockets per session, sockets per tenant,
/// client message floods (closed with 1008), and published events per tenant.
pub const RATE_LIMITERS: [&str; 6] = [
    "connect",
    "publish",
    "session",
    "tenant",
    "client_messages",
    "tenant_publish",
];

/// Refused upgrades, by status.
pub const UPGRADE_REFUSAL_STATUSES: [u16; 8] = [400, 401, 403, 408, 426, 429, 431, 503];

fn publish_reason_index(status: u16) -> usize {
    PUBLISH_ERROR_REASONS
        .iter()
        .position(|(s, _)| *s == status)
        .unwrap_or(0)
}

/// One shard's counters. Written only by its shard; read by its shard on a snapshot.
#[derive(Default)]
pub struct ShardStats {
    /// Open subscribers, by transport ([`Transport::index`]).
    connected: [Cell<u64>; TRANSPORTS],
    pub sessions: Cell<u64>,
    pub events: Cell<u64>,
    deliveries: [Cell<u64>; TRANSPORTS],
    pub handoffs: Cell<u64>,
    publish_errors: [Cell<u64>; PUBLISH_ERROR_REASONS.len()],
    disconnects: [[Cell<u64>; Disconnect::ALL.len()]; TRANSPORTS],
    upgrade_refusals: [Cell<u64>; UPGRADE_REFUSAL_STATUSES.len()],
    rate_limited: [Cell<u64>; RATE_LIMITERS.len()],
    latency: [RefCell<LatencyHistogram>; TRANSPORTS],
    replays: Cell<u64>,
    replayed_events: Cell<u64>,
    resyncs: [Cell<u64>; ResyncReason::ALL.len()],
    dedupe_hits: Cell<u64>,
    caught_up: Cell<u64>,
    skipped: Cell<u64>,
    receipts_late: Cell<u64>,
    /// Set by the shard from its history before each snapshot.
    pub history_bytes: Cell<u64>,
    pub history_sessions: Cell<u64>,
    pub history_evicted: Cell<u64>,
    /// Presence: frames and queries counted as they happen; the table's figures
    /// set by the shard before each snapshot.
    pub presence: PresenceStats,
}

/// One shard's presence figures (see `shard::presence`).
#[derive(Default)]
pub struct PresenceStats {
    /// Presence frames queued to subscribers (one per subscriber per frame).
    pub frames: Cell<u64>,
    /// Presence frames not queued because the subscriber's queue was full.
    pub frames_dropped: Cell<u64>,
    /// `GET /sessions/{session}/presence` answered by this shard.
    pub queries: Cell<u64>,
    /// Other nodes taken for dead, their users announced as leaving.
    pub nodes_expired: Cell<u64>,
    /// Set from the table: (session, user) pairs tracked, sessions, users over the cap.
    pub users: Cell<u64>,
    pub sessions: Cell<u64>,
    pub untracked: Cell<u64>,
}

impl PresenceStats {
    fn figures(&self) -> PresenceFigures {
        PresenceFigures {
            frames: self.frames.get(),
            frames_dropped: self.frames_dropped.get(),
            queries: self.queries.get(),
            nodes_expired: self.nodes_expired.get(),
            users: self.users.get(),
            sessions: self.sessions.get(),
            untracked: self.untracked.get(),
        }
    }
}

/// [`PresenceStats`] copied for a scrape.
#[derive(Clone, Copy, Debug, Default)]
pub struct PresenceFigures {
    pub frames: u64,
    pub frames_dropped: u64,
    pub queries: u64,
    pub nodes_expired: u64,
    pub users: u64,
    pub sessions: u64,
    pub untracked: u64,
}

impl PresenceFigures {
    fn merge(&mut self, o: &PresenceFigures) {
        self.frames += o.frames;
        self.frames_dropped += o.frames_dropped;
        self.queries += o.queries;
        self.nodes_expired += o.nodes_expired;
        self.users += o.users;
        self.sessions += o.sessions;
        self.untracked += o.untracked;
    }
}

fn bump(c: &Cell<u64>, n: u64) {
    c.set(c.get() + n);
}

impl ShardStats {
    pub fn add_events(&self, n: u64) {
        bump(&self.events, n);
    }
    /// `n` events written whole to subscribers of `transport`.
    pub fn add_deliveries(&self, transport: Transport, n: u64) {
        bump(&self.deliveries[transport.index()], n);
    }
    /// Open subscribers now, by transport (the registry's counts).
    pub fn set_connected(&self, counts: [usize; TRANSPORTS]) {
        for (c, n) in self.connected.iter().zip(counts) {
            c.set(n as u64);
        }
    }
    /// The accepted → written histogram of `transport`'s subscribers; borrow it
    /// once per batch of writes.
    pub fn latency(&self, transport: Transport) -> RefMut<'_, LatencyHistogram> {
        self.latency[transport.index()].borrow_mut()
    }
    pub fn publish_error(&self, status: u16) {
        bump(&self.publish_errors[publish_reason_index(status)], 1);
    }
    /// Counts a refused publish under an explicit `reason` label.
    pub fn publish_error_reason(&self, reason: &str) {
        if let Some(i) = PUBLISH_ERROR_REASONS.iter().position(|(_, r)| *r == reason) {
            bump(&self.publish_errors[i], 1);
        }
    }
    pub fn disconnect(&self, transport: Transport, d: Disconnect) {
        bump(&self.disconnects[transport.index()][d.index()], 1);
    }
    pub fn upgrade_refused(&self, status: u16) {
        if let Some(i) = UPGRADE_REFUSAL_STATUSES.iter().position(|s| *s == status) {
            bump(&self.upgrade_refusals[i], 1);
        }
    }
    /// Counts a request or socket refused by `limiter` (one of [`RATE_LIMITERS`]).
    pub fn rate_limited(&self, limiter: &str) {
        if let Some(i) = RATE_LIMITERS.iter().position(|l| *l == limiter) {
            bump(&self.rate_limited[i], 1);
        }
    }
    pub fn handoff(&self) {
        bump(&self.handoffs, 1);
    }
    /// A resuming socket got `events` missed events replayed.
    pub fn replay(&self, events: u64) {
        bump(&self.replays, 1);
        bump(&self.replayed_events, events);
    }
    /// `sockets` sockets were told to resync.
    pub fn resync(&self, reason: ResyncReason, sockets: u64) {
        bump(&self.resyncs[reason.index()], sockets);
    }
    /// `events` queued events dropped for a slow subscriber (`RELAY_SLOW_CONSUMER=skip`).
    pub fn skipped(&self, events: u64) {
        bump(&self.skipped, events);
    }
    /// `n` nodes' counts that a `?wait=delivered` publish through Redis did not get
    /// in time.
    pub fn receipts_late(&self, n: u64) {
        bump(&self.receipts_late, n);
    }
    pub fn dedupe_hit(&self) {
        bump(&self.dedupe_hits, 1);
    }
    /// `events` this node missed were read back from Redis and delivered.
    pub fn caught_up(&self, events: u64) {
        bump(&self.caught_up, events);
    }

    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            connected: self.connected.each_ref().map(Cell::get),
            sessions: self.sessions.get(),
            events: self.events.get(),
            deliveries: self.deliveries.each_ref().map(Cell::get),
            handoffs: self.handoffs.get(),
            publish_errors: self.publish_errors.each_ref().map(Cell::get),
            disconnects: self
                .disconnects
                .each_ref()
                .map(|by| by.each_ref().map(Cell::get)),
            upgrade_refusals: self.upgrade_refusals.each_ref().map(Cell::get),
            rate_limited: self.rate_limited.each_ref().map(Cell::get),
            latency: self.latency.each_ref().map(|h| h.borrow().clone()),
            redis: None,
            replays: self.replays.get(),
            replayed_events: self.replayed_events.get(),
            resyncs: self.resyncs.each_ref().map(Cell::get),
            dedupe_hits: self.dedupe_hits.get(),
            caught_up: self.caught_up.get(),
            skipped: self.skipped.get(),
            receipts_late: self.receipts_late.get(),
            history_bytes: self.history_bytes.get(),
            history_sessions: self.history_sessions.get(),
            history_evicted: self.history_evicted.get(),
            presence: self.presence.figures(),
        }
    }
}

/// A copy of one or more shards' counters. Crosses cores.
#[derive(Clone, Debug, Default)]
pub struct StatsSnapshot {
    /// By transport, as every per-subscriber figure below.
    pub connected: [u64; TRANSPORTS],
    pub sessions: u64,
    pub events: u64,
    pub deliveries: [u64; TRANSPORTS],
    pub handoffs: u64,
    pub publish_errors: [u64; PUBLISH_ERROR_REASONS.len()],
    pub disconnects: [[u64; Disconnect::ALL.len()]; TRANSPORTS],
    pub upgrade_refusals: [u64; UPGRADE_REFUSAL_STATUSES.len()],
    pub rate_limited: [u64; RATE_LIMITERS.len()],
    pub latency: [LatencyHistogram; TRANSPORTS],
    /// Node-wide Redis bridge figures, when the node has one.
    pub redis: Option<RedisFigures>,
    pub replays: u64,
    pub replayed_events: u64,
    pub resyncs: [u64; ResyncReason::ALL.len()],
    pub dedupe_hits: u64,
    pub caught_up: u64,
    pub skipped: u64,
    pub receipts_late: u64,
    pub history_bytes: u64,
    pub history_sessions: u64,
    pub history_evicted: u64,
    pub presence: PresenceFigures,
}

/// What the Redis bridge reports.
#[derive(Clone, Copy, Debug, Default)]
pub struct RedisFigures {
    pub connected: bool,
    pub reconnects: u64,
    /// Messages from Redis shed because the bridge fell behind.
    pub shed: u64,
}

fn add_arrays<const N: usize>(a: &mut [u64; N], b: &[u64; N]) {
    for (x, y) in a.iter_mut().zip(b) {
        *x += y;
    }
}

impl StatsSnapshot {
    pub fn merge(&mut self, other: &StatsSnapshot) {
        add_arrays(&mut self.connected, &other.connected);
        self.sessions += other.sessions;
        self.events += other.events;
        add_arrays(&mut self.deliveries, &other.deliveries);
        self.handoffs += other.handoffs;
        add_arrays(&mut self.publish_errors, &other.publish_errors);
        for (a, b) in self.disconnects.iter_mut().zip(&other.disconnects) {
            add_arrays(a, b);
        }
        add_arrays(&mut self.upgrade_refusals, &other.upgrade_refusals);
        add_arrays(&mut self.rate_limited, &other.rate_limited);
        for (a, b) in self.latency.iter_mut().zip(&other.latency) {
            a.merge(b);
        }
        self.redis = self.redis.or(other.redis);
        self.replays += other.replays;
        self.replayed_events += other.replayed_events;
        add_arrays(&mut self.resyncs, &other.resyncs);
        self.dedupe_hits += other.dedupe_hits;
        self.caught_up += other.caught_up;
        self.skipped += other.skipped;
        self.receipts_late += other.receipts_late;
        self.history_bytes += other.history_bytes;
        self.history_sessions += other.history_sessions;
        self.history_evicted += other.history_evicted;
        self.presence.merge(&other.presence);
    }

    /// Every transport's latency merged: what `/latency` shows.
    pub fn latency_all(&self) -> LatencyHistogram {
        let mut all = self.latency[0].clone();
        for h in &self.latency[1..] {
            all.merge(h);
        }
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn merged_snapshot_renders_contract_series() {
        let a = ShardStats::default();
        a.add_events(3);
        a.add_deliveries(Transport::Ws, 6);
        a.add_deliveries(Transport::Sse, 1);
        a.publish_error(400);
        a.disconnect(Transport::Ws, Disconnect::SlowConsumer);
        a.latency(Transport::Ws).record(Duration::from_micros(300));
        let b = ShardStats::default();
        b.add_events(1);
        b.set_connected([2, 1, 0]);
        let mut s = a.snapshot();
        s.merge(&b.snapshot());
        let text = String::from_utf8(s.render_prometheus()).unwrap();
        for want in [
            "relay_events_total 4",
            "relay_deliveries_total{transport=\"ws\"} 6",
            "relay_deliveries_total{transport=\"sse\"} 1",
            "relay_connected_clients{transport=\"ws\"} 2",
            "relay_connected_clients{transport=\"sse\"} 1",
            "relay_publish_errors_total{reason=\"bad_request\"} 1",
            "relay_socket_disconnects_total{reason=\"slow_consumer\",transport=\"ws\"} 1",
            "relay_rate_limiter_blocked_total{limiter=\"connect\"} 0",
            "relay_latency_seconds_bucket{transport=\"ws\",le=\"0.0005\"} 1",
            "relay_latency_seconds_count{transport=\"ws\"} 1",
        ] {
            assert!(text.contains(want), "missing {want} in\n{text}");
        }
    }
}
