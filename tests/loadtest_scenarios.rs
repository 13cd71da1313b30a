//! The load generator against real nodes: a seconds-long fanout loses nothing
//! and fills its histogram, over WebSockets, event streams and long-polls; slow
//! consumers are seen closed with 4008; cross-node fan-out through a real Redis
//! loses nothing; resumed sockets and streams lose nothing silently.

mod common;

use std::process::{Command, Stdio};

use common::*;
use loadtest::{run, scenario};

/// A node for load: the per-address connect limit would refuse a storm from one
/// loopback address, which is the point of it, not of these tests.
fn load_node() -> Node {
    Node::builder().flag("--connect-rate", "0").start()
}

#[test]
fn seconds_long_fanout_loses_nothing_and_fills_the_histogram() {
    let node = load_node();
    let scn = scenario::from_str(
        &format!(
            "kind = \"fanout\"\nurl = \"http://{}\"\nsessions = 20\nsockets_per_session = 5\nrate = 500\nduration = \"2s\"\nbatch = 1\n",
            node.addr
        ),
        &[],
    )
    .expect("scenario");
    let r = run(&scn, &loadtest_opts()).expect("run");
    assert!(r.passed, "{:?} {:?}", r.failures, r.errors);
    assert_eq!(r.sockets_connected, 100);
    assert_eq!(r.events_accepted, 1000);
    assert_eq!(r.lost, 0);
    assert_eq!(r.deliveries, 1000 * 5);
    assert_eq!(
        r.latency_ms.count, r.deliveries,
        "every delivery is in the histogram"
    );
    assert!(
        r.latency_ms.p50 > 0.0 && r.latency_ms.max < 5_000.0,
        "{:?}",
        r.latency_ms
    );
    // The node agrees.
    assert_eq!(node.metric("relay_deliveries_total", &[]), 5000.0);
}

/// A 2-second fan-out over another transport: every event to every subscriber,
/// each delivery timed. `sessions` × 5 subscribers, `rate` events/s.
fn fanout_over(transport: &str, sessions: u64, rate: u64) -> (Node, loadtest::Report) {
    let node = load_node();
    let scn = scenario::from_str(
        &format!(
            "kind = \"fanout\"\nurl = \"http://{}\"\nsessions = {sessions}\nsockets_per_session = 5\nrate = {rate}\nduration = \"2s\"\nbatch = 1\n",
            node.addr
        ),
        &[format!("transport={transport}")],
    )
    .expect("scenario");
    let r = run(&scn, &loadtest_opts()).expect("run");
    assert!(r.passed, "{transport}: {:?} {:?}", r.failures, r.errors);
    assert_eq!(r.sockets_connected, sessions * 5);
    assert_eq!(r.events_accepted, 2 * rate);
    assert_eq!(r.lost, 0, "{transport}");
    assert_eq!(r.excess, 0, "{transport}");
    assert_eq!(r.deliveries, 2 * rate * 5, "{transport}");
    assert_eq!(r.latency_ms.count, r.deliveries, "{transport}");
    (node, r)
}

#[test]
fn seconds_long_fanout_over_event_streams_loses_nothing() {
    let (node, r) = fanout_over("sse", 20, 500);
    assert!(r.latency_ms.max < 5_000.0, "{:?}", r.latency_ms);
    // The node counts them as event-stream deliveries.
    assert_eq!(
        node.metric("relay_deliveries_total", &[("transport", "sse")]),
        5000.0
    );
    assert_eq!(
        node.metric("relay_deliveries_total", &[("transport", "ws")]),
        0.0
    );
}

#[test]
fn seconds_long_fanout_over_long_polls_loses_nothing() {
    // Lighter: every answer costs the node a connection, a token check and a
    // subscription, and this node is a debug build sharing the machine with the
    // other tests.
    let (node, _) = fanout_over("poll", 10, 200);
    // Events that came while no poll was waiting are answered from history by the
    // next one: the node counts those as replays, the rest as poll deliveries.
    let live = node.metric("relay_deliveries_total", &[("transport", "poll")]);
    assert!(live > 0.0 && live <= 2000.0, "{live}");
}

#[test]
fn slow_consumers_are_closed_with_4008_and_healthy_sockets_lose_nothing() {
    let node = Node::builder()
        .flag("--connect-rate", "0")
        .flag("--max-outbound-bytes", "65536")
        .start();
    let scn = scenario::from_str(
        &format!(
            "kind = \"slow-consumers\"\nurl = \"http://{}\"\nsessions = 2\nsockets_per_session = 5\nslow_percent = 20\nrate = 2000\nevent_bytes = 4000\nduration = \"2s\"\ndrain = \"1s\"\n",
            node.addr
        ),
        &[],
    )
    .expect("scenario");
    let r = run(&scn, &loadtest_opts()).expect("run");
    assert_eq!(r.lost, 0, "healthy sockets lost events");
    assert_eq!(
        r.close_codes.get("4008"),
        Some(&2),
        "{:?} {:?}",
        r.close_codes,
        r.errors
    );
    assert!(r.passed, "{:?}", r.failures);
}

#[test]
fn cross_node_fanout_through_redis_loses_nothing() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("port");
    let mut redis = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server on PATH (scripts/test installs it)");
    let url = format!("redis://127.0.0.1:{port}");
    let nodes: Vec<Node> = (0..3)
        .map(|_| {
            Node::builder()
                .flag("--connect-rate", "0")
                .env("REDIS_URL", &url)
                .start()
        })
        .collect();
    for n in &nodes {
        assert!(
            wait_until(PROMPT, || n.get("/readyz").status == 200),
            "node not ready"
        );
    }
    let scn = scenario::from_str(
        &format!(
            "kind = \"cross-node\"\nurl = \"http://{}\"\nnodes = [\"http://{}\", \"http://{}\"]\nsessions = 10\nsockets_per_session = 4\nrate = 300\nduration = \"2s\"\ndrain = \"2s\"\n",
            nodes[0].addr, nodes[1].addr, nodes[2].addr
        ),
        &[],
    )
    .expect("scenario");
    let r = run(&scn, &loadtest_opts()).expect("run");
    let _ = redis.kill();
    let _ = redis.wait();
    assert!(r.passed, "{:?} {:?}", r.failures, r.errors);
    assert_eq!(r.lost, 0);
    assert_eq!(r.deliveries, 600 * 4);
    assert!(r.latency_ms.count > 0);
}

#[test]
fn wrong_secret_is_counted_as_handshake_401_and_fails_the_run() {
    let node = load_node();
    let scn = scenario::from_str(
        &format!(
            "kind = \"connect-storm\"\nurl = \"http://{}\"\nsessions = 2\nsockets_per_session = 3\n",
            node.addr
        ),
        &[],
    )
    .expect("scenario");
    let mut wrong = loadtest_opts();
    wrong.secret = Some("another-secret-0123456789abcdef01234".into());
    let r = run(&scn, &wrong).expect("run");
    assert!(!r.passed);
    assert_eq!(r.errors.get("handshake_http_401"), Some(&6));
    let r = run(&scn, &loadtest_opts()).expect("run");
    assert!(r.passed, "{:?}", r.failures);
    assert_eq!(r.handshake_ms.count, 6);
}

#[test]
fn non_loopback_targets_are_refused_before_any_traffic() {
    let scn = scenario::from_str("kind = \"fanout\"\nurl = \"http://10.1.2.3:3000\"\n", &[])
        .expect("scenario");
    let err = run(&scn, &loadtest_opts()).expect_err("refused");
    assert!(err.to_string().contains("is not on this machine"), "{err}");
    assert!(err.to_string().contains("--allow-remote"), "{err}");
    // The flag accepts it (checked only: no test sends traffic off the machine).
    let remote = loadtest::target::TargetOptions {
        reach: loadtest::target::Reach::Remote,
        ca_file: None,
    };
    loadtest::run::check_targets(&scn, &remote).expect("allowed with --allow-remote");
}

#[test]
fn resume_drops_and_reconnects_sockets_without_silent_loss() {
    let node = load_node();
    let scn = scenario::from_str(
        &format!(
            "kind = \"resume\"\nurl = \"http://{}\"\nsessions = 20\nsockets_per_session = 5\nrate = 500\nduration = \"3s\"\ndrain = \"2s\"\ndrop_fraction = 0.1\naway = \"200ms\"\n",
            node.addr
        ),
        &[],
    )
    .expect("scenario");
    let r = run(&scn, &loadtest_opts()).expect("run");
    assert!(r.passed, "{:?} {:?}", r.failures, r.errors);
    assert_eq!(r.sockets_connected, 100);
    assert_eq!(r.events_accepted, 1500);
    assert_eq!(r.silent_losses, 0, "{r:?}");
    assert_eq!(r.duplicates, 0);
    assert!(r.resumes > 0, "no socket resumed: {} drops", r.drops);
    assert!(r.replayed > 0 || r.resyncs > 0, "resumes caught nothing up");
    assert!(r.latency_ms.count > 0);
    // The node replayed what the dropped sockets missed.
    assert!(node.metric("relay_replays_total", &[]) > 0.0);
}

#[test]
fn half_the_drops_coming_back_fresh_are_not_counted_as_losses() {
    let node = load_node();
    let scn = scenario::from_str(
        &format!(
            "kind = \"resume\"\nurl = \"http://{}\"\nsessions = 20\nsockets_per_session = 5\nrate = 500\nduration = \"3s\"\ndrain = \"2s\"\ndrop_fraction = 0.1\nresume_share = 0.5\naway = \"200ms\"\n",
            node.addr
        ),
        &[],
    )
    .expect("scenario");
    let r = run(&scn, &loadtest_opts()).expect("run");
    assert!(r.passed, "{:?} {:?}", r.failures, r.errors);
    assert_eq!(r.silent_losses, 0, "{r:?}");
    assert_eq!(r.duplicates, 0);
    assert!(r.resumes > 0 && r.fresh_reconnects > 0, "{r:?}");
    assert_eq!(r.resumes + r.fresh_reconnects, r.drops);
}

#[test]
fn resumed_event_streams_replay_from_last_event_id_without_silent_loss() {
    let node = load_node();
    let scn = scenario::from_str(
        &format!(
            "kind = \"resume\"\ntransport = \"sse\"\nurl = \"http://{}\"\nsessions = 10\nsockets_per_session = 5\nrate = 300\nduration = \"3s\"\ndrain = \"2s\"\ndrop_fraction = 0.2\naway = \"200ms\"\n",
            node.addr
        ),
        &[],
    )
    .expect("scenario");
    let r = run(&scn, &loadtest_opts()).expect("run");
    assert!(r.passed, "{:?} {:?}", r.failures, r.errors);
    assert_eq!(r.events_accepted, 900);
    assert_eq!(r.silent_losses, 0, "{r:?}");
    assert_eq!(r.duplicates, 0);
    assert!(r.resumes > 0, "no stream resumed: {} drops", r.drops);
    assert!(r.replayed > 0 || r.resyncs > 0, "resumes caught nothing up");
    assert!(node.metric("relay_replays_total", &[]) > 0.0);
}
