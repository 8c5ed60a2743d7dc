#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The example reports committed under `reports/examples/` are current: each
//! bundled scenario, run at its default seed, writes the committed
//! `report.md`, `report.json` and `report.html` byte for byte (the git commit
//! stamp aside, which moves with every commit). `report.md` is also pinned
//! with insta, so a review shows how a report changed.
//!
//! After a change that moves the reports, regenerate them with
//! `just reports` (and `INSTA_UPDATE=always cargo test -p bluetick-sim --test
//! examples` for the snapshots). The heavy scenarios (a 500-contact presence
//! storm, the 1,024-member group) are checked by the ignored test, which
//! `just reports-check` runs in release.

use std::path::{Path, PathBuf};

use bluetick_sim::run::{self, RunOptions};
use bluetick_sim::{html, report, scenario};

/// Too slow for a debug build in CI (tens of seconds to minutes each).
const HEAVY: &[&str] = &["presence-storm", "group-1024-churn"];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Every bundled scenario file, as `scenarios/<..>.toml` relative to the root
/// (the form the examples were generated with, which reports quote).
fn bundled() -> Vec<String> {
    let mut files = Vec::new();
    for dir in ["scenarios", "scenarios/broken"] {
        for entry in std::fs::read_dir(root().join(dir)).unwrap() {
            let name = entry.unwrap().file_name().into_string().unwrap();
            if name.ends_with(".toml") {
                files.push(format!("{dir}/{name}"));
            }
        }
    }
    files.sort();
    files
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e} (run `just reports`)", p.display()))
}

fn check(file: &str) {
    let text = read(&root().join(file));
    let s = scenario::from_str(file, &text).unwrap();
    let dir = root().join("reports/examples").join(&s.name).join(s.seed.to_string());
    let committed_json = read(&dir.join("report.json"));
    let committed: serde_json::Value = serde_json::from_str(&committed_json).unwrap();
    let mut o = run::run(&s, &RunOptions { seed: s.seed, ..RunOptions::default() }).unwrap();
    let stamp = committed["commit"].as_str().unwrap().to_owned();
    o.commit = stamp;
    let md = report::markdown(&o);
    let stale = |what: &str| format!("{} is stale for {file}: run `just reports`", dir.join(what).display());
    assert!(report::to_json(&o).unwrap() == committed_json, "{}", stale("report.json"));
    assert!(md == read(&dir.join("report.md")), "{}", stale("report.md"));
    assert!(html::html(&o) == read(&dir.join("report.html")), "{}", stale("report.html"));
    o.commit = "[commit]".to_owned();
    insta::assert_snapshot!(format!("report-md-{}", s.name), report::markdown(&o));
}

#[test]
fn committed_example_reports_are_current() {
    let files: Vec<String> =
        bundled().into_iter().filter(|f| !HEAVY.iter().any(|h| f.ends_with(&format!("/{h}.toml")))).collect();
    assert!(files.len() >= 10, "{files:?}");
    for f in files {
        check(&f);
    }
}

#[test]
#[ignore = "minutes in a debug build; `just reports-check` runs it in release"]
fn committed_example_reports_of_the_heavy_scenarios_are_current() {
    for h in HEAVY {
        check(&format!("scenarios/{h}.toml"));
    }
}
