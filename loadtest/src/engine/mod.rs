//! The engine of one load process: worker threads, each a current-thread tokio runtime
//! that owns a slice of the sockets, its own counters and its own HDR histograms (merged
//! at the end, never shared while running). The publishing process also runs the
//! open-loop publisher on a thread of its own.
//!
//! Layout (dependencies point down the list, never up):
//! - `process`    the public face: [`run_process`], thread start-up, start signal, join
//! - `worker`     one worker thread: connect phase, then the kind's behaviour
//! - `publisher`  the open-loop schedule and the keep-alive HTTP connections
//! - `kinds/`     one file per behaviour after the start (hold, receive, slow, resume, churn)
//! - `shared`     what the threads share (`Shared`) and what a worker owns (`Ctx`)
//! - `window`     when a receiver reads and when it stops (pure decisions)
//! - `plan`       sockets, slices, pacing, churn lanes, fd needs (pure)
//!
//! Every loop here is bounded: connects by `connect_timeout`, phase 2 by
//! `start + duration + drain` (+ a fixed slow-consumer drain bound), publishes by the
//! scheduled request count and `request_timeout`.
//!
//! Owns: running one process's slice. May not spawn processes, read the scenario file or
//! format output: that is `crate::run` and `crate::output`.

mod kinds;
mod plan;
mod process;
mod publisher;
mod shared;
mod window;
mod worker;

pub use plan::{fds_needed, plan, Slice, SocketSpec};
pub use process::{run_process, EngineConfig, EngineError};
