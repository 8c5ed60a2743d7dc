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

/// The tokio runtime the `bluetick` binary runs the server, the chat
/// client and the load generator on: a single-threaded one when this
/// process may use only one core (`taskset`, a cgroup limit), a worker per
/// core otherwise. With one core, a multi-threaded runtime still runs
/// `block_on`'s future on the main thread and the tasks on a worker, and
/// every hand-over between the two is a wake-up and a context switch on the
/// same core: on one core each, the server and the load generator
/// drained 200k queued messages at 37.5k msgs/s instead of 30.0k, and p99
/// at 2,000 msgs/s fell from 4.0–5.0 to 2.5 ms. On this runtime the server
/// commits inline ([`crate::commit::CommitMode::Auto`]): with redb on disk,
/// against a committer thread, p99 at 2k/s 2.5 vs 4.0 ms and peak 17.4k vs
/// 12.6k msgs/s, the drain 23.6k vs 28.5k.
#[cfg(not(loom))]
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    runtime_for(std::thread::available_parallelism().map_or(1, |n| n.get()))
}

#[cfg(not(loom))]
fn runtime_for(cores: usize) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = if cores <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    builder.enable_all().build()
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
}
