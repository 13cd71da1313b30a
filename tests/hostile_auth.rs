//! Hostile access attempts at `GET /ws`: origins built to slip past a sloppy matcher
//! (OWASP WebSocket cheat sheet, public CSWSH reports) and tokens built per RFC 8725's
//! list of JWT attacks. Every refusal asserts its exact status, then that the server
//! closes TCP; every JWT refusal has one body, byte for byte. The plain cases (expired,
//! no exp, nbf, HS512, alg none, aud/iss) live in tests/ws_handshake.rs.

mod common;

use std::time::Duration;

use common::*;
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{json, Value};

/// The one body every token refusal carries.
const UNAUTHORIZED_BODY: &str = r#"{"error":"unauthorized","message":"missing or invalid token"}"#;

/// Sends an upgrade for `path` with `extra` header lines; returns the answer after
/// checking that a refusal is followed by the server closing TCP.
fn upgrade(node: &Node, path: &str, extra: &[&str]) -> HttpResponse {
    let mut conn = HttpConn::connect(node.addr);
    let resp = conn.request(upgrade_request(path, extra).as_bytes());
    if resp.status != 101 {
        assert!(
            conn.closed_within(Duration::from_secs(3)),
            "TCP left open after {} {}",
            resp.status,
            resp.body_str()
        );
    }
    resp
}

fn upgrade_token(node: &Node, token: &str) -> HttpResponse {
    upgrade(node, &format!("/ws?token={token}"), &[])
}

fn assert_unauthorized(resp: &HttpResponse, what: &str) {
    assert_eq!(
        resp.status,
        401,
        "{what}: got {} {}",
        resp.status,
        resp.body_str()
    );
    resp.assert_error(401, "unauthorized");
}

// --- hand-built tokens ----------------------------------------------------------------

/// base64url without padding (RFC 7515 section 2).
fn b64url(bytes: &[u8]) -> String {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (*b as u32) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

fn b64json(v: &Value) -> String {
    b64url(v.to_string().as_bytes())
}

/// `header.claims.` signed with HMAC-SHA256 under `secret`, whatever `header` claims the
/// algorithm is.
fn hmac_token(header: &Value, claims: &Value, secret: &str) -> String {
    let signing_input = format!("{}.{}", b64json(header), b64json(claims));
    let key = EncodingKey::from_secret(secret.as_bytes()).expect("hmac key");
    let sig = jsonwebtoken::crypto::sign(signing_input.as_bytes(), &key, Algorithm::HS256)
        .expect("hmac sign");
    format!("{signing_input}.{sig}")
}

/// `header.claims.signature` with the given signature bytes.
fn token_with_signature(header: &Value, claims: &Value, sig: &[u8]) -> String {
    format!("{}.{}.{}", b64json(header), b64json(claims), b64url(sig))
}

fn hs256_header() -> Value {
    json!({"alg": "HS256", "typ": "JWT"})
}

fn claims(session: &str) -> Value {
    json!({"session": session, "sub": "user-1", "iat": now(), "exp": now() + 600})
}

/// Bytes that look like an RSA-2048 signature.
fn rsa_looking_signature() -> Vec<u8> {
    (0..256u32).map(|i| (i * 151 + 7) as u8).collect()
}

/// A valid HS256 token whose claims carry a `pad` string so that the token is `len` bytes
/// long or just over.
fn padded_token(session: &str, len: usize) -> String {
    let mut pad = len.saturating_sub(200) * 3 / 4;
    loop {
        let mut c = claims(session);
        c["pad"] = json!("x".repeat(pad));
        let t = hmac_token(&hs256_header(), &c, SECRET);
        if t.len() >= len {
            return t;
        }
        pad += 1;
    }
}

#[test]
fn hand_built_hs256_token_is_accepted() {
    // Guards every refusal below: the hand-built tokens differ from a good one only in
    // the part each test changes.
    let node = Node::start();
    let t = hmac_token(&hs256_header(), &claims("hand"), SECRET);
    let resp = upgrade_token(&node, &t);
    assert_eq!(resp.status, 101, "{}", resp.body_str());
}

// --- JWT: algorithms ------------------------------------------------------------------

#[test]
fn hs384_token_is_refused_with_401() {
    let node = Node::start();
    let t = sign(Algorithm::HS384, SECRET, &claims("s1"));
    assert_unauthorized(&upgrade_token(&node, &t), "HS384");
}

#[test]
fn rs256_token_is_refused_with_401() {
    let node = Node::start();
    let t = token_with_signature(
        &json!({"alg": "RS256", "typ": "JWT"}),
        &claims("s1"),
        &rsa_looking_signature(),
    );
    assert_unauthorized(&upgrade_token(&node, &t), "RS256");
}

#[test]
fn rs256_header_with_hmac_signature_made_with_the_secret_is_refused_with_401() {
    // The key-confusion attack: an RS256 header, signed by HMAC with the key the server
    // holds. Only the header differs from the accepted hand-built token.
    let node = Node::start();
    let t = hmac_token(
        &json!({"alg": "RS256", "typ": "JWT"}),
        &claims("s1"),
        SECRET,
    );
    assert_unauthorized(&upgrade_token(&node, &t), "RS256 header, HMAC signature");
}

#[test]
fn alg_none_in_any_spelling_is_refused_with_401() {
    let node = Node::start();
    for alg in ["none", "None", "NONE", "nOnE"] {
        let header = json!({"alg": alg, "typ": "JWT"});
        // Without a signature, and with a valid HMAC signature kept from a real token.
        let bare = format!("{}.{}.", b64json(&header), b64json(&claims("s1")));
        assert_unauthorized(
            &upgrade_token(&node, &bare),
            &format!("alg {alg}, unsigned"),
        );
        let signed = hmac_token(&header, &claims("s1"), SECRET);
        assert_unauthorized(
            &upgrade_token(&node, &signed),
            &format!("alg {alg}, signed"),
        );
    }
}

// --- JWT: shape -----------------------------------------------------------------------

#[test]
fn token_with_tampered_payload_is_refused_with_401() {
    let node = Node::start();
    let good = token("mine");
    let sig = good.rsplit('.').next().unwrap();
    let header = good.split('.').next().unwrap();
    // Same header and signature, payload naming another session.
    let mut c = claims("theirs");
    c["exp"] = json!(now() + 600);
    let t = format!("{header}.{}.{sig}", b64json(&c));
    assert_unauthorized(&upgrade_token(&node, &t), "tampered payload");
}

#[test]
fn truncated_token_is_refused_with_401() {
    let node = Node::start();
    let good = token("s1");
    let (signing_input, _) = good.rsplit_once('.').unwrap();
    let cases = [
        ("signature cut short", good[..good.len() - 4].to_string()),
        ("empty signature", format!("{signing_input}.")),
        ("no signature segment", signing_input.to_string()),
        ("header only", good.split('.').next().unwrap().to_string()),
    ];
    for (what, t) in cases {
        assert_unauthorized(&upgrade_token(&node, &t), what);
    }
}

#[test]
fn jwe_shaped_token_is_refused_with_401() {
    let node = Node::start();
    // Five segments: protected header, encrypted key (empty for "dir"), IV, ciphertext,
    // tag.
    let t = format!(
        "{}..{}.{}.{}",
        b64json(&json!({"alg": "dir", "enc": "A256GCM"})),
        b64url(&[7u8; 12]),
        b64url(claims("s1").to_string().as_bytes()),
        b64url(&[9u8; 16])
    );
    assert_unauthorized(&upgrade_token(&node, &t), "JWE");
}

#[test]
fn token_with_extra_segments_is_refused_with_401() {
    let node = Node::start();
    let good = token("s1");
    for t in [format!("{good}.{}", b64url(b"extra")), format!("{good}.")] {
        assert_unauthorized(&upgrade_token(&node, &t), &format!("4 segments: {t}"));
    }
}

#[test]
fn token_over_4_kib_is_refused_with_401_and_one_under_it_is_accepted() {
    let node = Node::start();
    let under = padded_token("size", 3900);
    assert!(under.len() < 4096);
    let resp = upgrade_token(&node, &under);
    assert_eq!(
        resp.status,
        101,
        "a {}-byte token was refused: {}",
        under.len(),
        resp.body_str()
    );
    let over = padded_token("size", 4200);
    assert_unauthorized(
        &upgrade_token(&node, &over),
        &format!("{}-byte token with a valid signature", over.len()),
    );
}

// --- JWT: time ------------------------------------------------------------------------

#[test]
fn token_expired_just_outside_the_leeway_is_refused_with_401() {
    // The leeway is 5 s: 20 s ago is outside it (and close enough to catch a leeway
    // measured in minutes).
    let node = Node::start();
    let t = token_with(&json!({"session": "s1", "iat": now() - 600, "exp": now() - 20}));
    assert_unauthorized(&upgrade_token(&node, &t), "exp 20 s ago");
}

#[test]
fn token_with_lifetime_over_the_configured_maximum_is_refused_with_401() {
    let node = Node::builder().flag("--jwt-max-lifetime", "1h").start();
    let long = token_with(&json!({"session": "s1", "iat": now(), "exp": now() + 2 * 3600}));
    assert_unauthorized(&upgrade_token(&node, &long), "exp - iat = 2 h, max 1 h");
    let ok = token_with(&json!({"session": "s1", "iat": now(), "exp": now() + 1800}));
    assert_eq!(upgrade_token(&node, &ok).status, 101);
}

// --- JWT: one body for every refusal --------------------------------------------------

#[test]
fn every_token_refusal_has_the_same_body() {
    let node = Node::builder()
        .flag("--jwt-audience", "relay")
        .flag("--jwt-issuer", "backend")
        .flag("--connect-rate", "100000")
        .start();
    let t = now();
    let base =
        json!({"session": "same", "aud": "relay", "iss": "backend", "iat": t, "exp": t + 600});
    let with = |k: &str, v: Value| {
        let mut c = base.clone();
        c[k] = v;
        c
    };
    let without = |k: &str| {
        let mut c = base.clone();
        c.as_object_mut().unwrap().remove(k);
        c
    };
    let hs = |c: &Value| hmac_token(&hs256_header(), c, SECRET);

    // The configuration accepts the base claims, so each refusal is for its one change.
    let good = upgrade_token(&node, &hs(&base));
    assert_eq!(good.status, 101, "base claims refused: {}", good.body_str());

    let good_token = hs(&base);
    let (good_input, _) = good_token.rsplit_once('.').unwrap();
    let cases: Vec<(&str, String)> = vec![
        ("not a JWT", "garbage".into()),
        (
            "alg none",
            format!("{}.{}.", b64json(&json!({"alg": "none"})), b64json(&base)),
        ),
        ("HS384", sign(Algorithm::HS384, SECRET, &base)),
        ("HS512", sign(Algorithm::HS512, SECRET, &base)),
        (
            "RS256",
            token_with_signature(&json!({"alg": "RS256"}), &base, &rsa_looking_signature()),
        ),
        (
            "RS256 header, HMAC signature",
            hmac_token(&json!({"alg": "RS256"}), &base, SECRET),
        ),
        (
            "another secret",
            hmac_token(
                &hs256_header(),
                &base,
                "another-secret-of-at-least-32-bytes-0123456789",
            ),
        ),
        (
            "tampered payload",
            format!(
                "{}.{}.{}",
                b64json(&hs256_header()),
                b64json(&with("session", json!("other"))),
                good_token.rsplit('.').next().unwrap()
            ),
        ),
        ("truncated", good_token[..good_token.len() - 3].to_string()),
        ("no signature", format!("{good_input}.")),
        (
            "JWE",
            format!(
                "{}..{}.{}.{}",
                b64json(&json!({"alg": "dir", "enc": "A256GCM"})),
                b64url(&[1; 12]),
                b64url(b"ciphertext"),
                b64url(&[2; 16])
            ),
        ),
        ("4 segments", format!("{good_token}.{}", b64url(b"x"))),
        ("over 4 KiB", {
            let mut c = base.clone();
            c["pad"] = json!("x".repeat(4000));
            hs(&c)
        }),
        ("no exp", hs(&without("exp"))),
        ("expired", hs(&with("exp", json!(t - 60)))),
        ("nbf ahead", hs(&with("nbf", json!(t + 600)))),
        ("iat ahead", hs(&with("iat", json!(t + 600)))),
        ("wrong aud", hs(&with("aud", json!("other")))),
        (
            "aud list without ours",
            hs(&with("aud", json!(["other", "relay2"]))),
        ),
        ("no aud", hs(&without("aud"))),
        ("wrong iss", hs(&with("iss", json!("other")))),
        ("no iss", hs(&without("iss"))),
        ("no session", hs(&without("session"))),
        ("bad session", hs(&with("session", json!("a/b")))),
        ("exp not a number", hs(&with("exp", json!("soon")))),
    ];

    let mut bodies: Vec<(&str, u16, Vec<u8>)> = Vec::new();
    let resp = upgrade(&node, "/ws", &[]);
    bodies.push(("no token", resp.status, resp.body));
    for (what, token) in &cases {
        let resp = upgrade_token(&node, token);
        bodies.push((what, resp.status, resp.body));
    }
    for (where_, header) in [
        (
            "in Authorization",
            format!("Authorization: Bearer {}", hs(&with("exp", json!(t - 60)))),
        ),
        (
            "in Sec-WebSocket-Protocol",
            format!(
                "Sec-WebSocket-Protocol: relay.v1, bearer.{}",
                sign(Algorithm::HS512, SECRET, &base)
            ),
        ),
    ] {
        let resp = upgrade(&node, "/ws", &[&header]);
        bodies.push((where_, resp.status, resp.body));
    }

    let wrong: Vec<String> = bodies
        .iter()
        .filter(|(_, status, body)| {
            *status != 401 || body.as_slice() != UNAUTHORIZED_BODY.as_bytes()
        })
        .map(|(what, status, body)| format!("{what}: {status} {}", String::from_utf8_lossy(body)))
        .collect();
    assert!(
        wrong.is_empty(),
        "every refusal must be 401 {UNAUTHORIZED_BODY}; these differ: {wrong:#?}"
    );
}

// --- origins --------------------------------------------------------------------------

fn origin_node() -> Node {
    Node::builder()
        .env("ALLOWED_ORIGINS", "https://*.atlassian.net")
        .flag("--connect-rate", "100000")
        .start()
}

#[test]
fn origin_bypass_attempts_are_refused_with_403() {
    let node = origin_node();
    let path = format!("/ws?token={}", token("orig"));
    let ok = upgrade(&node, &path, &["Origin: https://acme.atlassian.net"]);
    assert_eq!(
        ok.status,
        101,
        "the allowed origin was refused: {}",
        ok.body_str()
    );
    let mut wrong = Vec::new();
    for origin in [
        "https://evil.com/.atlassian.net",
        "https://atlassian.net.evil.com",
        "https://evilatlassian.net",
        "http://acme.atlassian.net",
        "https://acme.atlassian.net:8443",
        "https://acme.atlassian.net.",
        "https://user@acme.atlassian.net",
        "https://acme.atlassian.net@evil.com",
        "null",
        "https://a.b.atlassian.net",
        "https://atlassian.net",
        "https://.atlassian.net",
        "https://*.atlassian.net",
        "https://acme.atlassian.net/",
        "https://acme.atlassian.net/path",
        "https://acme.atlassian.net%2F.evil.com",
        "",
    ] {
        let resp = upgrade(&node, &path, &[&format!("Origin: {origin}")]);
        if resp.status != 403 {
            wrong.push(format!("{origin:?}: {} {}", resp.status, resp.body_str()));
        } else {
            resp.assert_error(403, "forbidden_origin");
        }
    }
    assert!(wrong.is_empty(), "expected 403 for each; got {wrong:#?}");
}

#[test]
fn two_origin_headers_are_refused_with_403() {
    let node = origin_node();
    let path = format!("/ws?token={}", token("orig2"));
    for pair in [
        ["https://evil.com", "https://acme.atlassian.net"],
        ["https://acme.atlassian.net", "https://evil.com"],
        ["https://acme.atlassian.net", "https://acme.atlassian.net"],
    ] {
        let headers = pair.map(|o| format!("Origin: {o}"));
        let headers: Vec<&str> = headers.iter().map(String::as_str).collect();
        let resp = upgrade(&node, &path, &headers);
        assert_eq!(resp.status, 403, "Origins {pair:?}: {}", resp.body_str());
        resp.assert_error(403, "forbidden_origin");
    }
}
