//! Starts a node: binds the listeners, starts one shard per core, wires the shard
//! channels, turns SIGTERM into a drain, and returns once every shard has drained.
//!
//! The only module that knows how many cores there are and which one each shard
//! runs on.

use std::io::Write;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use glommio::{LocalExecutorBuilder, Placement};
use socket2::{Domain, Protocol, Socket, Type};

use crate::config::{random_hex, Config};
use crate::router::{Router, ShardMsg};
use crate::shard::{NodeShared, Shard};

/// Pending connections per listener before the kernel refuses: a connect storm of
/// thousands must not see resets.
const LISTEN_BACKLOG: i32 = 4096;
/// Submission entries of each shard's io_uring rings (glommio's default is 128).
/// The kernel sizes its table of pending polls by the ring (8 buckets at 128, 256
/// from 4,096 up), and every socket has a read pending there: with 10,000 sockets a
/// lookup in it (each wake of the executor cancels one) walked some 1,250 entries
/// at 128 and walks about 40 at 4,096. Costs about 400 KB per ring.
const SHARD_RING_DEPTH: usize = 4096;
/// glommio's registered I/O memory per shard. The relay does no file I/O, so the
/// 10 MiB default would only press against the memlock limit.
const SHARD_IO_MEMORY: usize = 512 * 1024;

/// Why a node could not start or stopped badly. All are the operator's to fix.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot create the shard channels: {0}")]
    Channels(std::io::Error),
    #[error("cannot start shard {shard}: {why}")]
    Executor { shard: usize, why: String },
    #[error("shard {0} panicked")]
    ShardPanicked(usize),
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
    #[error(transparent)]
    Bridge(#[from] crate::bridge::BridgeError),
    #[error(transparent)]
    Ready(#[from] crate::ready::ReadyError),
}

/// Binds `count` sockets to one address with SO_REUSEPORT, so the kernel spreads
/// connections over the shards. A port already taken (even by a process that also
/// uses SO_REUSEPORT) is refused rather than silently shared.
fn bind_group(addr: SocketAddr, count: usize) -> Result<(Vec<OwnedFd>, SocketAddr), RuntimeError> {
    let err = |source| RuntimeError::Bind { addr, source };
    let probe = StdListener::bind(addr).map_err(err)?;
    let actual = probe.local_addr().map_err(err)?;
    drop(probe);
    let mut fds = Vec::with_capacity(count);
    for _ in 0..count {
        let domain = if actual.is_ipv6() {
            Domain::IPV6
        } else {
            Domain::IPV4
        };
        let s = Socket::new(domain, Type::STREAM, Some(Protocol::TCP)).map_err(err)?;
        s.set_reuse_port(true).map_err(err)?;
        s.set_reuse_address(true).map_err(err)?;
        s.bind(&actual.into()).map_err(err)?;
        s.listen(LISTEN_BACKLOG).map_err(err)?;
        // SAFETY: into_raw_fd hands over sole ownership of the descriptor.
        fds.push(unsafe { OwnedFd::from_raw_fd(s.into_raw_fd()) });
    }
    Ok((fds, actual))
}

/// CPUs this process may run on, in order.
fn allowed_cpus() -> Vec<usize> {
    // SAFETY: sched_getaffinity fills a zeroed cpu_set_t we own.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return vec![0];
        }
        let cpus: Vec<usize> = (0..libc::CPU_SETSIZE as usize)
            .filter(|&c| libc::CPU_ISSET(c, &set))
            .collect();
        if cpus.is_empty() {
            vec![0]
        } else {
            cpus
        }
    }
}

/// Applies a new tracing filter (`LOG_LEVEL`) to the running process.
pub type SetLogLevel = Box<dyn Fn(&str) -> Result<(), String> + Send>;

/// Runs a node until SIGTERM (or SIGINT) has drained it; SIGHUP reloads its
/// secrets, keys, origins, limits and log level.
pub fn run(config: Config, set_log_level: SetLogLevel) -> Result<(), RuntimeError> {
    let shards = config.shards;
    let (public_fds, public_addr) = bind_group(SocketAddr::new(config.host, config.port), shards)?;
    let admin = match config.admin_port {
        Some(port) => Some(bind_group(SocketAddr::new(config.host, port), shards)?),
        None => None,
    };
    let (router, inboxes) =
        Router::with_capacity(shards, config.inbox_messages).map_err(RuntimeError::Channels)?;
    let config_limiters = config.limiters.clone();
    let max_connections = config.live.limits.max_connections;
    let node_tag = random_hex(3);
    let bridge = match &config.redis_url {
        Some(url) => {
            let url = String::from_utf8_lossy(url.expose()).into_owned();
            Some(crate::bridge::start(
                &url,
                config.redis_cluster,
                config.redis_ca.clone(),
                crate::bridge::PublishRules {
                    dedupe_secs: config.history.dedupe_window.as_secs(),
                    history_len: match config.history.store {
                        crate::config::HistoryStore::Redis => config.history.events.max(1),
                        crate::config::HistoryStore::Memory => 0,
                    },
                },
                router.clone(),
                &node_tag,
                config.presence.node_timeout,
            )?)
        }
        None => None,
    };
    let node = Arc::new(NodeShared {
        config,
        router: router.clone(),
        draining: AtomicBool::new(false),
        node_tag,
        bridge,
        limiters: Arc::new(crate::limiter::Limiters::new(
            config_limiters,
            max_connections,
        )),
    });
    install_signal_thread(node.clone(), set_log_level)?;

    let cpus = allowed_cpus();
    let mut admin_fds: Vec<Option<OwnedFd>> = match admin.as_ref() {
        Some(_) => Vec::new(),
        None => (0..shards).map(|_| None).collect(),
    };
    let admin_addr = admin.as_ref().map(|(_, a)| *a);
    if let Some((fds, _)) = admin {
        admin_fds = fds.into_iter().map(Some).collect();
    }

    let mut handles = Vec::with_capacity(shards);
    for (i, ((inbox, public), admin)) in inboxes
        .into_iter()
        .zip(public_fds)
        .zip(admin_fds)
        .enumerate()
    {
        let node = node.clone();
        let cpu = cpus[i % cpus.len()];
        // Made here, so its helper thread is not pinned to the shard's core.
        let ready = crate::ready::ReadySet::new(format!("ready-{i}"))?;
        let handle = LocalExecutorBuilder::new(Placement::Fixed(cpu))
            .name(&format!("shard-{i}"))
            .io_memory(SHARD_IO_MEMORY)
            .ring_depth(SHARD_RING_DEPTH)
            .spawn(move || async move {
                let mut listeners = Vec::new();
                // SAFETY: each descriptor is a listening socket handed over whole.
                listeners.push((
                    unsafe { glommio::net::TcpListener::from_raw_fd(public.into_raw_fd()) },
                    false,
                ));
                if let Some(fd) = admin {
                    listeners.push((
                        unsafe { glommio::net::TcpListener::from_raw_fd(fd.into_raw_fd()) },
                        true,
                    ));
                }
                let shard = Rc::new(Shard::new(i, node, inbox, ready));
                shard.run(listeners).await;
            })
            .map_err(|e| RuntimeError::Executor {
                shard: i,
                why: e.to_string(),
            })?;
        handles.push(handle);
    }

    tracing::info!(%public_addr, shards, "relay listening");
    // Tests and scripts read the port from this line.
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "relay listening on {public_addr}");
    if let Some(a) = admin_addr {
        let _ = writeln!(out, "relay admin listening on {a}");
    }
    let _ = out.flush();
    drop(out);

    for (i, h) in handles.into_iter().enumerate() {
        h.join().map_err(|_| RuntimeError::ShardPanicked(i))?;
    }
    tracing::info!("drained; exiting");
    Ok(())
}

/// Runs on the signal thread, which may wait for a full inbox.
/// SIGHUP: reads the reloadable settings again and, if they are valid, hands them
/// to every shard; says in the log which settings changed, never their values.
#[allow(clippy::disallowed_methods)] // the signal thread, never a shard core
fn reload(node: &NodeShared, current: &mut Config, set_log_level: &SetLogLevel) {
    let (next, changed) = match current.reloaded() {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "reload refused; the running configuration stays in force");
            return;
        }
    };
    if changed.is_empty() {
        tracing::info!("reload: nothing changed");
        return;
    }
    if next.live.log_level != current.live.log_level {
        if let Err(e) = set_log_level(&next.live.log_level) {
            tracing::error!(error = %e, "reload refused: LOG_LEVEL");
            return;
        }
    }
    node.limiters
        .set_max_connections(next.live.limits.max_connections);
    node.limiters.reconfigure(next.limiters.clone());
    let shared = Arc::new(next.live.clone());
    for shard in 0..node.router.shards() {
        let msg = ShardMsg::Reload(shared.clone());
        let pause = std::time::Duration::from_millis(5);
        if crate::offcore::send_retrying(&node.router, shard, msg, 1000, pause).is_err() {
            tracing::error!(shard, "reload not delivered to a shard");
        }
    }
    tracing::info!(changed = ?changed, "configuration reloaded");
    *current = next;
}

/// SIGTERM or SIGINT starts a drain; a second one exits at once. SIGHUP reloads.
fn install_signal_thread(
    node: Arc<NodeShared>,
    set_log_level: SetLogLevel,
) -> Result<(), RuntimeError> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT, SIGHUP])
        .map_err(RuntimeError::Signals)?;
    let mut current = node.config.clone();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for signal in signals.forever() {
                if signal == SIGHUP {
                    reload(&node, &mut current, &set_log_level);
                    continue;
                }
                if node.draining.swap(true, Ordering::SeqCst) {
                    tracing::warn!(signal, "second signal while draining: exiting now");
                    std::process::exit(1);
                }
                tracing::info!(signal, "draining");
                for shard in 0..node.router.shards() {
                    // The inbox may be momentarily full; the drain must get through.
                    let pause = std::time::Duration::from_millis(5);
                    #[allow(clippy::disallowed_methods)] // the signal thread
                    let sent = crate::offcore::send_retrying(
                        &node.router,
                        shard,
                        ShardMsg::Drain,
                        1000,
                        pause,
                    );
                    if sent.is_err() {
                        tracing::error!(shard, "drain request not delivered");
                    }
                }
            }
        })
        .map_err(RuntimeError::Signals)?;
    Ok(())
}
