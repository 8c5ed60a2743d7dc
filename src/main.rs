//! The `bluetick` command.
//!
//! `vectors` regenerates the crypto known-answer vectors; `serve` runs the chat
//! server over WebSockets. The simulator (`run`, `sweep`), client (`chat`) and
//! model checker (`check`) subcommands arrive with their issues; see README.md.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

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
        /// Directory for the server's durable state (`server.redb`); created if missing.
        #[arg(long, default_value = "./data")]
        data: PathBuf,
    },
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
        Command::Serve { listen, data } => match serve(listen, &data) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(1)
            }
        },
    }
}

/// Runs the server until Ctrl-C or SIGTERM; errors are sentences for a person.
fn serve(listen: SocketAddr, data: &Path) -> Result<(), String> {
    use bluetick_core::store::{RedbStore, StoreError};
    use bluetick_net::server::{run_server, ServerOptions};

    std::fs::create_dir_all(data).map_err(|e| format!("cannot create the data directory {}: {e}", data.display()))?;
    let db = data.join("server.redb");
    let store = RedbStore::open(&db).map_err(|e| match e {
        StoreError::Locked { .. } => {
            format!("{} is in use by another bluetick server; stop it or choose another --data", db.display())
        }
        StoreError::Open { message, .. } => format!(
            "cannot open {} ({message}); check that the data directory is writable or choose another --data",
            db.display()
        ),
        other => other.to_string(),
    })?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
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
        let options = ServerOptions::new(Default::default(), bluetick_net::entropy::os_seed_u64());
        run_server(listener, store, options, shutdown_signal())
            .await
            .map_err(|e| format!("{e}; the data in {} may need a backup restored", db.display()))?;
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
