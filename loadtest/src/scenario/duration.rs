//! Durations as scenario files and `--set` write them: `"10s"`, `"250ms"`, `"2m"`,
//! `"1h"`, `"500us"` or a number of seconds ([`Dur`]), read and written back the same way.
//!
//! Owns: the duration syntax. May not know any scenario field or its range.

use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::error::ScenarioError;

/// A duration written as `"10s"`, `"250ms"`, `"2m"`, `"1h"`, `"500us"` or a number of seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Dur(pub Duration);

impl Dur {
    pub const fn secs(s: u64) -> Self {
        Dur(Duration::from_secs(s))
    }
    pub const fn millis(ms: u64) -> Self {
        Dur(Duration::from_millis(ms))
    }
}

/// Parses `"10s"`, `"1.5s"`, `"250ms"`, `"500us"`, `"2m"`, `"1h"`, or bare seconds `"10"`.
pub fn parse_duration(text: &str) -> Result<Duration, ScenarioError> {
    let t = text.trim();
    let bad = || ScenarioError::BadDuration(text.to_owned());
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num.parse().map_err(|_| bad())?;
    let scale = match unit.trim() {
        "" | "s" => 1.0,
        "ms" => 1e-3,
        "us" | "µs" => 1e-6,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        _ => return Err(bad()),
    };
    let secs = value * scale;
    if !secs.is_finite() || !(0.0..=1e9).contains(&secs) {
        return Err(bad());
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Formats a duration the way [`parse_duration`] reads it.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if d.subsec_millis() == 0 && d.as_nanos() % 1_000_000 == 0 && ms % 1000 == 0 {
        format!("{}s", d.as_secs())
    } else if d.as_nanos() % 1_000_000 == 0 {
        format!("{ms}ms")
    } else {
        format!("{}us", d.as_micros())
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u64),
            Float(f64),
            Text(String),
        }
        let d = match Raw::deserialize(de)? {
            Raw::Int(s) => Duration::from_secs(s),
            Raw::Float(s) if s.is_finite() && (0.0..1e9).contains(&s) => Duration::from_secs_f64(s),
            Raw::Float(s) => return Err(serde::de::Error::custom(format!("bad duration {s}"))),
            Raw::Text(t) => parse_duration(&t).map_err(serde::de::Error::custom)?,
        };
        Ok(Dur(d))
    }
}

impl Serialize for Dur {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_duration(self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_in_every_unit() {
        assert_eq!(parse_duration("10s").ok(), Some(Duration::from_secs(10)));
        assert_eq!(
            parse_duration("1.5s").ok(),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(
            parse_duration("250ms").ok(),
            Some(Duration::from_millis(250))
        );
        assert_eq!(parse_duration("2m").ok(), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("7").ok(), Some(Duration::from_secs(7)));
        assert_eq!(
            parse_duration("500us").ok(),
            Some(Duration::from_micros(500))
        );
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("5 parsecs").is_err());
        assert_eq!(format_duration(Duration::from_millis(1500)), "1500ms");
        assert_eq!(format_duration(Duration::from_secs(3)), "3s");
    }
}
