//! Ticks: the delivery state of each sent message, per recipient.
//!
//! States only move forward, whatever order (or how often) server acks,
//! receipts and expiry notices arrive: `Pending → Sent → Delivered → Read`,
//! with `Expired` terminal and reachable only before `Delivered`. A `Read`
//! before any `Delivered` jumps straight to `Read`; a later `Delivered` is then
//! a no-op. That makes at-least-once receipts harmless.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::journal::{Journaled, Table};
use crate::ids::{MessageId, UserId};

/// Most sent messages whose ticks are tracked; the oldest is forgotten first.
/// 10,000 covers weeks of a heavy user's sends, which is as far back as a
/// receipt can still arrive (the server drops undelivered messages after its
/// TTL), and keeps the persisted client state bounded.
pub const STATUS_TRACKED_MAX: usize = 10_000;

/// Where one sent message stands for one recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum DeliveryState {
    /// Queued on this device; the server has not confirmed it.
    Pending,
    /// The server stored it (one tick).
    Sent,
    /// The recipient's device stored it (two grey ticks).
    Delivered,
    /// The recipient opened the conversation (two blue ticks).
    Read,
    /// The server dropped it undelivered after its TTL; terminal.
    Expired,
}

impl DeliveryState {
    /// The state after also learning `next`. Monotone: never goes back, and
    /// `Expired` only replaces a state before `Delivered`.
    pub fn advance(self, next: DeliveryState) -> DeliveryState {
        use DeliveryState::*;
        match (self, next) {
            (Expired, _) => Expired,
            (current, Expired) if current < Delivered => Expired,
            (current, Expired) => current,
            (current, next) => current.max(next),
        }
    }
}

/// The ticks of one sent message: one state per recipient (one entry for a
/// 1:1 message, one per member other than the sender for a group message).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageStatus {
    /// State per recipient.
    pub recipients: BTreeMap<UserId, DeliveryState>,
}

impl MessageStatus {
    /// The state for one recipient.
    pub fn of(&self, user: &UserId) -> Option<DeliveryState> {
        self.recipients.get(user).copied()
    }
}

/// Ticks of every tracked sent message, bounded by a cap on how many. One
/// table entry per (message, recipient), so a receipt from one member of a
/// 1,024-member group changes one small entry of an incremental save.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct StatusBook {
    /// Tracked message → its place in `order`; rebuilt after a restore.
    #[serde(skip)]
    tracked: BTreeMap<MessageId, u64>,
    /// Tracking order, oldest first, for eviction.
    order: Table<u64, MessageId>,
    next: u64,
    states: Table<(MessageId, UserId), DeliveryState>,
}

impl StatusBook {
    /// Starts tracking `id` as `Pending` for each recipient, forgetting the
    /// oldest tracked message beyond `max`.
    pub fn track(&mut self, id: MessageId, recipients: impl IntoIterator<Item = UserId>, max: usize) {
        if self.tracked.contains_key(&id) {
            for peer in self.recipients(&id) {
                self.states.remove(&(id, peer));
            }
        } else {
            self.tracked.insert(id, self.next);
            self.order.insert(self.next, id);
            self.next += 1;
        }
        for peer in recipients {
            self.states.insert((id, peer), DeliveryState::Pending);
        }
        while self.order.len() > max {
            if let Some((_, old)) = self.order.pop_first() {
                self.tracked.remove(&old);
                for peer in self.recipients(&old) {
                    self.states.remove(&(old, peer));
                }
            }
        }
    }

    fn recipients(&self, id: &MessageId) -> Vec<UserId> {
        self.states
            .range((*id, UserId::least())..)
            .take_while(|((m, _), _)| m == id)
            .map(|((_, peer), _)| peer.clone())
            .collect()
    }

    /// The ticks of `id`, if tracked.
    pub fn get(&self, id: &MessageId) -> Option<MessageStatus> {
        if !self.tracked.contains_key(id) {
            return None;
        }
        let recipients = self
            .states
            .range((*id, UserId::least())..)
            .take_while(|((m, _), _)| m == id)
            .map(|((_, peer), state)| (peer.clone(), *state))
            .collect();
        Some(MessageStatus { recipients })
    }

    /// Applies `next` for one recipient; returns the new state if it changed.
    pub fn update(&mut self, id: &MessageId, peer: &UserId, next: DeliveryState) -> Option<DeliveryState> {
        let key = (*id, peer.clone());
        let current = *self.states.get(&key)?;
        let new = current.advance(next);
        if new == current {
            return None;
        }
        self.states.insert(key, new);
        Some(new)
    }

    /// Sets `next` for one recipient even if it goes back (only for the
    /// `LatestReceiptWins` bug switch); returns it if it changed.
    pub fn overwrite(&mut self, id: &MessageId, peer: &UserId, next: DeliveryState) -> Option<DeliveryState> {
        let key = (*id, peer.clone());
        if *self.states.get(&key)? == next {
            return None;
        }
        self.states.insert(key, next);
        Some(next)
    }

    /// Applies `next` for every recipient; returns those that changed.
    pub fn update_all(&mut self, id: &MessageId, next: DeliveryState) -> Vec<(UserId, DeliveryState)> {
        let mut changed = Vec::new();
        for peer in self.recipients(id) {
            if let Some(new) = self.update(id, &peer, next) {
                changed.push((peer, new));
            }
        }
        changed
    }

    /// Rebuilds the index a save leaves out.
    pub fn rebuild(&mut self) {
        self.tracked = self.order.iter().map(|(seq, id)| (*id, *seq)).collect();
    }

    /// The tables, for incremental saves.
    pub(crate) fn tables(&mut self) -> [&mut dyn Journaled; 2] {
        [&mut self.order, &mut self.states]
    }
}

#[cfg(test)]
mod tests {
    use super::DeliveryState::*;
    use super::*;

    const ALL: [DeliveryState; 5] = [Pending, Sent, Delivered, Read, Expired];

    #[test]
    fn advance_never_goes_back_in_any_order() {
        // Every sequence of three updates ends at a state no earlier than any
        // state seen along the way (Expired aside, which is terminal).
        for a in ALL {
            for b in ALL {
                for c in ALL {
                    let mut s = Pending;
                    let mut seen = vec![s];
                    for n in [a, b, c] {
                        let next = s.advance(n);
                        if s == Expired {
                            assert_eq!(next, Expired);
                        } else if next != Expired {
                            assert!(next >= s, "{s:?} + {n:?} went back to {next:?}");
                        }
                        s = next;
                        seen.push(s);
                    }
                    assert_eq!(s.advance(c), s, "applying the last update twice changes nothing");
                }
            }
        }
    }

    #[test]
    fn read_before_delivered_jumps_and_a_late_delivered_is_ignored() {
        assert_eq!(Sent.advance(Read), Read);
        assert_eq!(Read.advance(Delivered), Read);
        assert_eq!(Pending.advance(Delivered), Delivered);
        assert_eq!(Delivered.advance(Sent), Delivered);
    }

    #[test]
    fn expired_is_terminal_and_cannot_undo_a_delivery() {
        assert_eq!(Sent.advance(Expired), Expired);
        assert_eq!(Pending.advance(Expired), Expired);
        assert_eq!(Expired.advance(Read), Expired);
        assert_eq!(Delivered.advance(Expired), Delivered);
        assert_eq!(Read.advance(Expired), Read);
    }

    #[test]
    fn book_reports_changes_only_and_evicts_the_oldest() {
        let alice = UserId::new("alice").unwrap();
        let bob = UserId::new("bob").unwrap();
        let mut book = StatusBook::default();
        let m1 = MessageId([1; 16]);
        book.track(m1, [alice.clone(), bob.clone()], 2);
        assert_eq!(book.update_all(&m1, Sent).len(), 2);
        assert_eq!(book.update_all(&m1, Sent), vec![]);
        assert_eq!(book.update(&m1, &bob, Read), Some(Read));
        assert_eq!(book.update(&m1, &bob, Delivered), None);
        assert_eq!(book.update(&m1, &UserId::new("carol").unwrap(), Read), None);
        assert_eq!(book.get(&m1).unwrap().of(&alice), Some(Sent));
        book.track(MessageId([2; 16]), [alice.clone()], 2);
        book.track(MessageId([3; 16]), [alice.clone()], 2);
        assert!(book.get(&m1).is_none(), "oldest forgotten beyond the cap");
        assert!(book.get(&MessageId([3; 16])).is_some());
    }

    #[test]
    fn the_tracking_index_is_rebuilt_after_a_restore() {
        let alice = UserId::new("alice").unwrap();
        let mut book = StatusBook::default();
        for i in 1..=2u8 {
            book.track(MessageId([i; 16]), [alice.clone()], 2);
        }
        let mut back: StatusBook = postcard::from_bytes(&postcard::to_allocvec(&book).unwrap()).unwrap();
        back.rebuild();
        assert_eq!(back.get(&MessageId([1; 16])).unwrap().of(&alice), Some(Pending));
        back.track(MessageId([3; 16]), [alice.clone()], 2);
        assert!(back.get(&MessageId([1; 16])).is_none(), "the oldest is still the first evicted");
        assert!(back.get(&MessageId([2; 16])).is_some() && back.get(&MessageId([3; 16])).is_some());
    }
}
