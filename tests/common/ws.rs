//! The well-behaved WebSocket client: [`Ws`] is tungstenite over a blocking `TcpStream` with
//! read timeouts, and [`ws_connect`] opens one (returning the HTTP answer when the upgrade
//! is refused).
//!
//! Owns the polite client's reads and writes. Misbehaving clients that write frames by
//! hand are [`super::raw`]'s.

use std::io;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use serde_json::Value;
use tungstenite::handshake::HandshakeError;
use tungstenite::protocol::WebSocket;
use tungstenite::Message;

use super::http::HttpResponse;
use super::wait::PROMPT;

/// A well-behaved client: tungstenite over a blocking TcpStream with read timeouts.
pub struct Ws {
    pub ws: WebSocket<TcpStream>,
    /// The welcome frame, once read by [`Node::ws_welcomed`] (else `null`).
    pub welcome: serde_json::Value,
}

/// Why `Ws::recv` returned without a message.
#[derive(Debug)]
pub enum WsEnd {
    Timeout,
    /// The connection ended (closed after a close frame, reset, EOF).
    Gone(String),
}

/// Opens `ws://addr{path}` with extra request headers; on refusal returns the HTTP response.
pub fn ws_connect(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<(Ws, HttpResponse), HttpResponse> {
    use tungstenite::client::IntoClientRequest;
    let mut req = format!("ws://{addr}{path}")
        .into_client_request()
        .expect("client request");
    for (k, v) in headers {
        req.headers_mut().append(
            tungstenite::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            tungstenite::http::HeaderValue::from_str(v).unwrap(),
        );
    }
    let stream = TcpStream::connect_timeout(&addr, PROMPT).expect("connect");
    stream.set_read_timeout(Some(PROMPT)).unwrap();
    stream.set_write_timeout(Some(PROMPT)).unwrap();
    stream.set_nodelay(true).unwrap();
    match tungstenite::client::client_with_config(req, stream, None) {
        Ok((ws, resp)) => {
            let headers = resp
                .headers()
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
                .collect();
            Ok((
                Ws {
                    ws,
                    welcome: serde_json::Value::Null,
                },
                HttpResponse {
                    status: resp.status().as_u16(),
                    headers,
                    body: Vec::new(),
                },
            ))
        }
        Err(HandshakeError::Failure(tungstenite::Error::Http(resp))) => Err(HttpResponse {
            status: resp.status().as_u16(),
            headers: resp
                .headers()
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
                .collect(),
            body: resp.body().clone().unwrap_or_default(),
        }),
        Err(e) => panic!("WebSocket handshake failed without an HTTP answer: {e:?}"),
    }
}

impl Ws {
    /// The next message of any kind, or why there is none.
    pub fn recv(&mut self, timeout: Duration) -> Result<Message, WsEnd> {
        let t = if timeout.is_zero() {
            Duration::from_millis(1)
        } else {
            timeout
        };
        self.ws.get_mut().set_read_timeout(Some(t)).unwrap();
        match self.ws.read() {
            Ok(m) => Ok(m),
            Err(tungstenite::Error::Io(e))
                if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::TimedOut =>
            {
                Err(WsEnd::Timeout)
            }
            Err(e) => Err(WsEnd::Gone(e.to_string())),
        }
    }

    /// The next text frame (pings and pongs skipped); panics on close or timeout.
    pub fn next_text(&mut self, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                panic!("no text frame within {timeout:?}");
            }
            match self.recv(left) {
                Ok(Message::Text(t)) => return t.as_str().to_string(),
                Ok(Message::Ping(_)) | Ok(Message::Pong(_)) => continue,
                Ok(other) => panic!("expected a text frame, got {other:?}"),
                Err(WsEnd::Timeout) => panic!("no text frame within {timeout:?}"),
                Err(WsEnd::Gone(e)) => panic!("socket ended while waiting for a text frame: {e}"),
            }
        }
    }

    pub fn next_json(&mut self, timeout: Duration) -> Value {
        let t = self.next_text(timeout);
        serde_json::from_str(&t).unwrap_or_else(|e| panic!("frame is not JSON ({e}): {t:?}"))
    }

    /// The next event frame; checks its shape.
    pub fn next_event(&mut self, timeout: Duration) -> Value {
        let v = self.next_json(timeout);
        assert_eq!(v["type"], "event", "expected an event frame, got {v}");
        v
    }

    /// Reads until a close frame arrives and returns its code (`None`: close without a code).
    /// Panics if the socket carries on past `timeout` or drops without a close frame.
    pub fn expect_close(&mut self, timeout: Duration) -> Option<u16> {
        match self.wait_close(timeout) {
            Ok(code) => code,
            Err(e) => panic!("no close frame: {e:?}"),
        }
    }

    /// Reads (skipping everything else) until a close frame; `Err` on timeout or drop.
    pub fn wait_close(&mut self, timeout: Duration) -> Result<Option<u16>, WsEnd> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(WsEnd::Timeout);
            }
            match self.recv(left)? {
                Message::Close(frame) => {
                    // Send the close reply tungstenite queued, as a polite client does.
                    let _ = self.ws.flush();
                    return Ok(frame.map(|f| u16::from(f.code)));
                }
                _ => continue,
            }
        }
    }

    pub fn send_text(&mut self, text: &str) {
        self.ws
            .send(Message::text(text.to_string()))
            .expect("send text frame");
    }

    /// Asserts that no text frame arrives within `dur` (pings are fine).
    pub fn assert_no_text(&mut self, dur: Duration) {
        let deadline = Instant::now() + dur;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            match self.recv(left) {
                Ok(Message::Text(t)) => panic!("unexpected text frame {t}"),
                Ok(Message::Close(f)) => panic!("unexpected close {f:?}"),
                Ok(_) => continue,
                Err(WsEnd::Timeout) => return,
                Err(WsEnd::Gone(e)) => panic!("socket ended: {e}"),
            }
        }
    }
}
