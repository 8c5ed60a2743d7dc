//! Property tests of the Double Ratchet: delivery in any order, tampering,
//! persistence, forward secrecy and healing, for both cipher suites.
//!
//! Sessions are built from a fixed shared secret and a generated signed prekey,
//! without X3DH, so these tests exercise the ratchet alone. Every RNG is a seeded
//! `ChaCha20Rng`, so a failing case replays exactly from its proptest seed.
//!
//! With `--features weak-keep-used-keys` (used message keys are kept), the replay
//! and forward-secrecy assertions flip to the weak outcome: a re-delivered message
//! decrypts again and a stolen copy of the state reads old messages.

// A test binary: a panic is how a failed expectation is reported (clippy's
// allow-unwrap-in-tests only covers `#[test]` functions, not these helpers).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use bluetick_crypto::ratchet::{RatchetError, RatchetMessage, Session};
use bluetick_crypto::{CipherSuite, KeyPair, SecretKey};
use proptest::prelude::*;
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;

const WEAK: bool = cfg!(feature = "weak-keep-used-keys");

/// Enough cases to cover both suites and many orders, few enough for CI.
const CASES: u32 = 64;

/// One event of a two-party conversation script.
#[derive(Debug, Clone)]
enum Step {
    /// Alice (`true`) or Bob sends a new message (a no-op while Bob cannot send).
    Send { alice: bool },
    /// One in-flight message to Alice (`true`) or Bob, chosen by `pick`, arrives.
    Deliver { alice: bool, pick: usize },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        any::<bool>().prop_map(|alice| Step::Send { alice }),
        (any::<bool>(), any::<usize>()).prop_map(|(alice, pick)| Step::Deliver { alice, pick }),
    ]
}

/// Scripts stay short enough that no chain gap approaches `MAX_SKIP` and no
/// replayed chain falls out of `MAX_PREVIOUS_RATCHET_KEYS` (a round trip costs
/// at least four steps).
fn script() -> impl Strategy<Value = Vec<Step>> {
    proptest::collection::vec(step(), 0..48)
}

fn suite() -> impl Strategy<Value = CipherSuite> {
    prop_oneof![Just(CipherSuite::BluetickV1), Just(CipherSuite::SignalV3Compat)]
}

/// A sent message and the plaintext it must decrypt to.
#[derive(Debug, Clone)]
struct Sent {
    message: RatchetMessage,
    plaintext: Vec<u8>,
}

fn state(session: &Session) -> String {
    serde_json::to_string(session).unwrap()
}

/// A copy of a session the only way the API allows: through its persisted state.
fn fork(session: &Session) -> Session {
    serde_json::from_str(&state(session)).unwrap()
}

/// Alice, Bob, their RNGs and the messages in flight to each.
struct World {
    alice: Session,
    bob: Session,
    alice_rng: ChaCha20Rng,
    bob_rng: ChaCha20Rng,
    to_alice: Vec<Sent>,
    to_bob: Vec<Sent>,
    /// Every message delivered so far, with its recipient (`true` = Alice).
    delivered: Vec<(bool, Sent)>,
    sent_count: usize,
    /// Everything observable, for comparing two runs.
    log: Vec<String>,
}

impl World {
    fn new(suite: CipherSuite, seed: u64) -> World {
        let mut setup = ChaCha20Rng::seed_from_u64(seed);
        let shared = SecretKey::generate(&mut setup);
        let signed_prekey = KeyPair::generate(&mut setup);
        let ad = b"alice identity key || bob identity key".to_vec();
        let alice = Session::initiator(suite, &shared, ad.clone(), signed_prekey.public(), &mut setup).unwrap();
        let bob = Session::responder(suite, &shared, ad, signed_prekey);
        World {
            alice,
            bob,
            alice_rng: ChaCha20Rng::seed_from_u64(seed ^ 0xa11ce),
            bob_rng: ChaCha20Rng::seed_from_u64(seed ^ 0xb0b),
            to_alice: Vec::new(),
            to_bob: Vec::new(),
            delivered: Vec::new(),
            sent_count: 0,
            log: Vec::new(),
        }
    }

    /// An independent copy: sessions through serde, RNGs and queues cloned.
    fn fork(&self) -> World {
        World {
            alice: fork(&self.alice),
            bob: fork(&self.bob),
            alice_rng: self.alice_rng.clone(),
            bob_rng: self.bob_rng.clone(),
            to_alice: self.to_alice.clone(),
            to_bob: self.to_bob.clone(),
            delivered: self.delivered.clone(),
            sent_count: self.sent_count,
            log: Vec::new(),
        }
    }

    fn session(&mut self, alice: bool) -> (&mut Session, &mut ChaCha20Rng) {
        if alice {
            (&mut self.alice, &mut self.alice_rng)
        } else {
            (&mut self.bob, &mut self.bob_rng)
        }
    }

    /// Encrypts a fresh message from Alice or Bob without queueing it; `None`
    /// if that side cannot send yet.
    fn encrypt(&mut self, alice: bool) -> Option<Sent> {
        let id = self.sent_count;
        let plaintext = format!("{} #{id}: {}", if alice { "alice" } else { "bob" }, "x".repeat(id % 7)).into_bytes();
        let (session, _) = self.session(alice);
        if !session.can_send() {
            assert_eq!(session.encrypt(&plaintext), Err(RatchetError::NoSendingChain));
            return None;
        }
        let message = session.encrypt(&plaintext).unwrap();
        self.sent_count += 1;
        self.log.push(format!("sent {}", hex::encode(message.to_bytes())));
        Some(Sent { message, plaintext })
    }

    /// Decrypts `sent` at Alice or Bob and asserts it yields its plaintext.
    fn receive(&mut self, alice: bool, sent: Sent) {
        let (session, rng) = self.session(alice);
        let result = session.decrypt(&sent.message, rng).map(|p| p.to_vec());
        self.log.push(format!("received {result:?}"));
        assert_eq!(result.as_ref(), Ok(&sent.plaintext), "first delivery of {:?}", sent.message.header);
        self.delivered.push((alice, sent));
    }

    fn apply(&mut self, step: &Step) {
        match *step {
            Step::Send { alice } => {
                if let Some(sent) = self.encrypt(alice) {
                    // Alice's messages travel to Bob and vice versa.
                    if alice { &mut self.to_bob } else { &mut self.to_alice }.push(sent);
                }
            }
            Step::Deliver { alice, pick } => {
                let queue = if alice { &mut self.to_alice } else { &mut self.to_bob };
                if !queue.is_empty() {
                    let sent = queue.remove(pick % queue.len());
                    self.receive(alice, sent);
                }
            }
        }
    }

    fn run(&mut self, steps: &[Step]) {
        for step in steps {
            self.apply(step);
        }
    }

    /// Delivers everything still in flight, choosing each next message by `picks`
    /// (cycled; in sending order when `picks` is empty).
    fn drain(&mut self, picks: &[usize]) {
        let mut picks = picks.iter().copied().cycle();
        while !self.to_alice.is_empty() || !self.to_bob.is_empty() {
            let pick = picks.next().unwrap_or(0);
            let alice = if self.to_alice.is_empty() {
                false
            } else if self.to_bob.is_empty() {
                true
            } else {
                pick % 2 == 0
            };
            self.apply(&Step::Deliver { alice, pick: pick / 2 });
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    /// Any interleaving of sends and deliveries (with direction changes, so DH
    /// steps and `pn` skips happen out of order) decrypts every message exactly
    /// once; a second delivery of any of them is a duplicate and changes nothing.
    #[test]
    fn any_delivery_order_decrypts_each_message_exactly_once(
        suite in suite(),
        seed in any::<u64>(),
        steps in script(),
        drain_picks in proptest::collection::vec(any::<usize>(), 0..8),
    ) {
        let mut world = World::new(suite, seed);
        world.run(&steps);
        world.drain(&drain_picks);
        let sent = world.sent_count;
        prop_assert_eq!(world.delivered.len(), sent);
        if !WEAK {
            // Every skipped key was used and deleted.
            prop_assert_eq!((world.alice.skipped_key_count(), world.bob.skipped_key_count()), (0, 0));
        }
        for (alice, replay) in world.delivered.clone() {
            let (session, rng) = world.session(alice);
            let before = state(session);
            let result = session.decrypt(&replay.message, rng).map(|p| p.to_vec());
            if WEAK {
                prop_assert_eq!(result, Ok(replay.plaintext.clone()), "weak build: a replay decrypts again");
            } else {
                let duplicate = RatchetError::DuplicateMessage { ratchet_key: replay.message.header.dh, n: replay.message.header.n };
                prop_assert_eq!(result, Err(duplicate));
                prop_assert_eq!(state(session), before);
            }
        }
    }

    /// Flipping any single bit of an encoded message (header or ciphertext) makes
    /// it fail, leaves the receiving session byte-identical, and the genuine
    /// message and the rest of the conversation still work. The target may be the
    /// first of a new chain, next in line, or waiting in the skipped-key store.
    #[test]
    fn any_flipped_bit_is_rejected_and_leaves_the_session_unchanged(
        suite in suite(),
        seed in any::<u64>(),
        prefix in script(),
        from_alice in any::<bool>(),
        count in 1usize..5,
        target in any::<usize>(),
        deliver_early in proptest::collection::vec(any::<bool>(), 5),
        bit in any::<usize>(),
    ) {
        let mut world = World::new(suite, seed);
        world.run(&prefix);
        world.drain(&[]);
        let from_alice = from_alice || !world.bob.can_send();
        let batch: Vec<Sent> = (0..count).map(|_| world.encrypt(from_alice).unwrap()).collect();
        let target = target % count;
        let to_alice = !from_alice;
        let mut pending = Vec::new();
        for (i, sent) in batch.iter().enumerate() {
            if i != target && deliver_early[i] {
                world.receive(to_alice, sent.clone());
            } else if i != target {
                pending.push(sent.clone());
            }
        }

        let mut wire = batch[target].message.to_bytes();
        let bit = bit % (wire.len() * 8);
        wire[bit / 8] ^= 1 << (bit % 8);
        let forged = RatchetMessage::from_bytes(&wire).unwrap();
        let (session, rng) = world.session(to_alice);
        let before = state(session);
        let result = session.decrypt(&forged, rng);
        prop_assert!(result.is_err(), "bit {} flipped and the message still decrypted", bit);
        prop_assert_eq!(state(session), before);

        world.receive(to_alice, batch[target].clone());
        for sent in pending {
            world.receive(to_alice, sent);
        }
        let reply = world.encrypt(to_alice).unwrap();
        world.receive(from_alice, reply);
        let again = world.encrypt(from_alice).unwrap();
        world.receive(to_alice, again);
    }

    /// Persisting and restoring both sessions at any point of a conversation
    /// changes nothing: the restored pair, given identically seeded RNGs and the
    /// same deliveries, produces byte-identical messages, plaintexts, errors and
    /// final states.
    #[test]
    fn serde_round_trip_mid_conversation_changes_nothing(
        suite in suite(),
        seed in any::<u64>(),
        prefix in script(),
        rest in script(),
        drain_picks in proptest::collection::vec(any::<usize>(), 0..8),
    ) {
        let mut original = World::new(suite, seed);
        original.run(&prefix);
        let mut restored = original.fork();
        original.log.clear();
        prop_assert_eq!(state(&restored.alice), state(&original.alice));
        prop_assert_eq!(state(&restored.bob), state(&original.bob));
        for world in [&mut original, &mut restored] {
            world.run(&rest);
            world.drain(&drain_picks);
            // A replay exercises the error path too.
            if let Some((alice, replay)) = world.delivered.first().cloned() {
                let (session, rng) = world.session(alice);
                let result = session.decrypt(&replay.message, rng).map(|p| p.to_vec());
                world.log.push(format!("replayed {result:?}"));
            }
        }
        prop_assert_eq!(&original.log, &restored.log);
        prop_assert_eq!(state(&original.alice), state(&restored.alice));
        prop_assert_eq!(state(&original.bob), state(&restored.bob));
    }

    /// Forward secrecy at session level: a copy of Bob's state taken after he
    /// decrypted messages 1..k cannot decrypt any of them again, while the ones
    /// not yet received still decrypt. The weakened build (used keys kept) must
    /// fail this: there the copy reads the old messages.
    #[test]
    fn stolen_state_cannot_decrypt_already_received_messages(
        suite in suite(),
        seed in any::<u64>(),
        prefix in script(),
        total in 2usize..12,
        received in any::<usize>(),
        order in proptest::collection::vec(any::<usize>(), 12),
    ) {
        let mut world = World::new(suite, seed);
        world.run(&prefix);
        world.drain(&[]);
        let batch: Vec<Sent> = (0..total).map(|_| world.encrypt(true).unwrap()).collect();
        let received = 1 + received % (total - 1);
        let mut early: Vec<Sent> = batch[..received].to_vec();
        for pick in &order {
            if early.is_empty() {
                break;
            }
            let sent = early.remove(pick % early.len());
            world.receive(false, sent);
        }
        for sent in early {
            world.receive(false, sent);
        }

        let mut stolen = fork(&world.bob);
        let mut thief_rng = ChaCha20Rng::seed_from_u64(!seed);
        for old in &batch[..received] {
            let result = stolen.decrypt(&old.message, &mut thief_rng).map(|p| p.to_vec());
            if WEAK {
                prop_assert_eq!(result, Ok(old.plaintext.clone()), "weak build: the stolen state reads old messages");
            } else {
                prop_assert!(
                    matches!(result, Err(RatchetError::DuplicateMessage { .. })),
                    "stolen state decrypted an already-received message: {:?}", result
                );
            }
        }
        for new in &batch[received..] {
            let result = stolen.decrypt(&new.message, &mut thief_rng).map(|p| p.to_vec());
            prop_assert_eq!(result, Ok(new.plaintext.clone()));
            world.receive(false, new.clone());
        }
    }

    /// Healing: a copy of Alice's state can read Bob's next reply, but once one
    /// DH round trip happens (Bob replies, Alice replies under a fresh ratchet key,
    /// Bob answers that), the copy can decrypt neither Alice's new messages nor
    /// Bob's answer, whether or not the thief also processed the first reply.
    #[test]
    fn stolen_state_is_locked_out_after_one_dh_round_trip(
        suite in suite(),
        seed in any::<u64>(),
        prefix in script(),
        replies in 1usize..4,
    ) {
        let mut world = World::new(suite, seed);
        world.run(&prefix);
        world.drain(&[]);
        let hello = world.encrypt(true).unwrap();
        world.receive(false, hello);

        let stolen_key = world.alice.our_ratchet_key();
        let mut stolen = fork(&world.alice);
        let mut untouched = fork(&world.alice);
        let mut thief_rng = ChaCha20Rng::seed_from_u64(!seed);

        let reply = world.encrypt(false).unwrap();
        // The compromise is real: the thief reads the reply sent before healing.
        let read = stolen.decrypt(&reply.message, &mut thief_rng).map(|p| p.to_vec());
        prop_assert_eq!(read, Ok(reply.plaintext.clone()));
        world.receive(true, reply);
        prop_assert_ne!(world.alice.our_ratchet_key(), stolen_key);

        let mut after = Vec::new();
        for _ in 0..replies {
            let sent = world.encrypt(true).unwrap();
            after.push(sent.clone());
            world.receive(false, sent);
        }
        let answer = world.encrypt(false).unwrap();
        after.push(answer.clone());
        world.receive(true, answer);

        for thief in [&mut stolen, &mut untouched] {
            for sent in &after {
                let before = state(thief);
                let result = thief.decrypt(&sent.message, &mut thief_rng);
                prop_assert!(result.is_err(), "stolen state decrypted a post-healing message");
                prop_assert_eq!(state(thief), before);
            }
        }
    }
}

/// Regression: a session holding skipped keys once failed to serialise in
/// postcard (the format clients persist with), because the skipped-key list
/// was written as a sequence of unknown length. Found by the core's World.
#[test]
fn a_session_with_skipped_keys_round_trips_through_postcard() {
    use bluetick_crypto::ratchet::Session;
    use bluetick_crypto::{CipherSuite, KeyPair, SecretKey};
    use rand_chacha::rand_core::SeedableRng;
    let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(5);
    let sk = SecretKey::new([9; 32]);
    let bob_key = KeyPair::generate(&mut rng);
    let mut alice =
        Session::initiator(CipherSuite::BluetickV1, &sk, b"ad".to_vec(), bob_key.public(), &mut rng).unwrap();
    let mut bob = Session::responder(CipherSuite::BluetickV1, &sk, b"ad".to_vec(), bob_key);
    let msgs: Vec<_> = (0..4).map(|i| alice.encrypt(&[i]).unwrap()).collect();
    bob.decrypt(&msgs[3], &mut rng).unwrap();
    // Three skipped keys (plus the used one in the weakened build, which keeps it).
    let held = bob.skipped_key_count();
    assert!(held >= 3, "{held}");
    let bytes = postcard::to_allocvec(&bob).expect("serialises");
    let mut back: Session = postcard::from_bytes(&bytes).expect("deserialises");
    assert_eq!(back.skipped_key_count(), held);
    assert_eq!(back.decrypt(&msgs[1], &mut rng).unwrap().as_slice(), &[1]);
}
