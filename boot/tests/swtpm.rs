//! Event-log replay and the runtime stage against a real swtpm (one per test), through tpm2-tools.

// Test code: a failed unwrap is a failed test. (clippy's allow-unwrap-in-tests does not reach helpers.)
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use bulwark_boot::alg::HashAlg;
use bulwark_boot::eventlog::{self, EventType, LogWriter};
use bulwark_boot::pcr::{self, PcrIndex};
use bulwark_boot::profile::HwProfile;
use bulwark_boot::runtime::{self, Component, Measurements, Outcome, PcrDevice, RuntimeError};
use bulwark_tpm::swtpm::Swtpm;
use common::{Tpm2Tools, extend_arg, tool};

fn p(n: u32) -> PcrIndex {
    PcrIndex::new(n).unwrap()
}

fn start(dir: &Path) -> (Swtpm, Tpm2Tools) {
    let tpm = Swtpm::start(dir).expect("start swtpm");
    let dev = Tpm2Tools::new(tpm.tcti());
    (tpm, dev)
}

/// Extends every non-`EV_NO_ACTION` event of `log` into the TPM, one `tpm2_pcrextend` per event.
fn extend_into_tpm(dev: &Tpm2Tools, log: &eventlog::EventLog) {
    for ev in log.events().iter().filter(|e| e.is_extended()) {
        let digests: Vec<(HashAlg, Vec<u8>)> = ev.digests.iter().map(|d| (d.alg().unwrap(), d.bytes.clone())).collect();
        tool(&dev.tcti, "tpm2_pcrextend", &[&extend_arg(ev.pcr, &digests)]).unwrap();
    }
}

/// Checks that the replay equals what the TPM reports, for every bank and PCR in the replay, and that
/// untouched PCRs sit at the reset values `pcr::initial_value` models.
fn assert_replay_matches_tpm(dev: &mut Tpm2Tools, replay: &BTreeMap<HashAlg, BTreeMap<u32, Vec<u8>>>) {
    for (alg, pcrs) in replay {
        assert!(!pcrs.is_empty());
        for (i, value) in pcrs {
            let tpm = dev.pcr_read(*alg, p(*i)).unwrap();
            assert_eq!(hex::encode(&tpm), hex::encode(value), "{alg} PCR {i}");
        }
        for i in PcrIndex::all().filter(|i| !pcrs.contains_key(&i.get())) {
            let tpm = dev.pcr_read(*alg, i).unwrap();
            assert_eq!(tpm, pcr::initial_value(*alg, i, 0).unwrap(), "{alg} untouched PCR {i}");
        }
    }
}

#[test]
fn crypto_agile_log_replays_to_the_pcrs_swtpm_reports() {
    let dir = tempfile::tempdir().unwrap();
    let (_tpm, mut dev) = start(dir.path());
    let mut banks = vec![HashAlg::Sha256, HashAlg::Sha1];
    if dev.bank_active(HashAlg::Sha384) {
        banks.push(HashAlg::Sha384);
    } else {
        println!("skipping the sha384 bank: this swtpm does not have it active");
    }

    // swtpm is started from locality 0, so the StartupLocality event says 0.
    let mut w = LogWriter::crypto_agile(&banks).unwrap();
    w.startup_locality(0).unwrap();
    w.measure(p(0), EventType::S_CRTM_VERSION, b"crtm 1.0", &[0x31, 0]).unwrap();
    w.no_action(p(0), b"informational, never extended").unwrap();
    w.measure(p(1), EventType::PLATFORM_CONFIG_FLAGS, b"flags", b"flags").unwrap();
    w.measure(p(7), EventType::EFI_VARIABLE_DRIVER_CONFIG, b"SecureBoot\x01", b"sb").unwrap();
    for pcr in 0..8 {
        w.measure(p(pcr), EventType::SEPARATOR, &[0; 4], &[0; 4]).unwrap();
    }
    w.measure(p(4), EventType::EFI_BOOT_SERVICES_APPLICATION, b"shim", b"\\EFI\\BOOT\\BOOTX64.EFI").unwrap();
    w.measure(p(4), EventType::EFI_BOOT_SERVICES_APPLICATION, b"uki", b"\\EFI\\Linux\\a.efi").unwrap();
    w.measure(p(14), EventType::IPL, b"MokList", b"MokList").unwrap();
    w.no_action(p(15), b"also not extended").unwrap();
    w.measure(p(15), EventType::IPL, b"runtime", b"bulwark").unwrap();
    let bytes = w.into_bytes();

    let log = eventlog::parse(&bytes).unwrap();
    extend_into_tpm(&dev, &log);
    let replay = log.replay().unwrap();
    assert_eq!(replay.keys().copied().collect::<Vec<_>>().len(), banks.len());
    assert_eq!(replay[&HashAlg::Sha256].keys().copied().collect::<Vec<_>>(), vec![0, 1, 2, 3, 4, 5, 6, 7, 14, 15]);
    assert_replay_matches_tpm(&mut dev, &replay);
}

#[test]
fn legacy_log_replays_to_the_sha1_pcrs_swtpm_reports() {
    let dir = tempfile::tempdir().unwrap();
    let (_tpm, mut dev) = start(dir.path());
    let mut w = LogWriter::legacy_sha1();
    w.measure(p(0), EventType::S_CRTM_VERSION, b"bios", b"v1").unwrap();
    w.no_action(p(0), b"not extended").unwrap();
    w.measure(p(2), EventType::POST_CODE, b"option rom", b"").unwrap();
    w.measure(p(4), EventType::IPL, b"mbr", b"mbr").unwrap();
    w.measure(p(4), EventType::IPL, b"stage2", b"stage2").unwrap();
    w.measure(p(0), EventType::SEPARATOR, &[0; 4], &[0; 4]).unwrap();
    let log = eventlog::parse(&w.into_bytes()).unwrap();
    extend_into_tpm(&dev, &log);
    let replay = log.replay().unwrap();
    assert_eq!(replay.keys().copied().collect::<Vec<_>>(), vec![HashAlg::Sha1]);
    assert_eq!(replay[&HashAlg::Sha1].keys().copied().collect::<Vec<_>>(), vec![0, 2, 4]);
    assert_replay_matches_tpm(&mut dev, &replay);
}

fn expect_changed(r: Result<runtime::StageReport, RuntimeError<common::ToolError>>, what: &str) {
    match r {
        Err(e @ RuntimeError::RuntimeChanged { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains("runtime changed since this boot cycle's measurement"), "{msg}");
            assert!(msg.contains(what), "{msg}");
        }
        other => panic!("expected RuntimeChanged({what}), got {other:?}"),
    }
}

fn expect_not_replaying(r: Result<runtime::StageReport, RuntimeError<common::ToolError>>) {
    match r {
        Err(e @ RuntimeError::NotReplaying { .. }) => {
            assert!(e.to_string().contains("runtime event log does not replay to PCR 15"), "{e}");
        }
        other => panic!("expected NotReplaying, got {other:?}"),
    }
}

/// Checks the log on disk replays to the TPM's PCR 15 in every profile bank and records `reset_count`.
fn assert_log_matches_tpm(dev: &mut Tpm2Tools, data: &Path, profile: &HwProfile, reset_count: u32) {
    let bytes = std::fs::read(runtime::log_path(data)).unwrap();
    let log = eventlog::parse(&bytes).unwrap();
    let replay = log.replay().unwrap();
    for a in profile.runtime_log_banks() {
        assert_eq!(replay[a][&15], dev.pcr_read(*a, p(15)).unwrap(), "{a}");
    }
    let marker = &log.spec_id().unwrap().vendor_info;
    assert_eq!(&marker[16..20], &reset_count.to_le_bytes());
    // An independent reader, tpm2-tools' tpm2_eventlog, gets the TPM's values too.
    let theirs = common::tpm2_eventlog_pcrs(&bytes);
    for a in profile.runtime_log_banks() {
        assert_eq!(theirs[a][&15], dev.pcr_read(*a, p(15)).unwrap(), "tpm2_eventlog, {a}");
    }
}

#[test]
fn runtime_stage_measures_once_per_boot_cycle_on_swtpm() {
    let dir = tempfile::tempdir().unwrap();
    let tpm_dir = dir.path().join("tpm");
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let exe = dir.path().join("bulwark");
    std::fs::write(&exe, b"\x7fELF pretend appliance build 1").unwrap();
    let config = b"listen = \"127.0.0.1:8443\"\n".to_vec();
    let profile = HwProfile::embedded("dev-swtpm").unwrap();
    let measured = Measurements::measure::<common::ToolError>(&profile, &exe, &config).unwrap();

    let (tpm, mut dev) = start(&tpm_dir);
    let rc1 = dev.reset_count().unwrap();

    // First invocation in the boot cycle: extends and logs.
    let r = runtime::run(&mut dev, &data, &exe, &config, &profile).unwrap();
    assert_eq!(r.outcome, Outcome::Measured);
    assert_eq!(r.reset_count, rc1);
    for a in profile.runtime_log_banks() {
        assert_eq!(dev.pcr_read(*a, p(15)).unwrap(), measured.expected_pcr(*a).unwrap(), "{a}");
        assert_eq!(r.values[a], measured.expected_pcr(*a).unwrap());
    }
    assert_log_matches_tpm(&mut dev, &data, &profile, rc1);

    // Second invocation, same cycle: verifies, extends nothing.
    let r = runtime::run(&mut dev, &data, &exe, &config, &profile).unwrap();
    assert_eq!(r.outcome, Outcome::Verified);
    assert_eq!(dev.pcr_read(HashAlg::Sha256, p(15)).unwrap(), measured.expected_pcr(HashAlg::Sha256).unwrap());

    // Changed executable bytes, or config, in the same cycle: refused, PCR untouched.
    std::fs::write(&exe, b"\x7fELF pretend appliance build 2").unwrap();
    expect_changed(runtime::run(&mut dev, &data, &exe, &config, &profile), "executable");
    std::fs::write(&exe, b"\x7fELF pretend appliance build 1").unwrap();
    expect_changed(runtime::run(&mut dev, &data, &exe, b"listen = \"0.0.0.0:8443\"\n", &profile), "config");
    assert_eq!(dev.pcr_read(HashAlg::Sha256, p(15)).unwrap(), measured.expected_pcr(HashAlg::Sha256).unwrap());
    assert_eq!(runtime::run(&mut dev, &data, &exe, &config, &profile).unwrap().outcome, Outcome::Verified);

    // Something else extends PCR 15 in this cycle: the log no longer replays.
    dev.pcr_extend(p(15), &[(HashAlg::Sha256, vec![0xAB; 32]), (HashAlg::Sha1, vec![0xAB; 20])]).unwrap();
    expect_not_replaying(runtime::run(&mut dev, &data, &exe, &config, &profile));

    // Power cycle: new reset count, fresh measurement, old log kept as .prev.
    tpm.stop();
    let (tpm, mut dev) = start(&tpm_dir);
    let rc2 = dev.reset_count().unwrap();
    assert_ne!(rc2, rc1, "tpm2_readclock reports a new reset count after a restart");
    let old_log = std::fs::read(runtime::log_path(&data)).unwrap();
    let r = runtime::run(&mut dev, &data, &exe, &config, &profile).unwrap();
    assert_eq!(r.outcome, Outcome::Measured);
    assert_eq!(r.reset_count, rc2);
    assert_eq!(std::fs::read(data.join(format!("{}.prev", runtime::LOG_FILE_NAME))).unwrap(), old_log);
    assert_log_matches_tpm(&mut dev, &data, &profile, rc2);
    assert_eq!(runtime::run(&mut dev, &data, &exe, &config, &profile).unwrap().outcome, Outcome::Verified);

    // Crash after extending the executable's digest but before the log was written: the next run
    // completes the measurement from the PCR and writes a log that replays.
    tpm.stop();
    let (tpm, mut dev) = start(&tpm_dir);
    let rc3 = dev.reset_count().unwrap();
    dev.pcr_extend(p(15), measured.digests(Component::Executable)).unwrap();
    let r = runtime::run(&mut dev, &data, &exe, &config, &profile).unwrap();
    assert!(matches!(r.outcome, Outcome::Recovered { .. }), "{:?}", r.outcome);
    assert_log_matches_tpm(&mut dev, &data, &profile, rc3);
    assert_eq!(r.values[&HashAlg::Sha256], measured.expected_pcr(HashAlg::Sha256).unwrap());

    // An unreadable log in the same cycle is set aside and rebuilt from the PCR, which proves it.
    std::fs::write(runtime::log_path(&data), b"not a log").unwrap();
    let r = runtime::run(&mut dev, &data, &exe, &config, &profile).unwrap();
    assert!(matches!(&r.outcome, Outcome::Recovered { reason } if reason.contains("unreadable")), "{:?}", r.outcome);
    assert_log_matches_tpm(&mut dev, &data, &profile, rc3);
    assert_eq!(runtime::run(&mut dev, &data, &exe, &config, &profile).unwrap().outcome, Outcome::Verified);

    // A log of layout version 1 (its marker an EV_NO_ACTION event) from this cycle, as an older build
    // left it: read as unreadable and rebuilt in the current layout, with nothing extended.
    let before = dev.pcr_read(HashAlg::Sha256, p(15)).unwrap();
    let mut v1 = LogWriter::crypto_agile(profile.runtime_log_banks()).unwrap();
    let mut marker = b"BulwarkRtCycle1\0".to_vec();
    marker.extend_from_slice(&rc3.to_le_bytes());
    marker.extend_from_slice(&15u32.to_le_bytes());
    v1.no_action(p(15), &marker).unwrap();
    for c in Component::ALL {
        v1.event(p(15), EventType::IPL, measured.digests(c), c.label()).unwrap();
    }
    std::fs::write(runtime::log_path(&data), v1.as_bytes()).unwrap();
    let r = runtime::run(&mut dev, &data, &exe, &config, &profile).unwrap();
    assert!(
        matches!(&r.outcome, Outcome::Recovered { reason } if reason.contains("layout version 1") && reason.contains("3 of 3")),
        "{:?}",
        r.outcome
    );
    assert_eq!(dev.pcr_read(HashAlg::Sha256, p(15)).unwrap(), before, "the rebuild extended the PCR");
    assert_log_matches_tpm(&mut dev, &data, &profile, rc3);
    assert_eq!(runtime::run(&mut dev, &data, &exe, &config, &profile).unwrap().outcome, Outcome::Verified);

    // A different runtime after a crash of the first one in the same cycle: the log is gone, and the PCR
    // holds measurements the new runtime did not make: refused.
    std::fs::remove_file(runtime::log_path(&data)).unwrap();
    std::fs::write(&exe, b"\x7fELF pretend appliance build 2").unwrap();
    expect_not_replaying(runtime::run(&mut dev, &data, &exe, &config, &profile));

    // Something extended PCR 15 before the runtime in a fresh cycle (e.g. systemd-pcrmachine): refused.
    tpm.stop();
    let (_tpm, mut dev) = start(&tpm_dir);
    dev.pcr_extend(p(15), &[(HashAlg::Sha256, vec![1; 32]), (HashAlg::Sha1, vec![1; 20])]).unwrap();
    expect_not_replaying(runtime::run(&mut dev, &data, &exe, &config, &profile));
}
