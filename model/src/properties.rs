//! The named properties. Each `always` property is a flag that the step
//! code ([`crate::system::Exec`]) raises with a readable detail the moment a
//! step breaks it, so a property check is a bit test; `at-least-once` runs a
//! fault-free quiesce phase from the state instead. Each `sometimes` guard is
//! a flag raised when the behaviour it names happens, so no property passes
//! because its situation was never reached.

use std::fmt;

/// One property or guard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Check {
    /// No app is shown a message twice (or told it is unreadable after seeing it).
    ExactlyOnce,
    /// A sender's status per recipient never goes back.
    StatusMonotone,
    /// Delivered/read are never shown before the recipient's app got there.
    StatusTruthful,
    /// The server's store never holds a plaintext.
    NoPlaintext,
    /// Each one-time prekey is handed out at most once.
    PrekeyOnce,
    /// A stolen copy of a device decrypts nothing the device had already received.
    ForwardSecrecy,
    /// A removed member cannot decrypt group messages sent after its removal.
    RemovedMemberCannotRead,
    /// The server's group membership is what the admin signed.
    GroupChangesSigned,
    /// A member the server added without the admin cannot read the group.
    GhostCannotRead,
    /// No two different ciphertexts are sealed under one message key.
    NoKeyReuse,
    /// After the victim healed, the thief's copy reads no new message to it.
    Healing,
    /// The model itself worked (clients restore, the server recovers).
    ModelSound,
    /// After faults stop, every server-acked message reaches every intended app.
    AtLeastOnce,
    /// Guard: the server handed an envelope out again.
    Redelivery,
    /// Guard: a client received an envelope it had already processed.
    Dedup,
    /// Guard: a message expired and its sender was told.
    TtlExpiry,
    /// Guard: a recipient saw a sender's ratchet key change (a DH ratchet step).
    DhStep,
    /// Guard: the adversary stole a device's state.
    Theft,
}

/// Whether a property must always hold or must sometimes be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A safety property: a discovery is a counterexample.
    Always,
    /// A guard: a discovery is an example, and its absence is a failure.
    Sometimes,
}

impl Check {
    /// Every check, in report order.
    pub const ALL: [Check; 18] = [
        Check::ExactlyOnce,
        Check::AtLeastOnce,
        Check::StatusMonotone,
        Check::StatusTruthful,
        Check::NoPlaintext,
        Check::PrekeyOnce,
        Check::ForwardSecrecy,
        Check::RemovedMemberCannotRead,
        Check::GroupChangesSigned,
        Check::GhostCannotRead,
        Check::NoKeyReuse,
        Check::Healing,
        Check::ModelSound,
        Check::Redelivery,
        Check::Dedup,
        Check::TtlExpiry,
        Check::DhStep,
        Check::Theft,
    ];

    /// The stable name reports, tests and `--property` use.
    pub const fn name(self) -> &'static str {
        match self {
            Check::ExactlyOnce => "exactly-once",
            Check::StatusMonotone => "status-monotone",
            Check::StatusTruthful => "status-truthful",
            Check::NoPlaintext => "no-plaintext-on-server",
            Check::PrekeyOnce => "one-time-prekey-once",
            Check::ForwardSecrecy => "forward-secrecy",
            Check::RemovedMemberCannotRead => "removed-member-cannot-read",
            Check::GroupChangesSigned => "group-changes-signed",
            Check::GhostCannotRead => "ghost-cannot-read",
            Check::NoKeyReuse => "no-message-key-reuse",
            Check::Healing => "healing",
            Check::ModelSound => "model-sound",
            Check::AtLeastOnce => "at-least-once",
            Check::Redelivery => "sometimes-redelivery",
            Check::Dedup => "sometimes-dedup",
            Check::TtlExpiry => "sometimes-ttl-expiry",
            Check::DhStep => "sometimes-dh-ratchet-step",
            Check::Theft => "sometimes-theft",
        }
    }

    /// What the property means, in one plain sentence (printed under a counterexample).
    pub const fn meaning(self) -> &'static str {
        match self {
            Check::ExactlyOnce => "no app is shown a message twice",
            Check::StatusMonotone => "a sender's ticks for a message never go back",
            Check::StatusTruthful => "delivered and read ticks are never shown before the recipient's app got there",
            Check::NoPlaintext => "the server's store never holds a plaintext",
            Check::PrekeyOnce => "each one-time prekey is handed out at most once",
            Check::ForwardSecrecy => "a stolen copy of a device decrypts nothing the device had already received",
            Check::RemovedMemberCannotRead => "a removed member cannot decrypt group messages sent after its removal",
            Check::GroupChangesSigned => "the server's group membership is what the admin signed",
            Check::GhostCannotRead => "a member the server added without the admin cannot read the group",
            Check::NoKeyReuse => "no two different ciphertexts are sealed under one message key",
            Check::Healing => "after the victim healed, the thief's copy reads no new message to it",
            Check::ModelSound => "the model itself works (clients restore, the server recovers)",
            Check::AtLeastOnce => {
                "once faults stop and everyone is connected, every server-acked message reaches every intended app"
            }
            Check::Redelivery => "the server hands an envelope out again",
            Check::Dedup => "a client receives an envelope it had already processed",
            Check::TtlExpiry => "a message expires and its sender is told",
            Check::DhStep => "a recipient sees a sender's ratchet key change",
            Check::Theft => "the adversary steals a device's state",
        }
    }

    /// The check with this name.
    pub fn from_name(name: &str) -> Option<Check> {
        Check::ALL.into_iter().find(|c| c.name() == name)
    }

    /// Always or sometimes.
    pub const fn kind(self) -> Kind {
        match self {
            Check::Redelivery | Check::Dedup | Check::TtlExpiry | Check::DhStep | Check::Theft => Kind::Sometimes,
            _ => Kind::Always,
        }
    }

    const fn bit(self) -> u32 {
        1 << (self as u32)
    }
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The set of raised flags (broken properties and reached guards).
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Flags(u32);

impl Flags {
    /// Raises `check`.
    pub fn set(&mut self, check: Check) {
        self.0 |= check.bit();
    }

    /// Whether `check` is raised.
    pub fn has(self, check: Check) -> bool {
        self.0 & check.bit() != 0
    }

    /// Only the broken `always` properties.
    pub fn violations_only(self) -> Flags {
        let mut out = Flags::default();
        for c in Check::ALL {
            if c.kind() == Kind::Always && self.has(c) {
                out.set(c);
            }
        }
        out
    }
}

impl fmt::Debug for Flags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(Check::ALL.into_iter().filter(|c| self.has(*c)).map(Check::name)).finish()
    }
}
