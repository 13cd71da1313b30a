//! What a request gets, decided from its parsed head: a response, a refusal, an
//! accepted subscription (any transport) holding its connection slots, a publish
//! to read the body of, or an operator endpoint.
//!
//! Not pure: it charges the rate limiters and, for an accepted subscription,
//! takes its `SocketPermit`; it does no I/O (the connection loop, `http::conn`,
//! does). The shard is reached only through `ConnCtx`.

use crate::auth::api_key_index;
use crate::clock::unix_now;
use crate::http::head::{BodyFraming, RequestHead};
use crate::http::response::{response, Refusal};
use crate::limiter::{SlotRefusal, SocketPermit};
use crate::shard::ctx::ConnCtx;
use crate::shard::Settings;
use crate::subscribe::Transport;
use crate::ws::upgrade::{decide, AcceptedUpgrade};

/// What to do with a parsed request. Owns everything it needs, so the head (which
/// borrows the read buffer) can be dropped before any await.
pub(super) enum Action {
    Respond {
        bytes: Vec<u8>,
        keep_alive: bool,
    },
    Refuse {
        refusal: Refusal,
        keep_alive: bool,
    },
    RefuseUpgrade(Refusal),
    /// An accepted upgrade, holding its connection slots.
    Upgrade(AcceptedUpgrade, SocketPermit),
    Publish {
        /// Which API key authorized it (the publish rate is per key).
        key: usize,
        len: usize,
        keep_alive: bool,
        expect_continue: bool,
        /// `?wait=delivered`: answer after the fan-out, with its counts.
        wait_delivered: bool,
        /// The tenant named by `X-Relay-Tenant`, charged for the events.
        tenant: Option<String>,
    },
    /// `GET /sessions/{session}/presence`, decided: ask the session's owner.
    Presence {
        query: crate::router::PresenceQuery,
        keep_alive: bool,
    },
    Metrics {
        keep_alive: bool,
    },
    Latency {
        hgrm: bool,
        keep_alive: bool,
    },
}

/// Decides what a request asks for. No I/O; it reads the settings and the
/// clock, and charges the limiters.
pub(super) fn route(
    ctx: &ConnCtx,
    head: &RequestHead<'_, '_>,
    admin: bool,
    peer: Option<std::net::IpAddr>,
    buffered_after: usize,
) -> Action {
    let keep_alive = head.keep_alive();
    let ops_here = admin || ctx.ops_on_public_port();
    match head.path {
        "/ws" if !admin => route_subscriber(ctx, head, peer, buffered_after, Transport::Ws),
        "/sse" | "/poll" if !admin && head.method == "OPTIONS" => {
            let settings = ctx.settings();
            match crate::sse::request::preflight(head, &settings.live.origins, keep_alive) {
                Ok(bytes) => Action::Respond { bytes, keep_alive },
                Err(refusal) => Action::Refuse {
                    refusal,
                    keep_alive,
                },
            }
        }
        "/sse" if !admin => route_subscriber(ctx, head, peer, buffered_after, Transport::Sse),
        "/poll" if !admin => route_subscriber(ctx, head, peer, buffered_after, Transport::Poll),
        "/events" if !admin => route_publish(ctx, head, keep_alive),
        path if !admin && crate::http::presence::session_in(path).is_some() => {
            let session = crate::http::presence::session_in(path).unwrap_or_default();
            match crate::http::presence::decide(head, session, &ctx.settings()) {
                Ok(query) => Action::Presence { query, keep_alive },
                Err(refusal) => Action::Refuse {
                    refusal,
                    keep_alive,
                },
            }
        }
        "/healthz" => Action::Respond {
            bytes: response(
                200,
                "application/json",
                br#"{"status":"ok"}"#,
                "",
                keep_alive,
            ),
            keep_alive,
        },
        "/readyz" => {
            if ctx.is_unready() {
                Action::Refuse {
                    refusal: Refusal::unavailable("node draining"),
                    keep_alive,
                }
            } else if ctx.redis_down() {
                Action::Refuse {
                    refusal: Refusal::unavailable("Redis is unreachable"),
                    keep_alive,
                }
            } else {
                Action::Respond {
                    bytes: response(
                        200,
                        "application/json",
                        br#"{"status":"ready"}"#,
                        "",
                        keep_alive,
                    ),
                    keep_alive,
                }
            }
        }
        "/metrics" if ops_here => Action::Metrics { keep_alive },
        "/latency" if ops_here => Action::Latency {
            hgrm: head.query_param("format") == Some("hgrm"),
            keep_alive,
        },
        _ => Action::Refuse {
            refusal: Refusal::new(404, format!("no such path: {}", head.path)),
            keep_alive,
        },
    }
}

/// `GET /ws`, `GET /sse`, `GET /poll`: each transport's own decision, then what
/// every subscription goes through (`admit_subscriber`). The subscriber is the
/// session's shard's, handed over like a socket.
fn route_subscriber(
    ctx: &ConnCtx,
    head: &RequestHead<'_, '_>,
    peer: Option<std::net::IpAddr>,
    buffered_after: usize,
    transport: Transport,
) -> Action {
    admit_subscriber(ctx, head, peer, buffered_after, transport, |settings| {
        let (verifier, origins, now) = (&settings.verifier, &settings.live.origins, unix_now());
        match transport {
            Transport::Ws => decide(head, verifier, origins, now),
            Transport::Sse => crate::sse::request::decide(
                head,
                verifier,
                origins,
                now,
                crate::sse::request::RETRY_MS,
            ),
            Transport::Poll => crate::poll::decide(head, verifier, origins, now),
        }
    })
}

/// What every subscription request goes through, whatever its transport: the
/// operator's `RELAY_TRANSPORTS` switch, the connect rate, the transport's own
/// decision, draining, the tenant's and the node's connection slots.
fn admit_subscriber(
    ctx: &ConnCtx,
    head: &RequestHead<'_, '_>,
    peer: Option<std::net::IpAddr>,
    buffered_after: usize,
    transport: Transport,
    decide: impl FnOnce(&Settings) -> Result<AcceptedUpgrade, Refusal>,
) -> Action {
    let settings = ctx.settings();
    let offered = settings.live.transports;
    if !offered.allows(transport) {
        return Action::RefuseUpgrade(Refusal {
            headers: offered.header(),
            ..Refusal::unavailable(
                "this transport is switched off here; X-Relay-Transports names the ones offered",
            )
        });
    }
    let limiters = &ctx.limiters();
    if let Some(peer) = peer {
        let forwarded = head.all("x-forwarded-for").last();
        if !limiters.allow_connect(limiters.client_ip(peer, forwarded)) {
            ctx.stats().rate_limited("connect");
            return Action::RefuseUpgrade(Refusal::rate_limited(
                "too many connections from this address",
            ));
        }
    }
    let upgrade = match decide(&settings) {
        Ok(u) => u,
        Err(refusal) => return Action::RefuseUpgrade(refusal),
    };
    if buffered_after > 0 {
        return Action::RefuseUpgrade(Refusal::bad_request(
            "data sent before the handshake completed",
        ));
    }
    if ctx.is_draining() {
        return Action::RefuseUpgrade(Refusal::unavailable(
            "node draining; reconnect to another node",
        ));
    }
    let tenant = limiters
        .tenant_claim()
        .and_then(|claim| upgrade.claims.claim_text(&claim));
    match limiters.admit_socket(tenant) {
        Ok(permit) => Action::Upgrade(upgrade, permit),
        Err(SlotRefusal::Tenant) => {
            ctx.stats().rate_limited("tenant");
            Action::RefuseUpgrade(Refusal::rate_limited("too many sockets for this tenant"))
        }
        Err(SlotRefusal::NodeFull) => {
            Action::RefuseUpgrade(Refusal::unavailable("node at its connection limit"))
        }
    }
}

fn route_publish(ctx: &ConnCtx, head: &RequestHead<'_, '_>, keep_alive: bool) -> Action {
    let refuse = |refusal: Refusal, keep_alive: bool| {
        ctx.stats().publish_error(refusal.status);
        Action::Refuse {
            refusal,
            keep_alive,
        }
    };
    if head.method != "POST" {
        return refuse(Refusal::method_not_allowed("Allow: POST\r\n"), keep_alive);
    }
    // Until the body is read the connection cannot be reused, so refusals before
    // that close it.
    let presented = crate::http::presence::presented_key(head);
    let settings = ctx.settings();
    let Some(key) = api_key_index(&settings.live.api_keys, presented.as_bytes()) else {
        return refuse(Refusal::unauthorized_key(), false);
    };
    if ctx.is_draining() {
        return refuse(
            Refusal::unavailable("node draining; publish to another node"),
            false,
        );
    }
    let json = head.all("content-type").next().is_some_and(|ct| {
        ct.split(';')
            .next()
            .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
    });
    if !json {
        return refuse(
            Refusal::new(415, "Content-Type must be application/json"),
            false,
        );
    }
    let len = match head.body_framing() {
        Err(e) => return refuse(Refusal::new(400, e.to_string()), false),
        Ok(BodyFraming::TransferEncoded) => {
            return refuse(
                Refusal::new(
                    501,
                    "Transfer-Encoding is not supported; send Content-Length",
                ),
                false,
            )
        }
        Ok(BodyFraming::None) => {
            return refuse(Refusal::new(411, "Content-Length is required"), false)
        }
        Ok(BodyFraming::Length(n)) => n,
    };
    let max = settings.live.limits.max_body_bytes;
    if len > max as u64 {
        return refuse(
            Refusal::new(
                413,
                format!("body of {len} bytes is over the limit of {max}"),
            ),
            false,
        );
    }
    let tenant = match head.one("x-relay-tenant") {
        Ok(None) => None,
        Ok(Some(t)) if crate::auth::is_valid_session(t.trim()) => Some(t.trim().to_string()),
        _ => {
            return refuse(
                Refusal::new(
                    400,
                    "X-Relay-Tenant must be one header of 1 to 128 of A-Z a-z 0-9 . _ : -",
                ),
                false,
            )
        }
    };
    let wait_delivered = match head.query_param("wait") {
        None => false,
        Some("delivered") => true,
        Some(_) => {
            return refuse(
                Refusal::new(400, "wait must be \"delivered\" when given"),
                false,
            )
        }
    };
    Action::Publish {
        key,
        len: len as usize,
        keep_alive,
        expect_continue: head.has_token("expect", "100-continue"),
        wait_delivered,
        tenant,
    }
}
