//! `routing_row` reads the server's own writes back as routing facts: who a
//! group message was queued for, and that it was accepted. The simulator's
//! turmoil driver relies on it to know a group message's recipients as the
//! server fixed them, so it is checked against what the server really did.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../../fuzz/src/bytes.rs"]
mod bytes;
#[allow(dead_code)]
#[path = "../../fuzz/src/server_harness.rs"]
mod server_harness;

use std::collections::BTreeSet;

use bluetick_core::ids::MessageId;
use bluetick_core::server::{routing_row, RoutingRow, ServerConfig};
use bluetick_core::store::{Store, Table};
use bluetick_core::wire::{self, ClientFrame, EnvelopeKind};

use server_harness::{addr, Rig, ALICE_GROUP};

fn rows(rig: &Rig) -> Vec<RoutingRow> {
    [Table::Mailbox, Table::Meta, Table::Bodies, Table::Groups]
        .into_iter()
        .flat_map(|t| rig.store.scan(t).unwrap().into_iter().filter_map(move |(k, v)| routing_row(t, &k, &v)))
        .collect()
}

#[test]
fn a_group_message_is_read_back_as_queued_for_each_other_member_and_accepted() {
    let mut rig = Rig::start(ServerConfig::default());
    let bob = rig.conn_of(&addr("bob")).unwrap();
    let id = MessageId([0x7b; 16]);
    let frame = ClientFrame::GroupSend { message_id: id, group: ALICE_GROUP, ciphertext: vec![2; 100] };
    rig.feed(bob, &wire::encode(&frame));
    let rows = rows(&rig);
    let queued_for: BTreeSet<_> = rows
        .iter()
        .filter_map(|r| match r {
            RoutingRow::Queued { to, from, message, group } if *message == id => {
                assert_eq!((from, group), (&addr("bob"), &Some(ALICE_GROUP)));
                Some(to.clone())
            }
            _ => None,
        })
        .collect();
    assert_eq!(queued_for, [addr("alice"), addr("carol")].into_iter().collect());
    assert!(rows.contains(&RoutingRow::Accepted { from: addr("bob"), message: id }));

    // A 1:1 message is queued once, without a group.
    let direct = MessageId([0x7c; 16]);
    let frame = ClientFrame::Send {
        message_id: direct,
        to: addr("carol"),
        kind: EnvelopeKind::Message,
        ciphertext: vec![3; 50],
    };
    rig.feed(bob, &wire::encode(&frame));
    let rows = self::rows(&rig);
    let queued: Vec<_> =
        rows.iter().filter(|r| matches!(r, RoutingRow::Queued { message, .. } if *message == direct)).collect();
    assert_eq!(
        queued,
        vec![&RoutingRow::Queued { to: addr("carol"), from: addr("bob"), message: direct, group: None }]
    );
    // Rows of other kinds (keys, accounts, bodies) say nothing.
    assert!(routing_row(Table::Mailbox, b"junk", b"junk").is_none());
    assert!(routing_row(Table::Bodies, &[0; 8], &[1, 2, 3]).is_none());
}

/// A group message whose store write fails is queued for nobody: the
/// members' mailboxes are as they were and nothing is delivered (a member
/// would otherwise get a message the sender was told failed, from a body
/// the store never held); the retry is queued once for each member.
#[test]
fn a_group_message_whose_write_fails_is_queued_for_nobody() {
    use bluetick_core::server::ServerOutput;
    use bluetick_core::wire::ServerFrame;
    let mut rig = Rig::start(ServerConfig::default());
    let bob = rig.conn_of(&addr("bob")).unwrap();
    let members = [addr("alice"), addr("carol")];
    let lens = |rig: &Rig| members.iter().map(|m| rig.server.mailbox_len(m)).collect::<Vec<_>>();
    let before = lens(&rig);
    let frame =
        ClientFrame::GroupSend { message_id: MessageId([0x7d; 16]), group: ALICE_GROUP, ciphertext: vec![2; 100] };
    rig.store.fail_next_apply();
    let out = rig.feed(bob, &wire::encode(&frame));
    let delivered = |out: &[ServerOutput]| {
        out.iter().filter(|o| matches!(o, ServerOutput::Frame { frame: ServerFrame::Deliver { .. }, .. })).count()
    };
    assert_eq!(delivered(&out), 0, "{out:?}");
    assert_eq!(lens(&rig), before);
    let out = rig.feed(bob, &wire::encode(&frame));
    assert_eq!(lens(&rig), before.iter().map(|n| n + 1).collect::<Vec<_>>(), "{out:?}");
}
