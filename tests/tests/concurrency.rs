//! Several `bulwark` processes at once against one swtpm: the TPM lock serializes their TPM work, the
//! vault lock their writes, and every one of them succeeds.

use bulwark_tests::{Env, finish};

#[test]
fn two_tenants_unlocked_concurrently() {
    let mut env = Env::new();
    env.init();
    let a = env.create_tenant("legal");
    let b = env.create_tenant("trading");
    env.put(&a.id, "k", b"legal data");
    env.put(&b.id, "k", b"trading data");

    // Round 0 right after a restart: both processes are the first of a new boot cycle and race to
    // measure the runtime; the others run in a measured cycle.
    for round in 0..4 {
        if round == 0 {
            env.tpm.restart();
        }
        let (wa, ca) = env.spawn(&["vault", "get", "--tenant", &a.id, "k"], None);
        let (wb, cb) = env.spawn(&["vault", "get", "--tenant", &b.id, "k"], None);
        let ra = finish(wa, ca).ok();
        let rb = finish(wb, cb).ok();
        assert_eq!(ra.stdout, b"legal data", "round {round}");
        assert_eq!(rb.stdout, b"trading data", "round {round}");
    }
}

#[test]
fn concurrent_puts_to_one_tenant_all_land() {
    let env = Env::new();
    env.init();
    let t = env.create_tenant("legal");
    const DISTINCT: usize = 6;
    const SAME: usize = 4;
    let mut children = Vec::new();
    for i in 0..DISTINCT {
        let value = format!("value number {i}");
        children.push(env.spawn(&["vault", "put", "--tenant", &t.id, &format!("key-{i}")], Some(value.as_bytes())));
    }
    for i in 0..SAME {
        let value = format!("shared write {i}");
        children.push(env.spawn(&["vault", "put", "--tenant", &t.id, "shared"], Some(value.as_bytes())));
    }
    for (what, child) in children {
        finish(what, child).ok();
    }

    let list = env.run(&["vault", "list", "--tenant", &t.id, "--json"]).ok().json();
    let records = list["records"].as_array().expect("records array").clone();
    assert_eq!(records.len(), DISTINCT + 1, "{list}");
    for i in 0..DISTINCT {
        let key = format!("key-{i}");
        let r = records.iter().find(|r| r["key"] == key.as_str()).unwrap_or_else(|| panic!("{key} missing: {list}"));
        assert_eq!(r["version"], 1);
        env.assert_get(&t.id, &key, format!("value number {i}").as_bytes());
    }
    let shared = records.iter().find(|r| r["key"] == "shared").expect("shared listed");
    assert_eq!(shared["version"], u64::try_from(SAME).expect("small"), "every write to one key is a new version");
    let got = env.get(&t.id, "shared").ok();
    let text = got.stdout_str();
    assert!((0..SAME).any(|i| text == format!("shared write {i}")), "shared holds {text:?}");
    env.run(&["vault", "verify", "--tenant", &t.id]).ok();
}

#[test]
fn concurrent_inits_of_one_data_dir_make_one_appliance() {
    // Before the init lock, racing inits saw each other's half-written dir ("profile.toml: No such
    // file"), or failed on the TPM authorization the winner had just set (TPM_RC_BAD_AUTH).
    let env = Env::new();
    const INITS: usize = 6;
    let children: Vec<_> = (0..INITS).map(|_| env.spawn(&["init", "--json"], None)).collect();
    let mut secrets = Vec::new();
    for (what, child) in children {
        let run = finish(what, child);
        if run.status.success() {
            secrets.push(run.json()["appliance_recovery_secret"].as_str().expect("secret").to_string());
        } else {
            run.fails_with(&["is already initialised"]);
        }
    }
    assert_eq!(secrets.len(), 1, "exactly one init makes the appliance");
    // The secret that init showed is the one that opens the appliance key.
    let resealed =
        env.run_stdin(&["appliance", "reseal", "--recovery-secret-file", "-", "--json"], secrets[0].as_bytes());
    assert_eq!(resealed.ok().json()["resealed"], "appliance");
    let t = env.create_tenant("legal");
    env.put(&t.id, "k", b"v");
    env.assert_get(&t.id, "k", b"v");
}
