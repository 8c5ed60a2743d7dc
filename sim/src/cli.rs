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
    let code = run_all(&args, &mut std::io::stdout().lock(), &mut std::io::stderr().lock(), true);
    ExitCode::from(code)
}

/// `bluetick run` writing its summary to `out` and its errors to `err`;
/// returns the exit status ([`EXIT_PASSED`], [`EXIT_FAILED`], [`EXIT_BAD_INPUT`]).
pub fn run_with(args: &RunArgs, out: &mut dyn Write, err: &mut dyn Write) -> u8 {
    run_all(args, out, err, false)
}

/// [`run_with`]; `exiting` says the process ends as soon as this returns.
fn run_all(args: &RunArgs, out: &mut dyn Write, err: &mut dyn Write, exiting: bool) -> u8 {
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
    let mut runs_left = seeds.len() * cell_list.len();
    for seed in &seeds {
        for cell in &cell_list {
            let opts = RunOptions { seed: *seed, cell: *cell, swarm: args.swarm, driver };
            let started = wall_clock();
            let (outcome, finished) = match run::run_keeping_driver(&s, &opts) {
                Ok(o) => o,
                Err(e) => {
                    let _ = writeln!(err, "{}: {e}", s.file);
                    return EXIT_BAD_INPUT;
                }
            };
            runs_left -= 1;
            if exiting && runs_left == 0 {
                // Freeing a large run's world allocation by allocation took
                // 9–14% of `bluetick run` on the benchmark workload; the
                // process ends after this run's reports, and the OS takes
                // the memory back at once. Earlier runs are freed, or a
                // many-seed run would keep every world.
                std::mem::forget(finished);
            } else {
                drop(finished);
            }
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

/// Arguments of `bluetick sweep`.
#[derive(Debug, Clone, clap::Args)]
pub struct SweepArgs {
    /// The scenario file.
    pub scenario: PathBuf,
    /// Seeds to run: `A..B` (both included) or one seed.
    #[arg(long, default_value = "1..100")]
    pub seeds: crate::sweep::SeedSpan,
    /// Run only shard `i` of `n` (1-based; round-robin over the seeds), for a
    /// job runner that spreads a sweep over machines; join with `bluetick merge`.
    #[arg(long)]
    pub shard: Option<crate::sweep::Shard>,
    /// Runs at once (default: one per core).
    #[arg(long, short)]
    pub jobs: Option<usize>,
    /// Folder for reports: failing runs write `<out>/<scenario>/<seed>/`.
    #[arg(long, default_value = "reports")]
    pub out: PathBuf,
    /// Where to write the sweep's JSON (default:
    /// `<out>/<scenario>/sweep.json`, or `sweep-shard-<i>-of-<n>.json`).
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Driver (default: the scenario's).
    #[arg(long, value_enum)]
    pub driver: Option<DriverArg>,
    /// Only this matrix cell (default: every cell).
    #[arg(long)]
    pub cell: Option<usize>,
    /// Swarm mode: each seed draws the knobs the scenario leaves unset.
    #[arg(long)]
    pub swarm: bool,
    /// Runs the shrink of the smallest failing run may spend (0: no shrink).
    #[arg(long, default_value_t = crate::sweep::SHRINK_RUNS_DEFAULT)]
    pub shrink_runs: usize,
    /// No progress bar; only the summary.
    #[arg(long, short)]
    pub quiet: bool,
}

/// Arguments of `bluetick merge`.
#[derive(Debug, Clone, clap::Args)]
pub struct MergeArgs {
    /// The shard reports (`sweep-shard-<i>-of-<n>.json`), every shard once.
    #[arg(required = true)]
    pub shards: Vec<PathBuf>,
    /// Where to write the merged report.
    #[arg(long, short, default_value = "sweep.json")]
    pub out: PathBuf,
}

/// Failing runs listed one by one in a sweep's summary; the rest are in the JSON.
const SWEEP_FAILURES_SHOWN: usize = 20;

/// Runs `bluetick sweep` and returns its exit status.
pub fn cli_sweep(args: SweepArgs) -> ExitCode {
    ExitCode::from(sweep_with(&args, &mut std::io::stdout().lock(), &mut std::io::stderr().lock()))
}

/// `bluetick sweep` writing its summary to `out` and errors to `err`; exit
/// status as for `bluetick run`.
pub fn sweep_with(args: &SweepArgs, out: &mut dyn Write, err: &mut dyn Write) -> u8 {
    use crate::sweep::{self, SweepPlan};
    let text = match std::fs::read_to_string(&args.scenario) {
        Ok(t) => t,
        Err(e) => {
            let _ = writeln!(err, "cannot read {}: {e}", args.scenario.display());
            return EXIT_BAD_INPUT;
        }
    };
    let s = match scenario::from_str(&args.scenario.display().to_string(), &text) {
        Ok(s) => s,
        Err(e) => {
            let _ = writeln!(err, "{e}");
            return EXIT_BAD_INPUT;
        }
    };
    let jobs = args.jobs.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let plan = SweepPlan {
        seeds: args.seeds,
        shard: args.shard,
        cell: args.cell,
        swarm: args.swarm,
        driver: args.driver.map(|d| match d {
            DriverArg::Direct => DriverKind::Direct,
            DriverArg::Turmoil => DriverKind::Turmoil,
        }),
        jobs,
    };
    let total = sweep::work_list(&s, &plan).len() as u64;
    let bar = if args.quiet {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::with_draw_target(Some(total), indicatif::ProgressDrawTarget::stderr())
    };
    if let Ok(style) = indicatif::ProgressStyle::with_template("[{elapsed_precise}] {bar:40} {pos}/{len} runs, {msg}") {
        bar.set_style(style);
    }
    let failed = std::sync::atomic::AtomicU64::new(0);
    let write_errors = std::sync::Mutex::new(Vec::new());
    let result = sweep::sweep(&s, &plan, |o| {
        if !o.passed {
            let n = failed.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
            bar.set_message(format!("{n} failed"));
            if let Err(e) = report::write(&args.out, o) {
                if let Ok(mut w) = write_errors.lock() {
                    w.push(e.to_string());
                }
            }
        }
        bar.inc(1);
    });
    bar.finish_and_clear();
    let mut report = match result {
        Ok(r) => r,
        Err(e) => {
            let _ = writeln!(err, "{}: {e}", s.file);
            return EXIT_BAD_INPUT;
        }
    };
    for e in write_errors.into_inner().unwrap_or_default() {
        let _ = writeln!(err, "{e}");
    }
    let shard = report.shard.map(|sh| format!(" (shard {sh})")).unwrap_or_default();
    let _ = writeln!(
        out,
        "{}: seeds {}{shard}, driver {}: {} runs, {} passed, {} failed",
        report.scenario, report.seeds, report.driver, report.runs, report.passed, report.failed
    );
    for r in report.failures().take(SWEEP_FAILURES_SHOWN) {
        let what: Vec<&str> = r.violated.iter().chain(r.failed_guards.iter()).map(String::as_str).collect();
        let _ = writeln!(out, "  FAILED seed {}: {} — reproduce: {}", r.seed, what.join(", "), r.reproduce);
    }
    if report.failed > SWEEP_FAILURES_SHOWN as u64 {
        let _ = writeln!(out, "  … {} more in the JSON", report.failed - SWEEP_FAILURES_SHOWN as u64);
    }
    if args.shrink_runs > 0 {
        let first = report.failures().next().cloned();
        if let Some(first) = first {
            match shrink_and_save(args, &s, &text, &plan, &first, out) {
                Ok(summary) => report.shrunk = Some(summary),
                Err(e) => {
                    let _ = writeln!(err, "{e}");
                    return EXIT_BAD_INPUT;
                }
            }
        }
    }
    let json_path = args.json.clone().unwrap_or_else(|| {
        let name = match report.shard {
            Some(sh) => format!("sweep-shard-{}-of-{}.json", sh.index, sh.count),
            None => "sweep.json".to_owned(),
        };
        args.out.join(&report.scenario).join(name)
    });
    if let Err(e) = write_json(&json_path, &report) {
        let _ = writeln!(err, "{e}");
        return EXIT_BAD_INPUT;
    }
    let _ = writeln!(out, "sweep report: {}", json_path.display());
    if report.failed > 0 {
        EXIT_FAILED
    } else {
        EXIT_PASSED
    }
}

fn shrink_and_save(
    args: &SweepArgs,
    s: &scenario::Scenario,
    text: &str,
    plan: &crate::sweep::SweepPlan,
    first: &crate::sweep::SeedResult,
    out: &mut dyn Write,
) -> Result<crate::sweep::ShrinkSummary, report::ReportError> {
    use crate::sweep::{shrink, Failure, ShrinkSummary};
    let opts = RunOptions { seed: first.seed, cell: first.cell, swarm: plan.swarm, driver: plan.driver };
    let failure = Failure {
        violated: first.violated.iter().cloned().collect(),
        failed_guards: first.failed_guards.iter().cloned().collect(),
    };
    let mut dir = args.out.join(&s.name).join(first.seed.to_string());
    if let Some(c) = first.cell {
        dir = dir.join(format!("cell-{c}"));
    }
    let path = dir.join("minimal.toml");
    let shrunk = shrink(&path.display().to_string(), text, &opts, &failure, args.shrink_runs);
    let mut file = format!(
        "# Shrunk by `bluetick sweep` from {} (seed {}) in {} runs; it still fails: {}.\n\
         # Reproduce: bluetick run {} --seed {}{}\n# Steps kept:\n",
        s.file,
        first.seed,
        shrunk.runs,
        shrunk.failure.names().join(", "),
        path.display(),
        first.seed,
        first.cell.map(|c| format!(" --cell {c}")).unwrap_or_default(),
    );
    for step in &shrunk.steps {
        file += &format!("#   - {step}\n");
    }
    file += "\n";
    file += &shrunk.text;
    std::fs::create_dir_all(&dir)
        .and_then(|()| std::fs::write(&path, file))
        .map_err(|source| report::ReportError::Write { path: path.display().to_string(), source })?;
    let _ = writeln!(
        out,
        "shrunk seed {} in {} runs ({} steps kept): {}",
        first.seed,
        shrunk.runs,
        shrunk.steps.len(),
        path.display()
    );
    let rel = path.strip_prefix(&args.out).unwrap_or(&path).display().to_string();
    Ok(ShrinkSummary {
        seed: first.seed,
        cell: first.cell,
        failure: shrunk.failure.names(),
        steps: shrunk.steps,
        runs: shrunk.runs,
        file: rel,
    })
}

fn write_json(path: &std::path::Path, report: &crate::sweep::SweepReport) -> Result<(), report::ReportError> {
    let mut text = serde_json::to_string_pretty(report)?;
    text.push('\n');
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|source| report::ReportError::Write { path: dir.display().to_string(), source })?;
    }
    std::fs::write(path, text).map_err(|source| report::ReportError::Write { path: path.display().to_string(), source })
}

/// Runs `bluetick merge` and returns its exit status.
pub fn cli_merge(args: MergeArgs) -> ExitCode {
    ExitCode::from(merge_with(&args, &mut std::io::stdout().lock(), &mut std::io::stderr().lock()))
}

/// `bluetick merge`: reads every shard report, joins them, writes the merged
/// report. Exit 0 when every run passed, 1 when some failed, 2 when the
/// shards do not make one whole sweep or cannot be read.
pub fn merge_with(args: &MergeArgs, out: &mut dyn Write, err: &mut dyn Write) -> u8 {
    let mut parts = Vec::new();
    for p in &args.shards {
        let parsed = std::fs::read_to_string(p)
            .map_err(|e| e.to_string())
            .and_then(|t| serde_json::from_str::<crate::sweep::SweepReport>(&t).map_err(|e| e.to_string()));
        match parsed {
            Ok(r) => parts.push(r),
            Err(e) => {
                let _ = writeln!(err, "{}: {e}", p.display());
                return EXIT_BAD_INPUT;
            }
        }
    }
    let merged = match crate::sweep::merge(&parts) {
        Ok(m) => m,
        Err(e) => {
            let _ = writeln!(err, "{e}");
            return EXIT_BAD_INPUT;
        }
    };
    if let Err(e) = write_json(&args.out, &merged) {
        let _ = writeln!(err, "{e}");
        return EXIT_BAD_INPUT;
    }
    let _ = writeln!(
        out,
        "{}: seeds {} from {} shards: {} runs, {} passed, {} failed; merged report: {}",
        merged.scenario,
        merged.seeds,
        parts.len(),
        merged.runs,
        merged.passed,
        merged.failed,
        args.out.display()
    );
    if merged.failed > 0 {
        EXIT_FAILED
    } else {
        EXIT_PASSED
    }
}
