//! What an accepted subscription request carries to its session's shard, whatever
//! the transport: the verified claims, where to resume, and how the answer starts
//! (a WebSocket's 101, or an event stream's 200).
//!
//! Built by the pure request decisions (`ws::upgrade`, `sse::request`), carried
//! through a handoff by the router, read by the shard when it greets the
//! subscriber. Owns no I/O and no state.

use crate::auth::Claims;
use crate::http::response::Refusal;
use crate::stream::{parse_since, StreamPos};

/// A resume point as a request spells it (`since`, `Last-Event-ID`): `EPOCH:SEQ`,
/// or 400 naming `name` and the form.
pub fn resume_point(value: &str, name: &str) -> Result<StreamPos, Refusal> {
    parse_since(value.trim()).ok_or_else(|| {
        Refusal::bad_request(format!(
            "{name} must be EPOCH:SEQ (the epoch's 16 hex digits and a sequence number)"
        ))
    })
}

/// Appends the CORS grant for an allowed origin to a response head.
pub fn push_cors(head: &mut String, origin: &str) {
    head.push_str("Access-Control-Allow-Origin: ");
    head.push_str(origin);
    head.push_str("\r\nVary: Origin\r\n");
}

/// How a subscriber receives its session's stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// A WebSocket (`GET /ws`).
    Ws,
    /// A `text/event-stream` response (`GET /sse`).
    Sse,
    /// One long-poll request (`GET /poll`): answered with the events after its
    /// `since`, at once or when the next one comes.
    Poll,
}

impl Transport {
    pub const ALL: [Transport; 3] = [Transport::Ws, Transport::Sse, Transport::Poll];

    /// The `transport` label of metrics, and its name in `RELAY_TRANSPORTS`.
    pub fn label(self) -> &'static str {
        match self {
            Transport::Ws => "ws",
            Transport::Sse => "sse",
            Transport::Poll => "poll",
        }
    }

    /// Position in [`Transport::ALL`]: the index of per-transport counters.
    pub fn index(self) -> usize {
        self as usize
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

/// The transports a node offers (`RELAY_TRANSPORTS`, reloadable): the operator's
/// switch to move clients off WebSockets when something between them breaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transports(u8);

impl Default for Transports {
    fn default() -> Self {
        Transports(0b111)
    }
}

/// A `RELAY_TRANSPORTS` value that names no transport, or an unknown one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?}: expected a comma-separated list of ws, sse, poll (at least one)")]
pub struct TransportsError(String);

impl Transports {
    /// Parses `ws,sse,poll` (any order, any subset but none).
    pub fn parse(value: &str) -> Result<Transports, TransportsError> {
        let mut bits = 0u8;
        for name in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let t = Transport::ALL
                .into_iter()
                .find(|t| t.label().eq_ignore_ascii_case(name))
                .ok_or_else(|| TransportsError(value.to_string()))?;
            bits |= t.bit();
        }
        if bits == 0 {
            return Err(TransportsError(value.to_string()));
        }
        Ok(Transports(bits))
    }

    pub fn allows(self, t: Transport) -> bool {
        self.0 & t.bit() != 0
    }

    /// The header a refused request gets, naming what is offered instead.
    pub fn header(self) -> &'static str {
        match self.0 & 0b111 {
            0b001 => "X-Relay-Transports: ws\r\n",
            0b010 => "X-Relay-Transports: sse\r\n",
            0b011 => "X-Relay-Transports: ws,sse\r\n",
            0b100 => "X-Relay-Transports: poll\r\n",
            0b101 => "X-Relay-Transports: ws,poll\r\n",
            0b110 => "X-Relay-Transports: sse,poll\r\n",
            _ => "X-Relay-Transports: ws,sse,poll\r\n",
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
    /// A long-poll's `200 application/json`, written whole by its task when it
    /// has something to say; CORS for this allowed origin.
    Poll { allow_origin: Option<Box<str>> },
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
            Answer::Poll { .. } => Transport::Poll,
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
                    push_cors(&mut r, origin);
                }
                r.push_str("\r\n");
                let mut out = r.into_bytes();
                out.extend_from_slice(&crate::sse::frame::retry_field(*retry_ms));
                out
            }
            // The poll's task writes its whole response at the end.
            Answer::Poll { .. } => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transports_parse_and_name_themselves() {
        let all = Transports::parse("ws,sse,poll").unwrap();
        assert_eq!(all, Transports::default());
        assert_eq!(all.header(), "X-Relay-Transports: ws,sse,poll\r\n");
        let two = Transports::parse(" SSE , poll").unwrap();
        assert!(!two.allows(Transport::Ws));
        assert!(two.allows(Transport::Sse) && two.allows(Transport::Poll));
        assert_eq!(two.header(), "X-Relay-Transports: sse,poll\r\n");
        assert!(Transports::parse("").is_err());
        assert!(Transports::parse("ws,carrier-pigeon").is_err());
    }
}
