#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Forward secrecy with real crypto. Built normally, the stolen copy of a
//! device decrypts nothing it had received, and a later theft of the
//! responder's identity and signed prekeys does not open an X3DH handshake
//! whose one-time prekey was used and deleted. Built with the crypto crate's
//! `weak-keep-used-keys` feature (`cargo test -p bluetick-model --features
//! weak-keep-used-keys`), both checks must produce counterexamples.

use bluetick_model::properties::Check;
use bluetick_model::run::{run, RunOptions, Verdict};
use bluetick_model::suite;
use bluetick_model::x3dh::{X3dhConfig, X3dhModel};

const WEAK: bool = cfg!(feature = "weak-keep-used-keys");

#[test]
fn a_stolen_device_decrypts_nothing_it_had_received() {
    let mut c = suite::handshake();
    c.name = "handshake-theft".into();
    c.checks = vec![Check::ForwardSecrecy.name(), Check::Theft.name()];
    if WEAK {
        let report = run(c, &RunOptions::hunt(Check::ForwardSecrecy)).unwrap();
        assert_eq!(report.verdict(Check::ForwardSecrecy), Some(Verdict::Fails), "{}", report.summary());
    } else {
        let report = run(c, &RunOptions::exhaustive()).unwrap();
        assert_eq!(report.verdict(Check::ForwardSecrecy), Some(Verdict::Holds), "{}", report.summary());
        assert_eq!(report.verdict(Check::Theft), Some(Verdict::Reached), "{}", report.summary());
    }
}

#[test]
fn x3dh_with_a_deleted_one_time_prekey_resists_a_later_theft() {
    let (unique, holds, reached) = X3dhModel::new(X3dhConfig::ci()).check();
    assert!(reached, "a theft after a completed handshake must be explored");
    assert_eq!(holds, !WEAK, "forward secrecy holds exactly when used one-time prekeys are deleted");
    assert!(unique > 10, "{unique} states");
}

#[test]
fn x3dh_without_a_one_time_prekey_falls_to_a_later_signed_prekey_theft() {
    // The documented weakness of X3DH: with the stock of one-time prekeys
    // empty, a session rests on the signed prekey alone until it is rotated
    // and the retired key dropped.
    let (_, holds, reached) = X3dhModel::new(X3dhConfig::without_one_time()).check();
    assert!(reached);
    assert!(!holds, "the checker must find the theft that opens an earlier handshake");
}
