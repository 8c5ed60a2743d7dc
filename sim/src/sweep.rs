//! Many seeds of one scenario: sweeps, shards, merging and shrinking.
//!
//! A sweep runs one scenario over a span of seeds (every matrix cell, or one)
//! and records one [`SeedResult`] per run. Runs are independent and each is a
//! function of its scenario and seed only, so they may run on several threads
//! at once: results are sorted by seed before anything is written, and the
//! sweep's output does not depend on how the threads were scheduled.
//!
//! Past one machine, `--shard i/n` keeps only the seeds of shard `i`
//! (round-robin over the span, so each shard gets a fair mix), an existing
//! job runner runs the shards, and [`merge`] joins their [`SweepReport`]s
//! into the report the unsharded sweep would have written.
//!
//! A failing run is shrunk by [`shrink`]: the scenario file is edited one
//! small step at a time (drop an element of a list, drop an optional key,
//! halve a number or a duration) and a step is kept when the run still
//! fails the same way. The result is a smaller scenario file that reproduces
//! the failure with the same seed.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::run::{self, RunError, RunOptions, RunOutcome};
use crate::scenario::{self, units, Scenario};

/// Most seeds one sweep accepts: a million runs is weeks of work on one
/// machine; a larger span is almost surely a typo, and shards exist for
/// spreading real work.
pub const SWEEP_SEEDS_MAX: u64 = 10_000_000;

/// Runs a shrink may spend by default. Each run replays the scenario in full,
/// so the budget bounds the time a failing sweep spends after it failed.
pub const SHRINK_RUNS_DEFAULT: usize = 150;

/// An inclusive span of seeds, written `A..B` (or one seed, `A`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeedSpan {
    /// First seed.
    pub first: u64,
    /// Last seed, included.
    pub last: u64,
}

/// A seed span or shard that could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpanError {
    /// Not `A..B`, `A..=B` or `A`.
    #[error("`{text}` is not a seed span: write `A..B` (both included) or one seed `A`")]
    Syntax {
        /// The text.
        text: String,
    },
    /// `B` before `A`.
    #[error("seed span {first}..{last} is empty: the last seed comes before the first")]
    Empty {
        /// First seed.
        first: u64,
        /// Last seed.
        last: u64,
    },
    /// Too many seeds.
    #[error("seed span has {seeds} seeds; at most {max} per sweep (use --shard to spread more)")]
    TooMany {
        /// Seeds in the span.
        seeds: u64,
        /// The limit.
        max: u64,
    },
    /// Not `i/n` with `1 <= i <= n`.
    #[error("`{text}` is not a shard: write `i/n` with 1 <= i <= n (e.g. 2/8)")]
    Shard {
        /// The text.
        text: String,
    },
}

impl SeedSpan {
    /// Seeds in the span.
    pub fn len(&self) -> u64 {
        self.last - self.first + 1
    }

    /// Never true: a span holds at least one seed.
    pub fn is_empty(&self) -> bool {
        false
    }
}

impl FromStr for SeedSpan {
    type Err = SpanError;

    fn from_str(text: &str) -> Result<Self, SpanError> {
        let syntax = || SpanError::Syntax { text: text.to_owned() };
        let num = |t: &str| t.trim().replace('_', "").parse::<u64>().map_err(|_| syntax());
        let (first, last) = match text.split_once("..") {
            Some((a, b)) => (num(a)?, num(b.strip_prefix('=').unwrap_or(b))?),
            None => {
                let a = num(text)?;
                (a, a)
            }
        };
        if last < first {
            return Err(SpanError::Empty { first, last });
        }
        let seeds = (last - first).saturating_add(1);
        if seeds > SWEEP_SEEDS_MAX {
            return Err(SpanError::TooMany { seeds, max: SWEEP_SEEDS_MAX });
        }
        Ok(SeedSpan { first, last })
    }
}

impl fmt::Display for SeedSpan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}..{}", self.first, self.last)
    }
}

/// One of `count` parts of a sweep (`index` counts from 1, as job runners
/// number array tasks; a Kubernetes Indexed Job passes its 0-based index + 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shard {
    /// This shard, 1..=count.
    pub index: u32,
    /// Number of shards.
    pub count: u32,
}

impl Shard {
    /// True when `seed` of `span` belongs to this shard. Round-robin rather
    /// than contiguous blocks, so slow regions of a span spread over shards.
    pub fn owns(&self, span: SeedSpan, seed: u64) -> bool {
        (seed - span.first) % u64::from(self.count) == u64::from(self.index - 1)
    }
}

impl FromStr for Shard {
    type Err = SpanError;

    fn from_str(text: &str) -> Result<Self, SpanError> {
        let bad = || SpanError::Shard { text: text.to_owned() };
        let (i, n) = text.split_once('/').ok_or_else(bad)?;
        let index: u32 = i.trim().parse().map_err(|_| bad())?;
        let count: u32 = n.trim().parse().map_err(|_| bad())?;
        if index == 0 || index > count {
            return Err(bad());
        }
        Ok(Shard { index, count })
    }
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

/// The outcome of one run of a sweep.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeedResult {
    /// The seed.
    pub seed: u64,
    /// The matrix cell, when the scenario has a matrix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cell: Option<usize>,
    /// Every checked invariant held and every required guard passed.
    pub passed: bool,
    /// Invariants violated.
    pub violated: Vec<String>,
    /// Required guards that failed.
    pub failed_guards: Vec<String>,
    /// The run's `trace_hash`.
    pub trace_hash: String,
    /// Messages delivered to apps (the oracle's count), to see how much a
    /// seed exercised.
    pub delivered: u64,
    /// The command that reproduces this run.
    pub reproduce: String,
}

impl SeedResult {
    fn of(o: &RunOutcome) -> Self {
        SeedResult {
            seed: o.seed,
            cell: o.cell,
            passed: o.passed,
            violated: o.violated().map(|v| v.invariant.to_owned()).collect(),
            failed_guards: o.failed_guards().map(|g| g.name.clone()).collect(),
            trace_hash: o.trace_hash.clone(),
            delivered: o.counts.get("app_deliveries").copied().unwrap_or(0),
            reproduce: o.reproduce.clone(),
        }
    }
}

/// What a shrink found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShrinkSummary {
    /// The failing seed that was shrunk (the smallest failing one).
    pub seed: u64,
    /// Its matrix cell.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cell: Option<usize>,
    /// The failure kept while shrinking.
    pub failure: Vec<String>,
    /// Simplification steps kept.
    pub steps: Vec<String>,
    /// Runs spent.
    pub runs: usize,
    /// Where the minimal scenario was written, relative to the output folder.
    pub file: String,
}

/// The machine-readable result of a sweep (`sweep.json`), or of a shard of
/// one, or of [`merge`]d shards (then equal to the unsharded sweep's).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SweepReport {
    /// Scenario name.
    pub scenario: String,
    /// Scenario file as given.
    pub file: String,
    /// bluetick-sim version.
    pub version: String,
    /// Driver.
    pub driver: String,
    /// Swarm mode forced on.
    pub swarm: bool,
    /// Only this matrix cell (otherwise every cell).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub only_cell: Option<usize>,
    /// The seeds swept.
    pub seeds: SeedSpan,
    /// This report's shard, if it is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard: Option<Shard>,
    /// Runs made.
    pub runs: u64,
    /// Runs that passed.
    pub passed: u64,
    /// Runs that failed.
    pub failed: u64,
    /// One entry per run, by seed then cell.
    pub results: Vec<SeedResult>,
    /// The shrink of the smallest failing run, if one was made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shrunk: Option<ShrinkSummary>,
}

impl SweepReport {
    /// The failing results.
    pub fn failures(&self) -> impl Iterator<Item = &SeedResult> {
        self.results.iter().filter(|r| !r.passed)
    }

    fn recount(&mut self) {
        self.results.sort_by_key(|r| (r.seed, r.cell));
        self.runs = self.results.len() as u64;
        self.passed = self.results.iter().filter(|r| r.passed).count() as u64;
        self.failed = self.runs - self.passed;
    }
}

/// What to sweep.
#[derive(Debug, Clone)]
pub struct SweepPlan {
    /// Seeds.
    pub seeds: SeedSpan,
    /// Only this shard of them.
    pub shard: Option<Shard>,
    /// Only this matrix cell (default: every cell).
    pub cell: Option<usize>,
    /// Force swarm mode.
    pub swarm: bool,
    /// Driver override.
    pub driver: Option<scenario::spec::DriverKind>,
    /// Threads running seeds at once (at least 1).
    pub jobs: usize,
}

/// The runs of a plan, in order: every seed the shard owns, times every cell.
pub fn work_list(s: &Scenario, plan: &SweepPlan) -> Vec<RunOptions> {
    let cells: Vec<Option<usize>> = match (plan.cell, s.matrix.is_empty()) {
        (Some(c), _) => vec![Some(c)],
        (None, true) => vec![None],
        (None, false) => (0..scenario::resolve::cells(&s.matrix).len()).map(Some).collect(),
    };
    let mut list = Vec::new();
    for seed in plan.seeds.first..=plan.seeds.last {
        if plan.shard.is_some_and(|sh| !sh.owns(plan.seeds, seed)) {
            continue;
        }
        for cell in &cells {
            list.push(RunOptions { seed, cell: *cell, swarm: plan.swarm, driver: plan.driver });
        }
    }
    list
}

/// Runs every run of `plan` on `plan.jobs` threads. `on_done` is called once
/// per finished run (from the worker threads), e.g. to move a progress bar or
/// to write the report of a failing run. Returns the sweep report without a
/// shrink, or the first run error (bad input: the whole sweep is refused).
pub fn sweep<F>(s: &Scenario, plan: &SweepPlan, on_done: F) -> Result<SweepReport, RunError>
where
    F: Fn(&RunOutcome) + Sync,
{
    let work = work_list(s, plan);
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<SeedResult>> = Mutex::new(Vec::with_capacity(work.len()));
    let error: Mutex<Option<RunError>> = Mutex::new(None);
    let jobs = plan.jobs.clamp(1, work.len().max(1));
    std::thread::scope(|scope| {
        for _ in 0..jobs {
            scope.spawn(|| loop {
                if error.lock().map_or(true, |e| e.is_some()) {
                    return;
                }
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(opts) = work.get(i) else { return };
                match run::run(s, opts) {
                    Ok(o) => {
                        on_done(&o);
                        if let Ok(mut r) = results.lock() {
                            r.push(SeedResult::of(&o));
                        }
                    }
                    Err(e) => {
                        if let Ok(mut slot) = error.lock() {
                            slot.get_or_insert(e);
                        }
                        return;
                    }
                }
            });
        }
    });
    if let Some(e) = error.into_inner().ok().flatten() {
        return Err(e);
    }
    let results = results.into_inner().unwrap_or_default();
    let mut report = SweepReport {
        scenario: s.name.clone(),
        file: s.file.clone(),
        version: run::VERSION.to_owned(),
        driver: plan.driver.unwrap_or(s.driver).as_str().to_owned(),
        swarm: plan.swarm,
        only_cell: plan.cell,
        seeds: plan.seeds,
        shard: plan.shard,
        runs: 0,
        passed: 0,
        failed: 0,
        results,
        shrunk: None,
    };
    report.recount();
    Ok(report)
}

/// Why shard reports could not be merged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MergeError {
    /// Nothing to merge.
    #[error("no shard reports given")]
    Nothing,
    /// The reports are of different sweeps.
    #[error("report {index} is of a different sweep: its {field} is {found}, the first report's is {expected}")]
    Mismatch {
        /// Position of the report among the inputs (from 0).
        index: usize,
        /// The field that differs.
        field: &'static str,
        /// The first report's value.
        expected: String,
        /// This report's value.
        found: String,
    },
    /// A report is not a shard.
    #[error("report {index} is not a shard (it has no `shard` field); it is a whole sweep already")]
    NotAShard {
        /// Position of the report.
        index: usize,
    },
    /// The same shard twice.
    #[error("shard {shard} is given twice")]
    Duplicate {
        /// The shard.
        shard: Shard,
    },
    /// Some shard missing.
    #[error("shards {missing:?} of {count} are missing: a merged report must cover every seed")]
    Missing {
        /// The missing shard indexes.
        missing: Vec<u32>,
        /// The shard count.
        count: u32,
    },
    /// A shard holds a seed it does not own or misses one it owns.
    #[error("shard {shard} does not hold exactly its seeds ({detail})")]
    WrongSeeds {
        /// The shard.
        shard: Shard,
        /// What is wrong.
        detail: String,
    },
}

/// Joins the reports of every shard of one sweep into the report the
/// unsharded sweep writes. Each shard's seeds are checked against its
/// index, so a report from another sweep or a partial run is refused rather
/// than silently counted.
pub fn merge(parts: &[SweepReport]) -> Result<SweepReport, MergeError> {
    let first = parts.first().ok_or(MergeError::Nothing)?;
    let count = first.shard.ok_or(MergeError::NotAShard { index: 0 })?.count;
    let mut seen = BTreeSet::new();
    for (index, p) in parts.iter().enumerate() {
        let same = |field: &'static str, a: String, b: String| {
            if a == b {
                Ok(())
            } else {
                Err(MergeError::Mismatch { index, field, expected: a, found: b })
            }
        };
        same("scenario", first.scenario.clone(), p.scenario.clone())?;
        same("file", first.file.clone(), p.file.clone())?;
        same("version", first.version.clone(), p.version.clone())?;
        same("driver", first.driver.clone(), p.driver.clone())?;
        same("swarm", first.swarm.to_string(), p.swarm.to_string())?;
        same("only_cell", format!("{:?}", first.only_cell), format!("{:?}", p.only_cell))?;
        same("seeds", first.seeds.to_string(), p.seeds.to_string())?;
        let shard = p.shard.ok_or(MergeError::NotAShard { index })?;
        same("shard count", count.to_string(), shard.count.to_string())?;
        if !seen.insert(shard.index) {
            return Err(MergeError::Duplicate { shard });
        }
        check_shard_seeds(p, shard)?;
    }
    let missing: Vec<u32> = (1..=count).filter(|i| !seen.contains(i)).collect();
    if !missing.is_empty() {
        return Err(MergeError::Missing { missing, count });
    }
    let mut merged = first.clone();
    merged.shard = None;
    merged.results = parts.iter().flat_map(|p| p.results.iter().cloned()).collect();
    // The unsharded sweep shrinks its smallest failing run; that run is also
    // the smallest failing run of the shard that holds it, so that shard's
    // shrink is the one the unsharded sweep would have made.
    merged.shrunk = parts.iter().filter_map(|p| p.shrunk.clone()).min_by_key(|s| (s.seed, s.cell.unwrap_or(0)));
    merged.recount();
    Ok(merged)
}

fn check_shard_seeds(p: &SweepReport, shard: Shard) -> Result<(), MergeError> {
    let held: BTreeSet<u64> = p.results.iter().map(|r| r.seed).collect();
    if let Some(stray) = held.iter().find(|&&s| s < p.seeds.first || s > p.seeds.last || !shard.owns(p.seeds, s)) {
        return Err(MergeError::WrongSeeds { shard, detail: format!("it holds seed {stray}, not one of its own") });
    }
    let owned = (p.seeds.first..=p.seeds.last).filter(|&s| shard.owns(p.seeds, s));
    if let Some(absent) = owned.into_iter().find(|s| !held.contains(s)) {
        return Err(MergeError::WrongSeeds { shard, detail: format!("seed {absent} has no result") });
    }
    Ok(())
}

/// How a run failed: what a shrink must keep failing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// Invariants violated.
    pub violated: BTreeSet<String>,
    /// Required guards failed.
    pub failed_guards: BTreeSet<String>,
}

impl Failure {
    /// The failure of `o`, `None` if it passed.
    pub fn of(o: &RunOutcome) -> Option<Self> {
        if o.passed {
            return None;
        }
        Some(Failure {
            violated: o.violated().map(|v| v.invariant.to_owned()).collect(),
            failed_guards: o.failed_guards().map(|g| g.name.clone()).collect(),
        })
    }

    /// True when `other` fails the same way: an invariant this failure
    /// violated is violated again (or, for a guard-only failure, a guard
    /// fails again). A shrink that swapped a violation for a failed guard
    /// would hand the reader a different bug.
    pub fn matched_by(&self, other: &Failure) -> bool {
        if self.violated.is_empty() {
            !self.failed_guards.is_disjoint(&other.failed_guards)
        } else {
            !self.violated.is_disjoint(&other.violated)
        }
    }

    /// Names, for reports.
    pub fn names(&self) -> Vec<String> {
        self.violated.iter().chain(self.failed_guards.iter()).cloned().collect()
    }
}

/// The outcome of [`shrink`].
#[derive(Debug, Clone)]
pub struct Shrunk {
    /// The smallest failing scenario text found.
    pub text: String,
    /// The steps kept, in order, in words.
    pub steps: Vec<String>,
    /// Runs spent.
    pub runs: usize,
    /// The failure of the smallest scenario.
    pub failure: Failure,
}

/// Keys a shrink never removes: they name the scenario or the bug under test.
const KEEP_KEYS: &[&str] = &["scenario.name", "scenario.seed", "bugs"];

/// Smallest halved duration tried: below a second, halving the length of a
/// phase stops making the scenario easier to read.
const SHRINK_DURATION_MIN_MS: u64 = 1_000;

/// Shrinks the scenario `text` (from `file`) whose run with `opts` fails as
/// `failure`, within `budget` runs. Greedy: candidates are tried in order
/// (drop a list element, drop a key, halve a number or duration) and the first
/// that still fails the same way is kept, until no candidate does.
/// Deterministic: the same input gives the same result.
pub fn shrink(file: &str, text: &str, opts: &RunOptions, failure: &Failure, budget: usize) -> Shrunk {
    let mut best = Shrunk { text: text.to_owned(), steps: Vec::new(), runs: 0, failure: failure.clone() };
    let Ok(mut doc) = toml::from_str::<toml::Table>(text) else { return best };
    'improve: while best.runs < budget {
        for (what, candidate) in candidates(&doc) {
            if best.runs >= budget {
                break 'improve;
            }
            let Some(candidate_text) = to_text(&candidate) else { continue };
            let Ok(s) = scenario::from_str(file, &candidate_text) else { continue };
            best.runs += 1;
            let Ok(o) = run::run(&s, opts) else { continue };
            if let Some(f) = Failure::of(&o).filter(|f| failure.matched_by(f)) {
                doc = candidate;
                best.text = candidate_text;
                best.steps.push(what);
                best.failure = f;
                continue 'improve;
            }
        }
        break;
    }
    best
}

/// The TOML text of `doc` with `[scenario]` first, as people write it (the
/// table itself orders keys alphabetically).
fn to_text(doc: &toml::Table) -> Option<String> {
    let mut rest = doc.clone();
    let mut text = String::new();
    if let Some(head) = rest.remove("scenario") {
        let mut t = toml::Table::new();
        t.insert("scenario".to_owned(), head);
        text = toml::to_string(&t).ok()?;
        text.push('\n');
    }
    text += &toml::to_string(&rest).ok()?;
    Some(text)
}

/// Every one-step simplification of `doc`, most removing first.
fn candidates(doc: &toml::Table) -> Vec<(String, toml::Table)> {
    let mut removals = Vec::new();
    let mut key_drops = Vec::new();
    let mut halvings = Vec::new();
    let mut paths = Vec::new();
    collect_paths(&toml::Value::Table(doc.clone()), &mut Vec::new(), &mut paths);
    for path in paths {
        let dotted = path.iter().map(Step::to_string).collect::<Vec<_>>().join(".");
        if KEEP_KEYS.iter().any(|k| dotted == *k || dotted.starts_with(&format!("{k}."))) {
            continue;
        }
        let Some(value) = get(doc, &path) else { continue };
        // A candidate that no longer validates costs no run, so dropping
        // required keys is harmless: the validator refuses it first.
        let mut c = doc.clone();
        if remove(&mut c, &path) {
            let list = if matches!(path.last(), Some(Step::Index(_))) { &mut removals } else { &mut key_drops };
            list.push((format!("drop {dotted}"), c));
        }
        if let Some((smaller, said)) = halve(value) {
            let mut c = doc.clone();
            if set(&mut c, &path, smaller) {
                halvings.push((format!("{dotted}: {said}"), c));
            }
        }
    }
    removals.into_iter().chain(key_drops).chain(halvings).collect()
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    Key(String),
    Index(usize),
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::Key(k) => f.write_str(k),
            Step::Index(i) => write!(f, "{i}"),
        }
    }
}

fn collect_paths(v: &toml::Value, prefix: &mut Vec<Step>, out: &mut Vec<Vec<Step>>) {
    match v {
        toml::Value::Table(t) => {
            for (k, child) in t {
                prefix.push(Step::Key(k.clone()));
                out.push(prefix.clone());
                collect_paths(child, prefix, out);
                prefix.pop();
            }
        }
        toml::Value::Array(a) => {
            for (i, child) in a.iter().enumerate() {
                prefix.push(Step::Index(i));
                out.push(prefix.clone());
                collect_paths(child, prefix, out);
                prefix.pop();
            }
        }
        _ => {}
    }
}

fn get<'a>(doc: &'a toml::Table, path: &[Step]) -> Option<&'a toml::Value> {
    let (head, rest) = path.split_first()?;
    let Step::Key(k) = head else { return None };
    let mut v = doc.get(k)?;
    for step in rest {
        v = match (step, v) {
            (Step::Key(k), toml::Value::Table(t)) => t.get(k)?,
            (Step::Index(i), toml::Value::Array(a)) => a.get(*i)?,
            _ => return None,
        };
    }
    Some(v)
}

fn parent_mut<'a>(doc: &'a mut toml::Table, path: &[Step]) -> Option<(&'a mut toml::Value, Step)> {
    let (last, parents) = path.split_last()?;
    let (head, rest) = parents.split_first()?;
    let Step::Key(k) = head else { return None };
    let mut v = doc.get_mut(k)?;
    for step in rest {
        v = match (step, v) {
            (Step::Key(k), toml::Value::Table(t)) => t.get_mut(k)?,
            (Step::Index(i), toml::Value::Array(a)) => a.get_mut(*i)?,
            _ => return None,
        };
    }
    Some((v, last.clone()))
}

fn remove(doc: &mut toml::Table, path: &[Step]) -> bool {
    if let [Step::Key(k)] = path {
        return doc.remove(k).is_some();
    }
    match parent_mut(doc, path) {
        Some((toml::Value::Table(t), Step::Key(k))) => t.remove(&k).is_some(),
        Some((toml::Value::Array(a), Step::Index(i))) if i < a.len() => {
            a.remove(i);
            true
        }
        _ => false,
    }
}

fn set(doc: &mut toml::Table, path: &[Step], value: toml::Value) -> bool {
    match parent_mut(doc, path) {
        Some((toml::Value::Table(t), Step::Key(k))) => t.insert(k, value).is_some(),
        Some((toml::Value::Array(a), Step::Index(i))) => match a.get_mut(i) {
            Some(slot) => {
                *slot = value;
                true
            }
            None => false,
        },
        _ => false,
    }
}

/// A smaller version of a number or a duration string, and how to say so.
fn halve(v: &toml::Value) -> Option<(toml::Value, String)> {
    match v {
        toml::Value::Integer(n) if *n > 1 => Some((toml::Value::Integer(n / 2), format!("{n} → {}", n / 2))),
        toml::Value::Float(x) if *x > 0.01 => {
            let h = (x / 2.0 * 1000.0).round() / 1000.0;
            Some((toml::Value::Float(h), format!("{x} → {h}")))
        }
        toml::Value::String(s) => {
            let ms = units::parse_duration_ms(s).ok()?;
            (ms >= 2 * SHRINK_DURATION_MIN_MS).then(|| {
                let half = units::format_duration_ms(ms / 2);
                (toml::Value::String(half.clone()), format!("{s} → {half}"))
            })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_read_both_forms_and_refuse_empty_ones() {
        assert_eq!("1..10".parse::<SeedSpan>(), Ok(SeedSpan { first: 1, last: 10 }));
        assert_eq!("1..=10".parse::<SeedSpan>(), Ok(SeedSpan { first: 1, last: 10 }));
        assert_eq!("7".parse::<SeedSpan>(), Ok(SeedSpan { first: 7, last: 7 }));
        assert_eq!("1_000..1_001".parse::<SeedSpan>().map(|s| s.len()), Ok(2));
        assert!(matches!("9..3".parse::<SeedSpan>(), Err(SpanError::Empty { .. })));
        assert!(matches!("a..3".parse::<SeedSpan>(), Err(SpanError::Syntax { .. })));
        assert!(matches!("0..99999999999".parse::<SeedSpan>(), Err(SpanError::TooMany { .. })));
    }

    #[test]
    fn shards_partition_a_span_exactly() {
        let span = SeedSpan { first: 5, last: 104 };
        let shards: Vec<Shard> = (1..=7).map(|index| Shard { index, count: 7 }).collect();
        for seed in span.first..=span.last {
            assert_eq!(shards.iter().filter(|s| s.owns(span, seed)).count(), 1, "seed {seed}");
        }
        assert!("0/3".parse::<Shard>().is_err());
        assert!("4/3".parse::<Shard>().is_err());
        assert_eq!("2/3".parse::<Shard>(), Ok(Shard { index: 2, count: 3 }));
    }

    #[test]
    fn candidates_drop_list_elements_before_halving() {
        let doc: toml::Table =
            toml::from_str("[scenario]\nname = \"x\"\nduration = \"20s\"\n[[faults.frames]]\nat = \"1s\"\n").unwrap();
        let c = candidates(&doc);
        assert_eq!(c.first().map(|c| c.0.as_str()), Some("drop faults.frames.0"));
        assert!(c.iter().any(|(w, _)| w == "scenario.duration: 20s → 10s"), "{:?}", c.iter().map(|c| &c.0));
        assert!(!c.iter().any(|(w, _)| w.contains("scenario.name")));
    }
}
