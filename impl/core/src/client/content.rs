//! What travels inside the end-to-end encryption, and how a first-contact
//! ciphertext is laid out.
//!
//! # Plaintext (`Payload`), postcard
//! Every ratchet message and every sender-key message encrypts one
//! [`Payload`]: the message id the sender chose, then a [`Content`]. The id is
//! repeated inside the ciphertext so a server cannot move a ciphertext under
//! another envelope id (the receiver checks they match). Encoding, in postcard:
//!
//! ```text
//! message_id (16 raw bytes) ‖ varint(variant) ‖ fields
//!   0 Text:                   varint(len) ‖ body
//!   1 SenderKeyDistribution:  group (16) ‖ varint(89) ‖ distribution (89, the crypto crate's encoding)
//!   2 GroupInfo:              group (16) ‖ varint(version) ‖ admin ‖ varint(#members) ‖ members…
//!   3 Media:                  blob id (16) ‖ media key (64 lowercase hex chars, serde string: varint 64 + 64 bytes) ‖ ciphertext SHA-256 (32) ‖ varint(plaintext length)
//!                             (a `bluetick-v1` blob; see [`MediaRef`])
//! ```
//! where a user id is `varint(len) ‖ utf-8 bytes` and varints are LEB128
//! (postcard's unsigned varint). Trailing bytes are refused.
//!
//! # Envelope ciphertexts
//! - `EnvelopeKind::Message`: `RatchetMessage::to_bytes()` = ratchet header (40) ‖ sealed payload.
//! - `EnvelopeKind::PreKey`: `InitialHeader::to_bytes()` ‖ `RatchetMessage::to_bytes()`. The
//!   initial header is 69 bytes when its byte 68 (the one-time flag) is `0x00`
//!   and 73 bytes when it is `0x01`, so the split point is read from byte 68.
//! - `EnvelopeKind::Group`: `GroupMessage::to_bytes()` of the sender key.

use bluetick_crypto::media::{BlobId as CryptoBlobId, MediaFormat, MediaPointer};
use bluetick_crypto::ratchet::RatchetMessage;
use bluetick_crypto::sender_key::SenderKeyDistribution;
use bluetick_crypto::x3dh::{InitialHeader, INITIAL_HEADER_LEN_MAX, INITIAL_HEADER_LEN_MIN};
use bluetick_crypto::SecretKey;
use serde::{Deserialize, Serialize};

use crate::ids::{GroupId, MessageId, UserId};

/// Offset of the one-time-prekey flag byte inside an encoded initial header.
const INITIAL_HEADER_FLAG_AT: usize = INITIAL_HEADER_LEN_MIN - 1;

/// What a sender encrypts: the id (checked against the envelope) and the content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payload {
    /// The id the sender chose; must equal the envelope's `message_id`.
    pub message_id: MessageId,
    /// What the message carries.
    pub content: Content,
}

/// The kinds of end-to-end content.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Content {
    /// A text message (1:1 or group) shown to the user.
    Text {
        /// The text, as the app gave it.
        body: Vec<u8>,
    },
    /// The sender's sender key for a group, sent pairwise to each member so
    /// that one group ciphertext serves everyone.
    SenderKeyDistribution {
        /// The group it is for (must equal the distribution's own group id).
        group: GroupId,
        /// The sender key at its current iteration.
        #[serde(with = "distribution_bytes")]
        distribution: SenderKeyDistribution,
    },
    /// The full membership, sent pairwise by the admin to members it adds, so
    /// a newcomer knows everyone it must give its own sender key to. It is
    /// authenticated by the pairwise session with the admin.
    GroupInfo {
        /// The group.
        group: GroupId,
        /// The version this membership belongs to.
        version: u64,
        /// The admin (must be the sender).
        admin: UserId,
        /// Every member, the admin included.
        members: Vec<UserId>,
    },
    /// An attachment: where its encrypted blob is and the key that opens it.
    /// Shown to the user (once downloaded and verified) like a text.
    Media {
        /// Blob id, media key, digest and length.
        media: MediaRef,
    },
}

/// A `bluetick-v1` attachment pointer in a fixed layout. The crypto crate's
/// [`MediaPointer`] skips an absent sidecar when serialized, which a
/// non-self-describing encoding such as postcard cannot read back, so the
/// payload carries these four fields instead.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MediaRef {
    /// Where the blob is stored.
    pub blob_id: [u8; 16],
    /// The per-attachment key.
    pub media_key: SecretKey,
    /// SHA-256 of the whole blob as uploaded.
    pub ciphertext_sha256: [u8; 32],
    /// Length of the plaintext.
    pub plaintext_len: u64,
}

impl MediaRef {
    /// The fields of a `bluetick-v1` pointer (a sidecar, which that format
    /// never has, is dropped).
    pub fn from_pointer(pointer: &MediaPointer) -> Self {
        MediaRef {
            blob_id: pointer.blob_id.0,
            media_key: pointer.media_key.clone(),
            ciphertext_sha256: pointer.ciphertext_sha256,
            plaintext_len: pointer.plaintext_len,
        }
    }

    /// The crypto crate's pointer for decryption.
    pub fn to_pointer(&self) -> MediaPointer {
        MediaPointer {
            format: MediaFormat::BluetickV1,
            blob_id: CryptoBlobId(self.blob_id),
            media_key: self.media_key.clone(),
            ciphertext_sha256: self.ciphertext_sha256,
            plaintext_len: self.plaintext_len,
            streaming_sidecar: None,
        }
    }
}

impl std::fmt::Debug for MediaRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MediaRef")
            .field("blob_id", &hex::encode(self.blob_id))
            .field("media_key", &self.media_key)
            .field("plaintext_len", &self.plaintext_len)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Content {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Content::Text { body } => f.debug_struct("Text").field("body_len", &body.len()).finish(),
            Content::SenderKeyDistribution { group, distribution } => f
                .debug_struct("SenderKeyDistribution")
                .field("group", group)
                .field("key_id", &distribution.key_id)
                .field("iteration", &distribution.iteration)
                .field("chain_key", &"[redacted]")
                .finish(),
            Content::GroupInfo { group, version, admin, members } => f
                .debug_struct("GroupInfo")
                .field("group", group)
                .field("version", version)
                .field("admin", admin)
                .field("members", &members.len())
                .finish(),
            // MediaRef's Debug redacts the media key.
            Content::Media { media } => f.debug_struct("Media").field("media", media).finish(),
        }
    }
}

/// Why bytes were not a payload or an envelope ciphertext.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ContentError {
    /// The plaintext did not decode as a [`Payload`].
    #[error("payload does not decode: {detail}")]
    Payload {
        /// What postcard reported.
        detail: String,
    },
    /// Bytes followed a complete payload.
    #[error("{extra} bytes after the payload")]
    TrailingBytes {
        /// How many.
        extra: usize,
    },
    /// A PreKey ciphertext too short to hold an initial header.
    #[error("PreKey ciphertext of {len} bytes cannot hold a {need}-byte initial header")]
    ShortPreKey {
        /// Bytes received.
        len: usize,
        /// Bytes the header needs.
        need: usize,
    },
    /// The initial header or ratchet message did not parse.
    #[error("bad first-contact header: {detail}")]
    Header {
        /// What the parser reported.
        detail: String,
    },
}

impl Payload {
    /// The postcard encoding described in the module docs.
    pub fn encode(&self) -> Vec<u8> {
        // The same encoding, sized before it is written (see `wire::encode`).
        crate::wire::encode(self)
    }

    /// Decodes exactly one payload.
    pub fn decode(bytes: &[u8]) -> Result<Payload, ContentError> {
        let (payload, rest) =
            postcard::take_from_bytes::<Payload>(bytes).map_err(|e| ContentError::Payload { detail: e.to_string() })?;
        if !rest.is_empty() {
            return Err(ContentError::TrailingBytes { extra: rest.len() });
        }
        Ok(payload)
    }
}

/// `InitialHeader ‖ RatchetMessage`: the ciphertext of a PreKey envelope.
pub fn join_prekey(header: &InitialHeader, message: &RatchetMessage) -> Vec<u8> {
    let mut out = header.to_bytes();
    out.extend_from_slice(&message.to_bytes());
    out
}

/// Splits a PreKey envelope's ciphertext; the header length follows from its flag byte.
pub fn split_prekey(bytes: &[u8]) -> Result<(InitialHeader, RatchetMessage), ContentError> {
    let flag = *bytes
        .get(INITIAL_HEADER_FLAG_AT)
        .ok_or(ContentError::ShortPreKey { len: bytes.len(), need: INITIAL_HEADER_LEN_MIN })?;
    let header_len = if flag == 0x01 { INITIAL_HEADER_LEN_MAX } else { INITIAL_HEADER_LEN_MIN };
    if bytes.len() < header_len {
        return Err(ContentError::ShortPreKey { len: bytes.len(), need: header_len });
    }
    let (header, message) = bytes.split_at(header_len);
    let header = InitialHeader::from_bytes(header).map_err(|e| ContentError::Header { detail: e.to_string() })?;
    let message = RatchetMessage::from_bytes(message).map_err(|e| ContentError::Header { detail: e.to_string() })?;
    Ok((header, message))
}

/// Overwrites a buffer that held key material before it is freed. `black_box`
/// keeps the compiler from dropping the writes as dead stores.
pub(crate) fn wipe(bytes: &mut [u8]) {
    for b in bytes.iter_mut() {
        *b = 0;
    }
    std::hint::black_box(bytes);
}

/// A sender-key distribution as its canonical 89-byte encoding.
mod distribution_bytes {
    use bluetick_crypto::sender_key::SenderKeyDistribution;
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &SenderKeyDistribution, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&d.to_bytes())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SenderKeyDistribution, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = SenderKeyDistribution;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an 89-byte sender-key distribution")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Self::Value, E> {
                SenderKeyDistribution::from_bytes(v).map_err(E::custom)
            }
            fn visit_byte_buf<E: serde::de::Error>(self, mut v: Vec<u8>) -> Result<Self::Value, E> {
                let out = SenderKeyDistribution::from_bytes(&v).map_err(E::custom);
                super::wipe(&mut v);
                out
            }
        }
        d.deserialize_bytes(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bluetick_crypto::sender_key::{GroupId as SkGroupId, OwnSenderKey};
    use bluetick_crypto::CipherSuite;
    use rand_chacha::rand_core::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    #[test]
    fn text_payload_has_the_documented_bytes() {
        let p = Payload { message_id: MessageId([0xab; 16]), content: Content::Text { body: b"hi".to_vec() } };
        let mut want = vec![0xab; 16];
        want.extend_from_slice(&[0x00, 0x02, b'h', b'i']);
        assert_eq!(p.encode(), want);
        assert_eq!(Payload::decode(&want).unwrap(), p);
    }

    /// `docs/protocol.md` 12.1: the media key is 32 raw bytes after its
    /// length, so a media payload is 99 bytes for a small attachment.
    #[test]
    fn media_payload_has_the_documented_bytes() {
        let media = MediaRef {
            blob_id: [0xb1; 16],
            media_key: SecretKey::new([0x4b; 32]),
            ciphertext_sha256: [0x5a; 32],
            plaintext_len: 100,
        };
        let p = Payload { message_id: MessageId([0xab; 16]), content: Content::Media { media } };
        let mut want = vec![0xab; 16];
        want.push(0x03);
        want.extend([0xb1; 16]);
        want.push(0x20);
        want.extend([0x4b; 32]);
        want.extend([0x5a; 32]);
        want.push(100);
        assert_eq!(p.encode(), want);
        assert_eq!(want.len(), 99);
        assert_eq!(Payload::decode(&want).unwrap(), p);
    }

    #[test]
    fn group_info_payload_has_the_documented_bytes() {
        let alice = UserId::new("alice").unwrap();
        let bob = UserId::new("bob").unwrap();
        let p = Payload {
            message_id: MessageId([1; 16]),
            content: Content::GroupInfo {
                group: GroupId([2; 16]),
                version: 300,
                admin: alice.clone(),
                members: vec![alice, bob],
            },
        };
        let mut want = vec![1; 16];
        want.push(0x02);
        want.extend_from_slice(&[2; 16]);
        want.extend_from_slice(&[0xac, 0x02]); // 300 as LEB128
        want.extend_from_slice(b"\x05alice\x02\x05alice\x03bob");
        assert_eq!(p.encode(), want);
        assert_eq!(Payload::decode(&want).unwrap(), p);
    }

    #[test]
    fn distribution_travels_as_its_89_byte_encoding() {
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let own = OwnSenderKey::new(CipherSuite::BluetickV1, SkGroupId([3; 16]), &mut rng);
        let dist = own.distribution();
        let p = Payload {
            message_id: MessageId([4; 16]),
            content: Content::SenderKeyDistribution { group: GroupId([3; 16]), distribution: dist.clone() },
        };
        let bytes = p.encode();
        let mut want = vec![4; 16];
        want.push(0x01);
        want.extend_from_slice(&[3; 16]);
        want.push(89);
        want.extend_from_slice(&dist.to_bytes());
        assert_eq!(bytes, want);
        assert_eq!(Payload::decode(&bytes).unwrap(), p);
        // Debug never shows the chain key.
        let debug = format!("{p:?}");
        assert!(!debug.contains(&hex::encode(dist.chain_key.as_bytes())), "{debug}");
    }

    #[test]
    fn payload_decode_refuses_garbage_and_trailing_bytes() {
        let mut bytes = Payload { message_id: MessageId([0; 16]), content: Content::Text { body: vec![] } }.encode();
        bytes.push(7);
        assert_eq!(Payload::decode(&bytes), Err(ContentError::TrailingBytes { extra: 1 }));
        assert!(matches!(Payload::decode(&[1, 2, 3]), Err(ContentError::Payload { .. })));
        let mut bad_variant = vec![0; 16];
        bad_variant.push(9);
        assert!(matches!(Payload::decode(&bad_variant), Err(ContentError::Payload { .. })));
    }

    #[test]
    fn prekey_ciphertext_splits_at_the_length_its_flag_names() {
        use bluetick_crypto::ratchet::Header;
        use bluetick_crypto::PublicKey;
        let msg = RatchetMessage { header: Header { dh: PublicKey([5; 32]), pn: 0, n: 1 }, ciphertext: vec![9; 20] };
        for otk in [None, Some(77)] {
            let header = InitialHeader {
                identity_key: PublicKey([1; 32]),
                ephemeral_key: PublicKey([2; 32]),
                signed_prekey_id: 3,
                one_time_prekey_id: otk,
            };
            let bytes = join_prekey(&header, &msg);
            assert_eq!(bytes.len(), if otk.is_some() { 73 } else { 69 } + 40 + 20);
            assert_eq!(split_prekey(&bytes).unwrap(), (header, msg.clone()));
            // Every truncation fails cleanly.
            for cut in 0..bytes.len() {
                let _ = split_prekey(&bytes[..cut]);
            }
            assert!(split_prekey(&bytes[..50]).is_err());
            // A whole header with nothing after it is not short: the header
            // parses and the missing message is what is reported.
            let header_len = if otk.is_some() { INITIAL_HEADER_LEN_MAX } else { INITIAL_HEADER_LEN_MIN };
            assert!(matches!(split_prekey(&bytes[..header_len]), Err(ContentError::Header { .. })));
            assert!(matches!(split_prekey(&bytes[..header_len - 1]), Err(ContentError::ShortPreKey { .. })));
        }
    }

    proptest::proptest! {
        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..256)) {
            let _ = Payload::decode(&bytes);
            let _ = split_prekey(&bytes);
        }
    }
}
