//! The appliance's data directory: its layout, its config file and the active hardware profile.
//!
//! ```text
//! D/appliance.toml          config (measured into the runtime PCR)
//! D/profile.toml            the active hardware profile (measured into the runtime PCR)
//! D/runtime-measurements.tcglog  runtime measurement log (replays to the runtime PCR)
//! D/registry.redb           tenant registry: names, liveness slots, nothing secret
//! D/swtpm/                  state of the managed swtpm (only with --tpm auto and no TPM device)
//! D/init.lock               held by `init` while it runs (one init of a data dir at a time)
//! D/swtpm.lock              held while a process uses the managed swtpm
//! D/tenants/<id>/kek.sealed the tenant's KEK, sealed by the TPM
//! D/tenants/<id>/vault.redb the tenant's records (and its signing seed, under its DEK)
//! D/tenants/<id>/ledger/    the tenant's attestation ledger (tlog tiles, signed checkpoints)
//! D/appliance/key.sealed    the appliance's signing seed, sealed by the TPM (written last by init)
//! D/appliance/owner.sealed  the TPM owner and lockout authorizations init set, sealed the same way
//! D/appliance/tpm-srk.sha256 which TPM init used: the SHA-256 of its SRK's public area (checked by every open)
//! D/appliance/ledger/       the appliance ledger (tenant lifecycle, keys published)
//! ```
//!
//! `D` itself is owner-only (mode 0700): what sits inside it in the clear (tenant names, ledger entries, how
//! many records each vault holds and how large they are) is for the appliance's own user, and no file inside
//! needs a mode of its own.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// Version of the data-dir layout this build writes and reads.
pub const LAYOUT_VERSION: u32 = 1;

const CONFIG_FILE: &str = "appliance.toml";
const PROFILE_FILE: &str = "profile.toml";
const REGISTRY_FILE: &str = "registry.redb";
const INIT_LOCK_FILE: &str = "init.lock";
const SWTPM_DIR: &str = "swtpm";
const SWTPM_LOCK_FILE: &str = "swtpm.lock";
const TENANTS_DIR: &str = "tenants";
const APPLIANCE_DIR: &str = "appliance";

/// The names Bulwark gives what it keeps at the top of a data dir (the ones above, and the runtime log),
/// and `lost+found`, which a file system made for the data dir holds from the start.
const OWN_NAMES: &[&str] = &[
    CONFIG_FILE,
    PROFILE_FILE,
    REGISTRY_FILE,
    INIT_LOCK_FILE,
    SWTPM_DIR,
    SWTPM_LOCK_FILE,
    TENANTS_DIR,
    APPLIANCE_DIR,
    bulwark_boot::runtime::LOG_FILE_NAME,
    "lost+found",
];

/// How long an `init` waits for another `init` of the same data dir to finish.
pub const INIT_LOCK_WAIT: Duration = Duration::from_secs(120);

/// What can go wrong with the data dir.
#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    /// `init` has not been run on this directory.
    #[error("{0} is not an initialised Bulwark data dir; run `bulwark --data-dir {0} init` first")]
    NotInitialised(PathBuf),
    /// `init` was run already.
    #[error("{0} is already initialised")]
    AlreadyInitialised(PathBuf),
    /// Another `init` of this data dir holds its init lock and did not finish within [`INIT_LOCK_WAIT`].
    #[error(
        "another `bulwark init` of {0} has been running for over {secs} s; wait until it ends, then run init again",
        secs = INIT_LOCK_WAIT.as_secs()
    )]
    InitRunning(PathBuf),
    /// The data dir's path names something that is not a directory (a file, say).
    #[error("{0} exists and is not a directory; give --data-dir a directory, or a path that does not exist yet")]
    NotADirectory(PathBuf),
    /// The data dir exists but this user cannot reach into it (another user's, usually root's).
    #[error(
        "cannot use the data dir {path}: run bulwark as the user that owns it (the appliance runs as root), or \
         give --data-dir a directory this user may use"
    )]
    Inaccessible {
        /// The data dir.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// `init` was given a directory that holds files Bulwark did not put there.
    #[error(
        "{path} holds files that are not Bulwark's ({found}); init makes its data dir owner-only and writes into it, \
         so give --data-dir a new or empty directory"
    )]
    NotEmpty {
        /// The directory.
        path: PathBuf,
        /// The first few of those names.
        found: String,
    },
    /// The config file does not parse.
    #[error("config {path} is invalid")]
    BadConfig {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: toml::de::Error,
    },
    /// The config was written by another layout version.
    #[error("data dir layout version {found} is not supported by this build (expects {LAYOUT_VERSION})")]
    Version {
        /// What the file says.
        found: u32,
    },
    /// Filesystem error.
    #[error("I/O on {path}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// The appliance config, `D/appliance.toml`. Its exact bytes are measured into the runtime PCR, so any
/// edit changes the measured state and seals every tenant until a legitimate reseal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApplianceConfig {
    /// Data-dir layout version.
    pub layout_version: u32,
    /// Id of the active hardware profile (its bytes are in `D/profile.toml`).
    pub profile: String,
    /// This appliance's id (32 hex digits): names its ledger and its signing key's context.
    pub appliance_id: String,
    /// Development only: measure a fixed label instead of the executable's bytes, so tenants survive
    /// rebuilds of the binary. Set only by `init --danger-dev-unbound-executable`; the flag is itself
    /// part of the measured config, so a tenant sealed in this mode never unseals in production mode.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub danger_dev_unbound_executable: bool,
}

/// An appliance data directory.
#[derive(Debug, Clone)]
pub struct DataDir {
    root: PathBuf,
}

pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> DataDirError + '_ {
    move |source| DataDirError::Io { path: path.to_path_buf(), source }
}

/// Splits what the storage engine (redb) reported into a failure of the file system under it (a full
/// disk, a read-only mount: `Ok`) and anything else (`Err`: a damaged file, or a misuse). A file shorter
/// than its own structures say counts as damaged.
pub(crate) fn storage_io(e: impl Into<redb::Error>) -> Result<std::io::Error, redb::Error> {
    match e.into() {
        redb::Error::Io(io) if io.kind() != std::io::ErrorKind::UnexpectedEof => Ok(io),
        redb::Error::PreviousIo => Ok(std::io::Error::other("an earlier read or write of the file failed")),
        e => Err(e),
    }
}

/// Commits `tx`. Unit tests can make the next commit on their thread fail as a full disk would, before or
/// after it reaches the file (`tests::CommitFault`).
pub(crate) fn commit(tx: redb::WriteTransaction) -> Result<(), redb::CommitError> {
    #[cfg(test)]
    if let Some(fault) = tests::COMMIT_FAULT.take() {
        return fault.apply(tx);
    }
    tx.commit()
}

/// What became of a commit that [`commit_settled`] looked at.
pub(crate) enum Settled {
    /// The file holds it (also when the file system reported a failure and the reopened file holds it).
    Stored,
    /// The file system failed it, and the file does not hold it.
    Failed(std::io::Error),
    /// The file system failed it, and the file could not be reopened to look (why, with its causes).
    Unknown { failed: std::io::Error, reopen: String },
}

/// Commits `tx` to the redb file at `path` (`what` names it in the log). A commit that the file system
/// fails (a full disk, an I/O error) may still have reached the file: redb writes the new header and the
/// pages it names in one flush, in no fixed order, and the next open of the file keeps the newest commit
/// whose pages all check out. So after such a failure `look` reopens the file as that open would
/// (repairing it if it must) and says whether the change is there. Failures that are not the file
/// system's come back as they are.
pub(crate) fn commit_settled<E: std::error::Error + 'static>(
    what: &str,
    path: &Path,
    tx: redb::WriteTransaction,
    look: impl FnOnce() -> Result<bool, E>,
) -> Result<Settled, redb::Error> {
    let failed = match commit(tx).map_err(storage_io) {
        Ok(()) => return Ok(Settled::Stored),
        Err(Ok(io)) => io,
        Err(Err(other)) => return Err(other),
    };
    Ok(match look() {
        Ok(true) => {
            tracing::warn!(
                path = %path.display(),
                error = %failed,
                "the file system reported a failure as a {what} write was committed, but the write reached the file: \
                 it stands"
            );
            Settled::Stored
        }
        Ok(false) => Settled::Failed(failed),
        Err(e) => Settled::Unknown { failed, reopen: crate::report::with_causes(&e) },
    })
}

/// Opens the lock file at `path` (creating it if needed) and takes an exclusive `flock` on it, waiting up
/// to `wait` while another process holds it: `Ok(None)` when the wait ran out. The lock lasts as long as
/// the returned file stays open.
pub(crate) fn lock_within(path: &Path, wait: Duration) -> std::io::Result<Option<File>> {
    let f = OpenOptions::new().create(true).truncate(false).write(true).open(path)?;
    let start = Instant::now();
    loop {
        match f.try_lock() {
            Ok(()) => return Ok(Some(f)),
            Err(fs::TryLockError::WouldBlock) if start.elapsed() < wait => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(fs::TryLockError::WouldBlock) => return Ok(None),
            Err(fs::TryLockError::Error(e)) => return Err(e),
        }
    }
}

/// Writes `bytes` to `path` atomically and durably (temp file, fsync, rename, fsync of the directory): the
/// ledger crate's implementation, so the whole appliance has one.
pub use bulwark_ledger::fsutil::write_durable;

impl DataDir {
    /// The data dir at `root` (not touched until used). A relative path is made absolute so the
    /// managed swtpm and the lock files agree on it.
    pub fn new(root: &Path) -> Result<Self, DataDirError> {
        // Absolute (swtpm needs an absolute state dir), without `.` components, symlinks kept.
        let root = std::path::absolute(root).map_err(io_err(root))?;
        Ok(DataDir { root })
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }
    /// `D/appliance.toml`.
    pub fn config_path(&self) -> PathBuf {
        self.root.join(CONFIG_FILE)
    }
    /// `D/profile.toml`.
    pub fn profile_path(&self) -> PathBuf {
        self.root.join(PROFILE_FILE)
    }
    /// `D/registry.redb`.
    pub fn registry_path(&self) -> PathBuf {
        self.root.join(REGISTRY_FILE)
    }
    /// `D/init.lock`, held by `init` from its first write to its last.
    pub fn init_lock_path(&self) -> PathBuf {
        self.root.join(INIT_LOCK_FILE)
    }
    /// `D/swtpm`, the managed swtpm's state.
    pub fn swtpm_dir(&self) -> PathBuf {
        self.root.join(SWTPM_DIR)
    }
    /// `D/appliance`: the appliance's sealed signing key and its ledger.
    pub fn appliance_dir(&self) -> PathBuf {
        self.root.join(APPLIANCE_DIR)
    }
    /// `D/swtpm.lock`, held while a process uses the managed swtpm.
    pub fn swtpm_lock_path(&self) -> PathBuf {
        self.root.join(SWTPM_LOCK_FILE)
    }
    /// `D/tenants`.
    pub fn tenants_dir(&self) -> PathBuf {
        self.root.join(TENANTS_DIR)
    }
    /// `D/tenants/<id>`.
    pub fn tenant_dir(&self, id: &crate::ids::TenantId) -> PathBuf {
        self.tenants_dir().join(id.to_string())
    }

    /// Creates the data dir owner-only (mode 0700) if it is missing, and takes group and other access away
    /// from one that has it. Returns whether an existing dir had to be tightened. Refuses a path that is not
    /// a directory, or one this user cannot use, as [`DataDir::is_initialised`] does.
    pub fn make_private(&self) -> Result<bool, DataDirError> {
        let meta = match self.existing_dir()? {
            Some(meta) => meta,
            None => {
                fs::DirBuilder::new().recursive(true).mode(0o700).create(&self.root).map_err(io_err(&self.root))?;
                return Ok(false);
            }
        };
        let mode = meta.permissions().mode();
        if mode & 0o077 == 0 {
            return Ok(false);
        }
        fs::set_permissions(&self.root, fs::Permissions::from_mode(mode & 0o700)).map_err(io_err(&self.root))?;
        Ok(true)
    }

    /// The data dir's metadata if it exists, after checking that it is a directory this user can list;
    /// `None` if there is nothing at its path yet.
    fn existing_dir(&self) -> Result<Option<fs::Metadata>, DataDirError> {
        let meta = match fs::metadata(&self.root) {
            Ok(meta) if !meta.is_dir() => return Err(DataDirError::NotADirectory(self.root.clone())),
            Ok(meta) => meta,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.inaccessible(e)),
        };
        fs::read_dir(&self.root).map_err(|e| self.inaccessible(e))?;
        Ok(Some(meta))
    }

    fn inaccessible(&self, source: std::io::Error) -> DataDirError {
        DataDirError::Inaccessible { path: self.root.clone(), source }
    }

    /// Whether `init` has run here. Refused, before anything (the TPM included) is touched for this data
    /// dir: [`DataDirError::NotADirectory`] if its path names something else, [`DataDirError::Inaccessible`]
    /// if this user cannot reach into it. A path that does not exist yet is a data dir to be made.
    pub fn is_initialised(&self) -> Result<bool, DataDirError> {
        if self.existing_dir()?.is_none() {
            return Ok(false);
        }
        self.config_path().try_exists().map_err(|e| self.inaccessible(e))
    }

    /// Whether `path`, which need not exist yet, lies inside this data dir once symlinks are resolved: the
    /// longest part of it that exists is resolved, and the rest (directories that would be made) is
    /// applied to that, `..` included.
    pub fn holds(&self, path: &Path) -> Result<bool, DataDirError> {
        let root = match fs::canonicalize(&self.root) {
            Ok(root) => root,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(io_err(&self.root)(e)),
        };
        let path = std::path::absolute(path).map_err(io_err(path))?;
        let mut existing = path.as_path();
        let mut rest = Vec::new();
        let mut real = loop {
            match fs::canonicalize(existing) {
                Ok(real) => break real,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    // An absolute path ends at `/`, which exists.
                    let Some(parent) = existing.parent() else { return Err(io_err(existing)(e)) };
                    rest.extend(existing.components().next_back());
                    existing = parent;
                }
                Err(e) => return Err(io_err(existing)(e)),
            }
        };
        for part in rest.iter().rev() {
            match part {
                std::path::Component::ParentDir => {
                    real.pop();
                }
                std::path::Component::Normal(name) => real.push(name),
                _ => {}
            }
        }
        Ok(real.starts_with(&root))
    }

    /// Refuses, for `init`, a directory that holds anything Bulwark did not put there: `init` makes the
    /// data dir owner-only and writes into it, which must never happen to a directory in use for something
    /// else (`/tmp`, a home directory, `/`). What an unfinished `init` left is Bulwark's own.
    pub fn refuse_foreign_entries(&self) -> Result<(), DataDirError> {
        let entries = match fs::read_dir(&self.root) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(self.inaccessible(e)),
        };
        let runtime_log_lock = format!("{}.lock", bulwark_boot::runtime::LOG_FILE_NAME);
        let mut foreign = Vec::new();
        for entry in entries {
            let name = entry.map_err(|e| self.inaccessible(e))?.file_name().to_string_lossy().into_owned();
            let base = name.strip_suffix(bulwark_ledger::fsutil::TMP_SUFFIX).unwrap_or(&name);
            if !OWN_NAMES.contains(&base) && base != runtime_log_lock {
                foreign.push(name);
            }
        }
        if foreign.is_empty() {
            return Ok(());
        }
        foreign.sort();
        let more = foreign.len().saturating_sub(3);
        let mut found = foreign.iter().take(3).map(|n| format!("{n:?}")).collect::<Vec<_>>().join(", ");
        if more > 0 {
            found.push_str(&format!(" and {more} more"));
        }
        Err(DataDirError::NotEmpty { path: self.root.clone(), found })
    }

    /// Makes the data dir (as [`DataDir::make_private`]) and takes its init lock, waiting up to
    /// [`INIT_LOCK_WAIT`] for another `init` to finish: two inits of one data dir run one after the other,
    /// and the second finds what the first did. Held until the returned file is dropped.
    pub fn lock_for_init(&self) -> Result<File, DataDirError> {
        self.make_private()?;
        let path = self.init_lock_path();
        lock_within(&path, INIT_LOCK_WAIT)
            .map_err(io_err(&path))?
            .ok_or_else(|| DataDirError::InitRunning(self.root.clone()))
    }

    /// Writes the config and profile of a new appliance. Fails if one exists already.
    pub fn initialise(&self, config: &ApplianceConfig, profile_bytes: &[u8]) -> Result<(), DataDirError> {
        if self.is_initialised()? {
            return Err(DataDirError::AlreadyInitialised(self.root.clone()));
        }
        self.make_private()?;
        fs::create_dir_all(self.tenants_dir()).map_err(io_err(&self.root))?;
        let text = toml::to_string(config)
            .map_err(|e| DataDirError::Io { path: self.config_path(), source: std::io::Error::other(e) })?;
        let pp = self.profile_path();
        write_durable(&pp, profile_bytes).map_err(io_err(&pp))?;
        // Config last: its presence marks the dir as initialised.
        let cp = self.config_path();
        write_durable(&cp, text.as_bytes()).map_err(io_err(&cp))
    }

    /// Reads the config's exact bytes and its parsed form.
    pub fn load_config(&self) -> Result<(Vec<u8>, ApplianceConfig), DataDirError> {
        let path = self.config_path();
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            // Why it cannot be read, as precisely as the dir itself tells (see `is_initialised`).
            Err(e) => {
                if self.is_initialised()? {
                    return Err(io_err(&path)(e));
                }
                return Err(DataDirError::NotInitialised(self.root.clone()));
            }
        };
        let text = String::from_utf8_lossy(&bytes);
        let config: ApplianceConfig =
            toml::from_str(&text).map_err(|source| DataDirError::BadConfig { path: path.clone(), source })?;
        if config.layout_version != LAYOUT_VERSION {
            return Err(DataDirError::Version { found: config.layout_version });
        }
        Ok((bytes, config))
    }

    /// Reads the active profile's exact bytes.
    pub fn load_profile_bytes(&self) -> Result<Vec<u8>, DataDirError> {
        let p = self.profile_path();
        fs::read(&p).map_err(io_err(&p))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// How a unit test makes the next redb commit on its thread fail as a full disk would.
    #[derive(Debug)]
    pub(crate) enum CommitFault {
        /// Nothing reaches the file.
        Before,
        /// The commit reaches the file all the same.
        After,
        /// The commit reaches the file, which is then moved from this path to `<path>.away`, so it cannot
        /// be reopened.
        AfterThenAway(PathBuf),
    }

    thread_local! {
        pub(crate) static COMMIT_FAULT: std::cell::Cell<Option<CommitFault>> = const { std::cell::Cell::new(None) };
    }

    impl CommitFault {
        /// Makes the next commit on this thread fail so.
        pub(crate) fn next(self) {
            COMMIT_FAULT.set(Some(self));
        }

        pub(super) fn apply(self, tx: redb::WriteTransaction) -> Result<(), redb::CommitError> {
            match &self {
                CommitFault::Before => tx.abort().map_err(redb::CommitError::Storage)?,
                CommitFault::After | CommitFault::AfterThenAway(_) => tx.commit()?,
            }
            if let CommitFault::AfterThenAway(path) = &self {
                std::fs::rename(path, away(path)).expect("move the file away");
            }
            let full = std::io::Error::from(std::io::ErrorKind::StorageFull);
            Err(redb::CommitError::Storage(redb::StorageError::Io(full)))
        }
    }

    /// Where [`CommitFault::AfterThenAway`] moves the file at `path`.
    pub(crate) fn away(path: &Path) -> PathBuf {
        path.with_extension("away")
    }

    fn test_config() -> ApplianceConfig {
        ApplianceConfig {
            layout_version: 1,
            profile: "dev-swtpm".into(),
            appliance_id: "00".repeat(16),
            danger_dev_unbound_executable: false,
        }
    }

    #[test]
    fn init_then_load_and_refuse_twice() {
        let d = tempfile::tempdir().unwrap();
        let dd = DataDir::new(d.path()).unwrap();
        assert!(matches!(dd.load_config(), Err(DataDirError::NotInitialised(_))));
        let cfg = test_config();
        dd.initialise(&cfg, b"profile").unwrap();
        let (bytes, back) = dd.load_config().unwrap();
        assert_eq!(back, cfg);
        assert!(!String::from_utf8(bytes).unwrap().contains("danger"));
        assert!(matches!(dd.initialise(&cfg, b"p"), Err(DataDirError::AlreadyInitialised(_))));
    }

    #[test]
    fn holds_resolves_symlinks_and_dot_dots_of_paths_not_made_yet() {
        let d = tempfile::tempdir().unwrap();
        let dd = DataDir::new(&d.path().join("data")).unwrap();
        // Nothing is inside a data dir that does not exist.
        assert!(!dd.holds(&d.path().join("data/x")).unwrap());
        fs::create_dir_all(dd.root().join("tenants/t/ledger")).unwrap();
        let outside = d.path().join("outside");
        fs::create_dir(&outside).unwrap();
        std::os::unix::fs::symlink(dd.root().join("tenants"), outside.join("link")).unwrap();
        for inside in [
            dd.root().to_path_buf(),
            dd.root().join("bundle"),
            dd.root().join("tenants/t/ledger/new/deeper"),
            outside.join("link/t/bundle"),
            outside.join("missing/../../data/bundle"),
            d.path().join("data/./tenants/../bundle"),
        ] {
            assert!(dd.holds(&inside).unwrap(), "{}", inside.display());
        }
        for beside in [
            outside.join("bundle"),
            d.path().join("data-bundle"),
            dd.root().join("missing/../../bundle"),
            dd.root().join("../outside/bundle"),
        ] {
            assert!(!dd.holds(&beside).unwrap(), "{}", beside.display());
        }
    }

    #[test]
    fn init_takes_only_a_new_empty_or_own_directory() {
        let d = tempfile::tempdir().unwrap();
        let dd = DataDir::new(&d.path().join("data")).unwrap();
        dd.refuse_foreign_entries().unwrap();
        fs::create_dir(dd.root()).unwrap();
        dd.refuse_foreign_entries().unwrap();
        // What an unfinished init leaves, and a file system's own lost+found.
        for name in ["init.lock", "swtpm", "swtpm.lock", "profile.toml.bulwark-tmp", "lost+found"] {
            fs::write(dd.root().join(name), b"").unwrap();
        }
        fs::write(dd.root().join("runtime-measurements.tcglog.lock"), b"").unwrap();
        dd.refuse_foreign_entries().unwrap();
        for name in ["notes.txt", "a", "b", "c"] {
            fs::write(dd.root().join(name), b"theirs").unwrap();
        }
        let e = dd.refuse_foreign_entries().unwrap_err();
        assert!(matches!(e, DataDirError::NotEmpty { .. }), "{e}");
        let text = e.to_string();
        assert!(text.contains(r#"("a", "b", "c" and 1 more)"#), "{text}");
        assert!(text.contains("new or empty directory"), "{text}");
    }

    #[test]
    fn a_relative_data_dir_is_made_absolute() {
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(DataDir::new(Path::new("./dd")).unwrap().root(), cwd.join("dd"));
        assert_eq!(DataDir::new(Path::new("dd")).unwrap().root(), cwd.join("dd"));
        assert_eq!(DataDir::new(Path::new("/var/lib/bulwark")).unwrap().root(), Path::new("/var/lib/bulwark"));
    }

    #[test]
    fn a_file_given_as_the_data_dir_is_refused_and_left_alone() {
        let d = tempfile::tempdir().unwrap();
        let file = d.path().join("not-a-dir");
        fs::write(&file, b"keep me").unwrap();
        let dd = DataDir::new(&file).unwrap();
        assert!(matches!(dd.load_config(), Err(DataDirError::NotADirectory(_))));
        assert!(matches!(dd.initialise(&test_config(), b"profile"), Err(DataDirError::NotADirectory(_))));
        assert!(matches!(dd.make_private(), Err(DataDirError::NotADirectory(_))));
        assert_eq!(fs::read(&file).unwrap(), b"keep me");
    }

    #[test]
    fn the_data_dir_is_owner_only() {
        let d = tempfile::tempdir().unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        // Created by init: 0700 whatever the umask left.
        let fresh = DataDir::new(&d.path().join("fresh")).unwrap();
        let cfg = test_config();
        fresh.initialise(&cfg, b"profile").unwrap();
        assert_eq!(mode(fresh.root()), 0o700);
        // An existing dir others could read or enter is tightened, once; its owner's bits are kept.
        let shared = DataDir::new(&d.path().join("shared")).unwrap();
        fs::create_dir(shared.root()).unwrap();
        fs::set_permissions(shared.root(), fs::Permissions::from_mode(0o755)).unwrap();
        assert!(shared.make_private().unwrap());
        assert_eq!(mode(shared.root()), 0o700);
        assert!(!shared.make_private().unwrap());
        fs::set_permissions(shared.root(), fs::Permissions::from_mode(0o570)).unwrap();
        assert!(shared.make_private().unwrap());
        assert_eq!(mode(shared.root()), 0o500);
        fs::set_permissions(shared.root(), fs::Permissions::from_mode(0o700)).unwrap();
    }

    #[test]
    fn unknown_config_keys_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let dd = DataDir::new(d.path()).unwrap();
        std::fs::write(
            dd.config_path(),
            "layout_version = 1\nprofile = \"x\"\nappliance_id = \"y\"\nsurprise = true\n",
        )
        .unwrap();
        assert!(matches!(dd.load_config(), Err(DataDirError::BadConfig { .. })));
    }
}
