#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Each property is shown to catch its bug: the core's run-time bug switch
//! is flipped in the smallest configuration that exercises the property, and
//! the checker must produce a counterexample — a numbered trace that names
//! the violation. The same configuration without the bug is explored
//! completely and must hold, so the counterexample is the bug's doing.

use bluetick_core::client::ClientBug;
use bluetick_core::server::keys::KeyBug;
use bluetick_core::server::mailbox::MailboxBug;
use bluetick_model::config::{AdversaryPowers, AppStep, FaultBudget, ModelConfig};
use bluetick_model::properties::Check;
use bluetick_model::run::{run, RunOptions, Verdict};
use bluetick_model::suite;

/// Runs `config` without the bug (must hold, completely) and with it (must fail).
fn caught(clean: ModelConfig, buggy: ModelConfig, check: Check) -> Vec<String> {
    let report = run(clean, &RunOptions::exhaustive()).unwrap();
    assert!(report.complete, "{}", report.summary());
    assert_eq!(report.verdict(check), Some(Verdict::Holds), "without the bug:\n{}", report.summary());
    let report = run(buggy, &RunOptions::hunt(check)).unwrap();
    assert_eq!(report.verdict(check), Some(Verdict::Fails), "with the bug:\n{}", report.summary());
    let trace = report.result(check).and_then(|r| r.trace.clone()).unwrap();
    let named = format!("VIOLATION {}", check.name());
    assert!(trace.iter().any(|l| l.contains(&named)), "the trace names the violation:\n{}", trace.join("\n"));
    assert!(trace.first().is_some_and(|l| l.trim_start().starts_with("1.")), "numbered:\n{}", trace.join("\n"));
    trace
}

/// Alice sends one message to bob over established sessions, with `faults`.
fn one_message(faults: FaultBudget) -> ModelConfig {
    let mut c = suite::delivery(1);
    c.name = "one-message".into();
    c.scripts = vec![vec![AppStep::Send { to: 1 }], Vec::new()];
    c.faults = faults;
    c
}

const NO_FAULTS: FaultBudget =
    FaultBudget { drops: 0, duplicates: 0, client_crashes: 0, server_crashes: 0, disconnects: 0 };

#[test]
fn delete_on_send_loses_a_message_and_at_least_once_catches_it() {
    let c = one_message(FaultBudget { drops: 1, ..NO_FAULTS });
    let trace = caught(c.clone(), c.with_mailbox_bug(MailboxBug::DeleteOnSend), Check::AtLeastOnce);
    assert!(trace.iter().any(|l| l.contains("lose frame")), "{}", trace.join("\n"));
}

#[test]
fn dedup_off_shows_a_duplicate_and_exactly_once_catches_it() {
    let c = one_message(FaultBudget { duplicates: 1, ..NO_FAULTS });
    caught(c.clone(), c.with_client_bug(ClientBug::DedupOff), Check::ExactlyOnce);
}

#[test]
fn read_on_delivery_shows_blue_ticks_early_and_status_truthful_catches_it() {
    let c = one_message(NO_FAULTS);
    caught(c.clone(), c.with_client_bug(ClientBug::ReadOnDelivery), Check::StatusTruthful);
}

#[test]
fn leaked_plaintext_reaches_the_store_and_no_plaintext_catches_it() {
    let c = one_message(NO_FAULTS);
    caught(c.clone(), c.with_client_bug(ClientBug::LeakPlaintext), Check::NoPlaintext);
}

#[test]
fn latest_receipt_wins_turns_ticks_back_and_status_monotone_catches_it() {
    let mut c = suite::reorder();
    c.faults = NO_FAULTS;
    c.reads = true;
    caught(c.clone(), c.with_client_bug(ClientBug::LatestReceiptWins), Check::StatusMonotone);
}

#[test]
fn a_prekey_handed_out_twice_is_caught_by_one_time_prekey_once() {
    let mut c = suite::handshake();
    c.adversary = AdversaryPowers::default();
    c.faults = NO_FAULTS;
    c.scripts = vec![vec![AppStep::Send { to: 1 }], Vec::new()];
    caught(c.clone(), c.with_key_bug(KeyBug::HandOutTwice), Check::PrekeyOnce);
}

#[test]
fn no_rotation_on_remove_lets_the_removed_member_read_and_the_check_catches_it() {
    let mut c = suite::group_removal();
    c.faults = NO_FAULTS;
    c.reads = false;
    caught(c.clone(), c.with_client_bug(ClientBug::NoRotationOnRemove), Check::RemovedMemberCannotRead);
}

#[test]
fn unsigned_group_changes_let_the_server_add_a_ghost_and_the_check_catches_it() {
    let c = suite::ghost();
    let trace = caught(c.clone(), c.with_unsigned_group_changes(), Check::GroupChangesSigned);
    assert!(trace.iter().any(|l| l.contains("unsigned")), "{}", trace.join("\n"));
}
