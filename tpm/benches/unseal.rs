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
use tss_esapi::attributes::ObjectAttributesBuilder;
use tss_esapi::constants::SessionType;
use tss_esapi::handles::{KeyHandle, ObjectHandle, PersistentTpmHandle, SessionHandle, TpmHandle};
use tss_esapi::interface_types::algorithm::{HashingAlgorithm, PublicAlgorithm};
use tss_esapi::interface_types::session_handles::{AuthSession, PolicySession};
use tss_esapi::structures::{
    Digest, KeyedHashScheme, PcrSelectionListBuilder, PcrSlot, PublicBuilder, PublicKeyedHashParameters, SensitiveData,
    SymmetricDefinition,
};
use tss_esapi::{Context, TctiNameConf};

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

fn anchor(tcti: &str, n: usize, pcr_policy: [u8; 32]) -> Result<Vec<Duration>, BoxErr> {
    let mut ctx = Context::new(TctiNameConf::from_str(tcti)?)?;
    let srk_obj = ctx.tr_from_tpm_public(TpmHandle::Persistent(PersistentTpmHandle::new(bulwark_tpm::SRK_HANDLE)?))?;
    let srk = KeyHandle::from(srk_obj);
    let public = PublicBuilder::new()
        .with_public_algorithm(PublicAlgorithm::KeyedHash)
        .with_name_hashing_algorithm(HashingAlgorithm::Sha256)
        .with_object_attributes(
            ObjectAttributesBuilder::new().with_fixed_tpm(true).with_fixed_parent(true).with_no_da(true).build()?,
        )
        .with_auth_policy(Digest::try_from(pcr_policy.to_vec())?)
        .with_keyed_hash_parameters(PublicKeyedHashParameters::new(KeyedHashScheme::Null))
        .with_keyed_hash_unique_identifier(Digest::default())
        .build()?;
    let created = ctx.execute_with_nullauth_session(|c| {
        c.create(srk, public, None, Some(SensitiveData::try_from(SECRET.to_vec())?), None, None)
    })?;
    let selection = PcrSelectionListBuilder::new()
        .with_selection(HashingAlgorithm::Sha256, &[PcrSlot::Slot4, PcrSlot::Slot7])
        .build()?;
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        ctx.set_sessions((Some(AuthSession::Password), None, None));
        let key = ctx.load(srk, created.out_private.clone(), created.out_public.clone())?;
        ctx.clear_sessions();
        let sess = ctx
            .start_auth_session(
                None,
                None,
                None,
                SessionType::Policy,
                SymmetricDefinition::Null,
                HashingAlgorithm::Sha256,
            )?
            .ok_or("no session")?;
        ctx.policy_pcr(PolicySession::try_from(sess)?, Digest::default(), selection.clone())?;
        ctx.set_sessions((Some(sess), None, None));
        let data = ctx.unseal(ObjectHandle::from(key))?;
        ctx.clear_sessions();
        ctx.flush_context(ObjectHandle::from(key))?;
        ctx.flush_context(ObjectHandle::from(SessionHandle::from(sess)))?;
        times.push(t.elapsed());
        if data.value() != SECRET {
            return Err("anchor unsealed the wrong bytes".into());
        }
    }
    Ok(times)
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

    // Warm up both paths, then interleave the runs in blocks so drift hits all three alike.
    anchor(&sw.tcti(), 20, pcr_policy)?;
    ours(&tpm, &sealed, 20)?;
    let (mut a, mut b, mut c) = (Vec::new(), Vec::new(), Vec::new());
    let block = 50;
    let mut done = 0;
    while done < n {
        let k = block.min(n - done);
        a.extend(anchor(&sw.tcti(), k, pcr_policy)?);
        b.extend(ours(&tpm, &sealed, k)?);
        c.extend(ours(&encrypted, &sealed, k)?);
        done += k;
    }
    let (am, ap) = stats(a);
    let (bm, bp) = stats(b);
    let (cm, cp) = stats(c);
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    println!("unseal bench: N={n} per path, swtpm {}, {cores} cores, {cpu}", sw.tcti());
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
