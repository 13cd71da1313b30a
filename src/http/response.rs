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

/// A complete HTTP/1.1 response with a body.
pub fn response(
    status: u16,
    content_type: &str,
    body: &[u8],
    extra_headers: &str,
    keep_alive: bool,
) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{extra_headers}{}\r\n",
        reason_phrase(status),
        body.len(),
        if keep_alive { "" } else { "Connection: close\r\n" },
    )
    .into_bytes();
    out.extend_from_slice(body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

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
