//! Receipts and group changes owed to the server, kept until it confirms them.
//!
//! - **Receipts** are owed one per message, then grouped into batches per
//!   (original sender, kind) when the client is online, each batch at most
//!   [`BATCH_LEN_MAX`] ids and named by a fresh id. A batch is resent with the
//!   same id (the server deduplicates on it) until its `ServerAck` arrives.
//! - **Group changes** we signed are kept until `GroupChangeAccepted` (for
//!   that version or a later one) and resent after the resend interval. The
//!   server refuses a change it already applied, with an error that does not
//!   say which frame it is about, so when every acceptance was lost a change
//!   would be resent for ever; after [`GROUP_CHANGE_SENDS_MAX`] sends it is
//!   given up and reported.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use rand_core::{CryptoRng, RngCore};
use serde::{Deserialize, Serialize};

use crate::ids::{GroupId, MessageId, UserId};
use crate::wire::{ClientFrame, ReceiptKind, SignedGroupChange, BATCH_LEN_MAX};

/// Sends of one group change before it is given up: enough to get through a
/// few lost frames or reconnects, few enough that the server's refusals of a
/// change it had in fact applied stay far below its limit for closing the
/// connection.
pub const GROUP_CHANGE_SENDS_MAX: u32 = 5;

/// One of our group changes awaiting acceptance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct OwedChange {
    /// The signed change.
    pub change: SignedGroupChange,
    /// How often it was sent so far.
    pub sends: u32,
}

/// One receipt batch awaiting the server's ack.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ReceiptBatch {
    /// Names the batch; stable across resends.
    pub id: MessageId,
    /// The original sender.
    pub to: UserId,
    /// Delivered or read.
    pub kind: ReceiptKind,
    /// Messages covered, at most [`BATCH_LEN_MAX`].
    pub message_ids: Vec<MessageId>,
}

impl ReceiptBatch {
    /// The frame that sends it.
    pub fn frame(&self) -> ClientFrame {
        ClientFrame::Receipt {
            id: self.id,
            to: self.to.clone(),
            kind: self.kind,
            message_ids: self.message_ids.clone(),
        }
    }
}

/// Everything owed (persisted).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Control {
    /// Receipts not yet in a batch, in the order they were owed.
    pending: Vec<(UserId, ReceiptKind, MessageId)>,
    /// Batches awaiting their ack, oldest first.
    batches: VecDeque<ReceiptBatch>,
    /// Our signed group changes awaiting acceptance, in signing order.
    changes: VecDeque<OwedChange>,
}

impl Control {
    /// Owes a receipt.
    pub fn owe_receipt(&mut self, to: UserId, kind: ReceiptKind, id: MessageId) {
        self.pending.push((to, kind, id));
    }

    /// Owes a group change.
    pub fn owe_change(&mut self, change: SignedGroupChange) {
        self.changes.push_back(OwedChange { change, sends: 0 });
    }

    /// Groups owed receipts into batches, per (sender, kind) in order of first
    /// appearance, without repeats. Returns whether any batch was made.
    pub fn batch_receipts<R: RngCore + CryptoRng>(&mut self, rng: &mut R) -> bool {
        if self.pending.is_empty() {
            return false;
        }
        let mut order: Vec<(UserId, ReceiptKind)> = Vec::new();
        let mut ids: BTreeMap<(UserId, ReceiptKind), Vec<MessageId>> = BTreeMap::new();
        let mut seen: BTreeSet<(UserId, ReceiptKind, MessageId)> = BTreeSet::new();
        for (to, kind, id) in std::mem::take(&mut self.pending) {
            if !seen.insert((to.clone(), kind, id)) {
                continue;
            }
            let list = ids.entry((to.clone(), kind)).or_insert_with(|| {
                order.push((to, kind));
                Vec::new()
            });
            list.push(id);
        }
        for key in order {
            let Some(list) = ids.remove(&key) else { continue };
            for chunk in list.chunks(BATCH_LEN_MAX) {
                self.batches.push_back(ReceiptBatch {
                    id: MessageId::random(rng),
                    to: key.0.clone(),
                    kind: key.1,
                    message_ids: chunk.to_vec(),
                });
            }
        }
        true
    }

    /// Batches awaiting their ack, oldest first.
    pub fn batches(&self) -> impl Iterator<Item = &ReceiptBatch> {
        self.batches.iter()
    }

    /// The server acked a batch; returns whether `id` named one.
    pub fn ack_batch(&mut self, id: &MessageId) -> bool {
        let before = self.batches.len();
        self.batches.retain(|b| b.id != *id);
        self.batches.len() != before
    }

    /// Our changes awaiting acceptance, to send or count sends.
    pub fn changes_mut(&mut self) -> impl Iterator<Item = &mut OwedChange> {
        self.changes.iter_mut()
    }

    /// The server accepted `version` of `group`, which implies every earlier
    /// version: forgets those. Returns how many were owed.
    pub fn settle_changes(&mut self, group: &GroupId, version: u64) -> usize {
        let before = self.changes.len();
        self.changes.retain(|c| !(c.change.group == *group && c.change.version <= version));
        before - self.changes.len()
    }

    /// Removes the changes sent [`GROUP_CHANGE_SENDS_MAX`] times; returns them.
    pub fn give_up_changes(&mut self) -> Vec<SignedGroupChange> {
        let (done, keep): (VecDeque<OwedChange>, VecDeque<OwedChange>) =
            std::mem::take(&mut self.changes).into_iter().partition(|c| c.sends >= GROUP_CHANGE_SENDS_MAX);
        self.changes = keep;
        done.into_iter().map(|c| c.change).collect()
    }

    /// Receipts owed but not yet batched, and batches awaiting acks.
    pub fn receipts_owed(&self) -> (usize, usize) {
        (self.pending.len(), self.batches.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::rand_core::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    fn u(name: &str) -> UserId {
        UserId::new(name).unwrap()
    }

    #[test]
    fn receipts_are_batched_per_sender_and_kind_without_repeats() {
        let mut c = Control::default();
        c.owe_receipt(u("alice"), ReceiptKind::Delivered, MessageId([1; 16]));
        c.owe_receipt(u("bob"), ReceiptKind::Delivered, MessageId([2; 16]));
        c.owe_receipt(u("alice"), ReceiptKind::Read, MessageId([1; 16]));
        c.owe_receipt(u("alice"), ReceiptKind::Delivered, MessageId([3; 16]));
        c.owe_receipt(u("alice"), ReceiptKind::Delivered, MessageId([3; 16]));
        assert!(c.batch_receipts(&mut ChaCha20Rng::seed_from_u64(1)));
        let batches: Vec<(UserId, ReceiptKind, Vec<u8>)> =
            c.batches().map(|b| (b.to.clone(), b.kind, b.message_ids.iter().map(|m| m.0[0]).collect())).collect();
        assert_eq!(
            batches,
            vec![
                (u("alice"), ReceiptKind::Delivered, vec![1, 3]),
                (u("bob"), ReceiptKind::Delivered, vec![2]),
                (u("alice"), ReceiptKind::Read, vec![1]),
            ]
        );
        assert!(!c.batch_receipts(&mut ChaCha20Rng::seed_from_u64(1)), "nothing left to batch");
    }

    #[test]
    fn big_batches_are_split_at_the_frame_limit_and_leave_only_when_acked() {
        let mut c = Control::default();
        for i in 0..=BATCH_LEN_MAX {
            let mut id = [0u8; 16];
            id[..8].copy_from_slice(&(i as u64).to_be_bytes());
            c.owe_receipt(u("alice"), ReceiptKind::Read, MessageId(id));
        }
        c.batch_receipts(&mut ChaCha20Rng::seed_from_u64(2));
        let ids: Vec<MessageId> = c.batches().map(|b| b.id).collect();
        assert_eq!(ids.len(), 2);
        assert_eq!(c.batches().map(|b| b.message_ids.len()).collect::<Vec<_>>(), vec![BATCH_LEN_MAX, 1]);
        assert!(c.ack_batch(&ids[0]));
        assert!(!c.ack_batch(&ids[0]), "a duplicate ack is harmless");
        assert_eq!(c.receipts_owed(), (0, 1));
    }

    fn change(version: u64) -> SignedGroupChange {
        use bluetick_crypto::xeddsa::Signature;
        SignedGroupChange {
            group: GroupId([1; 16]),
            version,
            admin: u("alice"),
            add: vec![],
            remove: vec![u("bob")],
            signature: Signature([0; 64]),
        }
    }

    #[test]
    fn acceptance_of_a_version_settles_it_and_every_earlier_one() {
        let mut c = Control::default();
        for v in 1..=3 {
            c.owe_change(change(v));
        }
        assert_eq!(c.settle_changes(&GroupId([9; 16]), 3), 0, "another group settles nothing");
        assert_eq!(c.settle_changes(&GroupId([1; 16]), 2), 2);
        assert_eq!(c.settle_changes(&GroupId([1; 16]), 2), 0, "a duplicate acceptance is harmless");
        assert_eq!(c.changes_mut().map(|o| o.change.version).collect::<Vec<_>>(), vec![3]);
    }

    #[test]
    fn a_change_is_given_up_after_the_send_limit() {
        let mut c = Control::default();
        c.owe_change(change(1));
        c.owe_change(change(2));
        for _ in 0..GROUP_CHANGE_SENDS_MAX {
            if let Some(first) = c.changes_mut().next() {
                first.sends += 1;
            }
        }
        let given_up = c.give_up_changes();
        assert_eq!(given_up, vec![change(1)]);
        assert_eq!(c.changes_mut().count(), 1);
    }
}
