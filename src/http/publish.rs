//! The `POST /events` body: one event or a batch, validated whole before any of it
//! is routed, with each event's `data` kept as the exact bytes the publisher sent.
//!
//! simd-json validates the document and finds its structural characters; this
//! module then walks those structural offsets over the original bytes to cut out
//! each member's raw value. Nothing is re-serialized, so `data` is forwarded byte
//! for byte (whitespace, number spelling and escapes included).
//!
//! Pure: no I/O, no routing. The caller decides what to do with a [`PublishBatch`].

use std::ops::Range;

use crate::auth::is_valid_session;

/// Longest `event` name, in bytes of its JSON literal.
pub const MAX_EVENT_NAME_BYTES: usize = 256;
/// Longest `id`, in bytes of its JSON literal.
pub const MAX_ID_BYTES: usize = 130;

/// A refused body: the status to answer and a message naming the problem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct PublishError {
    /// 400 for malformed or invalid content, 413 for a batch over the limit.
    pub status: u16,
    pub message: String,
}

impl PublishError {
    fn bad(message: impl Into<String>) -> Self {
        PublishError {
            status: 400,
            message: message.into(),
        }
    }
}

/// A session name, as it appeared in the body when it needed no unescaping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionRef {
    /// Byte range of the name (without quotes) in the body.
    Raw(Range<u32>),
    /// The name, unescaped, when the publisher wrote escapes.
    Owned(Box<str>),
}

/// One validated event: byte ranges into [`PublishBatch::body`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventSpans {
    pub session: SessionRef,
    /// The `event` value's JSON string literal, quotes included.
    pub event: Range<u32>,
    /// The `id` value's JSON string literal, quotes included.
    pub id: Option<Range<u32>>,
    /// The `data` value's bytes, exactly as sent.
    pub data: Range<u32>,
}

/// A whole validated body.
#[derive(Debug)]
pub struct PublishBatch {
    pub body: Vec<u8>,
    pub events: Vec<EventSpans>,
}

impl PublishBatch {
    pub fn session<'a>(&'a self, ev: &'a EventSpans) -> &'a str {
        match &ev.session {
            SessionRef::Owned(s) => s,
            // Raw ranges are only made from ASCII that passed `is_valid_session`.
            SessionRef::Raw(r) => std::str::from_utf8(&self.body[range(r)]).unwrap_or(""),
        }
    }

    pub fn bytes(&self, r: &Range<u32>) -> &[u8] {
        &self.body[range(r)]
    }
}

fn range(r: &Range<u32>) -> Range<usize> {
    r.start as usize..r.end as usize
}

/// Buffers reused across bodies on one shard, so parsing allocates nothing once warm.
pub struct PublishParser {
    scratch: Vec<u8>,
    buffers: simd_json::Buffers,
}

impl Default for PublishParser {
    fn default() -> Self {
        PublishParser {
            scratch: Vec::new(),
            buffers: simd_json::Buffers::new(4096),
        }
    }
}

impl PublishParser {
    /// Validates `body` as one event or a batch of at most `max_batch` events.
    pub fn parse(&mut self, body: Vec<u8>, max_batch: usize) -> Result<PublishBatch, PublishError> {
        if body.len() >= u32::MAX as usize {
            return Err(PublishError {
                status: 413,
                message: "body too large".into(),
            });
        }
        self.scratch.clear();
        self.scratch.extend_from_slice(&body);
        self.scratch
            .resize(body.len() + simd_json::INPUT_PADDING, 0);
        let mut tape = simd_json::Tape::null();
        simd_json::fill_tape_padded(&mut self.scratch, body.len(), &mut self.buffers, &mut tape)
            .map_err(|e| PublishError::bad(format!("malformed JSON: {e}")))?;
        drop(tape);
        let walker = Walker {
            body: &body,
            structurals: self.buffers.structural_indexes(),
        };
        let events = walker.events(max_batch)?;
        Ok(PublishBatch { body, events })
    }
}

/// Walks simd-json's structural offsets over a document it has validated.
struct Walker<'a> {
    body: &'a [u8],
    structurals: &'a [u32],
}

/// One member of an object: its key's unescaped text and its value's position.
struct Member<'a> {
    /// Borrowed from the body unless the key has escapes.
    key: std::borrow::Cow<'a, str>,
    /// Index of the value's first structural.
    value_at: usize,
    span: Range<u32>,
}

impl<'a> Walker<'a> {
    fn byte_at(&self, idx: usize) -> u8 {
        self.structurals
            .get(idx)
            .and_then(|&p| self.body.get(p as usize))
            .copied()
            .unwrap_or(0)
    }

    fn pos(&self, idx: usize) -> u32 {
        self.structurals
            .get(idx)
            .copied()
            .unwrap_or(self.body.len() as u32)
    }

    /// Index of the first structural after the value starting at `idx`.
    fn skip_value(&self, idx: usize) -> usize {
        match self.byte_at(idx) {
            b'{' | b'[' => {
                let mut depth = 0usize;
                let mut i = idx;
                while i < self.structurals.len() {
                    match self.byte_at(i) {
                        b'{' | b'[' => depth += 1,
                        b'}' | b']' => {
                            depth -= 1;
                            if depth == 0 {
                                return i + 1;
                            }
                        }
                        _ => {}
                    }
                    i += 1;
                }
                i
            }
            _ => idx + 1,
        }
    }

    /// The raw span of the value at `idx`, ending before the structural `end`.
    fn span(&self, idx: usize, end: usize) -> Range<u32> {
        let start = self.pos(idx);
        let mut stop = self.pos(end);
        while stop > start && self.body[stop as usize - 1].is_ascii_whitespace() {
            stop -= 1;
        }
        start..stop
    }

    /// The members of the object whose `{` is structural `idx`.
    fn members(&self, idx: usize) -> Result<Vec<Member<'a>>, PublishError> {
        let mut out = Vec::new();
        if self.byte_at(idx + 1) == b'}' {
            return Ok(out);
        }
        let mut i = idx + 1;
        loop {
            let key_span = self.span(i, i + 1);
            let body: &'a [u8] = self.body;
            let key = unescape_key(&body[range(&key_span)])?;
            if out.iter().any(|m: &Member| m.key == key) {
                return Err(PublishError::bad(format!("duplicate field `{key}`")));
            }
            let value_at = i + 2;
            let next = self.skip_value(value_at);
            out.push(Member {
                key,
                value_at,
                span: self.span(value_at, next),
            });
            match self.byte_at(next) {
                b',' => i = next + 1,
                _ => return Ok(out),
            }
        }
    }

    /// Indices of the elements of the array whose `[` is structural `idx`.
    fn elements(&self, idx: usize) -> Vec<usize> {
        let mut out = Vec::new();
        if self.byte_at(idx + 1) == b']' {
            return out;
        }
        let mut i = idx + 1;
        loop {
            out.push(i);
            let next = self.skip_value(i);
            match self.byte_at(next) {
                b',' => i = next + 1,
                _ => return out,
            }
        }
    }

    fn events(&self, max_batch: usize) -> Result<Vec<EventSpans>, PublishError> {
        if self.byte_at(0) != b'{' {
            return Err(PublishError::bad("body must be a JSON object"));
        }
        let members = self.members(0)?;
        let Some(batch) = members.iter().find(|m| m.key == "events") else {
            return Ok(vec![self.event(&members, "")?]);
        };
        if members.len() > 1 {
            return Err(PublishError::bad(
                "a batch body has only the field `events`",
            ));
        }
        if self.byte_at(batch.value_at) != b'[' {
            return Err(PublishError::bad("field `events` must be an array"));
        }
        let elements = self.elements(batch.value_at);
        if elements.is_empty() {
            return Err(PublishError::bad("field `events` must not be empty"));
        }
        if elements.len() > max_batch {
            return Err(PublishError {
                status: 413,
                message: format!(
                    "batch of {} events is over the limit of {max_batch}",
                    elements.len()
                ),
            });
        }
        let mut events = Vec::with_capacity(elements.len());
        for (n, &at) in elements.iter().enumerate() {
            let ctx = format!("events[{n}].");
            if self.byte_at(at) != b'{' {
                return Err(PublishError::bad(format!(
                    "`events[{n}]` must be an object"
                )));
            }
            events.push(self.event(&self.members(at)?, &ctx)?);
        }
        Ok(events)
    }

    fn event(&self, members: &[Member], ctx: &str) -> Result<EventSpans, PublishError> {
        let field = |name: &str| members.iter().find(|m| m.key == name);
        let string_field = |name: &str, max: usize| -> Result<Option<Range<u32>>, PublishError> {
            let Some(m) = field(name) else {
                return Ok(None);
            };
            if self.byte_at(m.value_at) != b'"' {
                return Err(PublishError::bad(format!(
                    "field `{ctx}{name}` must be a string"
                )));
            }
            let len = (m.span.end - m.span.start) as usize;
            if len <= 2 {
                return Err(PublishError::bad(format!(
                    "field `{ctx}{name}` must not be empty"
                )));
            }
            if len > max {
                return Err(PublishError::bad(format!(
                    "field `{ctx}{name}` is longer than {} bytes",
                    max - 2
                )));
            }
            Ok(Some(m.span.clone()))
        };
        let session_span = string_field("session", 2 + 6 * crate::auth::MAX_SESSION_LEN)?
            .ok_or_else(|| PublishError::bad(format!("missing field `{ctx}session`")))?;
        let raw = &self.body[range(&session_span)];
        let session = if raw.contains(&b'\\') {
            SessionRef::Owned(unescape_string(raw)?.into_boxed_str())
        } else {
            SessionRef::Raw(session_span.start + 1..session_span.end - 1)
        };
        let name = match &session {
            SessionRef::Owned(s) => s.as_ref(),
            SessionRef::Raw(r) => std::str::from_utf8(&self.body[range(r)]).unwrap_or(""),
        };
        if !is_valid_session(name) {
            return Err(PublishError::bad(format!(
                "field `{ctx}session` must be 1 to 128 characters of A-Z a-z 0-9 . _ : -"
            )));
        }
        let event = string_field("event", MAX_EVENT_NAME_BYTES)?
            .ok_or_else(|| PublishError::bad(format!("missing field `{ctx}event`")))?;
        let id = string_field("id", MAX_ID_BYTES)?;
        let data = field("data")
            .map(|m| m.span.clone())
            .ok_or_else(|| PublishError::bad(format!("missing field `{ctx}data`")))?;
        Ok(EventSpans {
            session,
            event,
            id,
            data,
        })
    }
}

/// The text of a JSON string literal (quotes included), unescaped.
/// A key's text: borrowed when it has no escapes (the usual case), so a request's
/// fields cost no allocation each.
fn unescape_key(literal: &[u8]) -> Result<std::borrow::Cow<'_, str>, PublishError> {
    if literal.len() >= 2 && !literal.contains(&b'\\') {
        return std::str::from_utf8(&literal[1..literal.len() - 1])
            .map(std::borrow::Cow::Borrowed)
            .map_err(|_| PublishError::bad("invalid UTF-8 in a string"));
    }
    unescape_string(literal).map(std::borrow::Cow::Owned)
}

fn unescape_string(literal: &[u8]) -> Result<String, PublishError> {
    if literal.len() >= 2 && !literal.contains(&b'\\') {
        return std::str::from_utf8(&literal[1..literal.len() - 1])
            .map(str::to_string)
            .map_err(|_| PublishError::bad("invalid UTF-8 in a string"));
    }
    serde_json::from_slice(literal).map_err(|_| PublishError::bad("expected a JSON string"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: &str) -> Result<PublishBatch, PublishError> {
        PublishParser::default().parse(body.as_bytes().to_vec(), 1000)
    }

    fn data_of(body: &str) -> Vec<String> {
        let b = parse(body).unwrap();
        b.events
            .iter()
            .map(|e| String::from_utf8(b.bytes(&e.data).to_vec()).unwrap())
            .collect()
    }

    #[test]
    fn single_event_data_is_byte_exact() {
        let body = r#"{"session":"s1","event":"a","data": { "x" : [1, 2.50, 1e+2, "\u00e9"] } }"#;
        assert_eq!(
            data_of(body),
            vec![r#"{ "x" : [1, 2.50, 1e+2, "\u00e9"] }"#]
        );
    }

    #[test]
    fn batch_keeps_order_and_scalars() {
        let body = r#"{"events":[{"session":"s1","event":"a","data":1},
            {"session":"s2","event":"b","data":null},{"data":"x,}]","session":"s3","event":"c"}]}"#;
        assert_eq!(data_of(body), vec!["1", "null", r#""x,}]""#]);
        let b = parse(body).unwrap();
        assert_eq!(b.session(&b.events[2]), "s3");
    }

    #[test]
    fn escaped_session_is_unescaped_and_checked() {
        let b = parse(r#"{"session":"s\u0031","event":"a","data":0}"#).unwrap();
        assert_eq!(b.session(&b.events[0]), "s1");
    }

    #[test]
    fn raw_spans_match_serde_json_raw_values() {
        let bodies = [
            r#"{"session":"a","event":"e","data":{"nested":{"deep":[[[]],{}]},"s":"q\"uote"}}"#,
            r#"{ "data" : 12345678901234567890 , "event" : "e" , "session" : "a" }"#,
            r#"{"session":"a","event":"e","data":[ "}" , "]" , "\\" ] ,"id":"i-1"}"#,
            "{\"session\":\"a\",\"event\":\"e\",\"data\":\t\n true\n}",
        ];
        for body in bodies {
            let v: std::collections::HashMap<String, Box<serde_json::value::RawValue>> =
                serde_json::from_str(body).unwrap();
            assert_eq!(data_of(body), vec![v["data"].get().to_string()], "{body}");
        }
    }

    #[test]
    fn missing_fields_are_named() {
        let e = parse(r#"{"event":"a","data":1}"#).unwrap_err();
        assert_eq!(e.message, "missing field `session`");
        let e =
            parse(r#"{"events":[{"session":"s","event":"a","data":1},{"session":"s","data":1}]}"#)
                .unwrap_err();
        assert_eq!(e.message, "missing field `events[1].event`");
        let e = parse(r#"{"session":"s","event":"a"}"#).unwrap_err();
        assert_eq!(e.message, "missing field `data`");
    }

    #[test]
    fn invalid_values_are_400() {
        for body in [
            r#"{"session":"bad session","event":"a","data":1}"#,
            r#"{"session":1,"event":"a","data":1}"#,
            r#"{"session":"s","event":"","data":1}"#,
            r#"{"session":"s","event":"a","data":1,"id":7}"#,
            r#"{"session":"s","session":"t","event":"a","data":1}"#,
            r#"{"events":[]}"#,
            r#"{"events":{}}"#,
            r#"[1,2]"#,
            r#"{"session":"s","event":"a","data":1"#,
            "",
        ] {
            assert_eq!(parse(body).unwrap_err().status, 400, "{body}");
        }
    }

    #[test]
    fn oversized_batch_is_413() {
        let one = r#"{"session":"s","event":"a","data":1}"#;
        let body = format!("{{\"events\":[{}]}}", [one; 3].join(","));
        let err = PublishParser::default()
            .parse(body.into_bytes(), 2)
            .unwrap_err();
        assert_eq!(err.status, 413);
    }
}
