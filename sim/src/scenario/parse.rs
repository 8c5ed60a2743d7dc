//! TOML text → [`RawScenario`], with every error located.

use super::error::ScenarioError;
use super::locate::Locator;
use super::model::RawScenario;

/// Parses `text` (named `file` in errors). On failure the one error serde
/// stopped at, as `file:line:col: path: message`.
pub fn parse_raw(file: &str, text: &str, loc: &Locator) -> Result<RawScenario, ScenarioError> {
    toml::from_str::<RawScenario>(text).map_err(|e| from_toml(file, &e, loc))
}

/// Locates a toml/serde error and rewrites its message for people who do not
/// know serde's vocabulary.
fn from_toml(file: &str, e: &toml::de::Error, loc: &Locator) -> ScenarioError {
    let mut span = e.span().unwrap_or(0..0);
    let message = e.message().trim().to_owned();
    let parsed_tree = !loc.is_empty();
    let mut base = match loc.path_at(&span) {
        Some(p) => p.to_owned(),
        None if parsed_tree => "(top level)".to_owned(),
        None => "syntax".to_owned(),
    };
    // Depending on the toml features the workspace unifies, an unknown key's
    // span is the key's or its table's; point at the key either way.
    if let Some(name) = message.strip_prefix("unknown field `").and_then(|r| r.split('`').next()) {
        let key = if base.ends_with(&format!(".{name}")) || base == name {
            base.clone()
        } else if base == "(top level)" {
            name.to_owned()
        } else {
            format!("{base}.{name}")
        };
        if let Some(key_span) = loc.key_span(&key) {
            span = key_span;
            base = key;
        }
    }
    let (line, column) = loc.line_col(span.start);
    let (path, message) = reword(&base, &message);
    ScenarioError { file: file.to_owned(), line, column, path, message }
}

/// Turns serde's phrasing into the scenario vocabulary (keys and values).
fn reword(path: &str, message: &str) -> (String, String) {
    if let Some(rest) = message.strip_prefix("missing field `") {
        let name = rest.split('`').next().unwrap_or_default();
        let full = if path == "(top level)" { name.to_owned() } else { format!("{path}.{name}") };
        return (full, "required key is missing".to_owned());
    }
    if let Some(rest) = message.strip_prefix("unknown field `") {
        let mut parts = rest.splitn(2, '`');
        let name = parts.next().unwrap_or_default();
        let allowed = allowed_list(parts.next().unwrap_or_default());
        return (path.to_owned(), format!("unknown key `{name}` (allowed: {allowed})"));
    }
    if let Some(rest) = message.strip_prefix("unknown variant `") {
        let mut parts = rest.splitn(2, '`');
        let name = parts.next().unwrap_or_default();
        let allowed = allowed_list(parts.next().unwrap_or_default());
        return (path.to_owned(), format!("unknown value {name:?} (allowed: {allowed})"));
    }
    if let Some(rest) = message.strip_prefix("invalid type: ") {
        return (path.to_owned(), format!("wrong type: {rest}"));
    }
    (path.to_owned(), message.to_owned())
}

/// `, expected one of `a`, `b`` / `, expected `a` or `b`` → "`a`, `b`".
fn allowed_list(tail: &str) -> String {
    let list = tail.trim_start_matches(", expected one of ").trim_start_matches(", expected ");
    let list = list.replace("` or `", "`, `");
    if list.is_empty() || list.starts_with(", there are no fields") {
        "none".to_owned()
    } else {
        list
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        let loc = Locator::new(text);
        parse_raw("f.toml", text, &loc).map(|_| ()).unwrap_err().to_string()
    }

    #[test]
    fn unknown_keys_name_the_key_and_the_allowed_ones() {
        let e = err("[scenario]\nname = \"x\"\nduration = \"1s\"\nsed = 1\n[users]\ncount = 2\n");
        assert!(e.starts_with("f.toml:4:1: scenario.sed: unknown key `sed` (allowed: `name`"), "{e}");
    }

    #[test]
    fn missing_keys_name_the_full_path() {
        let e = err("[scenario]\nname = \"x\"\n[users]\ncount = 2\n");
        assert_eq!(e, "f.toml:1:1: scenario.duration: required key is missing");
    }

    #[test]
    fn syntax_errors_have_a_position() {
        let e = err("[scenario\nname = 1\n");
        assert!(e.starts_with("f.toml:1:10: syntax: "), "{e}");
    }

    #[test]
    fn bad_durations_say_what_a_duration_looks_like() {
        let e = err("[scenario]\nname = \"x\"\nduration = \"12 seconds\"\n[users]\ncount = 2\n");
        assert!(e.starts_with("f.toml:3:12: scenario.duration: expected a duration like"), "{e}");
    }
}
