//! Known-answer vectors: a fixed X3DH handshake and a 10-message Double Ratchet
//! conversation per cipher suite, a sender-key session, and a 200 KiB media file.
//!
//! Every key that the code draws from the RNG is written into the vector (a
//! [`RecordingRng`] captures each draw), so the README's byte encodings are
//! enough to recompute every value without our RNG or our code. The root
//! package's `tests/vectors.rs` both regenerates these and re-derives them from
//! primitives; `bluetick vectors` writes them to `tests/vectors/`.

use rand_core::{CryptoRng, RngCore, SeedableRng};
use serde::Serialize;

use crate::keys::{IdentityKeyPair, KeyPair};
use crate::prekeys::{verify_bundle, PreKeyStore};
use crate::ratchet::{RatchetError, Session};
use crate::sender_key::{GroupId, OwnSenderKey, SenderKeyError, SenderKeyRecord};
use crate::x3dh::{self, X3dhError};
use crate::CipherSuite;

/// Wraps an RNG and records every `fill_bytes` request, so a vector can list
/// the exact keys the code drew.
pub struct RecordingRng<R> {
    inner: R,
    draws: Vec<Vec<u8>>,
}

impl<R: RngCore> RecordingRng<R> {
    /// Starts recording draws from `inner`.
    pub fn new(inner: R) -> Self {
        RecordingRng { inner, draws: Vec::new() }
    }

    /// Removes and returns the draws recorded so far.
    pub fn take(&mut self) -> Vec<Vec<u8>> {
        std::mem::take(&mut self.draws)
    }
}

impl<R: RngCore> RngCore for RecordingRng<R> {
    fn next_u32(&mut self) -> u32 {
        let mut b = [0u8; 4];
        self.fill_bytes(&mut b);
        u32::from_le_bytes(b)
    }
    fn next_u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        self.fill_bytes(&mut b);
        u64::from_le_bytes(b)
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        self.inner.fill_bytes(dest);
        self.draws.push(dest.to_vec());
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

impl<R: RngCore + CryptoRng> CryptoRng for RecordingRng<R> {}

/// Why a vector could not be built (only on a bug: the inputs are fixed).
#[derive(Debug, thiserror::Error)]
pub enum VectorError {
    /// X3DH failed.
    #[error(transparent)]
    X3dh(#[from] X3dhError),
    /// The ratchet failed.
    #[error(transparent)]
    Ratchet(#[from] RatchetError),
    /// Sender keys failed.
    #[error(transparent)]
    SenderKey(#[from] SenderKeyError),
    /// Something else, described.
    #[error("{0}")]
    Other(String),
}

fn hex32(b: &[u8; 32]) -> String {
    hex::encode(b)
}

fn secret_hex(kp: &KeyPair) -> String {
    hex::encode(kp.secret_bytes().as_ref())
}

/// A key pair as written in a vector.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct KeyPairVector {
    /// 32 secret bytes (X25519 clamps them when used).
    pub private: String,
    /// The X25519 public key.
    pub public: String,
}

impl KeyPairVector {
    fn of(kp: &KeyPair) -> Self {
        KeyPairVector { private: secret_hex(kp), public: hex32(kp.public().as_bytes()) }
    }
}

/// One message of the conversation.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct MessageVector {
    /// 1-based position in the conversation.
    pub index: u32,
    /// `"alice"` or `"bob"`.
    pub from: &'static str,
    /// The plaintext, hex.
    pub plaintext: String,
    /// The 40-byte header: dh_pub ‖ u32be(pn) ‖ u32be(n).
    pub header: String,
    /// The sealed message (see the README's message sealing).
    pub ciphertext: String,
    /// The receiver's new ratchet key pair if decrypting this message made it
    /// take a DH ratchet step (the secret drawn from the RNG), else `None`.
    pub receiver_new_ratchet_key: Option<KeyPairVector>,
}

/// The X3DH handshake and a 10-message conversation with several DH ratchet turns.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ConversationVector {
    /// What this is.
    pub description: &'static str,
    /// Cipher suite name.
    pub suite: &'static str,
    /// Alice's identity key pair.
    pub alice_identity: KeyPairVector,
    /// Bob's identity key pair.
    pub bob_identity: KeyPairVector,
    /// Bob's signed prekey id.
    pub bob_signed_prekey_id: u32,
    /// Bob's signed prekey pair.
    pub bob_signed_prekey: KeyPairVector,
    /// XEdDSA by Bob's identity over enc(SPK_B); randomized, so only verified, not recomputed.
    pub bob_signed_prekey_signature: String,
    /// Bob's one-time prekey id.
    pub bob_one_time_prekey_id: u32,
    /// Bob's one-time prekey pair.
    pub bob_one_time_prekey: KeyPairVector,
    /// Alice's ephemeral key pair EK_A.
    pub alice_ephemeral: KeyPairVector,
    /// The X3DH input keying material: 0xFF×32 ‖ DH1 ‖ DH2 ‖ DH3 ‖ DH4.
    pub x3dh_ikm: String,
    /// SK, the ratchet's initial root key.
    pub shared_secret: String,
    /// AD = enc(IK_A) ‖ enc(IK_B).
    pub associated_data: String,
    /// The initial header Alice sends (identity ‖ ephemeral ‖ u32be(spk id) ‖ 0x01 ‖ u32be(opk id)).
    pub initial_header: String,
    /// Alice's first ratchet key pair (drawn in `Session::initiator`).
    pub alice_first_ratchet_key: KeyPairVector,
    /// The conversation, in send order; each message is received before the next is sent.
    pub messages: Vec<MessageVector>,
}

/// Who sends each of the 10 messages: five direction changes, so the DH ratchet
/// turns several times on each side.
const SCRIPT: [&str; 10] = ["alice", "alice", "bob", "bob", "alice", "bob", "alice", "alice", "bob", "alice"];

fn expect_one_key(draws: Vec<Vec<u8>>) -> Result<Option<KeyPairVector>, VectorError> {
    match draws.as_slice() {
        [] => Ok(None),
        [one] => {
            let bytes: [u8; 32] =
                one.as_slice().try_into().map_err(|_| VectorError::Other(format!("draw of {} bytes", one.len())))?;
            Ok(Some(KeyPairVector::of(&KeyPair::from_secret_bytes(bytes))))
        }
        more => Err(VectorError::Other(format!("{} draws where one key was expected", more.len()))),
    }
}

/// Builds the conversation vector for `suite` from a fixed seed.
pub fn conversation(suite: CipherSuite) -> Result<ConversationVector, VectorError> {
    let mut rng = RecordingRng::new(rand_chacha::ChaCha20Rng::seed_from_u64(0x0b1e_71c4));
    let alice_id = IdentityKeyPair::generate(&mut rng);
    let bob_id = IdentityKeyPair::generate(&mut rng);
    let mut bob_store = PreKeyStore::new(suite, bob_id.clone(), &mut rng, 1_700_000_000_000);
    let opk = bob_store.generate_one_time(1, &mut rng);
    let opk = opk.first().copied().ok_or_else(|| VectorError::Other("no one-time prekey".into()))?;
    let bundle = bob_store.bundle(Some(opk.id)).map_err(|e| VectorError::Other(e.to_string()))?;
    let verified = verify_bundle(suite, &bundle).map_err(|e| VectorError::Other(e.to_string()))?;
    let ephemeral = KeyPair::generate(&mut rng);
    let initiated = x3dh::initiate_with_ephemeral(suite, &alice_id, &verified, ephemeral.clone())?;
    let responded = x3dh::respond(suite, &bob_store, &initiated.header)?;
    if responded.shared_secret != initiated.shared_secret {
        return Err(VectorError::Other("X3DH sides disagree".into()));
    }
    rng.take();
    let mut alice = Session::initiator(
        suite,
        &initiated.shared_secret,
        initiated.associated_data.clone(),
        initiated.their_signed_prekey,
        &mut rng,
    )?;
    let alice_first = expect_one_key(rng.take())?.ok_or_else(|| VectorError::Other("no ratchet key".into()))?;
    // Captured before the commit below deletes it, as it must.
    let opk_pair = bob_store
        .one_time_prekey(opk.id)
        .map(|k| k.key_pair().clone())
        .ok_or_else(|| VectorError::Other("one-time prekey missing".into()))?;
    let mut bob = Session::responder(
        suite,
        &responded.shared_secret,
        responded.associated_data.clone(),
        responded.signed_prekey.clone(),
    );
    responded.commit(&mut bob_store)?;

    let spk = bob_store.signed_prekey();
    let mut ikm = vec![0xffu8; 32];
    for (ours, theirs) in [
        (alice_id.key_pair(), spk.public()),
        (&ephemeral, bob_id.public()),
        (&ephemeral, spk.public()),
        (&ephemeral, opk.key),
    ] {
        ikm.extend_from_slice(ours.dh(&theirs).map_err(|e| VectorError::Other(e.to_string()))?.as_ref());
    }

    let mut messages = Vec::new();
    for (i, from) in SCRIPT.iter().enumerate() {
        let plaintext = format!("message {} from {from}", i + 1).into_bytes();
        let (sender, receiver) = if *from == "alice" { (&mut alice, &mut bob) } else { (&mut bob, &mut alice) };
        let msg = sender.encrypt(&plaintext)?;
        rng.take();
        let opened = receiver.decrypt(&msg, &mut rng)?;
        if opened.as_slice() != plaintext.as_slice() {
            return Err(VectorError::Other(format!("message {} did not round-trip", i + 1)));
        }
        messages.push(MessageVector {
            index: i as u32 + 1,
            from,
            plaintext: hex::encode(&plaintext),
            header: hex::encode(msg.header.to_bytes()),
            ciphertext: hex::encode(&msg.ciphertext),
            receiver_new_ratchet_key: expect_one_key(rng.take())?,
        });
    }

    Ok(ConversationVector {
        description: "X3DH with a one-time prekey, then 10 Double Ratchet messages; every RNG draw is listed",
        suite: suite.name(),
        alice_identity: KeyPairVector::of(alice_id.key_pair()),
        bob_identity: KeyPairVector::of(bob_id.key_pair()),
        bob_signed_prekey_id: spk.id(),
        bob_signed_prekey: KeyPairVector::of(spk.key_pair()),
        bob_signed_prekey_signature: hex::encode(spk.signature().0),
        bob_one_time_prekey_id: opk.id,
        bob_one_time_prekey: KeyPairVector::of(&opk_pair),
        alice_ephemeral: KeyPairVector::of(&ephemeral),
        x3dh_ikm: hex::encode(&ikm),
        shared_secret: hex::encode(initiated.shared_secret.as_bytes()),
        associated_data: hex::encode(&initiated.associated_data),
        initial_header: hex::encode(initiated.header.to_bytes()),
        alice_first_ratchet_key: alice_first,
        messages,
    })
}

/// One group message of the sender-key vector.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct GroupMessageVector {
    /// The plaintext, hex.
    pub plaintext: String,
    /// The encoded group message (version ‖ group id ‖ key id ‖ iteration ‖ ciphertext ‖ signature).
    pub encoded: String,
}

/// A sender-key session: a distribution, five messages, a rotation, two more.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct SenderKeyVector {
    /// What this is.
    pub description: &'static str,
    /// Cipher suite name.
    pub suite: &'static str,
    /// The 16-byte group id.
    pub group_id: String,
    /// The first distribution message, encoded (it carries the chain key and
    /// the Ed25519 public key; the signing seed is listed separately).
    pub distribution: String,
    /// The Ed25519 signing seed of the first key id (Ed25519 signatures are
    /// deterministic, so every signature below can be recomputed).
    pub signing_seed: String,
    /// Messages under the first key id.
    pub messages: Vec<GroupMessageVector>,
    /// The distribution after `rotate` (membership changed).
    pub rotated_distribution: String,
    /// The signing seed after rotation.
    pub rotated_signing_seed: String,
    /// Messages under the rotated key id.
    pub rotated_messages: Vec<GroupMessageVector>,
}

/// Builds the sender-key vector for `suite` from a fixed seed.
pub fn sender_key(suite: CipherSuite) -> Result<SenderKeyVector, VectorError> {
    let mut rng = RecordingRng::new(rand_chacha::ChaCha20Rng::seed_from_u64(0x5e4d_e12b));
    let group_id = GroupId(*b"bluetick-group-1");
    let mut own = OwnSenderKey::new(suite, group_id, &mut rng);
    // Draw order in OwnSenderKey::new: key id (4 bytes), chain key (32), signing seed (32).
    let seed_of = |draws: Vec<Vec<u8>>| draws.last().map(hex::encode).unwrap_or_default();
    let signing_seed = seed_of(rng.take());
    let distribution = own.distribution();
    let mut member = SenderKeyRecord::from_distribution(suite, &distribution)?;
    let run = |own: &mut OwnSenderKey, member: &mut SenderKeyRecord, tag: &str| {
        let mut out = Vec::new();
        for i in 1..=if tag == "a" { 5 } else { 2 } {
            let plaintext = format!("group message {tag}{i}").into_bytes();
            let msg = own.encrypt(&plaintext)?;
            if member.decrypt(&msg)?.as_slice() != plaintext.as_slice() {
                return Err(VectorError::Other("group message did not round-trip".into()));
            }
            out.push(GroupMessageVector { plaintext: hex::encode(&plaintext), encoded: hex::encode(msg.to_bytes()) });
        }
        Ok::<_, VectorError>(out)
    };
    let messages = run(&mut own, &mut member, "a")?;
    let rotated = own.rotate(&mut rng);
    let rotated_signing_seed = seed_of(rng.take());
    member.add_distribution(&rotated)?;
    let rotated_messages = run(&mut own, &mut member, "b")?;
    Ok(SenderKeyVector {
        description:
            "A sender key: distribution, 5 messages, rotation, 2 messages; Ed25519 signatures are deterministic",
        suite: suite.name(),
        group_id: hex::encode(group_id.0),
        distribution: hex::encode(distribution.to_bytes().as_slice()),
        signing_seed,
        messages,
        rotated_distribution: hex::encode(rotated.to_bytes().as_slice()),
        rotated_signing_seed,
        rotated_messages,
    })
}

/// A 200 KiB attachment in each media format.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct MediaVector {
    /// What this is.
    pub description: &'static str,
    /// Format name (`bluetick-v1` or `whatsapp-v1`, the latter as a video).
    pub format: &'static str,
    /// Plaintext length; byte `i` of the plaintext is `i mod 251`.
    pub plaintext_len: u64,
    /// The 32-byte media key.
    pub media_key: String,
    /// The 16-byte blob id.
    pub blob_id: String,
    /// Length of the blob.
    pub ciphertext_len: u64,
    /// SHA-256 of the whole blob.
    pub ciphertext_sha256: String,
    /// The blob's first 48 bytes.
    pub ciphertext_head: String,
    /// The blob's last 48 bytes.
    pub ciphertext_tail: String,
    /// `whatsapp-v1` video: the streaming sidecar (10 bytes per 64 KiB window).
    pub streaming_sidecar: Option<String>,
}

/// Length of the media vector's plaintext: 200 KiB, which spans four 64 KiB
/// chunks with a short last one.
pub const MEDIA_VECTOR_LEN: usize = 200 * 1024;

/// The media vector's plaintext: byte `i` is `i mod 251` (a prime, so chunks differ).
pub fn media_plaintext() -> Vec<u8> {
    (0..MEDIA_VECTOR_LEN).map(|i| (i % 251) as u8).collect()
}

/// Builds the media vector for `format` with a fixed key and blob id.
pub fn media(format: crate::media::MediaFormat) -> Result<MediaVector, VectorError> {
    use crate::keys::SecretKey;
    use crate::media::{self, BlobId};
    let key_bytes: [u8; 32] = core::array::from_fn(|i| i as u8);
    let blob_id = BlobId(*b"bluetick-blob-01");
    let plaintext = media_plaintext();
    let (blob, pointer) = media::encrypt(format, SecretKey::new(key_bytes), blob_id, &plaintext)
        .map_err(|e| VectorError::Other(e.to_string()))?;
    let back = media::decrypt(&pointer, &blob).map_err(|e| VectorError::Other(e.to_string()))?;
    if back.as_slice() != plaintext.as_slice() {
        return Err(VectorError::Other("media did not round-trip".into()));
    }
    let head = blob.get(..48).unwrap_or(&blob);
    let tail = blob.get(blob.len().saturating_sub(48)..).unwrap_or(&blob);
    Ok(MediaVector {
        description: "A 200 KiB attachment (byte i = i mod 251) under a fixed media key",
        format: format.name(),
        plaintext_len: plaintext.len() as u64,
        media_key: hex::encode(key_bytes),
        blob_id: hex::encode(blob_id.0),
        ciphertext_len: blob.len() as u64,
        ciphertext_sha256: hex::encode(pointer.ciphertext_sha256),
        ciphertext_head: hex::encode(head),
        ciphertext_tail: hex::encode(tail),
        streaming_sidecar: pointer.streaming_sidecar.as_ref().map(|s| hex::encode(s.as_bytes())),
    })
}

/// One vector file's content.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum VectorFile {
    /// X3DH plus a Double Ratchet conversation.
    Conversation(Box<ConversationVector>),
    /// A sender-key session.
    SenderKey(SenderKeyVector),
    /// A media attachment.
    Media(MediaVector),
}

/// Every vector with the file name it is stored under in `tests/vectors/`.
pub fn all() -> Result<Vec<(&'static str, VectorFile)>, VectorError> {
    use crate::media::{MediaFormat, WhatsAppMediaType};
    Ok(vec![
        ("conversation-bluetick-v1.json", VectorFile::Conversation(Box::new(conversation(CipherSuite::BluetickV1)?))),
        (
            "conversation-signal-v3-compat.json",
            VectorFile::Conversation(Box::new(conversation(CipherSuite::SignalV3Compat)?)),
        ),
        ("sender-key-bluetick-v1.json", VectorFile::SenderKey(sender_key(CipherSuite::BluetickV1)?)),
        ("sender-key-signal-v3-compat.json", VectorFile::SenderKey(sender_key(CipherSuite::SignalV3Compat)?)),
        ("media-bluetick-v1.json", VectorFile::Media(media(MediaFormat::BluetickV1)?)),
        ("media-whatsapp-v1-video.json", VectorFile::Media(media(MediaFormat::WhatsAppV1(WhatsAppMediaType::Video))?)),
    ])
}
