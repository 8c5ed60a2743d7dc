//! A counterexample as a simulator scenario file: the path the checker
//! found, written as timed actions and targeted frame faults that
//! `bluetick run` replays to the same failure.
//!
//! # How a path becomes a timeline
//! The model has no latency: a step is an app command, a timer, a crash or
//! one frame arriving, and model time moves only when a timer fires. The
//! simulator has latency, and its network delivers every frame by itself.
//! So only the steps the network does not take on its own are written out:
//! - an app command, a connection change, a crash or a theft (a *stimulus*)
//!   is scheduled [`STEP_GAP_MS`] after the one before (or later, if model
//!   time says so), long enough for the frames it causes to settle first;
//! - a lost or duplicated frame becomes a `[[faults.frames]]` rule on that
//!   frame's kind, direction and user, open while the stimulus whose chain
//!   of frames carried it is in flight (the rule would also catch another
//!   frame of the same kind in that window; the model's shortest paths do
//!   not have one);
//! - a timer is not written: the simulator's timers run with the model's
//!   timeouts, so they fire on their own at about the time the trace says.
//!
//! The file sets the same bug switches, checks only the violated invariant
//! and keeps fault guards advisory, so its exit status is 1 exactly when the
//! simulator sees the same failure. A perfect step-by-step replay is not the
//! goal; steps the simulator cannot reproduce (a frame overtaking another
//! on one connection, a read at one chosen moment) are listed in the file's
//! header.

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;

use bluetick_core::client::ClientBug;
use bluetick_core::server::keys::KeyBug;
use bluetick_core::server::mailbox::MailboxBug;
use bluetick_core::server::presence::PresenceBug;
use bluetick_crypto::CipherSuite;

use crate::config::AppStep;
use crate::model::{Action, MessagingModel};
use crate::properties::Check;
use crate::system::{frame_kind, name, Chan, Dir, MState};
use crate::trace::describe_step;

/// When the first warm-up message is sent: users register in the first
/// round trips after time 0, and a send to an unregistered user is refused.
pub const WARM_UP_AT_MS: u64 = 1_000;

/// Time between warm-up messages: each starts an X3DH session (a bundle
/// fetch and a prekey message), a few round trips of [`LATENCY_MS`].
pub const WARM_UP_GAP_MS: u64 = 1_000;

/// Time between two stimuli: a chain of frames (send, ack, delivery,
/// delivery-ack, receipt) takes under ten hops of [`LATENCY_MS`], so one
/// stimulus's frames have settled before the next; and short compared with
/// the model's ack and resend timeouts (3–4 s), so a path's steps stay in
/// the order the model took them relative to its timers.
pub const STEP_GAP_MS: u64 = 500;

/// One-way latency of every frame: fixed, so the simulator keeps each
/// connection's order as the model's FIFO network does.
pub const LATENCY_MS: u64 = 5;

/// Time from a message reaching an app to its user reading it, when the
/// path reads at all (the simulator's reads are per workload, not per
/// step): one step gap, so a message that arrives in one step's chain is
/// read at about the time of the next step, as a path that reads at once has it.
pub const READ_DELAY_MS: u64 = STEP_GAP_MS;

/// Model properties with a simulator invariant of the same name (the
/// others — group signatures, key reuse, healing, the ghost — are judged
/// by the model alone).
pub const SIM_INVARIANTS: [Check; 8] = [
    Check::ExactlyOnce,
    Check::AtLeastOnce,
    Check::StatusMonotone,
    Check::StatusTruthful,
    Check::NoPlaintext,
    Check::PrekeyOnce,
    Check::ForwardSecrecy,
    Check::RemovedMemberCannotRead,
];

/// Why a counterexample cannot be written as a scenario file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExportError {
    /// The simulator judges no invariant of this name.
    #[error("the simulator has no invariant {property:?}; scenario files can replay: {known}")]
    NoSimulatorInvariant {
        /// The model property.
        property: &'static str,
        /// The properties that can be replayed.
        known: String,
    },
    /// A step of the path has no scenario-file equivalent.
    #[error("step {step} ({what}) has no scenario-file equivalent")]
    UnsupportedStep {
        /// 1-based step number.
        step: usize,
        /// The step in words.
        what: String,
    },
    /// The model's warm-up (its fixed prefix: registration, prekey uploads,
    /// sessions, a reconnect) already breaks the property: there is no path
    /// to replay, and the warm-up is the model's, not a scenario's.
    #[error("the model's warm-up already breaks {property} ({detail}); there is no explored path to replay")]
    BrokenInWarmUp {
        /// The property.
        property: &'static str,
        /// The warm-up's first violation of it.
        detail: String,
    },
    /// A bug switch of the configuration has no scenario-file equivalent.
    #[error("the bug switch {bug} cannot be set in a scenario file")]
    UnsupportedBug {
        /// The switch.
        bug: String,
    },
}

struct Burst {
    at: u64,
    from: &'static str,
    to: Option<&'static str>,
    group: Option<usize>,
    why: String,
}

struct Group {
    at: u64,
    admin: &'static str,
    members: Vec<&'static str>,
    removals: Vec<(u64, &'static str)>,
}

/// What a frame rule does to the frames it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Effect {
    Drop,
    Duplicate,
    /// Hold them back this long, so a later frame overtakes them.
    Delay(u64),
}

struct FrameRule {
    at: u64,
    kind: &'static str,
    dir: Dir,
    user: &'static str,
    effect: Effect,
    why: String,
}

#[derive(Default)]
struct Timeline {
    steps: Vec<(u64, String)>,
    bursts: Vec<Burst>,
    groups: Vec<Group>,
    offline: Vec<(&'static str, u64, Option<u64>)>,
    rules: Vec<FrameRule>,
    crashes: Vec<(u64, Option<&'static str>, String)>,
    compromises: Vec<(u64, &'static str, String)>,
    reads: bool,
    not_reproduced: Vec<String>,
    /// When the path's first step is scheduled.
    start: u64,
    end: u64,
}

/// Writes the path `actions` (from the model's initial state), a
/// counterexample to `check`, as a scenario file (TOML text).
pub fn write_scenario(model: &MessagingModel, check: Check, actions: &[Action]) -> Result<String, ExportError> {
    if !SIM_INVARIANTS.contains(&check) {
        let known: Vec<&str> = SIM_INVARIANTS.iter().map(|c| c.name()).collect();
        return Err(ExportError::NoSimulatorInvariant { property: check.name(), known: known.join(", ") });
    }
    if !model.holds(check, model.initial_state()) {
        let prefix = format!("VIOLATION {}: ", check.name());
        let detail = model.warm_up_violations().iter().find_map(|l| l.strip_prefix(prefix.as_str())).unwrap_or("");
        return Err(ExportError::BrokenInWarmUp { property: check.name(), detail: detail.to_string() });
    }
    let bugs = bug_lines(model)?;
    let tl = timeline(model, actions)?;
    Ok(render(model, check, &tl, &bugs))
}

/// Replays `actions` through the model and schedules what the simulator needs.
fn timeline(model: &MessagingModel, actions: &[Action]) -> Result<Timeline, ExportError> {
    let cfg = model.config();
    let setup = model.setup();
    let who = |slot: u8| name(setup.account(usize::from(slot)));
    let start = WARM_UP_AT_MS + WARM_UP_GAP_MS * (cfg.warm_up.len() as u64 + 1);
    let mut s: MState = model.initial_state().clone();
    let t0 = s.now;
    let rel = |st: &MState| st.now.saturating_sub(t0);
    let mut tl = Timeline { start, end: start, ..Timeline::default() };
    // Simulated time of the last stimulus or timer, and how far simulated
    // time runs ahead of `start` + model time (each stimulus may add a gap).
    let mut t_prev = start.saturating_sub(STEP_GAP_MS);
    let mut drift = 0u64;
    // Per frame in flight, the simulated time its chain of frames started.
    let mut origins: BTreeMap<Chan, VecDeque<u64>> =
        s.net.iter().map(|(c, q)| (*c, q.iter().map(|_| start).collect())).collect();
    // Per client slot (and the server), the drift when its timer was set:
    // the simulator's timer fires that much after the model's deadline.
    let mut client_arm = vec![0u64; s.clients.len()];
    let mut server_arm = 0u64;
    let mut offline_since: Vec<Option<u64>> = vec![None; s.clients.len()];
    for (k, action) in actions.iter().enumerate() {
        let step = k + 1;
        let headline = describe_step(model, &s, action);
        let m = rel(&s);
        let mut stimulus = || {
            let t = (t_prev + STEP_GAP_MS).max(start + m + drift);
            drift = t - start - m;
            t_prev = t;
            t
        };
        let at = match action {
            Action::Deliver(c, i) | Action::Duplicate(c, i) | Action::Drop(c, i) => {
                origins.get(c).and_then(|q| q.get(*i)).copied().unwrap_or(t_prev)
            }
            Action::ServerTimeout => {
                let deadline = s.server.server().poll_timeout().map_or(m, |t| t.saturating_sub(t0)).max(m);
                let t = start + deadline + server_arm;
                t_prev = t_prev.max(t);
                drift = t_prev.saturating_sub(start + deadline);
                t
            }
            Action::ClientTimeout(i) => {
                let slot = usize::from(*i);
                let deadline = s.clients.get(slot).and_then(|c| c.timeout()).map_or(m, |t| t.saturating_sub(t0)).max(m);
                let t = start + deadline + client_arm.get(slot).copied().unwrap_or(0);
                t_prev = t_prev.max(t);
                drift = t_prev.saturating_sub(start + deadline);
                t
            }
            _ => stimulus(),
        };
        tl.steps.push((at, headline.clone()));
        if let Action::Deliver(c, i) | Action::Duplicate(c, i) = action {
            overtake(&mut tl, &s, &origins, (*c, *i), who(c.client), &format!("step {step}: {headline}"));
        }
        tl.end = tl.end.max(at);
        let why = format!("step {step}: {headline}");
        match action {
            Action::App(i) => {
                let pos = s.script.get(usize::from(*i)).copied().map_or(usize::MAX, usize::from);
                match cfg.scripts.get(usize::from(*i)).and_then(|sc| sc.get(pos)) {
                    Some(AppStep::Send { to }) => {
                        tl.bursts.push(Burst { at, from: who(*i), to: Some(name(*to)), group: None, why });
                    }
                    Some(AppStep::SendGroup { group }) => {
                        tl.bursts.push(Burst { at, from: who(*i), to: None, group: Some(*group), why });
                    }
                    Some(AppStep::CreateGroup { members }) => tl.groups.push(Group {
                        at,
                        admin: who(*i),
                        members: members.iter().map(|m| name(*m)).collect(),
                        removals: Vec::new(),
                    }),
                    Some(AppStep::RemoveMember { group, member }) => match tl.groups.get_mut(*group) {
                        Some(g) => g.removals.push((at, name(*member))),
                        None => tl.not_reproduced.push(format!("{why} (the group was not created on the path)")),
                    },
                    None => {}
                }
            }
            Action::Read(..) => {
                tl.reads = true;
                tl.not_reproduced.push(format!(
                    "{why}: the simulator's users read every message {READ_DELAY_MS}ms after it arrives"
                ));
            }
            Action::Connect(i) => {
                if let Some(since) = offline_since.get_mut(usize::from(*i)).and_then(Option::take) {
                    tl.offline.push((who(*i), since, Some(at)));
                }
            }
            Action::Disconnect(i) => {
                if let Some(o) = offline_since.get_mut(usize::from(*i)) {
                    *o = Some(at);
                }
            }
            Action::CrashClient(i) => {
                tl.crashes.push((at, Some(who(*i)), why));
                if let Some(o) = offline_since.get_mut(usize::from(*i)) {
                    *o = Some(at);
                }
            }
            Action::CrashServer => {
                tl.crashes.push((at, None, why));
                for (i, c) in s.clients.iter().enumerate().take(cfg.clients) {
                    if c.is_connected() {
                        if let Some(o) = offline_since.get_mut(i) {
                            *o = Some(at);
                        }
                    }
                }
            }
            Action::Steal(i) => tl.compromises.push((at, who(*i), why)),
            Action::Drop(c, i) | Action::Duplicate(c, i) => {
                let kind = s.net.get(c).and_then(|q| q.get(*i)).and_then(|f| frame_kind(c.dir, f));
                let effect = if matches!(action, Action::Drop(..)) { Effect::Drop } else { Effect::Duplicate };
                match kind {
                    Some(kind) => {
                        let user = who(c.client);
                        let at = at.saturating_sub(1);
                        tl.rules.push(FrameRule { at, kind, dir: c.dir, user, effect, why: why.clone() });
                    }
                    None => tl.not_reproduced.push(format!("{why} (the frame could not be decoded)")),
                }
            }
            Action::Deliver(..) => {}
            Action::RestoreBackup | Action::InjectGhost => {
                return Err(ExportError::UnsupportedStep { step, what: headline });
            }
            Action::ServerTimeout | Action::ClientTimeout(_) => {}
        }
        let next = model.successor(&s, action);
        if let Action::Deliver(c, i) | Action::Drop(c, i) = action {
            if let Some(q) = origins.get_mut(c) {
                q.remove(*i);
            }
        }
        origins.retain(|c, _| next.net.contains_key(c));
        for (c, q) in &next.net {
            let o = origins.entry(*c).or_default();
            o.truncate(q.len());
            while o.len() < q.len() {
                o.push_back(at);
            }
        }
        let arm = at.saturating_sub(start + rel(&next));
        for (i, (a, b)) in s.clients.iter().zip(next.clients.iter()).enumerate() {
            if a.timeout() != b.timeout() {
                if let Some(x) = client_arm.get_mut(i) {
                    *x = arm;
                }
            }
        }
        if s.server.server().poll_timeout() != next.server.server().poll_timeout() {
            server_arm = arm;
        }
        s = next;
    }
    for (i, since) in offline_since.iter().enumerate() {
        if let Some(since) = since {
            tl.offline.push((name(setup.account(i)), *since, None));
        }
    }
    tl.end = tl.end.max(t_prev) + 2 * STEP_GAP_MS;
    Ok(tl)
}

/// A frame that overtakes earlier ones on its connection (a reordering
/// network): each earlier frame whose chain started before this one's is
/// held back by a delay rule until after it; one that started in the same
/// chain cannot be told apart by a rule, and is listed as not reproduced.
fn overtake(
    tl: &mut Timeline,
    s: &MState,
    origins: &BTreeMap<Chan, VecDeque<u64>>,
    (c, i): (Chan, usize),
    user: &'static str,
    why: &str,
) {
    let (Some(q), Some(o)) = (s.net.get(&c), origins.get(&c)) else { return };
    let Some(&mine) = o.get(i) else { return };
    for j in 0..i {
        let (Some(frame), Some(&theirs)) = (q.get(j), o.get(j)) else { continue };
        let kind = frame_kind(c.dir, frame);
        match kind {
            Some(kind) if theirs < mine => {
                let at = theirs.saturating_sub(1);
                let effect = Effect::Delay(mine - theirs + STEP_GAP_MS);
                let same = |r: &FrameRule| r.at == at && r.kind == kind && r.dir == c.dir && r.user == user;
                if !tl.rules.iter().any(same) {
                    tl.rules.push(FrameRule { at, kind, dir: c.dir, user, effect, why: format!("{why} (held back)") });
                }
            }
            _ => tl.not_reproduced.push(format!("{why}: the overtaken frame started in the same chain")),
        }
    }
}

/// The `[bugs]` lines for the configuration's switches.
fn bug_lines(model: &MessagingModel) -> Result<Vec<String>, ExportError> {
    let cfg = model.config();
    let unsupported = |bug: String| Err(ExportError::UnsupportedBug { bug });
    let mut out = Vec::new();
    match cfg.server_bugs.mailbox {
        None => {}
        Some(MailboxBug::DeleteOnSend) => out.push("mailbox = \"delete-on-send\"".to_string()),
        Some(MailboxBug::EnqueueNotIdempotent) => out.push("mailbox = \"enqueue-not-idempotent\"".to_string()),
        Some(MailboxBug::IgnoreAck) => out.push("mailbox = \"ignore-ack\"".to_string()),
        Some(b) => return unsupported(format!("{b:?}")),
    }
    match cfg.server_bugs.keys {
        None => {}
        Some(KeyBug::HandOutTwice) => out.push("keys = \"hand-out-twice\"".to_string()),
    }
    match cfg.server_bugs.presence {
        None => {}
        Some(PresenceBug::IgnorePrivacy) => out.push("presence = \"ignore-privacy\"".to_string()),
        Some(b) => return unsupported(format!("{b:?}")),
    }
    if cfg.server_bugs.unsigned_group_changes {
        out.push("unsigned_group_changes = true".to_string());
    }
    let named = [
        (ClientBug::DedupOff, "dedup-off"),
        (ClientBug::ReadOnDelivery, "read-on-delivery"),
        (ClientBug::NoRotationOnRemove, "no-rotation-on-remove"),
        (ClientBug::LeakPlaintext, "leak-plaintext"),
        (ClientBug::LatestReceiptWins, "latest-receipt-wins"),
    ];
    for b in [ClientBug::KeepUsedMessageKeys, ClientBug::NoPresenceResubscribe] {
        if cfg.client_bugs.has(b) {
            return unsupported(format!("{b:?}"));
        }
    }
    let client: Vec<String> =
        named.iter().filter(|(b, _)| cfg.client_bugs.has(*b)).map(|(_, n)| format!("\"{n}\"")).collect();
    if !client.is_empty() {
        out.push(format!("client = [{}]", client.join(", ")));
    }
    Ok(out)
}

fn ms(v: u64) -> String {
    format!("\"{v}ms\"")
}

/// A TOML basic string.
fn quoted(text: &str) -> String {
    let mut out = String::from("\"");
    for ch in text.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push(' '),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A scenario name: `a-z 0-9 - _`, at most 64 characters.
fn scenario_name(config: &str, check: Check) -> String {
    let raw = format!("model-{config}-{}", check.name());
    let clean: String = raw
        .chars()
        .map(|c| c.to_ascii_lowercase())
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '-' })
        .take(64)
        .collect();
    clean
}

fn render(model: &MessagingModel, check: Check, tl: &Timeline, bugs: &[String]) -> String {
    let cfg = model.config();
    let timing = cfg.timing;
    let bug_names = if bugs.is_empty() { "no bug switch".to_string() } else { bugs.join(", ") };
    let mut o = String::new();
    let _ = writeln!(o, "# Written by `bluetick check --write-scenario` from a model-checking counterexample:");
    let _ = writeln!(o, "# {} fails in the model configuration `{}` ({bug_names}).", check.name(), cfg.name);
    let _ = writeln!(o, "# `bluetick run` on this file must fail on {} (exit status 1).", check.name());
    let _ = writeln!(o, "#\n# The path, each step at the simulated time it is scheduled or expected at:");
    for (k, (at, line)) in tl.steps.iter().enumerate() {
        let _ = writeln!(o, "# {:>3}. [{at}ms] {line}", k + 1);
    }
    if !tl.not_reproduced.is_empty() {
        let _ = writeln!(o, "#\n# Not reproduced step by step:");
        for n in &tl.not_reproduced {
            let _ = writeln!(o, "# - {n}");
        }
    }
    o.push_str("\n[scenario]\n");
    let _ = writeln!(o, "name = {}", quoted(&scenario_name(&cfg.name, check)));
    let description =
        format!("Replays a model-checking counterexample: {} fails in {} ({bug_names}).", check.name(), cfg.name);
    let _ = writeln!(o, "description = {}", quoted(&description));
    if cfg.suite != CipherSuite::default() {
        let _ = writeln!(o, "suite = {}", quoted(cfg.suite.name()));
    }
    let _ = writeln!(o, "duration = {}\nseed = 1\n", ms(tl.end));
    let users: Vec<String> = (0..cfg.clients).map(|i| quoted(name(i))).collect();
    let _ = writeln!(o, "[users]\nnames = [{}]\n", users.join(", "));
    if tl.reads {
        let _ = writeln!(o, "[workload]\nread_delay = {}\n", ms(READ_DELAY_MS));
    }
    for (j, (from, to)) in cfg.warm_up.iter().enumerate() {
        let _ = writeln!(o, "# warm-up: the model starts with a session in each direction");
        let _ = writeln!(o, "[[workload.bursts]]\nat = {}", ms(WARM_UP_AT_MS + WARM_UP_GAP_MS * j as u64));
        let _ = writeln!(o, "from = {}\nto = {}\n", quoted(name(*from)), quoted(name(*to)));
    }
    // The model's warm-up ends with every device reconnecting (see
    // `Exec::initial`); a reconnect redoes some of a client's setup (its
    // check of its own uploaded keys), so the replay does it too.
    let everyone: Vec<String> = (0..cfg.clients).map(|i| quoted(name(i))).collect();
    let _ = writeln!(o, "# end of the warm-up: every device reconnects, as in the model");
    let back = tl.start.saturating_sub(STEP_GAP_MS);
    let _ = writeln!(o, "[[workload.offline]]\nusers = [{}]", everyone.join(", "));
    let _ = writeln!(o, "at = {}\nuntil = {}\n", ms(back.saturating_sub(STEP_GAP_MS)), ms(back));
    for b in &tl.bursts {
        let _ = writeln!(o, "# {}\n[[workload.bursts]]\nat = {}\nfrom = {}", b.why, ms(b.at), quoted(b.from));
        if let Some(to) = b.to {
            let _ = writeln!(o, "to = {}", quoted(to));
        }
        if let Some(g) = b.group {
            let _ = writeln!(o, "group = \"g{g}\"");
        }
        o.push('\n');
    }
    for (user, at, until) in &tl.offline {
        let _ = writeln!(o, "[[workload.offline]]\nusers = [{}]\nat = {}", quoted(user), ms(*at));
        if let Some(u) = until {
            let _ = writeln!(o, "until = {}", ms(*u));
        }
        o.push('\n');
    }
    for (n, g) in tl.groups.iter().enumerate() {
        let members: Vec<String> = g.members.iter().map(|m| quoted(m)).collect();
        let _ =
            writeln!(o, "[[groups]]\nname = \"g{n}\"\nadmin = {}\nmembers = [{}]", quoted(g.admin), members.join(", "));
        let _ = writeln!(o, "at = {}\n", ms(g.at));
        for (at, member) in &g.removals {
            let _ = writeln!(o, "[[groups.changes]]\nat = {}\nremove = [{}]\n", ms(*at), quoted(member));
        }
    }
    let _ = writeln!(o, "[network]\nlatency = {}\n", ms(LATENCY_MS));
    let _ = writeln!(o, "[server]\nack_timeout = {}", ms(timing.ack_timeout_ms));
    let _ = writeln!(o, "ttl_text = {}\nttl_media = {}\n", ms(timing.ttl_ms), ms(timing.ttl_ms));
    let _ = writeln!(o, "[clients]\nresend_after = {}\n", ms(timing.resend_after_ms));
    for r in &tl.rules {
        let dir = match r.dir {
            Dir::Up => "to-server",
            Dir::Down => "to-client",
        };
        let _ = writeln!(o, "# {}\n[[faults.frames]]\nat = {}\nfor = {}", r.why, ms(r.at), ms(STEP_GAP_MS));
        let _ = writeln!(o, "kind = {}\ndirection = \"{dir}\"\nusers = [{}]", quoted(r.kind), quoted(r.user));
        let _ = match r.effect {
            Effect::Drop => writeln!(o, "drop_per_mille = 1000\n"),
            Effect::Duplicate => writeln!(o, "duplicate_per_mille = 1000\n"),
            Effect::Delay(d) => writeln!(o, "delay = {}\n", ms(d)),
        };
    }
    for (at, user, why) in &tl.crashes {
        let _ = writeln!(o, "# {why}\n[[faults.crash]]\nat = {}", ms(*at));
        match user {
            Some(u) => {
                let _ = writeln!(o, "users = [{}]\n", quoted(u));
            }
            None => o.push_str("server = true\n\n"),
        }
    }
    for (at, user, why) in &tl.compromises {
        let _ = writeln!(o, "# {why}\n[[faults.compromise]]\nat = {}\nusers = [{}]\n", ms(*at), quoted(user));
    }
    if !bugs.is_empty() {
        let _ = writeln!(o, "[bugs]\n{}\n", bugs.join("\n"));
    }
    let _ = writeln!(o, "# Only the violated invariant is judged, and a fault rule that matches no");
    let _ = writeln!(o, "# frame is reported without failing the run: exit status 1 means the same failure.");
    let _ = writeln!(o, "[expect]\ninvariants = [{}]\nfaults_fire = false", quoted(check.name()));
    o
}
