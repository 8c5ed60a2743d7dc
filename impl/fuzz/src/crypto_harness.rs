//! Decryption of arbitrary bytes: the X3DH responder with the Double Ratchet,
//! and Sender Keys.
//!
//! Built once per cipher suite: bob's prekey store (with one-time prekeys),
//! a session alice started from his verified bundle, and six messages she
//! encrypted (the first carries the X3DH header, as a `PreKey` envelope
//! does); for groups, alice's sender key distributed to bob and six group
//! messages. Each run reads the fuzzer's bytes as a script of deliveries to
//! bob: genuine messages in any order and any number of times, genuine ones
//! with a byte flipped or cut short, and arbitrary bytes. The first input byte
//! picks the suite.
//!
//! Checked after every delivery (each check panics with what it saw):
//! - nothing that fails to decrypt changes bob's session, his prekey store
//!   (a forged first message burns no one-time prekey) or his sender-key
//!   record: serialized state before and after are byte-identical;
//! - whatever decrypts is a genuine message, byte for byte, and yields alice's
//!   plaintext: no forgery, no bit flip gets through;
//! - no genuine message decrypts twice (replay) — except in the deliberately
//!   weakened build (`weak-keep-used-keys`), where the harness reports the
//!   replays it saw instead, so a test can show the check notices kept keys.

use std::sync::OnceLock;

use bluetick_crypto::prekeys::{verify_bundle, PreKeyStore};
use bluetick_crypto::ratchet::{RatchetMessage, Session};
use bluetick_crypto::sender_key::{GroupId, GroupMessage, OwnSenderKey, SenderKeyDistribution, SenderKeyRecord};
use bluetick_crypto::x3dh::{self, InitialHeader, INITIAL_HEADER_LEN_MAX, INITIAL_HEADER_LEN_MIN};
use bluetick_crypto::{CipherSuite, IdentityKeyPair};
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;

use crate::bytes::Bytes;

/// Most deliveries per run.
pub const STEPS_MAX: usize = 48;

/// Messages alice encrypts per conversation.
pub const MESSAGES: usize = 6;

const GROUP: GroupId = GroupId([0x47; 16]);

/// One genuine message: its wire bytes and plaintext.
#[derive(Debug, Clone)]
struct Genuine {
    bytes: Vec<u8>,
    plaintext: Vec<u8>,
}

struct Base {
    suite: CipherSuite,
    bob_store: PreKeyStore,
    /// `[0]` is `InitialHeader ‖ RatchetMessage`, the rest `RatchetMessage`s.
    pairwise: Vec<Genuine>,
    /// The header bytes of the first message.
    header: Vec<u8>,
    distribution: Vec<u8>,
    group: Vec<Genuine>,
}

fn base(suite_pick: u8) -> &'static Base {
    static BASES: OnceLock<[Base; 2]> = OnceLock::new();
    let bases = BASES.get_or_init(|| [build(CipherSuite::BluetickV1), build(CipherSuite::SignalV3Compat)]);
    &bases[usize::from(suite_pick & 1)]
}

fn build(suite: CipherSuite) -> Base {
    let mut rng = ChaCha20Rng::seed_from_u64(0xc0ffee);
    let alice_id = IdentityKeyPair::generate(&mut rng);
    let bob_id = IdentityKeyPair::generate(&mut rng);
    let mut bob_store = PreKeyStore::new(suite, bob_id, &mut rng, 0);
    bob_store.generate_one_time(4, &mut rng);
    let otk = bob_store.one_time_public_keys().first().map(|k| k.id);
    let bundle = bob_store.bundle(otk).unwrap_or_else(|e| panic!("bundle: {e}"));
    let verified = verify_bundle(suite, &bundle).unwrap_or_else(|e| panic!("verify: {e}"));
    let init = x3dh::initiate(suite, &alice_id, &verified, &mut rng).unwrap_or_else(|e| panic!("x3dh: {e}"));
    let mut alice = Session::initiator(
        suite,
        &init.shared_secret,
        init.associated_data.clone(),
        init.their_signed_prekey,
        &mut rng,
    )
    .unwrap_or_else(|e| panic!("session: {e}"));
    let header = init.header.to_bytes();
    let mut pairwise = Vec::new();
    for i in 0..MESSAGES {
        let plaintext = format!("pairwise message {i}").into_bytes();
        let m = alice.encrypt(&plaintext).unwrap_or_else(|e| panic!("encrypt: {e}"));
        let bytes = if i == 0 { [header.clone(), m.to_bytes()].concat() } else { m.to_bytes() };
        pairwise.push(Genuine { bytes, plaintext });
    }
    let mut sender = OwnSenderKey::new(suite, GROUP, &mut rng);
    let distribution = sender.distribution().to_bytes().to_vec();
    let group = (0..MESSAGES)
        .map(|i| {
            let plaintext = format!("group message {i}").into_bytes();
            let m = sender.encrypt(&plaintext).unwrap_or_else(|e| panic!("group encrypt: {e}"));
            Genuine { bytes: m.to_bytes(), plaintext }
        })
        .collect();
    Base { suite, bob_store, pairwise, header, distribution, group }
}

fn json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_else(|e| panic!("serialize: {e}"))
}

/// What a run saw; the weakened build's test reads `replays`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Genuine messages that decrypted (pairwise and group), with repeats.
    pub decrypted: usize,
    /// Genuine messages that decrypted a second time.
    pub replays: usize,
}

/// Whether used keys are deliberately kept (the crate feature of the build
/// that includes this harness).
const WEAK: bool = cfg!(feature = "weak-keep-used-keys");

/// Bob's side of the pairwise conversation.
struct Pairwise {
    base: &'static Base,
    store: PreKeyStore,
    session: Option<Session>,
    rng: ChaCha20Rng,
    opened: [usize; MESSAGES],
    outcome: Outcome,
}

impl Pairwise {
    fn state(&self) -> (String, Option<String>) {
        (json(&self.store), self.session.as_ref().map(json))
    }

    /// Delivers `bytes` as a `PreKey` envelope (`prekey`) or a `Message`.
    fn deliver(&mut self, bytes: &[u8], prekey: bool) {
        let before = self.state();
        let result = if prekey { self.open_prekey(bytes) } else { self.open(bytes).map(|p| (p, 0)) };
        match result {
            Some((plaintext, header_len)) => self.accept(bytes.split_at(header_len), &plaintext),
            None => assert_eq!(before, self.state(), "a rejected message changed bob's state: {}", hex::encode(bytes)),
        }
    }

    fn open(&mut self, bytes: &[u8]) -> Option<Vec<u8>> {
        let message = RatchetMessage::from_bytes(bytes).ok()?;
        let session = self.session.as_mut()?;
        session.decrypt(&message, &mut self.rng).ok().map(|p| p.to_vec())
    }

    /// The responder's path, as the client runs it: parse the header, repeat
    /// X3DH without touching the store, decrypt on a new session, and only
    /// then delete the one-time prekey and keep the session. A header bob
    /// already answered goes to the session it built.
    /// Returns the plaintext and the length of the header it came after.
    fn open_prekey(&mut self, bytes: &[u8]) -> Option<(Vec<u8>, usize)> {
        let header_len = match bytes.get(INITIAL_HEADER_LEN_MIN - 1) {
            Some(1) => INITIAL_HEADER_LEN_MAX,
            _ => INITIAL_HEADER_LEN_MIN,
        };
        let (head, rest) = bytes.split_at_checked(header_len)?;
        let header = InitialHeader::from_bytes(head).ok()?;
        if self.session.is_some() && head == self.base.header.as_slice() {
            return self.open(rest).map(|p| (p, header_len));
        }
        let responded = x3dh::respond(self.base.suite, &self.store, &header).ok()?;
        let message = RatchetMessage::from_bytes(rest).ok()?;
        let mut session = Session::responder(
            self.base.suite,
            &responded.shared_secret,
            responded.associated_data.clone(),
            responded.signed_prekey.clone(),
        );
        let plaintext = session.decrypt(&message, &mut self.rng).ok()?;
        responded.commit(&mut self.store).ok()?;
        self.session = Some(session);
        Some((plaintext.to_vec(), header_len))
    }

    /// Checks a decrypted message: its X3DH header (if any) is alice's, its
    /// ratchet bytes are one of her messages, and so is its plaintext.
    fn accept(&mut self, (header, ratchet): (&[u8], &[u8]), plaintext: &[u8]) {
        let ours = &self.base.header;
        assert!(
            header.is_empty() || header == ours.as_slice(),
            "a forged X3DH header was accepted: {}",
            hex::encode(header)
        );
        let genuine =
            self.base.pairwise.iter().position(|g| {
                g.bytes == ratchet || g.bytes.strip_prefix(ours.as_slice()).is_some_and(|r| r == ratchet)
            });
        let k = genuine.unwrap_or_else(|| panic!("a forged or altered message decrypted: {}", hex::encode(ratchet)));
        assert_eq!(plaintext, self.base.pairwise[k].plaintext.as_slice(), "message {k} decrypted to something else");
        self.outcome.decrypted += 1;
        self.opened[k] += 1;
        if self.opened[k] > 1 {
            self.outcome.replays += 1;
            if !WEAK {
                panic!("pairwise message {k} decrypted twice");
            }
        }
    }
}

/// Bob's sender-key record for alice.
struct Group {
    base: &'static Base,
    record: SenderKeyRecord,
    opened: [usize; MESSAGES],
    outcome: Outcome,
    /// The sender's key was replaced by one of its own distributions.
    rekeyed: bool,
}

impl Group {
    fn deliver(&mut self, bytes: &[u8]) {
        let before = json(&self.record);
        let result = GroupMessage::from_bytes(bytes).ok().and_then(|m| self.record.decrypt(&m).ok());
        let Some(plaintext) = result else {
            assert_eq!(
                before,
                json(&self.record),
                "a rejected group message changed the record: {}",
                hex::encode(bytes)
            );
            return;
        };
        let k = self
            .base
            .group
            .iter()
            .position(|g| g.bytes == bytes)
            .unwrap_or_else(|| panic!("a forged or altered group message decrypted: {}", hex::encode(bytes)));
        // After the sender replaced its own key (see `distribute`) its chain may
        // be one it distributed wrongly: `signal-v3-compat` has no MAC, so that
        // decrypts to garbage under a valid signature — still the sender's.
        if !self.rekeyed {
            assert_eq!(
                plaintext.as_slice(),
                self.base.group[k].plaintext.as_slice(),
                "group message {k} decrypted to something else"
            );
        }
        self.outcome.decrypted += 1;
        self.opened[k] += 1;
        if self.opened[k] > 1 && !self.rekeyed {
            self.outcome.replays += 1;
            if !WEAK {
                panic!("group message {k} decrypted twice");
            }
        }
    }

    /// A distribution arrives (pairwise, so from someone with a session):
    /// a refused one changes nothing.
    ///
    /// An accepted one with a known key id and another signing key replaces
    /// that key's state (the sender reinstalled), and the sender's older
    /// distribution then rewinds the chain again, so old messages decrypt
    /// anew. Only the sender can do that — distributions travel inside its
    /// own pairwise session, and the client files them under that sender
    /// (`on_distribution`) — so after a replacement the harness stops
    /// counting replays: found by `sender_key_decrypt`, see
    /// `corpus/sender_key_decrypt/regression-rekey-rewinds-own-chain`.
    fn distribute(&mut self, bytes: &[u8]) {
        let before = json(&self.record);
        let ok = SenderKeyDistribution::from_bytes(bytes).ok().map(|d| self.record.add_distribution(&d).is_ok());
        if ok != Some(true) {
            assert_eq!(before, json(&self.record), "a refused distribution changed the record");
        } else if before != json(&self.record) {
            self.rekeyed = true;
        }
    }
}

/// A genuine message, possibly with one byte flipped or cut short.
fn genuine_or_altered(g: &Genuine, r: &mut Bytes<'_>) -> Vec<u8> {
    let mut bytes = g.bytes.clone();
    match r.below(4) {
        0 => {
            let at = usize::from(r.u16()) % bytes.len().max(1);
            if let Some(b) = bytes.get_mut(at) {
                *b ^= r.u8() | 1;
            }
        }
        1 => bytes.truncate(usize::from(r.u16()) % (bytes.len() + 1)),
        _ => {}
    }
    bytes
}

/// Runs one pairwise script; returns what it saw.
pub fn run_ratchet(data: &[u8]) -> Outcome {
    let mut r = Bytes::new(data);
    let base = base(r.u8());
    let mut bob = Pairwise {
        base,
        store: base.bob_store.clone(),
        session: None,
        rng: ChaCha20Rng::seed_from_u64(7),
        opened: [0; MESSAGES],
        outcome: Outcome::default(),
    };
    for _ in 0..STEPS_MAX {
        if r.is_empty() {
            break;
        }
        match r.below(4) {
            0 | 1 => {
                let k = r.below(MESSAGES);
                let bytes = genuine_or_altered(&base.pairwise[k], &mut r);
                bob.deliver(&bytes, k == 0);
            }
            2 => {
                let len = usize::from(r.u8());
                let bytes = r.take(len).to_vec();
                bob.deliver(&bytes, false);
            }
            _ => {
                // Arbitrary bytes after a genuine header, or arbitrary throughout.
                let len = usize::from(r.u8());
                let tail = r.take(len).to_vec();
                let bytes = if r.bool() { [base.header.clone(), tail].concat() } else { tail };
                bob.deliver(&bytes, true);
            }
        }
    }
    bob.outcome
}

/// Runs one group script; returns what it saw.
pub fn run_sender_key(data: &[u8]) -> Outcome {
    let mut r = Bytes::new(data);
    let base = base(r.u8());
    let distribution =
        SenderKeyDistribution::from_bytes(&base.distribution).unwrap_or_else(|e| panic!("distribution: {e}"));
    let record =
        SenderKeyRecord::from_distribution(base.suite, &distribution).unwrap_or_else(|e| panic!("record: {e}"));
    let mut bob = Group { base, record, opened: [0; MESSAGES], outcome: Outcome::default(), rekeyed: false };
    for _ in 0..STEPS_MAX {
        if r.is_empty() {
            break;
        }
        match r.below(4) {
            0 | 1 => {
                let k = r.below(MESSAGES);
                let bytes = genuine_or_altered(&base.group[k], &mut r);
                bob.deliver(&bytes);
            }
            2 => {
                let len = usize::from(r.u8());
                let bytes = r.take(len).to_vec();
                bob.deliver(&bytes);
            }
            _ => {
                let mut bytes = base.distribution.clone();
                let at = r.below(bytes.len());
                bytes[at] ^= r.u8();
                bob.distribute(&bytes);
            }
        }
    }
    bob.outcome
}

/// Seed scripts of `ratchet_decrypt`: per suite, every genuine message in
/// order, in reverse (skipped keys), twice (replays), and altered.
pub fn ratchet_seeds() -> Vec<(String, Vec<u8>)> {
    scripts("ratchet")
}

/// Seed scripts of `sender_key_decrypt`, shaped like [`ratchet_seeds`].
pub fn sender_key_seeds() -> Vec<(String, Vec<u8>)> {
    scripts("group")
}

fn scripts(what: &str) -> Vec<(String, Vec<u8>)> {
    let n = MESSAGES as u8;
    let mut out = Vec::new();
    for (suite, name) in [(0u8, "bluetick-v1"), (1, "signal-v3-compat")] {
        // Step: 0 (genuine), k, 3 (unaltered).
        let in_order: Vec<u8> = (0..n).flat_map(|k| [0, k, 3]).collect();
        let reversed: Vec<u8> = (0..n).rev().flat_map(|k| [0, k, 3]).collect();
        let altered: Vec<u8> = (0..n).flat_map(|k| [0, k, 0, 7, 0, 1, 0, k, 3]).collect();
        let mut twice = vec![suite];
        twice.extend(&in_order);
        twice.extend(&in_order);
        out.push((format!("{what}-{name}-in-order"), [vec![suite], in_order].concat()));
        out.push((format!("{what}-{name}-reversed"), [vec![suite], reversed].concat()));
        out.push((format!("{what}-{name}-twice"), twice));
        out.push((format!("{what}-{name}-altered"), [vec![suite], altered].concat()));
        out.push((format!("{what}-{name}-garbage"), vec![suite, 2, 40, 1, 2, 3, 3, 70, 9, 9, 9, 1]));
    }
    out
}
