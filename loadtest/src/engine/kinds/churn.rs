//! churn: short-lived sockets opened at a fixed rate while events flow. Their deliveries
//! and latency count; their events do not count for loss (they join and leave
//! mid-stream).
//!
//! Owns: this worker's churn lane (schedule from [`ChurnLane`]), the churn sockets'
//! tokens and loops, and the churn counters. May not touch the planned sockets.

use std::cell::Cell;
use std::rc::Rc;

use tokio::task::spawn_local;
use tokio::time::{sleep_until, Instant};

use crate::conn::{Conn, Dial, ReadOutcome};
use crate::engine::plan::{churn_target, ChurnLane};
use crate::engine::shared::{Ctx, CLOSE_WAIT};
use crate::engine::window::instant_at;
use crate::event::{self, unix_ns};
use crate::output::Progress;
use crate::ws::CLOSE_NORMAL;

/// Opens this worker's churn sockets on schedule, skipping (and counting) one when too
/// many are still alive, then waits for them all.
pub(super) async fn churn(ctx: Rc<Ctx>, start_ns: u64) {
    let sh = ctx.shared.clone();
    let Some(lane) = ChurnLane::new(&sh.scn, sh.slice, sh.threads, ctx.w) else {
        return;
    };
    let live = Rc::new(Cell::new(0u64));
    let mut tasks = Vec::new();
    for i in 0..lane.count {
        sleep_until(instant_at(start_ns + i * lane.interval_ns)).await;
        if live.get() >= lane.max_live {
            ctx.error("churn_skipped_too_many_live");
            continue;
        }
        let slot = LiveSlot::take(&live);
        tasks.push(spawn_local(churn_one(ctx.clone(), lane.socket(i), slot)));
    }
    for t in tasks {
        let _ = t.await;
    }
}

/// One churn socket's place in its lane's live count, given back when the socket's task
/// ends however it ends.
struct LiveSlot(Rc<Cell<u64>>);

impl LiveSlot {
    fn take(live: &Rc<Cell<u64>>) -> LiveSlot {
        live.set(live.get() + 1);
        LiveSlot(live.clone())
    }
}

impl Drop for LiveSlot {
    fn drop(&mut self) {
        self.0.set(self.0.get() - 1);
    }
}

/// Churn socket `c`: connect, read for `churn_life`, close; `_slot` counts it as live
/// meanwhile.
async fn churn_one(ctx: Rc<Ctx>, c: u64, _slot: LiveSlot) {
    let sh = ctx.shared.clone();
    let scn = &sh.scn;
    let (session, node) = churn_target(c, scn.sessions, sh.nodes.len());
    let token = if scn.needs_credentials() {
        match sh.minter.mint(&sh.sessions[session], &format!("churn{c}")) {
            Ok(t) => t,
            Err(_) => {
                ctx.error("token");
                return;
            }
        }
    } else {
        String::new()
    };
    let began = unix_ns();
    let deadline = Instant::now() + scn.connect_timeout.0;
    let src = sh.src_for(node, c);
    let dial = Dial {
        transport: scn.transport,
        target: &sh.nodes[node],
        src,
        rcvbuf: None,
        sub: sh.subscribe(session, &token),
        since: None,
        seed: c ^ began,
        connect_timeout: scn.connect_timeout.0,
    };
    match Conn::open(&dial, deadline).await {
        Ok(mut conn) => {
            {
                let mut p = ctx.part.borrow_mut();
                p.churn_opened += 1;
                p.handshake.record_ns(unix_ns().saturating_sub(began));
            }
            let end = Instant::now() + scn.churn_life.0;
            while Instant::now() < end {
                let mut n = 0u64;
                let mut recv_ns = 0u64;
                let r = conn
                    .read_some(end, |payload| {
                        if let Some(st) = event::find_stamp(payload) {
                            if recv_ns == 0 {
                                recv_ns = unix_ns();
                            }
                            n += 1;
                            ctx.part
                                .borrow_mut()
                                .latency
                                .record_ns(recv_ns.saturating_sub(st.scheduled_ns));
                        }
                    })
                    .await;
                if n > 0 {
                    // Not `Ctx::delivered`: churn frames have never moved
                    // `delivery_last_ns` (the deliveries/s window), and the split keeps that.
                    ctx.part.borrow_mut().deliveries += n;
                    Progress::add(&sh.progress.deliveries, n);
                }
                match r {
                    Ok(ReadOutcome::Data) | Ok(ReadOutcome::Idle) => {}
                    Ok(ReadOutcome::Closed(code)) => {
                        ctx.part.borrow_mut().close_code(code);
                        ctx.error("churn_closed_by_server");
                        return;
                    }
                    Ok(ReadOutcome::Eof) => {
                        ctx.error("churn_eof");
                        return;
                    }
                    Err(e) => {
                        ctx.error(e.kind());
                        return;
                    }
                }
            }
            conn.close(CLOSE_NORMAL, CLOSE_WAIT).await;
        }
        Err(e) => {
            ctx.part.borrow_mut().churn_failed += 1;
            ctx.error(format!("churn_{}", e.kind()));
        }
    }
}
