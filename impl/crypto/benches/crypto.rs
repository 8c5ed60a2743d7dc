//! Criterion benchmarks of the crypto core, side by side with vodozemac 0.11.1
//! (Matrix's Olm Double Ratchet and Megolm group ratchet) in the same run.
//!
//! Groups, each pairing our suites with the vodozemac counterpart:
//! 1. `ratchet_1kib_roundtrip_established`: 1 KiB encrypt + decrypt, same
//!    direction every time, so no DH ratchet step.
//! 2. `ratchet_dh_step_turn`: 1 KiB ping-pong; every message changes direction,
//!    so every decrypt is a DH ratchet step (and the next encrypt uses the new chain).
//! 3. `session_setup`: initiator (bundle verification, X3DH, first encrypt) and
//!    responder (X3DH, session, first decrypt, one-time prekey deletion) separately.
//! 4. `group_1kib_roundtrip`: sender-key encrypt + decrypt against Megolm.
//! 5. `media_16mib`: attachment encryption throughput (no vodozemac counterpart).
//!
//! After criterion, `main` times every case again with a short loop (median of
//! 11 batches) and prints a table of µs per operation, the ratio to vodozemac
//! and PASS/MISS against the performance goals. The table is only printed when
//! run by `cargo bench` (with `--bench`), not by `cargo test --benches`.
//!
//! Our code draws randomness from a seeded `ChaCha20Rng`; vodozemac reads the
//! OS RNG internally, which is acceptable when benchmarking *their* code.
//!
//! Message sizes are 1 KiB everywhere, including the first message of session
//! setup, so the setup numbers are the handshake plus one ordinary message.
//! vodozemac runs with `SessionConfig::version_1()` (its default, truncated
//! MAC): `version_2` needs its `experimental-session-config` feature.

// Benches are test code: a failed setup step should abort loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use bluetick_crypto::media::{BlobId, MediaDecryptor, MediaEncryptor, MediaFormat, MediaPointer, WhatsAppMediaType};
use bluetick_crypto::prekeys::{verify_bundle, PreKeyBundle, PreKeyStore};
use bluetick_crypto::ratchet::{RatchetMessage, Session};
use bluetick_crypto::sender_key::{GroupId, OwnSenderKey, SenderKeyRecord};
use bluetick_crypto::x3dh::{self, InitialHeader};
use bluetick_crypto::{CipherSuite, IdentityKeyPair, SecretKey};
use criterion::measurement::WallTime;
use criterion::{black_box, BenchmarkGroup, Criterion, SamplingMode, Throughput};
use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;
use vodozemac::megolm::{GroupSession, InboundGroupSession, SessionConfig as MegolmConfig};
use vodozemac::olm::{Account, OlmMessage, PreKeyMessage, Session as OlmSession, SessionConfig as OlmConfig};
use vodozemac::Curve25519PublicKey;

/// Payload size of every message benchmark.
const MESSAGE_LEN: usize = 1024;

/// Attachment size of the media benchmarks: large enough that per-file setup
/// (key derivation, pointer) vanishes and the number is pure throughput.
const MEDIA_LEN: usize = 16 * 1024 * 1024;

/// Slice size fed to the streaming media APIs, as a client reading a file would.
const MEDIA_SLICE_LEN: usize = 64 * 1024;

/// Batches per case in the summary table; the median is reported.
const SUMMARY_BATCHES: usize = 11;

/// Target duration of one summary batch: long enough to swamp timer
/// resolution, short enough that the whole table takes a few seconds.
const SUMMARY_BATCH_TARGET: Duration = Duration::from_millis(20);

/// Cap on iterations per summary batch, so a `u32` divides the batch time.
const SUMMARY_ITERS_MAX: u64 = 1 << 20;

/// The performance goals from the issue.
const GOAL_ESTABLISHED_US: f64 = 10.0;
const GOAL_DH_STEP_TURN_US: f64 = 150.0;
const GOAL_GROUP_US: f64 = 60.0;
const GOAL_MEDIA_GBPS: f64 = 1.0;

const SUITES: [CipherSuite; 2] = [CipherSuite::BluetickV1, CipherSuite::SignalV3Compat];

/// One benchmarked operation. `prepare` builds what a single run consumes (a
/// fresh copy of state that the run destroys) and is never timed; `run` is.
trait Case {
    type Input;
    fn prepare(&self) -> Self::Input;
    fn run(&mut self, input: Self::Input);
}

/// Runs `case` `iters` times and returns the time spent in `run` only. Shared by
/// criterion (`iter_custom`) and the summary table, so both time the same thing.
// Benches must read the clock; the clippy.toml ban is for the sans-IO crates.
#[allow(clippy::disallowed_methods)]
fn measure<C: Case>(case: &mut C, iters: u64) -> Duration {
    let inputs: Vec<C::Input> = (0..iters).map(|_| case.prepare()).collect();
    let start = std::time::Instant::now();
    for input in inputs {
        case.run(input);
    }
    start.elapsed()
}

fn rng(seed: u64) -> ChaCha20Rng {
    ChaCha20Rng::seed_from_u64(seed)
}

fn message() -> Vec<u8> {
    (0..MESSAGE_LEN).map(|i| (i % 251) as u8).collect()
}

// ---------------------------------------------------------------------------
// Our Double Ratchet
// ---------------------------------------------------------------------------

/// Bob's prekeys with one one-time prekey, and the bundle the server hands out.
fn bob_prekeys(suite: CipherSuite, rng: &mut ChaCha20Rng) -> (PreKeyStore, PreKeyBundle) {
    let mut store = PreKeyStore::new(suite, IdentityKeyPair::generate(rng), rng, 0);
    let otk = store.generate_one_time(1, rng);
    let bundle = store.bundle(Some(otk[0].id)).unwrap();
    (store, bundle)
}

/// Everything Alice sends to open a session: X3DH header and first message.
struct Opening {
    alice: Session,
    header: InitialHeader,
    first: RatchetMessage,
}

fn ours_open(suite: CipherSuite, alice_id: &IdentityKeyPair, bundle: &PreKeyBundle, rng: &mut ChaCha20Rng) -> Opening {
    let verified = verify_bundle(suite, bundle).unwrap();
    let init = x3dh::initiate(suite, alice_id, &verified, rng).unwrap();
    let mut alice =
        Session::initiator(suite, &init.shared_secret, init.associated_data, init.their_signed_prekey, rng).unwrap();
    let first = alice.encrypt(&message()).unwrap();
    Opening { alice, header: init.header, first }
}

fn ours_accept(
    suite: CipherSuite,
    store: &mut PreKeyStore,
    header: &InitialHeader,
    first: &RatchetMessage,
    rng: &mut ChaCha20Rng,
) -> Session {
    let responded = x3dh::respond(suite, store, header).unwrap();
    let mut bob = Session::responder(
        suite,
        &responded.shared_secret,
        responded.associated_data.clone(),
        responded.signed_prekey.clone(),
    );
    black_box(bob.decrypt(first, rng).unwrap());
    responded.commit(store).unwrap();
    bob
}

/// A session pair after one full round trip (Alice → Bob, Bob → Alice).
fn ours_pair(suite: CipherSuite, rng: &mut ChaCha20Rng) -> (Session, Session) {
    let alice_id = IdentityKeyPair::generate(rng);
    let (mut store, bundle) = bob_prekeys(suite, rng);
    let Opening { mut alice, header, first } = ours_open(suite, &alice_id, &bundle, rng);
    let mut bob = ours_accept(suite, &mut store, &header, &first, rng);
    let reply = bob.encrypt(&message()).unwrap();
    alice.decrypt(&reply, rng).unwrap();
    (alice, bob)
}

struct OursEstablished {
    alice: Session,
    bob: Session,
    rng: ChaCha20Rng,
    plaintext: Vec<u8>,
}

impl OursEstablished {
    fn new(suite: CipherSuite) -> Self {
        let mut rng = rng(1);
        let (alice, bob) = ours_pair(suite, &mut rng);
        OursEstablished { alice, bob, rng, plaintext: message() }
    }
}

impl Case for OursEstablished {
    type Input = ();
    fn prepare(&self) {}
    fn run(&mut self, (): ()) {
        let sent = self.alice.encrypt(black_box(&self.plaintext)).unwrap();
        black_box(self.bob.decrypt(&sent, &mut self.rng).unwrap());
    }
}

struct OursDhStep {
    alice: Session,
    bob: Session,
    rng: ChaCha20Rng,
    plaintext: Vec<u8>,
    alice_sends: bool,
}

impl OursDhStep {
    fn new(suite: CipherSuite) -> Self {
        let mut rng = rng(2);
        let (alice, bob) = ours_pair(suite, &mut rng);
        OursDhStep { alice, bob, rng, plaintext: message(), alice_sends: true }
    }
}

impl Case for OursDhStep {
    type Input = ();
    fn prepare(&self) {}
    fn run(&mut self, (): ()) {
        let (sender, receiver) =
            if self.alice_sends { (&mut self.alice, &mut self.bob) } else { (&mut self.bob, &mut self.alice) };
        let sent = sender.encrypt(black_box(&self.plaintext)).unwrap();
        black_box(receiver.decrypt(&sent, &mut self.rng).unwrap());
        self.alice_sends = !self.alice_sends;
    }
}

struct OursInitiator {
    suite: CipherSuite,
    alice_id: IdentityKeyPair,
    bundle: PreKeyBundle,
    rng: ChaCha20Rng,
    plaintext: Vec<u8>,
}

impl OursInitiator {
    fn new(suite: CipherSuite) -> Self {
        let mut rng = rng(3);
        let alice_id = IdentityKeyPair::generate(&mut rng);
        let (_, bundle) = bob_prekeys(suite, &mut rng);
        OursInitiator { suite, alice_id, bundle, rng, plaintext: message() }
    }
}

impl Case for OursInitiator {
    type Input = ();
    fn prepare(&self) {}
    fn run(&mut self, (): ()) {
        let suite = self.suite;
        let verified = verify_bundle(suite, black_box(&self.bundle)).unwrap();
        let init = x3dh::initiate(suite, &self.alice_id, &verified, &mut self.rng).unwrap();
        let mut alice = Session::initiator(
            suite,
            &init.shared_secret,
            init.associated_data,
            init.their_signed_prekey,
            &mut self.rng,
        )
        .unwrap();
        let first = alice.encrypt(black_box(&self.plaintext)).unwrap();
        black_box((init.header, first, alice));
    }
}

struct OursResponder {
    suite: CipherSuite,
    /// Bob's store before the handshake; every run consumes a fresh copy,
    /// since accepting deletes the one-time prekey.
    store: PreKeyStore,
    header: InitialHeader,
    first: RatchetMessage,
    rng: ChaCha20Rng,
}

impl OursResponder {
    fn new(suite: CipherSuite) -> Self {
        let mut rng = rng(4);
        let alice_id = IdentityKeyPair::generate(&mut rng);
        let (store, bundle) = bob_prekeys(suite, &mut rng);
        let Opening { header, first, .. } = ours_open(suite, &alice_id, &bundle, &mut rng);
        OursResponder { suite, store, header, first, rng }
    }
}

impl Case for OursResponder {
    type Input = PreKeyStore;
    fn prepare(&self) -> PreKeyStore {
        self.store.clone()
    }
    fn run(&mut self, mut store: PreKeyStore) {
        let bob = ours_accept(self.suite, &mut store, black_box(&self.header), black_box(&self.first), &mut self.rng);
        black_box((bob, store));
    }
}

// ---------------------------------------------------------------------------
// vodozemac Olm
// ---------------------------------------------------------------------------

fn olm_config() -> OlmConfig {
    OlmConfig::version_1()
}

/// Bob's account with one one-time key, and that key.
fn olm_bob() -> (Account, Curve25519PublicKey) {
    let mut bob = Account::new();
    let otk = bob.generate_one_time_keys(1).created[0];
    bob.mark_keys_as_published();
    (bob, otk)
}

fn pre_key_message(message: OlmMessage) -> PreKeyMessage {
    match message {
        OlmMessage::PreKey(message) => message,
        OlmMessage::Normal(_) => panic!("the first Olm message must be a pre-key message"),
    }
}

/// An Olm session pair after one full round trip.
fn olm_pair() -> (OlmSession, OlmSession) {
    let alice_account = Account::new();
    let (mut bob_account, otk) = olm_bob();
    let mut alice = alice_account.create_outbound_session(olm_config(), bob_account.curve25519_key(), otk).unwrap();
    let first = pre_key_message(alice.encrypt(message()).unwrap());
    let created = bob_account.create_inbound_session(olm_config(), alice_account.curve25519_key(), &first).unwrap();
    let mut bob = created.session;
    let reply = bob.encrypt(message()).unwrap();
    alice.decrypt(&reply).unwrap();
    (alice, bob)
}

struct OlmEstablished {
    alice: OlmSession,
    bob: OlmSession,
    plaintext: Vec<u8>,
}

impl OlmEstablished {
    fn new() -> Self {
        let (alice, bob) = olm_pair();
        OlmEstablished { alice, bob, plaintext: message() }
    }
}

impl Case for OlmEstablished {
    type Input = ();
    fn prepare(&self) {}
    fn run(&mut self, (): ()) {
        let sent = self.alice.encrypt(black_box(&self.plaintext)).unwrap();
        black_box(self.bob.decrypt(&sent).unwrap());
    }
}

struct OlmDhStep {
    alice: OlmSession,
    bob: OlmSession,
    plaintext: Vec<u8>,
    alice_sends: bool,
}

impl OlmDhStep {
    fn new() -> Self {
        let (alice, bob) = olm_pair();
        OlmDhStep { alice, bob, plaintext: message(), alice_sends: true }
    }
}

impl Case for OlmDhStep {
    type Input = ();
    fn prepare(&self) {}
    fn run(&mut self, (): ()) {
        let (sender, receiver) =
            if self.alice_sends { (&mut self.alice, &mut self.bob) } else { (&mut self.bob, &mut self.alice) };
        let sent = sender.encrypt(black_box(&self.plaintext)).unwrap();
        black_box(receiver.decrypt(&sent).unwrap());
        self.alice_sends = !self.alice_sends;
    }
}

struct OlmInitiator {
    alice: Account,
    bob_identity: Curve25519PublicKey,
    bob_otk: Curve25519PublicKey,
    plaintext: Vec<u8>,
}

impl OlmInitiator {
    fn new() -> Self {
        let (bob, bob_otk) = olm_bob();
        OlmInitiator { alice: Account::new(), bob_identity: bob.curve25519_key(), bob_otk, plaintext: message() }
    }
}

impl Case for OlmInitiator {
    type Input = ();
    fn prepare(&self) {}
    fn run(&mut self, (): ()) {
        let mut session = self
            .alice
            .create_outbound_session(olm_config(), black_box(self.bob_identity), black_box(self.bob_otk))
            .unwrap();
        let first = session.encrypt(black_box(&self.plaintext)).unwrap();
        black_box((first, session));
    }
}

struct OlmResponder {
    /// Bob's account before the handshake; accepting removes the one-time
    /// key, so every run consumes a fresh copy (vodozemac's `Account` is not
    /// `Clone`, hence the pickle round trip, done outside the timing).
    bob: Account,
    alice_identity: Curve25519PublicKey,
    first: PreKeyMessage,
}

impl OlmResponder {
    fn new() -> Self {
        let alice = Account::new();
        let (bob, otk) = olm_bob();
        let mut session = alice.create_outbound_session(olm_config(), bob.curve25519_key(), otk).unwrap();
        let first = pre_key_message(session.encrypt(message()).unwrap());
        OlmResponder { bob, alice_identity: alice.curve25519_key(), first }
    }
}

impl Case for OlmResponder {
    type Input = Account;
    fn prepare(&self) -> Account {
        Account::from_pickle(self.bob.pickle())
    }
    fn run(&mut self, mut bob: Account) {
        let created =
            bob.create_inbound_session(olm_config(), black_box(self.alice_identity), black_box(&self.first)).unwrap();
        black_box((created, bob));
    }
}

// ---------------------------------------------------------------------------
// Groups: sender keys and Megolm
// ---------------------------------------------------------------------------

struct OursGroup {
    sender: OwnSenderKey,
    receiver: SenderKeyRecord,
    plaintext: Vec<u8>,
}

impl OursGroup {
    fn new(suite: CipherSuite) -> Self {
        let sender = OwnSenderKey::new(suite, GroupId([7; 16]), &mut rng(5));
        let receiver = SenderKeyRecord::from_distribution(suite, &sender.distribution()).unwrap();
        OursGroup { sender, receiver, plaintext: message() }
    }
}

impl Case for OursGroup {
    type Input = ();
    fn prepare(&self) {}
    fn run(&mut self, (): ()) {
        let sent = self.sender.encrypt(black_box(&self.plaintext)).unwrap();
        black_box(self.receiver.decrypt(&sent).unwrap());
    }
}

struct Megolm {
    outbound: GroupSession,
    inbound: InboundGroupSession,
    plaintext: Vec<u8>,
}

impl Megolm {
    fn new() -> Self {
        let outbound = GroupSession::new(MegolmConfig::version_1());
        let inbound = InboundGroupSession::new(&outbound.session_key(), MegolmConfig::version_1());
        Megolm { outbound, inbound, plaintext: message() }
    }
}

impl Case for Megolm {
    type Input = ();
    fn prepare(&self) {}
    fn run(&mut self, (): ()) {
        let sent = self.outbound.encrypt(black_box(&self.plaintext));
        black_box(self.inbound.decrypt(&sent).unwrap());
    }
}

// ---------------------------------------------------------------------------
// Media
// ---------------------------------------------------------------------------

fn media_plaintext() -> Vec<u8> {
    (0..MEDIA_LEN).map(|i| (i % 253) as u8).collect()
}

fn media_key() -> SecretKey {
    SecretKey::generate(&mut rng(6))
}

/// Streaming encryption of one 16 MiB file, fed in 64 KiB slices. The output
/// buffer is reused so the number is cipher and hash work, not allocation.
struct MediaEncrypt {
    format: MediaFormat,
    key: SecretKey,
    plaintext: Vec<u8>,
    out: Vec<u8>,
}

impl MediaEncrypt {
    fn new(format: MediaFormat) -> Self {
        let capacity = usize::try_from(format.ciphertext_len(MEDIA_LEN as u64).unwrap()).unwrap();
        MediaEncrypt { format, key: media_key(), plaintext: media_plaintext(), out: Vec::with_capacity(capacity) }
    }

    fn encrypt_once(&mut self) -> MediaPointer {
        self.out.clear();
        let mut encryptor = MediaEncryptor::new(self.format, self.key.clone(), BlobId([9; 16]));
        for slice in self.plaintext.chunks(MEDIA_SLICE_LEN) {
            encryptor.update(black_box(slice), &mut self.out).unwrap();
        }
        encryptor.finish(&mut self.out).unwrap()
    }
}

impl Case for MediaEncrypt {
    type Input = ();
    fn prepare(&self) {}
    fn run(&mut self, (): ()) {
        black_box(self.encrypt_once());
    }
}

/// Streaming decryption (all checks, digest included) of one 16 MiB blob.
struct MediaDecrypt {
    pointer: MediaPointer,
    blob: Vec<u8>,
    out: Vec<u8>,
}

impl MediaDecrypt {
    fn new(format: MediaFormat) -> Self {
        let mut encrypt = MediaEncrypt::new(format);
        let pointer = encrypt.encrypt_once();
        MediaDecrypt { pointer, blob: encrypt.out, out: Vec::with_capacity(MEDIA_LEN) }
    }
}

impl Case for MediaDecrypt {
    type Input = ();
    fn prepare(&self) {}
    fn run(&mut self, (): ()) {
        self.out.clear();
        let mut decryptor = MediaDecryptor::new(black_box(&self.pointer)).unwrap();
        for slice in self.blob.chunks(MEDIA_SLICE_LEN) {
            decryptor.update(black_box(slice), &mut self.out).unwrap();
        }
        decryptor.finish(&mut self.out).unwrap();
        black_box(&self.out);
    }
}

const WHATSAPP_DOCUMENT: MediaFormat = MediaFormat::WhatsAppV1(WhatsAppMediaType::Document);

// ---------------------------------------------------------------------------
// Criterion groups
// ---------------------------------------------------------------------------

fn bench_case<C: Case>(group: &mut BenchmarkGroup<'_, WallTime>, name: &str, mut case: C) {
    group.bench_function(name, |b| b.iter_custom(|iters| measure(&mut case, iters)));
}

/// Settings for the message-sized groups: a few seconds each keeps the whole
/// run within minutes on a 2-core machine while the spread stays readable.
fn message_group<'a>(c: &'a mut Criterion, name: &str) -> BenchmarkGroup<'a, WallTime> {
    let mut group = c.benchmark_group(name);
    group
        .sample_size(30)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .throughput(Throughput::Bytes(MESSAGE_LEN as u64));
    group
}

fn bench_established(c: &mut Criterion) {
    let mut group = message_group(c, "ratchet_1kib_roundtrip_established");
    for suite in SUITES {
        bench_case(&mut group, suite.name(), OursEstablished::new(suite));
    }
    bench_case(&mut group, "vodozemac-olm", OlmEstablished::new());
    group.finish();
}

fn bench_dh_step(c: &mut Criterion) {
    let mut group = message_group(c, "ratchet_dh_step_turn");
    for suite in SUITES {
        bench_case(&mut group, suite.name(), OursDhStep::new(suite));
    }
    bench_case(&mut group, "vodozemac-olm", OlmDhStep::new());
    group.finish();
}

fn bench_session_setup(c: &mut Criterion) {
    let mut group = message_group(c, "session_setup");
    for suite in SUITES {
        bench_case(&mut group, &format!("initiator/{}", suite.name()), OursInitiator::new(suite));
    }
    bench_case(&mut group, "initiator/vodozemac-olm", OlmInitiator::new());
    for suite in SUITES {
        bench_case(&mut group, &format!("responder/{}", suite.name()), OursResponder::new(suite));
    }
    bench_case(&mut group, "responder/vodozemac-olm", OlmResponder::new());
    group.finish();
}

fn bench_group(c: &mut Criterion) {
    let mut group = message_group(c, "group_1kib_roundtrip");
    for suite in SUITES {
        bench_case(&mut group, suite.name(), OursGroup::new(suite));
    }
    bench_case(&mut group, "vodozemac-megolm", Megolm::new());
    group.finish();
}

fn bench_media(c: &mut Criterion) {
    let mut group = c.benchmark_group("media_16mib");
    // Tens of milliseconds per iteration: flat sampling with the minimum sample
    // count keeps each benchmark to a few seconds.
    group
        .sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .throughput(Throughput::Bytes(MEDIA_LEN as u64));
    bench_case(&mut group, "bluetick-v1/encrypt", MediaEncrypt::new(MediaFormat::BluetickV1));
    bench_case(&mut group, "whatsapp-v1/encrypt", MediaEncrypt::new(WHATSAPP_DOCUMENT));
    bench_case(&mut group, "bluetick-v1/decrypt", MediaDecrypt::new(MediaFormat::BluetickV1));
    group.finish();
}

// ---------------------------------------------------------------------------
// Summary table
// ---------------------------------------------------------------------------

/// Median time of one `run` of `case`, over [`SUMMARY_BATCHES`] batches sized
/// to about [`SUMMARY_BATCH_TARGET`] each.
fn median_run<C: Case>(mut case: C) -> Duration {
    // Double a calibration batch until it takes a quarter of the target (this
    // also warms caches and the CPU clock), then scale it to the target.
    let mut iters: u64 = 1;
    let mut elapsed = measure(&mut case, iters);
    while elapsed < SUMMARY_BATCH_TARGET / 4 && iters < SUMMARY_ITERS_MAX {
        iters *= 2;
        elapsed = measure(&mut case, iters);
    }
    let scaled = u128::from(iters) * SUMMARY_BATCH_TARGET.as_nanos() / elapsed.as_nanos().max(1);
    let iters = u64::try_from(scaled).unwrap_or(SUMMARY_ITERS_MAX).clamp(1, SUMMARY_ITERS_MAX);
    let mut per_run: Vec<Duration> = (0..SUMMARY_BATCHES).map(|_| measure(&mut case, iters) / iters as u32).collect();
    per_run.sort();
    per_run[SUMMARY_BATCHES / 2]
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn gigabytes_per_second(d: Duration) -> f64 {
    MEDIA_LEN as f64 / d.as_secs_f64() / 1e9
}

/// A goal: a limit, and whether the measured value must stay below or reach it.
#[derive(Clone, Copy)]
enum Goal {
    None,
    MaxMicros(f64),
    MinGbps(f64),
}

impl Goal {
    fn describe(self) -> String {
        match self {
            Goal::None => "-".to_owned(),
            Goal::MaxMicros(limit) => format!("<= {limit} us"),
            Goal::MinGbps(limit) => format!(">= {limit} GB/s"),
        }
    }

    fn verdict(self, d: Duration) -> &'static str {
        let pass = match self {
            Goal::None => return "",
            Goal::MaxMicros(limit) => micros(d) <= limit,
            Goal::MinGbps(limit) => gigabytes_per_second(d) >= limit,
        };
        if pass {
            "PASS"
        } else {
            "MISS"
        }
    }
}

/// One comparison: our suites against the vodozemac counterpart, if any.
struct Row {
    name: &'static str,
    ours: Vec<(&'static str, Duration)>,
    theirs: Option<Duration>,
    goal: Goal,
    media: bool,
}

fn ratchet_row<C: Case>(name: &'static str, goal: Goal, ours: impl Fn(CipherSuite) -> C, theirs: Duration) -> Row {
    Row {
        name,
        ours: SUITES.iter().map(|&suite| (suite.name(), median_run(ours(suite)))).collect(),
        theirs: Some(theirs),
        goal,
        media: false,
    }
}

fn print_summary() {
    println!();
    println!("Quick re-timing for the summary (median of {SUMMARY_BATCHES} batches of ~{SUMMARY_BATCH_TARGET:?}).");
    println!("The machine is shared with other builds: treat the numbers as noisy.");
    let rows = vec![
        ratchet_row(
            "ratchet 1 KiB enc+dec, established",
            Goal::MaxMicros(GOAL_ESTABLISHED_US),
            OursEstablished::new,
            median_run(OlmEstablished::new()),
        ),
        ratchet_row(
            "ratchet DH-step turn (1 KiB)",
            Goal::MaxMicros(GOAL_DH_STEP_TURN_US),
            OursDhStep::new,
            median_run(OlmDhStep::new()),
        ),
        ratchet_row("session setup, initiator", Goal::None, OursInitiator::new, median_run(OlmInitiator::new())),
        ratchet_row("session setup, responder", Goal::None, OursResponder::new, median_run(OlmResponder::new())),
        ratchet_row("group 1 KiB enc+dec", Goal::MaxMicros(GOAL_GROUP_US), OursGroup::new, median_run(Megolm::new())),
        Row {
            name: "media 16 MiB encrypt",
            ours: vec![
                ("bluetick-v1", median_run(MediaEncrypt::new(MediaFormat::BluetickV1))),
                ("whatsapp-v1", median_run(MediaEncrypt::new(WHATSAPP_DOCUMENT))),
            ],
            theirs: None,
            goal: Goal::MinGbps(GOAL_MEDIA_GBPS),
            media: true,
        },
        Row {
            name: "media 16 MiB decrypt",
            ours: vec![("bluetick-v1", median_run(MediaDecrypt::new(MediaFormat::BluetickV1)))],
            theirs: None,
            goal: Goal::MinGbps(GOAL_MEDIA_GBPS),
            media: true,
        },
    ];

    println!();
    println!("ours vs vodozemac: ratio = our time / vodozemac time (below 1 means we are faster)");
    println!(
        "{:<36} {:<17} {:>12} {:>12} {:>8}  {:<13} verdict",
        "operation", "impl", "time", "vodozemac", "ratio", "goal"
    );
    for row in &rows {
        for (label, ours) in &row.ours {
            let time = if row.media {
                format!("{:.2} GB/s", gigabytes_per_second(*ours))
            } else {
                format!("{:.1} us", micros(*ours))
            };
            let (theirs, ratio) = match row.theirs {
                Some(theirs) => {
                    (format!("{:.1} us", micros(theirs)), format!("{:.2}", ours.as_secs_f64() / theirs.as_secs_f64()))
                }
                None => ("-".to_owned(), "-".to_owned()),
            };
            // whatsapp-v1 is there for comparison; the media goal is bluetick-v1's.
            let goal = if row.media && *label != "bluetick-v1" { Goal::None } else { row.goal };
            println!(
                "{:<36} {:<17} {:>12} {:>12} {:>8}  {:<13} {}",
                row.name,
                label,
                time,
                theirs,
                ratio,
                goal.describe(),
                goal.verdict(*ours)
            );
        }
    }
    println!("(vodozemac 0.11.1, SessionConfig v1: Olm for the ratchet and setup rows, Megolm for the group row)");
}

fn main() {
    let mut criterion = Criterion::default().without_plots().configure_from_args();
    bench_established(&mut criterion);
    bench_dh_step(&mut criterion);
    bench_session_setup(&mut criterion);
    bench_group(&mut criterion);
    bench_media(&mut criterion);
    criterion.final_summary();
    // `cargo test --benches` runs this binary without `--bench` to smoke-test
    // each benchmark once; the extra timing pass is only for real runs.
    if std::env::args().any(|arg| arg == "--bench") {
        print_summary();
    }
}
