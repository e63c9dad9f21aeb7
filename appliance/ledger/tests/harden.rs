//! `harden_process` changes process-wide state, so it is tested in its own test binary.

#![allow(clippy::unwrap_used)]

use bulwark_ledger::signer::harden_process;

#[test]
fn process_becomes_non_dumpable_without_core_files() {
    let h = harden_process();
    assert!(h.non_dumpable && h.no_core_limit, "{h:?}");
    assert_eq!(rustix::process::dumpable_behavior().unwrap(), rustix::process::DumpableBehavior::NotDumpable);
    let status = std::fs::read_to_string("/proc/self/limits").unwrap();
    let core = status.lines().find(|l| l.starts_with("Max core file size")).unwrap();
    assert!(core.split_whitespace().nth(4) == Some("0"), "{core}");
}
