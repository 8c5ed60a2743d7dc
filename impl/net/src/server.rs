//! The chat server over WebSockets: `bluetick serve`.
//!
//! # Shape
//! One tokio task — the *server loop* in [`run_server`] — owns the sans-IO
//! [`Server`] and the [`Store`]. It waits (a `biased` `select!`, so shutdown
//! and connection bookkeeping win over new work) on: shutdown, new TCP
//! connections, events from connections (opened, frame, closed), and the
//! core's timer from [`Server::poll_timeout`]. After every `handle_*` call it
//! drains [`Server::poll_output`] into the connections' send queues.
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
//! All users share the one loop (a single owner, no lock). Sharding users over
//! several loops, each with its own part of the store, is a later step.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bluetick_core::server::{ConnId, Server, ServerConfig, ServerOutput};
use bluetick_core::store::{Store, StoreError};
use bluetick_core::wire::{self, ServerFrame};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

use crate::clock::{Clock, SystemClock};
use crate::transport::{Acceptor, Stream};

/// Frames queued per connection before it counts as a slow consumer and is
/// closed: a full delivery window (64) many times over, so a healthy client on
/// a slow link never hits it, while a stuck one costs at most this many frames
/// (each at most `FRAME_LEN_MAX`) of memory.
pub const SEND_QUEUE_FRAMES: usize = 1_024;

/// Connection events (frames, opens, closes) waiting for the server loop. When
/// full, readers wait, which slows the peers down through TCP.
pub const INBOUND_QUEUE_EVENTS: usize = 4_096;

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
    /// Sees every frame the core sends (a simulator's oracle); `None` for real use.
    pub observer: Option<Arc<dyn ServerObserver>>,
}

/// Watches the server loop from outside, synchronously and in order. A
/// simulator's oracle uses it to see what the server hands out; it must be
/// quick, as it runs on the loop.
pub trait ServerObserver: Send + Sync + fmt::Debug {
    /// The core produced `frame` for `conn` (whether or not the connection
    /// is still there to take it).
    fn frame_out(&self, conn: ConnId, frame: &ServerFrame);
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
/// completes, then closes every connection and returns the store.
///
/// # Errors
/// [`ServeError::Recover`] if the store's state cannot be read at start.
pub async fn run_server<A, S, F>(
    listener: A,
    mut store: S,
    options: ServerOptions,
    shutdown: F,
) -> Result<S, ServeError>
where
    A: Acceptor,
    S: Store + Send,
    F: Future<Output = ()> + Send,
{
    let mut server = Server::recover(options.core.clone(), options.seed, &mut store)?;
    let clock = Arc::clone(&options.clock);
    let (events_tx, mut events) = mpsc::channel::<ConnEvent>(INBOUND_QUEUE_EVENTS);
    let mut live: BTreeMap<ConnId, Live> = BTreeMap::new();
    let mut tasks = JoinSet::new();
    let mut next_conn = 1u64;
    let mut accept_resume: Option<tokio::time::Instant> = None;
    tokio::pin!(shutdown);
    loop {
        let wait = server.poll_timeout().map(|t| Duration::from_millis(t.saturating_sub(clock.now_ms())));
        let timer = tokio::time::sleep(wait.unwrap_or(Duration::MAX));
        let accept_pause = tokio::time::sleep_until(accept_resume.unwrap_or_else(tokio::time::Instant::now));
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            () = timer, if wait.is_some() => {
                server.handle_timeout(clock.now_ms(), &mut store);
                drain(&mut server, &mut live, &mut store, clock.as_ref(), options.observer.as_deref());
            }
            Some(event) = events.recv() => {
                let now = clock.now_ms();
                match event {
                    ConnEvent::Opened { conn, tx, kill } => {
                        live.insert(conn, Live { tx, kill });
                        server.handle_connect(conn, now);
                    }
                    ConnEvent::Bytes { conn, bytes } => {
                        if live.contains_key(&conn) {
                            server.handle_bytes(conn, &bytes, now, &mut store);
                        }
                    }
                    ConnEvent::Closed { conn } => {
                        if live.remove(&conn).is_some() {
                            server.handle_disconnect(conn, now, &mut store);
                        }
                    }
                }
                drain(&mut server, &mut live, &mut store, clock.as_ref(), options.observer.as_deref());
            }
            () = accept_pause, if accept_resume.is_some() => accept_resume = None,
            accepted = listener.accept(), if accept_resume.is_none() => match accepted {
                Ok((stream, peer)) => {
                    let conn = ConnId(next_conn);
                    next_conn += 1;
                    tasks.spawn(serve_connection(stream, peer, conn, events_tx.clone(), options.clone()));
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
    }
    // Stop accepting, and let connection tasks finish without waiting on us.
    drop(listener);
    drop(events);
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
    Ok(store)
}

/// Moves the core's output into send queues; closes slow consumers and tells
/// the core, which may produce more output, until there is none.
fn drain(
    server: &mut Server,
    live: &mut BTreeMap<ConnId, Live>,
    store: &mut dyn Store,
    clock: &dyn Clock,
    observer: Option<&dyn ServerObserver>,
) {
    loop {
        let mut gone = Vec::new();
        while let Some(out) = server.poll_output() {
            match out {
                ServerOutput::Frame { conn, frame } => {
                    if let Some(o) = observer {
                        o.frame_out(conn, &frame);
                    }
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
        if gone.is_empty() {
            return;
        }
        let now = clock.now_ms();
        for conn in gone {
            server.handle_disconnect(conn, now, store);
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
    options: ServerOptions,
) {
    let handshake = tokio_tungstenite::accept_async_with_config(stream, Some(crate::ws_config()));
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
        let closing = matches!(message, Message::Close(_));
        match tokio::time::timeout(WRITE_TIMEOUT, sink.send(message)).await {
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

    /// A connection with a send queue of `frames`, its challenge and one
    /// refused frame produced by the core, drained once.
    fn drain_two_frames_into(
        frames: usize,
    ) -> (BTreeMap<ConnId, Live>, oneshot::Receiver<()>, mpsc::Receiver<Outbound>) {
        let mut server = Server::new(ServerConfig::default(), 1);
        let mut store = MemoryStore::new();
        let (tx, rx) = mpsc::channel(frames);
        let (kill, kill_rx) = oneshot::channel();
        let mut live = BTreeMap::from([(ConnId(1), Live { tx, kill })]);
        server.handle_connect(ConnId(1), 0);
        server.handle_bytes(ConnId(1), &[0xff], 0, &mut store);
        drain(&mut server, &mut live, &mut store, &SystemClock, None);
        (live, kill_rx, rx)
    }

    #[test]
    fn a_full_send_queue_closes_the_connection_instead_of_waiting() {
        let (live, mut kill_rx, mut rx) = drain_two_frames_into(1);
        assert!(live.is_empty(), "the slow consumer is still registered");
        assert_eq!(kill_rx.try_recv(), Ok(()), "the writer was not told to stop");
        assert!(matches!(rx.try_recv(), Ok(Outbound::Frame(_))));
    }

    #[test]
    fn a_send_queue_with_room_keeps_the_connection() {
        let (live, mut kill_rx, mut rx) = drain_two_frames_into(2);
        assert!(live.contains_key(&ConnId(1)));
        assert!(kill_rx.try_recv().is_err());
        assert!(matches!(rx.try_recv(), Ok(Outbound::Frame(_))));
        assert!(matches!(rx.try_recv(), Ok(Outbound::Frame(_))));
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
