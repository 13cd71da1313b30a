//! The wall clock, read in one place: Unix time for token expiry and for the
//! accepted-at stamps that travel between nodes. Imports nothing of the crate.

use std::time::{SystemTime, UNIX_EPOCH};

/// Nanoseconds since the UNIX epoch.
pub fn unix_now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// Seconds since the UNIX epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
