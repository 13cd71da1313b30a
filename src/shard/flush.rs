//! Writing fan-outs without waking every socket's task: a socket whose queue an
//! event found empty is put on the shard's flush list, and one flusher task writes
//! every listed queue (one `sendmsg` each) once the task that fanned out yields.
//! Events queued by tasks that ran before the flusher leave together, as they did
//! when each socket's task wrote its own queue; what the flusher saves is a task
//! wake and poll per delivery. A socket the kernel cannot take more from (or whose
//! write failed) is woken: a WebSocket's next turn (`parked`) waits for epoll's
//! writable edge or ends it, an SSE task waits through glommio.
//!
//! Owns the list and the flusher task only; the bytes and their accounting are
//! `outbound`'s, the queue is the socket's. Shard-local, non-blocking writes only.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::task::{Poll, Waker};

use super::registry::SocketState;
use super::Shard;
use crate::metrics::ShardStats;
use crate::subscribe::Transport;

/// Sockets owed a write, and the flusher's waker while the list is empty.
#[derive(Default)]
pub(super) struct Flushes {
    due: RefCell<Vec<Rc<SocketState>>>,
    /// The list being written, kept for its room between rounds.
    spare: RefCell<Vec<Rc<SocketState>>>,
    waker: Cell<Option<Waker>>,
}

impl Flushes {
    /// Puts a socket whose queue just went from empty to not on the list (a
    /// long-poll has no connection to write to: its task is woken instead).
    pub(super) fn add(&self, s: &Rc<SocketState>) {
        if s.transport == Transport::Poll {
            s.wake();
            return;
        }
        let mut due = self.due.borrow_mut();
        if due.is_empty() {
            if let Some(w) = self.waker.take() {
                w.wake();
            }
        }
        due.push(s.clone());
    }

    /// Waits until the list has a socket on it.
    async fn wait(&self) {
        futures_lite::future::poll_fn(|cx| {
            if self.due.borrow().is_empty() {
                self.waker.set(Some(cx.waker().clone()));
                Poll::Pending
            } else {
                Poll::Ready(())
            }
        })
        .await
    }
}

impl Shard {
    /// The flusher task: writes every listed socket's queue, forever.
    pub(super) async fn flusher(self: Rc<Self>) {
        loop {
            self.flushes.wait().await;
            let spare = self.flushes.spare.take();
            let mut round = std::mem::replace(&mut *self.flushes.due.borrow_mut(), spare);
            for s in round.drain(..) {
                write_or_hand_over(&s, &self.stats);
            }
            *self.flushes.spare.borrow_mut() = round;
        }
    }
}

/// Writes what the kernel takes of one socket's queue now; hands the rest (or a
/// failed write) to whatever turns the socket. A socket that has ended is skipped.
fn write_or_hand_over(s: &SocketState, stats: &ShardStats) {
    if s.fd.get() < 0 {
        return;
    }
    match crate::outbound::write_queue_now(s, stats) {
        Ok(true) => {}
        Ok(false) | Err(_) => s.wake(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shard::pending::tests::Count;
    use crate::shard::registry::{mono_ms, Outgoing};
    use std::io::Read;
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    fn socket(transport: Transport) -> (Rc<SocketState>, Arc<Count>) {
        let s = Rc::new(SocketState::new(
            1,
            Rc::from("s"),
            transport,
            u64::MAX,
            mono_ms(),
        ));
        let count = Arc::new(Count(AtomicUsize::new(0)));
        s.set_waker(&Waker::from(count.clone()));
        (s, count)
    }

    #[test]
    fn a_listed_socket_is_written_without_its_task() {
        let (ours, mut theirs) = UnixStream::pair().expect("socketpair");
        let (s, woken) = socket(Transport::Ws);
        s.fd.set(ours.as_raw_fd());
        let flushes = Flushes::default();
        s.push_control(Outgoing::Static(b"hello"));
        flushes.add(&s);
        assert_eq!(flushes.due.borrow().len(), 1);
        write_or_hand_over(&s, &ShardStats::default());
        let mut got = [0u8; 5];
        theirs.read_exact(&mut got).expect("the bytes arrive");
        assert_eq!(&got, b"hello");
        assert_eq!(s.queued_bytes(), 0);
        // push_control woke the task once; the flush did not.
        assert_eq!(woken.0.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_full_socket_is_handed_to_its_task() {
        let (ours, _theirs) = UnixStream::pair().expect("socketpair");
        let (s, woken) = socket(Transport::Ws);
        s.fd.set(ours.as_raw_fd());
        // More than a socket pair's buffers hold.
        for _ in 0..64 {
            s.push_control(Outgoing::Owned(vec![b'x'; 64 * 1024].into_boxed_slice()));
        }
        let before = woken.0.load(Ordering::SeqCst);
        write_or_hand_over(&s, &ShardStats::default());
        assert!(s.queued_bytes() > 0, "the kernel took only part");
        assert_eq!(
            woken.0.load(Ordering::SeqCst),
            before + 1,
            "its task waits for room"
        );
    }

    #[test]
    fn a_closed_socket_is_skipped_and_a_poll_is_woken() {
        let (s, woken) = socket(Transport::Ws);
        s.push_control(Outgoing::Static(b"x"));
        let before = woken.0.load(Ordering::SeqCst);
        write_or_hand_over(&s, &ShardStats::default()); // fd is -1: its task ended
        assert_eq!(s.queued_bytes(), 1);
        assert_eq!(woken.0.load(Ordering::SeqCst), before);

        let (p, woken) = socket(Transport::Poll);
        let flushes = Flushes::default();
        flushes.add(&p);
        assert!(
            flushes.due.borrow().is_empty(),
            "a long-poll's task reads its queue"
        );
        assert_eq!(woken.0.load(Ordering::SeqCst), 1);
    }
}
