//! What one worker (and, merged, one process and the run) measured: [`Part`], its
//! counters and histograms, and the merge that folds workers into a process and
//! processes into a run.
//!
//! Owns: the measurement record and its merge rule (sums, earliest start, latest end).
//! May not compute rates, loss or pass/fail: that is [`super::report`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::hist::Hist;
use crate::event::Pos;
use crate::resume::{self, ResumeCounts, ResumeTally};

/// Received events on one loss-tracked socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SocketTally {
    pub session: u32,
    pub received: u64,
}

/// What one worker (and, merged, one process) measured. Crosses process boundaries as JSON.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Part {
    /// UNIX ns: first handshake attempt, last successful welcome.
    pub connect_first_ns: u64,
    pub connect_last_ns: u64,
    /// UNIX ns when publishing (or holding) began; the shared start.
    pub start_ns: u64,
    /// UNIX ns when the last publish response came back.
    pub publish_last_ns: u64,
    /// UNIX ns of the last stamped frame received.
    pub delivery_last_ns: u64,
    pub sockets_planned: u64,
    pub sockets_connected: u64,
    /// Publish→receive latency of every stamped frame on healthy and churn sockets.
    pub latency: Hist,
    /// Start of the handshake (or its scheduled time, when paced) → welcome frame.
    pub handshake: Hist,
    /// Scheduled publish time → `202` received.
    pub publish: Hist,
    /// Scheduled publish time → request written: the tool's lateness plus any wait for a
    /// free keep-alive connection (which the node's response time causes).
    pub send_lag: Hist,
    /// Scheduled publish time → the request reached the publisher's queue: the tool's own
    /// scheduling lateness (thread wake-ups), nothing of the node's.
    pub dispatch_lag: Hist,
    pub deliveries: u64,
    pub requests_sent: u64,
    pub requests_accepted: u64,
    pub events_scheduled: u64,
    pub events_accepted: u64,
    /// Events in requests whose outcome is unknown (connection lost, timeout).
    pub events_unknown: u64,
    /// 202-accepted events per session index (publishing process only; others empty).
    pub accepted_per_session: Vec<u64>,
    /// Sockets whose every event counts for loss.
    pub sockets: Vec<SocketTally>,
    pub errors: BTreeMap<String, u64>,
    pub close_codes: BTreeMap<String, u64>,
    pub slow_sockets: u64,
    pub slow_closed_4008: u64,
    pub churn_opened: u64,
    pub churn_failed: u64,
    /// resume: the continuity check's counters.
    pub resume: ResumeCounts,
    /// resume: where each socket ended.
    pub resume_sockets: Vec<ResumeTally>,
    /// resume: the last accepted event per session index, from the `202` receipts
    /// (publishing process only; seq 0: none).
    pub accepted_last: Vec<Pos>,
    /// resume: reconnect start → welcome.
    pub resume_handshake: Hist,
    /// resume with failover: connection lost → welcome from another node.
    #[serde(default)]
    pub failover_time: Hist,
    /// CPU the load process(es) used from the start signal to the end, ns (summed).
    pub load_cpu_ns: u64,
    /// UNIX ns when the process finished (latest over processes).
    pub end_ns: u64,
    /// UNIX ns from which `load_cpu_ns` was counted (earliest over processes).
    pub cpu_from_ns: u64,
}

fn min_nonzero(a: u64, b: u64) -> u64 {
    match (a, b) {
        (0, x) | (x, 0) => x,
        (x, y) => x.min(y),
    }
}

impl Part {
    pub fn error(&mut self, kind: impl Into<String>) {
        *self.errors.entry(kind.into()).or_insert(0) += 1;
    }

    pub fn close_code(&mut self, code: Option<u16>) {
        let key = code.map_or_else(|| "none".to_owned(), |c| c.to_string());
        *self.close_codes.entry(key).or_insert(0) += 1;
    }

    pub fn errors_total(&self) -> u64 {
        self.errors.values().sum()
    }

    /// Folds `other` into `self` (workers into a process, processes into a run).
    pub fn merge(&mut self, other: Part) {
        self.connect_first_ns = min_nonzero(self.connect_first_ns, other.connect_first_ns);
        self.connect_last_ns = self.connect_last_ns.max(other.connect_last_ns);
        self.start_ns = min_nonzero(self.start_ns, other.start_ns);
        self.publish_last_ns = self.publish_last_ns.max(other.publish_last_ns);
        self.delivery_last_ns = self.delivery_last_ns.max(other.delivery_last_ns);
        self.sockets_planned += other.sockets_planned;
        self.sockets_connected += other.sockets_connected;
        self.latency.merge(&other.latency);
        self.handshake.merge(&other.handshake);
        self.publish.merge(&other.publish);
        self.send_lag.merge(&other.send_lag);
        self.dispatch_lag.merge(&other.dispatch_lag);
        self.deliveries += other.deliveries;
        self.requests_sent += other.requests_sent;
        self.requests_accepted += other.requests_accepted;
        self.events_scheduled += other.events_scheduled;
        self.events_accepted += other.events_accepted;
        self.events_unknown += other.events_unknown;
        if self.accepted_per_session.len() < other.accepted_per_session.len() {
            self.accepted_per_session
                .resize(other.accepted_per_session.len(), 0);
        }
        for (a, b) in self
            .accepted_per_session
            .iter_mut()
            .zip(other.accepted_per_session)
        {
            *a += b;
        }
        self.sockets.extend(other.sockets);
        for (k, v) in other.errors {
            *self.errors.entry(k).or_insert(0) += v;
        }
        for (k, v) in other.close_codes {
            *self.close_codes.entry(k).or_insert(0) += v;
        }
        self.slow_sockets += other.slow_sockets;
        self.slow_closed_4008 += other.slow_closed_4008;
        self.churn_opened += other.churn_opened;
        self.churn_failed += other.churn_failed;
        self.resume.merge(&other.resume);
        self.resume_sockets.extend(other.resume_sockets);
        resume::merge_last(&mut self.accepted_last, &other.accepted_last);
        self.resume_handshake.merge(&other.resume_handshake);
        self.failover_time.merge(&other.failover_time);
        self.load_cpu_ns += other.load_cpu_ns;
        self.end_ns = self.end_ns.max(other.end_ns);
        self.cpu_from_ns = min_nonzero(self.cpu_from_ns, other.cpu_from_ns);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_adds_counts_and_widens_windows() {
        let mut a = Part {
            start_ns: 100,
            delivery_last_ns: 500,
            deliveries: 3,
            accepted_per_session: vec![1, 2],
            ..Part::default()
        };
        a.error("x");
        let mut b = Part {
            start_ns: 90,
            delivery_last_ns: 400,
            deliveries: 4,
            accepted_per_session: vec![1, 1, 1],
            ..Part::default()
        };
        b.error("x");
        b.error("y");
        b.latency.record_ns(1000);
        a.merge(b);
        assert_eq!(a.start_ns, 90);
        assert_eq!(a.delivery_last_ns, 500);
        assert_eq!(a.deliveries, 7);
        assert_eq!(a.accepted_per_session, vec![2, 3, 1]);
        assert_eq!(a.errors.get("x"), Some(&2));
        assert_eq!(a.errors_total(), 3);
        assert_eq!(a.latency.summary().count, 1);
        let mut c = Part::default();
        c.merge(Part {
            start_ns: 5,
            ..Part::default()
        });
        assert_eq!(c.start_ns, 5, "zero means unset, not earliest");
    }
}
