//! One-shot `relay` subcommands (`relay token`, `relay publish`, …) run as child processes
//! with a known environment and a deadline, and the directories they and nodes run in.
//!
//! Owns: process spawning for commands that exit by themselves, and scratch directories.
//! Long-running nodes are [`super::node`]'s.

use std::io::Read;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::token::{API_KEY, SECRET};

pub(super) fn scratch_dir() -> PathBuf {
    // A directory with no .env.local, so nodes and CLI runs see only our environment.
    let dir = std::env::temp_dir().join("relay-it-scratch");
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    let _ = std::fs::remove_file(dir.join(".env.local"));
    dir
}

/// Runs a `relay` subcommand (token, publish) with the test secrets; returns the output.
pub fn relay_cli(args: &[&str]) -> std::process::Output {
    relay_cli_in(
        &scratch_dir(),
        &[("JWT_SIGNING_SECRET", SECRET), ("RELAY_API_KEY", API_KEY)],
        args,
    )
}

/// Runs a `relay` subcommand in `dir` with only `envs` (plus PATH) in its environment.
pub fn relay_cli_in(
    dir: &std::path::Path,
    envs: &[(&str, &str)],
    args: &[&str],
) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_relay"));
    cmd.args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .current_dir(dir)
        .stdin(Stdio::null());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn relay");
    wait_output(child, Duration::from_secs(20))
}

/// A fresh empty directory for this test.
pub fn fresh_dir(tag: &str) -> PathBuf {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "relay-it-{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create test dir");
    dir
}

/// `wait_with_output` with a deadline: a hung CLI is killed and fails the test.
pub fn wait_output(mut child: Child, timeout: Duration) -> std::process::Output {
    let deadline = Instant::now() + timeout;
    let mut stdout = child.stdout.take();
    let mut stderr = child.stderr.take();
    let out_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        if let Some(s) = stdout.as_mut() {
            let _ = s.read_to_end(&mut v);
        }
        v
    });
    let err_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        if let Some(s) = stderr.as_mut() {
            let _ = s.read_to_end(&mut v);
        }
        v
    });
    let status = loop {
        if let Ok(Some(s)) = child.try_wait() {
            break s;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("relay subcommand did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    std::process::Output {
        status,
        stdout: out_t.join().unwrap_or_default(),
        stderr: err_t.join().unwrap_or_default(),
    }
}
