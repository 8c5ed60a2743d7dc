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

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::client::DeliveryState;
use crate::ids::{DeviceAddress, MessageId, UserId};

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
    /// Every server-acked message reaches every intended app or is reported expired.
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
}

/// A message as the sending app asked for it.
#[derive(Debug, Clone)]
pub struct SentMessage {
    /// The sending user.
    pub from: UserId,
    /// Intended recipients (one for 1:1, the other members for a group).
    pub to: BTreeSet<UserId>,
    /// The plaintext.
    pub body: Vec<u8>,
}

/// What happened, as seen from the apps and the wire.
#[derive(Debug, Default)]
pub struct History {
    /// Every message an app asked to send.
    pub sent: BTreeMap<MessageId, SentMessage>,
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
    /// Counters for reports.
    pub counts: Counts,
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
            if sent.body != body {
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
        if state == DeliveryState::Expired {
            self.expired.insert((id, peer.clone()));
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
    /// app, or its sender was told it expired.
    pub fn check_at_least_once(&self, at_ms: u64) -> Vec<Violation> {
        let mut out = Vec::new();
        for id in &self.server_acked {
            let Some(m) = self.sent.get(id) else { continue };
            for to in &m.to {
                let got = self.received.contains_key(&(to.clone(), *id));
                let expired = self.expired.contains(&(*id, to.clone()));
                if !got && !expired {
                    out.push(Violation {
                        invariant: names::AT_LEAST_ONCE,
                        at_ms,
                        detail: format!(
                            "{id:?} from {:?} was accepted by the server but never reached {to:?}'s app",
                            m.from
                        ),
                    });
                }
            }
        }
        out
    }

    /// Searches `haystack` for any sent plaintext.
    pub fn find_plaintext<'a>(&'a self, haystack: &[u8]) -> Option<&'a MessageId> {
        self.sent.iter().find(|(_, m)| m.body.len() >= 8 && contains(haystack, &m.body)).map(|(id, _)| id)
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.len() <= haystack.len() && haystack.windows(needle.len()).any(|w| w == needle)
}
