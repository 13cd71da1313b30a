//! One worker thread: a current-thread tokio runtime that owns a slice of the sockets.
//! Phase 1 connects them (bounded concurrency, paced when the scenario says so) and
//! reports ready; phase 2 waits for the start signal and hands the sockets to the kind's
//! [`Behaviour`].
//!
//! Owns: the worker's runtime, the connect phase and its counters (handshake latency,
//! connected sockets). May not know what a kind does after the start: that is `kinds`.

use std::rc::Rc;
use std::sync::mpsc;
use std::sync::Arc;

use tokio::sync::Semaphore;
use tokio::task::{spawn_local, LocalSet};
use tokio::time::{sleep_until, Instant};

use super::kinds::{close_all, Behaviour};
use super::plan::{self, SocketSpec};
use super::shared::{Ctx, Shared};
use super::window::instant_at;
use crate::conn::{Conn, ConnError, Dial};
use crate::event::unix_ns;
use crate::output::Progress;
use crate::stats::Part;

/// The worker's thread body: builds its runtime and runs both phases on it.
pub(super) fn worker_thread(
    shared: Arc<Shared>,
    behaviour: Behaviour,
    w: usize,
    work: Vec<(SocketSpec, String)>,
    ready: mpsc::Sender<()>,
) -> Part {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let mut p = Part::default();
            p.error(format!("runtime_{}", e.kind()));
            let _ = ready.send(());
            return p;
        }
    };
    let local = LocalSet::new();
    local.block_on(&rt, worker_main(shared, behaviour, w, work, ready))
}

async fn worker_main(
    shared: Arc<Shared>,
    behaviour: Behaviour,
    w: usize,
    work: Vec<(SocketSpec, String)>,
    ready: mpsc::Sender<()>,
) -> Part {
    let part = Part {
        sockets_planned: work.len() as u64,
        ..Part::default()
    };
    let ctx = Rc::new(Ctx::new(shared.clone(), w, part));

    // Phase 1: connect, bounded concurrency (the process's budget split across workers).
    let sem = Rc::new(Semaphore::new(plan::connect_permits(
        &shared.scn,
        shared.threads,
    )));
    let handles: Vec<_> = work
        .into_iter()
        .map(|(spec, token)| spawn_local(connect_one(ctx.clone(), sem.clone(), spec, token)))
        .collect();
    let keep_tokens = behaviour.reconnects();
    let mut conns = Vec::with_capacity(handles.len());
    for h in handles {
        if let Ok(Some((spec, token, c))) = h.await {
            // Only a kind that reconnects needs the token past the handshake.
            let token = if keep_tokens { token } else { String::new() };
            conns.push((spec, token, c));
        }
    }
    let _ = ready.send(());

    let Some(start_ns) = shared.wait_start().await else {
        close_all(conns).await;
        return ctx.part.take();
    };
    ctx.part.borrow_mut().start_ns = start_ns;

    // Phase 2.
    for t in behaviour.start(&ctx, conns, start_ns).await {
        if t.await.is_err() {
            ctx.error("task_panicked");
        }
    }
    ctx.part.take()
}

/// Opens one planned socket (or stream, or poller: the scenario's transport): waits for
/// its paced slot and a permit, then connect + upgrade + welcome within `connect_timeout`.
async fn connect_one(
    ctx: Rc<Ctx>,
    sem: Rc<Semaphore>,
    spec: SocketSpec,
    token: String,
) -> Option<(SocketSpec, String, Conn)> {
    let sh = &ctx.shared;
    let scn = &sh.scn;
    // Open loop when paced: the handshake "starts" at its scheduled time, even if a permit
    // or the previous handshakes delayed it.
    let scheduled = plan::connect_at(scn, sh.slice, sh.connect_t0, spec.local);
    if let Some(s) = scheduled {
        sleep_until(instant_at(s)).await;
    }
    let _permit = sem.acquire().await.ok()?;
    let began = unix_ns();
    let t0 = scheduled.unwrap_or(began);
    {
        let mut p = ctx.part.borrow_mut();
        p.connect_first_ns = if p.connect_first_ns == 0 {
            began
        } else {
            p.connect_first_ns.min(began)
        };
    }
    let target = &sh.nodes[spec.node];
    let src = sh.src_for(spec.node, spec.g);
    let rcvbuf = (spec.slow && scn.slow_rcvbuf > 0).then_some(scn.slow_rcvbuf);
    let deadline = Instant::now() + scn.connect_timeout.0;
    let dial = Dial {
        transport: scn.transport,
        target,
        src,
        rcvbuf,
        sub: sh.subscribe(spec.session as usize, &token),
        since: None,
        seed: spec.g ^ began,
        connect_timeout: scn.connect_timeout.0,
    };
    match Conn::open(&dial, deadline).await {
        Ok(c) => {
            let now = unix_ns();
            let mut p = ctx.part.borrow_mut();
            p.handshake.record_ns(now.saturating_sub(t0));
            p.sockets_connected += 1;
            p.connect_last_ns = p.connect_last_ns.max(now);
            Progress::add(&sh.progress.connected, 1);
            Some((spec, token, c))
        }
        Err(e) => {
            if let ConnError::ClosedBeforeWelcome(code) = &e {
                ctx.part.borrow_mut().close_code(*code);
            }
            ctx.error(e.kind());
            None
        }
    }
}
