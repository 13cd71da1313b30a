//! Who may connect and who may publish: JWT verification and minting, the API-key
//! check, and `Origin` matching.
//!
//! Everything here is pure (no I/O, no clock reads: callers pass `now`), so it is
//! cheap to unit-test and to fuzz. It must not know about sockets or shards.

use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

/// A secret value: never printed, never logged.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl Secret {
    pub fn new(bytes: impl Into<Vec<u8>>) -> Self {
        Secret(bytes.into())
    }
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secret(<{} bytes>)", self.0.len())
    }
}

/// What a token must look like beyond its signature.
#[derive(Debug, Clone)]
pub struct JwtRules {
    pub leeway: Duration,
    /// Longest lifetime (`exp` − `iat`, or `exp` − now without `iat`) accepted.
    pub max_lifetime: Option<Duration>,
    pub audience: Option<String>,
    pub issuer: Option<String>,
}

/// Longest token accepted; checked before any parsing so a huge token costs nothing.
pub const MAX_TOKEN_BYTES: usize = 4096;
/// Longest session id, in bytes (the contract's 128 characters of an ASCII set).
pub const MAX_SESSION_LEN: usize = 128;

/// Why a token was refused. The HTTP answer is the same for all of them (401 with
/// one message), so an attacker learns nothing; the variant goes to logs and tests.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("no token")]
    Missing,
    #[error("token longer than {MAX_TOKEN_BYTES} bytes")]
    TooLong,
    #[error("token rejected: {0}")]
    Invalid(String),
    #[error("token expired")]
    Expired,
    #[error("token issued in the future")]
    IssuedInFuture,
    #[error("session claim invalid")]
    BadSession,
    #[error("token lives longer than the configured maximum")]
    TooLongLived,
}

/// The claims the relay reads. Unknown claims are ignored.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Claims {
    pub session: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    /// A string or an array of strings (RFC 7519); jsonwebtoken checks it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    /// Every other claim (a tenant claim, for one).
    #[serde(flatten)]
    pub extra: std::collections::HashMap<String, serde_json::Value>,
}

impl Claims {
    /// The value of claim `name` as text (strings as they are, numbers printed).
    pub fn claim_text(&self, name: &str) -> Option<String> {
        match self.extra.get(name)? {
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Number(n) => Some(n.to_string()),
            _ => None,
        }
    }
}

/// True when `s` is a valid session id: 1 to 128 of `A-Z a-z 0-9 . _ : -`.
pub fn is_valid_session(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_SESSION_LEN
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// Verifies HS256 tokens against every configured secret (rotation overlap).
pub struct JwtVerifier {
    keys: Vec<DecodingKey>,
    validation: Validation,
    leeway_secs: u64,
    max_lifetime_secs: Option<u64>,
}

impl JwtVerifier {
    pub fn new(secrets: &[Secret], rules: &JwtRules) -> JwtVerifier {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.algorithms = vec![Algorithm::HS256];
        validation.leeway = rules.leeway.as_secs();
        validation.validate_exp = true;
        validation.validate_nbf = true;
        // A configured audience or issuer must be present, not merely right when present.
        let mut required = vec!["exp"];
        match &rules.audience {
            Some(aud) => {
                validation.set_audience(&[aud]);
                required.push("aud");
            }
            None => validation.validate_aud = false,
        }
        if let Some(iss) = &rules.issuer {
            validation.set_issuer(&[iss]);
            required.push("iss");
        }
        validation.set_required_spec_claims(&required);
        JwtVerifier {
            // An HMAC key can be built from any bytes; a failure would leave the key
            // out, and every token would then be refused rather than accepted.
            keys: secrets
                .iter()
                .filter_map(|s| DecodingKey::from_secret(s.expose()).ok())
                .collect(),
            validation,
            leeway_secs: rules.leeway.as_secs(),
            max_lifetime_secs: rules.max_lifetime.map(|d| d.as_secs()),
        }
    }

    /// Checks signature, algorithm, `exp`, `nbf`, `iat`, `aud`, `iss` and the session
    /// claim. `now` is seconds since the UNIX epoch.
    pub fn verify(&self, token: &str, now: u64) -> Result<Claims, TokenError> {
        if token.is_empty() {
            return Err(TokenError::Missing);
        }
        if token.len() > MAX_TOKEN_BYTES {
            return Err(TokenError::TooLong);
        }
        let mut last_err = TokenError::Invalid("no key".into());
        for key in &self.keys {
            match jsonwebtoken::decode::<Claims>(token, key, &self.validation) {
                Ok(data) => return self.check_claims(data.claims, now),
                Err(e) => {
                    use jsonwebtoken::errors::ErrorKind;
                    last_err = match e.kind() {
                        ErrorKind::ExpiredSignature => TokenError::Expired,
                        other => TokenError::Invalid(format!("{other:?}")),
                    };
                    // Only a bad signature is worth trying the next key for.
                    if !matches!(e.kind(), ErrorKind::InvalidSignature) {
                        break;
                    }
                }
            }
        }
        Err(last_err)
    }

    fn check_claims(&self, claims: Claims, now: u64) -> Result<Claims, TokenError> {
        // jsonwebtoken checks exp against the system clock; recheck with the caller's
        // clock so tests and the expiry timer agree on one notion of now.
        if claims.exp.saturating_add(self.leeway_secs) <= now {
            return Err(TokenError::Expired);
        }
        if let Some(iat) = claims.iat {
            if iat > now.saturating_add(self.leeway_secs) {
                return Err(TokenError::IssuedInFuture);
            }
        }
        if let Some(max) = self.max_lifetime_secs {
            let from = claims.iat.unwrap_or(now);
            if claims.exp.saturating_sub(from) > max.saturating_add(self.leeway_secs) {
                return Err(TokenError::TooLongLived);
            }
        }
        if !is_valid_session(&claims.session) {
            return Err(TokenError::BadSession);
        }
        Ok(claims)
    }

    /// The UNIX second after which a socket authenticated by `claims` must close.
    pub fn expires_at(&self, claims: &Claims) -> u64 {
        claims.exp.saturating_add(self.leeway_secs)
    }
}

/// Signs a token for `relay token` and for tests.
pub fn mint_token(
    secret: &Secret,
    session: &str,
    sub: Option<&str>,
    ttl: Duration,
    now: u64,
) -> Result<String, jsonwebtoken::errors::Error> {
    let claims = Claims {
        session: session.to_string(),
        sub: sub.map(str::to_string),
        exp: now + ttl.as_secs(),
        iat: Some(now),
        nbf: None,
        aud: None,
        iss: None,
        extra: Default::default(),
    };
    mint_claims(secret, &claims)
}

/// Signs arbitrary claims with HS256.
pub fn mint_claims(
    secret: &Secret,
    claims: &Claims,
) -> Result<String, jsonwebtoken::errors::Error> {
    let key = EncodingKey::from_secret(secret.expose())?;
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &key)
}

/// Which of `keys` equals `presented`, compared in constant time with each key.
pub fn api_key_index(keys: &[Secret], presented: &[u8]) -> Option<usize> {
    let mut found = None;
    for (i, key) in keys.iter().enumerate() {
        if bool::from(key.expose().ct_eq(presented)) {
            found = Some(i);
        }
    }
    found
}

/// The allowed browser origins.
///
/// A pattern is `scheme://host[:port]`. In the host, a `*` label stands for exactly
/// one DNS label (`https://*.atlassian.net` admits `https://acme.atlassian.net` but
/// not `https://a.b.atlassian.net` nor `https://atlassian.net`). A port of `*` admits
/// any port; no port admits only the scheme's default port. Matching is on the
/// parsed origin, never on substrings, so `https://atlassian.net.evil.com` and
/// `https://evilatlassian.net` do not pass.
#[derive(Debug, Clone, Default)]
pub struct OriginPolicy {
    patterns: Vec<OriginPattern>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct OriginPattern {
    scheme: String,
    /// Host labels, lowercased; `None` is a `*` label.
    labels: Vec<Option<String>>,
    /// `None`: any port.
    port: Option<u16>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("origin pattern {pattern:?}: {why}")]
pub struct OriginPatternError {
    pattern: String,
    why: &'static str,
}

/// An `Origin` header value, parsed. Only serialized origins are accepted: no path,
/// no userinfo, no trailing dot.
#[derive(Debug, PartialEq, Eq)]
struct Origin<'a> {
    scheme: &'a str,
    host: &'a str,
    port: u16,
}

fn default_port(scheme: &str) -> Option<u16> {
    match scheme {
        "http" => Some(80),
        "https" => Some(443),
        _ => None,
    }
}

fn parse_origin(value: &str) -> Option<Origin<'_>> {
    let (scheme, rest) = value.split_once("://")?;
    if !matches!(scheme, "http" | "https") {
        return None;
    }
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || p.is_empty() => {
            let port: u16 = p.parse().ok()?;
            if p.starts_with('0') || p.starts_with('+') {
                return None;
            }
            (h, port)
        }
        _ => (rest, default_port(scheme)?),
    };
    let host_ok = !host.is_empty()
        && !host.ends_with('.')
        && !host.starts_with('.')
        && !host.contains("..")
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    if !host_ok {
        return None;
    }
    Some(Origin { scheme, host, port })
}

impl OriginPolicy {
    pub fn deny_all() -> Self {
        OriginPolicy::default()
    }

    /// Parses a CSV of patterns; an empty string admits no browser origin.
    pub fn parse(csv: &str) -> Result<Self, OriginPatternError> {
        let mut patterns = Vec::new();
        for raw in csv.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let err = |why| OriginPatternError {
                pattern: raw.to_string(),
                why,
            };
            let lower = raw.to_ascii_lowercase();
            let (scheme, rest) = lower.split_once("://").ok_or(err("missing scheme://"))?;
            if !matches!(scheme, "http" | "https") {
                return Err(err("scheme must be http or https"));
            }
            let (host, port) = match rest.rsplit_once(':') {
                Some((h, "*")) => (h, None),
                Some((h, p)) => (h, Some(p.parse::<u16>().map_err(|_| err("bad port"))?)),
                None => (rest, default_port(scheme)),
            };
            if host.is_empty() || host.contains('/') || host.contains('@') {
                return Err(err("host must be a bare host name"));
            }
            let labels: Vec<Option<String>> = host
                .split('.')
                .map(|l| if l == "*" { None } else { Some(l.to_string()) })
                .collect();
            if labels
                .iter()
                .any(|l| matches!(l, Some(s) if s.is_empty() || s.contains('*')))
            {
                return Err(err("`*` must be a whole host label"));
            }
            patterns.push(OriginPattern {
                scheme: scheme.to_string(),
                labels,
                port,
            });
        }
        Ok(OriginPolicy { patterns })
    }

    /// True when the `Origin` header value is allowed. `null` and anything that is not
    /// a serialized origin never are.
    pub fn allows(&self, origin: &str) -> bool {
        let lower = origin.to_ascii_lowercase();
        let Some(o) = parse_origin(&lower) else {
            return false;
        };
        self.patterns.iter().any(|p| {
            p.scheme == o.scheme && p.port.is_none_or(|port| port == o.port) && {
                let labels: Vec<&str> = o.host.split('.').collect();
                labels.len() == p.labels.len()
                    && labels.iter().zip(&p.labels).all(|(have, want)| match want {
                        None => true,
                        Some(w) => w == have,
                    })
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000;

    fn secret() -> Secret {
        Secret::new("0123456789abcdef0123456789abcdef")
    }

    fn verifier() -> JwtVerifier {
        JwtVerifier::new(&[secret()], &JwtRules::default())
    }

    #[test]
    fn minted_token_verifies_and_names_its_session() {
        let t = mint_token(&secret(), "s1", Some("u"), Duration::from_secs(60), NOW).unwrap();
        let c = verifier().verify(&t, NOW).unwrap();
        assert_eq!(c.session, "s1");
        assert_eq!(c.sub.as_deref(), Some("u"));
    }

    #[test]
    fn any_of_several_secrets_verifies() {
        let old = Secret::new("old-old-old-old-old-old-old-old-old!");
        let v = JwtVerifier::new(&[secret(), old.clone()], &JwtRules::default());
        let t = mint_token(&old, "s1", None, Duration::from_secs(60), NOW).unwrap();
        assert!(v.verify(&t, NOW).is_ok());
    }

    #[test]
    fn expired_token_is_refused() {
        let t = mint_token(&secret(), "s1", None, Duration::from_secs(1), NOW - 100).unwrap();
        assert_eq!(verifier().verify(&t, NOW), Err(TokenError::Expired));
    }

    #[test]
    fn oversized_token_is_refused_before_parsing() {
        let t = "a".repeat(MAX_TOKEN_BYTES + 1);
        assert_eq!(verifier().verify(&t, NOW), Err(TokenError::TooLong));
    }

    #[test]
    fn wrong_secret_is_refused() {
        let other = Secret::new("another-secret-another-secret-1234");
        let t = mint_token(&other, "s1", None, Duration::from_secs(60), NOW).unwrap();
        assert!(matches!(
            verifier().verify(&t, NOW),
            Err(TokenError::Invalid(_))
        ));
    }

    #[test]
    fn session_claim_outside_the_charset_is_refused() {
        let t = mint_token(&secret(), "s 1", None, Duration::from_secs(60), NOW).unwrap();
        assert_eq!(verifier().verify(&t, NOW), Err(TokenError::BadSession));
    }

    #[test]
    fn session_charset() {
        assert!(is_valid_session("a.b_c:d-E9"));
        assert!(!is_valid_session(""));
        assert!(!is_valid_session(&"a".repeat(129)));
        assert!(!is_valid_session("a/b"));
    }

    #[test]
    fn configured_audience_and_issuer_must_be_present() {
        let rules = JwtRules {
            audience: Some("relay".into()),
            issuer: Some("backend".into()),
            ..JwtRules::default()
        };
        let v = JwtVerifier::new(&[secret()], &rules);
        let mut claims = Claims {
            session: "s1".into(),
            sub: None,
            exp: NOW + 60,
            iat: None,
            nbf: None,
            aud: None,
            iss: Some("backend".into()),
            extra: Default::default(),
        };
        let t = mint_claims(&secret(), &claims).unwrap();
        assert!(v.verify(&t, NOW).is_err(), "missing aud");
        claims.aud = Some(serde_json::json!(["other", "relay"]));
        let t = mint_claims(&secret(), &claims).unwrap();
        assert!(v.verify(&t, NOW).is_ok(), "aud array containing relay");
        claims.iss = None;
        let t = mint_claims(&secret(), &claims).unwrap();
        assert!(v.verify(&t, NOW).is_err(), "missing iss");
    }

    #[test]
    fn api_key_compare() {
        let keys = [Secret::new("k1"), Secret::new("k2")];
        assert_eq!(api_key_index(&keys, b"k2"), Some(1));
        assert_eq!(api_key_index(&keys, b"k3"), None);
        assert_eq!(api_key_index(&keys, b""), None);
    }

    #[test]
    fn wildcard_matches_one_label_only() {
        let p = OriginPolicy::parse("https://*.atlassian.net").unwrap();
        assert!(p.allows("https://acme.atlassian.net"));
        assert!(p.allows("https://ACME.atlassian.net"));
        assert!(!p.allows("https://a.b.atlassian.net"));
        assert!(!p.allows("https://atlassian.net"));
        assert!(!p.allows("https://evil.com/.atlassian.net"));
        assert!(!p.allows("https://atlassian.net.evil.com"));
        assert!(!p.allows("https://evilatlassian.net"));
        assert!(!p.allows("http://acme.atlassian.net"));
        assert!(!p.allows("https://acme.atlassian.net:8443"));
        assert!(!p.allows("https://acme.atlassian.net."));
        assert!(!p.allows("https://user@acme.atlassian.net"));
        assert!(!p.allows("null"));
    }

    #[test]
    fn port_wildcard_and_explicit_default_port() {
        let p = OriginPolicy::parse("http://localhost:*,https://app.example.com").unwrap();
        assert!(p.allows("http://localhost:5173"));
        assert!(p.allows("http://localhost"));
        assert!(p.allows("https://app.example.com:443"));
        assert!(!p.allows("https://localhost:5173"));
    }

    #[test]
    fn bad_patterns_are_refused() {
        assert!(OriginPolicy::parse("atlassian.net").is_err());
        assert!(OriginPolicy::parse("https://foo*.atlassian.net").is_err());
        assert!(OriginPolicy::parse("ftp://x").is_err());
    }
}
