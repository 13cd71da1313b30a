//! The client-frame loop: bytes read from a socket in, client messages (or the
//! close code that ends the socket) out, with tungstenite doing the parsing.
//!
//! Pure: no socket, no shard, no clock. The socket task feeds it what it read and
//! acts on what comes out; the `client_frames` fuzz target feeds it arbitrary bytes.
//! It never writes to the socket itself: what tungstenite answers (pongs, the reply
//! to a client's close) is collected for the caller's queue.

use std::io::{self, Read, Write};

use tungstenite::protocol::{Role, WebSocket, WebSocketConfig};
use tungstenite::Message;

use crate::ws::close::Disconnect;

/// tungstenite's initial read buffer per socket: none. Clients send little (pongs,
/// refreshes), so the buffer is allocated by the first frame that arrives, sized
/// to it; a socket that never speaks holds no read buffer at all. tungstenite's
/// 128 KiB default would be most of an idle socket's memory.
pub const WS_READ_BUFFER: usize = 0;

/// The byte pipe between the socket and tungstenite: reads come from what the task
/// pushed in, writes (pongs, close replies) are collected for the socket's queue.
#[derive(Default)]
pub struct Pipe {
    input: Vec<u8>,
    pos: usize,
    output: Vec<u8>,
}

impl Read for Pipe {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let avail = &self.input[self.pos..];
        if avail.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = avail.len().min(buf.len());
        buf[..n].copy_from_slice(&avail[..n]);
        self.pos += n;
        if self.pos == self.input.len() {
            self.input.clear();
            self.pos = 0;
        }
        Ok(n)
    }
}

impl Write for Pipe {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.output.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// tungstenite configured for a relay socket: small read buffer, client messages
/// capped at `max_message`, frames too (so a huge declared length fails at once).
pub fn ws_config(max_message: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(WS_READ_BUFFER)
        .write_buffer_size(0)
        .max_write_buffer_size(64 * 1024)
        .max_message_size(Some(max_message))
        .max_frame_size(Some(max_message))
}

/// What the next call to [`ClientReader::read_message`] found.
#[derive(Debug)]
pub enum ClientInput {
    /// A complete client message (data, control, or the client's close).
    Message(Message),
    /// Nothing complete yet: read more from the socket.
    NeedMore,
    /// The client broke the protocol; the socket ends with this reason. Every later
    /// call answers [`ClientInput::Ended`].
    Failed(Disconnect),
    /// The reader failed or the close handshake finished: input is discarded.
    Ended,
}

/// One socket's client-frame state. tungstenite's state is made when the client
/// first sends a byte, so a socket that never speaks does not pay for it.
pub struct ClientReader {
    ws: Option<Box<WebSocket<Pipe>>>,
    max_message: usize,
    /// tungstenite returned an error (its state is undefined from here on) or the
    /// close handshake is done: it is never called again and input is discarded.
    ended: bool,
}

impl ClientReader {
    pub fn new(max_message: usize) -> Self {
        ClientReader {
            ws: None,
            max_message,
            ended: false,
        }
    }

    fn ws(&mut self) -> &mut WebSocket<Pipe> {
        let max = self.max_message;
        self.ws.get_or_insert_with(|| {
            Box::new(WebSocket::from_raw_socket(
                Pipe::default(),
                Role::Server,
                Some(ws_config(max)),
            ))
        })
    }

    /// Appends bytes read from the socket.
    pub fn push(&mut self, bytes: &[u8]) {
        if !self.ended && !bytes.is_empty() {
            self.ws().get_mut().input.extend_from_slice(bytes);
        }
    }

    /// Bytes pushed but not yet consumed by tungstenite.
    pub fn pending_input(&self) -> usize {
        self.ws
            .as_ref()
            .map_or(0, |ws| ws.get_ref().input.len() - ws.get_ref().pos)
    }

    /// The next complete client message, if the bytes so far hold one.
    pub fn read_message(&mut self) -> ClientInput {
        if self.ended {
            return ClientInput::Ended;
        }
        if self.ws.is_none() {
            return ClientInput::NeedMore;
        }
        match self.ws().read() {
            Ok(msg) => ClientInput::Message(msg),
            Err(tungstenite::Error::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                ClientInput::NeedMore
            }
            Err(tungstenite::Error::ConnectionClosed) | Err(tungstenite::Error::AlreadyClosed) => {
                self.end();
                ClientInput::Ended
            }
            Err(e) => {
                self.end();
                ClientInput::Failed(Disconnect::from_ws_error(&e))
            }
        }
    }

    /// Stops parsing and frees what was buffered; the reply tungstenite queued (if
    /// any) is still handed out by [`ClientReader::take_output`].
    fn end(&mut self) {
        self.ended = true;
        if let Some(ws) = self.ws.as_mut() {
            let pipe = ws.get_mut();
            pipe.input = Vec::new();
            pipe.pos = 0;
        }
    }

    /// What tungstenite wrote in answer (pongs, the reply to a client's close), in
    /// order; empty when there is nothing.
    pub fn take_output(&mut self) -> Vec<u8> {
        let Some(ws) = self.ws.as_mut() else {
            return Vec::new();
        };
        if !self.ended {
            let _ = ws.flush();
        }
        std::mem::take(&mut ws.get_mut().output)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn masked(opcode: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![if fin { 0x80 } else { 0 } | opcode];
        assert!(payload.len() < 126);
        f.push(0x80 | payload.len() as u8);
        let key = [1u8, 2, 3, 4];
        f.extend_from_slice(&key);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        f
    }

    #[test]
    fn a_frame_split_over_reads_comes_out_whole() {
        let mut r = ClientReader::new(1024);
        let frame = masked(0x1, true, b"hello");
        for b in &frame[..frame.len() - 1] {
            r.push(std::slice::from_ref(b));
            assert!(matches!(r.read_message(), ClientInput::NeedMore));
        }
        r.push(&frame[frame.len() - 1..]);
        match r.read_message() {
            ClientInput::Message(Message::Text(t)) => assert_eq!(t.as_str(), "hello"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_ping_is_answered_with_its_payload() {
        let mut r = ClientReader::new(1024);
        r.push(&masked(0x9, true, b"abc"));
        assert!(matches!(
            r.read_message(),
            ClientInput::Message(Message::Ping(_))
        ));
        assert!(matches!(r.read_message(), ClientInput::NeedMore));
        assert_eq!(r.take_output(), [0x8a, 3, b'a', b'b', b'c']);
    }

    #[test]
    fn an_unmasked_frame_fails_then_input_is_discarded() {
        let mut r = ClientReader::new(1024);
        r.push(&[0x81, 0x01, b'x']);
        assert!(matches!(
            r.read_message(),
            ClientInput::Failed(Disconnect::ProtocolError)
        ));
        r.push(&masked(0x1, true, b"later"));
        assert!(matches!(r.read_message(), ClientInput::Ended));
        assert_eq!(r.pending_input(), 0);
    }

    #[test]
    fn bytes_after_the_clients_close_are_dropped() {
        let mut r = ClientReader::new(1024);
        let mut input = masked(0x8, true, &[0x03, 0xe8]);
        input.extend_from_slice(b"trailing");
        r.push(&input);
        assert!(matches!(
            r.read_message(),
            ClientInput::Message(Message::Close(_))
        ));
        assert!(matches!(r.read_message(), ClientInput::Ended));
        assert_eq!(r.pending_input(), 0);
        assert_eq!(r.take_output(), [0x88, 2, 0x03, 0xe8]);
    }

    #[test]
    fn a_declared_length_over_the_limit_fails_before_the_payload() {
        let mut r = ClientReader::new(1024);
        // 64-bit length of 1 MiB, mask key, no payload.
        let mut f = vec![0x82, 0xff];
        f.extend_from_slice(&(1u64 << 20).to_be_bytes());
        f.extend_from_slice(&[0, 0, 0, 0]);
        r.push(&f);
        assert!(matches!(
            r.read_message(),
            ClientInput::Failed(Disconnect::MessageTooBig)
        ));
    }
}
