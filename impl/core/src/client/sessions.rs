//! Pairwise Double Ratchet sessions and the identity keys they were built on.
//!
//! # Several sessions per peer
//! Two users who message each other for the first time at the same moment
//! each start a session as initiator, and each then receives the other's
//! first message and builds a responder session from it. Like libsignal, a
//! peer keeps up to [`SESSIONS_PER_PEER_MAX`] sessions: the front one is used
//! for sending, every one is tried for receiving, and the one that decrypts is
//! moved to the front. Both sides therefore converge on one session as soon as
//! a message gets through in each direction.
//!
//! # First messages
//! While we are the initiator and the peer has not answered on a session, every
//! message on it is sent as `EnvelopeKind::PreKey` with the X3DH initial header
//! in front (see `content.rs`), because any of them may be the first to arrive.
//! The responder recognises later PreKey messages of a session it already
//! built by their identical initial header, and decrypts them with it (their
//! one-time prekey is gone by then).
//!
//! # Identity keys (trust on first use)
//! The identity key of each user is learned from the first verified bundle or
//! authenticated first message and pinned. A different key later is accepted
//! (the user reinstalled) but reported, so the app can warn as Signal does with
//! "safety number changed". Group changes are checked against these keys.

use std::collections::VecDeque;

use bluetick_crypto::prekeys::{PreKeyStore, VerifiedBundle};
use bluetick_crypto::ratchet::{RatchetMessage, Session};
use bluetick_crypto::x3dh::{self, InitialHeader};
use bluetick_crypto::{CipherSuite, IdentityKeyPair, PublicKey};
use rand_core::{CryptoRng, RngCore};
use serde::{Deserialize, Serialize};

use crate::client::content::{join_prekey, split_prekey, Payload};
use crate::client::journal::{Journaled, Table};
use crate::client::UndecryptableReason;
use crate::ids::{DeviceAddress, UserId};
use crate::wire::EnvelopeKind;

/// Sessions kept per peer device: the current one and a few older ones that
/// may still carry messages in flight (simultaneous first contact, a peer that
/// restarted its session). Each can hold thousands of skipped keys, so the
/// number is kept small.
pub const SESSIONS_PER_PEER_MAX: usize = 4;

#[derive(Debug, Serialize, Deserialize)]
struct Slot {
    session: Session,
    /// Our X3DH header, sent with every message until the peer answers.
    unanswered: Option<InitialHeader>,
    /// The peer's X3DH header that created this responder session.
    their_initial: Option<InitialHeader>,
    /// The peer identity key this session is bound to.
    their_identity: PublicKey,
}

/// What learning an identity key changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Learned {
    /// First key seen for the user; now pinned.
    New,
    /// The pinned key.
    Same,
    /// Another key than the pinned one; it replaced it.
    Changed,
}

/// A decrypted pairwise message.
#[derive(Debug)]
pub(crate) struct Opened {
    /// The plaintext.
    pub payload: Payload,
    /// The sender's identity key (the one the session is bound to).
    pub identity: PublicKey,
}

/// Every pairwise session and every identity key known.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct Sessions {
    peers: Table<DeviceAddress, VecDeque<Slot>>,
    identities: Table<UserId, PublicKey>,
}

fn malformed(e: impl std::fmt::Display) -> UndecryptableReason {
    UndecryptableReason::Malformed { detail: e.to_string() }
}

fn ratchet(e: impl std::fmt::Display) -> UndecryptableReason {
    UndecryptableReason::Ratchet { detail: e.to_string() }
}

impl Sessions {
    /// The tables, for incremental saves.
    pub(crate) fn tables(&mut self) -> [&mut dyn Journaled; 2] {
        [&mut self.peers, &mut self.identities]
    }

    /// The pinned identity key of `user`.
    pub fn identity(&self, user: &UserId) -> Option<PublicKey> {
        self.identities.get(user).copied()
    }

    /// Pins `key` for `user`, or replaces a different pinned key.
    pub fn learn_identity(&mut self, user: &UserId, key: PublicKey) -> Learned {
        match self.identities.get(user) {
            Some(old) if *old == key => Learned::Same,
            pinned => {
                let learned = if pinned.is_none() { Learned::New } else { Learned::Changed };
                self.identities.insert(user.clone(), key);
                learned
            }
        }
    }

    /// The encoded sessions with `peer`, for [`crate::client::ClientBug::KeepUsedMessageKeys`]
    /// (a copy taken before a decrypt still holds the key that decrypt uses).
    pub fn snapshot_peer(&self, peer: &DeviceAddress) -> Option<Vec<u8>> {
        postcard::to_allocvec(self.peers.get(peer)?).ok()
    }

    /// Sessions holding only a [`Sessions::snapshot_peer`] copy.
    pub fn from_snapshot(peer: &DeviceAddress, bytes: &[u8]) -> Option<Sessions> {
        let slots: VecDeque<Slot> = postcard::from_bytes(bytes).ok()?;
        let mut sessions = Sessions::default();
        sessions.peers.insert(peer.clone(), slots);
        Some(sessions)
    }

    /// Whether a message to `peer` can be encrypted now.
    pub fn can_send(&self, peer: &DeviceAddress) -> bool {
        self.peers.get(peer).and_then(|s| s.front()).is_some_and(|slot| slot.session.can_send())
    }

    /// Number of sessions held with `peer`.
    #[cfg(test)]
    pub fn session_count(&self, peer: &DeviceAddress) -> usize {
        self.peers.get(peer).map_or(0, VecDeque::len)
    }

    /// Starts a session as initiator from a verified bundle and makes it current.
    pub fn initiate<R: RngCore + CryptoRng>(
        &mut self,
        suite: CipherSuite,
        ours: &IdentityKeyPair,
        peer: &DeviceAddress,
        bundle: &VerifiedBundle,
        rng: &mut R,
    ) -> Result<(), String> {
        let init = x3dh::initiate(suite, ours, bundle, rng).map_err(|e| e.to_string())?;
        let session =
            Session::initiator(suite, &init.shared_secret, init.associated_data, init.their_signed_prekey, rng)
                .map_err(|e| e.to_string())?;
        let slot =
            Slot { session, unanswered: Some(init.header), their_initial: None, their_identity: bundle.identity_key() };
        self.install(peer, slot);
        Ok(())
    }

    fn install(&mut self, peer: &DeviceAddress, slot: Slot) {
        let slots = self.peers.get_or_insert_with(peer.clone(), VecDeque::new);
        slots.push_front(slot);
        slots.truncate(SESSIONS_PER_PEER_MAX);
    }

    /// Encrypts with the current session: the envelope kind and ciphertext.
    /// `None` when there is no session that can send.
    pub fn encrypt(&mut self, peer: &DeviceAddress, plaintext: &[u8]) -> Option<(EnvelopeKind, Vec<u8>)> {
        let slot = self.peers.get_mut(peer)?.front_mut()?;
        let message = slot.session.encrypt(plaintext).ok()?;
        Some(match &slot.unanswered {
            Some(header) => (EnvelopeKind::PreKey, join_prekey(header, &message)),
            None => (EnvelopeKind::Message, message.to_bytes()),
        })
    }

    /// Decrypts a pairwise envelope's ciphertext. On failure every session and
    /// the prekey store are as they were.
    pub fn decrypt<R: RngCore + CryptoRng>(
        &mut self,
        suite: CipherSuite,
        prekeys: &mut PreKeyStore,
        from: &DeviceAddress,
        kind: EnvelopeKind,
        ciphertext: &[u8],
        rng: &mut R,
    ) -> Result<Opened, UndecryptableReason> {
        match kind {
            EnvelopeKind::Message => {
                let message = RatchetMessage::from_bytes(ciphertext).map_err(malformed)?;
                self.decrypt_existing(from, &message, |_| true, rng)?.ok_or(UndecryptableReason::NoSession)
            }
            EnvelopeKind::PreKey => {
                let (header, message) = split_prekey(ciphertext).map_err(malformed)?;
                if let Some(opened) =
                    self.decrypt_existing(from, &message, |slot| slot.their_initial == Some(header), rng)?
                {
                    return Ok(opened);
                }
                self.respond(suite, prekeys, from, header, &message, rng)
            }
            EnvelopeKind::Media | EnvelopeKind::Group => Err(UndecryptableReason::UnsupportedKind { kind }),
        }
    }

    /// Tries the sessions `eligible` selects, current first. `Ok(None)` when
    /// none is eligible; the first error when all eligible ones fail.
    fn decrypt_existing<R: RngCore + CryptoRng>(
        &mut self,
        from: &DeviceAddress,
        message: &RatchetMessage,
        eligible: impl Fn(&Slot) -> bool,
        rng: &mut R,
    ) -> Result<Option<Opened>, UndecryptableReason> {
        let Some(slots) = self.peers.get_mut(from) else {
            return Ok(None);
        };
        let mut first_error = None;
        for index in 0..slots.len() {
            let Some(slot) = slots.get_mut(index) else { break };
            if !eligible(slot) {
                continue;
            }
            match slot.session.decrypt(message, rng) {
                Ok(plaintext) => {
                    // The peer answered on this session: no more initial headers.
                    slot.unanswered = None;
                    let identity = slot.their_identity;
                    if let Some(slot) = slots.remove(index) {
                        slots.push_front(slot);
                    }
                    let payload = Payload::decode(&plaintext).map_err(malformed)?;
                    return Ok(Some(Opened { payload, identity }));
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            Some(e) => Err(ratchet(e)),
            None => Ok(None),
        }
    }

    /// A first message of a session we do not have: X3DH as responder, then
    /// decrypt, and only then delete the one-time prekey and keep the session.
    fn respond<R: RngCore + CryptoRng>(
        &mut self,
        suite: CipherSuite,
        prekeys: &mut PreKeyStore,
        from: &DeviceAddress,
        header: InitialHeader,
        message: &RatchetMessage,
        rng: &mut R,
    ) -> Result<Opened, UndecryptableReason> {
        let handshake = |e: x3dh::X3dhError| UndecryptableReason::Handshake { detail: e.to_string() };
        let responded = x3dh::respond(suite, prekeys, &header).map_err(handshake)?;
        let mut session = Session::responder(
            suite,
            &responded.shared_secret,
            responded.associated_data.clone(),
            responded.signed_prekey.clone(),
        );
        let plaintext = session.decrypt(message, rng).map_err(ratchet)?;
        responded.commit(prekeys).map_err(handshake)?;
        let slot = Slot { session, unanswered: None, their_initial: Some(header), their_identity: header.identity_key };
        self.install(from, slot);
        let payload = Payload::decode(&plaintext).map_err(malformed)?;
        Ok(Opened { payload, identity: header.identity_key })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::content::Content;
    use crate::ids::{DeviceId, MessageId};
    use bluetick_crypto::prekeys::verify_bundle;
    use rand_chacha::rand_core::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    const SUITE: CipherSuite = CipherSuite::BluetickV1;

    struct Party {
        addr: DeviceAddress,
        store: PreKeyStore,
        sessions: Sessions,
        rng: ChaCha20Rng,
    }

    fn party(name: &str, seed: u64) -> Party {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let identity = IdentityKeyPair::generate(&mut rng);
        let mut store = PreKeyStore::new(SUITE, identity, &mut rng, 0);
        store.generate_one_time(2, &mut rng);
        Party {
            addr: DeviceAddress::new(UserId::new(name).unwrap(), DeviceId(1)),
            store,
            sessions: Sessions::default(),
            rng,
        }
    }

    fn text(id: u8) -> Vec<u8> {
        Payload { message_id: MessageId([id; 16]), content: Content::Text { body: vec![id] } }.encode()
    }

    fn start(a: &mut Party, b: &Party) {
        let otk = b.store.one_time_public_keys().first().map(|k| k.id);
        let bundle = verify_bundle(SUITE, &b.store.bundle(otk).unwrap()).unwrap();
        a.sessions.initiate(SUITE, a.store.identity(), &b.addr, &bundle, &mut a.rng).unwrap();
    }

    fn send(a: &mut Party, b: &mut Party, id: u8) -> Result<Opened, UndecryptableReason> {
        let (kind, ct) = a.sessions.encrypt(&b.addr, &text(id)).unwrap();
        b.sessions.decrypt(SUITE, &mut b.store, &a.addr, kind, &ct, &mut b.rng)
    }

    #[test]
    fn messages_are_prekey_until_the_peer_answers() {
        let mut a = party("alice", 1);
        let mut b = party("bob", 2);
        start(&mut a, &b);
        let (k1, _) = a.sessions.encrypt(&b.addr, &text(1)).unwrap();
        assert_eq!(k1, EnvelopeKind::PreKey);
        send(&mut a, &mut b, 2).unwrap();
        // Bob received: he can send, and his answer turns Alice's sends into Messages.
        let (kind, ct) = b.sessions.encrypt(&a.addr, &text(3)).unwrap();
        assert_eq!(kind, EnvelopeKind::Message);
        a.sessions.decrypt(SUITE, &mut a.store, &b.addr, kind, &ct, &mut a.rng).unwrap();
        assert_eq!(a.sessions.encrypt(&b.addr, &text(4)).unwrap().0, EnvelopeKind::Message);
    }

    #[test]
    fn later_prekey_messages_reuse_the_session_after_the_one_time_key_is_gone() {
        let mut a = party("alice", 1);
        let mut b = party("bob", 2);
        start(&mut a, &b);
        let before = b.store.one_time_count();
        let m1 = a.sessions.encrypt(&b.addr, &text(1)).unwrap();
        let m2 = a.sessions.encrypt(&b.addr, &text(2)).unwrap();
        let o1 = b.sessions.decrypt(SUITE, &mut b.store, &a.addr, m1.0, &m1.1, &mut b.rng).unwrap();
        assert_eq!(b.store.one_time_count(), before - 1, "one-time prekey deleted on commit");
        let o2 = b.sessions.decrypt(SUITE, &mut b.store, &a.addr, m2.0, &m2.1, &mut b.rng).unwrap();
        assert_eq!(o1.payload.message_id, MessageId([1; 16]));
        assert_eq!(o2.payload.message_id, MessageId([2; 16]));
        assert_eq!(o2.identity, a.store.identity().public());
        assert_eq!(b.sessions.session_count(&a.addr), 1);
    }

    #[test]
    fn simultaneous_first_contact_converges_on_one_session() {
        let mut a = party("alice", 1);
        let mut b = party("bob", 2);
        start(&mut a, &b);
        start(&mut b, &a);
        let from_a = a.sessions.encrypt(&b.addr, &text(1)).unwrap();
        let from_b = b.sessions.encrypt(&a.addr, &text(2)).unwrap();
        b.sessions.decrypt(SUITE, &mut b.store, &a.addr, from_a.0, &from_a.1, &mut b.rng).unwrap();
        a.sessions.decrypt(SUITE, &mut a.store, &b.addr, from_b.0, &from_b.1, &mut a.rng).unwrap();
        // Each now sends on the responder session it built; the other finds it among its sessions.
        for round in 0..3u8 {
            send(&mut a, &mut b, 10 + round).unwrap();
            send(&mut b, &mut a, 20 + round).unwrap();
        }
        assert_eq!(a.sessions.encrypt(&b.addr, &text(30)).unwrap().0, EnvelopeKind::Message);
    }

    #[test]
    fn replay_and_garbage_fail_without_changing_anything() {
        let mut a = party("alice", 1);
        let mut b = party("bob", 2);
        start(&mut a, &b);
        let m1 = a.sessions.encrypt(&b.addr, &text(1)).unwrap();
        b.sessions.decrypt(SUITE, &mut b.store, &a.addr, m1.0, &m1.1, &mut b.rng).unwrap();
        let replay = b.sessions.decrypt(SUITE, &mut b.store, &a.addr, m1.0, &m1.1, &mut b.rng);
        assert!(matches!(replay, Err(UndecryptableReason::Ratchet { .. })), "{replay:?}");
        let garbage = b.sessions.decrypt(SUITE, &mut b.store, &a.addr, EnvelopeKind::Message, &[1, 2], &mut b.rng);
        assert!(matches!(garbage, Err(UndecryptableReason::Malformed { .. })));
        let stranger = DeviceAddress::new(UserId::new("mallory").unwrap(), DeviceId(1));
        let (kind, ct) = a.sessions.encrypt(&b.addr, &text(2)).unwrap();
        assert!(b
            .sessions
            .decrypt(SUITE, &mut b.store, &stranger, EnvelopeKind::Message, &ct[69..], &mut b.rng)
            .is_err());
        // The genuine next message still opens.
        assert!(b.sessions.decrypt(SUITE, &mut b.store, &a.addr, kind, &ct, &mut b.rng).is_ok());
    }

    #[test]
    fn identity_keys_are_pinned_and_changes_reported() {
        let mut s = Sessions::default();
        let u = UserId::new("alice").unwrap();
        assert_eq!(s.learn_identity(&u, PublicKey([1; 32])), Learned::New);
        assert_eq!(s.learn_identity(&u, PublicKey([1; 32])), Learned::Same);
        assert_eq!(s.learn_identity(&u, PublicKey([2; 32])), Learned::Changed);
        assert_eq!(s.identity(&u), Some(PublicKey([2; 32])));
    }
}
