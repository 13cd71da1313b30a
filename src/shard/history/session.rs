//! One session's stream: its epoch and last sequence number, its ring and id
//! window, whether it is live and watched, and its sockets on this shard.
//!
//! Owns one stream's state and what that stream costs; the shard's streams, their
//! budget and their reconciliation with Redis are the other rooms' (this file
//! decides nothing for the shard). Pure: no I/O, no clock (the time it keeps,
//! `touched`, is given).

use std::time::Instant;

use super::ids::IdWindow;
use super::ring::{Ring, Usage};
use crate::stream::StreamPos;

/// What a stream costs besides its frames and ids, the session name's bytes
/// aside: the stream itself, boxed (its allocation and the allocator's header);
/// its slot in the shard's map, counted seven times: a hash map grows to twice its
/// buckets when, tombstones of forgotten streams taken, it is past half of seven
/// eighths full (so a slot per live stream can reach 2 / 0.4375 = 4.6), and while it
/// grows the old table is still there (6.9); the name's allocation header and
/// rounding; its entry in an idle queue, three times for stale entries and the
/// queue's doubling. The map holds boxes so that those seven slots are 25 bytes, not
/// a whole stream's. Measured by publishing to a million sessions nobody holds
/// under a memory cgroup (docs/reliability.md, fault 4): with these counts the
/// node's peak, not only its RSS after, stays within `RELAY_HISTORY_MEMORY` plus a
/// fixed amount.
pub(super) const STREAM_OVERHEAD: usize = std::mem::size_of::<SessionStream>()
    + 16
    + 7 * (std::mem::size_of::<(std::rc::Rc<str>, Box<SessionStream>)>() + 1)
    + 32
    + 3 * std::mem::size_of::<(Instant, std::rc::Rc<str>)>();

pub struct SessionStream {
    pub epoch: u64,
    /// The last event's sequence number (0: none yet).
    pub seq: u64,
    pub(super) ring: Ring,
    pub(super) ids: IdWindow,
    /// When the stream was made or its last socket left: a stream without sockets
    /// is forgotten some time after this, however busy (with Redis, that ends its
    /// subscription on a node nobody listens on).
    pub(super) touched: Instant,
    /// With Redis: the subscription is live and the position is known.
    pub live: bool,
    /// Sockets of the session on this shard; a stream with none lingers for the
    /// history's age, then is forgotten.
    pub sockets: u32,
    /// A socket joined this stream once: only then can a client hold a position in
    /// it to resume from, so only then are frames kept.
    pub(super) watched: bool,
}

impl SessionStream {
    /// A stream at `epoch` and `seq`, with no frames, ids or sockets, made `now`.
    pub(super) fn new(epoch: u64, seq: u64, live: bool, now: Instant) -> SessionStream {
        SessionStream {
            epoch,
            seq,
            ring: Ring::default(),
            ids: IdWindow::default(),
            touched: now,
            live,
            sockets: 0,
            watched: false,
        }
    }

    pub fn position(&self) -> StreamPos {
        StreamPos {
            epoch: self.epoch,
            seq: self.seq,
        }
    }

    /// The sequence number just before the ring's first frame: a resume from at
    /// least here can be replayed.
    pub(super) fn reach(&self) -> u64 {
        self.ring.reach(self.seq)
    }

    /// What the stream's ring and id window cost together.
    pub(super) fn usage(&self) -> Usage {
        let ring = self.ring.usage();
        Usage {
            frames: ring.frames,
            bytes: ring.bytes + self.ids.bytes(),
        }
    }
}
