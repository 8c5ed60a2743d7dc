//! The `bluetick` command.
//!
//! Today it has one job, `vectors`: regenerate the crypto known-answer vectors.
//! The simulator (`run`, `sweep`), server (`serve`), client (`chat`) and model
//! checker (`check`) subcommands arrive with their issues; see README.md.

use std::path::PathBuf;
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
    }
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
