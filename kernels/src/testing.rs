//! Generators for tests and benchmarks: a seeded RNG, random encoder weights written as
//! safetensors, a matching `config.json`, and a small WordPiece `tokenizer.json`. Everything is
//! built in memory from a seed; nothing is downloaded or read from disk.
//!
//! Not for production use: the weights are random, so embeddings carry no meaning (tests check
//! the pipeline's arithmetic and plumbing, not semantic quality).

// Test-data generation converts between f64, f32 and index types on purpose (values are small
// and approximate by design).
#![allow(clippy::cast_possible_truncation)]

use std::collections::BTreeMap;

use safetensors::Dtype;
use safetensors::tensor::TensorView;

use crate::model::EncoderShape;

/// SplitMix64: small, seedable, good enough for test data.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Self {
        Rng(seed ^ 0x9e37_79b9_7f4a_7c15)
    }
    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Uniform in [lo, hi).
    pub fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
        let u = self.unit() as f32;
        lo + (hi - lo) * u
    }
    /// Standard normal (Box–Muller).
    pub fn normal(&mut self) -> f32 {
        let u1 = self.unit().max(1e-300);
        let u2 = self.unit();
        ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
    }
    /// Uniform integer in [0, n).
    pub fn below(&mut self, n: usize) -> usize {
        (self.unit() * n as f64) as usize % n.max(1)
    }
    /// `n` normal samples times `scale`.
    pub fn normals(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.normal() * scale).collect()
    }
}

/// Words of the tiny WordPiece vocabulary (after the five special tokens).
pub const TINY_WORDS: &[&str] = &[
    "the", "a", "an", "and", "or", "of", "to", "in", "on", "at", "is", "was", "it", "this", "that", "with", "for",
    "by", "cat", "dog", "sat", "ran", "mat", "bank", "river", "money", "loan", "interest", "rate", "fish", "water",
    "boat", "contract", "clause", "court", "judge", "trade", "desk", "price", "bond", "patient", "ward", "nurse",
    "doctor", "report", "audit", "ledger", "key", "tenant", "brain", "search", "query", ".", ",", "!", "?", "##s",
    "##ing", "##ed", "##er", "##ly", "un", "##known",
];

/// A BERT-style `tokenizer.json` over [`TINY_WORDS`]: BertNormalizer (lowercase),
/// BertPreTokenizer, WordPiece with `[UNK]`, and the `[CLS] $A [SEP]` template.
pub fn tiny_tokenizer_json() -> String {
    let specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"];
    let mut vocab = BTreeMap::new();
    for (i, t) in specials.iter().chain(TINY_WORDS.iter()).enumerate() {
        vocab.insert((*t).to_owned(), i);
    }
    let added: Vec<serde_json::Value> = specials
        .iter()
        .enumerate()
        .map(|(i, s)| {
            serde_json::json!({"id": i, "content": s, "single_word": false, "lstrip": false, "rstrip": false,
                               "normalized": false, "special": true})
        })
        .collect();
    let v = serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": {"type": "BertNormalizer", "clean_text": true, "handle_chinese_chars": true,
                       "strip_accents": null, "lowercase": true},
        "pre_tokenizer": {"type": "BertPreTokenizer"},
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                       {"SpecialToken": {"id": "[SEP]", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": "[CLS]", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": "[SEP]", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}},
                     {"SpecialToken": {"id": "[SEP]", "type_id": 1}}],
            "special_tokens": {
                "[CLS]": {"id": "[CLS]", "ids": [2], "tokens": ["[CLS]"]},
                "[SEP]": {"id": "[SEP]", "ids": [3], "tokens": ["[SEP]"]}
            }
        },
        "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": true},
        "model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##",
                  "max_input_chars_per_word": 100, "vocab": vocab}
    });
    v.to_string()
}

/// Vocabulary size of [`tiny_tokenizer_json`].
pub fn tiny_vocab() -> usize {
    5 + TINY_WORDS.len()
}

/// The tiny test encoder: hidden 64, 2 layers, 2 heads of 32 (the GPU attention's head size),
/// FFN 128, 64 positions.
pub fn tiny_shape() -> EncoderShape {
    match EncoderShape::new(64, 2, 2, 128, tiny_vocab(), 64, 2, 1e-12) {
        Ok(s) => s,
        Err(e) => panic!("tiny shape is valid: {e}"),
    }
}

/// The all-MiniLM-L6-v2 shape.
pub fn minilm_shape() -> EncoderShape {
    match EncoderShape::new(384, 6, 12, 1536, 30522, 512, 2, 1e-12) {
        Ok(s) => s,
        Err(e) => panic!("MiniLM shape is valid: {e}"),
    }
}

/// `config.json` text for `shape`.
pub fn config_json(shape: &EncoderShape) -> String {
    serde_json::json!({
        "architectures": ["BertModel"],
        "model_type": "bert",
        "hidden_act": "gelu",
        "hidden_size": shape.hidden(),
        "num_hidden_layers": shape.layers(),
        "num_attention_heads": shape.heads(),
        "intermediate_size": shape.ffn(),
        "vocab_size": shape.vocab(),
        "max_position_embeddings": shape.max_positions(),
        "type_vocab_size": shape.type_vocab(),
        "layer_norm_eps": shape.eps(),
        "position_embedding_type": "absolute",
        "hidden_dropout_prob": 0.1
    })
    .to_string()
}

/// A generated model: safetensors bytes, config and tokenizer JSON.
pub struct TinyModel {
    /// Random weights as a safetensors file (F32 tensors).
    pub safetensors: Vec<u8>,
    /// `config.json`.
    pub config: String,
    /// `tokenizer.json` ([`tiny_tokenizer_json`]).
    pub tokenizer: String,
}

impl TinyModel {
    /// Random weights for `shape` from `seed`, written with Hugging Face BERT tensor names.
    pub fn generate(shape: &EncoderShape, seed: u64) -> Self {
        Self::generate_with(shape, seed, Dtype::F32)
    }

    /// As [`Self::generate`], storing tensors as `dtype` (F32, F16 or BF16).
    pub fn generate_with(shape: &EncoderShape, seed: u64, dtype: Dtype) -> Self {
        let mut rng = Rng::new(seed);
        let (h, f) = (shape.hidden(), shape.ffn());
        let mut tensors: Vec<(String, Vec<usize>, Vec<f32>)> = Vec::new();
        let mut push = |name: String, shape: Vec<usize>, v: Vec<f32>| tensors.push((name, shape, v));
        push("embeddings.word_embeddings.weight".into(), vec![shape.vocab(), h], rng.normals(shape.vocab() * h, 0.5));
        push(
            "embeddings.position_embeddings.weight".into(),
            vec![shape.max_positions(), h],
            rng.normals(shape.max_positions() * h, 0.2),
        );
        push(
            "embeddings.token_type_embeddings.weight".into(),
            vec![shape.type_vocab(), h],
            rng.normals(shape.type_vocab() * h, 0.2),
        );
        let ln = |rng: &mut Rng| ((0..h).map(|_| 1.0 + 0.1 * rng.normal()).collect::<Vec<_>>(), rng.normals(h, 0.1));
        let (g, b) = ln(&mut rng);
        push("embeddings.LayerNorm.weight".into(), vec![h], g);
        push("embeddings.LayerNorm.bias".into(), vec![h], b);
        // Scales keep activations O(1) through the random layers.
        let sw = 1.0 / (h as f32).sqrt();
        let sf = 1.0 / (f as f32).sqrt();
        for i in 0..shape.layers() {
            let p = format!("encoder.layer.{i}");
            for part in ["query", "key", "value"] {
                push(format!("{p}.attention.self.{part}.weight"), vec![h, h], rng.normals(h * h, sw));
                push(format!("{p}.attention.self.{part}.bias"), vec![h], rng.normals(h, 0.05));
            }
            push(format!("{p}.attention.output.dense.weight"), vec![h, h], rng.normals(h * h, sw));
            push(format!("{p}.attention.output.dense.bias"), vec![h], rng.normals(h, 0.05));
            let (g, b) = ln(&mut rng);
            push(format!("{p}.attention.output.LayerNorm.weight"), vec![h], g);
            push(format!("{p}.attention.output.LayerNorm.bias"), vec![h], b);
            push(format!("{p}.intermediate.dense.weight"), vec![f, h], rng.normals(f * h, sw));
            push(format!("{p}.intermediate.dense.bias"), vec![f], rng.normals(f, 0.05));
            push(format!("{p}.output.dense.weight"), vec![h, f], rng.normals(h * f, sf));
            push(format!("{p}.output.dense.bias"), vec![h], rng.normals(h, 0.05));
            let (g, b) = ln(&mut rng);
            push(format!("{p}.output.LayerNorm.weight"), vec![h], g);
            push(format!("{p}.output.LayerNorm.bias"), vec![h], b);
        }
        // A pooler, as real checkpoints carry; the encoder ignores it.
        push("pooler.dense.weight".into(), vec![h, h], rng.normals(h * h, sw));
        push("pooler.dense.bias".into(), vec![h], vec![0.0; h]);
        let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
            .into_iter()
            .map(|(n, s, v)| {
                let b = match dtype {
                    Dtype::F16 => v.iter().flat_map(|x| half::f16::from_f32(*x).to_le_bytes()).collect(),
                    Dtype::BF16 => v.iter().flat_map(|x| half::bf16::from_f32(*x).to_le_bytes()).collect(),
                    _ => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
                };
                (n, s, b)
            })
            .collect();
        let dt = match dtype {
            Dtype::F16 | Dtype::BF16 => dtype,
            _ => Dtype::F32,
        };
        let views: Vec<(String, TensorView<'_>)> = bytes
            .iter()
            .map(|(n, s, b)| match TensorView::new(dt, s.clone(), b) {
                Ok(v) => (n.clone(), v),
                Err(e) => panic!("generated tensor {n} is consistent: {e}"),
            })
            .collect();
        let safetensors = match safetensors::serialize(views, &None) {
            Ok(b) => b,
            Err(e) => panic!("serialising generated tensors: {e}"),
        };
        TinyModel { safetensors, config: config_json(shape), tokenizer: tiny_tokenizer_json() }
    }
}

/// `‖a − b‖₂ / ‖b‖₂` in f64; NaN anywhere (an unwritten, poisoned element) gives infinity.
pub fn rel_l2(a: &[f32], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    let mut num = 0.0f64;
    let mut den = 0.0f64;
    for (&x, &y) in a.iter().zip(b) {
        if !x.is_finite() {
            return f64::INFINITY;
        }
        num += (f64::from(x) - y).powi(2);
        den += y * y;
    }
    if den == 0.0 { num.sqrt() } else { (num / den).sqrt() }
}

/// Random English-ish sentences over the tiny vocabulary.
pub fn tiny_sentences(rng: &mut Rng, n: usize, max_words: usize) -> Vec<String> {
    (0..n)
        .map(|_| {
            let w = 1 + rng.below(max_words);
            (0..w).map(|_| TINY_WORDS[rng.below(TINY_WORDS.len() - 7)]).collect::<Vec<_>>().join(" ")
        })
        .collect()
}
