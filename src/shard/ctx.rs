//! The narrow handle a connection loop holds on its shard ([`ConnCtx`]): the
//! settings, the read scratch buffer, the counters, and the few things a
//! connection may ask of the shard (place a socket, publish a batch, gather the
//! node's counters). `http::conn` and `ws::conn` see the shard only through it,
//! never its fields.
//!
//! It owns no state of its own and decides nothing: each call forwards to the
//! room of the shard that owns the job. Shard-local (`Rc`), like the shard.

use std::cell::RefMut;
use std::rc::Rc;
use std::sync::Arc;

use glommio::net::TcpStream;

use super::socket::SocketState;
use super::{Settings, Shard};
use crate::http::publish::{PublishBatch, PublishError};
use crate::http::response::Refusal;
use crate::limiter::{Limiters, SocketPermit};
use crate::metrics::{ShardStats, StatsSnapshot};
use crate::ws::upgrade::AcceptedUpgrade;

pub use super::publish::{AcceptError, Published};

/// What a connection loop may see and ask of its shard.
#[derive(Clone)]
pub struct ConnCtx {
    pub(super) shard: Rc<Shard>,
}

impl ConnCtx {
    pub(super) fn new(shard: Rc<Shard>) -> ConnCtx {
        ConnCtx { shard }
    }

    /// The reloadable settings now; hold the `Rc` for a consistent view.
    pub fn settings(&self) -> Rc<Settings> {
        self.shard.settings()
    }

    /// The shard's counters.
    pub fn stats(&self) -> &ShardStats {
        &self.shard.stats
    }

    /// The shard's read buffer, shared by every connection on it. Never hold it
    /// across an await.
    pub fn scratch(&self) -> RefMut<'_, Vec<u8>> {
        self.shard.read_scratch.borrow_mut()
    }

    /// The node's rate limiters and caps (connection slots among them).
    pub fn limiters(&self) -> &Arc<Limiters> {
        &self.shard.node.limiters
    }

    /// The node or this shard is draining: take nothing new.
    pub fn is_draining(&self) -> bool {
        self.shard.is_draining()
    }

    /// `/readyz` answers 503: a drain began, even while the node still serves.
    pub fn is_unready(&self) -> bool {
        self.shard.is_unready()
    }

    /// `/metrics` and `/latency` are served on the public port (no admin port).
    pub fn ops_on_public_port(&self) -> bool {
        self.shard.node.config.admin_port.is_none()
    }

    /// `--echo`: client text messages are sent back (a debugging aid).
    pub fn echo(&self) -> bool {
        self.shard.node.config.echo
    }

    /// The node uses Redis and its link is down (not ready).
    pub fn redis_down(&self) -> bool {
        self.shard
            .node
            .bridge
            .as_ref()
            .is_some_and(|b| !b.is_connected())
    }

    /// Gives a closing subscriber until `at` ([`mono_ms`](super::registry::mono_ms))
    /// to finish, after which housekeeping wakes its task to drop it.
    pub fn set_close_deadline(&self, state: &SocketState, at: u64) {
        state.close_deadline.set(at);
        self.shard.wake_at(state, at);
    }

    /// Has housekeeping wake the subscriber's task at `at` at the latest.
    pub fn wake_at(&self, state: &SocketState, at: u64) {
        self.shard.wake_at(state, at);
    }

    /// The prefix of relay-made event ids.
    pub fn node_tag(&self) -> &str {
        &self.shard.node.node_tag
    }

    /// Completes an accepted upgrade here or hands it to the session's owner. On
    /// refusal the stream comes back to write the refusal on; the permit is
    /// released either way when the socket ends.
    pub fn place_socket(
        &self,
        stream: TcpStream,
        upgrade: AcceptedUpgrade,
        permit: SocketPermit,
    ) -> Result<(), Box<(TcpStream, Refusal)>> {
        self.shard.place_socket(stream, upgrade, permit)
    }

    /// Validates a publish body with the shard's parser (its buffers are reused).
    pub fn parse_publish(
        &self,
        body: Vec<u8>,
        max_batch: usize,
    ) -> Result<PublishBatch, PublishError> {
        self.shard.parser.borrow_mut().parse(body, max_batch)
    }

    /// Publishes a validated batch and waits for its receipts.
    pub async fn publish(
        &self,
        batch: PublishBatch,
        wait_delivered: bool,
    ) -> Result<Published, AcceptError> {
        self.shard.publish(batch, wait_delivered).await
    }

    /// Answers `GET /sessions/{session}/presence` (asking the session's owner,
    /// and with Redis every live node's share).
    pub async fn presence(
        &self,
        query: crate::router::PresenceQuery,
    ) -> Result<Vec<u8>, super::PresenceUnavailable> {
        self.shard.presence_query(query).await
    }

    /// The counters of every shard, merged.
    pub async fn node_snapshot(&self) -> StatsSnapshot {
        self.shard.node_snapshot().await
    }
}
