//! Property tests of Sender Keys: delivery order, replay, tampering, persistence
//! and forward secrecy, in both cipher suites.
//!
//! The replay and forward-secrecy properties assert the opposite outcome under
//! `--features weak-keep-used-keys`, which keeps used message keys: that run
//! passes only if the checks really notice kept keys.

// A test crate: an unwrap that fails is a failed test, which is what we want.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;

use bluetick_crypto::sender_key::{GroupId, GroupMessage, OwnSenderKey, SenderKeyError, SenderKeyRecord};
use bluetick_crypto::CipherSuite;
use proptest::prelude::*;
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;

const GROUP: GroupId = GroupId([0x17; 16]);

fn suite() -> impl Strategy<Value = CipherSuite> {
    prop_oneof![Just(CipherSuite::BluetickV1), Just(CipherSuite::SignalV3Compat)]
}

fn setup(suite: CipherSuite, seed: u64) -> (OwnSenderKey, SenderKeyRecord, ChaCha20Rng) {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let sender = OwnSenderKey::new(suite, GROUP, &mut rng);
    let record = SenderKeyRecord::from_distribution(suite, &sender.distribution()).unwrap();
    (sender, record, rng)
}

fn plaintext(i: usize) -> Vec<u8> {
    format!("group message number {i}").into_bytes()
}

fn encrypt_n(sender: &mut OwnSenderKey, n: usize) -> Vec<GroupMessage> {
    (0..n).map(|i| sender.encrypt(&plaintext(i)).unwrap()).collect()
}

fn state_of<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap()
}

/// A delivery schedule: every index in `0..n` at least once, plus a few repeats,
/// in any order.
fn schedule() -> impl Strategy<Value = (usize, Vec<usize>)> {
    (1usize..=16).prop_flat_map(|n| (Just(n), proptest::collection::vec(0..n, 0..6))).prop_flat_map(|(n, extra)| {
        let mut all: Vec<usize> = (0..n).collect();
        all.extend(extra);
        (Just(n), Just(all).prop_shuffle())
    })
}

/// `n` messages of which the first `k` (1 ≤ k < n) are read, in any order.
fn read_first_k() -> impl Strategy<Value = (usize, usize, Vec<usize>)> {
    (2usize..=10)
        .prop_flat_map(|n| (Just(n), 1..n))
        .prop_flat_map(|(n, k)| (Just(n), Just(k), Just((0..k).collect::<Vec<_>>()).prop_shuffle()))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Every message decrypts the first time it arrives, whatever the order; any
    /// later copy is a duplicate that changes nothing.
    #[test]
    fn any_delivery_order_decrypts_each_message_exactly_once(
        suite in suite(), seed in any::<u64>(), (n, order) in schedule()
    ) {
        let (mut sender, mut record, _) = setup(suite, seed);
        let messages = encrypt_n(&mut sender, n);
        let mut delivered = BTreeSet::new();
        for i in order {
            let before = state_of(&record);
            let result = record.decrypt(&messages[i]);
            if delivered.insert(i) {
                prop_assert_eq!(result.map(|p| p.to_vec()), Ok(plaintext(i)));
            } else if cfg!(feature = "weak-keep-used-keys") {
                // The weakened build keeps used keys, so a replay opens again.
                prop_assert_eq!(result.map(|p| p.to_vec()), Ok(plaintext(i)));
                prop_assert_eq!(state_of(&record), before);
            } else {
                prop_assert_eq!(
                    result,
                    Err(SenderKeyError::DuplicateMessage { key_id: sender.key_id(), iteration: i as u32 })
                );
                prop_assert_eq!(state_of(&record), before);
            }
        }
        prop_assert_eq!(delivered.len(), n);
        prop_assert_eq!(record.skipped_key_count(), 0);
    }

    /// A single flipped bit anywhere in an encoded message is caught, by the
    /// decoder or by the record, and the record stays exactly as it was.
    #[test]
    fn any_flipped_bit_is_rejected_and_changes_nothing(
        suite in suite(), seed in any::<u64>(), len in 0usize..80, bit_choice in any::<prop::sample::Index>()
    ) {
        let (mut sender, mut record, _) = setup(suite, seed);
        let warmup = encrypt_n(&mut sender, 3);
        // Leave a skipped key behind so there is state a bad message could disturb.
        record.decrypt(&warmup[0]).unwrap();
        record.decrypt(&warmup[2]).unwrap();
        let body = vec![0xa5u8; len];
        let message = sender.encrypt(&body).unwrap();
        let mut bytes = message.to_bytes();
        let bit = bit_choice.index(bytes.len() * 8);
        bytes[bit / 8] ^= 1 << (bit % 8);

        let before = state_of(&record);
        if let Ok(decoded) = GroupMessage::from_bytes(&bytes) {
            prop_assert!(record.decrypt(&decoded).is_err(), "bit {} accepted", bit);
        }
        prop_assert_eq!(state_of(&record), before);
        prop_assert_eq!(record.decrypt(&message).map(|p| p.to_vec()), Ok(body));
        prop_assert_eq!(record.decrypt(&warmup[1]).map(|p| p.to_vec()), Ok(plaintext(1)));
    }

    /// Persisting and reloading sender and receiver at any point changes
    /// neither the messages produced nor what decrypts.
    #[test]
    fn serde_round_trip_mid_stream_changes_nothing(
        suite in suite(), seed in any::<u64>(), (n, order) in schedule(), cut in any::<prop::sample::Index>()
    ) {
        let (mut sender, mut record, _) = setup(suite, seed);
        let (mut reloaded_sender, mut reloaded_record, _) = setup(suite, seed);
        let cut_at = cut.index(n + 1);
        let mut reference = Vec::new();
        let mut messages = Vec::new();
        for i in 0..n {
            if i == cut_at {
                reloaded_sender = serde_json::from_str(&state_of(&reloaded_sender)).unwrap();
            }
            reference.push(sender.encrypt(&plaintext(i)).unwrap().to_bytes());
            messages.push(reloaded_sender.encrypt(&plaintext(i)).unwrap());
        }
        for (a, b) in reference.iter().zip(&messages) {
            prop_assert_eq!(a, &b.to_bytes(), "a reloaded sender produces the same bytes");
        }
        let cut_at = cut.index(order.len() + 1);
        for (step, &i) in order.iter().enumerate() {
            if step == cut_at {
                reloaded_record = serde_json::from_str(&state_of(&reloaded_record)).unwrap();
            }
            let expected = record.decrypt(&messages[i]);
            let got = reloaded_record.decrypt(&messages[i]);
            prop_assert_eq!(expected, got);
            prop_assert_eq!(state_of(&record), state_of(&reloaded_record));
        }
        prop_assert_eq!(state_of(&sender), state_of(&reloaded_sender));
    }

    /// Forward secrecy, and its limit. A copy of a receiver's record taken after
    /// it read messages 0..k (say, stolen from its disk) cannot read those
    /// again. Sender keys give no healing, though: the copy holds the chain key,
    /// so it reads every later message of this key id. Only the sender's
    /// `rotate` (on a membership change) shuts it out again.
    #[test]
    fn stolen_record_reads_neither_the_past_nor_anything_after_rotation(
        suite in suite(), seed in any::<u64>(), (n, k, read) in read_first_k()
    ) {
        let (mut sender, mut record, mut rng) = setup(suite, seed);
        let messages = encrypt_n(&mut sender, n);
        for &i in &read {
            record.decrypt(&messages[i]).unwrap();
        }
        let mut stolen: SenderKeyRecord = serde_json::from_str(&state_of(&record)).unwrap();

        for (i, message) in messages.iter().enumerate().take(k) {
            let result = stolen.decrypt(message);
            if cfg!(feature = "weak-keep-used-keys") {
                prop_assert_eq!(result.map(|p| p.to_vec()), Ok(plaintext(i)), "weak build must leak message {}", i);
            } else {
                prop_assert_eq!(
                    result,
                    Err(SenderKeyError::DuplicateMessage { key_id: sender.key_id(), iteration: i as u32 })
                );
            }
        }
        // No healing: everything later under the same key id is readable.
        for (i, message) in messages.iter().enumerate().skip(k) {
            prop_assert_eq!(stolen.decrypt(message).map(|p| p.to_vec()), Ok(plaintext(i)));
            prop_assert_eq!(record.decrypt(message).map(|p| p.to_vec()), Ok(plaintext(i)));
        }

        let rotated = sender.rotate(&mut rng);
        record.add_distribution(&rotated).unwrap();
        for i in 0..2 {
            let message = sender.encrypt(&plaintext(i)).unwrap();
            prop_assert_eq!(record.decrypt(&message).map(|p| p.to_vec()), Ok(plaintext(i)));
            let before = state_of(&stolen);
            prop_assert_eq!(stolen.decrypt(&message), Err(SenderKeyError::UnknownKeyId { key_id: rotated.key_id }));
            prop_assert_eq!(state_of(&stolen), before);
        }
    }
}
