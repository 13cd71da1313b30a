//! The decision for `GET /sse`: request head in, an accepted event stream or a
//! refusal out; and the answer to its CORS preflight.
//!
//! Checked as a WebSocket upgrade is (`ws::upgrade`): the same JWT rules, the
//! same `ALLOWED_ORIGINS`, the same refusal statuses. The token comes from
//! `?token=` (a browser's `EventSource` cannot set headers) or
//! `Authorization: Bearer`; the resume point from `Last-Event-ID` (which
//! `EventSource` sends by itself when it reconnects) or `?since=`. Pure: the
//! caller passes the clock and does the I/O; node-wide limits are the caller's.

use crate::auth::Claims;
use crate::auth::{JwtVerifier, OriginPolicy};
use crate::http::head::RequestHead;
use crate::http::response::Refusal;
use crate::stream::StreamPos;
use crate::subscribe::resume_point;
use crate::subscribe::{AcceptedUpgrade, Answer};

/// What the stream's `retry:` field tells browsers: reconnect after 1 s.
pub const RETRY_MS: u64 = 1000;
/// Headers a fetch-based reader may send, for the preflight.
const ALLOWED_HEADERS: &str = "Authorization, Last-Event-ID, Cache-Control";
/// How long a browser may cache the preflight's answer, in seconds.
const PREFLIGHT_MAX_AGE: u32 = 600;

/// The resume point: `Last-Event-ID` first (it is newer than a `since` left in
/// the URL the browser reconnects to), then `?since=`; `Err` for a malformed one.
fn find_since(head: &RequestHead<'_, '_>) -> Result<Option<StreamPos>, Refusal> {
    let last = match head.one("last-event-id") {
        Ok(v) => v.map(str::trim).filter(|v| !v.is_empty()),
        Err(_) => return Err(Refusal::bad_request("more than one Last-Event-ID header")),
    };
    let (value, name) = match (last, head.query_param("since")) {
        (Some(v), _) => (v, "Last-Event-ID"),
        (None, Some(v)) => (v, "since"),
        (None, None) => return Ok(None),
    };
    resume_point(value, name).map(Some)
}

/// The token: `?token=`, else `Authorization: Bearer`.
fn find_token<'b>(head: &RequestHead<'_, 'b>) -> Option<&'b str> {
    if let Some(t) = head.query_param("token") {
        return Some(t);
    }
    let auth = head.all("authorization").next()?;
    let (scheme, rest) = auth.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then_some(rest.trim())
}

/// The request's `Origin` when it is allowed (`Ok(None)`: none sent), or 403.
fn allowed_origin<'b>(
    head: &RequestHead<'_, 'b>,
    origins: &OriginPolicy,
) -> Result<Option<&'b str>, Refusal> {
    match head.one("origin") {
        Ok(None) => Ok(None),
        Ok(Some(origin)) if origins.allows(origin.trim()) => Ok(Some(origin.trim())),
        _ => Err(Refusal::forbidden_origin()),
    }
}

/// What `GET /sse` and `GET /poll` check first, alike: the method and the
/// origin. Answers the allowed origin (for CORS).
pub(crate) fn method_and_origin<'b>(
    head: &RequestHead<'_, 'b>,
    origins: &OriginPolicy,
) -> Result<Option<&'b str>, Refusal> {
    if head.method != "GET" {
        return Err(Refusal::method_not_allowed("Allow: GET, OPTIONS\r\n"));
    }
    allowed_origin(head, origins)
}

/// The request's token (`?token=` or `Authorization: Bearer`), verified.
pub(crate) fn verified(
    head: &RequestHead<'_, '_>,
    verifier: &JwtVerifier,
    now: u64,
) -> Result<Claims, Refusal> {
    verifier
        .verify(find_token(head).unwrap_or(""), now)
        .map_err(|_| Refusal::unauthorized_token())
}

/// Decides a `GET /sse` request. `now` is UNIX seconds; `retry_ms` is what the
/// stream's `retry:` field tells browsers.
pub fn decide(
    head: &RequestHead<'_, '_>,
    verifier: &JwtVerifier,
    origins: &OriginPolicy,
    now: u64,
    retry_ms: u64,
) -> Result<AcceptedUpgrade, Refusal> {
    let origin = method_and_origin(head, origins)?;
    let since = find_since(head)?;
    let claims = verified(head, verifier, now)?;
    Ok(AcceptedUpgrade {
        claims,
        since,
        answer: Answer::EventStream {
            allow_origin: origin.map(Box::from),
            retry_ms,
        },
    })
}

/// The answer to `OPTIONS /sse`: 204 with the CORS grants for an allowed origin,
/// 403 (and no CORS header) for any other.
pub fn preflight(
    head: &RequestHead<'_, '_>,
    origins: &OriginPolicy,
    keep_alive: bool,
) -> Result<Vec<u8>, Refusal> {
    let origin = allowed_origin(head, origins)?.ok_or_else(Refusal::forbidden_origin)?;
    let connection = if keep_alive { "keep-alive" } else { "close" };
    Ok(format!(
        "HTTP/1.1 204 No Content\r\nAccess-Control-Allow-Origin: {origin}\r\nVary: Origin\r\nAccess-Control-Allow-Methods: GET\r\nAccess-Control-Allow-Headers: {ALLOWED_HEADERS}\r\nAccess-Control-Max-Age: {PREFLIGHT_MAX_AGE}\r\nContent-Length: 0\r\nConnection: {connection}\r\n\r\n"
    )
    .into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{mint_token, JwtRules, Secret};
    use crate::http::head::{parse_head, MAX_HEADERS};
    use crate::subscribe::Transport;
    use std::time::Duration;

    /// The real clock: the JWT library checks `exp` against it too.
    fn now() -> u64 {
        crate::clock::unix_now()
    }

    fn secret() -> Secret {
        Secret::new(b"0123456789abcdef0123456789abcdef".to_vec())
    }

    fn token() -> String {
        mint_token(&secret(), "s1", None, Duration::from_secs(60), now()).unwrap()
    }

    fn run(method: &str, query: &str, headers: &str) -> Result<AcceptedUpgrade, Refusal> {
        let raw = format!("{method} /sse{query} HTTP/1.1\r\nHost: x\r\n{headers}\r\n");
        let mut storage = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let head = parse_head(raw.as_bytes(), &mut storage).unwrap();
        let v = JwtVerifier::new(&[secret()], &JwtRules::default());
        let origins = OriginPolicy::parse("https://*.atlassian.net").unwrap();
        decide(&head, &v, &origins, now(), 1000)
    }

    #[test]
    fn a_token_in_the_query_or_the_header_opens_a_stream() {
        let ok = run("GET", &format!("?token={}", token()), "").unwrap();
        assert_eq!(ok.transport(), Transport::Sse);
        assert_eq!(ok.claims.session, "s1");
        let ok = run("GET", "", &format!("Authorization: Bearer {}\r\n", token())).unwrap();
        assert!(ok.since.is_none());
        let head = String::from_utf8(ok.response()).unwrap();
        assert!(head.starts_with("HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"));
        assert!(head.ends_with("\r\n\r\nretry: 1000\n\n"));
        assert!(!head.contains("Access-Control"), "no Origin, no CORS");
    }

    #[test]
    fn an_allowed_origin_is_granted_by_name_and_another_is_refused() {
        let t = format!("?token={}", token());
        let ok = run("GET", &t, "Origin: https://acme.atlassian.net\r\n").unwrap();
        let head = String::from_utf8(ok.response()).unwrap();
        assert!(head.contains(
            "Access-Control-Allow-Origin: https://acme.atlassian.net\r\nVary: Origin\r\n"
        ));
        let r = run("GET", &t, "Origin: https://evil.example\r\n").unwrap_err();
        assert_eq!(r.status, 403);
    }

    #[test]
    fn last_event_id_wins_over_since_and_malformed_ones_are_400() {
        let t = format!("?token={}&since=00000000000000aa:1", token());
        let ok = run("GET", &t, "Last-Event-ID: 00000000000000bb:9\r\n").unwrap();
        assert_eq!(
            ok.since,
            Some(StreamPos {
                epoch: 0xbb,
                seq: 9
            })
        );
        let ok = run("GET", &t, "").unwrap();
        assert_eq!(
            ok.since,
            Some(StreamPos {
                epoch: 0xaa,
                seq: 1
            })
        );
        let tok = format!("?token={}", token());
        assert_eq!(
            run("GET", &tok, "Last-Event-ID: 12\r\n")
                .unwrap_err()
                .status,
            400
        );
        let bad = format!("?token={}&since=x", token());
        assert_eq!(run("GET", &bad, "").unwrap_err().status, 400);
    }

    #[test]
    fn bad_tokens_and_methods_are_refused() {
        assert_eq!(run("GET", "", "").unwrap_err().status, 401);
        assert_eq!(run("GET", "?token=nope", "").unwrap_err().status, 401);
        let expired =
            mint_token(&secret(), "s1", None, Duration::from_secs(1), now() - 100).unwrap();
        assert_eq!(
            run("GET", &format!("?token={expired}"), "")
                .unwrap_err()
                .status,
            401
        );
        assert_eq!(run("POST", "", "").unwrap_err().status, 405);
    }
}
