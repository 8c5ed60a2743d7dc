#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! `bluetick chat` as a person uses it: real processes (`bluetick serve` and
//! two `bluetick chat`), driven through piped stdin, judged by what they print.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

/// How long any one expected line may take. Generous for a loaded CI
/// machine; a healthy run sees each within a second or two.
const LINE_TIMEOUT: Duration = Duration::from_secs(15);

/// How long a process may take to exit after `/quit`.
const EXIT_TIMEOUT: Duration = Duration::from_secs(10);

/// The real clock: the processes under test run in real time, and the
/// deadlines only keep a broken run from hanging CI.
#[allow(clippy::disallowed_methods)]
fn now() -> Instant {
    Instant::now()
}

/// A child process whose stdout is read line by line; killed when dropped,
/// so a failing test leaves nothing running.
struct Proc {
    name: &'static str,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    transcript: Vec<String>,
}

impl Proc {
    fn spawn(name: &'static str, args: &[&str]) -> Proc {
        let mut child = Command::new(env!("CARGO_BIN_EXE_bluetick"))
            .args(args)
            .env("NO_COLOR", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("start {name}: {e}"));
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = channel();
        let tx_err = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx_err.send(format!("stderr: {line}"));
            }
        });
        let stdin = child.stdin.take();
        Proc { name, child, stdin, lines, transcript: Vec::new() }
    }

    fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().unwrap();
        writeln!(stdin, "{line}").unwrap_or_else(|e| panic!("{} stdin: {e}", self.name));
        stdin.flush().unwrap();
    }

    /// Waits for a line containing `needle`; returns it. Fails with the
    /// whole transcript if it does not come in time.
    fn expect(&mut self, needle: &str) -> String {
        self.expect_where(needle, |l| l.contains(needle))
    }

    fn expect_where(&mut self, what: &str, pick: impl Fn(&str) -> bool) -> String {
        let deadline = now() + LINE_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.transcript.push(line.clone());
                    if pick(&line) {
                        return line;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    panic!("{}: no line with {what:?} within {LINE_TIMEOUT:?}; got:\n{}", self.name, self.dump())
                }
                Err(RecvTimeoutError::Disconnected) => {
                    panic!("{}: exited before printing {what:?}; got:\n{}", self.name, self.dump())
                }
            }
        }
    }

    /// Index in the transcript of the first line containing `needle`.
    fn position(&self, needle: &str) -> Option<usize> {
        self.transcript.iter().position(|l| l.contains(needle))
    }

    fn dump(&self) -> String {
        self.transcript.join("\n")
    }

    /// Sends `/quit` and waits for a clean exit.
    fn quit(mut self) {
        self.send("/quit");
        self.stdin = None;
        let deadline = now() + EXIT_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "{} exited with {status}:\n{}", self.name, self.dump());
                return;
            }
            assert!(now() < deadline, "{} did not exit after /quit:\n{}", self.name, self.dump());
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A fresh directory under cargo's scratch space for integration tests.
fn scratch(test: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("chat-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Starts `bluetick serve` on a free port; returns it and its URL.
fn serve(dir: &Path) -> (Proc, String) {
    let data = dir.join("server");
    let mut server = Proc::spawn("server", &["serve", "--listen", "127.0.0.1:0", "--data", data.to_str().unwrap()]);
    let line = server.expect("listening on");
    let url = line.split_whitespace().find(|w| w.starts_with("ws://")).unwrap().to_string();
    (server, url)
}

fn chat(name: &'static str, url: &str, data: &Path) -> Proc {
    Proc::spawn(name, &["chat", "--server", url, "--user", name, "--data", data.to_str().unwrap()])
}

/// The short id on a `<id> → <to>: queued` line.
fn short_id(queued_line: &str) -> String {
    queued_line.split_whitespace().next().unwrap().to_string()
}

#[test]
fn two_terminals_exchange_a_message_watch_its_ticks_turn_read_and_a_file_arrives_intact() {
    let dir = scratch("exchange");
    let (_server, url) = serve(&dir);
    let mut bob = chat("bob", &url, &dir.join("bob"));
    bob.expect("online as bob");
    let mut alice = chat("alice", &url, &dir.join("alice"));
    alice.expect("online as alice");

    bob.send("/presence alice");
    bob.expect("alice is online");

    alice.send("@bob hello there");
    let id = short_id(&alice.expect("→ bob: queued"));
    let received = bob.expect("alice: hello there");
    assert!(received.starts_with('['), "incoming lines carry the time: {received:?}");
    alice.expect(&format!("{id} → bob: ✓✓ delivered"));
    let sent = alice.position(&format!("{id} → bob: ✓ sent"));
    let delivered = alice.position(&format!("{id} → bob: ✓✓ delivered"));
    assert!(sent.is_some() && sent < delivered, "✓ must come before ✓✓:\n{}", alice.dump());
    assert!(alice.position(&format!("{id} → bob: ✓✓ read")).is_none(), "read before bob opened the chat");

    bob.send("/read alice");
    alice.expect(&format!("{id} → bob: ✓✓ read"));
    // No colour on a pipe (and NO_COLOR is set): the escape never appears.
    assert!(!alice.dump().contains('\x1b'), "escape codes on a pipe:\n{}", alice.dump());

    // A file of several media chunks with bytes of every value.
    let file = dir.join("photo.bin");
    let bytes: Vec<u8> = (0..300_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    std::fs::write(&file, &bytes).unwrap();
    alice.send(&format!("/file bob {}", file.display()));
    let file_id = short_id(&alice.expect("→ bob: queued (file"));
    let announced = bob.expect("alice sent a file");
    let saved = PathBuf::from(announced.rsplit("saved as ").next().unwrap());
    assert!(saved.starts_with(dir.join("bob").join("downloads")), "saved outside downloads: {announced}");
    assert_eq!(std::fs::read(&saved).unwrap(), bytes, "the file arrived altered");
    alice.expect(&format!("{file_id} → bob: ✓✓ delivered"));

    // Mistakes get a sentence, not a crash.
    alice.send("#nosuch hi");
    alice.expect("! no group named #nosuch");
    alice.send("@Bob hi");
    alice.expect("is not a user name");

    alice.quit();
    bob.quit();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_group_created_by_name_carries_messages_and_the_member_learns_of_it() {
    let dir = scratch("group");
    let (_server, url) = serve(&dir);
    let mut bob = chat("bob", &url, &dir.join("bob"));
    bob.expect("online as bob");
    let mut alice = chat("alice", &url, &dir.join("alice"));
    alice.expect("online as alice");

    alice.send("/group new family bob");
    alice.expect("created group #family");
    alice.send("#family dinner at 8");
    let id = short_id(&alice.expect("→ #family: queued"));
    bob.expect("you are in group #");
    let line = bob.expect("alice: dinner at 8");
    assert!(line.contains("] #"), "a group message names its group: {line:?}");
    alice.expect(&format!("{id} → #family/bob: ✓✓ delivered"));

    // The name survives a restart of the client.
    alice.quit();
    let mut alice = chat("alice", &url, &dir.join("alice"));
    alice.expect("online as alice");
    alice.send("/groups");
    alice.expect("#family");

    alice.quit();
    bob.quit();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_unreachable_server_is_named_with_a_hint_and_quit_still_works() {
    let dir = scratch("unreachable");
    // A port that was free a moment ago: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let url = format!("ws://127.0.0.1:{port}/");
    let mut alice = chat("alice", &url, &dir.join("alice"));
    alice.expect(&format!("cannot reach {url}: is `bluetick serve` running?"));
    alice.send("@bob written while offline");
    alice.expect("→ bob: queued");
    alice.quit();
    assert!(dir.join("alice").join("alice.state").exists(), "the device state was not saved");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn chat_help_documents_every_command() {
    let out = Command::new(env!("CARGO_BIN_EXE_bluetick")).args(["chat", "--help"]).output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for needle in
        ["--server", "--user", "--data", "@bob", "#family", "/group new", "/read", "/file", "/presence", "/privacy"]
    {
        assert!(help.contains(needle), "--help does not mention {needle}:\n{help}");
    }
    for needle in ["/help", "/quit", "✓✓ read", "NO_COLOR", "downloads"] {
        assert!(help.contains(needle), "--help does not mention {needle}:\n{help}");
    }
}
