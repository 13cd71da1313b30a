//! slow-consumers' slow share: a socket that never reads until publishing is over, then
//! drains its backlog looking for the node's close frame, which must carry 4008.
//!
//! Owns: one slow socket's wait and drain, and the slow counters of the part. May not
//! read events for latency or loss: a slow socket is expected to be cut off.

use std::rc::Rc;
use std::time::Duration;

use tokio::time::Instant;

use crate::conn::{Conn, DrainEnd};
use crate::engine::shared::Ctx;
use crate::engine::window::{instant_at, DONE_POLL};
use crate::ws::CLOSE_SLOW_CONSUMER;

/// How long a slow socket may take, after the run, to hand over its backlog and close frame.
const SLOW_DRAIN_BOUND: Duration = Duration::from_secs(10);
/// Silence after which a draining slow socket is judged "still open".
const SLOW_DRAIN_IDLE: Duration = Duration::from_secs(1);

pub(super) async fn slow(ctx: Rc<Ctx>, mut c: Conn, start_ns: u64) {
    let sh = ctx.shared.clone();
    let hard_end = instant_at(
        start_ns
            .saturating_add(sh.duration_ns())
            .saturating_add(sh.drain_ns()),
    );
    // Wait until publishing is over: known here when the publisher is in this process,
    // assumed at end + drain otherwise.
    while Instant::now() < hard_end && !sh.publish_done() {
        tokio::time::sleep(DONE_POLL).await;
    }
    if sh.publisher_here {
        // The node may still be writing the backlog; let it reach its limit and close.
        tokio::time::sleep(DONE_POLL).await;
    }
    let end = c
        .drain_until_close(SLOW_DRAIN_IDLE, Instant::now() + SLOW_DRAIN_BOUND)
        .await;
    let mut p = ctx.part.borrow_mut();
    p.slow_sockets += 1;
    match end {
        DrainEnd::Closed(code) => {
            p.close_code(code);
            if code == Some(CLOSE_SLOW_CONSUMER) {
                p.slow_closed_4008 += 1;
            } else {
                drop(p);
                ctx.error("slow_closed_without_4008");
            }
        }
        DrainEnd::Eof => {
            drop(p);
            ctx.error("slow_eof_without_close_frame");
        }
        DrainEnd::StillOpen => {
            drop(p);
            ctx.error("slow_not_closed");
        }
        DrainEnd::Error(kind) => {
            drop(p);
            ctx.error(kind);
        }
    }
}
