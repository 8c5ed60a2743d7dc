//! Properties of the media formats through the public API only: any plaintext
//! split any way into `update` calls encrypts to the whole-buffer bytes and
//! decrypts back, and no single flipped bit of a blob gets through.
//!
//! Case counts are modest because the ciphers run unoptimized in test builds.

use bluetick_crypto::media::{
    bluetick, decrypt, encrypt, BlobId, MediaDecryptor, MediaEncryptor, MediaError, MediaFormat, WhatsAppMediaType,
};
use bluetick_crypto::SecretKey;
use proptest::prelude::*;
use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};

const MAX_LEN: usize = 300 * 1024;

fn format() -> impl Strategy<Value = MediaFormat> {
    prop_oneof![
        Just(MediaFormat::BluetickV1),
        Just(MediaFormat::WhatsAppV1(WhatsAppMediaType::Video)),
        Just(MediaFormat::WhatsAppV1(WhatsAppMediaType::Document)),
    ]
}

/// Plaintext and key from a seed, so shrinking acts on `(seed, len)` instead
/// of on hundreds of KiB of bytes.
fn material(seed: u64, len: usize) -> (Vec<u8>, SecretKey) {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let mut plaintext = vec![0u8; len];
    rng.fill_bytes(&mut plaintext);
    (plaintext, SecretKey::generate(&mut rng))
}

/// Cuts `bytes` at the given slice lengths (cycled), never at zero width.
fn split<'a>(bytes: &'a [u8], widths: &[usize]) -> Vec<&'a [u8]> {
    let mut slices = Vec::new();
    let mut rest = bytes;
    let mut widths = widths.iter().cycle();
    while !rest.is_empty() {
        let width = widths.next().copied().unwrap_or(rest.len()).clamp(1, rest.len());
        let (head, tail) = rest.split_at(width);
        slices.push(head);
        rest = tail;
    }
    slices
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn any_split_round_trips_and_matches_the_whole_buffer_blob(
        format in format(),
        seed in any::<u64>(),
        len in 0..=MAX_LEN,
        widths in proptest::collection::vec(1usize..90_000, 1..6),
    ) {
        let (plaintext, key) = material(seed, len);
        let (blob, pointer) = encrypt(format, key.clone(), BlobId([3; 16]), &plaintext).unwrap();

        let mut encryptor = MediaEncryptor::new(format, key, BlobId([3; 16]));
        let mut streamed = Vec::new();
        for slice in split(&plaintext, &widths) {
            encryptor.update(slice, &mut streamed).unwrap();
        }
        let streamed_pointer = encryptor.finish(&mut streamed).unwrap();
        prop_assert_eq!(&streamed, &blob);
        prop_assert_eq!(&streamed_pointer, &pointer);

        let mut decryptor = MediaDecryptor::new(&pointer).unwrap();
        let mut released = Vec::new();
        for slice in split(&blob, &widths) {
            decryptor.update(slice, &mut released).unwrap();
        }
        decryptor.finish(&mut released).unwrap();
        prop_assert_eq!(&released, &plaintext);
        let decrypted = decrypt(&pointer, &blob).unwrap();
        prop_assert_eq!(decrypted.as_slice(), &plaintext[..]);
    }

    #[test]
    fn any_single_flipped_bit_is_rejected(
        format in format(),
        seed in any::<u64>(),
        len in 0..=MAX_LEN,
        position in any::<prop::sample::Index>(),
        bit in 0u8..8,
    ) {
        let (plaintext, key) = material(seed, len);
        let (mut blob, pointer) = encrypt(format, key, BlobId([3; 16]), &plaintext).unwrap();
        let offset = position.index(blob.len());
        blob[offset] ^= 1 << bit;
        let expected = match format {
            MediaFormat::BluetickV1 => MediaError::ChunkRejected { index: (offset / bluetick::SEALED_CHUNK_LEN) as u64 },
            MediaFormat::WhatsAppV1(_) => MediaError::MacMismatch,
        };
        prop_assert_eq!(decrypt(&pointer, &blob).map(|_| ()), Err(expected));

        let mut decryptor = MediaDecryptor::new(&pointer).unwrap();
        let mut released = Vec::new();
        let streamed = decryptor.update(&blob, &mut released).and_then(|()| decryptor.finish(&mut released));
        prop_assert!(streamed.is_err(), "streaming accepted a flip at byte {}", offset);
    }
}
