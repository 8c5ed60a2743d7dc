//! Cipher suites: the constants and symmetric primitives that differ between
//! `bluetick-v1` and `signal-v3-compat`. The state machines (X3DH, the Double
//! Ratchet, sender keys) are written once and ask the suite for every KDF label,
//! key encoding and AEAD, so the same code can be checked against libsignal's
//! published values.

use aes::cipher::{block_padding::Pkcs7, BlockDecryptMut, BlockEncryptMut, KeyIvInit};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::ChaCha20Poly1305;
use rand_core::{CryptoRng, RngCore};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::kdf::{hkdf_sha256, hmac_sha256, hmac_sha256_verify_truncated, ZERO_SALT};
use crate::keys::{DhOutput, IdentityKeyPair, KeyError, KeyPair, PublicKey};
use crate::symbolic;
use crate::xeddsa::{self, Signature, SignatureError};

type Aes256CbcEnc = cbc::Encryptor<aes::Aes256>;
type Aes256CbcDec = cbc::Decryptor<aes::Aes256>;

/// Length of the truncated HMAC tag `signal-v3-compat` appends to each message,
/// as libsignal's `SignalMessage` does.
pub const COMPAT_MAC_LEN: usize = 8;

/// Which set of constants and primitives a session uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CipherSuite {
    /// The default: HKDF labels `bluetick … v1`, ChaCha20-Poly1305, raw 32-byte keys.
    #[default]
    BluetickV1,
    /// libsignal's pre-PQXDH (v3) constants: HKDF labels `WhisperText`,
    /// `WhisperRatchet`, `WhisperMessageKeys`, AES-256-CBC + 8-byte HMAC-SHA256
    /// tag, 33-byte `0x05`-prefixed public keys in signatures and AD.
    SignalV3Compat,
    /// **No security — scale runs only.** `bluetick-v1`'s symmetric layer with
    /// the public-key operations (X25519, XEdDSA, the sender keys' Ed25519)
    /// replaced by the hash stand-ins of [`crate::symbolic`]: anyone can
    /// compute a shared secret from the two public keys and forge any
    /// signature. The state machines behave the same, at a small fraction of
    /// the cost, so the simulator and model checker can reach sizes real keys
    /// make too slow. A deployment never runs it: `bluetick serve` and
    /// `chat` have no suite switch, only a scenario file or `bluetick check
    /// --suite` selects it, and a server checks every login proof and
    /// signature under its own suite.
    SymbolicInsecure,
}

/// The type byte libsignal puts in front of a Curve25519 public key.
pub const DJB_KEY_TYPE: u8 = 0x05;

/// Why a message did not open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AeadError {
    /// The tag did not verify: tampered, truncated, or the wrong key.
    #[error("authentication failed")]
    BadTag,
    /// Decryption succeeded but the padding is malformed (CBC suites only).
    #[error("malformed padding")]
    BadPadding,
    /// The ciphertext is shorter than its tag.
    #[error("ciphertext of {len} bytes is shorter than the {min}-byte minimum")]
    TooShort {
        /// Bytes received.
        len: usize,
        /// Smallest valid length.
        min: usize,
    },
}

impl CipherSuite {
    /// Stable name used in scenario files, vectors and persisted state.
    pub fn name(self) -> &'static str {
        match self {
            CipherSuite::BluetickV1 => "bluetick-v1",
            CipherSuite::SignalV3Compat => "signal-v3-compat",
            CipherSuite::SymbolicInsecure => "symbolic-insecure",
        }
    }

    /// Every suite, in a stable order (scenario-file error messages list them).
    pub const ALL: [CipherSuite; 3] =
        [CipherSuite::BluetickV1, CipherSuite::SignalV3Compat, CipherSuite::SymbolicInsecure];

    /// The suite called `name` (see [`CipherSuite::name`]).
    pub fn from_name(name: &str) -> Option<CipherSuite> {
        CipherSuite::ALL.into_iter().find(|s| s.name() == name)
    }

    /// Draws a fresh key pair of this suite's public-key layer. Takes exactly
    /// 32 bytes from `rng` whatever the suite, so switching suites does not
    /// shift the rest of a seeded run's randomness.
    pub fn generate_key_pair<R: RngCore + CryptoRng>(self, rng: &mut R) -> KeyPair {
        let mut bytes = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(bytes.as_mut());
        self.key_pair_from_secret(*bytes)
    }

    /// Rebuilds a key pair of this suite from its secret bytes.
    pub fn key_pair_from_secret(self, bytes: [u8; 32]) -> KeyPair {
        match self {
            CipherSuite::SymbolicInsecure => KeyPair::from_parts(bytes, symbolic::public(&bytes)),
            CipherSuite::BluetickV1 | CipherSuite::SignalV3Compat => KeyPair::from_secret_bytes(bytes),
        }
    }

    /// Draws a fresh identity key of this suite.
    pub fn generate_identity<R: RngCore + CryptoRng>(self, rng: &mut R) -> IdentityKeyPair {
        IdentityKeyPair::from_key_pair(self.generate_key_pair(rng))
    }

    /// Diffie-Hellman of `ours` with `peer` in this suite's public-key layer.
    pub fn dh(self, ours: &KeyPair, peer: &PublicKey) -> Result<DhOutput, KeyError> {
        match self {
            CipherSuite::SymbolicInsecure => Ok(symbolic::dh(&ours.public(), peer)),
            CipherSuite::BluetickV1 | CipherSuite::SignalV3Compat => ours.dh(peer),
        }
    }

    /// Signs `message` with `identity` (XEdDSA, or the symbolic stand-in).
    /// Both take 64 bytes from `rng`.
    pub fn sign<R: RngCore + CryptoRng>(self, identity: &IdentityKeyPair, message: &[u8], rng: &mut R) -> Signature {
        match self {
            CipherSuite::SymbolicInsecure => {
                // XEdDSA draws 64 bytes of nonce padding; drawing them here too
                // keeps a seeded run's randomness, and so its schedule and the
                // model checker's state space, the same under both suites.
                let mut padding = [0u8; 64];
                rng.fill_bytes(&mut padding);
                symbolic::sign(&identity.public(), message)
            }
            CipherSuite::BluetickV1 | CipherSuite::SignalV3Compat => identity.sign(message, rng),
        }
    }

    /// Verifies an identity signature made by [`CipherSuite::sign`].
    pub fn verify(self, public: &PublicKey, message: &[u8], signature: &Signature) -> Result<(), SignatureError> {
        match self {
            CipherSuite::SymbolicInsecure if symbolic::verifies(public, message, signature) => Ok(()),
            CipherSuite::SymbolicInsecure => Err(SignatureError::Invalid(*public)),
            CipherSuite::BluetickV1 | CipherSuite::SignalV3Compat => xeddsa::verify(public, message, signature),
        }
    }

    /// The bytes a public key contributes to signatures and associated data.
    pub fn encode_public(self, key: &PublicKey) -> Vec<u8> {
        match self {
            CipherSuite::BluetickV1 | CipherSuite::SymbolicInsecure => key.0.to_vec(),
            CipherSuite::SignalV3Compat => {
                let mut out = Vec::with_capacity(33);
                out.push(DJB_KEY_TYPE);
                out.extend_from_slice(&key.0);
                out
            }
        }
    }

    /// HKDF info label of the X3DH key derivation.
    pub fn x3dh_info(self) -> &'static [u8] {
        match self {
            CipherSuite::BluetickV1 | CipherSuite::SymbolicInsecure => b"bluetick X3DH v1",
            CipherSuite::SignalV3Compat => b"WhisperText",
        }
    }

    /// HKDF info label of the root-key ratchet (`KDF_RK`).
    pub fn ratchet_info(self) -> &'static [u8] {
        match self {
            CipherSuite::BluetickV1 | CipherSuite::SymbolicInsecure => b"bluetick ratchet v1",
            CipherSuite::SignalV3Compat => b"WhisperRatchet",
        }
    }

    /// HKDF info label that expands a message-key seed into cipher keys.
    pub fn message_info(self) -> &'static [u8] {
        match self {
            CipherSuite::BluetickV1 | CipherSuite::SymbolicInsecure => b"bluetick message v1",
            CipherSuite::SignalV3Compat => b"WhisperMessageKeys",
        }
    }

    /// `KDF_RK`: HKDF-SHA256(salt = root key, ikm = DH output, info) → 64 bytes,
    /// split into the next root key and a fresh chain key.
    pub fn kdf_rk(self, root_key: &[u8; 32], dh_out: &[u8; 32]) -> (Zeroizing<[u8; 32]>, Zeroizing<[u8; 32]>) {
        let okm = hkdf_sha256::<64>(root_key, dh_out, self.ratchet_info());
        split_64(&okm)
    }

    /// Bytes of overhead `seal` adds to a plaintext of `len` bytes.
    pub fn sealed_len(self, len: usize) -> usize {
        match self {
            CipherSuite::BluetickV1 | CipherSuite::SymbolicInsecure => len + 16,
            CipherSuite::SignalV3Compat => (len / 16 + 1) * 16 + COMPAT_MAC_LEN,
        }
    }

    /// Encrypts one message under the message-key seed `mk` (the HMAC output of
    /// `KDF_CK`), authenticating `ad ‖ header`.
    ///
    /// * `bluetick-v1`: HKDF(zeros, mk, label) → key 32 ‖ nonce 12;
    ///   ChaCha20-Poly1305 with associated data `ad ‖ header`.
    /// * `signal-v3-compat`: HKDF(zeros, mk, label) → cipher key 32 ‖ MAC key 32
    ///   ‖ IV 16; AES-256-CBC/PKCS#7, then
    ///   HMAC-SHA256(MAC key, ad ‖ header ‖ ciphertext) truncated to 8 bytes.
    pub fn seal(self, mk: &[u8; 32], ad: &[u8], header: &[u8], plaintext: &[u8]) -> Vec<u8> {
        match self {
            CipherSuite::BluetickV1 | CipherSuite::SymbolicInsecure => {
                let okm = hkdf_sha256::<44>(&ZERO_SALT, mk, self.message_info());
                chacha_seal(&okm, &[ad, header], plaintext)
            }
            CipherSuite::SignalV3Compat => {
                let okm = hkdf_sha256::<80>(&ZERO_SALT, mk, self.message_info());
                let (key, mac_key, iv) = split_80(&okm);
                let mut out = aes_cbc_encrypt(key, iv, plaintext);
                let tag = hmac_sha256(mac_key, &[ad, header, &out]);
                out.extend_from_slice(&tag[..COMPAT_MAC_LEN]);
                out
            }
        }
    }

    /// Inverse of [`CipherSuite::seal`].
    pub fn open(self, mk: &[u8; 32], ad: &[u8], header: &[u8], sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, AeadError> {
        match self {
            CipherSuite::BluetickV1 | CipherSuite::SymbolicInsecure => {
                let okm = hkdf_sha256::<44>(&ZERO_SALT, mk, self.message_info());
                chacha_open(&okm, &[ad, header], sealed)
            }
            CipherSuite::SignalV3Compat => {
                let min = 16 + COMPAT_MAC_LEN;
                if sealed.len() < min {
                    return Err(AeadError::TooShort { len: sealed.len(), min });
                }
                let okm = hkdf_sha256::<80>(&ZERO_SALT, mk, self.message_info());
                let (key, mac_key, iv) = split_80(&okm);
                let (body, tag) = sealed.split_at(sealed.len() - COMPAT_MAC_LEN);
                if !hmac_sha256_verify_truncated(mac_key, &[ad, header, body], tag) {
                    return Err(AeadError::BadTag);
                }
                aes_cbc_decrypt(key, iv, body)
            }
        }
    }
}

fn split_64(okm: &[u8; 64]) -> (Zeroizing<[u8; 32]>, Zeroizing<[u8; 32]>) {
    let mut a = Zeroizing::new([0u8; 32]);
    let mut b = Zeroizing::new([0u8; 32]);
    a.copy_from_slice(&okm[..32]);
    b.copy_from_slice(&okm[32..]);
    (a, b)
}

fn split_80(okm: &[u8; 80]) -> (&[u8], &[u8], &[u8]) {
    (&okm[..32], &okm[32..64], &okm[64..80])
}

/// ChaCha20-Poly1305 with `okm = key (32) ‖ nonce (12)`; the associated data is
/// the concatenation of `aad_parts`.
pub fn chacha_seal(okm: &[u8; 44], aad_parts: &[&[u8]], plaintext: &[u8]) -> Vec<u8> {
    let cipher = ChaCha20Poly1305::new(okm[..32].into());
    let aad = aad_parts.concat();
    // Encryption only fails for plaintexts beyond 2^38 bytes, which no caller
    // can hold in memory; an empty result would then fail to open, not leak.
    cipher.encrypt(okm[32..].into(), Payload { msg: plaintext, aad: &aad }).unwrap_or_default()
}

/// Inverse of [`chacha_seal`].
pub fn chacha_open(okm: &[u8; 44], aad_parts: &[&[u8]], sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, AeadError> {
    if sealed.len() < 16 {
        return Err(AeadError::TooShort { len: sealed.len(), min: 16 });
    }
    let cipher = ChaCha20Poly1305::new(okm[..32].into());
    let aad = aad_parts.concat();
    cipher
        .decrypt(okm[32..].into(), Payload { msg: sealed, aad: &aad })
        .map(Zeroizing::new)
        .map_err(|_| AeadError::BadTag)
}

/// AES-256-CBC with PKCS#7 padding. `key` is 32 bytes and `iv` 16 (callers
/// slice them from fixed-size KDF outputs).
pub fn aes_cbc_encrypt(key: &[u8], iv: &[u8], plaintext: &[u8]) -> Vec<u8> {
    match Aes256CbcEnc::new_from_slices(key, iv) {
        Ok(enc) => enc.encrypt_padded_vec_mut::<Pkcs7>(plaintext),
        // Unreachable with the fixed-size slices above; an empty ciphertext then
        // fails authentication rather than panicking.
        Err(_) => Vec::new(),
    }
}

/// Inverse of [`aes_cbc_encrypt`]; callers authenticate before calling it.
pub fn aes_cbc_decrypt(key: &[u8], iv: &[u8], ciphertext: &[u8]) -> Result<Zeroizing<Vec<u8>>, AeadError> {
    if ciphertext.is_empty() || !ciphertext.len().is_multiple_of(16) {
        return Err(AeadError::BadPadding);
    }
    let dec = Aes256CbcDec::new_from_slices(key, iv).map_err(|_| AeadError::BadPadding)?;
    dec.decrypt_padded_vec_mut::<Pkcs7>(ciphertext).map(Zeroizing::new).map_err(|_| AeadError::BadPadding)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_suites_round_trip_and_reject_tampering() {
        for suite in [CipherSuite::BluetickV1, CipherSuite::SignalV3Compat] {
            let mk = [3u8; 32];
            for len in [0usize, 1, 15, 16, 17, 1024] {
                let pt = vec![0xabu8; len];
                let sealed = suite.seal(&mk, b"ad", b"hdr", &pt);
                assert_eq!(sealed.len(), suite.sealed_len(len), "{suite:?} len {len}");
                assert_eq!(suite.open(&mk, b"ad", b"hdr", &sealed).unwrap().as_slice(), &pt[..]);
                assert!(suite.open(&mk, b"ad", b"hdX", &sealed).is_err());
                assert!(suite.open(&mk, b"aX", b"hdr", &sealed).is_err());
                let mut bad = sealed.clone();
                bad[0] ^= 0x80;
                assert!(suite.open(&mk, b"ad", b"hdr", &bad).is_err());
                assert!(suite.open(&[4u8; 32], b"ad", b"hdr", &sealed).is_err());
                assert!(suite.open(&mk, b"ad", b"hdr", &sealed[..sealed.len() - 1]).is_err());
            }
        }
    }

    #[test]
    fn compat_suite_prefixes_public_keys() {
        let pk = PublicKey([1u8; 32]);
        assert_eq!(CipherSuite::BluetickV1.encode_public(&pk).len(), 32);
        let enc = CipherSuite::SignalV3Compat.encode_public(&pk);
        assert_eq!((enc.len(), enc[0]), (33, 0x05));
    }
}

#[cfg(test)]
mod label_tests {
    use super::*;

    /// The names appear in scenario files and saved state, and the labels
    /// are protocol constants (`WhisperRatchet` is libsignal's): changing
    /// one silently breaks every stored session and peer.
    #[test]
    fn names_and_ratchet_labels_are_pinned() {
        assert_eq!(CipherSuite::BluetickV1.name(), "bluetick-v1");
        assert_eq!(CipherSuite::SignalV3Compat.name(), "signal-v3-compat");
        assert_eq!(CipherSuite::BluetickV1.ratchet_info(), b"bluetick ratchet v1");
        assert_eq!(CipherSuite::SignalV3Compat.ratchet_info(), b"WhisperRatchet");
    }
}
