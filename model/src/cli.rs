//! `bluetick check [--deep] [--property NAME] [--weaknesses]`: runs the
//! model checks and prints, per property, the states explored, unique
//! states, maximum depth, time, states per second and the verdict, then each
//! counterexample as a numbered trace.

use std::fmt::Write as _;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;

use crate::config::ModelConfig;
use crate::properties::Check;
use crate::run::{self, CheckReport, RunOptions, Verdict};
use crate::suite;
use crate::x3dh::{X3dhConfig, X3dhModel, X3DH_FORWARD_SECRECY, X3DH_THEFT_AFTER_HANDSHAKE};

/// Arguments of `bluetick check`.
#[derive(Debug, Clone, Default, Args)]
pub struct CheckArgs {
    /// Run the deep bounds (minutes) instead of the CI bounds (seconds).
    #[arg(long)]
    pub deep: bool,
    /// Check only the configurations that target this property
    /// (e.g. exactly-once, at-least-once, forward-secrecy, x3dh-forward-secrecy).
    #[arg(long, value_name = "NAME")]
    pub property: Option<String>,
    /// Also run the known-weakness configurations, which must each produce
    /// their documented counterexample.
    #[arg(long)]
    pub weaknesses: bool,
    /// Checker threads (1 keeps state counts reproducible under depth bounds).
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Stop each configuration after this many seconds (verdicts then say Incomplete).
    #[arg(long, value_name = "SECONDS")]
    pub timeout_secs: Option<u64>,
}

/// Runs `bluetick check`; exit code 0 when every verdict is as expected,
/// 1 when a property fails (or a weakness is not found), 2 on a setup error.
pub fn cli_check(args: CheckArgs) -> ExitCode {
    let configs = if args.deep { suite::deep() } else { suite::ci() };
    let wanted = args.property.as_deref();
    if let Some(p) = wanted {
        let known = Check::from_name(p).is_some() || p == X3DH_FORWARD_SECRECY || p == X3DH_THEFT_AFTER_HANDSHAKE;
        if !known {
            eprintln!("error: unknown property {p:?}; known: {}", known_names().join(", "));
            return ExitCode::from(2);
        }
    }
    let options = RunOptions {
        search: if args.deep { run::Search::Dfs } else { run::Search::Bfs },
        threads: args.threads.max(1),
        timeout: args.timeout_secs.map(Duration::from_secs),
        stop_when_found: Vec::new(),
    };
    let mut ok = true;
    let mut rows = vec![header()];
    let mut traces = String::new();
    let targets = |c: &ModelConfig| wanted.is_none_or(|p| c.checks.contains(&p));
    for config in configs.into_iter().filter(|c| targets(c)) {
        match run::run(config, &options) {
            Ok(report) => {
                ok &= report.results.iter().all(|r| r.verdict.is_ok() || !selected(wanted, r.property));
                rows.extend(report_rows(&report, wanted, None));
                traces += &failing_traces(&report, wanted, None);
            }
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
        }
    }
    if args.weaknesses {
        for (config, expected) in suite::weaknesses() {
            if !targets(&config) {
                continue;
            }
            let options = RunOptions { stop_when_found: vec![expected], ..options.clone() };
            match run::run(config, &options) {
                Ok(report) => {
                    ok &= report.verdict(expected) == Some(Verdict::Fails);
                    rows.extend(report_rows(&report, wanted, Some(expected)));
                    traces += &failing_traces(&report, wanted, Some(expected));
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            }
        }
    }
    if wanted.is_none_or(|p| p == X3DH_FORWARD_SECRECY || p == X3DH_THEFT_AFTER_HANDSHAKE) {
        let mut x3dh_runs = vec![("x3dh", X3dhConfig::ci(), true)];
        if args.weaknesses {
            x3dh_runs.push(("weakness-x3dh-no-one-time", X3dhConfig::without_one_time(), false));
        }
        for (name, config, should_hold) in x3dh_runs {
            let started = clock();
            let (unique, holds, reached) = X3dhModel::new(config).check();
            let secs = since(started);
            ok &= holds == should_hold && reached;
            let verdict = if holds { "Holds" } else { "Fails" };
            let expect = if should_hold { "" } else { " (expected: known weakness)" };
            rows.push(row(name, X3DH_FORWARD_SECRECY, unique, unique, 0, secs, &format!("{verdict}{expect}")));
            let guard = if reached { "Reached" } else { "NotReached" };
            rows.push(row(name, X3DH_THEFT_AFTER_HANDSHAKE, unique, unique, 0, secs, guard));
        }
    }
    for r in rows {
        println!("{r}");
    }
    if !traces.is_empty() {
        println!("\n{traces}");
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

fn selected(wanted: Option<&str>, property: &str) -> bool {
    wanted.is_none_or(|p| p == property)
}

fn known_names() -> Vec<&'static str> {
    let mut v: Vec<&'static str> = Check::ALL.iter().map(|c| c.name()).collect();
    v.push(X3DH_FORWARD_SECRECY);
    v.push(X3DH_THEFT_AFTER_HANDSHAKE);
    v
}

fn header() -> String {
    format!(
        "{:<28} {:<28} {:>10} {:>9} {:>5} {:>8} {:>9}  verdict",
        "config", "property", "states", "unique", "depth", "secs", "unique/s"
    )
}

fn row(config: &str, property: &str, states: usize, unique: usize, depth: usize, secs: f64, verdict: &str) -> String {
    let rate = if secs > 0.0 { unique as f64 / secs } else { 0.0 };
    format!("{config:<28} {property:<28} {states:>10} {unique:>9} {depth:>5} {secs:>8.2} {rate:>9.0}  {verdict}")
}

fn report_rows(report: &CheckReport, wanted: Option<&str>, expected: Option<Check>) -> Vec<String> {
    report
        .results
        .iter()
        .filter(|r| selected(wanted, r.property))
        .map(|r| {
            let mut verdict = format!("{:?}", r.verdict);
            if expected.is_some_and(|c| c.name() == r.property) {
                verdict += " (expected: known weakness)";
            }
            if !report.complete && r.verdict == Verdict::Incomplete {
                verdict += " (search stopped early)";
            }
            row(
                &report.config,
                r.property,
                report.states,
                report.unique_states,
                report.max_depth,
                report.seconds,
                &verdict,
            )
        })
        .collect()
}

fn failing_traces(report: &CheckReport, wanted: Option<&str>, expected: Option<Check>) -> String {
    let mut out = String::new();
    for r in report.results.iter().filter(|r| selected(wanted, r.property)) {
        let Some(trace) = &r.trace else { continue };
        if r.verdict != Verdict::Fails {
            continue;
        }
        let why = if expected.is_some_and(|c| c.name() == r.property) { "known weakness" } else { "COUNTEREXAMPLE" };
        let _ = writeln!(out, "{why}: {} in {}", r.property, report.config);
        for line in trace {
            let _ = writeln!(out, "  {line}");
        }
        out.push('\n');
    }
    out
}

// Timing is reporting only; no model state sees the clock.
#[allow(clippy::disallowed_methods)]
fn clock() -> std::time::Instant {
    std::time::Instant::now()
}

fn since(t: std::time::Instant) -> f64 {
    t.elapsed().as_secs_f64()
}
