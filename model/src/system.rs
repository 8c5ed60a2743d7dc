//! The explored system: the real [`Server`] and [`Client`]s of the core, a
//! network of in-flight frames, the fault budget, the apps' bounded history
//! and the adversary's record — and [`Exec`], the one place that steps them.
//!
//! # How a client lives in a state
//! A model state must be cloned and hashed for every successor. The server is
//! (`Server: Clone`, [`Server::hash_state`]). A client is not `Clone`, and its
//! [`SavedClient`] holds only what survives a crash — not its connection
//! state (authenticated or not, what it sent on this connection and when,
//! pending bundle requests). So a state keeps each client as a *checkpoint*
//! (a `SavedClient`) plus the inputs it handled since; stepping restores the
//! checkpoint and replays the inputs (the client is deterministic), then
//! handles the new one. Every time a client's connection ends — disconnect,
//! crash, server crash — its connection state is gone anyway, and the current
//! save becomes the new checkpoint with an empty log. (The one difference to a
//! long-lived process is the client's bundle-fetch rate window and request
//! counter, which restart from zero; no model comes near the limit of 24
//! fetches a minute.)
//!
//! The log says how to rebuild a client, not what it is: a state is named by
//! the client's save and a hash of its connection state
//! ([`Client::hash_connection_state`]), so two paths that reached the same
//! device (one of them through an input that changed nothing, or in another
//! order) are one state. Only the quiesce phase's fast path, which skips the
//! saves, names a client by its checkpoint and log.
//!
//! # Durability
//! After each call the client is saved before its frames and events are
//! processed, as the client's call-order contract requires, so a crash of a
//! client restores exactly the state its last outputs came from.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;

use bluetick_core::client::content::split_prekey;
use bluetick_core::client::{
    AppEvent, Client, ClientBug, ClientBugs, ClientConfig, DeliveryState, SavedClient, PRIMARY_DEVICE,
};
use bluetick_core::ids::{DeviceAddress, GroupId, MessageId, UserId};
use bluetick_core::server::machine::Queued;
use bluetick_core::server::{ConnId, Server, ServerConfig, ServerOutput};
use bluetick_core::store::{MemoryStore, Store, Table};
use bluetick_core::wire::{self, ClientFrame, Delivery, Envelope, EnvelopeKind, ServerFrame, SignedGroupChange};
use bluetick_crypto::ratchet::RatchetMessage;
use bluetick_crypto::xeddsa::Signature;

use crate::config::{AppStep, ModelConfig, GHOST, USER_NAMES};
use crate::properties::{Check, Flags};

/// Start of model time: 2026-01-01T00:00:00Z, as in the core's `World`.
pub const EPOCH_MS: u64 = 1_767_225_600_000;

/// Steps the warm-up may take before it gives up: the handshake, prekey
/// uploads and a few session-establishing messages take well under 200.
pub const WARM_UP_STEPS_MAX: usize = 2_000;

/// An encoded frame in flight (client frames upwards, server frames downwards).
pub type Frame = Arc<[u8]>;

/// Which way a frame travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Dir {
    /// Client to server.
    Up,
    /// Server to client.
    Down,
}

/// One direction of one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Chan {
    /// Client index.
    pub client: u8,
    /// The client's connection number (its incarnation count).
    pub conn: u32,
    /// Direction.
    pub dir: Dir,
}

/// The server's name for a client's connection.
fn conn_id(client: u8, conn: u32) -> ConnId {
    ConnId(((u64::from(client) + 1) << 32) | u64::from(conn))
}

fn conn_owner(id: ConnId) -> (u8, u32) {
    (((id.0 >> 32).saturating_sub(1)) as u8, (id.0 & 0xffff_ffff) as u32)
}

/// An app command as handed to a client.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum AppInput {
    /// `send_text`.
    Send {
        /// Recipient.
        to: UserId,
        /// Body.
        body: Vec<u8>,
    },
    /// `create_group`.
    CreateGroup {
        /// Members.
        members: Vec<UserId>,
    },
    /// `change_group` removing one member.
    Remove {
        /// Group.
        group: GroupId,
        /// Member.
        member: UserId,
    },
    /// `send_group`.
    SendGroup {
        /// Group.
        group: GroupId,
        /// Body.
        body: Vec<u8>,
    },
    /// `mark_read`.
    Read {
        /// Peer.
        peer: UserId,
    },
    /// `mark_group_read`.
    ReadGroup {
        /// Group.
        group: GroupId,
    },
}

/// One input a client handled, kept to rebuild its connection state.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Input {
    /// `handle_connected`.
    Connected(u64),
    /// `handle_frame` with an encoded server frame.
    Frame(Frame, u64),
    /// `handle_timeout`.
    Timeout(u64),
    /// An app command.
    App(AppInput, u64),
}

/// What an app command returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Returned {
    Nothing,
    Message(MessageId),
    Group(GroupId),
}

/// A client in a state: checkpoint, inputs since, and cached facts about it.
#[derive(Clone)]
pub struct ClientSlot {
    base: SavedClient,
    log: Vec<Input>,
    /// The save after the last input: what a crash restores and a thief takes.
    saved: SavedClient,
    /// The live connection's number.
    conn: Option<u32>,
    next_conn: u32,
    /// `poll_timeout` after the last input.
    timeout: Option<u64>,
    /// The hash of the client's connection state
    /// ([`Client::hash_connection_state`]) when `saved` is current; then
    /// `saved` and it identify the slot, and two paths that reached the same
    /// device are one state. `None` (the quiesce phase's fast path does not
    /// save): the slot is identified by `base` and `log`, exactly.
    conn_state: Option<u64>,
    /// The slot's identity, hashed once.
    digest: u64,
}

impl ClientSlot {
    fn new(saved: SavedClient) -> Self {
        let mut s = ClientSlot {
            base: saved.clone(),
            log: Vec::new(),
            saved,
            conn: None,
            next_conn: 0,
            timeout: None,
            conn_state: None,
            digest: 0,
        };
        s.rehash();
        s
    }

    fn rehash(&mut self) {
        let mut h = DefaultHasher::new();
        match self.conn_state {
            Some(conn_state) => {
                self.saved.hash(&mut h);
                conn_state.hash(&mut h);
            }
            None => {
                self.base.hash(&mut h);
                self.log.hash(&mut h);
            }
        }
        self.conn.hash(&mut h);
        self.next_conn.hash(&mut h);
        self.digest = h.finish();
    }

    /// The device's current persistent state.
    pub fn saved(&self) -> &SavedClient {
        &self.saved
    }

    /// Whether it has a connection.
    pub fn is_connected(&self) -> bool {
        self.conn.is_some()
    }

    /// When its timer fires next, if it has one.
    pub fn timeout(&self) -> Option<u64> {
        self.timeout
    }

    /// Inputs since the last checkpoint (what stepping replays).
    pub fn log_len(&self) -> usize {
        self.log.len()
    }
}

/// The server in a state: the machine, its store, and its hash.
#[derive(Clone)]
pub struct ServerSlot {
    server: Server,
    store: MemoryStore,
    incarnation: u32,
    digest: u64,
}

impl ServerSlot {
    fn rehash(&mut self) {
        let mut h = DefaultHasher::new();
        self.server.hash_state(&mut h);
        self.store.hash(&mut h);
        self.incarnation.hash(&mut h);
        self.digest = h.finish();
    }

    /// The server.
    pub fn server(&self) -> &Server {
        &self.server
    }

    /// Its durable store.
    pub fn store(&self) -> &MemoryStore {
        &self.store
    }
}

/// A conversation an app can open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Conv {
    /// 1:1 with this client.
    Direct(u8),
    /// The group with this number.
    Group(u8),
}

/// A message an app sent.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SentMsg {
    /// Sender index.
    pub from: u8,
    /// Intended recipients.
    pub to: BTreeSet<u8>,
    /// Its number in the run (1-based), which names its body.
    pub n: u32,
    /// Group number, for a group message.
    pub group: Option<u8>,
    /// Sent to a group after a member was removed from it.
    pub after_removal: bool,
}

/// What happened, as the apps and the checks need it. Sets and counters
/// only, bounded by the scripts, so states stay finite.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct History {
    /// Messages apps sent.
    pub sent: BTreeMap<MessageId, SentMsg>,
    /// (user, message) → times its app was shown it (saturating at 2).
    pub received: BTreeMap<(u8, MessageId), u8>,
    /// Shown but not yet read.
    pub unread: BTreeSet<(u8, Conv, MessageId)>,
    /// (reader, message) read.
    pub read: BTreeSet<(u8, MessageId)>,
    /// (message, recipient) → the status the sender's app last showed.
    pub status: BTreeMap<(MessageId, u8), DeliveryState>,
    /// Messages the server acked (the sender showed Sent or later).
    pub acked: BTreeSet<MessageId>,
    /// (message, recipient) reported expired.
    pub expired: BTreeSet<(MessageId, u8)>,
    /// (owner, one-time prekey id) the server handed out.
    pub prekeys: BTreeSet<(u8, u32)>,
    /// (device, mailbox seq) handed out at least once (read by a guard only).
    pub delivered_seqs: Unhashed<BTreeSet<(u8, u64)>>,
    /// (recipient, sender, ratchet key) of 1:1 envelopes delivered.
    pub ratchet_keys: BTreeSet<(u8, u8, [u8; 32])>,
    /// (sender, ratchet key, message number) → hash of the ciphertext sent under it.
    pub message_keys: BTreeMap<(u8, [u8; 32], u32), u64>,
    /// Envelopes each device was handed, first copies only, in order.
    pub envelopes: Vec<(u8, Frame)>,
    /// Groups created, in order, with their admin.
    pub groups: Vec<(GroupId, u8)>,
    /// Members each group's admin ever signed in.
    pub signed_members: BTreeMap<GroupId, BTreeSet<u8>>,
    /// (group, member) removals the admin made.
    pub removed: BTreeSet<(GroupId, u8)>,
    /// A removed member's state just before it learned of its removal (and
    /// dropped the group's keys): what a malicious removed member keeps.
    pub kept: BTreeMap<(GroupId, u8), SavedClient>,
    /// Broken properties and reached guards.
    pub flags: Flags,
}

/// Bookkeeping only guards read: carried along a path but left out of the
/// state's identity, so it never tells apart states that behave the same.
#[derive(Debug, Clone, Default)]
pub struct Unhashed<T>(pub T);

impl<T> Hash for Unhashed<T> {
    fn hash<H: Hasher>(&self, _: &mut H) {}
}

impl<T> PartialEq for Unhashed<T> {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl<T> Eq for Unhashed<T> {}

/// The adversary's stolen device, if it stole one.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Thief {
    /// Victim index.
    pub victim: u8,
    /// The victim's complete persistent state at the theft.
    pub stolen: SavedClient,
    /// How many envelopes `History::envelopes` held at the theft.
    pub envelopes_before: usize,
    /// Peer ratchet keys the victim had received before the theft.
    pub peer_keys_before: BTreeSet<[u8; 32]>,
    /// The victim's own ratchet keys used before it received a peer key
    /// that is new since the theft (`Some` from that moment: the first half
    /// of a DH ratchet round trip the thief did not see).
    pub own_keys_at_new_peer_key: Option<BTreeSet<[u8; 32]>>,
    /// The round trip completed: a peer received a message from the victim
    /// under a ratchet key the victim drew after that — the victim healed.
    pub healed: bool,
    /// The victim was rolled back to the stolen state.
    pub restored: bool,
}

impl fmt::Debug for Thief {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Thief").field("victim", &self.victim).field("healed", &self.healed).finish_non_exhaustive()
    }
}

/// One explored state.
#[derive(Clone)]
pub struct MState {
    /// Model time.
    pub now: u64,
    /// The server.
    pub server: Arc<ServerSlot>,
    /// Every account's device (active clients, then the ghost if any).
    pub clients: Vec<Arc<ClientSlot>>,
    /// Frames in flight, per connection direction.
    pub net: BTreeMap<Chan, VecDeque<Frame>>,
    /// Faults still allowed.
    pub budget: crate::config::FaultBudget,
    /// Next script step per active client.
    pub script: Vec<u8>,
    /// History.
    pub hist: Arc<History>,
    /// The thief's loot.
    pub thief: Option<Arc<Thief>>,
    /// The ghost was injected.
    pub ghost_injected: bool,
    /// Backup restores left.
    pub restores_left: u8,
}

impl Hash for MState {
    fn hash<H: Hasher>(&self, h: &mut H) {
        self.now.hash(h);
        self.server.digest.hash(h);
        for c in &self.clients {
            c.digest.hash(h);
        }
        self.net.hash(h);
        self.budget.hash(h);
        self.script.hash(h);
        self.hist.hash(h);
        self.thief.hash(h);
        self.ghost_injected.hash(h);
        self.restores_left.hash(h);
    }
}

impl PartialEq for MState {
    fn eq(&self, other: &Self) -> bool {
        self.now == other.now
            && self.server.digest == other.server.digest
            && self.clients.iter().map(|c| c.digest).eq(other.clients.iter().map(|c| c.digest))
            && self.net == other.net
            && self.budget == other.budget
            && self.script == other.script
            && self.hist == other.hist
            && self.thief == other.thief
            && self.ghost_injected == other.ghost_injected
            && self.restores_left == other.restores_left
    }
}

impl fmt::Debug for MState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let frames: usize = self.net.values().map(VecDeque::len).sum();
        f.debug_struct("MState")
            .field("t_ms", &self.now.saturating_sub(EPOCH_MS))
            .field("frames_in_flight", &frames)
            .field("budget", &self.budget)
            .field("script", &self.script)
            .field("flags", &self.hist.flags)
            .finish_non_exhaustive()
    }
}

impl MState {
    /// Frames in flight.
    pub fn frames_in_flight(&self) -> usize {
        self.net.values().map(VecDeque::len).sum()
    }
}

/// What every message body starts with.
const BODY_PREFIX: &[u8] = b"model plaintext #";

/// A message body that names its message and cannot turn up in ciphertext by chance.
pub fn body_of(seed: u64, n: u32) -> Vec<u8> {
    let mut b = BODY_PREFIX.to_vec();
    b.extend_from_slice(format!("{n} of run {seed:016x}").as_bytes());
    b
}

/// The name of account `i`, for traces.
pub fn name(i: usize) -> &'static str {
    USER_NAMES.get(i).copied().unwrap_or("?")
}

fn index_of(u: &UserId) -> Option<u8> {
    USER_NAMES.iter().position(|n| *n == u.as_str()).map(|i| i as u8)
}

fn hash_bytes(b: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    b.hash(&mut h);
    h.finish()
}

/// The ratchet header key and number of a 1:1 ciphertext.
fn ratchet_header(kind: EnvelopeKind, ciphertext: &[u8]) -> Option<([u8; 32], u32)> {
    let message = match kind {
        EnvelopeKind::Message => RatchetMessage::from_bytes(ciphertext).ok()?,
        EnvelopeKind::PreKey => split_prekey(ciphertext).ok()?.1,
        EnvelopeKind::Group | EnvelopeKind::Media => return None,
    };
    Some((*message.header.dh.as_bytes(), message.header.n))
}

/// Static parts of the model every step needs.
#[derive(Debug, Clone)]
pub struct Setup {
    /// The configuration.
    pub config: ModelConfig,
    /// Per account, its client configuration.
    pub client_configs: Vec<ClientConfig>,
    /// The server configuration.
    pub server_config: ServerConfig,
    /// Per account, its client configuration during the warm-up: without
    /// bug switches (see [`Exec::initial`]).
    warm_up_configs: Vec<ClientConfig>,
    /// Every account's user id, by index ([`USER_NAMES`]).
    users: Vec<UserId>,
    /// Whether the history keeps the envelopes each device received and the
    /// ratchet keys seen and used ([`Setup::records_keys`]).
    records_keys: bool,
}

/// Why a model cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SetupError {
    /// An account name is not a valid user id.
    #[error("account name {name:?} is not a valid user id: {detail}")]
    BadName {
        /// The name.
        name: &'static str,
        /// Why.
        detail: String,
    },
    /// More active clients than names.
    #[error("{clients} active clients, at most {max} are possible")]
    TooManyClients {
        /// Requested.
        clients: usize,
        /// [`crate::config::ACTIVE_CLIENTS_MAX`].
        max: usize,
    },
    /// A script per active client is needed.
    #[error("{scripts} scripts for {clients} clients")]
    ScriptCount {
        /// Scripts given.
        scripts: usize,
        /// Active clients.
        clients: usize,
    },
}

impl Setup {
    /// Derives client and server configurations from `config`.
    pub fn new(config: ModelConfig) -> Result<Self, SetupError> {
        if config.clients > crate::config::ACTIVE_CLIENTS_MAX {
            return Err(SetupError::TooManyClients { clients: config.clients, max: crate::config::ACTIVE_CLIENTS_MAX });
        }
        if config.scripts.len() != config.clients {
            return Err(SetupError::ScriptCount { scripts: config.scripts.len(), clients: config.clients });
        }
        let users = USER_NAMES
            .iter()
            .map(|n| UserId::new(n).map_err(|e| SetupError::BadName { name: n, detail: e.to_string() }))
            .collect::<Result<Vec<_>, _>>()?;
        let accounts = config.clients + usize::from(config.adversary.inject_ghost);
        let client_configs: Vec<ClientConfig> = (0..accounts)
            .map(|i| {
                let i = if i >= config.clients { GHOST } else { i };
                ClientConfig {
                    suite: config.suite,
                    resend_after_ms: config.timing.resend_after_ms,
                    prekey_batch: config.prekey_batch,
                    bugs: config.client_bugs.clone(),
                    ..ClientConfig::new(users.get(i).cloned().unwrap_or_else(|| users_fallback(&users)), PRIMARY_DEVICE)
                }
            })
            .collect();
        let server_config = ServerConfig {
            ack_timeout_ms: config.timing.ack_timeout_ms,
            ttl_text_ms: config.timing.ttl_ms,
            ttl_media_ms: config.timing.ttl_ms,
            bugs: config.server_bugs,
            suite: config.suite,
            ..ServerConfig::default()
        };
        let warm_up_configs = client_configs
            .iter()
            .map(|c: &ClientConfig| ClientConfig { bugs: ClientBugs::none(), ..c.clone() })
            .collect();
        let records_keys = Self::records_keys(&config);
        Ok(Setup { config, client_configs, server_config, warm_up_configs, users, records_keys })
    }

    /// Only the adversary's checks, key reuse and the DH-step guard read the
    /// received envelopes and ratchet keys. Kept in a configuration that
    /// checks none of them, they would tell apart states that behave the
    /// same (the envelope list is in arrival order, so every interleaving of
    /// two devices' deliveries would count twice) without any property
    /// reading the difference.
    fn records_keys(config: &ModelConfig) -> bool {
        let keyed = [Check::ForwardSecrecy, Check::Healing, Check::NoKeyReuse, Check::DhStep];
        config.adversary.steal
            || config.adversary.restore_backup
            || keyed.iter().any(|c| config.checks.contains(&c.name()))
    }

    /// The number (`#n`, which names its body) of the message client `i`'s
    /// script sends at step `pos`: fixed by the script, not by the order
    /// the clients' sends interleave in. Numbered in the order they were
    /// sent, two paths that differ only in which client sent first would
    /// carry different bodies and never meet again. Warm-up messages come
    /// first, numbered from 1; numbers of steps that send nothing are skipped.
    pub fn message_number(&self, i: usize, pos: usize) -> u32 {
        let before: usize = self.config.scripts.iter().take(i).map(Vec::len).sum();
        u32::try_from(self.config.warm_up.len() + 1 + before + pos).unwrap_or(u32::MAX)
    }

    /// The user id of account `i`.
    pub fn user(&self, i: usize) -> UserId {
        self.users.get(i).cloned().unwrap_or_else(|| users_fallback(&self.users))
    }

    /// The device address of account `i`.
    pub fn address(&self, i: usize) -> DeviceAddress {
        DeviceAddress::new(self.user(i), PRIMARY_DEVICE)
    }

    /// Account index of slot `slot` (the ghost's slot follows the active clients).
    pub fn account(&self, slot: usize) -> usize {
        if slot >= self.config.clients {
            GHOST
        } else {
            slot
        }
    }

    fn slot_of(&self, account: u8) -> Option<usize> {
        let a = usize::from(account);
        if a < self.config.clients {
            Some(a)
        } else if a == GHOST && self.client_configs.len() > self.config.clients {
            Some(self.config.clients)
        } else {
            None
        }
    }

    /// The thief's (or a removed member's) copy of a device: its state with
    /// deduplication off, as an attacker's own software would run it.
    fn attacker_config(&self, slot: usize) -> Option<ClientConfig> {
        let mut c = self.client_configs.get(slot)?.clone();
        c.bugs = c.bugs.clone().with(ClientBug::DedupOff);
        Some(c)
    }
}

/// Some user id for an index out of range (never happens: indices come from
/// the configuration, checked against [`USER_NAMES`]).
fn users_fallback(users: &[UserId]) -> UserId {
    users.iter().next_back().cloned().unwrap_or_else(|| UserId::new("x").unwrap_or_else(|_| unreachable_user_id()))
}

#[allow(clippy::unreachable)]
fn unreachable_user_id() -> UserId {
    unreachable!("\"x\" is a valid user id")
}

/// Collects a readable description of a step when asked to. A note is
/// either the step itself ("the server receives the send of #1 from alice")
/// or something the step caused; a counterexample trace replaces the first
/// kind with its own headline for the chosen action and keeps the second.
#[derive(Debug, Default)]
pub struct Notes(Option<Vec<(bool, String)>>);

impl Notes {
    /// Notes that keep what they are told.
    pub fn recording() -> Self {
        Notes(Some(Vec::new()))
    }

    /// Notes that drop everything (the fast path).
    pub fn off() -> Self {
        Notes(None)
    }

    /// Records what a step caused.
    fn add(&mut self, f: impl FnOnce() -> String) {
        if let Some(v) = self.0.as_mut() {
            v.push((false, f()));
        }
    }

    /// Records the step itself.
    fn step(&mut self, f: impl FnOnce() -> String) {
        if let Some(v) = self.0.as_mut() {
            v.push((true, f()));
        }
    }

    /// Everything recorded, in order.
    pub fn into_lines(self) -> Vec<String> {
        self.0.unwrap_or_default().into_iter().map(|(_, l)| l).collect()
    }

    /// Everything recorded, in order; `true` marks a step, `false` what it caused.
    pub fn into_tagged(self) -> Vec<(bool, String)> {
        self.0.unwrap_or_default()
    }

    /// Only what the steps caused, in order.
    pub fn into_consequences(self) -> Vec<String> {
        self.0.unwrap_or_default().into_iter().filter(|(step, _)| !step).map(|(_, l)| l).collect()
    }
}

/// A state being stepped: owns a copy of the state plus live clients.
pub struct Exec<'s> {
    setup: &'s Setup,
    /// The state being built.
    pub st: MState,
    live: Vec<Option<Client>>,
    server_dirty: bool,
    clients_dirty: Vec<bool>,
    /// Guards reached in this step. They are reported to the model, not kept
    /// in the state: a flag in the state would double the states after it.
    pub guards: Flags,
    /// Quiesce mode: only what the at-least-once verdict needs is kept
    /// (no saves, no other checks); the state is thrown away afterwards.
    fast: bool,
    /// Step description (empty unless recording).
    pub notes: Notes,
    /// In the warm-up: clients run without their bug switches.
    warming_up: bool,
}

impl<'s> Exec<'s> {
    /// Starts stepping from `st`.
    pub fn new(setup: &'s Setup, st: &MState, notes: Notes) -> Self {
        let n = st.clients.len();
        Exec {
            setup,
            st: st.clone(),
            live: (0..n).map(|_| None).collect(),
            server_dirty: false,
            clients_dirty: vec![false; n],
            guards: Flags::default(),
            fast: false,
            notes,
            warming_up: false,
        }
    }

    /// The initial state: the server and every account's client are created
    /// and connected, register and upload their prekeys; `warm_up` messages
    /// are exchanged and read; then every connection is closed and the active
    /// clients reconnect, so each starts with a short log. Also returns the
    /// violations the warm-up itself caused (a trace shows them as step 0).
    ///
    /// The clients' bug switches are off until the reconnect: the warm-up
    /// sets up sessions with correct software, so a client bug shows in
    /// steps a counterexample lists rather than in the fixed prefix. The
    /// server's bug switches are on throughout (its configuration is fixed
    /// when it is created).
    pub fn initial(setup: &'s Setup) -> (MState, Vec<String>) {
        let cfg = &setup.config;
        let server = Server::new(setup.server_config.clone(), cfg.seed);
        let mut clients = Vec::new();
        let mut live = Vec::new();
        for (i, cc) in setup.warm_up_configs.iter().enumerate() {
            let c = Client::new(cc.clone(), cfg.seed.wrapping_add(1 + i as u64).wrapping_mul(0x9e37_79b9), EPOCH_MS);
            clients.push(Arc::new(ClientSlot::new(c.save())));
            live.push(Some(c));
        }
        let mut server_slot = ServerSlot { server, store: MemoryStore::new(), incarnation: 0, digest: 0 };
        server_slot.rehash();
        let st = MState {
            now: EPOCH_MS,
            server: Arc::new(server_slot),
            clients,
            net: BTreeMap::new(),
            budget: cfg.faults,
            script: vec![0; cfg.clients],
            hist: Arc::new(History::default()),
            thief: None,
            ghost_injected: false,
            restores_left: u8::from(cfg.adversary.restore_backup),
        };
        let n = st.clients.len();
        let mut ex = Exec {
            setup,
            st,
            live,
            server_dirty: true,
            clients_dirty: vec![true; n],
            guards: Flags::default(),
            fast: false,
            notes: Notes::recording(),
            warming_up: true,
        };
        for i in 0..n {
            ex.connect(i);
        }
        ex.run_quiet(WARM_UP_STEPS_MAX);
        for (k, &(from, to)) in cfg.warm_up.iter().enumerate() {
            ex.app_send(from, to, k as u32 + 1);
            ex.run_quiet(WARM_UP_STEPS_MAX);
            ex.read(to, Conv::Direct(from as u8));
            ex.run_quiet(WARM_UP_STEPS_MAX);
        }
        for i in 0..n {
            ex.disconnect(i, true);
        }
        ex.warming_up = false;
        for i in 0..cfg.clients {
            ex.connect(i);
        }
        ex.run_quiet(WARM_UP_STEPS_MAX);
        let notes = std::mem::take(&mut ex.notes);
        let mut violations: Vec<String> =
            notes.into_lines().into_iter().filter(|l| l.starts_with("VIOLATION ")).collect();
        violations.dedup();
        // What the warm-up reached does not count for the guards: they must
        // be reached in the explored part (`guards` is dropped here).
        (ex.finish(), violations)
    }

    // ----- clients -----

    fn client_config(&self, i: usize) -> Option<&ClientConfig> {
        if self.warming_up {
            self.setup.warm_up_configs.get(i)
        } else {
            self.setup.client_configs.get(i)
        }
    }

    /// The live client `i`, rebuilt from its slot if needed.
    fn live_client(&mut self, i: usize) -> Option<&mut Client> {
        let missing = self.live.get(i).is_some_and(Option::is_none);
        if missing {
            let slot = self.st.clients.get(i)?.clone();
            let cfg = self.client_config(i)?.clone();
            match Client::restore(cfg, &slot.base) {
                Ok(mut c) => {
                    for input in &slot.log {
                        apply(&mut c, input);
                        while c.poll_transmit().is_some() {}
                        while c.poll_event().is_some() {}
                    }
                    if let Some(l) = self.live.get_mut(i) {
                        *l = Some(c);
                    }
                }
                Err(e) => {
                    self.violate(Check::ModelSound, || format!("client {i} does not restore: {e}"));
                    return None;
                }
            }
        }
        self.live.get_mut(i)?.as_mut()
    }

    /// Hands `input` to client `i` and processes its outputs.
    fn client_input(&mut self, i: usize, input: Input) -> Returned {
        let returned = self.client_apply(i, input);
        self.after_client(i);
        returned
    }

    /// Hands `input` to client `i`; the caller runs [`Exec::after_client`]
    /// (app commands first record what the app did, so the checks that run
    /// on the frames it causes know about it).
    fn client_apply(&mut self, i: usize, input: Input) -> Returned {
        let Some(c) = self.live_client(i) else { return Returned::Nothing };
        let returned = apply(c, &input);
        if let Some(slot) = self.st.clients.get_mut(i) {
            Arc::make_mut(slot).log.push(input);
        }
        returned
    }

    /// The driver's half of the client's call order: save, then drain.
    fn after_client(&mut self, i: usize) {
        let fast = self.fast;
        let now = self.st.now;
        let Some(Some(c)) = self.live.get_mut(i) else { return };
        let saved = if fast { None } else { Some(c.save()) };
        let mut frames = Vec::new();
        while let Some(f) = c.poll_transmit() {
            frames.push(f);
        }
        let mut events = Vec::new();
        while let Some(e) = c.poll_event() {
            events.push(e);
        }
        // Re-armed after the drain, as the client's call order asks: before
        // it, frames about to leave could still name the pacer's deadline.
        let timeout = c.poll_timeout();
        // Drained, as every replay of the log leaves it.
        let conn_state = (!fast).then(|| connection_hash(c, now));
        let settled = !fast && c.is_ready() && timeout.is_none();
        let conn = if let Some(slot) = self.st.clients.get_mut(i) {
            let s = Arc::make_mut(slot);
            if let Some(saved) = saved {
                s.saved = saved;
            }
            s.timeout = timeout;
            s.conn_state = conn_state;
            s.conn
        } else {
            None
        };
        if settled {
            self.compact(i);
        }
        if let Some(d) = self.clients_dirty.get_mut(i) {
            *d = true;
        }
        let account = self.setup.account(i) as u8;
        for e in events {
            self.app_event(account, e);
        }
        for f in frames {
            if !fast {
                self.client_sent(account, &f);
            }
            if let Some(conn) = conn {
                let bytes: Frame = wire::encode(&f).into();
                self.notes.add(|| {
                    format!("{} → server: {}", name(usize::from(account)), client_frame_phrase(&self.st.hist, &bytes))
                });
                self.st.net.entry(Chan { client: i as u8, conn, dir: Dir::Up }).or_default().push_back(bytes);
            }
        }
    }

    /// Shortens client `i`'s log when its connection state is the canonical
    /// one of a fresh, idle, authenticated connection: authenticated, with
    /// nothing sent and unconfirmed, no pending bundle or prekey request, no
    /// throttled fetch (exactly when `poll_timeout` is `None` on a ready
    /// client). That state is rebuilt from the current save by `Connected`
    /// and a `Welcome` (a registered client accepts a Welcome without a
    /// challenge, and the flush it triggers finds nothing owed). Replays stay
    /// short, and equal devices get equal slots whatever their history. The
    /// rebuilt client is compared with the real one; if they differ in
    /// anything observable the log is kept as it was.
    fn compact(&mut self, i: usize) {
        let Some(slot) = self.st.clients.get(i) else { return };
        if slot.log.len() <= 2 {
            return;
        }
        let Some(cfg) = self.client_config(i).cloned() else { return };
        let welcome: Frame = wire::encode(&ServerFrame::Welcome { server_ts_ms: 0 }).into();
        let log = vec![Input::Connected(0), Input::Frame(welcome, 0)];
        let Ok(mut c) = Client::restore(cfg, &slot.saved) else { return };
        let mut emitted = false;
        for input in &log {
            apply(&mut c, input);
            while c.poll_transmit().is_some() {
                emitted = true;
            }
            while c.poll_event().is_some() {
                emitted = true;
            }
        }
        if emitted || !c.is_ready() || c.poll_timeout().is_some() || c.save() != slot.saved {
            return;
        }
        // From here on the state holds the rebuilt client, not the live one
        // (their pacers may differ), so the slot is named after it.
        let conn_state = connection_hash(&c, self.st.now);
        if let Some(slot) = self.st.clients.get_mut(i) {
            let s = Arc::make_mut(slot);
            s.base = s.saved.clone();
            s.log = log;
            s.conn_state = Some(conn_state);
        }
    }

    /// Opens a new connection for client `i`.
    pub fn connect(&mut self, i: usize) {
        let now = self.st.now;
        let Some(slot) = self.st.clients.get_mut(i) else { return };
        let s = Arc::make_mut(slot);
        let conn = s.next_conn;
        s.next_conn += 1;
        s.conn = Some(conn);
        self.notes.step(|| format!("{} connects (connection {conn})", name(self.setup.account(i))));
        self.client_input(i, Input::Connected(now));
        let id = conn_id(i as u8, conn);
        self.server_call(|s, _, now| s.handle_connect(id, now));
    }

    /// Closes client `i`'s connection: its connection state is gone, so its
    /// current save becomes its checkpoint.
    pub fn disconnect(&mut self, i: usize, tell_server: bool) {
        let Some(slot) = self.st.clients.get_mut(i) else { return };
        let s = Arc::make_mut(slot);
        let conn = s.conn.take();
        s.base = s.saved.clone();
        s.log.clear();
        s.timeout = None;
        // A restore from `saved` starts with no connection state at all.
        s.conn_state = (!self.fast).then_some(0);
        if let Some(l) = self.live.get_mut(i) {
            *l = None;
        }
        if let Some(d) = self.clients_dirty.get_mut(i) {
            *d = true;
        }
        self.st.net.retain(|ch, _| usize::from(ch.client) != i);
        if let (Some(conn), true) = (conn, tell_server) {
            let id = conn_id(i as u8, conn);
            self.server_call(|s, store, now| s.handle_disconnect(id, now, store));
        }
    }

    /// Crashes client `i`: it restarts from its last save, offline.
    pub fn crash_client(&mut self, i: usize) {
        self.notes.step(|| format!("{} crashes and restarts offline from its last save", name(self.setup.account(i))));
        self.disconnect(i, true);
    }

    /// Crashes the server: it is rebuilt from its store; every connection drops.
    pub fn crash_server(&mut self) {
        self.notes.step(|| "the server crashes and restarts from its store".to_string());
        for i in 0..self.st.clients.len() {
            self.disconnect(i, false);
        }
        self.st.net.clear();
        let slot = Arc::make_mut(&mut self.st.server);
        slot.incarnation += 1;
        let seed = self.setup.config.seed.wrapping_add(u64::from(slot.incarnation));
        match Server::recover(self.setup.server_config.clone(), seed, &mut slot.store) {
            Ok(s) => slot.server = s,
            Err(e) => self.violate(Check::ModelSound, || format!("the server does not recover: {e}")),
        }
        self.server_dirty = true;
    }

    /// Client `i`'s timer fires (the clock jumps to its deadline if later).
    pub fn client_timeout(&mut self, i: usize) {
        let Some(t) = self.st.clients.get(i).and_then(|c| c.timeout) else { return };
        self.st.now = self.st.now.max(t);
        let now = self.st.now;
        self.notes.step(|| format!("{}'s timer fires at t={}ms", name(self.setup.account(i)), now - EPOCH_MS));
        self.client_input(i, Input::Timeout(now));
    }

    /// The server's timer fires (the clock jumps to its deadline if later).
    pub fn server_timeout(&mut self) {
        let Some(t) = self.st.server.server.poll_timeout() else { return };
        self.st.now = self.st.now.max(t);
        self.notes.step(|| format!("the server's timer fires at t={}ms", self.st.now - EPOCH_MS));
        self.server_call(|s, store, now| s.handle_timeout(now, store));
    }

    // ----- app -----

    /// Client `i` performs its next script step.
    pub fn app_step(&mut self, i: usize) {
        let Some(&pos) = self.st.script.get(i) else { return };
        let Some(step) = self.setup.config.scripts.get(i).and_then(|s| s.get(usize::from(pos))).cloned() else {
            return;
        };
        if let Some(p) = self.st.script.get_mut(i) {
            *p += 1;
        }
        let n = self.setup.message_number(i, usize::from(pos));
        match step {
            AppStep::Send { to } => self.app_send(i, to, n),
            AppStep::CreateGroup { members } => {
                let members: Vec<UserId> = members.iter().map(|m| self.setup.user(*m)).collect();
                let mut signed: BTreeSet<u8> = members.iter().filter_map(index_of).collect();
                signed.insert(i as u8);
                let number = self.st.hist.groups.len();
                self.notes.step(|| {
                    let names: Vec<&str> = members.iter().map(UserId::as_str).collect();
                    format!("{}'s app creates group {number} with {}", name(i), names.join(", "))
                });
                if let Returned::Group(g) = self.app_input(i, AppInput::CreateGroup { members }) {
                    let h = Arc::make_mut(&mut self.st.hist);
                    h.groups.push((g, i as u8));
                    h.signed_members.insert(g, signed);
                }
                self.after_client(i);
            }
            AppStep::SendGroup { group } => {
                let Some(&g) = self.st.hist.groups.get(group).map(|(g, _)| g) else { return };
                let body = body_of(self.setup.config.seed, n);
                self.notes.step(|| format!("{}'s app sends #{n} to group {group}", name(i)));
                if let Returned::Message(id) = self.app_input(i, AppInput::SendGroup { group: g, body }) {
                    let h = Arc::make_mut(&mut self.st.hist);
                    let members = h.signed_members.get(&g).cloned().unwrap_or_default();
                    let after_removal = h.removed.iter().any(|(rg, _)| *rg == g);
                    let to =
                        members.into_iter().filter(|m| usize::from(*m) != i && !h.removed.contains(&(g, *m))).collect();
                    h.sent.insert(id, SentMsg { from: i as u8, to, n, group: Some(group as u8), after_removal });
                }
                self.after_client(i);
            }
            AppStep::RemoveMember { group, member } => {
                let Some(&g) = self.st.hist.groups.get(group).map(|(g, _)| g) else { return };
                self.notes.step(|| format!("{}'s app removes {} from group {group}", name(i), name(member)));
                // `signed_members` keeps the member: it lists everyone the
                // admin ever signed in, and the server may list them until
                // the removal reaches it.
                Arc::make_mut(&mut self.st.hist).removed.insert((g, member as u8));
                self.app_input(i, AppInput::Remove { group: g, member: self.setup.user(member) });
                self.after_client(i);
            }
        }
    }

    fn app_send(&mut self, i: usize, to: usize, n: u32) {
        let body = body_of(self.setup.config.seed, n);
        self.notes.step(|| format!("{}'s app sends #{n} to {}", name(i), name(to)));
        if let Returned::Message(id) = self.app_input(i, AppInput::Send { to: self.setup.user(to), body }) {
            let h = Arc::make_mut(&mut self.st.hist);
            h.sent.insert(
                id,
                SentMsg { from: i as u8, to: BTreeSet::from([to as u8]), n, group: None, after_removal: false },
            );
        }
        self.after_client(i);
    }

    /// Hands an app command to client `i`; the caller records what it did
    /// and then runs [`Exec::after_client`].
    fn app_input(&mut self, i: usize, a: AppInput) -> Returned {
        let now = self.st.now;
        self.client_apply(i, Input::App(a, now))
    }

    /// Client `i`'s app opens a conversation.
    pub fn read(&mut self, i: usize, conv: Conv) {
        let input = match conv {
            Conv::Direct(p) => AppInput::Read { peer: self.setup.user(usize::from(p)) },
            Conv::Group(g) => {
                let Some(&(g, _)) = self.st.hist.groups.get(usize::from(g)) else { return };
                AppInput::ReadGroup { group: g }
            }
        };
        self.notes.step(|| format!("{}'s app opens {}", name(i), conv_name(conv)));
        let ids: Vec<MessageId> = self
            .st
            .hist
            .unread
            .iter()
            .filter(|(r, c, _)| usize::from(*r) == i && *c == conv)
            .map(|(_, _, id)| *id)
            .collect();
        let h = Arc::make_mut(&mut self.st.hist);
        for id in ids {
            h.unread.remove(&(i as u8, conv, id));
            h.read.insert((i as u8, id));
        }
        self.app_input(i, input);
        self.after_client(i);
    }

    // ----- network -----

    /// Delivers the `index`-th frame of `chan`; `keep` leaves it in flight
    /// (a duplicate).
    pub fn deliver(&mut self, chan: Chan, index: usize, keep: bool) {
        let frame = match self.st.net.get_mut(&chan) {
            Some(q) if keep => q.get(index).cloned(),
            Some(q) => q.remove(index),
            None => None,
        };
        if self.st.net.get(&chan).is_some_and(VecDeque::is_empty) {
            self.st.net.remove(&chan);
        }
        let Some(frame) = frame else { return };
        let i = usize::from(chan.client);
        let live = self.st.clients.get(i).is_some_and(|c| c.conn == Some(chan.conn));
        if !live {
            return;
        }
        match chan.dir {
            Dir::Up => {
                self.notes.step(|| {
                    let who = name(self.setup.account(i));
                    format!("the server receives {} from {who}", client_frame_phrase(&self.st.hist, &frame))
                });
                let id = conn_id(chan.client, chan.conn);
                self.server_call(|s, store, now| s.handle_bytes(id, &frame, now, store));
            }
            Dir::Down => {
                self.notes.step(|| {
                    let who = name(self.setup.account(i));
                    format!("{who} receives {} from the server", server_frame_phrase(&self.st.hist, &frame))
                });
                if !self.fast {
                    self.client_received(i, &frame);
                }
                let now = self.st.now;
                self.client_input(i, Input::Frame(frame, now));
            }
        }
    }

    /// Loses the `index`-th frame of `chan`.
    pub fn drop_frame(&mut self, chan: Chan, index: usize) {
        if let Some(q) = self.st.net.get_mut(&chan) {
            q.remove(index);
            if q.is_empty() {
                self.st.net.remove(&chan);
            }
        }
        // (the step's headline names the frame; the quiesce phase never drops)
        self.notes.step(|| format!("the network loses frame {index} on {chan:?}"));
    }

    // ----- server -----

    fn server_call(&mut self, f: impl FnOnce(&mut Server, &mut MemoryStore, u64)) {
        let now = self.st.now;
        let slot = Arc::make_mut(&mut self.st.server);
        f(&mut slot.server, &mut slot.store, now);
        self.server_dirty = true;
        self.after_server();
    }

    fn after_server(&mut self) {
        let mut outputs = Vec::new();
        {
            let slot = Arc::make_mut(&mut self.st.server);
            while let Some(o) = slot.server.poll_output() {
                outputs.push(o);
            }
        }
        for o in outputs {
            match o {
                ServerOutput::Frame { conn, frame } => {
                    let (i, n) = conn_owner(conn);
                    if !self.fast {
                        self.server_sent(i, &frame);
                    }
                    let live = self.st.clients.get(usize::from(i)).is_some_and(|c| c.conn == Some(n));
                    if live {
                        let bytes: Frame = wire::encode(&frame).into();
                        self.notes.add(|| {
                            let who = name(self.setup.account(usize::from(i)));
                            format!("server → {who}: {}", server_frame_phrase(&self.st.hist, &bytes))
                        });
                        self.st.net.entry(Chan { client: i, conn: n, dir: Dir::Down }).or_default().push_back(bytes);
                    }
                }
                ServerOutput::Close { conn, reason } => {
                    let (i, n) = conn_owner(conn);
                    let live = self.st.clients.get(usize::from(i)).is_some_and(|c| c.conn == Some(n));
                    if live {
                        self.notes.add(|| format!("the server closes client {i}'s connection: {reason}"));
                        self.disconnect(usize::from(i), false);
                    }
                }
            }
        }
        if !self.fast {
            self.check_server_state();
        }
    }

    /// Invariants over the server's state after each of its steps.
    fn check_server_state(&mut self) {
        let slot = self.st.server.clone();
        // No plaintext anywhere in the durable store (the mailboxes in memory
        // hold exactly what was stored).
        for t in Table::ALL {
            let Ok(rows) = slot.store.scan(t) else { continue };
            for (_, v) in rows {
                // Every body starts with the same prefix: one search finds any of them.
                if !contains(&v, BODY_PREFIX) {
                    continue;
                }
                let found = self
                    .st
                    .hist
                    .sent
                    .values()
                    .find(|m| contains(&v, &body_of(self.setup.config.seed, m.n)))
                    .map(|m| m.n);
                if let Some(n) = found {
                    self.violate(Check::NoPlaintext, || format!("the plaintext of #{n} is in the server's {t} table"));
                    return;
                }
            }
        }
        // The server's membership of each group is what its admin signed.
        let groups = self.st.hist.groups.clone();
        for (g, _) in groups {
            let Some(group) = slot.server.group(&g) else { continue };
            let signed = self.st.hist.signed_members.get(&g).cloned().unwrap_or_default();
            let extra: Vec<&UserId> =
                group.members.iter().filter(|u| index_of(u).is_none_or(|i| !signed.contains(&i))).collect();
            if !extra.is_empty() {
                let extra = format!("{extra:?}");
                self.violate(Check::GroupChangesSigned, || {
                    format!("the server lists {extra} in group {g:?} though its admin never signed them in")
                });
            }
        }
    }

    /// Bookkeeping of a frame the server emits.
    fn server_sent(&mut self, to: u8, frame: &ServerFrame) {
        match frame {
            ServerFrame::Bundle { bundle, .. } => {
                if let (Some(k), Some(owner)) = (bundle.one_time_prekey, index_of(&bundle.owner.user)) {
                    let fresh = Arc::make_mut(&mut self.st.hist).prekeys.insert((owner, k.id));
                    if !fresh {
                        self.violate(Check::PrekeyOnce, || {
                            format!(
                                "one-time prekey {} of {} handed out a second time",
                                k.id,
                                bundle.owner.user.as_str()
                            )
                        });
                    }
                }
            }
            ServerFrame::Deliver { seq, item } => {
                let fresh = Arc::make_mut(&mut self.st.hist).delivered_seqs.0.insert((to, *seq));
                if !fresh && matches!(item, Delivery::Envelope(_)) {
                    self.reach(Check::Redelivery);
                }
            }
            _ => {}
        }
    }

    /// Bookkeeping of a frame the device `account` is about to handle.
    fn client_received(&mut self, slot: usize, bytes: &[u8]) {
        let account = self.setup.account(slot) as u8;
        let item = match wire::decode::<ServerFrame>(bytes) {
            Ok(ServerFrame::Deliver { item, .. }) => item,
            _ => return,
        };
        let e = match item {
            Delivery::Envelope(e) => e,
            Delivery::GroupChange(change) => {
                let me = self.setup.user(usize::from(account));
                let key = (change.group, account);
                if change.remove.contains(&me) && !self.st.hist.kept.contains_key(&key) {
                    if let Some(c) = self.st.clients.get(slot) {
                        let saved = c.saved.clone();
                        Arc::make_mut(&mut self.st.hist).kept.insert(key, saved);
                    }
                }
                return;
            }
            _ => return,
        };
        let Some(from) = index_of(&e.from.user) else { return };
        let h = &self.st.hist;
        let seen = h.received.contains_key(&(account, e.message_id))
            || h.envelopes.iter().any(|(to, f)| *to == account && same_message(f, &e));
        if seen {
            self.reach(Check::Dedup);
        } else if self.setup.records_keys {
            let enc: Frame = wire::encode(&e).into();
            Arc::make_mut(&mut self.st.hist).envelopes.push((account, enc));
        }
        if !self.setup.records_keys {
            return;
        }
        if let Some((dh, _)) = ratchet_header(e.kind, &e.ciphertext) {
            let h = Arc::make_mut(&mut self.st.hist);
            let stepped = h.ratchet_keys.iter().any(|(r, s, k)| *r == account && *s == from && *k != dh);
            h.ratchet_keys.insert((account, from, dh));
            if stepped {
                self.reach(Check::DhStep);
            }
            // Healing is a DH ratchet round trip after the theft: the victim
            // gets a peer ratchet key it never saw, then a peer gets a
            // message from the victim under a key the victim drew after that.
            let own: BTreeSet<[u8; 32]> = self
                .st
                .hist
                .message_keys
                .keys()
                .filter(|(s, _, _)| self.st.thief.as_ref().is_some_and(|t| t.victim == *s))
                .map(|(_, k, _)| *k)
                .collect();
            if let Some(t) = self.st.thief.as_mut() {
                if t.healed {
                } else if account == t.victim
                    && t.own_keys_at_new_peer_key.is_none()
                    && !t.peer_keys_before.contains(&dh)
                {
                    Arc::make_mut(t).own_keys_at_new_peer_key = Some(own);
                } else if from == t.victim && t.own_keys_at_new_peer_key.as_ref().is_some_and(|k| !k.contains(&dh)) {
                    Arc::make_mut(t).healed = true;
                    self.notes.add(|| "the victim has healed: a DH ratchet round trip the thief did not see".into());
                }
            }
        }
    }

    /// Bookkeeping of a frame a device emits (before the network sees it).
    fn client_sent(&mut self, account: u8, frame: &ClientFrame) {
        let (id, kind, ciphertext, to, group) = match frame {
            ClientFrame::Send { message_id, to, kind, ciphertext } => {
                (*message_id, *kind, ciphertext, index_of(&to.user), None)
            }
            ClientFrame::GroupSend { message_id, group, ciphertext } => {
                (*message_id, EnvelopeKind::Group, ciphertext, None, Some(*group))
            }
            _ => return,
        };
        if let Some((dh, n)) = ratchet_header(kind, ciphertext).filter(|_| self.setup.records_keys) {
            let digest = hash_bytes(ciphertext);
            let h = Arc::make_mut(&mut self.st.hist);
            match h.message_keys.insert((account, dh, n), digest) {
                Some(old) if old != digest => self.violate(Check::NoKeyReuse, || {
                    format!("{} sealed two different ciphertexts under one message key", name(usize::from(account)))
                }),
                _ => {}
            }
        }
        let envelope_to = |to: usize| Envelope {
            from: self.setup.address(usize::from(account)),
            to: self.setup.address(to),
            message_id: id,
            server_ts_ms: 0,
            group,
            kind,
            ciphertext: ciphertext.clone(),
        };
        // A removed member, with the state it still holds, must not read
        // group messages sent after its removal.
        if let (Some(g), Some(m)) = (group, self.st.hist.sent.get(&id).cloned()) {
            if m.after_removal {
                let removed: Vec<u8> =
                    self.st.hist.removed.iter().filter(|(rg, _)| *rg == g).map(|(_, u)| *u).collect();
                for r in removed {
                    let kept = self.st.hist.kept.get(&(g, r)).cloned();
                    if self.copy_reads(r, kept.as_ref(), &[], &envelope_to(usize::from(r))) {
                        self.violate(Check::RemovedMemberCannotRead, || {
                            format!("removed member {} decrypts #{} sent after its removal", name(usize::from(r)), m.n)
                        });
                    }
                }
            }
            if self.st.ghost_injected {
                let ghost_mail = self.ghost_mailbox();
                if self.copy_reads(GHOST as u8, None, &ghost_mail, &envelope_to(GHOST)) {
                    self.violate(Check::GhostCannotRead, || format!("the ghost reads group message #{}", m.n));
                }
            }
        }
        // After the victim healed, the thief's copy must not read new messages to it.
        if let Some(t) = self.st.thief.clone() {
            let to_victim = to == Some(t.victim)
                || self.st.hist.sent.get(&id).is_some_and(|m| m.group.is_some() && m.to.contains(&t.victim));
            if t.healed && to_victim && account != t.victim {
                let since: Vec<Frame> = self
                    .st
                    .hist
                    .envelopes
                    .iter()
                    .skip(t.envelopes_before)
                    .filter(|(to, _)| *to == t.victim)
                    .map(|(_, f)| f.clone())
                    .collect();
                if self.copy_reads(t.victim, Some(&t.stolen), &since, &envelope_to(usize::from(t.victim))) {
                    let n = self.st.hist.sent.get(&id).map_or(0, |m| m.n);
                    self.violate(Check::Healing, || {
                        format!(
                            "the thief's copy of {} reads #{n}, sealed after the victim healed",
                            name(usize::from(t.victim))
                        )
                    });
                }
            }
        }
    }

    /// What the server holds for the ghost, as envelopes.
    fn ghost_mailbox(&self) -> Vec<Frame> {
        let addr = self.setup.address(GHOST);
        let server = &self.st.server.server;
        server
            .mailbox_entries()
            .filter(|(a, _)| **a == addr)
            .filter_map(|(_, e)| match &e.payload {
                Queued::Envelope { server_ts_ms, group, kind, body } => {
                    let ciphertext = match body {
                        bluetick_core::server::machine::Body::Inline(b) => b.clone(),
                        bluetick_core::server::machine::Body::Shared(id) => {
                            server.bodies().get(*id).map(<[u8]>::to_vec).unwrap_or_default()
                        }
                    };
                    let env = Envelope {
                        from: e.key.0.clone(),
                        to: addr.clone(),
                        message_id: e.key.1,
                        server_ts_ms: *server_ts_ms,
                        group: *group,
                        kind: *kind,
                        ciphertext,
                    };
                    Some(wire::encode(&env).into())
                }
                Queued::Notice(_) => None,
            })
            .collect()
    }

    /// Whether an attacker's copy of `account`'s device — `state`, or the
    /// device's current save — fed `before` (encoded envelopes, in order)
    /// shows `target`'s message to its app.
    fn copy_reads(&mut self, account: u8, state: Option<&SavedClient>, before: &[Frame], target: &Envelope) -> bool {
        let target_frame: Frame = wire::encode(target).into();
        let mut frames = before.to_vec();
        frames.push(target_frame);
        self.copy_shows(account, state, &frames).contains(&target.message_id)
    }

    /// The messages an attacker's copy of `account`'s device — `state`, or
    /// the device's current save — shows its app when fed `frames`
    /// (encoded envelopes) in order. The copy runs with deduplication off, as
    /// an attacker's own software would.
    fn copy_shows(&mut self, account: u8, state: Option<&SavedClient>, frames: &[Frame]) -> BTreeSet<MessageId> {
        let mut shown = BTreeSet::new();
        let Some(slot) = self.setup.slot_of(account) else { return shown };
        let Some(cfg) = self.setup.attacker_config(slot) else { return shown };
        let saved = match state {
            Some(s) => s.clone(),
            None => match self.st.clients.get(slot) {
                Some(c) => c.saved.clone(),
                None => return shown,
            },
        };
        let Ok(mut copy) = Client::restore(cfg, &saved) else { return shown };
        let now = self.st.now;
        for f in frames {
            if let Ok(e) = wire::decode::<Envelope>(f) {
                copy.handle_frame(ServerFrame::Deliver { seq: 0, item: Delivery::Envelope(e) }, now);
            }
            while copy.poll_transmit().is_some() {}
            while let Some(e) = copy.poll_event() {
                if let AppEvent::Message { id, .. } = e {
                    shown.insert(id);
                }
            }
        }
        shown
    }

    // ----- adversary -----

    /// The adversary copies client `i`'s complete state, and checks at once
    /// that the copy decrypts nothing the device had already received.
    pub fn steal(&mut self, i: usize) {
        let account = self.setup.account(i) as u8;
        let Some(slot) = self.st.clients.get(i) else { return };
        let stolen = slot.saved.clone();
        self.notes.step(|| format!("the adversary copies {}'s complete state", name(usize::from(account))));
        let h = &self.st.hist;
        let peer_keys_before: BTreeSet<[u8; 32]> =
            h.ratchet_keys.iter().filter(|(r, _, _)| *r == account).map(|(_, _, k)| *k).collect();
        let received: Vec<Frame> =
            h.envelopes.iter().filter(|(to, _)| *to == account).map(|(_, f)| f.clone()).collect();
        let envelopes_before = h.envelopes.len();
        let read = self.copy_shows(account, Some(&stolen), &received);
        if let Some(id) = read.first() {
            let n = self.st.hist.sent.get(id).map_or(0, |m| m.n);
            self.violate(Check::ForwardSecrecy, || {
                format!("the stolen copy decrypts #{n} ({id:?}), which the device had already received")
            });
        }
        self.st.thief = Some(Arc::new(Thief {
            victim: account,
            stolen,
            envelopes_before,
            peer_keys_before,
            own_keys_at_new_peer_key: None,
            healed: false,
            restored: false,
        }));
        self.reach(Check::Theft);
    }

    /// The victim is restored from the backup the thief also holds.
    pub fn restore_backup(&mut self) {
        let Some(t) = self.st.thief.clone() else { return };
        let Some(i) = self.setup.slot_of(t.victim) else { return };
        self.notes
            .step(|| format!("{} is restored from an old backup (the stolen state)", name(usize::from(t.victim))));
        self.disconnect(i, true);
        if let Some(slot) = self.st.clients.get_mut(i) {
            let s = Arc::make_mut(slot);
            s.base = t.stolen.clone();
            s.saved = t.stolen.clone();
            s.timeout = None;
            s.conn_state = Some(0);
        }
        if let Some(t) = self.st.thief.as_mut() {
            Arc::make_mut(t).restored = true;
        }
        self.st.restores_left = self.st.restores_left.saturating_sub(1);
    }

    /// The adversary, on the admin's connection, asks the server to add the
    /// ghost to the first group with an unsigned change.
    pub fn inject_ghost(&mut self) {
        let Some(&(g, admin)) = self.st.hist.groups.first() else { return };
        let Some(conn) = self.st.clients.get(usize::from(admin)).and_then(|c| c.conn) else { return };
        let version = self.st.server.server.group(&g).map_or(1, |grp| grp.version + 1);
        let change = SignedGroupChange {
            group: g,
            version,
            admin: self.setup.user(usize::from(admin)),
            add: vec![self.setup.user(GHOST)],
            remove: Vec::new(),
            signature: Signature([0; 64]),
        };
        self.notes
            .step(|| format!("the adversary asks the server to add the ghost to {g:?} (version {version}, unsigned)"));
        self.st.ghost_injected = true;
        let bytes = wire::encode(&ClientFrame::GroupChange { change });
        let id = conn_id(admin, conn);
        self.server_call(|s, store, now| s.handle_bytes(id, &bytes, now, store));
    }

    // ----- app events -----

    fn app_event(&mut self, account: u8, e: AppEvent) {
        match e {
            AppEvent::Message { id, from, group, body, .. } => {
                self.notes.add(|| {
                    let group = group.map(|g| group_label(&self.st.hist, &g)).unwrap_or_default();
                    let m = msg_label(&self.st.hist, &id);
                    format!("{}'s app shows {m} from {}{group}", name(usize::from(account)), from.as_str())
                });
                let expected = self.st.hist.sent.get(&id).map(|m| body_of(self.setup.config.seed, m.n));
                if expected.is_some_and(|b| b != body) {
                    let m = msg_label(&self.st.hist, &id);
                    self.violate(Check::ExactlyOnce, || format!("{m} shown with a body other than the one sent"));
                }
                let conv = match group {
                    Some(g) => self.st.hist.groups.iter().position(|(x, _)| *x == g).map(|p| Conv::Group(p as u8)),
                    None => index_of(&from).map(Conv::Direct),
                };
                self.shown(account, id, conv);
            }
            AppEvent::Undecryptable { id, reason, .. } => {
                self.notes.add(|| {
                    let m = msg_label(&self.st.hist, &id);
                    let why = format!("{reason:?}");
                    let why = why.split([' ', '(', '{']).next().unwrap_or_default();
                    format!("{}'s app is told {m} cannot be read ({why})", name(usize::from(account)))
                });
                if self.st.hist.sent.contains_key(&id) {
                    self.shown(account, id, None);
                }
            }
            AppEvent::Status { id, peer, status } => {
                let Some(p) = index_of(&peer) else { return };
                self.notes.add(|| {
                    let m = msg_label(&self.st.hist, &id);
                    format!("{}'s app shows {m} to {} as {status:?}", name(usize::from(account)), peer.as_str())
                });
                self.status_shown(id, p, status);
            }
            other => self.notes.add(|| format!("{}'s app is told {other:?}", name(usize::from(account)))),
        }
    }

    fn shown(&mut self, account: u8, id: MessageId, conv: Option<Conv>) {
        let h = Arc::make_mut(&mut self.st.hist);
        let n = h.received.entry((account, id)).or_default();
        *n = n.saturating_add(1).min(2);
        if *n > 1 {
            let m = msg_label(&self.st.hist, &id);
            self.violate(Check::ExactlyOnce, || format!("{}'s app was shown {m} twice", name(usize::from(account))));
            return;
        }
        if let Some(conv) = conv {
            Arc::make_mut(&mut self.st.hist).unread.insert((account, conv, id));
        }
    }

    fn status_shown(&mut self, id: MessageId, peer: u8, state: DeliveryState) {
        let h = Arc::make_mut(&mut self.st.hist);
        let prev = h.status.insert((id, peer), state);
        if state >= DeliveryState::Sent && state != DeliveryState::Expired {
            h.acked.insert(id);
        }
        if state == DeliveryState::Expired {
            h.expired.insert((id, peer));
            self.reach(Check::TtlExpiry);
        }
        if let Some(prev) = prev {
            if prev.advance(state) != state && prev != state {
                let m = msg_label(&self.st.hist, &id);
                self.violate(Check::StatusMonotone, || {
                    format!(
                        "the sender's ticks for {m} to {} went from {prev:?} back to {state:?}",
                        name(usize::from(peer))
                    )
                });
            }
        }
        let h = &self.st.hist;
        let untrue = match state {
            DeliveryState::Delivered => !h.received.contains_key(&(peer, id)),
            DeliveryState::Read => !h.read.contains(&(peer, id)),
            _ => false,
        };
        if untrue {
            let m = msg_label(&self.st.hist, &id);
            let done = if state == DeliveryState::Read { "read it" } else { "was shown it" };
            let p = name(usize::from(peer));
            self.violate(Check::StatusTruthful, || {
                format!("the sender's app shows {m} to {p} as {state:?}, but {p}'s app never {done}")
            });
        }
    }

    // ----- flags -----

    fn violate(&mut self, check: Check, detail: impl FnOnce() -> String) {
        self.notes.add(|| format!("VIOLATION {}: {}", check.name(), detail()));
        Arc::make_mut(&mut self.st.hist).flags.set(check);
    }

    fn reach(&mut self, check: Check) {
        if !self.guards.has(check) {
            self.notes.add(|| format!("reached: {}", check.name()));
            self.guards.set(check);
        }
    }

    // ----- driving without choices (warm-up, quiesce) -----

    /// Whether nothing is left to do: no frames in flight, empty mailboxes, empty outboxes.
    pub fn idle(&mut self) -> bool {
        if !self.st.net.is_empty() {
            return false;
        }
        let queued: usize =
            (0..self.setup.config.clients).map(|i| self.st.server.server.mailbox_len(&self.setup.address(i))).sum();
        if queued > 0 {
            return false;
        }
        for i in 0..self.st.clients.len() {
            if self.st.clients.get(i).is_some_and(|c| c.conn.is_none()) {
                continue;
            }
            if self.live_client(i).is_some_and(|c| c.outbox_len() > 0) {
                return false;
            }
        }
        true
    }

    /// One fault-free step: the oldest frame of the first busy connection,
    /// else the earliest timer. False when nothing is left to do.
    pub fn step_quiet(&mut self) -> bool {
        if let Some(&chan) = self.st.net.keys().next() {
            self.deliver(chan, 0, false);
            return true;
        }
        let server = self.st.server.server.poll_timeout();
        let client = self.st.clients.iter().enumerate().filter_map(|(i, c)| c.timeout.map(|t| (t, i))).min();
        match (server, client) {
            (Some(s), Some((c, _))) if s <= c => self.server_timeout(),
            (_, Some((_, i))) => self.client_timeout(i),
            (Some(_), None) => self.server_timeout(),
            (None, None) => return false,
        }
        true
    }

    /// Runs fault-free steps until idle or `steps_max` steps.
    pub fn run_quiet(&mut self, steps_max: usize) -> usize {
        for n in 0..steps_max {
            if self.idle() || !self.step_quiet() {
                return n;
            }
        }
        steps_max
    }

    /// Faults stop and every active client connects; runs at most
    /// `steps_max` fault-free steps; then every message the server acked
    /// must have reached every intended app or been reported expired.
    /// Returns the first message that did not.
    pub fn quiesce_and_check(&mut self, steps_max: usize) -> Option<String> {
        self.start_quiesce();
        let mut steps = 0;
        while steps < steps_max && !self.quiesced() && self.step_quiet() {
            steps += 1;
        }
        self.notes.add(|| format!("quiesced after {steps} fault-free steps"));
        self.undelivered(steps_max)
    }

    /// Faults stop: every active client connects. Unless recording, only
    /// what the at-least-once verdict needs is kept from here on.
    pub fn start_quiesce(&mut self) {
        self.fast = self.notes.0.is_none();
        for i in 0..self.setup.config.clients {
            if self.st.clients.get(i).is_some_and(|c| c.conn.is_none()) {
                self.connect(i);
            }
        }
    }

    /// Whether the quiesce phase is over: every message arrived, or nothing is left to do.
    pub fn quiesced(&mut self) -> bool {
        self.all_arrived() || self.idle()
    }

    /// The first server-acked message some intended app lacks (not expired either).
    pub fn undelivered(&self, steps_max: usize) -> Option<String> {
        let h = &self.st.hist;
        for id in &h.acked {
            let Some(m) = h.sent.get(id) else { continue };
            for to in &m.to {
                if usize::from(*to) >= self.setup.config.clients {
                    continue;
                }
                if !h.received.contains_key(&(*to, *id)) && !h.expired.contains(&(*id, *to)) {
                    return Some(format!(
                        "#{} from {} was acked by the server but never reached {}'s app within {steps_max} fault-free steps",
                        m.n,
                        name(usize::from(m.from)),
                        name(usize::from(*to))
                    ));
                }
            }
        }
        None
    }

    /// Whether every message sent so far reached every active intended
    /// recipient's app or was reported expired to its sender.
    fn all_arrived(&self) -> bool {
        let h = &self.st.hist;
        h.sent.iter().all(|(id, m)| {
            m.to.iter().all(|to| {
                usize::from(*to) >= self.setup.config.clients
                    || h.received.contains_key(&(*to, *id))
                    || h.expired.contains(&(*id, *to))
            })
        })
    }

    /// A fingerprint of the state as it stands (re-hashing what changed).
    pub fn fingerprint(&mut self) -> u64 {
        self.rehash();
        let mut h = DefaultHasher::new();
        self.st.hash(&mut h);
        h.finish()
    }

    fn rehash(&mut self) {
        if self.server_dirty {
            Arc::make_mut(&mut self.st.server).rehash();
            self.server_dirty = false;
        }
        for (i, dirty) in self.clients_dirty.iter_mut().enumerate() {
            if *dirty {
                if let Some(slot) = self.st.clients.get_mut(i) {
                    Arc::make_mut(slot).rehash();
                }
                *dirty = false;
            }
        }
    }

    /// Ends the step: re-hashes what changed and returns the new state.
    pub fn finish(mut self) -> MState {
        self.rehash();
        self.st
    }
}

fn connection_hash(c: &Client, now: u64) -> u64 {
    let mut h = DefaultHasher::new();
    c.hash_connection_state(now, &mut h);
    h.finish()
}

fn same_message(encoded: &[u8], e: &Envelope) -> bool {
    wire::decode::<Envelope>(encoded).is_ok_and(|x| x.from == e.from && x.message_id == e.message_id)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.len() <= haystack.len() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// Hands one input to a client.
fn apply(c: &mut Client, input: &Input) -> Returned {
    match input {
        Input::Connected(now) => c.handle_connected(*now),
        Input::Frame(bytes, now) => {
            if let Ok(f) = wire::decode::<ServerFrame>(bytes) {
                c.handle_frame(f, *now);
            }
        }
        Input::Timeout(now) => c.handle_timeout(*now),
        Input::App(a, now) => {
            let now = *now;
            return match a {
                AppInput::Send { to, body } => c.send_text(to, body, now).map_or(Returned::Nothing, Returned::Message),
                AppInput::CreateGroup { members } => {
                    c.create_group(members.clone(), now).map_or(Returned::Nothing, Returned::Group)
                }
                AppInput::Remove { group, member } => {
                    let _ = c.change_group(*group, Vec::new(), vec![member.clone()], now);
                    Returned::Nothing
                }
                AppInput::SendGroup { group, body } => {
                    c.send_group(*group, body, now).map_or(Returned::Nothing, Returned::Message)
                }
                AppInput::Read { peer } => {
                    c.mark_read(peer, now);
                    Returned::Nothing
                }
                AppInput::ReadGroup { group } => {
                    c.mark_group_read(*group, now);
                    Returned::Nothing
                }
            };
        }
    }
    Returned::Nothing
}

/// How a trace names a message: `#n` for one an app sent in this run
/// (its number names its body), else its id.
pub fn msg_label(hist: &History, id: &MessageId) -> String {
    hist.sent.get(id).map_or_else(|| format!("{id:?}"), |m| format!("#{}", m.n))
}

/// " in group N" for a group this run created, for traces.
fn group_label(hist: &History, g: &GroupId) -> String {
    match hist.groups.iter().position(|(x, _)| x == g) {
        Some(n) => format!(" in group {n}"),
        None => format!(" in {g:?}"),
    }
}

fn msg_list(hist: &History, ids: &[MessageId]) -> String {
    ids.iter().map(|id| msg_label(hist, id)).collect::<Vec<_>>().join(", ")
}

fn seq_list(seqs: &[u64]) -> String {
    let s: Vec<String> = seqs.iter().map(u64::to_string).collect();
    let noun = if seqs.len() == 1 { "seq" } else { "seqs" };
    format!("{noun} {}", s.join(", "))
}

fn conv_name(conv: Conv) -> String {
    match conv {
        Conv::Direct(p) => format!("the conversation with {}", name(usize::from(p))),
        Conv::Group(g) => format!("group {g}"),
    }
}

/// An encoded client frame in plain words, without its sender: "the send of
/// #1", "the delivery-ack for seq 3", "the Read receipt for #1".
pub fn client_frame_phrase(hist: &History, bytes: &[u8]) -> String {
    match wire::decode::<ClientFrame>(bytes) {
        Ok(ClientFrame::Send { message_id, kind: EnvelopeKind::PreKey, .. }) => {
            format!("the first (pre-key) send of {}", msg_label(hist, &message_id))
        }
        Ok(ClientFrame::Send { message_id, .. }) => format!("the send of {}", msg_label(hist, &message_id)),
        Ok(ClientFrame::GroupSend { message_id, .. }) => format!("the group-send of {}", msg_label(hist, &message_id)),
        Ok(ClientFrame::DeliveryAck { seqs }) => format!("the delivery-ack for {}", seq_list(&seqs)),
        Ok(ClientFrame::Receipt { kind, message_ids, .. }) => {
            format!("the {kind:?} receipt for {}", msg_list(hist, &message_ids))
        }
        Ok(ClientFrame::FetchBundle { owner, .. }) => format!("the request for {}'s key bundle", owner.user.as_str()),
        Ok(ClientFrame::GroupChange { change }) => format!("the group change to version {}", change.version),
        Ok(f) => format!("the {}", f.kind()),
        Err(e) => format!("an undecodable frame ({e})"),
    }
}

/// An encoded server frame in plain words, without its recipient: "the
/// delivery of #1 from alice (seq 3)", "the server-ack of #1".
pub fn server_frame_phrase(hist: &History, bytes: &[u8]) -> String {
    match wire::decode::<ServerFrame>(bytes) {
        Ok(ServerFrame::Deliver { seq, item }) => match item {
            Delivery::Envelope(e) => {
                format!("the delivery of {}'s {} (seq {seq})", e.from.user.as_str(), msg_label(hist, &e.message_id))
            }
            Delivery::Receipt { from, kind, message_ids } => format!(
                "the delivery of {}'s {kind:?} receipt for {} (seq {seq})",
                from.user.as_str(),
                msg_list(hist, &message_ids)
            ),
            Delivery::Expired { message_id, to } => {
                format!("the notice that {} to {} expired (seq {seq})", msg_label(hist, &message_id), to.user.as_str())
            }
            Delivery::GroupChange(c) => format!("the delivery of group change version {} (seq {seq})", c.version),
        },
        Ok(ServerFrame::ServerAck { message_id, .. }) => format!("the server-ack of {}", msg_label(hist, &message_id)),
        Ok(ServerFrame::Bundle { bundle, .. }) => match bundle.one_time_prekey {
            Some(k) => format!("{}'s key bundle (one-time prekey {})", bundle.owner.user.as_str(), k.id),
            None => format!("{}'s key bundle (no one-time prekey)", bundle.owner.user.as_str()),
        },
        Ok(ServerFrame::Error { code, detail }) => format!("the error {code:?} ({detail})"),
        Ok(f) => format!("the {}", f.kind()),
        Err(e) => format!("an undecodable frame ({e})"),
    }
}

/// The kind of an encoded frame as a scenario's `[[faults.frames]]` rule
/// names it: the wire variant in kebab case, and for a `deliver` what it
/// carries (`deliver-envelope`, `deliver-receipt`, …).
pub fn frame_kind(dir: Dir, bytes: &[u8]) -> Option<&'static str> {
    match dir {
        Dir::Up => wire::decode::<ClientFrame>(bytes).ok().map(|f| f.kind()),
        Dir::Down => wire::decode::<ServerFrame>(bytes).ok().map(|f| f.delivery_kind().unwrap_or(f.kind())),
    }
}
