//! Presence: who holds a socket in a session, as subscribers and the backend see it.
//! Real nodes on ephemeral ports (one, or three on one real Redis), real WebSockets:
//! a user with two tabs counts once; closing a tab is not a leave, closing the last
//! one is; a resuming socket gets a snapshot before its replay; the query pages and
//! refuses bad input with the contract's errors; through Redis the same user on two
//! nodes counts once and a `kill -9`ed node's users leave within the bound; a
//! 10,000-socket session with churn gets at most one presence frame per interval.

// A test drives the nodes from its own threads, which may sleep and block.
#![allow(clippy::disallowed_methods)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

/// The interval the tests run presence with (the default is 1 s).
const INTERVAL: Duration = Duration::from_millis(300);

fn presence_node(mode: &str) -> Node {
    Node::builder()
        .flag("--presence", mode)
        .flag("--presence-interval", "300ms")
        .start()
}

/// A token for `session` as user `sub`, with extra claims.
fn user_token(session: &str, sub: &str, extra: Value) -> String {
    let mut claims = json!({"session": session, "sub": sub, "iat": now(), "exp": now() + 600});
    if let (Some(c), Some(e)) = (claims.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            c.insert(k.clone(), v.clone());
        }
    }
    token_with(&claims)
}

/// A welcomed socket of `sub` in `session` (the welcome read, nothing else).
fn open(node: &Node, session: &str, sub: &str, extra: Value, query: &str) -> Ws {
    let t = user_token(session, sub, extra);
    let (mut ws, _) = ws_connect(node.addr, &format!("/ws?token={t}{query}"), &[])
        .unwrap_or_else(|e| panic!("socket refused: {e:?}"));
    let w = ws.next_json(PROMPT);
    assert_eq!(w["type"], "welcome", "first frame {w}");
    ws.welcome = w;
    ws
}

/// The next presence frame within `timeout`, or `None` (other frames fail the test).
fn next_presence(ws: &mut Ws, timeout: Duration) -> Option<Value> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        match ws.recv(left) {
            Ok(tungstenite::Message::Text(t)) => {
                let v: Value = serde_json::from_str(t.as_str()).expect("json frame");
                assert_eq!(v["type"], "presence", "unexpected frame {v}");
                assert!(v.get("seq").is_none(), "presence frames carry no seq: {v}");
                return Some(v);
            }
            Ok(_) => continue,
            Err(WsEnd::Timeout) => return None,
            Err(WsEnd::Gone(e)) => panic!("socket ended: {e}"),
        }
    }
}

fn presence_request(path: &str, key: Option<&str>) -> String {
    let auth = key
        .map(|k| format!("Authorization: Bearer {k}\r\n"))
        .unwrap_or_default();
    format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n{auth}Connection: close\r\n\r\n")
}

fn query(node: &Node, session: &str, params: &str) -> Value {
    let path = format!("/sessions/{session}/presence{params}");
    let resp = http_request(node.addr, &presence_request(&path, Some(API_KEY)));
    assert_eq!(resp.status, 200, "GET {path}: {}", resp.body_str());
    resp.json()
}

/// `[(sub, sockets)]` of a query answer or a snapshot frame.
fn users(v: &Value) -> Vec<(String, u64)> {
    v["users"]
        .as_array()
        .unwrap_or_else(|| panic!("no users in {v}"))
        .iter()
        .map(|u| {
            (
                u["sub"].as_str().unwrap_or_default().to_string(),
                u["sockets"].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

fn pairs(v: &[(&str, u64)]) -> Vec<(String, u64)> {
    v.iter().map(|(s, n)| (s.to_string(), *n)).collect()
}

/// What a client makes of the presence frames it got: a snapshot replaces the
/// list, a change adds its joins and removes its leaves.
#[derive(Default, Debug)]
struct Roster {
    users: std::collections::BTreeSet<String>,
    total: u64,
    frames: usize,
}

impl Roster {
    fn apply(&mut self, f: &Value) {
        self.frames += 1;
        if let Some(list) = f["users"].as_array() {
            self.users = list
                .iter()
                .map(|u| u["sub"].as_str().unwrap_or_default().to_string())
                .collect();
        }
        for j in f["join"].as_array().into_iter().flatten() {
            self.users
                .insert(j.as_str().unwrap_or_default().to_string());
        }
        for l in f["leave"].as_array().into_iter().flatten() {
            self.users.remove(l.as_str().unwrap_or_default());
        }
        self.total = f["users_total"].as_u64().unwrap_or(0);
    }

    /// Reads and applies frames for `quiet`; returns how many came.
    fn settle(&mut self, ws: &mut Ws, quiet: Duration) -> usize {
        let before = self.frames;
        while let Some(f) = next_presence(ws, quiet) {
            self.apply(&f);
        }
        self.frames - before
    }

    /// Reads and applies frames until the list is `want` (panics after PROMPT).
    fn until(&mut self, ws: &mut Ws, want: &[&str]) -> Value {
        let deadline = Instant::now() + PROMPT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let f = next_presence(ws, left)
                .unwrap_or_else(|| panic!("list never became {want:?}: {self:?}"));
            self.apply(&f);
            let now: Vec<&str> = self.users.iter().map(String::as_str).collect();
            if now == want {
                assert_eq!(self.total, want.len() as u64, "users_total in {f}");
                return f;
            }
        }
    }
}

#[test]
fn two_users_one_with_two_tabs_count_right_and_only_the_last_tab_is_a_leave() {
    let node = presence_node("users");
    let mut alice1 = open(&node, "doc", "alice", json!({}), "");
    let mut a1 = Roster::default();
    let first = a1.until(&mut alice1, &["alice"]);
    assert_eq!(users(&first), pairs(&[("alice", 1)]), "a snapshot first");
    a1.settle(&mut alice1, 3 * INTERVAL);

    let mut bob = open(&node, "doc", "bob", json!({}), "");
    let mut b = Roster::default();
    let snap = b.until(&mut bob, &["alice", "bob"]);
    assert_eq!(users(&snap), pairs(&[("alice", 1), ("bob", 1)]));
    let f = a1.until(&mut alice1, &["alice", "bob"]);
    assert_eq!(f["join"], json!(["bob"]), "alice hears bob join: {f}");
    assert_eq!(f["leave"], json!([]), "{f}");
    b.settle(&mut bob, 3 * INTERVAL);

    // A second tab is not a join.
    let mut alice2 = open(&node, "doc", "alice", json!({}), "");
    let mut a2 = Roster::default();
    let snap = a2.until(&mut alice2, &["alice", "bob"]);
    assert_eq!(users(&snap), pairs(&[("alice", 2), ("bob", 1)]));
    assert_eq!(snap["sockets"], 3);
    assert_eq!(b.settle(&mut bob, 3 * INTERVAL), 0, "a tab is not a join");
    let q = query(&node, "doc", "");
    assert_eq!(users(&q), pairs(&[("alice", 2), ("bob", 1)]));
    assert_eq!(q["sockets"], 3);
    assert_eq!(q["users_total"], 2);
    assert_eq!(q["session"], "doc");

    // Closing one tab is not a leave.
    drop(alice2);
    assert_eq!(b.settle(&mut bob, 3 * INTERVAL), 0, "a tab is not a leave");
    let q = query(&node, "doc", "");
    assert_eq!(users(&q), pairs(&[("alice", 1), ("bob", 1)]));

    // Closing the last one is.
    drop(alice1);
    let f = b.until(&mut bob, &["bob"]);
    assert_eq!(f["leave"], json!(["alice"]), "{f}");
    assert_eq!(users(&query(&node, "doc", "")), pairs(&[("bob", 1)]));
}

#[test]
fn counts_mode_names_nobody_and_a_token_claim_turns_frames_on_for_its_socket() {
    let node = presence_node("off");
    let mut plain = open(&node, "room", "carol", json!({}), "");
    let mut asks = open(&node, "room", "dave", json!({"presence": "counts"}), "");
    let snap = next_presence(&mut asks, PROMPT).expect("the claim asked for frames");
    assert!(snap.get("users").is_none(), "counts only: {snap}");
    assert_eq!(snap["users_total"], 2);
    let _erin = open(&node, "room", "erin", json!({}), "");
    let deadline = Instant::now() + PROMPT;
    loop {
        let f = next_presence(
            &mut asks,
            deadline.saturating_duration_since(Instant::now()),
        )
        .expect("a counts frame naming 3 users");
        assert!(
            f.get("join").is_none() && f.get("users").is_none(),
            "counts only: {f}"
        );
        if f["users_total"] == 3 {
            break;
        }
    }
    assert_eq!(
        next_presence(&mut plain, 3 * INTERVAL),
        None,
        "presence is off for it"
    );
}

#[test]
fn an_event_stream_gets_presence_as_its_own_blocks_and_a_long_poll_counts_without_frames() {
    let node = presence_node("users");
    let t = user_token("mixed", "sse-user", json!({}));
    let mut sse = sse_open(node.addr, &format!("token={t}"), &[]);
    assert_eq!(sse.status, 200, "{}", sse.head);
    let welcome = sse.next(PROMPT).expect("welcome");
    assert_eq!(welcome.event, "welcome");
    let snap = sse.next(PROMPT).expect("presence snapshot");
    assert_eq!(snap.event, "presence", "{snap:?}");
    assert_eq!(
        snap.id, None,
        "presence blocks carry no id (not a stream position)"
    );
    assert_eq!(users(&snap.json()), pairs(&[("sse-user", 1)]));
    let _ws = open(&node, "mixed", "ws-user", json!({}), "");
    let deadline = Instant::now() + PROMPT;
    loop {
        let b = sse
            .next(deadline.saturating_duration_since(Instant::now()))
            .expect("a presence block");
        assert_eq!(b.event, "presence", "{b:?}");
        let f = b.json();
        if f["users_total"] == 2 {
            break;
        }
    }
    // A long-poll counts in presence (its answer is a list of events, no frames).
    let epoch = welcome.json()["epoch"].as_str().expect("epoch").to_string();
    let t = user_token("mixed", "poller", json!({}));
    let req = format!(
        "GET /poll?token={t}&since={epoch}:0 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    );
    let mut poll = std::net::TcpStream::connect(node.addr).expect("connect");
    std::io::Write::write_all(&mut poll, req.as_bytes()).expect("poll");
    assert!(
        wait_until(PROMPT, || query(&node, "mixed", "")["users_total"] == 3),
        "{}",
        query(&node, "mixed", "")
    );
}

#[test]
fn a_resuming_socket_gets_a_presence_snapshot_before_its_replay() {
    let node = presence_node("users");
    let mut first = open(&node, "s-resume", "alice", json!({}), "");
    next_presence(&mut first, PROMPT).expect("snapshot");
    let epoch = first.welcome["epoch"].as_str().expect("epoch").to_string();
    node.publish_ok(
        &batch(&[event("s-resume", "a", "1"), event("s-resume", "b", "2")]),
        2,
    );
    let mut back = open(
        &node,
        "s-resume",
        "bob",
        json!({}),
        &format!("&since={epoch}:0"),
    );
    let snap = back.next_json(PROMPT);
    assert_eq!(snap["type"], "presence", "the snapshot comes first: {snap}");
    assert_eq!(users(&snap), pairs(&[("alice", 1), ("bob", 1)]));
    assert_eq!(back.next_event(PROMPT)["seq"], 1);
    assert_eq!(back.next_event(PROMPT)["seq"], 2);
}

#[test]
fn the_query_pages_through_every_user() {
    let node = presence_node("off");
    let _socks: Vec<Ws> = ["u1", "u2", "u3", "u4", "u5"]
        .iter()
        .map(|u| open(&node, "paged", u, json!({}), ""))
        .collect();
    let mut seen = Vec::new();
    let mut params = "?limit=2".to_string();
    for _ in 0..3 {
        let page = query(&node, "paged", &params);
        assert_eq!(page["users_total"], 5);
        seen.extend(users(&page));
        match page["next_cursor"].as_str() {
            Some(c) => params = format!("?limit=2&cursor={c}"),
            None => break,
        }
    }
    let subs: Vec<&str> = seen.iter().map(|(s, _)| s.as_str()).collect();
    assert_eq!(subs, ["u1", "u2", "u3", "u4", "u5"]);
}

#[test]
fn bad_presence_queries_get_clear_errors_and_unknown_sessions_look_empty() {
    let node = presence_node("off");
    let q = query(&node, "nobody-here", "");
    assert_eq!(
        q,
        json!({"session": "nobody-here", "users": [], "sockets": 0, "users_total": 0})
    );
    let get = |path: &str, key: Option<&str>| http_request(node.addr, &presence_request(path, key));
    get("/sessions/doc/presence", Some("wrong-key")).assert_error(401, "unauthorized");
    get("/sessions/doc/presence", None).assert_error(401, "unauthorized");
    let m = get("/sessions/doc/presence?cursor=zz", Some(API_KEY)).assert_error(400, "bad_request");
    assert!(m.contains("cursor"), "{m}");
    let m = get("/sessions/doc/presence?limit=0", Some(API_KEY)).assert_error(400, "bad_request");
    assert!(m.contains("limit"), "{m}");
    let m = get("/sessions/doc/presence?limit=x", Some(API_KEY)).assert_error(400, "bad_request");
    assert!(m.contains("limit"), "{m}");
    let m = get("/sessions/bad%20name/presence", Some(API_KEY)).assert_error(400, "bad_request");
    assert!(m.contains("session"), "{m}");
    let m = get("/sessions/bad%2/presence", Some(API_KEY)).assert_error(400, "bad_request");
    assert!(m.contains("session"), "{m}");
    // encodeURIComponent's spelling of a session with a colon is the same session.
    let r = get("/sessions/doc%3A1/presence", Some(API_KEY));
    assert_eq!(r.status, 200, "{}", r.body_str());
    assert_eq!(r.json()["session"], "doc:1");
    let post = format!(
        "POST /sessions/doc/presence HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {API_KEY}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    assert_eq!(http_request(node.addr, &post).status, 405);
    // The node is still fine, and counted the queries it answered.
    assert_eq!(node.get("/healthz").status, 200);
    assert!(node.metric("relay_presence_queries_total", &[]) >= 1.0);
}

#[test]
fn through_redis_a_user_on_two_nodes_counts_once_and_a_killed_nodes_users_leave_in_time() {
    let redis = Redis::start();
    let start = || {
        Node::builder()
            .env("REDIS_URL", &redis.url())
            .flag("--presence", "users")
            .flag("--presence-interval", "300ms")
            .flag("--presence-node-timeout", "3s")
            .start()
    };
    let (a, b, c) = (start(), start(), start());
    for n in [&a, &b, &c] {
        assert!(wait_ready(n, PROMPT), "node not ready: {}", n.log());
    }
    let mut alice_a = open(&a, "shared", "alice", json!({}), "");
    let mut bob_b = open(&b, "shared", "bob", json!({}), "");
    let _alice_c = open(&c, "shared", "alice", json!({}), "");
    let _carol_c = open(&c, "shared", "carol", json!({}), "");
    let (mut ra, mut rb) = (Roster::default(), Roster::default());
    rb.until(&mut bob_b, &["alice", "bob", "carol"]);
    ra.until(&mut alice_a, &["alice", "bob", "carol"]);
    let all = pairs(&[("alice", 2), ("bob", 1), ("carol", 1)]);
    for n in [&a, &b, &c] {
        assert!(
            wait_until(PROMPT, || users(&query(n, "shared", "")) == all),
            "every node answers every node's users: {}",
            query(n, "shared", "")
        );
        let q = query(n, "shared", "");
        assert_eq!(q["users_total"], 3, "alice counts once: {q}");
        assert_eq!(q["sockets"], 4, "{q}");
    }

    // kill -9: the node says nothing, its heartbeat stops.
    let killed = Instant::now();
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(
        unsafe { libc::kill(c.pid as libc::pid_t, libc::SIGKILL) },
        0
    );
    // The bound: the node timeout (3 s), the bridge's check (1 s), one interval.
    let bound = Duration::from_secs(3) + Duration::from_secs(1) + INTERVAL;
    let f = rb.until(&mut bob_b, &["alice", "bob"]);
    let took = killed.elapsed();
    assert_eq!(f["leave"], json!(["carol"]), "alice is still on a: {f}");
    eprintln!("leave announced {took:?} after kill -9 (bound {bound:?})");
    assert!(
        took <= bound + Duration::from_millis(500),
        "leave after {took:?}"
    );
    ra.until(&mut alice_a, &["alice", "bob"]);
    let left = pairs(&[("alice", 1), ("bob", 1)]);
    for n in [&a, &b] {
        let q = query(n, "shared", "");
        assert_eq!(users(&q), left, "the query agrees: {q}");
        assert_eq!(q["sockets"], 2, "{q}");
    }
    assert!(b.metric("relay_presence_nodes_expired_total", &[]) >= 1.0);
}

/// Opens a WebSocket and reads nothing: its frames wait in the kernel.
fn silent_socket(addr: std::net::SocketAddr, session: &str, sub: &str) -> std::net::TcpStream {
    use std::io::Write;
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    let t = user_token(session, sub, json!({}));
    let req = upgrade_request(&format!("/ws?token={t}"), &[]);
    s.write_all(req.as_bytes()).expect("upgrade request");
    s
}

#[test]
fn a_ten_thousand_socket_session_with_churn_gets_one_frame_per_interval_and_counts_only() {
    const HOLDERS: usize = 10_000;
    const WATCHERS: usize = 20;
    let interval = Duration::from_millis(500);
    let node = Node::builder()
        .flag("--presence", "counts")
        .flag("--presence-interval", "500ms")
        .flag("--connect-rate", "0")
        .flag("--max-sockets-per-session", "20000")
        .start();
    let mut watchers: Vec<Ws> = (0..WATCHERS)
        .map(|i| open(&node, "big", &format!("w{i}"), json!({}), ""))
        .collect();
    let t0 = Instant::now();
    let mut holders = Vec::with_capacity(HOLDERS);
    for i in 0..HOLDERS {
        holders.push(silent_socket(node.addr, "big", &format!("u{i}")));
    }
    let all = (HOLDERS + WATCHERS) as f64;
    assert!(
        wait_until(Duration::from_secs(60), || node
            .metric("relay_connected_clients", &[])
            >= all),
        "not all sockets connected: {}",
        node.metric("relay_connected_clients", &[])
    );
    eprintln!("{HOLDERS} sockets connected in {:?}", t0.elapsed());
    // Let the joins' frames go out, then count from a quiet start.
    std::thread::sleep(3 * interval);
    for w in &mut watchers {
        while next_presence(w, Duration::from_millis(1)).is_some() {}
    }
    let frames_before = node.metric("relay_presence_frames_total", &[]);

    // Churn: 100 sockets a second open, live 300 ms, close; for 3 s.
    let window = Duration::from_secs(3);
    let started = Instant::now();
    let mut live: std::collections::VecDeque<(Instant, std::net::TcpStream)> = Default::default();
    let mut opened = 0;
    while started.elapsed() < window {
        let due = started + Duration::from_millis(10 * opened as u64);
        if Instant::now() >= due {
            live.push_back((
                Instant::now(),
                silent_socket(node.addr, "big", &format!("c{opened}")),
            ));
            opened += 1;
        }
        while live
            .front()
            .is_some_and(|(t, _)| t.elapsed() >= Duration::from_millis(300))
        {
            live.pop_front();
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    drop(live);
    let elapsed = started.elapsed() + interval;
    std::thread::sleep(interval);

    // Every socket got at most one frame per interval: the watchers see it
    // frame by frame, the node's count says it for all of them.
    let most = (elapsed.as_millis() / interval.as_millis()) as usize + 1;
    for (i, w) in watchers.iter_mut().enumerate() {
        let mut at = Vec::new();
        while let Some(f) = next_presence(w, Duration::from_millis(1)) {
            assert!(f.get("join").is_none(), "counts only: {f}");
            at.push(f);
        }
        assert!(!at.is_empty(), "watcher {i} heard nothing of the churn");
        assert!(
            at.len() <= most,
            "watcher {i}: {} frames, at most {most}",
            at.len()
        );
    }
    let sent = node.metric("relay_presence_frames_total", &[]) - frames_before;
    let sockets = all + opened as f64;
    eprintln!(
        "{opened} churned sockets over {window:?}: {sent} presence frames to {all} sockets (at most {} allowed)",
        sockets * most as f64
    );
    assert!(sent <= sockets * most as f64, "{sent} frames");
    assert!(sent >= all, "every listener heard of the churn: {sent}");

    // Past the list threshold the query answers counts only.
    let q = query(&node, "big", "");
    assert!(q.get("users").is_none(), "counts only: {q}");
    assert_eq!(q["users_total"], HOLDERS + WATCHERS, "{q}");
    drop(holders);
}
