//! One long-poll subscriber on tokio: a loop of `GET /poll` requests, one connection each
//! (the node answers with `Connection: close`; TLS for an `https://` node), every one
//! asking `since=` the previous answer's `next`.
//!
//! Owns: the subscriber's position between polls and the poll in flight (its connection
//! and the answer read so far), so a read that reaches its deadline leaves the poll
//! waiting and the next read goes on with it. Answers are read with [`crate::poll`];
//! their frames go to the callback in order (a resync first, then the events), exactly
//! the JSON a WebSocket carries.
//!
//! "Open" is the first poll, without `since`: the node answers at once with the
//! session's position, which is this subscriber's welcome; the next poll is then sent
//! and left waiting, so an open poller is subscribed as an open socket is. A resume
//! opens the same way (to learn the welcome, as a WebSocket's resume does) and then
//! polls from `since`, so what it missed comes as a replay.

use std::net::IpAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::{timeout, timeout_at, Instant};

use super::outcome::{ConnError, ReadOutcome};
use crate::event::Pos;
use crate::poll::{self, PollError};
use crate::stream::{self, Stream};
use crate::target::Target;
use crate::ws::HandshakeError;

/// Read size for an answer; the buffer grows to the answer's length.
const READ_CHUNK: usize = 4 * 1024;

/// A long-poll subscriber between (or in the middle of) its polls.
pub struct PollConn {
    target: Target,
    src: Option<IpAddr>,
    token: Box<str>,
    /// Bound on connecting and sending one poll.
    connect_timeout: Duration,
    /// Where the next poll resumes.
    next: Pos,
    welcome: Pos,
    /// The poll in flight, if any.
    inflight: Option<Stream>,
    /// Its answer so far.
    buf: Vec<u8>,
}

impl PollConn {
    /// Polls without `since` for the session's position (the welcome), then sends the
    /// next poll, from `since` or from the welcome, and leaves it waiting; all within
    /// `deadline`.
    pub async fn open(
        target: &Target,
        src: Option<IpAddr>,
        token: &str,
        since: Option<Pos>,
        connect_timeout: Duration,
        deadline: Instant,
    ) -> Result<PollConn, ConnError> {
        let mut c = PollConn {
            target: target.clone(),
            src,
            token: token.into(),
            connect_timeout,
            next: Pos::default(),
            welcome: Pos::default(),
            inflight: None,
            buf: Vec::new(),
        };
        let first = async {
            c.send(None).await?;
            loop {
                if let Some(w) = c.welcome_answer()? {
                    return Ok(w);
                }
                if !c.read_more().await? {
                    return Err(ConnError::ClosedBeforeWelcome(None));
                }
            }
        };
        let welcome = match timeout_at(deadline, first).await {
            Err(_) => return Err(ConnError::Timeout),
            Ok(r) => r?,
        };
        c.welcome = welcome;
        c.next = since.unwrap_or(welcome);
        // A poller always has a poll waiting on the node: it is subscribed from here on.
        match timeout_at(deadline, c.send(Some(c.next))).await {
            Err(_) => Err(ConnError::Timeout),
            Ok(r) => r.map(|()| c),
        }
    }

    /// The position the first poll answered: the session's last seq when it joined.
    pub fn welcome(&self) -> Option<Pos> {
        Some(self.welcome)
    }

    /// The welcome in the first poll's answer, once it is whole. Events already in it
    /// (published while it was being answered) follow the welcome: the welcome is just
    /// before the first of them, and the next poll asks for them again.
    fn welcome_answer(&self) -> Result<Option<Pos>, ConnError> {
        let Some((status, body)) = poll::response(&self.buf)? else {
            return Ok(None);
        };
        if status != 200 {
            return Err(HandshakeError::Status(status).into());
        }
        let a = poll::parse_answer(&self.buf[body])?;
        if let Some(code) = a.close_code() {
            return Err(ConnError::ClosedBeforeWelcome(Some(code)));
        }
        let first =
            a.events
                .first()
                .and_then(|e| match crate::event::classify(e.get().as_bytes()) {
                    crate::event::ServerFrame::Event(p) => Some(Pos {
                        seq: p.seq.saturating_sub(1),
                        ..p
                    }),
                    _ => None,
                });
        first.or(a.next()).map(Some).ok_or(ConnError::NoWelcome)
    }

    /// Connects and sends one poll (from `since`), bounded by `connect_timeout`.
    async fn send(&mut self, since: Option<Pos>) -> Result<(), ConnError> {
        self.inflight = None;
        self.buf.clear();
        let req = poll::request(&self.target.host, &self.token, since);
        let sent = timeout(self.connect_timeout, async {
            let mut s = stream::dial(&self.target, self.src, None).await?;
            s.send(&req).await?;
            Ok::<_, ConnError>(s)
        })
        .await;
        match sent {
            Err(_) => Err(ConnError::Timeout),
            Ok(r) => {
                self.inflight = Some(r?);
                Ok(())
            }
        }
    }

    /// Reads once more of the answer in flight; `false` at EOF. Cancel-safe: a read cut
    /// by a deadline loses nothing.
    async fn read_more(&mut self) -> Result<bool, ConnError> {
        let Some(s) = self.inflight.as_mut() else {
            return Ok(false);
        };
        // `read_buf` only grows `buf` by what a completed read brought: cancel-safe.
        self.buf.reserve(READ_CHUNK);
        Ok(s.read_buf(&mut self.buf).await? > 0)
    }

    /// Sends a poll if none is in flight, then reads its answer until `deadline`. A whole
    /// answer hands its resync and events to `on_text`, moves `next` on and ends the
    /// poll (`Data`, or `Closed` when it ends the subscription); at the deadline the poll
    /// stays in flight (`Idle`).
    pub async fn read_some(
        &mut self,
        deadline: Instant,
        mut on_text: impl FnMut(&[u8]),
    ) -> Result<ReadOutcome, ConnError> {
        if self.inflight.is_none() {
            self.send(Some(self.next)).await?;
        }
        loop {
            if let Some((status, body)) = poll::response(&self.buf)? {
                self.inflight = None;
                if status != 200 {
                    return Err(PollError::Status(status).into());
                }
                let a = poll::parse_answer(&self.buf[body])?;
                if let Some(r) = a.resync {
                    on_text(r.get().as_bytes());
                }
                for e in &a.events {
                    on_text(e.get().as_bytes());
                }
                if let Some(n) = a.next() {
                    self.next = n;
                }
                return Ok(match a.close_code() {
                    Some(code) => ReadOutcome::Closed(Some(code)),
                    None => ReadOutcome::Data,
                });
            }
            match timeout_at(deadline, self.read_more()).await {
                Err(_) => return Ok(ReadOutcome::Idle),
                Ok(Ok(true)) => {}
                Ok(Ok(false)) => {
                    self.inflight = None;
                    return Ok(ReadOutcome::Eof);
                }
                Ok(Err(e)) => {
                    self.inflight = None;
                    return Err(e);
                }
            }
        }
    }

    /// Ends the poll in flight, if any (FIN, bounded by `wait`).
    pub async fn close(mut self, wait: Duration) {
        if let Some(mut s) = self.inflight.take() {
            let _ = timeout(wait, s.shutdown()).await;
        }
    }

    /// Drops the poll in flight with a reset, as when a client's network goes away.
    pub fn abort(mut self) {
        if let Some(s) = self.inflight.take() {
            crate::net::reset_on_close(s.tcp());
        }
    }
}
