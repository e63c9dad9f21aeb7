//! `Tpm`: one TPM endpoint, serialized in-process (a mutex) and across processes (a `flock`), with the
//! storage root key, PCRs, clock, NV helpers and the tenant liveness indices.

use std::collections::HashMap;
use std::ffi::CString;
use std::fmt;
use std::fs::File;
use std::io;
use std::path::PathBuf;
use std::sync::{Mutex, Once};

use sha1::Sha1;
use sha2::{Digest as _, Sha256, Sha384, Sha512};

use crate::esys::{Esys, EsysError, SessionKind, Tr};
use crate::lock::{Held, lock_path, open_lock_file};
use crate::policy::{self, NvOperation, NvPublic, PcrBank, PcrIndex, PcrValues, PolicyDigest, PolicyError, nv_attr};
use crate::rc::{TpmRc, codes};
use crate::secret::SecretBytes;
use crate::tcti::{SWTPM_ANSWER_WAIT, Silent, TctiSpec};

/// The TCG-recommended persistent handle of the storage root key (TCG TPM v2.0 Provisioning
/// Guidance, section 7.8: 0x81000001 for the SRK).
pub const SRK_HANDLE: u32 = 0x8100_0001;

/// First NV handle of the tenant liveness indices: `0x01425700 + k` for `k` in 0..=255 ("BW" in the
/// middle bytes). They sit in the owner-defined NV index range (TPM_HT_NV_INDEX 0x01); bulwark owns
/// 0x01425700..=0x014257FF.
pub const LIVENESS_NV_BASE: u32 = 0x0142_5700;

/// First NV handle of the slot claim indices: `0x01425800 + k` for `k` in 0..=255, with the liveness
/// indices' attributes and size. Bit `b` of claim index `k` is set once slot `64k + b` has been handed out
/// (to a tenant, or to the appliance key) and is never cleared, so no slot number goes to two owners on
/// this TPM whatever the appliance's files say. Bulwark owns 0x01425800..=0x014258FF too.
pub const CLAIM_NV_BASE: u32 = 0x0142_5800;

/// TPMA_NV of a liveness index as defined: TPM_NT_BITS (64 bits), written by the owner hierarchy,
/// read with the index's own (empty) authValue, exempt from dictionary-attack lockout. The TPM adds
/// TPMA_NV_WRITTEN on the first write, which `liveness_ensure_index` performs (a SetBits of 0).
pub const LIVENESS_NV_ATTRIBUTES: u32 = nv_attr::OWNERWRITE | nv_attr::AUTHREAD | nv_attr::NO_DA | nv_attr::NT_BITS;

/// How many fresh policy sessions an unseal tries when PCRs change mid-sequence (TPM_RC_PCR_CHANGED).
pub(crate) const PCR_CHANGED_ATTEMPTS: u32 = 4;

/// Everything that can go wrong talking to the TPM.
#[derive(Debug, thiserror::Error)]
pub enum TpmError {
    /// Nothing answers at the endpoint, or the connection broke mid-operation.
    #[error("no TPM at {spec} ({rc}); {hint}")]
    Unreachable {
        /// The endpoint, as configured.
        spec: String,
        /// The transport error.
        rc: TpmRc,
        /// How to start or reach one.
        hint: String,
    },
    /// A swtpm address took the connection but did not answer a TPM command in time (see
    /// `TctiSpec::check_answers`).
    #[error(
        "the TPM at {spec} did not answer a command within {waited_s} s ({why}): another client may be using \
         it (a swtpm serves one connection at a time), it may be hung, or that port is not a swtpm's TPM port"
    )]
    NotAnswering {
        /// The endpoint, as configured.
        spec: String,
        /// How long it was given.
        waited_s: u64,
        /// What it did.
        why: &'static str,
    },
    /// A TPM command failed for a reason no more specific variant covers.
    #[error("{cmd} failed: {rc}")]
    Command {
        /// The TPM command, e.g. "TPM2_Load".
        cmd: &'static str,
        /// Its response code.
        rc: TpmRc,
    },
    /// The TPM is in failure mode (TPM_RC_FAILURE): it answers nothing but that until it is reset.
    #[error("{cmd} failed: the TPM is in failure mode ({rc}); {hint}")]
    FailureMode {
        /// The TPM command that met it.
        cmd: &'static str,
        /// Its response code.
        rc: TpmRc,
        /// What usually causes it for this kind of TPM, and what to do.
        hint: String,
    },
    /// The cross-process lock file could not be opened or locked.
    #[error("cannot lock {}", path.display())]
    Lock {
        /// The lock file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The persistent SRK handle holds a key with another template.
    #[error(
        "persistent handle 0x81000001 holds a key that is not an ECC P-256 storage root key with the expected template; \
         refusing to use it (remove it with `tpm2_evictcontrol -C o -c 0x81000001` only if nothing else relies on it)"
    )]
    SrkMismatch,
    /// The measured state (PCRs) is not the one the object was sealed to.
    #[error("measured state changed: {bank} {} from the values the key was sealed to", pcrs_differ(changed))]
    MeasuredStateChanged {
        /// The bank the policy binds.
        bank: PcrBank,
        /// The PCRs whose current value differs from the sealed one.
        changed: Vec<u8>,
    },
    /// The tenant was deleted: its liveness bit is set, forever.
    #[error(
        "tenant deleted: liveness bit {bit} of NV index {index:#010x} is set, so its sealed key can never be unsealed"
    )]
    TenantShredded {
        /// NV handle.
        index: u32,
        /// Bit number.
        bit: u8,
    },
    /// The liveness index does not exist or was never written.
    #[error("liveness NV index {index:#010x} is not defined or never written (create it with liveness_ensure_index)")]
    LivenessIndexMissing {
        /// NV handle.
        index: u32,
    },
    /// An index exists at a liveness handle but with other attributes than bulwark defines.
    #[error(
        "NV index {index:#010x} exists but is not a bulwark liveness index (unexpected attributes or size): it was \
         deleted and defined again outside bulwark, so no tenant with a liveness bit in it can be unsealed"
    )]
    LivenessIndexMismatch {
        /// NV handle.
        index: u32,
    },
    /// The recovery branch was tried with the wrong secret.
    #[error("wrong recovery secret")]
    WrongRecoverySecret,
    /// The owner hierarchy's authorization is not the one given.
    #[error("the TPM's owner authorization is not the one expected ({rc})")]
    OwnerAuthMismatch {
        /// The TPM's response.
        rc: TpmRc,
    },
    /// The lockout hierarchy's authorization is not the one given.
    #[error("the TPM's lockout authorization is not the one expected ({rc})")]
    LockoutAuthMismatch {
        /// The TPM's response.
        rc: TpmRc,
    },
    /// The platform hierarchy is open but its authorization is not the empty one, so it cannot be
    /// closed: another client of this TPM set it.
    #[error("the TPM's platform hierarchy is open and its authorization was set by someone else ({rc})")]
    PlatformAuthSet {
        /// The TPM's response.
        rc: TpmRc,
    },
    /// The policy failed although the PCRs match the sealed values: the liveness index the object was
    /// sealed against is gone and another index now sits at its handle (its name differs).
    #[error(
        "the TPM refuses the sealed object's policy although the PCRs match ({rc}): the tenant's liveness NV index \
         is not the one it was sealed against (deleted and defined again: a deleted tenant, or tampering), so this \
         key cannot be unsealed"
    )]
    PolicyMismatch {
        /// The failing response code.
        rc: TpmRc,
    },
    /// Load refused the object.
    #[error("sealed object does not load under this TPM's storage root key (corrupt, or sealed by another TPM): {rc}")]
    ObjectCorrupt {
        /// Load's response code.
        rc: TpmRc,
    },
    /// PCRs changed during every attempt.
    #[error("PCRs kept changing during unseal ({attempts} attempts)")]
    PcrsKeptChanging {
        /// Attempts made.
        attempts: u32,
    },
    /// Sealed data must be 1..=128 bytes (MAX_SYM_DATA).
    #[error("secret to seal is {len} bytes; 1 to 128 are allowed")]
    SecretSize {
        /// The length given.
        len: usize,
    },
    /// The recovery auth value is too long or too weak.
    #[error(
        "recovery auth must be 1 to 32 bytes, with at least 16 left once trailing zero bytes are dropped as the TPM does \
         (pass SHA-256 of the recovery secret)"
    )]
    RecoveryAuth,
    /// An index exists at a slot claim handle but with other attributes than bulwark defines.
    #[error(
        "NV index {index:#010x} exists but is not a bulwark slot claim index (unexpected attributes or size): it \
         was defined outside bulwark, so bulwark cannot tell which tenant slots were handed out"
    )]
    ClaimIndexMismatch {
        /// NV handle.
        index: u32,
    },
    /// Every tenant slot this TPM can hold (256 indices of 64) was handed out.
    #[error("every tenant slot on this TPM ({} of them) has been handed out", 256 * 64)]
    SlotsExhausted,
    /// A liveness bit outside 0..=63.
    #[error("liveness bit {0} out of range (0 to 63)")]
    LivenessBit(u8),
    /// An NV handle outside the NV index range.
    #[error("NV handle {0:#010x} is outside the NV index range 0x01000000..=0x01ffffff")]
    NvIndexRange(u32),
    /// A PCR bank the TPM does not have allocated.
    #[error("the TPM has no {bank} value for PCR {pcr} (bank not allocated?)")]
    PcrBankUnavailable {
        /// The bank.
        bank: PcrBank,
        /// The PCR.
        pcr: u8,
    },
    /// Invalid PCR/policy input.
    #[error("invalid policy input")]
    Policy(#[from] PolicyError),
    /// The TPM or library returned something that does not fit what was asked.
    #[error("TPM returned an unexpected {0}")]
    Unexpected(&'static str),
}

fn join(v: &[u8]) -> String {
    v.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(",")
}

/// "PCR 7 differs" or "PCRs 4,7 differ".
fn pcrs_differ(v: &[u8]) -> String {
    if v.len() == 1 { format!("PCR {} differs", join(v)) } else { format!("PCRs {} differ", join(v)) }
}

/// TPMA_STARTUP_CLEAR bit 0, phEnable (Part 2, 8.7): the platform hierarchy is enabled.
const PH_ENABLE: u32 = 1 << 0;

/// What [`Tpm::close_platform_hierarchy`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlatformHierarchy {
    /// It was open; it is closed now, until the TPM's next reset.
    Closed,
    /// It was closed already (by firmware, or by an earlier call since the last reset).
    AlreadyClosed,
}

/// TPMS_CLOCK_INFO from TPM2_ReadClock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClockInfo {
    /// Milliseconds the TPM has been powered since its last reset (TPMS_TIME_INFO.time).
    pub time_ms: u64,
    /// Milliseconds the TPM has been powered since it was made (advances, survives resets).
    pub clock_ms: u64,
    /// TPM resets (power cycles / TPM2_Startup(CLEAR)) since the last TPM2_Clear.
    pub reset_count: u32,
    /// TPM2_Shutdown(STATE)/Startup(STATE) cycles since the last reset.
    pub restart_count: u32,
    /// Whether `clock_ms` is known not to have gone back.
    pub safe: bool,
}

/// A tenant's liveness slot: bit `bit` of liveness NV index `index_no` (handle
/// [`LIVENESS_NV_BASE`] + `index_no`). The tenant is alive while the bit is clear.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LivenessSlot {
    index_no: u8,
    bit: u8,
}

impl LivenessSlot {
    /// Checks `bit` < 64.
    pub fn new(index_no: u8, bit: u8) -> Result<Self, TpmError> {
        if bit >= 64 {
            return Err(TpmError::LivenessBit(bit));
        }
        Ok(LivenessSlot { index_no, bit })
    }

    /// The slot for the `n`th tenant of the appliance's counter (index `n / 64`, bit `n % 64`).
    /// `None` beyond 256 × 64 tenants.
    pub fn from_counter(n: u32) -> Option<Self> {
        let index_no = u8::try_from(n / 64).ok()?;
        let bit = u8::try_from(n % 64).ok()?;
        Some(LivenessSlot { index_no, bit })
    }

    /// Which liveness index (0..=255).
    pub fn index_no(self) -> u8 {
        self.index_no
    }

    /// Which bit (0..=63).
    pub fn bit(self) -> u8 {
        self.bit
    }

    /// The NV handle.
    pub fn nv_handle(self) -> u32 {
        LIVENESS_NV_BASE + u32::from(self.index_no)
    }

    /// PolicyNV operand B: `1 << bit` as 8 big-endian bytes (the TPM holds a bits index as a
    /// big-endian UINT64).
    pub fn operand(self) -> [u8; 8] {
        (1u64 << self.bit).to_be_bytes()
    }

    /// The index's public area as the TPM holds it once written; its Name is what PolicyNV binds.
    pub fn nv_public(self) -> NvPublic {
        liveness_public(self.index_no, true)
    }
}

fn liveness_public(index_no: u8, written: bool) -> NvPublic {
    bits_public(LIVENESS_NV_BASE, index_no, written)
}

/// The public area of bits index `index_no` of the family at `base` (liveness or slot claims).
fn bits_public(base: u32, index_no: u8, written: bool) -> NvPublic {
    NvPublic {
        index: base + u32::from(index_no),
        attributes: LIVENESS_NV_ATTRIBUTES | if written { nv_attr::WRITTEN } else { 0 },
        auth_policy: Vec::new(),
        data_size: 8,
    }
}

/// One step of a policy evaluated in a TPM trial session (see [`Tpm::trial_policy`]).
#[derive(Debug, Clone)]
pub enum PolicyStep<'a> {
    /// TPM2_PolicyPCR with an explicit composite digest.
    Pcr {
        /// Bank.
        bank: PcrBank,
        /// PCRs.
        pcrs: &'a [PcrIndex],
        /// Composite digest of the expected values.
        composite: [u8; 32],
    },
    /// TPM2_PolicyNV against an existing, written index with empty auth.
    Nv {
        /// NV handle.
        index: u32,
        /// Operand B.
        operand_b: &'a [u8],
        /// Offset.
        offset: u16,
        /// Comparison.
        op: NvOperation,
    },
    /// TPM2_PolicyAuthValue.
    AuthValue,
    /// TPM2_PolicyOR.
    Or(&'a [PolicyDigest]),
}

/// When sessions are salted with the SRK so secrets cross between this process and the TPM encrypted
/// (AES-128-CFB parameter encryption: the secret and recovery auth on seal, the secret on unseal).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SessionEncryption {
    /// Encrypt unless the TPM is a swtpm on a loopback address. A loopback swtpm has no bus to
    /// sniff: whoever can read its loopback traffic (root) can read its state file, which holds every
    /// secret of that TPM, so encryption would cost ~2.6 ms per unseal (ESAPI's OpenSSL 3 HMAC, KDF and
    /// ECDH work) and protect nothing. Device TPMs and swtpm on other hosts are always encrypted.
    #[default]
    Auto,
    /// Encrypt on every endpoint.
    Always,
}

/// Options for [`Tpm::open_with`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TpmOptions {
    /// Session encryption policy.
    pub encryption: SessionEncryption,
}

/// Cached ESAPI metadata (serialized ESYS_TR) of the verified SRK and of NV indices, so a new
/// connection needs no TPM round trip to name them.
#[derive(Default)]
struct Cache {
    srk: Option<Vec<u8>>,
    /// The SRK's public area (TPM2B_PUBLIC wire bytes), read when the SRK was verified.
    srk_public: Option<Vec<u8>>,
    nv: HashMap<u32, Vec<u8>>,
}

struct Conn {
    esys: Esys,
    /// ESYS_TRs of persistent objects and NV indices opened on this connection, by TPM handle.
    trs: HashMap<u32, Tr>,
    /// A non-empty owner authValue is set on this connection's owner handle (during one operation).
    owner_auth_set: bool,
}

struct State {
    /// The lock file; replaced if its path is recreated (see `Held::acquire`).
    lock_file: File,
    conn: Option<Conn>,
    cache: Cache,
    /// The owner hierarchy's authorization, when it is not empty (see [`Tpm::set_owner_auth`]).
    owner_auth: Option<SecretBytes>,
    /// Whether the endpoint answered `TctiSpec::check_answers` (asked once, before the first connection).
    answered: bool,
}

/// A TPM 2.0, reached through [`TctiSpec`]. `Send + Sync`: operations are serialized by a mutex
/// inside, and by an exclusive `flock` shared with every other process using the same endpoint.
pub struct Tpm {
    spec: TctiSpec,
    conf: CString,
    lock_path: PathBuf,
    encrypt: bool,
    state: Mutex<State>,
}

impl fmt::Debug for Tpm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tpm")
            .field("spec", &self.spec.to_string())
            .field("lock", &self.lock_path)
            .finish_non_exhaustive()
    }
}

static QUIET_TSS: Once = Once::new();

/// Silences the TSS libraries' own stderr logging (`TSS2_LOG=all+NONE`) unless the operator set
/// TSS2_LOG. Runs once, before this process's first TSS call. Binaries that start threads before
/// opening the TPM should export TSS2_LOG themselves at startup, which makes this a no-op.
fn quiet_tss_logging() {
    QUIET_TSS.call_once(|| {
        if std::env::var_os("TSS2_LOG").is_none() {
            // SAFETY: setenv races only with a concurrent getenv/setenv in another thread. This runs
            // once, before the first TSS call of the process (the TSS reads TSS2_LOG lazily on its
            // first log line), and bulwark's binaries open the TPM before spawning threads that touch
            // the environment.
            unsafe { std::env::set_var("TSS2_LOG", "all+NONE") };
        }
    });
}

/// The context of one logical operation: a connection (held under the lock) and the caches.
pub(crate) struct Op<'a> {
    pub(crate) esys: &'a mut Esys,
    trs: &'a mut HashMap<u32, Tr>,
    cache: &'a mut Cache,
    spec: &'a TctiSpec,
    pub(crate) encrypt: bool,
}

impl Op<'_> {
    /// Maps an ESAPI failure: transport failures become [`TpmError::Unreachable`].
    pub(crate) fn err(&self, e: EsysError) -> TpmError {
        esys_error(self.spec, e)
    }

    /// The SRK's ESYS_TR on this connection, creating (first use) and verifying (first use per
    /// `Tpm`) the key.
    pub(crate) fn srk(&mut self) -> Result<Tr, TpmError> {
        self.find_srk(true)?.ok_or(TpmError::Unexpected("no SRK right after creating it"))
    }

    /// The SRK's ESYS_TR on this connection, verified (first use per `Tpm`); when there is none, created
    /// if `create`, else `None`.
    fn find_srk(&mut self, create: bool) -> Result<Option<Tr>, TpmError> {
        if let Some(tr) = self.trs.get(&SRK_HANDLE) {
            return Ok(Some(*tr));
        }
        let tr = match self.cache.srk.as_deref() {
            Some(blob) => self.esys.tr_deserialize(blob).map_err(|e| self.err(e))?,
            None => {
                let Some(tr) = self.verified_srk(create)? else { return Ok(None) };
                let blob = self.esys.tr_serialize(tr).map_err(|e| self.err(e))?;
                self.cache.srk = Some(blob);
                tr
            }
        };
        self.trs.insert(SRK_HANDLE, tr);
        Ok(Some(tr))
    }

    fn verified_srk(&mut self, create: bool) -> Result<Option<Tr>, TpmError> {
        let tr = match self.esys.tr_from_tpm_public(SRK_HANDLE) {
            Ok(tr) => tr,
            Err(e) if e.rc.is_from_tpm() && e.rc.base() == codes::HANDLE && !create => return Ok(None),
            Err(e) if e.rc.is_from_tpm() && e.rc.base() == codes::HANDLE => {
                let primary = self.esys.create_primary_owner(&srk_template_2b()).map_err(|e| self.err(e))?;
                let persisted = self.esys.evict_control_owner(primary, SRK_HANDLE);
                self.esys.flush(primary).map_err(|e| self.err(e))?;
                persisted.map_err(|e| self.err(e))?
            }
            Err(e) => return Err(self.err(e)),
        };
        let public = self.esys.read_public(tr).map_err(|e| self.err(e))?;
        if !srk_public_matches(&public) {
            self.esys.tr_close(tr);
            return Err(TpmError::SrkMismatch);
        }
        self.cache.srk_public = Some(public);
        Ok(Some(tr))
    }

    /// The ESYS_TR of NV index `handle` on this connection. A missing index is
    /// [`TpmError::LivenessIndexMissing`] for liveness handles, a command error otherwise.
    pub(crate) fn nv(&mut self, handle: u32) -> Result<Tr, TpmError> {
        if let Some(tr) = self.trs.get(&handle) {
            return Ok(*tr);
        }
        let tr = match self.cache.nv.get(&handle) {
            Some(blob) => self.esys.tr_deserialize(blob).map_err(|e| self.err(e))?,
            None => {
                let tr = self.esys.tr_from_tpm_public(handle).map_err(|e| {
                    if is_liveness_handle(handle) && e.rc.is_from_tpm() && e.rc.base() == codes::HANDLE {
                        TpmError::LivenessIndexMissing { index: handle }
                    } else {
                        self.err(e)
                    }
                })?;
                let blob = self.esys.tr_serialize(tr).map_err(|e| self.err(e))?;
                self.cache.nv.insert(handle, blob);
                tr
            }
        };
        self.trs.insert(handle, tr);
        Ok(tr)
    }

    /// TPM2_NV_ReadPublic of `handle`, parsed.
    fn nv_public(&mut self, handle: u32) -> Result<NvPublic, TpmError> {
        let tr = self.nv(handle)?;
        let (wire, _name) = self.esys.nv_read_public(tr).map_err(|e| self.err(e))?;
        parse_nv_public(&wire).ok_or(TpmError::Unexpected("NV public area"))
    }

    /// Forgets cached metadata of an NV index (after undefine).
    fn forget_nv(&mut self, handle: u32) {
        self.cache.nv.remove(&handle);
        if let Some(tr) = self.trs.remove(&handle) {
            self.esys.tr_close(tr);
        }
    }

    /// Reads PCR values of one bank, looping over the TPM's 8-values-per-call limit.
    pub(crate) fn pcr_read(&mut self, bank: PcrBank, pcrs: &[PcrIndex]) -> Result<PcrValues, TpmError> {
        let mut remaining: Vec<PcrIndex> = pcrs.to_vec();
        remaining.sort();
        remaining.dedup();
        let mut got: Vec<(u8, Vec<u8>)> = Vec::new();
        while let Some(first) = remaining.first().copied() {
            let sel = policy::pcr_selection_bytes(bank, &remaining);
            let (_counter, sel_out, values) = self.esys.pcr_read(&sel).map_err(|e| self.err(e))?;
            let mut returned: Vec<u8> = Vec::new();
            let count = usize::try_from(sel_out.count).unwrap_or(usize::MAX).min(sel_out.pcrSelections.len());
            for s in &sel_out.pcrSelections[..count] {
                if s.hash != bank.alg_id() {
                    continue;
                }
                let bytes = usize::from(s.sizeofSelect).min(s.pcrSelect.len());
                for (i, byte) in s.pcrSelect[..bytes].iter().enumerate() {
                    for b in 0..8u8 {
                        if byte & (1 << b) != 0 {
                            let pcr = u8::try_from(i * 8).ok().and_then(|v| v.checked_add(b));
                            returned.push(pcr.ok_or(TpmError::Unexpected("PCR selection"))?);
                        }
                    }
                }
            }
            if returned.is_empty() {
                return Err(TpmError::PcrBankUnavailable { bank, pcr: first.get() });
            }
            if returned.len() != values.len() {
                return Err(TpmError::Unexpected("PCR read result"));
            }
            for (pcr, v) in returned.into_iter().zip(values) {
                if !remaining.iter().any(|p| p.get() == pcr) {
                    return Err(TpmError::Unexpected("PCR in read result"));
                }
                remaining.retain(|p| p.get() != pcr);
                got.push((pcr, v));
            }
        }
        Ok(PcrValues::new(bank, got)?)
    }
}

/// Whether `e` is the TPM saying it has no room for another object or session.
fn is_out_of_room(e: &TpmError) -> bool {
    match e {
        TpmError::Command { rc, .. } => {
            rc.is_from_tpm()
                && matches!(
                    rc.base(),
                    codes::OBJECT_MEMORY | codes::SESSION_MEMORY | codes::SESSION_HANDLES | codes::OBJECT_HANDLES
                )
        }
        _ => false,
    }
}

/// A handle of a liveness or slot claim index (bulwark's bits indices).
fn is_liveness_handle(h: u32) -> bool {
    (LIVENESS_NV_BASE..=CLAIM_NV_BASE + 0xFF).contains(&h)
}

pub(crate) fn esys_error(spec: &TctiSpec, e: EsysError) -> TpmError {
    if e.rc.is_transport() {
        TpmError::Unreachable { spec: spec.to_string(), rc: e.rc, hint: spec.start_hint() }
    } else if e.rc.is_from_tpm() && e.rc.base() == crate::rc::codes::FAILURE {
        TpmError::FailureMode { cmd: e.cmd, rc: e.rc, hint: spec.failure_hint() }
    } else {
        TpmError::Command { cmd: e.cmd, rc: e.rc }
    }
}

// TPM_ALG_ID and TPMA_OBJECT values (Part 2, sections 6.3 and 8.3).
const ALG_ECC: u16 = 0x0023;
const ALG_AES: u16 = 0x0006;
const ALG_CFB: u16 = 0x0043;
const ALG_NULL: u16 = 0x0010;
const ECC_NIST_P256: u16 = 0x0003;
pub(crate) mod obj_attr {
    pub const FIXED_TPM: u32 = 1 << 1;
    pub const FIXED_PARENT: u32 = 1 << 4;
    pub const SENSITIVE_DATA_ORIGIN: u32 = 1 << 5;
    pub const USER_WITH_AUTH: u32 = 1 << 6;
    pub const NO_DA: u32 = 1 << 10;
    pub const RESTRICTED: u32 = 1 << 16;
    pub const DECRYPT: u32 = 1 << 17;
}

/// TPMA_OBJECT of the SRK: restricted decryption key, fixedTPM | fixedParent | sensitiveDataOrigin |
/// userWithAuth | noDA (TCG TPM v2.0 Provisioning Guidance, SRK template).
pub const SRK_ATTRIBUTES: u32 = obj_attr::FIXED_TPM
    | obj_attr::FIXED_PARENT
    | obj_attr::SENSITIVE_DATA_ORIGIN
    | obj_attr::USER_WITH_AUTH
    | obj_attr::NO_DA
    | obj_attr::RESTRICTED
    | obj_attr::DECRYPT;

/// The SRK's TPMT_PUBLIC up to (not including) `unique`: ECC P-256, SHA-256 name, empty authPolicy,
/// AES-128-CFB symmetric, NULL scheme and KDF.
fn srk_template_prefix() -> Vec<u8> {
    let mut t = Vec::with_capacity(26);
    t.extend_from_slice(&ALG_ECC.to_be_bytes());
    t.extend_from_slice(&policy::TPM_ALG_SHA256.to_be_bytes());
    t.extend_from_slice(&SRK_ATTRIBUTES.to_be_bytes());
    t.extend_from_slice(&0u16.to_be_bytes()); // authPolicy: empty
    t.extend_from_slice(&ALG_AES.to_be_bytes());
    t.extend_from_slice(&128u16.to_be_bytes());
    t.extend_from_slice(&ALG_CFB.to_be_bytes());
    t.extend_from_slice(&ALG_NULL.to_be_bytes()); // scheme
    t.extend_from_slice(&ECC_NIST_P256.to_be_bytes());
    t.extend_from_slice(&ALG_NULL.to_be_bytes()); // kdf
    t
}

/// The CreatePrimary template as TPM2B_PUBLIC wire bytes (unique: two empty coordinates).
fn srk_template_2b() -> Vec<u8> {
    let mut t = srk_template_prefix();
    t.extend_from_slice(&[0, 0, 0, 0]);
    let mut out = Vec::with_capacity(t.len() + 2);
    out.extend_from_slice(&u16::try_from(t.len()).unwrap_or(0).to_be_bytes());
    out.extend_from_slice(&t);
    out
}

/// Whether a TPM2B_PUBLIC (wire) is our SRK template with a 32-byte P-256 point as `unique`.
fn srk_public_matches(public: &[u8]) -> bool {
    let prefix = srk_template_prefix();
    let Some((size, rest)) = public.split_first_chunk::<2>() else { return false };
    if usize::from(u16::from_be_bytes(*size)) != rest.len() || !rest.starts_with(&prefix) {
        return false;
    }
    let unique = &rest[prefix.len()..];
    unique.len() == 68 && unique[..2] == [0, 32] && unique[34..36] == [0, 32]
}

impl Tpm {
    /// Opens the TPM at `spec` and checks it answers (TPM2_ReadClock). Secrets travel in sessions
    /// salted with the SRK except on a loopback swtpm (see [`SessionEncryption::Auto`]).
    pub fn open(spec: &TctiSpec) -> Result<Tpm, TpmError> {
        Self::open_with(spec, TpmOptions::default())
    }

    /// [`Tpm::open`] with options.
    pub fn open_with(spec: &TctiSpec, options: TpmOptions) -> Result<Tpm, TpmError> {
        let conf = CString::new(spec.loader_conf()).map_err(|_| TpmError::Unexpected("NUL in TCTI string"))?;
        Self::open_conf(spec, conf, options)
    }

    /// Opens `spec` through an arbitrary TCTI loader string (tests wrap the swtpm TCTI in `pcap:`).
    fn open_conf(spec: &TctiSpec, conf: CString, options: TpmOptions) -> Result<Tpm, TpmError> {
        quiet_tss_logging();
        let lock_path = lock_path(spec);
        let lock_file =
            open_lock_file(&lock_path).map_err(|source| TpmError::Lock { path: lock_path.clone(), source })?;
        let tpm = Tpm {
            spec: spec.clone(),
            conf,
            lock_path,
            encrypt: match options.encryption {
                SessionEncryption::Always => true,
                SessionEncryption::Auto => !spec.is_loopback_swtpm(),
            },
            state: Mutex::new(State {
                lock_file,
                conn: None,
                cache: Cache::default(),
                owner_auth: None,
                answered: false,
            }),
        };
        tpm.clock_info()?;
        Ok(tpm)
    }

    /// The endpoint.
    pub fn spec(&self) -> &TctiSpec {
        &self.spec
    }

    /// The owner hierarchy's authorization for the owner-authorized commands that follow (the SRK's
    /// creation, NV define, liveness writes); `None` for an empty one, as a TPM has after a clear.
    pub fn set_owner_auth(&self, auth: Option<SecretBytes>) {
        let mut guard = match self.state.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        guard.owner_auth = auth.filter(|a| !a.is_empty());
    }

    /// TPM2_HierarchyChangeAuth of the owner hierarchy from `from` to `to` (either may be empty). With
    /// `from == to` this changes nothing and only proves `from` is the current authorization. A wrong
    /// `from` is [`TpmError::OwnerAuthMismatch`]; owner authorization is not dictionary-attack protected,
    /// so a wrong guess costs nothing. Afterwards [`Tpm::set_owner_auth`] still decides what later
    /// commands use.
    pub fn change_owner_auth(&self, from: &[u8], to: &[u8]) -> Result<(), TpmError> {
        self.change_hierarchy_auth(crate::esys::RH_OWNER, from, to, |rc| TpmError::OwnerAuthMismatch { rc })
    }

    /// TPM2_HierarchyChangeAuth of the lockout hierarchy from `from` to `to` (either may be empty). Unlike
    /// the owner's, a wrong lockout authorization locks the lockout hierarchy for the TPM's
    /// lockoutRecovery time (TPM 2.0 Part 1, dictionary-attack protection), so callers first ask
    /// [`Tpm::lockout_auth_set`] instead of probing. A wrong `from` is [`TpmError::LockoutAuthMismatch`].
    pub fn change_lockout_auth(&self, from: &[u8], to: &[u8]) -> Result<(), TpmError> {
        self.change_hierarchy_auth(crate::esys::RH_LOCKOUT, from, to, |rc| TpmError::LockoutAuthMismatch { rc })
    }

    /// Whether the TPM's lockout authorization is set (TPMA_PERMANENT lockoutAuthSet, read with
    /// TPM2_GetCapability: no authorization, nothing counted against dictionary-attack protection).
    pub fn lockout_auth_set(&self) -> Result<bool, TpmError> {
        /// TPMA_PERMANENT bit 2 (Part 2, 8.6).
        const LOCKOUT_AUTH_SET: u32 = 1 << 2;
        self.op(|op| op.esys.permanent_attributes().map(|a| a & LOCKOUT_AUTH_SET != 0).map_err(|e| op.err(e)))
    }

    /// Closes the platform hierarchy until the TPM's next reset, as a server's firmware does before the OS
    /// runs: TPM2_HierarchyControl(TPM_RH_PLATFORM, NO) under the platform's authorization, which a TPM
    /// has empty after TPM2_Startup(CLEAR) until someone sets it. Afterwards nothing can use the platform
    /// hierarchy (TPM2_Clear, NV_UndefineSpace of owner indices, platform NV) until the next power cycle.
    /// Reads TPMA_STARTUP_CLEAR first, so a hierarchy already closed is left as it is. A platform
    /// authorization someone else has set is [`TpmError::PlatformAuthSet`] (the platform's authorization
    /// is not dictionary-attack protected, so the attempt costs nothing).
    pub fn close_platform_hierarchy(&self) -> Result<PlatformHierarchy, TpmError> {
        self.op(|op| {
            if op.esys.startup_clear_attributes().map_err(|e| op.err(e))? & PH_ENABLE == 0 {
                return Ok(PlatformHierarchy::AlreadyClosed);
            }
            op.esys.disable_platform_hierarchy().map_err(|e| {
                if e.rc.is_from_tpm() && matches!(e.rc.base(), codes::BAD_AUTH | codes::AUTH_FAIL) {
                    TpmError::PlatformAuthSet { rc: e.rc }
                } else {
                    op.err(e)
                }
            })?;
            Ok(PlatformHierarchy::Closed)
        })
    }

    /// Whether the platform hierarchy is enabled (TPMA_STARTUP_CLEAR phEnable; no authorization needed).
    pub fn platform_hierarchy_enabled(&self) -> Result<bool, TpmError> {
        self.op(|op| op.esys.startup_clear_attributes().map(|a| a & PH_ENABLE != 0).map_err(|e| op.err(e)))
    }

    fn change_hierarchy_auth(
        &self,
        hierarchy: crate::esys::Tr,
        from: &[u8],
        to: &[u8],
        mismatch: impl Fn(TpmRc) -> TpmError,
    ) -> Result<(), TpmError> {
        self.op(|op| {
            op.esys.tr_set_auth(hierarchy, from).map_err(|e| op.err(e))?;
            let changed = op.esys.hierarchy_change_auth(hierarchy, to);
            // Back to what `op` set (the next operation sets it again in any case).
            op.esys.tr_set_auth(hierarchy, &[]).map_err(|e| op.err(e))?;
            changed.map_err(|e| {
                if e.rc.is_from_tpm() && matches!(e.rc.base(), codes::BAD_AUTH | codes::AUTH_FAIL) {
                    mismatch(e.rc)
                } else {
                    op.err(e)
                }
            })
        })
    }

    /// Whether this `Tpm` salts its sessions for parameter encryption.
    pub fn encrypts_sessions(&self) -> bool {
        self.encrypt
    }

    /// Test hook: opens `spec` through the TCTI loader string `conf`.
    #[cfg(test)]
    pub(crate) fn open_with_conf_for_test(spec: &TctiSpec, conf: &str, options: TpmOptions) -> Result<Tpm, TpmError> {
        let conf = CString::new(conf).map_err(|_| TpmError::Unexpected("NUL in TCTI string"))?;
        Self::open_conf(spec, conf, options)
    }

    /// Runs one logical operation: takes the mutex and the cross-process lock, connects if needed,
    /// runs `f`, flushes every transient object and session `f` created (also on error), and — for
    /// endpoints that serve one client at a time — disconnects before releasing the lock.
    pub(crate) fn op<T>(&self, mut f: impl FnMut(&mut Op<'_>) -> Result<T, TpmError>) -> Result<T, TpmError> {
        let mut guard = match self.state.lock() {
            Ok(g) => g,
            Err(poisoned) => {
                // A panic mid-operation: the connection may hold half-done state; drop it.
                let mut g = poisoned.into_inner();
                g.conn = None;
                g
            }
        };
        let state = &mut *guard;
        let _contexts = crate::ossl::SharedContexts::enter();
        let _held = Held::acquire(&mut state.lock_file, &self.lock_path)
            .map_err(|source| TpmError::Lock { path: self.lock_path.clone(), source })?;
        if !state.answered {
            self.spec.check_answers(SWTPM_ANSWER_WAIT).map_err(|silent| TpmError::NotAnswering {
                spec: self.spec.to_string(),
                waited_s: SWTPM_ANSWER_WAIT.as_secs(),
                why: match silent {
                    Silent::NoAnswer => "it took the connection and sent nothing back",
                    Silent::NotATpm => "what came back is not a TPM response",
                },
            })?;
            state.answered = true;
        }
        if state.conn.is_none() {
            let esys = Esys::connect(&self.conf).map_err(|e| TpmError::Unreachable {
                spec: self.spec.to_string(),
                rc: e.rc,
                hint: self.spec.start_hint(),
            })?;
            state.conn = Some(Conn { esys, trs: HashMap::new(), owner_auth_set: false });
        }
        let Some(conn) = state.conn.as_mut() else { return Err(TpmError::Unexpected("connection state")) };
        // The owner authValue is local ESAPI state (no TPM round trip): set for this operation only, and
        // overwritten in ESAPI's memory when it ends (below), so it does not outlive the operation there.
        if let Some(auth) = &state.owner_auth {
            conn.esys
                .tr_set_auth(crate::esys::RH_OWNER, auth.expose_secret())
                .map_err(|e| esys_error(&self.spec, e))?;
            conn.owner_auth_set = true;
        }
        let mut op = Op {
            esys: &mut conn.esys,
            trs: &mut conn.trs,
            cache: &mut state.cache,
            spec: &self.spec,
            encrypt: self.encrypt,
        };
        let mut result = f(&mut op);
        if result.as_ref().is_err_and(is_out_of_room) && !self.spec.has_resource_manager() {
            // The operation holds this TPM for itself (the cross-process lock), so what fills it was left
            // by a bulwark process that died mid-operation: flush that and run the operation once more.
            let _ = op.esys.flush_all();
            match op.esys.flush_left_over() {
                Ok(n) if n > 0 => {
                    tracing::warn!(tpm = %self.spec, flushed = n, "flushed objects and sessions an interrupted process left in the TPM");
                    result = f(&mut op);
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(tpm = %self.spec, error = %esys_error(&self.spec, e), "could not flush what fills the TPM")
                }
            }
        }
        if conn.owner_auth_set {
            // Best effort: a broken connection is dropped below, and ESAPI's copy with it.
            let _ = conn.esys.tr_set_auth(crate::esys::RH_OWNER, &[]);
            conn.owner_auth_set = false;
        }
        let flushed = conn.esys.flush_all();
        let broken = matches!(result, Err(TpmError::Unreachable { .. })) || flushed.is_err();
        if broken || !self.spec.keeps_connection() {
            // Dropping the connection closes ESAPI's handles and the socket/device.
            state.conn = None;
        }
        match (result, flushed) {
            (Ok(_), Err(e)) => Err(esys_error(&self.spec, e)),
            (r, _) => r,
        }
    }

    /// Makes sure the SRK exists at [`SRK_HANDLE`] (CreatePrimary + EvictControl on first use) and
    /// has the expected template (else [`TpmError::SrkMismatch`]).
    pub fn ensure_srk(&self) -> Result<(), TpmError> {
        self.op(|op| {
            // Re-verify even if cached: this is the explicit check.
            op.cache.srk = None;
            if let Some(tr) = op.trs.remove(&SRK_HANDLE) {
                op.esys.tr_close(tr);
            }
            op.srk().map(|_| ())
        })
    }

    /// The public area (TPM2B_PUBLIC wire bytes) of the SRK at [`SRK_HANDLE`], verified as every use of
    /// it is, or `None` when there is none; never creates one. Its unique point comes from the owner
    /// hierarchy's seed, so it names this TPM as long as nobody clears it: another TPM, or this one after
    /// TPM2_Clear, has another SRK or none. Costs no TPM command beyond the ones the SRK's first use
    /// in this `Tpm` makes anyway.
    pub fn srk_public(&self) -> Result<Option<Vec<u8>>, TpmError> {
        self.op(|op| match op.find_srk(false)? {
            Some(_) => Ok(op.cache.srk_public.clone()),
            None => Ok(None),
        })
    }

    /// Reads PCR values of `bank`.
    pub fn pcr_read(&self, bank: PcrBank, pcrs: &[PcrIndex]) -> Result<PcrValues, TpmError> {
        self.op(|op| op.pcr_read(bank, pcrs))
    }

    /// Extends `pcr` with one digest per bank (each the bank's length) in one TPM2_PCR_Extend.
    pub fn pcr_extend(&self, pcr: PcrIndex, digests: &[(PcrBank, &[u8])]) -> Result<(), TpmError> {
        let mut list = Vec::with_capacity(4 + digests.len() * 66);
        list.extend_from_slice(
            &u32::try_from(digests.len()).map_err(|_| TpmError::Unexpected("digest count"))?.to_be_bytes(),
        );
        for (bank, d) in digests {
            if d.len() != bank.digest_len() {
                return Err(PolicyError::ValueLength {
                    pcr: pcr.get(),
                    bank: *bank,
                    expected: bank.digest_len(),
                    got: d.len(),
                }
                .into());
            }
            list.extend_from_slice(&bank.alg_id().to_be_bytes());
            list.extend_from_slice(d);
        }
        self.op(|op| op.esys.pcr_extend(pcr.get(), &list).map_err(|e| op.err(e)))
    }

    /// Extends `pcr` in each of `banks` with that bank's hash of `data` (how a measurement is recorded).
    pub fn pcr_extend_data(&self, pcr: PcrIndex, data: &[u8], banks: &[PcrBank]) -> Result<(), TpmError> {
        let digests: Vec<(PcrBank, Vec<u8>)> = banks.iter().map(|b| (*b, hash_for_bank(*b, data))).collect();
        let refs: Vec<(PcrBank, &[u8])> = digests.iter().map(|(b, d)| (*b, d.as_slice())).collect();
        self.pcr_extend(pcr, &refs)
    }

    /// TPM2_ReadClock.
    pub fn clock_info(&self) -> Result<ClockInfo, TpmError> {
        let t = self.op(|op| op.esys.read_clock().map_err(|e| op.err(e)))?;
        Ok(ClockInfo {
            time_ms: t.time,
            clock_ms: t.clock,
            reset_count: t.reset_count,
            restart_count: t.restart_count,
            safe: t.safe,
        })
    }

    /// The TPM's reset count (increments on every power cycle / Startup(CLEAR)).
    pub fn reset_count(&self) -> Result<u32, TpmError> {
        Ok(self.clock_info()?.reset_count)
    }

    /// Defines liveness index `k` (handle [`LIVENESS_NV_BASE`] + k) if missing and marks it written
    /// (TPM2_NV_SetBits with 0), so PolicyNV can use it. An existing index must have exactly the
    /// liveness attributes and size, else [`TpmError::LivenessIndexMismatch`]. Idempotent.
    pub fn liveness_ensure_index(&self, k: u8) -> Result<(), TpmError> {
        self.op(|op| ensure_bits_index(op, LIVENESS_NV_BASE, k).map(|_| ()))
    }

    /// Hands out the first tenant slot numbered `from` or higher that was never handed out on this TPM
    /// (its bit in the claim indices at [`CLAIM_NV_BASE`] is clear), marks it handed out, and returns
    /// its number. The bit cannot be cleared again short of undefining the index, which needs the owner
    /// authorization the appliance keeps sealed. The first claim on a TPM (claim index 0 not defined
    /// yet) also marks every slot below `from` as handed out: slots given out before claims existed.
    pub fn liveness_claim_from(&self, from: u32) -> Result<u32, TpmError> {
        self.op(|op| {
            if ensure_bits_index(op, CLAIM_NV_BASE, 0)? && from > 0 {
                let last = from - 1;
                for k in 0..=last / 64 {
                    let index_no = u8::try_from(k).map_err(|_| TpmError::SlotsExhausted)?;
                    ensure_bits_index(op, CLAIM_NV_BASE, index_no)?;
                    let bits = if k < last / 64 { u64::MAX } else { u64::MAX >> (63 - last % 64) };
                    let tr = op.nv(CLAIM_NV_BASE + k)?;
                    op.esys.nv_set_bits_owner(tr, bits).map_err(|e| op.err(e))?;
                }
            }
            let mut n = from;
            loop {
                let slot = LivenessSlot::from_counter(n).ok_or(TpmError::SlotsExhausted)?;
                let handle = CLAIM_NV_BASE + u32::from(slot.index_no());
                ensure_bits_index(op, CLAIM_NV_BASE, slot.index_no())?;
                let taken = read_bits(op, handle)?;
                if let Some(bit) = (slot.bit()..64).find(|b| taken & (1u64 << b) == 0) {
                    let tr = op.nv(handle)?;
                    op.esys.nv_set_bits_owner(tr, 1u64 << bit).map_err(|e| op.err(e))?;
                    return Ok(u32::from(slot.index_no()) * 64 + u32::from(bit));
                }
                n = (u32::from(slot.index_no()) + 1) * 64;
            }
        })
    }

    /// Whether the tenant owning `slot` is alive (its bit is clear).
    pub fn liveness_is_alive(&self, slot: LivenessSlot) -> Result<bool, TpmError> {
        self.op(|op| read_liveness_bits(op, slot).map(|bits| bits & (1u64 << slot.bit()) == 0))
    }

    /// Deletes the tenant owning `slot` forever: sets its bit (TPM2_NV_SetBits). Bits cannot be
    /// cleared short of undefining the whole index, so every copy of the tenant's sealed objects,
    /// including restored backups, stops unsealing. Idempotent.
    pub fn liveness_kill(&self, slot: LivenessSlot) -> Result<(), TpmError> {
        self.op(|op| {
            let tr = op.nv(slot.nv_handle())?;
            op.esys.nv_set_bits_owner(tr, 1u64 << slot.bit()).map_err(|e| op.err(e))
        })
    }

    /// Defines an NV index in the owner hierarchy with an empty authValue.
    pub fn nv_define(&self, public: &NvPublic) -> Result<(), TpmError> {
        check_nv_handle(public.index)?;
        self.op(|op| {
            let tr = op.esys.nv_define_owner(&public.marshal()).map_err(|e| op.err(e))?;
            op.esys.tr_close(tr);
            Ok(())
        })
    }

    /// TPM2_NV_ReadPublic.
    pub fn nv_read_public(&self, index: u32) -> Result<NvPublic, TpmError> {
        check_nv_handle(index)?;
        self.op(|op| op.nv_public(index))
    }

    /// Reads `len` bytes at `offset`, authorized by the owner if the index has OWNERREAD, else by
    /// its own (empty) authValue.
    pub fn nv_read(&self, index: u32, len: u16, offset: u16) -> Result<Vec<u8>, TpmError> {
        check_nv_handle(index)?;
        self.op(|op| {
            let by_owner = op.nv_public(index)?.attributes & nv_attr::OWNERREAD != 0;
            let tr = op.nv(index)?;
            op.esys.nv_read(tr, by_owner, len, offset).map_err(|e| op.err(e))
        })
    }

    /// Writes `data` at `offset`, authorized by the owner if the index has OWNERWRITE, else by its
    /// own (empty) authValue.
    pub fn nv_write(&self, index: u32, data: &[u8], offset: u16) -> Result<(), TpmError> {
        check_nv_handle(index)?;
        self.op(|op| {
            let by_owner = op.nv_public(index)?.attributes & nv_attr::OWNERWRITE != 0;
            let tr = op.nv(index)?;
            op.esys.nv_write(tr, by_owner, data, offset).map_err(|e| op.err(e))
        })
    }

    /// Undefines an owner NV index.
    pub fn nv_undefine(&self, index: u32) -> Result<(), TpmError> {
        check_nv_handle(index)?;
        self.op(|op| {
            let tr = op.nv(index)?;
            match op.esys.nv_undefine_owner(tr) {
                Ok(()) => {
                    // ESAPI closed the handle itself.
                    op.trs.remove(&index);
                    op.cache.nv.remove(&index);
                    Ok(())
                }
                Err(e) => {
                    op.forget_nv(index);
                    Err(op.err(e))
                }
            }
        })
    }

    /// Runs `steps` in a TPM trial session and returns the TPM's policy digest (TPM2_PolicyGetDigest):
    /// the reference the offline [`crate::policy`] functions are checked against.
    pub fn trial_policy(&self, steps: &[PolicyStep<'_>]) -> Result<PolicyDigest, TpmError> {
        self.op(|op| {
            let s = op.esys.start_session(SessionKind::Trial, None).map_err(|e| op.err(e))?;
            for step in steps {
                match step {
                    PolicyStep::Pcr { bank, pcrs, composite } => {
                        let sel = policy::pcr_selection_bytes(*bank, pcrs);
                        op.esys.policy_pcr(s, Some(composite), &sel).map_err(|e| op.err(e))?;
                    }
                    PolicyStep::Nv { index, operand_b, offset, op: nv_op } => {
                        let nv = op.nv(*index)?;
                        op.esys.policy_nv(s, nv, operand_b, *offset, nv_op.code()).map_err(|e| op.err(e))?;
                    }
                    PolicyStep::AuthValue => op.esys.policy_auth_value(s).map_err(|e| op.err(e))?,
                    PolicyStep::Or(branches) => op.esys.policy_or(s, branches).map_err(|e| op.err(e))?,
                }
            }
            let d = op.esys.policy_get_digest(s).map_err(|e| op.err(e))?;
            op.esys.flush(s).map_err(|e| op.err(e))?;
            d.try_into().map_err(|_| TpmError::Unexpected("policy digest size"))
        })
    }
}

pub(crate) fn read_liveness_bits(op: &mut Op<'_>, slot: LivenessSlot) -> Result<u64, TpmError> {
    read_bits(op, slot.nv_handle())
}

/// The 64 bits of the bits index at `handle` (read with its own empty authValue).
fn read_bits(op: &mut Op<'_>, handle: u32) -> Result<u64, TpmError> {
    let tr = op.nv(handle)?;
    let bytes = op.esys.nv_read(tr, false, 8, 0).map_err(|e| {
        if e.rc.is_from_tpm() && e.rc.base() == codes::NV_UNINITIALIZED {
            TpmError::LivenessIndexMissing { index: handle }
        } else {
            op.err(e)
        }
    })?;
    let arr: [u8; 8] = bytes.try_into().map_err(|_| TpmError::Unexpected("liveness index size"))?;
    Ok(u64::from_be_bytes(arr))
}

/// Defines bits index `k` of the family at `base` (liveness or slot claims) if missing and marks it
/// written (TPM2_NV_SetBits with 0), so it can be read and bound by PolicyNV; returns whether it was
/// defined now. An existing index must have exactly the attributes and size bulwark defines.
fn ensure_bits_index(op: &mut Op<'_>, base: u32, k: u8) -> Result<bool, TpmError> {
    let handle = base + u32::from(k);
    let mut defined = false;
    let tr = match op.nv(handle) {
        Ok(tr) => tr,
        Err(TpmError::LivenessIndexMissing { .. }) => {
            let tr = op.esys.nv_define_owner(&bits_public(base, k, false).marshal()).map_err(|e| op.err(e))?;
            op.trs.insert(handle, tr);
            defined = true;
            tr
        }
        Err(e) => return Err(e),
    };
    let (public, _name) = op.esys.nv_read_public(tr).map_err(|e| op.err(e))?;
    if public == bits_public(base, k, false).marshal() {
        op.esys.nv_set_bits_owner(tr, 0).map_err(|e| op.err(e))?;
    } else if public != bits_public(base, k, true).marshal() {
        return Err(if base == CLAIM_NV_BASE {
            TpmError::ClaimIndexMismatch { index: handle }
        } else {
            TpmError::LivenessIndexMismatch { index: handle }
        });
    }
    // Refresh the cached metadata so it carries WRITTEN.
    let blob = op.esys.tr_serialize(tr).map_err(|e| op.err(e))?;
    op.cache.nv.insert(handle, blob);
    Ok(defined)
}

fn check_nv_handle(index: u32) -> Result<(), TpmError> {
    if index >> 24 == 0x01 { Ok(()) } else { Err(TpmError::NvIndexRange(index)) }
}

/// Parses TPMS_NV_PUBLIC wire bytes with a SHA-256 name algorithm.
fn parse_nv_public(w: &[u8]) -> Option<NvPublic> {
    let index = u32::from_be_bytes(w.get(0..4)?.try_into().ok()?);
    let alg = u16::from_be_bytes(w.get(4..6)?.try_into().ok()?);
    let attributes = u32::from_be_bytes(w.get(6..10)?.try_into().ok()?);
    let plen = usize::from(u16::from_be_bytes(w.get(10..12)?.try_into().ok()?));
    let auth_policy = w.get(12..12 + plen)?.to_vec();
    let data_size = u16::from_be_bytes(w.get(12 + plen..14 + plen)?.try_into().ok()?);
    if alg != policy::TPM_ALG_SHA256 || w.len() != 14 + plen {
        return None;
    }
    Some(NvPublic { index, attributes, auth_policy, data_size })
}

/// The bank's hash of `data`.
pub fn hash_for_bank(bank: PcrBank, data: &[u8]) -> Vec<u8> {
    match bank {
        PcrBank::Sha1 => Sha1::digest(data).to_vec(),
        PcrBank::Sha256 => Sha256::digest(data).to_vec(),
        PcrBank::Sha384 => Sha384::digest(data).to_vec(),
        PcrBank::Sha512 => Sha512::digest(data).to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tpm_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<Tpm>();
    }

    #[test]
    fn a_tpm_in_failure_mode_is_named_with_what_to_do_for_its_kind() {
        let failure = || EsysError { cmd: "TPM2_ReadClock", rc: TpmRc(0x101) };
        let managed = TctiSpec::SwtpmSocket { dir: "/var/lib/bulwark/swtpm".into() };
        let e = esys_error(&managed, failure());
        assert!(matches!(e, TpmError::FailureMode { .. }), "{e:?}");
        let shown = e.to_string();
        assert!(shown.contains("TPM2_ReadClock failed: the TPM is in failure mode (TPM_RC_FAILURE"), "{shown}");
        assert!(shown.contains("/var/lib/bulwark/swtpm") && shown.contains("full disk"), "{shown}");
        let device = TctiSpec::Device { path: "/dev/tpmrm0".into() };
        assert!(esys_error(&device, failure()).to_string().contains("restarted"));
        // Any other TPM code stays a plain command failure.
        let other = esys_error(&managed, EsysError { cmd: "TPM2_Load", rc: TpmRc(0x084) });
        assert!(matches!(other, TpmError::Command { .. }), "{other:?}");
    }

    #[test]
    fn srk_template_shape() {
        let t = srk_template_2b();
        assert_eq!(t.len(), 2 + 26);
        assert_eq!(&t[6..10], &0x0003_0472u32.to_be_bytes());
        let mut good = srk_template_prefix();
        good.extend_from_slice(&[0, 32]);
        good.extend_from_slice(&[1; 32]);
        good.extend_from_slice(&[0, 32]);
        good.extend_from_slice(&[2; 32]);
        let mut wire = u16::try_from(good.len()).unwrap().to_be_bytes().to_vec();
        wire.extend_from_slice(&good);
        assert!(srk_public_matches(&wire));
        wire[8] ^= 0x40; // drop userWithAuth
        assert!(!srk_public_matches(&wire));
    }

    #[test]
    fn liveness_slots() {
        let s = LivenessSlot::new(3, 63).unwrap();
        assert_eq!(s.nv_handle(), 0x0142_5703);
        assert_eq!(s.operand(), [0x80, 0, 0, 0, 0, 0, 0, 0]);
        assert!(LivenessSlot::new(0, 64).is_err());
        assert_eq!(LivenessSlot::from_counter(65), Some(LivenessSlot::new(1, 1).unwrap()));
        assert_eq!(LivenessSlot::from_counter(256 * 64), None);
        assert_eq!(LIVENESS_NV_ATTRIBUTES, 0x0204_0022);
    }

    #[test]
    fn nv_public_round_trip() {
        let p = liveness_public(9, true);
        assert_eq!(parse_nv_public(&p.marshal()), Some(p));
    }

    // ---- against a real swtpm (one per test) ----

    use crate::policy::{POLICY_START, policy_auth_value, policy_authorize, policy_nv, policy_or, policy_pcr_digest};
    use crate::swtpm::Swtpm;
    use std::process::Command;

    fn start(dir: &std::path::Path) -> (Swtpm, Tpm) {
        let sw = Swtpm::start(dir).unwrap();
        let tpm = Tpm::open(&sw.tcti().parse().unwrap()).unwrap();
        (sw, tpm)
    }

    fn idx(list: &[u8]) -> Vec<PcrIndex> {
        list.iter().map(|p| PcrIndex::new(u32::from(*p)).unwrap()).collect()
    }

    /// Runs a tpm2-tools command against the swtpm and returns its stdout.
    fn tpm2_tool(tcti: &str, cwd: &std::path::Path, args: &[&str]) -> String {
        let out = Command::new(args[0])
            .args(&args[1..])
            .current_dir(cwd)
            .env("TPM2TOOLS_TCTI", tcti)
            .env("TSS2_LOG", "all+NONE")
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        if args[0] == "tpm2_createpolicy" {
            // tpm2-tools leaves its trial session loaded (swtpm has no resource manager to clean up).
            let st = Command::new("tpm2_flushcontext")
                .arg("-l")
                .env("TPM2TOOLS_TCTI", tcti)
                .env("TSS2_LOG", "all+NONE")
                .status();
            assert!(st.unwrap().success());
        }
        String::from_utf8(out.stdout).unwrap()
    }

    #[test]
    fn offline_pcr_policy_matches_trial_session_and_tpm2_tools() {
        let dir = tempfile::tempdir().unwrap();
        let (sw, tpm) = start(&dir.path().join("state"));
        let sets: [&[u8]; 5] =
            [&[0], &[4, 7], &[0, 1, 2, 3, 4, 5, 6, 7], &[7, 11, 23], &[1, 9, 10, 14, 15, 16, 17, 18, 19, 22]];
        for bank in [PcrBank::Sha1, PcrBank::Sha256] {
            for (n, set) in sets.iter().enumerate() {
                let values: Vec<(u8, Vec<u8>)> = set
                    .iter()
                    .map(|p| {
                        (*p, (0..bank.digest_len()).map(|i| (i * 31 + usize::from(*p) + n).to_be_bytes()[7]).collect())
                    })
                    .collect();
                let offline = policy_pcr_digest(bank, &values).unwrap();
                let pv = PcrValues::new(bank, values.clone()).unwrap();
                let pcrs = idx(set);
                let trial =
                    tpm.trial_policy(&[PolicyStep::Pcr { bank, pcrs: &pcrs, composite: pv.composite() }]).unwrap();
                assert_eq!(offline, trial, "{bank} {set:?}: offline vs TPM trial session");
                if set.len() > 8 {
                    continue; // tpm2_createpolicy takes at most 8 PCRs
                }
                let file: Vec<u8> = values.iter().flat_map(|(_, v)| v.clone()).collect();
                std::fs::write(dir.path().join("pcrs.bin"), file).unwrap();
                let list = format!("{bank}:{}", set.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(","));
                let printed = tpm2_tool(
                    &sw.tcti(),
                    dir.path(),
                    &["tpm2_createpolicy", "--policy-pcr", "-l", &list, "-f", "pcrs.bin", "-L", "out.bin"],
                );
                assert_eq!(printed.trim(), hex::encode(offline), "{list}: offline vs tpm2_createpolicy");
                assert_eq!(std::fs::read(dir.path().join("out.bin")).unwrap(), offline.to_vec());
            }
        }
        // Current values: what the TPM reads itself (PolicyPCR with an empty digest in a trial session
        // uses the live PCRs) equals the offline digest over a pcr_read.
        let live = tpm.pcr_read(PcrBank::Sha256, &idx(&[4, 7])).unwrap();
        let printed = tpm2_tool(
            &sw.tcti(),
            dir.path(),
            &["tpm2_createpolicy", "--policy-pcr", "-l", "sha256:4,7", "-L", "live.bin"],
        );
        assert_eq!(printed.trim(), hex::encode(crate::policy::policy_pcr(&POLICY_START, &live)));
    }

    #[test]
    fn slot_claims_hand_each_slot_out_once_whatever_number_is_asked_for() {
        let dir = tempfile::tempdir().unwrap();
        let (sw, tpm) = start(&dir.path().join("state"));
        // The first claim on this TPM, from 3 (as a registry that handed out 0..=2 before claims
        // existed asks): 0..=2 are marked handed out with it.
        assert_eq!(tpm.liveness_claim_from(3).unwrap(), 3);
        assert_eq!(tpm.liveness_claim_from(0).unwrap(), 4);
        assert_eq!(tpm.liveness_claim_from(2).unwrap(), 5);
        // Past the end of an index into the next one; the search starts where it is asked to.
        assert_eq!(tpm.liveness_claim_from(63).unwrap(), 63);
        assert_eq!(tpm.liveness_claim_from(63).unwrap(), 64);
        assert_eq!(tpm.liveness_claim_from(10).unwrap(), 10);
        assert_eq!(tpm.liveness_claim_from(200).unwrap(), 200);
        // Claims are TPM state: a new connection after a restart of the TPM sees them.
        drop(tpm);
        drop(sw);
        let (_sw, tpm) = start(&dir.path().join("state"));
        assert_eq!(tpm.liveness_claim_from(3).unwrap(), 6);
        assert_eq!(tpm.liveness_claim_from(200).unwrap(), 201);
        assert!(matches!(tpm.liveness_claim_from(256 * 64), Err(TpmError::SlotsExhausted)));
        // An index at a claim handle that bulwark did not define is refused by name.
        let squatter = NvPublic {
            index: CLAIM_NV_BASE + 9,
            attributes: nv_attr::OWNERWRITE | nv_attr::AUTHREAD | nv_attr::NO_DA,
            auth_policy: Vec::new(),
            data_size: 8,
        };
        tpm.nv_define(&squatter).unwrap();
        assert!(matches!(tpm.liveness_claim_from(9 * 64), Err(TpmError::ClaimIndexMismatch { index: 0x0142_5809 })));
    }

    #[test]
    fn offline_nv_or_authvalue_authorize_match_the_tpm() {
        let dir = tempfile::tempdir().unwrap();
        let (sw, tpm) = start(&dir.path().join("state"));
        tpm.liveness_ensure_index(2).unwrap();
        let slot = LivenessSlot::new(2, 17).unwrap();
        // NV Name computed offline equals the TPM's (attributes include WRITTEN).
        assert_eq!(tpm.nv_read_public(slot.nv_handle()).unwrap(), slot.nv_public());
        let av = policy_auth_value(&POLICY_START);
        assert_eq!(tpm.trial_policy(&[PolicyStep::AuthValue]).unwrap(), av);
        let name = slot.nv_public().name();
        for (operand, offset, op) in [
            (slot.operand().to_vec(), 0u16, NvOperation::BitClear),
            (vec![0, 0, 0, 0, 0, 0, 0, 1], 0, NvOperation::BitSet),
            (vec![0x12, 0x34], 6, NvOperation::Eq),
            (vec![0x00], 7, NvOperation::UnsignedLe),
        ] {
            let offline = policy_nv(&av, &operand, offset, op, &name).unwrap();
            let trial = tpm
                .trial_policy(&[
                    PolicyStep::AuthValue,
                    PolicyStep::Nv { index: slot.nv_handle(), operand_b: &operand, offset, op },
                ])
                .unwrap();
            assert_eq!(offline, trial, "PolicyNV {op:?} offset {offset}");
        }
        let pv = PcrValues::new(PcrBank::Sha256, [(4, vec![4; 32]), (7, vec![7; 32])]).unwrap();
        let sp = crate::seal::SealPolicy::new(pv.clone(), slot);
        let pcrs = pv.pcrs();
        let pcr_step = PolicyStep::Pcr { bank: PcrBank::Sha256, pcrs: &pcrs, composite: pv.composite() };
        let operand = slot.operand();
        let nv_step =
            PolicyStep::Nv { index: slot.nv_handle(), operand_b: &operand, offset: 0, op: NvOperation::BitClear };
        assert_eq!(tpm.trial_policy(&[pcr_step.clone(), nv_step.clone()]).unwrap(), sp.normal_branch());
        assert_eq!(tpm.trial_policy(&[PolicyStep::AuthValue, nv_step.clone()]).unwrap(), sp.recovery_branch());
        let branches = [sp.normal_branch(), sp.recovery_branch()];
        assert_eq!(tpm.trial_policy(&[pcr_step, nv_step, PolicyStep::Or(&branches)]).unwrap(), sp.auth_policy());
        let three = [[1u8; 32], [2; 32], [3; 32]];
        assert_eq!(tpm.trial_policy(&[PolicyStep::Or(&three)]).unwrap(), policy_or(&three).unwrap());
        // PolicyAuthorize: offline vs tpm2_policyauthorize in a trial session (no ticket needed there).
        let mut key_name = vec![0x00, 0x0B];
        key_name.extend_from_slice(&[0xA5; 32]);
        std::fs::write(dir.path().join("key.name"), &key_name).unwrap();
        std::fs::write(dir.path().join("approved.bin"), [0x11; 32]).unwrap();
        std::fs::write(dir.path().join("ref.bin"), b"bulwark-runtime").unwrap();
        let tcti = sw.tcti();
        tpm2_tool(&tcti, dir.path(), &["tpm2_startauthsession", "-S", "s.ctx"]);
        let printed = tpm2_tool(
            &tcti,
            dir.path(),
            &[
                "tpm2_policyauthorize",
                "-S",
                "s.ctx",
                "-i",
                "approved.bin",
                "-q",
                "ref.bin",
                "-n",
                "key.name",
                "-L",
                "az.bin",
            ],
        );
        tpm2_tool(&tcti, dir.path(), &["tpm2_flushcontext", "s.ctx"]);
        let offline = policy_authorize(&key_name, b"bulwark-runtime");
        assert_eq!(std::fs::read(dir.path().join("az.bin")).unwrap(), offline.to_vec(), "{printed}");
    }

    #[test]
    fn an_owner_authorization_guards_liveness_indices_and_is_proved_by_a_null_change() {
        let dir = tempfile::tempdir().unwrap();
        let (sw, tpm) = start(&dir.path().join("state"));
        tpm.ensure_srk().unwrap();
        tpm.liveness_ensure_index(0).unwrap();
        let auth = [0x5a_u8; 32];
        tpm.change_owner_auth(&[], &auth).unwrap();
        // The empty authorization no longer works, for us or for tpm2-tools.
        assert!(matches!(tpm.change_owner_auth(&[], &[]), Err(TpmError::OwnerAuthMismatch { .. })));
        assert!(tpm.liveness_ensure_index(1).is_err());
        let out = Command::new("tpm2_nvundefine")
            .env("TPM2TOOLS_TCTI", sw.tcti())
            .env("TSS2_LOG", "all+NONE")
            .args(["-C", "o", &format!("{:#x}", LIVENESS_NV_BASE)])
            .output()
            .unwrap();
        assert!(!out.status.success(), "the liveness index was undefined with an empty owner authorization");
        // With it set, owner commands work; a change to itself proves it and changes nothing.
        tpm.set_owner_auth(Some(SecretBytes::from_slice(&auth)));
        tpm.liveness_ensure_index(1).unwrap();
        tpm.liveness_kill(LivenessSlot::new(1, 3).unwrap()).unwrap();
        tpm.change_owner_auth(&auth, &auth).unwrap();
        assert!(!tpm.liveness_is_alive(LivenessSlot::new(1, 3).unwrap()).unwrap());
        // And back to empty, as after a clear.
        tpm.change_owner_auth(&auth, &[]).unwrap();
        tpm.set_owner_auth(None);
        tpm.liveness_ensure_index(2).unwrap();
    }

    #[test]
    fn a_closed_platform_hierarchy_refuses_clear_and_undefine_until_the_next_power_cycle() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let (sw, tpm) = start(&state);
        let tool = |sw: &Swtpm, args: &[&str]| {
            Command::new(args[0])
                .env("TPM2TOOLS_TCTI", sw.tcti())
                .env("TSS2_LOG", "all+NONE")
                .args(&args[1..])
                .output()
                .unwrap()
        };
        tpm.ensure_srk().unwrap();
        tpm.liveness_ensure_index(0).unwrap();
        let index = format!("{:#x}", LIVENESS_NV_BASE);
        assert!(tpm.platform_hierarchy_enabled().unwrap(), "a swtpm after startup-clear has it open");
        assert_eq!(tpm.close_platform_hierarchy().unwrap(), PlatformHierarchy::Closed);
        assert!(!tpm.platform_hierarchy_enabled().unwrap());
        assert_eq!(tpm.close_platform_hierarchy().unwrap(), PlatformHierarchy::AlreadyClosed);
        // Neither a clear nor an undefine of the owner's index goes through the platform now.
        let out = tool(&sw, &["tpm2_clear", "-c", "p"]);
        assert!(!out.status.success(), "tpm2_clear -c p succeeded on a closed platform hierarchy");
        let out = tool(&sw, &["tpm2_nvundefine", "-C", "p", &index]);
        assert!(!out.status.success(), "tpm2_nvundefine -C p succeeded on a closed platform hierarchy");
        tpm.ensure_srk().unwrap();
        assert!(tpm.liveness_is_alive(LivenessSlot::new(0, 0).unwrap()).unwrap());
        drop(tpm);
        sw.stop();

        // A power cycle opens it again (TPM2_Startup(CLEAR)); with a platform authorization someone else
        // set, it cannot be closed and says so.
        let (sw, tpm) = start(&state);
        assert!(tpm.platform_hierarchy_enabled().unwrap());
        let out = tool(&sw, &["tpm2_changeauth", "-c", "p", "someone-else"]);
        assert!(out.status.success(), "tpm2_changeauth -c p: {}", String::from_utf8_lossy(&out.stderr));
        let err = tpm.close_platform_hierarchy().unwrap_err();
        assert!(matches!(err, TpmError::PlatformAuthSet { .. }), "{err:?}");
        assert!(err.to_string().contains("platform hierarchy"), "{err}");
        assert!(tpm.platform_hierarchy_enabled().unwrap());
    }

    #[test]
    fn a_lockout_authorization_is_read_from_the_permanent_attributes_and_guards_tpm2_clear() {
        let dir = tempfile::tempdir().unwrap();
        let (sw, tpm) = start(&dir.path().join("state"));
        let clear = || {
            Command::new("tpm2_clear")
                .env("TPM2TOOLS_TCTI", sw.tcti())
                .env("TSS2_LOG", "all+NONE")
                .args(["-c", "l"])
                .output()
                .unwrap()
        };
        assert!(!tpm.lockout_auth_set().unwrap(), "a fresh swtpm has an empty lockout authorization");
        let auth = [0xa5_u8; 32];
        tpm.change_lockout_auth(&[], &auth).unwrap();
        assert!(tpm.lockout_auth_set().unwrap());
        tpm.change_lockout_auth(&auth, &[]).unwrap();
        assert!(!tpm.lockout_auth_set().unwrap());
        tpm.change_lockout_auth(&[], &auth).unwrap();
        // With it set, tpm2_clear under an empty lockout authorization fails and clears nothing: the SRK
        // and the owner's liveness index are still there.
        tpm.ensure_srk().unwrap();
        tpm.liveness_ensure_index(0).unwrap();
        let out = clear();
        assert!(!out.status.success(), "tpm2_clear succeeded with an empty lockout authorization");
        tpm.ensure_srk().unwrap();
        assert!(tpm.liveness_is_alive(LivenessSlot::new(0, 0).unwrap()).unwrap());
        // That failure locked the lockout hierarchy (TPM 2.0 Part 1, dictionary-attack protection): even
        // the right authorization is refused now, with a code that is not a mismatch.
        let locked = tpm.change_lockout_auth(&auth, &auth).unwrap_err();
        assert!(!matches!(locked, TpmError::LockoutAuthMismatch { .. }), "{locked:?}");
        assert!(locked.to_string().contains("LOCKOUT"), "{locked}");
        assert!(tpm.lockout_auth_set().unwrap(), "reading the attributes needs no authorization");
    }

    #[test]
    fn srk_is_created_once_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let (sw, tpm) = start(&dir.path().join("state"));
        tpm.ensure_srk().unwrap();
        let tcti = sw.tcti();
        let public = tpm2_tool(&tcti, dir.path(), &["tpm2_readpublic", "-c", "0x81000001"]);
        assert!(public.contains("ecc") && public.contains("fixedtpm") && public.contains("noda"), "{public}");
        Tpm::open(&tcti.parse().unwrap()).unwrap().ensure_srk().unwrap();

        // Another key squatting on 0x81000001 is refused, not used.
        let dir2 = tempfile::tempdir().unwrap();
        let (sw2, tpm2) = start(&dir2.path().join("state"));
        let t2 = sw2.tcti();
        tpm2_tool(&t2, dir2.path(), &["tpm2_createprimary", "-C", "o", "-G", "rsa2048", "-c", "p.ctx"]);
        tpm2_tool(&t2, dir2.path(), &["tpm2_evictcontrol", "-C", "o", "-c", "p.ctx", "0x81000001"]);
        tpm2_tool(&t2, dir2.path(), &["tpm2_flushcontext", "-t"]);
        assert!(matches!(tpm2.ensure_srk(), Err(TpmError::SrkMismatch)));
        tpm2.liveness_ensure_index(0).unwrap();
        let pv = tpm2.pcr_read(PcrBank::Sha256, &idx(&[7])).unwrap();
        let policy = crate::seal::SealPolicy::new(pv, LivenessSlot::new(0, 0).unwrap());
        let err = tpm2.seal(b"secret", &policy, &[7; 32]).unwrap_err();
        assert!(matches!(err, TpmError::SrkMismatch), "{err:?}");
        assert!(err.to_string().contains("0x81000001"));
    }

    #[test]
    fn srk_public_names_the_tpm_and_creates_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (sw, tpm) = start(&dir.path().join("state"));
        assert_eq!(tpm.srk_public().unwrap(), None, "a fresh TPM has no SRK");
        let handles = tpm2_tool(&sw.tcti(), dir.path(), &["tpm2_getcap", "handles-persistent"]);
        assert!(!handles.contains("0x81000001"), "srk_public created the SRK: {handles}");
        tpm.ensure_srk().unwrap();
        let public = tpm.srk_public().unwrap().expect("the SRK");
        // Another process, on the same TPM, reads the same key.
        let again = Tpm::open(&sw.tcti().parse().unwrap()).unwrap().srk_public().unwrap();
        assert_eq!(again.as_ref(), Some(&public));
        // Another TPM's SRK, made from the same template, is another key.
        let dir2 = tempfile::tempdir().unwrap();
        let (_sw2, tpm2) = start(&dir2.path().join("state"));
        tpm2.ensure_srk().unwrap();
        assert_ne!(tpm2.srk_public().unwrap().expect("the SRK"), public);
    }

    #[test]
    fn unreachable_tpm_says_how_to_start_one() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let spec = TctiSpec::swtpm_local(port);
        let msg = Tpm::open(&spec).unwrap_err().to_string();
        assert!(msg.starts_with(&format!("no TPM at swtpm:host=127.0.0.1,port={port}")), "{msg}");
        assert!(
            msg.contains(&format!("--ctrl type=tcp,port={}", u32::from(port) + 1)) && msg.contains("--tpm auto"),
            "{msg}"
        );
        let msg = Tpm::open(&"device:/dev/no-such-tpm".parse().unwrap()).unwrap_err().to_string();
        assert!(msg.starts_with("no TPM at device:/dev/no-such-tpm") && msg.contains("tpm_crb"), "{msg}");
    }

    #[test]
    fn pcr_read_extend_and_clock() {
        let dir = tempfile::tempdir().unwrap();
        let (_sw, tpm) = start(dir.path());
        let all: Vec<PcrIndex> = (0..24).map(|p| PcrIndex::new(p).unwrap()).collect();
        for bank in [PcrBank::Sha1, PcrBank::Sha256, PcrBank::Sha384] {
            let v = tpm.pcr_read(bank, &all).unwrap();
            assert_eq!(v.values().len(), 24, "{bank}: more than 8 PCRs need several reads");
        }
        let p16 = PcrIndex::new(16).unwrap();
        let before1 = tpm.pcr_read(PcrBank::Sha1, &[p16]).unwrap();
        let before256 = tpm.pcr_read(PcrBank::Sha256, &[p16]).unwrap();
        tpm.pcr_extend_data(p16, b"measured thing", &[PcrBank::Sha1, PcrBank::Sha256]).unwrap();
        for (bank, before) in [(PcrBank::Sha1, before1), (PcrBank::Sha256, before256)] {
            let mut cat = before.get(p16).unwrap().to_vec();
            cat.extend_from_slice(&hash_for_bank(bank, b"measured thing"));
            let expect = hash_for_bank(bank, &cat);
            assert_eq!(tpm.pcr_read(bank, &[p16]).unwrap().get(p16).unwrap(), expect.as_slice(), "{bank}");
        }
        let err = tpm.pcr_extend(p16, &[(PcrBank::Sha256, &[0u8; 20])]).unwrap_err();
        assert!(matches!(err, TpmError::Policy(PolicyError::ValueLength { .. })));
        let c1 = tpm.clock_info().unwrap();
        let c2 = tpm.clock_info().unwrap();
        assert!(c2.clock_ms >= c1.clock_ms && c1.reset_count == c2.reset_count);
    }

    #[test]
    fn nv_helpers_and_errors_name_the_response_code() {
        let dir = tempfile::tempdir().unwrap();
        let (_sw, tpm) = start(dir.path());
        let public = NvPublic {
            index: 0x0150_0001,
            attributes: nv_attr::OWNERWRITE | nv_attr::OWNERREAD | nv_attr::NO_DA | nv_attr::NT_ORDINARY,
            auth_policy: vec![],
            data_size: 16,
        };
        tpm.nv_define(&public).unwrap();
        tpm.nv_write(public.index, b"hello", 3).unwrap();
        assert_eq!(tpm.nv_read(public.index, 5, 3).unwrap(), b"hello");
        let read_back = tpm.nv_read_public(public.index).unwrap();
        assert_eq!(read_back.attributes, public.attributes | nv_attr::WRITTEN);
        tpm.nv_undefine(public.index).unwrap();
        let err = tpm.nv_read_public(public.index).unwrap_err().to_string();
        assert!(err.contains("TPM_RC_HANDLE (0x018b, handle 1)"), "{err}");
        assert!(matches!(tpm.nv_define(&NvPublic { index: 0x8100_0000, ..public }), Err(TpmError::NvIndexRange(_))));
        // Something else at a liveness handle is refused, not adopted.
        let squatter = NvPublic {
            index: LIVENESS_NV_BASE + 5,
            attributes: nv_attr::OWNERWRITE | nv_attr::OWNERREAD | nv_attr::NT_BITS,
            auth_policy: vec![],
            data_size: 8,
        };
        tpm.nv_define(&squatter).unwrap();
        assert!(matches!(tpm.liveness_ensure_index(5), Err(TpmError::LivenessIndexMismatch { index: 0x0142_5705 })));
        let slot = LivenessSlot::new(6, 0).unwrap();
        assert!(matches!(tpm.liveness_is_alive(slot), Err(TpmError::LivenessIndexMissing { index: 0x0142_5706 })));
    }
}
