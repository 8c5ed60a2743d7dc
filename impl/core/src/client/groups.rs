//! Groups: signed membership, our sender key per group, and the sender keys
//! other members gave us.
//!
//! # Membership
//! A group has one admin, its creator. Every membership change is a
//! [`SignedGroupChange`] with version `current + 1`, signed by the admin's
//! identity key, so a server cannot add or remove anyone by itself. A member
//! applies a change only if its signature verifies under the admin identity
//! key it knows (pinned on first use, see `sessions.rs`); when it does not
//! know that key yet, it holds the change and fetches the admin's bundle
//! first. A member added after creation learns the full member list from a
//! pairwise [`Content::GroupInfo`](super::content::Content::GroupInfo) from
//! the admin; until then it knows the admin and the members the change named.
//!
//! # Sender keys
//! Each member encrypts group messages with its own sender key and gives the
//! key to every other member pairwise. On every removal each remaining member
//! rotates its key (and re-distributes on its next send), so a removed member,
//! who still holds the old keys, cannot read anything sent afterwards.

use std::collections::{BTreeSet, VecDeque};

use bluetick_crypto::sender_key::{OwnSenderKey, SenderKeyRecord};
use bluetick_crypto::CipherSuite;
use bluetick_crypto::PublicKey;
use serde::{Deserialize, Serialize};

use crate::client::journal::{Journaled, Table};
use crate::ids::{GroupId, UserId};
use crate::wire::SignedGroupChange;

/// Most members in a group, the admin included (WhatsApp's limit); a full
/// member list of 1,024 ids fits one frame with room to spare.
pub const GROUP_MEMBERS_MAX: usize = 1_024;

/// Most group changes held while the admin's identity key is being fetched
/// or an earlier version is still on its way. Changes arrive one per
/// membership update; 64 is far more than can pile up during one bundle round
/// trip or one redelivery, and bounds what a server can make us hold.
pub const HELD_GROUP_CHANGES_MAX: usize = 64;

/// Most sender keys of other members kept. 1,024 members in each of a few
/// dozen groups; a record is a few hundred bytes unless it holds skipped keys.
pub const SENDER_KEY_RECORDS_MAX: usize = 32_768;

/// Why a group change was not applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum GroupChangeRejection {
    /// The signature does not verify under the admin's known identity key.
    BadSignature,
    /// Signed by someone other than the group's admin.
    NotAdmin {
        /// The group's admin.
        admin: UserId,
        /// Who signed.
        signer: UserId,
    },
    /// Not the next version.
    VersionGap {
        /// Our version.
        current: u64,
        /// The change's version.
        got: u64,
    },
    /// A change for a group we are not in and that does not add us.
    NotForUs,
    /// The result would exceed [`GROUP_MEMBERS_MAX`].
    TooManyMembers {
        /// Members after the change.
        members: usize,
        /// The limit.
        max: usize,
    },
    /// The admin removes itself, or adds and removes the same user.
    Inconsistent,
    /// The admin's identity key stayed unknown and the change was dropped
    /// from the hold to make room.
    AdminKeyUnknown,
    /// Our own change (as admin) was sent `GROUP_CHANGE_SENDS_MAX` times
    /// without a `GroupChangeAccepted`: the server refused it (members then
    /// keep the previous version) or every acceptance was lost. Our local
    /// state keeps the change either way.
    RefusedByServer,
}

/// One group as this member sees it.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct GroupState {
    /// Last applied version.
    pub version: u64,
    /// The only user whose signed changes are accepted.
    pub admin: UserId,
    /// Members, the admin included.
    pub members: BTreeSet<UserId>,
    /// Whether we joined mid-way and may not know every member yet.
    pub partial: bool,
    /// Our sender key, created on first send.
    pub own_key: Option<OwnSenderKey>,
    /// Members who have our current sender key (or have it queued).
    pub distributed_to: BTreeSet<UserId>,
}

/// What checking a group change decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Valid and next: apply it.
    Apply,
    /// Already applied (an at-least-once redelivery, or our own echo): ignore quietly.
    Stale,
    /// The admin's identity key is needed first.
    NeedAdminKey,
    /// Invalid: ignore and report.
    Reject(GroupChangeRejection),
}

/// What applying a change did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Applied {
    /// Members added by this change.
    pub added: Vec<UserId>,
    /// Members removed by this change.
    pub removed: Vec<UserId>,
    /// Whether we were removed.
    pub we_left: bool,
}

/// All groups, received sender keys and held changes.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct Groups {
    pub groups: Table<GroupId, GroupState>,
    pub records: Table<(GroupId, UserId), SenderKeyRecord>,
    /// Keys that arrived after a newer key of the same sender. Kept apart
    /// because a record evicts the key that arrived first, not the oldest:
    /// a burst of late distributions (frames reordered, or resent after a
    /// refusal) pushed the sender's current key out of `records`, and every
    /// message sealed under it afterwards stayed held for good.
    #[serde(default)]
    pub late_records: Table<(GroupId, UserId), SenderKeyRecord>,
    pub held_changes: VecDeque<SignedGroupChange>,
}

impl Groups {
    /// The tables, for incremental saves.
    pub(crate) fn tables(&mut self) -> [&mut dyn Journaled; 3] {
        [&mut self.groups, &mut self.records, &mut self.late_records]
    }
}

/// How many members there are after `change`, or why it cannot be applied.
/// Counted, not built: every member checks every change, and copying a
/// 1,024-member list for it dominated large groups.
fn members_after(current: &BTreeSet<UserId>, change: &SignedGroupChange) -> Result<usize, GroupChangeRejection> {
    if change.remove.contains(&change.admin) || change.add.iter().any(|u| change.remove.contains(u)) {
        return Err(GroupChangeRejection::Inconsistent);
    }
    // Neither the admin nor an added member is removed (checked above), so
    // the removals only take away current members.
    let joining: BTreeSet<&UserId> =
        std::iter::once(&change.admin).chain(&change.add).filter(|u| !current.contains(*u)).collect();
    let leaving: BTreeSet<&UserId> = change.remove.iter().filter(|u| current.contains(*u)).collect();
    let members = current.len() + joining.len() - leaving.len();
    if members > GROUP_MEMBERS_MAX {
        return Err(GroupChangeRejection::TooManyMembers { members, max: GROUP_MEMBERS_MAX });
    }
    Ok(members)
}

impl Groups {
    /// Decides what to do with a change, given the admin's identity key if known.
    pub fn check(
        &self,
        suite: CipherSuite,
        change: &SignedGroupChange,
        me: &UserId,
        admin_key: Option<PublicKey>,
    ) -> Verdict {
        // Bound the work one frame can cause before looking at anything else.
        if change.add.len() > GROUP_MEMBERS_MAX || change.remove.len() > GROUP_MEMBERS_MAX {
            return Verdict::Reject(GroupChangeRejection::TooManyMembers {
                members: change.add.len().max(change.remove.len()),
                max: GROUP_MEMBERS_MAX,
            });
        }
        let empty = BTreeSet::new();
        let current = match self.groups.get(&change.group) {
            Some(g) => {
                if change.version <= g.version {
                    return Verdict::Stale;
                }
                if change.admin != g.admin {
                    return Verdict::Reject(GroupChangeRejection::NotAdmin {
                        admin: g.admin.clone(),
                        signer: change.admin.clone(),
                    });
                }
                if change.version != g.version.saturating_add(1) {
                    return Verdict::Reject(GroupChangeRejection::VersionGap {
                        current: g.version,
                        got: change.version,
                    });
                }
                &g.members
            }
            None => {
                // Unknown group: only a change that makes us a member matters
                // (the creation, or the change that adds us later).
                if !change.add.contains(me) && change.admin != *me {
                    return Verdict::Reject(GroupChangeRejection::NotForUs);
                }
                if change.version == 0 {
                    return Verdict::Reject(GroupChangeRejection::VersionGap { current: 0, got: 0 });
                }
                &empty
            }
        };
        if let Err(reason) = members_after(current, change) {
            return Verdict::Reject(reason);
        }
        let Some(key) = admin_key else {
            return Verdict::NeedAdminKey;
        };
        if suite.verify(&key, &change.signed_bytes(), &change.signature).is_err() {
            return Verdict::Reject(GroupChangeRejection::BadSignature);
        }
        Verdict::Apply
    }

    /// Applies a change [`Groups::check`] accepted (or one we signed). Keeps
    /// every sender key, ours excepted when we are the one removed; rotation
    /// is the caller's decision.
    pub fn apply(&mut self, change: &SignedGroupChange, me: &UserId) -> Applied {
        let known = self.groups.contains_key(&change.group);
        let group = self.groups.get_or_insert_with(change.group, || GroupState {
            version: 0,
            admin: change.admin.clone(),
            members: BTreeSet::new(),
            // Joining at version 1 means we saw the whole history.
            partial: change.version > 1,
            own_key: None,
            distributed_to: BTreeSet::new(),
        });
        let mut added = BTreeSet::new();
        let mut removed = BTreeSet::new();
        // A change check() would refuse leaves the members as they are.
        if members_after(&group.members, change).is_ok() {
            for u in std::iter::once(&change.admin).chain(&change.add) {
                if group.members.insert(u.clone()) && (known || *u != change.admin) {
                    added.insert(u.clone());
                }
            }
            for u in &change.remove {
                if group.members.remove(u) {
                    removed.insert(u.clone());
                }
            }
        }
        let added: Vec<UserId> = added.into_iter().collect();
        let removed: Vec<UserId> = removed.into_iter().collect();
        group.version = change.version;
        // The removed members' own sender keys stay (until room is needed,
        // see `make_room`): the server accepted their messages up to the
        // removal and may still be delivering them, and a member removed and
        // re-added at once hands out its new key before a member that is
        // behind has applied the removal. Dropping the keys here held such
        // messages unread for good. A removed member cannot post any more:
        // the server refuses it (`NotMember`).
        for u in &removed {
            group.distributed_to.remove(u);
        }
        let we_left = removed.contains(me);
        if we_left {
            // Our own key goes; the others' keys stay. Messages sealed while
            // we were a member may still be on their way (a redelivery after
            // a lost frame), and the server accepted them for us: without the
            // keys they would be held unread for good. Keeping them opens
            // nothing sent later, since every sender rotates on applying our
            // removal (and a removed member is assumed to keep them anyway).
            group.own_key = None;
            group.distributed_to.clear();
        }
        Applied { added, removed, we_left }
    }

    /// Holds a change until the admin's key is known; returns one dropped to make room.
    pub fn hold(&mut self, change: SignedGroupChange) -> Option<SignedGroupChange> {
        if self.held_changes.contains(&change) {
            return None;
        }
        self.held_changes.push_back(change);
        if self.held_changes.len() > HELD_GROUP_CHANGES_MAX {
            return self.held_changes.pop_front();
        }
        None
    }

    /// Takes the held changes signed by `admin`, in arrival order.
    pub fn take_held(&mut self, admin: &UserId) -> Vec<SignedGroupChange> {
        let (take, keep): (VecDeque<_>, VecDeque<_>) =
            std::mem::take(&mut self.held_changes).into_iter().partition(|c| &c.admin == admin);
        self.held_changes = keep;
        take.into()
    }

    /// Takes the held changes of `group`, in version order.
    pub fn take_held_of_group(&mut self, group: &GroupId) -> Vec<SignedGroupChange> {
        if !self.held_changes.iter().any(|c| c.group == *group) {
            return Vec::new();
        }
        let (take, keep): (VecDeque<_>, VecDeque<_>) =
            std::mem::take(&mut self.held_changes).into_iter().partition(|c| c.group == *group);
        self.held_changes = keep;
        let mut take = Vec::from(take);
        take.sort_by_key(|c| c.version);
        take
    }

    /// Admins whose keys held changes are waiting for.
    pub fn waiting_admins(&self) -> BTreeSet<UserId> {
        self.held_changes.iter().map(|c| c.admin.clone()).collect()
    }

    /// Whether `me` is currently a member of `group`.
    pub fn is_member(&self, group: &GroupId, me: &UserId) -> bool {
        self.groups.get(group).is_some_and(|g| g.members.contains(me))
    }

    /// Frees one slot in `records` or `late_records` (whichever `late`
    /// names) by dropping a sender key of someone no longer a member of its
    /// group; false when every held key belongs to a member.
    pub fn make_room(&mut self, late: bool) -> bool {
        let records = if late { &self.late_records } else { &self.records };
        let stale = records.keys().find(|(g, u)| !self.is_member(g, u)).cloned();
        let records = if late { &mut self.late_records } else { &mut self.records };
        stale.is_some_and(|k| records.remove(&k).is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bluetick_crypto::xeddsa::Signature;
    use bluetick_crypto::IdentityKeyPair;
    use rand_chacha::rand_core::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    fn u(name: &str) -> UserId {
        UserId::new(name).unwrap()
    }

    fn signed(id: &IdentityKeyPair, version: u64, add: &[&str], remove: &[&str]) -> SignedGroupChange {
        let mut rng = ChaCha20Rng::seed_from_u64(version);
        let mut c = SignedGroupChange {
            group: GroupId([7; 16]),
            version,
            admin: u("alice"),
            add: add.iter().map(|n| u(n)).collect(),
            remove: remove.iter().map(|n| u(n)).collect(),
            signature: Signature([0; 64]),
        };
        c.signature = id.sign(&c.signed_bytes(), &mut rng);
        c
    }

    fn admin() -> IdentityKeyPair {
        IdentityKeyPair::generate(&mut ChaCha20Rng::seed_from_u64(99))
    }

    /// The member limit counts who the change really adds: filling a group
    /// to exactly 1,024 applies, one newcomer past it is refused, and naming
    /// people who are already members adds nobody.
    #[test]
    fn the_member_limit_counts_only_real_newcomers() {
        let id = admin();
        let key = Some(id.public());
        let mut g = Groups::default();
        let names: Vec<String> = (1..GROUP_MEMBERS_MAX).map(|i| format!("m{i:04}")).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let full = signed(&id, 1, &refs, &[]);
        assert_eq!(g.check(CipherSuite::BluetickV1, &full, &u("m0001"), key), Verdict::Apply);
        g.apply(&full, &u("m0001"));
        assert_eq!(g.groups.get(&GroupId([7; 16])).unwrap().members.len(), GROUP_MEMBERS_MAX);
        let one_more = signed(&id, 2, &["newcomer"], &[]);
        assert_eq!(
            g.check(CipherSuite::BluetickV1, &one_more, &u("m0001"), key),
            Verdict::Reject(GroupChangeRejection::TooManyMembers {
                members: GROUP_MEMBERS_MAX + 1,
                max: GROUP_MEMBERS_MAX
            })
        );
        let again = signed(&id, 2, &["m0002", "m0003"], &[]);
        assert_eq!(g.check(CipherSuite::BluetickV1, &again, &u("m0001"), key), Verdict::Apply);
        // Removals count against additions: swapping a member keeps a full
        // group full, and is allowed.
        let swap = signed(&id, 2, &["newcomer"], &["m0002"]);
        assert_eq!(g.check(CipherSuite::BluetickV1, &swap, &u("m0001"), key), Verdict::Apply);
        g.apply(&swap, &u("m0001"));
        assert_eq!(g.groups.get(&GroupId([7; 16])).unwrap().members.len(), GROUP_MEMBERS_MAX);
    }

    #[test]
    fn creation_then_next_versions_apply_and_gaps_or_replays_do_not() {
        let id = admin();
        let key = Some(id.public());
        let mut g = Groups::default();
        let v1 = signed(&id, 1, &["bob", "carol"], &[]);
        assert_eq!(g.check(CipherSuite::BluetickV1, &v1, &u("bob"), None), Verdict::NeedAdminKey);
        assert_eq!(g.check(CipherSuite::BluetickV1, &v1, &u("bob"), key), Verdict::Apply);
        g.apply(&v1, &u("bob"));
        assert_eq!(g.groups.get(&GroupId([7; 16])).unwrap().members.len(), 3, "admin is a member");
        assert_eq!(g.check(CipherSuite::BluetickV1, &v1, &u("bob"), key), Verdict::Stale);
        let v3 = signed(&id, 3, &["dave"], &[]);
        assert_eq!(
            g.check(CipherSuite::BluetickV1, &v3, &u("bob"), key),
            Verdict::Reject(GroupChangeRejection::VersionGap { current: 1, got: 3 })
        );
        let v2 = signed(&id, 2, &[], &["carol"]);
        assert_eq!(g.check(CipherSuite::BluetickV1, &v2, &u("bob"), key), Verdict::Apply);
        let applied = g.apply(&v2, &u("bob"));
        assert_eq!(applied.removed, vec![u("carol")]);
        assert!(!applied.we_left);
    }

    #[test]
    fn forged_or_foreign_changes_are_rejected() {
        let id = admin();
        let mut g = Groups::default();
        let mut v1 = signed(&id, 1, &["bob"], &[]);
        assert_eq!(g.check(CipherSuite::BluetickV1, &v1, &u("bob"), Some(id.public())), Verdict::Apply);
        // The server adds mallory to the signed change: the signature no longer covers it.
        v1.add.push(u("mallory"));
        assert_eq!(
            g.check(CipherSuite::BluetickV1, &v1, &u("bob"), Some(id.public())),
            Verdict::Reject(GroupChangeRejection::BadSignature)
        );
        // A change for a group that does not involve us.
        let other = signed(&id, 1, &["carol"], &[]);
        assert_eq!(
            g.check(CipherSuite::BluetickV1, &other, &u("bob"), Some(id.public())),
            Verdict::Reject(GroupChangeRejection::NotForUs)
        );
        // Someone else than the admin signs version 2.
        g.apply(&signed(&id, 1, &["bob"], &[]), &u("bob"));
        let mut v2 = signed(&id, 2, &["carol"], &[]);
        v2.admin = u("bob");
        assert!(matches!(
            g.check(CipherSuite::BluetickV1, &v2, &u("bob"), Some(id.public())),
            Verdict::Reject(GroupChangeRejection::NotAdmin { .. })
        ));
        // The admin cannot remove itself.
        let bad = signed(&id, 2, &[], &["alice"]);
        assert_eq!(
            g.check(CipherSuite::BluetickV1, &bad, &u("bob"), Some(id.public())),
            Verdict::Reject(GroupChangeRejection::Inconsistent)
        );
    }

    /// Joining at version 1 is seeing the whole history: not partial, so an
    /// admin's member list at that same version is not taken over ours.
    #[test]
    fn joining_at_version_one_is_not_partial() {
        let id = admin();
        let mut g = Groups::default();
        let v1 = signed(&id, 1, &["bob"], &[]);
        assert_eq!(g.check(CipherSuite::BluetickV1, &v1, &u("bob"), Some(id.public())), Verdict::Apply);
        g.apply(&v1, &u("bob"));
        assert!(!g.groups.get(&GroupId([7; 16])).unwrap().partial);
    }

    /// A change that names someone already in the group adds nobody: only
    /// real newcomers get our sender key.
    #[test]
    fn re_adding_a_member_adds_nobody() {
        let id = admin();
        let mut g = Groups::default();
        g.apply(&signed(&id, 1, &["bob"], &[]), &u("bob"));
        let v2 = signed(&id, 2, &["bob", "carol"], &[]);
        assert_eq!(g.check(CipherSuite::BluetickV1, &v2, &u("bob"), Some(id.public())), Verdict::Apply);
        assert_eq!(g.apply(&v2, &u("bob")).added, vec![u("carol")]);
    }

    #[test]
    fn joining_mid_way_is_partial_and_we_can_be_removed() {
        let id = admin();
        let mut g = Groups::default();
        let v5 = signed(&id, 5, &["bob"], &[]);
        assert_eq!(g.check(CipherSuite::BluetickV1, &v5, &u("bob"), Some(id.public())), Verdict::Apply);
        g.apply(&v5, &u("bob"));
        let state = g.groups.get(&GroupId([7; 16])).unwrap();
        assert!(state.partial);
        assert_eq!(state.members, [u("alice"), u("bob")].into_iter().collect());
        let v6 = signed(&id, 6, &[], &["bob"]);
        let applied = g.apply(&v6, &u("bob"));
        assert!(applied.we_left);
        assert!(!g.is_member(&GroupId([7; 16]), &u("bob")));
    }

    #[test]
    fn removal_keeps_sender_keys_and_room_is_made_from_former_members_only() {
        use bluetick_crypto::sender_key::GroupId as SkGroupId;
        use bluetick_crypto::CipherSuite;
        let id = admin();
        let mut g = Groups::default();
        g.apply(&signed(&id, 1, &["bob", "carol"], &[]), &u("alice"));
        let mut rng = ChaCha20Rng::seed_from_u64(9);
        let suite = CipherSuite::default();
        for who in ["bob", "carol"] {
            let own = OwnSenderKey::new(suite, SkGroupId([7; 16]), &mut rng);
            let record = SenderKeyRecord::from_distribution(suite, &own.distribution()).unwrap();
            g.records.insert((GroupId([7; 16]), u(who)), record);
        }
        assert!(!g.make_room(false), "every key belongs to a member");
        g.apply(&signed(&id, 2, &[], &["carol"]), &u("alice"));
        assert_eq!(g.records.len(), 2, "a removed member's key stays for messages still on their way");
        assert!(!g.make_room(true), "nothing late to drop");
        assert!(g.make_room(false));
        assert_eq!(g.records.keys().map(|(_, u)| u.clone()).collect::<Vec<_>>(), vec![u("bob")]);
        assert!(!g.make_room(false));
    }

    #[test]
    fn held_changes_are_bounded_and_taken_per_admin() {
        let id = admin();
        let mut g = Groups::default();
        for v in 1..=(HELD_GROUP_CHANGES_MAX as u64) {
            assert!(g.hold(signed(&id, v, &["bob"], &[])).is_none());
        }
        assert!(g.hold(signed(&id, 1, &["bob"], &[])).is_none(), "an identical change is held once");
        let dropped = g.hold(signed(&id, 999, &["bob"], &[])).unwrap();
        assert_eq!(dropped.version, 1);
        assert_eq!(g.waiting_admins(), [u("alice")].into_iter().collect());
        assert_eq!(g.take_held(&u("alice")).len(), HELD_GROUP_CHANGES_MAX);
        assert!(g.held_changes.is_empty());
    }
}
