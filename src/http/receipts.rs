//! The 202's body: a receipt per accepted event, in request order.
//!
//! Renders what the shard answered ([`Published`]) as JSON, written by hand with
//! the stream module's number writers (no serde on the publish path). Owns only
//! the bytes; it decides nothing about delivery.

use crate::router::{DeliveredCounts, NodeDelivery, Receipt};
use crate::shard::ctx::Published;
use crate::stream::{push_decimal, push_hex16};

/// `{"accepted":N,"events":[{"session","seq","epoch","id"[,"duplicate"]
/// [,"written","queued","dropped"[,"nodes":[...],"nodes_late"]]}...][,"took_us":T]}`,
/// in request order. `node_tag` is the prefix of relay-made ids.
pub fn receipts_body(published: &mut Published, node_tag: &str) -> Vec<u8> {
    let Published {
        batch,
        receipts,
        id_shard,
        id_base,
        took,
        nodes,
    } = published;
    receipts.sort_unstable_by_key(|r| r.index);
    if let Some(nodes) = nodes.as_mut() {
        nodes.sort_unstable_by(|a, b| (a.index, &a.node).cmp(&(b.index, &b.node)));
    }
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
        let of_event = nodes.as_deref().map(|all| {
            let start = all.partition_point(|d| d.index < r.index);
            let end = all.partition_point(|d| d.index <= r.index);
            &all[start..end]
        });
        push_receipt(
            &mut out,
            batch.session(ev),
            r,
            took.is_some(),
            of_event,
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
/// `nodes`: through Redis, the nodes' counts (summed into the event's, listed, and
/// the missing ones counted against `r.receivers`).
fn push_receipt(
    out: &mut Vec<u8>,
    session: &str,
    r: &Receipt,
    counts: bool,
    nodes: Option<&[NodeDelivery]>,
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
        let mut total = DeliveredCounts {
            written: r.written,
            queued: r.queued,
            dropped: r.dropped,
        };
        for d in nodes.unwrap_or_default() {
            total.written = total.written.saturating_add(d.counts.written);
            total.queued = total.queued.saturating_add(d.counts.queued);
            total.dropped = total.dropped.saturating_add(d.counts.dropped);
        }
        push_counts(out, &total);
        if let Some(nodes) = nodes {
            out.extend_from_slice(br#","nodes":["#);
            for (i, d) in nodes.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(br#"{"node":""#);
                out.extend_from_slice(d.node.as_bytes());
                out.push(b'"');
                push_counts(out, &d.counts);
                out.push(b'}');
            }
            out.extend_from_slice(br#"],"nodes_late":"#);
            push_decimal(
                out,
                u64::from(r.receivers).saturating_sub(nodes.len() as u64),
            );
        }
    }
    out.push(b'}');
}

/// `,"written":W,"queued":Q,"dropped":D`.
fn push_counts(out: &mut Vec<u8>, c: &DeliveredCounts) {
    out.extend_from_slice(br#","written":"#);
    push_decimal(out, u64::from(c.written));
    out.extend_from_slice(br#","queued":"#);
    push_decimal(out, u64::from(c.queued));
    out.extend_from_slice(br#","dropped":"#);
    push_decimal(out, u64::from(c.dropped));
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
            receivers: 0,
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
            nodes: None,
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

    #[test]
    fn through_redis_each_event_lists_its_nodes_and_counts_the_late_ones() {
        let body = br#"{"events":[{"session":"s1","event":"e","data":1,"id":"a"},{"session":"s1","event":"e","data":2,"id":"b"}]}"#;
        let batch = PublishParser::default().parse(body.to_vec(), 10).unwrap();
        let placed = |index, receivers| Receipt {
            written: 0,
            queued: 0,
            receivers,
            ..receipt(index, u64::from(index) + 1, false)
        };
        let node = |name: &str, index, written| NodeDelivery {
            node: name.into(),
            index,
            counts: DeliveredCounts {
                written,
                queued: 1,
                dropped: 0,
            },
        };
        let mut p = Published {
            batch: Arc::new(batch),
            receipts: vec![placed(1, 3), placed(0, 2)],
            id_shard: 0,
            id_base: 0,
            took: Some(Duration::from_micros(900)),
            nodes: Some(vec![node("n2", 0, 4), node("n1", 1, 2), node("n1", 0, 3)]),
        };
        let out = String::from_utf8(receipts_body(&mut p, "n0")).unwrap();
        assert_eq!(
            out,
            concat!(
                r#"{"accepted":2,"events":["#,
                r#"{"session":"s1","seq":1,"epoch":"00000000000000ab","id":"a","written":7,"queued":2,"dropped":0,"#,
                r#""nodes":[{"node":"n1","written":3,"queued":1,"dropped":0},{"node":"n2","written":4,"queued":1,"dropped":0}],"nodes_late":0},"#,
                r#"{"session":"s1","seq":2,"epoch":"00000000000000ab","id":"b","written":2,"queued":1,"dropped":0,"#,
                r#""nodes":[{"node":"n1","written":2,"queued":1,"dropped":0}],"nodes_late":2}],"#,
                r#""took_us":900}"#
            )
        );
    }
}
