//! State-machine test of the mailbox against a reference model that is too
//! simple to be wrong: a vector in enqueue order. After every operation the
//! outputs and the held entries must agree. A second test switches each
//! deliberate bug on and expects the comparison to fail, so the check is seen
//! to be able to fail.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use bluetick_core::ids::{DeviceAddress, DeviceId, MessageId, UserId};
use bluetick_core::server::mailbox::{Enqueued, EntryKey, Mailbox, MailboxBug};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

#[derive(Debug, Clone)]
enum Op {
    Enqueue { sender: u8, id: u8, ttl_ms: u64 },
    Poll { window: usize },
    Ack { sender: u8, id: u8 },
    Disconnect,
    AckTimeout,
    Advance { ms: u64 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u8..3, 0u8..6, 1u64..5_000).prop_map(|(sender, id, ttl_ms)| Op::Enqueue { sender, id, ttl_ms }),
        3 => (0usize..4).prop_map(|window| Op::Poll { window }),
        3 => (0u8..3, 0u8..6).prop_map(|(sender, id)| Op::Ack { sender, id }),
        1 => Just(Op::Disconnect),
        1 => Just(Op::AckTimeout),
        2 => (0u64..2_000).prop_map(|ms| Op::Advance { ms }),
    ]
}

fn key(sender: u8, id: u8) -> EntryKey {
    let user = UserId::new(&format!("u{sender}")).unwrap();
    (DeviceAddress::new(user, DeviceId(1)), MessageId([id; 16]))
}

const DEPTH: usize = 8;
const ACK_TIMEOUT_MS: u64 = 1_000;

/// The reference: entries in enqueue order, each (key, payload, expiry, in flight since).
#[derive(Default)]
struct Reference {
    entries: Vec<(EntryKey, u32, u64, Option<u64>)>,
}

impl Reference {
    fn enqueue(&mut self, k: EntryKey, payload: u32, exp: u64) -> Result<bool, ()> {
        if self.entries.iter().any(|e| e.0 == k) {
            return Ok(false);
        }
        if self.entries.len() >= DEPTH {
            return Err(());
        }
        self.entries.push((k, payload, exp, None));
        Ok(true)
    }
    fn poll(&mut self, now: u64, window: usize) -> Vec<u32> {
        let in_flight = self.entries.iter().filter(|e| e.3.is_some()).count();
        let room = window.saturating_sub(in_flight);
        let mut out = vec![];
        for e in self.entries.iter_mut().filter(|e| e.3.is_none()).take(room) {
            e.3 = Some(now);
            out.push(e.1);
        }
        out
    }
    fn ack(&mut self, k: &EntryKey) -> Option<u32> {
        let pos = self.entries.iter().position(|e| &e.0 == k)?;
        Some(self.entries.remove(pos).1)
    }
    fn expire(&mut self, now: u64) -> Vec<u32> {
        let mut gone: Vec<(u64, u32)> = vec![];
        self.entries.retain(|e| {
            if e.2 <= now {
                gone.push((e.2, e.1));
                false
            } else {
                true
            }
        });
        gone.sort();
        gone.into_iter().map(|g| g.1).collect()
    }
}

fn run(ops: &[Op], bug: Option<MailboxBug>) -> Result<(), TestCaseError> {
    let mut real: Mailbox<u32> = Mailbox::with_depth_max(DEPTH);
    real.set_bug(bug);
    let mut model = Reference::default();
    let mut now = 0u64;
    let mut next_payload = 0u32;
    for (step, op) in ops.iter().enumerate() {
        match op {
            Op::Enqueue { sender, id, ttl_ms } => {
                next_payload += 1;
                let k = key(*sender, *id);
                let r = real.enqueue(k.clone(), next_payload, now + ttl_ms);
                let m = model.enqueue(k, next_payload, now + ttl_ms);
                let same = matches!(
                    (&r, &m),
                    (Ok(Enqueued::New(_)), Ok(true)) | (Ok(Enqueued::Duplicate(_)), Ok(false)) | (Err(_), Err(()))
                );
                prop_assert!(same, "step {step} {op:?}: real {r:?}, model {m:?}");
            }
            Op::Poll { window } => {
                let r: Vec<u32> = real.poll_deliveries(now, *window).into_iter().map(|e| e.payload).collect();
                let m = model.poll(now, *window);
                prop_assert_eq!(r, m, "step {} {:?}", step, op);
            }
            Op::Ack { sender, id } => {
                let k = key(*sender, *id);
                let r = real.ack(&k).map(|e| e.payload);
                let m = model.ack(&k);
                prop_assert_eq!(r, m, "step {} {:?}", step, op);
            }
            Op::Disconnect => {
                real.requeue_all();
                model.entries.iter_mut().for_each(|e| e.3 = None);
            }
            Op::AckTimeout => {
                real.requeue_timed_out(now, ACK_TIMEOUT_MS);
                for e in model.entries.iter_mut() {
                    if e.3.is_some_and(|since| since + ACK_TIMEOUT_MS <= now) {
                        e.3 = None;
                    }
                }
            }
            Op::Advance { ms } => {
                now += ms;
                let r: Vec<u32> = real.expire(now).into_iter().map(|e| e.payload).collect();
                let m = model.expire(now);
                prop_assert_eq!(r, m, "step {} {:?} (expiry)", step, op);
            }
        }
        let held: Vec<u32> = real.entries().map(|e| e.payload).collect();
        let want: Vec<u32> = model.entries.iter().map(|e| e.1).collect();
        prop_assert_eq!(held, want, "held entries differ after step {} {:?}", step, op);
        prop_assert_eq!(real.in_flight_len(), model.entries.iter().filter(|e| e.3.is_some()).count());
    }
    Ok(())
}

proptest! {
    #![proptest_config(Config { cases: 256, ..Config::default() })]
    #[test]
    fn mailbox_agrees_with_the_reference_model(ops in proptest::collection::vec(op(), 1..60)) {
        run(&ops, None)?;
    }
}

#[test]
fn each_injected_mailbox_bug_is_caught_by_the_model_comparison() {
    for bug in [MailboxBug::DeleteOnSend, MailboxBug::EnqueueNotIdempotent, MailboxBug::IgnoreAck] {
        let mut runner = TestRunner::new(Config { cases: 256, failure_persistence: None, ..Config::default() });
        let result = runner.run(&proptest::collection::vec(op(), 1..60), |ops| run(&ops, Some(bug)));
        assert!(result.is_err(), "the model comparison missed {bug:?}");
    }
}
