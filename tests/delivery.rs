//! From `POST /events` to the socket: isolation between sessions, order within a session,
//! byte-exact data, sessions spread over both shards, and slow readers.

// A test drives the node from its own threads, which may sleep and block.
#![allow(clippy::disallowed_methods)]

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

#[test]
fn socket_of_another_session_never_sees_its_events() {
    let node = Node::start();
    let mut s1 = node.ws_welcomed("iso-1");
    let mut s2 = node.ws_welcomed("iso-2");
    // A session whose name extends the other's is a different session too.
    let mut s1x = node.ws_welcomed("iso-10");
    let events: Vec<String> = (0..20)
        .map(|i| event("iso-1", "e", &i.to_string()))
        .collect();
    node.publish_ok(&batch(&events), 20);
    node.publish_ok(&event("iso-1", "e", "20"), 1);
    node.publish_ok(&event("iso-2", "marker", r#""two""#), 1);
    node.publish_ok(&event("iso-10", "marker", r#""ten""#), 1);
    for i in 0..21 {
        let ev = s1.next_event(PROMPT);
        assert_eq!(ev["session"], "iso-1");
        assert_eq!(ev["data"], i);
    }
    let ev = s2.next_event(PROMPT);
    assert_eq!(
        (ev["session"].clone(), ev["event"].clone()),
        (json!("iso-2"), json!("marker"))
    );
    let ev = s1x.next_event(PROMPT);
    assert_eq!(
        (ev["session"].clone(), ev["event"].clone()),
        (json!("iso-10"), json!("marker"))
    );
    s1.assert_no_text(Duration::from_millis(300));
    s2.assert_no_text(Duration::from_millis(100));
}

#[test]
fn events_of_a_session_arrive_in_publish_order_over_1000_events() {
    let node = Node::start();
    let mut sockets: Vec<Ws> = (0..3).map(|_| node.ws_welcomed("order")).collect();
    let with_id = |i: usize| {
        format!(r#"{{"session":"order","event":"seq","data":{{"i":{i}}},"id":"e-{i}"}}"#)
    };
    let mut conn = HttpConn::connect(node.addr);
    // 300 one by one on a keep-alive connection, then 700 in batches of 100.
    for i in 0..300 {
        let resp = conn.request(post_events_request(&with_id(i), Some(API_KEY)).as_bytes());
        assert_eq!(resp.status, 202, "event {i}: {}", resp.body_str());
    }
    for b in 0..7 {
        let events: Vec<String> = (300 + b * 100..400 + b * 100).map(with_id).collect();
        let resp = conn.request(post_events_request(&batch(&events), Some(API_KEY)).as_bytes());
        assert_eq!(resp.status, 202, "batch {b}: {}", resp.body_str());
        assert_eq!(resp.json()["accepted"], 100);
    }
    for (n, ws) in sockets.iter_mut().enumerate() {
        for i in 0..1000 {
            let ev = ws.next_event(PROMPT);
            assert_eq!(
                ev["data"]["i"], i,
                "socket {n}: event {i} out of order: {ev}"
            );
            assert_eq!(ev["id"], format!("e-{i}"), "socket {n}: {ev}");
        }
        ws.assert_no_text(Duration::from_millis(100));
    }
}

#[test]
fn events_published_through_different_connections_arrive_in_acceptance_order() {
    let node = Node::start();
    let mut sockets: Vec<Ws> = (0..2).map(|_| node.ws_welcomed("accept-order")).collect();
    // Four publisher connections, likely served by both shards; each event is published
    // only after the previous one was accepted, so acceptance order is 0, 1, 2, ...
    let mut conns: Vec<HttpConn> = (0..4).map(|_| HttpConn::connect(node.addr)).collect();
    for i in 0..400 {
        let body = event("accept-order", "e", &i.to_string());
        let resp = conns[i % 4].request(post_events_request(&body, Some(API_KEY)).as_bytes());
        assert_eq!(resp.status, 202, "event {i}: {}", resp.body_str());
    }
    for (n, ws) in sockets.iter_mut().enumerate() {
        for i in 0..400 {
            let ev = ws.next_event(PROMPT);
            assert_eq!(ev["data"], i, "socket {n}: event {i} out of order: {ev}");
        }
    }
}

#[test]
fn data_arrives_byte_for_byte() {
    let node = Node::start();
    let mut ws = node.ws_welcomed("bytes");
    let payloads = [
        "{ \"a\" :  [1, 2 ,[ 3, [ ] ] ] ,\n\t\"u\" : \"\\u00e9\\ud83d\\ude00 caf\\u00E9\" }",
        "1.0e+2",
        "12345678901234567890",
        "-0.0",
        "123456789012345678901234567890",
        "[[],[{}],[[[1.50]]], [ null ,true,false ]]",
        "\"quote \\\" backslash \\\\ slash \\/ tab \\t\"",
        "\"raw utf-8: é 😀 中文\"",
        "{\"nested\":{\"deeper\":{\"deepest\":[0.1,2.50e-3,{\"k\":\"v\"}]}}}",
        "null",
    ];
    // Odd whitespace around the value too; only the value itself must be kept.
    let events: Vec<String> = payloads
        .iter()
        .enumerate()
        .map(|(i, p)| {
            format!("{{ \"session\" : \"bytes\", \"event\":\"e{i}\" , \"data\" :  {p}  }}")
        })
        .collect();
    node.publish_ok(&batch(&events[..5]), 5);
    for e in &events[5..] {
        node.publish_ok(e, 1);
    }
    for (i, p) in payloads.iter().enumerate() {
        let frame = ws.next_text(PROMPT);
        let v: serde_json::Value = serde_json::from_str(&frame)
            .unwrap_or_else(|e| panic!("frame {i} is not JSON ({e}): {frame}"));
        assert_eq!(v["event"], format!("e{i}"), "{frame}");
        let data = raw_member(&frame, "data").unwrap_or_else(|| panic!("no data in {frame}"));
        assert_eq!(data, *p, "data {i} changed on the way; frame {frame}");
    }
}

#[test]
fn event_near_the_body_limit_arrives_intact() {
    let node = Node::start();
    let mut ws = node.ws_welcomed("large");
    // About 1,000,000 bytes of data: a frame with a 64-bit length.
    let data = format!("[\"{}\",{{\"tail\": true}}]", "0123456789".repeat(99_990));
    node.publish_ok(&event("large", "big", &data), 1);
    let frame = ws.next_text(PROMPT);
    assert_eq!(raw_member(&frame, "data"), Some(data.as_str()));
}

#[test]
fn event_name_and_id_with_escapes_arrive_as_published() {
    let node = Node::start();
    let session: String = "Az09._:-".chars().cycle().take(128).collect();
    let mut ws = node.ws_welcomed(&session);
    let body = format!(
        r#"{{"session":"{session}","event":"caf\u00e9 \"quoted\" é","data":0,"id":"id\/1 \u2028"}}"#
    );
    node.publish_ok(&body, 1);
    let ev = ws.next_event(PROMPT);
    assert_eq!(ev["session"], session.as_str());
    assert_eq!(ev["event"], "café \"quoted\" é");
    assert_eq!(ev["id"], "id/1 \u{2028}");
}

#[test]
fn session_spread_over_both_shards_delivers_every_event_to_every_socket() {
    let node = Node::start();
    // SO_REUSEPORT spreads connections over the 2 shards by address hash; with 16
    // sockets the chance that all land on the session's owner is 1 in 65,536.
    let mut sockets: Vec<Ws> = (0..16).map(|_| node.ws_welcomed("spread")).collect();
    let events: Vec<String> = (0..10)
        .map(|i| event("spread", "e", &i.to_string()))
        .collect();
    node.publish_ok(&batch(&events), 10);
    for i in 10..20 {
        node.publish_ok(&event("spread", "e", &i.to_string()), 1);
    }
    for (n, ws) in sockets.iter_mut().enumerate() {
        for i in 0..20 {
            let ev = ws.next_event(PROMPT);
            assert_eq!(ev["data"], i, "socket {n}: {ev}");
        }
    }
    let handoffs = node.metric("relay_socket_handoffs_total", &[]);
    assert!(
        handoffs > 0.0,
        "no socket was handed to its session's shard"
    );
    assert_eq!(node.metric("relay_connected_clients", &[]), 16.0);
}

#[test]
fn reader_that_stops_reading_is_closed_with_4008_while_others_keep_receiving() {
    let node = Node::builder()
        .flag("--max-outbound-bytes", "65536")
        .start();
    let readers: Vec<Ws> = (0..2).map(|_| node.ws_welcomed("slow")).collect();
    let mut stuck = RawSocket::upgrade(node.addr, "slow");
    let rss_before = node.rss_kib();

    let handles: Vec<_> = readers
        .into_iter()
        .map(|mut ws| {
            std::thread::spawn(move || {
                let mut seqs = Vec::new();
                loop {
                    let ev = ws.next_event(Duration::from_secs(20));
                    if ev["event"] == "end" {
                        return seqs;
                    }
                    seqs.push(ev["data"]["seq"].as_u64().expect("seq"));
                }
            })
        })
        .collect();

    // ~4 KiB events, 4 to a request (16 KiB, a quarter of the queue), until the stuck
    // socket is dropped (with a ceiling of 32 MiB).
    let pad = "x".repeat(4000);
    let mut conn = HttpConn::connect(node.addr);
    let mut seq = 0u64;
    let mut tripped = false;
    for b in 0..2000 {
        let events: Vec<String> = (0..4)
            .map(|k| {
                event(
                    "slow",
                    "e",
                    &format!(r#"{{"seq":{},"pad":"{pad}"}}"#, seq + k),
                )
            })
            .collect();
        seq += 4;
        let resp = conn.request(post_events_request(&batch(&events), Some(API_KEY)).as_bytes());
        assert_eq!(resp.status, 202, "batch {b}: {}", resp.body_str());
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
    let resp =
        conn.request(post_events_request(&event("slow", "end", "0"), Some(API_KEY)).as_bytes());
    assert_eq!(resp.status, 202);
    let rss_after = node.rss_kib();
    assert!(
        tripped,
        "published {seq} events of 4 KiB and the stuck socket is still queued"
    );

    for (n, h) in handles.into_iter().enumerate() {
        let seqs = h.join().expect("reader thread panicked");
        assert_eq!(seqs.len() as u64, seq, "reader {n} missed events");
        assert!(
            seqs.iter().enumerate().all(|(i, s)| *s == i as u64),
            "reader {n} got events out of order"
        );
    }

    let slow = node.wait_metric(
        "relay_socket_disconnects_total",
        &[("reason", "slow_consumer")],
        PROMPT,
        |v| v >= 1.0,
    );
    assert_eq!(slow, 1.0, "exactly the stuck socket is a slow consumer");

    match stuck.read_until_close(PROMPT) {
        Ok(code) => assert_eq!(code, Some(4008), "stuck socket closed with {code:?}"),
        Err(e) => assert_eq!(
            e.kind(),
            std::io::ErrorKind::ConnectionReset,
            "stuck socket neither got close 4008 nor a reset: {e}"
        ),
    }

    let grown_kib = rss_after.saturating_sub(rss_before);
    assert!(
        grown_kib < 64 * 1024,
        "node RSS grew by {grown_kib} KiB while a reader was stuck"
    );
}

#[test]
fn sockets_joining_mid_stream_get_the_welcome_first_then_a_gapless_ordered_suffix() {
    let node = Node::start();
    let addr = node.addr;
    let publisher = std::thread::spawn(move || {
        let mut conn = HttpConn::connect(addr);
        for i in 0..600 {
            let body = event("midstream", "e", &i.to_string());
            let resp = conn.request(post_events_request(&body, Some(API_KEY)).as_bytes());
            assert_eq!(resp.status, 202, "event {i}: {}", resp.body_str());
        }
    });
    // Sockets join (and are handed to the session's shard) while events flow.
    let mut sockets = Vec::new();
    for _ in 0..12 {
        sockets.push(node.ws_welcomed("midstream"));
        std::thread::sleep(Duration::from_millis(5));
    }
    publisher.join().expect("publisher failed");
    node.publish_ok(&event("midstream", "end", "null"), 1);
    let mut firsts = Vec::new();
    for (n, ws) in sockets.iter_mut().enumerate() {
        let mut seen = Vec::new();
        loop {
            let ev = ws.next_event(PROMPT);
            if ev["event"] == "end" {
                break;
            }
            seen.push(ev["data"].as_u64().expect("numeric data"));
        }
        firsts.push(seen.first().copied());
        if let Some(first) = seen.first().copied() {
            let expected: Vec<u64> = (first..600).collect();
            assert!(
                seen == expected,
                "socket {n}: events from {first} are not the gapless ordered suffix: {seen:?}"
            );
        }
    }
    eprintln!("first events seen per socket: {firsts:?}");
    assert!(
        firsts.iter().any(|f| f.is_some_and(|f| f > 0)),
        "no socket joined mid-stream (first events {firsts:?}); the test proved nothing"
    );
}

#[test]
fn socket_churn_during_publishing_leaves_counts_and_delivery_intact() {
    let node = Node::start();
    let addr = node.addr;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let publisher = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut conn = HttpConn::connect(addr);
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let body = batch(&[event("churn", "e", "1"), event("churn-b", "e", "2")]);
                let resp = conn.request(post_events_request(&body, Some(API_KEY)).as_bytes());
                assert_eq!(resp.status, 202, "{}", resp.body_str());
                n += 1;
            }
            n
        })
    };
    let churners: Vec<_> = (0..3)
        .map(|t| {
            std::thread::spawn(move || {
                for i in 0..15 {
                    let session = if i % 2 == 0 { "churn" } else { "churn-b" };
                    let (mut ws, _) =
                        ws_connect(addr, &format!("/ws?token={}", token(session)), &[])
                            .unwrap_or_else(|r| panic!("refused: {}", r.status));
                    assert_eq!(ws.next_json(PROMPT)["type"], "welcome");
                    let _ = ws.recv(Duration::from_millis(10));
                    if (i + t) % 3 == 0 {
                        // Vanish without a close frame.
                        drop(ws);
                    } else {
                        let _ = ws.ws.close(None);
                        let _ = ws.wait_close(PROMPT);
                    }
                }
            })
        })
        .collect();
    for c in churners {
        c.join().expect("churner failed");
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let published = publisher.join().expect("publisher failed");
    assert!(published > 0);

    assert!(
        wait_until(PROMPT, || node.metric("relay_connected_clients", &[])
            == 0.0),
        "connected clients did not return to 0: {}",
        node.metric("relay_connected_clients", &[])
    );
    assert_eq!(node.get("/healthz").status, 200);
    let mut ws = node.ws_welcomed("churn");
    node.publish_ok(&event("churn", "after", "0"), 1);
    assert_eq!(ws.next_event(PROMPT)["event"], "after");
}

#[test]
fn with_the_skip_policy_a_slow_reader_loses_its_oldest_events_but_is_told_and_kept() {
    let node = Node::builder()
        .flag("--max-outbound-bytes", "65536")
        .flag("--slow-consumer", "skip")
        .start();
    let mut healthy = node.ws_welcomed("skip");
    let mut stuck = RawSocket::upgrade(node.addr, "skip");
    let pad = "x".repeat(4000);
    let mut conn = HttpConn::connect(node.addr);
    let mut sent = 0u64;
    let reader = std::thread::spawn(move || {
        let mut n = 0u64;
        loop {
            let ev = healthy.next_event(Duration::from_secs(20));
            if ev["event"] == "end" {
                return n;
            }
            n += 1;
            assert_eq!(
                ev["seq"], n,
                "the healthy socket lost or reordered an event"
            );
        }
    });
    let mut skipped = false;
    for b in 0..2000 {
        let events: Vec<String> = (0..4)
            .map(|_| event("skip", "e", &format!("\"{pad}\"")))
            .collect();
        let resp = conn.request(post_events_request(&batch(&events), Some(API_KEY)).as_bytes());
        assert_eq!(resp.status, 202, "batch {b}");
        sent += 4;
        if b % 8 == 7 && node.metric("relay_skipped_events_total", &[]) >= 1.0 {
            skipped = true;
            break;
        }
    }
    assert!(skipped, "no event was ever skipped for the stuck reader");
    node.publish_ok(&event("skip", "end", "0"), 1);
    assert_eq!(reader.join().unwrap(), sent);
    assert_eq!(
        node.metric(
            "relay_socket_disconnects_total",
            &[("reason", "slow_consumer")]
        ),
        0.0,
        "skip must not close"
    );
    assert!(node.metric("relay_resync_total", &[("reason", "slow")]) >= 1.0);

    // The stuck reader now reads: every gap in its seqs comes right after a
    // resync (reason slow) naming the last event before the gap.
    let mut last_seq = 0u64;
    let mut told: Option<u64> = None;
    let mut resyncs = 0;
    loop {
        let (op, payload) = stuck
            .read_frame(PROMPT)
            .expect("the stuck reader is still open");
        if op & 0x0f != 1 {
            continue;
        }
        let v: serde_json::Value = serde_json::from_slice(&payload).unwrap();
        match v["type"].as_str() {
            Some("resync") => {
                assert_eq!(v["reason"], "slow");
                told = v["seq"].as_u64();
                resyncs += 1;
            }
            Some("event") => {
                if v["event"] == "end" {
                    break;
                }
                let seq = v["seq"].as_u64().unwrap();
                if seq != last_seq + 1 {
                    assert_eq!(
                        told,
                        Some(seq - 1),
                        "a silent gap before {seq} (last {last_seq})"
                    );
                }
                told = None;
                last_seq = seq;
            }
            _ => {}
        }
    }
    assert!(resyncs >= 1);
    assert!(
        last_seq == sent,
        "the stuck reader ends with the newest event"
    );
}
