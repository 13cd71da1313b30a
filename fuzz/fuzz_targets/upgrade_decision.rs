//! Any request bytes through the upgrade decision: never panics, and only a
//! contract status comes out. Without a token minted with the key, nothing passes.
#![no_main]
use libfuzzer_sys::fuzz_target;
use relay::auth::{JwtVerifier, OriginPolicy};
use relay::config::{JwtRules, Secret};
use relay::http::head::{find_head_end, parse_head, MAX_HEADERS};
use relay::ws::upgrade::decide;

fuzz_target!(|data: &[u8]| {
    let Some(end) = find_head_end(data, 0) else {
        return;
    };
    let mut storage = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let Ok(head) = parse_head(&data[..end], &mut storage) else {
        return;
    };
    let verifier = JwtVerifier::new(
        &[Secret::new("fuzz-secret-fuzz-secret-fuzz-secret!")],
        &JwtRules::default(),
    );
    let origins = OriginPolicy::parse("https://*.atlassian.net").expect("pattern");
    match decide(&head, &verifier, &origins, 1_800_000_000) {
        Ok(_) => panic!("an upgrade passed without a valid token"),
        Err(r) => assert!(matches!(r.status, 400 | 401 | 403 | 426), "status {}", r.status),
    }
});
