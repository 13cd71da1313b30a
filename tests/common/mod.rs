//! Shared harness for the integration tests: start a real `relay serve` node on port 0,
//! talk to it over real TCP (a small HTTP/1.1 client, a tungstenite WebSocket client, and
//! raw sockets for misbehaving clients), mint tokens, read metrics.
//!
//! Every read here has a timeout, so a broken server fails a test instead of hanging it.
//!
//! This file owns only the layout: each part is a module, re-exported so that a test's
//! `use common::*;` sees one flat namespace.
//! - `node`   starting a `relay serve` process and driving it ([`Node`], [`NodeBuilder`])
//! - `cli`    one-shot `relay` subcommands with a deadline; scratch directories
//! - `token`  the test secret and API key; JWT minting
//! - `http`   an HTTP/1.1 client over raw TCP; publish request and body builders
//! - `ws`     the well-behaved WebSocket client (tungstenite)
//! - `raw`    raw upgrade requests and [`RawSocket`] for hostile clients, with frame bytes
//!   from `loadtest::ws`
//! - `redis`  a `redis-server` of the test's own ([`Redis`]) and nodes pointed at it
//! - `sse`    an event-stream reader over raw TCP ([`SseStream`])
//! - `pki`    test certificates with the `openssl` CLI (also used by loadtest's tests)
//! - `prom`   the Prometheus text parser (pure)
//! - `json`   the raw JSON member scanner (pure)
//! - `wait`   the shared timeout and the poll loop
//!
//! Lints: every `tests/*.rs` binary compiles its own copy of this harness and uses a subset
//! of it, and rustc's `dead_code` and `unused_imports` run per binary, so "unused by this
//! binary" is normal and says nothing about the harness. The allows are therefore on each
//! part's declaration and re-export below, not on this file's own code. When this layout was
//! made, every item was checked to be used by at least one binary (`metric_value` only
//! through `Node::metric`), with these allows taken out and the per-binary warnings compared.

// The harness runs on the test's own threads, not on a shard: it may sleep and block.
#![allow(clippy::disallowed_methods)]

#[allow(dead_code)]
mod cli;
#[allow(dead_code)]
mod http;
#[allow(dead_code)]
mod json;
#[allow(dead_code)]
mod node;
#[allow(dead_code)]
mod pki;
#[allow(dead_code)]
mod prom;
#[allow(dead_code)]
mod raw;
#[allow(dead_code)]
mod redis;
#[allow(dead_code)]
mod sse;
#[allow(dead_code)]
mod token;
#[allow(dead_code)]
mod wait;
#[allow(dead_code)]
mod ws;

#[allow(unused_imports)]
pub use cli::*;
#[allow(unused_imports)]
pub use http::*;
#[allow(unused_imports)]
pub use json::*;
#[allow(unused_imports)]
pub use node::*;
#[allow(unused_imports)]
pub use pki::*;
#[allow(unused_imports)]
pub use prom::*;
#[allow(unused_imports)]
pub use raw::*;
#[allow(unused_imports)]
pub use redis::*;
#[allow(unused_imports)]
pub use sse::*;
#[allow(unused_imports)]
pub use token::*;
#[allow(unused_imports)]
pub use wait::*;
#[allow(unused_imports)]
pub use ws::*;
