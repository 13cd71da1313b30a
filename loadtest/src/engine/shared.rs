//! What the threads of one process share while running ([`Shared`], read-mostly, built
//! once by `process`) and what one worker task owns ([`Ctx`], its own measurements).
//!
//! Owns: the process-wide run state every kind needs (scenario, sessions, nodes, the
//! start signal) and the publisher → receivers board (accepted counts, "publishing is
//! done"). May not hold any one kind's state: that lives in the kind's file under
//! `kinds/` and is handed only to that kind's tasks.

use std::cell::RefCell;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::plan::{self, Slice};
use crate::conn::Subscribe;
use crate::output::Progress;
use crate::scenario::{Scenario, TargetKind};
use crate::stats::Part;
use crate::target::Target;
use crate::token::Minter;

/// Bound on writing our close frame at the end.
pub(super) const CLOSE_WAIT: Duration = Duration::from_millis(500);

/// Read-only state every thread of the process shares, except for the publisher board
/// (`accepted`, `publish_done`), which the publisher writes and receivers read.
pub(super) struct Shared {
    pub scn: Scenario,
    /// Session names by index, the same in every process of the run.
    pub sessions: Vec<String>,
    /// Signs tokens for sockets opened mid-run (churn).
    pub minter: Minter,
    /// Nodes the sockets connect to.
    pub nodes: Vec<Target>,
    /// Source addresses per node.
    pub srcs: Vec<Vec<Option<IpAddr>>>,
    pub slice: Slice,
    pub threads: usize,
    /// Whether the publisher runs in this process (so receivers can know when it is done).
    pub publisher_here: bool,
    /// UNIX ns at which the process began connecting (paces open-loop connects).
    pub connect_t0: u64,
    /// The start time (UNIX ns), 0 until the orchestrator says go; closed if it never does.
    pub start_rx: watch::Receiver<u64>,
    /// 202-accepted events per session, written by the publisher, read by receivers to stop
    /// early once they have everything.
    accepted: Vec<AtomicU64>,
    /// Set by the publisher once every request has an outcome.
    publish_done: AtomicBool,
    /// Live counters for the progress line, bumped by every task.
    pub progress: Arc<Progress>,
}

impl Shared {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        scn: Scenario,
        sessions: Vec<String>,
        minter: Minter,
        nodes: Vec<Target>,
        srcs: Vec<Vec<Option<IpAddr>>>,
        slice: Slice,
        threads: usize,
        start_rx: watch::Receiver<u64>,
        progress: Arc<Progress>,
    ) -> Self {
        Shared {
            accepted: (0..scn.sessions).map(|_| AtomicU64::new(0)).collect(),
            publisher_here: plan::publishes_here(&scn, slice),
            scn,
            sessions,
            minter,
            nodes,
            srcs,
            slice,
            threads,
            connect_t0: crate::event::unix_ns(),
            start_rx,
            publish_done: AtomicBool::new(false),
            progress,
        }
    }

    /// How a subscriber of session index `session` names itself: its `token` on a relay,
    /// the session's name on a harness (which takes no token).
    pub fn subscribe<'a>(&'a self, session: usize, token: &'a str) -> Subscribe<'a> {
        match self.scn.target {
            TargetKind::Relay => Subscribe::Token(token),
            TargetKind::Harness => Subscribe::Session(&self.sessions[session]),
        }
    }

    /// The source address socket `g` binds on its way to `node`.
    pub fn src_for(&self, node: usize, g: u64) -> Option<IpAddr> {
        let list = &self.srcs[node];
        list[plan::src_index(g, self.nodes.len(), list.len())]
    }

    pub fn duration_ns(&self) -> u64 {
        u64::try_from(self.scn.duration.0.as_nanos()).unwrap_or(u64::MAX)
    }

    pub fn drain_ns(&self) -> u64 {
        u64::try_from(self.scn.drain.0.as_nanos()).unwrap_or(u64::MAX)
    }

    /// Waits for the start signal; `None` when the orchestrator gave up instead.
    pub async fn wait_start(&self) -> Option<u64> {
        let mut rx = self.start_rx.clone();
        rx.wait_for(|v| *v != 0).await.ok().map(|v| *v)
    }

    /// Publisher: one more event of session `s` was accepted.
    pub fn note_accepted(&self, s: usize) {
        self.accepted[s].fetch_add(1, Ordering::AcqRel);
    }

    /// Receivers: events of session `s` accepted so far.
    pub fn accepted(&self, s: usize) -> u64 {
        self.accepted[s].load(Ordering::Acquire)
    }

    /// Publisher: every request has its outcome.
    pub fn finish_publishing(&self) {
        self.publish_done.store(true, Ordering::Release);
    }

    /// Whether the publisher (in this process) has finished; false while it runs, and
    /// always false in a process without one.
    pub fn publish_done(&self) -> bool {
        self.publish_done.load(Ordering::Acquire)
    }

    /// Whether a publisher in this process is still sending: receivers keep waiting.
    pub fn publisher_busy(&self) -> bool {
        self.publisher_here && !self.publish_done()
    }
}

/// Worker-local state: the shared config plus this task's thread's own measurements.
pub(super) struct Ctx {
    pub shared: Arc<Shared>,
    /// The worker's index (a churn lane); `usize::MAX` on the publisher's thread.
    pub w: usize,
    pub part: RefCell<Part>,
}

impl Ctx {
    pub fn new(shared: Arc<Shared>, w: usize, part: Part) -> Self {
        Ctx {
            shared,
            w,
            part: RefCell::new(part),
        }
    }

    /// Counts an error of `kind`, in the part and on the progress line.
    pub fn error(&self, kind: impl Into<String>) {
        self.part.borrow_mut().error(kind);
        Progress::add(&self.shared.progress.errors, 1);
    }

    /// Counts `n` stamped frames read in one batch, the first at `recv_ns`.
    pub fn delivered(&self, n: u64, recv_ns: u64) {
        let mut p = self.part.borrow_mut();
        p.deliveries += n;
        p.delivery_last_ns = p.delivery_last_ns.max(recv_ns);
        Progress::add(&self.shared.progress.deliveries, n);
    }
}
