//! Hardware profiles: which TPM to expect, which PCRs a tenant's KEK is bound to, the runtime PCR and
//! the banks the runtime event log records.
//!
//! A profile is a TOML file (format documented in `hw-profiles/README.md`), parsed with unknown keys
//! rejected — an appliance must never silently ignore a constraint it does not understand — and then
//! validated: a [`HwProfile`] only exists if it passed. The exact bytes it was parsed from are kept,
//! because the runtime stage measures them ([`HwProfile::bytes`]).
//!
//! The profiles in `hw-profiles/` are compiled in ([`embedded`]), so the binary runs without that folder.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::alg::HashAlg;
use crate::pcr::PcrIndex;

/// The profile format version this crate reads (`schema = 1`).
pub const SCHEMA: u32 = 1;
/// The largest profile file accepted, in bytes.
pub const MAX_PROFILE_SIZE: usize = 64 << 10;
/// The profile used when none is configured.
pub const DEFAULT_PROFILE_ID: &str = "dev-swtpm";

const EMBEDDED: &[(&str, &str)] = &[
    ("dev-swtpm", include_str!("../../hw-profiles/dev-swtpm.toml")),
    ("generic-x86-tpm2", include_str!("../../hw-profiles/generic-x86-tpm2.toml")),
];

/// The text of the profile `id` compiled into this binary, if there is one.
pub fn embedded(id: &str) -> Option<&'static str> {
    EMBEDDED.iter().find(|(i, _)| *i == id).map(|(_, text)| *text)
}

/// The ids of the compiled-in profiles.
pub fn embedded_ids() -> impl Iterator<Item = &'static str> {
    EMBEDDED.iter().map(|(id, _)| *id)
}

/// What is wrong with a profile.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    /// The file could not be read.
    #[error("cannot read hardware profile {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is larger than [`MAX_PROFILE_SIZE`].
    #[error("hardware profile is over the {max}-byte cap ({len} bytes or more)")]
    TooLarge {
        /// Its size.
        len: usize,
        /// The cap.
        max: usize,
    },
    /// No compiled-in profile has this id.
    #[error("no built-in hardware profile {0:?} (built-in: dev-swtpm, generic-x86-tpm2)")]
    UnknownEmbedded(String),
    /// The bytes are not UTF-8.
    #[error("hardware profile is not UTF-8 text")]
    NotUtf8,
    /// The TOML does not parse into the profile format (syntax, a missing key, an unknown key or bank).
    #[error("hardware profile does not match the format in hw-profiles/README.md")]
    Format(#[source] toml::de::Error),
    /// `schema` is not one this crate reads.
    #[error("hardware profile schema {0} is not supported (this build reads schema 1)")]
    Schema(u32),
    /// A field holds a value the format allows syntactically but not semantically.
    #[error("hardware profile field `{field}`: {reason}")]
    Invalid {
        /// The field, as a TOML key path.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
}

/// The TPM a profile expects.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "TpmTable")]
pub enum TpmExpectation {
    /// A hardware (or firmware) TPM reached through a character device, normally the kernel resource
    /// manager `/dev/tpmrm0`.
    Device {
        /// The device path (absolute).
        path: PathBuf,
    },
    /// A software TPM that Bulwark starts for its data dir. Development only.
    Swtpm,
}

/// The `[tpm]` table as written. Parsed flat and then converted, because serde's `deny_unknown_fields`
/// does not reject extra keys on a unit variant of an internally tagged enum.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TpmTable {
    kind: TpmKind,
    #[serde(default)]
    path: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(rename_all = "lowercase")]
enum TpmKind {
    Device,
    Swtpm,
}

impl TryFrom<TpmTable> for TpmExpectation {
    type Error = &'static str;

    fn try_from(t: TpmTable) -> Result<Self, Self::Error> {
        match (t.kind, t.path) {
            (TpmKind::Device, Some(path)) => Ok(TpmExpectation::Device { path }),
            (TpmKind::Device, None) => Err("tpm.kind = \"device\" needs tpm.path"),
            (TpmKind::Swtpm, None) => Ok(TpmExpectation::Swtpm),
            (TpmKind::Swtpm, Some(_)) => Err("tpm.path is not allowed with tpm.kind = \"swtpm\""),
        }
    }
}

/// The PCR choices of a profile.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PcrPolicy {
    /// The bank the sealing policy reads.
    pub seal_bank: HashAlg,
    /// The PCRs a tenant's KEK is bound to, ascending, always including `runtime`.
    pub bind: Vec<PcrIndex>,
    /// The runtime measurement PCR.
    pub runtime: PcrIndex,
    /// The banks the runtime event log records (and the runtime stage extends), always including
    /// `seal_bank`.
    pub runtime_log_banks: Vec<HashAlg>,
}

/// Secure Boot expectations. Parsed and validated; not yet enforced.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecureBoot {
    /// Secure Boot must be on.
    pub required: bool,
    /// A name for the expected key set (PK/KEK/db owner), for operators; free text.
    #[serde(default)]
    pub key_set: Option<String>,
}

/// The GPU a profile expects. Parsed and validated; not yet enforced.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Gpu {
    /// The model name as the driver reports it.
    pub model: String,
    /// Device memory in GiB.
    #[serde(default)]
    pub memory_gib: Option<u32>,
    /// Whether MIG partitioning is expected on.
    #[serde(default)]
    pub mig: Option<bool>,
}

/// Where the firmware event log is and how it behaves. Parsed and validated; not yet used.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventLogSettings {
    /// The binary TCG event log (absolute path).
    #[serde(default)]
    pub path: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProfileFile {
    schema: u32,
    id: String,
    description: String,
    tpm: TpmExpectation,
    pcrs: PcrPolicy,
    #[serde(default)]
    secure_boot: Option<SecureBoot>,
    #[serde(default)]
    gpu: Option<Gpu>,
    #[serde(default)]
    event_log: Option<EventLogSettings>,
}

/// A validated hardware profile and the exact bytes it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HwProfile {
    bytes: Vec<u8>,
    id: String,
    description: String,
    tpm: TpmExpectation,
    pcrs: PcrPolicy,
    secure_boot: Option<SecureBoot>,
    gpu: Option<Gpu>,
    event_log: Option<EventLogSettings>,
}

impl HwProfile {
    /// Parses and validates a profile from its file bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ProfileError> {
        if bytes.len() > MAX_PROFILE_SIZE {
            return Err(ProfileError::TooLarge { len: bytes.len(), max: MAX_PROFILE_SIZE });
        }
        let text = std::str::from_utf8(bytes).map_err(|_| ProfileError::NotUtf8)?;
        let file: ProfileFile = toml::from_str(text).map_err(ProfileError::Format)?;
        if file.schema != SCHEMA {
            return Err(ProfileError::Schema(file.schema));
        }
        validate_id(&file.id)?;
        if file.description.trim().is_empty() {
            return Err(invalid("description", "must not be empty"));
        }
        if let TpmExpectation::Device { path } = &file.tpm
            && !path.is_absolute()
        {
            return Err(invalid("tpm.path", format!("{} is not an absolute path", path.display())));
        }
        let pcrs = validate_pcrs(file.pcrs)?;
        if let Some(g) = &file.gpu
            && g.model.trim().is_empty()
        {
            return Err(invalid("gpu.model", "must not be empty"));
        }
        if let Some(EventLogSettings { path: Some(p) }) = &file.event_log
            && !p.is_absolute()
        {
            return Err(invalid("event_log.path", format!("{} is not an absolute path", p.display())));
        }
        Ok(HwProfile {
            bytes: bytes.to_vec(),
            id: file.id,
            description: file.description,
            tpm: file.tpm,
            pcrs,
            secure_boot: file.secure_boot,
            gpu: file.gpu,
            event_log: file.event_log,
        })
    }

    /// Reads, parses and validates the profile file at `path`.
    pub fn load(path: &Path) -> Result<Self, ProfileError> {
        let read_err = |source| ProfileError::Read { path: path.to_path_buf(), source };
        // `from_bytes` refuses what is over the cap.
        let bytes = crate::read_at_most(path, MAX_PROFILE_SIZE).map_err(read_err)?;
        Self::from_bytes(&bytes)
    }

    /// The compiled-in profile `id`.
    pub fn embedded(id: &str) -> Result<Self, ProfileError> {
        let text = embedded(id).ok_or_else(|| ProfileError::UnknownEmbedded(id.to_owned()))?;
        Self::from_bytes(text.as_bytes())
    }

    /// The exact bytes the profile was parsed from (what the runtime stage measures).
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The profile id (`[a-z][a-z0-9-]*`, at most 64 characters).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The one-line description.
    pub fn description(&self) -> &str {
        &self.description
    }

    /// The TPM the profile expects.
    pub fn tpm(&self) -> &TpmExpectation {
        &self.tpm
    }

    /// All PCR choices.
    pub fn pcrs(&self) -> &PcrPolicy {
        &self.pcrs
    }

    /// The bank sealing policies read.
    pub fn seal_bank(&self) -> HashAlg {
        self.pcrs.seal_bank
    }

    /// The PCRs a tenant's KEK is bound to, ascending; includes the runtime PCR.
    pub fn bound_pcrs(&self) -> &[PcrIndex] {
        &self.pcrs.bind
    }

    /// The runtime measurement PCR.
    pub fn runtime_pcr(&self) -> PcrIndex {
        self.pcrs.runtime
    }

    /// The banks the runtime event log records; includes the seal bank.
    pub fn runtime_log_banks(&self) -> &[HashAlg] {
        &self.pcrs.runtime_log_banks
    }

    /// Secure Boot expectations, if stated.
    pub fn secure_boot(&self) -> Option<&SecureBoot> {
        self.secure_boot.as_ref()
    }

    /// GPU expectations, if stated.
    pub fn gpu(&self) -> Option<&Gpu> {
        self.gpu.as_ref()
    }

    /// Firmware event log settings, if stated.
    pub fn event_log(&self) -> Option<&EventLogSettings> {
        self.event_log.as_ref()
    }
}

fn invalid(field: &'static str, reason: impl Into<String>) -> ProfileError {
    ProfileError::Invalid { field, reason: reason.into() }
}

fn validate_id(id: &str) -> Result<(), ProfileError> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id.starts_with(|c: char| c.is_ascii_lowercase())
        && id.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if ok {
        Ok(())
    } else {
        Err(invalid("id", format!("{id:?} is not 1-64 characters of [a-z0-9-] starting with a letter")))
    }
}

/// Why `pcr` cannot be the runtime PCR, or `None` when it can. The runtime PCR must not be resettable
/// from locality 0 (else anyone could reset it and replay a good runtime's measurements) and must not be
/// extended by anything else in the boot chain (else its value would not be ours to predict).
pub fn runtime_pcr_rejection(pcr: PcrIndex) -> Option<&'static str> {
    match pcr.get() {
        0..=7 => Some("PCRs 0-7 are extended by platform firmware"),
        8 | 9 => Some("PCRs 8 and 9 are used by boot loaders (GRUB) and the kernel's initrd measurement"),
        10 => Some("PCR 10 is used by Linux IMA"),
        11..=13 => {
            Some("PCRs 11-13 are used by systemd-stub (UKI sections, command line, credentials, system extensions)")
        }
        14 => Some("PCR 14 is used by shim for MOK state"),
        15 => None,
        16 => Some("PCR 16 is the debug PCR, resettable from locality 0"),
        17..=22 => Some("PCRs 17-22 belong to the dynamic root of trust and are reset by a D-RTM launch"),
        _ => Some("PCR 23 is the application PCR, resettable from locality 0"),
    }
}

/// Why `pcr` cannot be bound into a KEK policy, or `None` when it can.
fn bind_pcr_rejection(pcr: PcrIndex) -> Option<&'static str> {
    match pcr.get() {
        16 | 23 => Some("resettable from locality 0, so binding it proves nothing"),
        17..=22 => Some("a dynamic-root-of-trust PCR; D-RTM platforms are not supported yet"),
        _ => None,
    }
}

fn validate_pcrs(mut p: PcrPolicy) -> Result<PcrPolicy, ProfileError> {
    if let Some(reason) = runtime_pcr_rejection(p.runtime) {
        return Err(invalid("pcrs.runtime", format!("PCR {} cannot be the runtime PCR: {reason}", p.runtime)));
    }
    if p.bind.is_empty() {
        return Err(invalid("pcrs.bind", "must name at least the runtime PCR"));
    }
    for pcr in &p.bind {
        if let Some(reason) = bind_pcr_rejection(*pcr) {
            return Err(invalid("pcrs.bind", format!("PCR {pcr} cannot be bound: {reason}")));
        }
    }
    let len = p.bind.len();
    p.bind.sort_unstable();
    p.bind.dedup();
    if p.bind.len() != len {
        return Err(invalid("pcrs.bind", "a PCR appears twice"));
    }
    if !p.bind.contains(&p.runtime) {
        return Err(invalid(
            "pcrs.bind",
            format!("must include the runtime PCR {}: a KEK must not unseal for an unmeasured runtime", p.runtime),
        ));
    }
    if p.runtime_log_banks.is_empty() {
        return Err(invalid("pcrs.runtime_log_banks", "must name at least the seal bank"));
    }
    let mut sorted = p.runtime_log_banks.clone();
    sorted.sort_unstable();
    sorted.dedup();
    if sorted.len() != p.runtime_log_banks.len() {
        return Err(invalid("pcrs.runtime_log_banks", "a bank appears twice"));
    }
    if !p.runtime_log_banks.contains(&p.seal_bank) {
        return Err(invalid(
            "pcrs.runtime_log_banks",
            format!("must include the seal bank {}: the sealed runtime PCR must be extended in that bank", p.seal_bank),
        ));
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
schema = 1
id = "t-1"
description = "test"
[tpm]
kind = "swtpm"
[pcrs]
seal_bank = "sha256"
bind = [15, 7]
runtime = 15
runtime_log_banks = ["sha256"]
"#;

    fn with(from: &str, to: &str) -> Result<HwProfile, ProfileError> {
        assert!(MINIMAL.contains(from), "{from}");
        HwProfile::from_bytes(MINIMAL.replacen(from, to, 1).as_bytes())
    }

    fn invalid_field(r: Result<HwProfile, ProfileError>) -> &'static str {
        match r {
            Err(ProfileError::Invalid { field, .. }) => field,
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    #[test]
    fn embedded_profiles_load_and_match_the_files() {
        let ids: Vec<_> = embedded_ids().collect();
        assert_eq!(ids, vec!["dev-swtpm", "generic-x86-tpm2"]);
        for id in ids {
            let p = HwProfile::embedded(id).unwrap();
            assert_eq!(p.id(), id);
            assert!(p.bound_pcrs().contains(&p.runtime_pcr()));
            assert_eq!(p.runtime_pcr().get(), 15);
            let on_disk =
                std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../hw-profiles/{id}.toml"))).unwrap();
            assert_eq!(p.bytes(), on_disk.as_slice());
            assert_eq!(
                HwProfile::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../hw-profiles/{id}.toml")))
                    .unwrap(),
                p
            );
        }
        let dev = HwProfile::embedded(DEFAULT_PROFILE_ID).unwrap();
        assert_eq!(dev.tpm(), &TpmExpectation::Swtpm);
        assert_eq!(dev.bound_pcrs(), &[PcrIndex::new(15).unwrap()]);
        assert_eq!(dev.runtime_log_banks(), &[HashAlg::Sha256, HashAlg::Sha1]);
        let generic = HwProfile::embedded("generic-x86-tpm2").unwrap();
        assert_eq!(generic.tpm(), &TpmExpectation::Device { path: "/dev/tpmrm0".into() });
        assert_eq!(generic.bound_pcrs().iter().map(|p| p.get()).collect::<Vec<_>>(), vec![7, 15]);
        assert_eq!(generic.secure_boot().map(|s| s.required), Some(true));
        assert!(matches!(HwProfile::embedded("nope"), Err(ProfileError::UnknownEmbedded(_))));
    }

    #[test]
    fn minimal_profile_is_normalised() {
        let p = HwProfile::from_bytes(MINIMAL.as_bytes()).unwrap();
        assert_eq!(p.bound_pcrs().iter().map(|p| p.get()).collect::<Vec<_>>(), vec![7, 15], "bind is sorted");
        assert_eq!(p.seal_bank(), HashAlg::Sha256);
        assert!(p.secure_boot().is_none() && p.gpu().is_none() && p.event_log().is_none());
        assert_eq!(p.bytes(), MINIMAL.as_bytes());
    }

    #[test]
    fn unknown_keys_and_banks_are_rejected() {
        assert!(matches!(with("schema = 1\n", "schema = 1\nextra = 2\n"), Err(ProfileError::Format(_))));
        assert!(matches!(
            with("kind = \"swtpm\"", "kind = \"swtpm\"\npath = \"/dev/x\""),
            Err(ProfileError::Format(_))
        ));
        assert!(matches!(with("runtime = 15\n", "runtime = 15\nfoo = 1\n"), Err(ProfileError::Format(_))));
        assert!(matches!(with("seal_bank = \"sha256\"", "seal_bank = \"sha512\""), Err(ProfileError::Format(_))));
        assert!(matches!(with("[\"sha256\"]", "[\"md5\"]"), Err(ProfileError::Format(_))));
        assert!(matches!(with("kind = \"swtpm\"", "kind = \"vtpm\""), Err(ProfileError::Format(_))));
        assert!(matches!(with("bind = [15, 7]", "bind = [15, 24]"), Err(ProfileError::Format(_))));
        assert!(
            matches!(with("kind = \"swtpm\"", "kind = \"device\""), Err(ProfileError::Format(_))),
            "device needs a path"
        );
        assert!(matches!(with("description = \"test\"\n", ""), Err(ProfileError::Format(_))));
        let full = MINIMAL.to_owned()
            + "[secure_boot]\nrequired = true\nkey_set = \"vendor\"\n[gpu]\nmodel = \"H100\"\nmemory_gib = 80\nmig = false\n[event_log]\npath = \"/sys/x\"\n";
        let p = HwProfile::from_bytes(full.as_bytes()).unwrap();
        assert_eq!(p.gpu().map(|g| g.memory_gib), Some(Some(80)));
        assert!(matches!(HwProfile::from_bytes((full + "[gpu2]\n").as_bytes()), Err(ProfileError::Format(_))));
    }

    #[test]
    fn semantic_checks() {
        assert!(matches!(with("schema = 1", "schema = 2"), Err(ProfileError::Schema(2))));
        assert_eq!(invalid_field(with("id = \"t-1\"", "id = \"T 1\"")), "id");
        assert_eq!(invalid_field(with("id = \"t-1\"", "id = \"\"")), "id");
        assert_eq!(invalid_field(with("description = \"test\"", "description = \"  \"")), "description");
        for bad in [0, 7, 10, 11, 14, 16, 17, 22, 23] {
            let r = with("runtime = 15", &format!("runtime = {bad}"));
            assert_eq!(invalid_field(r), "pcrs.runtime", "runtime PCR {bad}");
        }
        assert_eq!(invalid_field(with("bind = [15, 7]", "bind = [7]")), "pcrs.bind");
        assert_eq!(invalid_field(with("bind = [15, 7]", "bind = []")), "pcrs.bind");
        assert_eq!(invalid_field(with("bind = [15, 7]", "bind = [15, 15]")), "pcrs.bind");
        assert_eq!(invalid_field(with("bind = [15, 7]", "bind = [15, 16]")), "pcrs.bind");
        assert_eq!(invalid_field(with("bind = [15, 7]", "bind = [15, 23]")), "pcrs.bind");
        assert_eq!(invalid_field(with("bind = [15, 7]", "bind = [15, 18]")), "pcrs.bind");
        assert_eq!(invalid_field(with("[\"sha256\"]", "[\"sha1\"]")), "pcrs.runtime_log_banks");
        assert_eq!(invalid_field(with("[\"sha256\"]", "[]")), "pcrs.runtime_log_banks");
        assert_eq!(invalid_field(with("[\"sha256\"]", "[\"sha256\", \"sha256\"]")), "pcrs.runtime_log_banks");
        assert_eq!(invalid_field(with("kind = \"swtpm\"", "kind = \"device\"\npath = \"dev/tpmrm0\"")), "tpm.path");
        assert!(with("kind = \"swtpm\"", "kind = \"device\"\npath = \"/dev/tpm0\"").is_ok());
        assert!(with("bind = [15, 7]", "bind = [0, 4, 7, 11, 15]").is_ok());
    }

    /// The example in hw-profiles/README.md is a valid profile.
    #[test]
    fn readme_example_parses() {
        let readme =
            std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../hw-profiles/README.md")).unwrap();
        let start = readme.find("```toml\n").unwrap() + "```toml\n".len();
        let len = readme[start..].find("```").unwrap();
        let p = HwProfile::from_bytes(&readme.as_bytes()[start..start + len]).unwrap();
        assert_eq!(p.id(), "generic-x86-tpm2");
        assert_eq!(p.gpu().map(|g| g.mig), Some(Some(false)));
        assert_eq!(
            p.event_log().and_then(|e| e.path.as_deref()),
            Some(Path::new("/sys/kernel/security/tpm0/binary_bios_measurements"))
        );
    }

    #[test]
    fn bytes_limits() {
        assert!(matches!(HwProfile::from_bytes(&[0xFF, 0xFE]), Err(ProfileError::NotUtf8)));
        let big = vec![b'#'; MAX_PROFILE_SIZE + 1];
        assert!(matches!(HwProfile::from_bytes(&big), Err(ProfileError::TooLarge { .. })));
        assert!(matches!(HwProfile::load(Path::new("/nonexistent/profile.toml")), Err(ProfileError::Read { .. })));
    }
}
