//! The runtime measurement stage over the real TPM: before anything is unsealed, the executable, the config
//! and the active hardware profile are measured into the runtime PCR (first run in a TPM boot cycle) or
//! verified against it (later runs). See `bulwark_boot::runtime` for the rules and the crash ordering.

use bulwark_boot::alg::HashAlg;
use bulwark_boot::pcr::PcrIndex;
use bulwark_boot::profile::HwProfile;
use bulwark_boot::runtime::{self, Measurements, PcrDevice, RuntimeError};
use bulwark_tpm::{Tpm, TpmError};

use crate::datadir::{ApplianceConfig, DataDir};
use crate::machine::Machine;

/// What is measured in place of the executable in development mode (see
/// [`ApplianceConfig::danger_dev_unbound_executable`]).
pub const DEV_UNBOUND_EXECUTABLE_LABEL: &[u8] = b"bulwark: DEVELOPMENT MODE, executable not measured";

/// The measurement stage failed; nothing may be unsealed.
#[derive(Debug, thiserror::Error)]
pub enum MeasureError {
    /// The PCR or log says something other than what runs now: the measured state changed.
    #[error(
        "measured state changed: what runs now is not what this TPM boot cycle measured into the runtime PCR; \
         after a legitimate update, reboot (or restart the TPM) so the new runtime is measured, then reseal \
         with `bulwark appliance reseal` and `bulwark tenant reseal`"
    )]
    StateChanged(#[source] RuntimeError<TpmError>),
    /// The stage could not run (TPM or file failure).
    #[error("runtime measurement failed")]
    Failed(#[source] RuntimeError<TpmError>),
    /// The executable to measure could not be located.
    #[error("cannot locate this executable to measure it")]
    Executable(#[source] std::io::Error),
}

/// The outcome of this process' measurement stage.
#[derive(Debug, Clone)]
pub struct Measured {
    /// The runtime PCR.
    pub pcr: u8,
    /// Its value in the profile's seal bank.
    pub value: Vec<u8>,
    /// Whether this run extended the PCR (first run in the boot cycle) or verified it.
    pub extended: bool,
}

/// Adapts the TPM to the stage's device trait.
struct TpmPcrs<'a>(&'a Tpm);

fn bank(alg: HashAlg) -> bulwark_tpm::PcrBank {
    match alg {
        HashAlg::Sha1 => bulwark_tpm::PcrBank::Sha1,
        HashAlg::Sha256 => bulwark_tpm::PcrBank::Sha256,
        HashAlg::Sha384 => bulwark_tpm::PcrBank::Sha384,
    }
}

/// The TPM layer's index for a boot-layer PCR index (both check the 0..24 range).
pub fn tpm_pcr(pcr: PcrIndex) -> Result<bulwark_tpm::PcrIndex, TpmError> {
    Ok(bulwark_tpm::PcrIndex::new(pcr.get())?)
}

/// The TPM bank for a boot-layer hash algorithm.
pub fn tpm_bank(alg: HashAlg) -> bulwark_tpm::PcrBank {
    bank(alg)
}

impl PcrDevice for TpmPcrs<'_> {
    type Error = TpmError;

    fn reset_count(&mut self) -> Result<u32, TpmError> {
        self.0.reset_count()
    }

    fn pcr_read(&mut self, alg: HashAlg, pcr: PcrIndex) -> Result<Vec<u8>, TpmError> {
        let idx = tpm_pcr(pcr)?;
        let values = self.0.pcr_read(bank(alg), &[idx])?;
        values.get(idx).map(<[u8]>::to_vec).ok_or(TpmError::Unexpected("PCR read returned no value"))
    }

    fn pcr_extend(&mut self, pcr: PcrIndex, digests: &[(HashAlg, Vec<u8>)]) -> Result<(), TpmError> {
        let d: Vec<_> = digests.iter().map(|(a, v)| (bank(*a), v.as_slice())).collect();
        self.0.pcr_extend(tpm_pcr(pcr)?, &d)
    }
}

/// Runs the stage for this process.
pub fn run_stage(
    machine: &mut Machine,
    dd: &DataDir,
    profile: &HwProfile,
    config: &ApplianceConfig,
    config_bytes: &[u8],
) -> Result<Measured, MeasureError> {
    let banks = profile.runtime_log_banks();
    let measurements = if config.danger_dev_unbound_executable {
        Measurements::from_bytes(banks, DEV_UNBOUND_EXECUTABLE_LABEL, config_bytes, profile.bytes())
    } else {
        // The running image itself: `/proc/self/exe` opens the executing file even if its path has been
        // replaced since the process started (the resolved path might name another file by now).
        let proc_exe = std::path::Path::new("/proc/self/exe");
        let exe = if proc_exe.exists() {
            proc_exe.to_path_buf()
        } else {
            std::env::current_exe().map_err(MeasureError::Executable)?
        };
        Measurements::measure::<TpmError>(profile, &exe, config_bytes).map_err(MeasureError::Failed)?
    };
    let mut dev = TpmPcrs(&machine.tpm);
    let report = runtime::measure_or_verify(&mut dev, &runtime::log_path(dd.root()), profile, &measurements).map_err(
        |e| match e {
            RuntimeError::NotReplaying { .. } | RuntimeError::RuntimeChanged { .. } => MeasureError::StateChanged(e),
            other => MeasureError::Failed(other),
        },
    )?;
    let value = report.values.get(&profile.seal_bank()).cloned().unwrap_or_default();
    Ok(Measured {
        pcr: u8::try_from(report.pcr.get()).unwrap_or(u8::MAX),
        value,
        extended: !matches!(report.outcome, runtime::Outcome::Verified),
    })
}
