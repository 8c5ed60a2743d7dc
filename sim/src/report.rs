//! Reports of a run: `<out>/<scenario>/<seed>/` (plus `cell-<i>/` for a
//! matrix cell) holding `report.json` (stable field names, machine-readable),
//! `trace.jsonl` (one [`TraceEvent`](crate::driver::TraceEvent) per line; its
//! SHA-256 is the run's `trace_hash`), `report.md` (for people) and
//! `report.html` (the same with plots, see [`crate::html`]).
//!
//! Everything written is a function of the scenario, seed and crate version
//! only (no wall-clock times), so two runs of one seed write identical files.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::run::{Guard, Percentiles, RunOutcome, VerdictState};
use crate::scenario::units::format_duration_ms;

/// Where a run's files went.
#[derive(Debug, Clone)]
pub struct ReportPaths {
    /// The run's folder.
    pub dir: PathBuf,
    /// `report.json`.
    pub json: PathBuf,
    /// `report.md`.
    pub markdown: PathBuf,
    /// `trace.jsonl`.
    pub trace: PathBuf,
    /// `report.html` (self-contained, with SVG plots).
    pub html: PathBuf,
}

/// Why a report could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// A file or folder could not be written.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The path.
        path: String,
        /// The IO error.
        source: std::io::Error,
    },
    /// The report could not be encoded.
    #[error("cannot encode the report: {0}")]
    Encode(#[from] serde_json::Error),
}

/// The folder of a run's report under `out`.
pub fn report_dir(out: &Path, o: &RunOutcome) -> PathBuf {
    let mut dir = out.join(&o.scenario).join(o.seed.to_string());
    if let Some(c) = o.cell {
        dir = dir.join(format!("cell-{c}"));
    }
    dir
}

/// `report.json`'s text.
pub fn to_json(o: &RunOutcome) -> Result<String, serde_json::Error> {
    let mut s = serde_json::to_string_pretty(o)?;
    s.push('\n');
    Ok(s)
}

/// Writes the three files of a run under `out`.
pub fn write(out: &Path, o: &RunOutcome) -> Result<ReportPaths, ReportError> {
    let dir = report_dir(out, o);
    let io = |path: &Path| {
        let path = path.display().to_string();
        move |source| ReportError::Write { path, source }
    };
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    let paths = ReportPaths {
        json: dir.join("report.json"),
        markdown: dir.join("report.md"),
        trace: dir.join("trace.jsonl"),
        html: dir.join("report.html"),
        dir,
    };
    std::fs::write(&paths.json, to_json(o)?).map_err(io(&paths.json))?;
    std::fs::write(&paths.markdown, markdown(o)).map_err(io(&paths.markdown))?;
    std::fs::write(&paths.trace, &o.trace_jsonl).map_err(io(&paths.trace))?;
    std::fs::write(&paths.html, crate::html::html(o)).map_err(io(&paths.html))?;
    Ok(paths)
}

fn mark(state: VerdictState) -> &'static str {
    match state {
        VerdictState::Held => "held",
        VerdictState::Violated => "**VIOLATED**",
        VerdictState::NotChecked => "not checked",
    }
}

fn guard_mark(g: &Guard) -> &'static str {
    match (g.passed, g.required) {
        (true, _) => "ok",
        (false, true) => "**FAILED**",
        (false, false) => "failed (advisory)",
    }
}

fn pct_row(name: &str, p: Option<Percentiles>) -> String {
    match p {
        Some(p) => format!("| {name} | {} | {} | {} | {} | {} |\n", p.samples, p.p50, p.p90, p.p99, p.max),
        None => format!("| {name} | 0 | – | – | – | – |\n"),
    }
}

/// `report.md`'s text: summary, reproduce command, resolved configuration,
/// invariants, guards, counters, latencies.
pub fn markdown(o: &RunOutcome) -> String {
    let mut s = String::new();
    let verdict = if o.passed { "PASSED" } else { "FAILED" };
    let _ = writeln!(s, "# {} — seed {} — {verdict}\n", o.scenario, o.seed);
    let held = o.verdicts.iter().filter(|v| v.state == VerdictState::Held).count();
    let violated = o.verdicts.iter().filter(|v| v.state == VerdictState::Violated).count();
    let failed = o.failed_guards().count();
    let _ = writeln!(
        s,
        "{held} invariants held, {violated} violated; {failed} required guards failed. Driver `{}`, suite `{}`, bluetick-sim {} (commit `{}`).\n",
        o.driver, o.suite, o.version, o.commit
    );
    if o.suite == bluetick_crypto::CipherSuite::SymbolicInsecure.name() {
        let _ = writeln!(
            s,
            "**Symbolic crypto:** the public-key operations were no-security stand-ins (scale run); the protocol's behaviour is checked, its cryptography is not.\n"
        );
    }
    let _ = writeln!(s, "Reproduce:\n\n```sh\n{}\n```\n", o.reproduce);
    let _ = writeln!(s, "trace_hash `{}` ({} lines in trace.jsonl)\n", o.trace_hash, o.trace_lines);

    for v in o.verdicts.iter().filter(|v| v.state == VerdictState::Violated) {
        let _ = writeln!(s, "## Violation: {}\n", v.invariant);
        let _ = writeln!(s, "{} ({} in all)\n", v.meaning, v.violations);
        for f in &v.first {
            let _ = writeln!(s, "- at {}: {}", at(f.at_ms), f.detail);
        }
        s.push('\n');
    }

    let r = &o.resolved;
    let _ = writeln!(s, "## Resolved configuration\n");
    let _ = writeln!(s, "| key | value | from |\n|---|---|---|");
    let _ = writeln!(s, "| duration | {} | file |", format_duration_ms(r.duration_ms));
    let _ = writeln!(s, "| converge within | {} | file |", format_duration_ms(r.converge_within_ms));
    let _ = writeln!(s, "| users | {} ({}…) | file |", r.users, r.users_sample.join(", "));
    let k = r.knobs;
    let src = |key: &str| r.knob_sources.get(key).map_or("default".to_owned(), |s| format!("{s:?}").to_lowercase());
    let _ = writeln!(s, "| loss_per_mille | {} | {} |", k.loss_per_mille, src("loss_per_mille"));
    let _ = writeln!(s, "| duplicate_per_mille | {} | {} |", k.duplicate_per_mille, src("duplicate_per_mille"));
    let _ = writeln!(s, "| latency_min | {} ms | {} |", k.latency_min_ms, src("latency_min"));
    let _ = writeln!(s, "| latency_max | {} ms | {} |", k.latency_max_ms, src("latency_max"));
    let _ =
        writeln!(s, "| client_crashes_per_min | {} | {} |", k.client_crashes_per_min, src("client_crashes_per_min"));
    let _ =
        writeln!(s, "| server_crashes_per_min | {} | {} |", k.server_crashes_per_min, src("server_crashes_per_min"));
    let _ = writeln!(s, "| partitions_per_min | {} | {} |", k.partitions_per_min, src("partitions_per_min"));
    if let Some(c) = r.cell {
        let _ = writeln!(s, "| matrix cell | {c} | command line |");
    }
    let _ = writeln!(s, "| swarm | {} | file / command line |", r.swarm);
    let planned: Vec<String> = r.planned_sends.iter().map(|(k, v)| format!("{v} {k}")).collect();
    let _ = writeln!(
        s,
        "| planned sends | {} | seed |",
        if planned.is_empty() { "none".to_owned() } else { planned.join(", ") }
    );
    let _ = writeln!(s, "| timeline steps | {} | seed |", r.timeline_steps);
    for g in &r.groups {
        let get = |k: &str| g.get(k).map(|v| v.to_string()).unwrap_or_default();
        let _ = writeln!(
            s,
            "| group {} | admin {}, {} members, {} changes{} | file |",
            get("name"),
            get("admin"),
            get("members"),
            get("changes"),
            if g.contains_key("churn") { ", churn" } else { "" }
        );
    }
    let _ = writeln!(
        s,
        "\nFull detail (workload, faults, partitions, server, clients, bugs) is in `report.json` under `resolved`.\n"
    );

    let _ = writeln!(s, "## Invariants\n\n| invariant | verdict | violations | note |\n|---|---|---|---|");
    for v in &o.verdicts {
        let note = v.reason.clone().unwrap_or_else(|| v.meaning.clone());
        let _ = writeln!(s, "| {} | {} | {} | {} |", v.invariant, mark(v.state), v.violations, note);
    }

    if !o.guards.is_empty() {
        let _ = writeln!(s, "\n## Guards and bounds\n\n| requirement | result | seen |\n|---|---|---|");
        for g in &o.guards {
            let _ = writeln!(s, "| {} | {} | {} |", g.name, guard_mark(g), g.detail);
        }
    }

    let _ = writeln!(s, "\n## Counts\n\n| counter | value |\n|---|---|");
    for (k, v) in &o.counts {
        let _ = writeln!(s, "| {k} | {v} |");
    }
    if !o.frame_rules.is_empty() {
        let _ = writeln!(
            s,
            "\n## Frame rules\n\n| rule | matched | dropped | duplicated | delayed |\n|---|---|---|---|---|"
        );
        for row in &o.frame_rules {
            let get = |k: &str| row.get(k).map(|v| v.to_string().trim_matches('"').to_owned()).unwrap_or_default();
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} |",
                get("rule"),
                get("matched"),
                get("dropped"),
                get("duplicated"),
                get("delayed")
            );
        }
    }

    let _ = writeln!(s, "\n## Delivery latency (send → app), ms\n\n| recipients | samples | p50 | p90 | p99 | max |\n|---|---|---|---|---|---|");
    s += &pct_row("all", o.latency.all);
    s += &pct_row("online", o.latency.online);
    let _ = writeln!(
        s,
        "\nSimulated time: workload phase {}, quiesce {}.",
        at(o.sim_ms.get("end_of_workload").copied().unwrap_or(0)),
        format_duration_ms(o.sim_ms.get("quiesce").copied().unwrap_or(0))
    );
    s
}

/// A time in a report: relative to the simulation epoch when it is an
/// absolute simulated time.
fn at(ms: u64) -> String {
    let rel = ms.checked_sub(bluetick_core::world::EPOCH_MS).unwrap_or(ms);
    format!("t={}", format_duration_ms(rel))
}
