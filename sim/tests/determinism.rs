#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Same scenario and seed ⇒ the same trace (`trace_hash`) and byte-identical
//! report files; another seed ⇒ another trace. Matrix cells and swarm mode
//! resolve deterministically too.

use bluetick_sim::run::{self, RunOptions};
use bluetick_sim::scenario::resolve::{resolve, KnobSource};
use bluetick_sim::{report, scenario};

/// Small but busy: loss, duplication, reordering, a crash, reads.
const BUSY: &str = r#"
[scenario]
name = "busy"
duration = "6s"
[users]
names = ["alice", "bob", "carol"]
[workload]
direct_per_s = 4
read_delay = { min = "100ms", max = "1s" }
[network]
latency = { min = "2ms", max = "40ms" }
loss_per_mille = 50
duplicate_per_mille = 50
[[faults.crash]]
at = "3s"
users = ["bob"]
[quiesce]
converge_within = "2m"
"#;

fn outcome(seed: u64) -> run::RunOutcome {
    let s = scenario::from_str("busy.toml", BUSY).unwrap();
    run::run(&s, &RunOptions { seed, ..RunOptions::default() }).unwrap()
}

#[test]
fn the_same_seed_gives_the_same_trace_and_reports_and_another_seed_does_not() {
    let a = outcome(7);
    let b = outcome(7);
    let c = outcome(8);
    assert!(a.passed, "{:?}", a.verdicts);
    assert!(a.trace_lines > 100, "the trace records the run");
    assert_eq!(a.trace_hash, b.trace_hash);
    assert_eq!(a.trace_jsonl, b.trace_jsonl);
    assert_ne!(a.trace_hash, c.trace_hash);

    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let pa = report::write(da.path(), &a).unwrap();
    let pb = report::write(db.path(), &b).unwrap();
    for (x, y) in [(&pa.json, &pb.json), (&pa.markdown, &pb.markdown), (&pa.trace, &pb.trace)] {
        assert_eq!(std::fs::read(x).unwrap(), std::fs::read(y).unwrap(), "{} differs", x.display());
    }
    assert!(pa.dir.ends_with("busy/7"));
    let hash = hex_sha256(&std::fs::read(&pa.trace).unwrap());
    assert_eq!(hash, a.trace_hash, "trace_hash is the SHA-256 of trace.jsonl");
}

fn hex_sha256(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

#[test]
fn report_json_has_stable_field_names() {
    let o = outcome(7);
    let v: serde_json::Value = serde_json::from_str(&report::to_json(&o).unwrap()).unwrap();
    for key in [
        "scenario",
        "seed",
        "driver",
        "resolved",
        "verdicts",
        "counts",
        "latency",
        "trace_hash",
        "version",
        "passed",
        "guards",
        "reproduce",
    ] {
        assert!(v.get(key).is_some(), "report.json lacks {key}");
    }
    assert_eq!(v["scenario"], "busy");
    assert_eq!(v["seed"], 7);
    assert_eq!(v["driver"], "direct");
    assert_eq!(v["reproduce"], "bluetick run busy.toml --seed 7");
    assert_eq!(v["resolved"]["knobs"]["loss_per_mille"], 50);
    assert!(v["verdicts"].as_array().unwrap().iter().any(|x| x["invariant"] == "exactly-once" && x["state"] == "held"));
}

#[test]
fn plans_are_a_function_of_the_seed() {
    let s = scenario::from_str("busy.toml", BUSY).unwrap();
    let p1 = resolve(&s, 3, None, false).unwrap();
    let p2 = resolve(&s, 3, None, false).unwrap();
    let p3 = resolve(&s, 4, None, false).unwrap();
    assert_eq!(p1.steps, p2.steps);
    assert_ne!(p1.steps, p3.steps);
    assert_eq!(p1.planned_sends["direct"], 24, "4/s for 6 s");
}

#[test]
fn matrix_cells_cross_the_knobs_and_swarm_draws_only_unset_ones() {
    let text =
        BUSY.replace("[quiesce]", "[matrix]\nloss_per_mille = [0, 10, 20]\nduplicate_per_mille = [0, 5]\n\n[quiesce]");
    let s = scenario::from_str("m.toml", &text).unwrap();
    let cells: Vec<(u32, u32)> = (0..6)
        .map(|c| {
            let p = resolve(&s, 1, Some(c), false).unwrap();
            (p.knobs.loss_per_mille, p.knobs.duplicate_per_mille)
        })
        .collect();
    assert_eq!(cells, [(0, 0), (0, 5), (10, 0), (10, 5), (20, 0), (20, 5)]);
    assert!(resolve(&s, 1, Some(6), false).is_err());

    let swarm: Vec<_> = (0..20).map(|seed| resolve(&s, seed, Some(0), true).unwrap()).collect();
    for p in &swarm {
        assert_eq!(p.knob_sources["loss_per_mille"], KnobSource::Matrix);
        assert_eq!(p.knob_sources["latency_min"], KnobSource::File);
        assert_eq!(p.knob_sources["client_crashes_per_min"], KnobSource::Swarm);
    }
    let rates: std::collections::BTreeSet<u64> =
        swarm.iter().map(|p| (p.knobs.client_crashes_per_min * 100.0) as u64).collect();
    assert!(rates.len() > 5, "swarm draws differ by seed: {rates:?}");
    let again = resolve(&s, 3, Some(0), true).unwrap();
    assert_eq!(again.knobs, swarm[3].knobs);
}
