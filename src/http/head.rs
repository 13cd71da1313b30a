//! HTTP/1.1 request heads: finding the end, parsing with httparse, and the few
//! header facts the relay acts on.
//!
//! Sans-IO: the caller owns the buffer and the socket. [`find_head_end`] scans only
//! the bytes that are new since the last call, so a head trickled one byte at a time
//! costs linear time, and [`parse_head`] runs once per request.

use std::str;

/// Headers one request may carry; more is answered 431.
pub const MAX_HEADERS: usize = 64;
/// Longest request target (path and query): a token in the query is ~1 KiB, so
/// 8 KiB is room to spare; longer is answered 414.
pub const MAX_URI_BYTES: usize = 8 * 1024;

/// Why a request head was refused. Each maps to one status; the client's fault.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HeadError {
    #[error("request head larger than the limit")]
    TooLarge,
    #[error("more than {MAX_HEADERS} headers")]
    TooManyHeaders,
    #[error("malformed request head: {0}")]
    Malformed(&'static str),
    #[error("unsupported HTTP version")]
    Version,
    #[error("request target longer than {MAX_URI_BYTES} bytes")]
    UriTooLong,
}

impl HeadError {
    pub fn status(&self) -> u16 {
        match self {
            HeadError::TooLarge | HeadError::TooManyHeaders => 431,
            HeadError::Malformed(_) => 400,
            HeadError::Version => 505,
            HeadError::UriTooLong => 414,
        }
    }
}

/// Returns the length of the head (through the blank line) once `buf` holds one.
/// `scanned` is how many bytes earlier calls already looked at; the scan restarts
/// three bytes before it so a terminator split across reads is found.
pub fn find_head_end(buf: &[u8], scanned: usize) -> Option<usize> {
    let start = scanned.saturating_sub(3);
    buf.get(start..)?
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| start + i + 4)
}

/// A parsed request head, borrowing the connection's buffer.
#[derive(Debug)]
pub struct RequestHead<'h, 'b> {
    pub method: &'b str,
    /// The path without the query.
    pub path: &'b str,
    pub query: Option<&'b str>,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor_version: u8,
    pub headers: &'h [httparse::Header<'b>],
}

/// Parses a complete head (as delimited by [`find_head_end`]).
pub fn parse_head<'h, 'b>(
    head: &'b [u8],
    storage: &'h mut [httparse::Header<'b>; MAX_HEADERS],
) -> Result<RequestHead<'h, 'b>, HeadError> {
    let mut req = httparse::Request::new(storage);
    let status = req.parse(head).map_err(|e| match e {
        httparse::Error::TooManyHeaders => HeadError::TooManyHeaders,
        httparse::Error::Version => HeadError::Version,
        httparse::Error::HeaderName => HeadError::Malformed("bad header name"),
        httparse::Error::HeaderValue => HeadError::Malformed("bad header value"),
        httparse::Error::NewLine => HeadError::Malformed("bad line ending"),
        httparse::Error::Token => HeadError::Malformed("bad request line"),
        httparse::Error::Status => HeadError::Malformed("bad request line"),
    })?;
    if status.is_partial() {
        return Err(HeadError::Malformed("incomplete head"));
    }
    let method = req.method.ok_or(HeadError::Malformed("no method"))?;
    let target = req.path.ok_or(HeadError::Malformed("no request target"))?;
    if target.len() > MAX_URI_BYTES {
        return Err(HeadError::UriTooLong);
    }
    let minor_version = req.version.ok_or(HeadError::Version)?;
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    if !path.starts_with('/') {
        return Err(HeadError::Malformed("request target must be a path"));
    }
    let headers: &'h [httparse::Header<'b>] = req.headers;
    Ok(RequestHead {
        method,
        path,
        query,
        minor_version,
        headers,
    })
}

impl<'b> RequestHead<'_, 'b> {
    /// Values of every header called `name` (case-insensitive), as text.
    pub fn all(&self, name: &'static str) -> impl Iterator<Item = &'b str> + '_ {
        self.headers
            .iter()
            .filter(move |h| h.name.eq_ignore_ascii_case(name))
            .map(|h| str::from_utf8(h.value).unwrap_or("\u{fffd}"))
    }

    /// The value of header `name` when it appears exactly once.
    pub fn one(&self, name: &'static str) -> Result<Option<&'b str>, HeadError> {
        let mut it = self.all(name);
        let first = it.next();
        if it.next().is_some() {
            return Err(HeadError::Malformed(
                "a header that must appear once is repeated",
            ));
        }
        Ok(first)
    }

    /// True when header `name` is a comma-separated list containing `token`.
    pub fn has_token(&self, name: &'static str, token: &str) -> bool {
        self.all(name)
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }

    /// The value of a `name=value` query parameter (not percent-decoded: the values
    /// the relay reads, JWTs, are URL-safe).
    pub fn query_param(&self, name: &str) -> Option<&'b str> {
        self.query?
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v)
    }

    /// Whether the client wants the connection kept after this request.
    pub fn keep_alive(&self) -> bool {
        if self.has_token("connection", "close") {
            return false;
        }
        self.minor_version == 1 || self.has_token("connection", "keep-alive")
    }

    /// The body length the head declares.
    pub fn body_framing(&self) -> Result<BodyFraming, HeadError> {
        if self.all("transfer-encoding").next().is_some() {
            if self.all("content-length").next().is_some() {
                return Err(HeadError::Malformed(
                    "both Content-Length and Transfer-Encoding",
                ));
            }
            return Ok(BodyFraming::TransferEncoded);
        }
        match self.one("content-length")? {
            None => Ok(BodyFraming::None),
            Some(v) => {
                let v = v.trim();
                if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) || v.len() > 15 {
                    return Err(HeadError::Malformed("bad Content-Length"));
                }
                v.parse()
                    .map(BodyFraming::Length)
                    .map_err(|_| HeadError::Malformed("bad Content-Length"))
            }
        }
    }
}

/// How the body of a request is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    None,
    Length(u64),
    /// `Transfer-Encoding` of any kind: not supported on `POST /events`.
    TransferEncoded,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(raw: &[u8]) -> Result<(String, Option<String>, u8), HeadError> {
        let mut storage = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let h = parse_head(raw, &mut storage)?;
        Ok((
            h.path.to_string(),
            h.query.map(str::to_string),
            h.minor_version,
        ))
    }

    #[test]
    fn head_end_found_across_reads() {
        let buf = b"GET / HTTP/1.1\r\nHost: x\r\n\r\nextra";
        assert_eq!(find_head_end(&buf[..20], 0), None);
        assert_eq!(find_head_end(&buf[..27], 20), Some(27));
        assert_eq!(find_head_end(buf, 0), Some(27));
    }

    #[test]
    fn path_and_query_split() {
        let (p, q, v) = parse(b"GET /ws?token=abc&x=1 HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
        assert_eq!(p, "/ws");
        assert_eq!(q.as_deref(), Some("token=abc&x=1"));
        assert_eq!(v, 1);
    }

    #[test]
    fn garbage_is_malformed() {
        assert!(matches!(
            parse(b"\x00\x01\r\n\r\n"),
            Err(HeadError::Malformed(_))
        ));
    }

    #[test]
    fn too_many_headers_is_431() {
        let mut raw = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..(MAX_HEADERS + 1) {
            raw.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
        }
        raw.extend_from_slice(b"\r\n");
        assert_eq!(parse(&raw).unwrap_err().status(), 431);
    }

    #[test]
    fn conflicting_framing_is_refused() {
        let raw =
            b"POST /events HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n";
        let mut storage = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let h = parse_head(raw, &mut storage).unwrap();
        assert!(h.body_framing().is_err());
    }

    #[test]
    fn content_length_must_be_digits() {
        for bad in ["-1", "1e3", "", "0x10", "99999999999999999999"] {
            let raw = format!("POST / HTTP/1.1\r\nContent-Length: {bad}\r\n\r\n");
            let mut storage = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let h = parse_head(raw.as_bytes(), &mut storage).unwrap();
            assert!(h.body_framing().is_err(), "{bad}");
        }
    }

    #[test]
    fn keep_alive_defaults_by_version() {
        let mut storage = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let h = parse_head(b"GET / HTTP/1.0\r\n\r\n", &mut storage).unwrap();
        assert!(!h.keep_alive());
        let mut storage = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let h = parse_head(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n", &mut storage).unwrap();
        assert!(!h.keep_alive());
    }
}
