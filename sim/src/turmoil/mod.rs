//! The turmoil driver: the real tokio server and client drivers of
//! bluetick-net, unchanged, over turmoil's simulated TCP and clock.
//!
//! # Hosts
//! - `server`: [`run_server`] on a turmoil listener, with a [`MemoryStore`]
//!   kept *outside* the host ([`SharedStore`]). A server crash is turmoil's
//!   `bounce`: the host's runtime and everything it owned (connections,
//!   queues, the core's volatile state) are dropped, and the software starts
//!   again with [`Server::recover`](bluetick_core::server::Server::recover)
//!   on the surviving store.
//! - `farm-N`: device farms. Each runs the real client driver
//!   ([`run_client_over`](bluetick_net::client::run_client_over)) of many
//!   users — never one host per user, as turmoil's cost grows with hosts
//!   (≤ [`FARMS_MAX`] farms). Users are placed on farms in order, or by an
//!   explicit [`TurmoilConfig::layout`].
//!
//! # Faults
//! - Frame faults — background loss and duplication, latency jitter
//!   ([`Faults`]) and targeted [`FrameFault`]s — are decided in our framing
//!   layer: a per-device [`FrameTap`](bluetick_net::client::FrameTap) between
//!   the client driver and its WebSocket, drawing from a per-device RNG
//!   seeded from the scenario seed (see [`faults`]). turmoil's links carry
//!   the fixed minimum latency; its own loss is never used (it breaks whole
//!   TCP streams, which have no retransmission).
//! - Partitions: a user set that covers whole farms cuts those farms off
//!   from the server in turmoil itself (`partition`/`partition_oneway`):
//!   real TCP stalls, idle timeouts and failed reconnects follow, and healing
//!   repairs the links. Users whose farm is not wholly inside the set are cut
//!   in the framing layer instead (every protocol frame of theirs in that
//!   direction is lost; WebSocket pings still pass, so the connection stays
//!   up). To get network-level partitions, give each partitioned set its own
//!   farm in the layout.
//! - Client crash: the device's task is killed (nothing runs after the
//!   kill) and it restarts from its last save, kept outside the host.
//! - Clock offset: each device reads "now" through its own [`SimClock`].
//!
//! # Time and determinism
//! turmoil's seed and epoch ([`EPOCH_MS`], the direct driver's) are pinned,
//! every `tokio::select!` in the drivers is `biased`, hosts tick in a fixed
//! order on one thread, and every other random draw comes from seeds derived
//! from [`WorldConfig::seed`] (the server and client seeds in the same order
//! as the direct driver's `World`, so the same users get the same keys and
//! message ids). The WebSocket library masks client frames with OS
//! randomness; masking changes bytes, never lengths or timing, so runs stay
//! identical. Simulated time advances in ticks of [`TICK_MS`].
//!
//! App commands reach a farm through a channel and take effect inside the
//! simulation at its next tick; those that return a value
//! ([`Driver::send_text`], media, groups, presence) step the simulation
//! until the device answers, usually one tick. What the apps see is recorded
//! by observers in the hosts and fed to the oracle's [`History`] after every
//! tick.
//!
//! # Oracle parity with the direct driver
//! The counters and checks the `World` computes from its view of every frame
//! are computed here from the observers' records: redeliveries and the
//! first-hand-out order (`per-conversation-order`) from what the server
//! hands out per user; duplicates the clients absorb from the envelopes that
//! reach each core; delivery latencies from `app` trace lines in the
//! `World`'s format; presence (`presence-privacy`, `presence-throttle`,
//! `presence-converges`) against the server's own view of who is online and
//! which setting reached it; forward secrecy by opening, with a copy of a
//! device's last save, every envelope it had received and decrypted. Not
//! computed here: `retention`, `removed-member-cannot-read`, and the scan of
//! the server's memory for plaintext (its writes to the store are scanned).

mod farm;
pub mod faults;
pub mod net;
mod record;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use bluetick_core::client::{Client, ClientConfig, SavedClient};
use bluetick_core::ids::{DeviceAddress, DeviceId, GroupId, MessageId, UserId};
use bluetick_core::server::presence::PRESENCE_PUSH_INTERVAL_MS;
use bluetick_core::server::{routing_row, RoutingRow, ServerConfig};
use bluetick_core::store::{MemoryStore, Table};
use bluetick_core::wire::{Envelope, LastSeen, Visibility};
use bluetick_core::world::oracle::{names as invariant, History, SentMessage, Violation};
use bluetick_core::world::{Faults, WorldConfig, EPOCH_MS};
use bluetick_net::server::{run_server, ServerOptions};
use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};
use tokio::sync::{mpsc, oneshot};

use crate::driver::{Direction, Driver, DriverConfig, FrameFault, TraceEvent, Unsupported};
use farm::{Device, DeviceTiming, FarmCommand, SaveSlot};
use faults::{DeviceTap, FaultPlan};
use net::lock;
pub use net::{sim_now_ms, SharedStore, SimClock, SimConnector, SimListener};
use record::{names, DeviceObserver, FaultAction, Log, Record, ServerWatch, SharedLog};

/// `a,b,c` for a set of users in a trace line.
fn names_of(users: &BTreeSet<UserId>) -> String {
    users.iter().map(UserId::as_str).collect::<Vec<_>>().join(",")
}

/// The server host's name.
pub const SERVER_HOST: &str = "server";

/// The port the server listens on.
pub const SERVER_PORT: u16 = 7878;

/// Simulated time per turmoil tick. One millisecond: the core's timers and
/// the latencies are whole milliseconds, so nothing finer is observable.
pub const TICK_MS: u64 = 1;

/// Farm hosts at most: with the server, at most 30 hosts, as every tick
/// ticks every host and scans every link (about 30 µs per host per tick).
pub const FARMS_MAX: usize = 29;

/// Farms used when the config does not say: enough to place partitioned sets
/// apart, few enough to keep ticks cheap.
pub const FARMS_DEFAULT: usize = 4;

/// Commands waiting for one farm. A scenario issues a handful per step; when
/// full, the command is refused (and reported as not done).
pub const FARM_COMMAND_QUEUE: usize = 4_096;

/// Ticks a command that returns a value may take before it counts as not
/// done: longer than a write can block a device (the drivers' 10 s write
/// timeout) plus a connect timeout.
pub const REPLY_TICKS_MAX: u64 = 25_000;

/// How often (in ticks) quiesce checks whether the system is idle: checking
/// reads the whole mailbox table, so not every tick.
pub const IDLE_CHECK_TICKS: u64 = 25;

/// Lower bound of turmoil's per-socket queue (its default): see [`tcp_capacity`].
pub const TCP_CAPACITY_MIN: usize = 64;

/// turmoil's per-socket segment queue for a run with `devices` devices.
/// turmoil *panics* ("server socket buffer full") when more connection
/// attempts wait at a listener than this, where real TCP would drop the SYN.
/// Each device has at most one attempt in flight, and an abandoned attempt
/// waits at most until the server's next accept, so twice the devices plus
/// the default cannot be reached. (The same number bounds each stream's
/// unread segments; turmoil allocates that queue lazily, so a large bound
/// costs nothing.)
pub fn tcp_capacity(devices: usize) -> usize {
    devices.saturating_mul(2).saturating_add(TCP_CAPACITY_MIN)
}

/// turmoil's run limit; the driver decides when to stop, so effectively none.
const SIM_DURATION_MAX: Duration = Duration::from_secs(100 * 365 * 24 * 3_600);

/// How the turmoil driver runs a scenario: the same [`WorldConfig`] as the
/// direct driver, plus where users live and the drivers' network timings.
#[derive(Debug, Clone)]
pub struct TurmoilConfig {
    /// Seed, users, faults, server config and bugs, client bugs, suite,
    /// resend and reconnect delays, save verification.
    pub world: WorldConfig,
    /// Farms for the users not placed by `layout`.
    pub farms: usize,
    /// Explicit farms: each inner list is one farm host's users.
    pub layout: Vec<Vec<UserId>>,
    /// Server ping interval.
    pub heartbeat_ms: u64,
    /// Silence after which either side drops a connection.
    pub idle_timeout_ms: u64,
    /// Longest reconnect delay (the shortest is `world.reconnect_after_ms`).
    pub backoff_max_ms: u64,
    /// Check every value the server writes for a sent plaintext (costs
    /// time proportional to messages × writes; turn off for benchmarks).
    pub check_plaintext: bool,
}

impl TurmoilConfig {
    /// Simulation defaults around `world`: [`FARMS_DEFAULT`] farms, pings
    /// every 5 s, connections dead after 15 s of silence, reconnects within
    /// 5 s, plaintext checks on. Shorter than production so partitions are
    /// noticed and healed within a short scenario.
    pub fn new(world: WorldConfig) -> Self {
        TurmoilConfig {
            world,
            farms: FARMS_DEFAULT,
            layout: Vec::new(),
            heartbeat_ms: 5_000,
            idle_timeout_ms: 15_000,
            backoff_max_ms: 5_000,
            check_plaintext: true,
        }
    }

    /// The runner's [`DriverConfig`] as a turmoil run with the defaults of
    /// [`TurmoilConfig::new`] (the same mapping as the direct driver's).
    pub fn from_driver(config: &DriverConfig) -> Self {
        TurmoilConfig::new(WorldConfig {
            seed: config.seed,
            users: config.users.clone(),
            faults: config.faults,
            server: config.server.clone(),
            client_bugs: config.client_bugs.clone(),
            suite: config.suite,
            client_resend_after_ms: config.resend_after_ms,
            reconnect_after_ms: config.reconnect_after_ms,
            client_bundle_fetches_per_minute: config.bundle_fetches_per_minute,
            verify_saves: false,
            trace: true,
            record_ciphertexts: false,
        })
    }
}

/// Why a [`TurmoilConfig`] cannot be run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TurmoilConfigError {
    /// More farm hosts than turmoil runs well.
    #[error("{farms} farm hosts asked for; at most {max}")]
    TooManyFarms {
        /// Farms the config needs.
        farms: usize,
        /// The limit, [`FARMS_MAX`].
        max: usize,
    },
    /// Users to place but no farm to place them on.
    #[error("{users} users but `farms` is 0 and the layout does not place them")]
    NoFarms {
        /// Users left unplaced.
        users: usize,
    },
    /// A user listed twice (in `users` or across the layout).
    #[error("user {user} is listed twice")]
    UserTwice {
        /// The user.
        user: UserId,
    },
    /// The layout names a user that is not in `users`.
    #[error("the layout places {user}, who is not one of the users")]
    UnknownUser {
        /// The user.
        user: UserId,
    },
}

/// One farm host as the driver sees it.
#[derive(Debug)]
struct Farm {
    host: String,
    users: Vec<UserId>,
    commands: mpsc::Sender<FarmCommand>,
}

/// The turmoil driver. See the module docs.
pub struct TurmoilDriver {
    sim: ::turmoil::Sim<'static>,
    farms: Vec<Farm>,
    farm_of: BTreeMap<UserId, usize>,
    clocks: BTreeMap<UserId, Arc<SimClock>>,
    plan: Arc<Mutex<FaultPlan>>,
    log: SharedLog,
    store: Arc<Mutex<MemoryStore>>,
    history: History,
    trace: Vec<TraceEvent>,
    violations: Vec<Violation>,
    /// Group messages sent so far, with their group (reads are per conversation).
    group_of: BTreeMap<MessageId, GroupId>,
    /// Users each group message was queued for, as the server's writes say,
    /// until its acceptance is written (see [`TurmoilDriver::narrow_group_recipients`]).
    queued_for: BTreeMap<MessageId, BTreeSet<UserId>>,
    /// Each group message's sender view when its core first sealed it (the
    /// first `GroupSend`; a resend carries the same ciphertext).
    sealed_for: BTreeMap<MessageId, BTreeSet<UserId>>,
    /// turmoil partitions in force: (farm, direction cut).
    net_cuts: Vec<(usize, Option<Direction>)>,
    ticks: u64,
    /// Each device's save slot (what an adversary copies).
    slots: BTreeMap<UserId, Arc<SaveSlot>>,
    /// (recipient, sender, id) → the first copy of each envelope that
    /// reached a core, when ciphertexts are kept.
    delivered: BTreeMap<(UserId, DeviceAddress, MessageId), Envelope>,
    /// Envelopes that reached a core whose app has not shown them yet: a
    /// second copy before the app shows the first is also absorbed.
    unshown: BTreeSet<(UserId, MessageId)>,
    /// Per user: highest mailbox seq handed out so far and every seq seen.
    handed_out: BTreeMap<UserId, (u64, BTreeSet<u64>)>,
    /// A client with unsent work retries after this long (presence settling).
    resend_after_ms: u64,
    /// Records applied so far: orders events within one millisecond.
    applied: u64,
    /// Per owner: the record that last applied its privacy setting.
    setting_applied: BTreeMap<UserId, u64>,
    /// Per (subscriber, user): the record of the last presence sent.
    presence_sent_at: BTreeMap<(UserId, UserId), u64>,
}

impl std::fmt::Debug for TurmoilDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TurmoilDriver")
            .field("now_ms", &self.now_ms())
            .field("farms", &self.farms)
            .field("ticks", &self.ticks)
            .finish_non_exhaustive()
    }
}

/// A group message's intended recipients once the server accepted it: the
/// sender's view when its core sealed the message (the app's view at send
/// time if no seal was seen), among those the server queued it for. The
/// sealing view replaces the app's: a member added in between was sealed
/// for, one removed in between was not and never gets the key.
fn group_recipients(
    app_view: &BTreeSet<UserId>,
    sealed_view: Option<&BTreeSet<UserId>>,
    queued: &BTreeSet<UserId>,
) -> BTreeSet<UserId> {
    sealed_view.unwrap_or(app_view).intersection(queued).cloned().collect()
}

/// Places users on farms: the layout first, the rest in order, in
/// `farms` contiguous runs.
fn place(config: &TurmoilConfig) -> Result<Vec<Vec<UserId>>, TurmoilConfigError> {
    let mut known = BTreeSet::new();
    for u in &config.world.users {
        if !known.insert(u.clone()) {
            return Err(TurmoilConfigError::UserTwice { user: u.clone() });
        }
    }
    let mut placed = BTreeSet::new();
    let mut out: Vec<Vec<UserId>> = Vec::new();
    for farm in config.layout.iter().filter(|f| !f.is_empty()) {
        for u in farm {
            if !known.contains(u) {
                return Err(TurmoilConfigError::UnknownUser { user: u.clone() });
            }
            if !placed.insert(u.clone()) {
                return Err(TurmoilConfigError::UserTwice { user: u.clone() });
            }
        }
        out.push(farm.clone());
    }
    let rest: Vec<UserId> = config.world.users.iter().filter(|u| !placed.contains(*u)).cloned().collect();
    if !rest.is_empty() {
        if config.farms == 0 {
            return Err(TurmoilConfigError::NoFarms { users: rest.len() });
        }
        let per_farm = rest.len().div_ceil(config.farms.min(rest.len()));
        out.extend(rest.chunks(per_farm).map(<[UserId]>::to_vec));
    }
    if out.len() > FARMS_MAX {
        return Err(TurmoilConfigError::TooManyFarms { farms: out.len(), max: FARMS_MAX });
    }
    Ok(out)
}

impl TurmoilDriver {
    /// Builds the simulation: the server host, the farms with every user's
    /// device (which connect and register from the first tick on).
    ///
    /// # Errors
    /// [`TurmoilConfigError`] if users cannot be placed on farms.
    pub fn new(config: TurmoilConfig) -> Result<Self, TurmoilConfigError> {
        let layout = place(&config)?;
        let world = &config.world;
        // Same order of draws as `World::new`: server, then each user.
        let mut root = ChaCha20Rng::seed_from_u64(world.seed);
        let server_seed = root.next_u64();
        let client_seeds: BTreeMap<UserId, u64> = world.users.iter().map(|u| (u.clone(), root.next_u64())).collect();
        let turmoil_seed = root.next_u64();
        let latency = Duration::from_millis(world.faults.latency_min_ms);
        let mut sim = ::turmoil::Builder::new()
            .rng_seed(turmoil_seed)
            .epoch(UNIX_EPOCH + Duration::from_millis(EPOCH_MS))
            .simulation_duration(SIM_DURATION_MAX)
            .tick_duration(Duration::from_millis(TICK_MS))
            .min_message_latency(latency)
            .max_message_latency(latency)
            .tcp_capacity(tcp_capacity(world.users.len()))
            .build();

        let log: SharedLog = Arc::new(Mutex::new(Log::default()));
        let store = Arc::new(Mutex::new(MemoryStore::new()));
        let plan = Arc::new(Mutex::new(FaultPlan::new(world.faults)));
        add_server(&mut sim, &config, server_seed, &store, &log);

        let timing = Arc::new(DeviceTiming {
            url: format!("ws://{SERVER_HOST}:{SERVER_PORT}/"),
            backoff_min: Duration::from_millis(world.reconnect_after_ms.max(1)),
            backoff_max: Duration::from_millis(config.backoff_max_ms.max(world.reconnect_after_ms).max(1)),
            idle_timeout: Duration::from_millis(config.idle_timeout_ms.max(1)),
        });
        let mut farms = Vec::new();
        let mut farm_of = BTreeMap::new();
        let mut clocks = BTreeMap::new();
        let mut slots = BTreeMap::new();
        for (index, users) in layout.into_iter().enumerate() {
            let host = format!("farm-{index}");
            let mut devices = Vec::new();
            for user in &users {
                let seed = client_seeds.get(user).copied().unwrap_or_default();
                let config = ClientConfig {
                    suite: world.suite,
                    resend_after_ms: world.client_resend_after_ms,
                    bundle_fetches_per_minute: world.client_bundle_fetches_per_minute,
                    bugs: world.client_bugs.clone(),
                    ..ClientConfig::new(user.clone(), DeviceId(1))
                };
                let clock = Arc::new(SimClock::new());
                clocks.insert(user.clone(), clock.clone());
                farm_of.insert(user.clone(), index);
                let slot = Arc::new(SaveSlot {
                    user: user.clone(),
                    config: config.clone(),
                    saved: Mutex::new(None),
                    verify: world.verify_saves,
                    log: log.clone(),
                });
                slots.insert(user.clone(), slot.clone());
                devices.push(Device {
                    user: user.clone(),
                    initial: Some(Client::new(config, seed, EPOCH_MS)),
                    seed,
                    jitter_seed: root.next_u64(),
                    slot,
                    clock,
                    tap: Arc::new(DeviceTap {
                        user: user.clone(),
                        plan: plan.clone(),
                        rng: Mutex::new(ChaCha20Rng::seed_from_u64(root.next_u64())),
                        log: log.clone(),
                    }),
                    observer: Arc::new(DeviceObserver {
                        user: user.clone(),
                        log: log.clone(),
                        record_ciphertexts: world.record_ciphertexts,
                        sealed_seen: Mutex::new(VecDeque::new()),
                    }),
                    timing: timing.clone(),
                    incarnation: 0,
                    want_online: true,
                    handle: None,
                });
            }
            let (tx, rx) = mpsc::channel(FARM_COMMAND_QUEUE);
            sim.client(host.as_str(), farm::run_farm(devices, rx));
            farms.push(Farm { host, users, commands: tx });
        }
        Ok(TurmoilDriver {
            sim,
            farms,
            farm_of,
            clocks,
            plan,
            log,
            store,
            history: History::default(),
            trace: Vec::new(),
            violations: Vec::new(),
            group_of: BTreeMap::new(),
            queued_for: BTreeMap::new(),
            sealed_for: BTreeMap::new(),
            net_cuts: Vec::new(),
            ticks: 0,
            slots,
            delivered: BTreeMap::new(),
            unshown: BTreeSet::new(),
            handed_out: BTreeMap::new(),
            resend_after_ms: world.client_resend_after_ms,
            applied: 0,
            setting_applied: BTreeMap::new(),
            presence_sent_at: BTreeMap::new(),
        })
    }

    /// turmoil ticks run so far.
    pub fn ticks(&self) -> u64 {
        self.ticks
    }

    /// Simulated hosts (server and farms).
    pub fn hosts(&self) -> usize {
        1 + self.farms.len()
    }

    /// The farm host `user` lives on.
    pub fn farm_of(&self, user: &UserId) -> Option<&str> {
        self.farm_of.get(user).and_then(|i| self.farms.get(*i)).map(|f| f.host.as_str())
    }

    /// Every violation seen so far (without the end-of-run checks).
    pub fn violations(&self) -> &[Violation] {
        &self.violations
    }

    /// A copy of the server's durable store as it is now.
    pub fn store(&self) -> MemoryStore {
        lock(&self.store).clone()
    }

    /// Entries waiting in the server's mailboxes (read from its store, which
    /// the server keeps equal to its queues).
    pub fn mailbox_entries(&self) -> u64 {
        lock(&self.store).len(Table::Mailbox) as u64
    }

    /// Runs one tick of every host, then feeds what they recorded to the oracle.
    pub fn step(&mut self) {
        if let Err(e) = self.sim.step() {
            let at_ms = self.now_ms();
            self.violations.push(Violation { invariant: "sim-host-runs", at_ms, detail: e.to_string() });
        }
        self.ticks += 1;
        self.drain();
    }

    /// A trace line at the current time (absolute ms, as `World`'s trace).
    fn note(&mut self, event: &str, detail: String) {
        let at_ms = self.now_ms();
        self.trace.push(TraceEvent { at_ms, event: event.to_string(), detail });
    }

    fn drain(&mut self) {
        let (records, lost) = lock(&self.log).take();
        if lost > 0 {
            let at_ms = self.now_ms();
            self.violations.push(Violation {
                invariant: "sim-log-complete",
                at_ms,
                detail: format!("{lost} records did not fit the log between two ticks"),
            });
        }
        for r in records {
            self.apply(r);
        }
    }

    fn trace_at(&mut self, at_ms: u64, event: &str, detail: String) {
        self.trace.push(TraceEvent { at_ms, event: event.to_string(), detail });
    }

    /// Fixes a group message's intended recipients when the server accepts
    /// it: the members of the sender's view when its core sealed it (which
    /// may be later than the app's send, and a removal may come in between:
    /// a message queued offline is sealed after login, under the rotated
    /// key), less anyone the server did not queue it for (a member removed
    /// before it arrived), as the direct driver does from the server's memory
    /// (`World::fix_group_recipients`). Without this, such members counted
    /// as missed deliveries.
    fn narrow_group_recipients(&mut self, row: RoutingRow) {
        match row {
            RoutingRow::Queued { to, message, group: Some(_), .. } => {
                self.queued_for.entry(message).or_default().insert(to.user);
            }
            RoutingRow::Accepted { message, .. } if self.group_of.contains_key(&message) => {
                let queued = self.queued_for.remove(&message).unwrap_or_default();
                if let Some(sent) = self.history.sent.get_mut(&message) {
                    sent.to = group_recipients(&sent.to, self.sealed_for.get(&message), &queued);
                }
            }
            _ => {}
        }
    }

    /// Feeds one record to the history, as `World::after_client` does.
    fn apply(&mut self, record: Record) {
        self.applied += 1;
        let h = &mut self.history;
        let found = match record {
            Record::Sent { at_ms, from, to, id, body, group, media } => {
                let detail = match group {
                    None => format!("from={from} to={} id={id:?} len={}", names_of(&to), body.len()),
                    Some(g) => format!("from={from} group={g:?} id={id:?} len={}", body.len()),
                };
                let event = match (group.is_some(), media) {
                    (true, _) => "send-group",
                    (false, true) => "send-media",
                    (false, false) => "send",
                };
                self.trace_at(at_ms, event, detail);
                if let Some(g) = group {
                    self.group_of.insert(id, g);
                }
                if media {
                    self.history.media.insert(id);
                }
                self.history.record_sent(id, SentMessage::new(from, to, &body));
                Vec::new()
            }
            Record::Read { at_ms, reader, peer } => {
                let group_of = &self.group_of;
                let ids: Vec<MessageId> = h
                    .received
                    .keys()
                    .filter(|(u, id)| {
                        *u == reader && !group_of.contains_key(id) && h.sent.get(id).is_some_and(|m| m.from == peer)
                    })
                    .map(|(_, id)| *id)
                    .collect();
                for id in ids {
                    h.read.insert((reader.clone(), id));
                }
                self.trace_at(at_ms, "mark-read", format!("reader={reader} peer={peer}"));
                Vec::new()
            }
            Record::ReadGroup { at_ms, reader, group } => {
                let group_of = &self.group_of;
                let ids: Vec<MessageId> = h
                    .received
                    .keys()
                    .filter(|(u, id)| *u == reader && group_of.get(id) == Some(&group))
                    .map(|(_, id)| *id)
                    .collect();
                for id in ids {
                    h.read.insert((reader.clone(), id));
                }
                self.trace_at(at_ms, "mark-group-read", format!("reader={reader} group={group:?}"));
                Vec::new()
            }
            Record::Received { at_ms, user, from, group, id, body, media } => {
                // The `World`'s format: the runner reads latencies from these lines.
                let detail = match (&body, media) {
                    (None, _) => format!("user={user} event=undecryptable from={from} id={id:?}"),
                    (Some(b), true) => format!("user={user} event=media from={from} id={id:?} len={}", b.len()),
                    (Some(b), false) => {
                        format!("user={user} event=message from={from} group={group:?} id={id:?} len={}", b.len())
                    }
                };
                if media {
                    h.counts.media_deliveries += 1;
                }
                let v = h.app_received(&user, id, body.as_deref(), at_ms);
                self.unshown.remove(&(user, id));
                self.trace_at(at_ms, "app", detail);
                v
            }
            Record::PresenceShown { at_ms, user, target, last_seen } => {
                h.counts.presence_shown += 1;
                let detail = format!("user={user} event=presence of={target} last_seen={last_seen:?}");
                h.presence.shown.insert((user, target), last_seen);
                self.trace_at(at_ms, "app", detail);
                Vec::new()
            }
            Record::Subscribed { at_ms, user, users } => {
                h.presence.subscribed_at_ms.insert(user.clone(), at_ms);
                self.trace_at(at_ms, "presence-subscribe", format!("user={user} users={}", names(&users)));
                Vec::new()
            }
            Record::Sealed { id, view } => {
                self.sealed_for.entry(id).or_insert(view);
                Vec::new()
            }
            Record::EnvelopeIn { user, id, envelope } => {
                let key = (user, id);
                if h.received.contains_key(&key) || !self.unshown.insert(key.clone()) {
                    h.counts.duplicates_suppressed += 1;
                }
                if let Some(env) = envelope {
                    self.delivered.entry((key.0, env.from.clone(), id)).or_insert(*env);
                }
                Vec::new()
            }
            Record::HandedOut { at_ms, user, seq } => {
                let (max, seen) = self.handed_out.entry(user.clone()).or_default();
                if !seen.insert(seq) {
                    h.counts.redeliveries += 1;
                    Vec::new()
                } else if seq < *max {
                    vec![Violation {
                        invariant: invariant::ORDER,
                        at_ms,
                        detail: format!("{user:?}'s item {seq} was handed out for the first time after item {max}"),
                    }]
                } else {
                    *max = seq;
                    Vec::new()
                }
            }
            Record::Online { at_ms, user } => {
                self.presence_changed(at_ms, user, true);
                Vec::new()
            }
            Record::Offline { at_ms, user } => {
                self.presence_changed(at_ms, user, false);
                Vec::new()
            }
            Record::PrivacyApplied { at_ms, user, visibility, contacts } => {
                let detail = format!("user={user} visibility={visibility:?} contacts={}", contacts.len());
                h.presence.settings.insert(user.clone(), (visibility, contacts.into_iter().collect()));
                h.presence.setting_changed_at_ms.insert(user.clone(), at_ms);
                self.setting_applied.insert(user, self.applied);
                self.trace_at(at_ms, "privacy-applied", detail);
                Vec::new()
            }
            Record::PresenceSent { at_ms, subscriber, target, last_seen, reply } => {
                let what = if reply { "reply" } else { "push" };
                let detail = format!("user={subscriber} of={target} last_seen={last_seen:?} as={what}");
                self.trace_at(at_ms, "presence-sent", detail);
                self.presence_sent(at_ms, subscriber, target, last_seen, reply)
            }
            Record::Status { at_ms, sender, id, peer, state } => {
                let v = h.status_shown(id, &peer, state, at_ms);
                self.trace_at(at_ms, "status", format!("user={sender} id={id:?} peer={peer} state={state:?}"));
                v
            }
            Record::Prekey { at_ms, owner, id } => {
                let v = h.prekey_handed_out(&owner, id, at_ms);
                self.trace_at(at_ms, "prekey", format!("owner={owner:?} id={id}"));
                v
            }
            Record::Written { at_ms, table, key, value } => {
                let found = match h.find_plaintext(&value) {
                    Some(id) => vec![Violation {
                        invariant: invariant::NO_PLAINTEXT,
                        at_ms,
                        detail: format!("the plaintext of {id:?} was written to the server's {table} table"),
                    }],
                    None => Vec::new(),
                };
                if let Some(row) = routing_row(table, &key, &value) {
                    self.narrow_group_recipients(row);
                }
                found
            }
            Record::Fault { at_ms, user, direction, kind, action, about } => {
                // A presence frame hit by a fault: its app may lag the truth
                // until the next subscribe reply.
                if let Some(target) = about {
                    h.presence.excused.insert((user.clone(), target));
                }
                let fate = match action {
                    FaultAction::Dropped => {
                        h.counts.frames_dropped += 1;
                        "dropped".to_string()
                    }
                    FaultAction::Cut => {
                        h.counts.frames_partitioned += 1;
                        "partitioned".to_string()
                    }
                    FaultAction::Duplicated => {
                        h.counts.frames_duplicated += 1;
                        "duplicated".to_string()
                    }
                    FaultAction::Delayed { ms } => {
                        h.counts.frames_delayed += 1;
                        format!("delayed delay={ms}")
                    }
                };
                let detail = format!("user={user} dir={} kind={kind} fate={fate}", direction.name());
                self.trace_at(at_ms, "frame", detail);
                Vec::new()
            }
            Record::Note { at_ms, event, detail } => {
                self.trace_at(at_ms, event, detail);
                Vec::new()
            }
            Record::Violation(v) => vec![v],
        };
        self.violations.extend(found);
    }

    /// The server's view of `user` changed: online (welcomed) or offline
    /// (its current connection ended, or the server died).
    fn presence_changed(&mut self, at_ms: u64, user: UserId, online: bool) {
        let p = &mut self.history.presence;
        if p.online.insert(user.clone(), online) != Some(online) {
            p.last_seen_ms.insert(user.clone(), at_ms);
            p.changed_at_ms.insert(user.clone(), at_ms);
            let event = if online { "server-online" } else { "server-offline" };
            self.trace_at(at_ms, event, format!("user={user}"));
        }
    }

    /// The server sent `subscriber` `target`'s presence: `presence-privacy`
    /// and `presence-throttle`, as the `World` judges every such frame.
    fn presence_sent(
        &mut self,
        at_ms: u64,
        subscriber: UserId,
        target: UserId,
        last_seen: LastSeen,
        reply: bool,
    ) -> Vec<Violation> {
        let mut out = Vec::new();
        let p = &mut self.history.presence;
        let key = (subscriber, target);
        let previous = p.last_sent_ms.insert(key.clone(), at_ms);
        let previous_record = self.presence_sent_at.insert(key.clone(), self.applied);
        let (subscriber, target) = &key;
        if !p.permits(target, subscriber) {
            if last_seen != LastSeen::LongAgo {
                out.push(Violation {
                    invariant: invariant::PRESENCE_PRIVACY,
                    at_ms,
                    detail: format!(
                        "{subscriber:?} was sent {target:?}'s presence {last_seen:?}, which {target:?}'s setting excludes it from"
                    ),
                });
            }
            // In record order, not by the millisecond: a setting applied in
            // the same millisecond as, but after, the previous frame is a change.
            let setting_at = self.setting_applied.get(target).copied().unwrap_or(0);
            if !reply && previous_record.is_some_and(|prev| setting_at < prev) {
                out.push(Violation {
                    invariant: invariant::PRESENCE_PRIVACY,
                    at_ms,
                    detail: format!(
                        "{subscriber:?} was pushed {target:?}'s presence with no change of setting: the timing of {target:?}'s activity leaks"
                    ),
                });
            }
        }
        if reply {
            // The reply brings the subscriber up to date (a fault on its way
            // excuses the pair again: the tap's record comes after this one).
            p.excused.remove(&key);
            return out;
        }
        self.history.counts.presence_pushes += 1;
        if let Some(prev) = previous {
            if at_ms < prev.saturating_add(PRESENCE_PUSH_INTERVAL_MS) {
                out.push(Violation {
                    invariant: invariant::PRESENCE_THROTTLE,
                    at_ms,
                    detail: format!(
                        "{subscriber:?} was pushed {target:?}'s presence {} ms after the previous one (limit {PRESENCE_PUSH_INTERVAL_MS} ms)",
                        at_ms - prev
                    ),
                });
            }
        }
        out
    }

    /// How long a (subscriber, user) pair must have been quiet before its
    /// presence is judged: the `World`'s bound (push interval, one client
    /// resend, four worst-case one-way latencies, a second of margin).
    pub fn presence_settle_ms(&self) -> u64 {
        let f = lock(&self.plan).faults;
        PRESENCE_PUSH_INTERVAL_MS + self.resend_after_ms + 4 * f.latency_max_ms.max(f.latency_min_ms) + 1_000
    }

    /// `presence-converges` now, as `World::check_presence`: each logged-in
    /// subscriber the server counts online is shown the truth of every user
    /// it follows, for pairs quiet for [`TurmoilDriver::presence_settle_ms`].
    pub fn check_presence(&mut self) -> Vec<Violation> {
        let now = self.now_ms();
        let cutoff = now.saturating_sub(self.presence_settle_ms());
        let (ready, subscriptions) = {
            let log = lock(&self.log);
            (log.ready.clone(), log.subscriptions.clone())
        };
        let truth = &self.history.presence;
        let quiet = |map: &BTreeMap<UserId, u64>, u: &UserId| map.get(u).is_none_or(|t| *t <= cutoff);
        let mut out = Vec::new();
        let (mut checked, mut excused) = (0u64, 0u64);
        for (s, follows) in &subscriptions {
            let online = truth.online.get(s).copied().unwrap_or(false);
            if ready.get(s) != Some(&true) || !online || !quiet(&truth.changed_at_ms, s) {
                continue;
            }
            if !quiet(&truth.subscribed_at_ms, s) {
                excused += follows.len() as u64;
                continue;
            }
            for t in follows {
                let want = truth.view(t, s, now);
                let settled = quiet(&truth.changed_at_ms, t)
                    && quiet(&truth.setting_changed_at_ms, t)
                    && want == truth.view(t, s, cutoff)
                    && !truth.excused.contains(&(s.clone(), t.clone()));
                if !settled {
                    excused += 1;
                    continue;
                }
                checked += 1;
                let shown = truth.shown.get(&(s.clone(), t.clone()));
                if shown != Some(&want) {
                    out.push(Violation {
                        invariant: invariant::PRESENCE_CONVERGES,
                        at_ms: now,
                        detail: format!("{s:?} shows {t:?} as {shown:?}, the truth is {want:?}"),
                    });
                }
            }
        }
        self.history.counts.presence_pairs_checked += checked;
        self.history.counts.presence_pairs_excused += excused;
        out
    }

    /// Whether any app follows anyone's presence (quiesce then lets it settle).
    fn presence_followed(&self) -> bool {
        lock(&self.log).subscriptions.values().any(|v| !v.is_empty())
    }

    /// `forward-secrecy`: `saved` (a copy of `user`'s device) against every
    /// envelope `user` had received and decrypted. Returns how many were tried.
    fn check_forward_secrecy(&mut self, user: &UserId, config: ClientConfig, saved: &SavedClient) -> u64 {
        let Ok(mut adversary) = Client::restore(config, saved) else { return 0 };
        let now = self.now_ms();
        let mut tried = 0u64;
        let mut found = Vec::new();
        for ((to, _, id), envelope) in &self.delivered {
            if to != user || !self.history.decrypted.contains(&(user.clone(), *id)) {
                continue;
            }
            tried += 1;
            if adversary.adversary_open(envelope).is_some() {
                found.push(Violation {
                    invariant: invariant::FORWARD_SECRECY,
                    at_ms: now,
                    detail: format!(
                        "a copy of {user:?}'s state decrypts {id:?} from {:?}, which it had already received",
                        envelope.from.user
                    ),
                });
            }
        }
        self.history.counts.adversary_attempts += tried;
        self.violations.extend(found);
        tried
    }

    /// Copies the live counters into the history's counts.
    fn sync_counts(&mut self) {
        self.history.counts.frames_delivered = lock(&self.log).frames_delivered;
        self.history.counts.frame_faults = lock(&self.plan).counts.clone();
    }

    /// Sends a command and steps until the device answers.
    fn ask<T>(&mut self, user: &UserId, make: impl FnOnce(oneshot::Sender<T>) -> FarmCommand) -> Option<T> {
        let farm = self.farms.get(*self.farm_of.get(user)?)?;
        let (reply, mut answer) = oneshot::channel();
        farm.commands.try_send(make(reply)).ok()?;
        let mut result = None;
        for _ in 0..REPLY_TICKS_MAX {
            self.step();
            match answer.try_recv() {
                Ok(v) => {
                    result = Some(v);
                    break;
                }
                Err(oneshot::error::TryRecvError::Empty) => {}
                Err(oneshot::error::TryRecvError::Closed) => break,
            }
        }
        self.sync_counts();
        result
    }

    /// Sends a command that answers nothing; it takes effect at the next tick.
    fn tell(&mut self, user: &UserId, command: FarmCommand) -> bool {
        let Some(farm) = self.farm_of.get(user).and_then(|i| self.farms.get(*i)) else { return false };
        farm.commands.try_send(command).is_ok()
    }

    /// Whether nothing is left to do: every device is logged in (quiesce
    /// wants them all online), no outbox or media queue holds anything, no
    /// mailbox holds anything, and nothing is on the wire.
    fn idle(&self) -> bool {
        {
            let log = lock(&self.log);
            let all_ready = self.farm_of.keys().all(|u| log.ready.get(u) == Some(&true));
            if !all_ready || log.outbox.values().any(|n| *n > 0) {
                return false;
            }
        }
        if self.mailbox_entries() > 0 {
            return false;
        }
        let mut in_flight = 0usize;
        self.sim.links(|links| {
            for link in links {
                in_flight += link.count();
            }
        });
        in_flight == 0
    }

    fn cut_farm(&mut self, index: usize, direction: Option<Direction>) {
        let Some(farm) = self.farms.get(index) else { return };
        let host = farm.host.as_str();
        match direction {
            None => self.sim.partition(host, SERVER_HOST),
            Some(Direction::ToServer) => self.sim.partition_oneway(host, SERVER_HOST),
            Some(Direction::ToClient) => self.sim.partition_oneway(SERVER_HOST, host),
        }
        self.net_cuts.push((index, direction));
    }
}

/// Registers the server host: each (re)start binds, recovers from the shared
/// store and serves until the host is crashed.
fn add_server(
    sim: &mut ::turmoil::Sim<'static>,
    config: &TurmoilConfig,
    seed: u64,
    store: &Arc<Mutex<MemoryStore>>,
    log: &SharedLog,
) {
    let core: ServerConfig = config.world.server_config();
    let heartbeat = Duration::from_millis(config.heartbeat_ms.max(1));
    let idle = Duration::from_millis(config.idle_timeout_ms.max(1));
    let check_plaintext = config.check_plaintext;
    let store = store.clone();
    let log = log.clone();
    let clock = Arc::new(SimClock::new());
    let incarnation = Arc::new(AtomicU64::new(0));
    sim.host(SERVER_HOST, move || {
        // The first incarnation's seed is the direct driver's server seed.
        let n = incarnation.fetch_add(1, Ordering::Relaxed);
        let options = ServerOptions {
            heartbeat_interval: heartbeat,
            idle_timeout: idle,
            clock: clock.clone(),
            observer: Some(Arc::new(ServerWatch::new(log.clone()))),
            ..ServerOptions::new(core.clone(), seed.wrapping_add(n))
        };
        let store = SharedStore::new(store.clone(), check_plaintext.then(|| log.clone()));
        async move {
            let listener = ::turmoil::net::TcpListener::bind(("0.0.0.0", SERVER_PORT)).await?;
            run_server(SimListener(listener), store, options, std::future::pending::<()>()).await?;
            Ok(())
        }
    });
}

impl Driver for TurmoilDriver {
    fn name(&self) -> &'static str {
        "turmoil"
    }

    fn now_ms(&self) -> u64 {
        EPOCH_MS.saturating_add(u64::try_from(self.sim.elapsed().as_millis()).unwrap_or(u64::MAX))
    }

    fn run_until(&mut self, t_ms: u64) {
        while self.now_ms() < t_ms {
            self.step();
        }
        self.sync_counts();
    }

    fn send_text(&mut self, from: &UserId, to: &UserId, body: &[u8]) -> Option<MessageId> {
        let (from_c, to, body) = (from.clone(), to.clone(), body.to_vec());
        self.ask(from, |reply| FarmCommand::SendText { from: from_c, to, body, reply }).flatten()
    }

    fn create_group(&mut self, from: &UserId, members: &[UserId]) -> Option<GroupId> {
        let (from_c, members) = (from.clone(), members.to_vec());
        self.ask(from, |reply| FarmCommand::CreateGroup { from: from_c, members, reply }).flatten()
    }

    fn change_group(&mut self, admin: &UserId, group: GroupId, add: &[UserId], remove: &[UserId]) -> bool {
        let (admin_c, add, remove) = (admin.clone(), add.to_vec(), remove.to_vec());
        let applied = self
            .ask(admin, |reply| FarmCommand::ChangeGroup { admin: admin_c, group, add, remove, reply })
            .unwrap_or(false);
        if applied {
            // Feeds the `group_changes` guard, as the World counts its own.
            self.history.counts.group_changes += 1;
        }
        applied
    }

    fn send_group(&mut self, from: &UserId, group: GroupId, body: &[u8]) -> Option<MessageId> {
        let (from_c, body) = (from.clone(), body.to_vec());
        self.ask(from, |reply| FarmCommand::SendGroup { from: from_c, group, body, reply }).flatten()
    }

    fn mark_read(&mut self, reader: &UserId, peer: &UserId) {
        let command = FarmCommand::MarkRead { reader: reader.clone(), peer: peer.clone() };
        self.tell(reader, command);
    }

    fn set_faults(&mut self, faults: Faults) {
        {
            let mut plan = lock(&self.plan);
            plan.faults = faults;
            plan.faults_on = true;
        }
        let latency = Duration::from_millis(faults.latency_min_ms);
        for farm in &self.farms {
            self.sim.set_link_latency(farm.host.as_str(), SERVER_HOST, latency);
        }
        self.note("fault-knobs", format!("{faults:?}"));
    }

    fn add_frame_fault(&mut self, fault: FrameFault) {
        let index = lock(&self.plan).counts.len();
        self.note("frame-fault", format!("rule={index} {fault:?}"));
        lock(&self.plan).add(fault);
    }

    fn clear_frame_faults(&mut self) {
        lock(&self.plan).frame_faults.clear();
        self.note("frame-faults-cleared", String::new());
    }

    fn partition(&mut self, users: &[UserId], direction: Option<Direction>) {
        let set: BTreeSet<&UserId> = users.iter().collect();
        let whole: Vec<usize> = (0..self.farms.len())
            .filter(|i| self.farms.get(*i).is_some_and(|f| f.users.iter().all(|u| set.contains(u))))
            .collect();
        let mut network = Vec::new();
        for index in whole {
            self.cut_farm(index, direction);
            if let Some(f) = self.farms.get(index) {
                network.push(f.host.clone());
            }
        }
        let mut framing = Vec::new();
        {
            let mut plan = lock(&self.plan);
            for u in users {
                let on_cut_farm = self.farm_of.get(u).is_some_and(|i| self.net_cuts.iter().any(|(c, _)| c == i));
                if !on_cut_farm && self.farm_of.contains_key(u) {
                    plan.cut.insert(u.clone(), direction);
                    framing.push(u.clone());
                }
            }
        }
        self.history.counts.partitions += 1;
        let dir = direction.map_or("both", Direction::name);
        let detail =
            format!("users={} direction={dir} network={} framing={}", names(users), network.join(","), names(&framing));
        self.note("partition", detail);
    }

    fn heal(&mut self) {
        for (index, direction) in std::mem::take(&mut self.net_cuts) {
            let Some(farm) = self.farms.get(index) else { continue };
            let host = farm.host.as_str();
            match direction {
                None => self.sim.repair(host, SERVER_HOST),
                Some(Direction::ToServer) => self.sim.repair_oneway(host, SERVER_HOST),
                Some(Direction::ToClient) => self.sim.repair_oneway(SERVER_HOST, host),
            }
        }
        lock(&self.plan).cut.clear();
        self.note("heal", String::new());
    }

    fn disconnect(&mut self, user: &UserId) {
        if self.tell(user, FarmCommand::SetOnline { user: user.clone(), online: false }) {
            self.note("disconnect", format!("user={user}"));
        }
    }

    fn connect(&mut self, user: &UserId) {
        if self.tell(user, FarmCommand::SetOnline { user: user.clone(), online: true }) {
            self.note("connect", format!("user={user}"));
        }
    }

    fn crash_client(&mut self, user: &UserId) {
        // What reached the dead core unshown comes again, and is new again.
        self.unshown.retain(|(u, _)| u != user);
        if self.tell(user, FarmCommand::Crash { user: user.clone() }) {
            self.history.counts.client_crashes += 1;
            self.note("crash-client", format!("user={user}"));
        }
    }

    fn crash_server(&mut self) {
        self.sim.bounce(SERVER_HOST);
        // Every connection died with the server.
        let now = self.now_ms();
        let online: Vec<UserId> =
            self.history.presence.online.iter().filter(|(_, on)| **on).map(|(u, _)| u.clone()).collect();
        for u in online {
            self.presence_changed(now, u, false);
        }
        self.history.counts.server_crashes += 1;
        self.note("crash-server", String::new());
    }

    fn set_clock_offset(&mut self, user: &UserId, offset_ms: i64) {
        if let Some(clock) = self.clocks.get(user) {
            clock.set_offset_ms(offset_ms);
            self.note("clock-offset", format!("user={user} offset_ms={offset_ms}"));
        }
    }

    fn quiesce(&mut self, budget_ms: u64) {
        {
            let mut plan = lock(&self.plan);
            plan.faults_on = false;
            plan.frame_faults.clear();
        }
        self.heal();
        let users: Vec<UserId> = self.farm_of.keys().cloned().collect();
        for u in users {
            self.tell(&u, FarmCommand::SetOnline { user: u.clone(), online: true });
        }
        self.note("quiesce", format!("budget_ms={budget_ms}"));
        let until = self.now_ms().saturating_add(budget_ms);
        while self.now_ms() < until {
            self.step();
            if self.ticks.is_multiple_of(IDLE_CHECK_TICKS) && self.idle() {
                break;
            }
        }
        // As the `World`: presence needs its settle time after the traffic.
        if self.presence_followed() {
            let settle = self.now_ms().saturating_add(self.presence_settle_ms()).min(until);
            while self.now_ms() < settle {
                self.step();
            }
        }
        self.sync_counts();
    }

    fn finish(&mut self) -> Vec<Violation> {
        self.drain();
        self.sync_counts();
        let now = self.now_ms();
        let mut found = self.history.check_at_least_once(now);
        let left = self.mailbox_entries();
        if left > 0 {
            found.push(Violation {
                invariant: invariant::MAILBOXES_EMPTY,
                at_ms: now,
                detail: format!("{left} entries still queued after quiesce"),
            });
        }
        self.violations.extend(found);
        let presence = self.check_presence();
        self.violations.extend(presence);
        self.violations.clone()
    }

    fn history(&self) -> &History {
        &self.history
    }

    fn trace(&self) -> Vec<TraceEvent> {
        self.trace.clone()
    }

    fn drain_trace(&mut self, out: &mut Vec<TraceEvent>) {
        out.append(&mut self.trace);
    }

    fn mark_group_read(&mut self, reader: &UserId, group: GroupId) -> Result<(), Unsupported> {
        self.tell(reader, FarmCommand::MarkGroupRead { reader: reader.clone(), group });
        Ok(())
    }

    fn send_media(&mut self, from: &UserId, to: &UserId, bytes: &[u8]) -> Result<Option<MessageId>, Unsupported> {
        let (from_c, to, bytes) = (from.clone(), to.clone(), bytes.to_vec());
        Ok(self.ask(from, |reply| FarmCommand::SendMedia { from: from_c, to, bytes, reply }).flatten())
    }

    fn set_presence_privacy(
        &mut self,
        owner: &UserId,
        visibility: Visibility,
        contacts: &[UserId],
    ) -> Result<(), Unsupported> {
        let (owner_c, contacts) = (owner.clone(), contacts.to_vec());
        self.ask(owner, |reply| FarmCommand::SetPresencePrivacy { owner: owner_c, visibility, contacts, reply });
        Ok(())
    }

    fn subscribe_presence(&mut self, subscriber: &UserId, targets: &[UserId]) -> Result<(), Unsupported> {
        let (subscriber_c, targets) = (subscriber.clone(), targets.to_vec());
        self.ask(subscriber, |reply| FarmCommand::SubscribePresence { subscriber: subscriber_c, targets, reply });
        Ok(())
    }

    /// As `World::compromise`: the adversary copies the device's last save
    /// (the client task saves before anything it did leaves the device).
    fn compromise(&mut self, user: &UserId) -> Result<(), Unsupported> {
        let Some(slot) = self.slots.get(user).cloned() else { return Ok(()) };
        // A save that does not apply is reported when the device restarts.
        let tried = match slot.current() {
            Ok(Some(saved)) => self.check_forward_secrecy(user, slot.config.clone(), &saved),
            _ => 0,
        };
        self.history.counts.compromises += 1;
        let now = self.now_ms();
        self.history.compromised.push((user.clone(), now, tried));
        self.note("compromise", format!("user={user} tried={tried}"));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn users(names: &[&str]) -> BTreeSet<UserId> {
        names.iter().map(|n| UserId::new(n).unwrap()).collect()
    }

    /// The turmoil run of `group-1024-churn` counted a member as missing
    /// that the sender removed between the app's send (made offline) and
    /// the seal after login: it was never sealed for, so never gets the key.
    #[test]
    fn group_recipients_follow_the_sealing_view_within_what_the_server_queued() {
        let app = users(&["bob", "carol", "dave"]);
        let sealed = users(&["bob", "dave", "erin"]);
        let queued = users(&["bob", "carol", "erin"]);
        assert_eq!(group_recipients(&app, Some(&sealed), &queued), users(&["bob", "erin"]));
        assert_eq!(group_recipients(&app, None, &queued), users(&["bob", "carol"]), "no seal seen: the app's view");
    }
}
