//! A position in a session's stream, and how positions are spelled on the wire.
//!
//! [`StreamPos`] is shared by the shard's history, the frame encoder, the upgrade
//! parser, the router's messages and the Redis bridge, so it lives here, below all
//! of them: this module imports nothing of the crate. Pure: no I/O, no clock.

/// A point in a session's stream: after the event `seq` of epoch `epoch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StreamPos {
    pub epoch: u64,
    pub seq: u64,
}

/// Why a client was told to resync instead of getting a replay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResyncReason {
    /// The client's epoch is not the stream's (a restart, or Redis lost state).
    Epoch,
    /// The history no longer reaches back to the client's position.
    History,
    /// This node missed events (a gap in the sequence, or Redis was away).
    Gap,
    /// The subscriber could not keep up and `RELAY_SLOW_CONSUMER=skip` dropped
    /// its oldest queued events.
    Slow,
}

impl ResyncReason {
    pub const ALL: [ResyncReason; 4] = [
        ResyncReason::Epoch,
        ResyncReason::History,
        ResyncReason::Gap,
        ResyncReason::Slow,
    ];

    pub fn metric_reason(self) -> &'static str {
        match self {
            ResyncReason::Epoch => "epoch",
            ResyncReason::History => "history",
            ResyncReason::Gap => "gap",
            ResyncReason::Slow => "slow",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }
}

/// `since=EPOCH:SEQ`, with the epoch as 16 hex digits.
pub fn parse_since(value: &str) -> Option<StreamPos> {
    // URLSearchParams spells the colon %3A.
    let (epoch, seq) = value
        .split_once("%3A")
        .or_else(|| value.split_once("%3a"))
        .or_else(|| value.split_once([':', '.']))?;
    if epoch.is_empty() || epoch.len() > 16 || seq.is_empty() || seq.len() > 20 {
        return None;
    }
    Some(StreamPos {
        epoch: u64::from_str_radix(epoch, 16).ok()?,
        seq: seq.parse().ok()?,
    })
}

/// Appends `n` as 16 lowercase hex digits: how epochs are spelled everywhere.
pub fn push_hex16(p: &mut Vec<u8>, n: u64) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 16];
    for (i, d) in out.iter_mut().enumerate() {
        *d = DIGITS[((n >> (60 - 4 * i)) & 0xf) as usize];
    }
    p.extend_from_slice(&out);
}

/// Appends `n` in decimal.
pub fn push_decimal(p: &mut Vec<u8>, n: u64) {
    p.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_parses_both_spellings() {
        assert_eq!(
            parse_since("00ff:12"),
            Some(StreamPos {
                epoch: 255,
                seq: 12
            })
        );
        assert_eq!(parse_since("ff.0"), Some(StreamPos { epoch: 255, seq: 0 }));
        for bad in [
            "",
            ":",
            "ff:",
            ":1",
            "zz:1",
            "ff:-1",
            "11111111111111111:1",
            "ff:1:2",
        ] {
            assert_eq!(parse_since(bad), None, "{bad}");
        }
    }

    #[test]
    fn epochs_are_sixteen_hex_digits() {
        let mut out = Vec::new();
        push_hex16(&mut out, 0xab);
        assert_eq!(out, b"00000000000000ab");
        out.clear();
        push_decimal(&mut out, 1234);
        assert_eq!(out, b"1234");
    }
}
