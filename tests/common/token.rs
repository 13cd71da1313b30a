//! The test credentials (the signing secret and publisher key every test node is started
//! with) and JWTs for test sockets: arbitrary claims signed with any algorithm and secret,
//! and the valid HS256 session tokens most tests need.
//!
//! Owns credentials (also as the load generator's options) and token minting only; what the node makes of a token is for the tests
//! to assert.

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

/// HS256 secret the test nodes verify tokens with (at least 32 bytes).
pub const SECRET: &str = "integration-test-signing-secret-0123456789abcdef";
/// Publisher key the test nodes accept on `POST /events`.
pub const API_KEY: &str = "integration-test-api-key-0123456789";

/// The load generator's options for a run against test nodes: their credentials,
/// one process of two threads.
pub fn loadtest_opts() -> loadtest::RunOptions {
    loadtest::RunOptions {
        secret: Some(SECRET.into()),
        api_key: Some(API_KEY.into()),
        procs: 1,
        threads: Some(2),
        ..loadtest::RunOptions::default()
    }
}

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
