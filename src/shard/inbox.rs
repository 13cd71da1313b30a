//! The shard's run loop and its inbox: accept loops, the doorbell-driven inbox
//! loop, the one `handle` match over every [`crate::router::ShardMsg`], drain, and
//! the scatter-gather of counters for a scrape.
//!
//! It decides nothing itself: each message goes to the room of its job
//! (`deliver`, `catch_up`, `sockets`, `publish`). Runs only on the shard's own
//! executor.

use super::registry::SocketState;
use super::tasks::spawn_guarded;
use super::{IdSource, PendingSnapshot, Settings, Shard, SNAPSHOT_TIMEOUT};
use crate::clock::unix_now_ns;
use crate::metrics::{RedisFigures, StatsSnapshot};
use crate::router::ShardMsg;
use crate::ws::close::Disconnect;
use crate::ws::frame::frame_from_remote;
use glommio::net::TcpListener;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::task::Poll;
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

        let _ = self.drain_signal.acquire(1).await;
        self.draining.set(true);
        for t in accept_tasks {
            t.cancel().await;
        }
        let pending = self.registry.borrow_mut().take_pending_since(u64::MAX);
        for hello in pending {
            self.abandon(hello, Disconnect::Draining);
        }
        let sockets: Vec<Rc<SocketState>> = self.registry.borrow().all().cloned().collect();
        tracing::info!(shard = self.id, sockets = sockets.len(), "draining");
        for s in &sockets {
            s.request_close(Disconnect::Draining);
        }
        drop(sockets);
        let deadline = Instant::now() + self.settings().live.limits.drain_timeout;
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
                for ev in events {
                    match frame_from_remote(&ev.payload, now_ns, now) {
                        Some((frame, pos)) => self.deliver_remote(&ev.session, frame, pos, now),
                        None => {
                            tracing::warn!(shard = self.id, "malformed event from redis dropped")
                        }
                    }
                }
            }
            ShardMsg::Sequenced { id, receipts } => {
                if let Some(p) = self.pending_publishes.borrow_mut().get_mut(&id) {
                    p.receipts.extend(receipts);
                    p.remaining = p.remaining.saturating_sub(1);
                    if p.remaining == 0 {
                        if let Some(w) = p.waker.take() {
                            w.wake();
                        }
                    }
                }
            }
            ShardMsg::PublishDone { id, receipts } => {
                if let Some(p) = self.pending_publishes.borrow_mut().get_mut(&id) {
                    match receipts {
                        Some(r) => p.receipts.extend(r),
                        None => p.failed = true,
                    }
                    p.remaining = 0;
                    if let Some(w) = p.waker.take() {
                        w.wake();
                    }
                }
            }
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
                purpose,
                payloads,
            } => self.fetched(&session, after, purpose, payloads),
            ShardMsg::SnapshotRequest { from, id } => {
                let snapshot = Box::new(self.snapshot());
                let reply = ShardMsg::SnapshotReply { id, snapshot };
                if let Err((e, _)) = self.node.router.send(from, reply) {
                    tracing::warn!(shard = self.id, error = %e, "snapshot reply not sent");
                }
            }
            ShardMsg::SnapshotReply { id, snapshot } => {
                if let Some(p) = self.pending_snapshots.borrow_mut().get_mut(&id) {
                    p.merged.merge(&snapshot);
                    p.remaining = p.remaining.saturating_sub(1);
                    if p.remaining == 0 {
                        if let Some(w) = p.waker.take() {
                            w.wake();
                        }
                    }
                }
            }
            ShardMsg::Reload(config) => {
                *self.settings.borrow_mut() = Rc::new(Settings::new(config));
            }
            ShardMsg::Drain => {
                self.draining.set(true);
                self.drain_signal.signal(1);
            }
        }
    }

    /// This shard's counters, with its history's figures.
    pub(super) fn snapshot(&self) -> StatsSnapshot {
        let figures = self.history.borrow().figures();
        self.stats.history_bytes.set(figures.bytes as u64);
        self.stats.history_sessions.set(figures.sessions as u64);
        self.stats.snapshot()
    }

    /// Counters of every shard, merged. Waits at most [`SNAPSHOT_TIMEOUT`] for the
    /// others; a wedged shard leaves its part out rather than hanging the scrape.
    pub async fn node_snapshot(self: &Rc<Self>) -> StatsSnapshot {
        let mut merged = self.snapshot();
        merged.redis = self.node.bridge.as_ref().map(|b| RedisFigures {
            connected: b.is_connected(),
            reconnects: b.status.reconnects.load(Ordering::Relaxed),
        });
        let shards = self.node.router.shards();
        if shards == 1 {
            return merged;
        }
        let id = self.next_snapshot.get();
        self.next_snapshot.set(id + 1);
        let mut asked = 0;
        for to in (0..shards).filter(|&s| s != self.id) {
            if self
                .node
                .router
                .send(to, ShardMsg::SnapshotRequest { from: self.id, id })
                .is_ok()
            {
                asked += 1;
            }
        }
        self.pending_snapshots.borrow_mut().insert(
            id,
            PendingSnapshot {
                remaining: asked,
                merged: StatsSnapshot::default(),
                waker: None,
            },
        );
        let wait = futures_lite::future::poll_fn(|cx| {
            let mut pending = self.pending_snapshots.borrow_mut();
            match pending.get_mut(&id) {
                Some(p) if p.remaining > 0 => {
                    p.waker = Some(cx.waker().clone());
                    Poll::Pending
                }
                _ => Poll::Ready(()),
            }
        });
        let _ = glommio::timer::timeout(SNAPSHOT_TIMEOUT, async {
            wait.await;
            Ok(())
        })
        .await;
        if let Some(p) = self.pending_snapshots.borrow_mut().remove(&id) {
            merged.merge(&p.merged);
        }
        merged
    }
}

pub(super) async fn accept_loop(shard: Rc<Shard>, listener: TcpListener, admin: bool) {
    loop {
        match listener.accept().await {
            Ok(stream) => {
                let _ = stream.set_nodelay(true);
                let s = shard.clone();
                spawn_guarded(shard.id, "http", crate::http::conn::serve(s, stream, admin));
            }
            Err(e) => {
                // Out of descriptors or memory: back off instead of spinning.
                tracing::warn!(shard = shard.id, error = %e, "accept failed");
                glommio::timer::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}
