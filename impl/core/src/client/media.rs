//! Attachments: encrypted on the device, uploaded as an opaque blob, and
//! announced by a normal 1:1 message whose end-to-end encrypted content is the
//! blob's [`MediaPointer`](bluetick_crypto::media::MediaPointer) (blob id, media key, digest, length).
//!
//! # Sending
//! [`Client::send_media`] encrypts the bytes at once (`bluetick-v1`, a fresh
//! media key from the client's RNG) and keeps the *encrypted* blob in the
//! persistent state until the server answers `MediaStored`; only then is the
//! pointer queued in the outbox under the message id returned to the app, so
//! ticks, retries and deduplication are those of a text. Uploads are neither
//! idempotent nor resumable (protocol 11.1): a lost chunk or a lost
//! `MediaStored` is answered by uploading again, whole, under a new blob id
//! after the resend interval. The blob id is not bound into the ciphertext, so
//! the same bytes are sent again.
//!
//! # Receiving
//! A decrypted pointer is persisted (and the delivery acked) before the blob
//! is fetched, one stored chunk per `MediaDownload`, in order. Once the blob is
//! complete and verified against the pointer (length, chunk tags, digest) the
//! app gets [`AppEvent::Media`] and the Delivered receipt is owed, exactly as
//! for a text. Chunks live in volatile memory only: a crash restarts the
//! download from the first byte (the pointer survives). A blob that cannot be
//! had after [`MEDIA_ATTEMPTS_MAX`] silent resend intervals (expired, never
//! stored) is reported once as undecryptable.

use std::collections::VecDeque;

use bluetick_crypto::media::{self, BlobId as CryptoBlobId, MediaFormat};
use bluetick_crypto::SecretKey;
use serde::{Deserialize, Serialize};

use super::content::{Content, MediaRef};
use super::outbox::Target;
use super::status::STATUS_TRACKED_MAX;
use super::{AppEvent, Client, ClientError, Conn, DeliveryState, UndecryptableReason};
use crate::ids::{BlobId, DeviceAddress, MessageId, UserId};
use crate::wire::{ClientFrame, Envelope, EnvelopeKind, MEDIA_CHUNK_LEN_MAX};

/// Largest attachment [`Client::send_media`] accepts. The encrypted blob sits
/// in the saved state until the server stores it, so this bounds a save; 16 MiB
/// covers photos and voice notes, and far larger files would want a resumable
/// upload, which protocol version 1 does not have.
pub const MEDIA_LEN_MAX: usize = 16 * 1024 * 1024;

/// Attachments waiting to be uploaded, and received pointers waiting to be
/// downloaded (each queue). Both are bounded so a peer sending pointers
/// cannot grow our saved state without limit; 64 is far more than a person
/// sends or receives between two connections.
pub const MEDIA_QUEUE_MAX: usize = 64;

/// Resend intervals without progress after which an upload or download is
/// given up: eight intervals outlast any loss burst a working link has, and
/// a blob that is gone (expired after the media TTL) will not come back.
pub const MEDIA_ATTEMPTS_MAX: u32 = 8;

/// An attachment being uploaded.
#[derive(Serialize, Deserialize)]
pub(crate) struct Upload {
    /// The message id the app was given; the pointer is sent under it.
    id: MessageId,
    /// The recipient.
    to: UserId,
    /// The encrypted blob, exactly as uploaded.
    blob: Vec<u8>,
    /// The pointer; its blob id is the current attempt's.
    pointer: MediaRef,
    /// Attempts that ended without `MediaStored`.
    attempts: u32,
}

/// A received pointer whose blob is being fetched.
#[derive(Serialize, Deserialize)]
pub(crate) struct Download {
    /// Who sent it, as the envelope said.
    from: DeviceAddress,
    /// The message id (already recorded for deduplication).
    id: MessageId,
    /// When the server first accepted the pointer.
    server_ts_ms: u64,
    /// Where the blob is and how to open it.
    pointer: MediaRef,
    /// Resend intervals that passed without a chunk.
    attempts: u32,
}

/// The persistent part: uploads and downloads not finished.
#[derive(Default, Serialize, Deserialize)]
pub(crate) struct MediaQueues {
    uploads: VecDeque<Upload>,
    downloads: VecDeque<Download>,
}

impl MediaQueues {
    /// Uploads and downloads not finished.
    pub fn len(&self) -> (usize, usize) {
        (self.uploads.len(), self.downloads.len())
    }
}

/// The download in progress on this connection.
#[derive(Debug, Default, Serialize)]
pub(crate) struct Fetching {
    /// The blob requested.
    blob: Option<BlobId>,
    /// Ciphertext received so far.
    received: Vec<u8>,
    /// When the last request left (or the last chunk arrived).
    at_ms: u64,
}

/// Volatile media state: what was sent on the current connection.
#[derive(Debug, Default, Serialize)]
pub(crate) struct MediaVolatile {
    /// The blob id of the upload sent on this connection, and when.
    upload: Option<(BlobId, u64)>,
    fetching: Fetching,
}

fn wire_blob(id: &[u8; 16]) -> BlobId {
    BlobId(*id)
}

impl Client {
    /// Encrypts `bytes` as an attachment for `to` and returns the id of the
    /// message that will carry its pointer (stable until the server's ack, like
    /// [`Client::send_text`]). The blob is uploaded when connected; the pointer
    /// follows once the server stored it. An upload that keeps failing for
    /// [`MEDIA_ATTEMPTS_MAX`] intervals is reported as `Expired`.
    pub fn send_media(&mut self, to: &UserId, bytes: &[u8], now_ms: u64) -> Result<MessageId, ClientError> {
        if *to == self.config.user {
            return Err(ClientError::SelfRecipient);
        }
        if bytes.len() > MEDIA_LEN_MAX {
            return Err(ClientError::BodyTooLarge { len: bytes.len(), max: MEDIA_LEN_MAX });
        }
        if self.state.media.uploads.len() >= MEDIA_QUEUE_MAX {
            return Err(ClientError::MediaQueueFull { len: self.state.media.uploads.len(), max: MEDIA_QUEUE_MAX });
        }
        self.check_outbox_room(1)?;
        let key = SecretKey::generate(&mut self.state.rng);
        let blob_id = CryptoBlobId::generate(&mut self.state.rng);
        let (blob, pointer) = media::encrypt(MediaFormat::BluetickV1, key, blob_id, bytes)
            .map_err(|_| ClientError::BodyTooLarge { len: bytes.len(), max: MEDIA_LEN_MAX })?;
        let id = MessageId::random(&mut self.state.rng);
        self.touch();
        let pointer = MediaRef::from_pointer(&pointer);
        self.state.media.uploads.push_back(Upload { id, to: to.clone(), blob, pointer, attempts: 0 });
        self.state.statuses.track(id, [to.clone()], STATUS_TRACKED_MAX);
        self.flush(now_ms);
        Ok(id)
    }

    /// Attachments not yet uploaded, and received ones not yet downloaded.
    pub fn media_pending(&self) -> (usize, usize) {
        self.state.media.len()
    }

    /// Uploads the first queued attachment and requests the next chunk of the
    /// first queued download, unless already under way on this connection.
    pub(super) fn flush_media(&mut self, now_ms: u64) {
        if self.vol.conn != Conn::Ready {
            return;
        }
        if self.vol.media.upload.is_none() {
            let rng = &mut self.state.rng;
            if let Some(up) = self.state.media.uploads.front_mut() {
                // Every attempt gets a fresh blob id. An earlier attempt (before
                // a reconnect or a crash) may have landed with its `MediaStored`
                // lost; resending under its id would have every chunk refused,
                // and a large blob would then reach the refusal limit and close
                // the connection on each reconnect until the old blob expired.
                up.pointer.blob_id = CryptoBlobId::generate(rng).0;
                self.dirty.set(true);
                let blob = wire_blob(&up.pointer.blob_id);
                let chunks: Vec<&[u8]> = up.blob.chunks(MEDIA_CHUNK_LEN_MAX).collect();
                if chunks.is_empty() {
                    // An empty blob is one empty, final chunk.
                    self.vol.transmits.push_back(ClientFrame::MediaUpload {
                        blob,
                        offset: 0,
                        chunk: Vec::new(),
                        last: true,
                    });
                }
                let count = chunks.len();
                let mut offset = 0u64;
                for (i, chunk) in chunks.into_iter().enumerate() {
                    self.vol.transmits.push_back(ClientFrame::MediaUpload {
                        blob,
                        offset,
                        chunk: chunk.to_vec(),
                        last: i + 1 == count,
                    });
                    offset += chunk.len() as u64;
                }
                self.vol.media.upload = Some((blob, now_ms));
            }
        }
        if self.vol.media.fetching.blob.is_none() {
            if let Some(down) = self.state.media.downloads.front() {
                let blob = wire_blob(&down.pointer.blob_id);
                let fetching = &mut self.vol.media.fetching;
                if fetching.blob != Some(blob) {
                    fetching.received.clear();
                }
                fetching.blob = Some(blob);
                fetching.at_ms = now_ms;
                let offset = fetching.received.len() as u64;
                self.vol.transmits.push_back(ClientFrame::MediaDownload { blob, offset });
            }
        }
    }

    /// The earliest media resend deadline on this connection.
    pub(super) fn media_deadline(&self) -> Option<u64> {
        let wait = self.config.resend_after();
        let up = self.vol.media.upload.map(|(_, at)| at);
        let down = self.vol.media.fetching.blob.map(|_| self.vol.media.fetching.at_ms);
        [up, down].into_iter().flatten().min().map(|at| at.saturating_add(wait))
    }

    /// Resend timer: an upload without `MediaStored` starts again under a new
    /// blob id; a download without a chunk is requested again.
    pub(super) fn media_timeout(&mut self, now_ms: u64) {
        let wait = self.config.resend_after();
        if let Some((_, at)) = self.vol.media.upload {
            if at.saturating_add(wait) <= now_ms {
                self.vol.media.upload = None;
                self.upload_failed();
            }
        }
        let fetching = &self.vol.media.fetching;
        if fetching.blob.is_some() && fetching.at_ms.saturating_add(wait) <= now_ms {
            // Keep what arrived; ask again from there.
            self.vol.media.fetching.blob = None;
            self.download_stalled();
        }
    }

    fn upload_failed(&mut self) {
        let Some(up) = self.state.media.uploads.front_mut() else { return };
        self.dirty.set(true);
        up.attempts = up.attempts.saturating_add(1);
        if up.attempts < MEDIA_ATTEMPTS_MAX {
            // Uploads are not resumable: the next flush starts over under a fresh id.
            return;
        }
        if let Some(up) = self.state.media.uploads.pop_front() {
            for (peer, status) in self.state.statuses.update_all(&up.id, DeliveryState::Expired) {
                self.vol.events.push_back(AppEvent::Status { id: up.id, peer, status });
            }
        }
    }

    fn download_stalled(&mut self) {
        let Some(down) = self.state.media.downloads.front_mut() else { return };
        self.dirty.set(true);
        down.attempts = down.attempts.saturating_add(1);
        if down.attempts < MEDIA_ATTEMPTS_MAX {
            return;
        }
        if let Some(down) = self.state.media.downloads.pop_front() {
            self.vol.media.fetching = Fetching::default();
            let detail = format!("blob {:?} could not be downloaded", wire_blob(&down.pointer.blob_id));
            self.vol.events.push_back(AppEvent::Undecryptable {
                from: down.from.user.clone(),
                id: down.id,
                reason: UndecryptableReason::Media { detail },
            });
        }
    }

    /// `MediaStored`: the current upload landed; its pointer goes out.
    pub(super) fn on_media_stored(&mut self, blob: BlobId, len: u64) {
        let Some(up) = self.state.media.uploads.front() else { return };
        if wire_blob(&up.pointer.blob_id) != blob || len != up.blob.len() as u64 {
            return;
        }
        self.vol.media.upload = None;
        let Some(up) = self.state.media.uploads.pop_front() else { return };
        self.touch();
        let content = Content::Media { media: up.pointer };
        // Room was checked when the app sent it; a full outbox now (filled by
        // group key distributions meanwhile) reports the attachment expired.
        if self.push_outbox(up.id, Target::Direct(up.to.clone()), None, content).is_err() {
            for (peer, status) in self.state.statuses.update_all(&up.id, DeliveryState::Expired) {
                self.vol.events.push_back(AppEvent::Status { id: up.id, peer, status });
            }
        }
    }

    /// A decrypted pointer: remember it durably and fetch the blob.
    pub(super) fn on_media_pointer(&mut self, envelope: &Envelope, pointer: MediaRef) {
        if self.state.media.downloads.len() >= MEDIA_QUEUE_MAX {
            let detail = format!("more than {MEDIA_QUEUE_MAX} attachments waiting");
            self.undecryptable(envelope, UndecryptableReason::Media { detail });
            return;
        }
        self.touch();
        self.state.media.downloads.push_back(Download {
            from: envelope.from.clone(),
            id: envelope.message_id,
            server_ts_ms: envelope.server_ts_ms,
            pointer,
            attempts: 0,
        });
    }

    /// `MediaChunk`: append it if it is the next piece of the current
    /// download; finish the download at the blob's end.
    pub(super) fn on_media_chunk(&mut self, blob: BlobId, offset: u64, chunk: Vec<u8>, last: bool, now_ms: u64) {
        let fetching = &mut self.vol.media.fetching;
        if fetching.blob != Some(blob) || offset != fetching.received.len() as u64 {
            // A duplicate, a late answer or another blob: the timer re-asks.
            return;
        }
        let Some(down) = self.state.media.downloads.front_mut() else { return };
        let expected = MediaFormat::BluetickV1.ciphertext_len(down.pointer.plaintext_len).unwrap_or(u64::MAX);
        fetching.received.extend_from_slice(&chunk);
        fetching.at_ms = now_ms;
        if down.attempts != 0 {
            down.attempts = 0;
            self.dirty.set(true);
        }
        let have = fetching.received.len() as u64;
        if !last && have < expected && !chunk.is_empty() {
            self.vol.transmits.push_back(ClientFrame::MediaDownload { blob, offset: have });
            return;
        }
        let received = std::mem::take(&mut fetching.received);
        fetching.blob = None;
        let Some(down) = self.state.media.downloads.pop_front() else { return };
        self.touch();
        let envelope = Envelope {
            from: down.from,
            to: super::own_address(&self.config),
            message_id: down.id,
            server_ts_ms: down.server_ts_ms,
            group: None,
            kind: EnvelopeKind::Message,
            ciphertext: Vec::new(),
        };
        match media::decrypt(&down.pointer.to_pointer(), &received) {
            Ok(plaintext) => self.surface_media(&envelope, plaintext.to_vec()),
            Err(e) => self.undecryptable(&envelope, UndecryptableReason::Media { detail: e.to_string() }),
        }
    }
}
