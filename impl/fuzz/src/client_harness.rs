//! The sans-IO client fed arbitrary server frames: a malicious server.
//!
//! Built once: a real server and three real clients (alice, bob, carol, real
//! crypto). Bob registers and goes offline; alice sends him two texts, creates
//! a group with him, sends to it, adds carol, sends again; carol sends him a
//! text. Bob's saved state from before he came back, and every frame the
//! server then sent him, are kept. Each run restores that bob and reads the
//! fuzzer's bytes as a script ([`run`]): the genuine frames in any order and
//! any number of times, genuine frames with a field changed (sender, id, seq,
//! time, kind, group, a ciphertext byte), arbitrary bytes that happen to
//! decode, frames made up from the bytes, time passing, reconnects and crashes
//! (restore from the last save; the harness saves after every input, as the
//! durability contract requires).
//!
//! Checked after every input (each check panics with what it saw):
//! - every message shown to the app is one alice or carol really sent, in that
//!   group, with that body: a server without their keys cannot make bob show
//!   anything else. The server can name another sender on a first-contact
//!   (`PreKey`) message, as trust on first use allows; against a key bob has
//!   already pinned for the named user he must get `IdentityChanged` first;
//! - none is shown twice, however the server replays, reorders, renumbers or
//!   re-dates it, across reconnects and crashes;
//! - bob's view of the group is one that alice signed (version and members),
//!   and he knows no group alice did not make: the server cannot add a member;
//! - bounded: frames bob sends fit `FRAME_LEN_MAX` and are bounded in number
//!   per input; his saved state stays under [`SAVE_LEN_MAX`];
//! - every save restores and re-saves to the same bytes; bob saves
//!   incrementally, and his last full save with the changes after it is
//!   byte for byte his full save.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::OnceLock;

use bluetick_core::client::{
    AppEvent, Client, ClientConfig, IncrementalSave, SavedChanges, SavedClient, PRIMARY_DEVICE,
};
use bluetick_core::ids::{DeviceAddress, DeviceId, GroupId, MessageId, UserId};
use bluetick_core::server::{ConnId, Server, ServerConfig, ServerOutput};
use bluetick_core::store::MemoryStore;
use bluetick_core::wire::{
    self, BundleReply, Delivery, Envelope, EnvelopeKind, ErrorCode, LastSeen, OneTimePreKeyUpload, ReceiptKind,
    ServerFrame, SignedGroupChange, SignedPreKeyUpload, FRAME_LEN_MAX,
};
use bluetick_crypto::xeddsa::Signature;
use bluetick_crypto::PublicKey;

use crate::bytes::Bytes;

/// Most script steps per run.
pub const STEPS_MAX: usize = 64;

/// Largest saved state accepted after a run: the base state is a few KiB and
/// one step can add at most a few dedup records and held messages.
pub const SAVE_LEN_MAX: usize = 2 * 1024 * 1024;

/// Frames one input may make bob send: acks, receipts, fetches and resends
/// of an outbox that is empty here; far above what any input needs.
const TRANSMITS_PER_INPUT_MAX: usize = 1024;

const START_MS: u64 = 1_700_000_000_000;

/// A message as its sender's app sent it: (sender, group, id) → body.
type Genuine = BTreeMap<(UserId, Option<GroupId>, MessageId), Vec<u8>>;

struct Base {
    config: ClientConfig,
    saved: SavedClient,
    frames: Vec<ServerFrame>,
    genuine: Genuine,
    group: GroupId,
    /// (version, members) of every state alice's group went through.
    group_states: BTreeSet<(u64, Vec<UserId>)>,
}

fn base() -> &'static Base {
    static BASE: OnceLock<Base> = OnceLock::new();
    BASE.get_or_init(build_base)
}

fn user(name: &str) -> UserId {
    UserId::new(name).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// A server and real clients wired together in memory.
struct Net {
    server: Server,
    store: MemoryStore,
    now_ms: u64,
    clients: Vec<Client>,
    /// The connection of each client, while online.
    conns: Vec<Option<ConnId>>,
    next_conn: u64,
    /// Frames sent to client `capture`, when set.
    capture: Option<usize>,
    captured: Vec<ServerFrame>,
    events: Vec<Vec<AppEvent>>,
}

impl Net {
    fn connect(&mut self, i: usize) {
        let conn = ConnId(self.next_conn);
        self.next_conn += 1;
        self.conns[i] = Some(conn);
        self.clients[i].handle_connected(self.now_ms);
        self.server.handle_connect(conn, self.now_ms);
        self.settle();
    }

    fn disconnect(&mut self, i: usize) {
        if let Some(conn) = self.conns[i].take() {
            self.clients[i].handle_disconnected(self.now_ms);
            self.server.handle_disconnect(conn, self.now_ms, &mut self.store);
        }
        self.settle();
    }

    /// Moves frames both ways until nothing is left to move, then lets a
    /// second pass and the timers run so resends and acks settle.
    fn settle(&mut self) {
        for _ in 0..10_000 {
            let mut moved = false;
            for i in 0..self.clients.len() {
                while let Some(frame) = self.clients[i].poll_transmit() {
                    moved = true;
                    if let Some(conn) = self.conns[i] {
                        self.server.handle_bytes(conn, &wire::encode(&frame), self.now_ms, &mut self.store);
                    }
                }
                while let Some(e) = self.clients[i].poll_event() {
                    self.events[i].push(e);
                }
            }
            while let Some(o) = self.server.poll_output() {
                moved = true;
                match o {
                    ServerOutput::Frame { conn, frame } => {
                        if let Some(i) = self.conns.iter().position(|c| *c == Some(conn)) {
                            if self.capture == Some(i) {
                                self.captured.push(frame.clone());
                            }
                            self.clients[i].handle_frame(frame, self.now_ms);
                        }
                    }
                    ServerOutput::Close { conn, .. } => {
                        if let Some(i) = self.conns.iter().position(|c| *c == Some(conn)) {
                            self.conns[i] = None;
                            self.clients[i].handle_disconnected(self.now_ms);
                        }
                    }
                }
            }
            if !moved {
                return;
            }
        }
        panic!("the in-memory network did not settle");
    }

    /// Lets time pass in small steps, running every timer.
    fn wait(&mut self, ms: u64) {
        let end = self.now_ms + ms;
        while self.now_ms < end {
            self.now_ms = (self.now_ms + 1_000).min(end);
            if self.server.poll_timeout().is_some_and(|t| t <= self.now_ms) {
                self.server.handle_timeout(self.now_ms, &mut self.store);
            }
            for c in &mut self.clients {
                if c.poll_timeout().is_some_and(|t| t <= self.now_ms) {
                    c.handle_timeout(self.now_ms);
                }
            }
            self.settle();
        }
    }
}

fn build_base() -> Base {
    let names = ["alice", "bob", "carol"];
    let configs: Vec<ClientConfig> =
        names.iter().map(|n| ClientConfig { prekey_batch: 10, ..ClientConfig::new(user(n), PRIMARY_DEVICE) }).collect();
    let clients = configs.iter().enumerate().map(|(i, c)| Client::new(c.clone(), 10 + i as u64, START_MS)).collect();
    let mut net = Net {
        server: Server::new(ServerConfig::default(), 3),
        store: MemoryStore::new(),
        now_ms: START_MS,
        clients,
        conns: vec![None; 3],
        next_conn: 1,
        capture: None,
        captured: Vec::new(),
        events: vec![Vec::new(); 3],
    };
    for i in 0..3 {
        net.connect(i);
    }
    net.wait(2_000);
    net.disconnect(1);
    let saved = net.clients[1].save();
    let bob = user("bob");
    let mut genuine = Genuine::new();
    for body in [&b"hello bob"[..], b"second text"] {
        let id = net.clients[0].send_text(&bob, body, net.now_ms).unwrap_or_else(|e| panic!("send: {e}"));
        genuine.insert((user("alice"), None, id), body.to_vec());
    }
    net.settle();
    let group = net.clients[0].create_group(vec![bob.clone()], net.now_ms).unwrap_or_else(|e| panic!("group: {e}"));
    net.wait(2_000);
    let mut group_states = BTreeSet::new();
    group_states.extend(net.clients[0].group(&group));
    let id = net.clients[0].send_group(group, b"group one", net.now_ms).unwrap_or_else(|e| panic!("send: {e}"));
    genuine.insert((user("alice"), Some(group), id), b"group one".to_vec());
    net.wait(2_000);
    net.clients[0]
        .change_group(group, vec![user("carol")], vec![], net.now_ms)
        .unwrap_or_else(|e| panic!("change: {e}"));
    net.wait(2_000);
    group_states.extend(net.clients[0].group(&group));
    let id = net.clients[0].send_group(group, b"group two", net.now_ms).unwrap_or_else(|e| panic!("send: {e}"));
    genuine.insert((user("alice"), Some(group), id), b"group two".to_vec());
    let id = net.clients[2].send_text(&bob, b"from carol", net.now_ms).unwrap_or_else(|e| panic!("send: {e}"));
    genuine.insert((user("carol"), None, id), b"from carol".to_vec());
    net.wait(5_000);
    // Bob comes back; everything the server sends him is kept.
    net.capture = Some(1);
    net.connect(1);
    net.wait(30_000);
    let shown: BTreeSet<(UserId, Option<GroupId>, MessageId)> = net.events[1]
        .iter()
        .filter_map(|e| match e {
            AppEvent::Message { from, group, id, .. } => Some((from.clone(), *group, *id)),
            _ => None,
        })
        .collect();
    let all: BTreeSet<_> = genuine.keys().cloned().collect();
    assert_eq!(shown, all, "the base run did not deliver everything to bob: {:?}", net.events[1]);
    Base { config: configs[1].clone(), saved, frames: net.captured, genuine, group, group_states }
}

/// Bob restored from before his deliveries, and what the checks remember.
struct Rig {
    bob: Client,
    now_ms: u64,
    /// What a crash restores: `full` with `changes` applied.
    saved: SavedClient,
    /// Bob saves incrementally, as the tokio driver does: his last full
    /// save and the changes after it.
    full: SavedClient,
    changes: Vec<SavedChanges>,
    shown: BTreeSet<(UserId, MessageId)>,
    /// Whose identity key bob holds for each user, as far as the messages he
    /// was shown tell (he pins his own at creation).
    pinned: BTreeMap<UserId, UserId>,
    /// Users bob was warned about (`IdentityChanged`) since their key was last
    /// re-pinned in [`Rig::pinned`].
    warned: BTreeSet<UserId>,
}

impl Rig {
    fn start() -> Rig {
        let b = base();
        let mut bob = Client::restore(b.config.clone(), &b.saved).unwrap_or_else(|e| panic!("restore: {e}"));
        let now_ms = START_MS + 3_600_000;
        bob.handle_connected(now_ms);
        let pinned = BTreeMap::from([(user("bob"), user("bob"))]);
        Rig {
            bob,
            now_ms,
            saved: b.saved.clone(),
            full: b.saved.clone(),
            changes: Vec::new(),
            shown: BTreeSet::new(),
            pinned,
            warned: BTreeSet::new(),
        }
    }

    /// Saves, then checks what the last input made bob send and show.
    fn after_input(&mut self, what: &str) {
        let b = base();
        if self.bob.is_dirty() {
            match self.bob.save_incremental(self.changes.len() >= 4) {
                IncrementalSave::Full(full) => {
                    self.full = full;
                    self.changes.clear();
                }
                IncrementalSave::Changes(c) => self.changes.push(c),
            }
            self.saved = self
                .full
                .apply_changes(&self.changes)
                .unwrap_or_else(|e| panic!("saved changes do not apply, after {what}: {e}"));
            assert!(self.saved == self.bob.save(), "saved changes lead elsewhere than a full save, after {what}");
        }
        let mut sent = 0;
        while let Some(frame) = self.bob.poll_transmit() {
            sent += 1;
            let len = wire::encode(&frame).len();
            assert!(len <= FRAME_LEN_MAX, "bob sent a {len}-byte frame after {what}");
        }
        assert!(sent <= TRANSMITS_PER_INPUT_MAX, "bob sent {sent} frames after {what}");
        let trace = std::env::var_os("BLUETICK_HARNESS_TRACE").is_some();
        if trace {
            eprintln!("after {what}:");
        }
        while let Some(event) = self.bob.poll_event() {
            if trace {
                eprintln!("  {event:?}");
            }
            match &event {
                AppEvent::IdentityChanged { user } => {
                    self.warned.insert(user.clone());
                }
                AppEvent::Message { from, group, id, body, .. } => {
                    let sender = b.genuine.iter().find(|((_, g, i), v)| g == group && i == id && *v == body);
                    let ((sender, _, _), _) = sender
                        .unwrap_or_else(|| panic!("bob was shown a message nobody sent, after {what}: {event:?}"));
                    // The server names the sender. Relabelling a message to
                    // another user works only under trust on first use: the
                    // message was sealed under the real sender's identity key,
                    // which bob pins for the named user. The first time that is
                    // silent (as a server handing out its own keys would be);
                    // against a key bob already pinned, he must be warned.
                    // Group messages are authenticated by the sender key,
                    // which only ever arrives pairwise: they pin nothing.
                    if sender != from {
                        match self.pinned.get(from) {
                            None => {}
                            Some(p) if p == sender => {}
                            Some(p) => {
                                // The warning may have come with an earlier
                                // input (a key distribution in the new session).
                                assert!(
                                    self.warned.remove(from),
                                    "bob was shown {sender:?}'s message as from {from:?} (pinned: {p:?}) without an identity warning, after {what}"
                                );
                            }
                        }
                        self.pinned.insert(from.clone(), sender.clone());
                    } else if group.is_none()
                        && self.pinned.insert(from.clone(), sender.clone()).is_some_and(|p| p != *sender)
                    {
                        self.warned.remove(from);
                    }
                    assert!(
                        self.shown.insert((from.clone(), *id)),
                        "bob was shown {from:?}/{id:?} twice, after {what}"
                    );
                }
                _ => {}
            }
        }
        for g in crate::server_harness::GROUPS.into_iter().chain([b.group]) {
            if let Some(state) = self.bob.group(&g) {
                assert!(
                    g == b.group && b.group_states.contains(&state),
                    "bob's group {g:?} is {state:?}, which alice never signed, after {what}"
                );
            }
        }
    }

    fn crash(&mut self) {
        let len = self.saved.as_bytes().len();
        assert!(len <= SAVE_LEN_MAX, "saved state of {len} bytes");
        let bob = Client::restore(base().config.clone(), &self.saved)
            .unwrap_or_else(|e| panic!("a save does not restore: {e}"));
        assert_eq!(bob.save().as_bytes(), self.saved.as_bytes(), "a restored state saves differently");
        self.bob = bob;
        self.bob.handle_connected(self.now_ms);
    }

    fn feed(&mut self, frame: ServerFrame, what: &str) {
        self.bob.handle_frame(frame, self.now_ms);
        self.after_input(what);
    }

    fn step(&mut self, r: &mut Bytes<'_>) {
        let frames = &base().frames;
        match r.below(8) {
            0..=2 => {
                let k = r.below(frames.len());
                self.feed(frames[k].clone(), &format!("genuine frame {k}"));
            }
            3 => {
                let k = r.below(frames.len());
                let frame = mutate(frames[k].clone(), r);
                let what = format!("genuine frame {k} changed to {frame:?}");
                self.feed(frame, &what);
            }
            4 => {
                let len = usize::from(r.u16()) % 2048;
                if let Ok(frame) = wire::decode::<ServerFrame>(r.take(len)) {
                    let what = format!("decoded {frame:?}");
                    self.feed(frame, &what);
                }
            }
            5 => {
                let frame = made_up(r);
                let what = format!("made-up {frame:?}");
                self.feed(frame, &what);
            }
            6 => {
                self.now_ms = self.now_ms.saturating_add(match r.below(3) {
                    0 => u64::from(r.u8()) * 86_400_000,
                    _ => u64::from(r.u16()) * 10,
                });
                if self.bob.poll_timeout().is_some_and(|t| t <= self.now_ms) {
                    self.bob.handle_timeout(self.now_ms);
                    self.after_input("a timeout");
                }
            }
            _ => {
                if r.bool() {
                    self.bob.handle_disconnected(self.now_ms);
                    self.bob.handle_connected(self.now_ms);
                    self.after_input("a reconnect");
                } else {
                    self.crash();
                    self.after_input("a crash");
                }
            }
        }
    }
}

/// Bob gets the challenge, the welcome, and alice's first `PreKey` message
/// relabelled by the server as sent by bob himself; returns the messages the
/// app was shown (a known client bug shows it: see the threat model).
pub fn relabelled_as_self() -> Vec<AppEvent> {
    let frames = &base().frames;
    let mut bob = Rig::start().bob;
    let now = START_MS + 3_600_000;
    for f in frames.iter().take(2) {
        bob.handle_frame(f.clone(), now);
    }
    let first = frames.iter().find_map(|f| match f {
        ServerFrame::Deliver { seq, item: Delivery::Envelope(e) } if e.kind == EnvelopeKind::PreKey => {
            Some((*seq, e.clone()))
        }
        _ => None,
    });
    let (seq, mut e) = first.unwrap_or_else(|| panic!("no PreKey delivery to bob"));
    e.from = DeviceAddress::new(user("bob"), PRIMARY_DEVICE);
    bob.handle_frame(ServerFrame::Deliver { seq, item: Delivery::Envelope(e) }, now);
    std::iter::from_fn(|| bob.poll_event()).filter(|e| matches!(e, AppEvent::Message { .. })).collect()
}

/// Every envelope the server delivered to bob in the base run, with the
/// body its sender's app sent when it is a text (what a curious server
/// holds next to what it must not learn).
pub fn genuine_envelopes() -> Vec<(Envelope, Option<Vec<u8>>)> {
    let b = base();
    b.frames
        .iter()
        .filter_map(|f| match f {
            ServerFrame::Deliver { item: Delivery::Envelope(e), .. } => {
                let body = b.genuine.get(&(e.from.user.clone(), e.group, e.message_id)).cloned();
                Some((e.clone(), body))
            }
            _ => None,
        })
        .collect()
}

/// Runs one script.
pub fn run(data: &[u8]) {
    let mut rig = Rig::start();
    let mut r = Bytes::new(data);
    for _ in 0..STEPS_MAX {
        if r.is_empty() {
            break;
        }
        rig.step(&mut r);
    }
    rig.crash();
}

const PEERS: [&str; 4] = ["alice", "bob", "carol", "mallory"];

fn pick_addr(r: &mut Bytes<'_>) -> DeviceAddress {
    DeviceAddress::new(user(PEERS[r.below(PEERS.len())]), DeviceId(1 + u32::from(r.u8() % 2)))
}

fn pick_kind(r: &mut Bytes<'_>) -> EnvelopeKind {
    [EnvelopeKind::PreKey, EnvelopeKind::Message, EnvelopeKind::Media, EnvelopeKind::Group][r.below(4)]
}

fn some_key(r: &mut Bytes<'_>) -> PublicKey {
    let mut k = [0u8; 32];
    k[0] = r.u8();
    k[31] = r.u8() & 0x7f;
    PublicKey(k)
}

/// A genuine frame with one field changed.
fn mutate(frame: ServerFrame, r: &mut Bytes<'_>) -> ServerFrame {
    match frame {
        ServerFrame::Deliver { seq, item: Delivery::Envelope(mut e) } => {
            let seq = match r.below(9) {
                0 => r.u64(),
                1 => {
                    e.from = pick_addr(r);
                    seq
                }
                2 => {
                    e.message_id = MessageId([r.u8(); 16]);
                    seq
                }
                3 => {
                    e.server_ts_ms = r.u64();
                    seq
                }
                4 => {
                    e.kind = pick_kind(r);
                    seq
                }
                5 => {
                    e.group = if r.bool() { None } else { Some(GroupId([r.u8(); 16])) };
                    seq
                }
                6 => {
                    let at = usize::from(r.u16());
                    let flip = r.u8() | 1;
                    let len = e.ciphertext.len().max(1);
                    if let Some(b) = e.ciphertext.get_mut(at % len) {
                        *b ^= flip;
                    }
                    seq
                }
                7 => {
                    let keep = usize::from(r.u16()) % (e.ciphertext.len() + 1);
                    e.ciphertext.truncate(keep);
                    seq
                }
                _ => {
                    e.to = pick_addr(r);
                    seq
                }
            };
            ServerFrame::Deliver { seq, item: Delivery::Envelope(e) }
        }
        ServerFrame::Deliver { seq, item: Delivery::GroupChange(mut c) } => {
            match r.below(4) {
                0 => c.add.push(user("mallory")),
                1 => c.version = c.version.wrapping_add(u64::from(r.u8())),
                2 => c.remove.push(user("alice")),
                _ => c.signature.0[r.below(64)] ^= 1,
            }
            ServerFrame::Deliver { seq, item: Delivery::GroupChange(c) }
        }
        ServerFrame::Bundle { request, mut bundle } => {
            match r.below(3) {
                0 => bundle.signed_prekey.key = some_key(r),
                1 => bundle.identity_key = some_key(r),
                _ => bundle.one_time_prekey = None,
            }
            ServerFrame::Bundle { request, bundle }
        }
        other => made_up_or(other, r),
    }
}

fn made_up_or(frame: ServerFrame, r: &mut Bytes<'_>) -> ServerFrame {
    if r.bool() {
        frame
    } else {
        made_up(r)
    }
}

/// A server frame made up from the script's bytes.
fn made_up(r: &mut Bytes<'_>) -> ServerFrame {
    let id = MessageId([r.u8() % 8; 16]);
    match r.below(12) {
        0 => ServerFrame::Challenge { nonce: [r.u8(); 32] },
        1 => ServerFrame::Welcome { server_ts_ms: r.u64() },
        2 => ServerFrame::ServerAck { message_id: id, server_ts_ms: r.u64() },
        3 | 4 => {
            let len = usize::from(r.u16()) % 512;
            let e = Envelope {
                from: pick_addr(r),
                to: if r.below(4) == 0 { pick_addr(r) } else { DeviceAddress::new(user("bob"), PRIMARY_DEVICE) },
                message_id: id,
                server_ts_ms: START_MS + u64::from(r.u32()),
                group: if r.bool() { Some(base().group) } else { None },
                kind: pick_kind(r),
                ciphertext: r.take(len).to_vec(),
            };
            ServerFrame::Deliver { seq: u64::from(r.u8()), item: Delivery::Envelope(e) }
        }
        5 => {
            let kind = if r.bool() { ReceiptKind::Read } else { ReceiptKind::Delivered };
            let ids = (0..r.below(4)).map(|_| MessageId([r.u8() % 8; 16])).collect();
            ServerFrame::Deliver {
                seq: u64::from(r.u8()),
                item: Delivery::Receipt { from: pick_addr(r), kind, message_ids: ids },
            }
        }
        6 => ServerFrame::Deliver {
            seq: u64::from(r.u8()),
            item: Delivery::Expired { to: pick_addr(r), message_id: id },
        },
        7 => {
            let change = SignedGroupChange {
                group: if r.bool() { base().group } else { GroupId([r.u8(); 16]) },
                version: u64::from(r.u8() % 4),
                admin: user(PEERS[r.below(PEERS.len())]),
                add: (0..r.below(3)).map(|_| user(PEERS[r.below(PEERS.len())])).collect(),
                remove: (0..r.below(3)).map(|_| user(PEERS[r.below(PEERS.len())])).collect(),
                signature: Signature([r.u8(); 64]),
            };
            ServerFrame::Deliver { seq: u64::from(r.u8()), item: Delivery::GroupChange(change) }
        }
        8 => {
            let owner = pick_addr(r);
            let bundle = BundleReply {
                owner,
                identity_key: some_key(r),
                signed_prekey: SignedPreKeyUpload { id: r.u32(), key: some_key(r), signature: Signature([r.u8(); 64]) },
                one_time_prekey: r.bool().then(|| OneTimePreKeyUpload { id: 1, key: PublicKey([r.u8(); 32]) }),
            };
            ServerFrame::Bundle { request: r.u32() % 4, bundle }
        }
        9 => ServerFrame::PreKeysLow { remaining: r.u32() % 16 },
        10 => {
            let last_seen = [LastSeen::Online, LastSeen::Recently, LastSeen::LongAgo][r.below(3)];
            ServerFrame::Presence { user: user(PEERS[r.below(PEERS.len())]), last_seen }
        }
        _ => match r.below(4) {
            0 => ServerFrame::GroupChangeAccepted { group: base().group, version: u64::from(r.u8()) },
            1 => ServerFrame::Pong { nonce: r.u64() },
            2 => ServerFrame::Error { code: ErrorCode::LimitExceeded, detail: "made up".into() },
            _ => ServerFrame::MediaChunk {
                blob: bluetick_core::ids::BlobId([1; 16]),
                offset: 0,
                chunk: vec![1, 2],
                last: true,
            },
        },
    }
}

/// The variant name of a server frame, for corpus file names.
pub fn frame_name(f: &ServerFrame) -> String {
    match f {
        ServerFrame::Challenge { .. } => "challenge".into(),
        ServerFrame::Welcome { .. } => "welcome".into(),
        ServerFrame::ServerAck { .. } => "server-ack".into(),
        ServerFrame::Deliver { item, .. } => match item {
            Delivery::Envelope(e) => format!("deliver-{:?}", e.kind).to_lowercase(),
            Delivery::Receipt { .. } => "deliver-receipt".into(),
            Delivery::Expired { .. } => "deliver-expired".into(),
            Delivery::GroupChange(_) => "deliver-group-change".into(),
        },
        ServerFrame::GroupChangeAccepted { .. } => "group-change-accepted".into(),
        ServerFrame::MediaStored { .. } => "media-stored".into(),
        ServerFrame::Bundle { .. } => "bundle".into(),
        ServerFrame::PreKeysLow { .. } => "prekeys-low".into(),
        ServerFrame::Presence { .. } => "presence".into(),
        ServerFrame::MediaChunk { .. } => "media-chunk".into(),
        ServerFrame::Pong { .. } => "pong".into(),
        ServerFrame::Error { .. } => "error".into(),
    }
}

/// One genuine frame of each kind bob received, plus made-up ones of the
/// kinds he did not: the server side of the `wire_decode` seed corpus.
pub fn sample_server_frames() -> Vec<(String, Vec<u8>)> {
    let mut extra = vec![
        ServerFrame::Pong { nonce: 5 },
        ServerFrame::Error { code: ErrorCode::UnknownRecipient, detail: "no".into() },
        ServerFrame::Presence { user: user("alice"), last_seen: LastSeen::Recently },
        ServerFrame::MediaChunk { blob: bluetick_core::ids::BlobId([7; 16]), offset: 0, chunk: vec![1; 8], last: true },
        ServerFrame::MediaStored { blob: bluetick_core::ids::BlobId([7; 16]), len: 8 },
        ServerFrame::PreKeysLow { remaining: 3 },
    ];
    let mut frames = base().frames.clone();
    frames.append(&mut extra);
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for f in frames {
        let name = frame_name(&f);
        if seen.insert(name.clone()) {
            out.push((name, wire::encode(&f)));
        }
    }
    out
}

/// Seed scripts of `client_frames`: the genuine frames in order; in order
/// twice (every replay must be absorbed); in reverse; with a crash after each;
/// and one made-up frame of each kind.
pub fn seeds() -> Vec<(String, Vec<u8>)> {
    let n = u8::try_from(base().frames.len()).unwrap_or(u8::MAX);
    let in_order: Vec<u8> = (0..n).flat_map(|k| [0, k]).collect();
    let mut out = vec![
        ("genuine-in-order".to_owned(), in_order.clone()),
        ("genuine-twice".to_owned(), [in_order.clone(), in_order].concat()),
        ("genuine-reversed".to_owned(), (0..n).rev().flat_map(|k| [0, k]).collect()),
        ("genuine-with-crashes".to_owned(), (0..n).flat_map(|k| [0, k, 7, 0]).collect()),
    ];
    for k in 0..12u8 {
        out.push((format!("made-up-{k:02}"), vec![5, 3, k, 1, 2, 3, 4, 5, 6, 7, 8]));
    }
    for k in 0..n {
        out.push((format!("mutated-{k:02}"), vec![0, 0, 0, 1, 3, k, 1, 2, 3, 4, 0, k]));
    }
    out
}
