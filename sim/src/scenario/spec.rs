//! A checked scenario: every name resolved to a user or group, every time in
//! milliseconds, every default applied. Produced by [`super::validate`];
//! turned into one concrete run by [`super::resolve`].

use std::collections::{BTreeMap, BTreeSet};

use bluetick_core::ids::UserId;
use bluetick_crypto::CipherSuite;
use serde::Serialize;

pub use super::model::{DriverKind, SendKind, VisibilityName};
use super::units::Spread;

/// A validated scenario.
#[derive(Debug, Clone, Serialize)]
pub struct Scenario {
    /// The file it came from, as given.
    pub file: String,
    /// Its name (the report folder).
    pub name: String,
    /// What it shows.
    pub description: String,
    /// Length of the workload-and-faults phase, ms.
    pub duration_ms: u64,
    /// Default seed.
    pub seed: u64,
    /// Seeds run when none is given on the command line.
    pub seeds: Vec<u64>,
    /// Default driver.
    pub driver: DriverKind,
    /// Cipher suite of every device (`symbolic-insecure` for scale runs).
    pub suite: CipherSuite,
    /// Swarm mode: unset knobs are drawn from the seed.
    pub swarm: bool,
    /// Every user, in declared order (explicit names first).
    pub users: Vec<UserId>,
    /// Who knows whom.
    pub contacts: Contacts,
    /// Groups.
    pub groups: Vec<GroupSpec>,
    /// What the users do.
    pub workload: Workload,
    /// Presence settings.
    pub presence: PresenceSpec,
    /// Network and random-fault knobs as the file sets them.
    pub knobs: PartialKnobs,
    /// Length of each random partition, ms.
    pub partition_for_ms: Spread<u64>,
    /// Users random faults may hit.
    pub random_fault_users: Vec<UserId>,
    /// Faults on the timeline.
    pub faults: TimedFaults,
    /// The convergence bound after quiesce, ms.
    pub converge_within_ms: u64,
    /// Server tunables.
    pub server: ServerTunables,
    /// Client tunables.
    pub clients: ClientTunables,
    /// Deliberate bugs.
    pub bugs: Bugs,
    /// Matrix axes, in file order.
    pub matrix: Vec<MatrixAxis>,
    /// Expectations.
    pub expect: Expect,
}

/// Who knows whom (symmetric).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Contacts {
    /// Everyone knows everyone.
    pub everyone: bool,
    /// Each user's contacts, when not `everyone`.
    pub of: BTreeMap<UserId, BTreeSet<UserId>>,
}

impl Contacts {
    /// `user`'s contacts among `all`.
    pub fn of<'a>(&'a self, user: &UserId, all: &'a [UserId]) -> Vec<&'a UserId> {
        if self.everyone {
            all.iter().filter(|u| *u != user).collect()
        } else {
            self.of.get(user).map(|s| s.iter().collect()).unwrap_or_default()
        }
    }
}

/// A group and its membership over time.
#[derive(Debug, Clone, Serialize)]
pub struct GroupSpec {
    /// Its label in the file.
    pub label: String,
    /// The admin.
    pub admin: UserId,
    /// Initial members besides the admin.
    pub members: BTreeSet<UserId>,
    /// Creation time, ms.
    pub at_ms: u64,
    /// Fixed changes, in time order.
    pub changes: Vec<GroupChangeSpec>,
    /// Random joins and leaves.
    pub churn: Option<ChurnSpec>,
}

/// One fixed membership change.
#[derive(Debug, Clone, Serialize)]
pub struct GroupChangeSpec {
    /// When, ms.
    pub at_ms: u64,
    /// Users added.
    pub add: BTreeSet<UserId>,
    /// Users removed.
    pub remove: BTreeSet<UserId>,
}

/// Random joins and leaves.
#[derive(Debug, Clone, Serialize)]
pub struct ChurnSpec {
    /// Time between changes, ms.
    pub every_ms: u64,
    /// Joins per change.
    pub join: u32,
    /// Leaves per change.
    pub leave: u32,
    /// Who may join.
    pub pool: Vec<UserId>,
    /// First change, ms.
    pub from_ms: u64,
    /// Last possible change, ms.
    pub until_ms: u64,
}

/// Send rates, per simulated second.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Rates {
    /// 1:1 texts.
    pub direct_per_s: f64,
    /// Group texts.
    pub group_per_s: f64,
    /// Media.
    pub media_per_s: f64,
}

/// What users do.
#[derive(Debug, Clone, Serialize)]
pub struct Workload {
    /// Whole-population rates.
    pub global: Rates,
    /// Per-user senders.
    pub senders: Vec<SenderSpec>,
    /// Bursts at fixed times.
    pub bursts: Vec<BurstSpec>,
    /// Text body sizes.
    pub body_bytes: Spread<u32>,
    /// Media sizes.
    pub media_bytes: Spread<u32>,
    /// Read delay, ms; `None`: nobody reads.
    pub read_delay_ms: Option<Spread<u64>>,
    /// End of generated sends, ms.
    pub until_ms: u64,
    /// Offline periods.
    pub offline: Vec<OfflineSpec>,
    /// Flapping users.
    pub flap: Vec<FlapSpec>,
}

/// Users sending at per-user rates.
#[derive(Debug, Clone, Serialize)]
pub struct SenderSpec {
    /// The senders.
    pub users: Vec<UserId>,
    /// Their rates (each).
    pub rates: Rates,
    /// Recipients of 1:1 and media sends; `None`: the sender's contacts.
    pub to: Option<Vec<UserId>>,
    /// Groups (labels) to send to; `None`: the sender's groups.
    pub groups: Option<Vec<String>>,
    /// Start, ms.
    pub from_ms: u64,
    /// End, ms.
    pub until_ms: u64,
}

/// A burst.
#[derive(Debug, Clone, Serialize)]
pub struct BurstSpec {
    /// First send, ms.
    pub at_ms: u64,
    /// The sender.
    pub from: UserId,
    /// What is sent and to whom.
    pub target: BurstTarget,
    /// Messages.
    pub count: u32,
    /// Spread, ms.
    pub over_ms: u64,
    /// Size, or the workload's.
    pub bytes: Option<u32>,
}

/// Where a burst goes.
#[derive(Debug, Clone, Serialize)]
pub enum BurstTarget {
    /// 1:1 text to a user.
    Direct(UserId),
    /// Media to a user.
    Media(UserId),
    /// Text to a group (label).
    Group(String),
}

/// An offline period.
#[derive(Debug, Clone, Serialize)]
pub struct OfflineSpec {
    /// Who.
    pub users: Vec<UserId>,
    /// From, ms.
    pub at_ms: u64,
    /// Until, ms (`None`: quiesce).
    pub until_ms: Option<u64>,
}

/// Flapping users.
#[derive(Debug, Clone, Serialize)]
pub struct FlapSpec {
    /// Who.
    pub users: Vec<UserId>,
    /// Offline period lengths, ms.
    pub offline_for_ms: Spread<u64>,
    /// Online period lengths, ms.
    pub online_for_ms: Spread<u64>,
    /// Start, ms.
    pub from_ms: u64,
    /// End, ms.
    pub until_ms: u64,
}

/// Presence settings.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PresenceSpec {
    /// subscriber → users followed.
    pub subscriptions: BTreeMap<UserId, BTreeSet<UserId>>,
    /// Owners with a non-default setting.
    pub privacy: BTreeMap<UserId, VisibilityName>,
}

/// The knobs a matrix can cross and swarm mode can draw, as a file sets them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct PartialKnobs {
    /// Loss, per mille.
    pub loss_per_mille: Option<u32>,
    /// Duplication, per mille.
    pub duplicate_per_mille: Option<u32>,
    /// Smallest latency, ms.
    pub latency_min_ms: Option<u64>,
    /// Largest latency, ms.
    pub latency_max_ms: Option<u64>,
    /// Random client crashes per minute.
    pub client_crashes_per_min: Option<f64>,
    /// Random server crashes per minute.
    pub server_crashes_per_min: Option<f64>,
    /// Random partitions per minute.
    pub partitions_per_min: Option<f64>,
}

/// A fault direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Way {
    /// Both ways.
    Both,
    /// Client to server.
    ToServer,
    /// Server to client.
    ToClient,
}

/// Timeline faults.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TimedFaults {
    /// Frame rules.
    pub frames: Vec<FrameRule>,
    /// Partitions.
    pub partitions: Vec<PartitionSpec>,
    /// Crashes.
    pub crashes: Vec<CrashSpec>,
    /// Clock offsets.
    pub clocks: Vec<ClockSpec>,
    /// Compromises.
    pub compromises: Vec<CompromiseSpec>,
}

/// A frame fault during a window.
#[derive(Debug, Clone, Serialize)]
pub struct FrameRule {
    /// Where it is declared (`faults.frames[0]`), for guard messages.
    pub path: String,
    /// Start, ms.
    pub at_ms: u64,
    /// End, ms.
    pub until_ms: u64,
    /// Frame kind, or every kind.
    pub kind: Option<String>,
    /// Direction.
    pub way: Way,
    /// Users, or everyone.
    pub users: Option<Vec<UserId>>,
    /// Loss, per mille.
    pub drop_per_mille: u32,
    /// Duplication, per mille.
    pub duplicate_per_mille: u32,
    /// Extra delay, ms.
    pub delay_ms: u64,
}

/// A partition during a window.
#[derive(Debug, Clone, Serialize)]
pub struct PartitionSpec {
    /// Where it is declared.
    pub path: String,
    /// Start, ms.
    pub at_ms: u64,
    /// End, ms.
    pub until_ms: u64,
    /// Who is cut off.
    pub users: Vec<UserId>,
    /// Which way.
    pub way: Way,
}

/// A crash.
#[derive(Debug, Clone, Serialize)]
pub struct CrashSpec {
    /// Where it is declared.
    pub path: String,
    /// When, ms.
    pub at_ms: u64,
    /// The server crashes.
    pub server: bool,
    /// These clients crash.
    pub users: Vec<UserId>,
}

/// A clock offset.
#[derive(Debug, Clone, Serialize)]
pub struct ClockSpec {
    /// Where it is declared.
    pub path: String,
    /// When, ms.
    pub at_ms: u64,
    /// Who.
    pub users: Vec<UserId>,
    /// Offset, ms.
    pub offset_ms: i64,
}

/// A compromise.
#[derive(Debug, Clone, Serialize)]
pub struct CompromiseSpec {
    /// Where it is declared.
    pub path: String,
    /// When, ms.
    pub at_ms: u64,
    /// Whose devices.
    pub users: Vec<UserId>,
}

/// Server tunables.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct ServerTunables {
    /// Text TTL, ms.
    pub ttl_text_ms: u64,
    /// Media TTL, ms.
    pub ttl_media_ms: u64,
    /// Ack timeout, ms.
    pub ack_timeout_ms: u64,
    /// Delivery window.
    pub delivery_window: u32,
    /// Bundle fetches per device per minute.
    pub bundle_fetches_per_min: u32,
}

/// Client tunables.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct ClientTunables {
    /// Resend delay, ms.
    pub resend_after_ms: u64,
    /// Reconnect delay, ms.
    pub reconnect_after_ms: u64,
    /// Bundle fetches per client per minute.
    pub bundle_fetches_per_min: u32,
}

/// Deliberate bugs.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Bugs {
    /// Mailbox bug.
    pub mailbox: Option<super::model::MailboxBugName>,
    /// Key bug.
    pub keys: Option<super::model::KeyBugName>,
    /// Presence bug.
    pub presence: Option<super::model::PresenceBugName>,
    /// Unsigned group changes accepted.
    pub unsigned_group_changes: bool,
    /// Client bugs.
    pub client: BTreeSet<super::model::ClientBugName>,
}

impl Bugs {
    /// Whether any bug is on.
    pub fn any(&self) -> bool {
        self.mailbox.is_some()
            || self.keys.is_some()
            || self.presence.is_some()
            || self.unsigned_group_changes
            || !self.client.is_empty()
    }
}

/// One matrix axis.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MatrixAxis {
    /// The knob.
    pub knob: Knob,
    /// Its values.
    pub values: Vec<KnobValue>,
}

/// A knob a matrix can vary and swarm mode can draw.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Knob {
    /// Loss, per mille.
    LossPerMille,
    /// Duplication, per mille.
    DuplicatePerMille,
    /// Smallest latency.
    LatencyMin,
    /// Largest latency.
    LatencyMax,
    /// Random client crashes per minute.
    ClientCrashesPerMin,
    /// Random server crashes per minute.
    ServerCrashesPerMin,
    /// Random partitions per minute.
    PartitionsPerMin,
}

impl Knob {
    /// The knob's key in `[matrix]`.
    pub fn key(self) -> &'static str {
        match self {
            Knob::LossPerMille => "loss_per_mille",
            Knob::DuplicatePerMille => "duplicate_per_mille",
            Knob::LatencyMin => "latency_min",
            Knob::LatencyMax => "latency_max",
            Knob::ClientCrashesPerMin => "client_crashes_per_min",
            Knob::ServerCrashesPerMin => "server_crashes_per_min",
            Knob::PartitionsPerMin => "partitions_per_min",
        }
    }
}

/// A knob's value.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(untagged)]
pub enum KnobValue {
    /// A count or per-mille value, or milliseconds.
    Int(u64),
    /// A rate.
    Rate(f64),
}

/// Expectations.
#[derive(Debug, Clone, Serialize)]
pub struct Expect {
    /// Invariants to check.
    pub invariants: BTreeSet<String>,
    /// Every declared fault must fire.
    pub faults_fire: bool,
    /// Latency bounds, ms, by percentile name (`p50`, `p90`, `p99`, `max`).
    pub latency_online_ms: BTreeMap<String, u64>,
    /// Counters that must reach a value.
    pub at_least: BTreeMap<String, u64>,
}
