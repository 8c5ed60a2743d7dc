//! What one model check explores: who is there, what their apps do, which
//! faults and attacks the environment may inject, and the bounds that keep
//! the state space finite.
//!
//! Every configuration is a plain value; [`crate::suite`] names the ones the
//! CI and the deep run check.

use bluetick_core::client::{ClientBug, ClientBugs};
use bluetick_core::server::keys::KeyBug;
use bluetick_core::server::mailbox::MailboxBug;
use bluetick_core::server::ServerBugs;
use bluetick_crypto::CipherSuite;

/// A deliberate bug `bluetick check --bug NAME` can switch on, named as a
/// scenario file's `[bugs]` table names it, so a counterexample found with
/// it can be replayed by the simulator with the same switch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum BugSwitch {
    /// `mailbox = "delete-on-send"`: the server forgets an item when it hands it out.
    DeleteOnSend,
    /// `keys = "hand-out-twice"`: a one-time prekey is handed out twice.
    HandOutTwice,
    /// `unsigned_group_changes = true`: the server takes unsigned group changes.
    UnsignedGroupChanges,
    /// `client = ["dedup-off"]`: clients process a redelivered message as new.
    DedupOff,
    /// `client = ["read-on-delivery"]`: a Read receipt goes out on delivery.
    ReadOnDelivery,
    /// `client = ["no-rotation-on-remove"]`: the sender key survives a removal.
    NoRotationOnRemove,
    /// `client = ["leak-plaintext"]`: ciphertexts carry their plaintext.
    LeakPlaintext,
    /// `client = ["latest-receipt-wins"]`: a late receipt turns ticks back.
    LatestReceiptWins,
}

impl BugSwitch {
    /// Every switch the model has a property for.
    pub const ALL: [BugSwitch; 8] = [
        BugSwitch::DeleteOnSend,
        BugSwitch::HandOutTwice,
        BugSwitch::UnsignedGroupChanges,
        BugSwitch::DedupOff,
        BugSwitch::ReadOnDelivery,
        BugSwitch::NoRotationOnRemove,
        BugSwitch::LeakPlaintext,
        BugSwitch::LatestReceiptWins,
    ];

    /// The name `--bug` and scenario files use.
    pub const fn name(self) -> &'static str {
        match self {
            BugSwitch::DeleteOnSend => "delete-on-send",
            BugSwitch::HandOutTwice => "hand-out-twice",
            BugSwitch::UnsignedGroupChanges => "unsigned-group-changes",
            BugSwitch::DedupOff => "dedup-off",
            BugSwitch::ReadOnDelivery => "read-on-delivery",
            BugSwitch::NoRotationOnRemove => "no-rotation-on-remove",
            BugSwitch::LeakPlaintext => "leak-plaintext",
            BugSwitch::LatestReceiptWins => "latest-receipt-wins",
        }
    }

    /// The switch with this name.
    pub fn from_name(name: &str) -> Option<BugSwitch> {
        BugSwitch::ALL.into_iter().find(|b| b.name() == name)
    }
}

/// The accounts of every model, by index: the first `clients` are active
/// devices; the last is the would-be ghost the adversary tries to smuggle
/// into a group (registered during warm-up, then offline for good).
pub const USER_NAMES: [&str; 3] = ["alice", "bob", "carol"];

/// Index of the ghost account in [`USER_NAMES`].
pub const GHOST: usize = 2;

/// Most active clients: the ghost takes the last name.
pub const ACTIVE_CLIENTS_MAX: usize = USER_NAMES.len() - 1;

/// How the network may reorder frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum NetworkMode {
    /// Each connection is an ordered channel (TCP, WebSocket): only its
    /// oldest frame can arrive next. Loss and duplication still apply.
    Fifo,
    /// Any frame in flight on a connection may arrive next.
    Reorder,
}

/// How many faults of each kind the environment may inject in one execution.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FaultBudget {
    /// Frames lost.
    pub drops: u8,
    /// Frames delivered twice.
    pub duplicates: u8,
    /// Client crashes (volatile state lost, the last save kept), all clients together.
    pub client_crashes: u8,
    /// Server crashes (volatile state lost, the store kept).
    pub server_crashes: u8,
    /// Connections closed without a crash (a device going offline).
    pub disconnects: u8,
}

/// One scripted app command. Each client performs its script in order; the
/// checker explores every interleaving of those commands with everything
/// else. Reading a conversation is not scripted: it is possible whenever the
/// app has unread messages.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AppStep {
    /// Send a new 1:1 text to the client with this index.
    Send {
        /// Recipient index.
        to: usize,
    },
    /// Create a group with these members (indices; the creator is admin).
    CreateGroup {
        /// Members besides the creator.
        members: Vec<usize>,
    },
    /// Send a new text to the `group`-th group this model has seen created.
    SendGroup {
        /// Group number, in order of creation.
        group: usize,
    },
    /// As admin, remove a member from a group.
    RemoveMember {
        /// Group number, in order of creation.
        group: usize,
        /// Member index.
        member: usize,
    },
}

/// What the adversary may do besides recording every frame (which it always does).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AdversaryPowers {
    /// Take one complete copy of one active device's state, at any point.
    pub steal: bool,
    /// After a theft, roll the victim device back to the stolen state, as a
    /// device restored from a backup the thief also holds.
    pub restore_backup: bool,
    /// Ask the server, on the admin's connection, to add the ghost to the
    /// first group with an unsigned change (server-controlled membership).
    pub inject_ghost: bool,
}

/// Time constants, kept short so ack timeouts, resends and TTL expiry are
/// reachable within the time horizon.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timing {
    /// The server redelivers what is not acked within this long.
    pub ack_timeout_ms: u64,
    /// A client resends unconfirmed sends after this long.
    pub resend_after_ms: u64,
    /// Mailbox entries expire after this long.
    pub ttl_ms: u64,
    /// States later than this (after the start) are not explored.
    pub horizon_ms: u64,
}

impl Timing {
    /// TTL longer than the horizon: nothing expires.
    pub const NO_EXPIRY: Timing =
        Timing { ack_timeout_ms: 4_000, resend_after_ms: 3_000, ttl_ms: 3_600_000, horizon_ms: 30_000 };
    /// A TTL inside the horizon, so an offline recipient's messages expire.
    pub const SHORT_TTL: Timing =
        Timing { ack_timeout_ms: 4_000, resend_after_ms: 3_000, ttl_ms: 10_000, horizon_ms: 30_000 };
}

/// Everything one model check needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelConfig {
    /// Stable name, printed in reports and pinned in snapshots.
    pub name: String,
    /// Root seed of every RNG (server and clients).
    pub seed: u64,
    /// Active clients (at most [`ACTIVE_CLIENTS_MAX`]).
    pub clients: usize,
    /// Each active client's app script.
    pub scripts: Vec<Vec<AppStep>>,
    /// 1:1 messages (sender, recipient) exchanged and read before exploring,
    /// so sessions exist and X3DH stays out of the explored part.
    pub warm_up: Vec<(usize, usize)>,
    /// Whether apps may open conversations (send read receipts).
    pub reads: bool,
    /// Network reordering.
    pub network: NetworkMode,
    /// Fault budget.
    pub faults: FaultBudget,
    /// Adversary powers.
    pub adversary: AdversaryPowers,
    /// `Some(n)`: check at-least-once by letting faults stop in every state
    /// and running at most `n` fault-free steps (see `properties`).
    pub quiesce_steps: Option<u32>,
    /// Server bugs switched on (tests only).
    pub server_bugs: ServerBugs,
    /// Client bugs switched on (tests only).
    pub client_bugs: ClientBugs,
    /// Timers.
    pub timing: Timing,
    /// Frames one connection may hold in flight; states beyond are not explored.
    pub channel_frames_max: usize,
    /// Whether a timer may fire while frames are in flight. Off, timers fire
    /// only on a quiet network: timeouts are taken to be long compared to
    /// latency, so a frame in flight arrives (or is lost) first. Retries and
    /// redelivery are still reached through loss and crashes; on, the
    /// spurious retransmissions of a timeout racing its answer are explored
    /// too, at a large cost in states.
    pub spurious_timeouts: bool,
    /// Whether app commands, reads and the adversary's moves wait for a
    /// quiet network (no frame in flight). On, the checker explores every
    /// order of those moves but not their races with frames in flight: a
    /// search for a known attack (the weakness configurations) needs the
    /// moves, not the races, and this cuts its states by orders of magnitude.
    pub moves_on_quiet_network: bool,
    /// One-time prekeys each client generates per batch (a real client
    /// uploads 100; two keep states small and still run the stock low).
    pub prekey_batch: usize,
    /// Depth bound of the search, if any.
    pub max_depth: Option<usize>,
    /// Cipher suite of every device and the server. `symbolic-insecure`
    /// trades the real public-key operations for stand-ins to explore more
    /// states per second; the CI bounds keep the real suite, so every
    /// property, forward secrecy included, is also checked with real crypto.
    pub suite: CipherSuite,
    /// The properties this configuration is meant to check; others are
    /// still evaluated but not reported.
    pub checks: Vec<&'static str>,
}

impl ModelConfig {
    /// A configuration with `clients` clients and no app activity, faults,
    /// adversary or bugs; the presets in [`crate::suite`] build on it.
    pub fn base(name: &str, clients: usize) -> Self {
        ModelConfig {
            name: name.to_string(),
            seed: 7,
            suite: CipherSuite::BluetickV1,
            clients,
            scripts: vec![Vec::new(); clients],
            warm_up: Vec::new(),
            reads: true,
            network: NetworkMode::Fifo,
            faults: FaultBudget::default(),
            adversary: AdversaryPowers::default(),
            quiesce_steps: None,
            server_bugs: ServerBugs::default(),
            client_bugs: ClientBugs::none(),
            timing: Timing::NO_EXPIRY,
            channel_frames_max: 6,
            spurious_timeouts: false,
            moves_on_quiet_network: false,
            prekey_batch: 2,
            max_depth: None,
            checks: Vec::new(),
        }
    }

    /// This configuration with a mailbox bug switched on.
    pub fn with_mailbox_bug(mut self, bug: MailboxBug) -> Self {
        self.server_bugs.mailbox = Some(bug);
        self
    }

    /// This configuration with a key-directory bug switched on.
    pub fn with_key_bug(mut self, bug: KeyBug) -> Self {
        self.server_bugs.keys = Some(bug);
        self
    }

    /// This configuration with a client bug switched on in every client.
    pub fn with_client_bug(mut self, bug: ClientBug) -> Self {
        self.client_bugs = self.client_bugs.with(bug);
        self
    }

    /// This configuration with the server accepting unsigned group changes.
    pub fn with_unsigned_group_changes(mut self) -> Self {
        self.server_bugs.unsigned_group_changes = true;
        self
    }

    /// This configuration with `bug` switched on.
    pub fn with_bug(self, bug: BugSwitch) -> Self {
        match bug {
            BugSwitch::DeleteOnSend => self.with_mailbox_bug(MailboxBug::DeleteOnSend),
            BugSwitch::HandOutTwice => self.with_key_bug(KeyBug::HandOutTwice),
            BugSwitch::UnsignedGroupChanges => self.with_unsigned_group_changes(),
            BugSwitch::DedupOff => self.with_client_bug(ClientBug::DedupOff),
            BugSwitch::ReadOnDelivery => self.with_client_bug(ClientBug::ReadOnDelivery),
            BugSwitch::NoRotationOnRemove => self.with_client_bug(ClientBug::NoRotationOnRemove),
            BugSwitch::LeakPlaintext => self.with_client_bug(ClientBug::LeakPlaintext),
            BugSwitch::LatestReceiptWins => self.with_client_bug(ClientBug::LatestReceiptWins),
        }
    }

    /// Whether any bug is switched on (a bug run expects counterexamples).
    pub fn has_bugs(&self) -> bool {
        self.server_bugs != ServerBugs::default() || self.client_bugs != ClientBugs::none()
    }
}
