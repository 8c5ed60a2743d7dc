//! The receiving side's memory: which deliveries were already processed
//! (deduplication), which surfaced messages are still unread, and group
//! messages held until their sender key arrives.
//!
//! # Deduplication
//! Delivery is at least once: a lost delivery-ack, a sender's retry after a
//! lost server-ack, or a crash all bring a message back. The key is
//! (sender device, message id), remembered for [`DEDUP_WINDOW_MS`] of server
//! time: a redelivery always carries a server timestamp within the server's
//! retention of the first, so nothing older can come back. The set is ordered
//! by server timestamp and the oldest entries go first, beyond the window or
//! beyond [`DEDUP_ENTRIES_MAX`].

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use serde::{Deserialize, Serialize};

use super::journal::{Journaled, Table};
use crate::ids::{DeviceAddress, GroupId, MessageId, UserId};
use crate::wire::Envelope;

/// How long a processed message id is remembered, in ms of server time: 30
/// days, the longest a server keeps an undelivered message, so any redelivery
/// or retry of it still finds the id.
pub const DEDUP_WINDOW_MS: u64 = 30 * 24 * 60 * 60 * 1000;

/// Most remembered ids whatever their age: 30 days at 2,000 messages a day
/// with margin. Beyond it the oldest are forgotten, which can only let a
/// very old retry through, never drop a new message.
pub const DEDUP_ENTRIES_MAX: usize = 65_536;

/// Most unread messages remembered per conversation for read receipts; the
/// oldest are forgotten first (their sender then sees two grey ticks, not blue).
pub const UNREAD_PER_CONVERSATION_MAX: usize = 4_096;

/// Most group messages held while their sender key is missing. A
/// distribution travels pairwise and may arrive a little after the group
/// message; 256 covers a burst from many senders, and bounds what a sender
/// who never distributes can make us store.
pub const HELD_GROUP_MESSAGES_MAX: usize = 256;

/// A conversation as the app sees it, for read receipts.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Conversation {
    /// A 1:1 chat with this user.
    Direct(UserId),
    /// A group chat.
    Group(GroupId),
}

/// Dedup set, unread lists and held group messages.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct Inbox {
    /// (sender, id) → server timestamp.
    seen: Table<(DeviceAddress, MessageId), u64>,
    /// `seen` ordered by timestamp, for eviction; rebuilt after a restore.
    #[serde(skip)]
    by_ts: BTreeSet<(u64, DeviceAddress, MessageId)>,
    /// (conversation, arrival number) → (sender, id): each conversation's
    /// unread messages in arrival order.
    unread: Table<(Conversation, u64), (UserId, MessageId)>,
    next_unread: u64,
    /// How many `unread` holds per conversation; rebuilt after a restore.
    #[serde(skip)]
    unread_len: BTreeMap<Conversation, usize>,
    held: VecDeque<Envelope>,
}

impl Inbox {
    /// Whether a delivery with this key was processed (within the window).
    pub fn seen(&self, from: &DeviceAddress, id: &MessageId) -> bool {
        self.seen.contains_key(&(from.clone(), *id))
    }

    /// Number of remembered ids.
    #[cfg(test)]
    pub fn seen_len(&self) -> usize {
        self.seen.len()
    }

    /// Remembers a processed delivery, then forgets entries older than
    /// `window_ms` before the newest timestamp and the oldest beyond `max`.
    pub fn record(&mut self, from: &DeviceAddress, id: MessageId, server_ts_ms: u64, window_ms: u64, max: usize) {
        let key = (from.clone(), id);
        if let Some(old) = self.seen.insert(key, server_ts_ms) {
            self.by_ts.remove(&(old, from.clone(), id));
        }
        self.by_ts.insert((server_ts_ms, from.clone(), id));
        let newest = self.by_ts.last().map_or(0, |(ts, _, _)| *ts);
        let cutoff = newest.saturating_sub(window_ms);
        while let Some((ts, from, id)) = self.by_ts.first().cloned() {
            if ts >= cutoff && self.by_ts.len() <= max {
                break;
            }
            self.by_ts.pop_first();
            self.seen.remove(&(from, id));
        }
    }

    /// Adds a surfaced message to its conversation's unread list.
    pub fn add_unread(&mut self, conversation: Conversation, sender: UserId, id: MessageId, max: usize) {
        self.unread.insert((conversation.clone(), self.next_unread), (sender, id));
        self.next_unread += 1;
        let len = self.unread_len.entry(conversation.clone()).or_default();
        *len += 1;
        while *len > max {
            let Some(oldest) = self.unread.range((conversation.clone(), 0)..).next().map(|(k, _)| k.clone()) else {
                break;
            };
            self.unread.remove(&oldest);
            *len -= 1;
        }
    }

    /// Takes every unread message of a conversation (the app opened it).
    pub fn take_unread(&mut self, conversation: &Conversation) -> Vec<(UserId, MessageId)> {
        let keys: Vec<(Conversation, u64)> = self
            .unread
            .range((conversation.clone(), 0)..=(conversation.clone(), u64::MAX))
            .map(|(k, _)| k.clone())
            .collect();
        self.unread_len.remove(conversation);
        keys.iter().filter_map(|k| self.unread.remove(k)).collect()
    }

    /// Rebuilds the indexes a save leaves out.
    pub fn rebuild(&mut self) {
        self.by_ts = self.seen.iter().map(|((from, id), ts)| (*ts, from.clone(), *id)).collect();
        self.unread_len.clear();
        for (conversation, _) in self.unread.keys() {
            *self.unread_len.entry(conversation.clone()).or_default() += 1;
        }
    }

    /// The tables, for incremental saves.
    pub(crate) fn tables(&mut self) -> [&mut dyn Journaled; 2] {
        [&mut self.seen, &mut self.unread]
    }

    /// Holds a group message until its sender key arrives; returns the oldest
    /// held message if the hold is over `max`.
    pub fn hold(&mut self, envelope: Envelope, max: usize) -> Option<Envelope> {
        self.held.push_back(envelope);
        if self.held.len() > max {
            return self.held.pop_front();
        }
        None
    }

    /// Takes the held messages of `sender` in `group`, oldest first.
    pub fn take_held(&mut self, group: &GroupId, sender: &UserId) -> Vec<Envelope> {
        let (take, keep): (VecDeque<Envelope>, VecDeque<Envelope>) = std::mem::take(&mut self.held)
            .into_iter()
            .partition(|e| e.group.as_ref() == Some(group) && &e.from.user == sender);
        self.held = keep;
        take.into()
    }

    /// Puts messages back at the front, in order (they still cannot be read).
    pub fn unhold_front(&mut self, envelopes: Vec<Envelope>) {
        for e in envelopes.into_iter().rev() {
            self.held.push_front(e);
        }
    }

    /// Number of held group messages.
    pub fn held_len(&self) -> usize {
        self.held.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::DeviceId;
    use crate::wire::EnvelopeKind;

    fn addr(name: &str) -> DeviceAddress {
        DeviceAddress::new(UserId::new(name).unwrap(), DeviceId(1))
    }

    #[test]
    fn dedup_is_per_sender_and_id() {
        let mut inbox = Inbox::default();
        inbox.record(&addr("alice"), MessageId([1; 16]), 10, 1_000, 10);
        assert!(inbox.seen(&addr("alice"), &MessageId([1; 16])));
        assert!(!inbox.seen(&addr("bob"), &MessageId([1; 16])), "same id from another sender is new");
        assert!(!inbox.seen(&addr("alice"), &MessageId([2; 16])));
    }

    #[test]
    fn dedup_forgets_ids_older_than_the_window_by_server_time() {
        let mut inbox = Inbox::default();
        inbox.record(&addr("alice"), MessageId([1; 16]), 100, 1_000, 10);
        inbox.record(&addr("alice"), MessageId([2; 16]), 1_100, 1_000, 10);
        assert!(inbox.seen(&addr("alice"), &MessageId([1; 16])), "exactly at the window edge: kept");
        inbox.record(&addr("alice"), MessageId([3; 16]), 1_101, 1_000, 10);
        assert!(!inbox.seen(&addr("alice"), &MessageId([1; 16])), "past the window: forgotten");
        assert_eq!(inbox.seen_len(), 2);
    }

    #[test]
    fn dedup_evicts_oldest_beyond_the_count_limit() {
        let mut inbox = Inbox::default();
        for i in 0..5u8 {
            inbox.record(&addr("alice"), MessageId([i; 16]), u64::from(10 - i), 1_000, 3);
        }
        assert_eq!(inbox.seen_len(), 3);
        // Timestamps were 10, 9, 8, 7, 6: the lowest server timestamps go first.
        assert!(inbox.seen(&addr("alice"), &MessageId([0; 16])));
        assert!(!inbox.seen(&addr("alice"), &MessageId([4; 16])));
    }

    fn restored(inbox: &Inbox) -> Inbox {
        let mut back: Inbox = postcard::from_bytes(&postcard::to_allocvec(inbox).unwrap()).unwrap();
        back.rebuild();
        back
    }

    #[test]
    fn the_indexes_left_out_of_a_save_are_rebuilt_after_a_restore() {
        let alice = UserId::new("alice").unwrap();
        let conv = Conversation::Direct(alice.clone());
        let mut inbox = Inbox::default();
        inbox.record(&addr("alice"), MessageId([1; 16]), 100, 1_000, 10);
        for i in 0..3u8 {
            inbox.add_unread(conv.clone(), alice.clone(), MessageId([i; 16]), 3);
        }
        let mut back = restored(&inbox);
        // Eviction by server time still knows the restored entry.
        back.record(&addr("alice"), MessageId([2; 16]), 1_101, 1_000, 10);
        assert!(!back.seen(&addr("alice"), &MessageId([1; 16])), "the restored id is past the window");
        assert_eq!(back.seen_len(), 1);
        // The unread cap still counts the restored messages.
        back.add_unread(conv.clone(), alice.clone(), MessageId([3; 16]), 3);
        let taken = back.take_unread(&conv);
        assert_eq!(taken.iter().map(|(_, id)| id.0[0]).collect::<Vec<_>>(), vec![1, 2, 3]);
    }

    #[test]
    fn unread_is_taken_once_and_bounded() {
        let mut inbox = Inbox::default();
        let alice = UserId::new("alice").unwrap();
        let conv = Conversation::Direct(alice.clone());
        for i in 0..5u8 {
            inbox.add_unread(conv.clone(), alice.clone(), MessageId([i; 16]), 3);
        }
        let taken = inbox.take_unread(&conv);
        assert_eq!(taken.iter().map(|(_, id)| id.0[0]).collect::<Vec<_>>(), vec![2, 3, 4]);
        assert!(inbox.take_unread(&conv).is_empty());
    }

    #[test]
    fn held_messages_are_taken_per_group_and_sender_in_order() {
        let env = |from: &str, g: u8, id: u8| Envelope {
            from: addr(from),
            to: addr("me"),
            message_id: MessageId([id; 16]),
            server_ts_ms: 0,
            group: Some(GroupId([g; 16])),
            kind: EnvelopeKind::Group,
            ciphertext: vec![],
        };
        let mut inbox = Inbox::default();
        assert!(inbox.hold(env("alice", 1, 1), 3).is_none());
        assert!(inbox.hold(env("bob", 1, 2), 3).is_none());
        assert!(inbox.hold(env("alice", 1, 3), 3).is_none());
        let evicted = inbox.hold(env("alice", 2, 4), 3).unwrap();
        assert_eq!(evicted.message_id, MessageId([1; 16]), "oldest evicted beyond the cap");
        let taken = inbox.take_held(&GroupId([1; 16]), &UserId::new("alice").unwrap());
        assert_eq!(taken.iter().map(|e| e.message_id.0[0]).collect::<Vec<_>>(), vec![3]);
        assert_eq!(inbox.held_len(), 2);
    }
}
