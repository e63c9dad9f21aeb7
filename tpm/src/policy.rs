//! TPM 2.0 policy digests computed offline, without a TPM.
//!
//! Every function here reproduces the `policyDigest` update a TPM performs for one policy command
//! (TPM 2.0 Library Part 3, section 23 "Enhanced Authorization (EA) Commands"), for a policy session
//! whose hash algorithm is SHA-256. The seal template's `authPolicy` is computed with these functions
//! only, so the offline value and the object agree by construction; tests compare them with what a
//! real TPM computes in a trial session and with what tpm2-tools prints.
//!
//! Byte layouts follow TPM 2.0 Library Part 2 (structures): integers are big-endian, `TPM2B_*` is a
//! 16-bit size followed by that many bytes, `TPML_PCR_SELECTION` is a 32-bit count of
//! `TPMS_PCR_SELECTION { hash: u16, sizeofSelect: u8, pcrSelect: [u8; sizeofSelect] }`.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest as _, Sha256};

/// A SHA-256 policy digest (the `policyDigest` of a session whose hash is SHA-256).
pub type PolicyDigest = [u8; 32];

/// The value a policy session's digest starts from: all zeros (Part 3, TPM2_StartAuthSession).
pub const POLICY_START: PolicyDigest = [0u8; 32];

/// Number of PCRs a PC Client TPM has (and the size of our PCR selection bitmaps: 3 bytes).
pub const PCR_COUNT: u8 = 24;
const PCR_SELECT_BYTES: u8 = 3;

// Command codes (Part 2, section 6.5 "TPM_CC").
const TPM_CC_POLICY_NV: u32 = 0x0000_0149;
const TPM_CC_POLICY_AUTHORIZE: u32 = 0x0000_016A;
const TPM_CC_POLICY_AUTH_VALUE: u32 = 0x0000_016B;
const TPM_CC_POLICY_OR: u32 = 0x0000_0171;
const TPM_CC_POLICY_PCR: u32 = 0x0000_017F;

/// Algorithm id of SHA-256 (Part 2, TPM_ALG_ID), the name algorithm of everything we create.
pub const TPM_ALG_SHA256: u16 = 0x000B;

/// What can be wrong with the inputs of an offline policy computation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// A PCR number outside 0..=23.
    #[error("PCR {0} does not exist (PCRs are numbered 0 to 23)")]
    PcrOutOfRange(u32),
    /// The same PCR was given twice.
    #[error("PCR {0} is given more than once")]
    DuplicatePcr(u8),
    /// A PCR value has the wrong length for its bank.
    #[error("PCR {pcr} value is {got} bytes but the {bank} bank holds {expected}-byte values")]
    ValueLength {
        /// The PCR.
        pcr: u8,
        /// The bank.
        bank: PcrBank,
        /// The bank's digest size.
        expected: usize,
        /// The length given.
        got: usize,
    },
    /// No PCR was selected.
    #[error("a PCR policy needs at least one PCR")]
    NoPcrs,
    /// PolicyOR takes 2 to 8 branches.
    #[error("PolicyOR takes 2 to 8 branches, not {0}")]
    OrBranches(usize),
    /// PolicyNV's operandB is a TPM2B_OPERAND (at most 64 bytes here).
    #[error("PolicyNV operand is {0} bytes; at most 64 are allowed")]
    OperandTooLong(usize),
    /// A PCR bank name that is not sha1, sha256, sha384 or sha512.
    #[error("unknown PCR bank {0:?} (expected sha1, sha256, sha384 or sha512)")]
    UnknownBank(String),
    /// A `--pcr N=HEX` argument that does not parse.
    #[error("bad PCR value {0:?}: expected N=HEX, e.g. 7=3d45...")]
    BadPcrArgument(String),
}

/// A PCR bank: the hash algorithm a set of PCRs is kept in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PcrBank {
    /// SHA-1 (20-byte values).
    Sha1,
    /// SHA-256 (32-byte values).
    Sha256,
    /// SHA-384 (48-byte values).
    Sha384,
    /// SHA-512 (64-byte values).
    Sha512,
}

impl PcrBank {
    /// All banks we know, in TPM_ALG_ID order.
    pub const ALL: [PcrBank; 4] = [PcrBank::Sha1, PcrBank::Sha256, PcrBank::Sha384, PcrBank::Sha512];

    /// The TPM_ALG_ID of the bank's hash.
    pub fn alg_id(self) -> u16 {
        match self {
            PcrBank::Sha1 => 0x0004,
            PcrBank::Sha256 => 0x000B,
            PcrBank::Sha384 => 0x000C,
            PcrBank::Sha512 => 0x000D,
        }
    }

    /// The bank for a TPM_ALG_ID.
    pub fn from_alg_id(id: u16) -> Option<Self> {
        Self::ALL.into_iter().find(|b| b.alg_id() == id)
    }

    /// Size in bytes of one PCR value in this bank.
    pub fn digest_len(self) -> usize {
        match self {
            PcrBank::Sha1 => 20,
            PcrBank::Sha256 => 32,
            PcrBank::Sha384 => 48,
            PcrBank::Sha512 => 64,
        }
    }

    /// The lowercase name used on the command line and by tpm2-tools.
    pub fn name(self) -> &'static str {
        match self {
            PcrBank::Sha1 => "sha1",
            PcrBank::Sha256 => "sha256",
            PcrBank::Sha384 => "sha384",
            PcrBank::Sha512 => "sha512",
        }
    }
}

impl fmt::Display for PcrBank {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for PcrBank {
    type Err = PolicyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|b| b.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| PolicyError::UnknownBank(s.to_string()))
    }
}

/// A PCR number, 0..=23.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PcrIndex(u8);

impl PcrIndex {
    /// Checks `n` is a PCR a PC Client TPM has.
    pub fn new(n: u32) -> Result<Self, PolicyError> {
        u8::try_from(n).ok().filter(|v| *v < PCR_COUNT).map(PcrIndex).ok_or(PolicyError::PcrOutOfRange(n))
    }

    /// The PCR number.
    pub fn get(self) -> u8 {
        self.0
    }
}

impl fmt::Display for PcrIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Expected values of a set of PCRs in one bank: non-empty, each PCR once, ascending, each value the
/// bank's digest length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PcrValues {
    bank: PcrBank,
    values: Vec<(PcrIndex, Vec<u8>)>,
}

impl PcrValues {
    /// Checks and sorts `(pcr, value)` pairs for `bank`.
    pub fn new(bank: PcrBank, values: impl IntoIterator<Item = (u8, Vec<u8>)>) -> Result<Self, PolicyError> {
        let mut out: Vec<(PcrIndex, Vec<u8>)> = Vec::new();
        for (pcr, value) in values {
            let idx = PcrIndex::new(u32::from(pcr))?;
            if value.len() != bank.digest_len() {
                return Err(PolicyError::ValueLength { pcr, bank, expected: bank.digest_len(), got: value.len() });
            }
            if out.iter().any(|(p, _)| *p == idx) {
                return Err(PolicyError::DuplicatePcr(pcr));
            }
            out.push((idx, value));
        }
        if out.is_empty() {
            return Err(PolicyError::NoPcrs);
        }
        out.sort_by_key(|(p, _)| *p);
        Ok(PcrValues { bank, values: out })
    }

    /// The bank the values are from.
    pub fn bank(&self) -> PcrBank {
        self.bank
    }

    /// The selected PCRs, ascending.
    pub fn pcrs(&self) -> Vec<PcrIndex> {
        self.values.iter().map(|(p, _)| *p).collect()
    }

    /// `(pcr, value)` pairs, ascending by PCR.
    pub fn values(&self) -> &[(PcrIndex, Vec<u8>)] {
        &self.values
    }

    /// The value expected for `pcr`, if selected.
    pub fn get(&self, pcr: PcrIndex) -> Option<&[u8]> {
        self.values.iter().find(|(p, _)| *p == pcr).map(|(_, v)| v.as_slice())
    }

    /// The PCR composite digest PolicyPCR binds: SHA-256 over the values concatenated in selection
    /// order (Part 3, TPM2_PolicyPCR: `digestTPM`; the hash is the policy session's, SHA-256 here,
    /// whatever the bank).
    pub fn composite(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        for (_, v) in &self.values {
            h.update(v);
        }
        h.finalize().into()
    }
}

/// Marshals a `TPML_PCR_SELECTION` holding one `TPMS_PCR_SELECTION` for `bank` with the given PCRs
/// (3-byte bitmap, bit `n % 8` of byte `n / 8` selects PCR `n`).
pub fn pcr_selection_bytes(bank: PcrBank, pcrs: &[PcrIndex]) -> Vec<u8> {
    let mut bitmap = [0u8; PCR_SELECT_BYTES as usize];
    for p in pcrs {
        let n = usize::from(p.get());
        bitmap[n / 8] |= 1 << (n % 8);
    }
    let mut out = Vec::with_capacity(10);
    out.extend_from_slice(&1u32.to_be_bytes());
    out.extend_from_slice(&bank.alg_id().to_be_bytes());
    out.push(PCR_SELECT_BYTES);
    out.extend_from_slice(&bitmap);
    out
}

fn extend(prev: &PolicyDigest, parts: &[&[u8]]) -> PolicyDigest {
    let mut h = Sha256::new();
    h.update(prev);
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

/// TPM2_PolicyPCR with an explicit composite digest:
/// `H(prev || TPM_CC_PolicyPCR || TPML_PCR_SELECTION || composite)`.
pub fn policy_pcr_with_composite(
    prev: &PolicyDigest,
    bank: PcrBank,
    pcrs: &[PcrIndex],
    composite: &[u8; 32],
) -> PolicyDigest {
    let sel = pcr_selection_bytes(bank, pcrs);
    extend(prev, &[&TPM_CC_POLICY_PCR.to_be_bytes(), &sel, composite])
}

/// TPM2_PolicyPCR for expected values.
pub fn policy_pcr(prev: &PolicyDigest, values: &PcrValues) -> PolicyDigest {
    policy_pcr_with_composite(prev, values.bank(), &values.pcrs(), &values.composite())
}

/// The PolicyPCR digest of a fresh session for PCR values from `bank` (what
/// `bulwark tpm policy-pcr --bank B --pcr N=HEX ...` prints). Validates PCR numbers and value lengths.
pub fn policy_pcr_digest(bank: PcrBank, values: &[(u8, Vec<u8>)]) -> Result<PolicyDigest, PolicyError> {
    let v = PcrValues::new(bank, values.iter().cloned())?;
    Ok(policy_pcr(&POLICY_START, &v))
}

/// Parses one `N=HEX` command-line PCR assignment.
pub fn parse_pcr_assignment(arg: &str) -> Result<(u8, Vec<u8>), PolicyError> {
    let bad = || PolicyError::BadPcrArgument(arg.to_string());
    let (n, hexval) = arg.split_once('=').ok_or_else(bad)?;
    let n: u32 = n.trim().parse().map_err(|_| bad())?;
    let idx = PcrIndex::new(n)?;
    let v = hex::decode(hexval.trim()).map_err(|_| bad())?;
    Ok((idx.get(), v))
}

/// TPM2_PolicyOR: `H(0^32 || TPM_CC_PolicyOR || branch_1 || ... || branch_n)`, 2 to 8 branches.
pub fn policy_or(branches: &[PolicyDigest]) -> Result<PolicyDigest, PolicyError> {
    if !(2..=8).contains(&branches.len()) {
        return Err(PolicyError::OrBranches(branches.len()));
    }
    let mut parts: Vec<&[u8]> = Vec::with_capacity(branches.len() + 1);
    let cc = TPM_CC_POLICY_OR.to_be_bytes();
    parts.push(&cc);
    parts.extend(branches.iter().map(|b| b.as_slice()));
    Ok(extend(&POLICY_START, &parts))
}

/// TPM2_PolicyAuthValue: `H(prev || TPM_CC_PolicyAuthValue)`.
pub fn policy_auth_value(prev: &PolicyDigest) -> PolicyDigest {
    extend(prev, &[&TPM_CC_POLICY_AUTH_VALUE.to_be_bytes()])
}

/// The comparison TPM2_PolicyNV makes between the NV contents (operand A) and operand B
/// (Part 2, TPM_EO).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum NvOperation {
    /// A = B.
    Eq = 0x0000,
    /// A ≠ B.
    Neq = 0x0001,
    /// A > B signed.
    SignedGt = 0x0002,
    /// A > B unsigned.
    UnsignedGt = 0x0003,
    /// A < B signed.
    SignedLt = 0x0004,
    /// A < B unsigned.
    UnsignedLt = 0x0005,
    /// A ≥ B signed.
    SignedGe = 0x0006,
    /// A ≥ B unsigned.
    UnsignedGe = 0x0007,
    /// A ≤ B signed.
    SignedLe = 0x0008,
    /// A ≤ B unsigned.
    UnsignedLe = 0x0009,
    /// All bits set in B are set in A.
    BitSet = 0x000A,
    /// All bits set in B are clear in A.
    BitClear = 0x000B,
}

impl NvOperation {
    /// The TPM_EO value.
    pub fn code(self) -> u16 {
        self as u16
    }
}

/// TPM2_PolicyNV: `H(prev || TPM_CC_PolicyNV || args || nvIndexName)` with
/// `args = H(operandB || offset || operation)`.
pub fn policy_nv(
    prev: &PolicyDigest,
    operand_b: &[u8],
    offset: u16,
    op: NvOperation,
    nv_name: &[u8],
) -> Result<PolicyDigest, PolicyError> {
    if operand_b.len() > 64 {
        return Err(PolicyError::OperandTooLong(operand_b.len()));
    }
    Ok(nv_update(prev, operand_b, offset, op, nv_name))
}

/// [`policy_nv`] for an 8-byte operand (a bits or counter index), which cannot be too long.
pub(crate) fn policy_nv_fixed(
    prev: &PolicyDigest,
    operand_b: &[u8; 8],
    offset: u16,
    op: NvOperation,
    nv_name: &[u8],
) -> PolicyDigest {
    nv_update(prev, operand_b, offset, op, nv_name)
}

/// [`policy_or`] of exactly two branches, which cannot have the wrong count.
pub(crate) fn policy_or_2(a: &PolicyDigest, b: &PolicyDigest) -> PolicyDigest {
    extend(&POLICY_START, &[&TPM_CC_POLICY_OR.to_be_bytes(), a, b])
}

fn nv_update(prev: &PolicyDigest, operand_b: &[u8], offset: u16, op: NvOperation, nv_name: &[u8]) -> PolicyDigest {
    let mut h = Sha256::new();
    h.update(operand_b);
    h.update(offset.to_be_bytes());
    h.update(op.code().to_be_bytes());
    let args: [u8; 32] = h.finalize().into();
    extend(prev, &[&TPM_CC_POLICY_NV.to_be_bytes(), &args, nv_name])
}

/// TPM2_PolicyAuthorize as it leaves the policy digest when it succeeds:
/// `H(H(0^32 || TPM_CC_PolicyAuthorize || keySign.name) || policyRef)` (Part 3, PolicyUpdate()).
/// `key_name` is the TPM Name of the verification key (nameAlg id || digest of its public area).
pub fn policy_authorize(key_name: &[u8], policy_ref: &[u8]) -> PolicyDigest {
    let inner = extend(&POLICY_START, &[&TPM_CC_POLICY_AUTHORIZE.to_be_bytes(), key_name]);
    extend(&inner, &[policy_ref])
}

/// The digest the authorizing key signs to approve `approved_policy` under `policy_ref`:
/// `aHash = H(approvedPolicy || policyRef)` (Part 3, TPM2_PolicyAuthorize), for a SHA-256 key.
pub fn policy_authorize_approval(approved_policy: &PolicyDigest, policy_ref: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(approved_policy);
    h.update(policy_ref);
    h.finalize().into()
}

/// NV index attributes (Part 2, section 13.4 "TPMA_NV") we use.
pub mod nv_attr {
    /// The owner hierarchy may write.
    pub const OWNERWRITE: u32 = 1 << 1;
    /// The index's authValue authorizes writes.
    pub const AUTHWRITE: u32 = 1 << 2;
    /// TPM_NT_ORDINARY in the type field (bits 4..8).
    pub const NT_ORDINARY: u32 = 0x0 << 4;
    /// TPM_NT_COUNTER in the type field.
    pub const NT_COUNTER: u32 = 0x1 << 4;
    /// TPM_NT_BITS in the type field.
    pub const NT_BITS: u32 = 0x2 << 4;
    /// Mask of the type field.
    pub const NT_MASK: u32 = 0xF << 4;
    /// The owner hierarchy may read.
    pub const OWNERREAD: u32 = 1 << 17;
    /// The index's authValue authorizes reads.
    pub const AUTHREAD: u32 = 1 << 18;
    /// Failed authorizations do not count towards dictionary-attack lockout.
    pub const NO_DA: u32 = 1 << 25;
    /// Set by the TPM once the index has been written.
    pub const WRITTEN: u32 = 1 << 29;
}

/// The public area of an NV index (`TPMS_NV_PUBLIC`) with a SHA-256 name algorithm.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NvPublic {
    /// The NV handle (0x01xxxxxx).
    pub index: u32,
    /// TPMA_NV attributes, as the TPM holds them (include WRITTEN for an index already written).
    pub attributes: u32,
    /// The index's authPolicy (empty for none).
    pub auth_policy: Vec<u8>,
    /// Data size in bytes (8 for counter and bits indices).
    pub data_size: u16,
}

impl NvPublic {
    /// Marshals the `TPMS_NV_PUBLIC` (Part 2, section 13.5).
    pub fn marshal(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(14 + self.auth_policy.len());
        out.extend_from_slice(&self.index.to_be_bytes());
        out.extend_from_slice(&TPM_ALG_SHA256.to_be_bytes());
        out.extend_from_slice(&self.attributes.to_be_bytes());
        // auth_policy length is bounded by the callers in this crate (0 or 32 bytes).
        let len = u16::try_from(self.auth_policy.len()).unwrap_or(u16::MAX);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&self.auth_policy);
        out.extend_from_slice(&self.data_size.to_be_bytes());
        out
    }

    /// The index's TPM Name: `nameAlg || SHA-256(TPMS_NV_PUBLIC)` (Part 1, section 16 "Names").
    pub fn name(&self) -> [u8; 34] {
        let mut name = [0u8; 34];
        name[..2].copy_from_slice(&TPM_ALG_SHA256.to_be_bytes());
        name[2..].copy_from_slice(&Sha256::digest(self.marshal()));
        name
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selection_bitmap_layout() {
        let sel = pcr_selection_bytes(PcrBank::Sha256, &[PcrIndex(0), PcrIndex(7), PcrIndex(8), PcrIndex(23)]);
        assert_eq!(sel, vec![0, 0, 0, 1, 0x00, 0x0B, 3, 0x81, 0x01, 0x80]);
    }

    #[test]
    fn pcr_values_are_checked() {
        assert_eq!(
            PcrValues::new(PcrBank::Sha1, [(4, vec![0; 32])]),
            Err(PolicyError::ValueLength { pcr: 4, bank: PcrBank::Sha1, expected: 20, got: 32 })
        );
        assert_eq!(PcrValues::new(PcrBank::Sha256, [(24, vec![0; 32])]), Err(PolicyError::PcrOutOfRange(24)));
        assert_eq!(
            PcrValues::new(PcrBank::Sha256, [(4, vec![0; 32]), (4, vec![1; 32])]),
            Err(PolicyError::DuplicatePcr(4))
        );
        assert_eq!(PcrValues::new(PcrBank::Sha256, []), Err(PolicyError::NoPcrs));
        let v = PcrValues::new(PcrBank::Sha256, [(7, vec![7; 32]), (4, vec![4; 32])]).unwrap();
        assert_eq!(v.pcrs(), vec![PcrIndex(4), PcrIndex(7)]);
    }

    /// Pins the byte layout of PolicyPCR for sha256 PCRs 0..=7 all zero, spelled out by hand from the
    /// Part 3 definition (the TPM and tpm2-tools cross-checks are in `tpm.rs` tests).
    #[test]
    fn policy_pcr_zero_pcrs_known_answer() {
        let vals: Vec<(u8, Vec<u8>)> = (0..8).map(|i| (i, vec![0u8; 32])).collect();
        let d = policy_pcr_digest(PcrBank::Sha256, &vals).unwrap();
        let mut composite = Sha256::new();
        for _ in 0..8 {
            composite.update([0u8; 32]);
        }
        let composite: [u8; 32] = composite.finalize().into();
        let mut h = Sha256::new();
        h.update([0u8; 32]);
        h.update(0x17Fu32.to_be_bytes());
        h.update([0, 0, 0, 1, 0, 0x0B, 3, 0xFF, 0, 0]);
        h.update(composite);
        let expect: [u8; 32] = h.finalize().into();
        assert_eq!(d, expect);
    }

    #[test]
    fn policy_or_needs_two_to_eight() {
        assert_eq!(policy_or(&[[0; 32]]), Err(PolicyError::OrBranches(1)));
        assert!(policy_or(&[[0; 32]; 8]).is_ok());
        assert_eq!(policy_or(&[[0; 32]; 9]), Err(PolicyError::OrBranches(9)));
    }

    #[test]
    fn nv_name_layout() {
        let p = NvPublic { index: 0x0142_5700, attributes: 0x2204_0022, auth_policy: vec![], data_size: 8 };
        assert_eq!(
            p.marshal(),
            vec![0x01, 0x42, 0x57, 0x00, 0x00, 0x0B, 0x22, 0x04, 0x00, 0x22, 0x00, 0x00, 0x00, 0x08]
        );
        assert_eq!(&p.name()[..2], &[0x00, 0x0B]);
    }

    #[test]
    fn parses_cli_pcr_assignment() {
        let (n, v) = parse_pcr_assignment("7=00ff").unwrap();
        assert_eq!((n, v), (7, vec![0x00, 0xff]));
        assert!(parse_pcr_assignment("24=00").is_err());
        assert!(parse_pcr_assignment("7:00").is_err());
        assert!(parse_pcr_assignment("7=zz").is_err());
        assert_eq!("SHA256".parse::<PcrBank>().unwrap(), PcrBank::Sha256);
        assert!("md5".parse::<PcrBank>().is_err());
    }
}
