//! What the tool publishes and how a receiver reads it back.
//!
//! Each event's `data` is `{"lt":"<scheduled_ns>:<seq>","p":"xxx…"}`, padded to exactly the
//! scenario's `event_bytes`. `scheduled_ns` is the UNIX time in nanoseconds at which the
//! open-loop schedule *meant* to publish the event (not when it was sent), so latency measured
//! by the receiver includes any delay the publisher itself suffered: no coordinated omission.
//! UNIX time is shared by every process on the machine, so `--procs` works too.
//!
//! Pure: encoding and a fast scan, no I/O.

use std::io::Write;
use std::sync::LazyLock;
use std::time::{SystemTime, UNIX_EPOCH};

use memchr::memmem::Finder;

/// The event name every published event carries.
pub const EVENT_NAME: &str = "lt";
/// Smallest `data` that fits the stamp with padding syntax around it.
pub const MIN_DATA_BYTES: usize = 64;

static STAMP: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"lt\":\""));

/// When an event was scheduled, and its global sequence number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    pub scheduled_ns: u64,
    pub seq: u64,
}

/// Now, in nanoseconds since the UNIX epoch.
pub fn unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Session name for session index `i` of run `run_id` (only `A-Za-z0-9._:-`, per the contract).
pub fn session_name(run_id: u32, i: u32) -> String {
    format!("lt.{run_id:08x}.{i}")
}

/// Appends the `data` JSON for one event, exactly `bytes` long when `bytes >= MIN_DATA_BYTES`.
pub fn write_data(out: &mut Vec<u8>, stamp: Stamp, bytes: usize) {
    let start = out.len();
    // Writing into a Vec cannot fail.
    let _ = write!(out, "{{\"lt\":\"{}:{}\"", stamp.scheduled_ns, stamp.seq);
    let used = out.len() - start;
    let tail = ",\"p\":\"\"}";
    if bytes >= used + tail.len() {
        out.extend_from_slice(b",\"p\":\"");
        out.resize(out.len() + (bytes - used - tail.len()), b'x');
        out.extend_from_slice(b"\"}");
    } else {
        out.push(b'}');
    }
}

/// Appends one event object `{"session":…,"event":"lt","data":…}`.
pub fn write_event(out: &mut Vec<u8>, session: &str, stamp: Stamp, bytes: usize) {
    out.extend_from_slice(b"{\"session\":\"");
    out.extend_from_slice(session.as_bytes());
    out.extend_from_slice(b"\",\"event\":\"lt\",\"data\":");
    write_data(out, stamp, bytes);
    out.push(b'}');
}

/// A whole `POST /events` body: one event object, or `{"events":[…]}` for more than one.
/// `events` yields (session name, stamp).
pub fn publish_body<'a>(
    out: &mut Vec<u8>,
    events: impl Iterator<Item = (&'a str, Stamp)>,
    count: usize,
    bytes: usize,
) {
    out.clear();
    if count == 1 {
        for (s, st) in events {
            write_event(out, s, st, bytes);
        }
        return;
    }
    out.extend_from_slice(b"{\"events\":[");
    for (i, (s, st)) in events.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_event(out, s, st, bytes);
    }
    out.extend_from_slice(b"]}");
}

/// Finds the stamp in a received frame (the whole `{"type":"event",…}` text). `None` for
/// frames that carry none (welcome, or events not published by this tool).
pub fn find_stamp(frame: &[u8]) -> Option<Stamp> {
    let at = STAMP.find(frame)? + 6;
    let rest = &frame[at..];
    let (scheduled_ns, used) = parse_u64(rest)?;
    if rest.get(used) != Some(&b':') {
        return None;
    }
    let (seq, used2) = parse_u64(&rest[used + 1..])?;
    if rest.get(used + 1 + used2) != Some(&b'"') {
        return None;
    }
    Some(Stamp { scheduled_ns, seq })
}

/// A point in a session's stream: its epoch (16 hex digits on the wire) and the seq of
/// the last event at that point.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct Pos {
    pub epoch: u64,
    pub seq: u64,
}

impl Pos {
    /// `EPOCH:SEQ`, as the `since=` query parameter spells it.
    pub fn since(self) -> String {
        format!("{:016x}:{}", self.epoch, self.seq)
    }

    /// Reads `EPOCH:SEQ` back (a long-poll's `next`, an event stream's `id`): the epoch's
    /// 16 hex digits, a colon, the decimal seq.
    pub fn parse(text: &[u8]) -> Option<Pos> {
        let (epoch, seq) = (text.get(..16)?, text.get(17..)?);
        if text[16] != b':' || !epoch.iter().all(u8::is_ascii_hexdigit) {
            return None;
        }
        let epoch = u64::from_str_radix(std::str::from_utf8(epoch).ok()?, 16).ok()?;
        match parse_u64(seq)? {
            (seq, n) if n == text.len() - 17 => Some(Pos { epoch, seq }),
            _ => None,
        }
    }
}

/// A server text frame, as far as the resume check cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerFrame {
    /// `{"type":"event",…,"seq":N,"epoch":"E",…}`.
    Event(Pos),
    /// `{"type":"welcome",…,"epoch":"E","seq":N}`: the session's position when the socket joined.
    Welcome(Pos),
    /// `{"type":"resync",…,"epoch":"E","seq":N}`: events were missed; continue from here.
    Resync(Pos),
    /// Anything else (or a frame without a readable position).
    Other,
}

const EVENT_HEAD: &[u8] = br#"{"type":"event","session":""#;
const WELCOME_HEAD: &[u8] = br#"{"type":"welcome""#;
const RESYNC_HEAD: &[u8] = br#"{"type":"resync""#;

static RECEIPT: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"{\"session\":\""));

/// Reads a server frame's type and position. Events take a fixed-layout fast path (the
/// relay writes `session`, `seq`, `epoch` in that order, before `data`), with a field
/// search as the fallback; welcome and resync frames, rare, always take the search.
pub fn classify(frame: &[u8]) -> ServerFrame {
    if let Some(rest) = frame.strip_prefix(EVENT_HEAD) {
        return match after_session(rest).or_else(|| field_pos(frame)) {
            Some((pos, _)) => ServerFrame::Event(pos),
            None => ServerFrame::Other,
        };
    }
    let make = if frame.starts_with(WELCOME_HEAD) {
        ServerFrame::Welcome
    } else if frame.starts_with(RESYNC_HEAD) {
        ServerFrame::Resync
    } else if frame.starts_with(br#"{"type":"event""#) {
        ServerFrame::Event
    } else {
        return ServerFrame::Other;
    };
    field_pos(frame).map_or(ServerFrame::Other, |(p, _)| make(p))
}

/// `S","seq":N,"epoch":"E"` at the start of `rest` (just after `"session":"`): the
/// position and the session name's length.
fn after_session(rest: &[u8]) -> Option<(Pos, usize)> {
    let name = memchr::memchr(b'"', rest)?;
    let tail = rest[name..].strip_prefix(br#"","seq":"#)?;
    let (seq, used) = parse_u64(tail)?;
    let tail = tail[used..].strip_prefix(br#","epoch":""#)?;
    let epoch = parse_epoch(tail)?;
    Some((Pos { epoch, seq }, name))
}

/// The first `"epoch":"E"` and `"seq":N` anywhere in the frame. Fields before `data`
/// come first, and session names cannot hold a quote, so the first match is the frame's own.
fn field_pos(frame: &[u8]) -> Option<(Pos, usize)> {
    const EPOCH: &[u8] = br#""epoch":""#;
    const SEQ: &[u8] = br#""seq":"#;
    let e = memchr::memmem::find(frame, EPOCH)? + EPOCH.len();
    let s = memchr::memmem::find(frame, SEQ)? + SEQ.len();
    let epoch = parse_epoch(&frame[e..])?;
    let (seq, _) = parse_u64(&frame[s..])?;
    Some((Pos { epoch, seq }, 0))
}

/// Exactly 16 hex digits followed by a quote.
fn parse_epoch(b: &[u8]) -> Option<u64> {
    let hex = b.get(..16)?;
    if b.get(16) != Some(&b'"') {
        return None;
    }
    let mut v = 0u64;
    for &c in hex {
        let d = match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            b'A'..=b'F' => c - b'A' + 10,
            _ => return None,
        };
        v = (v << 4) | u64::from(d);
    }
    Some(v)
}

/// Calls `each(session, position)` for every receipt of a `202` body
/// (`{"accepted":N,"events":[{"session":S,"seq":N,"epoch":E,"id":…},…]}`), in request
/// order; returns how many were read.
pub fn parse_receipts(body: &[u8], mut each: impl FnMut(&[u8], Pos)) -> usize {
    let mut n = 0;
    let mut at = 0;
    while let Some(i) = RECEIPT.find(&body[at..]) {
        let start = at + i + RECEIPT.needle().len();
        let Some((pos, name)) = after_session(&body[start..]) else {
            break;
        };
        each(&body[start..start + name], pos);
        n += 1;
        at = start + name;
    }
    n
}

fn parse_u64(b: &[u8]) -> Option<(u64, usize)> {
    let mut v: u64 = 0;
    let mut n = 0;
    for &c in b.iter().take(20) {
        if !c.is_ascii_digit() {
            break;
        }
        v = v.checked_mul(10)?.checked_add(u64::from(c - b'0'))?;
        n += 1;
    }
    (n > 0).then_some((v, n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_is_exactly_the_requested_size_and_valid_json() {
        let stamp = Stamp {
            scheduled_ns: u64::MAX,
            seq: u64::MAX,
        };
        for bytes in [MIN_DATA_BYTES, 100, 1000, 4096] {
            let mut out = Vec::new();
            write_data(&mut out, stamp, bytes);
            assert_eq!(out.len(), bytes);
            let v: serde_json::Value = serde_json::from_slice(&out).expect("json");
            assert!(v["lt"].is_string());
        }
    }

    #[test]
    fn stamp_survives_the_relay_frame() {
        let stamp = Stamp {
            scheduled_ns: 1_700_000_000_123_456_789,
            seq: 42,
        };
        let mut data = Vec::new();
        write_data(&mut data, stamp, 100);
        let frame = format!(
            r#"{{"type":"event","session":"lt.1.0","event":"lt","id":"e-9","data":{}}}"#,
            String::from_utf8_lossy(&data)
        );
        assert_eq!(find_stamp(frame.as_bytes()), Some(stamp));
        assert_eq!(
            find_stamp(br#"{"type":"welcome","session":"s","conn":"1"}"#),
            None
        );
        assert_eq!(find_stamp(br#"{"lt":"12:"}"#), None);
        assert_eq!(find_stamp(br#"{"lt":"99999999999999999999999:1"}"#), None);
    }

    #[test]
    fn bodies_are_single_or_batch_json() {
        let st = |seq| Stamp {
            scheduled_ns: 5,
            seq,
        };
        let mut out = Vec::new();
        publish_body(&mut out, [("s1", st(1))].into_iter(), 1, 64);
        let v: serde_json::Value = serde_json::from_slice(&out).expect("json");
        assert_eq!(v["session"], "s1");
        assert_eq!(v["event"], EVENT_NAME);
        assert_eq!(find_stamp(&out), Some(st(1)));

        publish_body(&mut out, [("a", st(1)), ("b", st(2))].into_iter(), 2, 64);
        let v: serde_json::Value = serde_json::from_slice(&out).expect("json");
        assert_eq!(v["events"].as_array().map(Vec::len), Some(2));
        assert_eq!(v["events"][1]["session"], "b");
    }

    #[test]
    fn session_names_use_allowed_characters() {
        let s = session_name(0xdead_beef, 12);
        assert_eq!(s, "lt.deadbeef.12");
        assert!(s
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"._:-".contains(&c)));
    }
    #[test]
    fn positions_are_read_from_every_frame_type() {
        let ev = br#"{"type":"event","session":"lt.1.0","seq":42,"epoch":"00000000000000ab","event":"lt","id":"x","data":{"seq":1}}"#;
        let p = Pos {
            epoch: 0xab,
            seq: 42,
        };
        assert_eq!(classify(ev), ServerFrame::Event(p));
        let w = br#"{"type":"welcome","session":"s","conn":"a-1-2","epoch":"00000000000000ab","seq":42}"#;
        assert_eq!(classify(w), ServerFrame::Welcome(p));
        let r = br#"{"type":"resync","session":"s","epoch":"00000000000000ab","seq":42}"#;
        assert_eq!(classify(r), ServerFrame::Resync(p));
        // Another field order still reads, through the search.
        let odd = br#"{"type":"event","epoch":"00000000000000ab","seq":42,"session":"s"}"#;
        assert_eq!(classify(odd), ServerFrame::Event(p));
        assert_eq!(
            classify(br#"{"type":"welcome","session":"s","conn":"1"}"#),
            ServerFrame::Other
        );
        assert_eq!(
            classify(br#"{"type":"event","session":"s","seq":1,"epoch":"ab"}"#),
            ServerFrame::Other
        );
        assert_eq!(classify(b"hello"), ServerFrame::Other);
        assert_eq!(p.since(), "00000000000000ab:42");
    }

    #[test]
    fn positions_read_back_as_they_are_spelled() {
        let p = Pos {
            epoch: 0xab,
            seq: 42,
        };
        assert_eq!(Pos::parse(p.since().as_bytes()), Some(p));
        let max = Pos {
            epoch: u64::MAX,
            seq: u64::MAX,
        };
        assert_eq!(Pos::parse(max.since().as_bytes()), Some(max));
        for bad in [
            &b"00000000000000ab"[..],
            b"00000000000000ab:",
            b"00000000000000ab:4x",
            b"0000000000000ab:42",
            b"00000000000000ag:1",
            b"+0000000000000ab:1",
            b"00000000000000ab-42",
        ] {
            assert_eq!(Pos::parse(bad), None, "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn receipts_are_read_in_request_order() {
        let body = br#"{"accepted":2,"events":[{"session":"a","seq":7,"epoch":"0000000000000001","id":"x-1"},{"session":"bb","seq":3,"epoch":"ffffffffffffffff","id":"x-2"}]}"#;
        let mut got = Vec::new();
        let n = parse_receipts(body, |s, p| got.push((s.to_vec(), p)));
        assert_eq!(n, 2);
        assert_eq!(got[0], (b"a".to_vec(), Pos { epoch: 1, seq: 7 }));
        assert_eq!(
            got[1],
            (
                b"bb".to_vec(),
                Pos {
                    epoch: u64::MAX,
                    seq: 3
                }
            )
        );
        assert_eq!(
            parse_receipts(br#"{"accepted":0,"events":[]}"#, |_, _| {}),
            0
        );
    }
}
