//! XEdDSA signatures with X25519 identity keys, verifiable by libsignal.
//!
//! Signing delegates to the `xeddsa` crate, which follows the XEdDSA
//! specification (it negates the private scalar so the Ed25519 public key has sign
//! bit 0). libsignal instead keeps the Edwards sign bit in the top bit of
//! signature byte 63; our verifier reads it from there, so it accepts both
//! libsignal's signatures and spec ones (whose top bit is always 0 because a
//! reduced scalar is below 2^253).

use std::fmt;

use curve25519_dalek::montgomery::MontgomeryPoint;
use ed25519_dalek::{Signature as EdSignature, Verifier, VerifyingKey};
use rand_core::{CryptoRng, RngCore};
use serde::{Deserialize, Serialize};
use xeddsa::xed25519::PrivateKey as XedPrivate;
use xeddsa::Sign;

use crate::keys::PublicKey;

/// A 64-byte XEdDSA signature: `R (32) ‖ s (32)`, with the signer's Edwards sign
/// bit in the top bit of byte 63.
#[derive(Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signature(#[serde(with = "crate::bytes_serde::fixed")] pub [u8; 64]);

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signature({})", hex::encode(self.0))
    }
}

/// Why a signature was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// The X25519 key has no Edwards equivalent with the given sign.
    #[error("public key {0:?} cannot be converted to an Ed25519 verification key")]
    UnusableKey(PublicKey),
    /// The signature does not verify for this key and message.
    #[error("signature does not verify under {0:?}")]
    Invalid(PublicKey),
}

/// Signs `message` with the X25519 secret `secret`. `rng` fills the 64 bytes of
/// nonce padding that XEdDSA hashes together with the key and message.
pub fn sign<R: RngCore + CryptoRng>(secret: &[u8; 32], message: &[u8], rng: &mut R) -> Signature {
    let key = XedPrivate(*secret);
    let sig: [u8; 64] = key.sign(message, rng);
    Signature(sig)
}

/// Verifies `signature` over `message` under the X25519 public key `public`,
/// the way libsignal does.
pub fn verify(public: &PublicKey, message: &[u8], signature: &Signature) -> Result<(), SignatureError> {
    let mut sig = signature.0;
    let sign_bit = (sig[63] & 0x80) >> 7;
    sig[63] &= 0x7f;
    let edwards = MontgomeryPoint(public.0).to_edwards(sign_bit).ok_or(SignatureError::UnusableKey(*public))?;
    let vk =
        VerifyingKey::from_bytes(&edwards.compress().to_bytes()).map_err(|_| SignatureError::UnusableKey(*public))?;
    // The cofactorless equation accepts forgeries (R = identity, s = 0) under a
    // low-order key. libsignal does not check this; no honest key is low-order,
    // so refusing them costs no compatibility and closes that hole for every caller.
    if vk.is_weak() {
        return Err(SignatureError::UnusableKey(*public));
    }
    // The cofactorless check `[s]B = R + [h]A` is exactly libsignal's, so both
    // sides accept the same signatures.
    vk.verify(message, &EdSignature::from_bytes(&sig)).map_err(|_| SignatureError::Invalid(*public))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::IdentityKeyPair;
    use rand_chacha::rand_core::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    #[test]
    fn sign_then_verify_and_tampering_fails() {
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let id = IdentityKeyPair::generate(&mut rng);
        let sig = id.sign(b"signed prekey", &mut rng);
        assert_eq!(verify(&id.public(), b"signed prekey", &sig), Ok(()));
        assert!(verify(&id.public(), b"signed prekez", &sig).is_err());
        let mut bad = sig;
        bad.0[5] ^= 1;
        assert!(verify(&id.public(), b"signed prekey", &bad).is_err());
        let other = IdentityKeyPair::generate(&mut rng);
        assert!(verify(&other.public(), b"signed prekey", &sig).is_err());
    }

    #[test]
    fn low_order_key_cannot_validate_a_forged_signature() {
        // R = the Edwards identity (compressed: 1, then zeros), s = 0: the
        // cofactorless equation holds for any message under a low-order key.
        let mut forged = [0u8; 64];
        forged[0] = 1;
        for u in [[0u8; 32], {
            let mut one = [0u8; 32];
            one[0] = 1;
            one
        }] {
            let key = PublicKey(u);
            assert_eq!(verify(&key, b"anything", &Signature(forged)), Err(SignatureError::UnusableKey(key)));
        }
    }
}
