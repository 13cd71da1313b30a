//! Sending to a shard from a thread that is not a shard core (the signal thread,
//! the Redis bridge), for messages that must arrive (a drain, a reload, a
//! subscription's confirmation): retry while the inbox is full, sleeping between
//! tries.
//!
//! It sleeps, so no shard code may call it (clippy.toml says so); shards send with
//! the router's non-blocking `send` and `send_reserved`. It owns nothing else.

use std::time::Duration;

use crate::router::{RouteError, Router, ShardMsg};

/// Sends `msg` to shard `to`, retrying while its inbox is full, `attempts` times
/// `pause` apart; the message comes back when it never fit or the shard stopped.
pub fn send_retrying(
    router: &Router,
    to: usize,
    mut msg: ShardMsg,
    attempts: usize,
    pause: Duration,
) -> Result<(), ShardMsg> {
    for _ in 0..attempts {
        match router.send(to, msg) {
            Ok(()) => return Ok(()),
            Err((RouteError::Stopped(_), m)) => return Err(m),
            Err((RouteError::InboxFull(_), m)) => {
                msg = m;
                #[allow(clippy::disallowed_methods)] // never a shard thread: see above
                std::thread::sleep(pause);
            }
        }
    }
    Err(msg)
}
