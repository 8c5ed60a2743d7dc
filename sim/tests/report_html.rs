#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! `report.html` is written next to the other report files, stands alone
//! (inline SVG, no scripts or external references), and shows what the run
//! found: the verdicts, a violation's detail, and its three plots.

use std::path::PathBuf;

use bluetick_sim::cli::{run_with, RunArgs, EXIT_FAILED};

#[test]
fn a_failing_run_writes_a_self_contained_page_with_its_violation_and_plots() {
    let out = tempfile::tempdir().unwrap();
    let scenario = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scenarios/broken/delete-on-send.toml");
    let args = RunArgs {
        scenario,
        seed: Some(1),
        out: out.path().to_path_buf(),
        driver: None,
        cell: None,
        swarm: false,
        quiet: true,
    };
    let (mut o, mut e) = (Vec::new(), Vec::new());
    assert_eq!(run_with(&args, &mut o, &mut e), EXIT_FAILED);
    let page = std::fs::read_to_string(out.path().join("broken-delete-on-send/1/report.html")).unwrap();
    assert!(page.starts_with("<!doctype html>"));
    assert_eq!(page.matches("<svg").count(), 3, "latency CDF, deliveries over time, one message's path");
    assert!(page.contains("Violation: at-least-once"), "the violation is named");
    assert!(page.contains("class=\"violated\">VIOLATED"), "and marked in the table");
    assert!(page.contains("p99 "), "the CDF marks its percentiles");
    assert!(page.contains("shown to the app") && page.contains("tick: Delivered"), "the path reaches the blue ticks");
    assert!(page.contains(&format!("commit <code>{}</code>", bluetick_sim::run::COMMIT)));
    for banned in ["<script", "http://", "https://", "src="] {
        let allowed_xmlns = banned == "http://"
            && page.matches(banned).count() == page.matches("xmlns=\"http://www.w3.org/2000/svg\"").count();
        assert!(!page.contains(banned) || allowed_xmlns, "self-contained: found {banned}");
    }
}
