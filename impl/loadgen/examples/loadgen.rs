//! `bluetick loadgen` before the root CLI wires it in:
//! `cargo run --release -p bluetick-loadgen --example loadgen -- --help`.

use clap::Parser;

fn main() -> std::process::ExitCode {
    bluetick_loadgen::cli_loadgen(bluetick_loadgen::LoadgenArgs::parse())
}
