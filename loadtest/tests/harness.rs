//! The `harness` target kind end to end, on loopback: a fan-out scenario with
//! `target = "harness"` against a server of the harness shape (`GET /ws?session=S`,
//! `POST /publish/S`) started by the test on a free port.
//!
//! - A tiny harness written here (std threads, the loadtest's own frame writer), so the
//!   Rust tests need no npm: every published event reaches every socket of its session
//!   with no loss and nothing extra; and when the harness silently drops publishes it
//!   still answers 200 to, the run counts exactly those deliveries as lost and fails,
//!   without any seq from the server.
//! - The Node `ws` harness in `loadtest/harness/node-ws` when `node` and its installed
//!   `ws` are there (`npm ci` in that folder); skipped with a message otherwise.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use loadtest::scenario::from_str;
use loadtest::{Report, RunOptions, TargetKind};

/// Sockets of each topic, each behind a lock so frames are written whole.
type Topics = Arc<Mutex<HashMap<String, Vec<Arc<Mutex<TcpStream>>>>>>;

/// Starts the Rust harness on 127.0.0.1:0; every `drop_every`-th publish (when above 0) is
/// answered 200 but sent to no one. Returns the port. Its threads end with the test process.
fn start_rust_harness(drop_every: u64) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let topics: Topics = Arc::default();
    let publishes = Arc::new(AtomicU64::new(0));
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let topics = topics.clone();
            let publishes = publishes.clone();
            std::thread::spawn(move || serve(stream, &topics, &publishes, drop_every));
        }
    });
    port
}

/// One connection: keep-alive publishes, or one upgrade followed by reading the client's
/// frames until its close (answered) or EOF.
fn serve(mut stream: TcpStream, topics: &Topics, publishes: &AtomicU64, drop_every: u64) {
    let _ = stream.set_nodelay(true);
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        // Parse whatever request head is buffered.
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        let head_len = match req.parse(&buf) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => {
                match stream.read(&mut chunk) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
                continue;
            }
            Err(_) => return,
        };
        let path = req.path.unwrap_or("").to_owned();
        let header = |name: &str| {
            req.headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case(name))
                .map(|h| String::from_utf8_lossy(h.value).into_owned())
        };
        if let Some(topic) = path.strip_prefix("/ws?session=") {
            let Some(key) = header("sec-websocket-key") else {
                return;
            };
            let answer = format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                 Sec-WebSocket-Accept: {}\r\n\r\n",
                loadtest::ws::accept_for(&key)
            );
            if stream.write_all(answer.as_bytes()).is_err() {
                return;
            }
            let Ok(writer) = stream.try_clone() else {
                return;
            };
            let writer = Arc::new(Mutex::new(writer));
            topics
                .lock()
                .expect("topics")
                .entry(topic.to_owned())
                .or_default()
                .push(writer.clone());
            buf.drain(..head_len);
            read_client_frames(&mut stream, buf, &writer);
            if let Some(list) = topics.lock().expect("topics").get_mut(topic) {
                list.retain(|w| !Arc::ptr_eq(w, &writer));
            }
            return;
        }
        let Some(topic) = path.strip_prefix("/publish/").map(str::to_owned) else {
            let _ = stream.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n");
            return;
        };
        let len: usize = header("content-length")
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        while buf.len() < head_len + len {
            match stream.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let n = publishes.fetch_add(1, Ordering::Relaxed) + 1;
        if drop_every == 0 || n % drop_every != 0 {
            // Encoded once, written to every socket of the topic.
            let mut frame = Vec::with_capacity(len + 4);
            loadtest::ws::encode_frame(&mut frame, 0x81, &buf[head_len..head_len + len], None);
            let sockets = topics
                .lock()
                .expect("topics")
                .get(&topic)
                .cloned()
                .unwrap_or_default();
            for s in sockets {
                let _ = s.lock().expect("socket").write_all(&frame);
            }
        }
        if stream
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
            .is_err()
        {
            return;
        }
        buf.drain(..head_len + len);
    }
}

/// Reads masked client frames; answers a close frame with one and ends.
fn read_client_frames(stream: &mut TcpStream, mut buf: Vec<u8>, writer: &Mutex<TcpStream>) {
    let mut chunk = [0u8; 4096];
    loop {
        while buf.len() >= 2 {
            let opcode = buf[0] & 0x0F;
            let (len, ext) = match buf[1] & 0x7F {
                126 if buf.len() >= 4 => (usize::from(u16::from_be_bytes([buf[2], buf[3]])), 2),
                126 | 127 => return, // the loadtest sends only short control frames
                n => (usize::from(n), 0),
            };
            let total = 2 + ext + 4 + len;
            if buf.len() < total {
                break;
            }
            if opcode == loadtest::ws::OP_CLOSE {
                let mut close = Vec::new();
                loadtest::ws::encode_frame(&mut close, 0x88, &1000u16.to_be_bytes(), None);
                let w = writer.lock().expect("socket");
                let _ = (&*w).write_all(&close);
                let _ = w.shutdown(Shutdown::Write);
                return;
            }
            buf.drain(..total);
        }
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// 2 sessions × 50 sockets, 200 single-event publishes a second for 1 s.
fn fanout(port: u16) -> Report {
    let scn = from_str(
        &format!(
            "kind = \"fanout\"\ntarget = \"harness\"\nurl = \"http://127.0.0.1:{port}\"\n\
             sessions = 2\nsockets_per_session = 50\nrate = 200\nduration = \"1s\"\n\
             drain = \"1s\"\npublishers = 2\n"
        ),
        &[],
    )
    .expect("valid scenario");
    assert_eq!(scn.target, TargetKind::Harness);
    // No secret and no API key: a harness takes neither.
    let opts = RunOptions {
        threads: Some(1),
        ..RunOptions::default()
    };
    loadtest::run(&scn, &opts).expect("run")
}

fn assert_everything_arrived(r: &Report) {
    assert_eq!(r.sockets_connected, 100, "{r:?}");
    assert_eq!(r.requests_accepted, 200, "errors: {:?}", r.errors);
    assert_eq!(r.events_accepted, 200);
    assert_eq!(r.lost, 0, "failures: {:?}", r.failures);
    assert_eq!(r.excess, 0);
    assert_eq!(
        r.deliveries,
        200 * 50,
        "every event on every socket of its session"
    );
    assert_eq!(r.expected_deliveries, 200 * 50);
    assert!(r.latency_ms.count > 0, "latency is read from the stamp");
    assert!(r.passed, "failures: {:?}", r.failures);
}

#[test]
fn a_fanout_against_a_harness_delivers_every_event_to_every_socket() {
    let r = fanout(start_rust_harness(0));
    assert_everything_arrived(&r);
    assert!(
        r.node_latency_ms.is_none(),
        "a harness is not asked for /latency"
    );
}

#[test]
fn a_harness_that_drops_publishes_is_caught_losing_them() {
    // Every 10th publish is answered 200 and sent nowhere: 20 events × 50 sockets.
    let r = fanout(start_rust_harness(10));
    assert_eq!(r.requests_accepted, 200);
    assert_eq!(r.lost, 20 * 50, "{:?}", r.failures);
    assert_eq!(r.deliveries, 180 * 50);
    assert!(!r.passed);
    assert!(
        r.failures.iter().any(|f| f.contains("lost 1000")),
        "{:?}",
        r.failures
    );
}

/// The Node harness, killed when the test ends.
struct NodeHarness(Child);

impl Drop for NodeHarness {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_fanout_against_the_node_ws_harness_delivers_everything() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("harness/node-ws");
    if !dir.join("node_modules/ws/package.json").exists() {
        eprintln!(
            "SKIPPED: the Node ws harness is not installed; run `npm ci` in {} to include it",
            dir.display()
        );
        return;
    }
    let child = match Command::new("node")
        .arg("server.mjs")
        .args(["--port", "0"])
        .current_dir(&dir)
        .stdout(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("SKIPPED: cannot start `node` ({e}); install Node.js to include it");
            return;
        }
    };
    let mut node = NodeHarness(child);
    let mut line = String::new();
    let stdout = node.0.stdout.take().expect("stdout");
    BufReader::new(stdout).read_line(&mut line).expect("read");
    let port: u16 = line
        .trim()
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {line:?}"));
    assert_everything_arrived(&fanout(port));
}
