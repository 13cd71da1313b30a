//! What a run measured and what it means: per-worker histograms and counters ([`Part`]),
//! merged across workers and processes, then turned into a [`Report`] (the math lives
//! here and is unit-tested).
//!
//! Layout:
//! - `hist`    the HDR latency histogram and its millisecond summary
//! - `part`    one worker's (or process's) measurements and their merge
//! - `report`  loss, rates, the resume end check, error budget, pass/fail; server RSS
//!
//! Owns: histogram bounds, the loss rule, rates, pass/fail. May not do I/O; output
//! formats are in [`crate::output`].

mod hist;
mod part;
mod report;

pub use hist::{Hist, LatencyMs, HIST_MAX_US};
pub use part::{Part, SocketTally};
pub use report::{loss, per_sec, Hists, Loss, Report, Rss};
