//! Benchmarks of bulwark-kernels (timings live here, never in tests).
//!
//! ```text
//! bulwark-kernels-bench cpu [--batch 32] [--len 128] [--reps 3] [--out FILE]
//! bulwark-kernels-bench gpu [--out FILE] [--quick]
//! bulwark-kernels-bench embed-dir MODEL_DIR SENTENCES OUT_JSON [--backend cpu|cuda]
//!                                 [--format bf16|f16] [--pooling mean|cls]
//! ```
//!
//! `cpu`: sentences/s of the CPU backend on the all-MiniLM-L6-v2 shape with random weights.
//! `gpu`: MiniLM B256 L128 throughput (bf16, f16), B1 L16 query end to end with top-k over
//! 100k stored vectors, scrub vs memset bandwidth, GEMM TFLOP/s on the encoder's shapes, and the
//! CPU number on that machine. `embed-dir`: embeds one sentence per line of SENTENCES with a
//! real model folder (model.safetensors, config.json, tokenizer.json) for the accuracy check
//! against PyTorch (kernels/bench/accuracy.py).

use std::time::Instant;

use bulwark_kernels::model::TokenBatch;
use bulwark_kernels::testing::{Rng, TinyModel, minilm_shape, tiny_sentences};
use bulwark_kernels::{
    BackendChoice, BrainOptions, CudaDevice, DeviceOptions, DocId, EmbeddingBrain, HalfFormat, KernelCache, ModelFiles,
    Pooling, Variant,
};
use serde_json::{Value, json};
use zeroize::Zeroizing;

type Res<T> = Result<T, Box<dyn std::error::Error>>;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let r = match args.first().map(String::as_str) {
        Some("cpu") => cpu(&args[1..]),
        Some("gpu") => gpu(&args[1..]),
        Some("embed-dir") => embed_dir(&args[1..]),
        _ => {
            eprintln!("usage: bulwark-kernels-bench cpu|gpu|embed-dir ... (see the file's docs)");
            std::process::exit(2);
        }
    };
    if let Err(e) = r {
        let mut msg = e.to_string();
        let mut src = e.source();
        while let Some(s) = src {
            msg.push_str(&format!(": {s}"));
            src = s.source();
        }
        eprintln!("error: {msg}");
        std::process::exit(1);
    }
}

fn flag(args: &[String], name: &str) -> Option<String> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1).cloned())
}
fn flag_usize(args: &[String], name: &str, default: usize) -> Res<usize> {
    Ok(match flag(args, name) {
        Some(v) => v.parse()?,
        None => default,
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// `b` random sequences of exactly `len` tokens: [CLS] random... [SEP].
fn random_batch(rng: &mut Rng, b: usize, len: usize, vocab: usize) -> Res<TokenBatch> {
    let seqs: Vec<(Vec<u32>, Vec<u32>)> = (0..b)
        .map(|_| {
            let mut ids = vec![101u32];
            ids.extend((0..len.saturating_sub(2)).map(|_| 1000 + u32::try_from(rng.below(vocab - 1000)).unwrap_or(0)));
            ids.push(102);
            (ids.clone(), vec![0; ids.len()])
        })
        .collect();
    Ok(TokenBatch::from_sequences(&seqs)?)
}

fn minilm_brain(seed: u64, opts: &BrainOptions) -> Res<EmbeddingBrain> {
    let shape = minilm_shape();
    let m = TinyModel::generate_with(&shape, seed, safetensors::Dtype::BF16);
    let files = ModelFiles {
        weights: Zeroizing::new(m.safetensors),
        config_json: m.config.as_bytes(),
        tokenizer_json: m.tokenizer.as_bytes(),
    };
    Ok(EmbeddingBrain::load(files, opts)?)
}

fn write_out(args: &[String], v: &Value) -> Res<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    if let Some(path) = flag(args, "--out") {
        std::fs::write(path, serde_json::to_string_pretty(v)?)?;
    }
    Ok(())
}

fn cpu_throughput(batch: usize, len: usize, reps: usize) -> Res<Value> {
    let opts =
        BrainOptions { backend: BackendChoice::Cpu, max_batch_tokens: (batch * len).max(512), ..Default::default() };
    let mut brain = minilm_brain(1, &opts)?;
    let mut rng = Rng::new(2);
    let b = random_batch(&mut rng, batch, len, 30522)?;
    brain.embed_tokens(&b)?; // warm-up
    let mut times = Vec::new();
    for _ in 0..reps {
        let t0 = Instant::now();
        brain.embed_tokens(&b)?;
        times.push(t0.elapsed().as_secs_f64());
    }
    let t = median(times);
    let threads = rayon::current_num_threads();
    brain.unload()?;
    Ok(json!({"shape": "MiniLM-L6 (random weights)", "batch": batch, "len": len, "threads": threads,
              "ms_per_batch": t * 1e3, "sent_per_s": batch as f64 / t}))
}

fn cpu(args: &[String]) -> Res<()> {
    let batch = flag_usize(args, "--batch", 32)?;
    let len = flag_usize(args, "--len", 128)?;
    let reps = flag_usize(args, "--reps", 3)?;
    let v = cpu_throughput(batch, len, reps)?;
    write_out(args, &json!({"cpu": v, "machine": machine()}))
}

fn machine() -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("model name")).map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_default();
    json!({"cpu": cpu, "threads": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)})
}

fn gpu(args: &[String]) -> Res<()> {
    let quick = args.iter().any(|a| a == "--quick");
    let cache = std::sync::Arc::new(KernelCache::in_memory());
    let mut out = serde_json::Map::new();
    let dev = CudaDevice::open(0, &cache, &DeviceOptions::default())?;
    out.insert("device".into(), json!({"name": dev.info().name, "compute": dev.info().compute, "sms": dev.info().sms, "target": dev.info().target.to_string()}));
    let mut rng = Rng::new(9);

    // 1. MiniLM-L6 throughput, B256 L128 (and B32 L128, B1 L16), bf16 and f16.
    for fmt in [HalfFormat::Bf16, HalfFormat::F16] {
        let opts = BrainOptions {
            backend: BackendChoice::Cuda { ordinal: 0 },
            format: fmt,
            max_batch_tokens: 32768,
            kernel_cache: Some(cache.clone()),
            ..Default::default()
        };
        let mut brain = minilm_brain(3, &opts)?;
        for (b, l) in [(256usize, 128usize), (32, 128), (1, 16)] {
            let batch = random_batch(&mut rng, b, l, 30522)?;
            for _ in 0..3 {
                brain.embed_tokens(&batch)?;
            }
            let reps = if quick {
                5
            } else if b == 1 {
                200
            } else {
                20
            };
            let mut t = Vec::new();
            for _ in 0..reps {
                let t0 = Instant::now();
                brain.embed_tokens(&batch)?;
                t.push(t0.elapsed().as_secs_f64());
            }
            let m = median(t);
            let key = format!("minilm_{}_B{b}_L{l}", format!("{fmt:?}").to_lowercase());
            println!("{key}: {:.3} ms, {:.0} sentences/s", m * 1e3, b as f64 / m);
            out.insert(format!("{key}_ms"), json!(m * 1e3));
            out.insert(format!("{key}_sent_per_s"), json!(b as f64 / m));
        }
        brain.unload()?;
    }

    // 2. Single query end to end: tokenize + embed (B1) + top-10 over 100k stored vectors.
    {
        let opts = BrainOptions {
            backend: BackendChoice::Cuda { ordinal: 0 },
            kernel_cache: Some(cache.clone()),
            ..Default::default()
        };
        let mut brain = minilm_brain(4, &opts)?;
        let n = if quick { 10_000 } else { 100_000 };
        let texts = tiny_sentences(&mut rng, n, 14);
        let t0 = Instant::now();
        for (ci, chunk) in texts.chunks(1024).enumerate() {
            let docs: Vec<(DocId, &str)> =
                chunk.iter().enumerate().map(|(i, t)| (DocId((ci * 1024 + i) as u64), t.as_str())).collect();
            brain.ingest(&docs)?;
        }
        let ingest_s = t0.elapsed().as_secs_f64();
        // A 16-token query: [CLS] + 14 words + [SEP].
        let query = "the bank loan interest rate on the river boat report for the audit desk";
        let qtok = brain.tokenize(&[query])?;
        for _ in 0..10 {
            brain.search(query, 10)?;
        }
        let (mut tt, mut te, mut ts) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..200 {
            let t0 = Instant::now();
            let _ = brain.tokenize(&[query])?;
            tt.push(t0.elapsed().as_secs_f64());
            let t0 = Instant::now();
            brain.embed_tokens(&qtok)?;
            te.push(t0.elapsed().as_secs_f64());
            let t0 = Instant::now();
            let hits = brain.search(query, 10)?;
            ts.push(t0.elapsed().as_secs_f64());
            if hits.len() != 10 {
                return Err(format!("search returned {} hits", hits.len()).into());
            }
        }
        println!(
            "query B1 L{}: end-to-end {:.3} ms (tokenize {:.3} ms, embed {:.3} ms) over {n} vectors; ingest {:.0} docs/s",
            qtok.tokens(),
            median(ts.clone()) * 1e3,
            median(tt.clone()) * 1e3,
            median(te.clone()) * 1e3,
            n as f64 / ingest_s
        );
        out.insert(
            "query".into(),
            json!({"tokens": qtok.tokens(), "stored": n, "k": 10, "end_to_end_ms": median(ts) * 1e3,
                   "tokenize_ms": median(tt) * 1e3, "embed_only_ms": median(te) * 1e3, "ingest_docs_per_s": n as f64 / ingest_s}),
        );
        brain.unload()?;
    }

    // 3. Scrub (zero + verify, one pass) vs memset, on 8 GiB.
    {
        let bytes: usize = if quick { 1 << 30 } else { 8 << 30 };
        let mut buf = dev.alloc::<u32>(bytes / 4)?;
        let (mut tm, mut tsc) = (Vec::new(), Vec::new());
        for i in 0..12 {
            dev.memset(&mut buf, 0xab)?;
            dev.synchronize()?;
            let t0 = Instant::now();
            dev.memset(&mut buf, 0)?;
            dev.synchronize()?;
            let m = t0.elapsed().as_secs_f64();
            dev.memset(&mut buf, 0xab)?;
            dev.synchronize()?;
            let t0 = Instant::now();
            buf.scrub()?;
            let s = t0.elapsed().as_secs_f64();
            if i >= 2 {
                tm.push(m);
                tsc.push(s);
            }
        }
        let (m, s) = (median(tm), median(tsc));
        let (gm, gs) = (bytes as f64 / m / 1e9, bytes as f64 / s / 1e9);
        println!("scrub: memset {gm:.0} GB/s, zero+verify {gs:.0} GB/s ({:.2}x memset)", gs / gm);
        out.insert(
            "scrub".into(),
            json!({"bytes": bytes, "memset_GBps": gm, "scrub_verify_GBps": gs, "ratio": gs / gm}),
        );
        buf.release()?;
    }

    // 4. GEMM on the encoder's shapes (M x K x N; W is [N, K]).
    {
        let shapes: &[(usize, usize, usize)] =
            &[(32768, 384, 1536), (32768, 1536, 384), (32768, 384, 384), (32768, 384, 1152)];
        let mut g = serde_json::Map::new();
        for &(m, k, n) in shapes {
            for fmt in [HalfFormat::Bf16, HalfFormat::F16] {
                let x: Vec<u16> = (0..m * k).map(|_| fmt.encode(rng.uniform(-1.0, 1.0))).collect();
                let w: Vec<u16> = (0..n * k).map(|_| fmt.encode(rng.uniform(-0.05, 0.05))).collect();
                let (bx, bw) = (dev.upload(&x)?, dev.upload(&w)?);
                let bb = dev.upload(&vec![0.01f32; n])?;
                let mut o = dev.alloc::<u16>(m * n)?;
                let epi = bulwark_kernels::cpu::Epilogue::default();
                let mut run = || {
                    dev.gemm(
                        fmt,
                        Variant::TensorCore,
                        bx.view(),
                        bw.view(),
                        bb.view(),
                        None,
                        o.view_mut(),
                        m,
                        n,
                        k,
                        epi,
                    )
                };
                run()?;
                dev.synchronize()?;
                let ms = median((0..5).map(|_| dev.time_ms(10, &mut run)).collect::<Result<Vec<_>, _>>()?);
                let tf = 2.0 * (m * n * k) as f64 / (ms * 1e-3) / 1e12;
                let key = format!("gemm_{}_{m}x{k}x{n}", format!("{fmt:?}").to_lowercase());
                println!("{key}: {:.1} us, {tf:.0} TFLOP/s", ms * 1e3);
                g.insert(format!("{key}_TFLOPs"), json!(tf));
                g.insert(format!("{key}_us"), json!(ms * 1e3));
            }
        }
        out.insert("gemm".into(), Value::Object(g));
    }
    println!("device memory stats: {:?}", dev.stats());

    // 5. The CPU backend on this machine.
    let c = cpu_throughput(32, 128, if quick { 1 } else { 3 })?;
    println!(
        "cpu backend: {:.1} sentences/s (B32 L128, {} threads)",
        c["sent_per_s"].as_f64().unwrap_or(0.0),
        c["threads"]
    );
    out.insert("cpu".into(), c);
    out.insert("machine".into(), machine());
    write_out(args, &Value::Object(out))
}

fn embed_dir(args: &[String]) -> Res<()> {
    let (Some(dir), Some(sent), Some(dst)) = (args.first(), args.get(1), args.get(2)) else {
        return Err("embed-dir MODEL_DIR SENTENCES OUT_JSON".into());
    };
    let dir = std::path::Path::new(dir);
    let weights = Zeroizing::new(std::fs::read(dir.join("model.safetensors"))?);
    let config = std::fs::read(dir.join("config.json"))?;
    let tokenizer = std::fs::read(dir.join("tokenizer.json"))?;
    let backend = match flag(args, "--backend").as_deref() {
        Some("cpu") => BackendChoice::Cpu,
        Some("cuda") => BackendChoice::Cuda { ordinal: 0 },
        _ => BackendChoice::Auto,
    };
    let format = match flag(args, "--format").as_deref() {
        Some("f16") => HalfFormat::F16,
        _ => HalfFormat::Bf16,
    };
    let pooling = match flag(args, "--pooling").as_deref() {
        Some("cls") => Pooling::Cls,
        _ => Pooling::Mean,
    };
    let max_tokens = flag(args, "--max-tokens").map(|v| v.parse()).transpose()?;
    let opts = BrainOptions { backend, format, pooling, max_tokens, ..Default::default() };
    let mut brain =
        EmbeddingBrain::load(ModelFiles { weights, config_json: &config, tokenizer_json: &tokenizer }, &opts)?;
    let text = std::fs::read_to_string(sent)?;
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let e = brain.embed(&lines)?;
    let rows: Vec<&[f32]> = (0..e.len()).map(|i| e.row(i)).collect();
    std::fs::write(
        dst,
        serde_json::to_string(&json!({"backend": format!("{:?}", brain.backend()), "embeddings": rows}))?,
    )?;
    println!("embedded {} sentences on {:?}", e.len(), brain.backend());
    brain.unload()?;
    Ok(())
}
