//! Issue 2's acceptance sequence, command by command, against the real binary and a real swtpm; the
//! event-log and policy outputs checked against values computed here and against tpm2-tools.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use bulwark_boot::eventlog::{EventType, LogWriter};
use bulwark_boot::{HashAlg, PcrIndex};
use bulwark_tests::{Env, TestTpm, bulwark, bulwark_bin, run_cmd};
use sha1::Sha1;
use sha2::{Digest, Sha256, Sha384};

fn sha1(b: &[u8]) -> Vec<u8> {
    Sha1::digest(b).to_vec()
}
fn sha256(b: &[u8]) -> Vec<u8> {
    Sha256::digest(b).to_vec()
}

/// TPM2_PCR_Extend arithmetic written out again here: new = H(old ‖ digest), PCRs 0-15 start at zero.
fn extend(bank: &str, old: &[u8], digest: &[u8]) -> Vec<u8> {
    let mut buf = old.to_vec();
    buf.extend_from_slice(digest);
    match bank {
        "sha1" => sha1(&buf),
        "sha256" => sha256(&buf),
        _ => unreachable!("bank {bank}"),
    }
}

/// One event the tests put in a log: (pcr, type, sha1 digest, sha256 digest, data).
type Ev = (u32, EventType, Vec<u8>, Vec<u8>, Vec<u8>);

fn sample_events() -> Vec<Ev> {
    let measured: [(u32, EventType, &[u8]); 9] = [
        (0, EventType::S_CRTM_VERSION, b"firmware 1.2.3"),
        (0, EventType::EFI_PLATFORM_FIRMWARE_BLOB, b"firmware volume"),
        (1, EventType::EFI_HANDOFF_TABLES, b"smbios"),
        (4, EventType::EFI_BOOT_SERVICES_APPLICATION, b"shimx64.efi"),
        (4, EventType::EFI_BOOT_SERVICES_APPLICATION, b"bulwark.uki"),
        (7, EventType::EFI_VARIABLE_DRIVER_CONFIG, b"SecureBoot=1"),
        (7, EventType::SEPARATOR, &[0, 0, 0, 0]),
        (14, EventType::IPL, b"MokList"),
        (4, EventType::SEPARATOR, &[0, 0, 0, 0]),
    ];
    measured.iter().map(|(p, t, m)| (*p, *t, sha1(m), sha256(m), m.to_vec())).collect()
}

fn expected_replay(events: &[Ev], banks: &[&str]) -> BTreeMap<String, BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for bank in banks {
        let mut pcrs: BTreeMap<u32, Vec<u8>> = BTreeMap::new();
        for (pcr, ty, d1, d256, _) in events {
            if *ty == EventType::NO_ACTION {
                continue;
            }
            let (size, d) = if *bank == "sha1" { (20, d1) } else { (32, d256) };
            let old = pcrs.remove(pcr).unwrap_or_else(|| vec![0u8; size]);
            pcrs.insert(*pcr, extend(bank, &old, d));
        }
        out.insert(bank.to_string(), pcrs.into_iter().map(|(p, v)| (p.to_string(), hex::encode(v))).collect());
    }
    out
}

fn as_map(v: &serde_json::Value) -> BTreeMap<String, BTreeMap<String, String>> {
    serde_json::from_value(v.clone()).expect("eventlog --json is {bank: {pcr: hex}}")
}

#[test]
fn acceptance_init_create_put_get() {
    let env = Env::new();
    let tpm = env.tpm.tcti();
    let d = env.data_dir();

    env.run(&["init"]).ok();

    let created = env.run(&["tenant", "create", "legal", "--json"]).ok();
    let v = created.json();
    assert!(v.is_object(), "tenant create --json printed {v}");
    assert_eq!(v["name"], "legal");
    let id = v["id"].as_str().expect("id is a string").to_string();
    assert_eq!(id.len(), 32);

    // The put exactly as written: a shell pipe from printf.
    let script = format!(
        "printf secret | '{}' --data-dir '{}' --tpm '{tpm}' vault put --tenant {id} k1",
        bulwark_bin().display(),
        d.display()
    );
    let mut sh = Command::new("sh");
    sh.arg("-c").arg(script).env("TSS2_LOG", "all+NONE");
    let put = run_cmd(sh, None).ok();
    assert!(put.stdout.is_empty(), "vault put printed {:?}", put.stdout_str());

    let got = env.run(&["vault", "get", "--tenant", &id, "k1"]).ok();
    assert_eq!(got.stdout, b"secret", "vault get must print exactly the stored bytes");

    // The data dir is owner-only; one opened up (a restore, a careless chmod) is closed again by the next
    // command, which says so and still works.
    let mode = || std::fs::metadata(&d).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(), 0o700, "init must leave the data dir owner-only");
    std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
    let again = env.run(&["vault", "get", "--tenant", &id, "k1"]).ok();
    assert_eq!(again.stdout, b"secret");
    assert!(again.stderr.contains("owner-only"), "the tightening is reported: {}", again.stderr);
    assert_eq!(mode(), 0o700);
}

#[test]
fn eventlog_json_equals_independent_replay_and_a_swtpm() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut events = sample_events();
    // A non-extended event in the middle: replay must skip it.
    events.insert(3, (4, EventType::NO_ACTION, vec![0; 20], vec![0; 32], b"not measured".to_vec()));

    for order in [[HashAlg::Sha1, HashAlg::Sha256], [HashAlg::Sha256, HashAlg::Sha1]] {
        let mut w = LogWriter::crypto_agile(&order).expect("writer");
        for (pcr, ty, d1, d256, data) in &events {
            let digests: Vec<(HashAlg, Vec<u8>)> =
                order.iter().map(|a| (*a, if *a == HashAlg::Sha1 { d1.clone() } else { d256.clone() })).collect();
            w.event(PcrIndex::new(*pcr).expect("pcr"), *ty, &digests, data).expect("event");
        }
        let file = dir.path().join("agile.bin");
        std::fs::write(&file, w.into_bytes()).expect("write log");
        let mut c = bulwark();
        c.args(["boot", "eventlog"]).arg(&file).arg("--json");
        let run = run_cmd(c, None).ok();
        let got = as_map(&run.json());
        assert_eq!(got, expected_replay(&events, &["sha1", "sha256"]), "crypto-agile log, banks {order:?}");
    }

    // The same events replayed into a real TPM give the same PCRs.
    let tpm = TestTpm::start();
    for (pcr, ty, d1, d256, _) in &events {
        if *ty != EventType::NO_ACTION {
            tpm.extend(u8::try_from(*pcr).expect("pcr"), &[("sha1", d1), ("sha256", d256)]);
        }
    }
    let read = tpm.pcr_read("sha1:0,1,4,7,14+sha256:0,1,4,7,14");
    let from_tpm: BTreeMap<String, BTreeMap<String, String>> = read
        .into_iter()
        .map(|(b, m)| (b, m.into_iter().map(|(p, v)| (p.to_string(), hex::encode(v))).collect()))
        .collect();
    assert_eq!(from_tpm, expected_replay(&events, &["sha1", "sha256"]), "swtpm PCRs after replaying the log");

    // A legacy SHA-1 log: only the sha1 bank.
    let mut w = LogWriter::legacy_sha1();
    for (pcr, ty, d1, _, data) in &events {
        w.event(PcrIndex::new(*pcr).expect("pcr"), *ty, &[(HashAlg::Sha1, d1.clone())], data).expect("event");
    }
    let file = dir.path().join("legacy.bin");
    std::fs::write(&file, w.into_bytes()).expect("write log");
    let mut c = bulwark();
    c.args(["boot", "eventlog"]).arg(&file).arg("--json");
    let got = as_map(&run_cmd(c, None).ok().json());
    assert_eq!(got, expected_replay(&events, &["sha1"]), "legacy log");

    // A truncated log is refused with an error, not a partial replay.
    let bytes = std::fs::read(dir.path().join("agile.bin")).expect("read");
    let cut = dir.path().join("cut.bin");
    std::fs::write(&cut, &bytes[..bytes.len() - 7]).expect("write");
    let mut c = bulwark();
    c.args(["boot", "eventlog"]).arg(&cut).arg("--json");
    run_cmd(c, None).fails_with(&[]);
}

/// A PolicyPCR case: the bank, and (pcr, value) pairs in ascending PCR order.
type PolicyCase = (&'static str, Vec<(u8, Vec<u8>)>);

/// The cases; PCR values are arbitrary bytes of the bank's size.
fn policy_cases() -> Vec<PolicyCase> {
    let v = |bank: &str, seed: &[u8]| -> Vec<u8> {
        match bank {
            "sha1" => sha1(seed),
            "sha256" => sha256(seed),
            _ => Sha384::digest(seed).to_vec(),
        }
    };
    vec![
        ("sha256", vec![(4, v("sha256", b"pcr4")), (7, v("sha256", b"pcr7"))]),
        ("sha256", vec![(7, v("sha256", b"only7"))]),
        ("sha256", vec![(0, vec![0; 32]), (2, v("sha256", b"2")), (4, v("sha256", b"4")), (15, v("sha256", b"15"))]),
        ("sha256", vec![(8, v("sha256", b"8")), (16, vec![0xff; 32]), (23, v("sha256", b"23"))]),
        ("sha1", vec![(4, v("sha1", b"pcr4")), (7, v("sha1", b"pcr7"))]),
        ("sha384", vec![(7, v("sha384", b"pcr7")), (15, v("sha384", b"pcr15"))]),
    ]
}

#[test]
fn policy_pcr_equals_tpm2_createpolicy_and_a_trial_session() {
    let tpm = TestTpm::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let session = bulwark_tpm::Tpm::open(&tpm.tcti().parse().expect("tcti")).expect("open swtpm");
    for (i, (bank, pcrs)) in policy_cases().into_iter().enumerate() {
        // bulwark, with the --pcr arguments in reverse order: the digest must not depend on it.
        let mut c = bulwark();
        c.args(["tpm", "policy-pcr", "--bank", bank]);
        for (p, val) in pcrs.iter().rev() {
            c.arg("--pcr").arg(format!("{p}={}", hex::encode(val)));
        }
        let ours = run_cmd(c, None).ok().stdout_str().trim().to_string();

        // tpm2_createpolicy: values file = the values concatenated in ascending PCR order.
        let values = dir.path().join(format!("pcrs-{i}.bin"));
        std::fs::write(&values, pcrs.iter().flat_map(|(_, v)| v.clone()).collect::<Vec<u8>>()).expect("write");
        let out = dir.path().join(format!("policy-{i}.bin"));
        let list: Vec<String> = pcrs.iter().map(|(p, _)| p.to_string()).collect();
        let mut t = tpm.tpm2("tpm2_createpolicy");
        t.args(["--policy-pcr", "-l"])
            .arg(format!("{bank}:{}", list.join(",")))
            .arg("-f")
            .arg(&values)
            .arg("-L")
            .arg(&out);
        run_cmd(t, None).ok();
        // Without a resource manager, tpm2-tools leaves its trial session behind: flush it.
        let mut f = tpm.tpm2("tpm2_flushcontext");
        f.args(["--loaded-session", "--saved-session"]);
        run_cmd(f, None).ok();
        let theirs = hex::encode(std::fs::read(&out).expect("policy file"));
        assert_eq!(ours, theirs, "policy-pcr {bank} {list:?}: bulwark vs tpm2_createpolicy");

        // And the TPM's own trial session, with the composite computed here (SHA-256 of the values).
        let tbank: bulwark_tpm::PcrBank = bank.parse().expect("bank");
        let idx: Vec<bulwark_tpm::PcrIndex> =
            pcrs.iter().map(|(p, _)| bulwark_tpm::PcrIndex::new(u32::from(*p)).expect("pcr")).collect();
        let composite: [u8; 32] = Sha256::digest(pcrs.iter().flat_map(|(_, v)| v.clone()).collect::<Vec<u8>>()).into();
        let trial = session
            .trial_policy(&[bulwark_tpm::PolicyStep::Pcr { bank: tbank, pcrs: &idx, composite }])
            .expect("trial session");
        assert_eq!(ours, hex::encode(trial), "policy-pcr {bank} {list:?}: bulwark vs TPM trial session");
    }

    // Bad arguments: a clear error, nothing on stdout.
    for args in [
        vec!["--bank", "sha256", "--pcr", "4=zz"],
        vec!["--bank", "sha256", "--pcr", "24=00"],
        vec!["--bank", "md5", "--pcr", "4=00"],
        vec!["--bank", "sha256", "--pcr", "4=0011"],
    ] {
        let mut c = bulwark();
        c.args(["tpm", "policy-pcr"]).args(&args);
        run_cmd(c, None).fails_with(&["error"]);
    }
}

/// The shipped binary exports its `OSSL_LIB_CTX_new` (`.cargo/config.toml`), so libtss2-esys binds to it
/// and ESAPI reuses OpenSSL's global context during TPM operations (`tpm/src/ossl.rs`).
#[test]
fn bulwark_binary_exports_the_esapi_context_interposer() {
    let out = Command::new("nm").args(["-D", "--defined-only"]).arg(bulwark_bin()).output().expect("run nm");
    assert!(out.status.success(), "nm failed: {}", String::from_utf8_lossy(&out.stderr));
    let symbols = String::from_utf8_lossy(&out.stdout);
    assert!(
        symbols.lines().any(|l| l.split_whitespace().last() == Some("OSSL_LIB_CTX_new")),
        "bulwark does not export OSSL_LIB_CTX_new: was it linked without .cargo/config.toml's rustflags?"
    );
}
