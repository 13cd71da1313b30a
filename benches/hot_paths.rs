//! Micro-benchmarks of the per-request and per-event hot paths: JWT verification
//! (per handshake), publish-body parsing (per request), event-frame encoding (per
//! event, once for all its sockets), `shard_for` (per event and per handshake), and
//! a socket's close and join in sessions of 100 and 10,000 sockets (per churn).
//!
//! `cargo bench --bench hot_paths`; figures go to docs/benchmarks.md.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use relay::auth::{mint_token, JwtVerifier};
use relay::config::{JwtRules, Secret};
use relay::http::publish::PublishParser;
use relay::router::shard_for;
use relay::stream::StreamPos;
use relay::ws::frame::{encode_event, EventParts};

fn jwt(c: &mut Criterion) {
    let secret = Secret::new("0123456789abcdef0123456789abcdef");
    let now = 1_800_000_000;
    let token = mint_token(
        &secret,
        "tenant-42:issue-1234",
        Some("user-7"),
        Duration::from_secs(900),
        now,
    )
    .expect("mint");
    let verifier = JwtVerifier::new(&[secret], &JwtRules::default());
    c.bench_function("jwt_verify_hs256", |b| {
        b.iter(|| verifier.verify(black_box(&token), now).expect("valid"))
    });
}

fn event_json(session: &str, data_bytes: usize) -> String {
    format!(
        r#"{{"session":"{session}","event":"issue.updated","id":"evt-1","data":{{"pad":"{}"}}}}"#,
        "x".repeat(data_bytes.saturating_sub(10))
    )
}

fn publish_parse(c: &mut Criterion) {
    let mut group = c.benchmark_group("publish_parse");
    let single = event_json("s1", 100).into_bytes();
    group.throughput(Throughput::Elements(1));
    group.bench_function("single_100B", |b| {
        let mut parser = PublishParser::default();
        b.iter(|| {
            parser
                .parse(black_box(single.clone()), 1000)
                .expect("valid")
        })
    });
    let events: Vec<String> = (0..100)
        .map(|i| event_json(&format!("s{i}"), 100))
        .collect();
    let batch = format!(r#"{{"events":[{}]}}"#, events.join(",")).into_bytes();
    group.throughput(Throughput::Elements(100));
    group.bench_function("batch_100x100B", |b| {
        let mut parser = PublishParser::default();
        b.iter(|| parser.parse(black_box(batch.clone()), 1000).expect("valid"))
    });
    group.finish();
}

fn frame_encode(c: &mut Criterion) {
    let data = format!(r#"{{"pad":"{}"}}"#, "x".repeat(90));
    let at = Instant::now();
    c.bench_function("frame_encode_100B", |b| {
        b.iter(|| {
            encode_event(
                black_box(&EventParts {
                    session: "tenant-42:issue-1234",
                    pos: StreamPos {
                        epoch: 0x1234_5678_9abc_def0,
                        seq: 123_456,
                    },
                    event: br#""issue.updated""#,
                    id: Some(br#""evt-1""#),
                    generated_id: "",
                    data: data.as_bytes(),
                }),
                at,
            )
        })
    });
}

fn routing(c: &mut Criterion) {
    c.bench_function("shard_for", |b| {
        b.iter(|| shard_for(black_box("tenant-42:issue-1234"), black_box(2)))
    });
}

/// One socket of a session leaving and another joining, with the session holding
/// `n` sockets: the cost of churn should not depend on `n`.
fn churn(c: &mut Criterion) {
    use relay::shard::registry::{mono_ms, PendingHello, Registry, SocketState};
    use relay::subscribe::Transport;
    use std::rc::Rc;
    let mut group = c.benchmark_group("registry_churn");
    for n in [100u64, 10_000] {
        let mut r = Registry::default();
        let session = r.intern("big");
        let join = |r: &mut Registry, id: u64| {
            let s = Rc::new(SocketState::new(
                id,
                session.clone(),
                Transport::Ws,
                0,
                mono_ms(),
            ));
            r.add_pending(PendingHello {
                socket: s.clone(),
                response: Box::new([]),
                conn_id: "c".into(),
                since: None,
                fetching: false,
            });
            for h in r.take_pending("big", Some(id)) {
                r.welcome(h.socket);
            }
            s
        };
        let mut live: std::collections::VecDeque<Rc<SocketState>> =
            (0..n).map(|id| join(&mut r, id)).collect();
        let mut next = n;
        group.bench_function(format!("close_and_join_in_{n}"), |b| {
            b.iter(|| {
                // The oldest leaves (anywhere in the list after earlier swaps).
                if let Some(s) = live.pop_front() {
                    black_box(r.remove(&s));
                }
                live.push_back(join(&mut r, next));
                next += 1;
            })
        });
    }
    group.finish();
}

criterion_group!(benches, jwt, publish_parse, frame_encode, routing, churn);
criterion_main!(benches);
