//! Curve25519 key types shared by every protocol layer.
//!
//! Secrets live in a `Box` so moves do not leave stray copies on the stack, are
//! zeroized on drop, and print as `[redacted]`: a `Debug` of any state in this
//! crate is safe to put in a trace or a test failure.

use std::fmt;

use rand_core::{CryptoRng, RngCore};
use serde::{Deserialize, Serialize};
use x25519_dalek::{PublicKey as DalekPublic, StaticSecret};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::xeddsa;

/// A raw 32-byte X25519 public key (Montgomery u-coordinate).
///
/// Public keys are not secret, so `Debug` prints them in hex; a suite may encode
/// them with a type prefix on the wire (see [`crate::CipherSuite::encode_public`]).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PublicKey(#[serde(with = "crate::bytes_serde::fixed")] pub [u8; 32]);

impl PublicKey {
    /// The raw 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", hex::encode(self.0))
    }
}

impl From<[u8; 32]> for PublicKey {
    fn from(bytes: [u8; 32]) -> Self {
        PublicKey(bytes)
    }
}

/// The result of one X25519 Diffie-Hellman, zeroized on drop.
pub type DhOutput = Zeroizing<[u8; 32]>;

/// Errors from key agreement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The peer's public key is a low-order point, so the shared secret is all
    /// zeros and would not depend on our private key at all.
    #[error("non-contributory Diffie-Hellman: peer public key {peer:?} is a low-order point")]
    NonContributory {
        /// The offending public key.
        peer: PublicKey,
    },
}

/// An X25519 key pair. The secret is boxed, zeroized on drop and never printed.
#[derive(Clone, Zeroize, ZeroizeOnDrop, Serialize, Deserialize)]
pub struct KeyPair {
    #[serde(with = "crate::bytes_serde::secret")]
    secret: Box<[u8; 32]>,
    #[zeroize(skip)]
    public: PublicKey,
}

impl KeyPair {
    /// Draws a fresh key pair from the injected RNG.
    pub fn generate<R: RngCore + CryptoRng>(rng: &mut R) -> Self {
        let mut bytes = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(bytes.as_mut());
        Self::from_secret_bytes(*bytes)
    }

    /// Rebuilds a key pair from its 32 secret bytes (clamping happens inside X25519).
    pub fn from_secret_bytes(bytes: [u8; 32]) -> Self {
        let secret = StaticSecret::from(bytes);
        let public = PublicKey(DalekPublic::from(&secret).to_bytes());
        KeyPair { secret: Box::new(secret.to_bytes()), public }
    }

    /// A key pair whose public half was computed elsewhere (the symbolic
    /// suite's stand-in for X25519).
    pub(crate) fn from_parts(secret: [u8; 32], public: PublicKey) -> Self {
        KeyPair { secret: Box::new(secret), public }
    }

    /// The public half.
    pub fn public(&self) -> PublicKey {
        self.public
    }

    /// The secret bytes, for serialization into test vectors and persisted state.
    pub fn secret_bytes(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(*self.secret)
    }

    /// X25519 with `peer`, refusing an all-zero (non-contributory) result.
    pub fn dh(&self, peer: &PublicKey) -> Result<DhOutput, KeyError> {
        let secret = StaticSecret::from(*self.secret);
        let shared = secret.diffie_hellman(&DalekPublic::from(peer.0));
        if !shared.was_contributory() {
            return Err(KeyError::NonContributory { peer: *peer });
        }
        Ok(Zeroizing::new(shared.to_bytes()))
    }
}

impl fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyPair").field("public", &self.public).field("secret", &"[redacted]").finish()
    }
}

/// A long-term identity key: one X25519 key pair that both does DH and signs
/// (XEdDSA), as in Signal and WhatsApp.
#[derive(Clone, Serialize, Deserialize)]
pub struct IdentityKeyPair(KeyPair);

impl IdentityKeyPair {
    /// Draws a fresh identity from the injected RNG.
    pub fn generate<R: RngCore + CryptoRng>(rng: &mut R) -> Self {
        IdentityKeyPair(KeyPair::generate(rng))
    }

    /// Wraps a key pair made by a suite (see [`crate::CipherSuite::generate_identity`]).
    pub(crate) fn from_key_pair(key_pair: KeyPair) -> Self {
        IdentityKeyPair(key_pair)
    }

    /// Rebuilds an identity from its secret bytes.
    pub fn from_secret_bytes(bytes: [u8; 32]) -> Self {
        IdentityKeyPair(KeyPair::from_secret_bytes(bytes))
    }

    /// The public identity key.
    pub fn public(&self) -> PublicKey {
        self.0.public()
    }

    /// The underlying X25519 key pair, for the DH steps of X3DH.
    pub fn key_pair(&self) -> &KeyPair {
        &self.0
    }

    /// An XEdDSA signature over `message`; `rng` supplies the 64-byte nonce padding.
    pub fn sign<R: RngCore + CryptoRng>(&self, message: &[u8], rng: &mut R) -> xeddsa::Signature {
        xeddsa::sign(&self.0.secret_bytes(), message, rng)
    }
}

impl fmt::Debug for IdentityKeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("IdentityKeyPair").field(&self.0).finish()
    }
}

/// A 32-byte symmetric secret (root key, chain key, media key…), boxed,
/// zeroized on drop and redacted in `Debug`.
#[derive(Clone, PartialEq, Eq, Zeroize, ZeroizeOnDrop, Serialize, Deserialize)]
pub struct SecretKey(#[serde(with = "crate::bytes_serde::secret")] Box<[u8; 32]>);

impl SecretKey {
    /// Wraps 32 secret bytes.
    pub fn new(bytes: [u8; 32]) -> Self {
        SecretKey(Box::new(bytes))
    }

    /// Draws 32 fresh bytes from the injected RNG.
    pub fn generate<R: RngCore + CryptoRng>(rng: &mut R) -> Self {
        let mut key = SecretKey::new([0u8; 32]);
        rng.fill_bytes(key.0.as_mut());
        key
    }

    /// Borrow the secret bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretKey([redacted])")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 7748 section 6.1: Alice's and Bob's X25519 keys and their shared secret.
    #[test]
    fn x25519_matches_rfc7748_section_6_1() {
        let alice_secret: [u8; 32] = hex::decode("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
            .unwrap()
            .try_into()
            .unwrap();
        let bob_secret: [u8; 32] = hex::decode("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb")
            .unwrap()
            .try_into()
            .unwrap();
        let alice = KeyPair::from_secret_bytes(alice_secret);
        let bob = KeyPair::from_secret_bytes(bob_secret);
        assert_eq!(hex::encode(alice.public().0), "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a");
        assert_eq!(hex::encode(bob.public().0), "de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f");
        let shared = "4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742";
        assert_eq!(hex::encode(alice.dh(&bob.public()).unwrap().as_ref()), shared);
        assert_eq!(hex::encode(bob.dh(&alice.public()).unwrap().as_ref()), shared);
    }

    #[test]
    fn dh_with_low_order_point_is_rejected() {
        let kp = KeyPair::from_secret_bytes([7u8; 32]);
        // u = 0 and u = 1 are low-order points: the shared secret is all zeros.
        for bad in [[0u8; 32], {
            let mut one = [0u8; 32];
            one[0] = 1;
            one
        }] {
            assert_eq!(kp.dh(&PublicKey(bad)), Err(KeyError::NonContributory { peer: PublicKey(bad) }));
        }
    }

    #[test]
    fn serde_round_trip_keeps_the_key_pair() {
        let kp = KeyPair::from_secret_bytes([9u8; 32]);
        let json = serde_json::to_string(&kp).unwrap();
        let back: KeyPair = serde_json::from_str(&json).unwrap();
        assert_eq!(back.public(), kp.public());
        assert_eq!(*back.secret_bytes(), *kp.secret_bytes());
    }
}
