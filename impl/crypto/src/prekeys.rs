//! Prekeys: what a device publishes so others can start a session with it while
//! it is offline, and the check an initiator must pass before using them.
//!
//! # The pieces
//! - [`SignedPreKey`]: a medium-term X25519 key pair, signed (XEdDSA) by the
//!   identity key over `suite.encode_public(spk)`. Rotated on the caller's
//!   schedule; the store keeps the previous one for [`SIGNED_PREKEY_GRACE_MS`]
//!   so initial messages built from a bundle fetched before a rotation still open.
//! - [`OneTimePreKey`]: a single-use X25519 key pair. Once a session built on it
//!   is committed, its private half is deleted (and zeroized), which is what gives
//!   the first message forward secrecy against a later theft of the device.
//! - [`PreKeyBundle`]: the public, unauthenticated data the key distribution
//!   server hands out.
//! - [`VerifiedBundle`]: a capability. Only [`verify_bundle`] builds one, after
//!   checking the signature and rejecting low-order keys, and X3DH accepts nothing
//!   else — "start a session from an unverified bundle" does not compile.
//! - [`PreKeyStore`]: the owner's side: identity, signed prekeys, one-time stock.

use std::collections::BTreeMap;
use std::fmt;

use rand_core::{CryptoRng, RngCore};
use serde::{Deserialize, Serialize};

use crate::keys::{IdentityKeyPair, KeyPair, PublicKey};
use crate::suite::CipherSuite;
use crate::xeddsa::{Signature, SignatureError};

/// Largest number of unused one-time prekeys a store holds.
///
/// Signal's server accepts uploads of 100 at a time and clients top up when the
/// stock runs low; holding more only lengthens the window in which a stolen
/// device reveals first messages not yet received, and grows persisted state.
pub const ONE_TIME_PREKEY_STOCK_MAX: usize = 100;

/// How long a replaced signed prekey stays usable, in milliseconds (30 days).
///
/// An initial message can be built from a bundle fetched just before a rotation
/// and then wait at the server until the recipient comes online. WhatsApp-style
/// servers hold undelivered messages for 30 days, so the previous signed prekey
/// must live that long for such a message to open; keeping it longer only widens
/// what a device compromise exposes.
pub const SIGNED_PREKEY_GRACE_MS: u64 = 30 * 24 * 60 * 60 * 1000;

/// Why a bundle was refused. Variants are in the order [`verify_bundle`] checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BundleError {
    /// The identity key has no Ed25519 form, so no signature by it can verify.
    #[error("identity key {identity_key:?} cannot verify signatures")]
    UnusableIdentityKey {
        /// The identity key in the bundle.
        identity_key: PublicKey,
    },
    /// The signed prekey's signature does not verify under the identity key:
    /// the server (or someone in between) substituted the prekey or the identity.
    #[error("signature on signed prekey {signed_prekey_id} does not verify under identity {identity_key:?}")]
    BadSignature {
        /// The identity key in the bundle.
        identity_key: PublicKey,
        /// The id of the signed prekey whose signature failed.
        signed_prekey_id: u32,
    },
    /// The identity key is a low-order point (XEdDSA signatures by such a key
    /// can be forged, and every DH with it is all zeros).
    #[error("identity key {identity_key:?} is a low-order point")]
    LowOrderIdentityKey {
        /// The offending key.
        identity_key: PublicKey,
    },
    /// The signed prekey is a low-order point, so DH with it is all zeros.
    #[error("signed prekey {signed_prekey_id} ({key:?}) is a low-order point")]
    LowOrderSignedPreKey {
        /// The signed prekey's id.
        signed_prekey_id: u32,
        /// The offending key.
        key: PublicKey,
    },
    /// The one-time prekey is a low-order point, so DH with it is all zeros.
    #[error("one-time prekey {one_time_prekey_id} ({key:?}) is a low-order point")]
    LowOrderOneTimePreKey {
        /// The one-time prekey's id.
        one_time_prekey_id: u32,
        /// The offending key.
        key: PublicKey,
    },
}

/// Errors from the owner's prekey store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PreKeyError {
    /// No unused one-time prekey has this id: it was never issued, or a session
    /// built on it was already committed and the key deleted.
    #[error("no one-time prekey with id {id}")]
    UnknownOneTimePreKey {
        /// The id asked for.
        id: u32,
    },
}

/// True when `key` has order dividing 8 (the cofactor), i.e. it lies in the
/// small subgroup of the curve or its twist: X25519 with it yields all zeros for
/// every clamped private key.
///
/// A lookup in the blocklist libsodium also uses, not a scalar
/// multiplication: the server checks every uploaded prekey, and a ladder per
/// key was 40% of a 1,000-user simulation's time. The list is complete: the
/// u-coordinates of points of order dividing 8 on the curve and its twist
/// are 0, 1, p − 1 and the two order-8 values; X25519 ignores the top bit,
/// and the only other encodings below 2^255 of those residues are p and
/// p + 1. A test checks the list against the ladder.
pub fn is_low_order(key: &PublicKey) -> bool {
    let mut u = key.0;
    u[31] &= 0x7f;
    LOW_ORDER_U.contains(&u)
}

/// The encodings (top bit clear) of the points of order dividing 8.
const LOW_ORDER_U: [[u8; 32]; 7] = [
    // 0
    [
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    ],
    // 1
    [
        0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    ],
    // an order-8 point
    [
        0xe0, 0xeb, 0x7a, 0x7c, 0x3b, 0x41, 0xb8, 0xae, 0x16, 0x56, 0xe3, 0xfa, 0xf1, 0x9f, 0xc4, 0x6a, 0xda, 0x09,
        0x8d, 0xeb, 0x9c, 0x32, 0xb1, 0xfd, 0x86, 0x62, 0x05, 0x16, 0x5f, 0x49, 0xb8, 0x00,
    ],
    // the other order-8 point
    [
        0x5f, 0x9c, 0x95, 0xbc, 0xa3, 0x50, 0x8c, 0x24, 0xb1, 0xd0, 0xb1, 0x55, 0x9c, 0x83, 0xef, 0x5b, 0x04, 0x44,
        0x5c, 0xc4, 0x58, 0x1c, 0x8e, 0x86, 0xd8, 0x22, 0x4e, 0xdd, 0xd0, 0x9f, 0x11, 0x57,
    ],
    // p − 1
    [
        0xec, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f,
    ],
    // p, a non-canonical zero
    [
        0xed, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f,
    ],
    // p + 1, a non-canonical one
    [
        0xee, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f,
    ],
];

/// A medium-term prekey signed by the identity key.
#[derive(Clone, Serialize, Deserialize)]
pub struct SignedPreKey {
    id: u32,
    created_at_ms: u64,
    key_pair: KeyPair,
    signature: Signature,
}

impl SignedPreKey {
    /// Draws a fresh key pair and signs `suite.encode_public(public)` with
    /// `identity`: the raw 32 bytes for `bluetick-v1`, the 33-byte `0x05`-prefixed
    /// form for `signal-v3-compat` (what libsignal signs).
    pub fn generate<R: RngCore + CryptoRng>(
        suite: CipherSuite,
        identity: &IdentityKeyPair,
        id: u32,
        created_at_ms: u64,
        rng: &mut R,
    ) -> Self {
        let key_pair = suite.generate_key_pair(rng);
        Self::from_key_pair(suite, identity, id, created_at_ms, key_pair, rng)
    }

    /// Signs an existing key pair (known-answer tests, imported state); `rng`
    /// only supplies the XEdDSA nonce padding.
    pub fn from_key_pair<R: RngCore + CryptoRng>(
        suite: CipherSuite,
        identity: &IdentityKeyPair,
        id: u32,
        created_at_ms: u64,
        key_pair: KeyPair,
        rng: &mut R,
    ) -> Self {
        let signature = suite.sign(identity, &suite.encode_public(&key_pair.public()), rng);
        SignedPreKey { id, created_at_ms, key_pair, signature }
    }

    /// The id the bundle and the initial message refer to it by.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// When it was created, in the caller's milliseconds.
    pub fn created_at_ms(&self) -> u64 {
        self.created_at_ms
    }

    /// The key pair; the responder's first ratchet key.
    pub fn key_pair(&self) -> &KeyPair {
        &self.key_pair
    }

    /// The public half.
    pub fn public(&self) -> PublicKey {
        self.key_pair.public()
    }

    /// The identity key's XEdDSA signature over the encoded public half.
    pub fn signature(&self) -> Signature {
        self.signature
    }
}

impl fmt::Debug for SignedPreKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SignedPreKey")
            .field("id", &self.id)
            .field("created_at_ms", &self.created_at_ms)
            .field("key_pair", &self.key_pair)
            .finish_non_exhaustive()
    }
}

/// A single-use prekey. Its private half is dropped (and zeroized) when a
/// session built on it is committed.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct OneTimePreKey {
    id: u32,
    key_pair: KeyPair,
}

impl OneTimePreKey {
    /// The id the bundle and the initial message refer to it by.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The key pair.
    pub fn key_pair(&self) -> &KeyPair {
        &self.key_pair
    }

    /// The public half.
    pub fn public(&self) -> PublicKey {
        self.key_pair.public()
    }
}

/// The public half of a one-time prekey as it travels in a bundle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundledOneTimePreKey {
    /// Its id.
    pub id: u32,
    /// Its public key.
    pub key: PublicKey,
}

/// What the key distribution server hands an initiator. Nothing here is
/// trusted until [`verify_bundle`] has checked it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreKeyBundle {
    /// The responder's long-term identity key.
    pub identity_key: PublicKey,
    /// Id of the signed prekey.
    pub signed_prekey_id: u32,
    /// The signed prekey.
    pub signed_prekey: PublicKey,
    /// XEdDSA signature by `identity_key` over the suite's encoding of `signed_prekey`.
    pub signed_prekey_signature: Signature,
    /// A one-time prekey, if the server had one left.
    pub one_time_prekey: Option<BundledOneTimePreKey>,
}

/// A bundle whose signature verified and whose keys are all usable for DH.
///
/// The fields are private and there is no `Deserialize`: [`verify_bundle`] is
/// the only way to obtain one, so X3DH cannot be started from unchecked keys:
///
/// ```compile_fail
/// # use bluetick_crypto::{prekeys::VerifiedBundle, CipherSuite, PublicKey};
/// let forged = VerifiedBundle {
///     suite: CipherSuite::BluetickV1,
///     identity_key: PublicKey([9; 32]),
///     signed_prekey_id: 1,
///     signed_prekey: PublicKey([9; 32]),
///     one_time_prekey: None,
/// };
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedBundle {
    suite: CipherSuite,
    identity_key: PublicKey,
    signed_prekey_id: u32,
    signed_prekey: PublicKey,
    one_time_prekey: Option<BundledOneTimePreKey>,
}

impl VerifiedBundle {
    /// The suite the signature was checked under.
    pub fn suite(&self) -> CipherSuite {
        self.suite
    }

    /// The responder's identity key.
    pub fn identity_key(&self) -> PublicKey {
        self.identity_key
    }

    /// Id of the signed prekey.
    pub fn signed_prekey_id(&self) -> u32 {
        self.signed_prekey_id
    }

    /// The signed prekey.
    pub fn signed_prekey(&self) -> PublicKey {
        self.signed_prekey
    }

    /// The one-time prekey, if the bundle had one.
    pub fn one_time_prekey(&self) -> Option<BundledOneTimePreKey> {
        self.one_time_prekey
    }
}

/// Checks a bundle and, if it holds, returns the capability X3DH requires.
///
/// The signature is checked first, before any key is used in any computation,
/// so a substituted bundle is reported as [`BundleError::BadSignature`] whatever
/// else is wrong with it. Low-order keys are then refused even under a valid
/// signature: a low-order identity key admits forged signatures, and any
/// low-order key makes a DH output all zeros.
pub fn verify_bundle(suite: CipherSuite, bundle: &PreKeyBundle) -> Result<VerifiedBundle, BundleError> {
    let message = suite.encode_public(&bundle.signed_prekey);
    suite.verify(&bundle.identity_key, &message, &bundle.signed_prekey_signature).map_err(|e| match e {
        SignatureError::UnusableKey(identity_key) => BundleError::UnusableIdentityKey { identity_key },
        SignatureError::Invalid(identity_key) => {
            BundleError::BadSignature { identity_key, signed_prekey_id: bundle.signed_prekey_id }
        }
    })?;
    if is_low_order(&bundle.identity_key) {
        return Err(BundleError::LowOrderIdentityKey { identity_key: bundle.identity_key });
    }
    if is_low_order(&bundle.signed_prekey) {
        return Err(BundleError::LowOrderSignedPreKey {
            signed_prekey_id: bundle.signed_prekey_id,
            key: bundle.signed_prekey,
        });
    }
    if let Some(otk) = bundle.one_time_prekey {
        if is_low_order(&otk.key) {
            return Err(BundleError::LowOrderOneTimePreKey { one_time_prekey_id: otk.id, key: otk.key });
        }
    }
    Ok(VerifiedBundle {
        suite,
        identity_key: bundle.identity_key,
        signed_prekey_id: bundle.signed_prekey_id,
        signed_prekey: bundle.signed_prekey,
        one_time_prekey: bundle.one_time_prekey,
    })
}

/// A signed prekey that has been replaced but is still accepted until
/// `retired_at_ms + SIGNED_PREKEY_GRACE_MS`.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct RetiredSignedPreKey {
    retired_at_ms: u64,
    signed_prekey: SignedPreKey,
}

/// The owner's prekey state: identity, signed prekeys and one-time stock.
///
/// It serializes completely (secrets as hex), so a device can persist it and
/// resume after a crash with the same keys and id counters.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PreKeyStore {
    suite: CipherSuite,
    identity: IdentityKeyPair,
    signed_prekey: SignedPreKey,
    previous_signed_prekey: Option<RetiredSignedPreKey>,
    one_time_prekeys: BTreeMap<u32, OneTimePreKey>,
    next_signed_prekey_id: u32,
    next_one_time_prekey_id: u32,
    /// Counts changes, so an owner saving incrementally can tell whether the
    /// store changed since its last save without encoding it. Not saved: it
    /// restarts at 0 with every restored store.
    #[serde(skip)]
    changes: u64,
}

impl PreKeyStore {
    /// A number that changes whenever the store changes: how often it did
    /// since it was created or restored (not part of the saved state).
    pub fn change_count(&self) -> u64 {
        self.changes
    }

    /// A store for `identity` with a fresh signed prekey (id 1) and no one-time prekeys.
    pub fn new<R: RngCore + CryptoRng>(
        suite: CipherSuite,
        identity: IdentityKeyPair,
        rng: &mut R,
        now_ms: u64,
    ) -> Self {
        let signed_prekey = SignedPreKey::generate(suite, &identity, 1, now_ms, rng);
        PreKeyStore {
            suite,
            identity,
            signed_prekey,
            previous_signed_prekey: None,
            one_time_prekeys: BTreeMap::new(),
            next_signed_prekey_id: 2,
            next_one_time_prekey_id: 1,
            changes: 0,
        }
    }

    /// The suite every signature in this store was made under.
    pub fn suite(&self) -> CipherSuite {
        self.suite
    }

    /// The owner's identity.
    pub fn identity(&self) -> &IdentityKeyPair {
        &self.identity
    }

    /// The signed prekey bundles currently advertise.
    pub fn signed_prekey(&self) -> &SignedPreKey {
        &self.signed_prekey
    }

    /// The replaced signed prekey still inside its grace period, if any.
    pub fn previous_signed_prekey(&self) -> Option<&SignedPreKey> {
        self.previous_signed_prekey.as_ref().map(|r| &r.signed_prekey)
    }

    /// The current or previous signed prekey with this id.
    pub fn signed_prekey_by_id(&self, id: u32) -> Option<&SignedPreKey> {
        if self.signed_prekey.id == id {
            return Some(&self.signed_prekey);
        }
        self.previous_signed_prekey().filter(|spk| spk.id == id)
    }

    /// The unused one-time prekey with this id.
    pub fn one_time_prekey(&self, id: u32) -> Option<&OneTimePreKey> {
        self.one_time_prekeys.get(&id)
    }

    /// How many unused one-time prekeys are left.
    pub fn one_time_count(&self) -> usize {
        self.one_time_prekeys.len()
    }

    /// The public halves of every unused one-time prekey, by id, for upload.
    pub fn one_time_public_keys(&self) -> Vec<BundledOneTimePreKey> {
        self.one_time_prekeys.values().map(|k| BundledOneTimePreKey { id: k.id, key: k.public() }).collect()
    }

    /// Tops the stock up by `count` fresh one-time prekeys, stopping at
    /// [`ONE_TIME_PREKEY_STOCK_MAX`], and returns the new ones for upload (fewer
    /// than `count` when the stock is full).
    pub fn generate_one_time<R: RngCore + CryptoRng>(
        &mut self,
        count: usize,
        rng: &mut R,
    ) -> Vec<BundledOneTimePreKey> {
        self.changes += 1;
        let room = ONE_TIME_PREKEY_STOCK_MAX.saturating_sub(self.one_time_prekeys.len());
        let mut out = Vec::with_capacity(count.min(room));
        for _ in 0..count.min(room) {
            let id = self.take_one_time_id();
            let key_pair = self.suite.generate_key_pair(rng);
            out.push(BundledOneTimePreKey { id, key: key_pair.public() });
            self.one_time_prekeys.insert(id, OneTimePreKey { id, key_pair });
        }
        out
    }

    /// Next unused one-time id. Ids wrap after 2^32 issues; an id still in stock
    /// is skipped, and since the stock holds at most
    /// [`ONE_TIME_PREKEY_STOCK_MAX`] keys the loop ends within that many steps.
    fn take_one_time_id(&mut self) -> u32 {
        loop {
            let id = self.next_one_time_prekey_id;
            self.next_one_time_prekey_id = id.wrapping_add(1);
            if !self.one_time_prekeys.contains_key(&id) {
                return id;
            }
        }
    }

    /// A bundle for upload to (or hand-out by) the server, with the one-time
    /// prekey `one_time_prekey_id` if given.
    pub fn bundle(&self, one_time_prekey_id: Option<u32>) -> Result<PreKeyBundle, PreKeyError> {
        let one_time_prekey = match one_time_prekey_id {
            None => None,
            Some(id) => {
                let otk = self.one_time_prekeys.get(&id).ok_or(PreKeyError::UnknownOneTimePreKey { id })?;
                Some(BundledOneTimePreKey { id, key: otk.public() })
            }
        };
        Ok(PreKeyBundle {
            identity_key: self.identity.public(),
            signed_prekey_id: self.signed_prekey.id,
            signed_prekey: self.signed_prekey.public(),
            signed_prekey_signature: self.signed_prekey.signature,
            one_time_prekey,
        })
    }

    /// Replaces the signed prekey with a fresh one and returns its id. The old
    /// one stays usable for [`SIGNED_PREKEY_GRACE_MS`]; one that was already
    /// retired is dropped now (only one previous key is kept).
    pub fn rotate_signed_prekey<R: RngCore + CryptoRng>(&mut self, rng: &mut R, now_ms: u64) -> u32 {
        let key_pair = self.suite.generate_key_pair(rng);
        self.install_signed_prekey(key_pair, rng, now_ms)
    }

    /// Like [`PreKeyStore::rotate_signed_prekey`] with a given key pair, which the
    /// store signs with its identity (known-answer tests, imported keys).
    pub fn install_signed_prekey<R: RngCore + CryptoRng>(
        &mut self,
        key_pair: KeyPair,
        rng: &mut R,
        now_ms: u64,
    ) -> u32 {
        self.changes += 1;
        let id = self.next_signed_prekey_id;
        self.next_signed_prekey_id = id.wrapping_add(1);
        let fresh = SignedPreKey::from_key_pair(self.suite, &self.identity, id, now_ms, key_pair, rng);
        let old = std::mem::replace(&mut self.signed_prekey, fresh);
        self.previous_signed_prekey = Some(RetiredSignedPreKey { retired_at_ms: now_ms, signed_prekey: old });
        id
    }

    /// Drops the previous signed prekey once its grace period has passed; call
    /// it on the same schedule as rotation. Returns whether one was dropped.
    pub fn expire_signed_prekeys(&mut self, now_ms: u64) -> bool {
        let expired = self
            .previous_signed_prekey
            .as_ref()
            .is_some_and(|r| now_ms >= r.retired_at_ms.saturating_add(SIGNED_PREKEY_GRACE_MS));
        if expired {
            self.changes += 1;
            self.previous_signed_prekey = None;
        }
        expired
    }

    /// Deletes one-time prekey `id`; its private half is zeroized as it drops.
    /// Call only once the session built on it is known good (the first message
    /// decrypted), so a forged initial message cannot burn a key.
    ///
    /// With the test-only feature `weak-keep-used-keys` the key is deliberately
    /// kept, so replay tests can show they catch a store that forgets to delete.
    pub fn consume_one_time(&mut self, id: u32) -> Result<(), PreKeyError> {
        if !self.one_time_prekeys.contains_key(&id) {
            return Err(PreKeyError::UnknownOneTimePreKey { id });
        }
        self.changes += 1;
        #[cfg(not(feature = "weak-keep-used-keys"))]
        drop(self.one_time_prekeys.remove(&id));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use curve25519_dalek::montgomery::MontgomeryPoint;
    use curve25519_dalek::scalar::Scalar;
    use rand_chacha::rand_core::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    const SUITES: [CipherSuite; 2] = [CipherSuite::BluetickV1, CipherSuite::SignalV3Compat];

    /// The X25519 points of order dividing 8, as listed by Bernstein's Curve25519
    /// page and libsodium's blocklist, plus non-canonical encodings of 0 and 1.
    pub(crate) fn low_order_points() -> Vec<PublicKey> {
        let hexes = [
            "0000000000000000000000000000000000000000000000000000000000000000",
            "0100000000000000000000000000000000000000000000000000000000000000",
            "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800",
            "5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157",
            "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
            "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
            "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        ];
        hexes.iter().map(|h| PublicKey(hex::decode(h).unwrap().try_into().unwrap())).collect()
    }

    fn store(suite: CipherSuite, seed: u64) -> (PreKeyStore, ChaCha20Rng) {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let identity = IdentityKeyPair::generate(&mut rng);
        (PreKeyStore::new(suite, identity, &mut rng, 1_000), rng)
    }

    #[test]
    fn low_order_detection_matches_the_known_list_and_spares_real_keys() {
        for p in low_order_points() {
            assert!(is_low_order(&p), "{p:?}");
            // The same points with the ignored top bit set are still low order.
            let mut high = p;
            high.0[31] |= 0x80;
            assert!(is_low_order(&high), "{high:?}");
        }
        let mut rng = ChaCha20Rng::seed_from_u64(3);
        for _ in 0..64 {
            assert!(!is_low_order(&KeyPair::generate(&mut rng).public()));
        }
    }

    /// The reference: multiplying by the cofactor gives the identity exactly
    /// for points of order dividing 8.
    fn low_order_by_ladder(key: &PublicKey) -> bool {
        (MontgomeryPoint(key.0) * Scalar::from(8u8)).to_bytes() == [0u8; 32]
    }

    #[test]
    fn the_blocklist_agrees_with_the_ladder() {
        for p in low_order_points() {
            assert!(low_order_by_ladder(&p), "{p:?} is not low order: the blocklist is wrong");
        }
        let mut rng = ChaCha20Rng::seed_from_u64(4);
        // Random encodings, and the neighbours of each listed one (off-by-one
        // residues are where a wrong list would show).
        let mut keys: Vec<PublicKey> = (0..256)
            .map(|_| {
                let mut b = [0u8; 32];
                rng.fill_bytes(&mut b);
                PublicKey(b)
            })
            .collect();
        for p in low_order_points() {
            for delta in [1u8, 2, 3] {
                let mut up = p;
                up.0[0] = up.0[0].wrapping_add(delta);
                let mut down = p;
                down.0[0] = down.0[0].wrapping_sub(delta);
                keys.extend([up, down]);
            }
        }
        for k in keys {
            assert_eq!(is_low_order(&k), low_order_by_ladder(&k), "{k:?}");
        }
    }

    #[test]
    fn store_bundle_verifies_under_its_suite_only() {
        for suite in SUITES {
            let (mut store, mut rng) = store(suite, 1);
            let otks = store.generate_one_time(3, &mut rng);
            let bundle = store.bundle(Some(otks[1].id)).unwrap();
            let verified = verify_bundle(suite, &bundle).unwrap();
            assert_eq!(verified.identity_key(), store.identity().public());
            assert_eq!(verified.signed_prekey(), store.signed_prekey().public());
            assert_eq!(verified.one_time_prekey(), Some(otks[1]));
            let other = match suite {
                CipherSuite::BluetickV1 => CipherSuite::SignalV3Compat,
                CipherSuite::SignalV3Compat | CipherSuite::SymbolicInsecure => CipherSuite::BluetickV1,
            };
            assert!(matches!(verify_bundle(other, &bundle), Err(BundleError::BadSignature { .. })));
        }
    }

    #[test]
    fn bad_signature_is_reported_before_low_order_keys_are_looked_at() {
        let (store, _) = store(CipherSuite::BluetickV1, 2);
        let mut bundle = store.bundle(None).unwrap();
        let zero = low_order_points()[0];
        bundle.signed_prekey = zero;
        bundle.one_time_prekey = Some(BundledOneTimePreKey { id: 9, key: zero });
        assert_eq!(
            verify_bundle(CipherSuite::BluetickV1, &bundle),
            Err(BundleError::BadSignature { identity_key: store.identity().public(), signed_prekey_id: 1 })
        );
    }

    #[test]
    fn substituted_identity_or_prekey_fails_the_signature() {
        let (store, mut rng) = store(CipherSuite::SignalV3Compat, 4);
        let good = store.bundle(None).unwrap();
        let mut swapped_spk = good.clone();
        swapped_spk.signed_prekey = KeyPair::generate(&mut rng).public();
        assert!(matches!(
            verify_bundle(CipherSuite::SignalV3Compat, &swapped_spk),
            Err(BundleError::BadSignature { .. })
        ));
        let mut swapped_id = good.clone();
        swapped_id.identity_key = IdentityKeyPair::generate(&mut rng).public();
        assert!(matches!(
            verify_bundle(CipherSuite::SignalV3Compat, &swapped_id),
            Err(BundleError::BadSignature { .. })
        ));
        let mut flipped = good;
        flipped.signed_prekey_signature.0[10] ^= 0x04;
        assert!(matches!(verify_bundle(CipherSuite::SignalV3Compat, &flipped), Err(BundleError::BadSignature { .. })));
    }

    #[test]
    fn validly_signed_low_order_prekeys_are_rejected() {
        for suite in SUITES {
            let (store, mut rng) = store(suite, 5);
            for bad in low_order_points() {
                let sig = store.identity().sign(&suite.encode_public(&bad), &mut rng);
                let mut bundle = store.bundle(None).unwrap();
                bundle.signed_prekey = bad;
                bundle.signed_prekey_signature = sig;
                assert_eq!(
                    verify_bundle(suite, &bundle),
                    Err(BundleError::LowOrderSignedPreKey { signed_prekey_id: 1, key: bad })
                );
                let mut bundle = store.bundle(None).unwrap();
                bundle.one_time_prekey = Some(BundledOneTimePreKey { id: 7, key: bad });
                assert_eq!(
                    verify_bundle(suite, &bundle),
                    Err(BundleError::LowOrderOneTimePreKey { one_time_prekey_id: 7, key: bad })
                );
            }
        }
    }

    /// A low-order identity key would admit forged XEdDSA signatures (here `R` =
    /// the identity or the order-2 point and `s` = 0) under the cofactorless
    /// equation; `xeddsa::verify` refuses such keys, and the bundle is refused.
    #[test]
    fn low_order_identity_with_forged_signature_is_rejected() {
        let identity = low_order_points()[0];
        let mut identity_point = [0u8; 32];
        identity_point[0] = 1; // Edwards neutral element (0, 1)
        let mut order_two = [0xffu8; 32]; // (0, -1), the Edwards form of u = 0
        order_two[0] = 0xec;
        order_two[31] = 0x7f;
        let mut rng = ChaCha20Rng::seed_from_u64(6);
        for _ in 0..16 {
            let spk = KeyPair::generate(&mut rng).public();
            for r in [identity_point, order_two] {
                let mut sig = [0u8; 64];
                sig[..32].copy_from_slice(&r);
                let bundle = PreKeyBundle {
                    identity_key: identity,
                    signed_prekey_id: 1,
                    signed_prekey: spk,
                    signed_prekey_signature: Signature(sig),
                    one_time_prekey: None,
                };
                assert!(crate::xeddsa::verify(&identity, &spk.0, &Signature(sig)).is_err());
                assert!(verify_bundle(CipherSuite::BluetickV1, &bundle).is_err());
            }
        }
    }

    #[test]
    fn one_time_stock_stops_at_its_limit() {
        let (mut store, mut rng) = store(CipherSuite::BluetickV1, 7);
        let first = store.generate_one_time(ONE_TIME_PREKEY_STOCK_MAX - 1, &mut rng);
        assert_eq!(first.len(), ONE_TIME_PREKEY_STOCK_MAX - 1);
        let more = store.generate_one_time(5, &mut rng);
        assert_eq!(more.len(), 1);
        assert_eq!(store.one_time_count(), ONE_TIME_PREKEY_STOCK_MAX);
        assert!(store.generate_one_time(1, &mut rng).is_empty());
        // Ids are distinct and increasing.
        let ids: Vec<u32> = first.iter().chain(&more).map(|k| k.id).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(store.one_time_public_keys().len(), ONE_TIME_PREKEY_STOCK_MAX);
    }

    #[test]
    fn one_time_ids_wrap_and_skip_keys_still_in_stock() {
        let (mut store, mut rng) = store(CipherSuite::BluetickV1, 8);
        store.next_one_time_prekey_id = u32::MAX;
        let a = store.generate_one_time(2, &mut rng);
        assert_eq!((a[0].id, a[1].id), (u32::MAX, 0));
        store.next_one_time_prekey_id = u32::MAX;
        let b = store.generate_one_time(1, &mut rng);
        assert_eq!(b[0].id, 1);
    }

    #[test]
    fn consuming_a_one_time_prekey_deletes_it() {
        let (mut store, mut rng) = store(CipherSuite::BluetickV1, 9);
        let ids = store.generate_one_time(2, &mut rng);
        assert_eq!(store.consume_one_time(ids[0].id), Ok(()));
        if cfg!(feature = "weak-keep-used-keys") {
            assert_eq!(store.one_time_count(), 2);
            assert!(store.bundle(Some(ids[0].id)).is_ok());
        } else {
            assert_eq!(store.one_time_count(), 1);
            assert!(store.one_time_prekey(ids[0].id).is_none());
            assert_eq!(store.consume_one_time(ids[0].id), Err(PreKeyError::UnknownOneTimePreKey { id: ids[0].id }));
            assert_eq!(store.bundle(Some(ids[0].id)), Err(PreKeyError::UnknownOneTimePreKey { id: ids[0].id }));
        }
        assert_eq!(store.consume_one_time(999), Err(PreKeyError::UnknownOneTimePreKey { id: 999 }));
    }

    #[test]
    fn rotation_keeps_one_previous_key_for_the_grace_period() {
        let (mut store, mut rng) = store(CipherSuite::SignalV3Compat, 10);
        let first = store.signed_prekey().public();
        let id2 = store.rotate_signed_prekey(&mut rng, 5_000);
        assert_eq!(id2, 2);
        assert_eq!(store.signed_prekey().id(), 2);
        assert_eq!(store.signed_prekey_by_id(1).map(SignedPreKey::public), Some(first));
        assert!(verify_bundle(CipherSuite::SignalV3Compat, &store.bundle(None).unwrap()).is_ok());
        assert!(!store.expire_signed_prekeys(5_000 + SIGNED_PREKEY_GRACE_MS - 1));
        assert!(store.signed_prekey_by_id(1).is_some());
        assert!(store.expire_signed_prekeys(5_000 + SIGNED_PREKEY_GRACE_MS));
        assert!(store.signed_prekey_by_id(1).is_none());
        // A second rotation inside the grace period drops the older key at once.
        store.rotate_signed_prekey(&mut rng, 6_000);
        store.rotate_signed_prekey(&mut rng, 7_000);
        assert!(store.signed_prekey_by_id(2).is_none());
        assert!(store.signed_prekey_by_id(3).is_some());
        assert!(store.signed_prekey_by_id(4).is_some());
    }

    #[test]
    fn store_serde_round_trip_keeps_every_key_and_counter() {
        let (mut store, mut rng) = store(CipherSuite::SignalV3Compat, 11);
        store.generate_one_time(4, &mut rng);
        store.rotate_signed_prekey(&mut rng, 2_000);
        let json = serde_json::to_string(&store).unwrap();
        let mut back: PreKeyStore = serde_json::from_str(&json).unwrap();
        assert_eq!(serde_json::to_string(&back).unwrap(), json);
        assert_eq!(back.bundle(Some(2)).unwrap(), store.bundle(Some(2)).unwrap());
        assert_eq!(
            *back.one_time_prekey(3).unwrap().key_pair().secret_bytes(),
            *store.one_time_prekey(3).unwrap().key_pair().secret_bytes()
        );
        // Counters survive: both continue with the same next ids.
        let mut rng2 = rng.clone();
        assert_eq!(back.generate_one_time(1, &mut rng2), store.generate_one_time(1, &mut rng));
        assert_eq!(back.rotate_signed_prekey(&mut rng2, 3_000), store.rotate_signed_prekey(&mut rng, 3_000));
    }

    #[test]
    fn debug_output_redacts_secrets() {
        let (mut store, mut rng) = store(CipherSuite::BluetickV1, 12);
        store.generate_one_time(1, &mut rng);
        let text = format!("{store:?}");
        let secret = hex::encode(*store.identity().key_pair().secret_bytes());
        assert!(!text.contains(&secret));
        let otk_secret = hex::encode(*store.one_time_prekey(1).unwrap().key_pair().secret_bytes());
        assert!(!text.contains(&otk_secret));
        assert!(text.contains("[redacted]"));
    }
}

#[cfg(test)]
mod accessor_tests {
    use super::*;
    use rand_chacha::rand_core::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    #[test]
    fn the_grace_period_is_thirty_days_and_keys_report_their_own_fields() {
        assert_eq!(SIGNED_PREKEY_GRACE_MS, 2_592_000_000);
        let mut rng = ChaCha20Rng::seed_from_u64(11);
        let identity = IdentityKeyPair::generate(&mut rng);
        let mut store = PreKeyStore::new(CipherSuite::BluetickV1, identity, &mut rng, 1_234_567);
        assert_eq!(store.signed_prekey().created_at_ms(), 1_234_567);
        let fresh = store.generate_one_time(3, &mut rng);
        for b in &fresh {
            let key = store.one_time_prekey(b.id).unwrap();
            assert_eq!(key.id(), b.id);
            assert_eq!(key.key_pair().public(), b.key);
        }
        assert!(fresh.iter().any(|b| b.id > 1), "ids are distinct, so not all 0 or 1");
    }
}
