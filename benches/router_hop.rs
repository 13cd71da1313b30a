//! The cost of one hop between shards: from `Router::send` on one thread to the
//! owning shard's executor holding the message, through the bounded crossbeam
//! channel and the doorbell.
//!
//! Two cases:
//! - parked: one message at a time, 200 µs apart, so the receiving executor is
//!   asleep in io_uring each time and the latency includes the wake-up
//!   (HdrHistogram percentiles);
//! - burst: messages back to back; the figure is the sustained rate, i.e. the
//!   amortized cost of a hop when the shard is awake and draining (latency there
//!   is queueing, not the hop, so it is not reported).
//!
//! `cargo bench --bench router_hop` (harness = false: it prints its own table).

// The bench drives the router from plain threads that may block.
#![allow(clippy::disallowed_methods)]

use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use glommio::{LocalExecutorBuilder, Placement};
use hdrhistogram::Histogram;
use relay::router::{Router, ShardMsg};

fn run(name: &str, messages: u64, gap: Option<Duration>) {
    let (router, mut inboxes) = Router::new(1).expect("router");
    let inbox = inboxes.pop().expect("one inbox");
    let base = Instant::now();
    let received = Arc::new(AtomicU64::new(0));
    let seen = received.clone();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let placement = if cpus > 1 {
        Placement::Fixed(1)
    } else {
        Placement::Unbound
    };
    let shard = LocalExecutorBuilder::new(placement)
        .io_memory(512 * 1024)
        .spawn(move || async move {
            let mut hist = Histogram::<u64>::new_with_bounds(1, 10_000_000_000, 3).expect("bounds");
            let mut waiter = inbox.waiter().expect("waiter");
            let inbox = Rc::new(inbox);
            loop {
                waiter.rearm();
                while let Ok(msg) = inbox.rx.try_recv() {
                    if let ShardMsg::SnapshotRequest { id, .. } = msg {
                        let now = base.elapsed().as_nanos() as u64;
                        hist.saturating_record(now.saturating_sub(id).max(1));
                        inbox.budget.release(0);
                        if seen.fetch_add(1, Ordering::Release) + 1 == messages {
                            return hist;
                        }
                    }
                }
                waiter.wait().await.expect("doorbell");
            }
        })
        .expect("executor");

    for _ in 0..messages {
        let sent_at = base.elapsed().as_nanos() as u64;
        let mut msg = ShardMsg::SnapshotRequest {
            from: 0,
            id: sent_at,
        };
        loop {
            match router.send(0, msg) {
                Ok(()) => break,
                Err((_, m)) => {
                    msg = m;
                    std::thread::yield_now();
                }
            }
        }
        if let Some(gap) = gap {
            let until = Instant::now() + gap;
            while Instant::now() < until {
                std::hint::spin_loop();
            }
        }
    }
    let hist = shard.join().expect("shard");
    if gap.is_none() {
        let elapsed = base.elapsed();
        println!(
            "router_hop/{name:<7} n={:>6}  {:>10.0} msgs/s  {:>6.3} µs per hop (amortized)",
            hist.len(),
            messages as f64 / elapsed.as_secs_f64(),
            elapsed.as_secs_f64() * 1e6 / messages as f64,
        );
        return;
    }
    print_percentiles(&format!("router_hop/{name}"), &hist);
}

/// Baseline for the parked case: a plain thread blocked in crossbeam's `recv`
/// (a futex wait), woken by the same send pattern. The gap between this and the
/// parked hop is what the doorbell and glommio's io_uring park add.
fn futex_baseline(messages: u64, gap: Duration) {
    let (tx, rx) = crossbeam_channel::bounded::<u64>(1024);
    let base = Instant::now();
    let receiver = std::thread::spawn(move || {
        let mut hist = Histogram::<u64>::new_with_bounds(1, 10_000_000_000, 3).expect("bounds");
        for _ in 0..messages {
            let sent = rx.recv().expect("sender alive");
            let now = base.elapsed().as_nanos() as u64;
            hist.saturating_record(now.saturating_sub(sent).max(1));
        }
        hist
    });
    for _ in 0..messages {
        tx.send(base.elapsed().as_nanos() as u64)
            .expect("receiver alive");
        let until = Instant::now() + gap;
        while Instant::now() < until {
            std::hint::spin_loop();
        }
    }
    let hist = receiver.join().expect("receiver");
    print_percentiles("futex_baseline", &hist);
}

/// One line of percentiles, in microseconds, from a histogram in nanoseconds.
fn print_percentiles(label: &str, hist: &Histogram<u64>) {
    let us = |q: f64| hist.value_at_quantile(q) as f64 / 1e3;
    println!(
        "{label:<17} n={:>6}  p50={:>7.2} µs  p90={:>7.2} µs  p99={:>7.2} µs  p99.9={:>8.2} µs  max={:>8.2} µs",
        hist.len(),
        us(0.5),
        us(0.9),
        us(0.99),
        us(0.999),
        hist.max() as f64 / 1e3,
    );
}

fn main() {
    // `cargo test --benches` runs bench binaries with --bench absent: keep that quick.
    if !std::env::args().any(|a| a == "--bench") {
        println!("router_hop: run with `cargo bench --bench router_hop`");
        return;
    }
    futex_baseline(20_000, Duration::from_micros(100));
    run("parked", 20_000, Some(Duration::from_micros(100)));
    run("burst", 500_000, None);
}
