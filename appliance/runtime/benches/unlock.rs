//! Tenant unlock latency on a real swtpm, beside a plain ESAPI anchor measured in the same run.
//!
//! Order: rounds of one sample of each path, the order rotated every round, so that a burst of machine
//! noise (tens of milliseconds on a shared 2-core machine) hits every path alike instead of one path's
//! run of samples. `BULWARK_BENCH_ORDER=blocks` measures in blocks of 50 samples of one path instead, the
//! order earlier sessions' figures used.
//!
//! The anchor runs on its own swtpm (same binary and flags, its own state and SRK), so that it keeps one
//! connection open for the whole run while the appliance connects per operation to the other swtpm, as
//! it must on a one-client swtpm. Neither swtpm does anything while the other is measured.
//!
//! Paths:
//! - (A) anchor: plain tss-esapi on one connection held for the run (opened untimed): TPM2_Load, an
//!   unsalted policy session, TPM2_PolicyPCR, TPM2_Unseal, flush object and session, for a 32-byte
//!   PCR-only sealed object under an SRK of the same template and the same PCR selection as the
//!   tenant's KEK (the sequence of `tpm/benches/unseal.rs`).
//! - (U) `Appliance::unlock` of one tenant: registry lookup, read `kek.sealed`, `Tpm::unseal` through
//!   the policy session (PolicyPCR, PolicyNV, PolicyOR), `Vault::open` and DEK unwrap, the tenant's
//!   ledger signing seed read from the vault and `Gate::open` of its ledger (recovery scan, committer
//!   thread). Dropping the returned tenant (closing its redb file and its ledger gate) is timed apart as
//!   (U-close).
//! - (R) `Appliance::unlock_read_only`, what reading commands use: the same, with the vault opened
//!   read-only (no redb sync on open or close); (R-close) its drop.
//! - Breakdown of (U): (T) `Tpm::unseal` alone on the same sealed blob; (V) `Vault::open` alone with the
//!   KEK in hand and (V-close) its drop; (C) a bare ESAPI connect + disconnect to the swtpm, which
//!   `Tpm` does once per operation on a one-client swtpm and the anchor does not; (Reg) the registry
//!   opened read-only and the tenant looked up; (K) the tenant's ML-DSA-65 ledger signer derived from
//!   its seed; (G) `Gate::open` of the tenant's ledger with that signer and (G-close) its drop.
//!
//! Run: `cargo bench -p bulwark-appliance --bench unlock`. `BULWARK_BENCH_N` sets the sample count per
//! path (default 1,000: the nearest-rank p99 is then the tenth slowest sample, where at 300 it was the
//! fourth, so that a handful of isolated multi-millisecond stalls no longer decides it).

mod common;

use std::time::{Duration, Instant};

use bulwark_appliance::appliance::{Appliance, SIGNING_SEED};
use bulwark_appliance::datadir::DataDir;
use bulwark_appliance::registry::Registry;
use bulwark_appliance::secret::SecretKey;
use bulwark_appliance::vault::Vault;
use bulwark_boot::alg::HashAlg;
use bulwark_ledger::oar::RuntimeState;
use bulwark_ledger::{Gate, LedgerSigner, SignerSeed};
use bulwark_tpm::policy::{self, PcrIndex};
use bulwark_tpm::swtpm::Swtpm;
use bulwark_tpm::{PcrBank, SealedObject, TctiSpec, Tpm, UnsealAuth};
use common::{AnchorConnection, AnchorObject, BoxErr, Stats, ms, stats};
use rand::RngCore;
use zeroize::Zeroizing;

const BLOCK: usize = 50;
const WARMUP: usize = 20;
/// Paths sampled (A, U, R, T, V, C, Reg, K, G) and the sample slots they fill.
const PATHS: usize = 9;
const SLOTS: usize = 13;

fn line(label: &str, s: &Stats) {
    println!(
        "{label:<58} median {:>7.3} ms  p99 {:>7.3} ms  mean {:>7.3} ms  min {:>7.3} ms  (n={})",
        ms(s.median),
        ms(s.p99),
        ms(s.mean),
        ms(s.min),
        s.n
    );
}

fn main() -> Result<(), BoxErr> {
    let n: usize = std::env::var("BULWARK_BENCH_N").ok().and_then(|v| v.parse().ok()).unwrap_or(1000);
    let blocks = match std::env::var("BULWARK_BENCH_ORDER").as_deref() {
        Ok("blocks") => true,
        Ok("rotate") | Err(_) => false,
        Ok(other) => return Err(format!("BULWARK_BENCH_ORDER={other}: expected rotate or blocks").into()),
    };
    let dir = tempfile::tempdir()?;
    let sw = Swtpm::start(&dir.path().join("swtpm"))?;
    let tcti = sw.tcti();
    let anchor_sw = Swtpm::start(&dir.path().join("swtpm-anchor"))?;
    let anchor_tcti = anchor_sw.tcti();
    let dd = DataDir::new(&dir.path().join("data"))?;
    // `Tpm::open` inside `init` sets TSS2_LOG=all+NONE (unless set) before any TSS call.
    let (mut app, _appliance_recovery) = Appliance::init(dd, &tcti, Some("dev-swtpm"), false)?;
    let id = app.create_tenant("bench")?.record.id;
    {
        let t = app.unlock(id)?;
        t.put("probe", b"unlock bench")?;
        if &*t.get("probe")?.0 != b"unlock bench" {
            return Err("vault round trip failed".into());
        }
    }

    // The anchor object, on the anchor's swtpm: an SRK of the same template, the same bank and PCRs as
    // the tenant's PolicyPCR (that swtpm's values), a 32-byte secret.
    if app.profile().seal_bank() != HashAlg::Sha256 {
        return Err("the anchor assumes the sha256 seal bank of the dev-swtpm profile".into());
    }
    let pcr_nums: Vec<u32> = app.profile().bound_pcrs().iter().map(|p| p.get()).collect();
    let pcrs = pcr_nums.iter().map(|p| PcrIndex::new(*p)).collect::<Result<Vec<_>, _>>()?;
    let values = {
        let anchor_tpm = Tpm::open(&anchor_tcti.parse::<TctiSpec>()?)?;
        anchor_tpm.ensure_srk()?;
        anchor_tpm.pcr_read(PcrBank::Sha256, &pcrs)?
    };
    let pcr_policy = policy::policy_pcr(&policy::POLICY_START, &values);
    let mut anchor_secret = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut anchor_secret);
    let anchor = AnchorObject::create(&anchor_tcti, &pcr_nums, pcr_policy, &anchor_secret)?;
    let mut anchor_conn = AnchorConnection::open(&anchor_tcti)?;

    // For the breakdown: the tenant's sealed blob, and its KEK to open the vault directly.
    let tenant_dir = app.data_dir().tenant_dir(&id);
    let sealed = SealedObject::from_bytes(&std::fs::read(tenant_dir.join("kek.sealed"))?)?;
    let vault_path = tenant_dir.join("vault.redb");
    let kek = {
        let s = app.machine_mut().tpm.unseal(&sealed, UnsealAuth::MeasuredState)?;
        let mut bytes = Zeroizing::new(s.expose_secret().to_vec());
        SecretKey::take_from(&mut bytes[..]).ok_or("KEK is not 32 bytes")?
    };
    let registry_path = app.data_dir().registry_path();
    let ledger_dir = tenant_dir.join("ledger");
    let seed = {
        let vault = Vault::open_read_only(&vault_path, id, &kek)?;
        vault.get_secret(SIGNING_SEED)?
    };
    let runtime = {
        let m = app.measured();
        RuntimeState::new(m.pcr, app.profile().seal_bank().tcg_id(), m.value.clone())?
    };

    // One sample of path `path` (0 A, 1 U, 2 R, 3 T, 4 V, 5 C, 6 Reg, 7 K, 8 G) into `rec`, whose slots
    // are A, U, U-close, R, R-close, T, V, V-close, C, Reg, K, G and G-close.
    let mut rec: [Vec<Duration>; SLOTS] = Default::default();
    let mut sample = |path: usize, rec: &mut [Vec<Duration>; SLOTS]| -> Result<(), BoxErr> {
        match path {
            0 => rec[0].extend(anchor.unseal_times_on(&mut anchor_conn, 1)?),
            1 | 2 => {
                let t0 = Instant::now();
                let unlocked = if path == 1 { app.unlock(id)? } else { app.unlock_read_only(id)? };
                let took = t0.elapsed();
                let t1 = Instant::now();
                drop(unlocked);
                let (open, close) = if path == 1 { (1, 2) } else { (3, 4) };
                rec[open].push(took);
                rec[close].push(t1.elapsed());
            }
            3 => {
                let t0 = Instant::now();
                let s = app.machine_mut().tpm.unseal(&sealed, UnsealAuth::MeasuredState)?;
                rec[5].push(t0.elapsed());
                if s.len() != 32 {
                    return Err("Tpm::unseal returned the wrong length".into());
                }
            }
            4 => {
                let t0 = Instant::now();
                let vault = Vault::open(&vault_path, id, &kek)?;
                rec[6].push(t0.elapsed());
                let t1 = Instant::now();
                drop(vault);
                rec[7].push(t1.elapsed());
            }
            5 => rec[8].extend(common::connect_times(&tcti, 1)?),
            6 => {
                let t0 = Instant::now();
                let record = Registry::open_read_only(&registry_path)?.get(id)?;
                rec[9].push(t0.elapsed());
                if record.id != id {
                    return Err("the registry returned another tenant".into());
                }
            }
            7 => {
                let mut raw = Zeroizing::new(*seed.expose_secret());
                let t0 = Instant::now();
                let signer = LedgerSigner::tenant(id, &SignerSeed::from_bytes(&mut raw))?;
                rec[10].push(t0.elapsed());
                drop(signer);
            }
            _ => {
                let mut raw = Zeroizing::new(*seed.expose_secret());
                let signer = LedgerSigner::tenant(id, &SignerSeed::from_bytes(&mut raw))?;
                let t0 = Instant::now();
                let gate = Gate::open(&ledger_dir, signer, runtime.clone())?;
                rec[11].push(t0.elapsed());
                let t1 = Instant::now();
                drop(gate);
                rec[12].push(t1.elapsed());
            }
        }
        Ok(())
    };
    let mut warm: [Vec<Duration>; SLOTS] = Default::default();
    if blocks {
        // Blocks of BLOCK samples of one path, the paths in turn (the first round of WARMUP each is warm-up).
        let mut done = 0usize;
        let mut first = true;
        while done < n {
            let k = if first { WARMUP } else { BLOCK.min(n - done) };
            for path in 0..PATHS {
                for _ in 0..k {
                    sample(path, if first { &mut warm } else { &mut rec })?;
                }
            }
            if !first {
                done += k;
            }
            first = false;
        }
    } else {
        // One sample of each path per round, the order rotated each round (WARMUP rounds of warm-up).
        for round in 0..WARMUP + n {
            for j in 0..PATHS {
                sample((round + j) % PATHS, if round < WARMUP { &mut warm } else { &mut rec })?;
            }
        }
    }
    let [a, u, u_close, ro, ro_close, t, v, v_close, c, reg, k, g, g_close] = rec;

    let (sa, su, suc) = (stats(&a)?, stats(&u)?, stats(&u_close)?);
    let (sr, src) = (stats(&ro)?, stats(&ro_close)?);
    let (st, sv, svc, sc) = (stats(&t)?, stats(&v)?, stats(&v_close)?, stats(&c)?);
    let (sreg, sk, sg, sgc) = (stats(&reg)?, stats(&k)?, stats(&g)?, stats(&g_close)?);
    let order = if blocks {
        format!("blocks of {BLOCK} interleaved, {WARMUP} warm-up each")
    } else {
        format!("one sample of each path per round, order rotated each round, {WARMUP} warm-up rounds")
    };
    println!("unlock bench: swtpm {tcti} (anchor: swtpm {anchor_tcti}, one connection), N={n} per path, {order}");
    println!("{}", common::machine_report());
    println!("{}", common::fsync_probe(dir.path())?);
    line("(A) anchor: ESAPI Load+PolicyPCR+Unseal+Flush (held conn)", &sa);
    line("(U) Appliance::unlock (registry, blob, unseal, vault open)", &su);
    line("(U-close) drop of the unlocked tenant (redb close)", &suc);
    line("(R) Appliance::unlock_read_only (vault opened read-only)", &sr);
    line("(R-close) drop of the read-only unlocked tenant", &src);
    line("(T) Tpm::unseal alone (lock, connect, PCR+NV+OR, unseal)", &st);
    line("(V) Vault::open alone (lock file, redb open, DEK unwrap)", &sv);
    line("(V-close) drop of the vault (redb close)", &svc);
    line("(C) bare ESAPI connect+disconnect to swtpm", &sc);
    line("(Reg) registry open read-only + lookup", &sreg);
    line("(K) tenant ledger signer from its seed (ML-DSA-65 keygen)", &sk);
    line("(G) Gate::open of the tenant ledger (recovery, thread)", &sg);
    line("(G-close) drop of the gate (committer shutdown)", &sgc);
    // Where the tail sits: the slowest samples with their position in the run (in blocks, consecutive
    // positions within one block are one burst of machine noise; spread-out ones are the path's own).
    for (label, samples) in [("A", &a), ("U", &u), ("R", &ro)] {
        let mut worst: Vec<(usize, Duration)> = samples.iter().copied().enumerate().collect();
        worst.sort_by_key(|(_, d)| std::cmp::Reverse(*d));
        let shown: Vec<String> = worst.iter().take(6).map(|(i, d)| format!("#{i} {:.2}", ms(*d))).collect();
        println!("slowest {label} (sample #, ms): {}", shown.join(", "));
    }
    let r = |x: Duration, y: Duration| x.as_secs_f64() / y.as_secs_f64();
    println!(
        "ratio U/A: median {:.2}x  p99 {:.2}x   (target <= 1.5x: {})",
        r(su.median, sa.median),
        r(su.p99, sa.p99),
        if r(su.median, sa.median) <= 1.5 && r(su.p99, sa.p99) <= 1.5 { "met" } else { "MISSED" }
    );
    println!(
        "ratio R/A: median {:.2}x  p99 {:.2}x   (target <= 1.5x: {})",
        r(sr.median, sa.median),
        r(sr.p99, sa.p99),
        if r(sr.median, sa.median) <= 1.5 && r(sr.p99, sa.p99) <= 1.5 { "met" } else { "MISSED" }
    );
    println!(
        "ratio T/A: median {:.2}x  p99 {:.2}x   ratio (U + U-close)/A median {:.2}x",
        r(st.median, sa.median),
        r(st.p99, sa.p99),
        r(su.median + suc.median, sa.median)
    );
    println!("load average at end: {}", common::load_average());
    drop(app);
    drop(anchor_conn);
    sw.stop();
    anchor_sw.stop();
    Ok(())
}
