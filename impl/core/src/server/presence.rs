//! Presence: who is online, coarse "last seen", throttled pushes, and the
//! owner's privacy setting.
//!
//! The promises, each tested below and in `tests/presence_props.rs`:
//! - **Privacy holds against timing**: a subscriber the owner's [`Visibility`]
//!   excludes reads [`LastSeen::LongAgo`] (the same as "never seen") and never
//!   receives a push caused by the owner's activity, so not even the moment of
//!   a change leaks. (When the owner *changes the setting* so that a subscriber
//!   becomes excluded or permitted, that subscriber is pushed its new view once,
//!   so what it shows converges to what it may see.)
//! - **Coarse**: only the buckets of [`coarsen`] ever leave the server, never a
//!   timestamp.
//! - **Throttled and coalesced**: at most one push per (subscriber, target) per
//!   [`PRESENCE_PUSH_INTERVAL_MS`]. Changes inside the interval are folded; when
//!   it ends the current view is pushed if it differs from the last one sent, so
//!   a quick offline/online flap sends nothing.
//! - **Converges**: once nothing changes, every subscriber's last push (or
//!   subscribe reply) equals its current view, including the view aging from
//!   "recently" to "within a week" and on without any activity.
//!
//! # Durable and volatile state
//! Per user the durable part is [`UserPresence`] (visibility, contacts, last
//! seen); the owning server writes changed ones to its store
//! ([`Presence::take_dirty`], [`Presence::record`]) and rebuilds with
//! [`Presence::load`]. Online flags, subscriptions and pending pushes are
//! per connection: a restart drops every connection, so they start empty and
//! clients re-send their subscriptions when they reconnect. (A serde round trip
//! of the whole [`Presence`], as a simulator snapshot takes, keeps them.)

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::ids::UserId;
use crate::wire::{LastSeen, Visibility, BATCH_LEN_MAX};

/// Shortest gap between two pushes to one subscriber about one user. Five
/// seconds hides the fine timing of flaps (app switching) and bounds the push
/// rate a busy user causes per follower, while "online" still shows promptly.
pub const PRESENCE_PUSH_INTERVAL_MS: u64 = 5_000;

/// Most contacts in a privacy contact list. 5,000 is WhatsApp's broadcast and
/// typical address-book scale; the list then encodes in about 165 KiB, inside
/// one frame.
pub const CONTACTS_MAX: usize = 5_000;

/// Most users one subscriber follows. The list is replaced whole by one
/// `PresenceSubscribe` frame, which carries at most [`BATCH_LEN_MAX`] items,
/// so a larger limit could never be reached; 512 is more than a chat list shows.
pub const SUBSCRIPTIONS_MAX: usize = BATCH_LEN_MAX;

const DAY_MS: u64 = 24 * 60 * 60 * 1000;

/// Last seen at most this long ago shows as [`LastSeen::Recently`] (3 days).
pub const RECENTLY_MS: u64 = 3 * DAY_MS;

/// Last seen at most this long ago shows as [`LastSeen::WithinWeek`] (7 days).
pub const WITHIN_WEEK_MS: u64 = 7 * DAY_MS;

/// Last seen at most this long ago shows as [`LastSeen::WithinMonth`] (30 days).
pub const WITHIN_MONTH_MS: u64 = 30 * DAY_MS;

/// The bucket thresholds in order; the view changes 1 ms after each.
const AGING_THRESHOLDS_MS: [u64; 3] = [RECENTLY_MS, WITHIN_WEEK_MS, WITHIN_MONTH_MS];

/// The coarse view of a user: [`LastSeen::Online`] while online; otherwise by
/// the time since `last_seen_ms` (inclusive upper bounds): up to
/// [`RECENTLY_MS`] → `Recently`, up to [`WITHIN_WEEK_MS`] → `WithinWeek`, up
/// to [`WITHIN_MONTH_MS`] → `WithinMonth`, older or never → `LongAgo`. A last
/// seen in the future (clock step back) counts as just now.
pub fn coarsen(online: bool, last_seen_ms: Option<u64>, now_ms: u64) -> LastSeen {
    if online {
        return LastSeen::Online;
    }
    let Some(at) = last_seen_ms else {
        return LastSeen::LongAgo;
    };
    let age = now_ms.saturating_sub(at);
    if age <= RECENTLY_MS {
        LastSeen::Recently
    } else if age <= WITHIN_WEEK_MS {
        LastSeen::WithinWeek
    } else if age <= WITHIN_MONTH_MS {
        LastSeen::WithinMonth
    } else {
        LastSeen::LongAgo
    }
}

/// Why a presence call was refused; nothing changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PresenceError {
    /// The contact list is longer than [`CONTACTS_MAX`].
    #[error("contact list of {len} users exceeds the limit of {max}")]
    TooManyContacts {
        /// Users given.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The subscription list is longer than [`SUBSCRIPTIONS_MAX`].
    #[error("subscription list of {len} users exceeds the limit of {max}")]
    TooManySubscriptions {
        /// Users given.
        len: usize,
        /// The limit.
        max: usize,
    },
}

/// Deliberate bugs a test, scenario or model check can switch on to prove its
/// checker notices. Off by default; never set them in a real deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PresenceBug {
    /// Treat every subscriber as permitted: pushes and replies go to everyone.
    IgnorePrivacy,
    /// Push every change at once, ignoring [`PRESENCE_PUSH_INTERVAL_MS`].
    NoThrottle,
}

/// One user's durable presence record.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserPresence {
    /// Who may see this user's presence.
    pub visibility: Visibility,
    /// The contacts [`Visibility::Contacts`] refers to.
    pub contacts: BTreeSet<UserId>,
    /// When the user last connected or disconnected, ms since the epoch.
    pub last_seen_ms: Option<u64>,
}

/// A presence update to send: `to` should get `ServerFrame::Presence { user, last_seen }`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Push {
    /// The subscriber.
    pub to: UserId,
    /// Whose presence.
    pub user: UserId,
    /// What the subscriber may see.
    pub last_seen: LastSeen,
}

/// Running totals for reports (volatile: not persisted).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceCounters {
    /// Pushes handed out by [`Presence::poll_pushes`].
    pub pushes_sent: u64,
    /// Changes that did not get a push of their own: folded into a pending
    /// push, or undone before the interval ended.
    pub pushes_coalesced: u64,
    /// Changes not even considered for a subscriber because the owner's
    /// privacy setting excludes it.
    pub pushes_suppressed_by_privacy: u64,
}

/// Throttle state of one (subscriber, target) pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Slot {
    /// What the subscriber was last told (push or subscribe reply).
    last_sent: LastSeen,
    /// When.
    last_sent_ms: u64,
    /// When the pending push is due, if one is.
    due_ms: Option<u64>,
}

/// Presence state of all users.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Presence {
    /// Durable.
    users: BTreeMap<UserId, UserPresence>,
    /// Volatile from here on.
    online: BTreeSet<UserId>,
    /// subscriber → targets.
    subscriptions: BTreeMap<UserId, BTreeSet<UserId>>,
    /// target → subscribers.
    followers: BTreeMap<UserId, BTreeSet<UserId>>,
    /// (subscriber, target) → throttle state; exactly the subscribed pairs.
    slots: BTreeMap<(UserId, UserId), Slot>,
    /// (due, subscriber, target) of pending pushes.
    due: BTreeSet<(u64, UserId, UserId)>,
    /// Offline users with followers → when their view next ages.
    aging: BTreeMap<UserId, u64>,
    /// (when, user) mirror of `aging`, for the timer.
    aging_due: BTreeSet<(u64, UserId)>,
    dirty: BTreeSet<UserId>,
    counters: PresenceCounters,
    bug: Option<PresenceBug>,
}

impl Presence {
    /// Nobody online, no subscriptions, default privacy for everyone.
    pub fn new() -> Self {
        Presence::default()
    }

    /// Switches a deliberate bug on (or off with `None`); see [`PresenceBug`].
    pub fn set_bug(&mut self, bug: Option<PresenceBug>) {
        self.bug = bug;
    }

    /// Running totals.
    pub fn counters(&self) -> &PresenceCounters {
        &self.counters
    }

    /// Whether `user` is online.
    pub fn is_online(&self, user: &UserId) -> bool {
        self.online.contains(user)
    }

    /// When `user` last connected or disconnected (exact; server-internal).
    pub fn last_seen_ms(&self, user: &UserId) -> Option<u64> {
        self.users.get(user).and_then(|u| u.last_seen_ms)
    }

    /// The users `subscriber` follows.
    pub fn subscriptions(&self, subscriber: &UserId) -> impl Iterator<Item = &UserId> {
        self.subscriptions.get(subscriber).into_iter().flatten()
    }

    /// Whether `owner`'s setting lets `viewer` see its presence. Users never
    /// configured have the default, [`Visibility::Everyone`].
    pub fn permits(&self, owner: &UserId, viewer: &UserId) -> bool {
        if self.bug == Some(PresenceBug::IgnorePrivacy) {
            return true;
        }
        match self.users.get(owner) {
            None => true,
            Some(u) => match u.visibility {
                Visibility::Everyone => true,
                Visibility::Contacts => u.contacts.contains(viewer),
                Visibility::Nobody => false,
            },
        }
    }

    /// What `viewer` may see of `owner` at `now_ms`: the coarse state if
    /// permitted, else [`LastSeen::LongAgo`], indistinguishable from a user
    /// never seen.
    pub fn visible_to(&self, owner: &UserId, viewer: &UserId, now_ms: u64) -> LastSeen {
        if !self.permits(owner, viewer) {
            return LastSeen::LongAgo;
        }
        coarsen(self.online.contains(owner), self.last_seen_ms(owner), now_ms)
    }

    /// Sets who may see `owner`'s presence and the contact list
    /// [`Visibility::Contacts`] refers to (duplicates are ignored). A follower
    /// whose view changes because of it is pushed the new view (throttled).
    pub fn set_privacy(
        &mut self,
        owner: &UserId,
        visibility: Visibility,
        contacts: Vec<UserId>,
        now_ms: u64,
    ) -> Result<(), PresenceError> {
        if contacts.len() > CONTACTS_MAX {
            return Err(PresenceError::TooManyContacts { len: contacts.len(), max: CONTACTS_MAX });
        }
        let record = self.users.entry(owner.clone()).or_default();
        record.visibility = visibility;
        record.contacts = contacts.into_iter().collect();
        self.dirty.insert(owner.clone());
        for follower in self.followers_of(owner) {
            self.touch(&follower, owner, now_ms);
        }
        Ok(())
    }

    /// `owner`'s durable record, if it ever connected or set its privacy.
    pub fn record(&self, owner: &UserId) -> Option<UserPresence> {
        self.users.get(owner).cloned()
    }

    /// Replaces `subscriber`'s subscription list with `targets` (duplicates are
    /// ignored) and returns what it may see of each, in user order. The reply
    /// counts as a push for throttling and replaces any pending one. A target
    /// whose privacy excludes the subscriber reads [`LastSeen::LongAgo`].
    pub fn subscribe(
        &mut self,
        subscriber: &UserId,
        targets: Vec<UserId>,
        now_ms: u64,
    ) -> Result<Vec<(UserId, LastSeen)>, PresenceError> {
        if targets.len() > SUBSCRIPTIONS_MAX {
            return Err(PresenceError::TooManySubscriptions { len: targets.len(), max: SUBSCRIPTIONS_MAX });
        }
        let new: BTreeSet<UserId> = targets.into_iter().collect();
        let old = self.subscriptions.remove(subscriber).unwrap_or_default();
        for gone in old.difference(&new) {
            self.drop_pair(subscriber, gone);
        }
        let mut reply = Vec::with_capacity(new.len());
        for target in &new {
            let view = self.visible_to(target, subscriber, now_ms);
            let key = (subscriber.clone(), target.clone());
            if let Some(due) = self.slots.get(&key).and_then(|s| s.due_ms) {
                self.due.remove(&(due, subscriber.clone(), target.clone()));
            }
            self.slots.insert(key, Slot { last_sent: view, last_sent_ms: now_ms, due_ms: None });
            self.followers.entry(target.clone()).or_default().insert(subscriber.clone());
            self.schedule_aging(target, now_ms);
            reply.push((target.clone(), view));
        }
        if !new.is_empty() {
            self.subscriptions.insert(subscriber.clone(), new);
        }
        Ok(reply)
    }

    /// Drops all of `subscriber`'s subscriptions and pending pushes to it.
    pub fn unsubscribe_all(&mut self, subscriber: &UserId) {
        for target in self.subscriptions.remove(subscriber).unwrap_or_default() {
            self.drop_pair(subscriber, &target);
        }
    }

    /// `user` connected (`true`) or disconnected (`false`). Either way its last
    /// seen becomes `now_ms` (recorded on connect too, so after a crash it is
    /// no older than the connection). Permitted followers get a throttled push.
    /// Disconnecting also drops the user's own subscriptions: they belong to
    /// the connection and the client re-sends them. A repeated call with the
    /// same state changes nothing (beyond dropping subscriptions again).
    ///
    /// With several devices, call with `true` when the first connects and
    /// `false` when the last disconnects.
    pub fn set_online(&mut self, user: &UserId, online: bool, now_ms: u64) {
        if !online {
            self.unsubscribe_all(user);
        }
        if self.online.contains(user) == online {
            return;
        }
        if online {
            self.online.insert(user.clone());
        } else {
            self.online.remove(user);
        }
        self.users.entry(user.clone()).or_default().last_seen_ms = Some(now_ms);
        self.dirty.insert(user.clone());
        self.notify_activity(user, now_ms);
        self.schedule_aging(user, now_ms);
    }

    /// Pushes due at `now_ms`, sorted by (subscriber, user); at most one per
    /// pair. Afterwards [`Presence::next_deadline_ms`] is later than `now_ms`
    /// or `None`.
    pub fn poll_pushes(&mut self, now_ms: u64) -> Vec<Push> {
        // Aging first: it may make a push due at `now_ms`, sent below.
        while let Some((at, user)) = self.aging_due.first().cloned() {
            if at > now_ms {
                break;
            }
            self.aging_due.remove(&(at, user.clone()));
            self.aging.remove(&user);
            self.notify_activity(&user, now_ms);
            self.schedule_aging(&user, now_ms);
        }
        let mut out = Vec::new();
        while let Some(first) = self.due.first().cloned() {
            if first.0 > now_ms {
                break;
            }
            self.due.remove(&first);
            let (_, to, user) = first;
            let view = self.visible_to(&user, &to, now_ms);
            let Some(slot) = self.slots.get_mut(&(to.clone(), user.clone())) else {
                continue;
            };
            slot.due_ms = None;
            if view == slot.last_sent {
                self.counters.pushes_coalesced += 1;
                continue;
            }
            slot.last_sent = view;
            slot.last_sent_ms = now_ms;
            self.counters.pushes_sent += 1;
            out.push(Push { to, user, last_seen: view });
        }
        out.sort();
        out
    }

    /// When [`Presence::poll_pushes`] next has something to do: a throttled
    /// push falling due, or an offline user's view aging into the next bucket.
    pub fn next_deadline_ms(&self) -> Option<u64> {
        let push = self.due.first().map(|d| d.0);
        let aging = self.aging_due.first().map(|a| a.0);
        match (push, aging) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Users whose [`UserPresence`] changed since the last call, in order; the
    /// caller writes each one's [`Presence::record`] to its store.
    pub fn take_dirty(&mut self) -> Vec<UserId> {
        std::mem::take(&mut self.dirty).into_iter().collect()
    }

    /// Rebuilds the durable part from stored records after a restart (meant
    /// for a fresh `Presence`; a record replaces any with the same user).
    /// Loaded users are not dirty.
    pub fn load(&mut self, records: impl IntoIterator<Item = (UserId, UserPresence)>) {
        self.users.extend(records);
    }

    fn followers_of(&self, owner: &UserId) -> Vec<UserId> {
        self.followers.get(owner).map(|f| f.iter().cloned().collect()).unwrap_or_default()
    }

    /// `owner`'s state changed by its own activity (or aged): consider a push
    /// to each follower its setting permits. Excluded followers are skipped
    /// before anything is scheduled, so they cannot observe even the timing.
    fn notify_activity(&mut self, owner: &UserId, now_ms: u64) {
        for follower in self.followers_of(owner) {
            if self.permits(owner, &follower) {
                self.touch(&follower, owner, now_ms);
            } else {
                self.counters.pushes_suppressed_by_privacy += 1;
            }
        }
    }

    /// `target`'s view for `subscriber` may have changed: schedule a push for
    /// when the interval since the last one ends, unless one is pending (then
    /// this change is folded into it) or the view is what was last sent.
    fn touch(&mut self, subscriber: &UserId, target: &UserId, now_ms: u64) {
        let view = self.visible_to(target, subscriber, now_ms);
        let Some(slot) = self.slots.get_mut(&(subscriber.clone(), target.clone())) else {
            return;
        };
        if slot.due_ms.is_some() {
            self.counters.pushes_coalesced += 1;
            return;
        }
        if view == slot.last_sent {
            return;
        }
        let due = if self.bug == Some(PresenceBug::NoThrottle) {
            now_ms
        } else {
            now_ms.max(slot.last_sent_ms.saturating_add(PRESENCE_PUSH_INTERVAL_MS))
        };
        slot.due_ms = Some(due);
        self.due.insert((due, subscriber.clone(), target.clone()));
    }

    fn drop_pair(&mut self, subscriber: &UserId, target: &UserId) {
        if let Some(slot) = self.slots.remove(&(subscriber.clone(), target.clone())) {
            if let Some(due) = slot.due_ms {
                self.due.remove(&(due, subscriber.clone(), target.clone()));
            }
        }
        if let Some(f) = self.followers.get_mut(target) {
            f.remove(subscriber);
            if f.is_empty() {
                self.followers.remove(target);
                self.unschedule_aging(target);
            }
        }
    }

    fn unschedule_aging(&mut self, user: &UserId) {
        if let Some(at) = self.aging.remove(user) {
            self.aging_due.remove(&(at, user.clone()));
        }
    }

    /// (Re)arms the timer for the next bucket change of an offline user with
    /// followers; only followed users need one.
    fn schedule_aging(&mut self, user: &UserId, now_ms: u64) {
        self.unschedule_aging(user);
        if self.online.contains(user) || !self.followers.contains_key(user) {
            return;
        }
        let Some(seen) = self.last_seen_ms(user) else {
            return;
        };
        let next =
            AGING_THRESHOLDS_MS.iter().map(|t| seen.saturating_add(*t).saturating_add(1)).find(|at| *at > now_ms);
        if let Some(at) = next {
            self.aging.insert(user.clone(), at);
            self.aging_due.insert((at, user.clone()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u(name: &str) -> UserId {
        UserId::new(name).unwrap()
    }

    /// Polls at every deadline up to `until` and returns the pushes with their times.
    fn run_until(p: &mut Presence, until: u64) -> Vec<(u64, Push)> {
        let mut out = vec![];
        while let Some(at) = p.next_deadline_ms() {
            if at > until {
                break;
            }
            out.extend(p.poll_pushes(at).into_iter().map(|x| (at, x)));
            assert!(p.next_deadline_ms().is_none_or(|d| d > at), "deadline not after poll at {at}");
        }
        out
    }

    #[test]
    fn coarsening_boundaries_are_inclusive() {
        assert_eq!(coarsen(true, None, 0), LastSeen::Online);
        assert_eq!(coarsen(true, Some(0), u64::MAX), LastSeen::Online);
        assert_eq!(coarsen(false, None, 5), LastSeen::LongAgo);
        let t = 1_000_000_000_000;
        assert_eq!(coarsen(false, Some(t), t), LastSeen::Recently);
        assert_eq!(coarsen(false, Some(t + 10), t), LastSeen::Recently, "future last seen counts as now");
        assert_eq!(coarsen(false, Some(t), t + RECENTLY_MS), LastSeen::Recently);
        assert_eq!(coarsen(false, Some(t), t + RECENTLY_MS + 1), LastSeen::WithinWeek);
        assert_eq!(coarsen(false, Some(t), t + WITHIN_WEEK_MS), LastSeen::WithinWeek);
        assert_eq!(coarsen(false, Some(t), t + WITHIN_WEEK_MS + 1), LastSeen::WithinMonth);
        assert_eq!(coarsen(false, Some(t), t + WITHIN_MONTH_MS), LastSeen::WithinMonth);
        assert_eq!(coarsen(false, Some(t), t + WITHIN_MONTH_MS + 1), LastSeen::LongAgo);
        assert_eq!(coarsen(false, Some(0), u64::MAX), LastSeen::LongAgo);
        // The boundaries are the product's promise (3 days, a week, a month),
        // pinned in hours so a slip in their arithmetic shows.
        let hours = |ms: u64| ms / 3_600_000;
        assert_eq!((hours(RECENTLY_MS), hours(WITHIN_WEEK_MS), hours(WITHIN_MONTH_MS)), (72, 168, 720));
    }

    #[test]
    fn privacy_decides_what_a_subscriber_reads() {
        let (bob, alice, eve) = (u("bob"), u("alice"), u("eve"));
        let mut p = Presence::new();
        p.set_online(&bob, true, 100);
        let read = |p: &mut Presence, who: &UserId| p.subscribe(who, vec![bob.clone()], 200).unwrap()[0].1;
        assert_eq!(read(&mut p, &alice), LastSeen::Online, "default is Everyone");
        assert_eq!(read(&mut p, &eve), LastSeen::Online);
        p.set_privacy(&bob, Visibility::Contacts, vec![alice.clone()], 300).unwrap();
        assert_eq!(read(&mut p, &alice), LastSeen::Online);
        assert_eq!(read(&mut p, &eve), LastSeen::LongAgo);
        p.set_privacy(&bob, Visibility::Nobody, vec![alice.clone()], 400).unwrap();
        assert_eq!(read(&mut p, &alice), LastSeen::LongAgo);
        assert_eq!(read(&mut p, &eve), LastSeen::LongAgo);
        // Excluded reads exactly like a user never seen.
        assert_eq!(p.subscribe(&eve, vec![u("nobody")], 500).unwrap(), vec![(u("nobody"), LastSeen::LongAgo)]);
        p.set_privacy(&bob, Visibility::Everyone, vec![], 600).unwrap();
        assert_eq!(read(&mut p, &eve), LastSeen::Online);
    }

    #[test]
    fn an_excluded_subscriber_gets_no_push_from_the_owners_activity() {
        for (visibility, contacts) in [(Visibility::Nobody, vec![]), (Visibility::Contacts, vec![u("alice")])] {
            let (bob, alice, eve) = (u("bob"), u("alice"), u("eve"));
            let mut p = Presence::new();
            p.set_privacy(&bob, visibility, contacts, 0).unwrap();
            p.subscribe(&eve, vec![bob.clone()], 0).unwrap();
            p.subscribe(&alice, vec![bob.clone()], 0).unwrap();
            let mut t = 0;
            let mut pushes = vec![];
            for i in 0..20u64 {
                t += 1_000 + i * 777;
                p.set_online(&bob, i % 2 == 0, t);
                pushes.extend(p.poll_pushes(t));
            }
            pushes.extend(run_until(&mut p, u64::MAX).into_iter().map(|(_, x)| x));
            assert!(pushes.iter().all(|x| x.to != eve), "{visibility:?}: {pushes:?}");
            let to_alice = pushes.iter().filter(|x| x.to == alice).count();
            assert_eq!(to_alice > 0, visibility == Visibility::Contacts, "{visibility:?}");
            assert!(p.counters().pushes_suppressed_by_privacy >= 20);
        }
    }

    #[test]
    fn ignore_privacy_bug_pushes_to_the_excluded_subscriber() {
        let (bob, eve) = (u("bob"), u("eve"));
        let mut p = Presence::new();
        p.set_bug(Some(PresenceBug::IgnorePrivacy));
        p.set_privacy(&bob, Visibility::Nobody, vec![], 0).unwrap();
        p.subscribe(&eve, vec![bob.clone()], 0).unwrap();
        p.set_online(&bob, true, 10_000);
        assert_eq!(p.poll_pushes(10_000), vec![Push { to: eve, user: bob, last_seen: LastSeen::Online }]);
    }

    #[test]
    fn changes_inside_the_interval_are_coalesced_and_the_latest_is_pushed_when_it_ends() {
        let (bob, alice) = (u("bob"), u("alice"));
        let mut p = Presence::new();
        p.subscribe(&alice, vec![bob.clone()], 0).unwrap();
        // The subscribe reply counts as a push at 0: the change at 1 s waits.
        p.set_online(&bob, true, 1_000);
        assert!(p.poll_pushes(1_000).is_empty());
        assert_eq!(p.next_deadline_ms(), Some(PRESENCE_PUSH_INTERVAL_MS));
        p.set_online(&bob, false, 2_000);
        p.set_online(&bob, true, 3_000);
        assert!(p.poll_pushes(PRESENCE_PUSH_INTERVAL_MS - 1).is_empty());
        let online = Push { to: alice.clone(), user: bob.clone(), last_seen: LastSeen::Online };
        assert_eq!(p.poll_pushes(PRESENCE_PUSH_INTERVAL_MS), vec![online]);
        assert_eq!(p.counters().pushes_coalesced, 2);
        assert_eq!(p.counters().pushes_sent, 1);
        // Next change right after a push waits a full interval.
        p.set_online(&bob, false, 5_001);
        assert_eq!(p.next_deadline_ms(), Some(2 * PRESENCE_PUSH_INTERVAL_MS));
        assert!(p.poll_pushes(9_999).is_empty());
        let recently = Push { to: alice, user: bob, last_seen: LastSeen::Recently };
        assert_eq!(p.poll_pushes(10_000), vec![recently]);
        // Quiet now: nothing but the aging timer remains.
        assert_eq!(p.next_deadline_ms(), Some(5_001 + RECENTLY_MS + 1));
    }

    #[test]
    fn a_flap_back_to_what_was_last_sent_sends_nothing() {
        let (bob, alice) = (u("bob"), u("alice"));
        let mut p = Presence::new();
        p.set_online(&bob, true, 0);
        p.subscribe(&alice, vec![bob.clone()], 0).unwrap();
        p.set_online(&bob, false, 1_000);
        p.set_online(&bob, true, 1_500);
        assert!(run_until(&mut p, u64::MAX).is_empty());
        assert_eq!(p.counters().pushes_sent, 0);
        assert_eq!(p.counters().pushes_coalesced, 2);
        assert_eq!(p.next_deadline_ms(), None);
    }

    #[test]
    fn an_offline_users_view_ages_through_the_buckets_without_activity() {
        let (bob, alice) = (u("bob"), u("alice"));
        let mut p = Presence::new();
        p.set_online(&bob, true, 0);
        p.set_online(&bob, false, 1_000);
        assert_eq!(p.next_deadline_ms(), None, "no follower, no timer");
        p.subscribe(&alice, vec![bob.clone()], 2_000).unwrap();
        let pushes = run_until(&mut p, u64::MAX);
        let got: Vec<(u64, LastSeen)> = pushes.into_iter().map(|(t, x)| (t, x.last_seen)).collect();
        assert_eq!(
            got,
            vec![
                (1_000 + RECENTLY_MS + 1, LastSeen::WithinWeek),
                (1_000 + WITHIN_WEEK_MS + 1, LastSeen::WithinMonth),
                (1_000 + WITHIN_MONTH_MS + 1, LastSeen::LongAgo),
            ]
        );
        assert_eq!(p.next_deadline_ms(), None);
    }

    #[test]
    fn a_privacy_change_pushes_each_follower_its_new_view_once() {
        let (bob, alice, eve) = (u("bob"), u("alice"), u("eve"));
        let mut p = Presence::new();
        p.set_online(&bob, true, 0);
        p.subscribe(&alice, vec![bob.clone()], 0).unwrap();
        p.subscribe(&eve, vec![bob.clone()], 0).unwrap();
        p.set_privacy(&bob, Visibility::Contacts, vec![alice.clone()], 10_000).unwrap();
        assert_eq!(
            p.poll_pushes(10_000),
            vec![Push { to: eve.clone(), user: bob.clone(), last_seen: LastSeen::LongAgo }]
        );
        p.set_online(&bob, false, 20_000);
        assert_eq!(p.poll_pushes(20_000), vec![Push { to: alice, user: bob.clone(), last_seen: LastSeen::Recently }]);
        p.set_privacy(&bob, Visibility::Everyone, vec![], 30_000).unwrap();
        assert_eq!(p.poll_pushes(30_000), vec![Push { to: eve, user: bob, last_seen: LastSeen::Recently }]);
    }

    #[test]
    fn going_offline_drops_the_users_own_subscriptions_and_pending_pushes() {
        let (bob, alice) = (u("bob"), u("alice"));
        let mut p = Presence::new();
        p.set_online(&alice, true, 0);
        p.subscribe(&alice, vec![bob.clone()], 0).unwrap();
        p.set_online(&bob, true, 1_000);
        assert!(p.next_deadline_ms().is_some());
        p.set_online(&alice, false, 2_000);
        assert_eq!(p.subscriptions(&alice).count(), 0);
        assert_eq!(p.next_deadline_ms(), None);
        assert!(p.poll_pushes(u64::MAX).is_empty());
    }

    #[test]
    fn oversize_lists_are_refused_and_change_nothing() {
        let bob = u("bob");
        let mut p = Presence::new();
        let many = |n: usize| (0..n).map(|i| u(&format!("u{i}"))).collect::<Vec<_>>();
        assert_eq!(
            p.set_privacy(&bob, Visibility::Contacts, many(CONTACTS_MAX + 1), 0),
            Err(PresenceError::TooManyContacts { len: CONTACTS_MAX + 1, max: CONTACTS_MAX })
        );
        assert_eq!(p.record(&bob), None);
        p.subscribe(&bob, vec![u("alice")], 0).unwrap();
        assert_eq!(
            p.subscribe(&bob, many(SUBSCRIPTIONS_MAX + 1), 0),
            Err(PresenceError::TooManySubscriptions { len: SUBSCRIPTIONS_MAX + 1, max: SUBSCRIPTIONS_MAX })
        );
        assert_eq!(p.subscriptions(&bob).cloned().collect::<Vec<_>>(), vec![u("alice")]);
        assert!(p.set_privacy(&bob, Visibility::Contacts, many(CONTACTS_MAX), 0).is_ok());
        assert_eq!(p.subscribe(&bob, many(SUBSCRIPTIONS_MAX), 0).unwrap().len(), SUBSCRIPTIONS_MAX);
    }

    #[test]
    fn durable_records_survive_a_restart_and_online_does_not() {
        let (bob, alice) = (u("bob"), u("alice"));
        let mut p = Presence::new();
        p.set_privacy(&bob, Visibility::Contacts, vec![alice.clone(), alice.clone()], 0).unwrap();
        p.set_online(&bob, true, 1_000);
        p.set_online(&alice, true, 1_000);
        p.set_online(&alice, false, 4_000);
        let mut store = BTreeMap::new();
        for user in p.take_dirty() {
            store.insert(user.clone(), p.record(&user).unwrap());
        }
        assert_eq!(store.len(), 2);
        assert_eq!(store[&bob].contacts.len(), 1);
        assert!(p.take_dirty().is_empty());

        let mut rebuilt = Presence::new();
        rebuilt.load(store);
        assert!(rebuilt.take_dirty().is_empty());
        assert!(!rebuilt.is_online(&bob), "connections do not survive a restart");
        assert_eq!(rebuilt.last_seen_ms(&bob), Some(1_000), "recorded on connect");
        assert_eq!(rebuilt.last_seen_ms(&alice), Some(4_000));
        assert_eq!(rebuilt.visible_to(&bob, &alice, 5_000), LastSeen::Recently);
        assert_eq!(rebuilt.visible_to(&bob, &u("eve"), 5_000), LastSeen::LongAgo);
    }

    #[test]
    fn the_durable_record_encoding_is_pinned() {
        let record = UserPresence {
            visibility: Visibility::Contacts,
            contacts: [u("bob"), u("alice")].into_iter().collect(),
            last_seen_ms: Some(1_700_000_000_000),
        };
        let bytes = postcard::to_allocvec(&record).unwrap();
        // Contacts = variant 1; two contacts in byte order, each length-prefixed;
        // Some(varint of 1_700_000_000_000).
        assert_eq!(hex::encode(&bytes), "010205616c69636503626f620180d095ffbc31");
        assert_eq!(postcard::from_bytes::<UserPresence>(&bytes).unwrap(), record);
    }

    #[test]
    fn a_serde_round_trip_keeps_pending_pushes_and_timers() {
        let (bob, alice) = (u("bob"), u("alice"));
        let mut p = Presence::new();
        p.subscribe(&alice, vec![bob.clone()], 0).unwrap();
        p.set_online(&bob, true, 1_000);
        p.set_online(&bob, false, 2_000);
        let mut copy: Presence = postcard::from_bytes(&postcard::to_allocvec(&p).unwrap()).unwrap();
        assert_eq!(copy, p);
        assert_eq!(run_until(&mut copy, u64::MAX), run_until(&mut p, u64::MAX));
    }
}
