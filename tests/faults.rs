//! Faults under load (#17), short versions for the suite: a node SIGKILLed among three
//! on one Redis with `--history redis` (its sockets fail over to the survivors and resume
//! `since=`); the node ↔ Redis link delayed, black-holed then healed, and reset through
//! [`FaultProxy`]; and a real split in network namespaces the test creates (the node's
//! veth down, then up).
//!
//! Every phase runs the load generator's `resume` kind (its checker counts silent losses
//! and duplicates against the publisher's `202` receipts) while the fault is applied, and
//! a watcher polls `/readyz` to time when the node noticed and when it recovered. The
//! figures are printed (`--nocapture`); `RELAY_FAULTS_FULL=1` runs the full-length
//! faults of docs/reliability.md (30 s black hole and split, 10 s delays).

// A test drives the node from its own threads, which may sleep and block.
#![allow(clippy::disallowed_methods)]

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use loadtest::fault_proxy::FaultProxy;
use loadtest::{run, scenario, Report};

fn full() -> bool {
    std::env::var_os("RELAY_FAULTS_FULL").is_some()
}

/// The length of a fault: `short` in the suite, `long` with `RELAY_FAULTS_FULL=1`.
fn hold(short: u64, long: u64) -> Duration {
    Duration::from_secs(if full() { long } else { short })
}

/// A `resume` run: `sessions` × 5 sockets, `rate` events/s for `duration`, no drops of
/// our own; the sockets spread over `nodes`, the publisher on the first.
fn resume_scenario(nodes: &[SocketAddr], rate: u64, duration: Duration, failover: bool) -> String {
    let urls: Vec<String> = nodes.iter().map(|a| format!("\"http://{a}\"")).collect();
    let sessions = if full() { 100 } else { 20 };
    format!(
        "kind = \"resume\"\nurl = \"http://{}\"\nnodes = [{}]\nsessions = {sessions}\nsockets_per_session = 5\n\
         rate = {rate}\nduration = \"{}ms\"\ndrain = \"15s\"\ndrop_fraction = 0.0\naway = \"100ms\"\n\
         failover = {failover}\npublishers = 8\nrequest_timeout = \"10s\"\nconnect_timeout = \"10s\"\n\
         max_errors = 1000000\n",
        nodes[0],
        urls.join(","),
        duration.as_millis()
    )
}

/// `/readyz` answers, polled every 25 ms until stopped: the moments it changed.
struct Watcher {
    changes: Arc<Mutex<Vec<(Instant, u16)>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Watcher {
    fn start(addr: SocketAddr) -> Watcher {
        let changes: Arc<Mutex<Vec<(Instant, u16)>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (c, s) = (changes.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut last = 0;
            while !s.load(Ordering::Relaxed) {
                let status = http_get(addr, "/readyz").status;
                if status != last {
                    c.lock().expect("watcher").push((Instant::now(), status));
                    last = status;
                }
                std::thread::sleep(Duration::from_millis(25));
            }
        });
        Watcher {
            changes,
            stop,
            thread: Some(thread),
        }
    }

    /// The first change to `status` at or after `from`.
    fn first(&self, status: u16, from: Instant) -> Option<Instant> {
        let c = self.changes.lock().expect("watcher");
        c.iter()
            .find(|(t, s)| *t >= from && *s == status)
            .map(|(t, _)| *t)
    }

    /// The last change to `status` (the node settled there, if it is the last change).
    fn last(&self, status: u16) -> Option<Instant> {
        let c = self.changes.lock().expect("watcher");
        c.iter().rev().find(|(_, s)| *s == status).map(|(t, _)| *t)
    }

    fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// What one fault phase showed.
struct Phase {
    name: String,
    report: Report,
    /// Fault applied → `/readyz` 503.
    noticed: Option<Duration>,
    /// Heal → `/readyz` 200 again (after its last 503).
    recovered: Option<Duration>,
}

impl Phase {
    /// The publishers' answers: `202` count, then every other outcome by name.
    fn status_mix(&self) -> BTreeMap<String, u64> {
        let mut mix = BTreeMap::new();
        mix.insert("202".to_owned(), self.report.requests_accepted);
        for (k, v) in &self.report.errors {
            if let Some(code) = k.strip_prefix("publish_http_") {
                mix.insert(code.to_owned(), *v);
            } else if k.starts_with("publish") {
                mix.insert(k.clone(), *v);
            }
        }
        mix
    }

    fn print(&self) {
        let r = &self.report;
        let ms =
            |d: Option<Duration>| d.map_or("-".to_owned(), |d| format!("{} ms", d.as_millis()));
        eprintln!(
            "FAULT {}: noticed {} | recovered {} | publishes {:?} (202 p99 {:.0} ms) | accepted {} | delivery p99 {:.0} ms | silent losses {} | duplicates {} | resyncs {} | failovers {} (p99 back {:.0} ms) | resume p99 {:.0} ms | socket errors {:?}",
            self.name,
            ms(self.noticed),
            ms(self.recovered),
            self.status_mix(),
            r.publish_latency_ms.p99,
            r.events_accepted,
            r.latency_ms.p99,
            r.silent_losses,
            r.duplicates,
            r.resyncs,
            r.failovers,
            r.failover_ms.p99,
            r.resume_ms.p99,
            r.errors
                .iter()
                .filter(|(k, _)| !k.starts_with("publish"))
                .collect::<BTreeMap<_, _>>(),
        );
    }

    /// No accepted event lost without a resync, none twice.
    fn assert_no_silent_loss(&self) {
        let r = &self.report;
        assert!(r.events_accepted > 0, "{}: nothing accepted", self.name);
        assert_eq!(r.silent_losses, 0, "{}: silent losses {r:?}", self.name);
        assert_eq!(r.duplicates, 0, "{}: duplicates", self.name);
    }
}

/// Runs the load for `lead + fault + tail` while `fault` is applied at `lead` and `heal`
/// after `fault`; times readiness around both.
fn phase(
    name: &str,
    nodes: &[SocketAddr],
    watch: SocketAddr,
    failover: bool,
    fault_len: Duration,
    fault: impl FnOnce(),
    heal: impl FnOnce(),
) -> Phase {
    let lead = Duration::from_secs(1);
    let tail = hold(3, 10);
    let text = resume_scenario(nodes, 200, lead + fault_len + tail, failover);
    let scn = scenario::from_str(&text, &[]).expect("scenario");
    let watcher = Watcher::start(watch);
    let load = std::thread::spawn(move || run(&scn, &loadtest_opts()).expect("load run"));
    std::thread::sleep(lead);
    let fault_at = Instant::now();
    fault();
    std::thread::sleep(fault_len);
    let heal_at = Instant::now();
    heal();
    let report = load.join().expect("load thread");
    let noticed = watcher
        .first(503, fault_at)
        .map(|t| t.saturating_duration_since(fault_at));
    let recovered = match watcher.last(503) {
        Some(t) if t >= fault_at => watcher
            .first(200, t)
            .map(|ok| ok.saturating_duration_since(heal_at)),
        _ => None,
    };
    watcher.stop();
    let p = Phase {
        name: name.to_owned(),
        report,
        noticed,
        recovered,
    };
    p.print();
    p
}

#[test]
fn redis_link_delayed_black_holed_and_reset_loses_no_accepted_event() {
    let redis = Redis::start();
    let proxy = FaultProxy::start("127.0.0.1:0", &format!("127.0.0.1:{}", redis.port))
        .expect("fault proxy");
    let node = Node::builder()
        .env("REDIS_URL", &format!("redis://127.0.0.1:{}", proxy.port()))
        .flag("--connect-rate", "0")
        .start();
    assert!(wait_ready(&node, PROMPT), "{}", node.log());
    let nodes = [node.addr];

    let p = phase(
        "delay 50 ms",
        &nodes,
        node.addr,
        false,
        hold(2, 10),
        || proxy.delay(Duration::from_millis(50)),
        || proxy.delay(Duration::ZERO),
    );
    p.assert_no_silent_loss();
    assert_eq!(p.noticed, None, "50 ms of delay turned the node unready");

    let p = phase(
        "delay 500 ms",
        &nodes,
        node.addr,
        false,
        hold(2, 10),
        || proxy.delay(Duration::from_millis(500)),
        || proxy.delay(Duration::ZERO),
    );
    p.assert_no_silent_loss();

    let p = phase(
        "black hole",
        &nodes,
        node.addr,
        false,
        hold(4, 30),
        || proxy.black_hole(),
        || proxy.heal(),
    );
    p.assert_no_silent_loss();
    let noticed = p.noticed.expect("readyz never 503 in the black hole");
    assert!(
        noticed < Duration::from_secs(8),
        "noticed after {noticed:?}"
    );
    let recovered = p.recovered.expect("readyz never 200 after the heal");
    assert!(
        recovered < Duration::from_secs(15),
        "recovered after {recovered:?}"
    );
    assert!(p.status_mix().contains_key("503"), "{:?}", p.status_mix());

    let p = phase(
        "reset",
        &nodes,
        node.addr,
        false,
        Duration::from_secs(1),
        || {
            proxy.reset();
        },
        || {},
    );
    p.assert_no_silent_loss();
    assert!(wait_ready(&node, PROMPT), "not ready after the reset");
}

#[test]
fn a_sigkilled_node_s_sockets_fail_over_and_resume_without_silent_loss() {
    let redis = Redis::start();
    let start = || {
        Node::builder()
            .env("REDIS_URL", &redis.url())
            .flag("--history", "redis")
            .flag("--connect-rate", "0")
            .start()
    };
    let (a, b, mut c) = (start(), start(), start());
    for n in [&a, &b, &c] {
        assert!(wait_ready(n, PROMPT), "{}", n.log());
    }
    let nodes = [a.addr, b.addr, c.addr];
    let pid = c.pid;
    let p = phase(
        "SIGKILL 1 of 3 nodes",
        &nodes,
        a.addr,
        true,
        Duration::from_millis(100),
        || {
            // SAFETY: plain kill(2) on our own child's pid.
            let rc = unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            assert_eq!(rc, 0, "kill(SIGKILL)");
        },
        || {},
    );
    assert!(c.wait_exit(PROMPT).is_some(), "the node did not die");
    p.assert_no_silent_loss();
    let sockets = p.report.sockets_connected;
    // A third of the sockets were on the killed node; each came back once.
    assert!(
        p.report.failovers * 3 >= sockets * 9 / 10,
        "{} failovers of {sockets} sockets",
        p.report.failovers
    );
    assert_eq!(p.report.failover_ms.count, p.report.failovers);
    assert_eq!(p.noticed, None, "a surviving node turned unready");
}

/// Network namespaces this test made, deleted (with their veths) on drop.
struct Netns {
    names: Vec<String>,
}

impl Netns {
    fn ip(args: &[&str]) -> Result<(), String> {
        let out = Command::new("ip")
            .args(args)
            .output()
            .map_err(|e| format!("ip {args:?}: {e}"))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "ip {args:?}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }

    /// Namespace `a` (the node's) and `b` (Redis's) joined by a veth pair, `10.213.N.1`
    /// in `a`, `10.213.N.2` in `b`, loopback up in both. Nothing in the host's namespace.
    fn pair(tag: &str, net: u8) -> Result<Netns, String> {
        let (a, b) = (format!("{tag}a"), format!("{tag}b"));
        let mut ns = Netns { names: Vec::new() };
        for n in [&a, &b] {
            Netns::ip(&["netns", "add", n])?;
            ns.names.push(n.clone());
        }
        let (va, vb) = (format!("{tag}va"), format!("{tag}vb"));
        let addr_a = format!("10.213.{net}.1/30");
        let addr_b = format!("10.213.{net}.2/30");
        for cmd in [
            vec!["-n", &a, "link", "set", "lo", "up"],
            vec!["-n", &b, "link", "set", "lo", "up"],
            vec![
                "-n", &a, "link", "add", &va, "type", "veth", "peer", "name", &vb, "netns", &b,
            ],
            vec!["-n", &a, "addr", "add", &addr_a, "dev", &va],
            vec!["-n", &b, "addr", "add", &addr_b, "dev", &vb],
            vec!["-n", &a, "link", "set", &va, "up"],
            vec!["-n", &b, "link", "set", &vb, "up"],
        ] {
            Netns::ip(&cmd)?;
        }
        Ok(ns)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for n in &self.names {
            let _ = Netns::ip(&["netns", "del", n]);
        }
    }
}

/// Moves the calling thread (only it, and what it spawns after) into namespace `name`.
fn enter_netns(name: &str) -> Result<(), String> {
    let f = std::fs::File::open(format!("/run/netns/{name}")).map_err(|e| e.to_string())?;
    use std::os::fd::AsRawFd;
    // SAFETY: setns(2) on a namespace file we opened; it affects this thread only.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error().to_string())
    }
}

#[test]
fn a_network_split_between_node_and_redis_turns_the_node_unready_and_heals() {
    let tag = format!("rf{}", std::process::id() % 100_000);
    let net = (std::process::id() % 250) as u8;
    let ns = match Netns::pair(&tag, net) {
        Ok(ns) => ns,
        Err(e) => {
            eprintln!("SKIPPED: network namespaces are not permitted here ({e})");
            return;
        }
    };
    let (a, b) = (ns.names[0].clone(), ns.names[1].clone());
    let veth = format!("{tag}va");
    // The node, its load and the watcher live in namespace a: a thread of our own enters
    // it, and everything it starts is born there. Redis lives in b.
    let body = std::thread::spawn(move || {
        enter_netns(&a).expect("enter the node's namespace");
        let redis_port = 6379;
        let mut redis = std::process::Command::new("ip")
            .args(["netns", "exec", &b, "redis-server", "--port"])
            .arg(redis_port.to_string())
            .args([
                "--bind",
                &format!("10.213.{net}.2"),
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "no",
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("redis-server in namespace b");
        let node = Node::builder()
            .env("REDIS_URL", &format!("redis://10.213.{net}.2:{redis_port}"))
            .flag("--connect-rate", "0")
            .start();
        let ready = wait_ready(&node, PROMPT);
        let p = ready.then(|| {
            phase(
                "split (veth down)",
                &[node.addr],
                node.addr,
                false,
                hold(4, 30),
                || Netns::ip(&["-n", &a, "link", "set", &veth, "down"]).expect("veth down"),
                || Netns::ip(&["-n", &a, "link", "set", &veth, "up"]).expect("veth up"),
            )
        });
        let log = node.log();
        drop(node);
        let _ = redis.kill();
        let _ = redis.wait();
        (p, log)
    });
    let (p, log) = body.join().expect("namespace thread");
    drop(ns);
    let p = p.unwrap_or_else(|| panic!("node in the namespace never ready:\n{log}"));
    p.assert_no_silent_loss();
    let noticed = p.noticed.expect("readyz never 503 during the split");
    assert!(
        noticed < Duration::from_secs(8),
        "noticed after {noticed:?}"
    );
    let recovered = p
        .recovered
        .expect("readyz never 200 after the split healed");
    assert!(
        recovered < Duration::from_secs(15),
        "recovered after {recovered:?}"
    );
}
