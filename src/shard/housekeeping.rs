//! Periodic work of a shard: pings for idle sockets, token expiry, dead-socket
//! and stale-pending closes, the history sweep (and with Redis the unsubscribes
//! it causes), and the node-wide limiter sweep on shard 0.
//!
//! Subscribers are visited when `timers` says they are due, never all at once:
//! each visit acts and computes the subscriber's next time. Owns those decisions;
//! the deadline structure itself is `timers`'.

use super::registry::{mono_ms, SocketState};
use super::{Shard, HOUSEKEEPING_TICK, LIMITER_SWEEP_EVERY, PENDING_LIMIT};

/// The longest nap of housekeeping, whatever is scheduled.
const MAX_NAP: Duration = Duration::from_secs(5);
use crate::bridge::BridgeMsg;
use crate::clock::unix_now;
use crate::config::Limits;
use crate::subscribe::Transport;
use crate::ws::close::Disconnect;
use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

impl Shard {
    /// Naps until the first thing is due (a subscriber, a sweep), at least
    /// [`HOUSEKEEPING_TICK`] after the last pass unless a nearer deadline rings the
    /// alarm; then runs the sweeps that are due and visits the due subscribers, each
    /// scheduled again for its next time. An idle subscriber is visited once per
    /// ping interval, and an idle shard wakes about once per history sweep.
    pub(super) async fn housekeeping(self: Rc<Self>) {
        let tick = HOUSEKEEPING_TICK.as_millis() as u64;
        let start = mono_ms();
        let mut next_limiter = start + LIMITER_SWEEP_EVERY.as_millis() as u64;
        let mut last_pass = start;
        loop {
            let next_history = self.next_sweep();
            let mut until = self
                .timers
                .borrow()
                .next_due()
                .min(next_history)
                .min(self.presence_next_due());
            if self.id == 0 {
                until = until.min(next_limiter);
            }
            // Bounded, so what nothing schedules (memory-cap evictions waiting for
            // their unsubscribes) waits at most this long.
            until = until.min(last_pass + MAX_NAP.as_millis() as u64);
            self.alarm.nap(until.max(last_pass + tick)).await;
            let now = mono_ms();
            last_pass = now;
            if self.id == 0 && now >= next_limiter {
                self.node.limiters.forget_idle();
                next_limiter = now + LIMITER_SWEEP_EVERY.as_millis() as u64;
            }
            if now >= self.next_sweep() {
                self.sweep_history();
            }
            if now >= self.presence_next_due() {
                self.flush_presence(now);
            }
            let settings = self.settings();
            let t = Times::now(&settings.live.limits);
            loop {
                let due = self.timers.borrow_mut().pop_due(t.now);
                let Some(s) = due else { break };
                if let Some(next) = self.attend(&s, &t) {
                    self.timers.borrow_mut().schedule(&s, next.max(t.now + 1));
                }
            }
        }
    }

    /// When the history next needs a sweep ([`mono_ms`]).
    fn next_sweep(&self) -> u64 {
        let (now, now_ms) = (Instant::now(), mono_ms());
        match self.history.borrow().next_sweep(now) {
            Some(at) => now_ms + at.saturating_duration_since(now).as_millis() as u64,
            None => u64::MAX,
        }
    }

    /// Starts tracking a new subscriber's deadlines (once it is welcomed, or
    /// waits for its welcome).
    pub(super) fn track(&self, s: &Rc<SocketState>) {
        let t = Times::now(&self.settings().live.limits);
        let mut due = next_due(s, &t);
        if !s.is_welcomed() {
            due = due.min(t.now + PENDING_LIMIT.as_millis() as u64);
        }
        self.timers.borrow_mut().track(s, due);
        self.alarm.ring_before(due);
    }

    /// Makes `s` due at `at` at the latest (a close grace, a poll's deadline),
    /// waking housekeeping if it naps past that.
    pub(super) fn wake_at(&self, s: &SocketState, at: u64) {
        if let Ok(mut timers) = self.timers.try_borrow_mut() {
            timers.schedule(s, at);
        }
        self.alarm.ring_before(at);
    }

    /// After a reload that shortened the ping interval or timeout, looks at every
    /// subscriber once (a reload is rare; ticks never do this).
    pub(super) fn reschedule_all(&self) {
        let now = mono_ms();
        let registry = self.registry.borrow();
        let mut timers = self.timers.borrow_mut();
        for s in registry.all() {
            timers.schedule(s, now);
        }
        self.alarm.ring_before(now);
    }

    /// Does what `s` is due for; returns when it next needs a look (`None`: only
    /// when something else schedules it).
    fn attend(&self, s: &Rc<SocketState>, t: &Times) -> Option<u64> {
        if s.is_closing() {
            let deadline = s.close_deadline.get();
            if deadline != 0 && deadline <= t.now {
                s.wake();
            }
            // Its task ends it within the grace; look again in case it has not.
            return Some(if deadline > t.now {
                deadline
            } else {
                t.now + 1_000
            });
        }
        if !s.is_welcomed() {
            // Still waiting for its stream (Redis away): not kept forever.
            let limit = s.last_heard.get() + PENDING_LIMIT.as_millis() as u64;
            if limit > t.now {
                return Some(limit);
            }
            let stale = self
                .registry
                .borrow_mut()
                .take_pending(&s.session, Some(s.id));
            for hello in stale {
                self.abandon(hello, Disconnect::Overloaded);
            }
            return Some(t.now + 1_000);
        }
        // An event-stream reader sends nothing after its request: it is kept alive
        // by comments, and a dead one shows as a failed write or a full queue,
        // never as silence.
        let silent = match s.transport {
            Transport::Ws => t.now.saturating_sub(s.last_heard.get()),
            Transport::Sse => t.now.saturating_sub(s.last_ping.get()),
            // A long-poll ends within its own timeout.
            Transport::Poll => 0,
        };
        if s.transport == Transport::Poll && s.last_ping.get() <= t.now {
            // A waiting poll's deadline (see `poll::run`): it answers empty.
            s.wake();
        }
        if s.expires_at.get() <= t.unix {
            s.request_close(Disconnect::TokenExpired);
            return Some(t.now + 1_000);
        } else if s.transport == Transport::Ws && silent >= t.ping_timeout {
            s.request_close(Disconnect::Timeout);
            return Some(t.now + 1_000);
        } else if s.transport != Transport::Poll
            && silent >= t.ping_interval
            && t.now.saturating_sub(s.last_ping.get()) >= t.ping_interval
        {
            s.last_ping.set(t.now);
            s.push_keep_alive();
        }
        Some(next_due(s, t))
    }
    /// Forgets old history and idle streams; with Redis, gives up their channels.
    pub(super) fn sweep_history(&self) {
        let forgotten = {
            let mut history = self.history.borrow_mut();
            history.sweep(Instant::now());
            history.take_forgotten()
        };
        if let Some(bridge) = &self.node.bridge {
            for session in forgotten {
                let msg = BridgeMsg::Unsubscribe {
                    session: session.to_string(),
                };
                if bridge.send(msg).is_err() {
                    tracing::warn!(
                        shard = self.id,
                        "unsubscribe not queued; the bridge is behind"
                    );
                }
            }
        }
    }
}

/// One reading of the clocks and the ping settings, for a pass over due subscribers.
struct Times {
    now: u64,
    unix: u64,
    ping_interval: u64,
    ping_timeout: u64,
}

impl Times {
    fn now(limits: &Limits) -> Times {
        Times {
            now: mono_ms(),
            unix: unix_now(),
            ping_interval: limits.ping_interval.as_millis() as u64,
            ping_timeout: limits.ping_timeout.as_millis() as u64,
        }
    }
}

/// When a subscriber in good standing next needs a look: its token's expiry, a
/// WebSocket's ping timeout, its next ping (or keep-alive comment), a long-poll's
/// deadline; whichever comes first.
fn next_due(s: &SocketState, t: &Times) -> u64 {
    let expiry = t.now
        + s.expires_at
            .get()
            .saturating_sub(t.unix)
            .saturating_mul(1_000);
    let own = match s.transport {
        Transport::Ws => {
            let heard = s.last_heard.get();
            let ping = heard.max(s.last_ping.get()) + t.ping_interval;
            ping.min(heard + t.ping_timeout)
        }
        Transport::Sse => s.last_ping.get() + t.ping_interval,
        Transport::Poll => s.last_ping.get(),
    };
    expiry.min(own)
}

/// Housekeeping's nap, which a deadline nearer than its end cuts short.
#[derive(Default)]
pub(super) struct Alarm {
    /// When the current nap ends ([`mono_ms`]); 0 while housekeeping is awake.
    until: Cell<u64>,
    waker: Cell<Option<Waker>>,
}

impl Alarm {
    /// Naps until `until`, or until [`Alarm::ring_before`] names an earlier time.
    async fn nap(&self, until: u64) {
        let now = mono_ms();
        if until <= now {
            return;
        }
        self.until.set(until);
        let mut timer = glommio::timer::Timer::new(Duration::from_millis(until - now));
        futures_lite::future::poll_fn(|cx| {
            if self.until.get() != until {
                return Poll::Ready(());
            }
            self.waker.set(Some(cx.waker().clone()));
            Pin::new(&mut timer).poll(cx).map(|_| ())
        })
        .await;
        self.until.set(0);
        self.waker.set(None);
    }

    /// Cuts the nap short if it would end after `at`.
    pub(super) fn ring_before(&self, at: u64) {
        let until = self.until.get();
        if until != 0 && at < until {
            self.until.set(at);
            if let Some(w) = self.waker.take() {
                w.wake();
            }
        }
    }
}
