//! Helpers shared by the appliance bench binaries: order statistics, a description of the machine
//! the numbers came from, the plain tss-esapi unseal used as the TPM anchor, and a real ledger gate that
//! mints the attestation tokens `Vault` operations require.
//!
//! Each bench binary uses a subset of these, hence the `dead_code` allowance.
#![allow(dead_code)]

use std::time::{Duration, Instant};

use bulwark_appliance::ids::TenantId;
use bulwark_appliance::vault::Vault;
use bulwark_ledger::oar::{Actor, Digest as OarDigest, OarDraft, OpKind, Outcome, Role, RuntimeState, Target};
use bulwark_ledger::{Attested, Gate, LedgerSigner, SignerSeed};
/// Any failure in a bench: it aborts the run with the message.
pub type BoxErr = Box<dyn std::error::Error>;

#[path = "../../../../tpm/benches/esapi_anchor/mod.rs"]
mod esapi_anchor;
#[allow(unused_imports)] // not every bench binary measures the anchor
pub use esapi_anchor::{AnchorConnection, AnchorObject, connect_times};

/// Median, p99, mean, min and max of a set of samples.
#[derive(Debug, Clone, Copy)]
pub struct Stats {
    /// Number of samples.
    pub n: usize,
    /// 50th percentile (upper median).
    pub median: Duration,
    /// 99th percentile (nearest rank).
    pub p99: Duration,
    /// Arithmetic mean.
    pub mean: Duration,
    /// Smallest sample.
    pub min: Duration,
    /// Largest sample.
    pub max: Duration,
}

/// Order statistics of `samples` (which must not be empty).
pub fn stats(samples: &[Duration]) -> Result<Stats, BoxErr> {
    if samples.is_empty() {
        return Err("no samples".into());
    }
    let mut v = samples.to_vec();
    v.sort();
    let n = v.len();
    // Nearest-rank p99: the smallest sample with at least 99 % of samples at or below it.
    let rank = (n * 99).div_ceil(100).max(1);
    let total: Duration = v.iter().sum();
    let mean = total / u32::try_from(n)?;
    Ok(Stats { n, median: v[n / 2], p99: v[rank - 1], mean, min: v[0], max: v[n - 1] })
}

/// Milliseconds as a float, for printing.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Microseconds as a float, for printing.
pub fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// One line per fact about the machine and toolchain the numbers came from.
pub fn machine_report() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map(str::trim)
        .unwrap_or("?")
        .to_string();
    let flags: Vec<&str> = cpuinfo
        .lines()
        .find(|l| l.starts_with("flags"))
        .map(|l| {
            l.split_whitespace()
                .filter(|f| matches!(*f, "aes" | "pclmulqdq" | "avx2" | "avx512f" | "vaes" | "vpclmulqdq"))
                .collect()
        })
        .unwrap_or_default();
    // Family and model tell CPU generations apart where the model name does not ("AMD EPYC" on each).
    let field = |name: &str| {
        cpuinfo
            .lines()
            .find(|l| l.split(':').next().map(str::trim) == Some(name))
            .and_then(|l| l.split(':').nth(1))
            .map_or("?", str::trim)
            .to_string()
    };
    let generation = format!("family {} model {}, {} MHz", field("cpu family"), field("model"), field("cpu MHz"));
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal"))
                .map(|l| l.split_whitespace().nth(1).unwrap_or("?").to_string())
        })
        .unwrap_or_else(|| "?".into());
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let rustc = std::process::Command::new("rustc")
        .arg("--version")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "?".into());
    let profile = if cfg!(debug_assertions) { "debug (numbers not meaningful)" } else { "release" };
    format!(
        "machine: {cores} cores, {model} ({generation}), MemTotal {mem} kB, cpu flags [{}], load average {}\ntoolchain: {rustc}, \
         {profile} profile\nesapi: OpenSSL global context shared during Tpm operations: {} (false where libcrypto is not loaded)",
        flags.join(" "),
        load_average(),
        bulwark_tpm::shared_contexts_active()
    )
}

/// Time this thread has spent on a CPU (first field of `/proc/thread-self/schedstat`, nanoseconds).
/// On a shared machine, throughput per CPU-second is what one core delivers; wall-clock throughput
/// also counts time spent waiting for a core.
pub fn thread_cpu_time() -> Result<Duration, BoxErr> {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat")?;
    let ns: u64 = text.split_whitespace().next().ok_or("empty schedstat")?.parse()?;
    Ok(Duration::from_nanos(ns))
}

/// The 1, 5 and 15 minute load averages, as `/proc/loadavg` gives them.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "?".into())
}

/// Median and p99 of 50 `fdatasync`s after a 4 KiB overwrite of a file in `dir`: the disk's durable-write
/// latency at the time of the run (redb's `Durability::Immediate` commits and its open/close pay it).
pub fn fsync_probe(dir: &std::path::Path) -> Result<String, BoxErr> {
    use std::io::{Seek, Write};
    let path = dir.join("fsync-probe");
    let mut f = std::fs::File::create(&path)?;
    let block = [0x5au8; 4096];
    let mut times = Vec::with_capacity(50);
    for _ in 0..50 {
        f.seek(std::io::SeekFrom::Start(0))?;
        f.write_all(&block)?;
        let t = Instant::now();
        f.sync_data()?;
        times.push(t.elapsed());
    }
    drop(f);
    std::fs::remove_file(&path)?;
    let s = stats(&times)?;
    Ok(format!("disk: 4 KiB write + fdatasync median {:.3} ms, p99 {:.3} ms (50 samples)", ms(s.median), ms(s.p99)))
}

/// A real ledger gate for one tenant in a temporary directory, for benches that call [`Vault`] directly:
/// every record operation needs an [`Attested`] token. The ledger is real (fresh ML-DSA-65 key, durable
/// appends, signed checkpoints); the runtime state it records is a fixed placeholder (PCR 15, SHA-256,
/// all zero) because no measurement stage ran.
pub struct BenchGate {
    gate: Gate,
    // Dropped after the gate, which writes into it until it closes.
    _dir: tempfile::TempDir,
}

impl BenchGate {
    /// A new ledger for `tenant` and its gate.
    pub fn new(tenant: TenantId) -> Result<Self, BoxErr> {
        let dir = tempfile::tempdir()?;
        let signer = LedgerSigner::tenant(tenant, &SignerSeed::generate()?)?;
        let runtime = RuntimeState::new(15, 0x000B, vec![0; 32])?;
        let gate = Gate::create(&dir.path().join("ledger"), signer, runtime)?;
        Ok(BenchGate { gate, _dir: dir })
    }

    /// A token for `op` on record `key` of `vault`.
    pub fn for_key(&self, vault: &Vault, op: OpKind, key: &str) -> Result<Attested, BoxErr> {
        let actor = Actor { role: Role::TenantUser, subject: OarDigest::None };
        Ok(self.gate.attest(OarDraft::new(actor, op, vault.key_target(key)?, OarDigest::None))?)
    }

    /// A token for a whole-vault operation (`VaultList`, which also covers `verify`).
    pub fn for_vault(&self, op: OpKind) -> Result<Attested, BoxErr> {
        let actor = Actor { role: Role::TenantUser, subject: OarDigest::None };
        Ok(self.gate.attest(OarDraft::new(actor, op, Target::None, OarDigest::None))?)
    }

    /// Queues the succeeded outcome of `token`'s operation without waiting for it to be durable.
    pub fn done(&self, token: Attested) -> Result<(), BoxErr> {
        Ok(self.gate.complete_later(token, Outcome::success(OarDigest::None))?)
    }
}
