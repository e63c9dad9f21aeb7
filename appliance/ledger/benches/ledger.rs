//! Ledger benchmarks: `cargo bench -p bulwark-ledger --bench ledger` (release build).
//!
//! Measures, in one run and on the same disk:
//! - ML-DSA-65 keygen / sign (mean, p50, p99) / verify per operation with libcrux-ml-dsa's AVX2 backend
//!   (what the ledger signs with) and ml-dsa 0.1.2 (what it verifies with), same context string;
//! - attested operations per second through the gate with T client threads: attest (durable, signed
//!   checkpoint) then the outcome, both blocking and queued;
//! - gate latency (attest call to token) p50/p99/max at a paced 1,000 operations/s;
//! - the anchor: a file-backed append-only log with group commit (append + fdatasync per batch, no
//!   signatures, no Merkle tree) at the same client concurrency;
//! - offline verification rate of the exported bundle (entries/s, single thread).
//!
//! Environment: `BENCH_SECS` (default 3) per throughput point; `BENCH_DIR` for the scratch directory
//! (default: a temporary directory, on the same filesystem as /tmp).

use std::fs::OpenOptions;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, sync_channel};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use bulwark_ledger::audit::{AuditOptions, NoProgress, verify_bundle};
use bulwark_ledger::{
    Actor, ApplianceId, Commitment, Digest, Gate, LedgerPublicKey, LedgerSigner, OarDraft, OpKind, Outcome, Role,
    RuntimeState, SignerSeed, Target, TenantId, export_bundle,
};
use ml_dsa::{MlDsa65, SigningKey, signature::Keypair as _};

fn runtime() -> RuntimeState {
    RuntimeState::new(23, 0x000B, vec![0x42; 32]).expect("pcr")
}

fn draft(i: u64) -> OarDraft {
    let (k, _) = Commitment::salted("vault/key", &i.to_le_bytes()).expect("salt");
    let (p, _) = Commitment::salted("vault/value", b"value").expect("salt");
    OarDraft::new(
        Actor { role: Role::TenantUser, subject: Digest::None },
        OpKind::VaultPut,
        Target::Object(Digest::Salted(k)),
        Digest::Salted(p),
    )
}

fn per_op<F: FnMut()>(n: u32, mut f: F) -> f64 {
    for _ in 0..n.min(5) {
        f();
    }
    let t = Instant::now();
    for _ in 0..n {
        f();
    }
    t.elapsed().as_secs_f64() * 1e6 / f64::from(n)
}

/// Per-call times (µs), sorted: ML-DSA signing runs a rejection loop, so its tail matters as much as
/// its mean.
fn per_call<F: FnMut()>(n: u32, mut f: F) -> Vec<f64> {
    for _ in 0..n.min(5) {
        f();
    }
    let mut v: Vec<f64> = (0..n)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64() * 1e6
        })
        .collect();
    v.sort_by(f64::total_cmp);
    v
}

fn bench_mldsa() {
    let seed = [7u8; 32];
    let ctx = format!("bulwark/oar/v1/{}", "ab".repeat(16));
    let msg = format!("bulwark.ledger/tenant/{}\n123456\n{}\n", "ab".repeat(16), "A".repeat(43) + "=");
    let sk = SigningKey::<MlDsa65>::from_seed(&seed.into());
    let vk = sk.verifying_key();
    let keygen = per_op(200, || {
        std::hint::black_box(SigningKey::<MlDsa65>::from_seed(&seed.into()));
    });
    let mut sig = None;
    let sign = per_op(1000, || {
        sig = Some(
            sk.expanded_key().sign_randomized(msg.as_bytes(), ctx.as_bytes(), &mut getrandom::SysRng).expect("sign"),
        );
    });
    let sig = sig.expect("signed");
    let verify = per_op(2000, || {
        assert!(vk.verify_with_context(msg.as_bytes(), ctx.as_bytes(), &sig));
    });
    let tail = per_call(1000, || {
        std::hint::black_box(
            sk.expanded_key().sign_randomized(msg.as_bytes(), ctx.as_bytes(), &mut getrandom::SysRng).expect("sign"),
        );
    });
    println!(
        "| ml-dsa 0.1.2 (RustCrypto; verifies) | {keygen:.0} | {sign:.0} | {:.0} / {:.0} | {verify:.0} |",
        quantile(&tail, 0.5),
        quantile(&tail, 0.99)
    );

    let kp = libcrux_ml_dsa::ml_dsa_65::generate_key_pair(seed);
    assert_eq!(kp.verification_key.as_ref().as_slice(), vk.encode().as_slice(), "same FIPS 204 keygen");
    let lkeygen = per_op(200, || {
        std::hint::black_box(libcrux_ml_dsa::ml_dsa_65::generate_key_pair(seed));
    });
    let mut lsig = None;
    let mut ctr = 0u8;
    let lsign = per_op(1000, || {
        ctr = ctr.wrapping_add(1);
        lsig = Some(
            libcrux_ml_dsa::ml_dsa_65::sign(&kp.signing_key, msg.as_bytes(), ctx.as_bytes(), [ctr; 32]).expect("sign"),
        );
    });
    let lsig = lsig.expect("signed");
    let lverify = per_op(2000, || {
        libcrux_ml_dsa::ml_dsa_65::verify(&kp.verification_key, msg.as_bytes(), ctx.as_bytes(), &lsig).expect("verify");
    });
    let ltail = per_call(1000, || {
        ctr = ctr.wrapping_add(1);
        std::hint::black_box(
            libcrux_ml_dsa::ml_dsa_65::sign(&kp.signing_key, msg.as_bytes(), ctx.as_bytes(), [ctr; 32]).expect("sign"),
        );
    });
    // Interoperable: each verifies the other's signature.
    let cross = ml_dsa::Signature::<MlDsa65>::try_from(lsig.as_ref().as_slice()).expect("decode");
    assert!(vk.verify_with_context(msg.as_bytes(), ctx.as_bytes(), &cross));
    println!(
        "| libcrux-ml-dsa 0.0.11 (AVX2{}; signs) | {lkeygen:.0} | {lsign:.0} | {:.0} / {:.0} | {lverify:.0} |",
        if std::is_x86_feature_detected!("avx2") { ", detected" } else { " NOT detected: portable" },
        quantile(&ltail, 0.5),
        quantile(&ltail, 0.99)
    );
}

struct World {
    tenant_dir: PathBuf,
    appliance_dir: PathBuf,
    tenant_key: LedgerPublicKey,
    appliance_key: LedgerPublicKey,
    tenant: TenantId,
    gate: Arc<Gate>,
}

fn world(root: &Path) -> World {
    let tenant = TenantId::random().expect("id");
    let tsigner = LedgerSigner::tenant(tenant, &SignerSeed::generate().expect("seed")).expect("key");
    let asigner = LedgerSigner::appliance(ApplianceId::random().expect("id"), &SignerSeed::generate().expect("seed"))
        .expect("key");
    let (tenant_key, appliance_key) = (tsigner.public_key().clone(), asigner.public_key().clone());
    let appliance_dir = root.join("appliance");
    let agate = Gate::create(&appliance_dir, asigner, runtime()).expect("appliance gate");
    let att = agate
        .attest(OarDraft::tenant_created(Actor { role: Role::Operator, subject: Digest::None }, tenant, &tenant_key))
        .expect("attest");
    agate.complete(att, Outcome::success(Digest::None)).expect("complete");
    agate.close().expect("close");
    let tenant_dir = root.join("tenant");
    let gate = Arc::new(Gate::create(&tenant_dir, tsigner, runtime()).expect("tenant gate"));
    World { tenant_dir, appliance_dir, tenant_key, appliance_key, tenant, gate }
}

/// Closed-loop throughput: `threads` clients each run attest → (operation) → outcome as fast as they can.
fn gate_throughput(gate: &Arc<Gate>, threads: usize, secs: f64, wait_outcome: bool) -> f64 {
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let (gate, stop, count) = (Arc::clone(gate), Arc::clone(&stop), Arc::clone(&count));
            std::thread::spawn(move || {
                let mut i = (t as u64) << 40;
                while !stop.load(Ordering::Relaxed) {
                    let att = gate.attest(draft(i)).expect("attest");
                    // The operation would run here, holding `att`.
                    if wait_outcome {
                        gate.complete(att, Outcome::success(Digest::None)).expect("complete");
                    } else {
                        gate.complete_later(att, Outcome::success(Digest::None)).expect("complete");
                    }
                    count.fetch_add(1, Ordering::Relaxed);
                    i += 1;
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs_f64(secs));
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        h.join().expect("client");
    }
    count.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}

/// Open-loop latency at a fixed arrival rate: operation k is due at start + k/rate. Returns, sorted, the
/// gate latency (attest call to token) and the response time from the due time (which also counts the
/// client thread's own wake-up delay).
fn gate_latency(gate: &Arc<Gate>, rate: f64, secs: f64, wait_outcome: bool) -> (Vec<f64>, Vec<f64>) {
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // a small positive count
    let total = (rate * secs).round() as u64;
    let start = Instant::now() + Duration::from_millis(20);
    let next = Arc::new(AtomicU64::new(0));
    let lat = Arc::new(Mutex::new(Vec::with_capacity(usize::try_from(total).unwrap_or(0))));
    let handles: Vec<_> = (0..48)
        .map(|_| {
            let (gate, next, lat) = (Arc::clone(gate), Arc::clone(&next), Arc::clone(&lat));
            std::thread::spawn(move || {
                loop {
                    let k = next.fetch_add(1, Ordering::Relaxed);
                    if k >= total {
                        break;
                    }
                    let due = start + Duration::from_secs_f64(k as f64 / rate);
                    let now = Instant::now();
                    if due > now {
                        std::thread::sleep(due - now);
                    }
                    let called = Instant::now();
                    let att = gate.attest(draft(k)).expect("attest");
                    let gate_ms = called.elapsed().as_secs_f64() * 1e3;
                    let due_ms = due.elapsed().as_secs_f64() * 1e3;
                    if wait_outcome {
                        gate.complete(att, Outcome::success(Digest::None)).expect("complete");
                    } else {
                        gate.complete_later(att, Outcome::success(Digest::None)).expect("complete");
                    }
                    lat.lock().expect("lat").push((gate_ms, due_ms));
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("client");
    }
    let v = lat.lock().expect("lat").clone();
    let mut g: Vec<f64> = v.iter().map(|x| x.0).collect();
    let mut d: Vec<f64> = v.iter().map(|x| x.1).collect();
    g.sort_by(f64::total_cmp);
    d.sort_by(f64::total_cmp);
    (g, d)
}

/// CPU seconds (user + system) this process has used, from /proc/self/stat.
fn cpu_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|u| u.parse::<f64>().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|s| s.parse::<f64>().ok()).unwrap_or(0.0);
    ticks / 100.0
}

fn quantile(v: &[f64], p: f64) -> f64 {
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // an index within 0..len
    let i = ((v.len() as f64 * p) as usize).min(v.len() - 1);
    v[i]
}

/// The anchor: an append-only file log with group commit (one write + fdatasync per batch), no
/// signatures, no Merkle tree; clients block until their record is durable.
fn anchor_log(dir: &Path, threads: usize, secs: f64) -> (f64, f64) {
    struct Q {
        items: Vec<(Vec<u8>, SyncSender<()>)>,
        closed: bool,
    }
    let q = Arc::new((Mutex::new(Q { items: vec![], closed: false }), Condvar::new()));
    let path = dir.join("anchor.log");
    let qc = Arc::clone(&q);
    let batches = Arc::new(AtomicU64::new(0));
    let bc = Arc::clone(&batches);
    let writer = std::thread::spawn(move || {
        let mut f = OpenOptions::new().create(true).append(true).open(&path).expect("log");
        loop {
            let batch = {
                let (m, cv) = &*qc;
                let mut g = m.lock().expect("q");
                while g.items.is_empty() && !g.closed {
                    g = cv.wait(g).expect("q");
                }
                if g.items.is_empty() {
                    break;
                }
                std::mem::take(&mut g.items)
            };
            let mut buf = Vec::with_capacity(batch.len() * 300);
            for (rec, _) in &batch {
                buf.extend_from_slice(&u16::try_from(rec.len()).expect("len").to_be_bytes());
                buf.extend_from_slice(rec);
            }
            f.write_all(&buf).expect("write");
            f.sync_data().expect("fdatasync");
            bc.fetch_add(1, Ordering::Relaxed);
            for (_, ack) in batch {
                let _ = ack.send(());
            }
        }
    });
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let clients: Vec<_> = (0..threads)
        .map(|_| {
            let (q, stop, count) = (Arc::clone(&q), Arc::clone(&stop), Arc::clone(&count));
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let (tx, rx) = sync_channel(1);
                    {
                        let (m, cv) = &*q;
                        m.lock().expect("q").items.push((vec![0x5a; 280], tx));
                        cv.notify_one();
                    }
                    rx.recv().expect("ack");
                    count.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs_f64(secs));
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().expect("client");
    }
    {
        let (m, cv) = &*q;
        m.lock().expect("q").closed = true;
        cv.notify_all();
    }
    writer.join().expect("writer");
    let el = start.elapsed().as_secs_f64();
    (count.load(Ordering::Relaxed) as f64 / el, batches.load(Ordering::Relaxed) as f64 / el)
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{cpu}, {cores} cores, Linux {}", kernel.trim())
}

fn main() {
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return; // `cargo test --benches` probes bench binaries; nothing to list.
    }
    let secs: f64 = std::env::var("BENCH_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(3.0);
    let scratch = tempfile::Builder::new()
        .prefix("bulwark-bench")
        .tempdir_in(std::env::var("BENCH_DIR").unwrap_or_else(|_| std::env::temp_dir().to_string_lossy().into_owned()))
        .expect("scratch dir");
    let when = std::process::Command::new("date")
        .arg("-u")
        .arg("+%Y-%m-%d %H:%M UTC")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    println!("# bulwark-ledger bench, {when}, {}", machine());
    println!("scratch dir: {} ({} s per throughput point)\n", scratch.path().display(), secs);

    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    let run = |part: &str| only.is_empty() || only.split(',').any(|p| p == part);
    if run("mldsa") {
        println!(
            "## ML-DSA-65 per operation (µs)\n\n| implementation | keygen | sign (mean) | sign p50 / p99 | verify |\n|---|---|---|---|---|"
        );
        bench_mldsa();
    }

    let w = world(scratch.path());
    if run("throughput") {
        println!("\n## Attested operations/s (each OAR durable under a signed checkpoint before it runs)\n");
        println!(
            "| client threads | attest + complete (both waited) | attest + complete_later | anchor log (fsync batches, no PQ) | anchor batches/s |\n|---|---|---|---|---|"
        );
        for threads in [2usize, 16, 64, 256] {
            let both = gate_throughput(&w.gate, threads, secs, true);
            let queued = gate_throughput(&w.gate, threads, secs, false);
            let (anchor, batches) = anchor_log(scratch.path(), threads, secs);
            println!("| {threads} | {both:.0} | {queued:.0} | {anchor:.0} | {batches:.0} |");
        }
        // One client, one request per batch: the cost of a single group commit.
        let mut single: Vec<f64> = (0..300u64)
            .map(|i| {
                let t = Instant::now();
                let att = w.gate.attest(draft(i)).expect("attest");
                let l = t.elapsed().as_secs_f64() * 1e3;
                w.gate.complete_later(att, Outcome::success(Digest::None)).expect("complete");
                l
            })
            .collect();
        single.sort_by(f64::total_cmp);
        println!(
            "\nsingle client, sequential attest (≈ one group commit: fsync rounds + ML-DSA sign): p50 {:.2} ms, p99 {:.2} ms",
            single[single.len() / 2],
            single[single.len() * 99 / 100]
        );
    }
    if run("latency") {
        println!("\n## Gate latency at a paced 1,000 operations/s (ms)\n");
        println!(
            "| outcome | gate p50 | gate p99 | gate max | from due time p50 | p99 | our CPU (cores) |\n|---|---|---|---|---|---|---|"
        );
        for (name, wait) in [("complete (waited)", true), ("complete_later", false)] {
            let (c0, t0) = (cpu_secs(), Instant::now());
            let (g, d) = gate_latency(&w.gate, 1000.0, secs.max(5.0), wait);
            let cores = (cpu_secs() - c0) / t0.elapsed().as_secs_f64();
            println!(
                "| {name} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {cores:.2} |",
                quantile(&g, 0.5),
                quantile(&g, 0.99),
                g[g.len() - 1],
                quantile(&d, 0.5),
                quantile(&d, 0.99)
            );
        }
        let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
        println!(
            "\nload average during the run (all processes on the machine): {}",
            load.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
        );
    }
    if !run("verify") {
        return;
    }
    let head = w.gate.head();
    let gate = Arc::try_unwrap(w.gate).expect("no other owners");
    gate.close().expect("close");
    let bundle = scratch.path().join("bundle");
    let t = Instant::now();
    export_bundle(&w.tenant_dir, &w.appliance_dir, &w.tenant_key, &w.appliance_key, &bundle).expect("export");
    let export_s = t.elapsed().as_secs_f64();
    let opts = AuditOptions {
        tenant_key: w.tenant_key.clone(),
        appliance_key: Some(w.appliance_key.clone()),
        tenant: Some(w.tenant),
        allow_pending: false,
        known: vec![],
    };
    let t = Instant::now();
    let report = verify_bundle(&bundle, &opts, &NoProgress).expect("bundle verifies");
    let verify_s = t.elapsed().as_secs_f64();
    println!("\n## Offline verification (bulwark_ledger::audit, one thread)\n");
    println!(
        "| entries | checkpoints | export (s) | verify (s) | entries/s |\n|---|---|---|---|---|\n| {} | {} | {export_s:.2} | {verify_s:.2} | {:.0} |",
        report.tenant.head.size,
        report.tenant.checkpoints,
        report.tenant.head.size as f64 / verify_s
    );
    assert!(report.tenant.head.size >= head.size, "the bundle holds at least what was acknowledged");
    println!(
        "\nentries per checkpoint (mean group-commit batch): {:.1}",
        head.size as f64 / report.tenant.checkpoints as f64
    );
}
