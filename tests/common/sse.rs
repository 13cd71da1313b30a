//! An event-stream reader over raw TCP, for `GET /sse`: sends the request, reads
//! the response head, then parses `text/event-stream` blocks (id, event, data
//! lines, comments) as a browser's `EventSource` does.
//!
//! Every read has a timeout. It speaks nothing else.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::http::find;
use super::wait::PROMPT;

/// One dispatched block: its fields as a reader sees them.
#[derive(Debug, Clone, Default)]
pub struct SseBlock {
    pub id: Option<String>,
    pub event: String,
    /// The data lines, joined with `\n`.
    pub data: String,
}

impl SseBlock {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.data).unwrap_or_else(|e| panic!("data {:?}: {e}", self.data))
    }
}

/// An open event stream.
pub struct SseStream {
    pub stream: TcpStream,
    /// The response head, as text.
    pub head: String,
    pub status: u16,
    buf: Vec<u8>,
    /// `retry:` values and comments seen so far.
    pub retry: Option<u64>,
    pub comments: usize,
}

/// `GET /sse?{query}` with extra header lines; returns once the head is read.
pub fn sse_open(addr: SocketAddr, query: &str, headers: &[&str]) -> SseStream {
    let stream = TcpStream::connect_timeout(&addr, PROMPT).expect("connect");
    sse_open_on(stream, query, headers)
}

/// The same on a connection the test made (e.g. one with a small receive buffer).
pub fn sse_open_on(mut stream: TcpStream, query: &str, headers: &[&str]) -> SseStream {
    stream.set_read_timeout(Some(PROMPT)).unwrap();
    let mut req =
        format!("GET /sse?{query} HTTP/1.1\r\nHost: localhost\r\nAccept: text/event-stream\r\n");
    for h in headers {
        req.push_str(h);
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    stream.write_all(req.as_bytes()).expect("send request");
    let mut s = SseStream {
        stream,
        head: String::new(),
        status: 0,
        buf: Vec::new(),
        retry: None,
        comments: 0,
    };
    let end = loop {
        if let Some(i) = find(&s.buf, b"\r\n\r\n") {
            break i + 4;
        }
        if s.fill().expect("read head") == 0 {
            panic!(
                "closed before a response head: {:?}",
                String::from_utf8_lossy(&s.buf)
            );
        }
    };
    s.head = String::from_utf8_lossy(&s.buf[..end]).into_owned();
    s.buf.drain(..end);
    s.status = s.head[9..12].parse().expect("status code");
    s
}

impl SseStream {
    fn fill(&mut self) -> io::Result<usize> {
        let mut chunk = [0u8; 16384];
        let n = self.stream.read(&mut chunk)?;
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n)
    }

    /// The value of a response header (case-insensitive name).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    /// The body bytes read so far and not parsed (an error response's body).
    pub fn rest(&mut self, timeout: Duration) -> String {
        let _ = self.stream.set_read_timeout(Some(timeout));
        while let Ok(n) = self.fill() {
            if n == 0 {
                break;
            }
        }
        String::from_utf8_lossy(&self.buf).into_owned()
    }

    /// The next dispatched block, skipping comments and `retry:`; `Err` when the
    /// stream ended (`UnexpectedEof`) or nothing came within `timeout`.
    pub fn next(&mut self, timeout: Duration) -> io::Result<SseBlock> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(i) = find(&self.buf, b"\n\n") {
                let raw: Vec<u8> = self.buf.drain(..i + 2).collect();
                let text = String::from_utf8_lossy(&raw[..i]).into_owned();
                let mut block = SseBlock::default();
                let mut data: Vec<&str> = Vec::new();
                let mut dispatch = false;
                for line in text.split('\n') {
                    if line.starts_with(':') {
                        self.comments += 1;
                        continue;
                    }
                    let (field, value) = line.split_once(':').unwrap_or((line, ""));
                    let value = value.strip_prefix(' ').unwrap_or(value);
                    match field {
                        "id" => block.id = Some(value.to_string()),
                        "event" => block.event = value.to_string(),
                        "data" => {
                            data.push(value);
                            dispatch = true;
                        }
                        "retry" => self.retry = value.parse().ok(),
                        _ => {}
                    }
                }
                if dispatch {
                    block.data = data.join("\n");
                    if block.event.is_empty() {
                        block.event = "message".into();
                    }
                    return Ok(block);
                }
                continue;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::ErrorKind::TimedOut.into());
            }
            self.stream.set_read_timeout(Some(left)).unwrap();
            if self.fill()? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
    }

    /// The next block that is an event (`event: event`), as JSON.
    pub fn next_event(&mut self, timeout: Duration) -> Value {
        let b = self.next(timeout).expect("an event");
        assert_eq!(b.event, "event", "expected an event, got {b:?}");
        b.json()
    }

    /// Reads until `event: close`; its code, or `None` if the stream ended without one.
    pub fn expect_close(&mut self, timeout: Duration) -> Option<u64> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next(left) {
                Ok(b) if b.event == "close" => return b.json()["code"].as_u64(),
                Ok(_) => continue,
                Err(_) => return None,
            }
        }
    }
}
