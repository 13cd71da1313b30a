//! `loadtest`: an open-loop load generator for relay nodes. It talks to nodes only over the
//! network, as the contract describes: `POST /events` with the API key, and subscribers on
//! the scenario's `transport` with tokens it signs itself: `GET /ws?token=JWT` (default),
//! `GET /sse?token=JWT` or `GET /poll?since=…`. With `target = "harness"` it drives
//! any server of the harness shape instead: `GET /ws?session=S` and `POST /publish/S`
//! with the event's bytes as the body (how other servers are compared with the relay).
//!
//! Layout:
//! - `cli`       clap commands: run, check, child
//! - `scenario`  the TOML schema, `--set` overrides, validation (pure)
//! - `target`    node URLs, the loopback-only rule and `--allow-remote`, resolving, source addresses
//! - `tls`       rustls client config for wss/https: system roots + `--ca-file`, SNI name
//! - `token`     HS256 JWT minting
//! - `event`     event `data` with the scheduled timestamp; the receiver's fast scan (pure)
//! - `ws`        RFC 6455 client bytes: upgrade, frame parser, masked frames (sans-IO)
//! - `sse`       `text/event-stream` client bytes: request, head check, block parser (sans-IO)
//! - `poll`      long-poll client bytes: request, answer `{events, next, …}` (sans-IO)
//! - `net`       TCP connect with source address; the keep-alive HTTP publisher client
//! - `stream`    one connection: plain TCP or TLS over it ([`stream::Stream`]), and `dial`
//! - `conn/`     one subscriber on tokio over ws, sse or poll: open, read batches, close
//! - `engine/`   one process's run: plan (pure), worker threads, publisher, one file per kind
//! - `resume`    the resume kind's check: drop schedule, stream continuity, end positions (pure)
//! - `run`       one process or `--procs N` children; start signal; RSS; the report
//! - `stats/`    histograms, per-worker parts and their merge, loss and rate math (pure)
//! - `output`    table, JSON, hgrm, progress line
//! - `sys`       RLIMIT_NOFILE, CPU pinning, VmRSS
//! - `fault_proxy` a TCP proxy that adds delay, black-holes, resets (`loadtest fault-proxy`)
//!
//! Data flow:
//! ```text
//! scenario.toml + flags ─► Scenario ─► run ─► engine (per process) ─► workers
//!    publisher: schedule t0 + j·Δ ─► POST /events {data: {"lt":"<scheduled ns>:<seq>"}} ─► node
//!    node ─► socket / stream / poll ─► worker: latency = now − scheduled ns ─► its own HDR histogram
//! workers ─► Part ─► merge (threads, then processes) ─► Report ─► table / JSON / hgrm
//! ```

pub mod cli;
pub mod conn;
pub mod engine;
pub mod event;
pub mod fault_proxy;
pub mod net;
pub mod output;
pub mod poll;
pub mod resume;
pub mod run;
pub mod scenario;
pub mod sse;
pub mod stats;
pub mod stream;
pub mod sys;
pub mod target;
pub mod tls;
pub mod token;
pub mod ws;

pub use run::{run, RunError, RunOptions};
pub use scenario::{Kind, Scenario, TargetKind, Transport};
pub use stats::Report;
