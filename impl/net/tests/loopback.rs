#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The real server and real clients over loopback WebSockets.

use std::path::Path;
use std::time::Duration;

use bluetick_core::client::{AppEvent, Client, ClientConfig, DeliveryState, PRIMARY_DEVICE};
use bluetick_core::ids::{MessageId, UserId};
use bluetick_core::server::ServerConfig;
use bluetick_core::store::MemoryStore;
use bluetick_core::wire::{self, ClientFrame, ErrorCode, ServerFrame, FRAME_LEN_MAX};
use bluetick_net::client::{
    open_client, run_client, AppAction, ClientEvent, ClientHandle, ClientObserver, ClientOptions, FrameFate, FrameTap,
};
use bluetick_net::clock::{Clock, SystemClock};
use bluetick_net::commit::CommitMode;
use bluetick_net::server::{run_server, ServerOptions};
use bluetick_net::state_file::log_path;
use futures_util::{SinkExt, StreamExt};
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

/// Every test is bounded: a hang fails instead of blocking CI.
const TEST_TIMEOUT: Duration = Duration::from_secs(20);

struct TestServer {
    url: String,
    stop: oneshot::Sender<()>,
    task: JoinHandle<MemoryStore>,
}

impl TestServer {
    async fn start() -> TestServer {
        Self::start_with(ServerOptions::new(ServerConfig::default(), 1)).await
    }

    async fn start_with(options: ServerOptions) -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("ws://{}/", listener.local_addr().unwrap());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            run_server(listener, MemoryStore::new(), options, async move {
                let _ = stopped.await;
            })
            .await
            .unwrap()
        });
        TestServer { url, stop, task }
    }

    async fn stop(self) -> MemoryStore {
        self.stop.send(()).unwrap();
        self.task.await.unwrap()
    }
}

fn user(name: &str) -> UserId {
    UserId::new(name).unwrap()
}

/// Starts `name`'s client saving under `dir`: restored if a save exists, new
/// (seeded by `seed`) otherwise.
fn start_client(server: &TestServer, dir: &Path, name: &str, seed: u64) -> ClientHandle {
    start_client_saving(server, dir, name, seed, false)
}

/// [`start_client`], writing saves on the runtime's thread if `inline`.
fn start_client_saving(server: &TestServer, dir: &Path, name: &str, seed: u64, inline: bool) -> ClientHandle {
    start_client_with(server, dir, name, seed, inline, false)
}

/// [`start_client_saving`], or saving nothing if `volatile`.
fn start_client_with(
    server: &TestServer,
    dir: &Path,
    name: &str,
    seed: u64,
    inline: bool,
    volatile: bool,
) -> ClientHandle {
    let path = dir.join(format!("{name}.state"));
    let config = ClientConfig { resend_after_ms: 1_000, ..ClientConfig::new(user(name), PRIMARY_DEVICE) };
    let client = if path.exists() {
        open_client(config, &path, &SystemClock).unwrap()
    } else {
        Client::new(config, seed, SystemClock.now_ms())
    };
    let options = ClientOptions {
        backoff_min: Duration::from_millis(50),
        backoff_max: Duration::from_millis(500),
        inline_saves: inline,
        volatile,
        ..ClientOptions::new(server.url.clone(), path)
    };
    run_client(client, options, ChaCha20Rng::seed_from_u64(seed))
}

/// Starts bob, then alice (saving nothing if `alice_volatile`), each once
/// the one before is online; returns each handle with the events seen.
async fn bob_then_alice(
    server: &TestServer,
    dir: &Path,
    alice_volatile: bool,
) -> (ClientHandle, Vec<ClientEvent>, ClientHandle, Vec<ClientEvent>) {
    let mut bob = start_client(server, dir, "bob", 2);
    let mut bob_seen = Vec::new();
    wait_for(&mut bob, &mut bob_seen, is_online).await;
    let mut alice = start_client_with(server, dir, "alice", 1, false, alice_volatile);
    let mut alice_seen = Vec::new();
    wait_for(&mut alice, &mut alice_seen, is_online).await;
    (bob, bob_seen, alice, alice_seen)
}

/// Waits for the first event `pick` accepts, returning what it made of it;
/// every event seen on the way is appended to `seen`.
async fn wait_for<T>(
    handle: &mut ClientHandle,
    seen: &mut Vec<ClientEvent>,
    mut pick: impl FnMut(&ClientEvent) -> Option<T>,
) -> T {
    loop {
        let event = handle.next_event().await.expect("client task stopped");
        seen.push(event.clone());
        if let Some(t) = pick(&event) {
            return t;
        }
    }
}

fn is_online(e: &ClientEvent) -> Option<()> {
    matches!(e, ClientEvent::Online).then_some(())
}

fn message_body(e: &ClientEvent, from: &UserId, id: MessageId) -> Option<Vec<u8>> {
    match e {
        ClientEvent::App(AppEvent::Message { from: f, id: i, body, .. }) if f == from && *i == id => Some(body.clone()),
        _ => None,
    }
}

fn status(e: &ClientEvent, id: MessageId, want: DeliveryState) -> Option<()> {
    match e {
        ClientEvent::App(AppEvent::Status { id: i, status, .. }) if *i == id && *status == want => Some(()),
        _ => None,
    }
}

fn messages_with(seen: &[ClientEvent], id: MessageId) -> usize {
    seen.iter().filter(|e| matches!(e, ClientEvent::App(AppEvent::Message { id: i, .. }) if *i == id)).count()
}

/// Collects events for `period`.
async fn drain_for(handle: &mut ClientHandle, seen: &mut Vec<ClientEvent>, period: Duration) {
    let _ = tokio::time::timeout(period, async {
        while let Some(e) = handle.next_event().await {
            seen.push(e);
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_reaches_the_online_recipient_once_and_ticks_go_delivered_then_read() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let dir = tempfile::tempdir().unwrap();
        let server = TestServer::start().await;
        let (alice_id, bob_id) = (user("alice"), user("bob"));
        let (mut bob, mut bob_seen, mut alice, mut alice_seen) = bob_then_alice(&server, dir.path(), false).await;

        let id = alice.send_text(bob_id.clone(), b"hello bob".to_vec()).await.unwrap().unwrap();
        let body = wait_for(&mut bob, &mut bob_seen, |e| message_body(e, &alice_id, id)).await;
        assert_eq!(body, b"hello bob");
        wait_for(&mut alice, &mut alice_seen, |e| status(e, id, DeliveryState::Delivered)).await;
        let read_seen_before_opening = alice_seen.iter().any(|e| status(e, id, DeliveryState::Read).is_some());
        assert!(!read_seen_before_opening, "Read before bob opened the conversation: {alice_seen:?}");

        bob.mark_read(alice_id.clone()).await.unwrap();
        wait_for(&mut alice, &mut alice_seen, |e| status(e, id, DeliveryState::Read)).await;

        // Give a duplicate time to show up before counting.
        drain_for(&mut bob, &mut bob_seen, Duration::from_millis(500)).await;
        assert_eq!(messages_with(&bob_seen, id), 1, "bob's events: {bob_seen:?}");

        let alice_client = alice.shutdown().await.unwrap();
        assert_eq!(alice_client.outbox_len(), 0);
        bob.shutdown().await.unwrap();
        server.stop().await;
    })
    .await
    .expect("test timed out");
}

/// `bluetick serve`'s shape on a machine with a second core: loop and
/// connections on one thread, group commits on the committer thread
/// (`bluetick_net::server_runtime`). A message still arrives once and its
/// ticks still follow, each after the commit that covers it.
#[tokio::test(flavor = "current_thread")]
async fn one_thread_with_a_committer_thread_delivers_once_and_ticks_follow() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let dir = tempfile::tempdir().unwrap();
        let options = ServerOptions { commit: CommitMode::Thread, ..ServerOptions::new(ServerConfig::default(), 1) };
        let server = TestServer::start_with(options).await;
        let (alice_id, bob_id) = (user("alice"), user("bob"));
        let (mut bob, mut bob_seen, mut alice, mut alice_seen) = bob_then_alice(&server, dir.path(), false).await;
        let mut ids = Vec::new();
        for i in 0..20u8 {
            ids.push(alice.send_text(bob_id.clone(), vec![i; 64]).await.unwrap().unwrap());
        }
        for (i, id) in ids.iter().enumerate() {
            let body = wait_for(&mut bob, &mut bob_seen, |e| message_body(e, &alice_id, *id)).await;
            assert_eq!(body, vec![i as u8; 64]);
        }
        for id in &ids {
            wait_for(&mut alice, &mut alice_seen, |e| status(e, *id, DeliveryState::Delivered)).await;
        }
        drain_for(&mut bob, &mut bob_seen, Duration::from_millis(300)).await;
        for id in &ids {
            assert_eq!(messages_with(&bob_seen, *id), 1, "bob's events: {bob_seen:?}");
        }
        alice.shutdown().await.unwrap();
        bob.shutdown().await.unwrap();
        server.stop().await;
    })
    .await
    .expect("test timed out");
}

/// A volatile client (a load generator's) works as any other and writes no
/// save file, while its peer, saving, does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_volatile_client_exchanges_messages_and_writes_no_save() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let dir = tempfile::tempdir().unwrap();
        let server = TestServer::start().await;
        let (alice_id, bob_id) = (user("alice"), user("bob"));
        let (mut bob, mut bob_seen, mut alice, mut alice_seen) = bob_then_alice(&server, dir.path(), true).await;
        let id = alice.send_text(bob_id.clone(), b"hello bob".to_vec()).await.unwrap().unwrap();
        wait_for(&mut bob, &mut bob_seen, |e| message_body(e, &alice_id, id)).await;
        wait_for(&mut alice, &mut alice_seen, |e| status(e, id, DeliveryState::Delivered)).await;
        let back = bob.send_text(alice_id.clone(), b"hi alice".to_vec()).await.unwrap().unwrap();
        wait_for(&mut alice, &mut alice_seen, |e| message_body(e, &bob_id, back)).await;
        alice.shutdown().await.unwrap();
        bob.shutdown().await.unwrap();
        let alice_path = dir.path().join("alice.state");
        assert!(!alice_path.exists() && !log_path(&alice_path).exists(), "the volatile client saved");
        assert!(dir.path().join("bob.state").exists(), "the saving client wrote nothing");
        server.stop().await;
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_sent_while_the_recipient_is_offline_arrives_when_it_reconnects() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let dir = tempfile::tempdir().unwrap();
        let server = TestServer::start().await;
        let (alice_id, bob_id) = (user("alice"), user("bob"));
        // Bob registers, then goes away (his state stays on disk).
        let mut bob = start_client(&server, dir.path(), "bob", 2);
        wait_for(&mut bob, &mut Vec::new(), is_online).await;
        bob.shutdown().await.unwrap();

        let mut alice = start_client(&server, dir.path(), "alice", 1);
        let mut alice_seen = Vec::new();
        wait_for(&mut alice, &mut alice_seen, is_online).await;
        let id = alice.send_text(bob_id.clone(), b"while you were out".to_vec()).await.unwrap().unwrap();
        wait_for(&mut alice, &mut alice_seen, |e| status(e, id, DeliveryState::Sent)).await;

        // Bob comes back from his save file.
        let mut bob = start_client(&server, dir.path(), "bob", 99);
        let mut bob_seen = Vec::new();
        let body = wait_for(&mut bob, &mut bob_seen, |e| message_body(e, &alice_id, id)).await;
        assert_eq!(body, b"while you were out");
        wait_for(&mut alice, &mut alice_seen, |e| status(e, id, DeliveryState::Delivered)).await;
        drain_for(&mut bob, &mut bob_seen, Duration::from_millis(300)).await;
        assert_eq!(messages_with(&bob_seen, id), 1, "bob's events: {bob_seen:?}");

        alice.shutdown().await.unwrap();
        bob.shutdown().await.unwrap();
        server.stop().await;
    })
    .await
    .expect("test timed out");
}

/// Reads binary frames from a raw WebSocket until one decodes to a server
/// `Error`; returns its code.
async fn next_error<S>(ws: &mut S) -> ErrorCode
where
    S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    loop {
        match ws.next().await.expect("closed before an error frame").expect("read failed") {
            Message::Binary(b) => {
                if let ServerFrame::Error { code, .. } = wire::decode::<ServerFrame>(&b).unwrap() {
                    return code;
                }
            }
            _ => continue,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_oversize_frames_get_an_error_frame_and_other_users_are_unaffected() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let dir = tempfile::tempdir().unwrap();
        let server = TestServer::start().await;
        let (alice_id, bob_id) = (user("alice"), user("bob"));
        let (mut bob, mut bob_seen, mut alice, mut alice_seen) = bob_then_alice(&server, dir.path(), false).await;

        let (mut raw, _) = tokio_tungstenite::connect_async(server.url.as_str()).await.unwrap();
        raw.send(Message::Binary(vec![0xff; 16].into())).await.unwrap();
        assert_eq!(next_error(&mut raw).await, ErrorCode::Malformed);
        raw.send(Message::Binary(vec![0u8; FRAME_LEN_MAX + 1].into())).await.unwrap();
        assert_eq!(next_error(&mut raw).await, ErrorCode::TooLarge);
        // Refused as too large, the connection is then closed by the server.
        let rest = tokio::time::timeout(Duration::from_secs(5), async {
            while let Some(Ok(m)) = raw.next().await {
                if m.is_close() {
                    break;
                }
            }
        })
        .await;
        assert!(rest.is_ok(), "the server did not close the offending connection");

        let id = alice.send_text(bob_id.clone(), b"still here".to_vec()).await.unwrap().unwrap();
        let body = wait_for(&mut bob, &mut bob_seen, |e| message_body(e, &alice_id, id)).await;
        assert_eq!(body, b"still here");
        wait_for(&mut alice, &mut alice_seen, |e| status(e, id, DeliveryState::Delivered)).await;
        let dropped = bob_seen.iter().chain(&alice_seen).any(|e| matches!(e, ClientEvent::Offline { .. }));
        assert!(!dropped, "a well-behaved client lost its connection: {bob_seen:?} {alice_seen:?}");

        alice.shutdown().await.unwrap();
        bob.shutdown().await.unwrap();
        server.stop().await;
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_keep_a_quiet_client_online_and_a_silent_peer_is_closed() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let dir = tempfile::tempdir().unwrap();
        let options = ServerOptions {
            heartbeat_interval: Duration::from_millis(100),
            idle_timeout: Duration::from_millis(400),
            ..ServerOptions::new(ServerConfig::default(), 1)
        };
        let server = TestServer::start_with(options).await;

        // A raw WebSocket that never reads never answers pings.
        let (silent, _) = tokio_tungstenite::connect_async(server.url.as_str()).await.unwrap();
        let mut alice = start_client(&server, dir.path(), "alice", 1);
        let mut seen = Vec::new();
        wait_for(&mut alice, &mut seen, is_online).await;
        drain_for(&mut alice, &mut seen, Duration::from_millis(1_500)).await;
        assert!(!seen.iter().any(|e| matches!(e, ClientEvent::Offline { .. })), "events: {seen:?}");

        // By now the silent one was closed: reading shows a close or EOF.
        let mut silent = silent;
        let closed = tokio::time::timeout(Duration::from_secs(2), async {
            loop {
                match silent.next().await {
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                    Some(Ok(_)) => {}
                }
            }
        })
        .await;
        assert!(closed.is_ok(), "the server kept a peer that answered no pings");

        alice.shutdown().await.unwrap();
        server.stop().await;
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_live_connections_promptly_and_clients_notice() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let dir = tempfile::tempdir().unwrap();
        let server = TestServer::start().await;
        let mut alice = start_client(&server, dir.path(), "alice", 1);
        let mut seen = Vec::new();
        wait_for(&mut alice, &mut seen, is_online).await;

        let started = tokio::time::Instant::now();
        server.stop().await;
        // Well inside the grace period: connections closed, not waited out.
        assert!(started.elapsed() < bluetick_net::server::SHUTDOWN_GRACE, "took {:?}", started.elapsed());
        wait_for(&mut alice, &mut seen, |e| matches!(e, ClientEvent::Offline { .. }).then_some(())).await;
        alice.shutdown().await.unwrap();
    })
    .await
    .expect("test timed out");
}

/// Drops the first `left` delivery-acks the client sends; counts them all.
#[derive(Debug)]
struct DropAcks {
    left: std::sync::Mutex<u32>,
    acks: std::sync::Mutex<u32>,
}

impl FrameTap for DropAcks {
    fn outgoing(&self, frame: &ClientFrame, _now_ms: u64) -> FrameFate {
        let mut left = self.left.lock().unwrap();
        if matches!(frame, ClientFrame::DeliveryAck { .. }) {
            *self.acks.lock().unwrap() += 1;
        }
        if matches!(frame, ClientFrame::DeliveryAck { .. }) && *left > 0 {
            *left -= 1;
            return FrameFate::lost();
        }
        FrameFate::once()
    }

    fn incoming(&self, _frame: &ServerFrame, _now_ms: u64) -> FrameFate {
        FrameFate::once()
    }
}

/// Remembers what it saw, in order.
#[derive(Debug, Default)]
struct Seen {
    lines: std::sync::Mutex<Vec<String>>,
}

impl ClientObserver for Seen {
    fn event(&self, event: &ClientEvent, _now_ms: u64) {
        if let ClientEvent::App(AppEvent::Message { id, .. }) = event {
            self.lines.lock().unwrap().push(format!("message {id}"));
        }
    }

    fn action(&self, action: &AppAction<'_>, _now_ms: u64) {
        if let AppAction::SentText { id, .. } = action {
            self.lines.lock().unwrap().push(format!("sent {id}"));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_ack_lost_by_the_tap_is_redelivered_and_the_app_sees_the_message_once() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let dir = tempfile::tempdir().unwrap();
        let core = ServerConfig { ack_timeout_ms: 300, ..ServerConfig::default() };
        let server = TestServer::start_with(ServerOptions::new(core, 1)).await;
        let (alice_id, bob_id) = (user("alice"), user("bob"));
        let bob_seen = std::sync::Arc::new(Seen::default());
        let config = ClientConfig { resend_after_ms: 1_000, ..ClientConfig::new(bob_id.clone(), PRIMARY_DEVICE) };
        let tap = std::sync::Arc::new(DropAcks { left: std::sync::Mutex::new(1), acks: std::sync::Mutex::new(0) });
        let options = ClientOptions {
            tap: Some(tap.clone()),
            observer: Some(bob_seen.clone()),
            ..ClientOptions::new(server.url.clone(), dir.path().join("bob.state"))
        };
        let mut bob = run_client(Client::new(config, 2, SystemClock.now_ms()), options, ChaCha20Rng::seed_from_u64(2));
        wait_for(&mut bob, &mut Vec::new(), is_online).await;
        let alice_seen = std::sync::Arc::new(Seen::default());
        let config = ClientConfig { resend_after_ms: 1_000, ..ClientConfig::new(alice_id.clone(), PRIMARY_DEVICE) };
        let options = ClientOptions {
            observer: Some(alice_seen.clone()),
            ..ClientOptions::new(server.url.clone(), dir.path().join("alice.state"))
        };
        let mut alice =
            run_client(Client::new(config, 1, SystemClock.now_ms()), options, ChaCha20Rng::seed_from_u64(1));
        let mut alice_events = Vec::new();
        wait_for(&mut alice, &mut alice_events, is_online).await;

        let id = alice.send_text(bob_id, b"ack me twice".to_vec()).await.unwrap().unwrap();
        wait_for(&mut alice, &mut alice_events, |e| status(e, id, DeliveryState::Delivered)).await;
        // The first ack was lost: the server redelivered after its ack timeout.
        let mut bob_events = Vec::new();
        drain_for(&mut bob, &mut bob_events, Duration::from_millis(1_000)).await;
        assert_eq!(messages_with(&bob_events, id), 1, "bob's events: {bob_events:?}");
        assert_eq!(*tap.left.lock().unwrap(), 0, "the tap dropped nothing");
        assert!(*tap.acks.lock().unwrap() >= 2, "no redelivery was acked again");
        assert_eq!(*bob_seen.lines.lock().unwrap(), vec![format!("message {id}")]);
        assert_eq!(*alice_seen.lines.lock().unwrap(), vec![format!("sent {id}")]);
        server.stop().await;
        alice.shutdown().await.unwrap();
        bob.shutdown().await.unwrap();
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_taken_offline_stays_off_and_gets_the_message_once_back_online() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let dir = tempfile::tempdir().unwrap();
        let server = TestServer::start().await;
        let (alice_id, bob_id) = (user("alice"), user("bob"));
        let mut bob = start_client(&server, dir.path(), "bob", 2);
        let mut bob_seen = Vec::new();
        wait_for(&mut bob, &mut bob_seen, is_online).await;
        bob.set_online(false).await.unwrap();
        wait_for(&mut bob, &mut bob_seen, |e| matches!(e, ClientEvent::Offline { .. }).then_some(())).await;

        let mut alice = start_client(&server, dir.path(), "alice", 1);
        let mut alice_seen = Vec::new();
        wait_for(&mut alice, &mut alice_seen, is_online).await;
        let id = alice.send_text(bob_id, b"later".to_vec()).await.unwrap().unwrap();
        wait_for(&mut alice, &mut alice_seen, |e| status(e, id, DeliveryState::Sent)).await;
        // Well past the reconnect backoff: bob did not come back by himself.
        drain_for(&mut bob, &mut bob_seen, Duration::from_millis(800)).await;
        assert_eq!(messages_with(&bob_seen, id), 0, "{bob_seen:?}");
        assert!(!bob_seen.iter().skip(2).any(|e| matches!(e, ClientEvent::Online)), "{bob_seen:?}");

        bob.set_online(true).await.unwrap();
        let body = wait_for(&mut bob, &mut bob_seen, |e| message_body(e, &alice_id, id)).await;
        assert_eq!(body, b"later");
        drain_for(&mut bob, &mut bob_seen, Duration::from_millis(300)).await;
        assert_eq!(messages_with(&bob_seen, id), 1);
        alice.shutdown().await.unwrap();
        bob.shutdown().await.unwrap();
        server.stop().await;
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_client_restarts_from_its_save_and_gets_what_was_sent_meanwhile_once() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let dir = tempfile::tempdir().unwrap();
        let server = TestServer::start().await;
        let (alice_id, bob_id) = (user("alice"), user("bob"));
        let mut bob = start_client(&server, dir.path(), "bob", 2);
        wait_for(&mut bob, &mut Vec::new(), is_online).await;
        bob.kill();
        // No assertion on the outcome: an abort that lands while the task is
        // mid-poll lets that poll finish, so a kill can race a clean stop.
        let _ = bob.shutdown().await;

        let mut alice = start_client(&server, dir.path(), "alice", 1);
        let mut alice_seen = Vec::new();
        wait_for(&mut alice, &mut alice_seen, is_online).await;
        let id = alice.send_text(bob_id, b"after the crash".to_vec()).await.unwrap().unwrap();
        wait_for(&mut alice, &mut alice_seen, |e| status(e, id, DeliveryState::Sent)).await;

        let mut bob = start_client(&server, dir.path(), "bob", 99);
        let mut bob_seen = Vec::new();
        let body = wait_for(&mut bob, &mut bob_seen, |e| message_body(e, &alice_id, id)).await;
        assert_eq!(body, b"after the crash");
        drain_for(&mut bob, &mut bob_seen, Duration::from_millis(300)).await;
        assert_eq!(messages_with(&bob_seen, id), 1);
        alice.shutdown().await.unwrap();
        bob.shutdown().await.unwrap();
        server.stop().await;
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_client_restores_the_changes_it_logged_after_its_last_full_save() {
    restores_logged_changes(false).await;
}

/// The same with saves written on the runtime's own thread (the load
/// generator's `--inline-saves`), on a single-threaded runtime as the load
/// generator runs on one core.
#[tokio::test]
async fn inline_saves_restore_the_same_after_a_kill() {
    restores_logged_changes(true).await;
}

async fn restores_logged_changes(inline: bool) {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let dir = tempfile::tempdir().unwrap();
        let server = TestServer::start().await;
        let (alice_id, bob_id) = (user("alice"), user("bob"));
        let mut alice = start_client_saving(&server, dir.path(), "alice", 1, inline);
        let mut bob = start_client_saving(&server, dir.path(), "bob", 2, inline);
        let (mut alice_seen, mut bob_seen) = (Vec::new(), Vec::new());
        wait_for(&mut alice, &mut alice_seen, is_online).await;
        wait_for(&mut bob, &mut bob_seen, is_online).await;
        // Bob's session with Alice begins after his first (full) save, so
        // only the log after it holds that session.
        let first = alice.send_text(bob_id.clone(), b"first".to_vec()).await.unwrap().unwrap();
        wait_for(&mut bob, &mut bob_seen, |e| message_body(e, &alice_id, first)).await;
        let full = std::fs::read(dir.path().join("bob.state")).unwrap();
        let log = std::fs::read(dir.path().join("bob.state.log")).unwrap();
        assert!(log.len() > 8, "bob logged changes after his full save of {} bytes", full.len());
        bob.kill();
        let _ = bob.shutdown().await;

        let second = alice.send_text(bob_id, b"second".to_vec()).await.unwrap().unwrap();
        let mut bob = start_client_saving(&server, dir.path(), "bob", 99, inline);
        let mut bob_seen = Vec::new();
        // The second message continues the ratchet of the first: it opens
        // only with the session the log restored.
        let body = wait_for(&mut bob, &mut bob_seen, |e| message_body(e, &alice_id, second)).await;
        assert_eq!(body, b"second");
        drain_for(&mut bob, &mut bob_seen, Duration::from_millis(300)).await;
        assert_eq!(messages_with(&bob_seen, first), 0, "the first message was acked before the kill");
        assert!(
            !bob_seen.iter().any(|e| matches!(e, ClientEvent::App(AppEvent::Undecryptable { .. }))),
            "{bob_seen:?}"
        );
        alice.shutdown().await.unwrap();
        bob.shutdown().await.unwrap();
        server.stop().await;
    })
    .await
    .expect("test timed out");
}
