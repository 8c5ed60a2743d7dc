#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! `bluetick sweep` and `bluetick merge`: shards cover every seed exactly
//! once, merged shards equal the unsharded sweep (shrink included), merge
//! refuses an incomplete or mixed set, and a failing sweep shrinks to a
//! smaller scenario file that still fails the same way.

use std::path::{Path, PathBuf};

use bluetick_sim::cli::{merge_with, sweep_with, MergeArgs, SweepArgs, EXIT_BAD_INPUT, EXIT_FAILED, EXIT_PASSED};
use bluetick_sim::sweep::{SeedSpan, Shard, SweepReport};

/// Small enough that a debug build runs a seed in well under a second.
const BROKEN: &str = r#"
[scenario]
name = "sweep-broken"
description = "delete on send under loss, with extra faults a shrink can take away"
duration = "6s"
seed = 1

[users]
names = ["alice", "bob", "carol", "dave"]

[workload]
direct_per_s = 4

[network]
latency = { min = "5ms", max = "20ms" }
loss_per_mille = 150
duplicate_per_mille = 80

[[faults.crash]]
at = "2s"
users = ["carol"]

[bugs]
mailbox = "delete-on-send"
"#;

fn healthy() -> String {
    BROKEN.replace("[bugs]\nmailbox = \"delete-on-send\"\n", "").replace("sweep-broken", "sweep-healthy")
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn args(scenario: PathBuf, out: &Path, seeds: &str, shard: Option<&str>, shrink_runs: usize) -> SweepArgs {
    SweepArgs {
        scenario,
        seeds: seeds.parse().unwrap(),
        shard: shard.map(|s| s.parse().unwrap()),
        jobs: Some(2),
        out: out.to_path_buf(),
        json: None,
        driver: None,
        cell: None,
        swarm: false,
        shrink_runs,
        quiet: true,
    }
}

fn sweep(a: &SweepArgs) -> (u8, String, String) {
    let (mut o, mut e) = (Vec::new(), Vec::new());
    let code = sweep_with(a, &mut o, &mut e);
    (code, String::from_utf8(o).unwrap(), String::from_utf8(e).unwrap())
}

fn read_report(p: &Path) -> SweepReport {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn merge(out: &Path, shards: Vec<PathBuf>) -> (u8, String) {
    let (mut o, mut e) = (Vec::new(), Vec::new());
    let code = merge_with(&MergeArgs { shards, out: out.to_path_buf() }, &mut o, &mut e);
    (code, String::from_utf8(e).unwrap())
}

#[test]
fn shards_cover_every_seed_once_and_their_merge_equals_the_unsharded_sweep() {
    let dir = tempfile::tempdir().unwrap();
    let scenario = write(dir.path(), "healthy.toml", &healthy());
    let whole_out = dir.path().join("whole");
    let (code, out, err) = sweep(&args(scenario.clone(), &whole_out, "3..9", None, 0));
    assert_eq!(code, EXIT_PASSED, "{out}{err}");
    let whole = read_report(&whole_out.join("sweep-healthy/sweep.json"));
    assert_eq!(whole.results.iter().map(|r| r.seed).collect::<Vec<_>>(), (3..=9).collect::<Vec<_>>());
    assert!(whole.results.iter().all(|r| r.delivered > 0), "every seed delivered something: {whole:?}");

    let shard_out = dir.path().join("shards");
    let mut files = Vec::new();
    let mut seen = Vec::new();
    for i in 1..=3 {
        let (code, out, err) = sweep(&args(scenario.clone(), &shard_out, "3..9", Some(&format!("{i}/3")), 0));
        assert_eq!(code, EXIT_PASSED, "{out}{err}");
        let f = shard_out.join(format!("sweep-healthy/sweep-shard-{i}-of-3.json"));
        seen.extend(read_report(&f).results.iter().map(|r| r.seed));
        files.push(f);
    }
    seen.sort_unstable();
    assert_eq!(seen, (3..=9).collect::<Vec<_>>(), "each seed in exactly one shard");

    let merged_path = dir.path().join("merged.json");
    let (code, err) = merge(&merged_path, files.clone());
    assert_eq!(code, EXIT_PASSED, "{err}");
    assert_eq!(read_report(&merged_path), whole);
    assert_eq!(
        std::fs::read_to_string(&merged_path).unwrap(),
        std::fs::read_to_string(whole_out.join("sweep-healthy/sweep.json")).unwrap(),
        "byte for byte"
    );

    let (code, err) = merge(&merged_path, files[..2].to_vec());
    assert_eq!(code, EXIT_BAD_INPUT);
    assert!(err.contains("shards [3] of 3 are missing"), "{err}");
    let (code, err) = merge(&merged_path, vec![files[0].clone(), files[0].clone(), files[1].clone()]);
    assert_eq!(code, EXIT_BAD_INPUT);
    assert!(err.contains("given twice"), "{err}");
}

#[test]
fn merge_refuses_a_shard_that_lost_a_seed() {
    let r = |index, seeds: &[u64]| SweepReport {
        scenario: "s".into(),
        file: "s.toml".into(),
        version: "0".into(),
        driver: "direct".into(),
        swarm: false,
        only_cell: None,
        seeds: SeedSpan { first: 1, last: 4 },
        shard: Some(Shard { index, count: 2 }),
        runs: 0,
        passed: 0,
        failed: 0,
        results: seeds
            .iter()
            .map(|&seed| bluetick_sim::sweep::SeedResult {
                seed,
                cell: None,
                passed: true,
                violated: vec![],
                failed_guards: vec![],
                trace_hash: String::new(),
                delivered: 1,
                reproduce: String::new(),
            })
            .collect(),
        shrunk: None,
    };
    assert!(bluetick_sim::sweep::merge(&[r(1, &[1, 3]), r(2, &[2, 4])]).is_ok());
    let e = bluetick_sim::sweep::merge(&[r(1, &[1]), r(2, &[2, 4])]).unwrap_err();
    assert!(e.to_string().contains("seed 3 has no result"), "{e}");
    let e = bluetick_sim::sweep::merge(&[r(1, &[1, 3, 4]), r(2, &[2, 4])]).unwrap_err();
    assert!(e.to_string().contains("holds seed 4"), "{e}");
}

#[test]
fn a_failing_sweep_shrinks_to_a_smaller_scenario_that_fails_the_same_way() {
    let dir = tempfile::tempdir().unwrap();
    let scenario = write(dir.path(), "broken.toml", BROKEN);
    let out_dir = dir.path().join("out");
    let (code, out, err) = sweep(&args(scenario.clone(), &out_dir, "1..4", None, 40));
    assert_eq!(code, EXIT_FAILED, "{out}{err}");
    assert!(out.contains("FAILED seed"), "{out}");
    assert!(out.contains("reproduce: bluetick run"), "{out}");
    let report = read_report(&out_dir.join("sweep-broken/sweep.json"));
    let first = report.failures().next().expect("a failing seed").clone();
    assert!(first.violated.contains(&"at-least-once".to_owned()), "{first:?}");
    assert!(out_dir.join("sweep-broken").join(first.seed.to_string()).join("report.md").exists());

    let shrunk = report.shrunk.clone().expect("a shrink");
    assert_eq!(shrunk.seed, first.seed);
    assert!(!shrunk.steps.is_empty(), "something was taken away: {shrunk:?}");
    assert!(shrunk.failure.contains(&"at-least-once".to_owned()), "{shrunk:?}");
    let minimal = out_dir.join(&shrunk.file);
    let text = std::fs::read_to_string(&minimal).unwrap();
    assert!(text.lines().filter(|l| !l.starts_with('#')).count() < BROKEN.lines().count(), "{text}");
    assert!(text.contains("delete-on-send"), "the bug under test stays: {text}");

    // The minimal file replays to the same failure with `bluetick run`.
    let run_args = bluetick_sim::cli::RunArgs {
        scenario: minimal,
        seed: Some(first.seed),
        out: dir.path().join("rerun"),
        driver: None,
        cell: None,
        swarm: false,
        quiet: false,
    };
    let (mut o, mut e) = (Vec::new(), Vec::new());
    let code = bluetick_sim::cli::run_with(&run_args, &mut o, &mut e);
    let o = String::from_utf8(o).unwrap();
    assert_eq!(code, EXIT_FAILED, "{o}{}", String::from_utf8_lossy(&e));
    assert!(o.contains("VIOLATION at-least-once"), "{o}");

    // Sharded, the failing sweep merges to the same report, shrink included.
    let shard_out = dir.path().join("shards");
    let files: Vec<PathBuf> = (1..=2)
        .map(|i| {
            let (code, out, err) = sweep(&args(scenario.clone(), &shard_out, "1..4", Some(&format!("{i}/2")), 40));
            assert!(code == EXIT_FAILED || code == EXIT_PASSED, "{out}{err}");
            shard_out.join(format!("sweep-broken/sweep-shard-{i}-of-2.json"))
        })
        .collect();
    let merged_path = dir.path().join("merged.json");
    let (code, err) = merge(&merged_path, files);
    assert_eq!(code, EXIT_FAILED, "{err}");
    assert_eq!(read_report(&merged_path), report);
}
