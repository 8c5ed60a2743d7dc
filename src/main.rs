//! The `bluetick` command.
//!
//! `run` simulates a scenario file and writes its report (the main job);
//! `check` model-checks the state machines; `serve` runs the chat server over
//! WebSockets, `chat` is a terminal client for it and `loadgen` measures it;
//! `vectors` regenerates the crypto known-answer vectors. See README.md.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod chat;

// A long simulation is millions of small, long-lived allocations (maps of
// queued messages, statuses, trace lines); glibc's malloc spent about a
// sixth of a 30-second direct run in its own bookkeeping (consolidating and
// unlinking fragmented chunks). mimalloc keeps that flat, and serves the
// real server's per-frame allocations as well.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Protocol simulator and verification harness for end-to-end encrypted messaging.
#[derive(Parser)]
#[command(name = "bluetick", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Regenerate the known-answer vectors (X3DH + Double Ratchet conversations,
    /// sender keys, media) as JSON files.
    Vectors {
        /// Directory to write into (created if missing).
        #[arg(long, default_value = "tests/vectors")]
        out: PathBuf,
        /// Compare with the files already there instead of writing; exit 1 on any difference.
        #[arg(long)]
        check: bool,
    },
    /// Run the chat server (WebSocket, one binary message per frame) until
    /// Ctrl-C or SIGTERM.
    Serve {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:7878")]
        listen: SocketAddr,
        /// Directory for the server's durable state (`server.redb` or
        /// `server.log`); created if missing.
        #[arg(long, default_value = "./data")]
        data: PathBuf,
        /// How the durable state is kept: `redb` (B-trees, one file) or
        /// `log` (append-only segment files in the directory `server.log`,
        /// indexed in memory: cheaper writes, an index entry in memory per
        /// stored key). Both fsync every group of writes before
        /// acknowledging it.
        #[arg(long, value_enum, default_value_t = StoreKind::Redb)]
        store: StoreKind,
        /// Frames one connection may send per second before it is refused
        /// (burst: twice this). Raise it for load generators; real clients
        /// stay far below the default.
        #[arg(long, default_value_t = bluetick_core::server::machine::FRAMES_PER_SECOND_MAX)]
        max_frames_per_second: u32,
    },
    /// Run a scenario file through the deterministic simulator and write its
    /// report; exit 0 when every invariant held, 1 on a violation, 2 on bad input.
    Run(bluetick_sim::cli::RunArgs),
    /// Run a scenario over many seeds on every core, shrink the smallest
    /// failing run to a minimal scenario file, write `sweep.json`; `--shard i/n`
    /// runs one part of the sweep for a job runner.
    Sweep(bluetick_sim::cli::SweepArgs),
    /// Join the shard reports of one sweep (`--shard 1/n` … `n/n`) into the
    /// report the unsharded sweep writes.
    Merge(bluetick_sim::cli::MergeArgs),
    /// Model-check the real server and client state machines (stateright);
    /// prints states explored, depth, time and a verdict per property.
    Check(bluetick_model::cli::CheckArgs),
    /// Drive a running server (bluetick or an MQTT peer) with real clients and
    /// print throughput, latency percentiles, duplicates and reorders.
    Loadgen(bluetick_loadgen::LoadgenArgs),
    /// Chat as one user from the terminal: send to users and groups, watch each
    /// message's ticks, see presence, send files. Reads commands line by line
    /// from stdin (a pipe works too).
    #[command(after_help = chat::COMMANDS_HELP)]
    Chat {
        /// The server's WebSocket URL.
        #[arg(long, default_value = "ws://127.0.0.1:7878/")]
        server: String,
        /// Your account name (a-z 0-9 _ . + -); registered on first use.
        #[arg(long)]
        user: String,
        /// Directory for this user's device state, group names and downloads
        /// [default: ./chat-data/<user>].
        #[arg(long)]
        data: Option<PathBuf>,
    },
}

/// The server's durable store (`bluetick serve --store`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum StoreKind {
    /// `RedbStore`: `server.redb`.
    Redb,
    /// `LogStore`: the directory `server.log`.
    Log,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Vectors { out, check } => match vectors(&out, check) {
            Ok(0) => ExitCode::SUCCESS,
            Ok(_) => ExitCode::from(1),
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(2)
            }
        },
        Command::Serve { listen, data, max_frames_per_second, store } => {
            match serve(listen, &data, max_frames_per_second, store) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(1)
                }
            }
        }
        Command::Run(args) => bluetick_sim::cli::cli_run(args),
        Command::Sweep(args) => bluetick_sim::cli::cli_sweep(args),
        Command::Merge(args) => bluetick_sim::cli::cli_merge(args),
        Command::Check(args) => bluetick_model::cli::cli_check(args),
        Command::Loadgen(args) => bluetick_loadgen::cli_loadgen(args),
        Command::Chat { server, user, data } => match chat::run(chat::ChatArgs { server, user, data }) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(1)
            }
        },
    }
}

/// Runs the server until Ctrl-C or SIGTERM; errors are sentences for a person.
fn serve(listen: SocketAddr, data: &Path, max_frames_per_second: u32, kind: StoreKind) -> Result<(), String> {
    use bluetick_core::store::{LogStore, RedbStore, StoreError};

    std::fs::create_dir_all(data).map_err(|e| format!("cannot create the data directory {}: {e}", data.display()))?;
    let db = data.join(match kind {
        StoreKind::Redb => "server.redb",
        StoreKind::Log => "server.log",
    });
    let refused = |e: StoreError| match e {
        StoreError::Locked { .. } => {
            format!("{} is in use by another bluetick server; stop it or choose another --data", db.display())
        }
        StoreError::Open { message, .. } => format!(
            "cannot open {} ({message}); check that the data directory is writable or choose another --data",
            db.display()
        ),
        other => other.to_string(),
    };
    match kind {
        StoreKind::Redb => serve_with(listen, &db, max_frames_per_second, RedbStore::open(&db).map_err(refused)?),
        StoreKind::Log => serve_with(listen, &db, max_frames_per_second, LogStore::open(&db).map_err(refused)?),
    }
}

fn serve_with<S: bluetick_core::store::Store + Send + 'static>(
    listen: SocketAddr,
    db: &Path,
    max_frames_per_second: u32,
    store: S,
) -> Result<(), String> {
    use bluetick_net::server::{run_server, ServerOptions};

    let data = db.parent().unwrap_or(db);
    let (runtime, commit) =
        bluetick_net::server_runtime().map_err(|e| format!("cannot start the async runtime: {e}"))?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(listen).await.map_err(|e| match e.kind() {
            std::io::ErrorKind::AddrInUse => {
                format!("{listen} is already in use (another server running?); choose another with --listen")
            }
            std::io::ErrorKind::PermissionDenied => {
                format!(
                    "not allowed to listen on {listen}; ports below 1024 need privileges, choose another with --listen"
                )
            }
            std::io::ErrorKind::AddrNotAvailable => {
                format!("{listen} is not an address of this machine; choose another with --listen")
            }
            _ => format!("cannot listen on {listen}: {e}"),
        })?;
        let local = listener.local_addr().map_err(|e| format!("cannot read the listening address: {e}"))?;
        println!("bluetick server listening on ws://{local}/ with data in {}", data.display());
        let core = bluetick_core::server::machine::ServerConfig {
            frames_per_second_max: max_frames_per_second,
            frames_burst_max: max_frames_per_second.saturating_mul(2),
            ..Default::default()
        };
        let options = ServerOptions { commit, ..ServerOptions::new(core, bluetick_net::entropy::os_seed_u64()) };
        run_server(listener, store, options, shutdown_signal()).await.map_err(|e| match e {
            // The store is intact up to the failed group commit: a restart
            // recovers, so do not send the operator looking for backups.
            bluetick_net::server::ServeError::Commit(_) => format!("{e} (data in {})", db.display()),
            _ => format!("{e}; the data in {} may need a backup restored", db.display()),
        })?;
        println!("bluetick server stopped");
        Ok(())
    })
}

/// Completes on Ctrl-C, or SIGTERM on Unix (how service managers stop us).
async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            // No Ctrl-C handler could be installed: rely on SIGTERM alone.
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
    eprintln!("shutting down: closing connections");
}

/// Writes (or checks) every vector; returns how many files differ.
fn vectors(out: &std::path::Path, check: bool) -> Result<usize, String> {
    let files = bluetick_crypto::vectors::all().map_err(|e| format!("building the vectors failed: {e}"))?;
    if !check {
        std::fs::create_dir_all(out).map_err(|e| format!("cannot create {}: {e}", out.display()))?;
    }
    let mut differing = 0;
    for (name, content) in files {
        let path = out.join(name);
        let mut text = serde_json::to_string_pretty(&content).map_err(|e| format!("serialising {name}: {e}"))?;
        text.push('\n');
        if check {
            let current = std::fs::read_to_string(&path).unwrap_or_default();
            if current == text {
                println!("same     {}", path.display());
            } else {
                println!("DIFFERS  {}", path.display());
                differing += 1;
            }
        } else {
            std::fs::write(&path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
            println!("wrote    {}", path.display());
        }
    }
    Ok(differing)
}
