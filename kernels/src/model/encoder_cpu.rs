//! The encoder forward pass on the CPU reference backend (f32 throughout).

use zeroize::Zeroize;

use super::{EncoderShape, HostWeights, ModelError, TokenBatch};
use crate::cpu::{self, EmbedTables, Pooling};

/// Weights and shape for CPU inference.
pub(crate) struct CpuEncoder {
    pub(crate) shape: EncoderShape,
    pub(crate) w: HostWeights,
}

impl CpuEncoder {
    /// Pooled, L2-normalised embeddings `[sequences, hidden]` of `batch`.
    pub(crate) fn forward(&self, batch: &TokenBatch, pooling: Pooling) -> Result<Vec<f32>, ModelError> {
        let s = &self.shape;
        let (h, f, t) = (s.hidden(), s.ffn(), batch.tokens());
        cpu::check_seqlens(&batch.cu, t)?;
        let tables = EmbedTables {
            word: &self.w.word,
            pos: &self.w.pos,
            typ: &self.w.typ,
            gamma: &self.w.emb_g,
            beta: &self.w.emb_b,
            hidden: h,
            eps: s.eps(),
        };
        // Activations are tenant data too: zeroized before they are freed.
        let mut hid = vec![0f32; t * h];
        let mut qkv = vec![0f32; t * 3 * h];
        let mut ctx = vec![0f32; t * h];
        let mut tmp = vec![0f32; t * h];
        let mut h1 = vec![0f32; t * h];
        let mut ff = vec![0f32; t * f];
        let r = (|| -> Result<Vec<f32>, ModelError> {
            cpu::embed_layernorm(&tables, &batch.ids, &batch.type_ids, &batch.pos_ids, &mut hid)?;
            for l in &self.w.layers {
                cpu::gemm(&hid, &l.wqkv, &l.bqkv, None, t, 3 * h, h, false, &mut qkv)?;
                cpu::attention(&qkv, &batch.cu, s.heads(), s.head_dim(), &mut ctx)?;
                cpu::gemm(&ctx, &l.wo, &l.bo, Some(&hid), t, h, h, false, &mut tmp)?;
                cpu::layernorm(&tmp, &l.ln1_g, &l.ln1_b, h, s.eps(), &mut h1)?;
                cpu::gemm(&h1, &l.w1, &l.b1, None, t, f, h, true, &mut ff)?;
                cpu::gemm(&ff, &l.w2, &l.b2, Some(&h1), t, h, f, false, &mut tmp)?;
                cpu::layernorm(&tmp, &l.ln2_g, &l.ln2_b, h, s.eps(), &mut hid)?;
            }
            let mut out = vec![0f32; batch.sequences() * h];
            cpu::pool_l2(&hid, &batch.cu, h, pooling, &mut out)?;
            Ok(out)
        })();
        for b in [&mut hid, &mut qkv, &mut ctx, &mut tmp, &mut h1, &mut ff] {
            b.zeroize();
        }
        r
    }
}
