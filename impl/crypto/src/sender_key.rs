//! Sender Keys: one-to-many encryption for groups of up to 1,024 members, as in
//! libsignal's group cipher.
//!
//! Each member owns, per group, an [`OwnSenderKey`]: a symmetric chain key that
//! advances with every message and an Ed25519 signing key. It hands the current
//! chain key and the signing public key to every other member once, as a
//! [`SenderKeyDistribution`] carried inside the pairwise Double Ratchet sessions.
//! After that a group message costs one encryption and one signature however
//! large the group is; each receiver keeps a [`SenderKeyRecord`] per
//! (group, sender) and follows the chain.
//!
//! # Per-message keys
//! For the chain key `ck` at iteration `i`:
//! - message seed `= HMAC-SHA256(ck, 0x01)`, next chain key `= HMAC-SHA256(ck, 0x02)`
//!   (libsignal's `SenderChainKey`);
//! - `bluetick-v1`: `HKDF-SHA256(salt = 32 zero bytes, ikm = seed, info = "bluetick sender key v1")`
//!   → key (32) ‖ nonce (12); ChaCha20-Poly1305 with associated data
//!   `group_id ‖ key_id ‖ iteration`;
//! - `signal-v3-compat`: `HKDF-SHA256(salt = zeros, ikm = seed, info = "WhisperGroup")` → IV (16) ‖
//!   cipher key (32); AES-256-CBC with PKCS#7, exactly libsignal's `SenderMessageKey`.
//!   This mode has **no** MAC: the Ed25519 signature over the whole message is its
//!   only integrity protection, which is why the signature is checked before any
//!   decryption work in both suites.
//!
//! # Security properties and their limits
//! - Forward secrecy per message: the chain only moves forward and each message
//!   key is deleted once used, so a receiver's state stolen today cannot decrypt
//!   messages it already read.
//! - **No healing.** Unlike the Double Ratchet there is no DH step: whoever steals a
//!   chain key reads every later message of that sender until the sender calls
//!   [`OwnSenderKey::rotate`] and distributes the new key to the remaining
//!   members. Rotation on every membership change is what keeps a removed member
//!   out.
//! - Sender authentication within the group only: every member holds the chain
//!   key, so the signature (not the AEAD) is what stops one member from forging
//!   another member's messages.
//!
//! # Byte encodings
//! All integers are big-endian. The first byte names the suite:
//! [`VERSION_BLUETICK_V1`], [`VERSION_SIGNAL_V3_COMPAT`] or [`VERSION_SYMBOLIC_INSECURE`].
//! - [`SenderKeyDistribution`], 89 bytes:
//!   `version (1) ‖ group_id (16) ‖ key_id (4) ‖ iteration (4) ‖ chain_key (32) ‖ signing_public (32)`.
//! - [`GroupMessage`], 89 + n bytes:
//!   `version (1) ‖ group_id (16) ‖ key_id (4) ‖ iteration (4) ‖ ciphertext (n) ‖ signature (64)`;
//!   the Ed25519 signature covers every byte before it, and `n ≥ 16`.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use rand_core::{CryptoRng, RngCore};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::kdf::{hkdf_sha256, hmac_sha256, ZERO_SALT};
use crate::keys::{PublicKey, SecretKey};
use crate::suite::{aes_cbc_decrypt, aes_cbc_encrypt, chacha_open, chacha_seal, AeadError};
use crate::{symbolic, CipherSuite};

/// How many of one sender's key ids a receiver keeps. A sender rotates on every
/// membership change, and messages sent under the previous key may still be in
/// flight (or queued for an offline member) when the new distribution lands;
/// five is libsignal's value and covers a burst of membership changes, while
/// bounding how long a superseded key stays usable on receivers.
pub const MAX_SENDER_KEY_STATES: usize = 5;

/// How far ahead of the receiver's chain one message may jump, in iterations.
///
/// Messages are lost or reordered by the server's fan-out and by members being
/// offline; 2,000 covers a long outage of a busy sender. The bound exists
/// because catching up costs two HMACs and one stored key per skipped
/// iteration, so a larger jump would let a (compromised) sender make every
/// receiver burn CPU and memory. The signature is verified first, so only the
/// holder of the signing key can trigger that work at all.
pub const MAX_GAP: u32 = 2_000;

/// How many skipped message keys one [`SenderKeyRecord`] stores, over all its
/// key ids. Equal to [`MAX_GAP`] so one maximal gap fits entirely (libsignal
/// keeps 2,000 per state); beyond it the oldest keys are evicted, and their
/// messages then report [`SenderKeyError::DuplicateMessage`].
pub const MAX_SKIPPED_KEYS: usize = MAX_GAP as usize;

/// First byte of every `bluetick-v1` sender-key encoding.
pub const VERSION_BLUETICK_V1: u8 = 0x01;

/// First byte of every `signal-v3-compat` sender-key encoding: libsignal's
/// message version byte for version 3, `(3 << 4) | 3`.
pub const VERSION_SIGNAL_V3_COMPAT: u8 = 0x33;

/// First byte of every `symbolic-insecure` sender-key encoding (scale runs
/// only; see [`CipherSuite::SymbolicInsecure`]).
pub const VERSION_SYMBOLIC_INSECURE: u8 = 0xf0;

/// Length of an encoded [`SenderKeyDistribution`].
pub const DISTRIBUTION_LEN: usize = 1 + 16 + 4 + 4 + 32 + 32;

/// Length of the header in front of a [`GroupMessage`]'s ciphertext.
pub const GROUP_MESSAGE_HEADER_LEN: usize = 1 + 16 + 4 + 4;

/// Length of the Ed25519 signature that ends every [`GroupMessage`].
pub const SIGNATURE_LEN: usize = 64;

/// Smallest ciphertext either suite produces: one Poly1305 tag, or one AES block.
pub const MIN_CIPHERTEXT_LEN: usize = 16;

/// HKDF info label for `bluetick-v1` message keys.
const BLUETICK_INFO: &[u8] = b"bluetick sender key v1";

/// HKDF info label for `signal-v3-compat` message keys (libsignal's `SenderMessageKey`).
const COMPAT_INFO: &[u8] = b"WhisperGroup";

/// HMAC input that turns a chain key into a message seed.
const MESSAGE_KEY_SEED: [u8; 1] = [0x01];

/// HMAC input that turns a chain key into the next chain key.
const CHAIN_KEY_SEED: [u8; 1] = [0x02];

/// A group as the sender-key layer sees it: 16 opaque bytes. The messaging core
/// maps its own group identifiers onto this.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct GroupId(#[serde(with = "crate::bytes_serde::fixed")] pub [u8; 16]);

impl fmt::Debug for GroupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "GroupId({})", hex::encode(self.0))
    }
}

/// Everything that can go wrong with sender keys: decoding, distribution and decryption.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SenderKeyError {
    /// The encoding is shorter than its fixed parts.
    #[error("encoding of {len} bytes is shorter than the {min}-byte minimum")]
    TooShort {
        /// Bytes received.
        len: usize,
        /// Smallest valid length.
        min: usize,
    },
    /// A fixed-length encoding has the wrong length.
    #[error("encoding of {len} bytes, expected exactly {expected}")]
    WrongLength {
        /// Bytes received.
        len: usize,
        /// The only valid length.
        expected: usize,
    },
    /// The first byte names no suite we know.
    #[error("unknown sender-key version byte {version:#04x}")]
    UnknownVersion {
        /// The byte found.
        version: u8,
    },
    /// The distribution's signing public key is not a usable Ed25519 point
    /// (not on the curve, or of small order, which would let anyone sign).
    #[error("sender key {key_id} carries an unusable Ed25519 public key")]
    InvalidSigningKey {
        /// The key id of the distribution.
        key_id: u32,
    },
    /// The message or distribution belongs to another group.
    #[error("sender key for group {got:?} used with group {expected:?}")]
    WrongGroup {
        /// This record's group.
        expected: GroupId,
        /// The group named in the input.
        got: GroupId,
    },
    /// The message or distribution uses another cipher suite than this record.
    #[error("cipher suite {got:?} used with a {expected:?} sender key")]
    SuiteMismatch {
        /// This record's suite.
        expected: CipherSuite,
        /// The suite named in the input.
        got: CipherSuite,
    },
    /// No distribution with this key id was received, or it was evicted.
    #[error("no sender key with key id {key_id} (never distributed to us, or evicted)")]
    UnknownKeyId {
        /// The key id named by the message.
        key_id: u32,
    },
    /// The Ed25519 signature does not verify; nothing was decrypted.
    #[error("bad signature on group message (key id {key_id}, iteration {iteration})")]
    BadSignature {
        /// The key id named by the message.
        key_id: u32,
        /// The iteration named by the message.
        iteration: u32,
    },
    /// This iteration's key is gone: the message was already decrypted, or it is
    /// so old that its skipped key was evicted.
    #[error("duplicate message (key id {key_id}, iteration {iteration})")]
    DuplicateMessage {
        /// The key id named by the message.
        key_id: u32,
        /// The iteration named by the message.
        iteration: u32,
    },
    /// The message is further ahead of our chain than [`MAX_GAP`].
    #[error("message at iteration {iteration} is {gap} ahead of the chain, over the limit of {limit}")]
    TooFarAhead {
        /// The iteration named by the message.
        iteration: u32,
        /// How many iterations would have to be skipped.
        gap: u32,
        /// [`MAX_GAP`].
        limit: u32,
    },
    /// The chain reached iteration `u32::MAX` and cannot advance; the sender must rotate.
    #[error("sender key {key_id} has used up all its iterations")]
    ChainExhausted {
        /// The exhausted key id.
        key_id: u32,
    },
    /// The signature verified but the ciphertext did not open (only the signer
    /// could have produced this).
    #[error("group message (key id {key_id}, iteration {iteration}) failed to decrypt: {source}")]
    Decrypt {
        /// The key id named by the message.
        key_id: u32,
        /// The iteration named by the message.
        iteration: u32,
        /// What the cipher reported.
        #[source]
        source: AeadError,
    },
}

fn version_byte(suite: CipherSuite) -> u8 {
    match suite {
        CipherSuite::BluetickV1 => VERSION_BLUETICK_V1,
        CipherSuite::SignalV3Compat => VERSION_SIGNAL_V3_COMPAT,
        CipherSuite::SymbolicInsecure => VERSION_SYMBOLIC_INSECURE,
    }
}

fn suite_from_version(version: u8) -> Result<CipherSuite, SenderKeyError> {
    match version {
        VERSION_BLUETICK_V1 => Ok(CipherSuite::BluetickV1),
        VERSION_SIGNAL_V3_COMPAT => Ok(CipherSuite::SignalV3Compat),
        VERSION_SYMBOLIC_INSECURE => Ok(CipherSuite::SymbolicInsecure),
        _ => Err(SenderKeyError::UnknownVersion { version }),
    }
}

/// A chain key together with the iteration of the next message it will key.
#[derive(Clone, Serialize, Deserialize)]
struct ChainKey {
    iteration: u32,
    key: SecretKey,
}

impl ChainKey {
    fn message_seed(&self) -> SecretKey {
        SecretKey::new(*hmac_sha256(self.key.as_bytes(), &[&MESSAGE_KEY_SEED]))
    }

    /// The chain one step on; refuses to wrap, because a wrapped iteration would
    /// name a message key that was already used.
    fn next(&self, key_id: u32) -> Result<ChainKey, SenderKeyError> {
        let iteration = self.iteration.checked_add(1).ok_or(SenderKeyError::ChainExhausted { key_id })?;
        Ok(ChainKey { iteration, key: SecretKey::new(*hmac_sha256(self.key.as_bytes(), &[&CHAIN_KEY_SEED])) })
    }
}

/// `group_id ‖ key_id ‖ iteration`, bound into the AEAD of `bluetick-v1`.
fn associated_data(group_id: &GroupId, key_id: u32, iteration: u32) -> [u8; 24] {
    let mut ad = [0u8; 24];
    ad[..16].copy_from_slice(&group_id.0);
    ad[16..20].copy_from_slice(&key_id.to_be_bytes());
    ad[20..].copy_from_slice(&iteration.to_be_bytes());
    ad
}

fn seal(suite: CipherSuite, seed: &SecretKey, ad: &[u8; 24], plaintext: &[u8]) -> Vec<u8> {
    match suite {
        CipherSuite::BluetickV1 | CipherSuite::SymbolicInsecure => {
            let okm = hkdf_sha256::<44>(&ZERO_SALT, seed.as_bytes(), BLUETICK_INFO);
            chacha_seal(&okm, &[ad], plaintext)
        }
        CipherSuite::SignalV3Compat => {
            let okm = hkdf_sha256::<48>(&ZERO_SALT, seed.as_bytes(), COMPAT_INFO);
            aes_cbc_encrypt(&okm[16..], &okm[..16], plaintext)
        }
    }
}

fn open(
    suite: CipherSuite,
    seed: &SecretKey,
    ad: &[u8; 24],
    ciphertext: &[u8],
) -> Result<Zeroizing<Vec<u8>>, AeadError> {
    match suite {
        CipherSuite::BluetickV1 | CipherSuite::SymbolicInsecure => {
            let okm = hkdf_sha256::<44>(&ZERO_SALT, seed.as_bytes(), BLUETICK_INFO);
            chacha_open(&okm, &[ad], ciphertext)
        }
        CipherSuite::SignalV3Compat => {
            let okm = hkdf_sha256::<48>(&ZERO_SALT, seed.as_bytes(), COMPAT_INFO);
            aes_cbc_decrypt(&okm[16..], &okm[..16], ciphertext)
        }
    }
}

/// The message signature: Ed25519, or under the symbolic suite its stand-in
/// keyed by the signing public key (the Ed25519 key pair is still made, so
/// the encodings keep their layout).
fn sign_message(suite: CipherSuite, signing: &SigningKey, signed: &[u8]) -> [u8; SIGNATURE_LEN] {
    match suite {
        CipherSuite::SymbolicInsecure => symbolic::sign(&PublicKey(signing.verifying_key().to_bytes()), signed).0,
        CipherSuite::BluetickV1 | CipherSuite::SignalV3Compat => signing.sign(signed).to_bytes(),
    }
}

fn signature_holds(suite: CipherSuite, public: &VerifyingKey, signed: &[u8], signature: &[u8; SIGNATURE_LEN]) -> bool {
    match suite {
        CipherSuite::SymbolicInsecure => {
            symbolic::verifies(&PublicKey(public.to_bytes()), signed, &crate::xeddsa::Signature(*signature))
        }
        CipherSuite::BluetickV1 | CipherSuite::SignalV3Compat => {
            public.verify_strict(signed, &Signature::from_bytes(signature)).is_ok()
        }
    }
}

fn parse_signing_public(bytes: &[u8; 32], key_id: u32) -> Result<VerifyingKey, SenderKeyError> {
    match VerifyingKey::from_bytes(bytes) {
        Ok(key) if !key.is_weak() => Ok(key),
        _ => Err(SenderKeyError::InvalidSigningKey { key_id }),
    }
}

/// What a sender gives each member so it can read the sender's group messages:
/// the current chain key and iteration, and the key that signs them.
///
/// It must travel over an authenticated, confidential channel (the pairwise
/// Double Ratchet sessions). Encoding: see the module docs, 89 bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SenderKeyDistribution {
    /// The cipher suite of the group.
    pub suite: CipherSuite,
    /// The group these keys are for.
    pub group_id: GroupId,
    /// Which of the sender's keys this is; changes on every rotation.
    pub key_id: u32,
    /// The iteration `chain_key` keys; earlier messages stay unreadable to the recipient.
    pub iteration: u32,
    /// The chain key at `iteration`.
    pub chain_key: SecretKey,
    /// The sender's Ed25519 public key for this key id.
    #[serde(with = "crate::bytes_serde::fixed")]
    pub signing_public: [u8; 32],
}

impl SenderKeyDistribution {
    /// `version (1) ‖ group_id (16) ‖ key_id (4, BE) ‖ iteration (4, BE) ‖ chain_key (32) ‖ signing_public (32)`.
    /// The result holds the chain key, hence [`Zeroizing`].
    pub fn to_bytes(&self) -> Zeroizing<Vec<u8>> {
        let mut out = Zeroizing::new(Vec::with_capacity(DISTRIBUTION_LEN));
        out.push(version_byte(self.suite));
        out.extend_from_slice(&self.group_id.0);
        out.extend_from_slice(&self.key_id.to_be_bytes());
        out.extend_from_slice(&self.iteration.to_be_bytes());
        out.extend_from_slice(self.chain_key.as_bytes());
        out.extend_from_slice(&self.signing_public);
        out
    }

    /// Inverse of [`SenderKeyDistribution::to_bytes`]. Also rejects a signing key
    /// that is not a usable Ed25519 point, so a bad distribution fails here rather
    /// than on every later message.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, SenderKeyError> {
        let fixed: &[u8; DISTRIBUTION_LEN] = bytes
            .try_into()
            .map_err(|_| SenderKeyError::WrongLength { len: bytes.len(), expected: DISTRIBUTION_LEN })?;
        let ([version], rest) = split::<1>(fixed);
        let suite = suite_from_version(version)?;
        let (group_id, rest) = split::<16>(rest);
        let (key_id, rest) = split::<4>(rest);
        let (iteration, rest) = split::<4>(rest);
        let (chain_key, rest) = split::<32>(rest);
        let (signing_public, _) = split::<32>(rest);
        let key_id = u32::from_be_bytes(key_id);
        parse_signing_public(&signing_public, key_id)?;
        Ok(SenderKeyDistribution {
            suite,
            group_id: GroupId(group_id),
            key_id,
            iteration: u32::from_be_bytes(iteration),
            chain_key: SecretKey::new(chain_key),
            signing_public,
        })
    }
}

/// Splits `N` bytes off the front of a slice whose length the caller has
/// checked; a short slice yields zeros rather than a panic (unreachable: both
/// decoders pass fixed-size arrays of exactly the lengths they then split).
fn split<const N: usize>(bytes: &[u8]) -> ([u8; N], &[u8]) {
    match bytes.split_first_chunk::<N>() {
        Some((head, rest)) => (*head, rest),
        None => ([0u8; N], &[]),
    }
}

/// One encrypted, signed group message. Encoding: see the module docs.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupMessage {
    /// The suite, encoded as the version byte.
    pub suite: CipherSuite,
    /// The group it was sent to.
    pub group_id: GroupId,
    /// The sender's key id.
    pub key_id: u32,
    /// The position in the sender's chain.
    pub iteration: u32,
    /// ChaCha20-Poly1305 (`bluetick-v1`) or AES-256-CBC (`signal-v3-compat`) output.
    #[serde(with = "crate::bytes_serde::vec")]
    pub ciphertext: Vec<u8>,
    /// Ed25519 over every encoded byte before it.
    #[serde(with = "crate::bytes_serde::fixed")]
    pub signature: [u8; SIGNATURE_LEN],
}

impl fmt::Debug for GroupMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GroupMessage")
            .field("suite", &self.suite)
            .field("group_id", &self.group_id)
            .field("key_id", &self.key_id)
            .field("iteration", &self.iteration)
            .field("ciphertext_len", &self.ciphertext.len())
            .finish_non_exhaustive()
    }
}

impl GroupMessage {
    /// The bytes the signature covers: `version ‖ group_id ‖ key_id ‖ iteration ‖ ciphertext`.
    pub fn signed_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(GROUP_MESSAGE_HEADER_LEN + self.ciphertext.len() + SIGNATURE_LEN);
        out.push(version_byte(self.suite));
        out.extend_from_slice(&self.group_id.0);
        out.extend_from_slice(&self.key_id.to_be_bytes());
        out.extend_from_slice(&self.iteration.to_be_bytes());
        out.extend_from_slice(&self.ciphertext);
        out
    }

    /// `signed_bytes ‖ signature (64)`.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = self.signed_bytes();
        out.extend_from_slice(&self.signature);
        out
    }

    /// Inverse of [`GroupMessage::to_bytes`]. Checks only the shape; the
    /// signature is checked by [`SenderKeyRecord::decrypt`].
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, SenderKeyError> {
        let min = GROUP_MESSAGE_HEADER_LEN + MIN_CIPHERTEXT_LEN + SIGNATURE_LEN;
        let too_short = SenderKeyError::TooShort { len: bytes.len(), min };
        let (header, rest) = bytes.split_first_chunk::<GROUP_MESSAGE_HEADER_LEN>().ok_or(too_short)?;
        let (ciphertext, signature) = rest.split_last_chunk::<SIGNATURE_LEN>().ok_or(too_short)?;
        if ciphertext.len() < MIN_CIPHERTEXT_LEN {
            return Err(too_short);
        }
        let ([version], rest) = split::<1>(header);
        let suite = suite_from_version(version)?;
        let (group_id, rest) = split::<16>(rest);
        let (key_id, rest) = split::<4>(rest);
        let (iteration, _) = split::<4>(rest);
        Ok(GroupMessage {
            suite,
            group_id: GroupId(group_id),
            key_id: u32::from_be_bytes(key_id),
            iteration: u32::from_be_bytes(iteration),
            ciphertext: ciphertext.to_vec(),
            signature: *signature,
        })
    }
}

/// Our own sending key for one group: the chain we encrypt with and the key we sign with.
#[derive(Clone, Serialize, Deserialize)]
pub struct OwnSenderKey {
    suite: CipherSuite,
    group_id: GroupId,
    key_id: u32,
    chain: ChainKey,
    #[serde(with = "signing_key_serde")]
    signing: Box<SigningKey>,
}

impl fmt::Debug for OwnSenderKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OwnSenderKey")
            .field("suite", &self.suite)
            .field("group_id", &self.group_id)
            .field("key_id", &self.key_id)
            .field("iteration", &self.chain.iteration)
            .field("chain_key", &"[redacted]")
            .field("signing_public", &hex::encode(self.signing.verifying_key().as_bytes()))
            .finish()
    }
}

impl OwnSenderKey {
    /// A fresh sender key for `group_id`: random key id, chain key and signing key.
    pub fn new<R: RngCore + CryptoRng>(suite: CipherSuite, group_id: GroupId, rng: &mut R) -> Self {
        let key_id = rng.next_u32();
        let (chain, signing) = fresh_keys(rng);
        OwnSenderKey { suite, group_id, key_id, chain, signing }
    }

    /// The distribution for members who should read our messages from now on.
    /// It carries the *current* chain key, so a member added later cannot read
    /// what was sent before it joined.
    pub fn distribution(&self) -> SenderKeyDistribution {
        SenderKeyDistribution {
            suite: self.suite,
            group_id: self.group_id,
            key_id: self.key_id,
            iteration: self.chain.iteration,
            chain_key: self.chain.key.clone(),
            signing_public: self.signing.verifying_key().to_bytes(),
        }
    }

    /// Encrypts and signs one message, then advances the chain so the key just
    /// used is gone. Fails only when the chain is exhausted (after 2^32 − 1
    /// messages); [`OwnSenderKey::rotate`] then starts a new one.
    pub fn encrypt(&mut self, plaintext: &[u8]) -> Result<GroupMessage, SenderKeyError> {
        let next = self.chain.next(self.key_id)?;
        let iteration = self.chain.iteration;
        let seed = self.chain.message_seed();
        let ad = associated_data(&self.group_id, self.key_id, iteration);
        let mut message = GroupMessage {
            suite: self.suite,
            group_id: self.group_id,
            key_id: self.key_id,
            iteration,
            ciphertext: seal(self.suite, &seed, &ad, plaintext),
            signature: [0u8; SIGNATURE_LEN],
        };
        message.signature = sign_message(self.suite, &self.signing, &message.signed_bytes());
        self.chain = next;
        Ok(message)
    }

    /// Replaces the chain and signing key and moves to the next key id; returns
    /// the distribution to send to the members that remain. Call it on every
    /// membership change: a removed member keeps the old chain key, and only a
    /// new, undisclosed one stops it reading later messages.
    pub fn rotate<R: RngCore + CryptoRng>(&mut self, rng: &mut R) -> SenderKeyDistribution {
        // Sequential ids cannot collide with the few ids a receiver still holds,
        // which a fresh random id could (and a receiver ignores a re-sent id).
        self.key_id = self.key_id.wrapping_add(1);
        let (chain, signing) = fresh_keys(rng);
        self.chain = chain;
        self.signing = signing;
        self.distribution()
    }

    /// The cipher suite.
    pub fn suite(&self) -> CipherSuite {
        self.suite
    }

    /// The group.
    pub fn group_id(&self) -> GroupId {
        self.group_id
    }

    /// The current key id.
    pub fn key_id(&self) -> u32 {
        self.key_id
    }

    /// The iteration the next message will carry.
    pub fn iteration(&self) -> u32 {
        self.chain.iteration
    }
}

fn fresh_keys<R: RngCore + CryptoRng>(rng: &mut R) -> (ChainKey, Box<SigningKey>) {
    let chain = ChainKey { iteration: 0, key: SecretKey::generate(rng) };
    let mut seed = Zeroizing::new([0u8; 32]);
    rng.fill_bytes(seed.as_mut());
    (chain, Box::new(SigningKey::from_bytes(&seed)))
}

/// What a receiver knows about one of a sender's key ids.
#[derive(Clone, Serialize, Deserialize)]
struct SenderKeyState {
    key_id: u32,
    chain: ChainKey,
    /// Kept decompressed so a message costs one verification, not a point decoding too.
    #[serde(with = "verifying_key_serde")]
    signing_public: VerifyingKey,
    /// Message seeds of iterations skipped over, by iteration; each is removed when used.
    skipped: BTreeMap<u32, SecretKey>,
    /// Test-only weakening: message seeds that were used, kept instead of deleted.
    #[cfg(feature = "weak-keep-used-keys")]
    #[serde(default)]
    used: BTreeMap<u32, SecretKey>,
}

/// How to get one message's key, computed without touching the state so a
/// failed decryption leaves nothing behind.
enum Step {
    /// The key was stored when its iteration was skipped over.
    Skipped { seed: SecretKey },
    /// Test-only: the key was used before and deliberately kept.
    #[cfg(feature = "weak-keep-used-keys")]
    Used { seed: SecretKey },
    /// The message is at or ahead of the chain: skip to it.
    Advance { skipped: Vec<(u32, SecretKey)>, seed: SecretKey, next: ChainKey },
}

impl Step {
    fn seed(&self) -> &SecretKey {
        match self {
            Step::Skipped { seed } | Step::Advance { seed, .. } => seed,
            #[cfg(feature = "weak-keep-used-keys")]
            Step::Used { seed } => seed,
        }
    }
}

impl SenderKeyState {
    fn from_distribution(distribution: &SenderKeyDistribution) -> Result<Self, SenderKeyError> {
        Ok(SenderKeyState {
            key_id: distribution.key_id,
            chain: ChainKey { iteration: distribution.iteration, key: distribution.chain_key.clone() },
            signing_public: parse_signing_public(&distribution.signing_public, distribution.key_id)?,
            skipped: BTreeMap::new(),
            #[cfg(feature = "weak-keep-used-keys")]
            used: BTreeMap::new(),
        })
    }

    fn plan(&self, iteration: u32) -> Result<Step, SenderKeyError> {
        let key_id = self.key_id;
        if iteration < self.chain.iteration {
            if let Some(seed) = self.skipped.get(&iteration) {
                return Ok(Step::Skipped { seed: seed.clone() });
            }
            #[cfg(feature = "weak-keep-used-keys")]
            if let Some(seed) = self.used.get(&iteration) {
                return Ok(Step::Used { seed: seed.clone() });
            }
            return Err(SenderKeyError::DuplicateMessage { key_id, iteration });
        }
        let gap = iteration - self.chain.iteration;
        if gap > MAX_GAP {
            return Err(SenderKeyError::TooFarAhead { iteration, gap, limit: MAX_GAP });
        }
        let mut chain = self.chain.clone();
        let mut skipped = Vec::with_capacity(gap as usize);
        while chain.iteration < iteration {
            let next = chain.next(key_id)?;
            skipped.push((chain.iteration, chain.message_seed()));
            chain = next;
        }
        let next = chain.next(key_id)?;
        Ok(Step::Advance { skipped, seed: chain.message_seed(), next })
    }

    fn commit(&mut self, iteration: u32, step: Step) {
        match step {
            Step::Skipped { seed } => {
                self.skipped.remove(&iteration);
                #[cfg(feature = "weak-keep-used-keys")]
                self.used.insert(iteration, seed);
                #[cfg(not(feature = "weak-keep-used-keys"))]
                drop(seed);
            }
            #[cfg(feature = "weak-keep-used-keys")]
            Step::Used { .. } => {}
            Step::Advance { skipped, seed, next } => {
                self.skipped.extend(skipped);
                #[cfg(feature = "weak-keep-used-keys")]
                self.used.insert(iteration, seed);
                #[cfg(not(feature = "weak-keep-used-keys"))]
                drop(seed);
                self.chain = next;
            }
        }
    }
}

/// Everything a receiver knows about one sender in one group: up to
/// [`MAX_SENDER_KEY_STATES`] key ids, newest first.
///
/// [`SenderKeyRecord::decrypt`] computes the new state on the side and commits
/// it only once the plaintext is out, so a rejected message (forged, tampered,
/// replayed, too far ahead) leaves the record exactly as it was.
#[derive(Clone, Serialize, Deserialize)]
pub struct SenderKeyRecord {
    suite: CipherSuite,
    group_id: GroupId,
    states: VecDeque<SenderKeyState>,
}

impl fmt::Debug for SenderKeyRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SenderKeyRecord")
            .field("suite", &self.suite)
            .field("group_id", &self.group_id)
            .field("key_ids", &self.key_ids())
            .field("skipped_keys", &self.skipped_key_count())
            .finish_non_exhaustive()
    }
}

impl SenderKeyRecord {
    /// A record holding one distribution. `suite` is the group's suite as the
    /// caller knows it; a distribution naming another is refused, so a sender
    /// cannot downgrade the group to the unauthenticated CBC mode.
    pub fn from_distribution(suite: CipherSuite, distribution: &SenderKeyDistribution) -> Result<Self, SenderKeyError> {
        if distribution.suite != suite {
            return Err(SenderKeyError::SuiteMismatch { expected: suite, got: distribution.suite });
        }
        let state = SenderKeyState::from_distribution(distribution)?;
        Ok(SenderKeyRecord { suite, group_id: distribution.group_id, states: VecDeque::from([state]) })
    }

    /// Adds a (rotated) key id, evicting the oldest beyond [`MAX_SENDER_KEY_STATES`].
    ///
    /// A distribution for a key id and signing key we already hold changes
    /// nothing: re-applying it would rewind the chain and make already-read
    /// messages decrypt again. The same key id with another signing key (the
    /// sender reinstalled) replaces the old state.
    pub fn add_distribution(&mut self, distribution: &SenderKeyDistribution) -> Result<(), SenderKeyError> {
        if distribution.group_id != self.group_id {
            return Err(SenderKeyError::WrongGroup { expected: self.group_id, got: distribution.group_id });
        }
        if distribution.suite != self.suite {
            return Err(SenderKeyError::SuiteMismatch { expected: self.suite, got: distribution.suite });
        }
        let state = SenderKeyState::from_distribution(distribution)?;
        if let Some(index) = self.states.iter().position(|s| s.key_id == state.key_id) {
            if self.states.get(index).is_some_and(|s| s.signing_public == state.signing_public) {
                return Ok(());
            }
            self.states.remove(index);
        }
        self.states.truncate(MAX_SENDER_KEY_STATES - 1);
        self.states.push_front(state);
        Ok(())
    }

    /// Verifies and decrypts one group message.
    ///
    /// Order of checks: group, suite, key id, then the signature, and only then
    /// any chain work or decryption, so a forged message costs one verification.
    pub fn decrypt(&mut self, message: &GroupMessage) -> Result<Zeroizing<Vec<u8>>, SenderKeyError> {
        let (key_id, iteration) = (message.key_id, message.iteration);
        if message.group_id != self.group_id {
            return Err(SenderKeyError::WrongGroup { expected: self.group_id, got: message.group_id });
        }
        if message.suite != self.suite {
            return Err(SenderKeyError::SuiteMismatch { expected: self.suite, got: message.suite });
        }
        let state =
            self.states.iter_mut().find(|s| s.key_id == key_id).ok_or(SenderKeyError::UnknownKeyId { key_id })?;
        if !signature_holds(self.suite, &state.signing_public, &message.signed_bytes(), &message.signature) {
            return Err(SenderKeyError::BadSignature { key_id, iteration });
        }
        let step = state.plan(iteration)?;
        let ad = associated_data(&self.group_id, key_id, iteration);
        let plaintext = open(self.suite, step.seed(), &ad, &message.ciphertext)
            .map_err(|source| SenderKeyError::Decrypt { key_id, iteration, source })?;
        state.commit(iteration, step);
        self.evict_skipped_keys();
        Ok(plaintext)
    }

    /// Drops the oldest skipped keys beyond [`MAX_SKIPPED_KEYS`]: from the
    /// oldest key id first, lowest iteration first, as those messages are the
    /// least likely still to arrive.
    fn evict_skipped_keys(&mut self) {
        let mut excess = self.skipped_key_count().saturating_sub(MAX_SKIPPED_KEYS);
        for state in self.states.iter_mut().rev() {
            while excess > 0 && state.skipped.pop_first().is_some() {
                excess -= 1;
            }
        }
    }

    /// The cipher suite.
    pub fn suite(&self) -> CipherSuite {
        self.suite
    }

    /// The group.
    pub fn group_id(&self) -> GroupId {
        self.group_id
    }

    /// The key ids held, newest first.
    pub fn key_ids(&self) -> Vec<u32> {
        self.states.iter().map(|s| s.key_id).collect()
    }

    /// Skipped message keys stored over all key ids.
    pub fn skipped_key_count(&self) -> usize {
        self.states.iter().map(|s| s.skipped.len()).sum()
    }
}

/// Serde for an Ed25519 signing key as its 32-byte seed in hex.
mod signing_key_serde {
    use ed25519_dalek::SigningKey;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use crate::keys::SecretKey;

    pub fn serialize<S: Serializer>(key: &SigningKey, s: S) -> Result<S::Ok, S::Error> {
        SecretKey::new(key.to_bytes()).serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Box<SigningKey>, D::Error> {
        let seed = SecretKey::deserialize(d)?;
        Ok(Box::new(SigningKey::from_bytes(seed.as_bytes())))
    }
}

/// Serde for an Ed25519 public key as its 32 bytes (hex in human-readable
/// formats), validated on the way in.
mod verifying_key_serde {
    use ed25519_dalek::VerifyingKey;
    use serde::{de::Error, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(key: &VerifyingKey, s: S) -> Result<S::Ok, S::Error> {
        crate::bytes_serde::fixed::serialize(key.as_bytes(), s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<VerifyingKey, D::Error> {
        let bytes: [u8; 32] = crate::bytes_serde::fixed::deserialize(d)?;
        VerifyingKey::from_bytes(&bytes).map_err(D::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    const SUITES: [CipherSuite; 2] = [CipherSuite::BluetickV1, CipherSuite::SignalV3Compat];
    const GROUP: GroupId = GroupId([0x42; 16]);

    fn setup(suite: CipherSuite, seed: u64) -> (OwnSenderKey, SenderKeyRecord, ChaCha20Rng) {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let sender = OwnSenderKey::new(suite, GROUP, &mut rng);
        let record = SenderKeyRecord::from_distribution(suite, &sender.distribution()).unwrap();
        (sender, record, rng)
    }

    fn state_of(record: &SenderKeyRecord) -> String {
        serde_json::to_string(record).unwrap()
    }

    fn encrypt_n(sender: &mut OwnSenderKey, n: usize) -> Vec<GroupMessage> {
        (0..n).map(|i| sender.encrypt(format!("message {i}").as_bytes()).unwrap()).collect()
    }

    /// Signs `message` as `sender` would, for building hostile but signed inputs.
    fn sign_as(sender: &OwnSenderKey, message: &mut GroupMessage) {
        message.signature = sender.signing.sign(&message.signed_bytes()).to_bytes();
    }

    #[test]
    fn messages_round_trip_in_both_suites() {
        for suite in SUITES {
            let (mut sender, mut record, _) = setup(suite, 1);
            for len in [0usize, 1, 15, 16, 17, 1024] {
                let plaintext = vec![0x5a; len];
                let message = sender.encrypt(&plaintext).unwrap();
                let expected_len = match suite {
                    CipherSuite::BluetickV1 | CipherSuite::SymbolicInsecure => len + 16,
                    CipherSuite::SignalV3Compat => (len / 16 + 1) * 16,
                };
                assert_eq!(message.ciphertext.len(), expected_len, "{suite:?} len {len}");
                let bytes = message.to_bytes();
                assert_eq!(bytes.len(), GROUP_MESSAGE_HEADER_LEN + expected_len + SIGNATURE_LEN);
                let decoded = GroupMessage::from_bytes(&bytes).unwrap();
                assert_eq!(decoded, message);
                assert_eq!(record.decrypt(&decoded).unwrap().as_slice(), &plaintext[..]);
            }
        }
    }

    #[test]
    fn out_of_order_messages_each_decrypt_once() {
        for suite in SUITES {
            let (mut sender, mut record, _) = setup(suite, 2);
            let messages = encrypt_n(&mut sender, 6);
            for i in [3, 0, 5, 1, 4, 2] {
                assert_eq!(record.decrypt(&messages[i]).unwrap().as_slice(), format!("message {i}").as_bytes());
            }
            assert_eq!(record.skipped_key_count(), 0, "every skipped key is deleted once used");
        }
    }

    #[test]
    fn gap_limit_accepts_exactly_max_gap_rejects_one_more_and_bounds_the_store() {
        let (mut sender, mut record, _) = setup(CipherSuite::BluetickV1, 3);
        let messages = encrypt_n(&mut sender, MAX_GAP as usize + 11);
        let over = &messages[MAX_GAP as usize + 1];
        let before = state_of(&record);
        assert_eq!(
            record.decrypt(over),
            Err(SenderKeyError::TooFarAhead { iteration: MAX_GAP + 1, gap: MAX_GAP + 1, limit: MAX_GAP })
        );
        assert_eq!(state_of(&record), before, "a refused jump stores nothing");

        record.decrypt(&messages[MAX_GAP as usize]).unwrap();
        assert_eq!(record.skipped_key_count(), MAX_SKIPPED_KEYS);
        // Nine more skipped keys push the store over its limit: the nine oldest go.
        record.decrypt(&messages[MAX_GAP as usize + 10]).unwrap();
        assert_eq!(record.skipped_key_count(), MAX_SKIPPED_KEYS);
        for i in 0..9u32 {
            assert_eq!(
                record.decrypt(&messages[i as usize]),
                Err(SenderKeyError::DuplicateMessage { key_id: sender.key_id(), iteration: i })
            );
        }
        for i in [9, MAX_GAP as usize - 1, MAX_GAP as usize + 1, MAX_GAP as usize + 9] {
            assert_eq!(record.decrypt(&messages[i]).unwrap().as_slice(), format!("message {i}").as_bytes());
        }
    }

    #[test]
    fn replayed_message_is_a_duplicate_and_changes_nothing() {
        for suite in SUITES {
            let (mut sender, mut record, _) = setup(suite, 4);
            let messages = encrypt_n(&mut sender, 3);
            // One in order (chain key step) and one skipped-then-used key.
            record.decrypt(&messages[0]).unwrap();
            record.decrypt(&messages[2]).unwrap();
            record.decrypt(&messages[1]).unwrap();
            for (i, message) in messages.iter().enumerate() {
                let before = state_of(&record);
                let replay = record.decrypt(message);
                if cfg!(feature = "weak-keep-used-keys") {
                    assert_eq!(replay.unwrap().as_slice(), format!("message {i}").as_bytes());
                } else {
                    assert_eq!(
                        replay,
                        Err(SenderKeyError::DuplicateMessage { key_id: sender.key_id(), iteration: i as u32 })
                    );
                }
                assert_eq!(state_of(&record), before);
            }
        }
    }

    #[test]
    fn message_for_another_group_is_refused() {
        let (mut sender, mut record, mut rng) = setup(CipherSuite::BluetickV1, 5);
        let other = GroupId([0x43; 16]);
        let mut message = sender.encrypt(b"hi").unwrap();
        message.group_id = other;
        sign_as(&sender, &mut message);
        let before = state_of(&record);
        assert_eq!(record.decrypt(&message), Err(SenderKeyError::WrongGroup { expected: GROUP, got: other }));
        assert_eq!(state_of(&record), before);

        let foreign = OwnSenderKey::new(CipherSuite::BluetickV1, other, &mut rng).distribution();
        assert_eq!(record.add_distribution(&foreign), Err(SenderKeyError::WrongGroup { expected: GROUP, got: other }));
        assert_eq!(state_of(&record), before);
    }

    #[test]
    fn suite_mismatch_is_refused() {
        let (mut sender, mut record, _) = setup(CipherSuite::BluetickV1, 6);
        let dist = sender.distribution();
        assert_eq!(
            SenderKeyRecord::from_distribution(CipherSuite::SignalV3Compat, &dist).map(|_| ()),
            Err(SenderKeyError::SuiteMismatch { expected: CipherSuite::SignalV3Compat, got: CipherSuite::BluetickV1 })
        );
        let mut message = sender.encrypt(b"hi").unwrap();
        message.suite = CipherSuite::SignalV3Compat;
        sign_as(&sender, &mut message);
        assert_eq!(
            record.decrypt(&message),
            Err(SenderKeyError::SuiteMismatch { expected: CipherSuite::BluetickV1, got: CipherSuite::SignalV3Compat })
        );
    }

    #[test]
    fn bad_signature_is_reported_before_any_decryption_or_chain_work() {
        for suite in SUITES {
            let (mut sender, mut record, _) = setup(suite, 7);
            let forger = SigningKey::from_bytes(&[9u8; 32]);
            let messages = encrypt_n(&mut sender, 2);
            record.decrypt(&messages[0]).unwrap();
            let key_id = sender.key_id();

            // A member who knows the chain key can produce a perfectly valid
            // ciphertext; only the signature tells its message apart.
            let mut forged = messages[1].clone();
            forged.signature = forger.sign(&forged.signed_bytes()).to_bytes();
            // Would fail to decrypt, would be a duplicate, would be too far ahead:
            // the signature error must win every time.
            let mut garbage = messages[1].clone();
            garbage.ciphertext = vec![0u8; 3];
            let mut replay = messages[0].clone();
            replay.signature[0] ^= 1;
            let mut far = messages[1].clone();
            far.iteration = u32::MAX;

            let before = state_of(&record);
            for message in [&forged, &garbage, &replay, &far] {
                assert_eq!(
                    record.decrypt(message),
                    Err(SenderKeyError::BadSignature { key_id, iteration: message.iteration })
                );
                assert_eq!(state_of(&record), before);
            }
            assert_eq!(record.decrypt(&messages[1]).unwrap().as_slice(), b"message 1");
        }
    }

    #[test]
    fn signed_message_that_fails_to_decrypt_leaves_record_unchanged() {
        for suite in SUITES {
            let (mut sender, mut record, _) = setup(suite, 8);
            let messages = encrypt_n(&mut sender, 2);
            let mut broken = messages[1].clone();
            match suite {
                CipherSuite::BluetickV1 | CipherSuite::SymbolicInsecure => broken.ciphertext[0] ^= 1,
                // CBC has no tag: a flipped bit may still unpad, so break the length instead.
                CipherSuite::SignalV3Compat => broken.ciphertext.truncate(15),
            }
            sign_as(&sender, &mut broken);
            let before = state_of(&record);
            let source = match suite {
                CipherSuite::BluetickV1 | CipherSuite::SymbolicInsecure => AeadError::BadTag,
                CipherSuite::SignalV3Compat => AeadError::BadPadding,
            };
            assert_eq!(
                record.decrypt(&broken),
                Err(SenderKeyError::Decrypt { key_id: sender.key_id(), iteration: 1, source })
            );
            assert_eq!(state_of(&record), before, "the skipped key for iteration 0 was not stored");
            assert_eq!(record.decrypt(&messages[1]).unwrap().as_slice(), b"message 1");
            assert_eq!(record.decrypt(&messages[0]).unwrap().as_slice(), b"message 0");
        }
    }

    #[test]
    fn rotation_locks_out_members_left_with_the_old_distribution() {
        for suite in SUITES {
            let (mut sender, mut staying, mut rng) = setup(suite, 9);
            let mut removed = staying.clone();
            let old_key_id = sender.key_id();
            let in_flight = sender.encrypt(b"before the change").unwrap();

            let new_distribution = sender.rotate(&mut rng);
            assert_ne!(new_distribution.key_id, old_key_id);
            assert_eq!(new_distribution.iteration, 0);
            staying.add_distribution(&new_distribution).unwrap();
            let after = sender.encrypt(b"after the change").unwrap();

            assert_eq!(staying.decrypt(&after).unwrap().as_slice(), b"after the change");
            assert_eq!(staying.decrypt(&in_flight).unwrap().as_slice(), b"before the change");
            let before = state_of(&removed);
            assert_eq!(removed.decrypt(&after), Err(SenderKeyError::UnknownKeyId { key_id: new_distribution.key_id }));
            assert_eq!(state_of(&removed), before);
            // Even if the removed member forges a record entry with the new key id
            // from its old chain key, the new signing key does not verify for it,
            // and the chain key is new as well.
            let mut guess = new_distribution.clone();
            guess.chain_key = SecretKey::new([0u8; 32]);
            let mut guessed = SenderKeyRecord::from_distribution(suite, &guess).unwrap();
            assert!(guessed.decrypt(&after).is_err());
        }
    }

    #[test]
    fn only_the_newest_key_ids_are_kept() {
        let (mut sender, mut record, mut rng) = setup(CipherSuite::BluetickV1, 10);
        let first_key_id = sender.key_id();
        let first = sender.encrypt(b"first").unwrap();
        let mut ids = vec![first_key_id];
        for _ in 0..MAX_SENDER_KEY_STATES {
            let dist = sender.rotate(&mut rng);
            record.add_distribution(&dist).unwrap();
            ids.push(dist.key_id);
        }
        let newest_first: Vec<u32> = ids.iter().rev().take(MAX_SENDER_KEY_STATES).copied().collect();
        assert_eq!(record.key_ids(), newest_first);
        assert_eq!(record.decrypt(&first), Err(SenderKeyError::UnknownKeyId { key_id: first_key_id }));
        assert_eq!(record.decrypt(&sender.encrypt(b"last").unwrap()).unwrap().as_slice(), b"last");
    }

    #[test]
    fn resent_distribution_does_not_rewind_the_chain() {
        let (mut sender, mut record, _) = setup(CipherSuite::BluetickV1, 11);
        let original = sender.distribution();
        let messages = encrypt_n(&mut sender, 2);
        record.decrypt(&messages[1]).unwrap();
        let before = state_of(&record);
        record.add_distribution(&original).unwrap();
        assert_eq!(state_of(&record), before);
        let replay = record.decrypt(&messages[1]);
        if cfg!(feature = "weak-keep-used-keys") {
            assert!(replay.is_ok());
        } else {
            assert_eq!(replay, Err(SenderKeyError::DuplicateMessage { key_id: sender.key_id(), iteration: 1 }));
        }
    }

    #[test]
    fn same_key_id_with_a_new_signing_key_replaces_the_state() {
        let (sender, mut record, mut rng) = setup(CipherSuite::BluetickV1, 12);
        // A reinstalled sender that happened to draw the same key id.
        let mut reinstalled = OwnSenderKey::new(CipherSuite::BluetickV1, GROUP, &mut rng);
        reinstalled.key_id = sender.key_id();
        record.add_distribution(&reinstalled.distribution()).unwrap();
        assert_eq!(record.key_ids(), vec![sender.key_id()]);
        assert_eq!(record.decrypt(&reinstalled.encrypt(b"new").unwrap()).unwrap().as_slice(), b"new");
    }

    #[test]
    fn distribution_encoding_round_trips_and_rejects_malformed_input() {
        for suite in SUITES {
            let (sender, _, _) = setup(suite, 13);
            let dist = sender.distribution();
            let bytes = dist.to_bytes();
            assert_eq!(bytes.len(), DISTRIBUTION_LEN);
            assert_eq!(bytes[0], version_byte(suite));
            assert_eq!(SenderKeyDistribution::from_bytes(&bytes).unwrap(), dist);
            for len in 0..bytes.len() + 2 {
                let mut input = bytes.to_vec();
                input.resize(len, 0);
                if len != DISTRIBUTION_LEN {
                    assert_eq!(
                        SenderKeyDistribution::from_bytes(&input),
                        Err(SenderKeyError::WrongLength { len, expected: DISTRIBUTION_LEN })
                    );
                }
            }
            let mut bad_version = bytes.to_vec();
            bad_version[0] = 0x02;
            assert_eq!(
                SenderKeyDistribution::from_bytes(&bad_version),
                Err(SenderKeyError::UnknownVersion { version: 0x02 })
            );
            // The identity point: small order, so a "signature" under it proves nothing.
            let mut weak = bytes.to_vec();
            let mut identity = [0u8; 32];
            identity[0] = 1;
            weak[DISTRIBUTION_LEN - 32..].copy_from_slice(&identity);
            assert_eq!(
                SenderKeyDistribution::from_bytes(&weak),
                Err(SenderKeyError::InvalidSigningKey { key_id: dist.key_id })
            );
            let mut weak_dist = dist.clone();
            weak_dist.signing_public = identity;
            assert_eq!(
                SenderKeyRecord::from_distribution(suite, &weak_dist).map(|_| ()),
                Err(SenderKeyError::InvalidSigningKey { key_id: dist.key_id })
            );
        }
    }

    #[test]
    fn group_message_decoding_rejects_short_or_unknown_input() {
        let min = GROUP_MESSAGE_HEADER_LEN + MIN_CIPHERTEXT_LEN + SIGNATURE_LEN;
        let (mut sender, _, _) = setup(CipherSuite::BluetickV1, 14);
        let bytes = sender.encrypt(b"").unwrap().to_bytes();
        assert_eq!(bytes.len(), min, "an empty plaintext gives the shortest message");
        for len in 0..min {
            assert_eq!(GroupMessage::from_bytes(&bytes[..len]), Err(SenderKeyError::TooShort { len, min }));
        }
        let mut unknown = bytes.clone();
        unknown[0] = 0xff;
        assert_eq!(GroupMessage::from_bytes(&unknown), Err(SenderKeyError::UnknownVersion { version: 0xff }));
    }

    #[test]
    fn chain_never_wraps_around() {
        let (mut sender, _, _) = setup(CipherSuite::BluetickV1, 15);
        sender.chain.iteration = u32::MAX;
        let dist = sender.distribution();
        assert_eq!(sender.encrypt(b"x"), Err(SenderKeyError::ChainExhausted { key_id: sender.key_id() }));
        // A receiver handed a chain at the last iteration refuses it too, even
        // for a correctly signed message.
        let mut record = SenderKeyRecord::from_distribution(CipherSuite::BluetickV1, &dist).unwrap();
        let mut message = GroupMessage {
            suite: CipherSuite::BluetickV1,
            group_id: GROUP,
            key_id: sender.key_id(),
            iteration: u32::MAX,
            ciphertext: vec![0u8; 16],
            signature: [0u8; SIGNATURE_LEN],
        };
        sign_as(&sender, &mut message);
        assert_eq!(record.decrypt(&message), Err(SenderKeyError::ChainExhausted { key_id: sender.key_id() }));
    }

    /// Rebuilds both suites' message keys from the documented schedule with the
    /// primitive crates directly, so the README text (not this module) is the spec.
    #[test]
    fn message_keys_follow_the_documented_schedule() {
        use aes::cipher::{block_padding::Pkcs7, BlockDecryptMut, KeyIvInit};
        use chacha20poly1305::aead::{Aead, KeyInit, Payload};
        use hkdf::Hkdf;
        use hmac::{Hmac, Mac};
        use sha2::Sha256;

        let hmac = |key: &[u8], byte: u8| -> [u8; 32] {
            let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).unwrap();
            mac.update(&[byte]);
            mac.finalize().into_bytes().into()
        };
        for suite in SUITES {
            let (mut sender, _, _) = setup(suite, 16);
            let dist = sender.distribution();
            let messages = encrypt_n(&mut sender, 2);
            let ck1 = hmac(dist.chain_key.as_bytes(), 0x02);
            let seed = hmac(&ck1, 0x01);
            let message = &messages[1];
            let mut ad = GROUP.0.to_vec();
            ad.extend_from_slice(&message.key_id.to_be_bytes());
            ad.extend_from_slice(&1u32.to_be_bytes());
            let plaintext = match suite {
                CipherSuite::BluetickV1 | CipherSuite::SymbolicInsecure => {
                    let mut okm = [0u8; 44];
                    Hkdf::<Sha256>::new(Some(&[0u8; 32]), &seed).expand(b"bluetick sender key v1", &mut okm).unwrap();
                    chacha20poly1305::ChaCha20Poly1305::new(okm[..32].into())
                        .decrypt(okm[32..].into(), Payload { msg: &message.ciphertext, aad: &ad })
                        .unwrap()
                }
                CipherSuite::SignalV3Compat => {
                    let mut okm = [0u8; 48];
                    Hkdf::<Sha256>::new(Some(&[0u8; 32]), &seed).expand(b"WhisperGroup", &mut okm).unwrap();
                    cbc::Decryptor::<aes::Aes256>::new_from_slices(&okm[16..], &okm[..16])
                        .unwrap()
                        .decrypt_padded_vec_mut::<Pkcs7>(&message.ciphertext)
                        .unwrap()
                }
            };
            assert_eq!(plaintext, b"message 1");
            let public = VerifyingKey::from_bytes(&dist.signing_public).unwrap();
            let bytes = message.to_bytes();
            let (signed, signature) = bytes.split_at(bytes.len() - 64);
            public.verify_strict(signed, &Signature::from_slice(signature).unwrap()).unwrap();
        }
    }

    #[test]
    fn debug_output_never_shows_key_material() {
        let (mut sender, mut record, _) = setup(CipherSuite::BluetickV1, 17);
        let dist = sender.distribution();
        let messages = encrypt_n(&mut sender, 3);
        record.decrypt(&messages[2]).unwrap();
        let chain_hex = hex::encode(dist.chain_key.as_bytes());
        let seed_hex = hex::encode(sender.signing.to_bytes());
        for text in [format!("{sender:?}"), format!("{record:?}"), format!("{dist:?}"), format!("{:?}", messages[0])] {
            assert!(!text.contains(&chain_hex) && !text.contains(&seed_hex), "{text}");
        }
        assert!(format!("{dist:?}").contains("redacted"));
        assert!(format!("{sender:?}").contains("redacted"));
    }
}

#[cfg(test)]
mod accessor_tests {
    use super::*;
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    #[test]
    fn keys_and_records_report_their_suite_and_the_sender_its_iteration() {
        for suite in [CipherSuite::BluetickV1, CipherSuite::SignalV3Compat] {
            let mut rng = ChaCha20Rng::seed_from_u64(5);
            let mut sender = OwnSenderKey::new(suite, GroupId([9; 16]), &mut rng);
            let record = SenderKeyRecord::from_distribution(suite, &sender.distribution()).unwrap();
            assert_eq!((sender.suite(), record.suite()), (suite, suite));
            assert_eq!(sender.iteration(), 0);
            for _ in 0..3 {
                sender.encrypt(b"x").unwrap();
            }
            assert_eq!(sender.iteration(), 3);
            assert_eq!(sender.distribution().iteration, 3);
        }
    }
}
