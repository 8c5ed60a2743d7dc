//! A device farm: one simulated host running many real client drivers.
//!
//! turmoil's cost grows with the number of hosts (every tick ticks every
//! host's runtime and scans every link), so devices are not one host each:
//! a farm host runs the `run_client_over` task of each of its users, all
//! over turmoil TCP to the server host. The driver hands it [`FarmCommand`]s
//! through a channel; they take effect inside the simulation, at the farm's
//! next tick. Each device saves into a [`SaveSlot`] outside the host, so a
//! crash of one device (its task killed mid-flight) restarts it from exactly
//! what it had saved.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bluetick_core::client::{Client, ClientConfig, RestoreError, SavedChanges, SavedClient};
use bluetick_core::ids::{GroupId, MessageId, UserId};
use bluetick_core::wire::Visibility;
use bluetick_core::world::oracle::Violation;
use bluetick_core::world::EPOCH_MS;
use bluetick_net::client::{run_client_over, ClientHandle, ClientOptions, StateSaver};
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;
use tokio::sync::{mpsc, oneshot};

use super::faults::DeviceTap;
use super::net::{lock, sim_now_ms, SimClock, SimConnector};
use super::record::{DeviceObserver, Record, SharedLog};

/// What the driver asks a farm to do. Replies go back on the oneshot.
#[derive(Debug)]
pub(crate) enum FarmCommand {
    SendText { from: UserId, to: UserId, body: Vec<u8>, reply: oneshot::Sender<Option<MessageId>> },
    SendGroup { from: UserId, group: GroupId, body: Vec<u8>, reply: oneshot::Sender<Option<MessageId>> },
    SendMedia { from: UserId, to: UserId, bytes: Vec<u8>, reply: oneshot::Sender<Option<MessageId>> },
    SetPresencePrivacy { owner: UserId, visibility: Visibility, contacts: Vec<UserId>, reply: oneshot::Sender<bool> },
    SubscribePresence { subscriber: UserId, targets: Vec<UserId>, reply: oneshot::Sender<bool> },
    CreateGroup { from: UserId, members: Vec<UserId>, reply: oneshot::Sender<Option<GroupId>> },
    ChangeGroup { admin: UserId, group: GroupId, add: Vec<UserId>, remove: Vec<UserId>, reply: oneshot::Sender<bool> },
    MarkRead { reader: UserId, peer: UserId },
    MarkGroupRead { reader: UserId, group: GroupId },
    SetOnline { user: UserId, online: bool },
    Crash { user: UserId },
}

/// Where one device's saves go: memory outside every host, so it survives
/// the device's crash (the file of a real phone).
#[derive(Debug)]
pub(crate) struct SaveSlot {
    pub(crate) user: UserId,
    pub(crate) config: ClientConfig,
    /// The last full save and the changes saved after it, in order.
    pub(crate) saved: Mutex<Option<(SavedClient, Vec<SavedChanges>)>>,
    /// Restore every save at once to prove it restores (costly; tests).
    pub(crate) verify: bool,
    pub(crate) log: SharedLog,
}

impl SaveSlot {
    /// What a restart restores: the last full save with the changes after it.
    pub(crate) fn current(&self) -> Result<Option<SavedClient>, RestoreError> {
        match &*lock(&self.saved) {
            None => Ok(None),
            Some((full, changes)) if changes.is_empty() => Ok(Some(full.clone())),
            Some((full, changes)) => full.apply_changes(changes).map(Some),
        }
    }

    /// The device as a restart finds it (`None` before its first save).
    fn restore(&self) -> Result<Option<Client>, RestoreError> {
        self.current()?.map(|s| Client::restore(self.config.clone(), &s)).transpose()
    }

    fn verify(&self) {
        if let Err(e) = self.restore() {
            lock(&self.log).push(Record::Violation(Violation {
                invariant: "client-save-restorable",
                at_ms: sim_now_ms(),
                detail: format!("{:?}'s saved state does not restore: {e}", self.user),
            }));
        }
    }
}

impl StateSaver for SaveSlot {
    fn save(&self, state: &SavedClient) -> std::io::Result<()> {
        *lock(&self.saved) = Some((state.clone(), Vec::new()));
        if self.verify {
            self.verify();
        }
        Ok(())
    }

    fn save_changes(&self, changes: &SavedChanges) -> std::io::Result<()> {
        match &mut *lock(&self.saved) {
            Some((_, after)) => after.push(changes.clone()),
            None => return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "changes before a full save")),
        }
        if self.verify {
            self.verify();
        }
        Ok(())
    }
}

/// How every device of a run is driven.
#[derive(Debug, Clone)]
pub(crate) struct DeviceTiming {
    pub(crate) url: String,
    pub(crate) backoff_min: Duration,
    pub(crate) backoff_max: Duration,
    pub(crate) idle_timeout: Duration,
}

/// One device of a farm and what it needs to (re)start.
#[derive(Debug)]
pub(crate) struct Device {
    pub(crate) user: UserId,
    /// The device as first built; taken by the first start.
    pub(crate) initial: Option<Client>,
    /// Seed of a replacement device if it crashed before its first save.
    pub(crate) seed: u64,
    /// Seed of the reconnect jitter; each incarnation draws its own stream.
    pub(crate) jitter_seed: u64,
    pub(crate) slot: Arc<SaveSlot>,
    pub(crate) clock: Arc<SimClock>,
    pub(crate) tap: Arc<DeviceTap>,
    pub(crate) observer: Arc<DeviceObserver>,
    pub(crate) timing: Arc<DeviceTiming>,
    pub(crate) incarnation: u64,
    pub(crate) want_online: bool,
    pub(crate) handle: Option<Arc<ClientHandle>>,
}

impl Device {
    fn start(&mut self, client: Client) {
        let t = &self.timing;
        let options = ClientOptions {
            backoff_min: t.backoff_min,
            backoff_max: t.backoff_max,
            idle_timeout: t.idle_timeout,
            clock: self.clock.clone(),
            saver: Some(self.slot.clone()),
            observer: Some(self.observer.clone()),
            tap: Some(self.tap.clone()),
            start_online: self.want_online,
            // Unused: the saver keeps the state.
            ..ClientOptions::new(t.url.clone(), PathBuf::from(format!("sim-{}.state", self.user)))
        };
        let rng = ChaCha20Rng::seed_from_u64(self.jitter_seed.wrapping_add(self.incarnation));
        self.incarnation += 1;
        let mut handle = run_client_over(client, options, rng, SimConnector);
        // The observer sees every event; nobody reads the app queue.
        handle.close_events();
        self.handle = Some(Arc::new(handle));
    }

    /// Kills the task and restarts the device from its last save.
    fn crash(&mut self) {
        if let Some(h) = self.handle.take() {
            h.kill();
        }
        let client = match self.slot.restore() {
            Ok(Some(client)) => client,
            // Killed before its first save: the device never existed on
            // disk, so it is built again from its seed.
            Ok(None) => Client::new(self.slot.config.clone(), self.seed, EPOCH_MS),
            Err(e) => {
                lock(&self.slot.log).push(Record::Violation(Violation {
                    invariant: "client-recovers",
                    at_ms: sim_now_ms(),
                    detail: format!("{:?} could not restore its saved state: {e}", self.user),
                }));
                return;
            }
        };
        self.start(client);
    }
}

/// The software of a farm host: starts its devices, then serves commands
/// until the driver goes away.
pub(crate) async fn run_farm(devices: Vec<Device>, mut commands: mpsc::Receiver<FarmCommand>) -> ::turmoil::Result {
    let mut devices: BTreeMap<UserId, Device> = devices.into_iter().map(|d| (d.user.clone(), d)).collect();
    for d in devices.values_mut() {
        if let Some(client) = d.initial.take() {
            d.start(client);
        }
    }
    while let Some(command) = commands.recv().await {
        // Replies wait for the device's task, which may be busy (writing to
        // a stalled connection): each command gets its own small task so one
        // slow device never holds up the others. Tasks start in command
        // order, so one device's commands reach it in order.
        let handle = |user: &UserId| devices.get(user).and_then(|d| d.handle.clone());
        match command {
            FarmCommand::SendText { from, to, body, reply } => {
                let Some(h) = handle(&from) else { continue };
                tokio::spawn(async move {
                    let _ = reply.send(h.send_text(to, body).await.ok().and_then(Result::ok));
                });
            }
            FarmCommand::SendGroup { from, group, body, reply } => {
                let Some(h) = handle(&from) else { continue };
                tokio::spawn(async move {
                    let _ = reply.send(h.send_group(group, body).await.ok().and_then(Result::ok));
                });
            }
            FarmCommand::SendMedia { from, to, bytes, reply } => {
                let Some(h) = handle(&from) else { continue };
                tokio::spawn(async move {
                    let _ = reply.send(h.send_media(to, bytes).await.ok().and_then(Result::ok));
                });
            }
            FarmCommand::SetPresencePrivacy { owner, visibility, contacts, reply } => {
                let Some(h) = handle(&owner) else { continue };
                tokio::spawn(async move {
                    let _ = reply.send(matches!(h.set_presence_privacy(visibility, contacts).await, Ok(Ok(()))));
                });
            }
            FarmCommand::SubscribePresence { subscriber, targets, reply } => {
                let Some(h) = handle(&subscriber) else { continue };
                tokio::spawn(async move {
                    let _ = reply.send(matches!(h.subscribe_presence(targets).await, Ok(Ok(()))));
                });
            }
            FarmCommand::CreateGroup { from, members, reply } => {
                let Some(h) = handle(&from) else { continue };
                tokio::spawn(async move {
                    let _ = reply.send(h.create_group(members).await.ok().and_then(Result::ok));
                });
            }
            FarmCommand::ChangeGroup { admin, group, add, remove, reply } => {
                let Some(h) = handle(&admin) else { continue };
                tokio::spawn(async move {
                    let _ = reply.send(matches!(h.change_group(group, add, remove).await, Ok(Ok(()))));
                });
            }
            FarmCommand::MarkRead { reader, peer } => {
                let Some(h) = handle(&reader) else { continue };
                tokio::spawn(async move { h.mark_read(peer).await });
            }
            FarmCommand::MarkGroupRead { reader, group } => {
                let Some(h) = handle(&reader) else { continue };
                tokio::spawn(async move { h.mark_group_read(group).await });
            }
            FarmCommand::SetOnline { user, online } => {
                let Some(d) = devices.get_mut(&user) else { continue };
                d.want_online = online;
                let Some(h) = d.handle.clone() else { continue };
                tokio::spawn(async move { h.set_online(online).await });
            }
            FarmCommand::Crash { user } => {
                if let Some(d) = devices.get_mut(&user) {
                    d.crash();
                }
            }
        }
    }
    Ok(())
}
