//! The shard's upgraded WebSockets, which have no task each: the map of them by
//! socket id ([`Parked`]), the driver task that turns them ([`WsConn::turn`]) when
//! the shard's readiness set (`crate::ready`) reports their descriptor or their
//! state wakes them, and the waker that state holds.
//!
//! A parked socket's `SocketState` waker is a [`parked_waker`]: waking it puts the
//! socket's id on this thread's woken list and wakes the driver, so fan-out,
//! housekeeping and presence reach a parked socket exactly as they reached a task.
//! The driver turns each socket with its panic caught: one socket's bug ends that
//! socket (close 1011), never the others. It yields after [`TURNS_PER_POLL`]
//! turns. Runs only on the shard's executor; it owns no socket logic (that is
//! `ws::conn`'s) and touches no other room of the shard.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::os::fd::{AsRawFd, FromRawFd};
use std::panic::AssertUnwindSafe;
use std::rc::Rc;
use std::task::{Context, Poll, RawWaker, RawWakerVTable, Waker};

use glommio::net::TcpStream;

use super::registry::SocketGuard;
use super::Shard;
use crate::router::DoorbellWaiter;
use crate::ws::close::Disconnect;
use crate::ws::conn::{Turn, WsConn};

/// Socket turns the driver takes before it yields to the shard's other tasks.
const TURNS_PER_POLL: usize = 512;

// A socket id is the waker's data word.
const _: () = assert!(usize::BITS == 64);

thread_local! {
    /// Parked sockets woken since the driver last looked (a socket may be listed
    /// more than once; a turn with nothing to do costs little).
    static WOKEN: RefCell<Vec<u64>> = const { RefCell::new(Vec::new()) };
    /// The driver task's waker.
    static DRIVER: Cell<Option<Waker>> = const { Cell::new(None) };
}

/// The shard's parked sockets by id.
#[derive(Default)]
pub(super) struct Parked {
    conns: RefCell<HashMap<u64, Box<WsConn>>>,
}

impl Shard {
    /// Takes an upgraded socket off glommio: a duplicate of its descriptor joins
    /// the readiness set, glommio's stream (and with it its sources and the HTTP
    /// task's waker) goes, and the driver turns the socket from now on. Its first
    /// turn writes what is queued (the 101 and the welcome).
    pub(super) fn park_ws(self: &Rc<Self>, mut guard: SocketGuard, stream: TcpStream) {
        let id = guard.state.id;
        // SAFETY: dup() of a descriptor we own; the duplicate is owned below.
        let fd = unsafe { libc::dup(stream.as_raw_fd()) };
        if fd < 0 {
            tracing::warn!(shard = self.id, error = %std::io::Error::last_os_error(),
                "cannot take the socket off glommio");
            guard.reason = Disconnect::IoError;
            return;
        }
        // SAFETY: `fd` is a fresh duplicate nothing else owns.
        let own = unsafe { std::net::TcpStream::from_raw_fd(fd) };
        guard.state.fd.set(fd);
        drop(stream);
        if let Err(e) = own
            .set_nonblocking(true)
            .and_then(|()| self.ready.add(fd, id))
        {
            tracing::warn!(shard = self.id, error = %e, "cannot watch the socket");
            guard.reason = Disconnect::IoError;
            return;
        }
        guard.state.set_waker(&parked_waker(id));
        self.parked
            .conns
            .borrow_mut()
            .insert(id, Box::new(WsConn::new(guard, own)));
        wake_parked(id);
    }

    /// The driver task: turns parked sockets as reports and wakes come. Never ends.
    pub(super) fn drive_parked(self: Rc<Self>) -> impl std::future::Future<Output = ()> {
        let mut waiter = match self.ready.waiter() {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::error!(shard = self.id, error = %e,
                    "cannot watch the readiness set; sockets turn only when woken");
                None
            }
        };
        futures_lite::future::poll_fn(move |cx| self.drive(&mut waiter, cx))
    }

    fn drive(&self, waiter: &mut Option<DoorbellWaiter>, cx: &mut Context<'_>) -> Poll<()> {
        DRIVER.with(|d| {
            let w = match d.take() {
                Some(w) if w.will_wake(cx.waker()) => w,
                _ => cx.waker().clone(),
            };
            d.set(Some(w));
        });
        let mut turns = 0;
        loop {
            while turns < TURNS_PER_POLL {
                let Some(report) = self.ready.try_next() else {
                    break;
                };
                self.turn_parked(report.token, report.readable());
                turns += 1;
            }
            if turns >= TURNS_PER_POLL {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            let Some(w) = waiter.as_mut() else { break };
            match w.poll_wait(cx) {
                // Rearm before draining, so a report sent meanwhile rings again.
                Poll::Ready(Ok(())) => w.rearm(),
                Poll::Ready(Err(e)) => {
                    tracing::error!(shard = self.id, error = %e, "the readiness doorbell broke");
                    *waiter = None;
                    break;
                }
                Poll::Pending => break,
            }
        }
        loop {
            let batch = WOKEN.with(|w| std::mem::take(&mut *w.borrow_mut()));
            if batch.is_empty() {
                return Poll::Pending;
            }
            for (i, &id) in batch.iter().enumerate() {
                if turns >= TURNS_PER_POLL {
                    WOKEN.with(|w| {
                        let mut w = w.borrow_mut();
                        let later = std::mem::take(&mut *w);
                        w.extend_from_slice(&batch[i..]);
                        w.extend(later);
                    });
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
                self.turn_parked(id, false);
                turns += 1;
            }
        }
    }

    /// One turn of socket `id` (gone already: nothing to do).
    fn turn_parked(&self, id: u64, readable: bool) {
        let Some(mut conn) = self.parked.conns.borrow_mut().remove(&id) else {
            return;
        };
        if readable {
            conn.mark_readable();
        }
        match std::panic::catch_unwind(AssertUnwindSafe(|| conn.turn())) {
            Ok(Turn::Waiting) => {
                self.parked.conns.borrow_mut().insert(id, conn);
            }
            Ok(Turn::Again) => {
                self.parked.conns.borrow_mut().insert(id, conn);
                WOKEN.with(|w| w.borrow_mut().push(id));
            }
            // Its guard unregisters it, then its descriptor closes.
            Ok(Turn::Done(reason)) => conn.guard.reason = reason,
            Err(panic) => {
                let msg = super::tasks::panic_message(&*panic);
                // Its guard's reason is still `Internal`: the client is told 1011.
                tracing::error!(shard = self.id, socket = id, panic = %msg,
                    "socket turn panicked; connection dropped");
            }
        }
    }
}

/// Puts socket `id` on the woken list and wakes the driver.
fn wake_parked(id: u64) {
    WOKEN.with(|w| w.borrow_mut().push(id));
    DRIVER.with(|d| {
        if let Some(w) = d.take() {
            w.wake_by_ref();
            d.set(Some(w));
        }
    });
}

static VTABLE: RawWakerVTable = RawWakerVTable::new(clone_raw, wake_raw, wake_raw, drop_raw);

/// The waker of parked socket `id`: its data word is the id, not an address, and
/// waking it lists the id on the waking thread's woken list. Only the shard's own
/// thread holds it (in the socket's `SocketState`, which is `!Send`).
pub(super) fn parked_waker(id: u64) -> Waker {
    // SAFETY: the vtable's functions never dereference the data word.
    unsafe { Waker::from_raw(RawWaker::new(id as usize as *const (), &VTABLE)) }
}

fn clone_raw(data: *const ()) -> RawWaker {
    RawWaker::new(data, &VTABLE)
}

fn wake_raw(data: *const ()) {
    wake_parked(data as usize as u64);
}

fn drop_raw(_: *const ()) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_parked_waker_lists_its_socket_once_per_wake() {
        WOKEN.with(|w| w.borrow_mut().clear());
        let w = parked_waker(42);
        let w2 = w.clone();
        w.wake_by_ref();
        w2.wake();
        let listed = WOKEN.with(|w| std::mem::take(&mut *w.borrow_mut()));
        assert_eq!(listed, vec![42, 42]);
        assert!(parked_waker(42).will_wake(&parked_waker(42)));
        assert!(!parked_waker(42).will_wake(&parked_waker(43)));
    }
}
