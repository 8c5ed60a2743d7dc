#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! `scenarios/scenario.schema.json` is written by hand; these tests fail when
//! it and the scenario types drift apart.
//!
//! - Every table the schema describes accepts exactly the keys the types
//!   accept: for each one a document with an unknown key in that table is
//!   parsed, and the "allowed:" list of the error (which serde builds from
//!   the struct's fields) must equal the schema's `properties`.
//! - Every bundled scenario validates against the schema (a small validator
//!   of the keywords the schema uses).

use std::collections::BTreeSet;
use std::path::PathBuf;

use bluetick_sim::scenario;
use serde_json::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").join("scenarios")
}

fn schema() -> Value {
    let text = std::fs::read_to_string(root().join("scenario.schema.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn resolve<'a>(schema: &'a Value, node: &'a Value) -> &'a Value {
    match node.get("$ref").and_then(Value::as_str) {
        Some(r) => {
            let name = r.strip_prefix("#/$defs/").expect("local refs only");
            &schema["$defs"][name]
        }
        None => node,
    }
}

/// Tables (by TOML header path, `[]` marking arrays of tables) with their
/// schema nodes, found by walking `properties` and `items` from the root.
fn tables<'a>(schema: &'a Value, node: &'a Value, path: &str, out: &mut Vec<(String, &'a Value)>) {
    let node = resolve(schema, node);
    if node.get("type").and_then(Value::as_str) != Some("object") {
        return;
    }
    let Some(props) = node.get("properties").and_then(Value::as_object) else { return };
    out.push((path.to_owned(), node));
    for (key, child) in props {
        let child = resolve(schema, child);
        let sub = if path.is_empty() { key.clone() } else { format!("{path}.{key}") };
        match child.get("type").and_then(Value::as_str) {
            Some("object") => tables(schema, child, &sub, out),
            Some("array") => {
                let item = resolve(schema, &child["items"]);
                if item.get("type").and_then(Value::as_str) == Some("object") {
                    tables(schema, item, &format!("{sub}[]"), out);
                }
            }
            _ => {}
        }
    }
}

/// A document whose table `path` holds one unknown key.
fn probe(path: &str) -> String {
    let mut doc = String::new();
    let segments: Vec<&str> = path.split('.').filter(|s| !s.is_empty()).collect();
    let mut prefix: Vec<String> = Vec::new();
    for (i, seg) in segments.iter().enumerate() {
        let (name, array) = match seg.strip_suffix("[]") {
            Some(n) => (n, true),
            None => (*seg, false),
        };
        prefix.push(name.to_owned());
        let header = prefix.join(".");
        if array {
            doc += &format!("[[{header}]]\n");
        } else if i + 1 == segments.len() {
            doc += &format!("[{header}]\n");
        }
    }
    doc + "zz_not_a_key = 1\n"
}

fn allowed_keys(message: &str) -> BTreeSet<String> {
    let list = message.split("(allowed: ").nth(1).expect("an allowed list").trim_end_matches(')');
    list.split(", ").map(|k| k.trim_matches('`').to_owned()).collect()
}

#[test]
fn every_schema_table_lists_exactly_the_keys_the_types_accept() {
    let schema = schema();
    let mut found = Vec::new();
    tables(&schema, &schema, "", &mut found);
    assert!(found.len() >= 30, "walked only {} tables", found.len());
    for (path, node) in found {
        let doc = probe(&path);
        let err = scenario::from_str("probe.toml", &doc).expect_err(&doc);
        let msg = err.problems().first().map(|p| p.message.clone()).unwrap_or_default();
        assert!(msg.starts_with("unknown key `zz_not_a_key`"), "table {path:?}: {msg}\n{doc}");
        let from_types = allowed_keys(&msg);
        let from_schema: BTreeSet<String> = node["properties"].as_object().unwrap().keys().cloned().collect();
        assert_eq!(from_schema, from_types, "schema and types disagree on the keys of {path:?}");
    }
}

#[test]
fn spreads_accept_min_and_max_in_types_and_schema() {
    let schema = schema();
    let err = scenario::from_str("p.toml", "[network]\nlatency = { zz_not_a_key = \"1ms\" }\n").unwrap_err();
    let from_types = allowed_keys(&err.problems()[0].message);
    for def in ["durationSpread", "integerSpread"] {
        let obj = schema["$defs"][def]["oneOf"].as_array().unwrap().iter().find(|v| v["type"] == "object").unwrap();
        let keys: BTreeSet<String> = obj["properties"].as_object().unwrap().keys().cloned().collect();
        assert_eq!(keys, from_types, "{def}");
    }
}

/// Validates `v` against `node` (the keywords this schema uses); errors as paths.
fn validate(schema: &Value, node: &Value, v: &Value, path: &str, errors: &mut Vec<String>) {
    let node = resolve(schema, node);
    if let Some(options) = node.get("oneOf").and_then(Value::as_array) {
        let ok = options
            .iter()
            .filter(|o| {
                let mut e = Vec::new();
                validate(schema, o, v, path, &mut e);
                e.is_empty()
            })
            .count();
        if ok != 1 {
            errors.push(format!("{path}: matches {ok} of the oneOf options"));
        }
        return;
    }
    if let Some(all) = node.get("allOf").and_then(Value::as_array) {
        for o in all {
            validate(schema, o, v, path, errors);
        }
    }
    if let Some(allowed) = node.get("enum").and_then(Value::as_array) {
        if !allowed.contains(v) {
            errors.push(format!("{path}: {v} not in {allowed:?}"));
        }
    }
    let ty = node.get("type").and_then(Value::as_str);
    let type_ok = match ty {
        None => true,
        Some("object") => v.is_object(),
        Some("array") => v.is_array(),
        Some("string") => v.is_string(),
        Some("integer") => v.is_i64() || v.is_u64(),
        Some("number") => v.is_number(),
        Some("boolean") => v.is_boolean(),
        Some(other) => panic!("type {other} not handled"),
    };
    if !type_ok {
        errors.push(format!("{path}: {v} is not of type {ty:?}"));
        return;
    }
    if let (Some(min), Some(x)) = (node.get("minimum").and_then(Value::as_f64), v.as_f64()) {
        if x < min {
            errors.push(format!("{path}: {x} < {min}"));
        }
    }
    if let (Some(max), Some(x)) = (node.get("maximum").and_then(Value::as_f64), v.as_f64()) {
        if x > max {
            errors.push(format!("{path}: {x} > {max}"));
        }
    }
    if let Some(obj) = v.as_object() {
        let props = node.get("properties").and_then(Value::as_object);
        for req in node.get("required").and_then(Value::as_array).into_iter().flatten() {
            if !obj.contains_key(req.as_str().unwrap()) {
                errors.push(format!("{path}: missing {req}"));
            }
        }
        for (k, child) in obj {
            match (props.and_then(|p| p.get(k)), node.get("additionalProperties")) {
                (Some(s), _) => validate(schema, s, child, &format!("{path}.{k}"), errors),
                (None, Some(Value::Bool(false))) => errors.push(format!("{path}: unexpected key {k}")),
                (None, Some(extra)) if extra.is_object() => {
                    validate(schema, extra, child, &format!("{path}.{k}"), errors)
                }
                _ => {}
            }
        }
    }
    if let (Some(items), Some(arr)) = (node.get("items"), v.as_array()) {
        for (i, item) in arr.iter().enumerate() {
            validate(schema, items, item, &format!("{path}[{i}]"), errors);
        }
    }
}

fn bundled() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = Vec::new();
    for dir in [root(), root().join("broken"), root().join("bench")] {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "toml") {
                files.push(p);
            }
        }
    }
    files.sort();
    files
}

#[test]
fn every_bundled_scenario_validates_against_the_schema() {
    let schema = schema();
    let files = bundled();
    assert!(files.len() >= 12, "{files:?}");
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        let doc: toml::Value = toml::from_str(&text).unwrap();
        let json = serde_json::to_value(&doc).unwrap();
        let mut errors = Vec::new();
        validate(&schema, &schema, &json, "", &mut errors);
        assert!(errors.is_empty(), "{}: {errors:#?}", f.display());
    }
}

#[test]
fn the_validator_rejects_what_the_schema_forbids() {
    let schema = schema();
    let bad = serde_json::json!({
        "scenario": { "name": "x", "duration": "1s", "colour": "red" },
        "users": { "count": -1 },
        "network": { "loss_per_mille": 2000, "latency": { "min": "1ms" } }
    });
    let mut errors = Vec::new();
    validate(&schema, &schema, &bad, "", &mut errors);
    assert_eq!(errors.len(), 4, "{errors:#?}");
}
