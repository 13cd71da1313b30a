//! Redis names: a session's channel and keys (position, history stream, dedupe
//! ids), all under one fixed prefix with the session name as a Cluster hash tag,
//! so a session's channel and keys share a slot.
//!
//! Owns the naming only: pure string functions, no I/O. Session names reach here
//! validated; publisher ids are hashed, never used as they are.

/// Every session channel is this prefix plus the session name in braces (a Cluster
/// hash tag, so the channel and the session's keys share a slot).
pub const CHANNEL_PREFIX: &str = "relay:v1:s:";
/// Prefix of a session's keys: `relay:v1:{S}` (position), `relay:v1:{S}:h`
/// (history stream), `relay:v1:{S}:d:ID` (a dedupe id).
pub const KEY_PREFIX: &str = "relay:v1:";

/// Every node's reply channel (`?wait=delivered` receipts) is this prefix plus a
/// name of its own in braces; never a session channel.
pub const REPLY_PREFIX: &str = "relay:v1:r:";

/// Where every node says it is alive (presence), subscribed on every connection.
pub const HEARTBEAT_CHANNEL: &str = "relay:v1:hb";

/// The hash of a session's presence: one field per node (its tag), holding that
/// node's share (see `bridge::presence`).
pub fn presence_key(session: &str) -> String {
    format!("{KEY_PREFIX}{{{session}}}:p")
}

/// A node's heartbeat key: present while the node lives (it expires after the
/// presence node timeout).
pub fn node_key(node_tag: &str) -> String {
    format!("{KEY_PREFIX}n:{{{node_tag}}}")
}

/// The reply channel of a node: its tag and a random nonce (tags are short and
/// could repeat across a fleet).
pub fn reply_channel(node_tag: &str, nonce: u64) -> String {
    format!("{REPLY_PREFIX}{{{node_tag}-{nonce:016x}}}")
}

/// The channel of a session.
pub fn channel_of(session: &str) -> String {
    format!("{CHANNEL_PREFIX}{{{session}}}")
}

/// The session a channel belongs to.
pub(super) fn session_of(channel: &str) -> Option<&str> {
    channel
        .strip_prefix(CHANNEL_PREFIX)?
        .strip_prefix('{')?
        .strip_suffix('}')
}

/// The hash holding a session's epoch and last sequence number.
pub fn position_key(session: &str) -> String {
    format!("{KEY_PREFIX}{{{session}}}")
}

/// The stream holding a session's recent events (`--history redis`).
pub fn history_key(session: &str) -> String {
    format!("{KEY_PREFIX}{{{session}}}:h")
}

/// The key remembering one published id of a session. The id is hashed: ids are
/// publisher input, and keys stay short whatever they look like.
pub fn dedupe_key(session: &str, id: &[u8]) -> String {
    let h = xxhash_rust::xxh3::xxh3_128(id);
    format!("{KEY_PREFIX}{{{session}}}:d:{h:032x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_names_carry_the_fixed_prefix() {
        assert_eq!(channel_of("s1"), "relay:v1:s:{s1}");
        assert_eq!(session_of("relay:v1:s:{s1}"), Some("s1"));
        assert_eq!(session_of("relay:v1:s:s1"), None);
        assert_eq!(position_key("a:b"), "relay:v1:{a:b}");
        let reply = reply_channel("ab12cd", 255);
        assert_eq!(reply, "relay:v1:r:{ab12cd-00000000000000ff}");
        assert_eq!(session_of(&reply), None);
    }
}
