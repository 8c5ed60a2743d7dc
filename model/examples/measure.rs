//! Runs a named configuration and prints its report:
//! `cargo run --release -p bluetick-model --example measure -- NAME [timeout-secs] [threads] [depth] [bug]`
//! where `bug` switches a deliberate bug on and stops at the first
//! counterexample of the property it breaks.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use bluetick_core::client::ClientBug;
use bluetick_core::server::keys::KeyBug;
use bluetick_core::server::mailbox::MailboxBug;
use bluetick_model::properties::Check;
use bluetick_model::run::{format_report, run, RunOptions, Search};
use bluetick_model::suite;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let name = args.first().cloned().unwrap_or_else(|| "delivery-2".into());
    let timeout = args.get(1).and_then(|s| s.parse().ok()).filter(|t| *t > 0).map(Duration::from_secs);
    let threads = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(1);
    let depth: Option<usize> = args.get(3).and_then(|s| s.parse().ok()).filter(|d| *d > 0);
    let bug = args.get(4).cloned();
    let mut all = suite::ci();
    all.extend(suite::deep());
    all.extend(suite::weaknesses().into_iter().map(|(c, _)| c));
    let mut config = all.into_iter().find(|c| c.name == name).expect("unknown configuration");
    if depth.is_some() {
        config.max_depth = depth;
    }
    // VARIANT=messages,drops,dups,client_crashes,server_crashes overrides the script and budget.
    if let Ok(v) = std::env::var("VARIANT") {
        let n: Vec<u8> = v.split(',').map(|x| x.parse().unwrap()).collect();
        let msgs = usize::from(n[0]);
        let alice = (0..msgs.div_ceil(2)).map(|_| bluetick_model::config::AppStep::Send { to: 1 }).collect();
        let bob = (0..msgs / 2).map(|_| bluetick_model::config::AppStep::Send { to: 0 }).collect();
        config.scripts = vec![alice, bob];
        config.faults.drops = n[1];
        config.faults.duplicates = n[2];
        config.faults.client_crashes = n[3];
        config.faults.server_crashes = n[4];
        if let Some(r) = n.get(5) {
            config.reads = *r != 0;
        }
    }
    // QUIET=1: apps move (send, read) only when no frame is in flight.
    if std::env::var("QUIET").is_ok_and(|v| v == "1") {
        config.moves_on_quiet_network = true;
    }
    // SUITE=symbolic-insecure (or another suite name) picks the cipher suite.
    if let Ok(name) = std::env::var("SUITE") {
        config.suite = bluetick_crypto::CipherSuite::from_name(&name).expect("unknown suite");
    }
    let mut stop = Vec::new();
    if let Some(bug) = bug.as_deref() {
        let (c, check) = match bug {
            "delete-on-send" => (config.with_mailbox_bug(MailboxBug::DeleteOnSend), Check::AtLeastOnce),
            "dedup-off" => (config.with_client_bug(ClientBug::DedupOff), Check::ExactlyOnce),
            "hand-out-twice" => (config.with_key_bug(KeyBug::HandOutTwice), Check::PrekeyOnce),
            "read-on-delivery" => (config.with_client_bug(ClientBug::ReadOnDelivery), Check::StatusTruthful),
            "no-rotation" => (config.with_client_bug(ClientBug::NoRotationOnRemove), Check::RemovedMemberCannotRead),
            "leak" => (config.with_client_bug(ClientBug::LeakPlaintext), Check::NoPlaintext),
            "latest-wins" => (config.with_client_bug(ClientBug::LatestReceiptWins), Check::StatusMonotone),
            "unsigned" => (config.with_unsigned_group_changes(), Check::GroupChangesSigned),
            "weakness-healing" => (config, Check::Healing),
            "weakness-key-reuse" => (config, Check::NoKeyReuse),
            other => panic!("unknown bug {other}"),
        };
        config = c;
        stop.push(check);
    }
    let search = if std::env::var("SEARCH").is_ok_and(|v| v == "dfs") { Search::Dfs } else { Search::Bfs };
    let report = run(config, &RunOptions { search, threads, timeout, stop_when_found: stop }).unwrap();
    print!("{}", format_report(&report, true));
}
