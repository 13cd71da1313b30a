//! What ends a link to Redis ([`Lost`]), and the timeout every command runs under
//! ([`timed`]). A leaf: `link` and `reader` both use it, and it knows neither.

use std::time::Duration;

/// A reply of a shape the relay never asks for.
pub(super) fn bad_reply() -> Lost {
    Lost::Redis(redis::RedisError::from((
        redis::ErrorKind::UnexpectedReturnType,
        "unexpected reply from a relay script",
    )))
}

/// A connect, subscribe or publish call that takes longer is a failure.
pub const REDIS_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a link ended.
#[derive(Debug, thiserror::Error)]
pub enum Lost {
    #[error("redis error: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("redis did not answer within {REDIS_TIMEOUT:?}")]
    Timeout,
    #[error("the connection to redis closed")]
    Closed,
    /// `REDIS_URL` names a read-only replica (after a failover, the old primary's
    /// address): publishes would all fail, so the node stays unready until the address
    /// is a primary again. Point `REDIS_URL` at an endpoint that follows failover.
    #[error("redis at REDIS_URL is a read-only replica (of {0}); waiting for a primary there")]
    Replica(String),
}

/// Runs a Redis call under [`REDIS_TIMEOUT`].
pub async fn timed<T>(
    f: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> Result<T, Lost> {
    match tokio::time::timeout(REDIS_TIMEOUT, f).await {
        Ok(r) => Ok(r?),
        Err(_) => Err(Lost::Timeout),
    }
}
