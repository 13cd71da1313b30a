//! The `relay` binary: parse the command line, set up logging, run.

use std::io::Read;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Parser;
use relay::cli::{
    Cli, Command, CommonArgs, HealthcheckArgs, LogFormat, PublishArgs, ServeArgs, TokenArgs,
};
use relay::config::{self, memory_limit, Secret};

/// jemalloc, not glibc's malloc: under a soak's mix (history frames of many sizes
/// that live for the history's age, between each request's short-lived
/// allocations) glibc's arenas grew around chunks they could not reuse, about 10 %
/// of RSS an hour with the live heap flat; jemalloc's size-class slabs held the
/// same load within 4 %/h, and it returns freed pages itself (after its 10 s
/// decay), as the `malloc_trim` thread did for glibc. Figures: docs/reliability.md.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Exit status for a configuration the node refuses (the contract's 2).
const EXIT_CONFIG: u8 = 2;

fn main() -> ExitCode {
    // Real environment variables win: dotenvy never overrides one that is set.
    let _ = dotenvy::from_filename(config::DEV_ENV_FILE);
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve(*args),
        Command::Token(args) => token(args),
        Command::Publish(args) => publish(args),
        Command::Healthcheck(args) => healthcheck(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("relay: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Sets up logging to stderr through the non-blocking writer; returns how to
/// change the filter later (SIGHUP) and the writer's guard, to keep until exit.
fn init_logging(
    level: &str,
    format: LogFormat,
) -> (
    relay::runtime::SetLogLevel,
    tracing_appender::non_blocking::WorkerGuard,
) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_new(level).unwrap_or_else(|_| EnvFilter::new("info"));
    let (filter, handle) = tracing_subscriber::reload::Layer::new(filter);
    let registry = tracing_subscriber::registry().with(filter);
    let (writer, guard) = relay::logging::stderr_writer();
    let fmt = tracing_subscriber::fmt::layer().with_writer(writer);
    match format {
        LogFormat::Json => registry.with(fmt.json()).init(),
        LogFormat::Human => registry.with(fmt).init(),
    }
    let set_level: relay::runtime::SetLogLevel = Box::new(move |level: &str| {
        let filter = EnvFilter::try_new(level).map_err(|e| e.to_string())?;
        handle.reload(filter).map_err(|e| e.to_string())
    });
    (set_level, guard)
}

fn serve(mut args: ServeArgs) -> anyhow::Result<ExitCode> {
    if args.dev {
        match config::ensure_dev_secrets(Path::new(config::DEV_ENV_FILE)) {
            Ok(generated) if !generated.is_empty() => eprintln!(
                "relay: --dev generated {} into {}",
                generated.join(" and "),
                config::DEV_ENV_FILE
            ),
            Ok(_) => {}
            Err(e) => {
                eprintln!("relay: {e}");
                return Ok(ExitCode::from(EXIT_CONFIG));
            }
        }
        fill_from_env(&mut args.common);
    }
    let mut config = match args.to_config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("relay: {e}");
            return Ok(ExitCode::from(EXIT_CONFIG));
        }
    };
    // Under a container's memory limit, history must shed before the OOM killer acts.
    let limit = memory_limit::cgroup_memory_limit();
    let fit = limit.map(|l| {
        memory_limit::fit_history_memory(config.history.memory, args.history_memory.is_some(), l)
    });
    if let Some(memory_limit::HistoryFit::Lowered { to }) = fit {
        config.history.memory = to;
    }
    let (set_log_level, _log_guard) = init_logging(&config.live.log_level, config.log_format);
    match (fit, limit) {
        (Some(memory_limit::HistoryFit::Lowered { to }), Some(limit)) => tracing::info!(
            history_memory = to,
            memory_limit = limit,
            "history cap lowered to half the cgroup's memory limit (RELAY_HISTORY_MEMORY unset)"
        ),
        (Some(memory_limit::HistoryFit::Above), Some(limit)) => tracing::warn!(
            history_memory = config.history.memory,
            memory_limit = limit,
            "RELAY_HISTORY_MEMORY is above half the cgroup's memory limit: the kernel may kill the node before history sheds"
        ),
        _ => {}
    }
    relay::runtime::run(config, set_log_level)?;
    Ok(ExitCode::SUCCESS)
}

/// Picks up secrets that `--dev` just generated into the environment.
fn fill_from_env(common: &mut CommonArgs) {
    if common.jwt_signing_secret.is_none() {
        common.jwt_signing_secret = std::env::var("JWT_SIGNING_SECRET").ok();
    }
    if common.relay_api_key.is_none() {
        common.relay_api_key = std::env::var("RELAY_API_KEY").ok();
    }
}

fn token(args: TokenArgs) -> anyhow::Result<ExitCode> {
    let secret = config::secret_value(
        "JWT_SIGNING_SECRET_FILE",
        args.common.jwt_signing_secret.as_deref(),
        args.common.jwt_signing_secret_file.as_deref(),
    )?;
    let secrets = config::parse_secret_list(
        "JWT_SIGNING_SECRET",
        secret.as_deref(),
        config::MIN_SECRET_BYTES,
    )?;
    let now = relay::shard::unix_now();
    let ttl: Duration = args.ttl.into();
    let claims = relay::auth::Claims {
        session: args.session.clone(),
        sub: args.sub.clone(),
        exp: now + ttl.as_secs(),
        iat: Some(now),
        nbf: None,
        aud: args.aud.clone().map(serde_json::Value::String),
        iss: args.iss.clone(),
        extra: Default::default(),
    };
    if !relay::auth::is_valid_session(&claims.session) {
        bail!("--session must be 1 to 128 characters of A-Z a-z 0-9 . _ : -");
    }
    let token = relay::auth::mint_claims(&secrets[0], &claims).context("signing the token")?;
    println!("{token}");
    Ok(ExitCode::SUCCESS)
}

fn healthcheck(args: HealthcheckArgs) -> anyhow::Result<ExitCode> {
    let base = args.url.unwrap_or_else(|| {
        let port = std::env::var("PORT").unwrap_or_else(|_| config::DEFAULT_PORT.to_string());
        format!("http://127.0.0.1:{port}")
    });
    let url = format!("{}/healthz", base.trim_end_matches('/'));
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(3)))
        .build()
        .into();
    let status = agent
        .get(&url)
        .call()
        .with_context(|| format!("GET {url}"))?
        .status()
        .as_u16();
    if status == 200 {
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("relay: {url} answered {status}");
        Ok(ExitCode::FAILURE)
    }
}

fn publish(args: PublishArgs) -> anyhow::Result<ExitCode> {
    let key = config::secret_value(
        "RELAY_API_KEY_FILE",
        args.common.relay_api_key.as_deref(),
        args.common.relay_api_key_file.as_deref(),
    )?;
    let keys = config::parse_secret_list("RELAY_API_KEY", key.as_deref(), 1)?;
    let key: &Secret = &keys[0];
    let data: Box<serde_json::value::RawValue> =
        serde_json::from_str(&args.data).context("--data must be valid JSON")?;
    let mut body = serde_json::json!({"session": args.session, "event": args.event});
    if let Some(id) = &args.id {
        body["id"] = serde_json::Value::String(id.clone());
    }
    // Splice `data` in byte for byte, as the relay will forward it.
    let mut text = body.to_string();
    text.pop();
    text.push_str(&format!(",\"data\":{}}}", data.get()));

    let url = format!("{}/events", args.url.trim_end_matches('/'));
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let key_text = String::from_utf8_lossy(key.expose()).into_owned();
    let mut resp = agent
        .post(&url)
        .header("Authorization", &format!("Bearer {key_text}"))
        .header("Content-Type", "application/json")
        .send(text.as_bytes())
        .with_context(|| format!("POST {url}"))?;
    let status = resp.status().as_u16();
    let mut reply = String::new();
    resp.body_mut()
        .as_reader()
        .read_to_string(&mut reply)
        .context("reading the response")?;
    println!("{reply}");
    if status == 202 {
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("relay: publish answered {status}");
        Ok(ExitCode::FAILURE)
    }
}
