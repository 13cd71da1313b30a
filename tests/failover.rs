//! Fault 3 of #17: Redis fails over under Sentinel. The relay does not speak the Sentinel
//! protocol; `REDIS_URL` names one address. A node whose address loses its primary must
//! turn unready and stay so, never "ready" while it cannot publish: not while the address
//! is dead, and not when it comes back as a replica of the promoted one (a replica takes
//! subscriptions but refuses every publish).

// A test drives the node from its own threads, which may sleep and block.
#![allow(clippy::disallowed_methods)]

mod common;

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A `redis-server` with extra arguments, killed on drop.
struct Server(Child);

impl Server {
    fn start(args: &[&str]) -> Server {
        let child = Command::new("redis-server")
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server on PATH");
        Server(child)
    }

    fn redis(port: u16, extra: &[&str]) -> Server {
        let port = port.to_string();
        let mut args = vec![
            "--port",
            &port,
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ];
        args.extend_from_slice(extra);
        let s = Server::start(&args);
        let r = Redis::at(port.parse().expect("port"));
        assert!(
            wait_until(Duration::from_secs(5), || r.try_cmd(&["PING"]).is_some()),
            "redis-server on {port} did not answer"
        );
        s
    }

    fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The primary's port Sentinel names for `relay`, if it answers.
fn sentinel_primary(sentinel: &Redis) -> Option<u16> {
    let reply = sentinel.try_cmd(&["SENTINEL", "get-master-addr-by-name", "relay"])?;
    reply.lines().last()?.trim().parse().ok()
}

#[test]
fn a_node_on_a_failed_over_primary_s_address_turns_unready_and_stays_so_as_a_replica() {
    let (p, r, s) = (free_port(), free_port(), free_port());
    let mut primary = Server::redis(p, &[]);
    let replica_of = format!("127.0.0.1 {p}");
    let _replica = Server::redis(r, &["--replicaof", &replica_of]);
    let dir = fresh_dir("sentinel");
    let conf = dir.join("sentinel.conf");
    std::fs::write(
        &conf,
        format!(
            "port {s}\nbind 127.0.0.1\ndir {}\nsentinel monitor relay 127.0.0.1 {p} 1\n\
             sentinel down-after-milliseconds relay 1000\nsentinel failover-timeout relay 5000\n",
            dir.display()
        ),
    )
    .expect("sentinel.conf");
    let conf = conf.display().to_string();
    let _sentinel = Server::start(&[&conf, "--sentinel"]);
    let sentinel = Redis::at(s);
    assert!(
        wait_until(PROMPT, || sentinel_primary(&sentinel) == Some(p)),
        "sentinel does not watch the primary"
    );

    // Two nodes on the primary's address; events flow between them.
    let start = || {
        Node::builder()
            .env("REDIS_URL", &format!("redis://127.0.0.1:{p}"))
            .start()
    };
    let (a, b) = (start(), start());
    assert!(wait_ready(&a, PROMPT) && wait_ready(&b, PROMPT));
    let mut ws = b.ws_welcomed("fo");
    a.publish_ok(&event("fo", "before", "1"), 1);
    assert_eq!(ws.next_event(PROMPT)["event"], "before");

    // The primary dies; Sentinel promotes the replica.
    primary.kill();
    let killed = Instant::now();
    assert!(
        wait_until(PROMPT, || a.get("/readyz").status == 503),
        "node stayed ready with its primary dead"
    );
    let unready_after = killed.elapsed();
    assert!(
        wait_until(Duration::from_secs(30), || sentinel_primary(&sentinel)
            == Some(r)),
        "sentinel did not fail over"
    );
    let promoted_after = killed.elapsed();
    eprintln!(
        "FAILOVER unready after {unready_after:?}, replica promoted after {promoted_after:?}"
    );
    // Dead address: unready, publishes refused with 503, for as long as it is dead.
    for _ in 0..10 {
        assert_eq!(a.get("/readyz").status, 503);
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(a.publish(&event("fo", "during", "1")).status, 503);

    // The old address comes back as a replica of the new primary (what Sentinel makes of
    // a returning primary): it answers, takes subscriptions, refuses writes. The node
    // must not call that ready.
    let new_primary = format!("127.0.0.1 {r}");
    let _returned = Server::redis(p, &["--replicaof", &new_primary]);
    let watch_until = Instant::now() + Duration::from_secs(4);
    while Instant::now() < watch_until {
        assert_eq!(
            a.get("/readyz").status,
            503,
            "ready on a replica:\n{}",
            a.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let resp = a.publish(&event("fo", "on-replica", "1"));
    assert_eq!(resp.status, 503, "{}", resp.body_str());
    // The bridge names the cause when it next reconnects, which its backoff may put
    // after the 4 s watched above on a busy machine.
    assert!(
        wait_until(Duration::from_secs(20), || a
            .log()
            .contains("read-only replica")),
        "the log names the cause:\n{}",
        a.log()
    );

    // A node pointed at the promoted primary carries events again: nothing in Redis
    // was lost with the old primary that the relay needed.
    let c = Node::builder()
        .env("REDIS_URL", &format!("redis://127.0.0.1:{r}"))
        .start();
    assert!(wait_ready(&c, PROMPT), "{}", c.log());
    let mut ws = c.ws_welcomed("fo2");
    c.publish_ok(&event("fo2", "after", "1"), 1);
    assert_eq!(ws.next_event(PROMPT)["event"], "after");
}
