//! A `redis-server` of the test's own on a free port ([`Redis`]), and nodes pointed
//! at it: the harness of every test that needs a real Redis.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::cli::fresh_dir;
use super::node::Node;
use super::wait::wait_until;

/// A `redis-server` of our own, killed on drop.
pub struct Redis {
    pub port: u16,
    child: Option<Child>,
    /// With a directory, Redis keeps an append-only file there, fsynced before
    /// every reply, and reloads it when respawned.
    aof_dir: Option<PathBuf>,
}

impl Redis {
    /// A handle on a server started elsewhere (a Cluster's): commands only, and
    /// dropping it leaves the server running.
    pub fn at(port: u16) -> Redis {
        Redis {
            port,
            child: None,
            aof_dir: None,
        }
    }

    pub fn start() -> Redis {
        Redis::start_with(None)
    }

    /// A Redis that survives `kill` + `spawn` with its data (AOF, fsync always).
    pub fn start_persistent() -> Redis {
        Redis::start_with(Some(fresh_dir("redis-aof")))
    }

    pub fn start_with(aof_dir: Option<PathBuf>) -> Redis {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("free port");
        let mut r = Redis {
            port,
            child: None,
            aof_dir,
        };
        r.spawn();
        r
    }

    pub fn spawn(&mut self) {
        let port = self.port.to_string();
        let mut args = vec!["--port", &port, "--bind", "127.0.0.1", "--save", ""];
        let dir = self.aof_dir.as_ref().map(|d| d.display().to_string());
        match &dir {
            Some(d) => args.extend(["--appendonly", "yes", "--appendfsync", "always", "--dir", d]),
            None => args.extend(["--appendonly", "no"]),
        }
        let child = Command::new("redis-server")
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server on PATH (scripts/test installs it)");
        self.child = Some(child);
        assert!(
            wait_until(Duration::from_secs(5), || self
                .try_cmd(&["PING"])
                .is_some_and(|r| r.starts_with("+PONG"))),
            "redis-server did not answer on port {}",
            self.port
        );
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// One RESP command; the raw reply, or `None` if Redis is not there.
    pub fn try_cmd(&self, args: &[&str]) -> Option<String> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        let mut req = format!("*{}\r\n", args.len());
        for a in args {
            req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        s.write_all(req.as_bytes()).ok()?;
        let mut buf = vec![0u8; 4096];
        let n = s.read(&mut buf).ok()?;
        Some(String::from_utf8_lossy(&buf[..n]).into_owned())
    }

    /// Subscribers of a session's channel, from `PUBSUB NUMSUB`.
    pub fn subscribers(&self, session: &str) -> Option<u64> {
        let reply = self.try_cmd(&["PUBSUB", "NUMSUB", &format!("relay:v1:s:{{{session}}}")])?;
        reply.lines().last()?.trim_start_matches(':').parse().ok()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn node_on(redis: &Redis) -> Node {
    Node::builder().env("REDIS_URL", &redis.url()).start()
}

pub fn wait_ready(node: &Node, timeout: Duration) -> bool {
    wait_until(timeout, || node.get("/readyz").status == 200)
}
