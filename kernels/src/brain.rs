//! The embedding brain: a BERT-family encoder plus a semantic-search index, owned by one brain
//! owner (in the appliance, one tenant's worker process).
//!
//! An [`EmbeddingBrain`] owns everything it computes with: on a GPU its own non-primary CUDA
//! context, kernels, weights, workspace and the stored-embedding matrix; on the CPU its f32
//! weights and stored vectors. Nothing is shared with another brain (the kernel cache is the
//! caller's, see [`BrainOptions::kernel_cache`]). [`EmbeddingBrain::unload`] scrubs and
//! verifies every device buffer before freeing it and zeroizes every host copy; dropping a brain
//! does the same on a best-effort basis (failures are counted, never freed unscrubbed).

use std::sync::Arc;

use thiserror::Error;
use zeroize::{Zeroize, Zeroizing};

use crate::cpu::{self, Hit, Pooling};
use crate::cuda::{self, DeviceError, DeviceInfo, DeviceOptions, HalfFormat, MemStats, Variant};
use crate::model::encoder_cpu::CpuEncoder;
use crate::model::encoder_cuda::CudaEncoder;
use crate::model::{EncoderShape, HostWeights, ModelError, TextTokenizer, TokenBatch, Truncation};
use crate::nvrtc::KernelCache;

/// Caller-chosen identifier of an ingested document (opaque to the brain).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DocId(pub u64);

/// Where the brain computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BackendChoice {
    /// The first GPU when the probe finds a usable one, else the CPU.
    #[default]
    Auto,
    /// The CPU reference backend.
    Cpu,
    /// CUDA device `ordinal`; an error if it cannot be used.
    Cuda {
        /// Device ordinal.
        ordinal: usize,
    },
}

/// The backend a loaded brain runs on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendKind {
    /// CPU, f32.
    Cpu,
    /// A GPU.
    Cuda(DeviceInfo),
}

/// How a brain is loaded.
#[derive(Debug, Clone)]
pub struct BrainOptions {
    /// Where to compute.
    pub backend: BackendChoice,
    /// 16-bit format of GPU weights and activations (accumulation is always f32).
    pub format: HalfFormat,
    /// GPU kernel implementation (tensor-core by default).
    pub variant: Variant,
    /// Sentence pooling: `Mean` for all-MiniLM-L6-v2, `Cls` for bge models.
    pub pooling: Pooling,
    /// Token limit per text including `[CLS]`/`[SEP]` (default and maximum: the model's
    /// position count).
    pub max_tokens: Option<usize>,
    /// What happens to longer texts.
    pub truncation: Truncation,
    /// Most tokens per forward pass; larger inputs are split into several passes.
    pub max_batch_tokens: usize,
    /// Compiled-kernel cache to use; `None` makes a private in-memory one for this brain.
    pub kernel_cache: Option<Arc<KernelCache>>,
    /// GPU options (device-memory budget, debug synchronisation).
    pub device: DeviceOptions,
    /// Replay small batches from captured CUDA graphs.
    pub cuda_graphs: bool,
}

impl Default for BrainOptions {
    fn default() -> Self {
        BrainOptions {
            backend: BackendChoice::Auto,
            format: HalfFormat::Bf16,
            variant: Variant::TensorCore,
            pooling: Pooling::Mean,
            max_tokens: None,
            truncation: Truncation::Truncate,
            max_batch_tokens: 16384,
            kernel_cache: None,
            device: DeviceOptions::default(),
            cuda_graphs: true,
        }
    }
}

/// The model files, as bytes. `weights` is the decrypted safetensors file; the brain takes it
/// and zeroizes it as soon as the weights are parsed.
pub struct ModelFiles<'a> {
    /// `model.safetensors`, decrypted.
    pub weights: Zeroizing<Vec<u8>>,
    /// `config.json`.
    pub config_json: &'a [u8],
    /// `tokenizer.json`.
    pub tokenizer_json: &'a [u8],
}

impl std::fmt::Debug for ModelFiles<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelFiles").field("weights", &"[REDACTED]").finish_non_exhaustive()
    }
}

/// Errors of the embedding brain.
#[derive(Debug, Error)]
pub enum BrainError {
    /// The model files are unusable, or an input was rejected.
    #[error("model")]
    Model(#[from] ModelError),
    /// The GPU failed (including out of device memory).
    #[error("device")]
    Device(#[from] DeviceError),
    /// `BackendChoice::Cuda` was asked for but CUDA cannot be used here.
    #[error("CUDA backend requested but unavailable")]
    CudaUnavailable(#[source] DeviceError),
    /// An option is out of range.
    #[error("option {0}")]
    Option(String),
    /// A host buffer read back non-zero after zeroizing.
    #[error("host scrub")]
    HostScrub(#[from] cpu::HostScrubError),
}

/// Embeddings of a batch: `len` rows of `dim` f32, L2-normalised.
#[derive(Clone, PartialEq)]
pub struct Embeddings {
    /// Width of one embedding.
    pub dim: usize,
    /// Row-major values.
    pub data: Vec<f32>,
    /// Which texts were truncated to the token limit.
    pub truncated: Vec<bool>,
}

impl std::fmt::Debug for Embeddings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Embeddings are derived from tenant text: no values in logs.
        f.debug_struct("Embeddings").field("dim", &self.dim).field("rows", &self.len()).finish_non_exhaustive()
    }
}

impl Embeddings {
    /// Number of rows.
    pub fn len(&self) -> usize {
        self.data.len() / self.dim.max(1)
    }
    /// Whether there are no rows.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
    /// Row `i`.
    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.dim..(i + 1) * self.dim]
    }
}

/// A search result.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SearchHit {
    /// The document.
    pub doc: DocId,
    /// Cosine similarity to the query, in [-1, 1].
    pub score: f32,
}

/// Outcome of an ingest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IngestReport {
    /// Documents added.
    pub added: usize,
    /// Of those, how many were truncated to the token limit.
    pub truncated: usize,
}

/// What [`EmbeddingBrain::unload`] scrubbed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct UnloadReport {
    /// Device bytes zeroed, verified and freed.
    pub device_bytes_scrubbed: u64,
    /// Host bytes zeroized and verified.
    pub host_bytes_zeroized: u64,
}

enum Engine {
    Cpu { enc: Box<CpuEncoder>, store: Zeroizing<Vec<f32>> },
    Cuda(Box<CudaEncoder>),
}

/// A loaded embedding model with its own semantic-search index.
pub struct EmbeddingBrain {
    tok: TextTokenizer,
    shape: EncoderShape,
    pooling: Pooling,
    max_batch_tokens: usize,
    engine: Option<Engine>,
    docs: Vec<DocId>,
    kind: BackendKind,
}

impl std::fmt::Debug for EmbeddingBrain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddingBrain")
            .field("backend", &self.kind)
            .field("docs", &self.docs.len())
            .finish_non_exhaustive()
    }
}

impl Drop for EmbeddingBrain {
    fn drop(&mut self) {
        // Device buffers scrub themselves and host weights / stored vectors are zeroized by
        // their own Drop; the document ids are wiped here.
        self.docs.iter_mut().for_each(|d| d.0.zeroize());
    }
}

/// Most results one search returns.
pub const MAX_K: usize = crate::cuda::TOPK_MAX_K;

/// Upper bound of `max_batch_tokens` (workspace sizing).
pub const MAX_BATCH_TOKENS: usize = 1 << 20;

impl EmbeddingBrain {
    /// Loads a model. `files.weights` is zeroized before this returns, whatever the outcome.
    pub fn load(files: ModelFiles<'_>, opts: &BrainOptions) -> Result<Self, BrainError> {
        let ModelFiles { weights, config_json, tokenizer_json } = files;
        let shape = EncoderShape::from_config_json(config_json)?;
        let limit = opts.max_tokens.unwrap_or(shape.max_positions());
        if limit > shape.max_positions() || limit < 3 {
            return Err(BrainError::Option(format!("max_tokens {limit} must be in 3..={}", shape.max_positions())));
        }
        if opts.max_batch_tokens < limit || opts.max_batch_tokens > MAX_BATCH_TOKENS {
            return Err(BrainError::Option(format!(
                "max_batch_tokens {} must be in {limit}..={MAX_BATCH_TOKENS}",
                opts.max_batch_tokens
            )));
        }
        let tok = TextTokenizer::from_json(tokenizer_json, shape.vocab(), limit, opts.truncation)?;
        let host = HostWeights::from_safetensors(&weights, &shape)?;
        drop(weights); // Zeroizing: the decrypted file is wiped here.

        let want_cuda = match opts.backend {
            BackendChoice::Cpu => None,
            BackendChoice::Auto => cuda::available().ok().map(|_| 0),
            BackendChoice::Cuda { ordinal } => {
                cuda::available().map_err(BrainError::CudaUnavailable)?;
                Some(ordinal)
            }
        };
        let (engine, kind) = match want_cuda {
            None => (
                Engine::Cpu { enc: Box::new(CpuEncoder { shape, w: host }), store: Zeroizing::new(Vec::new()) },
                BackendKind::Cpu,
            ),
            Some(ordinal) => {
                let cache = opts.kernel_cache.clone().unwrap_or_else(|| Arc::new(KernelCache::in_memory()));
                let dev = cuda::CudaDevice::open(ordinal, &cache, &opts.device)?;
                let info = dev.info().clone();
                // `host` is dropped (zeroized) at the end of this arm, after the upload.
                let enc = CudaEncoder::new(dev, shape, &host, opts.format, opts.variant, opts.cuda_graphs)?;
                (Engine::Cuda(Box::new(enc)), BackendKind::Cuda(info))
            }
        };
        Ok(EmbeddingBrain {
            tok,
            shape,
            pooling: opts.pooling,
            max_batch_tokens: opts.max_batch_tokens,
            engine: Some(engine),
            docs: Vec::new(),
            kind,
        })
    }

    /// The backend this brain runs on.
    pub fn backend(&self) -> &BackendKind {
        &self.kind
    }

    /// Embedding width.
    pub fn dim(&self) -> usize {
        self.shape.hidden()
    }

    /// The model's shape.
    pub fn shape(&self) -> &EncoderShape {
        &self.shape
    }

    /// Documents in the index.
    pub fn len(&self) -> usize {
        self.docs.len()
    }

    /// Whether the index is empty.
    pub fn is_empty(&self) -> bool {
        self.docs.is_empty()
    }

    /// Device allocation counters (GPU brains only).
    pub fn device_stats(&self) -> Option<MemStats> {
        match self.engine.as_ref()? {
            Engine::Cuda(e) => Some(e.dev.stats()),
            Engine::Cpu { .. } => None,
        }
    }

    /// Tokenizes `texts` with this brain's tokenizer and limits.
    pub fn tokenize(&self, texts: &[&str]) -> Result<TokenBatch, BrainError> {
        Ok(self.tok.encode(texts, self.shape.vocab())?)
    }

    /// Splits a batch into passes of at most `max_batch_tokens` tokens.
    fn passes(&self, batch: &TokenBatch) -> Vec<(usize, usize)> {
        let mut out = Vec::new();
        let mut s0 = 0;
        while s0 < batch.sequences() {
            let mut s1 = s0 + 1;
            while s1 < batch.sequences() && (batch.cu[s1 + 1] - batch.cu[s0]) as usize <= self.max_batch_tokens {
                s1 += 1;
            }
            out.push((s0, s1));
            s0 = s1;
        }
        out
    }

    fn engine(&mut self) -> Result<&mut Engine, BrainError> {
        self.engine.as_mut().ok_or_else(|| BrainError::Option("brain was unloaded".into()))
    }

    /// Embeds `texts` (L2-normalised rows, in order).
    pub fn embed(&mut self, texts: &[&str]) -> Result<Embeddings, BrainError> {
        let batch = self.tokenize(texts)?;
        self.embed_tokens(&batch)
    }

    /// Embeds an already tokenized batch (ids are checked against the model's tables).
    pub fn embed_tokens(&mut self, batch: &TokenBatch) -> Result<Embeddings, BrainError> {
        cpu::check_seqlens(&batch.cu, batch.tokens()).map_err(ModelError::from)?;
        if batch.pos_ids.iter().any(|&p| p as usize >= self.tok.limit()) {
            return Err(ModelError::TooLong { index: 0, tokens: batch.tokens(), limit: self.tok.limit() }.into());
        }
        let mut data = Vec::with_capacity(batch.sequences() * self.dim());
        let pooling = self.pooling;
        for (s0, s1) in self.passes(batch) {
            let part = batch.slice(s0, s1);
            let rows = match self.engine()? {
                Engine::Cpu { enc, .. } => enc.forward(&part, pooling)?,
                Engine::Cuda(enc) => enc.forward(&part, pooling)?,
            };
            data.extend_from_slice(&rows);
        }
        Ok(Embeddings { dim: self.dim(), data, truncated: batch.truncated.clone() })
    }

    /// Embeds and stores `docs`. Document ids are the caller's; duplicates are allowed.
    pub fn ingest(&mut self, docs: &[(DocId, &str)]) -> Result<IngestReport, BrainError> {
        let texts: Vec<&str> = docs.iter().map(|(_, t)| *t).collect();
        let batch = self.tokenize(&texts)?;
        let pooling = self.pooling;
        let mut added = 0usize;
        for (s0, s1) in self.passes(&batch) {
            let part = batch.slice(s0, s1);
            match self.engine()? {
                Engine::Cpu { enc, store } => {
                    let mut rows = enc.forward(&part, pooling)?;
                    store.extend_from_slice(&rows);
                    rows.zeroize();
                }
                Engine::Cuda(enc) => enc.ingest(&part, pooling)?,
            }
            self.docs.extend(docs[s0..s1].iter().map(|(id, _)| *id));
            added += s1 - s0;
        }
        Ok(IngestReport { added, truncated: batch.truncated.iter().filter(|&&t| t).count() })
    }

    /// The `k` stored documents most similar to `query` (cosine), best first; `k` is capped at
    /// [`MAX_K`] and at the number of stored documents.
    pub fn search(&mut self, query: &str, k: usize) -> Result<Vec<SearchHit>, BrainError> {
        let k = k.min(MAX_K);
        if k == 0 || self.docs.is_empty() {
            return Ok(Vec::new());
        }
        let batch = self.tokenize(&[query])?;
        let pooling = self.pooling;
        let dim = self.dim();
        let hits: Vec<Hit> = match self.engine()? {
            Engine::Cpu { enc, store } => {
                let mut q = enc.forward(&batch, pooling)?;
                let r = cpu::cosine_topk(&q, store, dim, k);
                q.zeroize();
                r.map_err(ModelError::from)?.into_iter().next().unwrap_or_default()
            }
            Engine::Cuda(enc) => enc.search(&batch, pooling, k)?,
        };
        Ok(hits
            .into_iter()
            .filter_map(|h| self.docs.get(h.index as usize).map(|&doc| SearchHit { doc, score: h.score }))
            .collect())
    }

    /// Scrubs and verifies every buffer this brain holds, then frees them and (on a GPU)
    /// destroys its context. An error means some device memory could not be verified clean;
    /// that memory was not returned to the driver (see the crate docs for what the owner must
    /// do then).
    pub fn unload(mut self) -> Result<UnloadReport, BrainError> {
        let mut report = UnloadReport::default();
        self.docs.iter_mut().for_each(|d| d.0.zeroize());
        match self.engine.take() {
            Some(Engine::Cpu { mut enc, mut store }) => {
                report.host_bytes_zeroized += (store.len() * 4) as u64;
                cpu::scrub(&mut store[..])?;
                let w = &mut enc.w;
                let mut all: Vec<&mut Vec<f32>> = vec![&mut w.word, &mut w.pos, &mut w.typ, &mut w.emb_g, &mut w.emb_b];
                for l in &mut w.layers {
                    all.extend([
                        &mut l.wqkv,
                        &mut l.bqkv,
                        &mut l.wo,
                        &mut l.bo,
                        &mut l.ln1_g,
                        &mut l.ln1_b,
                        &mut l.w1,
                        &mut l.b1,
                        &mut l.w2,
                        &mut l.b2,
                        &mut l.ln2_g,
                        &mut l.ln2_b,
                    ]);
                }
                for v in all {
                    report.host_bytes_zeroized += (v.len() * 4) as u64;
                    cpu::scrub(&mut v[..])?;
                }
            }
            Some(Engine::Cuda(enc)) => {
                report.device_bytes_scrubbed = enc.unload()?;
            }
            None => {}
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{Rng, TinyModel, tiny_sentences, tiny_shape};

    /// The backends present here: the CPU always, the first GPU when the probe finds one.
    fn backends() -> Vec<BackendChoice> {
        let mut v = vec![BackendChoice::Cpu];
        match cuda::available() {
            Ok(_) => v.push(BackendChoice::Cuda { ordinal: 0 }),
            Err(e) => println!("SKIPPED CUDA backend for brain tests: {e}"),
        }
        v
    }

    fn load(m: &TinyModel, backend: BackendChoice) -> EmbeddingBrain {
        let files = ModelFiles {
            weights: Zeroizing::new(m.safetensors.clone()),
            config_json: m.config.as_bytes(),
            tokenizer_json: m.tokenizer.as_bytes(),
        };
        let opts = BrainOptions { backend, ..Default::default() };
        match EmbeddingBrain::load(files, &opts) {
            Ok(b) => b,
            Err(e) => panic!("load on {backend:?}: {e:?}"),
        }
    }

    fn tol(b: &EmbeddingBrain) -> f32 {
        match b.backend() {
            BackendKind::Cpu => 1e-5,
            BackendKind::Cuda(_) => 2e-3,
        }
    }

    #[test]
    fn embeds_alone_and_in_a_batch_the_same() {
        let m = TinyModel::generate(&tiny_shape(), 11);
        let mut rng = Rng::new(5);
        let texts = tiny_sentences(&mut rng, 9, 20);
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        for be in backends() {
            let mut brain = load(&m, be);
            let all = brain.embed(&refs).expect("batch");
            assert_eq!(all.len(), texts.len());
            for (i, t) in refs.iter().enumerate() {
                let one = brain.embed(&[t]).expect("single");
                let d = one.row(0).iter().zip(all.row(i)).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
                assert!(d <= tol(&brain), "{be:?} text {i}: max diff {d}");
                let norm: f32 = one.row(0).iter().map(|v| v * v).sum::<f32>().sqrt();
                assert!((norm - 1.0).abs() < 1e-3, "unit norm, got {norm}");
            }
            brain.unload().expect("unload");
        }
    }

    #[test]
    fn search_finds_the_document_itself() {
        let m = TinyModel::generate(&tiny_shape(), 12);
        let mut rng = Rng::new(6);
        let texts = tiny_sentences(&mut rng, 40, 24);
        for be in backends() {
            let mut brain = load(&m, be);
            let docs: Vec<(DocId, &str)> =
                texts.iter().enumerate().map(|(i, t)| (DocId(1000 + i as u64), t.as_str())).collect();
            let rep = brain.ingest(&docs).expect("ingest");
            assert_eq!(rep.added, texts.len());
            assert_eq!(brain.len(), texts.len());
            for probe in [0usize, 7, 39] {
                let hits = brain.search(&texts[probe], 5).expect("search");
                assert_eq!(hits.len(), 5);
                // Identical text: same embedding, cosine 1 (duplicates in the random corpus
                // would tie at 1 and rank by index, so look for the probe among the ties).
                assert!((hits[0].score - 1.0).abs() < 1e-3, "{be:?}: top score {}", hits[0].score);
                assert!(
                    hits.iter()
                        .take_while(|h| (h.score - 1.0).abs() < 1e-3)
                        .any(|h| h.doc == DocId(1000 + probe as u64)),
                    "{be:?}: {hits:?}"
                );
                assert!(hits.windows(2).all(|w| w[0].score >= w[1].score), "sorted");
            }
            // The same ranking as brute force over embed().
            let q = brain.embed(&[&texts[3]]).expect("q");
            let all = brain.embed(&texts.iter().map(String::as_str).collect::<Vec<_>>()).expect("all");
            let want = cpu::cosine_topk(&q.data, &all.data, brain.dim(), 3).expect("topk");
            let got = brain.search(&texts[3], 3).expect("search");
            for (g, w) in got.iter().zip(&want[0]) {
                assert!((g.score - w.score).abs() < 1e-3, "{be:?}: {got:?} vs {want:?}");
            }
            assert!(brain.search("the", 0).expect("k=0").is_empty());
            let r = brain.unload().expect("unload");
            match be {
                BackendChoice::Cpu => assert!(r.host_bytes_zeroized > 0),
                _ => assert!(r.device_bytes_scrubbed > 0),
            }
        }
    }

    #[test]
    fn brain_is_send() {
        fn send<T: Send>() {}
        send::<EmbeddingBrain>();
    }

    #[test]
    fn bad_inputs_are_typed_errors() {
        let shape = tiny_shape();
        let m = TinyModel::generate(&shape, 13);
        let opts = BrainOptions { backend: BackendChoice::Cpu, ..Default::default() };
        fn files<'a>(w: Vec<u8>, cfg: &'a str, tok: &'a str) -> ModelFiles<'a> {
            ModelFiles { weights: Zeroizing::new(w), config_json: cfg.as_bytes(), tokenizer_json: tok.as_bytes() }
        }
        let tk = m.tokenizer.as_str();
        // Truncated weights.
        let cut = m.safetensors[..m.safetensors.len() / 2].to_vec();
        assert!(matches!(
            EmbeddingBrain::load(files(cut, &m.config, tk), &opts),
            Err(BrainError::Model(ModelError::Safetensors(_)))
        ));
        // Config / weights mismatch.
        let cfg = m.config.replace("\"intermediate_size\":128", "\"intermediate_size\":256");
        assert_ne!(cfg, m.config);
        assert!(matches!(
            EmbeddingBrain::load(files(m.safetensors.clone(), &cfg, tk), &opts),
            Err(BrainError::Model(ModelError::TensorShape { .. }))
        ));
        // Model vocabulary smaller than the tokenizer's.
        let cfg = m.config.replace(&format!("\"vocab_size\":{}", shape.vocab()), "\"vocab_size\":10");
        assert!(matches!(
            EmbeddingBrain::load(files(m.safetensors.clone(), &cfg, tk), &opts),
            Err(BrainError::Model(ModelError::VocabMismatch { .. }))
        ));
        // Over-long input with truncation off; with truncation on it is reported.
        let long = "bank loan interest ".repeat(100);
        let strict = BrainOptions { truncation: Truncation::Reject, ..opts.clone() };
        let mut b = EmbeddingBrain::load(files(m.safetensors.clone(), &m.config, tk), &strict).expect("load");
        assert!(matches!(b.embed(&[&long]), Err(BrainError::Model(ModelError::TooLong { .. }))));
        let mut b = EmbeddingBrain::load(files(m.safetensors.clone(), &m.config, tk), &opts).expect("load");
        let e = b.embed(&[&long, "cat"]).expect("truncating embed");
        assert_eq!(e.truncated, vec![true, false]);
        // Unknown words embed (as [UNK]).
        assert_eq!(b.embed(&["qqqq zzzz"]).expect("unk").len(), 1);
        // Options out of range.
        let bad = BrainOptions { max_tokens: Some(10_000), ..opts.clone() };
        assert!(matches!(
            EmbeddingBrain::load(files(m.safetensors.clone(), &m.config, tk), &bad),
            Err(BrainError::Option(_))
        ));
        assert!(format!("{:?}", files(vec![1, 2, 3], "", tk)).contains("REDACTED"));
    }

    #[test]
    fn cuda_out_of_memory_is_an_error_and_scrubs() {
        let Ok(_) = cuda::available() else {
            println!("SKIPPED cuda_out_of_memory_is_an_error_and_scrubs: no CUDA device");
            return;
        };
        let shape = tiny_shape();
        let m = TinyModel::generate(&shape, 14);
        let files = || ModelFiles {
            weights: Zeroizing::new(m.safetensors.clone()),
            config_json: m.config.as_bytes(),
            tokenizer_json: m.tokenizer.as_bytes(),
        };
        // A budget too small for the weights: load fails with OutOfMemory.
        let opts = BrainOptions {
            backend: BackendChoice::Cuda { ordinal: 0 },
            device: DeviceOptions { memory_budget: Some(64 * 1024), debug_sync: false },
            ..Default::default()
        };
        match EmbeddingBrain::load(files(), &opts) {
            Err(BrainError::Device(DeviceError::OutOfMemory { .. })) => {}
            other => panic!("expected OutOfMemory, got {other:?}"),
        }
        // A budget that fits the weights but not a large batch's workspace.
        let opts = BrainOptions {
            device: DeviceOptions { memory_budget: Some(4 << 20), debug_sync: false },
            max_batch_tokens: 1 << 16,
            ..opts
        };
        let mut b = EmbeddingBrain::load(files(), &opts).expect("load within budget");
        let many: Vec<String> = (0..4000).map(|i| format!("bank loan {i}")).collect();
        let refs: Vec<&str> = many.iter().map(String::as_str).collect();
        assert!(matches!(b.embed(&refs), Err(BrainError::Model(ModelError::Device(DeviceError::OutOfMemory { .. })))));
        // Still usable for small inputs, and every buffer is scrubbed on unload.
        assert_eq!(b.embed(&["cat"]).expect("small").len(), 1);
        let stats = b.device_stats().expect("stats");
        assert_eq!(stats.scrub_failures, 0);
        b.unload().expect("unload");
        // A real driver OOM (more than the card has).
        let dev = cuda::CudaDevice::open(0, &KernelCache::in_memory(), &DeviceOptions::default()).expect("open");
        let total = dev.info().total_mem;
        assert!(matches!(dev.alloc::<f32>(total), Err(DeviceError::OutOfMemory { .. })));
        assert_eq!(dev.stats().live_buffers, 0);
    }
}
