//! Where log lines go: a bounded in-memory buffer drained to stderr by one writer
//! thread (`tracing-appender`'s non-blocking writer), so a slow or stalled log
//! pipe never stalls a shard. When the buffer is full a line is dropped and
//! counted (`relay_log_lines_dropped_total`) instead of waiting.
//!
//! Owns the writer's guard and the dropped-line counter; it knows nothing of the
//! filter or the format, which `main` sets up.

use std::sync::OnceLock;

use tracing_appender::non_blocking::{ErrorCounter, NonBlocking, NonBlockingBuilder, WorkerGuard};

/// Log lines buffered before new ones are dropped: a burst of warnings under an
/// attack fits, a stalled pipe costs at most this many lines of memory.
pub const LOG_BUFFER_LINES: usize = 64 * 1024;

static DROPPED: OnceLock<ErrorCounter> = OnceLock::new();

/// A non-blocking writer to stderr. Keep the guard until exit: dropping it flushes
/// what is buffered.
pub fn stderr_writer() -> (NonBlocking, WorkerGuard) {
    let (writer, guard) = NonBlockingBuilder::default()
        .buffered_lines_limit(LOG_BUFFER_LINES)
        .lossy(true)
        .thread_name("relay-log")
        .finish(std::io::stderr());
    let _ = DROPPED.set(writer.error_counter());
    (writer, guard)
}

/// Lines dropped since start because the writer was behind.
pub fn dropped_lines() -> u64 {
    DROPPED.get().map_or(0, |c| c.dropped_lines() as u64)
}
