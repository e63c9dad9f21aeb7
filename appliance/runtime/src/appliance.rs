//! The appliance: provisioning, the runtime measurement gate, and the tenant lifecycle
//! (create, list, unlock, delete, reseal).
//!
//! **Architecture Invariant:** nothing is unsealed before the runtime measurement stage has passed in
//! [`Appliance::open`]; an [`Appliance`] value cannot exist otherwise.
//!
//! **Architecture Invariant:** [`Appliance::unlock`] unseals exactly the tenant it is given, by immutable id,
//! and no other; the KEK never leaves this module except inside the returned tenant's vault.

use std::time::{SystemTime, UNIX_EPOCH};

use bulwark_boot::profile::{HwProfile, TpmExpectation};
use bulwark_ledger::oar::{Actor, Commitment, Digest, OarDraft, OpKind, Outcome, Role, RuntimeState, Target};
use bulwark_ledger::signer::KeyError;
use bulwark_ledger::{Attested, Gate, Hash, LedgerError, LedgerPublicKey, LedgerSigner, Receipt, SignerSeed};
use bulwark_tpm::{LivenessSlot, PcrIndex, SealPolicy, SealedObject, SecretBytes, TpmError, UnsealAuth};
use rand::RngCore;
use sha2::Digest as _;
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::datadir::{ApplianceConfig, DataDir, DataDirError, LAYOUT_VERSION, write_durable};
use crate::ids::{ApplianceId, IdError, TenantId};
use crate::machine::{Machine, MachineError};
use crate::measure::{self, MeasureError};
use crate::registry::{Registry, RegistryError, SlotNumber, TenantRecord};
use crate::report::with_causes;
use crate::secret::SecretKey;
use crate::vault::{RecordInfo, RecordValue, Vault, VaultError};

/// Where a tenant's ML-DSA-65 signing seed is kept: in its vault's metadata, encrypted under its DEK.
pub const SIGNING_SEED: &str = "signing-seed";

/// The appliance's signing seed, sealed by the TPM: `D/appliance/key.sealed`. Written last by `init`.
const KEY_SEALED: &str = "key.sealed";

/// The TPM hierarchy authorizations `init` set, sealed like the appliance key: `D/appliance/owner.sealed`
/// (see [`HierarchyAuths`]).
const OWNER_SEALED: &str = "owner.sealed";
/// Which TPM `init` used: the SHA-256 of its SRK's public area, in hex (`D/appliance/tpm-srk.sha256`).
const TPM_IDENTITY: &str = "tpm-srk.sha256";
/// Length of each hierarchy authorization `init` sets (the SHA-256 digest size, which every TPM accepts).
const HIERARCHY_AUTH_LEN: usize = 32;

/// What can go wrong running the appliance.
#[derive(Debug, thiserror::Error)]
pub enum ApplianceError {
    /// The data dir is missing, uninitialised or invalid.
    #[error(transparent)]
    DataDir(#[from] DataDirError),
    /// The TPM could not be reached or opened.
    #[error(transparent)]
    Machine(#[from] MachineError),
    /// The runtime measurement stage failed: nothing may be unsealed.
    #[error(transparent)]
    Measure(#[from] MeasureError),
    /// The hardware profile is unknown or invalid.
    #[error("hardware profile: {0}")]
    Profile(String),
    /// The registry failed.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// The tenant's vault failed.
    #[error(transparent)]
    Vault(#[from] VaultError),
    /// The machine's measured state is not the one this tenant's KEK was sealed to.
    #[error(
        "measured state changed: tenant {tenant}'s key is sealed to a different machine state ({detail}); \
         if the change was legitimate, run `bulwark tenant reseal --tenant {tenant} --recovery-secret-file F`"
    )]
    MeasuredStateChanged {
        /// The tenant.
        tenant: TenantId,
        /// What the TPM layer could tell about the change.
        detail: String,
    },
    /// The tenant was deleted (its liveness bit is set) and can never be unsealed again.
    #[error("tenant {0} was deleted: its key is shredded in the TPM and cannot be unsealed")]
    Shredded(TenantId),
    /// The appliance's own key no longer unseals: the measured state changed.
    #[error(
        "measured state changed: the appliance signing key is sealed to a different machine state ({0}); \
         if the change was legitimate, run `bulwark appliance reseal --recovery-secret-file F` with the \
         appliance key recovery secret `init` printed"
    )]
    ApplianceStateChanged(String),
    /// The recovery secret is wrong.
    #[error("the recovery secret does not match tenant {0}")]
    WrongRecoverySecret(TenantId),
    /// The appliance key recovery secret is wrong.
    #[error("the recovery secret does not match the appliance key (it is the one `init` printed)")]
    WrongApplianceRecoverySecret,
    /// The appliance's sealed signing key is damaged or was not sealed by this TPM.
    #[error("the appliance key {path} is corrupt or was not sealed by this TPM")]
    ApplianceKeyCorrupt {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A previous `init` of this data dir stopped before the appliance key existed.
    #[error("{0} was not fully initialised (no appliance key): run `bulwark init` again to finish it")]
    Unfinished(std::path::PathBuf),
    /// The appliance's sealed key is gone from a data dir that was in use (an unfinished `init` leaves
    /// no tenant and an empty appliance ledger).
    #[error(
        "{dir} has no appliance key (appliance/key.sealed), but it was in use ({signs}): restore \
         appliance/key.sealed from a backup of the data dir. Tenants' own vaults still open; `bulwark init` \
         does not make a new appliance key here, since that would discard the appliance ledger"
    )]
    ApplianceKeyLost {
        /// The data dir.
        dir: std::path::PathBuf,
        /// What shows it was in use.
        signs: String,
    },
    /// `init` stopped after it began writing the data dir; run again, it finishes what it began.
    #[error(
        "`bulwark init` of {} did not finish; once the cause below is removed, run it again with the same \
         settings: it finishes what this one began",
        dir.display()
    )]
    InitUnfinished {
        /// The data dir.
        dir: std::path::PathBuf,
        /// Why it stopped.
        #[source]
        source: Box<ApplianceError>,
    },
    /// `init` was asked for something that contradicts the half-initialised data dir it would finish.
    #[error("{dir} is half initialised with {what}; run `bulwark init` with the same settings, or remove it")]
    UnfinishedMismatch {
        /// The data dir.
        dir: std::path::PathBuf,
        /// What differs.
        what: String,
    },
    /// The TPM's owner hierarchy already has an authorization Bulwark did not set, so `init` cannot take
    /// ownership of it.
    #[error(
        "this TPM's owner hierarchy already has an authorization value, so Bulwark cannot take ownership of \
         it; give the appliance a TPM of its own (clear it in the firmware setup or with `tpm2_clear`)"
    )]
    OwnerAuthTaken,
    /// The TPM's lockout hierarchy already has an authorization Bulwark did not set.
    #[error(
        "this TPM's lockout hierarchy already has an authorization value, so Bulwark cannot take ownership of \
         it (whoever holds it can clear the TPM); give the appliance a TPM of its own (clear it in the firmware \
         setup or with `tpm2_clear`)"
    )]
    LockoutAuthTaken,
    /// Development mode was asked for with a profile that expects a real TPM.
    #[error(
        "--danger-dev-unbound-executable is only for development profiles on a swtpm (such as dev-swtpm); \
         profile {0:?} expects a TPM device"
    )]
    DevModeNeedsSwtpm(String),
    /// The recovery secret text is malformed.
    #[error("a recovery secret is 64 hex digits (dashes and spaces are ignored)")]
    BadRecoverySecret,
    /// `tenant delete` named the tenant otherwise than the registry does.
    #[error("tenant {tenant} is named {name:?}, not {given:?}; nothing was deleted")]
    DeleteNameMismatch {
        /// The tenant.
        tenant: TenantId,
        /// Its name.
        name: String,
        /// The name given.
        given: String,
    },
    /// A tenant's key was shredded (its liveness bit set: final), but its files or its registry entry
    /// could not be removed.
    #[error(
        "tenant {tenant}'s key is shredded in the TPM, so its data can never be read again, but its files could \
         not all be removed; run `bulwark tenant delete --tenant {tenant} --name={name}` again to remove them"
    )]
    DeleteUnfinished {
        /// The tenant.
        tenant: TenantId,
        /// Its name.
        name: String,
        /// Why the files stayed.
        #[source]
        source: Box<ApplianceError>,
    },
    /// The registry entry of a new tenant may or may not have been stored (see
    /// [`RegistryError::Unsettled`]); its directory stays until the next creation tells.
    #[error(
        "whether tenant {name:?} was created could not be told; once the cause below is removed, `bulwark tenant \
         list` shows it: if it lists {name:?}, that tenant's recovery secret was never shown, so delete it \
         (`bulwark tenant delete`) and create it again; if not, the next tenant creation removes what this one \
         left"
    )]
    CreationUnsettled {
        /// The new tenant's name.
        name: String,
        /// Why it could not be told.
        #[source]
        source: RegistryError,
    },
    /// The TPM is not the one the data dir was initialised with.
    #[error(
        "{} was initialised with another TPM than {tpm} (its storage root key differs): the TPM was cleared or \
         replaced, or the data dir was moved from another machine. What that TPM sealed opens only on it: run \
         bulwark with the TPM that initialised this data dir",
        dir.display()
    )]
    ForeignTpm {
        /// The data dir.
        dir: std::path::PathBuf,
        /// The TPM reached now.
        tpm: String,
    },
    /// The registry lists the tenant, but its sealed KEK file is not there.
    #[error(
        "tenant {tenant}'s sealed key {} is missing: restore the tenant's directory from a backup of the data \
         dir (the key is sealed in that file only; its recovery secret opens the same file)",
        path.display()
    )]
    SealedMissing {
        /// The tenant.
        tenant: TenantId,
        /// The file.
        path: std::path::PathBuf,
    },
    /// The tenant's sealed KEK is damaged or not a sealed object of this TPM.
    #[error("tenant {tenant}'s sealed key {path} is corrupt or was not sealed by this TPM")]
    SealedCorrupt {
        /// The tenant.
        tenant: TenantId,
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The appliance has used every TPM liveness slot it can address.
    #[error("no TPM liveness slot left for a new tenant (slot counter at {0})")]
    SlotsExhausted(u64),
    /// The ledger refused: nothing was done (the OAR could not be made durable) or the ledger is damaged.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    /// A ledger's files are damaged or were altered: no operation can be attested in it.
    #[error(
        "the ledger in {} is damaged or was altered, so nothing can be attested there and no operation runs; \
         restore that directory from a backup of the data dir (the vault beside it is separate)",
        dir.display()
    )]
    LedgerDamaged {
        /// The ledger directory.
        dir: std::path::PathBuf,
        /// What does not hold.
        #[source]
        source: LedgerError,
    },
    /// The operation was attested and carried out, but the ledger could not take its outcome.
    #[error(
        "{op} was carried out, but the ledger could not record its outcome; the ledger records the operation \
         as interrupted when it next opens (remove the cause below first)"
    )]
    OutcomeUnrecorded {
        /// The operation.
        op: OpKind,
        /// Why the ledger could not take the outcome.
        #[source]
        source: LedgerError,
    },
    /// The operation was attested and failed, and the ledger could not record the failure either.
    #[error(
        "{op} failed ({error}), and the ledger could not record the failure either; the ledger records the \
         operation as interrupted when it next opens (remove the cause below first)"
    )]
    FailureUnrecorded {
        /// The operation.
        op: OpKind,
        /// Why the operation failed, with its causes.
        error: String,
        /// Why the ledger could not take the outcome.
        #[source]
        source: LedgerError,
    },
    /// A signing key could not be derived.
    #[error("signing key")]
    Key(#[from] KeyError),
    /// No randomness for a fresh id.
    #[error(transparent)]
    Id(#[from] IdError),
    /// An OAR field could not be built.
    #[error("cannot build the operation's attestation record")]
    Entry(#[from] bulwark_ledger::oar::EntryError),
    /// Export of the auditor bundle failed.
    #[error(transparent)]
    Export(#[from] bulwark_ledger::ExportError),
    /// An auditor bundle was to be written inside the data dir.
    #[error(
        "the bundle directory {out} is inside the data dir {dir}; write the bundle to a directory outside it (nothing \
         was exported)"
    )]
    ExportIntoDataDir {
        /// The bundle directory asked for.
        out: std::path::PathBuf,
        /// The data dir.
        dir: std::path::PathBuf,
    },
    /// Any other TPM failure.
    #[error(transparent)]
    Tpm(#[from] TpmError),
    /// Filesystem error.
    #[error("I/O on {path}")]
    Io {
        /// The file or directory.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

impl ApplianceError {
    /// Whether the operation that failed so may have taken effect all the same, in whole or in part: the
    /// file system failed a write's commit and the file could not then be reopened to look whether the
    /// write reached it, or a tenant's key was shredded but its files stayed.
    pub fn effect_unknown(&self) -> bool {
        matches!(
            self,
            ApplianceError::Vault(VaultError::Unsettled { .. })
                | ApplianceError::Registry(RegistryError::Unsettled { .. })
                | ApplianceError::CreationUnsettled { .. }
                | ApplianceError::DeleteUnfinished { .. }
        )
    }
}

/// A tenant's recovery secret: 32 random bytes, shown once at creation as 64 hex digits in groups.
pub struct RecoverySecret(SecretKey);

impl RecoverySecret {
    fn random() -> Self {
        RecoverySecret(SecretKey::random())
    }

    /// Parses the text form (64 hex digits; dashes and whitespace ignored). The input is not kept.
    pub fn parse(text: &str) -> Result<Self, ApplianceError> {
        let mut digits: Zeroizing<String> =
            Zeroizing::new(text.chars().filter(|c| !c.is_whitespace() && *c != '-').collect());
        digits.make_ascii_lowercase();
        let mut raw = Zeroizing::new([0u8; 32]);
        if digits.len() != 64 || hex::decode_to_slice(digits.as_bytes(), &mut raw[..]).is_err() {
            return Err(ApplianceError::BadRecoverySecret);
        }
        SecretKey::take_from(&mut raw[..]).map(RecoverySecret).ok_or(ApplianceError::BadRecoverySecret)
    }

    /// The text form, for showing once to the tenant admin.
    pub fn expose_text(&self) -> Zeroizing<String> {
        let h = Zeroizing::new(hex::encode(self.0.expose_secret()));
        let groups: Vec<&str> = h.as_bytes().chunks(8).map(|c| std::str::from_utf8(c).unwrap_or("")).collect();
        Zeroizing::new(groups.join("-"))
    }

    /// The TPM authValue of the recovery branch: SHA-256 over a label, the tenant id and the secret.
    fn auth_value(&self, tenant: TenantId) -> Zeroizing<[u8; 32]> {
        self.auth_value_for(tenant.as_bytes())
    }

    /// The same for any 16-byte owner id (a tenant or the appliance).
    fn auth_value_for(&self, owner: &[u8; 16]) -> Zeroizing<[u8; 32]> {
        let mut h = Sha256::new();
        h.update(b"bulwark/recovery-auth/v1\0");
        h.update(owner);
        h.update(self.0.expose_secret());
        Zeroizing::new(h.finalize().into())
    }
}

impl std::fmt::Debug for RecoverySecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RecoverySecret([REDACTED])")
    }
}

/// A freshly created tenant, with its one-time recovery secret.
#[derive(Debug)]
pub struct CreatedTenant {
    /// The registry record.
    pub record: TenantRecord,
    /// Shown once; Bulwark keeps only its hash inside the TPM object.
    pub recovery: RecoverySecret,
}

/// A tenant whose KEK was unsealed: its open vault and its ledger gate. Every operation goes through the
/// gate first: its OAR is signed and durable before the vault is touched, and its outcome is appended
/// after. Dropping it zeroizes the keys.
#[derive(Debug)]
pub struct UnlockedTenant {
    /// The tenant.
    pub record: TenantRecord,
    // Field order is drop order: the gate closes (writing its journal into the tiles) while the vault
    // lock is still held, so the next process for this tenant never finds the ledger busy.
    gate: Gate,
    vault: Vault,
    dd: DataDir,
}

/// Appends the outcome of the operation `token` attests: success with its result digest, or failure.
/// Returns what the operation returned, or, when the ledger cannot take the outcome, an error that says
/// whether the operation took effect.
fn settle<T>(gate: &Gate, token: Attested, done: Result<(Digest, T), ApplianceError>) -> Result<T, ApplianceError> {
    let op = token.op();
    let (done, refused) = record_outcome(gate, token, done);
    unrecorded(op, done, refused)
}

/// Wraps a failure of an `init` that had begun writing `dir` as [`ApplianceError::InitUnfinished`], unless
/// it already says what to do about the half-initialised dir.
fn init_unfinished(dir: std::path::PathBuf) -> impl FnOnce(ApplianceError) -> ApplianceError {
    move |e| match e {
        e @ (ApplianceError::ApplianceKeyLost { .. }
        | ApplianceError::UnfinishedMismatch { .. }
        | ApplianceError::InitUnfinished { .. }) => e,
        e => ApplianceError::InitUnfinished { dir, source: Box::new(e) },
    }
}

/// The result digest of a failed operation that may have taken effect all the same (see
/// [`ApplianceError::effect_unknown`]): SHA-256 of `bulwark/outcome/effect-unknown/v1`, public, so an
/// auditor tells such a failure from one that changed nothing.
pub fn effect_unknown() -> Digest {
    Digest::Public(Hash::of_parts(&[b"bulwark/outcome/effect-unknown/v1"]))
}

/// Appends the outcome of the operation `token` attests; returns what the operation returned and, apart,
/// why the ledger could not take the outcome, if it could not.
fn record_outcome<T>(
    gate: &Gate,
    token: Attested,
    done: Result<(Digest, T), ApplianceError>,
) -> (Result<T, ApplianceError>, Option<LedgerError>) {
    let outcome = match &done {
        Ok((result, _)) => Outcome::success(*result),
        Err(e) if e.effect_unknown() => Outcome::failure(effect_unknown()),
        Err(_) => Outcome::failure(Digest::None),
    };
    let refused = gate.complete(token, outcome).err();
    (done.map(|(_, v)| v), refused)
}

/// `done`, or when the ledger `refused` its outcome, the error that says so and whether `op` took effect.
fn unrecorded<T>(
    op: OpKind,
    done: Result<T, ApplianceError>,
    refused: Option<LedgerError>,
) -> Result<T, ApplianceError> {
    match (done, refused) {
        (done, None) => done,
        (Ok(_), Some(source)) => Err(ApplianceError::OutcomeUnrecorded { op, source }),
        (Err(error), Some(source)) => Err(ApplianceError::FailureUnrecorded { op, error: with_causes(&error), source }),
    }
}

/// Who acts through the CLI. Until the TLS API authenticates callers, the CLI's actor is the tenant's
/// user role with no subject.
fn cli_actor() -> Actor {
    Actor { role: Role::TenantUser, subject: Digest::None }
}

fn salted(label: &str, value: &[u8]) -> Result<Digest, ApplianceError> {
    let (c, _opening) = Commitment::salted(label, value)?;
    Ok(Digest::Salted(c))
}

impl UnlockedTenant {
    /// Attests `op` on `target`, runs `f` with the token, appends the outcome, and returns `f`'s result
    /// with the receipt of the OAR.
    fn attested<T>(
        &self,
        op: OpKind,
        target: Target,
        params: Digest,
        f: impl FnOnce(&Attested) -> Result<T, VaultError>,
        result: impl FnOnce(&T) -> Result<Digest, ApplianceError>,
    ) -> Result<(T, Receipt), ApplianceError> {
        let token = self.gate.attest(OarDraft::new(cli_actor(), op, target, params))?;
        let receipt = token.receipt().clone();
        let done = f(&token).map_err(ApplianceError::from).and_then(|v| Ok((result(&v)?, v)));
        settle(&self.gate, token, done).map(|v| (v, receipt))
    }

    /// Stores `value` under `key`; returns the new version and the OAR's receipt.
    pub fn put(&self, key: &str, value: &[u8]) -> Result<(u64, Receipt), ApplianceError> {
        let target = self.vault.key_target(key)?;
        let params = salted("vault/value", value)?;
        self.attested(OpKind::VaultPut, target, params, |t| self.vault.put(t, key, value), |_| Ok(Digest::None))
    }

    /// Reads the record under `key`.
    pub fn get(&self, key: &str) -> Result<(RecordValue, Receipt), ApplianceError> {
        let target = self.vault.key_target(key)?;
        self.attested(OpKind::VaultGet, target, Digest::None, |t| self.vault.get(t, key), |v| salted("vault/value", v))
    }

    /// Lists the records.
    pub fn list(&self) -> Result<(Vec<RecordInfo>, Receipt), ApplianceError> {
        self.attested(OpKind::VaultList, Target::None, Digest::None, |t| self.vault.list(t), |_| Ok(Digest::None))
    }

    /// Deletes the record under `key`.
    pub fn delete(&self, key: &str) -> Result<Receipt, ApplianceError> {
        let target = self.vault.key_target(key)?;
        self.attested(OpKind::VaultDelete, target, Digest::None, |t| self.vault.delete(t, key), |_| Ok(Digest::None))
            .map(|((), r)| r)
    }

    /// Checks the whole vault.
    pub fn verify(&self) -> Result<(usize, Receipt), ApplianceError> {
        self.attested(OpKind::VaultList, Target::None, Digest::None, |t| self.vault.verify(t), |_| Ok(Digest::None))
    }

    /// The tenant's ML-DSA-65 public key.
    pub fn public_key(&self) -> &LedgerPublicKey {
        self.gate.public_key()
    }

    /// Writes the auditor bundle for this tenant to `out`. The export is attested first; its outcome names
    /// the tenant ledger head being exported, and the bundle is that snapshot (it includes its own OAR).
    /// The bundle goes outside the data dir: inside it, it would be the appliance's own files (and a
    /// bundle in a ledger's directory would sit among its tiles, one in a tenant's directory would go
    /// when the tenant does).
    pub fn export(&self, appliance: &ApplianceLedger, out: &std::path::Path) -> Result<(), ApplianceError> {
        if self.dd.holds(out)? {
            return Err(ApplianceError::ExportIntoDataDir {
                out: out.to_path_buf(),
                dir: self.dd.root().to_path_buf(),
            });
        }
        let token = self.gate.attest(OarDraft::new(cli_actor(), OpKind::Export, Target::None, Digest::None))?;
        let head = self.gate.head();
        let d = Digest::Public(Hash::of_parts(&[b"bulwark/export-head/v1", &head.size.to_be_bytes(), &head.root.0]));
        self.gate.complete(token, Outcome::success(d))?;
        // Both ledgers' newest batches may still be in their journals: write them into the tiles first.
        self.gate.sync_tiles()?;
        appliance.gate.sync_tiles()?;
        bulwark_ledger::export_bundle(
            &self.dd.tenant_dir(&self.record.id).join("ledger"),
            &appliance.dir,
            self.public_key(),
            appliance.gate.public_key(),
            out,
        )?;
        Ok(())
    }
}

/// The appliance's own ledger (tenant lifecycle, keys published), open with the appliance's key.
#[derive(Debug)]
pub struct ApplianceLedger {
    dir: std::path::PathBuf,
    gate: Gate,
}

impl ApplianceLedger {
    /// The appliance's ML-DSA-65 public key.
    pub fn public_key(&self) -> &LedgerPublicKey {
        self.gate.public_key()
    }
}

/// A measured, provisioned appliance with its TPM open.
#[derive(Debug)]
pub struct Appliance {
    dd: DataDir,
    profile: HwProfile,
    machine: Machine,
    measured: measure::Measured,
}

fn liveness_of(slot: SlotNumber) -> Result<LivenessSlot, ApplianceError> {
    u32::try_from(slot.0).ok().and_then(LivenessSlot::from_counter).ok_or(ApplianceError::SlotsExhausted(slot.0))
}

/// What shows that data dir `dd` was in use, which an `init` that stopped before the appliance key
/// existed never leaves: tenant directories (every registered tenant has one), an appliance ledger that
/// recorded operations. Files only: the caller may hold the registry. `None` when there is none.
fn signs_of_use(dd: &DataDir) -> Result<Option<String>, ApplianceError> {
    let mut signs = Vec::new();
    let tenants = dd.tenants_dir();
    match std::fs::read_dir(&tenants) {
        // Tenant directories, not creation markers (`.creating-<id>`).
        Ok(entries) => match entries.flatten().filter(|e| !e.file_name().to_string_lossy().starts_with('.')).count() {
            0 => {}
            1 => signs.push("a tenant directory".into()),
            n => signs.push(format!("{n} tenant directories")),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(&tenants)(e)),
    }
    let checkpoint = dd.appliance_dir().join("ledger").join("checkpoint");
    match std::fs::read_to_string(&checkpoint) {
        Ok(text) => match bulwark_ledger::note::SignedCheckpoint::parse_unverified(&text) {
            Ok((_, head)) if head.size == 0 => {}
            Ok((_, head)) => signs.push(format!("an appliance ledger of {} entries", head.size)),
            Err(_) => signs.push("an appliance ledger checkpoint that does not parse".into()),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(&checkpoint)(e)),
    }
    Ok((!signs.is_empty()).then(|| signs.join(", ")))
}

/// Opens the gate of the ledger in `dir`. A ledger whose files contradict themselves, their key or their
/// owner is [`ApplianceError::LedgerDamaged`]; other failures (busy, I/O) are passed on as they are.
fn open_gate(dir: &std::path::Path, signer: LedgerSigner, state: RuntimeState) -> Result<Gate, ApplianceError> {
    Gate::open(dir, signer, state).map_err(|e| match e {
        LedgerError::NotALedger(_)
        | LedgerError::WrongScope { .. }
        | LedgerError::WrongKey
        | LedgerError::Corrupt { .. }
        | LedgerError::Checkpoint { .. }
        | LedgerError::Tile(_)
        | LedgerError::Entry { .. }
        | LedgerError::Merkle(_)
        | LedgerError::Key(_) => ApplianceError::LedgerDamaged { dir: dir.to_path_buf(), source: e },
        e => e.into(),
    })
}

/// Creates the empty file `path` and makes its name durable (the file and its directory synced), in
/// place: a temporary name that a kill could leave behind would not be recognised as a marker.
fn create_durable_marker(path: &std::path::Path) -> std::io::Result<()> {
    std::fs::OpenOptions::new().write(true).create(true).truncate(true).open(path)?.sync_all()?;
    let dir = path.parent().ok_or_else(|| std::io::Error::other("a marker path has a directory"))?;
    std::fs::File::open(dir)?.sync_all()
}

/// Who acts on the appliance ledger through the CLI: the operator role, no subject until the TLS API
/// authenticates callers.
fn operator_actor() -> Actor {
    Actor { role: Role::Operator, subject: Digest::None }
}

fn now_unix() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn io(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> ApplianceError + '_ {
    move |source| ApplianceError::Io { path: path.display().to_string(), source }
}

/// A change of the owner authorization from empty to empty: proves it is still empty (nothing else owns
/// this TPM), and changes nothing.
fn prove_owner_auth_empty(tpm: &bulwark_tpm::Tpm) -> Result<(), ApplianceError> {
    tpm.change_owner_auth(&[], &[]).map_err(|e| match e {
        TpmError::OwnerAuthMismatch { .. } => ApplianceError::OwnerAuthTaken,
        other => ApplianceError::Tpm(other),
    })
}

/// Reads TPMA_PERMANENT (no authorization, so nothing counts against the lockout hierarchy's
/// dictionary-attack protection) and refuses a TPM whose lockout authorization is set.
fn prove_lockout_auth_empty(tpm: &bulwark_tpm::Tpm) -> Result<(), ApplianceError> {
    if tpm.lockout_auth_set()? { Err(ApplianceError::LockoutAuthTaken) } else { Ok(()) }
}

/// What [`Appliance::reseal_appliance`] did besides resealing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApplianceReseal {
    /// The TPM's lockout hierarchy was taken: the data dir predates Bulwark taking it (its
    /// `owner.sealed` held the owner's authorization only) and nobody else held it.
    pub took_lockout: bool,
}

/// What `owner.sealed` holds: the owner authorization `init` set, then the lockout authorization (data
/// dirs initialised before Bulwark took the lockout hierarchy hold the owner's only).
struct HierarchyAuths {
    owner: SecretBytes,
    lockout: Option<SecretBytes>,
}

impl HierarchyAuths {
    fn from_unsealed(bytes: &SecretBytes) -> Option<Self> {
        let b = bytes.expose_secret();
        match b.len() {
            HIERARCHY_AUTH_LEN => Some(Self { owner: SecretBytes::from_slice(b), lockout: None }),
            n if n == 2 * HIERARCHY_AUTH_LEN => {
                let (owner, lockout) = b.split_at(HIERARCHY_AUTH_LEN);
                Some(Self { owner: SecretBytes::from_slice(owner), lockout: Some(SecretBytes::from_slice(lockout)) })
            }
            _ => None,
        }
    }
}

/// Resolves a profile choice: an embedded id, or a path to a profile file.
pub fn resolve_profile(choice: &str) -> Result<(HwProfile, Vec<u8>), ApplianceError> {
    let bytes = match bulwark_boot::profile::embedded(choice) {
        Some(text) => text.as_bytes().to_vec(),
        // `from_bytes` refuses what is over the cap.
        None => bulwark_boot::read_at_most(std::path::Path::new(choice), bulwark_boot::profile::MAX_PROFILE_SIZE)
            .map_err(|e| {
                ApplianceError::Profile(format!("{choice:?} is neither an embedded profile nor a readable file: {e}"))
            })?,
    };
    let profile = HwProfile::from_bytes(&bytes).map_err(|e| ApplianceError::Profile(e.to_string()))?;
    Ok((profile, bytes))
}

/// This TPM's identity as `D/appliance/tpm-srk.sha256` records it: the SHA-256 of its SRK's public area, in
/// hex, and a newline.
/// `None` when the TPM holds no SRK (a TPM that was cleared, or never initialised).
fn tpm_identity(machine: &Machine) -> Result<Option<String>, ApplianceError> {
    Ok(machine.tpm.srk_public()?.map(|public| format!("{}\n", hex::encode(Sha256::digest(public)))))
}

/// Refuses a TPM other than the one `init` recorded, one without an SRK included, without creating
/// anything on it (a data dir initialised before the record existed is not checked).
fn check_tpm_identity(machine: &Machine, dd: &DataDir) -> Result<(), ApplianceError> {
    let path = dd.appliance_dir().join(TPM_IDENTITY);
    let recorded = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io(&path)(e)),
    };
    let now = match tpm_identity(machine) {
        // An SRK made from another template at the SRK's handle is another TPM's too.
        Err(ApplianceError::Tpm(TpmError::SrkMismatch)) => None,
        other => other?,
    };
    if now.is_none_or(|now| recorded != now.as_bytes()) {
        return Err(ApplianceError::ForeignTpm { dir: dd.root().to_path_buf(), tpm: machine.tcti().to_string() });
    }
    Ok(())
}

/// The config and profile bytes of a new appliance, from `init`'s choices (the profile defaults to the one
/// for the TPM `tpm_choice` reaches).
fn fresh_config(
    tpm_choice: &str,
    profile_choice: Option<&str>,
    danger_dev_unbound_executable: bool,
) -> Result<(ApplianceConfig, Vec<u8>), ApplianceError> {
    let default = if tpm_choice.starts_with("device:")
        || (tpm_choice == "auto" && std::path::Path::new(crate::machine::TPM_DEVICE).exists())
    {
        "generic-x86-tpm2"
    } else {
        "dev-swtpm"
    };
    let (profile, bytes) = resolve_profile(profile_choice.unwrap_or(default))?;
    if danger_dev_unbound_executable && !matches!(profile.tpm(), TpmExpectation::Swtpm) {
        return Err(ApplianceError::DevModeNeedsSwtpm(profile.id().to_string()));
    }
    let config = ApplianceConfig {
        layout_version: LAYOUT_VERSION,
        profile: profile.id().to_string(),
        appliance_id: ApplianceId::random()?.to_string(),
        danger_dev_unbound_executable,
    };
    Ok((config, bytes))
}

impl Appliance {
    /// Provisions data dir `dd`: writes config and profile, creates the SRK, measures the runtime.
    /// Returns the appliance and the appliance key's one-time recovery secret.
    pub fn init(
        dd: DataDir,
        tpm_choice: &str,
        profile_choice: Option<&str>,
        danger_dev_unbound_executable: bool,
    ) -> Result<(Self, RecoverySecret), ApplianceError> {
        // A data dir that cannot be one, or that this user cannot use, is refused before the TPM is touched,
        // and so are a directory in use for something else and a bad choice of profile for a new one.
        let fresh = match dd.is_initialised()? {
            true => None,
            false => {
                dd.refuse_foreign_entries()?;
                Some(fresh_config(tpm_choice, profile_choice, danger_dev_unbound_executable)?)
            }
        };
        // One init at a time: another one may have begun or finished while this one looked.
        let _only_init = dd.lock_for_init()?;
        if dd.is_initialised()? {
            if dd.appliance_dir().join(KEY_SEALED).exists() {
                return Err(DataDirError::AlreadyInitialised(dd.root().to_path_buf()).into());
            }
            let dir = dd.root().to_path_buf();
            return Self::finish_init(dd, tpm_choice, profile_choice, danger_dev_unbound_executable)
                .map_err(init_unfinished(dir));
        }
        let (config, bytes) = match fresh {
            Some(fresh) => fresh,
            None => fresh_config(tpm_choice, profile_choice, danger_dev_unbound_executable)?,
        };
        // Reach the TPM and create the SRK before anything else is written, so a failed init leaves only the
        // empty data dir and its init lock behind, and can simply be run again.
        {
            let machine = Machine::open(tpm_choice, &dd)?;
            // Ownership first: creating the SRK would otherwise fail on a taken owner hierarchy with a
            // bare TPM code.
            prove_owner_auth_empty(&machine.tpm)?;
            prove_lockout_auth_empty(&machine.tpm)?;
            machine.tpm.ensure_srk()?;
        }
        // From here on a failure leaves a half-initialised dir (its config is measured into the runtime
        // PCR by the next step, so it must stay as written): `init` run again finishes it.
        let dir = dd.root().to_path_buf();
        let made = dd.initialise(&config, &bytes).map_err(ApplianceError::from).and_then(|()| {
            let mut me = Self::open_unchecked(dd, tpm_choice)?;
            let recovery = me.create_appliance_key()?;
            Ok((me, recovery))
        });
        made.map_err(init_unfinished(dir))
    }

    /// `init` on a data dir whose config exists but whose appliance key does not (an earlier `init`
    /// stopped after writing its config): measures with that config and creates the appliance key.
    /// Settings given now must not contradict the ones written.
    fn finish_init(
        dd: DataDir,
        tpm_choice: &str,
        profile_choice: Option<&str>,
        danger_dev_unbound_executable: bool,
    ) -> Result<(Self, RecoverySecret), ApplianceError> {
        // Finishing removes the appliance ledger an unfinished init left: only where nothing was recorded.
        if let Some(signs) = signs_of_use(&dd)? {
            return Err(ApplianceError::ApplianceKeyLost { dir: dd.root().to_path_buf(), signs });
        }
        let (_, config) = dd.load_config()?;
        let mismatch = |what: String| ApplianceError::UnfinishedMismatch { dir: dd.root().to_path_buf(), what };
        if let Some(choice) = profile_choice {
            let (wanted, _) = resolve_profile(choice)?;
            if wanted.id() != config.profile {
                return Err(mismatch(format!("profile {:?}, not {:?}", config.profile, wanted.id())));
            }
        }
        if danger_dev_unbound_executable != config.danger_dev_unbound_executable {
            let state = if config.danger_dev_unbound_executable { "on" } else { "off" };
            return Err(mismatch(format!("development mode {state}")));
        }
        let mut me = Self::open_unchecked(dd, tpm_choice)?;
        // The unfinished init may have taken ownership already: give it back (the authorizations are in
        // `owner.sealed`), so the key is made again from the same starting point as a fresh init. The
        // lockout authorization is tried only when the TPM says one is set: a wrong one would lock the
        // lockout hierarchy out.
        if let Some(auths) = me.unseal_hierarchy_auths()? {
            match me.machine.tpm.change_owner_auth(auths.owner.expose_secret(), &[]) {
                Ok(()) | Err(TpmError::OwnerAuthMismatch { .. }) => {}
                Err(e) => return Err(e.into()),
            }
            if let Some(lockout) = auths.lockout
                && me.machine.tpm.lockout_auth_set()?
            {
                match me.machine.tpm.change_lockout_auth(lockout.expose_secret(), &[]) {
                    Ok(()) | Err(TpmError::LockoutAuthMismatch { .. }) => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        me.machine.tpm.set_owner_auth(None);
        prove_owner_auth_empty(&me.machine.tpm)?;
        prove_lockout_auth_empty(&me.machine.tpm)?;
        // An appliance ledger without a sealed key belongs to a seed that was never kept: nothing can
        // sign for it or open it, so it is removed before the key is made again.
        let dir = me.dd.appliance_dir();
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(io(&dir))?;
        }
        let recovery = me.create_appliance_key()?;
        Ok((me, recovery))
    }

    /// Creates the appliance's signing key (sealed like a tenant KEK, with its own liveness slot and
    /// recovery secret) and its ledger, and takes ownership of the TPM: random owner and lockout
    /// authorizations, sealed together the same way (`owner.sealed`), so that nobody else can undefine
    /// a liveness index and revive deleted tenants, or clear the TPM. The sealed key is written last:
    /// its presence marks the data dir as fully initialised.
    fn create_appliance_key(&mut self) -> Result<RecoverySecret, ApplianceError> {
        let aid = self.appliance_id()?;
        let slot = self.claim_slot(&self.registry_mut()?)?;
        let policy = self.seal_policy(slot)?;
        let seed = SignerSeed::generate()?;
        let recovery = RecoverySecret::random();
        let auth = recovery.auth_value_for(aid.as_bytes());
        let sealed = self.machine.tpm.seal(seed.expose_secret(), &policy, &auth[..])?;
        let dir = self.dd.appliance_dir();
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let identity = dir.join(TPM_IDENTITY);
        let srk = tpm_identity(&self.machine)?.ok_or(TpmError::Unexpected("no SRK after init created it"))?;
        write_durable(&identity, srk.as_bytes()).map_err(io(&identity))?;
        // Ownership: the sealed authorizations are durable before the TPM uses them, so they are never
        // lost.
        let (owner, lockout) = (SecretKey::random(), SecretKey::random());
        let mut both = zeroize::Zeroizing::new(Vec::with_capacity(2 * HIERARCHY_AUTH_LEN));
        both.extend_from_slice(owner.expose_secret());
        both.extend_from_slice(lockout.expose_secret());
        let owner_sealed = self.machine.tpm.seal(&both, &policy, &auth[..])?;
        let owner_path = dir.join(OWNER_SEALED);
        write_durable(&owner_path, &owner_sealed.to_bytes()).map_err(io(&owner_path))?;
        self.machine.tpm.change_owner_auth(&[], owner.expose_secret())?;
        self.machine.tpm.change_lockout_auth(&[], lockout.expose_secret())?;
        self.machine.tpm.set_owner_auth(Some(SecretBytes::from_slice(owner.expose_secret())));
        let signer = LedgerSigner::appliance(aid, &seed)?;
        Gate::create(&dir.join("ledger"), signer, self.runtime_state()?)?.close()?;
        let path = dir.join(KEY_SEALED);
        write_durable(&path, &sealed.to_bytes()).map_err(io(&path))?;
        Ok(recovery)
    }

    /// The hierarchy authorizations `init` sealed in `D/appliance/owner.sealed`, unsealed; `None` for a
    /// data dir that never took ownership.
    fn unseal_hierarchy_auths(&mut self) -> Result<Option<HierarchyAuths>, ApplianceError> {
        let path = self.dd.appliance_dir().join(OWNER_SEALED);
        if !path.exists() {
            return Ok(None);
        }
        let sealed = self.load_appliance_sealed(OWNER_SEALED)?;
        let unsealed = self
            .machine
            .tpm
            .unseal(&sealed, UnsealAuth::MeasuredState)
            .map_err(|e| self.classify_appliance(OWNER_SEALED, e))?;
        self.hierarchy_auths(&unsealed).map(Some)
    }

    /// Parses the unsealed content of `D/appliance/owner.sealed`.
    fn hierarchy_auths(&self, unsealed: &SecretBytes) -> Result<HierarchyAuths, ApplianceError> {
        HierarchyAuths::from_unsealed(unsealed).ok_or_else(|| ApplianceError::ApplianceKeyCorrupt {
            path: self.dd.appliance_dir().join(OWNER_SEALED).display().to_string(),
            source: format!(
                "it unseals to {} bytes, not {HIERARCHY_AUTH_LEN} or {}",
                unsealed.len(),
                2 * HIERARCHY_AUTH_LEN
            )
            .into(),
        })
    }

    /// Makes the owner-authorized commands that follow (liveness index define and writes) use the owner
    /// authorization this appliance holds, if it took ownership.
    fn as_owner(&mut self) -> Result<(), ApplianceError> {
        let owner = self.unseal_hierarchy_auths()?.map(|a| a.owner);
        self.machine.tpm.set_owner_auth(owner);
        Ok(())
    }

    /// The appliance error for a failed unseal of `D/appliance/<name>`.
    fn classify_appliance(&self, name: &str, e: TpmError) -> ApplianceError {
        match e {
            TpmError::MeasuredStateChanged { .. } => ApplianceError::ApplianceStateChanged(e.to_string()),
            TpmError::WrongRecoverySecret => ApplianceError::WrongApplianceRecoverySecret,
            TpmError::ObjectCorrupt { .. } => ApplianceError::ApplianceKeyCorrupt {
                path: self.dd.appliance_dir().join(name).display().to_string(),
                source: Box::new(e),
            },
            other => ApplianceError::Tpm(other),
        }
    }

    /// The appliance's sealed signing key, from `D/appliance/key.sealed`.
    fn load_appliance_key(&self) -> Result<SealedObject, ApplianceError> {
        if !self.dd.appliance_dir().join(KEY_SEALED).exists()
            && let Some(signs) = signs_of_use(&self.dd)?
        {
            return Err(ApplianceError::ApplianceKeyLost { dir: self.dd.root().to_path_buf(), signs });
        }
        self.load_appliance_sealed(KEY_SEALED)
    }

    /// A sealed object of the appliance's, `D/appliance/<name>`.
    fn load_appliance_sealed(&self, name: &str) -> Result<SealedObject, ApplianceError> {
        let path = self.dd.appliance_dir().join(name);
        let bytes = std::fs::read(&path).map_err(io(&path))?;
        SealedObject::from_bytes(&bytes).map_err(|source| ApplianceError::ApplianceKeyCorrupt {
            path: path.display().to_string(),
            source: Box::new(source),
        })
    }

    /// Reseals the appliance's signing key to the current measured state, through its recovery branch,
    /// after a legitimate change of the binary, config or profile (and a reboot, so the new runtime is
    /// measured). The key, its liveness slot and its recovery secret stay the same. A data dir initialised
    /// before Bulwark took the TPM's lockout hierarchy is brought up to date here: when the lockout
    /// authorization is empty, a random one is sealed with the owner's and then set (reported in
    /// [`ApplianceReseal::took_lockout`]); one someone else set is left alone.
    pub fn reseal_appliance(&mut self, recovery: &RecoverySecret) -> Result<ApplianceReseal, ApplianceError> {
        let aid = self.appliance_id()?;
        let sealed = self.load_appliance_key()?;
        let auth = recovery.auth_value_for(aid.as_bytes());
        let seed = self
            .machine
            .tpm
            .unseal(&sealed, UnsealAuth::Recovery(&auth[..]))
            .map_err(|e| self.classify_appliance(KEY_SEALED, e))?;
        let policy = self.seal_policy_for(sealed.policy().liveness())?;
        let resealed = self.machine.tpm.seal(seed.expose_secret(), &policy, &auth[..])?;
        let owner_path = self.dd.appliance_dir().join(OWNER_SEALED);
        // `lockout_to_set`: the sealed lockout authorization the TPM does not hold yet.
        let (owner, lockout_to_set) = if owner_path.exists() {
            let owner_sealed = self.load_appliance_sealed(OWNER_SEALED)?;
            let unsealed = self
                .machine
                .tpm
                .unseal(&owner_sealed, UnsealAuth::Recovery(&auth[..]))
                .map_err(|e| self.classify_appliance(OWNER_SEALED, e))?;
            let auths = self.hierarchy_auths(&unsealed)?;
            let lockout_set = self.machine.tpm.lockout_auth_set()?;
            // A data dir initialised before Bulwark took the lockout hierarchy takes it now, unless someone
            // else holds it (then the dir stays as it was, owner only).
            let lockout = match auths.lockout {
                None if !lockout_set => Some(SecretBytes::from_slice(SecretKey::random().expose_secret())),
                other => other,
            };
            let mut both = Zeroizing::new(auths.owner.expose_secret().to_vec());
            if let Some(l) = &lockout {
                both.extend_from_slice(l.expose_secret());
            }
            let resealed_owner = self.machine.tpm.seal(&both, &policy, &auth[..])?;
            // Just taken, or a reseal that stopped between its write and the TPM change.
            (Some(resealed_owner), lockout.filter(|_| !lockout_set))
        } else {
            (None, None)
        };
        let path = self.dd.appliance_dir().join(KEY_SEALED);
        write_durable(&path, &resealed.to_bytes()).map_err(io(&path))?;
        if let Some(owner) = owner {
            write_durable(&owner_path, &owner.to_bytes()).map_err(io(&owner_path))?;
        }
        // Only once the authorization is durable does the TPM start to require it.
        if let Some(lockout) = &lockout_to_set {
            self.machine.tpm.change_lockout_auth(&[], lockout.expose_secret())?;
        }
        Ok(ApplianceReseal { took_lockout: lockout_to_set.is_some() })
    }

    fn appliance_id(&self) -> Result<ApplianceId, ApplianceError> {
        let (_, config) = self.dd.load_config()?;
        Ok(config.appliance_id.parse::<ApplianceId>()?)
    }

    fn runtime_state(&self) -> Result<RuntimeState, ApplianceError> {
        let alg = self.profile.seal_bank().tcg_id();
        Ok(RuntimeState::new(self.measured.pcr, alg, self.measured.value.clone())?)
    }

    /// Opens the appliance ledger: unseals the appliance's signing key (the measured state must hold).
    pub fn appliance_ledger(&mut self) -> Result<ApplianceLedger, ApplianceError> {
        let aid = self.appliance_id()?;
        let sealed = self.load_appliance_key()?;
        let secret = self
            .machine
            .tpm
            .unseal(&sealed, UnsealAuth::MeasuredState)
            .map_err(|e| self.classify_appliance(KEY_SEALED, e))?;
        let mut raw = Zeroizing::new([0u8; 32]);
        if secret.expose_secret().len() != 32 {
            return Err(ApplianceError::ApplianceKeyCorrupt {
                path: self.dd.appliance_dir().join(KEY_SEALED).display().to_string(),
                source: "it does not unseal to 32 bytes".into(),
            });
        }
        raw.copy_from_slice(secret.expose_secret());
        let seed = SignerSeed::from_bytes(&mut raw);
        let dir = self.dd.appliance_dir().join("ledger");
        let gate = open_gate(&dir, LedgerSigner::appliance(aid, &seed)?, self.runtime_state()?)?;
        Ok(ApplianceLedger { dir, gate })
    }

    /// Opens a provisioned appliance: loads config and profile, opens the TPM and runs the runtime
    /// measurement stage (first run in a TPM boot cycle measures, later runs verify).
    pub fn open(dd: DataDir, tpm_choice: &str) -> Result<Self, ApplianceError> {
        // Without its appliance key, a data dir that was never in use is a half-finished `init`; one
        // that was in use still opens for its tenants (what needs the key says it is lost).
        if dd.is_initialised()? && !dd.appliance_dir().join(KEY_SEALED).exists() && signs_of_use(&dd)?.is_none() {
            return Err(ApplianceError::Unfinished(dd.root().to_path_buf()));
        }
        Self::open_unchecked(dd, tpm_choice)
    }

    fn open_unchecked(dd: DataDir, tpm_choice: &str) -> Result<Self, ApplianceError> {
        let (config_bytes, config) = dd.load_config()?;
        if dd.make_private()? {
            tracing::warn!(
                "data dir {} was open to other users; it is owner-only (mode 0700) now",
                dd.root().display()
            );
        }
        let profile_bytes = dd.load_profile_bytes()?;
        let profile = HwProfile::from_bytes(&profile_bytes).map_err(|e| ApplianceError::Profile(e.to_string()))?;
        if profile.id() != config.profile {
            return Err(ApplianceError::Profile(format!(
                "config names profile {:?} but profile.toml is {:?}",
                config.profile,
                profile.id()
            )));
        }
        if config.danger_dev_unbound_executable {
            tracing::warn!("DEVELOPMENT MODE: tenants are not bound to this executable's bytes");
        }
        let mut machine = Machine::open(tpm_choice, &dd)?;
        // Before measuring: on another TPM, the runtime PCR would not match for a reason the measured
        // state has nothing to do with.
        check_tpm_identity(&machine, &dd)?;
        let measured = measure::run_stage(&mut machine, &dd, &profile, &config, &config_bytes)?;
        Ok(Appliance { dd, profile, machine, measured })
    }

    /// The registry, read-only: commands that only read never change it.
    fn registry(&self) -> Result<Registry, ApplianceError> {
        Ok(Registry::open_read_only(&self.dd.registry_path())?)
    }

    /// The registry, for a change to the tenant set.
    fn registry_mut(&self) -> Result<Registry, ApplianceError> {
        Ok(Registry::open(&self.dd.registry_path())?)
    }

    /// The active hardware profile.
    pub fn profile(&self) -> &HwProfile {
        &self.profile
    }

    /// The data dir.
    pub fn data_dir(&self) -> &DataDir {
        &self.dd
    }

    /// The runtime PCR value after this process' measurement stage.
    pub fn measured(&self) -> &measure::Measured {
        &self.measured
    }

    /// The machine (TPM) this appliance runs on.
    pub fn machine_mut(&mut self) -> &mut Machine {
        &mut self.machine
    }

    /// The TPM in use.
    pub fn tcti(&self) -> &bulwark_tpm::TctiSpec {
        self.machine.tcti()
    }

    /// The seal policy for a tenant in `slot`: the profile's bound PCRs at their current values, and the
    /// slot's liveness bit.
    fn seal_policy(&mut self, slot: SlotNumber) -> Result<SealPolicy, ApplianceError> {
        self.seal_policy_for(liveness_of(slot)?)
    }

    /// A liveness slot never handed out on this TPM, now handed out: the TPM's slot claims decide, the
    /// registry's counter only says where to start looking. A slot number therefore never goes to two
    /// owners, also after the registry was restored from an older copy (which would otherwise hand a
    /// live tenant's slot to a new one, and deleting either would shred both).
    fn claim_slot(&mut self, registry: &Registry) -> Result<SlotNumber, ApplianceError> {
        let from = registry.next_slot()?;
        let from = u32::try_from(from.0).map_err(|_| ApplianceError::SlotsExhausted(from.0))?;
        let slot = SlotNumber(u64::from(self.machine.tpm.liveness_claim_from(from)?));
        registry.slot_handed_out(slot)?;
        Ok(slot)
    }

    /// [`Appliance::seal_policy`] for a liveness slot already known.
    fn seal_policy_for(&mut self, liveness: LivenessSlot) -> Result<SealPolicy, ApplianceError> {
        self.machine.tpm.liveness_ensure_index(liveness.index_no())?;
        let bank = crate::measure::tpm_bank(self.profile.seal_bank());
        let pcrs = self
            .profile
            .bound_pcrs()
            .iter()
            .map(|p| PcrIndex::new(p.get()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(TpmError::from)?;
        let values = self.machine.tpm.pcr_read(bank, &pcrs)?;
        Ok(SealPolicy::new(values, liveness))
    }

    /// Creates a tenant: random KEK sealed to the current measured state and a fresh liveness slot, an
    /// empty vault whose DEK the KEK wraps, and a one-time recovery secret.
    pub fn create_tenant(&mut self, name: &str) -> Result<CreatedTenant, ApplianceError> {
        crate::registry::check_name(name)?;
        let registry = self.registry_mut()?;
        registry.check_name_free(name)?;
        self.sweep_unfinished_creations(&registry);
        let id = TenantId::random()?;
        let seed = SignerSeed::generate()?;
        let signer = LedgerSigner::tenant(id, &seed)?;
        // The appliance ledger records the creation, with the tenant's public key, before it happens.
        let appliance = self.appliance_ledger()?;
        let token = appliance.gate.attest(OarDraft::tenant_created(operator_actor(), id, signer.public_key()))?;
        let created = self.as_owner().and_then(|()| {
            let slot = self.claim_slot(&registry)?;
            let created = self.create_tenant_files(id, name, &registry, &seed, signer, slot);
            // A creation whose registry entry may have been stored keeps its directory and its creation
            // marker: the next creation removes them if the registry does not list the tenant.
            if created.as_ref().is_err_and(|e| !e.effect_unknown()) {
                self.abandon_tenant(id, slot);
            }
            created
        });
        let (created, refused) = record_outcome(&appliance.gate, token, created.map(|c| (Digest::None, c)));
        let created = match (created, refused) {
            // The tenant exists and its recovery secret can be shown only now: an outcome the ledger cannot
            // take (it records the creation as interrupted when it next opens) must not lose it.
            (Ok(created), Some(refused)) => {
                tracing::error!(
                    tenant = %id,
                    error = %with_causes(&refused),
                    "the tenant was created, but the appliance ledger could not record the outcome; it records \
                     the creation as interrupted when it next opens (remove the cause first)"
                );
                Ok(created)
            }
            (created, refused) => unrecorded(OpKind::TenantCreate, created, refused),
        };
        appliance.gate.close()?;
        created
    }

    /// Undoes what a failed creation of tenant `id` left behind, as far as it can (what it cannot is
    /// logged): the liveness slot is set dead, so no key sealed for the tenant can ever unseal, and the
    /// tenant's directory is removed. The slot itself is not reused.
    fn abandon_tenant(&mut self, id: TenantId, slot: SlotNumber) {
        let killed = liveness_of(slot).and_then(|l| Ok(self.machine.tpm.liveness_kill(l)?));
        if let Err(e) = killed {
            tracing::warn!(tenant = %id, slot = slot.0, error = %with_causes(&e), "the failed tenant's liveness slot \
                could not be set dead (its key, if it was sealed, stays in its directory only)");
        }
        let dir = self.dd.tenant_dir(&id);
        if let Err(e) = std::fs::remove_dir_all(&dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(tenant = %id, dir = %dir.display(), error = %e, "the failed tenant's directory could \
                not be removed; the next tenant creation removes it");
            return;
        }
        let _ = std::fs::remove_file(self.creating_marker(id));
    }

    fn create_tenant_files(
        &mut self,
        id: TenantId,
        name: &str,
        registry: &Registry,
        seed: &SignerSeed,
        signer: LedgerSigner,
        slot: SlotNumber,
    ) -> Result<CreatedTenant, ApplianceError> {
        let policy = self.seal_policy(slot)?;
        let kek = SecretKey::random();
        let recovery = RecoverySecret::random();
        let sealed = self.machine.tpm.seal(kek.expose_secret(), &policy, &recovery.auth_value(id)[..])?;
        let marker = self.creating_marker(id);
        create_durable_marker(&marker).map_err(io(&marker))?;
        let dir = self.dd.tenant_dir(&id);
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let sealed_path = dir.join("kek.sealed");
        write_durable(&sealed_path, &sealed.to_bytes()).map_err(io(&sealed_path))?;
        let vault = Vault::create(&dir.join("vault.redb"), id, &kek)?;
        let seed_key = SecretKey::copy_of(seed.expose_secret());
        vault.put_secret(SIGNING_SEED, &seed_key)?;
        Gate::create(&dir.join("ledger"), signer, self.runtime_state()?)?.close()?;
        let record = TenantRecord { id, name: name.to_string(), created_unix: now_unix(), slot };
        // The registry entry comes last: a crash before it leaves a directory that the next creation
        // removes (its marker says so; a failure returned before it is undone by `abandon_tenant`), never
        // a listed tenant without a sealed key.
        registry.insert(&record).map_err(|e| match e {
            RegistryError::Unsettled { .. } => ApplianceError::CreationUnsettled { name: name.to_string(), source: e },
            e => e.into(),
        })?;
        if let Err(e) = std::fs::remove_file(&marker) {
            // Harmless: the next creation finds the tenant listed and removes only the marker.
            tracing::warn!(tenant = %id, marker = %marker.display(), error = %e, "could not remove the creation marker");
        }
        Ok(CreatedTenant { record, recovery })
    }

    /// `tenants/.creating-<id>`: written before a tenant's directory, removed once the registry lists the
    /// tenant. One left behind marks what a creation that was killed left; a directory without one is
    /// never removed for being unlisted (the registry may have been restored from an older copy).
    fn creating_marker(&self, id: TenantId) -> std::path::PathBuf {
        self.dd.tenants_dir().join(format!(".creating-{id}"))
    }

    /// Removes what tenant creations that were killed left: the directory of each tenant with a creation
    /// marker that the registry does not list, and the markers. Called with the registry open for
    /// writing, so no creation runs meanwhile. Best effort: what cannot be removed is logged and left
    /// for the next creation.
    fn sweep_unfinished_creations(&self, registry: &Registry) {
        let tenants = self.dd.tenants_dir();
        let Ok(entries) = std::fs::read_dir(&tenants) else { return };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(id) = name.to_str().and_then(|n| n.strip_prefix(".creating-")).and_then(|n| n.parse().ok()) else {
                continue;
            };
            match registry.get(id) {
                Ok(_) => {}
                Err(RegistryError::UnknownTenant(_)) => {
                    let dir = self.dd.tenant_dir(&id);
                    match std::fs::remove_dir_all(&dir) {
                        Ok(()) => {
                            tracing::warn!(tenant = %id, "removed what an interrupted creation of this tenant left")
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                        Err(e) => {
                            tracing::warn!(tenant = %id, dir = %dir.display(), error = %e, "could not remove what an interrupted creation left");
                            continue;
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(tenant = %id, error = %e, "cannot tell whether an interrupted creation left this tenant");
                    continue;
                }
            }
            let _ = std::fs::remove_file(entry.path());
        }
    }

    /// Every tenant (no unsealing).
    pub fn list_tenants(&self) -> Result<Vec<TenantRecord>, ApplianceError> {
        Ok(self.registry()?.list()?)
    }

    fn load_sealed(&self, id: TenantId) -> Result<SealedObject, ApplianceError> {
        let path = self.dd.tenant_dir(&id).join("kek.sealed");
        let bytes = std::fs::read(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => ApplianceError::SealedMissing { tenant: id, path: path.clone() },
            _ => io(&path)(e),
        })?;
        SealedObject::from_bytes(&bytes).map_err(|source| ApplianceError::SealedCorrupt {
            tenant: id,
            path: path.display().to_string(),
            source: Box::new(source),
        })
    }

    fn unseal_kek(&mut self, id: TenantId, auth: UnsealAuth<'_>) -> Result<SecretKey, ApplianceError> {
        let sealed = self.load_sealed(id)?;
        let secret = self.machine.tpm.unseal(&sealed, auth).map_err(|e| self.classify(id, e))?;
        let mut bytes = Zeroizing::new(secret.expose_secret().to_vec());
        SecretKey::take_from(&mut bytes[..]).ok_or_else(|| ApplianceError::SealedCorrupt {
            tenant: id,
            path: "kek.sealed".into(),
            source: "the unsealed key is not 32 bytes".into(),
        })
    }

    fn classify(&self, id: TenantId, e: TpmError) -> ApplianceError {
        match e {
            TpmError::MeasuredStateChanged { .. } => {
                ApplianceError::MeasuredStateChanged { tenant: id, detail: e.to_string() }
            }
            TpmError::TenantShredded { .. } => ApplianceError::Shredded(id),
            TpmError::WrongRecoverySecret => ApplianceError::WrongRecoverySecret(id),
            TpmError::ObjectCorrupt { .. } => ApplianceError::SealedCorrupt {
                tenant: id,
                path: self.dd.tenant_dir(&id).join("kek.sealed").display().to_string(),
                source: Box::new(e),
            },
            other => ApplianceError::Tpm(other),
        }
    }

    /// Unseals tenant `id`'s KEK — that tenant's and no other — and opens its vault.
    pub fn unlock(&mut self, id: TenantId) -> Result<UnlockedTenant, ApplianceError> {
        self.unlock_with(id, false)
    }

    /// [`Appliance::unlock`] with the vault opened read-only ([`Vault::open_read_only`]): for commands that
    /// only read records (their OARs and outcomes still go to the ledger). Nothing is written to the vault
    /// file, so no vault sync is paid on open or close.
    pub fn unlock_read_only(&mut self, id: TenantId) -> Result<UnlockedTenant, ApplianceError> {
        self.unlock_with(id, true)
    }

    fn unlock_with(&mut self, id: TenantId, read_only: bool) -> Result<UnlockedTenant, ApplianceError> {
        let record = self.registry()?.get(id)?;
        let kek = self.unseal_kek(id, UnsealAuth::MeasuredState)?;
        let dir = self.dd.tenant_dir(&id);
        let path = dir.join("vault.redb");
        let vault = if read_only { Vault::open_read_only(&path, id, &kek)? } else { Vault::open(&path, id, &kek)? };
        let mut raw = Zeroizing::new(*vault.get_secret(SIGNING_SEED)?.expose_secret());
        let seed = SignerSeed::from_bytes(&mut raw);
        let gate = open_gate(&dir.join("ledger"), LedgerSigner::tenant(id, &seed)?, self.runtime_state()?)?;
        Ok(UnlockedTenant { record, vault, gate, dd: self.dd.clone() })
    }

    /// Deletes tenant `id` irreversibly: sets its TPM liveness bit first (after which no copy of its sealed
    /// key can ever unseal), then removes its files and registry entry.
    /// `name` must be the tenant's name: a second, independent statement of which tenant is meant, so that a
    /// wrong id taken from a list or a script destroys nothing.
    pub fn delete_tenant(&mut self, id: TenantId, name: &str) -> Result<TenantRecord, ApplianceError> {
        // Checked on the registry opened read-only, so a refused delete changes no byte of the data dir.
        let named = self.registry()?.get(id)?;
        if named.name != name {
            return Err(ApplianceError::DeleteNameMismatch { tenant: id, name: named.name, given: name.to_string() });
        }
        let registry = self.registry_mut()?;
        let record = registry.get(id)?;
        let appliance = self.appliance_ledger()?;
        let draft = OarDraft::new(operator_actor(), OpKind::TenantDelete, Target::Tenant(id), Digest::None);
        let token = appliance.gate.attest(draft)?;
        let done = self.as_owner().and_then(|()| self.shred(id, &registry, &record));
        let done = settle(&appliance.gate, token, done.map(|()| (Digest::None, record)));
        appliance.gate.close()?;
        done
    }

    fn shred(&mut self, id: TenantId, registry: &Registry, record: &TenantRecord) -> Result<(), ApplianceError> {
        self.machine.tpm.liveness_kill(liveness_of(record.slot)?)?;
        // From here the deletion is final; what fails now only leaves files behind.
        let unfinished = |source: ApplianceError| ApplianceError::DeleteUnfinished {
            tenant: id,
            name: record.name.clone(),
            source: Box::new(source),
        };
        let dir = self.dd.tenant_dir(&id);
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(|e| unfinished(io(&dir)(e)))?;
        }
        registry.remove(id).map_err(|e| unfinished(e.into()))?;
        Ok(())
    }

    /// Reseals tenant `id`'s KEK to the current measured state. Without a recovery secret the old measured
    /// state must still unseal (useful before a planned change); with one, the recovery branch is used.
    /// The recovery secret stays the same.
    pub fn reseal(&mut self, id: TenantId, recovery: &RecoverySecret) -> Result<(), ApplianceError> {
        let record = self.registry()?.get(id)?;
        let auth = recovery.auth_value(id);
        let kek = self.unseal_kek(id, UnsealAuth::Recovery(&auth[..]))?;
        let policy = self.seal_policy(record.slot)?;
        let sealed = self.machine.tpm.seal(kek.expose_secret(), &policy, &auth[..])?;
        let path = self.dd.tenant_dir(&id).join("kek.sealed");
        write_durable(&path, &sealed.to_bytes()).map_err(io(&path))?;
        Ok(())
    }

    /// A fresh random nonce (used by the walkthrough to make a distinct extend).
    pub fn random_digest() -> [u8; 32] {
        let mut b = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut b);
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outcome_the_ledger_cannot_take_is_reported_with_what_became_of_the_operation() {
        let refused = || Some(LedgerError::Unavailable("disk full".into()));
        assert_eq!(unrecorded(OpKind::VaultPut, Ok(7), None).expect("recorded"), 7);
        let e = unrecorded(OpKind::VaultPut, Ok(7), refused()).expect_err("unrecorded");
        assert!(e.to_string().starts_with("vault.put was carried out, but the ledger could not record"), "{e}");
        assert!(std::error::Error::source(&e).is_some_and(|c| c.to_string().contains("disk full")), "{e:?}");
        let failed = Err(ApplianceError::Vault(VaultError::Storage(std::io::Error::other("no space"))));
        let e = unrecorded::<u64>(OpKind::VaultPut, failed, refused()).expect_err("failed");
        let text = e.to_string();
        assert!(text.starts_with("vault.put failed (the vault file could not be read or written"), "{text}");
        assert!(text.contains("no space") && text.contains("could not record the failure either"), "{text}");
        let failed = Err(ApplianceError::Vault(VaultError::NotFound("k".into())));
        let e = unrecorded::<u64>(OpKind::VaultGet, failed, None).expect_err("failed");
        assert!(matches!(e, ApplianceError::Vault(VaultError::NotFound(_))), "{e:?}");
    }

    #[test]
    fn only_failures_that_may_have_taken_effect_are_marked_so() {
        let full = || std::io::Error::from(std::io::ErrorKind::StorageFull);
        let unsettled = ApplianceError::Vault(VaultError::Unsettled { source: full(), reopen: "moved".into() });
        assert!(unsettled.effect_unknown());
        let registry = RegistryError::Unsettled { source: full(), reopen: "moved".into() };
        assert!(ApplianceError::CreationUnsettled { name: "legal".into(), source: registry }.effect_unknown());
        assert!(!ApplianceError::Vault(VaultError::Storage(full())).effect_unknown());
        assert!(!ApplianceError::Registry(RegistryError::Storage(full())).effect_unknown());
        // The mark is a public digest an auditor can compute: SHA-256 of its label.
        let label = b"bulwark/outcome/effect-unknown/v1";
        assert_eq!(effect_unknown(), Digest::Public(Hash(sha2::Sha256::digest(label).into())));
    }

    #[test]
    fn recovery_secret_text_round_trips_and_debug_is_redacted() {
        let r = RecoverySecret::random();
        let text = r.expose_text();
        assert_eq!(text.len(), 64 + 7);
        let back = RecoverySecret::parse(&text.to_uppercase()).unwrap();
        let t = TenantId::random().unwrap();
        assert_eq!(*back.auth_value(t), *r.auth_value(t));
        assert!(!format!("{r:?}").contains(&text[..8]));
        assert!(RecoverySecret::parse("abc").is_err());
        assert!(RecoverySecret::parse(&"z".repeat(64)).is_err());
    }

    /// Rewrites `owner.sealed` as a data dir from before Bulwark took the lockout hierarchy had it: the
    /// owner's authorization only, sealed to the same policy and recovery value.
    fn seal_owner_only(app: &mut Appliance, recovery: &RecoverySecret) -> SecretBytes {
        let auths = app.unseal_hierarchy_auths().expect("unseal").expect("owner.sealed");
        let old = app.load_appliance_sealed(OWNER_SEALED).expect("owner.sealed");
        let auth = recovery.auth_value_for(app.appliance_id().expect("id").as_bytes());
        let owner_only = app.machine.tpm.seal(auths.owner.expose_secret(), old.policy(), &auth[..]).expect("seal");
        let path = app.dd.appliance_dir().join(OWNER_SEALED);
        write_durable(&path, &owner_only.to_bytes()).expect("write");
        auths.lockout.expect("init sealed a lockout authorization")
    }

    #[test]
    fn appliance_reseal_takes_the_lockout_hierarchy_of_a_data_dir_that_predates_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sw = bulwark_tpm::swtpm::Swtpm::start(&dir.path().join("swtpm")).expect("swtpm");
        let dd = DataDir::new(&dir.path().join("data")).expect("data dir");
        let (mut app, recovery) = Appliance::init(dd, &sw.tcti(), Some("dev-swtpm"), false).expect("init");

        // As such a data dir is: the owner's authorization alone in owner.sealed, the lockout one empty.
        let lockout = seal_owner_only(&mut app, &recovery);
        app.machine.tpm.change_lockout_auth(lockout.expose_secret(), &[]).expect("empty the lockout auth");
        assert!(!app.machine.tpm.lockout_auth_set().expect("read"));

        assert_eq!(app.reseal_appliance(&recovery).expect("reseal"), ApplianceReseal { took_lockout: true });
        assert!(app.machine.tpm.lockout_auth_set().expect("read"));
        let taken = app.unseal_hierarchy_auths().expect("unseal").expect("owner.sealed").lockout.expect("sealed");
        // The sealed value is the TPM's: a change from it to itself succeeds.
        app.machine.tpm.change_lockout_auth(taken.expose_secret(), taken.expose_secret()).expect("sealed value");
        // A data dir already up to date: nothing more is taken, the sealed value stays.
        assert_eq!(app.reseal_appliance(&recovery).expect("reseal"), ApplianceReseal { took_lockout: false });
        let again = app.unseal_hierarchy_auths().expect("unseal").expect("owner.sealed").lockout.expect("sealed");
        assert_eq!(again.expose_secret(), taken.expose_secret());

        // Someone else holds the lockout hierarchy of an old data dir: reseal works and leaves it alone.
        seal_owner_only(&mut app, &recovery);
        app.machine.tpm.change_lockout_auth(taken.expose_secret(), b"someone else").expect("foreign auth");
        assert_eq!(app.reseal_appliance(&recovery).expect("reseal"), ApplianceReseal { took_lockout: false });
        assert!(app.unseal_hierarchy_auths().expect("unseal").expect("owner.sealed").lockout.is_none());
        app.machine.tpm.change_lockout_auth(b"someone else", b"someone else").expect("still the foreign auth");
        // The appliance key still opens under the current measured state.
        app.appliance_ledger().expect("appliance ledger");
    }
}
