//! `GET /poll`: the session's stream one answer at a time, with the same
//! guarantees: every event once and in order across polls, replay from history,
//! resync when history cannot vouch, and the same request checks as an upgrade.

// A test drives the node from its own threads, which may sleep and block.
#![allow(clippy::disallowed_methods)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// One poll; its status and JSON body.
fn poll(node: &Node, session: &str, since: Option<&str>) -> (u16, Value) {
    let q = since.map(|s| format!("&since={s}")).unwrap_or_default();
    let resp = http_request(
        node.addr,
        &format!(
            "GET /poll?token={}{q} HTTP/1.1\r\nHost: x\r\n\r\n",
            token(session)
        ),
    );
    let body = if resp.status == 200 {
        resp.json()
    } else {
        Value::Null
    };
    (resp.status, body)
}

fn next(v: &Value) -> String {
    v["next"].as_str().expect("next").to_string()
}

#[test]
fn without_since_a_poll_answers_at_once_with_the_position() {
    let node = Node::start();
    node.publish_ok(&event("poll-pos", "e", "1"), 1);
    let started = Instant::now();
    let (status, v) = poll(&node, "poll-pos", None);
    assert_eq!(status, 200);
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(v["events"], serde_json::json!([]));
    assert!(next(&v).ends_with(":1"), "{v}");
}

#[test]
fn a_poll_waits_on_an_idle_session_and_answers_when_an_event_comes() {
    let node = Node::start();
    let (_, v) = poll(&node, "poll-wait", None);
    let since = next(&v);
    let addr = node.addr;
    let waiter = std::thread::spawn(move || {
        let started = Instant::now();
        let resp = http_request(
            addr,
            &format!(
                "GET /poll?since={since} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\r\n",
                token("poll-wait")
            ),
        );
        (resp.status, resp.json(), started.elapsed())
    });
    std::thread::sleep(Duration::from_millis(500));
    node.publish_ok(&event("poll-wait", "e", "\"late\""), 1);
    let (status, v, took) = waiter.join().unwrap();
    assert_eq!(status, 200);
    assert!(
        took >= Duration::from_millis(400),
        "answered before the event: {took:?}"
    );
    assert_eq!(v["events"][0]["data"], "late");
    assert_eq!(v["events"][0]["seq"], 1);
    assert!(next(&v).ends_with(":1"));
}

#[test]
fn an_idle_poll_answers_empty_at_its_timeout() {
    let node = Node::builder().flag("--poll-timeout", "1s").start();
    let (_, v) = poll(&node, "poll-idle", None);
    let since = next(&v);
    let started = Instant::now();
    let (status, v) = poll(&node, "poll-idle", Some(&since));
    assert_eq!(status, 200);
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "{took:?}"
    );
    assert_eq!(v["events"], serde_json::json!([]));
    assert_eq!(next(&v), since);
}

#[test]
fn a_poll_outlives_the_request_head_deadline_and_answers_at_its_own_timeout() {
    let node = Node::builder()
        .flag("--handshake-timeout", "1s")
        .flag("--poll-timeout", "3s")
        .start();
    let (_, v) = poll(&node, "poll-long", None);
    let since = next(&v);
    let started = Instant::now();
    let (status, v) = poll(&node, "poll-long", Some(&since));
    let took = started.elapsed();
    assert_eq!(status, 200, "the poll was dropped after {took:?}");
    assert!(
        took >= Duration::from_millis(2900),
        "answered after {took:?}"
    );
    assert_eq!(v["events"], serde_json::json!([]));
}

#[test]
fn a_loop_of_polls_sees_every_event_once_in_order_through_bursts() {
    let node = Node::start();
    let (_, v) = poll(&node, "poll-loop", None);
    let mut since = next(&v);
    let addr = node.addr;
    let publisher = std::thread::spawn(move || {
        let mut conn = HttpConn::connect(addr);
        for burst in 0..100 {
            let events: Vec<String> = (0..100)
                .map(|i| event("poll-loop", "e", &(burst * 100 + i).to_string()))
                .collect();
            let resp = conn.request(post_events_request(&batch(&events), Some(API_KEY)).as_bytes());
            assert_eq!(resp.status, 202);
            if burst % 10 == 9 {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    });
    let mut seen = 0u64;
    let mut polls = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while seen < 10_000 {
        assert!(
            Instant::now() < deadline,
            "only {seen} events after {polls} polls"
        );
        let (status, v) = poll(&node, "poll-loop", Some(&since));
        assert_eq!(status, 200);
        assert!(v.get("resync").is_none(), "resync after {seen}: {v}");
        for ev in v["events"].as_array().unwrap() {
            assert_eq!(ev["data"], seen, "an event lost, repeated or out of order");
            assert_eq!(ev["seq"], seen + 1);
            seen += 1;
        }
        since = next(&v);
        polls += 1;
    }
    publisher.join().unwrap();
    assert!(polls < 10_000, "{polls} polls: answers do not batch");
}

#[test]
fn a_poll_from_another_epoch_is_told_to_resync() {
    let node = Node::start();
    node.publish_ok(&event("poll-resync", "e", "1"), 1);
    let (status, v) = poll(&node, "poll-resync", Some("00000000000000ab:5"));
    assert_eq!(status, 200);
    assert_eq!(v["resync"]["type"], "resync");
    assert_eq!(
        next(&v),
        format!(
            "{}:{}",
            v["resync"]["epoch"].as_str().unwrap(),
            v["resync"]["seq"]
        )
    );
}

#[test]
fn bad_polls_are_refused_like_bad_upgrades() {
    let node = Node::builder()
        .env("ALLOWED_ORIGINS", "https://*.atlassian.net")
        .flag("--jwt-leeway", "0s")
        .start();
    let get = |extra: &str, q: &str| {
        http_request(
            node.addr,
            &format!("GET /poll?{q} HTTP/1.1\r\nHost: x\r\n{extra}\r\n"),
        )
    };
    let t = format!("token={}", token("poll-bad"));
    get("", &format!("{t}&since=nope")).assert_error(400, "bad_request");
    get("", "token=nope").assert_error(401, "unauthorized");
    let expired = token_expiring("poll-bad", now() - 10);
    get("", &format!("token={expired}")).assert_error(401, "unauthorized");
    let r = get("Origin: https://evil.example\r\n", &t);
    assert_eq!(r.status, 403);
    assert!(r.header("access-control-allow-origin").is_none());
    let r = get("Origin: https://acme.atlassian.net\r\n", &t);
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://acme.atlassian.net")
    );
}
