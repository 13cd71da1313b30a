//! One client event stream (`GET /sse`) on a [`Stream`] (TCP, or TLS over it for
//! `https://`): open (connect, request, `200 text/event-stream`, welcome), read blocks in
//! batches, end.
//!
//! Owns: the stream's read buffer. Blocks are parsed in place with [`crate::sse`]; a
//! block's JSON (its `data:`) is handed to a callback without copying unless it spans
//! several `data:` lines. An `event: close` block ends the stream with its code, as a
//! WebSocket close frame would; keep-alive comments and `retry:` are read past.

use std::net::IpAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::{timeout_at, Instant};

use super::outcome::{ConnError, ReadOutcome};
use crate::event::{self, Pos, ServerFrame};
use crate::sse;
use crate::stream::{self, Stream};
use crate::target::Target;

/// Initial read buffer; grows for larger blocks. Small so 10k idle streams stay cheap.
const READ_BUF: usize = 4 * 1024;
/// Largest block accepted (the relay sends events up to its 1 MiB body limit).
const MAX_BLOCK: usize = 16 << 20;

/// An open, welcomed event stream.
pub struct SseConn {
    stream: Stream,
    buf: Vec<u8>,
    /// Unprocessed bytes are `buf[start..end]`.
    start: usize,
    end: usize,
    /// A payload of several `data:` lines, joined (rare: the relay's frames are one line).
    scratch: Vec<u8>,
    welcome: Option<Pos>,
}

impl SseConn {
    /// Connect from `src` (TLS handshake included for a TLS target), `GET /sse?token=` (with `Last-Event-ID` to resume after
    /// `since`), wait for the welcome block. Blocks after it (a replay, a resync) stay
    /// buffered for the first [`SseConn::read_some`].
    pub async fn open(
        target: &Target,
        src: Option<IpAddr>,
        rcvbuf: Option<u32>,
        token: &str,
        since: Option<Pos>,
        deadline: Instant,
    ) -> Result<SseConn, ConnError> {
        let stream = match timeout_at(deadline, stream::dial(target, src, rcvbuf)).await {
            Err(_) => return Err(ConnError::Timeout),
            Ok(r) => r?,
        };
        let mut c = SseConn {
            stream,
            buf: vec![0; READ_BUF],
            start: 0,
            end: 0,
            scratch: Vec::new(),
            welcome: None,
        };
        let req = sse::request(&format!("/sse?token={token}"), &target.host, since);
        match timeout_at(deadline, c.stream.send(&req)).await {
            Err(_) => return Err(ConnError::Timeout),
            Ok(r) => r?,
        }
        loop {
            if let Some(n) = sse::parse_head(&c.buf[..c.end])? {
                c.start = n;
                break;
            }
            if c.end == c.buf.len() {
                c.buf.resize(c.buf.len() * 2, 0);
            }
            let n = match timeout_at(deadline, c.stream.read(&mut c.buf[c.end..])).await {
                Err(_) => return Err(ConnError::Timeout),
                Ok(r) => r?,
            };
            if n == 0 {
                return Err(ConnError::Handshake(crate::ws::HandshakeError::Malformed));
            }
            c.end += n;
        }
        // The first block with data must be the welcome; reading stops right after it.
        let mut first = None;
        while first.is_none() {
            match c
                .read_limited(deadline, 1, |json| first = Some(event::classify(json)))
                .await?
            {
                ReadOutcome::Data => {}
                ReadOutcome::Idle => return Err(ConnError::Timeout),
                ReadOutcome::Closed(code) => return Err(ConnError::ClosedBeforeWelcome(code)),
                ReadOutcome::Eof => return Err(ConnError::ClosedBeforeWelcome(None)),
            }
        }
        match first {
            Some(ServerFrame::Welcome(p)) => {
                c.welcome = Some(p);
                Ok(c)
            }
            _ => Err(ConnError::NoWelcome),
        }
    }

    /// The position the welcome announced: the session's last seq when the stream joined.
    pub fn welcome(&self) -> Option<Pos> {
        self.welcome
    }

    /// Processes blocks already buffered, then (if none were complete) reads once, waiting
    /// until `deadline`. Each block's JSON goes to `on_text`; `event: close` is reported.
    pub async fn read_some(
        &mut self,
        deadline: Instant,
        on_text: impl FnMut(&[u8]),
    ) -> Result<ReadOutcome, ConnError> {
        self.read_limited(deadline, usize::MAX, on_text).await
    }

    /// [`SseConn::read_some`], handing over at most `limit` payloads; later blocks stay
    /// buffered.
    async fn read_limited(
        &mut self,
        deadline: Instant,
        limit: usize,
        mut on_text: impl FnMut(&[u8]),
    ) -> Result<ReadOutcome, ConnError> {
        let (progressed, closed) = self.drain_blocks(&mut on_text, limit)?;
        if let Some(code) = closed {
            return Ok(ReadOutcome::Closed(code));
        }
        if progressed {
            return Ok(ReadOutcome::Data);
        }
        self.make_room();
        let n = match timeout_at(deadline, self.stream.read(&mut self.buf[self.end..])).await {
            Err(_) => return Ok(ReadOutcome::Idle),
            Ok(r) => r?,
        };
        if n == 0 {
            return Ok(ReadOutcome::Eof);
        }
        self.end += n;
        let (_, closed) = self.drain_blocks(&mut on_text, limit)?;
        Ok(match closed {
            Some(code) => ReadOutcome::Closed(code),
            None => ReadOutcome::Data,
        })
    }

    /// Ensures free space after `end`: moves the block in progress to the front, or grows
    /// the buffer when that block fills it (the parser bounds it at [`MAX_BLOCK`]).
    fn make_room(&mut self) {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        if self.end < self.buf.len() {
            return;
        }
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        } else {
            self.buf.resize(self.buf.len() * 2, 0);
        }
    }

    /// Parses every complete block in the buffer, stopping after `limit` payloads.
    /// Returns (any block processed, close code if an `event: close` came).
    #[allow(clippy::type_complexity)]
    fn drain_blocks(
        &mut self,
        on_text: &mut impl FnMut(&[u8]),
        limit: usize,
    ) -> Result<(bool, Option<Option<u16>>), ConnError> {
        let mut progressed = false;
        let mut texts = 0usize;
        while texts < limit {
            let Some(b) = sse::next_block(&self.buf[self.start..self.end], MAX_BLOCK)? else {
                break;
            };
            progressed = true;
            let block = &self.buf[self.start..self.start + b.len];
            self.start += b.len;
            let Some(json) = b.data(block, &mut self.scratch) else {
                continue; // retry:, a keep-alive comment
            };
            if b.event(block) == b"close" {
                return Ok((true, Some(sse::close_code(json))));
            }
            texts += 1;
            on_text(json);
        }
        Ok((progressed, None))
    }

    /// Ends the stream from this side: a reader has nothing to say but FIN (bounded by
    /// `wait`).
    pub async fn close(mut self, wait: Duration) {
        let _ = tokio::time::timeout(wait, self.stream.shutdown()).await;
    }

    /// Drops the stream with a reset, as when a client's network goes away.
    pub fn abort(self) {
        crate::net::reset_on_close(self.stream.tcp());
        drop(self.stream);
    }
}
