//! Nothing blocks a core: with the shards' inboxes saturated by publishes whose
//! receipts cross shards, a socket of another session keeps receiving in order,
//! and the node's own accepted → written p99 stays in its usual range. (An owner
//! that waited for room to send a receipt would stall every socket on its core.)

// A test drives the node from its own threads, which may sleep and block.
#![allow(clippy::disallowed_methods)]

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use relay::router::shard_for;

/// A session name that shard `shard` of 2 owns.
fn session_on(shard: usize, tag: &str) -> String {
    (0..)
        .map(|i| format!("{tag}-{i}"))
        .find(|s| shard_for(s, 2) == shard)
        .unwrap()
}

fn node_p99_ms(node: &Node) -> f64 {
    let v = http_get(node.ops_addr(), "/latency").json();
    v["p99"].as_f64().expect("p99 in /latency")
}

#[test]
fn saturated_reply_paths_never_stall_another_sessions_sockets() {
    // Four messages per inbox: every flood request below needs room on both
    // shards, for its events and for its receipts, so the inboxes stay full.
    let node = Node::builder().flag("--inbox-messages", "4").start();
    let watched = session_on(1, "watched");
    let mut watcher = node.ws_welcomed(&watched);

    // The usual range: the same watcher, no flood.
    for i in 0..200 {
        node.publish_ok(&event(&watched, "calm", &i.to_string()), 1);
        assert_eq!(watcher.next_event(PROMPT)["data"], i);
    }
    let calm_p99 = node_p99_ms(&node);

    let stop = Arc::new(AtomicBool::new(false));
    let refused = Arc::new(AtomicU64::new(0));
    let accepted = Arc::new(AtomicU64::new(0));
    let flood: Vec<_> = (0..16)
        .map(|t| {
            let (addr, stop) = (node.addr, stop.clone());
            let (refused, accepted) = (refused.clone(), accepted.clone());
            let body = batch(&[
                event(&session_on(0, &format!("flood-a{t}")), "f", "1"),
                event(&session_on(1, &format!("flood-b{t}")), "f", "2"),
            ]);
            let req = post_events_request(&body, Some(API_KEY));
            std::thread::spawn(move || {
                let mut conn = HttpConn::connect(addr);
                while !stop.load(Ordering::Relaxed) {
                    let resp = conn.request(req.as_bytes());
                    match resp.status {
                        202 => accepted.fetch_add(1, Ordering::Relaxed),
                        503 => {
                            // Refused before anything was sent: the connection closes.
                            conn = HttpConn::connect(addr);
                            refused.fetch_add(1, Ordering::Relaxed)
                        }
                        s => panic!("flood publish answered {s}: {}", resp.body_str()),
                    };
                }
            })
        })
        .collect();

    // Publish to the watched session through the flood; each accepted event must
    // reach the watcher, in order.
    let started = Instant::now();
    let mut sent = 0u64;
    let mut next = 200u64;
    while started.elapsed() < Duration::from_secs(3) {
        let resp = node.publish(&event(&watched, "busy", &next.to_string()));
        if resp.status == 202 {
            sent += 1;
            let ev = watcher.next_event(PROMPT);
            assert_eq!(ev["data"], next, "watcher got {ev}");
            next += 1;
        } else {
            assert_eq!(resp.status, 503, "{}", resp.body_str());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    stop.store(true, Ordering::Relaxed);
    for t in flood {
        t.join().expect("flood thread");
    }
    let busy_p99 = node_p99_ms(&node);
    eprintln!(
        "watched events {sent}; flood accepted {} refused {}; node p99 calm {calm_p99:.2} ms, under the flood {busy_p99:.2} ms",
        accepted.load(Ordering::Relaxed),
        refused.load(Ordering::Relaxed)
    );

    assert!(sent >= 20, "only {sent} events got through to the watcher");
    assert!(
        refused.load(Ordering::Relaxed) > 0,
        "the inboxes never filled ({} accepted): the test proved nothing",
        accepted.load(Ordering::Relaxed)
    );
    assert!(
        accepted.load(Ordering::Relaxed) > 0,
        "no flood publish was accepted"
    );
    // A core that slept waiting for inbox room (up to 20 ms a reply, many replies)
    // moves the node's p99; a few milliseconds of scheduling noise does not.
    assert!(
        busy_p99 < (calm_p99 * 3.0).max(12.0),
        "node p99 {busy_p99:.2} ms under the flood against {calm_p99:.2} ms calm"
    );
    assert!(
        !node.log().contains("receipts not sent"),
        "a reserved receipt found no room"
    );
}
