//! Shared harness for the integration tests: start a real `relay serve` node on port 0,
//! talk to it over real TCP (a small HTTP/1.1 client, a tungstenite WebSocket client, and
//! raw sockets for misbehaving clients), mint tokens, read metrics.
//!
//! Every read here has a timeout, so a broken server fails a test instead of hanging it.

#![allow(dead_code)]

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::FromRawFd;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use tungstenite::handshake::HandshakeError;
use tungstenite::protocol::WebSocket;
use tungstenite::Message;

/// HS256 secret the test nodes verify tokens with (at least 32 bytes).
pub const SECRET: &str = "integration-test-signing-secret-0123456789abcdef";
/// Publisher key the test nodes accept on `POST /events`.
pub const API_KEY: &str = "integration-test-api-key-0123456789";

/// How long a test waits for something that should happen "at once".
pub const PROMPT: Duration = Duration::from_secs(10);

/// A fixed, valid `Sec-WebSocket-Key` (base64 of 16 bytes).
pub const WS_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

// ---------------------------------------------------------------------------
// The node
// ---------------------------------------------------------------------------

/// How to start a node: extra flags and environment on top of the test defaults.
pub struct NodeBuilder {
    args: Vec<String>,
    envs: Vec<(String, String)>,
    without_env: Vec<String>,
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
        self.without_env.push(key.to_string());
        self
    }

    /// Runs the node in `dir` (for `.env.local` tests) instead of an empty scratch dir.
    pub fn dir(mut self, dir: &std::path::Path) -> Self {
        self.dir = Some(dir.to_path_buf());
        self
    }

    /// The command that would be run, for tests that look at start-up failures.
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_relay"));
        cmd.arg("serve")
            .args(["--host", "127.0.0.1", "--shards", "2"])
            .args(&self.args)
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
            without_env: Vec::new(),
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

fn scratch_dir() -> PathBuf {
    // A directory with no .env.local, so nodes and CLI runs see only our environment.
    let dir = std::env::temp_dir().join("relay-it-scratch");
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    let _ = std::fs::remove_file(dir.join(".env.local"));
    dir
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

/// Runs a `relay` subcommand (token, publish) with the test secrets; returns the output.
pub fn relay_cli(args: &[&str]) -> std::process::Output {
    relay_cli_in(
        &scratch_dir(),
        &[("JWT_SIGNING_SECRET", SECRET), ("RELAY_API_KEY", API_KEY)],
        args,
    )
}

/// Runs a `relay` subcommand in `dir` with only `envs` (plus PATH) in its environment.
pub fn relay_cli_in(
    dir: &std::path::Path,
    envs: &[(&str, &str)],
    args: &[&str],
) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_relay"));
    cmd.args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .current_dir(dir)
        .stdin(Stdio::null());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn relay");
    wait_output(child, Duration::from_secs(20))
}

/// A fresh empty directory for this test.
pub fn fresh_dir(tag: &str) -> PathBuf {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "relay-it-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create test dir");
    dir
}

/// `wait_with_output` with a deadline: a hung CLI is killed and fails the test.
pub fn wait_output(mut child: Child, timeout: Duration) -> std::process::Output {
    let deadline = Instant::now() + timeout;
    let mut stdout = child.stdout.take();
    let mut stderr = child.stderr.take();
    let out_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        if let Some(s) = stdout.as_mut() {
            let _ = s.read_to_end(&mut v);
        }
        v
    });
    let err_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        if let Some(s) = stderr.as_mut() {
            let _ = s.read_to_end(&mut v);
        }
        v
    });
    let status = loop {
        if let Ok(Some(s)) = child.try_wait() {
            break s;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("relay subcommand did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    std::process::Output {
        status,
        stdout: out_t.join().unwrap_or_default(),
        stderr: err_t.join().unwrap_or_default(),
    }
}

// ---------------------------------------------------------------------------
// Tokens
// ---------------------------------------------------------------------------

pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Signs arbitrary claims with `alg` and `secret`.
pub fn sign(alg: Algorithm, secret: &str, claims: &Value) -> String {
    let key = EncodingKey::from_secret(secret.as_bytes()).expect("encoding key");
    jsonwebtoken::encode(&Header::new(alg), claims, &key).expect("sign token")
}

/// Signs claims the way a publishing backend would (HS256, the test secret).
pub fn token_with(claims: &Value) -> String {
    sign(Algorithm::HS256, SECRET, claims)
}

/// A valid token for `session`, good for ten minutes.
pub fn token(session: &str) -> String {
    token_expiring(session, now() + 600)
}

pub fn token_expiring(session: &str, exp: i64) -> String {
    token_with(&json!({"session": session, "sub": "user-1", "iat": now(), "exp": exp}))
}

// ---------------------------------------------------------------------------
// HTTP over raw TCP
// ---------------------------------------------------------------------------

#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn body_str(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "response body is not JSON ({e}): status {} body {:?}",
                self.status,
                self.body_str()
            )
        })
    }

    /// Asserts `status` and the contract's error body `{"error": code, "message": text}`.
    pub fn assert_error(&self, status: u16, code: &str) -> String {
        assert_eq!(
            self.status,
            status,
            "expected {status} {code}, got {} {:?}",
            self.status,
            self.body_str()
        );
        let ct = self.header("content-type").unwrap_or("");
        assert!(
            ct.starts_with("application/json"),
            "error body content-type {ct:?}"
        );
        let v = self.json();
        assert_eq!(v["error"], code, "error body {v}");
        let msg = v["message"].as_str().unwrap_or_else(|| {
            panic!("error body has no string message: {v}");
        });
        assert!(!msg.is_empty(), "empty message in {v}");
        msg.to_string()
    }
}

/// One TCP connection that can carry several HTTP requests (keep-alive).
pub struct HttpConn {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl HttpConn {
    pub fn connect(addr: SocketAddr) -> HttpConn {
        let stream = TcpStream::connect_timeout(&addr, PROMPT).expect("connect");
        stream.set_read_timeout(Some(PROMPT)).unwrap();
        stream.set_write_timeout(Some(PROMPT)).unwrap();
        stream.set_nodelay(true).unwrap();
        HttpConn {
            stream,
            buf: Vec::new(),
        }
    }

    /// Like `connect`, but `None` when the connection is refused.
    pub fn connect_lenient(addr: SocketAddr) -> Option<HttpConn> {
        let stream = TcpStream::connect_timeout(&addr, PROMPT).ok()?;
        stream.set_read_timeout(Some(PROMPT)).unwrap();
        stream.set_write_timeout(Some(PROMPT)).unwrap();
        Some(HttpConn {
            stream,
            buf: Vec::new(),
        })
    }

    pub fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)
    }

    pub fn set_timeout(&mut self, t: Duration) {
        self.stream.set_read_timeout(Some(t)).unwrap();
    }

    fn fill(&mut self) -> io::Result<usize> {
        let mut chunk = [0u8; 16384];
        let n = self.stream.read(&mut chunk)?;
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n)
    }

    /// Reads one response. A response without a length is read to EOF.
    pub fn read_response(&mut self) -> io::Result<HttpResponse> {
        let head_end = loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                break i + 4;
            }
            if self.fill()? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "connection closed before a full response head ({} bytes: {:?})",
                        self.buf.len(),
                        String::from_utf8_lossy(&self.buf)
                    ),
                ));
            }
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]).into_owned();
        self.buf.drain(..head_end);
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let status: u16 = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("bad status line {status_line:?}"),
                )
            })?;
        let headers: Vec<(String, String)> = lines
            .filter(|l| !l.is_empty())
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect();
        let mut resp = HttpResponse {
            status,
            headers,
            body: Vec::new(),
        };
        if status == 101 || status == 204 || status == 304 || (100..200).contains(&status) {
            return Ok(resp);
        }
        if let Some(len) = resp.header("content-length") {
            let len: usize = len
                .parse()
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad content-length"))?;
            while self.buf.len() < len {
                if self.fill()? == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "connection closed inside a response body",
                    ));
                }
            }
            resp.body = self.buf.drain(..len).collect();
        } else if resp
            .header("transfer-encoding")
            .is_some_and(|t| t.to_ascii_lowercase().contains("chunked"))
        {
            resp.body = self.read_chunked()?;
        } else {
            while self.fill()? > 0 {}
            resp.body = std::mem::take(&mut self.buf);
        }
        Ok(resp)
    }

    fn read_chunked(&mut self) -> io::Result<Vec<u8>> {
        let mut body = Vec::new();
        loop {
            let line_end = loop {
                if let Some(i) = find(&self.buf, b"\r\n") {
                    break i;
                }
                if self.fill()? == 0 {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
            };
            let size_line = String::from_utf8_lossy(&self.buf[..line_end]).into_owned();
            let size = usize::from_str_radix(size_line.split(';').next().unwrap().trim(), 16)
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad chunk size"))?;
            self.buf.drain(..line_end + 2);
            while self.buf.len() < size + 2 {
                if self.fill()? == 0 {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
            }
            body.extend(self.buf.drain(..size));
            self.buf.drain(..2);
            if size == 0 {
                return Ok(body);
            }
        }
    }

    /// Sends a request and reads its response; panics on I/O errors.
    pub fn request(&mut self, raw: &[u8]) -> HttpResponse {
        self.send(raw).expect("send request");
        self.read_response().expect("read response")
    }

    /// True when the peer has closed the connection (EOF or reset) within `timeout`.
    pub fn closed_within(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            self.stream.set_read_timeout(Some(left)).unwrap();
            match self.fill() {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e)
                    if e.kind() == io::ErrorKind::WouldBlock
                        || e.kind() == io::ErrorKind::TimedOut =>
                {
                    return false
                }
                Err(_) => return true,
            }
        }
    }
}

pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Sends one request on a fresh connection and reads the response.
pub fn http_request(addr: SocketAddr, raw: &str) -> HttpResponse {
    HttpConn::connect(addr).request(raw.as_bytes())
}

pub fn http_get(addr: SocketAddr, path: &str) -> HttpResponse {
    http_request(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"),
    )
}

/// A complete keep-alive `POST /events` request; `key` goes in `Authorization: Bearer`.
pub fn post_events_request(body: &str, key: Option<&str>) -> String {
    let auth = key
        .map(|k| format!("Authorization: Bearer {k}\r\n"))
        .unwrap_or_default();
    format!(
        "POST /events HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n{auth}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// The JSON text of one event for a publish body; `data` is raw JSON text.
pub fn event(session: &str, name: &str, data: &str) -> String {
    format!(r#"{{"session":"{session}","event":"{name}","data":{data}}}"#)
}

/// A batch body from event texts.
pub fn batch(events: &[String]) -> String {
    format!(r#"{{"events":[{}]}}"#, events.join(","))
}

// ---------------------------------------------------------------------------
// WebSocket clients
// ---------------------------------------------------------------------------

/// A well-behaved client: tungstenite over a blocking TcpStream with read timeouts.
pub struct Ws {
    pub ws: WebSocket<TcpStream>,
    /// The welcome frame, once read by [`Node::ws_welcomed`] (else `null`).
    pub welcome: serde_json::Value,
}

/// Why `Ws::recv` returned without a message.
#[derive(Debug)]
pub enum WsEnd {
    Timeout,
    /// The connection ended (closed after a close frame, reset, EOF).
    Gone(String),
}

/// Opens `ws://addr{path}` with extra request headers; on refusal returns the HTTP response.
pub fn ws_connect(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<(Ws, HttpResponse), HttpResponse> {
    use tungstenite::client::IntoClientRequest;
    let mut req = format!("ws://{addr}{path}")
        .into_client_request()
        .expect("client request");
    for (k, v) in headers {
        req.headers_mut().append(
            tungstenite::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            tungstenite::http::HeaderValue::from_str(v).unwrap(),
        );
    }
    let stream = TcpStream::connect_timeout(&addr, PROMPT).expect("connect");
    stream.set_read_timeout(Some(PROMPT)).unwrap();
    stream.set_write_timeout(Some(PROMPT)).unwrap();
    stream.set_nodelay(true).unwrap();
    match tungstenite::client::client_with_config(req, stream, None) {
        Ok((ws, resp)) => {
            let headers = resp
                .headers()
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
                .collect();
            Ok((
                Ws {
                    ws,
                    welcome: serde_json::Value::Null,
                },
                HttpResponse {
                    status: resp.status().as_u16(),
                    headers,
                    body: Vec::new(),
                },
            ))
        }
        Err(HandshakeError::Failure(tungstenite::Error::Http(resp))) => Err(HttpResponse {
            status: resp.status().as_u16(),
            headers: resp
                .headers()
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
                .collect(),
            body: resp.body().clone().unwrap_or_default(),
        }),
        Err(e) => panic!("WebSocket handshake failed without an HTTP answer: {e:?}"),
    }
}

impl Ws {
    /// The next message of any kind, or why there is none.
    pub fn recv(&mut self, timeout: Duration) -> Result<Message, WsEnd> {
        let t = if timeout.is_zero() {
            Duration::from_millis(1)
        } else {
            timeout
        };
        self.ws.get_mut().set_read_timeout(Some(t)).unwrap();
        match self.ws.read() {
            Ok(m) => Ok(m),
            Err(tungstenite::Error::Io(e))
                if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::TimedOut =>
            {
                Err(WsEnd::Timeout)
            }
            Err(e) => Err(WsEnd::Gone(e.to_string())),
        }
    }

    /// The next text frame (pings and pongs skipped); panics on close or timeout.
    pub fn next_text(&mut self, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                panic!("no text frame within {timeout:?}");
            }
            match self.recv(left) {
                Ok(Message::Text(t)) => return t.as_str().to_string(),
                Ok(Message::Ping(_)) | Ok(Message::Pong(_)) => continue,
                Ok(other) => panic!("expected a text frame, got {other:?}"),
                Err(WsEnd::Timeout) => panic!("no text frame within {timeout:?}"),
                Err(WsEnd::Gone(e)) => panic!("socket ended while waiting for a text frame: {e}"),
            }
        }
    }

    pub fn next_json(&mut self, timeout: Duration) -> Value {
        let t = self.next_text(timeout);
        serde_json::from_str(&t).unwrap_or_else(|e| panic!("frame is not JSON ({e}): {t:?}"))
    }

    /// The next event frame; checks its shape.
    pub fn next_event(&mut self, timeout: Duration) -> Value {
        let v = self.next_json(timeout);
        assert_eq!(v["type"], "event", "expected an event frame, got {v}");
        v
    }

    /// Reads until a close frame arrives and returns its code (`None`: close without a code).
    /// Panics if the socket carries on past `timeout` or drops without a close frame.
    pub fn expect_close(&mut self, timeout: Duration) -> Option<u16> {
        match self.wait_close(timeout) {
            Ok(code) => code,
            Err(e) => panic!("no close frame: {e:?}"),
        }
    }

    /// Reads (skipping everything else) until a close frame; `Err` on timeout or drop.
    pub fn wait_close(&mut self, timeout: Duration) -> Result<Option<u16>, WsEnd> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(WsEnd::Timeout);
            }
            match self.recv(left)? {
                Message::Close(frame) => {
                    // Send the close reply tungstenite queued, as a polite client does.
                    let _ = self.ws.flush();
                    return Ok(frame.map(|f| u16::from(f.code)));
                }
                _ => continue,
            }
        }
    }

    pub fn send_text(&mut self, text: &str) {
        self.ws
            .send(Message::text(text.to_string()))
            .expect("send text frame");
    }

    /// Asserts that no text frame arrives within `dur` (pings are fine).
    pub fn assert_no_text(&mut self, dur: Duration) {
        let deadline = Instant::now() + dur;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            match self.recv(left) {
                Ok(Message::Text(t)) => panic!("unexpected text frame {t}"),
                Ok(Message::Close(f)) => panic!("unexpected close {f:?}"),
                Ok(_) => continue,
                Err(WsEnd::Timeout) => return,
                Err(WsEnd::Gone(e)) => panic!("socket ended: {e}"),
            }
        }
    }
}

/// A raw upgrade request for `/ws` with a valid key and version plus extra header lines.
pub fn upgrade_request(path: &str, extra: &[&str]) -> String {
    let mut s = format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {WS_KEY}\r\nSec-WebSocket-Version: 13\r\n"
    );
    for h in extra {
        s.push_str(h);
        s.push_str("\r\n");
    }
    s.push_str("\r\n");
    s
}

/// Sends a raw upgrade request on a fresh connection and reads the answer's head (and body
/// unless it is a 101).
pub fn raw_upgrade_response(addr: SocketAddr, req: &str) -> HttpResponse {
    http_request(addr, req)
}

/// A client that completes the upgrade and then neither reads nor writes unless told to.
/// Its receive buffer is tiny so the server's queue for it fills quickly.
pub struct RawSocket {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl RawSocket {
    /// Connects with a small `SO_RCVBUF`, upgrades with a token for `session`, reads
    /// nothing beyond the 101 head.
    pub fn upgrade(addr: SocketAddr, session: &str) -> RawSocket {
        let stream = connect_small_rcvbuf(addr, 4096);
        stream.set_read_timeout(Some(PROMPT)).unwrap();
        stream.set_write_timeout(Some(PROMPT)).unwrap();
        let mut s = RawSocket {
            stream,
            buf: Vec::new(),
        };
        let req = upgrade_request(&format!("/ws?token={}", token(session)), &[]);
        s.stream.write_all(req.as_bytes()).expect("send upgrade");
        // Read byte by byte so nothing after the head is consumed.
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            let n = s.stream.read(&mut b).expect("read upgrade response");
            assert!(n == 1, "connection closed during upgrade: {head:?}");
            head.push(b[0]);
        }
        let head = String::from_utf8_lossy(&head);
        assert!(
            head.starts_with("HTTP/1.1 101"),
            "upgrade refused: {head:?}"
        );
        s
    }

    /// Sends one frame: `first` is the first header byte (FIN, RSV, opcode); masked as a
    /// client must unless `masked` is false.
    pub fn send_frame(&mut self, first: u8, payload: &[u8], masked: bool) {
        let mut f = vec![first];
        let mask_bit = if masked { 0x80 } else { 0 };
        match payload.len() {
            n if n < 126 => f.push(mask_bit | n as u8),
            n if n < 65536 => {
                f.push(mask_bit | 126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(mask_bit | 127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        if masked {
            let key = [0x12u8, 0x34, 0x56, 0x78];
            f.extend_from_slice(&key);
            f.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        } else {
            f.extend_from_slice(payload);
        }
        self.stream.write_all(&f).expect("send frame");
    }

    /// Reads server frames until a close frame; returns its code. `Err` when the
    /// connection ends without one (EOF or reset) or `timeout` passes.
    pub fn read_until_close(&mut self, timeout: Duration) -> Result<Option<u16>, io::Error> {
        let deadline = Instant::now() + timeout;
        loop {
            // Parse as many whole frames as are buffered.
            while let Some((opcode, payload, used)) = parse_frame(&self.buf) {
                self.buf.drain(..used);
                if opcode == 0x8 {
                    return Ok(if payload.len() >= 2 {
                        Some(u16::from_be_bytes([payload[0], payload[1]]))
                    } else {
                        None
                    });
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::ErrorKind::TimedOut.into());
            }
            self.stream.set_read_timeout(Some(left)).unwrap();
            let mut chunk = vec![0u8; 65536];
            let n = self.stream.read(&mut chunk)?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

/// Parses one unmasked server frame: (opcode, payload, bytes used).
fn parse_frame(buf: &[u8]) -> Option<(u8, Vec<u8>, usize)> {
    if buf.len() < 2 {
        return None;
    }
    let opcode = buf[0] & 0x0f;
    let masked = buf[1] & 0x80 != 0;
    let (len, mut at) = match buf[1] & 0x7f {
        126 => {
            if buf.len() < 4 {
                return None;
            }
            (u16::from_be_bytes([buf[2], buf[3]]) as usize, 4)
        }
        127 => {
            if buf.len() < 10 {
                return None;
            }
            (
                u64::from_be_bytes(buf[2..10].try_into().unwrap()) as usize,
                10,
            )
        }
        n => (n as usize, 2),
    };
    if masked {
        at += 4;
    }
    if buf.len() < at + len {
        return None;
    }
    Some((opcode, buf[at..at + len].to_vec(), at + len))
}

/// A TCP connection whose receive buffer is set before connecting (so the window stays small).
pub fn connect_small_rcvbuf(addr: SocketAddr, rcvbuf: i32) -> TcpStream {
    let SocketAddr::V4(v4) = addr else {
        panic!("tests use IPv4 loopback")
    };
    // SAFETY: straightforward socket/setsockopt/connect calls on a descriptor we own; the
    // descriptor is handed to TcpStream, which closes it.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0, "socket() failed");
        let size: libc::c_int = rcvbuf;
        let rc = libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            &size as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
        assert_eq!(rc, 0, "setsockopt(SO_RCVBUF) failed");
        let sa = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: v4.port().to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes(v4.ip().octets()),
            },
            sin_zero: [0; 8],
        };
        let rc = libc::connect(
            fd,
            &sa as *const libc::sockaddr_in as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        );
        assert_eq!(rc, 0, "connect() failed: {}", io::Error::last_os_error());
        TcpStream::from_raw_fd(fd)
    }
}

// ---------------------------------------------------------------------------
// Metrics and JSON helpers
// ---------------------------------------------------------------------------

/// Sums every sample of `name` (exact metric name, not `_bucket`/`_sum` variants unless
/// asked for) whose labels include all of `labels`. `None` when no sample matches.
pub fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut total = None;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (series, value) = match line.find('{') {
            Some(i) if line[..i].find(' ').is_none() => {
                let close = line.rfind('}')?;
                (&line[..=close], line[close + 1..].trim())
            }
            _ => match line.split_once(' ') {
                Some((s, v)) => (s, v.trim()),
                None => continue,
            },
        };
        let (metric, label_text) = match series.find('{') {
            Some(i) => (&series[..i], &series[i + 1..series.len() - 1]),
            None => (series, ""),
        };
        if metric != name {
            continue;
        }
        let all = labels
            .iter()
            .all(|(k, v)| label_text.contains(&format!("{k}=\"{v}\"")));
        if !all {
            continue;
        }
        let v: f64 = value.split_whitespace().next()?.parse().ok()?;
        total = Some(total.unwrap_or(0.0) + v);
    }
    total
}

/// The raw JSON text of top-level member `key` of the object `json`, exactly as written.
pub fn raw_member<'a>(json: &'a str, key: &str) -> Option<&'a str> {
    let b = json.as_bytes();
    let mut i = skip_ws(b, 0);
    if b.get(i) != Some(&b'{') {
        return None;
    }
    i += 1;
    loop {
        i = skip_ws(b, i);
        match b.get(i)? {
            b'}' => return None,
            b',' => {
                i += 1;
                continue;
            }
            b'"' => {}
            _ => return None,
        }
        let key_end = skip_value(b, i)?;
        let k: String = serde_json::from_str(&json[i..key_end]).ok()?;
        i = skip_ws(b, key_end);
        if b.get(i) != Some(&b':') {
            return None;
        }
        i = skip_ws(b, i + 1);
        let end = skip_value(b, i)?;
        if k == key {
            return Some(&json[i..end]);
        }
        i = end;
    }
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && matches!(b[i], b' ' | b'\t' | b'\n' | b'\r') {
        i += 1;
    }
    i
}

/// End (exclusive) of the JSON value starting at `i`.
fn skip_value(b: &[u8], i: usize) -> Option<usize> {
    match *b.get(i)? {
        b'"' => {
            let mut j = i + 1;
            while j < b.len() {
                match b[j] {
                    b'\\' => j += 2,
                    b'"' => return Some(j + 1),
                    _ => j += 1,
                }
            }
            None
        }
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut j = i;
            while j < b.len() {
                match b[j] {
                    b'"' => {
                        j = skip_value(b, j)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(j + 1);
                        }
                    }
                    _ => {}
                }
                j += 1;
            }
            None
        }
        _ => {
            let mut j = i;
            while j < b.len() && !matches!(b[j], b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r')
            {
                j += 1;
            }
            Some(j)
        }
    }
}

/// Polls `f` until it returns true or `timeout` passes; returns the last result.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

// ---------------------------------------------------------------------------
// Raw-socket helpers for the hostile-input tests (tests/hostile_*.rs)
// ---------------------------------------------------------------------------

impl RawSocket {
    /// Writes bytes as they are: a hand-built frame, or only part of one.
    pub fn send_bytes(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("send raw bytes");
    }

    /// The next whole server frame as (opcode, payload); `Err` on EOF, reset or timeout.
    pub fn read_frame(&mut self, timeout: Duration) -> io::Result<(u8, Vec<u8>)> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some((opcode, payload, used)) = parse_frame(&self.buf) {
                self.buf.drain(..used);
                return Ok((opcode, payload));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::ErrorKind::TimedOut.into());
            }
            self.stream.set_read_timeout(Some(left)).unwrap();
            let mut chunk = vec![0u8; 65536];
            let n = self.stream.read(&mut chunk)?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// True when the server closes TCP (EOF or reset) within `timeout`; bytes that arrive
    /// first are discarded. The client does not answer the server's close frame, so this
    /// also checks that the server does not wait for that answer forever.
    pub fn closed_within(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut chunk = vec![0u8; 65536];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            self.stream.set_read_timeout(Some(left)).unwrap();
            match self.stream.read(&mut chunk) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e)
                    if e.kind() == io::ErrorKind::WouldBlock
                        || e.kind() == io::ErrorKind::TimedOut =>
                {
                    return false
                }
                Err(_) => return true,
            }
        }
    }

    /// True when, for all of `dur`, the server sends nothing and keeps TCP open.
    pub fn quiet_for(&mut self, dur: Duration) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        self.stream.set_read_timeout(Some(dur)).unwrap();
        let mut b = [0u8; 1];
        match self.stream.read(&mut b) {
            Ok(0) => false,
            Ok(_) => {
                self.buf.push(b[0]);
                false
            }
            Err(e) => e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::TimedOut,
        }
    }
}

/// A masked client frame header (FIN/RSV/opcode byte, 64-bit length form, mask key) that
/// declares `len` payload bytes, none of which are sent.
pub fn masked_header_declaring(first: u8, len: u64) -> Vec<u8> {
    let mut f = vec![first, 0x80 | 127];
    f.extend_from_slice(&len.to_be_bytes());
    f.extend_from_slice(&[0x12, 0x34, 0x56, 0x78]);
    f
}
