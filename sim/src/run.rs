//! One run of one scenario: resolve the plan, drive it, quiesce, and judge.
//!
//! The runner talks only to the [`Driver`] trait. It walks the plan's
//! timeline, turning each [`Action`] into driver calls (keeping the
//! bookkeeping the drivers do not: group labels to ids, overlapping
//! offline periods, partitions and frame-rule windows), schedules reads
//! after the workload's read delay, then quiesces and asks the oracle. The
//! result, [`RunOutcome`], carries a verdict per invariant, the "sometimes"
//! guards (a declared fault that never fired fails the run), the counters,
//! delivery latencies and the `trace_hash`.

use std::collections::{BTreeMap, BTreeSet};

use bluetick_core::client::{ClientBug, ClientBugs};
use bluetick_core::ids::{GroupId, MessageId, UserId};
use bluetick_core::server::keys::KeyBug;
use bluetick_core::server::mailbox::MailboxBug;
use bluetick_core::server::presence::PresenceBug;
use bluetick_core::server::{ServerBugs, ServerConfig};
use bluetick_core::wire::Visibility;
use bluetick_core::world::oracle::{Counts, Violation};
use bluetick_core::world::Faults;
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use serde::Serialize;

use crate::direct::DirectDriver;
use crate::driver::{Direction, Driver, DriverConfig, FrameFault, Unsupported};
use crate::invariants;
use crate::scenario::model::{ClientBugName, KeyBugName, MailboxBugName, PresenceBugName};
use crate::scenario::resolve::{self, sub_seed, Action, Knobs, Plan, ResolveError};
use crate::scenario::spec::{DriverKind, Scenario, VisibilityName, Way};
use crate::scenario::units::format_duration_ms;
use crate::trace::{AppDelivery, TraceDigest, TraceSink};

/// While reads are pending, the runner looks for newly received messages at
/// least this often (simulated): a read is then at most this late against
/// its drawn delay, and the polling costs little (an idle world step is a
/// map lookup).
pub const READ_POLL_MS: u64 = 100;

/// The most violations of one invariant kept in full in a report; the rest
/// are counted. One is enough to understand a bug; a few show a pattern.
pub const VIOLATIONS_KEPT_MAX: usize = 10;

/// Crate version stamped into reports.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Git commit stamped into reports (set by `build.rs`; `unknown` when built
/// outside a git checkout, e.g. from a source tarball).
pub const COMMIT: &str = env!("BLUETICK_GIT_COMMIT");

/// What to run.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// The seed.
    pub seed: u64,
    /// The matrix cell (`None`: the first, or no matrix).
    pub cell: Option<usize>,
    /// Force swarm mode on.
    pub swarm: bool,
    /// Override the scenario's driver.
    pub driver: Option<DriverKind>,
}

/// Why a run could not be made (bad input, exit status 2).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RunError {
    /// The plan could not be made.
    #[error(transparent)]
    Resolve(#[from] ResolveError),
    /// The turmoil driver refused the configuration.
    #[error("turmoil driver: {0}")]
    Turmoil(#[from] crate::turmoil::TurmoilConfigError),
    /// The driver cannot do something the scenario asks for.
    #[error("{error} (needed by the scenario's {action})")]
    Unsupported {
        /// What the driver said.
        error: Unsupported,
        /// The action that needed it.
        action: &'static str,
    },
    /// The thread writing the trace died: a bug in the simulator, reported
    /// rather than writing a report without its trace.
    #[error("the trace writer failed (a simulator bug); no report was written")]
    TraceLost,
}

/// An invariant's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum VerdictState {
    /// Checked and never broken.
    Held,
    /// Broken at least once.
    Violated,
    /// Not judged (skipped by `[expect]`, or nothing in the run to judge).
    NotChecked,
}

/// The verdict on one invariant.
#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    /// Its stable name.
    pub invariant: String,
    /// Held, violated or not checked.
    pub state: VerdictState,
    /// What it means.
    pub meaning: String,
    /// Why it was not checked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// How many violations.
    pub violations: u64,
    /// The first violations, in order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub first: Vec<Violation>,
}

/// The outcome of a "sometimes" guard or a bound.
#[derive(Debug, Clone, Serialize)]
pub struct Guard {
    /// What is required (`faults.frames[0] fires`, `p99 ≤ 100 ms`, …).
    pub name: String,
    /// Whether it was met.
    pub passed: bool,
    /// Whether failing it fails the run (`[expect] faults_fire = false` makes fault guards advisory).
    pub required: bool,
    /// What was seen.
    pub detail: String,
}

/// Percentiles of a latency sample, ms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Percentiles {
    /// Sample size.
    pub samples: u64,
    /// Median.
    pub p50: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 99th percentile.
    pub p99: u64,
    /// Largest.
    pub max: u64,
}

/// Send → app-received latencies.
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    /// Every first delivery to an app.
    pub all: Option<Percentiles>,
    /// Deliveries where sender and recipient stayed online (not offline,
    /// partitioned or crashed, no server crash) from send to receipt.
    pub online: Option<Percentiles>,
}

/// The resolved configuration a report prints (the scenario with the
/// seed's draws applied), compact enough to read.
#[derive(Debug, Clone, Serialize)]
pub struct ResolvedConfig {
    /// Duration of the workload-and-faults phase, ms.
    pub duration_ms: u64,
    /// Convergence bound, ms.
    pub converge_within_ms: u64,
    /// Users.
    pub users: usize,
    /// First few user names.
    pub users_sample: Vec<String>,
    /// Groups: label, admin, initial members (admin included), changes, churn.
    pub groups: Vec<BTreeMap<String, serde_json::Value>>,
    /// The knobs, resolved.
    pub knobs: Knobs,
    /// Where each knob came from (file, matrix, swarm, default).
    pub knob_sources: BTreeMap<&'static str, resolve::KnobSource>,
    /// Matrix cell values, when the scenario has a matrix.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cell: Option<usize>,
    /// Swarm mode.
    pub swarm: bool,
    /// The workload as written (rates, sizes, read delay).
    pub workload: serde_json::Value,
    /// Messages planned, by kind.
    pub planned_sends: BTreeMap<&'static str, u64>,
    /// Timeline faults as declared.
    pub faults: serde_json::Value,
    /// Partitions, declared and random.
    pub partitions: serde_json::Value,
    /// Server tunables.
    pub server: serde_json::Value,
    /// Client tunables.
    pub clients: serde_json::Value,
    /// Deliberate bugs.
    pub bugs: serde_json::Value,
    /// Presence: subscribers and privacy settings.
    pub presence: BTreeMap<String, u64>,
    /// Steps in the timeline.
    pub timeline_steps: usize,
}

/// Everything one run produced.
#[derive(Debug, Clone, Serialize)]
pub struct RunOutcome {
    /// Scenario name.
    pub scenario: String,
    /// Scenario file as given.
    pub file: String,
    /// Seed.
    pub seed: u64,
    /// Matrix cell.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cell: Option<usize>,
    /// Driver that ran it.
    pub driver: String,
    /// Cipher suite of the devices (`symbolic-insecure` means no real crypto ran).
    pub suite: String,
    /// The crate version.
    pub version: String,
    /// The git commit the binary was built from (`unknown` outside a checkout).
    pub commit: String,
    /// True when every checked invariant held and every required guard passed.
    pub passed: bool,
    /// The resolved configuration.
    pub resolved: ResolvedConfig,
    /// One verdict per invariant.
    pub verdicts: Vec<Verdict>,
    /// "Sometimes" guards and latency bounds.
    pub guards: Vec<Guard>,
    /// Counters (oracle, network and runner).
    pub counts: BTreeMap<String, u64>,
    /// Per declared frame rule: matched, dropped, duplicated, delayed.
    pub frame_rules: Vec<BTreeMap<String, serde_json::Value>>,
    /// Delivery latencies.
    pub latency: Latency,
    /// Simulated time at the end of the workload phase and after quiesce, ms since start.
    pub sim_ms: BTreeMap<&'static str, u64>,
    /// Hex SHA-256 of `trace.jsonl`.
    pub trace_hash: String,
    /// Lines in `trace.jsonl`.
    pub trace_lines: u64,
    /// The command that reproduces this run.
    pub reproduce: String,
    /// The trace (written to `trace.jsonl`, not into `report.json`).
    #[serde(skip)]
    pub trace_jsonl: Vec<u8>,
}

impl RunOutcome {
    /// Verdicts that are violations.
    pub fn violated(&self) -> impl Iterator<Item = &Verdict> {
        self.verdicts.iter().filter(|v| v.state == VerdictState::Violated)
    }

    /// Required guards that failed.
    pub fn failed_guards(&self) -> impl Iterator<Item = &Guard> {
        self.guards.iter().filter(|g| g.required && !g.passed)
    }
}

/// Names of every counter `[expect.at_least]` may name: the oracle's
/// [`Counts`] (numeric fields) and the runner's own.
pub fn counter_names() -> Vec<String> {
    let mut names: BTreeSet<String> = oracle_counts(&Counts::default()).into_keys().collect();
    names.extend(RUNNER_COUNTERS.iter().map(|s| (*s).to_owned()));
    names.into_iter().collect()
}

/// Counters the runner keeps.
const RUNNER_COUNTERS: &[&str] = &[
    "messages_planned",
    "messages_sent",
    "sends_refused",
    "group_sends_skipped",
    "group_changes_refused",
    "reads",
    "group_reads_unsupported",
    "latency_samples",
    "latency_samples_online",
];

fn oracle_counts(c: &Counts) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    if let Ok(serde_json::Value::Object(map)) = serde_json::to_value(c) {
        for (k, v) in map {
            if let Some(n) = v.as_u64() {
                out.insert(k, n);
            }
        }
    }
    out
}

/// Builds the driver a run asks for.
fn make_driver(kind: DriverKind, config: &DriverConfig, compromise: bool) -> Result<Box<dyn Driver>, RunError> {
    match kind {
        DriverKind::Direct => Ok(Box::new(DirectDriver::new(config, compromise))),
        DriverKind::Turmoil => {
            let mut turmoil = crate::turmoil::TurmoilConfig::from_driver(config);
            turmoil.world.record_ciphertexts = compromise;
            Ok(Box::new(crate::turmoil::TurmoilDriver::new(turmoil)?))
        }
    }
}

// ServerConfig may grow fields; those the scenario does not set keep their defaults.
#[allow(clippy::field_reassign_with_default)]
fn server_config(s: &Scenario) -> ServerConfig {
    let mut c = ServerConfig::default();
    c.ttl_text_ms = s.server.ttl_text_ms;
    c.ttl_media_ms = s.server.ttl_media_ms;
    c.ack_timeout_ms = s.server.ack_timeout_ms;
    c.delivery_window = s.server.delivery_window as usize;
    c.bundle_fetches_per_minute = s.server.bundle_fetches_per_min;
    c.bugs = ServerBugs {
        mailbox: s.bugs.mailbox.map(|b| match b {
            MailboxBugName::DeleteOnSend => MailboxBug::DeleteOnSend,
            MailboxBugName::EnqueueNotIdempotent => MailboxBug::EnqueueNotIdempotent,
            MailboxBugName::IgnoreAck => MailboxBug::IgnoreAck,
        }),
        keys: s.bugs.keys.map(|b| match b {
            KeyBugName::HandOutTwice => KeyBug::HandOutTwice,
        }),
        presence: s.bugs.presence.map(|b| match b {
            PresenceBugName::IgnorePrivacy => PresenceBug::IgnorePrivacy,
        }),
        unsigned_group_changes: s.bugs.unsigned_group_changes,
    };
    c
}

fn client_bugs(s: &Scenario) -> ClientBugs {
    s.bugs.client.iter().fold(ClientBugs::none(), |acc, b| {
        acc.with(match b {
            ClientBugName::DedupOff => ClientBug::DedupOff,
            ClientBugName::ReadOnDelivery => ClientBug::ReadOnDelivery,
            ClientBugName::NoRotationOnRemove => ClientBug::NoRotationOnRemove,
            ClientBugName::LeakPlaintext => ClientBug::LeakPlaintext,
            ClientBugName::LatestReceiptWins => ClientBug::LatestReceiptWins,
        })
    })
}

fn faults_of(k: &Knobs) -> Faults {
    Faults {
        drop_per_mille: k.loss_per_mille,
        duplicate_per_mille: k.duplicate_per_mille,
        latency_min_ms: k.latency_min_ms,
        latency_max_ms: k.latency_max_ms,
    }
}

fn direction(w: Way) -> Option<Direction> {
    match w {
        Way::Both => None,
        Way::ToServer => Some(Direction::ToServer),
        Way::ToClient => Some(Direction::ToClient),
    }
}

fn visibility(v: VisibilityName) -> Visibility {
    match v {
        VisibilityName::Everyone => Visibility::Everyone,
        VisibilityName::Contacts => Visibility::Contacts,
        VisibilityName::Nobody => Visibility::Nobody,
    }
}

/// The text body of message `n` of run `seed`, `len` bytes: a unique tag
/// (`#<n>/<seed>|`) repeated, so the no-plaintext check recognises any
/// 64-byte prefix of it.
pub fn text_body(seed: u64, n: u64, len: u32) -> Vec<u8> {
    let tag = format!("#{n:08x}/{seed:016x}|");
    tag.bytes().cycle().take(len as usize).collect()
}

/// What the runner knows of a message it sent.
#[derive(Debug, Clone)]
struct SentRecord {
    at_ms: u64,
    from: UserId,
    group: Option<GroupId>,
}

/// A read the workload will do.
#[derive(Debug, Clone)]
struct ReadTask {
    reader: UserId,
    peer: UserId,
    group: Option<GroupId>,
}

/// Fault bookkeeping for the "sometimes" guards.
#[derive(Debug, Default)]
struct Fired {
    /// scenario frame rule → world rule indices (a rule is re-added when
    /// another window closes).
    frame_rule_indices: BTreeMap<usize, Vec<usize>>,
    /// partition → frames lost while it was on.
    partition_frames: BTreeMap<usize, u64>,
    /// declared source → crashes made.
    crashes: BTreeMap<String, u64>,
    /// compromised user → ciphertexts tried.
    compromises: BTreeMap<UserId, u64>,
    /// clock offsets applied.
    clocks: u64,
}

struct Runner<'a> {
    s: &'a Scenario,
    plan: &'a Plan,
    d: Box<dyn Driver>,
    base_ms: u64,
    groups: BTreeMap<String, GroupId>,
    offline_depth: BTreeMap<UserId, u32>,
    active_rules: BTreeSet<usize>,
    active_partitions: BTreeSet<usize>,
    partition_mark: BTreeMap<usize, u64>,
    sent: BTreeMap<MessageId, SentRecord>,
    /// user → intervals (start, end) in which it was not reachable.
    unavailable: BTreeMap<UserId, Vec<(u64, Option<u64>)>>,
    /// Server crash times.
    server_crashes: Vec<u64>,
    reads: BTreeMap<(u64, u64), ReadTask>,
    read_seq: u64,
    read_rng: ChaCha20Rng,
    received_cursor: usize,
    counters: BTreeMap<&'static str, u64>,
    fired: Fired,
    /// Where the driver's trace goes as the run makes it.
    trace: TraceSink,
}

/// Runs `s` with `opts`.
pub fn run(s: &Scenario, opts: &RunOptions) -> Result<RunOutcome, RunError> {
    run_keeping_driver(s, opts).map(|(outcome, _driver)| outcome)
}

/// [`run`], handing back the finished driver instead of dropping it, so a
/// caller that exits right after can skip freeing it: a large run's world is
/// millions of small allocations (maps, trace lines), and freeing them one by
/// one costs about a tenth of the run.
pub fn run_keeping_driver(s: &Scenario, opts: &RunOptions) -> Result<(RunOutcome, Box<dyn Driver>), RunError> {
    let plan = resolve::resolve(s, opts.seed, opts.cell, opts.swarm)?;
    let kind = opts.driver.unwrap_or(s.driver);
    let config = DriverConfig {
        seed: sub_seed(opts.seed, "world"),
        users: s.users.clone(),
        faults: faults_of(&plan.knobs),
        server: server_config(s),
        client_bugs: client_bugs(s),
        resend_after_ms: s.clients.resend_after_ms,
        reconnect_after_ms: s.clients.reconnect_after_ms,
        bundle_fetches_per_minute: s.clients.bundle_fetches_per_min as usize,
        suite: s.suite,
    };
    let d = make_driver(kind, &config, !s.faults.compromises.is_empty())?;
    let base_ms = d.now_ms();
    let mut r = Runner {
        s,
        plan: &plan,
        d,
        base_ms,
        groups: BTreeMap::new(),
        offline_depth: BTreeMap::new(),
        active_rules: BTreeSet::new(),
        active_partitions: BTreeSet::new(),
        partition_mark: BTreeMap::new(),
        sent: BTreeMap::new(),
        unavailable: BTreeMap::new(),
        server_crashes: Vec::new(),
        reads: BTreeMap::new(),
        read_seq: 0,
        read_rng: ChaCha20Rng::seed_from_u64(sub_seed(opts.seed, "reads")),
        received_cursor: 0,
        counters: BTreeMap::new(),
        fired: Fired::default(),
        trace: TraceSink::background(),
    };
    r.counters.insert("messages_planned", plan.planned_sends.values().sum());
    r.counters.insert("group_sends_skipped", plan.skipped_group_sends);
    for step in &plan.steps {
        r.advance_to(step.at_ms);
        r.apply(&step.action)?;
    }
    r.advance_to(s.duration_ms);
    let end_of_load = r.d.now_ms() - base_ms;
    r.close_windows();
    r.d.quiesce(s.converge_within_ms);
    let end = r.d.now_ms() - base_ms;
    let mut violations = r.d.finish();
    violations.extend(r.unacknowledged());
    r.drain_trace();
    let trace = std::mem::replace(&mut r.trace, TraceSink::inline());
    let digest = trace.finish().ok_or(RunError::TraceLost)?;
    let outcome = r.judge(opts, kind, violations, end_of_load, end, digest);
    Ok((outcome, r.d))
}

impl Runner<'_> {
    fn now_rel(&self) -> u64 {
        self.d.now_ms().saturating_sub(self.base_ms)
    }

    /// Hands the driver's new trace events to the trace writer.
    fn drain_trace(&mut self) {
        self.d.drain_trace(self.trace.buffer());
        self.trace.flush_if_full();
    }

    /// Runs the driver to `t_rel`, doing due reads on the way.
    fn advance_to(&mut self, t_rel: u64) {
        if self.s.workload.read_delay_ms.is_none() {
            self.d.run_until(self.base_ms + t_rel);
            self.drain_trace();
            return;
        }
        loop {
            let now = self.now_rel();
            let next_read = self.reads.keys().next().map(|(t, _)| *t);
            let mut next = t_rel.min(now + READ_POLL_MS);
            if let Some(rt) = next_read {
                next = next.min(rt.max(now));
            }
            self.d.run_until(self.base_ms + next);
            self.drain_trace();
            self.collect_receipts();
            self.do_due_reads();
            if next >= t_rel {
                break;
            }
        }
    }

    fn collect_receipts(&mut self) {
        let Some(delay) = self.s.workload.read_delay_ms else { return };
        let now = self.now_rel();
        let order = &self.d.history().received_order;
        let fresh: Vec<(UserId, MessageId)> = order.get(self.received_cursor..).map(<[_]>::to_vec).unwrap_or_default();
        self.received_cursor = order.len();
        for (user, id) in fresh {
            let Some(rec) = self.sent.get(&id) else { continue };
            let task = ReadTask { reader: user, peer: rec.from.clone(), group: rec.group };
            let wait = uniform(&mut self.read_rng, delay.min, delay.max);
            self.reads.insert((now + wait, self.read_seq), task);
            self.read_seq += 1;
        }
    }

    fn do_due_reads(&mut self) {
        let now = self.now_rel();
        while let Some(entry) = self.reads.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let task = entry.remove();
            match task.group {
                None => {
                    self.d.mark_read(&task.reader, &task.peer);
                    *self.counters.entry("reads").or_default() += 1;
                }
                Some(g) => match self.d.mark_group_read(&task.reader, g) {
                    Ok(()) => *self.counters.entry("reads").or_default() += 1,
                    Err(_) => *self.counters.entry("group_reads_unsupported").or_default() += 1,
                },
            }
        }
    }

    fn mark_unavailable(&mut self, user: &UserId, from: u64, until: Option<u64>) {
        self.unavailable.entry(user.clone()).or_default().push((from, until));
    }

    fn end_unavailable(&mut self, user: &UserId, at: u64) {
        if let Some(v) = self.unavailable.get_mut(user) {
            if let Some(last) = v.iter_mut().rev().find(|(_, e)| e.is_none()) {
                last.1 = Some(at);
            }
        }
    }

    fn apply(&mut self, action: &Action) -> Result<(), RunError> {
        let now = self.now_rel();
        let unsupported = |action: &'static str| move |error| RunError::Unsupported { error, action };
        match action {
            Action::SetPrivacy { user, visibility: v } => {
                let contacts: Vec<UserId> = self.s.contacts.of(user, &self.s.users).into_iter().cloned().collect();
                self.d
                    .set_presence_privacy(user, visibility(*v), &contacts)
                    .map_err(unsupported("presence.privacy"))?;
            }
            Action::Subscribe { user, to } => {
                self.d.subscribe_presence(user, to).map_err(unsupported("presence subscriptions"))?;
            }
            Action::CreateGroup { group, admin, members } => match self.d.create_group(admin, members) {
                Some(g) => {
                    self.groups.insert(group.clone(), g);
                }
                None => *self.counters.entry("group_changes_refused").or_default() += 1,
            },
            Action::ChangeGroup { group, admin, add, remove } => {
                let ok = match self.groups.get(group) {
                    Some(g) => self.d.change_group(admin, *g, add, remove),
                    None => false,
                };
                if !ok {
                    *self.counters.entry("group_changes_refused").or_default() += 1;
                }
            }
            Action::FramesOn { rule } => {
                self.active_rules.insert(*rule);
                self.reinstall_rules();
            }
            Action::FramesOff { rule } => {
                self.active_rules.remove(rule);
                self.reinstall_rules();
            }
            Action::PartitionOn { partition } => {
                self.partition_mark.insert(*partition, self.d.history().counts.frames_partitioned);
                self.active_partitions.insert(*partition);
                if let Some(p) = self.plan.partitions.get(*partition) {
                    for u in &p.users {
                        self.mark_unavailable(u, now, None);
                    }
                    let users = p.users.clone();
                    self.d.partition(&users, direction(p.way));
                }
            }
            Action::PartitionOff { partition } => {
                self.close_partition(*partition);
                self.active_partitions.remove(partition);
                // The driver heals all at once; re-cut the ones still on.
                self.d.heal();
                for i in self.active_partitions.clone() {
                    if let Some(p) = self.plan.partitions.get(i) {
                        let users = p.users.clone();
                        self.d.partition(&users, direction(p.way));
                    }
                }
            }
            Action::Offline { user } => {
                let depth = self.offline_depth.entry(user.clone()).or_default();
                *depth += 1;
                if *depth == 1 {
                    self.d.disconnect(user);
                    self.mark_unavailable(user, now, None);
                }
            }
            Action::Online { user } => {
                let depth = self.offline_depth.entry(user.clone()).or_default();
                *depth = depth.saturating_sub(1);
                if *depth == 0 {
                    self.d.connect(user);
                    self.end_unavailable(user, now);
                }
            }
            Action::CrashServer { source } => {
                let before = self.d.history().counts.server_crashes;
                self.d.crash_server();
                let after = self.d.history().counts.server_crashes;
                *self.fired.crashes.entry(source.clone()).or_default() += after - before;
                self.server_crashes.push(now);
            }
            Action::CrashClient { user, source } => {
                let before = self.d.history().counts.client_crashes;
                self.d.crash_client(user);
                let after = self.d.history().counts.client_crashes;
                *self.fired.crashes.entry(source.clone()).or_default() += after - before;
                let back = now + self.s.clients.reconnect_after_ms;
                self.mark_unavailable(user, now, Some(back));
            }
            Action::ClockOffset { user, offset_ms } => {
                self.d.set_clock_offset(user, *offset_ms);
                self.fired.clocks += 1;
            }
            Action::Compromise { user } => {
                let before = self.d.history().counts.adversary_attempts;
                self.d.compromise(user).map_err(unsupported("faults.compromise"))?;
                let after = self.d.history().counts.adversary_attempts;
                *self.fired.compromises.entry(user.clone()).or_default() += after - before;
            }
            Action::SendText { from, to, n, bytes } => {
                let body = text_body(self.plan.seed, *n, *bytes);
                let id = self.d.send_text(from, to, &body);
                self.record_send(id, now, from, None);
            }
            Action::SendMedia { from, to, n, bytes } => {
                let body = bluetick_core::world::media_bytes(self.plan.seed, *n, *bytes as usize);
                let id = self.d.send_media(from, to, &body).map_err(unsupported("media sends"))?;
                self.record_send(id, now, from, None);
            }
            Action::SendGroup { from, group, n, bytes } => {
                let body = text_body(self.plan.seed, *n, *bytes);
                let gid = self.groups.get(group).copied();
                let id = gid.and_then(|g| self.d.send_group(from, g, &body));
                self.record_send(id, now, from, gid);
            }
        }
        Ok(())
    }

    /// `converges`: sends a client accepted that the server never acknowledged.
    fn unacknowledged(&self) -> Vec<Violation> {
        let acked = &self.d.history().server_acked;
        let now = self.d.now_ms();
        let bound = format_duration_ms(self.s.converge_within_ms);
        self.sent
            .iter()
            .filter(|(id, _)| !acked.contains(*id))
            .map(|(id, rec)| Violation {
                invariant: invariants::CONVERGES,
                at_ms: now,
                detail: format!(
                    "{id:?} sent by {} at t={} was accepted by its client but never acknowledged by the server \
                     (quiesce allowed {bound})",
                    rec.from,
                    format_duration_ms(rec.at_ms)
                ),
            })
            .collect()
    }

    fn record_send(&mut self, id: Option<MessageId>, at_ms: u64, from: &UserId, group: Option<GroupId>) {
        match id {
            Some(id) => {
                self.sent.insert(id, SentRecord { at_ms, from: from.clone(), group });
                *self.counters.entry("messages_sent").or_default() += 1;
            }
            None => *self.counters.entry("sends_refused").or_default() += 1,
        }
    }

    /// Installs the active frame rules afresh (the driver can only clear
    /// them all), remembering which world rule serves which declared rule.
    fn reinstall_rules(&mut self) {
        self.d.clear_frame_faults();
        let mut index = self.d.history().counts.frame_faults.len();
        for i in self.active_rules.clone() {
            let Some(rule) = self.s.faults.frames.get(i) else { continue };
            let users: Vec<Option<UserId>> = match &rule.users {
                Some(us) => us.iter().cloned().map(Some).collect(),
                None => vec![None],
            };
            for user in users {
                self.d.add_frame_fault(FrameFault {
                    kind: rule.kind.clone(),
                    direction: direction(rule.way),
                    user,
                    drop_per_mille: rule.drop_per_mille,
                    duplicate_per_mille: rule.duplicate_per_mille,
                    delay_ms: rule.delay_ms,
                });
                self.fired.frame_rule_indices.entry(i).or_default().push(index);
                index += 1;
            }
        }
    }

    fn close_partition(&mut self, i: usize) {
        let now = self.now_rel();
        if let Some(mark) = self.partition_mark.remove(&i) {
            let lost = self.d.history().counts.frames_partitioned.saturating_sub(mark);
            *self.fired.partition_frames.entry(i).or_default() += lost;
        }
        if let Some(p) = self.plan.partitions.get(i) {
            for u in p.users.clone() {
                self.end_unavailable(&u, now);
            }
        }
    }

    /// End of the workload phase: every window closes (quiesce heals).
    fn close_windows(&mut self) {
        for i in self.active_partitions.clone() {
            self.close_partition(i);
        }
        let now = self.now_rel();
        for (u, depth) in self.offline_depth.clone() {
            if depth > 0 {
                self.end_unavailable(&u, now);
            }
        }
    }

    fn judge(
        &self,
        opts: &RunOptions,
        kind: DriverKind,
        violations: Vec<Violation>,
        end_of_load: u64,
        end: u64,
        trace: TraceDigest,
    ) -> RunOutcome {
        let s = self.s;
        let plan = self.plan;
        // Verdicts.
        let mut by_name: BTreeMap<&str, Vec<Violation>> = BTreeMap::new();
        for v in violations {
            by_name.entry(v.invariant).or_default().push(v);
        }
        let mut verdicts = Vec::new();
        for inv in invariants::ALL {
            let found = by_name.remove(inv.name).unwrap_or_default();
            let checked = s.expect.invariants.contains(inv.name);
            let (state, reason) = if !checked {
                (VerdictState::NotChecked, Some("skipped by [expect]".to_owned()))
            } else if !found.is_empty() {
                (VerdictState::Violated, None)
            } else if let Some(why) = invariants::not_applicable(inv, s) {
                (VerdictState::NotChecked, Some(why.to_owned()))
            } else if let Some(why) = invariants::not_judged_by(inv, kind) {
                (VerdictState::NotChecked, Some(why.to_owned()))
            } else {
                (VerdictState::Held, None)
            };
            verdicts.push(Verdict {
                invariant: inv.name.to_owned(),
                state,
                meaning: inv.meaning.to_owned(),
                reason,
                violations: found.len() as u64,
                first: if checked { found.into_iter().take(VIOLATIONS_KEPT_MAX).collect() } else { Vec::new() },
            });
        }
        // Violations of invariants the catalog does not know still count.
        for (name, found) in by_name {
            verdicts.push(Verdict {
                invariant: name.to_owned(),
                state: VerdictState::Violated,
                meaning: "reported by the driver".to_owned(),
                reason: None,
                violations: found.len() as u64,
                first: found.into_iter().take(VIOLATIONS_KEPT_MAX).collect(),
            });
        }

        // Counters.
        let history = self.d.history();
        let oc = &history.counts;
        let mut counts = oracle_counts(oc);
        for name in RUNNER_COUNTERS {
            counts.insert((*name).to_owned(), self.counters.get(name).copied().unwrap_or(0));
        }

        // Trace and latency.
        let TraceDigest { jsonl, hash: trace_hash, lines: trace_lines, deliveries } = trace;
        let (all, online) = latencies(&deliveries, &self.sent, self.base_ms, &self.unavailable, &self.server_crashes);
        counts.insert("latency_samples".to_owned(), all.len() as u64);
        counts.insert("latency_samples_online".to_owned(), online.len() as u64);
        let latency = Latency { all: percentiles(all), online: percentiles(online) };

        // Guards.
        let mut guards = Vec::new();
        let req = s.expect.faults_fire;
        for (i, rule) in s.faults.frames.iter().enumerate() {
            let mut m = (0u64, 0u64, 0u64, 0u64);
            for idx in self.fired.frame_rule_indices.get(&i).into_iter().flatten() {
                if let Some(c) = oc.frame_faults.get(*idx) {
                    m = (m.0 + c.matched, m.1 + c.dropped, m.2 + c.duplicated, m.3 + c.delayed);
                }
            }
            let fired = m.1 + m.2 + m.3 > 0;
            let what = format!(
                "{} frames{}{}",
                rule.kind.as_deref().unwrap_or("all"),
                match rule.way {
                    Way::Both => String::new(),
                    Way::ToServer => " to the server".to_owned(),
                    Way::ToClient => " to clients".to_owned(),
                },
                rule.users.as_ref().map(|u| format!(" of {}", names(u))).unwrap_or_default()
            );
            guards.push(Guard {
                name: format!("{} fires", rule.path),
                passed: fired,
                required: req,
                detail: if fired {
                    format!("{what}: matched {}, dropped {}, duplicated {}, delayed {}", m.0, m.1, m.2, m.3)
                } else {
                    format!("never fired: {what} matched {} frames and none was dropped, duplicated or delayed", m.0)
                },
            });
        }
        for (i, p) in plan.partitions.iter().enumerate() {
            if p.source == "faults.random" {
                continue;
            }
            let lost = self.fired.partition_frames.get(&i).copied().unwrap_or(0);
            guards.push(Guard {
                name: format!("{} fires", p.source),
                passed: lost > 0,
                required: req,
                detail: if lost > 0 {
                    format!("{} frames lost on the cut link of {}", lost, names(&p.users))
                } else {
                    format!("never fired: no frame of {} was sent while the link was cut", names(&p.users))
                },
            });
        }
        for c in &s.faults.crashes {
            let n = self.fired.crashes.get(&c.path).copied().unwrap_or(0);
            let want = u64::from(c.server) + c.users.len() as u64;
            guards.push(Guard {
                name: format!("{} fires", c.path),
                passed: n >= want && want > 0,
                required: req,
                detail: format!("{n} of {want} crashes made"),
            });
        }
        for c in &s.faults.compromises {
            for u in &c.users {
                let tried = self.fired.compromises.get(u).copied().unwrap_or(0);
                guards.push(Guard {
                    name: format!("{} fires ({u})", c.path),
                    passed: tried > 0,
                    required: req,
                    detail: if tried > 0 {
                        format!("the adversary tried {tried} recorded ciphertexts against {u}'s stolen state")
                    } else {
                        format!("never fired: {u} had received nothing when its state was taken, so forward secrecy was not tested")
                    },
                });
            }
        }
        if !s.faults.clocks.is_empty() {
            guards.push(Guard {
                name: "faults.clock fires".to_owned(),
                passed: self.fired.clocks > 0,
                required: req,
                detail: format!("{} clock offsets set", self.fired.clocks),
            });
        }
        let k = plan.knobs;
        for (on, name, counter, what) in [
            (k.loss_per_mille > 0, "network.loss_per_mille fires", "frames_dropped", "frames dropped"),
            (k.duplicate_per_mille > 0, "network.duplicate_per_mille fires", "frames_duplicated", "frames duplicated"),
            (
                k.client_crashes_per_min > 0.0,
                "faults.random.client_crashes_per_min fires",
                "client_crashes",
                "client crashes",
            ),
            (
                k.server_crashes_per_min > 0.0,
                "faults.random.server_crashes_per_min fires",
                "server_crashes",
                "server crashes",
            ),
            (k.partitions_per_min > 0.0, "faults.random.partitions_per_min fires", "partitions", "partitions"),
        ] {
            if on {
                let n = counts.get(counter).copied().unwrap_or(0);
                guards.push(Guard {
                    name: name.to_owned(),
                    passed: n > 0,
                    required: req,
                    detail: if n > 0 {
                        format!("{n} {what}")
                    } else {
                        format!("never fired: 0 {what} (the rate is too low for the duration?)")
                    },
                });
            }
        }
        let planned = counts.get("messages_planned").copied().unwrap_or(0);
        if planned > 0 {
            let sent = counts.get("messages_sent").copied().unwrap_or(0);
            guards.push(Guard {
                name: "workload sends".to_owned(),
                passed: sent > 0,
                required: true,
                detail: format!("{sent} of {planned} planned messages accepted by the senders' clients"),
            });
        }
        for (name, min) in &s.expect.at_least {
            let n = counts.get(name).copied().unwrap_or(0);
            // The turmoil driver does not keep removed members' state copies,
            // so it never counts their attempts: an unmet guard on that
            // counter says nothing about the run there.
            let unfed = kind == crate::scenario::spec::DriverKind::Turmoil && name == "removed_member_attempts";
            guards.push(Guard {
                name: format!("{name} ≥ {min}"),
                passed: n >= *min,
                required: !unfed,
                detail: if unfed {
                    format!("{name} = {n} (not counted by the turmoil driver; advisory)")
                } else {
                    format!("{name} = {n}")
                },
            });
        }
        for (pct, bound) in &s.expect.latency_online_ms {
            let got = latency.online.map(|p| match pct.as_str() {
                "p50" => p.p50,
                "p90" => p.p90,
                "p99" => p.p99,
                _ => p.max,
            });
            guards.push(Guard {
                name: format!("{pct} delivery to online recipients ≤ {bound} ms"),
                passed: got.is_some_and(|g| g <= *bound),
                required: true,
                detail: match got {
                    Some(g) => format!("{pct} = {g} ms"),
                    None => "no delivery to an online recipient to measure".to_owned(),
                },
            });
        }

        let passed = !verdicts.iter().any(|v| v.state == VerdictState::Violated)
            && !guards.iter().any(|g| g.required && !g.passed);
        let frame_rules = frame_rule_rows(s, &self.fired, oc);
        let resolved = resolved_config(s, plan);
        let mut sim_ms = BTreeMap::new();
        sim_ms.insert("end_of_workload", end_of_load);
        sim_ms.insert("end", end);
        sim_ms.insert("quiesce", end - end_of_load);
        let reproduce = reproduce_command(s, opts, kind);
        let trace_jsonl = jsonl;
        RunOutcome {
            scenario: s.name.clone(),
            file: s.file.clone(),
            seed: opts.seed,
            cell: plan.cell,
            driver: kind.as_str().to_owned(),
            suite: s.suite.name().to_owned(),
            version: VERSION.to_owned(),
            commit: COMMIT.to_owned(),
            passed,
            resolved,
            verdicts,
            guards,
            counts,
            frame_rules,
            latency,
            sim_ms,
            trace_hash,
            trace_lines,
            reproduce,
            trace_jsonl,
        }
    }
}

/// The command line that reruns exactly this run.
pub fn reproduce_command(s: &Scenario, opts: &RunOptions, kind: DriverKind) -> String {
    let mut cmd = format!("bluetick run {} --seed {}", s.file, opts.seed);
    if let Some(c) = opts.cell.filter(|_| !s.matrix.is_empty()) {
        cmd += &format!(" --cell {c}");
    }
    if opts.swarm && !s.swarm {
        cmd += " --swarm";
    }
    if kind != s.driver {
        cmd += &format!(" --driver {}", kind.as_str());
    }
    cmd
}

fn names(users: &[UserId]) -> String {
    const SHOWN: usize = 3;
    let mut s: Vec<&str> = users.iter().take(SHOWN).map(UserId::as_str).collect();
    if users.len() > SHOWN {
        s.push("…");
    }
    s.join(", ")
}

fn uniform(r: &mut ChaCha20Rng, lo: u64, hi: u64) -> u64 {
    if hi <= lo {
        return lo;
    }
    // The read delay's modulo bias is below 2^-40 for any delay a scenario
    // can give; a read schedule needs no more.
    lo + r.next_u64() % (hi - lo + 1)
}

fn frame_rule_rows(s: &Scenario, fired: &Fired, oc: &Counts) -> Vec<BTreeMap<String, serde_json::Value>> {
    let mut out = Vec::new();
    for (i, rule) in s.faults.frames.iter().enumerate() {
        let mut m = [0u64; 4];
        for idx in fired.frame_rule_indices.get(&i).into_iter().flatten() {
            if let Some(c) = oc.frame_faults.get(*idx) {
                m[0] += c.matched;
                m[1] += c.dropped;
                m[2] += c.duplicated;
                m[3] += c.delayed;
            }
        }
        let mut row = BTreeMap::new();
        row.insert("rule".to_owned(), serde_json::json!(rule.path));
        row.insert("matched".to_owned(), serde_json::json!(m[0]));
        row.insert("dropped".to_owned(), serde_json::json!(m[1]));
        row.insert("duplicated".to_owned(), serde_json::json!(m[2]));
        row.insert("delayed".to_owned(), serde_json::json!(m[3]));
        out.push(row);
    }
    out
}

fn resolved_config(s: &Scenario, plan: &Plan) -> ResolvedConfig {
    let groups = s
        .groups
        .iter()
        .map(|g| {
            let mut m = BTreeMap::new();
            m.insert("name".to_owned(), serde_json::json!(g.label));
            m.insert("admin".to_owned(), serde_json::json!(g.admin));
            m.insert("members".to_owned(), serde_json::json!(g.members.len() + 1));
            m.insert("created_at_ms".to_owned(), serde_json::json!(g.at_ms));
            m.insert("changes".to_owned(), serde_json::json!(g.changes.len()));
            if let Some(c) = &g.churn {
                m.insert(
                    "churn".to_owned(),
                    serde_json::json!({"every_ms": c.every_ms, "join": c.join, "leave": c.leave, "from_ms": c.from_ms, "until_ms": c.until_ms}),
                );
            }
            m
        })
        .collect();
    let w = &s.workload;
    let workload = serde_json::json!({
        "global": w.global,
        "senders": w.senders.iter().map(|sp| serde_json::json!({
            "users": sp.users.len(), "rates": sp.rates, "from_ms": sp.from_ms, "until_ms": sp.until_ms,
        })).collect::<Vec<_>>(),
        "bursts": w.bursts.len(),
        "body_bytes": w.body_bytes,
        "media_bytes": w.media_bytes,
        "read_delay_ms": w.read_delay_ms,
        "until_ms": w.until_ms,
        "offline_periods": w.offline.len(),
        "flapping_sets": w.flap.len(),
    });
    let mut presence = BTreeMap::new();
    presence.insert("subscribers".to_owned(), s.presence.subscriptions.len() as u64);
    presence.insert("subscriptions".to_owned(), s.presence.subscriptions.values().map(|v| v.len() as u64).sum());
    presence.insert("privacy_settings".to_owned(), s.presence.privacy.len() as u64);
    ResolvedConfig {
        duration_ms: s.duration_ms,
        converge_within_ms: s.converge_within_ms,
        users: s.users.len(),
        users_sample: s.users.iter().take(5).map(|u| u.as_str().to_owned()).collect(),
        groups,
        knobs: plan.knobs,
        knob_sources: plan.knob_sources.clone(),
        cell: plan.cell,
        swarm: plan.swarm,
        workload,
        planned_sends: plan.planned_sends.clone(),
        faults: to_json(&s.faults),
        partitions: to_json(&plan.partitions),
        server: to_json(&s.server),
        clients: to_json(&s.clients),
        bugs: to_json(&s.bugs),
        presence,
        timeline_steps: plan.steps.len(),
    }
}

fn to_json<T: Serialize>(v: &T) -> serde_json::Value {
    serde_json::to_value(v).unwrap_or(serde_json::Value::Null)
}

/// Send → first app delivery latencies, all and to online recipients, from
/// the trace's app deliveries.
fn latencies(
    deliveries: &[AppDelivery],
    sent: &BTreeMap<MessageId, SentRecord>,
    base_ms: u64,
    unavailable: &BTreeMap<UserId, Vec<(u64, Option<u64>)>>,
    server_crashes: &[u64],
) -> (Vec<u64>, Vec<u64>) {
    // Trace lines name ids by a short prefix; ids that share one are left
    // out rather than mismatched. Each record gets a number, so that `seen`
    // (an insert per delivery) mostly compares numbers, not strings.
    let mut by_label: BTreeMap<String, Option<(usize, &SentRecord)>> = BTreeMap::new();
    for (n, (id, rec)) in sent.iter().enumerate() {
        by_label.entry(format!("{id:?}")).and_modify(|e| *e = None).or_insert(Some((n, rec)));
    }
    let mut seen: BTreeSet<(usize, &UserId)> = BTreeSet::new();
    let mut all = Vec::new();
    let mut online = Vec::new();
    for d in deliveries {
        let Some(Some((n, rec))) = by_label.get(d.id.as_str()) else { continue };
        if !seen.insert((*n, &d.user)) {
            continue;
        }
        let at = d.at_ms.saturating_sub(base_ms);
        let lat = at.saturating_sub(rec.at_ms);
        all.push(lat);
        let reachable = |u: &UserId| {
            unavailable.get(u).is_none_or(|v| v.iter().all(|(a, b)| *a > at || b.is_some_and(|b| b < rec.at_ms)))
        };
        let server_up = server_crashes.iter().all(|c| *c < rec.at_ms || *c > at);
        if server_up && reachable(&d.user) && reachable(&rec.from) {
            online.push(lat);
        }
    }
    (all, online)
}

/// Nearest-rank percentiles of `v`.
pub fn percentiles(mut v: Vec<u64>) -> Option<Percentiles> {
    if v.is_empty() {
        return None;
    }
    v.sort_unstable();
    let n = v.len();
    let rank = |q: usize| v.get((q * n).div_ceil(100).max(1) - 1).copied().unwrap_or(0);
    Some(Percentiles { samples: n as u64, p50: rank(50), p90: rank(90), p99: rank(99), max: v[n - 1] })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let p = percentiles((1..=100).collect()).unwrap();
        assert_eq!((p.p50, p.p90, p.p99, p.max), (50, 90, 99, 100));
        let one = percentiles(vec![7]).unwrap();
        assert_eq!((one.p50, one.p99, one.max), (7, 7, 7));
        assert!(percentiles(Vec::new()).is_none());
    }

    #[test]
    fn bodies_carry_a_unique_tag_at_any_length() {
        let a = text_body(1, 5, 100);
        let b = text_body(1, 6, 100);
        assert_eq!(a.len(), 100);
        assert_ne!(a[..32], b[..32]);
        assert_ne!(text_body(2, 5, 32), text_body(1, 5, 32));
    }
}
