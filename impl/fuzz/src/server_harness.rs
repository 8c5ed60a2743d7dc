//! The sans-IO server fed arbitrary frame sequences from several connections.
//!
//! Every run starts from the same durable state (built once, then recovered
//! from a copy of its store): four registered users with real identity keys —
//! `alice`, `bob`, `carol` and the hostile `mallory` — a group of alice's
//! (alice, bob, carol) and one of mallory's (mallory, bob), messages queued
//! for bob and carol, privacy settings (bob: contacts = alice; carol: nobody)
//! and media blobs of alice's. Connections authenticated with the real keys as
//! alice, bob and mallory and one unauthenticated connection are open. The
//! fuzzer's bytes are then read as a script ([`run`]): raw frames on any
//! connection, frames built from the bytes with valid or garbage signatures,
//! oversize frames, time passing, disconnects, new logins and server crashes.
//!
//! Checked after every step (each check panics with what it saw):
//! - a refused frame (only an `Error` came back) changes neither the store nor
//!   the server's mailboxes, groups and keys (presence only when the refusal
//!   also closed the connection, which records a last-seen time);
//! - nothing of another user is touched: a frame never removes or rewrites
//!   another device's mailbox entries, every entry it adds is stamped with the
//!   sending device, another device's keys change only by one one-time prekey
//!   handed out in a bundle to the sender, only a group's admin changes it,
//!   and another user's presence record and blobs stay as they were;
//! - frames to other connections are only deliveries of real mailbox entries,
//!   presence and prekey notices; nothing is sent on a connection after it was
//!   closed;
//! - a subscriber the owner's privacy excludes only ever reads `LongAgo`;
//! - no one-time prekey is handed out twice;
//! - bounded: the store grows by at most a fixed multiple of the frame's size
//!   per recipient device, and one frame causes a bounded number of outputs;
//! - expiry removes only entries whose time has come;
//! - what the server holds in memory is what a recovery from its store holds.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::OnceLock;

use bluetick_core::ids::{BlobId, DeviceAddress, DeviceId, GroupId, MessageId, UserId};
use bluetick_core::server::keys::DeviceKeys;
use bluetick_core::server::machine::{Group, Queued};
use bluetick_core::server::mailbox::EntryKey;
use bluetick_core::server::presence::UserPresence;
use bluetick_core::server::{ConnId, Server, ServerConfig, ServerOutput};
use bluetick_core::store::{MemoryStore, Store, Table};
use bluetick_core::wire::{
    self, ClientFrame, Delivery, EnvelopeKind, LastSeen, OneTimePreKeyUpload, ReceiptKind, ServerFrame,
    SignedGroupChange, SignedPreKeyUpload, Visibility, CIPHERTEXT_LEN_MAX, FRAME_LEN_MAX, MEDIA_CHUNK_LEN_MAX,
    PROTOCOL_VERSION,
};
use bluetick_crypto::xeddsa::Signature;
use bluetick_crypto::{CipherSuite, IdentityKeyPair, KeyPair, PublicKey};
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;
use serde::Deserialize;

use crate::bytes::Bytes;

/// The user names scripts choose from: four registered users and one that
/// does not exist (until a script registers it).
pub const NAMES: [&str; 5] = ["alice", "bob", "carol", "mallory", "ghost"];

/// Index of each registered user in [`NAMES`].
pub const ALICE: usize = 0;
/// Bob: receives most of the queued messages.
pub const BOB: usize = 1;
/// Carol: offline, a member of alice's group, privacy "nobody".
pub const CAROL: usize = 2;
/// Mallory: an authenticated, hostile user.
pub const MALLORY: usize = 3;

/// Alice's group (alice, bob, carol).
pub const ALICE_GROUP: GroupId = GroupId([0x61; 16]);
/// Mallory's group (mallory, bob).
pub const MALLORY_GROUP: GroupId = GroupId([0x6d; 16]);
/// Groups scripts name: the two above and one that does not exist.
pub const GROUPS: [GroupId; 3] = [ALICE_GROUP, MALLORY_GROUP, GroupId([0x33; 16])];
/// Alice's complete blob.
pub const ALICE_BLOB: BlobId = BlobId([0xb1; 16]);
/// Alice's blob still being uploaded.
pub const ALICE_OPEN_BLOB: BlobId = BlobId([0xb2; 16]);
/// Blobs scripts name: the two above and one that does not exist.
pub const BLOBS: [BlobId; 3] = [ALICE_BLOB, ALICE_OPEN_BLOB, BlobId([0xb3; 16])];

/// Server time when the base state was built.
pub const START_MS: u64 = 1_700_000_000_000;

/// Most script steps per run: enough to build multi-step attacks (log in,
/// subscribe, change a setting, wait), short enough to run thousands a second.
pub const STEPS_MAX: usize = 64;

/// Longest raw frame a script writes (a u16 length): the server's frame limit
/// is exercised by the dedicated oversize step instead.
const RAW_LEN_MAX: usize = 4096;

/// A connection as the harness knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Peer {
    /// Challenged, not logged in.
    Pending([u8; 32]),
    /// Logged in as this device.
    Device(DeviceAddress),
}

/// The decoded form of a blob's metadata row (`Table::Blobs`, 16-byte key).
/// The server keeps this type private; postcard encodes a struct as its fields
/// in order, so this mirror reads it. If the server's layout changes, decoding
/// fails and the harness says so rather than skip the check.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct BlobMeta {
    /// The uploading device.
    pub owner: DeviceAddress,
    /// Bytes stored.
    pub len: u64,
    /// Chunks stored.
    pub chunks: u32,
    /// Whether the last chunk arrived.
    pub complete: bool,
    /// When it is deleted.
    pub expires_at_ms: u64,
}

/// Store rows (key, value).
pub type Rows = Vec<(Vec<u8>, Vec<u8>)>;

/// A blob's metadata (if stored) and chunk rows.
pub type BlobRows = (Option<BlobMeta>, Rows);

/// Mailbox entries by (device, seq): key, expiry, payload.
pub type Entries = BTreeMap<(DeviceAddress, u64), (EntryKey, u64, Queued)>;

/// The part of a [`View`] that a recovery rebuilds.
type Memory<'a> = (&'a Entries, &'a BTreeMap<GroupId, Group>, &'a BTreeMap<DeviceAddress, DeviceKeys>);

/// Everything the checks compare, read from the server and its store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct View {
    /// Mailbox entries by (device, seq): key, expiry and payload (the
    /// in-flight mark is volatile and left out).
    pub mailboxes: Entries,
    /// Groups the server holds, by id (every id in the store or in [`GROUPS`]).
    pub groups: BTreeMap<GroupId, Group>,
    /// Key records of every device in the store or named by [`NAMES`].
    pub keys: BTreeMap<DeviceAddress, DeviceKeys>,
    /// Presence records, from the store.
    pub presence: BTreeMap<UserId, UserPresence>,
    /// Blob metadata and chunk rows, from the store, by blob.
    pub blobs: BTreeMap<BlobId, BlobRows>,
    /// Every store row.
    pub store: BTreeMap<Table, Rows>,
}

impl View {
    /// Reads the view of `server` and `store`.
    pub fn of(server: &Server, store: &MemoryStore) -> View {
        let mut rows = BTreeMap::new();
        for table in Table::ALL {
            rows.insert(table, store.scan(table).unwrap_or_else(|e| panic!("scan {table}: {e}")));
        }
        let mut mailboxes = BTreeMap::new();
        for (addr, e) in server.mailbox_entries() {
            mailboxes.insert((addr.clone(), e.seq), (e.key.clone(), e.expires_at_ms, e.payload.clone()));
        }
        let mut group_ids: BTreeSet<GroupId> = GROUPS.into_iter().collect();
        for (k, _) in rows.get(&Table::Groups).into_iter().flatten() {
            group_ids.insert(postcard::from_bytes(k).unwrap_or_else(|e| panic!("group key: {e}")));
        }
        let groups = group_ids.into_iter().filter_map(|g| server.group(&g).map(|s| (g, s.clone()))).collect();
        let mut devices: BTreeSet<DeviceAddress> = BTreeSet::new();
        for name in NAMES {
            for d in [1, 2] {
                devices.insert(DeviceAddress::new(user(name), DeviceId(d)));
            }
        }
        for (k, _) in rows.get(&Table::Keys).into_iter().flatten() {
            devices.insert(postcard::from_bytes(k).unwrap_or_else(|e| panic!("keys key: {e}")));
        }
        let keys = devices.into_iter().filter_map(|a| server.keys().record(&a).map(|r| (a, r))).collect();
        let mut presence = BTreeMap::new();
        for (k, v) in rows.get(&Table::Presence).into_iter().flatten() {
            let u: UserId = postcard::from_bytes(k).unwrap_or_else(|e| panic!("presence key: {e}"));
            let p: UserPresence = postcard::from_bytes(v).unwrap_or_else(|e| panic!("presence record: {e}"));
            presence.insert(u, p);
        }
        let mut blobs: BTreeMap<BlobId, BlobRows> = BTreeMap::new();
        for (k, v) in rows.get(&Table::Blobs).into_iter().flatten() {
            let mut id = [0u8; 16];
            id.copy_from_slice(&k[..16]);
            let slot = blobs.entry(BlobId(id)).or_default();
            if k.len() == 16 {
                let meta: BlobMeta = postcard::from_bytes(v)
                    .unwrap_or_else(|e| panic!("blob metadata no longer decodes as the harness's mirror: {e}"));
                slot.0 = Some(meta);
            } else {
                slot.1.push((k.clone(), v.clone()));
            }
        }
        View { mailboxes, groups, keys, presence, blobs, store: rows }
    }

    /// The part a recovery rebuilds: mailboxes, groups, keys.
    fn memory(&self) -> Memory<'_> {
        (&self.mailboxes, &self.groups, &self.keys)
    }

    /// Bytes of keys and values in the store.
    fn store_bytes(&self) -> usize {
        self.store.values().flatten().map(|(k, v)| k.len() + v.len()).sum()
    }
}

/// The user id `name` (one of [`NAMES`]).
pub fn user(name: &str) -> UserId {
    UserId::new(name).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// Device 1 of `name`.
pub fn addr(name: &str) -> DeviceAddress {
    DeviceAddress::new(user(name), DeviceId(1))
}

/// The durable state every run starts from, and the identities behind it.
struct Base {
    store: MemoryStore,
    identities: Vec<IdentityKeyPair>,
    frames: Vec<(String, Vec<u8>)>,
}

fn base() -> &'static Base {
    static BASE: OnceLock<Base> = OnceLock::new();
    BASE.get_or_init(build_base)
}

/// One server, its store, the connections and what the checks remember.
pub struct Rig {
    /// The server under test.
    pub server: Server,
    /// Its store.
    pub store: MemoryStore,
    /// Its configuration (kept for recoveries).
    pub config: ServerConfig,
    /// The current time.
    pub now_ms: u64,
    rng: ChaCha20Rng,
    /// The secret identity of every device that can log in.
    identities: BTreeMap<DeviceAddress, IdentityKeyPair>,
    /// Every identity the harness made, by public key, so a registration
    /// that succeeds makes its device loggable.
    keyring: BTreeMap<[u8; 32], IdentityKeyPair>,
    conns: BTreeMap<ConnId, Peer>,
    next_conn: u64,
    /// (owner, id) of every one-time prekey handed out so far.
    handed_out: BTreeSet<(DeviceAddress, u32)>,
    /// Every frame fed, for the seed corpora.
    log: Vec<(String, Vec<u8>)>,
    /// Whether the checks run (the base build checks too).
    checking: bool,
    /// Every output since the last [`Rig::take_outputs`] (cleared by each
    /// script step, so a fuzz run holds one step's worth).
    outputs: Vec<ServerOutput>,
    crashes: u64,
}

impl Rig {
    fn empty(config: ServerConfig) -> Rig {
        Rig {
            server: Server::new(config.clone(), 1),
            store: MemoryStore::new(),
            config,
            now_ms: START_MS,
            rng: ChaCha20Rng::seed_from_u64(0x5eed),
            identities: BTreeMap::new(),
            keyring: BTreeMap::new(),
            conns: BTreeMap::new(),
            next_conn: 1,
            handed_out: BTreeSet::new(),
            log: Vec::new(),
            checking: true,
            outputs: Vec::new(),
            crashes: 0,
        }
    }

    /// The base state recovered into a server with `config`, with alice, bob
    /// and mallory logged in and one connection left unauthenticated.
    pub fn start(config: ServerConfig) -> Rig {
        let base = base();
        let mut store = base.store.clone();
        let server = Server::recover(config.clone(), 2, &mut store).unwrap_or_else(|e| panic!("recover: {e}"));
        let mut rig = Rig::empty(config);
        rig.server = server;
        rig.store = store;
        rig.now_ms = START_MS + 60_000;
        for (i, id) in base.identities.iter().enumerate() {
            rig.identities.insert(addr(NAMES[i]), id.clone());
        }
        rig.login_all();
        rig
    }

    fn login_all(&mut self) {
        for who in [ALICE, BOB, MALLORY] {
            self.connect(Some(&addr(NAMES[who])));
        }
        self.connect(None);
    }

    /// Opens a connection; logs it in as `who` (with its real key) if given.
    pub fn connect(&mut self, who: Option<&DeviceAddress>) -> ConnId {
        let conn = ConnId(self.next_conn);
        self.next_conn += 1;
        let now = self.now_ms;
        let out = self.call(|s, _, _| s.handle_connect(conn, now));
        let nonce = match out.as_slice() {
            [ServerOutput::Frame { frame: ServerFrame::Challenge { nonce }, .. }] => *nonce,
            other => panic!("expected a challenge, got {other:?}"),
        };
        self.conns.insert(conn, Peer::Pending(nonce));
        // Only a device the server knows under the key we hold can log in.
        let id = who
            .and_then(|w| self.identities.get(w).filter(|k| self.server.keys().identity(w) == Some(k.public())))
            .cloned();
        if let (Some(who), Some(id)) = (who, id) {
            let proof = id.sign(&wire::auth_message(&nonce, &who.user, who.device), &mut self.rng);
            let frame = ClientFrame::Authenticate {
                version: PROTOCOL_VERSION,
                user: who.user.clone(),
                device: who.device,
                proof,
            };
            let out = self.feed(conn, &wire::encode(&frame));
            assert!(
                out.iter().any(
                    |o| matches!(o, ServerOutput::Frame { conn: c, frame: ServerFrame::Welcome { .. } } if *c == conn)
                ),
                "login of {who:?} failed: {out:?}"
            );
        }
        conn
    }

    /// Runs one call on the server and returns what it output; forgets
    /// connections it closed and checks nothing is sent on one after its close.
    fn call(&mut self, f: impl FnOnce(&mut Server, &mut MemoryStore, u64)) -> Vec<ServerOutput> {
        f(&mut self.server, &mut self.store, self.now_ms);
        let mut out = Vec::new();
        let mut closed = BTreeSet::new();
        while let Some(o) = self.server.poll_output() {
            match &o {
                ServerOutput::Frame { conn, frame } => {
                    assert!(!closed.contains(conn), "{frame:?} sent on {conn:?} after closing it");
                }
                ServerOutput::Close { conn, .. } => {
                    closed.insert(*conn);
                    self.conns.remove(conn);
                }
            }
            out.push(o);
        }
        self.outputs.extend(out.iter().cloned());
        out
    }

    /// Everything the server output since the last call.
    pub fn take_outputs(&mut self) -> Vec<ServerOutput> {
        std::mem::take(&mut self.outputs)
    }

    /// The challenge nonce of a connection not yet logged in.
    pub fn nonce(&self, conn: ConnId) -> Option<[u8; 32]> {
        match self.conns.get(&conn) {
            Some(Peer::Pending(n)) => Some(*n),
            _ => None,
        }
    }

    /// The secret identity key of `who` (a registered device).
    pub fn identity(&self, who: &DeviceAddress) -> IdentityKeyPair {
        self.identities.get(who).cloned().unwrap_or_else(|| panic!("no identity for {who:?}"))
    }

    /// The connection logged in as `who`, if one is open.
    pub fn conn_of(&self, who: &DeviceAddress) -> Option<ConnId> {
        self.conns.iter().find(|(_, p)| matches!(p, Peer::Device(a) if a == who)).map(|(c, _)| *c)
    }

    /// The open connections, in order.
    fn conn_ids(&self) -> Vec<ConnId> {
        self.conns.keys().copied().collect()
    }

    /// Feeds one frame's bytes on `conn` and checks everything listed in the
    /// module documentation.
    pub fn feed(&mut self, conn: ConnId, bytes: &[u8]) -> Vec<ServerOutput> {
        let decoded = wire::decode::<ClientFrame>(bytes).ok();
        if let Some(f) = &decoded {
            self.log.push((frame_name(f).to_owned(), bytes.to_vec()));
        }
        let peers_before = self.conns.clone();
        let who = match peers_before.get(&conn) {
            Some(Peer::Device(a)) => Some(a.clone()),
            _ => None,
        };
        let pre = self.checking.then(|| View::of(&self.server, &self.store));
        let out = self.call(|s, st, now| s.handle_bytes(conn, bytes, now, st));
        // A login on this connection.
        let welcomed = out
            .iter()
            .any(|o| matches!(o, ServerOutput::Frame { conn: c, frame: ServerFrame::Welcome { .. } } if *c == conn));
        if welcomed && who.is_none() {
            if let Some(ClientFrame::Register { user, device, .. } | ClientFrame::Authenticate { user, device, .. }) =
                &decoded
            {
                let a = DeviceAddress::new(user.clone(), *device);
                if let Some(ClientFrame::Register { identity_key, .. }) = &decoded {
                    if let Some(id) = self.keyring.get(&identity_key.0) {
                        self.identities.insert(a.clone(), id.clone());
                    }
                }
                self.conns.insert(conn, Peer::Device(a));
            }
        }
        if let Some(pre) = pre {
            let post = View::of(&self.server, &self.store);
            self.check_frame(&pre, &post, conn, who.as_ref(), decoded.as_ref(), &out, bytes.len(), &peers_before);
            // A recovery is the costly check; a frame that wrote nothing
            // cannot have made memory and store disagree unless it changed
            // memory, which the comparison with `pre` shows.
            if pre.store != post.store || pre.memory() != post.memory() {
                self.check_durable(&post);
            }
        }
        out
    }

    #[allow(clippy::too_many_arguments)]
    fn check_frame(
        &mut self,
        pre: &View,
        post: &View,
        conn: ConnId,
        who: Option<&DeviceAddress>,
        frame: Option<&ClientFrame>,
        out: &[ServerOutput],
        len: usize,
        peers_before: &BTreeMap<ConnId, Peer>,
    ) {
        let ctx = || format!("frame {frame:?} ({len} bytes) on {conn:?} from {who:?}");
        let new_login = match self.conns.get(&conn) {
            Some(Peer::Device(a)) if who.is_none() => Some(a.clone()),
            _ => None,
        };
        // 1. A refusal changes nothing.
        let to_me: Vec<&ServerFrame> = frames_to(out, conn);
        let others = out.iter().any(|o| matches!(o, ServerOutput::Frame { conn: c, .. } if *c != conn));
        let refused = !to_me.is_empty() && to_me.iter().all(|f| matches!(f, ServerFrame::Error { .. })) && !others;
        if refused {
            assert_eq!(pre.memory(), post.memory(), "a refused frame changed the server: {}", ctx());
            let closed = out.iter().any(|o| matches!(o, ServerOutput::Close { conn: c, .. } if *c == conn));
            for table in Table::ALL {
                if table == Table::Presence && closed {
                    continue;
                }
                assert_eq!(
                    pre.store.get(&table),
                    post.store.get(&table),
                    "a refused frame changed table {table}: {}",
                    ctx()
                );
            }
        }
        // 2. Mailboxes: entries of others are never removed or rewritten; new
        //    entries carry the sender's own address.
        for (k, before) in &pre.mailboxes {
            match post.mailboxes.get(k) {
                Some(after) => assert_eq!(before, after, "entry {k:?} rewritten: {}", ctx()),
                None => assert_eq!(Some(&k.0), who, "entry {k:?} of another device removed: {}", ctx()),
            }
        }
        for (k, (key, _, _)) in &post.mailboxes {
            if !pre.mailboxes.contains_key(k) {
                assert_eq!(Some(&key.0), who, "entry {k:?} added with sender {:?}: {}", key.0, ctx());
            }
        }
        // 3. Keys of other devices: one one-time prekey handed out, at most.
        let bundles: Vec<&ServerFrame> =
            to_me.iter().copied().filter(|f| matches!(f, ServerFrame::Bundle { .. })).collect();
        for (a, before) in &pre.keys {
            let after = post.keys.get(a).unwrap_or_else(|| panic!("key record of {a:?} deleted: {}", ctx()));
            assert_eq!(before.identity_key, after.identity_key, "identity of {a:?} changed: {}", ctx());
            if Some(a) == who {
                continue;
            }
            assert_eq!(before.signed_prekey, after.signed_prekey, "signed prekey of {a:?} changed: {}", ctx());
            assert_eq!(before.one_time_id_high, after.one_time_id_high, "prekey ids of {a:?} changed: {}", ctx());
            let gone: Vec<&u32> =
                before.one_time_prekeys.keys().filter(|id| !after.one_time_prekeys.contains_key(id)).collect();
            assert!(
                after.one_time_prekeys.keys().all(|id| before.one_time_prekeys.contains_key(id)),
                "prekeys of {a:?} added: {}",
                ctx()
            );
            assert!(gone.len() <= 1, "{} one-time prekeys of {a:?} gone at once: {}", gone.len(), ctx());
            if let Some(id) = gone.first() {
                let handed = bundles.iter().any(|f| matches!(f, ServerFrame::Bundle { bundle, .. } if &bundle.owner == a && bundle.one_time_prekey.map(|k| k.id) == Some(**id)));
                assert!(handed, "one-time prekey {id} of {a:?} removed without a bundle to the sender: {}", ctx());
            }
        }
        for a in post.keys.keys() {
            if !pre.keys.contains_key(a) {
                assert_eq!(new_login.as_ref(), Some(a), "device {a:?} registered by someone else: {}", ctx());
            }
        }
        // 4. Groups: only an admin changes one.
        for (g, before) in &pre.groups {
            let after = post.groups.get(g).unwrap_or_else(|| panic!("group {g:?} deleted: {}", ctx()));
            if before != after {
                let admin = who.map(|w| &w.user);
                assert!(
                    admin.is_some_and(|u| before.admins.contains(u) && after.admins.contains(u)),
                    "group {g:?} changed by a non-admin: {}",
                    ctx()
                );
            }
        }
        for (g, after) in &post.groups {
            if !pre.groups.contains_key(g) {
                assert!(
                    who.is_some_and(|w| after.admins.contains(&w.user)),
                    "group {g:?} created with someone else as admin: {}",
                    ctx()
                );
            }
        }
        // 5. Presence records and blobs of others.
        for (u, before) in &pre.presence {
            if who.is_some_and(|w| &w.user == u) {
                continue;
            }
            // Last-seen times set at login are written with the next presence
            // write, whoever causes it (docs/protocol.md 13.15); the setting is
            // the owner's alone.
            let after = post.presence.get(u).unwrap_or_else(|| panic!("presence of {u:?} deleted: {}", ctx()));
            assert_eq!(
                (before.visibility, &before.contacts),
                (after.visibility, &after.contacts),
                "presence setting of {u:?} changed: {}",
                ctx()
            );
        }
        for (b, before) in &pre.blobs {
            let after = post.blobs.get(b);
            if after != Some(before) {
                let owner = before.0.as_ref().map(|m| &m.owner);
                assert!(owner.is_some() && owner == who, "blob {b:?} of {owner:?} changed: {}", ctx());
            }
        }
        for (b, after) in &post.blobs {
            if !pre.blobs.contains_key(b) {
                assert!(
                    after.0.as_ref().is_some_and(|m| Some(&m.owner) == who),
                    "blob {b:?} created for someone else: {}",
                    ctx()
                );
            }
        }
        // 6. What other connections are sent; deliveries are real entries.
        for o in out {
            match o {
                ServerOutput::Frame { conn: c, frame } => {
                    if *c != conn {
                        assert!(
                            matches!(
                                frame,
                                ServerFrame::Deliver { .. }
                                    | ServerFrame::Presence { .. }
                                    | ServerFrame::PreKeysLow { .. }
                            ),
                            "{frame:?} sent to {c:?}, not the sender: {}",
                            ctx()
                        );
                    }
                    let peer = self.conns.get(c).or_else(|| peers_before.get(c)).cloned();
                    self.check_output(post, peer.as_ref(), frame, &ctx);
                }
                ServerOutput::Close { conn: c, .. } if *c != conn => {
                    let replaced =
                        matches!(peers_before.get(c), Some(Peer::Device(a)) if new_login.as_ref() == Some(a));
                    assert!(replaced, "{c:?} closed by a frame on another connection: {}", ctx());
                }
                ServerOutput::Close { .. } => {}
            }
        }
        // 7. Bounded.
        let devices = post.keys.len() + 2;
        let grew = post.store_bytes().saturating_sub(pre.store_bytes());
        assert!(grew <= (len + 1024) * devices, "the store grew by {grew} bytes: {}", ctx());
        assert!(out.len() <= 64 * devices + 16, "{} outputs: {}", out.len(), ctx());
    }

    /// Checks one frame the server sent.
    fn check_output(&mut self, post: &View, peer: Option<&Peer>, frame: &ServerFrame, ctx: &dyn Fn() -> String) {
        let Some(Peer::Device(me)) = peer else {
            assert!(
                matches!(
                    frame,
                    ServerFrame::Challenge { .. } | ServerFrame::Error { .. } | ServerFrame::Welcome { .. }
                ),
                "{frame:?} sent before authentication: {}",
                ctx()
            );
            return;
        };
        match frame {
            ServerFrame::Deliver { seq, item } => {
                let entry = post.mailboxes.get(&(me.clone(), *seq));
                let (key, _, _) =
                    entry.unwrap_or_else(|| panic!("delivery {seq} to {me:?} is not in its mailbox: {}", ctx()));
                if let Delivery::Envelope(e) = item {
                    assert_eq!(&e.from, &key.0, "delivery {seq} to {me:?} names another sender: {}", ctx());
                    assert_eq!(&e.to, me, "delivery {seq} to {me:?} addressed elsewhere: {}", ctx());
                }
            }
            ServerFrame::Presence { user, last_seen } => {
                let excluded = post.presence.get(user).is_some_and(|p| match p.visibility {
                    Visibility::Everyone => false,
                    Visibility::Contacts => !p.contacts.contains(&me.user),
                    Visibility::Nobody => true,
                });
                if excluded {
                    assert_eq!(
                        *last_seen,
                        LastSeen::LongAgo,
                        "{me:?} sees {user:?} against its privacy setting: {}",
                        ctx()
                    );
                }
            }
            ServerFrame::Bundle { bundle, .. } => {
                if let Some(k) = bundle.one_time_prekey {
                    let fresh = self.handed_out.insert((bundle.owner.clone(), k.id));
                    assert!(fresh, "one-time prekey {} of {:?} handed out twice: {}", k.id, bundle.owner, ctx());
                }
            }
            _ => {}
        }
    }

    /// What the server holds in memory must be what it would recover.
    fn check_durable(&self, live: &View) {
        let mut copy = self.store.clone();
        let back =
            Server::recover(self.config.clone(), 7, &mut copy).unwrap_or_else(|e| panic!("recovery failed: {e}"));
        let recovered = View::of(&back, &copy);
        assert_eq!(live.memory(), recovered.memory(), "memory and store disagree");
    }

    /// Lets `ms` pass and runs the timers that are due, checking that expiry
    /// removes only what is due and adds only expiry notices.
    pub fn advance(&mut self, ms: u64) {
        self.now_ms = self.now_ms.saturating_add(ms);
        if self.server.poll_timeout().is_none_or(|t| t > self.now_ms) {
            return;
        }
        let pre = View::of(&self.server, &self.store);
        let peers_before = self.conns.clone();
        let out = self.call(|s, st, now| s.handle_timeout(now, st));
        let post = View::of(&self.server, &self.store);
        let now = self.now_ms;
        for (k, (_, expires, _)) in &pre.mailboxes {
            if !post.mailboxes.contains_key(k) {
                assert!(*expires <= now, "entry {k:?} dropped at {now} before its expiry {expires}");
            }
        }
        for (k, (key, _, payload)) in &post.mailboxes {
            if !pre.mailboxes.contains_key(k) {
                assert!(
                    matches!(payload, Queued::Notice(Delivery::Expired { .. })) && key.0 == k.0,
                    "timer added {k:?}: {payload:?}"
                );
            }
        }
        assert_eq!(pre.groups, post.groups, "a timer changed a group");
        assert_eq!(pre.keys, post.keys, "a timer changed keys");
        let ctx = || format!("timeout at {now}");
        for o in &out {
            if let ServerOutput::Frame { conn, frame } = o {
                let peer = self.conns.get(conn).or_else(|| peers_before.get(conn)).cloned();
                self.check_output(&post, peer.as_ref(), frame, &ctx);
            }
        }
        self.check_durable(&post);
    }

    /// Closes `conn` from the client's side.
    pub fn disconnect(&mut self, conn: ConnId) {
        let pre = View::of(&self.server, &self.store);
        self.conns.remove(&conn);
        self.call(|s, st, now| s.handle_disconnect(conn, now, st));
        let post = View::of(&self.server, &self.store);
        assert_eq!(pre.memory(), post.memory(), "a disconnect changed mailboxes, groups or keys");
    }

    /// Crashes the server: a new one is recovered from the store; every
    /// connection is gone, and alice, bob and mallory log in again.
    pub fn crash(&mut self) {
        let pre = View::of(&self.server, &self.store);
        self.crashes += 1;
        self.server = Server::recover(self.config.clone(), 100 + self.crashes, &mut self.store)
            .unwrap_or_else(|e| panic!("recovery failed: {e}"));
        let post = View::of(&self.server, &self.store);
        assert_eq!(pre.memory(), post.memory(), "a crash lost or changed state");
        self.conns.clear();
        self.login_all();
    }

    /// A frame built from the script's bytes, as connection `conn` would send
    /// it: real signatures by the connection's own key (or another known one,
    /// as a thief of it would) or garbage, names from [`NAMES`], ids from small
    /// sets so that frames refer to each other.
    fn build_frame(&mut self, r: &mut Bytes<'_>, conn: ConnId) -> ClientFrame {
        let me = match self.conns.get(&conn) {
            Some(Peer::Device(a)) => Some(a.clone()),
            _ => None,
        };
        let nonce = match self.conns.get(&conn) {
            Some(Peer::Pending(n)) => *n,
            _ => [0; 32],
        };
        let my_key = me.as_ref().and_then(|a| self.identities.get(a)).cloned();
        match r.below(14) {
            0 | 1 => {
                let who = pick_addr(r);
                let known = self.identities.get(&who).cloned();
                let id = match (r.below(3), known) {
                    (0, Some(k)) => k,
                    (1, _) => self
                        .identities
                        .get(&addr(NAMES[r.below(4)]))
                        .cloned()
                        .unwrap_or_else(|| IdentityKeyPair::generate(&mut self.rng)),
                    _ => {
                        let fresh = IdentityKeyPair::generate(&mut self.rng);
                        self.keyring.insert(fresh.public().0, fresh.clone());
                        fresh
                    }
                };
                let proof = if r.below(4) == 0 {
                    garbage_signature(r)
                } else {
                    id.sign(&wire::auth_message(&nonce, &who.user, who.device), &mut self.rng)
                };
                let version = if r.below(8) == 0 { r.u16() } else { PROTOCOL_VERSION };
                if r.bool() {
                    ClientFrame::Register {
                        version,
                        user: who.user,
                        device: who.device,
                        identity_key: id.public(),
                        proof,
                    }
                } else {
                    ClientFrame::Authenticate { version, user: who.user, device: who.device, proof }
                }
            }
            2 => {
                let spk = prekey(r, &mut self.rng);
                let signature = match (&my_key, r.below(4)) {
                    (Some(k), 0..=2) => k.sign(&CipherSuite::BluetickV1.encode_public(&spk), &mut self.rng),
                    _ => garbage_signature(r),
                };
                let n = r.below(6);
                let one_time = (0..n)
                    .map(|_| OneTimePreKeyUpload { id: u32::from(r.u8() % 24), key: prekey(r, &mut self.rng) })
                    .collect();
                ClientFrame::UploadPreKeys {
                    signed_prekey: SignedPreKeyUpload { id: u32::from(r.u8()), key: spk, signature },
                    one_time,
                }
            }
            3 => ClientFrame::FetchBundle { request: r.u32(), owner: pick_addr(r) },
            4 | 5 => {
                let kind =
                    [EnvelopeKind::PreKey, EnvelopeKind::Message, EnvelopeKind::Media, EnvelopeKind::Group][r.below(4)];
                let len = usize::from(r.u8());
                ClientFrame::Send { message_id: pick_id(r), to: pick_addr(r), kind, ciphertext: r.take(len).to_vec() }
            }
            6 => {
                let len = usize::from(r.u8());
                ClientFrame::GroupSend {
                    message_id: pick_id(r),
                    group: GROUPS[r.below(GROUPS.len())],
                    ciphertext: r.take(len).to_vec(),
                }
            }
            7 => ClientFrame::DeliveryAck { seqs: (0..r.below(8)).map(|_| u64::from(r.u8() % 32)).collect() },
            8 => {
                let kind = if r.bool() { ReceiptKind::Read } else { ReceiptKind::Delivered };
                ClientFrame::Receipt {
                    id: pick_id(r),
                    to: pick_user(r),
                    kind,
                    message_ids: (0..r.below(4)).map(|_| pick_id(r)).collect(),
                }
            }
            9 => {
                let admin = if r.below(4) == 0 {
                    pick_user(r)
                } else {
                    me.as_ref().map_or_else(|| pick_user(r), |a| a.user.clone())
                };
                let mut change = SignedGroupChange {
                    group: GROUPS[r.below(GROUPS.len())],
                    version: u64::from(r.u8() % 4),
                    admin,
                    add: (0..r.below(4)).map(|_| pick_user(r)).collect(),
                    remove: (0..r.below(3)).map(|_| pick_user(r)).collect(),
                    signature: Signature([0; 64]),
                };
                change.signature = match (&my_key, r.below(4)) {
                    (Some(k), 0..=2) => k.sign(&change.signed_bytes(), &mut self.rng),
                    _ => garbage_signature(r),
                };
                ClientFrame::GroupChange { change }
            }
            10 => ClientFrame::PresenceSubscribe { users: (0..r.below(6)).map(|_| pick_user(r)).collect() },
            11 => {
                let visibility = [Visibility::Everyone, Visibility::Contacts, Visibility::Nobody][r.below(3)];
                ClientFrame::PresencePrivacy { visibility, contacts: (0..r.below(4)).map(|_| pick_user(r)).collect() }
            }
            12 => {
                let len = usize::from(r.u8());
                ClientFrame::MediaUpload {
                    blob: BLOBS[r.below(BLOBS.len())],
                    offset: u64::from(r.u8()) * 16,
                    chunk: r.take(len).to_vec(),
                    last: r.bool(),
                }
            }
            _ => {
                if r.bool() {
                    ClientFrame::MediaDownload { blob: BLOBS[r.below(BLOBS.len())], offset: u64::from(r.u8()) * 16 }
                } else {
                    ClientFrame::Ping { nonce: r.u64() }
                }
            }
        }
    }

    /// One script step.
    fn step(&mut self, r: &mut Bytes<'_>) {
        self.outputs.clear();
        let conns = self.conn_ids();
        let pick = |r: &mut Bytes<'_>| {
            // Mostly open connections, sometimes one that is closed or never was.
            if conns.is_empty() || r.below(16) == 0 {
                ConnId(u64::from(r.u8() % 12))
            } else {
                conns[r.below(conns.len())]
            }
        };
        match r.below(8) {
            0 | 1 => {
                let conn = pick(r);
                let len = usize::from(r.u16()) % RAW_LEN_MAX;
                let bytes = r.take(len).to_vec();
                self.feed(conn, &bytes);
            }
            2..=4 => {
                let conn = pick(r);
                let frame = self.build_frame(r, conn);
                self.feed(conn, &wire::encode(&frame));
            }
            5 => {
                let ms = match r.below(4) {
                    0 => u64::from(r.u8()) * bluetick_core::server::machine::DAY_MS,
                    1 => u64::from(r.u16()) * 1_000,
                    _ => u64::from(r.u16()),
                };
                self.advance(ms);
            }
            6 => match r.below(4) {
                0 => {
                    let conn = pick(r);
                    self.disconnect(conn);
                }
                1 => {
                    let who = pick_addr(r);
                    self.connect(Some(&who));
                }
                2 => {
                    self.connect(None);
                }
                _ => self.crash(),
            },
            _ => {
                let conn = pick(r);
                let to = pick_addr(r);
                let bytes = match r.below(4) {
                    0 => vec![r.u8(); FRAME_LEN_MAX + 1],
                    1 | 2 => {
                        let len = CIPHERTEXT_LEN_MAX + usize::from(r.bool());
                        let kind = EnvelopeKind::Message;
                        wire::encode(&ClientFrame::Send {
                            message_id: pick_id(r),
                            to,
                            kind,
                            ciphertext: vec![0xc7; len],
                        })
                    }
                    _ => {
                        let len = MEDIA_CHUNK_LEN_MAX + usize::from(r.bool());
                        let blob = BLOBS[r.below(BLOBS.len())];
                        wire::encode(&ClientFrame::MediaUpload { blob, offset: 0, chunk: vec![0xc7; len], last: true })
                    }
                };
                self.feed(conn, &bytes);
            }
        }
    }
}

/// Runs one script against a server with the default configuration.
pub fn run(data: &[u8]) {
    run_with(ServerConfig::default(), data);
}

/// Runs one script against a server with `config` (tests switch its
/// deliberate bugs on to show the checks fire).
pub fn run_with(config: ServerConfig, data: &[u8]) {
    let mut rig = Rig::start(config);
    let mut r = Bytes::new(data);
    for _ in 0..STEPS_MAX {
        if r.is_empty() {
            break;
        }
        rig.step(&mut r);
    }
}

fn pick_user(r: &mut Bytes<'_>) -> UserId {
    user(NAMES[r.below(NAMES.len())])
}

fn pick_addr(r: &mut Bytes<'_>) -> DeviceAddress {
    let u = pick_user(r);
    let device = if r.below(6) == 0 { DeviceId(2) } else { DeviceId(1) };
    DeviceAddress::new(u, device)
}

fn pick_id(r: &mut Bytes<'_>) -> MessageId {
    MessageId([r.u8() % 8; 16])
}

fn garbage_signature(r: &mut Bytes<'_>) -> Signature {
    let mut s = [0u8; 64];
    s[0] = r.u8();
    s[63] = r.u8();
    Signature(s)
}

/// A fresh key, or now and then the low-order zero point.
fn prekey(r: &mut Bytes<'_>, rng: &mut ChaCha20Rng) -> PublicKey {
    if r.below(8) == 0 {
        PublicKey([0; 32])
    } else {
        KeyPair::generate(rng).public()
    }
}

fn frames_to(out: &[ServerOutput], conn: ConnId) -> Vec<&ServerFrame> {
    out.iter()
        .filter_map(|o| match o {
            ServerOutput::Frame { conn: c, frame } if *c == conn => Some(frame),
            _ => None,
        })
        .collect()
}

/// The variant name of a client frame, for corpus file names.
pub fn frame_name(f: &ClientFrame) -> &'static str {
    match f {
        ClientFrame::Register { .. } => "register",
        ClientFrame::Authenticate { .. } => "authenticate",
        ClientFrame::UploadPreKeys { .. } => "upload-prekeys",
        ClientFrame::FetchBundle { .. } => "fetch-bundle",
        ClientFrame::Send { .. } => "send",
        ClientFrame::GroupSend { .. } => "group-send",
        ClientFrame::DeliveryAck { .. } => "delivery-ack",
        ClientFrame::Receipt { .. } => "receipt",
        ClientFrame::GroupChange { .. } => "group-change",
        ClientFrame::PresenceSubscribe { .. } => "presence-subscribe",
        ClientFrame::PresencePrivacy { .. } => "presence-privacy",
        ClientFrame::MediaUpload { .. } => "media-upload",
        ClientFrame::MediaDownload { .. } => "media-download",
        ClientFrame::Ping { .. } => "ping",
    }
}

/// Builds the base state through real frames (checked like any other).
fn build_base() -> Base {
    let mut rig = Rig::empty(ServerConfig::default());
    let mut identities = Vec::new();
    for name in NAMES.iter().take(4) {
        let id = IdentityKeyPair::generate(&mut rig.rng);
        identities.push(id.clone());
        let a = addr(name);
        rig.identities.insert(a.clone(), id.clone());
        let conn = ConnId(rig.next_conn);
        rig.next_conn += 1;
        let now = rig.now_ms;
        let out = rig.call(|s, _, _| s.handle_connect(conn, now));
        let nonce = match out.as_slice() {
            [ServerOutput::Frame { frame: ServerFrame::Challenge { nonce }, .. }] => *nonce,
            other => panic!("expected a challenge, got {other:?}"),
        };
        rig.conns.insert(conn, Peer::Pending(nonce));
        let proof = id.sign(&wire::auth_message(&nonce, &a.user, a.device), &mut rig.rng);
        let register = ClientFrame::Register {
            version: PROTOCOL_VERSION,
            user: a.user.clone(),
            device: a.device,
            identity_key: id.public(),
            proof,
        };
        expect(&rig.feed(conn, &wire::encode(&register)), conn, |f| matches!(f, ServerFrame::Welcome { .. }));
        let spk = KeyPair::generate(&mut rig.rng).public();
        let signature = id.sign(&CipherSuite::BluetickV1.encode_public(&spk), &mut rig.rng);
        let one_time =
            (0..3).map(|n| OneTimePreKeyUpload { id: n + 1, key: KeyPair::generate(&mut rig.rng).public() }).collect();
        let upload =
            ClientFrame::UploadPreKeys { signed_prekey: SignedPreKeyUpload { id: 1, key: spk, signature }, one_time };
        let out = rig.feed(conn, &wire::encode(&upload));
        assert!(frames_to(&out, conn).is_empty(), "upload of {name}: {out:?}");
    }
    let conn_of = |rig: &Rig, who: usize| {
        rig.conns
            .iter()
            .find(|(_, p)| **p == Peer::Device(addr(NAMES[who])))
            .map(|(c, _)| *c)
            .unwrap_or_else(|| panic!("{} is not online", NAMES[who]))
    };
    // Groups: alice's and mallory's.
    for (admin, group, members) in [(ALICE, ALICE_GROUP, vec![BOB, CAROL]), (MALLORY, MALLORY_GROUP, vec![BOB])] {
        let mut change = SignedGroupChange {
            group,
            version: 1,
            admin: user(NAMES[admin]),
            add: members.iter().map(|m| user(NAMES[*m])).collect(),
            remove: vec![],
            signature: Signature([0; 64]),
        };
        change.signature = identities[admin].sign(&change.signed_bytes(), &mut rig.rng);
        let conn = conn_of(&rig, admin);
        expect(&rig.feed(conn, &wire::encode(&ClientFrame::GroupChange { change })), conn, |f| {
            matches!(f, ServerFrame::GroupChangeAccepted { .. })
        });
    }
    // Privacy: bob shows alice only; carol shows nobody.
    for (who, visibility, contacts) in
        [(BOB, Visibility::Contacts, vec![user("alice")]), (CAROL, Visibility::Nobody, vec![])]
    {
        let conn = conn_of(&rig, who);
        rig.feed(conn, &wire::encode(&ClientFrame::PresencePrivacy { visibility, contacts }));
    }
    // Bob and carol go offline; mail waits for them.
    for who in [BOB, CAROL] {
        let conn = conn_of(&rig, who);
        rig.disconnect(conn);
    }
    let alice = conn_of(&rig, ALICE);
    for (n, to) in [(1u8, BOB), (2, BOB), (3, CAROL)] {
        let send = ClientFrame::Send {
            message_id: MessageId([0xa0 + n; 16]),
            to: addr(NAMES[to]),
            kind: EnvelopeKind::Message,
            ciphertext: vec![n; 40],
        };
        expect(&rig.feed(alice, &wire::encode(&send)), alice, |f| matches!(f, ServerFrame::ServerAck { .. }));
    }
    let gs = ClientFrame::GroupSend { message_id: MessageId([0xa9; 16]), group: ALICE_GROUP, ciphertext: vec![9; 120] };
    expect(&rig.feed(alice, &wire::encode(&gs)), alice, |f| matches!(f, ServerFrame::ServerAck { .. }));
    let mallory = conn_of(&rig, MALLORY);
    let send = ClientFrame::Send {
        message_id: MessageId([0xee; 16]),
        to: addr("bob"),
        kind: EnvelopeKind::PreKey,
        ciphertext: vec![0xee; 80],
    };
    expect(&rig.feed(mallory, &wire::encode(&send)), mallory, |f| matches!(f, ServerFrame::ServerAck { .. }));
    // Media: one complete blob, one open.
    let up = ClientFrame::MediaUpload { blob: ALICE_BLOB, offset: 0, chunk: vec![0xb1; 64], last: false };
    rig.feed(alice, &wire::encode(&up));
    let up = ClientFrame::MediaUpload { blob: ALICE_BLOB, offset: 64, chunk: vec![0xb1; 32], last: true };
    expect(&rig.feed(alice, &wire::encode(&up)), alice, |f| matches!(f, ServerFrame::MediaStored { .. }));
    let up = ClientFrame::MediaUpload { blob: ALICE_OPEN_BLOB, offset: 0, chunk: vec![0xb2; 16], last: false };
    rig.feed(alice, &wire::encode(&up));
    // A few more kinds, so the seed corpora hold every frame type.
    let me = conn_of(&rig, MALLORY);
    rig.feed(me, &wire::encode(&ClientFrame::Ping { nonce: 300 }));
    rig.feed(me, &wire::encode(&ClientFrame::PresenceSubscribe { users: vec![user("alice"), user("bob")] }));
    rig.feed(me, &wire::encode(&ClientFrame::MediaDownload { blob: ALICE_BLOB, offset: 0 }));
    let receipt = ClientFrame::Receipt {
        id: MessageId([0xef; 16]),
        to: user("alice"),
        kind: ReceiptKind::Read,
        message_ids: vec![MessageId([0xa1; 16])],
    };
    rig.feed(me, &wire::encode(&receipt));
    rig.feed(me, &wire::encode(&ClientFrame::DeliveryAck { seqs: vec![1, 2, 300] }));
    rig.feed(me, &wire::encode(&ClientFrame::FetchBundle { request: 1, owner: addr("carol") }));
    for c in rig.conn_ids() {
        rig.disconnect(c);
    }
    Base { store: rig.store, identities, frames: rig.log }
}

fn expect(out: &[ServerOutput], conn: ConnId, want: impl Fn(&ServerFrame) -> bool) {
    assert!(frames_to(out, conn).into_iter().any(want), "unexpected answer on {conn:?}: {out:?}");
}

/// Every distinct frame kind fed while building the base state, encoded: the
/// seed corpus of `wire_decode` (client side).
pub fn sample_client_frames() -> Vec<(String, Vec<u8>)> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for (name, bytes) in &base().frames {
        if seen.insert(name.clone()) {
            out.push((name.clone(), bytes.clone()));
        }
    }
    out
}

/// A script step feeding `frame` raw on the connection at `conn_index`.
pub fn raw_step(conn_index: u8, frame: &[u8]) -> Vec<u8> {
    let mut s = vec![0u8, conn_index];
    let len = u16::try_from(frame.len()).unwrap_or(u16::MAX);
    s.extend_from_slice(&len.to_le_bytes());
    s.extend_from_slice(frame);
    s
}

/// Seed scripts of `server_frames`: each real frame kind sent raw by mallory
/// (connection index 2) and by the unauthenticated connection (index 3), and a
/// few scripted attacks built with the frame builder.
pub fn seeds() -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for (name, bytes) in sample_client_frames() {
        if bytes.len() < RAW_LEN_MAX {
            out.push((format!("mallory-{name}"), raw_step(2, &bytes)));
            out.push((format!("unauthenticated-{name}"), raw_step(3, &bytes)));
        }
    }
    // Built frames: step kind 2 (build), connection 2 (mallory), frame kind k.
    for k in 0..14u8 {
        out.push((format!("built-{k:02}"), vec![2, 2, k, 1, 2, 3, 0, 1, 0, 2, 1, 1, 0]));
    }
    // Time passing to the TTL, a crash, and a login as bob's second device.
    out.push(("expire".into(), vec![5, 0, 31, 5, 0, 31]));
    out.push(("crash".into(), vec![2, 0, 4, 1, 1, 8, 6, 3]));
    out.push(("second-device".into(), vec![2, 3, 0, 1, 5, 0, 2, 1, 2, 1, 1]));
    out
}
