//! The named configurations: what `bluetick check` (CI bounds) and
//! `bluetick check --deep` explore, and the known-weakness configurations the
//! tests expect counterexamples from.
//!
//! Each configuration targets a few properties with the smallest setting
//! that exercises them: sessions are established during warm-up where X3DH
//! is not the point, so real crypto is paid only where it matters.

use crate::config::{AdversaryPowers, AppStep, BugSwitch, FaultBudget, ModelConfig, NetworkMode, Timing};
use crate::properties::Check;

fn names(checks: &[Check]) -> Vec<&'static str> {
    checks.iter().map(|c| c.name()).collect()
}

/// Delivery under faults with established sessions: alice sends `messages`
/// texts to bob (every other one goes the other way), apps read, and the
/// network may lose and duplicate frames; `client_crashes` and
/// `server_crashes` crashes are allowed. Checks exactly-once, at-least-once
/// (after a quiesce), the ticks and the server's store.
pub fn delivery_with(name: &str, messages: usize, faults: FaultBudget, reads: bool) -> ModelConfig {
    let mut c = ModelConfig::base(name, 2);
    let alice: Vec<AppStep> = (0..messages.div_ceil(2)).map(|_| AppStep::Send { to: 1 }).collect();
    let bob: Vec<AppStep> = (0..messages / 2).map(|_| AppStep::Send { to: 0 }).collect();
    c.scripts = vec![alice, bob];
    c.warm_up = vec![(0, 1), (1, 0)];
    c.reads = reads;
    c.faults = faults;
    c.quiesce_steps = Some(80);
    c.checks = names(&[
        Check::ExactlyOnce,
        Check::AtLeastOnce,
        Check::StatusMonotone,
        Check::StatusTruthful,
        Check::NoPlaintext,
        Check::PrekeyOnce,
    ]);
    c
}

fn faults(drops: u8, duplicates: u8, client_crashes: u8, server_crashes: u8) -> FaultBudget {
    FaultBudget { drops, duplicates, client_crashes, server_crashes, disconnects: 0 }
}

/// One message under loss and duplication, with reads (CI).
pub fn delivery(messages: usize) -> ModelConfig {
    let mut c = delivery_with(&format!("delivery-{messages}"), messages, faults(1, 1, 0, 0), true);
    c.checks.extend(names(&[Check::Redelivery, Check::Dedup, Check::DhStep]));
    c
}

/// One message and one client crash (CI).
pub fn client_crash() -> ModelConfig {
    let mut c = delivery_with("client-crash", 1, faults(0, 0, 1, 0), true);
    c.checks.extend(names(&[Check::Redelivery, Check::Dedup]));
    c
}

/// One message and one server crash (CI).
pub fn server_crash() -> ModelConfig {
    let mut c = delivery_with("server-crash", 1, faults(0, 0, 0, 1), false);
    c.checks.extend(names(&[Check::Redelivery]));
    c
}

/// Delivery with reordering: any frame in flight may overtake another (CI).
pub fn reorder() -> ModelConfig {
    let mut c = delivery_with("reorder", 1, faults(0, 1, 0, 0), false);
    c.network = NetworkMode::Reorder;
    c.checks.extend(names(&[Check::Dedup]));
    c
}

/// The goal: `messages` messages with loss, duplication and one
/// crash of each side (deep runs; far beyond what CI can explore).
pub fn goal(messages: usize) -> ModelConfig {
    let mut c = delivery_with(&format!("goal-{messages}"), messages, faults(1, 1, 1, 1), true);
    c.checks.extend(names(&[Check::Redelivery, Check::Dedup]));
    c
}

/// First contact with real X3DH: alice fetches bob's bundle (a one-time
/// prekey), both send, and the adversary may steal either device's state at
/// any point — the stolen copy must decrypt nothing already received.
pub fn handshake() -> ModelConfig {
    let mut c = ModelConfig::base("handshake", 2);
    c.scripts = vec![vec![AppStep::Send { to: 1 }], Vec::new()];
    c.adversary = AdversaryPowers { steal: true, ..AdversaryPowers::default() };
    c.checks = names(&[Check::PrekeyOnce, Check::ForwardSecrecy, Check::ExactlyOnce, Check::NoPlaintext, Check::Theft]);
    c
}

/// An offline recipient: bob may go offline for longer than the TTL, so the
/// message expires and alice must be told.
pub fn expiry() -> ModelConfig {
    let mut c = ModelConfig::base("expiry", 2);
    c.scripts = vec![vec![AppStep::Send { to: 1 }], Vec::new()];
    c.warm_up = vec![(0, 1), (1, 0)];
    c.faults = FaultBudget { drops: 0, duplicates: 0, client_crashes: 0, server_crashes: 0, disconnects: 1 };
    // The horizon stops short of twice the TTL: an expiry notice, itself
    // queued with the TTL, cannot expire in turn (that is a separate finding,
    // `finding_expiry_notice_expires`).
    c.timing = Timing { horizon_ms: 2 * Timing::SHORT_TTL.ttl_ms - 1, ..Timing::SHORT_TTL };
    c.quiesce_steps = Some(80);
    c.checks = names(&[
        Check::AtLeastOnce,
        Check::ExactlyOnce,
        Check::StatusMonotone,
        Check::StatusTruthful,
        Check::TtlExpiry,
    ]);
    c
}

/// A group: alice creates it with bob, sends, removes bob, sends again;
/// bob, keeping his state, must not read the second message.
pub fn group_removal() -> ModelConfig {
    let mut c = ModelConfig::base("group-removal", 2);
    c.scripts = vec![
        vec![
            AppStep::CreateGroup { members: vec![1] },
            AppStep::SendGroup { group: 0 },
            AppStep::RemoveMember { group: 0, member: 1 },
            AppStep::SendGroup { group: 0 },
        ],
        Vec::new(),
    ];
    c.warm_up = vec![(0, 1), (1, 0)];
    c.reads = false;
    c.checks = names(&[
        Check::RemovedMemberCannotRead,
        Check::ExactlyOnce,
        Check::NoPlaintext,
        Check::GroupChangesSigned,
        Check::StatusMonotone,
    ]);
    c
}

/// A malicious server tries to add a ghost (carol) to alice's group without
/// alice's signature; the server must refuse, and the ghost must not read.
pub fn ghost() -> ModelConfig {
    let mut c = ModelConfig::base("ghost", 2);
    c.scripts = vec![vec![AppStep::CreateGroup { members: vec![1] }, AppStep::SendGroup { group: 0 }], Vec::new()];
    c.warm_up = vec![(0, 1), (1, 0)];
    c.adversary = AdversaryPowers { inject_ghost: true, ..AdversaryPowers::default() };
    c.reads = false;
    c.checks = names(&[Check::GroupChangesSigned, Check::GhostCannotRead, Check::ExactlyOnce]);
    c
}

// The weakness searches below let the apps and the adversary move only on a
// quiet network (`moves_on_quiet_network`): each attack is a sequence of
// moves, not a race with frames in flight, and with every race explored the
// sender-key search ran for more than 15 minutes in a debug build without
// finding it; with moves on a quiet network each attack is found in seconds.

/// Known weakness: a device restored from an old backup that the thief also
/// holds rolls its ratchets and its RNG back, and seals new messages under
/// message keys the thief knows (Cremers, Medinger, Naska, S&P 2025).
pub fn weakness_old_backup() -> ModelConfig {
    let mut c = ModelConfig::base("weakness-old-backup", 2);
    c.scripts = vec![vec![AppStep::Send { to: 1 }, AppStep::Send { to: 1 }], vec![AppStep::Send { to: 0 }]];
    c.warm_up = vec![(0, 1), (1, 0)];
    c.reads = false;
    c.adversary = AdversaryPowers { steal: true, restore_backup: true, inject_ghost: false };
    c.moves_on_quiet_network = true;
    c.checks = names(&[Check::NoKeyReuse, Check::ForwardSecrecy, Check::Theft]);
    c
}

/// Known weakness: sender keys do not heal. After bob's state is stolen and
/// bob's pairwise session with alice has healed, alice's later group
/// messages (same sender key, no rotation) are still readable by the thief.
pub fn weakness_sender_keys() -> ModelConfig {
    let mut c = ModelConfig::base("weakness-sender-keys", 2);
    c.scripts = vec![
        vec![
            AppStep::CreateGroup { members: vec![1] },
            AppStep::SendGroup { group: 0 },
            AppStep::SendGroup { group: 0 },
        ],
        vec![AppStep::Send { to: 0 }],
    ];
    c.warm_up = vec![(0, 1), (1, 0)];
    c.reads = false;
    c.adversary = AdversaryPowers { steal: true, ..AdversaryPowers::default() };
    c.moves_on_quiet_network = true;
    c.checks = names(&[Check::Healing, Check::ForwardSecrecy, Check::Theft]);
    c
}

/// Known weakness: server-controlled membership. With the server accepting
/// unsigned group changes, the ghost lands in the server's member list and
/// receives every group ciphertext.
pub fn weakness_server_membership() -> ModelConfig {
    let mut c = ghost().with_unsigned_group_changes();
    c.name = "weakness-server-membership".into();
    c.moves_on_quiet_network = true;
    c
}

/// Finding: an expiry notice is queued for the sender with the same TTL as
/// the message; a sender offline for that long after the expiry never
/// learns that its message was dropped. The checker finds the silent loss as
/// an at-least-once counterexample.
pub fn finding_expiry_notice_expires() -> ModelConfig {
    let mut c = ModelConfig::base("finding-expiry-notice-expires", 2);
    c.scripts = vec![vec![AppStep::Send { to: 1 }], Vec::new()];
    c.warm_up = vec![(0, 1), (1, 0)];
    c.reads = false;
    c.faults = FaultBudget { disconnects: 2, ..FaultBudget::default() };
    c.timing = Timing::SHORT_TTL;
    c.quiesce_steps = Some(80);
    c.checks = names(&[Check::AtLeastOnce, Check::TtlExpiry]);
    c
}

/// Alice sends one message to bob over established sessions, with `faults`:
/// the smallest configuration most delivery bugs show in.
pub fn one_message(faults: FaultBudget) -> ModelConfig {
    let mut c = delivery(1);
    c.name = "one-message".into();
    c.scripts = vec![vec![AppStep::Send { to: 1 }], Vec::new()];
    c.faults = faults;
    c
}

/// The smallest configuration in which `bug` breaks a property, without
/// the bug switched on (a test checks that it then holds), and the property
/// it breaks. `bluetick check --bug NAME` runs it with the bug on.
pub fn bug_hunt(bug: BugSwitch) -> (ModelConfig, Check) {
    let none = FaultBudget::default();
    let (mut c, check) = match bug {
        BugSwitch::DeleteOnSend => (one_message(FaultBudget { drops: 1, ..none }), Check::AtLeastOnce),
        BugSwitch::DedupOff => (one_message(FaultBudget { duplicates: 1, ..none }), Check::ExactlyOnce),
        BugSwitch::ReadOnDelivery => (one_message(none), Check::StatusTruthful),
        BugSwitch::LeakPlaintext => (one_message(none), Check::NoPlaintext),
        BugSwitch::LatestReceiptWins => {
            let mut c = reorder();
            c.faults = none;
            c.reads = true;
            (c, Check::StatusMonotone)
        }
        BugSwitch::HandOutTwice => {
            let mut c = handshake();
            c.adversary = AdversaryPowers::default();
            c.faults = none;
            (c, Check::PrekeyOnce)
        }
        BugSwitch::NoRotationOnRemove => {
            let mut c = group_removal();
            c.faults = none;
            c.reads = false;
            (c, Check::RemovedMemberCannotRead)
        }
        BugSwitch::UnsignedGroupChanges => (ghost(), Check::GroupChangesSigned),
    };
    if !c.checks.contains(&check.name()) {
        c.checks.push(check.name());
    }
    (c, check)
}

/// The configurations `bluetick check` runs (CI bounds, all must pass).
pub fn ci() -> Vec<ModelConfig> {
    vec![delivery(1), client_crash(), server_crash(), reorder(), handshake(), expiry(), group_removal(), ghost()]
}

/// The configurations `bluetick check --deep` runs (depth first, each cut
/// off by the time limit if it has one).
pub fn deep() -> Vec<ModelConfig> {
    let mut lossy = delivery_with("delivery-2-lossy", 2, faults(1, 1, 0, 0), true);
    lossy.checks.extend(names(&[Check::Redelivery, Check::Dedup]));
    let mut crashes = delivery_with("delivery-1-all-faults", 1, faults(1, 1, 1, 1), true);
    crashes.checks.extend(names(&[Check::Redelivery, Check::Dedup]));
    let mut h = handshake();
    h.faults.drops = 1;
    h.name = "handshake-loss".into();
    vec![crashes, lossy, goal(2), goal(3), h, expiry(), group_removal(), ghost()]
}

/// The known-weakness configurations (each must produce a counterexample).
pub fn weaknesses() -> Vec<(ModelConfig, Check)> {
    vec![
        (weakness_old_backup(), Check::NoKeyReuse),
        (weakness_sender_keys(), Check::Healing),
        (weakness_server_membership(), Check::GroupChangesSigned),
        (finding_expiry_notice_expires(), Check::AtLeastOnce),
    ]
}
