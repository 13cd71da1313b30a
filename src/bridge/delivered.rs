//! `?wait=delivered` across nodes, on the wire: the request block a waiting
//! publish puts before each event it sends through Redis, and the receipts a
//! receiving node publishes back on the publishing node's reply channel.
//!
//! - **Request block**, only before a waiting event's payload as published (never in
//!   the history stream): `0xFF`, the reply channel's length (one byte) and name,
//!   then the waiting shard (u32), request id (u64) and event index (u32), all
//!   big-endian. A plain payload starts with its acceptance time (big-endian u64
//!   nanoseconds since 1970, first byte below `0x80` until the year 2262), so the
//!   two never mix.
//! - **Receipts**: the sending node's tag (length byte, bytes), a count (u32), then
//!   per event its shard (u32), id (u64), index (u32), written, queued and dropped
//!   (u32 each).
//!
//! Owns these formats only: pure functions, no I/O; the bridge calls them on its
//! thread and shards never see the bytes.

use crate::router::{DeliveredCounts, ReplyTo};

/// First byte of a payload that carries a request block.
const REQUEST_MARK: u8 = 0xFF;
/// Bytes of one event's receipt.
const RECEIPT_LEN: usize = 4 + 8 + 4 + 12;

/// The block asking the receiving nodes for their counts of event `index` of
/// request `id` of shard `shard`. `channel` is at most 255 bytes (see
/// [`super::keys::reply_channel`]).
pub fn request_block(channel: &str, shard: u32, id: u64, index: u32) -> Vec<u8> {
    let name = &channel.as_bytes()[..channel.len().min(255)];
    let mut out = Vec::with_capacity(2 + name.len() + 16);
    out.push(REQUEST_MARK);
    out.push(name.len() as u8);
    out.extend_from_slice(name);
    out.extend_from_slice(&shard.to_be_bytes());
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&index.to_be_bytes());
    out
}

/// Splits a published payload into the event's own payload and the request block's
/// reply address, if it has one. A malformed block leaves the payload whole (the
/// shard then drops it as a malformed event, with a warning).
pub fn split_request(mut payload: Vec<u8>) -> (Vec<u8>, Option<ReplyTo>) {
    if payload.first() != Some(&REQUEST_MARK) {
        return (payload, None);
    }
    let Some(reply) = read_block(&payload) else {
        return (payload, None);
    };
    let (reply, len) = reply;
    payload.drain(..len);
    (payload, Some(reply))
}

/// The reply address in a request block, and the block's length.
fn read_block(p: &[u8]) -> Option<(ReplyTo, usize)> {
    let name_len = usize::from(*p.get(1)?);
    let name = std::str::from_utf8(p.get(2..2 + name_len)?).ok()?;
    let mut at = 2 + name_len;
    let shard = u32::from_be_bytes(p.get(at..at + 4)?.try_into().ok()?);
    at += 4;
    let id = u64::from_be_bytes(p.get(at..at + 8)?.try_into().ok()?);
    at += 8;
    let index = u32::from_be_bytes(p.get(at..at + 4)?.try_into().ok()?);
    at += 4;
    let reply = ReplyTo {
        channel: name.into(),
        shard,
        id,
        index,
    };
    Some((reply, at))
}

/// One event's receipt as it travels: where it goes and what happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WireReceipt {
    pub shard: u32,
    pub id: u64,
    pub index: u32,
    pub counts: DeliveredCounts,
}

/// A node's receipts for one reply channel, as one message.
pub fn encode_receipts(node: &str, receipts: &[WireReceipt]) -> Vec<u8> {
    let tag = &node.as_bytes()[..node.len().min(255)];
    let mut out = Vec::with_capacity(1 + tag.len() + 4 + receipts.len() * RECEIPT_LEN);
    out.push(tag.len() as u8);
    out.extend_from_slice(tag);
    out.extend_from_slice(&(receipts.len() as u32).to_be_bytes());
    for r in receipts {
        out.extend_from_slice(&r.shard.to_be_bytes());
        out.extend_from_slice(&r.id.to_be_bytes());
        out.extend_from_slice(&r.index.to_be_bytes());
        out.extend_from_slice(&r.counts.written.to_be_bytes());
        out.extend_from_slice(&r.counts.queued.to_be_bytes());
        out.extend_from_slice(&r.counts.dropped.to_be_bytes());
    }
    out
}

/// The sending node's tag and its receipts; `None` for a malformed message.
pub fn decode_receipts(p: &[u8]) -> Option<(&str, Vec<WireReceipt>)> {
    let tag_len = usize::from(*p.first()?);
    let node = std::str::from_utf8(p.get(1..1 + tag_len)?).ok()?;
    let mut at = 1 + tag_len;
    let n = u32::from_be_bytes(p.get(at..at + 4)?.try_into().ok()?) as usize;
    at += 4;
    if p.len() - at != n.checked_mul(RECEIPT_LEN)? {
        return None;
    }
    let u32_at = |r: &[u8], i: usize| u32::from_be_bytes([r[i], r[i + 1], r[i + 2], r[i + 3]]);
    let out = p[at..]
        .chunks_exact(RECEIPT_LEN)
        .map(|r| WireReceipt {
            shard: u32_at(r, 0),
            id: u64::from_be_bytes([r[4], r[5], r[6], r[7], r[8], r[9], r[10], r[11]]),
            index: u32_at(r, 12),
            counts: DeliveredCounts {
                written: u32_at(r, 16),
                queued: u32_at(r, 20),
                dropped: u32_at(r, 24),
            },
        })
        .collect();
    Some((node, out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_block_comes_off_and_leaves_the_payload_as_published() {
        let mut payload = request_block("relay:v1:r:{ab-01}", 3, 77, 9);
        payload.extend_from_slice(&1_800_000_000_000_000_000u64.to_be_bytes());
        payload.extend_from_slice(br#"{"type":"event"}"#);
        let (rest, reply) = split_request(payload);
        let reply = reply.expect("a block");
        assert_eq!(&*reply.channel, "relay:v1:r:{ab-01}");
        assert_eq!((reply.shard, reply.id, reply.index), (3, 77, 9));
        assert_eq!(&rest[8..], br#"{"type":"event"}"#);
    }

    #[test]
    fn plain_and_malformed_payloads_are_left_whole() {
        let plain = 1_800_000_000_000_000_000u64.to_be_bytes().to_vec();
        assert_eq!(split_request(plain.clone()), (plain, None));
        // Too short for the name it declares.
        let cut = vec![REQUEST_MARK, 40, b'x'];
        assert_eq!(split_request(cut.clone()), (cut, None));
        // Cut inside the numbers.
        let mut short = request_block("c", 1, 2, 3);
        short.truncate(short.len() - 1);
        assert_eq!(split_request(short.clone()), (short, None));
    }

    #[test]
    fn receipts_round_trip_and_malformed_ones_are_refused() {
        let rs = [
            WireReceipt {
                shard: 1,
                id: u64::MAX - 1,
                index: 0,
                counts: DeliveredCounts {
                    written: 5,
                    queued: 1,
                    dropped: 0,
                },
            },
            WireReceipt {
                shard: 0,
                id: 8,
                index: 41,
                counts: DeliveredCounts {
                    written: 0,
                    queued: 0,
                    dropped: 2,
                },
            },
        ];
        let bytes = encode_receipts("n7", &rs);
        let (node, back) = decode_receipts(&bytes).expect("decodes");
        assert_eq!(node, "n7");
        assert_eq!(back, rs);
        assert!(decode_receipts(&bytes[..bytes.len() - 1]).is_none());
        assert!(decode_receipts(&[]).is_none());
        assert!(decode_receipts(&[9, b'a']).is_none());
        let mut long = bytes.clone();
        long.push(0);
        assert!(decode_receipts(&long).is_none());
    }
}
