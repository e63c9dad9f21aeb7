//! Drives the real `bulwark-verify` binary against bundles exported by the real ledger code.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns: a failed setup step should panic

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use bulwark_ledger::{
    Actor, ApplianceId, Commitment, Digest, Gate, LedgerSigner, OarDraft, OpKind, Outcome, Role, RuntimeState,
    SignerSeed, Target, TenantId, export_bundle,
};

struct Fixture {
    _dir: tempfile::TempDir,
    bundle: PathBuf,
    tenant_pem: PathBuf,
    appliance_pem: PathBuf,
    other_pem: PathBuf,
    receipt: PathBuf,
    tenant: TenantId,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let rt = RuntimeState::new(23, 0x000B, vec![1; 32]).unwrap();
    let tenant = TenantId::random().unwrap();
    let asigner = LedgerSigner::appliance(ApplianceId::random().unwrap(), &SignerSeed::generate().unwrap()).unwrap();
    let tsigner = LedgerSigner::tenant(tenant, &SignerSeed::generate().unwrap()).unwrap();
    let other = LedgerSigner::tenant(TenantId::random().unwrap(), &SignerSeed::generate().unwrap()).unwrap();
    let (tkey, akey) = (tsigner.public_key().clone(), asigner.public_key().clone());
    let agate = Gate::create(&dir.path().join("appliance"), asigner, rt.clone()).unwrap();
    let operator = Actor { role: Role::Operator, subject: Digest::None };
    let att = agate.attest(OarDraft::tenant_created(operator, tenant, &tkey)).unwrap();
    agate.complete(att, Outcome::success(Digest::None)).unwrap();
    agate.close().unwrap();
    let tgate = Gate::create(&dir.path().join("tenant"), tsigner, rt).unwrap();
    let mut receipt_text = String::new();
    for i in 0..3 {
        let (k, _) = Commitment::salted("vault/key", format!("k{i}").as_bytes()).unwrap();
        let user = Actor { role: Role::TenantUser, subject: Digest::None };
        let att = tgate
            .attest(OarDraft::new(user, OpKind::VaultPut, Target::Object(Digest::Salted(k)), Digest::None))
            .unwrap();
        receipt_text = att.receipt().to_text();
        tgate.complete(att, Outcome::success(Digest::None)).unwrap();
    }
    tgate.close().unwrap();
    let bundle = dir.path().join("bundle");
    export_bundle(&dir.path().join("tenant"), &dir.path().join("appliance"), &tkey, &akey, &bundle).unwrap();
    let w = |name: &str, text: String| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    Fixture {
        bundle,
        tenant_pem: w("legal.pub.pem", tkey.to_spki_pem()),
        appliance_pem: w("appliance.pub.pem", akey.to_spki_pem()),
        other_pem: w("other.pub.pem", other.public_key().to_spki_pem()),
        receipt: w("op.tlog-proof", receipt_text),
        tenant,
        _dir: dir,
    }
}

fn verify(bundle: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_bulwark-verify")).arg(bundle).args(args).output().unwrap()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn accepts_a_good_bundle_and_rejects_others() {
    let f = fixture();
    let tenant = f.tenant.to_string();
    let ok = verify(
        &f.bundle,
        &[
            "--key",
            s(&f.tenant_pem),
            "--appliance-key",
            s(&f.appliance_pem),
            "--tenant",
            &tenant,
            "--known",
            s(&f.receipt),
        ],
    );
    let out = String::from_utf8_lossy(&ok.stdout);
    assert!(ok.status.success(), "stdout {out} stderr {}", String::from_utf8_lossy(&ok.stderr));
    assert!(out.contains("6 entries, 3 OARs, 3 outcomes") && out.ends_with("OK\n"), "{out}");
    // No progress bar noise when stderr is not a terminal.
    assert!(ok.stderr.is_empty());

    let without_appliance = verify(&f.bundle, &["--key", s(&f.tenant_pem)]);
    assert!(without_appliance.status.success());
    assert!(String::from_utf8_lossy(&without_appliance.stdout).contains("key NOT pinned"));

    let other = verify(&f.bundle, &["--key", s(&f.other_pem)]);
    assert_eq!(other.status.code(), Some(1));
    let err = String::from_utf8_lossy(&other.stderr);
    assert!(err.contains("tenant/key.pub.pem") && err.contains("pinned"), "{err}");

    let bad_usage = verify(&f.bundle, &["--key", "/nonexistent.pem"]);
    assert_eq!(bad_usage.status.code(), Some(2));
}

#[test]
fn a_flipped_byte_is_named() {
    let f = fixture();
    let entries = f.bundle.join("tenant/tile/entries/000.p/6");
    let mut bytes = std::fs::read(&entries).unwrap();
    let i = bytes.len() / 2;
    bytes[i] ^= 0x20;
    std::fs::write(&entries, &bytes).unwrap();
    let out = verify(&f.bundle, &["--key", s(&f.tenant_pem), "--appliance-key", s(&f.appliance_pem)]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with("FAIL: ") && err.contains("tenant/tile/entries/000.p/6: entry "), "{err}");
}
