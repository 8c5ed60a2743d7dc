//! Diagnostic: explores a configuration breadth-first up to a state budget
//! and prints how states spread over time and over the action that made them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::disallowed_types)]

use std::collections::{BTreeMap, HashSet};
use std::hash::{DefaultHasher, Hash, Hasher};

use bluetick_model::model::MessagingModel;
use bluetick_model::suite;
use stateright::Model;

fn main() {
    let mut config = suite::delivery(2);
    config.scripts = vec![vec![bluetick_model::config::AppStep::Send { to: 1 }], vec![]];
    config.faults.drops = 1;
    config.faults.duplicates = 1;
    config.faults.client_crashes = 1;
    config.faults.server_crashes = 0;
    let budget: usize = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(20000);
    let m = MessagingModel::new(config).unwrap();
    let mut seen = HashSet::new();
    let mut frontier = vec![m.initial_state().clone()];
    let mut by_time: BTreeMap<u64, usize> = BTreeMap::new();
    let mut by_action: BTreeMap<String, usize> = BTreeMap::new();
    let mut by_frames: BTreeMap<usize, usize> = BTreeMap::new();
    let mut by_server_mail: BTreeMap<usize, usize> = BTreeMap::new();
    while let Some(s) = frontier.pop() {
        if seen.len() > budget {
            break;
        }
        let mut h = DefaultHasher::new();
        s.hash(&mut h);
        if !seen.insert(h.finish()) {
            continue;
        }
        *by_time.entry(s.now - bluetick_model::system::EPOCH_MS).or_default() += 1;
        *by_frames.entry(s.frames_in_flight()).or_default() += 1;
        *by_server_mail.entry(s.server.server().mailbox_total()).or_default() += 1;
        if seen.len() == budget / 2 {
            for (c, q) in &s.net {
                for f in q {
                    match c.dir {
                        bluetick_model::system::Dir::Up => {
                            println!("{c:?}: {}", bluetick_model::system::client_frame_phrase(&s.hist, f))
                        }
                        bluetick_model::system::Dir::Down => {
                            println!("{c:?}: {}", bluetick_model::system::server_frame_phrase(&s.hist, f))
                        }
                    }
                }
            }
        }
        let mut acts = Vec::new();
        m.actions(&s, &mut acts);
        for a in acts {
            let key = format!("{a:?}").split('(').next().unwrap().to_string();
            if let Some(n) = m.next_state(&s, a) {
                if m.within_boundary(&n) {
                    *by_action.entry(key).or_default() += 1;
                    frontier.push(n);
                }
            }
        }
    }
    println!("states {}", seen.len());
    println!("by time: {by_time:?}");
    println!("by action: {by_action:?}");
    println!("by frames: {by_frames:?}");
    println!("by mailbox: {by_server_mail:?}");
}
