//! `cargo run --release -p bluetick-sim --example run -- scenarios/<x>.toml`:
//! the `bluetick run` command without the rest of the CLI, for timing the
//! simulator in release builds (`bluetick run` is the same function).

use clap::Parser;

/// The arguments of `bluetick run`.
#[derive(Parser)]
struct Args {
    #[command(flatten)]
    run: bluetick_sim::cli::RunArgs,
}

fn main() -> std::process::ExitCode {
    bluetick_sim::cli::cli_run(Args::parse().run)
}
