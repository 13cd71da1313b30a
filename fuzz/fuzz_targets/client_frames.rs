//! Any bytes from a client, cut into reads of fuzzer-chosen sizes, through the
//! socket's client-frame loop. Never panics; a failure ends in a contract close
//! code and discards everything after it; no message exceeds the limit; what the
//! server answers is only unmasked pong or close frames; and the answer does not
//! depend on how the bytes were split into reads.
#![no_main]
use libfuzzer_sys::fuzz_target;
use relay::ws::close::Disconnect;
use relay::ws::reader::{ClientInput, ClientReader};
use tungstenite::Message;

const MAX_MESSAGE: usize = 4096;

#[derive(Debug, PartialEq)]
enum Seen {
    Text(String),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    Close,
    Failed(Option<u16>),
}

/// Feeds `data` in reads of the given sizes; returns what came out and the answer bytes.
fn run(data: &[u8], cuts: &[u8]) -> (Vec<Seen>, Vec<u8>) {
    let mut reader = ClientReader::new(MAX_MESSAGE);
    let mut seen = Vec::new();
    let mut output = Vec::new();
    let mut rest = data;
    let mut i = 0;
    let mut ended = false;
    while !rest.is_empty() {
        let size = if cuts.is_empty() {
            rest.len()
        } else {
            usize::from(cuts[i % cuts.len()]).max(1).min(rest.len())
        };
        i += 1;
        reader.push(&rest[..size]);
        rest = &rest[size..];
        loop {
            match reader.read_message() {
                ClientInput::Message(m) => {
                    assert!(!ended, "a message after the reader ended");
                    seen.push(match m {
                        Message::Text(t) => {
                            assert!(t.len() <= MAX_MESSAGE);
                            Seen::Text(t.as_str().to_owned())
                        }
                        Message::Binary(b) => {
                            assert!(b.len() <= MAX_MESSAGE);
                            Seen::Binary(b.to_vec())
                        }
                        Message::Ping(p) => Seen::Ping(p.to_vec()),
                        Message::Pong(p) => Seen::Pong(p.to_vec()),
                        Message::Close(_) => Seen::Close,
                        Message::Frame(_) => panic!("raw frame surfaced"),
                    })
                }
                ClientInput::NeedMore => break,
                ClientInput::Ended => {
                    ended = true;
                    break;
                }
                ClientInput::Failed(reason) => {
                    let code = reason.close_code();
                    assert!(
                        matches!(
                            reason,
                            Disconnect::ProtocolError
                                | Disconnect::InvalidUtf8
                                | Disconnect::MessageTooBig
                        ),
                        "{reason:?}"
                    );
                    seen.push(Seen::Failed(code));
                    ended = true;
                    break;
                }
            }
        }
        output.extend(reader.take_output());
        if ended {
            assert_eq!(reader.pending_input(), 0, "input kept after the end");
        }
    }
    (seen, output)
}

/// Server frames only: unmasked, FIN set, pong (0xA) or close (0x8), lengths exact.
fn check_answer(mut out: &[u8]) {
    while !out.is_empty() {
        assert!(out.len() >= 2);
        assert!(out[0] == 0x8a || out[0] == 0x88, "opcode byte {:#x}", out[0]);
        assert_eq!(out[1] & 0x80, 0, "masked server frame");
        let len = usize::from(out[1] & 0x7f);
        assert!(len <= 125, "control frame over 125 bytes");
        assert!(out.len() >= 2 + len);
        out = &out[2 + len..];
    }
}

fuzz_target!(|input: &[u8]| {
    // First byte: how many of the following bytes describe read sizes.
    let Some((&n, rest)) = input.split_first() else {
        return;
    };
    let n = usize::from(n % 16).min(rest.len());
    let (cuts, data) = rest.split_at(n);
    let (whole, whole_out) = run(data, &[]);
    let (split, split_out) = run(data, cuts);
    check_answer(&whole_out);
    assert_eq!(whole, split, "outcome depends on how reads were split");
    assert_eq!(whole_out, split_out);
});
