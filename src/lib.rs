//! relay: a sharded, thread-per-core WebSocket relay for backends that cannot
//! hold sockets themselves.
//!
//! A backend publishes events with `POST /events`; browser clients hold a
//! WebSocket authenticated by a short-lived JWT that names their session; the
//! relay writes every event to every socket of its session.
//!
//! # Layout
//! - [`cli`]: the clap commands `serve`, `token`, `publish`.
//! - [`config`]: the validated [`config::Config`]; every default, with its unit and why.
//! - [`runtime`]: binds the listeners, starts one shard per core, wires the channels, drains.
//! - [`shard`]: the per-core owner of sockets and sessions: accept loop, registry, fan-out;
//!   connection loops see it only through [`shard::ctx::ConnCtx`].
//! - [`router`]: [`router::shard_for`] and the bounded hop to the owning shard.
//! - [`http`]: request-head parsing (pure), the publish body (pure), the 202's receipts,
//!   the HTTP connection loop.
//! - [`ws`]: the upgrade decision (pure), event-frame encoding, one socket's turn, close codes.
//! - [`ready`]: a shard's epoll set for upgraded WebSockets, watched by a helper thread
//!   that rings the shard's doorbell (no glommio source or task per idle socket).
//! - [`auth`]: JWT verification and minting, API-key check, origin matching (all pure).
//! - [`limiter`]: node-wide rate limiters and caps (connects, publishes, tenants, the
//!   connection cap) and the [`limiter::SocketPermit`] a connection holds.
//! - [`metrics`]: per-shard counters, merged on read into `/metrics`.
//! - [`logging`]: the non-blocking log writer; lines dropped, never waited for.
//! - [`stream`]: a position in a session's stream and its wire spellings.
//! - [`clock`]: the wall clock, read in one place.
//! - [`offcore`]: sending to a shard, retrying, from threads that are not shards.
//! - [`latency`]: per-shard HdrHistogram of accepted→written latency, merged into `/latency`.
//!
//! - [`bridge`]: with `REDIS_URL`, the thread that carries events (and each node's
//!   presence share) between nodes through Redis pub/sub; the only module that
//!   knows Redis exists.
//!
//! Presence (who holds a socket in each session) lives on each session's owning
//! shard (`shard::presence`, `shard::announce`): join and leave frames coalesced
//! per session, `GET /sessions/{session}/presence`.
//!
//! # Data flow
//! ```text
//!   browser ──TCP──▶ any shard ──(handoff: fd + parsed upgrade)──▶ owning shard
//!                                                             │ registry: session → sockets
//!   backend ──POST /events──▶ any shard: parse + validate whole body
//!                                 │ router: shard_for(session)
//!                                 ├─ owner is here ─▶ sequence + fan-out now
//!                                 └─ crossbeam channel + doorbell ─▶ owning shard
//!                                    ─▶ seq, history ring, fan-out ─▶ receipt back ─▶ 202
//!   with Redis: any shard ─▶ bridge thread ─publish script (seq, dedupe, PUBLISH)─▶
//!               Redis ─▶ every node's bridge ─▶ owning shard (one channel per session,
//!               subscribed while its stream lives) ─▶ seq check, history ring, fan-out
//!   fan-out: encode the frame once ─▶ push the same Rc'd bytes onto each socket's
//!            bounded queue ─▶ the shard's flusher task writes each socket's whole
//!            queue in one sendmsg (a full socket waits for epoll's writable edge)
//! ```

pub mod auth;
pub mod bridge;
pub mod cli;
pub mod clock;
pub mod config;
pub mod http;
pub mod latency;
pub mod limiter;
pub mod logging;
pub mod metrics;
pub mod offcore;
pub mod outbound;
pub mod poll;
pub mod ready;
pub mod router;
pub mod runtime;
pub mod shard;
pub mod sse;
pub mod stream;
pub mod subscribe;
pub mod ws;
