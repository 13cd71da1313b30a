//! Rate limiters and caps: each answers 429 with Retry-After (or closes a flooding
//! socket with 1008) and counts in relay_rate_limiter_blocked_total{limiter}.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

fn upgrade_with(node: &Node, session: &str, headers: &[(&str, &str)]) -> Result<Ws, HttpResponse> {
    ws_connect(node.addr, &format!("/ws?token={}", token(session)), headers).map(|(ws, _)| ws)
}

fn assert_429(resp: &HttpResponse) {
    resp.assert_error(429, "rate_limited");
    assert_eq!(
        resp.header("retry-after"),
        Some("1"),
        "429 without Retry-After"
    );
}

#[test]
fn connects_over_the_per_address_rate_get_429() {
    let node = Node::builder().flag("--connect-rate", "2").start();
    let mut open = Vec::new();
    let mut refused = None;
    for _ in 0..8 {
        match upgrade_with(&node, "conn", &[]) {
            Ok(ws) => open.push(ws),
            Err(resp) => {
                refused = Some(resp);
                break;
            }
        }
    }
    assert_eq!(open.len(), 4, "a burst of twice the rate passes");
    assert_429(&refused.expect("the fifth connect is refused"));
    assert_eq!(
        node.metric(
            "relay_rate_limiter_blocked_total",
            &[("limiter", "connect")]
        ),
        1.0
    );
}

#[test]
fn forwarded_for_names_the_client_only_behind_a_trusted_proxy() {
    // 127.0.0.1 is a trusted proxy: each forwarded client has its own budget.
    let node = Node::builder()
        .flag("--connect-rate", "1")
        .flag("--trusted-proxies", "127.0.0.0/8")
        .start();
    let a = [("X-Forwarded-For", "198.51.100.1")];
    assert!(upgrade_with(&node, "xff", &a).is_ok());
    assert!(upgrade_with(&node, "xff", &a).is_ok());
    assert_429(
        &upgrade_with(&node, "xff", &a)
            .err()
            .expect("third from .1 refused"),
    );
    let b = [("X-Forwarded-For", "203.0.113.5, 198.51.100.2")];
    assert!(
        upgrade_with(&node, "xff", &b).is_ok(),
        "another client behind the proxy"
    );

    // Not trusted: the header is ignored and every connect counts against the peer.
    let node = Node::builder().flag("--connect-rate", "1").start();
    for ip in ["198.51.100.1", "198.51.100.2"] {
        assert!(upgrade_with(&node, "xff", &[("X-Forwarded-For", ip)]).is_ok());
    }
    let refused = upgrade_with(&node, "xff", &[("X-Forwarded-For", "198.51.100.3")]);
    assert_429(
        &refused
            .err()
            .expect("spoofed header does not buy a new budget"),
    );
}

#[test]
fn publishes_over_the_per_key_rate_get_429_and_other_keys_are_unaffected() {
    let node = Node::builder()
        .env("RELAY_API_KEY", &format!("{API_KEY},second-key-0123456789"))
        .flag("--publish-rate", "10")
        .start();
    let evs: Vec<String> = (0..10).map(|i| event("p", "e", &i.to_string())).collect();
    node.publish_ok(&batch(&evs), 10);
    let resp = node.publish(&event("p", "e", "11"));
    assert_429(&resp);
    let other = http_request(
        node.addr,
        &post_events_request(&event("p", "e", "12"), Some("second-key-0123456789")),
    );
    assert_eq!(other.status, 202, "{}", other.body_str());
    assert_eq!(
        node.metric(
            "relay_rate_limiter_blocked_total",
            &[("limiter", "publish")]
        ),
        1.0
    );
    assert_eq!(
        node.metric("relay_publish_errors_total", &[("reason", "rate_limited")]),
        1.0
    );
}

#[test]
fn publishes_over_the_per_tenant_rate_get_429_and_other_tenants_are_unaffected() {
    let node = Node::builder().flag("--tenant-publish-rate", "5").start();
    let as_tenant = |tenant: &str, body: &str| {
        let req = post_events_request(body, Some(API_KEY)).replacen(
            "\r\n\r\n",
            &format!("\r\nX-Relay-Tenant: {tenant}\r\n\r\n"),
            1,
        );
        http_request(node.addr, &req)
    };
    let evs: Vec<String> = (0..5).map(|i| event("tp", "e", &i.to_string())).collect();
    let first = as_tenant("cloud-1", &batch(&evs));
    assert_eq!(first.status, 202, "{}", first.body_str());
    assert_429(&as_tenant("cloud-1", &event("tp", "e", "6")));
    let other = as_tenant("cloud-2", &event("tp", "e", "7"));
    assert_eq!(other.status, 202, "another tenant has its own budget");
    // Without the header, only the per-key rate applies.
    node.publish_ok(&event("tp", "e", "8"), 1);
    assert_eq!(
        node.metric(
            "relay_rate_limiter_blocked_total",
            &[("limiter", "tenant_publish")]
        ),
        1.0
    );
    // A tenant value is checked like a session name; no label carries it.
    as_tenant("bad tenant!", &event("tp", "e", "9")).assert_error(400, "bad_request");
    assert!(!node.metrics().contains("cloud-1"));
}

#[test]
fn sockets_over_the_per_session_cap_get_429() {
    let node = Node::builder()
        .flag("--max-sockets-per-session", "2")
        .start();
    let _a = node.ws_welcomed("capped");
    let _b = node.ws_welcomed("capped");
    assert_429(
        &upgrade_with(&node, "capped", &[])
            .err()
            .expect("third socket refused"),
    );
    let _other = node.ws_welcomed("uncapped");
    assert_eq!(
        node.metric(
            "relay_rate_limiter_blocked_total",
            &[("limiter", "session")]
        ),
        1.0
    );
}

#[test]
fn sockets_over_the_per_tenant_cap_get_429_until_one_closes() {
    let node = Node::builder()
        .flag("--tenant-claim", "cloudId")
        .flag("--max-sockets-per-tenant", "2")
        .start();
    let tenant_token = |session: &str, tenant: &str| {
        token_with(&json!({"session": session, "cloudId": tenant, "exp": now() + 600}))
    };
    let open = |session: &str, tenant: &str| {
        ws_connect(
            node.addr,
            &format!("/ws?token={}", tenant_token(session, tenant)),
            &[],
        )
        .map(|(ws, _)| ws)
    };
    let first = open("s1", "t1").expect("t1 #1");
    let _second = open("s2", "t1").expect("t1 #2");
    assert_429(&open("s3", "t1").err().expect("t1 #3 refused"));
    let _other = open("s4", "t2").expect("another tenant");
    drop(first);
    assert!(
        wait_until(PROMPT, || open("s5", "t1").is_ok()),
        "the closed socket's slot was not given back"
    );
    assert!(node.metric("relay_rate_limiter_blocked_total", &[("limiter", "tenant")]) >= 1.0);
}

#[test]
fn client_sending_faster_than_its_budget_is_closed_with_1008() {
    let node = Node::builder().flag("--client-message-rate", "5").start();
    let mut ws = node.ws_welcomed("flood");
    for _ in 0..40 {
        if ws
            .ws
            .send(tungstenite::Message::Ping(vec![1u8].into()))
            .is_err()
        {
            break;
        }
    }
    assert_eq!(ws.expect_close(PROMPT), Some(1008));
    assert_eq!(
        node.wait_metric(
            "relay_rate_limiter_blocked_total",
            &[("limiter", "client_messages")],
            Duration::from_secs(5),
            |v| v >= 1.0
        ),
        1.0
    );
}
