//! The 202's body: a receipt per accepted event, in request order.
//!
//! Renders what the shard answered ([`Published`]) as JSON, written by hand with
//! the stream module's number writers (no serde on the publish path). Owns only
//! the bytes; it decides nothing about delivery.

use crate::router::Receipt;
use crate::shard::ctx::Published;
use crate::stream::{push_decimal, push_hex16};

/// `{"accepted":N,"events":[{"session","seq","epoch","id"[,"duplicate"]
/// [,"written","queued","dropped"]}...][,"took_us":T]}`, in request order.
/// `node_tag` is the prefix of relay-made ids.
pub fn receipts_body(published: &mut Published, node_tag: &str) -> Vec<u8> {
    let Published {
        batch,
        receipts,
        id_shard,
        id_base,
        took,
    } = published;
    receipts.sort_unstable_by_key(|r| r.index);
    let mut out = Vec::with_capacity(48 + receipts.len() * 112);
    out.extend_from_slice(br#"{"accepted":"#);
    push_decimal(&mut out, receipts.len() as u64);
    out.extend_from_slice(br#","events":["#);
    let mut first = true;
    for r in receipts.iter() {
        let Some(ev) = batch.events.get(r.index as usize) else {
            continue;
        };
        if !first {
            out.push(b',');
        }
        first = false;
        push_receipt(
            &mut out,
            batch.session(ev),
            r,
            took.is_some(),
            |out| match &ev.id {
                Some(id) => out.extend_from_slice(batch.bytes(id)),
                None => {
                    out.push(b'"');
                    out.extend_from_slice(node_tag.as_bytes());
                    out.push(b'-');
                    push_decimal(out, *id_shard as u64);
                    out.push(b'-');
                    push_decimal(out, *id_base + u64::from(r.index));
                    out.push(b'"');
                }
            },
        );
    }
    out.push(b']');
    if let Some(t) = took {
        out.extend_from_slice(br#","took_us":"#);
        push_decimal(&mut out, t.as_micros() as u64);
    }
    out.push(b'}');
    out
}

/// One event's receipt object; `id` writes the event's id as a JSON string.
fn push_receipt(
    out: &mut Vec<u8>,
    session: &str,
    r: &Receipt,
    counts: bool,
    id: impl FnOnce(&mut Vec<u8>),
) {
    out.extend_from_slice(br#"{"session":""#);
    out.extend_from_slice(session.as_bytes());
    out.extend_from_slice(br#"","seq":"#);
    push_decimal(out, r.pos.seq);
    out.extend_from_slice(br#","epoch":""#);
    push_hex16(out, r.pos.epoch);
    out.extend_from_slice(br#"","id":"#);
    id(out);
    if r.duplicate {
        out.extend_from_slice(br#","duplicate":true"#);
    }
    if counts {
        out.extend_from_slice(br#","written":"#);
        push_decimal(out, u64::from(r.written));
        out.extend_from_slice(br#","queued":"#);
        push_decimal(out, u64::from(r.queued));
        out.extend_from_slice(br#","dropped":"#);
        push_decimal(out, u64::from(r.dropped));
    }
    out.push(b'}');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::publish::PublishParser;
    use crate::stream::StreamPos;
    use std::sync::Arc;
    use std::time::Duration;

    fn receipt(index: u32, seq: u64, duplicate: bool) -> Receipt {
        Receipt {
            index,
            pos: StreamPos { epoch: 0xab, seq },
            duplicate,
            written: 2,
            queued: 1,
            dropped: 0,
        }
    }

    #[test]
    fn receipts_come_in_request_order_with_made_and_given_ids() {
        let body = br#"{"events":[{"session":"s1","event":"e","data":1,"id":"given"},{"session":"s2","event":"e","data":2}]}"#;
        let batch = PublishParser::default().parse(body.to_vec(), 10).unwrap();
        let mut p = Published {
            batch: Arc::new(batch),
            receipts: vec![receipt(1, 7, false), receipt(0, 3, true)],
            id_shard: 1,
            id_base: 40,
            took: None,
        };
        let out = String::from_utf8(receipts_body(&mut p, "n0")).unwrap();
        assert_eq!(
            out,
            r#"{"accepted":2,"events":[{"session":"s1","seq":3,"epoch":"00000000000000ab","id":"given","duplicate":true},{"session":"s2","seq":7,"epoch":"00000000000000ab","id":"n0-1-41"}]}"#
        );
        p.took = Some(Duration::from_micros(12));
        let out = String::from_utf8(receipts_body(&mut p, "n0")).unwrap();
        assert!(out.ends_with(r#""written":2,"queued":1,"dropped":0}],"took_us":12}"#));
    }
}
