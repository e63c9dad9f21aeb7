//! Issue 3's acceptance, through the real binaries: every vault operation is attested in the tenant's
//! ledger, the exported bundle verifies offline under the tenant's and the appliance's pinned keys (and
//! under no other tenant's key), any single-byte change to any file of the bundle is refused by the
//! verifier, and a vault operation presented with a token for another record, operation or tenant is
//! refused.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use bulwark_appliance::ids::TenantId;
use bulwark_appliance::secret::SecretKey;
use bulwark_appliance::vault::{Vault, VaultError};
use bulwark_ledger::oar::{Entry, OpKind, Status};
use bulwark_tests::{Env, Run, TestGate, files_under, run_cmd, verify_bin};

/// Runs `bulwark-verify BUNDLE --key KEY [--appliance-key A]`.
fn verify(bundle: &Path, key: &Path, appliance_key: Option<&Path>) -> Run {
    let mut c = Command::new(verify_bin());
    c.arg(bundle).arg("--key").arg(key);
    if let Some(a) = appliance_key {
        c.arg("--appliance-key").arg(a);
    }
    run_cmd(c, None)
}

/// The exit code of a finished run (`None` when killed by a signal).
fn code(run: &Run) -> Option<i32> {
    run.status.code()
}

/// From the verifier's summary line for the tenant ledger ("tenant ledger …: E entries, N OARs, M
/// outcomes, …"): (entries, OARs, outcomes).
fn tenant_counts(stdout: &str) -> (u64, u64, u64) {
    let line = stdout.lines().find(|l| l.starts_with("tenant ledger ")).expect("a tenant ledger summary line");
    let num = |what: &str| -> u64 {
        let before = line.split(&format!(" {what},")).next().expect("summary field");
        before.rsplit(' ').next().and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("{what} in {line:?}"))
    };
    (num("entries"), num("OARs"), num("outcomes"))
}

/// Every entry of the bundle's tenant ledger, decoded from its entry bundles (C2SP tlog-tiles entry
/// bundles: each entry a big-endian uint16 length and its bytes), in index order.
fn tenant_entries(bundle: &Path) -> Vec<Entry> {
    let dir = bundle.join("tenant").join("tile").join("entries");
    let mut files = files_under(&dir);
    files.sort();
    let mut out = Vec::new();
    for f in files {
        let bytes = std::fs::read(&f).expect("read entry bundle");
        let mut rest = bytes.as_slice();
        while !rest.is_empty() {
            assert!(rest.len() >= 2, "truncated entry bundle {}", f.display());
            let len = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
            let e = rest.get(2..2 + len).unwrap_or_else(|| panic!("short entry in {}", f.display()));
            out.push(Entry::decode(e).unwrap_or_else(|e| panic!("entry in {} does not decode: {e}", f.display())));
            rest = &rest[2 + len..];
        }
    }
    out
}

#[test]
fn attested_operations_export_and_verify_offline() {
    let env = Env::new();
    env.init();
    let legal = env.create_tenant("legal");
    let other = env.create_tenant("other");

    // The tenant's operations: each one through the CLI is one OAR and one outcome in its ledger.
    let mut ops: Vec<(OpKind, bool)> = Vec::new();
    let put =
        env.run_stdin(&["vault", "put", "--tenant", &legal.id, "contract/2026", "--json"], b"Indemnity capped").ok();
    let receipt = put.json()["receipt"].as_str().expect("vault put --json prints a receipt").to_string();
    assert!(!receipt.is_empty(), "empty receipt");
    ops.push((OpKind::VaultPut, true));
    env.put(&legal.id, "memo", b"board meets Tuesday");
    ops.push((OpKind::VaultPut, true));
    env.put(&other.id, "k", b"other's record");
    env.assert_get(&legal.id, "contract/2026", b"Indemnity capped");
    ops.push((OpKind::VaultGet, true));
    env.assert_get(&legal.id, "memo", b"board meets Tuesday");
    ops.push((OpKind::VaultGet, true));
    env.get(&legal.id, "no-such-record").fails_with(&["no record"]);
    ops.push((OpKind::VaultGet, false));
    env.run(&["vault", "delete", "--tenant", &legal.id, "memo"]).ok();
    ops.push((OpKind::VaultDelete, true));
    env.get(&legal.id, "memo").fails_with(&["no record"]);
    ops.push((OpKind::VaultGet, false));
    env.assert_get(&legal.id, "contract/2026", b"Indemnity capped");
    ops.push((OpKind::VaultGet, true));

    let s = env.scratch();
    let bundle = s.join("bundle");
    env.run(&["ledger", "export", "--tenant", &legal.id, "--out", bundle.to_str().expect("utf-8")]).ok();
    let pem = |args: &[&str], file: &str| -> PathBuf {
        let run = env.run(args).ok();
        assert!(run.stdout_str().starts_with("-----BEGIN PUBLIC KEY-----"), "{args:?} printed {:?}", run.stdout_str());
        let p = s.join(file);
        std::fs::write(&p, &run.stdout).expect("write pem");
        p
    };
    let legal_pem = pem(&["tenant", "pubkey", "--tenant", &legal.id], "legal.pem");
    let other_pem = pem(&["tenant", "pubkey", "--tenant", &other.id], "other.pem");
    let app_pem = pem(&["appliance", "pubkey"], "app.pem");
    assert_ne!(std::fs::read(&legal_pem).expect("pem"), std::fs::read(&other_pem).expect("pem"));

    // Verifies under the tenant's and the appliance's pinned keys.
    let good = verify(&bundle, &legal_pem, Some(&app_pem));
    assert_eq!(code(&good), Some(0), "verifier refused the pristine bundle:\n{}\n{}", good.stdout_str(), good.stderr);
    let n = u64::try_from(ops.len()).expect("fits");
    let (entries, oars, outcomes) = tenant_counts(good.stdout_str());
    // N operations plus the export itself, each an OAR and its outcome.
    assert_eq!((oars, outcomes), (n + 1, n + 1), "verifier summary: {}", good.stdout_str());
    assert_eq!(entries, 2 * (n + 1));

    // The same, read entry by entry: every operation above appears in order as an OAR of its kind, with
    // an outcome of the right status, and the export last.
    let decoded = tenant_entries(&bundle);
    let oar_ops: Vec<OpKind> = decoded
        .iter()
        .filter_map(|e| match e {
            Entry::Oar(o) => Some(o.op),
            Entry::Outcome(_) => None,
        })
        .collect();
    let mut want_ops: Vec<OpKind> = ops.iter().map(|(op, _)| *op).collect();
    want_ops.push(OpKind::Export);
    assert_eq!(oar_ops, want_ops);
    let statuses: BTreeMap<u64, Status> = decoded
        .iter()
        .filter_map(|e| match e {
            Entry::Outcome(o) => Some((o.counter, o.status)),
            Entry::Oar(_) => None,
        })
        .collect();
    for (i, (op, ok)) in ops.iter().enumerate() {
        let want = if *ok { Status::Succeeded } else { Status::Failed };
        assert_eq!(statuses.get(&(i as u64)), Some(&want), "outcome of operation {i} ({op:?})");
    }
    let gets = oar_ops.iter().filter(|o| **o == OpKind::VaultGet).count();
    assert_eq!(gets, 5, "every vault get, failed ones included, is an OAR");

    // Another tenant's key does not verify this tenant's bundle.
    let wrong = verify(&bundle, &other_pem, Some(&app_pem));
    assert!(matches!(code(&wrong), Some(c) if c != 0), "verified under another tenant's key:\n{}", wrong.stdout_str());

    // One byte flipped in any file of the bundle: the verifier refuses, and says why.
    let files = files_under(&bundle);
    assert!(files.len() >= 5, "bundle has only {files:?}");
    let mut flips = 0usize;
    let mut accepted = Vec::new();
    for f in &files {
        let pristine = std::fs::read(f).expect("read bundle file");
        if pristine.is_empty() {
            continue;
        }
        let mut positions = vec![0, pristine.len() / 2, pristine.len() - 1];
        positions.dedup();
        for pos in positions {
            let mut bytes = pristine.clone();
            bytes[pos] ^= 0x01;
            std::fs::write(f, &bytes).expect("write flipped file");
            let run = verify(&bundle, &legal_pem, Some(&app_pem));
            std::fs::write(f, &pristine).expect("restore file");
            flips += 1;
            let rel = f.strip_prefix(&bundle).expect("under bundle").display().to_string();
            if code(&run) == Some(0) {
                accepted.push(format!("{rel} byte {pos}"));
            } else {
                assert_eq!(code(&run), Some(1), "{rel} byte {pos}: verifier exit {:?}: {}", run.status, run.stderr);
                assert!(run.stderr.contains("FAIL"), "{rel} byte {pos}: no failure named: {:?}", run.stderr);
            }
        }
    }
    bulwark_tests::log_line(&format!(
        "bundle of {} files: {flips} single-byte flips, accepted: {accepted:?}",
        files.len()
    ));
    assert!(accepted.is_empty(), "flips the verifier accepted: {accepted:#?}");
    // Every flip was restored: the bundle verifies again.
    assert_eq!(code(&verify(&bundle, &legal_pem, Some(&app_pem))), Some(0));
}

#[test]
fn vault_refuses_tokens_for_another_record_operation_or_tenant() {
    let dir = bulwark_tests::fast_tempdir();
    let (t, u) = (TenantId::random().expect("id"), TenantId::random().expect("id"));
    let kek = SecretKey::random();
    let v = Vault::create(&dir.path().join("vault.redb"), t, &kek).expect("create");
    let gate = TestGate::new(t);
    let other_gate = TestGate::new(u);
    gate.put(&v, "k", b"value").expect("attested put");
    gate.put(&v, "j", b"other value").expect("attested put");

    let not_attested = |r: Result<(), VaultError>, what: &str| {
        assert!(matches!(r, Err(VaultError::NotAttested(_))), "{what}: {r:?}");
    };
    // A get token for another record.
    let get_j = gate.for_key(&v, OpKind::VaultGet, "j");
    not_attested(v.get(&get_j, "k").map(drop), "get k with a token for j");
    // A token for another operation on the same record.
    let put_k = gate.for_key(&v, OpKind::VaultPut, "k");
    not_attested(v.get(&put_k, "k").map(drop), "get with a put token");
    not_attested(v.delete(&put_k, "k"), "delete with a put token");
    let get_k = gate.for_key(&v, OpKind::VaultGet, "k");
    not_attested(v.put(&get_k, "k", b"overwrite").map(drop), "put with a get token");
    not_attested(v.list(&get_k).map(drop), "list with a get token");
    not_attested(v.verify(&get_k).map(drop), "verify with a get token");
    // A token minted by another tenant's ledger for the same operation and target.
    let foreign = other_gate.attest(OpKind::VaultGet, v.key_target("k").expect("target"));
    not_attested(v.get(&foreign, "k").map(drop), "get with another tenant's token");
    let foreign_list = other_gate.for_vault(OpKind::VaultList);
    not_attested(v.list(&foreign_list).map(drop), "list with another tenant's token");

    // Nothing was changed by the refused calls, and the right tokens work.
    assert_eq!(&*v.get(&get_k, "k").expect("attested get"), b"value");
    assert_eq!(&*v.get(&get_j, "j").expect("attested get"), b"other value");
    let list = gate.for_vault(OpKind::VaultList);
    assert_eq!(v.verify(&list).expect("verify"), 2);
    for tok in [get_j, put_k, get_k, list] {
        gate.complete(tok);
    }
}
