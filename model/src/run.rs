//! Running a check: build the model, explore it breadth-first with
//! stateright, time it, and turn the outcome into a [`CheckReport`] whose
//! counterexamples are readable numbered traces.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;
use stateright::{Checker, HasDiscoveries, Model};

use crate::config::ModelConfig;
use crate::model::{Action, MessagingModel};
use crate::properties::{Check, Kind};
use crate::system::{MState, SetupError};

/// Search order.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Search {
    /// Breadth first: shortest counterexamples, but the whole frontier of
    /// full states is in memory (gigabytes beyond a few 100,000 states).
    #[default]
    Bfs,
    /// Depth first: memory grows with the depth only; counterexamples are
    /// not the shortest. Under a depth bound it may miss states a shorter
    /// path would reach, so deep runs use it without one.
    Dfs,
}

/// How to run a check.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Search order.
    pub search: Search,
    /// Checker threads (1 gives reproducible state counts under a depth bound).
    pub threads: usize,
    /// Give up after this long (the verdicts then say "incomplete").
    pub timeout: Option<Duration>,
    /// Stop as soon as these properties have a discovery (bug hunts).
    pub stop_when_found: Vec<Check>,
}

impl RunOptions {
    /// One thread, no timeout, run to completion.
    pub fn exhaustive() -> Self {
        RunOptions { search: Search::Bfs, threads: 1, timeout: None, stop_when_found: Vec::new() }
    }

    /// Stop at the first discovery for `check`.
    pub fn hunt(check: Check) -> Self {
        RunOptions { search: Search::Bfs, threads: 1, timeout: None, stop_when_found: vec![check] }
    }
}

/// What the checker concluded about one property.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    /// `always`: no counterexample in the explored space.
    Holds,
    /// `always`: a counterexample was found.
    Fails,
    /// `sometimes`: an example was found.
    Reached,
    /// `sometimes`: never reached in the explored space (a vacuity warning).
    NotReached,
    /// The search stopped early (timeout or another property's bug hunt) without a discovery.
    Incomplete,
}

impl Verdict {
    /// Whether this verdict is what a correct system should produce.
    pub fn is_ok(self) -> bool {
        matches!(self, Verdict::Holds | Verdict::Reached)
    }
}

/// One property's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct PropertyResult {
    /// The property.
    pub property: &'static str,
    /// Always or sometimes.
    pub always: bool,
    /// The verdict.
    pub verdict: Verdict,
    /// Counterexample (or example) as numbered lines, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trace: Option<Vec<String>>,
    /// The counterexample's actions from the initial state (empty if none):
    /// what `bluetick check --write-scenario` turns into a scenario file.
    #[serde(skip)]
    pub actions: Vec<Action>,
}

/// The outcome of checking one configuration.
#[derive(Debug, Clone, Serialize)]
pub struct CheckReport {
    /// Configuration name.
    pub config: String,
    /// States generated (including revisits).
    pub states: usize,
    /// Distinct states.
    pub unique_states: usize,
    /// Deepest state reached (steps from the initial state).
    pub max_depth: usize,
    /// Wall time of the search, seconds (not part of snapshots).
    #[serde(skip)]
    pub seconds: f64,
    /// Whether the search covered the whole bounded space.
    pub complete: bool,
    /// Per property.
    pub results: Vec<PropertyResult>,
}

impl CheckReport {
    /// Distinct states per second.
    pub fn unique_per_second(&self) -> f64 {
        if self.seconds > 0.0 {
            self.unique_states as f64 / self.seconds
        } else {
            0.0
        }
    }

    /// The result for `check`, if it was checked.
    pub fn result(&self, check: Check) -> Option<&PropertyResult> {
        self.results.iter().find(|r| r.property == check.name())
    }

    /// The verdict for `check`, if it was checked.
    pub fn verdict(&self, check: Check) -> Option<Verdict> {
        self.result(check).map(|r| r.verdict)
    }

    /// The deterministic part, for snapshots: counts and verdicts, no times, no traces.
    pub fn summary(&self) -> String {
        let mut out = format!(
            "config {}: {} states, {} unique, max depth {}, complete {}\n",
            self.config, self.states, self.unique_states, self.max_depth, self.complete
        );
        for r in &self.results {
            let _ = writeln!(out, "  {:<28} {:?}", r.property, r.verdict);
        }
        out
    }
}

/// Builds the model of `config` and checks it.
pub fn run(config: ModelConfig, options: &RunOptions) -> Result<CheckReport, SetupError> {
    let mut model = MessagingModel::new(config)?;
    if let Some(t) = options.timeout {
        model = model.with_time_limit(t);
    }
    Ok(check(model, options))
}

/// Checks an already built model.
pub fn check(model: MessagingModel, options: &RunOptions) -> CheckReport {
    let checks = model.checks();
    let name = model.config().name.clone();
    let depth = model.config().max_depth;
    let mut builder = model.checker().threads(options.threads.max(1));
    if let Some(d) = depth {
        builder = builder.target_max_depth(d);
    }
    if !options.stop_when_found.is_empty() {
        let names: BTreeSet<&'static str> = options.stop_when_found.iter().map(|c| c.name()).collect();
        builder = builder.finish_when(HasDiscoveries::AnyOf(names));
    }
    let started = start_clock();
    match options.search {
        Search::Bfs => summarize(builder.spawn_bfs().join(), name, &checks, options, started),
        Search::Dfs => summarize(builder.spawn_dfs().join(), name, &checks, options, started),
    }
}

fn summarize<C: Checker<MessagingModel>>(
    checker: C,
    name: String,
    checks: &[Check],
    options: &RunOptions,
    started: std::time::Instant,
) -> CheckReport {
    let seconds = elapsed(started);
    checker.model().end_drain();
    let hunting = !options.stop_when_found.is_empty();
    let found_target = options.stop_when_found.iter().any(|c| checker.discovery(c.name()).is_some());
    let model = checker.model();
    let complete = !(model.stopped_early() || (hunting && found_target));
    let results = checks
        .iter()
        .map(|c| {
            let found = checker.discovery(c.name());
            let always = c.kind() == Kind::Always;
            let verdict = match (always, found.is_some(), complete) {
                (true, true, _) => Verdict::Fails,
                (false, true, _) => Verdict::Reached,
                (true, false, true) => Verdict::Holds,
                (false, false, true) => Verdict::NotReached,
                (_, false, false) => Verdict::Incomplete,
            };
            let steps = found.map(|p| shortest_prefix(model, *c, p.into_vec()));
            let actions = steps.iter().flatten().filter_map(|(_, a)| a.clone()).collect();
            let trace = steps.map(|p| crate::trace::render_trace(model, *c, p));
            PropertyResult { property: c.name(), always, verdict, trace, actions }
        })
        .collect();
    CheckReport {
        config: name,
        states: checker.state_count(),
        unique_states: checker.unique_state_count(),
        max_depth: checker.max_depth(),
        seconds,
        complete,
        results,
    }
}

/// The path up to the first state that breaks `check` (a search that goes
/// on after a discovery may report a later state on the same path, as the
/// broken property stays broken), ending in that state.
fn shortest_prefix(
    model: &MessagingModel,
    check: Check,
    mut steps: Vec<(MState, Option<Action>)>,
) -> Vec<(MState, Option<Action>)> {
    if check.kind() == Kind::Always {
        if let Some(k) = steps.iter().position(|(s, _)| !model.holds(check, s)) {
            steps.truncate(k + 1);
            if let Some(last) = steps.last_mut() {
                last.1 = None;
            }
        }
    }
    steps
}

/// Formats a report as the CLI prints it.
pub fn format_report(report: &CheckReport, show_traces: bool) -> String {
    let mut out = format!(
        "{}: {} states, {} unique, depth {}, {:.2}s, {:.0} unique states/s{}\n",
        report.config,
        report.states,
        report.unique_states,
        report.max_depth,
        report.seconds,
        report.unique_per_second(),
        if report.complete { "" } else { " (incomplete)" }
    );
    for r in &report.results {
        let _ = writeln!(out, "  {:<28} {:?}", r.property, r.verdict);
        if show_traces && r.always && r.verdict == Verdict::Fails {
            if let Some(t) = &r.trace {
                for line in t {
                    let _ = writeln!(out, "    {line}");
                }
            }
        }
    }
    out
}

// Timing the search is reporting, not model behaviour: no model state ever
// sees the clock, so determinism is untouched.
#[allow(clippy::disallowed_methods)]
fn start_clock() -> std::time::Instant {
    std::time::Instant::now()
}

fn elapsed(started: std::time::Instant) -> f64 {
    started.elapsed().as_secs_f64()
}
