//! Forward secrecy of X3DH session setup, checked on the crypto crate alone.
//!
//! The messaging model shows that a stolen *device* decrypts nothing it had
//! already received. This model asks the sharper question of X3DH: once a
//! one-time prekey was used and deleted, does a later theft of the responder's
//! long-term keys (identity and signed prekeys, plus whatever one-time
//! prekeys are left) recover the session key of an earlier handshake? The
//! thief runs the real `x3dh::respond` on the recorded initial header with
//! the stolen store and tries the recorded first message.
//!
//! Alice initiates sessions with Bob's bundle (with a one-time prekey while
//! any are left, or without one if the configuration allows — the fallback
//! when the stock is empty); Bob responds (deleting the one-time prekey);
//! Bob may rotate his signed prekey and later drop the retired one; the thief
//! may copy Bob's prekey store once, at any point.

use std::collections::BTreeSet;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;

use bluetick_crypto::prekeys::{verify_bundle, PreKeyStore, SIGNED_PREKEY_GRACE_MS};
use bluetick_crypto::ratchet::{RatchetMessage, Session};
use bluetick_crypto::x3dh::{self, InitialHeader};
use bluetick_crypto::{CipherSuite, IdentityKeyPair};
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;
use stateright::{Checker, Model, Property};

/// Name of the forward-secrecy property.
pub const X3DH_FORWARD_SECRECY: &str = "x3dh-forward-secrecy";
/// Name of the guard that a theft after a completed handshake is reached.
pub const X3DH_THEFT_AFTER_HANDSHAKE: &str = "sometimes-theft-after-handshake";

/// Model time of the start; only differences matter.
const START_MS: u64 = 1_000_000;

/// The X3DH model's parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct X3dhConfig {
    /// Seed of every key.
    pub seed: u64,
    /// Most handshakes Alice starts.
    pub sessions_max: usize,
    /// One-time prekeys Bob publishes.
    pub one_time_prekeys: usize,
    /// Whether Alice may start without a one-time prekey (stock empty).
    pub allow_without_one_time: bool,
}

impl X3dhConfig {
    /// Two handshakes, two one-time prekeys, never without one.
    pub fn ci() -> Self {
        X3dhConfig { seed: 11, sessions_max: 2, one_time_prekeys: 2, allow_without_one_time: false }
    }

    /// The known weakness: handshakes without a one-time prekey are
    /// recoverable by a later theft of the signed prekey (until it is rotated
    /// and the retired key dropped).
    pub fn without_one_time() -> Self {
        X3dhConfig { allow_without_one_time: true, one_time_prekeys: 0, ..X3dhConfig::ci() }
    }
}

/// One recorded handshake: what went over the wire.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Recorded {
    /// The initial header's bytes.
    pub header: Vec<u8>,
    /// The first ratchet message's bytes.
    pub message: Vec<u8>,
    /// Whether Bob responded (and deleted the one-time prekey).
    pub responded: bool,
}

/// A state of the X3DH model.
#[derive(Debug, Clone)]
pub struct XState {
    bob: Arc<PreKeyStore>,
    bob_digest: u64,
    sessions: Vec<Recorded>,
    handed_out: BTreeSet<u32>,
    rotations: u8,
    now_ms: u64,
    stolen: bool,
    /// A session responded before the theft decrypted with the stolen keys.
    broken: bool,
    theft_after_handshake: bool,
}

impl Hash for XState {
    fn hash<H: Hasher>(&self, h: &mut H) {
        self.bob_digest.hash(h);
        self.sessions.hash(h);
        self.handed_out.hash(h);
        self.rotations.hash(h);
        self.now_ms.hash(h);
        self.stolen.hash(h);
        self.broken.hash(h);
        self.theft_after_handshake.hash(h);
    }
}

impl PartialEq for XState {
    fn eq(&self, o: &Self) -> bool {
        self.bob_digest == o.bob_digest
            && self.sessions == o.sessions
            && self.handed_out == o.handed_out
            && self.rotations == o.rotations
            && self.now_ms == o.now_ms
            && self.stolen == o.stolen
            && self.broken == o.broken
            && self.theft_after_handshake == o.theft_after_handshake
    }
}

/// What can happen next.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum XAction {
    /// Alice starts a handshake, with a one-time prekey or without.
    Initiate {
        /// Use a one-time prekey.
        one_time: bool,
    },
    /// Bob answers handshake `k` and deletes its one-time prekey.
    Respond(usize),
    /// Bob rotates his signed prekey.
    Rotate,
    /// The grace period passes and Bob drops the retired signed prekey.
    DropRetired,
    /// The thief copies Bob's prekey store.
    Steal,
}

/// The model.
#[derive(Debug)]
pub struct X3dhModel {
    config: X3dhConfig,
    alice: IdentityKeyPair,
    init: XState,
}

const SUITE: CipherSuite = CipherSuite::BluetickV1;

fn digest(store: &PreKeyStore) -> u64 {
    let mut h = DefaultHasher::new();
    postcard::to_allocvec(store).unwrap_or_default().hash(&mut h);
    h.finish()
}

fn plaintext(k: usize) -> Vec<u8> {
    format!("first message of handshake {k}").into_bytes()
}

impl X3dhModel {
    /// Generates Alice's identity and Bob's prekeys from the seed.
    pub fn new(config: X3dhConfig) -> Self {
        let mut rng = ChaCha20Rng::seed_from_u64(config.seed);
        let alice = IdentityKeyPair::generate(&mut rng);
        let bob_identity = IdentityKeyPair::generate(&mut rng);
        let mut bob = PreKeyStore::new(SUITE, bob_identity, &mut rng, START_MS);
        bob.generate_one_time(config.one_time_prekeys, &mut rng);
        let init = XState {
            bob_digest: digest(&bob),
            bob: Arc::new(bob),
            sessions: Vec::new(),
            handed_out: BTreeSet::new(),
            rotations: 0,
            now_ms: START_MS,
            stolen: false,
            broken: false,
            theft_after_handshake: false,
        };
        X3dhModel { config, alice, init }
    }

    fn initiate(&self, s: &mut XState, one_time: bool) -> Option<()> {
        let k = s.sessions.len();
        let otk = if one_time {
            let id = s.bob.one_time_public_keys().into_iter().map(|b| b.id).find(|id| !s.handed_out.contains(id))?;
            s.handed_out.insert(id);
            Some(id)
        } else {
            None
        };
        let bundle = s.bob.bundle(otk).ok()?;
        let verified = verify_bundle(SUITE, &bundle).ok()?;
        let mut rng = ChaCha20Rng::seed_from_u64(self.config.seed.wrapping_add(100 + k as u64));
        let init = x3dh::initiate(SUITE, &self.alice, &verified, &mut rng).ok()?;
        let mut session =
            Session::initiator(SUITE, &init.shared_secret, init.associated_data, init.their_signed_prekey, &mut rng)
                .ok()?;
        let message = session.encrypt(&plaintext(k)).ok()?;
        s.sessions.push(Recorded { header: init.header.to_bytes(), message: message.to_bytes(), responded: false });
        Some(())
    }

    /// Whether `store` opens handshake `r`'s first message.
    fn opens(store: &PreKeyStore, r: &Recorded, k: usize) -> bool {
        let Ok(header) = InitialHeader::from_bytes(&r.header) else { return false };
        let Ok(responded) = x3dh::respond(SUITE, store, &header) else { return false };
        let mut session = Session::responder(
            SUITE,
            &responded.shared_secret,
            responded.associated_data.clone(),
            responded.signed_prekey.clone(),
        );
        let Ok(message) = RatchetMessage::from_bytes(&r.message) else { return false };
        let mut rng = ChaCha20Rng::seed_from_u64(0);
        session.decrypt(&message, &mut rng).is_ok_and(|p| *p == plaintext(k))
    }

    fn respond(s: &mut XState, k: usize) -> Option<()> {
        let r = s.sessions.get(k)?.clone();
        let header = InitialHeader::from_bytes(&r.header).ok()?;
        let responded = x3dh::respond(SUITE, &s.bob, &header).ok()?;
        if !Self::opens(&s.bob, &r, k) {
            return None;
        }
        let bob = Arc::make_mut(&mut s.bob);
        responded.commit(bob).ok()?;
        s.bob_digest = digest(bob);
        if let Some(x) = s.sessions.get_mut(k) {
            x.responded = true;
        }
        Some(())
    }

    fn steal(s: &mut XState) {
        s.stolen = true;
        for (k, r) in s.sessions.iter().enumerate() {
            if r.responded {
                s.theft_after_handshake = true;
                if Self::opens(&s.bob, r, k) {
                    s.broken = true;
                }
            }
        }
    }

    /// Checks the model exhaustively; returns (unique states, forward secrecy holds, guard reached).
    pub fn check(self) -> (usize, bool, bool) {
        let checker = self.checker().spawn_bfs().join();
        let holds = checker.discovery(X3DH_FORWARD_SECRECY).is_none();
        let reached = checker.discovery(X3DH_THEFT_AFTER_HANDSHAKE).is_some();
        (checker.unique_state_count(), holds, reached)
    }
}

impl Model for X3dhModel {
    type State = XState;
    type Action = XAction;

    fn init_states(&self) -> Vec<XState> {
        vec![self.init.clone()]
    }

    fn actions(&self, s: &XState, out: &mut Vec<XAction>) {
        if s.sessions.len() < self.config.sessions_max {
            if s.bob.one_time_public_keys().iter().any(|b| !s.handed_out.contains(&b.id)) {
                out.push(XAction::Initiate { one_time: true });
            }
            if self.config.allow_without_one_time {
                out.push(XAction::Initiate { one_time: false });
            }
        }
        for (k, r) in s.sessions.iter().enumerate() {
            if !r.responded {
                out.push(XAction::Respond(k));
            }
        }
        if s.rotations == 0 {
            out.push(XAction::Rotate);
        }
        if s.bob.previous_signed_prekey().is_some() {
            out.push(XAction::DropRetired);
        }
        if !s.stolen {
            out.push(XAction::Steal);
        }
    }

    fn next_state(&self, s: &XState, a: XAction) -> Option<XState> {
        let mut s = s.clone();
        match a {
            XAction::Initiate { one_time } => self.initiate(&mut s, one_time)?,
            XAction::Respond(k) => Self::respond(&mut s, k)?,
            XAction::Rotate => {
                let mut rng = ChaCha20Rng::seed_from_u64(self.config.seed.wrapping_add(200));
                let bob = Arc::make_mut(&mut s.bob);
                bob.rotate_signed_prekey(&mut rng, s.now_ms);
                s.bob_digest = digest(bob);
                s.rotations += 1;
            }
            XAction::DropRetired => {
                s.now_ms = s.now_ms.saturating_add(SIGNED_PREKEY_GRACE_MS);
                let bob = Arc::make_mut(&mut s.bob);
                bob.expire_signed_prekeys(s.now_ms);
                s.bob_digest = digest(bob);
            }
            XAction::Steal => Self::steal(&mut s),
        }
        Some(s)
    }

    fn properties(&self) -> Vec<Property<Self>> {
        vec![
            Property::always(X3DH_FORWARD_SECRECY, |_, s: &XState| !s.broken),
            Property::sometimes(X3DH_THEFT_AFTER_HANDSHAKE, |_, s: &XState| s.theft_after_handshake),
        ]
    }
}
