//! Cost grows with work, not with population: a one-shard node holding 10,000 idle
//! WebSockets (pings every 25 s, none due in the window) spends almost no CPU. The
//! node's user + system time over 10 s is read from `/proc/PID/stat`; a shard that
//! walked every socket each 250 ms spends several times the bound here (see the
//! figures in docs/benchmarks.md, "Idle cost").
//!
//! Set `RELAY_TEST_BINARY` to run the same test against another build.

// A test drives the node from its own threads, which may sleep and block.
#![allow(clippy::disallowed_methods)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use loadtest::{run, scenario, RunOptions};

const SOCKETS: u64 = 10_000;
/// CPU the node may spend over the 10 s window, in clock ticks (10 ms each). On
/// the 2-core development machine, with debug builds as the suite runs them: the
/// full-scan build (a8fa88b) spent 18 ticks, the deadline-driven one 0 to 1.
const MAX_TICKS: u64 = 5;

/// utime + stime of `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc/PID/stat");
    // Fields after the command name (which may hold spaces), from field 3 on.
    let rest = &stat[stat.rfind(')').expect("comm") + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    let utime: u64 = f[11].parse().expect("utime");
    let stime: u64 = f[12].parse().expect("stime");
    utime + stime
}

#[test]
fn ten_thousand_idle_sockets_cost_a_one_shard_node_almost_no_cpu() {
    let node = Node::builder()
        .flag("--shards", "1")
        .flag("--connect-rate", "0")
        .flag("--ping-interval", "25s")
        .flag("--ping-timeout", "60s")
        .start();
    let scn = scenario::from_str(
        &format!(
            "kind = \"idle-hold\"\nurl = \"http://{}\"\nsessions = {}\nsockets_per_session = 10\nduration = \"16s\"\nsettle = \"0s\"\nconnect_concurrency = 256\nsource_addrs = 4\nmax_errors = 0\n",
            node.addr,
            SOCKETS / 10
        ),
        &[],
    )
    .expect("scenario");
    let opts = RunOptions {
        secret: Some(SECRET.into()),
        api_key: Some(API_KEY.into()),
        procs: 1,
        threads: Some(1),
        ..RunOptions::default()
    };
    let load = std::thread::spawn(move || run(&scn, &opts).expect("run"));
    let started = Instant::now();
    assert!(
        wait_until(Duration::from_secs(30), || node
            .metric("relay_connected_clients", &[])
            == SOCKETS as f64),
        "not all sockets connected"
    );
    // Let the handshakes' work finish, then measure a window with no ping due
    // (the first ones come 25 s after each socket's welcome).
    std::thread::sleep(Duration::from_secs(1));
    let before = cpu_ticks(node.pid);
    std::thread::sleep(Duration::from_secs(10));
    let after = cpu_ticks(node.pid);
    assert!(
        started.elapsed() < Duration::from_secs(24),
        "the window ran into the first pings"
    );
    let report = load.join().expect("load thread");
    assert!(report.passed, "{:?} {:?}", report.failures, report.errors);
    assert_eq!(report.sockets_connected, SOCKETS);
    let spent = after - before;
    eprintln!("node CPU over 10 s with {SOCKETS} idle sockets: {spent} ticks (10 ms each)");
    assert!(
        spent <= MAX_TICKS,
        "{spent} ticks of CPU over 10 s for idle sockets (bound {MAX_TICKS})"
    );
}
