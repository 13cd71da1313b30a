//! The relay's Lua scripts and the reading of their replies: the publish script
//! (place, dedupe, keep, publish: one atomic run per batch), the position script
//! (a session's place, starting its stream if Redis has none) and the new-epoch
//! script (after Redis lost writes), with the time Redis keeps a position.
//!
//! Owns the scripts' text and their reply formats only: pure, no I/O; the calls
//! are `link`'s.

use redis::Value;

use crate::stream::StreamPos;

/// Gives events their places in their sessions' streams and publishes them,
/// atomically, so every node sees the same `seq` for the same event. A retried id
/// within the dedupe window gets its first sequence number back and is not
/// published again. One run places a whole batch: against a standalone Redis the
/// bridge sends every waiting event in a few runs (Redis's cost is then the
/// commands, not a script call per event); a Cluster gets one run per event, whose
/// keys and channel share the session's hash tag and so one slot.
///
/// KEYS, three per event: the session's position hash (`e` epoch, `n` last seq),
/// the dedupe key of the event's id, the session's history stream.
/// ARGV: 1 the epoch to start a stream with if it has none, 2 the dedupe window
/// (s), 3 the position's time to live (s), 4 the history stream's length (`0`: no
/// stream), 5 `PUBLISH` or `SPUBLISH`; then five per event: its channel, the payload
/// before the seq, the payload after the epoch, `1` when it has an id, and a block
/// to publish before the payload (`?wait=delivered`; usually empty, never kept).
/// Returns `{epoch, seq, duplicate, receivers}` per event, flattened: `receivers`
/// is what `PUBLISH` answered (the nodes subscribed), 0 for a duplicate.
pub(super) const PUBLISH_SCRIPT: &str = r#"
local out = {}
for i = 0, #KEYS / 3 - 1 do
  local pos, dedupe, hist = KEYS[3 * i + 1], KEYS[3 * i + 2], KEYS[3 * i + 3]
  local a = 5 + 5 * i
  local e = redis.call('HGET', pos, 'e')
  if not e then
    e = ARGV[1]
    redis.call('HSET', pos, 'e', e, 'n', 0)
    redis.call('DEL', hist)
  end
  local prev = false
  if ARGV[a + 4] == '1' then
    prev = redis.call('GET', dedupe)
  end
  if prev then
    out[#out + 1] = e
    out[#out + 1] = tonumber(prev)
    out[#out + 1] = 1
    out[#out + 1] = 0
  else
    local n = redis.call('HINCRBY', pos, 'n', 1)
    redis.call('EXPIRE', pos, ARGV[3])
    if ARGV[a + 4] == '1' then
      redis.call('SET', dedupe, n, 'EX', ARGV[2])
    end
    local msg = ARGV[a + 2] .. n .. ',"epoch":"' .. e .. '"' .. ARGV[a + 3]
    if ARGV[4] ~= '0' then
      redis.call('XADD', hist, 'MAXLEN', '~', ARGV[4], n .. '-1', 'm', msg)
      redis.call('EXPIRE', hist, ARGV[3])
    end
    local sent = msg
    if ARGV[a + 5] ~= '' then
      sent = ARGV[a + 5] .. msg
    end
    local receivers = redis.call(ARGV[5], ARGV[a + 1], sent)
    out[#out + 1] = e
    out[#out + 1] = n
    out[#out + 1] = 0
    out[#out + 1] = receivers
  end
end
return out
"#;

/// Events placed by one run of the publish script at most: a script blocks Redis
/// while it runs, so a big backlog goes in several runs (≈ 1–3 ms each).
pub(super) const EVENTS_PER_RUN: usize = 256;

/// A session's current position, starting its stream (new epoch) if Redis has none
/// (first use, expiry, or a Redis that lost its data).
/// KEYS: 1 position hash, 2 history stream. ARGV: 1 epoch for a new stream, 2 ttl (s).
pub(super) const POSITION_SCRIPT: &str = r#"
local e = redis.call('HGET', KEYS[1], 'e')
if not e then
  e = ARGV[1]
  redis.call('HSET', KEYS[1], 'e', e, 'n', 0)
  redis.call('EXPIRE', KEYS[1], ARGV[2])
  redis.call('DEL', KEYS[2])
end
return {e, tonumber(redis.call('HGET', KEYS[1], 'n'))}
"#;

/// Starts a new epoch for a session whose position went back (Redis lost writes:
/// the numbers after it would be given again, so no client may resume across it),
/// unless another node did already.
/// KEYS: 1 position hash, 2 history stream. ARGV: 1 the epoch that went back, 2 the
/// seq a node had reached in it, 3 the new epoch, 4 ttl (s). Returns `{epoch, seq}`.
pub(super) const NEW_EPOCH_SCRIPT: &str = r#"
local e = redis.call('HGET', KEYS[1], 'e')
local n = tonumber(redis.call('HGET', KEYS[1], 'n') or '0')
if e == ARGV[1] and n < tonumber(ARGV[2]) then
  e = ARGV[3]
  redis.call('HSET', KEYS[1], 'e', e)
  redis.call('EXPIRE', KEYS[1], ARGV[4])
  redis.call('DEL', KEYS[2])
end
return {e, n}
"#;

/// How long Redis keeps a session's position after its last event.
pub(super) const POSITION_TTL_SECS: u64 = 24 * 3600;

/// What the publish script answered for one event.
#[derive(Debug, Clone, Copy)]
pub struct Placed {
    pub pos: StreamPos,
    pub duplicate: bool,
    /// Nodes subscribed to the session's channel when it was published.
    pub receivers: u32,
}

pub(super) fn int(v: &Value) -> Option<u64> {
    match v {
        Value::Int(n) => u64::try_from(*n).ok(),
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        Value::SimpleString(s) => s.parse().ok(),
        _ => None,
    }
}

/// `{epoch, seq[, duplicate]}` from a script's reply.
pub(super) fn placed(items: &[Value]) -> Option<Placed> {
    let epoch = u64::from_str_radix(std::str::from_utf8(&bytes(items.first()?)?).ok()?, 16).ok()?;
    let seq = int(items.get(1)?)?;
    let duplicate = items.get(2).and_then(int) == Some(1);
    let receivers = items.get(3).and_then(int).unwrap_or(0);
    Some(Placed {
        pos: StreamPos { epoch, seq },
        duplicate,
        receivers: u32::try_from(receivers).unwrap_or(u32::MAX),
    })
}

/// Every event's `{epoch, seq, duplicate, receivers}` from a publish run's flat
/// reply.
pub(super) fn placed_all(v: &Value, out: &mut Vec<Placed>) -> Option<()> {
    let Value::Array(items) = v else { return None };
    if items.len() % 4 != 0 {
        return None;
    }
    for four in items.chunks(4) {
        // Every event answers its receivers (0 for a duplicate).
        int(&four[3])?;
        out.push(placed(four)?);
    }
    Some(())
}

pub(super) fn bytes(v: &Value) -> Option<Vec<u8>> {
    match v {
        Value::BulkString(b) => Some(b.clone()),
        Value::SimpleString(s) => Some(s.clone().into_bytes()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn epoch(hex: &[u8]) -> Value {
        Value::BulkString(hex.to_vec())
    }

    #[test]
    fn a_publish_reply_gives_each_event_its_place() {
        let reply = Value::Array(vec![
            epoch(b"00000000000000ff"),
            Value::Int(7),
            Value::Int(0),
            Value::Int(3),
            epoch(b"00000000000000ff"),
            Value::BulkString(b"3".to_vec()),
            Value::Int(1),
            Value::Int(0),
        ]);
        let mut out = Vec::new();
        assert_eq!(placed_all(&reply, &mut out), Some(()));
        let got: Vec<(StreamPos, bool, u32)> = out
            .iter()
            .map(|p| (p.pos, p.duplicate, p.receivers))
            .collect();
        assert_eq!(
            got,
            [
                (StreamPos { epoch: 255, seq: 7 }, false, 3),
                (StreamPos { epoch: 255, seq: 3 }, true, 0),
            ]
        );
        // A position script's `{epoch, seq}`: no duplicate flag.
        let pos = placed(&[epoch(b"a"), Value::Int(0)]).map(|p| (p.pos, p.duplicate));
        assert_eq!(pos, Some((StreamPos { epoch: 10, seq: 0 }, false)));
    }

    #[test]
    fn a_malformed_reply_is_refused() {
        let mut out = Vec::new();
        let short = Value::Array(vec![epoch(b"ff"), Value::Int(1)]);
        assert_eq!(placed_all(&short, &mut out), None, "not a multiple of four");
        assert_eq!(placed_all(&Value::Int(1), &mut out), None, "not an array");
        let not_hex = Value::Array(vec![
            epoch(b"zz"),
            Value::Int(1),
            Value::Int(0),
            Value::Int(0),
        ]);
        assert_eq!(placed_all(&not_hex, &mut out), None);
        assert_eq!(int(&Value::Int(-1)), None, "a negative seq");
    }
}
