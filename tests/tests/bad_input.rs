//! Bad input gets a clear error on stderr, nothing on stdout, a non-zero exit, and loses nothing.

use bulwark_tests::{Env, TestTpm, assert_unchanged, bulwark, run_cmd, snapshot};

/// A loopback port with nothing listening on it or on the port after it (swtpm's control port).
fn closed_port() -> u16 {
    bulwark_tests::free_port_pairs().next().expect("no free port pair")
}

#[test]
fn no_tpm_reachable_says_how_to_start_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = closed_port();
    let tcti = format!("swtpm:host=127.0.0.1,port={port}");
    let mut c = bulwark();
    c.arg("--data-dir").arg(dir.path().join("data")).args(["--tpm", &tcti, "init"]);
    run_cmd(c, None).fails_with(&["no TPM", &format!("port={port}"), "swtpm socket", "--tpm auto"]);

    // An appliance whose TPM goes away: the same advice, and its data is still there afterwards.
    let env = Env::new();
    env.init();
    let t = env.create_tenant("legal");
    env.put(&t.id, "k", b"kept");
    let before = snapshot(&env.data_dir().join("tenants"));
    let mut c = bulwark();
    c.arg("--data-dir").arg(env.data_dir()).args(["--tpm", &tcti, "vault", "get", "--tenant", &t.id, "k"]);
    run_cmd(c, None).fails_with(&["no TPM", "swtpm socket"]);
    assert_unchanged(&env.data_dir().join("tenants"), &before);
    env.assert_get(&t.id, "k", b"kept");

    // Something that takes the connection but never answers (a hung swtpm, another service): an error
    // that says so after a bounded wait, not a command that hangs.
    let before = snapshot(&env.data_dir().join("tenants"));
    let mute = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    let tcti = format!("swtpm:host=127.0.0.1,port={}", mute.local_addr().expect("address").port());
    let mut c = bulwark();
    c.arg("--data-dir").arg(env.data_dir()).args(["--tpm", &tcti, "vault", "get", "--tenant", &t.id, "k"]);
    run_cmd(c, None).fails_with(&["did not answer a command within 10 s", "another client may be using it"]);
    drop(mute);
    assert_unchanged(&env.data_dir().join("tenants"), &before);

    // A --tpm that is not a TPM choice at all.
    let mut c = bulwark();
    c.arg("--data-dir").arg(env.data_dir()).args(["--tpm", "tcp:somewhere", "tenant", "list"]);
    run_cmd(c, None).fails_with(&["invalid --tpm", "swtpm:host="]);
}

#[test]
fn init_can_be_retried_after_the_tpm_was_unreachable() {
    let tpm = TestTpm::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let closed = format!("swtpm:host=127.0.0.1,port={}", closed_port());
    let mut c = bulwark();
    c.arg("--data-dir").arg(&data).args(["--tpm", &closed, "init"]);
    run_cmd(c, None).fails_with(&["no TPM"]);
    let mut c = bulwark();
    c.arg("--data-dir").arg(&data).args(["--tpm", &tpm.tcti(), "init"]);
    run_cmd(c, None).ok();
}

#[test]
fn unknown_and_malformed_tenant_ids_are_refused() {
    let env = Env::new();
    env.init();
    let t = env.create_tenant("legal");
    env.put(&t.id, "k", b"kept");
    env.get("0123456789abcdef0123456789abcdef", "k").fails_with(&["no tenant 0123456789abcdef0123456789abcdef"]);
    for bad in ["legal", "0123456789ABCDEF0123456789ABCDEF", "0123456789abcdef0123456789abcde", "../../etc/passwd", ""]
    {
        env.get(bad, "k").fails_with(&["not an id", "32 lowercase hex digits", "`bulwark tenant list`"]);
        env.run(&["tenant", "delete", "--tenant", bad, "--name", "legal"])
            .fails_with(&["not an id", "32 lowercase hex digits"]);
    }
    env.get(&t.id, "missing").fails_with(&["no record \"missing\""]);
    // With --json, the error is one JSON object on stderr's last line.
    let run = env.run(&["vault", "get", "--tenant", &t.id, "missing", "--json"]);
    assert!(!run.status.success() && run.stdout.is_empty(), "{}", run.stderr);
    let last = run.stderr.lines().last().unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(last).unwrap_or_else(|e| panic!("{e}: {:?}", run.stderr));
    assert!(v["error"].as_str().is_some_and(|m| m.contains("no record \"missing\"")), "{v}");
    assert!(v["causes"].is_array(), "{v}");
    // Also for a command line that does not parse.
    let run = env.run(&["vault", "get", "--json"]);
    assert_eq!(run.status.code(), Some(2), "{}", run.stderr);
    let v: serde_json::Value =
        serde_json::from_str(run.stderr.trim_end()).unwrap_or_else(|e| panic!("{e}: {:?}", run.stderr));
    assert!(v["error"].as_str().is_some_and(|m| m.contains("--tenant <TENANT>")), "{v}");
    env.run_stdin(&["vault", "put", "--tenant", &t.id, ""], b"x").fails_with(&["invalid record key"]);
    env.run_stdin(&["vault", "put", "--tenant", &t.id, "a\nb"], b"x").fails_with(&["invalid record key"]);
    env.assert_get(&t.id, "k", b"kept");

    // An uninitialised data dir says to run init.
    let dir = tempfile::tempdir().expect("tempdir");
    let mut c = bulwark();
    c.arg("--data-dir").arg(dir.path()).args(["--tpm", &env.tpm.tcti(), "tenant", "list"]);
    run_cmd(c, None).fails_with(&["not an initialised", "init"]);

    // A file given as the data dir: named as not a directory, by init and by every other command, and
    // left as it was.
    let file = dir.path().join("notes.txt");
    std::fs::write(&file, b"keep me").expect("write");
    for args in [&["init"][..], &["tenant", "list"][..]] {
        let mut c = bulwark();
        c.arg("--data-dir").arg(&file).args(["--tpm", &env.tpm.tcti()]).args(args);
        run_cmd(c, None).fails_with(&["exists and is not a directory", "--data-dir"]);
    }
    assert_eq!(std::fs::read(&file).expect("read"), b"keep me");
}

#[test]
fn oversized_value_is_refused_and_the_old_value_kept() {
    let env = Env::new();
    env.init();
    let t = env.create_tenant("legal");
    env.put(&t.id, "k", b"the previous value");
    let max = vec![0x5au8; 1 << 20];
    env.put(&t.id, "max", &max);

    let over = vec![0xa5u8; (1 << 20) + 1];
    env.run_stdin(&["vault", "put", "--tenant", &t.id, "k"], &over).fails_with(&["limit", "nothing was stored"]);
    env.run_stdin(&["vault", "put", "--tenant", &t.id, "max"], &over).fails_with(&["limit"]);
    env.run_stdin(&["vault", "put", "--tenant", &t.id, "new"], &over).fails_with(&["limit"]);

    env.assert_get(&t.id, "k", b"the previous value");
    env.assert_get(&t.id, "max", &max);
    env.get(&t.id, "new").fails_with(&["no record"]);
    let list = env.run(&["vault", "list", "--tenant", &t.id, "--json"]).ok().json();
    let versions: Vec<(String, u64)> = list["records"]
        .as_array()
        .expect("records")
        .iter()
        .map(|r| (r["key"].as_str().expect("key").to_string(), r["version"].as_u64().expect("version")))
        .collect();
    assert_eq!(versions, vec![("k".to_string(), 1), ("max".to_string(), 1)]);
}

#[test]
fn corrupted_sealed_blob_or_vault_file_is_named() {
    let env = Env::new();
    env.init();
    let t = env.create_tenant("legal");
    env.put(&t.id, "k", b"kept");
    let sealed = env.tenant_dir(&t.id).join("kek.sealed");
    let vault = env.tenant_dir(&t.id).join("vault.redb");
    let good_sealed = std::fs::read(&sealed).expect("kek.sealed");
    let good_vault = std::fs::read(&vault).expect("vault.redb");

    let mut flipped_private = good_sealed.clone();
    let last = flipped_private.len() - 10;
    flipped_private[last] ^= 0x40;
    for bad in [
        &good_sealed[..good_sealed.len() / 2],
        &b""[..],
        &flipped_private[..],
        &[good_sealed.clone(), vec![0]].concat(),
    ] {
        std::fs::write(&sealed, bad).expect("write");
        env.get(&t.id, "k").fails_with(&["kek.sealed", "corrupt"]);
    }
    std::fs::remove_file(&sealed).expect("remove");
    env.get(&t.id, "k").fails_with(&["kek.sealed", "is missing", "restore the tenant's directory from a backup"]);
    std::fs::write(&sealed, &good_sealed).expect("restore");
    env.assert_get(&t.id, "k", b"kept");

    for bad in [&good_vault[..4096], &b"not a database at all"[..]] {
        std::fs::write(&vault, bad).expect("write");
        env.get(&t.id, "k").fails_with(&["vault"]);
    }
    std::fs::write(&vault, &good_vault).expect("restore");
    env.assert_get(&t.id, "k", b"kept");
}

#[test]
fn init_twice_and_bad_tenant_names_lose_nothing() {
    let env = Env::new();
    env.init();
    let t = env.create_tenant("legal");
    env.put(&t.id, "k", b"kept");
    let config = std::fs::read(env.data_dir().join("appliance.toml")).expect("config");
    let tenants = snapshot(&env.data_dir().join("tenants"));

    env.run(&["init"]).fails_with(&["already initialised"]);
    env.run(&["init", "--profile", "generic-x86-tpm2"]).fails_with(&["already initialised"]);
    assert_eq!(std::fs::read(env.data_dir().join("appliance.toml")).expect("config"), config);
    assert_unchanged(&env.data_dir().join("tenants"), &tenants);
    env.assert_get(&t.id, "k", b"kept");

    let long = "n".repeat(65);
    for bad in ["", "a b", "x/y", "../escape", long.as_str(), "é", "tab\tname"] {
        env.run(&["tenant", "create", bad]).fails_with(&["invalid tenant name"]);
    }
    env.run(&["tenant", "create", "legal"]).fails_with(&["exists already"]);
    env.run(&["tenant", "create", "Legal"]).fails_with(&["\"legal\" exists already", "letter case"]);
    let list = env.run(&["tenant", "list", "--json"]).ok().json();
    assert_eq!(list["tenants"].as_array().map(Vec::len), Some(1), "{list}");
    assert_eq!(std::fs::read_dir(env.data_dir().join("tenants")).expect("tenants dir").count(), 1);
    env.assert_get(&t.id, "k", b"kept");
}

#[test]
fn data_at_rest_holds_no_plaintext() {
    let env = Env::new();
    env.init();
    let a = env.create_tenant("legal");
    let b = env.create_tenant("trading");
    let secrets: Vec<Vec<u8>> = vec![
        b"Indemnity capped at EUR 2M; governed by Irish law.".to_vec(),
        b"Intraday VaR limit 1.2M for desk 7".to_vec(),
        b"patient 4711: allergic to penicillin".to_vec(),
        (0u8..=255).cycle().take(4096).collect(),
    ];
    for (i, s) in secrets.iter().enumerate() {
        let who = if i % 2 == 0 { &a.id } else { &b.id };
        env.put(who, &format!("record-{i}"), s);
        // An overwritten version must not linger in plaintext either.
        env.put(who, &format!("old-{i}"), s);
        env.put(who, &format!("old-{i}"), b"replaced");
    }
    let recovery: Vec<Vec<u8>> = [&a, &b]
        .iter()
        .flat_map(|t| [t.recovery.clone().into_bytes(), t.recovery.replace('-', "").into_bytes()])
        .collect();
    // Record keys are sealed too: the vault stores each record under a keyed hash of its key.
    let keys: Vec<Vec<u8>> = (0..secrets.len())
        .flat_map(|i| [format!("record-{i}").into_bytes(), format!("old-{i}").into_bytes()])
        .collect();
    let mut scanned = 0usize;
    for dir in [env.data_dir(), env.tpm.state_dir().to_path_buf()] {
        for file in bulwark_tests::files_under(&dir) {
            let bytes = std::fs::read(&file).expect("read");
            scanned += bytes.len();
            for s in secrets.iter().chain(&recovery).chain(&keys) {
                assert!(
                    !bulwark_tests::contains(&bytes, &s[..16.min(s.len())]),
                    "{} holds plaintext {:?}",
                    file.display(),
                    String::from_utf8_lossy(&s[..16.min(s.len())])
                );
            }
        }
    }
    assert!(scanned > 0);
    for (i, s) in secrets.iter().enumerate() {
        let who = if i % 2 == 0 { &a.id } else { &b.id };
        env.assert_get(who, &format!("record-{i}"), s);
    }
}

#[test]
fn empty_stdin_is_refused_unless_asked_for_and_the_record_is_kept() {
    let env = Env::new();
    env.init();
    let t = env.create_tenant("legal");
    env.put(&t.id, "k", b"keep me");
    let before = snapshot(&env.data_dir().join("tenants"));
    // `run` gives the command an empty stdin (/dev/null): an upstream step that produced nothing.
    env.run(&["vault", "put", "--tenant", &t.id, "k"]).fails_with(&["stdin is empty", "nothing was stored"]);
    assert_eq!(snapshot(&env.data_dir().join("tenants")), before, "a refused put changed tenant files");
    env.assert_get(&t.id, "k", b"keep me");
    env.run(&["vault", "put", "--tenant", &t.id, "k", "--allow-empty"]).ok();
    env.assert_get(&t.id, "k", b"");
    let list = env.run(&["vault", "list", "--tenant", &t.id, "--json"]).ok().json();
    assert_eq!(list["records"][0]["version"], 2, "{list}");
}

#[test]
fn an_init_that_stopped_half_way_is_finished_by_init() {
    let env = Env::new();
    env.init();
    let key = env.data_dir().join("appliance").join("key.sealed");
    std::fs::remove_file(&key).expect("remove the appliance key");
    env.run(&["tenant", "list"]).fails_with(&["not fully initialised", "bulwark init"]);
    env.run(&["init", "--profile", "generic-x86-tpm2"]).fails_with(&["half initialised", "dev-swtpm"]);
    env.run(&["init", "--danger-dev-unbound-executable"]).fails_with(&["half initialised", "development mode off"]);
    assert!(!key.exists(), "a refused init wrote the appliance key");
    let done = env.run(&["init", "--json"]).ok().json();
    assert!(done["appliance_recovery_secret"].as_str().is_some_and(|s| s.len() == 71), "{done}");
    assert!(key.is_file());
    let t = env.create_tenant("legal");
    env.put(&t.id, "k", b"after the finished init");
    env.assert_get(&t.id, "k", b"after the finished init");
    env.run(&["init"]).fails_with(&["already initialised"]);
}

#[test]
fn a_lost_appliance_key_is_named_and_init_keeps_the_appliance_ledger() {
    let env = Env::new();
    env.init();
    let t = env.create_tenant("legal");
    env.put(&t.id, "k", b"kept");
    let appliance = env.data_dir().join("appliance");
    let key = appliance.join("key.sealed");
    let saved = std::fs::read(&key).expect("read the appliance key");
    std::fs::remove_file(&key).expect("remove the appliance key");
    let before = snapshot(&appliance);
    // Not a half-finished init: the tenant's vault still opens, and what needs the appliance key (and
    // `init`, which would make a new one and drop the appliance ledger) says the key is lost.
    env.assert_get(&t.id, "k", b"kept");
    let lost = ["has no appliance key", "it was in use", "a tenant directory", "appliance ledger of", "restore"];
    env.run(&["tenant", "create", "other"]).fails_with(&lost);
    env.run(&["tenant", "delete", "--tenant", &t.id, "--name", &t.name]).fails_with(&lost);
    env.run(&["init"]).fails_with(&lost);
    assert_eq!(snapshot(&appliance), before, "a refused command changed the appliance's files");
    // The key restored from a backup: everything works again, on the same appliance ledger.
    std::fs::write(&key, saved).expect("restore the appliance key");
    env.create_tenant("other");
    env.assert_get(&t.id, "k", b"kept");
}

#[test]
fn init_refuses_a_tpm_whose_owner_or_lockout_authorization_someone_else_set() {
    let env = Env::new();
    let changeauth = |args: &[&str]| {
        let out = env.tpm.tpm2("tpm2_changeauth").args(args).output().expect("tpm2_changeauth");
        assert!(out.status.success(), "tpm2_changeauth {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    let config = env.data_dir().join("appliance.toml");
    changeauth(&["-c", "l", "someone-else"]);
    env.run(&["init"]).fails_with(&["lockout hierarchy already has an authorization", "tpm2_clear"]);
    assert!(!config.exists(), "a refused init wrote the config");
    changeauth(&["-c", "l", "-p", "someone-else"]);
    changeauth(&["-c", "o", "someone-else"]);
    env.run(&["init"]).fails_with(&["owner hierarchy already has an authorization", "tpm2_clear"]);
    assert!(!config.exists(), "a refused init wrote the config");
    changeauth(&["-c", "o", "-p", "someone-else"]);
    // Both empty again: init takes both, and someone else can no longer change either.
    env.init();
    let out = env.tpm.tpm2("tpm2_changeauth").args(["-c", "o", "mine"]).output().expect("tpm2_changeauth");
    assert!(!out.status.success(), "the owner authorization changed without the one init set");
    let t = env.create_tenant("legal");
    env.put(&t.id, "k", b"v");
    env.assert_get(&t.id, "k", b"v");
}

#[test]
fn init_refused_by_a_foreign_measurement_says_what_to_do_and_can_be_run_again() {
    let mut env = Env::new();
    // Something else measured into the runtime PCR in this boot cycle.
    let foreign = [7u8; 32];
    env.tpm.extend(15, &[("sha256", &foreign[..]), ("sha1", &foreign[..20])]);
    env.run(&["init"]).fails_with(&["measured state changed", "reboot (or restart the TPM)"]);
    env.run(&["init"]).fails_with(&["measured state changed"]);
    // A new boot cycle: the PCR is back at its reset value, and init finishes.
    env.tpm.restart();
    env.init();
    let t = env.create_tenant("legal");
    env.put(&t.id, "k", b"v");
    env.assert_get(&t.id, "k", b"v");
}

#[test]
fn development_mode_is_refused_with_a_device_profile() {
    let env = Env::new();
    env.run(&["init", "--profile", "generic-x86-tpm2", "--danger-dev-unbound-executable"])
        .fails_with(&["only for development profiles", "generic-x86-tpm2"]);
    assert!(!env.data_dir().join("appliance.toml").exists(), "a refused init wrote the config");
    env.init();
}

#[test]
fn an_unreadable_recovery_secret_is_named_and_changes_nothing() {
    let env = Env::new();
    env.init();
    let t = env.create_tenant("legal");
    env.put(&t.id, "k", b"kept");
    let before = snapshot(&env.data_dir().join("tenants"));
    let missing = env.scratch().join("no-such-secret");
    let not_text = env.scratch().join("not-text");
    std::fs::write(&not_text, [0xff, 0xfe, 0x00, 0x80]).expect("write");
    let dir = env.scratch().to_str().expect("utf-8").to_string();
    for (file, needles) in [
        (missing.to_str().expect("utf-8"), ["cannot read the recovery secret from", "no-such-secret"]),
        (dir.as_str(), ["cannot read the recovery secret from", dir.as_str()]),
        (not_text.to_str().expect("utf-8"), ["the recovery secret in", "is not text"]),
    ] {
        env.run(&["tenant", "reseal", "--tenant", &t.id, "--recovery-secret-file", file]).fails_with(&needles);
        env.run(&["appliance", "reseal", "--recovery-secret-file", file]).fails_with(&needles);
    }
    assert_unchanged(&env.data_dir().join("tenants"), &before);
    // The right secret on stdin (`-`) reseals; the record reads back.
    env.run_stdin(&["tenant", "reseal", "--tenant", &t.id, "--recovery-secret-file", "-"], t.recovery.as_bytes()).ok();
    env.assert_get(&t.id, "k", b"kept");
}

#[test]
fn a_recovery_secret_that_stdout_cannot_take_is_reported_lost_with_what_to_do() {
    let env = Env::new();
    env.init();
    let full = || std::fs::OpenOptions::new().write(true).open("/dev/full").expect("/dev/full");
    let mut c = env.cmd(&["tenant", "create", "legal"]);
    let out = c.stdin(std::process::Stdio::null()).stdout(full()).output().expect("run bulwark");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    for needle in ["recovery secret could not be written to stdout", "is lost", "tenant legal (", "was created"] {
        assert!(stderr.contains(needle), "{needle:?} not in {stderr:?}");
    }
    // The tenant it names is there, and deleting it as the message says frees the name.
    let listed = env.run(&["tenant", "list", "--json"]).ok().json();
    let id = listed["tenants"][0]["id"].as_str().expect("one tenant").to_string();
    assert!(stderr.contains(&format!("bulwark tenant delete --tenant {id} --name=legal")), "{stderr}");
    env.run(&["tenant", "delete", "--tenant", &id, "--name=legal"]).ok();
    env.create_tenant("legal");
    // The same for init: the data dir it names is initialised.
    let other = tempfile::tempdir().expect("tempdir");
    let tpm = TestTpm::start();
    let mut c = bulwark();
    c.arg("--data-dir").arg(other.path().join("data")).args(["--tpm", &tpm.tcti(), "init"]);
    let out = c.stdin(std::process::Stdio::null()).stdout(full()).output().expect("run bulwark");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    for needle in ["is lost", "was initialised", "cannot be resealed", "run `bulwark init` again"] {
        assert!(stderr.contains(needle), "{needle:?} not in {stderr:?}");
    }
}

#[test]
fn a_data_dir_this_user_cannot_use_is_named_before_the_tpm_is_touched() {
    use std::os::unix::fs::PermissionsExt;
    let env = Env::new();
    env.init();
    let t = env.create_tenant("legal");
    env.put(&t.id, "k", b"kept");
    let data = env.data_dir();
    let before = snapshot(&data);
    // As root, run bulwark as an unprivileged user (from a copy of the binary that user may run); as
    // anyone else, take our own access to the data dir away for the length of the runs.
    let root = bulwark_tests::running_as_root();
    let bin_dir = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(bin_dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let bin = bin_dir.path().join("bulwark");
    std::fs::copy(bulwark_tests::bulwark_bin(), &bin).expect("copy bulwark");
    let mode = std::fs::metadata(&data).expect("data dir").permissions().mode();
    if !root {
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o000)).expect("chmod");
    }
    let as_other = |args: &[&str]| {
        let mut c = if root {
            let mut c = std::process::Command::new("setpriv");
            c.args(["--reuid=65534", "--regid=65534", "--clear-groups"]).arg(&bin);
            c
        } else {
            std::process::Command::new(&bin)
        };
        c.env("TSS2_LOG", "all+NONE").arg("--data-dir").arg(&data).args(["--tpm", &env.tpm.tcti()]).args(args);
        run_cmd(c, None)
    };
    let needles = ["cannot use the data dir", "run bulwark as the user that owns it", "Permission denied"];
    as_other(&["tenant", "list"]).fails_with(&needles);
    as_other(&["vault", "get", "--tenant", &t.id, "k"]).fails_with(&needles);
    as_other(&["init"]).fails_with(&needles);
    if !root {
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(mode)).expect("chmod back");
    }
    assert_unchanged(&data, &before);
    env.assert_get(&t.id, "k", b"kept");
}

#[test]
fn a_registry_restored_from_an_older_copy_never_hands_out_a_slot_twice() {
    let env = Env::new();
    env.init();
    let registry = env.data_dir().join("registry.redb");
    let read = || std::fs::read(&registry).expect("read the registry");
    let before_a = read();
    let a = env.create_tenant("a");
    env.put(&a.id, "k", b"kept");
    let after_a = read();
    let b = env.create_tenant("b");
    env.run(&["tenant", "delete", "--tenant", &b.id, "--name", &b.name]).ok();

    // The registry as it was before `a` existed: its slot counter is older than the TPM's claims. A new
    // tenant gets neither the live `a`'s slot (deleting it would shred `a` too) nor the dead `b`'s.
    std::fs::write(&registry, &before_a).expect("restore the registry");
    let c = env.create_tenant("c");
    assert!(![a.slot, b.slot].contains(&c.slot), "c got slot {} (a {}, b {})", c.slot, a.slot, b.slot);
    env.put(&c.id, "k", b"c's");
    env.run(&["tenant", "delete", "--tenant", &c.id, "--name", &c.name]).ok();

    // Back to the registry that lists `a`: `a` is untouched, and the next tenant is new too.
    std::fs::write(&registry, &after_a).expect("restore the registry");
    env.assert_get(&a.id, "k", b"kept");
    let d = env.create_tenant("d");
    assert!(![a.slot, b.slot, c.slot].contains(&d.slot), "d got slot {}", d.slot);
    env.put(&d.id, "k", b"d's");
    env.assert_get(&d.id, "k", b"d's");
    env.assert_get(&a.id, "k", b"kept");
}

#[test]
fn what_a_killed_tenant_creation_left_is_removed_by_the_next_one_and_nothing_else() {
    let env = Env::new();
    env.init();
    let a = env.create_tenant("a");
    env.put(&a.id, "k", b"kept");
    let tenants = env.data_dir().join("tenants");
    let copy_dir = |from: &std::path::Path, to: &std::path::Path| {
        let status = std::process::Command::new("cp").arg("-a").arg(from).arg(to).status().expect("cp");
        assert!(status.success());
    };
    // What a creation killed before the registry listed its tenant leaves: the tenant's directory and
    // its creation marker.
    let killed = "0123456789abcdef0123456789abcdef";
    copy_dir(&env.tenant_dir(&a.id), &tenants.join(killed));
    std::fs::write(tenants.join(format!(".creating-{killed}")), b"").expect("marker");
    // A directory the registry does not list, without a marker (an older registry restored, say): kept.
    let unlisted = "fedcba9876543210fedcba9876543210";
    copy_dir(&env.tenant_dir(&a.id), &tenants.join(unlisted));
    // A marker left by a creation that finished (killed after the registry listed it): only it goes.
    std::fs::write(tenants.join(format!(".creating-{}", a.id)), b"").expect("marker");

    let b = env.create_tenant("b");
    let mut left: Vec<String> = std::fs::read_dir(&tenants)
        .expect("tenants")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    let mut expected = vec![a.id.clone(), b.id.clone(), unlisted.to_string()];
    expected.sort();
    assert_eq!(left, expected);
    env.assert_get(&a.id, "k", b"kept");
    env.put(&b.id, "k", b"b's");
    env.assert_get(&b.id, "k", b"b's");
}

#[test]
fn a_damaged_tenant_ledger_is_named_with_what_to_do_and_the_vault_is_untouched() {
    let env = Env::new();
    env.init();
    let t = env.create_tenant("legal");
    env.put(&t.id, "k", b"kept");
    let ledger = env.tenant_dir(&t.id).join("ledger");
    for file in ["checkpoint", "LEDGER", "key.pub.pem"] {
        let path = ledger.join(file);
        let good = std::fs::read(&path).expect("ledger file");
        let mut bad = good.clone();
        let mid = bad.len() / 2;
        bad[mid] ^= 0x20;
        std::fs::write(&path, &bad).expect("write");
        let vault_file = env.tenant_dir(&t.id).join("vault.redb");
        let vault = std::fs::read(&vault_file).expect("vault");
        env.get(&t.id, "k").fails_with(&[
            &format!("the ledger in {}", ledger.display()),
            "damaged or was altered",
            "restore that directory",
        ]);
        env.run_stdin(&["vault", "put", "--tenant", &t.id, "k"], b"new").fails_with(&["damaged or was altered"]);
        assert!(std::fs::read(&vault_file).expect("vault") == vault, "a refused command changed the vault");
        std::fs::write(&path, &good).expect("restore");
        env.assert_get(&t.id, "k", b"kept");
    }
}

#[test]
fn an_endless_input_file_is_refused_at_its_cap_not_read_forever() {
    // A device named where a file is expected: without a cap on what is read, each of these would read
    // until memory runs out.
    let mut c = bulwark();
    c.args(["boot", "eventlog", "/dev/zero"]);
    run_cmd(c, None).fails_with(&["event log is over the", "cap"]);
    let dir = tempfile::tempdir().expect("tempdir");
    let mut c = bulwark();
    c.arg("--data-dir").arg(dir.path().join("data")).args([
        "--tpm",
        "swtpm:host=127.0.0.1,port=1",
        "init",
        "--profile",
        "/dev/zero",
    ]);
    run_cmd(c, None).fails_with(&["hardware profile is over the", "cap"]);
    assert!(!dir.path().join("data").exists(), "a refused init made the data dir");
    let mut c = std::process::Command::new(bulwark_tests::verify_bin());
    c.args(["--key", "/dev/zero"]).arg(dir.path());
    let run = run_cmd(c, None);
    assert!(
        !run.status.success() && run.stderr.contains("tenant key /dev/zero is over 1048576 bytes"),
        "{}",
        run.stderr
    );
}

#[test]
fn an_export_into_the_data_dir_is_refused_and_records_nothing() {
    // It used to be written: into a ledger's tile area it made every later command warn about each of its
    // files, and in a tenant's directory it went when the tenant did.
    let env = Env::new();
    env.init();
    let t = env.create_tenant("legal");
    env.put(&t.id, "k", b"kept");
    let d = env.data_dir();
    let link = env.scratch().join("into-the-data-dir");
    std::os::unix::fs::symlink(env.tenant_dir(&t.id), &link).expect("symlink");
    let before = snapshot(&d);
    for out in [
        d.join("bundle"),
        env.tenant_dir(&t.id).join("ledger/tile/bundle"),
        link.join("bundle"),
        env.scratch().join("not-yet/../data/tenants/bundle"),
    ] {
        let out_arg = out.to_str().expect("utf-8");
        env.run(&["ledger", "export", "--tenant", &t.id, "--out", out_arg]).fails_with(&[
            "is inside the data dir",
            "outside it",
            "nothing was exported",
        ]);
        assert!(!out.exists(), "{out_arg} was made");
    }
    assert!(!env.scratch().join("not-yet").exists());
    // Not even the export's attestation was recorded.
    assert_unchanged(&d, &before);
    let bundle = env.scratch().join("bundle");
    env.run(&["ledger", "export", "--tenant", &t.id, "--out", bundle.to_str().expect("utf-8")]).ok();
    assert!(bundle.join("BUNDLE").is_file());
}

#[test]
fn init_refuses_a_directory_in_use_for_something_else_and_leaves_it_as_it_was() {
    // It used to take it: a shared directory like /tmp (mode 1777) became owner-only, its sticky bit gone,
    // with the appliance's files among its own.
    use std::os::unix::fs::PermissionsExt;
    let env = Env::new();
    let d = env.data_dir();
    std::fs::create_dir(&d).expect("mkdir");
    std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o1777)).expect("chmod");
    std::fs::write(d.join("notes.txt"), b"someone's notes").expect("write");
    env.run(&["init"]).fails_with(&["holds files that are not Bulwark's", "\"notes.txt\"", "new or empty directory"]);
    assert_eq!(std::fs::metadata(&d).expect("stat").permissions().mode() & 0o7777, 0o1777);
    let names: Vec<_> = std::fs::read_dir(&d).expect("read_dir").flatten().map(|e| e.file_name()).collect();
    assert_eq!(names, ["notes.txt"], "init wrote into the directory");
    // Emptied, the same directory is taken, and made owner-only.
    std::fs::remove_file(d.join("notes.txt")).expect("rm");
    env.init();
    assert_eq!(std::fs::metadata(&d).expect("stat").permissions().mode() & 0o7777, 0o700);
}

#[test]
fn a_delete_must_name_the_tenant_it_destroys() {
    let env = Env::new();
    env.init();
    let legal = env.create_tenant("legal");
    let created = env.run(&["tenant", "create", "--json", "--", "-ops"]).ok().json();
    let ops = bulwark_tests::Tenant {
        id: created["id"].as_str().expect("id").to_string(),
        name: "-ops".into(),
        recovery: String::new(),
        slot: 0,
    };
    env.put(&legal.id, "k", b"kept");
    let before = snapshot(&env.data_dir());
    // Without the name, or with another tenant's: refused before anything is attested or shredded.
    env.run(&["tenant", "delete", "--tenant", &legal.id]).fails_with(&["--name <NAME>"]);
    env.run(&["tenant", "delete", "--tenant", &legal.id, "--name", &ops.name])
        .fails_with(&[&format!("tenant {} is named \"legal\", not \"-ops\"", legal.id), "nothing was deleted"]);
    env.run(&["tenant", "delete", "--tenant", &legal.id, "--name", "Legal"]).fails_with(&["nothing was deleted"]);
    assert_unchanged(&env.data_dir(), &before);
    env.assert_get(&legal.id, "k", b"kept");
    // A name that starts with a dash is taken as the value it is.
    let gone = env.run(&["tenant", "delete", "--tenant", &ops.id, "--name", "-ops", "--json"]).ok().json();
    assert_eq!(gone["deleted"], ops.id.as_str());
    env.assert_get(&legal.id, "k", b"kept");
}

#[test]
fn a_data_dir_moved_to_another_tpm_says_so_and_touches_that_tpm_not() {
    // It used to read "measured state changed ... reboot, then reseal", which no reboot or reseal mends.
    let env = Env::new();
    env.init();
    let t = env.create_tenant("legal");
    env.put(&t.id, "k", b"kept");
    let other = TestTpm::start();
    let before = snapshot(&env.data_dir());
    for args in [&["vault", "get", "--tenant", &t.id, "k"][..], &["tenant", "list"], &["tenant", "create", "ops"]] {
        let mut c = bulwark();
        c.arg("--data-dir").arg(env.data_dir()).arg("--tpm").arg(other.tcti()).args(args);
        run_cmd(c, None).fails_with(&["was initialised with another TPM than", "storage root key differs"]);
    }
    let out = other.tpm2("tpm2_getcap").arg("handles-persistent").output().expect("tpm2_getcap");
    assert!(out.status.success() && out.stdout.is_empty(), "{:?}", String::from_utf8_lossy(&out.stdout));
    assert_unchanged(&env.data_dir(), &before);
    // On its own TPM it works as before.
    env.assert_get(&t.id, "k", b"kept");
}

#[test]
fn output_that_cannot_be_written_is_reported_and_a_closed_pipe_ends_it_quietly() {
    let env = Env::new();
    env.init();
    let t = env.create_tenant("legal");
    env.put(&t.id, "k", b"kept");
    // A full disk behind stdout: a clear error, never a panic; the command's own work stands.
    for args in
        [&["tenant", "list"][..], &["vault", "get", "--tenant", &t.id, "k"], &["vault", "list", "--tenant", &t.id]]
    {
        let mut c = env.cmd(args);
        c.stdout(std::fs::File::create("/dev/full").expect("open /dev/full")).stderr(std::process::Stdio::piped());
        let out = c.output().expect("run bulwark");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} wrote to a full stdout and succeeded");
        assert!(stderr.contains("cannot write to stdout") && stderr.contains("No space left"), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
    // A reader that went away before the output (`| head -0`): no error, no panic.
    for args in
        [&["tenant", "list"][..], &["vault", "get", "--tenant", &t.id, "k"], &["tenant", "pubkey", "--tenant", &t.id]]
    {
        let mut c = env.cmd(args);
        let (reader, writer) = std::io::pipe().expect("pipe");
        drop(reader);
        c.stdout(writer).stderr(std::process::Stdio::piped());
        let out = c.output().expect("run bulwark");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success() && stderr.is_empty(), "{args:?}: {:?}\n{stderr}", out.status);
    }
    // The verifier's exit status is its verdict: a report it cannot write is said on stderr.
    let bundle = env.scratch().join("bundle");
    env.run(&["ledger", "export", "--tenant", &t.id, "--out", bundle.to_str().expect("utf-8 path")]).ok();
    let key = env.scratch().join("legal.pem");
    std::fs::write(&key, env.run(&["tenant", "pubkey", "--tenant", &t.id]).ok().stdout).expect("write key");
    let mut c = std::process::Command::new(bulwark_tests::verify_bin());
    c.arg(&bundle).arg("--key").arg(&key);
    c.stdout(std::fs::File::create("/dev/full").expect("open /dev/full")).stderr(std::process::Stdio::piped());
    let out = c.output().expect("run bulwark-verify");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "the bundle holds, yet: {:?}\n{stderr}", out.status);
    assert!(stderr.contains("report could not be written") && !stderr.contains("panicked"), "{stderr}");
    env.assert_get(&t.id, "k", b"kept");
}
