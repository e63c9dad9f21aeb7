//! The machine's TPM as the runtime uses it: which TPM (`--tpm`), the swtpm the appliance manages for its
//! data dir when there is no TPM device, and the runtime measurement stage that must pass before anything
//! is unsealed.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bulwark_tpm::swtpm::{PrivateSwtpm, SwtpmError};
use bulwark_tpm::{TctiSpec, Tpm, TpmError};

use crate::datadir::{DataDir, lock_within};

/// The TPM device used in production.
pub const TPM_DEVICE: &str = "/dev/tpmrm0";
/// How long a second process waits for the managed swtpm.
pub const SWTPM_LOCK_WAIT: Duration = Duration::from_secs(60);

/// What can go wrong reaching the TPM.
#[derive(Debug, thiserror::Error)]
pub enum MachineError {
    /// `--tpm` is not `auto`, `device:PATH` or `swtpm:host=H,port=P`.
    #[error("invalid --tpm {0:?}: use auto, device:/dev/tpmrm0 or swtpm:host=127.0.0.1,port=N")]
    BadChoice(String),
    /// The managed swtpm could not start.
    #[error("cannot start the appliance's managed swtpm")]
    Swtpm(#[source] SwtpmError),
    /// Another bulwark process is using the managed swtpm of this data dir.
    #[error("another bulwark process is using the swtpm of {0}; try again when it finishes")]
    Busy(PathBuf),
    /// The TPM failed.
    #[error(transparent)]
    Tpm(#[from] TpmError),
    /// The data dir could not be created or made owner-only.
    #[error(transparent)]
    DataDir(Box<crate::datadir::DataDirError>),
    /// Filesystem error.
    #[error("I/O on {path}")]
    Io {
        /// Which file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// An open TPM, and the swtpm behind it when the appliance manages one.
pub struct Machine {
    /// The TPM.
    pub tpm: Tpm,
    spec: TctiSpec,
    // Field order matters: the TPM connection closes before the swtpm is killed.
    _swtpm: Option<PrivateSwtpm>,
    _swtpm_lock: Option<File>,
}

impl std::fmt::Debug for Machine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Machine").field("tcti", &self.spec.to_string()).finish_non_exhaustive()
    }
}

impl Machine {
    /// Opens the TPM named by `choice` for data dir `dd`. With `auto` and no TPM device, starts a swtpm on
    /// `D/swtpm` for the life of this value (one bulwark process at a time per data dir; others wait) and
    /// closes its platform hierarchy before anything else uses it.
    pub fn open(choice: &str, dd: &DataDir) -> Result<Self, MachineError> {
        let (spec, swtpm, lock) = if choice == "auto" {
            if Path::new(TPM_DEVICE).exists() {
                (TctiSpec::Device { path: PathBuf::from(TPM_DEVICE) }, None, None)
            } else {
                // The swtpm's state lives in the data dir, so init needs it before it writes anything else.
                dd.make_private().map_err(|e| MachineError::DataDir(Box::new(e)))?;
                let path = dd.swtpm_lock_path();
                let lock = lock_within(&path, SWTPM_LOCK_WAIT)
                    .map_err(|source| MachineError::Io { path: path.clone(), source })?
                    .ok_or(MachineError::Busy(path))?;
                let sw = PrivateSwtpm::start(&dd.swtpm_dir()).map_err(MachineError::Swtpm)?;
                (sw.spec(), Some(sw), Some(lock))
            }
        } else {
            let spec: TctiSpec = choice.parse().map_err(|_| MachineError::BadChoice(choice.to_string()))?;
            (spec, None, None)
        };
        let tpm = Tpm::open(&spec)?;
        if swtpm.is_some() {
            // A swtpm started with startup-clear comes up with its platform hierarchy open under an empty
            // authorization: whoever reaches it could TPM2_Clear it or undefine the liveness indices. Ours
            // listens only on a socket in its owner-only state dir, and this process holds its one
            // connection slot while it runs; close the hierarchy anyway, as a server's firmware does before
            // the OS runs, so not even a process of the same user gets it. It stays closed until this
            // swtpm stops.
            tpm.close_platform_hierarchy()?;
        }
        Ok(Machine { tpm, spec, _swtpm: swtpm, _swtpm_lock: lock })
    }

    /// The TCTI in use.
    pub fn tcti(&self) -> &TctiSpec {
        &self.spec
    }

    /// Whether the appliance manages the swtpm behind this TPM.
    pub fn is_managed_swtpm(&self) -> bool {
        self._swtpm.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh data dir for `--tpm auto`, or `None` (the test is skipped) where a TPM device exists, since
    /// `auto` then uses it instead of a managed swtpm.
    fn managed_data_dir() -> Option<(tempfile::TempDir, DataDir)> {
        if Path::new(TPM_DEVICE).exists() {
            eprintln!("skipped: {TPM_DEVICE} exists, so `auto` uses it instead of a managed swtpm");
            return None;
        }
        let d = tempfile::tempdir().unwrap();
        let dd = DataDir::new(d.path()).unwrap();
        Some((d, dd))
    }

    #[test]
    fn the_managed_swtpm_comes_up_with_its_platform_hierarchy_closed() {
        let Some((_d, dd)) = managed_data_dir() else { return };
        let m = Machine::open("auto", &dd).unwrap();
        assert!(m.is_managed_swtpm());
        assert!(!m.tpm.platform_hierarchy_enabled().unwrap());
        drop(m);
        // Every start is a power cycle that opens it again; every open closes it again.
        let m = Machine::open("auto", &dd).unwrap();
        assert!(!m.tpm.platform_hierarchy_enabled().unwrap());
    }

    #[test]
    fn the_managed_swtpm_is_reached_through_its_state_dir_only() {
        use std::os::unix::fs::PermissionsExt;
        let Some((_d, dd)) = managed_data_dir() else { return };
        let m = Machine::open("auto", &dd).unwrap();
        let dir = std::fs::canonicalize(dd.swtpm_dir()).unwrap();
        assert_eq!(m.tcti(), &TctiSpec::SwtpmSocket { dir: dir.clone() });
        assert_eq!(std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777, 0o700);
        let socket = dir.join(bulwark_tpm::SWTPM_SOCKET);
        assert_eq!(std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777, 0o600);
        // The swtpm owns no TCP socket at all: nothing on the network, loopback included, reaches it.
        let pid = m._swtpm.as_ref().map(|s| s.pid()).unwrap();
        let tcp_inodes: Vec<String> = ["/proc/self/net/tcp", "/proc/self/net/tcp6"]
            .iter()
            .filter_map(|p| std::fs::read_to_string(p).ok())
            .flat_map(|t| {
                t.lines().skip(1).filter_map(|l| l.split_whitespace().nth(9).map(str::to_string)).collect::<Vec<_>>()
            })
            .collect();
        let fds: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok()?.to_str().map(str::to_string))
            .collect();
        assert!(fds.iter().any(|f| f.starts_with("socket:[")), "the swtpm holds its socket: {fds:?}");
        for f in &fds {
            let Some(inode) = f.strip_prefix("socket:[").and_then(|s| s.strip_suffix(']')) else { continue };
            assert!(!tcp_inodes.iter().any(|i| i == inode), "swtpm holds TCP socket {inode}");
        }
        // The TPM answers through it, and the socket goes with the swtpm.
        assert!(m.tpm.clock_info().is_ok());
        drop(m);
        assert!(!socket.exists(), "the socket outlived its swtpm");
    }
}
