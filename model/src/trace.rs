//! Counterexamples in plain words: a path the checker found, as a numbered
//! list of steps ("3. the network drops the delivery-ack for seq 1 from bob
//! to the server"), each followed by what it caused, then the violated
//! property, what it means, and the state that breaks it.
//!
//! Every line is computed by re-running the path's actions through the real
//! code with notes switched on, so a trace says what the code did, not what
//! a second description of the protocol thinks it should have done.

use std::collections::VecDeque;

use bluetick_core::server::machine::Queued;

use crate::config::{AppStep, NetworkMode, GHOST};
use crate::model::{Action, MessagingModel};
use crate::properties::{Check, Kind};
use crate::system::{client_frame_phrase, msg_label, name, server_frame_phrase, Chan, Conv, Dir, MState, EPOCH_MS};

/// The most frames in flight or mailbox entries a state description lists
/// one by one: a model never holds more than a handful, and a longer list
/// would bury the violation.
pub const LISTED_MAX: usize = 8;

/// One step of a path in plain words, judged from the state it is taken in.
pub fn describe_step(model: &MessagingModel, s: &MState, action: &Action) -> String {
    let setup = model.setup();
    let who = |i: u8| name(setup.account(usize::from(i)));
    let t = s.now.saturating_sub(EPOCH_MS);
    match action {
        Action::Deliver(c, i) => format!("the network delivers {}{}", frame_route(model, s, c, *i), overtakes(model, *i)),
        Action::Duplicate(c, i) => format!(
            "the network duplicates {}{}: one copy arrives now, one stays in flight",
            frame_route(model, s, c, *i),
            overtakes(model, *i)
        ),
        Action::Drop(c, i) => format!("the network drops {}", frame_route(model, s, c, *i)),
        Action::ServerTimeout => {
            let at = s.server.server().poll_timeout().unwrap_or(s.now).max(s.now).saturating_sub(EPOCH_MS);
            format!("the server's timer fires at t={at}ms (ack timeout or expiry)")
        }
        Action::ClientTimeout(i) => {
            let slot = s.clients.get(usize::from(*i));
            let at = slot.and_then(|c| c.timeout()).unwrap_or(s.now).max(s.now).saturating_sub(EPOCH_MS);
            format!("{}'s timer fires at t={at}ms (resends what is still unconfirmed)", who(*i))
        }
        Action::Connect(i) => format!("{} comes online and connects", who(*i)),
        Action::Disconnect(i) => format!("{} goes offline (its connection closes)", who(*i)),
        Action::CrashClient(i) => format!("{} crashes and restarts offline from its last save", who(*i)),
        Action::CrashServer => "the server crashes and restarts from its store (every connection drops)".into(),
        Action::App(i) => app_step(model, s, *i),
        Action::Read(i, c) => {
            let unread: Vec<String> = s
                .hist
                .unread
                .iter()
                .filter(|(r, cv, _)| r == i && cv == c)
                .map(|(_, _, id)| msg_label(&s.hist, id))
                .collect();
            let what = match c {
                Conv::Direct(p) => format!("the conversation with {}", who(*p)),
                Conv::Group(g) => format!("group {g}"),
            };
            format!("{}'s user opens {what} and reads {}", who(*i), unread.join(", "))
        }
        Action::Steal(i) => format!("the adversary copies {}'s complete device state (t={t}ms)", who(*i)),
        Action::RestoreBackup => {
            let victim = s.thief.as_ref().map_or("?", |th| name(usize::from(th.victim)));
            format!("{victim}'s device is restored from an old backup: the state the adversary stole")
        }
        Action::InjectGhost => format!(
            "the adversary, on the admin's connection, asks the server to add {} to group 0 without the admin's signature",
            name(GHOST)
        ),
    }
}

/// "the send of #1 from alice to the server", or where the frame is gone.
fn frame_route(model: &MessagingModel, s: &MState, c: &Chan, i: usize) -> String {
    let who = name(model.setup().account(usize::from(c.client)));
    let Some(frame) = s.net.get(c).and_then(|q: &VecDeque<_>| q.get(i)) else {
        return format!("a frame no longer in flight on {who}'s connection");
    };
    match c.dir {
        Dir::Up => format!("{} from {who} to the server", client_frame_phrase(&s.hist, frame)),
        Dir::Down => format!("{} from the server to {who}", server_frame_phrase(&s.hist, frame)),
    }
}

fn overtakes(model: &MessagingModel, i: usize) -> String {
    match (model.config().network, i) {
        (NetworkMode::Reorder, 1) => ", overtaking 1 earlier frame".into(),
        (NetworkMode::Reorder, n) if n > 1 => format!(", overtaking {n} earlier frames"),
        _ => String::new(),
    }
}

fn app_step(model: &MessagingModel, s: &MState, i: u8) -> String {
    let who = name(usize::from(i));
    let pos = s.script.get(usize::from(i)).copied().map_or(usize::MAX, usize::from);
    let Some(step) = model.config().scripts.get(usize::from(i)).and_then(|sc| sc.get(pos)) else {
        return format!("{who}'s app has nothing left to do");
    };
    let next = model.setup().message_number(usize::from(i), pos);
    match step {
        AppStep::Send { to } => format!("{who}'s app sends message #{next} to {}", name(*to)),
        AppStep::CreateGroup { members } => {
            let names: Vec<&str> = members.iter().map(|m| name(*m)).collect();
            format!("{who}'s app creates group {} with {}", s.hist.groups.len(), names.join(", "))
        }
        AppStep::SendGroup { group } => format!("{who}'s app sends message #{next} to group {group}"),
        AppStep::RemoveMember { group, member } => {
            format!("{who}'s app removes {} from group {group}", name(*member))
        }
    }
}

/// The state in a few plain lines: time, frames in flight, what the
/// server's mailboxes hold, who is online, the ticks each sender sees and
/// what each app was shown.
pub fn describe_state(model: &MessagingModel, s: &MState) -> Vec<String> {
    let setup = model.setup();
    let h = &s.hist;
    let mut out = vec![format!("time: t={}ms", s.now.saturating_sub(EPOCH_MS))];
    let mut flying = Vec::new();
    for (c, q) in &s.net {
        for f in q {
            let who = name(setup.account(usize::from(c.client)));
            flying.push(match c.dir {
                Dir::Up => format!("{} from {who} to the server", client_frame_phrase(h, f)),
                Dir::Down => format!("{} from the server to {who}", server_frame_phrase(h, f)),
            });
        }
    }
    out.push(format!("in flight: {}", listing(flying)));
    let server = s.server.server();
    let mut boxes = Vec::new();
    for slot in 0..s.clients.len() {
        let account = setup.account(slot);
        let addr = setup.address(account);
        let items: Vec<String> = server
            .mailbox_entries()
            .filter(|(a, _)| **a == addr)
            .map(|(_, e)| {
                let what = match &e.payload {
                    Queued::Envelope { .. } => format!("{} from {}", msg_label(h, &e.key.1), e.key.0.user.as_str()),
                    Queued::Notice(_) => "a receipt or notice".to_string(),
                };
                let handed = match e.in_flight_since_ms {
                    Some(t) => format!(", handed out at t={}ms and not acked", t.saturating_sub(EPOCH_MS)),
                    None => ", not handed out".to_string(),
                };
                format!("{what} (seq {}{handed})", e.seq)
            })
            .collect();
        boxes.push(format!("{}: {}", name(account), listing(items)));
    }
    out.push(format!("server mailboxes: {}", boxes.join("; ")));
    let online: Vec<String> = s
        .clients
        .iter()
        .enumerate()
        .map(|(i, c)| format!("{} {}", name(setup.account(i)), if c.is_connected() { "online" } else { "offline" }))
        .collect();
    out.push(format!("devices: {}", online.join(", ")));
    let mut sent: Vec<_> = h.sent.iter().collect();
    sent.sort_by_key(|(_, m)| m.n);
    for (id, m) in sent {
        let mut per = Vec::new();
        for to in &m.to {
            let ticks = h.status.get(&(*id, *to)).map_or("Pending".to_string(), |st| format!("{st:?}"));
            let shown = match h.received.get(&(*to, *id)) {
                None => "not shown",
                Some(1) => "shown once",
                Some(_) => "shown twice",
            };
            let read = if h.read.contains(&(*to, *id)) { ", read" } else { "" };
            per.push(format!(
                "to {}: {} sees {ticks}, {}'s app {shown}{read}",
                name(usize::from(*to)),
                name(usize::from(m.from)),
                name(usize::from(*to))
            ));
        }
        let acked = if h.acked.contains(id) { "acked by the server" } else { "not acked by the server" };
        let warm = if (m.n as usize) <= model.config().warm_up.len() { ", in the warm-up" } else { "" };
        out.push(format!("message #{} from {} ({acked}{warm}): {}", m.n, name(usize::from(m.from)), per.join("; ")));
    }
    if let Some(t) = &s.thief {
        let healed = if t.healed { "healed since" } else { "not healed since" };
        let restored = if t.restored { ", and the device was restored from it" } else { "" };
        out.push(format!("the adversary holds a copy of {}'s state ({healed}){restored}", name(usize::from(t.victim))));
    }
    out
}

fn listing(items: Vec<String>) -> String {
    if items.is_empty() {
        return "nothing".into();
    }
    let more = items.len().saturating_sub(LISTED_MAX);
    let mut shown: Vec<String> = items.into_iter().take(LISTED_MAX).collect();
    if more > 0 {
        shown.push(format!("and {more} more"));
    }
    shown.join(", ")
}

/// A path (each state with the action taken from it; the last without)
/// as a readable counterexample (or, for a guard, an example):
/// numbered steps, each with what it caused; for at-least-once, the
/// fault-free phase that fails to deliver; then the violated property, what
/// it means, and the state after the last step.
pub fn render_trace(model: &MessagingModel, check: Check, steps: Vec<(MState, Option<Action>)>) -> Vec<String> {
    let mut out = Vec::new();
    let mut last = None;
    let mut all_notes: Vec<String> = Vec::new();
    let broken_at_start = steps.first().is_some_and(|(s, _)| check.kind() == Kind::Always && !model.holds(check, s));
    if broken_at_start && !model.warm_up_violations().is_empty() {
        let n = model.config().warm_up.len();
        out.push(format!(
            "  0. the warm-up (registration, prekey uploads, {n} warm-up messages sent and read) already breaks it"
        ));
        out.extend(model.warm_up_violations().iter().map(|l| format!("       - {l}")));
        all_notes.extend(model.warm_up_violations().iter().cloned());
    }
    for (k, (state, action)) in steps.into_iter().enumerate() {
        match action {
            Some(a) => {
                out.push(format!("{:>3}. {}", k + 1, describe_step(model, &state, &a)));
                let mut notes = model.explain(&state, &a);
                // A guard reached on the way is noise in a counterexample.
                if check.kind() == Kind::Always {
                    notes.retain(|l| !l.starts_with("reached: "));
                }
                out.extend(notes.iter().map(|l| format!("       - {l}")));
                all_notes.extend(notes);
            }
            None => last = Some(state),
        }
    }
    let Some(last) = last else { return out };
    let prefix = format!("VIOLATION {}: ", check.name());
    let mut detail = all_notes.iter().rev().find_map(|l| l.strip_prefix(prefix.as_str()).map(str::to_string));
    if check == Check::AtLeastOnce {
        let bound = model.config().quiesce_steps.unwrap_or(0);
        out.push(format!("  then faults stop, every device comes online, and at most {bound} fault-free steps run:"));
        let (lines, verdict) = model.explain_quiesce(&last);
        for (step, l) in lines {
            out.push(if step { format!("       {l}") } else { format!("         - {l}") });
        }
        detail = verdict;
    }
    if check.kind() == Kind::Always {
        let detail = detail.unwrap_or_else(|| "(see the steps above)".into());
        out.push(format!("  VIOLATION {}: {detail}", check.name()));
        out.push(format!("  the property: {}", check.meaning()));
    } else {
        out.push(format!("  REACHED {}: {}", check.name(), check.meaning()));
    }
    out.push("  the state after the last step:".into());
    out.extend(describe_state(model, &last).into_iter().map(|l| format!("    {l}")));
    out
}
