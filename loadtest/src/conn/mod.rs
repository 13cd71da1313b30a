//! One subscriber of a session, over the scenario's transport: open (connect, request,
//! welcome), read the session's frames in batches, end. Every kind sees only [`Conn`],
//! so deliveries, latency, loss and order are counted the same way on every transport:
//! each hands the same JSON frames (welcome, events, resync) to the same callback.
//!
//! Layout (each file imports only `outcome` among its siblings; this file imports all):
//! - `outcome`  [`ConnError`], [`ReadOutcome`], [`DrainEnd`]: what every transport reports;
//!   [`Subscribe`]: how a subscriber names itself (relay token or harness session)
//! - `ws`       a WebSocket (`GET /ws`), frames parsed with [`crate::ws`]
//! - `sse`      an event stream (`GET /sse`), blocks parsed with [`crate::sse`]
//! - `poll`     a loop of long-polls (`GET /poll`), answers read with [`crate::poll`]
//!
//! Owns: the choice of transport per subscriber ([`Dial`]) and the shared drain of a
//! slow subscriber. May not know what a kind does with the frames.

mod outcome;
mod poll;
mod sse;
mod ws;

use std::net::IpAddr;
use std::time::Duration;

use tokio::time::Instant;

pub use outcome::{ConnError, DrainEnd, ReadOutcome, Subscribe};
pub use poll::PollConn;
pub use sse::SseConn;
pub use ws::WsConn;

use crate::event::Pos;
use crate::scenario::Transport;
use crate::target::Target;

/// Everything opening one subscriber takes, besides its deadline.
#[derive(Debug, Clone, Copy)]
pub struct Dial<'a> {
    pub transport: Transport,
    pub target: &'a Target,
    /// Source address to bind.
    pub src: Option<IpAddr>,
    /// SO_RCVBUF (slow consumers), streams only.
    pub rcvbuf: Option<u32>,
    /// Who the subscriber is, as the target kind spells it.
    pub sub: Subscribe<'a>,
    /// Resume after this position: `since=` (ws), `Last-Event-ID` (sse), the first
    /// poll's `since=` (poll).
    pub since: Option<Pos>,
    /// Seeds the WebSocket's masks and key.
    pub seed: u64,
    /// Bound on each later poll's connect and request (poll only).
    pub connect_timeout: Duration,
}

/// An open, welcomed subscriber.
pub enum Conn {
    Ws(WsConn),
    Sse(SseConn),
    Poll(PollConn),
}

impl Conn {
    /// Opens a subscriber as `d` says, welcomed within `deadline`. Frames after the
    /// welcome (a replay, a resync) are left for the first [`Conn::read_some`].
    pub async fn open(d: &Dial<'_>, deadline: Instant) -> Result<Conn, ConnError> {
        let token = match (d.transport, d.sub) {
            (Transport::Ws, _) => "",
            (_, Subscribe::Token(t)) => t,
            (t, Subscribe::Session(_)) => return Err(ConnError::NotOnHarness(t)),
        };
        Ok(match d.transport {
            Transport::Ws => Conn::Ws(
                WsConn::open(d.target, d.src, d.rcvbuf, d.sub, d.since, d.seed, deadline).await?,
            ),
            Transport::Sse => {
                Conn::Sse(SseConn::open(d.target, d.src, d.rcvbuf, token, d.since, deadline).await?)
            }
            Transport::Poll => Conn::Poll(
                PollConn::open(d.target, d.src, token, d.since, d.connect_timeout, deadline)
                    .await?,
            ),
        })
    }

    /// The position the welcome announced: the session's last seq when it joined (`None`
    /// on a harness, which sends no welcome).
    pub fn welcome(&self) -> Option<Pos> {
        match self {
            Conn::Ws(c) => c.welcome(),
            Conn::Sse(c) => c.welcome(),
            Conn::Poll(c) => c.welcome(),
        }
    }

    /// Hands every frame that arrives until `deadline` (at least one read's worth) to
    /// `on_text`: the JSON of a welcome, event or resync, whatever the transport.
    pub async fn read_some(
        &mut self,
        deadline: Instant,
        on_text: impl FnMut(&[u8]),
    ) -> Result<ReadOutcome, ConnError> {
        match self {
            Conn::Ws(c) => c.read_some(deadline, on_text).await,
            Conn::Sse(c) => c.read_some(deadline, on_text).await,
            Conn::Poll(c) => c.read_some(deadline, on_text).await,
        }
    }

    /// Ends the subscriber from this side (a WebSocket with a close frame of `code`),
    /// bounded by `wait`.
    pub async fn close(self, code: u16, wait: Duration) {
        match self {
            Conn::Ws(c) => c.close(code, wait).await,
            Conn::Sse(c) => c.close(wait).await,
            Conn::Poll(c) => c.close(wait).await,
        }
    }

    /// Drops the connection with a reset, as when a client's network goes away.
    pub fn abort(self) {
        match self {
            Conn::Ws(c) => c.abort(),
            Conn::Sse(c) => c.abort(),
            Conn::Poll(c) => c.abort(),
        }
    }

    /// For a subscriber that never read: reads and discards the backlog until the server
    /// ends it (its code is returned), EOF, silence for `idle`, or `deadline`.
    pub async fn drain_until_close(&mut self, idle: Duration, deadline: Instant) -> DrainEnd {
        loop {
            let until = (Instant::now() + idle).min(deadline);
            match self.read_some(until, |_| {}).await {
                Ok(ReadOutcome::Data) => continue,
                Ok(ReadOutcome::Closed(code)) => {
                    if let Conn::Ws(c) = self {
                        // Our answer to the close frame.
                        let _ = c.flush_out().await;
                    }
                    return DrainEnd::Closed(code);
                }
                Ok(ReadOutcome::Eof) => return DrainEnd::Eof,
                Ok(ReadOutcome::Idle) => return DrainEnd::StillOpen,
                Err(ConnError::Io(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                    return DrainEnd::Eof
                }
                Err(e) => return DrainEnd::Error(e.kind()),
            }
        }
    }
}
