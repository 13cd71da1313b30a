//! The engine of one load process: worker threads, each a current-thread tokio runtime that
//! owns a slice of the sockets, its own counters and its own HDR histograms (merged at the
//! end, never shared while running). Worker 0 of the publishing process also runs the
//! open-loop publisher.
//!
//! ```text
//!   main thread                      worker threads (one runtime each)
//!   ───────────                      ─────────────────────────────────
//!   plan sockets, mint tokens ──►    phase 1: connect + upgrade + welcome (bounded concurrency)
//!   wait for every "ready"    ◄──    ready
//!   go(): start time (UNIX ns) ──►   phase 2: receive / hold / close; publisher on schedule
//!   progress line, join       ◄──    Part (histograms + counters)
//! ```
//!
//! Every loop here is bounded: connects by `connect_timeout`, phase 2 by
//! `start + duration + drain` (+ a fixed slow-consumer drain bound), publishes by the
//! scheduled request count and `request_timeout`.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::net::IpAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use tokio::sync::{watch, Notify, Semaphore};
use tokio::task::{spawn_local, JoinHandle, LocalSet};
use tokio::time::{sleep_until, Instant};

use crate::conn::{ConnError, DrainEnd, ReadOutcome, WsConn};
use crate::event::{self, unix_ns, Pos, Stamp};
use crate::net::{post_events_request, HttpConn};
use crate::output::{Progress, ProgressLine};
use crate::resume::{self, ResumeTally, Seen, Tracker};
use crate::scenario::{Kind, Scenario};
use crate::stats::{Part, SocketTally};
use crate::target::{self, Target};
use crate::token::{Minter, TokenError};
use crate::ws::{CLOSE_NORMAL, CLOSE_SLOW_CONSUMER};

/// How long a slow socket may take, after the run, to hand over its backlog and close frame.
const SLOW_DRAIN_BOUND: Duration = Duration::from_secs(10);
/// Silence after which a draining slow socket is judged "still open".
const SLOW_DRAIN_IDLE: Duration = Duration::from_secs(1);
/// Bound on writing our close frame at the end.
const CLOSE_WAIT: Duration = Duration::from_millis(500);
/// Requests due but not yet sent, at most; beyond it the node is so far behind that the
/// run has failed anyway, and the rest are counted as errors rather than held in memory.
const MAX_BACKLOG: usize = 1_000_000;
/// Longest a receiver waits past `duration + drain` for a node that is still delivering.
const DRAIN_CAP: Duration = Duration::from_secs(60);
/// How often receivers re-check "publishing is over and I have everything".
const DONE_POLL: Duration = Duration::from_millis(50);

/// Which share of the sockets this process runs (`--procs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Slice {
    pub index: u32,
    pub count: u32,
}

impl Slice {
    pub const WHOLE: Slice = Slice { index: 0, count: 1 };
}

/// Everything one process needs to run its slice.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub scenario: Scenario,
    pub secret: String,
    pub api_key: String,
    /// Names the sessions of this run (shared by every process of the run).
    pub run_id: u32,
    pub slice: Slice,
    pub threads: usize,
}

/// Why the engine could not run.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Target(#[from] target::TargetError),
    #[error(transparent)]
    Token(#[from] TokenError),
    /// A worker thread could not be started or panicked: a bug, or the machine is out of
    /// threads.
    #[error("worker thread: {0}")]
    Worker(String),
    /// The orchestrator did not give the start signal (parent gone, or its step failed).
    #[error("start signal: {0}")]
    Start(String),
}

/// One socket this process opens. Pure data from [`plan`].
#[derive(Debug, Clone, PartialEq)]
pub struct SocketSpec {
    /// Global index across all processes.
    pub g: u64,
    /// Index within this process (paces open-loop connects).
    pub local: u64,
    pub session: u32,
    pub node: usize,
    pub slow: bool,
}

/// The sockets of `slice`: socket g joins session g / sockets_per_session, connects to node
/// g mod nodes, and is slow as [`Scenario::is_slow`] says.
pub fn plan(scn: &Scenario, slice: Slice, nodes: usize) -> Vec<SocketSpec> {
    let per = u64::from(scn.sockets_per_session.max(1));
    let nodes = nodes.max(1) as u64;
    (0..scn.total_sockets())
        .filter(|g| g % u64::from(slice.count) == u64::from(slice.index))
        .enumerate()
        .map(|(local, g)| SocketSpec {
            g,
            local: local as u64,
            session: u32::try_from(g / per).unwrap_or(u32::MAX),
            node: (g % nodes) as usize,
            slow: scn.is_slow(g),
        })
        .collect()
}

/// File descriptors this process needs: its sockets, publisher connections, churn sockets.
pub fn fds_needed(scn: &Scenario, slice: Slice) -> u64 {
    let sockets = plan_len(scn, slice);
    let publishers = if slice.index == 0 && scn.kind.publishes() {
        u64::from(scn.publishers)
    } else {
        0
    };
    sockets + publishers + scn.churn_live_max() / u64::from(slice.count) + 1 + crate::sys::FD_SLACK
}

fn plan_len(scn: &Scenario, slice: Slice) -> u64 {
    let total = scn.total_sockets();
    let n = u64::from(slice.count);
    total / n + u64::from(total % n > u64::from(slice.index))
}

/// Read-only state every worker thread of the process shares.
struct Shared {
    scn: Scenario,
    sessions: Vec<String>,
    minter: Minter,
    api_key: String,
    publish_target: Target,
    nodes: Vec<Target>,
    /// Source addresses per node.
    srcs: Vec<Vec<Option<IpAddr>>>,
    slice: Slice,
    threads: usize,
    publisher_here: bool,
    /// UNIX ns at which the process began connecting (paces open-loop connects).
    connect_t0: u64,
    start_rx: watch::Receiver<u64>,
    /// 202-accepted events per session, written by the publisher, read by receivers to stop
    /// early once they have everything.
    accepted: Vec<AtomicU64>,
    /// resume: the last accepted seq per session (from the receipts) and its epoch, read by
    /// receivers to stop once they stand there.
    last_seq: Vec<AtomicU64>,
    last_epoch: Vec<AtomicU64>,
    /// Names the run; seeds the resume drop schedule (the same in every process).
    run_id: u32,
    publish_done: AtomicBool,
    progress: Arc<Progress>,
}

impl Shared {
    fn src_for(&self, node: usize, g: u64) -> Option<IpAddr> {
        let list = &self.srcs[node];
        list[(g / self.nodes.len() as u64 % list.len() as u64) as usize]
    }
    fn duration_ns(&self) -> u64 {
        u64::try_from(self.scn.duration.0.as_nanos()).unwrap_or(u64::MAX)
    }
    fn drain_ns(&self) -> u64 {
        u64::try_from(self.scn.drain.0.as_nanos()).unwrap_or(u64::MAX)
    }
}

/// Tokio instant for a UNIX-ns time (now, if it is in the past).
fn instant_at(ns: u64) -> Instant {
    let now_ns = unix_ns();
    let now = Instant::now();
    now + Duration::from_nanos(ns.saturating_sub(now_ns))
}

/// Runs this process's slice. `go` is called on this thread once every worker has finished
/// connecting; it returns the shared start time (UNIX ns). `tick` drives the progress line.
pub fn run_process(
    cfg: EngineConfig,
    progress: Arc<Progress>,
    line: &mut ProgressLine,
    go: impl FnOnce() -> Result<u64, EngineError>,
) -> Result<Part, EngineError> {
    let scn = cfg.scenario.clone();
    let publish_target = target::parse(&scn.url)?;
    let nodes = scn
        .receive_nodes()
        .iter()
        .map(|u| target::parse(u))
        .collect::<Result<Vec<_>, _>>()?;
    let srcs = nodes
        .iter()
        .map(|t| target::source_addrs(t.addr.ip(), scn.source_addrs))
        .collect();
    let needs_sockets = scn.total_sockets() > 0 || scn.kind == Kind::Churn;
    let minter = if needs_sockets {
        Minter::new(&cfg.secret)?
    } else {
        // publish-throughput without sockets signs nothing; any valid key will do.
        Minter::new(&"-".repeat(crate::token::MIN_SECRET_BYTES))?
    };
    let sessions: Vec<String> = (0..scn.sessions)
        .map(|i| event::session_name(cfg.run_id, i))
        .collect();
    let specs = plan(&scn, cfg.slice, nodes.len());
    // Tokens are minted before the clock starts so the connect phase measures the server.
    let mut tokens = Vec::with_capacity(specs.len());
    for s in &specs {
        tokens.push(minter.mint(&sessions[s.session as usize], &format!("u{}", s.g))?);
    }
    let (start_tx, start_rx) = watch::channel(0u64);
    let threads = cfg.threads.max(1);
    // CPU is accounted over what the scenario measures: the connect phase for
    // connect-storm and idle-hold, the run after the start signal otherwise.
    let measures_connect = !scn.kind.publishes();
    let mut cpu0 = crate::sys::process_cpu_ns();
    let mut cpu_from_ns = unix_ns();
    let shared = Arc::new(Shared {
        accepted: (0..scn.sessions).map(|_| AtomicU64::new(0)).collect(),
        last_seq: (0..scn.sessions).map(|_| AtomicU64::new(0)).collect(),
        last_epoch: (0..scn.sessions).map(|_| AtomicU64::new(0)).collect(),
        run_id: cfg.run_id,
        publisher_here: cfg.slice.index == 0 && scn.kind.publishes(),
        scn,
        sessions,
        minter,
        api_key: cfg.api_key,
        publish_target,
        nodes,
        srcs,
        slice: cfg.slice,
        threads,
        connect_t0: unix_ns(),
        start_rx,
        publish_done: AtomicBool::new(false),
        progress: progress.clone(),
    });

    let mut per_worker: Vec<Vec<(SocketSpec, String)>> = vec![Vec::new(); threads];
    for (i, (s, t)) in specs.into_iter().zip(tokens).enumerate() {
        per_worker[i % threads].push((s, t));
    }
    let (ready_tx, ready_rx) = mpsc::channel::<()>();
    let mut handles = Vec::with_capacity(threads);
    for (w, work) in per_worker.into_iter().enumerate() {
        let shared = shared.clone();
        let ready = ready_tx.clone();
        let h = std::thread::Builder::new()
            .name(format!("lt-worker-{w}"))
            .spawn(move || worker_thread(shared, w, work, ready))
            .map_err(|e| EngineError::Worker(e.to_string()))?;
        handles.push(h);
    }
    drop(ready_tx);
    if shared.publisher_here {
        let shared = shared.clone();
        let h = std::thread::Builder::new()
            .name("lt-publisher".into())
            .spawn(move || publisher_thread(shared))
            .map_err(|e| EngineError::Worker(e.to_string()))?;
        handles.push(h);
    }

    let mut ready = 0;
    while ready < threads {
        match ready_rx.recv_timeout(Duration::from_millis(100)) {
            Ok(()) => ready += 1,
            Err(mpsc::RecvTimeoutError::Timeout) => line.tick(&progress, "connect"),
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    let started = if ready == threads {
        go()
    } else {
        Err(EngineError::Worker(
            "a worker stopped before it was ready".into(),
        ))
    };
    if !measures_connect {
        cpu0 = crate::sys::process_cpu_ns();
        cpu_from_ns = unix_ns();
    }
    match &started {
        Ok(start) => {
            let _ = start_tx.send(*start);
        }
        Err(_) => drop(start_tx),
    }
    while !handles.iter().all(|h| h.is_finished()) {
        std::thread::sleep(Duration::from_millis(50));
        line.tick(&progress, "run");
    }
    let mut part = Part::default();
    for h in handles {
        let p = h
            .join()
            .map_err(|_| EngineError::Worker("worker panicked".into()))?;
        part.merge(p);
    }
    started?;
    part.load_cpu_ns = crate::sys::process_cpu_ns().saturating_sub(cpu0);
    part.cpu_from_ns = cpu_from_ns;
    part.end_ns = unix_ns();
    Ok(part)
}

/// Worker-local state: the shared config plus this worker's own measurements.
struct Ctx {
    shared: Arc<Shared>,
    w: usize,
    part: RefCell<Part>,
}

impl Ctx {
    fn error(&self, kind: impl Into<String>) {
        self.part.borrow_mut().error(kind);
        Progress::add(&self.shared.progress.errors, 1);
    }
}

fn worker_thread(
    shared: Arc<Shared>,
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
    local.block_on(&rt, worker_main(shared, w, work, ready))
}

/// The publisher's own thread and runtime, so socket reads on the workers do not delay
/// scheduled publishes (and the reverse).
fn publisher_thread(shared: Arc<Shared>) -> Part {
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
        let ctx = Rc::new(Ctx {
            shared: shared.clone(),
            w: usize::MAX,
            part: RefCell::new(Part::default()),
        });
        let mut rx = shared.start_rx.clone();
        let start_ns = match rx.wait_for(|v| *v != 0).await {
            Ok(v) => *v,
            Err(_) => return ctx.part.take(),
        };
        ctx.part.borrow_mut().start_ns = start_ns;
        publish(ctx.clone(), start_ns).await;
        ctx.part.take()
    })
}

async fn worker_main(
    shared: Arc<Shared>,
    w: usize,
    work: Vec<(SocketSpec, String)>,
    ready: mpsc::Sender<()>,
) -> Part {
    let ctx = Rc::new(Ctx {
        shared: shared.clone(),
        w,
        part: RefCell::new(Part {
            sockets_planned: work.len() as u64,
            ..Part::default()
        }),
    });
    let scn = &shared.scn;

    // Phase 1: connect, bounded concurrency (the process's budget split across workers).
    let permits = (scn.connect_concurrency as usize / shared.threads).max(1);
    let sem = Rc::new(Semaphore::new(permits));
    let handles: Vec<_> = work
        .into_iter()
        .map(|(spec, token)| spawn_local(connect_one(ctx.clone(), sem.clone(), spec, token)))
        .collect();
    let mut conns = Vec::with_capacity(handles.len());
    let mut resumable = Vec::new();
    for h in handles {
        if let Ok(Some((spec, token, c))) = h.await {
            if scn.kind == Kind::Resume {
                resumable.push((spec, token, c));
            } else {
                conns.push((spec, c));
            }
        }
    }
    let _ = ready.send(());

    let mut rx = shared.start_rx.clone();
    let start_ns = match rx.wait_for(|v| *v != 0).await {
        Ok(v) => *v,
        Err(_) => {
            conns.extend(resumable.into_iter().map(|(s, _, c)| (s, c)));
            close_all(conns).await;
            return ctx.part.take();
        }
    };
    ctx.part.borrow_mut().start_ns = start_ns;

    // Phase 2.
    let mut tasks: Vec<JoinHandle<()>> = Vec::new();
    match scn.kind {
        Kind::ConnectStorm => close_all(conns).await,
        Kind::IdleHold => {
            for (spec, c) in conns {
                tasks.push(spawn_local(hold(ctx.clone(), spec, c, start_ns)));
            }
        }
        Kind::Resume => {
            for (spec, token, c) in resumable {
                tasks.push(spawn_local(resume_socket(
                    ctx.clone(),
                    spec,
                    token,
                    c,
                    start_ns,
                )));
            }
        }
        _ => {
            for (spec, c) in conns {
                if spec.slow {
                    tasks.push(spawn_local(slow(ctx.clone(), c, start_ns)));
                } else {
                    tasks.push(spawn_local(receive(ctx.clone(), spec, c, start_ns)));
                }
            }
            if scn.kind == Kind::Churn {
                tasks.push(spawn_local(churn(ctx.clone(), start_ns)));
            }
        }
    }
    for t in tasks {
        if t.await.is_err() {
            ctx.error("task_panicked");
        }
    }
    ctx.part.take()
}

async fn close_all(conns: Vec<(SocketSpec, WsConn)>) {
    let tasks: Vec<_> = conns
        .into_iter()
        .map(|(_, c)| spawn_local(c.close(CLOSE_NORMAL, CLOSE_WAIT)))
        .collect();
    for t in tasks {
        let _ = t.await;
    }
}

async fn connect_one(
    ctx: Rc<Ctx>,
    sem: Rc<Semaphore>,
    spec: SocketSpec,
    token: String,
) -> Option<(SocketSpec, String, WsConn)> {
    let sh = &ctx.shared;
    let scn = &sh.scn;
    // Open loop when paced: the handshake "starts" at its scheduled time, even if a permit
    // or the previous handshakes delayed it.
    let scheduled = (scn.connect_rate > 0.0).then(|| {
        let per_proc = scn.connect_rate / f64::from(sh.slice.count);
        sh.connect_t0 + (spec.local as f64 * 1e9 / per_proc) as u64
    });
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
    match WsConn::open(target, src, rcvbuf, &token, None, spec.g ^ began, deadline).await {
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

/// idle-hold: keep the socket open (answering pings) until start + duration, then close.
async fn hold(ctx: Rc<Ctx>, _spec: SocketSpec, mut c: WsConn, start_ns: u64) {
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

/// A healthy socket: reads every frame, records publish→receive latency, counts events for
/// the loss check. After the scheduled end it stops once publishing is over and it has
/// every accepted event of its session (when the publisher is in this process), or once
/// nothing has arrived for `drain` — a node that is behind but still delivering is waited
/// for, up to [`DRAIN_CAP`] past the end.
async fn receive(ctx: Rc<Ctx>, spec: SocketSpec, mut c: WsConn, start_ns: u64) {
    let sh = ctx.shared.clone();
    let end_ns = start_ns.saturating_add(sh.duration_ns());
    let publish_end = instant_at(end_ns);
    let drain = sh.scn.drain.0;
    let hard_end = instant_at(
        end_ns
            .saturating_add(sh.drain_ns())
            .saturating_add(DRAIN_CAP.as_nanos() as u64),
    );
    let session = spec.session as usize;
    let mut received = 0u64;
    let mut last_frame = publish_end;
    let ending = loop {
        let now = Instant::now();
        if now >= hard_end {
            break None;
        }
        let publisher_busy = sh.publisher_here && !sh.publish_done.load(Ordering::Acquire);
        if now >= publish_end && !publisher_busy && now >= last_frame.max(publish_end) + drain {
            break None;
        }
        let until = if now < publish_end {
            publish_end
        } else {
            (now + DONE_POLL).min(hard_end)
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
            let mut p = ctx.part.borrow_mut();
            p.deliveries += n;
            p.delivery_last_ns = p.delivery_last_ns.max(recv_ns);
            Progress::add(&sh.progress.deliveries, n);
        }
        match r {
            Ok(ReadOutcome::Data) | Ok(ReadOutcome::Idle) => {
                if sh.publish_done.load(Ordering::Acquire)
                    && received >= sh.accepted[session].load(Ordering::Acquire)
                {
                    break None;
                }
            }
            Ok(ReadOutcome::Closed(code)) => break Some(Ok(code)),
            Ok(ReadOutcome::Eof) => break Some(Err("healthy_eof".to_owned())),
            Err(e) => break Some(Err(e.kind())),
        }
    };
    ctx.part.borrow_mut().sockets.push(SocketTally {
        session: spec.session,
        received,
    });
    match ending {
        None => c.close(CLOSE_NORMAL, CLOSE_WAIT).await,
        Some(Ok(code)) => {
            ctx.part.borrow_mut().close_code(code);
            ctx.error(format!(
                "healthy_closed_{}",
                code.map_or_else(|| "none".to_owned(), |c| c.to_string())
            ));
            c.close(CLOSE_NORMAL, CLOSE_WAIT).await;
        }
        Some(Err(kind)) => ctx.error(kind),
    }
}

/// A slow consumer: never reads until publishing is over, then drains its backlog looking
/// for the server's close frame, which must carry 4008.
async fn slow(ctx: Rc<Ctx>, mut c: WsConn, start_ns: u64) {
    let sh = ctx.shared.clone();
    let hard_end = instant_at(
        start_ns
            .saturating_add(sh.duration_ns())
            .saturating_add(sh.drain_ns()),
    );
    // Wait until publishing is over: known here when the publisher is in this process,
    // assumed at end + drain otherwise.
    while Instant::now() < hard_end && !sh.publish_done.load(Ordering::Acquire) {
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

/// The open-loop publisher: request j is scheduled at start + j × interval regardless of how
/// earlier requests fared; `publishers` keep-alive connections take requests from one queue.
/// A request's events carry its scheduled time, so time spent waiting for a free connection
/// counts as latency (no coordinated omission).
///
/// The schedule is kept by a plain thread ([`schedule`]) sleeping with 1 µs timer slack,
/// because tokio's timer wheel has 1 ms granularity and would add up to 1 ms of the tool's
/// own lateness to every publish.
async fn publish(ctx: Rc<Ctx>, start_ns: u64) {
    let sh = ctx.shared.clone();
    let scn = &sh.scn;
    let n = scn.requests_planned();
    let interval = scn.request_interval_ns();
    {
        let mut p = ctx.part.borrow_mut();
        p.accepted_per_session = vec![0; sh.sessions.len()];
        if scn.kind == Kind::Resume {
            p.accepted_last = vec![Pos::default(); sh.sessions.len()];
        }
        p.events_scheduled = n * u64::from(scn.batch);
    }
    let queue: Rc<RefCell<VecDeque<(u64, u64)>>> = Rc::new(RefCell::new(VecDeque::new()));
    let notify = Rc::new(Notify::new());
    let done = Rc::new(Cell::new(false));
    let pending = Arc::new(AtomicUsize::new(0));
    let conns: Vec<_> = (0..scn.publishers)
        .map(|i| {
            spawn_local(publisher_conn(
                ctx.clone(),
                i,
                queue.clone(),
                notify.clone(),
                done.clone(),
                pending.clone(),
            ))
        })
        .collect();

    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(u64, u64)>();
    let pending2 = pending.clone();
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
            queue.borrow_mut().push_back(job);
            notify.notify_one();
        }
    }
    done.set(true);
    notify.notify_waiters();
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
    sh.publish_done.store(true, Ordering::Release);
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

async fn publisher_conn(
    ctx: Rc<Ctx>,
    index: u32,
    queue: Rc<RefCell<VecDeque<(u64, u64)>>>,
    notify: Rc<Notify>,
    done: Rc<Cell<bool>>,
    pending: Arc<AtomicUsize>,
) {
    let sh = ctx.shared.clone();
    let scn = &sh.scn;
    let batch = u64::from(scn.batch);
    let sessions = u64::from(scn.sessions);
    let srcs = target::source_addrs(sh.publish_target.addr.ip(), scn.source_addrs);
    let src = srcs[index as usize % srcs.len()];
    let mut conn: Option<HttpConn> = None;
    let mut body = Vec::new();
    let mut req = Vec::new();
    loop {
        let next = queue.borrow_mut().pop_front();
        let Some((j, sched)) = next else {
            if done.get() {
                break;
            }
            notify.notified().await;
            continue;
        };
        pending.fetch_sub(1, Ordering::Relaxed);
        // Requests whose turn came long after the run would have ended are still sent: the
        // schedule is bounded by count, and their lateness is the measurement.
        if conn.is_none() {
            match tokio::time::timeout(
                scn.connect_timeout.0,
                HttpConn::connect(sh.publish_target.addr, src),
            )
            .await
            {
                Ok(Ok(c)) => conn = Some(c),
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
        let events = (first..first + batch).map(|e| {
            let s = (e % sessions) as usize;
            (
                sh.sessions[s].as_str(),
                Stamp {
                    scheduled_ns: sched,
                    seq: e,
                },
            )
        });
        event::publish_body(&mut body, events, batch as usize, scn.event_bytes);
        post_events_request(&mut req, &sh.publish_target.host, &sh.api_key, &body);
        {
            let mut p = ctx.part.borrow_mut();
            p.requests_sent += 1;
            p.send_lag.record_ns(unix_ns().saturating_sub(sched));
        }
        let result = tokio::time::timeout(scn.request_timeout.0, c.round_trip(&req)).await;
        let now = unix_ns();
        match result {
            Ok(Ok(202)) => {
                let mut p = ctx.part.borrow_mut();
                p.requests_accepted += 1;
                p.events_accepted += batch;
                p.publish.record_ns(now.saturating_sub(sched));
                for e in first..first + batch {
                    let s = (e % sessions) as usize;
                    p.accepted_per_session[s] += 1;
                    sh.accepted[s].fetch_add(1, Ordering::AcqRel);
                }
                Progress::add(&sh.progress.accepted, batch);
                drop(p);
                if scn.kind == Kind::Resume {
                    take_receipts(&ctx, c.body(), first, batch);
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

/// resume: records the position of each event of an accepted request (its `202`
/// receipts, in request order: event `first + i` went to session `(first + i) mod
/// sessions`) as the session's last accepted event, for the end check and for receivers
/// waiting to catch up.
fn take_receipts(ctx: &Ctx, body: &[u8], first: u64, batch: u64) {
    let sh = &ctx.shared;
    let sessions = sh.sessions.len() as u64;
    let mut i = 0u64;
    let mut mismatched = false;
    let mut p = ctx.part.borrow_mut();
    let n = event::parse_receipts(body, |name, pos| {
        let s = ((first + i) % sessions) as usize;
        i += 1;
        if name != sh.sessions[s].as_bytes() {
            mismatched = true;
            return;
        }
        let last = resume::later(p.accepted_last[s], pos);
        p.accepted_last[s] = last;
        // Epoch first: a receiver matches both (a new epoch only comes with a restart).
        sh.last_epoch[s].store(last.epoch, Ordering::Release);
        sh.last_seq[s].store(last.seq, Ordering::Release);
    });
    drop(p);
    if mismatched {
        ctx.error("receipt_session_mismatch");
    }
    if n as u64 != batch {
        ctx.error("receipt_count_mismatch");
    }
}

/// resume: a socket that reads every frame like [`receive`], checks its stream's
/// continuity ([`Tracker`]), and at the moments [`resume::drop_in_second`] picks drops
/// (a reset or a close frame, without reading further), stays away for `away`, and
/// reconnects with `since=` the last position it processed. Events the old connection
/// had buffered but it never read must come back in the replay. After the scheduled end
/// it stops once publishing is over and it stands at its session's last receipt (when
/// the publisher is in this process), or after `drain` of silence.
async fn resume_socket(ctx: Rc<Ctx>, spec: SocketSpec, token: String, c: WsConn, start_ns: u64) {
    let sh = ctx.shared.clone();
    let scn = &sh.scn;
    let end_ns = start_ns.saturating_add(sh.duration_ns());
    let publish_end = instant_at(end_ns);
    let drain = scn.drain.0;
    let hard_end = instant_at(
        end_ns
            .saturating_add(sh.drain_ns())
            .saturating_add(DRAIN_CAP.as_nanos() as u64),
    );
    let session = spec.session as usize;
    let seed = u64::from(sh.run_id).rotate_left(17);
    let Some(welcome) = c.welcome() else {
        ctx.error("welcome_without_position");
        c.close(CLOSE_NORMAL, CLOSE_WAIT).await;
        return;
    };
    let mut t = Tracker::new(welcome);
    let mut conn = Some(c);
    // The next drop at or after `from` (UNIX ns), before the scheduled end.
    let next_drop = |from: u64| -> Option<(u64, resume::PlannedDrop)> {
        let k0 = from.saturating_sub(start_ns) / 1_000_000_000;
        (k0..)
            .map(|k| (k, start_ns + k * 1_000_000_000))
            .take_while(|(_, second)| *second < end_ns)
            .filter_map(|(k, second)| {
                resume::drop_in_second(seed, spec.g, k, scn.drop_fraction)
                    .map(|d| (second + d.offset_ns, d))
            })
            .find(|(at, _)| *at >= from && *at < end_ns)
    };
    let mut planned = next_drop(start_ns);
    let mut last_frame = publish_end;
    let ending = loop {
        let now = Instant::now();
        if now >= hard_end {
            break None;
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
                match reconnect(&ctx, &spec, &token, t.pos, hard_end).await {
                    Some(c) => {
                        match c.welcome() {
                            Some(w) => t.resumed(w),
                            None => ctx.error("welcome_without_position"),
                        }
                        conn = Some(c);
                    }
                    None => break Some(Err("resume_gave_up".to_owned())),
                }
                planned = next_drop(unix_ns());
                continue;
            }
        }
        let Some(c) = conn.as_mut() else {
            break Some(Err("resume_no_connection".to_owned()));
        };
        let publisher_busy = sh.publisher_here && !sh.publish_done.load(Ordering::Acquire);
        if now >= publish_end && !publisher_busy && now >= last_frame.max(publish_end) + drain {
            break None;
        }
        let mut until = if now < publish_end {
            publish_end
        } else {
            (now + DONE_POLL).min(hard_end)
        };
        if let Some((at, _)) = planned {
            until = until.min(instant_at(at));
        }
        let mut n = 0u64;
        let mut recv_ns = 0u64;
        let r = c
            .read_some(until, |payload| {
                let Some(seen) = t.frame(event::classify(payload)) else {
                    return;
                };
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
            let mut p = ctx.part.borrow_mut();
            p.deliveries += n;
            p.delivery_last_ns = p.delivery_last_ns.max(recv_ns);
            Progress::add(&sh.progress.deliveries, n);
        }
        match r {
            Ok(ReadOutcome::Data) | Ok(ReadOutcome::Idle) => {
                if planned.is_none()
                    && sh.publish_done.load(Ordering::Acquire)
                    && t.pos.epoch == sh.last_epoch[session].load(Ordering::Acquire)
                    && t.pos.seq >= sh.last_seq[session].load(Ordering::Acquire)
                {
                    break None;
                }
            }
            Ok(ReadOutcome::Closed(code)) => break Some(Ok(code)),
            Ok(ReadOutcome::Eof) => break Some(Err("healthy_eof".to_owned())),
            Err(e) => break Some(Err(e.kind())),
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
    match ending {
        None => {
            if let Some(c) = conn {
                c.close(CLOSE_NORMAL, CLOSE_WAIT).await;
            }
        }
        Some(Ok(code)) => {
            ctx.part.borrow_mut().close_code(code);
            ctx.error(format!(
                "healthy_closed_{}",
                code.map_or_else(|| "none".to_owned(), |c| c.to_string())
            ));
            if let Some(c) = conn {
                c.close(CLOSE_NORMAL, CLOSE_WAIT).await;
            }
        }
        Some(Err(kind)) => ctx.error(kind),
    }
}

/// Reopens a resume socket with `since=pos`, retrying every `away` after a failure (each
/// counted) until `hard_end`.
async fn reconnect(
    ctx: &Ctx,
    spec: &SocketSpec,
    token: &str,
    pos: Pos,
    hard_end: Instant,
) -> Option<WsConn> {
    let sh = &ctx.shared;
    let scn = &sh.scn;
    let target = &sh.nodes[spec.node];
    let src = sh.src_for(spec.node, spec.g);
    loop {
        let began = unix_ns();
        let deadline = (Instant::now() + scn.connect_timeout.0).min(hard_end);
        match WsConn::open(
            target,
            src,
            None,
            token,
            Some(pos),
            spec.g ^ began,
            deadline,
        )
        .await
        {
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
                tokio::time::sleep(scn.away.0).await;
            }
        }
    }
}

/// churn: short-lived sockets opened at a fixed rate while events flow. Their deliveries and
/// latency count; their events do not count for loss (they join and leave mid-stream).
async fn churn(ctx: Rc<Ctx>, start_ns: u64) {
    let sh = ctx.shared.clone();
    let scn = &sh.scn;
    let lanes = u64::from(sh.slice.count) * sh.threads as u64;
    let lane = u64::from(sh.slice.index) * sh.threads as u64 + ctx.w as u64;
    let rate = scn.churn_rate / lanes as f64;
    if rate <= 0.0 {
        return;
    }
    let n = (rate * scn.duration.0.as_secs_f64()).floor() as u64;
    let interval = (1e9 / rate) as u64;
    let max_live = scn.churn_live_max() / lanes + 1;
    let live = Rc::new(Cell::new(0u64));
    let mut tasks = Vec::new();
    for i in 0..n {
        sleep_until(instant_at(start_ns + i * interval)).await;
        if live.get() >= max_live {
            ctx.error("churn_skipped_too_many_live");
            continue;
        }
        live.set(live.get() + 1);
        let c = i * lanes + lane;
        tasks.push(spawn_local(churn_one(ctx.clone(), c, live.clone())));
    }
    for t in tasks {
        let _ = t.await;
    }
}

async fn churn_one(ctx: Rc<Ctx>, c: u64, live: Rc<Cell<u64>>) {
    let sh = ctx.shared.clone();
    let scn = &sh.scn;
    let session = (c % u64::from(scn.sessions)) as usize;
    let node = (c % sh.nodes.len() as u64) as usize;
    let token = match sh.minter.mint(&sh.sessions[session], &format!("churn{c}")) {
        Ok(t) => t,
        Err(_) => {
            ctx.error("token");
            live.set(live.get() - 1);
            return;
        }
    };
    let began = unix_ns();
    let deadline = Instant::now() + scn.connect_timeout.0;
    let src = sh.src_for(node, c);
    match WsConn::open(
        &sh.nodes[node],
        src,
        None,
        &token,
        None,
        c ^ began,
        deadline,
    )
    .await
    {
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
                    ctx.part.borrow_mut().deliveries += n;
                    Progress::add(&sh.progress.deliveries, n);
                }
                match r {
                    Ok(ReadOutcome::Data) | Ok(ReadOutcome::Idle) => {}
                    Ok(ReadOutcome::Closed(code)) => {
                        ctx.part.borrow_mut().close_code(code);
                        ctx.error("churn_closed_by_server");
                        live.set(live.get() - 1);
                        return;
                    }
                    Ok(ReadOutcome::Eof) => {
                        ctx.error("churn_eof");
                        live.set(live.get() - 1);
                        return;
                    }
                    Err(e) => {
                        ctx.error(e.kind());
                        live.set(live.get() - 1);
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
    live.set(live.get() - 1);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scn(text: &str) -> Scenario {
        crate::scenario::from_str(text, &[]).expect("valid")
    }

    #[test]
    fn plan_maps_sockets_to_sessions_nodes_and_processes() {
        let s = scn("kind = \"fanout\"\nsessions = 3\nsockets_per_session = 4\n");
        let all = plan(&s, Slice::WHOLE, 2);
        assert_eq!(all.len(), 12);
        assert_eq!(all[5].session, 1);
        assert_eq!(all[5].node, 1);
        assert_eq!(all[11].session, 2);
        let a = plan(&s, Slice { index: 0, count: 5 }, 1);
        let b = plan(&s, Slice { index: 4, count: 5 }, 1);
        assert_eq!(a.len(), 3);
        assert_eq!(b.len(), 2);
        assert_eq!(b[1].g, 9);
        assert_eq!(b[1].local, 1);
        let total: usize = (0..5)
            .map(|i| plan(&s, Slice { index: i, count: 5 }, 1).len())
            .sum();
        assert_eq!(total, 12);
        for i in 0..5 {
            assert_eq!(
                plan_len(&s, Slice { index: i, count: 5 }) as usize,
                plan(&s, Slice { index: i, count: 5 }, 1).len()
            );
        }
    }

    #[test]
    fn fds_needed_counts_sockets_publishers_and_slack() {
        let s =
            scn("kind = \"fanout\"\nsessions = 100\nsockets_per_session = 100\npublishers = 8\n");
        assert_eq!(
            fds_needed(&s, Slice::WHOLE),
            10_000 + 8 + 1 + crate::sys::FD_SLACK
        );
        assert_eq!(
            fds_needed(&s, Slice { index: 1, count: 2 }),
            5_000 + 1 + crate::sys::FD_SLACK
        );
    }
}
