//! The command line: `relay serve`, `relay token` (the mock signer) and
//! `relay publish` (the mock publisher). Every flag has an environment variable
//! behind it; the contract fixes the names of the main ones.
//!
//! This module only describes arguments; [`crate::config`] validates them.

use std::net::IpAddr;

use clap::{Args, Parser, Subcommand};

use crate::auth::{JwtRules, OriginPolicy, Secret};
use crate::config;
pub use crate::config::LogFormat;
use crate::config::{
    parse_secret_list, secret_value, Config, ConfigError, HistoryConfig, HistoryStore, Limits,
    LiveConfig, ReloadSources, DEFAULT_MAX_MESSAGE_BYTES, DEFAULT_MAX_OUTBOUND_BYTES,
    DEV_ALLOWED_ORIGINS, ECHO_MAX_MESSAGE_BYTES, MIN_SECRET_BYTES,
};
use crate::limiter::LimiterConfig;
use crate::subscribe::Transports;

#[derive(Debug, Parser)]
#[command(name = "relay", version, about = "Real-time WebSocket relay")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a node.
    Serve(Box<ServeArgs>),
    /// Print a JWT for a session, signed with JWT_SIGNING_SECRET (the local mock signer).
    Token(TokenArgs),
    /// Send one event to a node with RELAY_API_KEY (the local mock publisher).
    Publish(PublishArgs),
    /// Exit 0 when the node at --url answers /healthz with 200 (for container health checks).
    Healthcheck(HealthcheckArgs),
}

#[derive(Debug, Args)]
pub struct HealthcheckArgs {
    /// The node's base URL; default `http://127.0.0.1:$PORT`.
    #[arg(long, env = "RELAY_HEALTHCHECK_URL")]
    pub url: Option<String>,
}

/// Settings that every subcommand reads.
#[derive(Debug, Args, Clone)]
pub struct CommonArgs {
    /// HS256 secret shared with the backend; a comma-separated list means "any of these".
    #[arg(long, env = "JWT_SIGNING_SECRET", hide_env_values = true)]
    pub jwt_signing_secret: Option<String>,
    /// Key for POST /events; a comma-separated list means "any of these".
    #[arg(long, env = "RELAY_API_KEY", hide_env_values = true)]
    pub relay_api_key: Option<String>,
    /// `info`, `debug`, or a tracing filter.
    #[arg(long, env = "LOG_LEVEL", default_value = "info")]
    pub log_level: String,
    /// File holding JWT_SIGNING_SECRET (Docker/Kubernetes secrets); wins over the
    /// variable, and is read again on SIGHUP.
    #[arg(long, env = "JWT_SIGNING_SECRET_FILE")]
    pub jwt_signing_secret_file: Option<std::path::PathBuf>,
    /// File holding RELAY_API_KEY; wins over the variable, read again on SIGHUP.
    #[arg(long, env = "RELAY_API_KEY_FILE")]
    pub relay_api_key_file: Option<std::path::PathBuf>,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Development mode: generate missing secrets into .env.local, allow localhost origins.
    #[arg(long, env = "RELAY_DEV")]
    pub dev: bool,
    /// An env-format file (KEY=value lines) of reloadable settings: secrets, keys,
    /// origins, limits, log level. Its values win; SIGHUP reads it again.
    #[arg(long, env = "RELAY_CONFIG_FILE")]
    pub config_file: Option<std::path::PathBuf>,
    /// Test mode for conformance suites: sockets echo client messages. Needs --dev.
    #[arg(long, hide = true)]
    pub echo: bool,
    /// Address to listen on.
    #[arg(long, env = "RELAY_HOST", default_value = "0.0.0.0")]
    pub host: IpAddr,
    /// TCP port for sockets and HTTP; 0 picks a free port (printed on stdout).
    #[arg(long, env = "PORT", default_value_t = config::DEFAULT_PORT)]
    pub port: u16,
    /// Serve /metrics and /latency on this port instead of the public one.
    #[arg(long, env = "ADMIN_PORT")]
    pub admin_port: Option<u16>,
    /// Shards (one pinned executor each); default: one per available core.
    #[arg(long, env = "RELAY_SHARDS")]
    pub shards: Option<usize>,
    /// Messages each shard's inbox holds (events routed from other shards, their
    /// receipts, handoffs); past it publishers get 503.
    #[arg(long, env = "RELAY_INBOX_MESSAGES", default_value_t = config::DEFAULT_INBOX_MESSAGES as u32,
          value_parser = clap::value_parser!(u32).range(2..=1_048_576))]
    pub inbox_messages: u32,
    /// Redis for cross-node fan-out (`redis://[:password@]host:port[/db]`); with
    /// --redis-cluster, a comma-separated list of seed nodes.
    #[arg(long, env = "REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,
    /// PEM file of the CA that signed Redis's certificate, for rediss:// (default:
    /// the system's roots).
    #[arg(long, env = "REDIS_CA_FILE")]
    pub redis_ca_file: Option<std::path::PathBuf>,
    /// REDIS_URL names a Redis Cluster: use sharded pub/sub (SPUBLISH/SSUBSCRIBE).
    #[arg(long, env = "REDIS_CLUSTER")]
    pub redis_cluster: bool,
    /// CSV of origins allowed to open sockets; `*` stands for one host label.
    #[arg(long, env = "ALLOWED_ORIGINS")]
    pub allowed_origins: Option<String>,
    /// Log lines as human text or JSON.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value = "human")]
    pub log_format: LogFormat,
    /// Required `aud` claim, when set.
    #[arg(long, env = "JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,
    /// Required `iss` claim, when set.
    #[arg(long, env = "JWT_ISSUER")]
    pub jwt_issuer: Option<String>,
    /// Longest token lifetime accepted (exp − iat); unset: no maximum.
    #[arg(long, env = "JWT_MAX_LIFETIME")]
    pub jwt_max_lifetime: Option<humantime::Duration>,
    /// Clock leeway for exp, nbf and iat.
    #[arg(long, env = "JWT_LEEWAY", default_value = "5s")]
    pub jwt_leeway: humantime::Duration,
    /// Absolute deadline for a request head, from accept or the previous response (408).
    #[arg(long, env = "RELAY_HANDSHAKE_TIMEOUT", default_value = "10s")]
    pub handshake_timeout: humantime::Duration,
    /// Absolute deadline for a POST /events body, from the end of its head (408).
    #[arg(long, env = "RELAY_BODY_TIMEOUT", default_value = "10s")]
    pub body_timeout: humantime::Duration,
    /// Request head bytes (431).
    #[arg(long, env = "RELAY_MAX_HEAD_BYTES", default_value_t = config::DEFAULT_MAX_HEAD_BYTES)]
    pub max_head_bytes: usize,
    /// POST /events body bytes (413).
    #[arg(long, env = "RELAY_MAX_BODY_BYTES", default_value_t = config::DEFAULT_MAX_BODY_BYTES)]
    pub max_body_bytes: usize,
    /// Events in one batch (413).
    #[arg(long, env = "RELAY_MAX_BATCH_EVENTS", default_value_t = config::DEFAULT_MAX_BATCH_EVENTS)]
    pub max_batch_events: usize,
    /// Client message bytes (close 1009).
    #[arg(long, env = "RELAY_MAX_MESSAGE_BYTES", default_value_t = config::DEFAULT_MAX_MESSAGE_BYTES)]
    pub max_message_bytes: usize,
    /// Outbound bytes queued per socket (close 4008).
    #[arg(long, env = "RELAY_MAX_OUTBOUND_BYTES", default_value_t = config::DEFAULT_MAX_OUTBOUND_BYTES)]
    pub max_outbound_bytes: usize,
    /// Open WebSockets per node (503).
    #[arg(long, env = "RELAY_MAX_CONNECTIONS", default_value_t = config::DEFAULT_MAX_CONNECTIONS)]
    pub max_connections: usize,
    /// Upgrades per second per client address (burst twice that); 0 disables (429).
    #[arg(long, env = "RELAY_CONNECT_RATE", default_value_t = config::DEFAULT_CONNECT_RATE)]
    pub connect_rate: u32,
    /// Published events per second per API key (batches count each event); 0 disables (429).
    #[arg(long, env = "RELAY_PUBLISH_RATE", default_value_t = config::DEFAULT_PUBLISH_RATE)]
    pub publish_rate: u32,
    /// Open sockets per session on this node (429).
    #[arg(long, env = "RELAY_MAX_SOCKETS_PER_SESSION", default_value_t = config::DEFAULT_MAX_SOCKETS_PER_SESSION)]
    pub max_sockets_per_session: usize,
    /// JWT claim that names a socket's tenant (e.g. a Forge installation or cloud id).
    #[arg(long, env = "RELAY_TENANT_CLAIM")]
    pub tenant_claim: Option<String>,
    /// Open sockets per tenant on this node; 0: no cap (429).
    #[arg(long, env = "RELAY_MAX_SOCKETS_PER_TENANT", default_value_t = 0)]
    pub max_sockets_per_tenant: usize,
    /// Published events per second per tenant named by a publish's X-Relay-Tenant
    /// header (burst: one second's worth); 0: no cap (429).
    #[arg(long, env = "RELAY_TENANT_PUBLISH_RATE", default_value_t = 0)]
    pub tenant_publish_rate: u32,
    /// CSV of proxy networks (CIDR) whose X-Forwarded-For names the client.
    #[arg(long, env = "RELAY_TRUSTED_PROXIES")]
    pub trusted_proxies: Option<String>,
    /// Messages per second a client may send (burst twice that); over it: close 1008.
    #[arg(long, env = "RELAY_CLIENT_MESSAGE_RATE", default_value_t = config::DEFAULT_CLIENT_MESSAGE_RATE)]
    pub client_message_rate: u32,
    /// Where resumable history lives: `memory` (the owning shard) or `redis` (also a
    /// Redis Stream per session, so a client can resume on any node).
    #[arg(long, env = "RELAY_HISTORY", value_enum, default_value = "memory")]
    pub history: config::HistoryStore,
    /// Events kept per session for resume; 0: none (a resume always resyncs).
    #[arg(long, env = "RELAY_HISTORY_EVENTS", default_value_t = config::DEFAULT_HISTORY_EVENTS)]
    pub history_events: usize,
    /// Frame bytes kept per session for resume.
    #[arg(long, env = "RELAY_HISTORY_BYTES", default_value_t = config::DEFAULT_HISTORY_BYTES)]
    pub history_bytes: usize,
    /// How long an event stays resumable (and a stream outlives its last socket).
    #[arg(long, env = "RELAY_HISTORY_TTL", default_value = "2m")]
    pub history_ttl: humantime::Duration,
    /// History bytes on the node, all sessions together; the oldest go first.
    /// [default: 268435456, or half the cgroup's memory limit if that is less]
    #[arg(long, env = "RELAY_HISTORY_MEMORY")]
    pub history_memory: Option<usize>,
    /// How long an event id is remembered: a republish within it is not delivered again.
    #[arg(long, env = "RELAY_DEDUPE_WINDOW", default_value = "5m")]
    pub dedupe_window: humantime::Duration,
    /// Ping a socket idle this long.
    #[arg(long, env = "RELAY_PING_INTERVAL", default_value = "25s")]
    pub ping_interval: humantime::Duration,
    /// Close a socket silent this long (reason `timeout`).
    #[arg(long, env = "RELAY_PING_TIMEOUT", default_value = "60s")]
    pub ping_timeout: humantime::Duration,
    /// On SIGTERM, how long sockets get to receive their 1012.
    #[arg(long, env = "RELAY_DRAIN_TIMEOUT", default_value = "10s")]
    pub drain_timeout: humantime::Duration,
    /// On SIGTERM, how long the node answers /readyz 503 while still serving,
    /// before its listeners close and the 1012s begin.
    #[arg(long, env = "RELAY_DRAIN_READY_DELAY", default_value = "2s")]
    pub drain_ready_delay: humantime::Duration,
    /// The window a drain spreads its 1012s over, in random order (default: the
    /// drain timeout less the ready delay and 1 s).
    #[arg(long, env = "RELAY_DRAIN_SPREAD")]
    pub drain_spread: Option<humantime::Duration>,
    /// A subscriber whose queue is full: `close` it with 4008, or `skip` its
    /// oldest queued events and tell it with a resync (reason `slow`).
    #[arg(long, env = "RELAY_SLOW_CONSUMER", value_enum, default_value = "close")]
    pub slow_consumer: config::SlowConsumer,
    /// How long a long-poll (`GET /poll`) waits for an event before answering none.
    #[arg(long, env = "RELAY_POLL_TIMEOUT", default_value = "25s")]
    pub poll_timeout: humantime::Duration,
    /// The transports offered, of ws, sse, poll; SIGHUP may change it (removing
    /// ws moves open WebSockets off with 1012, spread over the drain timeout).
    #[arg(long, env = "RELAY_TRANSPORTS", default_value = "ws,sse,poll")]
    pub transports: String,
    /// Presence frames for every subscriber: `off`, `counts`, or `users` (a token's
    /// `presence` claim may ask for them for its own socket).
    #[arg(long, env = "RELAY_PRESENCE", value_enum, default_value = "off")]
    pub presence: config::PresenceMode,
    /// At most one presence frame per session this often.
    #[arg(long, env = "RELAY_PRESENCE_INTERVAL", default_value = "1s")]
    pub presence_interval: humantime::Duration,
    /// With Redis: a node not heard from this long is dead; its users leave.
    #[arg(long, env = "RELAY_PRESENCE_NODE_TIMEOUT", default_value = "30s")]
    pub presence_node_timeout: humantime::Duration,
    /// Above this many users in a session, presence is counts only.
    #[arg(long, env = "RELAY_PRESENCE_LIST_MAX", default_value_t = config::DEFAULT_PRESENCE_LIST_MAX)]
    pub presence_list_max: usize,
    /// (session, user) pairs the node tracks by name, all sessions together.
    #[arg(long, env = "RELAY_PRESENCE_MAX_USERS", default_value_t = config::DEFAULT_PRESENCE_MAX_USERS)]
    pub presence_max_users: usize,
}

#[derive(Debug, Args)]
pub struct TokenArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// The session the token admits to.
    #[arg(long)]
    pub session: String,
    /// The user, if any (`sub` claim).
    #[arg(long)]
    pub sub: Option<String>,
    /// Lifetime, e.g. 15m.
    #[arg(long, default_value = "15m")]
    pub ttl: humantime::Duration,
    /// `aud` claim to include.
    #[arg(long, env = "JWT_AUDIENCE")]
    pub aud: Option<String>,
    /// `iss` claim to include.
    #[arg(long, env = "JWT_ISSUER")]
    pub iss: Option<String>,
}

#[derive(Debug, Args)]
pub struct PublishArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    #[arg(long)]
    pub session: String,
    #[arg(long)]
    pub event: String,
    /// The event's data, as JSON.
    #[arg(long)]
    pub data: String,
    /// Optional event id.
    #[arg(long)]
    pub id: Option<String>,
    /// The node's base URL.
    #[arg(long, env = "RELAY_URL", default_value = "http://127.0.0.1:3000")]
    pub url: String,
}

impl ServeArgs {
    /// Validates parsed flags into a [`Config`].
    pub fn to_config(&self) -> Result<Config, ConfigError> {
        let args = self;
        let redis_url = match args.redis_url.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(url) => {
                let urls: Vec<&str> = url.split(',').map(str::trim).collect();
                if urls.len() > 1 && !args.redis_cluster {
                    return Err(ConfigError::Invalid {
                        variable: "REDIS_URL",
                        why: "several URLs name a cluster: set REDIS_CLUSTER=true".into(),
                    });
                }
                for u in &urls {
                    if !u.starts_with("redis://") && !u.starts_with("rediss://") {
                        return Err(ConfigError::Invalid {
                            variable: "REDIS_URL",
                            why: "each URL must start with redis:// or rediss://".into(),
                        });
                    }
                }
                Some(Secret::new(url))
            }
        };
        let redis_ca = match &args.redis_ca_file {
            None => None,
            Some(path) => Some(std::fs::read(path).map_err(|e| ConfigError::Invalid {
                variable: "REDIS_CA_FILE",
                why: format!("cannot read {}: {e}", path.display()),
            })?),
        };
        if args.redis_cluster && redis_url.is_none() {
            return Err(ConfigError::Invalid {
                variable: "REDIS_CLUSTER",
                why: "needs REDIS_URL with the cluster's seed nodes".into(),
            });
        }
        // A *_FILE wins over its variable.
        let secret = secret_value(
            "JWT_SIGNING_SECRET_FILE",
            args.common.jwt_signing_secret.as_deref(),
            args.common.jwt_signing_secret_file.as_deref(),
        )?;
        let jwt_secrets =
            parse_secret_list("JWT_SIGNING_SECRET", secret.as_deref(), MIN_SECRET_BYTES)?;
        let key = secret_value(
            "RELAY_API_KEY_FILE",
            args.common.relay_api_key.as_deref(),
            args.common.relay_api_key_file.as_deref(),
        )?;
        let api_keys = parse_secret_list("RELAY_API_KEY", key.as_deref(), 1)?;
        let origins_csv = match (&args.allowed_origins, args.dev) {
            (Some(csv), _) => csv.clone(),
            (None, true) => DEV_ALLOWED_ORIGINS.to_string(),
            (None, false) => String::new(),
        };
        let origins = OriginPolicy::parse(&origins_csv).map_err(|e| ConfigError::Invalid {
            variable: "ALLOWED_ORIGINS",
            why: e.to_string(),
        })?;
        let shards = match args.shards {
            Some(0) => {
                return Err(ConfigError::Invalid {
                    variable: "RELAY_SHARDS",
                    why: "must be at least 1".into(),
                })
            }
            Some(n) => n,
            None => std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
        };
        if args.echo && !args.dev {
            return Err(ConfigError::Invalid {
                variable: "--echo",
                why: "is a test mode and needs --dev".into(),
            });
        }
        // Conformance suites send messages of megabytes; a flag set by hand wins.
        let echo_default = |v: usize, default: usize, echo_value: usize| {
            if args.echo && v == default {
                echo_value
            } else {
                v
            }
        };
        let limits = Limits {
            handshake_timeout: args.handshake_timeout.into(),
            body_timeout: args.body_timeout.into(),
            max_head_bytes: args.max_head_bytes,
            max_body_bytes: args.max_body_bytes,
            max_batch_events: args.max_batch_events,
            max_message_bytes: echo_default(
                args.max_message_bytes,
                DEFAULT_MAX_MESSAGE_BYTES,
                ECHO_MAX_MESSAGE_BYTES,
            ),
            max_outbound_bytes: echo_default(
                args.max_outbound_bytes,
                DEFAULT_MAX_OUTBOUND_BYTES,
                4 * ECHO_MAX_MESSAGE_BYTES,
            ),
            max_connections: args.max_connections,
            ping_interval: args.ping_interval.into(),
            ping_timeout: args.ping_timeout.into(),
            drain_timeout: args.drain_timeout.into(),
            // Conformance suites send floods of messages on purpose.
            poll_timeout: args.poll_timeout.into(),
            drain_ready_delay: args.drain_ready_delay.into(),
            drain_spread: args.drain_spread.map(Into::into),
            slow_consumer: args.slow_consumer,
            client_message_rate: if args.echo {
                0
            } else {
                args.client_message_rate
            },
        };
        let trusted_proxies =
            config::parse_trusted_proxies(args.trusted_proxies.as_deref().unwrap_or(""))?;
        let limiters = LimiterConfig {
            // Conformance suites open hundreds of sockets from one address.
            connects_per_sec: std::num::NonZeroU32::new(if args.echo {
                0
            } else {
                args.connect_rate
            }),
            events_per_sec: std::num::NonZeroU32::new(args.publish_rate),
            max_sockets_per_session: args.max_sockets_per_session,
            tenant_claim: args.tenant_claim.clone().filter(|c| !c.is_empty()),
            max_sockets_per_tenant: args.max_sockets_per_tenant,
            tenant_events_per_sec: std::num::NonZeroU32::new(args.tenant_publish_rate),
            trusted_proxies,
        };
        if args.history == HistoryStore::Redis && redis_url.is_none() {
            return Err(ConfigError::Invalid {
                variable: "RELAY_HISTORY",
                why: "redis needs REDIS_URL".into(),
            });
        }
        let history = HistoryConfig {
            events: args.history_events,
            bytes: args.history_bytes,
            max_age: args.history_ttl.into(),
            memory: args
                .history_memory
                .unwrap_or(config::DEFAULT_HISTORY_MEMORY),
            dedupe_window: args.dedupe_window.into(),
            store: args.history,
        };
        let presence = config::PresenceConfig {
            mode: args.presence,
            interval: args.presence_interval.into(),
            node_timeout: args.presence_node_timeout.into(),
            list_max: args.presence_list_max,
            max_users: args.presence_max_users,
        };
        if presence.interval < std::time::Duration::from_millis(100) {
            return Err(ConfigError::Invalid {
                variable: "RELAY_PRESENCE_INTERVAL",
                why: "must be at least 100ms".into(),
            });
        }
        if presence.node_timeout < std::time::Duration::from_secs(1) {
            return Err(ConfigError::Invalid {
                variable: "RELAY_PRESENCE_NODE_TIMEOUT",
                why: "must be at least 1s (nodes heartbeat three times within it)".into(),
            });
        }
        let mut config = Config {
            host: args.host,
            port: args.port,
            admin_port: args.admin_port,
            shards,
            inbox_messages: args.inbox_messages as usize,
            dev: args.dev,
            echo: args.echo,
            log_format: args.log_format,
            redis_url,
            redis_cluster: args.redis_cluster,
            redis_ca,
            limiters,
            history,
            presence,
            sources: ReloadSources {
                jwt_secret_file: args.common.jwt_signing_secret_file.clone(),
                api_key_file: args.common.relay_api_key_file.clone(),
                config_file: args.config_file.clone(),
            },
            live: LiveConfig {
                jwt_secrets,
                api_keys,
                origins,
                jwt: JwtRules {
                    leeway: args.jwt_leeway.into(),
                    max_lifetime: args.jwt_max_lifetime.map(Into::into),
                    audience: args.jwt_audience.clone(),
                    issuer: args.jwt_issuer.clone(),
                },
                limits,
                log_level: args.common.log_level.clone(),
                transports: Transports::parse(&args.transports).map_err(|e| {
                    ConfigError::Invalid {
                        variable: "RELAY_TRANSPORTS",
                        why: e.to_string(),
                    }
                })?,
            },
        };
        // Files win over flags and the environment, at start as on every SIGHUP.
        config.reload_sources()?;
        Ok(config)
    }
}
