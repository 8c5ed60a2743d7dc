//! The sans-IO chat client: one device's state machine.
//!
//! [`Client`] turns server frames, timer expiries and app commands into
//! client frames and app events. It does no IO, reads no clock and owns a
//! seeded `ChaCha20Rng`, so a run is reproducible from the seed and the inputs;
//! the tokio driver, the simulator and the model checker all drive this code.
//!
//! # Modules
//! - [`content`]: the end-to-end plaintext and the PreKey ciphertext layout.
//! - [`sessions`]: pairwise Double Ratchet sessions and pinned identity keys.
//! - [`outbox`]: sends awaiting the server's ack, resent with a stable id.
//! - [`inbox`]: deduplication, unread lists, group messages awaiting a sender key.
//! - [`journal`]: incremental saves: what changed since the last save.
//! - [`status`]: ticks per sent message and recipient, monotone.
//! - [`groups`]: signed membership, sender keys and their rotation.
//! - [`control`]: receipts and group changes owed to the server until it confirms them.
//! - [`presence`]: followed users and the privacy setting, re-sent on every login.
//! - [`media`]: attachments: encrypt, upload, pointer message; download, verify.
//! - [`adversary`]: opening recorded ciphertexts with a stolen state (forward-secrecy checks).

pub mod adversary;
pub mod content;
pub mod control;
pub mod groups;
pub mod inbox;
pub mod journal;
pub mod media;
pub mod outbox;
pub mod pacer;
pub mod presence;
pub mod sessions;
pub mod status;
#[cfg(test)]
mod tests;

use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::hash::Hasher;

use bluetick_crypto::prekeys::{verify_bundle, BundledOneTimePreKey, PreKeyBundle, PreKeyStore};
use bluetick_crypto::sender_key::{
    GroupId as SenderKeyGroupId, GroupMessage, OwnSenderKey, SenderKeyDistribution, SenderKeyError, SenderKeyRecord,
};
use bluetick_crypto::xeddsa::Signature;
use bluetick_crypto::{CipherSuite, PublicKey};
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;
use serde::{Deserialize, Serialize};

use crate::ids::{DeviceAddress, DeviceId, GroupId, MessageId, UserId};
use crate::wire::{
    auth_message, BundleReply, ClientFrame, Delivery, Envelope, EnvelopeKind, ErrorCode, LastSeen, OneTimePreKeyUpload,
    ReceiptKind, ServerFrame, SignedGroupChange, SignedPreKeyUpload, BATCH_LEN_MAX, CIPHERTEXT_LEN_MAX,
    PROTOCOL_VERSION,
};

use content::{wipe, Content, Payload};
use control::Control;
use groups::{Applied, GroupChangeRejection, GroupState, Groups, Verdict, GROUP_MEMBERS_MAX, SENDER_KEY_RECORDS_MAX};
use inbox::{
    Conversation, Inbox, DEDUP_ENTRIES_MAX, DEDUP_WINDOW_MS, HELD_GROUP_MESSAGES_MAX, UNREAD_PER_CONVERSATION_MAX,
};
pub use journal::SavedChanges;
use journal::{ChangeRecord, Journaled};
use outbox::{Body, Outbox, OutboxEntry, Target, OUTBOX_LEN_MAX};
use sessions::{Learned, Sessions};
pub use status::{DeliveryState, MessageStatus};
use status::{StatusBook, STATUS_TRACKED_MAX};

/// The device every peer is addressed at. Accounts have one device today
/// (see [`DeviceId`]); multi-device would fetch one bundle per device.
pub const PRIMARY_DEVICE: DeviceId = DeviceId(1);

/// Default wait before an unacknowledged send (or an unanswered bundle
/// request) is sent again on a live connection: long enough that a healthy
/// server always answers first, short enough that a lost frame costs seconds.
pub const DEFAULT_RESEND_AFTER_MS: u64 = 10_000;

/// Default number of one-time prekeys generated at setup and on each refill:
/// the store's whole capacity, as Signal uploads 100 at a time.
pub const DEFAULT_PREKEY_BATCH: usize = bluetick_crypto::prekeys::ONE_TIME_PREKEY_STOCK_MAX;

/// Largest message body. The ciphertext must fit [`CIPHERTEXT_LEN_MAX`];
/// headers, ids and tags take under 200 bytes, and 1 KiB is left for them.
pub const BODY_LEN_MAX: usize = CIPHERTEXT_LEN_MAX - 1024;

/// Most outbox entries transmitted and not yet acknowledged on one
/// connection. A backlog (after days offline, or a large group's key
/// distributions) then drains at one window per round trip instead of as one
/// burst, which the server's per-connection rate limit would refuse.
pub const OUTBOX_IN_FLIGHT_MAX: usize = 64;

/// Bundle fetches allowed per [`BUNDLE_FETCH_WINDOW_MS`]. The server allows 30
/// a minute per device and refuses more (refusals count towards closing the
/// connection); 24 stays clear of it even with a fetch or two from before a
/// reconnect.
pub const BUNDLE_FETCHES_PER_WINDOW: usize = 24;

/// The sliding window of [`BUNDLE_FETCHES_PER_WINDOW`]: one minute, the
/// server's rate period.
pub const BUNDLE_FETCH_WINDOW_MS: u64 = 60_000;

/// Version of the [`SavedClient`] encoding; [`Client::restore`] refuses others.
pub const SAVE_FORMAT: u16 = 4;

/// Deliberate bugs a test, scenario or model check switches on to show that
/// its checker notices. Never enable them for real use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ClientBug {
    /// Skip the dedup check: a message that comes back (a sender's retry
    /// after a lost server-ack, a redelivery) is processed as new.
    DedupOff,
    /// Send a Read receipt as soon as a message is delivered, before the
    /// user opened the conversation.
    ReadOnDelivery,
    /// Keep our sender key when a member is removed, so the removed member
    /// can still read later group messages.
    NoRotationOnRemove,
    /// Append the plaintext to every ciphertext, as a client that leaked
    /// content to the server would.
    LeakPlaintext,
    /// Show the latest receipt's state even when it is behind the current
    /// one (a late Delivered after Read turns blue ticks grey again).
    LatestReceiptWins,
    /// Keep, in the saved state, a copy of each receiving session and sender
    /// key as it was before a decrypt, i.e. the keys of messages already read:
    /// whoever steals the state reads old messages (no forward secrecy).
    KeepUsedMessageKeys,
    /// Do not send the presence subscription again after a reconnect (the
    /// server dropped it with the old connection), so followed users' changes
    /// stop arriving.
    NoPresenceResubscribe,
    /// Do not report the state dirty when a `ServerAck` retires an outbox
    /// entry: a driver that saves only dirty states keeps the entry in its
    /// save, so a crash resends it (the server deduplicates). Shows the
    /// World's `client-dirty-flag` check, which lazy saving relies on.
    ForgetDirtyOnServerAck,
}

/// The set of [`ClientBug`]s switched on; empty by default.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientBugs(BTreeSet<ClientBug>);

impl ClientBugs {
    /// No bugs.
    pub fn none() -> Self {
        ClientBugs::default()
    }

    /// These bugs and `bug`.
    pub fn with(mut self, bug: ClientBug) -> Self {
        self.0.insert(bug);
        self
    }

    /// Whether `bug` is on.
    pub fn has(&self, bug: ClientBug) -> bool {
        self.0.contains(&bug)
    }
}

/// What a client is and how it behaves; not persisted (the driver supplies it
/// again on [`Client::restore`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientConfig {
    /// This account.
    pub user: UserId,
    /// This device.
    pub device: DeviceId,
    /// Cipher suite of sessions and sender keys; every peer must use the same.
    pub suite: CipherSuite,
    /// Wait before resending an unacknowledged send or bundle request on a
    /// live connection (values below 1 are treated as 1).
    pub resend_after_ms: u64,
    /// One-time prekeys generated at setup and on each `PreKeysLow`.
    pub prekey_batch: usize,
    /// Send budget per connection, under the server's frame limit.
    pub pace: pacer::Pace,
    /// Key bundles this client fetches per [`BUNDLE_FETCH_WINDOW_MS`], to
    /// stay under the server's limit ([`BUNDLE_FETCHES_PER_WINDOW`] by
    /// default, for the server's default; values below 1 are treated as 1).
    pub bundle_fetches_per_minute: usize,
    /// Deliberate bugs, off by default.
    pub bugs: ClientBugs,
}

impl ClientConfig {
    /// The defaults for an account and device.
    pub fn new(user: UserId, device: DeviceId) -> Self {
        ClientConfig {
            user,
            device,
            suite: CipherSuite::BluetickV1,
            resend_after_ms: DEFAULT_RESEND_AFTER_MS,
            prekey_batch: DEFAULT_PREKEY_BATCH,
            pace: pacer::Pace::default(),
            bundle_fetches_per_minute: BUNDLE_FETCHES_PER_WINDOW,
            bugs: ClientBugs::none(),
        }
    }

    fn resend_after(&self) -> u64 {
        self.resend_after_ms.max(1)
    }
}

/// Why an app command was refused; nothing changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// The body exceeds [`BODY_LEN_MAX`].
    #[error("message body of {len} bytes exceeds the {max}-byte limit")]
    BodyTooLarge {
        /// Bytes given.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The outbox holds [`OUTBOX_LEN_MAX`] unconfirmed sends.
    #[error("outbox holds {len} unconfirmed sends, the limit is {max}")]
    OutboxFull {
        /// Entries queued.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A 1:1 message to this account itself.
    #[error("cannot send a 1:1 message to oneself")]
    SelfRecipient,
    /// No group with this id is known.
    #[error("unknown group {group:?}")]
    UnknownGroup {
        /// The group.
        group: GroupId,
    },
    /// This account is not (or no longer) a member.
    #[error("not a member of group {group:?}")]
    NotMember {
        /// The group.
        group: GroupId,
    },
    /// Only the admin may change membership.
    #[error("only {admin} may change group {group:?}")]
    NotAdmin {
        /// The group.
        group: GroupId,
        /// Its admin.
        admin: UserId,
    },
    /// The admin tried to remove itself (groups have one admin for life).
    #[error("the admin cannot leave group {group:?}")]
    AdminCannotLeave {
        /// The group.
        group: GroupId,
    },
    /// The change adds no new member and removes no current one.
    #[error("change to group {group:?} changes nothing")]
    EmptyChange {
        /// The group.
        group: GroupId,
    },
    /// The group would exceed [`GROUP_MEMBERS_MAX`].
    #[error("group would have {members} members, the limit is {max}")]
    TooManyMembers {
        /// Members it would have, the admin included.
        members: usize,
        /// The limit.
        max: usize,
    },
    /// [`media::MEDIA_QUEUE_MAX`] attachments are already waiting to upload.
    #[error("{len} attachments are waiting to upload, the limit is {max}")]
    MediaQueueFull {
        /// Attachments waiting.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A presence contact list over the server's limit.
    #[error("contact list of {len} users exceeds the limit of {max}")]
    TooManyContacts {
        /// Users given.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A presence subscription list over the server's limit.
    #[error("subscription list of {len} users exceeds the limit of {max}")]
    TooManySubscriptions {
        /// Users given.
        len: usize,
        /// The limit.
        max: usize,
    },
}

/// Why a saved state could not be restored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RestoreError {
    /// The bytes are not a saved client.
    #[error("saved client does not decode: {detail}")]
    Decode {
        /// What the decoder reported.
        detail: String,
    },
    /// Another encoding version.
    #[error("saved client has format {found}, this build reads {expected}")]
    Format {
        /// The version found.
        found: u16,
        /// [`SAVE_FORMAT`].
        expected: u16,
    },
    /// The state belongs to another account or device than the config.
    #[error("saved client is {saved}, config is {configured}")]
    WrongAccount {
        /// The saved account and device.
        saved: String,
        /// The configured account and device.
        configured: String,
    },
}

/// Why a delivered envelope produced no message. The envelope is acked anyway,
/// so it is not redelivered forever.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum UndecryptableReason {
    /// The bytes do not parse (ciphertext layout or plaintext encoding).
    Malformed {
        /// What the parser reported.
        detail: String,
    },
    /// A `Message` from a peer we have no session with.
    NoSession,
    /// X3DH as responder failed (unknown or already used prekey…).
    Handshake {
        /// What X3DH reported.
        detail: String,
    },
    /// No session opened it (tampered, replayed, or for another session).
    Ratchet {
        /// What the ratchet reported.
        detail: String,
    },
    /// The id inside the ciphertext differs from the envelope's.
    IdMismatch {
        /// The id the sender encrypted.
        inside: MessageId,
    },
    /// The sender key refused it (bad signature, replay…).
    SenderKey {
        /// What the sender-key layer reported.
        detail: String,
    },
    /// The sender's key never arrived and the held message was dropped to
    /// make room (see [`inbox::HELD_GROUP_MESSAGES_MAX`]).
    SenderKeyMissing,
    /// A content type that does not belong in this kind of envelope.
    UnexpectedContent,
    /// The envelope is addressed to another device.
    Misrouted,
    /// An envelope kind this client does not handle.
    UnsupportedKind {
        /// The kind.
        kind: EnvelopeKind,
    },
    /// An attachment's blob could not be downloaded or did not verify.
    Media {
        /// What went wrong.
        detail: String,
    },
}

/// What the app is told.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AppEvent {
    /// A new message, surfaced exactly once.
    Message {
        /// The sender.
        from: UserId,
        /// The group, for a group message.
        group: Option<GroupId>,
        /// The sender's id for it.
        id: MessageId,
        /// The body.
        body: Vec<u8>,
        /// When the server first accepted it.
        server_ts_ms: u64,
    },
    /// An attachment, downloaded and verified, surfaced exactly once (its
    /// ticks and receipts are those of a 1:1 text).
    Media {
        /// The sender.
        from: UserId,
        /// The sender's id for it.
        id: MessageId,
        /// The attachment's bytes.
        body: Vec<u8>,
        /// When the server first accepted its pointer.
        server_ts_ms: u64,
    },
    /// A delivery that could not be read; it was acked and will not return.
    Undecryptable {
        /// The claimed sender.
        from: UserId,
        /// The envelope's id.
        id: MessageId,
        /// Why.
        reason: UndecryptableReason,
    },
    /// A sent message's ticks changed for one recipient.
    Status {
        /// The sent message.
        id: MessageId,
        /// The recipient.
        peer: UserId,
        /// Its new state.
        status: DeliveryState,
    },
    /// A group's membership changed (or became known).
    GroupUpdated {
        /// The group.
        group: GroupId,
        /// Its new version.
        version: u64,
    },
    /// A group change from the server was not applied.
    GroupChangeRejected {
        /// The group named.
        group: GroupId,
        /// The version named.
        version: u64,
        /// Why.
        reason: GroupChangeRejection,
    },
    /// A contact's identity key differs from the pinned one (reinstall, or
    /// an attack); the new key is now pinned.
    IdentityChanged {
        /// The contact.
        user: UserId,
    },
    /// A session with a peer could not be started (bad bundle); sends to it
    /// wait and the bundle is fetched again later.
    SessionFailed {
        /// The peer.
        peer: UserId,
        /// Why.
        reason: String,
    },
    /// A followed user's presence.
    Presence {
        /// The user.
        user: UserId,
        /// What may be shown.
        last_seen: LastSeen,
    },
    /// The server refused something.
    ServerError {
        /// Its code.
        code: ErrorCode,
        /// Its detail.
        detail: String,
    },
}

/// Everything a client needs to resume after a crash: an opaque, canonical
/// encoding (postcard, format [`SAVE_FORMAT`]) of its persistent state.
/// Equal states encode to equal bytes, so a model checker can hash it.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SavedClient {
    bytes: Vec<u8>,
}

impl SavedClient {
    /// The encoded state, for the driver to store.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Wraps bytes read back from storage; checked by [`Client::restore`].
    pub fn from_bytes(bytes: Vec<u8>) -> Self {
        SavedClient { bytes }
    }
}

impl fmt::Debug for SavedClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The bytes include secret keys.
        write!(f, "SavedClient({} bytes)", self.bytes.len())
    }
}

/// One-time prekeys (and the signed prekey) not yet confirmed uploaded.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct PreKeysOwed {
    signed: bool,
    one_time: BTreeSet<u32>,
}

/// The persistent state: exactly what [`Client::save`] encodes.
#[derive(Serialize, Deserialize)]
struct State {
    format: u16,
    user: UserId,
    device: DeviceId,
    /// The server accepted our Register; log in with Authenticate from now on.
    registered: bool,
    rng: ChaCha20Rng,
    prekeys: PreKeyStore,
    prekeys_owed: PreKeysOwed,
    sessions: Sessions,
    outbox: Outbox,
    statuses: StatusBook,
    inbox: Inbox,
    groups: Groups,
    control: Control,
    presence: presence::PresenceWishes,
    media: media::MediaQueues,
    /// Empty unless [`ClientBug::KeepUsedMessageKeys`] is on.
    retained: adversary::RetainedKeys,
}

/// A change record's head: the state without its tables (they encode empty
/// inside [`journal::encode_head`]), and without the prekey store unless it
/// changed since the previous save (`None`): a hundred one-time key pairs
/// were most of what a change held.
#[derive(Serialize)]
struct HeadRef<'a> {
    format: u16,
    user: &'a UserId,
    device: DeviceId,
    registered: bool,
    rng: &'a ChaCha20Rng,
    prekeys: Option<&'a PreKeyStore>,
    prekeys_owed: &'a PreKeysOwed,
    sessions: &'a Sessions,
    outbox: &'a Outbox,
    statuses: &'a StatusBook,
    inbox: &'a Inbox,
    groups: &'a Groups,
    control: &'a Control,
    presence: &'a presence::PresenceWishes,
    media: &'a media::MediaQueues,
    retained: &'a adversary::RetainedKeys,
}

/// A decoded [`HeadRef`].
#[derive(Deserialize)]
struct Head {
    format: u16,
    user: UserId,
    device: DeviceId,
    registered: bool,
    rng: ChaCha20Rng,
    prekeys: Option<PreKeyStore>,
    prekeys_owed: PreKeysOwed,
    sessions: Sessions,
    outbox: Outbox,
    statuses: StatusBook,
    inbox: Inbox,
    groups: Groups,
    control: Control,
    presence: presence::PresenceWishes,
    media: media::MediaQueues,
    retained: adversary::RetainedKeys,
}

impl State {
    fn head(&self, with_prekeys: bool) -> HeadRef<'_> {
        // Destructured without `..`, so a new field cannot be left out.
        let State {
            format,
            user,
            device,
            registered,
            rng,
            prekeys,
            prekeys_owed,
            sessions,
            outbox,
            statuses,
            inbox,
            groups,
            control,
            presence,
            media,
            retained,
        } = self;
        HeadRef {
            format: *format,
            user,
            device: *device,
            registered: *registered,
            rng,
            prekeys: with_prekeys.then_some(prekeys),
            prekeys_owed,
            sessions,
            outbox,
            statuses,
            inbox,
            groups,
            control,
            presence,
            media,
            retained,
        }
    }

    /// The state a change record leads to from `previous`: its head, the
    /// previous prekey store if the head has none, and the previous tables
    /// (the record's changes still to be applied to them).
    fn after(previous: &mut State, head: Head) -> State {
        let Head {
            format,
            user,
            device,
            registered,
            rng,
            prekeys,
            prekeys_owed,
            sessions,
            outbox,
            statuses,
            inbox,
            groups,
            control,
            presence,
            media,
            retained,
        } = head;
        let mut next = State {
            format,
            user,
            device,
            registered,
            rng,
            prekeys: prekeys.unwrap_or_else(|| previous.prekeys.clone()),
            prekeys_owed,
            sessions,
            outbox,
            statuses,
            inbox,
            groups,
            control,
            presence,
            media,
            retained,
        };
        for (mine, theirs) in next.tables().into_iter().zip(previous.tables()) {
            mine.swap_with(theirs.as_any());
        }
        next
    }
}

impl State {
    /// Every table, in a fixed order: a change names its table by position.
    fn tables(&mut self) -> Vec<&mut dyn Journaled> {
        let mut all: Vec<&mut dyn Journaled> = Vec::with_capacity(10);
        all.extend(self.statuses.tables());
        all.extend(self.inbox.tables());
        all.extend(self.outbox.tables());
        all.extend(self.sessions.tables());
        all.extend(self.groups.tables());
        all
    }

    fn decode(bytes: &[u8]) -> Result<State, RestoreError> {
        // The format leads the encoding: a save of another format is named as
        // such, not reported as undecodable.
        if let Ok((found, _)) = postcard::take_from_bytes::<u16>(bytes) {
            if found != SAVE_FORMAT {
                return Err(RestoreError::Format { found, expected: SAVE_FORMAT });
            }
        }
        let mut state: State = postcard::from_bytes(bytes).map_err(decode_error)?;
        state.rebuild();
        Ok(state)
    }

    /// Rebuilds the indexes a save leaves out.
    fn rebuild(&mut self) {
        self.inbox.rebuild();
        self.outbox.rebuild();
        self.statuses.rebuild();
    }
}

fn decode_error(e: impl fmt::Display) -> RestoreError {
    RestoreError::Decode { detail: e.to_string() }
}

/// What [`Client::save_incremental`] made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IncrementalSave {
    /// Everything: replaces what was stored.
    Full(SavedClient),
    /// What changed since the previous incremental save: stored after it.
    Changes(SavedChanges),
}

impl SavedClient {
    /// The full save of the state that `changes`, taken in order by
    /// [`Client::save_incremental`] after this save, lead to: what a driver
    /// that stores changes restores from.
    ///
    /// # Errors
    /// [`RestoreError`] if this save or a change does not decode.
    pub fn apply_changes<'a>(
        &self,
        changes: impl IntoIterator<Item = &'a SavedChanges>,
    ) -> Result<SavedClient, RestoreError> {
        let mut state = State::decode(&self.bytes)?;
        for change in changes {
            let record: ChangeRecord = postcard::from_bytes(&change.bytes).map_err(decode_error)?;
            if record.format != SAVE_FORMAT {
                return Err(RestoreError::Format { found: record.format, expected: SAVE_FORMAT });
            }
            let head: Head = postcard::from_bytes(&record.head).map_err(decode_error)?;
            let mut next = State::after(&mut state, head);
            let mut tables = next.tables();
            for (table, key, value) in &record.changes {
                let Some(t) = tables.get_mut(usize::from(*table)) else {
                    return Err(RestoreError::Decode {
                        detail: format!("a change names table {table}, which does not exist"),
                    });
                };
                t.apply(key, value.as_deref()).map_err(decode_error)?;
            }
            state = next;
        }
        state.rebuild();
        let bytes = postcard::to_allocvec(&state).map_err(decode_error)?;
        Ok(SavedClient { bytes })
    }
}

/// Where the connection stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
enum Conn {
    #[default]
    Offline,
    AwaitingChallenge,
    AwaitingWelcome {
        nonce: [u8; 32],
        registering: bool,
        sent_at_ms: u64,
    },
    Ready,
}

/// A FetchBundle in flight (`request` set) or recently failed (`None`: the
/// next try waits for the resend timer).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
struct BundleRequest {
    request: Option<u32>,
    sent_at_ms: u64,
}

/// An upload of prekeys followed by a fetch of our own bundle. The server
/// does not answer an upload, so our own bundle is the evidence: once it
/// carries our current signed prekey, the upload landed. Fetching it hands us
/// one of our own one-time prekeys, which we then delete so none is wasted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
struct SelfFetch {
    /// The fetch's request id; `None` once answered with a stale bundle (the
    /// timer then uploads and fetches again).
    request: Option<u32>,
    sent_at_ms: u64,
    /// One-time prekey ids in the upload.
    uploaded: BTreeSet<u32>,
}

/// Connection state and outputs: lost with the connection or a crash.
/// Serializable only so that [`Client::hash_connection_state`] can hash it.
#[derive(Debug, Default, Serialize)]
struct Volatile {
    conn: Conn,
    transmits: VecDeque<ClientFrame>,
    events: VecDeque<AppEvent>,
    /// Outbox entries transmitted on this connection, and when.
    sent_at: BTreeMap<MessageId, u64>,
    /// Receipt batches transmitted on this connection, and when.
    receipts_sent_at: BTreeMap<MessageId, u64>,
    /// Every receipt batch then owed is in `receipts_sent_at`: a flush
    /// need look only at batches made since. (Derived from the rest, so
    /// left out of the encoding: it changes cost, never output.)
    #[serde(skip)]
    receipts_synced: bool,
    /// Mailbox seqs to acknowledge.
    acks: Vec<u64>,
    bundles: BTreeMap<UserId, BundleRequest>,
    next_request: u32,
    /// When recent bundle fetches were sent (kept across connections, like
    /// the server's rate limit).
    fetch_log: VecDeque<u64>,
    /// A fetch was wanted but the rate limit held it back.
    fetch_blocked: bool,
    /// (group, version) of our changes sent on this connection, and when.
    changes_sent_at: BTreeMap<(GroupId, u64), u64>,
    /// The prekey upload being confirmed on this connection.
    self_fetch: Option<SelfFetch>,
    /// Presence frames sent on this connection.
    presence: presence::PresenceVolatile,
    /// Uploads and downloads under way on this connection.
    media: media::MediaVolatile,
    /// How many frames at the front of `transmits` the pacer let go.
    released: usize,
    /// How many frames the pacer still held at the end of the last call.
    carried: usize,
    /// This connection's send budget (created full at its first use).
    /// Left out of the encoding: [`Client::hash_connection_state`] hashes
    /// what it holds at a given time instead.
    #[serde(skip)]
    pacer: Option<pacer::Pacer>,
}

impl Volatile {
    fn reset_connection(&mut self, conn: Conn) {
        self.conn = conn;
        self.transmits.clear();
        self.sent_at.clear();
        self.receipts_sent_at.clear();
        self.receipts_synced = false;
        self.acks.clear();
        self.bundles.clear();
        self.fetch_blocked = false;
        self.changes_sent_at.clear();
        self.self_fetch = None;
        self.presence.reset();
        self.media = media::MediaVolatile::default();
        self.released = 0;
        self.carried = 0;
        self.pacer = None;
    }
}

/// One device's client state machine.
///
/// # Call order
/// The driver feeds inputs and drains outputs, quinn-proto style:
/// 1. `handle_connected` when a connection opens, then `handle_frame` for each
///    server frame, `handle_disconnected` when it closes, `handle_timeout`
///    when the deadline from `poll_timeout` passes; app commands (`send_text`,
///    `send_media`, `create_group`, `change_group`, `send_group`, `mark_read`,
///    `mark_group_read`, `subscribe_presence`, `set_presence_privacy`) at any
///    time, online or not.
/// 2. After **each** such call: if `is_dirty()`, persist `save()`; only then
///    drain `poll_transmit` (send each frame, in order, on the current
///    connection) and `poll_event` (hand each to the app), and re-arm the
///    timer from `poll_timeout`. `poll_transmit` may hold frames back to
///    stay under the server's frame rate (see [`pacer`]); `poll_timeout`
///    then names when the next may go.
///
/// The connection handshake is: server `Challenge` → `Register` (first time)
/// or `Authenticate` → `Welcome`; then the client uploads prekeys and resends
/// every unacknowledged send, receipt batch and group change.
///
/// # Durability contract
/// A crash between a call and its save loses the call's effects **and** its
/// outputs: the frames were never sent and the events never shown, so the
/// server still holds (and redelivers) whatever the lost call received, and
/// nothing it would have sent was seen by anyone. Encrypting again under the
/// same ratchet key after such a crash cannot leak either, because the first
/// ciphertext never left. Hence: never a loss, never a double to the app. Two
/// rules make it hold: the save must precede the drain, and the drain must
/// finish before the next call (the app stores each event before the driver
/// moves on; a real app commits its own store in the same transaction as the
/// save). Return values of commands (message and group ids) are likewise
/// provisional until the save: after a crash the restored RNG draws the same
/// ids again.
///
/// Everything the server must confirm (sends, receipt batches, group
/// changes, prekey uploads) is persisted until it does, so a crash or a
/// dropped connection after the save loses none of it; a delivery-ack that is
/// lost only brings the delivery back, which deduplication absorbs.
pub struct Client {
    config: ClientConfig,
    state: State,
    vol: Volatile,
    dirty: Cell<bool>,
    /// Length of the last save: the next one starts with that capacity, as
    /// a large state (a thousand sessions, a group's status book) grown by
    /// doubling was copied about once more than it was written.
    save_len: Cell<usize>,
    /// The prekey store's change count at the last incremental save.
    prekeys_saved: Option<u64>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("user", &self.config.user)
            .field("device", &self.config.device)
            .field("conn", &self.vol.conn)
            .field("registered", &self.state.registered)
            .field("outbox", &self.state.outbox.len())
            .field("receipts_owed", &self.state.control.receipts_owed())
            .field("held_group_messages", &self.state.inbox.held_len())
            .finish_non_exhaustive()
    }
}

fn own_address(config: &ClientConfig) -> DeviceAddress {
    DeviceAddress::new(config.user.clone(), config.device)
}

impl Client {
    /// A fresh device: new identity key, signed prekey and a batch of one-time
    /// prekeys, all drawn from `ChaCha20Rng::seed_from_u64(seed)`. A 64-bit
    /// seed suits simulation; a real device uses [`Client::from_seed`] with 32
    /// bytes from the OS.
    pub fn new(config: ClientConfig, seed: u64, now_ms: u64) -> Client {
        Self::with_rng(config, ChaCha20Rng::seed_from_u64(seed), now_ms)
    }

    /// Like [`Client::new`] with a full 256-bit seed.
    pub fn from_seed(config: ClientConfig, seed: [u8; 32], now_ms: u64) -> Client {
        Self::with_rng(config, ChaCha20Rng::from_seed(seed), now_ms)
    }

    fn with_rng(config: ClientConfig, mut rng: ChaCha20Rng, now_ms: u64) -> Client {
        let identity = config.suite.generate_identity(&mut rng);
        let mut prekeys = PreKeyStore::new(config.suite, identity, &mut rng, now_ms);
        let fresh = prekeys.generate_one_time(config.prekey_batch, &mut rng);
        let mut sessions = Sessions::default();
        sessions.learn_identity(&config.user, prekeys.identity().public());
        let state = State {
            format: SAVE_FORMAT,
            user: config.user.clone(),
            device: config.device,
            registered: false,
            rng,
            prekeys,
            prekeys_owed: PreKeysOwed { signed: true, one_time: fresh.iter().map(|k| k.id).collect() },
            sessions,
            outbox: Outbox::default(),
            statuses: StatusBook::default(),
            inbox: Inbox::default(),
            groups: Groups::default(),
            control: Control::default(),
            presence: presence::PresenceWishes::default(),
            media: media::MediaQueues::default(),
            retained: adversary::RetainedKeys::default(),
        };
        Client {
            config,
            state,
            vol: Volatile::default(),
            dirty: Cell::new(true),
            save_len: Cell::new(0),
            prekeys_saved: None,
        }
    }

    /// Resumes from a [`Client::save`] after a crash: offline, with nothing
    /// queued for output; the driver connects again.
    pub fn restore(config: ClientConfig, saved: &SavedClient) -> Result<Client, RestoreError> {
        let state = State::decode(&saved.bytes)?;
        if state.format != SAVE_FORMAT {
            return Err(RestoreError::Format { found: state.format, expected: SAVE_FORMAT });
        }
        if state.user != config.user || state.device != config.device {
            return Err(RestoreError::WrongAccount {
                saved: format!("{:?}/{:?}", state.user, state.device),
                configured: format!("{:?}/{:?}", config.user, config.device),
            });
        }
        let save_len = Cell::new(saved.bytes.len());
        Ok(Client { config, state, vol: Volatile::default(), dirty: Cell::new(false), save_len, prekeys_saved: None })
    }

    /// Encodes everything that must survive a crash, and clears the dirty flag.
    pub fn save(&self) -> SavedClient {
        self.dirty.set(false);
        // Encoding into a Vec fails only for a type postcard cannot represent
        // (e.g. a sequence without an exact length); were it to happen, the
        // empty result would be refused by `restore`, never taken for a state.
        // The tests restore every save they make, so such a type is caught.
        // Some slack, as most saves grow the state a little.
        let buffer = Vec::with_capacity(self.save_len.get() + self.save_len.get() / 8 + 64);
        let bytes = postcard::to_extend(&self.state, buffer).unwrap_or_default();
        self.save_len.set(bytes.len());
        SavedClient { bytes }
    }

    /// Saves incrementally: everything on the first call and when `full` is
    /// asked ([`IncrementalSave::Full`], which replaces what was stored),
    /// otherwise only what changed since the previous call
    /// ([`IncrementalSave::Changes`], stored after it). Clears the dirty
    /// flag like [`Client::save`]. A driver asks for a full save once the
    /// changes stored since the last one add up to about its size, so
    /// restoring stays cheap and saving costs what changed.
    pub fn save_incremental(&mut self, full: bool) -> IncrementalSave {
        let mut tables = self.state.tables();
        let journaling = !full && tables.first().is_some_and(|t| t.is_journaling());
        if !journaling {
            for t in &mut tables {
                t.start_journal();
            }
            self.prekeys_saved = Some(self.state.prekeys.change_count());
            return IncrementalSave::Full(self.save());
        }
        let mut changes = Vec::new();
        for (id, t) in tables.into_iter().enumerate() {
            // Fewer than 256 tables; postcard fails only on a sequence of
            // unknown length, which the derived encodings never produce.
            let _ = t.drain(u8::try_from(id).unwrap_or(u8::MAX), &mut changes);
        }
        self.dirty.set(false);
        let prekeys = self.state.prekeys.change_count();
        let head = journal::encode_head(&self.state.head(self.prekeys_saved != Some(prekeys))).unwrap_or_default();
        self.prekeys_saved = Some(prekeys);
        let record = ChangeRecord { format: SAVE_FORMAT, head, changes };
        IncrementalSave::Changes(SavedChanges { bytes: postcard::to_allocvec(&record).unwrap_or_default() })
    }

    /// Feeds the connection state — everything [`Client::save`] leaves out:
    /// the login, what was sent on this connection and when, pending
    /// requests, held frames, undrained outputs — to `state`. With the save,
    /// it identifies the client by what it is rather than by the inputs that
    /// led there, so a model checker can merge two paths that reached the
    /// same device (the server's counterpart is `Server::hash_state`).
    /// `now_ms` is the time of the next input: the send budget is hashed as
    /// it stands then, because two budgets that hold the same at that time
    /// (one refilled long ago, one spent less) behave the same from then on.
    pub fn hash_connection_state<H: Hasher>(&self, now_ms: u64, state: &mut H) {
        // postcard fails only on a sequence of unknown length, which a
        // derived `Serialize` never produces.
        state.write(&postcard::to_allocvec(&self.vol).unwrap_or_default());
        // A budget not yet created is created full at its first use.
        let budget = self.vol.pacer.map_or_else(|| self.config.pace.cap(), |p| p.at(now_ms));
        state.write_u64(budget);
    }

    /// Whether [`Client::save`] may differ from the last save (conservative:
    /// true after any change, false only when nothing persistent changed).
    pub fn is_dirty(&self) -> bool {
        self.dirty.get()
    }

    fn touch(&self) {
        self.dirty.set(true);
    }

    // ----- accessors -----

    /// This client's configuration.
    pub fn config(&self) -> &ClientConfig {
        &self.config
    }

    /// Whether the connection is authenticated and usable.
    pub fn is_ready(&self) -> bool {
        self.vol.conn == Conn::Ready
    }

    /// This device's identity public key.
    pub fn identity_key(&self) -> PublicKey {
        self.state.prekeys.identity().public()
    }

    /// The ticks of a sent message, per recipient.
    pub fn status(&self, id: &MessageId) -> Option<MessageStatus> {
        self.state.statuses.get(id)
    }

    /// Sends not yet acknowledged by the server.
    pub fn outbox_len(&self) -> usize {
        self.state.outbox.len()
    }

    /// The version and members of a group as this device knows them.
    pub fn group(&self, group: &GroupId) -> Option<(u64, Vec<UserId>)> {
        self.state.groups.groups.get(group).map(|g| (g.version, g.members.iter().cloned().collect()))
    }

    /// Group messages waiting for their sender's key.
    pub fn held_group_messages(&self) -> usize {
        self.state.inbox.held_len()
    }

    // ----- inputs -----

    /// A connection opened; the server's `Challenge` comes next.
    pub fn handle_connected(&mut self, _now_ms: u64) {
        self.vol.reset_connection(Conn::AwaitingChallenge);
    }

    /// The connection closed. Unsent output is dropped; everything
    /// unconfirmed is sent again after the next `Welcome`.
    pub fn handle_disconnected(&mut self, _now_ms: u64) {
        self.vol.reset_connection(Conn::Offline);
    }

    /// The deadline from [`Client::poll_timeout`] passed: resend what the
    /// server has not acknowledged within `resend_after_ms`, and fetch bundles
    /// the rate limit held back.
    pub fn handle_timeout(&mut self, now_ms: u64) {
        let wait = self.config.resend_after();
        if let Conn::AwaitingWelcome { nonce, sent_at_ms, .. } = self.vol.conn {
            // No Welcome: our answer or the Welcome was lost. The server
            // answers a repeated login on a logged-in connection with Welcome.
            if sent_at_ms.saturating_add(wait) <= now_ms {
                self.on_challenge(nonce, now_ms);
            }
            self.pace(now_ms);
            return;
        }
        if self.vol.conn != Conn::Ready {
            self.pace(now_ms);
            return;
        }
        let fresh = |at: &u64| at.saturating_add(wait) > now_ms;
        self.vol.sent_at.retain(|_, at| fresh(at));
        self.vol.receipts_sent_at.retain(|_, at| fresh(at));
        // Batches sent too long ago are due again: the next flush looks at all.
        self.vol.receipts_synced = false;
        self.vol.changes_sent_at.retain(|_, at| fresh(at));
        self.vol.bundles.retain(|_, r| fresh(&r.sent_at_ms));
        if self.vol.self_fetch.as_ref().is_some_and(|f| !fresh(&f.sent_at_ms)) {
            self.vol.self_fetch = None;
        }
        self.presence_timeout(now_ms);
        self.media_timeout(now_ms);
        self.flush(now_ms);
    }

    /// One frame from the server.
    pub fn handle_frame(&mut self, frame: ServerFrame, now_ms: u64) {
        // The server sends these only on an authenticated connection: if our
        // Welcome was lost on the way, they prove the login worked, and
        // waiting for a Welcome that will not come would leave acks and sends
        // stuck.
        let authenticated_only = !matches!(frame, ServerFrame::Challenge { .. } | ServerFrame::Error { .. });
        if authenticated_only && matches!(self.vol.conn, Conn::AwaitingWelcome { .. }) {
            self.on_welcome();
        }
        match frame {
            ServerFrame::Challenge { nonce } => self.on_challenge(nonce, now_ms),
            ServerFrame::Welcome { .. } => self.on_welcome(),
            ServerFrame::ServerAck { message_id, .. } => self.on_server_ack(message_id),
            ServerFrame::Deliver { seq, item } => {
                // Acked after this call is saved (the drain follows the save).
                self.vol.acks.push(seq);
                self.on_delivery(item);
            }
            ServerFrame::GroupChangeAccepted { group, version } => {
                self.vol.changes_sent_at.retain(|(g, v), _| !(*g == group && *v <= version));
                if self.state.control.settle_changes(&group, version) > 0 {
                    self.touch();
                }
            }
            ServerFrame::Bundle { request, bundle } => self.on_bundle(request, bundle),
            ServerFrame::PreKeysLow { .. } => self.on_prekeys_low(),
            ServerFrame::Presence { user, last_seen } => {
                self.on_presence(&user);
                self.vol.events.push_back(AppEvent::Presence { user, last_seen })
            }
            ServerFrame::MediaStored { blob, len } => self.on_media_stored(blob, len),
            ServerFrame::MediaChunk { blob, offset, chunk, last } => {
                self.on_media_chunk(blob, offset, chunk, last, now_ms)
            }
            ServerFrame::Pong { .. } => {}
            ServerFrame::Error { code, detail } => self.vol.events.push_back(AppEvent::ServerError { code, detail }),
        }
        self.flush(now_ms);
    }

    // ----- app commands -----

    /// Queues a text message to `to` and returns its id, which stays the same
    /// across every retry. Sent at once when possible, after the first
    /// contact's bundle fetch otherwise, and whenever the client is online.
    pub fn send_text(&mut self, to: &UserId, body: &[u8], now_ms: u64) -> Result<MessageId, ClientError> {
        if *to == self.config.user {
            return Err(ClientError::SelfRecipient);
        }
        self.check_body(body)?;
        self.check_outbox_room(1)?;
        let id = MessageId::random(&mut self.state.rng);
        self.touch();
        self.push_outbox(id, Target::Direct(to.clone()), None, Content::Text { body: body.to_vec() })?;
        self.state.statuses.track(id, [to.clone()], STATUS_TRACKED_MAX);
        self.flush(now_ms);
        Ok(id)
    }

    /// Creates a group with us as admin and `members`, signs version 1 and
    /// sends it to the server; applied locally at once.
    pub fn create_group(&mut self, members: Vec<UserId>, now_ms: u64) -> Result<GroupId, ClientError> {
        let me = self.config.user.clone();
        let add: BTreeSet<UserId> = members.into_iter().filter(|u| *u != me).collect();
        if add.len() + 1 > GROUP_MEMBERS_MAX {
            return Err(ClientError::TooManyMembers { members: add.len() + 1, max: GROUP_MEMBERS_MAX });
        }
        let group = GroupId::random(&mut self.state.rng);
        self.touch();
        let change = self.sign_change(group, 1, add.into_iter().collect(), Vec::new());
        self.apply_change(&change);
        self.state.control.owe_change(change);
        self.flush(now_ms);
        Ok(group)
    }

    /// As admin, adds and removes members (version `current + 1`). Members
    /// already in (or not in) the group are ignored; every remaining member,
    /// us included, rotates its sender key when anyone is removed.
    pub fn change_group(
        &mut self,
        group: GroupId,
        add: Vec<UserId>,
        remove: Vec<UserId>,
        now_ms: u64,
    ) -> Result<(), ClientError> {
        let me = self.config.user.clone();
        let state = self.state.groups.groups.get(&group).ok_or(ClientError::UnknownGroup { group })?;
        if state.admin != me {
            return Err(ClientError::NotAdmin { group, admin: state.admin.clone() });
        }
        if remove.contains(&me) {
            return Err(ClientError::AdminCannotLeave { group });
        }
        let add: BTreeSet<UserId> = add.into_iter().filter(|u| !state.members.contains(u)).collect();
        let remove: BTreeSet<UserId> = remove.into_iter().filter(|u| state.members.contains(u)).collect();
        if add.is_empty() && remove.is_empty() {
            return Err(ClientError::EmptyChange { group });
        }
        let members = state.members.len() + add.len() - remove.len();
        if members > GROUP_MEMBERS_MAX {
            return Err(ClientError::TooManyMembers { members, max: GROUP_MEMBERS_MAX });
        }
        let version = state.version.saturating_add(1);
        self.touch();
        let change = self.sign_change(group, version, add.into_iter().collect(), remove.into_iter().collect());
        self.apply_change(&change);
        self.state.control.owe_change(change);
        self.flush(now_ms);
        Ok(())
    }

    /// Queues a group message: one sender-key ciphertext for every member,
    /// after our sender key has been queued pairwise to members lacking it.
    pub fn send_group(&mut self, group: GroupId, body: &[u8], now_ms: u64) -> Result<MessageId, ClientError> {
        let me = self.config.user.clone();
        let state = self.state.groups.groups.get(&group).ok_or(ClientError::UnknownGroup { group })?;
        if !state.members.contains(&me) {
            return Err(ClientError::NotMember { group });
        }
        let recipients: Vec<UserId> = state.members.iter().filter(|u| **u != me).cloned().collect();
        self.check_body(body)?;
        self.check_outbox_room(1 + recipients.len())?;
        let id = MessageId::random(&mut self.state.rng);
        self.touch();
        self.push_outbox(id, Target::Group(group), None, Content::Text { body: body.to_vec() })?;
        self.state.statuses.track(id, recipients, STATUS_TRACKED_MAX);
        self.flush(now_ms);
        Ok(id)
    }

    /// The app opened the 1:1 conversation with `peer`: everything received
    /// from `peer` so far is read, and one batched Read receipt goes out.
    pub fn mark_read(&mut self, peer: &UserId, now_ms: u64) {
        self.mark_conversation_read(&Conversation::Direct(peer.clone()), now_ms);
    }

    /// The app opened a group conversation: Read receipts go to each sender.
    pub fn mark_group_read(&mut self, group: GroupId, now_ms: u64) {
        self.mark_conversation_read(&Conversation::Group(group), now_ms);
    }

    fn mark_conversation_read(&mut self, conversation: &Conversation, now_ms: u64) {
        let unread = self.state.inbox.take_unread(conversation);
        if unread.is_empty() {
            return;
        }
        self.touch();
        for (sender, id) in unread {
            self.state.control.owe_receipt(sender, ReceiptKind::Read, id);
        }
        self.flush(now_ms);
    }

    // ----- outputs -----

    /// The next frame to send on the current connection.
    pub fn poll_transmit(&mut self) -> Option<ClientFrame> {
        // Frames the pacer holds back go after a later call (a timeout when
        // nothing else comes: see `poll_timeout`).
        self.vol.released = self.vol.released.checked_sub(1)?;
        self.vol.transmits.pop_front()
    }

    /// Frames produced and not yet taken by [`Client::poll_transmit`], those
    /// the pacer holds back included, in order. A frame is sealed when it is
    /// queued: a simulator reads here under which group view a message was
    /// encrypted (the view may change before the frame leaves).
    pub fn queued_transmits(&self) -> impl Iterator<Item = &ClientFrame> {
        self.vol.transmits.iter()
    }

    /// The next event for the app.
    pub fn poll_event(&mut self) -> Option<AppEvent> {
        self.vol.events.pop_front()
    }

    /// When [`Client::handle_timeout`] should next be called, if at all.
    /// Right after `handle_timeout(now)` it is later than `now` or `None`.
    pub fn poll_timeout(&self) -> Option<u64> {
        let paced = match self.vol.pacer {
            Some(p) if self.vol.released < self.vol.transmits.len() => Some(p.next_at()),
            _ => None,
        };
        let wait = self.config.resend_after();
        if let Conn::AwaitingWelcome { sent_at_ms, .. } = self.vol.conn {
            return Some(sent_at_ms.saturating_add(wait)).into_iter().chain(paced).min();
        }
        if self.vol.conn != Conn::Ready {
            return paced;
        }
        let sends = self.vol.sent_at.values().chain(self.vol.receipts_sent_at.values());
        let changes = self.vol.changes_sent_at.values();
        let bundles = self.vol.bundles.values().map(|r| &r.sent_at_ms);
        let own = self.vol.self_fetch.iter().map(|f| &f.sent_at_ms);
        let resend = sends.chain(changes).chain(bundles).chain(own).min().map(|at| at.saturating_add(wait));
        let fetch = match (self.vol.fetch_blocked, self.vol.fetch_log.front()) {
            (true, Some(oldest)) => Some(oldest.saturating_add(BUNDLE_FETCH_WINDOW_MS)),
            _ => None,
        };
        [resend, fetch, self.presence_deadline(), self.media_deadline(), paced].into_iter().flatten().min()
    }

    // ----- connection -----

    fn on_challenge(&mut self, nonce: [u8; 32], now_ms: u64) {
        let user = self.config.user.clone();
        let device = self.config.device;
        let registering = !self.state.registered;
        self.touch();
        let proof = self.config.suite.sign(
            self.state.prekeys.identity(),
            &auth_message(&nonce, &user, device),
            &mut self.state.rng,
        );
        let frame = if registering {
            // Registering again with the same key (the first Welcome was lost)
            // is accepted by the server like a login.
            ClientFrame::Register {
                version: PROTOCOL_VERSION,
                user,
                device,
                identity_key: self.state.prekeys.identity().public(),
                proof,
            }
        } else {
            ClientFrame::Authenticate { version: PROTOCOL_VERSION, user, device, proof }
        };
        self.vol.transmits.push_back(frame);
        self.vol.conn = Conn::AwaitingWelcome { nonce, registering, sent_at_ms: now_ms };
    }

    fn on_welcome(&mut self) {
        if let Conn::AwaitingWelcome { registering: true, .. } = self.vol.conn {
            self.state.registered = true;
            self.touch();
        }
        self.vol.conn = Conn::Ready;
    }

    fn on_prekeys_low(&mut self) {
        let fresh = self.state.prekeys.generate_one_time(self.config.prekey_batch, &mut self.state.rng);
        self.state.prekeys_owed.one_time.extend(fresh.iter().map(|k| k.id));
        self.touch();
    }

    // ----- sending -----

    fn check_body(&self, body: &[u8]) -> Result<(), ClientError> {
        if body.len() > BODY_LEN_MAX {
            return Err(ClientError::BodyTooLarge { len: body.len(), max: BODY_LEN_MAX });
        }
        Ok(())
    }

    fn check_outbox_room(&self, needed: usize) -> Result<(), ClientError> {
        if self.state.outbox.len() + needed > OUTBOX_LEN_MAX {
            return Err(ClientError::OutboxFull { len: self.state.outbox.len(), max: OUTBOX_LEN_MAX });
        }
        Ok(())
    }

    fn push_outbox(
        &mut self,
        id: MessageId,
        target: Target,
        distributes: Option<GroupId>,
        content: Content,
    ) -> Result<(), ClientError> {
        self.state
            .outbox
            .push(OutboxEntry { id, target, distributes, body: Body::Plain(content) }, OUTBOX_LEN_MAX)
            .map_err(|full| ClientError::OutboxFull { len: full.len, max: OUTBOX_LEN_MAX })
    }

    fn on_server_ack(&mut self, id: MessageId) {
        self.vol.sent_at.remove(&id);
        self.vol.receipts_sent_at.remove(&id);
        if self.state.control.ack_batch(&id) {
            self.touch();
            return;
        }
        if self.state.outbox.remove(&id).is_none() {
            return;
        }
        if !self.config.bugs.has(ClientBug::ForgetDirtyOnServerAck) {
            self.touch();
        }
        for (peer, status) in self.state.statuses.update_all(&id, DeliveryState::Sent) {
            self.vol.events.push_back(AppEvent::Status { id, peer, status });
        }
    }

    fn update_status(&mut self, id: MessageId, peer: &UserId, next: DeliveryState) {
        if self.config.bugs.has(ClientBug::LatestReceiptWins) {
            if let Some(status) = self.state.statuses.overwrite(&id, peer, next) {
                self.touch();
                self.vol.events.push_back(AppEvent::Status { id, peer: peer.clone(), status });
            }
            return;
        }
        if let Some(status) = self.state.statuses.update(&id, peer, next) {
            self.touch();
            self.vol.events.push_back(AppEvent::Status { id, peer: peer.clone(), status });
        }
    }

    /// Sends whatever can go out now: prekeys, group changes, outbox entries
    /// up to the in-flight window, receipt batches, delivery-acks and needed
    /// bundle fetches.
    fn flush(&mut self, now_ms: u64) {
        if self.vol.conn == Conn::Ready {
            self.flush_ready(now_ms);
        }
        self.pace(now_ms);
    }

    /// Releases what the send budget allows of the frames waiting.
    fn pace(&mut self, now_ms: u64) {
        let waiting = self.vol.transmits.len().saturating_sub(self.vol.released);
        if waiting > 0 {
            let pace = self.config.pace;
            let pacer = self.vol.pacer.get_or_insert_with(|| pacer::Pacer::new(now_ms, pace));
            self.vol.released += pacer.take(now_ms, waiting);
        }
        self.vol.carried = self.vol.transmits.len().saturating_sub(self.vol.released);
    }

    /// Acks for `seqs`, ahead of every frame the pacer holds back: the
    /// server hands out no more than its delivery window until it has acks,
    /// so an ack waiting behind a burst of sends would stall what comes in
    /// (group changes among it). Merged into a held ack frame where there is
    /// room, so a backlog of deliveries does not turn into as many frames.
    fn queue_acks(&mut self, mut seqs: Vec<u64>) {
        // With nothing held back since an earlier call, in order after this
        // call's other frames, as without a pacer.
        let held = if self.vol.carried > 0 { self.vol.released } else { self.vol.transmits.len() };
        let waiting = self.vol.transmits.iter_mut().skip(held).find_map(|f| match f {
            ClientFrame::DeliveryAck { seqs } => Some(seqs),
            _ => None,
        });
        if let Some(waiting) = waiting {
            let room = BATCH_LEN_MAX.saturating_sub(waiting.len()).min(seqs.len());
            waiting.extend(seqs.drain(..room));
        }
        for (i, chunk) in seqs.chunks(BATCH_LEN_MAX).enumerate() {
            self.vol.transmits.insert(held + i, ClientFrame::DeliveryAck { seqs: chunk.to_vec() });
        }
    }

    fn flush_ready(&mut self, now_ms: u64) {
        self.vol.fetch_blocked = false;
        self.flush_prekeys(now_ms);
        self.flush_presence(now_ms);
        self.flush_changes(now_ms);
        self.flush_outbox(now_ms);
        self.flush_media(now_ms);
        // While a receipt frame is held back by the pacer, new receipts wait
        // and join the next batch: batching each call's receipts into a frame
        // of its own spent a receiver's frame budget on receipts of one or
        // two messages each, and its deliveries waited behind them.
        let receipt_held =
            self.vol.transmits.iter().skip(self.vol.released).any(|f| matches!(f, ClientFrame::Receipt { .. }));
        let (_, before) = self.state.control.receipts_owed();
        debug_assert!(
            !self.vol.receipts_synced
                || self.state.control.batches().all(|b| self.vol.receipts_sent_at.contains_key(&b.id)),
            "a receipt batch owed since the last flush was never sent"
        );
        if !receipt_held && self.state.control.batch_receipts(&mut self.state.rng) {
            self.touch();
        }
        // New batches go to the back; with every older one sent, only they
        // need a look (walking all of them on every call was 8% of a client
        // draining a backlog).
        let known = if self.vol.receipts_synced { before } else { 0 };
        for batch in self.state.control.batches().skip(known) {
            if let std::collections::btree_map::Entry::Vacant(slot) = self.vol.receipts_sent_at.entry(batch.id) {
                slot.insert(now_ms);
                self.vol.transmits.push_back(batch.frame());
            }
        }
        self.vol.receipts_synced = true;
        let acks = std::mem::take(&mut self.vol.acks);
        if !acks.is_empty() {
            self.queue_acks(acks);
        }
        for admin in self.state.groups.waiting_admins() {
            if self.state.sessions.identity(&admin).is_none() {
                self.ensure_bundle(&admin, now_ms);
            }
        }
    }

    /// Uploads owed prekeys, then fetches our own bundle to learn whether
    /// the upload landed (see [`SelfFetch`]).
    fn flush_prekeys(&mut self, now_ms: u64) {
        if self.vol.self_fetch.is_some() {
            return;
        }
        let store = &self.state.prekeys;
        let owed = &mut self.state.prekeys_owed;
        let before = owed.one_time.len();
        // Keys consumed since they were generated need no upload.
        owed.one_time.retain(|id| store.one_time_prekey(*id).is_some());
        if owed.one_time.len() != before {
            self.dirty.set(true);
        }
        if !owed.signed && owed.one_time.is_empty() {
            return;
        }
        let one_time: Vec<OneTimePreKeyUpload> = owed
            .one_time
            .iter()
            .filter_map(|id| store.one_time_prekey(*id).map(|k| OneTimePreKeyUpload { id: *id, key: k.public() }))
            .take(BATCH_LEN_MAX)
            .collect();
        let spk = store.signed_prekey();
        let signed_prekey = SignedPreKeyUpload { id: spk.id(), key: spk.public(), signature: spk.signature() };
        let Some(request) = self.take_fetch_slot(now_ms) else { return };
        let uploaded = one_time.iter().map(|k| k.id).collect();
        self.vol.transmits.push_back(ClientFrame::UploadPreKeys { signed_prekey, one_time });
        self.vol.transmits.push_back(ClientFrame::FetchBundle { request, owner: own_address(&self.config) });
        self.vol.self_fetch = Some(SelfFetch { request: Some(request), sent_at_ms: now_ms, uploaded });
    }

    /// Sends owed group changes not yet sent on this connection (or due for
    /// a resend), giving up on those sent too often.
    fn flush_changes(&mut self, now_ms: u64) {
        for change in self.state.control.give_up_changes() {
            self.touch();
            let reason = GroupChangeRejection::RefusedByServer;
            self.vol.events.push_back(AppEvent::GroupChangeRejected {
                group: change.group,
                version: change.version,
                reason,
            });
        }
        let mut frames = Vec::new();
        for owed in self.state.control.changes_mut() {
            let key = (owed.change.group, owed.change.version);
            if self.vol.changes_sent_at.contains_key(&key) {
                continue;
            }
            owed.sends = owed.sends.saturating_add(1);
            self.vol.changes_sent_at.insert(key, now_ms);
            frames.push(ClientFrame::GroupChange { change: owed.change.clone() });
        }
        if !frames.is_empty() {
            self.touch();
            self.vol.transmits.extend(frames);
        }
    }

    /// Transmits outbox entries in order, at most [`OUTBOX_IN_FLIGHT_MAX`]
    /// unacknowledged on the connection.
    fn flush_outbox(&mut self, now_ms: u64) {
        let mut cursor = 0;
        while let Some((seq, entry)) = self.state.outbox.next_from(cursor) {
            if self.vol.sent_at.len() >= OUTBOX_IN_FLIGHT_MAX {
                return;
            }
            cursor = seq.saturating_add(1);
            if self.vol.sent_at.contains_key(&entry.id) {
                continue;
            }
            let (id, target) = (entry.id, entry.target.clone());
            let Some((kind, ciphertext)) = self.seal(id, &target, now_ms) else { continue };
            let frame = match target {
                Target::Direct(user) => {
                    ClientFrame::Send { message_id: id, to: DeviceAddress::new(user, PRIMARY_DEVICE), kind, ciphertext }
                }
                Target::Group(group) => ClientFrame::GroupSend { message_id: id, group, ciphertext },
            };
            self.vol.transmits.push_back(frame);
            self.vol.sent_at.insert(id, now_ms);
        }
    }

    /// The entry's ciphertext, encrypting it now if this is its first
    /// transmission. `None` when it cannot be encrypted yet (no session: a
    /// bundle is fetched) or must not be sent any more (we left the group).
    fn seal(&mut self, id: MessageId, target: &Target, now_ms: u64) -> Option<(EnvelopeKind, Vec<u8>)> {
        if let Body::Sealed { kind, ciphertext } = &self.state.outbox.get_mut(&id)?.body {
            return Some((*kind, ciphertext.clone()));
        }
        // Checked before the content is copied and encoded: a sender waiting
        // for hundreds of bundles walks its whole outbox on every flush.
        if let Target::Direct(user) = target {
            if !self.state.sessions.can_send(&DeviceAddress::new(user.clone(), PRIMARY_DEVICE)) {
                self.ensure_bundle(user, now_ms);
                return None;
            }
        }
        let content = match &self.state.outbox.get_mut(&id)?.body {
            Body::Sealed { .. } => return None,
            Body::Plain(content) => content.clone(),
        };
        let mut plaintext = Payload { message_id: id, content }.encode();
        let sealed = match target {
            Target::Direct(user) => {
                self.state.sessions.encrypt(&DeviceAddress::new(user.clone(), PRIMARY_DEVICE), &plaintext)
            }
            Target::Group(group) => self.seal_group(id, *group, &plaintext),
        };
        let leak = self.config.bugs.has(ClientBug::LeakPlaintext).then(|| plaintext.clone());
        wipe(&mut plaintext);
        let (kind, mut ciphertext) = sealed?;
        if let Some(leaked) = leak {
            ciphertext.extend_from_slice(&leaked);
        }
        if let Some(entry) = self.state.outbox.get_mut(&id) {
            entry.body = Body::Sealed { kind, ciphertext: ciphertext.clone() };
        }
        self.touch();
        Some((kind, ciphertext))
    }

    fn seal_group(&mut self, id: MessageId, group: GroupId, plaintext: &[u8]) -> Option<(EnvelopeKind, Vec<u8>)> {
        if !self.state.groups.is_member(&group, &self.config.user) {
            // We left after queueing it: it can no longer be sent.
            self.state.outbox.remove(&id);
            self.touch();
            for (peer, status) in self.state.statuses.update_all(&id, DeliveryState::Expired) {
                self.vol.events.push_back(AppEvent::Status { id, peer, status });
            }
            return None;
        }
        self.ensure_distributed(group);
        let own = self.state.groups.groups.get_mut(&group).and_then(|g| g.own_key.as_mut())?;
        self.dirty.set(true);
        match own.encrypt(plaintext) {
            Ok(message) => Some((EnvelopeKind::Group, message.to_bytes())),
            Err(_) => {
                // The chain is exhausted (after 2^32 − 1 messages): start a
                // new key; the next flush distributes it and sends.
                own.rotate(&mut self.state.rng);
                if let Some(g) = self.state.groups.groups.get_mut(&group) {
                    g.distributed_to.clear();
                }
                None
            }
        }
    }

    /// Queues our current sender key pairwise to every member who lacks it,
    /// creating the key on first use.
    fn ensure_distributed(&mut self, group: GroupId) {
        let me = self.config.user.clone();
        let suite = self.config.suite;
        let State { groups, outbox, rng, .. } = &mut self.state;
        let Some(g) = groups.groups.get_mut(&group) else { return };
        if !g.members.contains(&me) {
            return;
        }
        let own = g.own_key.get_or_insert_with(|| {
            self.dirty.set(true);
            OwnSenderKey::new(suite, SenderKeyGroupId(group.0), rng)
        });
        let missing: Vec<UserId> =
            g.members.iter().filter(|m| **m != me && !g.distributed_to.contains(*m)).cloned().collect();
        if missing.is_empty() {
            return;
        }
        let distribution = own.distribution();
        for member in missing {
            let entry = OutboxEntry {
                id: MessageId::random(rng),
                target: Target::Direct(member.clone()),
                distributes: Some(group),
                body: Body::Plain(Content::SenderKeyDistribution { group, distribution: distribution.clone() }),
            };
            if outbox.push(entry, OUTBOX_LEN_MAX).is_ok() {
                g.distributed_to.insert(member);
            }
        }
        self.dirty.set(true);
    }

    /// Fetches `user`'s bundle unless a fetch is in flight or the client-side
    /// rate limit holds it back (then the timer brings it back).
    fn ensure_bundle(&mut self, user: &UserId, now_ms: u64) {
        if *user == self.config.user || self.vol.bundles.contains_key(user) {
            return;
        }
        let Some(request) = self.take_fetch_slot(now_ms) else { return };
        self.vol
            .transmits
            .push_back(ClientFrame::FetchBundle { request, owner: DeviceAddress::new(user.clone(), PRIMARY_DEVICE) });
        self.vol.bundles.insert(user.clone(), BundleRequest { request: Some(request), sent_at_ms: now_ms });
    }

    /// A request id for one more bundle fetch, unless the client-side rate
    /// limit is reached (then the timer comes back when a slot frees up).
    fn take_fetch_slot(&mut self, now_ms: u64) -> Option<u32> {
        while self.vol.fetch_log.front().is_some_and(|at| at.saturating_add(BUNDLE_FETCH_WINDOW_MS) <= now_ms) {
            self.vol.fetch_log.pop_front();
        }
        if self.vol.fetch_log.len() >= self.config.bundle_fetches_per_minute.max(1) {
            self.vol.fetch_blocked = true;
            return None;
        }
        self.vol.fetch_log.push_back(now_ms);
        let request = self.vol.next_request;
        self.vol.next_request = request.wrapping_add(1);
        Some(request)
    }

    /// Our own bundle came back: the upload landed if it carries our current
    /// signed prekey. The one-time prekey it handed us is deleted at once.
    fn on_own_bundle(&mut self, request: u32, reply: &BundleReply) {
        let Some(fetch) = self.vol.self_fetch.as_mut() else { return };
        if fetch.request != Some(request) {
            return;
        }
        fetch.request = None;
        let uploaded = fetch.uploaded.clone();
        if let Some(k) = reply.one_time_prekey {
            let ours = self.state.prekeys.one_time_prekey(k.id).is_some_and(|own| own.public() == k.key);
            if ours && self.state.prekeys.consume_one_time(k.id).is_ok() {
                self.touch();
            }
        }
        let spk = self.state.prekeys.signed_prekey();
        if reply.signed_prekey.id != spk.id() || reply.signed_prekey.key != spk.public() {
            // An older state of the server (a reordered fetch): try again
            // after the resend interval.
            return;
        }
        self.vol.self_fetch = None;
        self.state.prekeys_owed.signed = false;
        self.state.prekeys_owed.one_time.retain(|id| !uploaded.contains(id));
        self.touch();
    }

    fn on_bundle(&mut self, request: u32, reply: BundleReply) {
        if reply.owner == own_address(&self.config) {
            return self.on_own_bundle(request, &reply);
        }
        let user = reply.owner.user.clone();
        let Some(pending) = self.vol.bundles.get_mut(&user) else { return };
        if pending.request != Some(request) || reply.owner.device != PRIMARY_DEVICE {
            // Unsolicited or stale: starting sessions from it would let a
            // server replace sessions at will.
            return;
        }
        pending.request = None;
        let bundle = PreKeyBundle {
            identity_key: reply.identity_key,
            signed_prekey_id: reply.signed_prekey.id,
            signed_prekey: reply.signed_prekey.key,
            signed_prekey_signature: reply.signed_prekey.signature,
            one_time_prekey: reply.one_time_prekey.map(|k| BundledOneTimePreKey { id: k.id, key: k.key }),
        };
        let verified = match verify_bundle(self.config.suite, &bundle) {
            Ok(v) => v,
            Err(e) => {
                // Kept in `bundles` with no request: fetched again after the resend timer.
                self.vol.events.push_back(AppEvent::SessionFailed { peer: user, reason: e.to_string() });
                return;
            }
        };
        self.vol.bundles.remove(&user);
        let peer = reply.owner;
        if !self.state.sessions.can_send(&peer) && user != self.config.user {
            self.touch();
            let State { sessions, prekeys, rng, .. } = &mut self.state;
            if let Err(reason) = sessions.initiate(self.config.suite, prekeys.identity(), &peer, &verified, rng) {
                self.vol.events.push_back(AppEvent::SessionFailed { peer: user.clone(), reason });
                return;
            }
        }
        self.learn_identity(&user, verified.identity_key());
    }

    fn learn_identity(&mut self, user: &UserId, key: PublicKey) {
        match self.state.sessions.learn_identity(user, key) {
            Learned::Same => return,
            Learned::New => self.touch(),
            Learned::Changed => {
                self.touch();
                self.vol.events.push_back(AppEvent::IdentityChanged { user: user.clone() });
            }
        }
        for change in self.state.groups.take_held(user) {
            self.on_group_change(change);
        }
    }

    // ----- receiving -----

    fn on_delivery(&mut self, item: Delivery) {
        self.touch();
        match item {
            Delivery::Envelope(envelope) => self.on_envelope(envelope),
            Delivery::Receipt { from, kind, message_ids } => {
                let state = match kind {
                    ReceiptKind::Delivered => DeliveryState::Delivered,
                    ReceiptKind::Read => DeliveryState::Read,
                };
                for id in message_ids {
                    self.update_status(id, &from.user, state);
                }
            }
            Delivery::Expired { to, message_id } => self.update_status(message_id, &to.user, DeliveryState::Expired),
            Delivery::GroupChange(change) => self.on_group_change(change),
        }
    }

    fn on_envelope(&mut self, envelope: Envelope) {
        if envelope.to != own_address(&self.config) {
            self.record_seen(&envelope);
            self.undecryptable(&envelope, UndecryptableReason::Misrouted);
            return;
        }
        if !self.config.bugs.has(ClientBug::DedupOff) && self.state.inbox.seen(&envelope.from, &envelope.message_id) {
            // Processed before (its ack was lost, or we crashed after saving
            // but before the ack left): only the ack is owed again.
            return;
        }
        match envelope.kind {
            EnvelopeKind::PreKey | EnvelopeKind::Message => self.on_direct(envelope),
            EnvelopeKind::Group => self.on_group_message(envelope),
            kind @ EnvelopeKind::Media => {
                self.record_seen(&envelope);
                self.undecryptable(&envelope, UndecryptableReason::UnsupportedKind { kind });
            }
        }
    }

    fn record_seen(&mut self, envelope: &Envelope) {
        self.state.inbox.record(
            &envelope.from,
            envelope.message_id,
            envelope.server_ts_ms,
            DEDUP_WINDOW_MS,
            DEDUP_ENTRIES_MAX,
        );
    }

    fn undecryptable(&mut self, envelope: &Envelope, reason: UndecryptableReason) {
        self.vol.events.push_back(AppEvent::Undecryptable {
            from: envelope.from.user.clone(),
            id: envelope.message_id,
            reason,
        });
    }

    fn on_direct(&mut self, envelope: Envelope) {
        self.record_seen(&envelope);
        self.retain_pairwise(&envelope.from);
        let State { sessions, prekeys, rng, .. } = &mut self.state;
        let opened =
            sessions.decrypt(self.config.suite, prekeys, &envelope.from, envelope.kind, &envelope.ciphertext, rng);
        let opened = match opened {
            Ok(opened) => opened,
            Err(reason) => return self.undecryptable(&envelope, reason),
        };
        self.learn_identity(&envelope.from.user, opened.identity);
        let payload = opened.payload;
        if payload.message_id != envelope.message_id {
            return self.undecryptable(&envelope, UndecryptableReason::IdMismatch { inside: payload.message_id });
        }
        let sender = envelope.from.user.clone();
        match payload.content {
            Content::Text { body } => self.surface(&envelope, None, body),
            Content::SenderKeyDistribution { group, distribution } => {
                self.on_distribution(&sender, group, &distribution)
            }
            Content::GroupInfo { group, version, admin, members } => {
                self.on_group_info(&sender, group, version, admin, members)
            }
            Content::Media { media } => self.on_media_pointer(&envelope, media),
        }
    }

    /// Shows a downloaded attachment to the app and owes its Delivered receipt.
    fn surface_media(&mut self, envelope: &Envelope, body: Vec<u8>) {
        let from = envelope.from.user.clone();
        let id = envelope.message_id;
        self.vol.events.push_back(AppEvent::Media {
            from: from.clone(),
            id,
            body,
            server_ts_ms: envelope.server_ts_ms,
        });
        self.state.inbox.add_unread(Conversation::Direct(from.clone()), from.clone(), id, UNREAD_PER_CONVERSATION_MAX);
        self.state.control.owe_receipt(from.clone(), ReceiptKind::Delivered, id);
        if self.config.bugs.has(ClientBug::ReadOnDelivery) {
            self.state.control.owe_receipt(from, ReceiptKind::Read, id);
        }
    }

    /// Shows a message to the app and owes its Delivered receipt.
    fn surface(&mut self, envelope: &Envelope, group: Option<GroupId>, body: Vec<u8>) {
        let from = envelope.from.user.clone();
        let id = envelope.message_id;
        self.vol.events.push_back(AppEvent::Message {
            from: from.clone(),
            group,
            id,
            body,
            server_ts_ms: envelope.server_ts_ms,
        });
        let conversation = match group {
            Some(g) => Conversation::Group(g),
            None => Conversation::Direct(from.clone()),
        };
        self.state.inbox.add_unread(conversation, from.clone(), id, UNREAD_PER_CONVERSATION_MAX);
        self.state.control.owe_receipt(from.clone(), ReceiptKind::Delivered, id);
        if self.config.bugs.has(ClientBug::ReadOnDelivery) {
            self.state.control.owe_receipt(from, ReceiptKind::Read, id);
        }
    }

    /// Opens a group envelope: `Ok(None)` when the sender's key (or this key
    /// id) has not arrived yet and the message must be held.
    fn open_group(&mut self, envelope: &Envelope) -> Result<Option<Payload>, UndecryptableReason> {
        let malformed = |detail: String| UndecryptableReason::Malformed { detail };
        let group = envelope.group.ok_or_else(|| malformed("group envelope without a group".into()))?;
        let message = GroupMessage::from_bytes(&envelope.ciphertext)
            .map_err(|e| UndecryptableReason::SenderKey { detail: e.to_string() })?;
        if message.group_id.0 != group.0 {
            return Err(malformed(format!(
                "sender-key message for {:?} in an envelope for {group:?}",
                message.group_id
            )));
        }
        self.retain_group(group, &envelope.from.user);
        let key = (group, envelope.from.user.clone());
        let groups = &mut self.state.groups;
        let in_late = groups.late_records.get(&key).is_some_and(|r| r.key_ids().contains(&message.key_id));
        let record = if in_late { groups.late_records.get_mut(&key) } else { groups.records.get_mut(&key) };
        let Some(record) = record else {
            return Ok(None);
        };
        match record.decrypt(&message) {
            Ok(plaintext) => Payload::decode(&plaintext).map(Some).map_err(|e| malformed(e.to_string())),
            Err(SenderKeyError::UnknownKeyId { .. }) => Ok(None),
            Err(e) => Err(UndecryptableReason::SenderKey { detail: e.to_string() }),
        }
    }

    fn on_group_message(&mut self, envelope: Envelope) {
        // Remembered now even when held: the hold is persisted and acked, so
        // a redelivery must not be held a second time.
        self.record_seen(&envelope);
        match self.open_group(&envelope) {
            Ok(Some(payload)) => self.finish_group_message(&envelope, payload),
            Ok(None) => {
                if let Some(dropped) = self.state.inbox.hold(envelope, HELD_GROUP_MESSAGES_MAX) {
                    self.undecryptable(&dropped, UndecryptableReason::SenderKeyMissing);
                }
            }
            Err(reason) => self.undecryptable(&envelope, reason),
        }
    }

    fn finish_group_message(&mut self, envelope: &Envelope, payload: Payload) {
        if payload.message_id != envelope.message_id {
            return self.undecryptable(envelope, UndecryptableReason::IdMismatch { inside: payload.message_id });
        }
        match payload.content {
            Content::Text { body } => self.surface(envelope, envelope.group, body),
            _ => self.undecryptable(envelope, UndecryptableReason::UnexpectedContent),
        }
    }

    fn on_distribution(&mut self, sender: &UserId, group: GroupId, distribution: &SenderKeyDistribution) {
        if distribution.group_id.0 != group.0 {
            return;
        }
        let key = (group, sender.clone());
        let groups = &mut self.state.groups;
        let late = groups.records.get(&key).is_some_and(|r| superseded(&r.key_ids(), distribution.key_id));
        let full = if late { groups.late_records.len() } else { groups.records.len() } >= SENDER_KEY_RECORDS_MAX;
        let has = if late { groups.late_records.contains_key(&key) } else { groups.records.contains_key(&key) };
        if full && !has && !groups.make_room(late) {
            return;
        }
        let records = if late { &mut groups.late_records } else { &mut groups.records };
        match records.get_mut(&key) {
            Some(record) => {
                if record.add_distribution(distribution).is_err() {
                    return;
                }
            }
            None => match SenderKeyRecord::from_distribution(self.config.suite, distribution) {
                Ok(record) => {
                    records.insert(key, record);
                }
                Err(_) => return,
            },
        }
        self.touch();
        let mut still_held = Vec::new();
        for envelope in self.state.inbox.take_held(&group, sender) {
            match self.open_group(&envelope) {
                Ok(Some(payload)) => self.finish_group_message(&envelope, payload),
                Ok(None) => still_held.push(envelope),
                Err(reason) => self.undecryptable(&envelope, reason),
            }
        }
        self.state.inbox.unhold_front(still_held);
    }

    // ----- groups -----

    fn sign_change(
        &mut self,
        group: GroupId,
        version: u64,
        add: Vec<UserId>,
        remove: Vec<UserId>,
    ) -> SignedGroupChange {
        let admin = self.config.user.clone();
        let mut change = SignedGroupChange { group, version, admin, add, remove, signature: Signature([0; 64]) };
        change.signature =
            self.config.suite.sign(self.state.prekeys.identity(), &change.signed_bytes(), &mut self.state.rng);
        change
    }

    fn on_group_change(&mut self, change: SignedGroupChange) {
        let group = change.group;
        if self.consider_change(change) {
            self.apply_held_successors(group);
        }
    }

    /// Applies, holds or rejects one change; true if it was applied.
    fn consider_change(&mut self, change: SignedGroupChange) -> bool {
        let admin_key = self.state.sessions.identity(&change.admin);
        match self.state.groups.check(self.config.suite, &change, &self.config.user, admin_key) {
            Verdict::Apply => {
                self.apply_change(&change);
                return true;
            }
            Verdict::Stale => {}
            // Trust on first use: the admin's key comes from its bundle
            // (fetched by the next flush) or from a session with it.
            Verdict::NeedAdminKey => self.hold_change(change),
            // A later change overtook the one before it: the server hands a
            // mailbox out in order, but a redelivery (after a lost frame) may
            // arrive after what followed it (protocol 6.2). It waits for the
            // gap to close; rejecting it (it was acked) froze our view of the
            // group for good. A gap that never closes (changes made while we
            // were out of the group) is closed by the admin's GroupInfo.
            Verdict::Reject(GroupChangeRejection::VersionGap { current, got }) if got > current => {
                self.hold_change(change);
            }
            Verdict::Reject(reason) => self.reject_change(&change, reason),
        }
        false
    }

    fn hold_change(&mut self, change: SignedGroupChange) {
        self.touch();
        if let Some(dropped) = self.state.groups.hold(change) {
            let reason = match self.state.groups.groups.get(&dropped.group) {
                Some(g) if self.state.sessions.identity(&dropped.admin).is_some() => {
                    GroupChangeRejection::VersionGap { current: g.version, got: dropped.version }
                }
                _ => GroupChangeRejection::AdminKeyUnknown,
            };
            self.reject_change(&dropped, reason);
        }
    }

    /// After `group` moved on, the held changes that now follow, in version
    /// order (one pass suffices: each applied one makes the next applicable).
    fn apply_held_successors(&mut self, group: GroupId) {
        let held = self.state.groups.take_held_of_group(&group);
        if held.is_empty() {
            return;
        }
        self.touch();
        for change in held {
            self.consider_change(change);
        }
    }

    fn reject_change(&mut self, change: &SignedGroupChange, reason: GroupChangeRejection) {
        self.vol.events.push_back(AppEvent::GroupChangeRejected {
            group: change.group,
            version: change.version,
            reason,
        });
    }

    /// Applies a verified change (or our own) and its consequences.
    fn apply_change(&mut self, change: &SignedGroupChange) {
        let me = self.config.user.clone();
        let applied = self.state.groups.apply(change, &me);
        self.touch();
        self.after_membership_change(change.group, &applied);
        if change.admin == me && change.version > 1 && !applied.added.is_empty() {
            // Newcomers learn the whole membership from us, pairwise.
            if let Some(g) = self.state.groups.groups.get(&change.group) {
                let info = Content::GroupInfo {
                    group: change.group,
                    version: g.version,
                    admin: me.clone(),
                    members: g.members.iter().cloned().collect(),
                };
                for member in applied.added.iter().filter(|u| **u != me) {
                    let id = MessageId::random(&mut self.state.rng);
                    // A full outbox leaves the newcomer partial until the next change.
                    let _ = self.push_outbox(id, Target::Direct(member.clone()), None, info.clone());
                }
            }
        }
        self.vol.events.push_back(AppEvent::GroupUpdated { group: change.group, version: change.version });
    }

    /// Rotation and clean-up after members left (by a change or a GroupInfo).
    fn after_membership_change(&mut self, group: GroupId, applied: &Applied) {
        if applied.removed.is_empty() {
            return;
        }
        // Distributions of our key still queued for the removed members stay
        // queued: the key they carry is retired just below, and every message
        // sealed under it was sealed while they were members, so the server
        // may already have handed them those messages, held until the key
        // comes. Dropping them left such a message unreadable for good, with
        // nobody told. Nothing sealed after the rotation opens with it.
        if applied.we_left || self.config.bugs.has(ClientBug::NoRotationOnRemove) {
            return;
        }
        let State { groups, rng, .. } = &mut self.state;
        if let Some(g) = groups.groups.get_mut(&group) {
            if let Some(own) = g.own_key.as_mut() {
                // The removed members hold the old chain key: only a new,
                // undisclosed key keeps later messages from them.
                own.rotate(rng);
            }
            g.distributed_to.clear();
        }
    }

    fn on_group_info(&mut self, sender: &UserId, group: GroupId, version: u64, admin: UserId, members: Vec<UserId>) {
        let me = self.config.user.clone();
        let members: BTreeSet<UserId> = members.into_iter().collect();
        if admin != *sender || !members.contains(&me) || !members.contains(sender) {
            return;
        }
        if members.len() > GROUP_MEMBERS_MAX {
            let reason = GroupChangeRejection::TooManyMembers { members: members.len(), max: GROUP_MEMBERS_MAX };
            self.vol.events.push_back(AppEvent::GroupChangeRejected { group, version, reason });
            return;
        }
        let applied = match self.state.groups.groups.get_mut(&group) {
            Some(g) => {
                if g.admin != *sender {
                    let reason = GroupChangeRejection::NotAdmin { admin: g.admin.clone(), signer: sender.clone() };
                    self.vol.events.push_back(AppEvent::GroupChangeRejected { group, version, reason });
                    return;
                }
                if version < g.version || (version == g.version && !g.partial) {
                    return;
                }
                let removed: Vec<UserId> = g.members.difference(&members).cloned().collect();
                g.members = members;
                g.version = version;
                g.partial = false;
                for u in &removed {
                    g.distributed_to.remove(u);
                }
                Applied { added: Vec::new(), removed, we_left: false }
            }
            None => {
                let state = GroupState {
                    version,
                    admin,
                    members,
                    partial: false,
                    own_key: None,
                    distributed_to: BTreeSet::new(),
                };
                self.state.groups.groups.insert(group, state);
                Applied::default()
            }
        };
        self.touch();
        self.after_membership_change(group, &applied);
        self.vol.events.push_back(AppEvent::GroupUpdated { group, version });
        self.apply_held_successors(group);
    }
}

/// Whether `key_id` is older than the newest of `held` (ids newest first) and
/// not one of them. A sender's key ids count up by one per rotation (see
/// `OwnSenderKey::rotate`), so the wrapping distance tells their order.
fn superseded(held: &[u32], key_id: u32) -> bool {
    let Some(newest) = held.first() else { return false };
    let behind = newest.wrapping_sub(key_id);
    behind != 0 && behind < 1 << 31 && !held.contains(&key_id)
}
