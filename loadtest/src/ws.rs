//! The client side of RFC 6455, sans-IO: the upgrade request, the check of the server's answer,
//! the frame header parser, and masked client frames (plus the unchecked frame writer the
//! relay's integration tests use to build malformed ones).
//!
//! Owns: byte layouts only. Sockets and timing live in [`crate::conn`]. Hand-written rather
//! than tungstenite so each socket costs one small buffer and no per-frame allocation: the
//! tool must hold tens of thousands of sockets and read ~10⁵–10⁶ frames/s on one core.

use base64::Engine;
use sha1::{Digest, Sha1};

/// RFC 6455 §1.3: appended to the key before hashing.
const ACCEPT_GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

pub const OP_CONTINUATION: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// Normal closure, sent by the tool when it is done with a socket.
pub const CLOSE_NORMAL: u16 = 1000;
/// The server's "you could not keep up" close code (contract: outbound queue overflowed).
pub const CLOSE_SLOW_CONSUMER: u16 = 4008;

/// How the upgrade went wrong.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HandshakeError {
    /// The server refused the upgrade with this HTTP status (401 bad token, 429 rate limit, 503…).
    #[error("upgrade refused with HTTP {0}")]
    Status(u16),
    /// The response is not HTTP: the target is probably not a relay node.
    #[error("malformed upgrade response")]
    Malformed,
    /// `Sec-WebSocket-Accept` is missing or wrong: a broken server or proxy.
    #[error("bad Sec-WebSocket-Accept")]
    BadAccept,
    /// The response head is larger than any sane server sends.
    #[error("upgrade response head too large")]
    TooLarge,
}

impl HandshakeError {
    /// Short error kind for the report.
    pub fn kind(&self) -> String {
        match self {
            HandshakeError::Status(s) => format!("handshake_http_{s}"),
            HandshakeError::Malformed => "handshake_malformed".into(),
            HandshakeError::BadAccept => "handshake_bad_accept".into(),
            HandshakeError::TooLarge => "handshake_too_large".into(),
        }
    }
}

/// A frame the server sent that breaks the protocol.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    /// Servers must not mask (RFC 6455 §5.1).
    #[error("server frame is masked")]
    Masked,
    /// Reserved bits set without an extension, or an unknown opcode.
    #[error("reserved bits or opcode {0:#x}")]
    Reserved(u8),
    /// Larger than the tool accepts for one frame.
    #[error("frame of {0} bytes is too large")]
    TooLarge(u64),
    /// A control frame that is fragmented or longer than 125 bytes.
    #[error("bad control frame")]
    BadControl,
}

/// Header of one complete frame at the start of a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHead {
    pub fin: bool,
    pub opcode: u8,
    /// Bytes of header before the payload.
    pub header_len: usize,
    pub payload_len: usize,
}

impl FrameHead {
    /// Header plus payload.
    pub fn total_len(&self) -> usize {
        self.header_len + self.payload_len
    }
}

/// Parses the frame at the start of `buf`. `Ok(None)`: need more bytes (the whole frame,
/// payload included, must be buffered before it is returned).
pub fn parse_frame(buf: &[u8], max_payload: usize) -> Result<Option<FrameHead>, FrameError> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let b0 = buf[0];
    let b1 = buf[1];
    let fin = b0 & 0x80 != 0;
    let opcode = b0 & 0x0F;
    if b0 & 0x70 != 0 || !matches!(opcode, 0x0..=0x2 | 0x8..=0xA) {
        return Err(FrameError::Reserved(b0));
    }
    if b1 & 0x80 != 0 {
        return Err(FrameError::Masked);
    }
    let (len, header_len) = match b1 & 0x7F {
        126 => {
            if buf.len() < 4 {
                return Ok(None);
            }
            (u64::from(u16::from_be_bytes([buf[2], buf[3]])), 4)
        }
        127 => {
            if buf.len() < 10 {
                return Ok(None);
            }
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[2..10]);
            (u64::from_be_bytes(b), 10)
        }
        n => (u64::from(n), 2),
    };
    if opcode >= 0x8 && (!fin || len > 125) {
        return Err(FrameError::BadControl);
    }
    if len > max_payload as u64 {
        return Err(FrameError::TooLarge(len));
    }
    let payload_len = len as usize;
    if buf.len() < header_len + payload_len {
        return Ok(None);
    }
    Ok(Some(FrameHead {
        fin,
        opcode,
        header_len,
        payload_len,
    }))
}

/// Bytes a frame with `payload_len` needs but does not yet have in `buf`, when known.
pub fn frame_needs(buf: &[u8]) -> Option<usize> {
    if buf.len() < 2 {
        return None;
    }
    let (len, header) = match buf[1] & 0x7F {
        126 if buf.len() >= 4 => (usize::from(u16::from_be_bytes([buf[2], buf[3]])), 4),
        127 if buf.len() >= 10 => {
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[2..10]);
            (usize::try_from(u64::from_be_bytes(b)).ok()?, 10)
        }
        126 | 127 => return None,
        n => (usize::from(n), 2),
    };
    Some(header + len)
}

/// Appends a masked client frame (FIN set) to `out`.
pub fn encode_client_frame(out: &mut Vec<u8>, opcode: u8, payload: &[u8], mask: [u8; 4]) {
    encode_frame(out, 0x80 | (opcode & 0x0F), payload, Some(mask));
}

/// Appends a frame exactly as asked: `first` is the FIN/RSV/opcode byte, sent as given, and
/// the payload is masked with `mask` when there is one (`None`: unmasked, as a server sends).
/// Nothing is checked, so the relay's hostile-input tests build the frames a well-behaved
/// client never sends with it; the tool itself uses [`encode_client_frame`].
pub fn encode_frame(out: &mut Vec<u8>, first: u8, payload: &[u8], mask: Option<[u8; 4]>) {
    encode_header(out, first, payload.len() as u64, mask);
    match mask {
        Some(mask) => out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3])),
        None => out.extend_from_slice(payload),
    }
}

/// Appends only a frame header that declares `len` payload bytes, in the shortest length
/// form (the 64-bit one above 65,535, written as given, top bit included), then the mask key
/// when there is one.
pub fn encode_header(out: &mut Vec<u8>, first: u8, len: u64, mask: Option<[u8; 4]>) {
    out.push(first);
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    if len < 126 {
        out.push(mask_bit | len as u8);
    } else if len <= u64::from(u16::MAX) {
        out.push(mask_bit | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(mask_bit | 127);
        out.extend_from_slice(&len.to_be_bytes());
    }
    if let Some(mask) = mask {
        out.extend_from_slice(&mask);
    }
}

/// A close frame's payload: code and reason.
pub fn close_payload(code: u16, reason: &str) -> Vec<u8> {
    let mut p = code.to_be_bytes().to_vec();
    p.extend_from_slice(reason.as_bytes());
    p
}

/// The code in a close frame's payload, if any.
pub fn close_code(payload: &[u8]) -> Option<u16> {
    (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]))
}

/// A random-enough `Sec-WebSocket-Key` from 16 bytes.
pub fn make_key(bytes: [u8; 16]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The `Sec-WebSocket-Accept` a server must answer to `key`.
pub fn accept_for(key: &str) -> String {
    let mut h = Sha1::new();
    h.update(key.as_bytes());
    h.update(ACCEPT_GUID);
    base64::engine::general_purpose::STANDARD.encode(h.finalize())
}

/// The upgrade request for `GET {path}` (path includes the query, e.g. `/ws?token=…`).
pub fn upgrade_request(path: &str, host: &str, key: &str) -> Vec<u8> {
    format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nUser-Agent: relay-loadtest\r\n\r\n"
    )
    .into_bytes()
}

/// Largest upgrade response head accepted.
pub const MAX_RESPONSE_HEAD: usize = 16 * 1024;

/// Checks the server's answer to the upgrade. `Ok(Some(n))`: switched, the head is `n` bytes
/// (anything after it is already frame data). `Ok(None)`: need more bytes.
pub fn parse_upgrade_response(
    buf: &[u8],
    expected_accept: &str,
) -> Result<Option<usize>, HandshakeError> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    let n = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() > MAX_RESPONSE_HEAD => {
            return Err(HandshakeError::TooLarge)
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(HandshakeError::Malformed),
    };
    let status = resp.code.ok_or(HandshakeError::Malformed)?;
    if status != 101 {
        return Err(HandshakeError::Status(status));
    }
    let accept = resp
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("sec-websocket-accept"))
        .map(|h| h.value)
        .ok_or(HandshakeError::BadAccept)?;
    if accept != expected_accept.as_bytes() {
        return Err(HandshakeError::BadAccept);
    }
    Ok(Some(n))
}

/// xorshift64*: masks and keys need to vary, not to be secret. Masking guards proxies
/// against attacker-chosen payloads; this tool sends only its own, to loopback or (with
/// `--allow-remote`) to a relay its user runs.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15 | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn mask(&mut self) -> [u8; 4] {
        (self.next_u64() as u32).to_ne_bytes()
    }
    pub fn key_bytes(&mut self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&self.next_u64().to_ne_bytes());
        b[8..].copy_from_slice(&self.next_u64().to_ne_bytes());
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_matches_rfc_example() {
        // RFC 6455 §1.3.
        assert_eq!(
            accept_for("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn upgrade_response_is_checked() {
        let key = "dGhlIHNhbXBsZSBub25jZQ==";
        let accept = accept_for(key);
        let mut ok = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
        )
        .into_bytes();
        ok.extend_from_slice(b"\x81\x02hi");
        let n = parse_upgrade_response(&ok, &accept)
            .expect("ok")
            .expect("complete");
        assert_eq!(&ok[n..], b"\x81\x02hi");
        assert_eq!(parse_upgrade_response(&ok[..20], &accept), Ok(None));
        let refused = b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(
            parse_upgrade_response(refused, &accept),
            Err(HandshakeError::Status(401))
        );
        let wrong = "HTTP/1.1 101 Switching Protocols\r\nSec-WebSocket-Accept: nope\r\n\r\n";
        assert_eq!(
            parse_upgrade_response(wrong.as_bytes(), &accept),
            Err(HandshakeError::BadAccept)
        );
        assert_eq!(HandshakeError::Status(429).kind(), "handshake_http_429");
    }

    #[test]
    fn frames_of_every_length_form_parse() {
        assert_eq!(parse_frame(b"\x81", 1 << 20), Ok(None));
        let small = b"\x81\x03abc";
        let h = parse_frame(small, 1 << 20).expect("ok").expect("complete");
        assert_eq!(
            (h.opcode, h.header_len, h.payload_len, h.fin),
            (OP_TEXT, 2, 3, true)
        );
        assert_eq!(parse_frame(&small[..4], 1 << 20), Ok(None));
        assert_eq!(frame_needs(&small[..4]), Some(5));

        let mut mid = vec![0x81, 126, 0x01, 0x00];
        mid.extend(std::iter::repeat_n(b'x', 256));
        let h = parse_frame(&mid, 1 << 20).expect("ok").expect("complete");
        assert_eq!((h.header_len, h.payload_len), (4, 256));

        let mut big = vec![0x82, 127, 0, 0, 0, 0, 0, 1, 0, 0];
        assert_eq!(frame_needs(&big), Some(10 + 65536));
        big.extend(std::iter::repeat_n(0u8, 65536));
        let h = parse_frame(&big, 1 << 20).expect("ok").expect("complete");
        assert_eq!(
            (h.opcode, h.header_len, h.payload_len),
            (OP_BINARY, 10, 65536)
        );
        assert_eq!(parse_frame(&big, 1000), Err(FrameError::TooLarge(65536)));
    }

    #[test]
    fn protocol_violations_are_errors() {
        assert_eq!(parse_frame(b"\x81\x83abcd", 100), Err(FrameError::Masked));
        assert!(matches!(
            parse_frame(b"\xC1\x00", 100),
            Err(FrameError::Reserved(_))
        ));
        assert!(matches!(
            parse_frame(b"\x83\x00", 100),
            Err(FrameError::Reserved(_))
        ));
        assert_eq!(parse_frame(b"\x09\x00", 100), Err(FrameError::BadControl));
        assert_eq!(
            parse_frame(b"\x89\x7e\x00\x80", 1000),
            Err(FrameError::BadControl)
        );
    }

    #[test]
    fn client_frames_are_masked_and_round_trip() {
        let mask = [1, 2, 3, 4];
        let mut out = Vec::new();
        encode_client_frame(&mut out, OP_CLOSE, &close_payload(1000, "bye"), mask);
        assert_eq!(out[0], 0x88);
        assert_eq!(out[1], 0x80 | 5);
        assert_eq!(&out[2..6], &mask);
        let unmasked: Vec<u8> = out[6..]
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ mask[i & 3])
            .collect();
        assert_eq!(close_code(&unmasked), Some(1000));
        assert_eq!(&unmasked[2..], b"bye");

        let mut long = Vec::new();
        encode_client_frame(&mut long, OP_TEXT, &[b'a'; 300], mask);
        assert_eq!(long[1], 0x80 | 126);
        assert_eq!(u16::from_be_bytes([long[2], long[3]]), 300);
        assert_eq!(long.len(), 4 + 4 + 300);
    }

    #[test]
    fn unchecked_frames_are_written_as_asked() {
        // RSV1 set, no FIN, unmasked: bytes as given.
        let mut out = Vec::new();
        encode_frame(&mut out, 0x41, b"hi", None);
        assert_eq!(out, b"\x41\x02hi");
        // The client encoder is the checked special case of the same writer.
        let (mut a, mut b) = (Vec::new(), Vec::new());
        encode_client_frame(&mut a, OP_TEXT, &[b'x'; 70_000], [9, 8, 7, 6]);
        encode_frame(&mut b, 0x81, &[b'x'; 70_000], Some([9, 8, 7, 6]));
        assert_eq!(a, b);
        assert_eq!(&a[..2], &[0x81, 0x80 | 127]);
        // A header alone may declare what no one could send, top bit included.
        let mut h = Vec::new();
        encode_header(&mut h, 0x81, (1 << 63) | 5, Some([1, 2, 3, 4]));
        assert_eq!(h.len(), 2 + 8 + 4);
        assert_eq!(h[1], 0x80 | 127);
        assert_eq!(
            u64::from_be_bytes(h[2..10].try_into().unwrap()),
            (1 << 63) | 5
        );
        assert_eq!(&h[10..], &[1, 2, 3, 4]);
        let mut mid = Vec::new();
        encode_header(&mut mid, 0x82, 65_535, None);
        assert_eq!(mid, [0x82, 126, 0xFF, 0xFF]);
    }

    #[test]
    fn rng_varies() {
        let mut r = Rng::new(7);
        let a = r.next_u64();
        let b = r.next_u64();
        assert_ne!(a, b);
        assert_eq!(make_key(r.key_bytes()).len(), 24);
    }
}
