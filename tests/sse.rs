//! `GET /sse`: the session's stream as `text/event-stream`, with the WebSocket's
//! guarantees: the welcome first, events in `seq` order with `id: EPOCH:SEQ`,
//! resume with `Last-Event-ID` or `since`, resync, and endings that name their
//! code (4001, 1012, 4008). Checked like an upgrade: token, origin, caps.

// A test drives the node from its own threads, which may sleep and block.
#![allow(clippy::disallowed_methods)]

mod common;

use std::time::Duration;

use common::*;

fn tok(session: &str) -> String {
    format!("token={}", token(session))
}

/// An open stream past its welcome.
fn welcomed(node: &Node, session: &str) -> SseStream {
    let mut s = sse_open(node.addr, &tok(session), &[]);
    assert_eq!(s.status, 200, "{}", s.head);
    let w = s.next(PROMPT).expect("welcome");
    assert_eq!(w.event, "welcome");
    assert_eq!(w.json()["type"], "welcome");
    s
}

#[test]
fn a_stream_starts_with_the_welcome_then_carries_every_event_in_order() {
    let node = Node::start();
    let mut s = sse_open(node.addr, &tok("sse-order"), &[]);
    assert_eq!(s.status, 200);
    assert_eq!(s.header("content-type"), Some("text/event-stream"));
    assert_eq!(s.header("cache-control"), Some("no-store"));
    let w = s.next(PROMPT).unwrap();
    assert_eq!(s.retry, Some(1000), "the retry field comes first");
    assert_eq!(w.event, "welcome");
    let wj = w.json();
    assert_eq!(wj["session"], "sse-order");
    assert_eq!(
        w.id.as_deref(),
        Some(format!("{}:{}", wj["epoch"].as_str().unwrap(), wj["seq"]).as_str()),
        "the welcome's id is the stream's position"
    );
    let mut ws = node.ws_welcomed("sse-order");
    let events: Vec<String> = (0..200)
        .map(|i| event("sse-order", "e", &format!(r#"{{"n":{i},"s":"a\nb"}}"#)))
        .collect();
    node.publish_ok(&batch(&events[..100]), 100);
    for e in &events[100..] {
        node.publish_ok(e, 1);
    }
    for i in 0..200u64 {
        let b = s.next(PROMPT).unwrap();
        assert_eq!(b.event, "event");
        let ev = b.json();
        assert_eq!(ev["data"]["n"], i);
        assert_eq!(ev["seq"], i + 1);
        assert_eq!(
            b.id,
            Some(format!("{}:{}", ev["epoch"].as_str().unwrap(), i + 1))
        );
        // The same JSON a WebSocket gets, byte for byte.
        assert_eq!(ws.next_text(PROMPT), b.data);
    }
}

#[test]
fn pretty_printed_data_arrives_as_the_same_json_value() {
    let node = Node::start();
    let mut s = welcomed(&node, "sse-pretty");
    node.publish_ok(
        "{\"session\":\"sse-pretty\",\"event\":\"e\",\"data\":{\r\n  \"a\": [1,\n 2]\r}}",
        1,
    );
    let ev = s.next_event(PROMPT);
    assert_eq!(ev["data"], serde_json::json!({"a": [1, 2]}));
}

#[test]
fn last_event_id_resumes_with_exactly_the_missed_events() {
    let node = Node::start();
    let mut s = welcomed(&node, "sse-resume");
    for i in 0..10 {
        node.publish_ok(&event("sse-resume", "e", &i.to_string()), 1);
    }
    let mut last = None;
    for _ in 0..10 {
        last = s.next(PROMPT).unwrap().id;
    }
    drop(s);
    let away: Vec<String> = (10..510)
        .map(|i| event("sse-resume", "e", &i.to_string()))
        .collect();
    for chunk in away.chunks(100) {
        node.publish_ok(&batch(chunk), 100);
    }
    let last = last.unwrap();
    // As a browser reconnects: same URL, and the last id it saw.
    let mut s = sse_open(
        node.addr,
        &tok("sse-resume"),
        &[&format!("Last-Event-ID: {last}")],
    );
    assert_eq!(s.next(PROMPT).unwrap().event, "welcome");
    for i in 10..510 {
        let b = s.next(PROMPT).unwrap();
        assert_eq!(b.event, "event", "{b:?}");
        assert_eq!(b.json()["data"], i);
    }
    node.publish_ok(&event("sse-resume", "e", "510"), 1);
    assert_eq!(s.next_event(PROMPT)["data"], 510);
    // `since` in the query resumes the same way.
    let mut q = sse_open(
        node.addr,
        &format!("{}&since={last}", tok("sse-resume")),
        &[],
    );
    assert_eq!(q.next(PROMPT).unwrap().event, "welcome");
    assert_eq!(q.next_event(PROMPT)["data"], 10);
}

#[test]
fn a_resume_from_another_epoch_gets_a_resync_event() {
    let node = Node::start();
    let mut s = sse_open(
        node.addr,
        &tok("sse-resync"),
        &["Last-Event-ID: 00000000000000ab:5"],
    );
    assert_eq!(s.next(PROMPT).unwrap().event, "welcome");
    let r = s.next(PROMPT).unwrap();
    assert_eq!(r.event, "resync");
    let rj = r.json();
    assert_eq!(rj["type"], "resync");
    assert_eq!(
        r.id,
        Some(format!("{}:{}", rj["epoch"].as_str().unwrap(), rj["seq"]))
    );
}

#[test]
fn malformed_resume_points_are_400() {
    let node = Node::start();
    for (query, header) in [
        (format!("{}&since=nope", tok("s")), None),
        (tok("s"), Some("Last-Event-ID: 12")),
        (tok("s"), Some("Last-Event-ID: zz:1")),
    ] {
        let headers: Vec<&str> = header.into_iter().collect();
        let mut s = sse_open(node.addr, &query, &headers);
        assert_eq!(s.status, 400, "{query} {headers:?}: {}", s.head);
        let body = s.rest(PROMPT);
        assert!(
            body.contains("EPOCH:SEQ"),
            "the message names the form: {body}"
        );
    }
}

#[test]
fn tokens_are_checked_like_an_upgrade() {
    let node = Node::builder().flag("--jwt-leeway", "0s").start();
    let s = sse_open(node.addr, "", &[]);
    assert_eq!(s.status, 401);
    let s = sse_open(node.addr, "token=not.a.jwt", &[]);
    assert_eq!(s.status, 401);
    let expired = token_expiring("sse-tok", now() - 10);
    let s = sse_open(node.addr, &format!("token={expired}"), &[]);
    assert_eq!(s.status, 401);
    // The header form, as a fetch-based reader sends it.
    let mut s = sse_open(
        node.addr,
        "",
        &[&format!("Authorization: Bearer {}", token("sse-tok"))],
    );
    assert_eq!(s.status, 200);
    assert_eq!(s.next(PROMPT).unwrap().event, "welcome");
}

#[test]
fn an_expiring_token_ends_the_stream_with_4001() {
    let node = Node::builder().flag("--jwt-leeway", "0s").start();
    let exp = now() + 2;
    let mut s = sse_open(
        node.addr,
        &format!("token={}", token_expiring("sse-exp", exp)),
        &[],
    );
    assert_eq!(s.next(PROMPT).unwrap().event, "welcome");
    assert_eq!(s.expect_close(Duration::from_secs(8)), Some(4001));
    assert!(now() >= exp, "closed before the token's exp");
    // And the response ends there.
    assert!(matches!(
        s.next(PROMPT).map_err(|e| e.kind()),
        Err(std::io::ErrorKind::UnexpectedEof)
    ));
}

#[test]
fn drain_ends_streams_with_1012() {
    let mut node = Node::builder()
        .flag("--drain-timeout", "3s")
        .flag("--drain-ready-delay", "0s")
        .start();
    let mut s = welcomed(&node, "sse-drain");
    node.sigterm();
    assert_eq!(s.expect_close(Duration::from_secs(5)), Some(1012));
    assert!(node.wait_exit(Duration::from_secs(6)).is_some());
}

#[test]
fn origins_are_checked_and_an_allowed_one_gets_cors() {
    let node = Node::builder()
        .env("ALLOWED_ORIGINS", "https://*.atlassian.net")
        .start();
    let mut s = sse_open(
        node.addr,
        &tok("sse-cors"),
        &["Origin: https://acme.atlassian.net"],
    );
    assert_eq!(s.status, 200);
    assert_eq!(
        s.header("access-control-allow-origin"),
        Some("https://acme.atlassian.net")
    );
    assert_eq!(s.header("vary"), Some("Origin"));
    assert_eq!(s.next(PROMPT).unwrap().event, "welcome");
    let s = sse_open(
        node.addr,
        &tok("sse-cors"),
        &["Origin: https://evil.example"],
    );
    assert_eq!(s.status, 403);
    assert!(s.header("access-control-allow-origin").is_none());

    // The preflight of a fetch-based reader that sends Authorization.
    let ok = http_request(
        node.addr,
        "OPTIONS /sse HTTP/1.1\r\nHost: x\r\nOrigin: https://acme.atlassian.net\r\nAccess-Control-Request-Method: GET\r\nAccess-Control-Request-Headers: authorization, last-event-id\r\n\r\n",
    );
    assert_eq!(ok.status, 204);
    assert_eq!(
        ok.header("access-control-allow-origin"),
        Some("https://acme.atlassian.net")
    );
    let allowed = ok
        .header("access-control-allow-headers")
        .unwrap()
        .to_ascii_lowercase();
    assert!(allowed.contains("authorization") && allowed.contains("last-event-id"));
    let bad = http_request(
        node.addr,
        "OPTIONS /sse HTTP/1.1\r\nHost: x\r\nOrigin: https://evil.example\r\n\r\n",
    );
    assert_eq!(bad.status, 403);
    assert!(bad.header("access-control-allow-origin").is_none());
}

#[test]
fn streams_count_against_the_connection_cap() {
    let node = Node::builder().flag("--max-connections", "2").start();
    let _ws = node.ws_welcomed("cap");
    let _s = welcomed(&node, "cap");
    let s = sse_open(node.addr, &tok("cap"), &[]);
    assert_eq!(s.status, 503, "{}", s.head);
}

#[test]
fn keep_alive_comments_come_every_ping_interval_and_idle_streams_stay_open() {
    let node = Node::builder()
        .flag("--ping-interval", "1s")
        .flag("--ping-timeout", "2s")
        .start();
    let mut s = welcomed(&node, "sse-idle");
    // Past the ping timeout: a reader says nothing, and that is not silence.
    std::thread::sleep(Duration::from_millis(3500));
    node.publish_ok(&event("sse-idle", "e", "1"), 1);
    assert_eq!(s.next_event(PROMPT)["data"], 1);
    assert!(s.comments >= 2, "{} keep-alive comments", s.comments);
}

#[test]
fn a_reader_that_never_reads_is_closed_at_the_cap_while_others_keep_receiving() {
    let node = Node::builder()
        .flag("--max-outbound-bytes", "65536")
        .start();
    let healthy = welcomed(&node, "sse-slow");
    let ws = node.ws_welcomed("sse-slow");
    let mut stuck = sse_open_on(connect_small_rcvbuf(node.addr, 4096), &tok("sse-slow"), &[]);
    assert_eq!(stuck.status, 200);
    let rss_before = node.rss_kib();
    let sse_reader = std::thread::spawn(move || {
        let mut healthy = healthy;
        let mut n = 0u64;
        loop {
            let ev = healthy.next_event(Duration::from_secs(20));
            if ev["event"] == "end" {
                return n;
            }
            n += 1;
            assert_eq!(
                ev["seq"], n,
                "the healthy stream lost or reordered an event"
            );
        }
    });
    let ws_reader = std::thread::spawn(move || {
        let mut ws = ws;
        let mut n = 0u64;
        loop {
            let ev = ws.next_event(Duration::from_secs(20));
            if ev["event"] == "end" {
                return n;
            }
            n += 1;
            assert_eq!(ev["seq"], n);
        }
    });
    // ~4 KiB events, 4 to a request, until the stuck stream is dropped.
    let pad = format!("\"{}\"", "x".repeat(4000));
    let mut conn = HttpConn::connect(node.addr);
    let mut sent = 0u64;
    let mut tripped = false;
    for b in 0..2000 {
        let events: Vec<String> = (0..4).map(|_| event("sse-slow", "e", &pad)).collect();
        let resp = conn.request(post_events_request(&batch(&events), Some(API_KEY)).as_bytes());
        assert_eq!(resp.status, 202, "batch {b}: {}", resp.body_str());
        sent += 4;
        if b % 8 == 7
            && node.metric(
                "relay_socket_disconnects_total",
                &[("reason", "slow_consumer")],
            ) >= 1.0
        {
            tripped = true;
            break;
        }
    }
    assert!(tripped, "the stuck reader was never closed as slow");
    node.publish_ok(&event("sse-slow", "end", "0"), 1);
    assert_eq!(sse_reader.join().expect("sse reader"), sent);
    assert_eq!(ws_reader.join().expect("ws reader"), sent);
    let grown = node.rss_kib().saturating_sub(rss_before);
    assert!(
        grown < 16 * 1024,
        "RSS grew {grown} KiB for one stuck reader"
    );
    // What the stuck reader finds, once it reads: events, then the close block
    // (or a reset), never the whole stream.
    let mut events = 0;
    let mut code = None;
    loop {
        match stuck.next(Duration::from_secs(2)) {
            Ok(b) if b.event == "event" => events += 1,
            Ok(b) if b.event == "close" => code = b.json()["code"].as_u64(),
            Ok(_) => {}
            Err(_) => break,
        }
    }
    assert!(events < sent, "the stuck reader got all {events} events");
    assert!(matches!(code, None | Some(4008)), "closed with {code:?}");
}

#[test]
fn a_session_spread_over_both_shards_reaches_every_stream() {
    let node = Node::start();
    // SO_REUSEPORT spreads connections by address hash; with 12 streams some are
    // accepted by the shard that does not own the session and are handed over.
    let mut streams: Vec<SseStream> = (0..12).map(|_| welcomed(&node, "sse-spread")).collect();
    node.publish_ok(
        &batch(
            &(0..5)
                .map(|i| event("sse-spread", "e", &i.to_string()))
                .collect::<Vec<_>>(),
        ),
        5,
    );
    for s in &mut streams {
        for i in 0..5 {
            assert_eq!(s.next_event(PROMPT)["data"], i);
        }
    }
    assert!(node.metric("relay_socket_handoffs_total", &[]) > 0.0);
}

#[test]
fn metrics_say_which_transport_a_subscriber_uses() {
    let node = Node::start();
    let mut s = welcomed(&node, "sse-metrics");
    let mut ws = node.ws_welcomed("sse-metrics");
    node.publish_ok(&event("sse-metrics", "e", "1"), 1);
    assert_eq!(s.next_event(PROMPT)["data"], 1);
    assert_eq!(ws.next_event(PROMPT)["data"], 1);
    let m = |name: &str, t: &str| node.metric(name, &[("transport", t)]);
    assert_eq!(m("relay_connected_clients", "sse"), 1.0);
    assert_eq!(m("relay_connected_clients", "ws"), 1.0);
    assert!(
        node.wait_metric(
            "relay_deliveries_total",
            &[("transport", "sse")],
            PROMPT,
            |v| v >= 1.0
        ) >= 1.0
    );
    assert_eq!(m("relay_latency_seconds_count", "sse"), 1.0);
    // The series the contract names still answer without the label.
    assert_eq!(node.metric("relay_connected_clients", &[]), 2.0);
    drop(s);
    assert!(
        node.wait_metric(
            "relay_socket_disconnects_total",
            &[("reason", "client_close"), ("transport", "sse")],
            PROMPT,
            |v| v >= 1.0
        ) >= 1.0
    );
}
