//! Frame-level faults in our own framing layer.
//!
//! turmoil's TCP cannot duplicate, loses data only by breaking a whole link
//! (it has no retransmission), and knows nothing of our frames. So the
//! faults a scenario states per frame — background loss, duplication and
//! latency jitter ([`Faults`]), targeted drops/duplicates/delays by frame
//! kind, direction and user ([`FrameFault`]), and partitions of user sets
//! that do not map onto whole farm hosts — are applied by a `DeviceTap`
//! that sits in each simulated device between the client driver and its
//! WebSocket (bluetick-net's [`FrameTap`] hook). Frames to a device are
//! decided when they reach it, before its core sees them; frames from it,
//! before they are written. Each device draws from its own seeded RNG, so one
//! user's traffic does not shift another's faults.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bluetick_core::ids::UserId;
use bluetick_core::wire::{ClientFrame, ServerFrame};
use bluetick_core::world::faults::{Direction, FrameFault};
use bluetick_core::world::oracle::FrameFaultCount;
use bluetick_core::world::Faults;
use bluetick_net::client::{FrameFate, FrameTap};
use rand_chacha::ChaCha20Rng;
use rand_core::RngCore;

use super::net::{lock, sim_now_ms};
use super::record::{FaultAction, Record, SharedLog};

/// The faults in force, shared by every tap and changed by the driver.
#[derive(Debug, Clone)]
pub(crate) struct FaultPlan {
    /// Background loss, duplication and latency.
    pub(crate) faults: Faults,
    /// Whether background faults apply (quiesce turns them off).
    pub(crate) faults_on: bool,
    /// Targeted faults in force: each with its index in `counts`.
    pub(crate) frame_faults: Vec<(usize, FrameFault)>,
    /// Every targeted fault ever added, in order, with what it did.
    pub(crate) counts: Vec<FrameFaultCount>,
    /// Users cut off in the framing layer: both ways (`None`) or one direction.
    pub(crate) cut: BTreeMap<UserId, Option<Direction>>,
}

impl FaultPlan {
    pub(crate) fn new(faults: Faults) -> Self {
        FaultPlan { faults, faults_on: true, frame_faults: Vec::new(), counts: Vec::new(), cut: BTreeMap::new() }
    }

    /// Puts `rule` in force (and starts counting what it does).
    pub(crate) fn add(&mut self, rule: FrameFault) {
        let index = self.counts.len();
        self.counts.push(FrameFaultCount { rule: rule.clone(), matched: 0, dropped: 0, duplicated: 0, delayed: 0 });
        self.frame_faults.push((index, rule));
    }
}

/// One device's [`FrameTap`].
#[derive(Debug)]
pub(crate) struct DeviceTap {
    pub(crate) user: UserId,
    pub(crate) plan: Arc<Mutex<FaultPlan>>,
    pub(crate) rng: Mutex<ChaCha20Rng>,
    pub(crate) log: SharedLog,
}

/// True with probability `per_mille`/1000; draws only when it can be true,
/// so a fault that is off does not shift the random stream.
fn roll(rng: &mut ChaCha20Rng, per_mille: u32) -> bool {
    per_mille > 0 && rng.next_u32() % 1000 < per_mille
}

impl DeviceTap {
    /// The fate of one frame; `about` is the user a presence frame is about
    /// (a fault on it excuses that pair from the presence check).
    fn fate(
        &self,
        direction: Direction,
        kind: &'static str,
        delivery_kind: Option<&'static str>,
        about: Option<&UserId>,
    ) -> FrameFate {
        let mut plan = lock(&self.plan);
        let mut rng = lock(&self.rng);
        let mut actions = Vec::new();
        let fate = self.decide(&mut plan, &mut rng, (direction, kind, delivery_kind), &mut actions);
        let kind = delivery_kind.unwrap_or(kind);
        drop(rng);
        drop(plan);
        let mut log = lock(&self.log);
        log.frames_delivered += fate.copies.len() as u64;
        if !actions.is_empty() {
            let at_ms = sim_now_ms();
            for action in actions {
                let about = about.cloned();
                log.push(Record::Fault { at_ms, user: self.user.clone(), direction, kind, action, about });
            }
        }
        fate
    }

    fn decide(
        &self,
        plan: &mut FaultPlan,
        rng: &mut ChaCha20Rng,
        (direction, kind, delivery_kind): (Direction, &str, Option<&str>),
        actions: &mut Vec<FaultAction>,
    ) -> FrameFate {
        if let Some(cut) = plan.cut.get(&self.user) {
            if cut.is_none_or(|d| d == direction) {
                actions.push(FaultAction::Cut);
                return FrameFate::lost();
            }
        }
        let mut copies = 1usize;
        let mut delay_ms = 0u64;
        if plan.faults_on {
            if roll(rng, plan.faults.drop_per_mille) {
                actions.push(FaultAction::Dropped);
                return FrameFate::lost();
            }
            if roll(rng, plan.faults.duplicate_per_mille) {
                copies = 2;
                actions.push(FaultAction::Duplicated);
            }
        }
        let FaultPlan { frame_faults, counts, .. } = plan;
        for (index, f) in frame_faults.iter() {
            if !f.matches(kind, delivery_kind, direction, &self.user) {
                continue;
            }
            let mut ignored = FrameFaultCount { rule: f.clone(), matched: 0, dropped: 0, duplicated: 0, delayed: 0 };
            let count = counts.get_mut(*index).unwrap_or(&mut ignored);
            count.matched += 1;
            if roll(rng, f.drop_per_mille) {
                count.dropped += 1;
                actions.push(FaultAction::Dropped);
                return FrameFate::lost();
            }
            if copies < 2 && roll(rng, f.duplicate_per_mille) {
                count.duplicated += 1;
                copies = 2;
                actions.push(FaultAction::Duplicated);
            }
            if f.delay_ms > 0 {
                count.delayed += 1;
                delay_ms = delay_ms.max(f.delay_ms);
            }
        }
        if delay_ms > 0 {
            actions.push(FaultAction::Delayed { ms: delay_ms });
        }
        // The link itself carries the minimum latency; the spread above it is
        // drawn per copy here, so copies and later frames may overtake.
        let spread = plan.faults.latency_max_ms.saturating_sub(plan.faults.latency_min_ms);
        let copies = (0..copies)
            .map(|_| {
                let jitter = if plan.faults_on && spread > 0 { rng.next_u64() % (spread + 1) } else { 0 };
                Duration::from_millis(delay_ms.saturating_add(jitter))
            })
            .collect();
        FrameFate { copies }
    }
}

impl FrameTap for DeviceTap {
    fn outgoing(&self, frame: &ClientFrame, _now_ms: u64) -> FrameFate {
        self.fate(Direction::ToServer, frame.kind(), None, None)
    }

    fn incoming(&self, frame: &ServerFrame, _now_ms: u64) -> FrameFate {
        let about = match frame {
            ServerFrame::Presence { user, .. } => Some(user),
            _ => None,
        };
        self.fate(Direction::ToClient, frame.kind(), frame.delivery_kind(), about)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_core::SeedableRng;

    fn tap(plan: FaultPlan) -> DeviceTap {
        DeviceTap {
            user: UserId::new("bob").unwrap(),
            plan: Arc::new(Mutex::new(plan)),
            rng: Mutex::new(ChaCha20Rng::seed_from_u64(1)),
            log: SharedLog::default(),
        }
    }

    fn fault(kind: &str, direction: Direction, user: Option<&str>) -> FrameFault {
        FrameFault {
            kind: Some(kind.to_string()),
            direction: Some(direction),
            user: user.map(|u| UserId::new(u).unwrap()),
            drop_per_mille: 1000,
            duplicate_per_mille: 0,
            delay_ms: 0,
        }
    }

    #[test]
    fn a_targeted_drop_hits_only_its_kind_direction_and_user() {
        let mut plan = FaultPlan::new(Faults::NONE);
        plan.add(fault("delivery-ack", Direction::ToServer, Some("bob")));
        let t = tap(plan);
        assert!(t.fate(Direction::ToServer, "delivery-ack", None, None).copies.is_empty());
        assert_eq!(t.fate(Direction::ToServer, "send", None, None).copies.len(), 1);
        assert_eq!(t.fate(Direction::ToClient, "delivery-ack", None, None).copies.len(), 1);
        let counts = &lock(&t.plan).counts;
        assert_eq!((counts[0].matched, counts[0].dropped), (1, 1));
        let mut other = FaultPlan::new(Faults::NONE);
        other.add(fault("delivery-ack", Direction::ToServer, Some("alice")));
        assert_eq!(tap(other).fate(Direction::ToServer, "delivery-ack", None, None).copies.len(), 1);
    }

    #[test]
    fn duplication_and_delay_give_two_late_copies_and_are_logged() {
        let mut plan = FaultPlan::new(Faults::NONE);
        let rule = fault("deliver-receipt", Direction::ToClient, None);
        plan.add(FrameFault { drop_per_mille: 0, duplicate_per_mille: 1000, delay_ms: 40, ..rule });
        let t = tap(plan);
        assert_eq!(t.fate(Direction::ToClient, "deliver", Some("deliver-envelope"), None).copies, vec![Duration::ZERO]);
        let fate = t.fate(Direction::ToClient, "deliver", Some("deliver-receipt"), None);
        assert_eq!(fate.copies, vec![Duration::from_millis(40); 2]);
        let (records, _) = lock(&t.log).take();
        assert_eq!(records.len(), 2, "{records:?}");
    }

    #[test]
    fn a_one_way_cut_loses_only_that_direction_and_quiet_faults_draw_nothing() {
        let mut plan = FaultPlan::new(Faults::NONE);
        plan.cut.insert(UserId::new("bob").unwrap(), Some(Direction::ToClient));
        let t = tap(plan);
        assert!(t.fate(Direction::ToClient, "deliver", None, None).copies.is_empty());
        assert_eq!(t.fate(Direction::ToServer, "send", None, None).copies, vec![Duration::ZERO]);
        // No fault with a chance above zero: the generator was never used.
        let untouched = ChaCha20Rng::seed_from_u64(1).next_u64();
        assert_eq!(lock(&t.rng).next_u64(), untouched);
    }
}
