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
}

impl EncodedFrame {
    pub fn bytes(&self) -> &[u8] {
        &self.buf[self.start..]
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
        }
    }
}

/// The pieces of an event frame, as raw JSON.
pub struct EventParts<'a> {
    /// The session name (valid session names need no escaping).
    pub session: &'a str,
    /// The event name's JSON string literal, quotes included.
    pub event: &'a [u8],
    /// The id's JSON string literal, or `None` to use `generated_id`.
    pub id: Option<&'a [u8]>,
    pub generated_id: &'a str,
    /// The data value, byte for byte.
    pub data: &'a [u8],
}

fn event_json_len(parts: &EventParts<'_>) -> usize {
    64 + parts.session.len()
        + parts.event.len()
        + parts.id.map_or(parts.generated_id.len() + 2, <[u8]>::len)
        + parts.data.len()
}

/// Appends `{"type":"event","session":S,"event":NAME,"id":ID,"data":DATA}`.
fn write_event_json(p: &mut Vec<u8>, parts: &EventParts<'_>) {
    p.extend_from_slice(br#"{"type":"event","session":""#);
    p.extend_from_slice(parts.session.as_bytes());
    p.extend_from_slice(br#"","event":"#);
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

/// `{"type":"event","session":S,"event":NAME,"id":ID,"data":DATA}` as one frame.
pub fn encode_event(parts: &EventParts<'_>, accepted_at: Instant) -> EncodedFrame {
    let mut b = FrameBuilder::with_capacity(event_json_len(parts));
    write_event_json(b.payload(), parts);
    b.finish(accepted_at)
}

/// An event as it travels through Redis: the accepting node's clock (UNIX
/// nanoseconds, 8 bytes big-endian, for the latency histogram) and the frame's
/// JSON payload, so receiving nodes only add the WebSocket header.
pub fn remote_payload(parts: &EventParts<'_>, accepted_unix_ns: u64) -> Vec<u8> {
    let mut p = Vec::with_capacity(8 + event_json_len(parts));
    p.extend_from_slice(&accepted_unix_ns.to_be_bytes());
    write_event_json(&mut p, parts);
    p
}

/// The frame for a payload made by [`remote_payload`]; `None` if it is too short.
/// `now_unix_ns` and `now` are one reading of the two clocks.
pub fn frame_from_remote(payload: &[u8], now_unix_ns: u64, now: Instant) -> Option<EncodedFrame> {
    let (stamp, json) = payload.split_at_checked(8)?;
    let accepted_ns = u64::from_be_bytes(stamp.try_into().ok()?);
    // Another node's clock may run ahead: never date an event in the future.
    let age = std::time::Duration::from_nanos(now_unix_ns.saturating_sub(accepted_ns));
    let accepted_at = now.checked_sub(age).unwrap_or(now);
    let mut b = FrameBuilder::with_capacity(json.len());
    b.payload().extend_from_slice(json);
    Some(b.finish(accepted_at))
}

/// `{"type":"resync","session":S}`: the session may have missed events.
pub fn resync_frame(session: &str) -> Vec<u8> {
    text_frame(format!(r#"{{"type":"resync","session":"{session}"}}"#).as_bytes())
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

/// `{"type":"welcome","session":S,"conn":ID}`.
pub fn welcome_frame(session: &str, conn: &str) -> Vec<u8> {
    let mut payload = Vec::with_capacity(48 + session.len() + conn.len());
    let _ = write!(
        payload,
        r#"{{"type":"welcome","session":"{session}","conn":"{conn}"}}"#
    );
    text_frame(&payload)
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
            r#"{"type":"event","session":"s1","event":"issue.updated","id":"g-1","data":{"a": 1}}"#
        );
    }

    #[test]
    fn header_sizes_cover_all_length_forms() {
        for n in [0usize, 125, 126, 65535, 65536, 200_000] {
            let data = vec![b'1'; n];
            let f = encode_event(
                &EventParts {
                    session: "s",
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
                n + br#"{"type":"event","session":"s","event":"e","id":"i","data":}"#.len()
            );
        }
    }

    #[test]
    fn remote_payload_round_trips_to_the_same_frame() {
        let parts = EventParts {
            session: "s1",
            event: b"\"e\"",
            id: Some(b"\"i\""),
            generated_id: "",
            data: b"[1, 2]",
        };
        let now = Instant::now();
        let local = encode_event(&parts, now);
        let remote = frame_from_remote(&remote_payload(&parts, 1_000), 2_000, now).unwrap();
        assert_eq!(local.bytes(), remote.bytes());
        assert!(frame_from_remote(b"short", 0, now).is_none());
    }

    #[test]
    fn close_frame_carries_code() {
        let f = close_frame(4008, "slow");
        assert_eq!(&f[..4], &[0x88, 6, 0x0f, 0xa8]);
    }
}
