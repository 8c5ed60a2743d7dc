//! Builds a configuration's model and prints its initial state and first successors.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::disallowed_methods)]

use bluetick_model::model::MessagingModel;
use bluetick_model::suite;
use stateright::Model;

fn main() {
    let name = std::env::args().nth(1).unwrap_or_else(|| "delivery-2".into());
    let mut all = suite::ci();
    all.extend(suite::deep());
    all.extend(suite::weaknesses().into_iter().map(|(c, _)| c));
    let config = all.into_iter().find(|c| c.name == name).expect("unknown configuration");
    let t = std::time::Instant::now();
    let m = MessagingModel::new(config).unwrap();
    println!("init built in {:?}", t.elapsed());
    let s = m.initial_state().clone();
    println!("{s:?}");
    for (i, c) in s.clients.iter().enumerate() {
        println!(
            "client {i}: log {} connected {} timeout {:?} saved {} bytes",
            c.log_len(),
            c.is_connected(),
            c.timeout(),
            c.saved().as_bytes().len()
        );
    }
    let mut frontier = vec![s];
    for depth in 0..4 {
        let mut next = Vec::new();
        let t = std::time::Instant::now();
        for st in &frontier {
            let mut acts = Vec::new();
            m.actions(st, &mut acts);
            if depth == 0 {
                for a in &acts {
                    println!("  action {}", m.describe(a));
                }
            }
            for a in acts {
                if let Some(n) = m.next_state(st, a) {
                    next.push(n);
                }
            }
        }
        println!("depth {depth}: {} states -> {} successors in {:?}", frontier.len(), next.len(), t.elapsed());
        let t = std::time::Instant::now();
        let ok = frontier.iter().filter(|st| m.at_least_once_holds(st)).count();
        println!("  quiesce: {ok}/{} hold in {:?}", frontier.len(), t.elapsed());
        frontier = next;
        if frontier.len() > 3000 {
            break;
        }
    }
}
