//! The connection layer over TLS, on loopback: a tokio-rustls server with a certificate
//! from a CA made at test time (the `openssl` CLI) answers as a relay would, and the
//! loadtest's own clients (a WebSocket subscriber, an event stream, the publisher's
//! keep-alive POSTs and the blocking `/latency` GET) reach it through `wss://` and
//! `https://` with `--ca-file`. A CA it was not given fails the handshake, by name.
//!
//! The server checks what a remote relay behind a load balancer would see: SNI and the
//! `Host` header carry the URL's host name.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use loadtest::conn::{Conn, ConnError, Dial, ReadOutcome, Subscribe};
use loadtest::net::{post_events_request, HttpConn};
use loadtest::target::{self, Reach, Target, TargetOptions};
use loadtest::Transport;
// The relay's test certificate helper: one recipe for both crates' TLS tests.
#[path = "../../tests/common/pki.rs"]
mod pki;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

const WELCOME: &str =
    r#"{"type":"welcome","session":"s","conn":"c-1","epoch":"00000000000000ab","seq":0}"#;
const EVENT: &str = r#"{"type":"event","session":"s","id":"e1","seq":1,"data":{"x":1}}"#;

/// A CA and a certificate it signed for `localhost` and 127.0.0.1, in a fresh directory.
struct Pki {
    dir: PathBuf,
}

impl Pki {
    fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }
}

fn make_pki(name: &str) -> Pki {
    Pki {
        dir: pki::make_pki(name),
    }
}

/// What the server saw of one connection: SNI and the request's `Host` and target.
#[derive(Debug, Clone)]
struct Seen {
    sni: Option<String>,
    host: String,
    path: String,
}

/// Starts the TLS server on 127.0.0.1:0 on its own thread; returns its port and what it
/// sees, one entry per request.
fn start_server(pki: &Pki) -> (u16, mpsc::Receiver<Seen>) {
    let acceptor = TlsAcceptor::from(pki::server_config(&pki.dir));
    let std_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    std_listener.set_nonblocking(true).expect("nonblocking");
    let port = std_listener.local_addr().expect("addr").port();
    let (seen_tx, seen_rx) = mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let listener = TcpListener::from_std(std_listener).expect("listener");
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let (acceptor, seen) = (acceptor.clone(), seen_tx.clone());
                tokio::spawn(async move {
                    // A handshake the client refuses ends here.
                    if let Ok(tls) = acceptor.accept(tcp).await {
                        serve(tls, seen).await;
                    }
                });
            }
        });
    });
    (port, seen_rx)
}

/// Answers requests on one connection as a relay would, until the client goes.
async fn serve(
    mut s: tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
    seen: mpsc::Sender<Seen>,
) {
    let sni = s.get_ref().1.server_name().map(str::to_owned);
    let mut buf = Vec::new();
    loop {
        let (head_len, path, method, host, key, body_len) = loop {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut req = httparse::Request::new(&mut headers);
            if let Ok(httparse::Status::Complete(n)) = req.parse(&buf) {
                let get = |name: &str| {
                    req.headers
                        .iter()
                        .find(|h| h.name.eq_ignore_ascii_case(name))
                        .map(|h| String::from_utf8_lossy(h.value).into_owned())
                };
                let len = get("content-length").and_then(|v| v.parse::<usize>().ok());
                break (
                    n,
                    req.path.unwrap_or("").to_owned(),
                    req.method.unwrap_or("").to_owned(),
                    get("host").unwrap_or_default(),
                    get("sec-websocket-key"),
                    len.unwrap_or(0),
                );
            }
            let mut chunk = [0u8; 4096];
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        while buf.len() < head_len + body_len {
            let mut chunk = [0u8; 4096];
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        buf.drain(..head_len + body_len);
        let _ = seen.send(Seen {
            sni: sni.clone(),
            host,
            path: path.clone(),
        });
        let mut out = Vec::new();
        if path.starts_with("/ws") {
            let accept = loadtest::ws::accept_for(&key.unwrap_or_default());
            out.extend_from_slice(
                format!(
                    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
                     Connection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
                )
                .as_bytes(),
            );
            for text in [WELCOME, EVENT] {
                loadtest::ws::encode_frame(
                    &mut out,
                    0x80 | loadtest::ws::OP_TEXT,
                    text.as_bytes(),
                    None,
                );
            }
        } else if path.starts_with("/sse") {
            out.extend_from_slice(
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n\
                     data: {WELCOME}\n\nid: ab:1\ndata: {EVENT}\n\n"
                )
                .as_bytes(),
            );
        } else {
            let (status, body) = match method.as_str() {
                "POST" => ("202 Accepted", r#"{"accepted":1}"#),
                _ => ("200 OK", r#"{"count":1}"#),
            };
            out.extend_from_slice(
                format!(
                    "HTTP/1.1 {status}\r\nContent-Type: application/json\r\n\
                     Content-Length: {}\r\n\r\n{body}",
                    body.len()
                )
                .as_bytes(),
            );
        }
        if s.write_all(&out).await.is_err() || s.flush().await.is_err() {
            return;
        }
    }
}

fn tls_target(url: &str, ca: &Path) -> Target {
    let opts = TargetOptions {
        reach: Reach::Loopback,
        ca_file: Some(ca.to_owned()),
    };
    let mut t = target::resolve_all(&[url], &opts).expect("target");
    t.pop().expect("one")
}

fn dial<'a>(transport: Transport, target: &'a Target) -> Dial<'a> {
    Dial {
        transport,
        target,
        src: None,
        rcvbuf: None,
        sub: Subscribe::Token("t"),
        since: None,
        seed: 7,
        connect_timeout: Duration::from_secs(5),
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// Opens a subscriber on `transport` and returns the frames after the welcome.
async fn first_event(target: &Target, transport: Transport) -> Vec<u8> {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut conn = Conn::open(&dial(transport, target), deadline)
        .await
        .unwrap_or_else(|e| panic!("{transport:?} over TLS: {e}"));
    assert!(conn.welcome().is_some(), "{transport:?}: welcome read");
    let mut got = Vec::new();
    while got.is_empty() {
        let r = conn
            .read_some(deadline, |f| got.extend_from_slice(f))
            .await
            .expect("read");
        assert_eq!(r, ReadOutcome::Data, "{transport:?}");
    }
    conn.close(1000, Duration::from_millis(200)).await;
    got
}

#[test]
fn subscribers_and_the_publisher_speak_tls_with_the_ca_file() {
    let pki = make_pki("ok");
    let (port, seen) = start_server(&pki);
    let wss = tls_target(&format!("wss://localhost:{port}"), &pki.ca());
    let https = tls_target(&format!("https://localhost:{port}/"), &pki.ca());
    assert_eq!(wss.addr, SocketAddr::from(([127, 0, 0, 1], port)));
    let rt = runtime();
    rt.block_on(async {
        assert_eq!(first_event(&wss, Transport::Ws).await, EVENT.as_bytes());
        assert_eq!(first_event(&https, Transport::Sse).await, EVENT.as_bytes());
        // Two POSTs on one keep-alive TLS connection.
        let mut c = HttpConn::connect(&https, None).await.expect("connect");
        let mut req = Vec::new();
        post_events_request(&mut req, &https.host, "k", br#"{"events":[]}"#);
        for _ in 0..2 {
            assert_eq!(c.round_trip(&req).await.expect("202"), 202);
            assert_eq!(c.body(), br#"{"accepted":1}"#);
        }
    });
    let (status, body) =
        loadtest::net::get_blocking(&https, "/latency", Duration::from_secs(5)).expect("get");
    assert_eq!(
        (status, body.as_slice()),
        (200, br#"{"count":1}"#.as_slice())
    );

    let seen: Vec<Seen> = seen.try_iter().collect();
    let paths: Vec<&str> = seen.iter().map(|s| s.path.as_str()).collect();
    assert!(paths[0].starts_with("/ws?token=t"), "{paths:?}");
    assert!(paths[1].starts_with("/sse?token=t"), "{paths:?}");
    assert_eq!(&paths[2..], ["/events", "/events", "/latency"]);
    for s in &seen {
        assert_eq!(s.sni.as_deref(), Some("localhost"), "{s:?}");
        assert_eq!(s.host, format!("localhost:{port}"), "{s:?}");
    }
}

#[test]
fn a_server_the_ca_file_does_not_vouch_for_fails_the_handshake_by_name() {
    let (served, other) = (make_pki("served"), make_pki("other"));
    let (port, seen) = start_server(&served);
    let wss = tls_target(&format!("wss://localhost:{port}"), &other.ca());
    let rt = runtime();
    rt.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(5);
        match Conn::open(&dial(Transport::Ws, &wss), deadline).await {
            Err(e @ ConnError::Tls(_)) => assert_eq!(e.kind(), "tls_handshake"),
            Err(e) => panic!("expected a TLS error, got {e}"),
            Ok(_) => panic!("an unknown CA was trusted"),
        }
        let err = HttpConn::connect(&wss, None).await.err().expect("refused");
        assert_eq!(err.kind(), "publish_tls");
    });
    // Nothing reached the application.
    assert_eq!(seen.try_iter().count(), 0);
}

#[test]
fn tls_urls_off_the_machine_still_need_allow_remote() {
    let err =
        loadtest::target::check_all(&["wss://relay.staging.example"], &TargetOptions::default())
            .expect_err("refused");
    assert!(err.to_string().contains("--allow-remote"), "{err}");
}
