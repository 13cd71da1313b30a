//! Scenario files: the TOML schema, `--set key=value` overrides, and validation.
//!
//! Owns: turning text into a validated [`Scenario`]. Does no I/O besides reading the file
//! in [`load`]; everything else is pure so it is unit-tested below.
//!
//! Precedence, lowest first: field defaults here → the scenario file → `--set` overrides and
//! the dedicated flags (`--url`, `--duration`), which the CLI turns into overrides too.

use std::fmt;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

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

/// A duration written as `"10s"`, `"250ms"`, `"2m"`, `"1h"`, `"500us"` or a number of seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Dur(pub Duration);

impl Dur {
    pub const fn secs(s: u64) -> Self {
        Dur(Duration::from_secs(s))
    }
    pub const fn millis(ms: u64) -> Self {
        Dur(Duration::from_millis(ms))
    }
}

/// Parses `"10s"`, `"1.5s"`, `"250ms"`, `"500us"`, `"2m"`, `"1h"`, or bare seconds `"10"`.
pub fn parse_duration(text: &str) -> Result<Duration, ScenarioError> {
    let t = text.trim();
    let bad = || ScenarioError::BadDuration(text.to_owned());
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num.parse().map_err(|_| bad())?;
    let scale = match unit.trim() {
        "" | "s" => 1.0,
        "ms" => 1e-3,
        "us" | "µs" => 1e-6,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        _ => return Err(bad()),
    };
    let secs = value * scale;
    if !secs.is_finite() || !(0.0..=1e9).contains(&secs) {
        return Err(bad());
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Formats a duration the way [`parse_duration`] reads it.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if d.subsec_millis() == 0 && d.as_nanos() % 1_000_000 == 0 && ms % 1000 == 0 {
        format!("{}s", d.as_secs())
    } else if d.as_nanos() % 1_000_000 == 0 {
        format!("{ms}ms")
    } else {
        format!("{}us", d.as_micros())
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u64),
            Float(f64),
            Text(String),
        }
        let d = match Raw::deserialize(de)? {
            Raw::Int(s) => Duration::from_secs(s),
            Raw::Float(s) if s.is_finite() && (0.0..1e9).contains(&s) => Duration::from_secs_f64(s),
            Raw::Float(s) => return Err(serde::de::Error::custom(format!("bad duration {s}"))),
            Raw::Text(t) => parse_duration(&t).map_err(serde::de::Error::custom)?,
        };
        Ok(Dur(d))
    }
}

impl Serialize for Dur {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_duration(self.0))
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
    /// Node that publishers (and, unless `nodes` is set, sockets) talk to.
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
    /// How long a dropped socket stays away before it reconnects (resume).
    #[serde(default = "defaults::away")]
    pub away: Dur,
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

/// Why a scenario was refused. The message is meant for the person who wrote the file.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// The file could not be read: check the path.
    #[error("cannot read scenario {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    /// The file is not valid TOML or has a field of the wrong type: fix the file.
    #[error("scenario is not valid: {0}")]
    Parse(String),
    /// An override was not `key=value`.
    #[error("override {0:?} is not key=value")]
    BadOverride(String),
    /// A duration could not be read.
    #[error("bad duration {0:?} (use e.g. 10s, 250ms, 2m)")]
    BadDuration(String),
    /// A field is out of its range; the message says which and why.
    #[error("scenario field `{field}`: {why}")]
    Invalid { field: &'static str, why: String },
}

fn invalid(field: &'static str, why: impl Into<String>) -> ScenarioError {
    ScenarioError::Invalid {
        field,
        why: why.into(),
    }
}

/// Reads a scenario file and applies overrides (`key=value`, value in TOML syntax or bare text).
pub fn load(path: &Path, overrides: &[String]) -> Result<Scenario, ScenarioError> {
    let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Read {
        path: path.display().to_string(),
        source,
    })?;
    from_str(&text, overrides)
}

/// Parses scenario text, applies overrides, validates.
pub fn from_str(text: &str, overrides: &[String]) -> Result<Scenario, ScenarioError> {
    let mut table: toml::Table =
        toml::from_str(text).map_err(|e| ScenarioError::Parse(e.to_string()))?;
    for item in overrides {
        let (key, value) = parse_override(item)?;
        table.insert(key, value);
    }
    let scenario: Scenario = table
        .try_into()
        .map_err(|e: toml::de::Error| ScenarioError::Parse(e.to_string()))?;
    scenario.validate()?;
    Ok(scenario)
}

/// Splits `key=value`; the key's dashes become underscores; the value is read as TOML when it
/// parses (`10`, `1.5`, `true`, `["a","b"]`, `"x"`) and taken as a string otherwise (`10s`).
pub fn parse_override(item: &str) -> Result<(String, toml::Value), ScenarioError> {
    let (key, raw) = item
        .split_once('=')
        .ok_or_else(|| ScenarioError::BadOverride(item.to_owned()))?;
    let key = key.trim().replace('-', "_");
    if key.is_empty() {
        return Err(ScenarioError::BadOverride(item.to_owned()));
    }
    let raw = raw.trim();
    let value = toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_owned()));
    Ok((key, value))
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

    /// Whether socket `g` (global index) is a slow consumer: `slow_percent` of the sockets,
    /// spread evenly over sessions rather than bunched at the start.
    pub fn is_slow(&self, g: u64) -> bool {
        if self.kind != Kind::SlowConsumers || self.slow_percent <= 0.0 {
            return false;
        }
        let p = self.slow_percent / 100.0;
        ((g + 1) as f64 * p).floor() > (g as f64 * p).floor()
    }

    /// Checks ranges. Target addresses are checked separately in [`crate::target`].
    pub fn validate(&self) -> Result<(), ScenarioError> {
        if self.duration.0.is_zero() || self.duration.0 > MAX_DURATION {
            return Err(invalid("duration", "must be between 1ms and 1h"));
        }
        for (field, d) in [
            ("drain", self.drain),
            ("settle", self.settle),
            ("connect_timeout", self.connect_timeout),
            ("request_timeout", self.request_timeout),
            ("churn_life", self.churn_life),
            ("away", self.away),
        ] {
            if d.0 > Duration::from_secs(600) {
                return Err(invalid(field, "must be at most 10 minutes"));
            }
        }
        if self.connect_timeout.0.is_zero() || self.request_timeout.0.is_zero() {
            return Err(invalid("connect_timeout", "timeouts must be above zero"));
        }
        if self.sessions == 0 {
            return Err(invalid("sessions", "must be at least 1"));
        }
        let needs_sockets = !matches!(self.kind, Kind::PublishThroughput);
        if needs_sockets && self.sockets_per_session == 0 {
            return Err(invalid("sockets_per_session", "must be at least 1"));
        }
        if self.total_sockets() > MAX_SOCKETS {
            return Err(invalid(
                "sockets_per_session",
                format!("sessions × sockets_per_session is above {MAX_SOCKETS}"),
            ));
        }
        if self.kind.publishes() {
            if !(self.rate.is_finite() && self.rate > 0.0 && self.rate <= 10_000_000.0) {
                return Err(invalid(
                    "rate",
                    "must be above 0 and at most 10,000,000 events/s",
                ));
            }
            if self.batch == 0 || self.batch > MAX_BATCH {
                return Err(invalid("batch", format!("must be 1..={MAX_BATCH}")));
            }
            if self.publishers == 0 || self.publishers > MAX_PUBLISHERS {
                return Err(invalid(
                    "publishers",
                    format!("must be 1..={MAX_PUBLISHERS}"),
                ));
            }
            if self.event_bytes < crate::event::MIN_DATA_BYTES || self.event_bytes > 1 << 20 {
                return Err(invalid(
                    "event_bytes",
                    format!(
                        "must be {}..=1048576 (the timestamp needs room)",
                        crate::event::MIN_DATA_BYTES
                    ),
                ));
            }
            if self.event_bytes * self.batch as usize > 16 << 20 {
                return Err(invalid("batch", "event_bytes × batch is above 16 MiB"));
            }
        }
        if self.connect_concurrency == 0 {
            return Err(invalid("connect_concurrency", "must be at least 1"));
        }
        if !(self.connect_rate.is_finite() && self.connect_rate >= 0.0) {
            return Err(invalid(
                "connect_rate",
                "must be 0 (unpaced) or a positive rate",
            ));
        }
        if !(0.0..=100.0).contains(&self.slow_percent) {
            return Err(invalid("slow_percent", "must be between 0 and 100"));
        }
        if self.kind == Kind::SlowConsumers && self.slow_percent <= 0.0 {
            return Err(invalid(
                "slow_percent",
                "slow-consumers needs slow_percent above 0",
            ));
        }
        if !(self.churn_rate.is_finite() && (0.0..=100_000.0).contains(&self.churn_rate)) {
            return Err(invalid(
                "churn_rate",
                "must be between 0 and 100,000 per second",
            ));
        }
        if self.kind == Kind::Churn && (self.churn_rate <= 0.0 || self.churn_life.0.is_zero()) {
            return Err(invalid(
                "churn_rate",
                "churn needs churn_rate and churn_life above 0",
            ));
        }
        if !(self.drop_fraction.is_finite() && (0.0..=1.0).contains(&self.drop_fraction)) {
            return Err(invalid("drop_fraction", "must be between 0 and 1"));
        }
        if self.source_addrs > 250 {
            return Err(invalid(
                "source_addrs",
                "at most 250 (127.0.0.2 … 127.0.0.251)",
            ));
        }
        if self.kind == Kind::CrossNode && self.nodes.is_empty() {
            return Err(invalid(
                "nodes",
                "cross-node needs the list of node URLs to receive on",
            ));
        }
        if !(self.max_error_ratio.is_finite() && (0.0..=1.0).contains(&self.max_error_ratio)) {
            return Err(invalid("max_error_ratio", "must be between 0 and 1"));
        }
        Ok(())
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

    const FANOUT: &str = r#"
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
    }

    #[test]
    fn overrides_win_over_the_file_and_accept_dashes_and_bare_text() {
        let s = from_str(
            FANOUT,
            &[
                "sockets-per-session=3".into(),
                "duration=250ms".into(),
                "url=http://127.0.0.1:4000".into(),
                "rate=12.5".into(),
            ],
        )
        .expect("valid");
        assert_eq!(s.sockets_per_session, 3);
        assert_eq!(s.duration, Dur::millis(250));
        assert_eq!(s.url, "http://127.0.0.1:4000");
        assert!((s.rate - 12.5).abs() < 1e-9);
    }

    #[test]
    fn unknown_field_is_refused() {
        let err = from_str("kind = \"fanout\"\nsokets = 3\n", &[]).unwrap_err();
        assert!(err.to_string().contains("sokets"), "{err}");
    }

    #[test]
    fn override_without_equals_is_refused() {
        assert!(matches!(
            parse_override("rate"),
            Err(ScenarioError::BadOverride(_))
        ));
    }

    #[test]
    fn out_of_range_fields_name_the_field() {
        for (o, field) in [
            ("batch=0", "batch"),
            ("batch=1001", "batch"),
            ("rate=0", "rate"),
            ("event_bytes=3", "event_bytes"),
            ("duration=2h", "duration"),
            ("sessions=0", "sessions"),
        ] {
            let err = from_str(FANOUT, &[o.into()]).unwrap_err();
            match err {
                ScenarioError::Invalid { field: f, .. } => assert_eq!(f, field, "{o}"),
                other => panic!("{o}: {other}"),
            }
        }
    }

    #[test]
    fn durations_parse_in_every_unit() {
        assert_eq!(parse_duration("10s").ok(), Some(Duration::from_secs(10)));
        assert_eq!(
            parse_duration("1.5s").ok(),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(
            parse_duration("250ms").ok(),
            Some(Duration::from_millis(250))
        );
        assert_eq!(parse_duration("2m").ok(), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("7").ok(), Some(Duration::from_secs(7)));
        assert_eq!(
            parse_duration("500us").ok(),
            Some(Duration::from_micros(500))
        );
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("5 parsecs").is_err());
        assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
        assert_eq!(format_duration(Duration::from_secs(3)), "3s");
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
    fn cross_node_needs_nodes_and_churn_needs_a_rate() {
        assert!(from_str("kind = \"cross-node\"\n", &[]).is_err());
        assert!(from_str(
            "kind = \"cross-node\"\nnodes = [\"http://127.0.0.1:3001\"]\n",
            &[]
        )
        .is_ok());
        assert!(from_str("kind = \"churn\"\n", &[]).is_err());
        let churn = from_str(
            "kind = \"churn\"\nchurn_rate = 50\nchurn_life = \"2s\"\n",
            &[],
        )
        .expect("valid");
        assert_eq!(churn.churn_live_max(), 50 * 13 + 1);
    }

    #[test]
    fn resume_defaults_and_ranges() {
        let s = from_str("kind = \"resume\"\n", &[]).expect("valid");
        assert_eq!(s.kind, Kind::Resume);
        assert!(s.kind.publishes());
        assert!((s.drop_fraction - 0.1).abs() < 1e-12);
        assert_eq!(s.away, Dur::millis(200));
        for bad in ["drop_fraction=1.5", "drop_fraction=-0.1"] {
            match from_str("kind = \"resume\"\n", &[bad.into()]) {
                Err(ScenarioError::Invalid { field, .. }) => assert_eq!(field, "drop_fraction"),
                other => panic!("{bad}: {other:?}"),
            }
        }
        assert!(from_str("kind = \"resume\"\naway = \"11m\"\n", &[]).is_err());
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
