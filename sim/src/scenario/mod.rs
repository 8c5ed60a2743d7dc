//! Scenario files: what researchers write to describe a run.
//!
//! # Layout
//! - [`model`]: the file's shape, one `deny_unknown_fields` struct per table.
//! - [`units`]: durations (`"12s"`), signed offsets, `{ min, max }` spreads.
//! - [`locate`]: field path ↔ line and column, so every error is located.
//! - [`parse`]: TOML text → [`model::RawScenario`].
//! - [`validate`]: names resolved, defaults applied, every value checked →
//!   [`spec::Scenario`].
//! - [`resolve`]: scenario + seed (+ matrix cell, + swarm) → [`resolve::Plan`],
//!   the resolved knobs and a concrete timeline.
//! - [`error`]: `file:line:column: field.path: message` errors.
//!
//! The format itself is documented for its readers in `scenarios/README.md`
//! and for editors in `scenarios/scenario.schema.json`.

pub mod error;
pub mod locate;
pub mod model;
pub mod parse;
pub mod resolve;
pub mod spec;
pub mod units;
pub mod validate;

pub use error::{LoadError, ScenarioError};
pub use spec::Scenario;

/// Largest scenario file read: scenarios are a few kilobytes; the bound
/// stops a wrong path (a log, a binary) from being read whole.
pub const SCENARIO_BYTES_MAX: u64 = 1024 * 1024;

/// Parses and validates scenario `text`; `file` names it in errors.
pub fn from_str(file: &str, text: &str) -> Result<Scenario, LoadError> {
    if text.len() as u64 > SCENARIO_BYTES_MAX {
        return Err(LoadError::TooLarge { file: file.to_owned(), len: text.len() as u64, max: SCENARIO_BYTES_MAX });
    }
    let loc = locate::Locator::new(text);
    let raw = parse::parse_raw(file, text, &loc).map_err(|e| LoadError::Invalid(vec![e]))?;
    validate::validate(file, raw, &loc).map_err(LoadError::Invalid)
}

/// Reads, parses and validates the scenario file at `path`.
pub fn load(path: &std::path::Path) -> Result<Scenario, LoadError> {
    let file = path.display().to_string();
    let len = std::fs::metadata(path).map_err(|source| LoadError::Read { file: file.clone(), source })?.len();
    if len > SCENARIO_BYTES_MAX {
        return Err(LoadError::TooLarge { file, len, max: SCENARIO_BYTES_MAX });
    }
    let bytes = std::fs::read(path).map_err(|source| LoadError::Read { file: file.clone(), source })?;
    let text = String::from_utf8(bytes).map_err(|e| {
        LoadError::Invalid(vec![ScenarioError {
            file: file.clone(),
            line: 1,
            column: 1,
            path: "syntax".to_owned(),
            message: format!("the file is not UTF-8 (invalid byte at offset {})", e.utf8_error().valid_up_to()),
        }])
    })?;
    from_str(&file, &text)
}
