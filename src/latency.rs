//! Accepted→written latency: one HdrHistogram per shard, merged on read.
//!
//! A shard records into its own histogram with no lock and no atomic; `/latency`
//! and `/metrics` ask every shard for a copy and merge them. This module only
//! holds and renders histograms; it never reads the clock or talks to shards.

use std::fmt::Write;
use std::time::Duration;

use hdrhistogram::Histogram;

/// Largest latency kept exactly: one minute (larger values are clamped to it).
const HIGHEST_NS: u64 = 60_000_000_000;
/// Three significant digits: 0.1% error at any magnitude.
const SIGFIG: u8 = 3;
const NS_PER_MS: f64 = 1_000_000.0;

/// A latency histogram in nanoseconds.
#[derive(Clone, Debug)]
pub struct LatencyHistogram {
    hist: Histogram<u64>,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        LatencyHistogram {
            hist: Histogram::new_with_bounds(1, HIGHEST_NS, SIGFIG).unwrap_or_else(|_| {
                Histogram::new(SIGFIG).expect("3 significant figures is valid")
            }),
        }
    }
}

impl LatencyHistogram {
    pub fn record(&mut self, d: Duration) {
        let ns = (d.as_nanos() as u64).clamp(1, HIGHEST_NS);
        self.hist.saturating_record(ns);
    }

    pub fn merge(&mut self, other: &LatencyHistogram) {
        // Same bounds on both sides, so adding cannot fail.
        let _ = self.hist.add(&other.hist);
    }

    pub fn count(&self) -> u64 {
        self.hist.len()
    }

    /// Sum of all values, in seconds (for the Prometheus histogram).
    pub fn sum_seconds(&self) -> f64 {
        self.hist.mean() * self.hist.len() as f64 / 1e9
    }

    /// How many values are at or below `seconds`.
    pub fn count_at_or_below(&self, seconds: f64) -> u64 {
        let ns = (seconds * 1e9) as u64;
        self.hist.count_between(0, ns)
    }

    fn ms(&self, quantile: f64) -> f64 {
        self.hist.value_at_quantile(quantile) as f64 / NS_PER_MS
    }

    /// `{"p50":..,"p90":..,"p99":..,"p99.9":..,"max":..,"count":..}`, in milliseconds.
    pub fn summary_json(&self) -> String {
        if self.hist.is_empty() {
            return r#"{"p50":0,"p90":0,"p99":0,"p99.9":0,"max":0,"count":0}"#.to_string();
        }
        format!(
            r#"{{"p50":{:.3},"p90":{:.3},"p99":{:.3},"p99.9":{:.3},"max":{:.3},"count":{}}}"#,
            self.ms(0.5),
            self.ms(0.9),
            self.ms(0.99),
            self.ms(0.999),
            self.hist.max() as f64 / NS_PER_MS,
            self.hist.len()
        )
    }

    /// HdrHistogram's standard percentile-distribution text, values in milliseconds.
    pub fn hgrm(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{:>12} {:>14} {:>10} {:>14}\n",
            "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
        );
        if !self.hist.is_empty() {
            for v in self.hist.iter_quantiles(5) {
                let q = v.quantile_iterated_to();
                let value = v.value_iterated_to() as f64 / NS_PER_MS;
                let count_to = self.hist.count_between(0, v.value_iterated_to());
                if q < 1.0 {
                    let _ = writeln!(
                        out,
                        "{value:12.3} {q:14.12} {count_to:10} {:14.2}",
                        1.0 / (1.0 - q)
                    );
                } else {
                    let _ = writeln!(out, "{value:12.3} {q:14.12} {count_to:10}");
                }
            }
        }
        let _ = writeln!(
            out,
            "#[Mean    = {:12.3}, StdDeviation   = {:12.3}]",
            self.hist.mean() / NS_PER_MS,
            self.hist.stdev() / NS_PER_MS
        );
        let _ = writeln!(
            out,
            "#[Max     = {:12.3}, Total count    = {:12}]",
            self.hist.max() as f64 / NS_PER_MS,
            self.hist.len()
        );
        let _ = writeln!(
            out,
            "#[Buckets = {:12}, SubBuckets     = {:12}]",
            self.hist.buckets(),
            self.hist.distinct_values()
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_adds_counts_and_json_reports_ms() {
        let mut a = LatencyHistogram::default();
        let mut b = LatencyHistogram::default();
        for _ in 0..99 {
            a.record(Duration::from_micros(100));
        }
        b.record(Duration::from_millis(5));
        a.merge(&b);
        assert_eq!(a.count(), 100);
        let v: serde_json::Value = serde_json::from_str(&a.summary_json()).unwrap();
        assert_eq!(v["count"], 100);
        assert!((v["p50"].as_f64().unwrap() - 0.1).abs() < 0.001);
        assert!((v["max"].as_f64().unwrap() - 5.0).abs() < 0.01);
        assert_eq!(a.count_at_or_below(0.001), 99);
    }

    #[test]
    fn hgrm_has_the_standard_header_and_footer() {
        let mut a = LatencyHistogram::default();
        a.record(Duration::from_micros(250));
        let text = a.hgrm();
        assert!(text.contains("Value") && text.contains("Percentile"));
        assert!(text.contains("#[Max     ="));
        assert!(text.lines().any(|l| l.trim_start().starts_with("0.250")));
    }
}
