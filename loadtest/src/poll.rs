//! Long-poll client bytes, sans-IO: the `GET /poll` request and its answer,
//! `{"events":[frames…],"next":"EPOCH:SEQ"[,"resync":{…}][,"close":{"code":N,…}]}`, one
//! per connection (`Connection: close`). The frames are the WebSocket's JSON, byte for
//! byte; the next poll asks `since=` the answer's `next`.
//!
//! Owns: the wire format only. No I/O, no clock: [`crate::conn`] opens a connection per
//! poll and hands the bytes here.

use std::ops::Range;

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::event::Pos;
use crate::net::{parse_response_limited, HttpError};

/// Largest answer accepted: a poll takes a session's whole backlog at once.
pub const MAX_ANSWER: usize = 64 << 20;

/// How a poll's answer was not one.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PollError {
    /// The node answered with another status than 200 (401, 503 …).
    #[error("poll answered with HTTP {0}")]
    Status(u16),
    /// Not an HTTP response with a Content-Length, or not the answer's JSON.
    #[error("malformed poll answer")]
    Malformed,
}

impl PollError {
    /// Short error kind for the report.
    pub fn kind(&self) -> String {
        match self {
            PollError::Status(s) => format!("poll_http_{s}"),
            PollError::Malformed => "poll_malformed".into(),
        }
    }
}

/// The request for one poll; without `since` the node answers at once with the
/// session's position.
pub fn request(host: &str, token: &str, since: Option<Pos>) -> Vec<u8> {
    let query = since
        .map(|p| format!("?since={}", p.since()))
        .unwrap_or_default();
    format!(
        "GET /poll{query} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n\
         User-Agent: relay-loadtest\r\n\r\n"
    )
    .into_bytes()
}

/// A whole response at the start of `buf`: its status and where its body is.
/// `Ok(None)`: need more bytes.
pub fn response(buf: &[u8]) -> Result<Option<(u16, Range<usize>)>, PollError> {
    let head = match parse_response_limited(buf, MAX_ANSWER) {
        Ok(Some(h)) => h,
        Ok(None) => return Ok(None),
        Err(HttpError::Malformed | HttpError::Closed | HttpError::Io(_) | HttpError::Tls(_)) => {
            return Err(PollError::Malformed)
        }
    };
    let body = head.head_len..head.head_len + head.body_len;
    Ok((buf.len() >= body.end).then_some((head.status, body)))
}

/// A `200` answer's body, borrowed.
#[derive(Debug, Deserialize)]
pub struct Answer<'a> {
    /// Event frames, oldest first: replayed ones, then live ones.
    #[serde(borrow)]
    pub events: Vec<&'a RawValue>,
    /// Where the next poll resumes: the last event's position, or the welcome's.
    #[serde(borrow, default)]
    next: Option<&'a str>,
    /// The session's resync message, when `since` could not be served; the events that
    /// come with it follow it.
    #[serde(borrow, default)]
    pub resync: Option<&'a RawValue>,
    /// The subscriber was ended (4001 token expired, 1012 draining …).
    #[serde(default)]
    close: Option<Close>,
}

#[derive(Debug, Deserialize)]
struct Close {
    code: u16,
}

impl Answer<'_> {
    /// `next`, read.
    pub fn next(&self) -> Option<Pos> {
        self.next.and_then(|n| Pos::parse(n.as_bytes()))
    }

    /// The close code, when the answer ends the subscription.
    pub fn close_code(&self) -> Option<u16> {
        self.close.as_ref().map(|c| c.code)
    }
}

/// Reads a `200` answer's body.
pub fn parse_answer(body: &[u8]) -> Result<Answer<'_>, PollError> {
    let a: Answer<'_> = serde_json::from_slice(body).map_err(|_| PollError::Malformed)?;
    if a.next.is_some() && a.next().is_none() {
        return Err(PollError::Malformed);
    }
    Ok(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_gives_its_frames_verbatim_and_the_next_position() {
        let body = br#"{"events":[{"type":"event","session":"s","seq":4,"epoch":"00000000000000ab","data":{"lt":"1:1"}},{"type":"event","session":"s","seq":5,"epoch":"00000000000000ab","data":[1, 2]}],"next":"00000000000000ab:5"}"#;
        let a = parse_answer(body).expect("answer");
        assert_eq!(a.events.len(), 2);
        assert!(a.events[1].get().ends_with(r#""data":[1, 2]}"#), "verbatim");
        assert_eq!(
            a.next(),
            Some(Pos {
                epoch: 0xab,
                seq: 5
            })
        );
        assert!(a.resync.is_none());
        assert_eq!(a.close_code(), None);
    }

    #[test]
    fn resync_and_close_are_read() {
        let body = br#"{"events":[],"next":"00000000000000cd:9","resync":{"type":"resync","session":"s","epoch":"00000000000000cd","seq":9},"close":{"code":1012,"reason":"draining"}}"#;
        let a = parse_answer(body).expect("answer");
        assert!(a
            .resync
            .expect("resync")
            .get()
            .starts_with(r#"{"type":"resync""#));
        assert_eq!(a.close_code(), Some(1012));
        assert!(parse_answer(br#"{"events":[],"next":"nope"}"#).is_err());
        assert!(parse_answer(br#"{"next":"00000000000000cd:9"}"#).is_err());
        assert!(parse_answer(b"not json").is_err());
    }

    #[test]
    fn a_response_is_whole_only_with_its_body() {
        let r = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\nContent-Length: 25\r\n\r\n{\"events\":[],\"next\":null}";
        let (status, body) = response(r).expect("ok").expect("whole");
        assert_eq!(status, 200);
        assert_eq!(&r[body.clone()], b"{\"events\":[],\"next\":null}");
        assert_eq!(response(&r[..r.len() - 1]), Ok(None));
        assert_eq!(response(&r[..10]), Ok(None));
        assert_eq!(response(b"garbage\r\n\r\n"), Err(PollError::Malformed));
        assert_eq!(PollError::Status(401).kind(), "poll_http_401");
    }

    #[test]
    fn requests_carry_the_token_and_since() {
        let p = Pos { epoch: 2, seq: 7 };
        let r = String::from_utf8(request("h:1", "tok", Some(p))).unwrap();
        assert!(r.starts_with("GET /poll?since=0000000000000002:7 HTTP/1.1\r\nHost: h:1\r\n"));
        assert!(r.contains("\r\nAuthorization: Bearer tok\r\n"));
        let r = String::from_utf8(request("h", "tok", None)).unwrap();
        assert!(r.starts_with("GET /poll HTTP/1.1\r\n"));
    }
}
