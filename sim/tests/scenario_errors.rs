#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Bad scenario files give `file:line:column: field.path: message` errors
//! that say what is wrong and what is allowed. Each case pins the exact text.

use bluetick_sim::scenario;

const HEAD: &str = "[scenario]\nname = \"t\"\nduration = \"30s\"\n\n[users]\nnames = [\"alice\", \"bob\"]\n";

fn errors(text: &str) -> Vec<String> {
    match scenario::from_str("t.toml", text) {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(e) => {
            let lines: Vec<String> = e.to_string().lines().map(str::to_owned).collect();
            assert_eq!(lines.len(), e.problems().len().max(1));
            lines
        }
    }
}

fn one(text: &str) -> String {
    let e = errors(text);
    assert_eq!(e.len(), 1, "expected one error, got {e:#?}");
    e.into_iter().next().unwrap()
}

#[test]
fn malformed_toml_is_a_located_syntax_error() {
    assert_eq!(one("[scenario\nname = 1\n"), "t.toml:1:10: syntax: unclosed table, expected `]`");
}

#[test]
fn an_unknown_key_lists_the_allowed_keys() {
    let e = one(&format!("{HEAD}\n[network]\nlos_per_mille = 10\n"));
    assert_eq!(
        e,
        "t.toml:9:1: network.los_per_mille: unknown key `los_per_mille` (allowed: `latency`, `loss_per_mille`, `duplicate_per_mille`)"
    );
}

#[test]
fn an_unknown_top_level_table_is_named() {
    let e = one(&format!("{HEAD}\n[netwrok]\nloss_per_mille = 10\n"));
    assert!(e.starts_with("t.toml:8:2: netwrok: unknown key `netwrok` (allowed: `scenario`, `users`"), "{e}");
}

#[test]
fn a_missing_required_key_names_its_full_path() {
    assert_eq!(
        one("[scenario]\nname = \"t\"\n[users]\ncount = 2\n"),
        "t.toml:1:1: scenario.duration: required key is missing"
    );
}

#[test]
fn a_wrong_type_says_what_was_expected() {
    let e = one(&format!("{HEAD}\n[network]\nloss_per_mille = \"ten\"\n"));
    assert_eq!(e, "t.toml:9:18: network.loss_per_mille: wrong type: string \"ten\", expected u32");
}

#[test]
fn a_negative_rate_is_refused() {
    let e = one(&format!("{HEAD}\n[workload]\ndirect_per_s = -1.5\n"));
    assert_eq!(e, "t.toml:9:16: workload.direct_per_s: -1.5 is not a rate (a number from 0 to 100000)");
}

#[test]
fn per_mille_above_1000_is_refused() {
    let e = one(&format!("{HEAD}\n[[faults.frames]]\nat = \"1s\"\nkind = \"deliver\"\ndrop_per_mille = 1500\n"));
    assert_eq!(e, "t.toml:11:18: faults.frames[0].drop_per_mille: 1500 is not a per-mille value (0 to 1000)");
}

#[test]
fn a_duration_without_a_unit_is_refused() {
    let e = one("[scenario]\nname = \"t\"\nduration = 30\n[users]\ncount = 2\n");
    assert!(e.starts_with("t.toml:3:12: scenario.duration: expected a duration like \"250ms\""), "{e}");
    assert!(e.ends_with("got the bare number 30 (add a unit)"), "{e}");
}

#[test]
fn a_time_past_the_duration_is_refused() {
    let e = one(&format!("{HEAD}\n[[faults.crash]]\nat = \"45s\"\nserver = true\n"));
    assert_eq!(e, "t.toml:9:6: faults.crash[0].at: 45s is after the end of the scenario (duration 30s)");
}

#[test]
fn an_unknown_user_in_a_group_is_refused_with_the_users_named() {
    let e = one(&format!("{HEAD}\n[[groups]]\nname = \"g\"\nadmin = \"alice\"\nmembers = [\"bob\", \"mallory\"]\n"));
    assert_eq!(e, "t.toml:11:19: groups[0].members[1]: unknown user \"mallory\" (users are alice, bob)");
}

#[test]
fn a_range_selector_past_the_generated_users_is_refused() {
    let e = one("[scenario]\nname = \"t\"\nduration = \"30s\"\n[users]\ncount = 10\nprefix = \"u\"\n[[workload.offline]]\nusers = [\"u[5..12]\"]\nat = \"1s\"\n");
    assert!(e.starts_with("t.toml:8:10: workload.offline[0].users[0]: \"u[5..12]\" names \"u11\", which is not a user (users are u01, u02"), "{e}");
}

#[test]
fn an_unknown_enum_value_lists_the_allowed_ones() {
    let e = one(&format!("{HEAD}\n[bugs]\nmailbox = \"delete-on-read\"\n"));
    assert_eq!(
        e,
        "t.toml:9:11: bugs.mailbox: unknown value \"delete-on-read\" (allowed: `delete-on-send`, `enqueue-not-idempotent`, `ignore-ack`)"
    );
}

#[test]
fn an_unknown_frame_kind_lists_the_kinds() {
    let e = one(&format!("{HEAD}\n[[faults.frames]]\nat = \"1s\"\nkind = \"ack\"\ndrop_per_mille = 10\n"));
    assert!(
        e.starts_with("t.toml:10:8: faults.frames[0].kind: unknown frame kind \"ack\" (allowed: register, "),
        "{e}"
    );
}

#[test]
fn until_and_for_together_are_refused() {
    let e =
        one(&format!("{HEAD}\n[[faults.partition]]\nat = \"1s\"\nuntil = \"5s\"\nfor = \"4s\"\nusers = [\"bob\"]\n"));
    assert_eq!(e, "t.toml:11:7: faults.partition[0].for: give `until` or `for`, not both");
}

#[test]
fn a_spread_with_min_above_max_is_refused() {
    let e = one(&format!("{HEAD}\n[network]\nlatency = {{ min = \"50ms\", max = \"5ms\" }}\n"));
    assert_eq!(e, "t.toml:9:11: network.latency: min 50ms is more than max 5ms");
}

#[test]
fn a_spread_with_an_unknown_key_lists_min_and_max() {
    let e = one(&format!("{HEAD}\n[network]\nlatency = {{ low = \"5ms\" }}\n"));
    assert_eq!(e, "t.toml:9:13: network.latency.low: unknown key `low` (allowed: `min`, `max`)");
}

#[test]
fn an_unknown_invariant_and_counter_are_refused() {
    let e = errors(&format!("{HEAD}\n[expect]\nskip = [\"exactly-twice\"]\nat_least = {{ redeliverys = 1 }}\n"));
    assert_eq!(e.len(), 2, "{e:#?}");
    assert!(e[0].starts_with("t.toml:9:9: expect.skip[0]: unknown invariant \"exactly-twice\" (allowed: "), "{}", e[0]);
    assert!(
        e[1].starts_with("t.toml:10:28: expect.at_least.redeliverys: unknown counter \"redeliverys\" (allowed: "),
        "{}",
        e[1]
    );
    assert!(e[1].contains("redeliveries"), "{}", e[1]);
}

#[test]
fn every_problem_of_a_file_is_reported_in_file_order() {
    let e = errors(&format!(
        "{HEAD}\n[network]\nloss_per_mille = 2000\n\n[[faults.crash]]\nat = \"1m\"\nusers = [\"zed\"]\n"
    ));
    assert_eq!(
        e,
        [
            "t.toml:9:18: network.loss_per_mille: 2000 is not a per-mille value (0 to 1000)",
            "t.toml:12:6: faults.crash[0].at: 1m is after the end of the scenario (duration 30s)",
            "t.toml:13:10: faults.crash[0].users[0]: unknown user \"zed\" (users are alice, bob)",
        ]
    );
}

#[test]
fn a_group_over_the_member_limit_is_refused() {
    let e = one("[scenario]\nname = \"t\"\nduration = \"30s\"\n[users]\ncount = 1100\n[[groups]]\nname = \"g\"\nadmin = \"user0001\"\nmembers = [\"*\"]\n");
    assert_eq!(e, "t.toml:9:11: groups[0].members: 1100 members with the admin, more than the limit of 1024");
}

#[test]
fn removing_the_admin_is_refused() {
    let e = one(&format!(
        "{HEAD}\n[[groups]]\nname = \"g\"\nadmin = \"alice\"\nmembers = [\"bob\"]\n[[groups.changes]]\nat = \"5s\"\nremove = [\"alice\"]\n"
    ));
    assert_eq!(e, "t.toml:14:10: groups[0].changes[0].remove: the admin alice cannot be removed");
}

#[test]
fn files_that_cannot_be_read_say_so() {
    let e = scenario::load(std::path::Path::new("/nonexistent/x.toml")).unwrap_err();
    assert!(e.to_string().starts_with("/nonexistent/x.toml: cannot read: "), "{e}");
}

#[test]
fn an_unknown_suite_lists_the_known_ones() {
    let e = one(
        "[scenario]\nname = \"t\"\nduration = \"30s\"\nsuite = \"rot13\"\n\n[users]\nnames = [\"alice\", \"bob\"]\n",
    );
    assert!(e.starts_with("t.toml:4:9: scenario.suite: "), "{e}");
    assert!(e.contains("symbolic-insecure") && e.contains("bluetick-v1"), "{e}");
}

#[test]
fn a_bundle_fetch_rate_of_zero_or_past_the_cap_is_refused() {
    let e = one(&format!("{HEAD}[server]\nbundle_fetches_per_min = 0\n"));
    assert_eq!(e, "t.toml:8:26: server.bundle_fetches_per_min: must be 1 to 1000000, got 0");
    let e = one(&format!("{HEAD}[clients]\nbundle_fetches_per_min = 2000000\n"));
    assert_eq!(e, "t.toml:8:26: clients.bundle_fetches_per_min: must be 1 to 1000000, got 2000000");
}
