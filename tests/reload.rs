//! Key rotation without a restart: secrets from files, SIGHUP reloads of secrets,
//! keys, origins, limits and log level, and refused reloads that change nothing.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use jsonwebtoken::Algorithm;
use serde_json::json;

const OLD_SECRET: &str = "old-signing-secret-0123456789abcdef-old";
const NEW_SECRET: &str = "new-signing-secret-0123456789abcdef-new";
const OLD_KEY: &str = "old-api-key-0123456789";
const NEW_KEY: &str = "new-api-key-0123456789";

fn sighup(node: &Node) {
    // SAFETY: plain kill(2) on our own child's pid.
    let rc = unsafe { libc::kill(node.pid as libc::pid_t, libc::SIGHUP) };
    assert_eq!(rc, 0, "kill(SIGHUP) failed");
}

fn signed(secret: &str, session: &str) -> String {
    sign(
        Algorithm::HS256,
        secret,
        &json!({"session": session, "exp": now() + 600}),
    )
}

fn connects(node: &Node, token: &str) -> bool {
    ws_connect(node.addr, &format!("/ws?token={token}"), &[]).is_ok()
}

fn publish_with(node: &Node, key: &str, body: &str) -> u16 {
    http_request(node.addr, &post_events_request(body, Some(key))).status
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).expect("write file");
}

/// Waits until the log says a reload happened (or was refused) `n` times.
fn wait_log(node: &Node, needle: &str, n: usize) {
    assert!(
        wait_until(PROMPT, || node.log().matches(needle).count() >= n),
        "log never said {needle:?} {n} times:\n{}",
        node.log()
    );
}

#[test]
fn secrets_and_keys_rotate_from_files_on_sighup_without_dropping_sockets() {
    let dir = fresh_dir("reload-files");
    let secret_file = dir.join("jwt_secret");
    let key_file = dir.join("api_key");
    write(&secret_file, OLD_SECRET);
    write(&key_file, OLD_KEY);
    let node = Node::builder()
        .without_env("JWT_SIGNING_SECRET")
        .without_env("RELAY_API_KEY")
        .env(
            "JWT_SIGNING_SECRET_FILE",
            &secret_file.display().to_string(),
        )
        .env("RELAY_API_KEY_FILE", &key_file.display().to_string())
        .start();
    let mut held = ws_connect(
        node.addr,
        &format!("/ws?token={}", signed(OLD_SECRET, "rot")),
        &[],
    )
    .expect("old secret at start")
    .0;
    assert_eq!(held.next_json(PROMPT)["type"], "welcome");
    assert!(!connects(&node, &signed(NEW_SECRET, "rot")));

    // Overlap: old and new both valid (one per line in the files).
    write(&secret_file, &format!("{OLD_SECRET}\n{NEW_SECRET}\n"));
    write(&key_file, &format!("{OLD_KEY}\n{NEW_KEY}\n"));
    sighup(&node);
    wait_log(&node, "configuration reloaded", 1);
    assert!(connects(&node, &signed(NEW_SECRET, "rot")));
    assert!(connects(&node, &signed(OLD_SECRET, "rot")));
    assert_eq!(publish_with(&node, NEW_KEY, &event("rot", "e", "1")), 202);
    assert_eq!(publish_with(&node, OLD_KEY, &event("rot", "e", "2")), 202);

    // Cut over: the old ones stop working; the socket opened with the old secret stays.
    write(&secret_file, NEW_SECRET);
    write(&key_file, NEW_KEY);
    sighup(&node);
    wait_log(&node, "configuration reloaded", 2);
    assert!(!connects(&node, &signed(OLD_SECRET, "rot")));
    assert_eq!(publish_with(&node, OLD_KEY, &event("rot", "e", "3")), 401);
    assert_eq!(
        publish_with(&node, NEW_KEY, &event("rot", "after", "4")),
        202
    );
    let mut seen = Vec::new();
    while seen.last().map(String::as_str) != Some("after") {
        let v = held.next_event(PROMPT);
        seen.push(v["event"].as_str().unwrap_or_default().to_string());
    }
    assert_eq!(seen, ["e", "e", "after"], "the held socket kept receiving");
    // Names, never values, in the log.
    let log = node.log();
    assert!(log.contains("JWT_SIGNING_SECRET") && log.contains("RELAY_API_KEY"));
    for secret in [OLD_SECRET, NEW_SECRET, OLD_KEY, NEW_KEY] {
        assert!(!log.contains(secret), "a secret value reached the log");
    }
}

#[test]
fn config_file_reload_changes_origins_limits_and_log_level() {
    let dir = fresh_dir("reload-config");
    let file = dir.join("relay.env");
    write(&file, "ALLOWED_ORIGINS=https://a.example.com\n");
    let node = Node::builder()
        .env("RELAY_CONFIG_FILE", &file.display().to_string())
        .start();
    let origin = |o: &str| {
        ws_connect(
            node.addr,
            &format!("/ws?token={}", token("o")),
            &[("Origin", o)],
        )
        .is_ok()
    };
    assert!(origin("https://a.example.com"));
    assert!(!origin("https://b.example.com"));
    let big = event("o", "e", &format!("\"{}\"", "x".repeat(500)));
    assert_eq!(node.publish(&big).status, 202);

    write(
        &file,
        "ALLOWED_ORIGINS=https://b.example.com\nRELAY_MAX_BODY_BYTES=200\nLOG_LEVEL=debug\n",
    );
    sighup(&node);
    wait_log(&node, "configuration reloaded", 1);
    assert!(origin("https://b.example.com"));
    assert!(!origin("https://a.example.com"));
    assert_eq!(node.publish(&big).status, 413);
    let log = node.log();
    assert!(log.contains("ALLOWED_ORIGINS") && log.contains("limits") && log.contains("LOG_LEVEL"));
    // Debug lines now appear (a refused upgrade is logged at debug level or above).
    assert!(wait_until(Duration::from_secs(3), || node
        .log()
        .contains("DEBUG")));
}

#[test]
fn invalid_reload_is_refused_and_the_running_configuration_stays() {
    let dir = fresh_dir("reload-bad");
    let file = dir.join("relay.env");
    write(&file, "RELAY_MAX_BODY_BYTES=100000\n");
    let node = Node::builder()
        .env("RELAY_CONFIG_FILE", &file.display().to_string())
        .start();
    let mut ws = node.ws_welcomed("bad");

    for (n, bad) in [
        "RELAY_MAX_HEAD_BYTES=10\n",
        "ALLOWED_ORIGINS=atlassian.net\n",
        "JWT_SIGNING_SECRET=short\n",
        "PORT=9999\n",
        "RELAY_PING_INTERVAL=banana\n",
    ]
    .into_iter()
    .enumerate()
    {
        write(&file, bad);
        sighup(&node);
        wait_log(&node, "reload refused", n + 1);
    }
    assert!(!node.log().contains("configuration reloaded"));
    // Still the original secret, key and limits; the socket is still there.
    node.publish_ok(&event("bad", "still", "1"), 1);
    assert_eq!(ws.next_event(PROMPT)["event"], "still");
    assert!(connects(&node, &token("bad")));
}

#[test]
fn rate_limits_and_caps_reload_on_sighup_without_dropping_a_socket_or_forgetting_counts() {
    let dir = fresh_dir("reload-limits");
    let file = dir.join("relay.env");
    write(
        &file,
        "RELAY_CONNECT_RATE=1\nRELAY_TENANT_CLAIM=tenant\nRELAY_MAX_SOCKETS_PER_TENANT=2\n",
    );
    let node = Node::builder()
        .env("RELAY_CONFIG_FILE", &file.display().to_string())
        .start();
    let tenant_token = |session: &str| {
        sign(
            Algorithm::HS256,
            SECRET,
            &json!({"session": session, "tenant": "t1", "exp": now() + 600}),
        )
    };
    // Connect rate 1/s, burst 2: the third connect in a row is refused.
    let a = ws_connect(node.addr, &format!("/ws?token={}", tenant_token("l1")), &[]);
    let b = ws_connect(node.addr, &format!("/ws?token={}", tenant_token("l2")), &[]);
    assert!(a.is_ok() && b.is_ok());
    assert!(ws_connect(node.addr, &format!("/ws?token={}", token("l3")), &[]).is_err());

    // Off, and the tenant cap up to 3: the tenant's two open sockets still count.
    write(
        &file,
        "RELAY_CONNECT_RATE=0\nRELAY_TENANT_CLAIM=tenant\nRELAY_MAX_SOCKETS_PER_TENANT=3\n",
    );
    sighup(&node);
    wait_log(&node, "configuration reloaded", 1);
    assert!(node.log().contains("rate limits and caps"));
    let c = ws_connect(node.addr, &format!("/ws?token={}", tenant_token("l4")), &[]);
    assert!(c.is_ok(), "the tenant's third socket, under the new cap");
    let refused = raw_upgrade_response(
        node.addr,
        &upgrade_request(&format!("/ws?token={}", tenant_token("l5")), &[]),
    );
    assert_eq!(
        refused.status, 429,
        "a fourth is over the cap: counts were kept"
    );
    for i in 0..20 {
        assert!(
            ws_connect(
                node.addr,
                &format!("/ws?token={}", token(&format!("free{i}"))),
                &[]
            )
            .is_ok(),
            "connect {i} refused with the rate off"
        );
    }
    // The sockets opened before the reload are still served.
    let (mut a, _) = a.unwrap();
    assert_eq!(a.next_json(PROMPT)["type"], "welcome");
    node.publish_ok(&event("l1", "e", "1"), 1);
    assert_eq!(a.next_event(PROMPT)["seq"], 1);
}
