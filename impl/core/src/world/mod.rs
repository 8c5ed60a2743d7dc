//! `World`: one server and N clients in one process, on a simulated clock and
//! an in-memory network that can drop, duplicate, reorder and delay frames,
//! with crashes and restarts of either side, and the invariant oracle run
//! after every step.
//!
//! It is the fast driver of the simulator and the harness of the core's
//! property tests. Everything is derived from one seed: the same seed and the
//! same calls give the same history and the same [`World::trace`], byte for
//! byte.
//!
//! # Driving
//! Apps act through [`World::send_text`], [`World::send_media`],
//! [`World::create_group`], [`World::change_group`], [`World::send_group`],
//! [`World::mark_read`], [`World::subscribe_presence`] and
//! [`World::set_presence_privacy`]; faults through [`World::crash_client`],
//! [`World::crash_server`], [`World::disconnect`], [`World::partition`],
//! [`World::set_clock_offset`], the background [`Faults`] knobs
//! ([`World::set_fault_knobs`], switched by [`World::set_faults`]) and
//! targeted [`FrameFault`] rules ([`World::add_frame_fault`]); the adversary
//! through [`World::compromise`]. [`World::step`] runs the next event in time
//! order; [`World::run_until`] steps to a time; [`World::quiesce`] heals every
//! fault, brings everyone online and runs until nothing is left to do, after
//! which [`World::finish`] runs the liveness checks.
//!
//! # Partitions
//! A partitioned user's link loses every frame in the cut direction(s). Its
//! connection stays up, as a TCP connection does, until
//! [`PARTITION_DROP_AFTER_MS`] of cut passes; then both ends drop it (the
//! tokio server's idle timeout, heartbeats unanswered) and the client does not
//! get a new one before [`World::heal`].

pub mod checks;
pub mod faults;
pub mod oracle;
mod watched;

use std::collections::{BTreeMap, BTreeSet};

use bluetick_crypto::CipherSuite;
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use serde::Serialize;

use crate::client::{AppEvent, Client, ClientBugs, ClientConfig, SavedClient};
use crate::ids::{DeviceAddress, DeviceId, GroupId, MessageId, UserId};
use crate::server::{ConnId, Server, ServerConfig, ServerOutput};
use crate::store::MemoryStore;
use crate::wire::{self, ClientFrame, Envelope, ServerFrame, Visibility};

use faults::{Direction, FrameFault, TraceEvent};
use oracle::{names, FrameFaultCount, History, SentMessage, Violation};
use watched::WatchedStore;

/// How long a cut link keeps its connection before both ends give up on it:
/// the tokio server's idle timeout (`bluetick_net::server::IDLE_TIMEOUT`).
pub const PARTITION_DROP_AFTER_MS: u64 = 60_000;

/// Network faults, applied to every frame independently while enabled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Faults {
    /// Chance a frame is lost, per mille.
    pub drop_per_mille: u32,
    /// Chance a frame arrives twice, per mille.
    pub duplicate_per_mille: u32,
    /// Smallest one-way latency.
    pub latency_min_ms: u64,
    /// Largest one-way latency; frames on one connection may overtake each
    /// other when this exceeds the minimum (reordering).
    pub latency_max_ms: u64,
}

impl Faults {
    /// A perfect network with a fixed 5 ms latency.
    pub const NONE: Faults = Faults { drop_per_mille: 0, duplicate_per_mille: 0, latency_min_ms: 5, latency_max_ms: 5 };
}

/// How to build a world.
#[derive(Debug, Clone)]
pub struct WorldConfig {
    /// Root seed; every other seed is derived from it.
    pub seed: u64,
    /// The users, one device each.
    pub users: Vec<UserId>,
    /// Network faults.
    pub faults: Faults,
    /// Server tunables and deliberate bugs. Its `suite` is overridden by
    /// [`WorldConfig::suite`] (see [`WorldConfig::server_config`]).
    pub server: ServerConfig,
    /// Deliberate client bugs (applied to every client).
    pub client_bugs: ClientBugs,
    /// Cipher suite of every device.
    pub suite: CipherSuite,
    /// A client with unsent work retries after this long.
    pub client_resend_after_ms: u64,
    /// A disconnected online user reconnects after this long.
    pub reconnect_after_ms: u64,
    /// Key bundles each client fetches per minute
    /// ([`ClientConfig::bundle_fetches_per_minute`]).
    pub client_bundle_fetches_per_minute: usize,
    /// Save every client after every call that dirtied it, check that the
    /// save restores, and check after every call that left a client clean
    /// that it still saves to the same bytes (its dirty flag is honest).
    /// Costly; tests. Off, a client's save is encoded only when something
    /// needs it (a crash, a compromise, a removed member's copy): the World
    /// calls every client in the documented order, so its last save would
    /// be its current state, and encoding a 1,024-session client after each
    /// of its frames dominated large runs.
    pub verify_saves: bool,
    /// Record the [`World::trace`], one line per frame and event. Off by
    /// default (it doubles a run's cost); a simulator that reports a
    /// `trace_hash` turns it on.
    pub trace: bool,
    /// Keep every envelope delivered to each device, so a later
    /// [`World::compromise`] can be checked against them (memory grows with
    /// the traffic; off when no compromise is planned).
    pub record_ciphertexts: bool,
}

impl WorldConfig {
    /// The server's configuration, with the devices' suite: the server checks
    /// login proofs, prekey signatures and group changes under it, so a world
    /// with two different suites could not log anyone in.
    pub fn server_config(&self) -> ServerConfig {
        ServerConfig { suite: self.suite, ..self.server.clone() }
    }

    /// Defaults for `users` with `seed`: no faults, no bugs.
    pub fn new(seed: u64, users: &[&str]) -> Result<Self, crate::ids::UserIdError> {
        Ok(WorldConfig {
            seed,
            users: users.iter().map(|u| UserId::new(u)).collect::<Result<_, _>>()?,
            faults: Faults::NONE,
            server: ServerConfig::default(),
            client_bugs: ClientBugs::default(),
            suite: CipherSuite::BluetickV1,
            client_resend_after_ms: 2_000,
            reconnect_after_ms: 500,
            client_bundle_fetches_per_minute: crate::client::BUNDLE_FETCHES_PER_WINDOW,
            verify_saves: false,
            trace: false,
            record_ciphertexts: true,
        })
    }
}

#[derive(Debug)]
enum Event {
    /// Bytes for the server on a connection.
    ToServer { conn: ConnId, kind: &'static str, bytes: Vec<u8> },
    /// A frame for a client on a connection; `reply` marks a presence
    /// subscribe reply (for the presence oracle).
    ToClient { user: UserId, conn: ConnId, frame: Box<ServerFrame>, reply: bool },
    /// A user (re)connects if it wants to be online.
    Connect { user: UserId },
    /// A cut link of `user` gives up, if it is still cut in `epoch`.
    PartitionTimeout { user: UserId, epoch: u64 },
}

struct Device {
    config: ClientConfig,
    client: Option<Client>,
    /// The last save actually encoded.
    saved: SavedClient,
    /// The client changed after `saved` was encoded, so its last save (the
    /// World saves after every call) is its current state; encoded on demand
    /// by [`World::saved_state`].
    save_pending: bool,
    /// The client's next deadline in world time, as entered in `World::timers`.
    timer: Option<u64>,
    conn: Option<ConnId>,
    want_online: bool,
}

/// A removed member's key material as of its removal (kept up to date until
/// its own device applies the removal), to check later group messages
/// against: a removed member is assumed to keep what it had.
struct RemovedCopy {
    group: GroupId,
    user: UserId,
    removed_at_ms: u64,
    saved: SavedClient,
    settled: bool,
}

/// The simulated world. See the module docs.
pub struct World {
    config: WorldConfig,
    now_ms: u64,
    rng: ChaCha20Rng,
    faults_on: bool,
    server: Server,
    store: WatchedStore,
    server_incarnation: u64,
    devices: BTreeMap<UserId, Device>,
    /// Every running client's next deadline (world time), so finding the
    /// next timer does not poll all clients after every step.
    timers: BTreeSet<(u64, UserId)>,
    conn_owner: BTreeMap<ConnId, UserId>,
    queue: BTreeMap<(u64, u64), Event>,
    next_event: u64,
    next_conn: u64,
    history: History,
    violations: Vec<Violation>,
    steps: u64,
    /// Active targeted rules, as indices into `history.counts.frame_faults`.
    frame_faults: Vec<usize>,
    /// Cut links: user → the cut direction (`None`: both).
    partitions: BTreeMap<UserId, Option<Direction>>,
    partition_epoch: u64,
    clock_offsets: BTreeMap<UserId, i64>,
    trace: Vec<TraceEvent>,
    /// The connection whose `PresenceSubscribe` the server is handling.
    subscribe_conn: Option<ConnId>,
    /// Per user: highest mailbox seq handed out so far and every seq seen.
    handed_out: BTreeMap<UserId, (u64, BTreeSet<u64>)>,
    /// (device, seq) acked, to be gone by the next retention sweep.
    acked: BTreeSet<(DeviceAddress, u64)>,
    next_sweep_ms: u64,
    reported_retention: BTreeSet<(DeviceAddress, u64)>,
    /// Mailbox entries already searched for plaintext (an entry's content is
    /// fixed when it is queued, after every plaintext it could leak was sent).
    memory_scanned: BTreeSet<(DeviceAddress, u64)>,
    /// (recipient, sender, id) → the first copy delivered.
    delivered: BTreeMap<(UserId, DeviceAddress, MessageId), Envelope>,
    removed_copies: Vec<RemovedCopy>,
    /// Group messages whose intended recipients were fixed at the server's ack.
    group_acked: BTreeSet<MessageId>,
}

/// Start of simulated time: 2026-01-01T00:00:00Z, so timestamps look real.
pub const EPOCH_MS: u64 = 1_767_225_600_000;

/// How often (simulated) the retention sweep and the scan of the server's
/// memory for plaintext run: once a second keeps them cheap in long runs.
pub const SWEEP_EVERY_MS: u64 = 1_000;

impl World {
    /// Builds the world; every user starts online and registers.
    pub fn new(config: WorldConfig) -> Self {
        let mut rng = ChaCha20Rng::seed_from_u64(config.seed);
        let server = Server::new(config.server_config(), rng.next_u64());
        let mut devices = BTreeMap::new();
        for user in &config.users {
            let cc = ClientConfig {
                suite: config.suite,
                resend_after_ms: config.client_resend_after_ms,
                bundle_fetches_per_minute: config.client_bundle_fetches_per_minute,
                bugs: config.client_bugs.clone(),
                ..ClientConfig::new(user.clone(), DeviceId(1))
            };
            let client = Client::new(cc.clone(), rng.next_u64(), EPOCH_MS);
            let saved = client.save();
            devices.insert(
                user.clone(),
                Device {
                    config: cc,
                    client: Some(client),
                    saved,
                    save_pending: false,
                    timer: None,
                    conn: None,
                    want_online: true,
                },
            );
        }
        let mut w = World {
            config,
            now_ms: EPOCH_MS,
            rng,
            faults_on: true,
            server,
            store: WatchedStore::default(),
            server_incarnation: 0,
            devices,
            timers: BTreeSet::new(),
            conn_owner: BTreeMap::new(),
            queue: BTreeMap::new(),
            next_event: 0,
            next_conn: 1,
            history: History::default(),
            violations: Vec::new(),
            steps: 0,
            frame_faults: Vec::new(),
            partitions: BTreeMap::new(),
            partition_epoch: 0,
            clock_offsets: BTreeMap::new(),
            trace: Vec::new(),
            subscribe_conn: None,
            handed_out: BTreeMap::new(),
            acked: BTreeSet::new(),
            next_sweep_ms: EPOCH_MS,
            reported_retention: BTreeSet::new(),
            memory_scanned: BTreeSet::new(),
            delivered: BTreeMap::new(),
            removed_copies: Vec::new(),
            group_acked: BTreeSet::new(),
        };
        let users: Vec<UserId> = w.devices.keys().cloned().collect();
        for u in users {
            w.refresh_timer(&u);
            w.schedule(0, Event::Connect { user: u });
        }
        w
    }

    /// Simulated time now.
    pub fn now_ms(&self) -> u64 {
        self.now_ms
    }

    /// What happened so far.
    pub fn history(&self) -> &History {
        &self.history
    }

    /// Broken invariants seen so far.
    pub fn violations(&self) -> &[Violation] {
        &self.violations
    }

    /// The deterministic trace so far (empty when [`WorldConfig::trace`] is
    /// off), less what [`World::drain_trace`] took.
    pub fn trace(&self) -> &[TraceEvent] {
        &self.trace
    }

    /// Moves the trace recorded since the last call to the end of `out`, in
    /// order, so a long run need not hold all of it.
    pub fn drain_trace(&mut self, out: &mut Vec<TraceEvent>) {
        out.append(&mut self.trace);
    }

    /// The server (for checks and reports).
    pub fn server(&self) -> &Server {
        &self.server
    }

    /// The server's durable store.
    pub fn store(&self) -> &MemoryStore {
        self.store.inner()
    }

    /// Steps taken.
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// A client, if it is running.
    pub fn client(&self, user: &UserId) -> Option<&Client> {
        self.devices.get(user).and_then(|d| d.client.as_ref())
    }

    /// `user`'s clock: simulated time plus its offset (saturating).
    pub fn client_now(&self, user: &UserId) -> u64 {
        let offset = self.clock_offsets.get(user).copied().unwrap_or(0);
        self.now_ms.saturating_add_signed(offset)
    }

    // ----- app commands -----

    /// `from`'s app sends `body` to `to`. Returns the message id.
    pub fn send_text(&mut self, from: &UserId, to: &UserId, body: &[u8]) -> Option<MessageId> {
        let now = self.client_now(from);
        let client = self.devices.get_mut(from)?.client.as_mut()?;
        let Ok(id) = client.send_text(to, body, now) else {
            self.after_client(from);
            return None;
        };
        self.history.record_sent(id, SentMessage::new(from.clone(), BTreeSet::from([to.clone()]), body));
        self.note("send", format!("from={} to={} id={id:?} len={}", from.as_str(), to.as_str(), body.len()));
        self.after_client(from);
        Some(id)
    }

    /// `from`'s app sends an attachment to `to`: encrypted, uploaded, then
    /// announced by a message whose id is returned.
    pub fn send_media(&mut self, from: &UserId, to: &UserId, bytes: &[u8]) -> Option<MessageId> {
        let now = self.client_now(from);
        let client = self.devices.get_mut(from)?.client.as_mut()?;
        let Ok(id) = client.send_media(to, bytes, now) else {
            self.after_client(from);
            return None;
        };
        self.history.record_sent(id, SentMessage::new(from.clone(), BTreeSet::from([to.clone()]), bytes));
        self.history.media.insert(id);
        self.note("send-media", format!("from={} to={} id={id:?} len={}", from.as_str(), to.as_str(), bytes.len()));
        self.after_client(from);
        Some(id)
    }

    /// `from`'s app creates a group with `members` (besides itself).
    pub fn create_group(&mut self, from: &UserId, members: &[UserId]) -> Option<GroupId> {
        let now = self.client_now(from);
        let client = self.devices.get_mut(from)?.client.as_mut()?;
        let Ok(g) = client.create_group(members.to_vec(), now) else {
            self.after_client(from);
            return None;
        };
        self.record_group_version(from, g);
        self.note("create-group", format!("admin={} group={g:?} members={}", from.as_str(), members.len()));
        self.after_client(from);
        Some(g)
    }

    /// `admin`'s app adds and removes members. Every removed member's current
    /// device state is kept as the adversary's copy for the
    /// `removed-member-cannot-read` check. False if the client refused.
    pub fn change_group(&mut self, admin: &UserId, group: GroupId, add: &[UserId], remove: &[UserId]) -> bool {
        let now = self.client_now(admin);
        let Some(client) = self.devices.get_mut(admin).and_then(|d| d.client.as_mut()) else { return false };
        let before: BTreeSet<UserId> = client.group(&group).map(|(_, m)| m.into_iter().collect()).unwrap_or_default();
        if client.change_group(group, add.to_vec(), remove.to_vec(), now).is_err() {
            self.after_client(admin);
            return false;
        }
        self.record_group_version(admin, group);
        let at = self.now_ms;
        for user in remove.iter().filter(|u| before.contains(*u)) {
            if let Some(saved) = self.saved_state(user) {
                self.removed_copies.push(RemovedCopy {
                    group,
                    user: user.clone(),
                    removed_at_ms: at,
                    saved,
                    settled: false,
                });
            }
            self.history.groups.entry(group).or_default().removals.push((user.clone(), at));
        }
        self.history.counts.group_changes += 1;
        self.note(
            "change-group",
            format!("admin={} group={group:?} add={} remove={}", admin.as_str(), names_of(add), names_of(remove)),
        );
        self.after_client(admin);
        true
    }

    /// `from`'s app sends `body` to a group. The intended recipients are
    /// fixed when the server accepts it: the members of the group's version
    /// the server is at, among those the sender encrypted for.
    pub fn send_group(&mut self, from: &UserId, group: GroupId, body: &[u8]) -> Option<MessageId> {
        let now = self.client_now(from);
        let client = self.devices.get_mut(from)?.client.as_mut()?;
        let Ok(id) = client.send_group(group, body, now) else {
            self.after_client(from);
            return None;
        };
        let to: BTreeSet<UserId> =
            client.group(&group).map(|(_, m)| m.into_iter().filter(|u| u != from).collect()).unwrap_or_default();
        self.history.record_sent(id, SentMessage::new(from.clone(), to, body));
        self.note("send-group", format!("from={} group={group:?} id={id:?} len={}", from.as_str(), body.len()));
        self.after_client(from);
        Some(id)
    }

    /// `reader`'s app opens the conversation with `peer`: everything it has
    /// received from `peer` is now read.
    pub fn mark_read(&mut self, reader: &UserId, peer: &UserId) {
        let now = self.client_now(reader);
        let Some(client) = self.devices.get_mut(reader).and_then(|d| d.client.as_mut()) else { return };
        client.mark_read(peer, now);
        let ids: Vec<MessageId> = self
            .history
            .received
            .keys()
            .filter(|(u, id)| {
                u == reader
                    && !self.history.group_sends.contains_key(id)
                    && self.history.sent.get(id).is_some_and(|m| &m.from == peer)
            })
            .map(|(_, id)| *id)
            .collect();
        for id in ids {
            self.history.read.insert((reader.clone(), id));
        }
        self.note("mark-read", format!("reader={} peer={}", reader.as_str(), peer.as_str()));
        self.after_client(reader);
    }

    /// `reader`'s app opens a group conversation: every group message it has
    /// received in `group` is now read (Read receipts go to each sender).
    pub fn mark_group_read(&mut self, reader: &UserId, group: GroupId) {
        let now = self.client_now(reader);
        let Some(client) = self.devices.get_mut(reader).and_then(|d| d.client.as_mut()) else { return };
        client.mark_group_read(group, now);
        let ids: Vec<MessageId> = self
            .history
            .received
            .keys()
            .filter(|(u, id)| u == reader && self.history.group_sends.get(id).is_some_and(|g| g.group == group))
            .map(|(_, id)| *id)
            .collect();
        for id in ids {
            self.history.read.insert((reader.clone(), id));
        }
        self.note("mark-group-read", format!("reader={} group={group:?}", reader.as_str()));
        self.after_client(reader);
    }

    /// `user`'s app sets who may see its presence.
    pub fn set_presence_privacy(&mut self, user: &UserId, visibility: Visibility, contacts: &[UserId]) -> bool {
        let now = self.client_now(user);
        let Some(client) = self.devices.get_mut(user).and_then(|d| d.client.as_mut()) else { return false };
        if client.set_presence_privacy(visibility, contacts, now).is_err() {
            self.after_client(user);
            return false;
        }
        self.note(
            "presence-privacy",
            format!("user={} visibility={visibility:?} contacts={}", user.as_str(), names_of(contacts)),
        );
        self.after_client(user);
        true
    }

    /// `subscriber`'s app follows the presence of `users` (replacing its list).
    pub fn subscribe_presence(&mut self, subscriber: &UserId, users: &[UserId]) -> bool {
        let now = self.client_now(subscriber);
        let Some(client) = self.devices.get_mut(subscriber).and_then(|d| d.client.as_mut()) else { return false };
        if client.subscribe_presence(users, now).is_err() {
            self.after_client(subscriber);
            return false;
        }
        self.note("presence-subscribe", format!("user={} users={}", subscriber.as_str(), names_of(users)));
        self.after_client(subscriber);
        true
    }

    // ----- faults -----

    /// Turns the network faults (background knobs and targeted rules) on or
    /// off (the liveness phase turns them off).
    pub fn set_faults(&mut self, on: bool) {
        self.faults_on = on;
    }

    /// Replaces the background fault knobs.
    pub fn set_fault_knobs(&mut self, faults: Faults) {
        self.config.faults = faults;
        self.note("fault-knobs", format!("{faults:?}"));
    }

    /// Adds a targeted frame fault (until [`World::clear_frame_faults`]);
    /// returns its index in [`oracle::Counts::frame_faults`].
    pub fn add_frame_fault(&mut self, fault: FrameFault) -> usize {
        let index = self.history.counts.frame_faults.len();
        self.note("frame-fault", format!("rule={index} {fault:?}"));
        self.history.counts.frame_faults.push(FrameFaultCount {
            rule: fault,
            matched: 0,
            dropped: 0,
            duplicated: 0,
            delayed: 0,
        });
        self.frame_faults.push(index);
        index
    }

    /// Removes every targeted frame fault (their counts stay).
    pub fn clear_frame_faults(&mut self) {
        if !self.frame_faults.is_empty() {
            self.note("frame-faults-cleared", String::new());
        }
        self.frame_faults.clear();
    }

    /// Cuts `users` off from the server: both ways, or only `direction`.
    /// See the module docs for what happens to their connections.
    pub fn partition(&mut self, users: &[UserId], direction: Option<Direction>) {
        self.partition_epoch += 1;
        let epoch = self.partition_epoch;
        for u in users {
            if !self.devices.contains_key(u) {
                continue;
            }
            self.partitions.insert(u.clone(), direction);
            self.schedule(PARTITION_DROP_AFTER_MS, Event::PartitionTimeout { user: u.clone(), epoch });
        }
        self.history.counts.partitions += 1;
        let dir = direction.map_or("both", Direction::name);
        self.note("partition", format!("users={} direction={dir}", names_of(users)));
    }

    /// Heals every partition; cut-off users reconnect.
    pub fn heal(&mut self) {
        if self.partitions.is_empty() {
            return;
        }
        self.partition_epoch += 1;
        let users: Vec<UserId> = std::mem::take(&mut self.partitions).into_keys().collect();
        self.note("heal", format!("users={}", names_of(&users)));
        for u in users {
            if self.devices.get(&u).is_some_and(|d| d.want_online && d.conn.is_none()) {
                self.schedule(0, Event::Connect { user: u });
            }
        }
    }

    /// Sets `user`'s clock offset from simulated time: its client's `now` is
    /// simulated time plus `offset_ms`, saturating.
    pub fn set_clock_offset(&mut self, user: &UserId, offset_ms: i64) {
        if !self.devices.contains_key(user) {
            return;
        }
        self.clock_offsets.insert(user.clone(), offset_ms);
        self.refresh_timer(user);
        self.note("clock-offset", format!("user={} offset_ms={offset_ms}", user.as_str()));
    }

    /// Closes `user`'s connection; it stays offline until [`World::connect`].
    pub fn disconnect(&mut self, user: &UserId) {
        if let Some(d) = self.devices.get_mut(user) {
            d.want_online = false;
        }
        self.note("disconnect", format!("user={}", user.as_str()));
        self.drop_connection(user);
    }

    /// Brings `user` back online.
    pub fn connect(&mut self, user: &UserId) {
        if let Some(d) = self.devices.get_mut(user) {
            d.want_online = true;
        }
        self.schedule(0, Event::Connect { user: user.clone() });
    }

    /// Kills `user`'s client: what it had not saved is lost; it restarts from
    /// its last saved state and reconnects.
    pub fn crash_client(&mut self, user: &UserId) {
        self.note("crash-client", format!("user={}", user.as_str()));
        self.drop_connection(user);
        self.saved_state(user);
        let Some(d) = self.devices.get_mut(user) else { return };
        match Client::restore(d.config.clone(), &d.saved) {
            Ok(c) => d.client = Some(c),
            Err(e) => {
                d.client = None;
                self.violations.push(Violation {
                    invariant: "client-recovers",
                    at_ms: self.now_ms,
                    detail: format!("{user:?} could not restore its saved state: {e}"),
                });
            }
        }
        let want_online = d.want_online;
        self.refresh_timer(user);
        self.history.counts.client_crashes += 1;
        if want_online {
            let after = self.config.reconnect_after_ms;
            self.schedule(after, Event::Connect { user: user.clone() });
        }
    }

    /// Kills the server: volatile state is lost, the store survives; every
    /// connection drops and clients reconnect.
    pub fn crash_server(&mut self) {
        self.note("crash-server", String::new());
        let users: Vec<UserId> = self.devices.keys().cloned().collect();
        for u in &users {
            self.drop_client_side(u);
            self.presence_offline(u);
        }
        self.conn_owner.clear();
        // Frames in flight to or from the dead server are gone.
        self.queue.retain(|_, e| matches!(e, Event::Connect { .. } | Event::PartitionTimeout { .. }));
        self.server_incarnation += 1;
        let seed = self.rng.next_u64();
        match Server::recover(self.config.server_config(), seed, &mut self.store) {
            Ok(s) => self.server = s,
            Err(e) => self.violations.push(Violation {
                invariant: "server-recovers",
                at_ms: self.now_ms,
                detail: format!("recovery from the store failed: {e}"),
            }),
        }
        self.history.counts.server_crashes += 1;
        let after = self.config.reconnect_after_ms;
        for u in users {
            if self.devices.get(&u).is_some_and(|d| d.want_online) {
                self.schedule(after, Event::Connect { user: u });
            }
        }
    }

    /// The adversary takes a copy of `user`'s complete device state (its last
    /// save, which is its state: the World saves after every call) and tries
    /// it on every recorded ciphertext the device had already received and
    /// decrypted: any that opens is a `forward-secrecy` violation. Returns how
    /// many ciphertexts were tried (`None` for an unknown user).
    pub fn compromise(&mut self, user: &UserId) -> Option<u64> {
        let saved = self.saved_state(user)?;
        let config = self.devices.get(user)?.config.clone();
        let tried = self.check_forward_secrecy(user, config, &saved);
        self.history.counts.compromises += 1;
        self.history.compromised.push((user.clone(), self.now_ms, tried));
        self.note("compromise", format!("user={} tried={tried}", user.as_str()));
        Some(tried)
    }

    // ----- running -----

    /// The time of the next thing to happen, if anything is scheduled.
    pub fn next_time(&self) -> Option<u64> {
        let queued = self.queue.keys().next().map(|(t, _)| *t);
        let server = self.server.poll_timeout();
        let clients = self.timers.first().map(|(t, _)| *t);
        [queued, server, clients].into_iter().flatten().min()
    }

    /// Runs the next event (network delivery or timer). Returns false when
    /// nothing is scheduled.
    pub fn step(&mut self) -> bool {
        let Some(t) = self.next_time() else { return false };
        self.now_ms = self.now_ms.max(t);
        self.steps += 1;
        let now = self.now_ms;
        if let Some(((qt, _), _)) = self.queue.first_key_value() {
            if *qt <= now {
                if let Some((_, ev)) = self.queue.pop_first() {
                    self.run_event(ev);
                }
                self.check_safety();
                return true;
            }
        }
        if self.server.poll_timeout().is_some_and(|d| d <= now) {
            self.server.handle_timeout(now, &mut self.store);
            self.after_server();
        }
        // In user order, as if every client were polled.
        let due: BTreeSet<UserId> = self.timers.iter().take_while(|(t, _)| *t <= now).map(|(_, u)| u.clone()).collect();
        for u in due {
            let cnow = self.client_now(&u);
            if let Some(c) = self.devices.get_mut(&u).and_then(|d| d.client.as_mut()) {
                c.handle_timeout(cnow);
            }
            self.after_client(&u);
        }
        self.check_safety();
        true
    }

    /// Steps until simulated time `until_ms` (events at that time included).
    pub fn run_until(&mut self, until_ms: u64) {
        while self.next_time().is_some_and(|t| t <= until_ms) {
            self.step();
        }
        self.now_ms = self.now_ms.max(until_ms);
        // Time passed without events: the retention sweep still looks.
        if self.now_ms >= self.next_sweep_ms {
            self.next_sweep_ms = self.now_ms + SWEEP_EVERY_MS;
            self.sweep();
        }
    }

    /// Advances simulated time by `ms`, running everything due.
    pub fn run_for(&mut self, ms: u64) {
        let until = self.now_ms + ms;
        self.run_until(until);
    }

    /// Every fault healed (knobs and rules off, partitions healed), everyone
    /// online, then run for at most `budget_ms` of simulated time or until the
    /// system is idle (no frames in flight, nothing waiting in any mailbox,
    /// outbox or media queue), and then on for [`World::presence_settle_ms`]
    /// (within the budget) so presence can converge.
    pub fn quiesce(&mut self, budget_ms: u64) {
        self.set_faults(false);
        self.clear_frame_faults();
        self.heal();
        self.note("quiesce", format!("budget_ms={budget_ms}"));
        let users: Vec<UserId> = self.devices.keys().cloned().collect();
        for u in users {
            if self.devices.get(&u).is_some_and(|d| d.conn.is_none()) {
                self.connect(&u);
            } else if let Some(d) = self.devices.get_mut(&u) {
                d.want_online = true;
            }
        }
        let until = self.now_ms + budget_ms;
        while self.next_time().is_some_and(|t| t <= until) {
            self.step();
            if self.queue.is_empty() && self.server.mailbox_total() == 0 && self.clients_idle() {
                break;
            }
        }
        let settle = (self.now_ms + self.presence_settle_ms()).min(until);
        self.run_until(settle);
    }

    /// End-of-run checks; returns every violation of the run: at-least-once,
    /// empty mailboxes, presence convergence, removed members' key material
    /// against later group messages, and a last retention and plaintext sweep.
    pub fn finish(&mut self) -> &[Violation] {
        let now = self.now_ms;
        let mut v = self.history.check_at_least_once(now);
        let left = self.server.mailbox_total();
        if left > 0 {
            v.push(Violation {
                invariant: names::MAILBOXES_EMPTY,
                at_ms: now,
                detail: format!("{left} entries still queued after quiesce"),
            });
        }
        self.violations.extend(v);
        let presence = self.check_presence();
        self.violations.extend(presence);
        self.check_removed_members();
        self.sweep();
        self.check_store_writes();
        &self.violations
    }

    /// A multi-line description of where things stand, for failure messages.
    pub fn describe(&self) -> String {
        let mut out = format!("t={} next={:?} queued={}\n", self.now_ms, self.next_time(), self.queue.len());
        for (u, d) in &self.devices {
            out += &format!(
                "  {u:?}: conn={:?} want_online={} server_online={} outbox={:?} media={:?} timeout={:?} mailbox={}\n",
                d.conn,
                d.want_online,
                self.server.is_online(&device_of(u)),
                d.client.as_ref().map(Client::outbox_len),
                d.client.as_ref().map(Client::media_pending),
                d.client.as_ref().and_then(Client::poll_timeout),
                self.server.mailbox_len(&device_of(u)),
            );
        }
        for (a, e) in self.server.mailbox_entries() {
            out += &format!("  queued for {a:?}: seq {} {:?}\n", e.seq, e.key);
        }
        out
    }

    fn clients_idle(&self) -> bool {
        self.devices
            .values()
            .all(|d| d.client.as_ref().is_none_or(|c| c.outbox_len() == 0 && c.media_pending() == (0, 0)))
    }

    // ----- plumbing -----

    /// Appends a trace line (when tracing).
    fn note(&mut self, event: &str, detail: String) {
        if self.config.trace {
            self.trace.push(TraceEvent { at_ms: self.now_ms, event: event.to_string(), detail });
        }
    }

    /// `user`'s last save, encoded now if the client changed since the last
    /// encoding (see [`WorldConfig::verify_saves`]). `None` for an unknown user.
    fn saved_state(&mut self, user: &UserId) -> Option<SavedClient> {
        let d = self.devices.get_mut(user)?;
        if d.save_pending {
            if let Some(c) = d.client.as_ref() {
                d.saved = c.save();
            }
            d.save_pending = false;
        }
        Some(d.saved.clone())
    }

    /// Re-enters `user`'s next deadline in [`World::timers`] after its
    /// client was called, replaced or its clock moved.
    fn refresh_timer(&mut self, user: &UserId) {
        let Some(d) = self.devices.get(user) else { return };
        let deadline = d.client.as_ref().and_then(Client::poll_timeout).map(|t| self.to_world_time(user, t));
        if deadline == d.timer {
            return;
        }
        if let Some(old) = d.timer {
            self.timers.remove(&(old, user.clone()));
        }
        if let Some(new) = deadline {
            self.timers.insert((new, user.clone()));
        }
        if let Some(d) = self.devices.get_mut(user) {
            d.timer = deadline;
        }
    }

    fn to_world_time(&self, user: &UserId, client_ms: u64) -> u64 {
        let offset = self.clock_offsets.get(user).copied().unwrap_or(0);
        client_ms.saturating_add_signed(offset.saturating_neg())
    }

    fn schedule(&mut self, delay_ms: u64, ev: Event) {
        let key = (self.now_ms + delay_ms, self.next_event);
        self.next_event += 1;
        self.queue.insert(key, ev);
    }

    fn is_cut(&self, user: &UserId, direction: Direction) -> bool {
        self.partitions.get(user).is_some_and(|d| d.is_none_or(|d| d == direction))
    }

    /// Schedules a frame across the network: partitions, then the
    /// background knobs and every matching targeted rule (while faults are on).
    fn transmit(&mut self, ev: Event) {
        let (user, direction, kind, delivery_kind, size, presence) = match &ev {
            Event::ToServer { conn, kind, bytes } => {
                let Some(user) = self.conn_owner.get(conn).cloned() else { return };
                (user, Direction::ToServer, *kind, None, bytes.len(), None)
            }
            Event::ToClient { user, frame, .. } => {
                let size = if self.config.trace { wire::encode(frame.as_ref()).len() } else { 0 };
                let presence = match frame.as_ref() {
                    ServerFrame::Presence { user: target, .. } => Some(target.clone()),
                    _ => None,
                };
                (user.clone(), Direction::ToClient, frame.kind(), frame.delivery_kind(), size, presence)
            }
            Event::Connect { .. } | Event::PartitionTimeout { .. } => return self.schedule(0, ev),
        };
        let what = format!(
            "user={} dir={} kind={} size={size}",
            user.as_str(),
            direction.name(),
            delivery_kind.unwrap_or(kind)
        );
        let mut faulted = false;
        if self.is_cut(&user, direction) {
            self.history.counts.frames_partitioned += 1;
            self.note("frame", format!("{what} fate=partitioned"));
            self.excuse_presence(&user, presence.as_ref());
            return;
        }
        let f = self.config.faults;
        let mut drop = false;
        let mut copies = 1u32;
        let mut extra_ms = 0u64;
        if self.faults_on {
            if f.drop_per_mille > 0 && self.rng.next_u32() % 1000 < f.drop_per_mille {
                drop = true;
            }
            if !drop && f.duplicate_per_mille > 0 && self.rng.next_u32() % 1000 < f.duplicate_per_mille {
                copies += 1;
                self.history.counts.frames_duplicated += 1;
            }
            for index in self.frame_faults.clone() {
                let Some(count) = self.history.counts.frame_faults.get(index) else { continue };
                if !count.rule.matches(kind, delivery_kind, direction, &user) {
                    continue;
                }
                let rule = count.rule.clone();
                let rolled_drop = rule.drop_per_mille > 0 && self.rng.next_u32() % 1000 < rule.drop_per_mille;
                let rolled_dup = rule.duplicate_per_mille > 0 && self.rng.next_u32() % 1000 < rule.duplicate_per_mille;
                let Some(count) = self.history.counts.frame_faults.get_mut(index) else { continue };
                count.matched += 1;
                if rolled_drop && !drop {
                    drop = true;
                    count.dropped += 1;
                }
                if rolled_dup && !drop {
                    copies += 1;
                    count.duplicated += 1;
                    self.history.counts.frames_duplicated += 1;
                }
                if rule.delay_ms > 0 && !drop {
                    extra_ms = extra_ms.saturating_add(rule.delay_ms);
                    count.delayed += 1;
                }
            }
        }
        if drop {
            self.history.counts.frames_dropped += 1;
            self.note("frame", format!("{what} fate=dropped"));
            self.excuse_presence(&user, presence.as_ref());
            return;
        }
        if extra_ms > 0 {
            self.history.counts.frames_delayed += 1;
        }
        if copies > 1 || extra_ms > 0 {
            faulted = true;
        }
        if faulted {
            self.excuse_presence(&user, presence.as_ref());
        }
        for copy in 0..copies {
            let spread = f.latency_max_ms.saturating_sub(f.latency_min_ms);
            let jitter = if spread > 0 && self.faults_on { self.rng.next_u64() % (spread + 1) } else { 0 };
            let delay = f.latency_min_ms + jitter + extra_ms;
            let fate = if copy == 0 { "sent" } else { "duplicate" };
            self.note("frame", format!("{what} fate={fate} delay={delay}"));
            self.schedule(delay, ev_clone(&ev));
        }
    }

    fn run_event(&mut self, ev: Event) {
        let now = self.now_ms;
        match ev {
            Event::ToServer { conn, kind, bytes } => {
                let Some(user) = self.conn_owner.get(&conn).cloned() else { return };
                self.history.counts.frames_delivered += 1;
                let noted = self.before_server_frame(conn, kind, &bytes);
                let refused_before = self.server.stats().errors.values().sum::<u64>();
                self.server.handle_bytes(conn, &bytes, now, &mut self.store);
                let refused = self.server.stats().errors.values().sum::<u64>() > refused_before;
                if let (Some(frame), false) = (noted, refused) {
                    // Before the drain: the server's replies are judged under it.
                    self.server_frame_accepted(&user, frame);
                }
                self.after_server();
                self.subscribe_conn = None;
            }
            Event::ToClient { user, conn, frame, reply } => {
                let live = self.devices.get(&user).is_some_and(|d| d.conn == Some(conn));
                if live {
                    self.history.counts.frames_delivered += 1;
                    self.before_client_frame(&user, &frame, reply);
                    let cnow = self.client_now(&user);
                    if let Some(c) = self.devices.get_mut(&user).and_then(|d| d.client.as_mut()) {
                        c.handle_frame(*frame, cnow);
                    }
                    self.after_client(&user);
                }
            }
            Event::Connect { user } => {
                if self.partitions.contains_key(&user) {
                    // No connection gets through a cut; `heal` reconnects.
                    return;
                }
                let Some(d) = self.devices.get_mut(&user) else { return };
                if !d.want_online || d.conn.is_some() || d.client.is_none() {
                    return;
                }
                let conn = ConnId(self.next_conn);
                self.next_conn += 1;
                d.conn = Some(conn);
                self.conn_owner.insert(conn, user.clone());
                let cnow = self.client_now(&user);
                if let Some(c) = self.devices.get_mut(&user).and_then(|d| d.client.as_mut()) {
                    c.handle_connected(cnow);
                }
                self.note("connect", format!("user={} conn={}", user.as_str(), conn.0));
                self.server.handle_connect(conn, now);
                self.after_client(&user);
                self.after_server();
            }
            Event::PartitionTimeout { user, epoch } => {
                if epoch > self.partition_epoch || !self.partitions.contains_key(&user) {
                    return;
                }
                if self.devices.get(&user).is_some_and(|d| d.conn.is_some()) {
                    self.history.counts.partition_timeouts += 1;
                    self.note("partition-timeout", format!("user={}", user.as_str()));
                    self.drop_connection(&user);
                }
            }
        }
    }

    fn drop_client_side(&mut self, user: &UserId) {
        let cnow = self.client_now(user);
        let Some(d) = self.devices.get_mut(user) else { return };
        if let Some(conn) = d.conn.take() {
            self.conn_owner.remove(&conn);
            if let Some(c) = d.client.as_mut() {
                c.handle_disconnected(cnow);
            }
        }
        self.after_client(user);
    }

    fn drop_connection(&mut self, user: &UserId) {
        let conn = self.devices.get(user).and_then(|d| d.conn);
        self.drop_client_side(user);
        if let Some(conn) = conn {
            let now = self.now_ms;
            self.server.handle_disconnect(conn, now, &mut self.store);
            self.presence_offline(user);
            self.after_server();
        }
    }

    /// The driver's half of the server's call order: drain outputs.
    fn after_server(&mut self) {
        while let Some(out) = self.server.poll_output() {
            match out {
                ServerOutput::Frame { conn, frame } => {
                    let owner = self.conn_owner.get(&conn).cloned();
                    let reply = self.observe_server_frame(owner.as_ref(), conn, &frame);
                    if let Some(user) = owner {
                        self.transmit(Event::ToClient { user, conn, frame: Box::new(frame), reply });
                    }
                }
                ServerOutput::Close { conn, .. } => {
                    if let Some(user) = self.conn_owner.get(&conn).cloned() {
                        self.note("server-close", format!("user={}", user.as_str()));
                        self.drop_client_side(&user);
                        self.presence_offline(&user);
                        if self.devices.get(&user).is_some_and(|d| d.want_online) {
                            let after = self.config.reconnect_after_ms;
                            self.schedule(after, Event::Connect { user });
                        }
                    }
                }
            }
        }
    }

    /// The driver's half of the client's call order: save if dirty, then
    /// drain transmits and app events.
    fn after_client(&mut self, user: &UserId) {
        let now = self.now_ms;
        let Some(d) = self.devices.get_mut(user) else { return };
        let Some(c) = d.client.as_mut() else { return };
        if !self.config.verify_saves {
            // The dirty flag stays set until the save is encoded.
            d.save_pending |= c.is_dirty();
        } else if c.is_dirty() {
            d.saved = c.save();
            d.save_pending = false;
            if let Err(e) = Client::restore(d.config.clone(), &d.saved) {
                self.violations.push(Violation {
                    invariant: "client-save-restorable",
                    at_ms: now,
                    detail: format!("{user:?}'s saved state does not restore: {e}; state: {c:?}"),
                });
            }
        } else if c.save() != d.saved {
            // Lazy saving (above) trusts the flag; here it is checked.
            self.violations.push(Violation {
                invariant: "client-dirty-flag",
                at_ms: now,
                detail: format!("{user:?}'s state changed but its client did not report itself dirty; state: {c:?}"),
            });
        }
        // A group message is sealed, for the sender's view as it is now, when
        // its frame is queued, which may be before the pacer lets it go.
        let sealed: Vec<ClientFrame> = c
            .queued_transmits()
            .filter(|f| {
                matches!(f, ClientFrame::GroupSend { message_id, .. } if !self.history.group_sends.contains_key(message_id))
            })
            .cloned()
            .collect();
        let mut frames = Vec::new();
        while let Some(f) = c.poll_transmit() {
            frames.push(f);
        }
        let mut events = Vec::new();
        while let Some(e) = c.poll_event() {
            events.push(e);
        }
        let conn = d.conn;
        self.refresh_timer(user);
        self.update_removed_copies(user);
        for e in events {
            self.note_app_event(user, &e);
            let v = match e {
                AppEvent::Message { id, body, .. } => {
                    let mut v = self.history.app_received(user, id, Some(&body), now);
                    v.extend(self.check_group_reader(user, id));
                    v
                }
                AppEvent::Media { id, body, .. } => {
                    self.history.counts.media_deliveries += 1;
                    self.history.app_received(user, id, Some(&body), now)
                }
                // Being told a message could not be read is also hearing of
                // it: after the message itself, it is a duplicate to the user.
                AppEvent::Undecryptable { id, .. } => self.history.app_received(user, id, None, now),
                AppEvent::Status { id, peer, status } => self.history.status_shown(id, &peer, status, now),
                AppEvent::Presence { user: target, last_seen } => {
                    self.history.counts.presence_shown += 1;
                    self.history.presence.shown.insert((user.clone(), target), last_seen);
                    Vec::new()
                }
                _ => Vec::new(),
            };
            self.violations.extend(v);
        }
        for f in sealed.iter().chain(&frames) {
            self.observe_client_frame(user, f);
        }
        if let Some(conn) = conn {
            for f in frames {
                let kind = f.kind();
                let bytes = wire::encode(&f);
                self.transmit(Event::ToServer { conn, kind, bytes });
            }
        }
    }

    fn note_app_event(&mut self, user: &UserId, e: &AppEvent) {
        if !self.config.trace {
            return;
        }
        let u = user.as_str();
        let detail = match e {
            AppEvent::Message { from, group, id, body, .. } => {
                format!("user={u} event=message from={} group={group:?} id={id:?} len={}", from.as_str(), body.len())
            }
            AppEvent::Media { from, id, body, .. } => {
                format!("user={u} event=media from={} id={id:?} len={}", from.as_str(), body.len())
            }
            AppEvent::Undecryptable { from, id, .. } => {
                format!("user={u} event=undecryptable from={} id={id:?}", from.as_str())
            }
            AppEvent::Status { id, peer, status } => {
                format!("user={u} event=status id={id:?} peer={} status={status:?}", peer.as_str())
            }
            AppEvent::GroupUpdated { group, version } => format!("user={u} event=group-updated {group:?} v{version}"),
            AppEvent::GroupChangeRejected { group, version, .. } => {
                format!("user={u} event=group-change-rejected {group:?} v{version}")
            }
            AppEvent::IdentityChanged { user: peer } => {
                format!("user={u} event=identity-changed peer={}", peer.as_str())
            }
            AppEvent::SessionFailed { peer, .. } => format!("user={u} event=session-failed peer={}", peer.as_str()),
            AppEvent::Presence { user: target, last_seen } => {
                format!("user={u} event=presence of={} last_seen={last_seen:?}", target.as_str())
            }
            AppEvent::ServerError { code, .. } => format!("user={u} event=server-error code={code:?}"),
        };
        let event = if matches!(e, AppEvent::Status { .. }) { "status" } else { "app" };
        self.note(event, detail);
    }

    fn check_safety(&mut self) {
        // No plaintext in the server's durable store: every value written
        // since the last step (see `watched` for why that suffices). The
        // mailbox in memory holds exactly what was stored; it is swept once
        // a second below.
        self.check_store_writes();
        if self.now_ms >= self.next_sweep_ms {
            self.next_sweep_ms = self.now_ms + SWEEP_EVERY_MS;
            self.sweep();
        }
    }

    /// Searches every value the server wrote since the last call for sent
    /// plaintexts; one violation per leaking write.
    fn check_store_writes(&mut self) {
        for (t, (key, value)) in self.store.take_written() {
            if let Some(id) = self.history.find_plaintext(&value) {
                self.violations.push(Violation {
                    invariant: names::NO_PLAINTEXT,
                    at_ms: self.now_ms,
                    detail: format!("the plaintext of {id:?} is in the server's {t} table (key {})", hex_prefix(&key)),
                });
            }
        }
    }

    /// Records the admin's view of `group` as the truth of its version.
    fn record_group_version(&mut self, admin: &UserId, group: GroupId) {
        let Some((version, members)) = self.client(admin).and_then(|c| c.group(&group)) else { return };
        let truth = self.history.groups.entry(group).or_default();
        truth.admin = Some(admin.clone());
        truth.versions.insert(version, members.into_iter().collect());
    }
}

fn ev_clone(ev: &Event) -> Event {
    match ev {
        Event::ToServer { conn, kind, bytes } => Event::ToServer { conn: *conn, kind, bytes: bytes.clone() },
        Event::ToClient { user, conn, frame, reply } => {
            Event::ToClient { user: user.clone(), conn: *conn, frame: frame.clone(), reply: *reply }
        }
        Event::Connect { user } => Event::Connect { user: user.clone() },
        Event::PartitionTimeout { user, epoch } => Event::PartitionTimeout { user: user.clone(), epoch: *epoch },
    }
}

/// The first bytes of a store key in hex, enough to tell rows apart in a report.
fn hex_prefix(key: &[u8]) -> String {
    key.iter().take(16).map(|b| format!("{b:02x}")).collect()
}

fn names_of(users: &[UserId]) -> String {
    let names: Vec<&str> = users.iter().map(UserId::as_str).collect();
    names.join(",")
}

/// A short, unique, recognisable plaintext for message `n` of a run, long
/// enough that finding it by accident in ciphertext is impossible.
pub fn plaintext(seed: u64, n: u64) -> Vec<u8> {
    format!("plaintext #{n} of run {seed:016x}").into_bytes()
}

/// Deterministic attachment bytes of `len` for message `n` of a run: a
/// seeded stream, so no two attachments share their first bytes.
pub fn media_bytes(seed: u64, n: u64, len: usize) -> Vec<u8> {
    let mut rng = ChaCha20Rng::seed_from_u64(seed ^ n.rotate_left(32) ^ 0x006d_6564_6961);
    let mut out = vec![0u8; len];
    rng.fill_bytes(&mut out);
    out
}

/// The address of `user`'s one device.
pub fn device_of(user: &UserId) -> DeviceAddress {
    DeviceAddress::new(user.clone(), DeviceId(1))
}

impl std::fmt::Debug for World {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("World")
            .field("now_ms", &self.now_ms)
            .field("steps", &self.steps)
            .field("violations", &self.violations.len())
            .finish_non_exhaustive()
    }
}
