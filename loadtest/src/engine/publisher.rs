//! The open-loop publisher, on its own thread and runtime: request j is scheduled at
//! start + j × interval regardless of how earlier requests fared; `publishers` keep-alive
//! connections take requests from one queue. A request's events carry its scheduled time,
//! so time spent waiting for a free connection counts as latency (no coordinated omission).
//!
//! The schedule is kept by a plain thread ([`schedule`]) sleeping with 1 µs timer slack,
//! because tokio's timer wheel has 1 ms granularity and would add up to 1 ms of the tool's
//! own lateness to every publish.
//!
//! A relay gets `POST /events` with the API key and a JSON event (or batch), accepted with
//! `202`; a harness (`target = "harness"`) gets `POST /publish/S` with the event's `data`
//! as the body, accepted with any `2xx`.
//!
//! Owns: the HTTP side of a run (target, API key, request bodies) and the publisher half
//! of the board in [`Shared`]. May not know any kind: a kind that needs the `202`
//! receipts (resume) hands in a [`ReceiptSink`].

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::task::{spawn_local, LocalSet};

use super::plan;
use super::shared::{Ctx, Shared};
use crate::event::{self, unix_ns, Stamp};
use crate::net::{post_events_request, post_publish_request, HttpConn, HttpError};
use crate::output::Progress;
use crate::scenario::TargetKind;
use crate::stats::Part;
use crate::target::{self, Target};

/// Requests due but not yet sent, at most; beyond it the node is so far behind that the
/// run has failed anyway, and the rest are counted as errors rather than held in memory.
const MAX_BACKLOG: usize = 1_000_000;

/// Where and as whom the publisher posts.
pub(super) struct PublishTo {
    pub target: Target,
    pub api_key: String,
}

/// A kind that reads the `202` receipts of accepted requests.
pub(super) trait ReceiptSink: Send + Sync {
    /// Before the first request: size the publisher's part for what the sink records.
    fn begin(&self, part: &mut Part, sessions: usize);
    /// Request of events `first .. first + batch` was accepted with this response body.
    fn accepted(&self, ctx: &Ctx, body: &[u8], first: u64, batch: u64);
}

/// The hand-over between the scheduler loop and the connections, on the publisher's thread.
struct Jobs {
    /// Requests due and not yet taken: (request j, scheduled UNIX ns).
    queue: RefCell<VecDeque<(u64, u64)>>,
    /// Wakes a connection when a request is queued, and all of them at the end.
    notify: Notify,
    /// Set once the schedule has queued its last request.
    done: Cell<bool>,
    /// Requests sent to the queue and not yet taken, shared with the scheduler thread so
    /// it can keep the backlog under [`MAX_BACKLOG`].
    pending: Arc<AtomicUsize>,
}

/// The publisher's thread: its own runtime, so socket reads on the workers do not delay
/// scheduled publishes (and the reverse).
pub(super) fn publisher_thread(
    shared: Arc<Shared>,
    to: Arc<PublishTo>,
    receipts: Option<Arc<dyn ReceiptSink>>,
) -> Part {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let mut p = Part::default();
            p.error(format!("runtime_{}", e.kind()));
            return p;
        }
    };
    let local = LocalSet::new();
    local.block_on(&rt, async move {
        let ctx = Rc::new(Ctx::new(shared.clone(), usize::MAX, Part::default()));
        let Some(start_ns) = shared.wait_start().await else {
            return ctx.part.take();
        };
        ctx.part.borrow_mut().start_ns = start_ns;
        publish(ctx.clone(), to, receipts, start_ns).await;
        ctx.part.take()
    })
}

/// Runs the whole schedule: the scheduler thread feeds the queue, the connections drain
/// it; returns once every request has an outcome and marks publishing done.
async fn publish(
    ctx: Rc<Ctx>,
    to: Arc<PublishTo>,
    receipts: Option<Arc<dyn ReceiptSink>>,
    start_ns: u64,
) {
    let sh = ctx.shared.clone();
    let scn = &sh.scn;
    let n = scn.requests_planned();
    let interval = scn.request_interval_ns();
    {
        let mut p = ctx.part.borrow_mut();
        p.accepted_per_session = vec![0; sh.sessions.len()];
        if let Some(r) = &receipts {
            r.begin(&mut p, sh.sessions.len());
        }
        p.events_scheduled = n * u64::from(scn.batch);
    }
    let jobs = Rc::new(Jobs {
        queue: RefCell::new(VecDeque::new()),
        notify: Notify::new(),
        done: Cell::new(false),
        pending: Arc::new(AtomicUsize::new(0)),
    });
    let conns: Vec<_> = (0..scn.publishers)
        .map(|i| {
            spawn_local(publisher_conn(
                ctx.clone(),
                to.clone(),
                receipts.clone(),
                i,
                jobs.clone(),
            ))
        })
        .collect();

    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(u64, u64)>();
    let pending2 = jobs.pending.clone();
    let scheduler = std::thread::Builder::new()
        .name("lt-schedule".into())
        .spawn(move || schedule(start_ns, n, interval, &tx, &pending2));
    let scheduler = match scheduler {
        Ok(h) => Some(h),
        Err(_) => {
            ctx.error("scheduler_thread");
            None
        }
    };
    if scheduler.is_some() {
        while let Some(job) = rx.recv().await {
            ctx.part
                .borrow_mut()
                .dispatch_lag
                .record_ns(unix_ns().saturating_sub(job.1));
            jobs.queue.borrow_mut().push_back(job);
            jobs.notify.notify_one();
        }
    }
    jobs.done.set(true);
    jobs.notify.notify_waiters();
    if let Some(Ok(overflow)) = scheduler.map(|h| h.join()) {
        if overflow > 0 {
            *ctx.part
                .borrow_mut()
                .errors
                .entry("publish_backlog_overflow".into())
                .or_insert(0) += overflow;
            Progress::add(&sh.progress.errors, overflow);
        }
    }
    for c in conns {
        if c.await.is_err() {
            ctx.error("task_panicked");
        }
    }
    ctx.part.borrow_mut().publish_last_ns = unix_ns();
    sh.finish_publishing();
}

/// Sends (j, scheduled ns) for every request when it falls due; returns how many were
/// skipped because [`MAX_BACKLOG`] requests were already waiting for a connection.
fn schedule(
    start_ns: u64,
    n: u64,
    interval: u64,
    tx: &tokio::sync::mpsc::UnboundedSender<(u64, u64)>,
    pending: &AtomicUsize,
) -> u64 {
    crate::sys::fine_timer_slack();
    let mut overflow = 0;
    let mut j = 0u64;
    while j < n {
        let now = unix_ns();
        while j < n && start_ns + j * interval <= now {
            if pending.load(Ordering::Relaxed) < MAX_BACKLOG {
                pending.fetch_add(1, Ordering::Relaxed);
                if tx.send((j, start_ns + j * interval)).is_err() {
                    return overflow;
                }
            } else {
                overflow += 1;
            }
            j += 1;
        }
        if j < n {
            let due = start_ns + j * interval;
            let now = unix_ns();
            if due > now {
                std::thread::sleep(Duration::from_nanos(due - now));
            }
        }
    }
    overflow
}

/// One keep-alive connection: takes requests off the queue until the schedule is over,
/// reconnecting after a failure.
async fn publisher_conn(
    ctx: Rc<Ctx>,
    to: Arc<PublishTo>,
    receipts: Option<Arc<dyn ReceiptSink>>,
    index: u32,
    jobs: Rc<Jobs>,
) {
    let sh = ctx.shared.clone();
    let scn = &sh.scn;
    let batch = u64::from(scn.batch);
    let sessions = u64::from(scn.sessions);
    let srcs = target::source_addrs(to.target.addr.ip(), scn.source_addrs);
    let src = srcs[index as usize % srcs.len()];
    let mut conn: Option<HttpConn> = None;
    let mut body = Vec::new();
    let mut req = Vec::new();
    loop {
        let next = jobs.queue.borrow_mut().pop_front();
        let Some((j, sched)) = next else {
            if jobs.done.get() {
                break;
            }
            jobs.notify.notified().await;
            continue;
        };
        jobs.pending.fetch_sub(1, Ordering::Relaxed);
        // Requests whose turn came long after the run would have ended are still sent: the
        // schedule is bounded by count, and their lateness is the measurement.
        if conn.is_none() {
            match tokio::time::timeout(scn.connect_timeout.0, HttpConn::connect(&to.target, src))
                .await
            {
                Ok(Ok(c)) => conn = Some(c),
                Ok(Err(e @ HttpError::Tls(_))) => {
                    ctx.error(e.kind());
                    continue;
                }
                Ok(Err(_)) => {
                    ctx.error("publish_connect");
                    continue;
                }
                Err(_) => {
                    ctx.error("publish_connect_timeout");
                    continue;
                }
            }
        }
        let Some(c) = conn.as_mut() else { continue };
        let first = j * batch;
        let stamp = |e| Stamp {
            scheduled_ns: sched,
            seq: e,
        };
        match scn.target {
            TargetKind::Relay => {
                let events = (first..first + batch).map(|e| {
                    (
                        sh.sessions[plan::event_session(e, sessions)].as_str(),
                        stamp(e),
                    )
                });
                event::publish_body(&mut body, events, batch as usize, scn.event_bytes);
                post_events_request(&mut req, &to.target.host, &to.api_key, &body);
            }
            TargetKind::Harness => {
                // One event per request (validation holds batch at 1): its data is the body.
                body.clear();
                event::write_data(&mut body, stamp(first), scn.event_bytes);
                let session = &sh.sessions[plan::event_session(first, sessions)];
                post_publish_request(&mut req, &to.target.host, session, &body);
            }
        }
        {
            let mut p = ctx.part.borrow_mut();
            p.requests_sent += 1;
            p.send_lag.record_ns(unix_ns().saturating_sub(sched));
        }
        let result = tokio::time::timeout(scn.request_timeout.0, c.round_trip(&req)).await;
        let now = unix_ns();
        let accepted = |status: u16| match scn.target {
            TargetKind::Relay => status == 202,
            TargetKind::Harness => (200..300).contains(&status),
        };
        match result {
            Ok(Ok(status)) if accepted(status) => {
                let mut p = ctx.part.borrow_mut();
                p.requests_accepted += 1;
                p.events_accepted += batch;
                p.publish.record_ns(now.saturating_sub(sched));
                for e in first..first + batch {
                    let s = plan::event_session(e, sessions);
                    p.accepted_per_session[s] += 1;
                    sh.note_accepted(s);
                }
                Progress::add(&sh.progress.accepted, batch);
                drop(p);
                if let Some(r) = &receipts {
                    r.accepted(&ctx, c.body(), first, batch);
                }
            }
            Ok(Ok(status)) => ctx.error(format!("publish_http_{status}")),
            Ok(Err(e)) => {
                ctx.part.borrow_mut().events_unknown += batch;
                ctx.error(e.kind());
                conn = None;
            }
            Err(_) => {
                ctx.part.borrow_mut().events_unknown += batch;
                ctx.error("publish_timeout");
                conn = None;
            }
        }
        if conn.as_ref().is_some_and(|c| c.closed) {
            conn = None;
        }
    }
}
