//! Raw WebSocket clients for the hostile-input and slow-consumer tests: hand-built upgrade
//! requests, [`RawSocket`] (upgrades, then writes whatever frames or bytes a test asks for
//! and reads the server's frames itself), and sockets with a tiny receive buffer.
//!
//! Owns the raw socket's reads and writes. Frame bytes are neither built nor parsed here:
//! both come from `loadtest::ws`, the sans-IO codec the load generator uses.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::FromRawFd;
use std::time::{Duration, Instant};

use loadtest::ws as frames;

use super::http::{http_request, HttpResponse};
use super::token::token;
use super::wait::PROMPT;

/// A fixed, valid `Sec-WebSocket-Key` (base64 of 16 bytes).
pub const WS_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

/// The mask key on every frame a raw socket sends (any key will do; a fixed one keeps the
/// bytes on the wire the same from run to run).
const MASK: [u8; 4] = [0x12, 0x34, 0x56, 0x78];

/// Largest server frame a raw socket accepts: far above anything the relay sends, and small
/// enough that a garbage length cannot overflow the parser's arithmetic.
const MAX_SERVER_FRAME: usize = 1 << 30;

/// A raw upgrade request for `/ws` with a valid key and version plus extra header lines.
pub fn upgrade_request(path: &str, extra: &[&str]) -> String {
    let mut s = format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {WS_KEY}\r\nSec-WebSocket-Version: 13\r\n"
    );
    for h in extra {
        s.push_str(h);
        s.push_str("\r\n");
    }
    s.push_str("\r\n");
    s
}

/// Sends a raw upgrade request on a fresh connection and reads the answer's head (and body
/// unless it is a 101).
pub fn raw_upgrade_response(addr: SocketAddr, req: &str) -> HttpResponse {
    http_request(addr, req)
}

/// A client that completes the upgrade and then neither reads nor writes unless told to.
/// Its receive buffer is tiny so the server's queue for it fills quickly.
pub struct RawSocket {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl RawSocket {
    /// Connects with a small `SO_RCVBUF`, upgrades with a token for `session`, reads
    /// nothing beyond the 101 head.
    pub fn upgrade(addr: SocketAddr, session: &str) -> RawSocket {
        let stream = connect_small_rcvbuf(addr, 4096);
        stream.set_read_timeout(Some(PROMPT)).unwrap();
        stream.set_write_timeout(Some(PROMPT)).unwrap();
        let mut s = RawSocket {
            stream,
            buf: Vec::new(),
        };
        let req = upgrade_request(&format!("/ws?token={}", token(session)), &[]);
        s.stream.write_all(req.as_bytes()).expect("send upgrade");
        // Read byte by byte so nothing after the head is consumed.
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            let n = s.stream.read(&mut b).expect("read upgrade response");
            assert!(n == 1, "connection closed during upgrade: {head:?}");
            head.push(b[0]);
        }
        let head = String::from_utf8_lossy(&head);
        assert!(
            head.starts_with("HTTP/1.1 101"),
            "upgrade refused: {head:?}"
        );
        s
    }

    /// Sends one frame: `first` is the first header byte (FIN, RSV, opcode), sent as given;
    /// masked as a client must unless `masked` is false.
    pub fn send_frame(&mut self, first: u8, payload: &[u8], masked: bool) {
        let mut f = Vec::with_capacity(14 + payload.len());
        frames::encode_frame(&mut f, first, payload, masked.then_some(MASK));
        self.stream.write_all(&f).expect("send frame");
    }

    /// Writes bytes as they are: a hand-built frame, or only part of one.
    pub fn send_bytes(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("send raw bytes");
    }

    /// Reads server frames until a close frame; returns its code. `Err` when the
    /// connection ends without one (EOF or reset) or `timeout` passes.
    pub fn read_until_close(&mut self, timeout: Duration) -> Result<Option<u16>, io::Error> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let (opcode, payload) = self.read_frame(left)?;
            if opcode == frames::OP_CLOSE {
                return Ok(frames::close_code(&payload));
            }
        }
    }

    /// The next whole server frame as (opcode, payload); `Err` on EOF, reset or timeout,
    /// and `InvalidData` when the server's frame breaks RFC 6455 (masked, reserved bits, a
    /// bad control frame), as `loadtest::ws::parse_frame` judges it.
    pub fn read_frame(&mut self, timeout: Duration) -> io::Result<(u8, Vec<u8>)> {
        let deadline = Instant::now() + timeout;
        loop {
            match frames::parse_frame(&self.buf, MAX_SERVER_FRAME) {
                Ok(Some(head)) => {
                    let payload = self.buf[head.header_len..head.total_len()].to_vec();
                    self.buf.drain(..head.total_len());
                    return Ok((head.opcode, payload));
                }
                Ok(None) => {}
                Err(e) => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("server frame breaks RFC 6455: {e}"),
                    ))
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::ErrorKind::TimedOut.into());
            }
            self.stream.set_read_timeout(Some(left)).unwrap();
            let mut chunk = vec![0u8; 65536];
            let n = self.stream.read(&mut chunk)?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// True when the server closes TCP (EOF or reset) within `timeout`; bytes that arrive
    /// first are discarded. The client does not answer the server's close frame, so this
    /// also checks that the server does not wait for that answer forever.
    pub fn closed_within(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut chunk = vec![0u8; 65536];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            self.stream.set_read_timeout(Some(left)).unwrap();
            match self.stream.read(&mut chunk) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e)
                    if e.kind() == io::ErrorKind::WouldBlock
                        || e.kind() == io::ErrorKind::TimedOut =>
                {
                    return false
                }
                Err(_) => return true,
            }
        }
    }

    /// True when, for all of `dur`, the server sends nothing and keeps TCP open.
    pub fn quiet_for(&mut self, dur: Duration) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        self.stream.set_read_timeout(Some(dur)).unwrap();
        let mut b = [0u8; 1];
        match self.stream.read(&mut b) {
            Ok(0) => false,
            Ok(_) => {
                self.buf.push(b[0]);
                false
            }
            Err(e) => e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::TimedOut,
        }
    }
}

/// A TCP connection whose receive buffer is set before connecting (so the window stays small).
pub fn connect_small_rcvbuf(addr: SocketAddr, rcvbuf: i32) -> TcpStream {
    let SocketAddr::V4(v4) = addr else {
        panic!("tests use IPv4 loopback")
    };
    // SAFETY: straightforward socket/setsockopt/connect calls on a descriptor we own; the
    // descriptor is handed to TcpStream, which closes it.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0, "socket() failed");
        let size: libc::c_int = rcvbuf;
        let rc = libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            &size as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
        assert_eq!(rc, 0, "setsockopt(SO_RCVBUF) failed");
        let sa = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: v4.port().to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes(v4.ip().octets()),
            },
            sin_zero: [0; 8],
        };
        let rc = libc::connect(
            fd,
            &sa as *const libc::sockaddr_in as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        );
        assert_eq!(rc, 0, "connect() failed: {}", io::Error::last_os_error());
        TcpStream::from_raw_fd(fd)
    }
}

/// A masked client frame header (FIN/RSV/opcode byte, length, mask key) that declares
/// `len` payload bytes, none of which are sent. Lengths past 65,535 take the 64-bit form,
/// written as given (top bit included).
pub fn masked_header_declaring(first: u8, len: u64) -> Vec<u8> {
    let mut f = Vec::with_capacity(14);
    frames::encode_header(&mut f, first, len, Some(MASK));
    f
}
