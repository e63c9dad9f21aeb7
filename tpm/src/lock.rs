//! The cross-process lock that serializes logical TPM operations.
//!
//! swtpm has no resource manager, three object slots and serves one connection at a time, so two
//! processes sharing one must never interleave: each logical operation (a seal, an unseal sequence, an
//! NV operation) holds an exclusive `flock(2)` on a lock file named after the endpoint for its whole
//! duration, and connects to the TPM only while holding it. `flock` locks belong to the open file
//! description, so two `Tpm` values in one process exclude each other too.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::tcti::TctiSpec;

/// Where the lock file for `spec` lives: `/run/lock/bulwark-tpm.lock` for a device (falling back to
/// the temp dir when `/run/lock` is absent), `<tmp>/bulwark-tpm-swtpm-<host>-<port>.lock` for a TCP
/// swtpm, `<state dir>/tpm.lock` for a swtpm on a Unix socket.
pub fn lock_path(spec: &TctiSpec) -> PathBuf {
    match spec {
        TctiSpec::Device { .. } => {
            let run = Path::new("/run/lock");
            if run.is_dir() { run.join("bulwark-tpm.lock") } else { std::env::temp_dir().join("bulwark-tpm.lock") }
        }
        TctiSpec::Swtpm { host, port } => {
            let safe: String =
                host.chars().map(|c| if c.is_ascii_alphanumeric() || c == '.' || c == '-' { c } else { '_' }).collect();
            std::env::temp_dir().join(format!("bulwark-tpm-swtpm-{safe}-{port}.lock"))
        }
        TctiSpec::SwtpmSocket { dir } => dir.join("tpm.lock"),
    }
}

/// Opens (creating, mode 0666 before umask, never following a symlink) the lock file.
pub(crate) fn open_lock_file(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o666)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

/// An exclusive `flock` held until drop (on a duplicate of the lock file's descriptor, which shares
/// the lock).
pub(crate) struct Held(File);

impl Held {
    /// Blocks until the lock on `*file` is ours. If the path no longer names the file we hold (a temp
    /// cleaner removed it and another process created a new one), reopens `path` and locks that, so
    /// every process always locks the file the path names now.
    pub(crate) fn acquire(file: &mut File, path: &Path) -> io::Result<Self> {
        use std::os::unix::fs::MetadataExt;
        for _ in 0..8 {
            let dup = file.try_clone()?;
            dup.lock()?;
            let held = Held(dup);
            let ours = held.0.metadata()?;
            match std::fs::symlink_metadata(path) {
                Ok(now) if now.dev() == ours.dev() && now.ino() == ours.ino() => return Ok(held),
                Ok(_) | Err(_) => {
                    drop(held);
                    *file = open_lock_file(path)?;
                }
            }
        }
        Err(io::Error::other("lock file keeps being replaced"))
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        // Unlock failure leaves the lock to be released when the descriptor closes, right after.
        let _ = self.0.unlock();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_open_descriptions_exclude_each_other() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("l.lock");
        let mut a = open_lock_file(&p).unwrap();
        let b = open_lock_file(&p).unwrap();
        let held = Held::acquire(&mut a, &p).unwrap();
        assert!(matches!(b.try_lock(), Err(std::fs::TryLockError::WouldBlock)));
        drop(held);
        assert!(b.try_lock().is_ok());
        b.unlock().unwrap();
    }

    #[test]
    fn follows_a_replaced_lock_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("l.lock");
        let mut a = open_lock_file(&p).unwrap();
        std::fs::remove_file(&p).unwrap();
        let b = open_lock_file(&p).unwrap(); // another process recreates it
        let held = Held::acquire(&mut a, &p).unwrap();
        assert!(matches!(b.try_lock(), Err(std::fs::TryLockError::WouldBlock)), "must lock the new file");
        drop(held);
    }

    #[test]
    fn path_is_named_after_endpoint() {
        let p = lock_path(&TctiSpec::swtpm_local(2321));
        assert!(p.ends_with("bulwark-tpm-swtpm-127.0.0.1-2321.lock"), "{}", p.display());
    }
}
