//! The client↔server wire protocol, version 1, specified for implementers in
//! `docs/protocol.md` (which this module and the server must match).
//!
//! Frames are serde types encoded with postcard (a compact, documented,
//! varint-based format). The frame length is checked against
//! [`FRAME_LEN_MAX`] *before* decoding, so an oversize frame costs nothing to
//! refuse. The server routes on envelope fields only; every payload it stores
//! or forwards is ciphertext produced by the client.

use bluetick_crypto::xeddsa::Signature;
use bluetick_crypto::PublicKey;
use serde::{Deserialize, Serialize};

use crate::ids::{BlobId, DeviceAddress, DeviceId, GroupId, MessageId, UserId};

/// Protocol version spoken by this build; a peer that speaks another is refused
/// with [`ErrorCode::UnsupportedVersion`].
pub const PROTOCOL_VERSION: u16 = 2;

/// Largest encoded frame accepted, in bytes. A text message is a few KiB;
/// media travels in [`MEDIA_CHUNK_LEN_MAX`] chunks; a 1,024-member group change
/// with signatures is about 40 KiB. 256 KiB covers all of these with margin and
/// bounds what one frame can make the receiver allocate.
pub const FRAME_LEN_MAX: usize = 256 * 1024;

/// Largest media chunk in one upload or download frame.
pub const MEDIA_CHUNK_LEN_MAX: usize = 128 * 1024;

/// Largest ciphertext in one envelope (text, control or media pointer).
pub const CIPHERTEXT_LEN_MAX: usize = 64 * 1024;

/// Most items in one batched frame (acks, receipts, one-time prekeys, presence
/// subscriptions): large enough that a reconnecting device drains a backlog in
/// few round trips, small enough to stay far below [`FRAME_LEN_MAX`].
pub const BATCH_LEN_MAX: usize = 512;

/// What an envelope carries, as far as the server may know: it chooses the
/// retention (TTL) and nothing else.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum EnvelopeKind {
    /// A first message of a session: X3DH header plus a ratchet message.
    PreKey,
    /// A Double Ratchet message in an established session.
    Message,
    /// A message that points at a media blob (kept for the media TTL).
    Media,
    /// A sender-key message to a group; the body is shared by all members.
    Group,
}

/// A message as the server delivers it: routing fields stamped by the server
/// and opaque ciphertext.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// Sender, stamped by the server from the authenticated connection.
    pub from: DeviceAddress,
    /// Recipient device.
    pub to: DeviceAddress,
    /// Sender-chosen id, stable across retries.
    pub message_id: MessageId,
    /// Server time when it first accepted the message, ms since the epoch.
    pub server_ts_ms: u64,
    /// The group for [`EnvelopeKind::Group`].
    pub group: Option<GroupId>,
    /// Retention class.
    pub kind: EnvelopeKind,
    /// Ciphertext, never plaintext.
    #[serde(with = "serde_bytes_vec")]
    pub ciphertext: Vec<u8>,
}

/// A receipt state, in protocol order; a later state implies the earlier ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ReceiptKind {
    /// The recipient's device stored the message (two grey ticks).
    Delivered,
    /// The recipient opened the conversation past this message (blue ticks).
    Read,
}

/// Who may see a user's last-seen time and online state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default)]
pub enum Visibility {
    /// Anyone subscribed.
    #[default]
    Everyone,
    /// Only users in the owner's contact list.
    Contacts,
    /// Nobody.
    Nobody,
}

/// A coarse "last seen", as shown to permitted subscribers (exact times leak
/// habits; these buckets are what the owner agreed to show).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum LastSeen {
    /// Online now.
    Online,
    /// Within the last 3 days.
    Recently,
    /// Within the last 7 days.
    WithinWeek,
    /// Within the last 30 days.
    WithinMonth,
    /// Longer ago, or never.
    LongAgo,
}

/// A signed prekey as uploaded: the signature is XEdDSA by the identity key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedPreKeyUpload {
    /// Owner-chosen id.
    pub id: u32,
    /// The X25519 public key.
    pub key: PublicKey,
    /// Signature over the suite's encoding of `key`.
    pub signature: Signature,
}

/// A one-time prekey as uploaded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct OneTimePreKeyUpload {
    /// Owner-chosen id.
    pub id: u32,
    /// The X25519 public key.
    pub key: PublicKey,
}

/// A bundle as the key distribution service hands it out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleReply {
    /// Whose bundle.
    pub owner: DeviceAddress,
    /// The owner's identity key.
    pub identity_key: PublicKey,
    /// The current signed prekey.
    pub signed_prekey: SignedPreKeyUpload,
    /// A one-time prekey, handed out to this caller only; `None` when the owner
    /// ran out (the session then starts from the signed prekey alone).
    pub one_time_prekey: Option<OneTimePreKeyUpload>,
}

/// A group membership change, signed by an admin's identity key so members can
/// check the server did not add anyone on its own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedGroupChange {
    /// The group.
    pub group: GroupId,
    /// Monotone version: a member applies only version `current + 1`.
    pub version: u64,
    /// The admin who signs.
    pub admin: UserId,
    /// Members added.
    pub add: Vec<UserId>,
    /// Members removed.
    pub remove: Vec<UserId>,
    /// XEdDSA by the admin's identity key over [`SignedGroupChange::signed_bytes`].
    pub signature: Signature,
}

impl SignedGroupChange {
    /// The canonical bytes the admin signs:
    /// `"bluetick group change v1" ‖ group (16) ‖ u64be(version) ‖ admin ‖
    /// u32be(#add) ‖ add… ‖ u32be(#remove) ‖ remove…`, where each user id is
    /// `u8(len) ‖ bytes`. Everything but the signature is covered, so neither
    /// the server nor anyone else can change a member list unnoticed.
    pub fn signed_bytes(&self) -> Vec<u8> {
        fn user(out: &mut Vec<u8>, u: &UserId) {
            // User ids are at most USER_ID_LEN_MAX (32) bytes, so the length fits a u8.
            out.push(u.as_str().len() as u8);
            out.extend_from_slice(u.as_str().as_bytes());
        }
        let mut out = Vec::with_capacity(64 + 33 * (1 + self.add.len() + self.remove.len()));
        out.extend_from_slice(b"bluetick group change v1");
        out.extend_from_slice(&self.group.0);
        out.extend_from_slice(&self.version.to_be_bytes());
        user(&mut out, &self.admin);
        for list in [&self.add, &self.remove] {
            out.extend_from_slice(&(list.len() as u32).to_be_bytes());
            for u in list.iter() {
                user(&mut out, u);
            }
        }
        out
    }
}

/// Frames a client sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientFrame {
    /// First use of an account: binds the identity key to the user name.
    /// `proof` signs the server's challenge (see [`auth_message`]).
    Register {
        /// Protocol version the client speaks.
        version: u16,
        /// The account to create.
        user: UserId,
        /// This device.
        device: DeviceId,
        /// The device's identity key.
        identity_key: PublicKey,
        /// XEdDSA over [`auth_message`].
        proof: Signature,
    },
    /// Later logins: proves possession of the registered identity key.
    Authenticate {
        /// Protocol version the client speaks.
        version: u16,
        /// The account.
        user: UserId,
        /// This device.
        device: DeviceId,
        /// XEdDSA over [`auth_message`].
        proof: Signature,
    },
    /// Upload or replace the signed prekey and add one-time prekeys.
    UploadPreKeys {
        /// The signed prekey (replaces the previous one).
        signed_prekey: SignedPreKeyUpload,
        /// New one-time prekeys.
        one_time: Vec<OneTimePreKeyUpload>,
    },
    /// Ask for a device's prekey bundle to start a session.
    FetchBundle {
        /// Echoed in the reply.
        request: u32,
        /// Whose bundle.
        owner: DeviceAddress,
    },
    /// Send one 1:1 envelope. Idempotent on `message_id`.
    Send {
        /// Sender-chosen id.
        message_id: MessageId,
        /// Recipient device.
        to: DeviceAddress,
        /// Retention class.
        kind: EnvelopeKind,
        /// Ciphertext.
        #[serde(with = "serde_bytes_vec")]
        ciphertext: Vec<u8>,
    },
    /// Send one sender-key ciphertext to every member of a group; stored once.
    GroupSend {
        /// Sender-chosen id.
        message_id: MessageId,
        /// The group.
        group: GroupId,
        /// Ciphertext shared by all members.
        #[serde(with = "serde_bytes_vec")]
        ciphertext: Vec<u8>,
    },
    /// The device stored these deliveries durably; the server may delete them.
    DeliveryAck {
        /// The `seq` of each stored [`ServerFrame::Deliver`].
        seqs: Vec<u64>,
    },
    /// Receipts for messages from `to`, batched. Answered with a
    /// [`ServerFrame::ServerAck`] for `id`; resend with the same `id` until then.
    Receipt {
        /// Client-chosen id of this receipt batch, for the ack and idempotency.
        id: MessageId,
        /// The original sender.
        to: UserId,
        /// Delivered or read.
        kind: ReceiptKind,
        /// Messages covered.
        message_ids: Vec<MessageId>,
    },
    /// Create a group or change its membership.
    GroupChange {
        /// The signed change.
        change: SignedGroupChange,
    },
    /// Replace the presence subscription list.
    PresenceSubscribe {
        /// Users to follow.
        users: Vec<UserId>,
    },
    /// Set who may see this user's presence, and the contact list that
    /// [`Visibility::Contacts`] refers to.
    PresencePrivacy {
        /// Who may see.
        visibility: Visibility,
        /// The owner's contacts.
        contacts: Vec<UserId>,
    },
    /// Upload a chunk of an encrypted blob.
    MediaUpload {
        /// The blob.
        blob: BlobId,
        /// Byte offset of this chunk.
        offset: u64,
        /// Ciphertext bytes.
        #[serde(with = "serde_bytes_vec")]
        chunk: Vec<u8>,
        /// Whether this is the last chunk.
        last: bool,
    },
    /// Download a chunk of a blob.
    MediaDownload {
        /// The blob.
        blob: BlobId,
        /// Byte offset to read from.
        offset: u64,
    },
    /// Keep-alive.
    Ping {
        /// Echoed.
        nonce: u64,
    },
}

/// Machine-readable error codes, stable across versions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ErrorCode {
    /// The frame did not decode.
    Malformed,
    /// The frame exceeded [`FRAME_LEN_MAX`] or a field its own limit.
    TooLarge,
    /// The peer speaks another protocol version.
    UnsupportedVersion,
    /// A frame other than Register/Authenticate before authentication.
    NotAuthenticated,
    /// Bad proof, or the account is bound to another identity key.
    AuthFailed,
    /// The user name is taken.
    UserExists,
    /// No such user or device.
    UnknownRecipient,
    /// A signature did not verify.
    BadSignature,
    /// The sender is not a member of the group.
    NotMember,
    /// A limit was reached (rate, mailbox depth, group size…).
    LimitExceeded,
    /// The server could not store the item durably; retry later. Nothing was kept.
    Unavailable,
    /// No such blob (or not yet complete).
    UnknownBlob,
}

/// An item delivered from a device's mailbox: at least once, acked by `seq`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Delivery {
    /// A message from another device.
    Envelope(Envelope),
    /// Receipts from a recipient of this device's messages.
    Receipt {
        /// Who sent the receipt (the original recipient).
        from: DeviceAddress,
        /// Delivered or read.
        kind: ReceiptKind,
        /// Messages covered.
        message_ids: Vec<MessageId>,
    },
    /// A message this device sent expired undelivered after its TTL (no silent loss).
    Expired {
        /// The recipient that never got it.
        to: DeviceAddress,
        /// The expired message.
        message_id: MessageId,
    },
    /// A membership change to apply after checking the admin's signature.
    GroupChange(SignedGroupChange),
}

/// Frames the server sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ServerFrame {
    /// Sent on connect: the client signs this nonce to authenticate.
    Challenge {
        /// Server-chosen random nonce.
        nonce: [u8; 32],
    },
    /// Authentication succeeded.
    Welcome {
        /// Server time, ms since the epoch.
        server_ts_ms: u64,
    },
    /// The server stored the message durably (one tick).
    ServerAck {
        /// The acknowledged message.
        message_id: MessageId,
        /// When the server first accepted it.
        server_ts_ms: u64,
    },
    /// Something from the device's mailbox; the device answers with a
    /// [`ClientFrame::DeliveryAck`] naming `seq` once it stored the item
    /// durably. The same `seq` is used on every redelivery of the item.
    Deliver {
        /// The item's position in the device's mailbox, stable across redelivery
        /// and server restarts.
        seq: u64,
        /// What is delivered.
        item: Delivery,
    },
    /// A group change was verified, stored and queued for the members.
    GroupChangeAccepted {
        /// The group.
        group: GroupId,
        /// The version now current.
        version: u64,
    },
    /// A media blob is complete and stored durably.
    MediaStored {
        /// The blob.
        blob: BlobId,
        /// Its length in bytes.
        len: u64,
    },
    /// Answer to [`ClientFrame::FetchBundle`].
    Bundle {
        /// Echo of the request.
        request: u32,
        /// The bundle.
        bundle: BundleReply,
    },
    /// One-time prekeys are running low: upload more.
    PreKeysLow {
        /// How many are left.
        remaining: u32,
    },
    /// Presence of a followed user, throttled and coarsened.
    Presence {
        /// Whose presence.
        user: UserId,
        /// What may be shown.
        last_seen: LastSeen,
    },
    /// A chunk of a blob.
    MediaChunk {
        /// The blob.
        blob: BlobId,
        /// Byte offset of this chunk.
        offset: u64,
        /// Ciphertext bytes.
        #[serde(with = "serde_bytes_vec")]
        chunk: Vec<u8>,
        /// Whether this is the last chunk.
        last: bool,
    },
    /// Keep-alive answer.
    Pong {
        /// Echo of the ping.
        nonce: u64,
    },
    /// Something was refused; nothing else changed.
    Error {
        /// Stable code.
        code: ErrorCode,
        /// Human-readable detail naming the offending field and value.
        detail: String,
    },
}

impl ClientFrame {
    /// The variant's name in kebab case (`send`, `delivery-ack`, …): what
    /// traces print and targeted faults select on.
    pub fn kind(&self) -> &'static str {
        match self {
            ClientFrame::Register { .. } => "register",
            ClientFrame::Authenticate { .. } => "authenticate",
            ClientFrame::UploadPreKeys { .. } => "upload-pre-keys",
            ClientFrame::FetchBundle { .. } => "fetch-bundle",
            ClientFrame::Send { .. } => "send",
            ClientFrame::GroupSend { .. } => "group-send",
            ClientFrame::DeliveryAck { .. } => "delivery-ack",
            ClientFrame::Receipt { .. } => "receipt",
            ClientFrame::GroupChange { .. } => "group-change",
            ClientFrame::PresenceSubscribe { .. } => "presence-subscribe",
            ClientFrame::PresencePrivacy { .. } => "presence-privacy",
            ClientFrame::MediaUpload { .. } => "media-upload",
            ClientFrame::MediaDownload { .. } => "media-download",
            ClientFrame::Ping { .. } => "ping",
        }
    }
}

impl ServerFrame {
    /// The variant's name in kebab case (`deliver`, `server-ack`, …).
    pub fn kind(&self) -> &'static str {
        match self {
            ServerFrame::Challenge { .. } => "challenge",
            ServerFrame::Welcome { .. } => "welcome",
            ServerFrame::ServerAck { .. } => "server-ack",
            ServerFrame::Deliver { .. } => "deliver",
            ServerFrame::GroupChangeAccepted { .. } => "group-change-accepted",
            ServerFrame::MediaStored { .. } => "media-stored",
            ServerFrame::Bundle { .. } => "bundle",
            ServerFrame::PreKeysLow { .. } => "pre-keys-low",
            ServerFrame::Presence { .. } => "presence",
            ServerFrame::MediaChunk { .. } => "media-chunk",
            ServerFrame::Pong { .. } => "pong",
            ServerFrame::Error { .. } => "error",
        }
    }

    /// For a `Deliver`, what it carries: `deliver-envelope`, `deliver-receipt`,
    /// `deliver-expired` or `deliver-group-change`; `None` for other frames.
    pub fn delivery_kind(&self) -> Option<&'static str> {
        match self {
            ServerFrame::Deliver { item, .. } => Some(match item {
                Delivery::Envelope(_) => "deliver-envelope",
                Delivery::Receipt { .. } => "deliver-receipt",
                Delivery::Expired { .. } => "deliver-expired",
                Delivery::GroupChange(_) => "deliver-group-change",
            }),
            _ => None,
        }
    }
}

/// The bytes a device signs to prove it holds its identity key: a domain
/// label, the server's nonce, and the account it claims.
pub fn auth_message(nonce: &[u8; 32], user: &UserId, device: DeviceId) -> Vec<u8> {
    let mut out = Vec::with_capacity(24 + 32 + user.as_str().len() + 5);
    out.extend_from_slice(b"bluetick auth v1");
    out.extend_from_slice(nonce);
    out.push(user.as_str().len() as u8);
    out.extend_from_slice(user.as_str().as_bytes());
    out.extend_from_slice(&device.0.to_be_bytes());
    out
}

/// Why bytes were not a frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Longer than [`FRAME_LEN_MAX`]; refused before decoding.
    #[error("frame of {len} bytes exceeds the {max}-byte limit")]
    TooLarge {
        /// Bytes received.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Not a valid encoding of a frame (or trailing bytes after one).
    #[error("malformed frame: {0}")]
    Malformed(String),
}

/// Encodes a frame.
pub fn encode<T: Serialize>(frame: &T) -> Vec<u8> {
    // Sized first, then written into a buffer of that size: grown by
    // doubling from empty, a 1 KiB envelope took nine reallocations, an
    // eighth of the server loop's time at peak. The sizing pass only adds up
    // lengths. postcard only fails on types it cannot represent (none here)
    // or on a writer error (a Vec never errors).
    let len = postcard::serialize_with_flavor(frame, postcard::ser_flavors::Size::default()).unwrap_or(0);
    postcard::to_extend(frame, Vec::with_capacity(len)).unwrap_or_default()
}

/// Decodes a frame, checking the size limit first and refusing trailing bytes.
pub fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, DecodeError> {
    if bytes.len() > FRAME_LEN_MAX {
        return Err(DecodeError::TooLarge { len: bytes.len(), max: FRAME_LEN_MAX });
    }
    let (frame, rest) = postcard::take_from_bytes(bytes).map_err(|e| DecodeError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(DecodeError::Malformed(format!("{} trailing bytes", rest.len())));
    }
    Ok(frame)
}

/// Byte vectors as postcard byte strings rather than sequences of u8.
pub(crate) mod serde_bytes_vec {
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(bytes)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Vec<u8>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E>(self, v: &[u8]) -> Result<Vec<u8>, E> {
                Ok(v.to_vec())
            }
            fn visit_byte_buf<E>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
                Ok(v)
            }
        }
        d.deserialize_byte_buf(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A value of another type where bytes belong is refused with an error
    /// that names what was expected (what a person reading it needs).
    #[test]
    fn bytes_fields_refuse_other_types_naming_bytes() {
        use serde::de::IntoDeserializer;
        let d: serde::de::value::U32Deserializer<serde::de::value::Error> = 5u32.into_deserializer();
        let err = serde_bytes_vec::deserialize(d).unwrap_err().to_string();
        assert!(err.contains("expected bytes"), "{err}");
    }

    fn alice() -> DeviceAddress {
        DeviceAddress::new(UserId::new("alice").unwrap(), DeviceId(1))
    }

    #[test]
    fn frames_round_trip() {
        let frames = vec![
            ClientFrame::Send {
                message_id: MessageId([7; 16]),
                to: alice(),
                kind: EnvelopeKind::Message,
                ciphertext: vec![1, 2, 3],
            },
            ClientFrame::DeliveryAck { seqs: vec![1, 2, 300] },
            ClientFrame::Ping { nonce: 9 },
        ];
        for f in frames {
            let bytes = encode(&f);
            assert_eq!(decode::<ClientFrame>(&bytes).unwrap(), f);
        }
    }

    /// The key-carrying examples of `docs/protocol.md` 1.3: keys and
    /// signatures are length-prefixed raw bytes.
    #[test]
    fn keys_and_signatures_have_the_documented_bytes() {
        let otk = encode(&OneTimePreKeyUpload { id: 7, key: PublicKey([0xab; 32]) });
        let mut want = vec![0x07, 0x20];
        want.extend([0xab; 32]);
        assert_eq!(otk, want);

        let user = UserId::new("alice").unwrap();
        let proof = Signature([0x5c; 64]);
        let login = encode(&ClientFrame::Authenticate { version: 2, user: user.clone(), device: DeviceId(1), proof });
        let mut want = vec![0x01, 0x02, 0x05];
        want.extend(b"alice");
        want.extend([0x01, 0x40]);
        want.extend([0x5c; 64]);
        assert_eq!(login, want);
        assert_eq!(login.len(), 74);

        let register = ClientFrame::Register {
            version: 2,
            user: user.clone(),
            device: DeviceId(1),
            identity_key: PublicKey([0x11; 32]),
            proof,
        };
        let register = encode(&register);
        assert_eq!(register.len(), 107);
        assert_eq!(register[..11], [0x00, 0x02, 0x05, b'a', b'l', b'i', b'c', b'e', 0x01, 0x20, 0x11]);
        assert_eq!(register[41..43], [0x11, 0x40]);

        let change = ClientFrame::GroupChange {
            change: SignedGroupChange {
                group: GroupId([0x33; 16]),
                version: 2,
                admin: user,
                add: vec![UserId::new("bob").unwrap()],
                remove: vec![],
                signature: proof,
            },
        };
        let change = encode(&change);
        assert_eq!(change.len(), 95);
        assert_eq!(
            change[17..31],
            [0x02, 0x05, b'a', b'l', b'i', b'c', b'e', 0x01, 0x03, b'b', b'o', b'b', 0x00, 0x40]
        );
        assert_eq!(decode::<ClientFrame>(&change).map(|f| encode(&f)), Ok(change));
    }

    #[test]
    fn oversize_frame_is_refused_before_decoding() {
        let bytes = vec![0u8; FRAME_LEN_MAX + 1];
        assert_eq!(
            decode::<ClientFrame>(&bytes),
            Err(DecodeError::TooLarge { len: FRAME_LEN_MAX + 1, max: FRAME_LEN_MAX })
        );
    }

    #[test]
    fn trailing_bytes_and_garbage_are_malformed() {
        let mut bytes = encode(&ClientFrame::Ping { nonce: 1 });
        bytes.push(0);
        assert!(matches!(decode::<ClientFrame>(&bytes), Err(DecodeError::Malformed(_))));
        assert!(matches!(decode::<ClientFrame>(&[0xff, 0xff, 0xff]), Err(DecodeError::Malformed(_))));
        assert!(matches!(decode::<ClientFrame>(&[]), Err(DecodeError::Malformed(_))));
    }

    #[test]
    fn byte_fields_encode_compactly() {
        // A 1 KiB ciphertext costs 1 KiB plus a few bytes of framing, not 2 KiB.
        let f = ClientFrame::Send {
            message_id: MessageId([0; 16]),
            to: alice(),
            kind: EnvelopeKind::Message,
            ciphertext: vec![0xaa; 1024],
        };
        let len = encode(&f).len();
        assert!(len < 1024 + 40, "encoded length {len}");
    }

    proptest::proptest! {
        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let _ = decode::<ClientFrame>(&bytes);
            let _ = decode::<ServerFrame>(&bytes);
        }
    }
}
