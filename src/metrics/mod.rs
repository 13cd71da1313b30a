//! Metric names in one place, per-shard counters, and `/metrics` rendering.
//!
//! Each shard owns a [`ShardStats`] and bumps plain `Cell`s: no atomics, no locks on
//! the delivery path. A scrape asks every shard for a [`StatsSnapshot`] (over the
//! shard channels), merges them and renders Prometheus text with the `prometheus`
//! crate's encoder. This module never talks to shards itself.

use std::cell::{Cell, RefCell};

use prometheus::proto::{
    Bucket, Counter, Gauge, Histogram, LabelPair, Metric, MetricFamily, MetricType,
};
use prometheus::{Encoder, TextEncoder};

use crate::latency::LatencyHistogram;
use crate::stream::ResyncReason;
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
pub const RESYNC_TOTAL: &str = "relay_resync_total";
pub const REPLAYS_TOTAL: &str = "relay_replays_total";
pub const REPLAYED_EVENTS_TOTAL: &str = "relay_replayed_events_total";
pub const DEDUPE_HITS_TOTAL: &str = "relay_dedupe_hits_total";
pub const CAUGHT_UP_EVENTS_TOTAL: &str = "relay_caught_up_events_total";
pub const HISTORY_BYTES: &str = "relay_history_bytes";
pub const HISTORY_SESSIONS: &str = "relay_history_sessions";
pub const LOG_LINES_DROPPED_TOTAL: &str = "relay_log_lines_dropped_total";

/// Upper bounds of `relay_latency_seconds`, from 100 µs to 10 s.
const LATENCY_BUCKETS: [f64; 15] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    10.0,
];

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
    pub connected: Cell<u64>,
    pub sessions: Cell<u64>,
    pub events: Cell<u64>,
    pub deliveries: Cell<u64>,
    pub handoffs: Cell<u64>,
    publish_errors: [Cell<u64>; PUBLISH_ERROR_REASONS.len()],
    disconnects: [Cell<u64>; Disconnect::ALL.len()],
    upgrade_refusals: [Cell<u64>; UPGRADE_REFUSAL_STATUSES.len()],
    rate_limited: [Cell<u64>; RATE_LIMITERS.len()],
    pub latency: RefCell<LatencyHistogram>,
    replays: Cell<u64>,
    replayed_events: Cell<u64>,
    resyncs: [Cell<u64>; ResyncReason::ALL.len()],
    dedupe_hits: Cell<u64>,
    caught_up: Cell<u64>,
    /// Set by the shard from its history before each snapshot.
    pub history_bytes: Cell<u64>,
    pub history_sessions: Cell<u64>,
}

fn bump(c: &Cell<u64>, n: u64) {
    c.set(c.get() + n);
}

impl ShardStats {
    pub fn add_events(&self, n: u64) {
        bump(&self.events, n);
    }
    pub fn add_deliveries(&self, n: u64) {
        bump(&self.deliveries, n);
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
    pub fn disconnect(&self, d: Disconnect) {
        bump(&self.disconnects[d.index()], 1);
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
    pub fn dedupe_hit(&self) {
        bump(&self.dedupe_hits, 1);
    }
    /// `events` this node missed were read back from Redis and delivered.
    pub fn caught_up(&self, events: u64) {
        bump(&self.caught_up, events);
    }

    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            connected: self.connected.get(),
            sessions: self.sessions.get(),
            events: self.events.get(),
            deliveries: self.deliveries.get(),
            handoffs: self.handoffs.get(),
            publish_errors: self.publish_errors.each_ref().map(Cell::get),
            disconnects: self.disconnects.each_ref().map(Cell::get),
            upgrade_refusals: self.upgrade_refusals.each_ref().map(Cell::get),
            rate_limited: self.rate_limited.each_ref().map(Cell::get),
            latency: self.latency.borrow().clone(),
            redis: None,
            replays: self.replays.get(),
            replayed_events: self.replayed_events.get(),
            resyncs: self.resyncs.each_ref().map(Cell::get),
            dedupe_hits: self.dedupe_hits.get(),
            caught_up: self.caught_up.get(),
            history_bytes: self.history_bytes.get(),
            history_sessions: self.history_sessions.get(),
        }
    }
}

/// A copy of one or more shards' counters. Crosses cores.
#[derive(Clone, Debug, Default)]
pub struct StatsSnapshot {
    pub connected: u64,
    pub sessions: u64,
    pub events: u64,
    pub deliveries: u64,
    pub handoffs: u64,
    pub publish_errors: [u64; PUBLISH_ERROR_REASONS.len()],
    pub disconnects: [u64; Disconnect::ALL.len()],
    pub upgrade_refusals: [u64; UPGRADE_REFUSAL_STATUSES.len()],
    pub rate_limited: [u64; RATE_LIMITERS.len()],
    pub latency: LatencyHistogram,
    /// Node-wide Redis bridge figures, when the node has one.
    pub redis: Option<RedisFigures>,
    pub replays: u64,
    pub replayed_events: u64,
    pub resyncs: [u64; ResyncReason::ALL.len()],
    pub dedupe_hits: u64,
    pub caught_up: u64,
    pub history_bytes: u64,
    pub history_sessions: u64,
}

/// What the Redis bridge reports.
#[derive(Clone, Copy, Debug, Default)]
pub struct RedisFigures {
    pub connected: bool,
    pub reconnects: u64,
}

fn add_arrays<const N: usize>(a: &mut [u64; N], b: &[u64; N]) {
    for (x, y) in a.iter_mut().zip(b) {
        *x += y;
    }
}

fn label(name: &str, value: &str) -> LabelPair {
    let mut l = LabelPair::default();
    l.set_name(name.to_string());
    l.set_value(value.to_string());
    l
}

fn family(name: &str, help: &str, kind: MetricType, metrics: Vec<Metric>) -> MetricFamily {
    let mut f = MetricFamily::default();
    f.set_name(name.to_string());
    f.set_help(help.to_string());
    f.set_field_type(kind);
    f.set_metric(metrics);
    f
}

fn counter(value: u64, labels: Vec<LabelPair>) -> Metric {
    let mut c = Counter::default();
    c.set_value(value as f64);
    let mut m = Metric::default();
    m.set_counter(c);
    m.set_label(labels);
    m
}

fn gauge(value: u64) -> Metric {
    let mut g = Gauge::default();
    g.set_value(value as f64);
    let mut m = Metric::default();
    m.set_gauge(g);
    m
}

impl StatsSnapshot {
    pub fn merge(&mut self, other: &StatsSnapshot) {
        self.connected += other.connected;
        self.sessions += other.sessions;
        self.events += other.events;
        self.deliveries += other.deliveries;
        self.handoffs += other.handoffs;
        add_arrays(&mut self.publish_errors, &other.publish_errors);
        add_arrays(&mut self.disconnects, &other.disconnects);
        add_arrays(&mut self.upgrade_refusals, &other.upgrade_refusals);
        add_arrays(&mut self.rate_limited, &other.rate_limited);
        self.latency.merge(&other.latency);
        self.redis = self.redis.or(other.redis);
        self.replays += other.replays;
        self.replayed_events += other.replayed_events;
        add_arrays(&mut self.resyncs, &other.resyncs);
        self.dedupe_hits += other.dedupe_hits;
        self.caught_up += other.caught_up;
        self.history_bytes += other.history_bytes;
        self.history_sessions += other.history_sessions;
    }

    fn families(&self) -> Vec<MetricFamily> {
        let mut hist = Histogram::default();
        hist.set_sample_count(self.latency.count());
        hist.set_sample_sum(self.latency.sum_seconds());
        hist.set_bucket(
            LATENCY_BUCKETS
                .iter()
                .map(|&le| {
                    let mut b = Bucket::default();
                    b.set_upper_bound(le);
                    b.set_cumulative_count(self.latency.count_at_or_below(le));
                    b
                })
                .collect(),
        );
        let mut hist_metric = Metric::default();
        hist_metric.set_histogram(hist);

        // Disconnect reasons that share a label are summed.
        let mut by_reason: Vec<(&str, u64)> = Vec::new();
        for d in Disconnect::ALL {
            let reason = d.metric_reason();
            let n = self.disconnects[d.index()];
            match by_reason.iter_mut().find(|(r, _)| *r == reason) {
                Some((_, total)) => *total += n,
                None => by_reason.push((reason, n)),
            }
        }

        let mut families = vec![
            family(
                CONNECTED_CLIENTS,
                "Open WebSockets on this node.",
                MetricType::GAUGE,
                vec![gauge(self.connected)],
            ),
            family(
                SESSIONS,
                "Sessions with at least one open socket on this node.",
                MetricType::GAUGE,
                vec![gauge(self.sessions)],
            ),
            family(
                EVENTS_TOTAL,
                "Events accepted by POST /events.",
                MetricType::COUNTER,
                vec![counter(self.events, vec![])],
            ),
            family(
                DELIVERIES_TOTAL,
                "Event frames written to sockets.",
                MetricType::COUNTER,
                vec![counter(self.deliveries, vec![])],
            ),
            family(
                PUBLISH_ERRORS_TOTAL,
                "Refused POST /events requests, by reason.",
                MetricType::COUNTER,
                PUBLISH_ERROR_REASONS
                    .iter()
                    .zip(self.publish_errors)
                    .map(|((_, reason), n)| counter(n, vec![label("reason", reason)]))
                    .collect(),
            ),
            family(
                LATENCY_SECONDS,
                "Time from accepting an event to writing it to a socket.",
                MetricType::HISTOGRAM,
                vec![hist_metric],
            ),
            family(
                SOCKET_DISCONNECTS_TOTAL,
                "Closed WebSockets, by reason.",
                MetricType::COUNTER,
                by_reason
                    .into_iter()
                    .map(|(reason, n)| counter(n, vec![label("reason", reason)]))
                    .collect(),
            ),
            family(
                RATE_LIMITER_BLOCKED_TOTAL,
                "Requests refused by a rate limiter, by limiter.",
                MetricType::COUNTER,
                RATE_LIMITERS
                    .iter()
                    .zip(self.rate_limited)
                    .map(|(l, n)| counter(n, vec![label("limiter", l)]))
                    .collect(),
            ),
            family(
                SOCKET_HANDOFFS_TOTAL,
                "Sockets moved to the shard that owns their session.",
                MetricType::COUNTER,
                vec![counter(self.handoffs, vec![])],
            ),
            family(
                UPGRADE_REFUSALS_TOTAL,
                "WebSocket upgrades refused, by status.",
                MetricType::COUNTER,
                UPGRADE_REFUSAL_STATUSES
                    .iter()
                    .zip(self.upgrade_refusals)
                    .map(|(s, n)| counter(n, vec![label("status", &s.to_string())]))
                    .collect(),
            ),
        ];
        if let Some(r) = self.redis {
            families.push(family(
                REDIS_CONNECTED,
                "1 while the Redis bridge is connected.",
                MetricType::GAUGE,
                vec![gauge(u64::from(r.connected))],
            ));
            families.push(family(
                REDIS_RECONNECTS_TOTAL,
                "Times the Redis bridge lost Redis and had to reconnect.",
                MetricType::COUNTER,
                vec![counter(r.reconnects, vec![])],
            ));
        }
        families.extend([
            family(
                RESYNC_TOTAL,
                "Resync frames sent to sockets (they missed events and must reload state), by reason.",
                MetricType::COUNTER,
                ResyncReason::ALL
                    .iter()
                    .zip(self.resyncs)
                    .map(|(r, n)| counter(n, vec![label("reason", r.metric_reason())]))
                    .collect(),
            ),
            family(
                REPLAYS_TOTAL,
                "Resuming sockets served by replaying the events they missed.",
                MetricType::COUNTER,
                vec![counter(self.replays, vec![])],
            ),
            family(
                REPLAYED_EVENTS_TOTAL,
                "Events replayed to resuming sockets.",
                MetricType::COUNTER,
                vec![counter(self.replayed_events, vec![])],
            ),
            family(
                DEDUPE_HITS_TOTAL,
                "Published events not delivered again because their id was seen within the dedupe window.",
                MetricType::COUNTER,
                vec![counter(self.dedupe_hits, vec![])],
            ),
            family(
                CAUGHT_UP_EVENTS_TOTAL,
                "Events this node missed (Redis away, or a gap) read back from Redis history and delivered.",
                MetricType::COUNTER,
                vec![counter(self.caught_up, vec![])],
            ),
            family(
                HISTORY_BYTES,
                "Memory held by resume history and dedupe ids on this node.",
                MetricType::GAUGE,
                vec![gauge(self.history_bytes)],
            ),
            family(
                HISTORY_SESSIONS,
                "Session streams (position and history) kept on this node.",
                MetricType::GAUGE,
                vec![gauge(self.history_sessions)],
            ),
            family(
                LOG_LINES_DROPPED_TOTAL,
                "Log lines dropped because the log writer fell behind (logging never blocks a shard).",
                MetricType::COUNTER,
                vec![counter(crate::logging::dropped_lines(), vec![])],
            ),
        ]);
        families
    }

    /// Prometheus text exposition.
    pub fn render_prometheus(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(4096);
        // Encoding plain in-memory families cannot fail.
        let _ = TextEncoder::new().encode(&self.families(), &mut out);
        out
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
        a.add_deliveries(6);
        a.publish_error(400);
        a.disconnect(Disconnect::SlowConsumer);
        a.latency.borrow_mut().record(Duration::from_micros(300));
        let b = ShardStats::default();
        b.add_events(1);
        b.connected.set(2);
        let mut s = a.snapshot();
        s.merge(&b.snapshot());
        let text = String::from_utf8(s.render_prometheus()).unwrap();
        for want in [
            "relay_events_total 4",
            "relay_deliveries_total 6",
            "relay_connected_clients 2",
            "relay_publish_errors_total{reason=\"bad_request\"} 1",
            "relay_socket_disconnects_total{reason=\"slow_consumer\"} 1",
            "relay_rate_limiter_blocked_total{limiter=\"connect\"} 0",
            "relay_latency_seconds_bucket{le=\"0.0005\"} 1",
            "relay_latency_seconds_count 1",
        ] {
            assert!(text.contains(want), "missing {want} in\n{text}");
        }
    }
}
