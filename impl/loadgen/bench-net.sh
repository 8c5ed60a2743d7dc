#!/usr/bin/env bash
# Loopback benchmark of `bluetick serve` against mosquitto, Redis and NATS, with the same
# load generator and the same load shapes (issue 4, "Benchmark against real
# peers"). Usage, from the workspace root:
#
#   impl/loadgen/bench-net.sh            # everything, three runs each, then a table
#   RUNS=1 DURATION=5s impl/loadgen/bench-net.sh      # a quicker pass
#   SERVERS="mosquitto bluetick-tmpfs" SCENARIOS="peak10 open20k" impl/loadgen/bench-net.sh
#
# Knobs (environment): RUNS (3), DURATION (10s per timed phase), SERVERS
# (mosquitto redis nats bluetick-tmpfs bluetick-disk), SCENARIOS (peak10 peak100
# open20k open2k drain200k idle10k both-peak both-open), OPEN_RATE (20000),
# OPEN_RATE_LOW (2000: latency at a load every server carries), BOTH_PAIRS
# (500: 1,000 connected clients), BOTH_RATE (15000), DRAIN_MESSAGES (200000),
# IDLE_CONNECTIONS (10000), SERVER_CORE (0), LOADGEN_CORE (1), OUT (a new
# directory under target/bench-net), MAX_FRAMES_PER_SECOND (200, the server's
# default per-connection limit; a load generator's clients each carry many
# users' traffic, so raise it to measure the server rather than the limit),
# CLIENT_SAVES (none: the load generator's bluetick clients keep their state
# in memory, `--volatile-clients`; tmpfs: each saves a change record to
# /dev/shm before every frame it sends, as a real device saves to its disk,
# which at peak made the load generator, not the server, the limit).
#
# Servers and their durability when they acknowledge a message:
# - mosquitto: Debian's defaults (persistence true, autosave every 1800 s):
#   a PUBACK means "in memory"; a crash loses everything since the last
#   snapshot. max_queued_messages is raised from 1,000 to 0 (unlimited) so
#   the offline run can queue 200k, and max_inflight_messages from 20 to 100
#   to match the load's 100 in flight.
# - bluetick-disk: `bluetick serve` as shipped (the safest mode): the store
#   writes of every frame that arrived while the last commit ran form one
#   group, one redb transaction committed with immediate durability (fsync),
#   and the acks of those frames leave only after it.
# - bluetick-tmpfs: the same binary with --data on /dev/shm, the matching
#   mode: redb still commits every group, but fsync on tmpfs returns at once,
#   so the ack means "in memory", as with mosquitto. (Stronger than
#   mosquitto's: a killed server loses nothing, only a reboot does.)
# - bluetick-log: `bluetick serve --store log` on disk: the append-only log
#   store, one record and one fsync per group, same durability as
#   bluetick-disk. Not in the default SERVERS list.
#
# - redis: Redis Streams (a stream per pair, read through a consumer group,
#   XACK after each read), append-only file with fsync every second: an
#   XADD reply means "in memory and in the AOF buffer"; a crash loses up to a
#   second. No RDB snapshots.
# - nats: NATS JetStream, a work-queue stream (file storage) and a durable
#   pull consumer per pair acking each message: a publish ack means the
#   stream took it; the file store syncs every two minutes by default, so
#   like mosquitto's it is "in memory".
#
# Fairness: the server runs pinned to SERVER_CORE and the load generator to
# LOADGEN_CORE (taskset); every run starts a fresh server with empty state;
# each number is the median of RUNS runs. The both-* shapes are the issue's
# "with both cores, 1,000 connected clients" goal: BOTH_PAIRS pairs, server
# and load generator unpinned, sharing both cores as the OS schedules them
# (closed loop, and open loop at BOTH_RATE).
#
set -euo pipefail

RUNS=${RUNS:-3}
DURATION=${DURATION:-10s}
SERVERS=${SERVERS:-"mosquitto redis nats bluetick-tmpfs bluetick-disk"}
SCENARIOS=${SCENARIOS:-"peak10 peak100 open20k open2k drain200k idle10k both-peak both-open"}
OPEN_RATE=${OPEN_RATE:-20000}
BOTH_PAIRS=${BOTH_PAIRS:-500}
BOTH_RATE=${BOTH_RATE:-15000}
OPEN_RATE_LOW=${OPEN_RATE_LOW:-2000}
DRAIN_MESSAGES=${DRAIN_MESSAGES:-200000}
IDLE_CONNECTIONS=${IDLE_CONNECTIONS:-10000}
CLIENT_SAVES=${CLIENT_SAVES:-none}
case "$CLIENT_SAVES" in none | tmpfs) ;; *) echo "CLIENT_SAVES is none or tmpfs" >&2; exit 2 ;; esac
SERVER_CORE=${SERVER_CORE:-0}
LOADGEN_CORE=${LOADGEN_CORE:-1}
MAX_FRAMES_PER_SECOND=${MAX_FRAMES_PER_SECOND:-200}
MQTT_PORT=${MQTT_PORT:-18830}
REDIS_PORT=${REDIS_PORT:-16379}
NATS_PORT=${NATS_PORT:-14222}
BLUETICK_PORT=${BLUETICK_PORT:-17878}

root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
OUT=${OUT:-"$root/target/bench-net/$(date +%Y%m%d-%H%M%S)"}
mkdir -p "$OUT"
results="$OUT/results.jsonl"
: >"$results"

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
die() { printf 'bench-net: %s\n' "$*" >&2; exit 1; }

sudo=""
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || die "not root and no sudo: install mosquitto, jq and util-linux (taskset) yourself"
    sudo="sudo"
fi

# --- tools -------------------------------------------------------------------
need=()
command -v taskset >/dev/null || need+=(util-linux)
command -v jq >/dev/null || need+=(jq)
case " $SERVERS " in *" mosquitto "*) [ -x /usr/sbin/mosquitto ] || need+=(mosquitto) ;; esac
case " $SERVERS " in *" redis "*) command -v redis-server >/dev/null || need+=(redis-server) ;; esac
case " $SERVERS " in *" nats "*) command -v nats-server >/dev/null || [ -x /usr/sbin/nats-server ] || need+=(nats-server) ;; esac
if [ ${#need[@]} -gt 0 ]; then
    say "installing ${need[*]}"
    $sudo apt-get install -y "${need[@]}" || { $sudo apt-get update && $sudo apt-get install -y "${need[@]}"; }
fi
[ "$(nproc)" -ge 2 ] || say "warning: fewer than 2 cores; server and load generator will share one"

# Room for IDLE_CONNECTIONS sockets on each side.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# --- build -------------------------------------------------------------------
say "building bluetick and the load generator (release)"
cargo build --release --quiet -p bluetick --bin bluetick
if target/release/bluetick loadgen --help >/dev/null 2>&1; then
    loadgen=(target/release/bluetick loadgen)
else
    cargo build --release --quiet -p bluetick-loadgen --example loadgen
    loadgen=(target/release/examples/loadgen)
fi
say "load generator: ${loadgen[*]}"
say "bluetick load clients' saves: $CLIENT_SAVES (CLIENT_SAVES)"

# --- servers -----------------------------------------------------------------
server_pid=""
server_dirs=()
cleanup() {
    if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; fi
    for d in "${server_dirs[@]}"; do rm -rf "$d"; done
}
trap cleanup EXIT

wait_port() {
    for _ in $(seq 1 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        kill -0 "$server_pid" 2>/dev/null || die "the server exited at start; see $OUT/server.log"
        sleep 0.1
    done
    die "nothing listens on 127.0.0.1:$1 after 10 s; see $OUT/server.log"
}

# fresh_dir TEMPLATE: a new empty directory, removed when the server stops.
fresh_dir() {
    dir=$(mktemp -d "$1")
    server_dirs+=("$dir")
}

# launch PORT COMMAND...: runs COMMAND pinned to SERVER_CORE (every core
# when $server_cores says so), logging to server.log; sets server_pid and
# returns once PORT accepts connections.
server_cores=$SERVER_CORE
launch() {
    local port=$1
    shift
    taskset -c "$server_cores" "$@" >"$OUT/server.log" 2>&1 &
    server_pid=$!
    wait_port "$port"
}

# start_server NAME: starts a fresh server pinned to SERVER_CORE; sets
# server_pid and target_args.
start_server() {
    local dir
    case "$1" in
        mosquitto)
            fresh_dir "$OUT/mosquitto.XXXX"
            cat >"$dir/mosquitto.conf" <<EOF
listener $MQTT_PORT 127.0.0.1
allow_anonymous true
persistence true
persistence_location $dir/
autosave_interval 1800
max_queued_messages 0
max_inflight_messages 100
log_dest none
EOF
            launch "$MQTT_PORT" /usr/sbin/mosquitto -c "$dir/mosquitto.conf"
            target_args=(--target mqtt --server "127.0.0.1:$MQTT_PORT")
            ;;
        redis)
            fresh_dir "$OUT/redis.XXXX"
            launch "$REDIS_PORT" redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --dir "$dir" \
                --appendonly yes --appendfsync everysec --save "" --protected-mode yes
            target_args=(--target redis --server "127.0.0.1:$REDIS_PORT")
            ;;
        nats)
            fresh_dir "$OUT/nats.XXXX"
            launch "$NATS_PORT" "$(command -v nats-server || echo /usr/sbin/nats-server)" -js -sd "$dir" \
                -a 127.0.0.1 -p "$NATS_PORT"
            target_args=(--target nats --server "127.0.0.1:$NATS_PORT")
            ;;
        bluetick-disk | bluetick-tmpfs | bluetick-log)
            if [ "$1" = bluetick-tmpfs ]; then
                fresh_dir /dev/shm/bench-net-bluetick.XXXX
            else
                fresh_dir "$OUT/bluetick-data.XXXX"
            fi
            local store=redb
            [ "$1" = bluetick-log ] && store=log
            launch "$BLUETICK_PORT" target/release/bluetick serve --listen "127.0.0.1:$BLUETICK_PORT" \
                --data "$dir" --store "$store" --max-frames-per-second "$MAX_FRAMES_PER_SECOND"
            local saves=(--volatile-clients)
            [ "$CLIENT_SAVES" = tmpfs ] && saves=(--state-dir /dev/shm --inline-saves)
            target_args=(--target bluetick --server "ws://127.0.0.1:$BLUETICK_PORT/" "${saves[@]}"
                --server-frames-per-second "$MAX_FRAMES_PER_SECOND")
            ;;
        *) die "unknown server $1 (mosquitto, redis, nats, bluetick-disk, bluetick-tmpfs, bluetick-log)" ;;
    esac
}

stop_server() {
    kill "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
    server_pid=""
    for d in "${server_dirs[@]}"; do rm -rf "$d"; done
    server_dirs=()
}

scenario_args() {
    case "$1" in
        peak10) echo "--clients 10 --rate 0 --in-flight 100 --duration $DURATION" ;;
        peak100) echo "--clients 100 --rate 0 --in-flight 100 --duration $DURATION" ;;
        # A server slower than the offered rate queues the excess; the long
        # drain timeout lets it finish so latency, not loss, shows it.
        open20k) echo "--clients 100 --rate $OPEN_RATE --duration $DURATION --drain-timeout 5m" ;;
        open2k) echo "--clients 100 --rate $OPEN_RATE_LOW --duration $DURATION --drain-timeout 5m" ;;
        drain200k) echo "--clients 100 --offline-ratio 1 --rate 0 --in-flight 100 --messages $DRAIN_MESSAGES --duration 10m --drain-timeout 10m" ;;
        idle10k) echo "--idle --clients $IDLE_CONNECTIONS --duration 5s" ;;
        both-peak) echo "--clients $BOTH_PAIRS --rate 0 --in-flight 100 --duration $DURATION --drain-timeout 5m" ;;
        both-open) echo "--clients $BOTH_PAIRS --rate $BOTH_RATE --duration $DURATION --drain-timeout 5m" ;;
        *) die "unknown scenario $1" ;;
    esac
}

# --- runs --------------------------------------------------------------------
for server in $SERVERS; do
    for scenario in $SCENARIOS; do
        runs=$RUNS
        [ "$scenario" = idle10k ] && runs=1
        # Redis and NATS receivers poll (a blocking read returns every 100 ms;
        # a pull consumer renews its pull requests), so their connections
        # are never idle: not measured.
        [ "$scenario" = idle10k ] && { [ "$server" = redis ] || [ "$server" = nats ]; } && runs=0
        all_cores="0-$(($(nproc) - 1))"
        case "$scenario" in
            both-*) server_cores=$all_cores loadgen_cores=$all_cores ;;
            *) server_cores=$SERVER_CORE loadgen_cores=$LOADGEN_CORE ;;
        esac
        for run in $(seq 1 "$runs"); do
            start_server "$server"
            say "$server $scenario run $run/$runs"
            # shellcheck disable=SC2046 # the scenario's flags are words on purpose
            line=$(taskset -c "$loadgen_cores" "${loadgen[@]}" "${target_args[@]}" $(scenario_args "$scenario") \
                --size 1024 --seed "$run" --server-pid "$server_pid" --json 2>>"$OUT/loadgen.log") || true
            stop_server
            if [ -z "$line" ]; then
                say "  no report (see $OUT/loadgen.log)"
                continue
            fi
            echo "$line" | jq -c --arg s "$server" --arg c "$scenario" --argjson r "$run" \
                '. + {bench_server: $s, scenario: $c, run: $r}' >>"$results"
            echo "$line" | jq -r '"  \(.delivered_per_s|floor) msgs/s delivered, p50 \(.latency.p50_us/1000) ms, p99 \(.latency.p99_us/1000) ms, drain \(.drain.per_s // "-"), idle B/conn \(.idle_bytes_per_connection // "-"), dup \(.duplicates) reord \(.reorders) lost \(.lost) errors \(.error_count)"' >&2
        done
    done
done

# --- table -------------------------------------------------------------------
# median SERVER SCENARIO JQ_EXPR: the median over runs, or "-".
median() {
    local values n
    values=$(jq -r --arg s "$1" --arg c "$2" "select(.bench_server == \$s and .scenario == \$c) | $3 // empty" "$results" | sort -g)
    n=$(printf '%s\n' "$values" | grep -c . || true)
    if [ "$n" -eq 0 ]; then echo "-"; return; fi
    printf '%s\n' "$values" | sed -n "$(((n + 1) / 2))p" | awk '{ printf "%.0f", $1 }'
}
ms() { if [ "$1" = "-" ]; then echo "-"; else awk -v us="$1" 'BEGIN { printf "%.1f ms", us / 1000 }'; fi; }

{
    echo
    echo "Median of $RUNS runs; 1 KiB messages; server on core $SERVER_CORE, loadgen on core $LOADGEN_CORE (both-*: $BOTH_PAIRS pairs, both unpinned); $(date -u +%Y-%m-%dT%H:%MZ)"
    printf '%-15s | %-13s | %-14s | %-12s | %-14s | %-15s | %-17s | %-13s | %-12s | %-11s | %-13s | %-15s\n' server "peak 10 pairs" "peak 100 pairs" \
        "p99 peak 100" "p99 @ $OPEN_RATE/s" "delivered/s @ $OPEN_RATE" "server µs/msg @ $OPEN_RATE" "p99 @ $OPEN_RATE_LOW/s" "drain msgs/s" "idle B/conn" \
        "both: peak" "both: p99 @ $BOTH_RATE/s"
    for server in $SERVERS; do
        printf '%-15s | %-13s | %-14s | %-12s | %-14s | %-15s | %-17s | %-13s | %-12s | %-11s | %-13s | %-15s\n' "$server" \
            "$(median "$server" peak10 .delivered_per_s)" \
            "$(median "$server" peak100 .delivered_per_s)" \
            "$(ms "$(median "$server" peak100 .latency.p99_us)")" \
            "$(ms "$(median "$server" open20k .latency.p99_us)")" \
            "$(median "$server" open20k .delivered_per_s)" \
            "$(median "$server" open20k .server_cpu_us_per_msg)" \
            "$(ms "$(median "$server" open2k .latency.p99_us)")" \
            "$(median "$server" drain200k .drain.per_s)" \
            "$(median "$server" idle10k .idle_bytes_per_connection)" \
            "$(median "$server" both-peak .delivered_per_s)" \
            "$(ms "$(median "$server" both-open .latency.p99_us)")"
    done
    echo
    echo "duplicates / reorders / lost over all runs:"
    jq -r '"  \(.bench_server) \(.scenario) run \(.run): \(.duplicates) / \(.reorders) / \(.lost)"' "$results"
} | tee "$OUT/table.txt"
say "results in $OUT (results.jsonl, table.txt, loadgen.log)"
