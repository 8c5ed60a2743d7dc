//! The invariants a run is judged by: their stable names (the oracle's
//! [`names`]), what each means, and when a scenario gives it something to
//! judge. An invariant a scenario cannot exercise (forward secrecy without a
//! compromise) is reported `not-checked` rather than a vacuous `held`.

use bluetick_core::world::oracle::names;

use crate::scenario::spec::Scenario;

/// When an invariant has something to judge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applies {
    /// Every run.
    Always,
    /// Runs with a device compromise.
    Compromise,
    /// Runs that remove group members.
    GroupRemoval,
    /// Runs with presence subscriptions.
    Presence,
}

/// One invariant.
#[derive(Debug, Clone, Copy)]
pub struct Invariant {
    /// Stable name, as the oracle reports it.
    pub name: &'static str,
    /// Safety (checked after every step) or liveness (after quiesce).
    pub liveness: bool,
    /// When it applies.
    pub applies: Applies,
    /// One line for reports.
    pub meaning: &'static str,
}

/// Every invariant the oracle checks, in report order.
pub const ALL: &[Invariant] = &[
    Invariant {
        name: names::EXACTLY_ONCE,
        liveness: false,
        applies: Applies::Always,
        meaning: "no app is shown the same message twice, nor a body other than the one sent",
    },
    Invariant {
        name: names::AT_LEAST_ONCE,
        liveness: true,
        applies: Applies::Always,
        meaning: "every server-acked message reaches every intended app, or its sender is told it expired",
    },
    Invariant {
        name: names::ORDER,
        liveness: false,
        applies: Applies::Always,
        meaning: "per sender and recipient, first deliveries follow the send order",
    },
    Invariant {
        name: names::STATUS_MONOTONE,
        liveness: false,
        applies: Applies::Always,
        meaning: "a sender's ticks never go back",
    },
    Invariant {
        name: names::STATUS_TRUTHFUL,
        liveness: false,
        applies: Applies::Always,
        meaning: "delivered / read are never shown before they are true",
    },
    Invariant {
        name: names::NO_PLAINTEXT,
        liveness: false,
        applies: Applies::Always,
        meaning: "no plaintext in the server's store",
    },
    Invariant {
        name: names::PREKEY_ONCE,
        liveness: false,
        applies: Applies::Always,
        meaning: "each one-time prekey is handed out at most once",
    },
    Invariant {
        name: names::RETENTION,
        liveness: false,
        applies: Applies::Always,
        meaning: "the server keeps nothing for a device after it acked, nor past its TTL",
    },
    Invariant {
        name: names::MAILBOXES_EMPTY,
        liveness: true,
        applies: Applies::Always,
        meaning: "after quiesce every mailbox is empty",
    },
    Invariant {
        name: CONVERGES,
        liveness: true,
        applies: Applies::Always,
        meaning: "within the convergence bound after the faults stop, the server acknowledges every message a client accepted",
    },
    Invariant {
        name: names::REMOVED_MEMBER_CANNOT_READ,
        liveness: false,
        applies: Applies::GroupRemoval,
        meaning: "a member outside the sender's view of a group never reads its later messages",
    },
    Invariant {
        name: names::PRESENCE_PRIVACY,
        liveness: false,
        applies: Applies::Presence,
        meaning: "nobody the owner's setting excludes sees the owner's presence",
    },
    Invariant {
        name: names::PRESENCE_THROTTLE,
        liveness: false,
        applies: Applies::Presence,
        meaning: "at most one push per subscriber and followed user per throttle interval",
    },
    Invariant {
        name: names::PRESENCE_CONVERGES,
        liveness: true,
        applies: Applies::Presence,
        meaning: "after quiet every subscriber is shown the truth",
    },
    Invariant {
        name: names::FORWARD_SECRECY,
        liveness: false,
        applies: Applies::Compromise,
        meaning: "a stolen device state opens no ciphertext the device had already received",
    },
    Invariant {
        name: CLIENT_RECOVERS,
        liveness: false,
        applies: Applies::Always,
        meaning: "a crashed client restores from its saved state",
    },
    Invariant {
        name: SERVER_RECOVERS,
        liveness: false,
        applies: Applies::Always,
        meaning: "a crashed server recovers from its store",
    },
];

/// The runner's own liveness check: a message a client accepted but the
/// server never acknowledged is invisible to `at-least-once` (which judges
/// server-acked messages), so a run that never converged would pass it.
pub const CONVERGES: &str = "converges";
/// Name under which the world reports a client that could not restore.
pub const CLIENT_RECOVERS: &str = "client-recovers";
/// Name under which the world reports a server that could not recover.
pub const SERVER_RECOVERS: &str = "server-recovers";

/// The invariant called `name`.
pub fn find(name: &str) -> Option<&'static Invariant> {
    ALL.iter().find(|i| i.name == name)
}

/// Why `inv` has nothing to judge in `s`, if so.
pub fn not_applicable(inv: &Invariant, s: &Scenario) -> Option<&'static str> {
    match inv.applies {
        Applies::Always => None,
        Applies::Compromise if s.faults.compromises.is_empty() => Some("the scenario compromises no device"),
        Applies::GroupRemoval
            if !s.groups.iter().any(|g| {
                g.changes.iter().any(|c| !c.remove.is_empty()) || g.churn.as_ref().is_some_and(|c| c.leave > 0)
            }) =>
        {
            Some("the scenario removes no group member")
        }
        Applies::Presence if s.presence.subscriptions.is_empty() => Some("the scenario has no presence subscriptions"),
        _ => None,
    }
}

/// Why the driver `kind` cannot judge `inv`, if so: a verdict must not say
/// "held" for a check that never ran.
pub fn not_judged_by(inv: &Invariant, kind: crate::scenario::spec::DriverKind) -> Option<&'static str> {
    use crate::scenario::spec::DriverKind;
    match kind {
        DriverKind::Direct => None,
        // The turmoil driver sees the server only through its frames and its
        // store writes: retention needs the mailbox contents over time, and
        // removed-member-cannot-read needs each member's view of the group.
        DriverKind::Turmoil if inv.name == names::RETENTION || inv.name == names::REMOVED_MEMBER_CANNOT_READ => {
            Some("the turmoil driver does not judge this yet (the direct driver does)")
        }
        DriverKind::Turmoil => None,
    }
}
