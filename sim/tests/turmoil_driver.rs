#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The turmoil driver: the real tokio server and client drivers over
//! simulated TCP, checked by the oracle, reproducible by seed.

use std::collections::BTreeMap;

use bluetick_core::client::{ClientBug, ClientBugs};
use bluetick_core::ids::{MessageId, UserId};
use bluetick_core::server::mailbox::MailboxBug;
use bluetick_core::server::presence::PresenceBug;
use bluetick_core::wire::{LastSeen, Visibility};
use bluetick_core::world::oracle::{names, Violation};
use bluetick_core::world::{media_bytes, plaintext, Faults, WorldConfig, EPOCH_MS};
use bluetick_sim::driver::{Direction, Driver, FrameFault, TraceEvent};
use bluetick_sim::run::{self, RunOptions, RunOutcome, VerdictState};
use bluetick_sim::scenario::model::DriverKind;
use bluetick_sim::turmoil::{TurmoilConfig, TurmoilDriver};

fn user(name: &str) -> UserId {
    UserId::new(name).unwrap()
}

fn config(seed: u64) -> TurmoilConfig {
    let mut world = WorldConfig::new(seed, &["alice", "bob", "carol"]).unwrap();
    world.client_resend_after_ms = 1_000;
    world.server.ack_timeout_ms = 1_000;
    // Bob alone on his farm, so partitioning him is a network partition.
    TurmoilConfig { layout: vec![vec![user("bob")], vec![user("alice"), user("carol")]], ..TurmoilConfig::new(world) }
}

fn drop_rule(kind: &str, direction: Direction, who: &str) -> FrameFault {
    FrameFault {
        kind: Some(kind.to_string()),
        direction: Some(direction),
        user: Some(user(who)),
        drop_per_mille: 1_000,
        duplicate_per_mille: 0,
        delay_ms: 0,
    }
}

/// What a run leaves: its verdicts, its trace, and per message how often
/// each intended recipient's app was shown it.
struct Outcome {
    violations: Vec<Violation>,
    trace: Vec<TraceEvent>,
    shown: Vec<(MessageId, UserId, u32)>,
    dropped_by_rule: u64,
    counts: bluetick_core::world::oracle::Counts,
}

/// Three users, some 1:1 sends, bob's delivery-acks lost for a while, a
/// client crash right after a send, a clock offset, then quiesce.
fn small_run(config: TurmoilConfig) -> Outcome {
    let mut d = TurmoilDriver::new(config).unwrap();
    assert!(d.hosts() <= 3);
    let (alice, bob, carol) = (user("alice"), user("bob"), user("carol"));
    let mut n = 0;
    let mut body = || {
        n += 1;
        plaintext(42, n)
    };
    d.run_until(EPOCH_MS + 1_000);
    d.add_frame_fault(drop_rule("delivery-ack", Direction::ToServer, "bob"));
    d.set_clock_offset(&carol, 3_600_000);
    let mut ids = Vec::new();
    ids.push(d.send_text(&alice, &bob, &body()).unwrap());
    ids.push(d.send_text(&carol, &bob, &body()).unwrap());
    ids.push(d.send_text(&bob, &alice, &body()).unwrap());
    d.run_until(EPOCH_MS + 3_500);
    d.clear_frame_faults();
    ids.push(d.send_text(&carol, &alice, &body()).unwrap());
    d.crash_client(&carol);
    ids.push(d.send_text(&alice, &carol, &body()).unwrap());
    d.run_until(EPOCH_MS + 6_000);
    d.mark_read(&bob, &alice);
    d.quiesce(60_000);
    let violations = d.finish();
    let h = d.history();
    let shown = ids
        .iter()
        .flat_map(|id| {
            let m = &h.sent[id];
            m.to.iter().map(|to| (*id, to.clone(), h.received.get(&(to.clone(), *id)).copied().unwrap_or(0)))
        })
        .collect();
    assert_eq!(h.counts.client_crashes, 1);
    Outcome {
        violations,
        trace: d.trace(),
        shown,
        dropped_by_rule: h.counts.frame_faults[0].dropped,
        counts: h.counts.clone(),
    }
}

#[test]
fn lost_delivery_acks_and_a_client_crash_still_deliver_every_message_exactly_once() {
    let out = small_run(config(7));
    assert!(out.violations.is_empty(), "{:#?}", out.violations);
    assert_eq!(out.shown.len(), 5);
    for (id, to, times) in &out.shown {
        assert_eq!(*times, 1, "{to:?} was shown {id:?} {times} times");
    }
    // The fault fired: acks were lost, so deliveries were repeated and deduplicated.
    assert!(out.dropped_by_rule >= 2, "dropped {}", out.dropped_by_rule);
    assert!(out.trace.iter().any(|e| e.event == "frame" && e.detail.contains("kind=delivery-ack fate=dropped")));
    // The counters the runner's guards read saw it too.
    assert!(out.counts.redeliveries >= 2, "{:?}", out.counts);
    assert!(out.counts.duplicates_suppressed >= 1, "{:?}", out.counts);
    // Each app delivery is an `app` line in the `World`'s format (the runner's latency samples).
    let app_messages = out.trace.iter().filter(|e| e.event == "app" && e.detail.contains(" event=message ")).count();
    assert_eq!(app_messages, 5);
}

#[test]
fn the_same_seed_gives_the_same_trace_and_another_seed_another() {
    let a = small_run(config(11));
    let b = small_run(config(11));
    assert!(a.trace.len() > 20, "{:?}", a.trace);
    assert_eq!(a.trace, b.trace);
    let c = small_run(config(12));
    assert_ne!(a.trace, c.trace);
}

#[test]
fn delete_on_send_with_a_lost_delivery_is_an_at_least_once_violation() {
    let mut config = config(3);
    config.world.server.bugs.mailbox = Some(MailboxBug::DeleteOnSend);
    let mut d = TurmoilDriver::new(config).unwrap();
    let (alice, bob) = (user("alice"), user("bob"));
    d.run_until(EPOCH_MS + 1_000);
    d.add_frame_fault(drop_rule("deliver-envelope", Direction::ToClient, "bob"));
    let id = d.send_text(&alice, &bob, &plaintext(3, 1)).unwrap();
    d.run_until(EPOCH_MS + 3_000);
    d.clear_frame_faults();
    d.quiesce(30_000);
    let v = d.finish();
    assert!(v.iter().any(|v| v.invariant == names::AT_LEAST_ONCE && v.detail.contains(&format!("{id:?}"))), "{v:#?}");
    assert_eq!(d.history().received.get(&(bob, id)), None);
}

#[test]
fn a_network_partition_and_a_server_crash_heal_and_the_message_arrives() {
    let mut d = TurmoilDriver::new(config(5)).unwrap();
    let (alice, bob) = (user("alice"), user("bob"));
    d.run_until(EPOCH_MS + 1_000);
    d.partition(std::slice::from_ref(&bob), None);
    let id = d.send_text(&alice, &bob, &plaintext(5, 1)).unwrap();
    d.run_until(EPOCH_MS + 20_000);
    assert_eq!(d.history().received.get(&(bob.clone(), id)), None, "delivered through a partition");
    d.crash_server();
    d.run_until(EPOCH_MS + 21_000);
    d.heal();
    d.quiesce(60_000);
    let v = d.finish();
    assert!(v.is_empty(), "{v:#?}");
    assert_eq!(d.history().received.get(&(bob, id)), Some(&1));
    let trace = d.trace();
    let partition = trace.iter().find(|e| e.event == "partition").unwrap();
    assert!(partition.detail.contains("network=farm-0"), "{partition:?}");
    // The cut connection died of silence and came back after the heal.
    assert!(trace.iter().filter(|e| e.event == "online" && e.detail == "user=bob").count() >= 2);
    assert_eq!(d.history().counts.server_crashes, 1);
}

#[test]
fn a_framing_layer_partition_of_part_of_a_farm_loses_frames_until_healed() {
    let mut d = TurmoilDriver::new(config(6)).unwrap();
    let (alice, carol) = (user("alice"), user("carol"));
    d.run_until(EPOCH_MS + 1_000);
    // Carol shares her farm with alice: she is cut in the framing layer.
    d.partition(std::slice::from_ref(&carol), Some(Direction::ToClient));
    let id = d.send_text(&alice, &carol, &plaintext(6, 1)).unwrap();
    d.run_until(EPOCH_MS + 4_000);
    assert_eq!(d.history().received.get(&(carol.clone(), id)), None);
    assert!(d.history().counts.frames_partitioned > 0);
    d.quiesce(30_000);
    let v = d.finish();
    assert!(v.is_empty(), "{v:#?}");
    assert_eq!(d.history().received.get(&(carol, id)), Some(&1));
}

#[test]
fn a_user_taken_offline_gets_the_message_after_coming_back() {
    let mut d = TurmoilDriver::new(config(8)).unwrap();
    let (alice, bob) = (user("alice"), user("bob"));
    d.run_until(EPOCH_MS + 1_000);
    d.disconnect(&bob);
    d.run_until(EPOCH_MS + 1_100);
    let id = d.send_text(&alice, &bob, &plaintext(8, 1)).unwrap();
    d.run_until(EPOCH_MS + 5_000);
    assert_eq!(d.history().received.get(&(bob.clone(), id)), None);
    d.connect(&bob);
    d.run_until(EPOCH_MS + 7_000);
    assert_eq!(d.history().received.get(&(bob, id)), Some(&1));
    d.quiesce(10_000);
    assert!(d.finish().is_empty());
}

#[test]
fn a_bad_layout_is_refused() {
    let mut c = config(1);
    c.layout = vec![vec![user("bob")], vec![user("bob")]];
    assert!(TurmoilDriver::new(c).is_err());
    let mut c = config(1);
    c.layout = vec![vec![user("mallory")]];
    assert!(TurmoilDriver::new(c).is_err());
}

#[test]
fn a_group_message_reaches_every_member_once_and_group_reads_are_truthful() {
    let mut d = TurmoilDriver::new(config(9)).unwrap();
    let (alice, bob, carol) = (user("alice"), user("bob"), user("carol"));
    d.run_until(EPOCH_MS + 1_000);
    let group = d.create_group(&alice, &[bob.clone(), carol.clone()]).unwrap();
    d.run_until(EPOCH_MS + 2_000);
    let id = d.send_group(&alice, group, &plaintext(9, 1)).unwrap();
    d.run_until(EPOCH_MS + 4_000);
    d.mark_group_read(&bob, group).unwrap();
    d.quiesce(30_000);
    let v = d.finish();
    assert!(v.is_empty(), "{v:#?}");
    let h = d.history();
    assert_eq!(h.sent[&id].to, [bob.clone(), carol.clone()].into_iter().collect());
    assert_eq!(h.received.get(&(bob.clone(), id)), Some(&1));
    assert_eq!(h.received.get(&(carol, id)), Some(&1));
    assert!(h.read.contains(&(bob, id)));
}

/// (sender, recipient, SHA-256 of the body) of a message some app was shown.
type Shown = (UserId, UserId, [u8; 32]);

/// The same small story told to either driver: every message some app was
/// shown, and the verdicts.
fn story(d: &mut dyn Driver) -> (Vec<Shown>, Vec<&'static str>) {
    let (alice, bob, carol) = (user("alice"), user("bob"), user("carol"));
    let t0 = d.now_ms();
    d.run_until(t0 + 1_000);
    d.add_frame_fault(drop_rule("delivery-ack", Direction::ToServer, "bob"));
    d.send_text(&alice, &bob, b"hello bob, from alice").unwrap();
    d.send_text(&carol, &bob, b"hello bob, from carol").unwrap();
    d.run_until(t0 + 3_000);
    d.clear_frame_faults();
    d.crash_client(&bob);
    d.send_text(&bob, &alice, b"hello alice, from bob").unwrap();
    d.run_until(t0 + 5_000);
    d.quiesce(60_000);
    let verdicts = d.finish().iter().map(|v| v.invariant).collect();
    let h = d.history();
    let mut shown: Vec<_> =
        h.received.keys().map(|(to, id)| (h.sent[id].from.clone(), to.clone(), h.sent[id].body.digest())).collect();
    shown.sort();
    (shown, verdicts)
}

#[test]
fn the_direct_and_the_turmoil_driver_agree_on_a_small_story() {
    let config = config(21);
    let driver_config = bluetick_sim::driver::DriverConfig {
        seed: 21,
        users: config.world.users.clone(),
        faults: config.world.faults,
        server: config.world.server.clone(),
        client_bugs: config.world.client_bugs.clone(),
        resend_after_ms: config.world.client_resend_after_ms,
        reconnect_after_ms: config.world.reconnect_after_ms,
        bundle_fetches_per_minute: config.world.client_bundle_fetches_per_minute,
        suite: config.world.suite,
    };
    let mut direct = bluetick_sim::direct::DirectDriver::new(&driver_config, false);
    let mut turmoil = TurmoilDriver::new(TurmoilConfig::from_driver(&driver_config)).unwrap();
    let (direct_shown, direct_verdicts) = story(&mut direct);
    let (turmoil_shown, turmoil_verdicts) = story(&mut turmoil);
    assert_eq!(direct_shown.len(), 3);
    assert_eq!(direct_shown, turmoil_shown);
    assert_eq!(direct_verdicts, turmoil_verdicts);
    assert!(turmoil_verdicts.is_empty(), "{turmoil_verdicts:?}");
}

#[test]
fn duplicated_deliveries_with_dedup_off_are_an_exactly_once_violation() {
    let mut config = config(4);
    config.world.client_bugs =
        bluetick_core::client::ClientBugs::none().with(bluetick_core::client::ClientBug::DedupOff);
    let mut d = TurmoilDriver::new(config).unwrap();
    let (alice, bob) = (user("alice"), user("bob"));
    d.run_until(EPOCH_MS + 1_000);
    let twice = FrameFault {
        drop_per_mille: 0,
        duplicate_per_mille: 1_000,
        ..drop_rule("deliver-envelope", Direction::ToClient, "bob")
    };
    d.add_frame_fault(twice);
    d.send_text(&alice, &bob, &plaintext(4, 1)).unwrap();
    d.run_until(EPOCH_MS + 3_000);
    d.quiesce(30_000);
    let v = d.finish();
    assert!(v.iter().any(|v| v.invariant == names::EXACTLY_ONCE), "{v:#?}");
    assert!(d.history().counts.frames_duplicated > 0);
}

#[test]
fn background_loss_duplication_and_jitter_still_deliver_every_message_exactly_once() {
    let names: Vec<String> = (0..6).map(|i| format!("u{i}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let mut world = WorldConfig::new(13, &refs).unwrap();
    world.faults = Faults { drop_per_mille: 80, duplicate_per_mille: 80, latency_min_ms: 2, latency_max_ms: 30 };
    world.server.ack_timeout_ms = 1_000;
    world.client_resend_after_ms = 1_000;
    let mut d = TurmoilDriver::new(TurmoilConfig { farms: 2, ..TurmoilConfig::new(world) }).unwrap();
    let users: Vec<UserId> = names.iter().map(|n| user(n)).collect();
    d.run_until(EPOCH_MS + 2_000);
    let mut ids = Vec::new();
    for round in 0..4 {
        for (i, from) in users.iter().enumerate() {
            let to = &users[(i + 1 + round) % users.len()];
            ids.push((d.send_text(from, to, &plaintext(13, (round * 10 + i) as u64)).unwrap(), to.clone()));
        }
        let t = d.now_ms() + 300;
        d.run_until(t);
    }
    d.quiesce(120_000);
    let v = d.finish();
    assert!(v.is_empty(), "{v:#?}");
    let h = d.history();
    for (id, to) in &ids {
        assert_eq!(h.received.get(&(to.clone(), *id)), Some(&1), "{id:?} to {to:?}");
    }
    assert!(h.counts.frames_dropped > 0 && h.counts.frames_duplicated > 0, "{:?}", h.counts);
}

fn caught(v: &[Violation], invariant: &str) -> bool {
    v.iter().any(|v| v.invariant == invariant)
}

#[test]
fn a_mailbox_handing_out_newest_first_is_caught_as_out_of_order() {
    let story = |bug: Option<MailboxBug>| {
        let mut c = config(20);
        c.world.server.bugs.mailbox = bug;
        let mut d = TurmoilDriver::new(c).unwrap();
        let (alice, bob) = (user("alice"), user("bob"));
        d.run_until(EPOCH_MS + 1_000);
        d.disconnect(&bob);
        d.run_until(EPOCH_MS + 1_100);
        for i in 0..5 {
            d.send_text(&alice, &bob, &plaintext(20, i)).unwrap();
            let t = d.now_ms() + 100;
            d.run_until(t);
        }
        d.connect(&bob);
        d.run_until(EPOCH_MS + 5_000);
        d.violations().to_vec()
    };
    assert!(story(None).is_empty());
    let v = story(Some(MailboxBug::NewestFirst));
    assert!(caught(&v, names::ORDER), "{v:#?}");
}

#[test]
fn media_reaches_the_recipient_exactly_once_and_is_counted() {
    let mut c = config(18);
    c.world.faults = Faults { drop_per_mille: 50, duplicate_per_mille: 0, latency_min_ms: 5, latency_max_ms: 5 };
    let mut d = TurmoilDriver::new(c).unwrap();
    let (alice, bob) = (user("alice"), user("bob"));
    d.run_until(EPOCH_MS + 2_000);
    let mut ids = Vec::new();
    for (i, len) in [1_000usize, 100_000].into_iter().enumerate() {
        let bytes = media_bytes(18, i as u64, len);
        ids.push(d.send_media(&alice, &bob, &bytes).unwrap().unwrap());
        d.run_until(d.now_ms() + 300);
    }
    d.quiesce(120_000);
    let v = d.finish();
    assert!(v.is_empty(), "{v:#?}");
    let h = d.history();
    for id in &ids {
        assert_eq!(h.received.get(&(bob.clone(), *id)), Some(&1));
        assert!(h.decrypted.contains(&(bob.clone(), *id)), "shown with its bytes, which the oracle compared");
        assert!(h.media.contains(id));
    }
    assert_eq!(h.counts.media_deliveries, 2);
    assert!(d.trace().iter().any(|e| e.event == "app" && e.detail.contains(" event=media ")));
}

/// Alice follows bob (who lets only carol see him) and carol; carol
/// follows bob; bob and carol flap, then carol stays away.
fn presence_story(seed: u64, tweak: impl FnOnce(&mut TurmoilConfig)) -> TurmoilDriver {
    let mut c = config(seed);
    tweak(&mut c);
    let mut d = TurmoilDriver::new(c).unwrap();
    let (alice, bob, carol) = (user("alice"), user("bob"), user("carol"));
    d.run_until(EPOCH_MS + 1_000);
    d.set_presence_privacy(&bob, Visibility::Contacts, std::slice::from_ref(&carol)).unwrap();
    d.run_until(EPOCH_MS + 2_000);
    d.subscribe_presence(&alice, &[bob.clone(), carol.clone()]).unwrap();
    d.subscribe_presence(&carol, std::slice::from_ref(&bob)).unwrap();
    d.run_until(EPOCH_MS + 3_000);
    for _ in 0..4 {
        d.disconnect(&bob);
        d.disconnect(&carol);
        d.run_until(d.now_ms() + 700);
        d.connect(&bob);
        d.connect(&carol);
        d.run_until(d.now_ms() + 1_500);
    }
    d.disconnect(&carol);
    d.run_until(d.now_ms() + 20_000);
    d
}

#[test]
fn presence_respects_privacy_and_the_throttle_and_converges() {
    let mut d = presence_story(16, |_| {});
    let (alice, bob, carol) = (user("alice"), user("bob"), user("carol"));
    assert!(d.violations().is_empty(), "{:#?}", d.violations());
    // Carol is offline now: alice sees "recently", never bob; carol sees bob online.
    let now = d.check_presence();
    assert!(now.is_empty(), "{now:#?}");
    let h = d.history();
    assert_eq!(h.presence.shown.get(&(alice.clone(), carol.clone())), Some(&LastSeen::Recently));
    assert_eq!(h.presence.shown.get(&(alice.clone(), bob.clone())), Some(&LastSeen::LongAgo));
    assert_eq!(h.presence.shown.get(&(carol.clone(), bob.clone())), Some(&LastSeen::Online));
    assert!(h.counts.presence_pushes > 0 && h.counts.presence_pairs_checked >= 2, "{:?}", h.counts);
    assert!(h.presence.settings.contains_key(&bob), "the setting reached the server");
    d.quiesce(120_000);
    let v = d.finish();
    assert!(v.is_empty(), "{v:#?}");
    assert_eq!(d.history().presence.shown.get(&(alice, carol)), Some(&LastSeen::Online));
}

#[test]
fn presence_shown_to_an_excluded_subscriber_is_caught() {
    let mut d = presence_story(16, |c| c.world.server.bugs.presence = Some(PresenceBug::IgnorePrivacy));
    d.quiesce(120_000);
    let v = d.finish();
    assert!(caught(&v, names::PRESENCE_PRIVACY), "{v:#?}");
}

#[test]
fn presence_pushed_without_throttle_is_caught() {
    let mut d = presence_story(16, |c| c.world.server.bugs.presence = Some(PresenceBug::NoThrottle));
    d.quiesce(120_000);
    let v = d.finish();
    assert!(caught(&v, names::PRESENCE_THROTTLE), "{v:#?}");
    assert!(!caught(&v, names::PRESENCE_PRIVACY));
}

#[test]
fn a_client_that_does_not_resubscribe_is_caught_as_presence_that_does_not_converge() {
    let story = |bugs: ClientBugs| {
        let mut c = config(17);
        c.world.client_bugs = bugs;
        let mut d = TurmoilDriver::new(c).unwrap();
        let (alice, carol) = (user("alice"), user("carol"));
        d.run_until(EPOCH_MS + 1_000);
        d.subscribe_presence(&alice, std::slice::from_ref(&carol)).unwrap();
        d.run_until(EPOCH_MS + 3_000);
        d.disconnect(&carol);
        d.run_until(EPOCH_MS + 13_000);
        // The server forgets every subscription; carol comes back meanwhile.
        d.crash_server();
        d.connect(&carol);
        d.quiesce(120_000);
        let v = d.finish();
        (v, d.history().counts.presence_pairs_checked)
    };
    let (clean, checked) = story(ClientBugs::none());
    assert!(clean.is_empty(), "{clean:#?}");
    assert!(checked >= 1, "alice's view of carol was judged");
    let (v, _) = story(ClientBugs::none().with(ClientBug::NoPresenceResubscribe));
    assert!(caught(&v, names::PRESENCE_CONVERGES), "{v:#?}");
}

/// Alice and bob talk, carol sends bob an attachment, then bob's device is
/// copied. Returns the driver and how many ciphertexts the copy was tried on.
fn conversation_then_compromise(bugs: ClientBugs) -> (TurmoilDriver, u64) {
    let mut c = config(19);
    c.world.client_bugs = bugs;
    c.world.record_ciphertexts = true;
    c.world.faults = Faults { drop_per_mille: 30, duplicate_per_mille: 30, latency_min_ms: 2, latency_max_ms: 10 };
    let mut d = TurmoilDriver::new(c).unwrap();
    let (alice, bob, carol) = (user("alice"), user("bob"), user("carol"));
    d.run_until(EPOCH_MS + 3_000);
    for i in 0..4u64 {
        d.send_text(&alice, &bob, &plaintext(19, i)).unwrap();
        d.run_until(d.now_ms() + 200);
        d.send_text(&bob, &alice, &plaintext(19, 10 + i)).unwrap();
        d.run_until(d.now_ms() + 200);
    }
    d.send_media(&carol, &bob, &media_bytes(19, 21, 5_000)).unwrap().unwrap();
    d.run_until(d.now_ms() + 15_000);
    d.compromise(&bob).unwrap();
    let h = d.history();
    let tried = h.counts.adversary_attempts;
    let shown = h.decrypted.iter().filter(|(r, _)| *r == bob).count() as u64;
    assert_eq!(tried, shown, "every message bob's app was shown was tried");
    assert_eq!(h.compromised.len(), 1);
    (d, tried)
}

#[test]
fn a_stolen_state_reads_nothing_already_received() {
    let (mut d, tried) = conversation_then_compromise(ClientBugs::none());
    assert!(tried >= 5, "bob had received texts and an attachment: {tried}");
    assert!(d.violations().is_empty(), "{:#?}", d.violations());
    assert_eq!(d.history().counts.compromises, 1);
    d.quiesce(60_000);
    let v = d.finish();
    assert!(v.is_empty(), "{v:#?}");
}

#[test]
fn a_client_keeping_used_message_keys_is_caught_by_a_compromise() {
    let (d, _) = conversation_then_compromise(ClientBugs::none().with(ClientBug::KeepUsedMessageKeys));
    assert!(caught(d.violations(), names::FORWARD_SECRECY), "{:#?}", d.violations());
}

/// A small scenario with every capability the turmoil driver lacked before:
/// attachments, presence with a privacy setting and flapping, a compromise,
/// and latency bounds and counters as guards.
const MIXED: &str = r#"
[scenario]
name = "media-presence-compromise"
description = "Texts and attachments; alice follows bob and carol; bob hides; carol flaps; bob's device is copied."
duration = "12s"
seed = 1

[users]
names = ["alice", "bob", "carol"]

[workload]
direct_per_s = 2
media_per_s = 0.5
media_bytes = { min = 1000, max = 20000 }
read_delay = { min = "200ms", max = "1s" }

[[workload.flap]]
users = ["carol"]
offline_for = { min = "1s", max = "2s" }
online_for = { min = "1s", max = "2s" }
from = "2s"
until = "8s"

[presence]
subscriptions = [{ users = ["alice"], to = ["bob", "carol"] }]
privacy = [{ users = ["bob"], visibility = "nobody" }]

[network]
latency = { min = "5ms", max = "20ms" }
loss_per_mille = 10

[[faults.compromise]]
at = "9s"
users = ["bob"]

[expect]
p50_delivery_online_ms = 500
at_least = { media_deliveries = 1, adversary_attempts = 1, presence_shown = 1, latency_samples = 10 }
"#;

fn run_mixed(driver: DriverKind, seed: u64) -> RunOutcome {
    let s = bluetick_sim::scenario::from_str("mixed.toml", MIXED).unwrap_or_else(|e| panic!("{e}"));
    run::run(&s, &RunOptions { seed, driver: Some(driver), ..RunOptions::default() }).unwrap()
}

fn why(o: &RunOutcome) -> String {
    o.violated()
        .map(|v| format!("{}: {:?}", v.invariant, v.first.first().map(|f| &f.detail)))
        .chain(o.failed_guards().map(|g| format!("guard {}: {}", g.name, g.detail)))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn media_presence_and_a_compromise_get_the_same_verdicts_on_both_drivers() {
    let direct = run_mixed(DriverKind::Direct, 3);
    let turmoil = run_mixed(DriverKind::Turmoil, 3);
    assert!(direct.passed, "direct:\n{}", why(&direct));
    assert!(turmoil.passed, "turmoil:\n{}", why(&turmoil));
    let states = |o: &RunOutcome| -> BTreeMap<String, VerdictState> {
        o.verdicts.iter().map(|v| (v.invariant.clone(), v.state)).collect()
    };
    // Equal wherever both judge; what turmoil cannot judge says so instead
    // of claiming "held".
    let mut expected = states(&direct);
    for inv in bluetick_sim::invariants::ALL {
        if bluetick_sim::invariants::not_judged_by(inv, DriverKind::Turmoil).is_some() {
            expected.insert(inv.name.to_owned(), VerdictState::NotChecked);
        }
    }
    assert_eq!(expected, states(&turmoil));
    assert_eq!(states(&turmoil)[names::RETENTION], VerdictState::NotChecked);
    let judged = states(&turmoil);
    for inv in [names::FORWARD_SECRECY, names::PRESENCE_PRIVACY, names::PRESENCE_CONVERGES, names::EXACTLY_ONCE] {
        assert_eq!(judged[inv], VerdictState::Held, "{inv}");
    }
    // Every guard (declared faults fire, counters, the latency bound) on both.
    let guards = |o: &RunOutcome| o.guards.iter().map(|g| (g.name.clone(), g.passed)).collect::<Vec<_>>();
    assert_eq!(guards(&direct), guards(&turmoil));
    for o in [&direct, &turmoil] {
        assert_eq!(o.counts["app_deliveries"], o.counts["messages_sent"], "{}", o.driver);
        assert!(o.counts["presence_pairs_checked"] > 0, "{}: {:?}", o.driver, o.counts);
    }
}

#[test]
fn a_mixed_scenario_on_turmoil_gives_the_same_trace_hash_for_the_same_seed() {
    let a = run_mixed(DriverKind::Turmoil, 4);
    let b = run_mixed(DriverKind::Turmoil, 4);
    assert_eq!(a.trace_hash, b.trace_hash);
    assert!(a.trace_lines > 100);
}

#[test]
fn delete_on_send_still_fails_on_turmoil() {
    let path = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scenarios/broken/delete-on-send.toml");
    let mut s = bluetick_sim::scenario::load(&path).unwrap_or_else(|e| panic!("{e}"));
    // What is lost stays lost: waiting the file's five minutes for it only costs time.
    s.converge_within_ms = 20_000;
    let o =
        run::run(&s, &RunOptions { seed: s.seed, driver: Some(DriverKind::Turmoil), ..RunOptions::default() }).unwrap();
    assert!(!o.passed);
    assert!(o.violated().any(|v| v.invariant == names::AT_LEAST_ONCE), "{}", why(&o));
}
