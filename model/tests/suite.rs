#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Every configuration `bluetick check` runs passes at the CI bounds: each
//! `always` property holds, each `sometimes` guard is reached. The checker's
//! summary (state counts and verdicts) is pinned with insta, so a change in
//! the explored state space is noticed and reviewed.

use bluetick_model::run::{run, RunOptions};
use bluetick_model::suite;

fn passes(name: &str) {
    let config = suite::ci().into_iter().find(|c| c.name == name).unwrap();
    let report = run(config, &RunOptions::exhaustive()).unwrap();
    assert!(report.complete, "{}", report.summary());
    for r in &report.results {
        assert!(
            r.verdict.is_ok(),
            "{} is {:?}:\n{}\n{}",
            r.property,
            r.verdict,
            report.summary(),
            r.trace.as_deref().unwrap_or_default().join("\n")
        );
    }
    insta::assert_snapshot!(name, report.summary());
}

#[test]
fn delivery_under_loss_and_duplication_passes() {
    passes("delivery-1");
}

#[test]
fn delivery_across_a_client_crash_passes() {
    passes("client-crash");
}

#[test]
fn delivery_across_a_server_crash_passes() {
    passes("server-crash");
}

#[test]
fn delivery_with_reordering_passes() {
    passes("reorder");
}

#[test]
fn first_contact_with_x3dh_and_theft_passes() {
    passes("handshake");
}

#[test]
fn expiry_of_an_offline_recipient_passes() {
    passes("expiry");
}

#[test]
fn group_removal_passes() {
    passes("group-removal");
}

#[test]
fn ghost_injection_is_refused() {
    passes("ghost");
}

#[test]
fn the_summary_of_a_fixed_bound_is_reproducible() {
    // Same configuration twice: same counts (determinism of the whole stack).
    let mut c = suite::delivery(1);
    c.max_depth = Some(6);
    let a = run(c.clone(), &RunOptions::exhaustive()).unwrap();
    let b = run(c, &RunOptions::exhaustive()).unwrap();
    assert_eq!(a.summary(), b.summary());
}
