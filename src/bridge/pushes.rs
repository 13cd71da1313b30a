//! The bounded buffer between redis-rs and the bridge loop for what Redis pushes
//! (pub/sub messages, and the connection's end): redis-rs hands every push to
//! [`BoundedPushes::send`] without waiting, and the loop takes them from
//! [`PushBuffer`].
//!
//! When the loop falls [`PUSH_BUFFER`] messages behind, further messages are
//! shed, counted in `relay_redis_shed_total`, and the buffer turns overflowed:
//! the link is then treated as lost, so the bridge reconnects, resubscribes and
//! settles every session against Redis's position: a catch-up from Redis history
//! or a resync for its clients, never silence. Owns only the buffer; runs on
//! redis-rs's and the bridge's side of one thread.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use redis::aio::{AsyncPushSender, SendError};
use redis::{PushInfo, PushKind};
use tokio::sync::mpsc::error::{TryRecvError, TrySendError};

/// Pushes held for the bridge loop, at most. A push is one event (its payload as
/// published) or a subscription notice.
pub const PUSH_BUFFER: usize = 16 * 1024;

/// Set once a push was shed; the link is finished.
#[derive(Debug, Default)]
struct Overflow {
    shed: AtomicBool,
}

/// redis-rs's side: never waits, never grows past [`PUSH_BUFFER`].
pub struct BoundedPushes {
    tx: tokio::sync::mpsc::Sender<PushInfo>,
    overflow: Arc<Overflow>,
    /// The node-wide count behind `relay_redis_shed_total`.
    shed_total: Arc<AtomicU64>,
}

impl AsyncPushSender for BoundedPushes {
    fn send(&self, info: PushInfo) -> Result<(), SendError> {
        match self.tx.try_send(info) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(info)) => {
                if matches!(info.kind, PushKind::Message | PushKind::SMessage) {
                    self.shed_total.fetch_add(1, Ordering::Relaxed);
                }
                // A shed disconnection notice loses nothing: overflow ends the
                // link all the same.
                self.overflow.shed.store(true, Ordering::Release);
                Ok(())
            }
            Err(TrySendError::Closed(_)) => Err(SendError),
        }
    }
}

/// The bridge loop's side.
pub struct PushBuffer {
    rx: tokio::sync::mpsc::Receiver<PushInfo>,
    overflow: Arc<Overflow>,
}

/// A buffer and the sender to give redis-rs; shed messages count into `shed_total`.
pub fn bounded(shed_total: Arc<AtomicU64>) -> (BoundedPushes, PushBuffer) {
    bounded_with(PUSH_BUFFER, shed_total)
}

fn bounded_with(capacity: usize, shed_total: Arc<AtomicU64>) -> (BoundedPushes, PushBuffer) {
    let (tx, rx) = tokio::sync::mpsc::channel(capacity);
    let overflow = Arc::new(Overflow::default());
    (
        BoundedPushes {
            tx,
            overflow: overflow.clone(),
            shed_total,
        },
        PushBuffer { rx, overflow },
    )
}

impl PushBuffer {
    fn overflowed(&self) -> bool {
        self.overflow.shed.load(Ordering::Acquire)
    }

    /// The next push; `None` when the link is finished (closed, or overflowed:
    /// what was buffered before the overflow is not worth delivering, since the
    /// sessions will be settled against Redis anyway).
    pub async fn recv(&mut self) -> Option<PushInfo> {
        if self.overflowed() {
            return None;
        }
        let push = self.rx.recv().await?;
        (!self.overflowed()).then_some(push)
    }

    /// A push already buffered: `Some(None)` when the link is finished, `None`
    /// when nothing waits.
    pub fn try_recv(&mut self) -> Option<Option<PushInfo>> {
        if self.overflowed() {
            return Some(None);
        }
        match self.rx.try_recv() {
            Ok(push) => Some(Some(push)),
            Err(TryRecvError::Empty) => None,
            Err(TryRecvError::Disconnected) => Some(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(n: u8) -> PushInfo {
        PushInfo {
            kind: PushKind::Message,
            data: vec![
                redis::Value::BulkString(b"relay:v1:s:{x}".to_vec()),
                redis::Value::BulkString(vec![n]),
            ],
        }
    }

    #[test]
    fn past_its_bound_the_buffer_sheds_counts_and_ends_the_link() {
        let total = Arc::new(AtomicU64::new(0));
        let (tx, mut rx) = bounded_with(2, total.clone());
        assert!(tx.send(message(1)).is_ok());
        assert!(tx.send(message(2)).is_ok());
        assert!(
            matches!(rx.try_recv(), Some(Some(_))),
            "below the bound, delivered"
        );
        assert!(tx.send(message(3)).is_ok());
        assert!(
            tx.send(message(4)).is_ok(),
            "shed, but redis-rs is never refused"
        );
        assert_eq!(total.load(Ordering::Relaxed), 1);
        assert!(
            matches!(rx.try_recv(), Some(None)),
            "an overflowed link is finished"
        );
    }

    #[test]
    fn a_closed_buffer_refuses_so_redis_rs_stops_sending() {
        let total = Arc::new(AtomicU64::new(0));
        let (tx, rx) = bounded_with(2, total);
        drop(rx);
        assert!(tx.send(message(1)).is_err());
    }
}
