//! Writing one subscriber's queue to its socket, whatever the transport: one
//! `sendmsg` over every queued entry, partial writes resumed, deliveries and
//! their latency counted as whole events leave; and the two ways a connection's
//! end is written (a shutdown of the write side, or a reset).
//!
//! The bytes are the transport's own (WebSocket frames, event-stream blocks): this
//! module never looks inside them. Non-blocking only (`MSG_DONTWAIT`); the caller
//! waits for writability. Runs on the shard that owns the subscriber.

use std::collections::VecDeque;
use std::io;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use futures_lite::AsyncWrite;
use glommio::net::TcpStream;

use crate::metrics::ShardStats;
use crate::shard::registry::{Outgoing, SocketState};

/// Queue entries handed to one `sendmsg`.
const MAX_IOVECS: usize = 64;

/// Entries (24 B each) a drained queue may keep allocated for the next burst. A
/// queue that grew past this while its socket was slow (up to its byte cap, many
/// thousands of entries) gives the room back once it is empty, instead of holding
/// its high-water mark for the socket's life.
const KEEP_QUEUE_ENTRIES: usize = 16;

/// Writes the queue until it is empty (`Ready(Ok)`) or the socket is full
/// (`Pending`, with glommio waiting for writability).
pub fn poll_flush(
    state: &SocketState,
    stats: &ShardStats,
    stream: &mut TcpStream,
    cx: &mut Context<'_>,
) -> Poll<io::Result<()>> {
    loop {
        if write_queue_now(state, stats)? {
            return Poll::Ready(Ok(()));
        }
        // The socket is full: let glommio wait for writability (it may also
        // write part of the front entry).
        let mut queue = state.queue();
        let head_written = state.head_written.get();
        let front = match queue.front() {
            Some(out) => &out.bytes()[head_written..],
            None => return Poll::Ready(Ok(())),
        };
        match Pin::new(&mut *stream).poll_write(cx, front) {
            Poll::Ready(Ok(n)) => consume(state, stats, &mut queue, n),
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => return Poll::Pending,
        }
    }
}

/// Writes as much of `state`'s queue as the socket takes right now, with one
/// `sendmsg` per [`MAX_IOVECS`] frames. `Ok(true)` when the queue is empty.
///
/// Fan-out also calls this when a queue reaches its cap, so a socket is only called
/// slow when the kernel's buffer is full too, not when one burst outran its task.
pub fn write_queue_now(state: &SocketState, stats: &ShardStats) -> io::Result<bool> {
    let fd = state.fd.get();
    loop {
        let mut queue = state.queue();
        if queue.is_empty() {
            if queue.capacity() > KEEP_QUEUE_ENTRIES {
                *queue = VecDeque::new();
            }
            return Ok(true);
        }
        let head_written = state.head_written.get();
        let mut iov: [libc::iovec; MAX_IOVECS] = [libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        }; MAX_IOVECS];
        let mut count = 0;
        for (i, out) in queue.iter().take(MAX_IOVECS).enumerate() {
            let bytes = if i == 0 {
                &out.bytes()[head_written..]
            } else {
                out.bytes()
            };
            iov[i] = libc::iovec {
                iov_base: bytes.as_ptr() as *mut libc::c_void,
                iov_len: bytes.len(),
            };
            count += 1;
        }
        // SAFETY: every iovec points into a frame held by `queue`, which stays
        // borrowed (and unmodified) until the call returns.
        let written = unsafe {
            let mut msg: libc::msghdr = std::mem::zeroed();
            msg.msg_iov = iov.as_mut_ptr();
            msg.msg_iovlen = count as _;
            libc::sendmsg(fd, &msg, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
        };
        if written >= 0 {
            consume(state, stats, &mut queue, written as usize);
            continue;
        }
        let err = io::Error::last_os_error();
        match err.kind() {
            io::ErrorKind::Interrupted => continue,
            io::ErrorKind::WouldBlock => return Ok(false),
            _ => return Err(err),
        }
    }
}

/// Accounts `n` written bytes against the front of the queue: pops whole frames,
/// counts deliveries and records their latency.
fn consume(state: &SocketState, stats: &ShardStats, queue: &mut VecDeque<Outgoing>, mut n: usize) {
    let now = Instant::now();
    let mut delivered = 0u64;
    let mut latency = stats.latency(state.transport);
    while n > 0 {
        let Some(front) = queue.front() else { break };
        let left = front.bytes().len() - state.head_written.get();
        if n < left {
            state.head_written.set(state.head_written.get() + n);
            break;
        }
        n -= left;
        if let Some(Outgoing::Event(frame) | Outgoing::SseEvent(frame)) = state.pop_written(queue) {
            delivered += 1;
            latency.record(now.saturating_duration_since(frame.accepted_at));
        }
    }
    // Zero-length entries (an empty close marker) are done as soon as reached.
    while queue.front().is_some_and(|f| f.bytes().is_empty()) {
        state.pop_written(queue);
    }
    if delivered > 0 {
        stats.add_deliveries(state.transport, delivered);
    }
}

/// Makes the coming close(2) send RST instead of FIN.
pub fn reset_on_close(stream: &impl AsRawFd) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt with a correctly sized linger struct on our descriptor.
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &linger as *const libc::linger as *const libc::c_void,
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

pub fn shutdown_write(stream: &impl AsRawFd) -> io::Result<()> {
    // SAFETY: shutdown(2) on a descriptor we own; no memory is involved.
    let r = unsafe { libc::shutdown(stream.as_raw_fd(), libc::SHUT_WR) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shard::registry::mono_ms;
    use crate::subscribe::Transport;
    use std::io::Read;
    use std::os::unix::net::UnixStream;
    use std::rc::Rc;

    fn socket_pair() -> (SocketState, UnixStream, UnixStream) {
        let (ours, theirs) = UnixStream::pair().expect("socketpair");
        let state = SocketState::new(1, Rc::from("s"), Transport::Ws, u64::MAX, mono_ms());
        state.fd.set(ours.as_raw_fd());
        (state, ours, theirs)
    }

    #[test]
    fn a_queue_that_grew_gives_its_room_back_once_written() {
        let (state, _ours, mut theirs) = socket_pair();
        let stats = ShardStats::default();
        for _ in 0..1_000 {
            state.push_control(Outgoing::Static(b"0123456789"));
        }
        assert!(state.queue().capacity() >= 1_000);
        assert!(write_queue_now(&state, &stats).expect("write"));
        assert_eq!(state.queue().len(), 0);
        assert_eq!(state.queue().capacity(), 0, "the high-water room is freed");
        let mut got = vec![0u8; 10_000];
        theirs
            .read_exact(&mut got)
            .expect("all 10,000 bytes arrive");
    }

    #[test]
    fn a_small_queue_keeps_its_room() {
        let (state, _ours, _theirs) = socket_pair();
        let stats = ShardStats::default();
        for _ in 0..3 {
            state.push_control(Outgoing::Static(b"x"));
        }
        let room = state.queue().capacity();
        assert!(write_queue_now(&state, &stats).expect("write"));
        assert_eq!(
            state.queue().capacity(),
            room,
            "no free and allocate per burst"
        );
    }
}
