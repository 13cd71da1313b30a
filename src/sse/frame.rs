//! Server-Sent Events encoding (WHATWG HTML, "Server-sent events"): the blocks a
//! `text/event-stream` carries. Pure: bytes in, bytes out.
//!
//! An event block is `id: EPOCH:SEQ`, `event: NAME` and the JSON as `data:` lines,
//! then a blank line. The JSON is the same text a WebSocket frame carries; a line
//! break inside it (JSON whitespace a publisher's `data` may hold) starts another
//! `data:` line, which the reader joins back with `\n`: still the same JSON value.
//! Owns no state and knows nothing of sockets or sessions.

use crate::stream::{push_decimal, push_hex16, StreamPos};

/// The keep-alive comment sent every ping interval.
pub const KEEP_ALIVE: &[u8] = b": ping\n\n";

/// Appends one event block: `id` (when given), `event`, the JSON as `data:`
/// lines, and the blank line that dispatches it.
pub fn push_block(out: &mut Vec<u8>, id: Option<StreamPos>, event: &str, json: &[u8]) {
    if let Some(pos) = id {
        out.extend_from_slice(b"id: ");
        push_hex16(out, pos.epoch);
        out.push(b':');
        push_decimal(out, pos.seq);
        out.push(b'\n');
    }
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(event.as_bytes());
    out.extend_from_slice(b"\ndata: ");
    let mut rest = json;
    while let Some(i) = rest.iter().position(|&b| b == b'\n' || b == b'\r') {
        out.extend_from_slice(&rest[..i]);
        out.extend_from_slice(b"\ndata: ");
        // A CR LF pair is one line break.
        let skip = if rest[i] == b'\r' && rest.get(i + 1) == Some(&b'\n') {
            2
        } else {
            1
        };
        rest = &rest[i + skip..];
    }
    out.extend_from_slice(rest);
    out.extend_from_slice(b"\n\n");
}

/// One event block on its own.
pub fn block(id: Option<StreamPos>, event: &str, json: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(json.len() + 48 + event.len());
    push_block(&mut out, id, event, json);
    out
}

/// The last block of a stream the relay ends: `event: close` with the code a
/// WebSocket would have been closed with, and its reason.
pub fn close_block(code: u16, reason: &str) -> Vec<u8> {
    let mut json = Vec::with_capacity(32 + reason.len());
    json.extend_from_slice(br#"{"type":"close","code":"#);
    push_decimal(&mut json, u64::from(code));
    json.extend_from_slice(br#","reason":""#);
    // Reasons are the relay's own short ASCII texts; keep them JSON-safe anyway.
    json.extend(
        reason
            .bytes()
            .filter(|b| b.is_ascii_graphic() || *b == b' ')
            .filter(|b| *b != b'"' && *b != b'\\'),
    );
    json.extend_from_slice(b"\"}");
    block(None, "close", &json)
}

/// The `retry:` field: how long a browser's `EventSource` waits before it
/// reconnects.
pub fn retry_field(millis: u64) -> Vec<u8> {
    let mut out = b"retry: ".to_vec();
    push_decimal(&mut out, millis);
    out.extend_from_slice(b"\n\n");
    out
}

/// Parses a `Last-Event-ID` (the id of the last event a reader saw), which has
/// the same spelling as `since`.
pub fn parse_last_event_id(value: &str) -> Option<StreamPos> {
    crate::stream::parse_since(value.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_block_has_id_event_data_and_a_blank_line() {
        let pos = StreamPos {
            epoch: 0xab,
            seq: 7,
        };
        let out = block(Some(pos), "event", br#"{"a":1}"#);
        assert_eq!(
            out,
            b"id: 00000000000000ab:7\nevent: event\ndata: {\"a\":1}\n\n".to_vec()
        );
    }

    #[test]
    fn line_breaks_in_the_json_become_data_lines_that_join_back() {
        let json = b"{\"a\":\r\n 1,\n\"b\":\r2}";
        let out = block(None, "event", json);
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text,
            "event: event\ndata: {\"a\":\ndata:  1,\ndata: \"b\":\ndata: 2}\n\n"
        );
        // What a reader rebuilds (data lines joined with \n) is the same JSON value.
        let joined: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .collect();
        let a: serde_json::Value = serde_json::from_str(&joined.join("\n")).unwrap();
        let b: serde_json::Value = serde_json::from_slice(json).unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn a_close_block_names_the_code() {
        let out = String::from_utf8(close_block(4001, "token \"expired\"")).unwrap();
        assert_eq!(
            out,
            "event: close\ndata: {\"type\":\"close\",\"code\":4001,\"reason\":\"token expired\"}\n\n"
        );
    }

    #[test]
    fn last_event_id_is_spelled_like_since() {
        assert_eq!(
            parse_last_event_id("00000000000000ab:7"),
            Some(StreamPos {
                epoch: 0xab,
                seq: 7
            })
        );
        assert_eq!(parse_last_event_id("7"), None);
        assert_eq!(parse_last_event_id("zz:1"), None);
    }
}
