//! The adversary's view of a stolen device state, for forward-secrecy checks.
//!
//! A simulator that models a compromise restores a second [`Client`] from
//! the device's [`super::SavedClient`] at that instant and asks it, with
//! [`Client::adversary_open`], to open ciphertexts recorded earlier on the
//! wire. A correct client has deleted every message key it used, so nothing
//! it had already received opens. [`ClientBug::KeepUsedMessageKeys`] makes the
//! client keep, in its saved state, a copy of each receiving session (and
//! sender key) as it was just before a decrypt — the chain key that derives
//! the used message key — which is what such a check must catch.

use std::collections::VecDeque;

use bluetick_crypto::sender_key::{GroupMessage, SenderKeyRecord};
use serde::{Deserialize, Serialize};

use super::sessions::Sessions;
use super::{Client, ClientBug, State};
use crate::ids::{DeviceAddress, GroupId, UserId};
use crate::wire::{Envelope, EnvelopeKind};

/// Copies kept under [`ClientBug::KeepUsedMessageKeys`]; the bug keeps the
/// newest ones so a saved state stays bounded even with the bug on.
pub const RETAINED_COPIES_MAX: usize = 256;

/// A pre-decrypt copy of receiving key material (bug only).
#[derive(Serialize, Deserialize)]
pub(crate) enum Retained {
    /// The encoded sessions with a peer.
    Pairwise {
        /// The peer.
        peer: DeviceAddress,
        /// [`Sessions::snapshot_peer`] bytes.
        sessions: Vec<u8>,
    },
    /// A sender's key record in a group.
    Group {
        /// The group.
        group: GroupId,
        /// The sender.
        sender: UserId,
        /// The record.
        record: SenderKeyRecord,
    },
}

/// Retained copies, newest last (empty unless the bug is on).
#[derive(Default, Serialize, Deserialize)]
pub(crate) struct RetainedKeys(VecDeque<Retained>);

impl RetainedKeys {
    fn push(&mut self, item: Retained) {
        if self.0.len() >= RETAINED_COPIES_MAX {
            self.0.pop_front();
        }
        self.0.push_back(item);
    }
}

impl Client {
    /// Under [`ClientBug::KeepUsedMessageKeys`], keeps a copy of the sessions
    /// with `peer` before a decrypt.
    pub(super) fn retain_pairwise(&mut self, peer: &DeviceAddress) {
        if !self.config.bugs.has(ClientBug::KeepUsedMessageKeys) {
            return;
        }
        if let Some(sessions) = self.state.sessions.snapshot_peer(peer) {
            self.state.retained.push(Retained::Pairwise { peer: peer.clone(), sessions });
        }
    }

    /// Under [`ClientBug::KeepUsedMessageKeys`], keeps a copy of a sender key
    /// record before a decrypt.
    pub(super) fn retain_group(&mut self, group: GroupId, sender: &UserId) {
        if !self.config.bugs.has(ClientBug::KeepUsedMessageKeys) {
            return;
        }
        if let Some(record) = self.state.groups.records.get(&(group, sender.clone())) {
            let record = record.clone();
            self.state.retained.push(Retained::Group { group, sender: sender.clone(), record });
        }
    }

    /// **For the adversary model only.** Tries to open a recorded envelope
    /// with this client's keys, as an attacker holding a copy of the device's
    /// saved state would: no deduplication, no app events, no receipts, nothing
    /// sent. Keys it uses are consumed in *this* copy (call it on a copy
    /// restored from the stolen [`super::SavedClient`], never on the device
    /// itself). Returns the decrypted payload bytes, or `None`.
    pub fn adversary_open(&mut self, envelope: &Envelope) -> Option<Vec<u8>> {
        match envelope.kind {
            EnvelopeKind::PreKey | EnvelopeKind::Message => self.adversary_open_pairwise(envelope),
            EnvelopeKind::Group => self.adversary_open_group(envelope),
            EnvelopeKind::Media => None,
        }
    }

    fn adversary_open_pairwise(&mut self, envelope: &Envelope) -> Option<Vec<u8>> {
        let suite = self.config.suite;
        let State { sessions, prekeys, rng, retained, .. } = &mut self.state;
        let (from, kind, ct) = (&envelope.from, envelope.kind, &envelope.ciphertext);
        if let Ok(opened) = sessions.decrypt(suite, prekeys, from, kind, ct, rng) {
            return Some(opened.payload.encode());
        }
        for item in &retained.0 {
            let Retained::Pairwise { peer, sessions } = item else { continue };
            if peer != from {
                continue;
            }
            let Some(mut copy) = Sessions::from_snapshot(peer, sessions) else { continue };
            if let Ok(opened) = copy.decrypt(suite, prekeys, from, kind, ct, rng) {
                return Some(opened.payload.encode());
            }
        }
        None
    }

    fn adversary_open_group(&mut self, envelope: &Envelope) -> Option<Vec<u8>> {
        let group = envelope.group?;
        let message = GroupMessage::from_bytes(&envelope.ciphertext).ok()?;
        let sender = &envelope.from.user;
        let groups = &mut self.state.groups;
        let key = (group, sender.clone());
        for record in [groups.records.get_mut(&key), groups.late_records.get_mut(&key)].into_iter().flatten() {
            if let Ok(plaintext) = record.decrypt(&message) {
                return Some(plaintext.to_vec());
            }
        }
        for item in &self.state.retained.0 {
            let Retained::Group { group: g, sender: s, record } = item else { continue };
            if *g != group || s != sender {
                continue;
            }
            let mut copy = record.clone();
            if let Ok(plaintext) = copy.decrypt(&message) {
                return Some(plaintext.to_vec());
            }
        }
        None
    }
}
