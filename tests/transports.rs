//! `RELAY_TRANSPORTS`, the operator's switch (playbook: "revert clients to
//! polling"): applied on SIGHUP, it refuses a switched-off transport with 503 and
//! `X-Relay-Transports`, and moves its open subscribers off with 1012, spread
//! over the drain window, while the other transports keep serving.

// A test drives the node from its own threads, which may sleep and block.
#![allow(clippy::disallowed_methods)]

mod common;

use std::time::{Duration, Instant};

use common::*;

fn sighup(node: &Node) {
    // SAFETY: plain kill(2) on our own child's pid.
    let rc = unsafe { libc::kill(node.pid as libc::pid_t, libc::SIGHUP) };
    assert_eq!(rc, 0, "kill(SIGHUP) failed");
}

#[test]
fn switching_websockets_off_refuses_upgrades_and_moves_open_sockets_off_gradually() {
    let dir = fresh_dir("transports");
    let file = dir.join("relay.env");
    std::fs::write(&file, "RELAY_TRANSPORTS=ws,sse,poll\n").unwrap();
    let node = Node::builder()
        .env("RELAY_CONFIG_FILE", &file.display().to_string())
        .flag("--drain-timeout", "3s")
        .start();
    let sockets: Vec<Ws> = (0..40)
        .map(|i| node.ws_welcomed(&format!("tr-{i}")))
        .collect();
    let mut stream = sse_open(node.addr, &format!("token={}", token("tr-0")), &[]);
    assert_eq!(stream.next(PROMPT).unwrap().event, "welcome");

    std::fs::write(&file, "RELAY_TRANSPORTS=sse,poll\n").unwrap();
    let switched = Instant::now();
    sighup(&node);
    let closes: Vec<_> = sockets
        .into_iter()
        .map(|mut ws| {
            std::thread::spawn(move || {
                let code = ws.expect_close(Duration::from_secs(10));
                (code, Instant::now())
            })
        })
        .collect();
    // New upgrades are refused at once, naming what is offered.
    assert!(wait_until(PROMPT, || {
        raw_upgrade_response(
            node.addr,
            &upgrade_request(&format!("/ws?token={}", token("tr-new")), &[]),
        )
        .status
            == 503
    }));
    let refused = raw_upgrade_response(
        node.addr,
        &upgrade_request(&format!("/ws?token={}", token("tr-new")), &[]),
    );
    assert_eq!(refused.header("x-relay-transports"), Some("sse,poll"));

    let times: Vec<Duration> = closes
        .into_iter()
        .map(|h| {
            let (code, at) = h.join().unwrap();
            assert_eq!(code, Some(1012));
            at.duration_since(switched)
        })
        .collect();
    let first = times.iter().min().unwrap();
    let last = times.iter().max().unwrap();
    assert!(
        *last - *first >= Duration::from_millis(1000),
        "closes not spread: first {first:?}, last {last:?}"
    );
    assert!(
        *last < Duration::from_secs(4),
        "closes took {last:?} (window 2.4 s)"
    );

    // The event stream stayed, and gets the session's events.
    node.publish_ok(&event("tr-0", "e", "1"), 1);
    assert_eq!(stream.next_event(PROMPT)["data"], 1);

    // Switched back on, upgrades work again.
    std::fs::write(&file, "RELAY_TRANSPORTS=ws,sse,poll\n").unwrap();
    sighup(&node);
    assert!(wait_until(PROMPT, || ws_connect(
        node.addr,
        &format!("/ws?token={}", token("tr-back")),
        &[]
    )
    .is_ok()));
}

#[test]
fn a_transports_value_that_names_nothing_known_is_refused() {
    let out = relay_cli(&["serve", "--dev", "--port", "0", "--transports", "ws,pigeon"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("RELAY_TRANSPORTS"), "{err}");
}
