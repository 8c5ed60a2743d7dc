//! The [`World`]'s observations of frames and the checks built on them:
//! hand-out order, retention, groups over time, presence and forward secrecy.
//!
//! # Formulations
//! - **`per-conversation-order`** is exactly protocol 6.2's promise: each
//!   pass hands a mailbox's items out in `seq` (acceptance) order, so the
//!   *first* hand-out of every item of a mailbox comes in increasing `seq`
//!   order; redeliveries may come in any order.
//! - **`retention`**: a mailbox item the device acked is gone by the next
//!   sweep (every [`super::SWEEP_EVERY_MS`]), and no item outlives its expiry
//!   by more than one sweep interval.
//! - **`removed-member-cannot-read`**: the server stops fanning out to a
//!   removed member, so its app normally never even sees later ciphertexts.
//!   The meaningful question is whether it *could* read them: a removed
//!   member is assumed to keep its device state as of its removal (the World
//!   keeps that copy up to the moment its own device applies the removal),
//!   and at the end every group ciphertext sealed after the removal by a
//!   sender whose view no longer held it is tried against that copy. Its app
//!   must also never be shown a group message sealed while the sender's view
//!   did not hold it. ("Removed before the message" means removed in the
//!   *sender's* view when it encrypted: a sender that has not yet heard of a
//!   removal still encrypts for the old membership, as in every real
//!   deployment.) At-least-once for a group message asks for the members of
//!   the group's version the server was at when it accepted the message, among
//!   those the sender encrypted for.
//! - **Presence** is judged against the truth the World keeps: online from
//!   the server's `Welcome` to the connection's end, last seen at each such
//!   change, and each owner's privacy setting from the moment its
//!   `PresencePrivacy` frame reaches the server (it has no reply, protocol
//!   13.2). `presence-privacy` and `presence-throttle` look at every frame the
//!   server sends; `presence-converges` ([`World::check_presence`]) compares
//!   each subscriber's last shown view with the truth for pairs that have been
//!   quiet for [`World::presence_settle_ms`]. A push lost, duplicated or
//!   delayed by an injected fault excuses its pair until the next subscribe
//!   reply reaches the subscriber: pushes are not retransmitted (over TCP they
//!   are never lost without the connection), so the oracle does not demand
//!   what the protocol does not promise. Excused pairs are counted.
//! - **`forward-secrecy`**: see [`World::compromise`].

use std::collections::BTreeSet;

use super::oracle::{names, GroupSend, Violation};
use super::{device_of, World};
use crate::client::{Client, ClientConfig, SavedClient};
use crate::ids::{MessageId, UserId};
use crate::server::machine::{Body, Queued};
use crate::server::presence::PRESENCE_PUSH_INTERVAL_MS;
use crate::server::ConnId;
use crate::wire::{self, ClientFrame, Delivery, Envelope, EnvelopeKind, LastSeen, ServerFrame};

impl World {
    /// How long a (subscriber, user) pair must have been quiet before its
    /// presence is judged: the push interval, one client resend interval (a
    /// lost subscription is re-sent), and four worst-case one-way latencies
    /// plus a second of margin.
    pub fn presence_settle_ms(&self) -> u64 {
        PRESENCE_PUSH_INTERVAL_MS
            + self.config.client_resend_after_ms
            + 4 * self.config.faults.latency_max_ms.max(self.config.faults.latency_min_ms)
            + 1_000
    }

    /// `presence-converges` now: every followed user's last shown presence,
    /// for each connected subscriber, is what the truth and the owner's
    /// setting say, for pairs quiet for [`World::presence_settle_ms`]. Also
    /// run by [`World::finish`].
    pub fn check_presence(&mut self) -> Vec<Violation> {
        let now = self.now_ms;
        let cutoff = now.saturating_sub(self.presence_settle_ms());
        let truth = &self.history.presence;
        let quiet = |map: &std::collections::BTreeMap<UserId, u64>, u: &UserId| map.get(u).is_none_or(|t| *t <= cutoff);
        let mut out = Vec::new();
        let (mut checked, mut excused) = (0u64, 0u64);
        for (s, d) in &self.devices {
            let Some(c) = d.client.as_ref() else { continue };
            let online = truth.online.get(s).copied().unwrap_or(false);
            if d.conn.is_none() || !c.is_ready() || !online || !quiet(&truth.changed_at_ms, s) {
                continue;
            }
            if !quiet(&truth.subscribed_at_ms, s) {
                excused += c.presence_subscriptions().count() as u64;
                continue;
            }
            for t in c.presence_subscriptions() {
                let want = truth.view(t, s, now);
                let settled = quiet(&truth.changed_at_ms, t)
                    && quiet(&truth.setting_changed_at_ms, t)
                    && want == truth.view(t, s, cutoff)
                    && !truth.excused.contains(&(s.clone(), t.clone()));
                if !settled {
                    excused += 1;
                    continue;
                }
                checked += 1;
                let shown = truth.shown.get(&(s.clone(), t.clone()));
                if shown != Some(&want) {
                    out.push(Violation {
                        invariant: names::PRESENCE_CONVERGES,
                        at_ms: now,
                        detail: format!("{s:?} shows {t:?} as {shown:?}, the truth is {want:?}"),
                    });
                }
            }
        }
        self.history.counts.presence_pairs_checked += checked;
        self.history.counts.presence_pairs_excused += excused;
        out
    }

    /// A frame is about to reach the server from `user`: note what the
    /// oracle must know before the server acts on it. Returns the decoded
    /// frame when it carries what the oracle takes as applied only if the
    /// server accepted it (see [`World::server_frame_accepted`]).
    pub(super) fn before_server_frame(&mut self, conn: ConnId, kind: &str, bytes: &[u8]) -> Option<ClientFrame> {
        match kind {
            "presence-subscribe" => {
                self.subscribe_conn = Some(conn);
                None
            }
            "presence-privacy" | "delivery-ack" => wire::decode::<ClientFrame>(bytes).ok(),
            _ => None,
        }
    }

    /// The server handled `frame` from `user` without refusing it (a frame
    /// refused by the rate limit is dropped unread, protocol 3): its privacy
    /// setting now applies, and its acked items must go.
    pub(super) fn server_frame_accepted(&mut self, user: &UserId, frame: ClientFrame) {
        match frame {
            ClientFrame::PresencePrivacy { visibility, contacts } => {
                let p = &mut self.history.presence;
                p.settings.insert(user.clone(), (visibility, contacts.into_iter().collect()));
                p.setting_changed_at_ms.insert(user.clone(), self.now_ms);
            }
            ClientFrame::DeliveryAck { seqs } => {
                let addr = device_of(user);
                self.acked.extend(seqs.into_iter().map(|s| (addr.clone(), s)));
            }
            _ => {}
        }
    }

    /// A frame the server sends to `owner`'s connection: the checks that
    /// look at server output. Returns whether it is a presence subscribe reply.
    pub(super) fn observe_server_frame(&mut self, owner: Option<&UserId>, conn: ConnId, frame: &ServerFrame) -> bool {
        let now = self.now_ms;
        if let ServerFrame::Bundle { bundle, .. } = frame {
            if let Some(k) = &bundle.one_time_prekey {
                let v = self.history.prekey_handed_out(&bundle.owner, k.id, now);
                self.violations.extend(v);
            }
        }
        let Some(user) = owner else { return false };
        match frame {
            ServerFrame::Welcome { .. } => self.presence_online(user),
            ServerFrame::ServerAck { message_id, .. } => self.fix_group_recipients(*message_id),
            ServerFrame::Deliver { seq, .. } => {
                let (max, seen) = self.handed_out.entry(user.clone()).or_default();
                if !seen.insert(*seq) {
                    self.history.counts.redeliveries += 1;
                } else if *seq < *max {
                    let max = *max;
                    self.violations.push(Violation {
                        invariant: names::ORDER,
                        at_ms: now,
                        detail: format!("{user:?}'s item {seq} was handed out for the first time after item {max}"),
                    });
                } else {
                    *max = *seq;
                }
            }
            ServerFrame::Presence { user: target, last_seen } => {
                let reply = self.subscribe_conn == Some(conn);
                self.observe_presence(user, target, *last_seen, reply);
                return reply;
            }
            _ => {}
        }
        false
    }

    fn observe_presence(&mut self, subscriber: &UserId, target: &UserId, last_seen: LastSeen, reply: bool) {
        let now = self.now_ms;
        let p = &mut self.history.presence;
        let key = (subscriber.clone(), target.clone());
        let previous = p.last_sent_ms.insert(key.clone(), now);
        if !p.permits(target, subscriber) {
            if last_seen != LastSeen::LongAgo {
                self.violations.push(Violation {
                    invariant: names::PRESENCE_PRIVACY,
                    at_ms: now,
                    detail: format!("{subscriber:?} was sent {target:?}'s presence {last_seen:?}, which {target:?}'s setting excludes it from"),
                });
            }
            let setting_at = p.setting_changed_at_ms.get(target).copied().unwrap_or(0);
            if !reply && previous.is_some_and(|prev| setting_at <= prev) {
                self.violations.push(Violation {
                    invariant: names::PRESENCE_PRIVACY,
                    at_ms: now,
                    detail: format!(
                        "{subscriber:?} was pushed {target:?}'s presence with no change of setting: the timing of {target:?}'s activity leaks"
                    ),
                });
            }
        }
        if reply {
            return;
        }
        self.history.counts.presence_pushes += 1;
        if let Some(prev) = previous {
            if now < prev.saturating_add(PRESENCE_PUSH_INTERVAL_MS) {
                self.violations.push(Violation {
                    invariant: names::PRESENCE_THROTTLE,
                    at_ms: now,
                    detail: format!(
                        "{subscriber:?} was pushed {target:?}'s presence {} ms after the previous one (limit {PRESENCE_PUSH_INTERVAL_MS} ms)",
                        now - prev
                    ),
                });
            }
        }
    }

    /// A presence frame to `subscriber` about `target` was hit by a fault.
    pub(super) fn excuse_presence(&mut self, subscriber: &UserId, target: Option<&UserId>) {
        if let Some(t) = target {
            self.history.presence.excused.insert((subscriber.clone(), t.clone()));
        }
    }

    /// The server counts `user` online from now on.
    pub(super) fn presence_online(&mut self, user: &UserId) {
        let p = &mut self.history.presence;
        if p.online.insert(user.clone(), true) != Some(true) {
            p.last_seen_ms.insert(user.clone(), self.now_ms);
            p.changed_at_ms.insert(user.clone(), self.now_ms);
            self.note("online", format!("user={}", user.as_str()));
        }
    }

    /// `user`'s connection ended (or the server died): offline from now on.
    pub(super) fn presence_offline(&mut self, user: &UserId) {
        let p = &mut self.history.presence;
        if p.online.insert(user.clone(), false) == Some(true) {
            p.last_seen_ms.insert(user.clone(), self.now_ms);
            p.changed_at_ms.insert(user.clone(), self.now_ms);
            self.note("offline", format!("user={}", user.as_str()));
        }
    }

    /// A frame is about to reach `user`'s client.
    pub(super) fn before_client_frame(&mut self, user: &UserId, frame: &ServerFrame, reply: bool) {
        match frame {
            ServerFrame::Deliver { item: Delivery::Envelope(env), .. } => {
                if self.history.received.contains_key(&(user.clone(), env.message_id)) {
                    self.history.counts.duplicates_suppressed += 1;
                }
                if self.config.record_ciphertexts {
                    self.delivered
                        .entry((user.clone(), env.from.clone(), env.message_id))
                        .or_insert_with(|| env.clone());
                }
            }
            ServerFrame::Presence { user: target, .. } if reply => {
                self.history.presence.excused.remove(&(user.clone(), target.clone()));
            }
            _ => {}
        }
    }

    /// A frame `user`'s client queued (seen before the pacer lets it go): a
    /// group message's first sighting is when it was sealed, under the
    /// sender's current view.
    pub(super) fn observe_client_frame(&mut self, user: &UserId, frame: &ClientFrame) {
        if let ClientFrame::PresenceSubscribe { .. } = frame {
            return;
        }
        let ClientFrame::GroupSend { message_id, group, ciphertext } = frame else { return };
        if self.history.group_sends.contains_key(message_id) {
            return;
        }
        let view: BTreeSet<UserId> =
            self.client(user).and_then(|c| c.group(group)).map(|(_, m)| m.into_iter().collect()).unwrap_or_default();
        self.history.group_sends.insert(
            *message_id,
            GroupSend {
                group: *group,
                from: user.clone(),
                view,
                ciphertext: ciphertext.clone(),
                sealed_at_ms: self.now_ms,
            },
        );
    }

    /// The server accepted a group message: its intended recipients are the
    /// members of the version the server is at, among those it was sealed for.
    fn fix_group_recipients(&mut self, id: MessageId) {
        let Some(gs) = self.history.group_sends.get(&id) else { return };
        if !self.group_acked.insert(id) {
            return;
        }
        let version = self.server.group(&gs.group).map(|g| g.version);
        let members = version.and_then(|v| self.history.groups.get(&gs.group)?.versions.get(&v).cloned());
        let to: BTreeSet<UserId> = gs
            .view
            .iter()
            .filter(|u| **u != gs.from && members.as_ref().is_none_or(|m| m.contains(*u)))
            .cloned()
            .collect();
        if let Some(sent) = self.history.sent.get_mut(&id) {
            sent.to = to;
        }
    }

    /// `removed-member-cannot-read`, app side: `user` was shown group message `id`.
    pub(super) fn check_group_reader(&self, user: &UserId, id: MessageId) -> Vec<Violation> {
        match self.history.group_sends.get(&id) {
            Some(gs) if !gs.view.contains(user) => vec![Violation {
                invariant: names::REMOVED_MEMBER_CANNOT_READ,
                at_ms: self.now_ms,
                detail: format!("{user:?} was shown {id:?}, sealed by {:?} for a group view without it", gs.from),
            }],
            _ => Vec::new(),
        }
    }

    /// Keeps each removed member's copy current until its own device has
    /// applied the removal.
    pub(super) fn update_removed_copies(&mut self, user: &UserId) {
        if !self.removed_copies.iter().any(|c| !c.settled && c.user == *user) {
            return;
        }
        let Some(saved) = self.saved_state(user) else { return };
        let Some(client) = self.devices.get(user).and_then(|d| d.client.as_ref()) else { return };
        for copy in self.removed_copies.iter_mut().filter(|c| !c.settled && c.user == *user) {
            let still_member = client.group(&copy.group).is_some_and(|(_, m)| m.contains(user));
            if still_member {
                copy.saved = saved.clone();
            } else {
                copy.settled = true;
            }
        }
    }

    /// `removed-member-cannot-read`, key side: every removed member's copy
    /// against every group ciphertext sealed after its removal without it.
    pub(super) fn check_removed_members(&mut self) {
        let mut found = Vec::new();
        let mut tried = 0u64;
        for copy in &self.removed_copies {
            let Some(config) = self.devices.get(&copy.user).map(|d| d.config.clone()) else { continue };
            let Ok(mut adversary) = Client::restore(config, &copy.saved) else { continue };
            for (id, gs) in &self.history.group_sends {
                if gs.group != copy.group || gs.sealed_at_ms < copy.removed_at_ms || gs.view.contains(&copy.user) {
                    continue;
                }
                tried += 1;
                let envelope = Envelope {
                    from: device_of(&gs.from),
                    to: device_of(&copy.user),
                    message_id: *id,
                    server_ts_ms: gs.sealed_at_ms,
                    group: Some(gs.group),
                    kind: EnvelopeKind::Group,
                    ciphertext: gs.ciphertext.clone(),
                };
                if adversary.adversary_open(&envelope).is_some() {
                    found.push(Violation {
                        invariant: names::REMOVED_MEMBER_CANNOT_READ,
                        at_ms: self.now_ms,
                        detail: format!(
                            "{:?}, removed from {:?} at {} ms, can decrypt {id:?} that {:?} sealed afterwards",
                            copy.user, copy.group, copy.removed_at_ms, gs.from
                        ),
                    });
                }
            }
        }
        self.history.counts.removed_member_attempts += tried;
        self.violations.extend(found);
    }

    /// `forward-secrecy`: the stolen state against every envelope `user`
    /// had received and decrypted. Returns how many were tried.
    pub(super) fn check_forward_secrecy(&mut self, user: &UserId, config: ClientConfig, saved: &SavedClient) -> u64 {
        let Ok(mut adversary) = Client::restore(config, saved) else { return 0 };
        let mut tried = 0u64;
        let mut found = Vec::new();
        for ((to, _, id), envelope) in &self.delivered {
            if to != user || !self.history.decrypted.contains(&(user.clone(), *id)) {
                continue;
            }
            tried += 1;
            if adversary.adversary_open(envelope).is_some() {
                found.push(Violation {
                    invariant: names::FORWARD_SECRECY,
                    at_ms: self.now_ms,
                    detail: format!(
                        "a copy of {user:?}'s state decrypts {id:?} from {:?}, which it had already received",
                        envelope.from.user
                    ),
                });
            }
        }
        self.history.counts.adversary_attempts += tried;
        self.violations.extend(found);
        tried
    }

    /// Retention (acked items gone, nothing past its TTL) and plaintext in
    /// the server's memory (mailbox bodies).
    pub(super) fn sweep(&mut self) {
        let now = self.now_ms;
        let acked = std::mem::take(&mut self.acked);
        let mut present = BTreeSet::new();
        let mut found = Vec::new();
        let mut leaked = None;
        let mut scanned = Vec::new();
        for (addr, e) in self.server.mailbox_entries() {
            if !acked.is_empty() {
                present.insert((addr.clone(), e.seq));
            }
            if now > e.expires_at_ms.saturating_add(super::SWEEP_EVERY_MS)
                && !self.reported_retention.contains(&(addr.clone(), e.seq))
            {
                found.push((
                    addr.clone(),
                    e.seq,
                    format!("{addr:?}'s item {} is held {} ms past its expiry", e.seq, now - e.expires_at_ms),
                ));
            }
            if leaked.is_none() && !self.memory_scanned.contains(&(addr.clone(), e.seq)) {
                scanned.push((addr.clone(), e.seq));
                if let Queued::Envelope { body, .. } = &e.payload {
                    let bytes = match body {
                        Body::Inline(b) => Some(b.as_slice()),
                        Body::Shared(id) => self.server.bodies().get(*id),
                    };
                    if let Some(id) = bytes.and_then(|b| self.history.find_plaintext(b)) {
                        leaked = Some(*id);
                    }
                }
            }
        }
        self.memory_scanned.extend(scanned);
        for (addr, seq) in acked {
            if present.contains(&(addr.clone(), seq)) && !self.reported_retention.contains(&(addr.clone(), seq)) {
                let detail = format!("{addr:?}'s item {seq} is still held after the device acked it");
                found.push((addr, seq, detail));
            }
        }
        for (addr, seq, detail) in found {
            if self.reported_retention.insert((addr, seq)) {
                self.violations.push(Violation { invariant: names::RETENTION, at_ms: now, detail });
            }
        }
        if let Some(id) = leaked {
            self.violations.push(Violation {
                invariant: names::NO_PLAINTEXT,
                at_ms: now,
                detail: format!("the plaintext of {id:?} is in a mailbox in the server's memory"),
            });
        }
    }

    /// A group message as recorded (for reports and tests).
    pub fn group_send(&self, id: &MessageId) -> Option<&GroupSend> {
        self.history.group_sends.get(id)
    }
}
