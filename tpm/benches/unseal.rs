//! Unseal latency on one swtpm: (a) a minimal anchor sequence of plain ESAPI calls through tss-esapi's
//! `Context` (Load, unsalted policy session, PolicyPCR, Unseal, FlushContext ×2) on a PCR-only sealed
//! object of the same size, against (b) `Tpm::unseal` (connect under the lock, Load, salted
//! policy session, PolicyPCR, PolicyNV, PolicyOR, Unseal, flush, disconnect; default options, so no
//! session encryption on this loopback swtpm) and (c) the same with `SessionEncryption::Always` (an
//! extra SRK-salted session whose encrypt attribute covers the Unseal response). Prints median, p99
//! and the ratios.
//!
//! Run: `cargo bench -p bulwark-tpm --bench unseal` (release profile). `BULWARK_BENCH_N` sets the
//! iteration count (default 300).

use std::str::FromStr;
use std::time::{Duration, Instant};

use bulwark_tpm::policy::{self, PcrIndex};
use bulwark_tpm::swtpm::Swtpm;
use bulwark_tpm::{LivenessSlot, PcrBank, SealPolicy, SessionEncryption, TctiSpec, Tpm, TpmOptions, UnsealAuth};

mod esapi_anchor;
mod machine;
use esapi_anchor::AnchorObject;

type BoxErr = Box<dyn std::error::Error>;

const SECRET: &[u8; 32] = b"bench-secret-32-bytes-long-kek!!";

fn stats(mut v: Vec<Duration>) -> (Duration, Duration) {
    v.sort();
    let med = v[v.len() / 2];
    let p99 = v[((v.len() * 99) / 100).min(v.len() - 1)];
    (med, p99)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn ours(tpm: &Tpm, obj: &bulwark_tpm::SealedObject, n: usize) -> Result<Vec<Duration>, BoxErr> {
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let s = tpm.unseal(obj, UnsealAuth::MeasuredState)?;
        times.push(t.elapsed());
        if s.expose_secret() != SECRET {
            return Err("unsealed the wrong bytes".into());
        }
    }
    Ok(times)
}

fn main() -> Result<(), BoxErr> {
    if std::env::var_os("TSS2_LOG").is_none() {
        // SAFETY: single-threaded at this point; nothing else reads the environment concurrently.
        unsafe { std::env::set_var("TSS2_LOG", "all+NONE") };
    }
    let n: usize = std::env::var("BULWARK_BENCH_N").ok().and_then(|v| v.parse().ok()).unwrap_or(300);
    let dir = tempfile::tempdir()?;
    let sw = Swtpm::start(dir.path())?;
    let spec = TctiSpec::from_str(&sw.tcti())?;

    let tpm = Tpm::open(&spec)?;
    tpm.ensure_srk()?;
    tpm.liveness_ensure_index(0)?;
    let pcrs: Vec<PcrIndex> = [4u32, 7].iter().map(|p| PcrIndex::new(*p)).collect::<Result<_, _>>()?;
    let values = tpm.pcr_read(PcrBank::Sha256, &pcrs)?;
    let pcr_policy = policy::policy_pcr(&policy::POLICY_START, &values);
    let sealed = tpm.seal(SECRET, &SealPolicy::new(values, LivenessSlot::new(0, 0)?), &[0x5a; 32])?;
    let encrypted = Tpm::open_with(&spec, TpmOptions { encryption: SessionEncryption::Always })?;

    let anchor = AnchorObject::create(&sw.tcti(), &[4, 7], pcr_policy, SECRET)?;
    // Warm up both paths, then interleave the runs in blocks so drift hits all three alike.
    anchor.unseal_times(&sw.tcti(), 20)?;
    ours(&tpm, &sealed, 20)?;
    let (mut a, mut b, mut c) = (Vec::new(), Vec::new(), Vec::new());
    let block = 50;
    let mut done = 0;
    while done < n {
        let k = block.min(n - done);
        a.extend(anchor.unseal_times(&sw.tcti(), k)?);
        b.extend(ours(&tpm, &sealed, k)?);
        c.extend(ours(&encrypted, &sealed, k)?);
        done += k;
    }
    let (am, ap) = stats(a);
    let (bm, bp) = stats(b);
    let (cm, cp) = stats(c);
    let cpu = machine::cpu_model();
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    println!("unseal bench: N={n} per path, swtpm {}, {cores} cores, {cpu}", sw.tcti());
    println!(
        "esapi: OpenSSL global context shared during Tpm operations: {} (the anchor (a) never shares it)",
        bulwark_tpm::shared_contexts_active()
    );
    println!("(a) anchor tss-esapi Load+PolicyPCR+Unseal+Flush      median {:.3} ms  p99 {:.3} ms", ms(am), ms(ap));
    println!("(b) Tpm::unseal default (PCR+NV+OR, lock+connect)      median {:.3} ms  p99 {:.3} ms", ms(bm), ms(bp));
    println!("(c) Tpm::unseal, SessionEncryption::Always            median {:.3} ms  p99 {:.3} ms", ms(cm), ms(cp));
    println!(
        "ratio (b)/(a): median {:.2}x  p99 {:.2}x   (c)/(a): median {:.2}x",
        ms(bm) / ms(am),
        ms(bp) / ms(ap),
        ms(cm) / ms(am)
    );
    Ok(())
}
