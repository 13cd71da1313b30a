//! JWT minting: the tool signs its own HS256 tokens with the shared secret, as the publishing
//! backend would. Claims: `session`, `sub`, `iat`, `exp`.
//!
//! Owns: the signing key. Never logs a token or the secret.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;

/// Token lifetime: long enough for the longest run plus its drain.
pub const TOKEN_TTL: Duration = Duration::from_secs(2 * 3600);
/// The contract requires secrets of at least this many bytes; shorter ones cannot match a node.
pub const MIN_SECRET_BYTES: usize = 32;

#[derive(Serialize)]
struct Claims<'a> {
    session: &'a str,
    sub: &'a str,
    iat: u64,
    exp: u64,
}

/// Why a token could not be made.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// No secret was given: pass `--secret`, set `JWT_SIGNING_SECRET`, or run from the
    /// directory holding the node's `.env.local`.
    #[error("no JWT secret: pass --secret, set JWT_SIGNING_SECRET, or run where .env.local is")]
    Missing,
    /// The secret is shorter than the contract allows; the node would not have started with it.
    #[error("JWT secret is shorter than {MIN_SECRET_BYTES} bytes")]
    Weak,
    /// Signing failed (a bug on our side).
    #[error("cannot sign token: {0}")]
    Sign(#[from] jsonwebtoken::errors::Error),
}

/// Signs tokens; cheap to clone across worker threads.
#[derive(Clone)]
pub struct Minter {
    key: EncodingKey,
    header: Header,
}

impl std::fmt::Debug for Minter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Minter { key: <redacted> }")
    }
}

impl Minter {
    /// `secret` may be a comma-separated rotation list; the first entry signs.
    pub fn new(secret: &str) -> Result<Self, TokenError> {
        let first = secret.split(',').next().unwrap_or("").trim();
        if first.is_empty() {
            return Err(TokenError::Missing);
        }
        if first.len() < MIN_SECRET_BYTES {
            return Err(TokenError::Weak);
        }
        Ok(Minter {
            key: EncodingKey::from_secret(first.as_bytes())?,
            header: Header::new(Algorithm::HS256),
        })
    }

    /// A token for `session` and user `sub`, valid from now for [`TOKEN_TTL`].
    pub fn mint(&self, session: &str, sub: &str) -> Result<String, TokenError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let claims = Claims {
            session,
            sub,
            iat: now,
            exp: now + TOKEN_TTL.as_secs(),
        };
        Ok(jsonwebtoken::encode(&self.header, &claims, &self.key)?)
    }
}

/// Reads `KEY=VALUE` from a `.env.local`-style text (comments, blank lines, optional quotes
/// and `export ` are tolerated). Used to pick up secrets a `relay serve --dev` generated.
pub fn env_file_value(text: &str, key: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let line = line.trim();
        let line = line.strip_prefix("export ").unwrap_or(line);
        let (k, v) = line.split_once('=')?;
        if k.trim() != key || line.starts_with('#') {
            return None;
        }
        let v = v.trim();
        let v = v
            .strip_prefix('"')
            .and_then(|s| s.strip_suffix('"'))
            .or_else(|| v.strip_prefix('\'').and_then(|s| s.strip_suffix('\'')))
            .unwrap_or(v);
        Some(v.to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn token_is_hs256_with_the_four_claims() {
        let m = Minter::new(SECRET).expect("minter");
        let t = m.mint("s1", "u1").expect("token");
        let parts: Vec<&str> = t.split('.').collect();
        assert_eq!(parts.len(), 3);
        let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let header = engine.decode(parts[0]).expect("b64");
        assert!(String::from_utf8_lossy(&header).contains("HS256"));
        let claims: serde_json::Value =
            serde_json::from_slice(&engine.decode(parts[1]).expect("b64")).expect("json");
        assert_eq!(claims["session"], "s1");
        assert_eq!(claims["sub"], "u1");
        let iat = claims["iat"].as_u64().expect("iat");
        assert_eq!(claims["exp"].as_u64(), Some(iat + TOKEN_TTL.as_secs()));
    }

    #[test]
    fn weak_or_missing_secrets_are_refused() {
        assert!(matches!(Minter::new(""), Err(TokenError::Missing)));
        assert!(matches!(Minter::new("short"), Err(TokenError::Weak)));
        assert!(Minter::new(&format!("{SECRET},other")).is_ok());
    }

    #[test]
    fn env_file_values_are_found() {
        let text = "# generated\nexport JWT_SIGNING_SECRET=\"abc\"\nRELAY_API_KEY=k1\n";
        assert_eq!(
            env_file_value(text, "JWT_SIGNING_SECRET").as_deref(),
            Some("abc")
        );
        assert_eq!(env_file_value(text, "RELAY_API_KEY").as_deref(), Some("k1"));
        assert_eq!(env_file_value(text, "PORT"), None);
    }
}
