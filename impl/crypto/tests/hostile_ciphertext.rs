//! Hostile ciphertext on stable Rust: the cargo-fuzz harnesses of
//! `impl/fuzz` for Double Ratchet (with the X3DH responder) and Sender Key
//! decryption of arbitrary bytes, run on the committed seed corpora and on
//! proptest-mutated scripts. The harness source is included from
//! `impl/fuzz/src/` (one copy of the code, two drivers).
//!
//! With `--features weak-keep-used-keys` the replay check flips: the harness
//! counts replays that decrypted instead of failing on them, and
//! `replays_decrypt_only_in_the_weakened_build` asserts it saw some, which
//! shows the check notices kept keys.
//!
//! `BLUETICK_WRITE_CORPUS=1 cargo test -p bluetick-crypto --test hostile_ciphertext`
//! rewrites the seed corpora after an encoding change.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[allow(dead_code)]
#[path = "../../fuzz/src/bytes.rs"]
mod bytes;
#[path = "../../fuzz/src/crypto_harness.rs"]
mod crypto_harness;

use std::path::PathBuf;

use proptest::prelude::*;

type Seeds = fn() -> Vec<(String, Vec<u8>)>;
type Runner = fn(&[u8]) -> crypto_harness::Outcome;

fn targets() -> [(&'static str, Seeds, Runner); 2] {
    [
        ("ratchet_decrypt", crypto_harness::ratchet_seeds as Seeds, crypto_harness::run_ratchet as Runner),
        ("sender_key_decrypt", crypto_harness::sender_key_seeds, crypto_harness::run_sender_key),
    ]
}

fn corpus_dir(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus").join(target)
}

#[test]
fn committed_seed_corpora_are_current() {
    let write = std::env::var_os("BLUETICK_WRITE_CORPUS").is_some();
    for (target, seeds, _) in targets() {
        let dir = corpus_dir(target);
        if write {
            std::fs::create_dir_all(&dir).unwrap();
        }
        for (name, bytes) in seeds() {
            let path = dir.join(format!("seed-{name}"));
            if write {
                std::fs::write(&path, &bytes).unwrap();
            } else {
                let committed = std::fs::read(&path)
                    .unwrap_or_else(|e| panic!("{}: {e}; regenerate with BLUETICK_WRITE_CORPUS=1", path.display()));
                assert!(committed == bytes, "{} is stale; regenerate with BLUETICK_WRITE_CORPUS=1", path.display());
            }
        }
    }
}

#[test]
fn every_committed_corpus_input_passes_every_check() {
    for (target, _, run) in targets() {
        let mut files: Vec<PathBuf> =
            std::fs::read_dir(corpus_dir(target)).unwrap().map(|e| e.unwrap().path()).collect();
        files.sort();
        assert!(!files.is_empty(), "no corpus for {target}");
        for path in files {
            let data = std::fs::read(&path).unwrap();
            let outcome = std::panic::catch_unwind(|| run(&data));
            assert!(outcome.is_ok(), "{target} failed on {}", path.display());
        }
    }
}

#[test]
fn genuine_messages_in_order_all_decrypt() {
    // The harness itself: every genuine message gets through once, in both
    // suites, so a check that "nothing decrypts" could not pass vacuously.
    for (what, seeds, run) in [
        ("ratchet", crypto_harness::ratchet_seeds as Seeds, crypto_harness::run_ratchet as Runner),
        ("group", crypto_harness::sender_key_seeds, crypto_harness::run_sender_key),
    ] {
        for (name, script) in seeds().into_iter().filter(|(n, _)| n.ends_with("-in-order")) {
            let outcome = run(&script);
            assert_eq!(outcome.decrypted, crypto_harness::MESSAGES, "{what} {name}: {outcome:?}");
        }
    }
}

#[test]
fn replays_decrypt_only_in_the_weakened_build() {
    for (seeds, run) in [
        (crypto_harness::ratchet_seeds as Seeds, crypto_harness::run_ratchet as Runner),
        (crypto_harness::sender_key_seeds, crypto_harness::run_sender_key),
    ] {
        for (name, script) in seeds().into_iter().filter(|(n, _)| n.ends_with("-twice")) {
            let outcome = run(&script);
            if cfg!(feature = "weak-keep-used-keys") {
                assert!(outcome.replays > 0, "{name}: kept keys went unnoticed: {outcome:?}");
            } else {
                assert_eq!(outcome.replays, 0, "{name}: {outcome:?}");
            }
        }
    }
}

/// A seed with a few bytes overwritten and more appended.
fn mutated(seeds: Seeds) -> impl Strategy<Value = Vec<u8>> {
    let seeds = seeds();
    let n = seeds.len();
    (0..n, proptest::collection::vec((any::<u16>(), any::<u8>()), 0..8), proptest::collection::vec(any::<u8>(), 0..96))
        .prop_map(move |(i, edits, tail)| {
            let mut data = seeds[i].1.clone();
            for (at, b) in edits {
                if !data.is_empty() {
                    let at = usize::from(at) % data.len();
                    data[at] = b;
                }
            }
            data.extend(tail);
            data
        })
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_decrypt_or_change_a_session(data in proptest::collection::vec(any::<u8>(), 0..1024)) {
        crypto_harness::run_ratchet(&data);
    }

    #[test]
    fn altered_messages_never_decrypt_or_change_a_session(data in mutated(crypto_harness::ratchet_seeds)) {
        crypto_harness::run_ratchet(&data);
    }

    #[test]
    fn arbitrary_bytes_never_decrypt_or_change_a_sender_key(data in proptest::collection::vec(any::<u8>(), 0..1024)) {
        crypto_harness::run_sender_key(&data);
    }

    #[test]
    fn altered_group_messages_never_decrypt_or_change_a_sender_key(data in mutated(crypto_harness::sender_key_seeds)) {
        crypto_harness::run_sender_key(&data);
    }
}
