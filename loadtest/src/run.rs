//! Orchestration: one process, or `--procs N` children of this same binary, each running a
//! slice of the sockets; the start signal; server RSS samples; the final [`Report`].
//!
//! Child protocol (all lines, UTF-8): the parent writes one JSON [`ChildConfig`] line to the
//! child's stdin; the child prints `READY` on stdout once its sockets are connected; the
//! parent writes `GO <unix_ns>` once every child is ready; the child prints
//! `PART <json>` and exits. A child whose stdin closes early stops by itself.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::engine::{self, EngineConfig, EngineError, Slice};
use crate::event::unix_ns;
use crate::output::{Progress, ProgressLine};
use crate::scenario::Scenario;
use crate::stats::{Part, Report, Rss};
use crate::sys::{self, SysError};
use crate::target;
use crate::token::{env_file_value, TokenError};

/// Delay between "everyone is ready" and the shared start, so every process sees it in time.
const START_LEAD: Duration = Duration::from_millis(100);

/// How to run a scenario, besides the scenario itself.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// JWT secret (`--secret` / `JWT_SIGNING_SECRET` / `.env.local`).
    pub secret: Option<String>,
    /// Publish key (`--api-key` / `RELAY_API_KEY` / `.env.local`).
    pub api_key: Option<String>,
    /// Sample this process's VmRSS (the relay's) before, during and after.
    pub server_pid: Option<u32>,
    /// Load processes; 1 runs in this process.
    pub procs: u32,
    /// Worker threads per process; default: CPUs this process may use.
    pub threads: Option<usize>,
    /// Pin to these CPUs (with `procs` > 1, child i gets `cpus[i mod len]`).
    pub cpus: Option<Vec<usize>>,
    /// Show the progress line on stderr.
    pub progress: bool,
    /// `--allow-remote` and `--ca-file`: how far the run may reach, whom TLS trusts.
    pub targets: target::TargetOptions,
}

/// Why a run could not produce a report.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Target(#[from] target::TargetError),
    #[error(transparent)]
    Sys(#[from] SysError),
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// `RELAY_API_KEY` is needed to publish.
    #[error("no API key: pass --api-key, set RELAY_API_KEY, or run where .env.local is")]
    NoApiKey,
    /// A `--procs` child failed or broke the protocol; its stderr says why.
    #[error("load process {index}: {why}")]
    Child { index: u32, why: String },
}

/// What the parent sends a child on its first stdin line.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChildConfig {
    pub scenario: Scenario,
    pub secret: String,
    pub api_key: String,
    pub run_id: u32,
    pub slice: Slice,
    pub threads: Option<usize>,
    pub cpus: Option<Vec<usize>>,
    /// Print a progress line (plain lines, labelled with the process index).
    #[serde(default)]
    pub progress: bool,
    /// The parent's `--allow-remote` and `--ca-file`.
    #[serde(default)]
    pub targets: target::TargetOptions,
}

fn dotenv(key: &str) -> Option<String> {
    let text = std::fs::read_to_string(".env.local").ok()?;
    env_file_value(&text, key)
}

fn resolve(scn: &Scenario, opts: &RunOptions) -> Result<(String, String), RunError> {
    if !scn.needs_credentials() {
        // A harness takes no token and no API key: nothing to sign or send.
        return Ok((String::new(), String::new()));
    }
    let secret = opts
        .secret
        .clone()
        .filter(|s| !s.is_empty())
        .or_else(|| dotenv("JWT_SIGNING_SECRET"));
    let api_key = opts
        .api_key
        .clone()
        .filter(|s| !s.is_empty())
        .or_else(|| dotenv("RELAY_API_KEY"));
    let needs_secret = scn.total_sockets() > 0 || scn.kind == crate::scenario::Kind::Churn;
    let secret = match secret {
        Some(s) => s,
        None if needs_secret => return Err(TokenError::Missing.into()),
        None => String::new(),
    };
    let api_key = match api_key {
        Some(k) => k.split(',').next().unwrap_or("").trim().to_owned(),
        None if scn.kind.publishes() => return Err(RunError::NoApiKey),
        None => String::new(),
    };
    if scn.kind.publishes() && api_key.is_empty() {
        return Err(RunError::NoApiKey);
    }
    if needs_secret {
        crate::token::Minter::new(&secret)?;
    }
    Ok((secret, api_key))
}

/// Checks every URL of the scenario parses and is within reach: loopback, unless
/// `targets` says `--allow-remote`; and that a `--ca-file` loads when a URL uses TLS.
/// Resolves no name.
pub fn check_targets(scn: &Scenario, targets: &target::TargetOptions) -> Result<(), RunError> {
    let mut urls = vec![scn.url.as_str()];
    urls.extend(scn.nodes.iter().map(String::as_str));
    target::check_all(&urls, targets)?;
    Ok(())
}

fn run_id() -> u32 {
    let t = unix_ns();
    (t as u32) ^ ((t >> 32) as u32) ^ std::process::id().rotate_left(16)
}

fn sample(pid: Option<u32>) -> Result<Option<u64>, RunError> {
    pid.map(sys::vm_rss_kib).transpose().map_err(Into::into)
}

/// Runs a scenario to its report: the library entry the CLI (and tests) use.
pub fn run(scn: &Scenario, opts: &RunOptions) -> Result<Report, RunError> {
    check_targets(scn, &opts.targets)?;
    let (secret, api_key) = resolve(scn, opts)?;
    let procs = opts.procs.max(1);
    let slice0 = Slice {
        index: 0,
        count: procs,
    };
    sys::ensure_nofile(engine::fds_needed(scn, slice0))?;
    if let Some(cpus) = &opts.cpus {
        if procs == 1 {
            sys::pin(cpus)?;
        }
    }
    let run_id = run_id();
    let before = sample(opts.server_pid)?;
    let settle = scn.settle.0;
    let progress = Arc::new(Progress::default());
    let mut line = ProgressLine::new(scn.kind.to_string(), opts.progress);
    let mut hold = None;
    // Same window as the load's CPU: see engine::run_process.
    let mut server_cpu0 = if scn.kind.publishes() {
        None
    } else {
        opts.server_pid.and_then(sys::pid_cpu_ns)
    };

    let part = if procs == 1 {
        let cfg = EngineConfig {
            scenario: scn.clone(),
            secret,
            api_key,
            run_id,
            slice: Slice::WHOLE,
            threads: opts.threads.unwrap_or_else(sys::allowed_cpus),
            targets: opts.targets.clone(),
        };
        let pid = opts.server_pid;
        let hold_slot = &mut hold;
        let cpu_slot = &mut server_cpu0;
        let r = engine::run_process(cfg, progress.clone(), &mut line, || {
            if pid.is_some() {
                std::thread::sleep(settle);
                *hold_slot = sample(pid).map_err(|e| EngineError::Start(e.to_string()))?;
            }
            if cpu_slot.is_none() {
                *cpu_slot = pid.and_then(sys::pid_cpu_ns);
            }
            Ok(unix_ns() + START_LEAD.as_nanos() as u64)
        });
        line.finish();
        r?
    } else {
        let r = run_children(
            scn,
            opts,
            &secret,
            &api_key,
            run_id,
            procs,
            &mut hold,
            &mut server_cpu0,
        );
        line.finish();
        r?
    };

    let server_cpu = match (server_cpu0, opts.server_pid.and_then(sys::pid_cpu_ns)) {
        (Some(a), Some(b)) => Some(b.saturating_sub(a)),
        _ => None,
    };
    let rss = match (before, hold) {
        (Some(b), Some(h)) => {
            std::thread::sleep(settle);
            let after = sample(opts.server_pid)?.unwrap_or(0);
            Some(Rss::new(b, h, after, part.sockets_connected))
        }
        _ => None,
    };
    let mut report = Report::build(scn, &part, procs, rss, server_cpu);
    if scn.kind.publishes() && scn.target == crate::scenario::TargetKind::Relay {
        report.node_latency_ms = node_latency(scn, &opts.targets);
    }
    Ok(report)
}

/// The publishing node's `/latency` JSON, if it serves it on the public port.
fn node_latency(scn: &Scenario, targets: &target::TargetOptions) -> Option<serde_json::Value> {
    let t = target::resolve_all(&[scn.url.as_str()], targets)
        .ok()?
        .pop()?;
    let (status, body) = crate::net::get_blocking(&t, "/latency", Duration::from_secs(2)).ok()?;
    let v: serde_json::Value = (status == 200).then(|| serde_json::from_slice(&body).ok())??;
    // A node that delivered nothing (cross-node publisher) has nothing to say.
    (v.get("count").and_then(|c| c.as_u64()) != Some(0)).then_some(v)
}

struct ChildProc {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

fn child_err(index: u32, why: impl Into<String>) -> RunError {
    RunError::Child {
        index,
        why: why.into(),
    }
}

fn read_line(c: &mut ChildProc, index: u32) -> Result<String, RunError> {
    let mut s = String::new();
    match c.stdout.read_line(&mut s) {
        Ok(0) => Err(child_err(index, "exited early (see its stderr above)")),
        Ok(_) => Ok(s.trim_end().to_owned()),
        Err(e) => Err(child_err(index, e.to_string())),
    }
}

#[allow(clippy::too_many_arguments)]
fn run_children(
    scn: &Scenario,
    opts: &RunOptions,
    secret: &str,
    api_key: &str,
    run_id: u32,
    procs: u32,
    hold: &mut Option<u64>,
    server_cpu0: &mut Option<u64>,
) -> Result<Part, RunError> {
    let exe = std::env::current_exe().map_err(|e| child_err(0, e.to_string()))?;
    let mut children = Vec::new();
    for index in 0..procs {
        let mut child = Command::new(&exe)
            .arg("child")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| child_err(index, e.to_string()))?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            let _ = child.kill();
            return Err(child_err(index, "no pipes"));
        };
        let cpus = opts
            .cpus
            .as_ref()
            .map(|c| vec![c[index as usize % c.len()]]);
        let cfg = ChildConfig {
            scenario: scn.clone(),
            secret: secret.to_owned(),
            api_key: api_key.to_owned(),
            run_id,
            slice: Slice {
                index,
                count: procs,
            },
            threads: opts.threads,
            cpus,
            progress: opts.progress,
            targets: opts.targets.clone(),
        };
        let mut c = ChildProc {
            child,
            stdin,
            stdout: BufReader::new(stdout),
        };
        let json = serde_json::to_string(&cfg).map_err(|e| child_err(index, e.to_string()))?;
        writeln!(c.stdin, "{json}").map_err(|e| child_err(index, e.to_string()))?;
        children.push(c);
    }
    let result = drive_children(&mut children, opts, scn, hold, server_cpu0);
    for c in &mut children {
        // Children exit by themselves after PART; a failed run must not leave them behind.
        if result.is_err() {
            let _ = c.child.kill();
        }
        let _ = c.child.wait();
    }
    result
}

fn drive_children(
    children: &mut [ChildProc],
    opts: &RunOptions,
    scn: &Scenario,
    hold: &mut Option<u64>,
    server_cpu0: &mut Option<u64>,
) -> Result<Part, RunError> {
    for (i, c) in children.iter_mut().enumerate() {
        let line = read_line(c, i as u32)?;
        if line != "READY" {
            return Err(child_err(i as u32, format!("expected READY, got {line:?}")));
        }
    }
    if opts.server_pid.is_some() {
        std::thread::sleep(scn.settle.0);
        *hold = sample(opts.server_pid)?;
    }
    if server_cpu0.is_none() {
        *server_cpu0 = opts.server_pid.and_then(sys::pid_cpu_ns);
    }
    let start = unix_ns() + START_LEAD.as_nanos() as u64;
    for (i, c) in children.iter_mut().enumerate() {
        writeln!(c.stdin, "GO {start}").map_err(|e| child_err(i as u32, e.to_string()))?;
        c.stdin
            .flush()
            .map_err(|e| child_err(i as u32, e.to_string()))?;
    }
    let mut part = Part::default();
    for (i, c) in children.iter_mut().enumerate() {
        let line = read_line(c, i as u32)?;
        let json = line
            .strip_prefix("PART ")
            .ok_or_else(|| child_err(i as u32, format!("expected PART, got {line:?}")))?;
        let p: Part = serde_json::from_str(json).map_err(|e| child_err(i as u32, e.to_string()))?;
        part.merge(p);
    }
    Ok(part)
}

/// The `loadtest child` entry: reads its config from stdin, runs its slice, prints `PART`.
pub fn child_main() -> Result<(), RunError> {
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    let first = match lines.next() {
        Some(Ok(l)) => l,
        _ => return Err(child_err(u32::MAX, "no config on stdin")),
    };
    let cfg: ChildConfig =
        serde_json::from_str(&first).map_err(|e| child_err(u32::MAX, e.to_string()))?;
    let index = cfg.slice.index;
    let kind = cfg.scenario.kind;
    if let Some(cpus) = &cfg.cpus {
        sys::pin(cpus)?;
    }
    sys::ensure_nofile(engine::fds_needed(&cfg.scenario, cfg.slice))?;
    let engine_cfg = EngineConfig {
        scenario: cfg.scenario,
        secret: cfg.secret,
        api_key: cfg.api_key,
        run_id: cfg.run_id,
        slice: cfg.slice,
        threads: cfg.threads.unwrap_or_else(sys::allowed_cpus),
        targets: cfg.targets,
    };
    let mut line = ProgressLine::lines(format!("{kind} #{index}"), cfg.progress);
    let part = engine::run_process(engine_cfg, Arc::new(Progress::default()), &mut line, || {
        let mut out = std::io::stdout().lock();
        writeln!(out, "READY").map_err(|e| EngineError::Start(e.to_string()))?;
        out.flush().map_err(|e| EngineError::Start(e.to_string()))?;
        drop(out);
        match lines.next() {
            Some(Ok(l)) => l
                .strip_prefix("GO ")
                .and_then(|n| n.trim().parse::<u64>().ok())
                .ok_or_else(|| EngineError::Start(format!("expected GO, got {l:?}"))),
            _ => Err(EngineError::Start("parent closed stdin".into())),
        }
    })?;
    let json = serde_json::to_string(&part).map_err(|e| child_err(index, e.to_string()))?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "PART {json}").map_err(|e| child_err(index, e.to_string()))?;
    out.flush().map_err(|e| child_err(index, e.to_string()))?;
    Ok(())
}
