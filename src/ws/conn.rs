//! One upgraded socket ([`WsConn`]): reads client frames through tungstenite,
//! writes the socket's queue, and ends with a [`Disconnect`].
//!
//! It has no task: `shard::parked` calls [`WsConn::turn`] when epoll reports the
//! descriptor or the socket's state asks, and the turn does what can be done
//! without waiting (non-blocking `recv` and `sendmsg` only). A socket therefore
//! costs its record and no per-socket read buffer: reads land in the shard's
//! scratch buffer and only what tungstenite must keep (a partial frame) stays with
//! the socket. Writes go out with one `sendmsg` over every queued frame, so frames
//! queued while the socket waited leave together. Runs only on the shard that owns
//! the socket; it sees the shard only through its `SocketGuard`.

use std::net::TcpStream;
use std::os::fd::AsRawFd;

use tungstenite::Message;

use crate::clock::unix_now;
use crate::outbound::{reset_on_close, shutdown_write, write_queue_now};
use crate::shard::registry::{mono_ms, Outgoing};
use crate::shard::{SocketGuard, CLOSE_GRACE};
use crate::ws::close::Disconnect;
use crate::ws::frame::close_frame;
use crate::ws::reader::{ClientInput, ClientReader};

/// Reads handled in one turn before the socket waits for the next, so one chatty
/// client cannot starve the shard.
const READS_PER_TURN: usize = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Open,
    /// Our close frame (or our reply to the client's) is queued; after it is written
    /// we wait briefly for the peer, then drop the connection.
    Closing(Disconnect),
}

/// What a turn left the socket as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Turn {
    /// Waiting for its descriptor or its state to call for another turn.
    Waiting,
    /// More may be readable now: turn it again after others had theirs.
    Again,
    /// Ended: drop it (its guard unregisters it, then its descriptor closes).
    Done(Disconnect),
}

/// An upgraded WebSocket with no task of its own: `shard::parked` turns it when
/// epoll reports its descriptor or its state asks (a frame queued on an empty
/// queue, a close request, a deadline).
pub struct WsConn {
    /// The socket's shard and state; unregisters the socket when dropped, before
    /// the descriptor below closes.
    pub guard: SocketGuard,
    stream: TcpStream,
    /// The client-frame parser; it holds no buffer until the client sends a byte.
    reader: ClientReader,
    phase: Phase,
    write_shut: bool,
    /// epoll reported something to read that is not read yet.
    readable: bool,
    /// The client's message budget: a token bucket refilled at
    /// `limits.client_message_rate` per second, holding two seconds' worth.
    tokens: f32,
    tokens_at: u64,
}

impl WsConn {
    /// An upgraded socket over `stream` (non-blocking). The 101 and welcome may
    /// already be queued; the first turn writes them.
    pub fn new(guard: SocketGuard, stream: TcpStream) -> WsConn {
        let max_message = guard.ctx().settings().live.limits.max_message_bytes;
        WsConn {
            guard,
            stream,
            reader: ClientReader::new(max_message),
            phase: Phase::Open,
            write_shut: false,
            readable: true,
            tokens: 0.0,
            tokens_at: 0,
        }
    }

    /// epoll reported input (or a hang-up) on the descriptor.
    pub fn mark_readable(&mut self) {
        self.readable = true;
    }

    /// Does whatever the socket can do now: a requested close, reads, writes of its
    /// queue, the close handshake's deadline.
    pub fn turn(&mut self) -> Turn {
        if let Some(reason) = self.guard.state.take_close_request() {
            self.begin_close(reason);
        }
        let again = match self.read_some() {
            Reads::Ended(reason) => return Turn::Done(reason),
            Reads::More => true,
            Reads::Drained => false,
        };
        match write_queue_now(&self.guard.state, self.guard.ctx().stats()) {
            Ok(true) => {
                self.guard.state.release_idle_queue();
                if let Phase::Closing(reason) = self.phase {
                    if !self.write_shut {
                        self.write_shut = true;
                        let _ = shutdown_write(&self.stream);
                        self.guard.ctx().set_close_deadline(
                            &self.guard.state,
                            mono_ms() + CLOSE_GRACE.as_millis() as u64,
                        );
                    }
                    if reason == Disconnect::ClientClosed {
                        // Our reply to the client's close is out: the handshake is done.
                        return Turn::Done(reason);
                    }
                }
            }
            // The kernel took what it could: the next writable edge turns it again.
            Ok(false) => {}
            Err(_) => return Turn::Done(self.ending(Disconnect::IoError)),
        }
        if let Phase::Closing(reason) = self.phase {
            let deadline = self.guard.state.close_deadline.get();
            if deadline != 0 && deadline <= mono_ms() {
                if self.guard.state.queued_bytes() > 0 {
                    // The close frame never got out: reset, so the peer cannot take
                    // the cut-off stream for a clean end.
                    reset_on_close(&self.stream);
                }
                return Turn::Done(reason);
            }
        }
        if again {
            Turn::Again
        } else {
            Turn::Waiting
        }
    }

    /// The reason the socket ends with when its connection does: the close it was
    /// in, else `open_reason`.
    fn ending(&self, open_reason: Disconnect) -> Disconnect {
        match self.phase {
            Phase::Closing(r) => r,
            Phase::Open => open_reason,
        }
    }

    /// Queues a close frame and stops taking events.
    fn begin_close(&mut self, reason: Disconnect) {
        if self.phase != Phase::Open {
            return;
        }
        self.phase = Phase::Closing(reason);
        if reason == Disconnect::SlowConsumer {
            self.guard.state.discard_unsent();
        }
        match reason.close_code() {
            Some(code) => self
                .guard
                .state
                .push_close(close_frame(code, reason.close_reason())),
            None => self.guard.state.push_close(Vec::new()),
        }
        if self.guard.state.close_deadline.get() == 0 {
            // Bounded even if the queue never drains (a peer that stopped reading).
            self.guard.ctx().set_close_deadline(
                &self.guard.state,
                mono_ms() + CLOSE_GRACE.as_millis() as u64,
            );
        }
    }

    /// Reads what the kernel has, up to [`READS_PER_TURN`] chunks, and acts on it.
    fn read_some(&mut self) -> Reads {
        if !self.readable {
            return Reads::Drained;
        }
        let fd = self.stream.as_raw_fd();
        for _ in 0..READS_PER_TURN {
            {
                let mut scratch = self.guard.ctx().scratch();
                // SAFETY: recv into a buffer we hold mutably for the call.
                let n = unsafe {
                    libc::recv(
                        fd,
                        scratch.as_mut_ptr() as *mut libc::c_void,
                        scratch.len(),
                        libc::MSG_DONTWAIT,
                    )
                };
                match n {
                    0 => return Reads::Ended(self.ending(Disconnect::ClientClosed)),
                    n if n > 0 => self.reader.push(&scratch[..n as usize]),
                    _ => {
                        let err = std::io::Error::last_os_error();
                        match err.kind() {
                            std::io::ErrorKind::WouldBlock => {
                                self.readable = false;
                                return Reads::Drained;
                            }
                            std::io::ErrorKind::Interrupted => continue,
                            _ => return Reads::Ended(self.ending(Disconnect::IoError)),
                        }
                    }
                }
            }
            self.guard.state.last_heard.set(mono_ms());
            self.handle_input();
        }
        Reads::More
    }

    /// Acts on every complete client message read so far.
    fn handle_input(&mut self) {
        loop {
            let msg = match self.reader.read_message() {
                ClientInput::Message(msg) => msg,
                ClientInput::NeedMore | ClientInput::Ended => break,
                ClientInput::Failed(reason) => {
                    tracing::debug!(
                        socket = self.guard.state.id,
                        ?reason,
                        "client protocol error"
                    );
                    self.begin_close(reason);
                    break;
                }
            };
            if self.phase == Phase::Open && !msg.is_close() && !self.spend_budget() {
                self.guard.ctx().stats().rate_limited("client_messages");
                self.begin_close(Disconnect::Flood);
            }
            match msg {
                Message::Text(text) if self.echo() => self.echo_back(false, text.as_bytes()),
                Message::Binary(data) if self.echo() => self.echo_back(true, &data),
                Message::Text(text) => {
                    if self.phase == Phase::Open {
                        self.on_client_text(text.as_str());
                    }
                }
                Message::Binary(_) => self.begin_close(Disconnect::Policy),
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
                Message::Close(_) => {
                    // tungstenite queued the close reply; it goes out with the flush.
                    if self.phase == Phase::Open {
                        self.phase = Phase::Closing(Disconnect::ClientClosed);
                        self.guard.state.discard_unsent();
                    }
                }
            }
        }
        self.queue_ws_output();
    }

    /// Moves what tungstenite wrote (pongs, the close reply) onto the socket's
    /// queue, in order with everything queued before it.
    fn queue_ws_output(&mut self) {
        let out = self.reader.take_output();
        if !out.is_empty() {
            if self.guard.state.is_closing() {
                return;
            }
            let single_pong = out.len() >= 2
                && out[0] == crate::shard::registry::PONG_OPCODE_BYTE
                && out.len() == 2 + usize::from(out[1] & 0x7f);
            if matches!(self.phase, Phase::Closing(Disconnect::ClientClosed)) {
                // The close reply is the last frame.
                self.guard.state.push_close(out);
            } else if single_pong {
                // A pong still queued goes out first while the kernel takes it, so
                // only a client that stopped reading has older pongs replaced by
                // the newest (`SocketState::push_pong`). A failed write is the
                // turn's to see when it writes the queue.
                if self.guard.state.queued_bytes() > 0 {
                    let _ = write_queue_now(&self.guard.state, self.guard.ctx().stats());
                }
                self.guard.state.push_pong(out.into_boxed_slice());
            } else {
                self.guard
                    .state
                    .push_control(Outgoing::Owned(out.into_boxed_slice()));
            }
        }
    }

    /// Takes one message from the client's budget; false when it is spent.
    fn spend_budget(&mut self) -> bool {
        let rate = self.guard.ctx().settings().live.limits.client_message_rate;
        if rate == 0 {
            return true;
        }
        let burst = 2.0 * rate as f32;
        let now = mono_ms();
        if self.tokens_at == 0 {
            self.tokens = burst;
        } else {
            let refill = now.saturating_sub(self.tokens_at) as f32 * rate as f32 / 1000.0;
            self.tokens = (self.tokens + refill).min(burst);
        }
        self.tokens_at = now;
        if self.tokens < 1.0 {
            return false;
        }
        self.tokens -= 1.0;
        true
    }

    fn echo(&self) -> bool {
        self.guard.ctx().echo()
    }

    /// Echo mode: the message goes back on the same socket, through the same queue.
    fn echo_back(&mut self, binary: bool, payload: &[u8]) {
        if self.phase != Phase::Open {
            return;
        }
        // A pong owed for a ping that came before this message goes first.
        self.queue_ws_output();
        let frame = crate::ws::frame::data_frame(binary, payload);
        self.guard
            .state
            .push_control(Outgoing::Owned(frame.into_boxed_slice()));
    }

    /// `{"type":"refresh","token":JWT}` extends the socket's life; anything else
    /// closes it with 1008.
    fn on_client_text(&mut self, text: &str) {
        #[derive(serde::Deserialize)]
        struct ClientMsg<'a> {
            #[serde(rename = "type")]
            kind: &'a str,
            token: Option<&'a str>,
        }
        #[cfg(debug_assertions)]
        debug_fault(text);
        let Ok(msg) = serde_json::from_str::<ClientMsg<'_>>(text) else {
            return self.begin_close(Disconnect::Policy);
        };
        match (msg.kind, msg.token) {
            ("refresh", Some(token)) => {
                let settings = self.guard.ctx().settings();
                self.refresh(&settings.verifier, token)
            }
            _ => self.begin_close(Disconnect::Policy),
        }
    }

    /// A refresh for this socket's session extends its life; any other token ends it.
    fn refresh(&mut self, verifier: &crate::auth::JwtVerifier, token: &str) {
        match verifier.verify(token, unix_now()) {
            Ok(claims) if *claims.session == *self.guard.state.session => {
                self.guard
                    .state
                    .expires_at
                    .set(verifier.expires_at(&claims));
                // Tell the client its refresh took: `{"type":"refreshed","exp":N}`.
                let mut payload = Vec::with_capacity(40);
                payload.extend_from_slice(b"{\"type\":\"refreshed\",\"exp\":");
                crate::stream::push_decimal(&mut payload, claims.exp);
                payload.push(b'}');
                let frame = crate::ws::frame::text_frame(&payload);
                self.guard
                    .state
                    .push_control(Outgoing::Owned(frame.into_boxed_slice()));
            }
            Ok(_) => self.begin_close(Disconnect::Policy),
            Err(crate::auth::TokenError::Expired) => self.begin_close(Disconnect::TokenExpired),
            Err(_) => self.begin_close(Disconnect::Policy),
        }
    }
}

/// What a turn's reads found.
enum Reads {
    /// The kernel has nothing more for now.
    Drained,
    /// The turn's share is read; more may wait.
    More,
    /// The connection ended (EOF or an error) with this reason.
    Ended(Disconnect),
}

/// Debug builds only, and only with `RELAY_DEBUG_FAULTS` set: the client message
/// `{"type":"debug-panic"}` makes this socket's turn panic, so tests can see what
/// a client gets when the relay fails (close 1011).
#[cfg(debug_assertions)]
fn debug_fault(text: &str) {
    if text == r#"{"type":"debug-panic"}"# && std::env::var_os("RELAY_DEBUG_FAULTS").is_some() {
        panic!("debug fault hook: a socket panics on request");
    }
}
