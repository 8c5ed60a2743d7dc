//! What the simulated hosts report, in the order it happened.
//!
//! Observers inside the simulation (a client's [`ClientObserver`], the
//! server's [`ServerObserver`], the store, the fault taps) append
//! [`Record`]s to one shared log; the driver drains it after every tick and
//! feeds it to the [`History`](bluetick_core::world::oracle::History), so
//! the oracle sees the same sequence of calls as the direct driver's
//! `World::after_client` makes.
//!
//! The server's side is seen per connection; [`ServerWatch`] learns which
//! user a connection is from the `Register`/`Authenticate` frame it handles
//! on it, so what the server hands out (redeliveries, presence pushes) and
//! when it counts a user online can be told per user, as the `World` does.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Arc, Mutex};

use bluetick_core::client::{AppEvent, Client, DeliveryState};
use bluetick_core::ids::{DeviceAddress, GroupId, MessageId, UserId};
use bluetick_core::server::ConnId;
use bluetick_core::store::Table;
use bluetick_core::wire::{self, ClientFrame, Delivery, Envelope, LastSeen, ServerFrame, Visibility};
use bluetick_core::world::faults::Direction;
use bluetick_core::world::oracle::Violation;
use bluetick_net::client::{AppAction, ClientEvent, ClientObserver};
use bluetick_net::server::ServerObserver;

use super::net::{lock, sim_now_ms};

/// Records kept between two drains of the log. A tick produces a few dozen
/// at most; this is far above that and only bounds a runaway.
pub const LOG_RECORDS_MAX: usize = 1_000_000;

/// What a fault tap did to one frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FaultAction {
    /// Lost to a fault (background loss or a targeted drop).
    Dropped,
    /// Lost to a framing-layer partition.
    Cut,
    /// Delivered twice.
    Duplicated,
    /// Held back.
    Delayed {
        /// By this long.
        ms: u64,
    },
}

/// One thing that happened inside the simulation. Times are absolute
/// simulated ms (see [`sim_now_ms`]).
#[derive(Debug, Clone)]
pub(crate) enum Record {
    /// An app sent a message (the core accepted it); `group` for a group
    /// message, `media` for an attachment (`body` is then its bytes).
    Sent {
        at_ms: u64,
        from: UserId,
        to: BTreeSet<UserId>,
        id: MessageId,
        body: Vec<u8>,
        group: Option<GroupId>,
        media: bool,
    },
    /// `reader`'s app opened its conversation with `peer`.
    Read { at_ms: u64, reader: UserId, peer: UserId },
    /// `reader`'s app opened a group conversation.
    ReadGroup { at_ms: u64, reader: UserId, group: GroupId },
    /// `user`'s app was shown message `id` from `from` (`body` `None`: as
    /// undecryptable); `media` for an attachment.
    Received {
        at_ms: u64,
        user: UserId,
        from: UserId,
        group: Option<GroupId>,
        id: MessageId,
        body: Option<Vec<u8>>,
        media: bool,
    },
    /// `user`'s app was shown `target`'s presence.
    PresenceShown { at_ms: u64, user: UserId, target: UserId, last_seen: LastSeen },
    /// `user`'s app replaced its presence subscriptions.
    Subscribed { at_ms: u64, user: UserId, users: Vec<UserId> },
    /// `from`'s core produced a `GroupSend` of `id`, sealed for the members
    /// of its view of the group at that moment (itself left out).
    Sealed { id: MessageId, view: BTreeSet<UserId> },
    /// An envelope reached `user`'s core (one copy); the envelope itself
    /// only when ciphertexts are kept for a compromise check.
    EnvelopeIn { user: UserId, id: MessageId, envelope: Option<Box<Envelope>> },
    /// The server handed out item `seq` of `user`'s mailbox.
    HandedOut { at_ms: u64, user: UserId, seq: u64 },
    /// The server counts `user` online (it welcomed a new connection of it).
    Online { at_ms: u64, user: UserId },
    /// The server counts `user` offline (its current connection ended).
    Offline { at_ms: u64, user: UserId },
    /// `user`'s privacy setting reached the server.
    PrivacyApplied { at_ms: u64, user: UserId, visibility: Visibility, contacts: Vec<UserId> },
    /// The server sent `subscriber` `target`'s presence; `reply` when it
    /// answers the subscriber's `PresenceSubscribe` (not a push).
    PresenceSent { at_ms: u64, subscriber: UserId, target: UserId, last_seen: LastSeen, reply: bool },
    /// A sender's app was shown a status for `peer`.
    Status { at_ms: u64, sender: UserId, id: MessageId, peer: UserId, state: DeliveryState },
    /// The server handed out a one-time prekey.
    Prekey { at_ms: u64, owner: DeviceAddress, id: u32 },
    /// A value the server wrote to its store.
    Written { at_ms: u64, table: Table, key: Vec<u8>, value: Vec<u8> },
    /// A fault tap acted on a frame; `about` names the user a presence frame is about.
    Fault {
        at_ms: u64,
        user: UserId,
        direction: Direction,
        kind: &'static str,
        action: FaultAction,
        about: Option<UserId>,
    },
    /// Anything else worth a trace line (`event`, `detail`).
    Note { at_ms: u64, event: &'static str, detail: String },
    /// A check that failed inside the simulation.
    Violation(Violation),
}

/// The shared log and the live numbers the driver polls.
#[derive(Debug, Default)]
pub(crate) struct Log {
    records: Vec<Record>,
    /// Records refused because the log was full (reported as a violation).
    overflow: u64,
    /// Each device's outbox length after its last settled input.
    pub(crate) outbox: BTreeMap<UserId, usize>,
    /// Frame copies the taps let through.
    pub(crate) frames_delivered: u64,
    /// Each device's last report: whether it is logged in (ready).
    pub(crate) ready: BTreeMap<UserId, bool>,
    /// Each device's presence subscriptions after its last settled input
    /// (only devices that ever had one).
    pub(crate) subscriptions: BTreeMap<UserId, Vec<UserId>>,
}

impl Log {
    pub(crate) fn push(&mut self, record: Record) {
        if self.records.len() < LOG_RECORDS_MAX {
            self.records.push(record);
        } else {
            self.overflow += 1;
        }
    }

    /// Everything recorded since the last call, and how many records were lost.
    pub(crate) fn take(&mut self) -> (Vec<Record>, u64) {
        (std::mem::take(&mut self.records), std::mem::take(&mut self.overflow))
    }
}

/// The log as every observer holds it.
pub(crate) type SharedLog = Arc<Mutex<Log>>;

/// Watches one simulated device (its [`ClientObserver`]).
#[derive(Debug)]
pub(crate) struct DeviceObserver {
    pub(crate) user: UserId,
    pub(crate) log: SharedLog,
    /// Keep every delivered envelope for a later compromise check.
    pub(crate) record_ciphertexts: bool,
    /// Group messages already reported sealed (the newest; the driver also
    /// keeps only the first report of each).
    pub(crate) sealed_seen: Mutex<VecDeque<MessageId>>,
}

/// Sealed group messages a device observer remembers; more than a client
/// keeps unacknowledged.
const SEALED_SEEN_MAX: usize = 256;

impl ClientObserver for DeviceObserver {
    fn event(&self, event: &ClientEvent, _now_ms: u64) {
        // The oracle works in true simulated time, not the device's (possibly
        // skewed) clock.
        let at_ms = sim_now_ms();
        let user = self.user.clone();
        let record = match event {
            ClientEvent::App(AppEvent::Message { from, group, id, body, .. }) => Record::Received {
                at_ms,
                user,
                from: from.clone(),
                group: *group,
                id: *id,
                body: Some(body.clone()),
                media: false,
            },
            ClientEvent::App(AppEvent::Media { from, id, body, .. }) => Record::Received {
                at_ms,
                user,
                from: from.clone(),
                group: None,
                id: *id,
                body: Some(body.clone()),
                media: true,
            },
            // Being told a message could not be read is also hearing of it.
            ClientEvent::App(AppEvent::Undecryptable { from, id, .. }) => {
                Record::Received { at_ms, user, from: from.clone(), group: None, id: *id, body: None, media: false }
            }
            ClientEvent::App(AppEvent::Presence { user: target, last_seen }) => {
                Record::PresenceShown { at_ms, user, target: target.clone(), last_seen: *last_seen }
            }
            ClientEvent::App(AppEvent::Status { id, peer, status }) => {
                Record::Status { at_ms, sender: user, id: *id, peer: peer.clone(), state: *status }
            }
            ClientEvent::App(AppEvent::GroupUpdated { group, version }) => Record::Note {
                at_ms,
                event: "group-updated",
                detail: format!("user={user} group={group:?} version={version}"),
            },
            ClientEvent::App(AppEvent::ServerError { code, .. }) => {
                Record::Note { at_ms, event: "server-error", detail: format!("user={user} code={code:?}") }
            }
            ClientEvent::App(_) => return,
            ClientEvent::Online => Record::Note { at_ms, event: "online", detail: format!("user={user}") },
            ClientEvent::Offline { .. } => {
                let mut log = lock(&self.log);
                log.ready.insert(user.clone(), false);
                log.push(Record::Note { at_ms, event: "offline", detail: format!("user={user}") });
                return;
            }
        };
        lock(&self.log).push(record);
    }

    fn action(&self, action: &AppAction<'_>, _now_ms: u64) {
        let at_ms = sim_now_ms();
        let from = self.user.clone();
        let record = match *action {
            AppAction::SentText { to, id, body } => Record::Sent {
                at_ms,
                from,
                to: BTreeSet::from([to.clone()]),
                id,
                body: body.to_vec(),
                group: None,
                media: false,
            },
            AppAction::SentMedia { to, id, body } => Record::Sent {
                at_ms,
                from,
                to: BTreeSet::from([to.clone()]),
                id,
                body: body.to_vec(),
                group: None,
                media: true,
            },
            AppAction::SentGroup { group, id, body, members } => Record::Sent {
                at_ms,
                from,
                to: members.iter().cloned().collect(),
                id,
                body: body.to_vec(),
                group: Some(group),
                media: false,
            },
            AppAction::Read { peer } => Record::Read { at_ms, reader: from, peer: peer.clone() },
            AppAction::CreatedGroup { group, members } => Record::Note {
                at_ms,
                event: "create-group",
                detail: format!("admin={from} group={group:?} members={}", members.len()),
            },
            AppAction::ChangedGroup { group, add, remove } => Record::Note {
                at_ms,
                event: "change-group",
                detail: format!("admin={from} group={group:?} add={} remove={}", names(add), names(remove)),
            },
            AppAction::ReadGroup { group } => Record::ReadGroup { at_ms, reader: from, group },
            AppAction::SetPresencePrivacy { visibility, contacts } => Record::Note {
                at_ms,
                event: "presence-privacy",
                detail: format!("user={from} visibility={visibility:?} contacts={}", names(contacts)),
            },
            AppAction::SubscribedPresence { users } => Record::Subscribed { at_ms, user: from, users: users.to_vec() },
        };
        lock(&self.log).push(record);
    }

    fn settled(&self, client: &Client, _now_ms: u64) {
        let mut log = lock(&self.log);
        // Unsent work includes attachments still uploading or downloading.
        let (uploads, downloads) = client.media_pending();
        log.outbox.insert(self.user.clone(), client.outbox_len() + uploads + downloads);
        log.ready.insert(self.user.clone(), client.is_ready());
        let current = log.subscriptions.get(&self.user);
        let changed = match current {
            Some(v) => !v.iter().eq(client.presence_subscriptions()),
            None => client.presence_subscriptions().next().is_some(),
        };
        if changed {
            let now: Vec<UserId> = client.presence_subscriptions().cloned().collect();
            log.subscriptions.insert(self.user.clone(), now);
        }
    }

    fn frame_out(&self, frame: &ClientFrame, client: &Client, _now_ms: u64) {
        let ClientFrame::GroupSend { message_id, group, .. } = frame else { return };
        {
            // A held frame is shown on every pump until it leaves: report it once.
            let mut seen = lock(&self.sealed_seen);
            if seen.contains(message_id) {
                return;
            }
            if seen.len() >= SEALED_SEEN_MAX {
                seen.pop_front();
            }
            seen.push_back(*message_id);
        }
        let view = client.group(group).map(|(_, m)| m.into_iter().filter(|u| *u != self.user).collect());
        lock(&self.log).push(Record::Sealed { id: *message_id, view: view.unwrap_or_default() });
    }

    fn frame_in(&self, frame: &ServerFrame, _now_ms: u64) {
        let ServerFrame::Deliver { item: Delivery::Envelope(env), .. } = frame else { return };
        let envelope = self.record_ciphertexts.then(|| Box::new(env.clone()));
        let record = Record::EnvelopeIn { user: self.user.clone(), id: env.message_id, envelope };
        lock(&self.log).push(record);
    }
}

/// `a,b,c` for a trace line.
pub(crate) fn names(users: &[UserId]) -> String {
    users.iter().map(UserId::as_str).collect::<Vec<_>>().join(",")
}

/// Watches one incarnation of the server loop (its [`ServerObserver`]):
/// one-time prekeys handed out, mailbox items handed out, who is online,
/// privacy settings applied and presence sent.
#[derive(Debug)]
pub(crate) struct ServerWatch {
    pub(crate) log: SharedLog,
    pub(crate) state: Mutex<WatchState>,
}

/// What a [`ServerWatch`] knows of this incarnation's connections.
#[derive(Debug, Default)]
pub(crate) struct WatchState {
    /// The user each connection claimed when it logged in.
    users: BTreeMap<ConnId, UserId>,
    /// Each online user's connection (the one the server last welcomed).
    current: BTreeMap<UserId, ConnId>,
    /// The connection whose `PresenceSubscribe` the core is handling: its
    /// presence frames until the next input are the subscribe reply.
    answering: Option<ConnId>,
}

impl ServerWatch {
    pub(crate) fn new(log: SharedLog) -> Self {
        ServerWatch { log, state: Mutex::new(WatchState::default()) }
    }
}

impl ServerObserver for ServerWatch {
    fn frame_out(&self, conn: ConnId, frame: &ServerFrame) {
        let at_ms = sim_now_ms();
        let mut state = lock(&self.state);
        let user = state.users.get(&conn).cloned();
        let record = match (frame, user) {
            (ServerFrame::Bundle { bundle, .. }, _) => match &bundle.one_time_prekey {
                Some(k) => Record::Prekey { at_ms, owner: bundle.owner.clone(), id: k.id },
                None => return,
            },
            (ServerFrame::Welcome { .. }, Some(user)) => {
                // A Welcome said again on a live connection changes nothing.
                if state.current.insert(user.clone(), conn) == Some(conn) {
                    return;
                }
                Record::Online { at_ms, user }
            }
            (ServerFrame::Deliver { seq, .. }, Some(user)) => Record::HandedOut { at_ms, user, seq: *seq },
            (ServerFrame::Presence { user: target, last_seen }, Some(subscriber)) => Record::PresenceSent {
                at_ms,
                subscriber,
                target: target.clone(),
                last_seen: *last_seen,
                reply: state.answering == Some(conn),
            },
            _ => return,
        };
        drop(state);
        lock(&self.log).push(record);
    }

    fn frame_in(&self, conn: ConnId, bytes: &[u8]) {
        let mut state = lock(&self.state);
        state.answering = None;
        // The core refuses what does not decode; so does the oracle.
        let Ok(frame) = wire::decode::<ClientFrame>(bytes) else { return };
        match frame {
            ClientFrame::Register { user, .. } | ClientFrame::Authenticate { user, .. } => {
                state.users.entry(conn).or_insert(user);
            }
            ClientFrame::PresenceSubscribe { .. } => state.answering = Some(conn),
            ClientFrame::PresencePrivacy { visibility, contacts } => {
                let Some(user) = state.users.get(&conn).cloned() else { return };
                drop(state);
                lock(&self.log).push(Record::PrivacyApplied { at_ms: sim_now_ms(), user, visibility, contacts });
            }
            _ => {}
        }
    }

    fn disconnected(&self, conn: ConnId) {
        let mut state = lock(&self.state);
        state.answering = None;
        let Some(user) = state.users.remove(&conn) else { return };
        if state.current.get(&user) != Some(&conn) {
            return;
        }
        state.current.remove(&user);
        drop(state);
        lock(&self.log).push(Record::Offline { at_ms: sim_now_ms(), user });
    }

    fn timeout(&self) {
        lock(&self.state).answering = None;
    }
}
