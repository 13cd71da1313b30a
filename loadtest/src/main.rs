//! Thin entry: parse the CLI, run, print, choose the exit status.
//!
//! Exit status: 0 the run passed; 1 it ran but failed (lost events, errors over budget);
//! 2 it was refused or could not run (bad scenario, a non-loopback target without
//! `--allow-remote`, a bad `--ca-file`, limits, no node).

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;

use loadtest::cli::{Cli, Command, RunArgs};
use loadtest::output;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => run(args),
        Command::Check(args) => check(&args),
        Command::Summary { files } => summary(&files),
        Command::FaultProxy {
            listen,
            to,
            control,
        } => fault_proxy(&listen, &to, &control),
        Command::Child => loadtest::run::child_main()
            .map(|()| ExitCode::SUCCESS)
            .map_err(Into::into),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("loadtest: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn fault_proxy(listen: &str, to: &str, control: &str) -> anyhow::Result<ExitCode> {
    let proxy = loadtest::fault_proxy::FaultProxy::start(listen, to)?;
    let ctl =
        std::net::TcpListener::bind(control).with_context(|| format!("control port {control}"))?;
    println!(
        "fault-proxy {} -> {to}, control {}",
        proxy.addr(),
        ctl.local_addr().context("control address")?
    );
    proxy.serve_control(ctl).context("control port")?;
    Ok(ExitCode::SUCCESS)
}

fn check(args: &loadtest::cli::ScenarioArgs) -> anyhow::Result<ExitCode> {
    let scn = loadtest::scenario::load(&args.file, &args.overrides())?;
    loadtest::run::check_targets(&scn, &args.targets())?;
    print!("{}", toml::to_string(&scn).context("print scenario")?);
    Ok(ExitCode::SUCCESS)
}

fn summary(files: &[std::path::PathBuf]) -> anyhow::Result<ExitCode> {
    let mut rows = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(f).with_context(|| format!("read {}", f.display()))?;
        let report: loadtest::Report =
            serde_json::from_str(&text).with_context(|| format!("parse {}", f.display()))?;
        let name = f
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        rows.push((name, report));
    }
    print!("{}", output::summary_table(&rows));
    Ok(ExitCode::SUCCESS)
}

fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let scn = loadtest::scenario::load(&args.scenario.file, &args.scenario.overrides())?;
    let cpus = args
        .cpus
        .as_deref()
        .map(loadtest::sys::parse_cpus)
        .transpose()?;
    let opts = loadtest::RunOptions {
        secret: args.secret,
        api_key: args.api_key,
        server_pid: args.server_pid,
        procs: args.procs,
        threads: args.threads.map(usize::from),
        cpus,
        progress: !args.quiet,
        targets: args.scenario.targets(),
    };
    let report = loadtest::run(&scn, &opts)?;
    print!("{}", output::table(&report));
    if let Some(path) = &args.json {
        let json = serde_json::to_string_pretty(&report).context("encode report")?;
        std::fs::write(path, json + "\n").with_context(|| format!("write {}", path.display()))?;
    }
    if let Some(path) = &args.hgrm {
        std::fs::write(path, output::hgrm(report.hists.primary()))
            .with_context(|| format!("write {}", path.display()))?;
    }
    Ok(if report.passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
