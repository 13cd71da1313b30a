//! Why a scenario was refused ([`ScenarioError`]), one variant per step that failed.
//!
//! Owns: the error type only, so that reading, durations and validation can all return
//! it without depending on each other. May not import any other scenario module.

/// Why a scenario was refused. The message is meant for the person who wrote the file.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// The file could not be read: check the path.
    #[error("cannot read scenario {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    /// The file is not valid TOML or has a field of the wrong type: fix the file.
    #[error("scenario is not valid: {0}")]
    Parse(String),
    /// An override was not `key=value`.
    #[error("override {0:?} is not key=value")]
    BadOverride(String),
    /// A duration could not be read.
    #[error("bad duration {0:?} (use e.g. 10s, 250ms, 2m)")]
    BadDuration(String),
    /// A field is out of its range; the message says which and why.
    #[error("scenario field `{field}`: {why}")]
    Invalid { field: &'static str, why: String },
}
