//! Each session's stream on its owning shard: the epoch, the last sequence number,
//! a bounded ring of recent event frames for resume, and the ids seen lately for
//! dedupe.
//!
//! Bounds: per session in events and bytes, per frame in age, and per shard in
//! total bytes (the node's cap divided among its shards). Frames in the ring are
//! the same `Rc`s the sockets were sent, so history costs no copy of an event.
//! A stream outlives its sockets for the history's age, so a client that drops and
//! comes back within it can resume.
//!
//! Rooms, each one job of [`History`] (one-way: a room uses only those above it):
//! - [`ring`]: one stream's frames; [`ids`]: one stream's dedupe window;
//! - `session`: one stream ([`SessionStream`]): its position and what it costs;
//! - `lifecycle`: the shard's streams ([`History`]): creation, lookup, sockets
//!   joining and leaving, linger, forgetting;
//! - `budget`: the shard-wide byte budget and the age order: which frames are
//!   kept ([`History::retain`]) and which go ([`History::sweep`]);
//! - `place`: sequencing and dedupe of local publishes ([`History::place`]);
//! - `reconcile`: positions learned from Redis ([`History::arrival`],
//!   [`History::rebase`], [`History::advance`], [`History::settle`]);
//! - `resume`: what a resuming client needs ([`History::resume`]).
//!
//! Pure bookkeeping on shard-local data: no I/O, no sockets, no Redis, and no
//! clock: every function that needs the time takes `now`. This file only names
//! the rooms and re-exports what the shard uses.

mod budget;
pub mod ids;
mod lifecycle;
mod place;
mod reconcile;
mod resume;
pub mod ring;
mod session;
#[cfg(test)]
mod testing;

pub use self::ids::MAX_IDS_PER_SESSION;
pub use self::lifecycle::{History, HistoryFigures};
pub use self::place::Placement;
pub use self::reconcile::Arrival;
pub use self::resume::Resume;
pub use self::session::SessionStream;
pub use crate::stream::{ResyncReason, StreamPos};
