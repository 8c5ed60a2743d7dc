//! One deterministic story per capability the scenario simulator drives
//! through the `World`: targeted faults, partitions, clock offsets, group
//! membership over time, presence, media and compromise. Each check is also
//! shown to fire on a deliberately broken variant (a run-time bug switch).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use bluetick_core::client::{ClientBug, ClientBugs, DeliveryState};
use bluetick_core::ids::UserId;
use bluetick_core::server::mailbox::MailboxBug;
use bluetick_core::server::presence::PresenceBug;
use bluetick_core::store::{Store, Table};
use bluetick_core::wire::{ErrorCode, LastSeen, Visibility};
use bluetick_core::world::faults::{Direction, FrameFault};
use bluetick_core::world::oracle::{names, Violation};
use bluetick_core::world::{media_bytes, plaintext, Faults, World, WorldConfig, PARTITION_DROP_AFTER_MS};

const USERS: [&str; 4] = ["alice", "bob", "carol", "dave"];

fn world(seed: u64, tweak: impl FnOnce(&mut WorldConfig)) -> (World, Vec<UserId>) {
    let mut config = WorldConfig::new(seed, &USERS).unwrap();
    config.trace = true;
    tweak(&mut config);
    let users = config.users.clone();
    let mut w = World::new(config);
    w.run_for(1_000);
    (w, users)
}

fn finish_clean(w: &mut World) {
    w.quiesce(300_000);
    let v = w.finish().to_vec();
    assert!(v.is_empty(), "{v:#?}\n{}", w.describe());
}

fn caught(v: &[Violation], invariant: &str) -> bool {
    v.iter().any(|v| v.invariant == invariant)
}

fn drop_rule(kind: &str, direction: Direction, user: &UserId) -> FrameFault {
    FrameFault {
        kind: Some(kind.to_string()),
        direction: Some(direction),
        user: Some(user.clone()),
        drop_per_mille: 1000,
        duplicate_per_mille: 0,
        delay_ms: 0,
    }
}

// ----- targeted faults, partitions, clocks, trace -----

/// What the reports count moves with what happened: steps, server crashes,
/// and a 1:1 "mark read" that reads the 1:1 conversation, never the group
/// messages of the same peer.
#[test]
fn steps_server_crashes_and_one_to_one_reads_are_counted_as_they_happen() {
    let (mut w, u) = world(12, |_| {});
    let steps = w.steps();
    assert!(steps > 0);
    let g = w.create_group(&u[0], &[u[1].clone()]).unwrap();
    w.run_for(5_000);
    let direct = w.send_text(&u[0], &u[1], &plaintext(12, 0)).unwrap();
    let grouped = w.send_group(&u[0], g, &plaintext(12, 1)).unwrap();
    w.run_for(5_000);
    assert!(w.steps() > steps);
    w.mark_read(&u[1], &u[0]);
    let read = &w.history().read;
    assert!(read.contains(&(u[1].clone(), direct)));
    assert!(!read.contains(&(u[1].clone(), grouped)), "a 1:1 read marked a group message read");
    w.mark_group_read(&u[1], g);
    assert!(w.history().read.contains(&(u[1].clone(), grouped)), "the group read is recorded");
    w.crash_server();
    w.crash_server();
    assert_eq!(w.history().counts.server_crashes, 2);
    finish_clean(&mut w);
}

#[test]
fn a_targeted_fault_fires_is_counted_and_traced_and_delivery_survives_it() {
    let (mut w, u) = world(11, |_| {});
    let rule = w.add_frame_fault(drop_rule("delivery-ack", Direction::ToServer, &u[1]));
    let dup = w.add_frame_fault(FrameFault {
        kind: Some("deliver-receipt".into()),
        direction: None,
        user: None,
        drop_per_mille: 0,
        duplicate_per_mille: 1000,
        delay_ms: 300,
    });
    let ids: Vec<_> = (0..3).map(|i| w.send_text(&u[0], &u[1], &plaintext(11, i)).unwrap()).collect();
    w.run_for(25_000);
    let counts = &w.history().counts;
    let acks = &counts.frame_faults[rule];
    assert!(acks.fired() && acks.dropped == acks.matched && acks.dropped > 0, "{acks:?}");
    assert!(counts.redeliveries > 0, "dropped acks make the server hand the same items out again");
    assert!(counts.frame_faults[dup].duplicated > 0 && counts.frame_faults[dup].delayed > 0);
    assert!(counts.frames_duplicated >= counts.frame_faults[dup].duplicated, "{counts:?}");
    assert!(w.trace().iter().any(|t| t.detail.contains("kind=delivery-ack") && t.detail.contains("fate=dropped")));
    assert!(counts.frames_delayed >= counts.frame_faults[dup].delayed, "{counts:?}");
    let cleared = |w: &World| w.trace().iter().filter(|t| t.event == "frame-faults-cleared").count();
    assert_eq!(cleared(&w), 0);
    w.clear_frame_faults();
    assert_eq!(cleared(&w), 1, "noted when armed faults are cleared");
    w.clear_frame_faults();
    assert_eq!(cleared(&w), 1, "not noted when there were none");
    finish_clean(&mut w);
    for id in ids {
        assert_eq!(w.history().received.get(&(u[1].clone(), id)), Some(&1));
    }
}

#[test]
fn the_same_seed_gives_the_same_trace_and_another_seed_another() {
    let trace = |seed: u64| {
        let (mut w, u) = world(seed, |c| {
            c.faults = Faults { drop_per_mille: 80, duplicate_per_mille: 80, latency_min_ms: 1, latency_max_ms: 40 }
        });
        w.add_frame_fault(drop_rule("send", Direction::ToServer, &u[0]));
        for i in 0..6u64 {
            w.send_text(&u[(i % 3) as usize], &u[((i + 1) % 3) as usize], &plaintext(seed, i));
            w.run_for(300);
        }
        w.partition(&u[2..3], None);
        w.run_for(2_000);
        w.heal();
        w.quiesce(120_000);
        assert!(w.finish().is_empty(), "{:#?}", w.violations());
        let lines: Vec<String> = w.trace().iter().map(|t| format!("{} {} {}", t.at_ms, t.event, t.detail)).collect();
        lines.join("\n")
    };
    let a = trace(21);
    assert!(a.contains("partition") && a.contains("fate=dropped"), "the trace records faults");
    assert_eq!(a, trace(21));
    assert_ne!(a, trace(22));
}

#[test]
fn a_partitioned_user_times_out_and_everything_converges_after_heal() {
    let (mut w, u) = world(12, |_| {});
    w.send_text(&u[0], &u[1], &plaintext(12, 0)).unwrap();
    w.run_for(2_000);
    w.partition(&u[1..2], None);
    let during: Vec<_> = (1..4).map(|i| w.send_text(&u[0], &u[1], &plaintext(12, i)).unwrap()).collect();
    let from_bob = w.send_text(&u[1], &u[0], &plaintext(12, 9)).unwrap();
    w.run_for(PARTITION_DROP_AFTER_MS + 5_000);
    let counts = w.history().counts.clone();
    assert!(counts.frames_partitioned > 0 && counts.partition_timeouts == 1, "{counts:?}");
    assert!(!w.history().received.contains_key(&(u[1].clone(), during[0])), "nothing crosses a cut");
    assert!(w.client(&u[1]).is_some_and(|c| !c.is_ready()), "the cut connection was dropped");
    w.heal();
    w.run_for(10_000);
    for id in &during {
        assert_eq!(w.history().received.get(&(u[1].clone(), *id)), Some(&1), "{}", w.describe());
    }
    assert_eq!(w.history().received.get(&(u[0].clone(), from_bob)), Some(&1));
    finish_clean(&mut w);
}

#[test]
fn a_one_way_partition_loses_only_one_direction() {
    let (mut w, u) = world(13, |_| {});
    w.send_text(&u[0], &u[1], &plaintext(13, 0)).unwrap();
    w.run_for(2_000);
    // Bob hears the server but cannot answer: deliveries arrive, acks do not.
    w.partition(&u[1..2], Some(Direction::ToServer));
    let id = w.send_text(&u[0], &u[1], &plaintext(13, 1)).unwrap();
    w.run_for(3_000);
    assert_eq!(w.history().received.get(&(u[1].clone(), id)), Some(&1));
    assert_ne!(w.history().status.get(&(id, u[1].clone())), Some(&DeliveryState::Delivered));
    w.heal();
    finish_clean(&mut w);
    assert_eq!(w.history().status.get(&(id, u[1].clone())), Some(&DeliveryState::Delivered));
}

#[test]
fn skewed_client_clocks_change_no_outcome() {
    let mut config = WorldConfig::new(14, &USERS).unwrap();
    config.faults = Faults { drop_per_mille: 100, duplicate_per_mille: 50, latency_min_ms: 2, latency_max_ms: 20 };
    let u = config.users.clone();
    let mut w = World::new(config);
    // Skew from the start: a clock stepped back later delays the client's
    // pending timers by the step, as a wall clock used for timers would.
    w.set_clock_offset(&u[2], i64::MIN);
    assert_eq!(w.client_now(&u[2]), 0, "saturates at 0");
    w.set_clock_offset(&u[0], 3_600_000);
    w.set_clock_offset(&u[1], -86_400_000);
    w.set_clock_offset(&u[2], -400 * 86_400_000);
    assert_eq!(w.client_now(&u[0]), w.now_ms() + 3_600_000);
    w.run_for(1_000);
    let mut ids = vec![];
    for i in 0..6u64 {
        let (a, b) = ((i % 3) as usize, ((i + 1) % 3) as usize);
        ids.push((u[b].clone(), w.send_text(&u[a], &u[b], &plaintext(14, i)).unwrap()));
        w.run_for(500);
    }
    finish_clean(&mut w);
    for (to, id) in ids {
        assert_eq!(w.history().received.get(&(to, id)), Some(&1));
    }
}

// ----- groups over time -----

/// Alice's group with bob and carol; carol is removed after alice's first
/// message, dave added; alice then sends again.
fn churn(w: &mut World, u: &[UserId]) -> (bluetick_core::ids::MessageId, bluetick_core::ids::MessageId) {
    let g = w.create_group(&u[0], &u[1..3]).unwrap();
    w.run_for(5_000);
    let before = w.send_group(&u[0], g, &plaintext(15, 1)).unwrap();
    w.run_for(5_000);
    assert!(w.change_group(&u[0], g, &[u[3].clone()], &[u[2].clone()]));
    w.run_for(5_000);
    let after = w.send_group(&u[0], g, &plaintext(15, 2)).unwrap();
    (before, after)
}

#[test]
fn a_removed_member_cannot_read_later_group_messages_and_a_new_one_can() {
    let (mut w, u) = world(15, |c| {
        c.faults = Faults { drop_per_mille: 50, duplicate_per_mille: 50, latency_min_ms: 2, latency_max_ms: 20 }
    });
    let (before, after) = churn(&mut w, &u);
    finish_clean(&mut w);
    let h = w.history();
    assert_eq!(h.received.get(&(u[2].clone(), before)), Some(&1), "carol read what was sent while she was in");
    assert_eq!(h.received.get(&(u[2].clone(), after)), None);
    assert_eq!(h.received.get(&(u[1].clone(), after)), Some(&1));
    assert_eq!(h.received.get(&(u[3].clone(), after)), Some(&1), "dave, added, reads it");
    assert!(h.sent[&after].to.contains(&u[3]) && !h.sent[&after].to.contains(&u[2]));
    assert!(h.counts.removed_member_attempts > 0, "carol's keys were tried against the later message");
    assert!(h.counts.group_changes == 1);
}

#[test]
fn a_sender_key_kept_after_a_removal_is_caught() {
    let (mut w, u) = world(15, |c| c.client_bugs = ClientBugs::none().with(ClientBug::NoRotationOnRemove));
    let (_, after) = churn(&mut w, &u);
    w.quiesce(300_000);
    let v = w.finish().to_vec();
    assert!(caught(&v, names::REMOVED_MEMBER_CANNOT_READ), "{v:#?}");
    assert_eq!(w.history().received.get(&(u[2].clone(), after)), None, "the server did not route it to carol");
}

// ----- presence -----

/// Alice follows bob (who lets only carol see him) and carol; both flap.
fn presence_story(seed: u64, tweak: impl FnOnce(&mut WorldConfig)) -> (World, Vec<UserId>) {
    let (mut w, u) = world(seed, tweak);
    assert!(w.set_presence_privacy(&u[1], Visibility::Contacts, &[u[2].clone()]));
    w.run_for(1_000);
    assert!(w.subscribe_presence(&u[0], &[u[1].clone(), u[2].clone()]));
    assert!(w.subscribe_presence(&u[2], &[u[1].clone()]));
    w.run_for(1_000);
    for _ in 0..4 {
        w.disconnect(&u[1]);
        w.disconnect(&u[2]);
        w.run_for(700);
        w.connect(&u[1]);
        w.connect(&u[2]);
        w.run_for(1_500);
    }
    w.disconnect(&u[2]);
    w.run_for(20_000);
    (w, u)
}

#[test]
fn presence_respects_privacy_and_the_throttle_and_converges() {
    let (mut w, u) = presence_story(16, |_| {});
    // Carol is offline now: alice must see "recently", and never bob.
    let now = w.check_presence();
    assert!(now.is_empty(), "{now:#?}");
    let h = w.history();
    assert_eq!(h.presence.shown.get(&(u[0].clone(), u[2].clone())), Some(&LastSeen::Recently));
    assert_eq!(h.presence.shown.get(&(u[0].clone(), u[1].clone())), Some(&LastSeen::LongAgo));
    assert_eq!(h.presence.shown.get(&(u[2].clone(), u[1].clone())), Some(&LastSeen::Online));
    assert!(h.counts.presence_pushes > 0 && h.counts.presence_pairs_checked >= 2, "{:?}", h.counts);
    finish_clean(&mut w);
    assert_eq!(w.history().presence.shown.get(&(u[0].clone(), u[2].clone())), Some(&LastSeen::Online));
}

#[test]
fn presence_shown_to_an_excluded_subscriber_is_caught() {
    let (mut w, _) = presence_story(16, |c| c.server.bugs.presence = Some(PresenceBug::IgnorePrivacy));
    w.quiesce(120_000);
    assert!(caught(w.finish(), names::PRESENCE_PRIVACY));
}

#[test]
fn presence_pushed_without_throttle_is_caught() {
    let (mut w, _) = presence_story(16, |c| c.server.bugs.presence = Some(PresenceBug::NoThrottle));
    w.quiesce(120_000);
    let v = w.finish();
    assert!(caught(v, names::PRESENCE_THROTTLE), "{v:#?}");
    assert!(!caught(v, names::PRESENCE_PRIVACY));
}

#[test]
fn a_client_that_does_not_resubscribe_is_caught_as_presence_that_does_not_converge() {
    let story = |bugs: ClientBugs| {
        let (mut w, u) = world(17, |c| c.client_bugs = bugs);
        assert!(w.subscribe_presence(&u[0], &[u[2].clone()]));
        w.run_for(2_000);
        w.disconnect(&u[2]);
        w.run_for(10_000);
        // The server forgets every subscription; carol comes back meanwhile.
        w.crash_server();
        w.connect(&u[2]);
        w.quiesce(120_000);
        w.finish().to_vec()
    };
    assert!(story(ClientBugs::none()).is_empty());
    assert!(caught(&story(ClientBugs::none().with(ClientBug::NoPresenceResubscribe)), names::PRESENCE_CONVERGES));
}

// ----- media -----

#[test]
fn media_under_ten_percent_loss_is_delivered_exactly_once() {
    let (mut w, u) = world(18, |c| {
        c.faults = Faults { drop_per_mille: 100, duplicate_per_mille: 50, latency_min_ms: 10, latency_max_ms: 10 };
        c.verify_saves = true;
    });
    let sizes = [1_000usize, 200_000, 64 * 1024];
    let mut ids = vec![];
    for (i, len) in sizes.iter().enumerate() {
        ids.push(w.send_media(&u[0], &u[1], &media_bytes(18, i as u64, *len)).unwrap());
        w.run_for(300);
    }
    w.run_for(1_000);
    w.crash_client(&u[1]);
    w.run_for(400);
    w.crash_client(&u[0]);
    w.run_for(30_000);
    w.mark_read(&u[1], &u[0]);
    finish_clean(&mut w);
    let h = w.history();
    for id in &ids {
        assert_eq!(h.received.get(&(u[1].clone(), *id)), Some(&1));
        assert!(h.decrypted.contains(&(u[1].clone(), *id)), "shown with its bytes (the oracle compared them)");
    }
    assert_eq!(h.counts.media_deliveries, 3);
    assert!(h.counts.frames_dropped > 0);
}

// ----- compromise -----

fn conversation_then_compromise(bugs: ClientBugs) -> (World, u64) {
    let (mut w, u) = world(19, |c| {
        c.client_bugs = bugs;
        c.faults = Faults { drop_per_mille: 30, duplicate_per_mille: 30, latency_min_ms: 2, latency_max_ms: 10 };
    });
    // Registration can take a while under loss (a lost Challenge waits for
    // the server's auth timeout), and the server refuses groups naming
    // unregistered users.
    w.run_for(15_000);
    let g = w.create_group(&u[0], &u[1..3]).unwrap();
    w.run_for(3_000);
    for i in 0..4u64 {
        w.send_text(&u[0], &u[1], &plaintext(19, i)).unwrap();
        w.run_for(200);
        w.send_text(&u[1], &u[0], &plaintext(19, 10 + i)).unwrap();
        w.run_for(200);
    }
    w.send_group(&u[0], g, &plaintext(19, 20)).unwrap();
    w.send_media(&u[2], &u[1], &media_bytes(19, 21, 5_000)).unwrap();
    w.run_for(20_000);
    let tried = w.compromise(&u[1]).unwrap();
    let shown = w.history().decrypted.iter().filter(|(r, _)| *r == u[1]).count() as u64;
    assert_eq!(tried, shown, "every message bob's app was shown was tried: {}", w.describe());
    (w, tried)
}

#[test]
fn a_stolen_state_reads_nothing_already_received() {
    let (mut w, tried) = conversation_then_compromise(ClientBugs::none());
    assert!(tried >= 6, "bob had received texts, a group message and an attachment: {tried}");
    assert!(w.violations().is_empty(), "{:#?}", w.violations());
    assert_eq!(w.history().counts.compromises, 1);
    assert_eq!(w.history().counts.adversary_attempts, tried, "the report counts every attempt");
    finish_clean(&mut w);
}

#[test]
fn a_client_keeping_used_message_keys_is_caught_by_a_compromise() {
    let (w, _) = conversation_then_compromise(ClientBugs::none().with(ClientBug::KeepUsedMessageKeys));
    assert!(caught(w.violations(), names::FORWARD_SECRECY), "{:#?}", w.violations());
}

// ----- order and retention -----

#[test]
fn a_mailbox_handing_out_newest_first_is_caught_as_out_of_order() {
    let (mut w, u) = world(20, |c| c.server.bugs.mailbox = Some(MailboxBug::NewestFirst));
    w.disconnect(&u[1]);
    for i in 0..5 {
        w.send_text(&u[0], &u[1], &plaintext(20, i)).unwrap();
        w.run_for(100);
    }
    w.connect(&u[1]);
    w.run_for(3_000);
    assert!(caught(w.violations(), names::ORDER), "{:#?}", w.violations());
}

#[test]
fn an_offline_backlog_is_handed_out_in_order() {
    let (mut w, u) = world(20, |_| {});
    w.disconnect(&u[1]);
    for i in 0..5 {
        w.send_text(&u[0], &u[1], &plaintext(20, i)).unwrap();
        w.run_for(100);
    }
    w.connect(&u[1]);
    finish_clean(&mut w);
}

#[test]
fn entries_kept_past_their_ttl_or_after_their_ack_are_caught_as_retention() {
    let (mut w, u) = world(21, |c| {
        c.server.bugs.mailbox = Some(MailboxBug::NeverExpire);
        c.server.ttl_text_ms = 30_000;
    });
    w.disconnect(&u[1]);
    w.send_text(&u[0], &u[1], &plaintext(21, 1)).unwrap();
    w.run_for(40_000);
    assert!(caught(w.violations(), names::RETENTION), "{:#?}", w.violations());

    let (mut w, u) = world(21, |c| c.server.bugs.mailbox = Some(MailboxBug::IgnoreAck));
    w.send_text(&u[0], &u[1], &plaintext(21, 2)).unwrap();
    w.run_for(3_000);
    assert!(caught(w.violations(), names::RETENTION), "{:#?}", w.violations());
}

/// Regression (found by the 1,024-member churn scenario, where 5,387 such
/// reports hid the real failures): a client that outruns the server's frame
/// rate limit has frames refused unread, delivery-acks among them. Such an ack
/// never reached the server's logic, so `retention` must not blame the
/// server for still holding what it acked. The burst here (a backlog of 600
/// messages draining at once) does trip the limit, as the refusals show.
#[test]
fn a_delivery_ack_refused_by_the_rate_limit_is_not_taken_as_an_ack() {
    // Clients pace themselves under the default limit (see the next test),
    // so this server's is tighter than their pace.
    let (mut w, u) = world(22, |c| {
        c.server.frames_per_second_max = 40;
        c.server.frames_burst_max = 80;
    });
    w.disconnect(&u[1]);
    for i in 0..600 {
        w.send_text(&u[0], &u[1], &plaintext(22, i)).unwrap();
    }
    w.run_for(5_000);
    w.connect(&u[1]);
    w.run_for(10_000);
    let refused = w.server().stats().errors.get(&ErrorCode::LimitExceeded).copied().unwrap_or(0);
    assert!(refused > 0, "the backlog should trip the rate limit");
    assert!(!caught(w.violations(), names::RETENTION), "{:#?}", w.violations());
    finish_clean(&mut w);
}

/// Lazy saving (the World encodes a client's save only when a crash, a
/// compromise or a removed member's copy needs it) is exact only if a client
/// that says it is clean really is. With `verify_saves` the World checks that
/// after every call; a client hiding a change from its dirty flag is caught.
#[test]
fn a_client_hiding_a_change_from_its_dirty_flag_is_caught_when_saves_are_verified() {
    let run = |bugs: ClientBugs| {
        let (mut w, u) = world(23, |c| {
            c.verify_saves = true;
            c.client_bugs = bugs;
        });
        w.send_text(&u[0], &u[1], &plaintext(23, 1)).unwrap();
        w.run_for(3_000);
        w.violations().to_vec()
    };
    assert!(run(ClientBugs::none()).is_empty());
    let v = run(ClientBugs::none().with(ClientBug::ForgetDirtyOnServerAck));
    assert!(caught(&v, "client-dirty-flag"), "{v:#?}");
}

// ----- background knobs and the cipher suite -----

/// The background duplication knob really sends second copies, and the
/// clients' dedup absorbs them (counted on both sides).
#[test]
fn background_duplication_sends_copies_that_dedup_absorbs() {
    let (mut w, u) = world(13, |c| {
        c.faults = Faults { drop_per_mille: 0, duplicate_per_mille: 300, latency_min_ms: 5, latency_max_ms: 40 };
    });
    let ids: Vec<_> = (0..10).map(|i| w.send_text(&u[0], &u[1], &plaintext(13, i)).unwrap()).collect();
    w.run_for(10_000);
    let counts = w.history().counts.clone();
    assert!(counts.frames_duplicated > 0 && counts.duplicates_suppressed > 0, "{counts:?}");
    w.set_faults(false);
    finish_clean(&mut w);
    for id in ids {
        assert_eq!(w.history().received.get(&(u[1].clone(), id)), Some(&1));
    }
}

/// A world of symbolic-suite devices runs (its server checks their login
/// proofs and prekey signatures under the same suite) and delivers.
#[test]
fn a_world_on_the_symbolic_suite_delivers() {
    let (mut w, u) = world(14, |c| c.suite = bluetick_crypto::CipherSuite::SymbolicInsecure);
    let id = w.send_text(&u[0], &u[1], &plaintext(14, 0)).unwrap();
    w.run_for(5_000);
    assert_eq!(w.history().received.get(&(u[1].clone(), id)), Some(&1));
    finish_clean(&mut w);
}

/// A targeted duplicate rule really sends the second copy (not only counts
/// it): the recipient's dedup sees it.
#[test]
fn a_targeted_duplicate_rule_sends_a_copy_that_dedup_absorbs() {
    let (mut w, u) = world(15, |_| {});
    w.add_frame_fault(FrameFault {
        kind: Some("deliver-envelope".into()),
        direction: None,
        user: Some(u[1].clone()),
        drop_per_mille: 0,
        duplicate_per_mille: 1000,
        delay_ms: 0,
    });
    let id = w.send_text(&u[0], &u[1], &plaintext(15, 0)).unwrap();
    w.run_for(5_000);
    assert!(w.history().counts.duplicates_suppressed > 0, "{:?}", w.history().counts);
    w.clear_frame_faults();
    finish_clean(&mut w);
    assert_eq!(w.history().received.get(&(u[1].clone(), id)), Some(&1));
}

/// Carol is offline while Bob first writes to the group and while Alice
/// removes her, so Bob's sender key reaches her after the removal was made
/// and before her device applies it. The adversary's copy of a removed
/// member follows her device until then; a copy frozen at the removal would
/// lack Bob's key and miss that Bob, who does not rotate, stays readable.
#[test]
fn a_removed_members_copy_follows_her_device_until_she_applies_the_removal() {
    let (mut w, u) = world(15, |c| c.client_bugs = ClientBugs::none().with(ClientBug::NoRotationOnRemove));
    let g = w.create_group(&u[0], &u[1..3]).unwrap();
    w.run_for(5_000);
    w.disconnect(&u[2]);
    w.run_for(1_000);
    w.send_group(&u[1], g, &plaintext(15, 1)).unwrap();
    w.run_for(5_000);
    assert!(w.change_group(&u[0], g, &[], &[u[2].clone()]));
    w.run_for(1_000);
    w.connect(&u[2]);
    w.run_for(5_000);
    let after = w.send_group(&u[1], g, &plaintext(15, 2)).unwrap();
    w.quiesce(300_000);
    let v = w.finish().to_vec();
    assert!(caught(&v, names::REMOVED_MEMBER_CANNOT_READ), "{v:#?}");
    assert_eq!(w.history().received.get(&(u[2].clone(), after)), None);
}

/// Every frame the server read counts as delivered, and so does at least
/// every delivery it handed out (no faults, nobody disconnects here).
#[test]
fn frames_delivered_counts_both_directions() {
    let (mut w, u) = world(16, |_| {});
    for i in 0..5 {
        w.send_text(&u[0], &u[1], &plaintext(16, i)).unwrap();
    }
    finish_clean(&mut w);
    let stats = w.server().stats();
    assert!(stats.frames_in > 0 && stats.deliveries >= 5);
    let counted = w.history().counts.frames_delivered;
    assert!(counted >= stats.frames_in + stats.deliveries, "{counted} < {} + {}", stats.frames_in, stats.deliveries);
}

/// A group message is stored once for all its recipients, with a count of
/// the mailbox entries that share it. A server that restarts while it is
/// queued for two offline members must count both again, or it would drop
/// the body as unreferenced and the members would never get the message.
#[test]
fn a_shared_group_body_queued_across_a_server_restart_reaches_every_member() {
    let (mut w, u) = world(17, |_| {});
    let g = w.create_group(&u[0], &u[1..3]).unwrap();
    w.run_for(5_000);
    w.send_group(&u[0], g, &plaintext(17, 0)).unwrap();
    w.run_for(5_000);
    w.disconnect(&u[1]);
    w.disconnect(&u[2]);
    w.run_for(1_000);
    let queued = w.send_group(&u[0], g, &plaintext(17, 1)).unwrap();
    w.run_for(2_000);
    let bodies = |w: &World| Store::stats(w.store()).unwrap()[&Table::Bodies].entries;
    assert_eq!(bodies(&w), 1, "one body, queued for both members");
    w.crash_server();
    w.run_for(1_000);
    w.connect(&u[1]);
    w.connect(&u[2]);
    finish_clean(&mut w);
    for member in &u[1..3] {
        assert!(w.history().decrypted.contains(&(member.clone(), queued)), "{member:?}");
    }
    assert_eq!(bodies(&w), 0, "freed once both acked");
}

/// The backlog of `a_delivery_ack_refused_by_the_rate_limit_is_not_taken_as_an_ack`
/// (600 messages draining at once), under the default limit: the receiving
/// client paces its acks (merging those that wait) and the server refuses
/// nothing, where before this backlog tripped the limit.
#[test]
fn a_backlog_drains_without_tripping_the_servers_frame_limit() {
    let (mut w, u) = world(22, |_| {});
    w.disconnect(&u[1]);
    for i in 0..600 {
        w.send_text(&u[0], &u[1], &plaintext(22, i)).unwrap();
    }
    w.run_for(5_000);
    w.connect(&u[1]);
    finish_clean(&mut w);
    let stats = w.server().stats();
    assert_eq!(stats.errors.get(&ErrorCode::LimitExceeded), None, "{:?}", stats.errors);
    assert!(stats.acked >= 600);
}

/// Attachments of a run are told apart by their first bytes, across
/// messages and across runs.
#[test]
fn attachment_bytes_differ_per_message_and_per_run() {
    let mut firsts = std::collections::BTreeSet::new();
    for seed in 0..4 {
        for n in 0..64 {
            let bytes = media_bytes(seed, n, 16);
            assert_eq!(bytes.len(), 16);
            assert!(firsts.insert(bytes), "seed {seed}, message {n} repeats another attachment");
        }
    }
    assert_eq!(media_bytes(3, 5, 100), media_bytes(3, 5, 100), "deterministic");
}

/// Right after a followed user's presence changes, the pair is excused,
/// not judged; once quiet for the settle time it is judged.
#[test]
fn presence_pairs_not_yet_settled_are_excused_then_judged() {
    let (mut w, u) = world(21, |_| {});
    assert!(w.subscribe_presence(&u[0], &[u[1].clone(), u[2].clone()]));
    w.run_for(w.presence_settle_ms() + 1_000);
    w.disconnect(&u[1]);
    w.run_for(500);
    let before = w.history().counts.clone();
    assert!(w.check_presence().is_empty());
    let after = w.history().counts.clone();
    assert_eq!(after.presence_pairs_excused - before.presence_pairs_excused, 1, "{after:?}");
    assert_eq!(after.presence_pairs_checked - before.presence_pairs_checked, 1, "u2 is quiet");
    w.run_for(w.presence_settle_ms() + 1_000);
    let before = w.history().counts.clone();
    assert!(w.check_presence().is_empty());
    let after = w.history().counts.clone();
    assert_eq!(after.presence_pairs_checked - before.presence_pairs_checked, 2, "{after:?}");
    assert_eq!(after.presence_pairs_excused, before.presence_pairs_excused);
}

/// A push the network delays may land after a newer one and leave the app
/// showing the older presence; only the next subscribe reply (a full
/// refresh) makes the pair judged again, not another push.
#[test]
fn a_push_overtaken_by_a_newer_one_keeps_its_pair_excused() {
    let (mut w, u) = world(22, |_| {});
    assert!(w.subscribe_presence(&u[0], &[u[1].clone()]));
    w.run_for(w.presence_settle_ms() + 1_000);
    let slow = w.add_frame_fault(FrameFault {
        kind: Some("presence".into()),
        direction: Some(Direction::ToClient),
        user: Some(u[0].clone()),
        drop_per_mille: 0,
        duplicate_per_mille: 0,
        delay_ms: 12_000,
    });
    w.disconnect(&u[1]);
    w.run_for(500);
    w.clear_frame_faults();
    w.run_for(1_000);
    w.connect(&u[1]);
    w.run_for(30_000);
    assert!(w.history().counts.frame_faults[slow].delayed > 0, "the push went out late");
    let now = w.check_presence();
    assert!(now.is_empty(), "{now:#?}");
    // The next subscribe reply is a full refresh: the pair is judged again.
    let excused = w.history().counts.presence_pairs_excused;
    w.disconnect(&u[0]);
    w.run_for(1_000);
    w.connect(&u[0]);
    w.run_for(w.presence_settle_ms() + 1_000);
    let before = w.history().counts.clone();
    assert!(w.check_presence().is_empty());
    let after = w.history().counts.clone();
    assert!(excused > 0, "the overtaken push excused the pair");
    assert_eq!(after.presence_pairs_checked - before.presence_pairs_checked, 1, "{after:?}");
    assert_eq!(after.presence_pairs_excused, before.presence_pairs_excused, "{after:?}");
}

/// A group message sealed before a removal, which the server applies first,
/// is owed only to the members the server still has when it accepts it:
/// the removed member, for whom the server rightly queued nothing, is not
/// counted as waiting for it (at-least-once would flag a false loss).
#[test]
fn a_group_message_accepted_after_a_removal_is_owed_only_to_the_remaining_members() {
    let (mut w, u) = world(23, |_| {});
    w.run_for(5_000);
    let g = w.create_group(&u[0], &u[1..3]).unwrap();
    w.run_for(3_000);
    let slow = w.add_frame_fault(FrameFault {
        drop_per_mille: 0,
        delay_ms: 2_000,
        ..drop_rule("group-send", Direction::ToServer, &u[2])
    });
    let id = w.send_group(&u[2], g, &plaintext(23, 1)).unwrap();
    w.run_for(100);
    assert!(w.change_group(&u[0], g, &[], std::slice::from_ref(&u[1])));
    w.run_for(5_000);
    w.clear_frame_faults();
    assert!(w.history().counts.frame_faults[slow].delayed > 0, "the message went out late");
    finish_clean(&mut w);
    assert_eq!(w.history().sent[&id].to, [u[0].clone()].into_iter().collect());
}

/// The configured loss and duplication rates are the rates frames meet:
/// 10% lost and 5% duplicated come out near 10% and 5% (an inverted roll
/// would lose nine frames in ten and still, with retries, deliver).
#[test]
fn frames_are_lost_and_duplicated_at_the_configured_rates() {
    let (mut w, u) = world(24, |c| {
        c.faults = Faults { drop_per_mille: 100, duplicate_per_mille: 50, latency_min_ms: 2, latency_max_ms: 10 };
    });
    w.run_for(10_000);
    for i in 0..100u64 {
        w.send_text(&u[0], &u[1], &plaintext(24, i)).unwrap();
        w.send_text(&u[1], &u[0], &plaintext(24, 1_000 + i)).unwrap();
        w.run_for(100);
    }
    finish_clean(&mut w);
    let c = &w.history().counts;
    let sent = (c.frames_dropped + c.frames_delivered - c.frames_duplicated) as f64;
    let lost = c.frames_dropped as f64 / sent;
    let doubled = c.frames_duplicated as f64 / sent;
    assert!(sent > 1_000.0, "{c:?}");
    assert!((0.07..0.13).contains(&lost), "lost {lost:.3} of {sent} frames");
    assert!((0.03..0.07).contains(&doubled), "duplicated {doubled:.3} of {sent} frames");
}

/// The quiesce phase waits for messages still in their sender's outbox, not
/// only for frames in flight and queued mailboxes: messages held for a key
/// bundle the fetch limit has not allowed yet go out a minute later, and
/// still count as delivered.
#[test]
fn quiesce_waits_for_messages_still_in_their_senders_outbox() {
    let (mut w, u) = world(25, |c| c.client_bundle_fetches_per_minute = 1);
    w.run_for(5_000);
    for (i, to) in u[1..].iter().enumerate() {
        w.send_text(&u[0], to, &plaintext(25, i as u64)).unwrap();
    }
    w.run_for(5_000);
    assert!(w.history().counts.app_deliveries < 3, "the fetch limit held some back");
    finish_clean(&mut w);
    assert_eq!(w.history().counts.app_deliveries, 3);
}

/// A rule that only drops delays nothing: its delayed count stays zero
/// while its dropped count grows.
#[test]
fn a_drop_only_rule_counts_drops_and_no_delays() {
    let (mut w, u) = world(26, |_| {});
    w.run_for(5_000);
    let rule = w.add_frame_fault(FrameFault { drop_per_mille: 500, ..drop_rule("send", Direction::ToServer, &u[0]) });
    for i in 0..20 {
        w.send_text(&u[0], &u[1], &plaintext(26, i)).unwrap();
        w.run_for(200);
    }
    w.clear_frame_faults();
    let count = &w.history().counts.frame_faults[rule];
    assert!(count.dropped > 0, "{count:?}");
    assert_eq!(count.delayed, 0, "{count:?}");
    finish_clean(&mut w);
}
