//! `config.json` → a checked [`EncoderShape`].
//!
//! Hugging Face `config.json` is an external format with dozens of informational keys
//! (`architectures`, `transformers_version`, `_name_or_path`, ...), so unknown keys are ignored
//! here rather than rejected; every key that changes the computation is read and checked, and a
//! value this crate does not implement (another activation, relative positions, a non-BERT
//! `model_type`) is an error rather than a silent difference.

use serde::Deserialize;

use super::ModelError;

/// The shape of a BERT encoder, checked on construction.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EncoderShape {
    hidden: usize,
    layers: usize,
    heads: usize,
    ffn: usize,
    vocab: usize,
    max_positions: usize,
    type_vocab: usize,
    eps: f32,
}

/// Upper bounds this crate supports (the device kernels keep a row of `hidden` in registers).
pub const MAX_HIDDEN: usize = 1024;
/// Most layers accepted.
pub const MAX_LAYERS: usize = 64;
/// Largest vocabulary accepted.
pub const MAX_VOCAB: usize = 1 << 22;
/// Most positions accepted.
pub const MAX_POSITIONS: usize = 8192;

#[derive(Deserialize)]
struct RawConfig {
    hidden_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    intermediate_size: usize,
    vocab_size: usize,
    max_position_embeddings: usize,
    #[serde(default = "default_type_vocab")]
    type_vocab_size: usize,
    #[serde(default = "default_eps")]
    layer_norm_eps: f64,
    #[serde(default)]
    hidden_act: Option<String>,
    #[serde(default)]
    model_type: Option<String>,
    #[serde(default)]
    position_embedding_type: Option<String>,
}

fn default_type_vocab() -> usize {
    2
}
fn default_eps() -> f64 {
    1e-12
}

impl EncoderShape {
    /// Checks and builds a shape.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        hidden: usize,
        layers: usize,
        heads: usize,
        ffn: usize,
        vocab: usize,
        max_positions: usize,
        type_vocab: usize,
        eps: f32,
    ) -> Result<Self, ModelError> {
        let bad = |m: String| Err(ModelError::Config(m));
        if hidden == 0 || hidden > MAX_HIDDEN || !hidden.is_multiple_of(8) {
            return bad(format!("hidden_size {hidden} must be a multiple of 8 in 8..={MAX_HIDDEN}"));
        }
        if heads == 0 || !hidden.is_multiple_of(heads) {
            return bad(format!("num_attention_heads {heads} must divide hidden_size {hidden}"));
        }
        if !(hidden / heads).is_multiple_of(8) {
            return bad(format!("head size {} must be a multiple of 8", hidden / heads));
        }
        if layers == 0 || layers > MAX_LAYERS {
            return bad(format!("num_hidden_layers {layers} must be in 1..={MAX_LAYERS}"));
        }
        if ffn == 0 || !ffn.is_multiple_of(8) || ffn > 16 * MAX_HIDDEN {
            return bad(format!("intermediate_size {ffn} must be a positive multiple of 8 up to {}", 16 * MAX_HIDDEN));
        }
        if vocab == 0 || vocab > MAX_VOCAB {
            return bad(format!("vocab_size {vocab} must be in 1..={MAX_VOCAB}"));
        }
        if !(3..=MAX_POSITIONS).contains(&max_positions) {
            return bad(format!("max_position_embeddings {max_positions} must be in 3..={MAX_POSITIONS}"));
        }
        if type_vocab == 0 || type_vocab > 16 {
            return bad(format!("type_vocab_size {type_vocab} must be in 1..=16"));
        }
        if !(eps.is_finite() && eps > 0.0 && eps < 1e-2) {
            return bad(format!("layer_norm_eps {eps} must be in (0, 0.01)"));
        }
        Ok(EncoderShape { hidden, layers, heads, ffn, vocab, max_positions, type_vocab, eps })
    }

    /// Parses and checks a Hugging Face BERT `config.json`.
    pub fn from_config_json(bytes: &[u8]) -> Result<Self, ModelError> {
        let raw: RawConfig = serde_json::from_slice(bytes).map_err(ModelError::ConfigJson)?;
        if let Some(act) = raw.hidden_act.as_deref()
            && act != "gelu"
        {
            return Err(ModelError::Config(format!("hidden_act {act:?} is not supported (only exact \"gelu\")")));
        }
        if let Some(mt) = raw.model_type.as_deref()
            && mt != "bert"
        {
            return Err(ModelError::Config(format!("model_type {mt:?} is not supported (only \"bert\")")));
        }
        if let Some(p) = raw.position_embedding_type.as_deref()
            && p != "absolute"
        {
            return Err(ModelError::Config(format!("position_embedding_type {p:?} is not supported")));
        }
        #[allow(clippy::cast_possible_truncation)]
        let eps = raw.layer_norm_eps as f32;
        EncoderShape::new(
            raw.hidden_size,
            raw.num_hidden_layers,
            raw.num_attention_heads,
            raw.intermediate_size,
            raw.vocab_size,
            raw.max_position_embeddings,
            raw.type_vocab_size,
            eps,
        )
    }

    /// Hidden width.
    pub fn hidden(&self) -> usize {
        self.hidden
    }
    /// Encoder layers.
    pub fn layers(&self) -> usize {
        self.layers
    }
    /// Attention heads.
    pub fn heads(&self) -> usize {
        self.heads
    }
    /// Width of one head.
    pub fn head_dim(&self) -> usize {
        self.hidden / self.heads
    }
    /// Feed-forward width.
    pub fn ffn(&self) -> usize {
        self.ffn
    }
    /// Vocabulary size.
    pub fn vocab(&self) -> usize {
        self.vocab
    }
    /// Position-embedding rows (the longest sequence the model accepts).
    pub fn max_positions(&self) -> usize {
        self.max_positions
    }
    /// Token-type rows.
    pub fn type_vocab(&self) -> usize {
        self.type_vocab
    }
    /// LayerNorm epsilon.
    pub fn eps(&self) -> f32 {
        self.eps
    }
    /// Parameter count.
    pub fn params(&self) -> usize {
        let h = self.hidden;
        let emb = (self.vocab + self.max_positions + self.type_vocab) * h + 2 * h;
        let layer = 3 * h * h + 3 * h + h * h + h + 2 * h + self.ffn * h + self.ffn + h * self.ffn + h + 2 * h;
        emb + self.layers * layer
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINILM: &str = r#"{
      "_name_or_path": "nreimers/MiniLM-L6-H384-uncased",
      "architectures": ["BertModel"],
      "attention_probs_dropout_prob": 0.1,
      "gradient_checkpointing": false,
      "hidden_act": "gelu",
      "hidden_dropout_prob": 0.1,
      "hidden_size": 384,
      "initializer_range": 0.02,
      "intermediate_size": 1536,
      "layer_norm_eps": 1e-12,
      "max_position_embeddings": 512,
      "model_type": "bert",
      "num_attention_heads": 12,
      "num_hidden_layers": 6,
      "pad_token_id": 0,
      "position_embedding_type": "absolute",
      "transformers_version": "4.8.2",
      "type_vocab_size": 2,
      "use_cache": true,
      "vocab_size": 30522
    }"#;

    #[test]
    fn parses_minilm_shape() {
        let s = EncoderShape::from_config_json(MINILM.as_bytes()).expect("config");
        assert_eq!((s.hidden(), s.layers(), s.heads(), s.head_dim(), s.ffn()), (384, 6, 12, 32, 1536));
        assert_eq!((s.vocab(), s.max_positions(), s.type_vocab()), (30522, 512, 2));
        // all-MiniLM-L6-v2 has 22,713,216 parameters, 147,840 of them in the pooler we do not use.
        assert_eq!(s.params(), 22_565_376);
    }

    #[test]
    fn rejects_what_it_cannot_run() {
        let swap = |from: &str, to: &str| EncoderShape::from_config_json(MINILM.replace(from, to).as_bytes());
        assert!(matches!(swap("\"gelu\"", "\"relu\""), Err(ModelError::Config(_))));
        assert!(matches!(swap("\"bert\"", "\"roberta\""), Err(ModelError::Config(_))));
        assert!(matches!(
            swap("\"num_attention_heads\": 12", "\"num_attention_heads\": 7"),
            Err(ModelError::Config(_))
        ));
        assert!(matches!(swap("\"hidden_size\": 384", "\"hidden_size\": 4096"), Err(ModelError::Config(_))));
        assert!(matches!(swap("\"vocab_size\": 30522", "\"vocab_size\": -1"), Err(ModelError::ConfigJson(_))));
        assert!(matches!(EncoderShape::from_config_json(b"{"), Err(ModelError::ConfigJson(_))));
    }
}
