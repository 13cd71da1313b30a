//! Slowloris: thousands of connections that trickle a request head never get
//! more than their absolute deadline, cost bounded memory, and do not stop the
//! node from serving legitimate handshakes.

mod common;

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::*;

/// Connections held open at once (the test process and the node each stay well
/// under the machine's 20,000 open files).
const SLOW: usize = 10_000;

/// A TCP connection from 127.0.0.`src` (spreads over several source addresses, so
/// one address's ephemeral ports are never the limit).
fn connect_from(src: u8, to: SocketAddr) -> Option<TcpStream> {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).ok()?;
    sock.bind(&SocketAddr::from((Ipv4Addr::new(127, 0, 0, src), 0)).into())
        .ok()?;
    sock.connect_timeout(&to.into(), PROMPT).ok()?;
    Some(sock.into())
}

#[test]
fn ten_thousand_trickling_heads_and_bodies_cost_bounded_memory_and_time_out_while_real_clients_connect(
) {
    let node = Node::builder()
        .flag("--handshake-timeout", "4s")
        .flag("--body-timeout", "4s")
        .flag("--connect-rate", "0")
        .start();
    // Half trickle an upgrade head; half send a whole POST head declaring the
    // largest body allowed, then trickle the body.
    let slow_body = format!(
        "POST /events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {API_KEY}\r\nContent-Type: application/json\r\nContent-Length: 1048576\r\n\r\n{{"
    );
    let rss_before = node.rss_kib();
    let started = Instant::now();
    let mut slow = Vec::with_capacity(SLOW);
    for i in 0..SLOW {
        let src = 2 + (i % 8) as u8;
        if let Some(mut s) = connect_from(src, node.addr) {
            // The first bytes of a head, or of a body, that will never be finished.
            if i % 2 == 0 {
                let _ = s.write_all(b"GET /ws?token=");
            } else {
                let _ = s.write_all(slow_body.as_bytes());
            }
            slow.push(s);
        }
    }
    assert!(
        slow.len() >= SLOW * 99 / 100,
        "only {} slow connections opened",
        slow.len()
    );
    // Keep trickling: one more byte on each, which must not move any deadline.
    for s in slow.iter_mut() {
        let _ = s.write_all(b"x");
    }
    // A real client is served meanwhile.
    let mut ws = node.ws_welcomed("real");
    node.publish_ok(&event("real", "e", "1"), 1);
    assert_eq!(ws.next_event(PROMPT)["event"], "e");
    let rss_hold = node.rss_kib();
    let grown = rss_hold.saturating_sub(rss_before);
    assert!(
        grown < 256 * 1024,
        "{} trickling connections grew RSS by {grown} KiB",
        slow.len()
    );
    // The absolute deadline closes every one of them (408 then close) within
    // the timeout plus the time it took to open them all, however they trickle.
    let limit = Duration::from_secs(4) + started.elapsed() + Duration::from_secs(10);
    let deadline = Instant::now() + limit;
    let mut open = 0;
    for s in slow.iter_mut() {
        let _ = s.set_read_timeout(Some(
            deadline
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(1)),
        ));
        let mut buf = [0u8; 512];
        let mut got = Vec::new();
        loop {
            match std::io::Read::read(s, &mut buf) {
                Ok(0) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(_) => {
                    open += 1;
                    break;
                }
            }
        }
        if !got.is_empty() {
            assert!(
                got.starts_with(b"HTTP/1.1 408 "),
                "{}",
                String::from_utf8_lossy(&got)
            );
        }
    }
    assert_eq!(
        open, 0,
        "{open} trickling connections outlived their deadline"
    );
    eprintln!(
        "{} trickling connections: RSS +{grown} KiB at hold, all closed",
        slow.len()
    );
}
