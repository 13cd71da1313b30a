//! Every shipped scenario parses, validates, targets loopback, and documents itself; each
//! kind has its file, named after it, and a few variants size a kind for one question.

use std::path::Path;

/// Scenario files that size a kind for one question, and their kind.
const VARIANTS: [(&str, &str); 2] = [
    ("publish-spray", "publish-throughput"),
    ("presence-churn", "churn"),
];

#[test]
fn shipped_scenarios_parse_and_have_a_header_comment() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
    let mut kinds = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("scenarios dir") {
        let path = entry.expect("entry").path();
        if path.extension().and_then(|e| e.to_str()) != Some("toml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("read");
        let header = text.lines().take_while(|l| l.starts_with('#')).count();
        assert!(header >= 5, "{} needs a header comment", path.display());
        let scn = loadtest::scenario::load(&path, &[]).expect("valid scenario");
        loadtest::run::check_targets(&scn, &Default::default()).expect("loopback targets");
        let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("");
        let kind = scn.kind.to_string();
        match VARIANTS.iter().find(|(name, _)| *name == stem) {
            Some((_, of)) => assert_eq!(kind, *of, "{stem} is a {of} scenario"),
            None => {
                assert_eq!(kind, stem, "file name is the kind");
                kinds.push(scn.kind);
            }
        }
    }
    assert_eq!(kinds.len(), 8, "one file per kind");
}

#[test]
fn a_need_above_the_open_file_limit_is_refused_with_a_clear_message() {
    // Not run through `loadtest::run`: on a machine whose hard limit is huge it would be
    // raised and the sockets really opened.
    let err = loadtest::sys::ensure_nofile(u64::MAX / 2).expect_err("refused");
    let msg = err.to_string();
    assert!(
        msg.contains("RLIMIT_NOFILE") && msg.contains("--procs"),
        "{msg}"
    );
    let scn = loadtest::scenario::load(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios/idle-hold.toml"),
        &["sockets_per_session=30".into()],
    )
    .expect("valid");
    let need = loadtest::engine::fds_needed(&scn, loadtest::engine::Slice::WHOLE);
    assert!(
        need > 30_000,
        "30,000 sockets need more than 30,000 files: {need}"
    );
}
