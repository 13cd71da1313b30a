//! The shard's run loop and its inbox: accept loops, the doorbell-driven inbox
//! loop, the one `handle` match over every [`crate::router::ShardMsg`], drain, and
//! the scatter-gather of counters for a scrape.
//!
//! It decides nothing itself: each message goes to the room of its job
//! (`deliver`, `catch_up`, `sockets`, `publish`). Runs only on the shard's own
//! executor.

use super::publish::owe_receipt;
use super::registry::SocketState;
use super::tasks::spawn_guarded;
use super::{IdSource, Settings, Shard, SNAPSHOT_TIMEOUT};
use crate::bridge::WireReceipt;
use crate::clock::unix_now_ns;
use crate::metrics::{RedisFigures, StatsSnapshot};
use crate::router::ShardMsg;
use crate::ws::close::Disconnect;
use crate::ws::frame::frame_from_remote;
use glommio::net::TcpListener;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

impl Shard {
    /// Runs the shard until it has drained. `listeners` are (listener, is_admin).
    pub async fn run(self: Rc<Self>, listeners: Vec<(TcpListener, bool)>) {
        let mut accept_tasks = Vec::new();
        for (listener, admin) in listeners {
            let shard = self.clone();
            accept_tasks.push(glommio::spawn_local(accept_loop(shard, listener, admin)));
        }
        let inbox_shard = self.clone();
        glommio::spawn_local(async move { inbox_shard.inbox_loop().await }).detach();
        let hk = self.clone();
        glommio::spawn_local(async move { hk.housekeeping().await }).detach();
        let flusher = self.clone();
        glommio::spawn_local(async move { flusher.flusher().await }).detach();
        glommio::spawn_local(self.clone().drive_parked()).detach();

        let _ = self.drain_signal.acquire(1).await;
        // Unready first (the node's flag, set by the signal thread), still serving,
        // so load balancers stop sending before anything is refused or closed.
        let limits = self.settings().live.limits.clone();
        let deadline = Instant::now() + limits.drain_timeout;
        if !limits.drain_ready_delay.is_zero() {
            glommio::timer::sleep(limits.drain_ready_delay).await;
        }
        self.draining.set(true);
        for t in accept_tasks {
            t.cancel().await;
        }
        let pending = self.registry.borrow_mut().take_pending_since(u64::MAX);
        for hello in pending {
            self.abandon(hello, Disconnect::Draining);
        }
        let sockets: Vec<Rc<SocketState>> = self.registry.borrow().all().cloned().collect();
        let spread = limits
            .drain_spread()
            .min(deadline.saturating_duration_since(Instant::now()));
        tracing::info!(
            shard = self.id,
            sockets = sockets.len(),
            ?spread,
            "draining"
        );
        self.clone().close_spread(sockets, spread).await;
        while self.registry.borrow().socket_count() > 0 && Instant::now() < deadline {
            glommio::timer::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits on the doorbell and handles every message in the inbox.
    pub(super) async fn inbox_loop(self: Rc<Self>) {
        let mut waiter = match self.inbox.waiter() {
            Ok(w) => w,
            Err(e) => {
                tracing::error!(shard = self.id, error = %e, "cannot watch the inbox");
                return;
            }
        };
        loop {
            waiter.rearm();
            self.drain_inbox();
            if let Err(e) = waiter.wait().await {
                tracing::error!(shard = self.id, error = %e, "inbox doorbell broke");
                return;
            }
        }
    }

    /// Handles every message waiting in the inbox. Also called before a local
    /// delivery, so events routed here earlier go out first.
    pub fn drain_inbox(self: &Rc<Self>) {
        while let Ok(msg) = self.inbox.rx.try_recv() {
            let reserved = match &msg {
                ShardMsg::Deliver(d) => d.reserved_bytes,
                _ => 0,
            };
            self.handle(msg);
            self.inbox.budget.release(reserved);
        }
    }

    pub(super) fn handle(self: &Rc<Self>, msg: ShardMsg) {
        match msg {
            ShardMsg::Deliver(d) => {
                let ids = IdSource {
                    shard: d.id_shard,
                    base: d.id_base,
                };
                let mut receipts = Vec::with_capacity(d.events.len());
                for &i in &d.events {
                    if let Some(r) = self.deliver(&d.batch, i, d.accepted_at, ids, d.wait_delivered)
                    {
                        receipts.push(r);
                    }
                }
                if let Some((from, id)) = d.reply {
                    let reply = ShardMsg::Sequenced { id, receipts };
                    // Room for the reply was reserved when the publish was
                    // dispatched: this never waits (see `Router::dispatch`).
                    let sent = self.node.router.send_reserved(from, reply);
                    if sent.is_err() {
                        tracing::error!(
                            shard = self.id,
                            "receipts not sent; the publish times out"
                        );
                    }
                }
            }
            ShardMsg::Adopt(a) => self.adopt(*a),
            ShardMsg::Remote { events } => {
                let now = Instant::now();
                let now_ns = unix_now_ns();
                let mut owed: Vec<(Box<str>, Vec<WireReceipt>)> = Vec::new();
                for ev in events {
                    let Some((frame, pos)) = frame_from_remote(&ev.payload, now_ns, now) else {
                        tracing::warn!(shard = self.id, "malformed event from redis dropped");
                        continue;
                    };
                    let counts =
                        self.deliver_remote(&ev.session, frame, pos, now, ev.reply.is_some());
                    if let Some(reply) = ev.reply {
                        owe_receipt(&mut owed, *reply, counts);
                    }
                }
                self.send_receipts(owed);
            }
            ShardMsg::Delivered { id, deliveries } => {
                let n = deliveries.len();
                self.deliveries.answer_many(id, n, |d| d.extend(deliveries));
            }
            ShardMsg::Sequenced { id, receipts } => {
                self.publishes.answer(id, |r| r.extend(receipts));
            }
            ShardMsg::PublishDone { id, receipts } => match receipts {
                Some(more) => self.publishes.finish(id, |r| r.extend(more)),
                None => self.publishes.fail(id),
            },
            ShardMsg::Subscribed { sessions } => {
                for (session, pos) in sessions {
                    self.settle_or_catch_up(&session, pos);
                    self.greet_pending(&session);
                }
            }
            ShardMsg::Resync { sessions } => {
                for (session, pos) in sessions {
                    if self.history.borrow().get(&session).is_some() {
                        self.settle_or_catch_up(&session, pos);
                    }
                }
            }
            ShardMsg::Fetched {
                session,
                after,
                purposes,
                payloads,
            } => self.fetched(&session, after, purposes, payloads),
            ShardMsg::SnapshotRequest { from, id } => {
                let snapshot = Box::new(self.snapshot());
                let reply = ShardMsg::SnapshotReply { id, snapshot };
                if let Err((e, _)) = self.node.router.send(from, reply) {
                    tracing::warn!(shard = self.id, error = %e, "snapshot reply not sent");
                }
            }
            ShardMsg::SnapshotReply { id, snapshot } => {
                self.snapshots.answer(id, |m| m.merge(&snapshot));
            }
            ShardMsg::Reload(config) => {
                let before = self.settings();
                *self.settings.borrow_mut() = Rc::new(Settings::new(config));
                let after = self.settings();
                if before.live.transports != after.live.transports {
                    self.retire_transports(after.live.transports);
                }
                let (old, new) = (&before.live.limits, &after.live.limits);
                if new.ping_interval < old.ping_interval || new.ping_timeout < old.ping_timeout {
                    self.reschedule_all();
                }
            }
            ShardMsg::PresenceQuery { from, id, query } => {
                let body = self.presence_answer(&query);
                let reply = ShardMsg::PresenceAnswer { id, body };
                if let Err((e, _)) = self.node.router.send(from, reply) {
                    tracing::warn!(shard = self.id, error = %e, "presence answer not sent");
                }
            }
            ShardMsg::PresenceAnswer { id, body } => {
                self.presence_answers.answer(id, |a| *a = Some(body));
            }
            ShardMsg::PresenceShares { id, shares } => {
                self.presence_reads.answer(id, |a| *a = shares);
            }
            ShardMsg::PresenceRemote { shares } => self.presence_remote(shares),
            ShardMsg::PresenceNodesDead { nodes } => self.presence_nodes_dead(nodes),
            ShardMsg::Drain => {
                // `run` stops taking new work after the ready delay.
                self.drain_signal.signal(1);
            }
        }
    }

    /// This shard's counters, with its history's figures.
    pub(super) fn snapshot(&self) -> StatsSnapshot {
        let figures = self.history.borrow().figures();
        self.stats.history_bytes.set(figures.bytes as u64);
        self.stats.history_sessions.set(figures.sessions as u64);
        self.stats.history_evicted.set(figures.evicted);
        let presence = self.presence.borrow();
        let p = &self.stats.presence;
        p.users.set(presence.entries() as u64);
        p.sessions.set(presence.session_count() as u64);
        p.untracked.set(presence.untracked());
        drop(presence);
        self.stats.snapshot()
    }

    /// Counters of every shard, merged. Waits at most [`SNAPSHOT_TIMEOUT`] for the
    /// others; a wedged shard leaves its part out rather than hanging the scrape.
    pub async fn node_snapshot(self: &Rc<Self>) -> StatsSnapshot {
        let mut merged = self.snapshot();
        merged.redis = self.node.bridge.as_ref().map(|b| RedisFigures {
            connected: b.is_connected(),
            reconnects: b.status.reconnects.load(Ordering::Relaxed),
            shed: b.status.shed.load(Ordering::Relaxed),
        });
        let shards = self.node.router.shards();
        if shards == 1 {
            return merged;
        }
        // Registered before asking, so no reply can arrive for an unknown id; the
        // count is settled once the sends are done.
        let id = self.snapshots.open(shards - 1, StatsSnapshot::default());
        for to in (0..shards).filter(|&s| s != self.id) {
            let ask = ShardMsg::SnapshotRequest { from: self.id, id };
            if self.node.router.send(to, ask).is_err() {
                // Nobody will answer for that shard.
                self.snapshots.answer(id, |_| {});
            }
        }
        if let Some(s) = self.snapshots.wait(id, SNAPSHOT_TIMEOUT).await {
            merged.merge(&s.value);
        }
        merged
    }
}

pub(super) async fn accept_loop(shard: Rc<Shard>, listener: TcpListener, admin: bool) {
    loop {
        match listener.accept().await {
            Ok(stream) => {
                let _ = stream.set_nodelay(true);
                let ctx = super::ctx::ConnCtx::new(shard.clone());
                spawn_guarded(
                    shard.id,
                    "http",
                    crate::http::conn::serve(ctx, stream, admin),
                );
            }
            Err(e) => {
                // Out of descriptors or memory: back off instead of spinning.
                tracing::warn!(shard = shard.id, error = %e, "accept failed");
                glommio::timer::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}
