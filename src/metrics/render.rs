//! Rendering a [`StatsSnapshot`] as Prometheus text: one family per metric
//! name, every per-subscriber figure labelled with its `transport`.
//!
//! Pure: a snapshot in, bytes out, through the `prometheus` crate's encoder. It
//! owns the help texts and the latency buckets; the names are the parent's.

use prometheus::proto::{
    Bucket, Counter, Gauge, Histogram, LabelPair, Metric, MetricFamily, MetricType,
};
use prometheus::{Encoder, TextEncoder};

use super::*;
use crate::latency::LatencyHistogram;
use crate::subscribe::Transport;

/// Upper bounds of `relay_latency_seconds`, from 100 µs to 10 s.
const LATENCY_BUCKETS: [f64; 15] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    10.0,
];

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

fn gauge(value: u64, labels: Vec<LabelPair>) -> Metric {
    let mut g = Gauge::default();
    g.set_value(value as f64);
    let mut m = Metric::default();
    m.set_gauge(g);
    m.set_label(labels);
    m
}

fn histogram(h: &LatencyHistogram, labels: Vec<LabelPair>) -> Metric {
    let mut hist = Histogram::default();
    hist.set_sample_count(h.count());
    hist.set_sample_sum(h.sum_seconds());
    hist.set_bucket(
        LATENCY_BUCKETS
            .iter()
            .map(|&le| {
                let mut b = Bucket::default();
                b.set_upper_bound(le);
                b.set_cumulative_count(h.count_at_or_below(le));
                b
            })
            .collect(),
    );
    let mut m = Metric::default();
    m.set_histogram(hist);
    m.set_label(labels);
    m
}

impl StatsSnapshot {
    pub(super) fn families(&self) -> Vec<MetricFamily> {
        let latency = Transport::ALL
            .iter()
            .map(|t| {
                histogram(
                    &self.latency[t.index()],
                    vec![label("transport", t.label())],
                )
            })
            .collect();
        // Disconnect reasons that share a label are summed.
        let mut by_reason: Vec<(&str, Transport, u64)> = Vec::new();
        for t in Transport::ALL {
            for d in Disconnect::ALL {
                let reason = d.metric_reason();
                let n = self.disconnects[t.index()][d.index()];
                match by_reason
                    .iter_mut()
                    .find(|(r, rt, _)| *r == reason && *rt == t)
                {
                    Some((_, _, total)) => *total += n,
                    None => by_reason.push((reason, t, n)),
                }
            }
        }
        let per_transport = |values: &[u64; TRANSPORTS],
                             make: fn(u64, Vec<LabelPair>) -> Metric| {
            Transport::ALL
                .iter()
                .map(|t| make(values[t.index()], vec![label("transport", t.label())]))
                .collect::<Vec<_>>()
        };

        let mut families = vec![
            family(
                CONNECTED_CLIENTS,
                "Open subscribers on this node (WebSockets, event streams, long-polls), by transport.",
                MetricType::GAUGE,
                per_transport(&self.connected, gauge),
            ),
            family(
                SESSIONS,
                "Sessions with at least one open socket on this node.",
                MetricType::GAUGE,
                vec![gauge(self.sessions, vec![])],
            ),
            family(
                EVENTS_TOTAL,
                "Events accepted by POST /events.",
                MetricType::COUNTER,
                vec![counter(self.events, vec![])],
            ),
            family(
                DELIVERIES_TOTAL,
                "Events written whole to subscribers, by transport.",
                MetricType::COUNTER,
                per_transport(&self.deliveries, counter),
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
                "Time from accepting an event to writing it to a subscriber, by transport.",
                MetricType::HISTOGRAM,
                latency,
            ),
            family(
                SOCKET_DISCONNECTS_TOTAL,
                "Closed subscribers, by reason and transport.",
                MetricType::COUNTER,
                by_reason
                    .into_iter()
                    .map(|(reason, t, n)| {
                        counter(n, vec![label("reason", reason), label("transport", t.label())])
                    })
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
                vec![gauge(u64::from(r.connected), vec![])],
            ));
            families.push(family(
                REDIS_RECONNECTS_TOTAL,
                "Times the Redis bridge lost Redis and had to reconnect.",
                MetricType::COUNTER,
                vec![counter(r.reconnects, vec![])],
            ));
            families.push(family(
                REDIS_SHED_TOTAL,
                "Messages from Redis shed because the bridge fell behind its bounded buffer; each overflow ends the link, and its sessions are caught up or resynced.",
                MetricType::COUNTER,
                vec![counter(r.shed, vec![])],
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
                vec![gauge(self.history_bytes, vec![])],
            ),
            family(
                HISTORY_SESSIONS,
                "Session streams (position and history) kept on this node.",
                MetricType::GAUGE,
                vec![gauge(self.history_sessions, vec![])],
            ),
            family(
                SKIPPED_EVENTS_TOTAL,
                "Queued events dropped for subscribers that could not keep up (RELAY_SLOW_CONSUMER=skip); each drop is told with a resync (reason slow).",
                MetricType::COUNTER,
                vec![counter(self.skipped, vec![])],
            ),
            family(
                HISTORY_EVICTED_STREAMS_TOTAL,
                "Session streams without sockets forgotten before their linger ended, to keep history within RELAY_HISTORY_MEMORY (their next event starts a new epoch).",
                MetricType::COUNTER,
                vec![counter(self.history_evicted, vec![])],
            ),
            family(
                DELIVERY_RECEIPTS_LATE_TOTAL,
                "Nodes whose delivery counts a ?wait=delivered publish through Redis did not get within its wait (1 s), per event.",
                MetricType::COUNTER,
                vec![counter(self.receipts_late, vec![])],
            ),
            family(
                PRESENCE_USERS,
                "(session, user) pairs presence tracks by name on this node, other nodes' users of its sessions included (bounded by RELAY_PRESENCE_MAX_USERS).",
                MetricType::GAUGE,
                vec![gauge(self.presence.users, vec![])],
            ),
            family(
                PRESENCE_SESSIONS,
                "Sessions with presence on this node.",
                MetricType::GAUGE,
                vec![gauge(self.presence.sessions, vec![])],
            ),
            family(
                PRESENCE_UNTRACKED_TOTAL,
                "Users not tracked by name because RELAY_PRESENCE_MAX_USERS was reached (their sockets still count).",
                MetricType::COUNTER,
                vec![counter(self.presence.untracked, vec![])],
            ),
            family(
                PRESENCE_FRAMES_TOTAL,
                "Presence frames queued to subscribers (one per subscriber per frame).",
                MetricType::COUNTER,
                vec![counter(self.presence.frames, vec![])],
            ),
            family(
                PRESENCE_FRAMES_DROPPED_TOTAL,
                "Presence frames not queued because the subscriber's queue was full.",
                MetricType::COUNTER,
                vec![counter(self.presence.frames_dropped, vec![])],
            ),
            family(
                PRESENCE_QUERIES_TOTAL,
                "GET /sessions/{session}/presence requests answered.",
                MetricType::COUNTER,
                vec![counter(self.presence.queries, vec![])],
            ),
            family(
                PRESENCE_NODES_EXPIRED_TOTAL,
                "Other nodes taken for dead by presence (no heartbeat within RELAY_PRESENCE_NODE_TIMEOUT), their users announced as leaving; counted by each shard that held their users.",
                MetricType::COUNTER,
                vec![counter(self.presence.nodes_expired, vec![])],
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
