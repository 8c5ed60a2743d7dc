//! Criterion benchmarks of the sans-IO server, driven by hand with real
//! XEdDSA authentication and a [`MemoryStore`], no network:
//!
//! 1. `server_sends_online`: one 1 KiB `Send` to an online recipient plus the
//!    recipient's `DeliveryAck` (send → server-ack → deliver → ack), so the
//!    mailbox stays empty and the store small. Frames are encoded before the
//!    timed loop; the loop is `handle_bytes` (decode included) and draining
//!    `poll_output`. One element is one send (two frames handled).
//! 2. `group_send_1024`: one 1 KiB `GroupSend` to a 1,024-member group whose
//!    members are registered and offline, so every send queues 1,023 entries.
//! 3. `recover_10k`: `Server::recover` from a store holding 10,000 queued
//!    1 KiB messages.
//!
//! After criterion, `main` re-times each case with a short loop (median of 11
//! batches), measures the bytes one group send adds to the store, and prints a
//! table against the goals. The table is only printed when run by `cargo bench`
//! (with `--bench`), not by `cargo test --benches`.
//!
//! The server limits every connection to `FRAMES_PER_SECOND_MAX` frames per
//! second, so the benchmarks advance the injected clock by
//! [`FRAME_SPACING_MS`] per frame: simulated time, not wall time, is what the
//! token bucket sees.

// Benches are test code: a failed setup step should abort loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::hint::black_box;
use std::time::Duration;

use bluetick_core::ids::{DeviceAddress, DeviceId, GroupId, MessageId, UserId};
use bluetick_core::server::machine::{FRAMES_PER_SECOND_MAX, GROUP_MEMBERS_MAX};
use bluetick_core::server::{ConnId, Server, ServerConfig, ServerOutput};
use bluetick_core::store::{MemoryStore, Store, Table, TableStats};
use bluetick_core::wire::{self, ClientFrame, EnvelopeKind, ServerFrame, SignedGroupChange, BATCH_LEN_MAX};
use bluetick_crypto::xeddsa::Signature;
use bluetick_crypto::IdentityKeyPair;
use criterion::{Criterion, SamplingMode, Throughput};
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;

/// Ciphertext size of every message benchmark.
const MESSAGE_LEN: usize = 1024;

/// Members of the group benchmark, the admin (the sender) included.
const GROUP_MEMBERS: usize = GROUP_MEMBERS_MAX;

/// Group sends between two resets of the group world: every send queues one
/// entry per member, so this bounds mailbox depth (far below
/// `MAILBOX_DEPTH_MAX`) and memory whatever iteration count criterion asks for.
const GROUP_SENDS_PER_RESET: u64 = 500;

/// Messages queued in the store that `recover_10k` rebuilds from.
const RECOVER_MESSAGES: usize = 10_000;

/// Offline devices those messages are spread over (1,000 each).
const RECOVER_RECIPIENTS: usize = 10;

/// Simulated time between two frames of one connection: exactly the token
/// bucket's refill interval, so the rate limit never refuses a frame.
const FRAME_SPACING_MS: u64 = 1000 / FRAMES_PER_SECOND_MAX as u64;

/// User ids look like phone numbers (12 digits), as WhatsApp's do; their
/// length shows up in every stored key and entry.
const PHONE_BASE: u64 = 491_510_000_000;

/// Start of the simulated clock (any date well after the epoch).
const START_MS: u64 = 1_700_000_000_000;

/// Batches per case in the summary table; the median is reported.
const SUMMARY_BATCHES: usize = 11;

/// Sends per summary batch of the 1:1 case (a few tens of milliseconds).
const SUMMARY_SENDS: u64 = 20_000;

/// Sends per summary batch of the group case.
const SUMMARY_GROUP_SENDS: u64 = 50;

/// The performance goals from the issue.
const GOAL_SENDS_PER_SECOND: f64 = 500_000.0;
const GOAL_GROUP_OVERHEAD_BYTES: f64 = 100.0;

// Benches must read the clock; the clippy.toml ban is for the sans-IO crates.
#[allow(clippy::disallowed_methods)]
fn now() -> std::time::Instant {
    std::time::Instant::now()
}

fn user(i: usize) -> UserId {
    UserId::new(&(PHONE_BASE + i as u64).to_string()).unwrap()
}

fn message() -> Vec<u8> {
    (0..MESSAGE_LEN).map(|i| (i % 251) as u8).collect()
}

fn config() -> ServerConfig {
    ServerConfig::default()
}

// ---------------------------------------------------------------------------
// Driving the server by hand
// ---------------------------------------------------------------------------

/// A server, its store, the simulated clock and the devices' RNG.
struct Rig {
    server: Server,
    store: MemoryStore,
    now: u64,
    rng: ChaCha20Rng,
    next_conn: u64,
}

impl Rig {
    fn new(seed: u64) -> Self {
        Rig {
            server: Server::new(config(), seed),
            store: MemoryStore::new(),
            now: START_MS,
            rng: ChaCha20Rng::seed_from_u64(seed + 1000),
            next_conn: 1,
        }
    }

    /// A server rebuilt from `store` (a copy of a prepared world).
    fn recovered(store: MemoryStore, now: u64, seed: u64) -> Self {
        let mut store = store;
        let server = Server::recover(config(), seed, &mut store).unwrap();
        Rig { server, store, now, rng: ChaCha20Rng::seed_from_u64(seed + 1000), next_conn: 1 }
    }

    /// Frames queued for `conn`; everything else queued is dropped.
    fn frames_for(&mut self, conn: ConnId) -> Vec<ServerFrame> {
        let mut got = Vec::new();
        while let Some(o) = self.server.poll_output() {
            if let ServerOutput::Frame { conn: c, frame } = o {
                if c == conn {
                    got.push(frame);
                }
            }
        }
        got
    }

    /// Feeds one frame and returns what `conn` was sent back.
    fn feed(&mut self, conn: ConnId, frame: &ClientFrame) -> Vec<ServerFrame> {
        self.now += FRAME_SPACING_MS;
        self.server.handle_bytes(conn, &wire::encode(frame), self.now, &mut self.store);
        self.frames_for(conn)
    }

    /// Opens a connection and registers (or logs in) device 1 of `user`.
    fn login(&mut self, user: &UserId, id: &IdentityKeyPair, register: bool) -> ConnId {
        let conn = ConnId(self.next_conn);
        self.next_conn += 1;
        self.server.handle_connect(conn, self.now);
        let nonce = match self.frames_for(conn).as_slice() {
            [ServerFrame::Challenge { nonce }] => *nonce,
            other => panic!("expected a challenge, got {other:?}"),
        };
        let device = DeviceId(1);
        let proof = id.sign(&wire::auth_message(&nonce, user, device), &mut self.rng);
        let version = wire::PROTOCOL_VERSION;
        let frame = if register {
            ClientFrame::Register { version, user: user.clone(), device, identity_key: id.public(), proof }
        } else {
            ClientFrame::Authenticate { version, user: user.clone(), device, proof }
        };
        let got = self.feed(conn, &frame);
        assert!(matches!(got.first(), Some(ServerFrame::Welcome { .. })), "{got:?}");
        conn
    }

    /// Registers a new device with a fresh identity; it stays connected.
    fn register(&mut self, user: &UserId) -> (DeviceAddress, IdentityKeyPair, ConnId) {
        let id = IdentityKeyPair::generate(&mut self.rng);
        let conn = self.login(user, &id, true);
        (DeviceAddress::new(user.clone(), DeviceId(1)), id, conn)
    }

    /// Registers a device and disconnects it, so what is sent to it is queued.
    fn register_offline(&mut self, user: &UserId) -> DeviceAddress {
        let (addr, _, conn) = self.register(user);
        self.server.handle_disconnect(conn, self.now, &mut self.store);
        addr
    }
}

// ---------------------------------------------------------------------------
// 1. 1:1 sends to an online recipient
// ---------------------------------------------------------------------------

/// Alice and Bob online, `n` encoded sends from Alice to Bob and the `n` acks
/// Bob will answer with (his mailbox is new, so the k-th delivery has seq k).
struct OnlineSends {
    rig: Rig,
    alice: ConnId,
    bob: ConnId,
    bob_addr: DeviceAddress,
    frames: Vec<(Vec<u8>, Vec<u8>)>,
}

fn online_sends(n: u64) -> OnlineSends {
    let mut rig = Rig::new(1);
    let (_, _, alice) = rig.register(&user(0));
    let (bob_addr, _, bob) = rig.register(&user(1));
    let body = message();
    let frames = (0..n)
        .map(|i| {
            let send = ClientFrame::Send {
                message_id: MessageId::random(&mut rig.rng),
                to: bob_addr.clone(),
                kind: EnvelopeKind::Message,
                ciphertext: body.clone(),
            };
            let ack = ClientFrame::DeliveryAck { seqs: vec![i + 1] };
            (wire::encode(&send), wire::encode(&ack))
        })
        .collect();
    OnlineSends { rig, alice, bob, bob_addr, frames }
}

/// Time of `n` send + ack cycles, excluding setup and frame encoding.
fn time_online_sends(n: u64) -> Duration {
    let OnlineSends { mut rig, alice, bob, bob_addr, frames } = online_sends(n);
    let Rig { server, store, now: clock, .. } = &mut rig;
    let mut delivered_as_predicted = 0u64;
    let start = now();
    for (expected_seq, (send, ack)) in (1u64..).zip(&frames) {
        *clock += FRAME_SPACING_MS;
        server.handle_bytes(alice, send, *clock, store);
        while let Some(o) = server.poll_output() {
            if let ServerOutput::Frame { frame: ServerFrame::Deliver { seq, .. }, .. } = &o {
                delivered_as_predicted += u64::from(*seq == expected_seq);
            }
            black_box(o);
        }
        server.handle_bytes(bob, ack, *clock, store);
        while let Some(o) = server.poll_output() {
            black_box(o);
        }
    }
    let elapsed = start.elapsed();
    // The loop measured what it claims: every send delivered with the
    // predicted seq, acked, and deleted.
    assert_eq!(delivered_as_predicted, n, "deliveries did not carry the predicted seqs");
    assert_eq!(server.stats().accepted, n);
    assert_eq!(server.stats().acked, n);
    assert_eq!(server.mailbox_len(&bob_addr), 0);
    elapsed
}

// ---------------------------------------------------------------------------
// 2. Group send to 1,024 members
// ---------------------------------------------------------------------------

/// A store holding 1,024 registered devices (all offline) and one group of all
/// of them, created by its admin with properly signed changes.
struct GroupWorld {
    store: MemoryStore,
    now: u64,
    admin: UserId,
    admin_id: IdentityKeyPair,
    group: GroupId,
    recipients: usize,
}

fn group_world() -> GroupWorld {
    let mut rig = Rig::new(2);
    let admin = user(0);
    let (_, admin_id, admin_conn) = rig.register(&admin);
    let members: Vec<UserId> = (1..GROUP_MEMBERS).map(|i| rig.register_offline(&user(i)).user).collect();
    let group = GroupId::random(&mut rig.rng);
    // A change lists at most BATCH_LEN_MAX users, so the group grows in steps.
    for (version, add) in (1u64..).zip(members.chunks(BATCH_LEN_MAX)) {
        let mut change = SignedGroupChange {
            group,
            version,
            admin: admin.clone(),
            add: add.to_vec(),
            remove: vec![],
            signature: Signature([0; 64]),
        };
        change.signature = admin_id.sign(&change.signed_bytes(), &mut rig.rng);
        let got = rig.feed(admin_conn, &ClientFrame::GroupChange { change });
        assert!(matches!(got.as_slice(), [ServerFrame::GroupChangeAccepted { .. }]), "{got:?}");
    }
    assert_eq!(rig.server.group(&group).unwrap().members.len(), GROUP_MEMBERS);
    rig.server.handle_disconnect(admin_conn, rig.now, &mut rig.store);
    GroupWorld { store: rig.store, now: rig.now, admin, admin_id, group, recipients: GROUP_MEMBERS - 1 }
}

/// The group world recovered into a fresh server, the admin logged in, and
/// `n` encoded group sends of 1 KiB.
fn group_sends(world: &GroupWorld, n: u64) -> (Rig, ConnId, Vec<Vec<u8>>) {
    let mut rig = Rig::recovered(world.store.clone(), world.now, 3);
    let conn = rig.login(&world.admin, &world.admin_id, false);
    let body = message();
    let frames = (0..n)
        .map(|_| {
            wire::encode(&ClientFrame::GroupSend {
                message_id: MessageId::random(&mut rig.rng),
                group: world.group,
                ciphertext: body.clone(),
            })
        })
        .collect();
    (rig, conn, frames)
}

/// Time of `n` group sends, excluding setup, resets and encoding.
fn time_group_sends(world: &GroupWorld, n: u64) -> Duration {
    let mut total = Duration::ZERO;
    let mut left = n;
    while left > 0 {
        let batch = left.min(GROUP_SENDS_PER_RESET);
        left -= batch;
        let (mut rig, conn, frames) = group_sends(world, batch);
        let Rig { server, store, now: clock, .. } = &mut rig;
        let mut acks = 0u64;
        let start = now();
        for frame in &frames {
            *clock += FRAME_SPACING_MS;
            server.handle_bytes(conn, frame, *clock, store);
            while let Some(o) = server.poll_output() {
                acks += u64::from(matches!(&o, ServerOutput::Frame { frame: ServerFrame::ServerAck { .. }, .. }));
                black_box(o);
            }
        }
        total += start.elapsed();
        assert_eq!(acks, batch, "a group send was refused");
        // Dropping a world with ~0.5 M queued entries takes a while; outside the timing.
        drop(rig);
    }
    total
}

/// Store growth caused by one group send, per table.
struct GroupBytes {
    per_table: Vec<(Table, TableStats)>,
    recipients: usize,
}

impl GroupBytes {
    fn total(&self) -> u64 {
        self.per_table.iter().map(|(_, s)| s.key_bytes + s.value_bytes).sum()
    }

    fn table(&self, table: Table) -> TableStats {
        self.per_table.iter().find(|(t, _)| *t == table).map(|(_, s)| *s).unwrap_or_default()
    }

    /// Everything but the ciphertext itself, per recipient.
    fn overhead_per_member(&self) -> f64 {
        (self.total() - MESSAGE_LEN as u64) as f64 / self.recipients as f64
    }
}

fn group_send_bytes(world: &GroupWorld) -> GroupBytes {
    let (mut rig, conn, frames) = group_sends(world, 1);
    let before = rig.store.stats().unwrap();
    rig.now += FRAME_SPACING_MS;
    rig.server.handle_bytes(conn, &frames[0], rig.now, &mut rig.store);
    let got = rig.frames_for(conn);
    assert!(matches!(got.as_slice(), [ServerFrame::ServerAck { .. }]), "{got:?}");
    let after = rig.store.stats().unwrap();
    let per_table = Table::ALL
        .iter()
        .map(|t| {
            let (b, a) = (before.get(t).copied().unwrap_or_default(), after.get(t).copied().unwrap_or_default());
            // Puts may replace (the body counter in Meta), so a table can grow
            // by bytes without gaining entries; none shrinks on a send.
            let diff = TableStats {
                entries: a.entries - b.entries,
                key_bytes: a.key_bytes - b.key_bytes,
                value_bytes: a.value_bytes - b.value_bytes,
            };
            (*t, diff)
        })
        .filter(|(_, d)| d.entries + d.key_bytes + d.value_bytes > 0)
        .collect();
    GroupBytes { per_table, recipients: world.recipients }
}

// ---------------------------------------------------------------------------
// 3. Recovery with 10,000 queued messages
// ---------------------------------------------------------------------------

/// A store with [`RECOVER_MESSAGES`] 1 KiB messages queued for offline devices.
fn recover_world() -> MemoryStore {
    let mut rig = Rig::new(4);
    let (_, _, sender) = rig.register(&user(0));
    let recipients: Vec<DeviceAddress> = (1..=RECOVER_RECIPIENTS).map(|i| rig.register_offline(&user(i))).collect();
    let body = message();
    for i in 0..RECOVER_MESSAGES {
        let send = ClientFrame::Send {
            message_id: MessageId::random(&mut rig.rng),
            to: recipients[i % RECOVER_RECIPIENTS].clone(),
            kind: EnvelopeKind::Message,
            ciphertext: body.clone(),
        };
        let got = rig.feed(sender, &send);
        assert!(matches!(got.as_slice(), [ServerFrame::ServerAck { .. }]), "{got:?}");
    }
    assert_eq!(rig.server.mailbox_total(), RECOVER_MESSAGES);
    rig.store
}

/// Time of `n` recoveries from `store`, excluding dropping the servers.
fn time_recover(store: &mut MemoryStore, n: u64) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..n {
        let start = now();
        let server = Server::recover(config(), 5, store).unwrap();
        total += start.elapsed();
        assert_eq!(server.mailbox_total(), RECOVER_MESSAGES);
        drop(black_box(server));
    }
    total
}

// ---------------------------------------------------------------------------
// Criterion groups
// ---------------------------------------------------------------------------

fn bench_sends_online(c: &mut Criterion) {
    let mut group = c.benchmark_group("server_sends_online");
    group
        .sample_size(30)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .throughput(Throughput::Elements(1));
    group.bench_function("send_1kib+delivery_ack", |b| b.iter_custom(time_online_sends));
    group.finish();
}

fn bench_group_send(c: &mut Criterion) {
    let mut group = c.benchmark_group("group_send_1024");
    // Hundreds of microseconds per send plus an untimed reset every
    // GROUP_SENDS_PER_RESET sends: flat sampling keeps iteration counts even.
    group
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    let mut world = None;
    group.bench_function("1kib_to_1023_offline_members", |b| {
        let world = world.get_or_insert_with(group_world);
        b.iter_custom(|n| time_group_sends(world, n));
    });
    group.finish();
}

fn bench_recover(c: &mut Criterion) {
    let mut group = c.benchmark_group("recover_10k");
    group
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));
    let mut store = None;
    group.bench_function("10000_queued_1kib", |b| {
        let store = store.get_or_insert_with(recover_world);
        b.iter_custom(|n| time_recover(store, n));
    });
    group.finish();
}

// ---------------------------------------------------------------------------
// Summary table
// ---------------------------------------------------------------------------

/// Median time per operation over [`SUMMARY_BATCHES`] batches of `per_batch`.
fn median_per_op(per_batch: u64, mut batch: impl FnMut(u64) -> Duration) -> Duration {
    batch(per_batch); // warm-up
    let mut per_op: Vec<Duration> =
        (0..SUMMARY_BATCHES).map(|_| batch(per_batch) / u32::try_from(per_batch).unwrap()).collect();
    per_op.sort();
    per_op[SUMMARY_BATCHES / 2]
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn verdict(pass: bool) -> &'static str {
    if pass {
        "PASS"
    } else {
        "MISS"
    }
}

fn print_row(metric: &str, measured: &str, goal: &str, verdict: &str) {
    println!("{metric:<46} {measured:>16}  {goal:<16} {verdict}");
}

fn print_summary() {
    println!();
    println!("Quick re-timing for the summary (median of {SUMMARY_BATCHES} batches, one thread).");
    println!("The machine is shared with other builds: treat the numbers as noisy.");

    let send = median_per_op(SUMMARY_SENDS, time_online_sends);
    let sends_per_second = 1.0 / send.as_secs_f64();
    let world = group_world();
    let group_send = median_per_op(SUMMARY_GROUP_SENDS, |n| time_group_sends(&world, n));
    let bytes = group_send_bytes(&world);
    let mut store = recover_world();
    let recover = median_per_op(1, |n| time_recover(&mut store, n));

    let body = bytes.table(Table::Bodies);
    let mailbox = bytes.table(Table::Mailbox);
    let overhead = bytes.overhead_per_member();
    let members = bytes.recipients;

    println!();
    print_row("metric", "measured", "goal", "verdict");
    print_row(
        "1:1 send 1 KiB + ack, sends/s per core",
        &format!("{sends_per_second:.0}/s"),
        &format!(">= {GOAL_SENDS_PER_SECOND:.0}/s"),
        verdict(sends_per_second >= GOAL_SENDS_PER_SECOND),
    );
    print_row("  server frames/s per core (send + ack)", &format!("{:.0}/s", 2.0 * sends_per_second), "-", "");
    print_row("  time per send + ack", &format!("{:.2} us", micros(send)), "-", "");
    print_row(&format!("group send 1 KiB, {GROUP_MEMBERS} members"), &format!("{:.1} us", micros(group_send)), "-", "");
    print_row(
        &format!("  per recipient ({members})"),
        &format!("{:.3} us", micros(group_send) / members as f64),
        "-",
        "",
    );
    print_row("bytes stored per group send (keys + values)", &format!("{} B", bytes.total()), "-", "");
    print_row(
        "  body bytes (Bodies table)",
        &format!("{} B in {}", body.key_bytes + body.value_bytes, body.entries),
        "stored once",
        verdict(body.entries == 1 && body.value_bytes == MESSAGE_LEN as u64),
    );
    print_row(
        "  mailbox entry per member (key + value)",
        &format!("{:.1} B", (mailbox.key_bytes + mailbox.value_bytes) as f64 / members as f64),
        "-",
        "",
    );
    print_row(
        &format!("  overhead per member (all but the {MESSAGE_LEN} B body)"),
        &format!("{overhead:.1} B"),
        &format!("< {GOAL_GROUP_OVERHEAD_BYTES:.0} B"),
        verdict(overhead < GOAL_GROUP_OVERHEAD_BYTES),
    );
    print_row(
        &format!("recover, {RECOVER_MESSAGES} queued 1 KiB messages"),
        &format!("{:.2} ms", recover.as_secs_f64() * 1e3),
        "-",
        "",
    );

    // For scale: what creating the group left queued (each member's mailbox
    // holds the signed change with its whole member list).
    let created: u64 = world.store.stats().unwrap().values().map(|s| s.key_bytes + s.value_bytes).sum();
    println!("(store after registering {GROUP_MEMBERS} devices and creating the group: {created} B)");

    println!();
    println!("store growth of one group send, by table:");
    println!("{:<10} {:>8} {:>10} {:>12} {:>14}", "table", "entries", "key B", "value B", "per member B");
    for (table, s) in &bytes.per_table {
        println!(
            "{:<10} {:>8} {:>10} {:>12} {:>14.1}",
            table.name(),
            s.entries,
            s.key_bytes,
            s.value_bytes,
            (s.key_bytes + s.value_bytes) as f64 / members as f64
        );
    }
}

fn main() {
    let mut criterion = Criterion::default().without_plots().configure_from_args();
    bench_sends_online(&mut criterion);
    bench_group_send(&mut criterion);
    bench_recover(&mut criterion);
    criterion.final_summary();
    // `cargo test --benches` runs this binary without `--bench` to smoke-test
    // each benchmark once; the extra timing pass is only for real runs.
    if std::env::args().any(|arg| arg == "--bench") {
        print_summary();
    }
}
