//! The Redis bridge: the only part of the relay that knows Redis exists.
//!
//! With `REDIS_URL` set, each node runs one bridge thread (a current-thread tokio
//! runtime driving redis-rs). Shards talk to it over a bounded crossbeam channel
//! ([`BridgeHandle::send`]); it talks to shards through the [`Router`], like any
//! other cross-core message.
//!
//! - **Publishing.** A shard hands over a validated request's events, encoded
//!   around their place in the stream; the bridge runs the publish script for every
//!   pending request's events in one pipeline, in arrival order. The script gives
//!   each event its session's next `seq` (and epoch), drops a retried id, keeps it
//!   in the session's Redis Stream with `--history redis`, and publishes it, all at
//!   once; each request is answered with its receipts only after Redis replied. The
//!   publishing node delivers its own events from its subscription, like every
//!   other node, so all nodes see one order and the same numbers.
//! - **Subscriptions follow session streams.** A shard asks for a session's channel
//!   when it makes the session's stream (its first local socket) and gives it up when
//!   it forgets the stream (the history's age after the last socket left); the
//!   bridge batches the changes and answers with each session's position. Channel
//!   names are a fixed prefix plus a validated session name in a hash tag; nothing
//!   user-supplied reaches a pattern subscription.
//! - **Outages.** Losing Redis (an error, a closed connection, or a ping that does
//!   not come back within its timeout) marks the node not ready, fails publishes
//!   fast, and reconnects with exponential backoff and jitter capped at 5 s. Back
//!   online, the bridge resubscribes the whole current set and sends every session's
//!   position; a shard whose stream fell behind catches up from the Redis Stream or
//!   resyncs its sockets (`{"type":"resync",…}`).
//! - **History.** `Fetch` reads a session's Redis Stream after a position, for a
//!   resuming socket or a catch-up, on a connection of its own, a few at a time and
//!   in short chunks, beside publishes: a burst of resumes never holds them up.
//! - **Delivery receipts across nodes.** A publish with `?wait=delivered` puts a
//!   request block before each event it publishes (not in the history stream). A
//!   node that delivers such an event sends its counts back with `Delivered`; the
//!   bridge publishes them on the publishing node's reply channel, which every
//!   bridge subscribes to, and hands the ones it receives to the waiting shard.
//!
//! - **Presence.** Each node's share of a session's presence (its users and
//!   sockets) is kept in the session's presence hash and published on the session's
//!   channel, marked so it never enters the event stream; nodes heartbeat, and a
//!   node not heard within `RELAY_PRESENCE_NODE_TIMEOUT` has its users leave on
//!   every other node (see `presence`).
//!
//! Every queue is bounded: the shard→bridge channel, and what the bridge keeps per
//! pending publish. Incoming events that a full shard inbox cannot take become a
//! resync for their session, never a silent loss.
//!
//! Rooms (one-way: a room uses only those listed before it):
//! - `delivered`: the request block and receipt formats of `?wait=delivered`;
//! - `handle`: what shards hold and send ([`BridgeHandle`], [`BridgeMsg`],
//!   [`OutgoingEvent`], [`PublishRules`], [`BridgeStatus`], [`BridgeError`]);
//! - `keys`: channel and key names; `scripts`: the Lua scripts and their replies;
//! - `link`: one connected period to Redis (standalone or Cluster) and its commands;
//!   `lost`: why a link ends, and the timeout its commands run under;
//! - `fetches`: history reads waiting and in flight, in chunks, beside publishes;
//!   `reader`: the connection they run on and the `XRANGE` reply's check;
//! - `presence`: each node's presence share of a session (a hash field, and a
//!   marked message on the session's channel), heartbeats, dead nodes;
//! - `state`: the bridge thread's state and its answers to shards;
//! - `subscriptions`: confirmations, incoming events, owed resyncs;
//! - `requests`: what shards queued, served or failed fast;
//! - `run`: [`start`] and the thread's connect/serve/back-off loop.
//!
//! This file only names the rooms and re-exports the paths callers use
//! (`crate::bridge::start`, `crate::bridge::BridgeMsg`, ...). No room touches
//! shard state: shards hear from the bridge only through the `Router`.

mod delivered;
mod fetches;
mod handle;
mod keys;
mod link;
mod lost;
mod presence;
mod pushes;
mod reader;
mod requests;
mod run;
mod scripts;
mod state;
mod subscriptions;

pub use self::delivered::{
    decode_receipts, encode_receipts, request_block, split_request, WireReceipt,
};
pub use self::handle::{
    BridgeError, BridgeHandle, BridgeMsg, BridgeStatus, OutgoingEvent, PublishRules, BRIDGE_QUEUE,
};
pub use self::keys::{
    channel_of, dedupe_key, history_key, position_key, reply_channel, CHANNEL_PREFIX, KEY_PREFIX,
    REPLY_PREFIX,
};
pub use self::run::start;
