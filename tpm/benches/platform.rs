//! What closing the platform hierarchy costs a command on the appliance's managed swtpm, beside the
//! cheapest TPM operation on the same connection kind. Each round is a power cycle: a swtpm is started on
//! one state dir (its platform hierarchy open, as after TPM2_Startup(CLEAR)), opened, and then, timed one
//! by one: (a) `Tpm::clock_info` (connect under the lock, TPM2_ReadClock, disconnect), the anchor;
//! (b) `Tpm::close_platform_hierarchy` (connect, TPM2_GetCapability, TPM2_HierarchyControl, disconnect),
//! which `Machine::open` runs once per command on a managed swtpm; (c) `Tpm::platform_hierarchy_enabled`
//! (connect, TPM2_GetCapability, disconnect), which must now say closed. Prints median and p99.
//!
//! Run: `cargo bench -p bulwark-tpm --bench platform` (release profile). `BULWARK_BENCH_N` sets the
//! number of rounds (default 60).

use std::str::FromStr;
use std::time::{Duration, Instant};

use bulwark_tpm::swtpm::Swtpm;
use bulwark_tpm::{PlatformHierarchy, TctiSpec, Tpm};

mod machine;

type BoxErr = Box<dyn std::error::Error>;

fn stats(mut v: Vec<Duration>) -> (f64, f64) {
    v.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    (ms(v[v.len() / 2]), ms(v[((v.len() * 99).div_ceil(100)).saturating_sub(1)]))
}

fn timed<T>(out: &mut Vec<Duration>, f: impl FnOnce() -> T) -> T {
    let t = Instant::now();
    let r = f();
    out.push(t.elapsed());
    r
}

fn main() -> Result<(), BoxErr> {
    if std::env::var_os("TSS2_LOG").is_none() {
        // SAFETY: single-threaded at this point; nothing else reads the environment concurrently.
        unsafe { std::env::set_var("TSS2_LOG", "all+NONE") };
    }
    let n: usize = std::env::var("BULWARK_BENCH_N").ok().and_then(|v| v.parse().ok()).unwrap_or(60).max(1);
    let dir = tempfile::tempdir()?;
    let (mut a, mut b, mut c) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..n {
        let sw = Swtpm::start(dir.path())?;
        let tpm = Tpm::open(&TctiSpec::from_str(&sw.tcti())?)?;
        timed(&mut a, || tpm.clock_info())?;
        if timed(&mut b, || tpm.close_platform_hierarchy())? != PlatformHierarchy::Closed {
            return Err("a freshly started swtpm had its platform hierarchy closed already".into());
        }
        if timed(&mut c, || tpm.platform_hierarchy_enabled())? {
            return Err("the platform hierarchy is still enabled after closing it".into());
        }
        drop(tpm);
        sw.stop();
    }
    let cpu = machine::cpu_model();
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    println!("platform bench: N={n} power cycles of one swtpm, {cores} cores, {cpu}");
    let (am, ap) = stats(a);
    let (bm, bp) = stats(b);
    let (cm, cp) = stats(c);
    println!("(a) anchor Tpm::clock_info (connect, ReadClock)                     median {am:.3} ms  p99 {ap:.3} ms");
    println!("(b) Tpm::close_platform_hierarchy (GetCapability + HierarchyControl) median {bm:.3} ms  p99 {bp:.3} ms");
    println!("(c) Tpm::platform_hierarchy_enabled (GetCapability)                 median {cm:.3} ms  p99 {cp:.3} ms");
    println!("ratio (b)/(a): median {:.2}x; (b) - (a): {:.3} ms", bm / am, bm - am);
    Ok(())
}
