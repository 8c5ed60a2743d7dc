//! Presence on the client: who the user follows and who may see the user.
//!
//! Both wishes are persisted and sent again after every `Welcome`, because
//! the server drops subscriptions with the connection (protocol 10) and
//! `PresencePrivacy` has no reply (a lost one would otherwise never be
//! noticed; sending it again is idempotent). A subscription is answered at
//! once with one `Presence` per followed user; a user whose answer has not
//! come within the resend interval makes the client subscribe again
//! (re-subscribing is not throttled by the server and replaces the list).

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::{Client, ClientBug, ClientError, Conn};
use crate::ids::UserId;
use crate::server::presence::{CONTACTS_MAX, SUBSCRIPTIONS_MAX};
use crate::wire::{ClientFrame, Visibility};

/// The persistent presence wishes of this account.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct PresenceWishes {
    /// Users followed.
    subscriptions: BTreeSet<UserId>,
    /// The privacy setting and its contact list, once the app set one.
    privacy: Option<(Visibility, BTreeSet<UserId>)>,
}

/// What was sent on the current connection.
#[derive(Debug, Default, Serialize)]
pub(crate) struct PresenceVolatile {
    privacy_sent: bool,
    /// When the subscription went out on this connection.
    subscribed_at: Option<u64>,
    /// Followed users whose first `Presence` on this subscription is missing.
    awaiting: BTreeSet<UserId>,
    /// An empty list must be sent to drop the server's subscriptions.
    unsubscribe_owed: bool,
    /// Set once a subscription went out; kept across reconnects (not across
    /// crashes) only for [`ClientBug::NoPresenceResubscribe`].
    subscribed_once: bool,
}

impl PresenceVolatile {
    /// A new connection: everything is to be sent again.
    pub fn reset(&mut self) {
        let once = self.subscribed_once;
        *self = PresenceVolatile { subscribed_once: once, ..PresenceVolatile::default() };
    }
}

impl Client {
    /// Sets who may see this user's presence (`contacts` is what
    /// [`Visibility::Contacts`] refers to). Persisted, sent now if connected
    /// and again after every login.
    pub fn set_presence_privacy(
        &mut self,
        visibility: Visibility,
        contacts: &[UserId],
        now_ms: u64,
    ) -> Result<(), ClientError> {
        let contacts: BTreeSet<UserId> = contacts.iter().cloned().collect();
        if contacts.len() > CONTACTS_MAX {
            return Err(ClientError::TooManyContacts { len: contacts.len(), max: CONTACTS_MAX });
        }
        self.touch();
        self.state.presence.privacy = Some((visibility, contacts));
        self.vol.presence.privacy_sent = false;
        self.flush(now_ms);
        Ok(())
    }

    /// Replaces the list of users whose presence the app follows; each is
    /// then reported as [`super::AppEvent::Presence`] (at once, and on every
    /// change the server pushes). An empty list follows nobody.
    pub fn subscribe_presence(&mut self, users: &[UserId], now_ms: u64) -> Result<(), ClientError> {
        let users: BTreeSet<UserId> = users.iter().cloned().collect();
        if users.len() > SUBSCRIPTIONS_MAX {
            return Err(ClientError::TooManySubscriptions { len: users.len(), max: SUBSCRIPTIONS_MAX });
        }
        self.touch();
        if users.is_empty() && !self.state.presence.subscriptions.is_empty() {
            self.vol.presence.unsubscribe_owed = true;
        }
        self.state.presence.subscriptions = users;
        self.vol.presence.subscribed_at = None;
        self.vol.presence.awaiting.clear();
        self.flush(now_ms);
        Ok(())
    }

    /// The users the app follows.
    pub fn presence_subscriptions(&self) -> impl Iterator<Item = &UserId> {
        self.state.presence.subscriptions.iter()
    }

    /// Sends the privacy setting and the subscription if this connection has
    /// not had them yet.
    pub(super) fn flush_presence(&mut self, now_ms: u64) {
        if self.vol.conn != Conn::Ready {
            return;
        }
        let vol = &mut self.vol.presence;
        if !vol.privacy_sent {
            if let Some((visibility, contacts)) = &self.state.presence.privacy {
                self.vol.transmits.push_back(ClientFrame::PresencePrivacy {
                    visibility: *visibility,
                    contacts: contacts.iter().cloned().collect(),
                });
            }
            self.vol.presence.privacy_sent = true;
        }
        let vol = &mut self.vol.presence;
        if vol.subscribed_at.is_some() {
            return;
        }
        let subs = &self.state.presence.subscriptions;
        if subs.is_empty() {
            if vol.unsubscribe_owed {
                vol.unsubscribe_owed = false;
                self.vol.transmits.push_back(ClientFrame::PresenceSubscribe { users: Vec::new() });
            }
            return;
        }
        if vol.subscribed_once && self.config.bugs.has(ClientBug::NoPresenceResubscribe) {
            return;
        }
        vol.subscribed_at = Some(now_ms);
        vol.subscribed_once = true;
        vol.awaiting = subs.clone();
        vol.unsubscribe_owed = false;
        self.vol.transmits.push_back(ClientFrame::PresenceSubscribe { users: subs.iter().cloned().collect() });
    }

    /// When the subscription is to be sent again for want of an answer.
    pub(super) fn presence_deadline(&self) -> Option<u64> {
        let vol = &self.vol.presence;
        if vol.awaiting.is_empty() {
            return None;
        }
        vol.subscribed_at.map(|at| at.saturating_add(self.config.resend_after()))
    }

    /// Resend timer: subscribe again if an answer is still missing.
    pub(super) fn presence_timeout(&mut self, now_ms: u64) {
        if self.presence_deadline().is_some_and(|at| at <= now_ms) {
            self.vol.presence.subscribed_at = None;
        }
    }

    /// A `Presence` frame arrived for `user`.
    pub(super) fn on_presence(&mut self, user: &UserId) {
        self.vol.presence.awaiting.remove(user);
    }
}
