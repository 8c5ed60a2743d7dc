//! Client-side attachment encryption: the sender encrypts a file under a fresh
//! media key, uploads the ciphertext as an opaque blob, and sends a
//! [`MediaPointer`] (blob id, key, digest, length) inside an end-to-end
//! encrypted message. The server only ever stores ciphertext.
//!
//! # Formats
//! - [`MediaFormat::BluetickV1`] (default, [`bluetick`]): ChaCha20-Poly1305 in
//!   the STREAM construction over 64 KiB chunks. Every chunk is authenticated on
//!   its own, so a receiver can release plaintext chunk by chunk, and
//!   truncation, reordering and duplication are caught by the chunk counter and
//!   last-chunk flag in the nonce.
//! - [`MediaFormat::WhatsAppV1`] ([`whatsapp`]): WhatsApp's documented format,
//!   AES-256-CBC/PKCS#7 plus one truncated HMAC-SHA256 over the whole file, with
//!   the optional per-64 KiB "streaming sidecar" for video and audio.
//!
//! # Streaming, sans-IO
//! [`MediaEncryptor`] and [`MediaDecryptor`] are push APIs: the caller feeds
//! slices of any size to `update`, which appends output to a caller-owned
//! `Vec`, then calls `finish`. Nothing here reads files or sockets; each object
//! buffers at most [`STREAM_BUFFER_LEN_MAX`] bytes whatever the file size
//! ([`MediaEncryptor::buffer_capacity`] lets a test check it). The whole-buffer
//! [`encrypt`] / [`decrypt`] and the `std::io` adapters [`encrypt_io`] /
//! [`decrypt_io`] are thin loops over the push API.
//!
//! # What decryption checks
//! The pointer travels inside an authenticated message, so its fields are
//! trusted: the plaintext length fixes the exact ciphertext length, and
//! decryption reports [`MediaError::Truncated`] / [`MediaError::TrailingData`]
//! against it. Then, in this order: per-format authenticity (chunk tags;
//! or the file MAC, sidecar and padding), and finally the SHA-256 of the
//! ciphertext against [`MediaPointer::ciphertext_sha256`].
//!
//! Plaintext released by `update` before `finish` returns `Ok` is authentic
//! chunk by chunk (`bluetick-v1`), or window by window when a `whatsapp-v1`
//! pointer carries a sidecar; a `whatsapp-v1` file without a sidecar cannot be
//! authenticated before its last byte, so its streamed plaintext is unverified
//! until `finish` succeeds. Either way a caller must discard everything it
//! received if `finish` (or any `update`) fails. The whole-buffer [`decrypt`]
//! returns plaintext only after every check passed, and for `whatsapp-v1`
//! verifies the file MAC before decrypting a single block.
//!
//! The streaming objects hold hash and cipher states that have no stable
//! serialization, so they are not `Serialize`: a crash mid-transfer restarts
//! the file (the pointer, which is the persistent state, is serde).

pub mod bluetick;
pub mod whatsapp;

use std::fmt;
use std::io::{Read, Write};

use rand_core::{CryptoRng, RngCore};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::keys::SecretKey;
pub use whatsapp::{StreamingSidecar, WhatsAppMediaType};

/// Plaintext bytes per `bluetick-v1` chunk, and the width of a `whatsapp-v1`
/// sidecar window. 64 KiB keeps the 16-byte tag overhead at 0.02 % while a
/// streaming peer buffers little, and it is WhatsApp's own sidecar window, so
/// both formats seek at the same granularity.
pub const CHUNK_LEN: usize = 64 * 1024;

/// Largest plaintext either format accepts: 2^48 bytes (256 TiB). The bound is
/// `bluetick-v1`'s 32-bit STREAM chunk counter (2^32 chunks of 64 KiB); it is
/// applied to both formats so that length arithmetic on a peer's pointer can
/// never overflow a `u64`.
pub const MAX_PLAINTEXT_LEN: u64 = 1 << 48;

/// Most bytes any streaming encryptor or decryptor here keeps buffered: one
/// sealed `bluetick-v1` chunk (64 KiB of data plus its 16-byte tag). This is
/// what makes memory use independent of the file size.
pub const STREAM_BUFFER_LEN_MAX: usize = CHUNK_LEN + bluetick::TAG_LEN;

/// Bytes read per call by the `std::io` adapters: one chunk, so a read maps to
/// at most one sealed chunk of output.
const IO_READ_LEN: usize = CHUNK_LEN;

/// Which attachment format a pointer's blob is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum MediaFormat {
    /// ChaCha20-Poly1305 STREAM over 64 KiB chunks (see [`bluetick`]).
    #[default]
    #[serde(rename = "bluetick-v1")]
    BluetickV1,
    /// WhatsApp's AES-256-CBC + HMAC-SHA256 format (see [`whatsapp`]); the media
    /// type selects the key-derivation label.
    #[serde(rename = "whatsapp-v1")]
    WhatsAppV1(WhatsAppMediaType),
}

impl MediaFormat {
    /// Stable name used in scenario files, vectors and persisted state.
    pub fn name(self) -> &'static str {
        match self {
            MediaFormat::BluetickV1 => "bluetick-v1",
            MediaFormat::WhatsAppV1(_) => "whatsapp-v1",
        }
    }

    /// Exact length of the blob this format produces for `plaintext_len` bytes
    /// (what an uploader should announce, and what a downloader must receive).
    pub fn ciphertext_len(self, plaintext_len: u64) -> Result<u64, MediaError> {
        if plaintext_len > MAX_PLAINTEXT_LEN {
            return Err(MediaError::PlaintextTooLong { len_max: MAX_PLAINTEXT_LEN });
        }
        // Cannot overflow: both expansions are a few bytes per 16 or 64 KiB of a
        // length bounded by 2^48.
        Ok(match self {
            MediaFormat::BluetickV1 => bluetick::ciphertext_len(plaintext_len),
            MediaFormat::WhatsAppV1(_) => whatsapp::file_len(plaintext_len),
        })
    }
}

/// The server-side name of an uploaded blob: 16 bytes, opaque to the server.
///
/// The caller chooses it (so a server that assigns ids can supply its own);
/// [`BlobId::generate`] draws one from the injected RNG, which is what
/// [`MediaEncryptor::generate`] does.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct BlobId(#[serde(with = "crate::bytes_serde::fixed")] pub [u8; 16]);

impl BlobId {
    /// Draws 16 fresh bytes from the injected RNG.
    pub fn generate<R: RngCore + CryptoRng>(rng: &mut R) -> Self {
        let mut id = [0u8; 16];
        rng.fill_bytes(&mut id);
        BlobId(id)
    }
}

impl fmt::Debug for BlobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BlobId({})", hex::encode(self.0))
    }
}

/// Everything a recipient needs to fetch and decrypt one attachment; it is sent
/// inside an end-to-end encrypted message, never to the server in the clear.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MediaPointer {
    /// Format of the blob.
    pub format: MediaFormat,
    /// Where the blob is stored.
    pub blob_id: BlobId,
    /// The fresh per-attachment key every other key is derived from.
    pub media_key: SecretKey,
    /// SHA-256 of the whole blob exactly as uploaded (for `whatsapp-v1` that
    /// includes the trailing 10-byte MAC: WhatsApp's `fileEncSha256`).
    #[serde(with = "crate::bytes_serde::fixed")]
    pub ciphertext_sha256: [u8; 32],
    /// Length of the plaintext in bytes; fixes the exact blob length.
    pub plaintext_len: u64,
    /// `whatsapp-v1` video and audio only: one 10-byte MAC per 64 KiB window of
    /// the blob, so a player can verify a byte range before decrypting it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub streaming_sidecar: Option<StreamingSidecar>,
}

impl fmt::Debug for MediaPointer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MediaPointer")
            .field("format", &self.format)
            .field("blob_id", &self.blob_id)
            .field("media_key", &self.media_key)
            .field("ciphertext_sha256", &hex::encode(self.ciphertext_sha256))
            .field("plaintext_len", &self.plaintext_len)
            .field("streaming_sidecar", &self.streaming_sidecar)
            .finish()
    }
}

/// Why an attachment did not encrypt or decrypt.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MediaError {
    /// The plaintext (or a pointer's claimed length) is beyond [`MAX_PLAINTEXT_LEN`].
    #[error("plaintext longer than the {len_max}-byte limit")]
    PlaintextTooLong {
        /// The limit.
        len_max: u64,
    },
    /// The blob ended before the length the pointer's plaintext length implies.
    #[error(
        "blob ended after {ciphertext_len_received} bytes; the pointer's plaintext length implies {ciphertext_len_expected}"
    )]
    Truncated {
        /// Blob length implied by the pointer.
        ciphertext_len_expected: u64,
        /// Bytes received before `finish`.
        ciphertext_len_received: u64,
    },
    /// The blob continues past the length the pointer's plaintext length implies.
    #[error("blob continues past the {ciphertext_len_expected} bytes the pointer's plaintext length implies")]
    TrailingData {
        /// Blob length implied by the pointer.
        ciphertext_len_expected: u64,
    },
    /// A `bluetick-v1` chunk failed authentication at this position: it was
    /// modified, moved, duplicated, cut short by a lying length, or the key is wrong.
    #[error("bluetick-v1 chunk {index} failed authentication")]
    ChunkRejected {
        /// Zero-based position of the first chunk that did not verify.
        index: u64,
    },
    /// The `whatsapp-v1` file MAC does not verify: modified blob or wrong key.
    #[error("whatsapp-v1 file MAC does not verify")]
    MacMismatch,
    /// A `whatsapp-v1` sidecar window does not match the bytes it covers.
    #[error("whatsapp-v1 sidecar window {window} does not verify")]
    SidecarMismatch {
        /// Zero-based window index.
        window: u64,
    },
    /// The sidecar does not have one 10-byte entry per window of the blob
    /// (`bluetick-v1` blobs have no sidecar, so expect 0).
    #[error("sidecar of {len} bytes; a {ciphertext_len}-byte blob needs {len_expected}")]
    SidecarLength {
        /// Bytes in the sidecar.
        len: usize,
        /// Bytes it should have.
        len_expected: usize,
        /// Length of the blob it describes.
        ciphertext_len: u64,
    },
    /// A byte range handed to [`whatsapp::verify_sidecar_range`] does not span
    /// whole windows (see [`whatsapp::sidecar_window_span`]).
    #[error("a {span_len}-byte range from window {first_window} does not span whole windows of a {ciphertext_len}-byte blob")]
    SidecarRange {
        /// First window the caller asked for.
        first_window: u64,
        /// Length of the range given.
        span_len: usize,
        /// Length of the whole blob.
        ciphertext_len: u64,
    },
    /// The MAC verified but the final `whatsapp-v1` block's PKCS#7 padding is
    /// malformed: the sender produced a broken file.
    #[error("whatsapp-v1 final block has malformed PKCS#7 padding")]
    BadPadding,
    /// The MAC verified but the padding says the plaintext has a different length
    /// than the pointer (possible within one 16-byte block).
    #[error("decrypted {plaintext_len_actual} bytes; the pointer promises {plaintext_len_expected}")]
    PlaintextLengthMismatch {
        /// Length the pointer promises.
        plaintext_len_expected: u64,
        /// Length the padding implies.
        plaintext_len_actual: u64,
    },
    /// The blob's SHA-256 differs from the pointer's.
    #[error("blob SHA-256 is {}, the pointer promises {}", hex::encode(.actual), hex::encode(.expected))]
    DigestMismatch {
        /// Digest from the pointer.
        expected: [u8; 32],
        /// Digest of the bytes received.
        actual: [u8; 32],
    },
}

/// Errors of the `std::io` adapters: the reader or writer failed, or the media did.
#[derive(Debug, thiserror::Error)]
pub enum MediaIoError {
    /// Reading or writing failed.
    #[error("media I/O failed: {0}")]
    Io(#[from] std::io::Error),
    /// Encryption or decryption failed.
    #[error(transparent)]
    Media(#[from] MediaError),
}

enum SealerInner {
    Bluetick(bluetick::ChunkSealer),
    // Boxed: the AES key schedules dwarf the other variant, and moves of the
    // encryptor then leave no copies of them behind.
    WhatsApp(Box<whatsapp::CbcSealer>),
}

/// Streaming encryptor for one attachment. Call [`update`](Self::update) with
/// the plaintext in slices of any size, then [`finish`](Self::finish), which
/// returns the pointer to send. The ciphertext bytes do not depend on how the
/// plaintext was sliced.
pub struct MediaEncryptor {
    format: MediaFormat,
    blob_id: BlobId,
    media_key: SecretKey,
    inner: SealerInner,
    sha256: Sha256,
    plaintext_len: u64,
}

impl MediaEncryptor {
    /// Starts encrypting under `media_key`, which must be fresh for this
    /// attachment (normally [`SecretKey::generate`]).
    pub fn new(format: MediaFormat, media_key: SecretKey, blob_id: BlobId) -> Self {
        let inner = match format {
            MediaFormat::BluetickV1 => SealerInner::Bluetick(bluetick::ChunkSealer::new(&media_key)),
            MediaFormat::WhatsAppV1(media_type) => {
                SealerInner::WhatsApp(Box::new(whatsapp::CbcSealer::new(&media_key, media_type)))
            }
        };
        MediaEncryptor { format, blob_id, media_key, inner, sha256: Sha256::new(), plaintext_len: 0 }
    }

    /// Starts encrypting under a fresh media key and blob id drawn from `rng`,
    /// in that order (32 bytes of key, then 16 bytes of id).
    pub fn generate<R: RngCore + CryptoRng>(format: MediaFormat, rng: &mut R) -> Self {
        let media_key = SecretKey::generate(rng);
        let blob_id = BlobId::generate(rng);
        Self::new(format, media_key, blob_id)
    }

    /// Encrypts `input`, appending whatever ciphertext is ready to `out`.
    /// At most one chunk stays buffered inside.
    pub fn update(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(), MediaError> {
        let len = self
            .plaintext_len
            .checked_add(input.len() as u64)
            .filter(|len| *len <= MAX_PLAINTEXT_LEN)
            .ok_or(MediaError::PlaintextTooLong { len_max: MAX_PLAINTEXT_LEN })?;
        let start = out.len();
        match &mut self.inner {
            SealerInner::Bluetick(sealer) => sealer.update(input, out)?,
            SealerInner::WhatsApp(sealer) => sealer.update(input, out),
        }
        self.sha256.update(out.get(start..).unwrap_or_default());
        self.plaintext_len = len;
        Ok(())
    }

    /// Seals the final chunk (or padding block and MAC) into `out` and returns
    /// the pointer describing the complete blob.
    pub fn finish(self, out: &mut Vec<u8>) -> Result<MediaPointer, MediaError> {
        let MediaEncryptor { format, blob_id, media_key, inner, mut sha256, plaintext_len } = self;
        let start = out.len();
        let streaming_sidecar = match inner {
            SealerInner::Bluetick(sealer) => {
                sealer.finish(out)?;
                None
            }
            SealerInner::WhatsApp(sealer) => sealer.finish(out),
        };
        sha256.update(out.get(start..).unwrap_or_default());
        Ok(MediaPointer {
            format,
            blob_id,
            media_key,
            ciphertext_sha256: sha256.finalize().into(),
            plaintext_len,
            streaming_sidecar,
        })
    }

    /// Bytes currently reserved for buffering; never above [`STREAM_BUFFER_LEN_MAX`].
    pub fn buffer_capacity(&self) -> usize {
        match &self.inner {
            SealerInner::Bluetick(sealer) => sealer.buffer_capacity(),
            SealerInner::WhatsApp(sealer) => sealer.buffer_capacity(),
        }
    }
}

impl fmt::Debug for MediaEncryptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MediaEncryptor")
            .field("format", &self.format)
            .field("blob_id", &self.blob_id)
            .field("media_key", &self.media_key)
            .field("plaintext_len", &self.plaintext_len)
            .finish_non_exhaustive()
    }
}

enum OpenerInner {
    Bluetick(bluetick::ChunkOpener),
    WhatsApp(Box<whatsapp::CbcOpener>),
}

/// Streaming decryptor for one attachment, driven like [`MediaEncryptor`]:
/// [`update`](Self::update) with the blob in slices of any size, then
/// [`finish`](Self::finish). Read the module docs for when released plaintext
/// is authentic. After any error the decryptor stays failed and repeats it.
pub struct MediaDecryptor {
    inner: OpenerInner,
    ciphertext_len_expected: u64,
    ciphertext_len_received: u64,
    ciphertext_sha256_expected: [u8; 32],
    sha256: Sha256,
    failed: Option<MediaError>,
}

impl MediaDecryptor {
    /// Prepares to decrypt the blob `pointer` describes. Fails if the pointer's
    /// length is beyond [`MAX_PLAINTEXT_LEN`] or its sidecar has the wrong size.
    pub fn new(pointer: &MediaPointer) -> Result<Self, MediaError> {
        let ciphertext_len_expected = pointer.format.ciphertext_len(pointer.plaintext_len)?;
        let inner = match pointer.format {
            MediaFormat::BluetickV1 => {
                if let Some(sidecar) = &pointer.streaming_sidecar {
                    return Err(MediaError::SidecarLength {
                        len: sidecar.as_bytes().len(),
                        len_expected: 0,
                        ciphertext_len: ciphertext_len_expected,
                    });
                }
                OpenerInner::Bluetick(bluetick::ChunkOpener::new(&pointer.media_key, pointer.plaintext_len))
            }
            MediaFormat::WhatsAppV1(media_type) => OpenerInner::WhatsApp(Box::new(whatsapp::CbcOpener::new(
                &pointer.media_key,
                media_type,
                pointer.plaintext_len,
                pointer.streaming_sidecar.as_ref(),
            )?)),
        };
        Ok(MediaDecryptor {
            inner,
            ciphertext_len_expected,
            ciphertext_len_received: 0,
            ciphertext_sha256_expected: pointer.ciphertext_sha256,
            sha256: Sha256::new(),
            failed: None,
        })
    }

    /// Consumes the next `input` bytes of the blob, appending plaintext that is
    /// ready to `out`.
    pub fn update(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(), MediaError> {
        if let Some(error) = &self.failed {
            return Err(error.clone());
        }
        let result = self.update_unchecked(input, out);
        if let Err(error) = &result {
            self.failed = Some(error.clone());
        }
        result
    }

    fn update_unchecked(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(), MediaError> {
        let remaining = self.ciphertext_len_expected.saturating_sub(self.ciphertext_len_received);
        let take = usize::try_from(remaining).unwrap_or(usize::MAX).min(input.len());
        let (body, extra) = input.split_at(take);
        self.sha256.update(body);
        self.ciphertext_len_received += body.len() as u64;
        match &mut self.inner {
            OpenerInner::Bluetick(opener) => opener.update(body, out)?,
            OpenerInner::WhatsApp(opener) => opener.update(body, out)?,
        }
        if !extra.is_empty() {
            return Err(MediaError::TrailingData { ciphertext_len_expected: self.ciphertext_len_expected });
        }
        Ok(())
    }

    /// Runs the end-of-blob checks (length, MAC / sidecar / padding, digest) and
    /// appends any plaintext held back for them to `out`.
    pub fn finish(self, out: &mut Vec<u8>) -> Result<(), MediaError> {
        if let Some(error) = self.failed {
            return Err(error);
        }
        if self.ciphertext_len_received < self.ciphertext_len_expected {
            return Err(MediaError::Truncated {
                ciphertext_len_expected: self.ciphertext_len_expected,
                ciphertext_len_received: self.ciphertext_len_received,
            });
        }
        let mut tail = Zeroizing::new(Vec::new());
        match self.inner {
            OpenerInner::Bluetick(opener) => opener.finish()?,
            OpenerInner::WhatsApp(opener) => opener.finish(&mut tail)?,
        }
        let actual: [u8; 32] = self.sha256.finalize().into();
        if actual != self.ciphertext_sha256_expected {
            return Err(MediaError::DigestMismatch { expected: self.ciphertext_sha256_expected, actual });
        }
        out.extend_from_slice(&tail);
        Ok(())
    }

    /// Bytes currently reserved for buffering; never above [`STREAM_BUFFER_LEN_MAX`].
    pub fn buffer_capacity(&self) -> usize {
        match &self.inner {
            OpenerInner::Bluetick(opener) => opener.buffer_capacity(),
            OpenerInner::WhatsApp(opener) => opener.buffer_capacity(),
        }
    }
}

impl fmt::Debug for MediaDecryptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MediaDecryptor")
            .field("ciphertext_len_expected", &self.ciphertext_len_expected)
            .field("ciphertext_len_received", &self.ciphertext_len_received)
            .field("failed", &self.failed)
            .finish_non_exhaustive()
    }
}

/// Encrypts a whole plaintext at once; returns the blob to upload and the
/// pointer to send.
pub fn encrypt(
    format: MediaFormat,
    media_key: SecretKey,
    blob_id: BlobId,
    plaintext: &[u8],
) -> Result<(Vec<u8>, MediaPointer), MediaError> {
    let capacity = format.ciphertext_len(plaintext.len() as u64)?;
    let mut out = Vec::with_capacity(usize::try_from(capacity).unwrap_or(0));
    let mut encryptor = MediaEncryptor::new(format, media_key, blob_id);
    encryptor.update(plaintext, &mut out)?;
    let pointer = encryptor.finish(&mut out)?;
    Ok((out, pointer))
}

/// Decrypts a whole blob at once. Plaintext is returned only after every check
/// passed; for `whatsapp-v1` the file MAC is verified before any block is
/// decrypted.
pub fn decrypt(pointer: &MediaPointer, ciphertext: &[u8]) -> Result<Zeroizing<Vec<u8>>, MediaError> {
    let mut decryptor = MediaDecryptor::new(pointer)?;
    if let MediaFormat::WhatsAppV1(media_type) = pointer.format {
        let ciphertext_len_expected = decryptor.ciphertext_len_expected;
        let ciphertext_len_received = ciphertext.len() as u64;
        if ciphertext_len_received < ciphertext_len_expected {
            return Err(MediaError::Truncated { ciphertext_len_expected, ciphertext_len_received });
        }
        if ciphertext_len_received > ciphertext_len_expected {
            return Err(MediaError::TrailingData { ciphertext_len_expected });
        }
        whatsapp::verify_file_mac(&whatsapp::WhatsAppMediaKeys::derive(&pointer.media_key, media_type), ciphertext)?;
    }
    // Sized from the bytes in hand, never from the pointer's claimed length.
    let mut out = Zeroizing::new(Vec::with_capacity(ciphertext.len()));
    decryptor.update(ciphertext, &mut out)?;
    decryptor.finish(&mut out)?;
    Ok(out)
}

/// Encrypts everything `reader` yields into `writer` through the push API, in
/// constant memory, and returns the pointer.
pub fn encrypt_io<R: Read, W: Write>(
    mut encryptor: MediaEncryptor,
    reader: &mut R,
    writer: &mut W,
) -> Result<MediaPointer, MediaIoError> {
    let mut input = Zeroizing::new(vec![0u8; IO_READ_LEN]);
    let mut out = Vec::with_capacity(STREAM_BUFFER_LEN_MAX);
    while let Some(len) = read_some(reader, &mut input)? {
        encryptor.update(input.get(..len).unwrap_or_default(), &mut out)?;
        writer.write_all(&out)?;
        out.clear();
    }
    let pointer = encryptor.finish(&mut out)?;
    writer.write_all(&out)?;
    writer.flush()?;
    Ok(pointer)
}

/// Decrypts the blob `reader` yields into `writer` through the push API, in
/// constant memory. The writer receives plaintext as it is released (see the
/// module docs); on error, discard what it received.
pub fn decrypt_io<R: Read, W: Write>(
    pointer: &MediaPointer,
    reader: &mut R,
    writer: &mut W,
) -> Result<(), MediaIoError> {
    let mut decryptor = MediaDecryptor::new(pointer)?;
    let mut input = vec![0u8; IO_READ_LEN];
    let mut out = Zeroizing::new(Vec::with_capacity(STREAM_BUFFER_LEN_MAX));
    while let Some(len) = read_some(reader, &mut input)? {
        decryptor.update(input.get(..len).unwrap_or_default(), &mut out)?;
        writer.write_all(&out)?;
        out.clear();
    }
    decryptor.finish(&mut out)?;
    writer.write_all(&out)?;
    writer.flush()?;
    Ok(())
}

/// One `read`, retried on `Interrupted`; `None` at end of input. A reader that
/// claims more bytes than the buffer holds is an error, not a panic.
fn read_some<R: Read>(reader: &mut R, buf: &mut [u8]) -> Result<Option<usize>, std::io::Error> {
    loop {
        match reader.read(buf) {
            Ok(0) => return Ok(None),
            Ok(len) if len <= buf.len() => return Ok(Some(len)),
            Ok(_) => return Err(std::io::Error::other("reader returned more bytes than requested")),
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(error) => return Err(error),
        }
    }
}

#[cfg(test)]
mod tests;
