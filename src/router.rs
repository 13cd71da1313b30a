//! Which shard owns a session, and the hop to it.
//!
//! [`shard_for`] is the one ownership rule: pure and stable, so every shard (and
//! every node) agrees without talking. Everything that crosses cores is a
//! [`ShardMsg`] on the owning shard's bounded crossbeam channel, followed by a ring
//! of that shard's [`Doorbell`]: a socket pair the shard's executor waits on, so a
//! parked shard wakes through io_uring without busy polling or timed sleeps.
//!
//! Admission is reserved before anything is sent ([`InboxBudget`]), so a batch for
//! several shards is either sent to all of them or to none: a full inbox answers 503
//! and loses nothing. This module knows nothing of sockets or HTTP.

use std::io::Write;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{fence, AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender, TrySendError};

use crate::http::publish::PublishBatch;
use crate::limiter::SocketPermit;
use crate::metrics::StatsSnapshot;
use crate::stream::StreamPos;
use crate::ws::upgrade::AcceptedUpgrade;

/// Messages one shard may have in its inbox by default (`RELAY_INBOX_MESSAGES`):
/// with a batch per message this is a lot of events, and it bounds the channel's
/// own memory.
pub const INBOX_MESSAGES: usize = crate::config::DEFAULT_INBOX_MESSAGES;
/// Publish bytes one shard may have waiting in its inbox before publishers get 503.
pub const INBOX_BYTES: usize = 64 * 1024 * 1024;

/// The shard that owns `session`, among `shards`. Stable across runs and versions of
/// the relay: xxh3 of the name, scaled to the shard count (Lemire's multiply-shift,
/// no modulo bias worth the name).
pub fn shard_for(session: &str, shards: usize) -> usize {
    let h = xxhash_rust::xxh3::xxh3_64(session.as_bytes());
    ((u128::from(h) * shards as u128) >> 64) as usize
}

/// Events of one request that the receiving shard owns.
#[derive(Debug)]
pub struct DeliverMsg {
    pub batch: Arc<PublishBatch>,
    /// Indices into `batch.events`, in acceptance order.
    pub events: Vec<u32>,
    pub accepted_at: Instant,
    /// Bytes reserved in the receiver's [`InboxBudget`]; released once handled.
    pub reserved_bytes: usize,
    /// Who waits for the receipts: shard `from`, publish `id`.
    pub reply: Option<(usize, u64)>,
    /// Ids for events published without one: `{node}-{id_shard}-{id_base + index}`.
    pub id_shard: usize,
    pub id_base: u64,
    /// `?wait=delivered`: write through to the sockets and count them.
    pub wait_delivered: bool,
}

/// What happened to one accepted event, for the publisher's 202.
#[derive(Debug, Clone, Copy)]
pub struct Receipt {
    /// Index of the event in its request.
    pub index: u32,
    pub pos: StreamPos,
    /// The id was seen within the dedupe window: not delivered again.
    pub duplicate: bool,
    /// With `?wait=delivered`: sockets the frame reached the kernel for, sockets it
    /// waits in the queue of, and sockets closed as too slow.
    pub written: u32,
    pub queued: u32,
    pub dropped: u32,
    /// Through Redis: the nodes subscribed to the session when Redis published the
    /// event (`PUBLISH`'s answer), each owing a [`DeliveredCounts`] under
    /// `?wait=delivered`. 0 without Redis and for a duplicate.
    pub receivers: u32,
}

/// One node's delivery of one event, for a publisher waiting with
/// `?wait=delivered` through Redis: the same three counts as a [`Receipt`]'s.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeliveredCounts {
    pub written: u32,
    pub queued: u32,
    pub dropped: u32,
}

/// Where a node that received an event from Redis sends its [`DeliveredCounts`]:
/// the publishing node's reply channel, and the waiting request there (its shard,
/// its id in that shard's table, the event's index in the request).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyTo {
    pub channel: Box<str>,
    pub shard: u32,
    pub id: u64,
    pub index: u32,
}

/// One event's counts on the node that delivered it, as the waiting shard folds
/// them: which node, which event of the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeDelivery {
    pub node: Arc<str>,
    pub index: u32,
    pub counts: DeliveredCounts,
}

/// A socket that authenticated on one shard, moving to its session's owner before
/// the 101 is written.
#[derive(Debug)]
pub struct AdoptMsg {
    pub fd: OwnedFd,
    pub upgrade: AcceptedUpgrade,
    /// The connection's node and tenant slots, moving with it.
    pub permit: SocketPermit,
}

/// An event that arrived from Redis for a session this shard owns.
#[derive(Debug)]
pub struct RemoteEvent {
    pub session: Box<str>,
    /// As the publish script sent it: see `ws::frame::remote_parts`.
    pub payload: Vec<u8>,
    /// The publisher waits for this node's counts (`?wait=delivered`).
    pub reply: Option<Box<ReplyTo>>,
}

/// Why the shard asked the bridge for events from a session's Redis Stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchPurpose {
    /// A resuming socket waits for them.
    Resume { socket: u64 },
    /// This node missed them (Redis was away, or a gap in arrivals); the stream
    /// must reach `target`.
    CatchUp { target: u64 },
}

/// Everything that crosses cores (and the bridge thread).
#[derive(Debug)]
pub enum ShardMsg {
    Deliver(DeliverMsg),
    /// Events from Redis.
    Remote {
        events: Vec<RemoteEvent>,
    },
    /// The owner's receipts for publish `id` of this shard.
    Sequenced {
        id: u64,
        receipts: Vec<Receipt>,
    },
    /// Other nodes' (and this node's) deliveries of events of publish `id` of this
    /// shard, waiting with `?wait=delivered` through Redis.
    Delivered {
        id: u64,
        deliveries: Vec<NodeDelivery>,
    },
    /// The bridge's answer to a publish: Redis took all its events (with these
    /// receipts), or not (`None`).
    PublishDone {
        id: u64,
        receipts: Option<Vec<Receipt>>,
    },
    /// These sessions' subscriptions are live, and this is where their streams
    /// stand: welcome their waiting sockets.
    Subscribed {
        sessions: Vec<(String, StreamPos)>,
    },
    /// These sessions may have missed events while Redis was away; their streams
    /// stand here now.
    Resync {
        sessions: Vec<(String, StreamPos)>,
    },
    /// Events read back from a session's Redis Stream, after `after`: raw payloads
    /// in order, or `None` when the stream does not reach back that far. One read
    /// serves every purpose that asked for the same place.
    Fetched {
        session: String,
        after: StreamPos,
        purposes: Vec<FetchPurpose>,
        payloads: Option<Vec<Vec<u8>>>,
    },
    Adopt(Box<AdoptMsg>),
    /// Send your counters to shard `from`, tagged `id`.
    SnapshotRequest {
        from: usize,
        id: u64,
    },
    SnapshotReply {
        id: u64,
        snapshot: Box<StatsSnapshot>,
    },
    /// Answer a presence query for a session this shard owns to shard `from`,
    /// tagged `id`.
    PresenceQuery {
        from: usize,
        id: u64,
        query: Box<PresenceQuery>,
    },
    /// The owner's answer to presence query `id`: the response body.
    PresenceAnswer {
        id: u64,
        body: Vec<u8>,
    },
    /// The bridge's answer to presence read `id` (a query): every live node's
    /// share, or `None` when Redis could not be read.
    PresenceShares {
        id: u64,
        shares: Option<Vec<RemotePresence>>,
    },
    /// Other nodes' presence in sessions this shard owns (from the bridge).
    PresenceRemote {
        shares: Vec<RemotePresence>,
    },
    /// These nodes stopped heartbeating: drop their presence.
    PresenceNodesDead {
        nodes: Vec<String>,
    },
    /// Stop accepting and close every socket with 1012.
    Drain,
    /// SIGHUP: use these secrets, keys, origins and limits from now on.
    Reload(Arc<crate::config::LiveConfig>),
}

/// `GET /sessions/{session}/presence`, validated: one page of the session's users.
#[derive(Debug, Clone)]
pub struct PresenceQuery {
    pub session: String,
    pub limit: usize,
    /// The user after which the page starts (from the cursor).
    pub after: Option<String>,
    /// With Redis: every other live node's share, read by the bridge; `None`
    /// without Redis.
    pub remote: Option<Vec<RemotePresence>>,
}

/// What one other node holds of a session: its users (with their sockets there)
/// and its sockets in all. An empty share: it holds nothing any more.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemotePresence {
    pub session: String,
    pub node: String,
    pub users: Vec<(String, u32)>,
    pub sockets: u32,
}

/// Why a send did not happen. The message is handed back; nothing is dropped.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    /// The receiving shard is behind: answer 503 and let the caller retry later.
    #[error("shard {0} inbox is full")]
    InboxFull(usize),
    /// The receiving shard has stopped: the node is shutting down.
    #[error("shard {0} has stopped")]
    Stopped(usize),
}

/// Admission for one shard's inbox, in messages and bytes. Reserved by senders on
/// any thread, released by the owning shard once a message is handled.
#[derive(Debug)]
pub struct InboxBudget {
    messages: AtomicUsize,
    bytes: AtomicUsize,
    /// The inbox's capacity in messages.
    max_messages: usize,
}

impl Default for InboxBudget {
    fn default() -> Self {
        InboxBudget {
            messages: AtomicUsize::new(0),
            bytes: AtomicUsize::new(0),
            max_messages: INBOX_MESSAGES,
        }
    }
}

impl InboxBudget {
    fn try_reserve(&self, bytes: usize) -> bool {
        if self.messages.fetch_add(1, Ordering::AcqRel) >= self.max_messages {
            self.messages.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        if bytes > 0 && self.bytes.fetch_add(bytes, Ordering::AcqRel) + bytes > INBOX_BYTES {
            self.bytes.fetch_sub(bytes, Ordering::AcqRel);
            self.messages.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        true
    }

    /// Gives back what one handled message reserved.
    pub fn release(&self, bytes: usize) {
        self.messages.fetch_sub(1, Ordering::AcqRel);
        if bytes > 0 {
            self.bytes.fetch_sub(bytes, Ordering::AcqRel);
        }
    }
}

/// Wakes a parked shard from any thread.
///
/// The shard waits for a byte on the other end of `writer` (see
/// `shard::Shard::inbox_loop`); `armed` makes sure at most one byte is in flight per wake, so a
/// burst of messages costs one write, not one per message.
#[derive(Debug)]
pub struct Doorbell {
    armed: AtomicBool,
    writer: UnixStream,
}

impl Doorbell {
    /// A doorbell and the socket its shard waits on.
    pub fn pair() -> std::io::Result<(Arc<Doorbell>, UnixStream)> {
        let (writer, reader) = UnixStream::pair()?;
        writer.set_nonblocking(true)?;
        reader.set_nonblocking(true)?;
        Ok((
            Arc::new(Doorbell {
                armed: AtomicBool::new(false),
                writer,
            }),
            reader,
        ))
    }

    /// Called after a message was pushed.
    pub fn ring(&self) {
        // Pairs with the fence in `rearm`: either the shard sees the message on its
        // next drain, or it sees `armed == false` cleared before we swap and we write.
        fence(Ordering::SeqCst);
        if !self.armed.swap(true, Ordering::SeqCst) {
            // A full socket buffer means a wake is already pending: nothing to do.
            let _ = (&self.writer).write(&[1]);
        }
    }

    /// Called by the shard after it woke and before it drains its inbox.
    pub fn rearm(&self) {
        self.armed.store(false, Ordering::SeqCst);
        fence(Ordering::SeqCst);
    }
}

/// The sending side of one shard's inbox.
#[derive(Debug)]
struct ShardLink {
    tx: Sender<ShardMsg>,
    doorbell: Arc<Doorbell>,
    budget: Arc<InboxBudget>,
}

/// The receiving side of one shard's inbox; moved into that shard at start-up.
#[derive(Debug)]
pub struct Inbox {
    pub rx: Receiver<ShardMsg>,
    pub doorbell: Arc<Doorbell>,
    pub doorbell_socket: UnixStream,
    pub budget: Arc<InboxBudget>,
}

impl Inbox {
    /// The shard's end of the doorbell. Call on the shard's own executor: the
    /// socket is registered with that executor's io_uring.
    pub fn waiter(&self) -> std::io::Result<DoorbellWaiter> {
        DoorbellWaiter::new(self.doorbell.clone(), &self.doorbell_socket)
    }
}

/// Parks a shard until its doorbell rings.
///
/// The wait is an io_uring poll on a socket, so a parked executor sleeps in the
/// kernel and wakes only when another thread writes the doorbell.
pub struct DoorbellWaiter {
    socket: glommio::net::UnixStream,
    doorbell: Arc<Doorbell>,
}

impl DoorbellWaiter {
    /// The waiting end of `doorbell`, over a duplicate of its `socket`. Call on
    /// the executor that will wait: the socket is registered with its io_uring.
    pub fn new(doorbell: Arc<Doorbell>, socket: &UnixStream) -> std::io::Result<DoorbellWaiter> {
        use std::os::fd::{FromRawFd, IntoRawFd};
        let fd = socket.try_clone()?.into_raw_fd();
        Ok(DoorbellWaiter {
            // SAFETY: `fd` is a fresh duplicate that nothing else owns.
            socket: unsafe { glommio::net::UnixStream::from_raw_fd(fd) },
            doorbell,
        })
    }

    /// Re-arms the doorbell. Call before draining the inbox, so a message pushed
    /// during the drain rings again instead of being missed.
    pub fn rearm(&self) {
        self.doorbell.rearm();
    }

    /// Waits for the next ring. Errors only if the doorbell socket broke.
    pub async fn wait(&mut self) -> std::io::Result<()> {
        futures_lite::future::poll_fn(|cx| self.poll_wait(cx)).await
    }

    /// [`DoorbellWaiter::wait`] for a hand-written future: `Ready` once a ring
    /// came, `Pending` with `cx` woken by the next one.
    pub fn poll_wait(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use futures_lite::AsyncRead;
        let mut buf = [0u8; 64];
        match std::pin::Pin::new(&mut self.socket).poll_read(cx, &mut buf) {
            std::task::Poll::Ready(Ok(0)) => {
                std::task::Poll::Ready(Err(std::io::ErrorKind::UnexpectedEof.into()))
            }
            std::task::Poll::Ready(Ok(_)) => std::task::Poll::Ready(Ok(())),
            std::task::Poll::Ready(Err(e)) => std::task::Poll::Ready(Err(e)),
            std::task::Poll::Pending => std::task::Poll::Pending,
        }
    }
}

/// Senders to every shard. Cheap to clone; shared by all shards and the signal thread.
#[derive(Debug, Clone)]
pub struct Router {
    links: Arc<[ShardLink]>,
}

impl Router {
    /// Wires `shards` inboxes of [`INBOX_MESSAGES`]; the caller moves inbox `i`
    /// into shard `i`.
    pub fn new(shards: usize) -> std::io::Result<(Router, Vec<Inbox>)> {
        Router::with_capacity(shards, INBOX_MESSAGES)
    }

    /// Wires `shards` inboxes of `messages` each (`RELAY_INBOX_MESSAGES`).
    pub fn with_capacity(shards: usize, messages: usize) -> std::io::Result<(Router, Vec<Inbox>)> {
        let mut links = Vec::with_capacity(shards);
        let mut inboxes = Vec::with_capacity(shards);
        for _ in 0..shards {
            let (tx, rx) = crossbeam_channel::bounded(messages);
            let (doorbell, doorbell_socket) = Doorbell::pair()?;
            let budget = Arc::new(InboxBudget {
                max_messages: messages,
                ..InboxBudget::default()
            });
            links.push(ShardLink {
                tx,
                doorbell: doorbell.clone(),
                budget: budget.clone(),
            });
            inboxes.push(Inbox {
                rx,
                doorbell,
                doorbell_socket,
                budget,
            });
        }
        Ok((
            Router {
                links: links.into(),
            },
            inboxes,
        ))
    }

    pub fn shards(&self) -> usize {
        self.links.len()
    }

    fn push(&self, to: usize, msg: ShardMsg) -> Result<(), (RouteError, ShardMsg)> {
        let link = &self.links[to];
        match link.tx.try_send(msg) {
            Ok(()) => {
                link.doorbell.ring();
                Ok(())
            }
            Err(TrySendError::Full(m)) => Err((RouteError::InboxFull(to), m)),
            Err(TrySendError::Disconnected(m)) => Err((RouteError::Stopped(to), m)),
        }
    }

    /// Sends a control message (handoff, snapshot, drain). On failure the message
    /// comes back with the reason.
    pub fn send(&self, to: usize, msg: ShardMsg) -> Result<(), (RouteError, ShardMsg)> {
        if !self.links[to].budget.try_reserve(0) {
            return Err((RouteError::InboxFull(to), msg));
        }
        self.push(to, msg)
            .inspect_err(|_| self.links[to].budget.release(0))
    }

    /// Sends a message whose inbox room was reserved when the message it answers
    /// was admitted (see [`Router::dispatch`]): it cannot find the inbox full, so a
    /// shard never waits to send it.
    pub fn send_reserved(&self, to: usize, msg: ShardMsg) -> Result<(), (RouteError, ShardMsg)> {
        self.push(to, msg)
            .inspect_err(|_| self.links[to].budget.release(0))
    }

    /// Admission for one group of a dispatch: its bytes in the receiver's inbox and,
    /// when it wants receipts, one message of room in the replying-to inbox.
    fn reserve_group(&self, to: usize, msg: &DeliverMsg) -> bool {
        if !self.links[to].budget.try_reserve(msg.reserved_bytes) {
            return false;
        }
        if let Some((from, _)) = msg.reply {
            if !self.links[from].budget.try_reserve(0) {
                self.links[to].budget.release(msg.reserved_bytes);
                return false;
            }
        }
        true
    }

    fn release_group(&self, to: usize, msg: &DeliverMsg) {
        self.links[to].budget.release(msg.reserved_bytes);
        if let Some((from, _)) = msg.reply {
            self.links[from].budget.release(0);
        }
    }

    /// Sends each shard its share of one request, all or nothing. The room for each
    /// receipt reply is reserved here too, so the owners answer with
    /// [`Router::send_reserved`] and never block on a full inbox.
    pub fn dispatch(&self, groups: Vec<(usize, DeliverMsg)>) -> Result<(), RouteError> {
        for (i, (to, msg)) in groups.iter().enumerate() {
            if !self.reserve_group(*to, msg) {
                for (to, msg) in &groups[..i] {
                    self.release_group(*to, msg);
                }
                return Err(RouteError::InboxFull(*to));
            }
        }
        let mut result = Ok(());
        for (to, msg) in groups {
            // With the reservation held, only a stopped shard can refuse.
            if let Err((e, ShardMsg::Deliver(m))) = self.push(to, ShardMsg::Deliver(msg)) {
                self.release_group(to, &m);
                result = Err(e);
            }
        }
        result
    }
}

#[cfg(test)]
mod tests;
