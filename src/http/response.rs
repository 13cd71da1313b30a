//! HTTP responses: status lines, the JSON error body, and the refusals the contract
//! names.
//!
//! Pure: builds bytes, writes nothing.

use std::borrow::Cow;

/// A request the relay answers with an error status and
/// `{"error": CODE, "message": TEXT}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub code: &'static str,
    pub message: Cow<'static, str>,
    /// Extra header lines, each ending in `\r\n`.
    pub headers: &'static str,
    /// The `reason` label to count a refused publish under, when the status alone
    /// does not say it.
    pub metric_reason: Option<&'static str>,
}

impl Refusal {
    pub fn new(status: u16, message: impl Into<Cow<'static, str>>) -> Refusal {
        Refusal {
            status,
            code: error_code(status),
            message: message.into(),
            headers: "",
            metric_reason: None,
        }
    }

    pub fn bad_request(message: impl Into<Cow<'static, str>>) -> Refusal {
        Refusal::new(400, message)
    }

    /// 426 for a wrong or missing `Sec-WebSocket-Version`.
    pub fn version() -> Refusal {
        Refusal {
            headers: "Sec-WebSocket-Version: 13\r\n",
            ..Refusal::new(426, "unsupported WebSocket version; this server speaks 13")
        }
    }

    pub fn forbidden_origin() -> Refusal {
        Refusal::new(403, "origin not allowed")
    }

    /// One answer for every token problem, so a caller learns nothing from which
    /// check failed.
    pub fn unauthorized_token() -> Refusal {
        Refusal::new(401, "missing or invalid token")
    }

    pub fn unauthorized_key() -> Refusal {
        Refusal::new(401, "missing or invalid API key")
    }

    /// 429 from a rate limiter or cap.
    pub fn rate_limited(message: &'static str) -> Refusal {
        Refusal {
            headers: "Retry-After: 1\r\n",
            ..Refusal::new(429, message)
        }
    }

    pub fn unavailable(message: &'static str) -> Refusal {
        Refusal {
            headers: "Retry-After: 1\r\n",
            ..Refusal::new(503, message)
        }
    }

    /// 503 because Redis could not take the events.
    pub fn redis_unavailable() -> Refusal {
        Refusal {
            metric_reason: Some("redis"),
            ..Refusal::unavailable("Redis is unavailable; retry later")
        }
    }

    pub fn method_not_allowed(allow: &'static str) -> Refusal {
        Refusal {
            headers: allow,
            ..Refusal::new(405, "method not allowed")
        }
    }

    /// The whole response.
    pub fn to_response(&self, keep_alive: bool) -> Vec<u8> {
        let body = serde_json::json!({"error": self.code, "message": self.message}).to_string();
        response(
            self.status,
            "application/json",
            body.as_bytes(),
            self.headers,
            keep_alive,
        )
    }
}

/// The `error` field for a status.
pub fn error_code(status: u16) -> &'static str {
    match status {
        400 => "bad_request",
        401 => "unauthorized",
        403 => "forbidden_origin",
        404 => "not_found",
        405 => "method_not_allowed",
        408 => "request_timeout",
        411 => "length_required",
        413 => "payload_too_large",
        414 => "uri_too_long",
        415 => "unsupported_media_type",
        426 => "upgrade_required",
        429 => "rate_limited",
        431 => "header_too_large",
        501 => "not_implemented",
        503 => "unavailable",
        505 => "http_version_not_supported",
        _ => "error",
    }
}

fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        202 => "Accepted",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Payload Too Large",
        414 => "URI Too Long",
        415 => "Unsupported Media Type",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}

/// A complete HTTP/1.1 response with a body, in one allocation of its exact size
/// (every publish answers with one: no formatting machinery on that path).
pub fn response(
    status: u16,
    content_type: &str,
    body: &[u8],
    extra_headers: &str,
    keep_alive: bool,
) -> Vec<u8> {
    const CLOSE: &[u8] = b"Connection: close\r\n";
    let reason = reason_phrase(status);
    let mut status_digits = [0u8; 20];
    let status_digits = decimal(u64::from(status), &mut status_digits);
    let mut len_digits = [0u8; 20];
    let len_digits = decimal(body.len() as u64, &mut len_digits);
    let parts: [&[u8]; 12] = [
        b"HTTP/1.1 ",
        status_digits,
        b" ",
        reason.as_bytes(),
        b"\r\nContent-Type: ",
        content_type.as_bytes(),
        b"\r\nContent-Length: ",
        len_digits,
        b"\r\n",
        extra_headers.as_bytes(),
        if keep_alive { b"" } else { CLOSE },
        b"\r\n",
    ];
    let mut out = Vec::with_capacity(parts.iter().map(|p| p.len()).sum::<usize>() + body.len());
    for part in parts {
        out.extend_from_slice(part);
    }
    out.extend_from_slice(body);
    out
}

/// `n` in decimal, written into the end of `buf`.
fn decimal(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[at..];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_response_is_status_line_headers_and_body_exactly() {
        assert_eq!(
            response(202, "application/json", b"{}", "", true),
            b"HTTP/1.1 202 Accepted\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
        );
        assert_eq!(
            response(200, "text/plain", b"", "Allow: GET\r\n", false),
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 0\r\nAllow: GET\r\nConnection: close\r\n\r\n"
        );
        let mut buf = [0u8; 20];
        assert_eq!(decimal(0, &mut buf), b"0");
        assert_eq!(decimal(u64::MAX, &mut buf), b"18446744073709551615");
        assert_eq!(decimal(1_048_576, &mut buf), b"1048576");
    }

    #[test]
    fn refusal_body_is_the_contract_json() {
        let r = Refusal::bad_request("field `session` is \"bad\"").to_response(false);
        let text = String::from_utf8(r).unwrap();
        assert!(text.starts_with("HTTP/1.1 400 Bad Request\r\n"));
        assert!(text.contains("Connection: close\r\n"));
        let body = text.split("\r\n\r\n").nth(1).unwrap();
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["error"], "bad_request");
        assert_eq!(v["message"], "field `session` is \"bad\"");
    }

    #[test]
    fn version_refusal_names_the_supported_version() {
        let text = String::from_utf8(Refusal::version().to_response(true)).unwrap();
        assert!(text.starts_with("HTTP/1.1 426 "));
        assert!(text.contains("Sec-WebSocket-Version: 13\r\n"));
    }
}
