//! The tenant registry, `D/registry.redb`: which tenants exist, their names and TPM liveness slots.
//!
//! Nothing here is secret and nothing here is trusted for access control: a tenant's data opens only
//! with its KEK, which only the TPM releases, and only while the tenant's liveness bit in TPM NV is
//! clear; and which liveness slots were handed out is the TPM's slot claims' to say (the registry's
//! counter is where the search starts). The registry is bookkeeping: a restored or edited registry can
//! at worst list a tenant that can no longer be unlocked, or miss one that still can.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use redb::{Database, ReadOnlyDatabase, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};
use serde::{Deserialize, Serialize};

use crate::datadir::Settled;
use crate::ids::TenantId;

const TENANTS: TableDefinition<&[u8; 16], &[u8]> = TableDefinition::new("tenants");
const COUNTERS: TableDefinition<&str, u64> = TableDefinition::new("counters");
const NEXT_SLOT: &str = "next-liveness-slot";

/// Longest tenant display name, in bytes.
pub const MAX_NAME_LEN: usize = 64;

/// What can go wrong with the registry.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The name is empty, too long, or has characters outside `[A-Za-z0-9._-]`.
    #[error("invalid tenant name {0:?}: use 1-64 characters from A-Z a-z 0-9 . _ -")]
    BadName(String),
    /// A live tenant has that name already, or one that differs from it only in letter case.
    #[error("a tenant named {0:?} exists already (tenant names must differ in more than letter case)")]
    NameTaken(String),
    /// No tenant with that id.
    #[error("no tenant {0} on this appliance")]
    UnknownTenant(TenantId),
    /// Another process holds the registry.
    #[error("the tenant registry {0} is in use by another bulwark process; try again when it finishes")]
    Busy(PathBuf),
    /// A write was attempted on a registry opened read-only (a bug in the caller).
    #[error("the tenant registry was opened read-only")]
    ReadOnly,
    /// The registry database is corrupt.
    #[error("tenant registry is unreadable or corrupt")]
    Store(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The file system failed to read or write the registry (a full disk, a read-only mount): a write
    /// that fails so changes nothing.
    #[error("the tenant registry could not be read or written (nothing was changed)")]
    Storage(#[source] std::io::Error),
    /// The file system failed a write's commit, and the registry could not be reopened to tell whether
    /// the change reached the file.
    #[error(
        "the tenant registry could not be written, and whether the change was stored could not be told \
         (reopening the file to look failed: {reopen}); once the cause is removed, `bulwark tenant list` shows \
         which"
    )]
    Unsettled {
        /// Why the commit failed.
        #[source]
        source: std::io::Error,
        /// Why the file could not be reopened, with its causes.
        reopen: String,
    },
}

fn store<E: Into<redb::Error>>(e: E) -> RegistryError {
    match crate::datadir::storage_io(e) {
        Ok(io) => RegistryError::Storage(io),
        Err(e) => RegistryError::Store(Box::new(e)),
    }
}

/// The stored bytes of tenant `id`'s record, if `tx` sees one.
fn stored_bytes(tx: &redb::ReadTransaction, id: TenantId) -> Result<Option<Vec<u8>>, RegistryError> {
    let t = match tx.open_table(TENANTS) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
        Err(e) => return Err(store(e)),
    };
    Ok(t.get(id.as_bytes()).map_err(store)?.map(|v| v.value().to_vec()))
}

/// The error for a registry whose reopen after a failed commit failed.
fn lost() -> RegistryError {
    RegistryError::Store("the tenant registry could not be reopened after a failed write".into())
}

/// A record that does not decode (or encode) as a [`TenantRecord`].
fn malformed(e: postcard::Error) -> RegistryError {
    RegistryError::Store(Box::new(e))
}

/// The number of a tenant's liveness slot in TPM NV (`bulwark_tpm::LivenessSlot::from_counter` maps it to
/// an index and a bit). The tenant is alive while that bit is clear; deleting it sets the bit, which no
/// one can clear again, so numbers are never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotNumber(pub u64);

/// A tenant as the registry knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantRecord {
    /// Immutable id.
    pub id: TenantId,
    /// Display name, unique among live tenants regardless of letter case.
    pub name: String,
    /// Creation time, seconds since the Unix epoch.
    pub created_unix: u64,
    /// Its TPM liveness slot.
    pub slot: SlotNumber,
}

/// The open registry: read-only unless opened for writing, so a command that only reads (every vault
/// command) never changes the file.
pub struct Registry {
    path: PathBuf,
    db: Mutex<Store>,
}

enum Store {
    Missing,
    ReadOnly(ReadOnlyDatabase),
    Writable(Database),
    /// A writable registry whose reopen failed after a failed commit.
    Lost,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Registry")
    }
}

/// Checks a tenant display name.
pub fn check_name(name: &str) -> Result<(), RegistryError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok { Ok(()) } else { Err(RegistryError::BadName(name.chars().take(80).collect())) }
}

/// Makes an empty registry at `path`, which does not exist, so that `path` never names a half-made one.
/// redb writes a new file's header first and its magic number last, and no open accepts a file without
/// one: a process killed in between (an `init` killed at the wrong moment) left a registry that every
/// later command, `init` included, refused. So the registry is made under a temporary name and renamed
/// into place once redb has finished it. What a killed creation left under the temporary name is
/// removed; a registry at `path` itself is never removed.
fn create_whole(path: &Path) -> Result<(), RegistryError> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(bulwark_ledger::fsutil::TMP_SUFFIX);
    let tmp = PathBuf::from(tmp);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let mut removed_stale = false;
    loop {
        if path.exists() {
            return Ok(());
        }
        match Database::create(&tmp) {
            Ok(db) => {
                drop(db);
                break;
            }
            // Another process is making it.
            Err(redb::DatabaseError::DatabaseAlreadyOpen) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(redb::DatabaseError::DatabaseAlreadyOpen) => return Err(RegistryError::Busy(path.to_path_buf())),
            Err(_) if !removed_stale && tmp.exists() => {
                std::fs::remove_file(&tmp).map_err(RegistryError::Storage)?;
                removed_stale = true;
            }
            Err(e) => return Err(store(e)),
        }
    }
    std::fs::File::open(&tmp).and_then(|f| f.sync_all()).map_err(RegistryError::Storage)?;
    match std::fs::rename(&tmp, path) {
        Ok(()) => {}
        // Another process renamed the same finished file first.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && path.exists() => return Ok(()),
        Err(e) => return Err(RegistryError::Storage(e)),
    }
    let dir = path.parent().unwrap_or(Path::new(".")).to_path_buf();
    bulwark_ledger::fsutil::sync_dirs(&std::collections::BTreeSet::from([dir])).map_err(RegistryError::Storage)
}

impl Registry {
    /// Opens the registry at `path` for reading only (a missing file reads as empty).
    pub fn open_read_only(path: &Path) -> Result<Self, RegistryError> {
        if !path.exists() {
            return Ok(Registry::new(path, Store::Missing));
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let mut repaired = false;
        loop {
            match ReadOnlyDatabase::open(path) {
                Ok(db) => return Ok(Registry::new(path, Store::ReadOnly(db))),
                // Not closed cleanly (a crash, or a full disk as it closed): only a read-write open
                // repairs it, once.
                Err(redb::DatabaseError::RepairAborted) if !repaired => {
                    match Database::open(path) {
                        Ok(db) => drop(db),
                        Err(redb::DatabaseError::DatabaseAlreadyOpen) => {}
                        Err(e) => return Err(store(e)),
                    }
                    repaired = true;
                }
                Err(redb::DatabaseError::DatabaseAlreadyOpen) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(redb::DatabaseError::DatabaseAlreadyOpen) => return Err(RegistryError::Busy(path.to_path_buf())),
                Err(e) => return Err(store(e)),
            }
        }
    }

    /// Opens (creating if needed, see [`create_whole`]) the registry at `path` for writing, waiting up to
    /// 30 s for another process.
    pub fn open(path: &Path) -> Result<Self, RegistryError> {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            if !path.exists() {
                create_whole(path)?;
            }
            match Database::open(path) {
                Ok(db) => return Ok(Registry::new(path, Store::Writable(db))),
                Err(redb::DatabaseError::DatabaseAlreadyOpen) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(redb::DatabaseError::DatabaseAlreadyOpen) => return Err(RegistryError::Busy(path.to_path_buf())),
                // Removed since it was looked for: made anew on the next turn.
                Err(redb::DatabaseError::Storage(redb::StorageError::Io(e)))
                    if e.kind() == std::io::ErrorKind::NotFound && std::time::Instant::now() < deadline => {}
                Err(e) => return Err(store(e)),
            }
        }
    }

    fn new(path: &Path, db: Store) -> Self {
        Registry { path: path.to_path_buf(), db: Mutex::new(db) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Store> {
        // The guarded value is a handle; a panic while it was held leaves it as it was.
        self.db.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A durable write transaction.
    fn begin_write(&self) -> Result<WriteTransaction, RegistryError> {
        let mut tx = match &*self.lock() {
            Store::Writable(db) => db.begin_write().map_err(store)?,
            Store::Lost => return Err(lost()),
            _ => return Err(RegistryError::ReadOnly),
        };
        tx.set_durability(redb::Durability::Immediate).map_err(store)?;
        Ok(tx)
    }

    fn begin_read(&self) -> Result<Option<redb::ReadTransaction>, RegistryError> {
        match &*self.lock() {
            Store::Missing => Ok(None),
            Store::ReadOnly(db) => db.begin_read().map(Some).map_err(store),
            Store::Writable(db) => db.begin_read().map(Some).map_err(store),
            Store::Lost => Err(lost()),
        }
    }

    /// Commits `tx`, and after a failure of the file system looks whether the change reached the file all
    /// the same ([`crate::datadir::commit_settled`]): its error stands only when the change is not there,
    /// and [`RegistryError::Unsettled`] says so when the file cannot be reopened to look. `stored` asks
    /// the reopened file.
    fn commit_settled(
        &self,
        tx: WriteTransaction,
        stored: impl FnOnce(&redb::ReadTransaction) -> Result<bool, RegistryError>,
    ) -> Result<(), RegistryError> {
        let look = || {
            self.reopen()?;
            match self.begin_read()? {
                Some(tx) => stored(&tx),
                None => Ok(false),
            }
        };
        match crate::datadir::commit_settled("registry", &self.path, tx, look).map_err(store)? {
            Settled::Stored => Ok(()),
            Settled::Failed(e) => Err(RegistryError::Storage(e)),
            Settled::Unknown { failed, reopen } => Err(RegistryError::Unsettled { source: failed, reopen }),
        }
    }

    /// Closes the writable handle and opens the file afresh (repairing it, as the next opener would, if the
    /// failed commit left it needing that).
    fn reopen(&self) -> Result<(), RegistryError> {
        let mut db = self.lock();
        *db = Store::Lost;
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            match Database::open(&self.path) {
                Ok(fresh) => {
                    *db = Store::Writable(fresh);
                    return Ok(());
                }
                // Closing the old handle may take redb a moment to release its file lock.
                Err(redb::DatabaseError::DatabaseAlreadyOpen) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(e) => return Err(store(e)),
            }
        }
    }

    /// Where the search for a new liveness slot starts: one past the highest slot this registry has seen
    /// handed out. Only a hint: which slots were handed out is the TPM's to say (its slot claims), since
    /// a registry restored from an older copy counts from an older number.
    pub fn next_slot(&self) -> Result<SlotNumber, RegistryError> {
        let Some(tx) = self.begin_read()? else { return Ok(SlotNumber(0)) };
        let c = match tx.open_table(COUNTERS) {
            Ok(c) => c,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(SlotNumber(0)),
            Err(e) => return Err(store(e)),
        };
        Ok(SlotNumber(c.get(NEXT_SLOT).map_err(store)?.map(|v| v.value()).unwrap_or(0)))
    }

    /// Records that `slot` was handed out: later searches start above it.
    pub fn slot_handed_out(&self, slot: SlotNumber) -> Result<(), RegistryError> {
        let tx = self.begin_write()?;
        {
            let mut c = tx.open_table(COUNTERS).map_err(store)?;
            let next = c.get(NEXT_SLOT).map_err(store)?.map(|v| v.value()).unwrap_or(0);
            c.insert(NEXT_SLOT, next.max(slot.0.saturating_add(1))).map_err(store)?;
        }
        // Only a hint (see `next_slot`): a failed commit that reached the file all the same harms nothing.
        crate::datadir::commit(tx).map_err(store)
    }

    /// Fails with [`RegistryError::NameTaken`] if a live tenant's name equals `name` but for letter case
    /// (two tenants called `legal` and `Legal` would be told apart by nobody reading a listing aloud).
    pub fn check_name_free(&self, name: &str) -> Result<(), RegistryError> {
        match self.list()?.into_iter().find(|t| t.name.eq_ignore_ascii_case(name)) {
            Some(holder) => Err(RegistryError::NameTaken(holder.name)),
            None => Ok(()),
        }
    }

    /// Adds a tenant record. Fails if a live tenant has its name (see [`Registry::check_name_free`]).
    pub fn insert(&self, rec: &TenantRecord) -> Result<(), RegistryError> {
        check_name(&rec.name)?;
        self.check_name_free(&rec.name)?;
        let bytes = postcard::to_stdvec(rec).map_err(malformed)?;
        let tx = self.begin_write()?;
        tx.open_table(TENANTS).map_err(store)?.insert(rec.id.as_bytes(), bytes.as_slice()).map_err(store)?;
        self.commit_settled(tx, |tx| Ok(stored_bytes(tx, rec.id)?.is_some_and(|v| v == bytes)))
    }

    /// Looks a tenant up by id.
    pub fn get(&self, id: TenantId) -> Result<TenantRecord, RegistryError> {
        let Some(tx) = self.begin_read()? else { return Err(RegistryError::UnknownTenant(id)) };
        let bytes = stored_bytes(&tx, id)?.ok_or(RegistryError::UnknownTenant(id))?;
        postcard::from_bytes(&bytes).map_err(malformed)
    }

    /// Every tenant, ordered by name.
    pub fn list(&self) -> Result<Vec<TenantRecord>, RegistryError> {
        let Some(tx) = self.begin_read()? else { return Ok(Vec::new()) };
        let t = match tx.open_table(TENANTS) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(store(e)),
        };
        let mut out = Vec::new();
        for item in t.iter().map_err(store)? {
            let (_, v) = item.map_err(store)?;
            out.push(postcard::from_bytes::<TenantRecord>(v.value()).map_err(malformed)?);
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Removes a tenant record.
    pub fn remove(&self, id: TenantId) -> Result<(), RegistryError> {
        let tx = self.begin_write()?;
        let existed = tx.open_table(TENANTS).map_err(store)?.remove(id.as_bytes()).map_err(store)?.is_some();
        if !existed {
            // Nothing was removed; the transaction is dropped uncommitted.
            return Err(RegistryError::UnknownTenant(id));
        }
        self.commit_settled(tx, |tx| Ok(stored_bytes(tx, id)?.is_none()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datadir::tests::{CommitFault, away};

    #[test]
    fn a_write_the_file_system_fails_is_reported_as_what_reached_the_file() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("registry.redb");
        let r = Registry::open(&path).unwrap();
        let tenant = |name: &str, slot| TenantRecord {
            id: TenantId::random().unwrap(),
            name: name.into(),
            created_unix: 1,
            slot: SlotNumber(slot),
        };
        let names = |r: &Registry| r.list().unwrap().into_iter().map(|t| t.name).collect::<Vec<_>>();
        let (a, b, c) = (tenant("a", 0), tenant("b", 1), tenant("c", 2));
        // Failed before it reached the file: the error stands and nothing changed.
        CommitFault::Before.next();
        let e = r.insert(&a);
        assert!(matches!(e, Err(RegistryError::Storage(_))), "{e:?}");
        assert!(names(&r).is_empty());
        // Reported as failed but on the file: the write stands.
        CommitFault::After.next();
        r.insert(&a).unwrap();
        assert_eq!(names(&r), ["a"]);
        CommitFault::Before.next();
        assert!(matches!(r.remove(a.id), Err(RegistryError::Storage(_))));
        assert_eq!(names(&r), ["a"]);
        CommitFault::After.next();
        r.remove(a.id).unwrap();
        assert!(names(&r).is_empty());
        // The registry goes on writing after the reopen.
        r.insert(&b).unwrap();
        // On the file, but the file cannot be reopened to tell: unsettled, and the file once back shows it.
        CommitFault::AfterThenAway(path.clone()).next();
        let e = r.insert(&c).unwrap_err();
        assert!(matches!(e, RegistryError::Unsettled { .. }), "{e:?}");
        assert!(e.to_string().contains("`bulwark tenant list` shows"), "{e}");
        assert!(r.list().is_err(), "a registry that could not be reopened still answered");
        drop(r);
        std::fs::rename(away(&path), &path).unwrap();
        assert_eq!(names(&Registry::open_read_only(&path).unwrap()), ["b", "c"]);
    }

    #[test]
    fn a_creation_killed_half_way_leaves_nothing_that_blocks_the_next() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("registry.redb");
        // What redb leaves when killed before it writes the magic number: a header, no magic.
        let half_made = |p: &Path| {
            let mut bytes = vec![0u8; 73728];
            bytes[8..20].copy_from_slice(&[0, 4, 0, 0, 0, 0x10, 0, 0, 0, 0, 0, 0]);
            std::fs::write(p, bytes).unwrap();
        };
        let tmp = d.path().join("registry.redb.bulwark-tmp");
        half_made(&tmp);
        let r = Registry::open(&path).unwrap();
        assert_eq!(r.next_slot().unwrap(), SlotNumber(0));
        drop(r);
        assert!(!tmp.exists(), "the half-made file stayed");
        // A registry at the real path is never thrown away, whatever its state.
        half_made(&path);
        assert!(Registry::open(&path).is_err());
        assert!(Registry::open_read_only(&path).is_err());
        assert!(path.exists());
    }

    #[test]
    fn the_slot_hint_only_moves_up_and_names_are_unique() {
        let d = tempfile::tempdir().unwrap();
        let r = Registry::open(&d.path().join("r.redb")).unwrap();
        assert_eq!(r.next_slot().unwrap(), SlotNumber(0));
        r.slot_handed_out(SlotNumber(0)).unwrap();
        let (s0, s1) = (SlotNumber(0), r.next_slot().unwrap());
        assert_eq!(s1, SlotNumber(1));
        r.slot_handed_out(SlotNumber(5)).unwrap();
        r.slot_handed_out(SlotNumber(2)).unwrap();
        assert_eq!(r.next_slot().unwrap(), SlotNumber(6));
        let rec = TenantRecord { id: TenantId::random().unwrap(), name: "legal".into(), created_unix: 1, slot: s0 };
        r.insert(&rec).unwrap();
        let dup = TenantRecord { id: TenantId::random().unwrap(), name: "legal".into(), created_unix: 1, slot: s1 };
        assert!(matches!(r.insert(&dup), Err(RegistryError::NameTaken(_))));
        let upper = TenantRecord { name: "LeGaL".into(), ..dup.clone() };
        let e = r.insert(&upper).unwrap_err();
        assert!(matches!(&e, RegistryError::NameTaken(held) if held == "legal"), "{e:?}");
        assert!(e.to_string().contains("differ in more than letter case"), "{e}");
        assert_eq!(r.get(rec.id).unwrap(), rec);
        r.remove(rec.id).unwrap();
        assert!(matches!(r.get(rec.id), Err(RegistryError::UnknownTenant(_))));
        assert_eq!(r.next_slot().unwrap(), SlotNumber(6));
    }

    #[test]
    fn names_are_checked() {
        for bad in ["", "a b", "x/y", &"n".repeat(65), "é"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        check_name("legal-dept_2.eu").unwrap();
    }
}
