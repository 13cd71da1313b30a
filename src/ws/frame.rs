//! Server→client frames, encoded once.
//!
//! An event's frame (header and JSON payload) is built in one buffer on the owning
//! shard and shared by `Rc` among every socket of its session: server frames are
//! unmasked, so the bytes are the same for all of them. tungstenite's
//! [`FrameHeader`] writes the header.
//!
//! Pure: no I/O.

use std::io::Write;
use std::time::Instant;

use crate::stream::{push_decimal, push_hex16, ResyncReason, StreamPos};

use tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tungstenite::protocol::frame::{CloseFrame, Frame, FrameHeader};

/// Room kept in front of a payload for the longest unmasked header (2 + 8 bytes).
const HEADER_ROOM: usize = 10;

/// A ping with an empty payload: the same two bytes for every socket.
pub const PING_FRAME: &[u8] = &[0x89, 0x00];

/// A complete frame shared by every socket of a session.
#[derive(Debug)]
pub struct EncodedFrame {
    buf: Vec<u8>,
    start: usize,
    /// When the relay accepted the event: the start of `relay_latency_seconds`.
    pub accepted_at: Instant,
    /// The event's sequence number in its session (0 for frames that are not events).
    pub seq: u64,
    /// The event's epoch (0 for frames that are not events).
    pub epoch: u64,
    /// The same event as an event-stream block, made the first time an SSE
    /// subscriber needs it and shared by all of them (see [`EncodedFrame::sse_bytes`]).
    sse: std::cell::OnceCell<Box<[u8]>>,
}

impl EncodedFrame {
    /// The whole WebSocket frame.
    pub fn bytes(&self) -> &[u8] {
        &self.buf[self.start..]
    }

    /// The JSON the frame carries, without the WebSocket header.
    pub fn json(&self) -> &[u8] {
        &self.buf[HEADER_ROOM..]
    }

    /// The event as a `text/event-stream` block (`id: EPOCH:SEQ`, `event: event`,
    /// the same JSON as `data:`). Encoded once, on first use: a session with no SSE
    /// subscriber never pays for it.
    pub fn sse_bytes(&self) -> &[u8] {
        self.sse.get_or_init(|| {
            let pos = StreamPos {
                epoch: self.epoch,
                seq: self.seq,
            };
            crate::sse::frame::block(Some(pos), "event", self.json()).into_boxed_slice()
        })
    }

    pub fn len(&self) -> usize {
        self.buf.len() - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Builds a text frame in place: the caller writes the payload after the header room.
pub struct FrameBuilder {
    buf: Vec<u8>,
}

impl FrameBuilder {
    pub fn with_capacity(payload: usize) -> Self {
        let mut buf = Vec::with_capacity(HEADER_ROOM + payload);
        buf.resize(HEADER_ROOM, 0);
        FrameBuilder { buf }
    }

    pub fn payload(&mut self) -> &mut Vec<u8> {
        &mut self.buf
    }

    /// Writes the header just before the payload and seals the frame.
    pub fn finish(mut self, accepted_at: Instant) -> EncodedFrame {
        let len = (self.buf.len() - HEADER_ROOM) as u64;
        let header = FrameHeader {
            opcode: OpCode::Data(Data::Text),
            ..FrameHeader::default()
        };
        let hlen = header.len(len);
        let start = HEADER_ROOM - hlen;
        let mut slot = &mut self.buf[start..HEADER_ROOM];
        // Writing into a slice of exactly the header's length cannot fail.
        let _ = header.format(len, &mut slot);
        EncodedFrame {
            buf: self.buf,
            start,
            accepted_at,
            seq: 0,
            epoch: 0,
            sse: std::cell::OnceCell::new(),
        }
    }
}

/// The pieces of an event frame, as raw JSON.
pub struct EventParts<'a> {
    /// The session name (valid session names need no escaping).
    pub session: &'a str,
    /// The event's place in its session's stream.
    pub pos: StreamPos,
    /// The event name's JSON string literal, quotes included.
    pub event: &'a [u8],
    /// The id's JSON string literal, or `None` to use `generated_id`.
    pub id: Option<&'a [u8]>,
    pub generated_id: &'a str,
    /// The data value, byte for byte.
    pub data: &'a [u8],
}

fn event_json_len(parts: &EventParts<'_>) -> usize {
    112 + parts.session.len()
        + parts.event.len()
        + parts.id.map_or(parts.generated_id.len() + 2, <[u8]>::len)
        + parts.data.len()
}

/// Appends `{"type":"event","session":S,"seq":` : the part before the sequence number.
fn write_event_head(p: &mut Vec<u8>, session: &str) {
    p.extend_from_slice(br#"{"type":"event","session":""#);
    p.extend_from_slice(session.as_bytes());
    p.extend_from_slice(br#"","seq":"#);
}

/// Appends `,"epoch":"E"`.
fn write_epoch(p: &mut Vec<u8>, epoch: u64) {
    p.extend_from_slice(br#","epoch":""#);
    push_hex16(p, epoch);
    p.push(b'"');
}

/// Appends `,"event":NAME,"id":ID,"data":DATA}`: the part after the position.
fn write_event_tail(p: &mut Vec<u8>, parts: &EventParts<'_>) {
    p.extend_from_slice(br#","event":"#);
    p.extend_from_slice(parts.event);
    p.extend_from_slice(br#","id":"#);
    match parts.id {
        Some(id) => p.extend_from_slice(id),
        None => {
            p.push(b'"');
            p.extend_from_slice(parts.generated_id.as_bytes());
            p.push(b'"');
        }
    }
    p.extend_from_slice(br#","data":"#);
    p.extend_from_slice(parts.data);
    p.push(b'}');
}

/// `{"type":"event","session":S,"seq":N,"epoch":E,"event":NAME,"id":ID,"data":DATA}`
/// as one frame.
pub fn encode_event(parts: &EventParts<'_>, accepted_at: Instant) -> EncodedFrame {
    let mut b = FrameBuilder::with_capacity(event_json_len(parts));
    let p = b.payload();
    write_event_head(p, parts.session);
    push_decimal(p, parts.pos.seq);
    write_epoch(p, parts.pos.epoch);
    write_event_tail(p, parts);
    let mut f = b.finish(accepted_at);
    f.seq = parts.pos.seq;
    f.epoch = parts.pos.epoch;
    f
}

/// An event on its way through Redis, before Redis gives it a position: `head` is
/// the accepting node's clock (UNIX nanoseconds, 8 bytes big-endian, for the latency
/// histogram) and the JSON up to the sequence number; `tail` the JSON after the
/// epoch. The publish script joins `head`, the number, the epoch and `tail`, so every
/// node receives the same bytes and only adds the WebSocket header.
pub fn remote_parts(parts: &EventParts<'_>, accepted_unix_ns: u64) -> (Vec<u8>, Vec<u8>) {
    let mut head = Vec::with_capacity(48 + parts.session.len());
    head.extend_from_slice(&accepted_unix_ns.to_be_bytes());
    write_event_head(&mut head, parts.session);
    let mut tail = Vec::with_capacity(event_json_len(parts) - parts.session.len());
    write_event_tail(&mut tail, parts);
    (head, tail)
}

/// What [`remote_parts`] become after the publish script: the same joining, for
/// tests and for events replayed from a Redis Stream.
pub fn join_remote(head: &[u8], pos: StreamPos, tail: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(head.len() + tail.len() + 40);
    p.extend_from_slice(head);
    push_decimal(&mut p, pos.seq);
    write_epoch(&mut p, pos.epoch);
    p.extend_from_slice(tail);
    p
}

/// The position written in a remote payload's JSON, read back.
fn remote_position(json: &[u8]) -> Option<StreamPos> {
    let rest = json.strip_prefix(br#"{"type":"event","session":""#)?;
    let quote = rest.iter().position(|&b| b == b'"')?;
    let rest = rest[quote..].strip_prefix(br#"","seq":"#)?;
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    let seq = std::str::from_utf8(&rest[..digits]).ok()?.parse().ok()?;
    let rest = rest[digits..].strip_prefix(br#","epoch":""#)?;
    let hex = rest.get(..16)?;
    let epoch = u64::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?;
    rest[16..]
        .starts_with(b"\"")
        .then_some(StreamPos { epoch, seq })
}

/// The frame for a payload as Redis delivers it, and its position; `None` if the
/// payload is malformed. `now_unix_ns` and `now` are one reading of the two clocks.
pub fn frame_from_remote(
    payload: &[u8],
    now_unix_ns: u64,
    now: Instant,
) -> Option<(EncodedFrame, StreamPos)> {
    let (stamp, json) = payload.split_at_checked(8)?;
    let pos = remote_position(json)?;
    let accepted_ns = u64::from_be_bytes(stamp.try_into().ok()?);
    // Another node's clock may run ahead: never date an event in the future.
    let age = std::time::Duration::from_nanos(now_unix_ns.saturating_sub(accepted_ns));
    let accepted_at = now.checked_sub(age).unwrap_or(now);
    let mut b = FrameBuilder::with_capacity(json.len());
    b.payload().extend_from_slice(json);
    let mut f = b.finish(accepted_at);
    f.seq = pos.seq;
    f.epoch = pos.epoch;
    Some((f, pos))
}

/// `{"type":"resync","session":S,"epoch":E,"seq":N}`: events before this point may
/// have been missed; reload state, and continue from `pos`.
pub fn resync_frame(session: &str, pos: StreamPos, reason: ResyncReason) -> Vec<u8> {
    text_frame(&resync_json(session, pos, reason))
}

/// The resync message's JSON, for any transport:
/// `{"type":"resync","session":S,"epoch":E,"seq":N,"reason":R}`.
pub fn resync_json(session: &str, pos: StreamPos, reason: ResyncReason) -> Vec<u8> {
    format!(
        r#"{{"type":"resync","session":"{session}","epoch":"{:016x}","seq":{},"reason":"{}"}}"#,
        pos.epoch,
        pos.seq,
        reason.metric_reason()
    )
    .into_bytes()
}

/// A text frame carrying `payload`, for one-off frames such as the welcome.
pub fn text_frame(payload: &[u8]) -> Vec<u8> {
    let mut b = FrameBuilder::with_capacity(payload.len());
    b.payload().extend_from_slice(payload);
    let f = b.finish(Instant::now());
    f.bytes().to_vec()
}

/// A whole unmasked data frame (text or binary), for echo mode.
pub fn data_frame(binary: bool, payload: &[u8]) -> Vec<u8> {
    let opcode = if binary { Data::Binary } else { Data::Text };
    let mut out = Vec::with_capacity(payload.len() + 10);
    let _ = Frame::message(payload.to_vec(), OpCode::Data(opcode), true).format(&mut out);
    out
}

/// A close frame with `code` and a short reason.
pub fn close_frame(code: u16, reason: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + reason.len());
    let frame = Frame::close(Some(CloseFrame {
        code: CloseCode::from(code),
        reason: reason.into(),
    }));
    let _ = frame.format(&mut out);
    out
}

/// `{"type":"welcome","session":S,"conn":ID,"epoch":E,"seq":N}`: `N` is the
/// session's last event when the socket joined.
pub fn welcome_frame(session: &str, conn: &str, pos: StreamPos) -> Vec<u8> {
    text_frame(&welcome_json(session, conn, pos))
}

/// The welcome's JSON, for any transport.
pub fn welcome_json(session: &str, conn: &str, pos: StreamPos) -> Vec<u8> {
    let mut payload = Vec::with_capacity(96 + session.len() + conn.len());
    let _ = write!(
        payload,
        r#"{{"type":"welcome","session":"{session}","conn":"{conn}","epoch":"{:016x}","seq":{}}}"#,
        pos.epoch, pos.seq
    );
    payload
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn decode(frame: &[u8]) -> (FrameHeader, Vec<u8>) {
        let mut c = Cursor::new(frame);
        let (h, len) = FrameHeader::parse(&mut c).unwrap().unwrap();
        let start = c.position() as usize;
        assert_eq!(start + len as usize, frame.len(), "length matches");
        (h, frame[start..].to_vec())
    }

    #[test]
    fn event_frame_is_one_unmasked_text_frame() {
        let f = encode_event(
            &EventParts {
                session: "s1",
                pos: StreamPos {
                    epoch: 0xab,
                    seq: 7,
                },
                event: br#""issue.updated""#,
                id: None,
                generated_id: "g-1",
                data: br#"{"a": 1}"#,
            },
            Instant::now(),
        );
        let (h, payload) = decode(f.bytes());
        assert!(h.is_final && h.mask.is_none());
        assert_eq!(h.opcode, OpCode::Data(Data::Text));
        assert_eq!(
            String::from_utf8(payload).unwrap(),
            r#"{"type":"event","session":"s1","seq":7,"epoch":"00000000000000ab","event":"issue.updated","id":"g-1","data":{"a": 1}}"#
        );
    }

    #[test]
    fn header_sizes_cover_all_length_forms() {
        for n in [0usize, 125, 126, 65535, 65536, 200_000] {
            let data = vec![b'1'; n];
            let f = encode_event(
                &EventParts {
                    session: "s",
                    pos: StreamPos { epoch: 1, seq: 1 },
                    event: b"\"e\"",
                    id: Some(b"\"i\""),
                    generated_id: "",
                    data: &data,
                },
                Instant::now(),
            );
            let (_, payload) = decode(f.bytes());
            assert_eq!(
                payload.len(),
                n + br#"{"type":"event","session":"s","seq":1,"epoch":"0000000000000001","event":"e","id":"i","data":}"#.len()
            );
        }
    }

    #[test]
    fn remote_payload_round_trips_to_the_same_frame() {
        let pos = StreamPos {
            epoch: u64::MAX - 3,
            seq: 12345,
        };
        let parts = EventParts {
            session: "s1",
            pos,
            event: b"\"e\"",
            id: Some(b"\"i\""),
            generated_id: "",
            data: b"[1, 2]",
        };
        let now = Instant::now();
        let local = encode_event(&parts, now);
        let (head, tail) = remote_parts(&parts, 1_000);
        let (remote, got) = frame_from_remote(&join_remote(&head, pos, &tail), 2_000, now).unwrap();
        assert_eq!(local.bytes(), remote.bytes());
        assert_eq!((got, remote.seq), (pos, pos.seq));
        assert!(frame_from_remote(b"short", 0, now).is_none());
        let mut bad = join_remote(&head, pos, &tail);
        bad.truncate(40);
        assert!(frame_from_remote(&bad, 0, now).is_none());
    }

    #[test]
    fn epochs_are_sixteen_hex_digits() {
        for n in [0u64, 1, 0xab, u64::MAX, 0x0123_4567_89ab_cdef] {
            let mut p = Vec::new();
            push_hex16(&mut p, n);
            assert_eq!(String::from_utf8(p).unwrap(), format!("{n:016x}"));
        }
    }

    #[test]
    fn close_frame_carries_code() {
        let f = close_frame(4008, "slow");
        assert_eq!(&f[..4], &[0x88, 6, 0x0f, 0xa8]);
    }
}
