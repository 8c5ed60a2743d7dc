//! `bluetick run`: load a scenario, run it (each seed, each matrix cell),
//! write the reports and print a summary. Exit status 0 when every run
//! passed, 1 when any invariant was violated or a required guard failed,
//! 2 on bad input (a scenario error, an unknown matrix cell, a driver that
//! cannot do what the scenario asks, an unwritable report folder).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use crate::report;
use crate::run::{self, RunOptions, RunOutcome, VerdictState};
use crate::scenario::resolve::cells;
use crate::scenario::spec::DriverKind;
use crate::scenario::{self, units::format_duration_ms};

/// Which driver to run, on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DriverArg {
    /// The in-process World (fast, no tokio).
    Direct,
    /// The real tokio drivers over turmoil.
    Turmoil,
}

/// Arguments of `bluetick run`.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// The scenario file (`scenarios/<name>.toml`).
    pub scenario: PathBuf,
    /// Run this seed only (default: the scenario's `seed`, or its `seeds`).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Folder for reports; a run writes `<out>/<scenario>/<seed>/`.
    #[arg(long, default_value = "reports")]
    pub out: PathBuf,
    /// Driver (default: the scenario's `driver`, else direct).
    #[arg(long, value_enum)]
    pub driver: Option<DriverArg>,
    /// Run only this matrix cell (numbered from 0, as reports name them).
    #[arg(long)]
    pub cell: Option<usize>,
    /// Swarm mode: draw every knob the scenario leaves unset from the seed.
    #[arg(long)]
    pub swarm: bool,
    /// Print only the final line of each run.
    #[arg(long, short)]
    pub quiet: bool,
}

/// Exit status: every run passed.
pub const EXIT_PASSED: u8 = 0;
/// Exit status: an invariant was violated or a required guard failed.
pub const EXIT_FAILED: u8 = 1;
/// Exit status: bad input.
pub const EXIT_BAD_INPUT: u8 = 2;

/// Runs `bluetick run` and returns its exit status.
pub fn cli_run(args: RunArgs) -> ExitCode {
    let code = run_with(&args, &mut std::io::stdout().lock(), &mut std::io::stderr().lock());
    ExitCode::from(code)
}

/// `bluetick run` writing its summary to `out` and its errors to `err`;
/// returns the exit status ([`EXIT_PASSED`], [`EXIT_FAILED`], [`EXIT_BAD_INPUT`]).
pub fn run_with(args: &RunArgs, out: &mut dyn Write, err: &mut dyn Write) -> u8 {
    let s = match scenario::load(&args.scenario) {
        Ok(s) => s,
        Err(e) => {
            let _ = writeln!(err, "{e}");
            return EXIT_BAD_INPUT;
        }
    };
    let seeds = match args.seed {
        Some(seed) => vec![seed],
        None => s.seeds.clone(),
    };
    let cell_list: Vec<Option<usize>> = match (args.cell, s.matrix.is_empty()) {
        (Some(c), _) => vec![Some(c)],
        (None, true) => vec![None],
        (None, false) => (0..cells(&s.matrix).len()).map(Some).collect(),
    };
    let driver = args.driver.map(|d| match d {
        DriverArg::Direct => DriverKind::Direct,
        DriverArg::Turmoil => DriverKind::Turmoil,
    });
    let mut status = EXIT_PASSED;
    for seed in &seeds {
        for cell in &cell_list {
            let opts = RunOptions { seed: *seed, cell: *cell, swarm: args.swarm, driver };
            let started = wall_clock();
            let outcome = match run::run(&s, &opts) {
                Ok(o) => o,
                Err(e) => {
                    let _ = writeln!(err, "{}: {e}", s.file);
                    return EXIT_BAD_INPUT;
                }
            };
            let wall = started.map(|t| t.elapsed());
            let paths = match report::write(&args.out, &outcome) {
                Ok(p) => p,
                Err(e) => {
                    let _ = writeln!(err, "{e}");
                    return EXIT_BAD_INPUT;
                }
            };
            print_summary(out, &outcome, &paths.markdown, wall, args.quiet);
            if !outcome.passed {
                status = EXIT_FAILED;
            }
        }
    }
    status
}

/// Wall time is shown to the person at the terminal and never written into a
/// report (reports depend only on the scenario and seed).
#[allow(clippy::disallowed_methods)]
fn wall_clock() -> Option<std::time::Instant> {
    Some(std::time::Instant::now())
}

fn print_summary(
    out: &mut dyn Write,
    o: &RunOutcome,
    md: &std::path::Path,
    wall: Option<std::time::Duration>,
    quiet: bool,
) {
    let verdict = if o.passed { "PASSED" } else { "FAILED" };
    let wall = wall.map(|w| format!(", {:.2} s wall", w.as_secs_f64())).unwrap_or_default();
    let cell = o.cell.map(|c| format!(" cell {c}")).unwrap_or_default();
    if !quiet {
        let _ = writeln!(out, "{} — seed {}{cell}, driver {}", o.scenario, o.seed, o.driver);
        for v in &o.verdicts {
            let sign = match v.state {
                VerdictState::Held => "✓",
                VerdictState::Violated => "✗",
                VerdictState::NotChecked => "·",
            };
            let note = match (&v.state, &v.reason) {
                (VerdictState::Violated, _) => format!("{} violation(s)", v.violations),
                (_, Some(r)) => format!("not checked: {r}"),
                _ => "held".to_owned(),
            };
            let _ = writeln!(out, "  {sign} {:<28} {note}", v.invariant);
        }
        for g in &o.guards {
            let sign = if g.passed {
                "✓"
            } else if g.required {
                "✗"
            } else {
                "!"
            };
            let _ = writeln!(out, "  {sign} {} — {}", g.name, g.detail);
        }
        let keys = [
            "messages_sent",
            "app_deliveries",
            "frames_dropped",
            "frames_duplicated",
            "redeliveries",
            "duplicates_suppressed",
            "client_crashes",
            "server_crashes",
            "expiries_reported",
        ];
        let shown: Vec<String> = keys.iter().filter_map(|k| o.counts.get(*k).map(|v| format!("{k}={v}"))).collect();
        let _ = writeln!(out, "  counts: {}", shown.join(" "));
        if let Some(p) = o.latency.online {
            let _ = writeln!(
                out,
                "  latency to online recipients: p50 {} ms, p90 {} ms, p99 {} ms, max {} ms ({} samples)",
                p.p50, p.p90, p.p99, p.max, p.samples
            );
        }
        let _ = writeln!(
            out,
            "  simulated {} + quiesce {}; trace_hash {}",
            format_duration_ms(o.sim_ms.get("end_of_workload").copied().unwrap_or(0)),
            format_duration_ms(o.sim_ms.get("quiesce").copied().unwrap_or(0)),
            o.trace_hash
        );
        let _ = writeln!(out, "  report: {}", md.display());
    }
    for v in o.violated() {
        if let Some(f) = v.first.first() {
            let rel = f.at_ms.saturating_sub(bluetick_core::world::EPOCH_MS);
            let _ = writeln!(out, "VIOLATION {} at t={}: {}", v.invariant, format_duration_ms(rel), f.detail);
        }
    }
    for g in o.failed_guards() {
        let _ = writeln!(out, "GUARD FAILED {}: {}", g.name, g.detail);
    }
    if !o.passed {
        let _ = writeln!(out, "reproduce: {}", o.reproduce);
    }
    let _ = writeln!(out, "{verdict} {} seed {}{cell}{wall}", o.scenario, o.seed);
}
