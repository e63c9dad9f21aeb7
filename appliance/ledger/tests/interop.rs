//! Interoperability: receipts and checkpoint signatures made here verify with an independent ML-DSA-65
//! implementation (pyca/cryptography >= 48, driven through tests/interop_check.py), and a checkpoint
//! signed by pyca verifies here. Skipped, with the reason printed, when python3 or the module is absent.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns: a failed setup step should panic

use std::process::Command;

use bulwark_ledger::note::SignedCheckpoint;
use bulwark_ledger::{
    Actor, Commitment, Digest, Gate, LedgerScope, LedgerSigner, OarDraft, OpKind, Outcome, Role, RuntimeState,
    SignerSeed, Target, TenantId,
};

fn pyca_available() -> Result<(), String> {
    let out = Command::new("python3")
        .args(["-c", "import cryptography, sys; v = tuple(int(x) for x in cryptography.__version__.split('.')[:2]); sys.exit(0 if v >= (48, 0) else 3)"])
        .output()
        .map_err(|e| format!("python3 not runnable: {e}"))?;
    match out.status.code() {
        Some(0) => Ok(()),
        Some(3) => Err("pyca/cryptography older than 48".into()),
        _ => Err(format!("pyca/cryptography not importable: {}", String::from_utf8_lossy(&out.stderr).trim())),
    }
}

#[test]
fn pyca_verifies_our_signatures_and_we_verify_theirs() {
    if let Err(why) = pyca_available() {
        eprintln!("SKIPPED interop test: {why}");
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let tenant = TenantId::random().unwrap();
    let seed = SignerSeed::generate().unwrap();
    std::fs::write(d.path().join("seed.hex"), hex::encode(seed.expose_secret())).unwrap();
    let signer = LedgerSigner::tenant(tenant, &seed).unwrap();
    let key = signer.public_key().clone();
    std::fs::write(d.path().join("tenant.pub.pem"), key.to_spki_pem()).unwrap();
    let gate =
        Gate::create(&d.path().join("ledger"), signer, RuntimeState::new(23, 0x000B, vec![0; 32]).unwrap()).unwrap();
    for i in 0..3 {
        let (k, _) = Commitment::salted("vault/key", format!("k{i}").as_bytes()).unwrap();
        let draft = OarDraft::new(
            Actor { role: Role::TenantUser, subject: Digest::None },
            OpKind::VaultPut,
            Target::Object(Digest::Salted(k)),
            Digest::None,
        );
        let att = gate.attest(draft).unwrap();
        std::fs::write(d.path().join(format!("oar{i}.tlog-proof")), att.receipt().to_text()).unwrap();
        let r = gate.complete(att, Outcome::success(Digest::None)).unwrap();
        std::fs::write(d.path().join(format!("outcome{i}.tlog-proof")), r.to_text()).unwrap();
    }
    gate.close().unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop_check.py");
    let out = Command::new("python3").arg(script).arg(d.path()).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "pyca check failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(stdout.lines().filter(|l| l.starts_with("ok ")).count(), 6, "{stdout}");
    let note = std::fs::read_to_string(d.path().join("py_note.txt")).unwrap();
    let scope = LedgerScope::Tenant(tenant);
    let cp = SignedCheckpoint::verify(&note, &scope, &key).unwrap();
    assert_eq!(cp.head().size, 6);
    let other = LedgerScope::Tenant(TenantId::random().unwrap());
    assert!(
        SignedCheckpoint::verify(
            &note.replace(&tenant.to_string(), &other.tenant().unwrap().to_string()),
            &other,
            &key
        )
        .is_err()
    );
}
