//! One device's client over a reconnecting WebSocket.
//!
//! [`run_client`] spawns a task that owns a sans-IO [`Client`] and drives it:
//! connect, feed frames and timer expiries in, run app commands, and after
//! every input keep the durability contract — if the client is dirty, its
//! [`Client::save`] is written durably (by default to the save file,
//! atomically: temp file, fsync, rename; or through an injected
//! [`StateSaver`]) *before* any frame it produced is sent or any event
//! reaches the app. A crash at any point then loses nothing the server or
//! the app was told about.
//!
//! The connection is re-established after any failure with exponential
//! backoff ([`BACKOFF_MIN`] doubling up to [`BACKOFF_MAX`]) and "equal
//! jitter" drawn from an injected RNG, so devices cut off together do not
//! come back together. The app talks to the task through a [`ClientHandle`]:
//! commands in, [`ClientEvent`]s out; app commands are served in every state
//! (connected, connecting, backing off, taken offline by the app).
//!
//! # Time and transport
//! Wall-clock time ("now" for the core) comes only from the injected
//! [`Clock`]; delays (backoff, timeouts, held frames) are tokio timers, which
//! a simulator runs on simulated time. The stream comes from a
//! [`Connector`] ([`run_client_over`]): real TCP by default, simulated TCP
//! in bluetick-sim; the WebSocket handshake and everything above it are the
//! same code.
//!
//! # Hooks for a simulator
//! [`ClientOptions`] takes three optional hooks, all `None` for real use: a
//! [`StateSaver`] (keep saves in memory instead of a file), a
//! [`ClientObserver`] (see app actions, events and the settled client, in
//! order, with the injected clock's time) and a [`FrameTap`] (lose,
//! duplicate or delay protocol frames in either direction, the frame-level
//! faults a simulated network cannot produce by itself).

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bluetick_core::client::{
    AppEvent, Client, ClientConfig, ClientError, IncrementalSave, RestoreError, SavedChanges, SavedClient,
};
use bluetick_core::ids::{GroupId, MessageId, UserId};
use bluetick_core::wire::{self, ClientFrame, ServerFrame, Visibility};
use futures_util::{SinkExt, StreamExt};
use rand_core::RngCore;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::clock::{Clock, SystemClock};
use crate::server::{IDLE_TIMEOUT, WRITE_TIMEOUT};
use crate::state_file::{read_state, StateFile};
use crate::transport::{ws_target, Connector, TcpConnector};

/// First reconnect delay: long enough not to hammer a server that just
/// refused us, short enough that a blip is invisible to the user.
pub const BACKOFF_MIN: Duration = Duration::from_millis(250);

/// Longest reconnect delay: a device offline for a server outage comes back
/// within this long of the server's return.
pub const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Opening the TCP connection and the WebSocket handshake must finish within
/// this long, or the attempt counts as failed.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// App commands waiting for the client task. Commands are small and the task
/// serves them between frames; when full, the app waits.
pub const COMMAND_QUEUE_LEN: usize = 256;

/// Events waiting for the app. When full the task waits for the app rather
/// than drop an event (each is surfaced exactly once).
pub const EVENT_QUEUE_LEN: usize = 1_024;

/// Copies of one frame a [`FrameTap`] may ask for; more are ignored. A
/// duplicate is two; the bound keeps a faulty tap from multiplying memory.
pub const FATE_COPIES_MAX: usize = 4;

/// Frames held back by a [`FrameTap`] delay, per connection and direction.
/// Past this, further delayed frames are lost instead (which the protocol
/// survives), so a tap delaying everything cannot grow memory without bound.
pub const HELD_FRAMES_MAX: usize = 4_096;

/// Server frames already received that are handled together, before one
/// save. A save per frame re-encoded the whole client state (a 1,024-member
/// group's status book) for every receipt of a burst. Handling a batch then
/// saving keeps the durability contract: a crash before the save loses the
/// batch's effects and its outputs together, as it would one frame's.
pub const RECEIVE_BATCH_MAX: usize = 64;

/// What the app hears from the client task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientEvent {
    /// An event from the core (messages, ticks, errors…).
    App(AppEvent),
    /// The connection is authenticated and usable.
    Online,
    /// The connection dropped (or the app took the client offline); unless
    /// the app did, the task reconnects by itself.
    Offline {
        /// Why, for logs.
        reason: String,
    },
}

/// Why the client task stopped (other than the app closing its handle).
#[derive(Debug, thiserror::Error)]
pub enum ClientRunError {
    /// The state could not be written: nothing may be sent or surfaced
    /// unsaved, so the client stops rather than break the contract.
    #[error("cannot save the client state to {path}: {source}")]
    Save {
        /// The save file (the configured one, also when a [`StateSaver`] failed).
        path: PathBuf,
        /// The IO error.
        source: std::io::Error,
    },
    /// The saved state exists but could not be read.
    #[error("cannot read the saved client state at {path}: {source}")]
    Load {
        /// The save file.
        path: PathBuf,
        /// The IO error.
        source: std::io::Error,
    },
    /// The saved state was read but does not restore.
    #[error("the saved client state at {path} does not restore: {source}")]
    Restore {
        /// The save file.
        path: PathBuf,
        /// Why.
        source: RestoreError,
    },
    /// A blocking save task was cancelled or panicked.
    #[error("the save task failed: {detail}")]
    SaveTask {
        /// What the runtime said.
        detail: String,
    },
}

/// Stores the client's saved state somewhere other than the save file.
pub trait StateSaver: Send + Sync + fmt::Debug {
    /// Stores `state` durably, replacing the previous one, before returning:
    /// the driver sends nothing and surfaces nothing until this succeeded.
    ///
    /// # Errors
    /// Any IO error stops the client task ([`ClientRunError::Save`]).
    fn save(&self, state: &SavedClient) -> std::io::Result<()>;

    /// Stores `changes` durably after the last full save and the changes
    /// stored since, before returning; the state to restore is then
    /// [`SavedClient::apply_changes`] of them all.
    ///
    /// # Errors
    /// As [`StateSaver::save`].
    fn save_changes(&self, changes: &SavedChanges) -> std::io::Result<()>;
}

/// A full save is taken instead of changes once the changes stored since the
/// last full save add up to its size, but not below this: restoring then
/// reads at most about twice the state, and saving costs what changed.
pub const FULL_SAVE_AFTER_BYTES_MIN: usize = 64 * 1024;

/// Something the app did that the core accepted, as a [`ClientObserver`]
/// sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppAction<'a> {
    /// A text to `to` was queued as `id`.
    SentText {
        /// The recipient.
        to: &'a UserId,
        /// Its id.
        id: MessageId,
        /// The plaintext.
        body: &'a [u8],
    },
    /// A group message was queued as `id` for `members` (everyone but us, as
    /// this device knows the group now).
    SentGroup {
        /// The group.
        group: GroupId,
        /// Its id.
        id: MessageId,
        /// The plaintext.
        body: &'a [u8],
        /// The intended recipients.
        members: &'a [UserId],
    },
    /// A group was created with `members` besides us.
    CreatedGroup {
        /// The new group.
        group: GroupId,
        /// Its members besides us.
        members: &'a [UserId],
    },
    /// We changed a group's membership.
    ChangedGroup {
        /// The group.
        group: GroupId,
        /// Members asked to be added.
        add: &'a [UserId],
        /// Members asked to be removed.
        remove: &'a [UserId],
    },
    /// The app opened the 1:1 conversation with `peer`: everything received
    /// from `peer` so far is read.
    Read {
        /// The peer.
        peer: &'a UserId,
    },
    /// The app opened a group conversation.
    ReadGroup {
        /// The group.
        group: GroupId,
    },
    /// An attachment to `to` was queued as `id` (upload first, then its pointer).
    SentMedia {
        /// The recipient.
        to: &'a UserId,
        /// Its id.
        id: MessageId,
        /// The attachment's plaintext bytes.
        body: &'a [u8],
    },
    /// The app set who may see its presence.
    SetPresencePrivacy {
        /// Who may see it.
        visibility: Visibility,
        /// The contact list [`Visibility::Contacts`] refers to.
        contacts: &'a [UserId],
    },
    /// The app replaced its presence subscription list.
    SubscribedPresence {
        /// The users it follows now.
        users: &'a [UserId],
    },
}

/// Watches one client task, synchronously and in the order things happen.
/// A simulator's oracle uses it; calls must be quick (they run on the task).
/// `now_ms` is the injected clock's reading.
pub trait ClientObserver: Send + Sync + fmt::Debug {
    /// `event` is about to reach the app; what it reflects is already saved.
    fn event(&self, event: &ClientEvent, now_ms: u64);

    /// The core accepted an app command; nothing it produced has left yet.
    fn action(&self, action: &AppAction<'_>, now_ms: u64) {
        let _ = (action, now_ms);
    }

    /// An input was fully handled: saved, its frames sent, its events
    /// surfaced. `client` is the state it left.
    fn settled(&self, client: &Client, now_ms: u64) {
        let _ = (client, now_ms);
    }

    /// `frame` from the server is about to reach the core: once per copy a
    /// [`FrameTap`] lets through, when that copy is due (a simulator counts
    /// duplicates the core absorbs and keeps ciphertexts for its checks).
    fn frame_in(&self, frame: &ServerFrame, now_ms: u64) {
        let _ = (frame, now_ms);
    }

    /// `frame` waits to be sent: shown after every input that leaves frames
    /// queued, the same frame again while the client's pacer holds it back
    /// (and even when no link takes it). `client` is the state right after
    /// that input: a group message is sealed for its sender's view of the
    /// group then, which may differ from the view when the app asked to
    /// send, or when the frame finally leaves.
    fn frame_out(&self, frame: &ClientFrame, client: &Client, now_ms: u64) {
        let _ = (frame, client, now_ms);
    }
}

/// What becomes of one protocol frame: it arrives once per entry, each copy
/// after its delay. No entries: it is lost. Two: it is duplicated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameFate {
    /// One delay per copy that arrives (at most [`FATE_COPIES_MAX`] are used).
    pub copies: Vec<Duration>,
}

impl FrameFate {
    /// Delivered once, at once: what happens without a tap.
    pub fn once() -> Self {
        FrameFate { copies: vec![Duration::ZERO] }
    }

    /// Lost.
    pub fn lost() -> Self {
        FrameFate { copies: Vec::new() }
    }
}

/// Decides the fate of each protocol frame on this client's connection —
/// the frame-level faults of a simulated network. It sits between the
/// driver and the WebSocket: outgoing frames are decided before they are
/// sent, incoming ones before the core sees them. WebSocket control
/// messages (pings, pongs, close) are not protocol frames and pass untouched.
pub trait FrameTap: Send + Sync + fmt::Debug {
    /// The fate of `frame`, about to be sent to the server.
    fn outgoing(&self, frame: &ClientFrame, now_ms: u64) -> FrameFate;
    /// The fate of `frame`, just received from the server.
    fn incoming(&self, frame: &ServerFrame, now_ms: u64) -> FrameFate;
}

/// App commands.
#[derive(Debug)]
enum Command {
    SendText {
        to: UserId,
        body: Vec<u8>,
        reply: oneshot::Sender<Result<MessageId, ClientError>>,
    },
    SendGroup {
        group: GroupId,
        body: Vec<u8>,
        reply: oneshot::Sender<Result<MessageId, ClientError>>,
    },
    CreateGroup {
        members: Vec<UserId>,
        reply: oneshot::Sender<Result<GroupId, ClientError>>,
    },
    ChangeGroup {
        group: GroupId,
        add: Vec<UserId>,
        remove: Vec<UserId>,
        reply: oneshot::Sender<Result<(), ClientError>>,
    },
    SendMedia {
        to: UserId,
        bytes: Vec<u8>,
        reply: oneshot::Sender<Result<MessageId, ClientError>>,
    },
    SetPresencePrivacy {
        visibility: Visibility,
        contacts: Vec<UserId>,
        reply: oneshot::Sender<Result<(), ClientError>>,
    },
    SubscribePresence {
        users: Vec<UserId>,
        reply: oneshot::Sender<Result<(), ClientError>>,
    },
    MarkRead {
        peer: UserId,
    },
    MarkGroupRead {
        group: GroupId,
    },
    SetOnline {
        online: bool,
    },
}

/// How the client task runs.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// `ws://host:port/` of the server.
    pub url: String,
    /// Where the state is saved (unless [`ClientOptions::saver`] is set).
    pub save_path: PathBuf,
    /// Where "now" comes from.
    pub clock: Arc<dyn Clock>,
    /// First reconnect delay.
    pub backoff_min: Duration,
    /// Longest reconnect delay.
    pub backoff_max: Duration,
    /// Silence from the server after which the connection counts as dead.
    pub idle_timeout: Duration,
    /// Saves go here instead of to `save_path` (a simulator keeps them in
    /// memory); `None` for real use.
    pub saver: Option<Arc<dyn StateSaver>>,
    /// Watches actions, events and the settled client; `None` for real use.
    pub observer: Option<Arc<dyn ClientObserver>>,
    /// Frame-level faults; `None` (every frame once, at once) for real use.
    pub tap: Option<Arc<dyn FrameTap>>,
    /// Whether the client connects as it starts; `false` starts it offline
    /// until [`ClientHandle::set_online`] (a device restarted in airplane mode).
    pub start_online: bool,
    /// Write saves on the runtime's thread instead of handing each to the
    /// blocking pool. Only for state on a memory filesystem (a load
    /// generator's clients in /dev/shm): there a save never waits for a
    /// disk, and the two thread switches of the hand-over cost more than
    /// the write. On a disk it would stall every task of the runtime for
    /// each `fsync`.
    pub inline_saves: bool,
    /// Keep the state in memory only and never save it: the device forgets
    /// everything if its process dies. Only for a load generator measuring
    /// a server, whose clients' saves (a change record written before every
    /// send) would otherwise be what limits the load it offers; never for a
    /// device a person uses.
    pub volatile: bool,
}

impl ClientOptions {
    /// The defaults for a server URL and a save file.
    pub fn new(url: impl Into<String>, save_path: impl Into<PathBuf>) -> Self {
        ClientOptions {
            url: url.into(),
            save_path: save_path.into(),
            clock: Arc::new(SystemClock),
            backoff_min: BACKOFF_MIN,
            backoff_max: BACKOFF_MAX,
            idle_timeout: IDLE_TIMEOUT,
            saver: None,
            observer: None,
            tap: None,
            start_online: true,
            inline_saves: false,
            volatile: false,
        }
    }
}

/// The app's side of a running client.
#[derive(Debug)]
pub struct ClientHandle {
    commands: mpsc::Sender<Command>,
    events: mpsc::Receiver<ClientEvent>,
    task: JoinHandle<Result<Client, ClientRunError>>,
}

/// The client task has stopped; its result is in [`ClientHandle::shutdown`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the client task has stopped")]
pub struct Stopped;

impl ClientHandle {
    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T, Stopped> {
        let (reply, answer) = oneshot::channel();
        self.commands.send(make(reply)).await.map_err(|_| Stopped)?;
        answer.await.map_err(|_| Stopped)
    }

    /// Queues a text message; returns its id once the core accepted it (it is
    /// saved, and sent whenever the client is online).
    ///
    /// # Errors
    /// `Ok(Err(_))` if the core refused it; `Err(Stopped)` if the task ended.
    pub async fn send_text(&self, to: UserId, body: Vec<u8>) -> Result<Result<MessageId, ClientError>, Stopped> {
        self.ask(|reply| Command::SendText { to, body, reply }).await
    }

    /// Queues a group message; returns its id once the core accepted it.
    ///
    /// # Errors
    /// As [`ClientHandle::send_text`].
    pub async fn send_group(&self, group: GroupId, body: Vec<u8>) -> Result<Result<MessageId, ClientError>, Stopped> {
        self.ask(|reply| Command::SendGroup { group, body, reply }).await
    }

    /// Creates a group with us as admin and `members`.
    ///
    /// # Errors
    /// As [`ClientHandle::send_text`].
    pub async fn create_group(&self, members: Vec<UserId>) -> Result<Result<GroupId, ClientError>, Stopped> {
        self.ask(|reply| Command::CreateGroup { members, reply }).await
    }

    /// As the group's admin, adds and removes members.
    ///
    /// # Errors
    /// As [`ClientHandle::send_text`].
    pub async fn change_group(
        &self,
        group: GroupId,
        add: Vec<UserId>,
        remove: Vec<UserId>,
    ) -> Result<Result<(), ClientError>, Stopped> {
        self.ask(|reply| Command::ChangeGroup { group, add, remove, reply }).await
    }

    /// Encrypts `bytes` as an attachment for `to` and queues it; returns the id
    /// of the message that will carry its pointer (its ticks are those of a
    /// text). The blob is uploaded whenever the client is online.
    ///
    /// # Errors
    /// As [`ClientHandle::send_text`] (too large, media queue full…).
    pub async fn send_media(&self, to: UserId, bytes: Vec<u8>) -> Result<Result<MessageId, ClientError>, Stopped> {
        self.ask(|reply| Command::SendMedia { to, bytes, reply }).await
    }

    /// Sets who may see this user's presence; `contacts` is the list
    /// [`Visibility::Contacts`] refers to. Persisted and sent after every login.
    ///
    /// # Errors
    /// As [`ClientHandle::send_text`] (contact list too long).
    pub async fn set_presence_privacy(
        &self,
        visibility: Visibility,
        contacts: Vec<UserId>,
    ) -> Result<Result<(), ClientError>, Stopped> {
        self.ask(|reply| Command::SetPresencePrivacy { visibility, contacts, reply }).await
    }

    /// Replaces the users whose presence is followed (empty: nobody); each is
    /// then reported as an [`AppEvent::Presence`], at once and on every change.
    ///
    /// # Errors
    /// As [`ClientHandle::send_text`] (list too long).
    pub async fn subscribe_presence(&self, users: Vec<UserId>) -> Result<Result<(), ClientError>, Stopped> {
        self.ask(|reply| Command::SubscribePresence { users, reply }).await
    }

    /// Marks everything received from `peer` as read (Read receipts go out).
    ///
    /// # Errors
    /// `Stopped` if the task ended.
    pub async fn mark_read(&self, peer: UserId) -> Result<(), Stopped> {
        self.commands.send(Command::MarkRead { peer }).await.map_err(|_| Stopped)
    }

    /// Marks everything received in `group` as read.
    ///
    /// # Errors
    /// `Stopped` if the task ended.
    pub async fn mark_group_read(&self, group: GroupId) -> Result<(), Stopped> {
        self.commands.send(Command::MarkGroupRead { group }).await.map_err(|_| Stopped)
    }

    /// Takes the client offline (its connection is closed and not reopened;
    /// commands still work and go out later) or back online.
    ///
    /// # Errors
    /// `Stopped` if the task ended.
    pub async fn set_online(&self, online: bool) -> Result<(), Stopped> {
        self.commands.send(Command::SetOnline { online }).await.map_err(|_| Stopped)
    }

    /// The next event; `None` once the task has stopped (or after
    /// [`ClientHandle::close_events`], once the buffered ones are read).
    pub async fn next_event(&mut self) -> Option<ClientEvent> {
        self.events.recv().await
    }

    /// Stops the event queue: events already queued can still be read, later
    /// ones are dropped instead of waiting for the app. For an app that
    /// watches through a [`ClientObserver`] instead.
    pub fn close_events(&mut self) {
        self.events.close();
    }

    /// Kills the task at once, as a crash would: nothing is saved beyond
    /// what already was, and the connection just drops. Restart the device
    /// from its saved state.
    pub fn kill(&self) {
        self.task.abort();
    }

    /// Stops the task (after a final save) and returns the client.
    ///
    /// # Errors
    /// Whatever stopped the task early, or [`ClientRunError::SaveTask`] if it
    /// panicked or was killed.
    pub async fn shutdown(self) -> Result<Client, ClientRunError> {
        drop(self.commands);
        drop(self.events);
        self.task.await.map_err(|e| ClientRunError::SaveTask { detail: e.to_string() })?
    }
}

/// Restores the client saved at `path` (its last full save and the changes
/// logged after it: see [`crate::state_file`]), or creates a new device there (with a
/// 256-bit seed from the OS) if the file does not exist.
///
/// # Errors
/// [`ClientRunError::Load`] / [`ClientRunError::Restore`] if a save exists but
/// cannot be used — never silently replaced, as that would lose the identity.
pub fn open_client(config: ClientConfig, path: &Path, clock: &dyn Clock) -> Result<Client, ClientRunError> {
    match read_state(path) {
        Ok(Some((full, changes))) => full
            .apply_changes(&changes)
            .and_then(|state| Client::restore(config, &state))
            .map_err(|source| ClientRunError::Restore { path: path.to_path_buf(), source }),
        Ok(None) => Ok(Client::from_seed(config, crate::entropy::os_seed(), clock.now_ms())),
        Err(source) => Err(ClientRunError::Load { path: path.to_path_buf(), source }),
    }
}

/// Writes `bytes` to `path` so that a crash leaves either the old or the new
/// content: write a temp file beside it, fsync, rename over, fsync the directory.
///
/// # Errors
/// The first IO error.
pub fn save_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        // Makes the rename itself durable. Directories cannot be opened for
        // syncing on every platform; there the rename is as durable as the OS makes it.
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

/// Starts the client task over real TCP. `rng` draws the reconnect jitter
/// ([`crate::entropy::jitter_rng`] for real use).
pub fn run_client<R>(client: Client, options: ClientOptions, rng: R) -> ClientHandle
where
    R: RngCore + Send + 'static,
{
    run_client_over(client, options, rng, TcpConnector)
}

/// Starts the client task over the streams `connector` opens (a simulated
/// network, for instance). Otherwise as [`run_client`].
pub fn run_client_over<R, C>(client: Client, options: ClientOptions, rng: R, connector: C) -> ClientHandle
where
    R: RngCore + Send + 'static,
    C: Connector,
{
    let (commands, commands_rx) = mpsc::channel(COMMAND_QUEUE_LEN);
    let (events_tx, events) = mpsc::channel(EVENT_QUEUE_LEN);
    let want_online = options.start_online;
    let save_path = options.save_path.clone();
    let driver = Driver {
        client,
        options,
        connector: Arc::new(connector),
        events: events_tx,
        commands: commands_rx,
        rng,
        attempt: 0,
        online: false,
        want_online,
        file: Arc::new(crate::sync::Mutex::new(StateFile::new(save_path))),
        since_full: 0,
        full_len: None,
    };
    let task = tokio::spawn(driver.run());
    ClientHandle { commands, events, task }
}

struct Driver<R, C> {
    client: Client,
    options: ClientOptions,
    connector: Arc<C>,
    events: mpsc::Sender<ClientEvent>,
    commands: mpsc::Receiver<Command>,
    rng: R,
    /// Failed connection attempts since the last successful login.
    attempt: u32,
    /// Whether `Online` was reported for the current connection.
    online: bool,
    /// Whether the app wants a connection ([`ClientHandle::set_online`]).
    want_online: bool,
    /// The save file and its log (unless [`ClientOptions::saver`] is set).
    file: Arc<crate::sync::Mutex<StateFile>>,
    /// Bytes of changes saved since the last full save, and that save's size
    /// (`None` until this driver made one: a client handed over from another
    /// driver may be journaling already, but this driver's store starts with
    /// a full save).
    since_full: usize,
    full_len: Option<usize>,
}

/// Why a connection (or an attempt at one) ended.
enum End {
    /// The app closed its handle: stop.
    Stop,
    /// The app took the client offline: wait for it to come back.
    Offline,
    /// The connection failed: reconnect.
    Lost(String),
}

/// What a connection attempt gave.
enum Attempt<S> {
    /// A WebSocket, handshake done (boxed: it is large and moved once).
    Open(Box<WebSocketStream<S>>),
    /// No connection, and why (or the app stopped or went offline meanwhile).
    Ended(End),
}

type Sink<S> = futures_util::stream::SplitSink<WebSocketStream<S>, Message>;

/// The live connection's sending half and the frames a [`FrameTap`] holds
/// back on it. Held frames die with the connection, as frames in flight do.
struct Link<S> {
    sink: Sink<S>,
    held_out: BTreeMap<(Instant, u64), Vec<u8>>,
    held_in: BTreeMap<(Instant, u64), ServerFrame>,
    held_seq: u64,
}

impl<S: crate::transport::Stream> Link<S> {
    fn new(sink: Sink<S>) -> Self {
        Link { sink, held_out: BTreeMap::new(), held_in: BTreeMap::new(), held_seq: 0 }
    }

    /// When the next held frame is due.
    fn next_due(&self) -> Option<Instant> {
        let out = self.held_out.keys().next().map(|(t, _)| *t);
        let inb = self.held_in.keys().next().map(|(t, _)| *t);
        out.into_iter().chain(inb).min()
    }

    fn hold_out(&mut self, delay: Duration, bytes: Vec<u8>) {
        if self.held_out.len() < HELD_FRAMES_MAX {
            self.held_seq += 1;
            self.held_out.insert((Instant::now() + delay, self.held_seq), bytes);
        }
    }

    fn hold_in(&mut self, delay: Duration, frame: ServerFrame) {
        if self.held_in.len() < HELD_FRAMES_MAX {
            self.held_seq += 1;
            self.held_in.insert((Instant::now() + delay, self.held_seq), frame);
        }
    }

    /// Sends one encoded frame; `Err` names why the connection is unusable.
    async fn send(&mut self, bytes: Vec<u8>) -> Result<(), String> {
        written(tokio::time::timeout(WRITE_TIMEOUT, self.sink.send(Message::Binary(bytes.into()))).await)
    }

    /// Queues one encoded frame for the next [`Link::flush`] (the sink
    /// writes early only when its buffer fills).
    async fn feed(&mut self, bytes: Vec<u8>) -> Result<(), String> {
        written(tokio::time::timeout(WRITE_TIMEOUT, self.sink.feed(Message::Binary(bytes.into()))).await)
    }

    /// Writes out every frame fed since the last flush.
    async fn flush(&mut self) -> Result<(), String> {
        written(tokio::time::timeout(WRITE_TIMEOUT, self.sink.flush()).await)
    }
}

/// A write's outcome as [`Link`]'s methods report it.
fn written<E: std::fmt::Display>(r: Result<Result<(), E>, tokio::time::error::Elapsed>) -> Result<(), String> {
    match r {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!("send failed: {e}")),
        Err(_) => Err("send timed out".into()),
    }
}

impl<R: RngCore + Send, C: Connector> Driver<R, C> {
    async fn run(mut self) -> Result<Client, ClientRunError> {
        // A new device is dirty: its identity is saved before it registers.
        self.pump_offline().await?;
        loop {
            if !self.want_online && !self.stay_offline().await? {
                break;
            }
            let end = match self.open().await? {
                Attempt::Open(ws) => self.connected(*ws).await?,
                Attempt::Ended(end) => end,
            };
            let reason = match end {
                End::Stop => break,
                End::Offline => "taken offline by the app".to_string(),
                End::Lost(reason) => reason,
            };
            tracing::debug!(user = self.client.config().user.as_str(), %reason, "connection ended");
            self.emit(ClientEvent::Offline { reason }).await;
            if self.want_online && !self.back_off().await? {
                break;
            }
        }
        self.pump_offline().await?;
        Ok(self.client)
    }

    /// Serves commands until the app wants to be online again (`true`) or
    /// closes its handle (`false`).
    async fn stay_offline(&mut self) -> Result<bool, ClientRunError> {
        while !self.want_online {
            match self.commands.recv().await {
                Some(c) => {
                    self.command(c);
                    self.pump_offline().await?;
                }
                None => return Ok(false),
            }
        }
        Ok(true)
    }

    /// Opens a stream and performs the WebSocket handshake, serving commands
    /// meanwhile (sends made now are saved and go out after the login).
    async fn open(&mut self) -> Result<Attempt<C::Stream>, ClientRunError> {
        let (host, port) = match ws_target(&self.options.url) {
            Ok(target) => target,
            Err(e) => return Ok(Attempt::Ended(End::Lost(e.to_string()))),
        };
        let connector = Arc::clone(&self.connector);
        let url = self.options.url.clone();
        let attempt = tokio::time::timeout(CONNECT_TIMEOUT, async move {
            let stream = connector.connect(&host, port).await.map_err(|e| format!("connect failed: {e}"))?;
            let handshake = tokio_tungstenite::client_async_with_config(url.as_str(), stream, Some(crate::ws_config()));
            let (ws, _) = handshake.await.map_err(|e| format!("WebSocket handshake failed: {e}"))?;
            Ok::<_, String>(ws)
        });
        tokio::pin!(attempt);
        loop {
            tokio::select! {
                biased;
                result = &mut attempt => {
                    return Ok(match result {
                        Ok(Ok(ws)) => Attempt::Open(Box::new(ws)),
                        Ok(Err(reason)) => Attempt::Ended(End::Lost(reason)),
                        Err(_) => Attempt::Ended(End::Lost("connect timed out".into())),
                    });
                }
                command = self.commands.recv() => match command {
                    Some(c) => {
                        self.command(c);
                        self.pump_offline().await?;
                        if !self.want_online {
                            return Ok(Attempt::Ended(End::Offline));
                        }
                    }
                    None => return Ok(Attempt::Ended(End::Stop)),
                },
            }
        }
    }

    /// Runs one connection until it ends; the core hears of both ends.
    async fn connected(&mut self, ws: WebSocketStream<C::Stream>) -> Result<End, ClientRunError> {
        let (sink, mut read) = ws.split();
        let mut link = Link::new(sink);
        self.online = false;
        let now = self.now();
        self.client.handle_connected(now);
        // Silence is measured from the last message received, not from the
        // last wake-up: busy app commands must not hide a dead server.
        let mut idle_deadline = Instant::now() + self.options.idle_timeout;
        let end = loop {
            // Frames produced before the loop (or by the previous branch).
            if let Err(reason) = self.pump(Some(&mut link)).await? {
                break End::Lost(reason);
            }
            if self.client.is_ready() && !self.online {
                self.online = true;
                self.attempt = 0;
                self.emit(ClientEvent::Online).await;
            }
            let wait = self.client.poll_timeout().map(|t| Duration::from_millis(t.saturating_sub(self.now())));
            let timer = tokio::time::sleep(wait.unwrap_or(Duration::MAX));
            let held_due = link.next_due();
            let held = match held_due {
                Some(due) => tokio::time::sleep_until(due),
                None => tokio::time::sleep(Duration::MAX),
            };
            tokio::select! {
                biased;
                () = timer, if wait.is_some() => {
                    let now = self.now();
                    self.client.handle_timeout(now);
                }
                () = held, if held_due.is_some() => {
                    if let Err(reason) = self.release_held(&mut link).await {
                        break End::Lost(reason);
                    }
                }
                command = self.commands.recv() => match command {
                    Some(c) => {
                        self.command(c);
                        if !self.want_online {
                            break End::Offline;
                        }
                    }
                    None => break End::Stop,
                },
                next = tokio::time::timeout_at(idle_deadline, read.next()) => {
                    // Messages already received join this one before the
                    // next save (see RECEIVE_BATCH_MAX).
                    let mut next = Some(next);
                    let mut handled = 0;
                    let mut ended = None;
                    while let Some(n) = next.take() {
                        ended = self.on_read(n, &mut link, &mut idle_deadline);
                        handled += 1;
                        // The login's Welcome ends a batch, so the app hears
                        // `Online` before anything this connection delivers.
                        let logged_in = !self.online && self.client.is_ready();
                        if ended.is_some() || handled >= RECEIVE_BATCH_MAX || logged_in {
                            break;
                        }
                        // Polled with this task's own waker (not a no-op
                        // one, as `now_or_never` would): a `Pending` here
                        // must still wake the task when the frame arrives.
                        let ready = std::future::poll_fn(|cx| Poll::Ready(read.poll_next_unpin(cx))).await;
                        next = match ready {
                            Poll::Ready(item) => Some(Ok(item)),
                            Poll::Pending => None,
                        };
                    }
                    if let Some(end) = ended {
                        break end;
                    }
                }
            }
        };
        let now = self.now();
        self.client.handle_disconnected(now);
        let _ = tokio::time::timeout(WRITE_TIMEOUT, link.sink.close()).await;
        Ok(end)
    }

    /// Handles one read from the connection; `Some` when it ends it.
    fn on_read(
        &mut self,
        next: Result<Option<Result<Message, tokio_tungstenite::tungstenite::Error>>, tokio::time::error::Elapsed>,
        link: &mut Link<C::Stream>,
        idle_deadline: &mut Instant,
    ) -> Option<End> {
        match next {
            Ok(Some(Ok(Message::Binary(b)))) => match wire::decode::<ServerFrame>(&b) {
                Ok(frame) => {
                    *idle_deadline = Instant::now() + self.options.idle_timeout;
                    self.receive(frame, link);
                    None
                }
                // A server we cannot understand: reconnecting is all we can
                // do, and its frames will come again.
                Err(e) => Some(End::Lost(format!("undecodable frame from the server: {e}"))),
            },
            Ok(Some(Ok(Message::Close(_))) | None) => Some(End::Lost("closed by the server".into())),
            Ok(Some(Ok(_))) => {
                *idle_deadline = Instant::now() + self.options.idle_timeout;
                None
            }
            Ok(Some(Err(e))) => Some(End::Lost(format!("read failed: {e}"))),
            Err(_) => Some(End::Lost("server silent for too long".into())),
        }
    }

    /// Hands a received frame to the core, as the tap decides.
    fn receive(&mut self, frame: ServerFrame, link: &mut Link<C::Stream>) {
        let Some(tap) = &self.options.tap else {
            self.feed(frame);
            return;
        };
        let fate = tap.incoming(&frame, self.now());
        for delay in fate.copies.into_iter().take(FATE_COPIES_MAX) {
            if delay.is_zero() {
                self.feed(frame.clone());
            } else {
                link.hold_in(delay, frame.clone());
            }
        }
    }

    /// Hands one frame to the core, telling the observer first.
    fn feed(&mut self, frame: ServerFrame) {
        let now = self.now();
        if let Some(o) = &self.options.observer {
            o.frame_in(&frame, now);
        }
        self.client.handle_frame(frame, now);
        // Frames are sealed for the state right after this input; a later
        // input of the same batch may change it before the pump shows them.
        self.observe_queued();
    }

    /// Shows the observer every frame waiting to be sent.
    fn observe_queued(&self) {
        if let Some(o) = &self.options.observer {
            let now = self.now();
            for frame in self.client.queued_transmits() {
                o.frame_out(frame, &self.client, now);
            }
        }
    }

    /// Sends and feeds every held frame that is due.
    async fn release_held(&mut self, link: &mut Link<C::Stream>) -> Result<(), String> {
        let now = Instant::now();
        while let Some(entry) = link.held_in.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let frame = entry.remove();
            self.feed(frame);
        }
        while link.held_out.first_key_value().is_some_and(|((due, _), _)| *due <= now) {
            if let Some((_, bytes)) = link.held_out.pop_first() {
                link.send(bytes).await?;
            }
        }
        Ok(())
    }

    /// Waits out the reconnect delay while still serving commands. `false`
    /// when the app closed its handle.
    async fn back_off(&mut self) -> Result<bool, ClientRunError> {
        let delay = backoff_delay(self.attempt, self.options.backoff_min, self.options.backoff_max, &mut self.rng);
        self.attempt = self.attempt.saturating_add(1);
        let sleep = tokio::time::sleep(delay);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                biased;
                () = &mut sleep => return Ok(true),
                command = self.commands.recv() => match command {
                    Some(c) => {
                        self.command(c);
                        self.pump_offline().await?;
                        if !self.want_online {
                            return Ok(true);
                        }
                    }
                    None => return Ok(false),
                },
            }
        }
    }

    fn command(&mut self, command: Command) {
        let now = self.now();
        let observer = self.options.observer.clone();
        let observe = |action: AppAction<'_>| {
            if let Some(o) = &observer {
                o.action(&action, now);
            }
        };
        // Each reply goes out before the save in the next pump: the app
        // learns the id at once, but nothing is sent before it is saved.
        match command {
            Command::SendText { to, body, reply } => {
                let result = self.client.send_text(&to, &body, now);
                if let Ok(id) = result {
                    observe(AppAction::SentText { to: &to, id, body: &body });
                }
                let _ = reply.send(result);
            }
            Command::SendGroup { group, body, reply } => {
                let result = self.client.send_group(group, &body, now);
                if let Ok(id) = result {
                    let me = &self.client.config().user;
                    let members: Vec<UserId> = self
                        .client
                        .group(&group)
                        .map(|(_, m)| m.into_iter().filter(|u| u != me).collect())
                        .unwrap_or_default();
                    observe(AppAction::SentGroup { group, id, body: &body, members: &members });
                }
                let _ = reply.send(result);
            }
            Command::CreateGroup { members, reply } => {
                let result = self.client.create_group(members.clone(), now);
                if let Ok(group) = result {
                    observe(AppAction::CreatedGroup { group, members: &members });
                }
                let _ = reply.send(result);
            }
            Command::ChangeGroup { group, add, remove, reply } => {
                let result = self.client.change_group(group, add.clone(), remove.clone(), now);
                if result.is_ok() {
                    observe(AppAction::ChangedGroup { group, add: &add, remove: &remove });
                }
                let _ = reply.send(result);
            }
            Command::SendMedia { to, bytes, reply } => {
                let result = self.client.send_media(&to, &bytes, now);
                if let Ok(id) = result {
                    observe(AppAction::SentMedia { to: &to, id, body: &bytes });
                }
                let _ = reply.send(result);
            }
            Command::SetPresencePrivacy { visibility, contacts, reply } => {
                let result = self.client.set_presence_privacy(visibility, &contacts, now);
                if result.is_ok() {
                    observe(AppAction::SetPresencePrivacy { visibility, contacts: &contacts });
                }
                let _ = reply.send(result);
            }
            Command::SubscribePresence { users, reply } => {
                let result = self.client.subscribe_presence(&users, now);
                if result.is_ok() {
                    observe(AppAction::SubscribedPresence { users: &users });
                }
                let _ = reply.send(result);
            }
            Command::MarkRead { peer } => {
                self.client.mark_read(&peer, now);
                observe(AppAction::Read { peer: &peer });
            }
            Command::MarkGroupRead { group } => {
                self.client.mark_group_read(group, now);
                observe(AppAction::ReadGroup { group });
            }
            Command::SetOnline { online } => {
                if online && !self.want_online {
                    // Coming back by choice is not a failure streak.
                    self.attempt = 0;
                }
                self.want_online = online;
            }
        }
    }

    /// Tells the observer, then the app (if it still listens).
    async fn emit(&mut self, event: ClientEvent) {
        if let Some(o) = &self.options.observer {
            o.event(&event, self.options.clock.now_ms());
        }
        // The app dropped or closed its receiver: it no longer wants events,
        // and they are saved as handled either way.
        let _ = self.events.send(event).await;
    }

    /// [`Driver::pump`] with no connection: save, then surface events.
    async fn pump_offline(&mut self) -> Result<(), ClientRunError> {
        // Without a link nothing is sent, so nothing can break.
        self.pump(None).await.map(|_| ())
    }

    /// Save if dirty, then send transmits (through the tap) and surface
    /// events. `Ok(Err(_))` when the connection broke while sending. With no
    /// link (offline) frames are discarded: the core makes them again after
    /// the next login.
    async fn pump(&mut self, mut link: Option<&mut Link<C::Stream>>) -> Result<Result<(), String>, ClientRunError> {
        if self.client.is_dirty() {
            self.save().await?;
        }
        let mut broken = Ok(());
        // Before the pacer lets them go, while the state that sealed them is
        // current; frames it holds are shown again on later pumps.
        self.observe_queued();
        // Fed, then written with one flush: a send per frame was a system
        // call per ack and receipt, a third of a draining load generator's
        // CPU on loopback.
        let mut fed = false;
        while let Some(frame) = self.client.poll_transmit() {
            let Some(link) = link.as_deref_mut() else { continue };
            if broken.is_err() {
                continue;
            }
            let fate = match &self.options.tap {
                Some(tap) => tap.outgoing(&frame, self.now()),
                None => FrameFate::once(),
            };
            let bytes = wire::encode(&frame);
            for delay in fate.copies.into_iter().take(FATE_COPIES_MAX) {
                if !delay.is_zero() {
                    link.hold_out(delay, bytes.clone());
                } else if let Err(e) = link.feed(bytes.clone()).await {
                    broken = Err(e);
                    break;
                } else {
                    fed = true;
                }
            }
        }
        if let (true, Ok(()), Some(link)) = (fed, &broken, link) {
            broken = link.flush().await;
        }
        while let Some(event) = self.client.poll_event() {
            self.emit(ClientEvent::App(event)).await;
        }
        if let Some(o) = &self.options.observer {
            o.settled(&self.client, self.options.clock.now_ms());
        }
        Ok(broken)
    }

    async fn save(&mut self) -> Result<(), ClientRunError> {
        // Without a first save the client's tables never start journaling,
        // so skipping every save leaves no change log growing either.
        if self.options.volatile {
            return Ok(());
        }
        let full = self.full_len.is_none_or(|len| self.since_full >= len.max(FULL_SAVE_AFTER_BYTES_MIN));
        let save = self.client.save_incremental(full);
        match &save {
            IncrementalSave::Full(state) => {
                self.full_len = Some(state.as_bytes().len());
                self.since_full = 0;
            }
            IncrementalSave::Changes(changes) => self.since_full += changes.as_bytes().len(),
        }
        if let Some(saver) = &self.options.saver {
            let stored = match &save {
                IncrementalSave::Full(state) => saver.save(state),
                IncrementalSave::Changes(changes) => saver.save_changes(changes),
            };
            return stored.map_err(|source| ClientRunError::Save { path: self.options.save_path.clone(), source });
        }
        let file = Arc::clone(&self.file);
        let path = self.options.save_path.clone();
        let write = move || {
            let mut file = crate::sync::lock(&file);
            match &save {
                IncrementalSave::Full(state) => file.write_full(state),
                IncrementalSave::Changes(changes) => file.append(changes),
            }
            .map_err(|e| (path, e))
        };
        let saved = if self.options.inline_saves {
            write()
        } else {
            tokio::task::spawn_blocking(write).await.map_err(|e| ClientRunError::SaveTask { detail: e.to_string() })?
        };
        saved.map_err(|(path, source)| ClientRunError::Save { path, source })
    }

    fn now(&self) -> u64 {
        self.options.clock.now_ms()
    }
}

/// The delay before reconnect attempt `attempt` (0-based): `min · 2^attempt`
/// capped at `max`, of which the upper half is random ("equal jitter"), so
/// the delay still grows but simultaneous failures spread out.
pub fn backoff_delay<R: RngCore + ?Sized>(attempt: u32, min: Duration, max: Duration, rng: &mut R) -> Duration {
    let min_ms = u64::try_from(min.as_millis()).unwrap_or(u64::MAX).max(1);
    let max_ms = u64::try_from(max.as_millis()).unwrap_or(u64::MAX).max(min_ms);
    let cap = min_ms.checked_shl(attempt.min(32)).unwrap_or(u64::MAX).min(max_ms);
    let half = cap / 2;
    let jitter = rng.next_u64() % (cap - half + 1);
    Duration::from_millis(half + jitter)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::ChaCha20Rng;
    use rand_core::SeedableRng;

    #[test]
    fn backoff_grows_to_the_cap_and_stays_within_its_half_jitter() {
        let mut rng = ChaCha20Rng::seed_from_u64(7);
        let (min, max) = (Duration::from_millis(250), Duration::from_secs(30));
        for attempt in 0..40 {
            let cap = (250u64 << attempt.min(20)).min(30_000);
            let d = backoff_delay(attempt, min, max, &mut rng).as_millis() as u64;
            assert!(d >= cap / 2 && d <= cap, "attempt {attempt}: {d} ms outside [{}, {cap}]", cap / 2);
        }
    }

    #[test]
    fn backoff_jitter_differs_between_generators() {
        let (min, max) = (Duration::from_millis(250), Duration::from_secs(30));
        let a: Vec<Duration> = (0..8).map(|i| backoff_delay(i, min, max, &mut ChaCha20Rng::seed_from_u64(1))).collect();
        let b: Vec<Duration> = (0..8).map(|i| backoff_delay(i, min, max, &mut ChaCha20Rng::seed_from_u64(2))).collect();
        assert_ne!(a, b);
    }

    #[test]
    fn atomic_save_replaces_the_file_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.bin");
        save_atomically(&path, b"first").unwrap();
        save_atomically(&path, b"second").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"second");
        assert!(!dir.path().join("state.bin.tmp").exists());
    }
}
