//! The command line: `loadtest run FILE [flags]`, `loadtest check FILE`, `loadtest
//! fault-proxy`, and the hidden `loadtest child` used by `--procs`.
//!
//! Owns: flag → override translation and where results are written. Precedence for every
//! scenario field: the file, then `--set key=value` in order, then the dedicated flags.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::target::{Reach, TargetOptions};

/// Load generator for relay nodes (open loop, HDR latency, loss accounting).
#[derive(Debug, Parser)]
#[command(name = "loadtest", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a scenario file against relay nodes (loopback unless --allow-remote) and report.
    Run(RunArgs),
    /// Validate a scenario (with overrides) and print it fully resolved, as TOML.
    Check(ScenarioArgs),
    /// Print a Markdown table summarising `--json` reports (one row per file).
    Summary {
        /// Report files written by `run --json`.
        files: Vec<PathBuf>,
    },
    /// A TCP proxy that injects faults (delay, black hole, resets) between two loopback
    /// peers, driven by lines on a control port: `delay MS`, `blackhole`, `heal`, `reset`,
    /// `refuse on|off`, `status`. Runs until killed.
    FaultProxy {
        /// Where clients connect, e.g. 127.0.0.1:6380.
        #[arg(long)]
        listen: String,
        /// Where connections are forwarded, e.g. 127.0.0.1:6379.
        #[arg(long)]
        to: String,
        /// Where the control lines are read, e.g. 127.0.0.1:6390.
        #[arg(long)]
        control: String,
    },
    /// Internal: one load process of `run --procs N` (reads its config on stdin).
    #[command(hide = true)]
    Child,
}

#[derive(Debug, Args)]
pub struct ScenarioArgs {
    /// Scenario file, e.g. loadtest/scenarios/fanout.toml.
    pub file: PathBuf,
    /// Override any scenario field: `--set rate=5000 --set duration=30s` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Node URL to publish to and (without `nodes`) connect to, e.g. http://127.0.0.1:3000
    /// or (with --allow-remote) wss://relay.staging.example.com.
    #[arg(long)]
    pub url: Option<String>,
    /// Comma-separated node URLs to spread sockets over (cross-node).
    #[arg(long, value_delimiter = ',')]
    pub nodes: Option<Vec<String>>,
    /// Scenario duration (publish window, or hold time), e.g. 30s.
    #[arg(long)]
    pub duration: Option<String>,
    /// What the nodes are: `relay` (default) or `harness`, a server of the shape other
    /// servers are compared with (`GET /ws?session=S`, `POST /publish/S` with the event as
    /// the body; no token, no API key). Same as `--set target=harness`.
    #[arg(long, value_name = "relay|harness")]
    pub target_kind: Option<String>,
    /// Allow node URLs off this machine (any address or host name). Without it only
    /// 127.0.0.0/8, ::1 and localhost are accepted. Point it only at a relay you run.
    #[arg(long)]
    pub allow_remote: bool,
    /// PEM file of CA certificates trusted for wss:// and https:// nodes, besides the
    /// system's roots (a private or staging CA).
    #[arg(long, value_name = "PATH")]
    pub ca_file: Option<PathBuf>,
}

impl ScenarioArgs {
    /// The target flags, as the run and every load process take them.
    pub fn targets(&self) -> TargetOptions {
        TargetOptions {
            reach: if self.allow_remote {
                Reach::Remote
            } else {
                Reach::Loopback
            },
            ca_file: self.ca_file.clone(),
        }
    }

    /// The `--set` list with the dedicated flags appended (they win).
    pub fn overrides(&self) -> Vec<String> {
        let mut o = self.set.clone();
        if let Some(u) = &self.url {
            o.push(format!("url={}", toml_string(u)));
        }
        if let Some(n) = &self.nodes {
            let list: Vec<String> = n.iter().map(|s| toml_string(s)).collect();
            o.push(format!("nodes=[{}]", list.join(",")));
        }
        if let Some(k) = &self.target_kind {
            o.push(format!("target={}", toml_string(k)));
        }
        if let Some(d) = &self.duration {
            o.push(format!("duration={}", toml_string(d)));
        }
        o
    }
}

fn toml_string(s: &str) -> String {
    // A JSON string literal is a valid TOML basic string.
    serde_json::Value::String(s.to_owned()).to_string()
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub scenario: ScenarioArgs,
    /// HS256 secret the node verifies tokens with (else env, else ./.env.local).
    #[arg(long, env = "JWT_SIGNING_SECRET", hide_env_values = true)]
    pub secret: Option<String>,
    /// Key for POST /events (else env, else ./.env.local).
    #[arg(long, env = "RELAY_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Write the report as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Write the latency histogram as HdrHistogram percentile text (ms) to this file:
    /// publish→receive when events were delivered, else publish→202, else handshakes.
    #[arg(long, value_name = "FILE")]
    pub hgrm: Option<PathBuf>,
    /// PID of the relay node: sample its VmRSS before, while holding, and after.
    #[arg(long, value_name = "PID")]
    pub server_pid: Option<u32>,
    /// Split the sockets over N load processes (this binary re-spawned), merged at the end.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub procs: u32,
    /// Worker threads per process (default: CPUs the process may use).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub threads: Option<u16>,
    /// Pin the load to these CPUs, e.g. `1` or `1-3` (sched_setaffinity).
    #[arg(long, value_name = "LIST")]
    pub cpus: Option<String>,
    /// No progress line on stderr.
    #[arg(long, short)]
    pub quiet: bool,
}
