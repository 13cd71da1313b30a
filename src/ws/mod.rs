//! WebSockets: the upgrade decision (pure), server frames encoded once (pure),
//! the close codes and what they mean, and the per-socket task.
//!
//! tungstenite parses and validates client frames; server frames are built here so
//! one event's bytes serve every socket. This module never routes events: the
//! shard's fan-out fills socket queues, and `conn` only writes them.

pub mod close;
pub mod conn;
pub mod frame;
pub mod reader;
pub mod upgrade;
