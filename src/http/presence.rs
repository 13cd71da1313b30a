//! `GET /sessions/{session}/presence`: the request decision (the API key, the
//! session name, `limit` and `cursor`), pure but for the settings it reads.
//!
//! What the answer holds is the owning shard's (`shard::announce`); this room
//! only turns a request into a [`PresenceQuery`] or a refusal naming the problem.
//! An unknown session is not an error: it answers an empty presence, so the
//! endpoint does not tell which sessions exist.

use crate::auth::{api_key_index, is_valid_session};
use crate::http::head::RequestHead;
use crate::http::response::Refusal;
use crate::router::PresenceQuery;
use crate::shard::presence::json::parse_cursor;
use crate::shard::{Settings, DEFAULT_PAGE, MAX_PAGE};

/// The key a request presents: `Authorization: Bearer KEY`, else `X-Api-Key`.
pub fn presented_key<'b>(head: &RequestHead<'_, 'b>) -> &'b str {
    head.all("authorization")
        .next()
        .and_then(|v| {
            let (scheme, key) = v.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then_some(key.trim())
        })
        .or_else(|| head.all("x-api-key").next().map(str::trim))
        .unwrap_or("")
}

/// The session a `/sessions/{session}/presence` path names (not validated), or
/// `None` for another path under `/sessions/`.
pub fn session_in(path: &str) -> Option<&str> {
    path.strip_prefix("/sessions/")?.strip_suffix("/presence")
}

/// A path segment with its `%XX` escapes decoded; `None` for a malformed escape
/// or bytes that are not UTF-8.
fn percent_decoded(segment: &str) -> Option<String> {
    let mut out = Vec::with_capacity(segment.len());
    let mut bytes = segment.bytes();
    while let Some(b) = bytes.next() {
        if b == b'%' {
            let hex = [bytes.next()?, bytes.next()?];
            let hex = std::str::from_utf8(&hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
        } else {
            out.push(b);
        }
    }
    String::from_utf8(out).ok()
}

/// Decides a presence request: 405, 401, 400 (naming the parameter), or the query.
pub fn decide(
    head: &RequestHead<'_, '_>,
    session: &str,
    settings: &Settings,
) -> Result<PresenceQuery, Refusal> {
    if head.method != "GET" {
        return Err(Refusal::method_not_allowed("Allow: GET\r\n"));
    }
    if api_key_index(&settings.live.api_keys, presented_key(head).as_bytes()).is_none() {
        return Err(Refusal::unauthorized_key());
    }
    // Clients that build the path with encodeURIComponent spell ':' as %3A.
    let session = match percent_decoded(session) {
        Some(s) if is_valid_session(&s) => s,
        _ => {
            return Err(Refusal::bad_request(
                "the session must be 1 to 128 of A-Z a-z 0-9 . _ : - (percent-encoded or not)",
            ))
        }
    };
    let limit = match head.query_param("limit") {
        None => DEFAULT_PAGE,
        Some(v) => match v.parse::<usize>() {
            Ok(n) if (1..=MAX_PAGE).contains(&n) => n,
            _ => {
                return Err(Refusal::bad_request(format!(
                    "limit must be a whole number from 1 to {MAX_PAGE}"
                )))
            }
        },
    };
    let after = match head.query_param("cursor") {
        None => None,
        Some(c) => Some(parse_cursor(c).ok_or_else(|| {
            Refusal::bad_request("cursor is malformed: pass next_cursor from the previous page")
        })?),
    };
    Ok(PresenceQuery {
        session,
        limit,
        after,
        remote: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_percent_encoded_session_is_decoded_and_a_broken_escape_refused() {
        assert_eq!(
            percent_decoded("e2e%3Apresence").as_deref(),
            Some("e2e:presence")
        );
        assert_eq!(percent_decoded("a%3ab").as_deref(), Some("a:b"));
        assert_eq!(percent_decoded("plain").as_deref(), Some("plain"));
        assert_eq!(percent_decoded("bad%3"), None);
        assert_eq!(percent_decoded("bad%zz"), None);
        assert_eq!(percent_decoded("%ff"), None);
    }

    #[test]
    fn only_the_presence_path_names_a_session() {
        assert_eq!(session_in("/sessions/abc/presence"), Some("abc"));
        assert_eq!(session_in("/sessions/abc"), None);
        assert_eq!(session_in("/sessions//presence"), Some(""));
    }
}
