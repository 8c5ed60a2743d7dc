//! Shared message bodies for group fan-out.
//!
//! A group send stores its ciphertext once and queues only a reference in each
//! member's mailbox; the body is freed when the last reference is released
//! (the member acked, or the entry expired). Per-member cost is then the
//! mailbox entry, independent of the message size.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Names one stored body; assigned in increasing order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct BodyId(pub u64);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Body {
    bytes: Vec<u8>,
    refs: u32,
}

/// Reference-counted ciphertext bodies.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BodyStore {
    bodies: BTreeMap<BodyId, Body>,
    next_id: u64,
    bytes_held: u64,
}

impl BodyStore {
    /// Stores `bytes` with `refs` references (one per recipient mailbox entry).
    /// A body with no references is not stored at all.
    pub fn insert(&mut self, bytes: Vec<u8>, refs: u32) -> Option<BodyId> {
        if refs == 0 {
            return None;
        }
        let id = BodyId(self.next_id);
        self.next_id += 1;
        self.bytes_held += bytes.len() as u64;
        self.bodies.insert(id, Body { bytes, refs });
        Some(id)
    }

    /// The body's bytes, while any reference remains.
    pub fn get(&self, id: BodyId) -> Option<&[u8]> {
        self.bodies.get(&id).map(|b| b.bytes.as_slice())
    }

    /// Drops one reference; frees the body with the last one. Returns whether
    /// it was freed. Releasing an unknown id is harmless (a duplicate ack).
    pub fn release(&mut self, id: BodyId) -> bool {
        let Some(body) = self.bodies.get_mut(&id) else {
            return false;
        };
        body.refs = body.refs.saturating_sub(1);
        if body.refs > 0 {
            return false;
        }
        if let Some(gone) = self.bodies.remove(&id) {
            self.bytes_held = self.bytes_held.saturating_sub(gone.bytes.len() as u64);
        }
        true
    }

    /// Rebuilds the store after a restart: bodies read back from storage with
    /// reference counts recounted from the mailboxes that point at them. A body
    /// nobody references any more is dropped (it was freed but the delete had
    /// not reached storage). Returns the ids dropped.
    pub fn restore(
        bodies: impl IntoIterator<Item = (BodyId, Vec<u8>)>,
        refs: &BTreeMap<BodyId, u32>,
    ) -> (Self, Vec<BodyId>) {
        let mut store = BodyStore::default();
        let mut dropped = Vec::new();
        for (id, bytes) in bodies {
            store.next_id = store.next_id.max(id.0 + 1);
            match refs.get(&id).copied().filter(|r| *r > 0) {
                Some(r) => {
                    store.bytes_held += bytes.len() as u64;
                    store.bodies.insert(id, Body { bytes, refs: r });
                }
                None => dropped.push(id),
            }
        }
        (store, dropped)
    }

    /// The id the next body gets (persisted so ids are never reused across restarts).
    pub fn next_id(&self) -> u64 {
        self.next_id
    }

    /// Raises the next id to at least `next` (after reading it back from storage).
    pub fn reserve_ids_below(&mut self, next: u64) {
        self.next_id = self.next_id.max(next);
    }

    /// Drops a body whatever its references (undoing an insert whose
    /// enqueues or write did not commit). Returns whether it was held.
    pub fn remove(&mut self, id: BodyId) -> bool {
        match self.bodies.remove(&id) {
            Some(gone) => {
                self.bytes_held = self.bytes_held.saturating_sub(gone.bytes.len() as u64);
                true
            }
            None => false,
        }
    }

    /// Bodies held.
    pub fn len(&self) -> usize {
        self.bodies.len()
    }

    /// Whether no body is held.
    pub fn is_empty(&self) -> bool {
        self.bodies.is_empty()
    }

    /// Ciphertext bytes held, each body counted once however many members share it.
    pub fn bytes_held(&self) -> u64 {
        self.bytes_held
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A body whose recount comes to zero is dropped at restore like one
    /// with no count at all (held, it would never be freed).
    #[test]
    fn a_restored_body_counted_zero_times_is_dropped() {
        let refs: BTreeMap<BodyId, u32> = [(BodyId(1), 0), (BodyId(2), 2)].into_iter().collect();
        let (store, dropped) = BodyStore::restore([(BodyId(1), vec![1; 10]), (BodyId(2), vec![2; 20])], &refs);
        assert_eq!(dropped, vec![BodyId(1)]);
        assert_eq!((store.len(), store.bytes_held()), (1, 20));
        assert_eq!(store.next_id(), 3);
    }

    #[test]
    fn remove_drops_a_body_whatever_its_references_and_says_if_it_was_held() {
        let mut store = BodyStore::default();
        let id = store.insert(vec![1; 10], 3).unwrap();
        assert!(store.remove(id));
        assert_eq!((store.len(), store.bytes_held()), (0, 0));
        assert!(!store.remove(id), "already gone");
    }

    #[test]
    fn a_shared_body_is_stored_once_and_freed_with_the_last_reference() {
        let mut store = BodyStore::default();
        let id = store.insert(vec![0xab; 1024], 1024).unwrap();
        assert_eq!((store.len(), store.bytes_held()), (1, 1024), "stored once for 1,024 members");
        for _ in 0..1023 {
            assert!(!store.release(id));
            assert_eq!(store.get(id).map(<[u8]>::len), Some(1024));
        }
        assert!(store.release(id), "the last release frees it");
        assert!(store.is_empty());
        assert_eq!(store.bytes_held(), 0);
        assert!(!store.release(id), "a late duplicate release is harmless");
    }

    #[test]
    fn a_body_without_recipients_is_not_stored() {
        let mut store = BodyStore::default();
        assert_eq!(store.insert(vec![1], 0), None);
        assert!(store.is_empty());
    }

    #[test]
    fn ids_are_not_reused() {
        let mut store = BodyStore::default();
        let a = store.insert(vec![1], 1).unwrap();
        store.release(a);
        let b = store.insert(vec![2], 1).unwrap();
        assert_ne!(a, b);
        assert_eq!(store.get(a), None);
    }
}
