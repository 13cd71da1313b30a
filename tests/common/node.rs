//! The node under test: [`NodeBuilder`] starts a real `relay serve` process on port 0 with
//! the test secrets, reads its listening line(s), and keeps its stderr in a log file;
//! [`Node`] is the handle tests drive it through (HTTP, sockets, metrics, signals, RSS).
//!
//! Owns the process's lifetime (killed on drop) and its log file. It does not speak any
//! protocol itself: requests go through [`super::http`], sockets through [`super::ws`],
//! metrics are read with [`super::prom`].

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::json;

use super::cli::scratch_dir;
use super::http::{http_get, http_request, post_events_request, HttpResponse};
use super::prom::metric_value;
use super::token::token;
use super::token::{API_KEY, SECRET};
use super::wait::PROMPT;
use super::ws::{ws_connect, Ws};

/// How to start a node: extra flags and environment on top of the test defaults.
pub struct NodeBuilder {
    args: Vec<String>,
    envs: Vec<(String, String)>,
    expect_admin: bool,
    dir: Option<PathBuf>,
}

impl NodeBuilder {
    /// Adds one command-line argument to `relay serve`.
    pub fn arg(mut self, arg: &str) -> Self {
        if arg == "--admin-port" {
            self.expect_admin = true;
        }
        self.args.push(arg.to_string());
        self
    }

    /// Adds a flag and its value, e.g. `.flag("--max-connections", "2")`.
    pub fn flag(self, name: &str, value: &str) -> Self {
        self.arg(name).arg(value)
    }

    /// Sets an environment variable for the node.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        if key == "ADMIN_PORT" {
            self.expect_admin = true;
        }
        self.envs.retain(|(k, _)| k != key);
        self.envs.push((key.to_string(), value.to_string()));
        self
    }

    /// Removes one of the default environment variables (secret or API key).
    pub fn without_env(mut self, key: &str) -> Self {
        self.envs.retain(|(k, _)| k != key);
        self
    }

    /// Runs the node in `dir` (for `.env.local` tests) instead of an empty scratch dir.
    pub fn dir(mut self, dir: &std::path::Path) -> Self {
        self.dir = Some(dir.to_path_buf());
        self
    }

    /// The command that would be run, for tests that look at start-up failures.
    pub fn command(&self) -> Command {
        // RELAY_TEST_BINARY runs the tests against another build (an A/B of a
        // behaviour the suite measures, e.g. tests/idle_cost.rs on an older commit).
        let bin = std::env::var_os("RELAY_TEST_BINARY")
            .unwrap_or_else(|| env!("CARGO_BIN_EXE_relay").into());
        let mut cmd = Command::new(bin);
        cmd.arg("serve").args(["--host", "127.0.0.1"]);
        if !self.args.iter().any(|a| a == "--shards") {
            cmd.args(["--shards", "2"]);
        }
        cmd.args(&self.args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("LOG_LEVEL", "info")
            .current_dir(self.dir.clone().unwrap_or_else(scratch_dir));
        if !self.envs.iter().any(|(k, _)| k == "PORT") {
            cmd.args(["--port", "0"]);
        }
        for (k, v) in &self.envs {
            cmd.env(k, v);
        }
        cmd
    }

    /// Starts the node and waits for its `relay listening on` line.
    pub fn start(self) -> Node {
        let log_path = log_path();
        let log = File::create(&log_path).expect("create node log file");
        let mut cmd = self.command();
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log));
        let mut child = cmd.spawn().expect("spawn relay serve");
        let stdout = child.stdout.take().expect("stdout piped");
        let (tx, rx) = mpsc::channel::<String>();
        std::thread::spawn(move || {
            // Keep draining stdout for the life of the node so it never blocks on a full pipe.
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    // Nobody listens any more; keep reading to drain the pipe.
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut addr = None;
        let mut admin_addr = None;
        while addr.is_none() || (self.expect_admin && admin_addr.is_none()) {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(rest) = line.strip_prefix("relay listening on ") {
                        addr = Some(
                            rest.trim()
                                .parse::<SocketAddr>()
                                .unwrap_or_else(|e| panic!("bad listening line {line:?}: {e}")),
                        );
                    } else if let Some(rest) = line.strip_prefix("relay admin listening on ") {
                        admin_addr =
                            Some(rest.trim().parse::<SocketAddr>().unwrap_or_else(|e| {
                                panic!("bad admin listening line {line:?}: {e}")
                            }));
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    let status = child.wait().ok();
                    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                    panic!(
                        "node did not print its listening line(s) (status {status:?}); stderr:\n{}",
                        tail(&log, 3000)
                    );
                }
            }
        }
        let pid = child.id();
        Node {
            child,
            addr: addr.unwrap(),
            admin_addr,
            pid,
            log_path,
            exited: None,
        }
    }
}

/// A running `relay serve` process; killed when dropped.
pub struct Node {
    child: Child,
    /// The public address (sockets and HTTP).
    pub addr: SocketAddr,
    /// The admin address, when the node was started with an admin port.
    pub admin_addr: Option<SocketAddr>,
    pub pid: u32,
    pub log_path: PathBuf,
    exited: Option<ExitStatus>,
}

impl Node {
    /// A node with the test defaults: 2 shards, known secret and API key.
    pub fn builder() -> NodeBuilder {
        NodeBuilder {
            args: Vec::new(),
            envs: vec![
                ("JWT_SIGNING_SECRET".into(), SECRET.into()),
                ("RELAY_API_KEY".into(), API_KEY.into()),
            ],
            expect_admin: false,
            dir: None,
        }
    }

    pub fn start() -> Node {
        Node::builder().start()
    }

    /// The address that answers `/metrics` and `/latency`.
    pub fn ops_addr(&self) -> SocketAddr {
        self.admin_addr.unwrap_or(self.addr)
    }

    /// The base URL for `relay publish --url`.
    pub fn http_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn get(&self, path: &str) -> HttpResponse {
        http_get(self.addr, path)
    }

    /// `POST /events?wait=delivered` with the right key.
    pub fn publish_waiting(&self, body: &str) -> HttpResponse {
        let req = post_events_request(body, Some(API_KEY)).replacen(
            "POST /events ",
            "POST /events?wait=delivered ",
            1,
        );
        http_request(self.addr, &req)
    }

    /// `POST /events` with the right key.
    pub fn publish(&self, body: &str) -> HttpResponse {
        http_request(self.addr, &post_events_request(body, Some(API_KEY)))
    }

    /// Publishes and insists on `202 {"accepted": n}`.
    pub fn publish_ok(&self, body: &str, n: u64) {
        let resp = self.publish(body);
        assert_eq!(resp.status, 202, "publish refused: {}", resp.body_str());
        assert_eq!(
            resp.json()["accepted"],
            json!(n),
            "body {}",
            resp.body_str()
        );
    }

    pub fn metrics(&self) -> String {
        let resp = http_get(self.ops_addr(), "/metrics");
        assert_eq!(resp.status, 200, "GET /metrics: {}", resp.body_str());
        resp.body_str()
    }

    /// The sum of every series of `name` whose labels include `labels` (0 when absent).
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        metric_value(&self.metrics(), name, labels).unwrap_or(0.0)
    }

    /// Polls `/metrics` until `name{labels}` satisfies `pred`; returns the last value.
    pub fn wait_metric(
        &self,
        name: &str,
        labels: &[(&str, &str)],
        timeout: Duration,
        pred: impl Fn(f64) -> bool,
    ) -> f64 {
        let deadline = Instant::now() + timeout;
        loop {
            let v = self.metric(name, labels);
            if pred(v) || Instant::now() >= deadline {
                return v;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn sigterm(&self) {
        // SAFETY: plain kill(2) on our own child's pid.
        let rc = unsafe { libc::kill(self.pid as libc::pid_t, libc::SIGTERM) };
        assert_eq!(rc, 0, "kill(SIGTERM) failed");
    }

    /// Waits for the process to exit; `None` if it is still running after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.exited {
                return Some(s);
            }
            if let Ok(Some(s)) = self.child.try_wait() {
                self.exited = Some(s);
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Resident set size of the node, in KiB, from /proc/PID/status.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid))
            .expect("read /proc/PID/status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .expect("VmRSS in /proc/PID/status")
    }

    /// The node's stderr so far (for failure messages).
    pub fn log(&self) -> String {
        let log = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        tail(&log, 4000).to_string()
    }

    /// Opens a WebSocket for `session` with a fresh token in `?token=`; panics if refused.
    pub fn ws(&self, session: &str) -> Ws {
        let token = token(session);
        match ws_connect(self.addr, &format!("/ws?token={token}"), &[]) {
            Ok((ws, _)) => ws,
            Err(e) => panic!("socket for {session} refused: {e:?}"),
        }
    }

    /// Opens a WebSocket for `session` and reads its welcome frame.
    pub fn ws_welcomed(&self, session: &str) -> Ws {
        let mut ws = self.ws(session);
        let w = ws.next_json(PROMPT);
        assert_eq!(w["type"], "welcome", "first frame {w}");
        assert_eq!(w["session"], session, "first frame {w}");
        ws.welcome = w;
        ws
    }

    /// Opens a WebSocket for `session` that resumes after `since` (`EPOCH:SEQ`),
    /// and reads its welcome frame.
    pub fn ws_resuming(&self, session: &str, since: &str) -> Ws {
        let token = token(session);
        let mut ws = match ws_connect(self.addr, &format!("/ws?token={token}&since={since}"), &[]) {
            Ok((ws, _)) => ws,
            Err(e) => panic!("resuming socket for {session} refused: {e:?}"),
        };
        let w = ws.next_json(PROMPT);
        assert_eq!(w["type"], "welcome", "first frame {w}");
        ws.welcome = w;
        ws
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if self.exited.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!("node stderr kept at {}", self.log_path.display());
        } else {
            let _ = std::fs::remove_file(&self.log_path);
        }
    }
}

fn log_path() -> PathBuf {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join("relay-it-logs");
    std::fs::create_dir_all(&dir).expect("create log dir");
    let thread = std::thread::current();
    let name = thread.name().unwrap_or("test").replace("::", "-");
    dir.join(format!(
        "{}-{}-{}.log",
        name,
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ))
}

fn tail(s: &str, n: usize) -> &str {
    if s.len() <= n {
        return s;
    }
    let mut i = s.len() - n;
    while !s.is_char_boundary(i) {
        i += 1;
    }
    &s[i..]
}
