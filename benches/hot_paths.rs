//! Micro-benchmarks of the per-request and per-event hot paths: JWT verification
//! (per handshake), publish-body parsing (per request), event-frame encoding (per
//! event, once for all its sockets) and `shard_for` (per event and per handshake).
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

criterion_group!(benches, jwt, publish_parse, frame_encode, routing);
criterion_main!(benches);
