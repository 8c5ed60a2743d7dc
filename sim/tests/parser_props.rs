#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The scenario parser never panics: arbitrary text, and the bundled
//! scenarios mutated byte by byte and line by line, give `Ok` or `Err`,
//! and every `Err` is located (line and column inside the file).

use std::path::PathBuf;

use bluetick_sim::scenario;
use proptest::prelude::*;

fn bundled_texts() -> Vec<String> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").join("scenarios");
    let mut out = Vec::new();
    for dir in [root.clone(), root.join("broken")] {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "toml") {
                out.push(std::fs::read_to_string(p).unwrap());
            }
        }
    }
    out.sort();
    out
}

fn check(text: &str) {
    match scenario::from_str("fuzz.toml", text) {
        Ok(_) => {}
        Err(e) => {
            let lines = text.lines().count().max(1) + 1;
            for p in e.problems() {
                assert!(p.line >= 1 && p.line <= lines, "line {} of {lines}: {p}", p.line);
                assert!(p.column >= 1, "{p}");
                assert!(!p.message.is_empty(), "{p}");
            }
        }
    }
}

/// Tokens that make mutations land on interesting values.
const TOKENS: &[&str] = &[
    "-1",
    "0",
    "1001",
    "99999999999999999999",
    "\"\"",
    "\"*\"",
    "\"u[9..1]\"",
    "\"1s\"",
    "\"-5s\"",
    "1.5e308",
    "nan",
    "[]",
    "{}",
    "{ min = \"5s\", max = \"1s\" }",
    "[[",
    "]]",
    "=",
    "\"\\u0000\"",
    "true",
    "\"x[1..99999999]\"",
];

#[derive(Debug, Clone)]
enum Mutation {
    Byte(usize, u8),
    Delete(usize, usize),
    Insert(usize, usize),
    SwapLines(usize, usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Byte(i, b)),
        (any::<usize>(), 1usize..40).prop_map(|(i, n)| Mutation::Delete(i, n)),
        (any::<usize>(), 0..TOKENS.len()).prop_map(|(i, t)| Mutation::Insert(i, t)),
        (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Mutation::SwapLines(a, b)),
    ]
}

fn apply(text: &str, muts: &[Mutation]) -> String {
    let mut bytes = text.as_bytes().to_vec();
    for m in muts {
        let n = bytes.len().max(1);
        match m {
            Mutation::Byte(i, b) => {
                if let Some(x) = bytes.get_mut(i % n) {
                    *x = *b;
                }
            }
            Mutation::Delete(i, len) => {
                let start = i % n;
                let end = (start + len).min(bytes.len());
                if start < end {
                    bytes.drain(start..end);
                }
            }
            Mutation::Insert(i, t) => {
                let at = (i % n).min(bytes.len());
                bytes.splice(at..at, TOKENS[*t].bytes());
            }
            Mutation::SwapLines(a, b) => {
                let s = String::from_utf8_lossy(&bytes).into_owned();
                let mut lines: Vec<&str> = s.lines().collect();
                if !lines.is_empty() {
                    let (x, y) = (a % lines.len(), b % lines.len());
                    lines.swap(x, y);
                }
                bytes = lines.join("\n").into_bytes();
            }
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

proptest! {
    #[test]
    fn arbitrary_text_never_panics(text in ".{0,400}") {
        check(&text);
    }

    #[test]
    fn arbitrary_toml_shaped_text_never_panics(text in "(\\[{1,2}[a-z.]{1,12}\\]{1,2}\n|[a-z_]{1,12} = (\"[a-z0-9*\\[\\].]{0,10}\"|-?[0-9]{1,6}|\\{ ?min = \"[0-9]{1,3}(ms|s)\", max = \"[0-9]{1,3}s\" ?\\})\n){0,30}") {
        check(&text);
    }

    #[test]
    fn mutated_bundled_scenarios_never_panic(which in any::<usize>(), muts in prop::collection::vec(mutation(), 1..6)) {
        let texts = bundled_texts();
        let base = &texts[which % texts.len()];
        check(&apply(base, &muts));
    }
}

#[test]
fn every_bundled_scenario_parses_and_validates() {
    for text in bundled_texts() {
        if let Err(e) = scenario::from_str("bundled.toml", &text) {
            panic!("{e}\n{text}");
        }
    }
}
