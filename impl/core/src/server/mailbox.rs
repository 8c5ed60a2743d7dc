//! A per-device offline queue with at-least-once semantics.
//!
//! The promises, each tested against a reference model in
//! `tests/mailbox_model.rs`:
//! - **Idempotent enqueue** on `(sender, message id)`: a sender retrying after a
//!   lost server-ack never creates a second copy (Signal-Server dedups here too).
//! - **Delete only on delivery-ack or expiry**, never on send.
//! - **FIFO**: entries go out in enqueue order, on the first pass and on every
//!   redelivery pass, so order per sender→recipient is kept across redelivery.
//! - **Bounded**: at most [`MAILBOX_DEPTH_MAX`] entries; a full mailbox refuses
//!   new entries (the sender is told) and never drops stored ones.
//! - **Bounded in flight**: at most `window` unacked deliveries outstanding, so a
//!   backlog drains without one round trip per message and without flooding.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::ids::{DeviceAddress, MessageId};

/// Most entries one device's mailbox holds. 10,000 is weeks of heavy use for one
/// device; past it the sender gets an error instead of the server growing
/// without bound or silently dropping older messages.
pub const MAILBOX_DEPTH_MAX: usize = 10_000;

/// The key that makes enqueue idempotent: who sent it and the id they chose.
pub type EntryKey = (DeviceAddress, MessageId);

/// One queued item.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry<P> {
    /// Position in the mailbox; increases with every new enqueue.
    pub seq: u64,
    /// Sender and message id.
    pub key: EntryKey,
    /// When it stops being worth delivering, ms since the epoch.
    pub expires_at_ms: u64,
    /// What to deliver.
    pub payload: P,
    /// When it was last handed out, if it is awaiting an ack.
    pub in_flight_since_ms: Option<u64>,
}

/// Outcome of [`Mailbox::enqueue`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enqueued {
    /// Stored as a new entry with this sequence number.
    New(u64),
    /// Already queued under the same key: nothing changed.
    Duplicate(u64),
}

/// The mailbox is at [`MAILBOX_DEPTH_MAX`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("mailbox holds {depth} entries, the limit is {max}")]
pub struct MailboxFull {
    /// Entries held.
    pub depth: usize,
    /// The limit.
    pub max: usize,
}

/// Deliberate bugs a test, scenario or model check can switch on to prove its
/// checker notices. Off by default; never set them in a real deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MailboxBug {
    /// Delete an entry as soon as it is handed out, instead of on ack.
    DeleteOnSend,
    /// Enqueue a retry as a second copy instead of recognising it.
    EnqueueNotIdempotent,
    /// Ignore delivery-acks: nothing is ever deleted, everything is
    /// redelivered after each ack timeout.
    IgnoreAck,
    /// Never expire anything: entries outlive their TTL.
    NeverExpire,
    /// Hand out the newest entries first instead of the oldest.
    NewestFirst,
}

/// One device's queue of undelivered or unacknowledged items.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Mailbox<P> {
    entries: BTreeMap<u64, Entry<P>>,
    by_key: BTreeMap<EntryKey, u64>,
    /// (expiry, seq), so expiry is a range scan rather than a full pass.
    by_expiry: BTreeSet<(u64, u64)>,
    /// (handed out at, seq) of in-flight entries, for ack timeouts.
    in_flight: BTreeSet<(u64, u64)>,
    next_seq: u64,
    depth_max: usize,
    bug: Option<MailboxBug>,
    /// Every entry below this sequence number is in flight, so
    /// [`Mailbox::poll_deliveries`] starts looking here: with a full window
    /// of 64 in flight, each ack used to walk past all of them to find the
    /// next entry to hand out. A hint derived from the entries, so neither
    /// saved nor compared; 0 is always correct.
    #[serde(skip)]
    scan_from: u64,
}

impl<P: PartialEq> PartialEq for Mailbox<P> {
    fn eq(&self, other: &Self) -> bool {
        // `scan_from` is left out: two mailboxes with the same entries are
        // the same mailbox however far each has looked.
        self.entries == other.entries
            && self.by_key == other.by_key
            && self.by_expiry == other.by_expiry
            && self.in_flight == other.in_flight
            && self.next_seq == other.next_seq
            && self.depth_max == other.depth_max
            && self.bug == other.bug
    }
}

impl<P: Eq> Eq for Mailbox<P> {}

impl<P: Clone> Default for Mailbox<P> {
    fn default() -> Self {
        Mailbox::with_depth_max(MAILBOX_DEPTH_MAX)
    }
}

impl<P: Clone> Mailbox<P> {
    /// An empty mailbox with a custom depth limit (tests use small ones to reach
    /// the limit quickly).
    pub fn with_depth_max(depth_max: usize) -> Self {
        Mailbox {
            entries: BTreeMap::new(),
            by_key: BTreeMap::new(),
            by_expiry: BTreeSet::new(),
            in_flight: BTreeSet::new(),
            next_seq: 1,
            depth_max,
            bug: None,
            scan_from: 0,
        }
    }

    /// Switches a deliberate bug on (or off with `None`); see [`MailboxBug`].
    pub fn set_bug(&mut self, bug: Option<MailboxBug>) {
        self.bug = bug;
        // NewestFirst leaves older entries waiting behind newer ones in flight.
        self.scan_from = 0;
    }

    /// Entries held (delivered-but-unacked ones included).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Entries handed out and not yet acked.
    pub fn in_flight_len(&self) -> usize {
        self.in_flight.len()
    }

    /// Whether an entry with this key is held.
    pub fn contains(&self, key: &EntryKey) -> bool {
        self.by_key.contains_key(key)
    }

    /// All entries in delivery order.
    pub fn entries(&self) -> impl Iterator<Item = &Entry<P>> {
        self.entries.values()
    }

    /// Adds an item unless one with the same key is already held.
    pub fn enqueue(&mut self, key: EntryKey, payload: P, expires_at_ms: u64) -> Result<Enqueued, MailboxFull> {
        if let Some(&seq) = self.by_key.get(&key) {
            if self.bug != Some(MailboxBug::EnqueueNotIdempotent) {
                return Ok(Enqueued::Duplicate(seq));
            }
        }
        if self.entries.len() >= self.depth_max {
            return Err(MailboxFull { depth: self.entries.len(), max: self.depth_max });
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        // Under EnqueueNotIdempotent this overwrites the index and the older
        // copy stays queued: the bug shows as a duplicate delivery.
        self.by_key.insert(key.clone(), seq);
        self.by_expiry.insert((expires_at_ms, seq));
        self.entries.insert(seq, Entry { seq, key, expires_at_ms, payload, in_flight_since_ms: None });
        Ok(Enqueued::New(seq))
    }

    /// Hands out the oldest entries not yet in flight, so that at most `window`
    /// are in flight, and marks them in flight since `now_ms`.
    pub fn poll_deliveries(&mut self, now_ms: u64, window: usize) -> Vec<Entry<P>> {
        let room = window.saturating_sub(self.in_flight.len());
        let mut out = Vec::new();
        if room == 0 {
            return out;
        }
        if self.bug == Some(MailboxBug::NewestFirst) {
            for entry in self.entries.values_mut().rev() {
                if out.len() == room {
                    break;
                }
                if entry.in_flight_since_ms.is_none() {
                    entry.in_flight_since_ms = Some(now_ms);
                    self.in_flight.insert((now_ms, entry.seq));
                    out.push(entry.clone());
                }
            }
        } else {
            // Everything before the first entry left unexamined is in flight
            // once this pass is over.
            let mut stopped_at = self.next_seq;
            for (&seq, entry) in self.entries.range_mut(self.scan_from..) {
                if out.len() == room {
                    stopped_at = seq;
                    break;
                }
                if entry.in_flight_since_ms.is_none() {
                    entry.in_flight_since_ms = Some(now_ms);
                    self.in_flight.insert((now_ms, seq));
                    out.push(entry.clone());
                }
            }
            self.scan_from = stopped_at;
        }
        if self.bug == Some(MailboxBug::DeleteOnSend) {
            for e in &out {
                self.remove_seq(e.seq);
            }
        }
        out
    }

    /// The device stored the item: delete it. Returns the removed entry, or
    /// `None` for an unknown key (a duplicate ack is harmless).
    pub fn ack(&mut self, key: &EntryKey) -> Option<Entry<P>> {
        if self.bug == Some(MailboxBug::IgnoreAck) {
            return None;
        }
        let seq = *self.by_key.get(key)?;
        self.remove_seq(seq)
    }

    /// The device stored the delivery with this `seq`: delete it. `None` for
    /// an unknown seq (a duplicate or late ack is harmless).
    pub fn ack_seq(&mut self, seq: u64) -> Option<Entry<P>> {
        if self.bug == Some(MailboxBug::IgnoreAck) {
            return None;
        }
        self.remove_seq(seq)
    }

    /// The entry at `seq`, if held.
    pub fn get(&self, seq: u64) -> Option<&Entry<P>> {
        self.entries.get(&seq)
    }

    /// Rebuilds a mailbox after a restart from entries read back from the
    /// store, keeping their sequence numbers (a device may ack a `seq` it was
    /// sent before the restart). Nothing is in flight afterwards.
    pub fn restore(entries: impl IntoIterator<Item = Entry<P>>, depth_max: usize) -> Self {
        let mut m = Mailbox::with_depth_max(depth_max);
        for mut e in entries {
            e.in_flight_since_ms = None;
            m.next_seq = m.next_seq.max(e.seq + 1);
            m.by_key.insert(e.key.clone(), e.seq);
            m.by_expiry.insert((e.expires_at_ms, e.seq));
            m.entries.insert(e.seq, e);
        }
        m
    }

    /// The sequence number the next new entry gets.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Raises the next sequence number to at least `next` (read back from
    /// storage after a restart), so a `seq` is never reused: a late ack for an
    /// old `seq` must not delete a new entry.
    pub fn raise_next_seq(&mut self, next: u64) {
        self.next_seq = self.next_seq.max(next);
    }

    fn remove_seq(&mut self, seq: u64) -> Option<Entry<P>> {
        let entry = self.entries.remove(&seq)?;
        if self.by_key.get(&entry.key) == Some(&seq) {
            self.by_key.remove(&entry.key);
        }
        self.by_expiry.remove(&(entry.expires_at_ms, seq));
        if let Some(since) = entry.in_flight_since_ms {
            self.in_flight.remove(&(since, seq));
        }
        Some(entry)
    }

    /// The connection went away: everything in flight goes back to undelivered,
    /// to be handed out again (in order) on the next connection.
    pub fn requeue_all(&mut self) {
        self.scan_from = 0;
        for (_, seq) in std::mem::take(&mut self.in_flight) {
            if let Some(e) = self.entries.get_mut(&seq) {
                e.in_flight_since_ms = None;
            }
        }
    }

    /// Entries in flight since `now_ms - ack_timeout_ms` or earlier go back to
    /// undelivered. Returns how many.
    pub fn requeue_timed_out(&mut self, now_ms: u64, ack_timeout_ms: u64) -> usize {
        let Some(cutoff) = now_ms.checked_sub(ack_timeout_ms) else {
            return 0;
        };
        let stale: Vec<(u64, u64)> = self.in_flight.range(..=(cutoff, u64::MAX)).copied().collect();
        for item in &stale {
            self.scan_from = self.scan_from.min(item.1);
            self.in_flight.remove(item);
            if let Some(e) = self.entries.get_mut(&item.1) {
                e.in_flight_since_ms = None;
            }
        }
        stale.len()
    }

    /// Removes and returns every entry whose expiry is at or before `now_ms`.
    pub fn expire(&mut self, now_ms: u64) -> Vec<Entry<P>> {
        let due: Vec<(u64, u64)> = self.by_expiry.range(..=(now_ms, u64::MAX)).copied().collect();
        if self.bug == Some(MailboxBug::NeverExpire) {
            // Forget the deadlines (so no timer fires for ever) but keep the entries.
            for item in &due {
                self.by_expiry.remove(item);
            }
            return Vec::new();
        }
        let mut out = Vec::with_capacity(due.len());
        for (_, seq) in due {
            if let Some(e) = self.remove_seq(seq) {
                out.push(e);
            }
        }
        out
    }

    /// The earliest time something needs doing: an ack timeout or an expiry.
    pub fn next_deadline_ms(&self, ack_timeout_ms: u64) -> Option<u64> {
        let ack = self.in_flight.first().map(|(since, _)| since.saturating_add(ack_timeout_ms));
        let exp = self.by_expiry.first().map(|(at, _)| *at);
        match (ack, exp) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::{DeviceId, UserId};

    fn key(n: u8) -> EntryKey {
        (DeviceAddress::new(UserId::new("bob").unwrap(), DeviceId(1)), MessageId([n; 16]))
    }

    #[test]
    fn retried_enqueue_does_not_create_a_second_copy() {
        let mut m = Mailbox::default();
        assert_eq!(m.enqueue(key(1), "a", 100), Ok(Enqueued::New(1)));
        assert_eq!(m.enqueue(key(1), "a", 100), Ok(Enqueued::Duplicate(1)));
        assert_eq!(m.len(), 1);
    }

    #[test]
    fn delivery_does_not_delete_only_ack_does() {
        let mut m = Mailbox::default();
        m.enqueue(key(1), "a", 100).unwrap();
        assert_eq!(m.poll_deliveries(0, 8).len(), 1);
        assert_eq!(m.len(), 1);
        assert!(m.ack(&key(1)).is_some());
        assert!(m.is_empty());
        assert!(m.ack(&key(1)).is_none(), "a second ack is harmless");
    }

    #[test]
    fn window_bounds_in_flight_and_redelivery_keeps_order() {
        let mut m = Mailbox::default();
        for n in 1..=5 {
            m.enqueue(key(n), n, 1_000).unwrap();
        }
        let first: Vec<u8> = m.poll_deliveries(0, 2).iter().map(|e| e.payload).collect();
        assert_eq!(first, vec![1, 2]);
        assert!(m.poll_deliveries(0, 2).is_empty(), "window full");
        m.ack(&key(2));
        assert_eq!(m.poll_deliveries(0, 2).iter().map(|e| e.payload).collect::<Vec<_>>(), vec![3]);
        m.requeue_all();
        let again: Vec<u8> = m.poll_deliveries(1, 10).iter().map(|e| e.payload).collect();
        assert_eq!(again, vec![1, 3, 4, 5]);
    }

    #[test]
    fn ack_timeout_requeues_only_stale_entries() {
        let mut m = Mailbox::default();
        m.enqueue(key(1), 1, 10_000).unwrap();
        m.poll_deliveries(0, 8);
        m.enqueue(key(2), 2, 10_000).unwrap();
        m.poll_deliveries(500, 8);
        assert_eq!(m.next_deadline_ms(1_000), Some(1_000));
        assert_eq!(m.requeue_timed_out(999, 1_000), 0);
        assert_eq!(m.requeue_timed_out(1_000, 1_000), 1);
        assert_eq!(m.poll_deliveries(1_000, 8).iter().map(|e| e.payload).collect::<Vec<_>>(), vec![1]);
    }

    #[test]
    fn expiry_removes_due_entries_and_reports_them() {
        let mut m = Mailbox::default();
        m.enqueue(key(1), 1, 100).unwrap();
        m.enqueue(key(2), 2, 200).unwrap();
        assert_eq!(m.next_deadline_ms(1_000), Some(100));
        assert!(m.expire(99).is_empty());
        assert_eq!(m.expire(150).iter().map(|e| e.payload).collect::<Vec<_>>(), vec![1]);
        assert_eq!(m.len(), 1);
        assert!(!m.contains(&key(1)));
    }

    #[test]
    fn restore_keeps_sequence_numbers_and_clears_in_flight() {
        let mut m = Mailbox::default();
        m.enqueue(key(1), 1, 100).unwrap();
        m.enqueue(key(2), 2, 100).unwrap();
        m.poll_deliveries(0, 8);
        m.ack_seq(1);
        let saved: Vec<Entry<u8>> = m.entries().cloned().collect();
        let mut back = Mailbox::restore(saved, MAILBOX_DEPTH_MAX);
        assert_eq!(back.in_flight_len(), 0);
        assert_eq!(back.next_seq(), 3);
        assert_eq!(back.poll_deliveries(1, 8).iter().map(|e| e.seq).collect::<Vec<_>>(), vec![2]);
        assert_eq!(back.enqueue(key(2), 2, 100), Ok(Enqueued::Duplicate(2)));
        assert_eq!(back.enqueue(key(3), 3, 100), Ok(Enqueued::New(3)));
    }

    #[test]
    fn full_mailbox_refuses_new_entries_and_keeps_old_ones() {
        let mut m = Mailbox::with_depth_max(2);
        m.enqueue(key(1), 1, 100).unwrap();
        m.enqueue(key(2), 2, 100).unwrap();
        assert_eq!(m.enqueue(key(3), 3, 100), Err(MailboxFull { depth: 2, max: 2 }));
        assert_eq!(m.enqueue(key(1), 1, 100), Ok(Enqueued::Duplicate(1)), "a retry of a held entry still succeeds");
        assert_eq!(m.len(), 2);
    }

    /// What `poll_deliveries` must hand out, found the slow way: the oldest
    /// entries not in flight, up to the window.
    fn due_by_full_scan(m: &Mailbox<u8>, window: usize) -> Vec<u64> {
        let room = window.saturating_sub(m.in_flight_len());
        m.entries().filter(|e| e.in_flight_since_ms.is_none()).map(|e| e.seq).take(room).collect()
    }

    #[derive(Debug, Clone)]
    enum Op {
        Enqueue(u8, u64),
        Poll(usize),
        Ack(u8),
        RequeueAll,
        RequeueTimedOut(u64),
        Expire(u64),
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        prop_oneof![
            4 => (0u8..24, 0u64..50).prop_map(|(k, t)| Op::Enqueue(k, t)),
            4 => (0usize..6).prop_map(Op::Poll),
            3 => (0u8..24).prop_map(Op::Ack),
            1 => Just(Op::RequeueAll),
            1 => (0u64..8).prop_map(Op::RequeueTimedOut),
            1 => (0u64..50).prop_map(Op::Expire),
        ]
    }

    /// Runs `ops` (the clock ticking one per op) and checks every poll
    /// against [`due_by_full_scan`]; `stale_cursor` puts the scan hint past
    /// the first waiting entry after each requeue, as a version that forgot
    /// to move it back would.
    fn polls_match_a_full_scan(ops: &[Op], stale_cursor: bool) -> Result<(), String> {
        let mut m: Mailbox<u8> = Mailbox::default();
        for (now, op) in ops.iter().enumerate() {
            let now = now as u64;
            match op {
                Op::Enqueue(k, ttl) => {
                    let _ = m.enqueue(key(*k), *k, now + ttl);
                }
                Op::Poll(window) => {
                    let want = due_by_full_scan(&m, *window);
                    let got: Vec<u64> = m.poll_deliveries(now, *window).iter().map(|e| e.seq).collect();
                    if got != want {
                        return Err(format!("at op {now}: handed out {got:?}, the oldest waiting are {want:?}"));
                    }
                }
                Op::Ack(k) => {
                    m.ack(&key(*k));
                }
                Op::RequeueAll => {
                    m.requeue_all();
                    if stale_cursor {
                        m.scan_from = m.next_seq;
                    }
                }
                Op::RequeueTimedOut(timeout) => {
                    if m.requeue_timed_out(now, *timeout) > 0 && stale_cursor {
                        m.scan_from = m.next_seq;
                    }
                }
                Op::Expire(t) => {
                    m.expire(*t);
                }
            }
        }
        Ok(())
    }

    proptest::proptest! {
        #[test]
        fn polls_hand_out_the_oldest_waiting_entries(ops in proptest::collection::vec(op(), 0..80)) {
            proptest::prop_assert_eq!(polls_match_a_full_scan(&ops, false), Ok(()));
        }
    }

    #[test]
    fn the_full_scan_check_catches_a_stale_scan_hint() {
        let ops = [Op::Enqueue(1, 40), Op::Enqueue(2, 40), Op::Poll(4), Op::RequeueAll, Op::Poll(4)];
        assert_eq!(polls_match_a_full_scan(&ops, false), Ok(()));
        assert!(polls_match_a_full_scan(&ops, true).is_err());
    }
}
