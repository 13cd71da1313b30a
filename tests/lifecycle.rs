//! The life of a socket after the upgrade: token expiry and refresh, bad client messages,
//! message size, pings and dead peers, and the drain on SIGTERM.

// A test drives the node from its own threads, which may sleep and block.
#![allow(clippy::disallowed_methods)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

fn no_leeway() -> Node {
    Node::builder().flag("--jwt-leeway", "0s").start()
}

fn connect_with(node: &Node, token: &str) -> Ws {
    let (mut ws, _) = ws_connect(node.addr, &format!("/ws?token={token}"), &[])
        .unwrap_or_else(|r| panic!("refused: {} {}", r.status, r.body_str()));
    assert_eq!(ws.next_json(PROMPT)["type"], "welcome");
    ws
}

// --- token expiry and refresh ---------------------------------------------------------

#[test]
fn socket_whose_token_expires_is_closed_with_4001() {
    let node = no_leeway();
    let exp = now() + 2;
    let mut ws = connect_with(&node, &token_expiring("exp1", exp));
    let start = Instant::now();
    let code = ws.expect_close(Duration::from_secs(8));
    assert_eq!(code, Some(4001));
    assert!(
        now() >= exp,
        "closed {:?} after connecting, before the token's exp",
        start.elapsed()
    );
    assert_eq!(
        node.wait_metric(
            "relay_socket_disconnects_total",
            &[("reason", "token_expired")],
            PROMPT,
            |v| v >= 1.0
        ),
        1.0
    );
}

#[test]
fn refresh_before_expiry_keeps_the_socket_open_until_the_new_exp() {
    let node = no_leeway();
    let exp = now() + 2;
    let mut ws = connect_with(&node, &token_expiring("ref1", exp));
    let new_exp = now() + 6;
    ws.send_text(&json!({"type": "refresh", "token": token_expiring("ref1", new_exp)}).to_string());
    // The relay acknowledges the refresh with the new exp.
    let ack = ws.next_json(PROMPT);
    assert_eq!(ack, json!({"type": "refreshed", "exp": new_exp}));
    // Stay connected past the old exp (pings are fine, a close is not).
    ws.assert_no_text(Duration::from_millis(3500));
    assert!(now() > exp);
    node.publish_ok(&event("ref1", "still-here", "1"), 1);
    assert_eq!(ws.next_event(PROMPT)["event"], "still-here");
    // The new token's exp is now the socket's end.
    assert_eq!(ws.expect_close(Duration::from_secs(7)), Some(4001));
    assert!(now() >= new_exp, "closed before the refreshed exp");
}

#[test]
fn refresh_for_another_session_closes_with_1008() {
    let node = Node::start();
    let mut ws = node.ws_welcomed("ref2");
    ws.send_text(&json!({"type": "refresh", "token": token("someone-else")}).to_string());
    assert_eq!(ws.expect_close(PROMPT), Some(1008));
}

// --- bad client messages --------------------------------------------------------------

#[test]
fn non_json_client_message_closes_with_1008() {
    let node = Node::start();
    let mut ws = node.ws_welcomed("bad1");
    ws.send_text("hello, relay");
    assert_eq!(ws.expect_close(PROMPT), Some(1008));
}

#[test]
fn unknown_client_message_type_closes_with_1008() {
    let node = Node::start();
    let mut ws = node.ws_welcomed("bad2");
    ws.send_text(r#"{"type":"subscribe","session":"other"}"#);
    assert_eq!(ws.expect_close(PROMPT), Some(1008));
}

#[test]
fn client_message_over_the_limit_closes_with_1009() {
    let node = Node::builder().flag("--max-message-bytes", "1024").start();
    let mut ws = node.ws_welcomed("big1");
    let msg = json!({"type": "refresh", "token": "x".repeat(2000)}).to_string();
    ws.send_text(&msg);
    assert_eq!(ws.expect_close(PROMPT), Some(1009));
}

#[test]
fn client_message_over_16_kib_closes_with_1009_by_default() {
    let node = Node::start();
    let mut ws = node.ws_welcomed("big2");
    let msg = json!({"type": "refresh", "token": "x".repeat(17 * 1024)}).to_string();
    ws.send_text(&msg);
    assert_eq!(ws.expect_close(PROMPT), Some(1009));
}

#[test]
fn client_message_far_over_the_limit_closes_with_1009() {
    let node = Node::start();
    let mut ws = node.ws_welcomed("big3");
    let msg = json!({"type": "refresh", "token": "x".repeat(256 * 1024)}).to_string();
    // The server may stop reading part way; the write may then fail, the close must not.
    let _ = ws.ws.send(tungstenite::Message::text(msg));
    assert_eq!(ws.expect_close(PROMPT), Some(1009));
}

#[test]
fn binary_client_message_closes_with_1008() {
    let node = Node::start();
    let mut ws = node.ws_welcomed("bin1");
    ws.ws
        .send(tungstenite::Message::binary(
            b"{\"type\":\"refresh\"}".to_vec(),
        ))
        .unwrap();
    assert_eq!(ws.expect_close(PROMPT), Some(1008));
}

#[test]
fn text_that_is_not_utf8_closes_with_1007() {
    let node = Node::start();
    let mut raw = RawSocket::upgrade(node.addr, "utf1");
    raw.send_frame(0x81, b"{\"type\":\"\xff\xfe\"}", true);
    let code = raw.read_until_close(PROMPT).expect("close frame");
    assert_eq!(code, Some(1007));
}

#[test]
fn unmasked_client_frame_closes_with_1002() {
    let node = Node::start();
    let mut raw = RawSocket::upgrade(node.addr, "mask1");
    raw.send_frame(0x81, br#"{"type":"refresh","token":"x"}"#, false);
    let code = raw.read_until_close(PROMPT).expect("close frame");
    assert_eq!(code, Some(1002));
}

#[test]
fn client_ping_is_answered_with_a_pong_of_the_same_payload() {
    let node = Node::start();
    let mut ws = node.ws_welcomed("cping");
    ws.ws
        .send(tungstenite::Message::Ping(b"are-you-there".to_vec().into()))
        .unwrap();
    match ws.recv(PROMPT) {
        Ok(tungstenite::Message::Pong(p)) => assert_eq!(&p[..], b"are-you-there"),
        other => panic!("expected a pong, got {other:?}"),
    }
}

#[test]
fn client_close_is_answered_with_a_close_and_counted() {
    let node = Node::start();
    let mut ws = node.ws_welcomed("cclose");
    ws.ws
        .close(Some(tungstenite::protocol::CloseFrame {
            code: 1000.into(),
            reason: "bye".into(),
        }))
        .unwrap();
    assert_eq!(ws.expect_close(PROMPT), Some(1000));
    assert_eq!(
        node.wait_metric(
            "relay_socket_disconnects_total",
            &[("reason", "client_close")],
            PROMPT,
            |v| v >= 1.0
        ),
        1.0
    );
    assert!(wait_until(PROMPT, || node
        .metric("relay_connected_clients", &[])
        == 0.0));
}

// --- pings and dead peers -------------------------------------------------------------

fn pinging_node() -> Node {
    Node::builder()
        .flag("--ping-interval", "1s")
        .flag("--ping-timeout", "3s")
        .start()
}

#[test]
fn idle_socket_receives_pings() {
    let node = pinging_node();
    let mut ws = node.ws_welcomed("ping1");
    match ws.recv(Duration::from_secs(5)) {
        Ok(tungstenite::Message::Ping(_)) => {}
        Ok(other) => panic!("expected a ping, got {other:?}"),
        Err(e) => panic!("no ping within 5 s at a 1 s interval: {e:?}"),
    }
}

#[test]
fn socket_that_answers_pings_outlives_the_ping_timeout() {
    let node = pinging_node();
    let mut ws = node.ws_welcomed("ping2");
    // tungstenite answers each ping with a pong while we read.
    ws.assert_no_text(Duration::from_secs(5));
    node.publish_ok(&event("ping2", "alive", "1"), 1);
    assert_eq!(ws.next_event(PROMPT)["event"], "alive");
    assert_eq!(
        node.metric("relay_socket_disconnects_total", &[("reason", "timeout")]),
        0.0
    );
}

#[test]
fn silent_client_is_closed_and_counted_as_timeout() {
    let node = pinging_node();
    let mut dead = RawSocket::upgrade(node.addr, "dead1");
    assert!(
        wait_until(PROMPT, || node.metric("relay_connected_clients", &[])
            == 1.0),
        "raw socket never counted as connected"
    );
    let timeouts = node.wait_metric(
        "relay_socket_disconnects_total",
        &[("reason", "timeout")],
        Duration::from_secs(10),
        |v| v >= 1.0,
    );
    assert_eq!(timeouts, 1.0, "silent client not closed as a timeout");
    assert!(
        wait_until(PROMPT, || node.metric("relay_connected_clients", &[])
            == 0.0),
        "silent client still counted as connected"
    );
    // The connection really is gone: reading ends with a close frame, EOF or a reset.
    match dead.read_until_close(PROMPT) {
        Ok(_) => {}
        Err(e) => assert_ne!(e.kind(), std::io::ErrorKind::TimedOut, "socket still open"),
    }
}

// --- drain ----------------------------------------------------------------------------

#[test]
fn sigterm_closes_sockets_with_1012_and_exits_0() {
    let mut node = Node::builder()
        .flag("--drain-timeout", "3s")
        .flag("--drain-ready-delay", "0s")
        .start();
    let mut a = node.ws_welcomed("drain1");
    let mut b = node.ws_welcomed("drain2");
    let start = Instant::now();
    node.sigterm();
    assert_eq!(a.expect_close(Duration::from_secs(5)), Some(1012));
    assert_eq!(b.expect_close(Duration::from_secs(5)), Some(1012));
    let status = node
        .wait_exit(Duration::from_secs(6))
        .unwrap_or_else(|| panic!("node still running {:?} after SIGTERM", start.elapsed()));
    assert!(status.success(), "node exited with {status:?}");
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "exit took {:?}, drain timeout was 3 s",
        start.elapsed()
    );
}

/// A node mid-drain: started with a 4 s drain timeout, holding sockets that never answer
/// their 1012, plus a keep-alive connection
/// that has already served one request. Returns after SIGTERM.
fn draining_node() -> (Node, Vec<RawSocket>, HttpConn) {
    let node = Node::builder()
        .flag("--drain-timeout", "4s")
        .flag("--drain-ready-delay", "0s")
        .start();
    // Eight sessions, so (sockets living on their session's shard) both shards hold some.
    let stuck: Vec<RawSocket> = (0..8)
        .map(|i| RawSocket::upgrade(node.addr, &format!("drain-{i}")))
        .collect();
    let mut conn = HttpConn::connect(node.addr);
    let r = conn.request(b"GET /readyz HTTP/1.1\r\nHost: localhost\r\n\r\n");
    assert_eq!(r.status, 200, "readyz before SIGTERM");
    // Let the server finish that response and wait for the next request before the signal.
    std::thread::sleep(Duration::from_millis(100));
    node.sigterm();
    std::thread::sleep(Duration::from_millis(200));
    (node, stuck, conn)
}

#[test]
fn readyz_after_sigterm_answers_503() {
    let (mut node, _stuck, mut conn) = draining_node();
    let r = conn.request(b"GET /readyz HTTP/1.1\r\nHost: localhost\r\n\r\n");
    assert_eq!(r.status, 503, "readyz while draining: {}", r.body_str());
    // 4 s drain timeout; 0.2 s have passed since the signal; allow 1 s of slack.
    let status = node
        .wait_exit(Duration::from_millis(3800 + 1000))
        .expect("node still running past its drain timeout");
    assert!(status.success(), "node exited with {status:?}");
}

#[test]
fn upgrade_after_sigterm_is_refused_with_503() {
    let (mut node, _stuck, mut conn) = draining_node();
    let req = upgrade_request(&format!("/ws?token={}", token("drain4")), &[]);
    conn.request(req.as_bytes())
        .assert_error(503, "unavailable");
    let status = node
        .wait_exit(Duration::from_secs(8))
        .expect("node did not exit");
    assert!(status.success(), "node exited with {status:?}");
}

#[test]
fn publish_after_sigterm_is_refused_with_503() {
    let (mut node, _stuck, mut conn) = draining_node();
    let r =
        conn.request(post_events_request(&event("drain-0", "e", "1"), Some(API_KEY)).as_bytes());
    r.assert_error(503, "unavailable");
    let status = node
        .wait_exit(Duration::from_secs(8))
        .expect("node did not exit");
    assert!(status.success(), "node exited with {status:?}");
}

#[test]
fn new_connection_after_sigterm_is_never_upgraded() {
    let (mut node, _stuck, _conn) = draining_node();
    // Listeners close on drain; if a connection still gets through it must be refused.
    if let Ok(stream) = std::net::TcpStream::connect_timeout(&node.addr, Duration::from_secs(2)) {
        drop(stream);
        let (req_ok, status) = {
            let mut c = HttpConn::connect_lenient(node.addr);
            match c.as_mut() {
                Some(c) => {
                    let req = upgrade_request(&format!("/ws?token={}", token("late")), &[]);
                    match c.send(req.as_bytes()).and_then(|_| c.read_response()) {
                        Ok(r) => (true, r.status),
                        Err(_) => (false, 0),
                    }
                }
                None => (false, 0),
            }
        };
        if req_ok {
            assert_eq!(status, 503, "a new connection during drain got {status}");
        }
    }
    let status = node
        .wait_exit(Duration::from_secs(8))
        .expect("node did not exit");
    assert!(status.success(), "node exited with {status:?}");
}

/// The close code in the first close frame among `buf`'s server frames, once one
/// has arrived whole.
fn close_code_in(buf: &[u8]) -> Option<u16> {
    let mut at = 0;
    while at + 2 <= buf.len() {
        let (first, len7) = (buf[at], (buf[at + 1] & 0x7f) as usize);
        let (len, head) = match len7 {
            126 if at + 4 <= buf.len() => {
                (u16::from_be_bytes([buf[at + 2], buf[at + 3]]) as usize, 4)
            }
            126 => return None,
            127 => return None,
            n => (n, 2),
        };
        if at + head + len > buf.len() {
            return None;
        }
        if first == 0x88 && len >= 2 {
            return Some(u16::from_be_bytes([buf[at + head], buf[at + head + 1]]));
        }
        at += head + len;
    }
    None
}

#[test]
fn a_drain_turns_unready_first_then_spreads_its_1012s_over_the_window() {
    let mut node = Node::builder()
        .flag("--connect-rate", "0")
        .flag("--drain-timeout", "8s")
        .flag("--drain-ready-delay", "1s")
        .flag("--drain-spread", "3s")
        .start();
    let mut sockets: Vec<(RawSocket, Vec<u8>, Option<Duration>)> = (0..2000)
        .map(|i| {
            (
                RawSocket::upgrade(node.addr, &format!("spread-{}", i % 100)),
                Vec::new(),
                None,
            )
        })
        .collect();
    for (s, _, _) in &sockets {
        s.stream.set_nonblocking(true).unwrap();
    }
    let signalled = Instant::now();
    node.sigterm();
    std::thread::sleep(Duration::from_millis(100));
    // Unready at once, but still serving until the delay is over.
    assert_eq!(node.get("/readyz").status, 503);
    let mut late = node.ws_welcomed("spread-late");
    node.publish_ok(&event("spread-late", "e", "1"), 1);
    assert_eq!(late.next_event(PROMPT)["data"], 1);
    assert!(
        signalled.elapsed() < Duration::from_millis(900),
        "the checks above took too long"
    );

    let deadline = Instant::now() + Duration::from_secs(10);
    let mut chunk = [0u8; 4096];
    while sockets.iter().any(|(_, _, at)| at.is_none()) && Instant::now() < deadline {
        for (s, buf, at) in sockets.iter_mut().filter(|(_, _, at)| at.is_none()) {
            match std::io::Read::read(&mut s.stream, &mut chunk) {
                Ok(0) => *at = Some(signalled.elapsed()),
                Ok(n) => {
                    buf.extend_from_slice(&chunk[..n]);
                    if let Some(code) = close_code_in(buf) {
                        assert_eq!(code, 1012);
                        *at = Some(signalled.elapsed());
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("socket failed before its 1012: {e}"),
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut times: Vec<Duration> = sockets
        .iter()
        .map(|(_, _, at)| at.expect("every socket got its 1012"))
        .collect();
    times.sort();
    let (first, last) = (times[0], times[times.len() - 1]);
    let median = times[times.len() / 2];
    assert!(
        first >= Duration::from_millis(900),
        "a 1012 came {first:?} after SIGTERM, inside the ready delay"
    );
    assert!(
        last - first >= Duration::from_millis(2000),
        "1012s not spread over the 3 s window: first {first:?}, last {last:?}"
    );
    assert!(
        median > first + Duration::from_millis(700) && median < last - Duration::from_millis(700),
        "1012s bunched: first {first:?}, median {median:?}, last {last:?}"
    );
    assert!(last < Duration::from_millis(5500), "last 1012 at {last:?}");
    drop(sockets);
    drop(late);
    let status = node
        .wait_exit(Duration::from_secs(8))
        .expect("node exits after its drain");
    assert!(status.success());
}

#[test]
fn a_socket_whose_turn_panics_closes_with_1011_and_the_node_serves_on() {
    let node = Node::builder().env("RELAY_DEBUG_FAULTS", "1").start();
    let mut doomed = node.ws_welcomed("fault");
    let mut other = node.ws_welcomed("fault");
    doomed.send_text(r#"{"type":"debug-panic"}"#);
    assert_eq!(doomed.expect_close(PROMPT), Some(1011));
    assert_eq!(
        node.wait_metric(
            "relay_socket_disconnects_total",
            &[("reason", "internal_error")],
            PROMPT,
            |v| v >= 1.0
        ),
        1.0
    );
    // The same session, on the same shard, goes on.
    node.publish_ok(&event("fault", "e", "1"), 1);
    assert_eq!(other.next_event(PROMPT)["data"], 1);
    assert!(node
        .log()
        .contains("socket turn panicked; connection dropped"));
}
