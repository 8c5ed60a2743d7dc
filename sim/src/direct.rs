//! The direct driver: the core's in-process [`World`] (real crypto, no
//! tokio, no sockets) behind the [`Driver`] trait. It is the fast one, for
//! populations turmoil cannot reach: 1,024-member groups with churn,
//! presence storms, long offline periods past the TTL.

use bluetick_core::ids::{GroupId, MessageId, UserId};
use bluetick_core::wire::Visibility;
use bluetick_core::world::oracle::{History, Violation};
use bluetick_core::world::{Faults, World, WorldConfig};

use crate::driver::{Direction, Driver, DriverConfig, FrameFault, TraceEvent, Unsupported};

/// [`Driver`] over [`World`].
pub struct DirectDriver {
    world: World,
}

impl DirectDriver {
    /// Builds the world. `record_ciphertexts` keeps every delivered envelope
    /// for a later compromise check (memory grows with traffic; turn it on
    /// only when the scenario compromises a device).
    pub fn new(config: &DriverConfig, record_ciphertexts: bool) -> Self {
        let wc = WorldConfig {
            seed: config.seed,
            users: config.users.clone(),
            faults: config.faults,
            server: config.server.clone(),
            client_bugs: config.client_bugs.clone(),
            suite: config.suite,
            client_resend_after_ms: config.resend_after_ms,
            reconnect_after_ms: config.reconnect_after_ms,
            client_bundle_fetches_per_minute: config.bundle_fetches_per_minute,
            verify_saves: false,
            trace: true,
            record_ciphertexts,
        };
        DirectDriver { world: World::new(wc) }
    }

    /// The world, for checks and reports.
    pub fn world(&self) -> &World {
        &self.world
    }
}

impl Driver for DirectDriver {
    fn name(&self) -> &'static str {
        "direct"
    }

    fn now_ms(&self) -> u64 {
        self.world.now_ms()
    }

    fn run_until(&mut self, t_ms: u64) {
        self.world.run_until(t_ms);
    }

    fn send_text(&mut self, from: &UserId, to: &UserId, body: &[u8]) -> Option<MessageId> {
        self.world.send_text(from, to, body)
    }

    fn create_group(&mut self, from: &UserId, members: &[UserId]) -> Option<GroupId> {
        self.world.create_group(from, members)
    }

    fn change_group(&mut self, admin: &UserId, group: GroupId, add: &[UserId], remove: &[UserId]) -> bool {
        self.world.change_group(admin, group, add, remove)
    }

    fn send_group(&mut self, from: &UserId, group: GroupId, body: &[u8]) -> Option<MessageId> {
        self.world.send_group(from, group, body)
    }

    fn mark_read(&mut self, reader: &UserId, peer: &UserId) {
        self.world.mark_read(reader, peer);
    }

    fn set_faults(&mut self, faults: Faults) {
        self.world.set_fault_knobs(faults);
    }

    fn add_frame_fault(&mut self, fault: FrameFault) {
        self.world.add_frame_fault(fault);
    }

    fn clear_frame_faults(&mut self) {
        self.world.clear_frame_faults();
    }

    fn partition(&mut self, users: &[UserId], direction: Option<Direction>) {
        self.world.partition(users, direction);
    }

    fn heal(&mut self) {
        self.world.heal();
    }

    fn disconnect(&mut self, user: &UserId) {
        self.world.disconnect(user);
    }

    fn connect(&mut self, user: &UserId) {
        self.world.connect(user);
    }

    fn crash_client(&mut self, user: &UserId) {
        self.world.crash_client(user);
    }

    fn crash_server(&mut self) {
        self.world.crash_server();
    }

    fn set_clock_offset(&mut self, user: &UserId, offset_ms: i64) {
        self.world.set_clock_offset(user, offset_ms);
    }

    fn quiesce(&mut self, budget_ms: u64) {
        self.world.quiesce(budget_ms);
    }

    fn finish(&mut self) -> Vec<Violation> {
        self.world.finish().to_vec()
    }

    fn history(&self) -> &History {
        self.world.history()
    }

    fn trace(&self) -> Vec<TraceEvent> {
        self.world.trace().to_vec()
    }

    fn drain_trace(&mut self, out: &mut Vec<TraceEvent>) {
        self.world.drain_trace(out);
    }

    fn send_media(&mut self, from: &UserId, to: &UserId, bytes: &[u8]) -> Result<Option<MessageId>, Unsupported> {
        Ok(self.world.send_media(from, to, bytes))
    }

    fn set_presence_privacy(
        &mut self,
        owner: &UserId,
        visibility: Visibility,
        contacts: &[UserId],
    ) -> Result<(), Unsupported> {
        self.world.set_presence_privacy(owner, visibility, contacts);
        Ok(())
    }

    fn subscribe_presence(&mut self, subscriber: &UserId, targets: &[UserId]) -> Result<(), Unsupported> {
        self.world.subscribe_presence(subscriber, targets);
        Ok(())
    }

    fn compromise(&mut self, user: &UserId) -> Result<(), Unsupported> {
        self.world.compromise(user);
        Ok(())
    }
}
