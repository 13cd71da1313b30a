//! Socket placement and greeting: completing an upgrade here or handing the
//! descriptor to the owning shard (`dup`), the per-session cap, the wait for a
//! session's stream with Redis, and the 101 + welcome with the replay or resync
//! a resuming client is owed (from the ring, or read back from Redis).
//!
//! A WebSocket's own turns are `ws::conn`'s, driven by `parked`; this room only
//! starts it.

use super::history::{Resume, ResyncReason, StreamPos};
use super::registry::SocketGuard;
use super::registry::{mono_ms, Outgoing, PendingHello, SocketState};
use super::tasks::spawn_guarded;
use super::Shard;
use crate::bridge::BridgeMsg;
use crate::clock::unix_now_ns;
use crate::config::HistoryStore;
use crate::http::response::Refusal;
use crate::limiter::SocketPermit;
use crate::router::{shard_for, AdoptMsg, FetchPurpose, ShardMsg};
use crate::sse::frame as sse_frame;
use crate::subscribe::{Answer, Transport};
use crate::ws::close::Disconnect;
use crate::ws::frame::{frame_from_remote, resync_json, text_frame, welcome_json, EncodedFrame};
use crate::ws::upgrade::AcceptedUpgrade;
use glommio::net::TcpStream;
use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd};
use std::rc::Rc;
use std::time::Instant;

impl Shard {
    /// Completes an upgrade on this shard, or hands the socket to its owner.
    pub(super) fn place_socket(
        self: &Rc<Self>,
        stream: TcpStream,
        upgrade: AcceptedUpgrade,
        permit: SocketPermit,
    ) -> Result<(), Box<(TcpStream, Refusal)>> {
        let owner = shard_for(&upgrade.claims.session, self.node.router.shards());
        if owner == self.id {
            self.start_socket(stream, upgrade, permit);
            return Ok(());
        }
        // SAFETY: dup() of a descriptor we own; the duplicate is owned by `fd` only.
        let dup = unsafe { libc::dup(std::os::fd::AsRawFd::as_raw_fd(&stream)) };
        if dup < 0 {
            return Err(Box::new((
                stream,
                Refusal::unavailable("cannot hand the socket over"),
            )));
        }
        // SAFETY: `dup` is a valid, fresh descriptor.
        let fd = unsafe { OwnedFd::from_raw_fd(dup) };
        match self.node.router.send(
            owner,
            ShardMsg::Adopt(Box::new(AdoptMsg {
                fd,
                upgrade,
                permit,
            })),
        ) {
            Ok(()) => {
                self.stats.handoff();
                Ok(())
            }
            Err((e, _)) => {
                tracing::warn!(shard = self.id, error = %e, "socket handoff refused");
                Err(Box::new((
                    stream,
                    Refusal::unavailable("the relay is overloaded; retry later"),
                )))
            }
        }
    }

    pub(super) fn adopt(self: &Rc<Self>, msg: AdoptMsg) {
        if self.is_draining() {
            // Dropping the message closes the descriptor and releases the permit.
            return;
        }
        let AdoptMsg {
            fd,
            upgrade,
            permit,
        } = msg;
        // SAFETY: the descriptor was handed to us whole; nobody else closes it.
        let stream = unsafe { TcpStream::from_raw_fd(fd.into_raw_fd()) };
        self.start_socket(stream, upgrade, permit);
    }

    pub(super) fn start_socket(
        self: &Rc<Self>,
        stream: TcpStream,
        upgrade: AcceptedUpgrade,
        permit: SocketPermit,
    ) {
        // Sockets per session: all of a session's sockets are here, so this count
        // is the node's.
        let max = self.node.limiters.max_sockets_per_session();
        let in_session = self.registry.borrow().session_size(&upgrade.claims.session);
        if in_session >= max {
            self.stats.rate_limited("session");
            self.stats.upgrade_refused(429);
            drop(permit);
            let reply =
                Refusal::rate_limited("too many sockets for this session").to_response(false);
            let mut stream = stream;
            spawn_guarded(self.id, "refusal", async move {
                use futures_lite::AsyncWriteExt;
                let _ = stream.write_all(&reply).await;
            });
            return;
        }
        let id = self.next_socket.get();
        self.next_socket.set(id + 1);
        let now = mono_ms();
        let session = self.registry.borrow().intern(&upgrade.claims.session);
        let transport = upgrade.transport();
        let state = Rc::new(SocketState::new(
            id,
            session.clone(),
            transport,
            self.settings().verifier.expires_at(&upgrade.claims),
            now,
        ));
        state.fd.set(std::os::fd::AsRawFd::as_raw_fd(&stream));
        let conn_id = format!("{}-{}-{id}", self.node.node_tag, self.id);
        let hello = PendingHello {
            socket: state.clone(),
            response: upgrade.response().into_boxed_slice(),
            conn_id: conn_id.into_boxed_str(),
            since: upgrade.since,
            fetching: false,
        };
        // With Redis, the welcome waits until the session's subscription is live
        // and its position known, so no event published after it can be missed.
        let live = {
            let mut history = self.history.borrow_mut();
            let key = history.key(&session);
            let live = match &self.node.bridge {
                None => {
                    history.stream(&key, Instant::now());
                    true
                }
                Some(bridge) => match history.get(&session) {
                    Some(stream) => stream.live,
                    None => {
                        history.start_pending(&key, Instant::now());
                        let msg = BridgeMsg::Subscribe {
                            from: self.id,
                            session: session.to_string(),
                        };
                        if bridge.send(msg).is_err() {
                            state.request_close(Disconnect::Overloaded);
                        }
                        false
                    }
                },
            };
            history.socket_joined(&session);
            live
        };
        self.presence_joined(
            &state,
            upgrade.claims.sub.as_deref(),
            upgrade.claims.claim_text("presence").as_deref(),
        );
        {
            let mut reg = self.registry.borrow_mut();
            reg.add_pending(hello);
            self.stats.set_connected(reg.socket_counts());
            self.stats.sessions.set(reg.session_count() as u64);
        }
        if live {
            let hello = self.registry.borrow_mut().take_pending(&session, Some(id));
            for h in hello {
                self.greet(h);
            }
        }
        self.track(&state);
        let guard = SocketGuard::new(self.clone(), state, permit);
        match upgrade.answer {
            Answer::Switch { .. } => self.park_ws(guard, stream),
            Answer::EventStream { .. } => {
                spawn_guarded(self.id, "sse", crate::sse::conn::run(guard, stream))
            }
            Answer::Poll { allow_origin } => {
                let poll = crate::poll::PollRequest {
                    since: upgrade.since,
                    allow_origin,
                    timeout: self.settings().live.limits.poll_timeout,
                };
                spawn_guarded(self.id, "poll", crate::poll::run(guard, stream, poll))
            }
        }
    }

    /// Greets every socket of `session` that waits for its stream (not those
    /// waiting for events fetched from Redis).
    pub(super) fn greet_pending(self: &Rc<Self>, session: &str) {
        let waiting = self.registry.borrow_mut().take_pending(session, None);
        for h in waiting {
            if h.fetching {
                self.registry.borrow_mut().repend(h);
            } else {
                self.greet(h);
            }
        }
    }

    /// Sends a socket its 101 and welcome (with the stream's position) and, when it
    /// resumes, the events it missed or a resync; from then on it gets events.
    pub(super) fn greet(self: &Rc<Self>, mut hello: PendingHello) {
        let session = hello.socket.session.clone();
        let pos = self
            .history
            .borrow()
            .position(&session)
            .unwrap_or(StreamPos { epoch: 0, seq: 0 });
        let mut replay = Vec::new();
        let mut resync = None;
        if let Some(since) = hello.since {
            let max = self.settings().live.limits.max_outbound_bytes;
            let resume = self.history.borrow().resume(&session, since, max);
            match resume {
                Resume::UpToDate => {}
                Resume::Replay(frames) => replay = frames,
                Resume::Resync(ResyncReason::History)
                    if self.node.config.history.store == HistoryStore::Redis
                        && since.epoch == pos.epoch =>
                {
                    // The Redis Stream may reach further back than this node's ring.
                    if let Some(bridge) = &self.node.bridge {
                        let msg = BridgeMsg::Fetch {
                            from: self.id,
                            session: session.to_string(),
                            after: since,
                            purpose: FetchPurpose::Resume {
                                socket: hello.socket.id,
                            },
                        };
                        if bridge.send(msg).is_ok() {
                            hello.fetching = true;
                            self.registry.borrow_mut().repend(hello);
                            return;
                        }
                    }
                    resync = Some(ResyncReason::History);
                }
                Resume::Resync(reason) => resync = Some(reason),
            }
        }
        self.send_hello(hello, pos, &replay, resync);
    }

    /// Queues the 101, the welcome, then the replay or the resync, and makes the
    /// socket receive events from now on.
    pub(super) fn send_hello(
        &self,
        hello: PendingHello,
        pos: StreamPos,
        replay: &[Rc<EncodedFrame>],
        resync: Option<ResyncReason>,
    ) {
        let session = &hello.socket.session;
        let mut first = Vec::from(hello.response);
        // Echo mode serves conformance suites, which expect only their own messages.
        // A long-poll that names a position needs no welcome: it waits from there.
        let poll_resumes = hello.socket.transport == Transport::Poll && hello.since.is_some();
        if !self.node.config.echo && !poll_resumes {
            let welcome = welcome_json(session, &hello.conn_id, pos);
            match hello.socket.transport {
                Transport::Ws => first.extend_from_slice(&text_frame(&welcome)),
                // Its id is the stream's position: an EventSource that reconnects
                // before any event sends it back as Last-Event-ID.
                Transport::Sse => sse_frame::push_block(&mut first, Some(pos), "welcome", &welcome),
                Transport::Poll => first.extend_from_slice(&welcome),
            }
        }
        // The response head and the welcome leave in one write, as one queue entry.
        if !first.is_empty() {
            hello
                .socket
                .push_control(Outgoing::Owned(first.into_boxed_slice()));
        }
        // The session's presence now, before any replay (never part of the stream).
        self.presence_snapshot(&hello.socket);
        if let Some(reason) = resync {
            hello
                .socket
                .push_message("resync", Some(pos), &resync_json(session, pos, reason));
            self.stats.resync(reason, 1);
        } else if !replay.is_empty() {
            for f in replay {
                hello.socket.push_replay(f);
            }
            self.stats.replay(replay.len() as u64);
        }
        self.registry.borrow_mut().welcome(hello.socket);
    }

    /// Closes a socket that was never welcomed: its 101 goes first, so the client
    /// sees a proper close with `reason`, not bytes before a handshake.
    pub(super) fn abandon(&self, hello: PendingHello, reason: Disconnect) {
        hello.socket.push_control(Outgoing::Owned(hello.response));
        hello.socket.request_close(reason);
        self.registry.borrow_mut().welcome(hello.socket);
    }

    /// Events read back from Redis after `after`, for every purpose that asked:
    /// a catch-up delivers them; resuming sockets get them, with the ring's newer
    /// frames, when together they cover everything after `after`, else a resync.
    /// Decoded once for all the sockets.
    pub(super) fn fetched(
        self: &Rc<Self>,
        session: &str,
        after: StreamPos,
        purposes: Vec<FetchPurpose>,
        payloads: Option<Vec<Vec<u8>>>,
    ) {
        let mut sockets = Vec::with_capacity(purposes.len());
        for purpose in purposes {
            match purpose {
                FetchPurpose::Resume { socket } => sockets.push(socket),
                FetchPurpose::CatchUp { target } => {
                    self.caught_up(session, target, payloads.as_deref())
                }
            }
        }
        let mut hellos = Vec::with_capacity(sockets.len());
        for socket in sockets {
            let taken = self
                .registry
                .borrow_mut()
                .take_pending(session, Some(socket))
                .pop();
            hellos.extend(taken);
        }
        if hellos.is_empty() {
            return;
        }
        let Some(pos) = self.history.borrow().position(session) else {
            return;
        };
        let frames = self.replay_after(session, after, pos, payloads.as_deref());
        for hello in hellos {
            match &frames {
                Some(frames) => self.send_hello(hello, pos, frames, None),
                None => self.send_hello(hello, pos, &[], Some(ResyncReason::History)),
            }
        }
    }

    /// What a socket resuming after `after` gets when the stream stands at `pos`:
    /// the events read back from Redis, then the ring's newer frames; `None` when
    /// together they leave a hole or pass the outbound cap.
    fn replay_after(
        &self,
        session: &str,
        after: StreamPos,
        pos: StreamPos,
        payloads: Option<&[Vec<u8>]>,
    ) -> Option<Vec<Rc<EncodedFrame>>> {
        let now = Instant::now();
        let now_ns = unix_now_ns();
        let mut frames: Vec<Rc<EncodedFrame>> = Vec::new();
        for p in payloads.unwrap_or_default() {
            if let Some((f, at)) = frame_from_remote(p, now_ns, now) {
                if at.epoch == pos.epoch && at.seq > after.seq && at.seq <= pos.seq {
                    frames.push(Rc::new(f));
                }
            }
        }
        // The ring holds what arrived here; Redis what came before it.
        let max = self.settings().live.limits.max_outbound_bytes;
        let from_ring = frames.last().map_or(after, |f| StreamPos {
            epoch: pos.epoch,
            seq: f.seq,
        });
        match self.history.borrow().resume(session, from_ring, max) {
            Resume::UpToDate => {}
            Resume::Replay(more) => frames.extend(more),
            Resume::Resync(_) => frames.clear(),
        }
        let bytes: usize = frames.iter().map(|f| f.len()).sum();
        let complete = after.seq <= pos.seq
            && bytes <= max
            && frames.len() as u64 == pos.seq - after.seq
            && frames
                .iter()
                .zip(after.seq + 1..)
                .all(|(f, seq)| f.seq == seq);
        complete.then_some(frames)
    }
}
