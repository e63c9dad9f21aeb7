//! The machine's TPM as the runtime uses it: which TPM (`--tpm`), the swtpm the appliance manages for its
//! data dir when there is no TPM device, and the runtime measurement stage that must pass before anything
//! is unsealed.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bulwark_tpm::swtpm::{Swtpm, SwtpmError};
use bulwark_tpm::{TctiSpec, Tpm, TpmError};

use crate::datadir::DataDir;

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
    _swtpm: Option<Swtpm>,
    _swtpm_lock: Option<File>,
}

impl std::fmt::Debug for Machine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Machine").field("tcti", &self.spec.to_string()).finish_non_exhaustive()
    }
}

fn lock_with_wait(path: &Path, wait: Duration) -> Result<File, MachineError> {
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|source| MachineError::Io { path: path.to_path_buf(), source })?;
    let start = Instant::now();
    loop {
        match f.try_lock() {
            Ok(()) => return Ok(f),
            Err(std::fs::TryLockError::WouldBlock) if start.elapsed() < wait => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(std::fs::TryLockError::WouldBlock) => return Err(MachineError::Busy(path.to_path_buf())),
            Err(std::fs::TryLockError::Error(source)) => {
                return Err(MachineError::Io { path: path.to_path_buf(), source });
            }
        }
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
                std::fs::create_dir_all(dd.root())
                    .map_err(|source| MachineError::Io { path: dd.root().to_path_buf(), source })?;
                let lock = lock_with_wait(&dd.root().join("swtpm.lock"), SWTPM_LOCK_WAIT)?;
                let sw = Swtpm::start(&dd.swtpm_dir()).map_err(MachineError::Swtpm)?;
                let spec = TctiSpec::Swtpm { host: "127.0.0.1".into(), port: sw.port() };
                (spec, Some(sw), Some(lock))
            }
        } else {
            let spec: TctiSpec = choice.parse().map_err(|_| MachineError::BadChoice(choice.to_string()))?;
            (spec, None, None)
        };
        let tpm = Tpm::open(&spec)?;
        if swtpm.is_some() {
            // A swtpm started with startup-clear comes up with its platform hierarchy open under an empty
            // authorization: anyone reaching its port could TPM2_Clear it or undefine the liveness
            // indices. Close it first, as a server's firmware does before the OS runs; it stays closed
            // until this swtpm stops.
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

    #[test]
    fn the_managed_swtpm_comes_up_with_its_platform_hierarchy_closed() {
        if Path::new(TPM_DEVICE).exists() {
            eprintln!("skipped: {TPM_DEVICE} exists, so `auto` uses it instead of a managed swtpm");
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let dd = DataDir::new(d.path()).unwrap();
        let m = Machine::open("auto", &dd).unwrap();
        assert!(m.is_managed_swtpm());
        assert!(!m.tpm.platform_hierarchy_enabled().unwrap());
        drop(m);
        // Every start is a power cycle that opens it again; every open closes it again.
        let m = Machine::open("auto", &dd).unwrap();
        assert!(!m.tpm.platform_hierarchy_enabled().unwrap());
    }
}
