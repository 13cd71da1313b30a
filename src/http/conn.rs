//! One accepted TCP connection until it upgrades or closes: reads request heads
//! and bodies under absolute deadlines, answers HTTP (keep-alive), and hands
//! upgrades to the shard.
//!
//! `http::route` decides from a parsed head what a request gets; this loop owns
//! the reading, the deadlines and the writing. The shard is reached only through
//! `ConnCtx`.

use std::io;
use std::pin::Pin;
use std::task::Poll;
use std::time::{Duration, Instant};

use futures_lite::{AsyncRead, AsyncWriteExt};
use glommio::net::TcpStream;

use crate::http::head::{find_head_end, parse_head, MAX_HEADERS};
use crate::http::receipts::receipts_body;
use crate::http::response::{response, Refusal};
use crate::http::route::{route, Action};
use crate::shard::ctx::{AcceptError, ConnCtx};

/// A client that does not take our response within this long is dropped.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug)]
enum ReadError {
    /// The peer closed or reset.
    Closed,
    TimedOut,
}

/// Reads whatever the socket has (at most `max` bytes) through the shard's scratch
/// buffer and appends it to `buf`, so a connection's buffer is exactly as large as
/// its request, failing at `deadline`.
async fn read_some(
    ctx: &ConnCtx,
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    deadline: Instant,
    max: usize,
) -> Result<usize, ReadError> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(ReadError::TimedOut);
    }
    let _ = stream.set_read_timeout(Some(left.max(Duration::from_millis(1))));
    let r = futures_lite::future::poll_fn(|cx| {
        let mut scratch = ctx.scratch();
        let want = max.clamp(1, scratch.len());
        match Pin::new(&mut *stream).poll_read(cx, &mut scratch[..want]) {
            Poll::Ready(Ok(n)) => {
                buf.extend_from_slice(&scratch[..n]);
                Poll::Ready(Ok(n))
            }
            other => other,
        }
    })
    .await;
    match r {
        Ok(0) => Err(ReadError::Closed),
        Ok(n) => Ok(n),
        Err(e) if e.kind() == io::ErrorKind::TimedOut => Err(ReadError::TimedOut),
        Err(_) => Err(ReadError::Closed),
    }
}

/// Serves one connection. `admin` marks the admin listener.
pub async fn serve(ctx: ConnCtx, mut stream: TcpStream, admin: bool) {
    let _ = stream.set_write_timeout(Some(WRITE_TIMEOUT));
    let peer = stream.peer_addr().ok().map(|a| a.ip());
    let mut buf: Vec<u8> = Vec::new();
    loop {
        // Read per request, so a SIGHUP applies from the next request on.
        let limits = ctx.settings().live.limits.clone();
        // Find a whole head, scanning only new bytes.
        let deadline = Instant::now() + limits.handshake_timeout;
        let mut scanned = 0;
        let head_len = loop {
            if let Some(end) = find_head_end(&buf, scanned) {
                if end <= limits.max_head_bytes {
                    break end;
                }
            }
            scanned = buf.len();
            if buf.len() >= limits.max_head_bytes {
                let r = Refusal::new(431, "request head larger than the limit");
                ctx.stats().upgrade_refused(431);
                let _ = stream.write_all(&r.to_response(false)).await;
                return;
            }
            let chunk = (limits.max_head_bytes + 4).saturating_sub(buf.len());
            match read_some(&ctx, &mut stream, &mut buf, deadline, chunk).await {
                Ok(_) => {}
                Err(ReadError::Closed) => return,
                Err(ReadError::TimedOut) => {
                    // The contract's rule, idle keep-alive connections included:
                    // the deadline runs from the end of the previous request.
                    let r = Refusal::new(408, "request head not received in time");
                    let _ = stream.write_all(&r.to_response(false)).await;
                    return;
                }
            }
        };
        let action = {
            let mut storage = [httparse::EMPTY_HEADER; MAX_HEADERS];
            match parse_head(&buf[..head_len], &mut storage) {
                Err(e) => Action::Refuse {
                    refusal: Refusal::new(e.status(), e.to_string()),
                    keep_alive: false,
                },
                Ok(head) => route(&ctx, &head, admin, peer, buf.len() - head_len),
            }
        };
        match action {
            Action::Respond { bytes, keep_alive } => {
                buf.drain(..head_len);
                if stream.write_all(&bytes).await.is_err() || !keep_alive {
                    return;
                }
            }
            Action::Refuse {
                refusal,
                keep_alive,
            } => {
                buf.drain(..head_len);
                if stream
                    .write_all(&refusal.to_response(keep_alive))
                    .await
                    .is_err()
                    || !keep_alive
                {
                    return;
                }
            }
            Action::RefuseUpgrade(refusal) => {
                ctx.stats().upgrade_refused(refusal.status);
                let _ = stream.write_all(&refusal.to_response(false)).await;
                return;
            }
            Action::Upgrade(upgrade, permit) => {
                if let Err(refused) = ctx.place_socket(stream, upgrade, permit) {
                    let (mut stream, refusal) = *refused;
                    ctx.stats().upgrade_refused(refusal.status);
                    let _ = stream.write_all(&refusal.to_response(false)).await;
                }
                return;
            }
            Action::Publish {
                key,
                len,
                keep_alive,
                expect_continue,
                wait_delivered,
                tenant,
            } => {
                buf.drain(..head_len);
                let body = match read_body(
                    &ctx,
                    &mut stream,
                    &mut buf,
                    len,
                    expect_continue,
                    limits.body_timeout,
                )
                .await
                {
                    Ok(body) => body,
                    Err(ReadError::Closed) => return,
                    Err(ReadError::TimedOut) => {
                        ctx.stats().publish_error(408);
                        let r = Refusal::new(408, "request body not received in time");
                        let _ = stream.write_all(&r.to_response(false)).await;
                        return;
                    }
                };
                let reply = publish(
                    &ctx,
                    PublishRequest {
                        key,
                        tenant: tenant.as_deref(),
                        max_batch: limits.max_batch_events,
                        keep_alive,
                        wait_delivered,
                    },
                    body,
                )
                .await;
                if stream.write_all(&reply).await.is_err() || !keep_alive {
                    return;
                }
            }
            Action::Presence { query, keep_alive } => {
                buf.drain(..head_len);
                let bytes = match ctx.presence(query).await {
                    Ok(body) => response(200, "application/json", &body, "", keep_alive),
                    Err(_) => {
                        Refusal::unavailable("presence is not available right now; retry later")
                            .to_response(keep_alive)
                    }
                };
                if stream.write_all(&bytes).await.is_err() || !keep_alive {
                    return;
                }
            }
            Action::Metrics { keep_alive } => {
                buf.drain(..head_len);
                let snapshot = ctx.node_snapshot().await;
                let body = snapshot.render_prometheus();
                let bytes = response(200, "text/plain; version=0.0.4", &body, "", keep_alive);
                if stream.write_all(&bytes).await.is_err() || !keep_alive {
                    return;
                }
            }
            Action::Latency { hgrm, keep_alive } => {
                buf.drain(..head_len);
                let snapshot = ctx.node_snapshot().await;
                let bytes = if hgrm {
                    response(
                        200,
                        "text/plain",
                        snapshot.latency_all().hgrm().as_bytes(),
                        "",
                        keep_alive,
                    )
                } else {
                    let body = snapshot.latency_all().summary_json();
                    response(200, "application/json", body.as_bytes(), "", keep_alive)
                };
                if stream.write_all(&bytes).await.is_err() || !keep_alive {
                    return;
                }
            }
        }
        if ctx.is_draining() {
            return;
        }
    }
}

/// Reads a body of `len` bytes: first what is already buffered, then the socket,
/// all before `timeout` runs out. Bytes past the body stay in `buf`.
async fn read_body(
    ctx: &ConnCtx,
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    len: usize,
    expect_continue: bool,
    timeout: Duration,
) -> Result<Vec<u8>, ReadError> {
    let deadline = Instant::now() + timeout;
    let have = buf.len().min(len);
    // Grown as bytes arrive: a declared length costs nothing until it is sent, so
    // trickled bodies cannot reserve a megabyte each.
    let mut body = Vec::with_capacity(len.min(BODY_CHUNK));
    body.extend_from_slice(&buf[..have]);
    buf.drain(..have);
    if body.len() < len
        && expect_continue
        && stream
            .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
            .await
            .is_err()
    {
        return Err(ReadError::Closed);
    }
    while body.len() < len {
        let want = len - body.len();
        read_some(ctx, stream, &mut body, deadline, want).await?;
    }
    Ok(body)
}

/// What the head of a `POST /events` decided, for its body.
struct PublishRequest<'a> {
    /// Which API key authorized it (the publish rate is per key).
    key: usize,
    tenant: Option<&'a str>,
    max_batch: usize,
    keep_alive: bool,
    wait_delivered: bool,
}

/// Most of a body reserved before its bytes arrive.
const BODY_CHUNK: usize = 64 * 1024;

async fn publish(ctx: &ConnCtx, req: PublishRequest<'_>, body: Vec<u8>) -> Vec<u8> {
    let PublishRequest {
        key,
        tenant,
        max_batch,
        keep_alive,
        wait_delivered,
    } = req;
    let parsed = ctx.parse_publish(body, max_batch);
    let limiters = &ctx.limiters();
    let result = match parsed {
        Ok(batch) if !limiters.allow_events(key, batch.events.len()) => {
            ctx.stats().rate_limited("publish");
            Err(Refusal::rate_limited("publish rate limit for this API key"))
        }
        Ok(batch)
            if tenant.is_some_and(|t| !limiters.allow_tenant_events(t, batch.events.len())) =>
        {
            ctx.stats().rate_limited("tenant_publish");
            Err(Refusal::rate_limited("publish rate limit for this tenant"))
        }
        Ok(batch) => match ctx.publish(batch, wait_delivered).await {
            Ok(mut published) => Ok(receipts_body(&mut published, ctx.node_tag())),
            Err(e) => Err(accept_refusal(e)),
        },
        Err(e) => Err(Refusal::new(e.status, e.message)),
    };
    match result {
        Ok(receipts) => response(202, "application/json", &receipts, "", keep_alive),
        Err(refusal) => {
            match refusal.metric_reason {
                Some(reason) => ctx.stats().publish_error_reason(reason),
                None => ctx.stats().publish_error(refusal.status),
            }
            refusal.to_response(keep_alive)
        }
    }
}

/// The status a publish the shard did not accept gets: always 503 with
/// `Retry-After`, counted under `reason="redis"` when Redis is to blame.
fn accept_refusal(e: AcceptError) -> Refusal {
    match e {
        AcceptError::RedisUnavailable => Refusal::redis_unavailable(),
        AcceptError::Overloaded => Refusal::unavailable("the relay is overloaded; retry later"),
        AcceptError::ReceiptsLate => {
            Refusal::unavailable("the relay is overloaded; retry with the same event ids")
        }
    }
}
