//! No silent loss on one node: sequence numbers, resume after a reconnect, resync
//! when history cannot bridge the gap, idempotent publishing and receipts. Real
//! nodes, real sockets; the multi-node cases are in `tests/redis.rs`.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

/// `EPOCH:SEQ` of a frame that carries a position (welcome, event, resync).
fn since_of(v: &Value) -> String {
    format!(
        "{}:{}",
        v["epoch"].as_str().expect("epoch"),
        v["seq"].as_u64().expect("seq")
    )
}

fn seq(v: &Value) -> u64 {
    v["seq"].as_u64().unwrap_or_else(|| panic!("no seq in {v}"))
}

fn events(session: &str, prefix: &str, n: usize) -> String {
    let evs: Vec<String> = (0..n)
        .map(|i| format!(r#"{{"session":"{session}","event":"e","id":"{prefix}-{i}","data":{i}}}"#))
        .collect();
    batch(&evs)
}

#[test]
fn events_carry_consecutive_seqs_and_the_welcome_carries_the_position() {
    let node = Node::start();
    let mut ws = node.ws_welcomed("seq1");
    assert_eq!(
        ws.welcome["seq"], 0,
        "a new session starts at 0: {}",
        ws.welcome
    );
    let epoch = ws.welcome["epoch"].as_str().expect("epoch").to_string();
    assert_eq!(epoch.len(), 16);
    node.publish_ok(&events("seq1", "a", 3), 3);
    for expect in 1..=3 {
        let v = ws.next_event(PROMPT);
        assert_eq!(
            (seq(&v), v["epoch"].as_str()),
            (expect, Some(epoch.as_str()))
        );
    }
    let second = node.ws_welcomed("seq1");
    assert_eq!(since_of(&second.welcome), format!("{epoch}:3"));
}

#[test]
fn a_client_that_drops_mid_stream_resumes_with_exactly_what_it_missed() {
    let node = Node::start();
    let mut ws = node.ws_welcomed("drop1");
    node.publish_ok(&events("drop1", "before", 5), 5);
    let mut last = Value::Null;
    for _ in 0..5 {
        last = ws.next_event(PROMPT);
    }
    drop(ws);

    // 100 events while the client is away, published one request each.
    for i in 0..100 {
        node.publish_ok(
            &format!(r#"{{"session":"drop1","event":"e","id":"away-{i}","data":{i}}}"#),
            1,
        );
    }
    let mut back = node.ws_resuming("drop1", &since_of(&last));
    assert_eq!(seq(&back.welcome), 105, "{}", back.welcome);
    for i in 0..100u64 {
        let v = back.next_json(PROMPT);
        assert_eq!(v["type"], "event", "expected a replayed event, got {v}");
        assert_eq!(seq(&v), 6 + i);
        assert_eq!(v["id"], format!("away-{i}"));
        assert_eq!(v["data"], json!(i));
    }
    node.publish_ok(&event("drop1", "live", "1"), 1);
    let v = back.next_json(PROMPT);
    assert_eq!((v["event"].as_str(), seq(&v)), (Some("live"), 106), "{v}");
    back.assert_no_text(Duration::from_millis(200));
    assert_eq!(node.metric("relay_replays_total", &[]), 1.0);
    assert_eq!(node.metric("relay_replayed_events_total", &[]), 100.0);
}

#[test]
fn a_resume_at_the_current_position_gets_nothing_but_live_events() {
    let node = Node::start();
    let mut ws = node.ws_welcomed("same1");
    node.publish_ok(&events("same1", "a", 2), 2);
    ws.next_event(PROMPT);
    let last = ws.next_event(PROMPT);
    let mut again = node.ws_resuming("same1", &since_of(&last));
    node.publish_ok(&event("same1", "live", "1"), 1);
    let v = again.next_json(PROMPT);
    assert_eq!((v["event"].as_str(), seq(&v)), (Some("live"), 3), "{v}");
}

#[test]
fn a_resume_from_before_the_rings_reach_gets_a_resync_first() {
    let node = Node::builder().flag("--history-events", "10").start();
    let ws = node.ws_welcomed("ring1");
    let start = since_of(&ws.welcome);
    drop(ws);
    node.publish_ok(&events("ring1", "x", 30), 30);
    let mut back = node.ws_resuming("ring1", &start);
    let v = back.next_json(PROMPT);
    assert_eq!(v["type"], "resync", "{v}");
    assert_eq!(v["session"], "ring1");
    assert_eq!(
        since_of(&v),
        since_of(&back.welcome),
        "resync names the position"
    );
    assert_eq!(seq(&v), 30);
    node.publish_ok(&event("ring1", "live", "1"), 1);
    assert_eq!(seq(&back.next_event(PROMPT)), 31);
    assert_eq!(
        node.metric("relay_resync_total", &[("reason", "history")]),
        1.0
    );

    // From within the ring's reach, a replay.
    let mut near = node.ws_resuming("ring1", &format!("{}:25", v["epoch"].as_str().unwrap()));
    let replayed: Vec<u64> = (0..6).map(|_| seq(&near.next_event(PROMPT))).collect();
    assert_eq!(replayed, vec![26, 27, 28, 29, 30, 31]);
}

#[test]
fn a_stale_epoch_after_a_node_restart_gets_a_resync_with_the_new_epoch() {
    let node = Node::start();
    let mut ws = node.ws_welcomed("restart1");
    node.publish_ok(&events("restart1", "a", 3), 3);
    let mut last = Value::Null;
    for _ in 0..3 {
        last = ws.next_event(PROMPT);
    }
    drop(ws);
    drop(node);

    let node = Node::start();
    let mut back = node.ws_resuming("restart1", &since_of(&last));
    let v = back.next_json(PROMPT);
    assert_eq!(v["type"], "resync", "{v}");
    assert_ne!(v["epoch"], last["epoch"], "a restart starts a new epoch");
    assert_eq!(since_of(&v), since_of(&back.welcome));
    assert_eq!(
        node.metric("relay_resync_total", &[("reason", "epoch")]),
        1.0
    );
}

#[test]
fn a_resume_point_in_the_future_of_the_stream_is_a_resync() {
    let node = Node::start();
    let ws = node.ws_welcomed("future1");
    let epoch = ws.welcome["epoch"].as_str().unwrap().to_string();
    let mut back = node.ws_resuming("future1", &format!("{epoch}:99"));
    assert_eq!(back.next_json(PROMPT)["type"], "resync");
}

#[test]
fn since_may_come_as_a_subprotocol_entry() {
    let node = Node::start();
    let mut ws = node.ws_welcomed("proto1");
    node.publish_ok(&events("proto1", "a", 4), 4);
    let first = ws.next_event(PROMPT);
    let epoch = first["epoch"].as_str().unwrap();
    let token = token("proto1");
    let (mut back, resp) = ws_connect(
        node.addr,
        &format!("/ws?token={token}"),
        &[(
            "Sec-WebSocket-Protocol",
            &format!("relay.v1, since.{epoch}.1"),
        )],
    )
    .expect("upgrade");
    assert_eq!(resp.header("sec-websocket-protocol"), Some("relay.v1"));
    assert_eq!(back.next_json(PROMPT)["type"], "welcome");
    let replayed: Vec<u64> = (0..3).map(|_| seq(&back.next_event(PROMPT))).collect();
    assert_eq!(replayed, vec![2, 3, 4]);

    // URLSearchParams spells the colon %3A.
    let mut encoded = node.ws_resuming("proto1", &format!("{epoch}%3A3"));
    assert_eq!(seq(&encoded.next_event(PROMPT)), 4);
}

#[test]
fn a_malformed_since_is_refused_with_400_naming_it() {
    let node = Node::start();
    let token = token("bad1");
    for since in ["nope", "zz:1", "ab:", ":3", "ab:-1", "0123456789abcdef0:1"] {
        let refused = ws_connect(node.addr, &format!("/ws?token={token}&since={since}"), &[])
            .err()
            .unwrap_or_else(|| panic!("since={since} was accepted"));
        assert_eq!(refused.status, 400, "since={since}");
        assert!(
            refused.body_str().contains("since"),
            "{}",
            refused.body_str()
        );
    }
}

#[test]
fn a_publisher_retrying_one_id_five_times_delivers_it_once() {
    let node = Node::start();
    let mut ws = node.ws_welcomed("dup1");
    let body = r#"{"session":"dup1","event":"e","id":"order-7","data":7}"#;
    let mut seqs = Vec::new();
    for attempt in 0..5 {
        let resp = node.publish(body);
        assert_eq!(resp.status, 202, "{}", resp.body_str());
        let receipt = &resp.json()["events"][0];
        assert_eq!(receipt["id"], "order-7");
        assert_eq!(
            receipt["duplicate"].as_bool().unwrap_or(false),
            attempt > 0,
            "{receipt}"
        );
        seqs.push(seq(receipt));
    }
    assert!(seqs.iter().all(|&s| s == seqs[0]), "{seqs:?}");
    let v = ws.next_event(PROMPT);
    assert_eq!(v["id"], "order-7");
    ws.assert_no_text(Duration::from_millis(300));
    assert_eq!(node.metric("relay_dedupe_hits_total", &[]), 4.0);

    // A retried batch: only its new event goes out.
    let retry = batch(&[
        body.to_string(),
        r#"{"session":"dup1","event":"e","id":"order-8","data":8}"#.to_string(),
    ]);
    node.publish_ok(&retry, 2);
    assert_eq!(ws.next_event(PROMPT)["id"], "order-8");
    ws.assert_no_text(Duration::from_millis(300));
}

#[test]
fn receipts_list_session_seq_and_id_in_request_order() {
    let node = Node::start();
    // Frames are kept for resume once a socket has joined the session.
    drop(node.ws_welcomed("ra"));
    let body = batch(&[
        r#"{"session":"ra","event":"e","id":"x1","data":1}"#.into(),
        r#"{"session":"rb","event":"e","data":2}"#.into(),
        r#"{"session":"ra","event":"e","data":3}"#.into(),
    ]);
    let resp = node.publish(&body);
    assert_eq!(resp.status, 202);
    let v = resp.json();
    assert_eq!(v["accepted"], 3);
    let evs = v["events"].as_array().expect("events");
    assert_eq!(evs.len(), 3);
    assert_eq!((evs[0]["session"].as_str(), seq(&evs[0])), (Some("ra"), 1));
    assert_eq!(evs[0]["id"], "x1");
    assert_eq!((evs[1]["session"].as_str(), seq(&evs[1])), (Some("rb"), 1));
    assert_eq!((evs[2]["session"].as_str(), seq(&evs[2])), (Some("ra"), 2));
    // A relay-made id is the one the sockets get.
    let generated = evs[2]["id"].as_str().expect("generated id").to_string();
    let mut ws = node.ws_resuming("ra", &format!("{}:1", evs[2]["epoch"].as_str().unwrap()));
    assert_eq!(ws.next_event(PROMPT)["id"], generated.as_str());
}

#[test]
fn wait_delivered_answers_after_the_fan_out_with_its_counts() {
    let node = Node::start();
    let mut sockets: Vec<Ws> = (0..3).map(|_| node.ws_welcomed("wd1")).collect();
    let resp = node.publish_waiting(&event("wd1", "e", "1"));
    assert_eq!(resp.status, 202, "{}", resp.body_str());
    let v = resp.json();
    let r = &v["events"][0];
    assert_eq!(
        r["written"].as_u64().unwrap() + r["queued"].as_u64().unwrap(),
        3,
        "{v}"
    );
    assert_eq!(r["dropped"], 0);
    assert!(v["took_us"].as_u64().is_some(), "{v}");
    for ws in &mut sockets {
        assert_eq!(ws.next_event(PROMPT)["data"], 1);
    }
    let bad = http_request(
        node.addr,
        &post_events_request(&event("wd1", "e", "1"), Some(API_KEY)).replacen(
            "POST /events ",
            "POST /events?wait=soon ",
            1,
        ),
    );
    bad.assert_error(400, "bad_request");
}

#[test]
fn history_memory_stays_under_its_cap_with_ten_thousand_busy_sessions() {
    // 10,000 streams cost about 4.6 MB of it (448 bytes and the name each): the
    // rest is for frames.
    let cap: u64 = 8 * 1024 * 1024;
    let node = Node::builder()
        .flag("--history-memory", &cap.to_string())
        .flag("--publish-rate", "0")
        .flag("--connect-rate", "0")
        .start();
    // Every session had a socket (so its frames are kept for resume); 20 still do,
    // so fan-out and history run together.
    for i in 20..10_000 {
        drop(node.ws_welcomed(&format!("busy-{i}")));
    }
    let mut watchers: Vec<Ws> = (0..20)
        .map(|i| node.ws_welcomed(&format!("busy-{i}")))
        .collect();
    let pad = "x".repeat(300);
    // 10,000 sessions × 10 events × ~420 bytes ≈ 42 MB published, five times the cap.
    for round in 0..10 {
        for chunk in 0..10 {
            let evs: Vec<String> = (0..1000)
                .map(|i| {
                    let s = chunk * 1000 + i;
                    format!(
                        r#"{{"session":"busy-{s}","event":"e","data":{{"r":{round},"p":"{pad}"}}}}"#
                    )
                })
                .collect();
            node.publish_ok(&batch(&evs), 1000);
        }
        let bytes = node.metric("relay_history_bytes", &[]);
        assert!(
            bytes <= cap as f64,
            "history at {bytes} bytes, over the {cap} cap"
        );
    }
    assert_eq!(node.metric("relay_history_sessions", &[]), 10_000.0);
    for ws in &mut watchers {
        for _ in 0..10 {
            ws.next_event(PROMPT);
        }
    }
    // The newest events are still resumable; the oldest were dropped for the cap.
    let last = {
        let mut ws = node.ws_welcomed("busy-9999");
        let epoch = ws.welcome["epoch"].as_str().unwrap().to_string();
        ws.assert_no_text(Duration::from_millis(50));
        epoch
    };
    let mut near = node.ws_resuming("busy-9999", &format!("{last}:9"));
    assert_eq!(seq(&near.next_event(PROMPT)), 10);
    let mut far = node.ws_resuming(
        "busy-0",
        &format!("{}:0", watchers[0].welcome["epoch"].as_str().unwrap()),
    );
    assert_eq!(far.next_json(PROMPT)["type"], "resync");
}
