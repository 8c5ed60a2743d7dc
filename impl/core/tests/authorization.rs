//! Authorization of the sans-IO server: what an authenticated but hostile
//! user (mallory), a plain member, or an unauthenticated connection cannot do.
//!
//! Every test runs on the fuzz harness's rig (`impl/fuzz/src/server_harness.rs`,
//! included by path): alice, bob, carol and mallory registered with real keys,
//! alice's group (alice, bob, carol), mallory's group (mallory, bob), mail
//! queued for bob and carol, bob's presence visible to his contact alice
//! only, carol's to nobody, and alice's blobs. Each frame fed through the rig
//! is also checked against the harness invariants (a refused frame changes
//! nothing, nothing of another user is touched, and so on), so a test fails
//! on a side effect even where it does not look for one.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../../fuzz/src/bytes.rs"]
mod bytes;
#[allow(dead_code)]
#[path = "../../fuzz/src/server_harness.rs"]
mod server_harness;

use bluetick_core::ids::{BlobId, DeviceAddress, DeviceId, GroupId, MessageId};
use bluetick_core::server::keys::{BUNDLE_FETCH_BURST, RATE_PERIOD_MS};
use bluetick_core::server::machine::AUTH_TIMEOUT_MS;
use bluetick_core::server::presence::PresenceBug;
use bluetick_core::server::{ConnId, ServerBugs, ServerConfig, ServerOutput};
use bluetick_core::wire::{
    self, ClientFrame, Delivery, EnvelopeKind, ErrorCode, LastSeen, OneTimePreKeyUpload, ReceiptKind, ServerFrame,
    SignedGroupChange, SignedPreKeyUpload, Visibility, PROTOCOL_VERSION,
};
use bluetick_crypto::xeddsa::Signature;
use bluetick_crypto::{CipherSuite, KeyPair};
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;

use server_harness::{addr, user, Rig, ALICE_BLOB, ALICE_GROUP, ALICE_OPEN_BLOB, MALLORY_GROUP};

fn frames(out: &[ServerOutput], conn: ConnId) -> Vec<ServerFrame> {
    out.iter()
        .filter_map(|o| match o {
            ServerOutput::Frame { conn: c, frame } if *c == conn => Some(frame.clone()),
            _ => None,
        })
        .collect()
}

fn send(rig: &mut Rig, conn: ConnId, frame: &ClientFrame) -> Vec<ServerFrame> {
    let out = rig.feed(conn, &wire::encode(frame));
    frames(&out, conn)
}

fn error_code(got: &[ServerFrame]) -> Option<ErrorCode> {
    match got {
        [ServerFrame::Error { code, .. }] => Some(*code),
        _ => None,
    }
}

fn conn(rig: &Rig, name: &str) -> ConnId {
    rig.conn_of(&addr(name)).unwrap_or_else(|| panic!("{name} is not online"))
}

fn signed_change(rig: &Rig, signer: &str, change: SignedGroupChange) -> SignedGroupChange {
    let mut rng = ChaCha20Rng::seed_from_u64(11);
    let signature = rig.identity(&addr(signer)).sign(&change.signed_bytes(), &mut rng);
    SignedGroupChange { signature, ..change }
}

fn change(group: GroupId, version: u64, admin: &str, add: &[&str], remove: &[&str]) -> SignedGroupChange {
    SignedGroupChange {
        group,
        version,
        admin: user(admin),
        add: add.iter().map(|u| user(u)).collect(),
        remove: remove.iter().map(|u| user(u)).collect(),
        signature: Signature([0; 64]),
    }
}

#[test]
fn a_device_receives_only_its_own_mailbox_and_cannot_ack_anothers() {
    let mut rig = Rig::start(ServerConfig::default());
    let bob_before = rig.server.mailbox_len(&addr("bob"));
    let carol_before = rig.server.mailbox_len(&addr("carol"));
    assert!(bob_before > 0 && carol_before > 0, "the rig queues mail for bob and carol");
    // Mallory's login handed out only what was addressed to mallory (nothing):
    // there is no frame to fetch another device's mailbox.
    let mallory = conn(&rig, "mallory");
    // Acking every plausible seq of bob's and carol's mailboxes deletes nothing.
    let got = send(&mut rig, mallory, &ClientFrame::DeliveryAck { seqs: (0..64).collect() });
    assert!(got.is_empty(), "{got:?}");
    assert_eq!(rig.server.mailbox_len(&addr("bob")), bob_before);
    assert_eq!(rig.server.mailbox_len(&addr("carol")), carol_before);
    // Logging in as bob takes bob's key: mallory's own key is refused.
    let pending = rig.connect(None);
    let nonce = rig.nonce(pending).unwrap();
    let mut rng = ChaCha20Rng::seed_from_u64(3);
    let proof = rig.identity(&addr("mallory")).sign(&wire::auth_message(&nonce, &user("bob"), DeviceId(1)), &mut rng);
    let got = send(
        &mut rig,
        pending,
        &ClientFrame::Authenticate { version: PROTOCOL_VERSION, user: user("bob"), device: DeviceId(1), proof },
    );
    assert_eq!(error_code(&got), Some(ErrorCode::AuthFailed), "{got:?}");
}

#[test]
fn the_sender_is_stamped_from_the_connection_never_taken_from_the_frame() {
    let mut rig = Rig::start(ServerConfig::default());
    let (mallory, bob) = (conn(&rig, "mallory"), conn(&rig, "bob"));
    let id = MessageId([0x77; 16]);
    let frame =
        ClientFrame::Send { message_id: id, to: addr("bob"), kind: EnvelopeKind::Message, ciphertext: vec![1; 8] };
    let out = rig.feed(mallory, &wire::encode(&frame));
    let to_bob = frames(&out, bob);
    let from = to_bob.iter().find_map(|f| match f {
        ServerFrame::Deliver { item: Delivery::Envelope(e), .. } if e.message_id == id => Some(e.from.clone()),
        _ => None,
    });
    assert_eq!(from, Some(addr("mallory")));
    // Receipts too: mallory's "Read" for alice's message reaches alice as from mallory.
    let alice = conn(&rig, "alice");
    let receipt = ClientFrame::Receipt {
        id: MessageId([0x78; 16]),
        to: user("alice"),
        kind: ReceiptKind::Read,
        message_ids: vec![MessageId([0xa1; 16])],
    };
    let out = rig.feed(mallory, &wire::encode(&receipt));
    let to_alice = frames(&out, alice);
    assert!(
        to_alice.iter().any(|f| matches!(f, ServerFrame::Deliver { item: Delivery::Receipt { from, .. }, .. } if *from == addr("mallory"))),
        "{to_alice:?}"
    );
    // A logged-in connection cannot switch to another account.
    let mut rng = ChaCha20Rng::seed_from_u64(4);
    let proof = rig.identity(&addr("alice")).sign(b"anything", &mut rng);
    let got = send(
        &mut rig,
        mallory,
        &ClientFrame::Authenticate { version: PROTOCOL_VERSION, user: user("alice"), device: DeviceId(1), proof },
    );
    assert_eq!(error_code(&got), Some(ErrorCode::Malformed), "{got:?}");
}

#[test]
fn a_non_member_cannot_post_to_a_group() {
    let mut rig = Rig::start(ServerConfig::default());
    let mallory = conn(&rig, "mallory");
    let before = rig.server.mailbox_total();
    let frame =
        ClientFrame::GroupSend { message_id: MessageId([0x79; 16]), group: ALICE_GROUP, ciphertext: vec![2; 100] };
    assert_eq!(error_code(&send(&mut rig, mallory, &frame)), Some(ErrorCode::NotMember));
    let unknown =
        ClientFrame::GroupSend { message_id: MessageId([0x7a; 16]), group: GroupId([0x33; 16]), ciphertext: vec![2] };
    assert_eq!(error_code(&send(&mut rig, mallory, &unknown)), Some(ErrorCode::NotMember));
    assert_eq!(rig.server.mailbox_total(), before);
    // Control: a member can.
    let bob = conn(&rig, "bob");
    let frame =
        ClientFrame::GroupSend { message_id: MessageId([0x7b; 16]), group: ALICE_GROUP, ciphertext: vec![2; 100] };
    assert!(matches!(send(&mut rig, bob, &frame).as_slice(), [ServerFrame::ServerAck { .. }]));
}

#[test]
fn a_group_changes_only_with_its_admins_signature() {
    let mut rig = Rig::start(ServerConfig::default());
    let (mallory, bob, alice) = (conn(&rig, "mallory"), conn(&rig, "bob"), conn(&rig, "alice"));
    let before = rig.server.group(&ALICE_GROUP).cloned();
    // Mallory names alice as the admin: only the admin may send her change.
    let forged = signed_change(&rig, "mallory", change(ALICE_GROUP, 2, "alice", &["mallory"], &[]));
    let got = send(&mut rig, mallory, &ClientFrame::GroupChange { change: forged });
    assert_eq!(error_code(&got), Some(ErrorCode::BadSignature), "{got:?}");
    // Mallory as "admin" of alice's group: not an admin there.
    let own = signed_change(&rig, "mallory", change(ALICE_GROUP, 2, "mallory", &["mallory"], &[]));
    assert_eq!(
        error_code(&send(&mut rig, mallory, &ClientFrame::GroupChange { change: own })),
        Some(ErrorCode::NotMember)
    );
    // Bob is a member, not an admin.
    let by_bob = signed_change(&rig, "bob", change(ALICE_GROUP, 2, "bob", &["mallory"], &[]));
    assert_eq!(
        error_code(&send(&mut rig, bob, &ClientFrame::GroupChange { change: by_bob })),
        Some(ErrorCode::NotMember)
    );
    // Alice's own connection with a signature that is not hers.
    let unsigned = change(ALICE_GROUP, 2, "alice", &["mallory"], &[]);
    assert_eq!(
        error_code(&send(&mut rig, alice, &ClientFrame::GroupChange { change: unsigned.clone() })),
        Some(ErrorCode::BadSignature)
    );
    let by_mallory_key = signed_change(&rig, "mallory", unsigned.clone());
    assert_eq!(
        error_code(&send(&mut rig, alice, &ClientFrame::GroupChange { change: by_mallory_key })),
        Some(ErrorCode::BadSignature)
    );
    assert_eq!(rig.server.group(&ALICE_GROUP).cloned(), before, "nothing changed");
    // Control: alice's signature is accepted.
    let good = signed_change(&rig, "alice", unsigned);
    let got = send(&mut rig, alice, &ClientFrame::GroupChange { change: good });
    assert!(matches!(got.as_slice(), [ServerFrame::GroupChangeAccepted { version: 2, .. }]), "{got:?}");
    assert!(rig.server.group(&ALICE_GROUP).unwrap().members.contains(&user("mallory")));
}

#[test]
fn the_signature_check_is_what_stops_an_unsigned_change() {
    // The same unsigned change is accepted by a server that skips the check
    // (the "server-controlled membership" design): the refusal above is the
    // signature check's doing.
    let bugs = ServerBugs { unsigned_group_changes: true, ..ServerBugs::default() };
    let mut rig = Rig::start(ServerConfig { bugs, ..ServerConfig::default() });
    let alice = conn(&rig, "alice");
    let unsigned = change(ALICE_GROUP, 2, "alice", &["mallory"], &[]);
    let got = send(&mut rig, alice, &ClientFrame::GroupChange { change: unsigned });
    assert!(matches!(got.as_slice(), [ServerFrame::GroupChangeAccepted { .. }]), "{got:?}");
}

#[test]
fn a_subscriber_excluded_by_privacy_sees_nothing_not_even_changes() {
    let mut rig = Rig::start(ServerConfig::default());
    let (mallory, alice) = (conn(&rig, "mallory"), conn(&rig, "alice"));
    let users = vec![user("bob"), user("carol")];
    let got = send(&mut rig, mallory, &ClientFrame::PresenceSubscribe { users: users.clone() });
    let seen: Vec<(String, LastSeen)> = got
        .iter()
        .filter_map(|f| match f {
            ServerFrame::Presence { user, last_seen } => Some((user.to_string(), *last_seen)),
            _ => None,
        })
        .collect();
    assert_eq!(seen, vec![("bob".into(), LastSeen::LongAgo), ("carol".into(), LastSeen::LongAgo)]);
    // Alice, bob's contact, sees bob online.
    let got = send(&mut rig, alice, &ClientFrame::PresenceSubscribe { users });
    assert!(got.contains(&ServerFrame::Presence { user: user("bob"), last_seen: LastSeen::Online }), "{got:?}");
    // Bob goes offline and comes back, over several push intervals: alice
    // hears of it, mallory hears nothing at all (not even the timing).
    rig.take_outputs();
    for _ in 0..4 {
        let bob = conn(&rig, "bob");
        rig.disconnect(bob);
        rig.advance(6_000);
        rig.connect(Some(&addr("bob")));
        rig.advance(6_000);
    }
    let out = rig.take_outputs();
    let pushes = |c: ConnId| frames(&out, c).into_iter().filter(|f| matches!(f, ServerFrame::Presence { .. })).count();
    assert_eq!(pushes(mallory), 0);
    assert!(pushes(alice) >= 4, "alice, a contact, sees bob come and go");
}

#[test]
fn presence_privacy_is_what_hides_bob_from_mallory() {
    let bugs = ServerBugs { presence: Some(PresenceBug::IgnorePrivacy), ..ServerBugs::default() };
    let mut rig = server_harness::Rig::start(ServerConfig { bugs, ..ServerConfig::default() });
    let mallory = conn(&rig, "mallory");
    // Unchecked on purpose: the harness itself would (rightly) fail here.
    let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        send(&mut rig, mallory, &ClientFrame::PresenceSubscribe { users: vec![user("bob")] })
    }));
    assert!(out.is_err(), "with privacy ignored, mallory is shown bob and the check fires");
}

#[test]
fn a_blob_is_reachable_only_by_its_id_and_written_only_by_its_uploader() {
    let mut rig = Rig::start(ServerConfig::default());
    let mallory = conn(&rig, "mallory");
    let unknown = ClientFrame::MediaDownload { blob: BlobId([0xb3; 16]), offset: 0 };
    assert_eq!(error_code(&send(&mut rig, mallory, &unknown)), Some(ErrorCode::UnknownBlob));
    let incomplete = ClientFrame::MediaDownload { blob: ALICE_OPEN_BLOB, offset: 0 };
    assert_eq!(error_code(&send(&mut rig, mallory, &incomplete)), Some(ErrorCode::UnknownBlob));
    let append = ClientFrame::MediaUpload { blob: ALICE_OPEN_BLOB, offset: 16, chunk: vec![6; 16], last: true };
    assert_eq!(error_code(&send(&mut rig, mallory, &append)), Some(ErrorCode::UnknownBlob));
    let overwrite = ClientFrame::MediaUpload { blob: ALICE_BLOB, offset: 0, chunk: vec![6; 16], last: true };
    assert_eq!(error_code(&send(&mut rig, mallory, &overwrite)), Some(ErrorCode::UnknownBlob));
    // The id is the capability: whoever holds it downloads the (encrypted) blob.
    let with_id = ClientFrame::MediaDownload { blob: ALICE_BLOB, offset: 0 };
    let got = send(&mut rig, mallory, &with_id);
    assert!(matches!(got.as_slice(), [ServerFrame::MediaChunk { .. }]), "{got:?}");
}

#[test]
fn one_time_prekeys_drain_no_faster_than_the_fetch_rate() {
    let mut rig = Rig::start(ServerConfig::default());
    let (bob, mallory) = (conn(&rig, "bob"), conn(&rig, "mallory"));
    // Bob tops up to 120 one-time prekeys.
    let mut rng = ChaCha20Rng::seed_from_u64(5);
    let spk = KeyPair::generate(&mut rng).public();
    let signature = rig.identity(&addr("bob")).sign(&CipherSuite::BluetickV1.encode_public(&spk), &mut rng);
    let one_time = (4..=120).map(|id| OneTimePreKeyUpload { id, key: KeyPair::generate(&mut rng).public() }).collect();
    let upload =
        ClientFrame::UploadPreKeys { signed_prekey: SignedPreKeyUpload { id: 2, key: spk, signature }, one_time };
    assert!(send(&mut rig, bob, &upload).is_empty());
    let stock = rig.server.keys().one_time_count(&addr("bob"));
    assert_eq!(stock, 120);
    let fetch = |request| ClientFrame::FetchBundle { request, owner: addr("bob") };
    let mut handed = Vec::new();
    for request in 0..60 {
        let got = send(&mut rig, mallory, &fetch(request));
        match got.as_slice() {
            [ServerFrame::Bundle { bundle, .. }] => handed.push(bundle.one_time_prekey.unwrap().id),
            [ServerFrame::Error { code: ErrorCode::LimitExceeded, .. }] => {}
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(handed.len(), BUNDLE_FETCH_BURST as usize, "a burst, then refusals");
    assert_eq!(rig.server.keys().one_time_count(&addr("bob")), stock - handed.len());
    // One more per RATE_PERIOD_MS / 30 = 2 s.
    rig.advance(RATE_PERIOD_MS / u64::from(BUNDLE_FETCH_BURST));
    assert!(matches!(send(&mut rig, mallory, &fetch(99)).as_slice(), [ServerFrame::Bundle { .. }]));
    assert_eq!(error_code(&send(&mut rig, mallory, &fetch(100))), Some(ErrorCode::LimitExceeded));
    // The limit is per requester: alice still gets one.
    let alice = conn(&rig, "alice");
    assert!(matches!(send(&mut rig, alice, &fetch(101)).as_slice(), [ServerFrame::Bundle { .. }]));
}

#[test]
fn an_unauthenticated_connection_is_refused_everything_and_closed_in_time() {
    let mut rig = Rig::start(ServerConfig::default());
    let pending = rig.connect(None);
    let before = rig.server.mailbox_total();
    let frames = vec![
        ClientFrame::Send {
            message_id: MessageId([1; 16]),
            to: addr("bob"),
            kind: EnvelopeKind::Message,
            ciphertext: vec![1],
        },
        ClientFrame::GroupSend { message_id: MessageId([2; 16]), group: MALLORY_GROUP, ciphertext: vec![1] },
        ClientFrame::DeliveryAck { seqs: vec![1, 2, 3] },
        ClientFrame::FetchBundle { request: 1, owner: addr("bob") },
        ClientFrame::PresenceSubscribe { users: vec![user("bob")] },
        ClientFrame::PresencePrivacy { visibility: Visibility::Nobody, contacts: vec![] },
        ClientFrame::MediaDownload { blob: ALICE_BLOB, offset: 0 },
        ClientFrame::GroupChange { change: change(GroupId([9; 16]), 1, "bob", &[], &[]) },
        ClientFrame::Ping { nonce: 1 },
    ];
    for f in &frames {
        assert_eq!(error_code(&send(&mut rig, pending, f)), Some(ErrorCode::NotAuthenticated), "{f:?}");
    }
    assert_eq!(rig.server.mailbox_total(), before);
    assert_eq!(rig.server.keys().one_time_count(&addr("bob")), 3, "no prekey handed out");
    // Closed once AUTH_TIMEOUT_MS has passed, not before.
    rig.advance(AUTH_TIMEOUT_MS - 1);
    assert!(send(&mut rig, pending, &ClientFrame::Ping { nonce: 2 }).len() == 1, "still open just before the timeout");
    rig.advance(1);
    let got = send(&mut rig, pending, &ClientFrame::Ping { nonce: 3 });
    assert!(got.is_empty(), "closed and forgotten after the timeout: {got:?}");
}

#[test]
fn another_device_of_an_account_needs_the_accounts_identity_key() {
    let mut rig = Rig::start(ServerConfig::default());
    let pending = rig.connect(None);
    let mut rng = ChaCha20Rng::seed_from_u64(8);
    let stranger = bluetick_crypto::IdentityKeyPair::generate(&mut rng);
    // A valid proof of the stranger's own key: the account is bound to alice's.
    let nonce = rig.nonce(pending).unwrap();
    let proof = stranger.sign(&wire::auth_message(&nonce, &user("alice"), DeviceId(2)), &mut rng);
    let got = send(
        &mut rig,
        pending,
        &ClientFrame::Register {
            version: PROTOCOL_VERSION,
            user: user("alice"),
            device: DeviceId(2),
            identity_key: stranger.public(),
            proof,
        },
    );
    assert_eq!(error_code(&got), Some(ErrorCode::UserExists), "{got:?}");
    assert!(rig.server.keys().identity(&DeviceAddress::new(user("alice"), DeviceId(2))).is_none());
}

#[test]
fn a_login_proof_is_bound_to_its_connections_challenge() {
    let mut rig = Rig::start(ServerConfig::default());
    let (first, second) = (rig.connect(None), rig.connect(None));
    let nonce = rig.nonce(first).unwrap();
    let mut rng = ChaCha20Rng::seed_from_u64(9);
    let proof = rig.identity(&addr("alice")).sign(&wire::auth_message(&nonce, &user("alice"), DeviceId(1)), &mut rng);
    let login =
        ClientFrame::Authenticate { version: PROTOCOL_VERSION, user: user("alice"), device: DeviceId(1), proof };
    // Replayed on another connection (a network attacker's copy): refused.
    assert_eq!(error_code(&send(&mut rig, second, &login)), Some(ErrorCode::AuthFailed));
    // On its own connection: accepted.
    assert!(matches!(send(&mut rig, first, &login).first(), Some(ServerFrame::Welcome { .. })));
}
