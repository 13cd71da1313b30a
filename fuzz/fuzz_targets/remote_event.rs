//! Bytes as Redis delivers them for a session, and `since` values as clients send
//! them: neither parser panics, and what they accept round-trips.
//! - `frame_from_remote`: an accepted payload becomes a frame whose JSON is the
//!   payload's, at the position the payload names, and rebuilding the payload from
//!   its parts gives the same position.
//! - `parse_since`: an accepted value names a position that, printed the way the
//!   relay prints positions, parses back to itself.
//! - `split_request` (a `?wait=delivered` request block before a payload) and
//!   `decode_receipts` (another node's counts on the reply channel): what they
//!   accept, written back with `request_block` / `encode_receipts`, gives the bytes
//!   that came in.
#![no_main]
use libfuzzer_sys::fuzz_target;
use relay::bridge::{decode_receipts, encode_receipts, request_block, split_request};
use relay::stream::{parse_since, StreamPos};
use relay::ws::frame::{frame_from_remote, join_remote};

fuzz_target!(|data: &[u8]| {
    let now = std::time::Instant::now();
    if let Some((frame, pos)) = frame_from_remote(data, u64::MAX, now) {
        assert_eq!(frame.seq, pos.seq);
        assert!(frame.bytes().ends_with(&data[8..]), "the frame carries the JSON as sent");
        // Rebuilt from its head (up to the seq) and tail (after the epoch), the
        // payload names the same position.
        let json = &data[8..];
        let head = json.windows(6).position(|w| w == b"\"seq\":").map(|i| 8 + i + 6);
        // `"epoch":"` is 9 bytes, then 16 hex digits and the closing quote.
        let tail = json.windows(9).position(|w| w == b"\"epoch\":\"").map(|i| 8 + i + 9 + 17);
        if let (Some(h), Some(t)) = (head, tail.filter(|&t| t <= data.len())) {
            let rebuilt = join_remote(&data[..h], pos, &data[t..]);
            assert_eq!(frame_from_remote(&rebuilt, u64::MAX, now).map(|(_, p)| p), Some(pos));
        }
    }
    let (rest, reply) = split_request(data.to_vec());
    match reply {
        Some(r) => {
            let mut again = request_block(&r.channel, r.shard, r.id, r.index);
            again.extend_from_slice(&rest);
            assert_eq!(again, data, "a request block round-trips");
        }
        None => assert_eq!(rest, data, "a payload without a block is left whole"),
    }
    if let Some((node, receipts)) = decode_receipts(data) {
        assert_eq!(encode_receipts(node, &receipts), data, "receipts round-trip");
    }
    if let Ok(text) = std::str::from_utf8(data) {
        if let Some(pos) = parse_since(text) {
            let printed = format!("{:016x}:{}", pos.epoch, pos.seq);
            assert_eq!(parse_since(&printed), Some(pos));
            let proto = format!("{:x}.{}", pos.epoch, pos.seq);
            assert_eq!(parse_since(&proto), Some(StreamPos { ..pos }));
        }
    }
});
