//! Server-Sent Events: the same session streams as WebSockets, for clients
//! behind proxies that break upgrades.
//!
//! - `request`: the decision for `GET /sse` (token, origin, resume point) and
//!   its CORS preflight; pure, like `ws::upgrade`.
//! - `frame`: the `text/event-stream` encoding (pure).
//! - `conn`: one event-stream subscriber's task: writes its queue, notices the
//!   reader leaving, ends with an `event: close` naming the code.
//!
//! An SSE subscriber is one more kind of writer behind the same bounded queue as
//! a WebSocket (`shard::registry::SocketState`): the shard sequences, keeps
//! history and fans out exactly as for sockets; only the bytes differ. It never
//! touches routing or the shard's fields (the task holds a `SocketGuard`).

pub mod conn;
pub mod frame;
pub mod request;
