//! Many nodes through a real Redis: every test starts its own `redis-server` on a
//! free port and real relay nodes pointed at it.

// A test drives the node from its own threads, which may sleep and block.
#![allow(clippy::disallowed_methods)]

mod common;

use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use loadtest::fault_proxy::FaultProxy;

/// Reads events until `n` have arrived (skipping resyncs); returns each one's id,
/// epoch and seq.
fn collect_ids(ws: &mut Ws, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    while ids.len() < n {
        let v = ws.next_json(PROMPT);
        if v["type"] == "event" {
            ids.push(format!(
                "{} {}:{}",
                v["id"].as_str().unwrap_or_default(),
                v["epoch"].as_str().unwrap_or_default(),
                v["seq"]
            ));
        }
    }
    ids
}

fn node_with_history(redis: &Redis, store: &str) -> Node {
    Node::builder()
        .env("REDIS_URL", &redis.url())
        .flag("--history", store)
        .start()
}

/// Drops a socket after reading `k` events; returns the position of the last one.
fn read_then_drop(mut ws: Ws, k: usize) -> String {
    let mut last = String::new();
    for _ in 0..k {
        let v = ws.next_event(PROMPT);
        last = format!("{}:{}", v["epoch"].as_str().unwrap_or_default(), v["seq"]);
    }
    last
}

#[test]
fn three_nodes_deliver_every_event_to_every_socket_in_one_order() {
    let redis = Redis::start();
    let nodes: Vec<Node> = (0..3).map(|_| node_on(&redis)).collect();
    for n in &nodes {
        assert!(wait_ready(n, PROMPT), "node not ready");
    }
    let mut sockets: Vec<Ws> = nodes
        .iter()
        .flat_map(|n| [n.ws_welcomed("shared"), n.ws_welcomed("shared")])
        .collect();
    // Each node subscribed once for its local sockets.
    assert!(wait_until(PROMPT, || redis.subscribers("shared") == Some(3)));

    // Published through all three nodes in turn, singly and in batches.
    let mut expected = 0;
    for i in 0..60 {
        let node = &nodes[i % 3];
        if i % 4 == 0 {
            let evs: Vec<String> = (0..5)
                .map(|k| event("shared", "e", &format!("{}", i * 10 + k)))
                .collect();
            node.publish_ok(&batch(&evs), 5);
            expected += 5;
        } else {
            node.publish_ok(&event("shared", "e", &format!("{i}")), 1);
            expected += 1;
        }
    }
    let first = collect_ids(&mut sockets[0], expected);
    let unique: HashSet<&String> = first.iter().collect();
    assert_eq!(unique.len(), expected, "duplicates on the first socket");
    // Redis placed every event: consecutive seqs from the welcome's, one epoch.
    let welcome_seq = sockets[0].welcome["seq"].as_u64().expect("seq");
    for (k, line) in first.iter().enumerate() {
        let seq: u64 = line
            .rsplit(':')
            .next()
            .and_then(|s| s.parse().ok())
            .expect("seq");
        assert_eq!(seq, welcome_seq + 1 + k as u64, "{line}");
    }
    for (k, ws) in sockets.iter_mut().enumerate().skip(1) {
        assert_eq!(
            collect_ids(ws, expected),
            first,
            "socket {k} saw another order"
        );
    }
    for ws in &mut sockets {
        ws.assert_no_text(Duration::from_millis(300));
    }
}

#[test]
fn killed_pubsub_connection_is_resubscribed_and_delivery_resumes() {
    let redis = Redis::start();
    let node = node_on(&redis);
    assert!(wait_ready(&node, PROMPT));
    let mut ws = node.ws_welcomed("kill");
    assert!(wait_until(PROMPT, || redis.subscribers("kill") == Some(1)));

    let welcome_seq = ws.welcome["seq"].as_u64().expect("welcome seq");
    // An event the node will miss: the session's position moves in Redis (as a
    // publish from another node would move it) while the pub/sub link is cut.
    redis
        .try_cmd(&["HINCRBY", "relay:v1:{kill}", "n", "1"])
        .expect("redis");
    let killed = redis
        .try_cmd(&["CLIENT", "KILL", "TYPE", "pubsub"])
        .expect("redis");
    assert!(killed.starts_with(":1"), "killed {killed:?}");

    let v = ws.next_json(PROMPT);
    assert_eq!(v["type"], "resync", "expected a resync, got {v}");
    assert_eq!(v["session"], "kill");
    assert_eq!(v["seq"].as_u64(), Some(welcome_seq + 1), "{v}");
    assert_eq!(v["epoch"], ws.welcome["epoch"], "{v}");
    assert!(
        wait_until(Duration::from_secs(6), || redis.subscribers("kill")
            == Some(1)),
        "the bridge did not resubscribe"
    );
    assert!(wait_ready(&node, Duration::from_secs(6)));
    node.publish_ok(&event("kill", "after", "1"), 1);
    let v = ws.next_event(PROMPT);
    assert_eq!(v["event"], "after");
    assert_eq!(v["seq"].as_u64(), Some(welcome_seq + 2), "{v}");
    assert!(node.metric("relay_redis_reconnects_total", &[]) >= 1.0);
    assert!(node.metric("relay_resync_total", &[("reason", "gap")]) >= 1.0);
}

#[test]
fn redis_outage_flips_readiness_answers_503_resyncs_and_loses_no_accepted_event() {
    let mut redis = Redis::start();
    let a = node_on(&redis);
    let b = node_on(&redis);
    assert!(wait_ready(&a, PROMPT) && wait_ready(&b, PROMPT));
    let mut wa = a.ws_welcomed("outage");
    let mut wb = b.ws_welcomed("outage");
    assert!(wait_until(PROMPT, || redis.subscribers("outage") == Some(2)));

    // A steady publisher on node a: every 20 ms, recording what was answered 202 and when.
    let accepted: Arc<Mutex<Vec<(String, Instant)>>> = Arc::default();
    let refused_503 = Arc::new(Mutex::new(0u32));
    let stop = Arc::new(AtomicBool::new(false));
    let publisher = {
        let (accepted, refused_503, stop) = (accepted.clone(), refused_503.clone(), stop.clone());
        let addr = a.addr;
        std::thread::spawn(move || {
            let mut i = 0u32;
            while !stop.load(Ordering::Relaxed) {
                let id = format!("ev-{i}");
                let body =
                    format!(r#"{{"session":"outage","event":"tick","id":"{id}","data":{i}}}"#);
                let resp = http_request(addr, &post_events_request(&body, Some(API_KEY)));
                match resp.status {
                    202 => accepted.lock().expect("lock").push((id, Instant::now())),
                    503 => *refused_503.lock().expect("lock") += 1,
                    s => panic!("unexpected publish status {s}"),
                }
                i += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };

    std::thread::sleep(Duration::from_millis(300));
    let killed_at = Instant::now();
    redis.kill();
    assert!(
        wait_until(Duration::from_secs(5), || a.get("/readyz").status == 503),
        "readyz did not flip to 503"
    );
    assert!(wait_until(Duration::from_secs(5), || *refused_503
        .lock()
        .expect("lock")
        >= 3));
    assert_eq!(a.metric("relay_redis_connected", &[]), 0.0);

    redis.spawn();
    let back = Instant::now();
    assert!(
        wait_ready(&a, Duration::from_secs(8)),
        "node a not ready again"
    );
    assert!(
        wait_ready(&b, Duration::from_secs(8)),
        "node b not ready again"
    );
    // Delivery resumes within 5 s of Redis's return.
    let n_before = accepted.lock().expect("lock").len();
    assert!(
        wait_until(Duration::from_secs(5), || accepted
            .lock()
            .expect("lock")
            .len()
            > n_before + 3),
        "publishes not accepted again"
    );
    stop.store(true, Ordering::Relaxed);
    publisher.join().expect("publisher");
    a.publish_ok(&event("outage", "last", "0"), 1);

    // The promise is "every event, or told you missed some": Redis acknowledges a
    // PUBLISH before every subscriber has it, and a node that has not resubscribed
    // yet after the outage misses what others publish meanwhile. So each accepted
    // event is either delivered, or the socket gets a resync after it was accepted.
    let accepted: Vec<(String, Instant)> = accepted.lock().expect("lock").clone();
    for (name, ws) in [("a", &mut wa), ("b", &mut wb)] {
        let mut seen = HashSet::new();
        let mut last_resync: Option<Instant> = None;
        // No silent gap: each event is the one after the last event or resync.
        let mut at = (ws.welcome["epoch"].clone(), ws.welcome["seq"].as_u64());
        loop {
            let v = ws.next_json(PROMPT);
            match v["type"].as_str() {
                Some("resync") => {
                    last_resync = Some(Instant::now());
                    at = (v["epoch"].clone(), v["seq"].as_u64());
                    continue;
                }
                Some("event") => {
                    assert_eq!(
                        v["epoch"], at.0,
                        "node {name}: epoch moved without a resync"
                    );
                    assert_eq!(
                        v["seq"].as_u64(),
                        at.1.map(|s| s + 1),
                        "node {name}: a gap without a resync"
                    );
                    at.1 = v["seq"].as_u64();
                }
                _ => {}
            }
            if v["event"] == "last" {
                break;
            }
            if v["type"] == "event" {
                seen.insert(v["id"].as_str().unwrap_or_default().to_string());
            }
        }
        let resynced_at =
            last_resync.unwrap_or_else(|| panic!("socket on node {name} got no resync"));
        assert!(resynced_at > killed_at);
        for (id, at) in &accepted {
            assert!(
                seen.contains(id) || *at < resynced_at,
                "node {name} lost accepted event {id} and was not told"
            );
        }
        let missed = accepted.iter().filter(|(id, _)| !seen.contains(id)).count();
        eprintln!(
            "node {name}: {} accepted, {missed} covered by the resync",
            accepted.len()
        );
    }
    assert!(back.elapsed() < Duration::from_secs(20));
    // Redis came back empty: the streams start a new epoch, and sockets were told.
    assert!(
        a.metric("relay_resync_total", &[("reason", "epoch")]) >= 1.0,
        "{}",
        a.metrics()
    );
}

#[test]
fn with_redis_kept_history_a_redis_crash_loses_no_accepted_event() {
    let mut redis = Redis::start_persistent();
    let a = node_with_history(&redis, "redis");
    let b = node_with_history(&redis, "redis");
    assert!(wait_ready(&a, PROMPT) && wait_ready(&b, PROMPT));
    let mut sockets = vec![
        ("a", a.ws_welcomed("durable")),
        ("b", b.ws_welcomed("durable")),
    ];
    assert!(wait_until(PROMPT, || redis.subscribers("durable") == Some(2)));

    // Publishers on both nodes, every 10 ms, recording what was answered 202.
    let accepted: Arc<Mutex<Vec<String>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let publishers: Vec<_> = [a.addr, b.addr]
        .into_iter()
        .enumerate()
        .map(|(n, addr)| {
            let (accepted, stop) = (accepted.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut i = 0u32;
                while !stop.load(Ordering::Relaxed) {
                    let id = format!("n{n}-{i}");
                    let body =
                        format!(r#"{{"session":"durable","event":"tick","id":"{id}","data":{i}}}"#);
                    let resp = http_request(addr, &post_events_request(&body, Some(API_KEY)));
                    if resp.status == 202 {
                        accepted.lock().expect("lock").push(id);
                    }
                    i += 1;
                    std::thread::sleep(Duration::from_millis(10));
                }
            })
        })
        .collect();

    std::thread::sleep(Duration::from_millis(400));
    redis.kill(); // SIGKILL: whatever Redis had not written to subscribers is lost there
    assert!(wait_until(Duration::from_secs(5), || a
        .get("/readyz")
        .status
        == 503));
    std::thread::sleep(Duration::from_millis(300));
    redis.spawn(); // reloads the append-only file
    assert!(wait_ready(&a, Duration::from_secs(8)) && wait_ready(&b, Duration::from_secs(8)));
    let n_before = accepted.lock().expect("lock").len();
    assert!(wait_until(Duration::from_secs(5), || accepted
        .lock()
        .expect("lock")
        .len()
        > n_before + 10));
    stop.store(true, Ordering::Relaxed);
    for p in publishers {
        p.join().expect("publisher");
    }
    a.publish_ok(&event("durable", "last", "0"), 1);

    // Every accepted event reaches every socket, in one order, with no resync.
    let accepted = accepted.lock().expect("lock").clone();
    for (name, ws) in &mut sockets {
        let mut seen = HashSet::new();
        let mut at = ws.welcome["seq"].as_u64().expect("seq");
        loop {
            let v = ws.next_json(PROMPT);
            assert_eq!(
                v["type"], "event",
                "node {name}: expected only events, got {v}"
            );
            assert_eq!(v["seq"].as_u64(), Some(at + 1), "node {name}: {v}");
            at += 1;
            if v["event"] == "last" {
                break;
            }
            seen.insert(v["id"].as_str().unwrap_or_default().to_string());
        }
        let lost: Vec<&String> = accepted.iter().filter(|id| !seen.contains(*id)).collect();
        assert!(lost.is_empty(), "node {name} lost accepted events {lost:?}");
    }
    eprintln!(
        "{} events accepted; caught up from Redis: a {}, b {}",
        accepted.len(),
        a.metric("relay_caught_up_events_total", &[]),
        b.metric("relay_caught_up_events_total", &[])
    );
}

#[test]
fn resume_on_another_node_replays_with_redis_history_and_resyncs_without() {
    let redis = Redis::start();
    let a = node_with_history(&redis, "redis");
    let b = node_with_history(&redis, "redis");
    assert!(wait_ready(&a, PROMPT) && wait_ready(&b, PROMPT));
    let ws = a.ws_welcomed("hop");
    a.publish_ok(&event("hop", "e", "1"), 1);
    let since = read_then_drop(ws, 1);
    // Published while the client is between nodes, through both nodes.
    for i in 0..20 {
        let node = if i % 2 == 0 { &a } else { &b };
        node.publish_ok(
            &format!(r#"{{"session":"hop","event":"e","id":"away-{i}","data":{i}}}"#),
            1,
        );
    }
    // b never held a socket of "hop": its ring is empty, the Redis Stream is not.
    let mut back = b.ws_resuming("hop", &since);
    assert_eq!(back.welcome["seq"], 21, "{}", back.welcome);
    for i in 0..20u64 {
        let v = back.next_json(PROMPT);
        assert_eq!(v["type"], "event", "expected a replay, got {v}");
        assert_eq!(
            (v["seq"].as_u64(), v["id"].as_str()),
            (Some(2 + i), Some(format!("away-{i}").as_str()))
        );
    }
    a.publish_ok(&event("hop", "live", "1"), 1);
    let v = back.next_json(PROMPT);
    assert_eq!(
        (v["event"].as_str(), v["seq"].as_u64()),
        (Some("live"), Some(22)),
        "{v}"
    );
    assert_eq!(b.metric("relay_replays_total", &[]), 1.0);

    // Without Redis-kept history the other node cannot replay: resync first.
    let c = node_on(&redis);
    assert!(wait_ready(&c, PROMPT));
    let mut elsewhere = c.ws_resuming("hop", &since);
    let v = elsewhere.next_json(PROMPT);
    assert_eq!(v["type"], "resync", "{v}");
    assert_eq!(v["seq"], 22);
    assert_eq!(v["epoch"], elsewhere.welcome["epoch"]);
}

#[test]
fn a_storm_of_resumes_from_redis_history_replays_every_socket_and_publishes_go_on() {
    let redis = Redis::start();
    let a = node_with_history(&redis, "redis");
    let b = node_with_history(&redis, "redis");
    assert!(wait_ready(&a, PROMPT) && wait_ready(&b, PROMPT));
    const SESSIONS: usize = 4;
    const PER_SESSION: usize = 25;
    const MISSED: u64 = 300;
    let mut since = Vec::new();
    for s in 0..SESSIONS {
        let session = format!("storm-{s}");
        let ws = a.ws_welcomed(&session);
        a.publish_ok(&event(&session, "e", "0"), 1);
        since.push(read_then_drop(ws, 1));
        let events: Vec<String> = (0..MISSED)
            .map(|i| event(&session, "missed", &i.to_string()))
            .collect();
        a.publish_ok(&batch(&events), MISSED);
    }
    // b never held these sessions: every socket's replay is read back from Redis,
    // all of them asking at once, while a publisher keeps publishing through b.
    let publishing = AtomicBool::new(true);
    std::thread::scope(|scope| {
        let publisher = scope.spawn(|| {
            let mut answered = 0;
            while publishing.load(Ordering::Relaxed) {
                b.publish_ok(&event("storm-other", "p", "1"), 1);
                answered += 1;
            }
            answered
        });
        let sockets: Vec<_> = (0..SESSIONS * PER_SESSION)
            .map(|k| {
                let (b, since) = (&b, since[k % SESSIONS].clone());
                scope.spawn(move || {
                    let session = format!("storm-{}", k % SESSIONS);
                    let mut ws = b.ws_resuming(&session, &since);
                    assert_eq!(ws.welcome["seq"], MISSED + 1, "{}", ws.welcome);
                    for seq in 2..=MISSED + 1 {
                        let v = ws.next_json(PROMPT);
                        assert_eq!(v["type"], "event", "socket {k}: expected a replay, got {v}");
                        assert_eq!(v["seq"].as_u64(), Some(seq), "socket {k}: {v}");
                    }
                })
            })
            .collect();
        for s in sockets {
            s.join()
                .expect("every resuming socket gets its whole replay in order");
        }
        publishing.store(false, Ordering::Relaxed);
        let answered = publisher.join().expect("publishes answered 202");
        assert!(answered > 0);
    });
    assert_eq!(
        b.metric("relay_replays_total", &[]),
        (SESSIONS * PER_SESSION) as f64
    );
    if let Some(stats) = redis.try_cmd(&["INFO", "commandstats"]) {
        let xrange = stats.lines().find(|l| l.starts_with("cmdstat_xrange"));
        eprintln!("{} resumes, {xrange:?}", SESSIONS * PER_SESSION);
    }
}

#[test]
fn resume_on_the_same_node_replays_from_its_ring_over_plain_pubsub() {
    let redis = Redis::start();
    let a = node_on(&redis);
    let b = node_on(&redis);
    assert!(wait_ready(&a, PROMPT) && wait_ready(&b, PROMPT));
    let ws = a.ws_welcomed("stay");
    b.publish_ok(&event("stay", "e", "1"), 1);
    let since = read_then_drop(ws, 1);
    for i in 0..10 {
        b.publish_ok(&event("stay", "away", &i.to_string()), 1);
    }
    // The stream outlived its socket on a, so its subscription did too.
    let mut back = a.ws_resuming("stay", &since);
    let seqs: Vec<u64> = (0..10)
        .map(|_| back.next_event(PROMPT)["seq"].as_u64().expect("seq"))
        .collect();
    assert_eq!(seqs, (2..=11).collect::<Vec<u64>>());
}

#[test]
fn a_retried_id_through_different_nodes_is_delivered_once() {
    let redis = Redis::start();
    let nodes: Vec<Node> = (0..3).map(|_| node_on(&redis)).collect();
    for n in &nodes {
        assert!(wait_ready(n, PROMPT));
    }
    let mut sockets: Vec<Ws> = nodes.iter().map(|n| n.ws_welcomed("retry")).collect();
    let body = r#"{"session":"retry","event":"e","id":"pay-1","data":1}"#;
    let mut seqs = HashSet::new();
    for attempt in 0..5 {
        let resp = nodes[attempt % 3].publish(body);
        assert_eq!(resp.status, 202, "{}", resp.body_str());
        let r = &resp.json()["events"][0];
        assert_eq!(
            r["duplicate"].as_bool().unwrap_or(false),
            attempt > 0,
            "{r}"
        );
        seqs.insert(r["seq"].as_u64().expect("seq"));
    }
    assert_eq!(seqs.len(), 1, "every retry names the first seq");
    for ws in &mut sockets {
        assert_eq!(ws.next_event(PROMPT)["id"], "pay-1");
        ws.assert_no_text(Duration::from_millis(300));
    }
}

/// A three-master Redis Cluster of our own, killed on drop.
struct RedisCluster {
    ports: Vec<u16>,
    servers: Vec<Child>,
    _dir: PathBuf,
}

/// A free port whose cluster-bus port (+10000) is free too.
fn cluster_port() -> u16 {
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("free port");
        if port < 55_000 && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
}

impl RedisCluster {
    fn start() -> RedisCluster {
        let dir = fresh_dir("redis-cluster");
        let ports: Vec<u16> = (0..3).map(|_| cluster_port()).collect();
        let servers = ports
            .iter()
            .map(|p| {
                Command::new("redis-server")
                    .args([
                        "--port",
                        &p.to_string(),
                        "--bind",
                        "127.0.0.1",
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        &format!("nodes-{p}.conf"),
                        "--dir",
                        &dir.display().to_string(),
                        "--save",
                        "",
                        "--appendonly",
                        "no",
                    ])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("redis-server")
            })
            .collect();
        let cluster = RedisCluster {
            ports,
            servers,
            _dir: dir,
        };
        for &p in &cluster.ports {
            let r = Redis::at(p);
            assert!(wait_until(Duration::from_secs(5), || r
                .try_cmd(&["PING"])
                .is_some_and(|x| x.starts_with("+PONG"))));
        }
        let mut create = Command::new("redis-cli");
        create.arg("--cluster").arg("create");
        for p in &cluster.ports {
            create.arg(format!("127.0.0.1:{p}"));
        }
        let out = create
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli");
        assert!(
            out.status.success(),
            "cluster create: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        for &p in &cluster.ports {
            let r = Redis::at(p);
            assert!(
                wait_until(Duration::from_secs(10), || r
                    .try_cmd(&["CLUSTER", "INFO"])
                    .is_some_and(|x| x.contains("cluster_state:ok"))),
                "cluster not ok on {p}"
            );
        }
        cluster
    }

    fn seeds(&self) -> String {
        self.ports
            .iter()
            .map(|p| format!("redis://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Sharded channels each master holds subscriptions for.
    fn shard_channels(&self) -> Vec<usize> {
        self.ports
            .iter()
            .map(|&p| {
                let r = Redis::at(p);
                r.try_cmd(&["PUBSUB", "SHARDCHANNELS"])
                    .map(|x| x.matches("relay:v1:s:").count())
                    .unwrap_or(0)
            })
            .collect()
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for c in &mut self.servers {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[test]
fn redis_cluster_carries_sharded_pubsub_across_nodes() {
    let cluster = RedisCluster::start();
    let nodes: Vec<Node> = (0..2)
        .map(|_| {
            Node::builder()
                .env("REDIS_URL", &cluster.seeds())
                .env("REDIS_CLUSTER", "true")
                .flag("--history", "redis")
                .start()
        })
        .collect();
    for n in &nodes {
        assert!(wait_ready(n, PROMPT), "node not ready on the cluster");
    }
    let sessions: Vec<String> = (0..8).map(|i| format!("cl-{i}")).collect();
    let mut sockets: Vec<(usize, Ws)> = Vec::new();
    for (i, s) in sessions.iter().enumerate() {
        for n in &nodes {
            sockets.push((i, n.ws_welcomed(s)));
        }
    }
    // Each session's channel lives on the master that owns its slot, and the
    // eight spread over more than one master.
    let per_master = cluster.shard_channels();
    assert_eq!(
        per_master.iter().sum::<usize>(),
        sessions.len(),
        "{per_master:?}"
    );
    assert!(
        per_master.iter().filter(|&&n| n > 0).count() >= 2,
        "{per_master:?}"
    );

    for round in 0..10 {
        for (i, s) in sessions.iter().enumerate() {
            let node = &nodes[(round + i) % 2];
            node.publish_ok(&event(s, "e", &format!("{round}")), 1);
        }
    }
    let mut orders: HashMap<usize, Vec<String>> = HashMap::new();
    for (i, ws) in &mut sockets {
        let ids = collect_ids(ws, 10);
        match orders.get(i) {
            Some(first) => assert_eq!(&ids, first, "session {i}: nodes disagree on order"),
            None => {
                orders.insert(*i, ids);
            }
        }
    }
    // Positions and history streams live on the slot's master too: a client of
    // session 0 resumes on a node that never held it, from its Redis Stream.
    let (_, first) = &sockets[0];
    let since = format!("{}:5", first.welcome["epoch"].as_str().expect("epoch"));
    let fresh = Node::builder()
        .env("REDIS_URL", &cluster.seeds())
        .env("REDIS_CLUSTER", "true")
        .flag("--history", "redis")
        .start();
    assert!(wait_ready(&fresh, PROMPT));
    let mut back = fresh.ws_resuming(&sessions[0], &since);
    let seqs: Vec<u64> = (0..5)
        .map(|_| back.next_event(PROMPT)["seq"].as_u64().expect("seq"))
        .collect();
    assert_eq!(seqs, vec![6, 7, 8, 9, 10]);

    // `?wait=delivered` over sharded pub/sub: each session's two nodes (plus the
    // resumed one for session 0) answer on the publisher's reply channel, which
    // lives on its own slot's master.
    for (i, s) in sessions.iter().enumerate() {
        let resp = nodes[i % 2].publish_waiting(&event(s, "e", "99"));
        assert_eq!(resp.status, 202, "{}", resp.body_str());
        let r = &resp.json()["events"][0];
        let expected = if i == 0 { 3 } else { 2 };
        assert_eq!(r["nodes"].as_array().map(Vec::len), Some(expected), "{r}");
        assert_eq!(r["nodes_late"], 0, "{r}");
    }
}

/// A redis-server listening with TLS only on `port`, with `tls_certs`' files
/// (run it in their directory); clients need not present certificates.
fn tls_server_args(port: u16) -> Vec<String> {
    let port = port.to_string();
    [
        "--port",
        "0",
        "--tls-port",
        &port,
        "--bind",
        "127.0.0.1",
        "--tls-cert-file",
        "server.crt",
        "--tls-key-file",
        "server.key",
        "--tls-ca-cert-file",
        "ca.crt",
        "--tls-auth-clients",
        "no",
    ]
    .map(String::from)
    .to_vec()
}

/// A private CA and a server certificate for 127.0.0.1 and localhost, in `dir`
/// (`ca.crt`, `server.crt`, `server.key`).
fn tls_certs(dir: &std::path::Path) {
    let dir = dir.to_path_buf();
    openssl(
        &dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "1",
            "-subj",
            "/CN=relay-test-ca",
        ],
    );
    openssl(
        &dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=localhost",
        ],
    );
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    .expect("ext");
    openssl(
        &dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.crt",
            "-days",
            "1",
            "-extfile",
            "ext.cnf",
        ],
    );
}

#[test]
fn rediss_url_with_a_private_ca_carries_events_over_tls() {
    let dir = fresh_dir("redis-tls");
    tls_certs(&dir);

    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port");
    let mut server = Command::new("redis-server")
        .args(tls_server_args(port))
        .args(["--save", "", "--appendonly", "no"])
        .current_dir(&dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server");
    let ca = dir.join("ca.crt").display().to_string();
    let up = wait_until(Duration::from_secs(5), || {
        Command::new("redis-cli")
            .args(["--tls", "--cacert", &ca, "-p", &port.to_string(), "PING"])
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("PONG"))
    });
    assert!(up, "TLS redis-server did not come up");

    let node = Node::builder()
        .env("REDIS_URL", &format!("rediss://127.0.0.1:{port}"))
        .env("REDIS_CA_FILE", &ca)
        .start();
    let ready = wait_ready(&node, PROMPT);
    let delivered = ready && {
        let mut ws = node.ws_welcomed("tls");
        node.publish_ok(&event("tls", "secure", "1"), 1);
        ws.next_event(PROMPT)["event"] == "secure"
    };
    let _ = server.kill();
    let _ = server.wait();
    assert!(ready, "node not ready over TLS:\n{}", node.log());
    assert!(delivered, "event not delivered over TLS");
}

#[test]
fn black_holed_redis_is_detected_by_timeouts_and_never_hangs_a_publisher() {
    let redis = Redis::start();
    // A black hole between node and Redis: every connection kept open, nothing
    // forwarded (no FIN, no RST).
    let proxy = FaultProxy::start("127.0.0.1:0", &format!("127.0.0.1:{}", redis.port))
        .expect("fault proxy");
    let node = Node::builder()
        .env("REDIS_URL", &format!("redis://127.0.0.1:{}", proxy.port()))
        .start();
    assert!(wait_ready(&node, PROMPT));
    let _ws = node.ws_welcomed("hole");
    node.publish_ok(&event("hole", "before", "1"), 1);

    proxy.black_hole();
    // Let reads already under way in the proxy finish; from here nothing passes.
    std::thread::sleep(Duration::from_millis(100));
    let frozen_at = Instant::now();
    let resp = node.publish(&event("hole", "during", "1"));
    let took = frozen_at.elapsed();
    assert_eq!(
        resp.status,
        503,
        "publish into a black hole: {}",
        resp.body_str()
    );
    assert_eq!(resp.header("retry-after"), Some("1"));
    assert!(took < Duration::from_secs(6), "publish hung for {took:?}");
    eprintln!("503 after {took:?}");
    assert!(
        wait_until(Duration::from_secs(5), || node.get("/readyz").status == 503),
        "readyz still 200 with Redis black-holed"
    );
    assert!(node.metric("relay_publish_errors_total", &[("reason", "redis")]) >= 1.0);
}

#[test]
fn a_socket_waiting_for_an_absent_redis_is_welcomed_when_it_returns_or_closed_1013() {
    let mut redis = Redis::start();
    let node = node_on(&redis);
    assert!(wait_ready(&node, PROMPT));
    redis.kill();
    assert!(wait_until(PROMPT, || node.get("/readyz").status == 503));

    // Redis returns within the wait: the 101 and welcome come then, and events.
    let addr = node.addr;
    let client = std::thread::spawn(move || {
        let token = token("patient");
        let started = Instant::now();
        let (mut ws, _) = ws_connect(addr, &format!("/ws?token={token}"), &[]).expect("upgrade");
        let w = ws.next_json(PROMPT);
        (ws, w, started.elapsed())
    });
    std::thread::sleep(Duration::from_millis(500));
    redis.spawn();
    let (mut patient, w, waited) = client.join().expect("client");
    assert_eq!(w["type"], "welcome", "{w}");
    assert!(
        waited >= Duration::from_millis(400),
        "welcomed before Redis was back"
    );
    assert!(wait_ready(&node, Duration::from_secs(8)));
    node.publish_ok(&event("patient", "e", "1"), 1);
    assert_eq!(patient.next_event(PROMPT)["data"], 1);

    // Redis stays away: the socket is closed with 1013 (try again later), after a
    // proper handshake, within the 10 s limit (plus a housekeeping tick).
    redis.kill();
    assert!(wait_until(PROMPT, || node.get("/readyz").status == 503));
    let started = Instant::now();
    let mut conn = HttpConn::connect(node.addr);
    conn.set_timeout(Duration::from_secs(15));
    let req = upgrade_request(&format!("/ws?token={}", token("stranded")), &[]);
    conn.send(req.as_bytes()).expect("send upgrade");
    let mut bytes = Vec::new();
    let _ = conn.stream.read_to_end(&mut bytes);
    let head_end = find(&bytes, b"\r\n\r\n").expect("a response head") + 4;
    assert!(
        bytes.starts_with(b"HTTP/1.1 101"),
        "{:?}",
        String::from_utf8_lossy(&bytes)
    );
    // Nothing but a close frame with 1013 follows the 101.
    let close = &bytes[head_end..];
    assert_eq!(close.first(), Some(&0x88), "{close:?}");
    assert_eq!(&close[2..4], &1013u16.to_be_bytes());
    assert!(
        started.elapsed() >= Duration::from_secs(9),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn a_gap_in_arrivals_and_a_position_that_moved_back_are_both_told() {
    let redis = Redis::start();
    let node = node_on(&redis);
    assert!(wait_ready(&node, PROMPT));
    let mut ws = node.ws_welcomed("told");
    node.publish_ok(&event("told", "e", "1"), 1);
    assert_eq!(ws.next_event(PROMPT)["seq"], 1);

    // Event 2 is placed but never published (as if this node missed it): event 3
    // arrives after a gap. The resync names 2, the point before it; then 3 comes.
    redis
        .try_cmd(&["HINCRBY", "relay:v1:{told}", "n", "1"])
        .expect("redis");
    node.publish_ok(&event("told", "e", "3"), 1);
    let v = ws.next_json(PROMPT);
    assert_eq!(
        (v["type"].as_str(), v["seq"].as_u64()),
        (Some("resync"), Some(2)),
        "{v}"
    );
    let v = ws.next_event(PROMPT);
    assert_eq!(v["seq"], 3, "{v}");
    assert_eq!(node.metric("relay_resync_total", &[("reason", "gap")]), 1.0);

    // Redis loses writes (a failover to a lagging replica): its position is
    // behind the node's. The sockets are told, and the reused numbers are delivered,
    // not dropped as already seen.
    redis
        .try_cmd(&["HSET", "relay:v1:{told}", "n", "1"])
        .expect("redis");
    redis
        .try_cmd(&["CLIENT", "KILL", "TYPE", "pubsub"])
        .expect("redis");
    let old_epoch = ws.welcome["epoch"].clone();
    let v = ws.next_json(Duration::from_secs(8));
    assert_eq!(
        (v["type"].as_str(), v["seq"].as_u64()),
        (Some("resync"), Some(1)),
        "{v}"
    );
    // The numbers after 1 would be given again: Redis gets a new epoch, so a client
    // that was away holding a position in the old one resyncs too.
    let v = ws.next_json(Duration::from_secs(8));
    assert_eq!(v["type"], "resync", "{v}");
    assert_ne!(v["epoch"], old_epoch, "{v}");
    let new_epoch = v["epoch"].clone();
    assert!(wait_ready(&node, Duration::from_secs(6)));
    node.publish_ok(&event("told", "after", "2"), 1);
    let v = ws.next_event(PROMPT);
    assert_eq!(
        (v["event"].as_str(), v["seq"].as_u64()),
        (Some("after"), Some(2)),
        "{v}"
    );
    assert_eq!(v["epoch"], new_epoch);
    let since = format!("{}:3", old_epoch.as_str().expect("epoch"));
    let mut away = node.ws_resuming("told", &since);
    assert_eq!(
        away.next_json(PROMPT)["type"],
        "resync",
        "a position in the old epoch"
    );
    assert!(node.metric("relay_resync_total", &[("reason", "epoch")]) >= 2.0);
}

#[test]
fn a_script_flush_costs_a_reconnect_not_the_node() {
    let redis = Redis::start();
    let node = node_on(&redis);
    assert!(wait_ready(&node, PROMPT));
    let mut ws = node.ws_welcomed("flush");
    redis.try_cmd(&["SCRIPT", "FLUSH"]).expect("redis");
    // The first publish finds its script gone: 503, the bridge reconnects (loading
    // the scripts again), and publishing works again within the backoff.
    let accepted = wait_until(Duration::from_secs(6), || {
        node.publish(&event("flush", "e", "1")).status == 202
    });
    assert!(accepted, "publishes never recovered after SCRIPT FLUSH");
    let v = ws.next_json(PROMPT);
    assert_eq!(v["type"], "event", "{v}");
}

#[test]
fn event_streams_and_sockets_on_different_nodes_see_the_same_seq() {
    let redis = Redis::start();
    let a = node_with_history(&redis, "redis");
    let b = node_with_history(&redis, "redis");
    assert!(wait_ready(&a, PROMPT) && wait_ready(&b, PROMPT));
    let mut sse = sse_open(a.addr, &format!("token={}", token("mixed")), &[]);
    assert_eq!(sse.next(PROMPT).unwrap().event, "welcome");
    let mut ws = b.ws_welcomed("mixed");
    for i in 0..40 {
        let node = if i % 2 == 0 { &a } else { &b };
        node.publish_ok(&event("mixed", "e", &i.to_string()), 1);
    }
    let mut last_id = String::new();
    for i in 0..40u64 {
        let block = sse.next(PROMPT).unwrap();
        assert_eq!(block.event, "event");
        let from_ws = ws.next_event(PROMPT);
        let from_sse = block.json();
        assert_eq!(from_sse["data"], i);
        assert_eq!(
            (&from_sse["epoch"], &from_sse["seq"]),
            (&from_ws["epoch"], &from_ws["seq"]),
            "the two transports, on two nodes, disagree"
        );
        last_id = block.id.unwrap();
    }
    // The stream resumes on the other node from the Redis Stream.
    drop(sse);
    for i in 40..50 {
        a.publish_ok(&event("mixed", "e", &i.to_string()), 1);
    }
    let mut back = sse_open(
        b.addr,
        &format!("token={}", token("mixed")),
        &[&format!("Last-Event-ID: {last_id}")],
    );
    assert_eq!(back.next(PROMPT).unwrap().event, "welcome");
    for i in 40..50 {
        assert_eq!(back.next_event(PROMPT)["data"], i);
    }
}

#[test]
fn a_redis_cluster_over_tls_carries_sharded_pubsub() {
    let dir = fresh_dir("redis-cluster-tls");
    tls_certs(&dir);
    let ca = dir.join("ca.crt").display().to_string();
    let ports: Vec<u16> = (0..3).map(|_| cluster_port()).collect();
    let mut servers: Vec<Child> = ports
        .iter()
        .map(|p| {
            Command::new("redis-server")
                .args(tls_server_args(*p))
                .args(["--tls-cluster", "yes", "--tls-replication", "yes"])
                .args(["--cluster-enabled", "yes"])
                .args(["--cluster-config-file", &format!("nodes-{p}.conf")])
                .args(["--save", "", "--appendonly", "no"])
                .current_dir(&dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server")
        })
        .collect();
    let cli = |args: &[&str]| {
        Command::new("redis-cli")
            .args(["--tls", "--cacert", &ca])
            .args(args)
            .output()
            .expect("redis-cli")
    };
    for p in &ports {
        let up = wait_until(Duration::from_secs(5), || {
            String::from_utf8_lossy(&cli(&["-p", &p.to_string(), "PING"]).stdout).contains("PONG")
        });
        assert!(up, "TLS cluster node {p} did not come up");
    }
    let mut create: Vec<String> = vec!["--cluster".into(), "create".into()];
    create.extend(ports.iter().map(|p| format!("127.0.0.1:{p}")));
    create.extend(["--cluster-replicas", "0", "--cluster-yes"].map(String::from));
    let create: Vec<&str> = create.iter().map(String::as_str).collect();
    let out = cli(&create);
    assert!(
        out.status.success(),
        "cluster create: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    for p in &ports {
        let ok = wait_until(Duration::from_secs(10), || {
            String::from_utf8_lossy(&cli(&["-p", &p.to_string(), "CLUSTER", "INFO"]).stdout)
                .contains("cluster_state:ok")
        });
        assert!(ok, "TLS cluster not ok on {p}");
    }
    let seeds = ports
        .iter()
        .map(|p| format!("rediss://127.0.0.1:{p}"))
        .collect::<Vec<_>>()
        .join(",");
    let nodes: Vec<Node> = (0..2)
        .map(|_| {
            Node::builder()
                .env("REDIS_URL", &seeds)
                .env("REDIS_CLUSTER", "true")
                .env("REDIS_CA_FILE", &ca)
                .start()
        })
        .collect();
    let ready = nodes.iter().all(|n| wait_ready(n, PROMPT));
    let delivered = ready && {
        let sessions: Vec<String> = (0..6).map(|i| format!("tls-cl-{i}")).collect();
        let mut sockets: Vec<Ws> = sessions.iter().map(|s| nodes[1].ws_welcomed(s)).collect();
        for s in &sessions {
            nodes[0].publish_ok(&event(s, "secure", "1"), 1);
        }
        sockets
            .iter_mut()
            .all(|ws| ws.next_event(PROMPT)["event"] == "secure")
    };
    for s in &mut servers {
        let _ = s.kill();
        let _ = s.wait();
    }
    assert!(
        ready,
        "nodes not ready on a TLS cluster:\n{}",
        nodes[0].log()
    );
    assert!(
        delivered,
        "events did not cross nodes through the TLS cluster"
    );
}

#[test]
fn a_batch_through_redis_is_placed_whole_or_not_at_all_when_redis_dies_mid_batch() {
    let mut redis = Redis::start_persistent();
    let node = Node::builder()
        .env("REDIS_URL", &redis.url())
        .flag("--history", "redis")
        .flag("--history-events", "1000000")
        .start();
    assert!(wait_ready(&node, PROMPT));
    // Four publishers, each sending batches of 200 events over five sessions, with
    // ids naming the batch; Redis is killed while they run.
    let stop = Arc::new(AtomicBool::new(false));
    let answered: Arc<Mutex<Vec<(String, u16)>>> = Arc::default();
    let publishers: Vec<_> = (0..4)
        .map(|t| {
            let (stop, answered, addr) = (stop.clone(), answered.clone(), node.addr);
            std::thread::spawn(move || {
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    let batch_id = format!("b{t}x{n}");
                    let events: Vec<String> = (0..200)
                        .map(|k| {
                            format!(
                                r#"{{"session":"whole-{}","event":"e","id":"{batch_id}y{k}","data":{k}}}"#,
                                k % 5
                            )
                        })
                        .collect();
                    let resp =
                        http_request(addr, &post_events_request(&batch(&events), Some(API_KEY)));
                    answered.lock().unwrap().push((batch_id, resp.status));
                    n += 1;
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    redis.kill();
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    for p in publishers {
        p.join().unwrap();
    }
    redis.spawn(); // from its append-only file: what Redis acknowledged, no more
    assert!(wait_until(PROMPT, || redis.try_cmd(&["PING"]).is_some()));
    let mut dump = String::new();
    for s in 0..5 {
        let out = Command::new("redis-cli")
            .args(["-p", &redis.port.to_string(), "XRANGE"])
            .arg(format!("relay:v1:{{whole-{s}}}:h"))
            .args(["-", "+"])
            .output()
            .expect("redis-cli");
        dump.push_str(&String::from_utf8_lossy(&out.stdout));
    }
    let answered = answered.lock().unwrap().clone();
    let (mut whole, mut none) = (0, 0);
    for (batch_id, status) in &answered {
        let placed = dump.matches(&format!("\"{batch_id}y")).count();
        assert!(
            placed == 0 || placed == 200,
            "batch {batch_id} (answered {status}) has {placed} of its 200 events in Redis"
        );
        if *status == 202 {
            assert_eq!(
                placed, 200,
                "batch {batch_id} was answered 202 but is not all in Redis"
            );
        }
        if placed == 200 {
            whole += 1;
        } else {
            none += 1;
        }
    }
    eprintln!(
        "{} batches: {whole} placed whole, {none} not at all",
        answered.len()
    );
    assert!(
        whole > 0 && none > 0,
        "Redis was not killed mid-run: {whole} whole, {none} none"
    );
}
