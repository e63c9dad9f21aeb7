//! Refusal after a change of measured state, for every PCR a profile binds; and unlock again after a
//! plain restart of the TPM.

use std::process::Command;

use bulwark_boot::profile::HwProfile;
use bulwark_tests::{Env, bulwark_bin, run_cmd, snapshot};
use sha1::Sha1;
use sha2::{Digest, Sha256};

/// The PCRs the data dir's active profile binds tenants to (read from `D/profile.toml`, the profile
/// the appliance measured and uses).
fn bound_pcrs(env: &Env) -> Vec<u8> {
    let bytes = std::fs::read(env.data_dir().join("profile.toml")).expect("profile.toml");
    let profile = HwProfile::from_bytes(&bytes).expect("active profile parses");
    profile.bound_pcrs().iter().map(|p| u8::try_from(p.get()).expect("pcr")).collect()
}

/// Two tenants with data; then, for each bound PCR in turn: extend it from outside, see every unlock
/// refused with "measured state changed" and nothing on disk changed, restart the TPM (a new boot
/// cycle), and see both tenants' data back.
fn refuse_each_bound_pcr_then_recover(env: &mut Env, expect_bound: &[u8], banks: &[&str]) {
    let bound = bound_pcrs(env);
    for p in expect_bound {
        assert!(bound.contains(p), "profile binds {bound:?}; expected {p} among them");
    }
    let a = env.create_tenant("alpha");
    let b = env.create_tenant("bravo");
    env.put(&a.id, "a1", b"alpha's first record");
    env.put(&b.id, "b1", b"bravo's first record");
    env.assert_get(&a.id, "a1", b"alpha's first record");
    env.assert_get(&b.id, "b1", b"bravo's first record");

    for pcr in bound {
        let tenants_before = snapshot(&env.data_dir().join("tenants"));
        let registry_before = std::fs::read(env.data_dir().join("registry.redb")).expect("registry");
        let msg = format!("tampered PCR {pcr}");
        let digests: Vec<(&str, Vec<u8>)> = banks
            .iter()
            .map(|b| (*b, if *b == "sha1" { Sha1::digest(&msg).to_vec() } else { Sha256::digest(&msg).to_vec() }))
            .collect();
        let refs: Vec<(&str, &[u8])> = digests.iter().map(|(b, d)| (*b, d.as_slice())).collect();
        env.tpm.extend(pcr, &refs);

        env.get(&a.id, "a1").fails_with(&["measured state changed"]);
        env.get(&b.id, "b1").fails_with(&["measured state changed"]);
        env.run_stdin(&["vault", "put", "--tenant", &b.id, "b1"], b"overwrite attempt")
            .fails_with(&["measured state changed"]);
        env.run(&["vault", "list", "--tenant", &a.id]).fails_with(&["measured state changed"]);
        assert_eq!(snapshot(&env.data_dir().join("tenants")), tenants_before, "PCR {pcr}: tenant files changed");
        assert_eq!(
            std::fs::read(env.data_dir().join("registry.redb")).expect("registry"),
            registry_before,
            "PCR {pcr}: registry changed"
        );

        // A new boot cycle: the PCR is back at its reset value, the runtime measures itself again.
        env.tpm.restart();
        env.assert_get(&b.id, "b1", b"bravo's first record");
        env.assert_get(&a.id, "a1", b"alpha's first record");
        env.run(&["vault", "verify", "--tenant", &b.id]).ok();
        env.run(&["vault", "verify", "--tenant", &a.id]).ok();
    }
}

#[test]
fn dev_profile_refuses_after_any_bound_pcr_changes() {
    let mut env = Env::new();
    env.init();
    let profile = std::fs::read_to_string(env.data_dir().join("profile.toml")).expect("profile");
    let repo = std::fs::read_to_string(bulwark_tests::workspace_root().join("hw-profiles/dev-swtpm.toml"))
        .expect("hw-profiles/dev-swtpm.toml");
    assert_eq!(profile, repo, "init on swtpm must activate hw-profiles/dev-swtpm.toml");
    refuse_each_bound_pcr_then_recover(&mut env, &[15], &["sha256"]);
}

#[test]
fn dev_profile_refuses_when_only_the_sha1_bank_of_the_runtime_pcr_moves() {
    // The runtime log records sha1 too: a change seen only in that bank is still a change.
    let mut env = Env::new();
    env.init();
    refuse_each_bound_pcr_then_recover(&mut env, &[15], &["sha1"]);
}

#[test]
fn generic_profile_refuses_after_pcr7_or_pcr15_changes() {
    let mut env = Env::new();
    env.run(&["init", "--profile", "generic-x86-tpm2"]).ok();
    refuse_each_bound_pcr_then_recover(&mut env, &[7, 15], &["sha256"]);
}

#[test]
fn restart_then_unlock_again() {
    let mut env = Env::new();
    env.init();
    let t = env.create_tenant("legal");
    env.put(&t.id, "k1", b"before restart");
    for round in 0..3 {
        env.tpm.restart();
        env.assert_get(&t.id, "k1", b"before restart");
        let key = format!("after-{round}");
        env.put(&t.id, &key, key.as_bytes());
        env.assert_get(&t.id, &key, key.as_bytes());
    }
    let list = env.run(&["vault", "list", "--tenant", &t.id, "--json"]).ok().json();
    assert_eq!(list["records"].as_array().map(Vec::len), Some(4), "{list}");
    env.run(&["vault", "verify", "--tenant", &t.id]).ok();
    let tenants = env.run(&["tenant", "list", "--json"]).ok().json();
    assert_eq!(tenants["tenants"][0]["id"], t.id.as_str());
}

#[test]
fn a_binary_replaced_within_the_boot_cycle_is_refused_until_the_measured_one_returns() {
    // The appliance runs from a copy this test owns, so the copy can be replaced the way an upgrade that
    // skipped the reboot would replace it (a new file renamed over the old path).
    let env = Env::new();
    let bin = env.scratch().join("bin").join("bulwark");
    std::fs::create_dir_all(bin.parent().expect("bin dir")).expect("bin dir");
    let original = std::fs::read(bulwark_bin()).expect("the bulwark binary");
    let install = |bytes: &[u8]| {
        let tmp = bin.with_extension("new");
        std::fs::write(&tmp, bytes).expect("write the binary");
        let mut perm = std::fs::metadata(&tmp).expect("stat").permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o755);
        std::fs::set_permissions(&tmp, perm).expect("chmod");
        std::fs::rename(&tmp, &bin).expect("rename over the binary");
    };
    let cmd = |args: &[&str]| {
        let mut c = Command::new(&bin);
        c.env("TSS2_LOG", "all+NONE").env_remove("BULWARK_DATA_DIR").env_remove("BULWARK_LOG");
        c.arg("--data-dir").arg(env.data_dir()).arg("--tpm").arg(env.tpm.tcti()).args(args);
        c
    };
    install(&original);
    run_cmd(cmd(&["init"]), None).ok();
    let created = run_cmd(cmd(&["tenant", "create", "legal", "--json"]), None).ok().json();
    let id = created["id"].as_str().expect("tenant id").to_string();
    run_cmd(cmd(&["vault", "put", "--tenant", &id, "k1"]), Some(b"measured runtime")).ok();
    assert_eq!(run_cmd(cmd(&["vault", "get", "--tenant", &id, "k1"]), None).ok().stdout, b"measured runtime");

    // Another executable at the same path (the same program with one more byte: it still runs).
    let mut changed = original.clone();
    changed.push(0);
    install(&changed);
    let before = snapshot(&env.data_dir().join("tenants"));
    run_cmd(cmd(&["vault", "get", "--tenant", &id, "k1"]), None)
        .fails_with(&["measured state changed", "the executable differs"]);
    run_cmd(cmd(&["vault", "put", "--tenant", &id, "k2"]), Some(b"from the other binary"))
        .fails_with(&["measured state changed", "the executable differs"]);
    assert_eq!(snapshot(&env.data_dir().join("tenants")), before, "the refused commands changed tenant files");

    // The measured executable back in place: the same boot cycle verifies again.
    install(&original);
    assert_eq!(run_cmd(cmd(&["vault", "get", "--tenant", &id, "k1"]), None).ok().stdout, b"measured runtime");
}

#[test]
fn the_appliance_key_reseals_after_a_legitimate_change_with_its_recovery_secret() {
    let mut env = Env::new();
    let init = env.run(&["init", "--json"]).ok().json();
    let appliance_secret = init["appliance_recovery_secret"].as_str().expect("appliance_recovery_secret").to_string();
    let t = env.create_tenant("legal");
    env.put(&t.id, "k", b"before the change");

    // A legitimate change of the measured runtime (a site note in the active profile), measured by the
    // next boot cycle.
    let profile = env.data_dir().join("profile.toml");
    let mut text = std::fs::read_to_string(&profile).expect("profile.toml");
    text.push_str("\n# site note: rack 4\n");
    std::fs::write(&profile, text).expect("write profile.toml");
    env.tpm.restart();
    env.run(&["tenant", "create", "ops"]).fails_with(&["measured state changed", "appliance reseal"]);
    env.get(&t.id, "k").fails_with(&["measured state changed", "tenant reseal"]);

    let secret_file = env.scratch().join("appliance-recovery.txt");
    let path = secret_file.to_str().expect("utf-8");
    // The tenant's secret is not the appliance's.
    std::fs::write(&secret_file, &t.recovery).expect("write");
    env.run(&["appliance", "reseal", "--recovery-secret-file", path]).fails_with(&["does not match the appliance key"]);
    std::fs::write(&secret_file, &appliance_secret).expect("write");
    let resealed = env.run(&["appliance", "reseal", "--recovery-secret-file", path, "--json"]).ok().json();
    assert_eq!(resealed["resealed"], "appliance");
    assert_eq!(resealed["took_lockout"], false, "init already took the lockout hierarchy");
    let pubkey = env.run(&["appliance", "pubkey"]).ok().stdout;
    assert!(String::from_utf8_lossy(&pubkey).contains("BEGIN PUBLIC KEY"));

    std::fs::write(&secret_file, &t.recovery).expect("write");
    env.run(&["tenant", "reseal", "--tenant", &t.id, "--recovery-secret-file", path]).ok();
    env.assert_get(&t.id, "k", b"before the change");
    let ops = env.create_tenant("ops");
    env.put(&ops.id, "k", b"after the change");
    env.assert_get(&ops.id, "k", b"after the change");
}
