//! Report output: the human table (stdout), `--json FILE`, `--hgrm FILE`, and the one-line
//! progress display (stderr).
//!
//! Owns: formatting only; every number comes from [`crate::stats::Report`].

use std::fmt::Write as _;
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::stats::{Hist, LatencyMs, Report};

/// HdrHistogram's percentile-distribution text, values in milliseconds (the format
/// HdrHistogram's plotter and `hdr-plot` read).
pub fn hgrm(h: &Hist) -> String {
    let h = &h.0;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:>12} {:>14} {:>10} {:>14}\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    );
    if !h.is_empty() {
        let mut total = 0u64;
        for v in h.iter_quantiles(5) {
            let value = v.value_iterated_to() as f64 / 1000.0;
            let q = v.quantile_iterated_to();
            total += v.count_since_last_iteration();
            if q < 1.0 {
                let _ = writeln!(
                    out,
                    "{value:12.3} {q:2.12} {total:10} {:14.2}",
                    1.0 / (1.0 - q)
                );
            } else {
                let _ = writeln!(out, "{value:12.3} {q:2.12} {total:10}");
            }
        }
    }
    let _ = writeln!(
        out,
        "#[Mean    = {:12.3}, StdDeviation   = {:12.3}]",
        h.mean() / 1000.0,
        h.stdev() / 1000.0
    );
    let _ = writeln!(
        out,
        "#[Max     = {:12.3}, Total count    = {:12}]",
        h.max() as f64 / 1000.0,
        h.len()
    );
    // HdrHistogram's sub-bucket count: the power of two covering 2 × 10^sigfig.
    let sub_buckets = (2.0 * 10f64.powi(i32::from(h.sigfig())))
        .log2()
        .ceil()
        .exp2() as u64;
    let _ = writeln!(
        out,
        "#[Buckets = {:12}, SubBuckets     = {:12}]",
        h.buckets(),
        sub_buckets
    );
    out
}

fn lat(l: &LatencyMs) -> String {
    if l.count == 0 {
        return "-".into();
    }
    format!(
        "p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}  (n={})",
        l.p50, l.p90, l.p99, l.p99_9, l.max, l.count
    )
}

fn map(m: &std::collections::BTreeMap<String, u64>) -> String {
    if m.is_empty() {
        return "none".into();
    }
    m.iter()
        .map(|(k, v)| format!("{k}×{v}"))
        .collect::<Vec<_>>()
        .join("  ")
}

/// The human-readable table.
pub fn table(r: &Report) -> String {
    let s = &r.scenario;
    let mut o = String::new();
    let mut procs = if r.procs > 1 {
        format!(", {} procs", r.procs)
    } else {
        String::new()
    };
    if s.target != crate::scenario::TargetKind::Relay {
        procs.push_str(&format!(", {} target", s.target));
    }
    let _ = if r.kind.publishes() {
        writeln!(
            o,
            "loadtest {} over {}: {} sessions × {} sockets, {} ev/s × {} B, batch {}, {:.1}s{procs}",
            r.kind,
            s.transport,
            s.sessions,
            s.sockets_per_session,
            s.rate,
            s.event_bytes,
            s.batch,
            r.duration_s
        )
    } else {
        writeln!(
            o,
            "loadtest {} over {}: {} sessions × {} sockets{}{procs}",
            r.kind,
            s.transport,
            s.sessions,
            s.sockets_per_session,
            if r.kind == crate::scenario::Kind::IdleHold {
                format!(", held {:.1}s", r.duration_s)
            } else {
                String::new()
            }
        )
    };
    let row = |o: &mut String, k: &str, v: String| {
        let _ = writeln!(o, "  {k:<14} {v}");
    };
    row(
        &mut o,
        "sockets",
        format!(
            "{} connected / {} planned   ({:.0} handshakes/s)",
            r.sockets_connected, r.sockets_planned, r.handshakes_per_sec
        ),
    );
    row(&mut o, "handshake ms", lat(&r.handshake_ms));
    if r.kind.publishes() {
        row(
            &mut o,
            "published",
            format!(
                "{} events scheduled, {} accepted ({:.0}/s), {} unknown; requests {} accepted / {} sent",
                r.events_scheduled,
                r.events_accepted,
                r.events_per_sec,
                r.events_unknown,
                r.requests_accepted,
                r.requests_sent
            ),
        );
        row(&mut o, "publish ms", lat(&r.publish_latency_ms));
        row(&mut o, "dispatch lag", lat(&r.dispatch_lag_ms));
        row(&mut o, "send lag ms", lat(&r.send_lag_ms));
        let check = if r.kind == crate::scenario::Kind::Resume {
            // Resumed sockets get replays and resyncs: the loss check is the resume rows'.
            "live and replayed".to_owned()
        } else {
            format!(
                "expected {}, lost {}, excess {}",
                r.expected_deliveries, r.lost, r.excess
            )
        };
        row(
            &mut o,
            "deliveries",
            format!(
                "{} ({:.0}/s over {:.2}s), {check}",
                r.deliveries, r.deliveries_per_sec, r.window_s,
            ),
        );
        row(&mut o, "latency ms", lat(&r.latency_ms));
        if r.kind == crate::scenario::Kind::Resume {
            row(
                &mut o,
                "resume",
                format!(
                    "{} drops ({} away), {} resumes ({} failed), {} fresh, {} replayed, {} resyncs",
                    r.drops,
                    crate::scenario::format_duration(s.away.0),
                    r.resumes,
                    r.resume_failed,
                    r.fresh_reconnects,
                    r.replayed,
                    r.resyncs
                ),
            );
            row(
                &mut o,
                "silent losses",
                format!(
                    "{} ({} events in {} gaps, {} past the last position, {} sockets on another epoch); duplicates {}",
                    r.silent_losses,
                    r.gap_events,
                    r.gaps,
                    r.tail_missing,
                    r.epoch_mismatch,
                    r.duplicates
                ),
            );
            row(&mut o, "resume ms", lat(&r.resume_ms));
            if s.failover {
                row(
                    &mut o,
                    "failover ms",
                    format!("{} failovers: {}", r.failovers, lat(&r.failover_ms)),
                );
            }
        }
        if let Some(n) = &r.node_latency_ms {
            let f = |k: &str| n.get(k).and_then(|v| v.as_f64()).unwrap_or(f64::NAN);
            row(
                &mut o,
                "node /latency",
                format!(
                    "p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}  (n={}, accepted → written, node's own)",
                    f("p50"),
                    f("p90"),
                    f("p99"),
                    f("p99.9"),
                    f("max"),
                    n.get("count").and_then(|v| v.as_u64()).unwrap_or(0)
                ),
            );
        }
    }
    if r.slow_sockets > 0 {
        row(
            &mut o,
            "slow sockets",
            format!(
                "{} (closed with 4008: {})",
                r.slow_sockets, r.slow_closed_4008
            ),
        );
    }
    if r.churn_opened > 0 || r.churn_failed > 0 {
        row(
            &mut o,
            "churn",
            format!("{} opened, {} failed", r.churn_opened, r.churn_failed),
        );
    }
    row(&mut o, "close codes", map(&r.close_codes));
    row(
        &mut o,
        "errors",
        format!(
            "{} (budget {})  {}",
            r.errors_total,
            r.error_budget,
            map(&r.errors)
        ),
    );
    if let Some(rss) = &r.server_rss {
        row(
            &mut o,
            "server RSS",
            format!(
                "before {:.1} MiB, hold {:.1} MiB, after {:.1} MiB → {:.0} B per connection",
                rss.before_kib as f64 / 1024.0,
                rss.hold_kib as f64 / 1024.0,
                rss.after_kib as f64 / 1024.0,
                rss.per_conn_bytes
            ),
        );
    }
    row(
        &mut o,
        "cpu",
        format!(
            "loadtest {:.0}% of a core{}",
            r.load_cpu_percent,
            r.server_cpu_percent
                .map(|p| format!(", node {p:.0}%"))
                .unwrap_or_default()
        ),
    );
    if r.passed {
        row(&mut o, "result", "PASS".into());
    } else {
        row(&mut o, "result", format!("FAIL: {}", r.failures.join("; ")));
    }
    o
}

/// A Markdown table, one row per (name, report).
pub fn summary_table(rows: &[(String, Report)]) -> String {
    let mut o = String::from(
        "| run | kind | sockets | deliveries/s | events/s | handshakes/s | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | node p99 / p99.9 ms | lost | errors | close codes | RSS/conn | load CPU | node CPU | result |\n\
         | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- | ---: | ---: | ---: | --- |\n",
    );
    for (name, r) in rows {
        // Latency columns show publish→receive, or publish→202 / handshake when nothing
        // was delivered (publish-throughput, connect-storm, idle-hold).
        let l = if r.latency_ms.count > 0 {
            r.latency_ms
        } else if r.publish_latency_ms.count > 0 {
            r.publish_latency_ms
        } else {
            r.handshake_ms
        };
        let _ = writeln!(
            o,
            "| {name} | {}{} | {} | {:.0} | {:.0} | {:.0} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {} | {} | {} | {} | {} | {:.0}% | {} | {} |",
            r.kind,
            match r.scenario.transport {
                crate::scenario::Transport::Ws => String::new(),
                t => format!(" ({t})"),
            },
            r.sockets_connected,
            r.deliveries_per_sec,
            r.events_per_sec,
            r.handshakes_per_sec,
            l.p50,
            l.p90,
            l.p99,
            l.p99_9,
            l.max,
            r.node_latency_ms
                .as_ref()
                .map(|n| {
                    let f = |k: &str| n.get(k).and_then(|v| v.as_f64()).unwrap_or(f64::NAN);
                    format!("{:.3} / {:.3}", f("p99"), f("p99.9"))
                })
                .unwrap_or_else(|| "-".into()),
            r.lost + r.silent_losses,
            if r.errors.is_empty() { "0".to_owned() } else { map(&r.errors) },
            if r.close_codes.is_empty() { "-".to_owned() } else { map(&r.close_codes) },
            r.server_rss
                .map(|x| format!("{:.0} B", x.per_conn_bytes))
                .unwrap_or_else(|| "-".into()),
            r.load_cpu_percent,
            r.server_cpu_percent
                .map(|p| format!("{p:.0}%"))
                .unwrap_or_else(|| "-".into()),
            if r.passed { "PASS" } else { "FAIL" },
        );
    }
    o
}

/// Counters the workers bump (Relaxed, one writer per cache line is not needed at these
/// rates: one add per read batch) and the progress line reads.
#[derive(Debug, Default)]
pub struct Progress {
    pub connected: AtomicU64,
    pub deliveries: AtomicU64,
    pub accepted: AtomicU64,
    pub errors: AtomicU64,
    /// resume: events skipped without a resync so far (the end check adds the tail).
    pub silent: AtomicU64,
}

impl Progress {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// Prints a one-line status to stderr every second (rewriting the line on a terminal,
/// a new line every 5 s otherwise).
pub struct ProgressLine {
    label: String,
    started: Instant,
    last: Instant,
    last_deliveries: u64,
    tty: bool,
    enabled: bool,
    printed: bool,
}

impl ProgressLine {
    pub fn new(label: String, enabled: bool) -> Self {
        let now = Instant::now();
        ProgressLine {
            label,
            started: now,
            last: now,
            last_deliveries: 0,
            tty: std::io::stderr().is_terminal(),
            enabled,
            printed: false,
        }
    }

    /// Plain lines every 5 s even on a terminal (for `--procs` children, whose lines would
    /// otherwise overwrite each other).
    pub fn lines(label: String, enabled: bool) -> Self {
        ProgressLine {
            tty: false,
            ..Self::new(label, enabled)
        }
    }

    /// Call often; prints at most once per interval.
    pub fn tick(&mut self, p: &Progress, phase: &str) {
        let interval = if self.tty {
            Duration::from_secs(1)
        } else {
            Duration::from_secs(5)
        };
        if !self.enabled || self.last.elapsed() < interval {
            return;
        }
        let dt = self.last.elapsed().as_secs_f64();
        self.last = Instant::now();
        let d = p.deliveries.load(Ordering::Relaxed);
        let rate = (d - self.last_deliveries.min(d)) as f64 / dt;
        self.last_deliveries = d;
        let line = format!(
            "[{}] {:>6.1}s {:<10} sockets {:>7}  accepted {:>9}  deliveries {:>10} ({:>9.0}/s)  errors {}  silent {}",
            self.label,
            self.started.elapsed().as_secs_f64(),
            phase,
            p.connected.load(Ordering::Relaxed),
            p.accepted.load(Ordering::Relaxed),
            d,
            rate,
            p.errors.load(Ordering::Relaxed),
            p.silent.load(Ordering::Relaxed)
        );
        let mut err = std::io::stderr().lock();
        if self.tty {
            let _ = write!(err, "\r\x1b[2K{line}");
        } else {
            let _ = writeln!(err, "{line}");
        }
        let _ = err.flush();
        self.printed = true;
    }

    /// Ends the line so the report starts on a fresh one.
    pub fn finish(&mut self) {
        if self.enabled && self.tty && self.printed {
            let _ = writeln!(std::io::stderr());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hgrm_has_header_rows_and_footer() {
        let mut h = Hist::new();
        for us in 1..=100u64 {
            h.record_ns(us * 10_000);
        }
        let text = hgrm(&h);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].contains("Percentile"));
        assert!(lines[1].is_empty());
        let first: Vec<&str> = lines[2].split_whitespace().collect();
        assert_eq!(first.len(), 4);
        assert!((first[0].parse::<f64>().expect("value") - 0.01).abs() < 1e-3);
        assert!(text.contains("#[Max     =        1.000, Total count    =          100]"));
        let last_row = lines[lines.len() - 4];
        assert!(last_row.contains("1.000000000000"), "{last_row}");
    }

    #[test]
    fn empty_histogram_still_writes_a_footer() {
        let text = hgrm(&Hist::new());
        assert!(text.contains("Total count    =            0"));
        assert!(text.contains("SubBuckets     =         2048"), "{text}");
    }
}
