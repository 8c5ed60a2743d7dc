//! Sends not yet confirmed by the server, in the order the app made them.
//!
//! An entry keeps its message id from the moment it is queued until the
//! server's `ServerAck`, across every retry, reconnect and crash, so the
//! server can recognise a retry and the recipient can deduplicate.
//!
//! An entry is encrypted once, at its first transmission (when a session or
//! sender key is available), and the plaintext is then dropped: every retry
//! sends the identical ciphertext. Encrypting again would spend a chain key per
//! retry and leave a skipped key at the recipient for every copy the server
//! discards as a duplicate; the same bytes cost nothing, and the ratchet
//! refuses them a second time as well.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::client::content::Content;
use crate::client::journal::{Journaled, Table};
use crate::ids::{GroupId, MessageId, UserId};
use crate::wire::EnvelopeKind;

/// Most unconfirmed sends queued. A device offline for days still fits; a
/// group send to 1,024 members adds up to 1,023 pairwise distributions, so
/// the cap leaves room for several of those.
pub const OUTBOX_LEN_MAX: usize = 16_384;

/// Who an outbox entry goes to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Target {
    /// One user's primary device, over the pairwise session.
    Direct(UserId),
    /// Every member of a group, as one sender-key ciphertext.
    Group(GroupId),
}

/// What an entry holds: the plaintext until the first transmission, the
/// ciphertext from then on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Body {
    /// Not yet encrypted.
    Plain(Content),
    /// Encrypted; resent as is.
    Sealed {
        /// Envelope kind (`Group` for a sender-key message).
        kind: EnvelopeKind,
        /// The ciphertext.
        ciphertext: Vec<u8>,
    },
}

/// One queued send.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct OutboxEntry {
    /// Stable across retries.
    pub id: MessageId,
    /// Recipient.
    pub target: Target,
    /// The group whose sender key this entry distributes, if it does. Part
    /// of the save format; a removal leaves such entries queued (the key
    /// they carry is retired; see `Client::after_membership_change`).
    pub distributes: Option<GroupId>,
    /// Plaintext or ciphertext.
    pub body: Body,
}

/// The outbox is at [`OUTBOX_LEN_MAX`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct OutboxFull {
    /// Entries queued.
    pub len: usize,
}

/// Queued sends in order.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct Outbox {
    entries: Table<u64, OutboxEntry>,
    /// Rebuilt after a restore.
    #[serde(skip)]
    by_id: BTreeMap<MessageId, u64>,
    next_seq: u64,
}

impl Outbox {
    /// Appends an entry unless the outbox holds `max` already.
    pub fn push(&mut self, entry: OutboxEntry, max: usize) -> Result<(), OutboxFull> {
        if self.entries.len() >= max {
            return Err(OutboxFull { len: self.entries.len() });
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.by_id.insert(entry.id, seq);
        self.entries.insert(seq, entry);
        Ok(())
    }

    /// Removes the entry with this id (the server acked it).
    pub fn remove(&mut self, id: &MessageId) -> Option<OutboxEntry> {
        let seq = self.by_id.remove(id)?;
        self.entries.remove(&seq)
    }

    /// The first entry at or after position `from`, with its position.
    pub fn next_from(&self, from: u64) -> Option<(u64, &OutboxEntry)> {
        self.entries.range(from..).next().map(|(seq, e)| (*seq, e))
    }

    /// The entry with this id, to seal it.
    pub fn get_mut(&mut self, id: &MessageId) -> Option<&mut OutboxEntry> {
        let seq = self.by_id.get(id)?;
        self.entries.get_mut(seq)
    }

    /// Whether an entry with this id is queued.
    #[cfg(test)]
    pub fn contains(&self, id: &MessageId) -> bool {
        self.by_id.contains_key(id)
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Rebuilds the index a save leaves out.
    pub fn rebuild(&mut self) {
        self.by_id = self.entries.iter().map(|(seq, e)| (e.id, *seq)).collect();
    }

    /// The tables, for incremental saves.
    pub(crate) fn tables(&mut self) -> [&mut dyn Journaled; 1] {
        [&mut self.entries]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: u8, to: &str) -> OutboxEntry {
        OutboxEntry {
            id: MessageId([id; 16]),
            target: Target::Direct(UserId::new(to).unwrap()),
            distributes: None,
            body: Body::Plain(Content::Text { body: vec![id] }),
        }
    }

    #[test]
    fn entries_keep_order_and_leave_only_when_acked() {
        let mut o = Outbox::default();
        for i in 1..=3 {
            o.push(entry(i, "bob"), 10).unwrap();
        }
        assert!(o.remove(&MessageId([2; 16])).is_some());
        assert!(o.remove(&MessageId([2; 16])).is_none(), "a duplicate ack is harmless");
        let mut ids = vec![];
        let mut cursor = 0;
        while let Some((seq, e)) = o.next_from(cursor) {
            ids.push(e.id.0[0]);
            cursor = seq + 1;
        }
        assert_eq!(ids, vec![1, 3]);
    }

    #[test]
    fn the_id_index_is_rebuilt_after_a_restore() {
        let mut o = Outbox::default();
        for i in 1..=3 {
            o.push(entry(i, "bob"), 10).unwrap();
        }
        let mut back: Outbox = postcard::from_bytes(&postcard::to_allocvec(&o).unwrap()).unwrap();
        back.rebuild();
        assert!(back.remove(&MessageId([2; 16])).is_some(), "an ack after a restore finds its entry");
        assert!(back.get_mut(&MessageId([3; 16])).is_some());
        assert_eq!(back.len(), 2);
    }

    #[test]
    fn full_outbox_refuses_and_keeps_what_it_has() {
        let mut o = Outbox::default();
        o.push(entry(1, "bob"), 1).unwrap();
        assert_eq!(o.push(entry(2, "bob"), 1), Err(OutboxFull { len: 1 }));
        assert!(o.contains(&MessageId([1; 16])));
        assert!(!o.contains(&MessageId([2; 16])));
    }
}
