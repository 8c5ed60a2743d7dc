//! `bluetick-v1` attachments: ChaCha20-Poly1305 in the STREAM construction
//! (Hoang, Reyhanitabar, Rogaway, Vizár, "Online Authenticated-Encryption and
//! its Nonce-Reuse Misuse-Resistance", 2015) as implemented by
//! `aead::stream::{EncryptorBE32, DecryptorBE32}`.
//!
//! - `okm = HKDF-SHA256(salt = 32 zero bytes, ikm = media key, info = "bluetick media v1")`,
//!   39 bytes: ChaCha20-Poly1305 key (32) ‖ STREAM nonce prefix (7).
//! - The plaintext is cut into [`CHUNK_LEN`] (64 KiB) chunks. Chunk `i` is sealed
//!   with nonce `prefix (7) ‖ i as u32 big-endian (4) ‖ flag (1)`, where the flag
//!   is `0x01` on the last chunk and `0x00` otherwise, and empty associated data.
//! - Every chunk is exactly 64 KiB except the last, which holds the remaining
//!   1..=65536 bytes; the last chunk is empty only when the whole plaintext is.
//!   So a plaintext of `n` bytes has `max(1, ceil(n / 65536))` chunks, and a
//!   multiple of 64 KiB ends with a full chunk rather than an extra empty one
//!   (the encryptor seals a full chunk only once it sees more input).
//! - The blob is the concatenation of the sealed chunks (each its plaintext plus
//!   a 16-byte tag).
//!
//! The counter makes reordering and duplication fail, and the last-chunk flag
//! makes truncation at a chunk boundary fail even if an attacker could also
//! shorten the announced length.

use chacha20poly1305::aead::stream::{DecryptorBE32, EncryptorBE32};
use chacha20poly1305::aead::KeyInit;
use chacha20poly1305::ChaCha20Poly1305;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use super::{MediaError, CHUNK_LEN, MAX_PLAINTEXT_LEN};
use crate::kdf::{hkdf_sha256, ZERO_SALT};
use crate::keys::SecretKey;

/// HKDF info label of the `bluetick-v1` media key expansion.
pub const INFO: &[u8] = b"bluetick media v1";

/// Poly1305 tag bytes appended to every chunk.
pub const TAG_LEN: usize = 16;

/// Bytes of a full sealed chunk: 64 KiB of ciphertext plus its tag.
pub const SEALED_CHUNK_LEN: usize = CHUNK_LEN + TAG_LEN;

/// Bytes of the nonce prefix: the 12-byte ChaCha20-Poly1305 nonce minus
/// STREAM's 4-byte counter and 1-byte last-chunk flag.
pub const NONCE_PREFIX_LEN: usize = 7;

/// The cipher key and nonce prefix one media key expands to. Redacted in
/// `Debug`, zeroized on drop; public so test vectors can show them.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct StreamKey(Box<[u8; 32 + NONCE_PREFIX_LEN]>);

impl StreamKey {
    /// `HKDF-SHA256(zeros, media key, "bluetick media v1")` → 39 bytes.
    pub fn derive(media_key: &SecretKey) -> Self {
        let okm = hkdf_sha256::<{ 32 + NONCE_PREFIX_LEN }>(&ZERO_SALT, media_key.as_bytes(), INFO);
        StreamKey(Box::new(*okm))
    }

    /// The ChaCha20-Poly1305 key (first 32 bytes).
    pub fn cipher_key(&self) -> [u8; 32] {
        let mut key = [0u8; 32];
        key.copy_from_slice(&self.0[..32]);
        key
    }

    /// The STREAM nonce prefix (last 7 bytes).
    pub fn nonce_prefix(&self) -> [u8; NONCE_PREFIX_LEN] {
        let mut prefix = [0u8; NONCE_PREFIX_LEN];
        prefix.copy_from_slice(&self.0[32..]);
        prefix
    }

    fn cipher(&self) -> ChaCha20Poly1305 {
        let key = Zeroizing::new(self.cipher_key());
        ChaCha20Poly1305::new((&*key).into())
    }
}

impl std::fmt::Debug for StreamKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StreamKey([redacted])")
    }
}

/// Number of chunks a plaintext of `plaintext_len` bytes is cut into.
pub fn chunk_count(plaintext_len: u64) -> u64 {
    plaintext_len.div_ceil(CHUNK_LEN as u64).max(1)
}

/// Blob length for `plaintext_len` bytes: the plaintext plus one tag per chunk
/// (saturating, so a hostile length cannot overflow; real callers stay within
/// [`MAX_PLAINTEXT_LEN`]).
pub fn ciphertext_len(plaintext_len: u64) -> u64 {
    plaintext_len.saturating_add(TAG_LEN as u64 * chunk_count(plaintext_len))
}

/// The encrypting half: buffers up to one chunk of plaintext.
pub(crate) struct ChunkSealer {
    stream: EncryptorBE32<ChaCha20Poly1305>,
    /// Plaintext of the current chunk; sealed in place, hence the room for a tag.
    chunk: Zeroizing<Vec<u8>>,
}

impl ChunkSealer {
    pub(crate) fn new(media_key: &SecretKey) -> Self {
        let key = StreamKey::derive(media_key);
        let stream = EncryptorBE32::from_aead(key.cipher(), (&key.nonce_prefix()).into());
        ChunkSealer { stream, chunk: Zeroizing::new(Vec::with_capacity(SEALED_CHUNK_LEN)) }
    }

    pub(crate) fn update(&mut self, mut input: &[u8], out: &mut Vec<u8>) -> Result<(), MediaError> {
        while !input.is_empty() {
            // A full chunk is sealed only now that more plaintext follows it, so
            // it is known not to be the last one.
            if self.chunk.len() == CHUNK_LEN {
                self.stream
                    .encrypt_next_in_place(&[], &mut *self.chunk)
                    .map_err(|_| MediaError::PlaintextTooLong { len_max: MAX_PLAINTEXT_LEN })?;
                out.extend_from_slice(&self.chunk);
                self.chunk.clear();
            }
            let take = (CHUNK_LEN - self.chunk.len()).min(input.len());
            let (head, rest) = input.split_at(take);
            self.chunk.extend_from_slice(head);
            input = rest;
        }
        Ok(())
    }

    pub(crate) fn finish(self, out: &mut Vec<u8>) -> Result<(), MediaError> {
        let ChunkSealer { stream, mut chunk } = self;
        stream
            .encrypt_last_in_place(&[], &mut *chunk)
            .map_err(|_| MediaError::PlaintextTooLong { len_max: MAX_PLAINTEXT_LEN })?;
        out.extend_from_slice(&chunk);
        Ok(())
    }

    pub(crate) fn buffer_capacity(&self) -> usize {
        self.chunk.capacity()
    }
}

/// The decrypting half: collects one sealed chunk at a time. Chunk sizes are
/// known in advance from the pointer's plaintext length.
pub(crate) struct ChunkOpener {
    /// `None` once the last chunk has been opened (which consumes the decryptor).
    stream: Option<DecryptorBE32<ChaCha20Poly1305>>,
    chunk: Zeroizing<Vec<u8>>,
    chunk_count: u64,
    index: u64,
    last_sealed_len: usize,
}

impl ChunkOpener {
    /// `plaintext_len` must already be checked against [`MAX_PLAINTEXT_LEN`].
    pub(crate) fn new(media_key: &SecretKey, plaintext_len: u64) -> Self {
        let key = StreamKey::derive(media_key);
        let stream = DecryptorBE32::from_aead(key.cipher(), (&key.nonce_prefix()).into());
        let chunk_count = chunk_count(plaintext_len);
        // The last chunk holds what the full ones before it leave: 0..=CHUNK_LEN bytes.
        let last_plain = plaintext_len - (chunk_count - 1) * CHUNK_LEN as u64;
        ChunkOpener {
            stream: Some(stream),
            chunk: Zeroizing::new(Vec::with_capacity(SEALED_CHUNK_LEN)),
            chunk_count,
            index: 0,
            last_sealed_len: usize::try_from(last_plain).unwrap_or(CHUNK_LEN) + TAG_LEN,
        }
    }

    /// The caller never passes bytes beyond the blob's expected length.
    pub(crate) fn update(&mut self, mut input: &[u8], out: &mut Vec<u8>) -> Result<(), MediaError> {
        while !input.is_empty() && self.index < self.chunk_count {
            let is_last = self.index + 1 == self.chunk_count;
            let sealed_len = if is_last { self.last_sealed_len } else { SEALED_CHUNK_LEN };
            let take = sealed_len.saturating_sub(self.chunk.len()).min(input.len());
            let (head, rest) = input.split_at(take);
            self.chunk.extend_from_slice(head);
            input = rest;
            if self.chunk.len() == sealed_len {
                self.open_chunk(is_last)?;
                out.extend_from_slice(&self.chunk);
                self.chunk.clear();
                self.index += 1;
            }
        }
        Ok(())
    }

    fn open_chunk(&mut self, is_last: bool) -> Result<(), MediaError> {
        let rejected = MediaError::ChunkRejected { index: self.index };
        let opened = if is_last {
            match self.stream.take() {
                Some(stream) => stream.decrypt_last_in_place(&[], &mut *self.chunk),
                None => return Err(rejected),
            }
        } else {
            match self.stream.as_mut() {
                Some(stream) => stream.decrypt_next_in_place(&[], &mut *self.chunk),
                None => return Err(rejected),
            }
        };
        opened.map_err(|_| rejected)
    }

    /// All chunks arrive before `finish` (the caller checked the length), so this
    /// only confirms the last one was opened.
    pub(crate) fn finish(self) -> Result<(), MediaError> {
        if self.index == self.chunk_count {
            Ok(())
        } else {
            Err(MediaError::ChunkRejected { index: self.index })
        }
    }

    pub(crate) fn buffer_capacity(&self) -> usize {
        self.chunk.capacity()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::suite::chacha_seal;

    /// Rebuilds a blob from the module docs alone, with one-shot
    /// ChaCha20-Poly1305 and hand-made nonces, and compares it with the
    /// STREAM-based encryptor: the documented layout is the implemented one.
    #[test]
    fn chunks_follow_the_documented_nonce_layout() {
        let media_key = SecretKey::new([0x42; 32]);
        let key = StreamKey::derive(&media_key);
        let okm = hkdf_sha256::<39>(&[0u8; 32], &[0x42; 32], b"bluetick media v1");
        assert_eq!(key.cipher_key(), okm[..32]);
        assert_eq!(key.nonce_prefix(), okm[32..]);
        for len in [0usize, 5, CHUNK_LEN, 2 * CHUNK_LEN + 3] {
            let plaintext: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
            let mut expected = Vec::new();
            let chunks: Vec<&[u8]> = if len == 0 { vec![&[]] } else { plaintext.chunks(CHUNK_LEN).collect() };
            for (i, chunk) in chunks.iter().enumerate() {
                let mut seal_okm = [0u8; 44];
                seal_okm[..39].copy_from_slice(&okm[..]);
                seal_okm[39..43].copy_from_slice(&(i as u32).to_be_bytes());
                seal_okm[43] = u8::from(i + 1 == chunks.len());
                expected.extend(chacha_seal(&seal_okm, &[], chunk));
            }
            let mut sealer = ChunkSealer::new(&media_key);
            let mut blob = Vec::new();
            sealer.update(&plaintext, &mut blob).unwrap();
            sealer.finish(&mut blob).unwrap();
            assert_eq!(blob, expected, "plaintext of {len} bytes");
            assert_eq!(blob.len() as u64, ciphertext_len(len as u64));
        }
    }

    #[test]
    fn chunk_count_rounds_up_with_a_full_last_chunk() {
        let k = CHUNK_LEN as u64;
        assert_eq!(
            [0, 1, k - 1, k, k + 1, 2 * k, 2 * k + 1].map(chunk_count),
            [1, 1, 1, 1, 2, 2, 3],
            "a multiple of 64 KiB ends with a full chunk, not an extra empty one"
        );
        assert_eq!(ciphertext_len(0), 16);
        assert_eq!(ciphertext_len(k), k + 16);
        assert_eq!(ciphertext_len(k + 1), k + 1 + 32);
        assert_eq!(ciphertext_len(MAX_PLAINTEXT_LEN), MAX_PLAINTEXT_LEN + 16 * (1 << 32));
    }

    #[test]
    fn stream_key_debug_is_redacted() {
        let key = StreamKey::derive(&SecretKey::new([1; 32]));
        assert_eq!(format!("{key:?}"), "StreamKey([redacted])");
    }
}
