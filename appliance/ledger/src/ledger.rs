//! One ledger directory: a tlog-tiles tree, every signed checkpoint, crash-safe appends and recovery.
//!
//! Layout (FORMATS.md §5): `LEDGER` (format marker and origin), `key.pub.pem`, `lock`, `checkpoint` (the
//! latest written to the tiles), `history/<K>` (every checkpoint ever issued, in append-only segments,
//! see [`crate::history`]), `tile/<L>/<N>[.p/<W>]`, `tile/entries/<N>[.p/<W>]`, `journal.0`/`journal.1`
//! (the write-ahead journal, see [`crate::journal`]) and `spare/` (recycled inodes).
//!
//! Two ways make appended entries durable:
//! - [`Ledger::journal_commit`] signs a checkpoint over the new head and writes the entries and that
//!   checkpoint as one journal record (one write, one `fdatasync`). The batch may be acknowledged when it
//!   returns. The gate uses this for every batch.
//! - A [`Materialization`] (taken with [`Ledger::begin_materialize`], written by any thread) moves
//!   everything journaled into the tiles in the crash-safe order: every changed tile and entry bundle
//!   (temp file, fsync, rename), fsync of their directories, and only then the newest checkpoint
//!   (`checkpoint`: temp file, fsync, rename, fsync of the directory) and every checkpoint issued since
//!   the last one into the history (append, fdatasync). [`Ledger::commit`] does both halves at once,
//!   without the journal.
//!
//! Recovery on open adopts the newest valid checkpoint found in `checkpoint` or the history, rebuilds
//! the tree from the tiles for that size, checks its root against the checkpoint and deletes tile data
//! beyond it; then it replays the journal records beyond that size (each record's checkpoint must verify
//! and match the rebuilt root) and writes them into the tiles. A record torn by a crash was never
//! acknowledged, so nothing acknowledged is lost. It then finds the OARs still waiting for an outcome
//! (using the newest OAR's low-water mark, so only the tail is read).

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::fsutil::{self, Spares, TMP_SUFFIX};
use crate::hash::Hash;
use crate::history::{self, History};
use crate::journal::{Journal, JournalRecord};
use crate::merkle::{self, MerkleError};
use crate::note::{NoteError, SignedCheckpoint};
use crate::oar::{Entry, EntryError, LedgerScope, TreeHead};
use crate::signer::{KeyError, LedgerPublicKey, LedgerSigner};
use crate::tiles::{self, TILE_WIDTH, TileError, Tree};

/// Contents of the `LEDGER` marker file, before the origin line.
pub const LEDGER_MARKER: &str = "bulwark-ledger 1\n";

/// A ledger operation failed.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// Reading or writing a ledger file failed (disk full, permissions, a path that is not a directory).
    #[error("ledger I/O failed at {path}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Another process (or another gate in this one) has the ledger open.
    #[error("ledger {0} is in use by another process")]
    Busy(PathBuf),
    /// The directory has no valid `LEDGER` marker.
    #[error("{0} is not a bulwark ledger directory")]
    NotALedger(PathBuf),
    /// `create` found something already at the path.
    #[error("{0} already exists")]
    Exists(PathBuf),
    /// The ledger belongs to another tenant or appliance.
    #[error("ledger is {found}, not {expected}")]
    WrongScope {
        /// What the ledger says.
        found: String,
        /// What the caller asked for.
        expected: String,
    },
    /// The signer's public key is not the key this ledger was created with.
    #[error("signer does not match the ledger's key (key.pub.pem)")]
    WrongKey,
    /// Stored data contradicts itself (a tile, bundle or checkpoint fails its check).
    #[error("ledger data is corrupt: {path}: {what}")]
    Corrupt {
        /// File relative to the ledger directory.
        path: String,
        /// What does not hold.
        what: String,
    },
    /// A checkpoint failed to parse, verify or sign.
    #[error("the checkpoint in ledger file {path}")]
    Checkpoint {
        /// File relative to the ledger directory.
        path: String,
        /// The cause.
        #[source]
        source: NoteError,
    },
    /// A tile or entry bundle could not be read.
    #[error("tile")]
    Tile(#[from] TileError),
    /// An entry failed to encode or decode.
    #[error("entry {index}")]
    Entry {
        /// The entry's index.
        index: u64,
        /// The cause.
        #[source]
        source: EntryError,
    },
    /// A Merkle computation failed.
    #[error("merkle tree")]
    Merkle(#[from] MerkleError),
    /// A key operation failed.
    #[error("ledger key")]
    Key(#[from] KeyError),
    /// The gate was closed.
    #[error("the gate is closed")]
    Closed,
    /// The gate stopped accepting operations after a write failure it could not recover from.
    #[error("the ledger is unavailable after a write failure: {0}")]
    Unavailable(String),
    /// The token attests a different operation, target or ledger than the one about to run.
    #[error("{0}")]
    Mismatch(String),
    /// An attested token from another gate, or one already completed.
    #[error("attested token does not belong to this gate or was already completed")]
    WrongToken,
    /// The draft is invalid (too many approvals, an entry too large).
    #[error("invalid operation draft")]
    Draft(#[source] EntryError),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> LedgerError + '_ {
    move |source| LedgerError::Io { path: path.to_path_buf(), source }
}

/// An OAR still waiting for its outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PendingOar {
    /// The OAR's entry index.
    pub index: u64,
    /// Its leaf hash.
    pub leaf: Hash,
}

/// What recovery found when the ledger was opened.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovered {
    /// The next OAR counter.
    pub next_counter: u64,
    /// OARs without an outcome, by counter.
    pub pending: BTreeMap<u64, PendingOar>,
    /// Time of the newest entry (ms), to keep time non-decreasing.
    pub last_time_ms: u64,
    /// Files beyond the last checkpoint that were removed (never-acknowledged appends).
    pub removed_files: usize,
}

/// An open ledger directory (holding its lock).
#[derive(Debug)]
pub struct Ledger {
    dir: PathBuf,
    scope: LedgerScope,
    key: LedgerPublicKey,
    tree: Tree,
    checkpoint: SignedCheckpoint,
    spares: Arc<Spares>,
    history: Arc<Mutex<History>>,
    journal: Journal,
    /// Entries appended since the last journal record or commit.
    unjournaled: Vec<Vec<u8>>,
    /// Checkpoints issued through the journal and not yet written to the tiles and history.
    issued: Vec<SignedCheckpoint>,
    /// Size of the tree the tile files hold.
    materialized: u64,
    _lock: File,
}

/// Read a ledger directory's scope (from `LEDGER`) and public key (from `key.pub.pem`), e.g. to export it
/// or print the key without unlocking the signer. Not a trust anchor: auditors pin keys out of band.
pub fn read_identity(dir: &Path) -> Result<(LedgerScope, LedgerPublicKey), LedgerError> {
    let marker = fs::read_to_string(dir.join("LEDGER")).map_err(|_| LedgerError::NotALedger(dir.to_path_buf()))?;
    let scope = marker
        .strip_prefix(LEDGER_MARKER)
        .and_then(|r| r.strip_suffix('\n'))
        .and_then(LedgerScope::from_origin)
        .ok_or_else(|| LedgerError::NotALedger(dir.to_path_buf()))?;
    let pem_path = dir.join("key.pub.pem");
    let pem = fs::read_to_string(&pem_path).map_err(io_err(&pem_path))?;
    Ok((scope, LedgerPublicKey::from_spki_pem(&pem)?))
}

/// The path, in an exported bundle, of the checkpoint of `size`.
pub fn checkpoint_history_path(size: u64) -> String {
    format!("checkpoints/{}", tiles::index_path(size))
}

impl Ledger {
    /// Create a new, empty ledger at `dir` (which must not exist) for `signer`'s scope, with a signed
    /// checkpoint of size 0. The directory is assembled under a temporary name and renamed into place,
    /// so it either exists complete or not at all.
    pub fn create(dir: &Path, signer: &LedgerSigner) -> Result<(Ledger, Recovered), LedgerError> {
        if dir.exists() {
            return Err(LedgerError::Exists(dir.to_path_buf()));
        }
        let parent = dir.parent().ok_or_else(|| LedgerError::NotALedger(dir.to_path_buf()))?;
        let name = dir.file_name().ok_or_else(|| LedgerError::NotALedger(dir.to_path_buf()))?;
        let mut tmp_name = std::ffi::OsString::from(".");
        tmp_name.push(name);
        tmp_name.push(".creating");
        let tmp = parent.join(tmp_name);
        if tmp.exists() {
            fs::remove_dir_all(&tmp).map_err(io_err(&tmp))?;
        }
        let scope = signer.scope();
        let mut dirty = BTreeSet::new();
        fsutil::create_dirs(&tmp, &mut dirty).map_err(io_err(&tmp))?;
        let marker = format!("{LEDGER_MARKER}{}\n", scope.origin());
        let w = |rel: &str, bytes: &[u8], dirty: &mut BTreeSet<PathBuf>| {
            let p = tmp.join(rel);
            fsutil::write_replace(&p, bytes, dirty).map_err(io_err(&p))
        };
        w("LEDGER", marker.as_bytes(), &mut dirty)?;
        w("key.pub.pem", signer.public_key().to_spki_pem().as_bytes(), &mut dirty)?;
        w("lock", b"", &mut dirty)?;
        let head = TreeHead { size: 0, root: crate::hash::empty_root() };
        let cp = SignedCheckpoint::sign(signer, head)
            .map_err(|source| LedgerError::Checkpoint { path: "checkpoint".into(), source })?;
        w(&history::segment_path(0), &history::single_record(&cp), &mut dirty)?;
        w("checkpoint", cp.text().as_bytes(), &mut dirty)?;
        dirty.retain(|d| d.starts_with(&tmp));
        fsutil::sync_dirs(&dirty).map_err(io_err(&tmp))?;
        fs::rename(&tmp, dir).map_err(io_err(dir))?;
        File::open(parent).and_then(|f| f.sync_all()).map_err(io_err(parent))?;
        Self::open(dir, scope, signer.public_key())
    }

    /// Open an existing ledger, recovering from any crash (see the module docs).
    pub fn open(dir: &Path, scope: LedgerScope, key: &LedgerPublicKey) -> Result<(Ledger, Recovered), LedgerError> {
        let marker_path = dir.join("LEDGER");
        let marker = fs::read_to_string(&marker_path).map_err(|_| LedgerError::NotALedger(dir.to_path_buf()))?;
        let origin = marker
            .strip_prefix(LEDGER_MARKER)
            .and_then(|r| r.strip_suffix('\n'))
            .ok_or_else(|| LedgerError::NotALedger(dir.to_path_buf()))?;
        if origin != scope.origin() {
            return Err(LedgerError::WrongScope { found: origin.to_string(), expected: scope.origin() });
        }
        let pem_path = dir.join("key.pub.pem");
        let pem = fs::read_to_string(&pem_path).map_err(io_err(&pem_path))?;
        // Compared as bytes: decoding the stored key (an ML-DSA key expansion) would only re-derive `key`.
        if LedgerPublicKey::pem_to_der(&pem)? != key.to_spki_der() {
            return Err(LedgerError::WrongKey);
        }
        let lock_path = dir.join("lock");
        let lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&lock_path)
            .map_err(io_err(&lock_path))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => return Err(LedgerError::Busy(dir.to_path_buf())),
            Err(fs::TryLockError::Error(e)) => return Err(LedgerError::Io { path: lock_path, source: e }),
        }
        let (tree, checkpoint, history, removed) = load_state(dir, &scope, key)?;
        let spares = Spares::open(dir).map_err(io_err(dir))?;
        let history = Arc::new(Mutex::new(history));
        let (journal, records) = Journal::open(dir)?;
        let materialized = checkpoint.head().size;
        let mut ledger = Ledger {
            dir: dir.to_path_buf(),
            scope,
            key: key.clone(),
            tree,
            checkpoint,
            spares,
            history,
            journal,
            unjournaled: Vec::new(),
            issued: Vec::new(),
            materialized,
            _lock: lock,
        };
        ledger.replay(records)?;
        let mut rec = ledger.scan_pending()?;
        rec.removed_files = removed;
        Ok((ledger, rec))
    }

    /// Apply the journal records beyond the tiles, check each against its signed checkpoint, and
    /// write the result into the tiles; afterwards both journal files are free.
    fn replay(&mut self, records: Vec<JournalRecord>) -> Result<(), LedgerError> {
        let in_history = self.history.lock().unwrap_or_else(std::sync::PoisonError::into_inner).newest_size();
        let missing = |size: u64| in_history.is_none_or(|h| h < size);
        let tiles_cp = self.checkpoint.clone();
        let mut tiles_cp_queued = !missing(tiles_cp.head().size);
        for r in records {
            let size = self.tree.size();
            if r.end() <= size {
                // Already in the tiles; its checkpoint may still be missing from the history (a crash
                // during the history append).
                if missing(r.end()) {
                    let cp = SignedCheckpoint::verify(&r.checkpoint, &self.scope, &self.key)
                        .map_err(|source| LedgerError::Checkpoint { path: "journal".into(), source })?;
                    tiles_cp_queued |= cp.head().size == tiles_cp.head().size;
                    self.issued.push(cp);
                }
                continue;
            }
            if !tiles_cp_queued {
                self.issued.push(tiles_cp.clone());
                tiles_cp_queued = true;
            }
            if r.start != size {
                return Err(LedgerError::Corrupt {
                    path: "journal".into(),
                    what: format!("a record starts at entry {}, the ledger holds {size}", r.start),
                });
            }
            for e in &r.entries {
                self.tree.append_entry(e);
            }
            let cp = SignedCheckpoint::verify(&r.checkpoint, &self.scope, &self.key)
                .map_err(|source| LedgerError::Checkpoint { path: "journal".into(), source })?;
            let root = merkle::root(&self.tree, r.end())?;
            if cp.head() != (TreeHead { size: r.end(), root }) {
                return Err(LedgerError::Corrupt {
                    path: "journal".into(),
                    what: format!("the record's entries give root {root} at size {}, its checkpoint differs", r.end()),
                });
            }
            self.checkpoint = cp.clone();
            self.issued.push(cp);
        }
        if !tiles_cp_queued {
            self.issued.push(tiles_cp);
        }
        if !self.issued.is_empty() {
            tracing::info!(
                ledger = %self.scope,
                checkpoints = self.issued.len(),
                size = self.tree.size(),
                "writing journaled batches into the tiles"
            );
            if let Some(m) = self.begin_materialize() {
                let size = m.write()?;
                self.materialized = size;
            }
        }
        // Everything is in the tiles now: both files may be emptied.
        self.journal.reset()
    }

    /// Empty the journal when everything in it is in the tiles (nothing journaled since the last
    /// materialization, none in flight: the caller's invariant). The gate calls it when it closes.
    pub fn reset_journal(&mut self) -> Result<(), LedgerError> {
        if self.issued.is_empty() && self.unjournaled.is_empty() {
            self.journal.reset()?;
        }
        Ok(())
    }

    /// Re-read the ledger's state from disk after a failed commit left memory ahead of the disk: adopt
    /// the newest checkpoint, rebuild the tree, delete unacknowledged data, find the OARs without
    /// outcomes. The lock stays held.
    pub fn recover(&mut self) -> Result<Recovered, LedgerError> {
        let (tree, checkpoint, history, removed) = load_state(&self.dir, &self.scope, &self.key)?;
        let (journal, records) = Journal::open(&self.dir)?;
        self.materialized = checkpoint.head().size;
        self.tree = tree;
        self.checkpoint = checkpoint;
        self.history = Arc::new(Mutex::new(history));
        self.journal = journal;
        self.unjournaled.clear();
        self.issued.clear();
        self.replay(records)?;
        let mut rec = self.scan_pending()?;
        rec.removed_files = removed;
        Ok(rec)
    }

    fn scan_pending(&self) -> Result<Recovered, LedgerError> {
        let size = self.checkpoint.head().size;
        let mut rec = Recovered::default();
        debug_assert_eq!(size, self.materialized, "pending OARs are scanned after replay");
        let mut reader = EntryReader::new(&self.dir, self.scope, size);
        let mut last_oar = None;
        let mut i = size;
        while i > 0 {
            i -= 1;
            let e = reader.decoded(i)?;
            if rec.last_time_ms == 0 {
                rec.last_time_ms = match &e {
                    Entry::Oar(o) => o.time_ms,
                    Entry::Outcome(o) => o.time_ms,
                };
            }
            if let Entry::Oar(o) = e {
                last_oar = Some((i, o));
                break;
            }
        }
        let Some((last_index, last)) = last_oar else {
            return Ok(rec);
        };
        rec.next_counter = last.counter + 1;
        let low = last.low_water;
        let mut oars: BTreeMap<u64, PendingOar> = BTreeMap::new();
        let mut done: BTreeSet<u64> = BTreeSet::new();
        let mut i = size;
        while i > 0 {
            i -= 1;
            match reader.decoded(i)? {
                Entry::Oar(o) => {
                    if i == last_index || o.counter >= low {
                        let leaf = crate::hash::leaf_hash(&reader.raw(i)?);
                        oars.insert(o.counter, PendingOar { index: i, leaf });
                    }
                    if o.counter <= low {
                        break;
                    }
                }
                Entry::Outcome(o) => {
                    done.insert(o.counter);
                }
            }
        }
        oars.retain(|c, _| !done.contains(c));
        rec.pending = oars;
        Ok(rec)
    }

    /// The ledger directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The ledger's scope.
    pub fn scope(&self) -> LedgerScope {
        self.scope
    }

    /// The ledger's public key.
    pub fn public_key(&self) -> &LedgerPublicKey {
        &self.key
    }

    /// The latest durable signed checkpoint (journaled or in the tiles).
    pub fn checkpoint(&self) -> &SignedCheckpoint {
        &self.checkpoint
    }

    /// Number of entries appended, including ones not yet committed.
    pub fn size(&self) -> u64 {
        self.tree.size()
    }

    /// Root of all entries appended so far (committed or not).
    pub fn current_root(&self) -> Result<Hash, LedgerError> {
        Ok(merkle::root(&self.tree, self.tree.size())?)
    }

    /// Append one encoded entry in memory; it becomes durable with the next [`Ledger::journal_commit`]
    /// or [`Ledger::commit`].
    pub fn append(&mut self, entry: &[u8]) -> Hash {
        self.unjournaled.push(entry.to_vec());
        self.tree.append_entry(entry)
    }

    /// Make everything appended durable through the journal: sign a checkpoint over the new head and
    /// write the new entries with it as one record (one write, one `fdatasync`). The checkpoint may be
    /// handed out (in receipts) when this returns. On error the ledger must be re-read with
    /// [`Ledger::recover`] before further use.
    pub fn journal_commit(&mut self, signer: &LedgerSigner) -> Result<SignedCheckpoint, LedgerError> {
        let cp = self.sign_head(signer)?;
        let start = cp.head().size - self.unjournaled.len() as u64;
        self.journal.append(start, &self.unjournaled, cp.text())?;
        self.unjournaled.clear();
        self.checkpoint = cp.clone();
        self.issued.push(cp.clone());
        Ok(cp)
    }

    fn sign_head(&self, signer: &LedgerSigner) -> Result<SignedCheckpoint, LedgerError> {
        let size = self.tree.size();
        let head = TreeHead { size, root: merkle::root(&self.tree, size)? };
        SignedCheckpoint::sign(signer, head)
            .map_err(|source| LedgerError::Checkpoint { path: "checkpoint".into(), source })
    }

    /// Make everything appended durable in the tiles directly (no journal): sign, then write tiles,
    /// `checkpoint` and history in the crash-safe order. For rare writes (ledger set-up, recovery); the
    /// gate journals instead. Must not run while a [`Materialization`] taken earlier is being written.
    /// On error the ledger must be re-read with [`Ledger::recover`] before further use.
    pub fn commit(&mut self, signer: &LedgerSigner) -> Result<SignedCheckpoint, LedgerError> {
        let cp = self.sign_head(signer)?;
        self.unjournaled.clear();
        self.checkpoint = cp.clone();
        self.issued.push(cp.clone());
        if let Some(m) = self.begin_materialize() {
            self.materialized = m.write()?;
        }
        Ok(cp)
    }

    /// Entries journaled since the active journal file became active.
    pub fn journal_backlog(&self) -> (u64, u64) {
        (self.journal.active_entries(), self.journal.active_bytes())
    }

    /// Whether journaled batches wait to be written into the tiles.
    pub fn has_unmaterialized(&self) -> bool {
        !self.issued.is_empty()
    }

    /// Take everything journaled so far for writing into the tiles (on any thread, see
    /// [`Materialization::write`]); `None` when there is nothing to write or when entries were appended
    /// but not yet journaled. The journal moves on to its other file, so the caller must not call this
    /// again before the returned work has been written successfully (after a failure, [`Ledger::recover`]
    /// first).
    pub fn begin_materialize(&mut self) -> Option<Materialization> {
        if self.issued.is_empty() || !self.unjournaled.is_empty() {
            return None;
        }
        let changes = self.tree.take_changes();
        // Partial tiles of tiles that are now full are no longer needed (tlog-tiles allows deleting them).
        let mut obsolete = Vec::new();
        for (level, n, _, width) in &changes.tiles {
            if *width == TILE_WIDTH {
                obsolete.push(self.dir.join(format!("{}.p", tiles::tile_path(*level, *n, TILE_WIDTH))));
            }
        }
        for (n, _, width) in &changes.bundles {
            if *width == TILE_WIDTH {
                obsolete.push(self.dir.join(format!("{}.p", tiles::entries_path(*n, TILE_WIDTH))));
            }
        }
        self.journal.switch();
        Some(Materialization {
            dir: self.dir.clone(),
            spares: Arc::clone(&self.spares),
            history: Arc::clone(&self.history),
            cp: self.checkpoint.clone(),
            issued: std::mem::take(&mut self.issued),
            changes,
            obsolete,
        })
    }

    /// Record that a [`Materialization`] of the tree of `size` entries was written.
    pub fn materialized(&mut self, size: u64) {
        self.materialized = self.materialized.max(size);
    }

    /// Inclusion proof of entry `index` in the tree of `size` entries (both within what is appended).
    pub fn inclusion_proof(&self, index: u64, size: u64) -> Result<Vec<Hash>, LedgerError> {
        Ok(merkle::inclusion_proof(&self.tree, index, size.min(self.tree.size()))?)
    }

    /// Consistency proof between two sizes.
    pub fn consistency_proof(&self, old: u64, new: u64) -> Result<Vec<Hash>, LedgerError> {
        if new > self.tree.size() {
            return Err(MerkleError::Impossible("size beyond the ledger").into());
        }
        Ok(merkle::consistency_proof(&self.tree, old, new)?)
    }

    /// The bytes of entry `index` as the tile files hold it (entries still only in the journal are not
    /// there yet).
    pub fn entry(&self, index: u64) -> Result<Vec<u8>, LedgerError> {
        EntryReader::new(&self.dir, self.scope, self.materialized).raw(index)
    }
}

/// Adopt the newest valid checkpoint, make both copies agree, delete data beyond it, rebuild the tree
/// and check its root.
fn load_state(
    dir: &Path,
    scope: &LedgerScope,
    key: &LedgerPublicKey,
) -> Result<(Tree, SignedCheckpoint, History, usize), LedgerError> {
    let (history, hist) = History::open(dir, scope, key)?;
    let latest_path = dir.join("checkpoint");
    let latest_text = match fs::read_to_string(&latest_path) {
        Ok(t) => Some(t),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(LedgerError::Io { path: latest_path, source: e }),
    };
    // `checkpoint` is normally the history's newest record, verified already: verify it only if not.
    let latest = match (&hist, &latest_text) {
        (Some(h), Some(text)) if text == h.text() => Some(h.clone()),
        (_, Some(text)) => Some(
            SignedCheckpoint::verify(text, scope, key)
                .map_err(|source| LedgerError::Checkpoint { path: "checkpoint".into(), source })?,
        ),
        (_, None) => None,
    };
    let cp = match (latest, hist) {
        (None, None) => {
            return Err(LedgerError::Corrupt { path: "checkpoint".into(), what: "no checkpoint at all".into() });
        }
        (Some(a), None) => a,
        (None, Some(b)) => b,
        (Some(a), Some(b)) => {
            if b.head().size > a.head().size {
                b
            } else {
                a
            }
        }
    };
    let head = cp.head();
    // `checkpoint` must name the adopted checkpoint (a crash can leave it behind the history); the
    // history catches up in `Ledger::replay`, in order with the journal's checkpoints.
    if latest_text.as_deref() != Some(cp.text()) {
        fsutil::write_durable(&latest_path, cp.text().as_bytes()).map_err(io_err(&latest_path))?;
    }
    let removed = truncate_beyond(dir, head.size)?;
    let tree = Tree::load(dir, head.size, true).map_err(|e| match e {
        TileError::Malformed { path, what } => LedgerError::Corrupt { path, what },
        other => LedgerError::Tile(other),
    })?;
    let root = merkle::root(&tree, head.size)?;
    if root != head.root {
        return Err(LedgerError::Corrupt {
            path: "tile/".into(),
            what: format!("tiles give root {root} at size {}, the checkpoint says {}", head.size, head.root),
        });
    }
    Ok((tree, cp, history, removed))
}

/// Journaled batches on their way into the tiles: the changed tiles and bundles, the newest checkpoint
/// and every checkpoint issued since the last materialization.
#[derive(Debug)]
#[must_use = "the journal is only free again once this is written"]
pub struct Materialization {
    dir: PathBuf,
    spares: Arc<Spares>,
    history: Arc<Mutex<History>>,
    cp: SignedCheckpoint,
    issued: Vec<SignedCheckpoint>,
    changes: tiles::Changes,
    obsolete: Vec<PathBuf>,
}

impl Materialization {
    /// The newest checkpoint this writes.
    pub fn checkpoint(&self) -> &SignedCheckpoint {
        &self.cp
    }

    /// Write it: tiles and bundles (temp file, fsync, rename), then their directories' fsync together
    /// with the checkpoint's temporary file, the checkpoint renamed over `checkpoint`, and finally that
    /// directory's fsync while the issued checkpoints are appended to the history (write, fdatasync).
    /// Returns the size now in the tiles.
    pub fn write(self) -> Result<u64, LedgerError> {
        let dir = &self.dir;
        let tile_dirs = stage_changes(dir, &self.changes, &self.spares)?;
        let mut cp_dirs = BTreeSet::new();
        let latest = dir.join("checkpoint");
        let staged = vec![
            fsutil::stage(&latest, self.cp.text().as_bytes(), &mut cp_dirs, Some(&self.spares))
                .map_err(io_err(&latest))?,
        ];
        fsutil::sync_staged(&staged, &tile_dirs).map_err(io_err(dir))?;
        // The checkpoint goes last: renamed into place and appended to the history only now.
        fsutil::publish(staged, &mut cp_dirs, Some(&self.spares)).map_err(io_err(dir))?;
        let (synced, appended) = fsutil::sync_dirs_during(&cp_dirs, || {
            self.history.lock().unwrap_or_else(std::sync::PoisonError::into_inner).append_all(&self.issued)
        });
        synced.map_err(io_err(dir))?;
        appended?;
        for p in &self.obsolete {
            if let Err(e) = self.spares.retire_dir(p) {
                tracing::warn!(dir = %p.display(), error = %e, "could not recycle obsolete partial tiles");
            }
        }
        Ok(self.cp.head().size)
    }
}

/// Write changed tiles and bundles under temporary names, fsync them together and rename them into
/// place; returns the directories whose entries changed (not yet synced).
fn stage_changes(dir: &Path, changes: &tiles::Changes, spares: &Spares) -> Result<BTreeSet<PathBuf>, LedgerError> {
    let mut dirty = BTreeSet::new();
    let mut staged = Vec::with_capacity(changes.tiles.len() + changes.bundles.len());
    for (level, n, bytes, width) in &changes.tiles {
        let p = dir.join(tiles::tile_path(*level, *n, *width));
        staged.push(fsutil::stage(&p, bytes, &mut dirty, Some(spares)).map_err(io_err(&p))?);
    }
    for (n, bytes, width) in &changes.bundles {
        let p = dir.join(tiles::entries_path(*n, *width));
        staged.push(fsutil::stage(&p, bytes, &mut dirty, Some(spares)).map_err(io_err(&p))?);
    }
    fsutil::sync_staged(&staged, &BTreeSet::new()).map_err(io_err(dir))?;
    fsutil::publish(staged, &mut dirty, Some(spares)).map_err(io_err(dir))?;
    Ok(dirty)
}

#[cfg(test)]
fn write_changes(dir: &Path, changes: &tiles::Changes) -> Result<(), LedgerError> {
    let spares = Spares::open(dir).map_err(io_err(dir))?;
    let dirty = stage_changes(dir, changes, &spares)?;
    fsutil::sync_dirs(&dirty).map_err(io_err(dir))
}

/// Reads committed entries by index, caching one decoded bundle.
struct EntryReader<'a> {
    dir: &'a Path,
    scope: LedgerScope,
    size: u64,
    cached: Option<(u64, Vec<Vec<u8>>)>,
}

impl<'a> EntryReader<'a> {
    fn new(dir: &'a Path, scope: LedgerScope, size: u64) -> Self {
        Self { dir, scope, size, cached: None }
    }

    fn raw(&mut self, index: u64) -> Result<Vec<u8>, LedgerError> {
        let size = self.size;
        if index >= size {
            return Err(MerkleError::Impossible("entry index beyond the checkpoint").into());
        }
        let n = index / TILE_WIDTH as u64;
        let pos = usize::try_from(index % TILE_WIDTH as u64).unwrap_or(0);
        if self.cached.as_ref().map(|(c, _)| *c) != Some(n) {
            let width = if (n + 1) * TILE_WIDTH as u64 <= size {
                TILE_WIDTH
            } else {
                usize::try_from(size % TILE_WIDTH as u64).unwrap_or(0)
            };
            let rel = tiles::entries_path(n, width);
            let p = self.dir.join(&rel);
            let bytes = fs::read(&p).map_err(io_err(&p))?;
            let entries =
                tiles::decode_bundle(&bytes, width).map_err(|what| LedgerError::Corrupt { path: rel, what })?;
            self.cached = Some((n, entries.into_iter().map(<[u8]>::to_vec).collect()));
        }
        let (_, entries) = self.cached.as_ref().ok_or(MerkleError::Impossible("bundle cache"))?;
        Ok(entries[pos].clone())
    }

    fn decoded(&mut self, index: u64) -> Result<Entry, LedgerError> {
        let raw = self.raw(index)?;
        let e = Entry::decode(&raw).map_err(|source| LedgerError::Entry { index, source })?;
        if e.scope() != self.scope {
            return Err(LedgerError::Corrupt {
                path: "tile/entries".into(),
                what: format!("entry {index} names {}", e.scope()),
            });
        }
        Ok(e)
    }
}

/// Call `f` with the path (relative to `root`, `/`-separated) of every file under `root`.
pub(crate) fn walk_files(root: &Path, f: &mut dyn FnMut(&str)) -> io::Result<()> {
    fn go(root: &Path, dir: &Path, f: &mut dyn FnMut(&str)) -> io::Result<()> {
        let mut entries: Vec<_> = fs::read_dir(dir)?.collect::<Result<_, _>>()?;
        entries.sort_by_key(fs::DirEntry::file_name);
        for e in entries {
            let p = e.path();
            if e.file_type()?.is_dir() {
                go(root, &p, f)?;
            } else if let Ok(rel) = p.strip_prefix(root) {
                let rel = rel.to_string_lossy().replace(std::path::MAIN_SEPARATOR, "/");
                f(&rel);
            }
        }
        Ok(())
    }
    go(root, root, f)
}

/// A tile-area file name, parsed: `(level or None for entries, index, width)`.
pub(crate) fn parse_tile_rel(rel: &str) -> Option<(Option<u8>, u64, usize)> {
    let rest = rel.strip_prefix("tile/")?;
    let (kind, rest) = rest.split_once('/')?;
    let level = if kind == "entries" {
        None
    } else {
        let l: u8 = kind.parse().ok()?;
        if l.to_string() != kind || l > 63 {
            return None;
        }
        Some(l)
    };
    let (idx, width) = match rest.split_once(".p/") {
        Some((idx, w)) => {
            let width: usize = w.parse().ok()?;
            if width.to_string() != w || !(1..TILE_WIDTH).contains(&width) {
                return None;
            }
            (idx, width)
        }
        None => (rest, TILE_WIDTH),
    };
    Some((level, tiles::parse_index_path(idx)?, width))
}

/// Whether tile (`level`, `n`, `width`) is part of the tree of `size` leaves.
pub(crate) fn tile_within(level: u8, n: u64, width: usize, size: u64) -> bool {
    let span = 1u128 << (8 * u32::from(level));
    let end = (u128::from(n) * TILE_WIDTH as u128 + width as u128) * span;
    end <= u128::from(size)
}

/// Delete tiles and bundles beyond `size` and leftover temporary files.
fn truncate_beyond(dir: &Path, size: u64) -> Result<usize, LedgerError> {
    let tile_root = dir.join("tile");
    if !tile_root.is_dir() {
        return Ok(0);
    }
    let mut doomed = Vec::new();
    walk_files(dir, &mut |rel| {
        if rel.ends_with(TMP_SUFFIX) {
            doomed.push(rel.to_string());
            return;
        }
        if !rel.starts_with("tile/") {
            return;
        }
        match parse_tile_rel(rel) {
            Some((level, n, width)) if tile_within(level.unwrap_or(0), n, width, size) => {}
            Some(_) => doomed.push(rel.to_string()),
            None => tracing::warn!(file = rel, "unexpected file in the ledger's tile area"),
        }
    })
    .map_err(io_err(dir))?;
    for rel in &doomed {
        let p = dir.join(rel);
        fs::remove_file(&p).map_err(io_err(&p))?;
        if let Some(parent) = p.parent()
            && parent.extension().is_some_and(|e| e == "p")
        {
            let _ = fs::remove_dir(parent);
        }
    }
    if !doomed.is_empty() {
        tracing::warn!(
            ledger = %dir.display(),
            files = doomed.len(),
            "removed ledger data written after the last checkpoint (never acknowledged)"
        );
    }
    Ok(doomed.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::TenantId;
    use crate::oar::{Entry, Oar};
    use crate::signer::SignerSeed;

    fn setup(dir: &Path) -> (Ledger, LedgerSigner) {
        let signer =
            LedgerSigner::new(LedgerScope::Tenant(TenantId::random().unwrap()), &SignerSeed::generate().unwrap())
                .unwrap();
        let (l, rec) = Ledger::create(dir, &signer).unwrap();
        assert_eq!(rec, Recovered::default());
        (l, signer)
    }

    fn entry(scope: LedgerScope, counter: u64) -> Vec<u8> {
        let mut o: Oar = crate::oar::tests::sample_oar(scope);
        o.counter = counter;
        o.low_water = counter;
        Entry::Oar(o).encode().unwrap()
    }

    #[test]
    fn create_refuses_existing_and_open_refuses_non_ledgers() {
        let d = tempfile::tempdir().unwrap();
        let (l, signer) = setup(&d.path().join("l"));
        drop(l);
        assert!(matches!(Ledger::create(&d.path().join("l"), &signer), Err(LedgerError::Exists(_))));
        std::fs::create_dir(d.path().join("empty")).unwrap();
        assert!(matches!(
            Ledger::open(&d.path().join("empty"), signer.scope(), signer.public_key()),
            Err(LedgerError::NotALedger(_))
        ));
    }

    #[test]
    fn unacknowledged_writes_are_truncated_and_acknowledged_ones_kept() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("l");
        let (mut l, signer) = setup(&dir);
        let scope = signer.scope();
        for c in 0..300 {
            l.append(&entry(scope, c));
        }
        let acked = l.commit(&signer).unwrap().head();
        // A batch written to tiles but never checkpointed (the process died before the checkpoint).
        for c in 300..700 {
            l.append(&entry(scope, c));
        }
        let ch = l.tree.take_changes();
        write_changes(&dir, &ch).unwrap();
        assert!(dir.join("tile/0/001").exists() && dir.join("tile/entries/002.p/188").exists());
        // And a leftover temporary file.
        std::fs::write(dir.join("tile/0/x.bulwark-tmp"), b"junk").unwrap();
        drop(l);
        let (l, rec) = Ledger::open(&dir, scope, signer.public_key()).unwrap();
        assert_eq!(l.checkpoint().head(), acked);
        assert!(rec.removed_files >= 5, "{rec:?}");
        assert!(!dir.join("tile/0/001").exists() && !dir.join("tile/entries/002.p/188").exists());
        assert!(dir.join("tile/0/000").exists() && dir.join("tile/0/001.p/44").exists());
        assert_eq!(Entry::decode(&l.entry(299).unwrap()).unwrap().scope(), scope);
        assert_eq!(rec.next_counter, 300);
        assert_eq!(rec.pending.len(), 1, "only the newest OAR has a low-water mark at itself");
    }

    #[test]
    fn checkpoint_copies_are_reconciled_and_corruption_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("l");
        let (mut l, signer) = setup(&dir);
        let scope = signer.scope();
        l.append(&entry(scope, 0));
        let one = l.commit(&signer).unwrap();
        l.append(&entry(scope, 1));
        let two = l.commit(&signer).unwrap();
        drop(l);
        // Crash between the history copy and `checkpoint`: the newest valid one is adopted.
        std::fs::write(dir.join("checkpoint"), one.text()).unwrap();
        let (l, _) = Ledger::open(&dir, scope, signer.public_key()).unwrap();
        assert_eq!(l.checkpoint(), &two);
        assert_eq!(read_identity(&dir).unwrap(), (scope, signer.public_key().clone()));
        assert_eq!(std::fs::read_to_string(dir.join("checkpoint")).unwrap(), two.text());
        drop(l);
        // A tile that contradicts the signed root is refused, not repaired.
        let tile = dir.join("tile/0/000.p/2");
        let mut b = std::fs::read(&tile).unwrap();
        b[0] ^= 1;
        std::fs::write(&tile, &b).unwrap();
        assert!(matches!(Ledger::open(&dir, scope, signer.public_key()), Err(LedgerError::Corrupt { .. })));
        // A forged checkpoint is refused.
        std::fs::write(&tile, {
            b[0] ^= 1;
            &b
        })
        .unwrap();
        std::fs::write(dir.join("checkpoint"), two.text().replace("\n2\n", "\n3\n")).unwrap();
        assert!(matches!(Ledger::open(&dir, scope, signer.public_key()), Err(LedgerError::Checkpoint { .. })));
    }

    #[test]
    fn tile_names() {
        assert_eq!(parse_tile_rel("tile/0/000.p/5"), Some((Some(0), 0, 5)));
        assert_eq!(parse_tile_rel("tile/entries/x001/002"), Some((None, 1002, 256)));
        assert_eq!(parse_tile_rel("tile/00/000"), None);
        assert_eq!(parse_tile_rel("tile/0/000.p/256"), None);
        assert_eq!(parse_tile_rel("tile/0/000.p/05"), None);
        assert!(tile_within(0, 0, 5, 5) && !tile_within(0, 0, 6, 5));
        assert!(tile_within(1, 0, 1, 256) && !tile_within(1, 0, 2, 256 * 2 - 1));
    }
}
