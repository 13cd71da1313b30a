//! Periodic work of a shard: pings for idle sockets, token expiry, dead-socket
//! and stale-pending closes, the history sweep (and with Redis the unsubscribes
//! it causes), and the node-wide limiter sweep on shard 0.

use super::registry::mono_ms;
use super::{Shard, HISTORY_SWEEP_TICKS, HOUSEKEEPING_TICK, LIMITER_SWEEP_TICKS, PENDING_LIMIT};
use crate::bridge::BridgeMsg;
use crate::clock::unix_now;
use crate::subscribe::Transport;
use crate::ws::close::Disconnect;
use std::rc::Rc;
use std::time::Instant;

impl Shard {
    /// Pings idle sockets, closes dead and expired ones, and reaps closing ones.
    pub(super) async fn housekeeping(self: Rc<Self>) {
        let mut ticks = 0u64;
        loop {
            glommio::timer::sleep(HOUSEKEEPING_TICK).await;
            let settings = self.settings();
            let limits = &settings.live.limits;
            ticks += 1;
            if self.id == 0 && ticks % LIMITER_SWEEP_TICKS == 0 {
                self.node.limiters.forget_idle();
            }
            if ticks % HISTORY_SWEEP_TICKS == 0 {
                self.sweep_history();
            }
            let now = mono_ms();
            let unix = unix_now();
            let ping_interval = limits.ping_interval.as_millis() as u64;
            let ping_timeout = limits.ping_timeout.as_millis() as u64;
            // A socket still waiting for its stream (Redis away) is not kept forever.
            let stale = self
                .registry
                .borrow_mut()
                .take_pending_since(now.saturating_sub(PENDING_LIMIT.as_millis() as u64));
            for hello in stale {
                self.abandon(hello, Disconnect::Overloaded);
            }
            let registry = self.registry.borrow();
            for s in registry.welcomed() {
                if s.is_closing() {
                    let deadline = s.close_deadline.get();
                    if deadline != 0 && deadline <= now {
                        s.wake();
                    }
                    continue;
                }
                // An event-stream reader sends nothing after its request: it is
                // kept alive by comments, and a dead one shows as a failed write or
                // a full queue, never as silence.
                let silent = match s.transport {
                    Transport::Ws => now.saturating_sub(s.last_heard.get()),
                    Transport::Sse => now.saturating_sub(s.last_ping.get()),
                    // A long-poll ends within its own timeout.
                    Transport::Poll => 0,
                };
                if s.transport == Transport::Poll && s.last_ping.get() <= now {
                    // A waiting poll's deadline (see `poll::run`): it answers empty.
                    s.wake();
                }
                if s.expires_at.get() <= unix {
                    s.request_close(Disconnect::TokenExpired);
                } else if s.transport == Transport::Ws && silent >= ping_timeout {
                    s.request_close(Disconnect::Timeout);
                } else if silent >= ping_interval
                    && now.saturating_sub(s.last_ping.get()) >= ping_interval
                {
                    s.last_ping.set(now);
                    s.push_keep_alive();
                }
            }
        }
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
