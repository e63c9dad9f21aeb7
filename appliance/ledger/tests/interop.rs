//! Interoperability: receipts and checkpoint signatures made here verify with an independent ML-DSA-65
//! implementation (pyca/cryptography >= 48, driven through tests/interop_check.py), and a checkpoint
//! signed by pyca verifies here. The module is looked up first in the repository's git-ignored `.pyca`
//! folder (where `scripts/install-deps --test-extras` puts it, since Debian 12's Python refuses a plain
//! `pip install`), then in python3's own paths. Skipped, with the reason printed, when python3 or the
//! module is absent.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns: a failed setup step should panic

use std::path::{Path, PathBuf};
use std::process::Command;

use bulwark_ledger::note::SignedCheckpoint;
use bulwark_ledger::{
    Actor, Commitment, Digest, Gate, LedgerScope, LedgerSigner, OarDraft, OpKind, Outcome, Role, RuntimeState,
    SignerSeed, Target, TenantId,
};

/// The project-local install made by `scripts/install-deps --test-extras`: `<repo>/.pyca`.
fn local_pyca() -> PathBuf {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).ancestors().nth(2).unwrap(); // appliance/ledger -> repo
    repo.join(".pyca")
}

/// `python3`, with the project-local install (when present) ahead of any PYTHONPATH already set and of
/// the interpreter's own site-packages, so a system-wide install is used only when there is no local one.
fn python3() -> Command {
    let mut cmd = Command::new("python3");
    let local = local_pyca();
    if local.is_dir() {
        let mut paths = vec![local];
        if let Some(old) = std::env::var_os("PYTHONPATH") {
            paths.extend(std::env::split_paths(&old));
        }
        cmd.env("PYTHONPATH", std::env::join_paths(paths).unwrap());
    }
    cmd
}

/// The version and location of the importable pyca/cryptography, when it is at least 48.
fn pyca_available() -> Result<String, String> {
    let out = python3()
        .args(["-c", "import cryptography, sys; print(cryptography.__version__, 'from', cryptography.__file__); v = tuple(int(x) for x in cryptography.__version__.split('.')[:2]); sys.exit(0 if v >= (48, 0) else 3)"])
        .output()
        .map_err(|e| format!("python3 not runnable: {e}"))?;
    let found = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    match out.status.code() {
        Some(0) => Ok(found),
        Some(3) => Err(format!(
            "pyca/cryptography older than 48 ({found}); run scripts/install-deps --test-extras to put a newer one in {}",
            local_pyca().display()
        )),
        _ => Err(format!(
            "pyca/cryptography not importable (run scripts/install-deps --test-extras to install it into {}): {}",
            local_pyca().display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )),
    }
}

#[test]
fn pyca_verifies_our_signatures_and_we_verify_theirs() {
    match pyca_available() {
        Ok(found) => eprintln!("interop test: using pyca/cryptography {found}"),
        Err(why) => {
            eprintln!("SKIPPED interop test: {why}");
            return;
        }
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
    let out = python3().arg(script).arg(d.path()).output().unwrap();
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
