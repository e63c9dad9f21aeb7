//! Bulwark's attested-action ledger: Operation Attestation Records (OARs), per-tenant and appliance
//! Merkle ledgers in the C2SP tlog-tiles layout, ML-DSA-65 signed checkpoints, receipts, the gate every
//! operation passes through, bundle export and offline bundle verification.
//!
//! # Trust model
//!
//! - **Trusted:** the [`signer::LedgerSigner`] handed in by the runtime (its seed comes from the tenant's
//!   TPM-sealed KEK), the local clock for OAR times, and the filesystem's fsync/rename semantics for
//!   durability (not for integrity).
//! - **Not trusted:** anything read back from disk or from an exported bundle. Checkpoints are verified
//!   against the pinned public key before use, tiles are re-derived and compared, entries are decoded
//!   strictly (canonical encoding, no trailing bytes, caps on every variable-length field).
//! - **What a signature means:** one ML-DSA-65 signature per durable batch, over a C2SP checkpoint of the
//!   ledger's Merkle root, under a FIPS 204 context string naming the tenant (or appliance). An OAR is
//!   "signed" when a checkpoint so signed includes it; its receipt (c2sp.org/tlog-proof) carries the
//!   inclusion proof. See docs/FORMATS.md.
//! - **Gate:** an operation can only be expressed with an [`gate::Attested`] token, which only
//!   [`gate::Gate::attest`] mints and only after the OAR is durably appended under a signed checkpoint.
//!
//! # What this crate must not depend on
//!
//! No async runtime (tokio), no TPM code, no GPU code: the offline verifier `bulwark-verify` links it.
//! `unsafe` is forbidden here (workspace lint); memory locking goes through the `region` crate and
//! process hardening through `rustix`, both safe interfaces. `expect`/`unwrap` appear only in tests.

pub mod audit;
pub mod export;
pub mod fsutil;
pub mod gate;
pub mod hash;
pub mod history;
pub mod ids;
pub mod journal;
pub mod ledger;
pub mod merkle;
pub mod note;
pub mod oar;
pub mod receipt;
pub mod signer;
pub mod tiles;

pub use audit::{AuditError, AuditReport, Progress, verify_bundle};
pub use export::{ExportError, export_bundle};
pub use gate::{Attested, Gate, GateOptions};
pub use hash::Hash;
pub use ids::{ApplianceId, TenantId};
pub use ledger::LedgerError;
pub use oar::{
    Actor, ApprovalRef, Commitment, Digest, LedgerScope, OarDraft, OpKind, Opening, Outcome, PolicyRef, Role,
    RuntimeState, Status, Target, TreeHead,
};
pub use receipt::Receipt;
pub use signer::{LedgerPublicKey, LedgerSigner, SignerSeed, TenantSigner};

#[cfg(test)]
pub(crate) mod testutil {
    use std::path::PathBuf;

    use crate::oar::{Actor, Commitment, Digest, OarDraft, OpKind, Role, RuntimeState, Target};
    use crate::{ApplianceId, Gate, LedgerPublicKey, LedgerSigner, Outcome, SignerSeed, TenantId};

    pub(crate) fn runtime() -> RuntimeState {
        RuntimeState::new(23, 0x000B, vec![0x5c; 32]).unwrap()
    }

    pub(crate) fn user() -> Actor {
        let (c, _) = Commitment::salted("actor", b"alice").unwrap();
        Actor { role: Role::TenantUser, subject: Digest::Salted(c) }
    }

    pub(crate) fn put(key: &str) -> OarDraft {
        let (t, _) = Commitment::salted("vault/key", key.as_bytes()).unwrap();
        let (p, _) = Commitment::salted("vault/value", b"secret value").unwrap();
        OarDraft::new(user(), OpKind::VaultPut, Target::Object(Digest::Salted(t)), Digest::Salted(p))
    }

    /// A tenant ledger with `ops` completed operations and an appliance ledger that published its key.
    pub(crate) struct World {
        pub(crate) _dir: tempfile::TempDir,
        pub(crate) tenant_dir: PathBuf,
        pub(crate) appliance_dir: PathBuf,
        pub(crate) tenant: TenantId,
        pub(crate) tenant_key: LedgerPublicKey,
        pub(crate) appliance_key: LedgerPublicKey,
        pub(crate) tenant_seed: SignerSeed,
    }

    /// Every file under `dir` and its bytes.
    pub(crate) fn snapshot(dir: &std::path::Path) -> std::collections::BTreeMap<PathBuf, Vec<u8>> {
        let mut out = std::collections::BTreeMap::new();
        let mut todo = vec![dir.to_path_buf()];
        while let Some(d) = todo.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    todo.push(p);
                } else {
                    out.insert(p.clone(), std::fs::read(&p).unwrap());
                }
            }
        }
        out
    }

    pub(crate) fn world(ops: usize) -> World {
        let dir = tempfile::tempdir().unwrap();
        let tenant = TenantId::random().unwrap();
        let appliance = ApplianceId::random().unwrap();
        let aseed = SignerSeed::generate().unwrap();
        let tseed = SignerSeed::generate().unwrap();
        let asigner = LedgerSigner::appliance(appliance, &aseed).unwrap();
        let tsigner = LedgerSigner::tenant(tenant, &tseed).unwrap();
        let tenant_key = tsigner.public_key().clone();
        let appliance_key = asigner.public_key().clone();
        let adir = dir.path().join("appliance");
        let tdir = dir.path().join("tenant");
        let agate = Gate::create(&adir, asigner, runtime()).unwrap();
        let op = Actor { role: Role::Operator, subject: Digest::None };
        let att = agate.attest(OarDraft::tenant_created(op, tenant, &tenant_key)).unwrap();
        agate.complete(att, Outcome::success(Digest::None)).unwrap();
        agate.close().unwrap();
        let tgate = Gate::create(&tdir, tsigner, runtime()).unwrap();
        for i in 0..ops {
            let att = tgate.attest(put(&format!("k{i}"))).unwrap();
            tgate.complete(att, Outcome::success(Digest::Public(crate::Hash::of(b"ok")))).unwrap();
        }
        tgate.close().unwrap();
        World {
            _dir: dir,
            tenant_dir: tdir,
            appliance_dir: adir,
            tenant,
            tenant_key,
            appliance_key,
            tenant_seed: tseed,
        }
    }
}
