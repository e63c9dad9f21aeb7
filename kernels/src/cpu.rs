//! CPU reference backend: every kernel in f32, written for clarity first and then for speed
//! (rayon across rows, an AVX2+FMA dot-product micro-kernel chosen at run time).
//!
//! These functions are the fallback when no GPU is found and the reference the GPU kernels are
//! checked against (which is in turn checked against an f64 oracle in the tests). They take flat
//! row-major slices with their dimensions and check every length first, so no input can make
//! them index out of range; a mismatch is a [`ShapeError`].

use rayon::prelude::*;
use thiserror::Error;
use zeroize::Zeroize;

/// A buffer length or dimension does not match what the operation needs.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum ShapeError {
    /// A slice has the wrong length.
    #[error("{what} has {got} elements, expected {expected}")]
    Length {
        /// Which argument.
        what: &'static str,
        /// Its length.
        got: usize,
        /// The length the dimensions imply.
        expected: usize,
    },
    /// A dimension is out of the supported range.
    #[error("{what} = {value} is not supported ({rule})")]
    Dim {
        /// Which dimension.
        what: &'static str,
        /// Its value.
        value: usize,
        /// The rule it breaks.
        rule: &'static str,
    },
    /// Sequence offsets are not a valid partition of the tokens.
    #[error("cu_seqlens must start at 0, increase strictly and end at the token count {tokens}")]
    SeqLens {
        /// The token count.
        tokens: usize,
    },
    /// A gather index is outside its table.
    #[error("{what} index {index} at token {token} is outside its table of {rows} rows")]
    Index {
        /// Which table.
        what: &'static str,
        /// The offending index.
        index: u32,
        /// The token position.
        token: usize,
        /// The table's row count.
        rows: usize,
    },
}

pub(crate) fn check_len(what: &'static str, got: usize, expected: usize) -> Result<(), ShapeError> {
    if got == expected { Ok(()) } else { Err(ShapeError::Length { what, got, expected }) }
}

/// Checks `cu` is `[0, ..., tokens]`, strictly increasing (no empty sequence).
pub fn check_seqlens(cu: &[u32], tokens: usize) -> Result<(), ShapeError> {
    let ok = cu.len() >= 2
        && cu[0] == 0
        && cu.windows(2).all(|w| w[0] < w[1])
        && cu.last().map(|&l| l as usize) == Some(tokens);
    if ok { Ok(()) } else { Err(ShapeError::SeqLens { tokens }) }
}

/// Exact (erf-based) GELU, BERT's "gelu".
pub fn gelu(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// erf for the f32 path: Abramowitz & Stegun 7.1.26 (absolute error below 1.5e-7, the size of
/// f32 rounding near 1), evaluated in f64. Rust's std has no erf.
fn erf(x: f32) -> f32 {
    let ax = f64::from(x).abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * ax);
    let poly =
        t * (0.254_829_592 + t * (-0.284_496_736 + t * (1.421_413_741 + t * (-1.453_152_027 + t * 1.061_405_429))));
    #[allow(clippy::cast_possible_truncation)]
    let r = (1.0 - poly * (-ax * ax).exp()) as f32;
    if x < 0.0 { -r } else { r }
}

#[cfg(test)]
/// erf in f64 for the test oracles (series for small |x|, a continued fraction for erfc
/// beyond), relative error < 1e-13.
pub(crate) fn erf_f64(x: f64) -> f64 {
    let ax = x.abs();
    let r = if ax < 2.5 {
        // Maclaurin series: erf(x) = 2/sqrt(pi) * sum (-1)^n x^(2n+1) / (n! (2n+1))
        let x2 = ax * ax;
        let mut term = ax;
        let mut sum = ax;
        let mut n = 0.0f64;
        loop {
            n += 1.0;
            term *= -x2 / n;
            let add = term / (2.0 * n + 1.0);
            sum += add;
            if add.abs() <= 1e-17 * sum.abs() || n > 200.0 {
                break;
            }
        }
        sum * std::f64::consts::FRAC_2_SQRT_PI
    } else if ax < 6.0 {
        // erfc via Lentz's continued fraction: erfc(x) = exp(-x^2)/sqrt(pi) * 1/(x + 1/2/(x + 1/(x + 3/2/(x + ...))))
        let mut f = ax;
        let tiny = 1e-300;
        let mut c = f;
        let mut d = 0.0f64;
        for k in 1..200 {
            let a = f64::from(k) * 0.5;
            d = ax + a * d;
            d = if d.abs() < tiny { tiny } else { d };
            c = ax + a / c;
            c = if c.abs() < tiny { tiny } else { c };
            d = 1.0 / d;
            let delta = c * d;
            f *= delta;
            if (delta - 1.0).abs() < 1e-16 {
                break;
            }
        }
        1.0 - (-ax * ax).exp() / (f * std::f64::consts::PI.sqrt())
    } else {
        1.0
    };
    if x < 0.0 { -r } else { r }
}

// ---------------------------------------------------------------------------------------------
// Embedding + LayerNorm, LayerNorm
// ---------------------------------------------------------------------------------------------

/// Inputs of the embedding gather + LayerNorm.
#[derive(Debug, Clone, Copy)]
pub struct EmbedTables<'a> {
    /// Word embeddings `[vocab, hidden]`.
    pub word: &'a [f32],
    /// Position embeddings `[max_pos, hidden]`.
    pub pos: &'a [f32],
    /// Token-type embeddings `[type_vocab, hidden]`.
    pub typ: &'a [f32],
    /// LayerNorm weight `[hidden]`.
    pub gamma: &'a [f32],
    /// LayerNorm bias `[hidden]`.
    pub beta: &'a [f32],
    /// Hidden size.
    pub hidden: usize,
    /// LayerNorm epsilon.
    pub eps: f32,
}

/// Checks every id against its table (done by the host before any GPU launch too).
pub fn check_ids(t: &EmbedTables<'_>, ids: &[u32], type_ids: &[u32], pos_ids: &[u32]) -> Result<(), ShapeError> {
    let h = t.hidden;
    if h == 0 {
        return Err(ShapeError::Dim { what: "hidden", value: 0, rule: "must be positive" });
    }
    check_len("type_ids", type_ids.len(), ids.len())?;
    check_len("pos_ids", pos_ids.len(), ids.len())?;
    check_len("gamma", t.gamma.len(), h)?;
    check_len("beta", t.beta.len(), h)?;
    for (what, table, idx) in [("word", t.word, ids), ("position", t.pos, pos_ids), ("token type", t.typ, type_ids)] {
        if table.len() % h != 0 {
            return Err(ShapeError::Length { what, got: table.len(), expected: table.len() / h * h });
        }
        let rows = table.len() / h;
        if let Some((token, &index)) = idx.iter().enumerate().find(|(_, i)| **i as usize >= rows) {
            return Err(ShapeError::Index { what, index, token, rows });
        }
    }
    Ok(())
}

/// `out[t] = LN(word[ids[t]] + pos[pos_ids[t]] + typ[type_ids[t]])`.
pub fn embed_layernorm(
    t: &EmbedTables<'_>,
    ids: &[u32],
    type_ids: &[u32],
    pos_ids: &[u32],
    out: &mut [f32],
) -> Result<(), ShapeError> {
    check_ids(t, ids, type_ids, pos_ids)?;
    let h = t.hidden;
    check_len("out", out.len(), ids.len() * h)?;
    out.par_chunks_mut(h).enumerate().for_each(|(r, o)| {
        let (w, p, ty) = (ids[r] as usize * h, pos_ids[r] as usize * h, type_ids[r] as usize * h);
        let rows = t.word[w..w + h].iter().zip(&t.pos[p..p + h]).zip(&t.typ[ty..ty + h]);
        for (ov, ((a, b), c)) in o.iter_mut().zip(rows) {
            *ov = a + b + c;
        }
        layernorm_row_in_place(o, t.gamma, t.beta, t.eps);
    });
    Ok(())
}

fn layernorm_row_in_place(o: &mut [f32], gamma: &[f32], beta: &[f32], eps: f32) {
    let h = o.len() as f32;
    let mean = o.iter().sum::<f32>() / h;
    let var = o.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / h;
    let rstd = 1.0 / (var + eps).sqrt();
    for ((v, g), b) in o.iter_mut().zip(gamma).zip(beta) {
        *v = (*v - mean) * rstd * g + b;
    }
}

/// Row-wise LayerNorm of `x [rows, hidden]` into `out`.
pub fn layernorm(
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    hidden: usize,
    eps: f32,
    out: &mut [f32],
) -> Result<(), ShapeError> {
    if hidden == 0 {
        return Err(ShapeError::Dim { what: "hidden", value: 0, rule: "must be positive" });
    }
    check_len("gamma", gamma.len(), hidden)?;
    check_len("beta", beta.len(), hidden)?;
    check_len("out", out.len(), x.len())?;
    if !x.len().is_multiple_of(hidden) {
        return Err(ShapeError::Length { what: "x", got: x.len(), expected: x.len() / hidden * hidden });
    }
    out.par_chunks_mut(hidden).zip(x.par_chunks(hidden)).for_each(|(o, xr)| {
        o.copy_from_slice(xr);
        layernorm_row_in_place(o, gamma, beta, eps);
    });
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// GEMM
// ---------------------------------------------------------------------------------------------

/// Epilogue of a GEMM: bias always, then optionally GELU, then optionally a residual add.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Epilogue {
    /// Apply exact GELU after the bias.
    pub gelu: bool,
    /// Add the residual matrix last.
    pub residual: bool,
}

impl Epilogue {
    /// The flag word the CUDA kernel takes (bit 0 GELU, bit 1 residual).
    pub fn flags(self) -> i32 {
        i32::from(self.gelu) | (i32::from(self.residual) << 1)
    }
}

/// `out[M,N] = epi(x[M,K] · w[N,K]^T + bias[N]) (+ residual[M,N])`.
#[allow(clippy::too_many_arguments)]
pub fn gemm(
    x: &[f32],
    w: &[f32],
    bias: &[f32],
    residual: Option<&[f32]>,
    m: usize,
    n: usize,
    k: usize,
    gelu_act: bool,
    out: &mut [f32],
) -> Result<(), ShapeError> {
    check_len("x", x.len(), m * k)?;
    check_len("w", w.len(), n * k)?;
    check_len("bias", bias.len(), n)?;
    check_len("out", out.len(), m * n)?;
    if let Some(r) = residual {
        check_len("residual", r.len(), m * n)?;
    }
    if m == 0 || n == 0 {
        return Ok(());
    }
    const MB: usize = 16; // rows of x per parallel task
    out.par_chunks_mut(MB * n).enumerate().for_each(|(bi, ob)| {
        let r0 = bi * MB;
        let rows = ob.len() / n;
        gemm_block(&x[r0 * k..(r0 + rows) * k], w, k, n, ob);
        for (ri, orow) in ob.chunks_mut(n).enumerate() {
            for (c, o) in orow.iter_mut().enumerate() {
                let mut v = *o + bias[c];
                if gelu_act {
                    v = gelu(v);
                }
                if let Some(r) = residual {
                    v += r[(r0 + ri) * n + c];
                }
                *o = v;
            }
        }
    });
    Ok(())
}

/// out[rows, n] = x[rows, k] · w[n, k]^T for a block of rows, dispatching to the widest
/// micro-kernel this CPU supports.
fn gemm_block(x: &[f32], w: &[f32], k: usize, n: usize, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU supports AVX2 and FMA (checked on the line above), which is the
            // only requirement of a #[target_feature(enable = "avx2,fma")] function.
            unsafe { gemm_block_avx2(x, w, k, n, out) };
            return;
        }
    }
    gemm_block_generic::<false>(x, w, k, n, out);
}

/// The AVX2+FMA path: a 4 (rows of x) × 2 (rows of w) register tile of 8-lane accumulators.
/// Every output element, whichever tile it falls in, is computed by the same sequence of
/// operations (8 lane-wise FMA chains, the same horizontal sum, then the scalar tail), so a row's
/// result does not depend on which other rows share its batch.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn gemm_block_avx2(x: &[f32], w: &[f32], k: usize, n: usize, out: &mut [f32]) {
    let rows = out.len() / n;
    const NB: usize = 64; // rows of w kept hot in cache
    for n0 in (0..n).step_by(NB) {
        let n1 = (n0 + NB).min(n);
        let mut r = 0;
        while r < rows {
            let rr = (rows - r).min(4);
            let mut c = n0;
            while c < n1 {
                let cc = (n1 - c).min(2);
                if rr == 4 && cc == 2 {
                    let xs = [0, 1, 2, 3].map(|i| &x[(r + i) * k..(r + i + 1) * k]);
                    let ws = [0, 1].map(|j| &w[(c + j) * k..(c + j + 1) * k]);
                    let acc = dot_avx2::<4, 2>(xs, ws, k);
                    for i in 0..4 {
                        for j in 0..2 {
                            out[(r + i) * n + c + j] = acc[i][j];
                        }
                    }
                } else {
                    for i in 0..rr {
                        for j in 0..cc {
                            let xs = [&x[(r + i) * k..(r + i + 1) * k]];
                            let ws = [&w[(c + j) * k..(c + j + 1) * k]];
                            out[(r + i) * n + c + j] = dot_avx2::<1, 1>(xs, ws, k)[0][0];
                        }
                    }
                }
                c += cc;
            }
            r += rr;
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
fn dot_avx2<const R: usize, const C: usize>(xs: [&[f32]; R], ws: [&[f32]; C], k: usize) -> [[f32; C]; R] {
    use std::arch::x86_64::{__m256, _mm256_fmadd_ps, _mm256_loadu_ps, _mm256_setzero_ps, _mm256_storeu_ps};
    let mut acc: [[__m256; C]; R] = [[_mm256_setzero_ps(); C]; R];
    let full = k / LANES * LANES;
    let mut b = 0;
    while b < full {
        let mut wv = [_mm256_setzero_ps(); C];
        for j in 0..C {
            let chunk = chunk8(ws[j], b);
            // SAFETY: `chunk` is a live &[f32; 8]; an unaligned 8-float load reads exactly it.
            wv[j] = unsafe { _mm256_loadu_ps(chunk.as_ptr()) };
        }
        for i in 0..R {
            let chunk = chunk8(xs[i], b);
            // SAFETY: as above, exactly the 8 floats of `chunk`.
            let xv = unsafe { _mm256_loadu_ps(chunk.as_ptr()) };
            for j in 0..C {
                acc[i][j] = _mm256_fmadd_ps(xv, wv[j], acc[i][j]);
            }
        }
        b += LANES;
    }
    let mut out = [[0f32; C]; R];
    for i in 0..R {
        for j in 0..C {
            let mut lanes = [0f32; LANES];
            // SAFETY: `lanes` is 8 writable floats, exactly what an unaligned 8-float store writes.
            unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), acc[i][j]) };
            let mut s =
                ((lanes[0] + lanes[4]) + (lanes[1] + lanes[5])) + ((lanes[2] + lanes[6]) + (lanes[3] + lanes[7]));
            for t in full..k {
                s = xs[i][t].mul_add(ws[j][t], s);
            }
            out[i][j] = s;
        }
    }
    out
}

const LANES: usize = 8;

#[inline(always)]
fn gemm_block_generic<const FMA: bool>(x: &[f32], w: &[f32], k: usize, n: usize, out: &mut [f32]) {
    let rows = out.len() / n;
    const NB: usize = 64; // rows of w kept hot in cache
    for n0 in (0..n).step_by(NB) {
        let n1 = (n0 + NB).min(n);
        let mut r = 0;
        while r < rows {
            let rr = (rows - r).min(4);
            let mut c = n0;
            while c < n1 {
                let cc = (n1 - c).min(2);
                if rr == 4 && cc == 2 {
                    let xs = [0, 1, 2, 3].map(|i| &x[(r + i) * k..(r + i + 1) * k]);
                    let ws = [0, 1].map(|j| &w[(c + j) * k..(c + j + 1) * k]);
                    let acc = dot_block::<4, 2, FMA>(xs, ws, k);
                    for i in 0..4 {
                        for j in 0..2 {
                            out[(r + i) * n + c + j] = acc[i][j];
                        }
                    }
                } else {
                    for i in 0..rr {
                        for j in 0..cc {
                            let xs = [&x[(r + i) * k..(r + i + 1) * k]];
                            let ws = [&w[(c + j) * k..(c + j + 1) * k]];
                            out[(r + i) * n + c + j] = dot_block::<1, 1, FMA>(xs, ws, k)[0][0];
                        }
                    }
                }
                c += cc;
            }
            r += rr;
        }
    }
}

#[inline(always)]
fn dot_block<const R: usize, const C: usize, const FMA: bool>(
    xs: [&[f32]; R],
    ws: [&[f32]; C],
    k: usize,
) -> [[f32; C]; R] {
    let mut acc = [[[0f32; LANES]; C]; R];
    let full = k / LANES * LANES;
    let mut b = 0;
    while b < full {
        let xv: [&[f32; LANES]; R] = xs.map(|s| chunk8(s, b));
        let wv: [&[f32; LANES]; C] = ws.map(|s| chunk8(s, b));
        for i in 0..R {
            for j in 0..C {
                for l in 0..LANES {
                    acc[i][j][l] =
                        if FMA { xv[i][l].mul_add(wv[j][l], acc[i][j][l]) } else { acc[i][j][l] + xv[i][l] * wv[j][l] };
                }
            }
        }
        b += LANES;
    }
    let mut out = [[0f32; C]; R];
    for i in 0..R {
        for j in 0..C {
            let mut s: f32 = acc[i][j].iter().sum();
            for t in full..k {
                s += xs[i][t] * ws[j][t];
            }
            out[i][j] = s;
        }
    }
    out
}

#[inline(always)]
fn chunk8(s: &[f32], b: usize) -> &[f32; LANES] {
    // The caller keeps b + LANES <= s.len() (b < k / LANES * LANES and s.len() == k).
    match s[b..b + LANES].try_into() {
        Ok(a) => a,
        Err(_) => unreachable_chunk(),
    }
}

#[cold]
fn unreachable_chunk() -> ! {
    // A slice of exactly LANES elements always converts to [f32; LANES].
    panic!("chunk of {LANES} elements did not convert")
}

// ---------------------------------------------------------------------------------------------
// Attention
// ---------------------------------------------------------------------------------------------

/// Packed variable-length self-attention. `qkv [T, 3*hidden]` (Q | K | V, heads contiguous in
/// each), `cu [B+1]` sequence offsets, `out [T, hidden]`.
pub fn attention(qkv: &[f32], cu: &[u32], heads: usize, head_dim: usize, out: &mut [f32]) -> Result<(), ShapeError> {
    if heads == 0 || head_dim == 0 {
        return Err(ShapeError::Dim { what: "heads * head_dim", value: 0, rule: "must be positive" });
    }
    let h = heads * head_dim;
    let tokens = out.len() / h;
    check_len("out", out.len(), tokens * h)?;
    check_len("qkv", qkv.len(), tokens * 3 * h)?;
    check_seqlens(cu, tokens)?;
    let scale = 1.0 / (head_dim as f32).sqrt();
    // One task per (sequence, head); each writes a disjoint column band of its rows, so collect
    // per-task results and scatter them.
    let tasks: Vec<(usize, usize)> = (0..cu.len() - 1).flat_map(|b| (0..heads).map(move |hd| (b, hd))).collect();
    let results: Vec<Vec<f32>> = tasks
        .par_iter()
        .map(|&(b, hd)| {
            let (s0, s1) = (cu[b] as usize, cu[b + 1] as usize);
            let len = s1 - s0;
            let mut res = vec![0f32; len * head_dim];
            let mut scores = vec![0f32; len];
            for qi in 0..len {
                let q = &qkv[(s0 + qi) * 3 * h + hd * head_dim..][..head_dim];
                let mut mx = f32::NEG_INFINITY;
                for (ki, sc) in scores.iter_mut().enumerate() {
                    let kr = &qkv[(s0 + ki) * 3 * h + h + hd * head_dim..][..head_dim];
                    let d: f32 = q.iter().zip(kr).map(|(a, b)| a * b).sum();
                    *sc = d * scale;
                    mx = mx.max(*sc);
                }
                let mut sum = 0f32;
                for sc in scores.iter_mut() {
                    *sc = (*sc - mx).exp();
                    sum += *sc;
                }
                let o = &mut res[qi * head_dim..(qi + 1) * head_dim];
                for (ki, &p) in scores.iter().enumerate() {
                    let vr = &qkv[(s0 + ki) * 3 * h + 2 * h + hd * head_dim..][..head_dim];
                    for (ov, vv) in o.iter_mut().zip(vr) {
                        *ov += p * vv;
                    }
                }
                for ov in o.iter_mut() {
                    *ov /= sum;
                }
            }
            res
        })
        .collect();
    for (&(b, hd), res) in tasks.iter().zip(results) {
        let s0 = cu[b] as usize;
        for (qi, row) in res.chunks(head_dim).enumerate() {
            out[(s0 + qi) * h + hd * head_dim..][..head_dim].copy_from_slice(row);
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Pooling
// ---------------------------------------------------------------------------------------------

/// How a sequence's hidden states become one vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Pooling {
    /// Mean over the sequence's tokens (all-MiniLM-L6-v2 and most sentence-transformers).
    #[default]
    Mean,
    /// The first token's state (the `[CLS]` pooling of the bge family).
    Cls,
}

impl Pooling {
    /// The mode word the CUDA kernel takes.
    pub fn mode(self) -> i32 {
        match self {
            Pooling::Mean => 0,
            Pooling::Cls => 1,
        }
    }
}

/// Pools `x [T, hidden]` per sequence of `cu` and L2-normalises: `out [B, hidden]`.
pub fn pool_l2(x: &[f32], cu: &[u32], hidden: usize, pooling: Pooling, out: &mut [f32]) -> Result<(), ShapeError> {
    if hidden == 0 {
        return Err(ShapeError::Dim { what: "hidden", value: 0, rule: "must be positive" });
    }
    let tokens = x.len() / hidden;
    check_len("x", x.len(), tokens * hidden)?;
    check_seqlens(cu, tokens)?;
    check_len("out", out.len(), (cu.len() - 1) * hidden)?;
    out.par_chunks_mut(hidden).enumerate().for_each(|(b, o)| {
        let s0 = cu[b] as usize;
        let s1 = match pooling {
            Pooling::Mean => cu[b + 1] as usize,
            Pooling::Cls => s0 + 1,
        };
        o.fill(0.0);
        for t in s0..s1 {
            for (ov, xv) in o.iter_mut().zip(&x[t * hidden..(t + 1) * hidden]) {
                *ov += xv;
            }
        }
        let inv_n = 1.0 / (s1 - s0) as f32;
        o.iter_mut().for_each(|v| *v *= inv_n);
        let norm = o.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
        o.iter_mut().for_each(|v| *v /= norm);
    });
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Top-k
// ---------------------------------------------------------------------------------------------

/// One search result: the stored row and its cosine similarity to the query.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Hit {
    /// Row index in the stored matrix.
    pub index: u32,
    /// Cosine similarity (dot product of unit vectors).
    pub score: f32,
}

/// Ranking: higher score first, then lower index; NaN ranks as -inf.
pub fn rank_key(score: f32, index: u32) -> (f32, u32) {
    (if score.is_nan() { f32::NEG_INFINITY } else { score }, index)
}

fn better(a: &Hit, b: &Hit) -> std::cmp::Ordering {
    let (sa, ia) = rank_key(a.score, a.index);
    let (sb, ib) = rank_key(b.score, b.index);
    sb.total_cmp(&sa).then(ia.cmp(&ib))
}

/// Top-`k` rows of `stored [n, dim]` for each query of `queries [nq, dim]`, best first.
pub fn cosine_topk(queries: &[f32], stored: &[f32], dim: usize, k: usize) -> Result<Vec<Vec<Hit>>, ShapeError> {
    if dim == 0 {
        return Err(ShapeError::Dim { what: "dim", value: 0, rule: "must be positive" });
    }
    let n = stored.len() / dim;
    check_len("stored", stored.len(), n * dim)?;
    let nq = queries.len() / dim;
    check_len("queries", queries.len(), nq * dim)?;
    if n > u32::MAX as usize {
        return Err(ShapeError::Dim { what: "stored rows", value: n, rule: "at most 2^32 - 1" });
    }
    let k = k.min(n);
    Ok(queries
        .par_chunks(dim)
        .map(|q| {
            let mut hits: Vec<Hit> = stored
                .chunks(dim)
                .enumerate()
                .map(|(i, s)| Hit {
                    index: u32::try_from(i).unwrap_or(u32::MAX),
                    score: {
                        let d: f32 = q.iter().zip(s).map(|(a, b)| a * b).sum();
                        if d.is_nan() { f32::NEG_INFINITY } else { d }
                    },
                })
                .collect();
            if k > 0 && k < hits.len() {
                hits.select_nth_unstable_by(k - 1, better);
            }
            hits.truncate(k);
            hits.sort_by(better);
            hits
        })
        .collect())
}

// ---------------------------------------------------------------------------------------------
// Scrub
// ---------------------------------------------------------------------------------------------

/// Error when a host scrub reads back a non-zero element.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
#[error("host scrub left a non-zero value at element {0}")]
pub struct HostScrubError(pub usize);

/// Zeroes `buf` (volatile writes that the optimiser keeps) and verifies every element reads
/// back as zero bits.
pub fn scrub<T: zeroize::DefaultIsZeroes + Into<f64>>(buf: &mut [T]) -> Result<(), HostScrubError> {
    buf.zeroize();
    match buf.iter().position(|v| {
        // SAFETY: `v` is a valid reference to an initialised element of `buf`; a volatile read
        // of it is always allowed and keeps the compiler from assuming the zeroize result.
        let x: T = unsafe { std::ptr::read_volatile(v) };
        x.into() != 0.0
    }) {
        Some(i) => Err(HostScrubError(i)),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn erf_matches_known_values() {
        // Reference values of erf (Abramowitz & Stegun table 7.1).
        for (x, e) in [
            (0.0, 0.0),
            (0.5, 0.520_499_877_813_046_5),
            (1.0, 0.842_700_792_949_714_9),
            (2.0, 0.995_322_265_018_952_7),
            (3.0, 0.999_977_909_503_001_4),
        ] {
            assert!((erf_f64(x) - e).abs() < 1e-13, "erf({x}) = {}", erf_f64(x));
            assert!((erf_f64(-x) + e).abs() < 1e-13);
        }
        assert!((gelu(1.0) - 0.841_344_7).abs() < 1e-6);
        for i in -400..=400 {
            let x = i as f32 / 100.0;
            assert!((f64::from(erf(x)) - erf_f64(f64::from(x))).abs() < 3e-7, "erf({x})");
        }
    }

    #[test]
    fn shape_errors_not_panics() {
        let mut out = vec![0f32; 4];
        assert!(matches!(
            gemm(&[0.0; 3], &[0.0; 4], &[0.0; 2], None, 2, 2, 2, false, &mut out),
            Err(ShapeError::Length { what: "x", .. })
        ));
        assert!(matches!(check_seqlens(&[0, 2, 2], 2), Err(ShapeError::SeqLens { .. })));
        assert!(matches!(check_seqlens(&[0, 1], 2), Err(ShapeError::SeqLens { .. })));
        let t = EmbedTables {
            word: &[0.0; 8],
            pos: &[0.0; 8],
            typ: &[0.0; 4],
            gamma: &[1.0; 4],
            beta: &[0.0; 4],
            hidden: 4,
            eps: 1e-12,
        };
        let mut o = vec![0f32; 4];
        assert!(matches!(
            embed_layernorm(&t, &[2], &[0], &[0], &mut o),
            Err(ShapeError::Index { what: "word", index: 2, .. })
        ));
    }

    #[test]
    fn host_scrub_zeroes() {
        let mut v = vec![1.5f32; 1000];
        scrub(&mut v).expect("scrub");
        assert!(v.iter().all(|x| x.to_bits() == 0));
    }

    #[test]
    fn topk_orders_ties_by_index() {
        let stored = [1.0, 0.0, 1.0, 0.0, 0.0, 1.0];
        let hits = cosine_topk(&[1.0, 0.0], &stored, 2, 3).expect("topk");
        assert_eq!(hits[0].iter().map(|h| h.index).collect::<Vec<_>>(), vec![0, 1, 2]);
    }
}
