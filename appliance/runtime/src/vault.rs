//! A tenant's vault: one redb file per tenant holding AEAD-encrypted records.
//!
//! Key hierarchy: the tenant's KEK (unsealed from the TPM, never on disk) wraps one data key (DEK) stored in the
//! vault's `meta` table; the DEK encrypts records with AES-256-GCM-SIV (sealed by the `aes-gcm-siv` crate, opened by
//! `aws-lc-rs`: see `RecordCipher`). Associated data binds the tenant id, the record key and the record version, so
//! a ciphertext moved to another tenant, another key or another version fails to open. Record keys are not stored in
//! the clear: a record is stored under its locator, a keyed hash of its key (HMAC-SHA-256 under a key derived from
//! the DEK, in hex), and its key is sealed beside the value (AES-256-GCM-SIV, associated data binding the tenant and
//! the locator), so that a listing can name it and nobody without the tenant's keys can read or test which keys a
//! tenant holds. A keyed set digest over all records and metadata (HMAC-SHA-256 of each entry, XOR-combined, kept in
//! `meta`) lets [`Vault::verify`] detect entries that were removed, renamed or duplicated on disk — things a
//! per-record AEAD alone cannot see. [`Vault::list`] checks it too, and so does a `get` or `delete` whose key is not
//! in the store, before it answers "no record" (a miss costs what a listing costs; a hit costs nothing more).
//!
//! Attestation: every record operation takes an [`Attested`] token, which only the tenant's ledger gate
//! mints after the operation's OAR is durably appended under a signed checkpoint. The vault checks that
//! the token names this tenant, this operation and this record ([`Vault::key_target`]), so an
//! unattested or mis-attested operation cannot run. A record key appears in the OAR only as a keyed,
//! salted commitment (the salt is derived from the tenant's data key), never in clear.
//!
//! Concurrency: a vault is held by one process at a time (an advisory lock on `vault.lock` beside the file);
//! a second writer waits up to [`LOCK_WAIT`] and then gets [`VaultError::Busy`], never a torn write.
//! Every write transaction is durable (fsync) before `put`/`delete` return. A commit that the file system
//! fails (a full disk) may still have reached the file; the vault reopens the file and looks before it
//! answers, so a `put` or `delete` that returns an error did not take effect, unless the error is
//! [`VaultError::Unsettled`] (the file could not be reopened to look).
//!
//! Reads are memoized: an open vault keeps the plaintext of records it wrote and of records read at least
//! twice since it opened (at most [`MEMO_BYTES`], wiped when evicted or when the vault closes). A record
//! read once is decrypted, handed out and not kept: a scan (a listing's reader, an export, a command that
//! reads one record and exits) neither pays for filling the memo nor leaves plaintext behind it, and it
//! cannot push out the records that are read again and again. A read still looks the record up in the
//! store, and reuses the plaintext only when the stored record has the same version, nonce and ciphertext
//! length as the one it was decrypted from; those are its first bytes, and a read the memo answers
//! touches nothing else of the record. A new write (random nonce), a deleted, replaced or moved record is
//! seen at once. A stored record altered anywhere else (its ciphertext, its tag, its sealed key), with
//! those fields kept, would fail to decode or to authenticate if read in full; while the record is
//! memoized the read returns the authentic plaintext instead of that error, and [`Vault::verify`] (which
//! decrypts everything) and every read after the vault is reopened report it. So the memo never returns
//! anything but the authentic plaintext. That plaintext lives in the same process as the data key that
//! decrypts every record, so the memo exposes nothing that process could not already read. What the vault
//! remembers about a record key (its OAR target, whether it was read once, its memoized plaintext) sits in
//! one map, so a read finds all three with one lookup; at most 65,536 keys, those holding no plaintext
//! forgotten first.
//!
//! Read-only opens ([`Vault::open_read_only`]) never write the file: a read-write redb database marks its
//! header on open and saves its allocator state on close (three syncs even when nothing was written), and
//! on a damaged file that close has panicked inside its own clean-up, which aborts the process. Commands
//! that only read therefore open read-only, and [`Vault::open`] also starts read-only and reopens the
//! file read-write at its first write. A read-write vault whose store reported damage (an error or a
//! caught panic) is never closed through redb: its handle is leaked instead (until the process ends), so
//! nothing more is written to a damaged file. Damage that no operation noticed can still make redb 4.6
//! abort the process while closing a read-write handle (release builds; seen on 2 of 73,728 single-byte
//! flips of a small vault); the operation itself had already finished or been refused by then.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use aes_gcm_siv::aead::{Aead, KeyInit, Payload};
use aes_gcm_siv::{Aes256GcmSiv, Nonce};
use aws_lc_rs::aead::{AES_256_GCM_SIV, Aad, LessSafeKey, UnboundKey};
use bulwark_ledger::oar::{Commitment, Digest, OpKind, Target};
use bulwark_ledger::{Attested, LedgerScope};
use compact_str::CompactString;
use hmac::{Hmac, Mac};
use rand::RngCore;
use redb::{
    Database, ReadOnlyDatabase, ReadTransaction, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction,
};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::datadir::Settled;
use crate::ids::TenantId;
use crate::secret::{Plaintext, SecretKey};

/// Longest record key, in bytes.
pub const MAX_KEY_LEN: usize = 256;
/// Largest record value, in bytes (1 MiB).
pub const MAX_VALUE_LEN: usize = 1 << 20;
/// Most record keys one open vault remembers (their OAR targets, whether they were read, and the memo).
const TARGET_CACHE: usize = 1 << 16;
/// Most bytes (plaintexts plus the sealed records' identities) the read memo of one open vault holds.
pub const MEMO_BYTES: usize = 64 << 20;
/// How long a second opener waits for the vault lock.
pub const LOCK_WAIT: Duration = Duration::from_secs(30);

const RECORDS: TableDefinition<&str, &[u8]> = TableDefinition::new("records");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const META_DEK: &str = "dek";
const META_DIGEST: &str = "set-digest";
const META_FORMAT: &str = "format";
/// Format 1 stored record keys in the clear; this build reads format 2 only.
const FORMAT_V1: &[u8] = b"bulwark-vault/v1";
const FORMAT_V2: &[u8] = b"bulwark-vault/v2";

const AAD_DEK: &[u8] = b"bulwark/vault/dek/v1\0";
const AAD_RECORD: &[u8] = b"bulwark/vault/record/v1\0";
const AAD_RECORD_KEY: &[u8] = b"bulwark/vault/record-key/v1\0";
const AAD_SECRET: &[u8] = b"bulwark/vault/secret/v1\0";
const MAC_LABEL: &[u8] = b"bulwark/vault/set-digest/v1\0";

/// What can go wrong with a vault.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    /// The record key is empty, too long, or has control characters.
    #[error("invalid record key: {0}")]
    BadKey(&'static str),
    /// The value is larger than [`MAX_VALUE_LEN`].
    #[error("value of {len} bytes is over the {max}-byte limit")]
    TooLarge {
        /// Its size.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// No record under that key.
    #[error("no record {0:?} in this tenant's vault")]
    NotFound(String),
    /// The vault file is not there.
    #[error("vault file {0} does not exist")]
    Missing(PathBuf),
    /// Another process holds this vault.
    #[error("another process is using this tenant's vault ({0}); try again when it finishes")]
    Busy(PathBuf),
    /// A record, the wrapped DEK or the set digest failed authentication: the file was altered, or it
    /// belongs to another tenant.
    #[error("vault integrity check failed: {0}")]
    Integrity(String),
    /// The operation's attestation token does not name this tenant, operation and record.
    #[error("operation not attested for this tenant, operation and record")]
    NotAttested(#[source] bulwark_ledger::LedgerError),
    /// The vault file is not a readable redb database of ours.
    #[error("vault file is corrupt or not a Bulwark vault")]
    Corrupt(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The file system failed to read or write the vault file (a full disk, a read-only mount): a write
    /// that fails so changes nothing.
    #[error("the vault file could not be read or written (nothing was changed)")]
    Storage(#[source] std::io::Error),
    /// The file system failed a write's commit, and the vault could not be reopened to tell whether the
    /// change reached the file (see [`Vault::put`]).
    #[error(
        "the vault file could not be written, and whether the change was stored could not be told (reopening \
         the file to look failed: {reopen}); once the cause is removed, reading the record shows which"
    )]
    Unsettled {
        /// Why the commit failed.
        #[source]
        source: std::io::Error,
        /// Why the file could not be reopened, with its causes.
        reopen: String,
    },
    /// A write was attempted on a vault opened with [`Vault::open_read_only`].
    #[error("this vault was opened read-only")]
    ReadOnly,
    /// Filesystem error.
    #[error("vault I/O on {path}")]
    Io {
        /// Which file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// A record's plaintext as read from a vault: shared with the vault's read memo, wiped when the last
/// holder drops it. Debug prints its length only.
#[derive(Clone)]
pub struct RecordValue(Arc<Opened>);

/// A decrypted record and the identity of the sealed record it came from (what the memo compares with
/// the stored bytes before it answers a read).
struct Opened {
    sealed: Sealed,
    plaintext: Plaintext,
}

impl RecordValue {
    fn new(sealed: Sealed, plaintext: Plaintext) -> Self {
        Self(Arc::new(Opened { sealed, plaintext }))
    }
}

impl std::ops::Deref for RecordValue {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.0.plaintext
    }
}

impl std::fmt::Debug for RecordValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RecordValue([REDACTED; {} bytes])", self.0.plaintext.len())
    }
}

/// What identifies one sealed record: its version, its nonce (random per write) and its ciphertext
/// length, all three among the first bytes of the stored record (see [`RecordHead`]).
type Sealed = [u8; 8 + 12 + 8];

/// A sealed record's identity, or `None` if its ciphertext is shorter than its tag (it has no identity
/// then, and cannot authenticate).
fn sealed_id(version: u64, nonce: &[u8; 12], ciphertext_len: usize) -> Option<Sealed> {
    if ciphertext_len < TAG_LEN {
        return None;
    }
    let mut id: Sealed = [0; 28];
    id[..8].copy_from_slice(&version.to_be_bytes());
    id[8..20].copy_from_slice(nonce);
    id[20..].copy_from_slice(&(ciphertext_len as u64).to_be_bytes());
    Some(id)
}

/// The identity of the stored record `bytes`, read from its head alone: a repeat read that the memo
/// answers touches no more of the record than that. `None` if the head is malformed or the record is
/// shorter than its head says (a damaged record is never the one memoized).
fn head_id(bytes: &[u8]) -> Option<Sealed> {
    let (head, rest): (RecordHead, &[u8]) = postcard::take_from_bytes(bytes).ok()?;
    if rest.len() < head.ciphertext_len {
        return None;
    }
    sealed_id(head.version, &head.nonce, head.ciphertext_len)
}

/// What an open vault remembers about one record key (see the module docs). Kept small (with the key
/// itself held inline when it is short) so that a lookup that misses the CPU caches touches few lines.
struct Slot {
    /// The key's OAR target, `Target::Object(Digest::Salted(commitment))` (see [`Vault::key_target`]).
    commitment: Commitment,
    /// Where its record is stored, as raw bytes (see [`Locator`]).
    locator: [u8; 32],
    /// The record was decrypted once since the vault opened (or since its last write) and not kept.
    read_once: bool,
    /// After a second read or a write: the record's plaintext, with the identity of its sealed bytes.
    memo: Option<RecordValue>,
}

/// The record keys an open vault has seen, each with its [`Slot`], in one map, so a read finds the key's
/// target, whether it was read before and its memoized plaintext with one lookup. At most
/// [`TARGET_CACHE`] keys and [`MEMO_BYTES`] of memoized records.
#[derive(Default)]
struct RecordCache {
    /// Keyed by the record key, held inline up to 24 bytes; hashed with a randomly keyed hash, so keys
    /// chosen to collide cannot be predicted.
    slots: HashMap<CompactString, Slot, ahash::RandomState>,
    /// Sealed identities plus plaintexts held in `slots`.
    memo_bytes: usize,
}

impl RecordCache {
    /// `key`'s target and locator (from `compute` the first time the key is seen) and its memoized
    /// record, if any. For a `read` that finds no memoized record, also whether what it decrypts is to be
    /// kept: yes if the key was read before, else the key is marked as read once. The mark is set before
    /// the read runs, so a first read takes the cache's lock once; a read that then fails takes the mark
    /// back ([`RecordCache::unmark`]).
    fn recall(
        &mut self,
        key: &str,
        read: bool,
        compute: impl FnOnce() -> Result<(Commitment, [u8; 32]), VaultError>,
    ) -> Result<Recalled, VaultError> {
        if let Some(slot) = self.slots.get_mut(key) {
            let keep = read && slot.memo.is_none() && std::mem::replace(&mut slot.read_once, true);
            return Ok(Recalled::new(slot.commitment, &slot.locator, slot.memo.clone(), keep));
        }
        let (commitment, locator) = compute()?;
        if self.slots.len() >= TARGET_CACHE {
            // Full: forget the keys that hold no plaintext; if the memo itself holds most of them, forget
            // everything (so each clearing is paid for by many insertions).
            self.slots.retain(|_, slot| slot.memo.is_some());
            if self.slots.len() >= TARGET_CACHE / 2 {
                self.slots.clear();
                self.memo_bytes = 0;
            }
        }
        self.slots.insert(CompactString::from(key), Slot { commitment, locator, read_once: read, memo: None });
        Ok(Recalled::new(commitment, &locator, None, false))
    }

    /// Memoizes `value` (a record just written, or read a second time), within [`MEMO_BYTES`].
    fn keep(&mut self, key: &str, value: RecordValue) {
        self.forget(key);
        let size = memo_size(&value);
        if size > MEMO_BYTES / 8 || !self.slots.contains_key(key) {
            return;
        }
        if self.memo_bytes + size > MEMO_BYTES {
            // Evict down to three quarters of the budget at once, so eviction is paid for by many keeps.
            let goal = (MEMO_BYTES / 4 * 3).saturating_sub(size);
            let Self { slots, memo_bytes } = self;
            for slot in slots.values_mut() {
                if *memo_bytes <= goal {
                    break;
                }
                if let Some(v) = slot.memo.take() {
                    *memo_bytes = memo_bytes.saturating_sub(memo_size(&v));
                }
            }
        }
        if let Some(slot) = self.slots.get_mut(key) {
            self.memo_bytes += size;
            slot.memo = Some(value);
        }
    }

    /// Takes back the read-once mark a read set in [`RecordCache::recall`] (the read failed).
    fn unmark(&mut self, key: &str) {
        if let Some(slot) = self.slots.get_mut(key) {
            slot.read_once = false;
        }
    }

    /// Drops `key`'s plaintext (wiped once no reader holds it) and its read-once mark.
    fn forget(&mut self, key: &str) {
        let Some(slot) = self.slots.get_mut(key) else { return };
        slot.read_once = false;
        if let Some(v) = slot.memo.take() {
            self.memo_bytes = self.memo_bytes.saturating_sub(memo_size(&v));
        }
    }
}

/// What the record cache knows about one key.
struct Recalled {
    target: Target,
    locator: Locator,
    memo: Option<RecordValue>,
    /// A read that decrypts is to keep the record (see [`RecordCache::recall`]).
    keep: bool,
}

impl Recalled {
    fn new(commitment: Commitment, locator: &[u8; 32], memo: Option<RecordValue>, keep: bool) -> Self {
        let mut hexed = [0u8; 64];
        // 32 bytes always fit 64 hex digits.
        let _ = hex::encode_to_slice(locator, &mut hexed);
        Recalled { target: Target::Object(Digest::Salted(commitment)), locator: hexed, memo, keep }
    }
}

/// The name a record is stored under: HMAC-SHA-256 of its key under a key derived from the DEK, as 64
/// lowercase hex digits (ASCII), so the store never holds a record key in the clear.
type Locator = [u8; 64];

fn locator_str(locator: &Locator) -> &str {
    // Hex digits are ASCII; a locator is only ever made by `Recalled::new`.
    std::str::from_utf8(locator).unwrap_or_default()
}

/// What a memoized record counts against [`MEMO_BYTES`].
fn memo_size(value: &RecordValue) -> usize {
    value.0.sealed.len() + value.len()
}

/// One sealed record as stored.
#[derive(Serialize)]
struct Envelope {
    version: u64,
    nonce: [u8; 12],
    ciphertext: Vec<u8>,
}

/// The same record read in place from the store, without copying its ciphertext.
#[derive(Deserialize)]
struct EnvelopeRef<'a> {
    version: u64,
    nonce: [u8; 12],
    #[serde(borrow)]
    ciphertext: &'a [u8],
}

/// One record as stored (format 2): its sealed value, then its key sealed under the record's locator.
#[derive(Serialize)]
struct RecordEnvelope {
    body: Envelope,
    key: Envelope,
}

/// The same record read in place from the store. Postcard writes a struct's fields one after the other,
/// so this reads the bytes [`RecordEnvelope`] writes.
#[derive(Deserialize)]
struct RecordEnvelopeRef<'a> {
    #[serde(borrow)]
    body: EnvelopeRef<'a>,
    #[serde(borrow)]
    key: EnvelopeRef<'a>,
}

/// The first fields of a stored record as [`RecordEnvelope`] writes them: the sealed value's version,
/// nonce and ciphertext length (postcard writes a byte string's length as a varint, as it writes a
/// `usize`).
#[derive(Deserialize)]
struct RecordHead {
    version: u64,
    nonce: [u8; 12],
    ciphertext_len: usize,
}

/// A record's listing entry (no plaintext).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RecordInfo {
    /// The record key.
    pub key: String,
    /// Its version (1 for the first put, +1 per overwrite).
    pub version: u64,
    /// Plaintext length in bytes.
    pub len: usize,
}

/// The vault's database, read-write or read-only. Its drop is guarded like every other storage call, and
/// skipped once the store has reported damage (see the module docs).
struct GuardedDb {
    store: Mutex<Option<Store>>,
    /// Where to reopen the file read-write on the first write, for a vault opened for writing but
    /// started read-only; `None` for a read-only vault.
    upgrade: Option<PathBuf>,
    /// Set when the store reported damage, and while it is being opened (until it proved readable).
    damaged: AtomicBool,
}

enum Store {
    Rw(Database),
    Ro(ReadOnlyDatabase),
}

/// How long the first write waits for redb's own file lock when it reopens the file read-write (a read
/// transaction on another thread may still hold the read-only handle for a moment).
const UPGRADE_WAIT: Duration = Duration::from_secs(5);

impl GuardedDb {
    fn new(store: Store, upgrade: Option<PathBuf>) -> Self {
        Self { store: Mutex::new(Some(store)), upgrade, damaged: AtomicBool::new(true) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Store>> {
        // The guarded value is a handle; a panic while it was held leaves it as it was.
        self.store.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn begin_read(&self) -> Result<ReadTransaction, VaultError> {
        match self.lock().as_ref() {
            Some(Store::Rw(d)) => d.begin_read().map_err(corrupt),
            Some(Store::Ro(d)) => d.begin_read().map_err(corrupt),
            None => Err(VaultError::Corrupt("the vault file could not be reopened after a failed write".into())),
        }
    }

    /// Closes the handle and opens `path` afresh as the next opener would: read-only, or read-write when
    /// the file must be repaired first (which picks the newest commit whose pages all check out).
    fn reopen(&self, path: &Path) -> Result<(), VaultError> {
        let mut store = self.lock();
        let old = store.take();
        let _ = caught(move || drop(old));
        let start = Instant::now();
        let fresh = loop {
            let opened = match ReadOnlyDatabase::open(path) {
                Err(redb::DatabaseError::RepairAborted) => Database::open(path).map(Store::Rw),
                other => other.map(Store::Ro),
            };
            match opened {
                Ok(db) => break db,
                // Closing the old handle may take redb a moment to release its file lock.
                Err(redb::DatabaseError::DatabaseAlreadyOpen) if start.elapsed() < UPGRADE_WAIT => {
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(e) => return Err(corrupt(e)),
            }
        };
        *store = Some(fresh);
        Ok(())
    }

    fn begin_write(&self) -> Result<WriteTransaction, VaultError> {
        let mut store = self.lock();
        if let (Some(Store::Ro(_)), Some(path)) = (store.as_ref(), &self.upgrade) {
            // First write of a vault opened for writing: close the read-only handle, open read-write.
            let ro = store.take();
            let _ = caught(move || drop(ro));
            let start = Instant::now();
            let db = loop {
                match Database::open(path) {
                    Ok(db) => break db,
                    Err(redb::DatabaseError::DatabaseAlreadyOpen) if start.elapsed() < UPGRADE_WAIT => {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    Err(e) => {
                        // Leave a read-only handle behind so reads keep working.
                        *store = ReadOnlyDatabase::open(path).ok().map(Store::Ro);
                        return Err(corrupt(e));
                    }
                }
            };
            *store = Some(Store::Rw(db));
        }
        match store.as_ref() {
            Some(Store::Rw(d)) => d.begin_write().map_err(corrupt),
            Some(Store::Ro(_)) => Err(VaultError::ReadOnly),
            None => Err(VaultError::Corrupt("the vault could not be reopened for writing".into())),
        }
    }

    fn set_damaged(&self, damaged: bool) {
        self.damaged.store(damaged, Ordering::SeqCst);
    }
}

impl Drop for GuardedDb {
    fn drop(&mut self) {
        let store = self.store.get_mut().unwrap_or_else(PoisonError::into_inner).take();
        if self.damaged.load(Ordering::SeqCst)
            && let Some(Store::Rw(db)) = store
        {
            // Do not let redb save allocator state into a damaged file (or panic while trying): leak the
            // handle. Its descriptor (and redb's lock on the file) goes when the process ends; the vault
            // lock is a separate file. A read-only handle writes nothing on close and is closed normally.
            std::mem::forget(db);
            return;
        }
        let _ = caught(move || drop(store));
    }
}

/// An open, unlocked vault.
pub struct Vault {
    db: GuardedDb,
    tenant: TenantId,
    /// AES-256-GCM-SIV keyed with the DEK, built once per open.
    cipher: RecordCipher,
    mac_key: SecretKey,
    /// Record key -> its OAR target (a pure function of the key and the data key: two SHA-256 runs), its
    /// read-once mark and its memoized plaintext.
    cache: Mutex<RecordCache>,
    path: PathBuf,
    _lock: File,
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vault").field("tenant", &self.tenant).field("path", &self.path).finish_non_exhaustive()
    }
}

thread_local! {
    /// How many storage calls this thread is inside whose panics [`caught`] turns into errors.
    static CATCHING: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// Whether a panic on this thread now is one the vault catches and reports as a clean error (redb
/// panicking on a damaged file). A process-wide panic hook uses it to stay quiet about those.
pub fn storage_panic_is_caught() -> bool {
    CATCHING.with(|c| c.get() > 0)
}

/// Runs `f`, turning a panic into `Err`, with [`storage_panic_is_caught`] true meanwhile.
fn caught<R>(f: impl FnOnce() -> R) -> std::thread::Result<R> {
    CATCHING.with(|c| c.set(c.get().saturating_add(1)));
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    CATCHING.with(|c| c.set(c.get().saturating_sub(1)));
    r
}

/// Runs a storage operation, turning a panic inside the storage engine (it has panicked on some corrupt
/// files) into [`VaultError::Corrupt`], so damage is reported as an error and never as a crash. When the
/// store reports damage, `db` is marked damaged (never closed through redb).
fn guarded<T>(db: Option<&GuardedDb>, f: impl FnOnce() -> Result<T, VaultError>) -> Result<T, VaultError> {
    let r = caught(f)
        .unwrap_or_else(|_| Err(VaultError::Corrupt("the storage engine failed on a damaged vault file".into())));
    if let (Some(db), Err(VaultError::Corrupt(_))) = (db, &r) {
        db.set_damaged(true);
    }
    r
}

/// What the storage engine reported: a failure of the file system (a full disk, a read-only mount) as
/// such, anything else as a damaged file.
fn corrupt<E: Into<redb::Error>>(e: E) -> VaultError {
    match crate::datadir::storage_io(e) {
        Ok(io) => VaultError::Storage(io),
        Err(e) => VaultError::Corrupt(Box::new(e)),
    }
}

fn check_key(key: &str) -> Result<(), VaultError> {
    if key.is_empty() {
        return Err(VaultError::BadKey("empty"));
    }
    if key.len() > MAX_KEY_LEN {
        return Err(VaultError::BadKey("longer than 256 bytes"));
    }
    if key.chars().any(char::is_control) {
        return Err(VaultError::BadKey("contains control characters"));
    }
    Ok(())
}

/// What a key a record is stored under from now on may not hold, beyond [`check_key`]: characters that
/// are not seen but change how a key reads in a listing (text-direction overrides, embeddings, isolates
/// and marks, zero-width spaces, word joiners, byte-order marks), so that two keys that look alike in a
/// listing are one key. Zero-width joiners and non-joiners stay allowed (some scripts spell words with
/// them). Records stored under such keys before stay readable and deletable.
fn check_new_key(key: &str) -> Result<(), VaultError> {
    let unseen = |c: char| {
        matches!(c, '\u{061C}' | '\u{200B}' | '\u{200E}' | '\u{200F}' | '\u{FEFF}')
            || ('\u{202A}'..='\u{202E}').contains(&c)
            || ('\u{2060}'..='\u{2064}').contains(&c)
            || ('\u{2066}'..='\u{2069}').contains(&c)
    };
    if key.chars().any(unseen) {
        return Err(VaultError::BadKey("contains invisible or text-direction characters (such as U+202E)"));
    }
    Ok(())
}

fn lock_path(path: &Path) -> PathBuf {
    path.with_extension("lock")
}

fn acquire_lock(path: &Path) -> Result<File, VaultError> {
    let lp = lock_path(path);
    crate::datadir::lock_within(&lp, LOCK_WAIT)
        .map_err(|source| VaultError::Io { path: lp, source })?
        .ok_or_else(|| VaultError::Busy(path.to_path_buf()))
}

fn aad(label: &[u8], tenant: &TenantId, key: &str, version: u64) -> Vec<u8> {
    let mut a = Vec::with_capacity(label.len() + 16 + 4 + key.len() + 8);
    a.extend_from_slice(label);
    a.extend_from_slice(tenant.as_bytes());
    a.extend_from_slice(&u32::try_from(key.len()).unwrap_or(u32::MAX).to_be_bytes());
    a.extend_from_slice(key.as_bytes());
    a.extend_from_slice(&version.to_be_bytes());
    a
}

/// Bytes of an AES-GCM-SIV tag, at the end of every stored ciphertext.
const TAG_LEN: usize = 16;

/// AES-256-GCM-SIV (RFC 8452) under one key, from two independent implementations: `aes-gcm-siv` seals
/// and `aws-lc-rs` (AWS-LC) opens, so every read checks one implementation's output with the other, and
/// reads run on AWS-LC's faster assembly. Both key schedules are wiped on drop: `aes-gcm-siv`'s through
/// its `zeroize` feature, AWS-LC's because its context is freed with `OPENSSL_free`, which cleanses the
/// whole allocation (aws-lc `crypto/mem.c`). AWS-LC does not promise to wipe the per-nonce keys it
/// derives on its stack; they are keys of records this process can already decrypt.
struct RecordCipher {
    sealer: Aes256GcmSiv,
    opener: LessSafeKey,
}

impl RecordCipher {
    fn new(key: &SecretKey) -> Result<Self, VaultError> {
        let opener = UnboundKey::new(&AES_256_GCM_SIV, key.expose_secret())
            .map_err(|_| VaultError::Integrity("AES-256-GCM-SIV refused a 32-byte key".into()))?;
        Ok(RecordCipher { sealer: Aes256GcmSiv::new(key.expose_secret().into()), opener: LessSafeKey::new(opener) })
    }

    fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Envelope {
        let mut nonce = [0u8; 12];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        // GCM-SIV encryption only fails for inputs over 2^36 bytes, far above MAX_VALUE_LEN.
        let ciphertext = self.sealer.encrypt(&Nonce::from(nonce), Payload { msg: plaintext, aad }).unwrap_or_default();
        Envelope { version: 0, nonce, ciphertext }
    }

    /// The plaintext, or `None` if the record does not authenticate under this key, nonce and `aad`.
    fn open(&self, aad: &[u8], env: &EnvelopeRef<'_>) -> Option<Plaintext> {
        let (body, tag) = env.ciphertext.split_at(env.ciphertext.len().checked_sub(TAG_LEN)?);
        // Decrypted straight from the stored bytes into a buffer that is wiped on drop, also when
        // authentication fails (AWS-LC leaves it in an unspecified state then).
        let mut out = Plaintext::new(vec![0u8; body.len()]);
        let nonce = aws_lc_rs::aead::Nonce::assume_unique_for_key(env.nonce);
        self.opener.open_separate_gather(nonce, Aad::from(aad), body, tag, out.bytes_mut()).ok()?;
        Some(out)
    }
}

/// The set-digest contribution of one stored (table, key, value) entry.
fn entry_mac(mac_key: &SecretKey, table: &str, key: &str, value: &[u8]) -> [u8; 32] {
    // HMAC accepts keys of any length, so new_from_slice cannot fail for a 32-byte key.
    let Ok(mut m) = <Hmac<Sha256> as Mac>::new_from_slice(mac_key.expose_secret()) else {
        return [0u8; 32];
    };
    m.update(MAC_LABEL);
    for part in [table.as_bytes(), key.as_bytes(), value] {
        m.update(&u64::try_from(part.len()).unwrap_or(u64::MAX).to_be_bytes());
        m.update(part);
    }
    m.finalize().into_bytes().into()
}

fn xor_into(acc: &mut [u8; 32], x: &[u8; 32]) {
    for (a, b) in acc.iter_mut().zip(x) {
        *a ^= b;
    }
}

fn derive_mac_key(dek: &SecretKey) -> SecretKey {
    use sha2::Digest;
    let mut h = Sha256::new();
    h.update(b"bulwark/vault/mac-key/v1\0");
    h.update(dek.expose_secret());
    let mut out: [u8; 32] = h.finalize().into();
    let k = SecretKey::take_from(&mut out);
    k.unwrap_or_else(SecretKey::random)
}

impl Vault {
    /// Creates a new vault file at `path` for `tenant`, with a fresh DEK wrapped by `kek`.
    pub fn create(path: &Path, tenant: TenantId, kek: &SecretKey) -> Result<Self, VaultError> {
        guarded(None, || Self::create_unguarded(path, tenant, kek))
    }

    /// Opens an existing vault, unwrapping its DEK with `kek`. A KEK of another tenant, or a file of another
    /// tenant, fails with [`VaultError::Integrity`].
    pub fn open(path: &Path, tenant: TenantId, kek: &SecretKey) -> Result<Self, VaultError> {
        guarded(None, || Self::open_unguarded(path, tenant, kek, false))
    }

    /// [`Vault::open`] without write access: nothing is written to the file, not even on open or close.
    /// Writes fail with [`VaultError::ReadOnly`]. A file left by a crash that redb must repair first is
    /// opened read-write once for that repair.
    pub fn open_read_only(path: &Path, tenant: TenantId, kek: &SecretKey) -> Result<Self, VaultError> {
        guarded(None, || Self::open_unguarded(path, tenant, kek, true))
    }

    /// Stores `value` under `key` (a new version if it exists). Durable when it returns; returns the version.
    ///
    /// An error means the record was not stored, with one exception: [`VaultError::Unsettled`], when the
    /// file system failed the commit and the file could not be reopened to tell (see `commit_settled`).
    pub fn put(&self, attested: &Attested, key: &str, value: &[u8]) -> Result<u64, VaultError> {
        check_new_key(key)?;
        let Recalled { target, locator, .. } = self.recall(key)?;
        self.check(attested, OpKind::VaultPut, &target)?;
        guarded(Some(&self.db), || self.put_unguarded(key, &locator, value))
    }

    /// Reads and decrypts the record under `key` (from the read memo when the stored bytes are unchanged;
    /// a record read the second time is kept there).
    pub fn get(&self, attested: &Attested, key: &str) -> Result<RecordValue, VaultError> {
        let Recalled { target, locator, memo, keep } = self.recall_for(key, true)?;
        // Whether this read marked the key as read once (see `RecordCache::recall`): a read that fails
        // takes the mark back.
        let first = memo.is_none() && !keep;
        let read = self
            .check(attested, OpKind::VaultGet, &target)
            .and_then(|()| guarded(Some(&self.db), || self.get_unguarded(key, &locator, memo, keep)));
        if read.is_err() && first {
            self.cache().unmark(key);
        }
        read
    }

    /// Lists every record's key, version and plaintext length, in key order, after checking the keyed set
    /// digest over every stored entry (no record is decrypted).
    pub fn list(&self, attested: &Attested) -> Result<Vec<RecordInfo>, VaultError> {
        self.check(attested, OpKind::VaultList, &Target::None)?;
        guarded(Some(&self.db), || self.list_unguarded())
    }

    /// Deletes the record under `key`. Durable when it returns.
    pub fn delete(&self, attested: &Attested, key: &str) -> Result<(), VaultError> {
        let Recalled { target, locator, .. } = self.recall(key)?;
        self.check(attested, OpKind::VaultDelete, &target)?;
        guarded(Some(&self.db), || self.delete_unguarded(key, &locator))
    }

    /// Stores a tenant secret (e.g. its signing seed) under `name`, encrypted with the DEK and bound to
    /// the tenant and name. Secrets live in the metadata table and never appear in [`Vault::list`].
    pub fn put_secret(&self, name: &str, secret: &SecretKey) -> Result<(), VaultError> {
        guarded(Some(&self.db), || self.put_secret_unguarded(name, secret))
    }

    /// Reads a secret stored with [`Vault::put_secret`].
    pub fn get_secret(&self, name: &str) -> Result<SecretKey, VaultError> {
        guarded(Some(&self.db), || self.get_secret_unguarded(name))
    }

    /// Checks the whole vault: every record and secret authenticates, and the keyed set digest over all
    /// stored entries matches, so a removed, renamed, duplicated or rolled-in entry is detected.
    pub fn verify(&self, attested: &Attested) -> Result<usize, VaultError> {
        self.check(attested, OpKind::VaultList, &Target::None)?;
        guarded(Some(&self.db), || self.verify_unguarded())
    }

    fn create_unguarded(path: &Path, tenant: TenantId, kek: &SecretKey) -> Result<Self, VaultError> {
        let lock = acquire_lock(path)?;
        let db = GuardedDb::new(Store::Rw(Database::create(path).map_err(corrupt)?), None);
        let dek = SecretKey::random();
        let mac_key = derive_mac_key(&dek);
        let mut wrapped = RecordCipher::new(kek)?.seal(&aad(AAD_DEK, &tenant, "", 0), dek.expose_secret());
        wrapped.version = 0;
        let wrapped = encode(&wrapped)?;
        let mut digest = [0u8; 32];
        xor_into(&mut digest, &entry_mac(&mac_key, "meta", META_FORMAT, FORMAT_V2));
        let mut tx = db.begin_write()?;
        tx.set_durability(redb::Durability::Immediate).map_err(corrupt)?;
        {
            let mut meta = tx.open_table(META).map_err(corrupt)?;
            meta.insert(META_FORMAT, FORMAT_V2).map_err(corrupt)?;
            meta.insert(META_DEK, wrapped.as_slice()).map_err(corrupt)?;
            meta.insert(META_DIGEST, digest.as_slice()).map_err(corrupt)?;
            tx.open_table(RECORDS).map_err(corrupt)?;
        }
        tx.commit().map_err(corrupt)?;
        db.set_damaged(false);
        Self::assemble(db, tenant, &dek, path, lock)
    }

    /// The open vault around a store that answered, with the data key in hand.
    fn assemble(db: GuardedDb, tenant: TenantId, dek: &SecretKey, path: &Path, lock: File) -> Result<Self, VaultError> {
        Ok(Vault {
            db,
            tenant,
            cipher: RecordCipher::new(dek)?,
            mac_key: derive_mac_key(dek),
            cache: Mutex::default(),
            path: path.to_path_buf(),
            _lock: lock,
        })
    }

    fn open_unguarded(path: &Path, tenant: TenantId, kek: &SecretKey, read_only: bool) -> Result<Self, VaultError> {
        if !path.exists() {
            return Err(VaultError::Missing(path.to_path_buf()));
        }
        let lock = acquire_lock(path)?;
        // Read-only first, also for a vault opened for writing: the first write reopens it read-write (a
        // read-write open syncs the file, and so does its close, even when nothing is written).
        let store = match ReadOnlyDatabase::open(path) {
            Ok(db) => Store::Ro(db),
            // Not closed cleanly: only a read-write open repairs it.
            Err(redb::DatabaseError::RepairAborted) => Store::Rw(Database::open(path).map_err(corrupt)?),
            Err(e) => return Err(corrupt(e)),
        };
        // Damaged until proven readable: an error or a panic below leaves the handle leaked, not closed.
        let db = GuardedDb::new(store, (!read_only).then(|| path.to_path_buf()));
        let (format, wrapped) = {
            let tx = db.begin_read()?;
            let meta = tx.open_table(META).map_err(corrupt)?;
            let format = meta.get(META_FORMAT).map_err(corrupt)?.map(|v| v.value().to_vec());
            let wrapped = meta.get(META_DEK).map_err(corrupt)?.map(|v| v.value().to_vec());
            (format, wrapped)
        };
        // The store answered; what follows judges our data, not redb's structures.
        db.set_damaged(false);
        if format.as_deref() == Some(FORMAT_V1) {
            return Err(VaultError::Integrity(
                "vault format 1 (record keys stored in the clear) was written by an older build; this build reads \
                 format 2 only"
                    .into(),
            ));
        }
        if format.as_deref() != Some(FORMAT_V2) {
            return Err(VaultError::Integrity("unknown or missing vault format marker".into()));
        }
        let wrapped = wrapped.ok_or_else(|| VaultError::Integrity("wrapped data key missing".into()))?;
        let env = decode_envelope(&wrapped)?;
        if env.version != 0 {
            return Err(VaultError::Integrity("wrapped data key has an unknown version".into()));
        }
        let dek_bytes = RecordCipher::new(kek)?.open(&aad(AAD_DEK, &tenant, "", 0), &env).ok_or_else(|| {
            VaultError::Integrity("data key does not unwrap: wrong tenant key or altered file".into())
        })?;
        let dek = dek_bytes
            .into_key()
            .ok_or_else(|| VaultError::Integrity("unwrapped data key has the wrong length".into()))?;
        Self::assemble(db, tenant, &dek, path, lock)
    }

    /// The OAR target for record `key`: a commitment to the key whose salt is derived from this vault's
    /// secret key, so the same key always gives the same target (an auditor can link operations on one
    /// record) while nobody without the tenant's keys can test a guessed key against it.
    pub fn key_target(&self, key: &str) -> Result<Target, VaultError> {
        Ok(self.recall(key)?.target)
    }

    /// The name record `key` is stored under in the vault file (its locator: a keyed hash of the key, in
    /// hex), for tools and tests that look at the file itself.
    pub fn record_locator(&self, key: &str) -> Result<String, VaultError> {
        Ok(locator_str(&self.recall(key)?.locator).to_string())
    }

    /// `key`'s OAR target, locator and memoized record (one lookup in the record cache).
    fn recall(&self, key: &str) -> Result<Recalled, VaultError> {
        self.recall_for(key, false)
    }

    /// [`Vault::recall`], for a `read` also whether it keeps what it decrypts (see [`RecordCache::recall`]).
    fn recall_for(&self, key: &str, read: bool) -> Result<Recalled, VaultError> {
        check_key(key)?;
        self.cache().recall(key, read, || {
            let salt = entry_mac(&self.mac_key, "oar-salt", key, &[]);
            let (c, _opening) = Commitment::with_salt("vault/key", salt, key.as_bytes())
                .map_err(|e| VaultError::Integrity(format!("cannot commit to the record key: {e}")))?;
            // The locator's label keeps it independent of the OAR salt derived from the same key.
            Ok((c, entry_mac(&self.mac_key, "record-locator", key, &[])))
        })
    }

    fn check(&self, attested: &Attested, op: OpKind, target: &Target) -> Result<(), VaultError> {
        attested.require(LedgerScope::Tenant(self.tenant), op, target).map_err(VaultError::NotAttested)
    }

    /// The tenant this vault belongs to.
    pub fn tenant(&self) -> TenantId {
        self.tenant
    }

    /// Stores `value` under `key`, whose locator the record cache gave (so `key` is already checked).
    fn put_unguarded(&self, key: &str, locator: &Locator, value: &[u8]) -> Result<u64, VaultError> {
        let locator = locator_str(locator);
        if value.len() > MAX_VALUE_LEN {
            return Err(VaultError::TooLarge { len: value.len(), max: MAX_VALUE_LEN });
        }
        let mut tx = self.db.begin_write()?;
        tx.set_durability(redb::Durability::Immediate).map_err(corrupt)?;
        let version;
        let sealed;
        let bytes;
        {
            let mut records = tx.open_table(RECORDS).map_err(corrupt)?;
            let mut meta = tx.open_table(META).map_err(corrupt)?;
            let mut digest = read_digest(&meta)?;
            let old = records.get(locator).map_err(corrupt)?.map(|v| v.value().to_vec());
            let prev_version = match &old {
                Some(bytes) => {
                    xor_into(&mut digest, &entry_mac(&self.mac_key, "records", locator, bytes));
                    decode_record(bytes)?.body.version
                }
                None => 0,
            };
            version =
                prev_version.checked_add(1).ok_or_else(|| VaultError::Integrity("record version overflow".into()))?;
            let mut body = self.cipher.seal(&aad(AAD_RECORD, &self.tenant, key, version), value);
            body.version = version;
            let sealed_key = self.cipher.seal(&aad(AAD_RECORD_KEY, &self.tenant, locator, 0), key.as_bytes());
            let env = RecordEnvelope { body, key: sealed_key };
            bytes = encode(&env)?;
            xor_into(&mut digest, &entry_mac(&self.mac_key, "records", locator, &bytes));
            records.insert(locator, bytes.as_slice()).map_err(corrupt)?;
            meta.insert(META_DIGEST, digest.as_slice()).map_err(corrupt)?;
            let body = &env.body;
            sealed = sealed_id(version, &body.nonce, body.ciphertext.len());
        }
        self.cache().forget(key);
        self.commit_settled(tx, |tx| {
            let records = tx.open_table(RECORDS).map_err(corrupt)?;
            Ok(records.get(locator).map_err(corrupt)?.is_some_and(|v| v.value() == bytes.as_slice()))
        })?;
        if let Some(id) = sealed {
            self.cache().keep(key, RecordValue::new(id, Plaintext::new(value.to_vec())));
        }
        Ok(version)
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, RecordCache> {
        // The cache holds plain data (slots and a byte count) and nothing in it panics while it is
        // locked; a panic elsewhere cannot break it.
        self.cache.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Reads `key` (already checked, its target attested), answering from `memo` when the stored record
    /// is the one memoized, and memoizing what it decrypts if it is to `keep` it or `memo` is stale.
    fn get_unguarded(
        &self,
        key: &str,
        locator: &Locator,
        memo: Option<RecordValue>,
        keep: bool,
    ) -> Result<RecordValue, VaultError> {
        let tx = self.db.begin_read()?;
        let records = tx.open_table(RECORDS).map_err(corrupt)?;
        let Some(guard) = records.get(locator_str(locator)).map_err(corrupt)? else {
            return Err(self.absent(&tx, key));
        };
        let stored = guard.value();
        // The memo answers when the stored record is still the one it was decrypted from; that is read
        // from the record's head, so the rest of it (the ciphertext's far end, the sealed key) stays
        // untouched.
        let stale = match memo {
            Some(kept) if head_id(stored) == Some(kept.0.sealed) => return Ok(kept),
            Some(_) => true,
            None => false,
        };
        // The stored key is not opened: the value's associated data binds the key asked for.
        let env = decode_record(stored)?.body;
        let refused = || {
            VaultError::Integrity(format!("record {key:?} does not authenticate (altered, moved or another tenant's)"))
        };
        // A ciphertext shorter than its tag has no identity and cannot authenticate.
        let sealed = sealed_id(env.version, &env.nonce, env.ciphertext.len()).ok_or_else(refused)?;
        let plaintext = self.cipher.open(&aad(AAD_RECORD, &self.tenant, key, env.version), &env).ok_or_else(refused)?;
        let value = RecordValue::new(sealed, plaintext);
        if keep || stale {
            self.cache().keep(key, value.clone());
        }
        Ok(value)
    }

    fn list_unguarded(&self) -> Result<Vec<RecordInfo>, VaultError> {
        self.scan(&self.db.begin_read()?, false)
    }

    /// Why `key` is not in the store, as `tx` sees it: [`VaultError::NotFound`] when the set digest matches
    /// the stored entries, else the digest's [`VaultError::Integrity`] (the record was removed or renamed
    /// on disk). This costs what [`Vault::list`] costs, on a miss only.
    fn absent(&self, tx: &ReadTransaction, key: &str) -> VaultError {
        match self.scan(tx, false) {
            Ok(_) => VaultError::NotFound(key.to_string()),
            Err(e) => e,
        }
    }

    fn delete_unguarded(&self, key: &str, locator: &Locator) -> Result<(), VaultError> {
        let locator = locator_str(locator);
        let mut tx = self.db.begin_write()?;
        tx.set_durability(redb::Durability::Immediate).map_err(corrupt)?;
        {
            let mut records = tx.open_table(RECORDS).map_err(corrupt)?;
            let mut meta = tx.open_table(META).map_err(corrupt)?;
            let mut digest = read_digest(&meta)?;
            let Some(old) = records.remove(locator).map_err(corrupt)?.map(|v| v.value().to_vec()) else {
                // Nothing was removed; the transaction is dropped uncommitted.
                return Err(self.absent(&self.db.begin_read()?, key));
            };
            xor_into(&mut digest, &entry_mac(&self.mac_key, "records", locator, &old));
            meta.insert(META_DIGEST, digest.as_slice()).map_err(corrupt)?;
        }
        self.cache().forget(key);
        self.commit_settled(tx, |tx| {
            Ok(tx.open_table(RECORDS).map_err(corrupt)?.get(locator).map_err(corrupt)?.is_none())
        })
    }

    /// Commits `tx`, and after a failure of the file system looks whether the change reached the file all
    /// the same ([`crate::datadir::commit_settled`]): its error stands only when the change is not there,
    /// and [`VaultError::Unsettled`] says so when the file cannot be reopened to look. `stored` asks the
    /// reopened file.
    fn commit_settled(
        &self,
        tx: WriteTransaction,
        stored: impl FnOnce(&ReadTransaction) -> Result<bool, VaultError>,
    ) -> Result<(), VaultError> {
        let look = || {
            self.db.reopen(&self.path)?;
            stored(&self.db.begin_read()?)
        };
        match crate::datadir::commit_settled("vault", &self.path, tx, look).map_err(corrupt)? {
            Settled::Stored => Ok(()),
            Settled::Failed(e) => Err(VaultError::Storage(e)),
            Settled::Unknown { failed, reopen } => Err(VaultError::Unsettled { source: failed, reopen }),
        }
    }

    fn put_secret_unguarded(&self, name: &str, secret: &SecretKey) -> Result<(), VaultError> {
        check_key(name)?;
        let slot = format!("secret/{name}");
        let mut tx = self.db.begin_write()?;
        tx.set_durability(redb::Durability::Immediate).map_err(corrupt)?;
        {
            let mut meta = tx.open_table(META).map_err(corrupt)?;
            let mut digest = read_digest(&meta)?;
            if let Some(old) = meta.get(slot.as_str()).map_err(corrupt)?.map(|v| v.value().to_vec()) {
                xor_into(&mut digest, &entry_mac(&self.mac_key, "meta", &slot, &old));
            }
            let env = self.cipher.seal(&aad(AAD_SECRET, &self.tenant, name, 0), secret.expose_secret());
            let bytes = encode(&env)?;
            xor_into(&mut digest, &entry_mac(&self.mac_key, "meta", &slot, &bytes));
            meta.insert(slot.as_str(), bytes.as_slice()).map_err(corrupt)?;
            meta.insert(META_DIGEST, digest.as_slice()).map_err(corrupt)?;
        }
        tx.commit().map_err(corrupt)?;
        Ok(())
    }

    fn get_secret_unguarded(&self, name: &str) -> Result<SecretKey, VaultError> {
        check_key(name)?;
        let slot = format!("secret/{name}");
        let tx = self.db.begin_read()?;
        let meta = tx.open_table(META).map_err(corrupt)?;
        let bytes = meta
            .get(slot.as_str())
            .map_err(corrupt)?
            .map(|v| v.value().to_vec())
            .ok_or_else(|| VaultError::NotFound(slot.clone()))?;
        let env = decode_envelope(&bytes)?;
        let plain = self
            .cipher
            .open(&aad(AAD_SECRET, &self.tenant, name, 0), &env)
            .ok_or_else(|| VaultError::Integrity(format!("secret {name:?} does not authenticate")))?;
        plain.into_key().ok_or_else(|| VaultError::Integrity(format!("secret {name:?} has the wrong length")))
    }

    fn verify_unguarded(&self) -> Result<usize, VaultError> {
        Ok(self.scan(&self.db.begin_read()?, true)?.len())
    }

    /// Every record's key, version and length, in key order, after checking the keyed set digest over
    /// every stored entry (so a removed, renamed, duplicated or rolled-in entry is an error, not a
    /// listing); with `authenticate`, every record and secret is also decrypted and checked.
    fn scan(&self, tx: &ReadTransaction, authenticate: bool) -> Result<Vec<RecordInfo>, VaultError> {
        let records = tx.open_table(RECORDS).map_err(corrupt)?;
        let meta = tx.open_table(META).map_err(corrupt)?;
        let stored = read_digest(&meta)?;
        let mut digest = [0u8; 32];
        // Each record's locator, version, length and sealed key; the keys are opened once the set digest
        // has matched, so an entry renamed or removed on disk is reported as that, first.
        let mut found = Vec::new();
        for item in records.iter().map_err(corrupt)? {
            let (k, v) = item.map_err(corrupt)?;
            let locator = k.value();
            let env = decode_record(v.value())?;
            if authenticate {
                let key = self.open_record_key(locator, &env.key)?;
                self.cipher
                    .open(&aad(AAD_RECORD, &self.tenant, &key, env.body.version), &env.body)
                    .ok_or_else(|| VaultError::Integrity(format!("record {key:?} does not authenticate")))?;
            }
            xor_into(&mut digest, &entry_mac(&self.mac_key, "records", locator, v.value()));
            let len = env.body.ciphertext.len().saturating_sub(TAG_LEN);
            let sealed_key = (env.key.nonce, env.key.ciphertext.to_vec());
            found.push((locator.to_string(), env.body.version, len, sealed_key));
        }
        for item in meta.iter().map_err(corrupt)? {
            let (k, v) = item.map_err(corrupt)?;
            match k.value() {
                META_DIGEST | META_DEK => {}
                META_FORMAT => xor_into(&mut digest, &entry_mac(&self.mac_key, "meta", META_FORMAT, v.value())),
                slot => {
                    let Some(name) = slot.strip_prefix("secret/") else {
                        return Err(VaultError::Integrity(format!("unexpected metadata entry {slot:?}")));
                    };
                    if authenticate {
                        let env = decode_envelope(v.value())?;
                        self.cipher
                            .open(&aad(AAD_SECRET, &self.tenant, name, 0), &env)
                            .ok_or_else(|| VaultError::Integrity(format!("secret {name:?} does not authenticate")))?;
                    }
                    xor_into(&mut digest, &entry_mac(&self.mac_key, "meta", slot, v.value()));
                }
            }
        }
        if !bool::from(subtle::ConstantTimeEq::ct_eq(&digest[..], &stored[..])) {
            return Err(VaultError::Integrity(
                "set digest mismatch: entries were removed, renamed or added outside the vault (`bulwark vault verify` \
                 checks every record)"
                    .into(),
            ));
        }
        let mut out = Vec::with_capacity(found.len());
        for (locator, version, len, (nonce, ciphertext)) in found {
            let key = self.open_record_key(&locator, &EnvelopeRef { version: 0, nonce, ciphertext: &ciphertext })?;
            out.push(RecordInfo { key, version, len });
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    /// The record key sealed beside the record stored under `locator`.
    fn open_record_key(&self, locator: &str, sealed: &EnvelopeRef<'_>) -> Result<String, VaultError> {
        let refused =
            || VaultError::Integrity(format!("the key of the record stored as {locator} does not authenticate"));
        let opened = self.cipher.open(&aad(AAD_RECORD_KEY, &self.tenant, locator, 0), sealed).ok_or_else(refused)?;
        std::str::from_utf8(&opened).map(str::to_string).map_err(|_| refused())
    }
}

fn read_digest(meta: &impl ReadableTable<&'static str, &'static [u8]>) -> Result<[u8; 32], VaultError> {
    let v =
        meta.get(META_DIGEST).map_err(corrupt)?.ok_or_else(|| VaultError::Integrity("set digest missing".into()))?;
    <[u8; 32]>::try_from(v.value()).map_err(|_| VaultError::Integrity("set digest has the wrong length".into()))
}

fn decode_record(bytes: &[u8]) -> Result<RecordEnvelopeRef<'_>, VaultError> {
    decode_exactly(bytes)
}

fn decode_envelope(bytes: &[u8]) -> Result<EnvelopeRef<'_>, VaultError> {
    decode_exactly(bytes)
}

/// `value` in postcard (which cannot fail for the vault's fixed-shape envelopes).
fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, VaultError> {
    postcard::to_stdvec(value).map_err(|e| VaultError::Corrupt(Box::new(e)))
}

/// A stored value read in place, all of it: trailing bytes are refused like malformed ones.
fn decode_exactly<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, VaultError> {
    let (value, rest): (T, &[u8]) =
        postcard::take_from_bytes(bytes).map_err(|_| VaultError::Integrity("stored record is malformed".into()))?;
    if !rest.is_empty() {
        return Err(VaultError::Integrity("stored record has trailing bytes".into()));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datadir::tests::{CommitFault, away};
    use bulwark_ledger::oar::{Actor, OarDraft, Role, RuntimeState};
    use bulwark_ledger::{Gate, LedgerSigner, SignerSeed};

    /// A real ledger gate for one tenant: tests mint real tokens, never fake ones.
    struct TestGate {
        _dir: tempfile::TempDir,
        gate: Gate,
    }

    fn gate_for(t: TenantId) -> TestGate {
        let dir = tempfile::tempdir().unwrap();
        let seed = SignerSeed::generate().unwrap();
        let runtime = RuntimeState::new(15, 0x000B, vec![0; 32]).unwrap();
        let gate = Gate::create(&dir.path().join("ledger"), LedgerSigner::tenant(t, &seed).unwrap(), runtime).unwrap();
        TestGate { _dir: dir, gate }
    }

    impl TestGate {
        fn tok(&self, v: &Vault, op: OpKind, key: Option<&str>) -> Attested {
            let target = key.map_or(Ok(Target::None), |k| v.key_target(k)).unwrap();
            let actor = Actor { role: Role::TenantUser, subject: Digest::None };
            self.gate.attest(OarDraft::new(actor, op, target, Digest::None)).unwrap()
        }
    }

    // Shorthands: attest, then run the vault operation with the token.
    impl Vault {
        fn t_put(&self, g: &TestGate, key: &str, value: &[u8]) -> Result<u64, VaultError> {
            if check_key(key).is_err() {
                return self.recall(key).and_then(|r| self.put_unguarded(key, &r.locator, value));
            }
            self.put(&g.tok(self, OpKind::VaultPut, Some(key)), key, value)
        }
        fn t_get(&self, g: &TestGate, key: &str) -> Result<RecordValue, VaultError> {
            self.get(&g.tok(self, OpKind::VaultGet, Some(key)), key)
        }
        fn t_delete(&self, g: &TestGate, key: &str) -> Result<(), VaultError> {
            self.delete(&g.tok(self, OpKind::VaultDelete, Some(key)), key)
        }
        fn t_list(&self, g: &TestGate) -> Result<Vec<RecordInfo>, VaultError> {
            self.list(&g.tok(self, OpKind::VaultList, None))
        }
        fn t_verify(&self, g: &TestGate) -> Result<usize, VaultError> {
            self.verify(&g.tok(self, OpKind::VaultList, None))
        }
        /// The stored bytes of record `key`, read past the vault.
        fn raw(&self, key: &str) -> Vec<u8> {
            let tx = self.db.begin_read().unwrap();
            let records = tx.open_table(RECORDS).unwrap();
            records.get(self.record_locator(key).unwrap().as_str()).unwrap().unwrap().value().to_vec()
        }
        /// Writes `bytes` as record `key`'s stored bytes, past the vault (its set digest is not updated).
        fn put_raw(&self, key: &str, bytes: &[u8]) {
            let tx = self.db.begin_write().unwrap();
            tx.open_table(RECORDS).unwrap().insert(self.record_locator(key).unwrap().as_str(), bytes).unwrap();
            tx.commit().unwrap();
        }
        /// Records memoized and the bytes counted for them (checked against the slots themselves).
        fn memoized(&self) -> (usize, usize) {
            let cache = self.cache();
            let kept: Vec<_> = cache.slots.values().filter_map(|slot| slot.memo.as_ref()).collect();
            let bytes = kept.iter().map(|v| memo_size(v)).sum::<usize>();
            assert_eq!(bytes, cache.memo_bytes);
            (kept.len(), bytes)
        }
    }

    #[test]
    fn a_write_the_file_system_fails_is_reported_as_what_reached_the_file() {
        let (_d, p, t, kek) = fresh();
        let g = gate_for(t);
        drop(Vault::create(&p, t, &kek).unwrap());
        // Opened as commands open it: read-only first, read-write from the first write.
        let v = Vault::open(&p, t, &kek).unwrap();
        v.t_put(&g, "kept", b"v1").unwrap();
        // Failed before it reached the file: the error stands and nothing changed.
        CommitFault::Before.next();
        assert!(matches!(v.t_put(&g, "kept", b"v2"), Err(VaultError::Storage(_))));
        CommitFault::Before.next();
        assert!(matches!(v.t_put(&g, "new", b"n"), Err(VaultError::Storage(_))));
        CommitFault::Before.next();
        assert!(matches!(v.t_delete(&g, "kept"), Err(VaultError::Storage(_))));
        assert_eq!(&*v.t_get(&g, "kept").unwrap(), b"v1");
        assert!(matches!(v.t_get(&g, "new"), Err(VaultError::NotFound(_))));
        // Reported as failed but on the file: the write stands, and says so.
        CommitFault::After.next();
        assert_eq!(v.t_put(&g, "kept", b"v3").unwrap(), 2);
        CommitFault::After.next();
        assert_eq!(v.t_put(&g, "new", b"n").unwrap(), 1);
        CommitFault::After.next();
        v.t_delete(&g, "new").unwrap();
        assert_eq!(&*v.t_get(&g, "kept").unwrap(), b"v3");
        assert!(matches!(v.t_get(&g, "new"), Err(VaultError::NotFound(_))));
        // The vault goes on writing after the reopen.
        assert_eq!(v.t_put(&g, "later", b"l").unwrap(), 1);
        // On the file, but the file cannot be reopened to tell: unsettled, and a read of the file once it is
        // back shows the write.
        CommitFault::AfterThenAway(p.clone()).next();
        let e = v.t_put(&g, "kept", b"v4").unwrap_err();
        assert!(matches!(e, VaultError::Unsettled { .. }), "{e:?}");
        assert!(e.to_string().contains("whether the change was stored could not be told"), "{e}");
        assert!(v.t_get(&g, "kept").is_err(), "a vault that could not be reopened still answered");
        drop(v);
        std::fs::rename(away(&p), &p).unwrap();
        let v = Vault::open(&p, t, &kek).unwrap();
        assert_eq!(&*v.t_get(&g, "kept").unwrap(), b"v4");
        assert_eq!(v.t_verify(&g).unwrap(), 2);
    }

    fn fresh() -> (tempfile::TempDir, PathBuf, TenantId, SecretKey) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("vault.redb");
        (dir, p, TenantId::random().unwrap(), SecretKey::random())
    }

    #[test]
    fn put_get_list_delete_round_trip() {
        let (_d, p, t, kek) = fresh();
        let v = Vault::create(&p, t, &kek).unwrap();
        let g = gate_for(t);
        assert_eq!(v.t_put(&g, "k1", b"secret").unwrap(), 1);
        assert_eq!(v.t_put(&g, "k1", b"secret2").unwrap(), 2);
        v.t_put(&g, "k2", b"").unwrap();
        assert_eq!(&*v.t_get(&g, "k1").unwrap(), b"secret2");
        let l = v.t_list(&g).unwrap();
        assert_eq!(l.len(), 2);
        assert_eq!(l[0], RecordInfo { key: "k1".into(), version: 2, len: 7 });
        v.t_delete(&g, "k2").unwrap();
        assert!(matches!(v.t_get(&g, "k2"), Err(VaultError::NotFound(_))));
        assert!(matches!(v.t_delete(&g, "k2"), Err(VaultError::NotFound(_))));
        assert_eq!(v.t_verify(&g).unwrap(), 1);
        drop(v);
        let v = Vault::open(&p, t, &kek).unwrap();
        assert_eq!(&*v.t_get(&g, "k1").unwrap(), b"secret2");
    }

    #[test]
    fn record_keys_are_stored_only_sealed() {
        let (_d, p, t, kek) = fresh();
        let g = gate_for(t);
        let v = Vault::create(&p, t, &kek).unwrap();
        let keys = ["patient/4711/diagnosis", "b-key", "a-key"];
        for k in keys {
            v.t_put(&g, k, b"v").unwrap();
        }
        let listed: Vec<String> = v.t_list(&g).unwrap().into_iter().map(|r| r.key).collect();
        assert_eq!(listed, ["a-key", "b-key", "patient/4711/diagnosis"], "listed by key, named from the sealed keys");
        // Each record is stored under a 64-hex-digit locator that depends on the vault's keys.
        let stored: Vec<String> = {
            let tx = v.db.begin_read().unwrap();
            let records = tx.open_table(RECORDS).unwrap();
            records.iter().unwrap().map(|e| e.unwrap().0.value().to_string()).collect()
        };
        assert_eq!(stored.len(), 3);
        assert!(stored.iter().all(|l| l.len() == 64 && l.bytes().all(|b| b.is_ascii_hexdigit())), "{stored:?}");
        let other = Vault::create(&p.with_file_name("other.redb"), t, &kek).unwrap();
        assert_ne!(other.record_locator("a-key").unwrap(), v.record_locator("a-key").unwrap());
        drop(v);
        let file = std::fs::read(&p).unwrap();
        for k in ["patient/4711", "b-key", "a-key"] {
            assert!(!file.windows(k.len()).any(|w| w == k.as_bytes()), "{k:?} is in the vault file in the clear");
        }
    }

    #[test]
    fn a_format_1_vault_is_refused_by_name() {
        let (_d, p, t, kek) = fresh();
        drop(Vault::create(&p, t, &kek).unwrap());
        {
            let db = Database::open(&p).unwrap();
            let tx = db.begin_write().unwrap();
            tx.open_table(META).unwrap().insert(META_FORMAT, FORMAT_V1).unwrap();
            tx.commit().unwrap();
        }
        let e = Vault::open(&p, t, &kek).unwrap_err();
        assert!(matches!(&e, VaultError::Integrity(m) if m.contains("format 1")), "{e}");
    }

    #[test]
    fn bad_input_is_refused_and_loses_nothing() {
        let (_d, p, t, kek) = fresh();
        let v = Vault::create(&p, t, &kek).unwrap();
        let g = gate_for(t);
        v.t_put(&g, "keep", b"x").unwrap();
        assert!(matches!(v.t_put(&g, "", b"x"), Err(VaultError::BadKey(_))));
        assert!(matches!(v.t_put(&g, &"a".repeat(257), b"x"), Err(VaultError::BadKey(_))));
        assert!(matches!(v.t_put(&g, "a\nb", b"x"), Err(VaultError::BadKey(_))));
        for unseen in ["invoice\u{202E}fdp.exe", "a\u{200B}b", "\u{FEFF}k", "x\u{2066}y\u{2069}"] {
            let e = v.t_put(&g, unseen, b"x").unwrap_err();
            assert!(e.to_string().contains("invisible or text-direction"), "{unseen:?}: {e}");
        }
        // Scripts that spell with a zero-width non-joiner keep it.
        v.t_put(&g, "\u{0645}\u{06CC}\u{200C}\u{062E}\u{0648}\u{0627}\u{0647}\u{0645}", b"y").unwrap();
        // A record stored under such a key before the rule stays readable and deletable.
        let old = "old\u{202E}key";
        v.recall(old).and_then(|r| v.put_unguarded(old, &r.locator, b"z")).unwrap();
        assert_eq!(&*v.t_get(&g, old).unwrap(), b"z");
        v.t_delete(&g, old).unwrap();
        assert!(matches!(v.t_put(&g, "big", &vec![0u8; MAX_VALUE_LEN + 1]), Err(VaultError::TooLarge { .. })));
        assert_eq!(&*v.t_get(&g, "keep").unwrap(), b"x");
        assert_eq!(v.t_verify(&g).unwrap(), 2);
    }

    #[test]
    fn read_only_open_reads_and_never_writes() {
        let (_d, p, t, kek) = fresh();
        let g = gate_for(t);
        let v = Vault::create(&p, t, &kek).unwrap();
        v.t_put(&g, "k", b"value").unwrap();
        drop(v);
        let before = std::fs::read(&p).unwrap();
        let v = Vault::open_read_only(&p, t, &kek).unwrap();
        assert_eq!(&v.t_get(&g, "k").unwrap()[..], b"value");
        assert_eq!(v.t_verify(&g).unwrap(), 1);
        assert!(matches!(v.t_put(&g, "k2", b"x"), Err(VaultError::ReadOnly)));
        assert!(matches!(v.put_secret("s", &SecretKey::random()), Err(VaultError::ReadOnly)));
        drop(v);
        assert!(std::fs::read(&p).unwrap() == before, "a read-only open changed the file");
        // A wrong key is refused read-only too, and the file stays usable read-write afterwards.
        assert!(matches!(Vault::open_read_only(&p, t, &SecretKey::random()), Err(VaultError::Integrity(_))));
        let v = Vault::open(&p, t, &kek).unwrap();
        v.t_put(&g, "k2", b"x").unwrap();
    }

    #[test]
    fn rfc_8452_known_answers_through_both_implementations() {
        // RFC 8452, Appendix C.2 (AEAD_AES_256_GCM_SIV): key 01 00..00, nonce 03 00..00, no AAD.
        let mut raw = [0u8; 32];
        raw[0] = 1;
        let c = RecordCipher::new(&SecretKey::take_from(&mut raw).unwrap()).unwrap();
        let mut nonce = [0u8; 12];
        nonce[0] = 3;
        for (plaintext, result) in [
            ("", "07f5f4169bbf55a8400cd47ea6fd400f"),
            ("0100000000000000", "c2ef328e5c71c83b843122130f7364b761e0b97427e3df28"),
        ] {
            let (pt, expected) = (hex::decode(plaintext).unwrap(), hex::decode(result).unwrap());
            let sealed = c.sealer.encrypt(&Nonce::from(nonce), Payload { msg: &pt, aad: &[] }).unwrap();
            assert_eq!(sealed, expected);
            let env = EnvelopeRef { version: 0, nonce, ciphertext: &expected };
            assert_eq!(&*c.open(&[], &env).unwrap(), &pt[..]);
        }
    }

    #[test]
    fn both_aead_implementations_agree_byte_for_byte() {
        // aes-gcm-siv seals and aws-lc-rs opens: both must produce the same RFC 8452 bytes, and each must
        // refuse what the other would refuse.
        for len in [0usize, 1, 15, 16, 17, 255, 4096, 4097, 65_536] {
            let key = SecretKey::random();
            let c = RecordCipher::new(&key).unwrap();
            let mut msg = vec![0u8; len];
            rand::rngs::OsRng.fill_bytes(&mut msg);
            let aad = aad(AAD_RECORD, &TenantId::random().unwrap(), "k", len as u64);
            let env = c.seal(&aad, &msg);
            let mut by_aws_lc = msg.clone();
            LessSafeKey::new(UnboundKey::new(&AES_256_GCM_SIV, key.expose_secret()).unwrap())
                .seal_in_place_append_tag(
                    aws_lc_rs::aead::Nonce::assume_unique_for_key(env.nonce),
                    Aad::from(&aad[..]),
                    &mut by_aws_lc,
                )
                .unwrap();
            assert_eq!(by_aws_lc, env.ciphertext, "length {len}");
            let stored = EnvelopeRef { version: 0, nonce: env.nonce, ciphertext: &env.ciphertext };
            assert_eq!(&*c.open(&aad, &stored).unwrap(), &msg[..]);
            let mut flipped = env.ciphertext.clone();
            let at = (len * 7919) % flipped.len();
            flipped[at] ^= 0x40;
            let bad = EnvelopeRef { version: 0, nonce: env.nonce, ciphertext: &flipped };
            assert!(c.open(&aad, &bad).is_none(), "flip at {at} of length {len}");
            assert!(c.sealer.decrypt(&Nonce::from(env.nonce), Payload { msg: &flipped, aad: &aad }).is_err());
            let mut other_aad = aad.clone();
            other_aad[0] ^= 1;
            assert!(c.open(&other_aad, &stored).is_none());
            let short = EnvelopeRef { version: 0, nonce: env.nonce, ciphertext: &env.ciphertext[..15.min(len)] };
            assert!(c.open(&aad, &short).is_none());
        }
    }

    #[test]
    fn the_read_memo_keeps_records_read_twice_and_nothing_read_once() {
        let (_d, p, t, kek) = fresh();
        let g = gate_for(t);
        {
            let v = Vault::create(&p, t, &kek).unwrap();
            for i in 0..50 {
                v.t_put(&g, &format!("k{i}"), format!("value {i}").as_bytes()).unwrap();
            }
        }
        let v = Vault::open_read_only(&p, t, &kek).unwrap();
        // A scan reads every record once: each is decrypted, none is kept.
        for i in 0..50 {
            assert_eq!(&*v.t_get(&g, &format!("k{i}")).unwrap(), format!("value {i}").as_bytes());
        }
        assert_eq!(v.memoized(), (0, 0));
        // The second read of a record decrypts it again and keeps it; the third is served from the memo.
        let second = v.t_get(&g, "k7").unwrap();
        assert_eq!(v.memoized().0, 1);
        let third = v.t_get(&g, "k7").unwrap();
        assert!(Arc::ptr_eq(&second.0, &third.0));
        assert_eq!(&*third, b"value 7");
        // The memo's identity, read from a stored record's head, is the one its full decode gives; a
        // record cut short of what its head says has none.
        for i in 0..50 {
            let stored = v.raw(&format!("k{i}"));
            let body = decode_record(&stored).unwrap().body;
            assert_eq!(head_id(&stored), sealed_id(body.version, &body.nonce, body.ciphertext.len()));
            assert!(head_id(&stored).is_some());
            assert_eq!(head_id(&stored[..stored.len() / 2]), None);
            assert_eq!(head_id(&stored[..3]), None);
        }
        // A record that failed to authenticate is neither kept nor counted as read.
        drop(v);
        let v = Vault::open(&p, t, &kek).unwrap();
        v.put_raw("k1", &v.raw("k2"));
        for _ in 0..3 {
            assert!(matches!(v.t_get(&g, "k1"), Err(VaultError::Integrity(_))));
        }
        assert_eq!(v.memoized(), (0, 0));
        assert!(v.cache().slots.values().all(|slot| !slot.read_once));
    }

    #[test]
    fn the_record_cache_stays_within_its_bounds() {
        let mut cache = RecordCache::default();
        let none = || Ok((Commitment(bulwark_ledger::Hash([0; 32])), [0; 32]));
        let mib = |b: u8| RecordValue::new([b; 28], Plaintext::new(vec![b; 1 << 20]));
        // The memo budget: 80 records of 1 MiB, kept as if each was written, never hold more than
        // MEMO_BYTES, and eviction leaves the newest record kept.
        for i in 0..80u8 {
            let key = format!("big{i}");
            cache.recall(&key, false, none).unwrap();
            cache.keep(&key, mib(i));
            assert!(cache.memo_bytes <= MEMO_BYTES);
            let kept = cache.recall(&key, true, none).unwrap().memo;
            assert_eq!(kept.map(|v| (v.0.sealed, v[0])), Some(([i; 28], i)));
        }
        let counted: usize = cache.slots.values().filter_map(|s| s.memo.as_ref()).map(memo_size).sum();
        assert_eq!(counted, cache.memo_bytes);
        // A record over an eighth of the budget is never kept.
        cache.recall("huge", false, none).unwrap();
        cache.keep("huge", RecordValue::new([0; 28], Plaintext::new(vec![0; MEMO_BYTES / 8 + 1])));
        assert!(cache.recall("huge", false, none).unwrap().memo.is_none());
        // The key bound: past TARGET_CACHE keys, those holding no plaintext are forgotten first.
        for i in 0..TARGET_CACHE + 10 {
            cache.recall(&format!("k{i}"), false, none).unwrap();
            assert!(cache.slots.len() <= TARGET_CACHE);
        }
        assert!(cache.slots.contains_key("big79"), "a memoized record outlives the keys that hold nothing");
        // Read once, then twice: kept on the second read; forgotten entirely on a write or delete.
        let small = RecordValue::new([1; 28], Plaintext::new(b"v".to_vec()));
        // Only a read keeps, and not a lookup for an OAR target or a write's locator.
        assert!(!cache.recall("r", false, none).unwrap().keep);
        assert!(!cache.recall("r", true, none).unwrap().keep, "a first read is not kept");
        assert!(!cache.recall("r", false, none).unwrap().keep);
        assert!(cache.recall("r", true, none).unwrap().keep, "a second read is");
        cache.keep("r", small.clone());
        let again = cache.recall("r", true, none).unwrap();
        assert!(again.memo.is_some() && !again.keep, "a memoized record is answered, not read again");
        cache.forget("r");
        assert!(cache.recall("r", false, none).unwrap().memo.is_none());
        assert!(!cache.slots["r"].read_once);
        // A key first seen by a read counts that read.
        assert!(!cache.recall("s", true, none).unwrap().keep);
        assert!(cache.recall("s", true, none).unwrap().keep);
        // A key the cache does not hold is never memoized.
        cache.keep("absent", small.clone());
        assert!(!cache.slots.contains_key("absent"));
    }

    #[test]
    fn a_caught_storage_panic_is_marked_while_it_unwinds() {
        assert!(!storage_panic_is_caught());
        let seen = std::sync::atomic::AtomicBool::new(false);
        let r = caught(|| {
            seen.store(storage_panic_is_caught(), std::sync::atomic::Ordering::SeqCst);
            std::panic::resume_unwind(Box::new("storage engine"));
        });
        assert!(r.is_err());
        assert!(seen.load(std::sync::atomic::Ordering::SeqCst), "inside: marked");
        assert!(!storage_panic_is_caught(), "after: no longer marked");
        let e = guarded(None, || -> Result<(), VaultError> { std::panic::resume_unwind(Box::new(1u8)) });
        assert!(matches!(e, Err(VaultError::Corrupt(_))));
    }

    #[test]
    fn list_refuses_a_record_renamed_or_removed_outside_the_vault() {
        let (_d, p, t, kek) = fresh();
        let g = gate_for(t);
        let v = Vault::create(&p, t, &kek).unwrap();
        v.t_put(&g, "k1", b"one").unwrap();
        v.t_put(&g, "k2", b"two").unwrap();
        let k1 = v.raw("k1");
        let raw = |remove: &str, insert: Option<(&str, &[u8])>| {
            let tx = v.db.begin_write().unwrap();
            {
                let mut records = tx.open_table(RECORDS).unwrap();
                records.remove(v.record_locator(remove).unwrap().as_str()).unwrap();
                if let Some((key, bytes)) = insert {
                    records.insert(v.record_locator(key).unwrap().as_str(), bytes).unwrap();
                }
            }
            tx.commit().unwrap();
        };
        // Renamed on disk (the stored bytes moved to another key): listed as an error, not as "j1"; a read
        // of the old key says so too, instead of "no record".
        raw("k1", Some(("j1", &k1)));
        assert!(matches!(v.t_list(&g), Err(VaultError::Integrity(m)) if m.contains("set digest")));
        assert!(matches!(v.t_get(&g, "k1"), Err(VaultError::Integrity(m)) if m.contains("set digest")));
        assert!(matches!(v.t_get(&g, "j1"), Err(VaultError::Integrity(m)) if m.contains("does not authenticate")));
        // Removed on disk: also an error, for a listing and for a read.
        raw("j1", None);
        assert!(matches!(v.t_list(&g), Err(VaultError::Integrity(_))));
        assert!(matches!(v.t_get(&g, "k1"), Err(VaultError::Integrity(m)) if m.contains("set digest")));
        assert!(matches!(v.t_delete(&g, "k1"), Err(VaultError::Integrity(m)) if m.contains("set digest")));
        // While the vault's entries do not match its digest, a read of any absent key reports it.
        assert!(matches!(v.t_get(&g, "k3"), Err(VaultError::Integrity(m)) if m.contains("set digest")));
        // Put back as it was: listed again.
        v.put_raw("k1", &k1);
        let keys: Vec<String> = v.t_list(&g).unwrap().into_iter().map(|r| r.key).collect();
        assert_eq!(keys, ["k1", "k2"]);
        assert_eq!(&*v.t_get(&g, "k1").unwrap(), b"one");
        // A key that was never stored is then simply absent.
        assert!(matches!(v.t_get(&g, "k3"), Err(VaultError::NotFound(_))));
        assert!(matches!(v.t_delete(&g, "k3"), Err(VaultError::NotFound(_))));
    }

    #[test]
    fn the_read_memo_never_hides_a_change_of_the_stored_bytes() {
        let (_d, p, t, kek) = fresh();
        let g = gate_for(t);
        let v = Vault::create(&p, t, &kek).unwrap();
        v.t_put(&g, "a", b"first").unwrap();
        v.t_put(&g, "b", b"second").unwrap();
        let one = v.t_get(&g, "a").unwrap();
        assert!(Arc::ptr_eq(&one.0, &v.t_get(&g, "a").unwrap().0), "a repeated read is served from the memo");
        assert_eq!(format!("{one:?}"), "RecordValue([REDACTED; 5 bytes])");
        // Overwrite a's stored bytes behind the vault's back with b's envelope: the memo must not answer.
        let write_raw = |key: &str, bytes: &[u8]| v.put_raw(key, bytes);
        let b_bytes = v.raw("b");
        let a_bytes = v.raw("a");
        write_raw("a", &b_bytes);
        assert!(matches!(v.t_get(&g, "a"), Err(VaultError::Integrity(_))));
        // Restored, it reads again (and is memoized again).
        write_raw("a", &a_bytes);
        assert_eq!(&*v.t_get(&g, "a").unwrap(), b"first");
        // A flipped byte of the head (version, nonce, ciphertext length): refused at once.
        for at in [0, 1, 5, 12, 13] {
            let mut head = a_bytes.clone();
            head[at] ^= 1;
            write_raw("a", &head);
            assert!(matches!(v.t_get(&g, "a"), Err(VaultError::Integrity(_))), "head byte {at}");
            write_raw("a", &a_bytes);
            assert_eq!(&*v.t_get(&g, "a").unwrap(), b"first");
        }
        // A flipped byte anywhere else (the ciphertext, its tag, the sealed key), head kept: the memoized
        // read returns the authentic plaintext, never the altered one, and verify (which decrypts
        // everything) reports it.
        let (_, after_body): (EnvelopeRef<'_>, &[u8]) = postcard::take_from_bytes(&a_bytes).unwrap();
        let last = a_bytes.len() - after_body.len() - 1;
        for at in [last - 17, last, a_bytes.len() - 1] {
            let mut altered = a_bytes.clone();
            altered[at] ^= 1;
            write_raw("a", &altered);
            assert_eq!(&*v.t_get(&g, "a").unwrap(), b"first");
            assert!(v.t_verify(&g).is_err());
            write_raw("a", &a_bytes);
        }
        // A new version and a delete are seen at once.
        v.t_put(&g, "a", b"third").unwrap();
        assert_eq!(&*v.t_get(&g, "a").unwrap(), b"third");
        v.t_delete(&g, "a").unwrap();
        assert!(matches!(v.t_get(&g, "a"), Err(VaultError::NotFound(_))));
        assert_eq!(&*one, b"first", "a value already handed out stays valid");
    }

    #[test]
    fn wrong_kek_or_tenant_cannot_open() {
        let (_d, p, t, kek) = fresh();
        let v = Vault::create(&p, t, &kek).unwrap();
        v.t_put(&gate_for(t), "k", b"v").unwrap();
        drop(v);
        assert!(matches!(Vault::open(&p, t, &SecretKey::random()), Err(VaultError::Integrity(_))));
        assert!(matches!(Vault::open(&p, TenantId::random().unwrap(), &kek), Err(VaultError::Integrity(_))));
    }

    #[test]
    fn ciphertext_moved_between_tenants_or_keys_fails() {
        let dir = tempfile::tempdir().unwrap();
        let (ta, tb) = (TenantId::random().unwrap(), TenantId::random().unwrap());
        let (ka, kb) = (SecretKey::random(), SecretKey::random());
        let pa = dir.path().join("a.redb");
        let pb = dir.path().join("b.redb");
        let a = Vault::create(&pa, ta, &ka).unwrap();
        let b = Vault::create(&pb, tb, &kb).unwrap();
        let (g_a, g_b) = (gate_for(ta), gate_for(tb));
        a.t_put(&g_a, "k1", b"alpha").unwrap();
        a.t_put(&g_a, "k2", b"beta").unwrap();
        b.t_put(&g_b, "k1", b"other").unwrap();
        // Copy A's raw envelope for k1 into B, and A's k1 envelope over A's k2.
        let raw = |v: &Vault, k: &str| v.raw(k);
        let put_raw = |v: &Vault, k: &str, bytes: &[u8]| v.put_raw(k, bytes);
        let a_k1 = raw(&a, "k1");
        put_raw(&b, "k1", &a_k1);
        assert!(matches!(b.t_get(&g_b, "k1"), Err(VaultError::Integrity(_))));
        put_raw(&a, "k2", &a_k1);
        assert!(matches!(a.t_get(&g_a, "k2"), Err(VaultError::Integrity(_))));
        // A whole record dropped in under a fresh key is caught by the set digest.
        put_raw(&a, "k2", &raw(&a, "k1"));
        assert!(a.t_verify(&g_a).is_err());
    }

    #[test]
    fn operations_need_a_token_for_this_tenant_op_and_record() {
        let (_d, p, t, kek) = fresh();
        let v = Vault::create(&p, t, &kek).unwrap();
        let g = gate_for(t);
        v.t_put(&g, "k1", b"one").unwrap();
        // A token for another record, another operation, or another tenant's ledger is refused.
        let other_key = g.tok(&v, OpKind::VaultGet, Some("k2"));
        assert!(matches!(v.get(&other_key, "k1"), Err(VaultError::NotAttested(_))));
        let other_op = g.tok(&v, OpKind::VaultGet, Some("k1"));
        assert!(matches!(v.delete(&other_op, "k1"), Err(VaultError::NotAttested(_))));
        let stranger = gate_for(TenantId::random().unwrap());
        let foreign = stranger.tok(&v, OpKind::VaultGet, Some("k1"));
        assert!(matches!(v.get(&foreign, "k1"), Err(VaultError::NotAttested(_))));
        assert_eq!(&*v.t_get(&g, "k1").unwrap(), b"one");
    }

    #[test]
    fn second_opener_waits_then_reports_busy() {
        let (_d, p, t, kek) = fresh();
        let _held = Vault::create(&p, t, &kek).unwrap();
        // A lock attempt on an already-held lock from the same process on a new fd must fail fast here.
        let f = std::fs::OpenOptions::new().write(true).open(lock_path(&p)).unwrap();
        assert!(matches!(f.try_lock(), Err(std::fs::TryLockError::WouldBlock)));
    }

    #[test]
    fn secrets_round_trip_and_stay_out_of_listing() {
        let (_d, p, t, kek) = fresh();
        let v = Vault::create(&p, t, &kek).unwrap();
        let g = gate_for(t);
        let seed = SecretKey::random();
        v.put_secret("signing-seed", &seed).unwrap();
        assert_eq!(v.get_secret("signing-seed").unwrap(), seed);
        assert!(v.t_list(&g).unwrap().is_empty());
        assert_eq!(v.t_verify(&g).unwrap(), 0);
    }
}
