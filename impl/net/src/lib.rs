//! The tokio runtime of bluetick: the real-network drivers of the sans-IO
//! [`bluetick_core`] state machines.
//!
//! - [`server`]: `bluetick serve` — accepts WebSocket connections and feeds
//!   their frames to one [`bluetick_core::server::Server`].
//! - [`client`]: drives one [`bluetick_core::client::Client`] over a
//!   reconnecting WebSocket, persisting its state before anything leaves it.
//! - [`commit`]: group commit, the handoff from the server loop to the
//!   committer thread that makes its writes durable (loom-checked).
//! - [`clock`]: the wall clock, behind a trait so tests and the simulator can
//!   inject their own.
//! - [`entropy`]: the OS random number generator, for seeds only.
//! - [`transport`]: where byte streams come from ([`transport::Acceptor`],
//!   [`transport::Connector`]): real TCP here, simulated TCP in bluetick-sim,
//!   under the same drivers.
//! - `sync`: std's or, under `cfg(loom)`, loom's locks and threads.
//!
//! Under `--cfg loom` only [`commit`] and its primitives are built, for the
//! loom tests: tokio leaves out `tokio::net` in such a build.
//!
//! One frame is one WebSocket binary message, encoded with
//! [`bluetick_core::wire::encode`]. Only this crate reads the OS clock and
//! RNG; each such spot carries a local `#[allow]` saying why.

// The loom build runs only the commit handoff's tests; the driver-facing
// parts of `commit` have no user there.
#![cfg_attr(loom, allow(dead_code))]

#[cfg(not(loom))]
pub mod client;
pub mod clock;
pub mod commit;
pub mod entropy;
#[cfg(not(loom))]
pub mod server;
#[cfg(not(loom))]
pub mod state_file;
mod sync;
#[cfg(not(loom))]
pub mod transport;

/// Largest WebSocket message either side accepts, in bytes. Twice
/// [`bluetick_core::wire::FRAME_LEN_MAX`] so a slightly oversize frame still
/// reaches the core, which answers it with a `TooLarge` error the peer can
/// read; anything beyond is cut off by the WebSocket layer without buffering it.
#[cfg(not(loom))]
pub const WS_MESSAGE_LEN_MAX: usize = 2 * bluetick_core::wire::FRAME_LEN_MAX;

/// Bytes a WebSocket reader asks the socket for at once, and what it
/// allocates up front. tungstenite's default, 128 KiB, is nearly all an idle
/// connection costs, and it zeroes that much before every read: with it, a
/// load generator's clients spent 14% of their CPU in `memset`. A few 1 KiB
/// frames per read is as good under load, and a larger frame grows the
/// buffer for as long as it needs.
#[cfg(not(loom))]
pub const WS_READ_BUFFER_LEN: usize = 4 * 1024;

/// The server's read buffer per connection, smaller than a client's
/// [`WS_READ_BUFFER_LEN`]: a server holds one per connection, idle or not,
/// and at 4 KiB it was a third of what an idle connection cost. A frame
/// larger than the buffer grows it while it is read, so a read still takes
/// in a whole frame; what is lost is only reading several frames per call.
#[cfg(not(loom))]
pub const SERVER_READ_BUFFER_LEN: usize = 1024;

/// The WebSocket limits and read buffer both sides run with.
#[cfg(not(loom))]
pub fn ws_config() -> tokio_tungstenite::tungstenite::protocol::WebSocketConfig {
    tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .read_buffer_size(WS_READ_BUFFER_LEN)
        .max_message_size(Some(WS_MESSAGE_LEN_MAX))
        .max_frame_size(Some(WS_MESSAGE_LEN_MAX))
}

/// The tokio runtime the `bluetick` binary runs the chat client and the
/// load generator on: a single-threaded one when this process may use only
/// one core (`taskset`, a cgroup limit), a worker per core otherwise. With
/// one core, a multi-threaded runtime still runs `block_on`'s future on the
/// main thread and the tasks on a worker, and every hand-over between the
/// two is a wake-up and a context switch on the same core: on one core
/// each, the server and the load generator drained 200k queued messages at
/// 37.5k msgs/s instead of 30.0k, and p99 at 2,000 msgs/s fell from 4.0–5.0
/// to 2.5 ms. The server has its own choice, [`server_runtime`].
#[cfg(not(loom))]
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    runtime_for(available_cores())
}

/// The runtime `bluetick serve` runs on and where its group commits go: a
/// single-threaded runtime always, with the commits on a committer thread
/// when the process may use more than one core and inline otherwise.
///
/// The server loop is one task that owns the core's `Server`; every frame
/// passes through it. On a multi-threaded runtime the loop runs on the main
/// thread and the connections' reader and writer tasks on the workers, so
/// every frame crosses threads twice, each crossing a wake-up of a parked
/// thread: with 1,000 clients, closed loop, both cores shared with the load
/// generator, that runtime delivered 14–16k msgs/s with its loop thread at
/// 100%, the single-threaded one 27–29k, whether it committed inline or on a
/// thread. Off the loop, what parallelises without that cost is the commit
/// (redb's inserts and its commit were more than half the server's CPU at
/// peak), so it gets the second core. On one core it stays inline: with redb
/// on disk, against a committer thread, p99 at 2k/s 2.5 vs 4.0 ms and peak
/// 17.4k vs 12.6k msgs/s.
#[cfg(not(loom))]
pub fn server_runtime() -> std::io::Result<(tokio::runtime::Runtime, commit::CommitMode)> {
    server_runtime_for(available_cores())
}

#[cfg(not(loom))]
fn available_cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

#[cfg(not(loom))]
fn runtime_for(cores: usize) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = if cores <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(cores);
        b
    };
    builder.enable_all().build()
}

/// [`runtime`] with a chosen number of threads: 0 picks as [`runtime`]
/// does, 1 is a single-threaded runtime, n a worker per thread (`loadgen
/// --threads`).
#[cfg(not(loom))]
pub fn runtime_with_threads(threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    match threads {
        0 => runtime(),
        n => runtime_for(n),
    }
}

#[cfg(not(loom))]
fn server_runtime_for(cores: usize) -> std::io::Result<(tokio::runtime::Runtime, commit::CommitMode)> {
    let mode = if cores <= 1 { commit::CommitMode::Inline } else { commit::CommitMode::Thread };
    Ok((tokio::runtime::Builder::new_current_thread().enable_all().build()?, mode))
}

#[cfg(all(test, not(loom)))]
mod tests {
    use tokio::runtime::RuntimeFlavor;

    #[test]
    fn one_core_gets_a_single_threaded_runtime_and_more_get_workers() {
        assert_eq!(super::runtime_for(1).unwrap().handle().runtime_flavor(), RuntimeFlavor::CurrentThread);
        assert_eq!(super::runtime_for(2).unwrap().handle().runtime_flavor(), RuntimeFlavor::MultiThread);
        // Whatever this machine gives, the runtime runs a task.
        assert_eq!(super::runtime().unwrap().block_on(async { tokio::spawn(async { 7 }).await.unwrap() }), 7);
    }

    #[test]
    fn the_server_runs_single_threaded_and_commits_on_a_thread_only_with_a_second_core() {
        use crate::commit::CommitMode;
        let (one, inline) = super::server_runtime_for(1).unwrap();
        let (two, threaded) = super::server_runtime_for(2).unwrap();
        assert_eq!(one.handle().runtime_flavor(), RuntimeFlavor::CurrentThread);
        assert_eq!(two.handle().runtime_flavor(), RuntimeFlavor::CurrentThread);
        assert_eq!((inline, threaded), (CommitMode::Inline, CommitMode::Thread));
    }
}
