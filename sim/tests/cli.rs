#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! `bluetick run` (the library function the CLI calls): exit status 0 on a
//! pass, 1 on a violation or failed guard (naming the invariant and how to
//! reproduce), 2 on bad input. Each runner-level check is shown to fire.

use std::path::PathBuf;

use bluetick_sim::cli::{run_with, RunArgs, EXIT_BAD_INPUT, EXIT_FAILED, EXIT_PASSED};

fn scenario_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").join("scenarios").join(name)
}

fn run(path: PathBuf, seed: Option<u64>) -> (u8, String, String, tempfile::TempDir) {
    let out = tempfile::tempdir().unwrap();
    let args = RunArgs {
        scenario: path,
        seed,
        out: out.path().to_path_buf(),
        driver: None,
        cell: None,
        swarm: false,
        quiet: false,
    };
    let (mut o, mut e) = (Vec::new(), Vec::new());
    let code = run_with(&args, &mut o, &mut e);
    (code, String::from_utf8(o).unwrap(), String::from_utf8(e).unwrap(), out)
}

fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> PathBuf {
    let p = dir.path().join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn the_broken_delete_on_send_scenario_fails_on_at_least_once() {
    let path = scenario_path("broken/delete-on-send.toml");
    let (code, out, _, dir) = run(path.clone(), None);
    assert_eq!(code, EXIT_FAILED, "{out}");
    assert!(out.contains("✗ at-least-once"), "{out}");
    assert!(out.contains("VIOLATION at-least-once at t="), "{out}");
    assert!(out.contains("was accepted by the server but never reached"), "{out}");
    assert!(out.contains(&format!("reproduce: bluetick run {} --seed 1", path.display())), "{out}");
    assert!(out.contains("FAILED broken-delete-on-send seed 1"), "{out}");
    let md = std::fs::read_to_string(dir.path().join("broken-delete-on-send/1/report.md")).unwrap();
    assert!(md.contains("## Violation: at-least-once"), "{md}");
    assert!(md.contains("| at-least-once | **VIOLATED** |"), "{md}");
}

#[test]
fn a_bad_scenario_exits_2_with_located_errors() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(
        &dir,
        "bad.toml",
        "[scenario]\nname = \"x\"\nduration = \"5s\"\n[users]\nnames = [\"a\"]\n[network]\nloss_per_mille = 5000\n",
    );
    let (code, out, err, _) = run(p.clone(), None);
    assert_eq!(code, EXIT_BAD_INPUT);
    assert!(out.is_empty());
    assert_eq!(
        err.trim(),
        format!("{}:7:18: network.loss_per_mille: 5000 is not a per-mille value (0 to 1000)", p.display())
    );
}

#[test]
fn a_missing_file_and_an_unknown_cell_exit_2() {
    let (code, _, err, _) = run(PathBuf::from("/nonexistent/s.toml"), None);
    assert_eq!(code, EXIT_BAD_INPUT);
    assert!(err.contains("cannot read"), "{err}");

    let dir = tempfile::tempdir().unwrap();
    let p = write(&dir, "m.toml", "[scenario]\nname = \"m\"\nduration = \"1s\"\n[users]\nnames = [\"a\", \"b\"]\n[matrix]\nloss_per_mille = [0, 1]\n");
    let out = tempfile::tempdir().unwrap();
    let args = RunArgs {
        scenario: p,
        seed: Some(1),
        out: out.path().into(),
        driver: None,
        cell: Some(9),
        swarm: false,
        quiet: true,
    };
    let (mut o, mut e) = (Vec::new(), Vec::new());
    assert_eq!(run_with(&args, &mut o, &mut e), EXIT_BAD_INPUT);
    assert!(String::from_utf8(e).unwrap().contains("matrix cell 9 does not exist (the matrix has 2 cells"));
}

#[test]
fn a_declared_fault_that_never_fires_fails_the_run() {
    // Nobody sends media, so a rule on media uploads matches nothing.
    let dir = tempfile::tempdir().unwrap();
    let p = write(
        &dir,
        "quiet.toml",
        "[scenario]\nname = \"quiet\"\nduration = \"3s\"\n[users]\nnames = [\"a\", \"b\"]\n[workload]\ndirect_per_s = 2\n\
         [[faults.frames]]\nat = \"1s\"\nkind = \"media-upload\"\ndrop_per_mille = 1000\n",
    );
    let (code, out, _, _) = run(p.clone(), None);
    assert_eq!(code, EXIT_FAILED, "{out}");
    assert!(
        out.contains("GUARD FAILED faults.frames[0] fires: never fired: media-upload frames matched 0 frames"),
        "{out}"
    );

    // The same run passes once the guard is made advisory.
    let text = std::fs::read_to_string(&p).unwrap() + "[expect]\nfaults_fire = false\n";
    let p2 = write(&dir, "quiet2.toml", &text.replace("name = \"quiet\"", "name = \"quiet2\""));
    let (code, out, _, _) = run(p2, None);
    assert_eq!(code, EXIT_PASSED, "{out}");
}

#[test]
fn a_run_that_does_not_converge_violates_converges() {
    // A burst at the very end and 1 ms to settle: the server cannot have
    // acknowledged it.
    let dir = tempfile::tempdir().unwrap();
    let p = write(
        &dir,
        "rush.toml",
        "[scenario]\nname = \"rush\"\nduration = \"3s\"\n[users]\nnames = [\"a\", \"b\"]\n\
         [[workload.bursts]]\nat = \"3s\"\nfrom = \"a\"\nto = \"b\"\ncount = 3\n[network]\nlatency = \"20ms\"\n\
         [quiesce]\nconverge_within = \"1ms\"\n",
    );
    let (code, out, _, _) = run(p, None);
    assert_eq!(code, EXIT_FAILED, "{out}");
    assert!(out.contains("VIOLATION converges"), "{out}");
    assert!(out.contains("never acknowledged by the server (quiesce allowed 1ms)"), "{out}");
}

#[test]
fn a_latency_bound_that_is_not_met_fails_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let p = write(
        &dir,
        "slow.toml",
        "[scenario]\nname = \"slow\"\nduration = \"5s\"\n[users]\nnames = [\"a\", \"b\"]\n[workload]\ndirect_per_s = 4\n\
         [network]\nlatency = \"80ms\"\n[expect]\np50_delivery_online_ms = 100\n",
    );
    let (code, out, _, _) = run(p, None);
    assert_eq!(code, EXIT_FAILED, "{out}");
    assert!(out.contains("GUARD FAILED p50 delivery to online recipients ≤ 100 ms: p50 = 1"), "{out}");
}

#[test]
fn a_client_bug_switched_on_in_the_file_is_caught() {
    // dedup-off under duplication: the app sees messages twice.
    let dir = tempfile::tempdir().unwrap();
    let p = write(
        &dir,
        "dedup.toml",
        "[scenario]\nname = \"dedup\"\nduration = \"5s\"\n[users]\nnames = [\"a\", \"b\"]\n[workload]\ndirect_per_s = 4\n\
         [network]\nduplicate_per_mille = 500\n[bugs]\nclient = [\"dedup-off\"]\n",
    );
    let (code, out, _, _) = run(p, None);
    assert_eq!(code, EXIT_FAILED, "{out}");
    assert!(out.contains("VIOLATION exactly-once"), "{out}");
}
