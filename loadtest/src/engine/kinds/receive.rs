//! A healthy receiving socket (fanout, publish-throughput, slow-consumers' healthy share,
//! churn's long-lived sockets, cross-node): reads every frame, records publish→receive
//! latency, counts events for the loss check.
//!
//! Owns: one healthy socket's loop and how a receiving socket's ending is counted
//! ([`Ending`], [`finish`], also used by resume). May not decide the window's bounds
//! (`window`) or touch the publisher's state beyond reading the board.

use std::rc::Rc;

use tokio::time::Instant;

use crate::conn::{Conn, ReadOutcome};
use crate::engine::plan::SocketSpec;
use crate::engine::shared::{Ctx, CLOSE_WAIT};
use crate::engine::window::{ReceiveWindow, Step};
use crate::event::{self, unix_ns};
use crate::stats::SocketTally;
use crate::ws::CLOSE_NORMAL;

/// How a receiving socket's loop ended.
pub(super) enum Ending {
    /// The window closed, or the socket has everything: close normally.
    Done,
    /// The node closed the socket (with this code): an error for a healthy socket.
    ClosedByServer(Option<u16>),
    /// The read failed (this error kind); the connection is gone.
    Failed(String),
}

/// After the scheduled end it stops once publishing is over and it has every accepted
/// event of its session (when the publisher is in this process), or once nothing has
/// arrived for `drain` — a node that is behind but still delivering is waited for, up to
/// [`DRAIN_CAP`](crate::engine::window::DRAIN_CAP) past the end.
pub(super) async fn receive(ctx: Rc<Ctx>, spec: SocketSpec, mut c: Conn, start_ns: u64) {
    let sh = ctx.shared.clone();
    let window = ReceiveWindow::new(start_ns, sh.duration_ns(), sh.scn.drain.0);
    let session = spec.session as usize;
    let mut received = 0u64;
    let mut last_frame = window.publish_end;
    let ending = loop {
        let until = match window.step(Instant::now(), last_frame, sh.publisher_busy()) {
            Step::Stop => break Ending::Done,
            Step::ReadUntil(until) => until,
        };
        let mut n = 0u64;
        let mut recv_ns = 0u64;
        let r = c
            .read_some(until, |payload| {
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
            received += n;
            last_frame = Instant::now();
            ctx.delivered(n, recv_ns);
        }
        match r {
            Ok(ReadOutcome::Data) | Ok(ReadOutcome::Idle) => {
                if sh.publish_done() && received >= sh.accepted(session) {
                    break Ending::Done;
                }
            }
            Ok(ReadOutcome::Closed(code)) => break Ending::ClosedByServer(code),
            Ok(ReadOutcome::Eof) => break Ending::Failed("healthy_eof".to_owned()),
            Err(e) => break Ending::Failed(e.kind()),
        }
    };
    ctx.part.borrow_mut().sockets.push(SocketTally {
        session: spec.session,
        received,
    });
    finish(&ctx, ending, Some(c)).await;
}

/// Counts how a receiving socket ended and closes what is left of it.
pub(super) async fn finish(ctx: &Ctx, ending: Ending, conn: Option<Conn>) {
    match ending {
        Ending::Done => {
            if let Some(c) = conn {
                c.close(CLOSE_NORMAL, CLOSE_WAIT).await;
            }
        }
        Ending::ClosedByServer(code) => {
            ctx.part.borrow_mut().close_code(code);
            ctx.error(format!(
                "healthy_closed_{}",
                code.map_or_else(|| "none".to_owned(), |c| c.to_string())
            ));
            if let Some(c) = conn {
                c.close(CLOSE_NORMAL, CLOSE_WAIT).await;
            }
        }
        Ending::Failed(kind) => ctx.error(kind),
    }
}
