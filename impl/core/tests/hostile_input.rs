//! Hostile input on stable Rust: the cargo-fuzz harnesses of `impl/fuzz`
//! (frame decoding, the server fed arbitrary frame sequences from several
//! connections, the client fed arbitrary server frames), run here on the
//! committed seed corpora and on proptest-mutated scripts, so CI exercises the
//! same invariants without a nightly toolchain. The harness sources are
//! included from `impl/fuzz/src/` (one copy of the code, two drivers).
//!
//! `BLUETICK_WRITE_CORPUS=1 cargo test -p bluetick-core --test hostile_input`
//! rewrites the seed corpora (`impl/fuzz/corpus/<target>/`) after a protocol
//! change; otherwise the test checks they are current.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../../fuzz/src/bytes.rs"]
mod bytes;
#[allow(dead_code)]
#[path = "../../fuzz/src/client_harness.rs"]
mod client_harness;
#[allow(dead_code)]
#[path = "../../fuzz/src/server_harness.rs"]
mod server_harness;
#[path = "../../fuzz/src/wire_harness.rs"]
mod wire_harness;

use std::path::PathBuf;

use bluetick_core::server::keys::KeyBug;
use bluetick_core::server::mailbox::MailboxBug;
use bluetick_core::server::presence::PresenceBug;
use bluetick_core::server::{ServerBugs, ServerConfig};
use bluetick_core::wire::{self, ClientFrame};
use proptest::prelude::*;

use server_harness::{addr, Rig};

type Seeds = fn() -> Vec<(String, Vec<u8>)>;
type Runner = fn(&[u8]);

/// The targets whose corpora this crate generates, with their seeds and runner.
fn targets() -> Vec<(&'static str, Seeds, Runner)> {
    vec![
        ("wire_decode", wire_harness::seeds as Seeds, wire_harness::run as Runner),
        ("server_frames", server_harness::seeds, server_harness::run),
        ("client_frames", client_harness::seeds, client_harness::run),
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

/// Every file in each corpus directory: the seeds, and whatever a fuzzing
/// run or a crash reproduction added there.
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

/// A seed with a few bytes overwritten and more appended: reaches deep
/// states (logged in, group exists) that uniform random bytes rarely do.
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
    fn arbitrary_bytes_decode_or_fail_cleanly(data in proptest::collection::vec(any::<u8>(), 0..1024)) {
        wire_harness::run(&data);
    }

    #[test]
    fn mutated_real_frames_decode_or_fail_cleanly(data in mutated(wire_harness::seeds)) {
        wire_harness::run(&data);
    }

    #[test]
    fn the_server_keeps_its_invariants_under_arbitrary_scripts(data in proptest::collection::vec(any::<u8>(), 0..1024)) {
        server_harness::run(&data);
    }

    #[test]
    fn the_server_keeps_its_invariants_under_mutated_seed_scripts(data in mutated(server_harness::seeds)) {
        server_harness::run(&data);
    }

    #[test]
    fn the_client_keeps_its_invariants_under_arbitrary_server_frames(data in proptest::collection::vec(any::<u8>(), 0..1024)) {
        client_harness::run(&data);
    }

    #[test]
    fn the_client_keeps_its_invariants_under_mutated_seed_scripts(data in mutated(client_harness::seeds)) {
        client_harness::run(&data);
    }
}

/// Runs `f` and returns its panic message (it must panic).
fn panic_message(f: impl FnOnce() + std::panic::UnwindSafe) -> String {
    let err = std::panic::catch_unwind(f).expect_err("the check did not fire");
    err.downcast_ref::<String>().cloned().or_else(|| err.downcast_ref::<&str>().map(|s| s.to_string())).unwrap()
}

fn config_with(bugs: ServerBugs) -> ServerConfig {
    ServerConfig { bugs, ..ServerConfig::default() }
}

#[test]
fn the_harness_notices_a_mailbox_that_deletes_on_send() {
    let bugs = ServerBugs { mailbox: Some(MailboxBug::DeleteOnSend), ..ServerBugs::default() };
    // Bob's login hands out his queued mail, which this bug deletes unacked.
    let msg = panic_message(|| server_harness::run_with(config_with(bugs), &[]));
    assert!(msg.contains("removed"), "{msg}");
}

#[test]
fn the_harness_notices_a_one_time_prekey_handed_out_twice() {
    let bugs = ServerBugs { keys: Some(KeyBug::HandOutTwice), ..ServerBugs::default() };
    let msg = panic_message(|| {
        let mut rig = Rig::start(config_with(bugs));
        let mallory = rig.conn_of(&addr("mallory")).unwrap();
        for request in 0..2 {
            rig.feed(mallory, &wire::encode(&ClientFrame::FetchBundle { request, owner: addr("bob") }));
        }
    });
    assert!(msg.contains("handed out twice"), "{msg}");
}

#[test]
fn the_harness_notices_presence_shown_against_privacy() {
    let bugs = ServerBugs { presence: Some(PresenceBug::IgnorePrivacy), ..ServerBugs::default() };
    let msg = panic_message(|| {
        let mut rig = Rig::start(config_with(bugs));
        let mallory = rig.conn_of(&addr("mallory")).unwrap();
        // Carol shows nobody her presence.
        let users = vec![server_harness::user("carol")];
        rig.feed(mallory, &wire::encode(&ClientFrame::PresenceSubscribe { users }));
    });
    assert!(msg.contains("against its privacy setting"), "{msg}");
}

#[test]
fn without_bugs_the_same_scripts_pass() {
    let mut rig = Rig::start(ServerConfig::default());
    let mallory = rig.conn_of(&addr("mallory")).unwrap();
    for request in 0..2 {
        rig.feed(mallory, &wire::encode(&ClientFrame::FetchBundle { request, owner: addr("bob") }));
    }
    let users = vec![server_harness::user("carol")];
    rig.feed(mallory, &wire::encode(&ClientFrame::PresenceSubscribe { users }));
}

/// Reported, not fixed (the client is being changed by others): a malicious
/// server relabels alice's first (`PreKey`) message as sent by bob himself,
/// and bob shows it as his own and re-pins his own identity key to alice's.
/// One device per account means nothing legitimate ever comes from oneself.
#[test]
#[ignore = "client bug: envelopes claiming the recipient's own account are accepted; see docs/threat-model.md"]
fn a_message_relabelled_as_from_the_recipient_itself_is_refused() {
    let shown = client_harness::relabelled_as_self();
    assert!(shown.is_empty(), "bob was shown a message from himself: {shown:?}");
}

/// Receipts travel as plain frames the server routes: it can forge ticks.
/// This pins that documented weakness (docs/threat-model.md): if receipts
/// ever become end-to-end authenticated, this test must change.
#[test]
fn a_server_can_forge_blue_ticks_because_receipts_are_not_end_to_end() {
    use bluetick_core::client::{AppEvent, Client, ClientConfig, DeliveryState, PRIMARY_DEVICE};
    use bluetick_core::ids::{DeviceAddress, UserId};
    use bluetick_core::wire::{Delivery, ReceiptKind, ServerFrame};
    let alice = UserId::new("alice").unwrap();
    let mut bob = Client::new(ClientConfig::new(UserId::new("bob").unwrap(), PRIMARY_DEVICE), 1, 0);
    bob.handle_connected(0);
    bob.handle_frame(ServerFrame::Challenge { nonce: [1; 32] }, 0);
    bob.handle_frame(ServerFrame::Welcome { server_ts_ms: 0 }, 0);
    let id = bob.send_text(&alice, b"not yet sent anywhere", 0).unwrap();
    let forged = Delivery::Receipt {
        from: DeviceAddress::new(alice.clone(), PRIMARY_DEVICE),
        kind: ReceiptKind::Read,
        message_ids: vec![id],
    };
    bob.handle_frame(ServerFrame::Deliver { seq: 1, item: forged }, 0);
    let events: Vec<AppEvent> = std::iter::from_fn(|| bob.poll_event()).collect();
    assert!(
        events.contains(&AppEvent::Status { id, peer: alice, status: DeliveryState::Read }),
        "a receipt the server made up turned the ticks blue: {events:?}"
    );
}

/// What a curious server holds of a conversation: sender, recipient, time
/// and kind in clear, the body nowhere, and its exact length (no padding).
#[test]
fn the_server_sees_who_when_and_how_long_but_not_what() {
    let envelopes = client_harness::genuine_envelopes();
    let texts: Vec<_> = envelopes.iter().filter_map(|(e, body)| body.as_ref().map(|b| (e, b))).collect();
    assert!(texts.len() >= 4, "{} texts", texts.len());
    let mut overhead = std::collections::BTreeMap::new();
    for (e, body) in &texts {
        assert!(!e.ciphertext.windows(body.len()).any(|w| w == body.as_slice()), "plaintext in {e:?}");
        let key = (e.from.user.clone(), e.kind, e.group.is_some());
        let extra = e.ciphertext.len() - body.len();
        // Same sender, kind and session shape: the length differs from the
        // body's by a constant, so the server learns each body's exact length.
        assert_eq!(*overhead.entry(key).or_insert(extra), extra, "{e:?}");
    }
}
