//! Refusal after a change of measured state, for every PCR a profile binds; and unlock again after a
//! plain restart of the TPM.

use bulwark_boot::profile::HwProfile;
use bulwark_tests::{Env, snapshot};
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
