//! [`Scenario`] + seed (+ matrix cell, + swarm) → [`Plan`]: the fully resolved
//! configuration and a concrete timeline of actions.
//!
//! Every random choice comes from `rand_chacha` generators derived from the
//! seed by label ([`sub_seed`]), one stream per concern, so adding a fault
//! does not reshuffle the workload and the same seed always gives the same
//! plan. Arrivals use only integer draws and IEEE-exact arithmetic (no `ln`),
//! so a plan is identical on every platform: a rate `r` over `T` seconds
//! sends `round(r·T)` messages at uniformly random times in the window.

use std::collections::BTreeMap;

use bluetick_core::ids::UserId;
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::spec::*;
use super::units::Spread;

/// Time a member added to a group is given to learn of it before the
/// workload picks it as a group sender (a client refuses to send to a group
/// it does not yet know it is in): a few round trips at the latencies
/// scenarios use.
pub const GROUP_SETTLE_MS: u64 = 1_000;

/// Ranges swarm mode draws unset knobs from. Wide enough to find bugs, kept
/// below the point where nothing gets through (a run that only times out
/// tests nothing).
pub mod swarm {
    /// Loss, per mille.
    pub const LOSS_PER_MILLE_MAX: u32 = 200;
    /// Duplication, per mille.
    pub const DUPLICATE_PER_MILLE_MAX: u32 = 200;
    /// Smallest latency, ms: 1 to this.
    pub const LATENCY_MIN_MS_MAX: u64 = 50;
    /// Largest latency: up to this much above the smallest, ms.
    pub const LATENCY_SPREAD_MS_MAX: u64 = 200;
    /// Random client crashes per minute: 0 to this.
    pub const CLIENT_CRASHES_PER_MIN_MAX: f64 = 2.0;
    /// Random server crashes per minute: 0 to this.
    pub const SERVER_CRASHES_PER_MIN_MAX: f64 = 0.5;
    /// Random partitions per minute: 0 to this.
    pub const PARTITIONS_PER_MIN_MAX: f64 = 1.0;
}

/// The knobs of one run, resolved.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Knobs {
    /// Loss, per mille.
    pub loss_per_mille: u32,
    /// Duplication, per mille.
    pub duplicate_per_mille: u32,
    /// Smallest latency, ms.
    pub latency_min_ms: u64,
    /// Largest latency, ms.
    pub latency_max_ms: u64,
    /// Random client crashes per minute.
    pub client_crashes_per_min: f64,
    /// Random server crashes per minute.
    pub server_crashes_per_min: f64,
    /// Random partitions per minute.
    pub partitions_per_min: f64,
}

/// Where a knob's value came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum KnobSource {
    /// The scenario file.
    File,
    /// The matrix cell.
    Matrix,
    /// Drawn from the seed (swarm mode).
    Swarm,
    /// The default.
    Default,
}

/// A partition of the plan (declared or random).
#[derive(Debug, Clone, Serialize)]
pub struct PlannedPartition {
    /// Declared at (`faults.partition[0]`) or `faults.random`.
    pub source: String,
    /// Who.
    pub users: Vec<UserId>,
    /// Which way.
    pub way: Way,
    /// Start, ms.
    pub at_ms: u64,
    /// End, ms.
    pub until_ms: u64,
}

/// One thing to do at one time.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "action", rename_all = "kebab-case")]
pub enum Action {
    /// Set a privacy setting.
    SetPrivacy {
        /// Owner.
        user: UserId,
        /// Setting.
        visibility: VisibilityName,
    },
    /// Subscribe to presence.
    Subscribe {
        /// Subscriber.
        user: UserId,
        /// Followed users.
        to: Vec<UserId>,
    },
    /// The admin creates a group.
    CreateGroup {
        /// Group label.
        group: String,
        /// Admin.
        admin: UserId,
        /// Members besides the admin.
        members: Vec<UserId>,
    },
    /// The admin changes a group.
    ChangeGroup {
        /// Group label.
        group: String,
        /// Admin.
        admin: UserId,
        /// Added.
        add: Vec<UserId>,
        /// Removed.
        remove: Vec<UserId>,
    },
    /// A frame rule starts.
    FramesOn {
        /// Index into the scenario's frame rules.
        rule: usize,
    },
    /// A frame rule ends.
    FramesOff {
        /// Index into the scenario's frame rules.
        rule: usize,
    },
    /// A partition starts.
    PartitionOn {
        /// Index into [`Plan::partitions`].
        partition: usize,
    },
    /// A partition heals.
    PartitionOff {
        /// Index into [`Plan::partitions`].
        partition: usize,
    },
    /// A user goes offline.
    Offline {
        /// Who.
        user: UserId,
    },
    /// A user comes back online.
    Online {
        /// Who.
        user: UserId,
    },
    /// The server crashes.
    CrashServer {
        /// Declared at, or `faults.random`.
        source: String,
    },
    /// A client crashes.
    CrashClient {
        /// Who.
        user: UserId,
        /// Declared at, or `faults.random`.
        source: String,
    },
    /// A clock offset.
    ClockOffset {
        /// Who.
        user: UserId,
        /// Offset, ms.
        offset_ms: i64,
    },
    /// A device compromise.
    Compromise {
        /// Whose device.
        user: UserId,
    },
    /// A 1:1 text.
    SendText {
        /// Sender.
        from: UserId,
        /// Recipient.
        to: UserId,
        /// Message number in the run (the body's tag).
        n: u64,
        /// Body size.
        bytes: u32,
    },
    /// A group text.
    SendGroup {
        /// Sender.
        from: UserId,
        /// Group label.
        group: String,
        /// Message number.
        n: u64,
        /// Body size.
        bytes: u32,
    },
    /// A media message.
    SendMedia {
        /// Sender.
        from: UserId,
        /// Recipient.
        to: UserId,
        /// Message number.
        n: u64,
        /// Size.
        bytes: u32,
    },
}

impl Action {
    /// Order among actions at the same time: setup, then faults and
    /// connectivity, then sends (so a fault declared at `t` covers a send at `t`).
    fn priority(&self) -> u8 {
        match self {
            Action::SetPrivacy { .. } | Action::Subscribe { .. } => 0,
            Action::CreateGroup { .. } | Action::ChangeGroup { .. } => 1,
            Action::FramesOff { .. } | Action::PartitionOff { .. } | Action::Online { .. } => 2,
            Action::FramesOn { .. } | Action::PartitionOn { .. } | Action::Offline { .. } => 3,
            Action::CrashServer { .. }
            | Action::CrashClient { .. }
            | Action::ClockOffset { .. }
            | Action::Compromise { .. } => 4,
            Action::SendText { .. } | Action::SendGroup { .. } | Action::SendMedia { .. } => 5,
        }
    }
}

/// An action at a time.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Step {
    /// Simulated time since the run's start, ms.
    pub at_ms: u64,
    /// What.
    pub action: Action,
}

/// One run, fully resolved.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    /// The seed.
    pub seed: u64,
    /// The matrix cell (index into [`cells`]), when the scenario has a matrix.
    pub cell: Option<usize>,
    /// Swarm mode was on.
    pub swarm: bool,
    /// The knobs.
    pub knobs: Knobs,
    /// Where each knob came from.
    pub knob_sources: BTreeMap<&'static str, KnobSource>,
    /// Partitions, declared then random.
    pub partitions: Vec<PlannedPartition>,
    /// The timeline, in execution order.
    pub steps: Vec<Step>,
    /// Messages planned, by kind (`direct`, `group`, `media`).
    pub planned_sends: BTreeMap<&'static str, u64>,
    /// Group sends the workload wanted but had no eligible sender for.
    pub skipped_group_sends: u64,
}

/// Why a plan could not be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    /// `--cell` is past the matrix.
    #[error("matrix cell {cell} does not exist (the matrix has {cells} cells, numbered from 0)")]
    NoSuchCell {
        /// Asked for.
        cell: usize,
        /// Available.
        cells: usize,
    },
}

/// A 64-bit seed for the stream `label` of run `seed`: the first 8 bytes of
/// SHA-256(seed ‖ label), so streams are independent and stable.
pub fn sub_seed(seed: u64, label: &str) -> u64 {
    let mut h = Sha256::new();
    h.update(seed.to_le_bytes());
    h.update(label.as_bytes());
    let d = h.finalize();
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[..8]);
    u64::from_le_bytes(b)
}

fn rng(seed: u64, label: &str) -> ChaCha20Rng {
    ChaCha20Rng::seed_from_u64(sub_seed(seed, label))
}

/// Uniform in `lo..=hi` (either order).
fn uniform(r: &mut ChaCha20Rng, lo: u64, hi: u64) -> u64 {
    let (lo, hi) = if lo <= hi { (lo, hi) } else { (hi, lo) };
    let span = hi - lo;
    if span == u64::MAX {
        return r.next_u64();
    }
    // Rejection sampling: no modulo bias, so draws are exactly uniform.
    let n = span + 1;
    let zone = u64::MAX - (u64::MAX % n) - 1;
    loop {
        let x = r.next_u64();
        if x <= zone {
            return lo + x % n;
        }
    }
}

fn pick<'a, T>(r: &mut ChaCha20Rng, items: &'a [T]) -> Option<&'a T> {
    if items.is_empty() {
        return None;
    }
    let i = uniform(r, 0, items.len() as u64 - 1);
    items.get(usize::try_from(i).ok()?)
}

/// A uniform rate-scaled count: `round(rate · window_s)`.
fn count_for(rate_per_s: f64, window_ms: u64) -> u64 {
    let c = (rate_per_s * window_ms as f64 / 1000.0).round();
    if c.is_finite() && c > 0.0 {
        c as u64
    } else {
        0
    }
}

/// `count` sorted uniform times in `[from, until)`.
fn times(r: &mut ChaCha20Rng, count: u64, from: u64, until: u64) -> Vec<u64> {
    if until <= from {
        return Vec::new();
    }
    let mut v: Vec<u64> = (0..count).map(|_| uniform(r, from, until - 1)).collect();
    v.sort_unstable();
    v
}

fn draw_spread(r: &mut ChaCha20Rng, s: Spread<u64>) -> u64 {
    uniform(r, s.min, s.max)
}

fn draw_rate(r: &mut ChaCha20Rng, max: f64) -> f64 {
    // Hundredths: readable in the report, and exact in decimal.
    let max_hundredths = (max * 100.0).round() as u64;
    uniform(r, 0, max_hundredths) as f64 / 100.0
}

/// Matrix cells: each is one value per axis, axes in file order, the last
/// axis varying fastest.
pub fn cells(axes: &[MatrixAxis]) -> Vec<Vec<(Knob, KnobValue)>> {
    let mut out: Vec<Vec<(Knob, KnobValue)>> = vec![Vec::new()];
    for axis in axes {
        let mut next = Vec::with_capacity(out.len() * axis.values.len());
        for prefix in &out {
            for v in &axis.values {
                let mut c = prefix.clone();
                c.push((axis.knob, *v));
                next.push(c);
            }
        }
        out = next;
    }
    out
}

/// Resolves the knobs of one run.
fn knobs(
    s: &Scenario,
    seed: u64,
    cell: &[(Knob, KnobValue)],
    swarm_on: bool,
) -> (Knobs, BTreeMap<&'static str, KnobSource>) {
    let mut r = rng(seed, "swarm");
    let mut sources = BTreeMap::new();
    let f = s.knobs;
    let from_cell = |k: Knob| cell.iter().find(|(kk, _)| *kk == k).map(|(_, v)| *v);
    let as_int = |v: KnobValue| match v {
        KnobValue::Int(x) => x,
        KnobValue::Rate(x) => x as u64,
    };
    let as_rate = |v: KnobValue| match v {
        KnobValue::Int(x) => x as f64,
        KnobValue::Rate(x) => x,
    };
    // Draw every swarm value whether used or not, so the draws of one knob do
    // not depend on which others the file sets.
    let swarm_loss = uniform(&mut r, 0, u64::from(swarm::LOSS_PER_MILLE_MAX));
    let swarm_dup = uniform(&mut r, 0, u64::from(swarm::DUPLICATE_PER_MILLE_MAX));
    let swarm_lat_min = uniform(&mut r, 1, swarm::LATENCY_MIN_MS_MAX);
    let swarm_lat_spread = uniform(&mut r, 0, swarm::LATENCY_SPREAD_MS_MAX);
    let swarm_cc = draw_rate(&mut r, swarm::CLIENT_CRASHES_PER_MIN_MAX);
    let swarm_sc = draw_rate(&mut r, swarm::SERVER_CRASHES_PER_MIN_MAX);
    let swarm_p = draw_rate(&mut r, swarm::PARTITIONS_PER_MIN_MAX);

    let mut int_knob = |k: Knob, file: Option<u64>, swarm_v: u64, default: u64| -> u64 {
        let (v, src) = match (from_cell(k), file) {
            (Some(v), _) => (as_int(v), KnobSource::Matrix),
            (None, Some(v)) => (v, KnobSource::File),
            (None, None) if swarm_on => (swarm_v, KnobSource::Swarm),
            (None, None) => (default, KnobSource::Default),
        };
        sources.insert(k.key(), src);
        v
    };
    let loss = int_knob(Knob::LossPerMille, f.loss_per_mille.map(u64::from), swarm_loss, 0);
    let dup = int_knob(Knob::DuplicatePerMille, f.duplicate_per_mille.map(u64::from), swarm_dup, 0);
    let lat_min = int_knob(Knob::LatencyMin, f.latency_min_ms, swarm_lat_min, 5);
    let lat_max = int_knob(Knob::LatencyMax, f.latency_max_ms, lat_min + swarm_lat_spread, lat_min.max(5));
    let mut rate_knob = |k: Knob, file: Option<f64>, swarm_v: f64| -> f64 {
        let (v, src) = match (from_cell(k), file) {
            (Some(v), _) => (as_rate(v), KnobSource::Matrix),
            (None, Some(v)) => (v, KnobSource::File),
            (None, None) if swarm_on => (swarm_v, KnobSource::Swarm),
            (None, None) => (0.0, KnobSource::Default),
        };
        sources.insert(k.key(), src);
        v
    };
    let cc = rate_knob(Knob::ClientCrashesPerMin, f.client_crashes_per_min, swarm_cc);
    let sc = rate_knob(Knob::ServerCrashesPerMin, f.server_crashes_per_min, swarm_sc);
    let pp = rate_knob(Knob::PartitionsPerMin, f.partitions_per_min, swarm_p);
    let knobs = Knobs {
        loss_per_mille: u32::try_from(loss).unwrap_or(1000).min(1000),
        duplicate_per_mille: u32::try_from(dup).unwrap_or(1000).min(1000),
        latency_min_ms: lat_min.min(lat_max),
        latency_max_ms: lat_max.max(lat_min),
        client_crashes_per_min: cc,
        server_crashes_per_min: sc,
        partitions_per_min: pp,
    };
    (knobs, sources)
}

/// Group membership over time, for choosing group senders.
#[derive(Debug, Default, Clone)]
struct Membership {
    created_ms: u64,
    admin: Option<UserId>,
    /// user → (joined at, left at).
    spans: BTreeMap<UserId, Vec<(u64, Option<u64>)>>,
}

impl Membership {
    fn join(&mut self, u: &UserId, t: u64) {
        self.spans.entry(u.clone()).or_default().push((t, None));
    }
    fn leave(&mut self, u: &UserId, t: u64) {
        if let Some(last) = self.spans.get_mut(u).and_then(|v| v.last_mut()) {
            if last.1.is_none() {
                last.1 = Some(t);
            }
        }
    }
    fn is_member(&self, u: &UserId) -> bool {
        self.spans.get(u).and_then(|v| v.last()).is_some_and(|s| s.1.is_none())
    }
    fn current(&self) -> Vec<UserId> {
        self.spans.iter().filter(|(_, v)| v.last().is_some_and(|s| s.1.is_none())).map(|(u, _)| u.clone()).collect()
    }
    /// Users who can send at `t`: members since at least [`GROUP_SETTLE_MS`]
    /// (the admin from creation on).
    fn senders_at(&self, t: u64) -> Vec<UserId> {
        if t < self.created_ms {
            return Vec::new();
        }
        self.spans
            .iter()
            .filter(|(u, v)| {
                let settle = if self.admin.as_ref() == Some(*u) { 0 } else { GROUP_SETTLE_MS };
                v.iter().any(|(a, b)| a + settle <= t && b.is_none_or(|b| t < b))
            })
            .map(|(u, _)| u.clone())
            .collect()
    }
}

/// Makes the plan of run (`seed`, `cell`); `swarm` forces swarm mode on.
pub fn resolve(s: &Scenario, seed: u64, cell: Option<usize>, swarm_flag: bool) -> Result<Plan, ResolveError> {
    let all_cells = cells(&s.matrix);
    let cell_values = match (cell, s.matrix.is_empty()) {
        (None, _) => all_cells.first().cloned().unwrap_or_default(),
        (Some(c), _) => {
            all_cells.get(c).cloned().ok_or(ResolveError::NoSuchCell { cell: c, cells: all_cells.len() })?
        }
    };
    let cell = if s.matrix.is_empty() { None } else { Some(cell.unwrap_or(0)) };
    let swarm_on = s.swarm || swarm_flag;
    let (knobs, knob_sources) = knobs(s, seed, &cell_values, swarm_on);
    let mut b = Builder { steps: Vec::new(), seq: 0 };
    let d = s.duration_ms;

    // Presence setup at the start.
    for (user, vis) in &s.presence.privacy {
        b.push(0, Action::SetPrivacy { user: user.clone(), visibility: *vis });
    }
    for (user, to) in &s.presence.subscriptions {
        b.push(0, Action::Subscribe { user: user.clone(), to: to.iter().cloned().collect() });
    }

    // Groups: creation, fixed changes, churn; membership tracked for senders.
    let mut churn_rng = rng(seed, "churn");
    let mut membership: BTreeMap<String, Membership> = BTreeMap::new();
    for g in &s.groups {
        let mut m = Membership { created_ms: g.at_ms, admin: Some(g.admin.clone()), ..Membership::default() };
        m.join(&g.admin, g.at_ms);
        for u in &g.members {
            m.join(u, g.at_ms);
        }
        b.push(
            g.at_ms,
            Action::CreateGroup {
                group: g.label.clone(),
                admin: g.admin.clone(),
                members: g.members.iter().cloned().collect(),
            },
        );
        // Merge fixed changes and churn ticks in time order.
        let mut events: Vec<(u64, Option<&GroupChangeSpec>)> = g.changes.iter().map(|c| (c.at_ms, Some(c))).collect();
        if let Some(ch) = &g.churn {
            let mut t = ch.from_ms;
            while t <= ch.until_ms && t <= d {
                events.push((t, None));
                t = t.saturating_add(ch.every_ms);
            }
        }
        events.sort_by_key(|(t, c)| (*t, c.is_none()));
        for (t, change) in events {
            let (add, remove): (Vec<UserId>, Vec<UserId>) = match (change, &g.churn) {
                (Some(c), _) => (
                    c.add.iter().filter(|u| !m.is_member(u)).cloned().collect(),
                    c.remove.iter().filter(|u| m.is_member(u)).cloned().collect(),
                ),
                (None, Some(ch)) => {
                    let mut leavers: Vec<UserId> = m.current().into_iter().filter(|u| *u != g.admin).collect();
                    let mut remove = Vec::new();
                    for _ in 0..ch.leave {
                        let Some(u) = pick(&mut churn_rng, &leavers).cloned() else { break };
                        leavers.retain(|x| *x != u);
                        remove.push(u);
                    }
                    let size_after = m.current().len() - remove.len();
                    let room = GROUP_MEMBERS_MAX_USIZE.saturating_sub(size_after);
                    let mut joiners: Vec<UserId> =
                        ch.pool.iter().filter(|u| !m.is_member(u) && !remove.contains(u)).cloned().collect();
                    let mut add = Vec::new();
                    for _ in 0..(ch.join as usize).min(room) {
                        let Some(u) = pick(&mut churn_rng, &joiners).cloned() else { break };
                        joiners.retain(|x| *x != u);
                        add.push(u);
                    }
                    (add, remove)
                }
                (None, None) => (Vec::new(), Vec::new()),
            };
            if add.is_empty() && remove.is_empty() {
                continue;
            }
            for u in &remove {
                m.leave(u, t);
            }
            for u in &add {
                m.join(u, t);
            }
            b.push(t, Action::ChangeGroup { group: g.label.clone(), admin: g.admin.clone(), add, remove });
        }
        membership.insert(g.label.clone(), m);
    }

    // Timeline faults.
    for (i, r) in s.faults.frames.iter().enumerate() {
        b.push(r.at_ms, Action::FramesOn { rule: i });
        if r.until_ms < d {
            b.push(r.until_ms, Action::FramesOff { rule: i });
        }
    }
    let mut partitions = Vec::new();
    for p in &s.faults.partitions {
        partitions.push(PlannedPartition {
            source: p.path.clone(),
            users: p.users.clone(),
            way: p.way,
            at_ms: p.at_ms,
            until_ms: p.until_ms,
        });
    }
    for c in &s.faults.crashes {
        if c.server {
            b.push(c.at_ms, Action::CrashServer { source: c.path.clone() });
        }
        for u in &c.users {
            b.push(c.at_ms, Action::CrashClient { user: u.clone(), source: c.path.clone() });
        }
    }
    for c in &s.faults.clocks {
        for u in &c.users {
            b.push(c.at_ms, Action::ClockOffset { user: u.clone(), offset_ms: c.offset_ms });
        }
    }
    for c in &s.faults.compromises {
        for u in &c.users {
            b.push(c.at_ms, Action::Compromise { user: u.clone() });
        }
    }

    // Random faults.
    let mut fr = rng(seed, "random-faults");
    for t in times(&mut fr, count_for(knobs.client_crashes_per_min / 60.0, d), 0, d) {
        if let Some(u) = pick(&mut fr, &s.random_fault_users) {
            b.push(t, Action::CrashClient { user: u.clone(), source: "faults.random".to_owned() });
        }
    }
    for t in times(&mut fr, count_for(knobs.server_crashes_per_min / 60.0, d), 0, d) {
        b.push(t, Action::CrashServer { source: "faults.random".to_owned() });
    }
    for t in times(&mut fr, count_for(knobs.partitions_per_min / 60.0, d), 0, d) {
        let len = draw_spread(&mut fr, s.partition_for_ms);
        if let Some(u) = pick(&mut fr, &s.random_fault_users) {
            partitions.push(PlannedPartition {
                source: "faults.random".to_owned(),
                users: vec![u.clone()],
                way: Way::Both,
                at_ms: t,
                until_ms: t.saturating_add(len).min(d),
            });
        }
    }
    for (i, p) in partitions.iter().enumerate() {
        b.push(p.at_ms, Action::PartitionOn { partition: i });
        if p.until_ms < d {
            b.push(p.until_ms, Action::PartitionOff { partition: i });
        }
    }

    // Connectivity.
    for o in &s.workload.offline {
        for u in &o.users {
            b.push(o.at_ms, Action::Offline { user: u.clone() });
            if let Some(until) = o.until_ms.filter(|u| *u < d) {
                b.push(until, Action::Online { user: u.clone() });
            }
        }
    }
    let mut flap_rng = rng(seed, "flap");
    for f in &s.workload.flap {
        for u in &f.users {
            let mut t = f.from_ms;
            while t < f.until_ms {
                b.push(t, Action::Offline { user: u.clone() });
                let back = t.saturating_add(draw_spread(&mut flap_rng, f.offline_for_ms).max(1)).min(f.until_ms);
                b.push(back, Action::Online { user: u.clone() });
                t = back.saturating_add(draw_spread(&mut flap_rng, f.online_for_ms).max(1));
            }
        }
    }

    // Sends.
    let mut w = rng(seed, "workload");
    let mut sends: Vec<(u64, SendDraft)> = Vec::new();
    let mut skipped_group_sends = 0;
    let wl = &s.workload;
    let users = &s.users;
    let group_labels: Vec<String> = s.groups.iter().map(|g| g.label.clone()).collect();
    for t in times(&mut w, count_for(wl.global.direct_per_s, wl.until_ms), 0, wl.until_ms) {
        if let Some((from, to)) = pick_pair(&mut w, s, users, None) {
            sends.push((t, SendDraft::Direct { from, to }));
        }
    }
    for t in times(&mut w, count_for(wl.global.media_per_s, wl.until_ms), 0, wl.until_ms) {
        if let Some((from, to)) = pick_pair(&mut w, s, users, None) {
            sends.push((t, SendDraft::Media { from, to }));
        }
    }
    for t in times(&mut w, count_for(wl.global.group_per_s, wl.until_ms), 0, wl.until_ms) {
        let live: Vec<&String> =
            group_labels.iter().filter(|g| membership.get(*g).is_some_and(|m| !m.senders_at(t).is_empty())).collect();
        let chosen = pick(&mut w, &live).and_then(|g| {
            let senders = membership.get(*g)?.senders_at(t);
            Some(((*g).clone(), pick(&mut w, &senders)?.clone()))
        });
        match chosen {
            Some((group, from)) => sends.push((t, SendDraft::Group { from, group })),
            None => skipped_group_sends += 1,
        }
    }
    for sp in &wl.senders {
        for u in &sp.users {
            for t in times(&mut w, count_for(sp.rates.direct_per_s, sp.until_ms - sp.from_ms), sp.from_ms, sp.until_ms)
            {
                if let Some((from, to)) = pick_pair(&mut w, s, std::slice::from_ref(u), sp.to.as_deref()) {
                    sends.push((t, SendDraft::Direct { from, to }));
                }
            }
            for t in times(&mut w, count_for(sp.rates.media_per_s, sp.until_ms - sp.from_ms), sp.from_ms, sp.until_ms) {
                if let Some((from, to)) = pick_pair(&mut w, s, std::slice::from_ref(u), sp.to.as_deref()) {
                    sends.push((t, SendDraft::Media { from, to }));
                }
            }
            for t in times(&mut w, count_for(sp.rates.group_per_s, sp.until_ms - sp.from_ms), sp.from_ms, sp.until_ms) {
                let mine: Vec<&String> = group_labels
                    .iter()
                    .filter(|g| sp.groups.as_ref().is_none_or(|gs| gs.contains(g)))
                    .filter(|g| membership.get(*g).is_some_and(|m| m.senders_at(t).contains(u)))
                    .collect();
                match pick(&mut w, &mine) {
                    Some(g) => sends.push((t, SendDraft::Group { from: u.clone(), group: (*g).clone() })),
                    None => skipped_group_sends += 1,
                }
            }
        }
    }
    for burst in &wl.bursts {
        for k in 0..u64::from(burst.count) {
            let t = burst.at_ms + if burst.count > 1 { burst.over_ms * k / u64::from(burst.count - 1) } else { 0 };
            let draft = match &burst.target {
                BurstTarget::Direct(to) => SendDraft::Direct { from: burst.from.clone(), to: to.clone() },
                BurstTarget::Media(to) => SendDraft::Media { from: burst.from.clone(), to: to.clone() },
                BurstTarget::Group(g) => SendDraft::Group { from: burst.from.clone(), group: g.clone() },
            };
            sends.push((t, draft.with_bytes(burst.bytes)));
        }
    }
    // Number messages in time order so message n is the n-th sent.
    sends.sort_by_key(|(t, _)| *t);
    let mut planned_sends: BTreeMap<&'static str, u64> = BTreeMap::new();
    for (n, (t, draft)) in sends.into_iter().enumerate() {
        let n = n as u64;
        let text_bytes = |w: &mut ChaCha20Rng, fixed: Option<u32>| {
            fixed.unwrap_or_else(|| uniform(w, u64::from(wl.body_bytes.min), u64::from(wl.body_bytes.max)) as u32)
        };
        let action = match draft {
            SendDraft::Direct { from, to } => Action::SendText { from, to, n, bytes: text_bytes(&mut w, None) },
            SendDraft::DirectSized { from, to, bytes } => Action::SendText { from, to, n, bytes },
            SendDraft::Media { from, to } => {
                let bytes = uniform(&mut w, u64::from(wl.media_bytes.min), u64::from(wl.media_bytes.max)) as u32;
                Action::SendMedia { from, to, n, bytes }
            }
            SendDraft::MediaSized { from, to, bytes } => Action::SendMedia { from, to, n, bytes },
            SendDraft::Group { from, group } => Action::SendGroup { from, group, n, bytes: text_bytes(&mut w, None) },
            SendDraft::GroupSized { from, group, bytes } => Action::SendGroup { from, group, n, bytes },
        };
        let kind = match action {
            Action::SendText { .. } => "direct",
            Action::SendGroup { .. } => "group",
            _ => "media",
        };
        *planned_sends.entry(kind).or_default() += 1;
        b.push(t, action);
    }

    let mut steps = b.steps;
    steps.sort_by_key(|(t, prio, seq, _)| (*t, *prio, *seq));
    Ok(Plan {
        seed,
        cell,
        swarm: swarm_on,
        knobs,
        knob_sources,
        partitions,
        steps: steps.into_iter().map(|(at_ms, _, _, action)| Step { at_ms, action }).collect(),
        planned_sends,
        skipped_group_sends,
    })
}

const GROUP_MEMBERS_MAX_USIZE: usize = super::validate::GROUP_MEMBERS_MAX;

#[derive(Debug)]
enum SendDraft {
    Direct { from: UserId, to: UserId },
    DirectSized { from: UserId, to: UserId, bytes: u32 },
    Media { from: UserId, to: UserId },
    MediaSized { from: UserId, to: UserId, bytes: u32 },
    Group { from: UserId, group: String },
    GroupSized { from: UserId, group: String, bytes: u32 },
}

impl SendDraft {
    fn with_bytes(self, bytes: Option<u32>) -> Self {
        let Some(bytes) = bytes else { return self };
        match self {
            SendDraft::Direct { from, to } => SendDraft::DirectSized { from, to, bytes },
            SendDraft::Media { from, to } => SendDraft::MediaSized { from, to, bytes },
            SendDraft::Group { from, group } => SendDraft::GroupSized { from, group, bytes },
            other => other,
        }
    }
}

/// A sender from `senders` and a recipient from `to` (or the sender's contacts).
fn pick_pair(w: &mut ChaCha20Rng, s: &Scenario, senders: &[UserId], to: Option<&[UserId]>) -> Option<(UserId, UserId)> {
    let from = pick(w, senders)?.clone();
    let candidates: Vec<&UserId> = match to {
        Some(list) => list.iter().filter(|u| **u != from).collect(),
        None => s.contacts.of(&from, &s.users),
    };
    let to = (*pick(w, &candidates)?).clone();
    Some((from, to))
}

struct Builder {
    steps: Vec<(u64, u8, u64, Action)>,
    seq: u64,
}

impl Builder {
    fn push(&mut self, at_ms: u64, action: Action) {
        let prio = action.priority();
        self.steps.push((at_ms, prio, self.seq, action));
        self.seq += 1;
    }
}
