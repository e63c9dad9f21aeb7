//! 1,000 tenants unlocked in sequence on a real swtpm, beside 1,000 plain ESAPI unseals in the same run.
//!
//! Setup (reported, not counted): `Appliance::create_tenant` 1,000 times, each with its own KEK sealed to
//! the runtime PCR and its own liveness bit (16 liveness NV indices in all), sealed blob and vault file.
//! Then each tenant is unlocked once, in creation order, with `Appliance::unlock`; its vault is closed
//! (dropped) before the next one. Reported: the total with closes (what a sequential sweep costs), the
//! sum of the unlock calls alone, and per-unlock median and p99. Anchor: 1,000 sequential plain
//! tss-esapi unseals (Load, PolicyPCR session, Unseal, flushes; one connection) of a 32-byte PCR-sealed
//! object under the same SRK and PCR selection.
//!
//! Run: `cargo bench -p bulwark-appliance --bench unlock_1000`. `BULWARK_BENCH_TENANTS` overrides the
//! count (default 1000).

mod common;

use std::time::{Duration, Instant};

use bulwark_appliance::appliance::Appliance;
use bulwark_appliance::datadir::DataDir;
use bulwark_boot::alg::HashAlg;
use bulwark_tpm::PcrBank;
use bulwark_tpm::policy::{self, PcrIndex};
use bulwark_tpm::swtpm::Swtpm;
use common::{AnchorObject, BoxErr, ms, stats};
use rand::RngCore;

fn main() -> Result<(), BoxErr> {
    let count: usize = std::env::var("BULWARK_BENCH_TENANTS").ok().and_then(|v| v.parse().ok()).unwrap_or(1000);
    let dir = tempfile::tempdir()?;
    let sw = Swtpm::start(&dir.path().join("swtpm"))?;
    let tcti = sw.tcti();
    let dd = DataDir::new(&dir.path().join("data"))?;
    let (mut app, _appliance_recovery) = Appliance::init(dd, &tcti, Some("dev-swtpm"), false)?;

    let setup = Instant::now();
    let mut ids = Vec::with_capacity(count);
    let mut create_times = Vec::with_capacity(count);
    for i in 0..count {
        let t = Instant::now();
        ids.push(app.create_tenant(&format!("tenant-{i:05}"))?.record.id);
        create_times.push(t.elapsed());
    }
    let setup_total = setup.elapsed();

    // One 4 KiB record per tenant, so each unlock opens a vault that holds data (reported, not counted).
    let seed = Instant::now();
    let record = vec![0x42u8; 4096];
    for id in &ids {
        app.unlock(*id)?.put("hello", &record)?;
    }
    let seed_total = seed.elapsed();

    let sweep = Instant::now();
    let mut unlock_times = Vec::with_capacity(count);
    for id in &ids {
        let t = Instant::now();
        let unlocked = app.unlock(*id)?;
        unlock_times.push(t.elapsed());
        drop(unlocked);
    }
    let sweep_total = sweep.elapsed();
    let unlock_sum: Duration = unlock_times.iter().sum();

    // The anchor, after the sweep: the Tpm and the anchor's connection must not overlap on swtpm.
    if app.profile().seal_bank() != HashAlg::Sha256 {
        return Err("the anchor assumes the sha256 seal bank of the dev-swtpm profile".into());
    }
    let pcr_nums: Vec<u32> = app.profile().bound_pcrs().iter().map(|p| p.get()).collect();
    let pcrs = pcr_nums.iter().map(|p| PcrIndex::new(*p)).collect::<Result<Vec<_>, _>>()?;
    let values = app.machine_mut().tpm.pcr_read(PcrBank::Sha256, &pcrs)?;
    let mut secret = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut secret);
    let anchor = AnchorObject::create(&tcti, &pcr_nums, policy::policy_pcr(&policy::POLICY_START, &values), &secret)?;
    let anchor_start = Instant::now();
    let anchor_times = anchor.unseal_times(&tcti, count)?;
    let anchor_total = anchor_start.elapsed();

    let (sc, su, sa) = (stats(&create_times)?, stats(&unlock_times)?, stats(&anchor_times)?);
    println!("unlock_1000 bench: {count} tenants, swtpm {tcti}");
    println!("{}", common::machine_report());
    println!("{}", common::fsync_probe(dir.path())?);
    println!(
        "setup: {count} x create_tenant in {:.2} s (median {:.2} ms, p99 {:.2} ms, last {:.2} ms)",
        setup_total.as_secs_f64(),
        ms(sc.median),
        ms(sc.p99),
        ms(*create_times.last().ok_or("no tenants")?)
    );
    println!("setup: one 4 KiB record put into each vault in {:.2} s", seed_total.as_secs_f64());
    println!(
        "sweep: {count} x unlock+close in sequence: {:.3} s total (unlock calls alone {:.3} s)   target <= 10 s: {}",
        sweep_total.as_secs_f64(),
        unlock_sum.as_secs_f64(),
        if sweep_total.as_secs_f64() <= 10.0 { "met" } else { "MISSED" }
    );
    println!(
        "per unlock: median {:.3} ms  p99 {:.3} ms  min {:.3} ms  max {:.3} ms",
        ms(su.median),
        ms(su.p99),
        ms(su.min),
        ms(su.max)
    );
    println!(
        "anchor: {count} x plain ESAPI unseal in sequence: {:.3} s total (median {:.3} ms, p99 {:.3} ms)",
        anchor_total.as_secs_f64(),
        ms(sa.median),
        ms(sa.p99)
    );
    println!("ratio sweep/anchor total: {:.2}x", sweep_total.as_secs_f64() / anchor_total.as_secs_f64());
    println!("load average at end: {}", common::load_average());
    drop(app);
    sw.stop();
    Ok(())
}
