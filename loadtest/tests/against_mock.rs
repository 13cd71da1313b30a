//! The load generator against a mock node (tests/mock_relay): loss accounting, histograms,
//! slow-consumer detection, `--procs`, JSON output, and the loopback refusal.

mod mock_relay;

use loadtest::scenario;
use loadtest::{run, RunOptions};

fn opts() -> RunOptions {
    RunOptions {
        secret: Some(mock_relay::SECRET.into()),
        api_key: Some(mock_relay::API_KEY.into()),
        procs: 1,
        threads: Some(2),
        ..RunOptions::default()
    }
}

#[test]
fn fanout_against_mock_loses_nothing_and_fills_the_histogram() {
    let mock = mock_relay::start(1 << 20);
    let scn = scenario::from_str(
        &format!(
            "kind = \"fanout\"\nurl = \"{}\"\nsessions = 5\nsockets_per_session = 4\nrate = 400\nduration = \"1s\"\nbatch = 2\n",
            mock.url()
        ),
        &[],
    )
    .expect("scenario");
    let r = run(&scn, &opts()).expect("run");
    assert!(r.passed, "{:?} {:?}", r.failures, r.errors);
    assert_eq!(r.sockets_connected, 20);
    assert_eq!(r.events_accepted, 400);
    assert_eq!(r.lost, 0);
    assert_eq!(r.deliveries, 400 / 5 * 20);
    assert_eq!(r.latency_ms.count, r.deliveries);
    assert!(
        r.latency_ms.p50 > 0.0 && r.latency_ms.max < 1000.0,
        "{:?}",
        r.latency_ms
    );
}

#[test]
fn slow_consumers_are_seen_closed_with_4008() {
    // The slow socket is sent 12 MB, far beyond the 1 MiB queue plus kernel buffers; the
    // healthy ones keep up with 1 MiB of slack even in a debug build on a busy machine.
    let mock = mock_relay::start(1 << 20);
    let scn = scenario::from_str(
        &format!(
            "kind = \"slow-consumers\"\nurl = \"{}\"\nsessions = 1\nsockets_per_session = 5\nslow_percent = 20\nrate = 1000\nevent_bytes = 4000\nduration = \"3s\"\ndrain = \"1s\"\n",
            mock.url()
        ),
        &[],
    )
    .expect("scenario");
    let r = run(&scn, &opts()).expect("run");
    assert_eq!(r.slow_sockets, 1);
    assert_eq!(r.slow_closed_4008, 1, "{:?}", r.errors);
    assert_eq!(r.close_codes.get("4008"), Some(&1), "{:?}", r.errors);
    assert_eq!(r.lost, 0);
    assert!(r.passed, "{:?}", r.failures);
}

#[test]
fn wrong_secret_is_counted_as_handshake_401() {
    let mock = mock_relay::start(1 << 20);
    let scn = scenario::from_str(
        &format!(
            "kind = \"connect-storm\"\nurl = \"{}\"\nsessions = 2\nsockets_per_session = 3\n",
            mock.url()
        ),
        &[],
    )
    .expect("scenario");
    let mut o = opts();
    o.secret = Some("another-secret-0123456789abcdef01234".into());
    let r = run(&scn, &o).expect("run");
    assert!(!r.passed);
    assert_eq!(r.errors.get("handshake_http_401"), Some(&6));
    let r = run(&scn, &opts()).expect("run");
    assert!(r.passed, "{:?}", r.failures);
    assert_eq!(r.handshake_ms.count, 6);
}

#[test]
fn non_loopback_targets_are_refused_before_any_traffic() {
    let scn = scenario::from_str("kind = \"fanout\"\nurl = \"http://10.1.2.3:3000\"\n", &[])
        .expect("scenario");
    let err = run(&scn, &opts()).expect_err("refused");
    assert!(err.to_string().contains("not a loopback address"), "{err}");
}

#[test]
fn binary_with_procs_writes_the_json_report() {
    let mock = mock_relay::start(1 << 20);
    let dir = std::env::temp_dir().join(format!("lt-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("fanout.toml");
    std::fs::write(
        &file,
        "kind = \"fanout\"\nsessions = 2\nsockets_per_session = 3\nrate = 200\nduration = \"1s\"\n",
    )
    .expect("write");
    let json = dir.join("out.json");
    let hgrm = dir.join("out.hgrm");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_loadtest"))
        .args([
            "run",
            file.to_str().expect("path"),
            "--quiet",
            "--procs",
            "2",
        ])
        .args(["--url", &mock.url(), "--duration", "1s"])
        .args([
            "--json",
            json.to_str().expect("path"),
            "--hgrm",
            hgrm.to_str().expect("path"),
        ])
        .env("JWT_SIGNING_SECRET", mock_relay::SECRET)
        .env("RELAY_API_KEY", mock_relay::API_KEY)
        .output()
        .expect("run binary");
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json).expect("json")).expect("parse");
    assert_eq!(v["lost"], 0);
    assert_eq!(v["deliveries"], 600);
    assert_eq!(v["procs"], 2);
    assert_eq!(v["latency_ms"]["count"], 600);
    for k in ["p50", "p90", "p99", "p99_9", "max"] {
        assert!(v["latency_ms"][k].as_f64().is_some(), "{k}");
    }
    assert!(v["deliveries_per_sec"].as_f64().is_some());
    assert!(v["errors"].is_object() && v["close_codes"].is_object());
    let text = std::fs::read_to_string(&hgrm).expect("hgrm");
    assert!(text.contains("Total count    =          600"), "{text}");
    let _ = std::fs::remove_dir_all(&dir);
}
