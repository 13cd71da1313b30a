//! The validated configuration of a node, and the one home of every default.
//!
//! Precedence, highest first: a command-line flag, a real environment variable,
//! a line of `.env.local` (loaded by `main` before parsing, never overriding the
//! real environment), then the defaults below. `cli::ServeArgs::to_config` turns
//! the parsed flags into a [`Config`] and refuses anything unsafe to run with;
//! tests build a [`Config`] directly.
//!
//! This module does no network I/O; the only file it touches is `.env.local`
//! in `--dev` mode, and [`memory_limit`] reads the cgroup's memory limit once at
//! start (for `main`, which may lower the default history cap under it).

use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use crate::auth::{JwtRules, OriginPolicy, Secret};
use crate::limiter::LimiterConfig;

pub mod memory_limit;
mod reload;
pub use crate::subscribe::Transports;
pub use reload::{parse_trusted_proxies, secret_value, RELOADABLE};

/// `PORT`: the contract's default.
pub const DEFAULT_PORT: u16 = 3000;
/// A JWT secret shorter than this is refused: HS256 keys below 256 bits are guessable.
pub const MIN_SECRET_BYTES: usize = 32;
/// Absolute deadline for a request head, from accept or the end of the previous request.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Absolute deadline for a `POST /events` body, from the end of its head.
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// Request head bytes (431 above): browsers send 1-2 KiB, a JWT in the query adds ~1 KiB.
pub const DEFAULT_MAX_HEAD_BYTES: usize = 16 * 1024;
/// `POST /events` body bytes (413 above).
pub const DEFAULT_MAX_BODY_BYTES: usize = 1024 * 1024;
/// Events in one batch (413 above).
pub const DEFAULT_MAX_BATCH_EVENTS: usize = 1000;
/// Client message bytes (close 1009 above): clients only send small control messages.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 16 * 1024;
/// Client message bytes in `--echo` test mode, where conformance suites send big messages.
pub const ECHO_MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;
/// Outbound bytes queued for one socket before it is closed with 4008.
pub const DEFAULT_MAX_OUTBOUND_BYTES: usize = 1024 * 1024;
/// Open WebSockets per node (503 above). The machine's file limit is the real ceiling.
pub const DEFAULT_MAX_CONNECTIONS: usize = 100_000;
/// A socket idle this long gets a ping.
pub const DEFAULT_PING_INTERVAL: Duration = Duration::from_secs(25);
/// A socket silent this long (no pong, no message) is closed as dead.
pub const DEFAULT_PING_TIMEOUT: Duration = Duration::from_secs(60);
/// SIGTERM: how long sockets get to receive their 1012 before the process exits.
/// Messages one shard's inbox holds: with a batch per message this is a burst of
/// 16 Ki requests routed to one shard before publishers get 503.
pub const DEFAULT_INBOX_MESSAGES: usize = 16 * 1024;
/// A long-poll's wait: under the 30 s idle timeout of common proxies and load
/// balancers, so the empty answer gets through.
pub const DEFAULT_POLL_TIMEOUT: Duration = Duration::from_secs(25);
/// On SIGTERM, unready but serving this long before the listeners close: about
/// two readiness probes of a load balancer polling every second.
pub const DEFAULT_DRAIN_READY_DELAY: Duration = Duration::from_secs(2);
/// What the default drain spread leaves of the drain timeout for the last
/// clients' close handshakes.
pub const DRAIN_MARGIN: Duration = Duration::from_secs(1);
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Clock leeway for `exp`, `nbf` and `iat`: small, since tokens live minutes.
pub const DEFAULT_JWT_LEEWAY: Duration = Duration::from_secs(5);
/// Upgrades per second per client address: generous, since an office behind one
/// NAT address opens a socket per person when everyone loads a page at 9 am.
pub const DEFAULT_CONNECT_RATE: u32 = 50;
/// Published events per second per API key.
pub const DEFAULT_PUBLISH_RATE: u32 = 100_000;
/// Sockets one session may hold on a node: a session is one issue or page, so
/// thousands mean a leak or an attack.
pub const DEFAULT_MAX_SOCKETS_PER_SESSION: usize = 10_000;
/// Messages per second a client may send: clients send pongs and token refreshes,
/// a handful a minute.
pub const DEFAULT_CLIENT_MESSAGE_RATE: u32 = 50;
/// Events kept per session for resume.
pub const DEFAULT_HISTORY_EVENTS: usize = 1000;
/// Bytes of frames kept per session for resume.
pub const DEFAULT_HISTORY_BYTES: usize = 1024 * 1024;
/// How long an event stays resumable, and how long a stream outlives its last socket.
pub const DEFAULT_HISTORY_TTL: Duration = Duration::from_secs(120);
/// History memory per node, all sessions together.
pub const DEFAULT_HISTORY_MEMORY: usize = 256 * 1024 * 1024;
/// How long a published id is remembered for dedupe: longer than any sane retry loop.
pub const DEFAULT_DEDUPE_WINDOW: Duration = Duration::from_secs(300);
/// Origins allowed in `--dev` when `ALLOWED_ORIGINS` is unset: any localhost page.
pub const DEV_ALLOWED_ORIGINS: &str =
    "http://localhost:*,https://localhost:*,http://127.0.0.1:*,https://127.0.0.1:*";
/// `RELAY_PRESENCE_INTERVAL`: at most one presence frame per session this often,
/// so a big session's churn costs one frame per interval, not one per join.
pub const DEFAULT_PRESENCE_INTERVAL: Duration = Duration::from_secs(1);
/// `RELAY_PRESENCE_NODE_TIMEOUT`: a node not heard from this long (with Redis) is
/// taken for dead, and its users are announced as leaving.
pub const DEFAULT_PRESENCE_NODE_TIMEOUT: Duration = Duration::from_secs(30);
/// `RELAY_PRESENCE_LIST_MAX`: above this many users a session's presence (frames
/// and `GET /sessions/{session}/presence`) is counts only: a list that long is no
/// use to a screen and costs every socket its bytes.
pub const DEFAULT_PRESENCE_LIST_MAX: usize = 1000;
/// `RELAY_PRESENCE_MAX_USERS`: (session, user) pairs a node tracks by name, all
/// sessions together; past it a socket still counts in `sockets`, not by name.
/// About 100 bytes each: 1 M pairs is about 100 MB at most.
pub const DEFAULT_PRESENCE_MAX_USERS: usize = 1_000_000;
/// Where `--dev` keeps the secrets it generated.
pub const DEV_ENV_FILE: &str = ".env.local";

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Human,
    Json,
}

/// Every limit a client or publisher can cross; each has a flag and a default above.
#[derive(Debug, Clone)]
pub struct Limits {
    pub handshake_timeout: Duration,
    pub body_timeout: Duration,
    pub max_head_bytes: usize,
    pub max_body_bytes: usize,
    pub max_batch_events: usize,
    pub max_message_bytes: usize,
    pub max_outbound_bytes: usize,
    pub max_connections: usize,
    pub ping_interval: Duration,
    pub ping_timeout: Duration,
    pub drain_timeout: Duration,
    /// Client messages per second per socket (0: no budget).
    pub client_message_rate: u32,
    /// How long a long-poll waits for an event before it answers with none.
    pub poll_timeout: Duration,
    /// On SIGTERM, how long the node stays unready but still serving before its
    /// listeners close, so load balancers stop sending first.
    pub drain_ready_delay: Duration,
    /// The window the 1012s are spread over, in random order; `None`: the drain
    /// timeout less the ready delay and a one-second margin.
    pub drain_spread: Option<Duration>,
    /// What happens to a subscriber whose queue is full (`RELAY_SLOW_CONSUMER`).
    pub slow_consumer: SlowConsumer,
}

/// What the relay does with a subscriber that cannot keep up: its queue reached
/// `RELAY_MAX_OUTBOUND_BYTES` and the kernel would take no more.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum SlowConsumer {
    /// Close it with 4008; it reconnects with `since` (a replay, or a resync).
    /// For streams where every event matters.
    #[default]
    Close,
    /// Keep it, drop its oldest queued events, and tell it with a resync (reason
    /// `slow`) naming the position it continues from. For dashboards that want
    /// the latest state more than every step.
    Skip,
}

impl Limits {
    /// The window a drain spreads its 1012s over.
    pub fn drain_spread(&self) -> Duration {
        self.drain_spread.unwrap_or_else(|| {
            self.drain_timeout
                .saturating_sub(self.drain_ready_delay)
                .saturating_sub(DRAIN_MARGIN)
        })
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            body_timeout: DEFAULT_BODY_TIMEOUT,
            max_head_bytes: DEFAULT_MAX_HEAD_BYTES,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            max_batch_events: DEFAULT_MAX_BATCH_EVENTS,
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            max_outbound_bytes: DEFAULT_MAX_OUTBOUND_BYTES,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            ping_interval: DEFAULT_PING_INTERVAL,
            ping_timeout: DEFAULT_PING_TIMEOUT,
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            client_message_rate: DEFAULT_CLIENT_MESSAGE_RATE,
            poll_timeout: DEFAULT_POLL_TIMEOUT,
            drain_ready_delay: DEFAULT_DRAIN_READY_DELAY,
            drain_spread: None,
            slow_consumer: SlowConsumer::Close,
        }
    }
}

/// Whether a session's subscribers get presence frames (`RELAY_PRESENCE`; a token's
/// `presence` claim may ask for more for its own socket).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, clap::ValueEnum)]
pub enum PresenceMode {
    /// No presence frames (the query still answers).
    #[default]
    Off,
    /// Frames carry the counts only (`users_total`, `sockets`).
    Counts,
    /// Frames also name who joined and who left.
    Users,
}

impl PresenceMode {
    /// A token's `presence` claim: `"counts"` or `"users"` (anything else: off).
    pub fn from_claim(value: &str) -> PresenceMode {
        match value {
            "users" => PresenceMode::Users,
            "counts" => PresenceMode::Counts,
            _ => PresenceMode::Off,
        }
    }
}

/// Presence: who holds a socket in each session (see `shard::presence`).
#[derive(Debug, Clone)]
pub struct PresenceConfig {
    /// Frames for every subscriber (`RELAY_PRESENCE`).
    pub mode: PresenceMode,
    /// At most one presence frame per session per interval.
    pub interval: Duration,
    /// With Redis: a node silent this long is dead and its users leave.
    pub node_timeout: Duration,
    /// Above this many users, counts only.
    pub list_max: usize,
    /// (session, user) pairs tracked by name on the node.
    pub max_users: usize,
}

impl Default for PresenceConfig {
    fn default() -> Self {
        PresenceConfig {
            mode: PresenceMode::Off,
            interval: DEFAULT_PRESENCE_INTERVAL,
            node_timeout: DEFAULT_PRESENCE_NODE_TIMEOUT,
            list_max: DEFAULT_PRESENCE_LIST_MAX,
            max_users: DEFAULT_PRESENCE_MAX_USERS,
        }
    }
}

/// Where resumable history lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum HistoryStore {
    /// A ring per session on its owning shard: resume on the node that held it.
    Memory,
    /// Also a Redis Stream per session: resume on any node (needs `REDIS_URL`).
    Redis,
}

/// Sequencing, resume and dedupe (see `shard::history`).
#[derive(Debug, Clone)]
pub struct HistoryConfig {
    /// Events kept per session (0: no history; every resume gets a resync).
    pub events: usize,
    /// Frame bytes kept per session.
    pub bytes: usize,
    /// Age after which an event is no longer replayed, and idle streams are forgotten.
    pub max_age: Duration,
    /// All sessions' history on the node.
    pub memory: usize,
    pub dedupe_window: Duration,
    pub store: HistoryStore,
}

impl Default for HistoryConfig {
    fn default() -> Self {
        HistoryConfig {
            events: DEFAULT_HISTORY_EVENTS,
            bytes: DEFAULT_HISTORY_BYTES,
            max_age: DEFAULT_HISTORY_TTL,
            memory: DEFAULT_HISTORY_MEMORY,
            dedupe_window: DEFAULT_DEDUPE_WINDOW,
            store: HistoryStore::Memory,
        }
    }
}

/// Token rules' defaults live here with the others; the type is `auth`'s.
impl Default for JwtRules {
    fn default() -> Self {
        JwtRules {
            leeway: DEFAULT_JWT_LEEWAY,
            max_lifetime: None,
            audience: None,
            issuer: None,
        }
    }
}

/// A node's whole configuration, validated: what is fixed from start to exit, and
/// in [`Config::live`] what a SIGHUP may change.
#[derive(Debug, Clone)]
pub struct Config {
    pub host: IpAddr,
    pub port: u16,
    pub admin_port: Option<u16>,
    /// Number of shards, each a glommio executor pinned to one core.
    pub shards: usize,
    /// Messages each shard's inbox holds (`RELAY_INBOX_MESSAGES`).
    pub inbox_messages: usize,
    pub dev: bool,
    /// Conformance-test mode: sockets echo what clients send (only with `dev`).
    pub echo: bool,
    pub log_format: LogFormat,
    /// Redis for cross-node fan-out (it may hold a password: a [`Secret`]).
    pub redis_url: Option<Secret>,
    /// `redis_url` lists seed nodes of a Redis Cluster.
    pub redis_cluster: bool,
    /// PEM CA certificates to trust for `rediss://`; `None`: the system's roots.
    pub redis_ca: Option<Vec<u8>>,
    /// Rate limiters and caps.
    pub limiters: LimiterConfig,
    /// Sequencing, resume history and dedupe.
    pub history: HistoryConfig,
    /// Presence frames and bounds.
    pub presence: PresenceConfig,
    /// Where reloadable settings come from on SIGHUP (see [`Config::reloaded`]).
    pub sources: ReloadSources,
    /// The settings a SIGHUP may replace; shards receive them whole.
    pub live: LiveConfig,
}

/// What a running node may change on SIGHUP ([`RELOADABLE`] names the variables).
/// Shards hold it behind an `Arc` and swap it whole, never field by field.
#[derive(Debug, Clone)]
pub struct LiveConfig {
    /// Any of these verifies a token; the first one signs `relay token`.
    pub jwt_secrets: Vec<Secret>,
    /// Any of these authorizes `POST /events`.
    pub api_keys: Vec<Secret>,
    pub origins: OriginPolicy,
    pub jwt: JwtRules,
    pub limits: Limits,
    /// The tracing filter.
    pub log_level: String,
    /// The transports offered (`RELAY_TRANSPORTS`).
    pub transports: Transports,
}

/// Files a running node reads again on SIGHUP.
#[derive(Debug, Clone, Default)]
pub struct ReloadSources {
    pub jwt_secret_file: Option<PathBuf>,
    pub api_key_file: Option<PathBuf>,
    pub config_file: Option<PathBuf>,
}

/// Splits a comma-separated secret list and checks each value's strength.
pub fn parse_secret_list(
    variable: &'static str,
    raw: Option<&str>,
    min_len: usize,
) -> Result<Vec<Secret>, ConfigError> {
    let raw = raw.ok_or(ConfigError::Missing { variable })?;
    let secrets: Vec<Secret> = raw
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(Secret::new)
        .collect();
    if secrets.is_empty() {
        return Err(ConfigError::Missing { variable });
    }
    if secrets.iter().any(|s| s.expose().len() < min_len) {
        return Err(ConfigError::Weak { variable, min_len });
    }
    Ok(secrets)
}

/// A configuration the node refuses to start with. Each one is the operator's to fix:
/// the message names the variable.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{variable} is not set (set it, or run `relay serve --dev` to generate one)")]
    Missing { variable: &'static str },
    #[error("{variable} is too weak: each value needs at least {min_len} bytes")]
    Weak {
        variable: &'static str,
        min_len: usize,
    },
    #[error("{variable} is invalid: {why}")]
    Invalid { variable: &'static str, why: String },
    #[error("{variable} is not supported: {why}")]
    Unsupported {
        variable: &'static str,
        why: &'static str,
    },
    #[error("cannot write {path}: {source}")]
    EnvFile {
        path: String,
        source: std::io::Error,
    },
}

/// `--dev`: generates the secrets that are not set, and appends them to `.env.local`
/// so the next run (and `relay token`, `relay publish`) uses the same ones. Lines
/// already in the file are never rewritten. Returns the variables it generated.
pub fn ensure_dev_secrets(path: &Path) -> Result<Vec<&'static str>, ConfigError> {
    let mut generated = Vec::new();
    let mut lines = String::new();
    for (variable, prefix) in [
        ("JWT_SIGNING_SECRET", "dev_jwt_"),
        ("RELAY_API_KEY", "relay_dev_"),
    ] {
        if std::env::var_os(variable).is_some() {
            continue;
        }
        let value = format!("{prefix}{}", random_hex(32));
        lines.push_str(&format!("{variable}={value}\n"));
        // Safe here: called from main before any thread starts.
        std::env::set_var(variable, &value);
        generated.push(variable);
    }
    if lines.is_empty() {
        return Ok(generated);
    }
    let to_err = |source| ConfigError::EnvFile {
        path: path.display().to_string(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(to_err)?;
    let header = if file.metadata().map(|m| m.len() == 0).unwrap_or(true) {
        "# Generated by `relay serve --dev`. Local development only; never commit.\n"
    } else {
        ""
    };
    file.write_all(format!("{header}{lines}").as_bytes())
        .map_err(to_err)?;
    Ok(generated)
}

/// `n` random bytes as lowercase hex, from the OS generator.
pub fn random_hex(n: usize) -> String {
    let mut bytes = vec![0u8; n];
    if getrandom::fill(&mut bytes).is_err() {
        // The OS generator failing is not something to continue past with a weak key.
        panic!("the operating system's random generator failed");
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_list_splits_on_commas_and_trims() {
        let s = parse_secret_list("X", Some(" aaaa , bbbb,,"), 4).unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(s[1].expose(), b"bbbb");
    }

    #[test]
    fn weak_secret_is_refused_with_its_variable_named() {
        let err = parse_secret_list("JWT_SIGNING_SECRET", Some("short"), 32).unwrap_err();
        assert!(err.to_string().contains("JWT_SIGNING_SECRET"));
    }

    #[test]
    fn missing_secret_names_the_variable() {
        let err = parse_secret_list("RELAY_API_KEY", None, 1).unwrap_err();
        assert!(err.to_string().starts_with("RELAY_API_KEY is not set"));
    }

    #[test]
    fn secrets_never_print_their_value() {
        let s = Secret::new("supersecretvalue");
        assert!(!format!("{s:?}").contains("supersecret"));
    }
}
