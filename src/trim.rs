//! Gives the heap's free pages back to the kernel: a thread of its own calls
//! glibc's `malloc_trim(0)` every [`TRIM_EVERY`].
//!
//! Why: glibc keeps what the program frees for reuse, and returns it to the kernel
//! only from the top of each arena. After a burst (a spray of events to sessions
//! nobody holds, a stall that filled socket queues), the freed memory sits in the
//! middle of the arenas, under live allocations, and the node's RSS stays at its
//! high-water mark: 100,000 events to 100,000 unheld sessions left a one-shard node
//! at 43 MB with its history empty, 20 MB after one `malloc_trim(0)`. Over an hour
//! of such bursts RSS ratchets up. `malloc_trim(0)` also releases free pages inside
//! the arenas (`MADV_DONTNEED`), so RSS follows what is live.
//!
//! It runs off the shard cores, but a trim locks each arena in turn, so a shard
//! that allocates meanwhile may wait for it: about 0.1 ms when there is little to
//! give back, 15 ms for the 17 MB freed after that spray (on a busy machine). Such
//! a wait comes at most once per interval and only after a large free. It owns
//! nothing else: no state, no shard access. Only with glibc; a build for another C
//! library starts no thread.

use std::time::Duration;

/// How often the heap is trimmed.
pub const TRIM_EVERY: Duration = Duration::from_secs(10);

/// Starts the trimming thread (glibc only).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn start() -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("malloc-trim".into())
        .spawn(|| loop {
            #[allow(clippy::disallowed_methods)] // its own thread, never a shard core
            std::thread::sleep(TRIM_EVERY);
            let started = std::time::Instant::now();
            // SAFETY: malloc_trim has no preconditions; glibc locks each arena.
            let released = unsafe { libc::malloc_trim(0) } == 1;
            tracing::debug!(
                released,
                took_us = started.elapsed().as_micros() as u64,
                "malloc_trim"
            );
        })
        .map(|_| ())
}

/// Starts the trimming thread (glibc only).
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn start() -> std::io::Result<()> {
    Ok(())
}
