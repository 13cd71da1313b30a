//! The upgrade decision: request head in, 101 or a refusal out.
//!
//! Pure: the caller passes the clock and does the I/O. Node-wide conditions
//! (draining, connection limit) are the shard's to check; everything a request
//! carries is checked here, in the order cheapest first.

use crate::auth::{JwtVerifier, OriginPolicy};
use crate::http::head::RequestHead;
use crate::http::response::Refusal;
use crate::stream::StreamPos;
use crate::subscribe::resume_point;

/// The subprotocol the relay speaks.
pub const SUBPROTOCOL: &str = "relay.v1";
/// Prefix of a `Sec-WebSocket-Protocol` entry that carries the token.
const BEARER_PROTOCOL_PREFIX: &str = "bearer.";
/// Prefix of a `Sec-WebSocket-Protocol` entry that asks to resume: `since.EPOCH.SEQ`
/// (a subprotocol is a token, so `:` is spelled `.`).
const SINCE_PROTOCOL_PREFIX: &str = "since.";

pub use crate::subscribe::AcceptedUpgrade;
use crate::subscribe::Answer;

/// True for a `Sec-WebSocket-Key` that is base64 of exactly 16 bytes.
fn is_valid_key(key: &str) -> bool {
    let b = key.as_bytes();
    let b64 = |c: u8| c.is_ascii_alphanumeric() || c == b'+' || c == b'/';
    // 16 bytes encode to 22 significant characters and "=="; the last significant
    // one carries 2 data bits, so only A, Q, g and w are possible there.
    b.len() == 24
        && b[..21].iter().all(|&c| b64(c))
        && matches!(b[21], b'A' | b'Q' | b'g' | b'w')
        && &b[22..] == b"=="
}

/// Where the token came from, in order of preference.
pub(crate) fn find_token<'b>(head: &RequestHead<'_, 'b>) -> Option<&'b str> {
    if let Some(t) = head.query_param("token") {
        return Some(t);
    }
    if let Some(auth) = head.all("authorization").next() {
        let (scheme, rest) = auth.trim().split_once(' ')?;
        return scheme.eq_ignore_ascii_case("bearer").then_some(rest.trim());
    }
    head.all("sec-websocket-protocol")
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .find_map(|p| p.strip_prefix(BEARER_PROTOCOL_PREFIX))
}

/// The resume point a request asks for: `None` for none, `Err` for a malformed one.
fn find_since(head: &RequestHead<'_, '_>) -> Result<Option<StreamPos>, Refusal> {
    let value = head.query_param("since").or_else(|| {
        head.all("sec-websocket-protocol")
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .find_map(|p| p.strip_prefix(SINCE_PROTOCOL_PREFIX))
    });
    match value {
        None => Ok(None),
        Some(v) => resume_point(v, "since").map(Some),
    }
}

/// Decides an upgrade request for `/ws`. `now` is UNIX seconds.
pub fn decide(
    head: &RequestHead<'_, '_>,
    verifier: &JwtVerifier,
    origins: &OriginPolicy,
    now: u64,
) -> Result<AcceptedUpgrade, Refusal> {
    if head.method != "GET" {
        return Err(Refusal::bad_request("a WebSocket upgrade must be a GET"));
    }
    if head.minor_version < 1 {
        return Err(Refusal::bad_request("a WebSocket upgrade needs HTTP/1.1"));
    }
    if !head.has_token("upgrade", "websocket") || !head.has_token("connection", "upgrade") {
        return Err(Refusal::bad_request(
            "not a WebSocket upgrade: needs Upgrade: websocket and Connection: Upgrade",
        ));
    }
    match head.one("sec-websocket-version") {
        Ok(Some(v)) if v.trim() == "13" => {}
        _ => return Err(Refusal::version()),
    }
    let key = match head.one("sec-websocket-key") {
        Ok(Some(k)) if is_valid_key(k.trim()) => k.trim(),
        _ => return Err(Refusal::bad_request("missing or invalid Sec-WebSocket-Key")),
    };
    match head.one("origin") {
        Ok(None) => {}
        Ok(Some(origin)) if origins.allows(origin.trim()) => {}
        _ => return Err(Refusal::forbidden_origin()),
    }
    let since = find_since(head)?;
    let token = find_token(head).unwrap_or("");
    let claims = verifier
        .verify(token, now)
        .map_err(|_| Refusal::unauthorized_token())?;
    let protocol = head
        .all("sec-websocket-protocol")
        .flat_map(|v| v.split(','))
        .any(|p| p.trim() == SUBPROTOCOL)
        .then_some(SUBPROTOCOL);
    Ok(AcceptedUpgrade {
        claims,
        since,
        answer: Answer::Switch {
            accept_key: tungstenite::handshake::derive_accept_key(key.as_bytes()),
            protocol,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::mint_token;
    use crate::config::{JwtRules, Secret};
    use crate::http::head::{parse_head, MAX_HEADERS};
    use std::time::Duration;

    const NOW: u64 = 1_800_000_000;
    const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

    fn secret() -> Secret {
        Secret::new("0123456789abcdef0123456789abcdef")
    }

    fn run(extra: &str, query: &str) -> Result<AcceptedUpgrade, Refusal> {
        let raw = format!(
            "GET /ws{query} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {KEY}\r\n{extra}\r\n"
        );
        let mut storage = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let head = parse_head(raw.as_bytes(), &mut storage).unwrap();
        let v = JwtVerifier::new(&[secret()], &JwtRules::default());
        let origins = OriginPolicy::parse("https://*.atlassian.net").unwrap();
        decide(&head, &v, &origins, NOW)
    }

    /// The 101's `Sec-WebSocket-Accept` and echoed subprotocol.
    fn switch(ok: &AcceptedUpgrade) -> (&str, Option<&'static str>) {
        match &ok.answer {
            Answer::Switch {
                accept_key,
                protocol,
            } => (accept_key, *protocol),
            other => panic!("not a WebSocket answer: {other:?}"),
        }
    }

    fn token() -> String {
        mint_token(&secret(), "s1", None, Duration::from_secs(60), NOW).unwrap()
    }

    #[test]
    fn rfc_sample_key_gets_rfc_accept_value() {
        let ok = run("", &format!("?token={}", token())).unwrap();
        assert_eq!(switch(&ok).0, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        assert_eq!(ok.claims.session, "s1");
        assert!(switch(&ok).1.is_none());
    }

    #[test]
    fn token_in_subprotocol_is_never_echoed() {
        let ok = run(
            &format!("Sec-WebSocket-Protocol: relay.v1, bearer.{}\r\n", token()),
            "",
        )
        .unwrap();
        assert_eq!(switch(&ok).1, Some("relay.v1"));
        assert!(!String::from_utf8(ok.response()).unwrap().contains("bearer"));
    }

    #[test]
    fn token_in_authorization_header() {
        assert!(run(&format!("Authorization: Bearer {}\r\n", token()), "").is_ok());
    }

    #[test]
    fn refusals_have_contract_statuses() {
        assert_eq!(run("", "").unwrap_err().status, 401);
        assert_eq!(run("", "?token=abc").unwrap_err().status, 401);
        let t = token();
        let q = format!("?token={t}");
        assert_eq!(
            run("Origin: https://evil.com\r\n", &q).unwrap_err().status,
            403
        );
        assert_eq!(
            run(
                "Origin: https://a.atlassian.net\r\nOrigin: https://b.atlassian.net\r\n",
                &q
            )
            .unwrap_err()
            .status,
            403
        );
        assert!(run("Origin: https://acme.atlassian.net\r\n", &q).is_ok());
    }

    #[test]
    fn key_validation() {
        assert!(is_valid_key(KEY));
        assert!(!is_valid_key("dGhlIHNhbXBsZSBub25jZR=="));
        assert!(!is_valid_key("short=="));
        assert!(!is_valid_key("dGhlIHNhbXBsZSBub25jZQ="));
    }
}
