//! `POST /events` and the HTTP side of the node: acceptance, refusals with their status
//! codes and JSON bodies, request limits and timeouts, keep-alive.

// A test drives the node from its own threads, which may sleep and block.
#![allow(clippy::disallowed_methods)]

mod common;

use std::io::Write;
use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

fn post_with_headers(node: &Node, headers: &str, body: &str) -> HttpResponse {
    http_request(
        node.addr,
        &format!(
            "POST /events HTTP/1.1\r\nHost: localhost\r\n{headers}Content-Length: {}\r\n\r\n{body}",
            body.len()
        ),
    )
}

// --- accepted -------------------------------------------------------------------------

#[test]
fn single_event_is_accepted_with_202_and_delivered() {
    let node = Node::start();
    let mut ws = node.ws_welcomed("p1");
    node.publish_ok(&event("p1", "issue.updated", r#"{"n":1}"#), 1);
    let ev = ws.next_event(PROMPT);
    assert_eq!(ev["session"], "p1");
    assert_eq!(ev["event"], "issue.updated");
    assert_eq!(ev["data"], json!({"n": 1}));
    assert!(!ev["id"].is_null(), "event frame without id: {ev}");
}

#[test]
fn batch_is_accepted_with_202_counting_its_events() {
    let node = Node::start();
    let mut s1 = node.ws_welcomed("b1");
    let mut s2 = node.ws_welcomed("b2");
    let body = batch(&[
        event("b1", "a", "1"),
        event("b2", "b", "null"),
        event("b1", "c", r#""three""#),
    ]);
    node.publish_ok(&body, 3);
    let e1 = s1.next_event(PROMPT);
    let e3 = s1.next_event(PROMPT);
    assert_eq!(
        (e1["event"].clone(), e1["data"].clone()),
        (json!("a"), json!(1))
    );
    assert_eq!(
        (e3["event"].clone(), e3["data"].clone()),
        (json!("c"), json!("three"))
    );
    let e2 = s2.next_event(PROMPT);
    assert_eq!(
        (e2["event"].clone(), e2["data"].clone()),
        (json!("b"), json!(null))
    );
}

#[test]
fn publisher_id_is_carried_to_the_socket() {
    let node = Node::start();
    let mut ws = node.ws_welcomed("id1");
    node.publish_ok(
        r#"{"session":"id1","event":"e","data":{},"id":"evt-42"}"#,
        1,
    );
    assert_eq!(ws.next_event(PROMPT)["id"], "evt-42");
}

#[test]
fn relay_gives_each_event_an_id_when_the_publisher_gives_none() {
    let node = Node::start();
    let mut ws = node.ws_welcomed("id2");
    node.publish_ok(&batch(&[event("id2", "e", "1"), event("id2", "e", "2")]), 2);
    let a = ws.next_event(PROMPT);
    let b = ws.next_event(PROMPT);
    assert!(!a["id"].is_null() && !b["id"].is_null(), "{a} {b}");
    assert_ne!(a["id"], b["id"], "two events share an id");
}

#[test]
fn batch_with_one_invalid_event_is_refused_with_400_and_delivers_nothing() {
    let node = Node::start();
    let mut ws = node.ws_welcomed("aon");
    let body = format!(
        r#"{{"events":[{},{},{}]}}"#,
        event("aon", "first", "1"),
        r#"{"session":"aon","data":2}"#, // no "event"
        event("aon", "third", "3"),
    );
    let msg = node.publish(&body).assert_error(400, "bad_request");
    assert!(
        msg.contains("event"),
        "message does not name the field: {msg}"
    );
    // Nothing of the refused batch arrives: the next frame is the marker published after it.
    node.publish_ok(&event("aon", "marker", "0"), 1);
    let next = ws.next_event(PROMPT);
    assert_eq!(next["event"], "marker", "a refused batch delivered {next}");
}

#[test]
fn batch_refused_for_one_bad_event_delivers_to_no_session_on_any_shard() {
    let node = Node::start();
    // Eight sessions: their owners are spread over both shards.
    let sessions: Vec<String> = (0..8).map(|i| format!("aon-{i}")).collect();
    let mut sockets: Vec<Ws> = sessions.iter().map(|s| node.ws_welcomed(s)).collect();
    let mut events: Vec<String> = sessions.iter().map(|s| event(s, "e", "1")).collect();
    events.push(r#"{"session":"aon-0","event":"e"}"#.replace("}", r#","data":1,"id":7}"#));
    node.publish(&batch(&events))
        .assert_error(400, "bad_request");
    let markers: Vec<String> = sessions.iter().map(|s| event(s, "marker", "0")).collect();
    node.publish_ok(&batch(&markers), 8);
    for (s, ws) in sessions.iter().zip(sockets.iter_mut()) {
        let next = ws.next_event(PROMPT);
        assert_eq!(
            next["event"], "marker",
            "{s} got an event of a refused batch: {next}"
        );
    }
}

#[test]
fn batch_of_exactly_1000_events_is_accepted() {
    let node = Node::start();
    let events: Vec<String> = (0..1000)
        .map(|i| event("k1", "e", &i.to_string()))
        .collect();
    node.publish_ok(&batch(&events), 1000);
}

#[test]
fn event_for_a_session_without_sockets_is_accepted() {
    let node = Node::start();
    node.publish_ok(&event("nobody-here", "e", "1"), 1);
}

// --- 400 ------------------------------------------------------------------------------

#[test]
fn malformed_json_is_refused_with_400() {
    let node = Node::start();
    node.publish(r#"{"session":"s1","event":"e","data":"#)
        .assert_error(400, "bad_request");
    node.publish("not json at all")
        .assert_error(400, "bad_request");
}

#[test]
fn event_without_session_is_refused_with_400_naming_the_field() {
    let node = Node::start();
    let msg = node
        .publish(r#"{"event":"e","data":1}"#)
        .assert_error(400, "bad_request");
    assert!(
        msg.contains("session"),
        "message does not name the field: {msg}"
    );
}

#[test]
fn event_without_name_is_refused_with_400_naming_the_field() {
    let node = Node::start();
    let msg = node
        .publish(r#"{"session":"s1","data":1}"#)
        .assert_error(400, "bad_request");
    assert!(
        msg.contains("event"),
        "message does not name the field: {msg}"
    );
}

#[test]
fn event_with_invalid_session_name_is_refused_with_400_naming_the_field() {
    let node = Node::start();
    let msg = node
        .publish(&event("bad session!", "e", "1"))
        .assert_error(400, "bad_request");
    assert!(
        msg.contains("session"),
        "message does not name the field: {msg}"
    );
}

// --- 401 ------------------------------------------------------------------------------

#[test]
fn publish_without_key_is_refused_with_401() {
    let node = Node::start();
    let resp = http_request(
        node.addr,
        &post_events_request(&event("s1", "e", "1"), None),
    );
    resp.assert_error(401, "unauthorized");
}

#[test]
fn publish_with_wrong_key_is_refused_with_401() {
    let node = Node::start();
    let body = event("s1", "e", "1");
    http_request(node.addr, &post_events_request(&body, Some("wrong-key")))
        .assert_error(401, "unauthorized");
    post_with_headers(
        &node,
        "Content-Type: application/json\r\nX-API-Key: wrong-key\r\n",
        &body,
    )
    .assert_error(401, "unauthorized");
}

#[test]
fn api_key_in_x_api_key_header_is_accepted() {
    let node = Node::start();
    let mut ws = node.ws_welcomed("x1");
    let resp = post_with_headers(
        &node,
        &format!("Content-Type: application/json\r\nX-API-Key: {API_KEY}\r\n"),
        &event("x1", "e", "1"),
    );
    assert_eq!(resp.status, 202, "{}", resp.body_str());
    assert_eq!(resp.json()["accepted"], 1);
    assert_eq!(ws.next_event(PROMPT)["data"], 1);
}

#[test]
fn any_key_of_a_comma_separated_list_is_accepted() {
    let node = Node::builder()
        .env(
            "RELAY_API_KEY",
            &format!("old-key-0123456789abcdef,{API_KEY}"),
        )
        .start();
    for key in ["old-key-0123456789abcdef", API_KEY] {
        let resp = http_request(
            node.addr,
            &post_events_request(&event("s1", "e", "1"), Some(key)),
        );
        assert_eq!(resp.status, 202, "key {key}: {}", resp.body_str());
    }
}

// --- 404 / 405 / 413 / 415 ------------------------------------------------------------

#[test]
fn get_on_events_is_refused_with_405() {
    let node = Node::start();
    node.get("/events").assert_error(405, "method_not_allowed");
    http_request(
        node.addr,
        "DELETE /events HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    .assert_error(405, "method_not_allowed");
}

#[test]
fn unknown_path_answers_404() {
    let node = Node::start();
    node.get("/no/such/path").assert_error(404, "not_found");
}

#[test]
fn body_over_the_limit_is_refused_with_413() {
    let node = Node::builder().flag("--max-body-bytes", "1024").start();
    let mut ws = node.ws_welcomed("big");
    let data = format!("\"{}\"", "x".repeat(2000));
    node.publish(&event("big", "e", &data))
        .assert_error(413, "payload_too_large");
    node.publish_ok(&event("big", "marker", "0"), 1);
    assert_eq!(ws.next_event(PROMPT)["event"], "marker");
}

#[test]
fn body_over_the_default_1_mib_limit_is_refused_with_413() {
    let node = Node::start();
    let body = event("big", "e", &format!("\"{}\"", "x".repeat(1024 * 1024 + 10)));
    let mut conn = HttpConn::connect(node.addr);
    // The server may answer before reading the whole body; a failed write is fine.
    let _ = conn.send(post_events_request(&body, Some(API_KEY)).as_bytes());
    let resp = conn.read_response().expect("a 413 answer");
    resp.assert_error(413, "payload_too_large");
}

#[test]
fn batch_of_1001_events_is_refused_with_413_and_delivers_nothing() {
    let node = Node::start();
    let mut ws = node.ws_welcomed("k2");
    let events: Vec<String> = (0..1001)
        .map(|i| event("k2", "e", &i.to_string()))
        .collect();
    node.publish(&batch(&events))
        .assert_error(413, "payload_too_large");
    node.publish_ok(&event("k2", "marker", "0"), 1);
    assert_eq!(ws.next_event(PROMPT)["event"], "marker");
}

#[test]
fn non_json_content_type_is_refused_with_415() {
    let node = Node::start();
    post_with_headers(
        &node,
        &format!("Content-Type: text/plain\r\nAuthorization: Bearer {API_KEY}\r\n"),
        &event("s1", "e", "1"),
    )
    .assert_error(415, "unsupported_media_type");
}

#[test]
fn json_content_type_with_charset_is_accepted() {
    let node = Node::start();
    let resp = post_with_headers(
        &node,
        &format!(
            "Content-Type: application/json; charset=utf-8\r\nAuthorization: Bearer {API_KEY}\r\n"
        ),
        &event("cs", "e", "1"),
    );
    assert_eq!(resp.status, 202, "{}", resp.body_str());
}

// --- keep-alive and how requests arrive ------------------------------------------------

#[test]
fn several_requests_share_one_keep_alive_connection() {
    let node = Node::start();
    let mut ws = node.ws_welcomed("ka");
    let mut conn = HttpConn::connect(node.addr);
    for i in 0..3 {
        let resp = conn.request(
            post_events_request(&event("ka", "e", &i.to_string()), Some(API_KEY)).as_bytes(),
        );
        assert_eq!(resp.status, 202, "request {i}: {}", resp.body_str());
    }
    let health = conn.request(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n");
    assert_eq!(health.status, 200);
    let missing = conn.request(b"GET /nope HTTP/1.1\r\nHost: localhost\r\n\r\n");
    assert_eq!(missing.status, 404);
    let last = conn.request(post_events_request(&event("ka", "e", "3"), Some(API_KEY)).as_bytes());
    assert_eq!(last.status, 202);
    for i in 0..4 {
        assert_eq!(ws.next_event(PROMPT)["data"], i);
    }
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let node = Node::start();
    let mut conn = HttpConn::connect(node.addr);
    let mut raw = Vec::new();
    raw.extend_from_slice(post_events_request(&event("pl", "e", "1"), Some(API_KEY)).as_bytes());
    raw.extend_from_slice(b"GET /nope HTTP/1.1\r\nHost: localhost\r\n\r\n");
    raw.extend_from_slice(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n");
    conn.send(&raw).unwrap();
    let statuses: Vec<u16> = (0..3)
        .map(|_| conn.read_response().expect("response").status)
        .collect();
    assert_eq!(statuses, vec![202, 404, 200]);
}

#[test]
fn request_arriving_in_small_pieces_is_served() {
    let node = Node::start();
    let mut ws = node.ws_welcomed("pieces");
    let raw = post_events_request(&event("pieces", "e", r#"{"split": true}"#), Some(API_KEY));
    let mut conn = HttpConn::connect(node.addr);
    for chunk in raw.as_bytes().chunks(7) {
        conn.send(chunk).unwrap();
        std::thread::sleep(Duration::from_millis(3));
    }
    let resp = conn.read_response().expect("response");
    assert_eq!(resp.status, 202, "{}", resp.body_str());
    assert_eq!(ws.next_event(PROMPT)["data"]["split"], true);
}

#[test]
fn expect_100_continue_is_answered_before_the_body() {
    let node = Node::start();
    let body = event("cont", "e", "1");
    let mut conn = HttpConn::connect(node.addr);
    conn.send(
        format!(
            "POST /events HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nAuthorization: Bearer {API_KEY}\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    )
    .unwrap();
    conn.set_timeout(Duration::from_secs(3));
    let interim = conn.read_response().expect("a 100 Continue");
    assert_eq!(interim.status, 100);
    conn.send(body.as_bytes()).unwrap();
    let resp = conn.read_response().expect("final response");
    assert_eq!(resp.status, 202, "{}", resp.body_str());
}

// --- request limits -------------------------------------------------------------------

#[test]
fn request_head_over_the_limit_is_refused_with_431() {
    let node = Node::builder().flag("--max-head-bytes", "1024").start();
    let pad = format!("X-Pad: {}", "p".repeat(2000));
    let resp = raw_upgrade_response(
        node.addr,
        &upgrade_request(&format!("/ws?token={}", token("h")), &[&pad]),
    );
    resp.assert_error(431, "header_too_large");
    let resp = post_with_headers(
        &node,
        &format!("Content-Type: application/json\r\nAuthorization: Bearer {API_KEY}\r\n{pad}\r\n"),
        &event("h", "e", "1"),
    );
    resp.assert_error(431, "header_too_large");
}

#[test]
fn request_head_at_the_default_size_is_served() {
    let node = Node::start();
    // 12 KiB of headers is under the 16 KiB default.
    let pad = "p".repeat(12 * 1024);
    let (mut ws, _) = ws_connect(
        node.addr,
        &format!("/ws?token={}", token("h2")),
        &[("X-Pad", &pad)],
    )
    .unwrap_or_else(|r| panic!("refused: {} {}", r.status, r.body_str()));
    assert_eq!(ws.next_json(PROMPT)["type"], "welcome");
}

/// Writes `first`, then `drip` one piece every `every` from a thread until the peer stops
/// taking them; returns the response read meanwhile and when it arrived.
fn trickle(
    node: &Node,
    first: String,
    drip: &'static [u8],
    every: Duration,
) -> (HttpResponse, Duration, HttpConn) {
    let mut conn = HttpConn::connect(node.addr);
    let start = Instant::now();
    conn.send(first.as_bytes()).unwrap();
    let mut writer = conn.stream.try_clone().unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    let t = std::thread::spawn(move || {
        for _ in 0..100 {
            if stop2.load(std::sync::atomic::Ordering::Relaxed) {
                break;
            }
            std::thread::sleep(every);
            if writer.write_all(drip).is_err() {
                break;
            }
        }
    });
    conn.set_timeout(Duration::from_secs(8));
    let resp = conn.read_response();
    let took = start.elapsed();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = t.join();
    let resp = resp.unwrap_or_else(|e| panic!("no response to a trickled request: {e}"));
    (resp, took, conn)
}

#[test]
fn request_head_trickled_past_the_handshake_timeout_gets_408_then_close() {
    let node = Node::builder().flag("--handshake-timeout", "1s").start();
    let first = format!(
        "GET /ws?token={} HTTP/1.1\r\nHost: localhost\r\n",
        token("t")
    );
    // Each header line arrives well inside any per-read timeout; the limit is absolute.
    let (resp, took, mut conn) =
        trickle(&node, first, b"X-Slow: y\r\n", Duration::from_millis(150));
    resp.assert_error(408, "request_timeout");
    assert!(
        took >= Duration::from_millis(800) && took < Duration::from_secs(5),
        "408 after {took:?}, limit was 1s"
    );
    assert!(
        conn.closed_within(Duration::from_secs(3)),
        "TCP not closed after 408"
    );
}

#[test]
fn body_trickled_past_the_body_timeout_gets_408_then_close() {
    let node = Node::builder().flag("--body-timeout", "1s").start();
    let body = event("t", "e", &format!("\"{}\"", "x".repeat(400)));
    let first = format!(
        "POST /events HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nAuthorization: Bearer {API_KEY}\r\nContent-Length: {}\r\n\r\n{}",
        body.len(),
        &body[..10]
    );
    let (resp, took, mut conn) = trickle(&node, first, b"x", Duration::from_millis(100));
    resp.assert_error(408, "request_timeout");
    assert!(
        took >= Duration::from_millis(800) && took < Duration::from_secs(5),
        "408 after {took:?}, limit was 1s"
    );
    assert!(
        conn.closed_within(Duration::from_secs(3)),
        "TCP not closed after 408"
    );
}

#[test]
fn connection_that_sends_nothing_gets_408_then_close() {
    let node = Node::builder().flag("--handshake-timeout", "1s").start();
    let mut conn = HttpConn::connect(node.addr);
    conn.set_timeout(Duration::from_secs(5));
    let start = Instant::now();
    let resp = conn.read_response().expect("a 408 answer");
    resp.assert_error(408, "request_timeout");
    assert!(
        start.elapsed() < Duration::from_secs(4),
        "408 after {:?}",
        start.elapsed()
    );
    assert!(
        conn.closed_within(Duration::from_secs(3)),
        "TCP not closed after 408"
    );
}

#[test]
fn idle_keep_alive_connection_gets_408_then_close() {
    // The head limit counts from the end of the previous request too.
    let node = Node::builder().flag("--handshake-timeout", "1s").start();
    let mut conn = HttpConn::connect(node.addr);
    let r = conn.request(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n");
    assert_eq!(r.status, 200);
    conn.set_timeout(Duration::from_secs(5));
    let resp = conn
        .read_response()
        .expect("a 408 answer on the idle connection");
    resp.assert_error(408, "request_timeout");
    assert!(
        conn.closed_within(Duration::from_secs(3)),
        "TCP not closed after 408"
    );
}
