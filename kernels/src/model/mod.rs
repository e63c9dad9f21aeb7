//! The BERT-family encoder: configuration, weights from safetensors, tokenizer, and the forward
//! pass on each backend.
//!
//! Supported checkpoints are post-LayerNorm BERT encoders with absolute position embeddings and
//! exact GELU (all-MiniLM-L6-v2: hidden 384, 6 layers, 12 heads, FFN 1536, vocab 30522, 512
//! positions; bge-small-en: hidden 384, 12 layers, 12 heads, FFN 1536). One layer:
//!
//! ```text
//! qkv = h·Wqkvᵀ + b          (Q, K, V projections fused into one GEMM)
//! a   = attention(qkv)        (per head, within each packed sequence)
//! h1  = LN(a·Woᵀ + bo + h)
//! h   = LN(gelu(h1·W1ᵀ + b1)·W2ᵀ + b2 + h1)
//! ```

pub mod config;
pub mod tokenize;
pub mod weights;

pub(crate) mod encoder_cpu;
pub(crate) mod encoder_cuda;

use thiserror::Error;

pub use config::EncoderShape;
pub use tokenize::{TextTokenizer, TokenBatch, Truncation};
pub use weights::HostWeights;

/// Errors while loading or running a model.
#[derive(Debug, Error)]
pub enum ModelError {
    /// `config.json` is not valid JSON or lacks a required field.
    #[error("config.json unreadable")]
    ConfigJson(#[source] serde_json::Error),
    /// `config.json` describes a model this crate does not run.
    #[error("config.json: {0}")]
    Config(String),
    /// The weights are not a valid safetensors file (malformed or truncated).
    #[error("weights are not valid safetensors")]
    Safetensors(#[source] safetensors::SafeTensorError),
    /// A tensor the config requires is absent.
    #[error("weights lack tensor {0}")]
    MissingTensor(String),
    /// A tensor's shape does not match the config.
    #[error("tensor {name} has shape {got:?}, config implies {expected:?}")]
    TensorShape {
        /// Tensor name.
        name: String,
        /// Shape in the file.
        got: Vec<usize>,
        /// Shape the config implies.
        expected: Vec<usize>,
    },
    /// A tensor's dtype is not F32, F16 or BF16.
    #[error("tensor {name} has unsupported dtype {dtype}")]
    TensorDtype {
        /// Tensor name.
        name: String,
        /// Its dtype.
        dtype: String,
    },
    /// A weight is NaN or infinite.
    #[error("tensor {0} holds a non-finite value")]
    NonFinite(String),
    /// `tokenizer.json` could not be loaded.
    #[error("tokenizer.json: {0}")]
    Tokenizer(String),
    /// The tokenizer can produce ids the model's vocabulary does not have.
    #[error("tokenizer vocabulary ({tokenizer}) exceeds the model's ({model})")]
    VocabMismatch {
        /// Tokenizer vocabulary size (with added tokens).
        tokenizer: usize,
        /// Model `vocab_size`.
        model: usize,
    },
    /// Tokenizing a text failed.
    #[error("tokenizing text {index}: {reason}")]
    Encode {
        /// Which text of the batch.
        index: usize,
        /// The tokenizer's message.
        reason: String,
    },
    /// A text is longer than the model accepts and truncation is off.
    #[error("text {index} has {tokens} tokens, more than the limit {limit}")]
    TooLong {
        /// Which text of the batch.
        index: usize,
        /// Its token count (with special tokens).
        tokens: usize,
        /// The limit.
        limit: usize,
    },
    /// A kernel rejected its inputs.
    #[error("shape")]
    Shape(#[from] crate::cpu::ShapeError),
    /// The GPU failed.
    #[error("device")]
    Device(#[from] crate::cuda::DeviceError),
}
