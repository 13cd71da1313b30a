//! What opening and reading a subscriber report, whatever its transport: [`ConnError`]
//! (with the short `kind()` the report counts), [`ReadOutcome`] and [`DrainEnd`]; and
//! [`Subscribe`], how a subscriber names itself in its request.
//!
//! Owns: these types only, so that every transport's file can return them without
//! depending on another's. May not import any other `conn` module.

use std::io;

use crate::poll::PollError;
use crate::sse::SseError;
use crate::stream::DialError;
use crate::ws::{FrameError, HandshakeError};

/// How opening or reading a subscriber failed. `kind()` names it in the report.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    /// TCP connect failed (refused, no ports left, …): the node is down or the host is out of
    /// ephemeral ports — add `source_addrs`.
    #[error("connect: {0}")]
    Connect(io::Error),
    /// The TLS handshake failed (`wss://`, `https://`): the certificate is not trusted
    /// (pass `--ca-file`), does not name the host, or the port does not speak TLS.
    #[error("tls: {0}")]
    Tls(io::Error),
    /// The server refused or botched the upgrade (or the `/sse`, `/poll` request).
    #[error("upgrade: {0}")]
    Handshake(#[from] HandshakeError),
    /// The connection broke.
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
    /// The server broke the framing rules.
    #[error("protocol: {0}")]
    Frame(#[from] FrameError),
    /// The event stream broke its format.
    #[error("event stream: {0}")]
    Sse(SseError),
    /// A poll after the first was refused or its answer was not one.
    #[error("poll: {0}")]
    Poll(#[from] PollError),
    /// The server closed before sending the welcome frame.
    #[error("closed before welcome (code {0:?})")]
    ClosedBeforeWelcome(Option<u16>),
    /// The first text frame was not a welcome.
    #[error("first frame was not a welcome")]
    NoWelcome,
    /// A harness target was asked for a transport it does not serve (validation refuses
    /// such scenarios; this guards the library entry).
    #[error("a harness serves only WebSockets (`GET /ws?session=S`), not {0}")]
    NotOnHarness(crate::scenario::Transport),
    /// The connect + upgrade + welcome took longer than `connect_timeout`.
    #[error("timed out")]
    Timeout,
}

impl From<DialError> for ConnError {
    fn from(e: DialError) -> Self {
        match e {
            DialError::Connect(e) => ConnError::Connect(e),
            DialError::Tls(e) => ConnError::Tls(e),
        }
    }
}

impl From<SseError> for ConnError {
    /// A refused `/sse` counts as a refused upgrade (`handshake_http_401` …).
    fn from(e: SseError) -> Self {
        match e {
            SseError::Handshake(h) => ConnError::Handshake(h),
            other => ConnError::Sse(other),
        }
    }
}

impl ConnError {
    pub fn kind(&self) -> String {
        match self {
            ConnError::Connect(e) => match e.raw_os_error() {
                Some(libc::ECONNREFUSED) => "connect_refused".into(),
                Some(libc::EADDRNOTAVAIL) => "connect_no_ports".into(),
                Some(libc::EMFILE) | Some(libc::ENFILE) => "connect_no_fds".into(),
                Some(libc::ECONNRESET) => "connect_reset".into(),
                _ => "connect_io".into(),
            },
            ConnError::Tls(_) => "tls_handshake".into(),
            ConnError::Handshake(h) => h.kind(),
            ConnError::Io(e) if e.kind() == io::ErrorKind::ConnectionReset => "socket_reset".into(),
            ConnError::Io(_) => "socket_io".into(),
            ConnError::Frame(_) => "socket_protocol".into(),
            ConnError::Sse(e) => e.kind(),
            ConnError::Poll(e) => e.kind(),
            ConnError::ClosedBeforeWelcome(_) => "closed_before_welcome".into(),
            ConnError::NoWelcome => "no_welcome".into(),
            ConnError::NotOnHarness(_) => "harness_transport".into(),
            ConnError::Timeout => "handshake_timeout".into(),
        }
    }
}

/// How a subscriber names itself and its session in the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subscribe<'a> {
    /// A relay node: `?token=JWT` (the token names the session); open once the welcome
    /// frame arrives.
    Token(&'a str),
    /// A harness (`target = "harness"`): `GET /ws?session=S`, no token; open once the
    /// `101` arrives (no welcome frame). WebSocket only.
    Session(&'a str),
}

/// What one read brought.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadOutcome {
    /// Frames (maybe zero complete ones) were processed.
    Data,
    /// Nothing arrived before the deadline.
    Idle,
    /// The server ended the subscriber with this code: a WebSocket close frame (already
    /// answered), an `event: close` block, a poll answer's `close`.
    Closed(Option<u16>),
    /// TCP ended without a close frame.
    Eof,
}

/// How a drained slow socket ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DrainEnd {
    Closed(Option<u16>),
    Eof,
    StillOpen,
    Error(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_named_alike_on_every_transport() {
        let ws = ConnError::Handshake(HandshakeError::Status(401));
        let sse = ConnError::from(SseError::Handshake(HandshakeError::Status(401)));
        assert_eq!(ws.kind(), "handshake_http_401");
        assert_eq!(sse.kind(), ws.kind());
        assert_eq!(
            ConnError::from(SseError::NotEventStream).kind(),
            "sse_not_event_stream"
        );
        assert_eq!(
            ConnError::from(PollError::Status(503)).kind(),
            "poll_http_503"
        );
    }
}
