//! What operators rely on: health endpoints, metrics values, the latency histogram, the
//! admin port, start-up errors, and the `relay token` / `relay publish` tools.

// A test drives the node from its own threads, which may sleep and block.
#![allow(clippy::disallowed_methods)]

mod common;

use std::time::Duration;

use common::*;

fn deliver(node: &Node, session: &str, sockets: usize, events: usize) -> Vec<Ws> {
    let mut socks: Vec<Ws> = (0..sockets).map(|_| node.ws_welcomed(session)).collect();
    let first: Vec<String> = (0..events / 2)
        .map(|i| event(session, "e", &i.to_string()))
        .collect();
    if !first.is_empty() {
        node.publish_ok(&batch(&first), first.len() as u64);
    }
    for i in events / 2..events {
        node.publish_ok(&event(session, "e", &i.to_string()), 1);
    }
    for ws in socks.iter_mut() {
        for i in 0..events {
            assert_eq!(ws.next_event(PROMPT)["data"], i);
        }
    }
    socks
}

#[test]
fn healthz_and_readyz_answer_200_on_a_serving_node() {
    let node = Node::start();
    assert_eq!(node.get("/healthz").status, 200);
    assert_eq!(node.get("/readyz").status, 200);
}

#[test]
fn metrics_count_events_deliveries_and_connected_clients() {
    let node = Node::start();
    let _socks = deliver(&node, "m1", 3, 5);
    // A refused batch is not counted as accepted events.
    let refused = batch(&[event("m1", "e", "1"), r#"{"session":"m1"}"#.to_string()]);
    node.publish(&refused).assert_error(400, "bad_request");
    let deliveries = node.wait_metric("relay_deliveries_total", &[], PROMPT, |v| v >= 15.0);
    assert_eq!(deliveries, 15.0, "5 events to 3 sockets");
    assert_eq!(node.metric("relay_events_total", &[]), 5.0);
    assert_eq!(node.metric("relay_connected_clients", &[]), 3.0);
    assert!(
        node.metric("relay_latency_seconds_count", &[]) > 0.0,
        "latency histogram is empty"
    );
    let resp = http_get(node.ops_addr(), "/metrics");
    let ct = resp.header("content-type").unwrap_or("");
    assert!(ct.starts_with("text/plain"), "/metrics content-type {ct:?}");
    let text = resp.body_str();
    assert!(
        text.contains("relay_latency_seconds_bucket{"),
        "relay_latency_seconds is not a histogram"
    );
}

#[test]
fn metrics_have_every_contract_series() {
    let node = Node::start();
    // Give the labelled series something to count: a refused publish and a closed socket.
    let resp = http_request(node.addr, &post_events_request(&event("s", "e", "1"), None));
    assert_eq!(resp.status, 401);
    let mut ws = node.ws_welcomed("m2");
    let _ = ws.ws.close(None);
    let _ = ws.wait_close(PROMPT);
    assert!(
        wait_until(PROMPT, || node.metric("relay_connected_clients", &[])
            == 0.0),
        "closed socket still counted"
    );
    let text = node.metrics();
    for name in [
        "relay_connected_clients",
        "relay_events_total",
        "relay_deliveries_total",
        "relay_publish_errors_total",
        "relay_latency_seconds",
        "relay_socket_disconnects_total",
        "relay_rate_limiter_blocked_total",
        "relay_socket_handoffs_total",
    ] {
        assert!(text.contains(name), "/metrics lacks {name}:\n{text}");
    }
    assert!(
        node.metric("relay_publish_errors_total", &[]) >= 1.0,
        "refused publish not counted"
    );
    assert_eq!(
        node.metric(
            "relay_socket_disconnects_total",
            &[("reason", "client_close")]
        ),
        1.0
    );
}

#[test]
fn latency_json_has_percentiles_and_count() {
    let node = Node::start();
    let _socks = deliver(&node, "l1", 2, 10);
    let resp = http_get(node.ops_addr(), "/latency");
    assert_eq!(resp.status, 200, "{}", resp.body_str());
    let v = resp.json();
    for key in ["p50", "p90", "p99", "p99.9", "max"] {
        assert!(v[key].is_number(), "/latency lacks numeric {key}: {v}");
        assert!(v[key].as_f64().unwrap() >= 0.0);
    }
    assert!(
        v["count"].as_u64().is_some_and(|c| c > 0),
        "/latency count is not positive: {v}"
    );
    assert!(v["p50"].as_f64() <= v["max"].as_f64(), "p50 > max: {v}");
}

#[test]
fn latency_hgrm_is_hdrhistogram_percentile_text() {
    let node = Node::start();
    let _socks = deliver(&node, "l2", 1, 10);
    let resp = http_get(node.ops_addr(), "/latency?format=hgrm");
    assert_eq!(resp.status, 200, "{}", resp.body_str());
    let text = resp.body_str();
    let header = text
        .lines()
        .find(|l| l.contains("Value") && l.contains("Percentile"))
        .unwrap_or_else(|| panic!("no hgrm header line:\n{text}"));
    assert!(header.contains("TotalCount"), "hgrm header {header:?}");
    assert!(text.contains("#[Mean"), "no hgrm footer:\n{text}");
}

#[test]
fn admin_port_moves_metrics_and_latency_off_the_public_port() {
    let node = Node::builder().env("ADMIN_PORT", "0").start();
    let admin = node.admin_addr.expect("admin address");
    assert_ne!(admin, node.addr);
    for path in ["/metrics", "/latency"] {
        let r = http_get(admin, path);
        assert_eq!(r.status, 200, "admin {path}: {}", r.body_str());
        let r = node.get(path);
        assert_eq!(r.status, 404, "public {path} still answers");
    }
    assert!(http_get(admin, "/metrics")
        .body_str()
        .contains("relay_connected_clients"));
    assert_eq!(node.get("/healthz").status, 200);
    // Sockets and publishing stay on the public port.
    let _socks = deliver(&node, "adm", 1, 2);
}

#[test]
fn cli_token_and_publish_deliver_end_to_end() {
    let node = Node::start();
    let out = relay_cli(&["token", "--session", "cli-1", "--sub", "u1", "--ttl", "5m"]);
    assert!(
        out.status.success(),
        "relay token failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).expect("utf-8 token");
    let jwt = stdout.trim();
    assert_eq!(stdout.lines().count(), 1, "relay token printed {stdout:?}");
    let claims = verify(jwt);
    assert_eq!(claims["session"], "cli-1");
    assert_eq!(claims["sub"], "u1");
    let ttl = claims["exp"].as_i64().unwrap() - now();
    assert!((290..=300).contains(&ttl), "--ttl 5m gave exp now+{ttl}s");

    let (mut ws, _) = ws_connect(node.addr, &format!("/ws?token={jwt}"), &[])
        .unwrap_or_else(|r| panic!("minted token refused: {} {}", r.status, r.body_str()));
    let w = ws.next_json(PROMPT);
    assert_eq!(w["session"], "cli-1");

    let url = node.http_url();
    let out = relay_cli(&[
        "publish",
        "--session",
        "cli-1",
        "--event",
        "cli.event",
        "--data",
        r#"{"from": "cli", "n": [1, 2]}"#,
        "--id",
        "cli-id-1",
        "--url",
        &url,
    ]);
    assert!(
        out.status.success(),
        "relay publish failed: {} {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("accepted"),
        "relay publish printed {:?}",
        String::from_utf8_lossy(&out.stdout)
    );
    let frame = ws.next_text(PROMPT);
    let ev: serde_json::Value = serde_json::from_str(&frame).unwrap();
    assert_eq!(ev["event"], "cli.event");
    assert_eq!(ev["id"], "cli-id-1");
    assert_eq!(
        raw_member(&frame, "data"),
        Some(r#"{"from": "cli", "n": [1, 2]}"#)
    );
}

#[test]
fn cli_publish_fails_with_nonzero_status_when_refused() {
    let node = Node::start();
    let out = relay_cli(&[
        "publish",
        "--session",
        "bad session!",
        "--event",
        "e",
        "--data",
        "1",
        "--url",
        &node.http_url(),
    ]);
    assert!(!out.status.success(), "relay publish exited 0 on a 400");
}

/// Verifies an HS256 token with the test secret and returns its claims.
fn verify(jwt: &str) -> serde_json::Value {
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
    validation.required_spec_claims.clear();
    let key = jsonwebtoken::DecodingKey::from_secret(SECRET.as_bytes()).unwrap();
    jsonwebtoken::decode::<serde_json::Value>(jwt, &key, &validation)
        .unwrap_or_else(|e| panic!("token {jwt:?} does not verify with the secret: {e}"))
        .claims
}

#[test]
fn cli_token_lasts_15_minutes_by_default() {
    let out = relay_cli(&["token", "--session", "cli-2"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let claims = verify(String::from_utf8(out.stdout).unwrap().trim());
    let ttl = claims["exp"].as_i64().unwrap() - now();
    assert!(
        (890..=900).contains(&ttl),
        "default ttl gave exp now+{ttl}s"
    );
    assert_eq!(claims["session"], "cli-2");
}

fn startup_failure(builder: NodeBuilder, var: &str) {
    let mut cmd = builder.command();
    cmd.stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let out = wait_output(cmd.spawn().expect("spawn"), Duration::from_secs(20));
    assert_eq!(out.status.code(), Some(2), "exit status {:?}", out.status);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(var),
        "start-up error does not name {var}: {stderr:?}"
    );
}

#[test]
fn serve_without_signing_secret_exits_2_naming_the_variable() {
    startup_failure(
        Node::builder().without_env("JWT_SIGNING_SECRET"),
        "JWT_SIGNING_SECRET",
    );
}

#[test]
fn serve_with_a_weak_signing_secret_exits_2_naming_the_variable() {
    startup_failure(
        Node::builder().env("JWT_SIGNING_SECRET", "short"),
        "JWT_SIGNING_SECRET",
    );
}

#[test]
fn serve_without_api_key_exits_2_naming_the_variable() {
    startup_failure(
        Node::builder().without_env("RELAY_API_KEY"),
        "RELAY_API_KEY",
    );
}

fn env_local_value(dir: &std::path::Path, key: &str) -> String {
    let text = std::fs::read_to_string(dir.join(".env.local")).expect("read .env.local");
    text.lines()
        .filter_map(|l| l.split_once('='))
        .find(|(k, _)| k.trim() == key)
        .map(|(_, v)| v.trim().trim_matches('"').trim_matches('\'').to_string())
        .unwrap_or_else(|| panic!(".env.local has no {key}:\n{text}"))
}

#[test]
fn dev_mode_starts_without_set_up_and_the_tools_share_its_env_local() {
    let dir = fresh_dir("dev");
    let start = || {
        Node::builder()
            .without_env("JWT_SIGNING_SECRET")
            .without_env("RELAY_API_KEY")
            .arg("--dev")
            .dir(&dir)
            .start()
    };
    let node = start();
    let secret = env_local_value(&dir, "JWT_SIGNING_SECRET");
    let key = env_local_value(&dir, "RELAY_API_KEY");
    assert!(
        secret.len() >= 32,
        "generated secret is weak: {} bytes",
        secret.len()
    );
    assert!(!key.is_empty());

    // `relay token` and `relay publish` run in the same directory with no environment.
    let out = relay_cli_in(&dir, &[], &["token", "--session", "dev-1"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let jwt = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let (mut ws, _) = ws_connect(
        node.addr,
        &format!("/ws?token={jwt}"),
        &[("Origin", "http://localhost:5173")],
    )
    .unwrap_or_else(|r| panic!("dev socket refused: {} {}", r.status, r.body_str()));
    assert_eq!(ws.next_json(PROMPT)["session"], "dev-1");
    let url = node.http_url();
    let out = relay_cli_in(
        &dir,
        &[],
        &[
            "publish",
            "--session",
            "dev-1",
            "--event",
            "hi",
            "--data",
            "[1]",
            "--url",
            &url,
        ],
    );
    assert!(
        out.status.success(),
        "{} {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(ws.next_event(PROMPT)["event"], "hi");

    // Real environment variables win over .env.local.
    let out = relay_cli_in(
        &dir,
        &[("JWT_SIGNING_SECRET", SECRET)],
        &["token", "--session", "dev-2"],
    );
    assert!(out.status.success());
    let env_jwt = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
    validation.required_spec_claims.clear();
    let key_env = jsonwebtoken::DecodingKey::from_secret(SECRET.as_bytes()).unwrap();
    assert!(
        jsonwebtoken::decode::<serde_json::Value>(&env_jwt, &key_env, &validation).is_ok(),
        "token not signed with the environment's secret"
    );

    // A second start keeps the generated secrets.
    drop(ws);
    drop(node);
    let _again = start();
    assert_eq!(env_local_value(&dir, "JWT_SIGNING_SECRET"), secret);
    assert_eq!(env_local_value(&dir, "RELAY_API_KEY"), key);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn port_env_var_sets_the_listening_port() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let node = Node::builder().env("PORT", &port.to_string()).start();
    assert_eq!(node.addr.port(), port);
    assert_eq!(node.get("/healthz").status, 200);
}

#[test]
fn log_format_json_writes_one_json_object_per_line() {
    let node = Node::builder().env("LOG_FORMAT", "json").start();
    let _ws = node.ws_welcomed("logs");
    std::thread::sleep(Duration::from_millis(200));
    let log = std::fs::read_to_string(&node.log_path).unwrap();
    assert!(!log.trim().is_empty(), "no log lines");
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        assert!(
            serde_json::from_str::<serde_json::Value>(line).is_ok_and(|v| v.is_object()),
            "log line is not a JSON object: {line:?}"
        );
    }
}

#[test]
fn log_level_accepts_a_tracing_filter() {
    let node = Node::builder().env("LOG_LEVEL", "warn,relay=debug").start();
    assert_eq!(node.get("/healthz").status, 200);
}
