use rand_chacha::ChaCha20Rng;
use rand_core::SeedableRng;
use sha2::{Digest, Sha256};

use super::*;

const K: usize = CHUNK_LEN;
/// A sealed full `bluetick-v1` chunk.
const S: usize = bluetick::SEALED_CHUNK_LEN;
const SIZES: [usize; 6] = [0, 1, K - 1, K, K + 1, 200 * 1024];
const VIDEO: MediaFormat = MediaFormat::WhatsAppV1(WhatsAppMediaType::Video);
const DOCUMENT: MediaFormat = MediaFormat::WhatsAppV1(WhatsAppMediaType::Document);
const FORMATS: [MediaFormat; 5] = [
    MediaFormat::BluetickV1,
    MediaFormat::WhatsAppV1(WhatsAppMediaType::Image),
    VIDEO,
    MediaFormat::WhatsAppV1(WhatsAppMediaType::Audio),
    DOCUMENT,
];

fn rng(seed: u64) -> ChaCha20Rng {
    ChaCha20Rng::seed_from_u64(seed)
}

fn random_bytes(rng: &mut ChaCha20Rng, len: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; len];
    rng.fill_bytes(&mut bytes);
    bytes
}

/// Plaintext, blob and pointer for `len` random bytes under a seeded key.
fn sample(format: MediaFormat, len: usize, seed: u64) -> (Vec<u8>, Vec<u8>, MediaPointer) {
    let mut rng = rng(seed);
    let plaintext = random_bytes(&mut rng, len);
    let (blob, pointer) =
        encrypt(format, SecretKey::generate(&mut rng), BlobId::generate(&mut rng), &plaintext).unwrap();
    (plaintext, blob, pointer)
}

fn stream_encrypt(format: MediaFormat, key: &SecretKey, plaintext: &[u8], piece: usize) -> (Vec<u8>, MediaPointer) {
    let mut encryptor = MediaEncryptor::new(format, key.clone(), BlobId([7; 16]));
    let mut blob = Vec::new();
    for slice in plaintext.chunks(piece) {
        encryptor.update(slice, &mut blob).unwrap();
    }
    let pointer = encryptor.finish(&mut blob).unwrap();
    (blob, pointer)
}

/// Feeds `blob` in `piece`-byte slices; returns what was released and the
/// first error, if any.
fn stream_decrypt(pointer: &MediaPointer, blob: &[u8], piece: usize) -> (Vec<u8>, Result<(), MediaError>) {
    let mut decryptor = MediaDecryptor::new(pointer).unwrap();
    let mut released = Vec::new();
    for slice in blob.chunks(piece) {
        if let Err(error) = decryptor.update(slice, &mut released) {
            return (released, Err(error));
        }
    }
    let result = decryptor.finish(&mut released);
    (released, result)
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

#[test]
fn every_format_round_trips_at_chunk_edges() {
    for (seed, format) in FORMATS.into_iter().enumerate() {
        for len in SIZES {
            let (plaintext, blob, pointer) = sample(format, len, seed as u64);
            assert_eq!(blob.len() as u64, format.ciphertext_len(len as u64).unwrap(), "{format:?} {len}");
            assert_eq!(pointer.format, format);
            assert_eq!(pointer.plaintext_len, len as u64);
            assert_eq!(pointer.ciphertext_sha256, sha256(&blob));
            assert_eq!(decrypt(&pointer, &blob).unwrap().as_slice(), &plaintext[..], "{format:?} {len}");
        }
    }
}

#[test]
fn streaming_in_odd_slices_matches_the_whole_buffer_api() {
    for format in [MediaFormat::BluetickV1, VIDEO, DOCUMENT] {
        for len in [0, 33, K + 1, 200 * 1024 + 5] {
            let (plaintext, blob, pointer) = sample(format, len, 11);
            for piece in [1, 7, 4093, K - 1, K + 17] {
                if piece == 1 && len > K {
                    continue; // byte-at-a-time over 200 KiB adds time, not coverage
                }
                let (streamed, streamed_pointer) = stream_encrypt(format, &pointer.media_key, &plaintext, piece);
                assert_eq!(streamed, blob, "{format:?} {len} in {piece}-byte slices");
                assert_eq!(streamed_pointer.ciphertext_sha256, pointer.ciphertext_sha256);
                assert_eq!(streamed_pointer.streaming_sidecar, pointer.streaming_sidecar);
                let (released, result) = stream_decrypt(&pointer, &blob, piece);
                assert_eq!(result, Ok(()), "{format:?} {len} in {piece}-byte slices");
                assert_eq!(released, plaintext, "{format:?} {len} in {piece}-byte slices");
            }
        }
    }
}

/// 3 full chunks and a 1000-byte last chunk.
fn bluetick_sample() -> (Vec<u8>, Vec<u8>, MediaPointer) {
    let (plaintext, blob, pointer) = sample(MediaFormat::BluetickV1, 3 * K + 1000, 21);
    assert_eq!(blob.len(), 3 * S + 1016);
    (plaintext, blob, pointer)
}

#[test]
fn bluetick_dropping_the_last_chunk_is_truncation() {
    let (_, blob, pointer) = bluetick_sample();
    assert_eq!(
        decrypt(&pointer, &blob[..3 * S]),
        Err(MediaError::Truncated {
            ciphertext_len_expected: blob.len() as u64,
            ciphertext_len_received: 3 * S as u64
        })
    );
}

#[test]
fn bluetick_a_blob_cut_mid_chunk_is_truncation() {
    let (plaintext, blob, pointer) = bluetick_sample();
    let cut = S + 100;
    let (released, result) = stream_decrypt(&pointer, &blob[..cut], 999);
    assert_eq!(
        result,
        Err(MediaError::Truncated { ciphertext_len_expected: blob.len() as u64, ciphertext_len_received: cut as u64 })
    );
    assert_eq!(released, plaintext[..K], "only the one complete, authentic chunk was released");
}

#[test]
fn bluetick_truncation_at_a_chunk_boundary_fails_on_the_last_flag_even_if_the_length_lies() {
    let (_, blob, mut pointer) = bluetick_sample();
    pointer.plaintext_len = 3 * K as u64;
    assert_eq!(decrypt(&pointer, &blob[..3 * S]), Err(MediaError::ChunkRejected { index: 2 }));
}

#[test]
fn bluetick_a_length_one_short_rejects_the_last_chunk() {
    let (_, blob, mut pointer) = bluetick_sample();
    pointer.plaintext_len -= 1;
    let (_, result) = stream_decrypt(&pointer, &blob, 4096);
    assert_eq!(result, Err(MediaError::ChunkRejected { index: 3 }));
    pointer.plaintext_len += 2;
    assert_eq!(
        decrypt(&pointer, &blob),
        Err(MediaError::Truncated {
            ciphertext_len_expected: blob.len() as u64 + 1,
            ciphertext_len_received: blob.len() as u64
        })
    );
}

fn chunks_of(blob: &[u8]) -> Vec<&[u8]> {
    blob.chunks(S).collect()
}

#[test]
fn bluetick_swapped_chunks_are_rejected_at_the_first_moved_one() {
    let (_, blob, pointer) = bluetick_sample();
    let chunks = chunks_of(&blob);
    let swapped = [chunks[0], chunks[2], chunks[1], chunks[3]].concat();
    assert_eq!(decrypt(&pointer, &swapped), Err(MediaError::ChunkRejected { index: 1 }));
    let swapped = [chunks[1], chunks[0], chunks[2], chunks[3]].concat();
    assert_eq!(decrypt(&pointer, &swapped), Err(MediaError::ChunkRejected { index: 0 }));
}

#[test]
fn bluetick_a_duplicated_chunk_is_rejected_where_it_repeats() {
    let (plaintext, blob, pointer) = bluetick_sample();
    let chunks = chunks_of(&blob);
    let replaced = [chunks[0], chunks[0], chunks[2], chunks[3]].concat();
    assert_eq!(decrypt(&pointer, &replaced), Err(MediaError::ChunkRejected { index: 1 }));
    let inserted = [chunks[0], chunks[1], chunks[1], chunks[2], chunks[3]].concat();
    let (released, result) = stream_decrypt(&pointer, &inserted, 10_000);
    assert_eq!(result, Err(MediaError::ChunkRejected { index: 2 }));
    assert_eq!(released, plaintext[..2 * K]);
}

#[test]
fn bluetick_trailing_bytes_are_rejected_after_the_last_chunk() {
    let (plaintext, blob, pointer) = bluetick_sample();
    let mut long = blob.clone();
    long.push(0);
    let expected = Err(MediaError::TrailingData { ciphertext_len_expected: blob.len() as u64 });
    assert_eq!(decrypt(&pointer, &long).map(|_| ()), expected);
    let (released, result) = stream_decrypt(&pointer, &long, 5000);
    assert_eq!(result, expected);
    assert_eq!(released, plaintext, "every chunk was authentic; only the extra byte is refused");
}

#[test]
fn bluetick_a_wrong_key_rejects_the_first_chunk() {
    let (_, blob, mut pointer) = bluetick_sample();
    pointer.media_key = SecretKey::new([0xee; 32]);
    assert_eq!(decrypt(&pointer, &blob), Err(MediaError::ChunkRejected { index: 0 }));
}

#[test]
fn bluetick_a_flipped_bit_names_its_chunk_and_releases_nothing_after_it() {
    let (plaintext, blob, pointer) = bluetick_sample();
    for offset in [0, S - 1, S, 2 * S + 77, blob.len() - 1] {
        let mut tampered = blob.clone();
        tampered[offset] ^= 0x10;
        let index = (offset / S) as u64;
        assert_eq!(decrypt(&pointer, &tampered), Err(MediaError::ChunkRejected { index }), "flip at {offset}");
        let (released, _) = stream_decrypt(&pointer, &tampered, 3000);
        assert_eq!(released, plaintext[..index as usize * K], "flip at {offset}");
    }
}

#[test]
fn a_failed_decryptor_repeats_its_error() {
    let (_, blob, pointer) = bluetick_sample();
    let mut tampered = blob.clone();
    tampered[10] ^= 1;
    let mut decryptor = MediaDecryptor::new(&pointer).unwrap();
    let mut out = Vec::new();
    let error = MediaError::ChunkRejected { index: 0 };
    assert_eq!(decryptor.update(&tampered[..S], &mut out), Err(error.clone()));
    assert_eq!(decryptor.update(&blob[S..], &mut out), Err(error.clone()), "later chunks are not opened");
    assert_eq!(decryptor.finish(&mut out), Err(error));
    assert!(out.is_empty());
}

#[test]
fn a_wrong_digest_is_reported_with_both_values_in_every_format() {
    for format in [MediaFormat::BluetickV1, VIDEO, DOCUMENT] {
        let (_, blob, mut pointer) = sample(format, 70_000, 31);
        let actual = pointer.ciphertext_sha256;
        pointer.ciphertext_sha256[0] ^= 1;
        let expected = Err(MediaError::DigestMismatch { expected: pointer.ciphertext_sha256, actual });
        assert_eq!(decrypt(&pointer, &blob).map(|_| ()), expected, "{format:?}");
        assert_eq!(stream_decrypt(&pointer, &blob, 1000).1, expected, "{format:?}");
    }
}

/// Whatever else is wrong with a `whatsapp-v1` blob, the whole-buffer API
/// reports the file MAC first and decrypts nothing.
#[test]
fn whatsapp_mac_is_checked_before_padding_sidecar_or_digest() {
    for format in [VIDEO, DOCUMENT] {
        let (_, blob, pointer) = sample(format, 200 * 1024, 41);
        let last_block = blob.len() - MAC_LEN_FOR_TESTS - 1;
        for offset in [0, K + 3, last_block, blob.len() - 1] {
            let mut tampered = blob.clone();
            tampered[offset] ^= 0x01;
            assert_eq!(decrypt(&pointer, &tampered), Err(MediaError::MacMismatch), "{format:?} flip at {offset}");
        }
        let mut swapped = blob.clone();
        swapped.copy_within(0..16, 32);
        assert_eq!(decrypt(&pointer, &swapped), Err(MediaError::MacMismatch), "{format:?} moved block");
        let mut wrong_key = pointer.clone();
        wrong_key.media_key = SecretKey::new([0xee; 32]);
        assert_eq!(decrypt(&wrong_key, &blob), Err(MediaError::MacMismatch), "{format:?}");
    }
}

const MAC_LEN_FOR_TESTS: usize = whatsapp::MAC_LEN;

#[test]
fn whatsapp_truncation_and_trailing_data_are_length_errors() {
    for format in [VIDEO, DOCUMENT] {
        let (_, blob, pointer) = sample(format, 5000, 43);
        let len = blob.len() as u64;
        let short = Err(MediaError::Truncated { ciphertext_len_expected: len, ciphertext_len_received: len - 10 });
        assert_eq!(decrypt(&pointer, &blob[..blob.len() - 10]).map(|_| ()), short, "{format:?}");
        assert_eq!(stream_decrypt(&pointer, &blob[..blob.len() - 10], 777).1, short, "{format:?}");
        let mut long = blob.clone();
        long.extend_from_slice(&[0; 3]);
        let trailing = Err(MediaError::TrailingData { ciphertext_len_expected: len });
        assert_eq!(decrypt(&pointer, &long).map(|_| ()), trailing, "{format:?}");
        assert_eq!(stream_decrypt(&pointer, &long, 777).1, trailing, "{format:?}");
    }
}

/// With a sidecar, streamed plaintext leaves the decryptor only once its
/// 64 KiB window has verified: a flip in window 1 releases window 0 only.
#[test]
fn whatsapp_streaming_with_a_sidecar_releases_only_verified_windows() {
    let (plaintext, blob, pointer) = sample(VIDEO, 200 * 1024, 47);
    let mut tampered = blob.clone();
    tampered[K + 5] ^= 0x01;
    let (released, result) = stream_decrypt(&pointer, &tampered, 1000);
    assert_eq!(result, Err(MediaError::SidecarMismatch { window: 1 }));
    assert_eq!(released, plaintext[..K]);
    let mut decryptor = MediaDecryptor::new(&pointer).unwrap();
    let mut out = Vec::new();
    decryptor.update(&blob[..K], &mut out).unwrap();
    assert!(out.is_empty(), "window 0 is complete but unverified until window 1 begins");
    decryptor.update(&blob[K..K + 1], &mut out).unwrap();
    assert_eq!(out, plaintext[..K]);
}

/// Without a sidecar nothing can be verified before the MAC at the end: the
/// stream releases plaintext, and `finish` is what rejects the file.
#[test]
fn whatsapp_streaming_without_a_sidecar_fails_at_finish() {
    let (_, blob, pointer) = sample(DOCUMENT, 100_000, 53);
    let mut tampered = blob.clone();
    tampered[20] ^= 0x01;
    let (released, result) = stream_decrypt(&pointer, &tampered, 1000);
    assert_eq!(result, Err(MediaError::MacMismatch));
    assert!(!released.is_empty(), "documented: unverified until finish succeeds");
}

#[test]
fn whatsapp_a_length_lie_within_one_block_is_caught_by_the_padding() {
    let (_, blob, mut pointer) = sample(DOCUMENT, 25, 59);
    pointer.plaintext_len = 20;
    let expected = Err(MediaError::PlaintextLengthMismatch { plaintext_len_expected: 20, plaintext_len_actual: 25 });
    assert_eq!(decrypt(&pointer, &blob).map(|_| ()), expected);
    assert_eq!(stream_decrypt(&pointer, &blob, 3).1, expected);
}

#[test]
fn a_sidecar_of_the_wrong_size_is_refused_up_front() {
    let (_, blob, mut pointer) = sample(VIDEO, 200 * 1024, 61);
    pointer.streaming_sidecar = Some(StreamingSidecar::from_bytes(vec![0; 30]));
    assert_eq!(
        MediaDecryptor::new(&pointer).map(|_| ()),
        Err(MediaError::SidecarLength { len: 30, len_expected: 40, ciphertext_len: blob.len() as u64 })
    );
    let (_, blob, mut pointer) = sample(MediaFormat::BluetickV1, 10, 61);
    pointer.streaming_sidecar = Some(StreamingSidecar::from_bytes(vec![0; 10]));
    assert_eq!(
        decrypt(&pointer, &blob).map(|_| ()),
        Err(MediaError::SidecarLength { len: 10, len_expected: 0, ciphertext_len: blob.len() as u64 })
    );
}

/// Plaintext byte at `offset` of a long stream: a seeded random 4 KiB block,
/// varied per block, so any position can be regenerated without storing the
/// stream.
fn stream_plaintext(seed_block: &[u8], offset: usize, len: usize) -> Vec<u8> {
    (offset..offset + len).map(|i| seed_block[i % seed_block.len()] ^ (i / seed_block.len()) as u8).collect()
}

/// The brief's bound: 16 MiB through the push API, and after every call the
/// encryptor has reserved at most one sealed chunk and holds back at most one
/// chunk of plaintext (everything before it has been emitted).
#[test]
fn encrypting_16_mib_never_buffers_more_than_one_chunk() {
    const TOTAL: usize = 16 * 1024 * 1024;
    const PIECE: usize = 100_003;
    let seed_block = random_bytes(&mut rng(99), 4096);
    let mut encryptor = MediaEncryptor::new(MediaFormat::BluetickV1, SecretKey::new([0x16; 32]), BlobId([1; 16]));
    let mut blob = Vec::new();
    let (mut sent, mut emitted) = (0, 0);
    while sent < TOTAL {
        let piece = stream_plaintext(&seed_block, sent, PIECE.min(TOTAL - sent));
        sent += piece.len();
        encryptor.update(&piece, &mut blob).unwrap();
        emitted += blob.len();
        blob.clear();
        assert!(encryptor.buffer_capacity() <= K + 16, "capacity {}", encryptor.buffer_capacity());
        assert_eq!(emitted % S, 0, "only whole sealed chunks leave before finish");
        assert!(sent - emitted / S * K <= K, "{} plaintext bytes held back", sent - emitted / S * K);
    }
    let pointer = encryptor.finish(&mut blob).unwrap();
    emitted += blob.len();
    assert_eq!(emitted as u64, MediaFormat::BluetickV1.ciphertext_len(TOTAL as u64).unwrap());
    assert_eq!(pointer.plaintext_len, TOTAL as u64);
}

/// Encryptor output piped straight into a decryptor, for each decryption
/// path (chunks; CBC holding windows for a sidecar; CBC without one): both
/// stay within [`STREAM_BUFFER_LEN_MAX`], and the decryptor never lags more
/// than one chunk or window behind what it has received. Pass 1 learns the
/// pointer; pass 2 re-encrypts (deterministic under the same key).
#[test]
fn piped_streams_stay_within_one_chunk() {
    const TOTAL: usize = 1024 * 1024 + 5;
    const PIECE: usize = 10_007;
    let seed_block = random_bytes(&mut rng(98), 4096);
    for format in [MediaFormat::BluetickV1, VIDEO, DOCUMENT] {
        let run = |mut decryptor: Option<MediaDecryptor>| {
            let mut encryptor = MediaEncryptor::new(format, SecretKey::new([0x17; 32]), BlobId([1; 16]));
            let (mut blob, mut released) = (Vec::new(), Vec::new());
            let (mut sent, mut released_len) = (0, 0);
            let check_released = |released: &mut Vec<u8>, released_len: &mut usize| {
                assert_eq!(
                    released[..],
                    stream_plaintext(&seed_block, *released_len, released.len())[..],
                    "{format:?}"
                );
                *released_len += released.len();
                released.clear();
            };
            while sent < TOTAL {
                let piece = stream_plaintext(&seed_block, sent, PIECE.min(TOTAL - sent));
                sent += piece.len();
                encryptor.update(&piece, &mut blob).unwrap();
                assert!(encryptor.buffer_capacity() <= STREAM_BUFFER_LEN_MAX, "{format:?}");
                if let Some(decryptor) = &mut decryptor {
                    decryptor.update(&blob, &mut released).unwrap();
                    assert!(decryptor.buffer_capacity() <= STREAM_BUFFER_LEN_MAX, "{format:?}");
                    check_released(&mut released, &mut released_len);
                    assert!(sent - released_len <= 2 * K, "{format:?}: {} bytes in flight", sent - released_len);
                }
                blob.clear();
            }
            let pointer = encryptor.finish(&mut blob).unwrap();
            if let Some(mut decryptor) = decryptor {
                decryptor.update(&blob, &mut released).unwrap();
                decryptor.finish(&mut released).unwrap();
                check_released(&mut released, &mut released_len);
                assert_eq!(released_len, TOTAL, "{format:?}");
            }
            pointer
        };
        let pointer = run(None);
        assert_eq!(run(Some(MediaDecryptor::new(&pointer).unwrap())), pointer);
    }
}

#[test]
fn the_length_limit_is_enforced_at_the_limit() {
    let key = SecretKey::new([2; 32]);
    for format in [MediaFormat::BluetickV1, VIDEO] {
        assert!(format.ciphertext_len(MAX_PLAINTEXT_LEN).is_ok());
        let too_long = MediaError::PlaintextTooLong { len_max: MAX_PLAINTEXT_LEN };
        assert_eq!(format.ciphertext_len(MAX_PLAINTEXT_LEN + 1), Err(too_long.clone()));
        let mut encryptor = MediaEncryptor::new(format, key.clone(), BlobId([0; 16]));
        encryptor.plaintext_len = MAX_PLAINTEXT_LEN;
        let mut out = Vec::new();
        assert_eq!(encryptor.update(&[], &mut out), Ok(()));
        assert_eq!(encryptor.update(&[0], &mut out), Err(too_long.clone()));
        let (_, _, mut pointer) = sample(format, 1, 3);
        pointer.plaintext_len = u64::MAX;
        assert_eq!(MediaDecryptor::new(&pointer).map(|_| ()), Err(too_long), "{format:?}");
    }
}

#[test]
fn generate_draws_the_key_then_the_blob_id() {
    let mut a = rng(5);
    let encryptor = MediaEncryptor::generate(MediaFormat::BluetickV1, &mut a);
    let mut b = rng(5);
    let key = SecretKey::generate(&mut b);
    let blob_id = BlobId::generate(&mut b);
    let pointer = encryptor.finish(&mut Vec::new()).unwrap();
    assert_eq!((pointer.media_key, pointer.blob_id), (key, blob_id));
}

#[test]
fn pointer_serde_round_trip_still_decrypts_and_debug_hides_the_key() {
    for (format, tag) in [(MediaFormat::BluetickV1, "\"bluetick-v1\""), (VIDEO, "{\"whatsapp-v1\":\"video\"}")] {
        let (plaintext, blob, pointer) = sample(format, 70_000, 67);
        let json = serde_json::to_string(&pointer).unwrap();
        assert!(json.contains(&format!("\"format\":{tag}")), "{json}");
        assert_eq!(json.contains("streaming_sidecar"), pointer.streaming_sidecar.is_some());
        let back: MediaPointer = serde_json::from_str(&json).unwrap();
        assert_eq!(back, pointer);
        assert_eq!(decrypt(&back, &blob).unwrap().as_slice(), &plaintext[..]);
        let debug = format!("{pointer:?}");
        assert!(debug.contains("SecretKey([redacted])"), "{debug}");
        assert!(!debug.contains(&hex::encode(pointer.media_key.as_bytes())), "{debug}");
        assert!(debug.contains(&hex::encode(pointer.ciphertext_sha256)), "{debug}");
    }
    assert_eq!([MediaFormat::BluetickV1.name(), VIDEO.name()], ["bluetick-v1", "whatsapp-v1"]);
}

/// A reader that hands out at most 1000 bytes per call and interrupts itself
/// every third call, as real pipes and sockets may.
struct ChoppyReader<'a> {
    data: &'a [u8],
    calls: usize,
}

impl Read for ChoppyReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.calls += 1;
        if self.calls.is_multiple_of(3) {
            return Err(std::io::ErrorKind::Interrupted.into());
        }
        let len = buf.len().min(1000).min(self.data.len());
        let (head, rest) = self.data.split_at(len);
        buf[..len].copy_from_slice(head);
        self.data = rest;
        Ok(len)
    }
}

#[test]
fn io_adapters_match_the_push_api() {
    for format in [MediaFormat::BluetickV1, VIDEO] {
        let (plaintext, blob, pointer) = sample(format, 150_000, 71);
        let encryptor = MediaEncryptor::new(format, pointer.media_key.clone(), pointer.blob_id);
        let mut written = Vec::new();
        let io_pointer = encrypt_io(encryptor, &mut ChoppyReader { data: &plaintext, calls: 0 }, &mut written).unwrap();
        assert_eq!((written.as_slice(), &io_pointer), (blob.as_slice(), &pointer));
        let mut decrypted = Vec::new();
        decrypt_io(&pointer, &mut ChoppyReader { data: &blob, calls: 0 }, &mut decrypted).unwrap();
        assert_eq!(decrypted, plaintext);
        let mut tampered = blob.clone();
        tampered[5] ^= 1;
        let error = decrypt_io(&pointer, &mut ChoppyReader { data: &tampered, calls: 0 }, &mut Vec::new());
        assert!(matches!(error, Err(MediaIoError::Media(_))), "{error:?}");
    }
}

/// Known answers computed independently with Python `cryptography` (OpenSSL)
/// straight from the README section, media key = 32 × 0x42, blob id = 16 × 0x01.
/// The short plaintext pins the exact bytes; the 2·64 KiB + 3 one
/// (`(i * 7) mod 256`) pins chunking, the last-chunk flag and the sidecar
/// windows through their digests.
#[test]
fn known_answers_from_an_independent_implementation() {
    let key = SecretKey::new([0x42; 32]);
    let stream_key = bluetick::StreamKey::derive(&key);
    assert_eq!(
        hex::encode(stream_key.cipher_key()),
        "19bcb881c9522270382552702a4ef79482b072ebc36eee5a149b28e123a5674e"
    );
    assert_eq!(hex::encode(stream_key.nonce_prefix()), "d96fa83069bed3");
    let keys = whatsapp::WhatsAppMediaKeys::derive(&key, WhatsAppMediaType::Document);
    assert_eq!(hex::encode(keys.iv()), "be611ee31ea00b3ea042e1ad94e38446");
    assert_eq!(hex::encode(keys.cipher_key()), "7fe6766fbe3ee471bc871421c1635de81ec0cade14981ca625f2232853b390f8");
    assert_eq!(hex::encode(keys.mac_key()), "7367477002bf72126b4cd5173b998ab614b3366f7ff9cbd0ea6e2a518532527c");

    let cases: [(MediaFormat, &str, &str, Option<&str>); 3] = [
        (
            MediaFormat::BluetickV1,
            "a66b978e35cbab016051528a5ce8095ef0ffe60aba7b6db9",
            "27673873469951d6772db9caf5a2b95879cbf6d412de7d17430c5ca4a2b83e6c",
            None,
        ),
        (
            DOCUMENT,
            "fce40a701b33682e9f9c2553e1160a36f384b0196bea2d8b2fe2",
            "318d59628755f97d1c410702b0248e1c82728a9922e12d9b59a1f395fafe6685",
            None,
        ),
        (
            VIDEO,
            "1e999e3f34bff74d717207f6415a17bd43e870300189f4d26439",
            "dd06ca218968576b5c602036be30f50361ac5602dfe172156d15679206e8279e",
            Some("772a3b073531befc3aaf"),
        ),
    ];
    for (format, blob_hex, sha_hex, sidecar_hex) in cases {
        let (blob, pointer) = encrypt(format, key.clone(), BlobId([1; 16]), b"bluetick").unwrap();
        assert_eq!(hex::encode(&blob), blob_hex, "{format:?}");
        assert_eq!(hex::encode(pointer.ciphertext_sha256), sha_hex, "{format:?}");
        assert_eq!(pointer.streaming_sidecar.map(|s| hex::encode(s.as_bytes())).as_deref(), sidecar_hex, "{format:?}");
    }

    let long: Vec<u8> = (0..2 * K + 3).map(|i| (i * 7) as u8).collect();
    let (blob, pointer) = encrypt(MediaFormat::BluetickV1, key.clone(), BlobId([1; 16]), &long).unwrap();
    assert_eq!(blob.len(), 131_123);
    assert_eq!(
        hex::encode(pointer.ciphertext_sha256),
        "882d586b23e8934fab7f46d979aaa6f0be7edf51ef7c0b799b6732ce09c559e4"
    );
    let (blob, pointer) = encrypt(VIDEO, key, BlobId([1; 16]), &long).unwrap();
    assert_eq!(blob.len(), 131_098);
    assert_eq!(
        hex::encode(pointer.ciphertext_sha256),
        "16b4d5134efd9280453f057b4c4b8f3b0959a6185659ff98e3bbd18498fe8f1e"
    );
    assert_eq!(
        hex::encode(pointer.streaming_sidecar.unwrap().as_bytes()),
        "42944b6b777e14427e42429a122fe1c5b781527645fb7f08ee408de20e7f"
    );
}

/// A reader that misbehaves the way `read_some` must survive: a permanent
/// error, or a claim of more bytes than the buffer holds.
struct BadReader {
    claim_too_much: bool,
}

impl Read for BadReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.claim_too_much {
            Ok(buf.len() + 1)
        } else {
            Err(std::io::ErrorKind::BrokenPipe.into())
        }
    }
}

#[test]
fn a_failing_or_lying_reader_is_an_io_error_not_a_loop_or_a_panic() {
    for claim_too_much in [false, true] {
        let encryptor = MediaEncryptor::new(MediaFormat::BluetickV1, SecretKey::new([3; 32]), BlobId([2; 16]));
        let error = encrypt_io(encryptor, &mut BadReader { claim_too_much }, &mut Vec::new());
        assert!(matches!(error, Err(MediaIoError::Io(_))), "{error:?}");
        let (_, _, pointer) = sample(MediaFormat::BluetickV1, 10, 5);
        let error = decrypt_io(&pointer, &mut BadReader { claim_too_much }, &mut Vec::new());
        assert!(matches!(error, Err(MediaIoError::Io(_))), "{error:?}");
    }
}

#[test]
fn the_buffer_bound_is_one_sealed_chunk_and_a_partial_chunk_is_really_buffered() {
    assert_eq!(STREAM_BUFFER_LEN_MAX, 64 * 1024 + 16);
    for format in FORMATS {
        let mut encryptor = MediaEncryptor::new(format, SecretKey::new([4; 32]), BlobId([3; 16]));
        let mut blob = Vec::new();
        encryptor.update(&[7; 1000], &mut blob).unwrap();
        let held = encryptor.buffer_capacity();
        assert!(
            (1000 - blob.len().min(1000)..=STREAM_BUFFER_LEN_MAX).contains(&held) && held > 1,
            "{format:?}: {held}"
        );
        let pointer = encryptor.finish(&mut blob).unwrap();
        let mut decryptor = MediaDecryptor::new(&pointer).unwrap();
        let mut out = Vec::new();
        decryptor.update(&blob[..blob.len() - 1], &mut out).unwrap();
        let held = decryptor.buffer_capacity();
        assert!(held > 1 && held <= STREAM_BUFFER_LEN_MAX, "{format:?}: {held}");
    }
}
