//! One connected period to Redis, standalone or Cluster, behind one interface.
//!
//! - Standalone: one multiplexed RESP3 connection for `PUBLISH`, `PING` and
//!   `SUBSCRIBE`; incoming messages arrive as pushes.
//! - Cluster: one cluster connection (RESP3) using sharded pub/sub: `SPUBLISH` and
//!   `SSUBSCRIBE` go to the shard that owns the channel's slot, so fan-out spreads
//!   over the cluster instead of being broadcast to every node of it.
//!
//! A link is used until anything fails; then it is dropped whole and a new one is
//! made (the bridge resubscribes and resyncs).
//!
//! Owns the connections and the commands sent on them; the scripts' text and
//! replies are `scripts`', names are `keys`'. Runs on the bridge thread only.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use redis::aio::MultiplexedConnection;
use redis::cluster_async::ClusterConnection;
use redis::{PushInfo, PushKind, Value};

use super::handle::{OutgoingEvent, PublishRules};
use super::keys::{channel_of, dedupe_key, history_key, position_key};
use super::lost::bad_reply;
pub use super::lost::{timed, Lost, REDIS_TIMEOUT};
use super::pushes::{bounded, PushBuffer};
use super::reader::Reader;
use super::scripts::{
    bytes, placed, placed_all, Placed, EVENTS_PER_RUN, NEW_EPOCH_SCRIPT, POSITION_SCRIPT,
    POSITION_TTL_SECS, PUBLISH_SCRIPT,
};
use crate::stream::StreamPos;

/// `Some(primary)` when a `ROLE` reply says the server is a replica. An error (ROLE
/// renamed or not permitted on a managed Redis) or any other role is not refused.
fn replica_of(reply: &Value) -> Option<String> {
    let Value::Array(parts) = reply else {
        return None;
    };
    let role = parts.first().and_then(bytes)?;
    if role != b"slave" && role != b"replica" {
        return None;
    }
    let host = parts.get(1).and_then(bytes).unwrap_or_default();
    let port = match parts.get(2) {
        Some(Value::Int(p)) => p.to_string(),
        _ => String::new(),
    };
    Some(format!("{}:{port}", String::from_utf8_lossy(&host)))
}

/// Where Redis is.
pub enum Target {
    Standalone(redis::Client),
    /// Seed nodes of a Redis Cluster, and the CA to trust if they are `rediss://`.
    Cluster {
        seeds: Vec<String>,
        certs: redis::TlsCertificates,
    },
}

/// Script runs over requests ending at `ends`: consecutive requests share a run
/// while it stays within `per_run` events, and a request is never split (one
/// larger than `per_run` gets a run of its own). Yields `(start, end)` ranges.
fn runs(ends: &[usize], per_run: usize) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut run_start = 0;
    let mut prev_end = 0;
    for &end in ends {
        if end - run_start > per_run && prev_end > run_start {
            out.push((run_start, prev_end));
            run_start = prev_end;
        }
        prev_end = end;
    }
    if prev_end > run_start {
        out.push((run_start, prev_end));
    }
    out
}

/// An event that arrived on a session's channel.
pub struct Incoming {
    pub channel: String,
    pub payload: Vec<u8>,
}

pub enum Link {
    Standalone {
        publisher: MultiplexedConnection,
        /// What Redis pushes on `publisher` (it is subscribed too), bounded.
        pushes: PushBuffer,
        /// SHA1s of the scripts, loaded when the link was made: `EVALSHA` spares
        /// Redis the script's text and its hash on every event (≈ 16 % more events
        /// per second than `EVAL` with redis-benchmark here).
        publish_sha: String,
        position_sha: String,
        reader: Reader,
    },
    Cluster {
        conn: ClusterConnection,
        pushes: PushBuffer,
        reader: Reader,
    },
}

impl Link {
    /// Connects; messages shed because the bridge fell behind count into
    /// `shed_total`.
    pub async fn connect(target: &Target, shed_total: Arc<AtomicU64>) -> Result<Link, Lost> {
        let (sender, pushes) = bounded(shed_total);
        match target {
            Target::Standalone(client) => {
                let config = redis::AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(REDIS_TIMEOUT))
                    .set_response_timeout(Some(REDIS_TIMEOUT))
                    .set_push_sender(sender);
                let mut publisher =
                    timed(client.get_multiplexed_async_connection_with_config(&config)).await?;
                // A replica accepts the connection and subscriptions but no publish.
                if let Ok(role) =
                    timed(redis::cmd("ROLE").query_async::<Value>(&mut publisher)).await
                {
                    if let Some(primary) = replica_of(&role) {
                        // Said on every attempt (backoff-spaced): the run loop tells only
                        // the first loss, and this one lasts until someone acts.
                        let lost = Lost::Replica(primary);
                        tracing::warn!(error = %lost, "not ready: REDIS_URL should follow failover");
                        return Err(lost);
                    }
                }
                let load = |script: &'static str| {
                    let mut publisher = publisher.clone();
                    async move {
                        timed(
                            redis::cmd("SCRIPT")
                                .arg("LOAD")
                                .arg(script)
                                .query_async::<String>(&mut publisher),
                        )
                        .await
                    }
                };
                let publish_sha = load(PUBLISH_SCRIPT).await?;
                let position_sha = load(POSITION_SCRIPT).await?;
                let reads = redis::AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(REDIS_TIMEOUT))
                    .set_response_timeout(Some(REDIS_TIMEOUT));
                let reader = Reader::Standalone(
                    timed(client.get_multiplexed_async_connection_with_config(&reads)).await?,
                );
                Ok(Link::Standalone {
                    publisher,
                    pushes,
                    publish_sha,
                    position_sha,
                    reader,
                })
            }
            Target::Cluster { seeds, certs } => {
                let mut builder = redis::cluster::ClusterClientBuilder::new(seeds.clone())
                    .use_protocol(redis::ProtocolVersion::RESP3)
                    .push_sender(sender)
                    .connection_timeout(REDIS_TIMEOUT)
                    .response_timeout(REDIS_TIMEOUT);
                if seeds.iter().any(|s| s.starts_with("rediss://")) {
                    builder = builder.certs(certs.clone());
                }
                let client = builder.build()?;
                let conn = timed(client.get_async_connection()).await?;
                let reader = Reader::Cluster(timed(client.get_async_connection()).await?);
                Ok(Link::Cluster {
                    conn,
                    pushes,
                    reader,
                })
            }
        }
    }

    pub async fn subscribe(&mut self, sessions: &[String]) -> Result<(), Lost> {
        let channels: Vec<String> = sessions.iter().map(|s| channel_of(s)).collect();
        self.subscribe_channels(channels).await
    }

    /// Subscribes channels by name (sessions' or the reply channel).
    pub async fn subscribe_channels(&mut self, channels: Vec<String>) -> Result<(), Lost> {
        match self {
            Link::Standalone { publisher, .. } => timed(publisher.subscribe(channels)).await,
            // Sharded subscriptions must not cross slots: one channel per command,
            // sent together.
            Link::Cluster { conn, .. } => {
                let calls = channels.into_iter().map(|c| {
                    let mut conn = conn.clone();
                    async move { timed(conn.ssubscribe(c)).await }
                });
                futures_util::future::join_all(calls)
                    .await
                    .into_iter()
                    .collect()
            }
        }
    }

    /// Publishes raw messages (`?wait=delivered` receipts) on their channels.
    pub async fn publish_raw(&mut self, messages: &[(Box<str>, Vec<u8>)]) -> Result<(), Lost> {
        match self {
            Link::Standalone { publisher, .. } => {
                let mut pipe = redis::pipe();
                for (channel, payload) in messages {
                    pipe.cmd("PUBLISH").arg(&**channel).arg(payload).ignore();
                }
                timed(pipe.query_async::<()>(publisher)).await
            }
            Link::Cluster { conn, .. } => {
                let calls = messages.iter().map(|(channel, payload)| {
                    let mut conn = conn.clone();
                    let mut cmd = redis::cmd("SPUBLISH");
                    cmd.arg(&**channel).arg(payload);
                    async move { timed(cmd.query_async::<Value>(&mut conn)).await }
                });
                for r in futures_util::future::join_all(calls).await {
                    r?;
                }
                Ok(())
            }
        }
    }

    pub async fn unsubscribe(&mut self, sessions: &[String]) -> Result<(), Lost> {
        let channels: Vec<String> = sessions.iter().map(|s| channel_of(s)).collect();
        match self {
            Link::Standalone { publisher, .. } => timed(publisher.unsubscribe(channels)).await,
            Link::Cluster { conn, .. } => {
                let calls = channels.into_iter().map(|c| {
                    let mut conn = conn.clone();
                    async move { timed(conn.sunsubscribe(c)).await }
                });
                futures_util::future::join_all(calls)
                    .await
                    .into_iter()
                    .collect()
            }
        }
    }

    /// Places and publishes events, in order per session; one answer per event.
    /// `ends` closes each request's events (cumulative indexes into `events`): a
    /// request's events always go in one script run, so on a standalone Redis a
    /// request is placed whole or not at all.
    pub async fn publish(
        &mut self,
        events: &[(&OutgoingEvent, u64)],
        ends: &[usize],
        rules: &PublishRules,
    ) -> Result<Vec<Placed>, Lost> {
        // A Cluster would need the script loaded on every master: it gets the text.
        let (command, eval, script) = match self {
            Link::Standalone { publish_sha, .. } => ("PUBLISH", "EVALSHA", publish_sha.clone()),
            Link::Cluster { .. } => ("SPUBLISH", "EVAL", PUBLISH_SCRIPT.to_string()),
        };
        let run = |events: &[(&OutgoingEvent, u64)]| {
            let mut cmd = redis::cmd(eval);
            cmd.arg(&script).arg(3 * events.len());
            for (ev, _) in events {
                let id_key = match &ev.id {
                    Some(id) => dedupe_key(&ev.session, id),
                    None => position_key(&ev.session),
                };
                cmd.arg(position_key(&ev.session))
                    .arg(id_key)
                    .arg(history_key(&ev.session));
            }
            // One epoch candidate per run: only sessions Redis has none for use it.
            let epoch = events.first().map_or(1, |(_, e)| *e);
            cmd.arg(format!("{epoch:016x}"))
                .arg(rules.dedupe_secs.max(1))
                .arg(POSITION_TTL_SECS)
                .arg(rules.history_len)
                .arg(command);
            for (ev, _) in events {
                cmd.arg(channel_of(&ev.session))
                    .arg(&ev.head)
                    .arg(&ev.tail)
                    .arg(if ev.id.is_some() { "1" } else { "0" })
                    .arg(&ev.reply);
            }
            cmd
        };
        let replies: Vec<Value> = match self {
            Link::Standalone { publisher, .. } => {
                let mut pipe = redis::pipe();
                for (start, end) in runs(ends, EVENTS_PER_RUN) {
                    pipe.add_command(run(&events[start..end]));
                }
                timed(pipe.query_async::<Vec<Value>>(publisher)).await?
            }
            Link::Cluster { conn, .. } => {
                // One run per event (its keys share one slot). One multiplexed
                // connection per cluster node: commands for one session go down one
                // connection in the order they are first polled, which join_all does
                // in order.
                let calls = events.iter().map(|e| {
                    let mut conn = conn.clone();
                    let cmd = run(std::slice::from_ref(e));
                    async move { timed(cmd.query_async::<Value>(&mut conn)).await }
                });
                let mut out = Vec::with_capacity(events.len());
                for r in futures_util::future::join_all(calls).await {
                    out.push(r?);
                }
                out
            }
        };
        let mut placed = Vec::with_capacity(events.len());
        for v in &replies {
            placed_all(v, &mut placed).ok_or_else(bad_reply)?;
        }
        if placed.len() != events.len() {
            return Err(bad_reply());
        }
        Ok(placed)
    }

    /// The current position of each session (starting streams Redis has none for).
    pub async fn positions(
        &mut self,
        sessions: &[String],
        new_epoch: u64,
    ) -> Result<Vec<StreamPos>, Lost> {
        let (eval, script) = match self {
            Link::Standalone { position_sha, .. } => ("EVALSHA", position_sha.clone()),
            Link::Cluster { .. } => ("EVAL", POSITION_SCRIPT.to_string()),
        };
        let cmd_for = |session: &str| {
            let mut cmd = redis::cmd(eval);
            cmd.arg(&script)
                .arg(2)
                .arg(position_key(session))
                .arg(history_key(session))
                .arg(format!("{new_epoch:016x}"))
                .arg(POSITION_TTL_SECS);
            cmd
        };
        let replies: Vec<Value> = match self {
            Link::Standalone { publisher, .. } => {
                let mut pipe = redis::pipe();
                for s in sessions {
                    pipe.add_command(cmd_for(s));
                }
                timed(pipe.query_async::<Vec<Value>>(publisher)).await?
            }
            Link::Cluster { conn, .. } => {
                let calls = sessions.iter().map(|s| {
                    let mut conn = conn.clone();
                    let cmd = cmd_for(s);
                    async move { timed(cmd.query_async::<Value>(&mut conn)).await }
                });
                let mut out = Vec::with_capacity(sessions.len());
                for r in futures_util::future::join_all(calls).await {
                    out.push(r?);
                }
                out
            }
        };
        if replies.len() != sessions.len() {
            return Err(bad_reply());
        }
        replies
            .iter()
            .map(|v| match v {
                Value::Array(items) => placed(items).map(|p| p.pos).ok_or_else(bad_reply),
                _ => Err(bad_reply()),
            })
            .collect()
    }

    /// Moves `session` to `new_epoch` if its position is still `went_back` (behind
    /// `reached` in that epoch); returns where it stands after.
    pub async fn new_epoch(
        &mut self,
        session: &str,
        went_back: StreamPos,
        reached: u64,
        new_epoch: u64,
    ) -> Result<StreamPos, Lost> {
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(NEW_EPOCH_SCRIPT)
            .arg(2)
            .arg(position_key(session))
            .arg(history_key(session))
            .arg(format!("{:016x}", went_back.epoch))
            .arg(reached)
            .arg(format!("{new_epoch:016x}"))
            .arg(POSITION_TTL_SECS);
        let reply: Value = match self {
            Link::Standalone { publisher, .. } => timed(cmd.query_async(publisher)).await?,
            Link::Cluster { conn, .. } => timed(cmd.query_async(conn)).await?,
        };
        match &reply {
            Value::Array(items) => placed(items).map(|p| p.pos).ok_or_else(bad_reply),
            _ => Err(bad_reply()),
        }
    }

    /// The connection for history reads.
    pub fn reader(&self) -> &Reader {
        match self {
            Link::Standalone { reader, .. } | Link::Cluster { reader, .. } => reader,
        }
    }

    /// Runs single-key commands (any slot), all in flight together; answers in
    /// order. Standalone: one pipeline; Cluster: each to its slot's node.
    pub async fn run_each(&mut self, cmds: Vec<redis::Cmd>) -> Result<Vec<Value>, Lost> {
        if cmds.is_empty() {
            return Ok(Vec::new());
        }
        match self {
            Link::Standalone { publisher, .. } => {
                let mut pipe = redis::pipe();
                for c in cmds {
                    pipe.add_command(c);
                }
                timed(pipe.query_async::<Vec<Value>>(publisher)).await
            }
            Link::Cluster { conn, .. } => {
                let calls = cmds.into_iter().map(|c| {
                    let mut conn = conn.clone();
                    async move { timed(c.query_async::<Value>(&mut conn)).await }
                });
                futures_util::future::join_all(calls)
                    .await
                    .into_iter()
                    .collect()
            }
        }
    }

    /// `PUBLISH` (`SPUBLISH` on a Cluster) as a command for [`Link::run_each`].
    pub fn publish_cmd(&self, channel: &str, payload: &[u8]) -> redis::Cmd {
        let mut cmd = redis::cmd(match self {
            Link::Standalone { .. } => "PUBLISH",
            Link::Cluster { .. } => "SPUBLISH",
        });
        cmd.arg(channel).arg(payload);
        cmd
    }

    pub async fn ping(&mut self) -> Result<(), Lost> {
        match self {
            Link::Standalone { publisher, .. } => {
                timed(redis::cmd("PING").query_async::<Value>(publisher)).await?;
                Ok(())
            }
            Link::Cluster { conn, .. } => {
                timed(redis::cmd("PING").query_async::<Value>(conn)).await?;
                Ok(())
            }
        }
    }

    fn pushes(&mut self) -> &mut PushBuffer {
        match self {
            Link::Standalone { pushes, .. } | Link::Cluster { pushes, .. } => pushes,
        }
    }

    /// The next incoming event; `None` when the link is lost.
    pub async fn next(&mut self) -> Option<Incoming> {
        loop {
            let push = self.pushes().recv().await?;
            match Self::from_push(push) {
                Ok(Some(i)) => return Some(i),
                Ok(None) => continue,
                Err(()) => return None,
            }
        }
    }

    /// An incoming event that is already buffered: `Some(None)` when the link is
    /// lost, `None` when nothing is waiting.
    pub fn try_next(&mut self) -> Option<Option<Incoming>> {
        loop {
            match self.pushes().try_recv()? {
                Some(push) => match Self::from_push(push) {
                    Ok(Some(i)) => return Some(Some(i)),
                    Ok(None) => continue,
                    Err(()) => return Some(None),
                },
                None => return Some(None),
            }
        }
    }

    /// A sharded message as an event; `Err` for a lost connection; `Ok(None)` for
    /// pushes that carry no event (subscription confirmations).
    fn from_push(push: PushInfo) -> Result<Option<Incoming>, ()> {
        match push.kind {
            // The connection ended (a cluster client would resubscribe by itself,
            // but events may have been missed): treat it as a lost link so
            // sessions are settled against Redis.
            PushKind::Disconnection => Err(()),
            PushKind::SMessage | PushKind::Message => {
                let channel = push.data.first().and_then(bytes);
                let payload = push.data.get(1).and_then(bytes);
                match (channel, payload) {
                    (Some(c), Some(p)) => Ok(Some(Incoming {
                        channel: String::from_utf8_lossy(&c).into_owned(),
                        payload: p,
                    })),
                    _ => Ok(None),
                }
            }
            _ => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{replica_of, runs};
    use redis::Value;

    #[test]
    fn a_replica_s_role_names_its_primary_and_a_primary_s_is_accepted() {
        let bulk = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let replica = Value::Array(vec![
            bulk("slave"),
            bulk("10.0.0.5"),
            Value::Int(6379),
            bulk("connected"),
            Value::Int(14),
        ]);
        assert_eq!(replica_of(&replica).as_deref(), Some("10.0.0.5:6379"));
        let primary = Value::Array(vec![bulk("master"), Value::Int(14), Value::Array(vec![])]);
        assert_eq!(replica_of(&primary), None);
        // ROLE refused (renamed on a managed Redis): not a reason to stay unready.
        assert_eq!(replica_of(&Value::Nil), None);
    }

    #[test]
    fn requests_share_runs_up_to_the_limit_and_are_never_split() {
        // Requests of 100, 100, 100, 600 and 10 events, 256 a run.
        let ends = [100, 200, 300, 900, 910];
        assert_eq!(
            runs(&ends, 256),
            vec![(0, 200), (200, 300), (300, 900), (900, 910)]
        );
        assert_eq!(runs(&[5], 256), vec![(0, 5)]);
        assert_eq!(runs(&[], 256), Vec::<(usize, usize)>::new());
        assert_eq!(runs(&[256, 512], 256), vec![(0, 256), (256, 512)]);
    }
}
