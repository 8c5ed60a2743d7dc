#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Short loadgen runs against an in-process `bluetick serve` (MemoryStore,
//! real WebSockets on 127.0.0.1, real clients with real crypto).

use std::time::Duration;

use bluetick_core::server::ServerConfig;
use bluetick_core::store::MemoryStore;
use bluetick_loadgen::{run, LoadgenArgs, LoadgenError, Report};
use bluetick_net::server::{run_server, ServerOptions};
use clap::Parser;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// Every test is bounded: a hang fails instead of blocking CI.
const TEST_TIMEOUT: Duration = Duration::from_secs(30);

struct TestServer {
    url: String,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

async fn start_server() -> TestServer {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/", listener.local_addr().unwrap());
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let options = ServerOptions::new(ServerConfig::default(), 7);
        run_server(listener, MemoryStore::new(), options, async move {
            let _ = stopped.await;
        })
        .await
        .unwrap();
    });
    TestServer { url, stop, task }
}

impl TestServer {
    async fn stop(self) {
        self.stop.send(()).unwrap();
        self.task.await.unwrap();
    }
}

async fn load(server: &TestServer, state: &tempfile::TempDir, extra: &[&str]) -> Result<Report, LoadgenError> {
    let state_dir = state.path().to_str().unwrap();
    let mut argv = vec!["loadgen", "--server", &server.url, "--state-dir", state_dir, "--size", "100"];
    argv.extend_from_slice(extra);
    let args = LoadgenArgs::try_parse_from(argv).unwrap();
    run(&args, &|_| {}).await
}

/// The stats add up: every message sent arrived exactly once, in order, and
/// the latency histogram holds exactly the online deliveries.
fn assert_consistent(r: &Report) {
    assert!(r.sent > 0, "{r}");
    assert_eq!((r.delivered, r.lost, r.duplicates, r.reorders, r.foreign), (r.sent, 0, 0, 0, 0), "{r}");
    assert!(r.errors.is_empty() && r.error_count == 0, "{r}");
    assert!(r.failures().is_empty(), "{r}");
    let l = r.latency;
    assert!(l.p50_us > 0 && l.p50_us <= l.p90_us && l.p90_us <= l.p99_us && l.p99_us <= l.max_us, "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_loop_run_delivers_every_message_exactly_once_with_receipts() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let server = start_server().await;
        let state = tempfile::tempdir().unwrap();
        let r = load(&server, &state, &["--clients", "3", "--in-flight", "8", "--duration", "1s"]).await.unwrap();
        assert_consistent(&r);
        assert_eq!(r.latency.count, r.delivered, "{r}");
        assert!(r.delivered_per_s > 0.0 && r.receipts_per_s.unwrap() > 0.0, "{r}");
        assert!(r.drain.is_none());
        server.stop().await;
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_loop_run_sends_at_the_asked_rate() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let server = start_server().await;
        let state = tempfile::tempdir().unwrap();
        let r = load(&server, &state, &["--clients", "2", "--rate", "200", "--duration", "1s"]).await.unwrap();
        assert_consistent(&r);
        assert!((180..=201).contains(&r.sent), "200/s for 1 s sent {}: {r}", r.sent);
        server.stop().await;
    })
    .await
    .expect("test timed out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_receivers_drain_everything_queued_for_them() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let server = start_server().await;
        let state = tempfile::tempdir().unwrap();
        let extra = ["--clients", "2", "--offline-ratio", "0.5", "--messages", "120", "--duration", "5s"];
        let r = load(&server, &state, &extra).await.unwrap();
        assert_consistent(&r);
        assert_eq!(r.sent, 120);
        let drain = r.drain.expect("no drain measured");
        assert!(drain.complete && drain.messages > 0 && drain.per_s > 0.0, "{r}");
        // Only the online pair's deliveries carry a latency.
        assert_eq!(r.latency.count + drain.messages, r.delivered, "{r}");
        server.stop().await;
    })
    .await
    .expect("test timed out");
}

/// Volatile clients (`--volatile-clients`, the benchmark's default) keep
/// every guarantee the report checks, parked offline receivers included.
/// (That they save nothing is checked in bluetick-net's loopback tests: the
/// load generator removes its state directory either way.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volatile_clients_deliver_everything_exactly_once() {
    tokio::time::timeout(TEST_TIMEOUT, async {
        let server = start_server().await;
        let state = tempfile::tempdir().unwrap();
        let extra =
            ["--volatile-clients", "--clients", "2", "--offline-ratio", "0.5", "--messages", "120", "--duration", "5s"];
        let r = load(&server, &state, &extra).await.unwrap();
        assert_consistent(&r);
        assert_eq!(r.sent, 120);
        assert!(r.drain.expect("no drain measured").complete, "{r}");
        server.stop().await;
    })
    .await
    .expect("test timed out");
}

#[tokio::test]
async fn an_unreachable_server_is_reported_with_what_to_start() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("ws://{}/", listener.local_addr().unwrap());
    drop(listener);
    let args = LoadgenArgs::try_parse_from(["loadgen", "--server", &url]).unwrap();
    let err = run(&args, &|_| {}).await.unwrap_err();
    assert!(matches!(err, LoadgenError::Unreachable { .. }), "{err:?}");
    assert!(err.to_string().contains("is `bluetick serve` running"), "{err}");
}
