//! One event-stream subscriber's task: writes its queue (the response head, the
//! welcome, events as `text/event-stream` blocks), notices the reader leaving,
//! and ends the stream with an `event: close` block naming the close code a
//! WebSocket would have got (4001 token expired, 1012 draining, 4008 too slow).
//!
//! A reader sends nothing after its request, so reads only watch for the end
//! (whatever arrives is dropped). Writes are `outbound`'s, the same as a
//! WebSocket's. Runs only on the shard that owns the subscriber; it sees the
//! shard only through its `SocketGuard`.

use std::pin::Pin;
use std::task::{Context, Poll};

use futures_lite::AsyncRead;
use glommio::net::TcpStream;

use crate::outbound::{poll_flush, reset_on_close, shutdown_write};
use crate::shard::registry::mono_ms;
use crate::shard::{SocketGuard, CLOSE_GRACE};
use crate::sse::frame::close_block;
use crate::ws::close::Disconnect;

/// Reads handled in one poll before yielding to other tasks.
const READS_PER_POLL: usize = 4;

struct SseTask {
    /// The subscriber's state; unregisters it when the task ends.
    guard: SocketGuard,
    stream: TcpStream,
    /// Set once the closing block is queued: the stream ends after it.
    closing: Option<Disconnect>,
}

/// Serves an accepted event stream until it ends. Its response head and welcome
/// are already queued.
pub fn run(guard: SocketGuard, stream: TcpStream) -> impl std::future::Future<Output = ()> {
    let _ = stream.set_read_timeout(None);
    let _ = stream.set_write_timeout(None);
    let mut task = SseTask {
        guard,
        stream,
        closing: None,
    };
    futures_lite::future::poll_fn(move |cx| task.poll(cx).map(|reason| task.guard.reason = reason))
}

impl SseTask {
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Disconnect> {
        self.guard.state.set_waker(cx.waker());
        if let Some(reason) = self.guard.state.take_close_request() {
            self.begin_close(reason);
        }
        if let Poll::Ready(reason) = self.poll_reads(cx) {
            return Poll::Ready(self.closing.unwrap_or(reason));
        }
        let ctx = self.guard.ctx().clone();
        match poll_flush(&self.guard.state, ctx.stats(), &mut self.stream, cx) {
            Poll::Ready(Ok(())) => {
                if let Some(reason) = self.closing {
                    // The close block is out: end the response.
                    let _ = shutdown_write(&self.stream);
                    return Poll::Ready(reason);
                }
            }
            Poll::Ready(Err(_)) => return Poll::Ready(self.closing.unwrap_or(Disconnect::IoError)),
            Poll::Pending => {}
        }
        if let Some(reason) = self.closing {
            let deadline = self.guard.state.close_deadline.get();
            if deadline != 0 && deadline <= mono_ms() {
                // The close block never got out: reset, so the reader cannot take
                // the cut-off stream for a clean end.
                reset_on_close(&self.stream);
                return Poll::Ready(reason);
            }
        }
        Poll::Pending
    }

    /// Queues the closing block and stops taking events.
    fn begin_close(&mut self, reason: Disconnect) {
        if self.closing.is_some() {
            return;
        }
        self.closing = Some(reason);
        let state = &self.guard.state;
        if reason == Disconnect::SlowConsumer {
            state.discard_unsent();
        }
        match reason.close_code() {
            Some(code) => state.push_close(close_block(code, reason.close_reason())),
            None => state.push_close(Vec::new()),
        }
        if state.close_deadline.get() == 0 {
            // Bounded even if the queue never drains (a reader that stopped).
            self.guard
                .ctx()
                .set_close_deadline(state, mono_ms() + CLOSE_GRACE.as_millis() as u64);
        }
    }

    /// Watches the reading side: the end of the connection ends the stream.
    fn poll_reads(&mut self, cx: &mut Context<'_>) -> Poll<Disconnect> {
        let ctx = self.guard.ctx().clone();
        for _ in 0..READS_PER_POLL {
            let mut scratch = ctx.scratch();
            match Pin::new(&mut self.stream).poll_read(cx, &mut scratch[..]) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(0)) => return Poll::Ready(Disconnect::ClientClosed),
                Poll::Ready(Err(_)) => return Poll::Ready(Disconnect::IoError),
                // A reader has nothing to say; what it sends is dropped.
                Poll::Ready(Ok(_)) => {}
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}
