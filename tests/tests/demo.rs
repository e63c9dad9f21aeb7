//! `bulwark demo` (the README's main job) on this machine: no TPM device, so it manages its own swtpm.

use bulwark_tests::{bulwark, run_cmd};

#[test]
fn demo_runs_to_completion_with_a_managed_swtpm() {
    if std::path::Path::new("/dev/tpmrm0").exists() {
        // With a TPM device, `--tpm auto` would run the walkthrough on the machine's real TPM (tenants,
        // NV indices): not something a test may do. This test is for machines without one.
        println!("skipped: /dev/tpmrm0 exists, so `--tpm auto` would use the real TPM");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let mut c = bulwark();
    c.arg("--data-dir").arg(dir.path()).args(["--tpm", "auto", "demo"]);
    let run = run_cmd(c, None).ok();
    let out = run.stdout_str();
    println!("{out}");
    for needle in [
        "a swtpm this appliance started",
        "unlock legal refused",
        "measured state changed",
        "trading reads limit/desk-7",
        "Walkthrough complete",
    ] {
        assert!(out.contains(needle), "demo output lacks {needle:?}:\n{out}\nstderr:\n{}", run.stderr);
    }
    assert!(out.contains("contains its plaintext: false"), "demo found plaintext on disk:\n{out}");
    assert!(out.contains("or its record key in the clear: false"), "demo found a record key on disk:\n{out}");
    // It left its data dir, with the managed swtpm's state inside it, the auditor bundle beside it, and no
    // swtpm running for it.
    let demo_dirs: Vec<_> = std::fs::read_dir(dir.path()).expect("read_dir").flatten().collect();
    assert_eq!(demo_dirs.len(), 1, "one demo-<time> dir");
    let state = demo_dirs[0].path().join("data/swtpm");
    assert!(demo_dirs[0].path().join("audit-bundle-trading/BUNDLE").is_file(), "the bundle beside the data dir");
    assert!(state.is_dir());
    let needle = state.to_string_lossy().into_owned();
    let leaked: Vec<String> = std::fs::read_dir("/proc")
        .expect("/proc")
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains(&needle))
        .collect();
    assert!(leaked.is_empty(), "processes still using the demo's swtpm state: {leaked:?}");
}
