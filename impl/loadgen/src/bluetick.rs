//! The bluetick target: real [`Client`]s (real X3DH, Double Ratchet,
//! durable saves) driven by [`bluetick_net::client::run_client`] over
//! WebSockets, exactly as `bluetick chat` would run them.
//!
//! Pair `p` is user `<tag>s<p>` sending 1:1 text to user `<tag>r<p>`. Each
//! client saves its state to a file in the state directory after every
//! input (that is the client driver's durability contract), so the state
//! directory's file system is part of what is measured: the benchmark
//! script puts it on tmpfs.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bluetick_core::client::pacer::Pace;
use bluetick_core::client::{AppEvent, Client, ClientConfig, ClientError, DeliveryState, PRIMARY_DEVICE};
use bluetick_core::ids::{MessageId, UserId};
use bluetick_net::client::{run_client, ClientEvent, ClientHandle, ClientOptions};
use bluetick_net::clock::{Clock, SystemClock};
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::engine::{Driver, Offer, SenderPort, Shared};
use crate::payload::{Kind, Stamp};

/// One-time prekeys each load client uploads. A receiver needs one per
/// sender that opens a session with it (one here); the default batch (the
/// full stock) would make creating thousands of clients dominate the run.
pub const PREKEY_BATCH: usize = 4;

/// How long a client gets to connect and log in before the run gives up:
/// several of the client driver's 10 s connect attempts, because a server
/// that fsyncs every registration on its only core accepts slowly while
/// hundreds of load clients log in at once.
pub const LOGIN_TIMEOUT: Duration = Duration::from_secs(120);

/// Failed connection attempts after which a client's login counts as failed
/// (the client driver would keep retrying with back-off forever). Generous:
/// a busy server can leave connections unaccepted past the driver's 10 s
/// connect timeout, and [`LOGIN_TIMEOUT`] bounds the wait anyway; an absent
/// server is caught before by the probe.
pub const CONNECT_ATTEMPTS_MAX: u32 = 10;

/// Reconnect delays for load clients: a dropped connection under load
/// should come back quickly, not after the interactive defaults' seconds.
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// Which end of a pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Sender,
    Receiver,
}

/// A receiver's client: running, or parked while "offline".
enum Slot {
    Running { stop: oneshot::Sender<()>, task: JoinHandle<Result<Client, String>> },
    Parked(Box<Client>),
}

/// The bluetick driver.
pub struct Bluetick {
    shared: Arc<Shared>,
    url: String,
    state_dir: PathBuf,
    inline_saves: bool,
    volatile: bool,
    receivers: Mutex<BTreeMap<usize, Slot>>,
}

impl Bluetick {
    /// A driver saving client state under `state_dir`, on the runtime's
    /// thread if `inline_saves` (see [`ClientOptions::inline_saves`]), or
    /// not at all if `volatile` (see [`ClientOptions::volatile`]).
    pub fn new(shared: Arc<Shared>, state_dir: PathBuf, inline_saves: bool, volatile: bool) -> Bluetick {
        let url = shared.plan.server.clone();
        Bluetick { shared, url, state_dir, inline_saves, volatile, receivers: Mutex::new(BTreeMap::new()) }
    }

    fn user(&self, role: Role, pair: usize) -> Result<UserId, String> {
        let tag = &self.shared.plan.run_tag;
        let name = match role {
            Role::Sender => format!("{tag}s{pair}"),
            Role::Receiver => format!("{tag}r{pair}"),
        };
        UserId::new(&name).map_err(|e| format!("load user name {name:?}: {e}"))
    }

    fn seed(&self, role: Role, pair: usize) -> u64 {
        let role_bit = match role {
            Role::Sender => 0,
            Role::Receiver => 1,
        };
        crate::mix(self.shared.plan.seed, (pair as u64) << 1 | role_bit)
    }

    fn config(&self, role: Role, pair: usize) -> Result<ClientConfig, String> {
        let user = self.user(role, pair)?;
        let limit = self.shared.plan.server_frames_per_second;
        // `serve` allows a burst of twice its rate.
        let pace = Pace::under(limit, limit.saturating_mul(2));
        Ok(ClientConfig { prekey_batch: PREKEY_BATCH, pace, ..ClientConfig::new(user, PRIMARY_DEVICE) })
    }

    /// Starts `client`'s task and waits for its login.
    async fn start(&self, client: Client, role: Role, pair: usize) -> Result<ClientHandle, String> {
        let name = client.config().user.as_str().to_owned();
        let options = ClientOptions {
            backoff_min: BACKOFF_MIN,
            backoff_max: BACKOFF_MAX,
            inline_saves: self.inline_saves,
            volatile: self.volatile,
            ..ClientOptions::new(self.url.clone(), self.state_dir.join(format!("{name}.state")))
        };
        let jitter = ChaCha20Rng::seed_from_u64(self.seed(role, pair) ^ 0x6a69_7474_6572);
        let mut handle = run_client(client, options, jitter);
        match wait_online(&mut handle, &self.url).await {
            Ok(()) => Ok(handle),
            Err(e) => {
                let _ = handle.shutdown().await;
                Err(format!("{name}: {e}"))
            }
        }
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, BTreeMap<usize, Slot>> {
        self.receivers.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Waits for `Online`; fails after [`CONNECT_ATTEMPTS_MAX`] failed attempts,
/// a server refusal, or [`LOGIN_TIMEOUT`].
async fn wait_online(handle: &mut ClientHandle, url: &str) -> Result<(), String> {
    let mut failures = 0;
    let mut last = String::from("no answer");
    let wait = async {
        loop {
            match handle.next_event().await {
                Some(ClientEvent::Online) => return Ok(()),
                Some(ClientEvent::Offline { reason }) => {
                    failures += 1;
                    last = reason;
                    if failures >= CONNECT_ATTEMPTS_MAX {
                        return Err(format!("cannot connect to {url} ({last})"));
                    }
                }
                Some(ClientEvent::App(AppEvent::ServerError { code, detail })) => {
                    return Err(format!("the server refused the login: {code:?}: {detail}"));
                }
                Some(ClientEvent::App(_)) => {}
                None => return Err("the client task stopped before logging in".into()),
            }
        }
    };
    match tokio::time::timeout(LOGIN_TIMEOUT, wait).await {
        Ok(result) => result,
        Err(_) => Err(format!("no login at {url} within {} s ({last})", LOGIN_TIMEOUT.as_secs())),
    }
}

/// Hands everything `handle` receives to `shared` until `stop`; returns the
/// client after its final save.
async fn receive(
    mut handle: ClientHandle,
    shared: Arc<Shared>,
    mut stop: oneshot::Receiver<()>,
) -> Result<Client, String> {
    loop {
        tokio::select! {
            biased;
            _ = &mut stop => break,
            event = handle.next_event() => match event {
                Some(ClientEvent::App(AppEvent::Message { body, .. })) => shared.on_message(&body),
                Some(ClientEvent::App(AppEvent::Undecryptable { from, reason, .. })) => {
                    shared.error(format!("undecryptable message from {from}: {reason:?}"));
                }
                Some(ClientEvent::App(AppEvent::ServerError { code, detail })) => {
                    shared.error(format!("server error at a receiver: {code:?}: {detail}"));
                }
                Some(ClientEvent::Offline { .. }) => {
                    shared.reconnects.fetch_add(1, Ordering::Relaxed);
                }
                Some(_) => {}
                None => break,
            },
        }
    }
    handle.shutdown().await.map_err(|e| e.to_string())
}

/// A sender's client.
pub struct BluetickSender {
    handle: ClientHandle,
    to: UserId,
    pair: usize,
    shared: Arc<Shared>,
    /// Measured messages the server has not confirmed yet.
    unconfirmed: BTreeSet<MessageId>,
}

impl SenderPort for BluetickSender {
    async fn send(&mut self, body: Vec<u8>) -> Result<Offer, String> {
        let measured = Stamp::decode(&body).is_some_and(|s| s.kind == Kind::Measured);
        match self.handle.send_text(self.to.clone(), body).await {
            Ok(Ok(id)) => {
                if measured {
                    self.unconfirmed.insert(id);
                }
                Ok(Offer::Queued)
            }
            Ok(Err(ClientError::OutboxFull { .. })) => Ok(Offer::Full),
            Ok(Err(e)) => Err(format!("the client refused a message: {e}")),
            Err(_) => Err("the client task stopped".into()),
        }
    }

    async fn next_event(&mut self) -> Result<(), String> {
        match self.handle.next_event().await {
            Some(ClientEvent::App(AppEvent::Status { id, status, .. })) => {
                // The first state at or past Sent is the server's
                // confirmation (a Delivered receipt can overtake nothing:
                // the server acks before it delivers).
                if status >= DeliveryState::Sent && self.unconfirmed.remove(&id) {
                    self.shared.on_server_ack(self.pair);
                }
                if status == DeliveryState::Delivered {
                    self.shared.receipts.fetch_add(1, Ordering::Relaxed);
                }
                Ok(())
            }
            Some(ClientEvent::App(AppEvent::ServerError { code, detail })) => {
                self.shared.error(format!("server error at sender {}: {code:?}: {detail}", self.pair));
                Ok(())
            }
            Some(ClientEvent::App(AppEvent::SessionFailed { peer, reason })) => {
                self.shared.error(format!("session with {peer} failed: {reason}"));
                Ok(())
            }
            Some(ClientEvent::Offline { .. }) => {
                self.shared.reconnects.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Some(_) => Ok(()),
            None => Err("the client task stopped".into()),
        }
    }
}

impl Driver for Bluetick {
    type Sender = BluetickSender;

    async fn open_receiver(self: Arc<Self>, pair: usize) -> Result<(), String> {
        let parked = match self.slots().remove(&pair) {
            Some(Slot::Parked(client)) => Some(*client),
            Some(running @ Slot::Running { .. }) => {
                self.slots().insert(pair, running);
                return Ok(());
            }
            None => None,
        };
        let client = match parked {
            Some(client) => client,
            None => {
                Client::new(self.config(Role::Receiver, pair)?, self.seed(Role::Receiver, pair), SystemClock.now_ms())
            }
        };
        let handle = self.start(client, Role::Receiver, pair).await?;
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(receive(handle, Arc::clone(&self.shared), stopped));
        self.slots().insert(pair, Slot::Running { stop, task });
        Ok(())
    }

    async fn close_receiver(self: Arc<Self>, pair: usize) -> Result<(), String> {
        let Some(slot) = self.slots().remove(&pair) else { return Ok(()) };
        let client = match slot {
            Slot::Parked(client) => *client,
            Slot::Running { stop, task } => {
                let _ = stop.send(());
                task.await.map_err(|e| format!("receiver {pair}: {e}"))??
            }
        };
        self.slots().insert(pair, Slot::Parked(Box::new(client)));
        Ok(())
    }

    async fn open_sender(self: Arc<Self>, pair: usize) -> Result<BluetickSender, String> {
        let config = self.config(Role::Sender, pair)?;
        let client = Client::new(config, self.seed(Role::Sender, pair), SystemClock.now_ms());
        let handle = self.start(client, Role::Sender, pair).await?;
        Ok(BluetickSender {
            handle,
            to: self.user(Role::Receiver, pair)?,
            pair,
            shared: Arc::clone(&self.shared),
            unconfirmed: BTreeSet::new(),
        })
    }

    async fn close_sender(self: Arc<Self>, sender: BluetickSender) {
        if let Err(e) = sender.handle.shutdown().await {
            self.shared.error(format!("sender {}: {e}", sender.pair));
        }
    }

    async fn close_all(self: Arc<Self>) {
        let slots = std::mem::take(&mut *self.slots());
        for (pair, slot) in slots {
            if let Slot::Running { stop, task } = slot {
                let _ = stop.send(());
                match task.await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => self.shared.error(format!("receiver {pair}: {e}")),
                    Err(e) => self.shared.error(format!("receiver {pair}: {e}")),
                }
            }
        }
    }
}
