//! resume: a socket that reads every frame like `receive`, checks its stream's
//! continuity ([`Tracker`]), and at the moments [`resume::drop_in_second`] picks drops
//! (a reset or a close frame, without reading further), stays away for `away`, and
//! reconnects with `since=` the last position it processed. Events the old connection
//! had buffered but it never read must come back in the replay. After the scheduled end
//! it stops once publishing is over and it stands at its session's last receipt (when
//! the publisher is in this process), or after `drain` of silence.
//!
//! With `failover = true`, a connection that fails without a drop of ours (its node was
//! killed, or drained) is not the end: the socket reconnects `since=` its position to the
//! next node of `nodes` (and on, round the list, while connects fail), as a client with a
//! list of node URLs does; the loss → welcome time goes into `failover_time`.
//!
//! Owns: the resume kind's process-wide state ([`Board`]: the drop seed and the last
//! receipt per session, written by the publisher through [`ReceiptSink`], read by the
//! sockets), its sockets' loops and reconnects. The continuity rule itself is pure and
//! lives in [`crate::resume`]. May not touch other kinds' sockets or the publisher's
//! schedule.

use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::time::Instant;

use super::receive::{finish, Ending};
use crate::conn::{Conn, ConnError, Dial, ReadOutcome, Subscribe};
use crate::engine::plan::{event_session, SocketSpec};
use crate::engine::publisher::ReceiptSink;
use crate::engine::shared::{Ctx, CLOSE_WAIT};
use crate::engine::window::{instant_at, ReceiveWindow, Step};
use crate::event::{self, unix_ns, Pos};
use crate::output::Progress;
use crate::resume::{self, ResumeTally, Seen, Tracker};
use crate::stats::Part;
use crate::ws::CLOSE_NORMAL;

/// The resume kind's state shared by the process's threads: built only for a resume run.
pub(in crate::engine) struct Board {
    /// Seeds the drop schedule; derived from the run id, so every process agrees.
    seed: u64,
    /// The last accepted seq per session (from the receipts) and its epoch, written by the
    /// publisher, read by sockets to stop once they stand there.
    last_seq: Vec<AtomicU64>,
    last_epoch: Vec<AtomicU64>,
}

impl Board {
    pub fn new(run_id: u32, sessions: usize) -> Self {
        Board {
            seed: u64::from(run_id).rotate_left(17),
            last_seq: (0..sessions).map(|_| AtomicU64::new(0)).collect(),
            last_epoch: (0..sessions).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// Whether `pos` stands at session `s`'s last receipt (or past it).
    fn caught_up(&self, s: usize, pos: Pos) -> bool {
        pos.epoch == self.last_epoch[s].load(Ordering::Acquire)
            && pos.seq >= self.last_seq[s].load(Ordering::Acquire)
    }
}

impl ReceiptSink for Board {
    fn begin(&self, part: &mut Part, sessions: usize) {
        part.accepted_last = vec![Pos::default(); sessions];
    }

    /// Records the position of each event of an accepted request (its `202` receipts, in
    /// request order: event `first + i` went to session `(first + i) mod sessions`) as the
    /// session's last accepted event, for the end check and for sockets waiting to catch up.
    fn accepted(&self, ctx: &Ctx, body: &[u8], first: u64, batch: u64) {
        let sh = &ctx.shared;
        let sessions = sh.sessions.len() as u64;
        let mut i = 0u64;
        let mut mismatched = false;
        let mut p = ctx.part.borrow_mut();
        let n = event::parse_receipts(body, |name, pos| {
            let s = event_session(first + i, sessions);
            i += 1;
            if name != sh.sessions[s].as_bytes() {
                mismatched = true;
                return;
            }
            let last = resume::later(p.accepted_last[s], pos);
            p.accepted_last[s] = last;
            // Epoch first: a socket matches both (a new epoch only comes with a restart).
            self.last_epoch[s].store(last.epoch, Ordering::Release);
            self.last_seq[s].store(last.seq, Ordering::Release);
        });
        drop(p);
        if mismatched {
            ctx.error("receipt_session_mismatch");
        }
        if n as u64 != batch {
            ctx.error("receipt_count_mismatch");
        }
    }
}

pub(super) async fn resume_socket(
    ctx: Rc<Ctx>,
    board: Arc<Board>,
    spec: SocketSpec,
    token: String,
    c: Conn,
    start_ns: u64,
) {
    let sh = ctx.shared.clone();
    let scn = &sh.scn;
    let end_ns = start_ns.saturating_add(sh.duration_ns());
    let window = ReceiveWindow::new(start_ns, sh.duration_ns(), scn.drain.0);
    let session = spec.session as usize;
    let Some(welcome) = c.welcome() else {
        ctx.error("welcome_without_position");
        c.close(CLOSE_NORMAL, CLOSE_WAIT).await;
        return;
    };
    let mut t = Tracker::new(welcome);
    let mut conn = Some(c);
    // The next drop at or after `from` (UNIX ns), before the scheduled end.
    let next_drop = |from: u64| {
        resume::next_drop(
            board.seed,
            spec.g,
            scn.drop_fraction,
            start_ns,
            end_ns,
            from,
        )
    };
    let mut planned = next_drop(start_ns);
    // The node this socket is on now; failovers move it round `nodes`.
    let mut node = spec.node;
    let mut last_frame = window.publish_end;
    let ending = loop {
        let now = Instant::now();
        if now >= window.hard_end {
            break Ending::Done;
        }
        if let Some((at, d)) = planned {
            if unix_ns() >= at {
                if let Some(old) = conn.take() {
                    if d.reset {
                        ctx.part.borrow_mut().resume.drops_reset += 1;
                        old.abort();
                    } else {
                        ctx.part.borrow_mut().resume.drops_close += 1;
                        old.close(CLOSE_NORMAL, CLOSE_WAIT).await;
                    }
                }
                tokio::time::sleep(scn.away.0).await;
                let since =
                    resume::resumes(board.seed, spec.g, at, scn.resume_share).then_some(t.pos);
                match reconnect(&ctx, &spec, &mut node, &token, since, window.hard_end).await {
                    Some(c) => {
                        match (c.welcome(), since) {
                            (Some(w), Some(_)) => t.resumed(w),
                            (Some(w), None) => t.fresh(w),
                            (None, _) => ctx.error("welcome_without_position"),
                        }
                        conn = Some(c);
                    }
                    None => break Ending::Failed("resume_gave_up".to_owned()),
                }
                planned = next_drop(unix_ns());
                continue;
            }
        }
        let Some(c) = conn.as_mut() else {
            break Ending::Failed("resume_no_connection".to_owned());
        };
        let mut until = match window.step(now, last_frame, sh.publisher_busy()) {
            Step::Stop => break Ending::Done,
            Step::ReadUntil(until) => until,
        };
        if let Some((at, _)) = planned {
            until = until.min(instant_at(at));
        }
        let mut n = 0u64;
        let mut recv_ns = 0u64;
        let r = c
            .read_some(until, |payload| {
                let gaps_before = t.counts.gap_events;
                let Some(seen) = t.frame(event::classify(payload)) else {
                    return;
                };
                if seen == Seen::AfterGap {
                    Progress::add(&sh.progress.silent, t.counts.gap_events - gaps_before);
                }
                if recv_ns == 0 {
                    recv_ns = unix_ns();
                }
                n += 1;
                // Replays waited out the drop: their age is not delivery latency.
                if matches!(seen, Seen::Live | Seen::AfterGap) {
                    if let Some(st) = event::find_stamp(payload) {
                        ctx.part
                            .borrow_mut()
                            .latency
                            .record_ns(recv_ns.saturating_sub(st.scheduled_ns));
                    }
                }
            })
            .await;
        if n > 0 {
            last_frame = Instant::now();
            ctx.delivered(n, recv_ns);
        }
        let lost = match r {
            Ok(ReadOutcome::Data) | Ok(ReadOutcome::Idle) => {
                if planned.is_none() && sh.publish_done() && board.caught_up(session, t.pos) {
                    break Ending::Done;
                }
                continue;
            }
            Ok(ReadOutcome::Closed(code)) => Ending::ClosedByServer(code),
            Ok(ReadOutcome::Eof) => Ending::Failed("healthy_eof".to_owned()),
            Err(e) => Ending::Failed(e.kind()),
        };
        if !scn.failover {
            break lost;
        }
        // Failover: the node is gone (or going); on to the next one, since our position.
        let lost_at = unix_ns();
        if let Some(old) = conn.take() {
            old.abort();
        }
        node = (node + 1) % sh.nodes.len().max(1);
        match reconnect(&ctx, &spec, &mut node, &token, Some(t.pos), window.hard_end).await {
            Some(c) => {
                match c.welcome() {
                    Some(w) => t.resumed(w),
                    None => ctx.error("welcome_without_position"),
                }
                let mut p = ctx.part.borrow_mut();
                p.resume.failovers += 1;
                p.failover_time.record_ns(unix_ns().saturating_sub(lost_at));
                drop(p);
                conn = Some(c);
            }
            None => break Ending::Failed("failover_gave_up".to_owned()),
        }
    };
    {
        let mut p = ctx.part.borrow_mut();
        p.resume.merge(&t.counts);
        p.resume_sockets.push(ResumeTally {
            session: spec.session,
            pos: t.pos,
        });
    }
    finish(&ctx, ending, conn).await;
}

/// Reopens a resume socket on `node` (with `since=pos`, or fresh with `None`), retrying every `away` after a
/// failure (each counted) until `hard_end`; with `failover`, each retry tries the next node.
async fn reconnect(
    ctx: &Ctx,
    spec: &SocketSpec,
    node: &mut usize,
    token: &str,
    pos: Option<Pos>,
    hard_end: Instant,
) -> Option<Conn> {
    let sh = &ctx.shared;
    let scn = &sh.scn;
    loop {
        let target = &sh.nodes[*node];
        let src = sh.src_for(*node, spec.g);
        let began = unix_ns();
        let deadline = (Instant::now() + scn.connect_timeout.0).min(hard_end);
        let dial = Dial {
            transport: scn.transport,
            target,
            src,
            rcvbuf: None,
            sub: Subscribe::Token(token),
            since: pos,
            seed: spec.g ^ began,
            connect_timeout: scn.connect_timeout.0,
        };
        match Conn::open(&dial, deadline).await {
            Ok(c) => {
                ctx.part
                    .borrow_mut()
                    .resume_handshake
                    .record_ns(unix_ns().saturating_sub(began));
                return Some(c);
            }
            Err(e) => {
                if let ConnError::ClosedBeforeWelcome(code) = &e {
                    ctx.part.borrow_mut().close_code(*code);
                }
                ctx.part.borrow_mut().resume.resume_failed += 1;
                ctx.error(format!("resume_{}", e.kind()));
                if Instant::now() + scn.away.0 >= hard_end {
                    return None;
                }
                if scn.failover {
                    *node = (*node + 1) % sh.nodes.len().max(1);
                }
                tokio::time::sleep(scn.away.0).await;
            }
        }
    }
}
