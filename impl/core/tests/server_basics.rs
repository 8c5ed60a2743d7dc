//! The server state machine driven frame by frame by hand-written devices:
//! authentication, send / server-ack / deliver / delivery-ack, idempotent
//! retries, redelivery after reconnect, crash recovery from the store,
//! refusals, and no plaintext anywhere in the store.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use bluetick_core::ids::{DeviceAddress, DeviceId, MessageId, UserId};
use bluetick_core::server::{ConnId, Server, ServerConfig, ServerOutput};
use bluetick_core::store::{MemoryStore, Store, Table, WriteBatch};
use bluetick_core::wire::{self, ClientFrame, Delivery, EnvelopeKind, ErrorCode, ServerFrame, SignedPreKeyUpload};
use bluetick_crypto::{CipherSuite, IdentityKeyPair, KeyPair};
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;

struct Device {
    addr: DeviceAddress,
    id: IdentityKeyPair,
    conn: ConnId,
}

struct Rig {
    server: Server,
    store: MemoryStore,
    now: u64,
    rng: ChaCha20Rng,
    next_conn: u64,
    inbox: std::collections::BTreeMap<ConnId, Vec<ServerFrame>>,
}

impl Rig {
    fn new() -> Self {
        Rig {
            server: Server::new(ServerConfig::default(), 1),
            store: MemoryStore::new(),
            now: 1_000,
            rng: ChaCha20Rng::seed_from_u64(2),
            next_conn: 1,
            inbox: Default::default(),
        }
    }

    fn drain(&mut self) {
        while let Some(o) = self.server.poll_output() {
            if let ServerOutput::Frame { conn, frame } = o {
                self.inbox.entry(conn).or_default().push(frame);
            }
        }
    }

    /// Everything sent to `conn` since the last call (frames for other
    /// connections stay in their inboxes).
    fn frames_for(&mut self, conn: ConnId) -> Vec<ServerFrame> {
        self.drain();
        self.inbox.remove(&conn).unwrap_or_default()
    }

    fn send(&mut self, conn: ConnId, f: &ClientFrame) -> Vec<ServerFrame> {
        let bytes = wire::encode(f);
        self.server.handle_bytes(conn, &bytes, self.now, &mut self.store);
        self.frames_for(conn)
    }

    fn connect(&mut self, name: &str, id: IdentityKeyPair, register: bool) -> (Device, Vec<ServerFrame>) {
        let conn = ConnId(self.next_conn);
        self.next_conn += 1;
        self.server.handle_connect(conn, self.now);
        let nonce = match self.frames_for(conn).as_slice() {
            [ServerFrame::Challenge { nonce }] => *nonce,
            other => panic!("expected a challenge, got {other:?}"),
        };
        let addr = DeviceAddress::new(UserId::new(name).unwrap(), DeviceId(1));
        let proof = id.sign(&wire::auth_message(&nonce, &addr.user, addr.device), &mut self.rng);
        let frame = if register {
            ClientFrame::Register {
                version: wire::PROTOCOL_VERSION,
                user: addr.user.clone(),
                device: addr.device,
                identity_key: id.public(),
                proof,
            }
        } else {
            ClientFrame::Authenticate {
                version: wire::PROTOCOL_VERSION,
                user: addr.user.clone(),
                device: addr.device,
                proof,
            }
        };
        let got = self.send(conn, &frame);
        (Device { addr, id, conn }, got)
    }

    fn register(&mut self, name: &str) -> Device {
        let id = IdentityKeyPair::generate(&mut self.rng);
        let (d, got) = self.connect(name, id, true);
        assert!(matches!(got.first(), Some(ServerFrame::Welcome { .. })), "{got:?}");
        let spk = KeyPair::generate(&mut self.rng);
        let sig = d.id.sign(&CipherSuite::BluetickV1.encode_public(&spk.public()), &mut self.rng);
        let up = ClientFrame::UploadPreKeys {
            signed_prekey: SignedPreKeyUpload { id: 1, key: spk.public(), signature: sig },
            one_time: vec![],
        };
        assert_eq!(self.send(d.conn, &up), vec![]);
        d
    }
}

/// The seq of the one item just handed out to `to`.
fn one_delivery(r: &mut Rig, to: &Device) -> u64 {
    match r.frames_for(to.conn).as_slice() {
        [ServerFrame::Deliver { seq, .. }] => *seq,
        other => panic!("expected one delivery, got {other:?}"),
    }
}

/// alice and bob registered; alice's message 1 (`x`) delivered to bob and acked.
fn message_one_delivered_and_acked() -> (Rig, Device, Device) {
    let mut r = Rig::new();
    let alice = r.register("alice");
    let bob = r.register("bob");
    r.send(alice.conn, &text(&bob, 1, b"x"));
    let seq = one_delivery(&mut r, &bob);
    r.send(bob.conn, &ClientFrame::DeliveryAck { seqs: vec![seq] });
    (r, alice, bob)
}

fn text(to: &Device, id: u8, body: &[u8]) -> ClientFrame {
    ClientFrame::Send {
        message_id: MessageId([id; 16]),
        to: to.addr.clone(),
        kind: EnvelopeKind::Message,
        ciphertext: body.to_vec(),
    }
}

#[test]
fn send_is_acked_after_storing_then_delivered_and_deleted_on_ack() {
    let mut r = Rig::new();
    let alice = r.register("alice");
    let bob = r.register("bob");
    let got = r.send(alice.conn, &text(&bob, 1, b"opaque-ciphertext-1"));
    assert!(matches!(got.as_slice(), [ServerFrame::ServerAck { .. }]), "{got:?}");
    assert_eq!(r.store.scan(Table::Mailbox).unwrap().len(), 1, "stored before the ack");
    let to_bob = r.frames_for(bob.conn);
    let seq = match to_bob.as_slice() {
        [ServerFrame::Deliver { seq, item: Delivery::Envelope(e) }] => {
            assert_eq!(e.from, alice.addr, "the server stamps the sender");
            assert_eq!(e.ciphertext, b"opaque-ciphertext-1");
            *seq
        }
        other => panic!("{other:?}"),
    };
    assert_eq!(r.server.mailbox_len(&bob.addr), 1, "not deleted on send");
    r.send(bob.conn, &ClientFrame::DeliveryAck { seqs: vec![seq] });
    assert_eq!(r.server.mailbox_len(&bob.addr), 0);
    assert!(r.store.scan(Table::Mailbox).unwrap().is_empty(), "deleted from the store on ack");
    let stats = r.server.stats();
    assert_eq!((stats.accepted, stats.deliveries, stats.acked), (1, 1, 1), "{stats:?}");
}

#[test]
fn a_retry_after_a_lost_ack_creates_no_second_copy_even_after_delivery() {
    let (mut r, alice, bob) = message_one_delivered_and_acked();
    let again = r.send(alice.conn, &text(&bob, 1, b"x"));
    assert!(matches!(again.as_slice(), [ServerFrame::ServerAck { .. }]));
    assert!(r.frames_for(bob.conn).is_empty(), "no second copy delivered");
    assert_eq!(r.server.stats().duplicate_sends, 1);
}

#[test]
fn unacked_deliveries_come_back_on_reconnect_and_after_the_ack_timeout() {
    let mut r = Rig::new();
    let alice = r.register("alice");
    let bob = r.register("bob");
    r.send(alice.conn, &text(&bob, 1, b"one"));
    r.send(alice.conn, &text(&bob, 2, b"two"));
    assert_eq!(r.frames_for(bob.conn).len(), 2);
    // Ack timeout: handed out again, same seqs, same order.
    r.now += ServerConfig::default().ack_timeout_ms;
    assert!(r.server.poll_timeout().unwrap() <= r.now);
    r.server.handle_timeout(r.now, &mut r.store);
    let again: Vec<u64> = r
        .frames_for(bob.conn)
        .into_iter()
        .map(|f| match f {
            ServerFrame::Deliver { seq, .. } => seq,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(again, vec![1, 2]);
    assert!(r.server.poll_timeout().unwrap() > r.now, "the next deadline is in the future");
    assert_eq!(r.server.stats().ack_timeouts, 2, "both were handed out again");
    // Reconnect: handed out again.
    r.server.handle_disconnect(bob.conn, r.now, &mut r.store);
    let (bob2, got) = r.connect("bob", bob.id.clone(), false);
    assert!(matches!(got.first(), Some(ServerFrame::Welcome { .. })));
    assert_eq!(got.iter().filter(|f| matches!(f, ServerFrame::Deliver { .. })).count(), 2);
    let _ = bob2;
}

#[test]
fn a_crashed_server_recovers_every_stored_message_and_binding() {
    let mut r = Rig::new();
    let alice = r.register("alice");
    let bob = r.register("bob");
    r.server.handle_disconnect(bob.conn, r.now, &mut r.store);
    for i in 0..5 {
        r.send(alice.conn, &text(&bob, i, format!("c{i}").as_bytes()));
    }
    // Crash: drop the server, keep the store.
    r.server = Server::recover(ServerConfig::default(), 9, &mut r.store).unwrap();
    assert_eq!(r.server.mailbox_len(&bob.addr), 5);
    let (_, got) = r.connect("bob", bob.id.clone(), false);
    let delivered: Vec<Vec<u8>> = got
        .into_iter()
        .filter_map(|f| match f {
            ServerFrame::Deliver { item: Delivery::Envelope(e), .. } => Some(e.ciphertext),
            _ => None,
        })
        .collect();
    assert_eq!(delivered, (0..5).map(|i| format!("c{i}").into_bytes()).collect::<Vec<_>>(), "all, in order");
    // The retry index survived too: alice (reconnected) retries message 0.
    let (alice2, _) = r.connect("alice", alice.id.clone(), false);
    let again = r.send(alice2.conn, &text(&bob, 0, b"c0"));
    assert!(matches!(again.as_slice(), [ServerFrame::ServerAck { .. }]), "{again:?}");
    assert_eq!(r.server.stats().duplicate_sends, 1);
}

#[test]
fn a_failed_store_write_is_refused_and_leaves_nothing_behind() {
    let mut r = Rig::new();
    let alice = r.register("alice");
    let bob = r.register("bob");
    r.store.fail_next_apply();
    let got = r.send(alice.conn, &text(&bob, 1, b"x"));
    assert!(matches!(got.as_slice(), [ServerFrame::Error { code: ErrorCode::Unavailable, .. }]), "{got:?}");
    assert_eq!(r.server.mailbox_len(&bob.addr), 0);
    assert!(r.frames_for(bob.conn).is_empty());
    // The retry then succeeds: the failed attempt did not poison the id.
    let got = r.send(alice.conn, &text(&bob, 1, b"x"));
    assert!(matches!(got.as_slice(), [ServerFrame::ServerAck { .. }]), "{got:?}");
}

#[test]
fn hostile_frames_get_clear_errors_and_touch_nothing() {
    let mut r = Rig::new();
    let alice = r.register("alice");
    let bob = r.register("bob");
    // Before authentication.
    let conn = ConnId(99);
    r.server.handle_connect(conn, r.now);
    r.frames_for(conn);
    let got = r.send(conn, &text(&bob, 1, b"x"));
    assert!(matches!(got.as_slice(), [ServerFrame::Error { code: ErrorCode::NotAuthenticated, .. }]));
    // Garbage and oversize.
    r.server.handle_bytes(alice.conn, &[0xff, 0xfe, 0x00], r.now, &mut r.store);
    assert!(matches!(r.frames_for(alice.conn).as_slice(), [ServerFrame::Error { code: ErrorCode::Malformed, .. }]));
    // Unknown recipient.
    let ghost =
        Device { addr: DeviceAddress::new(UserId::new("ghost").unwrap(), DeviceId(1)), id: bob.id.clone(), conn };
    let got = r.send(alice.conn, &text(&ghost, 2, b"x"));
    assert!(matches!(got.as_slice(), [ServerFrame::Error { code: ErrorCode::UnknownRecipient, .. }]));
    // Logging in as bob with alice's key.
    let (_, got) = r.connect("bob", alice.id.clone(), false);
    assert!(matches!(got.as_slice(), [ServerFrame::Error { code: ErrorCode::AuthFailed, .. }]), "{got:?}");
    assert_eq!(r.server.mailbox_total(), 0);
    // An oversize frame: refused before decoding, and the connection is
    // closed and forgotten by the server itself.
    r.server.handle_bytes(alice.conn, &vec![0u8; wire::FRAME_LEN_MAX + 1], r.now, &mut r.store);
    assert!(matches!(r.frames_for(alice.conn).first(), Some(ServerFrame::Error { code: ErrorCode::TooLarge, .. })));
    assert!(!r.server.is_online(&alice.addr));
    assert!(r.server.is_online(&bob.addr), "other users are unaffected");
}

#[test]
fn the_store_never_holds_plaintext_only_what_clients_sent() {
    // The server stores exactly the bytes it was given: if a client sends
    // ciphertext, no plaintext can appear. Here the "ciphertext" is a marker
    // we then search the whole store for, to show the check can see it.
    let mut r = Rig::new();
    let alice = r.register("alice");
    let bob = r.register("bob");
    r.server.handle_disconnect(bob.conn, r.now, &mut r.store);
    r.send(alice.conn, &text(&bob, 1, b"MARKER-0123456789"));
    let found = Table::ALL
        .iter()
        .flat_map(|t| r.store.scan(*t).unwrap())
        .any(|(_, v)| v.windows(17).any(|w| w == b"MARKER-0123456789"));
    assert!(found, "the scan can find bytes in the store");
}

#[test]
fn a_seq_is_never_reused_after_a_restart() {
    let mut r = Rig::new();
    let alice = r.register("alice");
    let bob = r.register("bob");
    for i in 0..3 {
        r.send(alice.conn, &text(&bob, i, b"x"));
    }
    let seqs: Vec<u64> = r
        .frames_for(bob.conn)
        .into_iter()
        .filter_map(|f| match f {
            ServerFrame::Deliver { seq, .. } => Some(seq),
            _ => None,
        })
        .collect();
    r.send(bob.conn, &ClientFrame::DeliveryAck { seqs: seqs.clone() });
    assert_eq!(r.server.mailbox_len(&bob.addr), 0);
    r.server = Server::recover(ServerConfig::default(), 3, &mut r.store).unwrap();
    let (alice2, _) = r.connect("alice", alice.id.clone(), false);
    let (bob2, _) = r.connect("bob", bob.id.clone(), false);
    r.send(alice2.conn, &text(&bob, 9, b"y"));
    let new_seq = match r.frames_for(bob2.conn).as_slice() {
        [ServerFrame::Deliver { seq, .. }] => *seq,
        other => panic!("{other:?}"),
    };
    assert!(new_seq > *seqs.iter().max().unwrap(), "seq {new_seq} reused after restart (old {seqs:?})");
    // A late duplicate of the old ack must not delete the new entry.
    r.send(bob2.conn, &ClientFrame::DeliveryAck { seqs });
    assert_eq!(r.server.mailbox_len(&bob.addr), 1);
}

/// Stores written before accepted-message rows were keyed by expiry (`a`
/// and the sender's device and message id; now `t`, the expiry, then the
/// same) still recover them: the retry is answered as a duplicate, the row
/// moves to the new form once, and expiry deletes it.
#[test]
fn accepted_rows_in_the_old_key_form_are_recovered_rewritten_and_expired() {
    let accepted_rows = |store: &MemoryStore| -> Vec<(Vec<u8>, Vec<u8>)> {
        let meta = store.scan(Table::Meta).unwrap();
        meta.into_iter().filter(|(k, _)| matches!(k.first(), Some(b'a' | b't'))).collect()
    };
    let (mut r, alice, bob) = message_one_delivered_and_acked();
    let [(key, value)] = accepted_rows(&r.store).try_into().unwrap();
    let (_, forget): (u64, u64) = postcard::from_bytes(&value).unwrap();
    assert_eq!((key[0], &key[1..9]), (b't', &forget.to_be_bytes()[..]), "expiry first, big-endian");
    let mut old_key = vec![b'a'];
    old_key.extend_from_slice(&key[9..]);
    let mut downgrade = WriteBatch::new();
    downgrade.delete(Table::Meta, key.clone()).put(Table::Meta, old_key, value.clone());
    r.store.apply(downgrade).unwrap();

    r.server = Server::recover(ServerConfig::default(), 9, &mut r.store).unwrap();
    assert_eq!(accepted_rows(&r.store), vec![(key, value)], "rewritten in the new form, the old row gone");
    let (alice2, _) = r.connect("alice", alice.id.clone(), false);
    let again = r.send(alice2.conn, &text(&bob, 1, b"x"));
    assert!(matches!(again.as_slice(), [ServerFrame::ServerAck { .. }]), "{again:?}");
    assert_eq!(r.server.stats().duplicate_sends, 1);
    r.now = forget;
    r.server.handle_timeout(r.now, &mut r.store);
    assert_eq!(accepted_rows(&r.store), vec![], "expired and deleted");
}

/// Stores written before mailbox rows were keyed by device and big-endian
/// seq (the encoding of (device, seq), a varint seq) still recover them: in
/// order, moved to the new form once, and deleted by the acks.
#[test]
fn mailbox_rows_in_the_old_key_form_are_recovered_rewritten_and_acked_away() {
    let mut r = Rig::new();
    let alice = r.register("alice");
    let bob = r.register("bob");
    r.server.handle_disconnect(bob.conn, r.now, &mut r.store);
    for (i, body) in [(1u8, "a"), (2, "b"), (3, "c")] {
        r.send(alice.conn, &text(&bob, i, body.as_bytes()));
    }
    let rows = r.store.scan(Table::Mailbox).unwrap();
    assert_eq!(rows.len(), 3);
    let mut downgrade = WriteBatch::new();
    for (i, (key, value)) in rows.iter().enumerate() {
        assert_eq!(key[0], 0xff, "new rows have the new form");
        let seq = u64::from_be_bytes(key[key.len() - 8..].try_into().unwrap());
        assert_eq!(seq, i as u64 + 1);
        let old_key = postcard::to_allocvec(&(&bob.addr, seq)).unwrap();
        downgrade.delete(Table::Mailbox, key.clone()).put(Table::Mailbox, old_key, value.clone());
    }
    r.store.apply(downgrade).unwrap();

    r.server = Server::recover(ServerConfig::default(), 9, &mut r.store).unwrap();
    let rows = r.store.scan(Table::Mailbox).unwrap();
    assert!(rows.iter().all(|(k, _)| k[0] == 0xff), "every row moved to the new form");
    let (bob2, got) = r.connect("bob", bob.id.clone(), false);
    let delivered: Vec<(u64, Vec<u8>)> = got
        .into_iter()
        .filter_map(|f| match f {
            ServerFrame::Deliver { seq, item: Delivery::Envelope(e) } => Some((seq, e.ciphertext)),
            _ => None,
        })
        .collect();
    let bodies: Vec<&[u8]> = delivered.iter().map(|(_, b)| b.as_slice()).collect();
    assert_eq!(bodies, vec![&b"a"[..], b"b", b"c"], "in the order they were sent");
    r.send(bob2.conn, &ClientFrame::DeliveryAck { seqs: delivered.iter().map(|(s, _)| *s).collect() });
    assert_eq!(r.store.scan(Table::Mailbox).unwrap(), vec![], "the acks deleted every row");
}

#[test]
fn a_stranger_cannot_join_an_account_as_another_device() {
    let mut r = Rig::new();
    let _alice = r.register("alice");
    let stranger = IdentityKeyPair::generate(&mut r.rng);
    let conn = ConnId(500);
    r.server.handle_connect(conn, r.now);
    let nonce = match r.frames_for(conn).as_slice() {
        [ServerFrame::Challenge { nonce }] => *nonce,
        other => panic!("{other:?}"),
    };
    let user = UserId::new("alice").unwrap();
    let proof = stranger.sign(&wire::auth_message(&nonce, &user, DeviceId(2)), &mut r.rng);
    let got = r.send(
        conn,
        &ClientFrame::Register {
            version: wire::PROTOCOL_VERSION,
            user,
            device: DeviceId(2),
            identity_key: stranger.public(),
            proof,
        },
    );
    assert!(matches!(got.as_slice(), [ServerFrame::Error { code: ErrorCode::UserExists, .. }]), "{got:?}");
}

/// The counters a report prints move with what happened: an expiry of an
/// undelivered message, and a failed store write (refused, nothing kept).
#[test]
fn expiries_and_store_failures_are_counted() {
    let mut r = Rig::new();
    let alice = r.register("alice");
    let bob = r.register("bob");
    r.server.handle_disconnect(bob.conn, r.now, &mut r.store);
    r.send(alice.conn, &text(&bob, 1, b"never read"));
    r.now += ServerConfig::default().ttl_text_ms + 1;
    r.server.handle_timeout(r.now, &mut r.store);
    assert_eq!(r.server.stats().expired, 1);
    assert_eq!(r.server.mailbox_len(&bob.addr), 0);
    r.drain();
    r.store.fail_next_apply();
    let spk = KeyPair::generate(&mut r.rng);
    let sig = alice.id.sign(&CipherSuite::BluetickV1.encode_public(&spk.public()), &mut r.rng);
    let up = ClientFrame::UploadPreKeys {
        signed_prekey: SignedPreKeyUpload { id: 2, key: spk.public(), signature: sig },
        one_time: vec![],
    };
    let got = r.send(alice.conn, &up);
    assert!(got.iter().any(|f| matches!(f, ServerFrame::Error { code: ErrorCode::Unavailable, .. })), "{got:?}");
    assert_eq!(r.server.stats().store_failures, 1);
}

/// An ack whose store write fails is refused and counted; the entry is gone
/// from memory but still in the store, so after a crash it is handed out
/// again (the client's dedup absorbs it): redelivery, never loss. The same
/// for an expiry sweep whose write fails: the expired entry comes back with
/// a recovery and expires again.
#[test]
fn a_failed_ack_or_expiry_write_errs_towards_redelivery_never_loss() {
    let mut r = Rig::new();
    let alice = r.register("alice");
    let bob = r.register("bob");
    r.send(alice.conn, &text(&bob, 1, b"x"));
    let seq = one_delivery(&mut r, &bob);
    r.store.fail_next_apply();
    let got = r.send(bob.conn, &ClientFrame::DeliveryAck { seqs: vec![seq] });
    assert!(got.iter().any(|f| matches!(f, ServerFrame::Error { code: ErrorCode::Unavailable, .. })), "{got:?}");
    assert_eq!(r.server.stats().store_failures, 1);
    assert_eq!(r.store.scan(Table::Mailbox).unwrap().len(), 1, "still in the store");
    r.server = Server::recover(ServerConfig::default(), 9, &mut r.store).unwrap();
    let (bob2, got) = r.connect("bob", bob.id.clone(), false);
    assert_eq!(got.iter().filter(|f| matches!(f, ServerFrame::Deliver { .. })).count(), 1, "handed out again");

    // Expiry: bob is away, the sweep's write fails, a recovery brings the
    // entry back and the next sweep expires it again.
    r.server.handle_disconnect(bob2.conn, r.now, &mut r.store);
    r.now += ServerConfig::default().ttl_text_ms + 1;
    r.store.fail_next_apply();
    r.server.handle_timeout(r.now, &mut r.store);
    assert_eq!((r.server.stats().expired, r.server.stats().store_failures), (1, 1));
    r.server = Server::recover(ServerConfig::default(), 10, &mut r.store).unwrap();
    assert_eq!(r.server.mailbox_len(&bob.addr), 1, "the failed sweep left it in the store");
    r.server.handle_timeout(r.now, &mut r.store);
    assert_eq!(r.server.stats().expired, 1, "expired again after the recovery");
    assert_eq!(r.server.mailbox_len(&bob.addr), 0);
    let _ = alice;
}

/// A server timer that fires while a message is still inside its retry
/// window keeps the message's id: a retry an hour later is answered as a
/// duplicate, not queued a second time.
#[test]
fn a_retry_inside_the_window_is_a_duplicate_across_timer_sweeps() {
    let mut r = Rig::new();
    let alice = r.register("alice");
    let bob = r.register("bob");
    r.server.handle_disconnect(bob.conn, r.now, &mut r.store);
    let first = r.send(alice.conn, &text(&bob, 7, b"once"));
    assert!(matches!(first.as_slice(), [ServerFrame::ServerAck { .. }]), "{first:?}");
    r.now += 3_600_000;
    r.server.handle_timeout(r.now, &mut r.store);
    let again = r.send(alice.conn, &text(&bob, 7, b"once"));
    assert!(matches!(again.as_slice(), [ServerFrame::ServerAck { .. }]), "{again:?}");
    assert_eq!(r.server.stats().duplicate_sends, 1);
    assert_eq!(r.server.mailbox_len(&bob.addr), 1);
}
