#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Each property is shown to catch its bug: the core's run-time bug switch
//! is flipped in the smallest configuration that exercises the property
//! (`suite::bug_hunt`), and the checker must produce a counterexample — a
//! numbered trace in plain words that names the violation. The same
//! configuration without the bug is explored completely and must hold, so
//! the counterexample is the bug's doing (where that configuration is one
//! of the CI suite's, `tests/suite.rs` already explores it completely and
//! it is not explored twice).
//!
//! Where the simulator judges the same invariant, the counterexample is
//! also written as a scenario file (`scenario::write_scenario`) and run by
//! the simulator's direct driver: it must violate exactly that invariant
//! (`bluetick run` exit status 1), and the same file without its `[bugs]`
//! table must pass, so the failure is the bug's, not the replay's.

use bluetick_model::config::BugSwitch;
use bluetick_model::model::MessagingModel;
use bluetick_model::properties::Check;
use bluetick_model::run::{run, RunOptions, Verdict};
use bluetick_model::scenario::{write_scenario, ExportError};
use bluetick_model::suite;
use bluetick_sim::run::{self as sim, RunOutcome, VerdictState};

/// A counterexample: its trace and the scenario file it was written as.
struct Caught {
    check: Check,
    trace: Vec<String>,
    scenario: Result<String, ExportError>,
}

/// Runs `bug`'s configuration without the bug (must hold, completely) and
/// with it (must fail); returns the counterexample.
fn caught(bug: BugSwitch, expected: Check) -> Caught {
    let (clean, check) = suite::bug_hunt(bug);
    assert_eq!(check, expected);
    if !suite::ci().contains(&clean) {
        let report = run(clean.clone(), &RunOptions::exhaustive()).unwrap();
        assert!(report.complete, "{}", report.summary());
        assert_eq!(report.verdict(check), Some(Verdict::Holds), "without the bug:\n{}", report.summary());
    }
    let buggy = clean.with_bug(bug);
    let report = run(buggy.clone(), &RunOptions::hunt(check)).unwrap();
    assert_eq!(report.verdict(check), Some(Verdict::Fails), "with the bug:\n{}", report.summary());
    let result = report.result(check).unwrap();
    let trace = result.trace.clone().unwrap();
    let text = trace.join("\n");
    let named = format!("VIOLATION {}: ", check.name());
    assert!(trace.iter().any(|l| l.trim_start().starts_with(&named)), "the trace names the violation:\n{text}");
    assert!(trace.iter().any(|l| l.contains(check.meaning())), "the trace says what the property means:\n{text}");
    // Step 0 is the warm-up, listed only when it already breaks the property.
    let first = trace.first().map(|l| l.trim_start()).unwrap_or_default();
    assert!(first.starts_with("1. ") || first.starts_with("0. the warm-up"), "numbered:\n{text}");
    assert!(trace.iter().any(|l| l.contains("the state after the last step:")), "{text}");
    let model = MessagingModel::new(buggy).unwrap();
    let scenario = write_scenario(&model, check, &result.actions);
    Caught { check, trace, scenario }
}

fn simulate(text: &str) -> RunOutcome {
    let s = bluetick_sim::scenario::from_str("written.toml", text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    sim::run(&s, &sim::RunOptions { seed: s.seed, ..sim::RunOptions::default() }).unwrap()
}

fn without_bugs(text: &str) -> String {
    let start = text.find("[bugs]\n").unwrap();
    let end = start + text[start..].find("\n\n").unwrap();
    format!("{}{}", &text[..start], &text[end..])
}

/// The written scenario fails in the simulator on the same invariant, and
/// passes without the bug switch; returns the file.
fn replays(c: &Caught) -> String {
    let text = c.scenario.clone().unwrap();
    let outcome = simulate(&text);
    let violated: Vec<&str> = outcome.violated().map(|v| v.invariant.as_str()).collect();
    assert_eq!(violated, vec![c.check.name()], "{text}\n{}", c.trace.join("\n"));
    assert!(!outcome.passed, "exit status 1");
    let clean = simulate(&without_bugs(&text));
    let verdict = clean.verdicts.iter().find(|v| v.invariant == c.check.name()).map(|v| v.state);
    assert_eq!(verdict, Some(VerdictState::Held), "without the bug the replay holds:\n{text}");
    assert!(clean.passed);
    text
}

fn has(trace: &[String], needle: &str) -> bool {
    trace.iter().any(|l| l.contains(needle))
}

#[test]
fn delete_on_send_loses_a_message_and_at_least_once_catches_it() {
    let c = caught(BugSwitch::DeleteOnSend, Check::AtLeastOnce);
    let trace = &c.trace;
    assert!(has(trace, "4. the network drops the delivery of alice's #3 (seq 4) from the server to bob"), "{trace:#?}");
    assert!(has(trace, "never reached bob's app"), "{trace:#?}");
    assert!(has(trace, "server mailboxes: alice: nothing; bob: nothing"), "{trace:#?}");
    let text = replays(&c);
    assert!(text.contains("kind = \"deliver-envelope\"\ndirection = \"to-client\"\nusers = [\"bob\"]"), "{text}");
    assert!(text.contains("drop_per_mille = 1000") && text.contains("mailbox = \"delete-on-send\""), "{text}");
}

#[test]
fn dedup_off_shows_a_duplicate_and_exactly_once_catches_it() {
    let c = caught(BugSwitch::DedupOff, Check::ExactlyOnce);
    assert!(has(&c.trace, "the network duplicates"), "{:#?}", c.trace);
    assert!(has(&c.trace, "bob's app was shown #3 twice"), "{:#?}", c.trace);
    assert!(replays(&c).contains("duplicate_per_mille = 1000"));
}

#[test]
fn read_on_delivery_shows_blue_ticks_early_and_status_truthful_catches_it() {
    let c = caught(BugSwitch::ReadOnDelivery, Check::StatusTruthful);
    assert!(has(&c.trace, "as Read, but bob's app never read it"), "{:#?}", c.trace);
    replays(&c);
}

#[test]
fn leaked_plaintext_reaches_the_store_and_no_plaintext_catches_it() {
    let c = caught(BugSwitch::LeakPlaintext, Check::NoPlaintext);
    assert!(has(&c.trace, "the plaintext of #3 is in the server's"), "{:#?}", c.trace);
    replays(&c);
}

#[test]
fn latest_receipt_wins_turns_ticks_back_and_status_monotone_catches_it() {
    let c = caught(BugSwitch::LatestReceiptWins, Check::StatusMonotone);
    assert!(has(&c.trace, "overtaking 1 earlier frame"), "{:#?}", c.trace);
    assert!(has(&c.trace, "went from Read back to Delivered"), "{:#?}", c.trace);
    // The reordering is written as a delay of the overtaken frame.
    assert!(replays(&c).contains("delay = "));
}

#[test]
fn a_prekey_handed_out_twice_is_caught_by_one_time_prekey_once() {
    // The server's switch is on from its creation, and each client fetches
    // its own bundle after an upload: the warm-up already hands a key out twice.
    // There are no explored steps to replay.
    let c = caught(BugSwitch::HandOutTwice, Check::PrekeyOnce);
    assert!(has(&c.trace, "0. the warm-up"), "{:#?}", c.trace);
    assert!(has(&c.trace, "handed out a second time"), "{:#?}", c.trace);
    assert!(matches!(c.scenario, Err(ExportError::BrokenInWarmUp { property: "one-time-prekey-once", .. })));
}

#[test]
fn no_rotation_on_remove_lets_the_removed_member_read_and_the_check_catches_it() {
    let c = caught(BugSwitch::NoRotationOnRemove, Check::RemovedMemberCannotRead);
    assert!(has(&c.trace, "removes bob from group 0"), "{:#?}", c.trace);
    assert!(replays(&c).contains("[[groups.changes]]"));
}

#[test]
fn unsigned_group_changes_let_the_server_add_a_ghost_and_the_check_catches_it() {
    // The simulator has no such invariant: the counterexample is not written.
    let c = caught(BugSwitch::UnsignedGroupChanges, Check::GroupChangesSigned);
    assert!(has(&c.trace, "without the admin's signature"), "{:#?}", c.trace);
    assert!(has(&c.trace, "the server lists [@carol]"), "{:#?}", c.trace);
    assert!(matches!(c.scenario, Err(ExportError::NoSimulatorInvariant { property: "group-changes-signed", .. })));
}

#[test]
fn every_bug_switch_has_a_stable_name() {
    for bug in BugSwitch::ALL {
        assert_eq!(BugSwitch::from_name(bug.name()), Some(bug));
    }
    assert_eq!(BugSwitch::from_name("no-such-bug"), None);
}
