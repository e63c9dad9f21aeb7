//! The runtime measurement stage: before anything is unsealed, the appliance measures its own
//! executable, its config and the active hardware profile into one runtime PCR, and keeps a runtime
//! event log that replays to it.
//!
//! # The runtime PCR: 15
//!
//! The profile names it ([`crate::profile::HwProfile::runtime_pcr`]); both shipped profiles use 15, and
//! validation accepts nothing else today ([`crate::profile::runtime_pcr_rejection`]). The reasoning:
//!
//! - it must not be resettable from locality 0, or any process could reset it and replay a good
//!   runtime's measurements: that rules out 16 (debug) and 23 (application);
//! - it must not be extended by anything else before us, or its value would depend on more than the
//!   runtime: 0-7 are platform firmware, 8-9 boot loaders and the kernel's initrd measurement, 10 IMA,
//!   11-13 systemd-stub (UKI, command line, system extensions), 14 shim's MOK state;
//! - 17-22 belong to the dynamic root of trust (start at all ones, reset by a D-RTM launch).
//!
//! That leaves 15. systemd can also measure into 15 (`systemd-pcrmachine`, `systemd-pcrfs`,
//! cryptsetup's `tpm2-measure-pcr`); the appliance image must not enable those. If anything does, the
//! stage notices (PCR 15 is not at its reset value and is not a prefix of our own measurements) and
//! refuses, rather than logging a value it cannot explain.
//!
//! # What is measured
//!
//! Three events, always in this order, each extended into the runtime PCR in every bank the profile's
//! `runtime_log_banks` names, with digest = H(bytes) in that bank:
//!
//! 1. the executable file's bytes (the appliance passes `/proc/self/exe`), event data
//!    `bulwark-runtime:executable`;
//! 2. the config file's bytes, as read and parsed by the appliance, event data `bulwark-runtime:config`;
//! 3. the hardware-profile file's bytes ([`crate::profile::HwProfile::bytes`]), event data
//!    `bulwark-runtime:hw-profile`.
//!
//! The event type is `EV_IPL` (PFP: code or data measured by a loader; systemd uses it the same way).
//! The event data is only the label, not a path, so the PCR value and the log are predictable from
//! the three byte strings alone ([`Measurements::expected_pcr`]).
//!
//! # The runtime event log
//!
//! A crypto-agile TCG log ([`crate::eventlog`]) in the data dir, [`LOG_FILE_NAME`], recording the
//! profile's banks:
//!
//! 1. the Spec ID header, whose `vendorInfo` (24 bytes) is the boot-cycle marker:
//!    `"BulwarkRtCycle2\0"` (16 bytes) ‖ u32 LE `resetCount` ‖ u32 LE runtime PCR index. `resetCount`
//!    is the TPM's reset count (`TPMS_CLOCK_INFO.resetCount`, TPM 2.0 Part 2), which increments on every
//!    `TPM2_Startup(CLEAR)` (a reboot) and not on resume, so it names the boot cycle whose PCR values
//!    the log explains;
//! 2. the three measurement events above, and nothing else.
//!
//! The marker is in the header because every log reader treats the Spec ID event as a header and
//! extends nothing for it. The PC Client Platform Firmware Profile says no `EV_NO_ACTION` event is
//! extended, but readers in use get the later ones wrong: `tpm2_eventlog` of tpm2-tools 5.4 (Debian 12)
//! extends them (tpm2-software/tpm2-tools issue 3224, fixed upstream in 2023), and so does fwupd's
//! replay (fwupd issue 9940). An auditor replaying the log with such a tool would see a runtime PCR
//! the TPM does not have. Version 1 of this layout carried the marker as an `EV_NO_ACTION` event in
//! the runtime PCR; such a log reads as unreadable and, within its boot cycle, is rebuilt without
//! any extend (see the crash-safety rules below: the PCR already holds all three measurements).
//!
//! # Once per boot cycle
//!
//! [`measure_or_verify`] holds an exclusive lock on `<log>.lock` for its whole run, reads the TPM's
//! reset count and the runtime PCR, and then:
//!
//! - **log of this cycle present**: verifies. The log must replay to the PCR in every bank (else
//!   [`RuntimeError::NotReplaying`]) and its three digests must equal what it measures now (else
//!   [`RuntimeError::RuntimeChanged`]; a changed runtime needs a reboot to be measured). Nothing is
//!   extended.
//! - **log of another cycle, no log, or an unreadable log**: the old file is renamed to `<log>.prev`,
//!   then it measures: see below.
//!
//! # Crash safety: extend first, then write the log
//!
//! Measuring extends the PCR, reads it back, and only then writes the new log, atomically (temp file,
//! fsync, rename, fsync of the directory). So at every instant the log on disk claims no measurement
//! the PCR lacks: it is the old cycle's log (or none), or the complete new one. A crash between extend
//! and write leaves the PCR ahead of the log; the next run recovers from the PCR alone, never trusting
//! the log for it: when the PCR equals the replay of the first k of the measurements it takes now
//! (k = 0 is a fresh PCR, k = 3 a finished measurement whose log was lost), it extends the remaining
//! 3 - k and writes the log ([`Outcome::Recovered`]). Because a PCR value is a hash chain, such a match
//! proves those exact digests were extended in that order, so the rebuilt log is truthful. Any other PCR
//! value is refused. Logging first instead would leave, after a crash, a log claiming an extend that
//! never happened: exactly what must not exist.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use crate::alg::{HashAlg, Hasher};
use crate::eventlog::{self, EventType, LogFormat, LogWriter};
use crate::pcr::{self, PcrIndex};
use crate::profile::HwProfile;

/// The runtime event log's file name in the data dir.
pub const LOG_FILE_NAME: &str = "runtime-measurements.tcglog";
/// The signature that starts the boot-cycle marker (the runtime log's Spec ID `vendorInfo`).
pub const CYCLE_SIGNATURE: &[u8; 16] = b"BulwarkRtCycle2\0";
/// The signature of layout version 1, whose marker was an `EV_NO_ACTION` event (see the module docs).
const CYCLE_SIGNATURE_V1: &[u8; 16] = b"BulwarkRtCycle1\0";
/// The boot-cycle marker's size (the Spec ID event's `vendorInfo`): signature, reset count, PCR index.
pub const CYCLE_MARKER_SIZE: usize = 24;
/// The largest runtime log read back; a real one is well under a kilobyte.
const MAX_RUNTIME_LOG: u64 = 64 << 10;

/// The path of the runtime event log in `data_dir`.
pub fn log_path(data_dir: &Path) -> PathBuf {
    data_dir.join(LOG_FILE_NAME)
}

/// A PCR-capable TPM as the runtime stage needs it. The appliance implements this over its real TPM
/// (`bulwark-tpm`); tests implement it over a real swtpm.
pub trait PcrDevice {
    /// The device's error type.
    type Error: std::error::Error + Send + Sync + 'static;

    /// The TPM's reset count (`TPM2_ReadClock`, `clockInfo.resetCount`): it identifies the boot cycle.
    fn reset_count(&mut self) -> Result<u32, Self::Error>;

    /// The current value of `pcr` in bank `alg`.
    fn pcr_read(&mut self, alg: HashAlg, pcr: PcrIndex) -> Result<Vec<u8>, Self::Error>;

    /// One `TPM2_PCR_Extend` of `pcr` with one digest per listed bank (banks not listed are untouched).
    fn pcr_extend(&mut self, pcr: PcrIndex, digests: &[(HashAlg, Vec<u8>)]) -> Result<(), Self::Error>;
}

/// The three things measured, in measurement order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Component {
    /// The appliance executable.
    Executable,
    /// The appliance config.
    Config,
    /// The active hardware profile.
    HwProfile,
}

impl Component {
    /// All components, in measurement order.
    pub const ALL: [Component; 3] = [Component::Executable, Component::Config, Component::HwProfile];

    /// The event data recorded for it.
    pub const fn label(self) -> &'static [u8] {
        match self {
            Component::Executable => b"bulwark-runtime:executable",
            Component::Config => b"bulwark-runtime:config",
            Component::HwProfile => b"bulwark-runtime:hw-profile",
        }
    }

    /// A name for messages.
    pub const fn name(self) -> &'static str {
        match self {
            Component::Executable => "executable",
            Component::Config => "config",
            Component::HwProfile => "hardware profile",
        }
    }
}

/// What can go wrong measuring or verifying the runtime. `E` is the [`PcrDevice`]'s error.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError<E: std::error::Error + 'static> {
    /// A file to measure could not be read.
    #[error("cannot read the {what} at {path} to measure it")]
    ReadInput {
        /// Which component.
        what: &'static str,
        /// Its path.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A TPM operation failed.
    #[error("TPM {op} failed during runtime measurement")]
    Device {
        /// Which operation.
        op: &'static str,
        /// The device's error.
        #[source]
        source: E,
    },
    /// The TPM returned a PCR value of the wrong size (a bank mix-up in the device implementation).
    #[error("TPM returned a {got}-byte {alg} value for PCR {pcr}, expected {expected}")]
    PcrValueSize {
        /// The bank.
        alg: HashAlg,
        /// The PCR.
        pcr: PcrIndex,
        /// The size returned.
        got: usize,
        /// The bank's digest size.
        expected: usize,
    },
    /// The runtime event log (or lock, or temp file) could not be read or written.
    #[error("runtime event log {path}: cannot {op}")]
    LogIo {
        /// The file.
        path: PathBuf,
        /// What was attempted.
        op: &'static str,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The PCR holds something the log (or, when measuring, our own measurements) cannot explain.
    #[error("runtime event log does not replay to PCR {pcr} ({bank} bank): {detail}")]
    NotReplaying {
        /// The runtime PCR.
        pcr: PcrIndex,
        /// The first bank that disagrees.
        bank: HashAlg,
        /// What that means.
        detail: &'static str,
    },
    /// This boot cycle's log is valid, but what runs now is not what was measured.
    #[error(
        "runtime changed since this boot cycle's measurement: the {what} differs (reboot to measure the new runtime)"
    )]
    RuntimeChanged {
        /// Which component.
        what: &'static str,
    },
    /// The measurements were taken for other banks than the profile names (a caller bug).
    #[error("measurements were taken for banks other than the profile's runtime_log_banks")]
    BanksMismatch,
    /// The log could not be encoded (a caller bug: bad banks).
    #[error("cannot encode the runtime event log")]
    Encode(#[source] eventlog::EventLogError),
}

/// The digests of the three components in each bank.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Measurements {
    banks: Vec<HashAlg>,
    /// Per component, in [`Component::ALL`] order: one digest per bank, in `banks` order.
    digests: [Vec<(HashAlg, Vec<u8>)>; 3],
}

impl Measurements {
    /// Measures for `profile`'s runtime banks: the executable file at `executable` (read in chunks),
    /// `config` and the profile's own bytes.
    pub fn measure<E: std::error::Error>(
        profile: &HwProfile,
        executable: &Path,
        config: &[u8],
    ) -> Result<Self, RuntimeError<E>> {
        let banks = profile.runtime_log_banks();
        let exe = digest_file(banks, executable).map_err(|source| RuntimeError::ReadInput {
            what: Component::Executable.name(),
            path: executable.to_path_buf(),
            source,
        })?;
        let per = |bytes: &[u8]| banks.iter().map(|a| (*a, a.digest(bytes))).collect::<Vec<_>>();
        Ok(Measurements { banks: banks.to_vec(), digests: [exe, per(config), per(profile.bytes())] })
    }

    /// Measures byte strings directly (for predicting the runtime PCR of an image).
    pub fn from_bytes(banks: &[HashAlg], executable: &[u8], config: &[u8], profile: &[u8]) -> Self {
        let per = |bytes: &[u8]| banks.iter().map(|a| (*a, a.digest(bytes))).collect::<Vec<_>>();
        Measurements { banks: banks.to_vec(), digests: [per(executable), per(config), per(profile)] }
    }

    /// The banks measured.
    pub fn banks(&self) -> &[HashAlg] {
        &self.banks
    }

    /// The digests of `c`, one per bank.
    pub fn digests(&self, c: Component) -> &[(HashAlg, Vec<u8>)] {
        let i = match c {
            Component::Executable => 0,
            Component::Config => 1,
            Component::HwProfile => 2,
        };
        &self.digests[i]
    }

    /// The runtime PCR's value in bank `alg` after the first `k` components are extended into a PCR at
    /// its reset value; `None` when `alg` was not measured.
    pub fn prefix_pcr(&self, alg: HashAlg, k: usize) -> Option<Vec<u8>> {
        // The reset value of every PCR a profile accepts as the runtime PCR (8-15) is all zeros.
        let mut v = alg.zero_digest();
        for c in Component::ALL.iter().take(k) {
            let d = self.digests(*c).iter().find(|(a, _)| *a == alg)?;
            v = pcr::extend(alg, &v, &d.1).ok()?;
        }
        Some(v)
    }

    /// The runtime PCR's expected value in bank `alg` after this stage (all three extended).
    pub fn expected_pcr(&self, alg: HashAlg) -> Option<Vec<u8>> {
        self.prefix_pcr(alg, Component::ALL.len())
    }
}

/// Digests the file at `path` in every bank: one thread per bank over the same open file (positional
/// reads), so every bank hashes the same file even if the path is replaced meanwhile, and on more than
/// one core the file costs its slowest hash rather than the sum of them.
fn digest_file(banks: &[HashAlg], path: &Path) -> io::Result<Vec<(HashAlg, Vec<u8>)>> {
    let file = File::open(path)?;
    let file = &file;
    std::thread::scope(|s| {
        let workers: Vec<_> = banks.iter().map(|alg| s.spawn(move || digest_open_file(*alg, file))).collect();
        workers
            .into_iter()
            .map(|w| w.join().unwrap_or_else(|_| Err(io::Error::other("a hashing thread panicked"))))
            .collect()
    })
}

fn digest_open_file(alg: HashAlg, file: &File) -> io::Result<(HashAlg, Vec<u8>)> {
    use std::os::unix::fs::FileExt;
    let mut hasher = Hasher::new(alg);
    let mut buf = vec![0u8; 256 << 10];
    let mut offset = 0u64;
    loop {
        let n = match file.read_at(&mut buf, offset) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(buf.get(..n).unwrap_or_default());
        offset += n as u64;
    }
    Ok((alg, hasher.finalize()))
}

/// What the stage did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// First run in this boot cycle: extended the PCR and wrote a fresh log.
    Measured,
    /// Same boot cycle: the log replays to the PCR and matches what runs now. Nothing extended.
    Verified,
    /// Completed or rebuilt after an interruption or an unreadable log (see the module docs).
    Recovered {
        /// What was recovered from.
        reason: String,
    },
}

/// The result of a successful stage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageReport {
    /// What happened.
    pub outcome: Outcome,
    /// The TPM reset count (boot cycle) the log is for.
    pub reset_count: u32,
    /// The runtime PCR.
    pub pcr: PcrIndex,
    /// The runtime PCR's value in each logged bank.
    pub values: BTreeMap<HashAlg, Vec<u8>>,
    /// The runtime event log.
    pub log_path: PathBuf,
}

/// Measures the executable at `executable`, `config` and `profile` for `profile`, then runs
/// [`measure_or_verify`] with the log in `data_dir`. This is the appliance's entry point.
pub fn run<D: PcrDevice>(
    device: &mut D,
    data_dir: &Path,
    executable: &Path,
    config: &[u8],
    profile: &HwProfile,
) -> Result<StageReport, RuntimeError<D::Error>> {
    let measured = Measurements::measure(profile, executable, config)?;
    measure_or_verify(device, &log_path(data_dir), profile, &measured)
}

/// Measures into (first run in a boot cycle) or verifies against (later runs) the runtime PCR, keeping
/// the runtime event log at `log_path`. See the module docs for the rules and the crash ordering.
pub fn measure_or_verify<D: PcrDevice>(
    device: &mut D,
    log_path: &Path,
    profile: &HwProfile,
    measured: &Measurements,
) -> Result<StageReport, RuntimeError<D::Error>> {
    let banks = profile.runtime_log_banks();
    if measured.banks() != banks {
        return Err(RuntimeError::BanksMismatch);
    }
    let pcr = profile.runtime_pcr();
    let _lock = lock(log_path)?;

    let reset_count = device.reset_count().map_err(|source| RuntimeError::Device { op: "ReadClock", source })?;
    let current = read_pcrs(device, banks, pcr)?;

    let mut note = None;
    if let Some(bytes) = read_log(log_path)? {
        match RuntimeLog::parse(&bytes) {
            Ok(log) if log.reset_count == reset_count => {
                log.verify(pcr, banks, &current, measured)?;
                return Ok(StageReport {
                    outcome: Outcome::Verified,
                    reset_count,
                    pcr,
                    values: current,
                    log_path: log_path.to_path_buf(),
                });
            }
            Ok(_) => {}
            Err(reason) => {
                note = Some(format!("the previous runtime event log was unreadable ({reason}); kept as .prev"))
            }
        }
        rotate(log_path)?;
    }

    // Find how many of our measurements the PCR already holds (0 on a fresh boot cycle).
    let done = (0..=Component::ALL.len())
        .find(|k| banks.iter().all(|a| measured.prefix_pcr(*a, *k).as_ref() == current.get(a)));
    let Some(done) = done else {
        let bank = banks
            .iter()
            .copied()
            .find(|a| measured.prefix_pcr(*a, 0).as_ref() != current.get(a))
            .unwrap_or(profile.seal_bank());
        return Err(RuntimeError::NotReplaying {
            pcr,
            bank,
            detail: "the PCR already holds measurements this runtime did not make in this boot cycle \
                     (something else extends it, or a different runtime measured itself first)",
        });
    };
    for c in Component::ALL.iter().skip(done) {
        device
            .pcr_extend(pcr, measured.digests(*c))
            .map_err(|source| RuntimeError::Device { op: "PCR_Extend", source })?;
    }
    let after = read_pcrs(device, banks, pcr)?;
    for a in banks {
        if measured.expected_pcr(*a).as_ref() != after.get(a) {
            return Err(RuntimeError::NotReplaying {
                pcr,
                bank: *a,
                detail: "the PCR changed while this runtime was measuring itself (a concurrent extend)",
            });
        }
    }
    write_log(log_path, reset_count, pcr, measured)?;
    let outcome = match (done, note) {
        (0, None) => Outcome::Measured,
        (0, Some(reason)) => Outcome::Recovered { reason },
        (k, note) => Outcome::Recovered {
            reason: format!(
                "the PCR already held {k} of 3 measurements (a run in this boot cycle was interrupted or \
                 its log lost); extended the rest and rebuilt the log{}",
                note.map(|n| format!("; {n}")).unwrap_or_default()
            ),
        },
    };
    Ok(StageReport { outcome, reset_count, pcr, values: after, log_path: log_path.to_path_buf() })
}

fn read_pcrs<D: PcrDevice>(
    device: &mut D,
    banks: &[HashAlg],
    pcr: PcrIndex,
) -> Result<BTreeMap<HashAlg, Vec<u8>>, RuntimeError<D::Error>> {
    let mut out = BTreeMap::new();
    for a in banks {
        let v = device.pcr_read(*a, pcr).map_err(|source| RuntimeError::Device { op: "PCR_Read", source })?;
        if v.len() != a.digest_size() {
            return Err(RuntimeError::PcrValueSize { alg: *a, pcr, got: v.len(), expected: a.digest_size() });
        }
        out.insert(*a, v);
    }
    Ok(out)
}

/// The runtime event log, as this module writes it.
#[derive(Debug)]
struct RuntimeLog {
    reset_count: u32,
    pcr: PcrIndex,
    banks: Vec<HashAlg>,
    /// Per component in order: bank → digest.
    events: Vec<BTreeMap<HashAlg, Vec<u8>>>,
    /// The replayed runtime PCR per bank.
    values: BTreeMap<HashAlg, Vec<u8>>,
}

impl RuntimeLog {
    /// Parses a runtime log and checks it has exactly the layout this module writes.
    fn parse(bytes: &[u8]) -> Result<Self, String> {
        let log = eventlog::parse(bytes).map_err(|e| e.to_string())?;
        if log.format() != LogFormat::CryptoAgile {
            return Err("not a crypto-agile log".into());
        }
        if !log.unsupported_algorithms().is_empty() {
            return Err("declares a bank this build cannot replay".into());
        }
        let vendor_info = log.spec_id().map_or(&[][..], |s| s.vendor_info.as_slice());
        let Some(cycle) = vendor_info.strip_prefix(CYCLE_SIGNATURE.as_slice()) else {
            let v1 = log.events().first().is_some_and(|e| e.data.starts_with(CYCLE_SIGNATURE_V1));
            return Err(if v1 {
                "it has layout version 1 (the boot-cycle marker as an EV_NO_ACTION event)".into()
            } else {
                "no boot-cycle marker in the Spec ID event's vendorInfo".into()
            });
        };
        let word = |at: usize| cycle.get(at..at + 4).and_then(|b| <[u8; 4]>::try_from(b).ok()).map(u32::from_le_bytes);
        let (Some(reset_count), Some(pcr_field), CYCLE_MARKER_SIZE) = (word(0), word(4), vendor_info.len()) else {
            return Err(format!("boot-cycle marker is {} bytes, expected {CYCLE_MARKER_SIZE}", vendor_info.len()));
        };
        let pcr = PcrIndex::new(pcr_field).map_err(|_| "boot-cycle marker names no valid PCR")?;
        let events = log.events();
        if events.len() != Component::ALL.len() {
            return Err(format!("{} measurement events, expected 3", events.len()));
        }
        let mut digests = Vec::with_capacity(3);
        for (ev, c) in events.iter().zip(Component::ALL) {
            if ev.pcr != pcr || ev.event_type != EventType::IPL || ev.data != c.label() {
                return Err(format!("event at byte {} is not the {} measurement", ev.offset, c.name()));
            }
            digests.push(ev.digests.iter().filter_map(|d| Some((d.alg()?, d.bytes.clone()))).collect());
        }
        let replayed = log.replay().map_err(|e| e.to_string())?;
        let values = replayed.into_iter().filter_map(|(a, pcrs)| Some((a, pcrs.get(&pcr.get())?.clone()))).collect();
        Ok(RuntimeLog { reset_count, pcr, banks: log.banks(), events: digests, values })
    }

    fn verify<E: std::error::Error>(
        &self,
        pcr: PcrIndex,
        banks: &[HashAlg],
        current: &BTreeMap<HashAlg, Vec<u8>>,
        measured: &Measurements,
    ) -> Result<(), RuntimeError<E>> {
        let mut logged = self.banks.clone();
        logged.sort_unstable();
        let mut wanted = banks.to_vec();
        wanted.sort_unstable();
        if self.pcr != pcr || logged != wanted {
            return Err(RuntimeError::RuntimeChanged { what: "hardware profile (runtime PCR or banks)" });
        }
        for a in banks {
            if self.values.get(a) != current.get(a) {
                return Err(RuntimeError::NotReplaying {
                    pcr,
                    bank: *a,
                    detail: "the PCR was extended by something other than this log in this boot cycle",
                });
            }
        }
        for (logged, c) in self.events.iter().zip(Component::ALL) {
            let now: BTreeMap<HashAlg, Vec<u8>> = measured.digests(c).iter().cloned().collect();
            if *logged != now {
                return Err(RuntimeError::RuntimeChanged { what: c.name() });
            }
        }
        Ok(())
    }
}

/// Encodes the runtime log for one boot cycle.
pub fn encode_log(
    reset_count: u32,
    pcr: PcrIndex,
    measured: &Measurements,
) -> Result<Vec<u8>, eventlog::EventLogError> {
    let mut w = LogWriter::crypto_agile_with(measured.banks(), &cycle_marker(CYCLE_SIGNATURE, reset_count, pcr))?;
    for c in Component::ALL {
        w.event(pcr, EventType::IPL, measured.digests(c), c.label())?;
    }
    Ok(w.into_bytes())
}

/// The boot-cycle marker: `signature` ‖ u32 LE `reset_count` ‖ u32 LE PCR index.
fn cycle_marker(signature: &[u8; 16], reset_count: u32, pcr: PcrIndex) -> Vec<u8> {
    let mut marker = Vec::with_capacity(CYCLE_MARKER_SIZE);
    marker.extend_from_slice(signature);
    marker.extend_from_slice(&reset_count.to_le_bytes());
    marker.extend_from_slice(&pcr.get().to_le_bytes());
    marker
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

fn log_err<E: std::error::Error>(path: &Path, op: &'static str) -> impl FnOnce(io::Error) -> RuntimeError<E> {
    let path = path.to_path_buf();
    move |source| RuntimeError::LogIo { path, op, source }
}

fn lock<E: std::error::Error>(log_path: &Path) -> Result<File, RuntimeError<E>> {
    let path = with_suffix(log_path, ".lock");
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(log_err(&path, "open the lock file"))?;
    f.lock().map_err(log_err(&path, "lock"))?;
    Ok(f)
}

fn read_log<E: std::error::Error>(path: &Path) -> Result<Option<Vec<u8>>, RuntimeError<E>> {
    let f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(log_err(path, "open")(e)),
    };
    let mut bytes = Vec::new();
    // Read one byte past the cap so an oversized file is seen as such (and then fails to parse).
    f.take(MAX_RUNTIME_LOG + 1).read_to_end(&mut bytes).map_err(log_err(path, "read"))?;
    Ok(Some(bytes))
}

fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

fn sync_dir<E: std::error::Error>(path: &Path) -> Result<(), RuntimeError<E>> {
    let dir = parent_dir(path);
    File::open(dir).and_then(|d| d.sync_all()).map_err(log_err(dir, "fsync the directory"))
}

/// Moves the log aside as `<log>.prev` (replacing an older one).
fn rotate<E: std::error::Error>(path: &Path) -> Result<(), RuntimeError<E>> {
    std::fs::rename(path, with_suffix(path, ".prev")).map_err(log_err(path, "rename to .prev"))?;
    sync_dir(path)
}

/// Writes the log atomically: temp file, fsync, rename over the log, fsync the directory.
fn write_log<E: std::error::Error>(
    path: &Path,
    reset_count: u32,
    pcr: PcrIndex,
    measured: &Measurements,
) -> Result<(), RuntimeError<E>> {
    let bytes = encode_log(reset_count, pcr, measured).map_err(RuntimeError::Encode)?;
    let tmp = with_suffix(path, ".tmp");
    let mut f = File::create(&tmp).map_err(log_err(&tmp, "create the temp file"))?;
    f.write_all(&bytes).map_err(log_err(&tmp, "write"))?;
    f.sync_all().map_err(log_err(&tmp, "fsync"))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(log_err(path, "rename the temp file into place"))?;
    sync_dir(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p15() -> PcrIndex {
        PcrIndex::new(15).unwrap()
    }

    #[test]
    fn encoded_log_replays_to_the_predicted_pcr() {
        let banks = [HashAlg::Sha256, HashAlg::Sha1, HashAlg::Sha384];
        let m = Measurements::from_bytes(&banks, b"exe", b"cfg", b"profile");
        let bytes = encode_log(7, p15(), &m).unwrap();
        let replay = eventlog::parse(&bytes).unwrap().replay().unwrap();
        for a in banks {
            assert_eq!(replay[&a].keys().copied().collect::<Vec<_>>(), vec![15], "only the runtime PCR is touched");
            assert_eq!(Some(&replay[&a][&15]), m.expected_pcr(a).as_ref());
            // Independent computation of the chain.
            let mut v = a.zero_digest();
            for data in [&b"exe"[..], b"cfg", b"profile"] {
                v = pcr::extend(a, &v, &a.digest(data)).unwrap();
            }
            assert_eq!(m.expected_pcr(a), Some(v));
        }
        let parsed = RuntimeLog::parse(&bytes).unwrap();
        assert_eq!(parsed.reset_count, 7);
        assert_eq!(parsed.pcr, p15());
        assert_eq!(parsed.events.len(), 3);
        // The marker layout, in the Spec ID event: signature, reset count, PCR; no EV_NO_ACTION events.
        let log = eventlog::parse(&bytes).unwrap();
        let marker = &log.spec_id().unwrap().vendor_info;
        assert_eq!(&marker[..16], b"BulwarkRtCycle2\0");
        assert_eq!(&marker[16..], &[7, 0, 0, 0, 15, 0, 0, 0]);
        assert_eq!(log.events().len(), 3);
        assert!(log.events().iter().all(|e| e.event_type == EventType::IPL && e.pcr == p15()));
    }

    #[test]
    fn runtime_log_layout_is_checked() {
        let m = Measurements::from_bytes(&[HashAlg::Sha256], b"e", b"c", b"p");
        let marked = || LogWriter::crypto_agile_with(&[HashAlg::Sha256], &cycle_marker(CYCLE_SIGNATURE, 1, p15()));
        // Events in the wrong order.
        let mut w = marked().unwrap();
        for c in [Component::Config, Component::Executable, Component::HwProfile] {
            w.event(p15(), EventType::IPL, m.digests(c), c.label()).unwrap();
        }
        assert!(RuntimeLog::parse(w.as_bytes()).unwrap_err().contains("executable"));
        // Events in another PCR than the marker names.
        let mut w = marked().unwrap();
        for c in Component::ALL {
            w.event(PcrIndex::new(14).unwrap(), EventType::IPL, m.digests(c), c.label()).unwrap();
        }
        assert!(RuntimeLog::parse(w.as_bytes()).unwrap_err().contains("executable"));
        // An EV_NO_ACTION event besides the three (readers in use would extend it).
        let mut w = marked().unwrap();
        w.no_action(p15(), b"note").unwrap();
        for c in Component::ALL {
            w.event(p15(), EventType::IPL, m.digests(c), c.label()).unwrap();
        }
        assert!(RuntimeLog::parse(w.as_bytes()).unwrap_err().contains("4 measurement events"));
        // A marker of the wrong size, one naming no PCR.
        let mut long = cycle_marker(CYCLE_SIGNATURE, 1, p15());
        long.push(0);
        let w = LogWriter::crypto_agile_with(&[HashAlg::Sha256], &long).unwrap();
        assert!(RuntimeLog::parse(w.as_bytes()).unwrap_err().contains("25 bytes"));
        let mut bad_pcr = cycle_marker(CYCLE_SIGNATURE, 1, p15());
        bad_pcr[20] = 24;
        let w = LogWriter::crypto_agile_with(&[HashAlg::Sha256], &bad_pcr).unwrap();
        assert!(RuntimeLog::parse(w.as_bytes()).unwrap_err().contains("no valid PCR"));
        // Layout version 1 (the marker as the first event) is named as such.
        let mut w = LogWriter::crypto_agile(&[HashAlg::Sha256]).unwrap();
        w.no_action(p15(), &cycle_marker(CYCLE_SIGNATURE_V1, 1, p15())).unwrap();
        for c in Component::ALL {
            w.event(p15(), EventType::IPL, m.digests(c), c.label()).unwrap();
        }
        assert!(RuntimeLog::parse(w.as_bytes()).unwrap_err().contains("layout version 1"));
        // Missing marker, legacy format, garbage.
        let mut w = LogWriter::crypto_agile(&[HashAlg::Sha256]).unwrap();
        w.event(p15(), EventType::IPL, m.digests(Component::Executable), Component::Executable.label()).unwrap();
        assert!(RuntimeLog::parse(w.as_bytes()).unwrap_err().contains("vendorInfo"));
        assert!(RuntimeLog::parse(&crate::eventlog::tests::sample_legacy()).is_err());
        assert!(RuntimeLog::parse(b"garbage").is_err());
        // An extra event after the three.
        let mut bytes = encode_log(1, p15(), &m).unwrap();
        bytes
            .extend(crate::eventlog::encode_event2(p15(), EventType::IPL, m.digests(Component::Config), b"x").unwrap());
        assert!(RuntimeLog::parse(&bytes).unwrap_err().contains("4 measurement events"));
    }

    #[test]
    fn prefix_values() {
        let m = Measurements::from_bytes(&[HashAlg::Sha256], b"e", b"c", b"p");
        assert_eq!(m.prefix_pcr(HashAlg::Sha256, 0), Some(vec![0; 32]));
        assert_eq!(m.prefix_pcr(HashAlg::Sha1, 1), None);
        assert_ne!(m.prefix_pcr(HashAlg::Sha256, 1), m.prefix_pcr(HashAlg::Sha256, 2));
    }

    #[test]
    fn file_measurement_equals_byte_measurement() {
        let dir = tempfile::tempdir().unwrap();
        let exe = dir.path().join("exe");
        let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&exe, &big).unwrap();
        let profile = HwProfile::embedded("dev-swtpm").unwrap();
        let m = Measurements::measure::<io::Error>(&profile, &exe, b"cfg").unwrap();
        assert_eq!(m, Measurements::from_bytes(profile.runtime_log_banks(), &big, b"cfg", profile.bytes()));
        let missing = Measurements::measure::<io::Error>(&profile, &dir.path().join("nope"), b"cfg");
        assert!(matches!(missing, Err(RuntimeError::ReadInput { what: "executable", .. })));
    }
}
