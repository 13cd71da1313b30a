//! HTTP/1.1: request heads and responses (pure), the publish body (pure), the
//! 202's receipts, the presence query's decision, and the connection loop that
//! ties them to a socket.
//!
//! Owns the public port's routing and every status it answers. It reaches the
//! shard only through `shard::ctx::ConnCtx` and may hand a socket to it, but
//! never writes WebSocket frames itself.

pub mod conn;
pub mod head;
pub mod presence;
pub mod publish;
pub mod receipts;
pub mod response;
pub mod route;
