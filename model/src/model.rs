//! [`MessagingModel`]: the stateright [`Model`] over [`crate::system`].
//!
//! The environment's choices in each state are the [`Action`]s: deliver,
//! duplicate or lose a frame in flight (the last two within the fault
//! budget), fire a party's timer (the clock jumps to its deadline), connect a
//! client, close a connection, crash a client or the server, let an app do
//! its next scripted command or open a conversation with unread messages,
//! and the adversary's moves. Every choice runs the real core code.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use stateright::{Model, Property};

use crate::config::{ModelConfig, NetworkMode};
use crate::properties::{Check, Flags, Kind};
use crate::system::{name, Chan, Conv, Exec, MState, Notes, Setup, SetupError, EPOCH_MS};

/// One choice of the environment, the apps or the adversary.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Action {
    /// Deliver the frame at this position of the connection's queue.
    Deliver(Chan, usize),
    /// Deliver it and keep a copy in flight (uses the duplicate budget).
    Duplicate(Chan, usize),
    /// Lose it (uses the drop budget).
    Drop(Chan, usize),
    /// The server's timer fires.
    ServerTimeout,
    /// A client's timer fires.
    ClientTimeout(u8),
    /// An offline client connects.
    Connect(u8),
    /// A client's connection closes (uses the disconnect budget).
    Disconnect(u8),
    /// A client crashes and restarts offline from its last save.
    CrashClient(u8),
    /// The server crashes and recovers from its store.
    CrashServer,
    /// A client's app performs its next scripted command.
    App(u8),
    /// A client's app opens a conversation with unread messages.
    Read(u8, Conv),
    /// The adversary copies a device's complete state.
    Steal(u8),
    /// The thief's victim is restored from the stolen state (an old backup).
    RestoreBackup,
    /// The adversary asks the server to add the ghost to the first group.
    InjectGhost,
}

/// The model of one server and a few clients running the real core code.
#[derive(Debug)]
pub struct MessagingModel {
    setup: Arc<Setup>,
    init: MState,
    /// The violations the warm-up caused (normally none).
    warm_up_violations: Vec<String>,
    /// Fingerprint of a quiesce-phase state → (fault-free steps until the
    /// phase ends, whether every acked message had arrived then). A quiesce
    /// is deterministic, so the runs from different states merge and each
    /// quiesce-phase state is stepped once.
    quiesce_memo: Mutex<BTreeMap<u64, (u32, bool)>>,
    /// Wall-clock deadline of the search, if any. stateright's own timeout
    /// only acts between work batches, which a one-thread search never
    /// reaches; past this instant every new state is outside the boundary,
    /// so the search drains at once. (Reporting only: a run that hits it is
    /// marked incomplete, and no state ever depends on the clock.)
    deadline: Option<std::time::Instant>,
    stopped: AtomicBool,
    /// The checker has finished draining after the time limit.
    drained: AtomicBool,
    /// Guards reached by any explored step (see `Exec::guards`).
    reached: Mutex<Flags>,
}

/// Quiesce-phase steps after which a run is taken to be stuck (its verdict
/// is then a failure whatever the configured bound).
const QUIESCE_STEPS_CAP: u32 = 10_000;

impl MessagingModel {
    /// Builds the model; runs the warm-up (registration, prekeys, warm-up messages) once.
    pub fn new(config: ModelConfig) -> Result<Self, SetupError> {
        let setup = Arc::new(Setup::new(config)?);
        let (init, warm_up_violations) = Exec::initial(&setup);
        Ok(MessagingModel {
            setup,
            init,
            warm_up_violations,
            quiesce_memo: Mutex::new(BTreeMap::new()),
            deadline: None,
            stopped: AtomicBool::new(false),
            drained: AtomicBool::new(false),
            reached: Mutex::new(Flags::default()),
        })
    }

    /// Stops exploring new states `after` from now.
    // Reading the clock bounds the search's wall time; model states never see it.
    #[allow(clippy::disallowed_methods)]
    pub fn with_time_limit(mut self, after: std::time::Duration) -> Self {
        self.deadline = std::time::Instant::now().checked_add(after);
        self
    }

    /// Whether some explored step reached the guard `check`.
    pub fn reached(&self, check: Check) -> bool {
        self.reached.lock().is_ok_and(|f| f.has(check))
    }

    /// Whether the time limit has passed (and marks the search stopped).
    // The clock only cuts a timed search short (see `deadline`).
    #[allow(clippy::disallowed_methods)]
    fn past_deadline(&self) -> bool {
        let Some(d) = self.deadline else { return false };
        if self.stopped.load(Ordering::Relaxed) || std::time::Instant::now() >= d {
            self.stopped.store(true, Ordering::Relaxed);
            return true;
        }
        false
    }

    /// Past the time limit, until [`MessagingModel::end_drain`]: the
    /// checker is emptying its queue, and states are neither stepped nor
    /// judged.
    fn draining(&self) -> bool {
        self.stopped.load(Ordering::Relaxed) && !self.drained.load(Ordering::Relaxed)
    }

    /// The checker has stopped: from now on steps run again (rebuilding a
    /// counterexample's path replays them, and must see the same states).
    pub fn end_drain(&self) {
        self.drained.store(true, Ordering::Relaxed);
    }

    /// Whether the time limit cut the search short.
    pub fn stopped_early(&self) -> bool {
        self.stopped.load(Ordering::Relaxed)
    }

    /// The configuration.
    pub fn config(&self) -> &ModelConfig {
        &self.setup.config
    }

    /// The shared setup.
    pub fn setup(&self) -> &Setup {
        &self.setup
    }

    /// The state exploration starts from.
    pub fn initial_state(&self) -> &MState {
        &self.init
    }

    /// The violations the warm-up caused before exploring began (normally
    /// none: a server bug switch can cause some).
    pub fn warm_up_violations(&self) -> &[String] {
        &self.warm_up_violations
    }

    /// Runs `action` from `state` and says what it caused (the action itself
    /// is named by [`crate::trace::describe_step`]).
    pub fn explain(&self, state: &MState, action: &Action) -> Vec<String> {
        let mut ex = Exec::new(&self.setup, state, Notes::recording());
        perform(&mut ex, action);
        ex.notes.into_consequences()
    }

    /// The quiesce phase from `state`, step by step (`true` marks a step,
    /// `false` what it caused), and the at-least-once failure it ends in, if any.
    pub fn explain_quiesce(&self, state: &MState) -> (Vec<(bool, String)>, Option<String>) {
        let steps = self.setup.config.quiesce_steps.unwrap_or(0);
        let mut ex = Exec::new(&self.setup, state, Notes::recording());
        let verdict = ex.quiesce_and_check(steps as usize);
        (ex.notes.into_tagged(), verdict)
    }

    /// The state `action` leads to from `state` (what the checker explores).
    pub fn successor(&self, state: &MState, action: &Action) -> MState {
        let mut ex = Exec::new(&self.setup, state, Notes::off());
        perform(&mut ex, action);
        ex.finish()
    }

    /// Whether at-least-once holds from `state`: with faults stopped and
    /// everyone connected, every acked message arrives within the quiesce bound.
    pub fn at_least_once_holds(&self, state: &MState) -> bool {
        let Some(bound) = self.setup.config.quiesce_steps else { return true };
        // A state met after the time limit is not judged (the run reports
        // itself incomplete): each verdict runs a whole quiesce phase.
        if self.draining() {
            return true;
        }
        let mut ex = Exec::new(&self.setup, state, Notes::off());
        ex.start_quiesce();
        let mut path: Vec<u64> = Vec::new();
        // (steps from the state after `path` to the end, verdict there)
        let (tail, ok) = loop {
            let fp = ex.fingerprint();
            let known = self.quiesce_memo.lock().ok().and_then(|m| m.get(&fp).copied());
            if let Some(v) = known {
                break v;
            }
            path.push(fp);
            if ex.quiesced() {
                path.pop();
                let v = (0, ex.undelivered(bound as usize).is_none());
                if let Ok(mut m) = self.quiesce_memo.lock() {
                    m.insert(fp, v);
                }
                break v;
            }
            if path.len() as u32 >= QUIESCE_STEPS_CAP || !ex.step_quiet() {
                break (QUIESCE_STEPS_CAP, false);
            }
        };
        let len = path.len() as u32;
        if let Ok(mut m) = self.quiesce_memo.lock() {
            for (k, fp) in path.iter().enumerate() {
                let d = tail.saturating_add(len - k as u32).min(QUIESCE_STEPS_CAP);
                m.insert(*fp, (d, ok));
            }
        }
        ok && tail.saturating_add(len) <= bound
    }

    /// A one-line description of an action.
    pub fn describe(&self, action: &Action) -> String {
        let who = |i: &u8| name(self.setup.account(usize::from(*i)));
        match action {
            Action::Deliver(c, i) => format!("deliver frame {i} on {}", chan_name(c)),
            Action::Duplicate(c, i) => format!("deliver frame {i} on {} and keep a duplicate in flight", chan_name(c)),
            Action::Drop(c, i) => format!("lose frame {i} on {}", chan_name(c)),
            Action::ServerTimeout => "server timer".into(),
            Action::ClientTimeout(i) => format!("{} timer", who(i)),
            Action::Connect(i) => format!("{} connects", who(i)),
            Action::Disconnect(i) => format!("{}'s connection closes", who(i)),
            Action::CrashClient(i) => format!("{} crashes", who(i)),
            Action::CrashServer => "server crashes".into(),
            Action::App(i) => format!("{}'s app: next scripted command", who(i)),
            Action::Read(i, c) => format!("{}'s app opens {c:?}", who(i)),
            Action::Steal(i) => format!("adversary steals {}'s state", who(i)),
            Action::RestoreBackup => "victim restored from old backup".into(),
            Action::InjectGhost => "adversary injects unsigned group change".into(),
        }
    }

    fn property(check: Check) -> Property<Self> {
        let n = check.name();
        match check {
            Check::ExactlyOnce => Property::always(n, |_, s: &MState| !s.hist.flags.has(Check::ExactlyOnce)),
            Check::StatusMonotone => Property::always(n, |_, s: &MState| !s.hist.flags.has(Check::StatusMonotone)),
            Check::StatusTruthful => Property::always(n, |_, s: &MState| !s.hist.flags.has(Check::StatusTruthful)),
            Check::NoPlaintext => Property::always(n, |_, s: &MState| !s.hist.flags.has(Check::NoPlaintext)),
            Check::PrekeyOnce => Property::always(n, |_, s: &MState| !s.hist.flags.has(Check::PrekeyOnce)),
            Check::ForwardSecrecy => Property::always(n, |_, s: &MState| !s.hist.flags.has(Check::ForwardSecrecy)),
            Check::RemovedMemberCannotRead => {
                Property::always(n, |_, s: &MState| !s.hist.flags.has(Check::RemovedMemberCannotRead))
            }
            Check::GroupChangesSigned => {
                Property::always(n, |_, s: &MState| !s.hist.flags.has(Check::GroupChangesSigned))
            }
            Check::GhostCannotRead => Property::always(n, |_, s: &MState| !s.hist.flags.has(Check::GhostCannotRead)),
            Check::NoKeyReuse => Property::always(n, |_, s: &MState| !s.hist.flags.has(Check::NoKeyReuse)),
            Check::Healing => Property::always(n, |_, s: &MState| !s.hist.flags.has(Check::Healing)),
            Check::ModelSound => Property::always(n, |_, s: &MState| !s.hist.flags.has(Check::ModelSound)),
            Check::AtLeastOnce => Property::always(n, |m: &MessagingModel, s: &MState| m.at_least_once_holds(s)),
            Check::Redelivery => Property::sometimes(n, |m: &MessagingModel, _: &MState| m.reached(Check::Redelivery)),
            Check::Dedup => Property::sometimes(n, |m: &MessagingModel, _: &MState| m.reached(Check::Dedup)),
            Check::TtlExpiry => Property::sometimes(n, |m: &MessagingModel, _: &MState| m.reached(Check::TtlExpiry)),
            Check::DhStep => Property::sometimes(n, |m: &MessagingModel, _: &MState| m.reached(Check::DhStep)),
            Check::Theft => Property::sometimes(n, |m: &MessagingModel, _: &MState| m.reached(Check::Theft)),
        }
    }

    /// Whether `state` satisfies the `always` property `check` (guards:
    /// whether the search has reached them anywhere).
    pub fn holds(&self, check: Check, state: &MState) -> bool {
        match check.kind() {
            Kind::Sometimes => self.reached(check),
            Kind::Always if check == Check::AtLeastOnce => self.at_least_once_holds(state),
            Kind::Always => !state.hist.flags.has(check),
        }
    }

    /// The checks this model evaluates: its configuration's, plus model-sound.
    pub fn checks(&self) -> Vec<Check> {
        let mut out: Vec<Check> = self.setup.config.checks.iter().filter_map(|n| Check::from_name(n)).collect();
        if !out.contains(&Check::ModelSound) {
            out.push(Check::ModelSound);
        }
        out
    }
}

fn chan_name(c: &Chan) -> String {
    let who = name(usize::from(c.client));
    match c.dir {
        crate::system::Dir::Up => format!("{who}→server (conn {})", c.conn),
        crate::system::Dir::Down => format!("server→{who} (conn {})", c.conn),
    }
}

/// Applies one action to a state being stepped.
fn perform(ex: &mut Exec<'_>, action: &Action) {
    match action {
        Action::Deliver(c, i) => ex.deliver(*c, *i, false),
        Action::Duplicate(c, i) => {
            ex.st.budget.duplicates = ex.st.budget.duplicates.saturating_sub(1);
            ex.deliver(*c, *i, true);
        }
        Action::Drop(c, i) => {
            ex.st.budget.drops = ex.st.budget.drops.saturating_sub(1);
            ex.drop_frame(*c, *i);
        }
        Action::ServerTimeout => ex.server_timeout(),
        Action::ClientTimeout(i) => ex.client_timeout(usize::from(*i)),
        Action::Connect(i) => ex.connect(usize::from(*i)),
        Action::Disconnect(i) => {
            ex.st.budget.disconnects = ex.st.budget.disconnects.saturating_sub(1);
            ex.disconnect(usize::from(*i), true);
        }
        Action::CrashClient(i) => {
            ex.st.budget.client_crashes = ex.st.budget.client_crashes.saturating_sub(1);
            ex.crash_client(usize::from(*i));
        }
        Action::CrashServer => {
            ex.st.budget.server_crashes = ex.st.budget.server_crashes.saturating_sub(1);
            ex.crash_server();
        }
        Action::App(i) => ex.app_step(usize::from(*i)),
        Action::Read(i, c) => ex.read(usize::from(*i), *c),
        Action::Steal(i) => ex.steal(usize::from(*i)),
        Action::RestoreBackup => ex.restore_backup(),
        Action::InjectGhost => ex.inject_ghost(),
    }
}

impl Model for MessagingModel {
    type State = MState;
    type Action = Action;

    fn init_states(&self) -> Vec<MState> {
        vec![self.init.clone()]
    }

    fn actions(&self, s: &MState, actions: &mut Vec<Action>) {
        let cfg = &self.setup.config;
        let horizon = EPOCH_MS + cfg.timing.horizon_ms;
        for (chan, q) in &s.net {
            let indices = match cfg.network {
                NetworkMode::Fifo => 0..q.len().min(1),
                NetworkMode::Reorder => 0..q.len(),
            };
            for i in indices {
                // Identical frames earlier in the queue give identical successors.
                if q.iter().take(i).any(|f| Some(f) == q.get(i)) {
                    continue;
                }
                actions.push(Action::Deliver(*chan, i));
                if s.budget.duplicates > 0 {
                    actions.push(Action::Duplicate(*chan, i));
                }
                if s.budget.drops > 0 {
                    actions.push(Action::Drop(*chan, i));
                }
            }
        }
        let timers = cfg.spurious_timeouts || s.net.is_empty();
        let moves = !cfg.moves_on_quiet_network || s.net.is_empty();
        if timers && s.server.server().poll_timeout().is_some_and(|t| t <= horizon) {
            actions.push(Action::ServerTimeout);
        }
        for i in 0..cfg.clients {
            let Some(slot) = s.clients.get(i) else { continue };
            let i8 = i as u8;
            if timers && slot_timeout(slot).is_some_and(|t| t <= horizon) {
                actions.push(Action::ClientTimeout(i8));
            }
            if slot.is_connected() {
                if s.budget.disconnects > 0 {
                    actions.push(Action::Disconnect(i8));
                }
                if s.budget.client_crashes > 0 {
                    actions.push(Action::CrashClient(i8));
                }
            } else {
                actions.push(Action::Connect(i8));
            }
            let pos = s.script.get(i).copied().map_or(usize::MAX, usize::from);
            if moves && cfg.scripts.get(i).is_some_and(|sc| pos < sc.len()) {
                actions.push(Action::App(i8));
            }
            if moves && cfg.reads {
                let mut convs: Vec<Conv> =
                    s.hist.unread.iter().filter(|(r, _, _)| *r == i8).map(|(_, c, _)| *c).collect();
                convs.dedup();
                for c in convs {
                    actions.push(Action::Read(i8, c));
                }
            }
            if moves && cfg.adversary.steal && s.thief.is_none() {
                actions.push(Action::Steal(i8));
            }
        }
        if s.budget.server_crashes > 0 {
            actions.push(Action::CrashServer);
        }
        if moves && s.thief.is_some() && s.restores_left > 0 {
            actions.push(Action::RestoreBackup);
        }
        if moves && cfg.adversary.inject_ghost && !s.ghost_injected {
            let admin_online = s
                .hist
                .groups
                .first()
                .and_then(|(_, a)| s.clients.get(usize::from(*a)))
                .is_some_and(|c| c.is_connected());
            if admin_online {
                actions.push(Action::InjectGhost);
            }
        }
    }

    fn next_state(&self, s: &MState, action: Action) -> Option<MState> {
        // Past the time limit the queued states drain without successors:
        // stepping each (a real client and server step) made a 60-s run take
        // more than three times that. The run is reported incomplete.
        if self.draining() {
            return None;
        }
        let mut ex = Exec::new(&self.setup, s, Notes::off());
        perform(&mut ex, &action);
        if ex.guards != Flags::default() {
            if let Ok(mut r) = self.reached.lock() {
                for c in Check::ALL {
                    if ex.guards.has(c) {
                        r.set(c);
                    }
                }
            }
        }
        Some(ex.finish())
    }

    fn format_action(&self, action: &Action) -> String {
        self.describe(action)
    }

    fn properties(&self) -> Vec<Property<Self>> {
        self.checks().into_iter().map(Self::property).collect()
    }

    fn within_boundary(&self, s: &MState) -> bool {
        if self.past_deadline() {
            return false;
        }
        let cfg = &self.setup.config;
        s.now <= EPOCH_MS + cfg.timing.horizon_ms && s.net.values().all(|q| q.len() <= cfg.channel_frames_max)
    }
}

fn slot_timeout(slot: &crate::system::ClientSlot) -> Option<u64> {
    slot.timeout()
}

/// Whether `check` is a guard (a `sometimes` property).
pub fn is_guard(check: Check) -> bool {
    check.kind() == Kind::Sometimes
}
