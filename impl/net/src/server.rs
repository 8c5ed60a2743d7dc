//! The chat server over WebSockets: `bluetick serve`.
//!
//! # Shape
//! One tokio task — the *server loop* in [`run_server`] — owns the sans-IO
//! [`Server`]. It waits (a `biased` `select!`, so shutdown and finished
//! commits win over new work) on: shutdown, a finished group commit, the
//! core's timer from [`Server::poll_timeout`], events from connections
//! (opened, frame, closed) and new TCP connections.
//!
//! # Group commit
//! The core applies each handle call's writes as one batch before it queues
//! the call's outputs; the loop keeps that promise for many calls at once. A
//! turn handles every connection event that is ready (up to
//! [`TURN_EVENTS_MAX`]) against a [`Staging`] store, which validates and
//! stages each batch. When the committer is idle, the staged writes are
//! sealed into one *group* and handed to the [`crate::commit`] committer,
//! which applies it as one transaction (one `fsync`); while it is busy the
//! open group keeps growing (up to [`GROUP_EVENTS_MAX`] calls), so the
//! group size follows the load. The outputs of those calls are held, in
//! order, until their group is durable, so a server-ack still follows the
//! durable write of what it acknowledges. `bluetick serve` runs the loop and
//! every connection's tasks on one thread and, when it may use a second
//! core, the commits on a committer thread, so the loop goes on reading and
//! accepting meanwhile; on one core, and in a simulator, the loop commits
//! inline (see [`crate::server_runtime`] and [`CommitMode`]). A failed commit stops the server with
//! [`ServeError::Commit`]: nothing the lost writes covered was sent.
//!
//! Each accepted stream gets a *connection task* that performs the WebSocket
//! handshake ([`tokio_tungstenite::accept_async_with_config`]) and then reads
//! frames, and a *writer task* that sends what the loop queued. Connections
//! come from an [`Acceptor`]: a `tokio::net::TcpListener` for real, a
//! simulated listener in bluetick-sim; everything above the byte stream is
//! the same code.
//!
//! # Back-pressure
//! The loop never awaits a connection. Each connection has a bounded send
//! queue of [`SEND_QUEUE_FRAMES`]; when a slow consumer's queue is full the
//! loop closes that connection and tells the core it disconnected, so its
//! undelivered mailbox items are requeued and redelivered when it reconnects.
//! Readers, in turn, await room in the loop's inbound queue, which pushes back
//! on the peers through TCP rather than growing memory.
//!
//! # Liveness
//! Writers send a WebSocket ping every [`HEARTBEAT_INTERVAL`]; readers close a
//! connection that sent nothing (pongs included) for [`IDLE_TIMEOUT`]; a write
//! that makes no progress for [`WRITE_TIMEOUT`] closes the connection.
//!
//! # Not yet
//! All users share the one loop (a single owner, no lock), so the server
//! uses at most two cores: the loop's and the committer's. Sharding users
//! over several loops, each with its own part of the store, is a later step
//! (a delivery, a receipt, a key fetch and a group send cross users, so
//! shards would hand frames to each other). A
//! media download reads the store under the lock the committer holds while
//! it commits, so it may wait for one commit.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bluetick_core::server::{ConnId, Server, ServerConfig, ServerOutput};
use bluetick_core::store::{Staging, Store, StoreError};
use bluetick_core::wire::{self, ServerFrame};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

use crate::clock::{Clock, SystemClock};
use crate::commit::{CommitFailure, CommitMode, Committer, CommitterError, LockedStore};
use crate::transport::{Acceptor, Stream};

/// Frames queued per connection before it counts as a slow consumer and is
/// closed: a full delivery window (64) many times over, so a healthy client on
/// a slow link never hits it, while a stuck one costs at most this many frames
/// (each at most `FRAME_LEN_MAX`) of memory.
pub const SEND_QUEUE_FRAMES: usize = 1_024;

/// Connection events (frames, opens, closes) waiting for the server loop. When
/// full, readers wait, which slows the peers down through TCP.
pub const INBOUND_QUEUE_EVENTS: usize = 4_096;

/// Connection events one loop turn handles: few enough that a turn (some
/// tens of µs per frame) delays timers, accepts and the release of a
/// finished commit by a few milliseconds at most.
pub const TURN_EVENTS_MAX: usize = 256;

/// Handle calls staged into one group at most. A group is sealed as soon as
/// the committer is idle, so under light load it holds a turn's events; while
/// a commit runs it grows, up to this bound (two full inbound queues), so one
/// `fsync` covers everything that arrived meanwhile. The bound caps the
/// outputs held back in memory.
pub const GROUP_EVENTS_MAX: usize = 2 * INBOUND_QUEUE_EVENTS;

/// With a committer thread, how long the first staged write of a group may
/// wait for company before the group is sealed. A commit has a fixed cost
/// (redb: ~100 µs of CPU even on tmpfs, where `fsync` is free), so sealing
/// every turn at moderate load spends most of the server's CPU on commits
/// of a handful of writes; half a millisecond is well under the p99 noise
/// floor measured on loopback (~4 ms) and gathers several times more.
pub const GROUP_LINGER: Duration = Duration::from_micros(500);

/// A group with this many handle calls is sealed without lingering: it is
/// already large enough that the commit's fixed cost is small per call.
pub const GROUP_EAGER_CALLS: usize = 64;

/// Sealed groups waiting for the disk: one being committed and one full one
/// behind it, which the committer takes next. With both taken and the open
/// group full the loop stops reading, which pushes back on peers through the
/// inbound queue and TCP when the disk cannot keep up.
pub const GROUPS_IN_FLIGHT_MAX: u64 = 2;

/// How often a writer pings its peer: well under common proxy and NAT idle
/// cut-offs (60 s and up), so a quiet but healthy connection stays open.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(20);

/// A connection that sent nothing (not even a pong) for this long is closed:
/// three missed heartbeats, so one lost ping does not cut a healthy peer off.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// A write that makes no progress for this long closes the connection: the
/// peer stopped reading, and its frames will be redelivered on reconnect.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// The WebSocket handshake must finish within this long, so half-open sockets
/// cannot pile up before the core even sees them.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// After a failed accept (typically out of file descriptors), how long to stop
/// accepting: retrying at once would spin, and in 100 ms closing connections
/// usually free descriptors again.
pub const ACCEPT_RETRY_DELAY: Duration = Duration::from_millis(100);

/// Encoded frames a writer collects before it writes them out (it always
/// writes at once when its queue runs dry): a few frames per `write` call
/// under load instead of one. Allocated only while in use.
pub const WS_WRITE_BUFFER_LEN: usize = 16 * 1024;

/// Frames a writer takes from its queue for one write-and-flush.
pub const WRITE_BATCH_FRAMES: usize = 64;

/// On shutdown, how long connections get to send their close frames.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// How the server runs.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// The core's tunables.
    pub core: ServerConfig,
    /// Seed of the core's nonce generator ([`crate::entropy::os_seed_u64`] for real use).
    pub seed: u64,
    /// Per-connection send queue, in frames.
    pub send_queue_frames: usize,
    /// Ping interval.
    pub heartbeat_interval: Duration,
    /// Silence after which a connection is closed.
    pub idle_timeout: Duration,
    /// Where "now" comes from.
    pub clock: Arc<dyn Clock>,
    /// Where group commits run (a committer thread, or inline on the loop
    /// for deterministic simulation).
    pub commit: CommitMode,
    /// Sees every frame the core sends and every input it handles (a
    /// simulator's oracle); `None` for real use.
    pub observer: Option<Arc<dyn ServerObserver>>,
}

/// Watches the server loop from outside, synchronously and in order. A
/// simulator's oracle uses it to see what the server hands out; it must be
/// quick, as it runs on the loop.
pub trait ServerObserver: Send + Sync + fmt::Debug {
    /// The core produced `frame` for `conn` (whether or not the connection
    /// is still there to take it).
    fn frame_out(&self, conn: ConnId, frame: &ServerFrame);

    /// The core is about to handle one frame's `bytes` from `conn` (decode
    /// them if it matters which frame): what it sends next answers this.
    fn frame_in(&self, conn: ConnId, bytes: &[u8]) {
        let _ = (conn, bytes);
    }

    /// The core is about to be told that `conn` is gone.
    fn disconnected(&self, conn: ConnId) {
        let _ = conn;
    }

    /// The core's timer is about to fire: what it sends next answers no frame.
    fn timeout(&self) {}
}

impl ServerOptions {
    /// The defaults, with the core's nonces seeded by `seed`.
    pub fn new(core: ServerConfig, seed: u64) -> Self {
        ServerOptions {
            core,
            seed,
            send_queue_frames: SEND_QUEUE_FRAMES,
            heartbeat_interval: HEARTBEAT_INTERVAL,
            idle_timeout: IDLE_TIMEOUT,
            clock: Arc::new(SystemClock),
            commit: CommitMode::Auto,
            observer: None,
        }
    }
}

/// Why the server stopped other than by shutdown.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The durable state could not be read back at start.
    #[error("recovering the server state from the store failed: {0}")]
    Recover(#[from] StoreError),
    /// A group commit failed, or the committer thread could not start or
    /// died. Nothing the lost writes covered was acknowledged; the store
    /// holds every group up to the failed one, and a restart recovers from it.
    #[error("{0}; the server stopped without acknowledging anything unsaved, restart it to recover")]
    Commit(#[from] CommitterError),
}

/// What a connection tells the server loop.
enum ConnEvent {
    /// The WebSocket handshake finished; frames for it go to `tx`.
    Opened { conn: ConnId, tx: mpsc::Sender<Outbound>, kill: oneshot::Sender<()> },
    /// One WebSocket message's bytes.
    Bytes { conn: ConnId, bytes: Vec<u8> },
    /// The connection is gone.
    Closed { conn: ConnId },
}

/// What the loop tells a writer.
enum Outbound {
    /// An encoded frame.
    Frame(Vec<u8>),
    /// Send a close frame and stop.
    Close(String),
}

/// The loop's handle on a live connection.
struct Live {
    tx: mpsc::Sender<Outbound>,
    /// Sending on it makes the writer stop at once, dropping what is queued.
    kill: oneshot::Sender<()>,
}

/// Runs the server on the connections of `listener` (a
/// `tokio::net::TcpListener`, or any [`Acceptor`]) until `shutdown`
/// completes, then commits what is staged, closes every connection and
/// returns the store.
///
/// # Errors
/// [`ServeError::Recover`] if the store's state cannot be read at start;
/// [`ServeError::Commit`] if a group commit failed (the server stops at once,
/// as its memory is then ahead of its disk) or the committer thread could not
/// start.
pub async fn run_server<A, S, F>(
    listener: A,
    mut store: S,
    options: ServerOptions,
    shutdown: F,
) -> Result<S, ServeError>
where
    A: Acceptor,
    S: Store + Send + 'static,
    F: Future<Output = ()> + Send,
{
    let server = Server::recover(options.core.clone(), options.seed, &mut store)?;
    let commits = Committer::start(options.commit, store)?;
    let linger = commits.is_threaded();
    let mut core = Core {
        server,
        staging: Staging::new(),
        open_calls: 0,
        open_since: None,
        linger,
        held: VecDeque::new(),
        commits,
    };
    let clock = Arc::clone(&options.clock);
    let observer = options.observer.clone();
    let observer = observer.as_deref();
    let (events_tx, mut events) = mpsc::channel::<ConnEvent>(INBOUND_QUEUE_EVENTS);
    let mut live: BTreeMap<ConnId, Live> = BTreeMap::new();
    let mut tasks = JoinSet::new();
    let mut next_conn = 1u64;
    let mut accept_resume: Option<tokio::time::Instant> = None;
    tokio::pin!(shutdown);
    let outcome = loop {
        // What the last turn staged goes to the committer; what is durable goes out.
        if let Err(e) = core.settle(&mut live, clock.as_ref(), observer, false) {
            break Err(e);
        }
        let wait = core.server.poll_timeout().map(|t| Duration::from_millis(t.saturating_sub(clock.now_ms())));
        let timer = tokio::time::sleep(wait.unwrap_or(Duration::MAX));
        let accept_pause = tokio::time::sleep_until(accept_resume.unwrap_or_else(tokio::time::Instant::now));
        let durable = core.staging.durable();
        let committing = durable < core.staging.last_sealed();
        let room = core.open_calls < GROUP_EVENTS_MAX;
        let seal_at = core.open_since.filter(|_| !committing).map(|since| since + GROUP_LINGER);
        let lingering = tokio::time::sleep_until(seal_at.unwrap_or_else(tokio::time::Instant::now));
        tokio::select! {
            biased;
            () = &mut shutdown => break Ok(()),
            // First after shutdown: a finished commit releases outputs that
            // peers are waiting for.
            done = core.commits.wait_durable(durable), if committing => {
                if let Err(e) = done {
                    break Err(e);
                }
            }
            // The open group waited long enough: the next settle seals it.
            () = lingering, if seal_at.is_some() => {}
            () = timer, if wait.is_some() => {
                let now = clock.now_ms();
                core.call(observer, |server, store| {
                    if let Some(o) = observer {
                        o.timeout();
                    }
                    server.handle_timeout(now, store);
                });
            }
            Some(event) = events.recv(), if room => {
                // Everything else that is ready joins the same group.
                core.on_event(event, &mut live, clock.now_ms(), observer);
                for _ in 1..TURN_EVENTS_MAX {
                    if core.open_calls >= GROUP_EVENTS_MAX {
                        break;
                    }
                    let Ok(event) = events.try_recv() else { break };
                    core.on_event(event, &mut live, clock.now_ms(), observer);
                }
            }
            () = accept_pause, if accept_resume.is_some() => accept_resume = None,
            accepted = listener.accept(), if accept_resume.is_none() => match accepted {
                Ok((stream, peer)) => {
                    let conn = ConnId(next_conn);
                    next_conn += 1;
                    tasks.spawn(serve_connection(stream, peer, conn, events_tx.clone(), ConnOptions::of(&options)));
                }
                // Out of file descriptors and the like: the listener itself is
                // fine. Pause accepting so the failure does not spin the loop.
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed; pausing accepts");
                    accept_resume = Some(tokio::time::Instant::now() + ACCEPT_RETRY_DELAY);
                }
            },
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    };
    // Stop accepting, and let connection tasks finish without waiting on us.
    drop(listener);
    drop(events);
    // Make what is staged durable and send what it releases, ahead of the
    // close frames: a clean stop loses no acknowledgement.
    let outcome = match outcome {
        Ok(()) => core.flush(&mut live, clock.as_ref(), observer).await,
        Err(e) => {
            tracing::error!(error = %e, "group commit failed; stopping without sending what it held");
            Err(e)
        }
    };
    for (_, conn) in std::mem::take(&mut live) {
        // A full queue means the peer is not reading: drop what is queued.
        if conn.tx.try_send(Outbound::Close("server shutting down".into())).is_err() {
            let _ = conn.kill.send(());
        }
    }
    let finished = tokio::time::timeout(SHUTDOWN_GRACE, async { while tasks.join_next().await.is_some() {} }).await;
    if finished.is_err() {
        tracing::warn!("connections still open after the shutdown grace period; aborting them");
    }
    tasks.shutdown().await;
    outcome.map_err(CommitterError::from)?;
    Ok(core.commits.finish()?)
}

/// The server loop's state besides its connections: the core, the writes it
/// staged, the outputs waiting for them, and the committer.
struct Core<S> {
    server: Server,
    staging: Staging,
    /// Handle calls since the open group was last sealed or found empty.
    open_calls: usize,
    /// When the open group got its first write (only when lingering).
    open_since: Option<tokio::time::Instant>,
    /// Whether an idle committer waits up to [`GROUP_LINGER`] for a group to
    /// fill (threaded commits only: inline ones keep turns deterministic).
    linger: bool,
    /// Outputs in the order the core produced them, each with the group that
    /// must be durable before it may leave.
    held: VecDeque<(u64, ServerOutput)>,
    commits: Committer<S>,
}

impl<S: Store + Send + 'static> Core<S> {
    /// Runs one handle call against a store that stages its writes, then
    /// holds what the call produced until everything staged so far is
    /// durable. The observer sees the frames now, right after the input that
    /// caused them.
    fn call(&mut self, observer: Option<&dyn ServerObserver>, f: impl FnOnce(&mut Server, &mut dyn Store)) {
        let base = LockedStore(self.commits.store());
        f(&mut self.server, &mut self.staging.view(&base));
        self.open_calls += 1;
        if self.linger && self.open_since.is_none() && self.staging.has_open_writes() {
            self.open_since = Some(tokio::time::Instant::now());
        }
        let barrier = self.staging.barrier();
        while let Some(out) = self.server.poll_output() {
            if let (Some(o), ServerOutput::Frame { conn, frame }) = (observer, &out) {
                o.frame_out(*conn, frame);
            }
            self.held.push_back((barrier, out));
        }
    }

    /// Feeds one connection event to the core.
    fn on_event(
        &mut self,
        event: ConnEvent,
        live: &mut BTreeMap<ConnId, Live>,
        now: u64,
        observer: Option<&dyn ServerObserver>,
    ) {
        match event {
            ConnEvent::Opened { conn, tx, kill } => {
                live.insert(conn, Live { tx, kill });
                self.call(observer, |server, _| server.handle_connect(conn, now));
            }
            ConnEvent::Bytes { conn, bytes } => {
                if live.contains_key(&conn) {
                    self.call(observer, |server, store| {
                        if let Some(o) = observer {
                            o.frame_in(conn, &bytes);
                        }
                        server.handle_bytes(conn, &bytes, now, store);
                    });
                }
            }
            ConnEvent::Closed { conn } => {
                if live.remove(&conn).is_some() {
                    self.call(observer, |server, store| {
                        if let Some(o) = observer {
                            o.disconnected(conn);
                        }
                        server.handle_disconnect(conn, now, store);
                    });
                }
            }
        }
    }

    /// Seals what is staged into a group and hands it to the committer if
    /// the committer is idle and the group has lingered enough, or the group
    /// is full (`force`: whenever there is room), then sends every output whose group is durable; closes slow
    /// consumers and tells the core, which may stage and produce more, until
    /// nothing more can go out now.
    fn settle(
        &mut self,
        live: &mut BTreeMap<ConnId, Live>,
        clock: &dyn Clock,
        observer: Option<&dyn ServerObserver>,
        force: bool,
    ) -> Result<(), CommitFailure> {
        loop {
            self.staging.committed(self.commits.durable()?);
            let in_flight = self.staging.groups_in_flight();
            let full = self.open_calls >= GROUP_EVENTS_MAX;
            let ripe = !self.linger
                || self.open_calls >= GROUP_EAGER_CALLS
                || self.open_since.is_some_and(|since| since.elapsed() >= GROUP_LINGER);
            if !self.staging.has_open_writes() {
                self.open_calls = 0;
                self.open_since = None;
            } else if (in_flight == 0 && ripe) || ((full || force) && in_flight < GROUPS_IN_FLIGHT_MAX) {
                if let Some((group, batch)) = self.staging.seal() {
                    self.commits.submit(group, batch)?;
                }
                self.open_calls = 0;
                self.open_since = None;
            }
            let durable = self.commits.durable()?;
            self.staging.committed(durable);
            let gone = release(&mut self.held, durable, live);
            if gone.is_empty() {
                return Ok(());
            }
            let now = clock.now_ms();
            for conn in gone {
                self.call(observer, |server, store| {
                    if let Some(o) = observer {
                        o.disconnected(conn);
                    }
                    server.handle_disconnect(conn, now, store);
                });
            }
        }
    }

    /// Settles until every staged write is durable and its outputs are sent.
    async fn flush(
        &mut self,
        live: &mut BTreeMap<ConnId, Live>,
        clock: &dyn Clock,
        observer: Option<&dyn ServerObserver>,
    ) -> Result<(), CommitFailure> {
        loop {
            self.settle(live, clock, observer, true)?;
            let durable = self.staging.durable();
            if durable >= self.staging.last_sealed() && !self.staging.has_open_writes() {
                return Ok(());
            }
            self.commits.wait_durable(durable).await?;
        }
    }
}

/// Moves every held output whose group is durable (at or below `durable`)
/// into send queues, in order; returns the connections it closed: slow
/// consumers, and those the core asked to close.
fn release(held: &mut VecDeque<(u64, ServerOutput)>, durable: u64, live: &mut BTreeMap<ConnId, Live>) -> Vec<ConnId> {
    let mut gone = Vec::new();
    while held.front().is_some_and(|(group, _)| *group <= durable) {
        let Some((_, out)) = held.pop_front() else { break };
        match out {
            ServerOutput::Frame { conn, frame } => {
                let Some(c) = live.get(&conn) else { continue };
                if c.tx.try_send(Outbound::Frame(wire::encode(&frame))).is_err() {
                    // Full (slow consumer) or the writer is gone: either
                    // way this connection cannot keep up. Redelivery on
                    // reconnect makes closing it safe.
                    if let Some(c) = live.remove(&conn) {
                        tracing::info!(conn = conn.0, "closing a connection whose send queue is full");
                        let _ = c.kill.send(());
                        gone.push(conn);
                    }
                }
            }
            ServerOutput::Close { conn, reason } => {
                if let Some(c) = live.remove(&conn) {
                    tracing::debug!(conn = conn.0, %reason, "closing connection");
                    if c.tx.try_send(Outbound::Close(reason)).is_err() {
                        let _ = c.kill.send(());
                    }
                    gone.push(conn);
                }
            }
        }
    }
    gone
}

/// The part of [`ServerOptions`] a connection task needs: each task keeps
/// its own copy for as long as the connection lives, so not the whole options.
#[derive(Debug, Clone, Copy)]
struct ConnOptions {
    send_queue_frames: usize,
    heartbeat_interval: Duration,
    idle_timeout: Duration,
}

impl ConnOptions {
    fn of(options: &ServerOptions) -> Self {
        ConnOptions {
            send_queue_frames: options.send_queue_frames,
            heartbeat_interval: options.heartbeat_interval,
            idle_timeout: options.idle_timeout,
        }
    }
}

/// Serves one accepted stream as connection `conn`: WebSocket handshake, then
/// frames to the loop through `events` until either side closes.
async fn serve_connection<T: Stream>(
    stream: T,
    peer: String,
    conn: ConnId,
    events: mpsc::Sender<ConnEvent>,
    options: ConnOptions,
) {
    let config =
        crate::ws_config().read_buffer_size(crate::SERVER_READ_BUFFER_LEN).write_buffer_size(WS_WRITE_BUFFER_LEN);
    // Boxed: a task is as large as its largest await point, and the handshake
    // (about 1.5 KB) would otherwise be paid by every connection for as long
    // as it lives, not just while it shakes hands.
    let handshake = Box::pin(tokio_tungstenite::accept_async_with_config(stream, Some(config)));
    let ws = match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
        Ok(Ok(ws)) => ws,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "WebSocket handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "WebSocket handshake timed out");
            return;
        }
    };
    let (sink, mut read) = ws.split();
    let (tx, rx) = mpsc::channel(options.send_queue_frames.max(1));
    let (kill, kill_rx) = oneshot::channel();
    if events.send(ConnEvent::Opened { conn, tx, kill }).await.is_err() {
        return;
    }
    let mut writer = tokio::spawn(write_loop(sink, rx, kill_rx, options.heartbeat_interval));
    loop {
        tokio::select! {
            biased;
            _ = &mut writer => break,
            next = tokio::time::timeout(options.idle_timeout, read.next()) => {
                let bytes = match next {
                    Ok(Some(Ok(Message::Binary(b)))) => b.to_vec(),
                    // Not our encoding: the core answers it as malformed.
                    Ok(Some(Ok(Message::Text(t)))) => t.as_bytes().to_vec(),
                    // Pings are answered by tungstenite; any traffic counts as life.
                    Ok(Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)))) => continue,
                    Ok(Some(Ok(Message::Close(_))) | None) => break,
                    Ok(Some(Err(e))) => {
                        tracing::debug!(%peer, error = %e, "read failed");
                        break;
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "idle timeout");
                        break;
                    }
                };
                if events.send(ConnEvent::Bytes { conn, bytes }).await.is_err() {
                    break;
                }
            }
        }
    }
    writer.abort();
    let _ = events.send(ConnEvent::Closed { conn }).await;
}

async fn write_loop<K>(
    mut sink: K,
    mut rx: mpsc::Receiver<Outbound>,
    mut kill: oneshot::Receiver<()>,
    heartbeat: Duration,
) where
    K: futures_util::Sink<Message> + Unpin,
{
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + heartbeat, heartbeat);
    let mut kill_armed = true;
    loop {
        let message = tokio::select! {
            biased;
            killed = &mut kill, if kill_armed => {
                if killed.is_ok() {
                    return;
                }
                // The loop dropped its handle without a kill: keep draining.
                kill_armed = false;
                continue;
            }
            out = rx.recv() => match out {
                Some(Outbound::Frame(bytes)) => Message::Binary(bytes.into()),
                Some(Outbound::Close(reason)) => close_message(CloseCode::Normal, reason),
                None => close_message(CloseCode::Away, "server closed the connection".into()),
            },
            _ = ping.tick() => Message::Ping(Vec::new().into()),
        };
        let mut closing = matches!(message, Message::Close(_));
        // Whatever else is queued goes out with it, in one flush.
        let mut batch = vec![message];
        while !closing && batch.len() < WRITE_BATCH_FRAMES {
            match rx.try_recv() {
                Ok(Outbound::Frame(bytes)) => batch.push(Message::Binary(bytes.into())),
                Ok(Outbound::Close(reason)) => {
                    batch.push(close_message(CloseCode::Normal, reason));
                    closing = true;
                }
                // Empty, or the loop is gone (the next `recv` says so).
                Err(_) => break,
            }
        }
        let write = async {
            for message in batch {
                sink.feed(message).await?;
            }
            sink.flush().await
        };
        match tokio::time::timeout(WRITE_TIMEOUT, write).await {
            Ok(Ok(())) if !closing => {}
            _ => return,
        }
    }
}

fn close_message(code: CloseCode, reason: String) -> Message {
    // A close reason must fit a control frame (125 bytes, 2 of them the code).
    let mut reason = reason;
    if reason.len() > 120 {
        let mut cut = 120;
        while !reason.is_char_boundary(cut) {
            cut -= 1;
        }
        reason.truncate(cut);
    }
    Message::Close(Some(CloseFrame { code, reason: reason.into() }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bluetick_core::store::MemoryStore;

    /// Held outputs, the live connections, and connection 1's kill switch
    /// and send queue.
    type Fixture =
        (VecDeque<(u64, ServerOutput)>, BTreeMap<ConnId, Live>, oneshot::Receiver<()>, mpsc::Receiver<Outbound>);

    /// A connection with a send queue of `frames`, and the core's two frames
    /// for it (its challenge and one refusal), held for group `group`.
    fn two_frames_held_for(frames: usize, group: u64) -> Fixture {
        let mut server = Server::new(ServerConfig::default(), 1);
        let mut store = MemoryStore::new();
        let (tx, rx) = mpsc::channel(frames);
        let (kill, kill_rx) = oneshot::channel();
        let live = BTreeMap::from([(ConnId(1), Live { tx, kill })]);
        server.handle_connect(ConnId(1), 0);
        server.handle_bytes(ConnId(1), &[0xff], 0, &mut store);
        let mut held = VecDeque::new();
        while let Some(out) = server.poll_output() {
            held.push_back((group, out));
        }
        assert_eq!(held.len(), 2);
        (held, live, kill_rx, rx)
    }

    #[test]
    fn a_full_send_queue_closes_the_connection_instead_of_waiting() {
        let (mut held, mut live, mut kill_rx, mut rx) = two_frames_held_for(1, 0);
        assert_eq!(release(&mut held, 0, &mut live), vec![ConnId(1)]);
        assert!(live.is_empty(), "the slow consumer is still registered");
        assert_eq!(kill_rx.try_recv(), Ok(()), "the writer was not told to stop");
        assert!(matches!(rx.try_recv(), Ok(Outbound::Frame(_))));
    }

    #[test]
    fn a_send_queue_with_room_keeps_the_connection() {
        let (mut held, mut live, mut kill_rx, mut rx) = two_frames_held_for(2, 0);
        assert!(release(&mut held, 0, &mut live).is_empty());
        assert!(live.contains_key(&ConnId(1)));
        assert!(kill_rx.try_recv().is_err());
        assert!(matches!(rx.try_recv(), Ok(Outbound::Frame(_))));
        assert!(matches!(rx.try_recv(), Ok(Outbound::Frame(_))));
    }

    #[test]
    fn outputs_wait_until_their_group_is_durable_and_leave_in_order() {
        let (mut held, mut live, _kill_rx, mut rx) = two_frames_held_for(4, 2);
        held.push_back((3, ServerOutput::Close { conn: ConnId(1), reason: "later".into() }));
        assert!(release(&mut held, 1, &mut live).is_empty());
        assert!(rx.try_recv().is_err(), "a frame left before its group was durable");
        assert_eq!(held.len(), 3);
        assert!(release(&mut held, 2, &mut live).is_empty());
        assert!(matches!(rx.try_recv(), Ok(Outbound::Frame(_))));
        assert!(matches!(rx.try_recv(), Ok(Outbound::Frame(_))));
        assert!(rx.try_recv().is_err(), "the next group's close left early");
        assert_eq!(release(&mut held, 3, &mut live), vec![ConnId(1)]);
        assert!(matches!(rx.try_recv(), Ok(Outbound::Close(_))));
        assert!(held.is_empty());
    }

    #[test]
    fn close_reasons_are_cut_to_fit_a_control_frame_on_a_char_boundary() {
        let Message::Close(Some(frame)) = close_message(CloseCode::Normal, "é".repeat(100)) else {
            panic!("not a close frame");
        };
        assert!(frame.reason.len() <= 123);
        assert!(frame.reason.chars().all(|c| c == 'é'));
    }
}
