//! Encoder weights from safetensors bytes.
//!
//! The caller hands over bytes it has already decrypted; they are parsed in memory (never
//! written anywhere), converted to f32 host tensors that are zeroized when dropped, and checked
//! tensor by tensor against the config's shapes. Names follow Hugging Face `BertModel`
//! (optionally under a `bert.` prefix); LayerNorm parameters may be `weight`/`bias` or the older
//! `gamma`/`beta`. Tensors the encoder does not use (pooler, `position_ids`, heads) are ignored.

use safetensors::{Dtype, SafeTensors};
use zeroize::{Zeroize, ZeroizeOnDrop};

use super::{EncoderShape, ModelError};

/// One encoder layer's weights in f32, PyTorch `Linear` layout (`[out, in]`).
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct LayerWeights {
    /// Q, K, V projections stacked: `[3*hidden, hidden]`.
    pub wqkv: Vec<f32>,
    /// Their biases: `[3*hidden]`.
    pub bqkv: Vec<f32>,
    /// Attention output projection `[hidden, hidden]`.
    pub wo: Vec<f32>,
    /// Its bias.
    pub bo: Vec<f32>,
    /// Post-attention LayerNorm weight.
    pub ln1_g: Vec<f32>,
    /// Post-attention LayerNorm bias.
    pub ln1_b: Vec<f32>,
    /// FFN up projection `[ffn, hidden]`.
    pub w1: Vec<f32>,
    /// Its bias.
    pub b1: Vec<f32>,
    /// FFN down projection `[hidden, ffn]`.
    pub w2: Vec<f32>,
    /// Its bias.
    pub b2: Vec<f32>,
    /// Output LayerNorm weight.
    pub ln2_g: Vec<f32>,
    /// Output LayerNorm bias.
    pub ln2_b: Vec<f32>,
}

/// All encoder weights in f32 on the host; zeroized on drop.
#[derive(Zeroize, ZeroizeOnDrop)]
pub struct HostWeights {
    /// Word embeddings `[vocab, hidden]`.
    pub word: Vec<f32>,
    /// Position embeddings `[max_positions, hidden]`.
    pub pos: Vec<f32>,
    /// Token-type embeddings `[type_vocab, hidden]`.
    pub typ: Vec<f32>,
    /// Embedding LayerNorm weight.
    pub emb_g: Vec<f32>,
    /// Embedding LayerNorm bias.
    pub emb_b: Vec<f32>,
    /// The layers.
    pub layers: Vec<LayerWeights>,
}

impl std::fmt::Debug for HostWeights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Weight values are tenant data: print only sizes.
        f.debug_struct("HostWeights")
            .field("word", &self.word.len())
            .field("layers", &self.layers.len())
            .finish_non_exhaustive()
    }
}

struct Reader<'a> {
    st: SafeTensors<'a>,
    prefix: &'static str,
}

impl Reader<'_> {
    /// Reads `name` (with one of `alts` as an alternative last component) as f32 of `shape`.
    fn get(&self, name: &str, alt: Option<&str>, shape: &[usize]) -> Result<Vec<f32>, ModelError> {
        let full = format!("{}{name}", self.prefix);
        let view = match self.st.tensor(&full) {
            Ok(v) => v,
            Err(_) => match alt {
                Some(a) => self
                    .st
                    .tensor(&format!("{}{a}", self.prefix))
                    .map_err(|_| ModelError::MissingTensor(full.clone()))?,
                None => return Err(ModelError::MissingTensor(full)),
            },
        };
        if view.shape() != shape {
            return Err(ModelError::TensorShape { name: full, got: view.shape().to_vec(), expected: shape.to_vec() });
        }
        let data = view.data();
        let out: Vec<f32> = match view.dtype() {
            Dtype::F32 => data.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
            Dtype::F16 => data.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
            Dtype::BF16 => data.chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
            other => return Err(ModelError::TensorDtype { name: full, dtype: format!("{other:?}") }),
        };
        if out.iter().any(|v| !v.is_finite()) {
            let mut out = out;
            out.zeroize();
            return Err(ModelError::NonFinite(full));
        }
        Ok(out)
    }

    /// LayerNorm parameters under `base` (`base.weight`/`base.bias` or `base.gamma`/`base.beta`).
    fn ln(&self, base: &str, h: usize) -> Result<(Vec<f32>, Vec<f32>), ModelError> {
        let g = self.get(&format!("{base}.weight"), Some(&format!("{base}.gamma")), &[h])?;
        let b = self.get(&format!("{base}.bias"), Some(&format!("{base}.beta")), &[h])?;
        Ok((g, b))
    }
}

impl HostWeights {
    /// Parses safetensors `bytes` and checks every tensor against `shape`.
    pub fn from_safetensors(bytes: &[u8], shape: &EncoderShape) -> Result<Self, ModelError> {
        let st = SafeTensors::deserialize(bytes).map_err(ModelError::Safetensors)?;
        let prefix = if st.tensor("bert.embeddings.word_embeddings.weight").is_ok() { "bert." } else { "" };
        let r = Reader { st, prefix };
        let (h, f) = (shape.hidden(), shape.ffn());
        let (emb_g, emb_b) = r.ln("embeddings.LayerNorm", h)?;
        let mut w = HostWeights {
            word: r.get("embeddings.word_embeddings.weight", None, &[shape.vocab(), h])?,
            pos: r.get("embeddings.position_embeddings.weight", None, &[shape.max_positions(), h])?,
            typ: r.get("embeddings.token_type_embeddings.weight", None, &[shape.type_vocab(), h])?,
            emb_g,
            emb_b,
            layers: Vec::with_capacity(shape.layers()),
        };
        for i in 0..shape.layers() {
            let p = format!("encoder.layer.{i}");
            let mut wqkv = Vec::with_capacity(3 * h * h);
            let mut bqkv = Vec::with_capacity(3 * h);
            for part in ["query", "key", "value"] {
                let mut wp = r.get(&format!("{p}.attention.self.{part}.weight"), None, &[h, h])?;
                let mut bp = r.get(&format!("{p}.attention.self.{part}.bias"), None, &[h])?;
                wqkv.extend_from_slice(&wp);
                bqkv.extend_from_slice(&bp);
                wp.zeroize();
                bp.zeroize();
            }
            let (ln1_g, ln1_b) = r.ln(&format!("{p}.attention.output.LayerNorm"), h)?;
            let (ln2_g, ln2_b) = r.ln(&format!("{p}.output.LayerNorm"), h)?;
            w.layers.push(LayerWeights {
                wqkv,
                bqkv,
                wo: r.get(&format!("{p}.attention.output.dense.weight"), None, &[h, h])?,
                bo: r.get(&format!("{p}.attention.output.dense.bias"), None, &[h])?,
                ln1_g,
                ln1_b,
                w1: r.get(&format!("{p}.intermediate.dense.weight"), None, &[f, h])?,
                b1: r.get(&format!("{p}.intermediate.dense.bias"), None, &[f])?,
                w2: r.get(&format!("{p}.output.dense.weight"), None, &[h, f])?,
                b2: r.get(&format!("{p}.output.dense.bias"), None, &[h])?,
                ln2_g,
                ln2_b,
            });
        }
        Ok(w)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{TinyModel, tiny_shape};

    #[test]
    fn loads_a_generated_model_and_rejects_damage() {
        let shape = tiny_shape();
        let m = TinyModel::generate(&shape, 7);
        let w = HostWeights::from_safetensors(&m.safetensors, &shape).expect("weights");
        assert_eq!(w.layers.len(), shape.layers());
        assert_eq!(w.layers[0].wqkv.len(), 3 * shape.hidden() * shape.hidden());
        let dbg = format!("{w:?}");
        for v in [w.word[0], w.word[1], w.layers[0].wqkv[0]] {
            assert!(!dbg.contains(&format!("{v}")), "Debug prints no weight values: {dbg}");
        }

        // Truncated at every 97th byte: always an error, never a panic.
        for cut in (0..m.safetensors.len()).step_by(97) {
            assert!(HostWeights::from_safetensors(&m.safetensors[..cut], &shape).is_err(), "cut {cut}");
        }
        // Garbage header.
        let mut bad = m.safetensors.clone();
        bad[8] = b'[';
        assert!(matches!(HostWeights::from_safetensors(&bad, &shape), Err(ModelError::Safetensors(_))));
        // A header length pointing past the end.
        let mut bad = m.safetensors.clone();
        bad[..8].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(HostWeights::from_safetensors(&bad, &shape), Err(ModelError::Safetensors(_))));
    }

    #[test]
    fn shape_mismatch_and_missing_tensors_are_named() {
        let shape = tiny_shape();
        let m = TinyModel::generate(&shape, 7);
        let wider = EncoderShape::new(
            shape.hidden() * 2,
            shape.layers(),
            shape.heads() * 2,
            shape.ffn(),
            shape.vocab(),
            shape.max_positions(),
            2,
            1e-12,
        )
        .expect("shape");
        assert!(matches!(HostWeights::from_safetensors(&m.safetensors, &wider), Err(ModelError::TensorShape { .. })));
        let deeper = EncoderShape::new(
            shape.hidden(),
            shape.layers() + 1,
            shape.heads(),
            shape.ffn(),
            shape.vocab(),
            shape.max_positions(),
            2,
            1e-12,
        )
        .expect("shape");
        match HostWeights::from_safetensors(&m.safetensors, &deeper) {
            Err(ModelError::MissingTensor(n)) => {
                assert!(n.starts_with(&format!("encoder.layer.{}", shape.layers())), "{n}")
            }
            other => panic!("{other:?}"),
        }
    }
}
