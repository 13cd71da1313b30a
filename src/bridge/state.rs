//! The bridge thread's state ([`Bridge`]): where Redis is, the shards' queue,
//! which sessions are wanted by which shard, which are subscribed on the current
//! connection, and which are owed a resync; and its answers to shards, sent
//! through the [`Router`] like any other cross-core message.
//!
//! Owns the state and the answers only: it sends no Redis command (the loop in
//! `run`, the requests in `requests` and the subscriptions in `subscriptions`
//! do), and touches no shard state. Runs on the bridge thread, never on a shard
//! core, so it may wait briefly for a full inbox.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::Receiver;

use super::fetches::{FetchJob, Fetches};
use super::handle::{BridgeMsg, BridgeStatus, PublishRules};
use super::link::Target;
use crate::router::{Receipt, Router, ShardMsg};

/// Pause between tries when a shard's inbox is full.
const SEND_PAUSE: Duration = Duration::from_micros(200);

pub(super) struct Bridge {
    pub(super) target: Target,
    pub(super) rx: Receiver<BridgeMsg>,
    pub(super) wake: Arc<tokio::sync::Notify>,
    pub(super) status: Arc<BridgeStatus>,
    pub(super) router: Router,
    pub(super) rules: PublishRules,
    /// Sessions some local socket needs, with the shard that owns them.
    pub(super) wanted: HashMap<String, usize>,
    /// Sessions Redis confirmed we are subscribed to, on this connection.
    pub(super) subscribed: HashSet<String>,
    /// Sessions that may have missed events and whose resync did not reach their
    /// shard yet (its inbox was full).
    pub(super) owed_resync: HashSet<String>,
    /// This node's name in the receipts it sends.
    pub(super) node_tag: Arc<str>,
    /// Where this node's receipts come (subscribed on every connection).
    pub(super) reply_channel: Arc<str>,
    /// History reads waiting and in flight on the current link.
    pub(super) fetches: Fetches,
    /// This node's presence shares, and when other nodes were last heard.
    pub(super) presence: super::presence::PresenceState,
}

impl Bridge {
    pub(super) fn answer_fetch(&self, job: FetchJob, payloads: Option<Vec<Vec<u8>>>) {
        let msg = ShardMsg::Fetched {
            session: job.session,
            after: job.after,
            purposes: job.purposes,
            payloads,
        };
        self.tell(
            job.from,
            msg,
            "history could not be delivered; the socket stays pending",
        );
    }

    /// Sends a shard a message it waits for, retrying briefly while its inbox is
    /// full (it drains continuously); logs `failure` if it never fits.
    #[allow(clippy::disallowed_methods)] // the bridge thread, never a shard core
    pub(super) fn tell(&self, shard: usize, msg: ShardMsg, failure: &str) {
        if crate::offcore::send_retrying(&self.router, shard, msg, 100, SEND_PAUSE).is_err() {
            tracing::error!(shard, "{failure}");
        }
    }

    pub(super) fn answer(&self, shard: usize, id: u64, receipts: Option<Vec<Receipt>>) {
        let msg = ShardMsg::PublishDone { id, receipts };
        self.tell(
            shard,
            msg,
            "publish answer could not be delivered; the request times out",
        );
    }
}
