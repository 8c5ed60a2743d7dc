#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Known weaknesses of the design, shown rather than hidden: in each of
//! these configurations the checker must find the documented attack. The
//! apps and the adversary move on a quiet network (see `suite`), which keeps
//! each search to a few thousand states.

use bluetick_model::properties::Check;
use bluetick_model::run::{run, RunOptions, Verdict};
use bluetick_model::suite;

fn attack_found(config: bluetick_model::config::ModelConfig, check: Check) -> Vec<String> {
    let report = run(config, &RunOptions::hunt(check)).unwrap();
    assert_eq!(report.verdict(check), Some(Verdict::Fails), "{}", report.summary());
    report.result(check).and_then(|r| r.trace.clone()).unwrap()
}

/// Cremers, Medinger, Naska (S&P 2025): a device restored from an old
/// backup rolls its ratchet and its RNG back and seals new messages under
/// message keys the holder of that backup knows.
#[test]
fn a_device_restored_from_an_old_backup_reuses_message_keys_the_thief_knows() {
    let trace = attack_found(suite::weakness_old_backup(), Check::NoKeyReuse);
    assert!(trace.iter().any(|l| l.contains("restored from an old backup")), "{}", trace.join("\n"));
    assert!(trace.iter().any(|l| l.contains("VIOLATION no-message-key-reuse")), "{}", trace.join("\n"));
}

/// Sender keys are a hash chain: without a rotation, a thief of a member's
/// state reads the group's later messages even after that member's pairwise
/// sessions healed.
#[test]
fn sender_keys_do_not_heal_without_rotation() {
    let trace = attack_found(suite::weakness_sender_keys(), Check::Healing);
    assert!(trace.iter().any(|l| l.contains("healed")), "{}", trace.join("\n"));
    assert!(trace.iter().any(|l| l.contains("VIOLATION healing")), "{}", trace.join("\n"));
}

/// "More is Less" (Rösler et al. 2018): a server that may change membership
/// adds a ghost, which then receives every group ciphertext. Our clients
/// check the admin's signature, so the ghost gets no sender key and cannot
/// decrypt — the server-side acceptance is the counterexample here.
#[test]
fn server_controlled_membership_admits_a_ghost() {
    let config = suite::weakness_server_membership();
    let report = run(config, &RunOptions::exhaustive()).unwrap();
    assert!(report.complete, "{}", report.summary());
    assert_eq!(report.verdict(Check::GroupChangesSigned), Some(Verdict::Fails), "{}", report.summary());
    assert_eq!(report.verdict(Check::GhostCannotRead), Some(Verdict::Holds), "{}", report.summary());
}
