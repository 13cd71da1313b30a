//! `resume-storm`: what a burst of resumes from Redis history does to publishers.
//!
//! 1. Fills `--sessions` sessions with `--backlog` events each through `--fill-url`
//!    (one node of a Redis-backed cluster), so their history lives in Redis Streams.
//! 2. Publishes one event every `1/--probe-rate` s to a probe session through `--url`
//!    (another node, started fresh, so its rings hold none of the backlog) on one
//!    keep-alive connection, timing each 202: the publish latency through Redis.
//! 3. After `--idle`, opens `--clients` WebSockets to `--url` at once, spread over the
//!    sessions, each resuming with `since=EPOCH:0`: every one needs the whole backlog
//!    read back from Redis. Each counts its replay until it reaches the last seq.
//! 4. Keeps probing for `--after` once every client is whole (or `--timeout`).
//!
//! Prints one JSON object: the probe's latency while idle and during the storm (p50,
//! p99, max, count), how long the storm took, replayed events, resyncs and failures.
//!
//! Loopback only, bounded in count and time. Owns nothing the relay uses: a
//! measurement harness for docs/benchmarks.md.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Parser;
use hdrhistogram::Histogram;
use loadtest::conn::{ReadOutcome, Subscribe, WsConn};
use loadtest::event::{classify, Pos, ServerFrame};
use loadtest::net::{post_events_request, HttpConn};
use loadtest::target::{resolve_all, Reach, Target, TargetOptions};
use loadtest::token::Minter;
use tokio::time::Instant;

#[derive(Parser, Debug)]
#[command(about = "Publish latency through Redis while many clients resume from Redis history")]
struct Args {
    /// The node the clients resume on and the probe publishes to (started fresh).
    #[arg(long)]
    url: String,
    /// The node that fills the history (another node on the same Redis).
    #[arg(long)]
    fill_url: String,
    #[arg(long, env = "JWT_SIGNING_SECRET", hide_env_values = true)]
    jwt_secret: String,
    #[arg(long, env = "RELAY_API_KEY", hide_env_values = true)]
    api_key: String,
    #[arg(long, default_value_t = 10)]
    sessions: usize,
    #[arg(long, default_value_t = 1000)]
    backlog: usize,
    #[arg(long, default_value_t = 1000)]
    clients: usize,
    /// Probe publishes per second.
    #[arg(long, default_value_t = 200)]
    probe_rate: u32,
    /// Seconds.
    #[arg(long, default_value_t = 3.0)]
    idle: f64,
    /// Seconds.
    #[arg(long, default_value_t = 3.0)]
    after: f64,
    /// Seconds.
    #[arg(long, default_value_t = 60.0)]
    timeout: f64,
    /// Tags session names so runs against one Redis do not share streams.
    #[arg(long, default_value = "storm")]
    prefix: String,
}

/// Probe latencies, split by phase.
struct Probe {
    idle: Histogram<u64>,
    storm: Histogram<u64>,
    failed: u64,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let opts = TargetOptions {
        reach: Reach::Loopback,
        ca_file: None,
    };
    let targets = resolve_all(&[args.url.as_str(), args.fill_url.as_str()], &opts)?;
    let (node, fill) = (targets[0].clone(), targets[1].clone());
    let minter = Minter::new(&args.jwt_secret)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let epochs = rt.block_on(fill_history(&fill, &args))?;

    // The probe runs on a thread of its own, so reading the storm never delays it.
    let storm_on = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let probe = {
        let (node, key, rate) = (node.clone(), args.api_key.clone(), args.probe_rate);
        let session = format!("{}-probe", args.prefix);
        let (storm_on, stop) = (storm_on.clone(), stop.clone());
        std::thread::spawn(move || -> anyhow::Result<Probe> {
            realtime_priority();
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(run_probe(&node, &key, &session, rate, &storm_on, &stop))
        })
    };
    std::thread::sleep(Duration::from_secs_f64(args.idle));

    storm_on.store(true, Ordering::SeqCst);
    let started = std::time::Instant::now();
    eprintln!("storm starts at {:.3} s", args.idle);
    let replayed = Arc::new(AtomicU64::new(0));
    let resyncs = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let local = tokio::task::LocalSet::new();
    let whole = local.block_on(&rt, async {
        let deadline = Instant::now() + Duration::from_secs_f64(args.timeout);
        let mut tasks = Vec::with_capacity(args.clients);
        for i in 0..args.clients {
            let k = i % args.sessions;
            let session = format!("{}-{k}", args.prefix);
            let token = minter.mint(&session, &format!("u{i}"))?;
            let since = Pos {
                epoch: epochs[k].0,
                seq: 0,
            };
            let last = epochs[k].1;
            let (node, replayed, resyncs, failed) = (
                node.clone(),
                replayed.clone(),
                resyncs.clone(),
                failed.clone(),
            );
            tasks.push(tokio::task::spawn_local(async move {
                match resume_one(&node, &token, since, last, i as u64, deadline).await {
                    Ok((n, resynced)) => {
                        replayed.fetch_add(n, Ordering::Relaxed);
                        if resynced {
                            resyncs.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Err(e) => {
                        if failed.fetch_add(1, Ordering::Relaxed) < 3 {
                            eprintln!("client {i}: {e:#}");
                        }
                    }
                }
            }));
        }
        for t in tasks {
            t.await?;
        }
        anyhow::Ok(started.elapsed())
    });
    let whole = whole?;
    eprintln!("every client whole after {:.3} s", whole.as_secs_f64());
    storm_on.store(false, Ordering::SeqCst);
    std::thread::sleep(Duration::from_secs_f64(args.after));
    stop.store(true, Ordering::SeqCst);
    let probe = probe
        .join()
        .map_err(|_| anyhow::anyhow!("the probe thread panicked"))??;

    let ms = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "{}",
        serde_json::json!({
            "clients": args.clients,
            "sessions": args.sessions,
            "backlog": args.backlog,
            "storm_ms": whole.as_millis() as u64,
            "replayed": replayed.load(Ordering::Relaxed),
            "resyncs": resyncs.load(Ordering::Relaxed),
            "failed": failed.load(Ordering::Relaxed),
            "probe_failed": probe.failed,
            "idle": {"count": probe.idle.len(), "p50_ms": ms(&probe.idle, 0.5), "p99_ms": ms(&probe.idle, 0.99), "max_ms": probe.idle.max() as f64 / 1000.0},
            "storm": {"count": probe.storm.len(), "p50_ms": ms(&probe.storm, 0.5), "p99_ms": ms(&probe.storm, 0.99), "max_ms": probe.storm.max() as f64 / 1000.0},
        })
    );
    Ok(())
}

/// Publishes the backlog (100 events a request) and returns each session's epoch and
/// last seq from the receipts.
async fn fill_history(fill: &Target, args: &Args) -> anyhow::Result<Vec<(u64, u64)>> {
    let mut conn = HttpConn::connect(fill, None).await?;
    let mut req = Vec::new();
    let mut out = Vec::with_capacity(args.sessions);
    let data = "x".repeat(64);
    for k in 0..args.sessions {
        let session = format!("{}-{k}", args.prefix);
        let mut last = (0, 0);
        let mut left = args.backlog;
        while left > 0 {
            let n = left.min(100);
            let events: Vec<_> = (0..n)
                .map(|_| serde_json::json!({"session": session, "event": "fill", "data": {"pad": data}}))
                .collect();
            let body = serde_json::to_vec(&serde_json::json!({ "events": events }))?;
            post_events_request(&mut req, &fill.host, &args.api_key, &body);
            let status = conn.round_trip(&req).await?;
            if status != 202 {
                bail!(
                    "fill publish answered {status}: {}",
                    String::from_utf8_lossy(conn.body())
                );
            }
            let answer: serde_json::Value = serde_json::from_slice(conn.body())?;
            let receipt = answer["events"]
                .as_array()
                .and_then(|e| e.last())
                .context("a 202 without receipts")?;
            let epoch = receipt["epoch"]
                .as_str()
                .and_then(|e| u64::from_str_radix(e, 16).ok())
                .context("a receipt without an epoch")?;
            let seq = receipt["seq"].as_u64().context("a receipt without a seq")?;
            last = (epoch, seq);
            left -= n;
        }
        out.push(last);
    }
    Ok(out)
}

/// One client: resume after `since`, read until `last`; returns events replayed and
/// whether it was told to resync instead.
async fn resume_one(
    node: &Target,
    token: &str,
    since: Pos,
    last: u64,
    seed: u64,
    deadline: Instant,
) -> anyhow::Result<(u64, bool)> {
    let mut ws = WsConn::open(
        node,
        None,
        None,
        Subscribe::Token(token),
        Some(since),
        seed,
        deadline,
    )
    .await?;
    let mut seen = 0u64;
    let mut at = since.seq;
    let mut resynced = false;
    while at < last && !resynced {
        let outcome = ws
            .read_some(deadline, |payload| match classify(payload) {
                ServerFrame::Event(p) => {
                    seen += 1;
                    at = at.max(p.seq);
                }
                ServerFrame::Resync(_) => resynced = true,
                _ => {}
            })
            .await?;
        match outcome {
            ReadOutcome::Data => {}
            other => bail!("the stream ended early: {other:?}"),
        }
    }
    ws.abort();
    Ok((seen, resynced))
}

/// Best effort: the probe thread preempts the storm's readers on their core, so
/// what it times is the node, not this process's own scheduling (needs root).
fn realtime_priority() {
    let param = libc::sched_param { sched_priority: 10 };
    // SAFETY: a plain syscall on the calling thread with a valid parameter struct.
    let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) };
    if rc != 0 {
        eprintln!("note: the probe runs at normal priority (SCHED_FIFO needs root)");
    }
}

/// Publishes to the probe session at `rate`, timing every 202, until `stop`.
async fn run_probe(
    node: &Target,
    key: &str,
    session: &str,
    rate: u32,
    storm_on: &AtomicBool,
    stop: &AtomicBool,
) -> anyhow::Result<Probe> {
    let mut probe = Probe {
        idle: Histogram::new_with_bounds(1, 60_000_000, 3)?,
        storm: Histogram::new_with_bounds(1, 60_000_000, 3)?,
        failed: 0,
    };
    let begun = std::time::Instant::now();
    let mut conn = HttpConn::connect(node, None).await?;
    let body = format!(r#"{{"session":"{session}","event":"probe","data":{{"probe":true}}}}"#);
    let mut req = Vec::new();
    post_events_request(&mut req, &node.host, key, body.as_bytes());
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate.max(1))));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    while !stop.load(Ordering::SeqCst) {
        tick.tick().await;
        let storm = storm_on.load(Ordering::SeqCst);
        let t0 = std::time::Instant::now();
        let sent_at = begun.elapsed();
        let ok = matches!(conn.round_trip(&req).await, Ok(202));
        let us = t0.elapsed().as_micros() as u64;
        if !ok {
            probe.failed += 1;
            conn = HttpConn::connect(node, None).await?;
            continue;
        }
        let h = if storm {
            &mut probe.storm
        } else {
            &mut probe.idle
        };
        h.record(us.max(1))?;
        if us > 20_000 {
            eprintln!(
                "slow probe: sent at {:.3} s, answered in {:.1} ms",
                sent_at.as_secs_f64(),
                us as f64 / 1000.0
            );
        }
    }
    Ok(probe)
}
