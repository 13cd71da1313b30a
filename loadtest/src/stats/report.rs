//! From the merged [`Part`] to the [`Report`]: the loss rule, rates over their windows,
//! the resume end check, CPU shares, the error budget and pass/fail; plus the server's
//! memory samples ([`Rss`]).
//!
//! Owns: the math from measurements to verdict. May not measure or format: parts come
//! from the engine, and output formats are in [`crate::output`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::hist::{Hist, LatencyMs};
use super::part::{Part, SocketTally};
use crate::resume;
use crate::scenario::{Kind, Scenario};

/// Loss accounting over loss-tracked sockets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Loss {
    /// Σ accepted events of each socket's session.
    pub expected: u64,
    /// Σ events a socket should have got and did not.
    pub lost: u64,
    /// Σ events received beyond the accepted count (duplicates, or events whose publish
    /// outcome was unknown but that were delivered after all).
    pub excess: u64,
}

/// The loss rule: each tracked socket should receive every event accepted (202) for its
/// session while the run was on. Sockets are connected and welcomed before publishing starts.
pub fn loss(accepted_per_session: &[u64], sockets: &[SocketTally]) -> Loss {
    let mut l = Loss::default();
    for s in sockets {
        let want = accepted_per_session
            .get(s.session as usize)
            .copied()
            .unwrap_or(0);
        l.expected += want;
        l.lost += want.saturating_sub(s.received);
        l.excess += s.received.saturating_sub(want);
    }
    l
}

/// `count / seconds`, 0 when the window is empty.
pub fn per_sec(count: u64, ns: u64) -> f64 {
    if ns == 0 {
        0.0
    } else {
        count as f64 * 1e9 / ns as f64
    }
}

/// Server memory samples from /proc/PID/status (VmRSS, KiB).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Rss {
    /// Before any socket was opened.
    pub before_kib: u64,
    /// With every socket connected and idle, after `settle`.
    pub hold_kib: u64,
    /// After every socket closed, after `settle`.
    pub after_kib: u64,
    /// (hold − before) / connected sockets, in bytes.
    pub per_conn_bytes: f64,
}

impl Rss {
    pub fn new(before_kib: u64, hold_kib: u64, after_kib: u64, connected: u64) -> Self {
        let per_conn_bytes = if connected == 0 {
            0.0
        } else {
            hold_kib.saturating_sub(before_kib) as f64 * 1024.0 / connected as f64
        };
        Rss {
            before_kib,
            hold_kib,
            after_kib,
            per_conn_bytes,
        }
    }
}

/// The final report, as written by `--json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub scenario: Scenario,
    pub kind: Kind,
    /// Scheduled publish (or hold) duration, seconds.
    pub duration_s: f64,
    /// Window deliveries/s is computed over: from start to the later of the scheduled end
    /// and the last delivery, seconds.
    pub window_s: f64,
    pub procs: u32,
    pub sockets_planned: u64,
    pub sockets_connected: u64,
    pub handshakes_per_sec: f64,
    pub requests_sent: u64,
    pub requests_accepted: u64,
    pub events_scheduled: u64,
    pub events_accepted: u64,
    pub events_unknown: u64,
    pub events_per_sec: f64,
    pub deliveries: u64,
    pub deliveries_per_sec: f64,
    pub expected_deliveries: u64,
    pub lost: u64,
    pub excess: u64,
    /// Scheduled publish → frame received, on healthy sockets.
    pub latency_ms: LatencyMs,
    /// Scheduled publish → 202.
    pub publish_latency_ms: LatencyMs,
    /// Handshake start (or scheduled time) → welcome.
    pub handshake_ms: LatencyMs,
    /// Scheduled time → request written: the tool's lateness plus waiting for a free
    /// publisher connection. High with low `dispatch_lag_ms`: the node answered slowly.
    pub send_lag_ms: LatencyMs,
    /// Scheduled time → request queued for a connection: the load generator's own
    /// lateness alone (its thread wake-ups on this machine).
    pub dispatch_lag_ms: LatencyMs,
    pub errors: BTreeMap<String, u64>,
    pub errors_total: u64,
    pub error_budget: u64,
    pub close_codes: BTreeMap<String, u64>,
    pub slow_sockets: u64,
    pub slow_closed_4008: u64,
    pub churn_opened: u64,
    pub churn_failed: u64,
    /// resume: sockets dropped (reset or close frame) and reconnected with `since=`.
    #[serde(default)]
    pub drops: u64,
    #[serde(default)]
    pub resumes: u64,
    /// resume: reconnects that failed (and were retried); also in `errors`.
    #[serde(default)]
    pub resume_failed: u64,
    /// resume: events received after a resume with seq ≤ its welcome's seq.
    #[serde(default)]
    pub replayed: u64,
    /// resume: drops that came back fresh, without `since` (`resume_share` below 1).
    #[serde(default)]
    pub fresh_reconnects: u64,
    /// resume: resync frames received.
    #[serde(default)]
    pub resyncs: u64,
    /// resume: events neither received nor covered by a resync: `gap_events` + `tail_missing`.
    #[serde(default)]
    pub silent_losses: u64,
    /// resume: times a socket's stream skipped ahead (or changed epoch) without a resync.
    #[serde(default)]
    pub gaps: u64,
    /// resume: events those gaps skipped.
    #[serde(default)]
    pub gap_events: u64,
    /// resume: accepted events (receipts) past a socket's final position.
    #[serde(default)]
    pub tail_missing: u64,
    /// resume: sockets that ended on another epoch than their session's receipts.
    #[serde(default)]
    pub epoch_mismatch: u64,
    /// resume: events received at or below the socket's position.
    #[serde(default)]
    pub duplicates: u64,
    /// resume: reconnect start → welcome.
    #[serde(default)]
    pub resume_ms: LatencyMs,
    /// resume with failover: connections lost without a drop of ours and reconnected.
    #[serde(default)]
    pub failovers: u64,
    /// resume with failover: connection lost → welcome from another node (its p99 is when
    /// 99 % of those sockets were back).
    #[serde(default)]
    pub failover_ms: LatencyMs,
    pub server_rss: Option<Rss>,
    /// The node's own `GET /latency` at the end (accepted → written to the socket, since
    /// the node started), when it answers: separates the node's share of the latency from
    /// the network and the load generator's.
    pub node_latency_ms: Option<serde_json::Value>,
    /// CPU the load generator used while running, in % of one core: near 100 × its cores
    /// means the tool, not the node, may have been the limit.
    pub load_cpu_percent: f64,
    /// CPU the node used over the same window, in % of one core (with --server-pid).
    pub server_cpu_percent: Option<f64>,
    pub passed: bool,
    /// Why the run failed, one line each; empty when it passed.
    pub failures: Vec<String>,
    /// The merged histograms themselves (for `--hgrm`); not part of the JSON.
    #[serde(skip)]
    pub hists: Hists,
}

/// The three merged histograms of a run.
#[derive(Debug, Clone, Default)]
pub struct Hists {
    pub latency: Hist,
    pub publish: Hist,
    pub handshake: Hist,
}

impl Hists {
    /// The histogram `--hgrm` writes: publish→receive when events were delivered, else
    /// publish→202, else handshakes.
    pub fn primary(&self) -> &Hist {
        if !self.latency.0.is_empty() {
            &self.latency
        } else if !self.publish.0.is_empty() {
            &self.publish
        } else {
            &self.handshake
        }
    }
}

impl Report {
    /// Builds the report from the merged part. `procs` is informational.
    pub fn build(
        scn: &Scenario,
        part: &Part,
        procs: u32,
        rss: Option<Rss>,
        server_cpu_ns: Option<u64>,
    ) -> Report {
        let duration_ns = u64::try_from(scn.duration.0.as_nanos()).unwrap_or(u64::MAX);
        let l = loss(&part.accepted_per_session, &part.sockets);
        let mut errors = part.errors.clone();
        if l.excess > 0 && part.events_unknown == 0 {
            *errors.entry("unexpected_events".into()).or_insert(0) += l.excess;
        }
        let errors_total: u64 = errors.values().sum();
        let rc = part.resume;
        let (tail_missing, epoch_mismatch) =
            resume::tail_check(&part.accepted_last, &part.resume_sockets);
        let silent_losses = rc.gap_events + tail_missing;
        let operations = part.sockets_planned
            + part.requests_sent
            + part.churn_opened
            + rc.resumes
            + rc.resume_failed;
        let error_budget = scn.error_budget(operations);

        let start = part.start_ns;
        let sched_end = start.saturating_add(duration_ns);
        let window_end = sched_end.max(part.delivery_last_ns);
        let window_ns = if start == 0 {
            0
        } else {
            window_end.saturating_sub(start)
        };
        let publish_ns = if start == 0 {
            0
        } else {
            sched_end.max(part.publish_last_ns).saturating_sub(start)
        };

        let cpu_from = if part.cpu_from_ns != 0 {
            part.cpu_from_ns
        } else {
            start
        };
        let run_ns = part.end_ns.saturating_sub(cpu_from);
        let pct = |cpu: u64| {
            if run_ns == 0 || cpu_from == 0 {
                0.0
            } else {
                cpu as f64 * 100.0 / run_ns as f64
            }
        };
        let mut failures = Vec::new();
        if l.lost > 0 {
            failures.push(format!(
                "lost {} of {} expected deliveries (accepted by the node, never received)",
                l.lost, l.expected
            ));
        }
        if silent_losses > 0 {
            failures.push(format!(
                "{silent_losses} silent losses: {} events skipped in {} gaps without a resync, \
                 {tail_missing} accepted events past sockets' last positions ({epoch_mismatch} sockets on another epoch)",
                rc.gap_events, rc.gaps
            ));
        }
        if rc.duplicates > 0 {
            failures.push(format!("{} duplicate events", rc.duplicates));
        }
        if errors_total > error_budget {
            failures.push(format!(
                "{errors_total} errors, above the scenario's budget of {error_budget}"
            ));
        }
        if part.sockets_planned > 0 && part.sockets_connected == 0 {
            failures.push("no socket connected".into());
        }
        if scn.kind.publishes() && part.requests_accepted == 0 {
            failures.push("no publish request was accepted".into());
        }

        Report {
            scenario: scn.clone(),
            kind: scn.kind,
            duration_s: scn.duration.0.as_secs_f64(),
            window_s: window_ns as f64 / 1e9,
            procs,
            sockets_planned: part.sockets_planned,
            sockets_connected: part.sockets_connected,
            handshakes_per_sec: per_sec(
                part.sockets_connected,
                part.connect_last_ns.saturating_sub(part.connect_first_ns),
            ),
            requests_sent: part.requests_sent,
            requests_accepted: part.requests_accepted,
            events_scheduled: part.events_scheduled,
            events_accepted: part.events_accepted,
            events_unknown: part.events_unknown,
            events_per_sec: per_sec(part.events_accepted, publish_ns),
            deliveries: part.deliveries,
            deliveries_per_sec: per_sec(part.deliveries, window_ns),
            expected_deliveries: l.expected,
            lost: l.lost,
            excess: l.excess,
            latency_ms: part.latency.summary(),
            publish_latency_ms: part.publish.summary(),
            handshake_ms: part.handshake.summary(),
            send_lag_ms: part.send_lag.summary(),
            dispatch_lag_ms: part.dispatch_lag.summary(),
            errors,
            errors_total,
            error_budget,
            close_codes: part.close_codes.clone(),
            slow_sockets: part.slow_sockets,
            slow_closed_4008: part.slow_closed_4008,
            churn_opened: part.churn_opened,
            churn_failed: part.churn_failed,
            drops: rc.drops_reset + rc.drops_close,
            resumes: rc.resumes,
            resume_failed: rc.resume_failed,
            replayed: rc.replayed,
            fresh_reconnects: rc.fresh,
            resyncs: rc.resyncs,
            silent_losses,
            gaps: rc.gaps,
            gap_events: rc.gap_events,
            tail_missing,
            epoch_mismatch,
            duplicates: rc.duplicates,
            resume_ms: part.resume_handshake.summary(),
            failovers: rc.failovers,
            failover_ms: part.failover_time.summary(),
            server_rss: rss,
            node_latency_ms: None,
            load_cpu_percent: pct(part.load_cpu_ns),
            server_cpu_percent: server_cpu_ns.map(pct),
            passed: failures.is_empty(),
            failures,
            hists: Hists {
                latency: part.latency.clone(),
                publish: part.publish.clone(),
                handshake: part.handshake.clone(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Pos;
    use crate::resume::ResumeTally;

    fn scenario() -> Scenario {
        crate::scenario::from_str("kind = \"fanout\"\nduration = \"10s\"\n", &[]).expect("valid")
    }

    #[test]
    fn loss_counts_missing_events_per_socket() {
        let accepted = vec![10, 5];
        let sockets = [
            SocketTally {
                session: 0,
                received: 10,
            },
            SocketTally {
                session: 0,
                received: 7,
            },
            SocketTally {
                session: 1,
                received: 6,
            },
            SocketTally {
                session: 9,
                received: 0,
            },
        ];
        let l = loss(&accepted, &sockets);
        assert_eq!(
            l,
            Loss {
                expected: 25,
                lost: 3,
                excess: 1
            }
        );
    }

    #[test]
    fn rates_use_the_longer_of_schedule_and_last_delivery() {
        let scn = scenario();
        let s = 1_000_000_000_000;
        let mut p = Part {
            start_ns: s,
            delivery_last_ns: s + 20_000_000_000,
            publish_last_ns: s + 10_000_000_000,
            deliveries: 2_000_000,
            events_accepted: 10_000,
            requests_sent: 10_000,
            requests_accepted: 10_000,
            sockets_planned: 1,
            sockets_connected: 1,
            accepted_per_session: vec![10_000],
            ..Part::default()
        };
        p.sockets.push(SocketTally {
            session: 0,
            received: 10_000,
        });
        let r = Report::build(&scn, &p, 1, None, None);
        assert!((r.window_s - 20.0).abs() < 1e-9);
        assert!((r.deliveries_per_sec - 100_000.0).abs() < 1e-6);
        assert!((r.events_per_sec - 1000.0).abs() < 1e-6);
        assert!(r.passed, "{:?}", r.failures);
        p.delivery_last_ns = s + 1;
        let r = Report::build(&scn, &p, 1, None, None);
        assert!((r.window_s - 10.0).abs() < 1e-9);
    }

    #[test]
    fn loss_or_errors_over_budget_fail_the_run() {
        let scn = scenario();
        let mut p = Part {
            start_ns: 1,
            requests_sent: 1,
            requests_accepted: 1,
            accepted_per_session: vec![3],
            sockets_planned: 1,
            sockets_connected: 1,
            ..Part::default()
        };
        p.sockets.push(SocketTally {
            session: 0,
            received: 2,
        });
        let r = Report::build(&scn, &p, 1, None, None);
        assert!(!r.passed);
        assert_eq!(r.lost, 1);
        p.sockets[0].received = 3;
        p.error("publish_http_503");
        let r = Report::build(&scn, &p, 1, None, None);
        assert_eq!(r.lost, 0);
        assert!(!r.passed);
        assert!(r.failures[0].contains("budget of 0"), "{:?}", r.failures);
    }

    #[test]
    fn excess_without_unknown_outcomes_is_an_error() {
        let scn = scenario();
        let mut p = Part {
            start_ns: 1,
            requests_sent: 1,
            requests_accepted: 1,
            accepted_per_session: vec![1],
            sockets_planned: 1,
            sockets_connected: 1,
            ..Part::default()
        };
        p.sockets.push(SocketTally {
            session: 0,
            received: 2,
        });
        let r = Report::build(&scn, &p, 1, None, None);
        assert_eq!(r.errors.get("unexpected_events"), Some(&1));
        p.events_unknown = 1;
        let r = Report::build(&scn, &p, 1, None, None);
        assert!(r.passed);
    }

    #[test]
    fn silent_losses_and_duplicates_fail_a_resume_run() {
        let scn = crate::scenario::from_str("kind = \"resume\"\n", &[]).expect("valid");
        let at = |seq| Pos { epoch: 5, seq };
        let mut p = Part {
            start_ns: 1,
            requests_sent: 1,
            requests_accepted: 1,
            sockets_planned: 2,
            sockets_connected: 2,
            accepted_last: vec![at(10)],
            ..Part::default()
        };
        p.resume.resumes = 3;
        p.resume.replayed = 4;
        p.resume_sockets = vec![
            ResumeTally {
                session: 0,
                pos: at(10),
            },
            ResumeTally {
                session: 0,
                pos: at(10),
            },
        ];
        let r = Report::build(&scn, &p, 1, None, None);
        assert!(r.passed, "{:?}", r.failures);
        assert_eq!((r.resumes, r.replayed, r.silent_losses), (3, 4, 0));
        p.resume_sockets[1].pos = at(7);
        p.resume.gap_events = 2;
        p.resume.gaps = 1;
        let r = Report::build(&scn, &p, 1, None, None);
        assert!(!r.passed);
        assert_eq!((r.silent_losses, r.tail_missing), (5, 3));
        p.resume_sockets[1].pos = at(10);
        p.resume.gap_events = 0;
        p.resume.duplicates = 1;
        let r = Report::build(&scn, &p, 1, None, None);
        assert!(!r.passed);
        assert!(r.failures[0].contains("duplicate"), "{:?}", r.failures);
    }

    #[test]
    fn rss_per_connection_is_growth_over_sockets() {
        let r = Rss::new(10_000, 20_000, 11_000, 10_000);
        assert!((r.per_conn_bytes - 1024.0).abs() < 1e-9);
        assert_eq!(Rss::new(1, 2, 3, 0).per_conn_bytes, 0.0);
    }
}
