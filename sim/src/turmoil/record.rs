//! What the simulated hosts report, in the order it happened.
//!
//! Observers inside the simulation (a client's [`ClientObserver`], the
//! server's [`ServerObserver`], the store, the fault taps) append
//! [`Record`]s to one shared log; the driver drains it after every tick and
//! feeds it to the [`History`](bluetick_core::world::oracle::History), so
//! the oracle sees the same sequence of calls as the direct driver's
//! `World::after_client` makes.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use bluetick_core::client::{AppEvent, Client, DeliveryState};
use bluetick_core::ids::{DeviceAddress, GroupId, MessageId, UserId};
use bluetick_core::server::ConnId;
use bluetick_core::store::Table;
use bluetick_core::wire::ServerFrame;
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
    /// An app sent a message (the core accepted it); `group` for a group message.
    Sent { at_ms: u64, from: UserId, to: BTreeSet<UserId>, id: MessageId, body: Vec<u8>, group: Option<GroupId> },
    /// `reader`'s app opened its conversation with `peer`.
    Read { at_ms: u64, reader: UserId, peer: UserId },
    /// `reader`'s app opened a group conversation.
    ReadGroup { at_ms: u64, reader: UserId, group: GroupId },
    /// `user`'s app was shown message `id` (`None`: as undecryptable).
    Received { at_ms: u64, user: UserId, id: MessageId, body: Option<Vec<u8>> },
    /// A sender's app was shown a status for `peer`.
    Status { at_ms: u64, sender: UserId, id: MessageId, peer: UserId, state: DeliveryState },
    /// The server handed out a one-time prekey.
    Prekey { at_ms: u64, owner: DeviceAddress, id: u32 },
    /// A value the server wrote to its store.
    Written { at_ms: u64, table: Table, value: Vec<u8> },
    /// A fault tap acted on a frame.
    Fault { at_ms: u64, user: UserId, direction: Direction, kind: &'static str, action: FaultAction },
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
}

impl ClientObserver for DeviceObserver {
    fn event(&self, event: &ClientEvent, _now_ms: u64) {
        // The oracle works in true simulated time, not the device's (possibly
        // skewed) clock.
        let at_ms = sim_now_ms();
        let user = self.user.clone();
        let record = match event {
            ClientEvent::App(AppEvent::Message { id, body, .. }) => {
                Record::Received { at_ms, user, id: *id, body: Some(body.clone()) }
            }
            // Being told a message could not be read is also hearing of it.
            ClientEvent::App(AppEvent::Undecryptable { id, .. }) => {
                Record::Received { at_ms, user, id: *id, body: None }
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
            ClientEvent::Offline { .. } => Record::Note { at_ms, event: "offline", detail: format!("user={user}") },
        };
        lock(&self.log).push(record);
    }

    fn action(&self, action: &AppAction<'_>, _now_ms: u64) {
        let at_ms = sim_now_ms();
        let from = self.user.clone();
        let record = match *action {
            AppAction::SentText { to, id, body } => {
                Record::Sent { at_ms, from, to: BTreeSet::from([to.clone()]), id, body: body.to_vec(), group: None }
            }
            AppAction::SentGroup { group, id, body, members } => Record::Sent {
                at_ms,
                from,
                to: members.iter().cloned().collect(),
                id,
                body: body.to_vec(),
                group: Some(group),
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
        };
        lock(&self.log).push(record);
    }

    fn settled(&self, client: &Client, _now_ms: u64) {
        lock(&self.log).outbox.insert(self.user.clone(), client.outbox_len());
    }
}

/// `a,b,c` for a trace line.
pub(crate) fn names(users: &[UserId]) -> String {
    users.iter().map(UserId::as_str).collect::<Vec<_>>().join(",")
}

/// Watches the server loop (its [`ServerObserver`]): one-time prekeys handed out.
#[derive(Debug)]
pub(crate) struct ServerWatch {
    pub(crate) log: SharedLog,
}

impl ServerObserver for ServerWatch {
    fn frame_out(&self, _conn: ConnId, frame: &ServerFrame) {
        if let ServerFrame::Bundle { bundle, .. } = frame {
            if let Some(k) = &bundle.one_time_prekey {
                lock(&self.log).push(Record::Prekey { at_ms: sim_now_ms(), owner: bundle.owner.clone(), id: k.id });
            }
        }
    }
}
