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
}
