//! Any string as a token: verification never panics and never passes, since only
//! tokens minted with the key may.
#![no_main]
use libfuzzer_sys::fuzz_target;
use relay::auth::JwtVerifier;
use relay::config::{JwtRules, Secret};

fuzz_target!(|data: &[u8]| {
    let Ok(token) = std::str::from_utf8(data) else {
        return;
    };
    let verifier = JwtVerifier::new(
        &[Secret::new("fuzz-secret-fuzz-secret-fuzz-secret!")],
        &JwtRules::default(),
    );
    assert!(verifier.verify(token, 1_800_000_000).is_err());
});
