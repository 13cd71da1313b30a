//! RFC 6455 frames a broken or hostile client may send after a valid upgrade. Each case
//! runs over a raw TCP socket and asserts the exact close code, then that the server
//! closes TCP. Cases already pinned elsewhere (unmasked frames, invalid UTF-8 in one
//! frame, oversized whole messages) live in tests/lifecycle.rs.

mod common;

use std::time::Duration;

use common::*;

/// How long a close that should come "at once" may take (generous for a loaded CI box,
/// short enough that a server waiting for a payload that never comes fails the test).
const AT_ONCE: Duration = Duration::from_secs(3);
/// How long the server may take to drop TCP after its close frame (it waits up to 1 s for
/// the client's answer, which these clients never send).
const TCP_CLOSE: Duration = Duration::from_secs(4);

/// A socket for `session` whose welcome frame has been read.
fn welcomed_raw(node: &Node, session: &str) -> RawSocket {
    let mut raw = RawSocket::upgrade(node.addr, session);
    let (opcode, payload) = raw.read_frame(PROMPT).expect("welcome frame");
    assert_eq!(opcode, 0x1, "first frame is not text");
    let w: serde_json::Value = serde_json::from_slice(&payload).expect("welcome is JSON");
    assert_eq!(w["type"], "welcome", "first frame {w}");
    raw
}

/// The close code the server sends after `send`, and whether it then closed TCP.
/// `Err` describes what happened instead.
fn close_after(
    node: &Node,
    session: &str,
    send: impl FnOnce(&mut RawSocket),
) -> Result<u16, String> {
    let mut raw = welcomed_raw(node, session);
    send(&mut raw);
    let code = match raw.read_until_close(AT_ONCE) {
        Ok(Some(code)) => code,
        Ok(None) => return Err("close frame without a code".into()),
        Err(e) => return Err(format!("no close frame: {e}")),
    };
    if !raw.closed_within(TCP_CLOSE) {
        return Err(format!("close {code} sent but TCP left open"));
    }
    Ok(code)
}

/// Runs every case on its own socket and fails once, naming each case that did not get
/// `want` (so one failure does not hide the others).
fn each_closes_with<T: std::fmt::Debug>(
    node: &Node,
    want: u16,
    cases: &[T],
    send: impl Fn(&mut RawSocket, &T),
) {
    let mut wrong = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        match close_after(node, &format!("case{i}"), |raw| send(raw, case)) {
            Ok(code) if code == want => {}
            Ok(code) => wrong.push(format!("{case:?}: close {code}")),
            Err(e) => wrong.push(format!("{case:?}: {e}")),
        }
    }
    assert!(
        wrong.is_empty(),
        "expected close {want} for every case; got {wrong:#?}"
    );
}

fn assert_closes_with(node: &Node, want: u16, send: impl FnOnce(&mut RawSocket)) {
    match close_after(node, "one", send) {
        Ok(code) => assert_eq!(code, want, "wrong close code"),
        Err(e) => panic!("expected close {want}: {e}"),
    }
}

// --- frame header bits ----------------------------------------------------------------

#[test]
fn frame_with_any_rsv_bit_set_closes_with_1002() {
    let node = Node::start();
    // RSV1, RSV2, RSV3 on a text frame (no extension was negotiated), and RSV1 on a ping.
    each_closes_with(&node, 1002, &[0xC1u8, 0xA1, 0x91, 0xC9], |raw, first| {
        raw.send_frame(*first, br#"{"type":"x"}"#, true)
    });
}

#[test]
fn frame_with_reserved_opcode_closes_with_1002() {
    let node = Node::start();
    let opcodes = [0x3u8, 0x4, 0x5, 0x6, 0x7, 0xB, 0xC, 0xD, 0xE, 0xF];
    each_closes_with(&node, 1002, &opcodes, |raw, op| {
        raw.send_frame(0x80 | op, b"x", true)
    });
}

// --- control frames -------------------------------------------------------------------

#[test]
fn unmasked_control_frame_closes_with_1002() {
    // tests/lifecycle.rs covers an unmasked text frame; control frames are no exception.
    let node = Node::start();
    let close = 1000u16.to_be_bytes();
    let cases: [(u8, &[u8]); 3] = [(0x89, b"ping"), (0x8A, b"pong"), (0x88, &close)];
    each_closes_with(&node, 1002, &cases, |raw, (first, payload)| {
        raw.send_frame(*first, payload, false)
    });
}

#[test]
fn fragmented_ping_closes_with_1002() {
    let node = Node::start();
    // A ping with FIN clear: control frames must not be fragmented.
    assert_closes_with(&node, 1002, |raw| raw.send_frame(0x09, b"hello", true));
}

#[test]
fn control_frame_over_125_bytes_closes_with_1002() {
    let node = Node::start();
    // Ping, pong and close, each with a 126-byte payload (the 16-bit length form).
    let mut close_payload = 1000u16.to_be_bytes().to_vec();
    close_payload.extend_from_slice(&[b'r'; 124]);
    let cases = [
        (0x89u8, vec![b'p'; 126]),
        (0x8A, vec![b'q'; 126]),
        (0x88, close_payload),
    ];
    each_closes_with(&node, 1002, &cases, |raw, (first, payload)| {
        raw.send_frame(*first, payload, true)
    });
}

#[test]
fn ping_with_125_byte_payload_gets_a_pong_with_the_same_payload() {
    let node = Node::start();
    let mut raw = welcomed_raw(&node, "ping125");
    let payload: Vec<u8> = (0..125u8).collect();
    raw.send_frame(0x89, &payload, true);
    let (opcode, got) = raw.read_frame(AT_ONCE).expect("a pong");
    assert_eq!(opcode, 0xA, "expected a pong, got opcode {opcode:#x}");
    assert_eq!(got, payload, "pong payload differs from the ping's");
    assert!(
        raw.quiet_for(Duration::from_millis(300)),
        "socket closed after a ping"
    );
}

#[test]
fn unsolicited_pong_is_ignored_and_events_still_arrive() {
    let node = Node::start();
    let mut raw = welcomed_raw(&node, "upong");
    raw.send_frame(0x8A, b"nobody-asked", true);
    assert!(
        raw.quiet_for(Duration::from_millis(300)),
        "server answered or closed after an unsolicited pong"
    );
    node.publish_ok(&event("upong", "after.pong", "1"), 1);
    let (opcode, payload) = raw.read_frame(PROMPT).expect("event after the pong");
    assert_eq!(opcode, 0x1, "expected the event as a text frame");
    let v: serde_json::Value = serde_json::from_slice(&payload).expect("event is JSON");
    assert_eq!(v["type"], "event", "{v}");
    assert_eq!(v["event"], "after.pong", "{v}");
}

#[test]
fn client_close_is_answered_with_a_close_then_tcp_is_closed() {
    let node = Node::start();
    let mut payload = 1000u16.to_be_bytes().to_vec();
    payload.extend_from_slice(b"bye");
    assert_closes_with(&node, 1000, |raw| raw.send_frame(0x88, &payload, true));
}

// --- close frames ---------------------------------------------------------------------

#[test]
fn close_frame_with_one_byte_payload_closes_with_1002() {
    let node = Node::start();
    assert_closes_with(&node, 1002, |raw| raw.send_frame(0x88, &[0x03], true));
}

#[test]
fn close_frame_with_invalid_code_closes_with_1002() {
    let node = Node::start();
    // Never valid on the wire: below 1000, reserved (1004), "no status"/"abnormal"/TLS
    // (1005, 1006, 1015), unassigned 1016-2999, and above 4999.
    let codes = [
        0u16, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535,
    ];
    each_closes_with(&node, 1002, &codes, |raw, code| {
        raw.send_frame(0x88, &code.to_be_bytes(), true)
    });
}

// --- fragmentation --------------------------------------------------------------------

#[test]
fn continuation_frame_with_nothing_to_continue_closes_with_1002() {
    let node = Node::start();
    // Both a final and a non-final continuation, each with no message in progress.
    each_closes_with(&node, 1002, &[0x80u8, 0x00], |raw, first| {
        raw.send_frame(*first, br#"{"type":"x"}"#, true)
    });
}

#[test]
fn new_data_message_inside_a_fragmented_one_closes_with_1002() {
    let node = Node::start();
    // A text message is started; a new text (final or not) or binary frame follows.
    each_closes_with(&node, 1002, &[0x81u8, 0x01, 0x82], |raw, second| {
        raw.send_frame(0x01, br#"{"type":"#, true);
        raw.send_frame(*second, br#""refresh"}"#, true);
    });
}

#[test]
fn ping_between_fragments_is_answered_and_the_message_still_completes() {
    // The positive case next to the fragmentation refusals: a well-formed fragmented
    // message with a ping in the middle is fine.
    let node = Node::start();
    let mut raw = welcomed_raw(&node, "frag-ok");
    let msg = format!(r#"{{"type":"refresh","token":"{}"}}"#, token("frag-ok"));
    let (a, b) = msg.as_bytes().split_at(10);
    raw.send_frame(0x01, a, true);
    raw.send_frame(0x89, b"mid", true);
    let (opcode, payload) = raw.read_frame(AT_ONCE).expect("pong between fragments");
    assert_eq!((opcode, payload.as_slice()), (0xA, &b"mid"[..]));
    raw.send_frame(0x80, b, true);
    let (opcode, ack) = raw
        .read_frame(PROMPT)
        .expect("the refresh's acknowledgement");
    assert_eq!(opcode, 0x1);
    assert!(ack.starts_with(br#"{"type":"refreshed","exp":"#));
    assert!(
        raw.quiet_for(Duration::from_millis(300)),
        "a valid fragmented refresh closed the socket"
    );
    node.publish_ok(&event("frag-ok", "e", "1"), 1);
    let (opcode, _) = raw.read_frame(PROMPT).expect("event after the refresh");
    assert_eq!(opcode, 0x1);
}

#[test]
fn invalid_utf8_split_across_fragments_closes_with_1007() {
    let node = Node::start();
    // Each case is (first fragment, final fragment); each fragment is fine on its own
    // as far as a per-frame check can tell, the message is not UTF-8.
    let cases: [(&[u8], &[u8]); 3] = [
        // "€" is E2 82 AC: its first two bytes, then a byte that is no continuation.
        (b"{\"type\":\"\xE2\x82", b"(\"}"),
        // A four-byte lead split from continuations that would encode a code point
        // over U+10FFFF (F4 90 80 80).
        (b"{\"type\":\"\xF4", b"\x90\x80\x80\"}"),
        // The message ends inside a sequence.
        (b"{\"type\":\"", b"x\"}\xE2\x82"),
    ];
    each_closes_with(&node, 1007, &cases, |raw, (a, b)| {
        raw.send_frame(0x01, a, true);
        raw.send_frame(0x80, b, true);
    });
}

// --- lengths --------------------------------------------------------------------------

#[test]
fn frame_length_with_the_top_bit_set_closes_with_1009_at_once() {
    let node = Node::start();
    // RFC 6455 5.2: the most significant bit of a 64-bit length must be 0.
    assert_closes_with(&node, 1009, |raw| {
        raw.send_bytes(&masked_header_declaring(0x81, (1 << 63) | 5))
    });
}

#[test]
fn frame_declaring_1_gib_closes_with_1009_before_any_payload() {
    let node = Node::start();
    let before = node.rss_kib();
    // Only the header is sent: the server must refuse on the declared length alone.
    assert_closes_with(&node, 1009, |raw| {
        raw.send_bytes(&masked_header_declaring(0x81, 1 << 30))
    });
    let after = node.rss_kib();
    assert!(
        after < before + 64 * 1024,
        "RSS grew from {before} KiB to {after} KiB for a declared 1 GiB frame"
    );
}

#[test]
fn tiny_fragments_passing_the_message_limit_close_with_1009_as_soon_as_it_passes() {
    let node = Node::builder()
        .flag("--max-message-bytes", "1024")
        .flag("--client-message-rate", "1000000")
        .start();
    let mut bystander = node.ws_welcomed("frag-bystander");
    let mut raw = welcomed_raw(&node, "frag-flood");
    // 64 fragments of 16 bytes: exactly the limit, which is allowed.
    raw.send_frame(0x01, &[b'a'; 16], true);
    for _ in 1..64 {
        raw.send_frame(0x00, &[b'a'; 16], true);
    }
    assert!(
        raw.quiet_for(Duration::from_millis(300)),
        "closed at exactly the limit (1024 bytes in 64 fragments)"
    );
    // One more byte passes it.
    raw.send_frame(0x00, b"a", true);
    let code = raw.read_until_close(AT_ONCE).expect("close frame");
    assert_eq!(code, Some(1009));
    assert!(raw.closed_within(TCP_CLOSE), "TCP left open after 1009");

    // The node still serves the socket it had and new ones.
    node.publish_ok(&event("frag-bystander", "still.here", "1"), 1);
    assert_eq!(bystander.next_event(PROMPT)["event"], "still.here");
    let mut fresh = node.ws_welcomed("frag-fresh");
    node.publish_ok(&event("frag-fresh", "new.socket", "2"), 1);
    assert_eq!(fresh.next_event(PROMPT)["event"], "new.socket");
}
