//! Scenario files: the TOML schema, `--set key=value` overrides, and validation.
//!
//! Layout: this file holds the schema ([`Scenario`], [`Kind`], [`Transport`],
//! [`TargetKind`]) and what follows from it
//! (socket and request counts, the error budget); `duration` the `10s`-style
//! durations; `load` reading text and overrides; `validate` the ranges; `error` why a
//! scenario was refused.
//!
//! Owns: turning text into a validated [`Scenario`]. Does no I/O besides reading the file
//! in [`load`]; everything else is pure so it is unit-tested below.
//!
//! Precedence, lowest first: field defaults here → the scenario file → `--set` overrides and
//! the dedicated flags (`--url`, `--duration`), which the CLI turns into overrides too.

mod duration;
mod error;
mod load;
mod validate;

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use duration::{format_duration, parse_duration, Dur};
pub use error::ScenarioError;
pub use load::{from_str, load, parse_override};

/// The longest run any scenario may ask for; keeps every loop bounded in time.
pub const MAX_DURATION: Duration = Duration::from_secs(3600);
/// The most sockets one run may plan; far above RLIMIT_NOFILE, a typo guard.
pub const MAX_SOCKETS: u64 = 1_000_000;
/// Events in one `POST /events` batch may not exceed the contract's default limit.
pub const MAX_BATCH: u32 = 1000;
/// Keep-alive publisher connections, upper bound.
pub const MAX_PUBLISHERS: u32 = 1024;

/// What a scenario exercises. Every kind is described in `loadtest/scenarios/KIND.toml`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// Open sockets as fast as allowed; handshakes/s and handshake latency.
    ConnectStorm,
    /// Hold authenticated idle sockets; server RSS per connection.
    IdleHold,
    /// Sessions × sockets receiving a fixed-rate event stream.
    Fanout,
    /// HTTP publishers on keep-alive connections; accepted events/s.
    PublishThroughput,
    /// Fan-out where a share of the sockets never read; those must be closed with 4008.
    SlowConsumers,
    /// Fan-out while extra sockets connect and disconnect at a fixed rate.
    Churn,
    /// Publish to one node, receive on the nodes listed in `nodes`.
    CrossNode,
    /// Fan-out while a share of the sockets drops every second and resumes with `since=`;
    /// every event must be received or covered by a resync.
    Resume,
}

impl Kind {
    /// Whether the kind publishes events (and so measures deliveries and loss).
    pub fn publishes(self) -> bool {
        !matches!(self, Kind::ConnectStorm | Kind::IdleHold)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            Kind::ConnectStorm => "connect-storm",
            Kind::IdleHold => "idle-hold",
            Kind::Fanout => "fanout",
            Kind::PublishThroughput => "publish-throughput",
            Kind::SlowConsumers => "slow-consumers",
            Kind::Churn => "churn",
            Kind::CrossNode => "cross-node",
            Kind::Resume => "resume",
        };
        f.write_str(s)
    }
}

/// How receivers subscribe to their session: the relay's three transports, all carrying
/// the same JSON frames (welcome, events, resync) and the same `seq` order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Transport {
    /// `GET /ws?token=`: a WebSocket (RFC 6455).
    #[default]
    Ws,
    /// `GET /sse?token=`: a `text/event-stream` (resume with `Last-Event-ID`).
    Sse,
    /// `GET /poll?since=`: long-poll, one request per answer, each with `since=` the last.
    Poll,
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Transport::Ws => "ws",
            Transport::Sse => "sse",
            Transport::Poll => "poll",
        })
    }
}

/// What kind of server the run drives: the relay's contract, or a thin harness of the shape
/// other servers are benchmarked with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum TargetKind {
    /// A relay node: `GET /ws?token=JWT` (welcome frame, `seq`, `epoch`), `POST /events`
    /// with the API key and a JSON event (or `{"events": [...]}`), answered `202` with receipts.
    #[default]
    Relay,
    /// A harness: `GET /ws?session=S` joins topic S (no token; a socket counts as joined
    /// once the `101` arrives, no welcome frame), and `POST /publish/S` with the event's
    /// `data` bytes as the body, one event per request, answered with any `2xx`. Frames
    /// are the published bytes as they were sent: there is no seq, epoch or receipt, so
    /// latency and loss are read from the loadtest's own stamp (`"lt":"ns:id"`).
    Harness,
}

impl fmt::Display for TargetKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TargetKind::Relay => "relay",
            TargetKind::Harness => "harness",
        })
    }
}

/// One scenario, fully resolved (file + overrides). Field docs name the unit.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// What to run.
    pub kind: Kind,
    /// Free text from the file, echoed in the report.
    #[serde(default)]
    pub description: String,
    /// How sockets subscribe: `ws` (default), `sse` or `poll`. Every kind counts
    /// deliveries, latency and loss the same way over each.
    #[serde(default)]
    pub transport: Transport,
    /// What the nodes are: `relay` (default) or `harness` (`GET /ws?session=S`,
    /// `POST /publish/S`; see [`TargetKind::Harness`] for what it cannot measure).
    #[serde(default)]
    pub target: TargetKind,
    /// Node that publishers (and, unless `nodes` is set, sockets) talk to:
    /// `[http|https|ws|wss://]HOST[:PORT]`, loopback unless the run has `--allow-remote`
    /// (see [`crate::target::parse`]).
    #[serde(default = "defaults::url")]
    pub url: String,
    /// Nodes the sockets spread over, round-robin (cross-node). Empty: `url`.
    #[serde(default)]
    pub nodes: Vec<String>,
    /// Number of sessions; events go round-robin over them.
    #[serde(default = "defaults::one")]
    pub sessions: u32,
    /// Sockets joined to each session.
    #[serde(default = "defaults::one")]
    pub sockets_per_session: u32,
    /// How long events are published (or sockets held, for idle-hold).
    #[serde(default = "defaults::duration")]
    pub duration: Dur,
    /// Events per second, all sessions together, on a fixed open-loop schedule.
    #[serde(default = "defaults::rate")]
    pub rate: f64,
    /// Size of each event's `data` JSON, in bytes (at least [`crate::event::MIN_DATA_BYTES`]).
    #[serde(default = "defaults::event_bytes")]
    pub event_bytes: usize,
    /// Events per `POST /events` request: 1 sends a single event, more send `{"events": [...]}`.
    /// A harness target takes exactly 1.
    #[serde(default = "defaults::one")]
    pub batch: u32,
    /// Keep-alive HTTP connections used by the publisher.
    #[serde(default = "defaults::publishers")]
    pub publishers: u32,
    /// Handshakes in flight at once (per process).
    #[serde(default = "defaults::connect_concurrency")]
    pub connect_concurrency: u32,
    /// Handshakes started per second on a fixed schedule; 0 means "as fast as concurrency allows".
    #[serde(default)]
    pub connect_rate: f64,
    /// Percent of sockets that never read after the welcome (slow-consumers).
    #[serde(default)]
    pub slow_percent: f64,
    /// SO_RCVBUF for slow sockets in bytes, so the server's queue fills sooner; 0 leaves the default.
    #[serde(default = "defaults::slow_rcvbuf")]
    pub slow_rcvbuf: u32,
    /// Extra short-lived sockets opened per second while events flow (churn).
    #[serde(default)]
    pub churn_rate: f64,
    /// How long each churn socket stays connected.
    #[serde(default = "defaults::churn_life")]
    pub churn_life: Dur,
    /// Share of the sockets dropped each second and resumed with `since=` (resume), 0..=1.
    #[serde(default = "defaults::drop_fraction")]
    pub drop_fraction: f64,
    /// Share of those drops that come back with `since=` (resume), 0..=1; the others
    /// reconnect fresh, without `since`, as a client that lost its place does.
    #[serde(default = "defaults::resume_share")]
    pub resume_share: f64,
    /// How long a dropped socket stays away before it reconnects (resume).
    #[serde(default = "defaults::away")]
    pub away: Dur,
    /// resume: a socket whose connection fails (reset, EOF, or a close the socket did not
    /// ask for: its node died or drained) reconnects with `since=` to the next node of
    /// `nodes`, as a client holding a list of node URLs does, instead of ending.
    #[serde(default)]
    pub failover: bool,
    /// Source addresses 127.0.0.2 … 127.0.0.(N+1) to bind before connect; 0 binds none.
    #[serde(default = "defaults::source_addrs")]
    pub source_addrs: u32,
    /// After the last publish, how long sockets keep reading for stragglers.
    #[serde(default = "defaults::drain")]
    pub drain: Dur,
    /// Pause before RSS samples (idle-hold) so the server settles.
    #[serde(default = "defaults::settle")]
    pub settle: Dur,
    /// Bound on a TCP connect + upgrade + welcome.
    #[serde(default = "defaults::timeout")]
    pub connect_timeout: Dur,
    /// Bound on one `POST /events` round trip.
    #[serde(default = "defaults::timeout")]
    pub request_timeout: Dur,
    /// The run fails when errors exceed this count…
    #[serde(default)]
    pub max_errors: u64,
    /// …and also exceed this fraction of operations (sockets + requests).
    #[serde(default)]
    pub max_error_ratio: f64,
}

mod defaults {
    use super::Dur;
    pub fn url() -> String {
        "http://127.0.0.1:3000".to_owned()
    }
    pub fn one() -> u32 {
        1
    }
    pub fn duration() -> Dur {
        Dur::secs(10)
    }
    pub fn rate() -> f64 {
        1000.0
    }
    pub fn event_bytes() -> usize {
        100
    }
    pub fn publishers() -> u32 {
        4
    }
    pub fn connect_concurrency() -> u32 {
        256
    }
    pub fn slow_rcvbuf() -> u32 {
        4096
    }
    pub fn churn_life() -> Dur {
        Dur::secs(1)
    }
    pub fn drop_fraction() -> f64 {
        0.1
    }
    pub fn resume_share() -> f64 {
        1.0
    }
    pub fn away() -> Dur {
        Dur::millis(200)
    }
    pub fn source_addrs() -> u32 {
        4
    }
    pub fn drain() -> Dur {
        Dur::secs(2)
    }
    pub fn settle() -> Dur {
        Dur::secs(2)
    }
    pub fn timeout() -> Dur {
        Dur::secs(10)
    }
}

impl Scenario {
    /// Sockets the scenario keeps open for the whole run (not counting churn sockets).
    pub fn total_sockets(&self) -> u64 {
        u64::from(self.sessions) * u64::from(self.sockets_per_session)
    }

    /// Nodes the sockets connect to: `nodes`, or `url` when `nodes` is empty.
    pub fn receive_nodes(&self) -> Vec<String> {
        if self.nodes.is_empty() {
            vec![self.url.clone()]
        } else {
            self.nodes.clone()
        }
    }

    /// Publish requests the open-loop schedule sends: `rate × duration / batch`, at least 1.
    pub fn requests_planned(&self) -> u64 {
        if !self.kind.publishes() {
            return 0;
        }
        let events = (self.rate * self.duration.0.as_secs_f64()).floor();
        ((events / f64::from(self.batch)).floor() as u64).max(1)
    }

    /// Nanoseconds between two scheduled requests.
    pub fn request_interval_ns(&self) -> u64 {
        (1e9 * f64::from(self.batch) / self.rate).round().max(1.0) as u64
    }

    /// Churn sockets alive at once, worst case: each lives at most connect_timeout + life +
    /// 1 s (closing), so rate × that, rounded up, plus one.
    pub fn churn_live_max(&self) -> u64 {
        if self.kind != Kind::Churn || self.churn_rate <= 0.0 {
            return 0;
        }
        let life = self.connect_timeout.0 + self.churn_life.0 + Duration::from_secs(1);
        (self.churn_rate * life.as_secs_f64()).ceil() as u64 + 1
    }

    /// Whether subscribers need a signed token and publishers the API key: only a relay.
    pub fn needs_credentials(&self) -> bool {
        self.target == TargetKind::Relay
    }

    /// Whether socket `g` (global index) is a slow consumer: `slow_percent` of the sockets,
    /// spread evenly over sessions rather than bunched at the start.
    pub fn is_slow(&self, g: u64) -> bool {
        if self.kind != Kind::SlowConsumers || self.slow_percent <= 0.0 {
            return false;
        }
        let p = self.slow_percent / 100.0;
        ((g + 1) as f64 * p).floor() > (g as f64 * p).floor()
    }

    /// Error budget: the run fails when errors exceed both `max_errors` and
    /// `max_error_ratio × operations`.
    pub fn error_budget(&self, operations: u64) -> u64 {
        let by_ratio = (self.max_error_ratio * operations as f64).floor() as u64;
        self.max_errors.max(by_ratio)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A valid fan-out file, shared by the tests of every scenario module.
    pub(super) const FANOUT: &str = r#"
        kind = "fanout"
        sessions = 100
        sockets_per_session = 10
        rate = 10000
        duration = "5s"
        batch = 10
    "#;

    #[test]
    fn fanout_file_parses_with_defaults() {
        let s = from_str(FANOUT, &[]).expect("valid");
        assert_eq!(s.kind, Kind::Fanout);
        assert_eq!(s.total_sockets(), 1000);
        assert_eq!(s.duration, Dur::secs(5));
        assert_eq!(s.url, "http://127.0.0.1:3000");
        assert_eq!(s.event_bytes, 100);
        assert_eq!(s.requests_planned(), 5000);
        assert_eq!(s.request_interval_ns(), 1_000_000);
        assert_eq!(s.transport, Transport::Ws);
    }

    #[test]
    fn transport_is_a_field_and_an_override() {
        let s = from_str(FANOUT, &["transport=sse".into()]).expect("valid");
        assert_eq!(s.transport, Transport::Sse);
        assert_eq!(s.transport.to_string(), "sse");
        let s = from_str(&format!("{FANOUT}\ntransport = \"poll\"\n"), &[]).expect("valid");
        assert_eq!(s.transport, Transport::Poll);
        let err = from_str(FANOUT, &["transport=smoke".into()]).unwrap_err();
        assert!(err.to_string().contains("smoke"), "{err}");
    }

    #[test]
    fn slow_sockets_are_spread_evenly() {
        let s = from_str(
            "kind = \"slow-consumers\"\nsessions = 10\nsockets_per_session = 10\nslow_percent = 10\n",
            &[],
        )
        .expect("valid");
        let slow: Vec<u64> = (0..100).filter(|g| s.is_slow(*g)).collect();
        assert_eq!(slow.len(), 10);
        assert_eq!(slow, vec![9, 19, 29, 39, 49, 59, 69, 79, 89, 99]);
        let fanout = from_str(FANOUT, &[]).expect("valid");
        assert!(!(0..1000).any(|g| fanout.is_slow(g)));
    }

    #[test]
    fn error_budget_takes_the_larger_allowance() {
        let mut s = from_str(FANOUT, &[]).expect("valid");
        assert_eq!(s.error_budget(1_000_000), 0);
        s.max_errors = 5;
        s.max_error_ratio = 0.001;
        assert_eq!(s.error_budget(1000), 5);
        assert_eq!(s.error_budget(1_000_000), 1000);
    }

    #[test]
    fn resolved_scenario_round_trips_through_toml() {
        let s = from_str(FANOUT, &["slow_rcvbuf=0".into()]).expect("valid");
        let text = toml::to_string(&s).expect("serialize");
        let back = from_str(&text, &[]).expect("reparse");
        assert_eq!(s, back);
    }
}
