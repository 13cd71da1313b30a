//! Reading the reloadable settings again on SIGHUP: the secret files and
//! `RELAY_CONFIG_FILE` over the running values ([`RELOADABLE`] names what the file
//! may set), validation, and the names of what changed (never values).
//!
//! The only I/O is reading those files; applying the result is `runtime`'s.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::path::Path;

use super::*;

impl Config {
    /// A copy with the reloadable settings read again from [`ReloadSources`],
    /// validated, and the names of the settings that changed (never their values).
    /// On error the running configuration stays in force.
    pub fn reloaded(&self) -> Result<(Config, Vec<&'static str>), ConfigError> {
        let mut next = self.clone();
        next.reload_sources()?;
        let mut changed = Vec::new();
        let mut note = |name: &'static str, differs: bool| {
            if differs {
                changed.push(name);
            }
        };
        note(
            "JWT_SIGNING_SECRET",
            next.live.jwt_secrets != self.live.jwt_secrets,
        );
        note("RELAY_API_KEY", next.live.api_keys != self.live.api_keys);
        note(
            "ALLOWED_ORIGINS",
            format!("{:?}", next.live.origins) != format!("{:?}", self.live.origins),
        );
        note("LOG_LEVEL", next.live.log_level != self.live.log_level);
        note(
            "JWT rules",
            format!("{:?}", next.live.jwt) != format!("{:?}", self.live.jwt),
        );
        note(
            "limits",
            format!("{:?}", next.live.limits) != format!("{:?}", self.live.limits),
        );
        note(
            "RELAY_TRANSPORTS",
            next.live.transports != self.live.transports,
        );
        note(
            "rate limits and caps",
            format!("{:?}", next.limiters) != format!("{:?}", self.limiters),
        );
        Ok((next, changed))
    }

    /// Reads the secret files and the config file over the current values.
    pub fn reload_sources(&mut self) -> Result<(), ConfigError> {
        let read = |variable: &'static str, path: &Path| {
            std::fs::read_to_string(path).map_err(|e| ConfigError::Invalid {
                variable,
                why: format!("cannot read {}: {e}", path.display()),
            })
        };
        let mut file: HashMap<String, String> = HashMap::new();
        if let Some(path) = &self.sources.config_file {
            let text = read("RELAY_CONFIG_FILE", path)?;
            for item in dotenvy::from_read_iter(text.as_bytes()) {
                let (k, v) = item.map_err(|e| ConfigError::Invalid {
                    variable: "RELAY_CONFIG_FILE",
                    why: e.to_string(),
                })?;
                if !RELOADABLE.contains(&k.as_str()) {
                    return Err(ConfigError::Invalid {
                        variable: "RELAY_CONFIG_FILE",
                        why: format!("{k} cannot be set there (only {})", RELOADABLE.join(", ")),
                    });
                }
                file.insert(k, v);
            }
        }
        let secret = secret_value(
            "JWT_SIGNING_SECRET_FILE",
            file.get("JWT_SIGNING_SECRET").map(String::as_str),
            self.sources.jwt_secret_file.as_deref(),
        )?;
        if let Some(v) = secret {
            self.live.jwt_secrets =
                parse_secret_list("JWT_SIGNING_SECRET", Some(&v), MIN_SECRET_BYTES)?;
        }
        let keys = secret_value(
            "RELAY_API_KEY_FILE",
            file.get("RELAY_API_KEY").map(String::as_str),
            self.sources.api_key_file.as_deref(),
        )?;
        if let Some(v) = keys {
            self.live.api_keys = parse_secret_list("RELAY_API_KEY", Some(&v), 1)?;
        }
        if let Some(v) = file.get("ALLOWED_ORIGINS") {
            self.live.origins = OriginPolicy::parse(v).map_err(|e| ConfigError::Invalid {
                variable: "ALLOWED_ORIGINS",
                why: e.to_string(),
            })?;
        }
        if let Some(v) = file.get("LOG_LEVEL") {
            tracing_subscriber::EnvFilter::try_new(v).map_err(|e| ConfigError::Invalid {
                variable: "LOG_LEVEL",
                why: e.to_string(),
            })?;
            self.live.log_level = v.clone();
        }
        if let Some(v) = file.get("RELAY_TRANSPORTS") {
            self.live.transports = Transports::parse(v).map_err(|e| ConfigError::Invalid {
                variable: "RELAY_TRANSPORTS",
                why: e.to_string(),
            })?;
        }
        if let Some(v) = file.get("JWT_AUDIENCE") {
            self.live.jwt.audience = Some(v.clone()).filter(|s| !s.is_empty());
        }
        if let Some(v) = file.get("JWT_ISSUER") {
            self.live.jwt.issuer = Some(v.clone()).filter(|s| !s.is_empty());
        }
        let dur = |name: &'static str, v: &str| {
            humantime::parse_duration(v).map_err(|e| ConfigError::Invalid {
                variable: name,
                why: e.to_string(),
            })
        };
        let num = |name: &'static str, v: &str| {
            v.trim().parse::<usize>().map_err(|e| ConfigError::Invalid {
                variable: name,
                why: e.to_string(),
            })
        };
        for (k, v) in &file {
            let l = &mut self.live.limits;
            match k.as_str() {
                "JWT_LEEWAY" => self.live.jwt.leeway = dur("JWT_LEEWAY", v)?,
                "RELAY_HANDSHAKE_TIMEOUT" => {
                    l.handshake_timeout = dur("RELAY_HANDSHAKE_TIMEOUT", v)?
                }
                "RELAY_BODY_TIMEOUT" => l.body_timeout = dur("RELAY_BODY_TIMEOUT", v)?,
                "RELAY_PING_INTERVAL" => l.ping_interval = dur("RELAY_PING_INTERVAL", v)?,
                "RELAY_PING_TIMEOUT" => l.ping_timeout = dur("RELAY_PING_TIMEOUT", v)?,
                "RELAY_DRAIN_TIMEOUT" => l.drain_timeout = dur("RELAY_DRAIN_TIMEOUT", v)?,
                "RELAY_POLL_TIMEOUT" => l.poll_timeout = dur("RELAY_POLL_TIMEOUT", v)?,
                "RELAY_DRAIN_READY_DELAY" => {
                    l.drain_ready_delay = dur("RELAY_DRAIN_READY_DELAY", v)?
                }
                "RELAY_DRAIN_SPREAD" => l.drain_spread = Some(dur("RELAY_DRAIN_SPREAD", v)?),
                "RELAY_CONNECT_RATE" => {
                    self.limiters.connects_per_sec =
                        NonZeroU32::new(num("RELAY_CONNECT_RATE", v)? as u32)
                }
                "RELAY_PUBLISH_RATE" => {
                    self.limiters.events_per_sec =
                        NonZeroU32::new(num("RELAY_PUBLISH_RATE", v)? as u32)
                }
                "RELAY_TENANT_PUBLISH_RATE" => {
                    self.limiters.tenant_events_per_sec =
                        NonZeroU32::new(num("RELAY_TENANT_PUBLISH_RATE", v)? as u32)
                }
                "RELAY_MAX_SOCKETS_PER_TENANT" => {
                    self.limiters.max_sockets_per_tenant = num("RELAY_MAX_SOCKETS_PER_TENANT", v)?
                }
                "RELAY_MAX_SOCKETS_PER_SESSION" => {
                    self.limiters.max_sockets_per_session = num("RELAY_MAX_SOCKETS_PER_SESSION", v)?
                }
                "RELAY_TENANT_CLAIM" => {
                    self.limiters.tenant_claim =
                        Some(v.trim().to_string()).filter(|c| !c.is_empty())
                }
                "RELAY_TRUSTED_PROXIES" => {
                    self.limiters.trusted_proxies = parse_trusted_proxies(v)?
                }
                "RELAY_SLOW_CONSUMER" => {
                    l.slow_consumer = match v.trim() {
                        "close" => SlowConsumer::Close,
                        "skip" => SlowConsumer::Skip,
                        _ => {
                            return Err(ConfigError::Invalid {
                                variable: "RELAY_SLOW_CONSUMER",
                                why: format!("{v:?}: expected close or skip"),
                            })
                        }
                    }
                }
                "RELAY_MAX_HEAD_BYTES" => l.max_head_bytes = num("RELAY_MAX_HEAD_BYTES", v)?,
                "RELAY_MAX_BODY_BYTES" => l.max_body_bytes = num("RELAY_MAX_BODY_BYTES", v)?,
                "RELAY_MAX_BATCH_EVENTS" => l.max_batch_events = num("RELAY_MAX_BATCH_EVENTS", v)?,
                "RELAY_MAX_MESSAGE_BYTES" => {
                    l.max_message_bytes = num("RELAY_MAX_MESSAGE_BYTES", v)?
                }
                "RELAY_MAX_OUTBOUND_BYTES" => {
                    l.max_outbound_bytes = num("RELAY_MAX_OUTBOUND_BYTES", v)?
                }
                "RELAY_MAX_CONNECTIONS" => l.max_connections = num("RELAY_MAX_CONNECTIONS", v)?,
                "RELAY_CLIENT_MESSAGE_RATE" => {
                    l.client_message_rate = num("RELAY_CLIENT_MESSAGE_RATE", v)? as u32
                }
                _ => {}
            }
        }
        self.check_limits()
    }

    fn check_limits(&self) -> Result<(), ConfigError> {
        let l = &self.live.limits;
        if l.ping_timeout <= l.ping_interval {
            return Err(ConfigError::Invalid {
                variable: "RELAY_PING_TIMEOUT",
                why: "must be longer than RELAY_PING_INTERVAL, or live sockets are closed".into(),
            });
        }
        if l.max_head_bytes < 1024 {
            return Err(ConfigError::Invalid {
                variable: "RELAY_MAX_HEAD_BYTES",
                why: "must be at least 1024".into(),
            });
        }
        Ok(())
    }
}

/// `RELAY_TRUSTED_PROXIES`: comma-separated addresses or CIDR networks.
pub fn parse_trusted_proxies(value: &str) -> Result<Vec<ipnet::IpNet>, ConfigError> {
    value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|cidr| {
            cidr.parse::<ipnet::IpNet>()
                .or_else(|_| cidr.parse::<IpAddr>().map(ipnet::IpNet::from))
                .map_err(|_| ConfigError::Invalid {
                    variable: "RELAY_TRUSTED_PROXIES",
                    why: format!("{cidr:?} is not an address or CIDR network"),
                })
        })
        .collect()
}

/// Variables `RELAY_CONFIG_FILE` may set: the ones a running node can change.
pub const RELOADABLE: &[&str] = &[
    "JWT_SIGNING_SECRET",
    "RELAY_API_KEY",
    "ALLOWED_ORIGINS",
    "LOG_LEVEL",
    "JWT_AUDIENCE",
    "JWT_ISSUER",
    "JWT_LEEWAY",
    "RELAY_HANDSHAKE_TIMEOUT",
    "RELAY_BODY_TIMEOUT",
    "RELAY_PING_INTERVAL",
    "RELAY_PING_TIMEOUT",
    "RELAY_DRAIN_TIMEOUT",
    "RELAY_MAX_HEAD_BYTES",
    "RELAY_MAX_BODY_BYTES",
    "RELAY_MAX_BATCH_EVENTS",
    "RELAY_MAX_MESSAGE_BYTES",
    "RELAY_MAX_OUTBOUND_BYTES",
    "RELAY_MAX_CONNECTIONS",
    "RELAY_CLIENT_MESSAGE_RATE",
    "RELAY_POLL_TIMEOUT",
    "RELAY_TRANSPORTS",
    "RELAY_DRAIN_READY_DELAY",
    "RELAY_DRAIN_SPREAD",
    "RELAY_SLOW_CONSUMER",
    "RELAY_CONNECT_RATE",
    "RELAY_PUBLISH_RATE",
    "RELAY_TENANT_CLAIM",
    "RELAY_MAX_SOCKETS_PER_TENANT",
    "RELAY_TENANT_PUBLISH_RATE",
    "RELAY_MAX_SOCKETS_PER_SESSION",
    "RELAY_TRUSTED_PROXIES",
];

/// A secret's value list: the file's content when a `*_FILE` is named (one value
/// per line, or comma-separated), else the variable's value.
pub fn secret_value(
    file_variable: &'static str,
    value: Option<&str>,
    file: Option<&Path>,
) -> Result<Option<String>, ConfigError> {
    let Some(path) = file else {
        return Ok(value.map(str::to_string));
    };
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Invalid {
        variable: file_variable,
        why: format!("cannot read {}: {e}", path.display()),
    })?;
    Ok(Some(
        text.lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join(","),
    ))
}
