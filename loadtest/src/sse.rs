//! Server-Sent Events client bytes (WHATWG HTML, "Server-sent events"), sans-IO: the
//! `GET /sse` request, the check of its response head, and the reader of the
//! `text/event-stream` that follows, block by block.
//!
//! A block is lines up to a blank line: `field: value` (one space after the colon is
//! dropped), `: comment`, and a bare `field`. Lines end with LF or CR LF (the relay writes
//! LF; a lone CR is not read as a line end). A block's `data:` lines are its payload,
//! joined with `\n`; a block without any (the `retry:` field, a `: ping` comment) is
//! dispatched to no one, as a browser's `EventSource` does.
//!
//! Owns: the wire format only. No I/O, no clock: [`crate::conn`] reads the socket and
//! hands the bytes here.

use std::ops::Range;

use crate::event::Pos;
use crate::ws::HandshakeError;

/// Largest response head accepted.
const MAX_HEAD: usize = 16 * 1024;

/// How a stream broke the format, or was never one.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SseError {
    /// Refused (`Status`) or not HTTP: the same errors a WebSocket upgrade reports.
    #[error(transparent)]
    Handshake(#[from] HandshakeError),
    /// `200` without `Content-Type: text/event-stream`: not the relay's `/sse`.
    #[error("response is not text/event-stream")]
    NotEventStream,
    /// An unfinished block past the limit: the server is not sending events.
    #[error("event block longer than {0} bytes")]
    TooLarge(usize),
}

impl SseError {
    /// Short error kind for the report.
    pub fn kind(&self) -> String {
        match self {
            SseError::Handshake(h) => h.kind(),
            SseError::NotEventStream => "sse_not_event_stream".into(),
            SseError::TooLarge(_) => "sse_block_too_large".into(),
        }
    }
}

/// The request for `GET {path}` (path includes the query, e.g. `/sse?token=…`); a resume
/// sends `Last-Event-ID`, as a browser's `EventSource` does when it reconnects.
pub fn request(path: &str, host: &str, last_event_id: Option<Pos>) -> Vec<u8> {
    let resume = last_event_id
        .map(|p| format!("Last-Event-ID: {}\r\n", p.since()))
        .unwrap_or_default();
    format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\n\
         Cache-Control: no-cache\r\n{resume}User-Agent: relay-loadtest\r\n\r\n"
    )
    .into_bytes()
}

/// Checks the response head. `Ok(Some(n))`: a `200 text/event-stream` head of `n` bytes
/// (the stream follows). `Ok(None)`: need more bytes.
pub fn parse_head(buf: &[u8]) -> Result<Option<usize>, SseError> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    let n = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => {
            return Err(HandshakeError::TooLarge.into())
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(HandshakeError::Malformed.into()),
    };
    let status = resp.code.ok_or(HandshakeError::Malformed)?;
    if status != 200 {
        return Err(HandshakeError::Status(status).into());
    }
    let is_stream = resp.headers.iter().any(|h| {
        h.name.eq_ignore_ascii_case("content-type")
            && h.value
                .get(..17)
                .is_some_and(|v| v.eq_ignore_ascii_case(b"text/event-stream"))
    });
    if !is_stream {
        return Err(SseError::NotEventStream);
    }
    Ok(Some(n))
}

/// One whole block at the start of a buffer, as ranges into that buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    /// Bytes of the block, its blank line included.
    pub len: usize,
    event: Option<Range<usize>>,
    id: Option<Range<usize>>,
    /// The first `data:` line's value, and how many there were.
    data: Option<Range<usize>>,
    data_lines: u32,
}

impl Block {
    /// The event type: the `event:` field, or `message` without one.
    pub fn event<'a>(&self, block: &'a [u8]) -> &'a [u8] {
        self.event.clone().map_or(b"message", |r| &block[r])
    }

    /// The `id:` field, if the block had one.
    pub fn id<'a>(&self, block: &'a [u8]) -> Option<&'a [u8]> {
        self.id.clone().map(|r| &block[r])
    }

    /// The payload: a single `data:` line in place, several joined with `\n` in `scratch`;
    /// `None` for a block that carries none (it is not dispatched).
    pub fn data<'a>(&self, block: &'a [u8], scratch: &'a mut Vec<u8>) -> Option<&'a [u8]> {
        let first = self.data.clone()?;
        if self.data_lines == 1 {
            return Some(&block[first]);
        }
        scratch.clear();
        for_lines(&block[..self.len], |line| {
            if let Some((b"data", value)) = field(line) {
                scratch.extend_from_slice(value);
                scratch.push(b'\n');
            }
        });
        // The spec's "remove the last line feed".
        scratch.pop();
        Some(&scratch[..])
    }
}

/// Calls `each` with every whole line of `buf` (line end stripped); returns the bytes
/// consumed, up to and including the blank line that ends a block (`Some`), or `None`
/// when no blank line came yet.
fn for_lines(buf: &[u8], mut each: impl FnMut(&[u8])) -> Option<usize> {
    let mut at = 0;
    while let Some(i) = memchr::memchr(b'\n', &buf[at..]) {
        let mut line = &buf[at..at + i];
        at += i + 1;
        if let Some(l) = line.strip_suffix(b"\r") {
            line = l;
        }
        if line.is_empty() {
            return Some(at);
        }
        each(line);
    }
    None
}

/// A line's field name and value (one leading space dropped); `None` for a comment.
fn field(line: &[u8]) -> Option<(&[u8], &[u8])> {
    match memchr::memchr(b':', line) {
        Some(0) => None,
        Some(i) => {
            let value = &line[i + 1..];
            Some((&line[..i], value.strip_prefix(b" ").unwrap_or(value)))
        }
        None => Some((line, &[][..])),
    }
}

/// The block at the start of `buf`: `Ok(None)` until its blank line has arrived; an
/// unfinished block longer than `max` is an error.
pub fn next_block(buf: &[u8], max: usize) -> Result<Option<Block>, SseError> {
    let mut b = Block {
        len: 0,
        event: None,
        id: None,
        data: None,
        data_lines: 0,
    };
    let base = buf.as_ptr() as usize;
    let range = |s: &[u8]| {
        let start = s.as_ptr() as usize - base;
        start..start + s.len()
    };
    let end = for_lines(buf, |line| match field(line) {
        Some((b"data", v)) => {
            b.data_lines += 1;
            if b.data.is_none() {
                b.data = Some(range(v));
            }
        }
        Some((b"event", v)) => b.event = Some(range(v)),
        Some((b"id", v)) => b.id = Some(range(v)),
        _ => {} // retry:, comments, unknown fields
    });
    match end {
        Some(len) => {
            b.len = len;
            Ok(Some(b))
        }
        None if buf.len() > max => Err(SseError::TooLarge(max)),
        None => Ok(None),
    }
}

/// The code of an `event: close` block's `{"type":"close","code":N,"reason":…}`.
pub fn close_code(json: &[u8]) -> Option<u16> {
    #[derive(serde::Deserialize)]
    struct Close {
        code: u16,
    }
    serde_json::from_slice::<Close>(json).ok().map(|c| c.code)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blocks(stream: &[u8]) -> Vec<(String, Option<String>, Option<String>)> {
        let mut out = Vec::new();
        let mut at = 0;
        let mut scratch = Vec::new();
        while let Some(b) = next_block(&stream[at..], 1 << 20).expect("ok") {
            let block = &stream[at..at + b.len];
            let s = |v: &[u8]| String::from_utf8_lossy(v).into_owned();
            out.push((
                s(b.event(block)),
                b.id(block).map(s),
                b.data(block, &mut scratch).map(s),
            ));
            at += b.len;
        }
        out
    }

    #[test]
    fn the_relays_stream_reads_block_by_block() {
        let stream = b"retry: 1000\n\n\
            id: 00000000000000ab:3\nevent: welcome\ndata: {\"type\":\"welcome\"}\n\n\
            : ping\n\n\
            id: 00000000000000ab:4\nevent: event\ndata: {\"a\":\ndata:  1}\n\n\
            event: close\ndata: {\"type\":\"close\",\"code\":4001,\"reason\":\"x\"}\n\n\
            id: 1\nevent: ev";
        let got = blocks(stream);
        assert_eq!(got.len(), 5, "{got:?}");
        assert_eq!(got[0], ("message".into(), None, None), "retry: has no data");
        assert_eq!(got[1].0, "welcome");
        assert_eq!(got[1].1.as_deref(), Some("00000000000000ab:3"));
        assert_eq!(got[1].2.as_deref(), Some("{\"type\":\"welcome\"}"));
        assert_eq!(got[2].2, None, "a comment has no data");
        assert_eq!(got[3].2.as_deref(), Some("{\"a\":\n 1}"), "data lines join");
        assert_eq!(got[4].0, "close");
        assert_eq!(
            close_code(got[4].2.as_deref().unwrap().as_bytes()),
            Some(4001)
        );
        // The unfinished block waits for its blank line.
        assert_eq!(next_block(b"id: 1\nevent: ev", 1 << 20), Ok(None));
    }

    #[test]
    fn crlf_lines_bare_fields_and_one_space_only() {
        let got = blocks(b"event:event\r\ndata:  two spaces\r\ndata\r\n\r\n");
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0, "event");
        assert_eq!(got[0].2.as_deref(), Some(" two spaces\n"));
    }

    #[test]
    fn an_endless_block_is_an_error() {
        let long = vec![b'x'; 100];
        assert_eq!(next_block(&long, 64), Err(SseError::TooLarge(64)));
        assert_eq!(next_block(&long, 100), Ok(None));
    }

    #[test]
    fn the_head_must_be_a_200_event_stream() {
        let ok = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\nretry: 1000\n\n";
        let n = parse_head(ok).expect("ok").expect("complete");
        assert_eq!(&ok[n..], b"retry: 1000\n\n");
        assert_eq!(parse_head(&ok[..20]), Ok(None));
        let refused = b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n";
        let err = parse_head(refused).unwrap_err();
        assert_eq!(err, SseError::Handshake(HandshakeError::Status(401)));
        assert_eq!(
            err.kind(),
            "handshake_http_401",
            "counted like a refused upgrade"
        );
        let json = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n";
        assert_eq!(parse_head(json), Err(SseError::NotEventStream));
        assert!(parse_head(b"SSH-2.0\r\n\r\n").is_err());
    }

    #[test]
    fn a_resume_sends_last_event_id() {
        let p = Pos { epoch: 1, seq: 9 };
        let r = String::from_utf8(request("/sse?token=t", "h:1", Some(p))).unwrap();
        assert!(r.starts_with("GET /sse?token=t HTTP/1.1\r\nHost: h:1\r\n"));
        assert!(r.contains("\r\nLast-Event-ID: 0000000000000001:9\r\n"));
        assert!(r.ends_with("\r\n\r\n"));
        let r = String::from_utf8(request("/sse", "h", None)).unwrap();
        assert!(!r.contains("Last-Event-ID"));
    }
}
