//! The shards' side of the bridge: the handle they hold ([`BridgeHandle`]), the
//! messages they send it ([`BridgeMsg`], [`OutgoingEvent`]), what the publish
//! script needs from the configuration ([`PublishRules`]), the counters `/metrics`
//! and `/readyz` read ([`BridgeStatus`]), and why the bridge may not start
//! ([`BridgeError`]).
//!
//! Owns these types only: it knows nothing of Redis commands or of the bridge
//! thread's state, and never blocks (a full queue hands the message back).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use crossbeam_channel::{Sender, TrySendError};

use super::delivered::WireReceipt;
use crate::router::FetchPurpose;
use crate::stream::StreamPos;

/// Requests and subscription changes waiting for the bridge.
pub const BRIDGE_QUEUE: usize = 8192;

/// One event on its way to Redis, before Redis places it in its session's stream.
#[derive(Debug)]
pub struct OutgoingEvent {
    pub session: String,
    /// The payload around the position: see `ws::frame::remote_parts`.
    pub head: Vec<u8>,
    pub tail: Vec<u8>,
    /// The publisher's id (its JSON literal), for dedupe.
    pub id: Option<Vec<u8>>,
    /// With `?wait=delivered`: the request block published before the payload (see
    /// `delivered`); empty otherwise. Never kept in the history stream.
    pub reply: Vec<u8>,
}

/// What the publish script needs from the configuration.
#[derive(Debug, Clone, Copy)]
pub struct PublishRules {
    pub dedupe_secs: u64,
    /// Entries kept in each session's history stream; 0: no stream.
    pub history_len: usize,
}

/// What shards ask of the bridge.
#[derive(Debug)]
pub enum BridgeMsg {
    /// Place and publish `events`, then answer shard `from` with
    /// `ShardMsg::PublishDone { id }`. `epoch` starts a session Redis has no
    /// stream for.
    Publish {
        from: usize,
        id: u64,
        events: Vec<OutgoingEvent>,
        epoch: u64,
    },
    /// Read `session`'s history stream after `after`; answer `ShardMsg::Fetched`.
    Fetch {
        from: usize,
        session: String,
        after: StreamPos,
        purpose: FetchPurpose,
    },
    /// The session's position went back to `went_back` in Redis after shard `from`
    /// had reached `reached`: start a new epoch, then resync the session there.
    NewEpoch {
        from: usize,
        session: String,
        went_back: StreamPos,
        reached: u64,
    },
    /// The session's first local socket arrived on shard `from`.
    Subscribe { from: usize, session: String },
    /// The session's last local socket left.
    Unsubscribe { session: String },
    /// This node's share of `session`'s presence changed (the shard coalesces
    /// changes per interval): keep it in Redis and tell the session's other nodes.
    /// No users and no sockets: the node holds nothing of it any more.
    PresenceShare {
        session: String,
        users: Vec<(String, u32)>,
        sockets: u32,
    },
    /// Read every live node's share of `session` from Redis and answer shard
    /// `from`: with `id`, `ShardMsg::PresenceShares` (a query waits for it);
    /// without, `ShardMsg::PresenceRemote` (the session is new on this node).
    PresenceRead {
        from: usize,
        id: Option<u64>,
        session: String,
    },
    /// This node's counts for events a publisher elsewhere (or here) waits on:
    /// publish them on that node's reply `channel`.
    Delivered {
        channel: Box<str>,
        receipts: Vec<WireReceipt>,
    },
}

/// Why the bridge could not start.
#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    #[error("REDIS_URL is invalid: {0}")]
    Url(redis::RedisError),
    #[error("cannot start the bridge thread: {0}")]
    Thread(std::io::Error),
}

/// Counters the bridge keeps; read by `/metrics` and `/readyz` from any shard.
#[derive(Debug, Default)]
pub struct BridgeStatus {
    pub connected: AtomicBool,
    pub reconnects: AtomicU64,
    /// Messages from Redis shed because the bridge fell behind (each ends the
    /// link, and its sessions are settled again): `relay_redis_shed_total`.
    pub shed: Arc<AtomicU64>,
}

/// The shards' side of the bridge. Cheap to clone.
#[derive(Debug, Clone)]
pub struct BridgeHandle {
    pub(super) tx: Sender<BridgeMsg>,
    pub(super) wake: Arc<tokio::sync::Notify>,
    pub status: Arc<BridgeStatus>,
    /// This node's reply channel, where other nodes send `?wait=delivered` counts.
    pub(super) reply_channel: Arc<str>,
}

impl BridgeHandle {
    /// This node's reply channel (for the request blocks of waiting publishes).
    pub fn reply_channel(&self) -> &str {
        &self.reply_channel
    }

    /// Queues a message; hands it back when the bridge is behind.
    pub fn send(&self, msg: BridgeMsg) -> Result<(), BridgeMsg> {
        match self.tx.try_send(msg) {
            Ok(()) => {
                self.wake.notify_one();
                Ok(())
            }
            Err(TrySendError::Full(m)) | Err(TrySendError::Disconnected(m)) => Err(m),
        }
    }

    pub fn is_connected(&self) -> bool {
        self.status.connected.load(Ordering::Acquire)
    }
}
