//! From text to a [`Scenario`]: read the file, apply `--set key=value` overrides on top
//! of it, deserialize, validate; and the error a refused scenario reports.
//!
//! Owns: the precedence file → overrides and [`ScenarioError`]. May not define fields or
//! their ranges (the schema in `scenario`, the ranges in `validate`).

use std::path::Path;

use super::error::ScenarioError;
use super::Scenario;

/// Reads a scenario file and applies overrides (`key=value`, value in TOML syntax or bare text).
pub fn load(path: &Path, overrides: &[String]) -> Result<Scenario, ScenarioError> {
    let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Read {
        path: path.display().to_string(),
        source,
    })?;
    from_str(&text, overrides)
}

/// Parses scenario text, applies overrides, validates.
pub fn from_str(text: &str, overrides: &[String]) -> Result<Scenario, ScenarioError> {
    let mut table: toml::Table =
        toml::from_str(text).map_err(|e| ScenarioError::Parse(e.to_string()))?;
    for item in overrides {
        let (key, value) = parse_override(item)?;
        table.insert(key, value);
    }
    let scenario: Scenario = table
        .try_into()
        .map_err(|e: toml::de::Error| ScenarioError::Parse(e.to_string()))?;
    scenario.validate()?;
    Ok(scenario)
}

/// Splits `key=value`; the key's dashes become underscores; the value is read as TOML when it
/// parses (`10`, `1.5`, `true`, `["a","b"]`, `"x"`) and taken as a string otherwise (`10s`).
pub fn parse_override(item: &str) -> Result<(String, toml::Value), ScenarioError> {
    let (key, raw) = item
        .split_once('=')
        .ok_or_else(|| ScenarioError::BadOverride(item.to_owned()))?;
    let key = key.trim().replace('-', "_");
    if key.is_empty() {
        return Err(ScenarioError::BadOverride(item.to_owned()));
    }
    let raw = raw.trim();
    let value = toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_owned()));
    Ok((key, value))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::tests::FANOUT;
    use crate::scenario::Dur;

    #[test]
    fn overrides_win_over_the_file_and_accept_dashes_and_bare_text() {
        let s = from_str(
            FANOUT,
            &[
                "sockets-per-session=3".into(),
                "duration=250ms".into(),
                "url=http://127.0.0.1:4000".into(),
                "rate=12.5".into(),
            ],
        )
        .expect("valid");
        assert_eq!(s.sockets_per_session, 3);
        assert_eq!(s.duration, Dur::millis(250));
        assert_eq!(s.url, "http://127.0.0.1:4000");
        assert!((s.rate - 12.5).abs() < 1e-9);
    }

    #[test]
    fn unknown_field_is_refused() {
        let err = from_str("kind = \"fanout\"\nsokets = 3\n", &[]).unwrap_err();
        assert!(err.to_string().contains("sokets"), "{err}");
    }

    #[test]
    fn override_without_equals_is_refused() {
        assert!(matches!(
            parse_override("rate"),
            Err(ScenarioError::BadOverride(_))
        ));
    }
}
