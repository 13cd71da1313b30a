//! History reads on a connection of their own: `XRANGE` over a session's Redis
//! Stream, and the reply checked to continue a position without a gap. A burst of
//! resumes then never queues in front of a publish's script on one socket.
//!
//! Owns the read command and its reply's shape; which reads run when is
//! `fetches`', the connection is made by `link` with the rest of a connected
//! period (this module does not know `link`). Runs on the bridge thread only.

use redis::aio::MultiplexedConnection;
use redis::cluster_async::ClusterConnection;
use redis::Value;

use super::keys::history_key;
use super::lost::{bad_reply, timed, Lost};
use super::scripts::bytes;

/// A connection of the link's own for history reads ([`Reader::range`]), so their
/// replies never queue in front of a publish's on one socket. Cheap to clone: every
/// clone uses the same connection.
#[derive(Clone)]
pub enum Reader {
    Standalone(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl Reader {
    /// Up to `count` events of `session`'s history stream after `after_seq`, as
    /// published; `None` when the stream no longer continues from `after_seq`.
    pub async fn range(
        &self,
        session: &str,
        after_seq: u64,
        count: usize,
    ) -> Result<Option<Vec<Vec<u8>>>, Lost> {
        let mut cmd = redis::cmd("XRANGE");
        cmd.arg(history_key(session))
            .arg(format!("{}-0", after_seq + 1))
            .arg("+")
            .arg("COUNT")
            .arg(count);
        let reply: Value = match self.clone() {
            Reader::Standalone(mut c) => timed(cmd.query_async(&mut c)).await?,
            Reader::Cluster(mut c) => timed(cmd.query_async(&mut c)).await?,
        };
        range_payloads(reply, after_seq)
    }
}

/// The payloads of an `XRANGE` reply that continues `after_seq` without a gap;
/// `None` when the stream was trimmed past it (or has a hole).
fn range_payloads(reply: Value, after_seq: u64) -> Result<Option<Vec<Vec<u8>>>, Lost> {
    let Value::Array(entries) = reply else {
        return Err(bad_reply());
    };
    let mut payloads = Vec::with_capacity(entries.len());
    for (i, entry) in entries.into_iter().enumerate() {
        let Value::Array(parts) = entry else {
            return Err(bad_reply());
        };
        let mut parts = parts.into_iter();
        let id = parts
            .next()
            .as_ref()
            .and_then(bytes)
            .ok_or_else(bad_reply)?;
        let seq: u64 = std::str::from_utf8(&id)
            .ok()
            .and_then(|id| id.split('-').next()?.parse().ok())
            .ok_or_else(bad_reply)?;
        if seq != after_seq + 1 + i as u64 {
            // Trimmed, or a gap: the stream cannot bridge from `after_seq`.
            return Ok(None);
        }
        // The entry's one field's value, taken (not copied) out of the reply.
        let payload = match parts.next() {
            Some(Value::Array(fields)) => fields.into_iter().nth(1),
            Some(Value::Map(map)) => map.into_iter().next().map(|(_, v)| v),
            _ => None,
        };
        let payload = match payload {
            Some(Value::BulkString(b)) => b,
            Some(Value::SimpleString(s)) => s.into_bytes(),
            _ => return Err(bad_reply()),
        };
        payloads.push(payload);
    }
    Ok(Some(payloads))
}

#[cfg(test)]
mod tests {
    use super::{range_payloads, Value};

    fn entry(id: &str, payload: &str) -> Value {
        Value::Array(vec![
            Value::BulkString(id.as_bytes().to_vec()),
            Value::Array(vec![
                Value::BulkString(b"e".to_vec()),
                Value::BulkString(payload.as_bytes().to_vec()),
            ]),
        ])
    }

    #[test]
    fn a_range_that_continues_the_position_gives_its_payloads_in_order() {
        let reply = Value::Array(vec![entry("5-0", "five"), entry("6-0", "six")]);
        let got = range_payloads(reply, 4).expect("well formed");
        assert_eq!(got, Some(vec![b"five".to_vec(), b"six".to_vec()]));
        // RESP3 field maps too.
        let map = Value::Array(vec![Value::Array(vec![
            Value::BulkString(b"5-0".to_vec()),
            Value::Map(vec![(
                Value::BulkString(b"e".to_vec()),
                Value::BulkString(b"five".to_vec()),
            )]),
        ])]);
        assert_eq!(
            range_payloads(map, 4).expect("well formed"),
            Some(vec![b"five".to_vec()])
        );
        assert_eq!(
            range_payloads(Value::Array(vec![]), 4).expect("empty"),
            Some(vec![])
        );
    }

    #[test]
    fn a_trimmed_or_holed_range_cannot_bridge_and_a_strange_one_is_an_error() {
        // Trimmed: the first entry is not the one after the position.
        let trimmed = Value::Array(vec![entry("7-0", "seven")]);
        assert_eq!(range_payloads(trimmed, 4).expect("well formed"), None);
        let holed = Value::Array(vec![entry("5-0", "five"), entry("7-0", "seven")]);
        assert_eq!(range_payloads(holed, 4).expect("well formed"), None);
        assert!(range_payloads(Value::Int(3), 4).is_err());
        let no_payload = Value::Array(vec![Value::Array(vec![Value::BulkString(b"5-0".to_vec())])]);
        assert!(range_payloads(no_payload, 4).is_err());
    }
}
