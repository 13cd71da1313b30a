//! One client WebSocket on a [`Stream`] (TCP, or TLS over it for `wss://`): open (connect,
//! upgrade, welcome), read frames in batches, answer pings, close.
//!
//! Owns: the socket's read buffer. Frames are parsed in place with [`crate::ws`]; text
//! payloads are handed to a callback without copying.

use std::net::IpAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::{timeout_at, Instant};

use super::outcome::{ConnError, ReadOutcome, Subscribe};
use crate::event::{self, Pos, ServerFrame};
use crate::stream::{self, Stream};
use crate::target::Target;
use crate::ws::{self, FrameError, HandshakeError, Rng};

/// Initial read buffer; grows for larger frames. Small so 10k idle sockets stay cheap.
const READ_BUF: usize = 4 * 1024;
/// Largest server frame accepted (the relay sends events up to its 1 MiB body limit).
const MAX_FRAME: usize = 16 << 20;

/// An open, welcomed WebSocket.
pub struct WsConn {
    stream: Stream,
    buf: Vec<u8>,
    /// Unprocessed bytes are `buf[start..end]`.
    start: usize,
    end: usize,
    /// Reassembly of a fragmented text message (rare: the relay sends whole frames).
    frag: Vec<u8>,
    out: Vec<u8>,
    rng: Rng,
    /// The position the welcome frame announced (`None` from a relay that sends none).
    welcome: Option<Pos>,
}

impl WsConn {
    /// Connect from `src` (TLS handshake included for a TLS target), upgrade with `?token=` (and `&since=EPOCH:SEQ` to resume
    /// after `since`), wait for the welcome frame. A harness ([`Subscribe::Session`])
    /// upgrades with `?session=S` and is open at the `101`. Frames after the welcome (a replay, a
    /// resync) stay buffered for the first [`WsConn::read_some`].
    pub async fn open(
        target: &Target,
        src: Option<IpAddr>,
        rcvbuf: Option<u32>,
        sub: Subscribe<'_>,
        since: Option<Pos>,
        seed: u64,
        deadline: Instant,
    ) -> Result<WsConn, ConnError> {
        let stream = match timeout_at(deadline, stream::dial(target, src, rcvbuf)).await {
            Err(_) => return Err(ConnError::Timeout),
            Ok(r) => r?,
        };
        let mut rng = Rng::new(seed);
        let key = ws::make_key(rng.key_bytes());
        let accept = ws::accept_for(&key);
        let mut c = WsConn {
            stream,
            buf: vec![0; READ_BUF],
            start: 0,
            end: 0,
            frag: Vec::new(),
            out: Vec::new(),
            rng,
            welcome: None,
        };
        let path = match (sub, since) {
            (Subscribe::Token(token), Some(p)) => format!("/ws?token={token}&since={}", p.since()),
            (Subscribe::Token(token), None) => format!("/ws?token={token}"),
            (Subscribe::Session(session), _) => format!("/ws?session={session}"),
        };
        let req = ws::upgrade_request(&path, &target.host, &key);
        match timeout_at(deadline, c.stream.send(&req)).await {
            Err(_) => return Err(ConnError::Timeout),
            Ok(r) => r?,
        }
        // Read the response head.
        loop {
            if let Some(n) = ws::parse_upgrade_response(&c.buf[..c.end], &accept)? {
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
                return Err(ConnError::Handshake(HandshakeError::Malformed));
            }
            c.end += n;
        }
        if matches!(sub, Subscribe::Session(_)) {
            // A harness sends no welcome: the socket has joined once the 101 arrived.
            return Ok(c);
        }
        // The first text frame must be the welcome; reading stops right after it.
        let mut welcome = None;
        while welcome.is_none() {
            let mut first = None;
            match c
                .read_limited(deadline, 1, |payload| {
                    first = Some((
                        memchr::memmem::find(payload, b"\"welcome\"").is_some(),
                        event::classify(payload),
                    ));
                })
                .await?
            {
                ReadOutcome::Data => welcome = first,
                ReadOutcome::Idle => return Err(ConnError::Timeout),
                ReadOutcome::Closed(code) => return Err(ConnError::ClosedBeforeWelcome(code)),
                ReadOutcome::Eof => return Err(ConnError::ClosedBeforeWelcome(None)),
            }
        }
        match welcome {
            Some((true, frame)) => {
                if let ServerFrame::Welcome(p) = frame {
                    c.welcome = Some(p);
                }
                Ok(c)
            }
            _ => Err(ConnError::NoWelcome),
        }
    }

    /// The position the welcome announced: the session's last seq when the socket joined.
    pub fn welcome(&self) -> Option<Pos> {
        self.welcome
    }

    /// Processes frames already buffered, then (if none were complete) reads once, waiting
    /// until `deadline`. Text payloads go to `on_text`; pings are answered; a close frame is
    /// answered and reported.
    pub async fn read_some(
        &mut self,
        deadline: Instant,
        on_text: impl FnMut(&[u8]),
    ) -> Result<ReadOutcome, ConnError> {
        self.read_limited(deadline, usize::MAX, on_text).await
    }

    /// [`WsConn::read_some`], handing over at most `limit` text messages; later frames
    /// stay buffered.
    async fn read_limited(
        &mut self,
        deadline: Instant,
        limit: usize,
        mut on_text: impl FnMut(&[u8]),
    ) -> Result<ReadOutcome, ConnError> {
        let (progressed, closed) = self.drain_frames(&mut on_text, limit)?;
        if let Some(code) = closed {
            return Ok(ReadOutcome::Closed(code));
        }
        if progressed {
            self.flush_out().await?;
            return Ok(ReadOutcome::Data);
        }
        self.make_room()?;
        let n = match timeout_at(deadline, self.stream.read(&mut self.buf[self.end..])).await {
            Err(_) => return Ok(ReadOutcome::Idle),
            Ok(r) => r?,
        };
        if n == 0 {
            return Ok(ReadOutcome::Eof);
        }
        self.end += n;
        let (_, closed) = self.drain_frames(&mut on_text, limit)?;
        self.flush_out().await?;
        Ok(match closed {
            Some(code) => ReadOutcome::Closed(code),
            None => ReadOutcome::Data,
        })
    }

    /// Ensures free space after `end`, compacting or growing for the frame in progress.
    fn make_room(&mut self) -> Result<(), ConnError> {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        let need = ws::frame_needs(&self.buf[self.start..self.end]).unwrap_or(0);
        if need > MAX_FRAME + 14 {
            return Err(ConnError::Frame(FrameError::TooLarge(need as u64)));
        }
        if self.start > 0 && (self.end == self.buf.len() || self.start + need > self.buf.len()) {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.end == self.buf.len() || need > self.buf.len() {
            let size = (self.buf.len() * 2).max(need);
            self.buf.resize(size, 0);
        }
        Ok(())
    }

    /// Parses every complete frame in the buffer, stopping after `limit` text messages.
    /// Returns (any frame processed, close code if a close frame came).
    #[allow(clippy::type_complexity)]
    fn drain_frames(
        &mut self,
        on_text: &mut impl FnMut(&[u8]),
        limit: usize,
    ) -> Result<(bool, Option<Option<u16>>), ConnError> {
        let mut progressed = false;
        let mut texts = 0usize;
        while texts < limit {
            let Some(h) = ws::parse_frame(&self.buf[self.start..self.end], MAX_FRAME)? else {
                break;
            };
            progressed = true;
            let p0 = self.start + h.header_len;
            let p1 = p0 + h.payload_len;
            self.start += h.total_len();
            match h.opcode {
                ws::OP_TEXT | ws::OP_BINARY if h.fin && self.frag.is_empty() => {
                    texts += 1;
                    on_text(&self.buf[p0..p1]);
                }
                ws::OP_TEXT | ws::OP_BINARY => {
                    self.frag.clear();
                    self.frag.extend_from_slice(&self.buf[p0..p1]);
                }
                ws::OP_CONTINUATION => {
                    if self.frag.len() + h.payload_len > MAX_FRAME {
                        return Err(ConnError::Frame(FrameError::TooLarge(
                            (self.frag.len() + h.payload_len) as u64,
                        )));
                    }
                    self.frag.extend_from_slice(&self.buf[p0..p1]);
                    if h.fin {
                        texts += 1;
                        on_text(&self.frag);
                        self.frag.clear();
                    }
                }
                ws::OP_PING => {
                    let mask = self.rng.mask();
                    let payload = self.buf[p0..p1].to_vec();
                    ws::encode_client_frame(&mut self.out, ws::OP_PONG, &payload, mask);
                }
                ws::OP_CLOSE => {
                    let code = ws::close_code(&self.buf[p0..p1]);
                    let mask = self.rng.mask();
                    let reply = code.map(|c| c.to_be_bytes().to_vec()).unwrap_or_default();
                    ws::encode_client_frame(&mut self.out, ws::OP_CLOSE, &reply, mask);
                    return Ok((true, Some(code)));
                }
                _ => {} // pong: nothing to do
            }
        }
        Ok((progressed, None))
    }

    /// Writes what is queued (the answer to pings, or to the server's close frame).
    pub(super) async fn flush_out(&mut self) -> Result<(), ConnError> {
        if !self.out.is_empty() {
            self.stream.send(&self.out).await?;
            self.out.clear();
        }
        Ok(())
    }

    /// Sends a close frame (best effort, bounded by `wait`) and drops the socket. Any queued
    /// reply to a server close is flushed first.
    pub async fn close(mut self, code: u16, wait: Duration) {
        if self.out.is_empty() {
            let mask = self.rng.mask();
            ws::encode_client_frame(
                &mut self.out,
                ws::OP_CLOSE,
                &ws::close_payload(code, "done"),
                mask,
            );
        }
        let _ = tokio::time::timeout(wait, async {
            let _ = self.stream.write_all(&self.out).await;
            let _ = self.stream.shutdown().await;
        })
        .await;
    }

    /// Drops the socket without a close frame: SO_LINGER 0 makes the kernel answer with
    /// a reset, as when a client's network goes away.
    pub fn abort(self) {
        crate::net::reset_on_close(self.stream.tcp());
        drop(self.stream);
    }
}
