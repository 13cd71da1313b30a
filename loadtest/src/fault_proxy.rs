//! A TCP proxy that injects network faults between a node and Redis (or any two
//! loopback peers), since this kernel has no `netem`: added delay, a black hole (every
//! connection kept open, nothing forwarded either way, no FIN, no RST) that heals, resets
//! of every live connection, and refusing new ones.
//!
//! [`FaultProxy`] is the handle tests and `loadtest fault-proxy` drive; the control line
//! protocol ([`Fault::parse`]) lets a shell script drive the binary (`delay 500`,
//! `blackhole`, `heal`, `reset`, `refuse on`, `status`), one command a line, one answer a
//! line.
//!
//! Owns: its listener, its connections and their pump threads (plain threads: this is
//! harness code, never on a shard). May not: touch anything but the sockets it accepted
//! and the upstream connections it made for them.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// How long a pump waits in `read` before it looks at the fault state again.
const POLL: Duration = Duration::from_millis(10);
/// Connecting to the upstream: a dead upstream fails the client's connection this fast.
const UPSTREAM_CONNECT: Duration = Duration::from_secs(2);
/// Bytes a pump reads at once.
const CHUNK: usize = 16 * 1024;

/// Why the proxy could not start or a control line was refused.
#[derive(Debug, thiserror::Error)]
pub enum FaultProxyError {
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: String,
        source: std::io::Error,
    },
    #[error("cannot resolve upstream {0}")]
    Upstream(String),
    #[error("unknown control command {0:?} (try: delay MS, blackhole, heal, reset, refuse on|off, status)")]
    Command(String),
}

/// One control command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Every byte waits this long (each direction) before it is forwarded; 0 removes it.
    Delay(Duration),
    /// Forward nothing, keep every connection (new ones too) open.
    BlackHole,
    /// Undo the black hole and the refusal (the delay stays).
    Heal,
    /// Reset (RST) every live connection, both sides, once.
    Reset,
    /// Reset new connections as soon as they are accepted (`true`) or not.
    Refuse(bool),
    /// Report the state.
    Status,
}

impl Fault {
    /// Parses one control line: `delay 50`, `blackhole`, `heal`, `reset`, `refuse on`,
    /// `refuse off`, `status`.
    pub fn parse(line: &str) -> Result<Fault, FaultProxyError> {
        let bad = || FaultProxyError::Command(line.trim().to_owned());
        let mut words = line.split_whitespace();
        let f = match (words.next(), words.next()) {
            (Some("delay"), Some(ms)) => {
                Fault::Delay(Duration::from_millis(ms.parse().map_err(|_| bad())?))
            }
            (Some("blackhole"), None) => Fault::BlackHole,
            (Some("heal"), None) => Fault::Heal,
            (Some("reset"), None) => Fault::Reset,
            (Some("refuse"), Some("on")) => Fault::Refuse(true),
            (Some("refuse"), Some("off")) => Fault::Refuse(false),
            (Some("status"), None) => Fault::Status,
            _ => return Err(bad()),
        };
        if words.next().is_some() {
            return Err(bad());
        }
        Ok(f)
    }
}

/// What the pumps and the accept loop read; the handle writes it.
#[derive(Default)]
struct State {
    delay_ms: AtomicU64,
    black_hole: AtomicBool,
    refuse: AtomicBool,
    stop: AtomicBool,
    accepted: AtomicU64,
    resets: AtomicU64,
    forwarded_bytes: AtomicU64,
    next_id: AtomicU64,
    /// Live connections (client side, upstream side), for resets.
    conns: Mutex<HashMap<u64, (TcpStream, TcpStream)>>,
}

impl State {
    fn delay(&self) -> Duration {
        Duration::from_millis(self.delay_ms.load(Ordering::Acquire))
    }

    fn holding(&self) -> bool {
        self.black_hole.load(Ordering::Acquire) && !self.stop.load(Ordering::Acquire)
    }

    fn reset_all(&self) -> usize {
        let conns: Vec<_> = self
            .conns
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .drain()
            .collect();
        for (_, (a, b)) in &conns {
            reset(a);
            reset(b);
        }
        self.resets.fetch_add(conns.len() as u64, Ordering::Relaxed);
        conns.len()
    }
}

/// A running proxy: `127.0.0.1:PORT` → `upstream`. Dropping it stops it and resets
/// every connection it holds.
pub struct FaultProxy {
    addr: SocketAddr,
    state: Arc<State>,
}

impl FaultProxy {
    /// Listens on `listen` (e.g. `127.0.0.1:0`) and forwards every connection to `upstream`.
    pub fn start(listen: &str, upstream: &str) -> Result<FaultProxy, FaultProxyError> {
        let to = upstream
            .to_socket_addrs()
            .ok()
            .and_then(|mut a| a.next())
            .ok_or_else(|| FaultProxyError::Upstream(upstream.to_owned()))?;
        let listen_err = |source| FaultProxyError::Listen {
            addr: listen.to_owned(),
            source,
        };
        let listener = TcpListener::bind(listen).map_err(listen_err)?;
        let addr = listener.local_addr().map_err(listen_err)?;
        listener.set_nonblocking(true).map_err(listen_err)?;
        let state = Arc::new(State::default());
        let st = state.clone();
        std::thread::Builder::new()
            .name("fault-proxy".into())
            .spawn(move || accept_loop(listener, to, st))
            .map_err(listen_err)?;
        Ok(FaultProxy { addr, state })
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Applies one fault; the answer line the control protocol sends back.
    pub fn apply(&self, f: Fault) -> String {
        let s = &self.state;
        match f {
            Fault::Delay(d) => {
                s.delay_ms.store(d.as_millis() as u64, Ordering::Release);
                format!("ok delay {}", d.as_millis())
            }
            Fault::BlackHole => {
                s.black_hole.store(true, Ordering::Release);
                "ok blackhole".to_owned()
            }
            Fault::Heal => {
                s.black_hole.store(false, Ordering::Release);
                s.refuse.store(false, Ordering::Release);
                "ok heal".to_owned()
            }
            Fault::Reset => format!("ok reset {}", s.reset_all()),
            Fault::Refuse(on) => {
                s.refuse.store(on, Ordering::Release);
                format!("ok refuse {}", if on { "on" } else { "off" })
            }
            Fault::Status => self.status(),
        }
    }

    /// `delay 50`, `black_hole(true)`, …: the handle's shorthand for [`FaultProxy::apply`].
    pub fn delay(&self, d: Duration) {
        self.apply(Fault::Delay(d));
    }

    pub fn black_hole(&self) {
        self.apply(Fault::BlackHole);
    }

    pub fn heal(&self) {
        self.apply(Fault::Heal);
    }

    /// Resets every live connection; how many there were.
    pub fn reset(&self) -> usize {
        self.state.reset_all()
    }

    /// Connections currently forwarded.
    pub fn live(&self) -> usize {
        self.state
            .conns
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// One line: the state and counters.
    pub fn status(&self) -> String {
        let s = &self.state;
        format!(
            "ok delay_ms={} blackhole={} refuse={} live={} accepted={} resets={} forwarded_bytes={}",
            s.delay_ms.load(Ordering::Relaxed),
            s.black_hole.load(Ordering::Relaxed),
            s.refuse.load(Ordering::Relaxed),
            self.live(),
            s.accepted.load(Ordering::Relaxed),
            s.resets.load(Ordering::Relaxed),
            s.forwarded_bytes.load(Ordering::Relaxed),
        )
    }

    /// Serves the control protocol on `listener`, forever (the binary runs until it is
    /// killed): one command a line, one answer a line (`ok …` or `error …`).
    pub fn serve_control(&self, listener: TcpListener) -> std::io::Result<()> {
        for conn in listener.incoming() {
            let conn = conn?;
            let mut out = conn.try_clone()?;
            for line in BufReader::new(conn).lines() {
                let Ok(line) = line else { break };
                if line.trim().is_empty() {
                    continue;
                }
                let answer = match Fault::parse(&line) {
                    Ok(f) => self.apply(f),
                    Err(e) => format!("error {e}"),
                };
                if writeln!(out, "{answer}").is_err() {
                    break;
                }
            }
        }
        Ok(())
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::Release);
        self.state.reset_all();
    }
}

/// Closes a socket with a reset: SO_LINGER 0, then close both ways.
fn reset(s: &TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on a socket we own, with a correctly sized linger value.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
    // With linger 0 the close sends RST; shutdown wakes the pumps blocked in read.
    let _ = s.shutdown(Shutdown::Both);
}

fn accept_loop(listener: TcpListener, to: SocketAddr, st: Arc<State>) {
    while !st.stop.load(Ordering::Acquire) {
        let client = match listener.accept() {
            Ok((c, _)) => c,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(POLL);
                continue;
            }
            Err(_) => {
                std::thread::sleep(POLL);
                continue;
            }
        };
        st.accepted.fetch_add(1, Ordering::Relaxed);
        if st.refuse.load(Ordering::Acquire) {
            reset(&client);
            st.resets.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let _ = client.set_nonblocking(false);
        let st = st.clone();
        let _ = std::thread::Builder::new()
            .name("fault-proxy-conn".into())
            .spawn(move || connect_and_pump(client, to, st));
    }
}

fn connect_and_pump(client: TcpStream, to: SocketAddr, st: Arc<State>) {
    let Ok(server) = TcpStream::connect_timeout(&to, UPSTREAM_CONNECT) else {
        reset(&client);
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let id = st.next_id.fetch_add(1, Ordering::Relaxed);
    let (Ok(c2), Ok(s2), Ok(c3), Ok(s3)) = (
        client.try_clone(),
        server.try_clone(),
        client.try_clone(),
        server.try_clone(),
    ) else {
        reset(&client);
        reset(&server);
        return;
    };
    st.conns
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(id, (c3, s3));
    let st2 = st.clone();
    let up = std::thread::Builder::new()
        .name("fault-proxy-up".into())
        .spawn(move || pump(client, s2, &st2));
    pump(server, c2, &st);
    if let Ok(h) = up {
        let _ = h.join();
    }
    st.conns
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .remove(&id);
}

/// One direction: a reader (this thread) stamps each chunk with when it may leave, a
/// writer thread sends it then, in order. In a black hole neither reads nor writes.
fn pump(mut from: TcpStream, to: TcpStream, st: &Arc<State>) {
    let _ = from.set_read_timeout(Some(POLL));
    let (tx, rx) = mpsc::channel::<Option<(Instant, Vec<u8>)>>();
    let wst = st.clone();
    let writer = std::thread::Builder::new()
        .name("fault-proxy-write".into())
        .spawn(move || write_due(to, rx, &wst));
    let mut buf = vec![0u8; CHUNK];
    loop {
        if st.stop.load(Ordering::Acquire) {
            break;
        }
        if st.holding() {
            std::thread::sleep(POLL);
            continue;
        }
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                let due = Instant::now() + st.delay();
                if tx.send(Some((due, buf[..n].to_vec()))).is_err() {
                    break;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => break,
        }
    }
    // End of stream: the writer half-closes after what is queued (a reset already
    // closed everything).
    let _ = tx.send(None);
    if let Ok(h) = writer {
        let _ = h.join();
    }
    let _ = from.shutdown(Shutdown::Read);
}

fn write_due(mut to: TcpStream, rx: mpsc::Receiver<Option<(Instant, Vec<u8>)>>, st: &State) {
    while let Ok(item) = rx.recv() {
        let Some((due, bytes)) = item else {
            let _ = to.shutdown(Shutdown::Write);
            return;
        };
        loop {
            if st.stop.load(Ordering::Acquire) {
                return;
            }
            let left = due.saturating_duration_since(Instant::now());
            if st.holding() {
                std::thread::sleep(POLL);
            } else if !left.is_zero() {
                std::thread::sleep(left.min(POLL));
            } else {
                break;
            }
        }
        if to.write_all(&bytes).is_err() {
            return;
        }
        st.forwarded_bytes
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An echo server on loopback; returns its address.
    fn echo() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr");
        std::thread::spawn(move || {
            for c in l.incoming().flatten() {
                std::thread::spawn(move || {
                    let mut c = c;
                    let mut buf = [0u8; 4096];
                    while let Ok(n) = c.read(&mut buf) {
                        if n == 0 || c.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                });
            }
        });
        addr
    }

    fn proxy() -> FaultProxy {
        FaultProxy::start("127.0.0.1:0", &echo().to_string()).expect("proxy")
    }

    fn client(p: &FaultProxy) -> TcpStream {
        let c = TcpStream::connect(p.addr()).expect("connect");
        c.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        c
    }

    /// Writes `msg` and reads it back; how long the round trip took.
    fn round_trip(c: &mut TcpStream, msg: &[u8]) -> std::io::Result<Duration> {
        let t = Instant::now();
        c.write_all(msg)?;
        let mut got = vec![0u8; msg.len()];
        c.read_exact(&mut got)?;
        assert_eq!(got, msg);
        Ok(t.elapsed())
    }

    #[test]
    fn forwards_both_ways_without_faults() {
        let p = proxy();
        let mut c = client(&p);
        round_trip(&mut c, b"hello").expect("echo");
        assert_eq!(p.live(), 1);
    }

    #[test]
    fn delay_applies_to_each_direction() {
        let p = proxy();
        let mut c = client(&p);
        p.delay(Duration::from_millis(100));
        let took = round_trip(&mut c, b"slow").expect("echo");
        // 100 ms there and 100 ms back.
        assert!(took >= Duration::from_millis(200), "{took:?}");
        p.delay(Duration::ZERO);
        round_trip(&mut c, b"fast").expect("echo");
    }

    #[test]
    fn black_hole_forwards_nothing_keeps_the_connection_and_heals() {
        let p = proxy();
        let mut c = client(&p);
        round_trip(&mut c, b"before").expect("echo");
        p.black_hole();
        c.set_read_timeout(Some(Duration::from_millis(300)))
            .expect("timeout");
        c.write_all(b"held").expect("write");
        let mut buf = [0u8; 4];
        let e = c
            .read(&mut buf)
            .expect_err("nothing comes back in a black hole");
        assert!(
            matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
            "{e:?}"
        );
        // A new connection is accepted and held too.
        let mut c2 = client(&p);
        c2.write_all(b"new!").expect("write");
        p.heal();
        c.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        c.read_exact(&mut buf)
            .expect("held bytes arrive after the heal");
        assert_eq!(&buf, b"held");
        c2.read_exact(&mut buf).expect("the new connection works");
        assert_eq!(&buf, b"new!");
    }

    #[test]
    fn reset_sends_rst_and_refuse_turns_new_connections_away() {
        let p = proxy();
        let mut c = client(&p);
        round_trip(&mut c, b"x").expect("echo");
        assert_eq!(p.reset(), 1);
        let mut buf = [0u8; 1];
        let r = c.read(&mut buf);
        assert!(
            matches!(&r, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset)
                || matches!(r, Ok(0)),
            "{r:?}"
        );
        p.apply(Fault::Refuse(true));
        let mut c = client(&p);
        let r = round_trip(&mut c, b"y");
        assert!(r.is_err(), "a refused connection echoed");
        p.apply(Fault::Refuse(false));
        let mut c = client(&p);
        round_trip(&mut c, b"z").expect("echo after refuse off");
    }

    #[test]
    fn control_lines_parse_and_bad_ones_are_named() {
        assert_eq!(
            Fault::parse("delay 500").expect("ok"),
            Fault::Delay(Duration::from_millis(500))
        );
        assert_eq!(Fault::parse(" blackhole ").expect("ok"), Fault::BlackHole);
        assert_eq!(Fault::parse("refuse on").expect("ok"), Fault::Refuse(true));
        assert_eq!(Fault::parse("status").expect("ok"), Fault::Status);
        for bad in ["delay", "delay x", "heal now", "flood", ""] {
            let e = Fault::parse(bad).expect_err(bad).to_string();
            assert!(e.contains("unknown control command"), "{e}");
        }
    }

    #[test]
    fn control_protocol_answers_each_line() {
        let p = proxy();
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr");
        let p = Arc::new(p);
        let p2 = p.clone();
        std::thread::spawn(move || p2.serve_control(l));
        let mut c = TcpStream::connect(addr).expect("connect");
        c.write_all(b"delay 50\nbogus\nstatus\n").expect("write");
        let mut lines = BufReader::new(c).lines();
        let mut next = || lines.next().expect("a line").expect("read");
        assert_eq!(next(), "ok delay 50");
        assert!(next().starts_with("error unknown control command"));
        assert!(next().contains("delay_ms=50"));
    }
}
