//! Long-poll (`GET /poll?since=EPOCH:SEQ`): the session's stream one answer at a
//! time, for clients where neither a WebSocket nor an event stream gets through.
//!
//! A poll is a subscriber of its session's shard like any other (the same queue,
//! the same replay-or-resync greeting), whose task answers once: at once with
//! the events after `since` when history holds them (or the welcome position
//! when it named none, or a resync), else with the next events to come, else
//! with none after `RELAY_POLL_TIMEOUT`. The answer is
//! `{"events":[frames...],"next":"EPOCH:SEQ"[,"resync":{...}][,"close":{...}]}`;
//! the client polls again with `since=next`. Each answer closes its connection
//! (the subscriber was handed to the session's shard). Runs on that shard; it sees
//! the shard only through its `SocketGuard`.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_lite::{AsyncRead, AsyncWrite};
use glommio::net::TcpStream;

use crate::auth::{JwtVerifier, OriginPolicy};
use crate::http::head::RequestHead;
use crate::http::response::Refusal;
use crate::shard::registry::{mono_ms, Outgoing};
use crate::shard::SocketGuard;
use crate::sse::request::{method_and_origin, verified};
use crate::stream::{push_decimal, push_hex16, StreamPos};
use crate::subscribe::{push_cors, resume_point, AcceptedUpgrade, Answer, Transport};
use crate::ws::close::Disconnect;

/// How long writing the answer may take.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Decides a `GET /poll` request: the same checks as an upgrade (token from
/// `Authorization: Bearer` or `?token=`, origin, JWT rules); `since` from the query.
pub fn decide(
    head: &RequestHead<'_, '_>,
    verifier: &JwtVerifier,
    origins: &OriginPolicy,
    now: u64,
) -> Result<AcceptedUpgrade, Refusal> {
    let origin = method_and_origin(head, origins)?;
    let since = match head.query_param("since") {
        None => None,
        Some(v) => Some(resume_point(v, "since")?),
    };
    let claims = verified(head, verifier, now)?;
    Ok(AcceptedUpgrade {
        claims,
        since,
        answer: Answer::Poll {
            allow_origin: origin.map(Box::from),
        },
    })
}

/// What the poll's task needs from its request.
pub struct PollRequest {
    pub since: Option<StreamPos>,
    pub allow_origin: Option<Box<str>>,
    pub timeout: Duration,
}

/// Serves one accepted poll: waits for something to say, answers, closes.
///
/// A plain `poll_fn` over a small struct, like a socket's task, and no timer of
/// its own: its deadline sits in its `SocketState` (`last_ping`, which a poll
/// does not otherwise use) and housekeeping wakes it once that has passed, so a
/// waiting poll costs what an idle socket costs.
pub fn run(
    guard: SocketGuard,
    stream: TcpStream,
    req: PollRequest,
) -> impl std::future::Future<Output = ()> {
    // The request head was read under the handshake deadline; the wait is
    // bounded by `req.timeout` instead.
    let _ = stream.set_read_timeout(None);
    let _ = stream.set_write_timeout(Some(WRITE_TIMEOUT));
    let deadline = mono_ms() + req.timeout.as_millis() as u64;
    guard.state.last_ping.set(deadline);
    guard.ctx().wake_at(&guard.state, deadline);
    let mut task = PollTask {
        guard,
        stream,
        since: req.since,
        allow_origin: req.allow_origin,
        deadline,
        out: None,
    };
    futures_lite::future::poll_fn(move |cx| task.poll(cx))
}

struct PollTask {
    guard: SocketGuard,
    stream: TcpStream,
    since: Option<StreamPos>,
    allow_origin: Option<Box<str>>,
    /// When the wait ends with an empty answer ([`mono_ms`] time).
    deadline: u64,
    /// The answer being written, how much of it is out, and how the poll ends.
    out: Option<(Vec<u8>, usize, Disconnect)>,
}

impl PollTask {
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.out.is_none() {
            match wait(&self.guard, &mut self.stream, cx) {
                Poll::Ready(Some(gone)) => {
                    self.guard.reason = gone;
                    return Poll::Ready(());
                }
                Poll::Ready(None) => {}
                Poll::Pending if mono_ms() < self.deadline => return Poll::Pending,
                // Nothing came in time: an empty answer.
                Poll::Pending => {}
            }
            let close = self.guard.state.take_close_request();
            let body = answer(&self.guard, self.since, close);
            let mut bytes = response_head(body.len(), self.allow_origin.as_deref());
            bytes.extend_from_slice(&body);
            let ending = close.unwrap_or(Disconnect::ClientClosed);
            self.out = Some((bytes, 0, ending));
        }
        let Some((bytes, written, ending)) = &mut self.out else {
            return Poll::Ready(());
        };
        while *written < bytes.len() {
            match Pin::new(&mut self.stream).poll_write(cx, &bytes[*written..]) {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => {
                    self.guard.reason = Disconnect::IoError;
                    return Poll::Ready(());
                }
                Poll::Ready(Ok(n)) => *written += n,
                Poll::Pending => return Poll::Pending,
            }
        }
        // All written: dropping the stream closes the connection (the answer's
        // length and `Connection: close` tell the client where it ends).
        self.guard.reason = *ending;
        Poll::Ready(())
    }
}

/// Ready when the poll has something to answer: a queued event or message, or
/// a close request (`None`); or when the client went away (`Some(reason)`).
fn wait(
    guard: &SocketGuard,
    stream: &mut TcpStream,
    cx: &mut Context<'_>,
) -> Poll<Option<Disconnect>> {
    let state = &guard.state;
    state.set_waker(cx.waker());
    if !state.queue().is_empty() || state.is_closing() {
        return Poll::Ready(None);
    }
    if let Some(reason) = state.take_close_request() {
        // Put it back for the answer to name.
        state.request_close(reason);
        return Poll::Ready(None);
    }
    let ctx = guard.ctx().clone();
    let mut scratch = ctx.scratch();
    match Pin::new(&mut *stream).poll_read(cx, &mut scratch[..]) {
        Poll::Ready(Ok(0)) => Poll::Ready(Some(Disconnect::ClientClosed)),
        Poll::Ready(Err(_)) => Poll::Ready(Some(Disconnect::IoError)),
        // A poller has nothing more to say; whatever it sends is dropped.
        Poll::Ready(Ok(_)) | Poll::Pending => Poll::Pending,
    }
}

/// The answer's body, from everything queued: events (counted as deliveries),
/// the welcome or resync position, and the close, if any. Takes the subscriber
/// off its session first, so nothing queued after this is taken for sent: the
/// next poll resumes from `next`.
fn answer(guard: &SocketGuard, since: Option<StreamPos>, close: Option<Disconnect>) -> Vec<u8> {
    let state = &guard.state;
    // From here fan-out skips this subscriber.
    state.push_close(Vec::new());
    let mut next = since;
    let mut resync: Option<Vec<u8>> = None;
    let mut body = Vec::with_capacity(64 + state.queued_bytes());
    body.extend_from_slice(br#"{"events":["#);
    let now = Instant::now();
    let stats = guard.ctx().stats();
    let mut delivered = 0u64;
    let mut first = true;
    let mut queue = state.queue();
    while let Some(out) = state.pop_written(&mut queue) {
        match &out {
            Outgoing::Event(f) | Outgoing::Replay(f) => {
                if !first {
                    body.push(b',');
                }
                first = false;
                body.extend_from_slice(f.json());
                next = Some(StreamPos {
                    epoch: f.epoch,
                    seq: f.seq,
                });
                if matches!(out, Outgoing::Event(_)) {
                    delivered += 1;
                    stats
                        .latency(Transport::Poll)
                        .record(now.saturating_duration_since(f.accepted_at));
                }
            }
            // The relay's own messages: the welcome, or a resync.
            Outgoing::Owned(json) | Outgoing::SlowResync(json) if !json.is_empty() => {
                if let Some(pos) = position_of(json) {
                    next = Some(pos);
                }
                if json.starts_with(br#"{"type":"resync""#) {
                    resync = Some(json.to_vec());
                }
            }
            _ => {}
        }
    }
    drop(queue);
    if delivered > 0 {
        stats.add_deliveries(Transport::Poll, delivered);
    }
    body.push(b']');
    if let Some(pos) = next {
        body.extend_from_slice(br#","next":""#);
        push_hex16(&mut body, pos.epoch);
        body.push(b':');
        push_decimal(&mut body, pos.seq);
        body.push(b'"');
    }
    if let Some(r) = resync {
        body.extend_from_slice(br#","resync":"#);
        body.extend_from_slice(&r);
    }
    if let Some(reason) = close.filter(|r| r.close_code().is_some()) {
        body.extend_from_slice(br#","close":{"code":"#);
        push_decimal(&mut body, u64::from(reason.close_code().unwrap_or(1000)));
        body.extend_from_slice(br#","reason":""#);
        body.extend_from_slice(reason.close_reason().as_bytes());
        body.extend_from_slice(b"\"}");
    }
    body.push(b'}');
    body
}

/// The position a welcome or resync message names.
fn position_of(json: &[u8]) -> Option<StreamPos> {
    #[derive(serde::Deserialize)]
    struct Pos<'a> {
        epoch: &'a str,
        seq: u64,
    }
    let p: Pos<'_> = serde_json::from_slice(json).ok()?;
    Some(StreamPos {
        epoch: u64::from_str_radix(p.epoch, 16).ok()?,
        seq: p.seq,
    })
}

fn response_head(len: usize, allow_origin: Option<&str>) -> Vec<u8> {
    let mut h = String::from(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nCache-Control: no-store\r\nConnection: close\r\n",
    );
    if let Some(origin) = allow_origin {
        push_cors(&mut h, origin);
    }
    h.push_str("Content-Length: ");
    h.push_str(itoa::Buffer::new().format(len));
    h.push_str("\r\n\r\n");
    h.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_read_from_welcome_and_resync_messages() {
        let w =
            br#"{"type":"welcome","session":"s","conn":"c","epoch":"00000000000000ab","seq":3}"#;
        assert_eq!(
            position_of(w),
            Some(StreamPos {
                epoch: 0xab,
                seq: 3
            })
        );
        assert_eq!(position_of(b"{}"), None);
    }

    #[test]
    fn the_head_names_the_length_and_the_allowed_origin() {
        let h = String::from_utf8(response_head(12, Some("https://a.example"))).unwrap();
        assert!(h.contains("Content-Length: 12\r\n"));
        assert!(h.contains("Access-Control-Allow-Origin: https://a.example\r\nVary: Origin\r\n"));
        assert!(h.ends_with("\r\n\r\n"));
    }
}
