//! Where traffic may go: node URLs, the loopback-only rule and its `--allow-remote`
//! opt-out, and source addresses.
//!
//! Owns: parsing `[SCHEME://]HOST[:PORT][/]` into a [`NodeUrl`] and the reach rule: by
//! default only this machine's loopback (127.0.0.0/8, ::1, `localhost`) is accepted;
//! any other address or host name needs [`Reach::Remote`] (`--allow-remote`). Then
//! [`resolve_all`] turns URLs into [`Target`]s, once per process before the load starts:
//! the only step here that does I/O (the system resolver for host names, and reading
//! root certificates through [`crate::tls`] when a URL is `wss://` or `https://`). No
//! sockets are opened here.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::tls::{self, TlsDial, TlsError};

/// Port of a URL without a scheme or port (`127.0.0.1`): the contract's default `PORT`.
pub const DEFAULT_PORT: u16 = 3000;
/// Port of an `http://` or `ws://` URL without one.
pub const HTTP_PORT: u16 = 80;
/// Port of an `https://` or `wss://` URL without one.
pub const HTTPS_PORT: u16 = 443;

/// How far the tool may send traffic.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reach {
    /// Only this machine's loopback: the default, and what every test and benchmark of
    /// this repository uses.
    #[default]
    Loopback,
    /// Any address or host name (`--allow-remote`): load-testing a staging deployment.
    Remote,
}

/// The target flags of a run, shared by every load process.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetOptions {
    /// `--allow-remote`.
    pub reach: Reach,
    /// `--ca-file`: PEM certificates trusted besides the system's, for `wss://`/`https://`.
    pub ca_file: Option<PathBuf>,
}

/// Plain TCP or TLS over it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// `http://`, `ws://`, or no scheme.
    Plain,
    /// `https://` or `wss://`.
    Tls,
}

/// A URL's host as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    Ip(IpAddr),
    /// A DNS name (lower-cased); `localhost` is the one name allowed without
    /// `--allow-remote`, and it is never looked up (it is 127.0.0.1).
    Name(String),
}

/// A parsed node URL, not yet resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeUrl {
    pub scheme: Scheme,
    pub host: Host,
    pub port: u16,
}

/// A relay node the tool may talk to, resolved.
#[derive(Debug, Clone)]
pub struct Target {
    /// Where to connect.
    pub addr: SocketAddr,
    /// Value for the `Host` header: the host as the URL wrote it, with `:PORT` unless
    /// the port is the scheme's default.
    pub host: String,
    /// Set for `wss://` and `https://`: every connection runs a TLS handshake.
    pub tls: Option<TlsDial>,
}

/// Why a URL was refused.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    /// The URL does not parse: write it as `[ws|wss|http|https://]HOST[:PORT]`.
    #[error(
        "node URL {0:?} is not of the form [http|https|ws|wss://]HOST[:PORT] \
         (e.g. http://127.0.0.1:3000 or wss://relay.example.com)"
    )]
    Malformed(String),
    /// The host is not this machine's loopback and `--allow-remote` was not given.
    #[error(
        "node URL {0:?} is not on this machine (only 127.0.0.0/8, ::1 and localhost are \
         allowed); pass --allow-remote to load-test a remote relay"
    )]
    NotLoopback(String),
    /// The host name did not resolve (or resolved to no address).
    #[error("node URL {url:?}: cannot resolve the host: {why}")]
    Resolve { url: String, why: String },
    /// `--ca-file` was given but no URL is `wss://` or `https://`: it would do nothing.
    #[error("--ca-file is only used with wss:// or https:// node URLs, and none is given")]
    CaFileUnused,
    /// TLS could not be set up (the CA file, the system's roots).
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// Parses `[SCHEME://]HOST[:PORT][/]`: SCHEME is `http`, `ws` (plain; port 80 by
/// default), `https`, `wss` (TLS; port 443 by default), or absent (plain; port
/// [`DEFAULT_PORT`]). HOST is an IP literal (`[::1]` for IPv6) or a host name. With
/// [`Reach::Loopback`] anything not on loopback is refused, and so is every host name
/// but `localhost` (a name could resolve anywhere). Pure.
pub fn parse(url: &str, reach: Reach) -> Result<NodeUrl, TargetError> {
    let malformed = || TargetError::Malformed(url.to_owned());
    let trimmed = url.trim();
    let (scheme, default_port, rest) = match trimmed.split_once("://") {
        None => (Scheme::Plain, DEFAULT_PORT, trimmed),
        Some((s, rest)) => match s.to_ascii_lowercase().as_str() {
            "http" | "ws" => (Scheme::Plain, HTTP_PORT, rest),
            "https" | "wss" => (Scheme::Tls, HTTPS_PORT, rest),
            _ => return Err(malformed()),
        },
    };
    let authority = match rest.split_once('/') {
        Some((a, "")) => a,
        Some(_) => return Err(malformed()),
        None => rest,
    };
    if authority.contains(['@', '?', '#']) {
        return Err(malformed());
    }
    let (host, port) = if let Some(after) = authority.strip_prefix('[') {
        let (h, tail) = after.split_once(']').ok_or_else(malformed)?;
        let port = match tail.strip_prefix(':') {
            Some(p) => p.parse::<u16>().map_err(|_| malformed())?,
            None if tail.is_empty() => default_port,
            None => return Err(malformed()),
        };
        let ip: Ipv6Addr = h.parse().map_err(|_| malformed())?;
        (Host::Ip(IpAddr::V6(ip)), port)
    } else {
        let (h, port) = match authority.rsplit_once(':') {
            Some((h, p)) => (h, p.parse::<u16>().map_err(|_| malformed())?),
            None => (authority, default_port),
        };
        let host = match h.parse::<Ipv4Addr>() {
            Ok(v4) => Host::Ip(IpAddr::V4(v4)),
            Err(_) if is_dns_name(h) => Host::Name(h.to_ascii_lowercase()),
            Err(_) => return Err(malformed()),
        };
        (host, port)
    };
    if port == 0 {
        return Err(malformed());
    }
    let on_loopback = match &host {
        Host::Ip(ip) => is_loopback(*ip),
        Host::Name(n) => n == "localhost",
    };
    if reach == Reach::Loopback && !on_loopback {
        return Err(TargetError::NotLoopback(url.to_owned()));
    }
    Ok(NodeUrl { scheme, host, port })
}

/// Letters, digits, `-` and `.`, in non-empty labels of at most 63 bytes; not all digits
/// and dots (that would be a malformed IPv4 address).
fn is_dns_name(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 253
        && h.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
        && !h.bytes().all(|b| b.is_ascii_digit() || b == b'.')
}

impl NodeUrl {
    /// The `Host` header value: the host as written (IPv6 in brackets), with `:PORT`
    /// unless it is the scheme's standard one (80 plain, 443 TLS).
    pub fn host_header(&self) -> String {
        let host = match &self.host {
            Host::Ip(IpAddr::V6(v6)) => format!("[{v6}]"),
            Host::Ip(IpAddr::V4(v4)) => v4.to_string(),
            Host::Name(n) => n.clone(),
        };
        let standard = match self.scheme {
            Scheme::Plain => HTTP_PORT,
            Scheme::Tls => HTTPS_PORT,
        };
        if self.port == standard {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }

    /// The name the server's certificate must carry (and SNI, for a DNS name).
    pub fn server_name(&self) -> String {
        match &self.host {
            Host::Ip(ip) => ip.to_string(),
            Host::Name(n) => n.clone(),
        }
    }

    /// The address to connect to: an IP literal as is, `localhost` as 127.0.0.1, any
    /// other name through the system resolver (its first answer).
    pub fn socket_addr(&self, url: &str) -> Result<SocketAddr, TargetError> {
        match &self.host {
            Host::Ip(ip) => Ok(SocketAddr::new(*ip, self.port)),
            Host::Name(n) if n == "localhost" => {
                Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), self.port))
            }
            Host::Name(n) => {
                let resolve = |why: String| TargetError::Resolve {
                    url: url.to_owned(),
                    why,
                };
                (n.as_str(), self.port)
                    .to_socket_addrs()
                    .map_err(|e| resolve(e.to_string()))?
                    .next()
                    .ok_or_else(|| resolve("no address".into()))
            }
        }
    }
}

/// Parses every URL under `opts` and, when one is `wss://` or `https://`, loads the TLS
/// roots (so a bad `--ca-file` is refused before anything runs). Resolves nothing.
pub fn check_all(urls: &[&str], opts: &TargetOptions) -> Result<(), TargetError> {
    let parsed = parse_all(urls, opts.reach)?;
    tls_config(&parsed, opts).map(|_| ())
}

/// [`check_all`], then resolves each URL into a [`Target`] (in `urls` order); TLS
/// targets share one client configuration.
pub fn resolve_all(urls: &[&str], opts: &TargetOptions) -> Result<Vec<Target>, TargetError> {
    let parsed = parse_all(urls, opts.reach)?;
    let config = tls_config(&parsed, opts)?;
    urls.iter()
        .zip(&parsed)
        .map(|(url, u)| {
            let tls = match (&config, u.scheme) {
                (Some(c), Scheme::Tls) => Some(TlsDial::new(c.clone(), &u.server_name())?),
                _ => None,
            };
            Ok(Target {
                addr: u.socket_addr(url)?,
                host: u.host_header(),
                tls,
            })
        })
        .collect()
}

fn parse_all(urls: &[&str], reach: Reach) -> Result<Vec<NodeUrl>, TargetError> {
    urls.iter().map(|u| parse(u, reach)).collect()
}

fn tls_config(
    parsed: &[NodeUrl],
    opts: &TargetOptions,
) -> Result<Option<Arc<rustls::ClientConfig>>, TargetError> {
    if parsed.iter().any(|u| u.scheme == Scheme::Tls) {
        Ok(Some(tls::client_config(opts.ca_file.as_deref())?))
    } else if opts.ca_file.is_some() {
        Err(TargetError::CaFileUnused)
    } else {
        Ok(None)
    }
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

/// Source addresses to bind before connecting: 127.0.0.2 … 127.0.0.(n+1) for an IPv4
/// loopback target, so each address brings its own ~28k ephemeral ports. `None` lets the
/// kernel choose: IPv6 targets, n = 0, and every target off this machine (a remote node
/// sees the host's own address; 127.0.0.x could not reach it).
pub fn source_addrs(target: IpAddr, n: u32) -> Vec<Option<IpAddr>> {
    match target {
        IpAddr::V4(v4) if n > 0 && v4.is_loopback() => (0..n.min(250))
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

    fn local(url: &str) -> Result<NodeUrl, TargetError> {
        parse(url, Reach::Loopback)
    }

    fn remote(url: &str) -> Result<NodeUrl, TargetError> {
        parse(url, Reach::Remote)
    }

    fn addr_of(url: &str) -> SocketAddr {
        local(url).expect("ok").socket_addr(url).expect("addr")
    }

    #[test]
    fn loopback_urls_parse() {
        let t = local("http://127.0.0.1:3001").expect("ok");
        assert_eq!(t.scheme, Scheme::Plain);
        assert_eq!(
            addr_of("http://127.0.0.1:3001"),
            "127.0.0.1:3001".parse().expect("a")
        );
        assert_eq!(t.host_header(), "127.0.0.1:3001");
        assert_eq!(addr_of("127.0.0.9:80").port(), 80);
        assert_eq!(addr_of("127.0.0.9").port(), DEFAULT_PORT);
        assert_eq!(local("ws://[::1]:9").expect("ok").host_header(), "[::1]:9");
        // localhost is 127.0.0.1 without a lookup, and the Host header keeps the name.
        let l = local("http://localhost:3000/").expect("ok");
        assert_eq!(l.host_header(), "localhost:3000");
        assert_eq!(
            addr_of("http://localhost:3000/"),
            "127.0.0.1:3000".parse().expect("a")
        );
    }

    #[test]
    fn schemes_choose_tls_and_standard_ports() {
        for (url, scheme, port) in [
            ("http://127.0.0.1", Scheme::Plain, HTTP_PORT),
            ("ws://127.0.0.1", Scheme::Plain, HTTP_PORT),
            ("https://127.0.0.1", Scheme::Tls, HTTPS_PORT),
            ("wss://localhost/", Scheme::Tls, HTTPS_PORT),
            ("WSS://localhost:8443", Scheme::Tls, 8443),
            ("127.0.0.1", Scheme::Plain, DEFAULT_PORT),
        ] {
            let u = local(url).expect(url);
            assert_eq!((u.scheme, u.port), (scheme, port), "{url}");
        }
        // The standard port is left out of Host, as a browser does.
        assert_eq!(
            local("wss://localhost").expect("ok").host_header(),
            "localhost"
        );
        assert_eq!(
            local("https://localhost:443").expect("ok").host_header(),
            "localhost"
        );
        assert_eq!(
            local("https://localhost:80").expect("ok").host_header(),
            "localhost:80"
        );
        assert_eq!(local("http://[::1]").expect("ok").host_header(), "[::1]");
    }

    #[test]
    fn anything_off_the_machine_is_refused_without_allow_remote() {
        for url in [
            "http://10.0.0.1:3000",
            "http://192.168.1.2:3000",
            "https://8.8.8.8",
            "wss://relay.staging.example",
            "relay.internal:3000",
            "http://[2001:db8::1]:3000",
        ] {
            let err = local(url).expect_err(url);
            assert!(matches!(err, TargetError::NotLoopback(_)), "{url}: {err}");
            assert!(err.to_string().contains("--allow-remote"), "{err}");
        }
    }

    #[test]
    fn allow_remote_accepts_any_host_and_keeps_its_name() {
        let u = remote("wss://Relay.Staging.example").expect("ok");
        assert_eq!(u.scheme, Scheme::Tls);
        assert_eq!(u.port, HTTPS_PORT);
        assert_eq!(u.host, Host::Name("relay.staging.example".into()));
        assert_eq!(u.host_header(), "relay.staging.example");
        assert_eq!(u.server_name(), "relay.staging.example");
        let u = remote("http://10.0.0.1:3000").expect("ok");
        assert_eq!(u.host, Host::Ip("10.0.0.1".parse().expect("ip")));
        assert_eq!(u.host_header(), "10.0.0.1:3000");
        let u = remote("https://[2001:db8::1]:8443/").expect("ok");
        assert_eq!(u.host_header(), "[2001:db8::1]:8443");
        assert_eq!(u.server_name(), "2001:db8::1");
        // Loopback stays allowed.
        assert!(remote("http://127.0.0.1:3000").is_ok());
    }

    #[test]
    fn malformed_urls_are_refused_whatever_the_reach() {
        for url in [
            "http://127.0.0.1:3000/ws",
            "http://127.0.0.1:99999",
            "http://127.0.0.1:0",
            "ftp://127.0.0.1",
            "http://",
            "http://user@relay.example",
            "http://relay.example?x",
            "http://bad_name.example",
            "http://999.1.1.1",
            "http://[::1",
            "http://[relay.example]:1",
            "http://a..b",
        ] {
            for reach in [Reach::Loopback, Reach::Remote] {
                assert!(
                    matches!(parse(url, reach), Err(TargetError::Malformed(_))),
                    "{url} {reach:?}"
                );
            }
        }
    }

    #[test]
    fn a_ca_file_without_a_tls_url_is_refused() {
        let opts = TargetOptions {
            reach: Reach::Loopback,
            ca_file: Some("/nonexistent/ca.pem".into()),
        };
        assert!(matches!(
            check_all(&["http://127.0.0.1:3000"], &opts),
            Err(TargetError::CaFileUnused)
        ));
        // With a TLS URL the file is read, and its absence named.
        assert!(matches!(
            check_all(&["https://127.0.0.1:3000"], &opts),
            Err(TargetError::Tls(TlsError::CaRead { .. }))
        ));
    }

    #[test]
    fn plain_targets_resolve_without_tls() {
        let t = resolve_all(
            &["http://127.0.0.1:3001", "localhost:3002"],
            &TargetOptions::default(),
        )
        .expect("ok");
        assert_eq!(t[0].addr, "127.0.0.1:3001".parse().expect("a"));
        assert_eq!(t[1].host, "localhost:3002");
        assert!(t.iter().all(|t| t.tls.is_none()));
    }

    #[test]
    fn source_addresses_start_at_127_0_0_2_on_loopback_only() {
        let v4 = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let s = source_addrs(v4, 3);
        assert_eq!(s.len(), 3);
        assert_eq!(s[0], Some("127.0.0.2".parse().expect("ip")));
        assert_eq!(s[2], Some("127.0.0.4".parse().expect("ip")));
        assert_eq!(source_addrs(v4, 0), vec![None]);
        assert_eq!(source_addrs(IpAddr::V6(Ipv6Addr::LOCALHOST), 4), vec![None]);
        let off = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
        assert_eq!(source_addrs(off, 4), vec![None]);
    }
}
