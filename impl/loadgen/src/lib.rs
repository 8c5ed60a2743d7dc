//! `bluetick loadgen`: drives real clients against a bluetick server or an
//! MQTT broker with the same load shape, and reports delivered throughput,
//! end-to-end latency percentiles, receipts, duplicates, reorders and the
//! server's memory.
//!
//! # Contract
//! - Real clients only: for bluetick, [`bluetick_core::client::Client`]
//!   with real crypto and durable saves, driven by
//!   [`bluetick_net::client::run_client`]; for MQTT, rumqttc at QoS 1 with
//!   persistent sessions.
//! - Every message carries its pair, sequence number and send time
//!   ([`payload`]), so receivers measure latency and check exactly-once
//!   and order themselves ([`stats`]).
//! - Unlike the core crates this is a driver: it reads the clock (through
//!   tokio) and runs threads. Client keys and jitter come from `--seed`.
//!
//! # Layout
//! - [`payload`]: the header every load message carries.
//! - [`stats`]: per-pair duplicate/reorder tracking and the latency histogram.
//! - [`engine`]: the plan, shared counters, pacing, sender loop and phases.
//! - [`bluetick`] / [`mqtt`]: the two targets' [`engine::Driver`]s.
//! - this file: the command-line arguments, [`run`], the [`Report`] and
//!   [`cli_loadgen`].

pub mod bluetick;
pub mod engine;
pub mod mqtt;
pub mod nats;
pub mod payload;
pub mod redis_streams;
pub mod stats;

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::{Parser, ValueEnum};

use crate::engine::{Loop, Plan, Shared, Timeline};
use crate::stats::Percentiles;

/// Most pairs (or idle connections) one run drives: two sockets and a
/// client task each, so 100,000 already needs a raised file limit and GBs of
/// memory on the load generator's side.
pub const CLIENTS_MAX: usize = 100_000;

/// How long the pre-flight TCP probe of the server may take.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// How often the progress line and the server-memory sample refresh.
const TICK: Duration = Duration::from_millis(200);

/// Which kind of server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    /// `bluetick serve` over WebSocket.
    Bluetick,
    /// An MQTT 3.1.1 broker (mosquitto), QoS 1, persistent sessions.
    Mqtt,
    /// Redis Streams: `XADD`, consumer groups, `XACK`.
    Redis,
    /// NATS JetStream: a work-queue stream, durable pull consumers, acks.
    Nats,
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Target::Bluetick => "bluetick",
            Target::Mqtt => "mqtt",
            Target::Redis => "redis",
            Target::Nats => "nats",
        })
    }
}

/// Drive real clients against a server and measure it.
///
/// Each of `--clients` pairs is one sending client and one receiving
/// client. Closed loop (`--rate 0`) keeps `--in-flight` messages per pair
/// outstanding (peak throughput); open loop sends `--rate` messages per
/// second in all on a fixed schedule (latency at a given load).
#[derive(Debug, Clone, Parser)]
#[command(name = "loadgen", version)]
pub struct LoadgenArgs {
    /// Which server to drive.
    #[arg(long, value_enum, default_value_t = Target::Bluetick)]
    pub target: Target,
    /// Server address: ws://host:port/ for bluetick (default
    /// ws://127.0.0.1:7878/), host:port for MQTT (default 127.0.0.1:1883)
    /// Redis (default 127.0.0.1:6379) and NATS (default 127.0.0.1:4222).
    #[arg(long)]
    pub server: Option<String>,
    /// Sender→receiver pairs (with --idle: idle connections).
    #[arg(long, default_value_t = 10)]
    pub clients: usize,
    /// Messages per second over all pairs; 0 = closed loop.
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// Closed loop: messages in flight per pair (sent, not yet delivered;
    /// for an offline receiver, not yet confirmed by the server).
    #[arg(long, default_value_t = 100)]
    pub in_flight: usize,
    /// Message size in bytes (at least 28: the header with sequence number and timestamp).
    #[arg(long, default_value_t = 1024)]
    pub size: usize,
    /// Share of receivers offline during the send phase; they then connect
    /// and drain their queues, and the drain is timed.
    #[arg(long, default_value_t = 0.0)]
    pub offline_ratio: f64,
    /// bluetick only: members per group for group sends (1 = 1:1 messages).
    #[arg(long, default_value_t = 1)]
    pub group_size: usize,
    /// Length of the send phase (e.g. 10s, 500ms, 2m).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Stop the send phase after this many messages in all (0 = no limit;
    /// the offline drain benchmark queues a fixed number).
    #[arg(long, default_value_t = 0)]
    pub messages: u64,
    /// Seed of every client's keys and reconnect jitter.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Process id of the server, to report its memory (VmRSS).
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Only connect --clients receivers and hold them for --duration; with
    /// --server-pid, reports the server memory per idle connection.
    #[arg(long)]
    pub idle: bool,
    /// Longest wait for the last deliveries after the send phase, and for an
    /// offline drain.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    pub drain_timeout: Duration,
    /// bluetick only: directory for the clients' save files (default: a new
    /// temporary directory). Clients save after every input, so a tmpfs
    /// such as /dev/shm keeps the load generator's disk out of the numbers.
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// bluetick only: the clients write their saves on the load
    /// generator's own thread instead of a blocking pool. Only with
    /// `--state-dir` on a memory filesystem (/dev/shm): each save then
    /// costs a write, not two thread switches; on a disk every client
    /// would wait for each other's fsyncs.
    #[arg(long)]
    pub inline_saves: bool,
    /// bluetick only: the clients keep their state in memory and save
    /// nothing (`--state-dir` stays empty). A client saves a change record
    /// before each frame it sends, which at peak took about 40% of the
    /// load generator's CPU; this measures the server with that cost out
    /// of the load generator. The server's durability is unchanged.
    #[arg(long, conflicts_with = "inline_saves")]
    pub volatile_clients: bool,
    /// Threads the load generator runs its clients on: 0 = one per core it
    /// may use (a single-threaded runtime on one core), 1 = a single-threaded
    /// runtime, n = n workers. On a machine it shares with the server, 1
    /// leaves the server more of the cores and hands nothing between threads.
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Print the report as one JSON object on stdout instead of text.
    #[arg(long)]
    pub json: bool,
    /// bluetick only: the server's per-connection frame limit (`serve
    /// --max-frames-per-second`, burst twice that); the clients pace their
    /// frames under it.
    #[arg(long, default_value_t = bluetick_core::server::machine::FRAMES_PER_SECOND_MAX)]
    pub server_frames_per_second: u32,
}

/// Why a run could not happen.
#[derive(Debug, thiserror::Error)]
pub enum LoadgenError {
    /// A flag's value cannot work.
    #[error("--{flag}: {problem}")]
    Args {
        /// The flag.
        flag: &'static str,
        /// What is wrong, and what would work.
        problem: String,
    },
    /// The server did not answer the pre-flight probe.
    #[error("{what} unreachable at {addr} ({detail}): is {hint} running there?")]
    Unreachable {
        /// "bluetick server" or "MQTT broker".
        what: &'static str,
        /// host:port probed.
        addr: String,
        /// The connect error.
        detail: String,
        /// What to start.
        hint: &'static str,
    },
    /// Connecting, logging in or warming up failed after the probe worked.
    #[error("setting up the load failed: {0}")]
    Setup(String),
    /// The state directory could not be created.
    #[error("cannot create a client state directory ({0}); choose another with --state-dir")]
    StateDir(std::io::Error),
    /// The async runtime could not start.
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
}

/// Offline receivers coming back.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct DrainReport {
    /// Messages delivered to them.
    pub messages: u64,
    /// From their reconnect to the last arrival.
    pub seconds: f64,
    /// `messages / seconds`.
    pub per_s: f64,
    /// Whether every queued message arrived before the drain timeout.
    pub complete: bool,
}

/// The server's resident memory, in KiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct RssReport {
    /// Before any client connected.
    pub before_kib: u64,
    /// Highest sample during the run.
    pub peak_kib: u64,
    /// At the end of the send phase (idle: with every connection open).
    pub loaded_kib: u64,
}

/// What a run measured.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Report {
    /// Which kind of server.
    pub target: Target,
    /// Its address.
    pub server: String,
    /// Sender→receiver pairs (idle: connections).
    pub pairs: usize,
    /// Whether this was an idle-connections run (no traffic).
    pub idle: bool,
    /// Pairs whose receiver was offline while sending.
    pub offline_pairs: usize,
    /// Closed or open loop, in words.
    pub pacing: String,
    /// Bytes per message.
    pub size: usize,
    /// Length of the send phase actually run.
    pub duration_s: f64,
    /// Measured messages sent.
    pub sent: u64,
    /// `sent` per second of the send phase.
    pub sent_per_s: f64,
    /// Distinct measured messages delivered (online and offline receivers).
    pub delivered: u64,
    /// Deliveries to online receivers during the send phase, per second.
    pub delivered_per_s: f64,
    /// End-to-end latency to online receivers.
    pub latency: Percentiles,
    /// Delivery receipts reaching senders during the send phase, per
    /// second (bluetick's ✓✓; MQTT has no end-to-end receipt).
    pub receipts_per_s: Option<f64>,
    /// Messages the receiving app saw more than once.
    pub duplicates: u64,
    /// Messages that arrived after a later one of the same pair.
    pub reorders: u64,
    /// Messages sent and never delivered within the drain timeout.
    pub lost: u64,
    /// Arrivals that were not this run's messages.
    pub foreign: u64,
    /// Client connections that dropped and reconnected.
    pub reconnects: u64,
    /// The offline receivers' drain.
    pub drain: Option<DrainReport>,
    /// The server's memory (with `--server-pid`).
    pub server_rss: Option<RssReport>,
    /// The server's CPU time (user and system, every thread) during the send
    /// phase per message delivered in it, in µs (with `--server-pid`). A
    /// closed loop's throughput is the server's and the load generator's
    /// together; this is the server's own cost at the load it was given.
    pub server_cpu_us_per_msg: Option<f64>,
    /// The same CPU time over the send phase's length: cores the server kept busy.
    pub server_cpu_cores: Option<f64>,
    /// Server memory per idle connection in bytes (with `--idle --server-pid`).
    pub idle_bytes_per_connection: Option<u64>,
    /// The first errors seen.
    pub errors: Vec<String>,
    /// How many errors in all.
    pub error_count: u64,
}

impl Report {
    /// Problems that make the run a failure: lost messages, errors, and
    /// (for bluetick, which promises exactly-once to the app) duplicates.
    pub fn failures(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.lost > 0 {
            out.push(format!("{} messages never arrived", self.lost));
        }
        if self.target == Target::Bluetick && self.duplicates > 0 {
            out.push(format!("{} messages reached the app twice", self.duplicates));
        }
        if self.error_count > 0 {
            out.push(format!("{} errors", self.error_count));
        }
        out
    }
}

fn ms(us: u64) -> String {
    format!("{:.2} ms", us as f64 / 1000.0)
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "target       {} at {}", self.target, self.server)?;
        if self.idle {
            writeln!(f, "idle         {} connections held", self.pairs)?;
            if let Some(bytes) = self.idle_bytes_per_connection {
                writeln!(f, "memory       {bytes} bytes of server RSS per idle connection (its account included)")?;
            }
        } else {
            let offline = if self.offline_pairs > 0 {
                format!(" ({} with the receiver offline)", self.offline_pairs)
            } else {
                String::new()
            };
            writeln!(f, "load         {} pairs{offline}, {}, {} B messages", self.pairs, self.pacing, self.size)?;
            writeln!(f, "send phase   {:.2} s, {} sent ({:.0} msgs/s)", self.duration_s, self.sent, self.sent_per_s)?;
            writeln!(
                f,
                "delivered    {:.0} msgs/s to online receivers ({} in all)",
                self.delivered_per_s, self.delivered
            )?;
            let l = &self.latency;
            writeln!(
                f,
                "latency      p50 {}  p90 {}  p99 {}  max {}  ({} messages)",
                ms(l.p50_us),
                ms(l.p90_us),
                ms(l.p99_us),
                ms(l.max_us),
                l.count
            )?;
            if let Some(r) = self.receipts_per_s {
                writeln!(f, "receipts     {r:.0}/s delivery receipts back at the senders")?;
            }
            writeln!(
                f,
                "correctness  {} duplicates, {} reordered, {} lost, {} foreign",
                self.duplicates, self.reorders, self.lost, self.foreign
            )?;
            if let Some(d) = &self.drain {
                let partial = if d.complete { "" } else { " (INCOMPLETE: drain timeout)" };
                writeln!(f, "drain        {} msgs in {:.2} s ({:.0} msgs/s){partial}", d.messages, d.seconds, d.per_s)?;
            }
        }
        if let Some(r) = &self.server_rss {
            writeln!(
                f,
                "server RSS   {:.1} MiB before, {:.1} MiB loaded, {:.1} MiB peak",
                r.before_kib as f64 / 1024.0,
                r.loaded_kib as f64 / 1024.0,
                r.peak_kib as f64 / 1024.0
            )?;
        }
        if let (Some(us), Some(cores)) = (self.server_cpu_us_per_msg, self.server_cpu_cores) {
            writeln!(f, "server CPU   {us:.1} µs per delivered message in the send phase ({cores:.2} cores busy)")?;
        }
        if self.reconnects > 0 {
            writeln!(f, "reconnects   {}", self.reconnects)?;
        }
        for e in &self.errors {
            writeln!(f, "error        {e}")?;
        }
        if self.error_count > self.errors.len() as u64 {
            writeln!(f, "error        … {} more", self.error_count - self.errors.len() as u64)?;
        }
        Ok(())
    }
}

/// Parses `10s`, `500ms`, `2m`, `1.5s` or a bare number of seconds.
///
/// # Errors
/// A sentence naming the accepted forms.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let (number, unit) = match t.find(|c: char| !(c.is_ascii_digit() || c == '.')) {
        Some(at) => t.split_at(at),
        None => (t, "s"),
    };
    let value: f64 = number.parse().map_err(|_| format!("{text:?} is not a duration like 10s, 500ms or 2m"))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => return Err(format!("unknown unit {unit:?} in {text:?}; use ms, s, m or h")),
    };
    Duration::try_from_secs_f64(seconds).map_err(|_| format!("{text:?} is out of range"))
}

/// SplitMix64 of `seed` and `stream`: independent-looking 64-bit seeds for
/// each client from one root seed.
pub fn mix(seed: u64, stream: u64) -> u64 {
    let mut z = seed ^ stream.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The resident memory of process `pid` in KiB, from `/proc/<pid>/status`.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Clock ticks per second of the CPU times in `/proc/<pid>/stat`: Linux's
/// `USER_HZ`, 100 on every architecture it exports to user space.
const PROC_TICKS_PER_S: u64 = 100;

/// CPU time (user plus system, all threads) of process `pid` so far, in
/// clock ticks of [`PROC_TICKS_PER_S`], from `/proc/<pid>/stat`.
pub fn cpu_ticks(pid: u32) -> Option<u64> {
    parse_cpu_ticks(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// utime + stime of a `/proc/<pid>/stat` line. The command name (field 2)
/// is in parentheses and may hold spaces and parentheses itself, so the
/// fields are counted after the last `)`: state is field 3, utime 14, stime 15.
fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let after = &stat[stat.rfind(')')? + 1..];
    let mut fields = after.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// `host:port` of a `ws://host:port/path` URL (port 80 if absent).
fn ws_addr(url: &str) -> Result<String, LoadgenError> {
    let rest = url.strip_prefix("ws://").ok_or_else(|| LoadgenError::Args {
        flag: "server",
        problem: format!("{url:?} is not a ws:// URL (the client has no TLS; e.g. ws://127.0.0.1:7878/)"),
    })?;
    let authority = rest.split('/').next().unwrap_or_default();
    if authority.is_empty() {
        return Err(LoadgenError::Args { flag: "server", problem: format!("{url:?} names no host") });
    }
    Ok(if authority.rsplit_once(':').is_some_and(|(_, p)| p.parse::<u16>().is_ok()) {
        authority.to_owned()
    } else {
        format!("{authority}:80")
    })
}

/// `(host, port)` of an MQTT `host:port` (port 1883 if absent; an
/// `mqtt://` or `tcp://` prefix is accepted).
fn host_port(server: &str, default_port: u16) -> Result<(String, u16), LoadgenError> {
    let s = ["mqtt://", "tcp://", "redis://", "nats://"].iter().find_map(|p| server.strip_prefix(p)).unwrap_or(server);
    let s = s.trim_end_matches('/');
    let (host, port) = match s.rsplit_once(':') {
        Some((h, p)) => (
            h,
            p.parse::<u16>().map_err(|_| LoadgenError::Args {
                flag: "server",
                problem: format!("{p:?} in {server:?} is not a port number"),
            })?,
        ),
        None => (s, default_port),
    };
    if host.is_empty() {
        return Err(LoadgenError::Args { flag: "server", problem: format!("{server:?} names no host") });
    }
    Ok((host.to_owned(), port))
}

/// A tag unique to this run (from the wall clock), so accounts and MQTT
/// sessions of earlier runs against the same server do not collide.
fn run_tag() -> String {
    use bluetick_net::clock::Clock;
    let mut n = bluetick_net::clock::SystemClock.now_ms() % 36u64.pow(7);
    let mut digits = Vec::new();
    for _ in 0..7 {
        let d = (n % 36) as u8;
        digits.push(if d < 10 { b'0' + d } else { b'a' + d - 10 });
        n /= 36;
    }
    digits.reverse();
    format!("lg{}", String::from_utf8_lossy(&digits))
}

/// Checks the arguments and turns them into a [`Plan`].
///
/// # Errors
/// [`LoadgenError::Args`] naming the flag and what would work.
pub fn plan(args: &LoadgenArgs) -> Result<Plan, LoadgenError> {
    let bad = |flag: &'static str, problem: String| Err(LoadgenError::Args { flag, problem });
    if args.clients == 0 || args.clients > CLIENTS_MAX {
        return bad("clients", format!("{} is outside 1..={CLIENTS_MAX}", args.clients));
    }
    if !args.rate.is_finite() || args.rate < 0.0 {
        return bad("rate", format!("{} is not a rate; use 0 for closed loop or messages per second", args.rate));
    }
    if args.rate == 0.0 && args.in_flight == 0 {
        return bad("in-flight", "closed loop needs at least 1 message in flight per pair".into());
    }
    if args.size < payload::HEADER_LEN {
        return bad("size", format!("{} bytes cannot hold the {}-byte header", args.size, payload::HEADER_LEN));
    }
    if args.target == Target::Bluetick && args.size > bluetick_core::client::BODY_LEN_MAX {
        return bad(
            "size",
            format!("{} bytes exceeds bluetick's {}-byte body limit", args.size, bluetick_core::client::BODY_LEN_MAX),
        );
    }
    if !(0.0..=1.0).contains(&args.offline_ratio) {
        return bad("offline-ratio", format!("{} is not a share between 0 and 1", args.offline_ratio));
    }
    if args.group_size == 0 {
        return bad("group-size", "0 members; use 1 for 1:1 messages".into());
    }
    if args.group_size > 1 {
        return bad(
            "group-size",
            match args.target {
                Target::Mqtt => "group sends are a bluetick feature; MQTT fans out by topic".into(),
                Target::Redis => "group sends are a bluetick feature; Redis fans out by consumer group".into(),
                Target::Nats => "group sends are a bluetick feature; NATS fans out by consumer".into(),
                Target::Bluetick => "group sends need group commands on bluetick_net's ClientHandle, which it \
                                     does not offer yet; use 1"
                    .into(),
            },
        );
    }
    if args.idle && args.offline_ratio > 0.0 {
        return bad("offline-ratio", "--idle connections send nothing, so none can be offline".into());
    }
    if args.duration.is_zero() {
        return bad("duration", "the send phase needs a positive length".into());
    }
    if let Some(pid) = args.server_pid {
        if rss_kib(pid).is_none() {
            return bad("server-pid", format!("no readable process {pid} (/proc/{pid}/status)"));
        }
    }
    let (server, addr) = match args.target {
        Target::Bluetick => {
            let server = args.server.clone().unwrap_or_else(|| "ws://127.0.0.1:7878/".into());
            let addr = ws_addr(&server)?;
            (server, addr)
        }
        Target::Mqtt => {
            let server = args.server.clone().unwrap_or_else(|| "127.0.0.1:1883".into());
            let (host, port) = host_port(&server, 1883)?;
            (server, format!("{host}:{port}"))
        }
        Target::Redis => {
            let server = args.server.clone().unwrap_or_else(|| "127.0.0.1:6379".into());
            let (host, port) = host_port(&server, 6379)?;
            (server, format!("{host}:{port}"))
        }
        Target::Nats => {
            let server = args.server.clone().unwrap_or_else(|| "127.0.0.1:4222".into());
            let (host, port) = host_port(&server, 4222)?;
            (server, format!("{host}:{port}"))
        }
    };
    let offline_pairs = ((args.offline_ratio * args.clients as f64).round() as usize).min(args.clients);
    let pacing =
        if args.rate == 0.0 { Loop::Closed { in_flight: args.in_flight } } else { Loop::Open { rate: args.rate } };
    Ok(Plan {
        target: args.target,
        server,
        addr,
        pairs: args.clients,
        offline_pairs,
        pacing,
        size: args.size,
        duration: args.duration,
        messages_max: (args.messages > 0).then_some(args.messages),
        seed: args.seed,
        server_pid: args.server_pid,
        drain_timeout: args.drain_timeout,
        idle: args.idle,
        run_tag: run_tag(),
        server_frames_per_second: args.server_frames_per_second,
    })
}

/// Fails fast, with the address, when nothing listens there.
async fn probe(plan: &Plan) -> Result<(), LoadgenError> {
    let (what, hint) = match plan.target {
        Target::Bluetick => ("bluetick server", "`bluetick serve`"),
        Target::Mqtt => ("MQTT broker", "mosquitto (or another MQTT broker)"),
        Target::Redis => ("Redis server", "redis-server"),
        Target::Nats => ("NATS server", "nats-server -js"),
    };
    let unreachable = |detail: String| LoadgenError::Unreachable { what, addr: plan.addr.clone(), detail, hint };
    match tokio::time::timeout(PROBE_TIMEOUT, tokio::net::TcpStream::connect(plan.addr.as_str())).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(unreachable(e.to_string())),
        Err(_) => Err(unreachable(format!("no answer within {} s", PROBE_TIMEOUT.as_secs()))),
    }
}

/// Server memory samples.
#[derive(Debug, Default)]
struct RssLog {
    peak_kib: u64,
    at_phase: BTreeMap<String, u64>,
    /// The server's [`cpu_ticks`] when each phase began.
    cpu_at_phase: BTreeMap<String, u64>,
}

/// Runs the load described by `args` on the current tokio runtime and
/// returns the report. `progress` receives phase names and a one-line
/// status a few times a second.
///
/// # Errors
/// Bad arguments, an unreachable server, or a setup failure.
pub async fn run(args: &LoadgenArgs, progress: &(dyn Fn(Progress) + Send + Sync)) -> Result<Report, LoadgenError> {
    let plan = plan(args)?;
    probe(&plan).await?;
    let shared = Arc::new(Shared::new(plan.clone()));
    let rss = Arc::new(Mutex::new(RssLog::default()));
    let pid = plan.server_pid;
    let sample = {
        let rss = Arc::clone(&rss);
        move |phase: Option<&str>| {
            let Some(kib) = pid.and_then(rss_kib) else { return };
            let mut log = rss.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            log.peak_kib = log.peak_kib.max(kib);
            if let Some(p) = phase {
                log.at_phase.insert(p.to_owned(), kib);
                if let Some(ticks) = pid.and_then(cpu_ticks) {
                    log.cpu_at_phase.insert(p.to_owned(), ticks);
                }
            }
        }
    };
    let on_phase = |phase: &str| {
        sample(Some(phase));
        progress(Progress::Phase(phase.to_owned()));
    };
    let ticker = {
        let shared = Arc::clone(&shared);
        let sample = sample.clone();
        async move {
            let mut tick = tokio::time::interval(TICK);
            loop {
                tick.tick().await;
                sample(None);
                progress(Progress::Status(status_line(&shared)));
            }
        }
    };
    let timeline = {
        let work = async {
            match plan.target {
                Target::Bluetick => {
                    let (dir, _guard) = state_dir(args)?;
                    let driver = Arc::new(bluetick::Bluetick::new(
                        Arc::clone(&shared),
                        dir,
                        args.inline_saves,
                        args.volatile_clients,
                    ));
                    engine::drive(driver, Arc::clone(&shared), on_phase).await.map_err(LoadgenError::Setup)
                }
                Target::Mqtt => {
                    let (host, port) = host_port(&plan.server, 1883)?;
                    let driver = Arc::new(mqtt::Mqtt::new(Arc::clone(&shared), host, port));
                    engine::drive(driver, Arc::clone(&shared), on_phase).await.map_err(LoadgenError::Setup)
                }
                Target::Redis => {
                    let (host, port) = host_port(&plan.server, 6379)?;
                    let driver = redis_streams::RedisStreams::new(Arc::clone(&shared), &host, port)
                        .map_err(LoadgenError::Setup)?;
                    engine::drive(Arc::new(driver), Arc::clone(&shared), on_phase).await.map_err(LoadgenError::Setup)
                }
                Target::Nats => {
                    let (host, port) = host_port(&plan.server, 4222)?;
                    let driver =
                        nats::Nats::connect(Arc::clone(&shared), &host, port).await.map_err(LoadgenError::Setup)?;
                    engine::drive(Arc::new(driver), Arc::clone(&shared), on_phase).await.map_err(LoadgenError::Setup)
                }
            }
        };
        tokio::select! {
            t = work => t?,
            _ = ticker => unreachable_tick(),
        }
    };
    let log = std::mem::take(&mut *rss.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
    Ok(report(&plan, &shared, &timeline, &log))
}

/// The ticker loops forever; `select!` needs a value of the work's type.
fn unreachable_tick() -> Timeline {
    Timeline::default()
}

/// The client state directory and, for a temporary one, the guard that
/// deletes it.
fn state_dir(args: &LoadgenArgs) -> Result<(PathBuf, Option<tempfile::TempDir>), LoadgenError> {
    let parent = args.state_dir.clone().unwrap_or_else(std::env::temp_dir);
    std::fs::create_dir_all(&parent).map_err(LoadgenError::StateDir)?;
    let dir =
        tempfile::Builder::new().prefix("bluetick-loadgen-").tempdir_in(&parent).map_err(LoadgenError::StateDir)?;
    Ok((dir.path().to_path_buf(), Some(dir)))
}

fn status_line(shared: &Shared) -> String {
    format!(
        "sent {}  delivered {}  offline drained {}  receipts {}",
        shared.sent.load(Ordering::Relaxed),
        shared.delivered_online.load(Ordering::Relaxed),
        shared.delivered_offline.load(Ordering::Relaxed),
        shared.receipts.load(Ordering::Relaxed)
    )
}

fn per_s(count: u64, us: u64) -> f64 {
    if us == 0 {
        0.0
    } else {
        count as f64 * 1e6 / us as f64
    }
}

fn report(plan: &Plan, shared: &Shared, t: &Timeline, rss: &RssLog) -> Report {
    let book = shared.book();
    let send_us = t.send_us.1.saturating_sub(t.send_us.0);
    let sent = shared.sent.load(Ordering::Relaxed);
    let delivered = book.delivered();
    let (errors, error_count) = shared.errors();
    let pacing = match plan.pacing {
        Loop::Closed { in_flight } => format!("closed loop, {in_flight} in flight per pair"),
        Loop::Open { rate } => format!("open loop at {rate:.0} msgs/s"),
    };
    let drain = t.drain.map(|(start, last, complete)| {
        let messages = shared.delivered_offline.load(Ordering::Relaxed);
        let us = last.saturating_sub(start);
        DrainReport { messages, seconds: us as f64 / 1e6, per_s: per_s(messages, us), complete }
    });
    let before = rss.at_phase.get("connecting receivers").copied();
    let loaded_phase = if plan.idle { "closing idle connections" } else { "waiting for the last deliveries" };
    let loaded = rss.at_phase.get(loaded_phase).copied();
    let server_rss = match (before, loaded) {
        (Some(before_kib), Some(loaded_kib)) => Some(RssReport { before_kib, peak_kib: rss.peak_kib, loaded_kib }),
        _ => None,
    };
    let cpu_us = match (rss.cpu_at_phase.get("sending"), rss.cpu_at_phase.get(loaded_phase)) {
        (Some(start), Some(end)) if !plan.idle => Some(end.saturating_sub(*start) * 1_000_000 / PROC_TICKS_PER_S),
        _ => None,
    };
    let server_cpu_us_per_msg =
        cpu_us.filter(|_| t.delivered_at_end > 0).map(|us| us as f64 / t.delivered_at_end as f64);
    let server_cpu_cores = cpu_us.filter(|_| send_us > 0).map(|us| us as f64 / send_us as f64);
    let idle_bytes_per_connection = match (plan.idle, &server_rss) {
        (true, Some(r)) => Some(r.loaded_kib.saturating_sub(r.before_kib) * 1024 / plan.pairs.max(1) as u64),
        _ => None,
    };
    Report {
        target: plan.target,
        server: plan.server.clone(),
        pairs: plan.pairs,
        idle: plan.idle,
        offline_pairs: plan.offline_pairs,
        pacing,
        size: plan.size,
        duration_s: send_us as f64 / 1e6,
        sent,
        sent_per_s: per_s(sent, send_us),
        delivered,
        delivered_per_s: per_s(t.delivered_at_end, send_us),
        latency: book.percentiles(),
        receipts_per_s: (plan.target == Target::Bluetick).then(|| per_s(t.receipts_at_end, send_us)),
        duplicates: book.duplicates(),
        reorders: book.reorders(),
        lost: sent.saturating_sub(delivered),
        foreign: book.foreign,
        reconnects: shared.reconnects.load(Ordering::Relaxed),
        drain,
        server_rss,
        server_cpu_us_per_msg,
        server_cpu_cores,
        idle_bytes_per_connection,
        errors,
        error_count,
    }
}

/// What [`run`] tells its caller while it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// A new phase began.
    Phase(String),
    /// Counters, a few times a second.
    Status(String),
}

/// `bluetick loadgen`: runs [`run`] with a progress spinner on stderr
/// (hidden when stderr is not a terminal), prints the report (text, or JSON
/// with `--json`) and returns 0 if every message arrived exactly once, 1 if
/// the run finished but some did not (or errors occurred), 2 if it could
/// not run; errors are sentences on stderr, never backtraces.
pub fn cli_loadgen(args: LoadgenArgs) -> ExitCode {
    let runtime = match bluetick_net::runtime_with_threads(args.threads) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: {}", LoadgenError::Runtime(e));
            return ExitCode::from(2);
        }
    };
    let bar = indicatif::ProgressBar::with_draw_target(None, indicatif::ProgressDrawTarget::stderr());
    if let Ok(style) = indicatif::ProgressStyle::with_template("{spinner} [{elapsed}] {prefix}: {msg}") {
        bar.set_style(style);
    }
    bar.enable_steady_tick(TICK);
    let show = |p: Progress| match p {
        Progress::Phase(phase) => bar.set_prefix(phase),
        Progress::Status(line) => bar.set_message(line),
    };
    let result = runtime.block_on(run(&args, &show));
    bar.finish_and_clear();
    // Client tasks still shutting down must not hold the process.
    runtime.shutdown_timeout(Duration::from_secs(2));
    match result {
        Ok(report) => {
            if args.json {
                match serde_json::to_string(&report) {
                    Ok(json) => println!("{json}"),
                    Err(e) => eprintln!("error: cannot encode the report as JSON: {e}"),
                }
            } else {
                print!("{report}");
            }
            let failures = report.failures();
            if failures.is_empty() {
                ExitCode::SUCCESS
            } else {
                eprintln!("loadgen: {}", failures.join("; "));
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ticks_are_read_after_the_command_name_whatever_it_holds() {
        // Fields from a real /proc/<pid>/stat, with a command name that has a
        // space and a parenthesis in it: utime 1234, stime 56.
        let stat = "4242 (bt (serve) x) S 1 4242 4242 0 -1 4194560 1000 0 0 0 1234 56 0 0 20 0 3 0 100 0 0";
        assert_eq!(parse_cpu_ticks(stat), Some(1290));
        assert_eq!(parse_cpu_ticks("4242 (short) S 1 2"), None, "a cut-off line is no reading");
        let own = cpu_ticks(std::process::id()).expect("this process has a stat file");
        assert!(cpu_ticks(std::process::id()).unwrap() >= own, "CPU time does not run backwards");
    }

    fn args(extra: &[&str]) -> LoadgenArgs {
        let mut all = vec!["loadgen"];
        all.extend_from_slice(extra);
        LoadgenArgs::try_parse_from(all).unwrap()
    }

    #[test]
    fn durations_parse_in_every_accepted_unit_and_refuse_others() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("10d").is_err());
        assert!(parse_duration("fast").is_err());
    }

    #[test]
    fn server_addresses_default_their_ports_and_refuse_other_schemes() {
        assert_eq!(ws_addr("ws://127.0.0.1:7878/").unwrap(), "127.0.0.1:7878");
        assert_eq!(ws_addr("ws://example.test").unwrap(), "example.test:80");
        assert!(matches!(ws_addr("wss://x:1/"), Err(LoadgenError::Args { flag: "server", .. })));
        assert_eq!(host_port("mqtt://10.0.0.1:1884", 1883).unwrap(), ("10.0.0.1".into(), 1884));
        assert_eq!(host_port("broker", 1883).unwrap(), ("broker".into(), 1883));
        assert_eq!(host_port("redis://cache", 6379).unwrap(), ("cache".into(), 6379));
        assert!(host_port("broker:http", 1883).is_err());
    }

    #[test]
    fn plans_refuse_values_that_cannot_work_and_name_the_flag() {
        let flag_of = |a: &[&str]| match plan(&args(a)) {
            Err(LoadgenError::Args { flag, .. }) => flag,
            other => panic!("expected an argument error, got {other:?}"),
        };
        assert_eq!(flag_of(&["--clients", "0"]), "clients");
        assert_eq!(flag_of(&["--size", "27"]), "size");
        assert_eq!(flag_of(&["--offline-ratio", "1.5"]), "offline-ratio");
        assert_eq!(flag_of(&["--in-flight", "0"]), "in-flight");
        assert_eq!(flag_of(&["--group-size", "4", "--target", "mqtt"]), "group-size");
        assert_eq!(flag_of(&["--server", "http://x/"]), "server");
    }

    #[test]
    fn offline_pairs_are_the_rounded_share_of_the_pairs() {
        let p = plan(&args(&["--clients", "10", "--offline-ratio", "0.25"])).unwrap();
        assert_eq!(p.offline_pairs, 3);
        assert!(p.is_offline(2) && !p.is_offline(3));
        assert_eq!(plan(&args(&["--clients", "10", "--offline-ratio", "1"])).unwrap().offline_pairs, 10);
    }

    #[test]
    fn client_seeds_differ_per_stream_and_repeat_per_seed() {
        assert_eq!(mix(1, 2), mix(1, 2));
        assert_ne!(mix(1, 2), mix(1, 3));
        assert_ne!(mix(1, 2), mix(2, 2));
    }

    /// A receiver app that sees a message twice, one that sees them out of
    /// order and one that never sees one: each must show in the report and
    /// fail the run (the broken variants of the exactly-once check).
    #[test]
    fn duplicates_reorders_and_losses_are_reported_and_fail_the_run() {
        let plan = plan(&args(&["--clients", "1"])).unwrap();
        let shared = Shared::new(plan.clone());
        let body = |seq| payload::Stamp { kind: payload::Kind::Measured, pair: 0, seq, sent_us: 0 }.encode(64);
        shared.sent.store(4, Ordering::Relaxed);
        shared.pairs[0].sent.store(4, Ordering::Relaxed);
        for seq in [0, 2, 1, 2] {
            shared.on_message(&body(seq));
        }
        shared.on_message(b"not a load message");
        let r = report(&plan, &shared, &Timeline::default(), &RssLog::default());
        assert_eq!((r.sent, r.delivered, r.duplicates, r.reorders, r.lost, r.foreign), (4, 3, 1, 1, 1, 1));
        let failures = r.failures();
        assert!(failures.iter().any(|f| f.contains("never arrived")), "{failures:?}");
        assert!(failures.iter().any(|f| f.contains("twice")), "{failures:?}");
        // MQTT promises at least once: its duplicates are counted, not failed.
        let mqtt = Report { target: Target::Mqtt, lost: 0, ..r };
        assert!(mqtt.failures().is_empty(), "{:?}", mqtt.failures());
    }

    #[test]
    fn run_tags_are_valid_user_name_prefixes() {
        let tag = run_tag();
        assert_eq!(tag.len(), 9);
        assert!(bluetick_core::ids::UserId::new(&format!("{tag}r99999")).is_ok());
    }
}
