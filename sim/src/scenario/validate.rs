//! [`RawScenario`] → [`Scenario`]: resolves names, applies defaults and
//! checks every value, collecting all problems (not just the first), each
//! located by its field path.

use std::collections::{BTreeMap, BTreeSet};

use bluetick_core::client::BUNDLE_FETCHES_PER_WINDOW;
use bluetick_core::ids::UserId;
use bluetick_core::server::machine::DAY_MS;
use bluetick_core::server::ServerConfig;

use super::error::ScenarioError;
use super::locate::Locator;
use super::model::*;
use super::spec::*;
use super::units::{format_duration_ms, Spread};

/// Most users a scenario may declare: the direct driver's presence storms go
/// to 100,000 users; twice that leaves headroom without letting a typo
/// (`count = 20000000`) allocate gigabytes.
pub const USERS_MAX: u32 = 200_000;
/// Most messages the workload may generate in one run: a bound on the
/// timeline's memory (a few hundred bytes per message) and on run time.
pub const MESSAGES_MAX: u64 = 2_000_000;
/// Most matrix cells: each cell is a full run.
pub const MATRIX_CELLS_MAX: usize = 1_024;
/// Most seeds listed in `[scenario] seeds`; sweeps over more use the CLI.
pub const SEEDS_MAX: usize = 10_000;
/// Longest scenario duration: a year of simulated time covers every TTL.
pub const DURATION_MAX_MS: u64 = 366 * DAY_MS;
/// Largest clock offset, either way: a year.
pub const CLOCK_OFFSET_MAX_MS: i64 = 366 * DAY_MS as i64;
/// Highest rate accepted (per second or per minute): beyond it the
/// generated timeline alone would exceed [`MESSAGES_MAX`] in a second.
pub const RATE_MAX: f64 = 100_000.0;
/// Longest scenario name (it becomes a folder name).
pub const NAME_LEN_MAX: usize = 64;
/// Smallest text body: every body carries a unique tag (message number and
/// seed) so the no-plaintext check can recognise it anywhere.
pub const BODY_BYTES_MIN: u32 = 32;
/// Largest text body the client accepts.
pub const BODY_BYTES_MAX: u32 = bluetick_core::client::BODY_LEN_MAX as u32;
/// Largest key-bundle fetch rate a scenario may set, per minute: enough for
/// every member of the largest group in a second.
pub const BUNDLE_FETCHES_PER_MIN_MAX: u32 = 1_000_000;

/// Largest media the scenario may send: 16 MiB, the client's limit.
pub const MEDIA_BYTES_MAX: u32 = 16 * 1024 * 1024;
/// Most messages in one burst.
pub const BURST_COUNT_MAX: u32 = 100_000;
/// Largest group, the admin included (the protocol's limit).
pub const GROUP_MEMBERS_MAX: usize = bluetick_core::server::machine::GROUP_MEMBERS_MAX;

/// Default convergence bound: five simulated minutes. A client fetches at
/// most 24 key bundles a minute (the server's anti-enumeration limit), so a
/// user who first writes to 50 people needs three minutes before the last
/// one can be reached; five leave room for retries after the faults stop.
pub const CONVERGE_WITHIN_DEFAULT_MS: u64 = 300_000;

/// When a group is created unless the file says: users register in the
/// first round trips of a run, and the server refuses a group that names a
/// user it does not know yet, so a group created at 0 ms would fail.
pub const GROUP_CREATED_DEFAULT_MS: u64 = 1_000;

/// Frame kinds a `[[faults.frames]]` rule may name: the wire variants in
/// kebab case, client frames then server frames, plus the four kinds of
/// `deliver` (`deliver-envelope`, `deliver-receipt`, …) to single one out.
pub const FRAME_KINDS: &[&str] = &[
    "register",
    "authenticate",
    "upload-pre-keys",
    "fetch-bundle",
    "send",
    "group-send",
    "delivery-ack",
    "receipt",
    "group-change",
    "presence-subscribe",
    "presence-privacy",
    "media-upload",
    "media-download",
    "ping",
    "challenge",
    "welcome",
    "server-ack",
    "deliver",
    "deliver-envelope",
    "deliver-receipt",
    "deliver-expired",
    "deliver-group-change",
    "group-change-accepted",
    "media-stored",
    "bundle",
    "pre-keys-low",
    "presence",
    "media-chunk",
    "pong",
    "error",
];

struct Checker<'a> {
    file: &'a str,
    loc: &'a Locator,
    errors: Vec<ScenarioError>,
    duration_ms: u64,
    /// Every user, declared order.
    order: Vec<UserId>,
    known: BTreeSet<UserId>,
    /// Generated users: prefix and zero-pad width.
    generated: Option<(String, usize)>,
}

/// Validates `raw` (parsed from `file`, indexed by `loc`).
pub fn validate(file: &str, raw: RawScenario, loc: &Locator) -> Result<Scenario, Vec<ScenarioError>> {
    let mut c = Checker {
        file,
        loc,
        errors: Vec::new(),
        duration_ms: 0,
        order: Vec::new(),
        known: BTreeSet::new(),
        generated: None,
    };
    let s = c.scenario(raw);
    if c.errors.is_empty() {
        Ok(s)
    } else {
        let mut errors = c.errors;
        errors.sort_by_key(|e| (e.line, e.column));
        errors.dedup();
        Err(errors)
    }
}

impl Checker<'_> {
    fn err(&mut self, path: &str, message: impl Into<String>) {
        let span = self.loc.span_of(path).unwrap_or(0..0);
        let (line, column) = self.loc.line_col(span.start);
        self.errors.push(ScenarioError {
            file: self.file.to_owned(),
            line,
            column,
            path: path.to_owned(),
            message: message.into(),
        });
    }

    fn scenario(&mut self, raw: RawScenario) -> Scenario {
        let meta = raw.scenario;
        self.check_name(&meta.name);
        self.duration_ms = meta.duration.0;
        if meta.duration.0 == 0 || meta.duration.0 > DURATION_MAX_MS {
            self.err(
                "scenario.duration",
                format!("must be more than 0ms and at most {}", format_duration_ms(DURATION_MAX_MS)),
            );
        }
        let seed = meta.seed.unwrap_or(1);
        let seeds = meta.seeds.clone().unwrap_or_else(|| vec![seed]);
        if seeds.is_empty() || seeds.len() > SEEDS_MAX {
            self.err("scenario.seeds", format!("must list 1 to {SEEDS_MAX} seeds, got {}", seeds.len()));
        }
        self.users(&raw.users);
        let users = self.order.clone();
        let contacts = self.contacts(raw.contacts.as_ref());
        let groups = self.groups(&raw.groups);
        let group_labels: BTreeSet<String> = groups.iter().map(|g| g.label.clone()).collect();
        let workload = self.workload(raw.workload.as_ref(), &group_labels, &groups, &contacts);
        let presence = self.presence(raw.presence.as_ref(), &contacts);
        let mut knobs = self.network(raw.network.as_ref());
        let faults = self.faults(raw.faults.as_ref());
        let (random_for, random_users) = self.random_faults(raw.faults.as_ref(), &mut knobs);
        let converge_within_ms =
            raw.quiesce.as_ref().and_then(|q| q.converge_within).map_or(CONVERGE_WITHIN_DEFAULT_MS, |d| d.0);
        if converge_within_ms == 0 {
            self.err("quiesce.converge_within", "must be more than 0ms");
        }
        let server = self.server(raw.server.as_ref());
        let clients = self.clients(raw.clients.as_ref());
        let bugs = self.bugs(raw.bugs.as_ref());
        let matrix = self.matrix(raw.matrix.as_ref());
        let expect = self.expect(raw.expect.as_ref());
        Scenario {
            file: self.file.to_owned(),
            name: meta.name,
            description: meta.description.unwrap_or_default().trim().to_owned(),
            duration_ms: meta.duration.0,
            seed,
            seeds,
            driver: meta.driver.unwrap_or_default(),
            suite: meta.suite.unwrap_or_default(),
            swarm: meta.swarm.unwrap_or(false),
            users,
            contacts,
            groups,
            workload,
            presence,
            knobs,
            partition_for_ms: random_for,
            random_fault_users: random_users,
            faults,
            converge_within_ms,
            server,
            clients,
            bugs,
            matrix,
            expect,
        }
    }

    fn check_name(&mut self, name: &str) {
        let ok_chars = name.chars().all(|c| matches!(c, 'a'..='z' | '0'..='9' | '-' | '_'));
        if name.is_empty() || name.len() > NAME_LEN_MAX || !ok_chars {
            self.err(
                "scenario.name",
                format!("{name:?} is not a valid name (1 to {NAME_LEN_MAX} characters of a-z 0-9 - _)"),
            );
        }
    }

    // ----- users and selectors -----

    fn users(&mut self, u: &UsersSection) {
        for (i, name) in u.names.iter().flatten().enumerate() {
            let path = format!("users.names[{i}]");
            match UserId::new(name) {
                Ok(id) if self.known.contains(&id) => self.err(&path, format!("user {name:?} is declared twice")),
                Ok(id) => {
                    self.known.insert(id.clone());
                    self.order.push(id);
                }
                Err(e) => self.err(&path, format!("{name:?} is not a valid user name: {e}")),
            }
        }
        if u.prefix.is_some() && u.count.is_none() {
            self.err("users.prefix", "only used with `count` (the prefix of generated names)");
        }
        if let Some(count) = u.count {
            let prefix = u.prefix.clone().unwrap_or_else(|| "user".to_owned());
            let width = count.max(1).to_string().len();
            if count > USERS_MAX {
                self.err("users.count", format!("{count} users is more than the limit of {USERS_MAX}"));
            } else {
                let mut bad = None;
                for i in 1..=count {
                    let name = format!("{prefix}{i:0width$}");
                    match UserId::new(&name) {
                        Ok(id) if self.known.contains(&id) => {
                            bad = Some(format!("generated user {name:?} is also declared in users.names"));
                            break;
                        }
                        Ok(id) => {
                            self.known.insert(id.clone());
                            self.order.push(id);
                        }
                        Err(e) => {
                            bad = Some(format!("generated name {name:?} is not a valid user name: {e}"));
                            break;
                        }
                    }
                }
                if let Some(msg) = bad {
                    let path = if u.prefix.is_some() { "users.prefix" } else { "users.count" };
                    self.err(path, msg);
                }
                self.generated = Some((prefix, width));
            }
        }
        if self.order.is_empty() && self.errors.is_empty() {
            self.err("users", "declares no users (set `names` or `count`)");
        }
    }

    /// Resolves one selector at `path`. Errors name the selector.
    fn select_one(&mut self, path: &str, sel: &str, out: &mut Vec<UserId>) {
        let before = out.len();
        if sel == "*" {
            out.extend(self.order.iter().cloned());
        } else if let Some((prefix, range)) = sel.strip_suffix(']').and_then(|s| s.split_once('[')) {
            let Some((a, b)) =
                range.split_once("..").and_then(|(a, b)| Some((a.parse::<u64>().ok()?, b.parse::<u64>().ok()?)))
            else {
                self.err(path, format!("{sel:?}: a range selector looks like \"user[1..100]\" (both ends included)"));
                return;
            };
            if a > b {
                self.err(path, format!("{sel:?}: the range is empty ({a} > {b})"));
                return;
            }
            let width = match &self.generated {
                Some((p, w)) if p == prefix => *w,
                _ => 0,
            };
            for i in a..=b {
                let name = format!("{prefix}{i:0width$}");
                match UserId::new(&name).ok().filter(|id| self.known.contains(id)) {
                    Some(id) => out.push(id),
                    None => {
                        let hint = self.users_hint();
                        self.err(path, format!("{sel:?} names {name:?}, which is not a user ({hint})"));
                        return;
                    }
                }
            }
        } else if let Some(prefix) = sel.strip_suffix('*') {
            out.extend(self.order.iter().filter(|u| u.as_str().starts_with(prefix)).cloned());
        } else {
            match UserId::new(sel).ok().filter(|id| self.known.contains(id)) {
                Some(id) => out.push(id),
                None => {
                    let hint = self.users_hint();
                    self.err(path, format!("unknown user {sel:?} ({hint})"));
                    return;
                }
            }
        }
        if out.len() == before {
            self.err(path, format!("selector {sel:?} matches no user"));
        }
    }

    fn users_hint(&self) -> String {
        let n = self.order.len();
        let show: Vec<&str> = self.order.iter().take(4).map(UserId::as_str).collect();
        let last = self.order.last().map(UserId::as_str).unwrap_or_default();
        if n <= 4 {
            format!("users are {}", show.join(", "))
        } else {
            format!(
                "users are {} … {last}, {n} in all; selectors: a name, \"*\", \"prefix*\", \"prefix[1..9]\"",
                show.join(", ")
            )
        }
    }

    /// Resolves a selector list; duplicates are removed, first-seen order kept.
    fn select(&mut self, path: &str, sels: &[String]) -> Vec<UserId> {
        if sels.is_empty() {
            self.err(path, "selects nobody (list at least one selector)");
        }
        let mut out = Vec::new();
        for (i, s) in sels.iter().enumerate() {
            self.select_one(&format!("{path}[{i}]"), s, &mut out);
        }
        let mut seen = BTreeSet::new();
        out.retain(|u| seen.insert(u.clone()));
        out
    }

    fn user(&mut self, path: &str, name: &str) -> Option<UserId> {
        match UserId::new(name).ok().filter(|id| self.known.contains(id)) {
            Some(id) => Some(id),
            None => {
                let hint = self.users_hint();
                self.err(path, format!("unknown user {name:?} ({hint})"));
                None
            }
        }
    }

    // ----- value checks -----

    fn time(&mut self, path: &str, ms: u64) -> u64 {
        if ms > self.duration_ms {
            self.err(
                path,
                format!(
                    "{} is after the end of the scenario (duration {})",
                    format_duration_ms(ms),
                    format_duration_ms(self.duration_ms)
                ),
            );
        }
        ms
    }

    /// A window `[at, until)`: `until` or `for`, default the end.
    fn window(&mut self, path: &str, at: u64, until: Option<u64>, lasting: Option<u64>) -> (u64, u64) {
        let at = self.time(&format!("{path}.at"), at);
        let end = match (until, lasting) {
            (Some(_), Some(_)) => {
                self.err(&format!("{path}.for"), "give `until` or `for`, not both");
                self.duration_ms
            }
            (Some(u), None) => self.time(&format!("{path}.until"), u),
            (None, Some(f)) => {
                let end = at.saturating_add(f);
                if end > self.duration_ms {
                    self.err(
                        &format!("{path}.for"),
                        format!(
                            "the window ends at {}, after the end of the scenario (duration {})",
                            format_duration_ms(end),
                            format_duration_ms(self.duration_ms)
                        ),
                    );
                }
                end
            }
            (None, None) => self.duration_ms,
        };
        if end <= at && (until.is_some() || lasting.is_some()) {
            let key = if until.is_some() { "until" } else { "for" };
            self.err(
                &format!("{path}.{key}"),
                format!("the window is empty (it must end after `at` = {})", format_duration_ms(at)),
            );
        }
        (at, end)
    }

    fn per_mille(&mut self, path: &str, v: Option<u32>) -> Option<u32> {
        if let Some(x) = v {
            if x > 1000 {
                self.err(path, format!("{x} is not a per-mille value (0 to 1000)"));
            }
        }
        v
    }

    fn rate(&mut self, path: &str, v: Option<f64>) -> Option<f64> {
        if let Some(x) = v {
            if !x.is_finite() || !(0.0..=RATE_MAX).contains(&x) {
                self.err(path, format!("{x} is not a rate (a number from 0 to {RATE_MAX})"));
                return Some(0.0);
            }
        }
        v
    }

    fn spread_ms(&mut self, path: &str, s: Spread<super::units::DurationMs>) -> Spread<u64> {
        if s.min.0 > s.max.0 {
            self.err(path, format!("min {} is more than max {}", s.min, s.max));
        }
        Spread { min: s.min.0, max: s.max.0 }
    }

    fn spread_bytes(&mut self, path: &str, s: Spread<u32>, lo: u32, hi: u32) -> Spread<u32> {
        if s.min > s.max {
            self.err(path, format!("min {} is more than max {}", s.min, s.max));
        } else if s.min < lo || s.max > hi {
            self.err(path, format!("sizes must be {lo} to {hi} bytes, got {}..{}", s.min, s.max));
        }
        s
    }

    // ----- sections -----

    fn contacts(&mut self, c: Option<&ContactsSection>) -> Contacts {
        let Some(c) = c else { return Contacts { everyone: true, of: BTreeMap::new() } };
        let mut out = Contacts { everyone: c.everyone.unwrap_or(false), of: BTreeMap::new() };
        let link = |a: &UserId, b: &UserId, of: &mut BTreeMap<UserId, BTreeSet<UserId>>| {
            if a != b {
                of.entry(a.clone()).or_default().insert(b.clone());
                of.entry(b.clone()).or_default().insert(a.clone());
            }
        };
        for (i, pair) in c.pairs.iter().flatten().enumerate() {
            let path = format!("contacts.pairs[{i}]");
            if pair.len() != 2 {
                self.err(&path, format!("a pair has exactly two users, got {}", pair.len()));
                continue;
            }
            let a = self.user(&format!("{path}[0]"), &pair[0]);
            let b = self.user(&format!("{path}[1]"), &pair[1]);
            if let (Some(a), Some(b)) = (a, b) {
                if a == b {
                    self.err(&path, "a user cannot be its own contact");
                }
                link(&a, &b, &mut out.of);
            }
        }
        for (i, hub) in c.hubs.iter().enumerate() {
            let path = format!("contacts.hubs[{i}]");
            let center = self.user(&format!("{path}.user"), &hub.user);
            let with = self.select(&format!("{path}.with"), &hub.with);
            if let Some(center) = center {
                for w in &with {
                    link(&center, w, &mut out.of);
                }
            }
        }
        out
    }

    fn groups(&mut self, raw: &[GroupSection]) -> Vec<GroupSpec> {
        let mut out: Vec<GroupSpec> = Vec::new();
        for (i, g) in raw.iter().enumerate() {
            let path = format!("groups[{i}]");
            if out.iter().any(|o| o.label == g.name) {
                self.err(&format!("{path}.name"), format!("group {:?} is declared twice", g.name));
            }
            if g.name.is_empty() {
                self.err(&format!("{path}.name"), "a group needs a name");
            }
            let admin = self.user(&format!("{path}.admin"), &g.admin);
            let mut members: BTreeSet<UserId> =
                self.select(&format!("{path}.members"), &g.members).into_iter().collect();
            let at_ms =
                self.time(&format!("{path}.at"), g.at.map_or(GROUP_CREATED_DEFAULT_MS.min(self.duration_ms), |d| d.0));
            let Some(admin) = admin else { continue };
            members.remove(&admin);
            if members.len() + 1 > GROUP_MEMBERS_MAX {
                self.err(
                    &format!("{path}.members"),
                    format!("{} members with the admin, more than the limit of {GROUP_MEMBERS_MAX}", members.len() + 1),
                );
            }
            let mut current = members.clone();
            let mut changes = Vec::new();
            let mut last_at = at_ms;
            for (j, ch) in g.changes.iter().enumerate() {
                let cpath = format!("{path}.changes[{j}]");
                let t = self.time(&format!("{cpath}.at"), ch.at.0);
                if t < last_at {
                    self.err(
                        &format!("{cpath}.at"),
                        format!(
                            "changes must be in time order and after the group is created ({} < {})",
                            format_duration_ms(t),
                            format_duration_ms(last_at)
                        ),
                    );
                }
                last_at = t;
                let add: BTreeSet<UserId> = match &ch.add {
                    Some(a) => self.select(&format!("{cpath}.add"), a).into_iter().collect(),
                    None => BTreeSet::new(),
                };
                let remove: BTreeSet<UserId> = match &ch.remove {
                    Some(r) => self.select(&format!("{cpath}.remove"), r).into_iter().collect(),
                    None => BTreeSet::new(),
                };
                if add.is_empty() && remove.is_empty() && ch.add.is_none() && ch.remove.is_none() {
                    self.err(&cpath, "a change needs `add` or `remove`");
                }
                if remove.contains(&admin) {
                    self.err(&format!("{cpath}.remove"), format!("the admin {admin} cannot be removed"));
                }
                if let Some(both) = add.intersection(&remove).next() {
                    self.err(&cpath, format!("{both} is both added and removed"));
                }
                current.retain(|u| !remove.contains(u));
                current.extend(add.iter().filter(|u| **u != admin).cloned());
                if current.len() + 1 > GROUP_MEMBERS_MAX {
                    self.err(
                        &cpath,
                        format!(
                            "the group would have {} members, more than the limit of {GROUP_MEMBERS_MAX}",
                            current.len() + 1
                        ),
                    );
                }
                changes.push(GroupChangeSpec { at_ms: t, add, remove });
            }
            let churn = g.churn.as_ref().map(|ch| {
                let cpath = format!("{path}.churn");
                if ch.every.0 == 0 {
                    self.err(&format!("{cpath}.every"), "must be more than 0ms");
                }
                let pool = match &ch.pool {
                    Some(p) => self.select(&format!("{cpath}.pool"), p),
                    None => self.order.clone(),
                };
                let from_ms =
                    self.time(&format!("{cpath}.from"), ch.from.map_or(at_ms.saturating_add(ch.every.0), |d| d.0));
                let until_ms = self.time(&format!("{cpath}.until"), ch.until.map_or(self.duration_ms, |d| d.0));
                if ch.join.unwrap_or(0) == 0 && ch.leave.unwrap_or(0) == 0 {
                    self.err(&cpath, "churn needs `join` or `leave` above 0");
                }
                ChurnSpec {
                    every_ms: ch.every.0.max(1),
                    join: ch.join.unwrap_or(0),
                    leave: ch.leave.unwrap_or(0),
                    pool,
                    from_ms,
                    until_ms,
                }
            });
            out.push(GroupSpec { label: g.name.clone(), admin, members, at_ms, changes, churn });
        }
        out
    }

    fn workload(
        &mut self,
        w: Option<&WorkloadSection>,
        labels: &BTreeSet<String>,
        groups: &[GroupSpec],
        contacts: &Contacts,
    ) -> Workload {
        let empty = WorkloadSection {
            direct_per_s: None,
            group_per_s: None,
            media_per_s: None,
            body_bytes: None,
            media_bytes: None,
            read_delay: None,
            until: None,
            senders: Vec::new(),
            bursts: Vec::new(),
            offline: Vec::new(),
            flap: Vec::new(),
        };
        let w = w.unwrap_or(&empty);
        let global = Rates {
            direct_per_s: self.rate("workload.direct_per_s", w.direct_per_s).unwrap_or(0.0),
            group_per_s: self.rate("workload.group_per_s", w.group_per_s).unwrap_or(0.0),
            media_per_s: self.rate("workload.media_per_s", w.media_per_s).unwrap_or(0.0),
        };
        if global.group_per_s > 0.0 && groups.is_empty() {
            self.err("workload.group_per_s", "group messages need at least one [[groups]]");
        }
        let body_bytes = self.spread_bytes(
            "workload.body_bytes",
            w.body_bytes.unwrap_or(Spread::fixed(64)),
            BODY_BYTES_MIN,
            BODY_BYTES_MAX,
        );
        let media_bytes =
            self.spread_bytes("workload.media_bytes", w.media_bytes.unwrap_or(Spread::fixed(4096)), 1, MEDIA_BYTES_MAX);
        let read_delay_ms = w.read_delay.map(|r| self.spread_ms("workload.read_delay", r));
        let until_ms = self.time("workload.until", w.until.map_or(self.duration_ms, |d| d.0));
        let mut expected = (global.direct_per_s + global.group_per_s + global.media_per_s) * until_ms as f64 / 1000.0;

        let mut senders = Vec::new();
        for (i, s) in w.senders.iter().enumerate() {
            let path = format!("workload.senders[{i}]");
            let users = self.select(&format!("{path}.users"), &s.users);
            let rates = Rates {
                direct_per_s: self.rate(&format!("{path}.direct_per_s"), s.direct_per_s).unwrap_or(0.0),
                group_per_s: self.rate(&format!("{path}.group_per_s"), s.group_per_s).unwrap_or(0.0),
                media_per_s: self.rate(&format!("{path}.media_per_s"), s.media_per_s).unwrap_or(0.0),
            };
            let to = s.to.as_ref().map(|t| self.select(&format!("{path}.to"), t));
            if to.is_none() && !contacts.everyone && rates.direct_per_s + rates.media_per_s > 0.0 {
                for u in &users {
                    if contacts.of(u, &self.order).is_empty() {
                        self.err(&format!("{path}.users"), format!("{u} has no contacts to send to (set `to`)"));
                        break;
                    }
                }
            }
            let glabels = s.groups.as_ref().map(|gs| {
                for (j, g) in gs.iter().enumerate() {
                    if !labels.contains(g) {
                        self.err(
                            &format!("{path}.groups[{j}]"),
                            format!("unknown group {g:?} (groups: {})", join(labels)),
                        );
                    }
                }
                gs.clone()
            });
            if rates.group_per_s > 0.0 && groups.is_empty() {
                self.err(&format!("{path}.group_per_s"), "group messages need at least one [[groups]]");
            }
            let from_ms = self.time(&format!("{path}.from"), s.from.map_or(0, |d| d.0));
            let end = self.time(&format!("{path}.until"), s.until.map_or(until_ms, |d| d.0));
            if end < from_ms {
                self.err(&format!("{path}.until"), "ends before it starts");
            }
            expected += (rates.direct_per_s + rates.group_per_s + rates.media_per_s)
                * users.len() as f64
                * end.saturating_sub(from_ms) as f64
                / 1000.0;
            senders.push(SenderSpec { users, rates, to, groups: glabels, from_ms, until_ms: end });
        }

        let mut bursts = Vec::new();
        for (i, b) in w.bursts.iter().enumerate() {
            let path = format!("workload.bursts[{i}]");
            let at_ms = self.time(&format!("{path}.at"), b.at.0);
            let over_ms = b.over.map_or(0, |d| d.0);
            if at_ms.saturating_add(over_ms) > self.duration_ms {
                self.err(&format!("{path}.over"), "the burst runs past the end of the scenario");
            }
            let from = self.user(&format!("{path}.from"), &b.from);
            let count = b.count.unwrap_or(1);
            if count == 0 || count > BURST_COUNT_MAX {
                self.err(&format!("{path}.count"), format!("must be 1 to {BURST_COUNT_MAX}, got {count}"));
            }
            expected += f64::from(count);
            let kind = b.kind.unwrap_or(if b.group.is_some() { SendKind::Group } else { SendKind::Direct });
            let target = match kind {
                SendKind::Group => {
                    if b.to.is_some() {
                        self.err(&format!("{path}.to"), "a group burst names `group`, not `to`");
                    }
                    match &b.group {
                        Some(g) if labels.contains(g) => Some(BurstTarget::Group(g.clone())),
                        Some(g) => {
                            self.err(
                                &format!("{path}.group"),
                                format!("unknown group {g:?} (groups: {})", join(labels)),
                            );
                            None
                        }
                        None => {
                            self.err(&path, "a group burst needs `group`");
                            None
                        }
                    }
                }
                SendKind::Direct | SendKind::Media => {
                    if b.group.is_some() {
                        self.err(&format!("{path}.group"), "a direct or media burst names `to`, not `group`");
                    }
                    match &b.to {
                        Some(t) => self.user(&format!("{path}.to"), t).map(|u| {
                            if kind == SendKind::Media {
                                BurstTarget::Media(u)
                            } else {
                                BurstTarget::Direct(u)
                            }
                        }),
                        None => {
                            self.err(&path, "a direct or media burst needs `to`");
                            None
                        }
                    }
                }
            };
            if let Some(bytes) = b.bytes {
                let (lo, hi) =
                    if kind == SendKind::Media { (1, MEDIA_BYTES_MAX) } else { (BODY_BYTES_MIN, BODY_BYTES_MAX) };
                if bytes < lo || bytes > hi {
                    self.err(&format!("{path}.bytes"), format!("must be {lo} to {hi} bytes, got {bytes}"));
                }
            }
            if let (Some(from), Some(target)) = (from, target) {
                if let BurstTarget::Direct(to) | BurstTarget::Media(to) = &target {
                    if *to == from {
                        self.err(&format!("{path}.to"), "a user cannot send to itself");
                    }
                }
                bursts.push(BurstSpec { at_ms, from, target, count, over_ms, bytes: b.bytes });
            }
        }
        if expected > MESSAGES_MAX as f64 {
            self.err(
                "workload",
                format!("the workload generates about {expected:.0} messages, more than the limit of {MESSAGES_MAX}"),
            );
        }

        let mut offline = Vec::new();
        for (i, o) in w.offline.iter().enumerate() {
            let path = format!("workload.offline[{i}]");
            let users = self.select(&format!("{path}.users"), &o.users);
            let at_ms = self.time(&format!("{path}.at"), o.at.0);
            let until_ms = o.until.map(|u| self.time(&format!("{path}.until"), u.0));
            if until_ms.is_some_and(|u| u <= at_ms) {
                self.err(&format!("{path}.until"), "must be after `at`");
            }
            offline.push(OfflineSpec { users, at_ms, until_ms });
        }
        let mut flap = Vec::new();
        for (i, f) in w.flap.iter().enumerate() {
            let path = format!("workload.flap[{i}]");
            let users = self.select(&format!("{path}.users"), &f.users);
            let offline_for_ms = self.spread_ms(&format!("{path}.offline_for"), f.offline_for);
            let online_for_ms = self.spread_ms(&format!("{path}.online_for"), f.online_for);
            if offline_for_ms.min == 0 || online_for_ms.min == 0 {
                self.err(&path, "offline_for and online_for must be more than 0ms");
            }
            let from_ms = self.time(&format!("{path}.from"), f.from.map_or(0, |d| d.0));
            let until_ms = self.time(&format!("{path}.until"), f.until.map_or(self.duration_ms, |d| d.0));
            if until_ms <= from_ms {
                self.err(&format!("{path}.until"), "must be after `from`");
            }
            flap.push(FlapSpec { users, offline_for_ms, online_for_ms, from_ms, until_ms });
        }
        Workload { global, senders, bursts, body_bytes, media_bytes, read_delay_ms, until_ms, offline, flap }
    }

    fn presence(&mut self, p: Option<&PresenceSection>, contacts: &Contacts) -> PresenceSpec {
        let mut out = PresenceSpec::default();
        let Some(p) = p else { return out };
        if p.subscribe_contacts.unwrap_or(false) {
            for u in &self.order {
                let cs: BTreeSet<UserId> = contacts.of(u, &self.order).into_iter().cloned().collect();
                if !cs.is_empty() {
                    out.subscriptions.entry(u.clone()).or_default().extend(cs);
                }
            }
        }
        for (i, s) in p.subscriptions.iter().enumerate() {
            let path = format!("presence.subscriptions[{i}]");
            let users = self.select(&format!("{path}.users"), &s.users);
            let to = self.select(&format!("{path}.to"), &s.to);
            for u in users {
                let set = out.subscriptions.entry(u.clone()).or_default();
                set.extend(to.iter().filter(|t| **t != u).cloned());
            }
        }
        for (i, pr) in p.privacy.iter().enumerate() {
            let path = format!("presence.privacy[{i}]");
            for u in self.select(&format!("{path}.users"), &pr.users) {
                out.privacy.insert(u, pr.visibility);
            }
        }
        out
    }

    fn network(&mut self, n: Option<&NetworkSection>) -> PartialKnobs {
        let mut k = PartialKnobs::default();
        if let Some(n) = n {
            if let Some(l) = n.latency {
                let s = self.spread_ms("network.latency", l);
                k.latency_min_ms = Some(s.min);
                k.latency_max_ms = Some(s.max);
            }
            k.loss_per_mille = self.per_mille("network.loss_per_mille", n.loss_per_mille);
            k.duplicate_per_mille = self.per_mille("network.duplicate_per_mille", n.duplicate_per_mille);
        }
        k
    }

    fn faults(&mut self, f: Option<&FaultsSection>) -> TimedFaults {
        let mut out = TimedFaults::default();
        let Some(f) = f else { return out };
        for (i, r) in f.frames.iter().enumerate() {
            let path = format!("faults.frames[{i}]");
            let (at_ms, until_ms) = self.window(&path, r.at.0, r.until.map(|d| d.0), r.lasting.map(|d| d.0));
            if let Some(kind) = &r.kind {
                if !FRAME_KINDS.contains(&kind.as_str()) {
                    self.err(
                        &format!("{path}.kind"),
                        format!("unknown frame kind {kind:?} (allowed: {})", FRAME_KINDS.join(", ")),
                    );
                }
            }
            let users = r.users.as_ref().map(|u| self.select(&format!("{path}.users"), u));
            let drop_per_mille = self.per_mille(&format!("{path}.drop_per_mille"), r.drop_per_mille).unwrap_or(0);
            let duplicate_per_mille =
                self.per_mille(&format!("{path}.duplicate_per_mille"), r.duplicate_per_mille).unwrap_or(0);
            let delay_ms = r.delay.map_or(0, |d| d.0);
            if drop_per_mille == 0 && duplicate_per_mille == 0 && delay_ms == 0 {
                self.err(&path, "the rule does nothing (set drop_per_mille, duplicate_per_mille or delay)");
            }
            out.frames.push(FrameRule {
                path,
                at_ms,
                until_ms,
                kind: r.kind.clone(),
                way: way(r.direction),
                users,
                drop_per_mille,
                duplicate_per_mille,
                delay_ms,
            });
        }
        for (i, p) in f.partition.iter().enumerate() {
            let path = format!("faults.partition[{i}]");
            let (at_ms, until_ms) = self.window(&path, p.at.0, p.until.map(|d| d.0), p.lasting.map(|d| d.0));
            let users = self.select(&format!("{path}.users"), &p.users);
            out.partitions.push(PartitionSpec { path, at_ms, until_ms, users, way: way(p.direction) });
        }
        for (i, c) in f.crash.iter().enumerate() {
            let path = format!("faults.crash[{i}]");
            let at_ms = self.time(&format!("{path}.at"), c.at.0);
            let users = match &c.users {
                Some(u) => self.select(&format!("{path}.users"), u),
                None => Vec::new(),
            };
            let server = c.server.unwrap_or(false);
            if !server && c.users.is_none() {
                self.err(&path, "a crash needs `server = true` or `users`");
            }
            out.crashes.push(CrashSpec { path, at_ms, server, users });
        }
        for (i, c) in f.clock.iter().enumerate() {
            let path = format!("faults.clock[{i}]");
            let at_ms = self.time(&format!("{path}.at"), c.at.0);
            let users = self.select(&format!("{path}.users"), &c.users);
            if c.offset.0.abs() > CLOCK_OFFSET_MAX_MS {
                self.err(
                    &format!("{path}.offset"),
                    format!("offsets are limited to ±{}", format_duration_ms(CLOCK_OFFSET_MAX_MS as u64)),
                );
            }
            out.clocks.push(ClockSpec { path, at_ms, users, offset_ms: c.offset.0 });
        }
        for (i, c) in f.compromise.iter().enumerate() {
            let path = format!("faults.compromise[{i}]");
            let at_ms = self.time(&format!("{path}.at"), c.at.0);
            let users = self.select(&format!("{path}.users"), &c.users);
            out.compromises.push(CompromiseSpec { path, at_ms, users });
        }
        out
    }

    fn random_faults(&mut self, f: Option<&FaultsSection>, k: &mut PartialKnobs) -> (Spread<u64>, Vec<UserId>) {
        let default = (Spread::fixed(2_000), self.order.clone());
        let Some(r) = f.and_then(|f| f.random.as_ref()) else { return default };
        k.client_crashes_per_min = self.rate("faults.random.client_crashes_per_min", r.client_crashes_per_min);
        k.server_crashes_per_min = self.rate("faults.random.server_crashes_per_min", r.server_crashes_per_min);
        k.partitions_per_min = self.rate("faults.random.partitions_per_min", r.partitions_per_min);
        let pf = r.partition_for.map_or(Spread::fixed(2_000), |s| self.spread_ms("faults.random.partition_for", s));
        if pf.min == 0 {
            self.err("faults.random.partition_for", "must be more than 0ms");
        }
        let users = match &r.users {
            Some(u) => self.select("faults.random.users", u),
            None => self.order.clone(),
        };
        (pf, users)
    }

    fn server(&mut self, s: Option<&ServerSection>) -> ServerTunables {
        let d = ServerConfig::default();
        let mut t = ServerTunables {
            ttl_text_ms: d.ttl_text_ms,
            ttl_media_ms: d.ttl_media_ms,
            ack_timeout_ms: d.ack_timeout_ms,
            delivery_window: u32::try_from(d.delivery_window).unwrap_or(u32::MAX),
            bundle_fetches_per_min: d.bundle_fetches_per_minute,
        };
        if let Some(s) = s {
            let mut zero = Vec::new();
            for (key, v, slot) in [
                ("ttl_text", s.ttl_text, &mut t.ttl_text_ms),
                ("ttl_media", s.ttl_media, &mut t.ttl_media_ms),
                ("ack_timeout", s.ack_timeout, &mut t.ack_timeout_ms),
            ] {
                if let Some(v) = v {
                    if v.0 == 0 {
                        zero.push(key);
                    }
                    *slot = v.0;
                }
            }
            for key in zero {
                self.err(&format!("server.{key}"), "must be more than 0ms");
            }
            if let Some(w) = s.delivery_window {
                if w == 0 || w > 4096 {
                    self.err("server.delivery_window", format!("must be 1 to 4096, got {w}"));
                }
                t.delivery_window = w;
            }
            if let Some(n) = s.bundle_fetches_per_min {
                self.fetch_rate("server.bundle_fetches_per_min", n);
                t.bundle_fetches_per_min = n;
            }
        }
        t
    }

    fn clients(&mut self, c: Option<&ClientsSection>) -> ClientTunables {
        let mut t = ClientTunables {
            resend_after_ms: 2_000,
            reconnect_after_ms: 500,
            bundle_fetches_per_min: BUNDLE_FETCHES_PER_WINDOW as u32,
        };
        if let Some(c) = c {
            if let Some(r) = c.resend_after {
                if r.0 == 0 {
                    self.err("clients.resend_after", "must be more than 0ms");
                }
                t.resend_after_ms = r.0;
            }
            if let Some(r) = c.reconnect_after {
                t.reconnect_after_ms = r.0;
            }
            if let Some(n) = c.bundle_fetches_per_min {
                self.fetch_rate("clients.bundle_fetches_per_min", n);
                t.bundle_fetches_per_min = n;
            }
        }
        t
    }

    fn fetch_rate(&mut self, key: &str, n: u32) {
        if n == 0 || n > BUNDLE_FETCHES_PER_MIN_MAX {
            self.err(key, format!("must be 1 to {BUNDLE_FETCHES_PER_MIN_MAX}, got {n}"));
        }
    }

    fn bugs(&mut self, b: Option<&BugsSection>) -> Bugs {
        let Some(b) = b else { return Bugs::default() };
        Bugs {
            mailbox: b.mailbox,
            keys: b.keys,
            presence: b.presence,
            unsigned_group_changes: b.unsigned_group_changes.unwrap_or(false),
            client: b.client.iter().flatten().copied().collect(),
        }
    }

    fn matrix(&mut self, m: Option<&MatrixSection>) -> Vec<MatrixAxis> {
        let Some(m) = m else { return Vec::new() };
        let mut axes = Vec::new();
        let ints = |v: &Option<Vec<u32>>| {
            v.as_ref().map(|v| v.iter().map(|x| KnobValue::Int(u64::from(*x))).collect::<Vec<_>>())
        };
        let durs = |v: &Option<Vec<super::units::DurationMs>>| {
            v.as_ref().map(|v| v.iter().map(|x| KnobValue::Int(x.0)).collect::<Vec<_>>())
        };
        let rates =
            |v: &Option<Vec<f64>>| v.as_ref().map(|v| v.iter().map(|x| KnobValue::Rate(*x)).collect::<Vec<_>>());
        let candidates = [
            (Knob::LossPerMille, ints(&m.loss_per_mille)),
            (Knob::DuplicatePerMille, ints(&m.duplicate_per_mille)),
            (Knob::LatencyMin, durs(&m.latency_min)),
            (Knob::LatencyMax, durs(&m.latency_max)),
            (Knob::ClientCrashesPerMin, rates(&m.client_crashes_per_min)),
            (Knob::ServerCrashesPerMin, rates(&m.server_crashes_per_min)),
            (Knob::PartitionsPerMin, rates(&m.partitions_per_min)),
        ];
        let mut cells: usize = 1;
        for (knob, values) in candidates {
            let Some(values) = values else { continue };
            let path = format!("matrix.{}", knob.key());
            if values.is_empty() {
                self.err(&path, "lists no values");
                continue;
            }
            for (i, v) in values.iter().enumerate() {
                let vpath = format!("{path}[{i}]");
                match (knob, v) {
                    (Knob::LossPerMille | Knob::DuplicatePerMille, KnobValue::Int(x)) if *x > 1000 => {
                        self.err(&vpath, format!("{x} is not a per-mille value (0 to 1000)"));
                    }
                    (_, KnobValue::Rate(r)) if !r.is_finite() || *r < 0.0 || *r > RATE_MAX => {
                        self.err(&vpath, format!("{r} is not a rate (a number from 0 to {RATE_MAX})"));
                    }
                    _ => {}
                }
            }
            cells = cells.saturating_mul(values.len());
            axes.push(MatrixAxis { knob, values });
        }
        if cells > MATRIX_CELLS_MAX {
            self.err("matrix", format!("{cells} runs per seed, more than the limit of {MATRIX_CELLS_MAX}"));
        }
        axes
    }

    fn expect(&mut self, e: Option<&ExpectSection>) -> Expect {
        let all: BTreeSet<String> = crate::invariants::ALL.iter().map(|i| i.name.to_owned()).collect();
        let mut out = Expect {
            invariants: all.clone(),
            faults_fire: true,
            latency_online_ms: BTreeMap::new(),
            at_least: BTreeMap::new(),
        };
        let Some(e) = e else { return out };
        let allowed = || all.iter().cloned().collect::<Vec<_>>().join(", ");
        if let Some(list) = &e.invariants {
            if !(list.len() == 1 && list[0] == "all") {
                out.invariants.clear();
                for (i, name) in list.iter().enumerate() {
                    if all.contains(name) {
                        out.invariants.insert(name.clone());
                    } else {
                        self.err(
                            &format!("expect.invariants[{i}]"),
                            format!("unknown invariant {name:?} (allowed: all, {})", allowed()),
                        );
                    }
                }
            }
        }
        for (i, name) in e.skip.iter().flatten().enumerate() {
            if all.contains(name) {
                out.invariants.remove(name);
            } else {
                self.err(&format!("expect.skip[{i}]"), format!("unknown invariant {name:?} (allowed: {})", allowed()));
            }
        }
        out.faults_fire = e.faults_fire.unwrap_or(true);
        for (key, v) in [
            ("p50", e.p50_delivery_online_ms),
            ("p90", e.p90_delivery_online_ms),
            ("p99", e.p99_delivery_online_ms),
            ("max", e.max_delivery_online_ms),
        ] {
            if let Some(v) = v {
                out.latency_online_ms.insert(key.to_owned(), v);
            }
        }
        let counters = crate::run::counter_names();
        for (name, v) in e.at_least.iter().flatten() {
            if counters.iter().any(|c| c == name) {
                out.at_least.insert(name.clone(), *v);
            } else {
                self.err(
                    &format!("expect.at_least.{name}"),
                    format!("unknown counter {name:?} (allowed: {})", counters.join(", ")),
                );
            }
        }
        out
    }
}

fn way(d: Option<DirectionName>) -> Way {
    match d.unwrap_or(DirectionName::Both) {
        DirectionName::Both => Way::Both,
        DirectionName::ToServer => Way::ToServer,
        DirectionName::ToClient => Way::ToClient,
    }
}

fn join(labels: &BTreeSet<String>) -> String {
    if labels.is_empty() {
        "none declared".to_owned()
    } else {
        labels.iter().cloned().collect::<Vec<_>>().join(", ")
    }
}
