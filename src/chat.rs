//! `bluetick chat`: a line-based terminal client for one user.
//!
//! It hosts one device with the real runtime ([`bluetick_net::client`]): the
//! state is saved in the user's data directory before anything leaves the
//! device, and the connection is retried with backoff for as long as the
//! program runs. Input is read a line at a time from stdin (a terminal or a
//! pipe alike), so a script or a test can drive it; output is one line per
//! thing that happened, in the order it happened.
//!
//! # Layout of the data directory
//! - `<user>.state`: the device (identity, sessions, outbox, ticks), written
//!   atomically by the driver.
//! - `<user>.groups`: local names of groups, one `name hex-id` a line (the
//!   protocol names groups by a random id only).
//! - `downloads/`: received files, `<sender>-<message>.<ext>`.
//!
//! # Ticks
//! Every send prints `<short id> → <to>: queued`, and every change of its
//! state prints the same prefix with the new state: `✓ sent` (the server has
//! it), `✓✓ delivered` (the recipient's device has it), `✓✓ read` (the ticks
//! blue on a colour terminal) or `expired`.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::io::{BufRead, IsTerminal, Read};
use std::path::{Path, PathBuf};
use std::time::Duration;

use bluetick_core::client::media::MEDIA_LEN_MAX;
use bluetick_core::client::status::DeliveryState;
use bluetick_core::client::{AppEvent, ClientConfig, ClientError, UndecryptableReason, PRIMARY_DEVICE};
use bluetick_core::ids::{GroupId, MessageId, UserId};
use bluetick_core::wire::{ErrorCode, LastSeen, Visibility};
use bluetick_net::client::{open_client, run_client, save_atomically, ClientEvent, ClientHandle, ClientOptions};
use bluetick_net::clock::SystemClock;
use tokio::sync::mpsc;

/// The commands, as `/help` and `bluetick chat --help` show them.
pub const COMMANDS_HELP: &str = "\
Commands (one per line on stdin; a terminal or a pipe):
  @bob hello there           send a message to bob
  #family see you at 8       send a message to a group (by its local name)
  just text                  send to the last conversation you wrote to
  /group new family bob carol   create a group (you are its admin), name it locally
  /group add family dave     add members (admin only)
  /group remove family carol remove members (admin only)
  /group rename family fam   change the local name of a group
  /groups                    list the groups known here
  /read bob | /read #family  mark a conversation read (the sender's ticks turn blue)
  /file bob ./photo.jpg      send a file (end-to-end encrypted attachment, up to 16 MiB)
  /presence bob carol        follow the presence of these users (replaces the list;
                             no names: follow nobody)
  /privacy everyone|contacts|nobody [contacts...]
                             who may see your presence; `contacts` means the users listed
  /help                      this text
  /quit                      leave (also end of input; waits a few seconds for unsent messages)

Output:
  [14:05] bob: hello         an incoming message (times are UTC, as the server stamped it)
  [14:05] #family bob: hi    an incoming group message
  1a2b3c4d → bob: queued     your message, by its short id; each change prints again:
                             ✓ sent, ✓✓ delivered, ✓✓ read (blue ticks on a colour
                             terminal), expired (the server dropped it undelivered)
  bob is online / bob last seen recently   presence (as coarse as the protocol gives it)
  ! ...                      something went wrong, said in words

Received files are saved into <data>/downloads/. The state of the device is kept in
<data>/<user>.state (default data: ./chat-data/<user>); keep it to keep your identity.
Colour: off when NO_COLOR is set or stdout is not a terminal.";

/// How long `/quit` (or the end of input) waits for messages that the server
/// has not confirmed yet: enough for a healthy server to ack a backlog, short
/// enough that leaving never seems to hang. What is left goes out next start.
const QUIT_FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// Longest input line read, in bytes. Above the largest message body (the
/// core refuses anything bigger anyway), and it keeps a runaway pipe from
/// growing memory without bound.
const INPUT_LINE_LEN_MAX: usize = 1024 * 1024;

/// Input lines waiting for the chat loop; the reader thread waits when full.
const INPUT_QUEUE_LEN: usize = 64;

/// Sent group messages whose group name is remembered for their tick lines;
/// the oldest is forgotten first (its ticks then print the group's id). As
/// many as the core tracks ticks for.
const SENT_LABELS_MAX: usize = bluetick_core::client::status::STATUS_TRACKED_MAX;

/// Distinct error lines remembered to avoid repeating one the core reports
/// on every retry (an unknown user's bundle, a refused login); forgotten
/// after each command, so a new attempt is reported again.
const SAID_MAX: usize = 64;

/// Longest local group name, as for user names.
const GROUP_NAME_LEN_MAX: usize = bluetick_core::ids::USER_ID_LEN_MAX;

/// Hex digits of an id shown to the user: as many as the core's traces use.
const SHORT_ID_LEN: usize = 8;

/// What `bluetick chat` was started with.
pub struct ChatArgs {
    /// `ws://host:port/` of the server.
    pub server: String,
    /// The account name.
    pub user: String,
    /// The data directory; `./chat-data/<user>` when absent.
    pub data: Option<PathBuf>,
}

/// Runs the chat until `/quit`, the end of input or a fatal error (a state
/// that cannot be saved or read). Errors are sentences for a person.
pub fn run(args: ChatArgs) -> Result<(), String> {
    let user = UserId::new(&args.user).map_err(|e| format!("--user {:?} is not a usable name: {e}", args.user))?;
    bluetick_net::transport::ws_target(&args.server)
        .map_err(|e| format!("--server: {e}; it should look like ws://127.0.0.1:7878/"))?;
    let data = args.data.unwrap_or_else(|| Path::new("chat-data").join(user.as_str()));
    std::fs::create_dir_all(&data)
        .map_err(|e| format!("cannot create the data directory {}: {e}; choose another with --data", data.display()))?;
    let state_path = data.join(format!("{user}.state"));
    let existed = state_path.exists();
    let config = ClientConfig::new(user.clone(), PRIMARY_DEVICE);
    let client = open_client(config, &state_path, &SystemClock).map_err(|e| {
        format!(
            "{e}; this file holds {user}'s identity, so it is never replaced: move it away to start as a new device"
        )
    })?;
    let groups = Groups::load(data.join(format!("{user}.groups")))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    let color = std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()) && std::io::stdout().is_terminal();
    println!(
        "bluetick chat: {user} on {} ({}, data in {}); /help lists the commands",
        args.server,
        if existed { "this device" } else { "new device, registers on first connect" },
        data.display()
    );
    runtime.block_on(async move {
        let lines = spawn_stdin_reader();
        let options = ClientOptions::new(args.server.clone(), state_path);
        let handle = run_client(client, options, bluetick_net::entropy::jitter_rng());
        let chat = Chat {
            handle,
            me: user,
            server: args.server,
            downloads: data.join("downloads"),
            groups,
            color,
            online: false,
            lost_said: false,
            last_target: None,
            unsent: BTreeSet::new(),
            group_labels: BTreeMap::new(),
            group_label_order: VecDeque::new(),
            said: BTreeSet::new(),
        };
        chat.run(lines).await
    })
}

/// Reads stdin on a thread of its own (a blocking read has no place on the
/// runtime) and hands over lines; the channel closes at the end of input.
fn spawn_stdin_reader() -> mpsc::Receiver<Result<String, String>> {
    let (tx, rx) = mpsc::channel(INPUT_QUEUE_LEN);
    std::thread::spawn(move || {
        let stdin = std::io::stdin();
        let mut input = stdin.lock();
        loop {
            let mut line = Vec::new();
            let limit = u64::try_from(INPUT_LINE_LEN_MAX).unwrap_or(u64::MAX).saturating_add(1);
            let read = match (&mut input).take(limit).read_until(b'\n', &mut line) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) => {
                    let _ = tx.blocking_send(Err(format!("cannot read input: {e}")));
                    break;
                }
            };
            let item = if read > INPUT_LINE_LEN_MAX && line.last() != Some(&b'\n') {
                // Skip the rest of the overlong line.
                let mut rest = Vec::new();
                let _ = input.read_until(b'\n', &mut rest);
                Err(format!("line longer than {INPUT_LINE_LEN_MAX} bytes ignored"))
            } else {
                Ok(String::from_utf8_lossy(&line).trim_end_matches(['\n', '\r']).to_string())
            };
            if tx.blocking_send(item).is_err() {
                break;
            }
        }
    });
    rx
}

/// Where a message goes.
#[derive(Clone, PartialEq, Eq)]
enum Target {
    User(UserId),
    Group(GroupId),
}

/// What the loop waits for.
enum Input {
    Line(Option<Result<String, String>>),
    Event(Option<ClientEvent>),
}

/// Whether to go on after a command.
#[derive(PartialEq, Eq)]
enum Flow {
    Continue,
    Quit,
}

struct Chat {
    handle: ClientHandle,
    me: UserId,
    server: String,
    downloads: PathBuf,
    groups: Groups,
    color: bool,
    /// Whether the current connection is logged in.
    online: bool,
    /// Whether the current outage was reported already.
    lost_said: bool,
    /// Where a line without `@`/`#` goes.
    last_target: Option<Target>,
    /// Messages sent in this run the server has not confirmed yet.
    unsent: BTreeSet<MessageId>,
    /// Group sends of this run, for their tick lines.
    group_labels: BTreeMap<MessageId, GroupId>,
    group_label_order: VecDeque<MessageId>,
    /// Error lines already printed since the last command.
    said: BTreeSet<String>,
}

impl Chat {
    async fn run(mut self, mut lines: mpsc::Receiver<Result<String, String>>) -> Result<(), String> {
        loop {
            let input = tokio::select! {
                line = lines.recv() => Input::Line(line),
                event = self.handle.next_event() => Input::Event(event),
            };
            match input {
                Input::Line(Some(Ok(line))) => {
                    if self.command(&line).await? == Flow::Quit {
                        break;
                    }
                }
                Input::Line(Some(Err(problem))) => say_problem(&problem),
                Input::Line(None) => break,
                Input::Event(Some(event)) => self.event(event),
                // The task stopped by itself: its error comes from shutdown.
                Input::Event(None) => break,
            }
        }
        self.flush_before_quit().await;
        self.handle.shutdown().await.map(|_| ()).map_err(|e| format!("{e}"))
    }

    /// Gives unconfirmed sends a few seconds to reach the server.
    async fn flush_before_quit(&mut self) {
        if self.unsent.is_empty() {
            return;
        }
        if !self.online {
            println!("{} message(s) not yet on the server; they go out the next time you start", self.unsent.len());
            return;
        }
        println!("waiting up to {} s for {} unsent message(s)…", QUIT_FLUSH_TIMEOUT.as_secs(), self.unsent.len());
        let _ = tokio::time::timeout(QUIT_FLUSH_TIMEOUT, async {
            while !self.unsent.is_empty() {
                match self.handle.next_event().await {
                    Some(event) => self.event(event),
                    None => break,
                }
            }
        })
        .await;
        if !self.unsent.is_empty() {
            println!("{} message(s) not yet on the server; they go out the next time you start", self.unsent.len());
        }
    }

    // ----- input -----

    async fn command(&mut self, line: &str) -> Result<Flow, String> {
        self.said.clear();
        let line = line.trim();
        if line.is_empty() {
            return Ok(Flow::Continue);
        }
        if let Some(rest) = line.strip_prefix('@') {
            let (name, text) = split_word(rest);
            match parse_user(name) {
                Ok(to) => self.send(Target::User(to), text).await?,
                Err(problem) => say_problem(&problem),
            }
            return Ok(Flow::Continue);
        }
        if let Some(rest) = line.strip_prefix('#') {
            let (name, text) = split_word(rest);
            match self.groups.resolve(name) {
                Ok(group) => self.send(Target::Group(group), text).await?,
                Err(problem) => say_problem(&problem),
            }
            return Ok(Flow::Continue);
        }
        let Some(rest) = line.strip_prefix('/') else {
            match self.last_target.clone() {
                Some(target) => self.send(target, line).await?,
                None => say_problem("start with @user or #group to say where it goes; /help lists the commands"),
            }
            return Ok(Flow::Continue);
        };
        let (verb, args) = split_word(rest);
        let words: Vec<&str> = args.split_whitespace().collect();
        match verb {
            "quit" | "exit" => return Ok(Flow::Quit),
            "help" => println!("{COMMANDS_HELP}"),
            "group" => self.group_command(&words).await?,
            "groups" => self.groups.list(),
            "read" => self.read(&words).await?,
            "file" => self.file(&words).await?,
            "presence" => self.presence(&words).await?,
            "privacy" => self.privacy(&words).await?,
            other => say_problem(&format!("unknown command /{}; /help lists the commands", clean(other))),
        }
        Ok(Flow::Continue)
    }

    async fn send(&mut self, target: Target, text: &str) -> Result<(), String> {
        if text.is_empty() {
            say_problem("nothing to send: write the message after the name");
            return Ok(());
        }
        let body = text.as_bytes().to_vec();
        let result = match &target {
            Target::User(to) => self.handle.send_text(to.clone(), body).await,
            Target::Group(group) => self.handle.send_group(*group, body).await,
        }
        .map_err(|e| e.to_string())?;
        match result {
            Ok(id) => {
                if let Target::Group(group) = &target {
                    self.remember_group_send(id, *group);
                }
                self.unsent.insert(id);
                println!("{} → {}: queued", short(&id), self.target_label(&target));
                self.last_target = Some(target);
            }
            Err(e) => say_problem(&self.refusal(&e)),
        }
        Ok(())
    }

    async fn group_command(&mut self, words: &[&str]) -> Result<(), String> {
        match words {
            ["new", name, members @ ..] => {
                if let Err(problem) = self.groups.check_new_name(name) {
                    say_problem(&problem);
                    return Ok(());
                }
                let Some(members) = parse_users(members) else { return Ok(()) };
                match self.handle.create_group(members).await.map_err(|e| e.to_string())? {
                    Ok(group) => {
                        self.groups.insert(name, group)?;
                        println!("created group #{name} (id {group}); write to it with #{name} …");
                    }
                    Err(e) => say_problem(&self.refusal(&e)),
                }
            }
            [op @ ("add" | "remove"), name, users @ ..] if !users.is_empty() => {
                let group = match self.groups.resolve(name) {
                    Ok(group) => group,
                    Err(problem) => {
                        say_problem(&problem);
                        return Ok(());
                    }
                };
                let Some(users) = parse_users(users) else { return Ok(()) };
                let (add, remove) = if *op == "add" { (users, Vec::new()) } else { (Vec::new(), users) };
                match self.handle.change_group(group, add, remove).await.map_err(|e| e.to_string())? {
                    Ok(()) => println!("#{}: change sent", self.groups.name(&group)),
                    Err(e) => say_problem(&self.refusal(&e)),
                }
            }
            ["rename", old, new] => match self.groups.resolve(old) {
                Ok(group) => match self.groups.check_new_name(new) {
                    Ok(()) => {
                        self.groups.rename(&group, new)?;
                        println!("group {group} is now #{new}");
                    }
                    Err(problem) => say_problem(&problem),
                },
                Err(problem) => say_problem(&problem),
            },
            _ => say_problem(
                "usage: /group new NAME USER…, /group add NAME USER…, /group remove NAME USER…, /group rename OLD NEW",
            ),
        }
        Ok(())
    }

    async fn read(&mut self, words: &[&str]) -> Result<(), String> {
        let [who] = words else {
            say_problem("usage: /read bob or /read #family");
            return Ok(());
        };
        if let Some(name) = who.strip_prefix('#') {
            match self.groups.resolve(name) {
                Ok(group) => {
                    self.handle.mark_group_read(group).await.map_err(|e| e.to_string())?;
                    println!("#{} marked read", self.groups.name(&group));
                }
                Err(problem) => say_problem(&problem),
            }
            return Ok(());
        }
        match parse_user(who.strip_prefix('@').unwrap_or(who)) {
            Ok(peer) => {
                self.handle.mark_read(peer.clone()).await.map_err(|e| e.to_string())?;
                println!("chat with {peer} marked read");
            }
            Err(problem) => say_problem(&problem),
        }
        Ok(())
    }

    async fn file(&mut self, words: &[&str]) -> Result<(), String> {
        let [who, path] = words else {
            say_problem("usage: /file bob ./photo.jpg (one user; groups cannot receive files yet)");
            return Ok(());
        };
        if who.starts_with('#') {
            say_problem("files go to one user at a time: the protocol has no group attachments yet");
            return Ok(());
        }
        let to = match parse_user(who.strip_prefix('@').unwrap_or(who)) {
            Ok(to) => to,
            Err(problem) => {
                say_problem(&problem);
                return Ok(());
            }
        };
        let size = match std::fs::metadata(path) {
            Ok(m) if m.is_file() => m.len(),
            Ok(_) => {
                say_problem(&format!("{} is not a file", clean(path)));
                return Ok(());
            }
            Err(e) => {
                say_problem(&format!("cannot read {}: {e}", clean(path)));
                return Ok(());
            }
        };
        if size > u64::try_from(MEDIA_LEN_MAX).unwrap_or(u64::MAX) {
            say_problem(&format!("{} is {size} bytes; files up to {MEDIA_LEN_MAX} bytes can be sent", clean(path)));
            return Ok(());
        }
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) => {
                say_problem(&format!("cannot read {}: {e}", clean(path)));
                return Ok(());
            }
        };
        let len = bytes.len();
        match self.handle.send_media(to.clone(), bytes).await.map_err(|e| e.to_string())? {
            Ok(id) => {
                self.unsent.insert(id);
                println!("{} → {to}: queued (file {}, {len} bytes)", short(&id), clean(path));
            }
            Err(e) => say_problem(&self.refusal(&e)),
        }
        Ok(())
    }

    async fn presence(&mut self, words: &[&str]) -> Result<(), String> {
        let Some(users) = parse_users(words) else { return Ok(()) };
        let names: Vec<String> = users.iter().map(UserId::to_string).collect();
        match self.handle.subscribe_presence(users).await.map_err(|e| e.to_string())? {
            Ok(()) if names.is_empty() => println!("following nobody's presence"),
            Ok(()) => println!("following the presence of {}", names.join(", ")),
            Err(e) => say_problem(&self.refusal(&e)),
        }
        Ok(())
    }

    async fn privacy(&mut self, words: &[&str]) -> Result<(), String> {
        let (visibility, contacts) = match words {
            ["everyone", rest @ ..] => (Visibility::Everyone, rest),
            ["contacts", rest @ ..] => (Visibility::Contacts, rest),
            ["nobody", rest @ ..] => (Visibility::Nobody, rest),
            _ => {
                say_problem("usage: /privacy everyone|contacts|nobody [contacts…]");
                return Ok(());
            }
        };
        let Some(contacts) = parse_users(contacts) else { return Ok(()) };
        let names: Vec<String> = contacts.iter().map(UserId::to_string).collect();
        match self.handle.set_presence_privacy(visibility, contacts).await.map_err(|e| e.to_string())? {
            Ok(()) => match visibility {
                Visibility::Everyone => println!("your presence is visible to everyone"),
                Visibility::Nobody => println!("your presence is visible to nobody"),
                Visibility::Contacts if names.is_empty() => {
                    println!("your presence is visible to your contacts: none listed, so nobody")
                }
                Visibility::Contacts => println!("your presence is visible to {}", names.join(", ")),
            },
            Err(e) => say_problem(&self.refusal(&e)),
        }
        Ok(())
    }

    // ----- output -----

    fn event(&mut self, event: ClientEvent) {
        match event {
            ClientEvent::Online => {
                self.online = true;
                self.lost_said = false;
                println!("online as {} on {}", self.me, self.server);
            }
            ClientEvent::Offline { reason } => {
                let was_online = std::mem::replace(&mut self.online, false);
                if self.lost_said && !was_online {
                    return;
                }
                self.lost_said = true;
                let reason = clean(&reason);
                if was_online {
                    println!("! connection to {} lost ({reason}); reconnecting…", self.server);
                } else if is_unreachable(&reason) {
                    println!(
                        "! cannot reach {}: is `bluetick serve` running? ({reason}; retrying, messages you write are kept)",
                        self.server
                    );
                } else {
                    println!("! cannot log in to {} ({reason}); retrying…", self.server);
                }
            }
            ClientEvent::App(app) => self.app_event(app),
        }
    }

    fn app_event(&mut self, event: AppEvent) {
        match event {
            AppEvent::Message { from, group, body, server_ts_ms, .. } => {
                let text = clean(&String::from_utf8_lossy(&body));
                match group {
                    Some(group) => {
                        let name = self.groups.name_or_adopt(group);
                        println!("[{}] #{name} {from}: {text}", clock_time(server_ts_ms));
                    }
                    None => println!("[{}] {from}: {text}", clock_time(server_ts_ms)),
                }
            }
            AppEvent::Media { from, id, body, server_ts_ms } => {
                let at = clock_time(server_ts_ms);
                match self.store_download(&from, &id, &body) {
                    Ok(path) => {
                        println!("[{at}] {from} sent a file ({} bytes), saved as {}", body.len(), path.display())
                    }
                    Err(problem) => {
                        println!("[{at}] {from} sent a file ({} bytes) that could not be saved: {problem}", body.len())
                    }
                }
            }
            AppEvent::Status { id, peer, status } => {
                if status != DeliveryState::Pending {
                    self.unsent.remove(&id);
                }
                let to = match self.group_labels.get(&id) {
                    Some(group) => format!("#{}/{peer}", self.groups.name(group)),
                    None => peer.to_string(),
                };
                println!("{} → {to}: {}", short(&id), tick(self.color, status));
            }
            AppEvent::Undecryptable { from, reason, .. } => {
                self.say_once(format!("! a message from {from} could not be opened: {}", undecryptable(&reason)));
            }
            AppEvent::GroupUpdated { group, version } => {
                let known = self.groups.contains(&group);
                let name = self.groups.name_or_adopt(group);
                if known {
                    println!("#{name}: membership updated (version {version})");
                } else {
                    println!("you are in group #{name} (id {group}); rename it with /group rename {name} NEW");
                }
            }
            AppEvent::GroupChangeRejected { group, version, reason } => {
                let name = self.groups.name(&group);
                self.say_once(format!(
                    "! a change to #{name} (version {version}) was not applied: {}",
                    clean(&format!("{reason:?}"))
                ));
            }
            AppEvent::IdentityChanged { user } => println!(
                "! {user}'s security key changed (a reinstall, or someone in the middle): check with them another way"
            ),
            AppEvent::SessionFailed { peer, reason } => {
                self.say_once(format!("! cannot start a secure session with {peer}: {}; retrying", clean(&reason)))
            }
            AppEvent::Presence { user, last_seen } => match last_seen {
                LastSeen::Online => println!("{user} is online"),
                LastSeen::Recently => println!("{user} last seen recently (within 3 days)"),
                LastSeen::WithinWeek => println!("{user} last seen within a week"),
                LastSeen::WithinMonth => println!("{user} last seen within a month"),
                LastSeen::LongAgo => println!("{user} last seen a long time ago"),
            },
            AppEvent::ServerError { code, detail } => {
                let line = self.server_error(code, &clean(&detail));
                self.say_once(line);
            }
        }
    }

    /// Prints an error line unless it was printed since the last command.
    fn say_once(&mut self, line: String) {
        if self.said.contains(&line) {
            return;
        }
        if self.said.len() >= SAID_MAX {
            self.said.clear();
        }
        println!("{line}");
        self.said.insert(line);
    }

    fn server_error(&self, code: ErrorCode, detail: &str) -> String {
        let me = &self.me;
        match code {
            ErrorCode::UnknownRecipient => {
                format!("! unknown user ({detail}): check the name; messages to them wait until it exists")
            }
            ErrorCode::AuthFailed => format!(
                "! the server refused to log in {me} ({detail}): the account belongs to another key; \
                 use the --data it was created with, or another --user"
            ),
            ErrorCode::UserExists => {
                format!("! the name {me} is taken on this server ({detail}); choose another --user")
            }
            ErrorCode::NotMember => format!("! not a member of that group ({detail})"),
            ErrorCode::LimitExceeded => format!("! a server limit was reached ({detail}); try again later"),
            ErrorCode::Unavailable => format!("! the server cannot store right now ({detail}); retrying"),
            ErrorCode::UnknownBlob => format!("! a file is no longer on the server ({detail})"),
            ErrorCode::UnsupportedVersion => {
                format!("! the server speaks another protocol version ({detail}); update bluetick")
            }
            other => format!("! the server refused something ({other:?}: {detail})"),
        }
    }

    fn refusal(&self, e: &ClientError) -> String {
        match e {
            ClientError::SelfRecipient => "you cannot send to yourself".to_string(),
            ClientError::UnknownGroup { .. } => "that group is not known on this device".to_string(),
            ClientError::NotAdmin { admin, .. } => format!("only the group's admin ({admin}) can change it"),
            other => other.to_string(),
        }
    }

    fn target_label(&self, target: &Target) -> String {
        match target {
            Target::User(user) => user.to_string(),
            Target::Group(group) => format!("#{}", self.groups.name(group)),
        }
    }

    fn remember_group_send(&mut self, id: MessageId, group: GroupId) {
        if self.group_label_order.len() >= SENT_LABELS_MAX {
            if let Some(old) = self.group_label_order.pop_front() {
                self.group_labels.remove(&old);
            }
        }
        self.group_labels.insert(id, group);
        self.group_label_order.push_back(id);
    }

    /// Writes a received file into the downloads directory; the name says
    /// who sent it and which message carried it (the protocol carries no
    /// file name), the extension is guessed from its first bytes.
    fn store_download(&self, from: &UserId, id: &MessageId, body: &[u8]) -> Result<PathBuf, String> {
        std::fs::create_dir_all(&self.downloads)
            .map_err(|e| format!("cannot create {}: {e}", self.downloads.display()))?;
        let path = self.downloads.join(format!("{from}-{}{}", short(id), extension(body)));
        save_atomically(&path, body).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        Ok(path)
    }
}

/// Local names for groups, kept in a small text file beside the state.
struct Groups {
    path: PathBuf,
    by_name: BTreeMap<String, GroupId>,
}

impl Groups {
    fn load(path: PathBuf) -> Result<Groups, String> {
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(format!("cannot read the group names in {}: {e}", path.display())),
        };
        let mut by_name = BTreeMap::new();
        for (n, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            let parsed = line.split_once(' ').and_then(|(name, hex)| Some((name, parse_group_id(hex.trim())?)));
            match parsed {
                Some((name, id)) if valid_group_name(name) => {
                    by_name.insert(name.to_string(), id);
                }
                _ => {
                    return Err(format!(
                        "{} line {}: expected `name hex-id`; fix or delete that line",
                        path.display(),
                        n + 1
                    ))
                }
            }
        }
        Ok(Groups { path, by_name })
    }

    fn save(&self) -> Result<(), String> {
        let text: String = self.by_name.iter().map(|(name, id)| format!("{name} {id}\n")).collect();
        save_atomically(&self.path, text.as_bytes()).map_err(|e| format!("cannot write {}: {e}", self.path.display()))
    }

    fn contains(&self, group: &GroupId) -> bool {
        self.by_name.values().any(|g| g == group)
    }

    /// The local name, or the short id for a group without one.
    fn name(&self, group: &GroupId) -> String {
        self.by_name.iter().find(|(_, g)| *g == group).map(|(n, _)| n.clone()).unwrap_or_else(|| short_group(group))
    }

    /// The local name, naming a group we were added to after its short id.
    fn name_or_adopt(&mut self, group: GroupId) -> String {
        if let Some((name, _)) = self.by_name.iter().find(|(_, g)| **g == group) {
            return name.clone();
        }
        let base = short_group(&group);
        let mut name = base.clone();
        let mut n = 2;
        while self.by_name.contains_key(&name) {
            name = format!("{base}-{n}");
            n += 1;
        }
        self.by_name.insert(name.clone(), group);
        if let Err(problem) = self.save() {
            say_problem(&problem);
        }
        name
    }

    /// A group by local name, or by (a prefix of at least 8 digits of) its id.
    fn resolve(&self, name: &str) -> Result<GroupId, String> {
        let name = name.strip_prefix('#').unwrap_or(name);
        if let Some(group) = self.by_name.get(name) {
            return Ok(*group);
        }
        if name.len() >= SHORT_ID_LEN {
            let found: Vec<&GroupId> = self.by_name.values().filter(|g| g.to_string().starts_with(name)).collect();
            if let [group] = found.as_slice() {
                return Ok(**group);
            }
        }
        Err(format!("no group named #{} here; /groups lists them, /group new creates one", clean(name)))
    }

    fn check_new_name(&self, name: &str) -> Result<(), String> {
        if !valid_group_name(name) {
            return Err(format!(
                "{:?} cannot name a group: use 1 to {GROUP_NAME_LEN_MAX} of a-z 0-9 _ . + -",
                clean(name)
            ));
        }
        if self.by_name.contains_key(name) {
            return Err(format!("#{name} already names a group; pick another name"));
        }
        Ok(())
    }

    fn insert(&mut self, name: &str, group: GroupId) -> Result<(), String> {
        self.by_name.insert(name.to_string(), group);
        self.save()
    }

    fn rename(&mut self, group: &GroupId, new: &str) -> Result<(), String> {
        self.by_name.retain(|_, g| g != group);
        self.insert(new, *group)
    }

    fn list(&self) {
        if self.by_name.is_empty() {
            println!("no groups yet; /group new NAME USER… creates one");
        }
        for (name, id) in &self.by_name {
            println!("#{name}  {id}");
        }
    }
}

fn valid_group_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= GROUP_NAME_LEN_MAX
        && name.chars().all(|c| matches!(c, 'a'..='z' | '0'..='9' | '_' | '.' | '+' | '-'))
}

fn parse_group_id(hex: &str) -> Option<GroupId> {
    if hex.len() != 32 || !hex.is_ascii() {
        return None;
    }
    let mut bytes = [0u8; 16];
    for (i, byte) in bytes.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(GroupId(bytes))
}

fn parse_user(name: &str) -> Result<UserId, String> {
    UserId::new(name).map_err(|e| format!("{:?} is not a user name: {e}", clean(name)))
}

/// Parses user names, reporting the first bad one (then `None`).
fn parse_users(names: &[&str]) -> Option<Vec<UserId>> {
    let mut users = Vec::with_capacity(names.len());
    for name in names {
        match parse_user(name.strip_prefix('@').unwrap_or(name)) {
            Ok(user) => users.push(user),
            Err(problem) => {
                say_problem(&problem);
                return None;
            }
        }
    }
    Some(users)
}

/// The first word and the rest, trimmed.
fn split_word(s: &str) -> (&str, &str) {
    match s.split_once(char::is_whitespace) {
        Some((word, rest)) => (word, rest.trim()),
        None => (s, ""),
    }
}

fn say_problem(problem: &str) {
    println!("! {problem}");
}

fn short(id: &MessageId) -> String {
    id.to_string().chars().take(SHORT_ID_LEN).collect()
}

fn short_group(group: &GroupId) -> String {
    group.to_string().chars().take(SHORT_ID_LEN).collect()
}

/// Text from a peer or the server with control characters made visible: a
/// message must not be able to move the cursor, recolour or clear the
/// terminal of the person reading it.
fn clean(text: &str) -> String {
    text.chars().map(|c| if c.is_control() { char::REPLACEMENT_CHARACTER } else { c }).collect()
}

/// How a message's state reads; read ticks are blue with `color`.
fn tick(color: bool, state: DeliveryState) -> &'static str {
    match state {
        DeliveryState::Pending => "queued",
        DeliveryState::Sent => "✓ sent",
        DeliveryState::Delivered => "✓✓ delivered",
        DeliveryState::Read if color => "\x1b[34m✓✓\x1b[0m read",
        DeliveryState::Read => "✓✓ read",
        DeliveryState::Expired => "expired (the server dropped it undelivered)",
    }
}

/// `HH:MM` (UTC) of a server timestamp.
fn clock_time(ms: u64) -> String {
    let minutes = (ms / 60_000) % (24 * 60);
    format!("{:02}:{:02}", minutes / 60, minutes % 60)
}

/// Whether a driver's offline reason means the server could not be reached
/// at all (as opposed to a connection that was refused later).
fn is_unreachable(reason: &str) -> bool {
    reason.starts_with("connect failed") || reason.starts_with("connect timed out")
}

fn undecryptable(reason: &UndecryptableReason) -> String {
    match reason {
        UndecryptableReason::NoSession => "no secure session with the sender (they may have reinstalled)".into(),
        UndecryptableReason::SenderKeyMissing => "the sender's group key never arrived".into(),
        UndecryptableReason::Media { detail } => {
            format!("the attachment did not download or verify ({})", clean(detail))
        }
        other => clean(&format!("{other:?}")),
    }
}

/// A file extension for common formats, from their magic numbers; empty
/// for anything else.
fn extension(body: &[u8]) -> &'static str {
    const MAGIC: &[(&[u8], &str)] = &[
        (b"\xFF\xD8\xFF", ".jpg"),
        (b"\x89PNG\r\n\x1a\n", ".png"),
        (b"GIF8", ".gif"),
        (b"%PDF-", ".pdf"),
        (b"PK\x03\x04", ".zip"),
    ];
    MAGIC.iter().find(|(magic, _)| body.starts_with(magic)).map_or("", |(_, ext)| *ext)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_from_peers_cannot_reach_the_terminal() {
        assert_eq!(clean("hi\x1b[2Jthere\r\n"), "hi\u{FFFD}[2Jthere\u{FFFD}\u{FFFD}");
        assert_eq!(clean("plain ✓✓"), "plain ✓✓");
    }

    #[test]
    fn clock_time_is_the_utc_hour_and_minute() {
        // 2025-01-01T14:05:59Z
        assert_eq!(clock_time(1_735_740_359_000), "14:05");
        assert_eq!(clock_time(0), "00:00");
    }

    #[test]
    fn group_ids_round_trip_through_their_hex() {
        let id = GroupId([0xab; 16]);
        assert_eq!(parse_group_id(&id.to_string()), Some(id));
        assert_eq!(parse_group_id("zz"), None);
        assert_eq!(parse_group_id(&"g".repeat(32)), None);
    }

    #[test]
    fn group_names_file_reloads_and_refuses_a_bad_line() {
        let dir = std::env::temp_dir().join(format!("bluetick-chat-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("u.groups");
        let mut groups = Groups::load(path.clone()).unwrap();
        groups.insert("family", GroupId([1; 16])).unwrap();
        let adopted = groups.name_or_adopt(GroupId([2; 16]));
        assert_eq!(adopted, "02020202");
        let again = Groups::load(path.clone()).unwrap();
        assert_eq!(again.resolve("#family"), Ok(GroupId([1; 16])));
        assert_eq!(again.resolve("02020202"), Ok(GroupId([2; 16])));
        assert!(again.resolve("nosuch").is_err());
        std::fs::write(&path, "family not-hex\n").unwrap();
        assert!(Groups::load(path).is_err());
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn read_ticks_are_blue_only_with_colour() {
        let plain = tick(false, DeliveryState::Read);
        let blue = tick(true, DeliveryState::Read);
        assert_eq!(plain, "✓✓ read");
        assert!(blue.starts_with("\x1b[34m✓✓"), "{blue:?}");
        assert_eq!(tick(true, DeliveryState::Delivered), "✓✓ delivered");
    }
}
