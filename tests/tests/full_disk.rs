//! File systems that fail under the data dir. On a full one, each command that runs out of space fails
//! with an error that says so and what became of its operation, loses nothing, and once space is freed
//! every later command works and the tenant's ledger verifies offline. A tenant deletion whose files
//! cannot be removed (a read-only directory) says that the deletion itself is final and how to finish.
//!
//! The data dir is a small tmpfs mounted for the test (root only; as another user the test says it
//! skipped). The swtpm keeps its state elsewhere, so the TPM never runs out of space here. Each step
//! fills the file system up to a given amount of free space, runs one command, then frees the space
//! again. The sweeps cross the points where a command's own writes, and then its ledger's, stop
//! fitting.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use bulwark_tests::{Env, Run, TestTpm, bulwark, run_cmd, verify_bin};

/// A tmpfs mounted for the length of a test, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    /// Mounts a tmpfs of `size` (as `mount -o size=` takes it) at `at`; `None` if this process is not
    /// root. A root process that cannot mount fails the test.
    fn mount(at: &Path, size: &str) -> Option<Self> {
        if !bulwark_tests::running_as_root() {
            return None;
        }
        std::fs::create_dir_all(at).expect("mount point");
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700"), "tmpfs"])
            .arg(at)
            .status()
            .expect("run mount");
        assert!(status.success(), "mount -t tmpfs at {} failed: {status}", at.display());
        Some(Tmpfs(at.to_path_buf()))
    }

    /// Free space, in KiB.
    fn free_kib(&self) -> u64 {
        let out = Command::new("stat").args(["-f", "-c", "%a %S"]).arg(&self.0).output().expect("run stat -f");
        let text = String::from_utf8_lossy(&out.stdout);
        let mut it = text.split_whitespace().map(|n| n.parse::<u64>().expect("stat -f prints numbers"));
        let (blocks, size) = (it.next().expect("free blocks"), it.next().expect("block size"));
        blocks * size / 1024
    }

    /// Fills the file system until about `kib` KiB are left free; returns the filler file.
    fn leave_free(&self, kib: u64) -> PathBuf {
        let path = self.0.join("filler");
        let mut f = std::fs::File::create(&path).expect("create filler");
        let chunk = vec![0u8; 1 << 20];
        let mut left = self.free_kib().saturating_sub(kib) * 1024;
        while left > 0 {
            let n = usize::try_from(left.min(1 << 20)).expect("small");
            f.write_all(&chunk[..n]).expect("write filler");
            left -= n as u64;
        }
        f.sync_all().expect("sync filler");
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// A directory made read-only in place (a read-only bind mount over itself) for the length of a test.
struct ReadOnly(PathBuf);

impl ReadOnly {
    /// `None` if this process is not root; a root process that cannot mount fails the test.
    fn over(dir: &Path) -> Option<Self> {
        if !bulwark_tests::running_as_root() {
            return None;
        }
        for args in [&["--bind"][..], &["-o", "remount,ro,bind"][..]] {
            let status = Command::new("mount").args(args).arg(dir).arg(dir).status().expect("run mount");
            assert!(status.success(), "mount {args:?} {} failed: {status}", dir.display());
        }
        Some(ReadOnly(dir.to_path_buf()))
    }
}

impl Drop for ReadOnly {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// `tenant list --json`, which must work: the tenants' names and ids.
fn listed(env: &Env) -> Vec<(String, String)> {
    let v = env.run(&["tenant", "list", "--json"]).ok().json();
    let tenants = v["tenants"].as_array().expect("tenants array");
    tenants
        .iter()
        .map(|t| (t["name"].as_str().expect("name").to_string(), t["id"].as_str().expect("id").to_string()))
        .collect()
}

/// The names of the tenant directories in the data dir.
fn tenant_dirs(env: &Env) -> BTreeSet<String> {
    std::fs::read_dir(env.data_dir().join("tenants"))
        .expect("tenants dir")
        .map(|e| e.expect("dir entry").file_name().to_string_lossy().into_owned())
        .collect()
}

/// Asserts that a failed command said it ran out of space and printed nothing.
#[track_caller]
fn out_of_space(run: &Run) {
    assert!(run.stdout.is_empty(), "`{}` failed but printed {:?}", run.what, String::from_utf8_lossy(&run.stdout));
    assert!(
        run.stderr.contains("No space left on device"),
        "`{}` failed without naming the cause:\n{}",
        run.what,
        run.stderr
    );
}

#[test]
fn a_full_disk_fails_commands_clearly_and_loses_nothing() {
    let env = Env::new();
    // Declared after `env`, so it is unmounted before the temp dir is removed.
    let Some(fs) = Tmpfs::mount(&env.data_dir(), "24m") else {
        eprintln!("skipped: only root can mount the small file system this test fills");
        return;
    };
    env.init();
    let legal = env.create_tenant("legal");
    env.put(&legal.id, "k1", b"kept");

    // Tenant creation, from no space left up to enough for a create whose outcome the ledger records.
    // Every outcome keeps the registry and the tenant directories in step: a failed create leaves no
    // directory behind, and a created tenant always gets its recovery secret (also when the ledger's
    // record of the outcome did not fit).
    let mut seen = Vec::new();
    for leave in (0..=320).step_by(8) {
        let name = format!("t{leave}");
        let filler = fs.leave_free(leave);
        let run = env.run(&["tenant", "create", &name, "--json"]);
        std::fs::remove_file(filler).expect("free the space");
        let tenants = listed(&env);
        let class = if run.status.success() {
            let v = run.json();
            assert!(v["recovery_secret"].as_str().is_some_and(|s| !s.is_empty()), "no recovery secret: {v}");
            assert!(tenants.iter().any(|(n, _)| *n == name), "{name} was created but is not listed");
            if run.stderr.contains("could not record the outcome") { "created, unrecorded" } else { "created" }
        } else {
            out_of_space(&run);
            assert!(!tenants.iter().any(|(n, _)| *n == name), "{name} failed but is listed");
            "refused"
        };
        let ids: BTreeSet<String> = tenants.into_iter().map(|(_, id)| id).collect();
        assert_eq!(tenant_dirs(&env), ids, "tenant directories and the registry differ after creating {name}");
        seen.push((leave, class));
        if class == "created" {
            break;
        }
    }
    eprintln!("tenant create, KiB free and outcome: {seen:?}");
    assert_eq!(seen.first().map(|s| s.1), Some("refused"), "a create with no space left did not fail");
    assert_eq!(seen.last().map(|s| s.1), Some("created"), "no create succeeded with up to 320 KiB free");

    // A put of 100,000 bytes. One put with room to spare shows how much space a put takes; then puts
    // of new records with less and less space left, one page at a time, until one is refused
    // (descending, because a refused put leaves pages in the vault file that the next put reuses). A put
    // is refused only if its record is not in the vault afterwards. The ledger's journal overwrites its two files from the start, so its appends seldom need new space
    // and a put whose record fits almost always has its outcome recorded too; one that does not is
    // reported as carried out, and is checked like the stored ones.
    let value: Vec<u8> = (0..100_000u32).map(|i| i.wrapping_mul(2_654_435_761).to_be_bytes()[1]).collect();
    let before = fs.free_kib();
    env.put(&legal.id, "probe", &value);
    let used = before.saturating_sub(fs.free_kib());
    let mut seen = Vec::new();
    for leave in (0..=used + 16).rev().step_by(4) {
        let key = format!("r-{leave}");
        let filler = fs.leave_free(leave);
        let run = env.run_stdin(&["vault", "put", "--tenant", &legal.id, &key], &value);
        std::fs::remove_file(filler).expect("free the space");
        // A commit the file system failed may still have reached the file; the vault looks, and a write it
        // finds there stands (the log says so).
        let landed = run.stderr.contains("but the write reached the file");
        let class = if run.status.success() {
            if landed { "stored, commit reported failed" } else { "stored" }
        } else if run.stderr.contains("vault.put was carried out, but the ledger could not record its outcome") {
            out_of_space(&run);
            if landed { "stored, commit reported failed, unrecorded" } else { "stored, unrecorded" }
        } else {
            out_of_space(&run);
            assert!(run.stderr.contains("vault.put failed"), "`{}`: unexpected error\n{}", run.what, run.stderr);
            "refused"
        };
        seen.push((leave, key, class));
        if class == "refused" {
            break;
        }
    }
    eprintln!("vault put of 100,000 bytes (one took {used} KiB), KiB free and outcome: {seen:?}");
    for class in ["stored", "refused"] {
        assert!(seen.iter().any(|s| s.2 == class), "no put ended {class:?} in the sweep");
    }
    // Every record the vault took reads back whole, the refused one is not there, and nothing else
    // changed.
    let v = env.run(&["vault", "list", "--tenant", &legal.id, "--json"]).ok().json();
    let mut stored: Vec<&str> =
        v["records"].as_array().expect("records").iter().map(|r| r["key"].as_str().expect("key")).collect();
    stored.sort_unstable();
    let mut expected: Vec<&str> =
        ["k1", "probe"].into_iter().chain(seen.iter().filter(|s| s.2 != "refused").map(|s| s.1.as_str())).collect();
    expected.sort_unstable();
    assert_eq!(stored, expected, "the vault holds other records than the puts that were carried out");
    for (_, key, class) in &seen {
        if *class != "refused" {
            env.assert_get(&legal.id, key, &value);
        }
    }
    env.assert_get(&legal.id, "k1", b"kept");

    // The tenant's ledger, with every operation the full disk interrupted, verifies offline.
    let bundle = env.scratch().join("bundle");
    env.run(&["ledger", "export", "--tenant", &legal.id, "--out", bundle.to_str().expect("utf-8 path")]).ok();
    let key = env.scratch().join("legal.pem");
    std::fs::write(&key, env.run(&["tenant", "pubkey", "--tenant", &legal.id]).ok().stdout).expect("write key");
    let mut c = Command::new(verify_bin());
    c.arg(&bundle).arg("--key").arg(&key).args(["--tenant", &legal.id]);
    run_cmd(c, None).ok();
}

#[test]
fn an_init_that_runs_out_of_space_says_so_and_finishes_when_run_again() {
    // Each step takes a new TPM (init takes a TPM's ownership) and a new small file system, fills it up to
    // the given free space, runs init, frees the space and runs init again.
    let scratch = tempfile::tempdir().expect("tempdir");
    let mut seen = Vec::new();
    for leave in (0..=120).step_by(8) {
        let tpm = TestTpm::start();
        let Some(fs) = Tmpfs::mount(&scratch.path().join(format!("fs-{leave}")), "4m") else {
            eprintln!("skipped: only root can mount the small file system this test fills");
            return;
        };
        let data = fs.0.join("data");
        let init = || {
            let mut c = bulwark();
            c.arg("--data-dir").arg(&data).args(["--tpm", &tpm.tcti(), "init"]);
            run_cmd(c, None)
        };
        let filler = fs.leave_free(leave);
        let first = init();
        std::fs::remove_file(filler).expect("free the space");
        let class = if first.status.success() {
            "initialised"
        } else {
            out_of_space(&first);
            if first.stderr.contains("did not finish") {
                assert!(first.stderr.contains("run it again with the same settings"), "{}", first.stderr);
                "stopped half way"
            } else {
                "refused"
            }
        };
        seen.push((leave, class));
        if class == "initialised" {
            break;
        }
        // Run again with room: it finishes what the first began, and the appliance works.
        init().ok();
        let mut c = bulwark();
        c.arg("--data-dir").arg(&data).args(["--tpm", &tpm.tcti(), "tenant", "list"]);
        run_cmd(c, None).ok();
    }
    eprintln!("init, KiB free and outcome: {seen:?}");
    assert!(seen.iter().any(|s| s.1 == "stopped half way"), "no init stopped half way: {seen:?}");
    assert_eq!(seen.last().map(|s| s.1), Some("initialised"), "no init succeeded with up to 120 KiB free");
}

#[test]
fn a_delete_that_cannot_remove_the_files_says_the_key_is_shredded_and_finishes_when_run_again() {
    let env = Env::new();
    env.init();
    let t = env.create_tenant("legal");
    env.put(&t.id, "k", b"gone soon");
    let tenants = env.data_dir().join("tenants");
    let Some(read_only) = ReadOnly::over(&tenants) else {
        eprintln!("skipped: only root can make the tenants directory read-only for this test");
        return;
    };
    // The liveness bit is set first (final), then the files cannot go.
    env.run(&["tenant", "delete", "--tenant", &t.id, "--name", &t.name]).fails_with(&[
        "key is shredded in the TPM",
        "could not all be removed",
        &format!("bulwark tenant delete --tenant {} --name={}", t.id, t.name),
        "Read-only file system",
    ]);
    drop(read_only);
    assert!(env.tenant_dir(&t.id).is_dir(), "the files were removed after all");
    env.get(&t.id, "k").fails_with(&["was deleted"]);
    // Run again, as the error says: the rest goes.
    env.run(&["tenant", "delete", "--tenant", &t.id, "--name", &t.name]).ok();
    assert!(!env.tenant_dir(&t.id).exists());
    assert!(listed(&env).is_empty(), "the deleted tenant is still listed");
}
