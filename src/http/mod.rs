//! HTTP/1.1: request heads and responses (pure), the publish body (pure), and the
//! connection loop that ties them to a socket.
//!
//! Owns the public port's routing. It may hand a socket to `ws` or to the shard,
//! but never writes WebSocket frames itself.

pub mod conn;
pub mod head;
pub mod publish;
pub mod receipts;
pub mod response;
