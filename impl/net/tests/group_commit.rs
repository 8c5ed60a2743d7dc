#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Group commit seen from outside, over real sockets: while a commit is stuck
//! on the disk nothing that depends on it leaves the server, yet the server
//! keeps accepting connections; once the disk answers, everything flows.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use bluetick_core::client::{AppEvent, Client, ClientConfig, DeliveryState, PRIMARY_DEVICE};
use bluetick_core::ids::{MessageId, UserId};
use bluetick_core::server::ServerConfig;
use bluetick_core::store::{MemoryStore, Row, Store, StoreError, Table, TableStats, WriteBatch};
use bluetick_net::client::{run_client, ClientEvent, ClientHandle, ClientOptions};
use bluetick_net::clock::{Clock, SystemClock};
use bluetick_net::commit::CommitMode;
use bluetick_net::server::{run_server, ServerOptions};
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;
use tokio::net::TcpListener;

/// Every test is bounded: a hang fails instead of blocking CI.
const TEST_TIMEOUT: Duration = Duration::from_secs(20);

/// A gate the test opens and closes; applies wait while it is closed.
#[derive(Default)]
struct Gate {
    closed: Mutex<bool>,
    opened: Condvar,
    /// Applies that found the gate closed and waited.
    waited: AtomicUsize,
}

impl Gate {
    fn set_closed(&self, closed: bool) {
        *self.closed.lock().unwrap() = closed;
        self.opened.notify_all();
    }

    fn pass(&self) {
        let mut closed = self.closed.lock().unwrap();
        if *closed {
            self.waited.fetch_add(1, Ordering::SeqCst);
        }
        while *closed {
            closed = self.opened.wait(closed).unwrap();
        }
    }
}

/// A memory store whose applies block while the gate is closed: a disk that
/// stopped answering.
struct GatedStore {
    inner: MemoryStore,
    gate: Arc<Gate>,
}

impl Store for GatedStore {
    fn apply(&mut self, batch: WriteBatch) -> Result<(), StoreError> {
        self.gate.pass();
        self.inner.apply(batch)
    }
    fn scan(&self, table: Table) -> Result<Vec<Row>, StoreError> {
        self.inner.scan(table)
    }
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.get(table, key)
    }
    fn stats(&self) -> Result<BTreeMap<Table, TableStats>, StoreError> {
        self.inner.stats()
    }
}

fn start_client(url: &str, dir: &Path, name: &str, seed: u64) -> ClientHandle {
    let config =
        ClientConfig { resend_after_ms: 1_000, ..ClientConfig::new(UserId::new(name).unwrap(), PRIMARY_DEVICE) };
    let client = Client::new(config, seed, SystemClock.now_ms());
    let options = ClientOptions {
        backoff_min: Duration::from_millis(50),
        backoff_max: Duration::from_millis(500),
        ..ClientOptions::new(url.to_string(), dir.join(format!("{name}.state")))
    };
    run_client(client, options, ChaCha20Rng::seed_from_u64(seed))
}

async fn wait_for(handle: &mut ClientHandle, seen: &mut Vec<ClientEvent>, pick: impl Fn(&ClientEvent) -> bool) {
    loop {
        let event = handle.next_event().await.expect("client task stopped");
        let done = pick(&event);
        seen.push(event);
        if done {
            return;
        }
    }
}

fn sent(id: MessageId) -> impl Fn(&ClientEvent) -> bool {
    move |e| matches!(e, ClientEvent::App(AppEvent::Status { id: i, status: DeliveryState::Sent, .. }) if *i == id)
}

fn message(id: MessageId) -> impl Fn(&ClientEvent) -> bool {
    move |e| matches!(e, ClientEvent::App(AppEvent::Message { id: i, .. }) if *i == id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_leaves_while_its_commit_is_stuck_yet_new_connections_are_accepted() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let dir = tempfile::tempdir().unwrap();
        let gate = Arc::new(Gate::default());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let url = format!("ws://{addr}/");
        let options = ServerOptions { commit: CommitMode::Thread, ..ServerOptions::new(ServerConfig::default(), 1) };
        let store = GatedStore { inner: MemoryStore::new(), gate: Arc::clone(&gate) };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(run_server(listener, store, options, async move {
            let _ = stopped.await;
        }));

        let (mut alice, mut bob) =
            (start_client(&url, dir.path(), "alice", 1), start_client(&url, dir.path(), "bob", 2));
        let (mut alice_seen, mut bob_seen) = (Vec::new(), Vec::new());
        wait_for(&mut alice, &mut alice_seen, |e| matches!(e, ClientEvent::Online)).await;
        wait_for(&mut bob, &mut bob_seen, |e| matches!(e, ClientEvent::Online)).await;

        // The disk stops answering; alice's send needs writes (a one-time
        // prekey handed out, the message queued), so nothing of it may leave.
        gate.set_closed(true);
        let id = alice.send_text(UserId::new("bob").unwrap(), b"held".to_vec()).await.unwrap().unwrap();
        let stalled = tokio::time::timeout(Duration::from_millis(800), async {
            tokio::select! {
                () = wait_for(&mut alice, &mut alice_seen, sent(id)) => "alice saw Sent",
                () = wait_for(&mut bob, &mut bob_seen, message(id)) => "bob got the message",
            }
        })
        .await;
        assert!(stalled.is_err(), "{} while its commit was stuck", stalled.unwrap_or_default());
        assert!(gate.waited.load(Ordering::SeqCst) > 0, "no commit reached the stuck disk");

        // Accepting and the WebSocket handshake do not wait for the disk.
        let handshake = tokio::time::timeout(Duration::from_secs(2), tokio_tungstenite::connect_async(url.as_str()));
        assert!(matches!(handshake.await, Ok(Ok(_))), "a new connection waited for the stuck commit");

        gate.set_closed(false);
        wait_for(&mut alice, &mut alice_seen, sent(id)).await;
        wait_for(&mut bob, &mut bob_seen, message(id)).await;

        alice.shutdown().await.unwrap();
        bob.shutdown().await.unwrap();
        stop.send(()).unwrap();
        // A clean stop hands the store back from the committer thread.
        let store = server.await.unwrap().unwrap();
        assert!(store.inner.stats().unwrap().values().any(|t| t.entries > 0), "the returned store is empty");
    })
    .await
    .expect("test timed out");
}
