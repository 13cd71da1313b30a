//! `GET /ws`: every refusal row of the contract's table, the three ways to carry a token,
//! origins, the connection limit, and the welcome frame.

// A test drives the node from its own threads, which may sleep and block.
#![allow(clippy::disallowed_methods)]

mod common;

use std::time::Duration;

use common::*;
use jsonwebtoken::Algorithm;
use serde_json::json;

fn refused(node: &Node, path: &str, extra: &[&str]) -> HttpResponse {
    raw_upgrade_response(node.addr, &upgrade_request(path, extra))
}

fn refused_token(node: &Node, token: &str) -> HttpResponse {
    refused(node, &format!("/ws?token={token}"), &[])
}

// --- 400 / 426: not a proper upgrade --------------------------------------------------

#[test]
fn plain_get_on_ws_is_refused_with_400() {
    let node = Node::start();
    let resp = http_request(
        node.addr,
        &format!(
            "GET /ws?token={} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
            token("s1")
        ),
    );
    resp.assert_error(400, "bad_request");
}

#[test]
fn upgrade_with_bad_websocket_key_is_refused_with_400() {
    let node = Node::start();
    let req = format!(
        "GET /ws?token={} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: not-a-key\r\nSec-WebSocket-Version: 13\r\n\r\n",
        token("s1")
    );
    raw_upgrade_response(node.addr, &req).assert_error(400, "bad_request");
}

#[test]
fn upgrade_without_websocket_key_is_refused_with_400() {
    let node = Node::start();
    let req = format!(
        "GET /ws?token={} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\r\n",
        token("s1")
    );
    raw_upgrade_response(node.addr, &req).assert_error(400, "bad_request");
}

#[test]
fn upgrade_with_wrong_version_is_refused_with_426_naming_version_13() {
    let node = Node::start();
    let req = format!(
        "GET /ws?token={} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {WS_KEY}\r\nSec-WebSocket-Version: 8\r\n\r\n",
        token("s1")
    );
    let resp = raw_upgrade_response(node.addr, &req);
    resp.assert_error(426, "upgrade_required");
    assert_eq!(
        resp.header("sec-websocket-version"),
        Some("13"),
        "426 must carry Sec-WebSocket-Version: 13; headers {:?}",
        resp.headers
    );
}

// --- 401: tokens ----------------------------------------------------------------------

#[test]
fn upgrade_without_token_is_refused_with_401() {
    let node = Node::start();
    refused(&node, "/ws", &[]).assert_error(401, "unauthorized");
}

#[test]
fn malformed_token_is_refused_with_401() {
    let node = Node::start();
    refused_token(&node, "not.a.jwt").assert_error(401, "unauthorized");
    refused_token(&node, "garbage").assert_error(401, "unauthorized");
}

#[test]
fn token_signed_with_another_secret_is_refused_with_401() {
    let node = Node::start();
    let t = sign(
        Algorithm::HS256,
        "some-other-secret-that-is-long-enough-0123456789",
        &json!({"session": "s1", "exp": now() + 600}),
    );
    refused_token(&node, &t).assert_error(401, "unauthorized");
}

#[test]
fn expired_token_is_refused_with_401() {
    let node = Node::start();
    let t = token_with(&json!({"session": "s1", "iat": now() - 7200, "exp": now() - 3600}));
    refused_token(&node, &t).assert_error(401, "unauthorized");
}

#[test]
fn token_without_exp_is_refused_with_401() {
    let node = Node::start();
    let t = token_with(&json!({"session": "s1", "iat": now()}));
    refused_token(&node, &t).assert_error(401, "unauthorized");
}

#[test]
fn token_not_valid_before_its_nbf_is_refused_with_401() {
    let node = Node::start();
    let t = token_with(&json!({"session": "s1", "nbf": now() + 3600, "exp": now() + 7200}));
    refused_token(&node, &t).assert_error(401, "unauthorized");
}

#[test]
fn hs512_token_is_refused_with_401() {
    let node = Node::start();
    let t = sign(
        Algorithm::HS512,
        SECRET,
        &json!({"session": "s1", "exp": now() + 600}),
    );
    refused_token(&node, &t).assert_error(401, "unauthorized");
}

#[test]
fn token_issued_in_the_future_is_refused_with_401() {
    let node = Node::start();
    let t = token_with(&json!({"session": "s1", "iat": now() + 3600, "exp": now() + 7200}));
    refused_token(&node, &t).assert_error(401, "unauthorized");
}

#[test]
fn token_expired_within_the_clock_leeway_is_accepted() {
    // The default leeway is 5 s; a token that expired 2 s ago still opens a socket.
    let node = Node::start();
    let t = token_with(&json!({"session": "lee", "exp": now() - 2}));
    let (mut ws, _) = ws_connect(node.addr, &format!("/ws?token={t}"), &[])
        .unwrap_or_else(|r| panic!("refused: {} {}", r.status, r.body_str()));
    assert_eq!(ws.next_json(PROMPT)["type"], "welcome");
}

#[test]
fn token_signed_with_any_secret_of_a_comma_separated_list_is_accepted() {
    let old = "previous-signing-secret-0123456789abcdef0123";
    let node = Node::builder()
        .env("JWT_SIGNING_SECRET", &format!("{old},{SECRET}"))
        .start();
    for secret in [old, SECRET] {
        let t = sign(
            Algorithm::HS256,
            secret,
            &json!({"session": "rot", "exp": now() + 600}),
        );
        let (mut ws, _) = ws_connect(node.addr, &format!("/ws?token={t}"), &[])
            .unwrap_or_else(|r| panic!("refused: {} {}", r.status, r.body_str()));
        assert_eq!(ws.next_json(PROMPT)["type"], "welcome");
    }
}

#[test]
fn audience_and_issuer_are_checked_when_configured() {
    let node = Node::builder()
        .flag("--jwt-audience", "relay")
        .flag("--jwt-issuer", "backend")
        .start();
    let exp = now() + 600;
    let bad = [
        json!({"session": "ai", "exp": exp}),
        json!({"session": "ai", "exp": exp, "aud": "relay"}),
        json!({"session": "ai", "exp": exp, "iss": "backend"}),
        json!({"session": "ai", "exp": exp, "aud": "other", "iss": "backend"}),
        json!({"session": "ai", "exp": exp, "aud": "relay", "iss": "other"}),
    ];
    for claims in bad {
        let resp = refused_token(&node, &token_with(&claims));
        assert_eq!(resp.status, 401, "claims {claims} got {}", resp.status);
    }
    let good = token_with(&json!({"session": "ai", "exp": exp, "aud": "relay", "iss": "backend"}));
    let (mut ws, _) = ws_connect(node.addr, &format!("/ws?token={good}"), &[])
        .unwrap_or_else(|r| panic!("refused: {} {}", r.status, r.body_str()));
    assert_eq!(ws.next_json(PROMPT)["type"], "welcome");
}

#[test]
fn unsigned_token_with_alg_none_is_refused_with_401() {
    let node = Node::start();
    let b64 = |v: serde_json::Value| {
        use std::fmt::Write;
        // base64url without padding, by hand (no base64 crate in the tree).
        const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let bytes = v.to_string().into_bytes();
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let n = chunk
                .iter()
                .enumerate()
                .fold(0u32, |n, (i, b)| n | (*b as u32) << (16 - 8 * i));
            for i in 0..=chunk.len() {
                let _ = out.write_char(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            }
        }
        out
    };
    let t = format!(
        "{}.{}.",
        b64(json!({"alg": "none", "typ": "JWT"})),
        b64(json!({"session": "s1", "exp": now() + 600}))
    );
    refused_token(&node, &t).assert_error(401, "unauthorized");
}

#[test]
fn token_with_bad_session_claim_is_refused_with_401() {
    let node = Node::start();
    let long = "a".repeat(129);
    let cases = [
        ("missing", json!({"exp": now() + 600})),
        ("empty", json!({"session": "", "exp": now() + 600})),
        (
            "space",
            json!({"session": "bad session", "exp": now() + 600}),
        ),
        ("slash", json!({"session": "a/b", "exp": now() + 600})),
        ("129 chars", json!({"session": long, "exp": now() + 600})),
        ("number", json!({"session": 42, "exp": now() + 600})),
    ];
    for (what, claims) in cases {
        let resp = refused_token(&node, &token_with(&claims));
        assert_eq!(
            resp.status,
            401,
            "session claim {what}: got {} {}",
            resp.status,
            resp.body_str()
        );
        resp.assert_error(401, "unauthorized");
    }
}

#[test]
fn session_claim_of_128_allowed_characters_is_accepted() {
    let node = Node::start();
    let base = "AZaz09._:-";
    let session: String = base.chars().cycle().take(128).collect();
    let t = token_with(&json!({"session": session, "exp": now() + 600}));
    let (mut ws, _) = ws_connect(node.addr, &format!("/ws?token={t}"), &[])
        .unwrap_or_else(|r| panic!("refused: {} {}", r.status, r.body_str()));
    let w = ws.next_json(PROMPT);
    assert_eq!(w["type"], "welcome");
    assert_eq!(w["session"], session.as_str());
}

// --- the three ways to carry a token --------------------------------------------------

#[test]
fn token_in_query_string_opens_a_socket() {
    let node = Node::start();
    let t = token("q1");
    let (mut ws, resp) = ws_connect(node.addr, &format!("/ws?token={t}"), &[])
        .unwrap_or_else(|r| panic!("refused: {} {}", r.status, r.body_str()));
    assert_eq!(resp.status, 101);
    assert_eq!(ws.next_json(PROMPT)["session"], "q1");
    // Other query parameters around the token are fine.
    let (mut ws, _) = ws_connect(node.addr, &format!("/ws?v=2&token={t}&x=y"), &[])
        .unwrap_or_else(|r| panic!("refused: {} {}", r.status, r.body_str()));
    assert_eq!(ws.next_json(PROMPT)["session"], "q1");
}

#[test]
fn token_in_authorization_header_opens_a_socket() {
    let node = Node::start();
    let bearer = format!("Bearer {}", token("h1"));
    let (mut ws, _) = ws_connect(node.addr, "/ws", &[("Authorization", &bearer)])
        .unwrap_or_else(|r| panic!("refused: {} {}", r.status, r.body_str()));
    let w = ws.next_json(PROMPT);
    assert_eq!(w["type"], "welcome");
    assert_eq!(w["session"], "h1");
}

#[test]
fn token_in_subprotocol_opens_a_socket_answered_with_relay_v1_only() {
    let node = Node::start();
    let t = token("p1");
    let protocols = format!("relay.v1, bearer.{t}");
    let (mut ws, resp) = ws_connect(node.addr, "/ws", &[("Sec-WebSocket-Protocol", &protocols)])
        .unwrap_or_else(|r| panic!("refused: {} {}", r.status, r.body_str()));
    assert_eq!(resp.header("sec-websocket-protocol"), Some("relay.v1"));
    for (k, v) in &resp.headers {
        assert!(!v.contains(&t), "token echoed in response header {k}");
    }
    let w = ws.next_json(PROMPT);
    assert_eq!(w["type"], "welcome");
    assert_eq!(w["session"], "p1");
}

#[test]
fn bad_token_in_subprotocol_is_refused_with_401() {
    let node = Node::start();
    refused(
        &node,
        "/ws",
        &["Sec-WebSocket-Protocol: relay.v1, bearer.not-a-token"],
    )
    .assert_error(401, "unauthorized");
}

#[test]
fn bad_token_in_authorization_header_is_refused_with_401() {
    let node = Node::start();
    let t = sign(
        Algorithm::HS512,
        SECRET,
        &json!({"session": "s1", "exp": now() + 600}),
    );
    refused(&node, "/ws", &[&format!("Authorization: Bearer {t}")])
        .assert_error(401, "unauthorized");
}

#[test]
fn upgrade_head_arriving_in_small_pieces_opens_a_socket() {
    let node = Node::start();
    let req = upgrade_request(&format!("/ws?token={}", token("slowhead")), &[]);
    let mut conn = HttpConn::connect(node.addr);
    for chunk in req.as_bytes().chunks(9) {
        conn.send(chunk).unwrap();
        std::thread::sleep(Duration::from_millis(3));
    }
    let resp = conn.read_response().expect("upgrade response");
    assert_eq!(resp.status, 101, "{}", resp.body_str());
    assert_eq!(
        resp.header("sec-websocket-accept"),
        Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
        "wrong accept key"
    );
}

// --- welcome --------------------------------------------------------------------------

#[test]
fn welcome_frame_comes_first_and_names_session_and_connection() {
    let node = Node::start();
    let mut a = node.ws("w1");
    let mut b = node.ws("w1");
    let wa = a.next_json(PROMPT);
    let wb = b.next_json(PROMPT);
    for w in [&wa, &wb] {
        assert_eq!(w["type"], "welcome", "first frame {w}");
        assert_eq!(w["session"], "w1", "first frame {w}");
        let conn = w["conn"]
            .as_str()
            .unwrap_or_else(|| panic!("conn not a string: {w}"));
        assert!(!conn.is_empty());
    }
    assert_ne!(wa["conn"], wb["conn"], "two sockets share a conn id");
}

// --- 403: origins ---------------------------------------------------------------------

fn origin_node() -> Node {
    Node::builder()
        .env("ALLOWED_ORIGINS", "https://*.atlassian.net")
        .start()
}

#[test]
fn origin_matching_the_allowed_pattern_opens_a_socket() {
    let node = origin_node();
    let (mut ws, _) = ws_connect(
        node.addr,
        &format!("/ws?token={}", token("o1")),
        &[("Origin", "https://acme.atlassian.net")],
    )
    .unwrap_or_else(|r| panic!("refused: {} {}", r.status, r.body_str()));
    assert_eq!(ws.next_json(PROMPT)["type"], "welcome");
}

#[test]
fn origin_not_allowed_is_refused_with_403() {
    let node = origin_node();
    let path = format!("/ws?token={}", token("o1"));
    refused(&node, &path, &["Origin: https://evil.com"]).assert_error(403, "forbidden_origin");
    // A look-alike host is not a subdomain of the pattern.
    refused(&node, &path, &["Origin: https://atlassian.net.evil.com"])
        .assert_error(403, "forbidden_origin");
}

#[test]
fn origin_wildcard_matches_exactly_one_host_label() {
    let node = origin_node();
    let path = format!("/ws?token={}", token("o4"));
    for origin in [
        "https://a.b.atlassian.net",
        "https://atlassian.net",
        "http://acme.atlassian.net",
    ] {
        let resp = refused(&node, &path, &[&format!("Origin: {origin}")]);
        assert_eq!(resp.status, 403, "origin {origin} got {}", resp.status);
    }
}

#[test]
fn socket_without_origin_is_not_refused_for_it() {
    let node = origin_node();
    let mut ws = node.ws("o2");
    assert_eq!(ws.next_json(PROMPT)["type"], "welcome");
}

#[test]
fn browser_origin_is_refused_with_403_when_no_origins_are_configured() {
    let node = Node::start();
    refused(
        &node,
        &format!("/ws?token={}", token("o3")),
        &["Origin: https://acme.atlassian.net"],
    )
    .assert_error(403, "forbidden_origin");
}

// --- 503: connection limit ------------------------------------------------------------

#[test]
fn node_at_its_connection_limit_refuses_with_503() {
    let node = Node::builder().flag("--max-connections", "2").start();
    let a = node.ws_welcomed("c1");
    let _b = node.ws_welcomed("c1");
    refused(&node, &format!("/ws?token={}", token("c1")), &[]).assert_error(503, "unavailable");

    // Closing one socket frees its slot.
    let mut a = a;
    let _ = a.ws.close(None);
    let _ = a.wait_close(Duration::from_secs(5));
    drop(a);
    let reopened = wait_until(Duration::from_secs(5), || {
        ws_connect(node.addr, &format!("/ws?token={}", token("c1")), &[]).is_ok()
    });
    assert!(reopened, "a slot did not free up after a socket closed");
}

// --- the token stays out of the log ----------------------------------------------------

#[test]
fn token_is_never_written_to_the_log() {
    let node = Node::builder().env("LOG_LEVEL", "debug").start();
    let good = token("logged");
    let expired = token_with(&json!({"session": "logged", "exp": now() - 3600}));
    let refresh = token("logged");
    {
        let mut ws = connect_ok(&node, &format!("/ws?token={good}"), &[]);
        ws.send_text(&json!({"type": "refresh", "token": refresh}).to_string());
        assert_eq!(ws.next_json(PROMPT)["type"], "refreshed");
        node.publish_ok(&event("logged", "e", "1"), 1);
        ws.next_event(PROMPT);
        let bearer = format!("Bearer {good}");
        let _h = connect_ok(&node, "/ws", &[("Authorization", &bearer)]);
        let proto = format!("relay.v1, bearer.{good}");
        let _p = connect_ok(&node, "/ws", &[("Sec-WebSocket-Protocol", &proto)]);
        refused_token(&node, &expired).assert_error(401, "unauthorized");
        refused_token(&node, &format!("{good}x")).assert_error(401, "unauthorized");
        let _ = ws.ws.close(None);
        let _ = ws.wait_close(PROMPT);
    }
    std::thread::sleep(Duration::from_millis(300));
    let log = std::fs::read_to_string(&node.log_path).unwrap();
    assert!(!log.is_empty(), "debug log is empty; cannot check it");
    for t in [&good, &expired, &refresh] {
        // The signature part alone is enough to replay nothing, but the payload is the
        // part people grep for; neither may appear.
        for part in t.split('.').skip(1) {
            assert!(!log.contains(part), "token part {part} found in the log");
        }
    }
}

fn connect_ok(node: &Node, path: &str, headers: &[(&str, &str)]) -> Ws {
    let (mut ws, _) = ws_connect(node.addr, path, headers)
        .unwrap_or_else(|r| panic!("refused: {} {}", r.status, r.body_str()));
    assert_eq!(ws.next_json(PROMPT)["type"], "welcome");
    ws
}

// 429 (connection rate limit per client address, with Retry-After) is not built yet;
// a test belongs here once `relay serve` has a flag for the limit.
