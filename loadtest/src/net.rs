//! TCP connect with a chosen source address, and the small HTTP/1.1 client the publisher uses.
//!
//! Owns: socket options and the `POST /events` (or a harness's `POST /publish/S`) round
//! trip on a keep-alive connection,
//! plain or TLS (through [`crate::stream`]). The response parser is sans-IO
//! ([`parse_response`]) and unit-tested.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;

use tokio::io::AsyncReadExt;
use tokio::net::{TcpSocket, TcpStream};

use crate::stream::{self, DialError, Stream};
use crate::target::Target;

/// Largest response head the publisher accepts.
const MAX_HEAD: usize = 16 * 1024;
/// Largest response body the publisher reads (error bodies are small JSON).
const MAX_BODY: usize = 1 << 20;

/// Opens a TCP connection to `addr`, bound to `src` when given. `rcvbuf` shrinks SO_RCVBUF
/// (slow consumers) so the server's queue, not the kernel, holds the backlog.
pub async fn connect(
    addr: SocketAddr,
    src: Option<IpAddr>,
    rcvbuf: Option<u32>,
) -> io::Result<TcpStream> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(size) = rcvbuf {
        socket.set_recv_buffer_size(size)?;
    }
    if let Some(ip) = src {
        // Choose the port at connect() time, not bind(): ports are then unique per 4-tuple
        // rather than per source address, which is what lets many sockets share one source.
        set_bind_address_no_port(&socket);
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    let stream = socket.connect(addr).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

fn set_bind_address_no_port(socket: &TcpSocket) {
    let one: libc::c_int = 1;
    // SAFETY: a valid fd owned by `socket`, a pointer to a c_int that lives across the call,
    // and its exact size. Failure only means the kernel picks ports at bind time; ignored.
    unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// Makes closing `stream` send a reset instead of a FIN (SO_LINGER on, zero seconds):
/// the abrupt end a client sees when its network goes away. Best effort.
pub fn reset_on_close(stream: &TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid fd owned by `stream`, a pointer to a linger that lives across the
    // call, and its exact size. With a zero timeout close() does not block.
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

/// A publish round trip that did not produce a status.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The connection failed or was closed by the server: reconnect, the outcome is unknown.
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
    /// The TLS handshake (or the blocking client's TLS session) failed: the certificate is
    /// not trusted or does not name the host. Reconnecting will not help.
    #[error("tls: {0}")]
    Tls(String),
    /// The response is not HTTP/1.1 we understand: a bug on one side or the other.
    #[error("malformed response")]
    Malformed,
    /// The server closed before a whole response arrived: outcome unknown.
    #[error("connection closed mid-response")]
    Closed,
}

impl HttpError {
    /// Short error kind for the report.
    pub fn kind(&self) -> &'static str {
        match self {
            HttpError::Io(_) => "publish_io",
            HttpError::Tls(_) => "publish_tls",
            HttpError::Malformed => "publish_malformed_response",
            HttpError::Closed => "publish_closed",
        }
    }
}

/// The parts of a response head the publisher needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResponseHead {
    pub status: u16,
    pub head_len: usize,
    pub body_len: usize,
    /// The server said `Connection: close`; reconnect before the next request.
    pub close: bool,
}

/// Parses a response head at the start of `buf`. `Ok(None)`: need more bytes.
/// Bodies must be `Content-Length` framed (or absent), at most 1 MiB.
pub fn parse_response(buf: &[u8]) -> Result<Option<ResponseHead>, HttpError> {
    parse_response_limited(buf, MAX_BODY)
}

/// [`parse_response`] for bodies up to `max_body` bytes (a long-poll answer can carry a
/// session's whole backlog).
pub fn parse_response_limited(
    buf: &[u8],
    max_body: usize,
) -> Result<Option<ResponseHead>, HttpError> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    let head_len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => return Err(HttpError::Malformed),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(HttpError::Malformed),
    };
    let status = resp.code.ok_or(HttpError::Malformed)?;
    let mut body_len = 0;
    let mut close = resp.version == Some(0);
    for h in resp.headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            body_len = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok())
                .filter(|n| *n <= max_body)
                .ok_or(HttpError::Malformed)?;
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(HttpError::Malformed);
        } else if h.name.eq_ignore_ascii_case("connection") {
            close = h.value.eq_ignore_ascii_case(b"close");
        }
    }
    Ok(Some(ResponseHead {
        status,
        head_len,
        body_len,
        close,
    }))
}

/// Writes a `POST /events` request with the API key into `out`.
pub fn post_events_request(out: &mut Vec<u8>, host: &str, api_key: &str, body: &[u8]) {
    use std::io::Write;
    out.clear();
    // Writing into a Vec cannot fail.
    let _ = write!(
        out,
        "POST /events HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {api_key}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    out.extend_from_slice(body);
}

/// Writes a harness's `POST /publish/{session}` request into `out`: the event's bytes are
/// the body, no key (`target = "harness"`).
pub fn post_publish_request(out: &mut Vec<u8>, host: &str, session: &str, body: &[u8]) {
    use std::io::Write;
    out.clear();
    // Writing into a Vec cannot fail.
    let _ = write!(
        out,
        "POST /publish/{session} HTTP/1.1\r\nHost: {host}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    out.extend_from_slice(body);
}

/// A one-off blocking `GET path` (used once per run, for the node's `/latency`): returns
/// status and body. Bounded by `timeout` on connect, each write and each read. Speaks TLS
/// to a TLS target, through rustls's blocking stream.
pub fn get_blocking(
    target: &Target,
    path: &str,
    timeout: std::time::Duration,
) -> Result<(u16, Vec<u8>), HttpError> {
    let s = std::net::TcpStream::connect_timeout(&target.addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        target.host
    );
    match &target.tls {
        None => get_on(s, request.as_bytes()),
        Some(t) => {
            let session =
                rustls::ClientConnection::new(t.connector.config().clone(), t.name.clone())
                    .map_err(|e| HttpError::Tls(e.to_string()))?;
            get_on(rustls::StreamOwned::new(session, s), request.as_bytes())
        }
    }
}

/// [`get_blocking`]'s exchange on an open stream.
fn get_on(
    mut s: impl std::io::Read + std::io::Write,
    request: &[u8],
) -> Result<(u16, Vec<u8>), HttpError> {
    s.write_all(request)?;
    s.flush()?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(head) = parse_response(&buf)? {
            if buf.len() >= head.head_len + head.body_len {
                let body = buf[head.head_len..head.head_len + head.body_len].to_vec();
                return Ok((head.status, body));
            }
        }
        let n = s.read(&mut chunk)?;
        if n == 0 {
            return Err(HttpError::Closed);
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > MAX_HEAD + MAX_BODY {
            return Err(HttpError::Malformed);
        }
    }
}

/// One keep-alive HTTP/1.1 connection.
pub struct HttpConn {
    stream: Stream,
    buf: Vec<u8>,
    /// Where the last response's body starts in `buf`.
    body_at: usize,
    /// The server asked to close; the caller must reconnect.
    pub closed: bool,
}

impl HttpConn {
    /// Connects to `target` from `src` (with the TLS handshake for a TLS target).
    pub async fn connect(target: &Target, src: Option<IpAddr>) -> Result<Self, HttpError> {
        let stream = stream::dial(target, src, None).await.map_err(|e| match e {
            DialError::Connect(e) => HttpError::Io(e),
            DialError::Tls(e) => HttpError::Tls(e.to_string()),
        })?;
        Ok(HttpConn {
            stream,
            buf: Vec::with_capacity(1024),
            body_at: 0,
            closed: false,
        })
    }

    /// The body of the last response [`HttpConn::round_trip`] read.
    pub fn body(&self) -> &[u8] {
        self.buf.get(self.body_at..).unwrap_or(&[])
    }

    /// Sends `request` and reads one response; returns its status.
    pub async fn round_trip(&mut self, request: &[u8]) -> Result<u16, HttpError> {
        self.stream.send(request).await?;
        self.buf.clear();
        self.body_at = usize::MAX;
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(head) = parse_response(&self.buf)? {
                let need = head.head_len + head.body_len;
                while self.buf.len() < need {
                    let n = self.stream.read(&mut chunk).await?;
                    if n == 0 {
                        return Err(HttpError::Closed);
                    }
                    self.buf.extend_from_slice(&chunk[..n]);
                }
                self.closed = head.close;
                self.body_at = head.head_len;
                self.buf.truncate(need);
                return Ok(head.status);
            }
            let n = self.stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(HttpError::Closed);
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepted_response_parses() {
        let r = b"HTTP/1.1 202 Accepted\r\nContent-Type: application/json\r\nContent-Length: 14\r\n\r\n{\"accepted\":1}";
        let h = parse_response(r).expect("ok").expect("complete");
        assert_eq!(h.status, 202);
        assert_eq!(h.head_len + h.body_len, r.len());
        assert!(!h.close);
        assert!(parse_response(&r[..10]).expect("ok").is_none());
    }

    #[test]
    fn close_and_http10_mean_reconnect() {
        let r =
            b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Length: 0\r\n\r\n";
        assert!(parse_response(r).expect("ok").expect("complete").close);
        let r = b"HTTP/1.0 202 Accepted\r\nContent-Length: 0\r\n\r\n";
        assert!(parse_response(r).expect("ok").expect("complete").close);
    }

    #[test]
    fn bodies_over_the_limit_are_malformed() {
        let r = b"HTTP/1.1 200 OK\r\nContent-Length: 2000000\r\n\r\n";
        assert!(matches!(parse_response(r), Err(HttpError::Malformed)));
        let h = parse_response_limited(r, 4 << 20)
            .expect("ok")
            .expect("complete");
        assert_eq!(h.body_len, 2_000_000);
    }

    #[test]
    fn unframed_or_garbage_responses_are_malformed() {
        let chunked = b"HTTP/1.1 202 Accepted\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert!(matches!(parse_response(chunked), Err(HttpError::Malformed)));
        assert!(matches!(
            parse_response(b"SSH-2.0-x\r\n\r\n"),
            Err(HttpError::Malformed)
        ));
    }

    #[test]
    fn request_carries_key_and_length() {
        let mut out = Vec::new();
        post_events_request(&mut out, "127.0.0.1:3000", "k", b"{}");
        let text = String::from_utf8_lossy(&out);
        assert!(text.starts_with("POST /events HTTP/1.1\r\n"));
        assert!(text.contains("Authorization: Bearer k\r\n"));
        assert!(text.ends_with("Content-Length: 2\r\n\r\n{}"));
        post_publish_request(&mut out, "127.0.0.1:9001", "lt.1.0", b"{\"lt\":\"1:2\"}");
        let text = String::from_utf8_lossy(&out);
        assert!(text.starts_with("POST /publish/lt.1.0 HTTP/1.1\r\nHost: 127.0.0.1:9001\r\n"));
        assert!(!text.contains("Authorization"));
        assert!(text.ends_with("Content-Length: 12\r\n\r\n{\"lt\":\"1:2\"}"));
    }
}
