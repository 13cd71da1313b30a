//! What each kind does once the start signal is given, one file per behaviour:
//! - `hold`     idle-hold: keep the socket open, answering pings, until the end
//! - `receive`  a healthy socket: latency of every stamped frame, counts for the loss check
//! - `slow`     slow-consumers: never read, then expect the node's 4008 close
//! - `resume`   drop, stay away, reconnect `since=`, check continuity; reads the receipts
//! - `churn`    short-lived extra sockets at a fixed rate
//!
//! A "socket" here is any subscriber, over the scenario's transport: the tasks see only
//! [`Conn`](crate::conn::Conn), so each kind runs unchanged over ws, sse and poll.
//!
//! Owns: the choice of per-socket task for a kind ([`Behaviour`]) and the state only one
//! kind needs, carried by that kind's variant. May not touch threads, the connect phase
//! or the publisher's schedule; a kind sees the publisher only through the board in
//! [`Shared`](super::shared::Shared) or a [`ReceiptSink`].

mod churn;
mod hold;
mod receive;
mod resume;
mod slow;

use std::rc::Rc;
use std::sync::Arc;

use tokio::task::{spawn_local, JoinHandle};

use super::plan::SocketSpec;
use super::publisher::ReceiptSink;
use super::shared::{Ctx, CLOSE_WAIT};
use crate::conn::Conn;
use crate::scenario::Kind;
use crate::ws::CLOSE_NORMAL;

/// What a worker runs in phase 2, chosen once per process from the kind.
#[derive(Clone)]
pub(in crate::engine) enum Behaviour {
    /// connect-storm: the handshakes were the measurement; close them all.
    CloseAll,
    /// idle-hold.
    Hold,
    /// The fan-out kinds: healthy receivers and (slow-consumers) slow ones; churn adds its
    /// short-lived sockets.
    Receive { churn: bool },
    /// resume, with the receipts board its sockets and the publisher share.
    Resume(Arc<resume::Board>),
}

impl Behaviour {
    /// The behaviour of `kind`; `run_id` seeds the resume drop schedule, `sessions` sizes
    /// its board.
    pub fn for_kind(kind: Kind, run_id: u32, sessions: usize) -> Behaviour {
        match kind {
            Kind::ConnectStorm => Behaviour::CloseAll,
            Kind::IdleHold => Behaviour::Hold,
            Kind::Resume => Behaviour::Resume(Arc::new(resume::Board::new(run_id, sessions))),
            Kind::Churn => Behaviour::Receive { churn: true },
            Kind::Fanout | Kind::PublishThroughput | Kind::SlowConsumers | Kind::CrossNode => {
                Behaviour::Receive { churn: false }
            }
        }
    }

    /// What the publisher must hand the `202` receipts to, if anything.
    pub fn receipts(&self) -> Option<Arc<dyn ReceiptSink>> {
        match self {
            Behaviour::Resume(board) => Some(board.clone()),
            _ => None,
        }
    }

    /// Whether sockets keep their token after connecting (to reconnect with it).
    pub fn reconnects(&self) -> bool {
        matches!(self, Behaviour::Resume(_))
    }

    /// Starts phase 2 on this worker for its connected sockets (`token` is empty unless
    /// [`Behaviour::reconnects`]); returns the tasks to wait for.
    pub async fn start(
        &self,
        ctx: &Rc<Ctx>,
        conns: Vec<(SocketSpec, String, Conn)>,
        start_ns: u64,
    ) -> Vec<JoinHandle<()>> {
        let mut tasks = Vec::new();
        match self {
            Behaviour::CloseAll => close_all(conns).await,
            Behaviour::Hold => {
                for (_, _, c) in conns {
                    tasks.push(spawn_local(hold::hold(ctx.clone(), c, start_ns)));
                }
            }
            Behaviour::Resume(board) => {
                for (spec, token, c) in conns {
                    tasks.push(spawn_local(resume::resume_socket(
                        ctx.clone(),
                        board.clone(),
                        spec,
                        token,
                        c,
                        start_ns,
                    )));
                }
            }
            Behaviour::Receive { churn } => {
                for (spec, _, c) in conns {
                    if spec.slow {
                        tasks.push(spawn_local(slow::slow(ctx.clone(), c, start_ns)));
                    } else {
                        tasks.push(spawn_local(receive::receive(
                            ctx.clone(),
                            spec,
                            c,
                            start_ns,
                        )));
                    }
                }
                if *churn {
                    tasks.push(spawn_local(churn::churn(ctx.clone(), start_ns)));
                }
            }
        }
        tasks
    }
}

/// Closes every socket with a normal close, all at once, each bounded by [`CLOSE_WAIT`].
pub(in crate::engine) async fn close_all(conns: Vec<(SocketSpec, String, Conn)>) {
    let tasks: Vec<_> = conns
        .into_iter()
        .map(|(_, _, c)| spawn_local(c.close(CLOSE_NORMAL, CLOSE_WAIT)))
        .collect();
    for t in tasks {
        let _ = t.await;
    }
}
