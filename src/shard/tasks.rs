//! Panic containment for connection tasks: one bad connection must never take
//! the shard, and with it the node, down.

use std::task::Poll;

pin_project_lite::pin_project! {
    /// A connection's future with its panic caught and logged. A named future rather
    /// than an async block, which would hold the connection's future twice over.
    struct Contained<F> {
        #[pin]
        inner: futures_lite::future::CatchUnwind<std::panic::AssertUnwindSafe<F>>,
        shard: usize,
        what: &'static str,
    }
}

impl<F: std::future::Future<Output = ()>> std::future::Future for Contained<F> {
    type Output = ();
    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<()> {
        let this = self.project();
        this.inner.poll(cx).map(|result| {
            if let Err(panic) = result {
                let msg = panic_message(&*panic);
                tracing::error!(shard = *this.shard, what = *this.what, panic = %msg,
                    "connection task panicked; connection dropped");
            }
        })
    }
}

/// What a caught panic said (its `&str` or `String` payload), or nothing.
pub(super) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_default()
}

/// Spawns a per-connection task whose panic is logged and contained: one bad
/// connection must never take the shard, and with it the node, down.
pub fn spawn_guarded(
    shard: usize,
    what: &'static str,
    fut: impl std::future::Future<Output = ()> + 'static,
) {
    use futures_lite::FutureExt;
    glommio::spawn_local(Contained {
        inner: std::panic::AssertUnwindSafe(fut).catch_unwind(),
        shard,
        what,
    })
    .detach();
}
