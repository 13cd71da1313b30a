//! `POST /events?wait=delivered` through Redis: three real nodes on one real Redis.
//! The publishing node's 202 comes once every node that Redis published to has sent
//! its counts back, lists each node's counts per event, and counts the nodes that
//! did not answer in time (a stopped node) instead of waiting for ever.

// A test drives the nodes from its own threads, which may sleep and block.
#![allow(clippy::disallowed_methods)]

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

fn count(v: &Value, field: &str) -> u64 {
    v[field]
        .as_u64()
        .unwrap_or_else(|| panic!("no {field} in {v}"))
}

/// Sockets each node reached for one event: written + queued, per node, sorted.
fn reached_per_node(receipt: &Value) -> Vec<u64> {
    let mut per: Vec<u64> = receipt["nodes"]
        .as_array()
        .unwrap_or_else(|| panic!("no nodes in {receipt}"))
        .iter()
        .map(|n| count(n, "written") + count(n, "queued"))
        .collect();
    per.sort_unstable();
    per
}

fn signal(pid: u32, sig: &str) {
    let ok = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "kill {sig} {pid}");
}

#[test]
fn three_nodes_each_answer_their_counts_and_a_silent_node_is_counted_late() {
    let redis = Redis::start();
    let nodes: Vec<Node> = (0..3).map(|_| node_on(&redis)).collect();
    for n in &nodes {
        assert!(wait_ready(n, PROMPT), "node not ready");
    }
    // 1, 2 and 3 sockets of the session on the three nodes.
    let mut sockets: Vec<(usize, Ws)> = Vec::new();
    for (i, n) in nodes.iter().enumerate() {
        for _ in 0..=i {
            sockets.push((i, n.ws_welcomed("wd")));
        }
    }
    assert!(wait_until(PROMPT, || redis.subscribers("wd") == Some(3)));

    // Every node answers: per event, three nodes with 1, 2 and 3 sockets reached.
    let body = batch(&[
        r#"{"session":"wd","event":"e","data":1,"id":"wd-1"}"#.to_string(),
        event("wd", "e", "2"),
    ]);
    let resp = nodes[0].publish_waiting(&body);
    assert_eq!(resp.status, 202, "{}", resp.body_str());
    let v = resp.json();
    assert!(v["took_us"].as_u64().is_some(), "{v}");
    let mut names = HashSet::new();
    for r in v["events"].as_array().expect("events") {
        assert_eq!(reached_per_node(r), [1, 2, 3], "{v}");
        assert_eq!(count(r, "written") + count(r, "queued"), 6, "{v}");
        assert_eq!(count(r, "dropped"), 0, "{v}");
        assert_eq!(count(r, "nodes_late"), 0, "{v}");
        for n in r["nodes"].as_array().expect("nodes") {
            names.insert(n["node"].as_str().expect("node name").to_string());
        }
    }
    assert_eq!(names.len(), 3, "one name per node: {names:?}");
    for (_, ws) in &mut sockets {
        assert_eq!(ws.next_event(PROMPT)["data"], 1);
        assert_eq!(ws.next_event(PROMPT)["data"], 2);
    }

    // A retry of a placed id is a duplicate: nobody owes counts for it.
    let resp = nodes[1].publish_waiting(&batch(&[
        r#"{"session":"wd","event":"e","data":1,"id":"wd-1"}"#.to_string(),
    ]));
    assert_eq!(resp.status, 202, "{}", resp.body_str());
    let r = &resp.json()["events"][0];
    assert_eq!(r["duplicate"], true, "{r}");
    assert_eq!(r["nodes"].as_array().map(Vec::len), Some(0), "{r}");
    assert_eq!(count(r, "nodes_late"), 0, "{r}");

    // A stopped node stays subscribed in Redis but answers nothing: the 202 comes
    // after the wait with that node counted late, and the others' counts.
    let stopped = &nodes[2];
    signal(stopped.pid, "-STOP");
    let started = Instant::now();
    let resp = nodes[0].publish_waiting(&event("wd", "e", "3"));
    let took = started.elapsed();
    signal(stopped.pid, "-CONT");
    assert_eq!(resp.status, 202, "{}", resp.body_str());
    let v = resp.json();
    let r = &v["events"][0];
    assert_eq!(count(r, "nodes_late"), 1, "{v}");
    assert_eq!(reached_per_node(r), [1, 2], "{v}");
    assert_eq!(
        nodes[0].metric("relay_delivery_receipts_late_total", &[]),
        1.0
    );
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(4),
        "answered after {took:?}"
    );
    // Once it runs again, the stopped node's sockets get the event all the same.
    for (_, ws) in &mut sockets {
        assert_eq!(ws.next_event(PROMPT)["data"], 3);
    }

    // Without the parameter, nothing changes: no counts, no waiting.
    let resp = nodes[2].publish(&event("wd", "e", "4"));
    assert_eq!(resp.status, 202, "{}", resp.body_str());
    let r = &resp.json()["events"][0];
    assert!(
        r.get("written").is_none() && r.get("nodes").is_none(),
        "{r}"
    );
}
