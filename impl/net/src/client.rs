//! One device's client over a reconnecting WebSocket.
//!
//! [`run_client`] spawns a task that owns a sans-IO [`Client`] and drives it:
//! connect, feed frames and timer expiries in, run app commands, and after
//! every input keep the durability contract — if the client is dirty, its
//! [`Client::save`] is written to the save file atomically (temp file, fsync,
//! rename) *before* any frame it produced is sent or any event reaches the
//! app. A crash at any point then loses nothing the server or the app was
//! told about.
//!
//! The connection is re-established after any failure with exponential
//! backoff ([`BACKOFF_MIN`] doubling up to [`BACKOFF_MAX`]) and "equal
//! jitter" drawn from an injected RNG, so devices cut off together do not
//! come back together. The app talks to the task through a [`ClientHandle`]:
//! commands in, [`ClientEvent`]s out.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bluetick_core::client::{AppEvent, Client, ClientConfig, ClientError, RestoreError, SavedClient};
use bluetick_core::ids::{MessageId, UserId};
use bluetick_core::wire::{self, ServerFrame};
use futures_util::{SinkExt, StreamExt};
use rand_core::RngCore;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

use crate::clock::{Clock, SystemClock};
use crate::server::{IDLE_TIMEOUT, WRITE_TIMEOUT};

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

/// What the app hears from the client task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientEvent {
    /// An event from the core (messages, ticks, errors…).
    App(AppEvent),
    /// The connection is authenticated and usable.
    Online,
    /// The connection dropped; the task reconnects by itself.
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
        /// The save file.
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

/// App commands.
#[derive(Debug)]
enum Command {
    SendText { to: UserId, body: Vec<u8>, reply: oneshot::Sender<Result<MessageId, ClientError>> },
    MarkRead { peer: UserId },
}

/// How the client task runs.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// `ws://host:port/` of the server.
    pub url: String,
    /// Where the state is saved.
    pub save_path: PathBuf,
    /// Where "now" comes from.
    pub clock: Arc<dyn Clock>,
    /// First reconnect delay.
    pub backoff_min: Duration,
    /// Longest reconnect delay.
    pub backoff_max: Duration,
    /// Silence from the server after which the connection counts as dead.
    pub idle_timeout: Duration,
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
    /// Queues a text message; returns its id once the core accepted it (it is
    /// saved, and sent whenever the client is online).
    ///
    /// # Errors
    /// `Ok(Err(_))` if the core refused it; `Err(Stopped)` if the task ended.
    pub async fn send_text(&self, to: UserId, body: Vec<u8>) -> Result<Result<MessageId, ClientError>, Stopped> {
        let (reply, answer) = oneshot::channel();
        self.commands.send(Command::SendText { to, body, reply }).await.map_err(|_| Stopped)?;
        answer.await.map_err(|_| Stopped)
    }

    /// Marks everything received from `peer` as read (Read receipts go out).
    ///
    /// # Errors
    /// `Stopped` if the task ended.
    pub async fn mark_read(&self, peer: UserId) -> Result<(), Stopped> {
        self.commands.send(Command::MarkRead { peer }).await.map_err(|_| Stopped)
    }

    /// The next event; `None` once the task has stopped.
    pub async fn next_event(&mut self) -> Option<ClientEvent> {
        self.events.recv().await
    }

    /// Stops the task (after a final save) and returns the client.
    ///
    /// # Errors
    /// Whatever stopped the task early, or [`ClientRunError::SaveTask`] if it
    /// panicked.
    pub async fn shutdown(self) -> Result<Client, ClientRunError> {
        drop(self.commands);
        drop(self.events);
        self.task.await.map_err(|e| ClientRunError::SaveTask { detail: e.to_string() })?
    }
}

/// Restores the client saved at `path`, or creates a new device there (with a
/// 256-bit seed from the OS) if the file does not exist.
///
/// # Errors
/// [`ClientRunError::Load`] / [`ClientRunError::Restore`] if a save exists but
/// cannot be used — never silently replaced, as that would lose the identity.
pub fn open_client(config: ClientConfig, path: &Path, clock: &dyn Clock) -> Result<Client, ClientRunError> {
    match std::fs::read(path) {
        Ok(bytes) => Client::restore(config, &SavedClient::from_bytes(bytes))
            .map_err(|source| ClientRunError::Restore { path: path.to_path_buf(), source }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Ok(Client::from_seed(config, crate::entropy::os_seed(), clock.now_ms()))
        }
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

/// Starts the client task. `rng` draws the reconnect jitter
/// ([`crate::entropy::jitter_rng`] for real use).
pub fn run_client<R>(client: Client, options: ClientOptions, rng: R) -> ClientHandle
where
    R: RngCore + Send + 'static,
{
    let (commands, commands_rx) = mpsc::channel(COMMAND_QUEUE_LEN);
    let (events_tx, events) = mpsc::channel(EVENT_QUEUE_LEN);
    let driver = Driver { client, options, events: events_tx, commands: commands_rx, rng, attempt: 0, online: false };
    let task = tokio::spawn(driver.run());
    ClientHandle { commands, events, task }
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

struct Driver<R> {
    client: Client,
    options: ClientOptions,
    events: mpsc::Sender<ClientEvent>,
    commands: mpsc::Receiver<Command>,
    rng: R,
    /// Failed connection attempts since the last successful login.
    attempt: u32,
    /// Whether `Online` was reported for the current connection.
    online: bool,
}

/// Why a connection ended.
enum End {
    /// The app closed its handle: stop.
    Stop,
    /// The connection failed: reconnect.
    Lost(String),
}

impl<R: RngCore + Send> Driver<R> {
    async fn run(mut self) -> Result<Client, ClientRunError> {
        // A new device is dirty: its identity is on disk before it registers.
        self.pump_offline().await?;
        loop {
            let connect = tokio_tungstenite::connect_async_with_config(
                self.options.url.as_str(),
                Some(crate::ws_config()),
                false,
            );
            let end = match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
                Ok(Ok((ws, _))) => self.connected(ws).await?,
                Ok(Err(e)) => End::Lost(format!("connect failed: {e}")),
                Err(_) => End::Lost("connect timed out".into()),
            };
            match end {
                End::Stop => break,
                End::Lost(reason) => {
                    tracing::debug!(user = self.client.config().user.as_str(), %reason, "connection lost");
                    if self.events.send(ClientEvent::Offline { reason }).await.is_err() {
                        break;
                    }
                }
            }
            if let End::Stop = self.back_off().await? {
                break;
            }
        }
        self.pump_offline().await?;
        Ok(self.client)
    }

    /// Runs one connection until it ends; the core hears of both ends.
    async fn connected(&mut self, ws: Ws) -> Result<End, ClientRunError> {
        let (mut sink, mut read) = ws.split();
        self.online = false;
        let now = self.now();
        self.client.handle_connected(now);
        // Silence is measured from the last message received, not from the
        // last wake-up: busy app commands must not hide a dead server.
        let mut idle_deadline = tokio::time::Instant::now() + self.options.idle_timeout;
        let end = loop {
            // Frames produced before the loop (or by the previous branch).
            if let Err(reason) = self.pump(Some(&mut sink)).await? {
                break End::Lost(reason);
            }
            if self.client.is_ready() && !self.online {
                self.online = true;
                self.attempt = 0;
                if self.events.send(ClientEvent::Online).await.is_err() {
                    break End::Stop;
                }
            }
            let wait = self.client.poll_timeout().map(|t| Duration::from_millis(t.saturating_sub(self.now())));
            let timer = tokio::time::sleep(wait.unwrap_or(Duration::MAX));
            tokio::select! {
                biased;
                () = timer, if wait.is_some() => {
                    let now = self.now();
                    self.client.handle_timeout(now);
                }
                command = self.commands.recv() => match command {
                    Some(c) => self.command(c),
                    None => break End::Stop,
                },
                next = tokio::time::timeout_at(idle_deadline, read.next()) => match next {
                    Ok(Some(Ok(Message::Binary(b)))) => match wire::decode::<ServerFrame>(&b) {
                        Ok(frame) => {
                            idle_deadline = tokio::time::Instant::now() + self.options.idle_timeout;
                            let now = self.now();
                            self.client.handle_frame(frame, now);
                        }
                        // A server we cannot understand: reconnecting is all
                        // we can do, and its frames will come again.
                        Err(e) => break End::Lost(format!("undecodable frame from the server: {e}")),
                    },
                    Ok(Some(Ok(Message::Close(_))) | None) => break End::Lost("closed by the server".into()),
                    Ok(Some(Ok(_))) => idle_deadline = tokio::time::Instant::now() + self.options.idle_timeout,
                    Ok(Some(Err(e))) => break End::Lost(format!("read failed: {e}")),
                    Err(_) => break End::Lost("server silent for too long".into()),
                },
            }
        };
        let now = self.now();
        self.client.handle_disconnected(now);
        let _ = tokio::time::timeout(WRITE_TIMEOUT, sink.close()).await;
        Ok(end)
    }

    /// Waits out the reconnect delay while still serving commands (sends
    /// made offline are saved and go out after the next login).
    async fn back_off(&mut self) -> Result<End, ClientRunError> {
        let delay = backoff_delay(self.attempt, self.options.backoff_min, self.options.backoff_max, &mut self.rng);
        self.attempt = self.attempt.saturating_add(1);
        let sleep = tokio::time::sleep(delay);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                biased;
                () = &mut sleep => return Ok(End::Lost(String::new())),
                command = self.commands.recv() => match command {
                    Some(c) => {
                        self.command(c);
                        self.pump_offline().await?;
                    }
                    None => return Ok(End::Stop),
                },
            }
        }
    }

    fn command(&mut self, command: Command) {
        let now = self.now();
        match command {
            Command::SendText { to, body, reply } => {
                let result = self.client.send_text(&to, &body, now);
                // The id is returned before the save below: the app learns
                // it, but the message itself is only sent once saved.
                let _ = reply.send(result);
            }
            Command::MarkRead { peer } => self.client.mark_read(&peer, now),
        }
    }

    /// [`Driver::pump`] with no connection: save, then surface events.
    async fn pump_offline(&mut self) -> Result<(), ClientRunError> {
        // Without a sink nothing is sent, so nothing can break.
        self.pump(None).await.map(|_| ())
    }

    /// Save if dirty, then send transmits and surface events. `Ok(Err(_))`
    /// when the connection broke while sending.
    async fn pump(&mut self, mut sink: Option<&mut Sink>) -> Result<Result<(), String>, ClientRunError> {
        if self.client.is_dirty() {
            let bytes = self.client.save().as_bytes().to_vec();
            let path = self.options.save_path.clone();
            let saved = tokio::task::spawn_blocking(move || save_atomically(&path, &bytes).map_err(|e| (path, e)))
                .await
                .map_err(|e| ClientRunError::SaveTask { detail: e.to_string() })?;
            saved.map_err(|(path, source)| ClientRunError::Save { path, source })?;
        }
        let mut broken = Ok(());
        while let Some(frame) = self.client.poll_transmit() {
            let Some(sink) = sink.as_deref_mut() else { continue };
            if broken.is_err() {
                continue;
            }
            let message = Message::Binary(wire::encode(&frame).into());
            match tokio::time::timeout(WRITE_TIMEOUT, sink.send(message)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => broken = Err(format!("send failed: {e}")),
                Err(_) => broken = Err("send timed out".into()),
            }
        }
        while let Some(event) = self.client.poll_event() {
            // The app dropped its receiver: it no longer wants events, and
            // they are saved as handled either way.
            let _ = self.events.send(ClientEvent::App(event)).await;
        }
        Ok(broken)
    }

    fn now(&self) -> u64 {
        self.options.clock.now_ms()
    }
}

type Sink = futures_util::stream::SplitSink<Ws, Message>;

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
