//! One connection to a node, whatever the scheme: [`Stream`] is plain TCP (`ws://`,
//! `http://`) or TLS over TCP (`wss://`, `https://`), and [`dial`] opens the one the
//! target asks for. Every transport and the publisher read and write through it.
//!
//! Owns: the choice between the two and the TLS handshake. A plain stream is the
//! `TcpStream` itself (one enum tag, no buffer or indirection added); the TLS state is
//! boxed so idle plain sockets stay small. May not speak HTTP or WebSocket.

use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::target::Target;

/// An open connection to a node.
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

/// Why a connection could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    /// TCP connect failed (refused, no ports left, unreachable): the node is down, or this
    /// host is out of ephemeral ports or descriptors. A later connect may succeed.
    #[error("connect: {0}")]
    Connect(io::Error),
    /// The TLS handshake failed: the certificate is not trusted (pass `--ca-file`), does
    /// not name the host, or the port does not speak TLS. Retrying will not help.
    #[error("tls: {0}")]
    Tls(io::Error),
}

/// Connects to `target` from `src` (see [`crate::net::connect`] for `rcvbuf`), then, for
/// a TLS target, runs the handshake with SNI set to the target's host name.
pub async fn dial(
    target: &Target,
    src: Option<IpAddr>,
    rcvbuf: Option<u32>,
) -> Result<Stream, DialError> {
    let tcp = crate::net::connect(target.addr, src, rcvbuf)
        .await
        .map_err(DialError::Connect)?;
    match &target.tls {
        None => Ok(Stream::Plain(tcp)),
        Some(t) => t
            .connector
            .connect(t.name.clone(), tcp)
            .await
            .map(|s| Stream::Tls(Box::new(s)))
            .map_err(DialError::Tls),
    }
}

impl Stream {
    /// The TCP connection underneath (for socket options).
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(s) => s,
            Stream::Tls(s) => s.get_ref().0,
        }
    }

    /// Writes all of `bytes` and, over TLS, flushes the records rustls still holds: a
    /// request is on the wire when this returns.
    pub async fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.write_all(bytes).await,
            Stream::Tls(s) => {
                s.write_all(bytes).await?;
                s.flush().await
            }
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    /// Plain: FIN. TLS: close_notify, then FIN.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
