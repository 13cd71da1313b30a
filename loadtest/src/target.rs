//! Where traffic may go: node URLs, the loopback-only rule, and source addresses.
//!
//! Owns: parsing `http://127.0.0.1:PORT` into a [`Target`] and refusing anything that is not
//! on this machine's loopback (127.0.0.0/8 or ::1). Pure: no sockets are opened here.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Port assumed when a URL names none: the contract's default `PORT`.
pub const DEFAULT_PORT: u16 = 3000;

/// A relay node the tool may talk to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Resolved address (always loopback).
    pub addr: SocketAddr,
    /// Value for the `Host` header.
    pub host: String,
}

/// Why a URL was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TargetError {
    /// The URL does not parse: write it as `http://127.0.0.1:PORT`.
    #[error("node URL {0:?} is not of the form http://127.0.0.1:PORT")]
    Malformed(String),
    /// The address is not loopback; this tool never sends traffic off the machine.
    #[error("node URL {0:?} is not a loopback address (only 127.0.0.0/8 and ::1 are allowed)")]
    NotLoopback(String),
    /// TLS is not spoken by this tool.
    #[error("node URL {0:?}: https/wss is not supported; use http:// to a local node")]
    Tls(String),
}

/// Parses `http://HOST:PORT[/]`, `ws://HOST:PORT`, or `HOST:PORT`; HOST is an IPv4 literal,
/// `[::1]`, or `localhost`. Anything not on loopback is refused.
pub fn parse(url: &str) -> Result<Target, TargetError> {
    let malformed = || TargetError::Malformed(url.to_owned());
    let trimmed = url.trim();
    let rest = if let Some(r) = trimmed
        .strip_prefix("http://")
        .or_else(|| trimmed.strip_prefix("ws://"))
    {
        r
    } else if trimmed.starts_with("https://") || trimmed.starts_with("wss://") {
        return Err(TargetError::Tls(url.to_owned()));
    } else if trimmed.contains("://") {
        return Err(malformed());
    } else {
        trimmed
    };
    let authority = match rest.split_once('/') {
        Some((a, "")) => a,
        Some(_) => return Err(malformed()),
        None => rest,
    };
    let (host, port) = if let Some(after) = authority.strip_prefix('[') {
        let (h, tail) = after.split_once(']').ok_or_else(malformed)?;
        let port = match tail.strip_prefix(':') {
            Some(p) => p.parse::<u16>().map_err(|_| malformed())?,
            None if tail.is_empty() => DEFAULT_PORT,
            None => return Err(malformed()),
        };
        (h, port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, p.parse::<u16>().map_err(|_| malformed())?),
            None => (authority, DEFAULT_PORT),
        }
    };
    if host.is_empty() || port == 0 {
        return Err(malformed());
    }
    let ip: IpAddr = if host.eq_ignore_ascii_case("localhost") {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    } else {
        host.parse().map_err(|_| {
            // A name we would have to resolve could point anywhere: refuse it outright.
            TargetError::NotLoopback(url.to_owned())
        })?
    };
    if !is_loopback(ip) {
        return Err(TargetError::NotLoopback(url.to_owned()));
    }
    let addr = SocketAddr::new(ip, port);
    let host = match ip {
        IpAddr::V4(v4) => format!("{v4}:{port}"),
        IpAddr::V6(v6) => format!("[{v6}]:{port}"),
    };
    Ok(Target { addr, host })
}

/// 127.0.0.0/8 or ::1 (and IPv4-mapped 127/8).
pub fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6 == Ipv6Addr::LOCALHOST || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

/// Source addresses to bind before connecting: 127.0.0.2 … 127.0.0.(n+1) for an IPv4 loopback
/// target, so each address brings its own ~28k ephemeral ports. `None` lets the kernel choose
/// (IPv6 targets, or n = 0).
pub fn source_addrs(target: IpAddr, n: u32) -> Vec<Option<IpAddr>> {
    match target {
        IpAddr::V4(_) if n > 0 => (0..n.min(250))
            .map(|i| {
                let last = u8::try_from(i + 2).unwrap_or(u8::MAX);
                Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, last)))
            })
            .collect(),
        _ => vec![None],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_urls_parse() {
        let t = parse("http://127.0.0.1:3001").expect("ok");
        assert_eq!(t.addr, "127.0.0.1:3001".parse().expect("addr"));
        assert_eq!(t.host, "127.0.0.1:3001");
        assert_eq!(parse("127.0.0.9:80").expect("ok").addr.port(), 80);
        assert_eq!(
            parse("http://localhost/").expect("ok").addr.port(),
            DEFAULT_PORT
        );
        assert_eq!(parse("ws://[::1]:9").expect("ok").host, "[::1]:9");
    }

    #[test]
    fn anything_off_the_machine_is_refused() {
        for url in [
            "http://10.0.0.1:3000",
            "http://192.168.1.2:3000",
            "http://8.8.8.8:53",
            "http://example.com:3000",
            "http://[2001:db8::1]:3000",
        ] {
            assert_eq!(
                parse(url),
                Err(TargetError::NotLoopback(url.to_owned())),
                "{url}"
            );
        }
        assert!(matches!(
            parse("https://127.0.0.1:3000"),
            Err(TargetError::Tls(_))
        ));
        assert!(matches!(
            parse("http://127.0.0.1:3000/ws"),
            Err(TargetError::Malformed(_))
        ));
        assert!(matches!(
            parse("http://127.0.0.1:99999"),
            Err(TargetError::Malformed(_))
        ));
    }

    #[test]
    fn source_addresses_start_at_127_0_0_2() {
        let v4 = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let s = source_addrs(v4, 3);
        assert_eq!(s.len(), 3);
        assert_eq!(s[0], Some("127.0.0.2".parse().expect("ip")));
        assert_eq!(s[2], Some("127.0.0.4".parse().expect("ip")));
        assert_eq!(source_addrs(v4, 0), vec![None]);
        assert_eq!(source_addrs(IpAddr::V6(Ipv6Addr::LOCALHOST), 4), vec![None]);
    }
}
