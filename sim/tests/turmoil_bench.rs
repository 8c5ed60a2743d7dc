#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Throughput of the turmoil driver (ignored: run in release with
//! `cargo test --release -p bluetick-sim --test turmoil_bench -- --ignored --nocapture`).
//! The wall clock is read here only to measure; it drives nothing.

use std::time::Instant;

use bluetick_core::ids::UserId;
use bluetick_core::world::{plaintext, WorldConfig, EPOCH_MS};
use bluetick_sim::driver::Driver;
use bluetick_sim::turmoil::{TurmoilConfig, TurmoilDriver};

fn users(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("u{i:03}")).collect()
}

fn driver(n: usize, farms: usize, seed: u64) -> (TurmoilDriver, Vec<UserId>) {
    let names = users(n);
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let world = WorldConfig::new(seed, &refs).unwrap();
    let config = TurmoilConfig { farms, check_plaintext: false, ..TurmoilConfig::new(world) };
    let ids = names.iter().map(|n| UserId::new(n).unwrap()).collect();
    (TurmoilDriver::new(config).unwrap(), ids)
}

#[allow(clippy::disallowed_methods)]
fn wall() -> Instant {
    Instant::now()
}

#[test]
#[ignore = "benchmark; run in release"]
fn deliveries_per_wall_second_100_users_10_messages_4_farms() {
    // Each user writes to one peer (one session, nine ratchet steps after the
    // first contact), then to ten different peers (ten first contacts).
    deliveries(1);
    deliveries(10);
}

fn deliveries(peers: usize) {
    let (n, per_user, farms) = (100, 10, 4);
    let (mut d, ids) = driver(n, farms, 1);
    let started = wall();
    d.run_until(EPOCH_MS + 1_000);
    let setup = started.elapsed();
    let sends_started = wall();
    let ticks_before = d.ticks();
    for round in 0..per_user {
        for (i, from) in ids.iter().enumerate() {
            let to = &ids[(i + 1 + (round % peers) * 7) % n];
            assert!(d.send_text(from, to, &plaintext(1, (round * n + i) as u64)).is_some());
        }
        let t = d.now_ms() + 100;
        d.run_until(t);
    }
    d.quiesce(120_000);
    let run = sends_started.elapsed();
    let v = d.finish();
    assert!(v.is_empty(), "{:#?}", &v[..v.len().min(5)]);
    let delivered = d.history().counts.app_deliveries;
    assert_eq!(delivered, (n * per_user) as u64);
    let ticks = d.ticks() - ticks_before;
    println!(
        "{n} users x {per_user} msgs to {peers} peer(s) each on {farms} farms: {delivered} deliveries in {:.2} s wall \
         ({:.0} deliveries/wall s), {:.1} s simulated, {ticks} ticks, {:.1} us/tick; setup (registration) {:.2} s",
        run.as_secs_f64(),
        delivered as f64 / run.as_secs_f64(),
        (d.now_ms() - EPOCH_MS) as f64 / 1_000.0,
        run.as_secs_f64() * 1e6 / ticks as f64,
        setup.as_secs_f64(),
    );
}

#[test]
#[ignore = "benchmark; run in release"]
fn idle_tick_cost_per_host() {
    for farms in [1, 4, 8, 16, 28] {
        let (mut d, _) = driver(28, farms, 2);
        d.run_until(EPOCH_MS + 2_000);
        let ticks = 20_000;
        let started = wall();
        let until = d.now_ms() + ticks;
        d.run_until(until);
        let per_tick = started.elapsed().as_secs_f64() * 1e6 / ticks as f64;
        println!(
            "{} hosts (28 idle devices): {per_tick:.1} us/tick, {:.1} us per host per tick",
            d.hosts(),
            per_tick / d.hosts() as f64
        );
    }
}
