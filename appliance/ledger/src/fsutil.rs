//! Crash-safe file writes: write a temporary file in the target directory, fsync it, rename it over the
//! target, then fsync the directory (and every directory this call had to create, up to one that
//! existed), so that after a crash the target holds either the old or the new bytes, never a mix.
//!
//! A ledger also recycles inodes ([`Spares`]): files and directories it no longer needs (partial tiles
//! once their full tile exists, the replaced `checkpoint`) are moved into `spare/` and reused for the
//! next temporary files instead of being unlinked and allocated again. On ext4 without a journal (as on
//! these machines) every inode allocation scans past inodes freed in the last minute, so a steady
//! stream of unlink + create costs more CPU than the signatures; recycling keeps that stream at zero.

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, mpsc};

/// Suffix of temporary files; recovery removes leftovers with this suffix.
pub const TMP_SUFFIX: &str = ".bulwark-tmp";

/// Most spare files or directories kept; beyond this they are unlinked.
const MAX_SPARES: usize = 4096;

/// A ledger's pool of recyclable inodes in `<ledger>/spare/` (names `f<N>` for files, `d<N>` for empty
/// directories). Spares hold no meaning: recovery and export never read them.
#[derive(Debug)]
pub struct Spares {
    dir: PathBuf,
    lists: Mutex<SpareLists>,
}

#[derive(Debug, Default)]
struct SpareLists {
    files: Vec<PathBuf>,
    dirs: Vec<PathBuf>,
    next: u64,
}

impl Spares {
    /// Open (creating if needed) the spare pool under `ledger_dir`.
    pub fn open(ledger_dir: &Path) -> io::Result<Arc<Spares>> {
        let dir = ledger_dir.join("spare");
        if !dir.is_dir() {
            fs::create_dir(&dir)?;
        }
        let mut lists = SpareLists::default();
        for e in fs::read_dir(&dir)? {
            let e = e?;
            let name = e.file_name().to_string_lossy().into_owned();
            let n: Option<u64> = name.get(1..).and_then(|d| d.parse().ok());
            let Some(n) = n else { continue };
            lists.next = lists.next.max(n + 1);
            if name.starts_with('f') && e.file_type()?.is_file() {
                lists.files.push(e.path());
            } else if name.starts_with('d') && e.file_type()?.is_dir() && fs::read_dir(e.path())?.next().is_none() {
                lists.dirs.push(e.path());
            }
        }
        Ok(Arc::new(Spares { dir, lists: Mutex::new(lists) }))
    }

    fn lists(&self) -> std::sync::MutexGuard<'_, SpareLists> {
        self.lists.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A spare file to reuse. A spare that still shares its inode with another name (a crash between
    /// [`Spares::keep_replaced`]'s link and the rename that should have followed it leaves the live
    /// file's inode in the pool) is unlinked instead: writing into it would overwrite that live file.
    fn take_file(&self) -> Option<PathBuf> {
        use std::os::unix::fs::MetadataExt as _;
        loop {
            let spare = self.lists().files.pop()?;
            match fs::metadata(&spare) {
                Ok(m) if m.is_file() && m.nlink() == 1 => return Some(spare),
                Ok(_) => {
                    let _ = fs::remove_file(&spare);
                }
                Err(_) => {}
            }
        }
    }

    fn take_dir(&self) -> Option<PathBuf> {
        self.lists().dirs.pop()
    }

    fn slot(&self, prefix: char) -> PathBuf {
        let mut l = self.lists();
        let n = l.next;
        l.next += 1;
        self.dir.join(format!("{prefix}{n}"))
    }

    /// Move a file that is no longer needed into the pool (or unlink it when the pool is full).
    pub fn retire_file(&self, path: &Path) -> io::Result<()> {
        if self.lists().files.len() >= MAX_SPARES {
            return fs::remove_file(path);
        }
        let slot = self.slot('f');
        fs::rename(path, &slot)?;
        self.lists().files.push(slot);
        Ok(())
    }

    /// Move every file of a directory (one level, as in a tile's `.p/`) and then the emptied directory
    /// into the pool.
    pub fn retire_dir(&self, dir: &Path) -> io::Result<()> {
        for e in fs::read_dir(dir)? {
            let e = e?;
            if e.file_type()?.is_file() {
                self.retire_file(&e.path())?;
            }
        }
        if self.lists().dirs.len() >= MAX_SPARES {
            return fs::remove_dir(dir);
        }
        let slot = self.slot('d');
        fs::rename(dir, &slot)?;
        self.lists().dirs.push(slot);
        Ok(())
    }

    /// Keep the inode behind `path` (about to be replaced by a rename) as a spare, via a hard link.
    fn keep_replaced(&self, path: &Path) {
        if self.lists().files.len() >= MAX_SPARES {
            return;
        }
        let slot = self.slot('f');
        if fs::hard_link(path, &slot).is_ok() {
            self.lists().files.push(slot);
        }
    }
}

/// Create `dir` and any missing parents; return the parents whose entries changed (to fsync).
pub fn create_dirs(dir: &Path, dirty: &mut BTreeSet<PathBuf>) -> io::Result<()> {
    create_dirs_with(dir, dirty, None)
}

/// [`create_dirs`], reusing spare directories when a pool is given.
pub fn create_dirs_with(dir: &Path, dirty: &mut BTreeSet<PathBuf>, spares: Option<&Spares>) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent() {
        create_dirs_with(parent, dirty, spares)?;
        if let Some(spare) = spares.and_then(Spares::take_dir)
            && fs::rename(&spare, dir).is_ok()
        {
            dirty.insert(parent.to_path_buf());
            return Ok(());
        }
        match fs::create_dir(dir) {
            Ok(()) => {
                dirty.insert(parent.to_path_buf());
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Write `bytes` to a temporary file next to `path`, fsync it and rename it into place. The directory
/// is added to `dirty`; the caller fsyncs dirty directories with [`sync_dirs`] before relying on the
/// rename.
pub fn write_replace(path: &Path, bytes: &[u8], dirty: &mut BTreeSet<PathBuf>) -> io::Result<()> {
    let dir = path.parent().ok_or_else(|| io::Error::other("path has no parent directory"))?;
    create_dirs(dir, dirty)?;
    let name = path.file_name().ok_or_else(|| io::Error::other("path has no file name"))?;
    let mut tmp_name = name.to_os_string();
    tmp_name.push(TMP_SUFFIX);
    let tmp = dir.join(tmp_name);
    {
        let mut f = OpenOptions::new().write(true).create(true).truncate(true).open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    dirty.insert(dir.to_path_buf());
    Ok(())
}

/// fsync the directories (on the I/O pool) while `f` runs on this thread; both results are returned.
pub fn sync_dirs_during<R>(dirs: &BTreeSet<PathBuf>, f: impl FnOnce() -> R) -> (io::Result<()>, R) {
    let mut syncs = Syncs::new();
    for d in dirs {
        syncs.queue(SyncItem::Path(d.clone()));
    }
    let r = f();
    (syncs.wait(), r)
}

/// fsync each directory (concurrently).
pub fn sync_dirs(dirs: &BTreeSet<PathBuf>) -> io::Result<()> {
    sync_paths(dirs)
}

/// fsync each file or directory, opened by its path (concurrently).
pub fn sync_paths(paths: &BTreeSet<PathBuf>) -> io::Result<()> {
    sync_all_items(paths.iter().map(|p| SyncItem::Path(p.clone())).collect())
}

/// A file written under its temporary name, not yet synced or renamed.
#[derive(Debug)]
pub struct Staged {
    file: File,
    tmp: PathBuf,
    dst: PathBuf,
}

impl Staged {
    /// The final path.
    pub fn path(&self) -> &Path {
        &self.dst
    }
}

/// Write `bytes` to the temporary name of `path` (creating parent directories, recorded in `dirty`),
/// without syncing: the caller syncs a whole group with [`sync_staged`], then [`publish`]es it. With a
/// spare pool, the temporary file is a recycled inode.
pub fn stage(path: &Path, bytes: &[u8], dirty: &mut BTreeSet<PathBuf>, spares: Option<&Spares>) -> io::Result<Staged> {
    let dir = path.parent().ok_or_else(|| io::Error::other("path has no parent directory"))?;
    create_dirs_with(dir, dirty, spares)?;
    let name = path.file_name().ok_or_else(|| io::Error::other("path has no file name"))?;
    let mut tmp_name = name.to_os_string();
    tmp_name.push(TMP_SUFFIX);
    let tmp = dir.join(tmp_name);
    if let Some(spare) = spares.and_then(Spares::take_file) {
        let _ = fs::rename(&spare, &tmp);
    }
    let mut file = OpenOptions::new().write(true).create(true).truncate(true).open(&tmp)?;
    file.write_all(bytes)?;
    Ok(Staged { file, tmp, dst: path.to_path_buf() })
}

type IoJob = Box<dyn FnOnce() + Send>;

/// A few long-lived threads that run fsync calls for every ledger in the process, so that a group of
/// fsyncs is issued concurrently (one journal commit serves them all) without spawning threads per
/// batch. Jobs never wait on other jobs, so the pool cannot deadlock.
struct IoPool {
    tx: Mutex<mpsc::Sender<IoJob>>,
}

const IO_THREADS: usize = 6;

fn io_pool() -> Option<&'static IoPool> {
    static POOL: OnceLock<Option<IoPool>> = OnceLock::new();
    POOL.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<IoJob>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..IO_THREADS {
            let rx = Arc::clone(&rx);
            let spawned = std::thread::Builder::new().name(format!("ledger-fsync-{i}")).spawn(move || {
                loop {
                    let job = match rx.lock() {
                        Ok(guard) => guard.recv(),
                        Err(poisoned) => poisoned.into_inner().recv(),
                    };
                    match job {
                        Ok(job) => job(),
                        Err(_) => break,
                    }
                }
            });
            if spawned.is_err() {
                return None;
            }
        }
        Some(IoPool { tx: Mutex::new(tx) })
    })
    .as_ref()
}

enum SyncItem {
    File(File),
    /// A file or a directory, opened by its path to be synced.
    Path(PathBuf),
}

impl SyncItem {
    fn sync(&self) -> io::Result<()> {
        match self {
            SyncItem::File(f) => f.sync_all(),
            SyncItem::Path(p) => File::open(p)?.sync_all(),
        }
    }
}

/// fsyncs handed to the I/O pool (or run at once when the pool cannot take them); [`Syncs::wait`]
/// collects every result, the first error winning.
struct Syncs {
    tx: mpsc::Sender<io::Result<()>>,
    rx: mpsc::Receiver<io::Result<()>>,
    sent: usize,
}

impl Syncs {
    fn new() -> Self {
        let (tx, rx) = mpsc::channel();
        Self { tx, rx, sent: 0 }
    }

    fn queue(&mut self, item: SyncItem) {
        let tx = self.tx.clone();
        let job: IoJob = Box::new(move || {
            let _ = tx.send(item.sync());
        });
        self.sent += 1;
        let job = match io_pool().map(|pool| pool.tx.lock()) {
            Some(Ok(pool)) => match pool.send(job) {
                Ok(()) => return,
                Err(mpsc::SendError(job)) => job,
            },
            _ => job,
        };
        job();
    }

    fn wait(self) -> io::Result<()> {
        let Syncs { tx, rx, sent } = self;
        drop(tx);
        let mut result = Ok(());
        for _ in 0..sent {
            let r = rx.recv().unwrap_or_else(|_| Err(io::Error::other("fsync job lost")));
            if result.is_ok() {
                result = r;
            }
        }
        result
    }
}

/// fsync every item concurrently: all but one on the I/O pool, the last on the caller's thread.
fn sync_all_items(mut items: Vec<SyncItem>) -> io::Result<()> {
    let Some(last) = items.pop() else { return Ok(()) };
    let mut syncs = Syncs::new();
    for item in items {
        syncs.queue(item);
    }
    let mine = last.sync();
    let theirs = syncs.wait();
    mine.and(theirs)
}

/// fsync staged files and directories together.
pub fn sync_staged(files: &[Staged], dirs: &BTreeSet<PathBuf>) -> io::Result<()> {
    let mut items = Vec::with_capacity(files.len() + dirs.len());
    for s in files {
        items.push(SyncItem::File(s.file.try_clone()?));
    }
    items.extend(dirs.iter().map(|d| SyncItem::Path(d.clone())));
    sync_all_items(items)
}

/// Rename every staged file into place; their directories are added to `dirty`. A file being replaced
/// is kept in the spare pool, if one is given.
pub fn publish(files: Vec<Staged>, dirty: &mut BTreeSet<PathBuf>, spares: Option<&Spares>) -> io::Result<()> {
    for s in files {
        if let Some(spares) = spares
            && s.dst.exists()
        {
            spares.keep_replaced(&s.dst);
        }
        fs::rename(&s.tmp, &s.dst)?;
        if let Some(d) = s.dst.parent() {
            dirty.insert(d.to_path_buf());
        }
    }
    Ok(())
}

/// The whole crash-safe sequence for one file: temp, fsync, rename, fsync of the directory chain.
pub fn write_durable(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut dirty = BTreeSet::new();
    write_replace(path, bytes, &mut dirty)?;
    sync_dirs(&dirty)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_replace_and_create_parents() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("a/b/c.txt");
        write_durable(&p, b"one").unwrap();
        write_durable(&p, b"two").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        let names: Vec<_> = fs::read_dir(d.path().join("a/b")).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from("c.txt")]);
    }

    #[test]
    fn a_spare_that_aliases_a_live_file_is_never_written() {
        let d = tempfile::tempdir().unwrap();
        let live = d.path().join("checkpoint");
        fs::write(&live, b"live bytes").unwrap();
        // What a crash between keep_replaced's link and its rename leaves behind.
        fs::create_dir(d.path().join("spare")).unwrap();
        fs::hard_link(&live, d.path().join("spare/f0")).unwrap();
        fs::write(d.path().join("spare/f1"), b"old spare").unwrap();
        let spares = Spares::open(d.path()).unwrap();
        let mut dirty = BTreeSet::new();
        for name in ["a", "b", "c"] {
            let st = stage(&d.path().join(format!("t/{name}")), name.as_bytes(), &mut dirty, Some(&spares)).unwrap();
            publish(vec![st], &mut dirty, Some(&spares)).unwrap();
        }
        assert_eq!(fs::read(&live).unwrap(), b"live bytes");
        assert_eq!(fs::read(d.path().join("t/a")).unwrap(), b"a");
        assert_eq!(fs::read(d.path().join("t/c")).unwrap(), b"c");
        assert!(!d.path().join("spare/f0").exists(), "the aliasing spare was unlinked");
    }
}
