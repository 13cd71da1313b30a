//! idle-hold: an authenticated socket that only stays open, answering pings, until
//! start + duration; the node's memory per idle connection is the measurement.
//!
//! Owns: one held socket's loop. May not record latency or loss: an idle socket
//! receives no events.

use std::rc::Rc;

use tokio::time::Instant;

use crate::conn::{Conn, ReadOutcome};
use crate::engine::shared::{Ctx, CLOSE_WAIT};
use crate::engine::window::instant_at;
use crate::ws::CLOSE_NORMAL;

/// Keeps the socket open (answering pings) until start + duration, then closes; any close
/// or error before that is counted.
pub(super) async fn hold(ctx: Rc<Ctx>, mut c: Conn, start_ns: u64) {
    let end = instant_at(start_ns.saturating_add(ctx.shared.duration_ns()));
    loop {
        if Instant::now() >= end {
            break;
        }
        match c.read_some(end, |_| {}).await {
            Ok(ReadOutcome::Data) | Ok(ReadOutcome::Idle) => {}
            Ok(ReadOutcome::Closed(code)) => {
                ctx.part.borrow_mut().close_code(code);
                ctx.error("unexpected_close");
                return;
            }
            Ok(ReadOutcome::Eof) => {
                ctx.error("unexpected_eof");
                return;
            }
            Err(e) => {
                ctx.error(e.kind());
                return;
            }
        }
    }
    c.close(CLOSE_NORMAL, CLOSE_WAIT).await;
}
