//! `bluetick check [--deep] [--property NAME] [--weaknesses] [--bug BUG]
//! [--write-scenario FILE]`: runs the model checks and prints, per property,
//! the states explored, unique states, maximum depth, time, states per
//! second and the verdict, then each counterexample as a numbered trace in
//! plain words; `--write-scenario` writes the first counterexample as a
//! simulator scenario file that `bluetick run` replays to the same failure.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use bluetick_crypto::CipherSuite;
use clap::Args;

use crate::config::{BugSwitch, ModelConfig};
use crate::model::{Action, MessagingModel};
use crate::properties::Check;
use crate::run::{self, CheckReport, RunOptions, Verdict};
use crate::scenario::write_scenario;
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
    /// Run only the configuration with this name (e.g. goal-3, as the
    /// first column prints it, without the suite).
    #[arg(long, value_name = "NAME")]
    pub config: Option<String>,
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
    /// Switch on a deliberate bug (as a scenario file's `[bugs]` names it,
    /// e.g. delete-on-send, dedup-off) and search the smallest configuration
    /// it shows in for the counterexample to its property (or to --property).
    #[arg(long, value_name = "BUG")]
    pub bug: Option<String>,
    /// Write the first counterexample found as a simulator scenario file
    /// (`bluetick run FILE` then fails on the same invariant).
    #[arg(long, value_name = "FILE")]
    pub write_scenario: Option<PathBuf>,
    /// Cipher suite of the messaging configurations: `bluetick-v1` (default),
    /// `signal-v3-compat`, or `symbolic-insecure` (no-security stand-ins for
    /// the public-key operations: more states per second, for deep runs).
    #[arg(long, value_name = "SUITE", value_parser = parse_suite)]
    pub suite: Option<CipherSuite>,
}

fn parse_suite(name: &str) -> Result<CipherSuite, String> {
    CipherSuite::from_name(name).ok_or_else(|| {
        let known: Vec<&str> = CipherSuite::ALL.iter().map(|s| s.name()).collect();
        format!("unknown suite {name:?}; known: {}", known.join(", "))
    })
}

/// A counterexample kept for `--write-scenario`: the configuration it was
/// found in, the property and the path.
struct Found {
    config: ModelConfig,
    check: Check,
    actions: Vec<Action>,
}

/// Runs `bluetick check`; exit code 0 when every verdict is as expected,
/// 1 when a property fails (or a weakness is not found), 2 on a setup error.
pub fn cli_check(args: CheckArgs) -> ExitCode {
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
    let mut out =
        Output { ok: true, rows: vec![header()], traces: String::new(), found: Vec::new(), suite: args.suite };
    if let Some(b) = args.bug.as_deref() {
        let Some(bug) = BugSwitch::from_name(b) else {
            let names: Vec<&str> = BugSwitch::ALL.iter().map(|b| b.name()).collect();
            eprintln!("error: unknown bug switch {b:?}; known: {}", names.join(", "));
            return ExitCode::from(2);
        };
        let (clean, target) = suite::bug_hunt(bug);
        let check = match wanted {
            None => target,
            Some(p) => match Check::from_name(p) {
                Some(c) => c,
                None => {
                    eprintln!("error: --bug explores the messaging model; {p:?} is not one of its properties");
                    return ExitCode::from(2);
                }
            },
        };
        let mut config = clean.with_bug(bug);
        config.name = format!("{}+{}", config.name, bug.name());
        if !config.checks.contains(&check.name()) {
            config.checks.push(check.name());
        }
        let options = RunOptions { stop_when_found: vec![check], ..options.clone() };
        if let Err(code) = out.run(config, &options, Some(check.name()), None) {
            return code;
        }
    } else {
        let configs = if args.deep { suite::deep() } else { suite::ci() };
        let named = args.config.as_deref();
        if let Some(n) = named {
            let mut all: Vec<ModelConfig> = suite::ci();
            all.extend(suite::deep());
            all.extend(suite::weaknesses().into_iter().map(|(c, _)| c));
            if !all.iter().any(|c| c.name == n) {
                let mut names: Vec<String> = Vec::new();
                for c in all {
                    if !names.contains(&c.name) {
                        names.push(c.name);
                    }
                }
                eprintln!("error: no configuration named {n:?}; known: {}", names.join(", "));
                return ExitCode::from(2);
            }
        }
        let targets =
            |c: &ModelConfig| wanted.is_none_or(|p| c.checks.contains(&p)) && named.is_none_or(|n| c.name == n);
        for config in configs.into_iter().filter(|c| targets(c)) {
            if let Err(code) = out.run(config, &options, wanted, None) {
                return code;
            }
        }
        // A weakness named by --config runs without --weaknesses.
        if args.weaknesses || named.is_some() {
            for (config, expected) in suite::weaknesses() {
                if !targets(&config) {
                    continue;
                }
                let options = RunOptions { stop_when_found: vec![expected], ..options.clone() };
                if let Err(code) = out.run(config, &options, wanted, Some(expected)) {
                    return code;
                }
            }
        }
        let x3dh = wanted.is_none_or(|p| p == X3DH_FORWARD_SECRECY || p == X3DH_THEFT_AFTER_HANDSHAKE);
        if x3dh && named.is_none() {
            out.x3dh(args.weaknesses);
        }
    }
    for r in &out.rows {
        println!("{r}");
    }
    if !out.traces.is_empty() {
        println!("\n{}", out.traces);
    }
    if let Some(path) = &args.write_scenario {
        match out.found.first() {
            None => eprintln!("no counterexample was found, so no scenario file was written"),
            Some(f) => {
                if let Err(e) = write_found(f, path) {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
                println!(
                    "wrote {} (a counterexample to {} in {}); replay it with `bluetick run {}`",
                    path.display(),
                    f.check.name(),
                    f.config.name,
                    path.display()
                );
            }
        }
    }
    if out.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// Writes a counterexample as a scenario file at `path`.
fn write_found(f: &Found, path: &std::path::Path) -> Result<(), String> {
    let model = MessagingModel::new(f.config.clone()).map_err(|e| e.to_string())?;
    let text = write_scenario(&model, f.check, &f.actions).map_err(|e| e.to_string())?;
    std::fs::write(path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// What `bluetick check` prints and returns, built up run by run.
struct Output {
    ok: bool,
    rows: Vec<String>,
    traces: String,
    found: Vec<Found>,
    suite: Option<CipherSuite>,
}

impl Output {
    /// Runs one configuration and records its rows, traces and counterexamples.
    fn run(
        &mut self,
        config: ModelConfig,
        options: &RunOptions,
        wanted: Option<&str>,
        expected: Option<Check>,
    ) -> Result<(), ExitCode> {
        let mut config = config;
        if let Some(suite) = self.suite {
            config.suite = suite;
            if suite != CipherSuite::default() {
                config.name = format!("{} [{}]", config.name, suite.name());
            }
        }
        let report = match run::run(config.clone(), options) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("error: {e}");
                return Err(ExitCode::from(2));
            }
        };
        self.ok &= match expected {
            Some(c) => report.verdict(c) == Some(Verdict::Fails),
            None => report.results.iter().all(|r| r.verdict.is_ok() || !selected(wanted, r.property)),
        };
        self.rows.extend(report_rows(&report, wanted, expected));
        self.traces += &failing_traces(&report, wanted, expected);
        for r in report.results.iter().filter(|r| r.verdict == Verdict::Fails && selected(wanted, r.property)) {
            if let Some(check) = Check::from_name(r.property) {
                self.found.push(Found { config: config.clone(), check, actions: r.actions.clone() });
            }
        }
        Ok(())
    }

    /// The X3DH forward-secrecy model (and its known weakness).
    fn x3dh(&mut self, weaknesses: bool) {
        let mut x3dh_runs = vec![("x3dh", X3dhConfig::ci(), true)];
        if weaknesses {
            x3dh_runs.push(("weakness-x3dh-no-one-time", X3dhConfig::without_one_time(), false));
        }
        for (name, config, should_hold) in x3dh_runs {
            let started = clock();
            let (unique, holds, reached) = X3dhModel::new(config).check();
            let secs = since(started);
            self.ok &= holds == should_hold && reached;
            let verdict = if holds { "Holds" } else { "Fails" };
            let expect = if should_hold { "" } else { " (expected: known weakness)" };
            self.rows.push(row(name, X3DH_FORWARD_SECRECY, unique, unique, 0, secs, &format!("{verdict}{expect}")));
            let guard = if reached { "Reached" } else { "NotReached" };
            self.rows.push(row(name, X3DH_THEFT_AFTER_HANDSHAKE, unique, unique, 0, secs, guard));
        }
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
        let why = if expected.is_some_and(|c| c.name() == r.property) { "Known weakness" } else { "Counterexample" };
        let _ = writeln!(out, "{why}: {} fails in {}", r.property, report.config);
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
