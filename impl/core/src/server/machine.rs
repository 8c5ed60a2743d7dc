//! The chat server as one sans-IO state machine.
//!
//! # Call order
//! A driver (tokio, the simulator's `World`, a model checker) owns the sockets,
//! the clock and a [`Store`]. It calls:
//! 1. [`Server::handle_connect`] when a connection opens,
//!    [`Server::handle_bytes`] for each frame received on it,
//!    [`Server::handle_disconnect`] when it closes, and
//!    [`Server::handle_timeout`] when the deadline from [`Server::poll_timeout`]
//!    has passed — each with the current time and the store;
//! 2. then drains [`Server::poll_output`] and sends or closes as told;
//! 3. then re-arms its timer with [`Server::poll_timeout`].
//!
//! Every handle call commits what it changed to the store in one atomic batch
//! *before* it queues any output, so a server-ack always follows a durable
//! write. After a crash the driver drops the `Server` and builds a new one with
//! [`Server::recover`] from the same store: volatile state (connections,
//! in-flight marks, presence subscriptions, rate limits) is lost, durable state
//! is not.
//!
//! The server sees envelope fields (`from`, `to`, `message_id`, `kind`, sizes,
//! times) and ciphertext only; it never holds a key that could open it.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use bluetick_crypto::{xeddsa, CipherSuite, PublicKey};
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;
use serde::{Deserialize, Serialize};

use crate::ids::{BlobId, DeviceAddress, DeviceId, GroupId, MessageId, UserId};
use crate::server::bodies::{BodyId, BodyStore};
use crate::server::keys::{KeyBug, KeyDirError, KeyDirectory, BUNDLE_FETCHES_PER_MINUTE_MAX};
use crate::server::mailbox::{Enqueued, Entry, Mailbox, MailboxBug, MAILBOX_DEPTH_MAX};
use crate::server::presence::{Presence, PresenceBug};
use crate::store::{Store, StoreError, Table, WriteBatch};
use crate::wire::{
    self, auth_message, ClientFrame, DecodeError, Delivery, Envelope, EnvelopeKind, ErrorCode, ServerFrame,
    SignedGroupChange, BATCH_LEN_MAX, CIPHERTEXT_LEN_MAX, MEDIA_CHUNK_LEN_MAX, PROTOCOL_VERSION,
};

/// Most members a group may have, as WhatsApp allows.
pub const GROUP_MEMBERS_MAX: usize = 1024;

/// Largest media blob, in bytes: a long video, far below what would strain a
/// store that keeps blobs in [`MEDIA_CHUNK_LEN_MAX`] pieces.
pub const BLOB_LEN_MAX: u64 = 100 * 1024 * 1024;

/// Frames one connection may send per second on average before it is
/// refused; enough for a client draining a backlog with batched acks, far
/// below what it takes to disturb other users.
pub const FRAMES_PER_SECOND_MAX: u32 = 200;

/// Burst allowance on top of [`FRAMES_PER_SECOND_MAX`].
pub const FRAMES_BURST_MAX: u32 = 400;

/// Refused frames after which a connection is closed: a client that keeps
/// sending what it was told is wrong is broken or hostile.
pub const CONNECTION_ERRORS_MAX: u32 = 64;

/// How long a connection may stay unauthenticated. A client whose challenge
/// or answer was lost would otherwise wait forever; closing makes it
/// reconnect and try again, and it bounds what idle sockets cost.
pub const AUTH_TIMEOUT_MS: u64 = 10_000;

/// One day in milliseconds.
pub const DAY_MS: u64 = 24 * 60 * 60 * 1000;

/// Devices one account may register. Every group message, receipt and group
/// change is queued once per device of each recipient, so without a bound one
/// account could make every honest sender to it write without limit; five is
/// a phone and four companions, as WhatsApp allows. With one connection per
/// device (a new one replaces the old), this also bounds connections per user.
pub const DEVICES_PER_USER_MAX: usize = 5;

/// Deliberate bugs that tests, scenarios and model checks switch on to prove
/// their checkers notice. All off by default; never set them for real.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerBugs {
    /// A mailbox bug (delete on send, non-idempotent enqueue).
    pub mailbox: Option<MailboxBug>,
    /// A key directory bug (one-time prekey handed out twice).
    pub keys: Option<KeyBug>,
    /// A presence bug (privacy ignored).
    pub presence: Option<PresenceBug>,
    /// Accept group changes without checking the admin's signature, as a
    /// server-controlled membership design would ("ghost member").
    pub unsigned_group_changes: bool,
}

/// Tunables; the defaults are what `bluetick serve` runs with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerConfig {
    /// Cipher suite the deployment's keys are signed under.
    pub suite: CipherSuite,
    /// A delivery not acked within this long is handed out again.
    pub ack_timeout_ms: u64,
    /// Deliveries in flight per device: enough to fill a link's round trip,
    /// few enough that a slow device does not hold many copies in transit.
    pub delivery_window: usize,
    /// How long text, pre-key and group envelopes wait for an offline device.
    pub ttl_text_ms: u64,
    /// How long media envelopes and blobs are kept.
    pub ttl_media_ms: u64,
    /// Mailbox depth limit per device.
    pub mailbox_depth_max: usize,
    /// Frames one connection may send per second on average
    /// ([`FRAMES_PER_SECOND_MAX`] by default). A deployment whose clients
    /// are load generators or bridges raises it; 0 refuses every frame.
    #[serde(default = "default_frames_per_second_max")]
    pub frames_per_second_max: u32,
    /// Burst allowance on top of the rate ([`FRAMES_BURST_MAX`] by default).
    #[serde(default = "default_frames_burst_max")]
    pub frames_burst_max: u32,
    /// Key bundles one device may fetch per minute, and at once after being
    /// idle ([`BUNDLE_FETCHES_PER_MINUTE_MAX`] by default; values below 1 are
    /// treated as 1). The limit slows draining another device's one-time
    /// prekeys; a scale simulation that sets up a large group in seconds
    /// raises it (with the clients' own pace,
    /// [`ClientConfig::bundle_fetches_per_minute`](crate::client::ClientConfig::bundle_fetches_per_minute)).
    #[serde(default = "default_bundle_fetches_per_minute")]
    pub bundle_fetches_per_minute: u32,
    /// Deliberate bugs (tests only).
    pub bugs: ServerBugs,
}

// Configurations saved before the frame limit was tunable keep its old value.
fn default_frames_per_second_max() -> u32 {
    FRAMES_PER_SECOND_MAX
}

fn default_frames_burst_max() -> u32 {
    FRAMES_BURST_MAX
}

fn default_bundle_fetches_per_minute() -> u32 {
    BUNDLE_FETCHES_PER_MINUTE_MAX
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            suite: CipherSuite::BluetickV1,
            ack_timeout_ms: 10_000,
            delivery_window: 64,
            ttl_text_ms: 30 * DAY_MS,
            ttl_media_ms: 14 * DAY_MS,
            mailbox_depth_max: MAILBOX_DEPTH_MAX,
            frames_per_second_max: FRAMES_PER_SECOND_MAX,
            frames_burst_max: FRAMES_BURST_MAX,
            bundle_fetches_per_minute: BUNDLE_FETCHES_PER_MINUTE_MAX,
            bugs: ServerBugs::default(),
        }
    }
}

/// A connection, numbered by the driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ConnId(pub u64);

/// What the driver must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerOutput {
    /// Send this frame on the connection.
    Frame {
        /// Where.
        conn: ConnId,
        /// What.
        frame: ServerFrame,
    },
    /// Close the connection (after sending what was queued before this).
    /// The server has already forgotten it; reporting the close back with
    /// [`Server::handle_disconnect`] is harmless but not needed.
    Close {
        /// Which.
        conn: ConnId,
        /// Why, for logs.
        reason: String,
    },
}

/// Counters for reports and checks.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerStats {
    /// Frames received.
    pub frames_in: u64,
    /// Error frames sent, by code.
    pub errors: BTreeMap<ErrorCode, u64>,
    /// Envelopes accepted (first time).
    pub accepted: u64,
    /// Sends recognised as retries of an accepted message.
    pub duplicate_sends: u64,
    /// Deliveries handed out (first time and redeliveries).
    pub deliveries: u64,
    /// Deliveries acked (and deleted).
    pub acked: u64,
    /// Mailbox entries that expired undelivered.
    pub expired: u64,
    /// Deliveries handed out again after an ack timeout.
    pub ack_timeouts: u64,
    /// Store writes that failed (the change was refused, nothing kept).
    pub store_failures: u64,
}

/// What waits in a mailbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Queued {
    /// An envelope; its body is inline or shared with other group members.
    /// Its sender and id are the mailbox entry's key, not repeated here.
    Envelope {
        /// When the server first accepted it.
        server_ts_ms: u64,
        /// The group of a group message.
        group: Option<GroupId>,
        /// Retention class.
        kind: EnvelopeKind,
        /// The ciphertext.
        body: Body,
    },
    /// A receipt batch, expiry notice or group change, stored exactly as it
    /// will be delivered (never [`Delivery::Envelope`]: envelopes are stored
    /// above so group bodies can be shared).
    Notice(Delivery),
}

/// Where an envelope's ciphertext is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Body {
    /// Stored in the entry (1:1 messages).
    Inline(#[serde(with = "crate::wire::serde_bytes_vec")] Vec<u8>),
    /// Stored once in the [`BodyStore`] (group messages).
    Shared(BodyId),
}

/// A group as the server knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Group {
    /// Users who may sign changes.
    pub admins: BTreeSet<UserId>,
    /// Members.
    pub members: BTreeSet<UserId>,
    /// Version of the last applied change.
    pub version: u64,
}

/// An uploaded blob's metadata; the bytes live in the store in chunks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Blob {
    owner: DeviceAddress,
    len: u64,
    chunks: u32,
    complete: bool,
    expires_at_ms: u64,
}

#[derive(Debug, Clone)]
enum Auth {
    Pending { nonce: [u8; 32], since_ms: u64 },
    Device(DeviceAddress),
}

/// A token bucket in milli-tokens, refilled from `now`.
#[derive(Debug, Clone)]
struct Bucket {
    milli_tokens: u64,
    at_ms: u64,
}

impl Bucket {
    fn new(now_ms: u64, burst: u32) -> Self {
        Bucket { milli_tokens: u64::from(burst) * 1000, at_ms: now_ms }
    }

    fn take(&mut self, now_ms: u64, per_second: u32, burst: u32) -> bool {
        let elapsed = now_ms.saturating_sub(self.at_ms);
        self.at_ms = self.at_ms.max(now_ms);
        let cap = u64::from(burst) * 1000;
        self.milli_tokens = self.milli_tokens.saturating_add(elapsed.saturating_mul(u64::from(per_second))).min(cap);
        if self.milli_tokens >= 1000 {
            self.milli_tokens -= 1000;
            true
        } else {
            false
        }
    }
}

#[derive(Debug, Clone)]
struct Conn {
    auth: Auth,
    bucket: Bucket,
    errors: u32,
}

/// A refusal: an error frame for the client, and whether to close.
struct Refusal {
    code: ErrorCode,
    detail: String,
}

impl Refusal {
    fn new(code: ErrorCode, detail: impl Into<String>) -> Self {
        Refusal { code, detail: detail.into() }
    }
}

impl From<StoreError> for Refusal {
    fn from(e: StoreError) -> Self {
        Refusal::new(ErrorCode::Unavailable, format!("storage failed, nothing was kept: {e}"))
    }
}

/// The chat server. See the module docs for the call order.
///
/// `Clone` copies the whole state, volatile parts included: a model checker
/// keeps one server per explored state and steps copies of it.
#[derive(Clone)]
pub struct Server {
    config: ServerConfig,
    rng: ChaCha20Rng,
    keys: KeyDirectory,
    presence: Presence,
    mailboxes: BTreeMap<DeviceAddress, Mailbox<Queued>>,
    /// (next deadline, device) for every mailbox that has one.
    deadlines: BTreeSet<(u64, DeviceAddress)>,
    deadline_of: BTreeMap<DeviceAddress, u64>,
    bodies: BodyStore,
    groups: BTreeMap<GroupId, Group>,
    /// (sender, message id) → (server time, forget-after time) of every message
    /// accepted within its TTL, so a retry never creates a second copy even
    /// after the first was delivered and deleted.
    accepted: BTreeMap<(DeviceAddress, MessageId), (u64, u64)>,
    accepted_expiry: BTreeSet<(u64, DeviceAddress, MessageId)>,
    blobs: BTreeMap<BlobId, Blob>,
    conns: BTreeMap<ConnId, Conn>,
    /// (deadline, connection) of every connection still unauthenticated, so
    /// `poll_timeout` does not walk every connection (it is asked after every
    /// step of a simulation with thousands of them).
    auth_deadlines: BTreeSet<(u64, ConnId)>,
    online: BTreeMap<DeviceAddress, ConnId>,
    out: VecDeque<ServerOutput>,
    /// Connections told to close during the current call; they are
    /// disconnected (in-flight deliveries requeued) before the call returns,
    /// so a driver need not report the close back.
    closing: Vec<ConnId>,
    stats: ServerStats,
}

/// Keys under [`Table::Meta`].
const META_BODY_NEXT: &[u8] = b"body-next-id";
/// Accepted-message rows as stores before 2026-11-30 wrote them: `a` and
/// the sender's (device, message id). Read at recovery and rewritten under
/// [`META_ACCEPTED_BY_EXPIRY_PREFIX`].
const META_ACCEPTED_PREFIX: u8 = b'a';
/// Accepted-message rows: `t`, the time they may be forgotten (big-endian,
/// so rows sort by it) and the sender's (device, message id).
const META_ACCEPTED_BY_EXPIRY_PREFIX: u8 = b't';
const META_NEXT_SEQ_PREFIX: u8 = b's';

fn enc<T: Serialize>(value: &T) -> Vec<u8> {
    wire::encode(value)
}

fn dec<'a, T: Deserialize<'a>>(table: Table, bytes: &'a [u8]) -> Result<T, StoreError> {
    postcard::from_bytes(bytes).map_err(|e| StoreError::Corrupt { table, detail: e.to_string() })
}

/// First byte of a mailbox row's key. Keys used to be the encoding of
/// (device, seq), with the seq as a varint, which puts its low bits first:
/// consecutive entries of one device were scattered over its leaves, so
/// each insert and delete rewrote a page of its own. Now: this marker (no
/// old key starts with it: theirs is a user name's length, at most 32), the
/// device, and the seq big-endian, so a device's rows sort by seq, new ones
/// land on its last leaf and acknowledged ones leave from its first.
const MAILBOX_KEY_ORDERED: u8 = 0xff;

fn mailbox_key(addr: &DeviceAddress, seq: u64) -> Vec<u8> {
    let mut k = vec![MAILBOX_KEY_ORDERED];
    k.extend(enc(addr));
    k.extend(seq.to_be_bytes());
    k
}

/// The device a mailbox row belongs to, and whether its key has the old form.
fn mailbox_owner(table: Table, key: &[u8]) -> Result<(DeviceAddress, bool), StoreError> {
    match key.split_first() {
        Some((&MAILBOX_KEY_ORDERED, rest)) => match rest.len().checked_sub(8) {
            Some(end) => Ok((dec(table, &rest[..end])?, false)),
            None => Err(StoreError::Corrupt { table, detail: format!("mailbox key of {} bytes", key.len()) }),
        },
        _ => {
            let (addr, _seq): (DeviceAddress, u64) = dec(table, key)?;
            Ok((addr, true))
        }
    }
}

/// The row that remembers `id` from `from` until `forget_ms`. Keyed by
/// expiry first because the rows live for the TTL (30 days) and every
/// message adds one: keyed by sender and random message id, each insert
/// landed on a leaf of its own, so a commit of a few messages rewrote a
/// B-tree page per message (redb copies every page it changes); in expiry
/// order new rows share the last leaf and expiry deletes the first ones.
fn accepted_key(from: &DeviceAddress, id: &MessageId, forget_ms: u64) -> Vec<u8> {
    let mut k = vec![META_ACCEPTED_BY_EXPIRY_PREFIX];
    k.extend(forget_ms.to_be_bytes());
    k.extend(enc(&(from, id)));
    k
}

/// The (sender, message id) of an accepted-message row's key, either form.
fn accepted_of(table: Table, key: &[u8]) -> Option<Result<(DeviceAddress, MessageId), StoreError>> {
    match key.split_first()? {
        (&META_ACCEPTED_BY_EXPIRY_PREFIX, rest) => Some(match rest.get(8..) {
            Some(ids) => dec(table, ids),
            None => Err(StoreError::Corrupt { table, detail: format!("accepted row key of {} bytes", key.len()) }),
        }),
        (&META_ACCEPTED_PREFIX, rest) => Some(dec(table, rest)),
        _ => None,
    }
}

/// What one row the server writes says about routing, for observers of its
/// store: the simulator's turmoil driver cannot read the server's memory, so
/// it follows each group message's fan-out (who it was queued for) here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoutingRow {
    /// Message `message` of `from` was queued for device `to`.
    Queued {
        /// The recipient device.
        to: DeviceAddress,
        /// The sender.
        from: DeviceAddress,
        /// The message.
        message: MessageId,
        /// Its group, for a group message.
        group: Option<GroupId>,
    },
    /// The server accepted (and will ack) `message` of `from`; the rows that
    /// queue it are written in the same batch, before this one.
    Accepted {
        /// The sender.
        from: DeviceAddress,
        /// The message.
        message: MessageId,
    },
}

/// Reads a row `(table, key, value)` as the server writes it; `None` for
/// rows that are not about routing an envelope, or that do not decode.
pub fn routing_row(table: Table, key: &[u8], value: &[u8]) -> Option<RoutingRow> {
    match table {
        Table::Mailbox => {
            let (to, _) = mailbox_owner(table, key).ok()?;
            let entry: Entry<Queued> = dec(table, value).ok()?;
            match entry.payload {
                Queued::Envelope { group, .. } => {
                    let (from, message) = entry.key;
                    Some(RoutingRow::Queued { to, from, message, group })
                }
                Queued::Notice(_) => None,
            }
        }
        Table::Meta => {
            let (from, message) = accepted_of(table, key)?.ok()?;
            Some(RoutingRow::Accepted { from, message })
        }
        _ => None,
    }
}

fn next_seq_key(addr: &DeviceAddress) -> Vec<u8> {
    let mut k = vec![META_NEXT_SEQ_PREFIX];
    k.extend(enc(addr));
    k
}

fn blob_chunk_key(blob: &BlobId, index: u32) -> Vec<u8> {
    let mut k = blob.0.to_vec();
    k.extend_from_slice(&index.to_be_bytes());
    k
}

fn blob_meta_key(blob: &BlobId) -> Vec<u8> {
    blob.0.to_vec()
}

impl Server {
    /// A server with an empty store. `seed` drives every random choice
    /// (challenge nonces, notice ids), so a run is reproducible.
    pub fn new(config: ServerConfig, seed: u64) -> Self {
        let mut keys = KeyDirectory::default();
        keys.set_bug(config.bugs.keys);
        keys.set_fetches_per_minute(config.bundle_fetches_per_minute);
        let mut presence = Presence::default();
        presence.set_bug(config.bugs.presence);
        Server {
            config,
            rng: ChaCha20Rng::seed_from_u64(seed),
            keys,
            presence,
            mailboxes: BTreeMap::new(),
            deadlines: BTreeSet::new(),
            deadline_of: BTreeMap::new(),
            bodies: BodyStore::default(),
            groups: BTreeMap::new(),
            accepted: BTreeMap::new(),
            accepted_expiry: BTreeSet::new(),
            blobs: BTreeMap::new(),
            conns: BTreeMap::new(),
            auth_deadlines: BTreeSet::new(),
            online: BTreeMap::new(),
            out: VecDeque::new(),
            closing: Vec::new(),
            stats: ServerStats::default(),
        }
    }

    /// Rebuilds a server from its store after a crash or restart.
    ///
    /// Rows a store written by an older version keyed differently (mailbox
    /// and accepted-message rows, before 2026-11-30) are rewritten in the
    /// current form, in one batch, before this returns; a store that holds
    /// none is only read.
    ///
    /// # Errors
    /// A row that does not decode ([`StoreError::Corrupt`]), or the store's
    /// own read or write errors.
    pub fn recover(config: ServerConfig, seed: u64, store: &mut dyn Store) -> Result<Self, StoreError> {
        let mut s = Server::new(config, seed);
        let mut key_records = Vec::new();
        for (k, v) in store.scan(Table::Keys)? {
            key_records.push((dec(Table::Keys, &k)?, dec(Table::Keys, &v)?));
        }
        s.keys.load(key_records);
        let mut presence_records = Vec::new();
        for (k, v) in store.scan(Table::Presence)? {
            presence_records.push((dec(Table::Presence, &k)?, dec(Table::Presence, &v)?));
        }
        s.presence.load(presence_records);
        for (k, v) in store.scan(Table::Groups)? {
            let id: GroupId = dec(Table::Groups, &k)?;
            s.groups.insert(id, dec(Table::Groups, &v)?);
        }
        let mut per_device: BTreeMap<DeviceAddress, Vec<Entry<Queued>>> = BTreeMap::new();
        let mut refs: BTreeMap<BodyId, u32> = BTreeMap::new();
        let mut legacy = WriteBatch::default();
        for (k, v) in store.scan(Table::Mailbox)? {
            let (addr, old_form) = mailbox_owner(Table::Mailbox, &k)?;
            let entry: Entry<Queued> = dec(Table::Mailbox, &v)?;
            if old_form {
                // Moved once to the new form, so acks and expiry, which
                // delete by it, find the row.
                legacy.delete(Table::Mailbox, k.clone());
                legacy.put(Table::Mailbox, mailbox_key(&addr, entry.seq), v.clone());
            }
            if let Queued::Envelope { body: Body::Shared(id), .. } = &entry.payload {
                *refs.entry(*id).or_default() += 1;
            }
            per_device.entry(addr).or_default().push(entry);
        }
        let depth_max = s.config.mailbox_depth_max;
        for (addr, entries) in per_device {
            let mut m = Mailbox::restore(entries, depth_max);
            m.set_bug(s.config.bugs.mailbox);
            s.mailboxes.insert(addr.clone(), m);
            s.touch(&addr);
        }
        let mut bodies = Vec::new();
        for (k, v) in store.scan(Table::Bodies)? {
            let id = u64::from_be_bytes(k.as_slice().try_into().map_err(|_| StoreError::Corrupt {
                table: Table::Bodies,
                detail: format!("body key of {} bytes", k.len()),
            })?);
            bodies.push((BodyId(id), v));
        }
        let (body_store, orphans) = BodyStore::restore(bodies, &refs);
        s.bodies = body_store;
        for (k, v) in store.scan(Table::Meta)? {
            if k.as_slice() == META_BODY_NEXT {
                s.bodies.reserve_ids_below(dec(Table::Meta, &v)?);
            } else if k.first() == Some(&META_NEXT_SEQ_PREFIX) {
                let addr: DeviceAddress = dec(Table::Meta, &k[1..])?;
                let next: u64 = dec(Table::Meta, &v)?;
                s.mailbox(&addr).raise_next_seq(next);
            } else if let Some(ids) = accepted_of(Table::Meta, &k) {
                let (from, id) = ids?;
                let (ts, forget): (u64, u64) = dec(Table::Meta, &v)?;
                if k.first() == Some(&META_ACCEPTED_PREFIX) {
                    legacy.delete(Table::Meta, k.clone());
                    legacy.put(Table::Meta, accepted_key(&from, &id, forget), v.clone());
                }
                s.accepted_expiry.insert((forget, from.clone(), id));
                s.accepted.insert((from, id), (ts, forget));
            }
        }
        // Rows in an old key form move to the new one once (see above).
        if !legacy.is_empty() {
            store.apply(legacy)?;
        }
        for (k, v) in store.scan(Table::Blobs)? {
            if k.len() == 16 {
                let mut id = [0u8; 16];
                id.copy_from_slice(&k);
                s.blobs.insert(BlobId(id), dec(Table::Blobs, &v)?);
            }
        }
        // Bodies freed just before the crash: finish deleting them.
        if !orphans.is_empty() {
            let mut batch = WriteBatch::default();
            for id in orphans {
                batch.delete(Table::Bodies, id.0.to_be_bytes().to_vec());
            }
            store.apply(batch)?;
        }
        Ok(s)
    }

    /// Feeds the server's state, durable and volatile, into `hasher`
    /// canonically: equal states feed equal bytes. Left out, because a model
    /// checker that hashed them would tell apart states that behave the same:
    /// counters ([`ServerStats`]), which never change what the server does
    /// next, and each connection's rate-limit bucket, which differs with
    /// every frame received yet changes nothing until a connection nears
    /// [`FRAMES_BURST_MAX`] frames (a checker relying on this must stay far
    /// below that, or watch for `LimitExceeded` refusals). (`Server` cannot
    /// derive `Hash`: its parts hold an RNG and maps of records that do not
    /// implement it.)
    pub fn hash_state<H: std::hash::Hasher>(&self, hasher: &mut H) {
        let durable = (
            &self.config,
            &self.rng,
            &self.keys,
            &self.presence,
            &self.mailboxes,
            &self.deadlines,
            &self.bodies,
            &self.groups,
            &self.accepted,
            &self.blobs,
            &self.online,
            &self.closing,
        );
        hasher.write(&enc(&durable));
        hasher.write_usize(self.conns.len());
        for (id, c) in &self.conns {
            hasher.write_u64(id.0);
            match &c.auth {
                Auth::Pending { nonce, since_ms } => {
                    hasher.write_u8(0);
                    hasher.write(nonce);
                    hasher.write_u64(*since_ms);
                }
                Auth::Device(addr) => {
                    hasher.write_u8(1);
                    hasher.write(&enc(addr));
                }
            }
            hasher.write_u32(c.errors);
        }
        hasher.write_usize(self.out.len());
        for o in &self.out {
            match o {
                ServerOutput::Frame { conn, frame } => {
                    hasher.write_u64(conn.0);
                    hasher.write(&enc(frame));
                }
                ServerOutput::Close { conn, reason } => {
                    hasher.write_u64(!conn.0);
                    hasher.write(reason.as_bytes());
                }
            }
        }
    }

    /// The configuration.
    pub fn config(&self) -> &ServerConfig {
        &self.config
    }

    /// Counters.
    pub fn stats(&self) -> &ServerStats {
        &self.stats
    }

    /// Entries waiting for `addr` (delivered-but-unacked included).
    pub fn mailbox_len(&self, addr: &DeviceAddress) -> usize {
        self.mailboxes.get(addr).map_or(0, Mailbox::len)
    }

    /// Entries waiting across all devices.
    pub fn mailbox_total(&self) -> usize {
        self.mailboxes.values().map(Mailbox::len).sum()
    }

    /// Every mailbox entry, for checks (e.g. "no plaintext in server state").
    pub fn mailbox_entries(&self) -> impl Iterator<Item = (&DeviceAddress, &Entry<Queued>)> {
        self.mailboxes.iter().flat_map(|(a, m)| m.entries().map(move |e| (a, e)))
    }

    /// The shared group bodies.
    pub fn bodies(&self) -> &BodyStore {
        &self.bodies
    }

    /// The key directory.
    pub fn keys(&self) -> &KeyDirectory {
        &self.keys
    }

    /// A group's state.
    pub fn group(&self, id: &GroupId) -> Option<&Group> {
        self.groups.get(id)
    }

    /// Whether a device is connected and authenticated.
    pub fn is_online(&self, addr: &DeviceAddress) -> bool {
        self.online.contains_key(addr)
    }

    /// Next output for the driver.
    pub fn poll_output(&mut self) -> Option<ServerOutput> {
        self.out.pop_front()
    }

    /// When [`Server::handle_timeout`] must be called next. After
    /// `handle_timeout(now)` this is later than `now` (or `None`).
    pub fn poll_timeout(&self) -> Option<u64> {
        let mailbox = self.deadlines.first().map(|(t, _)| *t);
        let presence = self.presence.next_deadline_ms();
        let accepted = self.accepted_expiry.first().map(|(t, ..)| *t);
        let blobs = self.blobs.values().map(|b| b.expires_at_ms).min();
        let auth = self.auth_deadlines.first().map(|(t, _)| *t);
        [mailbox, presence, accepted, blobs, auth].into_iter().flatten().min()
    }

    /// A connection opened: send it a challenge to sign.
    pub fn handle_connect(&mut self, conn: ConnId, now_ms: u64) {
        let mut nonce = [0u8; 32];
        self.rng.fill_bytes(&mut nonce);
        if let Some(old) = self.conns.insert(
            conn,
            Conn {
                auth: Auth::Pending { nonce, since_ms: now_ms },
                bucket: Bucket::new(now_ms, self.config.frames_burst_max),
                errors: 0,
            },
        ) {
            self.forget_auth_deadline(conn, &old.auth);
        }
        self.auth_deadlines.insert((now_ms + AUTH_TIMEOUT_MS, conn));
        self.send(conn, ServerFrame::Challenge { nonce });
    }

    /// A connection closed. Its in-flight deliveries go back to the queue.
    pub fn handle_disconnect(&mut self, conn: ConnId, now_ms: u64, store: &mut dyn Store) {
        let Some(c) = self.conns.remove(&conn) else { return };
        self.forget_auth_deadline(conn, &c.auth);
        if let Auth::Device(addr) = c.auth {
            if self.online.get(&addr) == Some(&conn) {
                self.online.remove(&addr);
                if let Some(m) = self.mailboxes.get_mut(&addr) {
                    m.requeue_all();
                }
                self.touch(&addr);
                if self.keys.devices_of(&addr.user).iter().all(|d| !self.online.contains_key(d)) {
                    self.presence.set_online(&addr.user, false, now_ms);
                }
                let batch = self.presence_batch();
                // Last seen is best effort: a failed write loses only precision.
                if store.apply(batch).is_err() {
                    self.stats.store_failures += 1;
                }
            }
        }
    }

    /// One frame's bytes arrived on `conn`.
    pub fn handle_bytes(&mut self, conn: ConnId, bytes: &[u8], now_ms: u64, store: &mut dyn Store) {
        self.stats.frames_in += 1;
        let (per_second, burst) = (self.config.frames_per_second_max, self.config.frames_burst_max);
        let Some(c) = self.conns.get_mut(&conn) else { return };
        if !c.bucket.take(now_ms, per_second, burst) {
            self.refuse(conn, Refusal::new(ErrorCode::LimitExceeded, "too many frames: slow down"));
            // The refusal may be the one that closes the connection.
            self.finish_closes(now_ms, store);
            return;
        }
        let frame = match wire::decode::<ClientFrame>(bytes) {
            Ok(f) => f,
            Err(e @ DecodeError::TooLarge { .. }) => {
                self.refuse(conn, Refusal::new(ErrorCode::TooLarge, e.to_string()));
                self.out.push_back(ServerOutput::Close { conn, reason: e.to_string() });
                self.closing.push(conn);
                self.finish_closes(now_ms, store);
                return;
            }
            Err(e) => {
                self.refuse(conn, Refusal::new(ErrorCode::Malformed, e.to_string()));
                self.finish_closes(now_ms, store);
                return;
            }
        };
        self.handle_frame(conn, frame, now_ms, store);
    }

    /// Disconnects what this call told the driver to close.
    fn finish_closes(&mut self, now_ms: u64, store: &mut dyn Store) {
        for conn in std::mem::take(&mut self.closing) {
            self.handle_disconnect(conn, now_ms, store);
        }
    }

    /// One decoded frame arrived on `conn` (drivers that decode themselves).
    pub fn handle_frame(&mut self, conn: ConnId, frame: ClientFrame, now_ms: u64, store: &mut dyn Store) {
        let auth = match self.conns.get(&conn) {
            Some(c) => c.auth.clone(),
            None => return,
        };
        let result = match (auth, frame) {
            (Auth::Pending { nonce, .. }, ClientFrame::Register { version, user, device, identity_key, proof }) => {
                self.register(conn, &nonce, version, user, device, identity_key, &proof, now_ms, store)
            }
            (Auth::Pending { nonce, .. }, ClientFrame::Authenticate { version, user, device, proof }) => {
                self.authenticate(conn, &nonce, version, user, device, &proof, now_ms)
            }
            (Auth::Pending { .. }, other) => {
                Err(Refusal::new(ErrorCode::NotAuthenticated, format!("{} before authentication", frame_name(&other))))
            }
            (
                Auth::Device(addr),
                ClientFrame::Register { user, device, .. } | ClientFrame::Authenticate { user, device, .. },
            ) if addr.user == user && addr.device == device => {
                // The client did not see our Welcome (lost on the way): say it
                // again rather than leave it waiting.
                self.send(conn, ServerFrame::Welcome { server_ts_ms: now_ms });
                Ok(())
            }
            (Auth::Device(_), ClientFrame::Register { .. } | ClientFrame::Authenticate { .. }) => {
                Err(Refusal::new(ErrorCode::Malformed, "already authenticated as another device"))
            }
            (Auth::Device(addr), frame) => self.authed(conn, &addr, frame, now_ms, store),
        };
        if let Err(r) = result {
            self.refuse(conn, r);
        }
        self.finish_closes(now_ms, store);
    }

    /// Timers: ack timeouts, TTL expiry, presence pushes, housekeeping.
    pub fn handle_timeout(&mut self, now_ms: u64, store: &mut dyn Store) {
        // In connection order, as a walk over every connection would give.
        let stale: BTreeSet<ConnId> =
            self.auth_deadlines.iter().take_while(|(t, _)| *t <= now_ms).map(|(_, c)| *c).collect();
        for conn in stale {
            if let Some(c) = self.conns.remove(&conn) {
                self.forget_auth_deadline(conn, &c.auth);
            }
            self.out.push_back(ServerOutput::Close { conn, reason: "not authenticated in time".into() });
        }
        let due: Vec<DeviceAddress> =
            self.deadlines.iter().take_while(|(t, _)| *t <= now_ms).map(|(_, a)| a.clone()).collect();
        let mut batch = WriteBatch::default();
        let mut notices: Vec<(DeviceAddress, DeviceAddress, MessageId)> = Vec::new();
        for addr in &due {
            let Some(m) = self.mailboxes.get_mut(addr) else { continue };
            self.stats.ack_timeouts += m.requeue_timed_out(now_ms, self.config.ack_timeout_ms) as u64;
            for e in m.expire(now_ms) {
                self.stats.expired += 1;
                batch.delete(Table::Mailbox, mailbox_key(addr, e.seq));
                if let Queued::Envelope { body, .. } = &e.payload {
                    if let Body::Shared(id) = body {
                        if self.bodies.release(*id) {
                            batch.delete(Table::Bodies, id.0.to_be_bytes().to_vec());
                        }
                    }
                    let (from, message_id) = e.key.clone();
                    notices.push((from, addr.clone(), message_id));
                }
            }
        }
        // Expiry is reported to the sender through its own mailbox, so the
        // notice itself is delivered at least once.
        let mut notified = Vec::new();
        for (sender, to, message_id) in notices {
            if self
                .enqueue_notice(&sender, Queued::Notice(Delivery::Expired { to, message_id }), now_ms, &mut batch)
                .is_ok()
            {
                notified.push(sender);
            }
        }
        while let Some(&(forget, ref from, id)) = self.accepted_expiry.first() {
            if forget > now_ms {
                break;
            }
            let from = from.clone();
            self.accepted_expiry.pop_first();
            self.accepted.remove(&(from.clone(), id));
            batch.delete(Table::Meta, accepted_key(&from, &id, forget));
        }
        let expired_blobs: Vec<BlobId> =
            self.blobs.iter().filter(|(_, b)| b.expires_at_ms <= now_ms).map(|(id, _)| *id).collect();
        for id in expired_blobs {
            if let Some(b) = self.blobs.remove(&id) {
                batch.delete(Table::Blobs, blob_meta_key(&id));
                for i in 0..b.chunks {
                    batch.delete(Table::Blobs, blob_chunk_key(&id, i));
                }
            }
        }
        if store.apply(batch).is_err() {
            // The expired entries are gone from memory but still in the store;
            // a recovery would bring them back and expire them again. That
            // delays a deletion, never loses a message.
            self.stats.store_failures += 1;
        }
        self.flush_presence(now_ms);
        for addr in due.iter().chain(&notified) {
            self.touch(addr);
            self.pump(addr, now_ms);
        }
    }

    // ----- authentication -----

    #[allow(clippy::too_many_arguments)]
    fn register(
        &mut self,
        conn: ConnId,
        nonce: &[u8; 32],
        version: u16,
        user: UserId,
        device: DeviceId,
        identity_key: PublicKey,
        proof: &xeddsa::Signature,
        now_ms: u64,
        store: &mut dyn Store,
    ) -> Result<(), Refusal> {
        check_version(version)?;
        let addr = DeviceAddress::new(user, device);
        self.config
            .suite
            .verify(&identity_key, &auth_message(nonce, &addr.user, addr.device), proof)
            .map_err(|e| Refusal::new(ErrorCode::AuthFailed, format!("registration proof: {e}")))?;
        // One identity key per account (this device id or any other): another
        // device id does not let a stranger join someone else's account
        // (multi-device would need the primary device to vouch for new ones,
        // which is not built).
        let others = self.keys.devices_of(&addr.user);
        if others.iter().any(|d| self.keys.identity(d).is_some_and(|k| k != identity_key)) {
            return Err(Refusal::new(
                ErrorCode::UserExists,
                format!("{:?} is bound to another identity key", addr.user),
            ));
        }
        if self.keys.identity(&addr).is_none() && others.len() >= DEVICES_PER_USER_MAX {
            return Err(Refusal::new(
                ErrorCode::LimitExceeded,
                format!("{:?} has {} devices, the limit is {DEVICES_PER_USER_MAX}", addr.user, others.len()),
            ));
        }
        self.keys.register(&addr, identity_key).map_err(key_refusal)?;
        let batch = self.keys_batch();
        if let Err(e) = store.apply(batch) {
            self.stats.store_failures += 1;
            // The binding stays in memory but not in the store; the client
            // retries with the same key, which is accepted and written then.
            return Err(e.into());
        }
        self.login(conn, addr, now_ms);
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn authenticate(
        &mut self,
        conn: ConnId,
        nonce: &[u8; 32],
        version: u16,
        user: UserId,
        device: DeviceId,
        proof: &xeddsa::Signature,
        now_ms: u64,
    ) -> Result<(), Refusal> {
        check_version(version)?;
        let addr = DeviceAddress::new(user, device);
        let identity = self
            .keys
            .identity(&addr)
            .ok_or_else(|| Refusal::new(ErrorCode::AuthFailed, format!("unknown device {addr:?}")))?;
        self.config
            .suite
            .verify(&identity, &auth_message(nonce, &addr.user, addr.device), proof)
            .map_err(|e| Refusal::new(ErrorCode::AuthFailed, format!("login proof: {e}")))?;
        self.login(conn, addr, now_ms);
        Ok(())
    }

    fn login(&mut self, conn: ConnId, addr: DeviceAddress, now_ms: u64) {
        // A new connection of the same device replaces the old one cleanly:
        // the old one's in-flight deliveries go back to the queue and it is closed.
        if let Some(old) = self.online.insert(addr.clone(), conn) {
            if old != conn {
                if let Some(c) = self.conns.remove(&old) {
                    self.forget_auth_deadline(old, &c.auth);
                }
                if let Some(m) = self.mailboxes.get_mut(&addr) {
                    m.requeue_all();
                }
                self.out.push_back(ServerOutput::Close { conn: old, reason: "replaced by a new connection".into() });
            }
        }
        if let Some(c) = self.conns.get_mut(&conn) {
            let was = std::mem::replace(&mut c.auth, Auth::Device(addr.clone()));
            self.forget_auth_deadline(conn, &was);
        }
        self.send(conn, ServerFrame::Welcome { server_ts_ms: now_ms });
        self.presence.set_online(&addr.user, true, now_ms);
        self.flush_presence(now_ms);
        self.pump(&addr, now_ms);
    }

    // ----- authenticated frames -----

    fn authed(
        &mut self,
        conn: ConnId,
        me: &DeviceAddress,
        frame: ClientFrame,
        now_ms: u64,
        store: &mut dyn Store,
    ) -> Result<(), Refusal> {
        match frame {
            ClientFrame::Register { .. } | ClientFrame::Authenticate { .. } => {
                Err(Refusal::new(ErrorCode::Malformed, "already authenticated"))
            }
            ClientFrame::UploadPreKeys { signed_prekey, one_time } => {
                check_batch("one_time", one_time.len())?;
                self.keys.upload(me, self.config.suite, &signed_prekey, &one_time).map_err(key_refusal)?;
                let batch = self.keys_batch();
                self.commit(store, batch)
            }
            ClientFrame::FetchBundle { request, owner } => {
                let fetched = self.keys.fetch(me, &owner, now_ms).map_err(key_refusal)?;
                let batch = self.keys_batch();
                // The one-time prekey is deleted durably before it is handed out,
                // so a crash cannot hand it out a second time.
                self.commit(store, batch)?;
                self.send(conn, ServerFrame::Bundle { request, bundle: fetched.bundle });
                if fetched.low {
                    let owner_conns: Vec<ConnId> = self.online.get(&owner).copied().into_iter().collect();
                    for c in owner_conns {
                        self.send(c, ServerFrame::PreKeysLow { remaining: fetched.remaining });
                    }
                }
                Ok(())
            }
            ClientFrame::Send { message_id, to, kind, ciphertext } => {
                self.send_one(conn, me, message_id, to, kind, ciphertext, now_ms, store)
            }
            ClientFrame::GroupSend { message_id, group, ciphertext } => {
                self.send_group(conn, me, message_id, group, ciphertext, now_ms, store)
            }
            ClientFrame::DeliveryAck { seqs } => {
                check_batch("seqs", seqs.len())?;
                self.delivery_ack(me, &seqs, store)?;
                self.pump(me, now_ms);
                Ok(())
            }
            ClientFrame::Receipt { id, to, kind, message_ids } => {
                check_batch("message_ids", message_ids.len())?;
                self.receipt(conn, me, id, to, kind, message_ids, now_ms, store)
            }
            ClientFrame::GroupChange { change } => self.group_change(conn, me, change, now_ms, store),
            ClientFrame::PresenceSubscribe { users } => {
                check_batch("users", users.len())?;
                let states = self.presence.subscribe(&me.user, users, now_ms).map_err(|e| {
                    Refusal::new(ErrorCode::LimitExceeded, format!("presence subscription refused: {e}"))
                })?;
                for (user, last_seen) in states {
                    self.send(conn, ServerFrame::Presence { user, last_seen });
                }
                Ok(())
            }
            ClientFrame::PresencePrivacy { visibility, contacts } => {
                self.presence
                    .set_privacy(&me.user, visibility, contacts, now_ms)
                    .map_err(|e| Refusal::new(ErrorCode::LimitExceeded, format!("privacy settings refused: {e}")))?;
                let batch = self.presence_batch();
                self.commit(store, batch)
            }
            ClientFrame::MediaUpload { blob, offset, chunk, last } => {
                self.media_upload(conn, me, blob, offset, chunk, last, now_ms, store)
            }
            ClientFrame::MediaDownload { blob, offset } => self.media_download(conn, blob, offset, store),
            ClientFrame::Ping { nonce } => {
                self.send(conn, ServerFrame::Pong { nonce });
                Ok(())
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn send_one(
        &mut self,
        conn: ConnId,
        me: &DeviceAddress,
        message_id: MessageId,
        to: DeviceAddress,
        kind: EnvelopeKind,
        ciphertext: Vec<u8>,
        now_ms: u64,
        store: &mut dyn Store,
    ) -> Result<(), Refusal> {
        if kind == EnvelopeKind::Group {
            return Err(Refusal::new(ErrorCode::Malformed, "group messages go through GroupSend"));
        }
        check_ciphertext(&ciphertext)?;
        if let Some(&(ts, _)) = self.accepted.get(&(me.clone(), message_id)) {
            self.stats.duplicate_sends += 1;
            self.send(conn, ServerFrame::ServerAck { message_id, server_ts_ms: ts });
            return Ok(());
        }
        if self.keys.identity(&to).is_none() {
            return Err(Refusal::new(ErrorCode::UnknownRecipient, format!("no device {to:?}")));
        }
        let ttl = self.ttl(kind);
        let payload = Queued::Envelope { server_ts_ms: now_ms, group: None, kind, body: Body::Inline(ciphertext) };
        let mut batch = WriteBatch::default();
        let seq = self.enqueue(&to, (me.clone(), message_id), payload, now_ms + ttl, &mut batch)?;
        self.remember_accepted(me, message_id, now_ms, ttl, &mut batch);
        if let Err(e) = store.apply(batch) {
            self.stats.store_failures += 1;
            self.unenqueue(&to, seq);
            self.forget_accepted(me, message_id);
            return Err(e.into());
        }
        self.stats.accepted += 1;
        self.send(conn, ServerFrame::ServerAck { message_id, server_ts_ms: now_ms });
        self.touch(&to);
        self.pump(&to, now_ms);
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn send_group(
        &mut self,
        conn: ConnId,
        me: &DeviceAddress,
        message_id: MessageId,
        group_id: GroupId,
        ciphertext: Vec<u8>,
        now_ms: u64,
        store: &mut dyn Store,
    ) -> Result<(), Refusal> {
        check_ciphertext(&ciphertext)?;
        if let Some(&(ts, _)) = self.accepted.get(&(me.clone(), message_id)) {
            self.stats.duplicate_sends += 1;
            self.send(conn, ServerFrame::ServerAck { message_id, server_ts_ms: ts });
            return Ok(());
        }
        let group = self
            .groups
            .get(&group_id)
            .ok_or_else(|| Refusal::new(ErrorCode::NotMember, format!("no group {group_id:?}")))?;
        if !group.members.contains(&me.user) {
            return Err(Refusal::new(ErrorCode::NotMember, format!("{:?} is not in {group_id:?}", me.user)));
        }
        let recipients: Vec<DeviceAddress> =
            group.members.iter().flat_map(|u| self.keys.devices_of(u)).filter(|a| a != me).collect();
        let ttl = self.ttl(EnvelopeKind::Group);
        let mut batch = WriteBatch::default();
        let body_id = self.bodies.insert(ciphertext.clone(), recipients.len() as u32);
        if let Some(id) = body_id {
            batch.put(Table::Bodies, id.0.to_be_bytes().to_vec(), ciphertext);
            batch.put(Table::Meta, META_BODY_NEXT.to_vec(), enc(&self.bodies.next_id()));
        }
        // All or nothing: a group message reaches every member's mailbox or none.
        let key = (me.clone(), message_id);
        let done = match body_id {
            None => Vec::new(),
            Some(id) => {
                let payload = || Queued::Envelope {
                    server_ts_ms: now_ms,
                    group: Some(group_id),
                    kind: EnvelopeKind::Group,
                    body: Body::Shared(id),
                };
                match self.enqueue_all(&recipients, &key, payload, now_ms + ttl, &mut batch) {
                    Ok(done) => done,
                    Err(r) => {
                        self.bodies.remove(id);
                        return Err(r);
                    }
                }
            }
        };
        self.remember_accepted(me, message_id, now_ms, ttl, &mut batch);
        if let Err(e) = store.apply(batch) {
            self.stats.store_failures += 1;
            self.unenqueue_all(done);
            if let Some(id) = body_id {
                self.bodies.remove(id);
            }
            self.forget_accepted(me, message_id);
            return Err(e.into());
        }
        self.stats.accepted += 1;
        self.send(conn, ServerFrame::ServerAck { message_id, server_ts_ms: now_ms });
        for to in &recipients {
            self.touch(to);
            self.pump(to, now_ms);
        }
        Ok(())
    }

    fn delivery_ack(&mut self, me: &DeviceAddress, seqs: &[u64], store: &mut dyn Store) -> Result<(), Refusal> {
        let mut batch = WriteBatch::default();
        let mut removed = Vec::new();
        if let Some(m) = self.mailboxes.get_mut(me) {
            for &seq in seqs {
                if let Some(e) = m.ack_seq(seq) {
                    batch.delete(Table::Mailbox, mailbox_key(me, seq));
                    removed.push(e);
                }
            }
        }
        for e in &removed {
            self.stats.acked += 1;
            if let Queued::Envelope { body: Body::Shared(id), .. } = &e.payload {
                if self.bodies.release(*id) {
                    batch.delete(Table::Bodies, id.0.to_be_bytes().to_vec());
                }
            }
        }
        self.touch(me);
        if let Err(e) = store.apply(batch) {
            // The entries are gone from memory but still in the store: after a
            // crash they would be delivered again and deduplicated by the
            // client. That errs on the side of redelivery, never loss.
            self.stats.store_failures += 1;
            return Err(e.into());
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn receipt(
        &mut self,
        conn: ConnId,
        me: &DeviceAddress,
        id: MessageId,
        to: UserId,
        kind: wire::ReceiptKind,
        message_ids: Vec<MessageId>,
        now_ms: u64,
        store: &mut dyn Store,
    ) -> Result<(), Refusal> {
        if self.accepted.contains_key(&(me.clone(), id)) {
            self.stats.duplicate_sends += 1;
            self.send(conn, ServerFrame::ServerAck { message_id: id, server_ts_ms: now_ms });
            return Ok(());
        }
        let devices = self.keys.devices_of(&to);
        if devices.is_empty() {
            return Err(Refusal::new(ErrorCode::UnknownRecipient, format!("no user {to:?}")));
        }
        let ttl = self.config.ttl_text_ms;
        let mut batch = WriteBatch::default();
        let payload = || Queued::Notice(Delivery::Receipt { from: me.clone(), kind, message_ids: message_ids.clone() });
        let done = self.enqueue_all(&devices, &(me.clone(), id), payload, now_ms + ttl, &mut batch)?;
        self.remember_accepted(me, id, now_ms, ttl, &mut batch);
        if let Err(e) = store.apply(batch) {
            self.stats.store_failures += 1;
            self.unenqueue_all(done);
            self.forget_accepted(me, id);
            return Err(e.into());
        }
        self.send(conn, ServerFrame::ServerAck { message_id: id, server_ts_ms: now_ms });
        for d in &devices {
            self.touch(d);
            self.pump(d, now_ms);
        }
        Ok(())
    }

    fn group_change(
        &mut self,
        conn: ConnId,
        me: &DeviceAddress,
        change: SignedGroupChange,
        now_ms: u64,
        store: &mut dyn Store,
    ) -> Result<(), Refusal> {
        for (field, len) in [("add", change.add.len()), ("remove", change.remove.len())] {
            if len > GROUP_MEMBERS_MAX {
                return Err(Refusal::new(
                    ErrorCode::TooLarge,
                    format!("{field} lists {len} users, a group has at most {GROUP_MEMBERS_MAX}"),
                ));
            }
        }
        if change.admin != me.user {
            return Err(Refusal::new(ErrorCode::BadSignature, "a group change must be sent by the admin who signs it"));
        }
        let current = self.groups.get(&change.group).cloned();
        let (mut group, expected) = match &current {
            None => (Group { admins: BTreeSet::from([me.user.clone()]), members: BTreeSet::new(), version: 0 }, 1),
            Some(g) => (g.clone(), g.version + 1),
        };
        if let Some(g) = &current {
            if change.version == g.version && g.admins.contains(&change.admin) {
                // A resend of the change already applied (our answer was
                // lost): answer again instead of refusing.
                self.send(conn, ServerFrame::GroupChangeAccepted { group: change.group, version: change.version });
                return Ok(());
            }
        }
        if change.version != expected {
            return Err(Refusal::new(
                ErrorCode::Malformed,
                format!("group {:?} change version {} but {} expected", change.group, change.version, expected),
            ));
        }
        if !group.admins.contains(&change.admin) {
            return Err(Refusal::new(ErrorCode::NotMember, format!("{:?} is not an admin", change.admin)));
        }
        if !self.config.bugs.unsigned_group_changes {
            let identity = self
                .keys
                .identity(me)
                .ok_or_else(|| Refusal::new(ErrorCode::AuthFailed, "admin has no identity key"))?;
            self.config
                .suite
                .verify(&identity, &change.signed_bytes(), &change.signature)
                .map_err(|e| Refusal::new(ErrorCode::BadSignature, format!("group change: {e}")))?;
        }
        for u in &change.add {
            if self.keys.devices_of(u).is_empty() {
                return Err(Refusal::new(ErrorCode::UnknownRecipient, format!("no user {u:?}")));
            }
        }
        let before: BTreeSet<UserId> = group.members.clone();
        group.members.insert(change.admin.clone());
        group.members.extend(change.add.iter().cloned());
        for u in &change.remove {
            group.members.remove(u);
        }
        if group.members.len() > GROUP_MEMBERS_MAX {
            return Err(Refusal::new(
                ErrorCode::LimitExceeded,
                format!("group would have {} members, the limit is {GROUP_MEMBERS_MAX}", group.members.len()),
            ));
        }
        group.version = change.version;
        // Everyone affected hears of the change: old members, new members and
        // the removed (so they know to stop sending).
        let audience: BTreeSet<UserId> =
            before.union(&group.members).cloned().chain(change.remove.iter().cloned()).collect();
        let mut batch = WriteBatch::default();
        batch.put(Table::Groups, enc(&change.group), enc(&group));
        let notice_id = MessageId::random(&mut self.rng);
        let devices: Vec<DeviceAddress> =
            audience.iter().flat_map(|u| self.keys.devices_of(u)).filter(|d| d != me).collect();
        let payload = || Queued::Notice(Delivery::GroupChange(change.clone()));
        let expires = now_ms + self.config.ttl_text_ms;
        let done = self.enqueue_all(&devices, &(me.clone(), notice_id), payload, expires, &mut batch)?;
        if let Err(e) = store.apply(batch) {
            self.stats.store_failures += 1;
            self.unenqueue_all(done);
            return Err(e.into());
        }
        self.groups.insert(change.group, group);
        self.send(conn, ServerFrame::GroupChangeAccepted { group: change.group, version: change.version });
        for (d, _) in done {
            self.touch(&d);
            self.pump(&d, now_ms);
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn media_upload(
        &mut self,
        conn: ConnId,
        me: &DeviceAddress,
        blob: BlobId,
        offset: u64,
        chunk: Vec<u8>,
        last: bool,
        now_ms: u64,
        store: &mut dyn Store,
    ) -> Result<(), Refusal> {
        if chunk.len() > MEDIA_CHUNK_LEN_MAX {
            return Err(Refusal::new(
                ErrorCode::TooLarge,
                format!("media chunk of {} bytes, the limit is {MEDIA_CHUNK_LEN_MAX}", chunk.len()),
            ));
        }
        let mut meta = match self.blobs.get(&blob) {
            None if offset == 0 => Blob {
                owner: me.clone(),
                len: 0,
                chunks: 0,
                complete: false,
                expires_at_ms: now_ms + self.config.ttl_media_ms,
            },
            None => return Err(Refusal::new(ErrorCode::UnknownBlob, format!("{blob:?} starts at offset 0"))),
            Some(b) if &b.owner != me || b.complete => {
                return Err(Refusal::new(ErrorCode::UnknownBlob, format!("{blob:?} is not open for upload by you")))
            }
            Some(b) => b.clone(),
        };
        if offset != meta.len {
            return Err(Refusal::new(
                ErrorCode::Malformed,
                format!("{blob:?} chunk at offset {offset}, expected {}", meta.len),
            ));
        }
        if meta.len + chunk.len() as u64 > BLOB_LEN_MAX {
            return Err(Refusal::new(ErrorCode::TooLarge, format!("blob larger than {BLOB_LEN_MAX} bytes")));
        }
        let mut batch = WriteBatch::default();
        meta.len += chunk.len() as u64;
        batch.put(Table::Blobs, blob_chunk_key(&blob, meta.chunks), chunk);
        meta.chunks += 1;
        meta.complete = last;
        batch.put(Table::Blobs, blob_meta_key(&blob), enc(&meta));
        store.apply(batch).map_err(|e| {
            self.stats.store_failures += 1;
            Refusal::from(e)
        })?;
        if last {
            self.send(conn, ServerFrame::MediaStored { blob, len: meta.len });
        }
        self.blobs.insert(blob, meta);
        Ok(())
    }

    fn media_download(
        &mut self,
        conn: ConnId,
        blob: BlobId,
        offset: u64,
        store: &mut dyn Store,
    ) -> Result<(), Refusal> {
        let meta = self
            .blobs
            .get(&blob)
            .filter(|b| b.complete)
            .ok_or_else(|| Refusal::new(ErrorCode::UnknownBlob, format!("no complete blob {blob:?}")))?
            .clone();
        // Chunks are stored as uploaded; find the one holding `offset`.
        let mut start = 0u64;
        for i in 0..meta.chunks {
            let chunk = store
                .get(Table::Blobs, &blob_chunk_key(&blob, i))?
                .ok_or_else(|| Refusal::new(ErrorCode::Unavailable, format!("{blob:?} chunk {i} missing")))?;
            let end = start + chunk.len() as u64;
            if offset < end || (offset == 0 && meta.len == 0) {
                let from = (offset - start) as usize;
                let piece = chunk.get(from..).unwrap_or_default().to_vec();
                self.send(conn, ServerFrame::MediaChunk { blob, offset, chunk: piece, last: i + 1 == meta.chunks });
                return Ok(());
            }
            start = end;
        }
        Err(Refusal::new(
            ErrorCode::Malformed,
            format!("offset {offset} is past the end of {blob:?} ({} bytes)", meta.len),
        ))
    }

    // ----- helpers -----

    fn ttl(&self, kind: EnvelopeKind) -> u64 {
        match kind {
            EnvelopeKind::Media => self.config.ttl_media_ms,
            EnvelopeKind::PreKey | EnvelopeKind::Message | EnvelopeKind::Group => self.config.ttl_text_ms,
        }
    }

    fn mailbox(&mut self, addr: &DeviceAddress) -> &mut Mailbox<Queued> {
        let depth = self.config.mailbox_depth_max;
        let bug = self.config.bugs.mailbox;
        self.mailboxes.entry(addr.clone()).or_insert_with(|| {
            let mut m = Mailbox::with_depth_max(depth);
            m.set_bug(bug);
            m
        })
    }

    /// Adds to a mailbox and to `batch`; a duplicate key adds nothing.
    fn enqueue(
        &mut self,
        to: &DeviceAddress,
        key: (DeviceAddress, MessageId),
        payload: Queued,
        expires_at_ms: u64,
        batch: &mut WriteBatch,
    ) -> Result<u64, Refusal> {
        let m = self.mailbox(to);
        match m.enqueue(key, payload, expires_at_ms) {
            Ok(Enqueued::New(seq)) => {
                if let Some(e) = m.get(seq) {
                    batch.put(Table::Mailbox, mailbox_key(to, seq), enc(e));
                }
                batch.put(Table::Meta, next_seq_key(to), enc(&m.next_seq()));
                Ok(seq)
            }
            Ok(Enqueued::Duplicate(seq)) => Ok(seq),
            Err(full) => Err(Refusal::new(ErrorCode::LimitExceeded, format!("mailbox of {to:?} is full: {full}"))),
        }
    }

    /// Enqueues `payload()` under `key` for every device in `targets`, all or
    /// nothing: on a refusal (a full mailbox) what was queued is undone.
    fn enqueue_all(
        &mut self,
        targets: &[DeviceAddress],
        key: &(DeviceAddress, MessageId),
        payload: impl Fn() -> Queued,
        expires_at_ms: u64,
        batch: &mut WriteBatch,
    ) -> Result<Vec<(DeviceAddress, u64)>, Refusal> {
        let mut done = Vec::with_capacity(targets.len());
        for to in targets {
            match self.enqueue(to, key.clone(), payload(), expires_at_ms, batch) {
                Ok(seq) => done.push((to.clone(), seq)),
                Err(r) => {
                    self.unenqueue_all(done);
                    return Err(r);
                }
            }
        }
        Ok(done)
    }

    /// Undoes an [`Server::enqueue_all`] whose batch did not commit.
    fn unenqueue_all(&mut self, done: Vec<(DeviceAddress, u64)>) {
        for (to, seq) in done {
            self.unenqueue(&to, seq);
        }
    }

    /// Undoes an [`Server::enqueue`] whose batch did not commit.
    fn unenqueue(&mut self, to: &DeviceAddress, seq: u64) {
        if let Some(m) = self.mailboxes.get_mut(to) {
            m.ack_seq(seq);
        }
    }

    fn enqueue_notice(
        &mut self,
        to: &DeviceAddress,
        payload: Queued,
        now_ms: u64,
        batch: &mut WriteBatch,
    ) -> Result<u64, Refusal> {
        let id = MessageId::random(&mut self.rng);
        let server = to.clone();
        let ttl = self.config.ttl_text_ms;
        let seq = self.enqueue(to, (server, id), payload, now_ms + ttl, batch)?;
        self.touch(to);
        Ok(seq)
    }

    fn remember_accepted(
        &mut self,
        from: &DeviceAddress,
        id: MessageId,
        now_ms: u64,
        ttl: u64,
        batch: &mut WriteBatch,
    ) {
        let forget = now_ms + ttl;
        self.accepted.insert((from.clone(), id), (now_ms, forget));
        self.accepted_expiry.insert((forget, from.clone(), id));
        batch.put(Table::Meta, accepted_key(from, &id, forget), enc(&(now_ms, forget)));
    }

    fn forget_accepted(&mut self, from: &DeviceAddress, id: MessageId) {
        if let Some((_, forget)) = self.accepted.remove(&(from.clone(), id)) {
            self.accepted_expiry.remove(&(forget, from.clone(), id));
        }
    }

    /// Hands out what the device's window allows, if it is online.
    fn pump(&mut self, addr: &DeviceAddress, now_ms: u64) {
        let Some(&conn) = self.online.get(addr) else { return };
        let window = self.config.delivery_window;
        let Some(m) = self.mailboxes.get_mut(addr) else { return };
        let entries = m.poll_deliveries(now_ms, window);
        if entries.is_empty() {
            return;
        }
        for e in entries {
            let (from, message_id) = e.key;
            let item = match e.payload {
                Queued::Envelope { server_ts_ms, group, kind, body } => {
                    let ciphertext = match body {
                        Body::Inline(b) => b,
                        Body::Shared(id) => self.bodies.get(id).map(<[u8]>::to_vec).unwrap_or_default(),
                    };
                    Delivery::Envelope(Envelope {
                        from,
                        to: addr.clone(),
                        message_id,
                        server_ts_ms,
                        group,
                        kind,
                        ciphertext,
                    })
                }
                Queued::Notice(item) => item,
            };
            self.stats.deliveries += 1;
            self.send(conn, ServerFrame::Deliver { seq: e.seq, item });
        }
        self.touch(addr);
    }

    /// Re-indexes a mailbox's next deadline.
    fn touch(&mut self, addr: &DeviceAddress) {
        let next = self.mailboxes.get(addr).and_then(|m| m.next_deadline_ms(self.config.ack_timeout_ms));
        let old = self.deadline_of.get(addr).copied();
        // Most enqueues do not move a mailbox's earliest deadline; skipping
        // the re-index then saves two ordered-set updates per recipient.
        if old == next {
            return;
        }
        if let Some(old) = old {
            self.deadline_of.remove(addr);
            self.deadlines.remove(&(old, addr.clone()));
        }
        if let Some(t) = next {
            self.deadline_of.insert(addr.clone(), t);
            self.deadlines.insert((t, addr.clone()));
        }
    }

    /// Sends the presence pushes that are due to their subscribers' devices.
    fn flush_presence(&mut self, now_ms: u64) {
        for pushed in self.presence.poll_pushes(now_ms) {
            let frame = ServerFrame::Presence { user: pushed.user.clone(), last_seen: pushed.last_seen };
            for d in self.keys.devices_of(&pushed.to) {
                if let Some(&c) = self.online.get(&d) {
                    self.send(c, frame.clone());
                }
            }
        }
    }

    fn keys_batch(&mut self) -> WriteBatch {
        let dirty = self.keys.take_dirty();
        records_batch(Table::Keys, dirty, |a| self.keys.record(a))
    }

    fn presence_batch(&mut self) -> WriteBatch {
        let dirty = self.presence.take_dirty();
        records_batch(Table::Presence, dirty, |u| self.presence.record(u))
    }

    fn commit(&mut self, store: &mut dyn Store, batch: WriteBatch) -> Result<(), Refusal> {
        store.apply(batch).map_err(|e| {
            self.stats.store_failures += 1;
            Refusal::from(e)
        })
    }

    fn send(&mut self, conn: ConnId, frame: ServerFrame) {
        self.out.push_back(ServerOutput::Frame { conn, frame });
    }

    /// `conn` left the unauthenticated state `auth` (logged in or gone).
    fn forget_auth_deadline(&mut self, conn: ConnId, auth: &Auth) {
        if let Auth::Pending { since_ms, .. } = auth {
            self.auth_deadlines.remove(&(since_ms + AUTH_TIMEOUT_MS, conn));
        }
    }

    fn refuse(&mut self, conn: ConnId, r: Refusal) {
        *self.stats.errors.entry(r.code).or_default() += 1;
        self.send(conn, ServerFrame::Error { code: r.code, detail: r.detail });
        if let Some(c) = self.conns.get_mut(&conn) {
            c.errors += 1;
            if c.errors >= CONNECTION_ERRORS_MAX {
                self.out
                    .push_back(ServerOutput::Close { conn, reason: format!("{CONNECTION_ERRORS_MAX} refused frames") });
                self.closing.push(conn);
            }
        }
    }
}

/// The store writes for changed records of a component: the current record,
/// or a delete when the record is gone.
fn records_batch<K: Serialize, R: Serialize>(
    table: Table,
    dirty: Vec<K>,
    record: impl Fn(&K) -> Option<R>,
) -> WriteBatch {
    let mut batch = WriteBatch::default();
    for key in dirty {
        match record(&key) {
            Some(r) => batch.put(table, enc(&key), enc(&r)),
            None => batch.delete(table, enc(&key)),
        };
    }
    batch
}

fn check_version(version: u16) -> Result<(), Refusal> {
    if version != PROTOCOL_VERSION {
        return Err(Refusal::new(
            ErrorCode::UnsupportedVersion,
            format!("protocol version {version}; this server speaks {PROTOCOL_VERSION}"),
        ));
    }
    Ok(())
}

fn check_batch(field: &str, len: usize) -> Result<(), Refusal> {
    if len > BATCH_LEN_MAX {
        return Err(Refusal::new(
            ErrorCode::TooLarge,
            format!("{field} has {len} items, the limit is {BATCH_LEN_MAX}"),
        ));
    }
    Ok(())
}

fn check_ciphertext(c: &[u8]) -> Result<(), Refusal> {
    if c.len() > CIPHERTEXT_LEN_MAX {
        return Err(Refusal::new(
            ErrorCode::TooLarge,
            format!("ciphertext of {} bytes, the limit is {CIPHERTEXT_LEN_MAX}", c.len()),
        ));
    }
    Ok(())
}

fn key_refusal(e: KeyDirError) -> Refusal {
    let code = match &e {
        KeyDirError::IdentityBound { .. } => ErrorCode::UserExists,
        KeyDirError::UnknownDevice { .. } | KeyDirError::NoSignedPreKey { .. } => ErrorCode::UnknownRecipient,
        KeyDirError::BadSignature { .. } | KeyDirError::LowOrderKey { .. } => ErrorCode::BadSignature,
        KeyDirError::DuplicateOneTimePreKeyId { .. } => ErrorCode::Malformed,
        KeyDirError::StockFull { .. } | KeyDirError::RateLimited { .. } => ErrorCode::LimitExceeded,
    };
    Refusal::new(code, e.to_string())
}

fn frame_name(f: &ClientFrame) -> &'static str {
    match f {
        ClientFrame::Register { .. } => "Register",
        ClientFrame::Authenticate { .. } => "Authenticate",
        ClientFrame::UploadPreKeys { .. } => "UploadPreKeys",
        ClientFrame::FetchBundle { .. } => "FetchBundle",
        ClientFrame::Send { .. } => "Send",
        ClientFrame::GroupSend { .. } => "GroupSend",
        ClientFrame::DeliveryAck { .. } => "DeliveryAck",
        ClientFrame::Receipt { .. } => "Receipt",
        ClientFrame::GroupChange { .. } => "GroupChange",
        ClientFrame::PresenceSubscribe { .. } => "PresenceSubscribe",
        ClientFrame::PresencePrivacy { .. } => "PresencePrivacy",
        ClientFrame::MediaUpload { .. } => "MediaUpload",
        ClientFrame::MediaDownload { .. } => "MediaDownload",
        ClientFrame::Ping { .. } => "Ping",
    }
}
