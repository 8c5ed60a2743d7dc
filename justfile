# bluetick recipes. Each is a shortcut for a plain cargo command (shown by `just --dry-run <recipe>`).

# List the recipes.
default:
    @just --list

# The full test suite (what CI runs, minus fmt/clippy).
test:
    cargo test --workspace

# Everything CI runs: fmt, clippy, tests, and the weakened-build check.
ci:
    bash .ci/run

# fmt check and clippy with warnings as errors.
lint:
    cargo fmt --all -- --check
    cargo clippy --workspace --all-targets -- -D warnings

# Prove the forward-secrecy/replay tests fail against a build that keeps used keys.
weak:
    cargo test -p bluetick-crypto --features weak-keep-used-keys

# Criterion benchmarks of the crypto core, side by side with vodozemac; prints ratios.
bench:
    cargo bench -p bluetick-crypto --bench crypto

# Benchmarks of the sans-IO server (sends/s, group fan-out bytes, recovery).
bench-core:
    cargo bench -p bluetick-core --bench server

# Regenerate the known-answer vectors in tests/vectors/.
vectors:
    cargo run --release -- vectors --out tests/vectors

# Longer property-test runs than CI does.
props cases="2048":
    PROPTEST_CASES={{cases}} cargo test --workspace --release
