//! The latency histogram ([`Hist`]): HDR, microseconds from 1 µs to one hour, 3
//! significant digits; its trip between processes as (value, count) pairs; and its
//! percentile summary in milliseconds ([`LatencyMs`]).
//!
//! Owns: histogram bounds and units. May not know what a latency measures or decide
//! pass/fail: that is [`super::report`].

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Latencies are recorded in microseconds, from 1 µs to one hour, 3 significant digits.
pub const HIST_MAX_US: u64 = 3_600_000_000;
const HIST_SIGFIG: u8 = 3;

/// An HDR histogram of latencies in microseconds.
#[derive(Debug, Clone)]
pub struct Hist(pub Histogram<u64>);

impl Default for Hist {
    fn default() -> Self {
        Self::new()
    }
}

impl Hist {
    pub fn new() -> Self {
        // Bounds are constants that hdrhistogram accepts; a failure here is a bug.
        #[allow(clippy::expect_used)]
        let h = Histogram::new_with_bounds(1, HIST_MAX_US, HIST_SIGFIG).expect("valid bounds");
        Hist(h)
    }

    /// Records a latency given in nanoseconds (clamped into the histogram's range).
    pub fn record_ns(&mut self, ns: u64) {
        self.0.saturating_record((ns / 1000).max(1));
    }

    /// Records `n` equal latencies.
    pub fn record_ns_n(&mut self, ns: u64, n: u64) {
        let us = (ns / 1000).clamp(1, HIST_MAX_US);
        // In range by the clamp above, so this cannot fail.
        let _ = self.0.record_n(us, n);
    }

    pub fn merge(&mut self, other: &Hist) {
        // Same bounds on both sides, so `add` cannot fail.
        let _ = self.0.add(&other.0);
    }

    /// (value µs, count) pairs, for carrying a histogram between processes.
    pub fn to_pairs(&self) -> Vec<[u64; 2]> {
        self.0
            .iter_recorded()
            .map(|v| [v.value_iterated_to(), v.count_at_value()])
            .collect()
    }

    pub fn from_pairs(pairs: &[[u64; 2]]) -> Self {
        let mut h = Hist::new();
        for [v, c] in pairs {
            let _ = h.0.record_n((*v).clamp(1, HIST_MAX_US), *c);
        }
        h
    }

    /// Percentile summary in milliseconds.
    pub fn summary(&self) -> LatencyMs {
        let h = &self.0;
        let ms = |us: u64| us as f64 / 1000.0;
        if h.is_empty() {
            return LatencyMs::default();
        }
        LatencyMs {
            p50: ms(h.value_at_quantile(0.50)),
            p90: ms(h.value_at_quantile(0.90)),
            p99: ms(h.value_at_quantile(0.99)),
            p99_9: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
            mean: h.mean() / 1000.0,
            count: h.len(),
        }
    }
}

impl Serialize for Hist {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.to_pairs().serialize(s)
    }
}

impl<'de> Deserialize<'de> for Hist {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let pairs = Vec::<[u64; 2]>::deserialize(d)?;
        Ok(Hist::from_pairs(&pairs))
    }
}

/// Percentiles in milliseconds, as they appear in the JSON report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencyMs {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p99_9: f64,
    pub max: f64,
    pub mean: f64,
    pub count: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_come_out_in_milliseconds() {
        let mut h = Hist::new();
        for us in 1..=1000u64 {
            h.record_ns(us * 1000);
        }
        let s = h.summary();
        assert_eq!(s.count, 1000);
        assert!((s.p50 - 0.5).abs() < 0.002, "{s:?}");
        assert!((s.p99 - 0.99).abs() < 0.002, "{s:?}");
        assert!((s.p99_9 - 0.999).abs() < 0.002, "{s:?}");
        assert!((s.max - 1.0).abs() < 0.002, "{s:?}");
        assert_eq!(Hist::new().summary(), LatencyMs::default());
    }

    #[test]
    fn histograms_survive_the_trip_between_processes() {
        let mut h = Hist::new();
        h.record_ns_n(250_000, 10);
        h.record_ns(7_000_000);
        let json = serde_json::to_string(&h).expect("ser");
        let back: Hist = serde_json::from_str(&json).expect("de");
        assert_eq!(back.summary(), h.summary());
    }
}
