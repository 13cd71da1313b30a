//! Hostile HTTP: upgrade requests that are not quite WebSocket handshakes, handshake
//! details browsers rely on, and request heads and bodies built to confuse a parser or
//! hold a connection open. Each refusal asserts the exact status, then that the server
//! closes TCP. Neighbouring cases live in tests/ws_handshake.rs and tests/publish.rs.

// A test drives the node from its own threads, which may sleep and block.
#![allow(clippy::disallowed_methods)]

mod common;

use std::io::Write;
use std::time::{Duration, Instant};

use common::*;

/// How long the server may take to close TCP after a refusal.
const TCP_CLOSE: Duration = Duration::from_secs(3);

/// Sends `raw` on a fresh connection, reads the answer, and asserts the server then
/// closes TCP.
fn answer_then_close(node: &Node, raw: &[u8]) -> HttpResponse {
    let mut conn = HttpConn::connect(node.addr);
    let resp = conn.request(raw);
    assert!(
        conn.closed_within(TCP_CLOSE),
        "TCP left open after {} {}",
        resp.status,
        resp.body_str()
    );
    resp
}

fn ws_path(session: &str) -> String {
    format!("/ws?token={}", token(session))
}

/// An upgrade request with every header line given by the caller.
fn upgrade_with(request_line: &str, headers: &[&str]) -> String {
    let mut s = format!("{request_line}\r\nHost: localhost\r\n");
    for h in headers {
        s.push_str(h);
        s.push_str("\r\n");
    }
    s.push_str("\r\n");
    s
}

const KEY: &str = "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==";
const VERSION: &str = "Sec-WebSocket-Version: 13";

// --- the handshake: refusals ----------------------------------------------------------

#[test]
fn http_1_0_upgrade_is_refused_with_400() {
    let node = Node::start();
    let req = upgrade_with(
        &format!("GET {} HTTP/1.0", ws_path("h10")),
        &["Upgrade: websocket", "Connection: Upgrade", KEY, VERSION],
    );
    answer_then_close(&node, req.as_bytes()).assert_error(400, "bad_request");
}

#[test]
fn post_with_upgrade_headers_is_refused_with_400() {
    let node = Node::start();
    let req = upgrade_with(
        &format!("POST {} HTTP/1.1", ws_path("post")),
        &[
            "Upgrade: websocket",
            "Connection: Upgrade",
            KEY,
            VERSION,
            "Content-Length: 0",
        ],
    );
    answer_then_close(&node, req.as_bytes()).assert_error(400, "bad_request");
}

#[test]
fn bytes_sent_after_the_upgrade_request_before_the_101_are_refused_with_400() {
    let node = Node::start();
    let mut req = upgrade_request(&ws_path("early"), &[]).into_bytes();
    // A masked text frame the client had no right to send yet, in the same write.
    req.extend_from_slice(&[0x81, 0x82, 0, 0, 0, 0, b'h', b'i']);
    answer_then_close(&node, &req).assert_error(400, "bad_request");
}

#[test]
fn upgrade_without_upgrade_or_connection_header_is_refused_with_400() {
    let node = Node::start();
    let line = format!("GET {} HTTP/1.1", ws_path("hdr"));
    let cases: [(&str, Vec<&str>); 4] = [
        ("no Upgrade", vec!["Connection: Upgrade", KEY, VERSION]),
        ("no Connection", vec!["Upgrade: websocket", KEY, VERSION]),
        (
            "Upgrade: h2c",
            vec!["Upgrade: h2c", "Connection: Upgrade", KEY, VERSION],
        ),
        (
            "Connection: keep-alive",
            vec!["Upgrade: websocket", "Connection: keep-alive", KEY, VERSION],
        ),
    ];
    for (what, headers) in cases {
        let resp = answer_then_close(&node, upgrade_with(&line, &headers).as_bytes());
        assert_eq!(
            resp.status,
            400,
            "{what}: got {} {}",
            resp.status,
            resp.body_str()
        );
        resp.assert_error(400, "bad_request");
    }
}

#[test]
fn websocket_key_of_the_wrong_length_is_refused_with_400() {
    let node = Node::start();
    let line = format!("GET {} HTTP/1.1", ws_path("key"));
    for key in [
        // valid base64 of 15 and of 17 bytes
        "AAAAAAAAAAAAAAAAAAAA",
        "AAAAAAAAAAAAAAAAAAAAAAA=",
        // the sample key without its padding, and with a byte too many
        "dGhlIHNhbXBsZSBub25jZQ",
        "dGhlIHNhbXBsZSBub25jZQ==A",
        "",
    ] {
        let headers = [
            "Upgrade: websocket",
            "Connection: Upgrade",
            &format!("Sec-WebSocket-Key: {key}"),
            VERSION,
        ];
        let resp = answer_then_close(&node, upgrade_with(&line, &headers).as_bytes());
        assert_eq!(resp.status, 400, "key {key:?}: got {}", resp.status);
        resp.assert_error(400, "bad_request");
    }
}

// --- the handshake: what browsers rely on ---------------------------------------------

/// Sends an upgrade and reads the answer's head; the connection is dropped afterwards.
fn upgrade_answer(node: &Node, req: &str) -> HttpResponse {
    let mut conn = HttpConn::connect(node.addr);
    conn.request(req.as_bytes())
}

#[test]
fn mixed_case_and_firefox_style_headers_are_accepted_with_101() {
    let node = Node::start();
    let req = upgrade_with(
        &format!("GET {} HTTP/1.1", ws_path("ff")),
        &[
            "UPGRADE: WebSocket",
            "connection: keep-alive, Upgrade",
            "sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==",
            "SEC-WEBSOCKET-VERSION: 13",
        ],
    );
    let resp = upgrade_answer(&node, &req);
    assert_eq!(resp.status, 101, "{}", resp.body_str());
    assert_eq!(
        resp.header("sec-websocket-accept"),
        Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
    );
}

#[test]
fn rfc_sample_key_gets_the_rfc_accept_value() {
    let node = Node::start();
    let resp = upgrade_answer(&node, &upgrade_request(&ws_path("rfc"), &[]));
    assert_eq!(resp.status, 101, "{}", resp.body_str());
    // RFC 6455 section 1.3.
    assert_eq!(
        resp.header("sec-websocket-accept"),
        Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
    );
}

#[test]
fn permessage_deflate_offer_is_declined() {
    let node = Node::start();
    let resp = upgrade_answer(
        &node,
        &upgrade_request(
            &ws_path("deflate"),
            &["Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits"],
        ),
    );
    assert_eq!(resp.status, 101, "{}", resp.body_str());
    assert_eq!(
        resp.header("sec-websocket-extensions"),
        None,
        "headers {:?}",
        resp.headers
    );
}

#[test]
fn subprotocol_is_echoed_only_when_offered() {
    let node = Node::start();
    let t = token("proto");
    // The token as the only offered protocol: no protocol may be answered.
    let resp = upgrade_answer(
        &node,
        &upgrade_request("/ws", &[&format!("Sec-WebSocket-Protocol: bearer.{t}")]),
    );
    assert_eq!(resp.status, 101, "{}", resp.body_str());
    assert_eq!(
        resp.header("sec-websocket-protocol"),
        None,
        "bearer.JWT alone offered; headers {:?}",
        resp.headers
    );
    // An unknown protocol next to ours: ours is chosen.
    let resp = upgrade_answer(
        &node,
        &upgrade_request(
            &ws_path("proto"),
            &["Sec-WebSocket-Protocol: foo, relay.v1"],
        ),
    );
    assert_eq!(resp.status, 101, "{}", resp.body_str());
    assert_eq!(resp.header("sec-websocket-protocol"), Some("relay.v1"));
    // Only an unknown protocol: nothing is answered.
    let resp = upgrade_answer(
        &node,
        &upgrade_request(&ws_path("proto"), &["Sec-WebSocket-Protocol: foo"]),
    );
    assert_eq!(resp.status, 101, "{}", resp.body_str());
    assert_eq!(
        resp.header("sec-websocket-protocol"),
        None,
        "foo alone offered; headers {:?}",
        resp.headers
    );
}

// --- heads ----------------------------------------------------------------------------

#[test]
fn request_uri_over_8_kib_is_refused_with_414() {
    let node = Node::start();
    let pad = "x".repeat(9 * 1024);
    // Both under the 16 KiB head limit, so only the URI's length is at fault.
    let ws = upgrade_request(&format!("{}&pad={pad}", ws_path("uri")), &[]);
    answer_then_close(&node, ws.as_bytes()).assert_error(414, "uri_too_long");
    let body = event("uri", "e", "1");
    let post = format!(
        "POST /events?pad={pad} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nAuthorization: Bearer {API_KEY}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    answer_then_close(&node, post.as_bytes()).assert_error(414, "uri_too_long");
}

#[test]
fn request_head_over_the_default_16_kib_is_refused_with_431_then_closed() {
    let node = Node::start();
    // One big header, and many small ones adding up past the limit.
    let big = format!("X-Pad: {}", "p".repeat(17 * 1024));
    let resp = answer_then_close(&node, upgrade_request(&ws_path("big"), &[&big]).as_bytes());
    resp.assert_error(431, "header_too_large");
    let many: Vec<String> = (0..2000).map(|i| format!("X-H{i}: v")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    let resp = answer_then_close(&node, upgrade_request(&ws_path("big"), &many).as_bytes());
    resp.assert_error(431, "header_too_large");
}

/// A `POST /events` head with the key and JSON type, plus `extra` header lines, then
/// `body`.
fn post_events(extra: &[&str], body: &str) -> String {
    let mut s = format!(
        "POST /events HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nAuthorization: Bearer {API_KEY}\r\n"
    );
    for h in extra {
        s.push_str(h);
        s.push_str("\r\n");
    }
    s.push_str("\r\n");
    s.push_str(body);
    s
}

#[test]
fn content_length_with_transfer_encoding_is_refused_with_400_then_closed() {
    let node = Node::start();
    let body = event("smuggle", "e", "1");
    let chunked = format!("{:x}\r\n{body}\r\n0\r\n\r\n", body.len());
    let cl = format!("Content-Length: {}", chunked.len());
    for order in [
        [cl.as_str(), "Transfer-Encoding: chunked"],
        ["Transfer-Encoding: chunked", cl.as_str()],
    ] {
        let resp = answer_then_close(&node, post_events(&order, &chunked).as_bytes());
        assert_eq!(resp.status, 400, "{order:?}: {}", resp.body_str());
        resp.assert_error(400, "bad_request");
    }
}

#[test]
fn bad_content_length_is_refused_with_400_then_closed() {
    let node = Node::start();
    let body = event("badlen", "e", "1");
    let n = body.len();
    let cases: [Vec<String>; 5] = [
        vec!["Content-Length: -1".into()],
        vec!["Content-Length: abc".into()],
        vec!["Content-Length:".into()],
        vec![
            format!("Content-Length: {n}"),
            format!("Content-Length: {}", n + 1),
        ],
        vec![format!("Content-Length: {n}, {}", n + 1)],
    ];
    for headers in cases {
        let headers: Vec<&str> = headers.iter().map(String::as_str).collect();
        let resp = answer_then_close(&node, post_events(&headers, &body).as_bytes());
        assert_eq!(
            resp.status,
            400,
            "{headers:?}: {} {}",
            resp.status,
            resp.body_str()
        );
        resp.assert_error(400, "bad_request");
    }
}

#[test]
fn content_length_with_a_plus_sign_is_refused_with_400() {
    // RFC 9110: Content-Length is 1*DIGIT. A lenient integer parse accepts "+N", and a
    // front end that reads it differently is how requests get smuggled.
    let node = Node::start();
    let body = event("sign", "e", "1");
    for cl in [format!("+{}", body.len()), format!("+0{}", body.len())] {
        let resp = answer_then_close(
            &node,
            post_events(&[&format!("Content-Length: {cl}")], &body).as_bytes(),
        );
        assert_eq!(
            resp.status,
            400,
            "Content-Length {cl:?}: {} {}",
            resp.status,
            resp.body_str()
        );
        resp.assert_error(400, "bad_request");
    }
}

#[test]
fn transfer_encoding_gzip_or_chunked_is_refused_with_501_then_closed() {
    let node = Node::start();
    let body = event("te", "e", "1");
    let chunked = format!("{:x}\r\n{body}\r\n0\r\n\r\n", body.len());
    for te in ["chunked", "gzip", "gzip, chunked", "Chunked"] {
        let resp = answer_then_close(
            &node,
            post_events(&[&format!("Transfer-Encoding: {te}")], &chunked).as_bytes(),
        );
        assert_eq!(
            resp.status,
            501,
            "Transfer-Encoding {te}: {}",
            resp.body_str()
        );
        resp.assert_error(501, "not_implemented");
    }
}

// --- slow heads -----------------------------------------------------------------------

/// Sends `first`, then one byte of `drip` every 100 ms (never finishing the head), and
/// returns the answer with the time from connect to the answer.
fn trickle_head(node: &Node, first: String) -> (HttpResponse, Duration, HttpConn) {
    let mut conn = HttpConn::connect(node.addr);
    let start = Instant::now();
    conn.send(first.as_bytes()).unwrap();
    let mut writer = conn.stream.try_clone().unwrap();
    let dripper = std::thread::spawn(move || {
        // 80 bytes at 100 ms: 8 s, well past the 1 s deadline; stops when the server
        // closes (the write fails).
        for _ in 0..80 {
            std::thread::sleep(Duration::from_millis(100));
            if writer.write_all(b"a").is_err() {
                break;
            }
        }
    });
    conn.set_timeout(Duration::from_secs(6));
    let resp = conn.read_response();
    let took = start.elapsed();
    let _ = conn.stream.shutdown(std::net::Shutdown::Write);
    let _ = dripper.join();
    let resp = resp.unwrap_or_else(|e| panic!("no answer to a trickled head: {e}"));
    (resp, took, conn)
}

fn assert_408_at_the_deadline(resp: &HttpResponse, took: Duration, conn: &mut HttpConn) {
    resp.assert_error(408, "request_timeout");
    // The deadline is 1 s from accept: a byte every 100 ms must not push it back.
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_millis(2500),
        "408 after {took:?}; the absolute deadline was 1 s"
    );
    assert!(conn.closed_within(TCP_CLOSE), "TCP left open after 408");
}

#[test]
fn upgrade_head_trickled_one_byte_per_100_ms_gets_408_at_its_absolute_deadline() {
    let node = Node::builder().flag("--handshake-timeout", "1s").start();
    let first = format!(
        "GET {} HTTP/1.1\r\nHost: localhost\r\nX-Slow: ",
        ws_path("slow")
    );
    let (resp, took, mut conn) = trickle_head(&node, first);
    assert_408_at_the_deadline(&resp, took, &mut conn);
}

#[test]
fn events_body_trickled_one_byte_per_100_ms_gets_408_at_its_absolute_deadline() {
    let node = Node::builder().flag("--body-timeout", "1s").start();
    // A whole head declaring 100 bytes, then a body that never completes.
    let first = format!(
        "POST /events HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {API_KEY}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{"
    );
    let (resp, took, mut conn) = trickle_head(&node, first);
    assert_408_at_the_deadline(&resp, took, &mut conn);
    assert_eq!(
        node.metric("relay_publish_errors_total", &[("reason", "timeout")]),
        1.0
    );
}

#[test]
fn events_head_trickled_one_byte_per_100_ms_gets_408_at_its_absolute_deadline() {
    let node = Node::builder().flag("--handshake-timeout", "1s").start();
    let first = format!(
        "POST /events HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {API_KEY}\r\nX-Slow: "
    );
    let (resp, took, mut conn) = trickle_head(&node, first);
    assert_408_at_the_deadline(&resp, took, &mut conn);
}
