//! The scenario file as written: one struct per TOML table, every table
//! `deny_unknown_fields`, optional keys as `Option` (defaults are applied by
//! [`super::validate`], so this file is the exact shape of the format and the
//! JSON Schema in `scenarios/scenario.schema.json` mirrors it key for key).
//!
//! User sets are written as lists of *selectors*: a user name (`"alice"`),
//! `"*"` (everyone), a prefix glob (`"user*"`), or an index range of generated
//! users (`"user[1..100]"`, both ends included).

use bluetick_crypto::CipherSuite;
use serde::{Deserialize, Serialize};

use super::units::{DurationMs, SignedDurationMs, Spread};

/// A whole scenario file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawScenario {
    /// `[scenario]`: name, length, seeds, driver.
    pub scenario: ScenarioSection,
    /// `[users]`: who exists.
    pub users: UsersSection,
    /// `[contacts]`: who knows whom (absent: everyone knows everyone).
    pub contacts: Option<ContactsSection>,
    /// `[[groups]]`: groups, their members and membership changes.
    #[serde(default)]
    pub groups: Vec<GroupSection>,
    /// `[workload]`: who sends what, when, and when users are online.
    pub workload: Option<WorkloadSection>,
    /// `[presence]`: privacy settings and presence subscriptions.
    pub presence: Option<PresenceSection>,
    /// `[network]`: background latency, loss and duplication.
    pub network: Option<NetworkSection>,
    /// `[faults]`: faults on a timeline and at random.
    pub faults: Option<FaultsSection>,
    /// `[quiesce]`: the convergence bound after the faults stop.
    pub quiesce: Option<QuiesceSection>,
    /// `[server]`: server tunables.
    pub server: Option<ServerSection>,
    /// `[clients]`: client tunables.
    pub clients: Option<ClientsSection>,
    /// `[bugs]`: deliberate protocol bugs, to show a check fires.
    pub bugs: Option<BugsSection>,
    /// `[matrix]`: knob values to cross into several runs.
    pub matrix: Option<MatrixSection>,
    /// `[expect]`: which invariants to check and what must be seen.
    pub expect: Option<ExpectSection>,
}

/// Which driver runs a scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, Serialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum DriverKind {
    /// The in-process `World` (no tokio), fast enough for large populations.
    #[default]
    Direct,
    /// The real tokio drivers over turmoil's simulated network.
    Turmoil,
}

impl DriverKind {
    /// The name used in files, reports and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            DriverKind::Direct => "direct",
            DriverKind::Turmoil => "turmoil",
        }
    }
}

/// `[scenario]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScenarioSection {
    /// Short name; names the report folder. `[a-z0-9_-]`, at most 64 bytes.
    pub name: String,
    /// What the scenario shows, in a sentence or two.
    pub description: Option<String>,
    /// Length of the workload-and-faults phase; quiesce starts after it.
    pub duration: DurationMs,
    /// Default seed of `bluetick run` (default 1).
    pub seed: Option<u64>,
    /// Seeds `bluetick run` runs when no `--seed` is given (default `[seed]`).
    pub seeds: Option<Vec<u64>>,
    /// Default driver (default `direct`).
    pub driver: Option<DriverKind>,
    /// Cipher suite of every device (default `bluetick-v1`);
    /// `symbolic-insecure` swaps the public-key operations for no-security
    /// stand-ins to reach sizes real keys make too slow.
    pub suite: Option<CipherSuite>,
    /// Swarm mode: knobs left unset are drawn from the seed.
    pub swarm: Option<bool>,
}

/// `[users]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsersSection {
    /// Explicitly named users.
    pub names: Option<Vec<String>>,
    /// How many users to generate, named `<prefix><index>` with the index
    /// zero-padded to the width of `count` (`user001` … `user100`).
    pub count: Option<u32>,
    /// Prefix of generated names (default `user`).
    pub prefix: Option<String>,
}

/// `[contacts]`. Contacts are symmetric. They pick the recipients of
/// generated 1:1 messages and who a `contacts` presence setting admits.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContactsSection {
    /// Everyone is everyone's contact (default false when the table exists).
    pub everyone: Option<bool>,
    /// Pairs of contacts: `[["alice", "bob"], ...]`.
    pub pairs: Option<Vec<Vec<String>>>,
    /// Hubs: one user who is a contact of every user in `with`.
    #[serde(default)]
    pub hubs: Vec<HubSection>,
}

/// `[[contacts.hubs]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HubSection {
    /// The hub user.
    pub user: String,
    /// Selectors of the hub's contacts.
    pub with: Vec<String>,
}

/// `[[groups]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupSection {
    /// Label other tables refer to the group by.
    pub name: String,
    /// The admin (creates the group and makes every change).
    pub admin: String,
    /// Selectors of the initial members (the admin is always a member).
    pub members: Vec<String>,
    /// When the admin creates the group (default `"1s"`: every user has
    /// registered by then, and the server refuses a group naming an
    /// unregistered user).
    pub at: Option<DurationMs>,
    /// Membership changes at fixed times.
    #[serde(default)]
    pub changes: Vec<GroupChangeSection>,
    /// Random joins and leaves.
    pub churn: Option<ChurnSection>,
}

/// `[[groups.changes]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupChangeSection {
    /// When.
    pub at: DurationMs,
    /// Selectors of users to add.
    pub add: Option<Vec<String>>,
    /// Selectors of users to remove (never the admin).
    pub remove: Option<Vec<String>>,
}

/// `[groups.churn]`: every `every`, `leave` random members leave and `join`
/// random non-members from `pool` join.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChurnSection {
    /// Time between changes.
    pub every: DurationMs,
    /// Members added per change.
    pub join: Option<u32>,
    /// Members removed per change.
    pub leave: Option<u32>,
    /// Selectors of users who may join (default everyone).
    pub pool: Option<Vec<String>>,
    /// First change (default one `every` after the group is created).
    pub from: Option<DurationMs>,
    /// No change after this (default the scenario's duration).
    pub until: Option<DurationMs>,
}

/// `[workload]`. Top-level rates are for the whole population (each message
/// from a uniformly chosen sender); `[[workload.senders]]` rates are per user.
/// A rate `r` over a window of `T` seconds sends `round(r·T)` messages at
/// uniformly random times in the window.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkloadSection {
    /// 1:1 text messages per simulated second, whole population, to a random contact.
    pub direct_per_s: Option<f64>,
    /// Group messages per simulated second, whole population, to a random group of the sender.
    pub group_per_s: Option<f64>,
    /// Media messages per simulated second, whole population, to a random contact.
    pub media_per_s: Option<f64>,
    /// Text body size in bytes (fixed or `{ min, max }`; default 64).
    pub body_bytes: Option<Spread<u32>>,
    /// Media size in bytes (fixed or `{ min, max }`; default 4096).
    pub media_bytes: Option<Spread<u32>>,
    /// Delay between a message reaching an app and the user reading it
    /// (fixed or `{ min, max }`); absent: nobody reads (no blue ticks).
    pub read_delay: Option<Spread<DurationMs>>,
    /// Generated sends stop at this time (default the scenario's duration).
    pub until: Option<DurationMs>,
    /// Per-user senders.
    #[serde(default)]
    pub senders: Vec<SenderSection>,
    /// Bursts and single sends at fixed times.
    #[serde(default)]
    pub bursts: Vec<BurstSection>,
    /// Offline periods.
    #[serde(default)]
    pub offline: Vec<OfflineSection>,
    /// Users that keep going offline and online.
    #[serde(default)]
    pub flap: Vec<FlapSection>,
}

/// `[[workload.senders]]`: each user in `users` sends at these rates.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SenderSection {
    /// Selectors of the senders.
    pub users: Vec<String>,
    /// 1:1 texts per simulated second, per user.
    pub direct_per_s: Option<f64>,
    /// Group messages per simulated second, per user.
    pub group_per_s: Option<f64>,
    /// Media messages per simulated second, per user.
    pub media_per_s: Option<f64>,
    /// Selectors of recipients of 1:1 and media sends (default the sender's contacts).
    pub to: Option<Vec<String>>,
    /// Groups to send to (default every group the sender is in).
    pub groups: Option<Vec<String>>,
    /// Start of sending (default `"0s"`).
    pub from: Option<DurationMs>,
    /// End of sending (default the workload's `until`).
    pub until: Option<DurationMs>,
}

/// What a burst sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SendKind {
    /// 1:1 text.
    Direct,
    /// Group text.
    Group,
    /// 1:1 media.
    Media,
}

/// `[[workload.bursts]]`: `count` messages from one sender, spread evenly over `over`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BurstSection {
    /// When the first message goes.
    pub at: DurationMs,
    /// The sender.
    pub from: String,
    /// The recipient of a `direct` or `media` burst.
    pub to: Option<String>,
    /// The group of a `group` burst.
    pub group: Option<String>,
    /// What to send (default `group` when `group` is set, else `direct`).
    pub kind: Option<SendKind>,
    /// How many messages (default 1).
    pub count: Option<u32>,
    /// Spread of the burst (default `"0ms"`: all at once).
    pub over: Option<DurationMs>,
    /// Body or media size in bytes (default the workload's size).
    pub bytes: Option<u32>,
}

/// `[[workload.offline]]`: users offline from `at` until `until`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OfflineSection {
    /// Selectors of the users.
    pub users: Vec<String>,
    /// When they go offline.
    pub at: DurationMs,
    /// When they come back (default: at quiesce).
    pub until: Option<DurationMs>,
}

/// `[[workload.flap]]`: users alternate offline and online periods.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlapSection {
    /// Selectors of the users (each flaps on its own schedule).
    pub users: Vec<String>,
    /// Length of each offline period.
    pub offline_for: Spread<DurationMs>,
    /// Length of each online period.
    pub online_for: Spread<DurationMs>,
    /// Start (default `"0s"`).
    pub from: Option<DurationMs>,
    /// End; users are online after it (default the scenario's duration).
    pub until: Option<DurationMs>,
}

/// Who may see a user's presence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum VisibilityName {
    /// Anyone subscribed.
    Everyone,
    /// The user's contacts.
    Contacts,
    /// Nobody.
    Nobody,
}

/// `[presence]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PresenceSection {
    /// Every user subscribes to its contacts' presence (default false).
    pub subscribe_contacts: Option<bool>,
    /// Further subscriptions.
    #[serde(default)]
    pub subscriptions: Vec<SubscriptionSection>,
    /// Privacy settings (default everyone for everyone).
    #[serde(default)]
    pub privacy: Vec<PrivacySection>,
}

/// `[[presence.subscriptions]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionSection {
    /// Selectors of the subscribers.
    pub users: Vec<String>,
    /// Selectors of the users they follow.
    pub to: Vec<String>,
}

/// `[[presence.privacy]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrivacySection {
    /// Selectors of the owners.
    pub users: Vec<String>,
    /// Who may see their presence.
    pub visibility: VisibilityName,
}

/// `[network]`: applied to every frame until quiesce. Latency is drawn
/// uniformly from the spread, independently per frame (so frames reorder).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkSection {
    /// One-way latency (fixed or `{ min, max }`; default `"5ms"`).
    pub latency: Option<Spread<DurationMs>>,
    /// Chance a frame is lost, per mille (0–1000).
    pub loss_per_mille: Option<u32>,
    /// Chance a frame arrives twice, per mille (0–1000).
    pub duplicate_per_mille: Option<u32>,
}

/// `[faults]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultsSection {
    /// Drop, duplicate or delay frames matching a filter during a window.
    #[serde(default)]
    pub frames: Vec<FrameFaultSection>,
    /// Cut users off from the server during a window.
    #[serde(default)]
    pub partition: Vec<PartitionSection>,
    /// Crash and restart the server or clients.
    #[serde(default)]
    pub crash: Vec<CrashSection>,
    /// Set users' clock offsets.
    #[serde(default)]
    pub clock: Vec<ClockSection>,
    /// Hand a copy of users' device state to an adversary.
    #[serde(default)]
    pub compromise: Vec<CompromiseSection>,
    /// Faults at random rates.
    pub random: Option<RandomFaultsSection>,
}

/// Which way a fault applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DirectionName {
    /// Both ways.
    Both,
    /// Client to server only.
    ToServer,
    /// Server to client only.
    ToClient,
}

/// `[[faults.frames]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FrameFaultSection {
    /// Start of the window.
    pub at: DurationMs,
    /// End of the window (default: at quiesce). Exclusive with `for`.
    pub until: Option<DurationMs>,
    /// Length of the window. Exclusive with `until`.
    #[serde(rename = "for")]
    pub lasting: Option<DurationMs>,
    /// Frame kind (e.g. `delivery-ack`, `deliver`, `send`; default every kind).
    pub kind: Option<String>,
    /// Direction (default `both`).
    pub direction: Option<DirectionName>,
    /// Selectors of users whose connections it hits (default everyone).
    pub users: Option<Vec<String>>,
    /// Chance a matching frame is lost, per mille.
    pub drop_per_mille: Option<u32>,
    /// Chance a matching frame arrives twice, per mille.
    pub duplicate_per_mille: Option<u32>,
    /// Extra delay of matching frames.
    pub delay: Option<DurationMs>,
}

/// `[[faults.partition]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartitionSection {
    /// Start.
    pub at: DurationMs,
    /// End (default: at quiesce). Exclusive with `for`.
    pub until: Option<DurationMs>,
    /// Length. Exclusive with `until`.
    #[serde(rename = "for")]
    pub lasting: Option<DurationMs>,
    /// Selectors of the users cut off from the server.
    pub users: Vec<String>,
    /// `both` (default), or one way only.
    pub direction: Option<DirectionName>,
}

/// `[[faults.crash]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CrashSection {
    /// When.
    pub at: DurationMs,
    /// Crash the server (it restarts from its durable store).
    pub server: Option<bool>,
    /// Selectors of clients to crash (each restarts from its saved state).
    pub users: Option<Vec<String>>,
}

/// `[[faults.clock]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClockSection {
    /// When the offset takes effect.
    pub at: DurationMs,
    /// Selectors of the users.
    pub users: Vec<String>,
    /// Offset from true simulated time (`"-2s"`, `"+500ms"`).
    pub offset: SignedDurationMs,
}

/// `[[faults.compromise]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompromiseSection {
    /// When the adversary copies the device state.
    pub at: DurationMs,
    /// Selectors of the users whose devices are copied.
    pub users: Vec<String>,
}

/// `[faults.random]`: crashes and partitions at random times until quiesce.
/// A rate `r` per minute over `T` minutes gives `round(r·T)` events.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RandomFaultsSection {
    /// Client crashes per simulated minute (random user of `users`).
    pub client_crashes_per_min: Option<f64>,
    /// Server crashes per simulated minute.
    pub server_crashes_per_min: Option<f64>,
    /// Partitions of one random user per simulated minute.
    pub partitions_per_min: Option<f64>,
    /// Length of each random partition (default `"2s"`).
    pub partition_for: Option<Spread<DurationMs>>,
    /// Selectors of users random faults may hit (default everyone).
    pub users: Option<Vec<String>>,
}

/// `[quiesce]`: at the end of `duration` every fault heals, everyone comes
/// online, and the system must converge (liveness checks pass) within
/// `converge_within`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuiesceSection {
    /// The convergence bound (default `"5m"`: first contact with many peers
    /// is paced by the 24-bundles-a-minute key fetch limit).
    pub converge_within: Option<DurationMs>,
}

/// `[server]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSection {
    /// How long text waits for an offline device (default `"30d"`).
    pub ttl_text: Option<DurationMs>,
    /// How long media waits (default `"14d"`).
    pub ttl_media: Option<DurationMs>,
    /// Redelivery after an unacked delivery (default `"10s"`).
    pub ack_timeout: Option<DurationMs>,
    /// Deliveries in flight per device (default 64).
    pub delivery_window: Option<u32>,
    /// Key bundles one device may fetch per minute (default 30).
    pub bundle_fetches_per_min: Option<u32>,
}

/// `[clients]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientsSection {
    /// Resend an unacknowledged send after this long (default `"2s"`).
    pub resend_after: Option<DurationMs>,
    /// Reconnect after a dropped connection (default `"500ms"`).
    pub reconnect_after: Option<DurationMs>,
    /// Key bundles a client fetches per minute (default 24).
    pub bundle_fetches_per_min: Option<u32>,
}

/// Server mailbox bugs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum MailboxBugName {
    /// Delete an entry when handed out instead of on ack.
    DeleteOnSend,
    /// Enqueue a retry as a second copy.
    EnqueueNotIdempotent,
    /// Ignore delivery-acks.
    IgnoreAck,
}

/// Key directory bugs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum KeyBugName {
    /// Hand a one-time prekey out twice.
    HandOutTwice,
}

/// Presence bugs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PresenceBugName {
    /// Ignore privacy settings.
    IgnorePrivacy,
}

/// Client bugs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ClientBugName {
    /// Process redelivered messages as new.
    DedupOff,
    /// Send Read as soon as delivered.
    ReadOnDelivery,
    /// Keep the sender key when a member is removed.
    NoRotationOnRemove,
    /// Append plaintext to ciphertexts.
    LeakPlaintext,
    /// Let a late receipt move ticks back.
    LatestReceiptWins,
}

/// `[bugs]`: deliberate bugs (all off by default) to show a check fires.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BugsSection {
    /// A server mailbox bug.
    pub mailbox: Option<MailboxBugName>,
    /// A key directory bug.
    pub keys: Option<KeyBugName>,
    /// A presence bug.
    pub presence: Option<PresenceBugName>,
    /// Accept unsigned group changes.
    pub unsigned_group_changes: Option<bool>,
    /// Client bugs, applied to every client.
    pub client: Option<Vec<ClientBugName>>,
}

/// `[matrix]`: each listed knob takes each of its values; the runs are the
/// cross product. Values override `[network]` and `[faults.random]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MatrixSection {
    /// Values of `network.loss_per_mille`.
    pub loss_per_mille: Option<Vec<u32>>,
    /// Values of `network.duplicate_per_mille`.
    pub duplicate_per_mille: Option<Vec<u32>>,
    /// Values of the smallest latency.
    pub latency_min: Option<Vec<DurationMs>>,
    /// Values of the largest latency.
    pub latency_max: Option<Vec<DurationMs>>,
    /// Values of `faults.random.client_crashes_per_min`.
    pub client_crashes_per_min: Option<Vec<f64>>,
    /// Values of `faults.random.server_crashes_per_min`.
    pub server_crashes_per_min: Option<Vec<f64>>,
    /// Values of `faults.random.partitions_per_min`.
    pub partitions_per_min: Option<Vec<f64>>,
}

/// `[expect]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpectSection {
    /// Invariants to check (default every one).
    pub invariants: Option<Vec<String>>,
    /// Invariants not to check.
    pub skip: Option<Vec<String>>,
    /// Every declared fault must be seen to fire (default true).
    pub faults_fire: Option<bool>,
    /// Bound on the median delivery latency to online recipients, ms.
    pub p50_delivery_online_ms: Option<u64>,
    /// Bound on the 90th percentile, ms.
    pub p90_delivery_online_ms: Option<u64>,
    /// Bound on the 99th percentile, ms.
    pub p99_delivery_online_ms: Option<u64>,
    /// Bound on the largest, ms.
    pub max_delivery_online_ms: Option<u64>,
    /// "Sometimes" guards: counters that must reach at least this value.
    pub at_least: Option<std::collections::BTreeMap<String, u64>>,
}
