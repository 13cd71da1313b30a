//! Any bytes as a request head: finding its end and parsing it never panics, and
//! the head end found incrementally equals the one found in one pass.
#![no_main]
use libfuzzer_sys::fuzz_target;
use relay::http::head::{find_head_end, parse_head, MAX_HEADERS};

fuzz_target!(|data: &[u8]| {
    let whole = find_head_end(data, 0);
    // Feed it in 7-byte reads, as a trickling client would.
    let mut scanned = 0;
    let mut incremental = None;
    let mut len = 0;
    while len < data.len() {
        len = (len + 7).min(data.len());
        if let Some(end) = find_head_end(&data[..len], scanned) {
            incremental = Some(end);
            break;
        }
        scanned = len;
    }
    assert_eq!(whole, incremental);
    if let Some(end) = whole {
        let mut storage = [httparse::EMPTY_HEADER; MAX_HEADERS];
        if let Ok(head) = parse_head(&data[..end], &mut storage) {
            let _ = head.body_framing();
            let _ = head.keep_alive();
            let _ = head.query_param("token");
            let _ = head.one("origin");
        }
    }
});
