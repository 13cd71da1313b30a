//! One load process, run from its main thread: resolve the targets, plan the sockets,
//! mint their tokens, start the worker threads (and the publisher's, in the publishing
//! process), wait until every worker has connected, give the start signal, drive the
//! progress line, and merge the workers' parts.
//!
//! ```text
//!   main thread                      worker threads (one runtime each)
//!   ───────────                      ─────────────────────────────────
//!   plan sockets, mint tokens ──►    phase 1: connect + upgrade + welcome (bounded concurrency)
//!   wait for every "ready"    ◄──    ready
//!   go(): start time (UNIX ns) ──►   phase 2: the kind's behaviour; publisher on schedule
//!   progress line, join       ◄──    Part (histograms + counters)
//! ```
//!
//! Owns: the engine's public face ([`EngineConfig`], [`EngineError`], [`run_process`]),
//! thread start-up and join, and the process's CPU window. May not touch sockets or
//! HTTP itself; it blocks only its own (non-runtime) thread.

use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::kinds::Behaviour;
use super::plan::{self, Slice};
use super::publisher::{self, PublishTo};
use super::shared::Shared;
use super::worker;
use crate::event::{self, unix_ns};
use crate::output::{Progress, ProgressLine};
use crate::scenario::{Kind, Scenario};
use crate::stats::Part;
use crate::target;
use crate::token::{Minter, TokenError};

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
    /// `--allow-remote` and `--ca-file`.
    pub targets: target::TargetOptions,
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

/// Runs this process's slice. `go` is called on this thread once every worker has finished
/// connecting; it returns the shared start time (UNIX ns). `line` is the progress line.
pub fn run_process(
    cfg: EngineConfig,
    progress: Arc<Progress>,
    line: &mut ProgressLine,
    go: impl FnOnce() -> Result<u64, EngineError>,
) -> Result<Part, EngineError> {
    let scn = cfg.scenario.clone();
    // Resolved once, here, before any worker starts: the publisher first, then the nodes.
    let receive = scn.receive_nodes();
    let mut urls = vec![scn.url.as_str()];
    urls.extend(receive.iter().map(String::as_str));
    let mut nodes = target::resolve_all(&urls, &cfg.targets)?;
    let publish_target = nodes.remove(0);
    let srcs = nodes
        .iter()
        .map(|t| target::source_addrs(t.addr.ip(), scn.source_addrs))
        .collect();
    let signs = (scn.total_sockets() > 0 || scn.kind == Kind::Churn) && scn.needs_credentials();
    let minter = if signs {
        Minter::new(&cfg.secret)?
    } else {
        // publish-throughput without sockets, and a harness, sign nothing; any valid key
        // will do.
        Minter::new(&"-".repeat(crate::token::MIN_SECRET_BYTES))?
    };
    let sessions: Vec<String> = (0..scn.sessions)
        .map(|i| event::session_name(cfg.run_id, i))
        .collect();
    let specs = plan::plan(&scn, cfg.slice, nodes.len());
    // Tokens are minted before the clock starts so the connect phase measures the server.
    let mut tokens = Vec::with_capacity(specs.len());
    for s in &specs {
        tokens.push(if signs {
            minter.mint(&sessions[s.session as usize], &format!("u{}", s.g))?
        } else {
            String::new()
        });
    }
    let (start_tx, start_rx) = watch::channel(0u64);
    let threads = cfg.threads.max(1);
    // CPU is accounted over what the scenario measures: the connect phase for
    // connect-storm and idle-hold, the run after the start signal otherwise.
    let measures_connect = !scn.kind.publishes();
    let mut cpu0 = crate::sys::process_cpu_ns();
    let mut cpu_from_ns = unix_ns();
    let behaviour = Behaviour::for_kind(scn.kind, cfg.run_id, sessions.len());
    let shared = Arc::new(Shared::new(
        scn,
        sessions,
        minter,
        nodes,
        srcs,
        cfg.slice,
        threads,
        start_rx,
        progress.clone(),
    ));

    let (ready_tx, ready_rx) = mpsc::channel::<()>();
    let mut handles = Vec::with_capacity(threads);
    for (w, work) in plan::deal(specs.into_iter().zip(tokens), threads)
        .into_iter()
        .enumerate()
    {
        let shared = shared.clone();
        let behaviour = behaviour.clone();
        let ready = ready_tx.clone();
        let h = std::thread::Builder::new()
            .name(format!("lt-worker-{w}"))
            .spawn(move || worker::worker_thread(shared, behaviour, w, work, ready))
            .map_err(|e| EngineError::Worker(e.to_string()))?;
        handles.push(h);
    }
    drop(ready_tx);
    if shared.publisher_here {
        let shared = shared.clone();
        let to = Arc::new(PublishTo {
            target: publish_target,
            api_key: cfg.api_key,
        });
        let receipts = behaviour.receipts();
        let h = std::thread::Builder::new()
            .name("lt-publisher".into())
            .spawn(move || publisher::publisher_thread(shared, to, receipts))
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
