//! Operation Attestation Records (OARs), outcome records and their byte encoding.
//!
//! Every ledger entry is `"bulwark.entry" || 0x01 || postcard(Entry)` (see docs/FORMATS.md). The
//! encoding is deterministic and decoding is strict: the magic and version must match, postcard must
//! consume every byte, the value must re-encode to exactly the same bytes (so no two byte strings decode
//! to the same record) and every bounded field must respect its cap.
//!
//! No personal data goes into an entry. Who acted, on what, with which parameters and with what result
//! are recorded as [`Digest`]s: a salted [`Commitment`] for anything that may be personal (the salt and
//! value stay with the caller in an [`Opening`] and can be erased later without touching any signature
//! or proof), or a plain SHA-256 for public material such as a public key.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq as _;

use crate::hash::Hash;
use crate::ids::{ApplianceId, TenantId};

/// First bytes of every ledger entry.
pub const ENTRY_MAGIC: &[u8; 13] = b"bulwark.entry";
/// Entry format version written after the magic.
pub const ENTRY_VERSION: u8 = 1;
/// Most approvals one OAR may reference.
pub const MAX_APPROVALS: usize = 16;
/// Longest PCR value (SHA-512 bank).
pub const MAX_PCR_LEN: usize = 64;
/// Longest commitment label.
pub const MAX_LABEL_LEN: usize = 64;
/// Domain-separation prefix of salted commitments.
pub const COMMIT_LABEL: &[u8; 18] = b"bulwark/commit/v1\0";

/// An entry could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum EntryError {
    /// The bytes do not start with `bulwark.entry` and version 1.
    #[error("not a version-1 bulwark ledger entry (bad magic or version)")]
    Magic,
    /// postcard rejected the body.
    #[error("entry body does not decode")]
    Decode(#[source] postcard::Error),
    /// Bytes remain after the record.
    #[error("{0} trailing bytes after the entry")]
    Trailing(usize),
    /// The body decodes but is not the canonical encoding of what it decodes to.
    #[error("entry is not canonically encoded")]
    NotCanonical,
    /// A bounded field exceeds its cap.
    #[error("entry field out of bounds: {0}")]
    Bounds(&'static str),
    /// postcard could not encode the record.
    #[error("entry does not encode")]
    Encode(#[source] postcard::Error),
    /// The encoded entry is larger than an entry bundle can hold (65,535 bytes).
    #[error("entry is {0} bytes, over the 65535-byte limit")]
    TooLarge(usize),
    /// No randomness for a salt or nonce.
    #[error("no randomness available")]
    Random(#[source] getrandom::Error),
}

/// Which ledger a record belongs to; bound into every entry and every signature context.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
pub enum LedgerScope {
    /// A tenant's own ledger.
    Tenant(TenantId),
    /// The appliance ledger (tenant lifecycle, key publication, boots, updates).
    Appliance(ApplianceId),
}

impl LedgerScope {
    /// The checkpoint origin line and signed-note key name: `bulwark.ledger/tenant/<hex>` or
    /// `bulwark.ledger/appliance/<hex>`.
    pub fn origin(&self) -> String {
        match self {
            LedgerScope::Tenant(t) => format!("bulwark.ledger/tenant/{t}"),
            LedgerScope::Appliance(a) => format!("bulwark.ledger/appliance/{a}"),
        }
    }

    /// The FIPS 204 context string every checkpoint of this ledger is signed under:
    /// `bulwark/oar/v1/<tenant hex>` or `bulwark/appliance/v1/<appliance hex>`.
    pub fn context(&self) -> String {
        match self {
            LedgerScope::Tenant(t) => format!("bulwark/oar/v1/{t}"),
            LedgerScope::Appliance(a) => format!("bulwark/appliance/v1/{a}"),
        }
    }

    /// Parse an origin line written by [`LedgerScope::origin`].
    pub fn from_origin(origin: &str) -> Option<Self> {
        if let Some(hex) = origin.strip_prefix("bulwark.ledger/tenant/") {
            return hex.parse().ok().map(LedgerScope::Tenant);
        }
        if let Some(hex) = origin.strip_prefix("bulwark.ledger/appliance/") {
            return hex.parse().ok().map(LedgerScope::Appliance);
        }
        None
    }

    /// The tenant, for a tenant ledger.
    pub fn tenant(&self) -> Option<TenantId> {
        match self {
            LedgerScope::Tenant(t) => Some(*t),
            LedgerScope::Appliance(_) => None,
        }
    }
}

impl fmt::Display for LedgerScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.origin())
    }
}

/// A salted SHA-256 commitment to a value that may be personal data.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Commitment(pub Hash);

impl fmt::Debug for Commitment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Commitment({})", self.0)
    }
}

/// What opens a [`Commitment`]: the label, the 32-byte salt and the value. Keep it with the data it
/// describes; erase it to make the commitment unopenable. Debug prints only the label.
#[derive(Clone)]
pub struct Opening {
    label: String,
    salt: [u8; 32],
    value: Vec<u8>,
}

impl fmt::Debug for Opening {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Opening({:?}, [REDACTED])", self.label)
    }
}

fn commit_hash(label: &str, salt: &[u8; 32], value: &[u8]) -> Hash {
    let len = [u8::try_from(label.len()).unwrap_or(u8::MAX)];
    Hash::of_parts(&[COMMIT_LABEL, &len, label.as_bytes(), salt, value])
}

impl Commitment {
    /// Commit to `value` under `label` (what kind of value it is, e.g. `vault/key`; at most 64 bytes)
    /// with a fresh random salt.
    pub fn salted(label: &str, value: &[u8]) -> Result<(Commitment, Opening), EntryError> {
        let mut salt = [0u8; 32];
        getrandom::fill(&mut salt).map_err(EntryError::Random)?;
        Self::with_salt(label, salt, value)
    }

    /// Commit with a caller-chosen salt (for re-deriving a commitment from a stored opening).
    pub fn with_salt(label: &str, salt: [u8; 32], value: &[u8]) -> Result<(Commitment, Opening), EntryError> {
        if label.len() > MAX_LABEL_LEN {
            return Err(EntryError::Bounds("commitment label longer than 64 bytes"));
        }
        let c = Commitment(commit_hash(label, &salt, value));
        Ok((c, Opening { label: label.to_string(), salt, value: value.to_vec() }))
    }
}

impl Opening {
    /// Whether this opening reproduces `c` (constant-time comparison).
    pub fn opens(&self, c: &Commitment) -> bool {
        let h = commit_hash(&self.label, &self.salt, &self.value);
        bool::from(h.0.ct_eq(&c.0.0))
    }
    /// The committed value.
    pub fn value(&self) -> &[u8] {
        &self.value
    }
    /// The label.
    pub fn label(&self) -> &str {
        &self.label
    }
    /// The salt.
    pub fn salt(&self) -> &[u8; 32] {
        &self.salt
    }
}

/// A digest of something an OAR refers to.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
pub enum Digest {
    /// Nothing to refer to.
    None,
    /// A salted commitment (anything that may be personal data).
    Salted(Commitment),
    /// A plain SHA-256 of public, non-personal bytes (a public key, a model file).
    Public(Hash),
}

/// Who asked for an operation.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
pub enum Role {
    /// The appliance runtime itself.
    Appliance,
    /// The IT operator (management API / CLI).
    Operator,
    /// A tenant administrator.
    TenantAdmin,
    /// A tenant user or application.
    TenantUser,
    /// A tenant's AI brain acting on its own.
    Brain,
    /// An auditor (exports).
    Auditor,
}

/// The actor of an operation: a role and a digest (normally salted) of the subject's identity.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
pub struct Actor {
    /// The role the actor acted in.
    pub role: Role,
    /// Who, as a digest (never a plain name).
    pub subject: Digest,
}

macro_rules! op_kinds {
    ($($(#[$doc:meta])* $v:ident => $s:literal,)*) => {
        /// The kind of operation an OAR attests. The postcard tag is the variant's position in this list
        /// (FORMATS.md gives the numbers); new kinds are only ever appended.
        #[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
        pub enum OpKind {
            $($(#[$doc])* $v,)*
        }

        impl OpKind {
            /// Every kind, in tag order.
            pub const ALL: &'static [OpKind] = &[$(OpKind::$v,)*];
            /// The stable lowercase name (`vault.put`, ...).
            pub fn name(self) -> &'static str {
                match self { $(OpKind::$v => $s,)* }
            }
        }

        impl FromStr for OpKind {
            type Err = EntryError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s { $($s => Ok(OpKind::$v),)* _ => Err(EntryError::Bounds("unknown operation kind")) }
            }
        }
    };
}

op_kinds! {
    /// Store a record in the tenant's vault.
    VaultPut => "vault.put",
    /// Read a record.
    VaultGet => "vault.get",
    /// Delete a record.
    VaultDelete => "vault.delete",
    /// List records.
    VaultList => "vault.list",
    /// Run a brain (search, classify, generate).
    BrainCall => "brain.call",
    /// Export data or the ledger.
    Export => "export",
    /// Grant a brain or a right.
    Grant => "grant",
    /// Revoke a brain or a right.
    Revoke => "revoke",
    /// Change the tenant's governance policy.
    PolicyChange => "policy.change",
    /// Appliance ledger: a tenant was created (params: public digest of its key's SPKI DER).
    TenantCreate => "tenant.create",
    /// Appliance ledger: a tenant was deleted.
    TenantDelete => "tenant.delete",
    /// Appliance ledger: a tenant was suspended.
    TenantSuspend => "tenant.suspend",
    /// Appliance ledger: a tenant was resumed.
    TenantResume => "tenant.resume",
    /// Appliance ledger: a (new) tenant public key was published (params: public digest of its SPKI DER).
    KeyPublish => "key.publish",
    /// Appliance ledger: the appliance booted with the recorded runtime state.
    Boot => "boot",
    /// Appliance ledger: the image was updated.
    Update => "update",
    /// Appliance ledger: the brain catalog changed.
    BrainCatalog => "brain.catalog",
}

impl fmt::Display for OpKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What an operation acts on.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
pub enum Target {
    /// Nothing in particular (a list, a boot).
    None,
    /// A tenant (appliance ledger operations).
    Tenant(TenantId),
    /// An object named by a digest (a vault key as a salted commitment, a model by public hash).
    Object(Digest),
}

/// The governance decision that allowed an operation.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
pub enum PolicyRef {
    /// Governance is not active yet: nothing was evaluated (placeholder until the governance issue).
    Ungoverned,
    /// Digest of the evaluated decision record.
    Decision(Hash),
}

/// A reference to one approval (quorum issue): who approved, and the digest of what they approved.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
pub struct ApprovalRef {
    /// The approver, as a digest.
    pub approver: Digest,
    /// Digest of the signed approval statement.
    pub statement: Hash,
}

/// The runtime's measured state when the record was made: one PCR value.
#[derive(Clone, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
pub struct RuntimeState {
    /// PCR index the runtime measures itself into.
    pub pcr: u8,
    /// TPM_ALG_ID of the bank (0x000B = SHA-256).
    pub alg: u16,
    /// The PCR value (at most 64 bytes).
    pub value: Vec<u8>,
}

impl RuntimeState {
    /// A state from a PCR read; `value` must be at most 64 bytes.
    pub fn new(pcr: u8, alg: u16, value: Vec<u8>) -> Result<Self, EntryError> {
        if value.len() > MAX_PCR_LEN {
            return Err(EntryError::Bounds("PCR value longer than 64 bytes"));
        }
        Ok(Self { pcr, alg, value })
    }
}

/// A tree head: size and root hash.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
pub struct TreeHead {
    /// Number of entries.
    pub size: u64,
    /// RFC 6962 root hash of those entries.
    pub root: Hash,
}

/// What a caller supplies to attest an operation; the gate adds scope, counter, heads, time and nonce.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct OarDraft {
    /// Who asks.
    pub actor: Actor,
    /// What kind of operation.
    pub op: OpKind,
    /// On what.
    pub target: Target,
    /// Digest of the operation's parameters (salted when they may hold personal data).
    pub params: Digest,
    /// The governance decision (use [`PolicyRef::Ungoverned`] until governance lands).
    pub policy: PolicyRef,
    /// Approvals (empty until quorum lands); at most 16.
    pub approvals: Vec<ApprovalRef>,
}

impl OarDraft {
    /// A draft for an operation with no policy decision and no approvals yet.
    pub fn new(actor: Actor, op: OpKind, target: Target, params: Digest) -> Self {
        Self { actor, op, target, params, policy: PolicyRef::Ungoverned, approvals: Vec::new() }
    }

    /// Appliance ledger: tenant `tenant` was created with public key `key` (params: SHA-256 of its SPKI
    /// DER, which the verifier matches against the auditor's pinned key).
    pub fn tenant_created(actor: Actor, tenant: TenantId, key: &crate::signer::LedgerPublicKey) -> Self {
        Self::new(actor, OpKind::TenantCreate, Target::Tenant(tenant), Digest::Public(key.fingerprint()))
    }

    /// Appliance ledger: a new public key `key` was published for `tenant`.
    pub fn key_published(actor: Actor, tenant: TenantId, key: &crate::signer::LedgerPublicKey) -> Self {
        Self::new(actor, OpKind::KeyPublish, Target::Tenant(tenant), Digest::Public(key.fingerprint()))
    }
}

/// An Operation Attestation Record, as stored in the ledger.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Oar {
    /// The ledger it belongs to (binds the tenant).
    pub scope: LedgerScope,
    /// Per-ledger OAR counter: 0, 1, 2, … without gaps.
    pub counter: u64,
    /// The ledger head just before this entry (its size is this entry's index).
    pub prev_head: TreeHead,
    /// Smallest counter of an OAR without an outcome when this one was appended (this OAR's own counter
    /// when every earlier one is complete).
    pub low_water: u64,
    /// Unix time in milliseconds, non-decreasing along the ledger.
    pub time_ms: u64,
    /// 16 random bytes.
    pub nonce: [u8; 16],
    /// The runtime's measured state.
    pub runtime: RuntimeState,
    /// Who asked.
    pub actor: Actor,
    /// What kind of operation.
    pub op: OpKind,
    /// On what.
    pub target: Target,
    /// Digest of the parameters.
    pub params: Digest,
    /// Governance decision.
    pub policy: PolicyRef,
    /// Approvals.
    pub approvals: Vec<ApprovalRef>,
}

/// How an attested operation ended.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
pub enum Status {
    /// The operation ran and succeeded.
    Succeeded,
    /// The operation ran (or started) and failed.
    Failed,
    /// The attested token was dropped without an outcome (the operation did not report back).
    Abandoned,
    /// The process stopped before the outcome was recorded; written by recovery on the next open.
    Interrupted,
}

/// What the caller reports after running an attested operation.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Outcome {
    /// Whether the operation succeeded.
    pub ok: bool,
    /// Digest of the result (salted when it may hold personal data).
    pub result: Digest,
}

impl Outcome {
    /// A success with this result digest.
    pub fn success(result: Digest) -> Self {
        Self { ok: true, result }
    }
    /// A failure with this result (error) digest.
    pub fn failure(result: Digest) -> Self {
        Self { ok: false, result }
    }
}

/// The record appended after an attested operation.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct OutcomeRecord {
    /// The ledger it belongs to.
    pub scope: LedgerScope,
    /// The OAR's counter.
    pub counter: u64,
    /// The OAR's entry index.
    pub oar_index: u64,
    /// The OAR's RFC 6962 leaf hash.
    pub oar_leaf: Hash,
    /// The ledger head just before this entry.
    pub prev_head: TreeHead,
    /// Unix time in milliseconds.
    pub time_ms: u64,
    /// How it ended.
    pub status: Status,
    /// Digest of the result.
    pub result: Digest,
}

/// One ledger entry.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub enum Entry {
    /// An operation attestation record (tag 0).
    Oar(Oar),
    /// An outcome record (tag 1).
    Outcome(OutcomeRecord),
}

impl Entry {
    /// The ledger this entry names.
    pub fn scope(&self) -> LedgerScope {
        match self {
            Entry::Oar(o) => o.scope,
            Entry::Outcome(o) => o.scope,
        }
    }

    /// The head recorded as "just before this entry".
    pub fn prev_head(&self) -> TreeHead {
        match self {
            Entry::Oar(o) => o.prev_head,
            Entry::Outcome(o) => o.prev_head,
        }
    }

    fn check_bounds(&self) -> Result<(), EntryError> {
        if let Entry::Oar(o) = self {
            if o.approvals.len() > MAX_APPROVALS {
                return Err(EntryError::Bounds("more than 16 approvals"));
            }
            if o.runtime.value.len() > MAX_PCR_LEN {
                return Err(EntryError::Bounds("PCR value longer than 64 bytes"));
            }
            if o.low_water > o.counter {
                return Err(EntryError::Bounds("low-water mark above the counter"));
            }
        }
        Ok(())
    }

    /// The entry's bytes: magic, version, postcard body.
    pub fn encode(&self) -> Result<Vec<u8>, EntryError> {
        self.check_bounds()?;
        let mut out = Vec::with_capacity(256);
        out.extend_from_slice(ENTRY_MAGIC);
        out.push(ENTRY_VERSION);
        let out = postcard::to_extend(self, out).map_err(EntryError::Encode)?;
        if out.len() > crate::tiles::MAX_ENTRY_LEN {
            return Err(EntryError::TooLarge(out.len()));
        }
        Ok(out)
    }

    /// Decode strictly (see the module docs).
    pub fn decode(bytes: &[u8]) -> Result<Self, EntryError> {
        let body = bytes
            .strip_prefix(ENTRY_MAGIC.as_slice())
            .and_then(|b| b.strip_prefix(&[ENTRY_VERSION]))
            .ok_or(EntryError::Magic)?;
        let (entry, rest): (Entry, &[u8]) = postcard::take_from_bytes(body).map_err(EntryError::Decode)?;
        if !rest.is_empty() {
            return Err(EntryError::Trailing(rest.len()));
        }
        entry.check_bounds()?;
        if entry.encode()? != bytes {
            return Err(EntryError::NotCanonical);
        }
        Ok(entry)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn sample_oar(scope: LedgerScope) -> Oar {
        let (c, _) = Commitment::with_salt("vault/key", [3; 32], b"patient-17").unwrap();
        Oar {
            scope,
            counter: 5,
            prev_head: TreeHead { size: 9, root: Hash::of(b"r") },
            low_water: 4,
            time_ms: 1_700_000_000_000,
            nonce: [9; 16],
            runtime: RuntimeState::new(23, 0x000B, vec![0xAA; 32]).unwrap(),
            actor: Actor { role: Role::TenantUser, subject: Digest::Salted(c) },
            op: OpKind::VaultPut,
            target: Target::Object(Digest::Salted(c)),
            params: Digest::Public(Hash::of(b"p")),
            policy: PolicyRef::Ungoverned,
            approvals: vec![],
        }
    }

    #[test]
    fn round_trip_and_strictness() {
        let scope = LedgerScope::Tenant(TenantId::from_bytes([1; 16]));
        let e = Entry::Oar(sample_oar(scope));
        let bytes = e.encode().unwrap();
        assert!(bytes.starts_with(b"bulwark.entry\x01"));
        assert_eq!(Entry::decode(&bytes).unwrap(), e);
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert!(matches!(Entry::decode(&trailing), Err(EntryError::Trailing(1))));
        assert!(matches!(Entry::decode(&bytes[..bytes.len() - 1]), Err(EntryError::Decode(_))));
        let mut bad_version = bytes.clone();
        bad_version[13] = 2;
        assert!(matches!(Entry::decode(&bad_version), Err(EntryError::Magic)));
        // Counter 5 is one varint byte after the entry tag and the scope (tag + 16 bytes). An overlong
        // varint for the same value must not be accepted.
        let at = 14 + 1 + 1 + 16;
        assert_eq!(bytes[at], 5);
        let mut overlong = bytes[..at].to_vec();
        overlong.extend_from_slice(&[0x85, 0x00]);
        overlong.extend_from_slice(&bytes[at + 1..]);
        assert!(matches!(Entry::decode(&overlong), Err(EntryError::NotCanonical) | Err(EntryError::Decode(_))));
    }

    #[test]
    fn bounds_are_enforced() {
        let scope = LedgerScope::Tenant(TenantId::from_bytes([1; 16]));
        let mut o = sample_oar(scope);
        o.approvals = vec![ApprovalRef { approver: Digest::None, statement: Hash::of(b"s") }; 17];
        assert!(matches!(Entry::Oar(o.clone()).encode(), Err(EntryError::Bounds(_))));
        o.approvals.clear();
        o.low_water = 6;
        assert!(matches!(Entry::Oar(o).encode(), Err(EntryError::Bounds(_))));
        assert!(RuntimeState::new(23, 0x000B, vec![0; 65]).is_err());
    }

    #[test]
    fn commitments_open_and_hide() {
        let (c, o) = Commitment::salted("vault/key", b"alice@example.com").unwrap();
        assert!(o.opens(&c));
        let (c2, _) = Commitment::salted("vault/key", b"alice@example.com").unwrap();
        assert_ne!(c, c2, "fresh salts give unlinkable commitments");
        let (c3, o3) = Commitment::with_salt("vault/key", *o.salt(), b"alice@example.com").unwrap();
        assert_eq!(c3, c);
        assert!(!o3.opens(&c2));
        assert!(!format!("{o:?}").contains("alice"));
        assert!(Commitment::salted(&"x".repeat(65), b"").is_err());
    }

    #[test]
    fn scope_strings() {
        let t = TenantId::from_bytes([0x11; 16]);
        let s = LedgerScope::Tenant(t);
        assert_eq!(s.origin(), format!("bulwark.ledger/tenant/{t}"));
        assert_eq!(s.context(), format!("bulwark/oar/v1/{t}"));
        assert_eq!(LedgerScope::from_origin(&s.origin()), Some(s));
        let a = LedgerScope::Appliance(ApplianceId::from_bytes([0x22; 16]));
        assert_eq!(LedgerScope::from_origin(&a.origin()), Some(a));
        assert_eq!(LedgerScope::from_origin("bulwark.ledger/tenant/XYZ"), None);
        assert!(s.context().len() <= 255 && a.context().len() <= 255);
    }

    #[test]
    fn op_names_round_trip() {
        for k in OpKind::ALL {
            assert_eq!(k.name().parse::<OpKind>().unwrap(), *k);
        }
    }
}

#[cfg(test)]
mod vector {
    use super::*;

    /// The worked example in docs/FORMATS.md §OAR; if this changes, the format changed.
    pub(crate) fn example() -> (Entry, Entry) {
        let scope = LedgerScope::Tenant(TenantId::from_bytes(
            *b"\x00\x11\x22\x33\x44\x55\x66\x77\x88\x99\xaa\xbb\xcc\xdd\xee\xff",
        ));
        let (key, _) = Commitment::with_salt("vault/key", [0x01; 32], b"k1").unwrap();
        let oar = Oar {
            scope,
            counter: 300,
            prev_head: TreeHead { size: 600, root: Hash([0xAB; 32]) },
            low_water: 299,
            time_ms: 1_767_225_600_000,
            nonce: [0x0C; 16],
            runtime: RuntimeState::new(23, 0x000B, vec![0xEE; 32]).unwrap(),
            actor: Actor { role: Role::TenantUser, subject: Digest::None },
            op: OpKind::VaultPut,
            target: Target::Object(Digest::Salted(key)),
            params: Digest::Public(Hash([0x22; 32])),
            policy: PolicyRef::Ungoverned,
            approvals: vec![],
        };
        let outcome = OutcomeRecord {
            scope,
            counter: 300,
            oar_index: 600,
            oar_leaf: Hash([0x33; 32]),
            prev_head: TreeHead { size: 601, root: Hash([0x44; 32]) },
            time_ms: 1_767_225_600_001,
            status: Status::Succeeded,
            result: Digest::None,
        };
        (Entry::Oar(oar), Entry::Outcome(outcome))
    }

    #[test]
    fn formats_md_example() {
        let (oar, outcome) = example();
        let (key, _) = Commitment::with_salt("vault/key", [0x01; 32], b"k1").unwrap();
        let want_key = Hash::of(&[b"bulwark/commit/v1\0".as_slice(), &[9], b"vault/key", &[0x01; 32], b"k1"].concat());
        assert_eq!(key.0, want_key);
        let hex_oar = hex::encode(oar.encode().unwrap());
        let hex_out = hex::encode(outcome.encode().unwrap());
        // Independently derived (LEB128 varints by hand, SHA-256 by Python): docs/FORMATS.md §7.
        let expect_oar = concat!(
            "62756c7761726b2e656e747279",
            "01", // magic, version
            "00", // Entry::Oar
            "00",
            "00112233445566778899aabbccddeeff", // scope = Tenant(id)
            "ac02",                             // counter 300
            "d804",
            "abababababababababababababababababababababababababababababababab", // prev_head 600, root
            "ab02",                                                             // low_water 299
            "80d0eab6b733",                                                     // time_ms 1767225600000
            "0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c0c",                                 // nonce
            "17",
            "0b",
            "20",
            "eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee", // runtime: PCR 23, SHA-256, 32 bytes
            "03",
            "00", // actor: TenantUser, Digest::None
            "00", // op: vault.put
            "02",
            "01",
            "1411c6cdacd9623f2ce1233192747c93cb8e47fcef348c505b203119b90d6d1d", // target: Object(Salted(c))
            "02",
            "2222222222222222222222222222222222222222222222222222222222222222", // params: Public(h)
            "00",                                                               // policy: Ungoverned
            "00",                                                               // approvals: empty
        );
        assert_eq!(hex_oar, expect_oar);
        let expect_out = concat!(
            "62756c7761726b2e656e747279",
            "01",
            "01", // Entry::Outcome
            "00",
            "00112233445566778899aabbccddeeff",
            "ac02", // counter 300
            "d804", // oar_index 600
            "3333333333333333333333333333333333333333333333333333333333333333",
            "d904",
            "4444444444444444444444444444444444444444444444444444444444444444", // prev_head 601
            "81d0eab6b733",                                                     // time_ms
            "00",                                                               // status: Succeeded
            "00",                                                               // result: Digest::None
        );
        assert_eq!(hex_out, expect_out);
    }
}
