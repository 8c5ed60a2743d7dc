//! Crash consistency of the real server process: `bluetick serve` is killed
//! with SIGKILL at seeded random points while real clients (real crypto, the
//! tokio client driver) push a write-heavy load through it, and restarted on
//! the same data directory each time. Afterwards:
//! - every message whose sender saw the server's ack (the `Sent` tick) is
//!   delivered — indeed every message an app sent is, since clients keep
//!   their outbox on disk and resend;
//! - no app is shown any message twice;
//! - no app is shown a message nobody sent.
//!
//! CI runs `DEFAULT_ROUNDS` kills (well under 30 s). `BLUETICK_CRASH_ROUNDS=N`
//! runs N kills, `BLUETICK_CRASH_SEED=S` picks the kill points; the seed is
//! printed so a failing run can be repeated.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
// Real processes on a real clock: the test waits for wall-clock deadlines.
#![allow(clippy::disallowed_methods)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bluetick_core::client::{AppEvent, Client, ClientConfig, DeliveryState, PRIMARY_DEVICE};
use bluetick_core::ids::{MessageId, UserId};
use bluetick_net::client::{run_client, ClientEvent, ClientHandle, ClientOptions};
use bluetick_net::clock::{Clock, SystemClock};
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha20Rng;

/// Kills in a CI run.
const DEFAULT_ROUNDS: u32 = 3;

/// Users; each sends to the next one round the ring.
const USERS: usize = 4;

/// How long everything may take to arrive once the killing stops.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(40);

/// Gap between two sends of one app: four apps then offer about 40 messages a
/// second, each costing the server several fsynced writes (send, delivery
/// ack, receipt, its ack) and each client an fsynced save per frame.
const SEND_INTERVAL_MS: u64 = 100;

/// A `bluetick serve` process on a fixed port and data directory.
struct ServerProcess {
    child: Child,
}

impl ServerProcess {
    /// Starts the server on `store` (`--store`) and waits until it listens.
    fn start(port: u16, data: &Path, store: &str) -> ServerProcess {
        let mut child = Command::new(env!("CARGO_BIN_EXE_bluetick"))
            .args(["serve", "--store", store, "--listen", &format!("127.0.0.1:{port}"), "--data"])
            .arg(data)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start bluetick serve");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = tx.send(line);
            }
            // Keep draining so the server never blocks on a full pipe.
            for _ in lines {}
        });
        match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(line) if line.contains("listening on") => ServerProcess { child },
            other => {
                let _ = child.kill();
                panic!("bluetick serve did not start on port {port}: {other:?}");
            }
        }
    }

    /// SIGKILL: no shutdown code runs.
    fn kill(mut self) {
        self.child.kill().expect("SIGKILL the server");
        self.child.wait().expect("reap the server");
    }
}

/// A port that was free a moment ago (the server binds it with SO_REUSEADDR,
/// so it can bind it again right after each kill).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

fn user(i: usize) -> UserId {
    UserId::new(&format!("crash{i}")).unwrap()
}

/// What the apps saw.
#[derive(Default)]
struct Seen {
    /// (sender, id) of every message an app sent.
    sent: BTreeSet<(UserId, MessageId)>,
    /// Message ids whose sender saw the `Sent` tick.
    acked: BTreeSet<MessageId>,
    /// (receiver, sender, id) → times shown.
    shown: BTreeMap<(UserId, UserId, MessageId), u32>,
}

fn start_client(i: usize, url: &str, dir: &Path) -> ClientHandle {
    let config = ClientConfig { resend_after_ms: 500, prekey_batch: 10, ..ClientConfig::new(user(i), PRIMARY_DEVICE) };
    let client = Client::new(config, 1000 + i as u64, SystemClock.now_ms());
    let options = ClientOptions {
        backoff_min: Duration::from_millis(20),
        backoff_max: Duration::from_millis(300),
        ..ClientOptions::new(url, dir.join(format!("client{i}.state")))
    };
    run_client(client, options, ChaCha20Rng::seed_from_u64(i as u64))
}

fn record(i: usize, event: ClientEvent, seen: &Mutex<Seen>) {
    let mut s = seen.lock().unwrap();
    match event {
        ClientEvent::App(AppEvent::Message { from, id, .. }) => {
            *s.shown.entry((user(i), from, id)).or_default() += 1;
        }
        ClientEvent::App(AppEvent::Status { id, status: DeliveryState::Sent, .. }) => {
            s.acked.insert(id);
        }
        _ => {}
    }
}

/// One app: sends to the next user round the ring every few ms until
/// `sending` clears, reads its events all along, and stops at `finished`.
async fn app(
    i: usize,
    mut handle: ClientHandle,
    seen: Arc<Mutex<Seen>>,
    sending: Arc<AtomicBool>,
    finished: Arc<AtomicBool>,
) {
    let to = user((i + 1) % USERS);
    let mut tick = tokio::time::interval(Duration::from_millis(SEND_INTERVAL_MS));
    let mut n = 0u32;
    while !finished.load(Ordering::Relaxed) {
        tokio::select! {
            event = handle.next_event() => match event {
                Some(event) => record(i, event, &seen),
                None => panic!("client {i} stopped"),
            },
            _ = tick.tick() => {
                if sending.load(Ordering::Relaxed) {
                    match handle.send_text(to.clone(), format!("{i}:{n}").into_bytes()).await {
                        Ok(Ok(id)) => {
                            seen.lock().unwrap().sent.insert((user(i), id));
                            n += 1;
                        }
                        Ok(Err(e)) => panic!("client {i} refused a send: {e}"),
                        Err(stopped) => panic!("client {i} stopped: {stopped}"),
                    }
                }
            }
        }
    }
    let _ = handle.shutdown().await;
}

#[test]
fn every_acked_message_survives_sigkill_and_none_is_shown_twice() {
    sigkill_rounds("redb");
}

/// The same with the append-only log store: a kill mid-append leaves a torn
/// last record, which reopening must cut off without losing an acked write.
#[test]
fn every_acked_message_survives_sigkill_with_the_log_store() {
    sigkill_rounds("log");
}

fn sigkill_rounds(store: &str) {
    let rounds = env_u64("BLUETICK_CRASH_ROUNDS").map_or(DEFAULT_ROUNDS, |r| r as u32);
    let seed = env_u64("BLUETICK_CRASH_SEED").unwrap_or(20261127);
    eprintln!("crash consistency: {rounds} kills, seed {seed} (BLUETICK_CRASH_ROUNDS, BLUETICK_CRASH_SEED)");
    let dir = std::env::temp_dir().join(format!("bluetick-crash-{}-{seed}-{store}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let data = dir.join("server");
    let clients_dir = dir.join("clients");
    std::fs::create_dir_all(&clients_dir).unwrap();
    let port = free_port();
    let url = format!("ws://127.0.0.1:{port}/");
    let mut server = ServerProcess::start(port, &data, store);

    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let mut rng = ChaCha20Rng::seed_from_u64(seed);

    let sending = Arc::new(AtomicBool::new(true));
    let finished = Arc::new(AtomicBool::new(false));
    let apps: Vec<_> = (0..USERS)
        .map(|i| {
            let handle = runtime.block_on(async { start_client(i, &url, &clients_dir) });
            runtime.spawn(app(i, handle, seen.clone(), sending.clone(), finished.clone()))
        })
        .collect();

    for round in 0..rounds {
        let wait = 300 + rng.next_u64() % 1_200;
        std::thread::sleep(Duration::from_millis(wait));
        server.kill();
        let down = rng.next_u64() % 300;
        eprintln!("round {round}: killed after {wait} ms, down for {down} ms");
        std::thread::sleep(Duration::from_millis(down));
        server = ServerProcess::start(port, &data, store);
    }
    std::thread::sleep(Duration::from_millis(300));
    sending.store(false, Ordering::Relaxed);

    // Everything sent must arrive: wait until it has (or time out), then
    // give a late duplicate time to show up before counting.
    let delivered_all = || {
        let s = seen.lock().unwrap();
        let shown: BTreeSet<(UserId, MessageId)> = s.shown.keys().map(|(_, from, id)| (from.clone(), *id)).collect();
        s.sent.iter().all(|m| shown.contains(m))
    };
    let deadline = std::time::Instant::now() + SETTLE_TIMEOUT;
    let mut polls = 0u32;
    while !delivered_all() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        polls += 1;
        if polls.is_multiple_of(20) {
            let s = seen.lock().unwrap();
            eprintln!("settling: {} of {} sent shown", s.shown.len(), s.sent.len());
        }
    }
    std::thread::sleep(Duration::from_millis(1_000));
    finished.store(true, Ordering::Relaxed);
    for a in apps {
        runtime.block_on(a).unwrap();
    }

    let s = seen.lock().unwrap();
    let shown: BTreeSet<(UserId, MessageId)> = s.shown.keys().map(|(_, from, id)| (from.clone(), *id)).collect();
    let lost_acked: Vec<_> = s.sent.iter().filter(|m| s.acked.contains(&m.1) && !shown.contains(m)).collect();
    let lost: Vec<_> = s.sent.iter().filter(|m| !shown.contains(m)).collect();
    let twice: Vec<_> = s.shown.iter().filter(|(_, n)| **n > 1).collect();
    let forged: Vec<_> = shown.iter().filter(|m| !s.sent.contains(m)).collect();
    eprintln!(
        "sent {}, acked {}, shown {}; lost {} (of them acked {}), shown twice {}",
        s.sent.len(),
        s.acked.len(),
        shown.len(),
        lost.len(),
        lost_acked.len(),
        twice.len()
    );
    assert!(s.acked.len() > 20 * rounds as usize, "the load was too light to mean anything");
    assert!(lost_acked.is_empty(), "server-acked messages lost: {lost_acked:?}");
    assert!(lost.is_empty(), "sent messages never delivered: {lost:?}");
    assert!(twice.is_empty(), "shown twice: {twice:?}");
    assert!(forged.is_empty(), "shown but never sent: {forged:?}");
    drop(s);
    server.kill();
    runtime.shutdown_timeout(Duration::from_secs(2));
    let _ = std::fs::remove_dir_all(&dir);
}
