//! Sealing tenant KEKs to the measured state and the tenant's liveness.
//!
//! A sealed object is a TPM keyed-hash *sealed data* object under the SRK with attributes
//! fixedTPM | fixedParent | noDA, **no userWithAuth** (only a policy session can unseal it) and no
//! sensitiveDataOrigin (we supply the data). Its authPolicy, computed offline by [`crate::policy`], is
//!
//! ```text
//! PolicyOR( normal   = PolicyPCR(bank, pcrs, composite) ; PolicyNV(liveness, 1<<bit, 0, BITCLEAR),
//!           recovery = PolicyAuthValue                  ; PolicyNV(liveness, 1<<bit, 0, BITCLEAR) )
//! ```
//!
//! so it unseals on the measured state it was sealed to, or with the recovery authValue, and in both
//! cases only while the tenant's liveness bit is clear. Setting the bit (tenant deletion) is
//! irreversible, so restored copies of the object stay dead.
//!
//! ## Byte format of [`SealedObject`] (version 1)
//!
//! ```text
//! "BWSK"            4 bytes magic
//! 0x01              version
//! bank              u16  TPM_ALG_ID of the PCR bank
//! n                 u8   number of PCRs, 1..=24
//! n × (pcr u8, value[bank digest length])      PCRs strictly ascending
//! index_no u8, bit u8                          liveness slot, bit < 64
//! TPM2B_PUBLIC      u16 size + TPMT_PUBLIC     (TPM 2.0 Part 2, 12.2.5)
//! TPM2B_PRIVATE     u16 size + bytes           (Part 2, 12.3.7)
//! ```
//!
//! All integers big-endian; nothing may follow. Tamper evidence: every field of the policy feeds the
//! authPolicy, and `from_bytes` requires the public area to equal, byte for byte, the template for that
//! authPolicy (only the 32-byte `unique` is free); the TPM binds `unique` and the whole public area to
//! the private part through the Name in the private's integrity HMAC, so Load rejects any change there.

use std::fmt;

use crate::esys::{SESSION_CONTINUE, SESSION_DECRYPT, SESSION_ENCRYPT, SessionKind};
use crate::policy::{self, NvOperation, POLICY_START, PcrBank, PcrValues, PolicyDigest};
use crate::rc::codes;
use crate::secret::SecretBytes;
use crate::tpm::{LivenessSlot, Op, PCR_CHANGED_ATTEMPTS, Tpm, TpmError, obj_attr, read_liveness_bits};

const MAGIC: &[u8; 4] = b"BWSK";
const VERSION: u8 = 1;
/// Largest secret a sealed data object holds (MAX_SYM_DATA, TPM 2.0 Part 2).
pub const MAX_SEALED_SECRET: usize = 128;
/// Largest recovery authValue: the name algorithm's digest size (SHA-256).
pub const MAX_RECOVERY_AUTH: usize = 32;
/// Fewest bytes a recovery authValue must keep once trailing zeros are dropped.
const MIN_RECOVERY_AUTH: usize = 16;
/// TPM2B_PRIVATE's buffer limit in the TSS headers.
const MAX_PRIVATE: usize = 1550;

const ALG_KEYEDHASH: u16 = 0x0008;
const ALG_NULL: u16 = 0x0010;

/// TPMA_OBJECT of a sealed object: fixedTPM | fixedParent | noDA.
pub const SEALED_ATTRIBUTES: u32 = obj_attr::FIXED_TPM | obj_attr::FIXED_PARENT | obj_attr::NO_DA;

/// Why sealed-object bytes were rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealedFormatError {
    /// Not a bulwark sealed object.
    #[error("not a bulwark sealed object (bad magic)")]
    BadMagic,
    /// A version this build does not read.
    #[error("sealed object version {0} is not supported (this build reads version 1)")]
    Version(u8),
    /// The bytes end early.
    #[error("sealed object is truncated")]
    Truncated,
    /// Bytes follow the object.
    #[error("sealed object has {0} trailing bytes")]
    Trailing(usize),
    /// Unknown PCR bank id.
    #[error("sealed object names unknown PCR bank 0x{0:04x}")]
    Bank(u16),
    /// PCR count outside 1..=24 or PCRs not strictly ascending.
    #[error("sealed object has a malformed PCR list")]
    PcrList,
    /// Liveness bit out of range.
    #[error("sealed object has liveness bit {0} (must be below 64)")]
    LivenessBit(u8),
    /// The public area is not the seal template for the stored policy.
    #[error("sealed object's public area does not match its policy (tampered or corrupt)")]
    PublicMismatch,
    /// The private area's size is impossible.
    #[error("sealed object's private area has an impossible size")]
    PrivateSize,
}

/// What a secret is sealed to: expected PCR values (one bank) and the tenant's liveness slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealPolicy {
    pcrs: PcrValues,
    liveness: LivenessSlot,
}

impl SealPolicy {
    /// A policy for expected `pcrs` (e.g. from [`Tpm::pcr_read`] now, or predicted for an image) and
    /// `liveness`.
    pub fn new(pcrs: PcrValues, liveness: LivenessSlot) -> Self {
        SealPolicy { pcrs, liveness }
    }

    /// The expected PCR values.
    pub fn pcrs(&self) -> &PcrValues {
        &self.pcrs
    }

    /// The PCR bank.
    pub fn bank(&self) -> PcrBank {
        self.pcrs.bank()
    }

    /// The liveness slot.
    pub fn liveness(&self) -> LivenessSlot {
        self.liveness
    }

    /// The PCR composite digest the normal branch binds.
    pub fn composite(&self) -> [u8; 32] {
        self.pcrs.composite()
    }

    fn liveness_step(&self, prev: &PolicyDigest) -> PolicyDigest {
        policy::policy_nv_fixed(
            prev,
            &self.liveness.operand(),
            0,
            NvOperation::BitClear,
            &self.liveness.nv_public().name(),
        )
    }

    /// Digest of the normal branch: PolicyPCR then PolicyNV(liveness).
    pub fn normal_branch(&self) -> PolicyDigest {
        self.liveness_step(&policy::policy_pcr(&POLICY_START, &self.pcrs))
    }

    /// Digest of the recovery branch: PolicyAuthValue then PolicyNV(liveness).
    pub fn recovery_branch(&self) -> PolicyDigest {
        self.liveness_step(&policy::policy_auth_value(&POLICY_START))
    }

    /// The object's authPolicy: PolicyOR(normal, recovery).
    pub fn auth_policy(&self) -> PolicyDigest {
        policy::policy_or_2(&self.normal_branch(), &self.recovery_branch())
    }
}

/// The sealed object's TPMT_PUBLIC up to (not including) `unique`.
fn sealed_template_prefix(auth_policy: &PolicyDigest) -> Vec<u8> {
    let mut t = Vec::with_capacity(44);
    t.extend_from_slice(&ALG_KEYEDHASH.to_be_bytes());
    t.extend_from_slice(&policy::TPM_ALG_SHA256.to_be_bytes());
    t.extend_from_slice(&SEALED_ATTRIBUTES.to_be_bytes());
    t.extend_from_slice(&32u16.to_be_bytes());
    t.extend_from_slice(auth_policy);
    t.extend_from_slice(&ALG_NULL.to_be_bytes()); // keyedHash scheme: NULL (a data object)
    t
}

fn with_size(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 2);
    out.extend_from_slice(&u16::try_from(body.len()).unwrap_or(u16::MAX).to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// Whether TPM2B_PUBLIC wire bytes are exactly the template for `auth_policy` with a 32-byte unique.
fn public_matches(public: &[u8], auth_policy: &PolicyDigest) -> bool {
    let prefix = sealed_template_prefix(auth_policy);
    let expected_len = 2 + prefix.len() + 2 + 32;
    public.len() == expected_len
        && public[..2] == u16::try_from(expected_len - 2).unwrap_or(0).to_be_bytes()
        && public[2..2 + prefix.len()] == prefix[..]
        && public[2 + prefix.len()..2 + prefix.len() + 2] == [0, 32]
}

/// A sealed tenant secret: TPM2B_PUBLIC + TPM2B_PRIVATE and the policy it was sealed under. Safe to
/// store anywhere: only this TPM can load it, and only its policy unseals it.
#[derive(Clone, PartialEq, Eq)]
pub struct SealedObject {
    policy: SealPolicy,
    public: Vec<u8>,
    private: Vec<u8>,
}

impl fmt::Debug for SealedObject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SealedObject")
            .field("policy", &self.policy)
            .field("public_len", &self.public.len())
            .field("private_len", &self.private.len())
            .finish()
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], SealedFormatError> {
        if self.0.len() < n {
            return Err(SealedFormatError::Truncated);
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, SealedFormatError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, SealedFormatError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    /// A TPM2B: returns the size prefix and body together.
    fn tpm2b(&mut self) -> Result<&'a [u8], SealedFormatError> {
        let whole = self.0;
        let n = usize::from(self.u16()?);
        self.take(n)?;
        Ok(&whole[..2 + n])
    }
}

impl SealedObject {
    /// The policy it was sealed under.
    pub fn policy(&self) -> &SealPolicy {
        &self.policy
    }

    /// Serializes (format in the module docs).
    pub fn to_bytes(&self) -> Vec<u8> {
        let bank = self.policy.bank();
        let vals = self.policy.pcrs.values();
        let mut out =
            Vec::with_capacity(16 + vals.len() * (1 + bank.digest_len()) + self.public.len() + self.private.len());
        out.extend_from_slice(MAGIC);
        out.push(VERSION);
        out.extend_from_slice(&bank.alg_id().to_be_bytes());
        // PcrValues holds at most 24 PCRs.
        out.push(u8::try_from(vals.len()).unwrap_or(u8::MAX));
        for (pcr, v) in vals {
            out.push(pcr.get());
            out.extend_from_slice(v);
        }
        out.push(self.policy.liveness.index_no());
        out.push(self.policy.liveness.bit());
        out.extend_from_slice(&self.public);
        out.extend_from_slice(&self.private);
        out
    }

    /// Parses and checks bytes from [`SealedObject::to_bytes`]: bounded, no trailing data, and the
    /// public area must be the seal template for the stored policy.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, SealedFormatError> {
        let mut r = Reader(bytes);
        if r.take(4)? != MAGIC {
            return Err(SealedFormatError::BadMagic);
        }
        let v = r.u8()?;
        if v != VERSION {
            return Err(SealedFormatError::Version(v));
        }
        let alg = r.u16()?;
        let bank = PcrBank::from_alg_id(alg).ok_or(SealedFormatError::Bank(alg))?;
        let n = r.u8()?;
        if n == 0 || n > policy::PCR_COUNT {
            return Err(SealedFormatError::PcrList);
        }
        let mut values = Vec::with_capacity(usize::from(n));
        let mut last: Option<u8> = None;
        for _ in 0..n {
            let pcr = r.u8()?;
            if last.is_some_and(|l| pcr <= l) {
                return Err(SealedFormatError::PcrList);
            }
            last = Some(pcr);
            values.push((pcr, r.take(bank.digest_len())?.to_vec()));
        }
        let pcrs = PcrValues::new(bank, values).map_err(|_| SealedFormatError::PcrList)?;
        let index_no = r.u8()?;
        let bit = r.u8()?;
        let liveness = LivenessSlot::new(index_no, bit).map_err(|_| SealedFormatError::LivenessBit(bit))?;
        let policy = SealPolicy::new(pcrs, liveness);
        let public = r.tpm2b()?.to_vec();
        let private = r.tpm2b()?.to_vec();
        if !r.0.is_empty() {
            return Err(SealedFormatError::Trailing(r.0.len()));
        }
        if !public_matches(&public, &policy.auth_policy()) {
            return Err(SealedFormatError::PublicMismatch);
        }
        if private.len() <= 2 || private.len() > 2 + MAX_PRIVATE {
            return Err(SealedFormatError::PrivateSize);
        }
        Ok(SealedObject { policy, public, private })
    }
}

/// How to authorize an unseal.
#[derive(Clone, Copy)]
pub enum UnsealAuth<'a> {
    /// The normal branch: the current PCR values must be the sealed ones.
    MeasuredState,
    /// The recovery branch: the recovery authValue given at seal time.
    Recovery(&'a [u8]),
}

impl fmt::Debug for UnsealAuth<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UnsealAuth::MeasuredState => f.write_str("MeasuredState"),
            UnsealAuth::Recovery(_) => f.write_str("Recovery([REDACTED])"),
        }
    }
}

fn check_recovery_auth(auth: &[u8]) -> Result<(), TpmError> {
    let kept = auth.iter().rposition(|b| *b != 0).map_or(0, |i| i + 1);
    if auth.len() > MAX_RECOVERY_AUTH || kept < MIN_RECOVERY_AUTH {
        return Err(TpmError::RecoveryAuth);
    }
    Ok(())
}

impl Tpm {
    /// Seals `secret` (1..=128 bytes) to `policy`, with `recovery_auth` (e.g. SHA-256 of the
    /// recovery secret) as the object's authValue for the recovery branch. The tenant's liveness
    /// index must exist ([`Tpm::liveness_ensure_index`]) with the slot alive. With session encryption
    /// on (see [`crate::SessionEncryption`]) the secret and auth reach the TPM encrypted by a session
    /// salted with the SRK (AES-128-CFB).
    pub fn seal(&self, secret: &[u8], policy: &SealPolicy, recovery_auth: &[u8]) -> Result<SealedObject, TpmError> {
        if secret.is_empty() || secret.len() > MAX_SEALED_SECRET {
            return Err(TpmError::SecretSize { len: secret.len() });
        }
        check_recovery_auth(recovery_auth)?;
        let auth_policy = policy.auth_policy();
        let mut template = sealed_template_prefix(&auth_policy);
        template.extend_from_slice(&[0, 0]); // unique: empty, the TPM fills it in
        let template = with_size(&template);
        let slot = policy.liveness();
        self.op(|op| {
            let srk = op.srk()?;
            // The index must be the one our offline policy names, and the tenant alive.
            let nv = op.nv(slot.nv_handle())?;
            let (_public, name) = op.esys.nv_read_public(nv).map_err(|e| op.err(e))?;
            if name != slot.nv_public().name() {
                return Err(TpmError::LivenessIndexMismatch { index: slot.nv_handle() });
            }
            if read_liveness_bits(op, slot)? & (1u64 << slot.bit()) != 0 {
                return Err(TpmError::TenantShredded { index: slot.nv_handle(), bit: slot.bit() });
            }
            let session = if op.encrypt {
                let s = op.esys.start_session(SessionKind::Hmac, Some(srk)).map_err(|e| op.err(e))?;
                op.esys.session_attrs(s, SESSION_DECRYPT, SESSION_DECRYPT | SESSION_CONTINUE).map_err(|e| op.err(e))?;
                s
            } else {
                crate::esys::PASSWORD
            };
            let (public, private) =
                op.esys.create_sealed(srk, session, &template, secret, recovery_auth).map_err(|e| op.err(e))?;
            if session != crate::esys::PASSWORD {
                op.esys.forget(session);
            }
            if !public_matches(&public, &auth_policy) {
                return Err(TpmError::Unexpected("public area from TPM2_Create"));
            }
            Ok(SealedObject { policy: policy.clone(), public, private })
        })
    }

    /// Unseals `obj`. `MeasuredState` runs the normal branch (PolicyPCR on the current PCRs, PolicyNV,
    /// PolicyOR); `Recovery(auth)` the recovery branch (PolicyAuthValue, PolicyNV, PolicyOR, with
    /// `auth` as the object's authValue). With session encryption on, the response is encrypted by a
    /// second session salted with the SRK. TPM_RC_PCR_CHANGED is retried with a fresh policy session a
    /// bounded number of times.
    pub fn unseal(&self, obj: &SealedObject, auth: UnsealAuth<'_>) -> Result<SecretBytes, TpmError> {
        if let UnsealAuth::Recovery(a) = auth
            && a.len() > MAX_RECOVERY_AUTH
        {
            return Err(TpmError::WrongRecoverySecret);
        }
        let branches = [obj.policy.normal_branch(), obj.policy.recovery_branch()];
        let slot = obj.policy.liveness();
        let selection = policy::pcr_selection_bytes(obj.policy.bank(), &obj.policy.pcrs.pcrs());
        self.op(|op| {
            let srk = op.srk()?;
            let nv = op.nv(slot.nv_handle())?;
            let item = op.esys.load(srk, &obj.public, &obj.private).map_err(|e| {
                // A parameter error (integrity, size, binding...) or an unreadable sensitive area is
                // the object itself; handle errors and warnings (e.g. no free slot) are not.
                if e.rc.is_parameter_error() || (e.rc.is_from_tpm() && e.rc.base() == codes::SENSITIVE) {
                    TpmError::ObjectCorrupt { rc: e.rc }
                } else {
                    op.err(e)
                }
            })?;
            if let UnsealAuth::Recovery(a) = auth {
                op.esys.tr_set_auth(item, a).map_err(|e| op.err(e))?;
            }
            let result = unseal_attempts(op, obj, auth, item, nv, &branches, &selection);
            if matches!(auth, UnsealAuth::Recovery(_)) {
                // Overwrite ESAPI's copy of the authValue before the object is flushed.
                let _ = op.esys.tr_set_auth(item, &[]);
            }
            result
        })
    }
}

fn unseal_attempts(
    op: &mut Op<'_>,
    obj: &SealedObject,
    auth: UnsealAuth<'_>,
    item: crate::esys::Tr,
    nv: crate::esys::Tr,
    branches: &[PolicyDigest; 2],
    selection: &[u8],
) -> Result<SecretBytes, TpmError> {
    let slot = obj.policy.liveness();
    // Response encryption rides on a second, non-authorizing session salted with the SRK. Salting the
    // policy session itself does not work for the normal branch: the TPM keys parameter encryption
    // with sessionKey || the object's authValue (the recovery auth, which the normal branch does not
    // know), while ESAPI keys it with the authValue it was given. A session that authorizes nothing
    // is keyed by its sessionKey alone on both sides.
    let enc = if op.encrypt {
        let srk = op.srk()?;
        let e = op.esys.start_session(SessionKind::Hmac, Some(srk)).map_err(|e| op.err(e))?;
        op.esys.session_attrs(e, SESSION_ENCRYPT, SESSION_ENCRYPT | SESSION_CONTINUE).map_err(|e| op.err(e))?;
        Some(e)
    } else {
        None
    };
    for _ in 0..PCR_CHANGED_ATTEMPTS {
        let s = op.esys.start_session(SessionKind::Policy, None).map_err(|e| op.err(e))?;
        match auth {
            UnsealAuth::MeasuredState => op.esys.policy_pcr(s, None, selection).map_err(|e| op.err(e))?,
            UnsealAuth::Recovery(_) => op.esys.policy_auth_value(s).map_err(|e| op.err(e))?,
        }
        op.esys.policy_nv(s, nv, &slot.operand(), 0, NvOperation::BitClear.code()).map_err(|e| {
            if e.rc.is_from_tpm() && e.rc.base() == codes::POLICY {
                TpmError::TenantShredded { index: slot.nv_handle(), bit: slot.bit() }
            } else if e.rc.is_from_tpm() && e.rc.base() == codes::NV_UNINITIALIZED {
                TpmError::LivenessIndexMissing { index: slot.nv_handle() }
            } else {
                op.err(e)
            }
        })?;
        if let Err(e) = op.esys.policy_or(s, branches) {
            if e.rc.is_from_tpm() && e.rc.base() == codes::VALUE {
                return Err(policy_failure(op, obj, auth, e.rc));
            }
            return Err(op.err(e));
        }
        op.esys.session_attrs(s, 0, SESSION_CONTINUE).map_err(|e| op.err(e))?;
        #[cfg(test)]
        tests::maybe_bump_pcr(op);
        match op.esys.unseal(item, s, enc) {
            Ok(secret) => {
                // continueSession was clear on both: the TPM and ESAPI closed them.
                op.esys.forget(s);
                if let Some(e) = enc {
                    op.esys.forget(e);
                }
                return Ok(secret);
            }
            Err(e) if e.rc.is_from_tpm() && e.rc.base() == codes::PCR_CHANGED => {
                op.esys.flush(s).map_err(|e| op.err(e))?;
            }
            Err(e) if e.rc.is_from_tpm() && matches!(e.rc.base(), codes::AUTH_FAIL | codes::BAD_AUTH) => {
                return Err(match auth {
                    UnsealAuth::Recovery(_) => TpmError::WrongRecoverySecret,
                    UnsealAuth::MeasuredState => op.err(e),
                });
            }
            Err(e) if e.rc.is_from_tpm() && e.rc.base() == codes::POLICY_FAIL => {
                return Err(policy_failure(op, obj, auth, e.rc));
            }
            Err(e) => return Err(op.err(e)),
        }
    }
    Err(TpmError::PcrsKeptChanging { attempts: PCR_CHANGED_ATTEMPTS })
}

/// Explains a policy failure: on the normal branch, compares the current PCRs with the sealed ones.
fn policy_failure(op: &mut Op<'_>, obj: &SealedObject, auth: UnsealAuth<'_>, rc: crate::rc::TpmRc) -> TpmError {
    if let UnsealAuth::MeasuredState = auth {
        let sealed = obj.policy.pcrs();
        match op.pcr_read(sealed.bank(), &sealed.pcrs()) {
            Ok(current) => {
                let changed: Vec<u8> = sealed
                    .values()
                    .iter()
                    .filter(|(p, v)| current.get(*p) != Some(v.as_slice()))
                    .map(|(p, _)| p.get())
                    .collect();
                if !changed.is_empty() {
                    return TpmError::MeasuredStateChanged { bank: sealed.bank(), changed };
                }
            }
            Err(e) => return e,
        }
    }
    TpmError::PolicyMismatch { rc }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::PcrValues;

    fn sample_policy() -> SealPolicy {
        let pcrs = PcrValues::new(PcrBank::Sha256, [(7, vec![7; 32])]).unwrap();
        SealPolicy::new(pcrs, LivenessSlot::new(0, 5).unwrap())
    }

    #[test]
    fn recovery_auth_rules() {
        assert!(check_recovery_auth(&[1; 32]).is_ok());
        assert!(check_recovery_auth(&[1; 33]).is_err());
        assert!(check_recovery_auth(&[]).is_err());
        let mut a = [1u8; 32];
        a[15..].fill(0);
        assert!(check_recovery_auth(&a).is_err());
    }

    #[test]
    fn from_bytes_rejects_garbage_and_trailing_data() {
        let p = sample_policy();
        let mut public = sealed_template_prefix(&p.auth_policy());
        public.extend_from_slice(&[0, 32]);
        public.extend_from_slice(&[9; 32]);
        let obj = SealedObject { policy: p, public: with_size(&public), private: with_size(&[1; 100]) };
        let bytes = obj.to_bytes();
        assert_eq!(SealedObject::from_bytes(&bytes).unwrap(), obj);
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(SealedObject::from_bytes(&longer), Err(SealedFormatError::Trailing(1)));
        assert_eq!(SealedObject::from_bytes(&bytes[..bytes.len() - 1]), Err(SealedFormatError::Truncated));
        assert_eq!(SealedObject::from_bytes(b"nope"), Err(SealedFormatError::BadMagic));
        // Every byte of the policy and of the public area is covered by the template check.
        let public_end = bytes.len() - 102 - 34; // up to the unique field
        for i in 0..public_end {
            let mut b = bytes.clone();
            b[i] ^= 0x01;
            assert!(SealedObject::from_bytes(&b).is_err(), "flip at {i} accepted");
        }
    }

    // ---- against a real swtpm (one per test) ----

    thread_local! {
        /// How many of this thread's next unseal attempts see a PCR extend between PolicyPCR and
        /// Unseal (as an IMA measurement on a real machine would cause).
        static PCR_BUMPS: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
    }

    /// Called by `unseal_attempts` just before TPM2_Unseal.
    pub(super) fn maybe_bump_pcr(op: &mut Op<'_>) {
        if PCR_BUMPS.with(|c| c.replace(c.get().saturating_sub(1)) > 0) {
            let mut list = 1u32.to_be_bytes().to_vec();
            list.extend_from_slice(&PcrBank::Sha256.alg_id().to_be_bytes());
            list.extend_from_slice(&[0x42; 32]);
            op.esys.pcr_extend(9, &list).unwrap();
        }
    }

    #[test]
    fn objects_a_dead_client_left_in_a_tpm_without_resource_manager_are_flushed() {
        let dir = tempfile::tempdir().unwrap();
        let (sw, tpm) = start(dir.path());
        let obj = seal_current(&tpm, &[4, 7]);
        // Another client fills swtpm's three object slots and a session slot, and exits without flushing
        // (as a process killed mid-operation would).
        let tool = |args: &[&str]| {
            let out = std::process::Command::new(args[0])
                .args(&args[1..])
                .current_dir(dir.path())
                .env("TPM2TOOLS_TCTI", sw.tcti())
                .env("TSS2_LOG", "all+NONE")
                .output()
                .unwrap();
            assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        for ctx in ["a.ctx", "b.ctx", "c.ctx"] {
            tool(&["tpm2_createprimary", "-C", "n", "-c", ctx]);
        }
        tool(&["tpm2_startauthsession", "-S", "s.ctx"]);
        assert_eq!(tool(&["tpm2_getcap", "handles-transient"]).lines().count(), 3);
        // The unseal needs an object slot: what was left is flushed, and the unseal runs again.
        assert_eq!(tpm.unseal(&obj, UnsealAuth::MeasuredState).unwrap().expose_secret(), SECRET);
        assert_eq!(tool(&["tpm2_getcap", "handles-transient"]).trim(), "");
        assert_eq!(tool(&["tpm2_getcap", "handles-loaded-session"]).trim(), "");
    }

    #[test]
    fn pcr_changed_mid_sequence_is_retried_then_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let (_sw, tpm) = start(dir.path());
        let obj = seal_current(&tpm, &[4, 7]);
        PCR_BUMPS.with(|c| c.set(2));
        assert_eq!(tpm.unseal(&obj, UnsealAuth::MeasuredState).unwrap().expose_secret(), SECRET);
        assert_eq!(PCR_BUMPS.with(|c| c.get()), 0, "two attempts were disturbed");
        PCR_BUMPS.with(|c| c.set(100));
        let e = tpm.unseal(&obj, UnsealAuth::MeasuredState).unwrap_err();
        assert!(matches!(e, TpmError::PcrsKeptChanging { attempts: PCR_CHANGED_ATTEMPTS }), "{e:?}");
        PCR_BUMPS.with(|c| c.set(0));
        // Nothing leaked from the failed attempts.
        assert_eq!(tpm.unseal(&obj, UnsealAuth::MeasuredState).unwrap().expose_secret(), SECRET);
    }

    use crate::policy::PcrIndex;
    use crate::swtpm::Swtpm;
    use crate::tcti::TctiSpec;
    use sha2::{Digest as _, Sha256};

    const SECRET: &[u8; 32] = b"0123456789abcdef-tenant-kek-0001";

    fn start(dir: &std::path::Path) -> (Swtpm, Tpm) {
        let sw = Swtpm::start(dir).unwrap();
        let tpm = Tpm::open(&sw.tcti().parse::<TctiSpec>().unwrap()).unwrap();
        (sw, tpm)
    }

    fn pcrs(list: &[u8]) -> Vec<PcrIndex> {
        list.iter().map(|p| PcrIndex::new(u32::from(*p)).unwrap()).collect()
    }

    /// Seals SECRET to the current sha256 values of PCRs 4 and 7 and liveness slot (0, 3).
    fn seal_current(tpm: &Tpm, pcr_list: &[u8]) -> SealedObject {
        tpm.liveness_ensure_index(0).unwrap();
        let values = tpm.pcr_read(PcrBank::Sha256, &pcrs(pcr_list)).unwrap();
        let policy = SealPolicy::new(values, LivenessSlot::new(0, 3).unwrap());
        tpm.seal(SECRET, &policy, &recovery_auth()).unwrap()
    }

    fn recovery_auth() -> [u8; 32] {
        Sha256::digest(b"correct horse battery staple").into()
    }

    #[test]
    fn seal_unseal_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let (_sw, tpm) = start(dir.path());
        let obj = seal_current(&tpm, &[4, 7]);
        let back = SealedObject::from_bytes(&obj.to_bytes()).unwrap();
        assert_eq!(back, obj);
        let secret = tpm.unseal(&back, UnsealAuth::MeasuredState).unwrap();
        assert_eq!(secret.expose_secret(), SECRET);
        // Repeated unseals leave no object or session behind (swtpm has three slots).
        for _ in 0..5 {
            assert_eq!(tpm.unseal(&back, UnsealAuth::MeasuredState).unwrap().expose_secret(), SECRET);
        }
        assert!(matches!(tpm.seal(&[0; 129], obj.policy(), &recovery_auth()), Err(TpmError::SecretSize { len: 129 })));
        assert!(matches!(tpm.seal(SECRET, obj.policy(), &[0; 32]), Err(TpmError::RecoveryAuth)));
    }

    #[test]
    fn refuses_after_pcr_extend_naming_measured_state() {
        let dir = tempfile::tempdir().unwrap();
        let (_sw, tpm) = start(dir.path());
        let obj = seal_current(&tpm, &[4, 7, 8]);
        tpm.pcr_extend_data(PcrIndex::new(7).unwrap(), b"a different boot", &[PcrBank::Sha256]).unwrap();
        let err = tpm.unseal(&obj, UnsealAuth::MeasuredState).unwrap_err();
        match &err {
            TpmError::MeasuredStateChanged { bank, changed } => {
                assert_eq!(*bank, PcrBank::Sha256);
                assert_eq!(changed, &vec![7]);
            }
            other => panic!("expected MeasuredStateChanged, got {other:?}"),
        }
        let msg = err.to_string();
        assert!(msg.contains("measured state changed") && msg.contains("PCR 7"), "{msg}");
        // The recovery branch still works.
        let s = tpm.unseal(&obj, UnsealAuth::Recovery(&recovery_auth())).unwrap();
        assert_eq!(s.expose_secret(), SECRET);
    }

    #[test]
    fn unseals_again_after_swtpm_restart() {
        let dir = tempfile::tempdir().unwrap();
        let (sw, tpm) = start(dir.path());
        let obj = seal_current(&tpm, &[0, 4, 7]);
        let resets = tpm.reset_count().unwrap();
        tpm.pcr_extend_data(PcrIndex::new(4).unwrap(), b"runtime moved on", &[PcrBank::Sha256]).unwrap();
        assert!(tpm.unseal(&obj, UnsealAuth::MeasuredState).is_err());
        sw.stop();
        let e = tpm.unseal(&obj, UnsealAuth::MeasuredState).unwrap_err();
        assert!(matches!(e, TpmError::Unreachable { .. }), "{e:?}");
        assert!(e.to_string().contains("swtpm socket --tpm2"), "{e}");
        drop(tpm);
        let (_sw2, tpm2) = start(dir.path());
        assert!(tpm2.reset_count().unwrap() > resets);
        let s = tpm2.unseal(&obj, UnsealAuth::MeasuredState).unwrap();
        assert_eq!(s.expose_secret(), SECRET);
    }

    #[test]
    fn recovery_branch_right_and_wrong_secret() {
        let dir = tempfile::tempdir().unwrap();
        let (_sw, tpm) = start(dir.path());
        let obj = seal_current(&tpm, &[7]);
        let good = recovery_auth();
        assert_eq!(tpm.unseal(&obj, UnsealAuth::Recovery(&good)).unwrap().expose_secret(), SECRET);
        let mut bad = good;
        bad[0] ^= 1;
        let err = tpm.unseal(&obj, UnsealAuth::Recovery(&bad)).unwrap_err();
        assert!(matches!(err, TpmError::WrongRecoverySecret), "{err:?}");
        assert!(matches!(tpm.unseal(&obj, UnsealAuth::Recovery(b"short")), Err(TpmError::WrongRecoverySecret)));
        // noDA: repeated failures do not lock the TPM out.
        for _ in 0..5 {
            assert!(tpm.unseal(&obj, UnsealAuth::Recovery(&bad)).is_err());
        }
        assert_eq!(tpm.unseal(&obj, UnsealAuth::Recovery(&good)).unwrap().expose_secret(), SECRET);
        assert_eq!(tpm.unseal(&obj, UnsealAuth::MeasuredState).unwrap().expose_secret(), SECRET);
    }

    #[test]
    fn liveness_kill_refuses_both_branches_and_copies() {
        let dir = tempfile::tempdir().unwrap();
        let (_sw, tpm) = start(dir.path());
        let obj = seal_current(&tpm, &[4, 7]);
        let backup = obj.to_bytes();
        // A neighbour in the same index is unaffected by this tenant's deletion.
        let neighbour_policy = SealPolicy::new(obj.policy().pcrs().clone(), LivenessSlot::new(0, 4).unwrap());
        let neighbour = tpm.seal(b"neighbour", &neighbour_policy, &recovery_auth()).unwrap();
        let slot = obj.policy().liveness();
        assert!(tpm.liveness_is_alive(slot).unwrap());
        tpm.liveness_kill(slot).unwrap();
        assert!(!tpm.liveness_is_alive(slot).unwrap());
        tpm.liveness_kill(slot).unwrap(); // idempotent
        let restored = SealedObject::from_bytes(&backup).unwrap();
        for o in [&obj, &restored] {
            let e = tpm.unseal(o, UnsealAuth::MeasuredState).unwrap_err();
            assert!(matches!(e, TpmError::TenantShredded { index: 0x0142_5700, bit: 3 }), "{e:?}");
            let e = tpm.unseal(o, UnsealAuth::Recovery(&recovery_auth())).unwrap_err();
            assert!(matches!(e, TpmError::TenantShredded { .. }), "{e:?}");
        }
        assert!(matches!(tpm.seal(SECRET, obj.policy(), &recovery_auth()), Err(TpmError::TenantShredded { .. })));
        assert_eq!(tpm.unseal(&neighbour, UnsealAuth::MeasuredState).unwrap().expose_secret(), b"neighbour");
        // Re-ensuring the index does not revive anyone.
        tpm.liveness_ensure_index(0).unwrap();
        assert!(!tpm.liveness_is_alive(slot).unwrap());
    }

    #[test]
    fn every_single_byte_flip_fails() {
        let dir = tempfile::tempdir().unwrap();
        let (_sw, tpm) = start(dir.path());
        let obj = seal_current(&tpm, &[7]);
        let bytes = obj.to_bytes();
        let mut reached_tpm = 0;
        for i in 0..bytes.len() {
            for mask in [0x01u8, 0x80, 0xFF] {
                let mut b = bytes.clone();
                b[i] ^= mask;
                match SealedObject::from_bytes(&b) {
                    Err(_) => {}
                    Ok(o) => {
                        reached_tpm += 1;
                        let r = tpm.unseal(&o, UnsealAuth::MeasuredState);
                        assert!(
                            matches!(r, Err(TpmError::ObjectCorrupt { .. })),
                            "flip {mask:#04x} at byte {i} of {}: {r:?}",
                            bytes.len()
                        );
                    }
                }
            }
        }
        // Only the public `unique` and the private area pass the offline checks.
        assert!(reached_tpm > 0 && reached_tpm < bytes.len() * 3);
        // Nothing leaked on the error paths: the original still unseals.
        assert_eq!(tpm.unseal(&obj, UnsealAuth::MeasuredState).unwrap().expose_secret(), SECRET);
    }

    #[test]
    fn concurrent_unseal_threads_tpms_and_processes() {
        let dir = tempfile::tempdir().unwrap();
        let (sw, tpm) = start(dir.path());
        let obj = seal_current(&tpm, &[4, 7]);
        let blob_path = dir.path().join("sealed.bin");
        std::fs::write(&blob_path, obj.to_bytes()).unwrap();
        let child = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--ignored", "--exact", "seal::tests::child_unseal_loop", "--nocapture"])
            .env("BULWARK_TPM_CHILD_TCTI", sw.tcti())
            .env("BULWARK_TPM_CHILD_BLOB", &blob_path)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let tpm = std::sync::Arc::new(tpm);
        let second = std::sync::Arc::new(Tpm::open(&sw.tcti().parse().unwrap()).unwrap());
        let mut handles = Vec::new();
        for t in [tpm.clone(), tpm.clone(), second.clone(), second] {
            let o = obj.clone();
            handles.push(std::thread::spawn(move || {
                for _ in 0..15 {
                    assert_eq!(t.unseal(&o, UnsealAuth::MeasuredState).unwrap().expose_secret(), SECRET);
                }
            }));
        }
        for h in handles {
            h.join().unwrap();
        }
        let out = child.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "child failed: {stdout} {}", String::from_utf8_lossy(&out.stderr));
        assert!(stdout.contains("child unsealed 15"), "child did not run: {stdout}");
    }

    /// Helper for `concurrent_unseal_threads_tpms_and_processes`: runs only when spawned by it.
    #[test]
    #[ignore = "spawned as a second process by concurrent_unseal_threads_tpms_and_processes"]
    fn child_unseal_loop() {
        let (Some(tcti), Some(blob)) =
            (std::env::var_os("BULWARK_TPM_CHILD_TCTI"), std::env::var_os("BULWARK_TPM_CHILD_BLOB"))
        else {
            return;
        };
        let tpm = Tpm::open(&tcti.to_str().unwrap().parse().unwrap()).unwrap();
        let obj = SealedObject::from_bytes(&std::fs::read(blob).unwrap()).unwrap();
        for _ in 0..15 {
            assert_eq!(tpm.unseal(&obj, UnsealAuth::MeasuredState).unwrap().expose_secret(), SECRET);
        }
        println!("child unsealed 15");
    }

    /// The main outcomes again with session encryption forced on (loopback swtpm defaults to off).
    #[test]
    fn encrypted_sessions_cover_every_outcome() {
        let dir = tempfile::tempdir().unwrap();
        let sw = Swtpm::start(dir.path()).unwrap();
        let options = crate::tpm::TpmOptions { encryption: crate::tpm::SessionEncryption::Always };
        let tpm = Tpm::open_with(&sw.tcti().parse().unwrap(), options).unwrap();
        assert!(tpm.encrypts_sessions());
        let obj = seal_current(&tpm, &[4, 7]);
        assert_eq!(tpm.unseal(&obj, UnsealAuth::MeasuredState).unwrap().expose_secret(), SECRET);
        assert_eq!(tpm.unseal(&obj, UnsealAuth::Recovery(&recovery_auth())).unwrap().expose_secret(), SECRET);
        assert!(matches!(tpm.unseal(&obj, UnsealAuth::Recovery(&[1; 32])), Err(TpmError::WrongRecoverySecret)));
        tpm.pcr_extend_data(PcrIndex::new(4).unwrap(), b"x", &[PcrBank::Sha256]).unwrap();
        let e = tpm.unseal(&obj, UnsealAuth::MeasuredState).unwrap_err();
        assert!(matches!(&e, TpmError::MeasuredStateChanged { changed, .. } if changed == &vec![4]), "{e:?}");
        tpm.liveness_kill(obj.policy().liveness()).unwrap();
        let e = tpm.unseal(&obj, UnsealAuth::Recovery(&recovery_auth())).unwrap_err();
        assert!(matches!(e, TpmError::TenantShredded { .. }), "{e:?}");
        let mut bytes = obj.to_bytes();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        let e = tpm.unseal(&SealedObject::from_bytes(&bytes).unwrap(), UnsealAuth::MeasuredState).unwrap_err();
        assert!(matches!(e, TpmError::ObjectCorrupt { .. }), "{e:?}");
        assert!(e.to_string().contains("TPM_RC_"), "{e}");
    }

    /// After an unseal, the plaintext left in the TSS's response buffer has been zeroed.
    #[test]
    fn unseal_scrubs_the_library_response_buffer() {
        let dir = tempfile::tempdir().unwrap();
        let (_sw, tpm) = start(dir.path());
        let obj = seal_current(&tpm, &[7]);
        let branches = [obj.policy.normal_branch(), obj.policy.recovery_branch()];
        let selection = policy::pcr_selection_bytes(obj.policy.bank(), &obj.policy.pcrs.pcrs());
        let left = tpm
            .op(|op| {
                let srk = op.srk()?;
                let nv = op.nv(obj.policy.liveness().nv_handle())?;
                let item = op.esys.load(srk, &obj.public, &obj.private).map_err(|e| op.err(e))?;
                let s = unseal_attempts(op, &obj, UnsealAuth::MeasuredState, item, nv, &branches, &selection)?;
                assert_eq!(s.expose_secret(), SECRET);
                Ok(op.esys.last_response_parameters())
            })
            .unwrap();
        assert_eq!(left.len(), 2 + SECRET.len(), "looked at the Unseal response parameters");
        assert!(left.iter().all(|b| *b == 0), "{left:?}");
    }

    fn contains(hay: &[u8], needle: &[u8]) -> bool {
        hay.windows(needle.len()).any(|w| w == needle)
    }

    /// Records the TPM traffic of a seal and both unseal branches (tpm2-tss `pcap:` TCTI) and checks the
    /// secret and recovery auth never appear in clear with `SessionEncryption::Always`; the loopback
    /// default (`Auto`, unencrypted) is the control that shows the check can see plaintext.
    #[test]
    fn session_encryption_hides_secrets_on_the_wire() {
        let dir = tempfile::tempdir().unwrap();
        let sw = Swtpm::start(&dir.path().join("state")).unwrap();
        for (mode, encrypted) in [("always", true), ("auto", false)] {
            let cap = dir.path().join(format!("{mode}.pcap"));
            let out = std::process::Command::new(std::env::current_exe().unwrap())
                .args(["--ignored", "--exact", "seal::tests::child_capture", "--nocapture"])
                .env("BULWARK_TPM_CHILD_TCTI", sw.tcti())
                .env("BULWARK_TPM_CAPTURE_MODE", mode)
                .env("TCTI_PCAP_FILE", &cap)
                .output()
                .unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success() && stdout.contains("capture done"),
                "{stdout} {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let wire = std::fs::read(&cap).unwrap();
            assert!(wire.len() > 1000, "capture too small");
            assert_eq!(contains(&wire, SECRET), !encrypted, "secret visibility in {mode} mode");
            assert_eq!(contains(&wire, &recovery_auth()), !encrypted, "recovery auth visibility in {mode} mode");
        }
    }

    /// Helper for `session_encryption_hides_secrets_on_the_wire`: runs only when spawned by it.
    #[test]
    #[ignore = "spawned as a second process by session_encryption_hides_secrets_on_the_wire"]
    fn child_capture() {
        let (Some(tcti), Some(mode)) =
            (std::env::var_os("BULWARK_TPM_CHILD_TCTI"), std::env::var_os("BULWARK_TPM_CAPTURE_MODE"))
        else {
            return;
        };
        let tcti = tcti.to_str().unwrap();
        let encryption =
            if mode == "always" { crate::tpm::SessionEncryption::Always } else { crate::tpm::SessionEncryption::Auto };
        let options = crate::tpm::TpmOptions { encryption };
        let tpm = Tpm::open_with_conf_for_test(&tcti.parse().unwrap(), &format!("pcap:{tcti}"), options).unwrap();
        assert_eq!(tpm.encrypts_sessions(), mode == "always");
        let obj = seal_current(&tpm, &[7]);
        assert_eq!(tpm.unseal(&obj, UnsealAuth::MeasuredState).unwrap().expose_secret(), SECRET);
        assert_eq!(tpm.unseal(&obj, UnsealAuth::Recovery(&recovery_auth())).unwrap().expose_secret(), SECRET);
        println!("capture done");
    }

    #[test]
    fn unseal_auth_debug_redacts() {
        let s = format!("{:?}", UnsealAuth::Recovery(b"topsecret"));
        assert!(!s.contains("topsecret"));
    }
}
