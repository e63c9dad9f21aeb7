//! Bulwark's GPU brains: hand-written CUDA kernels compiled at run time with NVRTC, a CPU
//! reference backend for every kernel, the BERT-family embedding encoder, semantic search, and
//! scrubbed device memory.
//!
//! # Trust model
//!
//! - **Trusted:** this crate's own kernel sources (`cu/*.cu`, embedded at build time), the
//!   NVIDIA driver and NVRTC, `cudarc`'s raw bindings, and the `safetensors` / `tokenizers`
//!   parsers (fuzzed upstream; their outputs are still checked here before use).
//! - **Untrusted input:** model files (weights, `config.json`, `tokenizer.json`) and texts.
//!   They are parsed and checked into typed values ([`model::EncoderShape`], checked tensor
//!   shapes and finiteness, token ids bounded by the vocabulary) before any kernel sees them;
//!   malformed input is a typed error, never a panic or an out-of-bounds launch.
//! - **Tenant data:** weights, texts, activations and stored embeddings belong to one brain
//!   owner. Every device buffer is scrubbed (zeroed and read back in one pass) and verified
//!   before it is freed; host copies are zeroized. Each GPU brain creates its own non-primary
//!   CUDA context; no cache holding tenant data is shared between brains. Compiled kernels are
//!   code, not tenant data (see [`nvrtc`]).
//!
//! # What `unsafe` means here
//!
//! This is one of the two crates where `unsafe` may appear. It is used for: dynamic-library
//! probing ([`probe`]), NVRTC and CUDA driver calls, kernel launches, and one runtime-selected
//! AVX2 routine. Every kernel launch sits behind a safe method that checks buffer lengths and
//! dimensions first; its `// SAFETY:` line names the `.cu` signature, the bound that keeps every
//! access in range, and the buffers it must not write.
//!
//! # Panics
//!
//! No library path panics on bad input or a missing CUDA installation: `cudarc` is only touched
//! after [`probe`] has found the driver / NVRTC library and every symbol it will load.
//! `expect`/`unwrap` appear only in tests and the test-data generators in [`testing`].
//!
//! # Must not depend on
//!
//! tokio or any async runtime, the TPM crate, the network. Model files come in as bytes.

pub mod backend;
pub mod brain;
pub mod cpu;
pub mod cuda;
pub mod model;
pub mod nvrtc;
pub mod probe;
pub mod testing;

pub use backend::{CpuOps, CudaOps, KernelOps, OpError, backends};
pub use brain::{
    BackendChoice, BackendKind, BrainError, BrainOptions, DocId, EmbeddingBrain, Embeddings, IngestReport, ModelFiles,
    SearchHit, UnloadReport,
};
pub use cpu::{Hit, Pooling};
pub use cuda::{CudaDevice, DeviceError, DeviceInfo, DeviceOptions, HalfFormat, MemStats, Variant};
pub use model::{EncoderShape, ModelError, Truncation};
pub use nvrtc::{KernelCache, KernelFile, Target};
