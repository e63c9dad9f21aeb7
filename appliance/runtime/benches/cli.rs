//! The command-line path: one `bulwark` process per command, as an operator or a script runs it, beside
//! a plain ESAPI unseal in a fresh process, measured in the same run on the same swtpm.
//!
//! Paths, interleaved in blocks of 10 after one warm-up block of each:
//! - (A) anchor: a fresh process (this bench binary, run again with `BULWARK_CLI_ANCHOR` set) that
//!   connects to the swtpm, runs the unlock bench's plain ESAPI unseal once (TPM2_Load, an unsalted
//!   PolicyPCR session, TPM2_Unseal, flushes) on a 32-byte PCR-only sealed object with the tenant's PCR
//!   selection, checks the bytes and exits.
//! - (G) `bulwark vault get --tenant ID k1` of a 4 KiB record, stdout checked: the runtime measurement
//!   stage (a later run in the boot cycle verifies: it hashes the executable in each runtime bank), the
//!   TPM connection, the tenant's read-only unlock, the OAR attested and its outcome appended to the
//!   tenant's ledger (ML-DSA-65 signatures and fsyncs), the record written to stdout.
//! - (P) `bulwark vault put --tenant ID k2` of a 4 KiB record on stdin (unlock for writing, durable
//!   put).
//! - (L) `bulwark tpm policy-pcr --bank sha256 --pcr 16=<hex>`: no TPM and no data dir, so the floor of
//!   starting the binary.
//! - (M) `bulwark vault get` as in (G), on a second data dir provisioned with `--tpm auto` (where no TPM
//!   device exists): the command starts that data dir's own swtpm on its Unix socket, closes its platform
//!   hierarchy, reaches it through the socat relay and stops it again, so (M) beside (G) is what the
//!   embedded default costs.
//!
//! The binary measured is the one cargo builds beside this bench (`CARGO_BIN_EXE_bulwark`: the release
//! profile, as shipped), or the one `BULWARK_CLI_BIN` names. The bench prints the binary's size, since
//! the measurement stage reads all of it on every command.
//!
//! Run: `cargo bench -p bulwark-appliance --bench cli`. `BULWARK_BENCH_N` sets the samples per path
//! (default 60).

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bulwark_appliance::datadir::DataDir;
use bulwark_boot::alg::HashAlg;
use bulwark_boot::profile::HwProfile;
use bulwark_tpm::policy::{self, PcrIndex};
use bulwark_tpm::swtpm::Swtpm;
use bulwark_tpm::{PcrBank, TctiSpec, Tpm};
use common::{AnchorObject, BoxErr, Stats, ms, stats};
use rand::RngCore;

const BLOCK: usize = 10;
const ANCHOR_ENV: &str = "BULWARK_CLI_ANCHOR";

fn line(label: &str, s: &Stats) {
    println!(
        "{label:<62} median {:>7.2} ms  p99 {:>7.2} ms  mean {:>7.2} ms  min {:>7.2} ms  (n={})",
        ms(s.median),
        ms(s.p99),
        ms(s.mean),
        ms(s.min),
        s.n
    );
}

/// Runs `cmd` to completion, feeding it `stdin`, and returns its wall time and stdout; a non-zero exit
/// aborts the bench with its stderr.
fn timed(cmd: &mut Command, stdin: &[u8]) -> Result<(Duration, Vec<u8>), BoxErr> {
    let t = Instant::now();
    let mut child = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
    child.stdin.take().ok_or("no stdin")?.write_all(stdin)?;
    let out = child.wait_with_output()?;
    let took = t.elapsed();
    if !out.status.success() {
        return Err(format!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    Ok((took, out.stdout))
}

fn main() -> Result<(), BoxErr> {
    // The anchor's own process: one plain unseal, then exit.
    if let Ok(path) = std::env::var(ANCHOR_ENV) {
        let tcti = std::env::var("BULWARK_CLI_TCTI")?;
        AnchorObject::load(Path::new(&path))?.unseal_times(&tcti, 1)?;
        return Ok(());
    }
    let n: usize = std::env::var("BULWARK_BENCH_N").ok().and_then(|v| v.parse().ok()).unwrap_or(60);
    let bin =
        std::env::var_os("BULWARK_CLI_BIN").map_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_bulwark")), PathBuf::from);
    let dir = tempfile::tempdir()?;
    let sw = Swtpm::start(&dir.path().join("swtpm"))?;
    let tcti = sw.tcti();
    let data = dir.path().join("data");
    let bulwark = |args: &[&str]| {
        let mut c = Command::new(&bin);
        c.arg("--data-dir").arg(&data).arg("--tpm").arg(&tcti).args(args).env("TSS2_LOG", "all+NONE");
        c
    };

    // Provision through the CLI, as an operator would.
    timed(&mut bulwark(&["init"]), b"")?;
    let (_, created) = timed(&mut bulwark(&["tenant", "create", "bench", "--json"]), b"")?;
    let created: serde_json::Value = serde_json::from_slice(&created)?;
    let id = created["id"].as_str().ok_or("tenant create printed no id")?.to_string();
    let mut value = vec![0u8; 4096];
    rand::rngs::OsRng.fill_bytes(&mut value);
    timed(&mut bulwark(&["vault", "put", "--tenant", &id, "k1"]), &value)?;

    // The anchor object, sealed to the tenant's PCR selection in its seal bank, saved for the child.
    let profile = HwProfile::from_bytes(&DataDir::new(&data)?.load_profile_bytes()?)?;
    if profile.seal_bank() != HashAlg::Sha256 {
        return Err("the anchor assumes a sha256 seal bank".into());
    }
    let pcr_nums: Vec<u32> = profile.bound_pcrs().iter().map(|p| p.get()).collect();
    let pcrs = pcr_nums.iter().map(|p| PcrIndex::new(*p)).collect::<Result<Vec<_>, _>>()?;
    let values = {
        let tpm = Tpm::open(&TctiSpec::Swtpm { host: "127.0.0.1".into(), port: sw.port() })?;
        tpm.pcr_read(PcrBank::Sha256, &pcrs)?
    };
    let mut secret = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut secret);
    let anchor = AnchorObject::create(&tcti, &pcr_nums, policy::policy_pcr(&policy::POLICY_START, &values), &secret)?;
    let anchor_file = dir.path().join("anchor.bin");
    anchor.save(&anchor_file, &pcr_nums)?;
    let me = std::env::current_exe()?;
    let anchor_cmd = || {
        let mut c = Command::new(&me);
        c.env(ANCHOR_ENV, &anchor_file).env("BULWARK_CLI_TCTI", &tcti).env("TSS2_LOG", "all+NONE");
        c
    };
    // The embedded default, provisioned the same way, where `--tpm auto` manages a swtpm.
    let managed_data = dir.path().join("managed");
    let managed_run = |args: &[&str]| {
        let mut c = Command::new(&bin);
        c.arg("--data-dir").arg(&managed_data).args(["--tpm", "auto"]).args(args).env("TSS2_LOG", "all+NONE");
        c
    };
    let managed_id = if Path::new("/dev/tpmrm0").exists() {
        None
    } else {
        timed(&mut managed_run(&["init"]), b"")?;
        let (_, created) = timed(&mut managed_run(&["tenant", "create", "bench", "--json"]), b"")?;
        let created: serde_json::Value = serde_json::from_slice(&created)?;
        let id = created["id"].as_str().ok_or("tenant create printed no id")?.to_string();
        timed(&mut managed_run(&["vault", "put", "--tenant", &id, "k1"]), &value)?;
        Some(id)
    };
    let zeros = "00".repeat(32);
    let pcr_arg = format!("16={zeros}");

    let (mut a, mut g, mut p, mut l, mut m) = (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut done = 0usize;
    let mut first = true;
    while done < n {
        let k = if first { BLOCK } else { BLOCK.min(n - done) };
        let (mut ab, mut gb, mut pb, mut lb, mut mb) = (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for _ in 0..k {
            ab.push(timed(&mut anchor_cmd(), b"")?.0);
        }
        for _ in 0..k {
            let (took, out) = timed(&mut bulwark(&["vault", "get", "--tenant", &id, "k1"]), b"")?;
            if out != value {
                return Err("vault get printed the wrong bytes".into());
            }
            gb.push(took);
        }
        for _ in 0..k {
            pb.push(timed(&mut bulwark(&["vault", "put", "--tenant", &id, "k2"]), &value)?.0);
        }
        for _ in 0..k {
            let mut c = Command::new(&bin);
            c.args(["tpm", "policy-pcr", "--bank", "sha256", "--pcr", &pcr_arg]);
            lb.push(timed(&mut c, b"")?.0);
        }
        for id in managed_id.iter().flat_map(|id| std::iter::repeat_n(id, k)) {
            let (took, out) = timed(&mut managed_run(&["vault", "get", "--tenant", id, "k1"]), b"")?;
            if out != value {
                return Err("vault get (--tpm auto) printed the wrong bytes".into());
            }
            mb.push(took);
        }
        if first {
            first = false;
            continue;
        }
        a.extend(ab);
        g.extend(gb);
        p.extend(pb);
        l.extend(lb);
        m.extend(mb);
        done += k;
    }
    let (sa, sg, sp, sl) = (stats(&a)?, stats(&g)?, stats(&p)?, stats(&l)?);
    println!("cli bench: swtpm {tcti}, N={n} per path, blocks of {BLOCK} interleaved after one warm-up block");
    println!("{}", common::machine_report());
    println!("{}", common::fsync_probe(dir.path())?);
    println!("binary: {} ({} bytes)", bin.display(), std::fs::metadata(&bin)?.len());
    line("(A) anchor: fresh process, ESAPI connect+Load+PolicyPCR+Unseal", &sa);
    line("(G) bulwark vault get (4 KiB to stdout)", &sg);
    line("(P) bulwark vault put (4 KiB from stdin)", &sp);
    line("(L) bulwark tpm policy-pcr (no TPM: process floor)", &sl);
    if m.is_empty() {
        println!("(M) skipped: /dev/tpmrm0 exists, so --tpm auto would use it");
    } else {
        let sm = stats(&m)?;
        line("(M) bulwark vault get, --tpm auto (its own swtpm)", &sm);
        println!(
            "ratio M/G: median {:.2}x (the embedded default's own swtpm start, relay and platform close)",
            sm.median.as_secs_f64() / sg.median.as_secs_f64()
        );
    }
    let r = |x: Duration, y: Duration| x.as_secs_f64() / y.as_secs_f64();
    println!(
        "ratio G/A: median {:.2}x  p99 {:.2}x;  P/A: median {:.2}x  p99 {:.2}x  (no target: a command is an unlock plus \
         an attested operation)",
        r(sg.median, sa.median),
        r(sg.p99, sa.p99),
        r(sp.median, sa.median),
        r(sp.p99, sa.p99)
    );
    println!("load average at end: {}", common::load_average());
    sw.stop();
    Ok(())
}
