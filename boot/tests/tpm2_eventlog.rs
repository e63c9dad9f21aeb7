//! Interoperability: logs from our writer are read by an independent parser, tpm2-tools'
//! `tpm2_eventlog`, and the PCR values it computes equal our replay.

// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

mod common;

use bulwark_boot::alg::HashAlg;
use bulwark_boot::eventlog::{self, EventType, LogWriter};
use bulwark_boot::pcr::PcrIndex;
use common::tpm2_eventlog_pcrs;

fn p(n: u32) -> PcrIndex {
    PcrIndex::new(n).unwrap()
}

/// Whether this tpm2_eventlog skips EV_NO_ACTION events in replay, as the PC Client spec requires.
/// tpm2-tools before the fix for tpm2-software/tpm2-tools#3224 (2023) extends them, and also ignores
/// StartupLocality (added by tpm2-tools#3242), so it cannot be compared with on such logs.
fn tpm2_eventlog_skips_no_action() -> bool {
    let mut w = LogWriter::crypto_agile(&[HashAlg::Sha256]).unwrap();
    w.no_action(p(1), b"probe").unwrap();
    w.measure(p(2), EventType::EFI_ACTION, b"probe", b"probe").unwrap();
    let pcrs = tpm2_eventlog_pcrs(&w.into_bytes());
    let fixed = !pcrs[&HashAlg::Sha256].contains_key(&1);
    if !fixed {
        println!("this tpm2_eventlog extends EV_NO_ACTION events (tpm2-tools#3224); skipping the comparison");
    }
    fixed
}

/// A firmware-like log with every event extended (no EV_NO_ACTION besides the header), each digest
/// the hash of its event data, over three banks.
#[test]
fn crypto_agile_log_agrees_with_tpm2_eventlog() {
    let mut w = LogWriter::crypto_agile(&[HashAlg::Sha256, HashAlg::Sha1, HashAlg::Sha384]).unwrap();
    let mut m = |pcr: u32, ty: EventType, data: &[u8]| {
        w.measure(p(pcr), ty, data, data).unwrap();
    };
    m(0, EventType::POST_CODE, b"post code");
    m(1, EventType::EFI_ACTION, b"Calling EFI Application from Boot Option");
    m(7, EventType::EFI_ACTION, b"secure boot on");
    for pcr in 0..8 {
        m(pcr, EventType::SEPARATOR, &[0; 4]);
    }
    m(4, EventType::EFI_ACTION, b"uki");
    m(14, EventType::IPL, b"MokList");
    m(15, EventType::IPL, b"runtime");
    let bytes = w.into_bytes();
    let ours = eventlog::parse(&bytes).unwrap().replay().unwrap();
    assert_eq!(ours[&HashAlg::Sha384].len(), 10);
    assert_eq!(tpm2_eventlog_pcrs(&bytes), ours);
}

#[test]
fn legacy_log_agrees_with_tpm2_eventlog() {
    let mut w = LogWriter::legacy_sha1();
    w.measure(p(0), EventType::POST_CODE, b"bios", b"bios").unwrap();
    w.measure(p(2), EventType::POST_CODE, b"rom", b"rom").unwrap();
    w.measure(p(4), EventType::IPL, b"mbr", b"mbr").unwrap();
    w.measure(p(0), EventType::SEPARATOR, &[0; 4], &[0; 4]).unwrap();
    let bytes = w.into_bytes();
    assert_eq!(tpm2_eventlog_pcrs(&bytes), eventlog::parse(&bytes).unwrap().replay().unwrap());
}

/// EV_NO_ACTION events and a StartupLocality of 3, compared only with a tpm2_eventlog that follows
/// the spec on both (the swtpm test covers EV_NO_ACTION against a real TPM regardless).
#[test]
fn no_action_and_startup_locality_agree_with_a_fixed_tpm2_eventlog() {
    if !tpm2_eventlog_skips_no_action() {
        return;
    }
    let mut w = LogWriter::crypto_agile(&[HashAlg::Sha256, HashAlg::Sha1]).unwrap();
    w.startup_locality(3).unwrap();
    w.measure(p(0), EventType::POST_CODE, b"crtm", b"crtm").unwrap();
    w.no_action(p(0), b"informational").unwrap();
    w.no_action(p(5), b"informational").unwrap();
    w.measure(p(5), EventType::EFI_ACTION, b"gpt", b"gpt").unwrap();
    let bytes = w.into_bytes();
    assert_eq!(tpm2_eventlog_pcrs(&bytes), eventlog::parse(&bytes).unwrap().replay().unwrap());
}

/// The runtime log keeps its boot-cycle marker in the Spec ID header and has no EV_NO_ACTION event, so
/// even a tpm2_eventlog that extends those (tpm2-tools 5.4, Debian 12) replays it to the right value.
#[test]
fn runtime_log_agrees_with_tpm2_eventlog() {
    let m = bulwark_boot::runtime::Measurements::from_bytes(&[HashAlg::Sha256, HashAlg::Sha1], b"exe", b"cfg", b"prof");
    let bytes = bulwark_boot::runtime::encode_log(9, p(15), &m).unwrap();
    let theirs = tpm2_eventlog_pcrs(&bytes);
    assert_eq!(theirs[&HashAlg::Sha256][&15], m.expected_pcr(HashAlg::Sha256).unwrap());
    assert_eq!(theirs, eventlog::parse(&bytes).unwrap().replay().unwrap());
}
