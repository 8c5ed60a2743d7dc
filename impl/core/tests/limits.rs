//! Every named limit, at the limit and one past it: what is accepted, what is
//! refused, and that a refusal is an error the sender sees while nothing
//! already stored is dropped.
//!
//! Limits covered: `FRAME_LEN_MAX`, `CIPHERTEXT_LEN_MAX`, `MEDIA_CHUNK_LEN_MAX`,
//! `BATCH_LEN_MAX`, `MAILBOX_DEPTH_MAX`, `GROUP_MEMBERS_MAX`,
//! `ONE_TIME_PREKEYS_STORED_MAX`, `BUNDLE_FETCH_BURST` /
//! `BUNDLE_FETCHES_PER_MINUTE_MAX`, `FRAMES_BURST_MAX` /
//! `FRAMES_PER_SECOND_MAX`, `CONNECTION_ERRORS_MAX`, `AUTH_TIMEOUT_MS`,
//! `PRESENCE_PUSH_INTERVAL_MS` (presence updates per subscriber),
//! `CONTACTS_MAX`, `SUBSCRIPTIONS_MAX`, `DEVICES_PER_USER_MAX` (and with one
//! connection per device, connections per user), and the crypto limits
//! `ratchet::MAX_SKIP` and `sender_key::MAX_GAP`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;

use bluetick_core::ids::{BlobId, DeviceAddress, DeviceId, GroupId, MessageId, UserId};
use bluetick_core::server::keys::{BUNDLE_FETCH_BURST, ONE_TIME_PREKEYS_STORED_MAX, RATE_PERIOD_MS};
use bluetick_core::server::machine::{
    AUTH_TIMEOUT_MS, BLOB_LEN_MAX, CONNECTION_ERRORS_MAX, DEVICES_PER_USER_MAX, FRAMES_BURST_MAX,
    FRAMES_PER_SECOND_MAX, GROUP_MEMBERS_MAX,
};
use bluetick_core::server::mailbox::MAILBOX_DEPTH_MAX;
use bluetick_core::server::presence::{CONTACTS_MAX, PRESENCE_PUSH_INTERVAL_MS, SUBSCRIPTIONS_MAX};
use bluetick_core::server::{ConnId, Server, ServerConfig, ServerOutput};
use bluetick_core::store::MemoryStore;
use bluetick_core::wire::{
    self, ClientFrame, EnvelopeKind, ErrorCode, OneTimePreKeyUpload, ServerFrame, SignedGroupChange,
    SignedPreKeyUpload, Visibility, BATCH_LEN_MAX, CIPHERTEXT_LEN_MAX, FRAME_LEN_MAX, MEDIA_CHUNK_LEN_MAX,
};
use bluetick_crypto::ratchet::{RatchetError, Session, MAX_SKIP};
use bluetick_crypto::sender_key::{self, OwnSenderKey, SenderKeyError, SenderKeyRecord, MAX_GAP};
use bluetick_crypto::xeddsa::Signature;
use bluetick_crypto::{CipherSuite, IdentityKeyPair, KeyPair, SecretKey};
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;

struct Device {
    addr: DeviceAddress,
    id: IdentityKeyPair,
    conn: ConnId,
}

/// A server driven frame by frame, with a clock tests move by hand.
struct Rig {
    server: Server,
    store: MemoryStore,
    now: u64,
    rng: ChaCha20Rng,
    next_conn: u64,
    inbox: BTreeMap<ConnId, Vec<ServerFrame>>,
    closed: Vec<ConnId>,
}

impl Rig {
    fn new() -> Self {
        Self::with(ServerConfig::default())
    }

    fn with(config: ServerConfig) -> Self {
        Rig {
            server: Server::new(config, 1),
            store: MemoryStore::new(),
            now: 1_000_000,
            rng: ChaCha20Rng::seed_from_u64(2),
            next_conn: 1,
            inbox: BTreeMap::new(),
            closed: Vec::new(),
        }
    }

    fn drain(&mut self) {
        while let Some(o) = self.server.poll_output() {
            match o {
                ServerOutput::Frame { conn, frame } => self.inbox.entry(conn).or_default().push(frame),
                ServerOutput::Close { conn, .. } => self.closed.push(conn),
            }
        }
    }

    fn frames_for(&mut self, conn: ConnId) -> Vec<ServerFrame> {
        self.drain();
        self.inbox.remove(&conn).unwrap_or_default()
    }

    fn bytes(&mut self, conn: ConnId, bytes: &[u8]) -> Vec<ServerFrame> {
        self.server.handle_bytes(conn, bytes, self.now, &mut self.store);
        self.frames_for(conn)
    }

    fn send(&mut self, conn: ConnId, f: &ClientFrame) -> Vec<ServerFrame> {
        self.bytes(conn, &wire::encode(f))
    }

    fn challenge(&mut self) -> (ConnId, [u8; 32]) {
        let conn = ConnId(self.next_conn);
        self.next_conn += 1;
        self.server.handle_connect(conn, self.now);
        match self.frames_for(conn).as_slice() {
            [ServerFrame::Challenge { nonce }] => (conn, *nonce),
            other => panic!("{other:?}"),
        }
    }

    /// Registers `name`/`device` with `id` (a fresh key if `None`), with a
    /// signed prekey and no one-time prekeys.
    fn register_as(
        &mut self,
        name: &str,
        device: u32,
        id: Option<IdentityKeyPair>,
    ) -> Result<Device, Vec<ServerFrame>> {
        let id = id.unwrap_or_else(|| IdentityKeyPair::generate(&mut self.rng));
        let (conn, nonce) = self.challenge();
        let addr = DeviceAddress::new(UserId::new(name).unwrap(), DeviceId(device));
        let proof = id.sign(&wire::auth_message(&nonce, &addr.user, addr.device), &mut self.rng);
        let frame = ClientFrame::Register {
            version: wire::PROTOCOL_VERSION,
            user: addr.user.clone(),
            device: addr.device,
            identity_key: id.public(),
            proof,
        };
        let got = self.send(conn, &frame);
        if !matches!(got.first(), Some(ServerFrame::Welcome { .. })) {
            return Err(got);
        }
        // What the login handed out (deliveries) stays for the test to read.
        self.inbox.entry(conn).or_default().extend(got.into_iter().skip(1));
        let d = Device { addr, id, conn };
        let up = self.upload(&d, vec![]);
        self.server.handle_bytes(d.conn, &wire::encode(&up), self.now, &mut self.store);
        self.drain();
        Ok(d)
    }

    fn register(&mut self, name: &str) -> Device {
        self.register_as(name, 1, None).unwrap()
    }

    fn upload(&mut self, d: &Device, one_time: Vec<OneTimePreKeyUpload>) -> ClientFrame {
        let spk = KeyPair::generate(&mut self.rng);
        let signature = d.id.sign(&CipherSuite::BluetickV1.encode_public(&spk.public()), &mut self.rng);
        ClientFrame::UploadPreKeys {
            signed_prekey: SignedPreKeyUpload { id: 1, key: spk.public(), signature },
            one_time,
        }
    }

    fn offline(&mut self, d: &Device) {
        self.server.handle_disconnect(d.conn, self.now, &mut self.store);
        self.drain();
    }

    fn advance(&mut self, ms: u64) {
        self.now += ms;
        if self.server.poll_timeout().is_some_and(|t| t <= self.now) {
            self.server.handle_timeout(self.now, &mut self.store);
        }
        self.drain();
    }
}

fn user(name: &str) -> UserId {
    UserId::new(name).unwrap()
}

fn code(got: &[ServerFrame]) -> Option<ErrorCode> {
    match got {
        [ServerFrame::Error { code, .. }] => Some(*code),
        _ => None,
    }
}

fn text(to: &Device, n: u32, len: usize) -> ClientFrame {
    let mut id = [0u8; 16];
    id[..4].copy_from_slice(&n.to_be_bytes());
    ClientFrame::Send {
        message_id: MessageId(id),
        to: to.addr.clone(),
        kind: EnvelopeKind::Message,
        ciphertext: vec![7; len],
    }
}

/// A `MediaUpload` whose encoding is exactly `len` bytes.
fn media_frame_of_len(len: usize) -> Vec<u8> {
    let frame = |chunk: usize| {
        wire::encode(&ClientFrame::MediaUpload { blob: BlobId([1; 16]), offset: 0, chunk: vec![0; chunk], last: true })
    };
    let overhead = frame(len).len() - len;
    let bytes = frame(len - overhead);
    assert_eq!(bytes.len(), len);
    bytes
}

#[test]
fn frame_len_max_is_decoded_at_the_limit_and_refused_unread_past_it() {
    let mut r = Rig::new();
    let alice = r.register("alice");
    // At the limit: decoded; its chunk is then too large for its own field,
    // which is refused without closing the connection.
    let got = r.bytes(alice.conn, &media_frame_of_len(FRAME_LEN_MAX));
    assert_eq!(code(&got), Some(ErrorCode::TooLarge), "{got:?}");
    assert!(r.server.is_online(&alice.addr), "a frame at the limit does not close the connection");
    // One past: refused before decoding, and the connection is closed.
    let got = r.bytes(alice.conn, &media_frame_of_len(FRAME_LEN_MAX + 1));
    assert_eq!(code(&got), Some(ErrorCode::TooLarge), "{got:?}");
    assert!(r.closed.contains(&alice.conn));
    assert!(!r.server.is_online(&alice.addr));
}

#[test]
fn ciphertext_and_media_chunk_limits_accept_the_limit_and_refuse_one_more() {
    let mut r = Rig::new();
    let alice = r.register("alice");
    let bob = r.register("bob");
    assert!(matches!(
        r.send(alice.conn, &text(&bob, 1, CIPHERTEXT_LEN_MAX)).as_slice(),
        [ServerFrame::ServerAck { .. }]
    ));
    assert_eq!(code(&r.send(alice.conn, &text(&bob, 2, CIPHERTEXT_LEN_MAX + 1))), Some(ErrorCode::TooLarge));
    let chunk = |blob: u8, len: usize| ClientFrame::MediaUpload {
        blob: BlobId([blob; 16]),
        offset: 0,
        chunk: vec![1; len],
        last: true,
    };
    assert!(matches!(r.send(alice.conn, &chunk(1, MEDIA_CHUNK_LEN_MAX)).as_slice(), [ServerFrame::MediaStored { .. }]));
    assert_eq!(code(&r.send(alice.conn, &chunk(2, MEDIA_CHUNK_LEN_MAX + 1))), Some(ErrorCode::TooLarge));
}

#[test]
fn batch_len_max_applies_to_every_batched_field() {
    let mut r = Rig::new();
    let alice = r.register("alice");
    let _bob = r.register("bob");
    let acks = |n: usize| ClientFrame::DeliveryAck { seqs: (0..n as u64).collect() };
    assert_eq!(r.send(alice.conn, &acks(BATCH_LEN_MAX)), vec![]);
    assert_eq!(code(&r.send(alice.conn, &acks(BATCH_LEN_MAX + 1))), Some(ErrorCode::TooLarge));
    let receipt = |n: usize| ClientFrame::Receipt {
        id: MessageId([n as u8; 16]),
        to: user("bob"),
        kind: wire::ReceiptKind::Read,
        message_ids: vec![MessageId([3; 16]); n],
    };
    assert!(matches!(r.send(alice.conn, &receipt(BATCH_LEN_MAX)).as_slice(), [ServerFrame::ServerAck { .. }]));
    assert_eq!(code(&r.send(alice.conn, &receipt(BATCH_LEN_MAX + 1))), Some(ErrorCode::TooLarge));
    let names = |n: usize| (0..n).map(|i| user(&format!("u{i}"))).collect::<Vec<_>>();
    assert_eq!(SUBSCRIPTIONS_MAX, BATCH_LEN_MAX);
    let got = r.send(alice.conn, &ClientFrame::PresenceSubscribe { users: names(SUBSCRIPTIONS_MAX) });
    assert_eq!(got.len(), SUBSCRIPTIONS_MAX, "one presence reply per user");
    assert_eq!(
        code(&r.send(alice.conn, &ClientFrame::PresenceSubscribe { users: names(SUBSCRIPTIONS_MAX + 1) })),
        Some(ErrorCode::TooLarge)
    );
}

#[test]
fn a_full_mailbox_refuses_new_sends_visibly_and_keeps_every_stored_one() {
    let mut r = Rig::new();
    let alice = r.register("alice");
    let bob = r.register("bob");
    r.offline(&bob);
    // Under the frame rate: 200 frames a second.
    let step = 1_000 / u64::from(FRAMES_PER_SECOND_MAX);
    for n in 0..MAILBOX_DEPTH_MAX as u32 {
        let got = r.send(alice.conn, &text(&bob, n, 16));
        assert!(matches!(got.as_slice(), [ServerFrame::ServerAck { .. }]), "send {n}: {got:?}");
        r.now += step;
    }
    assert_eq!(r.server.mailbox_len(&bob.addr), MAILBOX_DEPTH_MAX);
    let got = r.send(alice.conn, &text(&bob, MAILBOX_DEPTH_MAX as u32, 16));
    assert_eq!(code(&got), Some(ErrorCode::LimitExceeded), "the sender sees the refusal: {got:?}");
    assert_eq!(r.server.mailbox_len(&bob.addr), MAILBOX_DEPTH_MAX, "nothing stored was dropped");
    // A retry of a stored message is still acked (idempotent), not refused.
    assert!(matches!(r.send(alice.conn, &text(&bob, 0, 16)).as_slice(), [ServerFrame::ServerAck { .. }]));
    // Bob comes back and drains one window; each ack makes room again.
    let bob2 = r.register_as("bob", 1, Some(bob.id.clone())).unwrap();
    let seqs: Vec<u64> = r
        .frames_for(bob2.conn)
        .iter()
        .filter_map(|f| match f {
            ServerFrame::Deliver { seq, .. } => Some(*seq),
            _ => None,
        })
        .collect();
    assert_eq!(seqs.first(), Some(&1), "oldest first: nothing was dropped to make room");
    r.send(bob2.conn, &ClientFrame::DeliveryAck { seqs: vec![seqs[0]] });
    assert!(matches!(
        r.send(alice.conn, &text(&bob, MAILBOX_DEPTH_MAX as u32, 16)).as_slice(),
        [ServerFrame::ServerAck { .. }]
    ));
}

fn signed(admin: &Device, group: GroupId, version: u64, add: Vec<UserId>, rng: &mut ChaCha20Rng) -> ClientFrame {
    let mut change = SignedGroupChange {
        group,
        version,
        admin: admin.addr.user.clone(),
        add,
        remove: vec![],
        signature: Signature([0; 64]),
    };
    change.signature = admin.id.sign(&change.signed_bytes(), rng);
    ClientFrame::GroupChange { change }
}

#[test]
fn a_group_holds_group_members_max_and_not_one_more() {
    let mut r = Rig::new();
    let admin = r.register("admin");
    let mut members = Vec::new();
    for i in 0..GROUP_MEMBERS_MAX {
        let d = r.register(&format!("m{i}"));
        r.offline(&d);
        members.push(d.addr.user);
        r.now += 5;
    }
    let g = GroupId([5; 16]);
    let mut rng = ChaCha20Rng::seed_from_u64(6);
    // An add list longer than a group could ever be is refused unread.
    let too_long = signed(&admin, g, 1, members.clone(), &mut rng);
    assert_eq!(code(&r.send(admin.conn, &too_long)), Some(ErrorCode::LimitExceeded));
    // Admin + 1,023 members: exactly the limit.
    let at_limit = signed(&admin, g, 1, members[..GROUP_MEMBERS_MAX - 1].to_vec(), &mut rng);
    assert!(matches!(r.send(admin.conn, &at_limit).as_slice(), [ServerFrame::GroupChangeAccepted { version: 1, .. }]));
    assert_eq!(r.server.group(&g).unwrap().members.len(), GROUP_MEMBERS_MAX);
    let one_more = signed(&admin, g, 2, vec![members[GROUP_MEMBERS_MAX - 1].clone()], &mut rng);
    assert_eq!(code(&r.send(admin.conn, &one_more)), Some(ErrorCode::LimitExceeded));
    assert_eq!(r.server.group(&g).unwrap().version, 1, "refused whole");
    // More than GROUP_MEMBERS_MAX names in one list: refused before anything else.
    let mut names = members.clone();
    names.push(user("admin"));
    let oversize = signed(&admin, GroupId([6; 16]), 1, names, &mut rng);
    assert_eq!(code(&r.send(admin.conn, &oversize)), Some(ErrorCode::TooLarge));
}

#[test]
fn one_time_prekey_stock_holds_its_limit_and_refuses_an_upload_past_it_whole() {
    let mut r = Rig::new();
    let bob = r.register("bob");
    let keys = |r: &mut Rig, ids: std::ops::Range<u32>| {
        ids.map(|id| OneTimePreKeyUpload { id, key: KeyPair::generate(&mut r.rng).public() }).collect::<Vec<_>>()
    };
    let first = keys(&mut r, 1..ONE_TIME_PREKEYS_STORED_MAX as u32 + 1);
    let up = r.upload(&bob, first);
    assert_eq!(r.send(bob.conn, &up), vec![]);
    assert_eq!(r.server.keys().one_time_count(&bob.addr), ONE_TIME_PREKEYS_STORED_MAX);
    let extra = keys(&mut r, 1_000..1_001);
    let up = r.upload(&bob, extra);
    assert_eq!(code(&r.send(bob.conn, &up)), Some(ErrorCode::LimitExceeded));
    assert_eq!(r.server.keys().one_time_count(&bob.addr), ONE_TIME_PREKEYS_STORED_MAX);
}

#[test]
fn bundle_fetches_allow_a_burst_then_refill_at_the_rate() {
    let mut r = Rig::new();
    let alice = r.register("alice");
    let bob = r.register("bob");
    let fetch = |request| ClientFrame::FetchBundle { request, owner: bob.addr.clone() };
    for request in 0..BUNDLE_FETCH_BURST {
        assert!(
            matches!(r.send(alice.conn, &fetch(request)).as_slice(), [ServerFrame::Bundle { .. }]),
            "fetch {request}"
        );
    }
    assert_eq!(code(&r.send(alice.conn, &fetch(99))), Some(ErrorCode::LimitExceeded));
    let refill = RATE_PERIOD_MS / u64::from(BUNDLE_FETCH_BURST);
    r.now += refill - 1;
    assert_eq!(code(&r.send(alice.conn, &fetch(100))), Some(ErrorCode::LimitExceeded));
    r.now += 1;
    assert!(matches!(r.send(alice.conn, &fetch(101)).as_slice(), [ServerFrame::Bundle { .. }]));
}

#[test]
fn the_frame_rate_allows_a_burst_and_a_refused_flood_closes_the_connection() {
    let mut r = Rig::new();
    let alice = r.register("alice");
    let bob = r.register("bob");
    // Registration and upload took two tokens of the burst.
    for n in 2..FRAMES_BURST_MAX {
        assert!(
            matches!(
                r.send(alice.conn, &ClientFrame::Ping { nonce: u64::from(n) }).as_slice(),
                [ServerFrame::Pong { .. }]
            ),
            "ping {n}"
        );
    }
    assert_eq!(code(&r.send(alice.conn, &ClientFrame::Ping { nonce: 0 })), Some(ErrorCode::LimitExceeded));
    // Refusals count towards CONNECTION_ERRORS_MAX: the flood ends in a close,
    // and the server forgets the connection itself.
    for _ in 1..CONNECTION_ERRORS_MAX {
        r.send(alice.conn, &ClientFrame::Ping { nonce: 0 });
    }
    assert!(r.closed.contains(&alice.conn), "closed after {CONNECTION_ERRORS_MAX} refusals");
    assert!(!r.server.is_online(&alice.addr), "a connection the server closed is not left online");
    assert!(r.server.is_online(&bob.addr));
}

#[test]
fn connection_errors_max_refusals_close_the_connection_not_one_fewer() {
    let mut r = Rig::new();
    let alice = r.register("alice");
    for _ in 1..CONNECTION_ERRORS_MAX {
        assert_eq!(code(&r.bytes(alice.conn, &[0xff])), Some(ErrorCode::Malformed));
    }
    assert!(!r.closed.contains(&alice.conn));
    assert!(r.server.is_online(&alice.addr));
    r.bytes(alice.conn, &[0xff]);
    assert!(r.closed.contains(&alice.conn));
    assert!(!r.server.is_online(&alice.addr));
}

#[test]
fn an_unauthenticated_connection_lives_auth_timeout_ms_and_no_longer() {
    let mut r = Rig::new();
    let (conn, _) = r.challenge();
    r.advance(AUTH_TIMEOUT_MS - 1);
    assert!(!r.closed.contains(&conn));
    r.advance(1);
    assert!(r.closed.contains(&conn));
}

#[test]
fn presence_pushes_to_a_subscriber_are_at_most_one_per_interval() {
    let mut r = Rig::new();
    let alice = r.register("alice");
    let bob = r.register("bob");
    r.send(alice.conn, &ClientFrame::PresenceSubscribe { users: vec![user("bob")] });
    // Bob flaps every 100 ms for 20 s: alice gets at most one push per
    // interval (plus the one that may be due at the start).
    let mut bob = bob;
    let mut pushes = 0;
    let flaps_ms = 20_000;
    let mut t = 0;
    while t < flaps_ms {
        r.offline(&bob);
        r.advance(50);
        bob = r.register_as("bob", 1, Some(bob.id.clone())).unwrap();
        r.advance(50);
        t += 100;
        pushes += r.frames_for(alice.conn).iter().filter(|f| matches!(f, ServerFrame::Presence { .. })).count();
    }
    let bound = (flaps_ms / PRESENCE_PUSH_INTERVAL_MS + 1) as usize;
    assert!(pushes <= bound, "{pushes} pushes in {flaps_ms} ms, at most {bound} allowed");
    assert!(pushes >= 1, "the subscriber does hear of the changes");
}

#[test]
fn a_contact_list_holds_contacts_max_and_not_one_more() {
    let mut r = Rig::new();
    let alice = r.register("alice");
    let names = |n: usize| (0..n).map(|i| user(&format!("c{i}"))).collect::<Vec<_>>();
    let at = ClientFrame::PresencePrivacy { visibility: Visibility::Contacts, contacts: names(CONTACTS_MAX) };
    assert_eq!(r.send(alice.conn, &at), vec![]);
    let past = ClientFrame::PresencePrivacy { visibility: Visibility::Contacts, contacts: names(CONTACTS_MAX + 1) };
    assert_eq!(code(&r.send(alice.conn, &past)), Some(ErrorCode::LimitExceeded));
}

#[test]
fn an_account_holds_devices_per_user_max_devices_with_one_connection_each() {
    let mut r = Rig::new();
    let first = r.register("alice");
    let mut devices = vec![first];
    for d in 2..=DEVICES_PER_USER_MAX as u32 {
        let id = devices[0].id.clone();
        devices.push(r.register_as("alice", d, Some(id)).unwrap());
    }
    let id = devices[0].id.clone();
    let refused = r.register_as("alice", DEVICES_PER_USER_MAX as u32 + 1, Some(id.clone())).err().unwrap();
    assert_eq!(code(&refused), Some(ErrorCode::LimitExceeded), "{refused:?}");
    // A known device logs in again.
    let again = r.register_as("alice", 1, Some(id)).unwrap();
    // One connection per device: the new one replaced the old.
    assert!(r.closed.contains(&devices[0].conn));
    assert!(r.server.is_online(&again.addr));
}

fn sessions(seed: u64) -> (Session, Session, ChaCha20Rng) {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let shared = SecretKey::generate(&mut rng);
    let spk = KeyPair::generate(&mut rng);
    let alice = Session::initiator(CipherSuite::BluetickV1, &shared, b"ad".to_vec(), spk.public(), &mut rng).unwrap();
    let bob = Session::responder(CipherSuite::BluetickV1, &shared, b"ad".to_vec(), spk);
    (alice, bob, rng)
}

#[test]
fn a_ratchet_message_may_skip_max_skip_keys_and_not_one_more() {
    let (mut alice, mut bob, mut rng) = sessions(1);
    let messages: Vec<_> = (0..=MAX_SKIP + 1).map(|i| alice.encrypt(format!("{i}").as_bytes()).unwrap()).collect();
    // Message MAX_SKIP + 1 first: it would skip MAX_SKIP + 1 keys.
    let err = bob.decrypt(&messages[MAX_SKIP as usize + 1], &mut rng).unwrap_err();
    assert!(matches!(err, RatchetError::TooManySkipped { .. }), "{err:?}");
    // Message MAX_SKIP skips exactly MAX_SKIP keys, which are kept.
    assert_eq!(
        bob.decrypt(&messages[MAX_SKIP as usize], &mut rng).unwrap().as_slice(),
        format!("{MAX_SKIP}").as_bytes()
    );
    assert_eq!(bob.skipped_key_count(), MAX_SKIP as usize);
    assert_eq!(bob.decrypt(&messages[0], &mut rng).unwrap().as_slice(), b"0");
}

#[test]
fn a_group_message_may_run_max_gap_ahead_and_not_one_more() {
    let mut rng = ChaCha20Rng::seed_from_u64(2);
    let mut sender = OwnSenderKey::new(CipherSuite::BluetickV1, sender_key::GroupId([1; 16]), &mut rng);
    let mut record = SenderKeyRecord::from_distribution(CipherSuite::BluetickV1, &sender.distribution()).unwrap();
    let messages: Vec<_> = (0..=MAX_GAP + 1).map(|i| sender.encrypt(format!("{i}").as_bytes()).unwrap()).collect();
    let err = record.decrypt(&messages[MAX_GAP as usize + 1]).unwrap_err();
    assert!(matches!(err, SenderKeyError::TooFarAhead { .. }), "{err:?}");
    assert!(record.decrypt(&messages[MAX_GAP as usize]).is_ok());
}

#[test]
fn the_frame_rate_is_a_setting() {
    let config = ServerConfig { frames_per_second_max: 1_000, frames_burst_max: 2_000, ..ServerConfig::default() };
    let mut r = Rig::with(config);
    let alice = r.register("alice");
    // Far past the default burst, within the configured one.
    for n in 2..2_000u32 {
        assert!(
            matches!(
                r.send(alice.conn, &ClientFrame::Ping { nonce: u64::from(n) }).as_slice(),
                [ServerFrame::Pong { .. }]
            ),
            "ping {n}"
        );
    }
    assert_eq!(code(&r.send(alice.conn, &ClientFrame::Ping { nonce: 0 })), Some(ErrorCode::LimitExceeded));
    // It refills at the configured rate: 100 ms buys 100 frames, not 20.
    r.now += 100;
    for n in 0..100u64 {
        assert!(matches!(r.send(alice.conn, &ClientFrame::Ping { nonce: n }).as_slice(), [ServerFrame::Pong { .. }]));
    }
    assert_eq!(code(&r.send(alice.conn, &ClientFrame::Ping { nonce: 0 })), Some(ErrorCode::LimitExceeded));
}

/// A blob may reach [`BLOB_LEN_MAX`] exactly, in full-size chunks, and not
/// one byte more; a chunk past it is refused and the blob stays as it was.
#[test]
fn a_blob_may_grow_to_exactly_blob_len_max() {
    let mut r = Rig::new();
    let alice = r.register("alice");
    let blob = BlobId([9; 16]);
    let chunks = BLOB_LEN_MAX / MEDIA_CHUNK_LEN_MAX as u64;
    assert_eq!(chunks * MEDIA_CHUNK_LEN_MAX as u64, BLOB_LEN_MAX, "the limit is a whole number of chunks");
    for i in 0..chunks {
        // Paced under the per-connection frame rate.
        r.now += 10;
        let frame = ClientFrame::MediaUpload {
            blob,
            offset: i * MEDIA_CHUNK_LEN_MAX as u64,
            chunk: vec![7; MEDIA_CHUNK_LEN_MAX],
            last: false,
        };
        let got = r.send(alice.conn, &frame);
        assert!(got.is_empty(), "chunk {i} of {chunks}: {got:?}");
    }
    r.now += 10;
    let one_more = ClientFrame::MediaUpload { blob, offset: BLOB_LEN_MAX, chunk: vec![7], last: true };
    assert_eq!(code(&r.send(alice.conn, &one_more)), Some(ErrorCode::TooLarge));
    r.now += 10;
    let finish = ClientFrame::MediaUpload { blob, offset: BLOB_LEN_MAX, chunk: vec![], last: true };
    assert!(matches!(r.send(alice.conn, &finish).as_slice(), [ServerFrame::MediaStored { .. }]));
}
