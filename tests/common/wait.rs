//! How long tests wait: [`PROMPT`] for what should happen at once, and [`wait_until`] for
//! polling a condition against a deadline.
//!
//! Owns the shared timeouts only; each client applies them to its own reads.

use std::time::{Duration, Instant};

/// How long a test waits for something that should happen "at once".
pub const PROMPT: Duration = Duration::from_secs(10);

/// Polls `f` until it returns true or `timeout` passes; returns the last result.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}
