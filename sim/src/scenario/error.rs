//! Errors of scenario files: each names the file, line, column and field.

use std::fmt;

/// One problem in a scenario file, printed as
/// `file:line:column: field.path: what is wrong (what is allowed)`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ScenarioError {
    /// The file as given on the command line.
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column, in characters.
    pub column: usize,
    /// Dotted field path (`faults.frames[0].drop_per_mille`), `syntax` for
    /// malformed TOML, or `(top level)`.
    pub path: String,
    /// What is wrong, and what is allowed.
    pub message: String,
}

impl fmt::Display for ScenarioError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: {}: {}", self.file, self.line, self.column, self.path, self.message)
    }
}

/// Why a scenario could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read.
    #[error("{file}: cannot read: {source}")]
    Read {
        /// The file.
        file: String,
        /// The IO error.
        source: std::io::Error,
    },
    /// The file is larger than [`SCENARIO_BYTES_MAX`](super::SCENARIO_BYTES_MAX).
    #[error("{file}: {len} bytes is larger than the {max}-byte limit of scenario files")]
    TooLarge {
        /// The file.
        file: String,
        /// Its size.
        len: u64,
        /// The limit.
        max: u64,
    },
    /// The file has one or more errors, in file order.
    #[error("{}", render(.0))]
    Invalid(Vec<ScenarioError>),
}

impl LoadError {
    /// The individual problems (empty for IO errors).
    pub fn problems(&self) -> &[ScenarioError] {
        match self {
            LoadError::Invalid(v) => v,
            _ => &[],
        }
    }
}

fn render(errors: &[ScenarioError]) -> String {
    errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n")
}
