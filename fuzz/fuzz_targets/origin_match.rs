//! Origin matching against a simple reference: the fuzzed origin is allowed by
//! `https://*.atlassian.net` exactly when the reference says so.
#![no_main]
use libfuzzer_sys::fuzz_target;
use relay::auth::OriginPolicy;

/// The rule, written as plainly as possible: `https://LABEL.atlassian.net` with
/// an optional `:443`, LABEL one non-empty DNS label, compared case-insensitively.
fn reference(origin: &str) -> bool {
    let o = origin.to_ascii_lowercase();
    let Some(rest) = o.strip_prefix("https://") else {
        return false;
    };
    let host = rest.strip_suffix(":443").unwrap_or(rest);
    let Some(label) = host.strip_suffix(".atlassian.net") else {
        return false;
    };
    !label.is_empty()
        && label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

fuzz_target!(|data: &[u8]| {
    let Ok(origin) = std::str::from_utf8(data) else {
        return;
    };
    let policy = OriginPolicy::parse("https://*.atlassian.net").expect("pattern");
    assert_eq!(policy.allows(origin), reference(origin), "{origin:?}");
});
