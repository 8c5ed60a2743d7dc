#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! What a counterexample looks like, pinned: the numbered trace and the
//! scenario file of the delete-on-send counterexample (insta snapshots), and
//! `bluetick check --bug … --write-scenario FILE` end to end. Every bug
//! switch's replay in the simulator is checked in `tests/bugs.rs`.

use bluetick_model::cli::{cli_check, CheckArgs};
use bluetick_model::config::BugSwitch;
use bluetick_model::model::MessagingModel;
use bluetick_model::run::{run, RunOptions, Verdict};
use bluetick_model::scenario::write_scenario;
use bluetick_model::suite;
use std::process::ExitCode;

#[test]
fn the_delete_on_send_counterexample_reads_as_numbered_plain_steps() {
    let (clean, check) = suite::bug_hunt(BugSwitch::DeleteOnSend);
    let config = clean.with_bug(BugSwitch::DeleteOnSend);
    let report = run(config.clone(), &RunOptions::hunt(check)).unwrap();
    let result = report.result(check).unwrap();
    assert_eq!(result.verdict, Verdict::Fails);
    insta::assert_snapshot!("delete_on_send_trace", result.trace.clone().unwrap().join("\n"));
    let model = MessagingModel::new(config).unwrap();
    insta::assert_snapshot!("delete_on_send_scenario", write_scenario(&model, check, &result.actions).unwrap());
}

#[test]
fn bluetick_check_with_a_bug_writes_a_scenario_the_simulator_fails_on() {
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("model-delete-on-send.toml");
    let _ = std::fs::remove_file(&path);
    let args = CheckArgs {
        property: Some("at-least-once".into()),
        bug: Some("delete-on-send".into()),
        write_scenario: Some(path.clone()),
        ..CheckArgs::default()
    };
    assert_eq!(cli_check(args), ExitCode::from(1), "a property fails: exit status 1");
    let s = bluetick_sim::scenario::load(&path).unwrap();
    let outcome = bluetick_sim::run::run(&s, &bluetick_sim::run::RunOptions { seed: s.seed, ..Default::default() });
    assert!(outcome.unwrap().violated().any(|v| v.invariant == "at-least-once"));
}

#[test]
fn bluetick_check_refuses_an_unknown_bug_or_a_property_the_bug_model_lacks() {
    let unknown = CheckArgs { bug: Some("no-such-bug".into()), ..CheckArgs::default() };
    assert_eq!(cli_check(unknown), ExitCode::from(2));
    let x3dh = CheckArgs {
        bug: Some("dedup-off".into()),
        property: Some("x3dh-forward-secrecy".into()),
        ..CheckArgs::default()
    };
    assert_eq!(cli_check(x3dh), ExitCode::from(2));
}
