//! What an accepted subscription request carries to its session's shard, whatever
//! the transport: the verified claims, where to resume, and how the answer starts
//! (a WebSocket's 101, or an event stream's 200).
//!
//! Built by the pure request decisions (`ws::upgrade`, `sse::request`), carried
//! through a handoff by the router, read by the shard when it greets the
//! subscriber. Owns no I/O and no state.

use crate::auth::Claims;
use crate::stream::StreamPos;

/// How a subscriber receives its session's stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// A WebSocket (`GET /ws`).
    Ws,
    /// A `text/event-stream` response (`GET /sse`).
    Sse,
}

impl Transport {
    /// The `transport` label of metrics.
    pub fn label(self) -> &'static str {
        match self {
            Transport::Ws => "ws",
            Transport::Sse => "sse",
        }
    }
}

/// How the response to an accepted request starts.
#[derive(Debug, Clone)]
pub enum Answer {
    /// `101 Switching Protocols` with this `Sec-WebSocket-Accept`, echoing the
    /// subprotocol when the client offered it.
    Switch {
        accept_key: String,
        protocol: Option<&'static str>,
    },
    /// `200 text/event-stream`, with CORS for this allowed origin (when the request
    /// named one), then the `retry:` field in milliseconds.
    EventStream {
        allow_origin: Option<Box<str>>,
        retry_ms: u64,
    },
}

/// A subscription the relay will complete.
#[derive(Debug, Clone)]
pub struct AcceptedUpgrade {
    pub claims: Claims,
    /// Resume after this point of the session's stream (`since=EPOCH:SEQ`, or an
    /// event stream's `Last-Event-ID`).
    pub since: Option<StreamPos>,
    pub answer: Answer,
}

impl AcceptedUpgrade {
    pub fn transport(&self) -> Transport {
        match self.answer {
            Answer::Switch { .. } => Transport::Ws,
            Answer::EventStream { .. } => Transport::Sse,
        }
    }

    /// The response head (and, for an event stream, its `retry:` field): what the
    /// subscriber gets before its welcome.
    pub fn response(&self) -> Vec<u8> {
        match &self.answer {
            Answer::Switch {
                accept_key,
                protocol,
            } => {
                let mut r = format!(
                    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept_key}\r\n"
                );
                if let Some(p) = protocol {
                    r.push_str("Sec-WebSocket-Protocol: ");
                    r.push_str(p);
                    r.push_str("\r\n");
                }
                r.push_str("\r\n");
                r.into_bytes()
            }
            Answer::EventStream {
                allow_origin,
                retry_ms,
            } => {
                // No length and no chunking: the stream ends when the connection does.
                let mut r = String::from(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-store\r\nX-Accel-Buffering: no\r\nConnection: close\r\n",
                );
                if let Some(origin) = allow_origin {
                    r.push_str("Access-Control-Allow-Origin: ");
                    r.push_str(origin);
                    r.push_str("\r\nVary: Origin\r\n");
                }
                r.push_str("\r\n");
                let mut out = r.into_bytes();
                out.extend_from_slice(&crate::sse::frame::retry_field(*retry_ms));
                out
            }
        }
    }
}
