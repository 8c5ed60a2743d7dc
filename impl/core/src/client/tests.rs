//! Clients wired through the real [`Server`] on an in-memory network that the
//! tests can interfere with: drop or duplicate a server frame, crash a client
//! before it saved. The driver follows the documented call order exactly —
//! after every call, save when dirty, then drain — and checks on every call
//! that `is_dirty() == false` really means an unchanged save.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use super::*;
use crate::server::{ConnId, Server, ServerConfig, ServerOutput};
use crate::store::MemoryStore;
use crate::wire::Delivery;

const T0: u64 = 1_700_000_000_000;

fn u(name: &str) -> UserId {
    UserId::new(name).unwrap()
}

struct Node {
    config: ClientConfig,
    client: Client,
    saved: SavedClient,
    /// The last full incremental save and the changes saved after it.
    base: SavedClient,
    changes: Vec<SavedChanges>,
    /// The size of every change saved, in order.
    change_lens: Vec<usize>,
    /// What the app was shown, in order (the app's own durable store).
    events: Vec<AppEvent>,
    conn: Option<ConnId>,
}

/// What happens to one server frame on its way to a client.
enum Fate {
    Deliver,
    Drop,
    /// The client handles it and crashes before its state is saved.
    CrashBeforeSave,
}

struct Net {
    server: Server,
    store: MemoryStore,
    now: u64,
    next_conn: u64,
    nodes: BTreeMap<UserId, Node>,
    to_server: VecDeque<(ConnId, ClientFrame)>,
    to_client: VecDeque<(ConnId, ServerFrame)>,
    /// Every frame any client emitted, for inspection.
    sent: Vec<(UserId, ClientFrame)>,
    /// Lose every delivery-ack on its way to the server.
    lose_acks: bool,
}

impl Net {
    fn new() -> Self {
        Net {
            server: Server::new(ServerConfig::default(), 7),
            store: MemoryStore::new(),
            now: T0,
            next_conn: 1,
            nodes: BTreeMap::new(),
            to_server: VecDeque::new(),
            to_client: VecDeque::new(),
            sent: Vec::new(),
            lose_acks: false,
        }
    }

    fn with(names: &[&str], bugs: ClientBugs) -> Self {
        let mut net = Net::new();
        for (i, name) in names.iter().enumerate() {
            net.add(name, 100 + i as u64, bugs.clone());
            net.connect(name);
        }
        net
    }

    fn add(&mut self, name: &str, seed: u64, bugs: ClientBugs) {
        let config = ClientConfig { bugs, ..ClientConfig::new(u(name), PRIMARY_DEVICE) };
        let client = Client::new(config.clone(), seed, self.now);
        let saved = client.save();
        let base = saved.clone();
        self.nodes.insert(
            u(name),
            Node {
                config,
                client,
                saved,
                base,
                changes: Vec::new(),
                change_lens: Vec::new(),
                events: Vec::new(),
                conn: None,
            },
        );
    }

    fn node(&mut self, name: &UserId) -> &mut Node {
        self.nodes.get_mut(name).unwrap()
    }

    fn client(&self, name: &str) -> &Client {
        &self.nodes[&u(name)].client
    }

    /// The driver's step after every call: persist when dirty, then drain.
    fn settle(&mut self, name: &UserId) {
        let node = self.nodes.get_mut(name).unwrap();
        if node.client.is_dirty() {
            // Saved incrementally, as the tokio driver does, with a full save
            // every few changes; what they restore to must be the full save.
            // Stored as bytes, as a driver stores them.
            match node.client.save_incremental(node.changes.len() >= 5) {
                IncrementalSave::Full(full) => {
                    node.base = SavedClient::from_bytes(full.as_bytes().to_vec());
                    node.changes.clear();
                }
                IncrementalSave::Changes(c) => {
                    node.change_lens.push(c.as_bytes().len());
                    node.changes.push(SavedChanges::from_bytes(c.as_bytes().to_vec()));
                }
            }
            node.saved = node.base.apply_changes(&node.changes).unwrap_or_else(|e| panic!("{name:?}: {e}"));
            assert!(
                node.saved == node.client.save(),
                "{name:?}: the changes applied to the last full save differ from a full save"
            );
            if let Err(e) = Client::restore(node.config.clone(), &node.saved) {
                panic!("{name:?}: the save does not restore: {e}");
            }
        } else {
            assert_eq!(node.client.save(), node.saved, "{name:?}: not dirty, yet the saved state changed");
        }
        while let Some(frame) = node.client.poll_transmit() {
            self.sent.push((name.clone(), frame.clone()));
            if let Some(conn) = node.conn {
                self.to_server.push_back((conn, frame));
            }
        }
        while let Some(event) = node.client.poll_event() {
            node.events.push(event);
        }
    }

    fn call<T>(&mut self, name: &str, f: impl FnOnce(&mut Client, u64) -> T) -> T {
        let now = self.now;
        let out = f(&mut self.node(&u(name)).client, now);
        self.settle(&u(name));
        out
    }

    fn connect(&mut self, name: &str) {
        let conn = ConnId(self.next_conn);
        self.next_conn += 1;
        self.node(&u(name)).conn = Some(conn);
        self.call(name, |c, now| c.handle_connected(now));
        self.server.handle_connect(conn, self.now);
        self.collect();
        self.pump();
        assert!(self.client(name).is_ready(), "{name} did not log in");
    }

    fn drop_connection(&mut self, name: &UserId) {
        if let Some(conn) = self.node(name).conn.take() {
            self.server.handle_disconnect(conn, self.now, &mut self.store);
            self.to_server.retain(|(c, _)| *c != conn);
            self.to_client.retain(|(c, _)| *c != conn);
        }
    }

    fn disconnect(&mut self, name: &str) {
        self.drop_connection(&u(name));
        self.call(name, |c, now| c.handle_disconnected(now));
    }

    /// The device dies: its memory is gone, the last save is what remains.
    fn crash(&mut self, name: &UserId) {
        self.drop_connection(name);
        let node = self.node(name);
        node.client = Client::restore(node.config.clone(), &node.saved).unwrap();
    }

    fn owner_of(&self, conn: ConnId) -> Option<UserId> {
        self.nodes.iter().find(|(_, n)| n.conn == Some(conn)).map(|(k, _)| k.clone())
    }

    fn collect(&mut self) {
        while let Some(out) = self.server.poll_output() {
            match out {
                ServerOutput::Frame { conn, frame } => self.to_client.push_back((conn, frame)),
                ServerOutput::Close { conn, .. } => {
                    if let Some(name) = self.owner_of(conn) {
                        self.disconnect(name.as_str());
                    }
                }
            }
        }
    }

    fn pump(&mut self) {
        self.pump_with(|_, _| Fate::Deliver);
    }

    fn pump_with(&mut self, mut fate: impl FnMut(&UserId, &ServerFrame) -> Fate) {
        for _ in 0..100_000 {
            if let Some((conn, frame)) = self.to_server.pop_front() {
                if self.lose_acks && matches!(frame, ClientFrame::DeliveryAck { .. }) {
                    continue;
                }
                self.server.handle_frame(conn, frame, self.now, &mut self.store);
                self.collect();
                continue;
            }
            if let Some((conn, frame)) = self.to_client.pop_front() {
                let Some(name) = self.owner_of(conn) else { continue };
                let now = self.now;
                match fate(&name, &frame) {
                    Fate::Drop => {}
                    Fate::Deliver => {
                        self.node(&name).client.handle_frame(frame, now);
                        self.settle(&name);
                    }
                    Fate::CrashBeforeSave => {
                        self.node(&name).client.handle_frame(frame, now);
                        self.crash(&name);
                    }
                }
                continue;
            }
            return;
        }
        panic!("the network did not settle");
    }

    /// Moves the clock, fires due timers, and runs the network dry.
    /// `rounds` times: the clock moves `step_ms`, `name`'s timer fires if
    /// due, and the network runs with `fate`.
    fn tick(&mut self, name: &str, rounds: u32, step_ms: u64, mut fate: impl FnMut(&UserId, &ServerFrame) -> Fate) {
        for _ in 0..rounds {
            self.now += step_ms;
            let now = self.now;
            if self.client(name).poll_timeout().is_some_and(|t| t <= now) {
                self.call(name, |c, now| c.handle_timeout(now));
            }
            self.pump_with(&mut fate);
        }
    }

    fn advance(&mut self, ms: u64) {
        self.now += ms;
        let names: Vec<UserId> = self.nodes.keys().cloned().collect();
        for name in names {
            if let Some(at) = self.nodes[&name].client.poll_timeout() {
                if at <= self.now {
                    self.call(name.as_str(), |c, now| c.handle_timeout(now));
                    let next = self.nodes[&name].client.poll_timeout();
                    assert!(next.is_none_or(|t| t > self.now), "{name:?}: timeout {next:?} not after {}", self.now);
                }
            }
        }
        if self.server.poll_timeout().is_some_and(|t| t <= self.now) {
            self.server.handle_timeout(self.now, &mut self.store);
            self.collect();
        }
        self.pump();
    }

    /// (sender, group, id, body) of every message `name`'s app was shown.
    fn messages(&self, name: &str) -> Vec<(UserId, Option<GroupId>, MessageId, Vec<u8>)> {
        self.nodes[&u(name)]
            .events
            .iter()
            .filter_map(|e| match e {
                AppEvent::Message { from, group, id, body, .. } => Some((from.clone(), *group, *id, body.clone())),
                _ => None,
            })
            .collect()
    }

    fn bodies(&self, name: &str) -> Vec<Vec<u8>> {
        self.messages(name).into_iter().map(|m| m.3).collect()
    }

    /// How many app events about message `id` (shown or undecryptable) `name` had.
    fn surfaced(&self, name: &str, id: &MessageId) -> usize {
        self.nodes[&u(name)]
            .events
            .iter()
            .filter(|e| match e {
                AppEvent::Message { id: m, .. } | AppEvent::Undecryptable { id: m, .. } => m == id,
                _ => false,
            })
            .count()
    }

    fn statuses(&self, name: &str, id: &MessageId) -> Vec<(UserId, DeliveryState)> {
        self.nodes[&u(name)]
            .events
            .iter()
            .filter_map(|e| match e {
                AppEvent::Status { id: m, peer, status } if m == id => Some((peer.clone(), *status)),
                _ => None,
            })
            .collect()
    }

    fn sends_by(&self, name: &str) -> Vec<(MessageId, EnvelopeKind, Vec<u8>)> {
        self.sent
            .iter()
            .filter(|(n, _)| *n == u(name))
            .filter_map(|(_, f)| match f {
                ClientFrame::Send { message_id, kind, ciphertext, .. } => {
                    Some((*message_id, *kind, ciphertext.clone()))
                }
                _ => None,
            })
            .collect()
    }
}

fn is_envelope_for(frame: &ServerFrame, id: &MessageId) -> bool {
    matches!(frame, ServerFrame::Deliver { item: Delivery::Envelope(e), .. } if e.message_id == *id)
}

#[test]
fn first_message_uses_x3dh_then_reply_and_ticks_reach_read() {
    let mut net = Net::with(&["alice", "bob"], ClientBugs::none());
    let hi = net.call("alice", |c, now| c.send_text(&u("bob"), b"hi bob", now)).unwrap();
    net.pump();
    assert_eq!(net.messages("bob"), vec![(u("alice"), None, hi, b"hi bob".to_vec())]);
    let first = net.sends_by("alice");
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].1, EnvelopeKind::PreKey, "first contact carries the X3DH header");
    assert_eq!(net.client("alice").status(&hi).unwrap().of(&u("bob")), Some(DeliveryState::Delivered));

    let reply = net.call("bob", |c, now| c.send_text(&u("alice"), b"hi alice", now)).unwrap();
    net.pump();
    assert_eq!(net.bodies("alice"), vec![b"hi alice".to_vec()]);
    assert_eq!(net.sends_by("bob")[0].1, EnvelopeKind::Message, "the responder never sends PreKey");
    net.call("alice", |c, now| c.send_text(&u("bob"), b"again", now)).unwrap();
    net.pump();
    assert_eq!(net.sends_by("alice").last().unwrap().1, EnvelopeKind::Message, "answered: no more X3DH header");

    net.call("bob", |c, now| c.mark_read(&u("alice"), now));
    net.pump();
    assert_eq!(
        net.statuses("alice", &hi),
        vec![(u("bob"), DeliveryState::Sent), (u("bob"), DeliveryState::Delivered), (u("bob"), DeliveryState::Read)]
    );
    assert_eq!(net.client("alice").status(&hi).unwrap().of(&u("bob")), Some(DeliveryState::Read));
    // Bob's reply is delivered but Alice has not opened the chat.
    assert_eq!(net.client("bob").status(&reply).unwrap().of(&u("bob")), None);
    assert_eq!(net.client("bob").status(&reply).unwrap().of(&u("alice")), Some(DeliveryState::Delivered));
    // Reading twice sends nothing new.
    let before = net.sent.len();
    net.call("bob", |c, now| c.mark_read(&u("alice"), now));
    assert_eq!(net.sent.len(), before);
}

#[test]
fn messages_sent_while_offline_go_out_in_order_on_reconnect() {
    let mut net = Net::with(&["alice", "bob"], ClientBugs::none());
    net.disconnect("alice");
    let ids: Vec<MessageId> =
        (0..5u8).map(|i| net.call("alice", |c, now| c.send_text(&u("bob"), &[i], now)).unwrap()).collect();
    assert!(net.sends_by("alice").is_empty());
    for id in &ids {
        assert_eq!(net.client("alice").status(id).unwrap().of(&u("bob")), Some(DeliveryState::Pending));
    }
    net.connect("alice");
    assert_eq!(net.bodies("bob"), (0..5u8).map(|i| vec![i]).collect::<Vec<_>>());
    assert_eq!(net.client("alice").outbox_len(), 0);
}

#[test]
fn a_redelivered_envelope_is_surfaced_once() {
    let mut net = Net::with(&["alice", "bob"], ClientBugs::none());
    // Bob's delivery-ack is lost, so the server delivers again after its
    // timeout; the network also duplicates the first delivery.
    net.lose_acks = true;
    let id = net.call("alice", |c, now| c.send_text(&u("bob"), b"once", now)).unwrap();
    let mut copies = Vec::new();
    net.pump_with(|_, f| {
        if is_envelope_for(f, &id) {
            copies.push(f.clone());
        }
        Fate::Deliver
    });
    let conn = net.nodes[&u("bob")].conn.unwrap();
    net.to_client.push_back((conn, copies[0].clone()));
    net.pump();
    net.advance(ServerConfig::default().ack_timeout_ms + 1);
    net.lose_acks = false;
    net.advance(ServerConfig::default().ack_timeout_ms + 1);
    assert!(net.server.stats().ack_timeouts >= 1, "the server redelivered after the lost ack");
    assert_eq!(net.surfaced("bob", &id), 1);
    assert_eq!(net.bodies("bob"), vec![b"once".to_vec()]);
    assert_eq!(net.server.mailbox_len(&DeviceAddress::new(u("bob"), PRIMARY_DEVICE)), 0, "acked in the end");
}

#[test]
fn with_dedup_off_a_redelivered_envelope_reaches_the_app_twice() {
    let mut net = Net::with(&["alice", "bob"], ClientBugs::none().with(ClientBug::DedupOff));
    let id = net.call("alice", |c, now| c.send_text(&u("bob"), b"once", now)).unwrap();
    let mut copy = None;
    net.pump_with(|_, f| {
        if is_envelope_for(f, &id) {
            copy = Some(f.clone());
        }
        Fate::Deliver
    });
    let conn = net.nodes[&u("bob")].conn.unwrap();
    net.to_client.push_back((conn, copy.unwrap()));
    net.pump();
    // The ratchet refuses the replayed ciphertext, so the second copy shows up
    // as an undecryptable message: the app hears of the same id twice.
    assert_eq!(net.surfaced("bob", &id), 2);
    assert!(net.nodes[&u("bob")].events.iter().any(|e| matches!(e, AppEvent::Undecryptable { id: m, .. } if *m == id)));
}

#[test]
fn a_crash_before_saving_brings_redelivery_and_exactly_once_to_the_app() {
    let mut net = Net::with(&["alice", "bob"], ClientBugs::none());
    let first = net.call("alice", |c, now| c.send_text(&u("bob"), b"one", now)).unwrap();
    net.pump();
    let second = net.call("alice", |c, now| c.send_text(&u("bob"), b"two", now)).unwrap();
    // Bob decrypts "two" (advancing his ratchet) and dies before saving.
    let mut crashed = false;
    net.pump_with(|_, f| {
        if !crashed && is_envelope_for(f, &second) {
            crashed = true;
            Fate::CrashBeforeSave
        } else {
            Fate::Deliver
        }
    });
    assert!(crashed);
    assert_eq!(net.surfaced("bob", &second), 0, "the crash took the event with it");
    net.connect("bob");
    assert_eq!(net.surfaced("bob", &first), 1);
    assert_eq!(net.surfaced("bob", &second), 1, "redelivered after the restart and shown once");
    assert_eq!(net.bodies("bob"), vec![b"one".to_vec(), b"two".to_vec()]);
    // The restored ratchet still talks to Alice both ways.
    net.call("bob", |c, now| c.send_text(&u("alice"), b"back", now)).unwrap();
    net.pump();
    assert_eq!(net.bodies("alice"), vec![b"back".to_vec()]);
    assert_eq!(net.client("alice").status(&second).unwrap().of(&u("bob")), Some(DeliveryState::Delivered));
}

#[test]
fn a_lost_server_ack_is_resent_with_the_same_id_and_bytes_after_the_timer() {
    let mut net = Net::with(&["alice", "bob"], ClientBugs::none());
    let id = net.call("alice", |c, now| c.send_text(&u("bob"), b"retry me", now)).unwrap();
    net.pump_with(|name, f| match f {
        ServerFrame::ServerAck { message_id, .. } if *name == u("alice") && *message_id == id => Fate::Drop,
        _ => Fate::Deliver,
    });
    assert_eq!(net.client("alice").status(&id).unwrap().of(&u("bob")), Some(DeliveryState::Delivered));
    assert_eq!(net.client("alice").outbox_len(), 1, "still unacked");
    let deadline = net.client("alice").poll_timeout().unwrap();
    assert_eq!(deadline, net.now + DEFAULT_RESEND_AFTER_MS);
    net.advance(DEFAULT_RESEND_AFTER_MS);
    let sends = net.sends_by("alice");
    assert_eq!(sends.len(), 2);
    assert_eq!(sends[0], sends[1], "a retry is the same id and the same ciphertext");
    assert_eq!(net.client("alice").outbox_len(), 0);
    assert_eq!(net.surfaced("bob", &id), 1, "the server recognised the retry");
    assert_eq!(net.client("alice").poll_timeout(), None);
}

#[test]
fn receipts_out_of_order_or_repeated_keep_ticks_monotone() {
    let mut net = Net::with(&["alice", "bob"], ClientBugs::none());
    // Bob is offline: the message stays at Sent.
    net.disconnect("bob");
    let id = net.call("alice", |c, now| c.send_text(&u("bob"), b"x", now)).unwrap();
    net.pump();
    assert_eq!(net.client("alice").status(&id).unwrap().of(&u("bob")), Some(DeliveryState::Sent));
    let bob = DeviceAddress::new(u("bob"), PRIMARY_DEVICE);
    let receipt = |seq, kind| ServerFrame::Deliver {
        seq,
        item: Delivery::Receipt { from: bob.clone(), kind, message_ids: vec![id] },
    };
    for frame in [
        receipt(900, ReceiptKind::Read),
        receipt(901, ReceiptKind::Delivered),
        receipt(900, ReceiptKind::Read),
        ServerFrame::Deliver { seq: 902, item: Delivery::Expired { to: bob.clone(), message_id: id } },
    ] {
        net.call("alice", |c, now| c.handle_frame(frame, now));
        assert_eq!(net.client("alice").status(&id).unwrap().of(&u("bob")), Some(DeliveryState::Read));
    }
    assert_eq!(net.statuses("alice", &id), vec![(u("bob"), DeliveryState::Sent), (u("bob"), DeliveryState::Read)]);
    // Every item was acked by its seq.
    let acked: Vec<u64> = net
        .sent
        .iter()
        .filter_map(|(n, f)| match f {
            ClientFrame::DeliveryAck { seqs } if *n == u("alice") => Some(seqs.clone()),
            _ => None,
        })
        .flatten()
        .filter(|s| *s >= 900)
        .collect();
    assert_eq!(acked, vec![900, 901, 900, 902]);
}

#[test]
fn an_expiry_notice_marks_an_undelivered_message_expired() {
    let mut net = Net::with(&["alice", "bob"], ClientBugs::none());
    net.disconnect("bob");
    let id = net.call("alice", |c, now| c.send_text(&u("bob"), b"late", now)).unwrap();
    net.pump();
    net.advance(ServerConfig::default().ttl_text_ms + 1);
    assert_eq!(net.client("alice").status(&id).unwrap().of(&u("bob")), Some(DeliveryState::Expired));
    assert_eq!(net.statuses("alice", &id).last(), Some(&(u("bob"), DeliveryState::Expired)));
}

#[test]
fn with_read_on_delivery_ticks_turn_blue_before_the_chat_is_opened() {
    for (bugs, expect) in [
        (ClientBugs::none(), DeliveryState::Delivered),
        (ClientBugs::none().with(ClientBug::ReadOnDelivery), DeliveryState::Read),
    ] {
        let mut net = Net::with(&["alice", "bob"], bugs);
        let id = net.call("alice", |c, now| c.send_text(&u("bob"), b"unread", now)).unwrap();
        net.pump();
        assert_eq!(net.client("alice").status(&id).unwrap().of(&u("bob")), Some(expect));
    }
}

#[test]
fn simultaneous_first_messages_converge() {
    let mut net = Net::with(&["alice", "bob"], ClientBugs::none());
    net.call("alice", |c, now| c.send_text(&u("bob"), b"a1", now)).unwrap();
    net.call("bob", |c, now| c.send_text(&u("alice"), b"b1", now)).unwrap();
    net.pump();
    for round in 0..3u8 {
        net.call("alice", |c, now| c.send_text(&u("bob"), &[b'a', round], now)).unwrap();
        net.call("bob", |c, now| c.send_text(&u("alice"), &[b'b', round], now)).unwrap();
        net.pump();
    }
    assert_eq!(net.messages("bob").len(), 4);
    assert_eq!(net.messages("alice").len(), 4);
    for name in ["alice", "bob"] {
        assert!(!net.nodes[&u(name)].events.iter().any(|e| matches!(e, AppEvent::Undecryptable { .. })));
    }
}

#[test]
fn a_restored_copy_behaves_exactly_like_the_original() {
    let mut net = Net::with(&["alice", "bob"], ClientBugs::none());
    net.call("alice", |c, now| c.send_text(&u("bob"), b"warm up", now)).unwrap();
    net.pump();
    let id = net.call("bob", |c, now| c.send_text(&u("alice"), b"to both", now)).unwrap();
    let mut frame = None;
    net.pump_with(|name, f| {
        if *name == u("alice") && is_envelope_for(f, &id) {
            frame = Some(f.clone());
            return Fate::Drop;
        }
        Fate::Deliver
    });
    let frame = frame.unwrap();
    // Two clients restored from the save before that frame (one through the
    // stored bytes), fed the same inputs, produce the same outputs and state.
    let node = &net.nodes[&u("alice")];
    let bytes = node.saved.as_bytes().to_vec();
    let mut copy = Client::restore(node.config.clone(), &SavedClient::from_bytes(bytes)).unwrap();
    let mut original = Client::restore(node.config.clone(), &node.saved).unwrap();
    for c in [&mut copy, &mut original] {
        c.handle_connected(net.now);
        c.handle_frame(frame.clone(), net.now);
        c.send_text(&u("bob"), b"after", net.now).unwrap();
    }
    assert_eq!(copy.save(), original.save());
    let drain = |c: &mut Client| {
        let mut out = Vec::new();
        while let Some(e) = c.poll_event() {
            out.push(format!("{e:?}"));
        }
        out
    };
    let (a, b) = (drain(&mut copy), drain(&mut original));
    assert!(a.iter().any(|e| e.contains("to both")) || a.iter().any(|e| e.contains("Message")), "{a:?}");
    assert_eq!(a, b);
    let frames = |c: &mut Client| std::iter::from_fn(|| c.poll_transmit()).collect::<Vec<_>>();
    assert_eq!(frames(&mut copy), frames(&mut original));
}

#[test]
fn restore_refuses_garbage_and_another_account() {
    let net = Net::with(&["alice"], ClientBugs::none());
    let node = &net.nodes[&u("alice")];
    assert!(matches!(
        Client::restore(node.config.clone(), &SavedClient::from_bytes(vec![SAVE_FORMAT as u8, 2, 3])),
        Err(RestoreError::Decode { .. })
    ));
    // A save of an older format (here: 2, with keys as hex text) is named as such.
    let mut older = node.saved.as_bytes().to_vec();
    older[0] = 2;
    assert!(matches!(
        Client::restore(node.config.clone(), &SavedClient::from_bytes(older)),
        Err(RestoreError::Format { found: 2, expected: SAVE_FORMAT })
    ));
    let other = ClientConfig::new(u("mallory"), PRIMARY_DEVICE);
    assert!(matches!(Client::restore(other, &node.saved), Err(RestoreError::WrongAccount { .. })));
    assert!(format!("{:?}", node.saved).contains("bytes"), "the Debug form shows no key material");
}

#[test]
fn commands_refuse_bad_input_and_change_nothing() {
    let mut net = Net::with(&["alice", "bob"], ClientBugs::none());
    let big = vec![0u8; BODY_LEN_MAX + 1];
    assert!(matches!(
        net.call("alice", |c, now| c.send_text(&u("bob"), &big, now)),
        Err(ClientError::BodyTooLarge { .. })
    ));
    assert_eq!(net.call("alice", |c, now| c.send_text(&u("alice"), b"me", now)), Err(ClientError::SelfRecipient));
    let nowhere = GroupId([9; 16]);
    assert_eq!(
        net.call("alice", |c, now| c.send_group(nowhere, b"x", now)),
        Err(ClientError::UnknownGroup { group: nowhere })
    );
    let g = net.call("alice", |c, now| c.create_group(vec![u("bob")], now)).unwrap();
    net.pump();
    assert_eq!(
        net.call("bob", |c, now| c.change_group(g, vec![u("carol")], vec![], now)),
        Err(ClientError::NotAdmin { group: g, admin: u("alice") })
    );
    assert_eq!(
        net.call("alice", |c, now| c.change_group(g, vec![u("bob")], vec![], now)),
        Err(ClientError::EmptyChange { group: g })
    );
    assert_eq!(
        net.call("alice", |c, now| c.change_group(g, vec![], vec![u("alice")], now)),
        Err(ClientError::AdminCannotLeave { group: g })
    );
    assert_eq!(net.client("alice").outbox_len(), 0);
}

/// Alice creates {alice, bob, carol}; everyone sends; Alice removes Carol
/// and sends again. Returns the network, the group, Carol's state from just
/// before her removal, and Alice's message after the removal.
fn group_scenario(bugs: ClientBugs) -> (Net, GroupId, SavedClient, Vec<u8>, MessageId) {
    let mut net = Net::with(&["alice", "bob", "carol"], bugs);
    let g = net.call("alice", |c, now| c.create_group(vec![u("bob"), u("carol")], now)).unwrap();
    net.pump();
    for name in ["bob", "carol"] {
        assert_eq!(net.client(name).group(&g).unwrap(), (1, vec![u("alice"), u("bob"), u("carol")]), "{name}");
    }
    let m1 = net.call("alice", |c, now| c.send_group(g, b"hello all", now)).unwrap();
    net.pump();
    net.call("bob", |c, now| c.send_group(g, b"bob here", now)).unwrap();
    net.pump();
    for name in ["bob", "carol"] {
        assert!(net.messages(name).contains(&(u("alice"), Some(g), m1, b"hello all".to_vec())), "{name}");
    }
    assert_eq!(net.bodies("carol"), vec![b"hello all".to_vec(), b"bob here".to_vec()]);
    assert_eq!(net.bodies("alice"), vec![b"bob here".to_vec()]);
    // Ticks per member.
    let status = net.client("alice").status(&m1).unwrap().clone();
    assert_eq!(status.of(&u("bob")), Some(DeliveryState::Delivered));
    assert_eq!(status.of(&u("carol")), Some(DeliveryState::Delivered));
    net.call("carol", |c, now| c.mark_group_read(g, now));
    net.pump();
    assert_eq!(net.client("alice").status(&m1).unwrap().of(&u("carol")), Some(DeliveryState::Read));
    assert_eq!(net.client("alice").status(&m1).unwrap().of(&u("bob")), Some(DeliveryState::Delivered));

    let carol_before = net.nodes[&u("carol")].saved.clone();
    net.call("alice", |c, now| c.change_group(g, vec![], vec![u("carol")], now)).unwrap();
    net.pump();
    assert_eq!(net.client("bob").group(&g).unwrap(), (2, vec![u("alice"), u("bob")]));
    assert_eq!(net.client("carol").group(&g).unwrap(), (2, vec![u("alice"), u("bob")]), "carol hears she was removed");
    let m2 = net.call("alice", |c, now| c.send_group(g, b"after carol left", now)).unwrap();
    net.pump();
    assert_eq!(net.bodies("bob").last().unwrap(), b"after carol left");
    let ciphertext = net
        .sent
        .iter()
        .find_map(|(n, f)| match f {
            ClientFrame::GroupSend { message_id, ciphertext, .. } if *n == u("alice") && *message_id == m2 => {
                Some(ciphertext.clone())
            }
            _ => None,
        })
        .unwrap();
    (net, g, carol_before, ciphertext, m2)
}

/// Alice's group message `id` as the server would deliver it to `to`.
fn group_envelope_from_alice(to: &str, g: GroupId, id: MessageId, ciphertext: Vec<u8>, now: u64) -> Envelope {
    Envelope {
        from: DeviceAddress::new(u("alice"), PRIMARY_DEVICE),
        to: DeviceAddress::new(u(to), PRIMARY_DEVICE),
        message_id: id,
        server_ts_ms: now,
        group: Some(g),
        kind: EnvelopeKind::Group,
        ciphertext,
    }
}

/// A rogue Carol who ignored her removal and kept every key she had gets
/// the group ciphertext the server no longer sends her (a leaky or
/// compromised server). Returns the bodies she could read.
fn leak_to_rogue_carol(net: &Net, g: GroupId, kept: &SavedClient, ciphertext: Vec<u8>, id: MessageId) -> Vec<Vec<u8>> {
    let mut rogue = Client::restore(net.nodes[&u("carol")].config.clone(), kept).unwrap();
    let envelope = group_envelope_from_alice("carol", g, id, ciphertext, net.now);
    rogue.handle_frame(ServerFrame::Deliver { seq: 10_000, item: Delivery::Envelope(envelope) }, net.now);
    std::iter::from_fn(|| rogue.poll_event())
        .filter_map(|e| match e {
            AppEvent::Message { body, .. } => Some(body),
            _ => None,
        })
        .collect()
}

#[test]
fn group_remove_rotates_so_the_removed_member_cannot_read_later_messages() {
    let (net, g, kept, ciphertext, m2) = group_scenario(ClientBugs::none());
    assert!(leak_to_rogue_carol(&net, g, &kept, ciphertext, m2).is_empty());
    assert!(!net.bodies("carol").contains(&b"after carol left".to_vec()));
}

#[test]
fn without_rotation_on_remove_the_removed_member_reads_later_messages() {
    let (net, g, kept, ciphertext, m2) = group_scenario(ClientBugs::none().with(ClientBug::NoRotationOnRemove));
    assert_eq!(leak_to_rogue_carol(&net, g, &kept, ciphertext, m2), vec![b"after carol left".to_vec()]);
}

/// Regression (found by the 1,024-member churn scenario): Alice's first group
/// message goes out at once, while her sender key still waits in her outbox
/// for the bundle of the member it is for; she then removes that member
/// before the key left. The server fanned the message out to Carol (a member
/// when it accepted it), so Carol holds it until the key comes. The old
/// client dropped the queued key on the removal, leaving the message
/// unreadable for good with nobody told. The key it carries is retired by the
/// rotation, so it still goes, and nothing sealed afterwards opens with it.
#[test]
fn a_sender_key_queued_for_a_member_removed_meanwhile_still_reaches_it() {
    let mut net = Net::with(&["alice", "bob", "carol"], ClientBugs::none());
    let g = net.call("alice", |c, now| c.create_group(vec![u("bob"), u("carol")], now)).unwrap();
    net.pump();
    // No pump in between: the GroupSend is on the wire, the distributions
    // wait for bundles, and the removal follows.
    let early = net.call("alice", |c, now| c.send_group(g, b"before the removal", now)).unwrap();
    assert!(net.client("alice").outbox_len() >= 3, "the distributions are still queued");
    net.call("alice", |c, now| c.change_group(g, vec![], vec![u("carol")], now)).unwrap();
    net.pump();
    assert_eq!(net.client("carol").group(&g).unwrap(), (2, vec![u("alice"), u("bob")]), "carol was removed");
    assert_eq!(net.client("carol").held_group_messages(), 0);
    assert_eq!(net.messages("carol"), vec![(u("alice"), Some(g), early, b"before the removal".to_vec())]);
    assert_eq!(net.bodies("bob"), vec![b"before the removal".to_vec()]);
    // The rotation still shuts her out of what follows.
    net.call("alice", |c, now| c.send_group(g, b"after the removal", now)).unwrap();
    net.pump();
    assert_eq!(net.bodies("bob").last().unwrap(), b"after the removal");
    assert_eq!(net.bodies("carol"), vec![b"before the removal".to_vec()]);
    assert_eq!(net.client("alice").outbox_len(), 0);
}

/// Regression (found by the 1,024-member churn scenario): version 2 of a
/// group reaches Bob only after version 3 (a lost delivery comes again after
/// what followed it). The old client rejected 3 for its gap, the server had
/// its ack, and Bob's view stayed at 2 for good: he kept encrypting for the
/// removed member and never heard of later ones. Now 3 waits for 2.
#[test]
fn a_group_change_overtaken_by_its_successor_is_applied_in_order() {
    let mut net = Net::with(&["alice", "bob", "carol", "dave"], ClientBugs::none());
    let g = net.call("alice", |c, now| c.create_group(vec![u("bob"), u("carol")], now)).unwrap();
    net.pump();
    net.call("alice", |c, now| c.change_group(g, vec![u("dave")], vec![], now)).unwrap();
    net.call("alice", |c, now| c.change_group(g, vec![], vec![u("carol")], now)).unwrap();
    let mut held_back = Vec::new();
    net.pump_with(|name, f| match f {
        ServerFrame::Deliver { item: Delivery::GroupChange(c), .. } if *name == u("bob") && c.version == 2 => {
            held_back.push(f.clone());
            Fate::Drop
        }
        _ => Fate::Deliver,
    });
    assert_eq!(net.client("bob").group(&g).unwrap().0, 1, "version 3 waits for 2");
    for frame in held_back {
        net.call("bob", |c, now| c.handle_frame(frame, now));
    }
    net.pump();
    assert_eq!(net.client("bob").group(&g).unwrap(), (3, vec![u("alice"), u("bob"), u("dave")]));
    assert!(
        !net.nodes[&u("bob")].events.iter().any(|e| matches!(e, AppEvent::GroupChangeRejected { .. })),
        "{:?}",
        net.nodes[&u("bob")].events
    );
    // Bob's next message goes to the membership he now knows.
    net.call("bob", |c, now| c.send_group(g, b"hi dave", now)).unwrap();
    net.pump();
    assert_eq!(net.bodies("dave"), vec![b"hi dave".to_vec()]);
    assert!(net.bodies("carol").is_empty());
}

/// Regression (found by the 1,024-member churn scenario): Alice's group
/// message to Carol is lost on its way, Alice removes Carol, and the server's
/// redelivery reaches Carol after she applied her removal. The server
/// accepted the message for her while she was a member; the old client had
/// dropped every sender key of the group on leaving, so it was held unread
/// for good. Carol keeps the keys she had, which open nothing sealed later.
#[test]
fn a_group_message_redelivered_after_our_removal_is_still_shown() {
    let mut net = Net::with(&["alice", "bob", "carol"], ClientBugs::none());
    let g = net.call("alice", |c, now| c.create_group(vec![u("bob"), u("carol")], now)).unwrap();
    net.pump();
    let id = net.call("alice", |c, now| c.send_group(g, b"just before", now)).unwrap();
    let mut lost = false;
    net.pump_with(|name, f| match f {
        ServerFrame::Deliver { item: Delivery::Envelope(e), .. }
            if *name == u("carol") && e.kind == EnvelopeKind::Group && !lost =>
        {
            lost = true;
            Fate::Drop
        }
        _ => Fate::Deliver,
    });
    assert!(lost && net.messages("carol").is_empty());
    net.call("alice", |c, now| c.change_group(g, vec![], vec![u("carol")], now)).unwrap();
    net.pump();
    assert_eq!(net.client("carol").group(&g).unwrap(), (2, vec![u("alice"), u("bob")]), "carol applied her removal");
    net.advance(ServerConfig::default().ack_timeout_ms + 1);
    assert_eq!(net.messages("carol"), vec![(u("alice"), Some(g), id, b"just before".to_vec())]);
    assert_eq!(net.client("carol").held_group_messages(), 0);
    // What Alice seals after the removal stays closed to her.
    net.call("alice", |c, now| c.send_group(g, b"after", now)).unwrap();
    net.pump();
    assert_eq!(net.bodies("bob"), vec![b"just before".to_vec(), b"after".to_vec()]);
    assert_eq!(net.bodies("carol"), vec![b"just before".to_vec()]);
}

#[test]
fn a_group_message_before_its_sender_key_is_held_then_shown() {
    let mut net = Net::with(&["alice", "bob"], ClientBugs::none());
    let g = net.call("alice", |c, now| c.create_group(vec![u("bob")], now)).unwrap();
    net.pump();
    let id = net.call("alice", |c, now| c.send_group(g, b"early", now)).unwrap();
    // Hold back the pairwise distribution until the group message went through.
    let mut held_back = Vec::new();
    net.pump_with(|name, f| match f {
        ServerFrame::Deliver { item: Delivery::Envelope(e), .. }
            if *name == u("bob") && e.kind != EnvelopeKind::Group && held_back.is_empty() =>
        {
            held_back.push(f.clone());
            Fate::Drop
        }
        _ => Fate::Deliver,
    });
    assert_eq!(net.client("bob").held_group_messages(), 1);
    assert!(net.messages("bob").is_empty());
    for frame in held_back {
        net.call("bob", |c, now| c.handle_frame(frame, now));
    }
    net.pump();
    assert_eq!(net.messages("bob"), vec![(u("alice"), Some(g), id, b"early".to_vec())]);
    assert_eq!(net.client("bob").held_group_messages(), 0);
}

/// Regression (found by a 64-member churn scenario): a sender rotated six
/// times while its key distributions to Bob were held up, then Bob got the
/// current key first and the six superseded ones after it (frames reordered,
/// or resent after the server refused them). A record keeps five keys and
/// evicts the one that arrived first, so the late ones pushed out the key
/// still in use, and every later message under it was held unread for good.
#[test]
fn superseded_sender_keys_arriving_late_do_not_evict_the_current_one() {
    let extra = ["x1", "x2", "x3", "x4", "x5", "x6", "x7"];
    let names: Vec<&str> = ["alice", "bob"].into_iter().chain(extra).collect();
    let mut net = Net::with(&names, ClientBugs::none());
    let members: Vec<UserId> = names.iter().skip(1).map(|n| u(n)).collect();
    let g = net.call("alice", |c, now| c.create_group(members, now)).unwrap();
    net.pump();
    net.call("alice", |c, now| c.send_group(g, b"k0", now)).unwrap();
    net.pump();
    let mut late = Vec::new();
    let mut expected = vec![b"k0".to_vec()];
    for (i, x) in extra.iter().take(6).enumerate() {
        net.call("alice", |c, now| c.change_group(g, vec![], vec![u(x)], now)).unwrap();
        let body = format!("k{}", i + 1).into_bytes();
        net.call("alice", |c, now| c.send_group(g, &body, now)).unwrap();
        expected.push(body);
        net.pump_with(|name, f| match f {
            ServerFrame::Deliver { item: Delivery::Envelope(e), .. }
                if *name == u("bob") && e.kind != EnvelopeKind::Group =>
            {
                late.push(f.clone());
                Fate::Drop
            }
            _ => Fate::Deliver,
        });
    }
    assert_eq!(late.len(), 6, "one distribution per rotated key");
    assert_eq!(net.client("bob").held_group_messages(), 6);
    net.call("alice", |c, now| c.change_group(g, vec![], vec![u("x7")], now)).unwrap();
    net.call("alice", |c, now| c.send_group(g, b"current", now)).unwrap();
    net.pump();
    assert_eq!(net.bodies("bob"), vec![b"k0".to_vec(), b"current".to_vec()]);
    for frame in late {
        net.call("bob", |c, now| c.handle_frame(frame, now));
    }
    net.pump();
    assert_eq!(net.client("bob").held_group_messages(), 0);
    let mut shown = net.bodies("bob");
    shown.sort();
    expected.push(b"current".to_vec());
    expected.sort();
    assert_eq!(shown, expected);
    // The current key still opens what follows.
    net.call("alice", |c, now| c.send_group(g, b"after", now)).unwrap();
    net.pump();
    assert_eq!(net.bodies("bob").last().unwrap(), b"after");
    assert_eq!(net.client("bob").held_group_messages(), 0);
}

/// Regression (found by a churn scenario where the senders are churned too):
/// a member's message the server accepted before the member's removal was
/// still on its way (a lost frame, redelivered after the ack timeout) when
/// the removal was applied. Dropping the removed member's sender key there
/// left the message held unread for good.
#[test]
fn a_removed_members_message_sent_before_the_removal_still_opens() {
    let mut net = Net::with(&["alice", "bob", "carol"], ClientBugs::none());
    let g = net.call("alice", |c, now| c.create_group(vec![u("bob"), u("carol")], now)).unwrap();
    net.pump();
    net.call("bob", |c, now| c.send_group(g, b"first", now)).unwrap();
    net.pump();
    net.call("bob", |c, now| c.send_group(g, b"in flight", now)).unwrap();
    let mut late = Vec::new();
    net.pump_with(|name, f| match f {
        ServerFrame::Deliver { item: Delivery::Envelope(e), .. }
            if *name == u("carol") && e.kind == EnvelopeKind::Group =>
        {
            late.push(f.clone());
            Fate::Drop
        }
        _ => Fate::Deliver,
    });
    assert_eq!(late.len(), 1);
    net.call("alice", |c, now| c.change_group(g, vec![], vec![u("bob")], now)).unwrap();
    net.pump();
    assert!(!net.client("carol").group(&g).unwrap().1.contains(&u("bob")));
    for frame in late {
        net.call("carol", |c, now| c.handle_frame(frame, now));
    }
    net.pump();
    assert_eq!(net.bodies("carol"), vec![b"first".to_vec(), b"in flight".to_vec()]);
    assert_eq!(net.client("carol").held_group_messages(), 0);
}

/// The first signed group change any client sent to the server.
fn first_group_change_sent(net: &Net) -> SignedGroupChange {
    net.sent
        .iter()
        .find_map(|(_, f)| match f {
            ClientFrame::GroupChange { change } => Some(change.clone()),
            _ => None,
        })
        .expect("a group change was sent")
}

#[test]
fn a_group_change_the_server_altered_is_rejected() {
    let mut net = Net::with(&["alice", "bob"], ClientBugs::none());
    let g = net.call("alice", |c, now| c.create_group(vec![u("bob")], now)).unwrap();
    net.pump();
    let admin_change = first_group_change_sent(&net);
    let mut forged = admin_change.clone();
    forged.version = 2;
    forged.add = vec![u("mallory")];
    net.call("bob", |c, now| {
        c.handle_frame(ServerFrame::Deliver { seq: 5_000, item: Delivery::GroupChange(forged) }, now)
    });
    assert!(net.nodes[&u("bob")].events.iter().any(|e| matches!(
        e,
        AppEvent::GroupChangeRejected { group, reason: GroupChangeRejection::BadSignature, .. } if *group == g
    )));
    assert_eq!(net.client("bob").group(&g).unwrap().0, 1);
    // A redelivered genuine change is ignored quietly.
    let events = net.nodes[&u("bob")].events.len();
    net.call("bob", |c, now| {
        c.handle_frame(ServerFrame::Deliver { seq: 5_001, item: Delivery::GroupChange(admin_change) }, now)
    });
    assert_eq!(net.nodes[&u("bob")].events.len(), events);
}

#[test]
fn a_member_added_later_learns_everyone_and_can_send() {
    let mut net = Net::with(&["alice", "bob", "carol"], ClientBugs::none());
    let g = net.call("alice", |c, now| c.create_group(vec![u("bob")], now)).unwrap();
    net.pump();
    net.call("alice", |c, now| c.send_group(g, b"before carol", now)).unwrap();
    net.pump();
    net.call("alice", |c, now| c.change_group(g, vec![u("carol")], vec![], now)).unwrap();
    net.pump();
    assert_eq!(net.client("carol").group(&g).unwrap(), (2, vec![u("alice"), u("bob"), u("carol")]));
    net.call("carol", |c, now| c.send_group(g, b"carol joins", now)).unwrap();
    net.pump();
    assert_eq!(net.bodies("bob"), vec![b"before carol".to_vec(), b"carol joins".to_vec()]);
    assert_eq!(net.bodies("alice"), vec![b"carol joins".to_vec()]);
    assert!(net.bodies("carol").is_empty(), "nothing from before she joined");
}

#[test]
fn prekeys_are_uploaded_once_confirmed_and_refilled_when_low() {
    let mut net = Net::with(&["alice"], ClientBugs::none());
    let uploads = |net: &Net| net.sent.iter().filter(|(_, f)| matches!(f, ClientFrame::UploadPreKeys { .. })).count();
    assert_eq!(uploads(&net), 1);
    assert!(net.client("alice").state.prekeys_owed.one_time.is_empty());
    assert!(!net.client("alice").state.prekeys_owed.signed);
    // Reconnecting does not upload again.
    net.disconnect("alice");
    net.connect("alice");
    assert_eq!(uploads(&net), 1);
    net.call("alice", |c, now| c.handle_frame(ServerFrame::PreKeysLow { remaining: 3 }, now));
    net.pump();
    assert_eq!(uploads(&net), 2, "a refill is uploaded");
}

#[test]
fn a_lost_prekey_upload_is_repeated_until_the_own_bundle_shows_it() {
    let mut net = Net::new();
    net.add("alice", 1, ClientBugs::none());
    let conn = ConnId(99);
    net.node(&u("alice")).conn = Some(conn);
    net.call("alice", |c, now| c.handle_connected(now));
    net.server.handle_connect(conn, net.now);
    net.collect();
    // Drop the first upload on its way to the server.
    let mut dropped = false;
    for _ in 0..100 {
        if let Some((c, frame)) = net.to_server.pop_front() {
            if !dropped && matches!(frame, ClientFrame::UploadPreKeys { .. }) {
                dropped = true;
                continue;
            }
            net.server.handle_frame(c, frame, net.now, &mut net.store);
            net.collect();
        } else if let Some((_, frame)) = net.to_client.pop_front() {
            net.call("alice", |cl, now| cl.handle_frame(frame, now));
        } else {
            break;
        }
    }
    assert!(dropped);
    assert!(net.client("alice").state.prekeys_owed.signed, "the own bundle showed no signed prekey");
    net.advance(DEFAULT_RESEND_AFTER_MS);
    assert!(!net.client("alice").state.prekeys_owed.signed);
    net.add("bob", 2, ClientBugs::none());
    net.connect("bob");
    net.call("bob", |c, now| c.send_text(&u("alice"), b"reachable", now)).unwrap();
    net.pump();
    assert_eq!(net.bodies("alice"), vec![b"reachable".to_vec()]);
}

#[test]
fn an_out_of_order_delivery_is_read_and_its_skipped_key_survives_a_restart() {
    let mut net = Net::with(&["alice", "bob"], ClientBugs::none());
    net.call("alice", |c, now| c.send_text(&u("bob"), b"zero", now)).unwrap();
    net.pump();
    let one = net.call("alice", |c, now| c.send_text(&u("bob"), b"one", now)).unwrap();
    // "one" is lost on its way to Bob; "two" overtakes it.
    net.pump_with(|_, f| if is_envelope_for(f, &one) { Fate::Drop } else { Fate::Deliver });
    net.call("alice", |c, now| c.send_text(&u("bob"), b"two", now)).unwrap();
    net.pump();
    assert_eq!(net.bodies("bob"), vec![b"zero".to_vec(), b"two".to_vec()]);
    // Bob's saved state now holds the skipped key for "one"; he restarts from it.
    net.crash(&u("bob"));
    net.connect("bob");
    assert_eq!(net.bodies("bob"), vec![b"zero".to_vec(), b"two".to_vec(), b"one".to_vec()]);
    assert_eq!(net.surfaced("bob", &one), 1);
}

#[test]
fn a_lost_welcome_is_recovered_by_logging_in_again() {
    let mut net = Net::with(&["alice"], ClientBugs::none());
    net.disconnect("alice");
    let conn = ConnId(net.next_conn);
    net.next_conn += 1;
    net.node(&u("alice")).conn = Some(conn);
    net.call("alice", |c, now| c.handle_connected(now));
    net.server.handle_connect(conn, net.now);
    net.collect();
    net.pump_with(|_, f| if matches!(f, ServerFrame::Welcome { .. }) { Fate::Drop } else { Fate::Deliver });
    assert!(!net.client("alice").is_ready());
    assert_eq!(net.client("alice").poll_timeout(), Some(net.now + DEFAULT_RESEND_AFTER_MS));
    net.advance(DEFAULT_RESEND_AFTER_MS);
    assert!(net.client("alice").is_ready(), "the repeated login was answered with a Welcome");
}

/// The distinct blob ids `name` sent uploads under (one per attempt).
fn blobs_uploaded_by(net: &Net, name: &str) -> BTreeSet<crate::ids::BlobId> {
    net.sent
        .iter()
        .filter_map(|(who, f)| match f {
            ClientFrame::MediaUpload { blob, .. } if *who == u(name) => Some(*blob),
            _ => None,
        })
        .collect()
}

#[test]
fn an_upload_resent_after_a_lost_media_stored_uses_a_fresh_blob_id_and_arrives() {
    let mut net = Net::with(&["alice", "bob"], ClientBugs::none());
    let body = vec![0x5a; 300_000];
    let id = net.call("alice", |c, now| c.send_media(&u("bob"), &body, now)).unwrap();
    // The server stores the blob, but its `MediaStored` never reaches alice.
    net.pump_with(|name, frame| match frame {
        ServerFrame::MediaStored { .. } if *name == u("alice") => Fate::Drop,
        _ => Fate::Deliver,
    });
    assert_eq!(net.client("alice").media_pending(), (1, 0), "unconfirmed, so still pending");
    net.disconnect("alice");
    net.connect("alice");
    net.pump();
    let blobs = blobs_uploaded_by(&net, "alice");
    assert_eq!(blobs.len(), 2, "the second attempt must not reuse the stored blob's id");
    assert!(net.client("alice").is_ready(), "alice's connection must survive the resend");
    let got: Vec<&Vec<u8>> = net.nodes[&u("bob")]
        .events
        .iter()
        .filter_map(|e| match e {
            AppEvent::Media { id: got, body, .. } if *got == id => Some(body),
            _ => None,
        })
        .collect();
    assert_eq!(got, vec![&body], "bob gets the attachment exactly once");
    assert_eq!(net.client("alice").media_pending(), (0, 0), "the upload is done");
    assert_eq!(net.client("bob").media_pending(), (0, 0), "the download is done");
}

/// The body limit leaves room for what the first message adds around it
/// (X3DH header, ratchet header, tag): the largest body allowed gets through
/// the server's ciphertext limit and is shown, one byte more is refused.
#[test]
fn the_largest_body_allowed_fits_the_ciphertext_limit_and_is_delivered() {
    assert_eq!(BODY_LEN_MAX, 63 * 1024, "the 64 KiB ciphertext limit less 1 KiB of headers");
    let mut net = Net::with(&["alice", "bob"], ClientBugs::none());
    let body = vec![7u8; BODY_LEN_MAX];
    net.call("alice", |c, now| c.send_text(&u("bob"), &body, now)).unwrap();
    net.pump();
    assert_eq!(net.bodies("bob"), vec![body]);
    let over = vec![7u8; BODY_LEN_MAX + 1];
    assert!(matches!(
        net.call("alice", |c, now| c.send_text(&u("bob"), &over, now)),
        Err(ClientError::BodyTooLarge { .. })
    ));
}

/// Alice writes "hi" to bob, a first contact; the key bundle the server
/// answers her fetch with is held back and returned.
fn alice_writes_to_bob_and_her_bundle_is_held() -> (Net, ServerFrame) {
    let mut net = Net::with(&["alice", "bob"], ClientBugs::none());
    net.call("alice", |c, now| c.send_text(&u("bob"), b"hi", now)).unwrap();
    let mut held = None;
    net.pump_with(|name, frame| match frame {
        ServerFrame::Bundle { .. } if name.as_str() == "alice" && held.is_none() => {
            held = Some(frame.clone());
            Fate::Drop
        }
        _ => Fate::Deliver,
    });
    (net, held.expect("alice fetched no bundle"))
}

/// A bundle that answers another request (stale, or pushed by the server
/// unasked) starts no session: otherwise a server could replace a
/// conversation's keys whenever it liked.
#[test]
fn a_bundle_answering_another_request_starts_no_session() {
    let (mut net, held) = alice_writes_to_bob_and_her_bundle_is_held();
    let ServerFrame::Bundle { request, bundle } = held else { panic!("not a bundle") };
    let stale = ServerFrame::Bundle { request: request.wrapping_add(1), bundle: bundle.clone() };
    net.call("alice", |c, now| c.handle_frame(stale, now));
    net.pump();
    assert!(net.bodies("bob").is_empty(), "a reply to another request started a session");
    net.call("alice", |c, now| c.handle_frame(ServerFrame::Bundle { request, bundle }, now));
    net.pump();
    assert_eq!(net.bodies("bob"), vec![b"hi".to_vec()]);
}

/// Versions start at 1: a "version 0" of a group we do not know is refused
/// at once (it can never be applied), not held waiting for a gap to close.
#[test]
fn a_version_zero_group_change_is_refused_not_held() {
    let mut net = Net::with(&["alice", "bob"], ClientBugs::none());
    net.call("alice", |c, now| c.create_group(vec![u("bob")], now)).unwrap();
    net.pump();
    let mut zero = first_group_change_sent(&net);
    zero.group = GroupId([0x42; 16]);
    zero.version = 0;
    net.call("bob", |c, now| {
        c.handle_frame(ServerFrame::Deliver { seq: 5_000, item: Delivery::GroupChange(zero) }, now)
    });
    assert!(net.nodes[&u("bob")].events.iter().any(|e| matches!(
        e,
        AppEvent::GroupChangeRejected { reason: GroupChangeRejection::VersionGap { current: 0, got: 0 }, .. }
    )));
    assert!(net.client("bob").group(&GroupId([0x42; 16])).is_none());
}

/// An upload whose `MediaStored` never comes back is tried exactly
/// `MEDIA_ATTEMPTS_MAX` times (each under a fresh blob id), then given up:
/// the message turns expired and nothing stays pending.
#[test]
fn an_upload_never_confirmed_is_tried_a_bounded_number_of_times_then_expired() {
    let mut net = Net::with(&["alice", "bob"], ClientBugs::none());
    let id = net.call("alice", |c, now| c.send_media(&u("bob"), &[0x33; 1_000], now)).unwrap();
    let no_receipt = |name: &UserId, frame: &ServerFrame| match frame {
        ServerFrame::MediaStored { .. } if *name == u("alice") => Fate::Drop,
        _ => Fate::Deliver,
    };
    net.pump_with(no_receipt);
    net.tick("alice", media::MEDIA_ATTEMPTS_MAX + 3, 60_000, no_receipt);
    let blobs = blobs_uploaded_by(&net, "alice");
    assert_eq!(blobs.len(), media::MEDIA_ATTEMPTS_MAX as usize);
    assert_eq!(net.client("alice").media_pending(), (0, 0));
    assert_eq!(net.client("alice").status(&id).unwrap().of(&u("bob")), Some(DeliveryState::Expired));
}

/// The member limit counts the admin: a group may be created with
/// `GROUP_MEMBERS_MAX - 1` others and grown to exactly the limit, never past.
#[test]
fn an_admin_may_fill_a_group_to_exactly_the_member_limit() {
    let mut admin = Client::new(ClientConfig::new(u("admin"), PRIMARY_DEVICE), 1, T0);
    let users = |from: usize, n: usize| (from..from + n).map(|i| u(&format!("m{i}"))).collect::<Vec<_>>();
    assert!(matches!(
        admin.create_group(users(0, GROUP_MEMBERS_MAX), T0),
        Err(ClientError::TooManyMembers { members, .. }) if members == GROUP_MEMBERS_MAX + 1
    ));
    let full = admin.create_group(users(0, GROUP_MEMBERS_MAX - 1), T0).unwrap();
    assert_eq!(admin.group(&full).unwrap().1.len(), GROUP_MEMBERS_MAX);
    let g = admin.create_group(users(0, GROUP_MEMBERS_MAX - 2), T0).unwrap();
    admin.change_group(g, users(5_000, 1), vec![], T0).unwrap();
    assert_eq!(admin.group(&g).unwrap().0, 2);
    assert_eq!(admin.group(&g).unwrap().1.len(), GROUP_MEMBERS_MAX);
    assert!(matches!(
        admin.change_group(g, users(6_000, 1), vec![], T0),
        Err(ClientError::TooManyMembers { members, .. }) if members == GROUP_MEMBERS_MAX + 1
    ));
    // Swapping one member for another keeps it full and is allowed.
    admin.change_group(g, users(6_000, 1), users(0, 1), T0).unwrap();
    assert_eq!(admin.group(&g).unwrap().0, 3);
    assert_eq!(admin.group(&g).unwrap().1.len(), GROUP_MEMBERS_MAX);
}

/// A driver that reports a new connection without having reported the old
/// one closed (it missed the close) still gets a client that waits for the
/// server's challenge before it sends anything on the new connection.
#[test]
fn a_new_connection_restarts_the_login_even_without_a_reported_close() {
    let mut net = Net::with(&["alice", "bob"], ClientBugs::none());
    assert!(net.client("alice").is_ready());
    let before = net.sent.len();
    net.call("alice", |c, now| c.handle_connected(now));
    assert!(!net.client("alice").is_ready(), "a fresh connection is not logged in");
    net.call("alice", |c, now| c.send_text(&u("bob"), b"queued until login", now)).unwrap();
    assert_eq!(net.sent.len(), before, "nothing goes out before the challenge");
}

#[test]
fn superseded_orders_key_ids_by_wrapping_distance() {
    assert!(!superseded(&[], 1), "nothing held, nothing newer");
    assert!(superseded(&[5], 4));
    assert!(!superseded(&[5], 5), "the newest itself");
    assert!(!superseded(&[5, 4], 4), "still held");
    assert!(!superseded(&[5], 6), "newer than what we hold");
    assert!(superseded(&[2], u32::MAX), "ids wrap");
    assert!(superseded(&[1 << 31], 1), "just under half the id space behind");
    assert!(!superseded(&[1 << 31], 0), "exactly half way is taken as ahead");
}

/// Under `KeepUsedMessageKeys` a stolen copy of Bob's state opens a group
/// message he already read, with the copy of Alice's sender key he kept;
/// without the bug it does not.
#[test]
fn a_stolen_copy_opens_a_read_group_message_only_when_used_keys_were_kept() {
    for (bugs, opens) in [(ClientBugs::none(), false), (ClientBugs::none().with(ClientBug::KeepUsedMessageKeys), true)]
    {
        let (net, g, _, _, _) = group_scenario(bugs);
        let (id, ciphertext) = net
            .sent
            .iter()
            .find_map(|(n, f)| match f {
                ClientFrame::GroupSend { message_id, ciphertext, .. } if *n == u("alice") => {
                    Some((*message_id, ciphertext.clone()))
                }
                _ => None,
            })
            .unwrap();
        let envelope = group_envelope_from_alice("bob", g, id, ciphertext, net.now);
        let bob = &net.nodes[&u("bob")];
        let mut stolen = Client::restore(bob.config.clone(), &bob.saved).unwrap();
        assert_eq!(stolen.adversary_open(&envelope).is_some(), opens, "{:?}", bob.config.bugs);
    }
}

/// A backlog of deliveries at one instant: at most a burst of frames goes at
/// once, the rest at the pace, and acks that wait are merged — every seq is
/// acked, in far fewer frames than deliveries.
#[test]
fn frames_beyond_the_send_budget_wait_and_their_acks_merge() {
    let net = Net::with(&["alice"], ClientBugs::none());
    let node = &net.nodes[&u("alice")];
    let mut c = Client::restore(node.config.clone(), &node.saved).unwrap();
    let mut now = net.now;
    c.handle_connected(now);
    c.handle_frame(ServerFrame::Challenge { nonce: [7; 32] }, now);
    c.handle_frame(ServerFrame::Welcome { server_ts_ms: now }, now);
    let mut sent: Vec<ClientFrame> = std::iter::from_fn(|| c.poll_transmit()).collect();
    let before = sent.len();
    for seq in 0..1_000u64 {
        let item =
            Delivery::Expired { to: DeviceAddress::new(u("bob"), PRIMARY_DEVICE), message_id: MessageId([9; 16]) };
        c.handle_frame(ServerFrame::Deliver { seq, item }, now);
        sent.extend(std::iter::from_fn(|| c.poll_transmit()));
    }
    assert!(sent.len() <= pacer::PACE_BURST as usize, "{} frames at one instant", sent.len());
    let held: Vec<&ClientFrame> = c.queued_transmits().collect();
    assert!(!held.is_empty() && held.iter().all(|f| matches!(f, ClientFrame::DeliveryAck { .. })), "acks wait");
    let deadline = c.poll_timeout().unwrap();
    assert!(deadline > now && deadline <= now + 10, "the next frame is due shortly: {deadline}");
    let at_burst = sent.len();
    now += 1_000;
    c.handle_timeout(now);
    sent.extend(std::iter::from_fn(|| c.poll_transmit()));
    assert!(sent.len() - at_burst <= pacer::PACE_PER_SECOND as usize + 1, "one second's pace");
    for _ in 0..60 {
        now += 1_000;
        c.handle_timeout(now);
        sent.extend(std::iter::from_fn(|| c.poll_transmit()));
    }
    let acked: BTreeSet<u64> = sent
        .iter()
        .flat_map(|f| match f {
            ClientFrame::DeliveryAck { seqs } => seqs.clone(),
            _ => Vec::new(),
        })
        .collect();
    assert_eq!(acked, (0..1_000).collect::<BTreeSet<u64>>());
    let ack_frames = sent[before..].iter().filter(|f| matches!(f, ClientFrame::DeliveryAck { .. })).count();
    assert!(ack_frames < 400, "{ack_frames} ack frames for 1,000 deliveries");
}

/// Without frames held back from an earlier call, a call's frames keep their
/// order: the delivery receipt a message brings goes before the ack of the
/// delivery (only acks that would wait behind held frames jump ahead).
#[test]
fn unpaced_frames_keep_their_order_receipt_then_ack() {
    let mut net = Net::with(&["alice", "bob"], ClientBugs::none());
    let before = net.sent.len();
    net.call("alice", |c, now| c.send_text(&u("bob"), b"hi", now)).unwrap();
    net.pump();
    let bob: Vec<&ClientFrame> = net.sent[before..].iter().filter(|(n, _)| *n == u("bob")).map(|(_, f)| f).collect();
    let receipt = bob.iter().position(|f| matches!(f, ClientFrame::Receipt { .. })).expect("a delivery receipt");
    assert!(
        matches!(bob.get(receipt + 1), Some(ClientFrame::DeliveryAck { .. })),
        "the ack follows the receipt: {bob:?}"
    );
}

/// First messages to more contacts than the bundle-fetch rate allows: the
/// fetches past the limit wait for the window, and the client wakes itself
/// for them (nothing else would: every other request was answered).
#[test]
fn bundle_fetches_held_by_the_rate_limit_go_when_the_window_passes() {
    let contacts = BUNDLE_FETCHES_PER_WINDOW + 6;
    let names: Vec<String> = (0..contacts).map(|i| format!("c{i:02}")).collect();
    let mut all: Vec<&str> = vec!["alice"];
    all.extend(names.iter().map(String::as_str));
    let mut net = Net::with(&all, ClientBugs::none());
    for name in &names {
        net.call("alice", |c, now| c.send_text(&u(name), b"hello", now)).unwrap();
    }
    net.pump();
    let reached = |net: &Net| names.iter().filter(|n| net.bodies(n) == vec![b"hello".to_vec()]).count();
    // (Her own bundle, fetched to confirm her prekey upload, took a slot too.)
    let first = reached(&net);
    assert!(first > 0 && first <= BUNDLE_FETCHES_PER_WINDOW, "the rest wait for the fetch window: {first}");
    let wake = net.client("alice").poll_timeout().expect("alice wakes for the held fetches");
    assert!(wake <= net.now + BUNDLE_FETCH_WINDOW_MS, "{wake}");
    net.advance(BUNDLE_FETCH_WINDOW_MS + 1);
    assert_eq!(reached(&net), contacts);
}

/// A client told it may fetch more bundles a minute (a scale simulation
/// does, with the server's limit raised to match) reaches that many contacts
/// at once, and no more.
#[test]
fn a_raised_bundle_fetch_pace_reaches_more_contacts_at_once() {
    // Past the server's default limit too, so both ends must honour the setting.
    let pace = BUNDLE_FETCHES_PER_WINDOW + 20;
    let contacts = pace + 6;
    let names: Vec<String> = (0..contacts).map(|i| format!("c{i:02}")).collect();
    let mut all: Vec<&str> = vec!["alice"];
    all.extend(names.iter().map(String::as_str));
    let mut net = Net::new();
    net.server = Server::new(ServerConfig { bundle_fetches_per_minute: pace as u32, ..ServerConfig::default() }, 7);
    for (i, name) in all.iter().enumerate() {
        net.add(name, 100 + i as u64, ClientBugs::none());
        if i == 0 {
            let node = net.node(&u(name));
            node.config.bundle_fetches_per_minute = pace;
            node.client.config.bundle_fetches_per_minute = pace;
        }
        net.connect(name);
    }
    for name in &names {
        net.call("alice", |c, now| c.send_text(&u(name), b"hello", now)).unwrap();
    }
    net.pump();
    let reached = names.iter().filter(|n| net.bodies(n) == vec![b"hello".to_vec()]).count();
    // (Her own bundle, fetched to confirm her prekey upload, took a slot too.)
    let server_default = crate::server::keys::BUNDLE_FETCHES_PER_MINUTE_MAX as usize;
    assert!(reached > server_default && reached <= pace, "{reached} of {contacts} at once");
}

fn connection_hash(c: &Client) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    c.hash_connection_state(T0, &mut h);
    std::hash::Hasher::finish(&h)
}

#[test]
fn the_connection_state_hash_follows_the_state_not_the_inputs() {
    let mut net = Net::with(&["alice", "bob"], ClientBugs::none());
    net.pump();
    let idle = connection_hash(net.client("bob"));
    assert_eq!(net.client("bob").poll_timeout(), None, "nothing is due on an idle connection");
    // An input that changes nothing (a timer with nothing due) leaves the
    // same connection state, so a model checker sees one state, not two.
    net.call("bob", |c, now| c.handle_timeout(now));
    assert_eq!(connection_hash(net.client("bob")), idle);
    // A send in flight on this connection is part of it.
    net.call("bob", |c, now| c.send_text(&u("alice"), b"hi", now)).unwrap();
    let in_flight = connection_hash(net.client("bob"));
    assert_ne!(in_flight, idle);
    // A copy restored from the save has no connection state at all.
    let restored = Client::restore(net.nodes[&u("bob")].config.clone(), &net.client("bob").save()).unwrap();
    assert_ne!(connection_hash(&restored), in_flight);
    assert_eq!(
        connection_hash(&restored),
        connection_hash(&Client::restore(net.nodes[&u("bob")].config.clone(), &net.client("bob").save()).unwrap())
    );
}

/// A group's description is taken only from its admin and only when it
/// lists both the admin and us: a list without its admin is ignored.
#[test]
fn group_info_that_leaves_out_its_admin_is_ignored() {
    let mut bob = Client::new(ClientConfig::new(u("bob"), PRIMARY_DEVICE), 2, T0);
    let g = GroupId([0x42; 16]);
    bob.on_group_info(&u("alice"), g, 1, u("alice"), vec![u("bob"), u("carol")]);
    assert!(bob.group(&g).is_none(), "alice is not in the list she sent");
    bob.on_group_info(&u("alice"), g, 1, u("alice"), vec![u("alice"), u("carol")]);
    assert!(bob.group(&g).is_none(), "bob is not in it either");
    bob.on_group_info(&u("alice"), g, 1, u("alice"), vec![u("alice"), u("bob"), u("carol")]);
    assert_eq!(bob.group(&g).map(|(v, m)| (v, m.len())), Some((1, 3)));
}

/// The app may follow exactly `SUBSCRIPTIONS_MAX` users, not one more.
#[test]
fn presence_subscriptions_are_capped_at_exactly_the_limit() {
    use crate::server::presence::SUBSCRIPTIONS_MAX;
    let mut alice = Client::new(ClientConfig::new(u("alice"), PRIMARY_DEVICE), 1, T0);
    let users = |n: usize| (0..n).map(|i| u(&format!("p{i}"))).collect::<Vec<_>>();
    alice.subscribe_presence(&users(SUBSCRIPTIONS_MAX), T0).unwrap();
    assert_eq!(alice.presence_subscriptions().count(), SUBSCRIPTIONS_MAX);
    assert!(matches!(
        alice.subscribe_presence(&users(SUBSCRIPTIONS_MAX + 1), T0),
        Err(ClientError::TooManySubscriptions { len, .. }) if len == SUBSCRIPTIONS_MAX + 1
    ));
    assert_eq!(alice.presence_subscriptions().count(), SUBSCRIPTIONS_MAX, "a refused list changes nothing");
}

/// A download whose chunks never come is retried `MEDIA_ATTEMPTS_MAX`
/// times, then given up: the app is told the attachment could not be
/// fetched, and nothing stays pending.
#[test]
fn a_download_that_never_progresses_is_given_up_and_reported() {
    let mut net = Net::with(&["alice", "bob"], ClientBugs::none());
    let id = net.call("alice", |c, now| c.send_media(&u("bob"), &[0x44; 1_000], now)).unwrap();
    let no_chunks = |name: &UserId, frame: &ServerFrame| match frame {
        ServerFrame::MediaChunk { .. } if *name == u("bob") => Fate::Drop,
        _ => Fate::Deliver,
    };
    net.pump_with(no_chunks);
    assert_eq!(net.client("bob").media_pending().1, 1, "the pointer arrived, the download waits");
    net.tick("bob", media::MEDIA_ATTEMPTS_MAX + 3, 60_000, no_chunks);
    assert_eq!(net.client("bob").media_pending(), (0, 0));
    let events = &net.nodes[&u("bob")].events;
    assert!(
        events.iter().any(|e| matches!(e, AppEvent::Undecryptable { id: i, reason: UndecryptableReason::Media { .. }, .. } if *i == id)),
        "{events:?}"
    );
}

#[test]
#[should_panic(expected = "differ from a full save")]
fn the_harness_catches_a_change_left_out_of_an_incremental_save() {
    let mut net = Net::with(&["alice", "bob"], ClientBugs::none());
    journal::FORGET_TOUCHES.with(|f| f.set(true));
    net.call("alice", |c, now| c.send_text(&u("bob"), b"hi", now).unwrap());
    net.pump();
}

#[test]
fn incremental_saves_carry_what_changed_not_the_whole_state() {
    let mut net = Net::with(&["alice", "bob"], ClientBugs::none());
    for _ in 0..200 {
        net.call("alice", |c, now| c.send_text(&u("bob"), b"hello", now).unwrap());
        net.tick("alice", 3, 1_000, |_, _| Fate::Deliver);
    }
    let journal_len = |net: &Net, name: &str| net.nodes[&u(name)].change_lens.clone();
    let (alice_before, bob_before) = (journal_len(&net, "alice").len(), journal_len(&net, "bob").len());
    net.call("alice", |c, now| c.send_text(&u("bob"), b"one more", now).unwrap());
    net.tick("alice", 3, 1_000, |_, _| Fate::Deliver);
    for name in ["alice", "bob"] {
        let full = net.client(name).save().as_bytes().len();
        let before = if name == "alice" { alice_before } else { bob_before };
        let recent = journal_len(&net, name);
        assert!(recent.len() > before, "{name} saved changes");
        // Each save of the last message carries a ratchet step, a status or
        // dedup entry and small counters: not the 200 messages before it,
        // nor the hundred one-time prekeys.
        for len in &recent[before..] {
            assert!(len * 8 < full, "{name}: a change of {len} bytes vs a full save of {full} bytes");
        }
    }
}

#[test]
fn receipts_owed_while_a_receipt_frame_is_held_wait_and_join_one_batch() {
    let mut net = Net::with(&["alice", "bob"], ClientBugs::none());
    // From now on Bob may send about one frame a second: what he owes
    // queues behind his pacer.
    {
        let bob = &mut net.node(&u("bob")).client;
        bob.config.pace = pacer::Pace::under(2, 2);
        bob.vol.pacer = None;
    }
    let mut sent = BTreeSet::new();
    for i in 0..6u8 {
        sent.insert(net.call("alice", |c, now| c.send_text(&u("bob"), &[i], now).unwrap()));
        net.pump();
        net.advance(100);
    }
    for _ in 0..60 {
        net.advance(1_000);
    }
    let receipts: Vec<&Vec<MessageId>> = net
        .sent
        .iter()
        .filter_map(|(who, f)| match f {
            ClientFrame::Receipt { kind: ReceiptKind::Delivered, message_ids, .. } if *who == u("bob") => {
                Some(message_ids)
            }
            _ => None,
        })
        .collect();
    let covered: BTreeSet<MessageId> = receipts.iter().flat_map(|ids| ids.iter().copied()).collect();
    assert_eq!(covered, sent, "every message got its delivered receipt");
    // The first leaves at once, the second waits for the budget, and the
    // four owed meanwhile go together once it left (without the wait, one
    // frame per delivery).
    assert!(receipts.len() <= 3, "{} receipt frames for 6 messages: {receipts:?}", receipts.len());
}

/// A bundle that arrives after the peer has opened a session with us starts
/// no second one: the peer's session is kept, so what we send next is an
/// ordinary ratchet message, not another first contact (which would replace
/// the session the peer is using and spend a one-time prekey for nothing).
#[test]
fn a_bundle_arriving_after_the_peer_opened_a_session_keeps_that_session() {
    let (mut net, held) = alice_writes_to_bob_and_her_bundle_is_held();
    net.call("bob", |c, now| c.send_text(&u("alice"), b"hello", now)).unwrap();
    net.pump();
    assert_eq!(net.bodies("alice"), vec![b"hello".to_vec()]);
    net.call("alice", |c, now| c.handle_frame(held, now));
    net.pump();
    net.call("alice", |c, now| c.send_text(&u("bob"), b"again", now)).unwrap();
    net.pump();
    let sends = net.sends_by("alice");
    assert!(
        sends.iter().all(|(_, kind, _)| *kind == EnvelopeKind::Message),
        "alice opened a session of her own: {:?}",
        sends.iter().map(|s| s.1).collect::<Vec<_>>()
    );
    assert_eq!(net.bodies("bob"), vec![b"hi".to_vec(), b"again".to_vec()]);
}

/// When the held changes overflow, the oldest is rejected with the reason
/// that is true: a version gap when we know the group and its admin's key
/// (not "admin key unknown", which would send the user looking for the
/// wrong fault).
#[test]
fn an_overflowing_hold_rejects_the_oldest_change_as_a_version_gap() {
    let mut net = Net::with(&["alice", "bob", "carol"], ClientBugs::none());
    let g = net.call("alice", |c, now| c.create_group(vec![u("bob")], now)).unwrap();
    net.pump();
    let (bob_version, _) = net.client("bob").group(&g).expect("bob is in the group");
    let to_bob = |name: &UserId, frame: &ServerFrame| match frame {
        ServerFrame::Deliver { item: Delivery::GroupChange(_), .. } if name.as_str() == "bob" => Fate::Drop,
        _ => Fate::Deliver,
    };
    let changes = groups::HELD_GROUP_CHANGES_MAX + 2;
    for i in 0..changes {
        let (add, remove) = if i % 2 == 0 { (vec![u("carol")], vec![]) } else { (vec![], vec![u("carol")]) };
        net.call("alice", |c, now| c.change_group(g, add, remove, now)).unwrap();
        net.pump_with(to_bob);
    }
    let sent: Vec<SignedGroupChange> = net
        .sent
        .iter()
        .filter_map(|(n, f)| match f {
            ClientFrame::GroupChange { change } if *n == u("alice") && change.version > bob_version => {
                Some(change.clone())
            }
            _ => None,
        })
        .collect();
    assert_eq!(sent.len(), changes);
    // The first change after bob's version never reaches him, so each later
    // one is held until the hold overflows.
    for (i, change) in sent.into_iter().skip(1).enumerate() {
        let seq = 9_000 + i as u64;
        net.call("bob", |c, now| {
            c.handle_frame(ServerFrame::Deliver { seq, item: Delivery::GroupChange(change) }, now)
        });
    }
    let rejected: Vec<_> = net.nodes[&u("bob")]
        .events
        .iter()
        .filter_map(|e| match e {
            AppEvent::GroupChangeRejected { version, reason, .. } => Some((*version, reason.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(
        rejected,
        vec![(bob_version + 2, GroupChangeRejection::VersionGap { current: bob_version, got: bob_version + 2 })]
    );
}
