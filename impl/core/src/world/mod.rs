//! `World`: one server and N clients in one process, on a simulated clock and
//! an in-memory network that can drop, duplicate, reorder and delay frames,
//! with crashes and restarts of either side, and the invariant oracle run
//! after every step.
//!
//! It is the fast driver of the simulator and the harness of the core's
//! property tests. Everything is derived from one seed: the same seed and the
//! same calls give the same history, byte for byte.
//!
//! # Driving
//! Apps act through [`World::send_text`], [`World::mark_read`] and friends;
//! faults through [`World::crash_client`], [`World::crash_server`],
//! [`World::disconnect`] and the [`Faults`] knobs. [`World::step`] runs the
//! next event in time order; [`World::run_until`] steps to a time;
//! [`World::quiesce`] turns faults off, brings everyone online and runs until
//! nothing is left to do, after which [`World::finish`] runs the liveness
//! checks.

pub mod faults;
pub mod oracle;

use std::collections::{BTreeMap, BTreeSet};

use bluetick_crypto::CipherSuite;
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use serde::Serialize;

use crate::client::{AppEvent, Client, ClientBugs, ClientConfig, SavedClient};
use crate::ids::{DeviceAddress, DeviceId, GroupId, MessageId, UserId};
use crate::server::{ConnId, Server, ServerConfig, ServerOutput};
use crate::store::{MemoryStore, Store, Table};
use crate::wire::{self, ServerFrame};

use oracle::{names, History, SentMessage, Violation};

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
    /// Server tunables and deliberate bugs.
    pub server: ServerConfig,
    /// Deliberate client bugs (applied to every client).
    pub client_bugs: ClientBugs,
    /// Cipher suite of every device.
    pub suite: CipherSuite,
    /// A client with unsent work retries after this long.
    pub client_resend_after_ms: u64,
    /// A disconnected online user reconnects after this long.
    pub reconnect_after_ms: u64,
    /// Check after every save that the saved state restores (costly; tests).
    pub verify_saves: bool,
}

impl WorldConfig {
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
            verify_saves: false,
        })
    }
}

#[derive(Debug)]
enum Event {
    /// Bytes for the server on a connection.
    ToServer { conn: ConnId, bytes: Vec<u8> },
    /// A frame for a client on a connection.
    ToClient { user: UserId, conn: ConnId, frame: Box<ServerFrame> },
    /// A user (re)connects if it wants to be online.
    Connect { user: UserId },
}

struct Device {
    config: ClientConfig,
    client: Option<Client>,
    saved: SavedClient,
    conn: Option<ConnId>,
    want_online: bool,
}

/// The simulated world. See the module docs.
pub struct World {
    config: WorldConfig,
    now_ms: u64,
    rng: ChaCha20Rng,
    faults_on: bool,
    server: Server,
    store: MemoryStore,
    server_incarnation: u64,
    devices: BTreeMap<UserId, Device>,
    conn_owner: BTreeMap<ConnId, UserId>,
    queue: BTreeMap<(u64, u64), Event>,
    next_event: u64,
    next_conn: u64,
    history: History,
    violations: Vec<Violation>,
    steps: u64,
}

/// Start of simulated time: 2026-01-01T00:00:00Z, so timestamps look real.
pub const EPOCH_MS: u64 = 1_767_225_600_000;

impl World {
    /// Builds the world; every user starts online and registers.
    pub fn new(config: WorldConfig) -> Self {
        let mut rng = ChaCha20Rng::seed_from_u64(config.seed);
        let server = Server::new(config.server.clone(), rng.next_u64());
        let mut devices = BTreeMap::new();
        for user in &config.users {
            let cc = ClientConfig {
                suite: config.suite,
                resend_after_ms: config.client_resend_after_ms,
                bugs: config.client_bugs.clone(),
                ..ClientConfig::new(user.clone(), DeviceId(1))
            };
            let client = Client::new(cc.clone(), rng.next_u64(), EPOCH_MS);
            let saved = client.save();
            devices.insert(
                user.clone(),
                Device { config: cc, client: Some(client), saved, conn: None, want_online: true },
            );
        }
        let mut w = World {
            config,
            now_ms: EPOCH_MS,
            rng,
            faults_on: true,
            server,
            store: MemoryStore::new(),
            server_incarnation: 0,
            devices,
            conn_owner: BTreeMap::new(),
            queue: BTreeMap::new(),
            next_event: 0,
            next_conn: 1,
            history: History::default(),
            violations: Vec::new(),
            steps: 0,
        };
        let users: Vec<UserId> = w.devices.keys().cloned().collect();
        for u in users {
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

    /// The server (for checks and reports).
    pub fn server(&self) -> &Server {
        &self.server
    }

    /// The server's durable store.
    pub fn store(&self) -> &MemoryStore {
        &self.store
    }

    /// Steps taken.
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// A client, if it is running.
    pub fn client(&self, user: &UserId) -> Option<&Client> {
        self.devices.get(user).and_then(|d| d.client.as_ref())
    }

    // ----- app commands -----

    /// `from`'s app sends `body` to `to`. Returns the message id.
    pub fn send_text(&mut self, from: &UserId, to: &UserId, body: &[u8]) -> Option<MessageId> {
        let now = self.now_ms;
        let dev = self.devices.get_mut(from)?;
        let client = dev.client.as_mut()?;
        let id = client.send_text(to, body, now).ok()?;
        self.history
            .sent
            .insert(id, SentMessage { from: from.clone(), to: BTreeSet::from([to.clone()]), body: body.to_vec() });
        self.after_client(from);
        Some(id)
    }

    /// `from`'s app creates a group with `members` (besides itself).
    pub fn create_group(&mut self, from: &UserId, members: &[UserId]) -> Option<GroupId> {
        let now = self.now_ms;
        let client = self.devices.get_mut(from)?.client.as_mut()?;
        let g = client.create_group(members.to_vec(), now).ok()?;
        self.after_client(from);
        Some(g)
    }

    /// `from`'s app sends `body` to a group; `members` are the intended
    /// recipients as the app believes them to be.
    pub fn send_group(&mut self, from: &UserId, group: GroupId, members: &[UserId], body: &[u8]) -> Option<MessageId> {
        let now = self.now_ms;
        let client = self.devices.get_mut(from)?.client.as_mut()?;
        let id = client.send_group(group, body, now).ok()?;
        let to: BTreeSet<UserId> = members.iter().filter(|m| *m != from).cloned().collect();
        self.history.sent.insert(id, SentMessage { from: from.clone(), to, body: body.to_vec() });
        self.after_client(from);
        Some(id)
    }

    /// `reader`'s app opens the conversation with `peer`: everything it has
    /// received from `peer` is now read.
    pub fn mark_read(&mut self, reader: &UserId, peer: &UserId) {
        let now = self.now_ms;
        let Some(client) = self.devices.get_mut(reader).and_then(|d| d.client.as_mut()) else { return };
        client.mark_read(peer, now);
        let ids: Vec<MessageId> = self
            .history
            .received
            .keys()
            .filter(|(u, id)| u == reader && self.history.sent.get(id).is_some_and(|m| &m.from == peer))
            .map(|(_, id)| *id)
            .collect();
        for id in ids {
            self.history.read.insert((reader.clone(), id));
        }
        self.after_client(reader);
    }

    // ----- faults -----

    /// Turns the network faults on or off (the liveness phase turns them off).
    pub fn set_faults(&mut self, on: bool) {
        self.faults_on = on;
    }

    /// Closes `user`'s connection; it stays offline until [`World::connect`].
    pub fn disconnect(&mut self, user: &UserId) {
        if let Some(d) = self.devices.get_mut(user) {
            d.want_online = false;
        }
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
        self.drop_connection(user);
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
        self.history.counts.client_crashes += 1;
        if d.want_online {
            let after = self.config.reconnect_after_ms;
            self.schedule(after, Event::Connect { user: user.clone() });
        }
    }

    /// Kills the server: volatile state is lost, the store survives; every
    /// connection drops and clients reconnect.
    pub fn crash_server(&mut self) {
        let users: Vec<UserId> = self.devices.keys().cloned().collect();
        for u in &users {
            self.drop_client_side(u);
        }
        // Frames in flight to or from the dead server are gone.
        self.queue.retain(|_, e| matches!(e, Event::Connect { .. }));
        self.server_incarnation += 1;
        let seed = self.rng.next_u64();
        match Server::recover(self.config.server.clone(), seed, &mut self.store) {
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

    // ----- running -----

    /// The time of the next thing to happen, if anything is scheduled.
    pub fn next_time(&self) -> Option<u64> {
        let queued = self.queue.keys().next().map(|(t, _)| *t);
        let server = self.server.poll_timeout();
        let clients = self.devices.values().filter_map(|d| d.client.as_ref()?.poll_timeout()).min();
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
        let due: Vec<UserId> = self
            .devices
            .iter()
            .filter(|(_, d)| d.client.as_ref().and_then(Client::poll_timeout).is_some_and(|x| x <= now))
            .map(|(u, _)| u.clone())
            .collect();
        for u in due {
            if let Some(c) = self.devices.get_mut(&u).and_then(|d| d.client.as_mut()) {
                c.handle_timeout(now);
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
    }

    /// Advances simulated time by `ms`, running everything due.
    pub fn run_for(&mut self, ms: u64) {
        let until = self.now_ms + ms;
        self.run_until(until);
    }

    /// Faults off, everyone online, then run for at most `budget_ms` of
    /// simulated time or until the system is idle (no frames in flight and
    /// nothing waiting in any mailbox).
    pub fn quiesce(&mut self, budget_ms: u64) {
        self.set_faults(false);
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
    }

    /// End-of-run liveness checks; returns every violation of the run.
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
        &self.violations
    }

    /// A multi-line description of where things stand, for failure messages.
    pub fn describe(&self) -> String {
        let mut out = format!("t={} next={:?} queued={}\n", self.now_ms, self.next_time(), self.queue.len());
        for (u, d) in &self.devices {
            out += &format!(
                "  {u:?}: conn={:?} want_online={} server_online={} outbox={:?} timeout={:?} mailbox={}\n",
                d.conn,
                d.want_online,
                self.server.is_online(&device_of(u)),
                d.client.as_ref().map(Client::outbox_len),
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
        self.devices.values().all(|d| d.client.as_ref().is_none_or(|c| c.outbox_len() == 0))
    }

    // ----- plumbing -----

    fn schedule(&mut self, delay_ms: u64, ev: Event) {
        let key = (self.now_ms + delay_ms, self.next_event);
        self.next_event += 1;
        self.queue.insert(key, ev);
    }

    /// Schedules a frame across the network, with faults.
    fn transmit(&mut self, ev: Event) {
        let f = self.config.faults;
        let (drop, dup) = if self.faults_on { (f.drop_per_mille, f.duplicate_per_mille) } else { (0, 0) };
        if drop > 0 && self.rng.next_u32() % 1000 < drop {
            self.history.counts.frames_dropped += 1;
            return;
        }
        let copies = if dup > 0 && self.rng.next_u32() % 1000 < dup {
            self.history.counts.frames_duplicated += 1;
            2
        } else {
            1
        };
        for i in 0..copies {
            let spread = f.latency_max_ms.saturating_sub(f.latency_min_ms);
            let jitter = if spread > 0 && self.faults_on { self.rng.next_u64() % (spread + 1) } else { 0 };
            let _ = i;
            self.schedule(f.latency_min_ms + jitter, ev_clone(&ev));
        }
    }

    fn run_event(&mut self, ev: Event) {
        let now = self.now_ms;
        match ev {
            Event::ToServer { conn, bytes } => {
                if self.conn_owner.contains_key(&conn) {
                    self.history.counts.frames_delivered += 1;
                    self.server.handle_bytes(conn, &bytes, now, &mut self.store);
                    self.after_server();
                }
            }
            Event::ToClient { user, conn, frame } => {
                let live = self.devices.get(&user).is_some_and(|d| d.conn == Some(conn));
                if live {
                    self.history.counts.frames_delivered += 1;
                    if let Some(c) = self.devices.get_mut(&user).and_then(|d| d.client.as_mut()) {
                        c.handle_frame(*frame, now);
                    }
                    self.after_client(&user);
                }
            }
            Event::Connect { user } => {
                let Some(d) = self.devices.get_mut(&user) else { return };
                if !d.want_online || d.conn.is_some() || d.client.is_none() {
                    return;
                }
                let conn = ConnId(self.next_conn);
                self.next_conn += 1;
                d.conn = Some(conn);
                self.conn_owner.insert(conn, user.clone());
                if let Some(c) = d.client.as_mut() {
                    c.handle_connected(now);
                }
                self.server.handle_connect(conn, now);
                self.after_client(&user);
                self.after_server();
            }
        }
    }

    fn drop_client_side(&mut self, user: &UserId) {
        let now = self.now_ms;
        let Some(d) = self.devices.get_mut(user) else { return };
        if let Some(conn) = d.conn.take() {
            self.conn_owner.remove(&conn);
            if let Some(c) = d.client.as_mut() {
                c.handle_disconnected(now);
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
            self.after_server();
        }
    }

    /// The driver's half of the server's call order: drain outputs.
    fn after_server(&mut self) {
        let now = self.now_ms;
        while let Some(out) = self.server.poll_output() {
            match out {
                ServerOutput::Frame { conn, frame } => {
                    if let ServerFrame::Bundle { bundle, .. } = &frame {
                        if let Some(k) = &bundle.one_time_prekey {
                            let v = self.history.prekey_handed_out(&bundle.owner, k.id, now);
                            self.violations.extend(v);
                        }
                    }
                    if let Some(user) = self.conn_owner.get(&conn).cloned() {
                        self.transmit(Event::ToClient { user, conn, frame: Box::new(frame) });
                    }
                }
                ServerOutput::Close { conn, .. } => {
                    if let Some(user) = self.conn_owner.get(&conn).cloned() {
                        self.drop_client_side(&user);
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
        if c.is_dirty() {
            d.saved = c.save();
            if self.config.verify_saves {
                if let Err(e) = Client::restore(d.config.clone(), &d.saved) {
                    self.violations.push(Violation {
                        invariant: "client-save-restorable",
                        at_ms: now,
                        detail: format!("{user:?}'s saved state does not restore: {e}; state: {c:?}"),
                    });
                }
            }
        }
        let mut frames = Vec::new();
        while let Some(f) = c.poll_transmit() {
            frames.push(f);
        }
        let mut events = Vec::new();
        while let Some(e) = c.poll_event() {
            events.push(e);
        }
        let conn = d.conn;
        for e in events {
            let v = match e {
                AppEvent::Message { id, body, .. } => self.history.app_received(user, id, Some(&body), now),
                // Being told a message could not be read is also hearing of
                // it: after the message itself, it is a duplicate to the user.
                AppEvent::Undecryptable { id, .. } => self.history.app_received(user, id, None, now),
                AppEvent::Status { id, peer, status } => self.history.status_shown(id, &peer, status, now),
                _ => Vec::new(),
            };
            self.violations.extend(v);
        }
        if let Some(conn) = conn {
            for f in frames {
                let bytes = wire::encode(&f);
                self.transmit(Event::ToServer { conn, bytes });
            }
        }
    }

    fn check_safety(&mut self) {
        // No plaintext in the server's durable store. (The mailbox in memory
        // holds exactly what was stored, so the store is the place to look.)
        for t in Table::ALL {
            let Ok(rows) = self.store.scan(t) else { continue };
            for (_, v) in rows {
                if let Some(id) = self.history.find_plaintext(&v) {
                    self.violations.push(Violation {
                        invariant: names::NO_PLAINTEXT,
                        at_ms: self.now_ms,
                        detail: format!("the plaintext of {id:?} is in the server's {t} table"),
                    });
                    return;
                }
            }
        }
    }
}

fn ev_clone(ev: &Event) -> Event {
    match ev {
        Event::ToServer { conn, bytes } => Event::ToServer { conn: *conn, bytes: bytes.clone() },
        Event::ToClient { user, conn, frame } => {
            Event::ToClient { user: user.clone(), conn: *conn, frame: frame.clone() }
        }
        Event::Connect { user } => Event::Connect { user: user.clone() },
    }
}

/// A short, unique, recognisable plaintext for message `n` of a run, long
/// enough that finding it by accident in ciphertext is impossible.
pub fn plaintext(seed: u64, n: u64) -> Vec<u8> {
    format!("plaintext #{n} of run {seed:016x}").into_bytes()
}

/// The address of `user`'s one device.
pub fn device_of(user: &UserId) -> DeviceAddress {
    DeviceAddress::new(user.clone(), DeviceId(1))
}
