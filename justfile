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

# Run one scenario through the simulator and write its report (e.g. `just sim scenarios/happy-path-1to1.toml`).
sim scenario *args:
    cargo run --release -- run {{scenario}} {{args}}

# Run a scenario over many seeds on every core; shrinks the smallest failure (e.g. `just sweep scenarios/partition-then-heal.toml 1..1000`).
sweep scenario seeds="1..100" *args:
    cargo run --release -- sweep {{scenario}} --seeds {{seeds}} {{args}}

# Model-check every property at the CI bounds.
check *args:
    cargo run --release -- check {{args}}

# Model-check at the deep bounds (minutes; see model/README.md).
check-deep *args:
    cargo run --release -- check --deep {{args}}

# The load generator against a running server (see `bluetick loadgen --help`).
loadgen *args:
    cargo run --release -- loadgen {{args}}

# bluetick vs mosquitto on loopback, server and load generator pinned to separate cores.
bench-net:
    bash impl/loadgen/bench-net.sh

# Simulator throughput: the fixed workload (scenarios/bench/sim-throughput.toml: 1,000 users x 10 msgs/s x 60 s,
# 1 KiB, 1% loss) on the direct driver with real crypto and with the symbolic suite, then the turmoil driver's
# benchmark; prints deliveries per wall second.
bench-sim:
    #!/usr/bin/env bash
    set -euo pipefail
    cargo build --release --locked
    start=$(date +%s.%N)
    out=$(target/release/bluetick run scenarios/bench/sim-throughput.toml --out target/bench-sim)
    end=$(date +%s.%N)
    echo "$out" | grep -E "counts|latency|simulated|PASSED|FAILED"
    n=$(echo "$out" | sed -n 's/.*app_deliveries=\([0-9]*\).*/\1/p')
    awk -v n="$n" -v s="$start" -v e="$end" 'BEGIN { printf "direct driver, real crypto: %d deliveries in %.1f s wall = %.0f deliveries/wall s (setup and report writing included)\n", n, e - s, n / (e - s) }'
    # The same workload with the no-security symbolic suite (same trace, cheaper keys).
    sed 's/^seed = 1$/seed = 1\nsuite = "symbolic-insecure"/' scenarios/bench/sim-throughput.toml > target/bench-sim/sim-throughput-symbolic.toml
    start=$(date +%s.%N)
    out=$(target/release/bluetick run target/bench-sim/sim-throughput-symbolic.toml --out target/bench-sim)
    end=$(date +%s.%N)
    n=$(echo "$out" | sed -n 's/.*app_deliveries=\([0-9]*\).*/\1/p')
    awk -v n="$n" -v s="$start" -v e="$end" 'BEGIN { printf "direct driver, symbolic-insecure: %d deliveries in %.1f s wall = %.0f deliveries/wall s\n", n, e - s, n / (e - s) }'
    cargo test --release -p bluetick-sim --test turmoil_bench -- --ignored --nocapture
    # The 1,024-member group with churn and loss over 60 simulated seconds on the turmoil driver (goal < 30 s wall).
    for suite in bluetick-v1 symbolic-insecure; do
        sed "s/^suite = .*/suite = \"$suite\"/" scenarios/bench/group-1024-60s.toml > target/bench-sim/group-1024-60s-$suite.toml
        start=$(date +%s.%N)
        target/release/bluetick run target/bench-sim/group-1024-60s-$suite.toml --driver turmoil --out target/bench-sim -q
        end=$(date +%s.%N)
        awk -v s="$start" -v e="$end" -v k="$suite" 'BEGIN { printf "turmoil driver, group-1024-60s, %s: %.1f s wall\n", k, e - s }'
    done

# Loom model checks of the net crate's hand-written concurrency (group commit handoff); a cold build takes ~5 min.
loom:
    RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target-loom cargo test -p bluetick-net --release --lib loom

# More SIGKILL rounds of the real server under load than CI runs.
crash rounds="20":
    BLUETICK_CRASH_ROUNDS={{rounds}} cargo test --release -p bluetick --test crash_consistency -- --nocapture

# Fuzz each cargo-fuzz target for `secs` seconds; new inputs -> impl/fuzz/work/, crashes -> impl/fuzz/artifacts/
# (copy one into impl/fuzz/corpus/<target>/ and CI replays it as a regression).
fuzz secs="120":
    #!/usr/bin/env bash
    set -euo pipefail
    command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
    if rustup toolchain list | grep -q '^nightly'; then tc=+nightly; else tc=; export RUSTC_BOOTSTRAP=1; fi
    for t in wire_decode server_frames client_frames ratchet_decrypt sender_key_decrypt; do
        mkdir -p impl/fuzz/work/$t
        cargo $tc fuzz run -O -s none --fuzz-dir impl/fuzz $t impl/fuzz/work/$t impl/fuzz/corpus/$t -- \
            -max_total_time={{secs}} -max_len=8192 -rss_limit_mb=2048 -malloc_limit_mb=512 -timeout=20
    done

# Mutation testing with cargo-mutants (settings in .cargo/mutants.toml). The
# crypto crate takes ~75 min on 2 cores; its results and every survivor's
# explanation are in reports/mutants.md. Extra arguments go to cargo-mutants,
# e.g. `just mutants -p bluetick-core -f impl/core/src/server/mailbox.rs`.
mutants *args="-p bluetick-crypto":
    command -v cargo-mutants >/dev/null || cargo install cargo-mutants --locked --version 27.1.0
    cargo mutants -j 2 --output target/mutants {{args}}

# The survivors of a `just mutants` run, judged by the tests the issue counts
# (core, simulator and model checker together): cargo-mutants runs only the
# mutated crate's tests. Each survivor's diff is applied to a clean worktree of
# HEAD, `cargo test -p bluetick-core -p bluetick-sim -p bluetick-model` runs
# (about 80 s each), and CAUGHT or MISSED is printed.
mutants-cross out="target/mutants/mutants.out":
    #!/usr/bin/env bash
    set -u
    top=$(pwd); wt=$(mktemp -d); out=$(realpath {{out}})
    git worktree add -q --detach "$wt" HEAD
    trap 'git -C "$top" worktree remove --force "$wt"' EXIT
    export CARGO_TARGET_DIR="$top/target/mutants-cross"
    grep -E '^[^:]+:[0-9]+:[0-9]+:' "$out/missed.txt" | while IFS= read -r m; do
        d="$out/diff/$(echo "$m" | sed -E 's#^([^:]+):([0-9]+):([0-9]+):.*#\1_line_\2_col_\3#; s#/#__#g').diff"
        f=$(sed -n '1s/^--- //p' "$d")
        (cd "$wt" && patch -s -p0 "$f" < "$d") || { echo "NOT APPLIED  $m"; continue; }
        if (cd "$wt" && cargo test -q -p bluetick-core -p bluetick-sim -p bluetick-model >/dev/null 2>&1); then r=MISSED; else r=CAUGHT; fi
        (cd "$wt" && git checkout -q -- .)
        echo "$r  $m"
    done

# Regenerate the committed example reports (reports/examples/) of every bundled scenario at its default seed.
reports:
    cargo build --release
    for f in scenarios/*.toml scenarios/broken/*.toml; do target/release/bluetick run "$f" --out reports/examples --quiet || true; done
    INSTA_UPDATE=always cargo test --release -p bluetick-sim --test examples -- --include-ignored

# Check that the committed example reports are current, the heavy scenarios included (release).
reports-check:
    cargo test --release -p bluetick-sim --test examples -- --include-ignored

# Every bundled scenario on its default seed, the heavy ones included (release).
sim-scenarios:
    cargo test --release -p bluetick-sim --test scenarios -- --include-ignored
