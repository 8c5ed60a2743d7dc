//! The invariant oracle: a record of what the apps did and saw, and the checks
//! run against it after every step and at the end of a run.
//!
//! Safety checks (after every step): no app sees a message twice; a sender's
//! status for a message never goes back and is never ahead of the truth
//! (delivered only once the recipient's app has it, read only once the
//! recipient read it); no plaintext in the server's store; each one-time
//! prekey handed out at most once. Liveness checks (at the end, after the
//! faults stop and everyone is online): every message the server accepted
//! reached every intended app or was reported expired, and every mailbox is
//! empty.
//!
//! The [`World`](super::World) adds checks that need its view of the run:
//! targeted faults, groups over time (`removed-member-cannot-read`), presence
//! (`presence-privacy`, `presence-throttle`, `presence-converges`), forward
//! secrecy after a compromise, retention, and the server's hand-out order
//! (`per-conversation-order`). Their state lives here, in [`History`], so a
//! report can print it; [`super::checks`] holds the logic.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use sha2::{Digest, Sha256};

use super::faults::FrameFault;
use crate::client::DeliveryState;
use crate::ids::{DeviceAddress, GroupId, MessageId, UserId};
use crate::server::presence::coarsen;
use crate::wire::{LastSeen, Visibility};

/// One broken invariant, with what is needed to understand it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Violation {
    /// The invariant's stable name.
    pub invariant: &'static str,
    /// Simulated time when it was seen.
    pub at_ms: u64,
    /// What happened, in words.
    pub detail: String,
}

/// Stable names of the invariants, as reports and tests refer to them.
pub mod names {
    /// No app sees the same message twice.
    pub const EXACTLY_ONCE: &str = "exactly-once";
    /// Every server-acked message reaches every intended app, readable, or is
    /// reported expired.
    pub const AT_LEAST_ONCE: &str = "at-least-once";
    /// A sender's status per recipient never goes back.
    pub const STATUS_MONOTONE: &str = "status-monotone";
    /// Delivered/read are never claimed before they are true.
    pub const STATUS_TRUTHFUL: &str = "status-truthful";
    /// The server's store never holds a plaintext.
    pub const NO_PLAINTEXT: &str = "no-plaintext-on-server";
    /// Each one-time prekey is handed out at most once.
    pub const PREKEY_ONCE: &str = "one-time-prekey-once";
    /// After quiet, every mailbox is empty.
    pub const MAILBOXES_EMPTY: &str = "mailboxes-empty";
    /// The server hands out each mailbox's items for the first time in `seq`
    /// (acceptance) order, so per sender and recipient the first delivery
    /// follows the send order (protocol 6.2).
    pub const ORDER: &str = "per-conversation-order";
    /// Nothing stays in a mailbox after its device acked it, nor past its TTL.
    pub const RETENTION: &str = "retention";
    /// A member outside the sender's view of a group when it encrypted a group
    /// message (removed, or not yet added) never reads it: its app is never
    /// shown it, and its key material as of its removal does not decrypt it.
    pub const REMOVED_MEMBER_CANNOT_READ: &str = "removed-member-cannot-read";
    /// No subscriber the owner's privacy setting excludes is shown anything
    /// but `LongAgo`, nor pushed a change caused by the owner's activity.
    pub const PRESENCE_PRIVACY: &str = "presence-privacy";
    /// At most one push per (subscriber, followed user) per throttle interval.
    pub const PRESENCE_THROTTLE: &str = "presence-throttle";
    /// Once nothing changes, each subscriber's last shown presence of each
    /// followed user is the truth (what the owner's setting lets it see).
    pub const PRESENCE_CONVERGES: &str = "presence-converges";
    /// A stolen device state opens no ciphertext the device had already
    /// received and decrypted.
    pub const FORWARD_SECRECY: &str = "forward-secrecy";
}

/// A message as the sending app asked for it.
#[derive(Debug, Clone)]
pub struct SentMessage {
    /// The sending user.
    pub from: UserId,
    /// Intended recipients (one for 1:1, the other members for a group).
    pub to: BTreeSet<UserId>,
    /// What the oracle keeps of the plaintext.
    pub body: SentBody,
}

impl SentMessage {
    /// The record of `body` sent by `from` to `to`.
    pub fn new(from: UserId, to: BTreeSet<UserId>, body: &[u8]) -> Self {
        SentMessage { from, to, body: SentBody::of(body) }
    }
}

/// A sent plaintext as the checks need it: its first
/// [`PLAINTEXT_NEEDLE_LEN`] bytes to search the server's store for, and a
/// digest of the whole to compare what an app is shown with. Keeping whole
/// bodies made them the largest part of a long run's memory (1 KiB per
/// message, never freed: a message may be checked until the run ends).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentBody {
    needle: Vec<u8>,
    digest: [u8; 32],
}

impl SentBody {
    /// The record of `body`.
    pub fn of(body: &[u8]) -> Self {
        SentBody { needle: needle_of(body).to_vec(), digest: Sha256::digest(body).into() }
    }

    /// Whether `body` is the plaintext this was made from (a SHA-256
    /// collision aside).
    pub fn matches(&self, body: &[u8]) -> bool {
        body.starts_with(&self.needle) && <[u8; 32]>::from(Sha256::digest(body)) == self.digest
    }

    /// The bytes searched for in what the server holds.
    pub fn needle(&self) -> &[u8] {
        &self.needle
    }

    /// SHA-256 of the whole plaintext.
    pub fn digest(&self) -> [u8; 32] {
        self.digest
    }
}

/// What happened, as seen from the apps and the wire.
#[derive(Debug, Default)]
pub struct History {
    /// Every message an app asked to send. Add to it with
    /// [`History::record_sent`], which also indexes the body for
    /// [`History::find_plaintext`].
    pub sent: BTreeMap<MessageId, SentMessage>,
    /// First [`NEEDLE_KEY_LEN`] bytes of each searchable body → the messages
    /// whose body starts so. Scanning a value then costs one lookup per byte
    /// instead of one comparison per message ever sent (quadratic in a long
    /// run: 94% of a 1,000-user benchmark's time went there).
    needles: BTreeMap<[u8; NEEDLE_KEY_LEN], BTreeSet<MessageId>>,
    /// One bit per 3-byte prefix of the keys of `needles`: almost every
    /// window of a ciphertext misses it, so the map lookup is rarely paid.
    needle_prefixes: Vec<u64>,
    /// Messages the server acknowledged (the sender saw `Sent` or later).
    pub server_acked: BTreeSet<MessageId>,
    /// (receiving user, message) → times the app was shown it.
    pub received: BTreeMap<(UserId, MessageId), u32>,
    /// Every message shown to an app, in the order apps were shown them.
    pub received_order: Vec<(UserId, MessageId)>,
    /// (reader, message) pairs the reader's app has read.
    pub read: BTreeSet<(UserId, MessageId)>,
    /// (sender, message, recipient) → last status the sender's app was shown.
    pub status: BTreeMap<(MessageId, UserId), DeliveryState>,
    /// (message, recipient) reported expired to the sender.
    pub expired: BTreeSet<(MessageId, UserId)>,
    /// (owner, one-time prekey id) handed out by the server.
    pub prekeys_handed_out: BTreeSet<(DeviceAddress, u32)>,
    /// (user, message) the app was shown with its content (decrypted), as
    /// opposed to reported undecryptable.
    pub decrypted: BTreeSet<(UserId, MessageId)>,
    /// Attachments among [`History::sent`].
    pub media: BTreeSet<MessageId>,
    /// Groups as their admins made them.
    pub groups: BTreeMap<GroupId, GroupTruth>,
    /// Group messages as first transmitted (sealed) by their senders.
    pub group_sends: BTreeMap<MessageId, GroupSend>,
    /// Presence as the oracle tracks it.
    pub presence: PresenceTruth,
    /// Compromises: (user, time, ciphertexts tried).
    pub compromised: Vec<(UserId, u64, u64)>,
    /// Counters for reports.
    pub counts: Counts,
}

/// A group's membership per version, as its admin signed it.
#[derive(Debug, Clone, Default)]
pub struct GroupTruth {
    /// The admin.
    pub admin: Option<UserId>,
    /// Members (admin included) after each version.
    pub versions: BTreeMap<u64, BTreeSet<UserId>>,
    /// (user, time) of every removal.
    pub removals: Vec<(UserId, u64)>,
}

impl GroupTruth {
    /// Members of the latest version.
    pub fn members(&self) -> BTreeSet<UserId> {
        self.versions.values().next_back().cloned().unwrap_or_default()
    }
}

/// A group message as its sender first transmitted it.
#[derive(Debug, Clone)]
pub struct GroupSend {
    /// The group.
    pub group: GroupId,
    /// The sender.
    pub from: UserId,
    /// The members the sender believed in when it encrypted (itself included).
    pub view: BTreeSet<UserId>,
    /// The sender-key ciphertext.
    pub ciphertext: Vec<u8>,
    /// When it was first transmitted.
    pub sealed_at_ms: u64,
}

/// Presence as the oracle sees it: the truth, what the server sent, what the
/// apps were shown.
#[derive(Debug, Clone, Default)]
pub struct PresenceTruth {
    /// Users the server counts online (between its `Welcome` and the
    /// connection's end), with when that last changed.
    pub online: BTreeMap<UserId, bool>,
    /// When each user last came online or went offline.
    pub last_seen_ms: BTreeMap<UserId, u64>,
    /// Privacy settings as the server applied them (the frame reached it).
    pub settings: BTreeMap<UserId, (Visibility, BTreeSet<UserId>)>,
    /// When each user's online state last changed.
    pub changed_at_ms: BTreeMap<UserId, u64>,
    /// When each user's setting last reached the server.
    pub setting_changed_at_ms: BTreeMap<UserId, u64>,
    /// When each subscriber's app last changed its subscription list.
    pub subscribed_at_ms: BTreeMap<UserId, u64>,
    /// (subscriber, user) → when the server last sent a push or a subscribe reply.
    pub last_sent_ms: BTreeMap<(UserId, UserId), u64>,
    /// (subscriber, user) → the last presence shown to the subscriber's app.
    pub shown: BTreeMap<(UserId, UserId), LastSeen>,
    /// (subscriber, user) pairs with a push lost, duplicated or delayed by a
    /// fault since the last subscribe reply: their app may lag the truth.
    pub excused: BTreeSet<(UserId, UserId)>,
}

impl PresenceTruth {
    /// Whether `owner`'s applied setting lets `viewer` see it.
    pub fn permits(&self, owner: &UserId, viewer: &UserId) -> bool {
        match self.settings.get(owner) {
            None => true,
            Some((Visibility::Everyone, _)) => true,
            Some((Visibility::Contacts, contacts)) => contacts.contains(viewer),
            Some((Visibility::Nobody, _)) => false,
        }
    }

    /// What `viewer` should see of `owner` at `now_ms`.
    pub fn view(&self, owner: &UserId, viewer: &UserId, now_ms: u64) -> LastSeen {
        if !self.permits(owner, viewer) {
            return LastSeen::LongAgo;
        }
        let online = self.online.get(owner).copied().unwrap_or(false);
        coarsen(online, self.last_seen_ms.get(owner).copied(), now_ms)
    }
}

/// How often one targeted [`FrameFault`] rule fired.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct FrameFaultCount {
    /// The rule.
    pub rule: FrameFault,
    /// Frames it matched.
    pub matched: u64,
    /// Frames it dropped.
    pub dropped: u64,
    /// Frames it duplicated.
    pub duplicated: u64,
    /// Frames it delayed.
    pub delayed: u64,
}

impl FrameFaultCount {
    /// Whether the rule did anything at all (the "sometimes" guard).
    pub fn fired(&self) -> bool {
        self.dropped + self.duplicated + self.delayed > 0
    }
}

/// Numbers a report prints next to the verdicts ("sometimes" guards: a
/// scenario that declares a fault should see it fire).
#[derive(Debug, Default, Clone, Serialize, PartialEq, Eq)]
pub struct Counts {
    /// Frames dropped by the network.
    pub frames_dropped: u64,
    /// Frames duplicated by the network.
    pub frames_duplicated: u64,
    /// Frames delivered.
    pub frames_delivered: u64,
    /// Client crashes.
    pub client_crashes: u64,
    /// Server crashes.
    pub server_crashes: u64,
    /// Envelopes a client received that its app had already seen (deduplicated).
    pub duplicates_suppressed: u64,
    /// Messages shown to apps.
    pub app_deliveries: u64,
    /// Frames lost on a partitioned link.
    pub frames_partitioned: u64,
    /// Frames delayed by a targeted rule.
    pub frames_delayed: u64,
    /// Each targeted rule ever added, in order, with what it did.
    pub frame_faults: Vec<FrameFaultCount>,
    /// Items the server handed out again (same mailbox `seq`).
    pub redeliveries: u64,
    /// Partitions started.
    pub partitions: u64,
    /// Connections dropped because their link stayed cut.
    pub partition_timeouts: u64,
    /// Device states taken by the adversary.
    pub compromises: u64,
    /// Recorded ciphertexts the adversary tried against a stolen state.
    pub adversary_attempts: u64,
    /// Group membership changes made by admins.
    pub group_changes: u64,
    /// Group ciphertexts tried against a removed member's key material.
    pub removed_member_attempts: u64,
    /// Presence frames shown to apps.
    pub presence_shown: u64,
    /// Presence pushes (not subscribe replies) sent by the server.
    pub presence_pushes: u64,
    /// (subscriber, user) pairs judged by a presence convergence check.
    pub presence_pairs_checked: u64,
    /// Pairs skipped because a push to them was lost or still settling.
    pub presence_pairs_excused: u64,
    /// Attachments shown to apps.
    pub media_deliveries: u64,
    /// Expiry notices shown to senders (per message and recipient).
    pub expiries_reported: u64,
}

impl History {
    /// Records that `user`'s app was shown `id`; returns a violation if it
    /// had been shown it before. `body` is `None` when the app was told the message could not be read.
    pub fn app_received(&mut self, user: &UserId, id: MessageId, body: Option<&[u8]>, at_ms: u64) -> Vec<Violation> {
        let mut out = Vec::new();
        let n = self.received.entry((user.clone(), id)).or_default();
        *n += 1;
        if body.is_some() {
            self.received_order.push((user.clone(), id));
            self.decrypted.insert((user.clone(), id));
        }
        self.counts.app_deliveries += 1;
        if *n > 1 {
            out.push(Violation {
                invariant: names::EXACTLY_ONCE,
                at_ms,
                detail: format!("{user:?} was shown {id:?} {n} times"),
            });
        }
        if let (Some(sent), Some(body)) = (self.sent.get(&id), body) {
            if !sent.body.matches(body) {
                out.push(Violation {
                    invariant: names::EXACTLY_ONCE,
                    at_ms,
                    detail: format!("{user:?} was shown {id:?} with a body other than the one sent"),
                });
            }
        }
        out
    }

    /// Records a status the sender's app was shown and checks it.
    pub fn status_shown(&mut self, id: MessageId, peer: &UserId, state: DeliveryState, at_ms: u64) -> Vec<Violation> {
        let mut out = Vec::new();
        let key = (id, peer.clone());
        if let Some(prev) = self.status.get(&key) {
            if prev.advance(state) != state && *prev != state {
                out.push(Violation {
                    invariant: names::STATUS_MONOTONE,
                    at_ms,
                    detail: format!("{id:?} to {peer:?} went from {prev:?} back to {state:?}"),
                });
            }
        }
        self.status.insert(key, state);
        if state >= DeliveryState::Sent && state != DeliveryState::Expired {
            self.server_acked.insert(id);
        }
        let received = self.received.contains_key(&(peer.clone(), id));
        let read = self.read.contains(&(peer.clone(), id));
        let untrue = match state {
            DeliveryState::Delivered => !received,
            DeliveryState::Read => !read,
            _ => false,
        };
        if untrue {
            out.push(Violation {
                invariant: names::STATUS_TRUTHFUL,
                at_ms,
                detail: format!("{id:?} shown as {state:?} for {peer:?}, but {peer:?}'s app has not got there"),
            });
        }
        if state == DeliveryState::Expired && self.expired.insert((id, peer.clone())) {
            self.counts.expiries_reported += 1;
        }
        out
    }

    /// Records a one-time prekey hand-out and checks it is the first.
    pub fn prekey_handed_out(&mut self, owner: &DeviceAddress, id: u32, at_ms: u64) -> Vec<Violation> {
        if self.prekeys_handed_out.insert((owner.clone(), id)) {
            Vec::new()
        } else {
            vec![Violation {
                invariant: names::PREKEY_ONCE,
                at_ms,
                detail: format!("one-time prekey {id} of {owner:?} handed out a second time"),
            }]
        }
    }

    /// End-of-run liveness: every accepted message reached every intended
    /// app and decrypted there, or its sender was told it expired.
    pub fn check_at_least_once(&self, at_ms: u64) -> Vec<Violation> {
        let mut out = Vec::new();
        for id in &self.server_acked {
            let Some(m) = self.sent.get(id) else { continue };
            for to in &m.to {
                let key = (to.clone(), *id);
                // An "undecryptable" notice tells the app something came, not
                // what: the content is lost all the same (a server that handed
                // out a damaged ciphertext would otherwise pass).
                let read = self.decrypted.contains(&key);
                let expired = self.expired.contains(&(*id, to.clone()));
                if read || expired {
                    continue;
                }
                let detail = if self.received.contains_key(&key) {
                    format!(
                        "{id:?} from {:?} was accepted by the server but reached {to:?}'s app only as undecryptable",
                        m.from
                    )
                } else {
                    format!("{id:?} from {:?} was accepted by the server but never reached {to:?}'s app", m.from)
                };
                out.push(Violation { invariant: names::AT_LEAST_ONCE, at_ms, detail });
            }
        }
        out
    }

    /// Searches `haystack` for any sent plaintext (text or attachment): the
    /// whole body, or its first [`PLAINTEXT_NEEDLE_LEN`] bytes for a longer one.
    pub fn find_plaintext<'a>(&'a self, haystack: &[u8]) -> Option<&'a MessageId> {
        let mut found: Option<&MessageId> = None;
        for (at, window) in haystack.windows(NEEDLE_KEY_LEN).enumerate() {
            if !bit(&self.needle_prefixes, prefix_index(window)) {
                continue;
            }
            let Ok(key) = <[u8; NEEDLE_KEY_LEN]>::try_from(window) else { continue };
            let Some(ids) = self.needles.get(&key) else { continue };
            for id in ids {
                let Some(m) = self.sent.get(id) else { continue };
                if haystack[at..].starts_with(m.body.needle()) && found.is_none_or(|f| id < f) {
                    found = Some(id);
                }
            }
        }
        // The lowest id, not the first position, so the answer does not
        // depend on where in the value a leak sits.
        found
    }

    /// Records that an app asked to send `message` as `id`.
    pub fn record_sent(&mut self, id: MessageId, message: SentMessage) {
        let needle = message.body.needle();
        if let Ok(key) = <[u8; NEEDLE_KEY_LEN]>::try_from(&needle[..needle.len().min(NEEDLE_KEY_LEN)]) {
            if self.needle_prefixes.is_empty() {
                self.needle_prefixes = vec![0; PREFIX_BITS / 64];
            }
            let i = prefix_index(&key);
            if let Some(word) = self.needle_prefixes.get_mut(i / 64) {
                *word |= 1 << (i % 64);
            }
            self.needles.entry(key).or_default().insert(id);
        }
        self.sent.insert(id, message);
    }
}

/// 2^24 bits (2 MiB): with 100,000 bodies fewer than 1% of the bits are set.
const PREFIX_BITS: usize = 1 << 24;

fn prefix_index(window: &[u8]) -> usize {
    match window {
        [a, b, c, ..] => (usize::from(*a) << 16) | (usize::from(*b) << 8) | usize::from(*c),
        _ => 0,
    }
}

fn bit(bits: &[u64], i: usize) -> bool {
    bits.get(i / 64).is_some_and(|w| w & (1 << (i % 64)) != 0)
}

/// The bytes of a body searched for in what the server holds.
fn needle_of(body: &[u8]) -> &[u8] {
    &body[..body.len().min(PLAINTEXT_NEEDLE_LEN)]
}

/// Bodies shorter than this are not searched for: a few bytes can occur by
/// chance in ciphertext.
pub const NEEDLE_KEY_LEN: usize = 8;

/// Bytes of a long plaintext searched for: 64 random-looking bytes cannot
/// occur by chance in ciphertext, and a whole attachment as the needle would
/// make every scan as slow as the attachment is long.
pub const PLAINTEXT_NEEDLE_LEN: usize = 64;

#[cfg(test)]
mod tests {
    use super::*;

    fn sent(h: &mut History, n: u8, body: &[u8]) {
        let from = UserId::new("alice").unwrap();
        h.record_sent(MessageId([n; 16]), SentMessage::new(from, BTreeSet::new(), body));
    }

    #[test]
    fn a_sent_body_matches_only_its_own_plaintext() {
        let long: Vec<u8> = (0..200u8).collect();
        let b = SentBody::of(&long);
        assert!(b.matches(&long));
        assert_eq!(b.needle(), &long[..PLAINTEXT_NEEDLE_LEN]);
        // Same first 64 bytes, different tail; one byte short; one extra.
        let mut tail = long.clone();
        tail[150] ^= 1;
        assert!(!b.matches(&tail));
        assert!(!b.matches(&long[..199]));
        assert!(!b.matches(&[&long[..], &[0u8][..]].concat()));
        let short = SentBody::of(b"hi");
        assert!(short.matches(b"hi") && !short.matches(b"ho") && !short.matches(b"hi!"));
    }

    #[test]
    fn plaintext_is_found_anywhere_in_a_value_and_the_lowest_id_wins() {
        let mut h = History::default();
        let long: Vec<u8> = (0..200u8).collect();
        sent(&mut h, 9, &long);
        sent(&mut h, 3, b"hello bob, it is alice");
        sent(&mut h, 5, b"short");
        let noise = [0xA5u8; 40];
        assert_eq!(h.find_plaintext(&noise), None);
        // A long body is searched by its first PLAINTEXT_NEEDLE_LEN bytes.
        let leak = [&noise[..], &long[..PLAINTEXT_NEEDLE_LEN], &noise[..]].concat();
        assert_eq!(h.find_plaintext(&leak), Some(&MessageId([9; 16])));
        // Two plaintexts in one value: the lower id is reported wherever it sits.
        let both = [&long[..], b"hello bob, it is alice"].concat();
        assert_eq!(h.find_plaintext(&both), Some(&MessageId([3; 16])));
        // Bodies under 8 bytes are never searched (chance matches in ciphertext).
        assert_eq!(h.find_plaintext(b"xxshortxx"), None);
        // A prefix of the needle alone is not a leak.
        assert_eq!(h.find_plaintext(b"hello bob, it is"), None);
    }
}
