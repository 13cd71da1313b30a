//! A shard's readiness set: one epoll instance for the descriptors that have no
//! glommio source of their own (upgraded WebSockets, see `shard::parked`), watched
//! by a helper thread that hands each readiness report to the shard over a bounded
//! channel and rings the shard's [`Doorbell`].
//!
//! Why: a glommio stream per socket keeps an io_uring poll, its source and the
//! socket's task alive while the socket is idle, about 700 B of an idle socket's
//! memory. Here an idle socket costs the kernel's epoll entry and nothing in the
//! shard but its record. The helper blocks in `epoll_wait`, which a shard thread
//! must never do; it holds no socket state and never touches a descriptor beyond
//! registering it. Reports are edge-triggered (`EPOLLET`): the shard reads until
//! `EAGAIN` and writes until the kernel refuses, then waits for the next edge.
//!
//! This module knows nothing of sockets' meaning: a descriptor and its token in,
//! (token, events) out.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender};

use crate::router::{Doorbell, DoorbellWaiter};

/// Readiness reports the channel holds before the helper waits for the shard. The
/// channel's slots are allocated up front (24 B each), so this is 96 KiB a shard.
const REPORTS: usize = 4096;
/// Events one `epoll_wait` returns at most.
const BATCH: usize = 256;
/// The token of the helper's own stop signal; socket tokens are ids below it.
const STOP_TOKEN: u64 = u64::MAX;

/// What epoll said about a registered descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Report {
    pub token: u64,
    events: u32,
}

impl Report {
    /// Something to read: data, the peer's FIN, a hang-up or an error (each shows
    /// as a read's result).
    pub fn readable(&self) -> bool {
        self.events & (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLHUP | libc::EPOLLERR) as u32
            != 0
    }
}

/// Why a readiness set could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ReadyError {
    #[error("cannot create the epoll instance: {0}")]
    Epoll(io::Error),
    #[error("cannot create the helper's stop signal: {0}")]
    Stop(io::Error),
    #[error("cannot create the doorbell: {0}")]
    Doorbell(io::Error),
    #[error("cannot start the readiness thread: {0}")]
    Thread(io::Error),
}

/// One shard's epoll set and the channel its helper thread fills.
#[derive(Debug)]
pub struct ReadySet {
    epoll: Arc<OwnedFd>,
    stop: OwnedFd,
    rx: Receiver<Report>,
    doorbell: Arc<Doorbell>,
    doorbell_socket: UnixStream,
}

impl ReadySet {
    /// Creates the set and starts its helper thread, named `name`.
    pub fn new(name: String) -> Result<ReadySet, ReadyError> {
        // SAFETY: plain syscalls; each result is checked before it is owned.
        let epoll = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if epoll < 0 {
            return Err(ReadyError::Epoll(io::Error::last_os_error()));
        }
        // SAFETY: a fresh descriptor nobody else owns.
        let epoll = Arc::new(unsafe { OwnedFd::from_raw_fd(epoll) });
        // SAFETY: as above.
        let stop = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if stop < 0 {
            return Err(ReadyError::Stop(io::Error::last_os_error()));
        }
        // SAFETY: as above.
        let stop = unsafe { OwnedFd::from_raw_fd(stop) };
        add(
            epoll.as_raw_fd(),
            stop.as_raw_fd(),
            STOP_TOKEN,
            libc::EPOLLIN as u32,
        )
        .map_err(ReadyError::Stop)?;
        let (doorbell, doorbell_socket) = Doorbell::pair().map_err(ReadyError::Doorbell)?;
        let (tx, rx) = crossbeam_channel::bounded(REPORTS);
        let watched = epoll.clone();
        let ring = doorbell.clone();
        std::thread::Builder::new()
            .name(name)
            .spawn(move || watch(&watched, &tx, &ring))
            .map_err(ReadyError::Thread)?;
        Ok(ReadySet {
            epoll,
            stop,
            rx,
            doorbell,
            doorbell_socket,
        })
    }

    /// Watches `fd` for reads, writes and hang-ups, edge-triggered; its reports
    /// carry `token`. The registration ends when the descriptor is closed.
    pub fn add(&self, fd: RawFd, token: u64) -> io::Result<()> {
        debug_assert!(token != STOP_TOKEN);
        let events = libc::EPOLLIN | libc::EPOLLOUT | libc::EPOLLRDHUP | libc::EPOLLET;
        add(self.epoll.as_raw_fd(), fd, token, events as u32)
    }

    /// The next report, if one is waiting.
    pub fn try_next(&self) -> Option<Report> {
        self.rx.try_recv().ok()
    }

    /// The shard's end of the doorbell. Call on the shard's own executor.
    pub fn waiter(&self) -> io::Result<DoorbellWaiter> {
        DoorbellWaiter::new(self.doorbell.clone(), &self.doorbell_socket)
    }
}

impl Drop for ReadySet {
    fn drop(&mut self) {
        let one: u64 = 1;
        // SAFETY: an 8-byte write of a u64 to our eventfd.
        unsafe {
            libc::write(
                self.stop.as_raw_fd(),
                &one as *const u64 as *const libc::c_void,
                8,
            );
        }
    }
}

fn add(epoll: RawFd, fd: RawFd, token: u64, events: u32) -> io::Result<()> {
    let mut ev = libc::epoll_event { events, u64: token };
    // SAFETY: `ev` is a valid epoll_event for the call's duration.
    let r = unsafe { libc::epoll_ctl(epoll, libc::EPOLL_CTL_ADD, fd, &mut ev) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// The helper's loop: wait, pass every report on, ring once per batch. Ends on the
/// stop signal, when the shard's end of the channel is gone, or on an epoll error.
fn watch(epoll: &OwnedFd, tx: &Sender<Report>, doorbell: &Doorbell) {
    // On the stack: this thread allocates nothing, so the allocator gives it no
    // arena or cache of its own.
    let mut events = [libc::epoll_event { events: 0, u64: 0 }; BATCH];
    loop {
        // SAFETY: `events` has room for BATCH entries.
        let n =
            unsafe { libc::epoll_wait(epoll.as_raw_fd(), events.as_mut_ptr(), BATCH as i32, -1) };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            tracing::error!(error = %err, "readiness thread: epoll_wait failed");
            return;
        }
        for ev in &events[..n as usize] {
            let report = Report {
                token: ev.u64,
                events: ev.events,
            };
            if report.token == STOP_TOKEN {
                return;
            }
            // A full channel waits for the shard (this thread may block).
            if tx.send(report).is_err() {
                return;
            }
        }
        doorbell.ring();
    }
}

// Tests wait on their own thread, never a shard's.
#[allow(clippy::disallowed_methods)]
#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::time::{Duration, Instant};

    fn next(set: &ReadySet) -> Report {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(r) = set.try_next() {
                return r;
            }
            assert!(Instant::now() < deadline, "no report within 5 s");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn a_write_to_a_watched_socket_is_reported_with_its_token() {
        let set = ReadySet::new("ready-test".into()).expect("set");
        let (ours, mut theirs) = UnixStream::pair().expect("pair");
        ours.set_nonblocking(true).expect("nonblocking");
        set.add(ours.as_raw_fd(), 7).expect("add");
        // Writable at once: the first edge.
        let first = next(&set);
        assert_eq!(first.token, 7);
        theirs.write_all(b"x").expect("write");
        let r = next(&set);
        assert_eq!(r.token, 7);
        assert!(r.readable());
    }

    #[test]
    fn a_hang_up_is_readable() {
        let set = ReadySet::new("ready-test".into()).expect("set");
        let (ours, theirs) = UnixStream::pair().expect("pair");
        set.add(ours.as_raw_fd(), 9).expect("add");
        let _ = next(&set);
        drop(theirs);
        let r = next(&set);
        assert_eq!(r.token, 9);
        assert!(r.readable());
    }
}
