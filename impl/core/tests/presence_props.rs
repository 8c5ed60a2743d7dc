//! Property tests of the presence and key distribution services over random
//! schedules of activity, each paired with a deliberate bug that the same
//! check must catch (run through proptest's `TestRunner`, expected to fail).
//!
//! - Privacy: a subscriber the owner's setting excludes receives no push at
//!   all, whatever the owner, the other users and the clock do.
//! - Throttle: two pushes to one (subscriber, user) pair are never closer than
//!   the interval, never repeat what was last sent, and once activity stops
//!   every subscriber's last view equals what it may see.
//! - Keys: each one-time prekey is handed out at most once, lowest first,
//!   across crashes that rebuild the directory from its dirty records.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};

use bluetick_core::ids::{DeviceAddress, DeviceId, UserId};
use bluetick_core::server::keys::{KeyBug, KeyDirError, KeyDirectory, PREKEY_LOW_WATER};
use bluetick_core::server::presence::{Presence, PresenceBug, Push, PRESENCE_PUSH_INTERVAL_MS};
use bluetick_core::wire::{LastSeen, OneTimePreKeyUpload, SignedPreKeyUpload, Visibility};
use bluetick_crypto::{CipherSuite, IdentityKeyPair, KeyPair, PublicKey};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRng, TestRunner};
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;

const DAY_MS: u64 = 24 * 60 * 60 * 1000;

fn user(i: usize) -> UserId {
    UserId::new(&format!("u{i}")).unwrap()
}

/// A runner for the "the check catches the bug" tests: deterministic, so the
/// expected failure does not depend on the machine's entropy.
fn bug_runner(cases: u32) -> TestRunner {
    let config = Config { cases, failure_persistence: None, ..Config::default() };
    TestRunner::new_with_rng(config.clone(), TestRng::deterministic_rng(config.rng_algorithm))
}

/// A pause: mostly within a few throttle intervals, sometimes long enough for
/// an offline user's view to age into the next bucket.
fn pause() -> impl Strategy<Value = u64> {
    prop_oneof![
        6 => 0u64..12_000,
        1 => (0u64..40).prop_map(|d| d * DAY_MS),
    ]
}

/// Feeds `p` time up to `until` the way a server does: a poll at every
/// deadline in order, then one at `until`. Checks each deadline lies after the
/// poll before it. Returns (time, push) pairs.
fn advance(p: &mut Presence, now: u64, until: u64) -> Result<Vec<(u64, Push)>, TestCaseError> {
    let mut out = vec![];
    let mut at = now;
    loop {
        let next = match p.next_deadline_ms() {
            Some(d) if d <= until => d,
            _ => until,
        };
        prop_assert!(next >= at, "deadline {} before the last poll at {}", next, at);
        at = next;
        out.extend(p.poll_pushes(at).into_iter().map(|x| (at, x)));
        if let Some(d) = p.next_deadline_ms() {
            prop_assert!(d > at, "next deadline {} not after the poll at {}", d, at);
        }
        if at == until {
            return Ok(out);
        }
    }
}

// ---------------------------------------------------------------- privacy

/// Users: 0 = the owner, 1 = the excluded subscriber, 2 and 3 = others.
const OWNER: usize = 0;
const EXCLUDED: usize = 1;

#[derive(Debug, Clone)]
enum PrivacyOp {
    Pause(u64),
    /// Someone connects or disconnects (disconnecting drops their subscriptions).
    Online(usize, bool),
    /// The excluded user follows the owner, or nobody.
    ExcludedSubscribes(bool),
    /// User 2 or 3 follows the users in the mask.
    OtherSubscribes(usize, u8),
    /// The owner changes its setting; `Contacts` lists only users 2 and 3.
    OwnerPrivacy(bool, u8),
}

fn privacy_op() -> impl Strategy<Value = PrivacyOp> {
    prop_oneof![
        3 => pause().prop_map(PrivacyOp::Pause),
        4 => (prop_oneof![3 => Just(OWNER), 1 => 1usize..4], any::<bool>()).prop_map(|(u, o)| PrivacyOp::Online(u, o)),
        2 => any::<bool>().prop_map(PrivacyOp::ExcludedSubscribes),
        2 => (2usize..4, 0u8..16).prop_map(|(u, m)| PrivacyOp::OtherSubscribes(u, m)),
        1 => (any::<bool>(), 0u8..4).prop_map(|(n, m)| PrivacyOp::OwnerPrivacy(n, m)),
    ]
}

fn owner_privacy(nobody: bool, mask: u8) -> (Visibility, Vec<UserId>) {
    if nobody {
        (Visibility::Nobody, vec![])
    } else {
        (Visibility::Contacts, (0..2).filter(|b| mask & (1 << b) != 0).map(|b| user(b + 2)).collect())
    }
}

fn run_privacy(initial: (bool, u8), ops: &[PrivacyOp], bug: Option<PresenceBug>) -> Result<(), TestCaseError> {
    let mut p = Presence::new();
    p.set_bug(bug);
    let (owner, excluded) = (user(OWNER), user(EXCLUDED));
    let (vis, contacts) = owner_privacy(initial.0, initial.1);
    p.set_privacy(&owner, vis, contacts, 0).unwrap();
    let mut now = 0u64;
    let mut pushes: Vec<(u64, Push)> = vec![];
    for op in ops {
        match op {
            PrivacyOp::Pause(ms) => {
                pushes.extend(advance(&mut p, now, now + ms)?);
                now += ms;
                continue;
            }
            PrivacyOp::Online(u, online) => p.set_online(&user(*u), *online, now),
            PrivacyOp::ExcludedSubscribes(follow) => {
                let targets = if *follow { vec![owner.clone()] } else { vec![] };
                let reply = p.subscribe(&excluded, targets, now).unwrap();
                for (_, seen) in reply {
                    prop_assert_eq!(seen, LastSeen::LongAgo, "the excluded subscriber read the owner's state");
                }
            }
            PrivacyOp::OtherSubscribes(u, mask) => {
                let targets = (0..4).filter(|b| mask & (1 << b) != 0).map(user).collect();
                p.subscribe(&user(*u), targets, now).unwrap();
            }
            PrivacyOp::OwnerPrivacy(nobody, mask) => {
                let (vis, contacts) = owner_privacy(*nobody, *mask);
                p.set_privacy(&owner, vis, contacts, now).unwrap();
            }
        }
        pushes.extend(advance(&mut p, now, now)?);
    }
    pushes.extend(advance(&mut p, now, now + 60 * DAY_MS)?);
    let leaked: Vec<&(u64, Push)> = pushes.iter().filter(|(_, x)| x.to == excluded).collect();
    prop_assert!(leaked.is_empty(), "pushes to the excluded subscriber: {:?}", leaked);
    Ok(())
}

fn privacy_case() -> impl Strategy<Value = ((bool, u8), Vec<PrivacyOp>)> {
    ((any::<bool>(), 0u8..4), proptest::collection::vec(privacy_op(), 1..60))
}

proptest! {
    #![proptest_config(Config { cases: 256, ..Config::default() })]
    #[test]
    fn an_excluded_subscriber_receives_no_push_under_any_activity((initial, ops) in privacy_case()) {
        run_privacy(initial, &ops, None)?;
    }
}

#[test]
fn ignoring_privacy_is_caught_by_the_no_push_check() {
    let result = bug_runner(256)
        .run(&privacy_case(), |(initial, ops)| run_privacy(initial, &ops, Some(PresenceBug::IgnorePrivacy)));
    assert!(result.is_err(), "the privacy check missed PresenceBug::IgnorePrivacy");
}

// --------------------------------------------------------------- throttle

const USERS: usize = 4;

#[derive(Debug, Clone)]
enum ThrottleOp {
    Pause(u64),
    Online(usize, bool),
    Subscribe(usize, u8),
    Privacy(usize, u8, u8),
}

fn throttle_op() -> impl Strategy<Value = ThrottleOp> {
    prop_oneof![
        4 => pause().prop_map(ThrottleOp::Pause),
        5 => (0..USERS, any::<bool>()).prop_map(|(u, o)| ThrottleOp::Online(u, o)),
        2 => (0..USERS, 0u8..16).prop_map(|(u, m)| ThrottleOp::Subscribe(u, m)),
        1 => (0..USERS, 0u8..3, 0u8..16).prop_map(|(u, v, m)| ThrottleOp::Privacy(u, v, m)),
    ]
}

fn run_throttle(ops: &[ThrottleOp]) -> Result<(), TestCaseError> {
    let mut p = Presence::new();
    let mut now = 0u64;
    // What each subscriber was last told about each target, and when.
    let mut told: BTreeMap<(UserId, UserId), (LastSeen, u64)> = BTreeMap::new();
    let mut last_push: BTreeMap<(UserId, UserId), u64> = BTreeMap::new();
    let apply = |pushes: Vec<(u64, Push)>,
                 told: &mut BTreeMap<(UserId, UserId), (LastSeen, u64)>,
                 last_push: &mut BTreeMap<(UserId, UserId), u64>|
     -> Result<(), TestCaseError> {
        for (at, x) in pushes {
            let key = (x.to.clone(), x.user.clone());
            if let Some(prev) = last_push.get(&key) {
                prop_assert!(at >= prev + PRESENCE_PUSH_INTERVAL_MS, "pushes {:?} at {} and {}", key, prev, at);
            }
            let (seen, since) = told.get(&key).copied().unwrap_or((LastSeen::LongAgo, 0));
            prop_assert!(told.contains_key(&key), "push for a pair not subscribed: {:?}", key);
            prop_assert!(seen != x.last_seen, "push repeats what {:?} was told", key);
            prop_assert!(at >= since + PRESENCE_PUSH_INTERVAL_MS, "push {:?} at {} too soon after {}", key, at, since);
            last_push.insert(key.clone(), at);
            told.insert(key, (x.last_seen, at));
        }
        Ok(())
    };
    for op in ops {
        match op {
            ThrottleOp::Pause(ms) => {
                let pushes = advance(&mut p, now, now + ms)?;
                apply(pushes, &mut told, &mut last_push)?;
                now += ms;
                continue;
            }
            ThrottleOp::Online(u, online) => {
                p.set_online(&user(*u), *online, now);
                if !online {
                    told.retain(|(to, _), _| to != &user(*u));
                }
            }
            ThrottleOp::Subscribe(u, mask) => {
                let sub = user(*u);
                let targets = (0..USERS).filter(|b| mask & (1 << b) != 0).map(user).collect();
                let reply = p.subscribe(&sub, targets, now).unwrap();
                told.retain(|(to, _), _| to != &sub);
                for (target, seen) in reply {
                    told.insert((sub.clone(), target), (seen, now));
                }
            }
            ThrottleOp::Privacy(u, v, mask) => {
                let vis = [Visibility::Everyone, Visibility::Contacts, Visibility::Nobody][*v as usize];
                let contacts = (0..USERS).filter(|b| mask & (1 << b) != 0).map(user).collect();
                p.set_privacy(&user(*u), vis, contacts, now).unwrap();
            }
        }
        let pushes = advance(&mut p, now, now)?;
        apply(pushes, &mut told, &mut last_push)?;
    }
    // Quiet: let every pending push and aging step play out.
    let mut polls = 0;
    while let Some(d) = p.next_deadline_ms() {
        polls += 1;
        prop_assert!(polls < 1_000, "deadlines never run out");
        let pushes = advance(&mut p, now, d)?;
        apply(pushes, &mut told, &mut last_push)?;
        now = d;
    }
    // Converged: each subscriber's last view is what it may see, now and later.
    for later in [now, now + 100 * DAY_MS] {
        for s in 0..USERS {
            let sub = user(s);
            let subscribed: Vec<UserId> = p.subscriptions(&sub).cloned().collect();
            for target in subscribed {
                let truth = p.visible_to(&target, &sub, later);
                let view = told.get(&(sub.clone(), target.clone())).map(|t| t.0);
                prop_assert_eq!(view, Some(truth), "{:?} about {:?} at {}", sub, target, later);
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(Config { cases: 256, ..Config::default() })]
    #[test]
    fn pushes_are_spaced_by_the_interval_and_converge_to_the_truth(
        ops in proptest::collection::vec(throttle_op(), 1..80)
    ) {
        run_throttle(&ops)?;
    }
}

// ------------------------------------------------------------------- keys

const OWNERS: usize = 2;
const REQUESTERS: usize = 3;

#[derive(Debug, Clone)]
enum KeyOp {
    Upload { owner: usize, count: u32 },
    Fetch { requester: usize, owner: usize },
    Pause(u64),
    Crash,
}

fn key_op() -> impl Strategy<Value = KeyOp> {
    prop_oneof![
        2 => (0..OWNERS, 0u32..25).prop_map(|(owner, count)| KeyOp::Upload { owner, count }),
        6 => (0..REQUESTERS, 0..OWNERS).prop_map(|(requester, owner)| KeyOp::Fetch { requester, owner }),
        2 => (0u64..10_000).prop_map(KeyOp::Pause),
        1 => Just(KeyOp::Crash),
    ]
}

fn device(name: &str, i: usize) -> DeviceAddress {
    DeviceAddress::new(UserId::new(&format!("{name}{i}")).unwrap(), DeviceId(1))
}

struct KeyWorld {
    identities: Vec<PublicKey>,
    signed: Vec<SignedPreKeyUpload>,
    /// Real public keys reused across ids: the directory keys one-time prekeys
    /// by id, and generating a fresh key per id would dominate the run time.
    pool: Vec<PublicKey>,
}

fn key_world() -> KeyWorld {
    let mut rng = ChaCha20Rng::seed_from_u64(7);
    let mut identities = vec![];
    let mut signed = vec![];
    for _ in 0..OWNERS {
        let identity = IdentityKeyPair::generate(&mut rng);
        let key = KeyPair::generate(&mut rng).public();
        let signature = identity.sign(&CipherSuite::BluetickV1.encode_public(&key), &mut rng);
        identities.push(identity.public());
        signed.push(SignedPreKeyUpload { id: 1, key, signature });
    }
    let pool = (0..16).map(|_| KeyPair::generate(&mut rng).public()).collect();
    KeyWorld { identities, signed, pool }
}

fn run_keys(world: &KeyWorld, ops: &[KeyOp], bug: Option<KeyBug>) -> Result<(), TestCaseError> {
    let owners: Vec<DeviceAddress> = (0..OWNERS).map(|i| device("owner", i)).collect();
    let mut dir = KeyDirectory::new();
    dir.set_bug(bug);
    for (addr, identity) in owners.iter().zip(&world.identities) {
        dir.register(addr, *identity).unwrap();
    }
    let mut store = BTreeMap::new();
    for addr in dir.take_dirty() {
        store.insert(addr.clone(), dir.record(&addr).unwrap());
    }
    let mut next_id = [1u32; OWNERS];
    // The reference: ids uploaded and not yet handed out, per owner.
    let mut stock: Vec<BTreeSet<u32>> = vec![BTreeSet::new(); OWNERS];
    let mut handed_out: Vec<BTreeSet<u32>> = vec![BTreeSet::new(); OWNERS];
    let mut now = 0u64;
    for (step, op) in ops.iter().enumerate() {
        match op {
            KeyOp::Upload { owner, count } => {
                let opks: Vec<OneTimePreKeyUpload> = (0..*count)
                    .map(|k| {
                        let id = next_id[*owner] + k;
                        OneTimePreKeyUpload { id, key: world.pool[id as usize % world.pool.len()] }
                    })
                    .collect();
                match dir.upload(&owners[*owner], CipherSuite::BluetickV1, &world.signed[*owner], &opks) {
                    Ok(up) => {
                        prop_assert_eq!(up.added, *count as usize);
                        next_id[*owner] += count;
                        stock[*owner].extend(opks.iter().map(|o| o.id));
                    }
                    Err(KeyDirError::StockFull { stored, .. }) => {
                        prop_assert_eq!(stored, stock[*owner].len(), "step {}", step);
                    }
                    Err(e) => return Err(TestCaseError::fail(format!("step {step}: upload refused: {e}"))),
                }
            }
            KeyOp::Fetch { requester, owner } => match dir.fetch(&device("req", *requester), &owners[*owner], now) {
                Ok(f) => {
                    let got = f.bundle.one_time_prekey.map(|o| o.id);
                    if let Some(id) = got {
                        prop_assert!(
                            handed_out[*owner].insert(id),
                            "step {}: one-time prekey {} of owner {} handed out twice",
                            step,
                            id,
                            owner
                        );
                    }
                    prop_assert_eq!(got, stock[*owner].pop_first(), "step {}: not the lowest id", step);
                    prop_assert_eq!(f.remaining as usize, stock[*owner].len(), "step {}", step);
                    prop_assert_eq!(f.low, (f.remaining) < PREKEY_LOW_WATER);
                }
                Err(KeyDirError::NoSignedPreKey { .. }) => {
                    prop_assert_eq!(next_id[*owner], 1, "step {}: signed prekey lost", step);
                }
                Err(KeyDirError::RateLimited { retry_after_ms }) => prop_assert!(retry_after_ms > 0),
                Err(e) => return Err(TestCaseError::fail(format!("step {step}: fetch refused: {e}"))),
            },
            KeyOp::Pause(ms) => now += ms,
            KeyOp::Crash => {
                // Everything not yet written is lost; the directory is rebuilt
                // from the store alone.
                dir = KeyDirectory::new();
                dir.set_bug(bug);
                dir.load(store.clone());
            }
        }
        // The server writes dirty records after every call.
        for addr in dir.take_dirty() {
            store.insert(addr.clone(), dir.record(&addr).unwrap());
        }
        for (o, addr) in owners.iter().enumerate() {
            prop_assert_eq!(dir.one_time_count(addr), stock[o].len(), "step {} owner {} stock", step, o);
        }
    }
    Ok(())
}

fn key_case() -> impl Strategy<Value = Vec<KeyOp>> {
    proptest::collection::vec(key_op(), 1..60)
}

#[test]
fn each_one_time_prekey_is_handed_out_at_most_once_across_crashes() {
    let world = key_world();
    let mut runner = TestRunner::new(Config { cases: 256, failure_persistence: None, ..Config::default() });
    runner.run(&key_case(), |ops| run_keys(&world, &ops, None)).unwrap();
}

#[test]
fn handing_out_twice_is_caught_by_the_at_most_once_check() {
    let world = key_world();
    let result = bug_runner(256).run(&key_case(), |ops| run_keys(&world, &ops, Some(KeyBug::HandOutTwice)));
    assert!(result.is_err(), "the at-most-once check missed KeyBug::HandOutTwice");
}
