//! One connected period to Redis, standalone or Cluster, behind one interface.
//!
//! - Standalone: a multiplexed connection for `PUBLISH` and `PING`, and a pub/sub
//!   connection for `SUBSCRIBE` and incoming messages.
//! - Cluster: one cluster connection (RESP3) using sharded pub/sub: `SPUBLISH` and
//!   `SSUBSCRIBE` go to the shard that owns the channel's slot, so fan-out spreads
//!   over the cluster instead of being broadcast to every node of it.
//!
//! A link is used until anything fails; then it is dropped whole and a new one is
//! made (the bridge resubscribes and resyncs).

use std::time::Duration;

use futures_util::{FutureExt, StreamExt};
use redis::aio::{MultiplexedConnection, PubSubSink, PubSubStream};
use redis::cluster_async::ClusterConnection;
use redis::{PushInfo, PushKind, Value};
use tokio::sync::mpsc::UnboundedReceiver;

use super::channel_of;

/// A connect, subscribe or publish call that takes longer is a failure.
pub const REDIS_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a link ended.
#[derive(Debug, thiserror::Error)]
pub enum Lost {
    #[error("redis error: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("redis did not answer within {REDIS_TIMEOUT:?}")]
    Timeout,
    #[error("the connection to redis closed")]
    Closed,
}

pub async fn timed<T>(
    f: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> Result<T, Lost> {
    match tokio::time::timeout(REDIS_TIMEOUT, f).await {
        Ok(r) => Ok(r?),
        Err(_) => Err(Lost::Timeout),
    }
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

/// An event that arrived on a session's channel.
pub struct Incoming {
    pub channel: String,
    pub payload: Vec<u8>,
}

pub enum Link {
    Standalone {
        publisher: MultiplexedConnection,
        sink: PubSubSink,
        stream: PubSubStream,
    },
    Cluster {
        conn: ClusterConnection,
        pushes: UnboundedReceiver<PushInfo>,
    },
}

fn bytes(v: &Value) -> Option<Vec<u8>> {
    match v {
        Value::BulkString(b) => Some(b.clone()),
        Value::SimpleString(s) => Some(s.clone().into_bytes()),
        _ => None,
    }
}

impl Link {
    pub async fn connect(target: &Target) -> Result<Link, Lost> {
        match target {
            Target::Standalone(client) => {
                let config = redis::AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(REDIS_TIMEOUT))
                    .set_response_timeout(Some(REDIS_TIMEOUT));
                let publisher =
                    timed(client.get_multiplexed_async_connection_with_config(&config)).await?;
                let (sink, stream) = timed(client.get_async_pubsub()).await?.split();
                Ok(Link::Standalone {
                    publisher,
                    sink,
                    stream,
                })
            }
            Target::Cluster { seeds, certs } => {
                let (tx, pushes) = tokio::sync::mpsc::unbounded_channel();
                let mut builder = redis::cluster::ClusterClientBuilder::new(seeds.clone())
                    .use_protocol(redis::ProtocolVersion::RESP3)
                    .push_sender(tx)
                    .connection_timeout(REDIS_TIMEOUT)
                    .response_timeout(REDIS_TIMEOUT);
                if seeds.iter().any(|s| s.starts_with("rediss://")) {
                    builder = builder.certs(certs.clone());
                }
                let client = builder.build()?;
                let conn = timed(client.get_async_connection()).await?;
                Ok(Link::Cluster { conn, pushes })
            }
        }
    }

    pub async fn subscribe(&mut self, sessions: &[String]) -> Result<(), Lost> {
        let channels: Vec<String> = sessions.iter().map(|s| channel_of(s)).collect();
        match self {
            Link::Standalone { sink, .. } => timed(sink.subscribe(channels)).await,
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

    pub async fn unsubscribe(&mut self, sessions: &[String]) -> Result<(), Lost> {
        let channels: Vec<String> = sessions.iter().map(|s| channel_of(s)).collect();
        match self {
            Link::Standalone { sink, .. } => timed(sink.unsubscribe(channels)).await,
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

    /// Publishes `(session, payload)` pairs, in order per session.
    pub async fn publish(&mut self, events: &[(&str, &[u8])]) -> Result<(), Lost> {
        match self {
            Link::Standalone { publisher, .. } => {
                let mut pipe = redis::pipe();
                for (session, payload) in events {
                    pipe.cmd("PUBLISH")
                        .arg(channel_of(session))
                        .arg(*payload)
                        .ignore();
                }
                timed(pipe.query_async::<()>(publisher)).await
            }
            Link::Cluster { conn, .. } => {
                // One multiplexed connection per cluster node: commands for one
                // channel go down one connection in the order they are first polled,
                // which join_all does in order.
                let calls = events.iter().map(|(session, payload)| {
                    let mut conn = conn.clone();
                    let cmd = redis::cmd("SPUBLISH")
                        .arg(channel_of(session))
                        .arg(*payload)
                        .to_owned();
                    async move { timed(cmd.query_async::<Value>(&mut conn)).await }
                });
                for r in futures_util::future::join_all(calls).await {
                    r?;
                }
                Ok(())
            }
        }
    }

    pub async fn ping(&mut self) -> Result<(), Lost> {
        match self {
            Link::Standalone {
                publisher, sink, ..
            } => {
                timed(redis::cmd("PING").query_async::<Value>(publisher)).await?;
                // In subscribed mode PING answers ["pong", ""]: any answer will do.
                timed(sink.ping::<Value>()).await?;
                Ok(())
            }
            Link::Cluster { conn, .. } => {
                timed(redis::cmd("PING").query_async::<Value>(conn)).await?;
                Ok(())
            }
        }
    }

    /// The next incoming event; `None` when the link is lost.
    pub async fn next(&mut self) -> Option<Incoming> {
        match self {
            Link::Standalone { stream, .. } => stream.next().await.map(|m| Incoming {
                channel: m.get_channel_name().to_string(),
                payload: m.get_payload_bytes().to_vec(),
            }),
            Link::Cluster { pushes, .. } => loop {
                let push = pushes.recv().await?;
                match Self::from_push(push) {
                    Ok(Some(i)) => return Some(i),
                    Ok(None) => continue,
                    Err(()) => return None,
                }
            },
        }
    }

    /// An incoming event that is already buffered: `Some(None)` when the link is
    /// lost, `None` when nothing is waiting.
    pub fn try_next(&mut self) -> Option<Option<Incoming>> {
        match self {
            Link::Standalone { stream, .. } => stream.next().now_or_never().map(|m| {
                m.map(|m| Incoming {
                    channel: m.get_channel_name().to_string(),
                    payload: m.get_payload_bytes().to_vec(),
                })
            }),
            Link::Cluster { pushes, .. } => loop {
                match pushes.try_recv() {
                    Ok(push) => match Self::from_push(push) {
                        Ok(Some(i)) => return Some(Some(i)),
                        Ok(None) => continue,
                        Err(()) => return Some(None),
                    },
                    Err(tokio::sync::mpsc::error::TryRecvError::Empty) => return None,
                    Err(tokio::sync::mpsc::error::TryRecvError::Disconnected) => return Some(None),
                }
            },
        }
    }

    /// A sharded message as an event; `Err` for a lost connection; `Ok(None)` for
    /// pushes that carry no event (subscription confirmations).
    fn from_push(push: PushInfo) -> Result<Option<Incoming>, ()> {
        match push.kind {
            // The cluster client would resubscribe by itself, but events may have
            // been missed: treat it as a lost link so sessions are resynced.
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
