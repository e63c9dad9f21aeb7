//! One interface over every backend present, so the same test body (and benchmark) runs on the
//! CPU and, when the probe finds one, on the GPU.
//!
//! [`KernelOps`] takes host slices in f32 and writes host outputs; the CUDA implementation
//! rounds inputs to its 16-bit format, uploads them, uploads the caller's `out` as-is (tests fill
//! it with NaN, so an element the kernel never writes comes back NaN), launches, and downloads.
//! [`backends`] lists what this machine has and says why CUDA is missing when it is.

use thiserror::Error;

use crate::cpu::{self, EmbedTables, Epilogue, Hit, Pooling, ShapeError};
use crate::cuda::{self, CudaDevice, DeviceError, DeviceOptions, HalfFormat, Variant};
use crate::nvrtc::KernelCache;

/// Errors of a host-level kernel call.
#[derive(Debug, Error)]
pub enum OpError {
    /// Inputs of the wrong shape.
    #[error("shape")]
    Shape(#[from] ShapeError),
    /// The GPU failed.
    #[error("device")]
    Device(#[from] DeviceError),
    /// A host scrub failed its read-back.
    #[error("host scrub")]
    HostScrub(#[from] cpu::HostScrubError),
}

/// Host-level access to every kernel.
pub trait KernelOps {
    /// A short name for messages ("cpu-f32", "cuda0-bf16-tc").
    fn label(&self) -> String;
    /// The 16-bit format inputs are rounded to, or `None` for f32.
    fn format(&self) -> Option<HalfFormat>;
    /// Relative L2 error the backend must meet against the f64 oracle.
    fn tolerance(&self) -> f64 {
        if self.format().is_some() { 1e-2 } else { 1e-4 }
    }
    /// Rounds test inputs to what this backend computes on (identity for f32).
    fn round(&self, v: &mut [f32]) {
        if let Some(f) = self.format() {
            f.round_slice(v);
        }
    }
    /// Embedding gather + LayerNorm into `out [tokens, hidden]`.
    fn embed_layernorm(
        &self,
        t: &EmbedTables<'_>,
        ids: &[u32],
        type_ids: &[u32],
        pos_ids: &[u32],
        out: &mut [f32],
    ) -> Result<(), OpError>;
    /// LayerNorm of `x [rows, hidden]` into `out`.
    fn layernorm(
        &self,
        x: &[f32],
        gamma: &[f32],
        beta: &[f32],
        hidden: usize,
        eps: f32,
        out: &mut [f32],
    ) -> Result<(), OpError>;
    /// `out = epi(x · wᵀ + bias) (+ residual)`.
    #[allow(clippy::too_many_arguments)]
    fn gemm(
        &self,
        x: &[f32],
        w: &[f32],
        bias: &[f32],
        residual: Option<&[f32]>,
        m: usize,
        n: usize,
        k: usize,
        epi: Epilogue,
        out: &mut [f32],
    ) -> Result<(), OpError>;
    /// Packed variable-length attention.
    fn attention(&self, qkv: &[f32], cu: &[u32], heads: usize, head_dim: usize, out: &mut [f32])
    -> Result<(), OpError>;
    /// Pooling + L2 normalisation into `out [sequences, hidden]`.
    fn pool_l2(&self, x: &[f32], cu: &[u32], hidden: usize, pooling: Pooling, out: &mut [f32]) -> Result<(), OpError>;
    /// Cosine top-k.
    fn cosine_topk(&self, queries: &[f32], stored: &[f32], dim: usize, k: usize) -> Result<Vec<Vec<Hit>>, OpError>;
    /// Fills a buffer of `bytes` with a non-zero pattern, scrubs it, and checks the result with
    /// an independent full read-back. Returns the bytes scrubbed.
    fn scrub_roundtrip(&self, bytes: usize) -> Result<usize, OpError>;
}

/// The CPU reference backend.
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuOps;

impl KernelOps for CpuOps {
    fn label(&self) -> String {
        "cpu-f32".into()
    }
    fn format(&self) -> Option<HalfFormat> {
        None
    }
    fn embed_layernorm(
        &self,
        t: &EmbedTables<'_>,
        ids: &[u32],
        type_ids: &[u32],
        pos_ids: &[u32],
        out: &mut [f32],
    ) -> Result<(), OpError> {
        Ok(cpu::embed_layernorm(t, ids, type_ids, pos_ids, out)?)
    }
    fn layernorm(
        &self,
        x: &[f32],
        gamma: &[f32],
        beta: &[f32],
        hidden: usize,
        eps: f32,
        out: &mut [f32],
    ) -> Result<(), OpError> {
        Ok(cpu::layernorm(x, gamma, beta, hidden, eps, out)?)
    }
    fn gemm(
        &self,
        x: &[f32],
        w: &[f32],
        bias: &[f32],
        residual: Option<&[f32]>,
        m: usize,
        n: usize,
        k: usize,
        epi: Epilogue,
        out: &mut [f32],
    ) -> Result<(), OpError> {
        let residual = if epi.residual { residual } else { None };
        Ok(cpu::gemm(x, w, bias, residual, m, n, k, epi.gelu, out)?)
    }
    fn attention(
        &self,
        qkv: &[f32],
        cu: &[u32],
        heads: usize,
        head_dim: usize,
        out: &mut [f32],
    ) -> Result<(), OpError> {
        Ok(cpu::attention(qkv, cu, heads, head_dim, out)?)
    }
    fn pool_l2(&self, x: &[f32], cu: &[u32], hidden: usize, pooling: Pooling, out: &mut [f32]) -> Result<(), OpError> {
        Ok(cpu::pool_l2(x, cu, hidden, pooling, out)?)
    }
    fn cosine_topk(&self, queries: &[f32], stored: &[f32], dim: usize, k: usize) -> Result<Vec<Vec<Hit>>, OpError> {
        Ok(cpu::cosine_topk(queries, stored, dim, k)?)
    }
    fn scrub_roundtrip(&self, bytes: usize) -> Result<usize, OpError> {
        let mut v: Vec<u8> = (0..bytes).map(|i| u8::try_from(i % 251).unwrap_or(0) | 1).collect();
        cpu::scrub(&mut v[..])?;
        match v.iter().position(|&b| b != 0) {
            Some(i) => Err(cpu::HostScrubError(i).into()),
            None => Ok(bytes),
        }
    }
}

/// The CUDA backend at one 16-bit format and kernel variant.
#[derive(Debug)]
pub struct CudaOps {
    dev: CudaDevice,
    fmt: HalfFormat,
    variant: Variant,
}

impl CudaOps {
    /// Opens device `ordinal` for host-level kernel calls.
    pub fn open(ordinal: usize, fmt: HalfFormat, variant: Variant, cache: &KernelCache) -> Result<Self, DeviceError> {
        let dev = CudaDevice::open(ordinal, cache, &DeviceOptions::default())?;
        Ok(CudaOps { dev, fmt, variant })
    }
    /// The same device with another format / variant.
    pub fn with(&self, fmt: HalfFormat, variant: Variant) -> Self {
        CudaOps { dev: self.dev.clone(), fmt, variant }
    }
    /// The device handle.
    pub fn device(&self) -> &CudaDevice {
        &self.dev
    }
    fn enc(&self, v: &[f32]) -> Vec<u16> {
        v.iter().map(|&x| self.fmt.encode(x)).collect()
    }
    fn up16(&self, v: &[f32]) -> Result<cuda::DeviceBuffer<u16>, DeviceError> {
        self.dev.upload(&self.enc(v))
    }
    fn down16(&self, b: &cuda::DeviceBuffer<u16>, out: &mut [f32]) -> Result<(), DeviceError> {
        let mut raw = vec![0u16; out.len()];
        b.read_into(0, &mut raw)?;
        for (o, r) in out.iter_mut().zip(raw) {
            *o = self.fmt.decode(r);
        }
        Ok(())
    }
}

fn cu_i32(cu: &[u32]) -> Vec<i32> {
    cu.iter().map(|&c| i32::try_from(c).unwrap_or(i32::MAX)).collect()
}

impl KernelOps for CudaOps {
    fn label(&self) -> String {
        format!("cuda{}-{:?}-{:?}", self.dev.info().ordinal, self.fmt, self.variant).to_lowercase()
    }
    fn format(&self) -> Option<HalfFormat> {
        Some(self.fmt)
    }
    fn embed_layernorm(
        &self,
        t: &EmbedTables<'_>,
        ids: &[u32],
        type_ids: &[u32],
        pos_ids: &[u32],
        out: &mut [f32],
    ) -> Result<(), OpError> {
        cpu::check_ids(t, ids, type_ids, pos_ids)?;
        let h = t.hidden;
        cpu::check_len("out", out.len(), ids.len() * h)?;
        let d = &self.dev;
        let (bi, bt, bp) = (d.upload(ids)?, d.upload(type_ids)?, d.upload(pos_ids)?);
        let (w, p, ty) = (self.up16(t.word)?, self.up16(t.pos)?, self.up16(t.typ)?);
        let (g, b) = (d.upload(t.gamma)?, d.upload(t.beta)?);
        let mut o = self.up16(out)?;
        d.embed_layernorm(
            self.fmt,
            bi.view(),
            bt.view(),
            bp.view(),
            w.view(),
            p.view(),
            ty.view(),
            g.view(),
            b.view(),
            o.view_mut(),
            ids.len(),
            h,
            t.eps,
        )?;
        Ok(self.down16(&o, out)?)
    }
    fn layernorm(
        &self,
        x: &[f32],
        gamma: &[f32],
        beta: &[f32],
        hidden: usize,
        eps: f32,
        out: &mut [f32],
    ) -> Result<(), OpError> {
        cpu::check_len("gamma", gamma.len(), hidden)?;
        cpu::check_len("beta", beta.len(), hidden)?;
        cpu::check_len("out", out.len(), x.len())?;
        let rows = x.len() / hidden.max(1);
        cpu::check_len("x", x.len(), rows * hidden)?;
        let d = &self.dev;
        let bx = self.up16(x)?;
        let (g, b) = (d.upload(gamma)?, d.upload(beta)?);
        let mut o = self.up16(out)?;
        d.layernorm(self.fmt, bx.view(), g.view(), b.view(), o.view_mut(), rows, hidden, eps)?;
        Ok(self.down16(&o, out)?)
    }
    fn gemm(
        &self,
        x: &[f32],
        w: &[f32],
        bias: &[f32],
        residual: Option<&[f32]>,
        m: usize,
        n: usize,
        k: usize,
        epi: Epilogue,
        out: &mut [f32],
    ) -> Result<(), OpError> {
        cpu::check_len("x", x.len(), m * k)?;
        cpu::check_len("w", w.len(), n * k)?;
        cpu::check_len("bias", bias.len(), n)?;
        cpu::check_len("out", out.len(), m * n)?;
        let d = &self.dev;
        let (bx, bw, bb) = (self.up16(x)?, self.up16(w)?, d.upload(bias)?);
        let br = match (epi.residual, residual) {
            (true, Some(r)) => {
                cpu::check_len("residual", r.len(), m * n)?;
                Some(self.up16(r)?)
            }
            (true, None) => return Err(ShapeError::Length { what: "residual", got: 0, expected: m * n }.into()),
            (false, _) => None,
        };
        let mut o = self.up16(out)?;
        d.gemm(
            self.fmt,
            self.variant,
            bx.view(),
            bw.view(),
            bb.view(),
            br.as_ref().map(|b| b.view()),
            o.view_mut(),
            m,
            n,
            k,
            epi,
        )?;
        Ok(self.down16(&o, out)?)
    }
    fn attention(
        &self,
        qkv: &[f32],
        cu: &[u32],
        heads: usize,
        head_dim: usize,
        out: &mut [f32],
    ) -> Result<(), OpError> {
        let h = heads * head_dim;
        let t = out.len() / h.max(1);
        cpu::check_len("out", out.len(), t * h)?;
        cpu::check_len("qkv", qkv.len(), t * 3 * h)?;
        cpu::check_seqlens(cu, t)?;
        let d = &self.dev;
        let tiles = cuda::attention_tiles(cu);
        let (bq, bc, bt) = (self.up16(qkv)?, d.upload(&cu_i32(cu))?, d.upload(&tiles)?);
        let mut o = self.up16(out)?;
        d.attention(
            self.fmt,
            self.variant,
            bq.view(),
            o.view_mut(),
            bc.view(),
            bt.view(),
            cu.len() - 1,
            t,
            heads,
            head_dim,
            tiles.len() / 2,
        )?;
        Ok(self.down16(&o, out)?)
    }
    fn pool_l2(&self, x: &[f32], cu: &[u32], hidden: usize, pooling: Pooling, out: &mut [f32]) -> Result<(), OpError> {
        let t = x.len() / hidden.max(1);
        cpu::check_len("x", x.len(), t * hidden)?;
        cpu::check_seqlens(cu, t)?;
        cpu::check_len("out", out.len(), (cu.len() - 1) * hidden)?;
        let d = &self.dev;
        let (bx, bc) = (self.up16(x)?, d.upload(&cu_i32(cu))?);
        let mut o = d.upload(out)?;
        d.pool_l2(self.fmt, bx.view(), bc.view(), o.view_mut(), cu.len() - 1, t, hidden, pooling)?;
        o.read_into(0, out)?;
        Ok(())
    }
    fn cosine_topk(&self, queries: &[f32], stored: &[f32], dim: usize, k: usize) -> Result<Vec<Vec<Hit>>, OpError> {
        let n = stored.len() / dim.max(1);
        let nq = queries.len() / dim.max(1);
        cpu::check_len("stored", stored.len(), n * dim)?;
        cpu::check_len("queries", queries.len(), nq * dim)?;
        let k = k.min(n).min(cuda::TOPK_MAX_K);
        if k == 0 || nq == 0 {
            return Ok(vec![Vec::new(); nq]);
        }
        let d = &self.dev;
        let (bq, bs) = (d.upload(queries)?, d.upload(stored)?);
        let scratch = CudaDevice::topk_scratch_len(n, nq, k);
        let (mut cs, mut ci) = (d.alloc::<f32>(scratch)?, d.alloc::<u32>(scratch)?);
        let mut os = d.upload(&vec![f32::NAN; nq * k])?;
        let mut oi = d.upload(&vec![u32::MAX - 1; nq * k])?;
        d.topk(bq.view(), bs.view(), nq, n, dim, k, cs.view_mut(), ci.view_mut(), os.view_mut(), oi.view_mut())?;
        let (s, i) = (os.to_vec()?, oi.to_vec()?);
        Ok(s.chunks(k)
            .zip(i.chunks(k))
            .map(|(s, i)| s.iter().zip(i).map(|(&score, &index)| Hit { index, score }).collect())
            .collect())
    }
    fn scrub_roundtrip(&self, bytes: usize) -> Result<usize, OpError> {
        let words = bytes.div_ceil(4);
        let pattern: Vec<u32> = (0u32..).take(words).map(|i| i.wrapping_mul(2_654_435_761) | 1).collect();
        let mut b = self.dev.upload(&pattern)?;
        b.scrub()?;
        // Independent check: read the whole buffer back over PCIe.
        let back = b.to_vec()?;
        if let Some(i) = back.iter().position(|&w| w != 0) {
            return Err(cpu::HostScrubError(i).into());
        }
        Ok(b.release()?)
    }
}

/// Every backend present: the CPU, then (when the probe finds a GPU) CUDA device 0 in bf16 and
/// f16 with the tensor-core kernels and bf16 with the simple kernels. Prints why CUDA is
/// skipped when it is.
pub fn backends() -> Vec<Box<dyn KernelOps>> {
    let mut v: Vec<Box<dyn KernelOps>> = vec![Box::new(CpuOps)];
    match cuda::available() {
        Err(e) => println!("SKIPPED CUDA backend: {e}"),
        Ok(_) => match CudaOps::open(0, HalfFormat::Bf16, Variant::TensorCore, &KernelCache::in_memory()) {
            Ok(ops) => {
                let f16 = ops.with(HalfFormat::F16, Variant::TensorCore);
                let simple = ops.with(HalfFormat::Bf16, Variant::Simple);
                v.push(Box::new(ops));
                v.push(Box::new(f16));
                v.push(Box::new(simple));
            }
            // A GPU that is present but cannot run the kernels is a failure, not a skip.
            Err(e) => panic!("CUDA present but unusable: {e:?}"),
        },
    }
    v
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation)]
mod tests {
    //! Parity of every kernel on every backend against f64 oracles, on fresh random inputs of
    //! several shapes, with outputs poisoned (NaN) before each run.

    use super::*;
    use crate::cpu::erf_f64;
    use crate::testing::{Rng, rel_l2};

    fn poisoned(n: usize) -> Vec<f32> {
        vec![f32::NAN; n]
    }

    fn check(be: &dyn KernelOps, what: &str, got: &[f32], want: &[f64]) {
        let e = rel_l2(got, want);
        assert!(e <= be.tolerance(), "{} {what}: rel L2 error {e:e} > {:e}", be.label(), be.tolerance());
        println!("{} {what}: rel L2 {e:.2e}", be.label());
    }

    fn oracle_ln_row(v: &mut [f64], g: &[f32], b: &[f32], eps: f32) {
        let n = v.len() as f64;
        let mean = v.iter().sum::<f64>() / n;
        let var = v.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / n;
        let rstd = 1.0 / (var + f64::from(eps)).sqrt();
        for (i, x) in v.iter_mut().enumerate() {
            *x = (*x - mean) * rstd * f64::from(g[i]) + f64::from(b[i]);
        }
    }

    fn rounded(be: &dyn KernelOps, mut v: Vec<f32>) -> Vec<f32> {
        be.round(&mut v);
        v
    }

    fn seqlens(rng: &mut Rng, b: usize, max_len: usize) -> Vec<u32> {
        let mut cu = vec![0u32];
        for _ in 0..b {
            let l = 1 + rng.below(max_len) as u32;
            cu.push(cu.last().copied().unwrap_or(0) + l);
        }
        cu
    }

    #[test]
    fn embed_layernorm_matches_oracle() {
        let mut rng = Rng::new(1);
        for be in backends() {
            for (t, h, v, p) in
                [(1usize, 32usize, 10usize, 8usize), (37, 64, 50, 40), (130, 384, 100, 130), (9, 1024, 7, 16)]
            {
                let word = rounded(&*be, rng.normals(v * h, 1.0));
                let pos = rounded(&*be, rng.normals(p * h, 0.3));
                let typ = rounded(&*be, rng.normals(2 * h, 0.3));
                let gamma: Vec<f32> = (0..h).map(|_| 1.0 + 0.2 * rng.normal()).collect();
                let beta = rng.normals(h, 0.2);
                let ids: Vec<u32> = (0..t).map(|_| rng.below(v) as u32).collect();
                let types: Vec<u32> = (0..t).map(|_| rng.below(2) as u32).collect();
                let poss: Vec<u32> = (0..t).map(|_| rng.below(p) as u32).collect();
                let tb = EmbedTables {
                    word: &word,
                    pos: &pos,
                    typ: &typ,
                    gamma: &gamma,
                    beta: &beta,
                    hidden: h,
                    eps: 1e-12,
                };
                let mut out = poisoned(t * h);
                be.embed_layernorm(&tb, &ids, &types, &poss, &mut out).expect("embed_ln");
                let mut want = vec![0f64; t * h];
                for r in 0..t {
                    let row = &mut want[r * h..(r + 1) * h];
                    for c in 0..h {
                        row[c] = f64::from(word[ids[r] as usize * h + c])
                            + f64::from(pos[poss[r] as usize * h + c])
                            + f64::from(typ[types[r] as usize * h + c]);
                    }
                    oracle_ln_row(row, &gamma, &beta, 1e-12);
                }
                check(&*be, &format!("embed_ln t={t} h={h}"), &out, &want);
            }
            // An index outside its table is an error, not an out-of-bounds read.
            let z = vec![0f32; 64];
            let tb =
                EmbedTables { word: &z, pos: &z, typ: &z, gamma: &z[..32], beta: &z[..32], hidden: 32, eps: 1e-12 };
            let mut out = poisoned(32);
            assert!(matches!(
                be.embed_layernorm(&tb, &[2], &[0], &[0], &mut out),
                Err(OpError::Shape(ShapeError::Index { .. }))
            ));
        }
    }

    #[test]
    fn layernorm_matches_oracle() {
        let mut rng = Rng::new(2);
        for be in backends() {
            for (rows, h) in [(1usize, 8usize), (33, 384), (100, 768), (5, 1000)] {
                let x: Vec<f32> = rounded(&*be, (0..rows * h).map(|_| 3.0 + 2.0 * rng.normal()).collect());
                let gamma: Vec<f32> = (0..h).map(|_| 1.0 + 0.2 * rng.normal()).collect();
                let beta = rng.normals(h, 0.2);
                let mut out = poisoned(rows * h);
                be.layernorm(&x, &gamma, &beta, h, 1e-5, &mut out).expect("layernorm");
                let mut want: Vec<f64> = x.iter().map(|&v| f64::from(v)).collect();
                for r in want.chunks_mut(h) {
                    oracle_ln_row(r, &gamma, &beta, 1e-5);
                }
                check(&*be, &format!("layernorm {rows}x{h}"), &out, &want);
            }
        }
    }

    #[test]
    fn gemm_matches_oracle_with_every_epilogue() {
        let mut rng = Rng::new(3);
        let epis = [
            Epilogue::default(),
            Epilogue { gelu: true, residual: false },
            Epilogue { gelu: false, residual: true },
            Epilogue { gelu: true, residual: true },
        ];
        for be in backends() {
            for (i, (m, n, k)) in [
                (1usize, 8usize, 8usize),
                (16, 64, 40),
                (67, 136, 96),
                (130, 384, 384),
                (200, 96, 1536),
                (257, 1152, 64),
            ]
            .into_iter()
            .enumerate()
            {
                let epi = epis[i % epis.len()];
                let x = rounded(&*be, rng.normals(m * k, 1.0));
                let w = rounded(&*be, rng.normals(n * k, 1.0 / (k as f32).sqrt()));
                let bias = rng.normals(n, 0.5);
                let res = rounded(&*be, rng.normals(m * n, 1.0));
                let mut out = poisoned(m * n);
                be.gemm(&x, &w, &bias, epi.residual.then_some(&res[..]), m, n, k, epi, &mut out).expect("gemm");
                let mut want = vec![0f64; m * n];
                for r in 0..m {
                    for c in 0..n {
                        let mut s = f64::from(bias[c]);
                        for j in 0..k {
                            s += f64::from(x[r * k + j]) * f64::from(w[c * k + j]);
                        }
                        if epi.gelu {
                            s = 0.5 * s * (1.0 + erf_f64(s / std::f64::consts::SQRT_2));
                        }
                        if epi.residual {
                            s += f64::from(res[r * n + c]);
                        }
                        want[r * n + c] = s;
                    }
                }
                check(&*be, &format!("gemm {m}x{n}x{k} {epi:?}"), &out, &want);
            }
        }
    }

    #[test]
    fn attention_matches_oracle_on_packed_sequences() {
        let mut rng = Rng::new(4);
        for be in backends() {
            for (batch, max_len, heads, hd) in
                [(1usize, 1usize, 1usize, 32usize), (3, 70, 2, 32), (5, 150, 3, 64), (8, 20, 12, 32)]
            {
                let cu = seqlens(&mut rng, batch, max_len);
                let t = *cu.last().unwrap_or(&0) as usize;
                let h = heads * hd;
                let qkv = rounded(&*be, rng.normals(t * 3 * h, 1.0));
                let mut out = poisoned(t * h);
                be.attention(&qkv, &cu, heads, hd, &mut out).expect("attention");
                let mut want = vec![0f64; t * h];
                let scale = 1.0 / (hd as f64).sqrt();
                for b in 0..batch {
                    let (s0, s1) = (cu[b] as usize, cu[b + 1] as usize);
                    for hh in 0..heads {
                        for q in s0..s1 {
                            let sc: Vec<f64> = (s0..s1)
                                .map(|kk| {
                                    (0..hd)
                                        .map(|d| {
                                            f64::from(qkv[q * 3 * h + hh * hd + d])
                                                * f64::from(qkv[kk * 3 * h + h + hh * hd + d])
                                        })
                                        .sum::<f64>()
                                        * scale
                                })
                                .collect();
                            let mx = sc.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                            let e: Vec<f64> = sc.iter().map(|s| (s - mx).exp()).collect();
                            let z: f64 = e.iter().sum();
                            for d in 0..hd {
                                want[q * h + hh * hd + d] = (s0..s1)
                                    .zip(&e)
                                    .map(|(kk, p)| p * f64::from(qkv[kk * 3 * h + 2 * h + hh * hd + d]))
                                    .sum::<f64>()
                                    / z;
                            }
                        }
                    }
                }
                check(&*be, &format!("attention b={batch} t={t} heads={heads} d={hd}"), &out, &want);
            }
        }
    }

    #[test]
    fn pooling_matches_oracle() {
        let mut rng = Rng::new(5);
        for be in backends() {
            for (batch, max_len, h, pooling) in [
                (1usize, 1usize, 32usize, Pooling::Mean),
                (4, 40, 384, Pooling::Mean),
                (6, 30, 1024, Pooling::Cls),
                (3, 9, 100, Pooling::Mean),
            ] {
                let cu = seqlens(&mut rng, batch, max_len);
                let t = *cu.last().unwrap_or(&0) as usize;
                let x = rounded(&*be, rng.normals(t * h, 1.0));
                let mut out = poisoned(batch * h);
                be.pool_l2(&x, &cu, h, pooling, &mut out).expect("pool");
                let mut want = vec![0f64; batch * h];
                for b in 0..batch {
                    let s0 = cu[b] as usize;
                    let s1 = if pooling == Pooling::Cls { s0 + 1 } else { cu[b + 1] as usize };
                    let row = &mut want[b * h..(b + 1) * h];
                    for tt in s0..s1 {
                        for c in 0..h {
                            row[c] += f64::from(x[tt * h + c]) / (s1 - s0) as f64;
                        }
                    }
                    let nrm = row.iter().map(|v| v * v).sum::<f64>().sqrt();
                    row.iter_mut().for_each(|v| *v /= nrm);
                }
                check(&*be, &format!("pool b={batch} h={h} {pooling:?}"), &out, &want);
            }
        }
    }

    #[test]
    fn topk_matches_oracle() {
        let mut rng = Rng::new(6);
        let unit = |rng: &mut Rng, n: usize, d: usize| -> Vec<f32> {
            let mut v = rng.normals(n * d, 1.0);
            for r in v.chunks_mut(d) {
                let s = r.iter().map(|x| x * x).sum::<f32>().sqrt();
                r.iter_mut().for_each(|x| *x /= s);
            }
            v
        };
        for be in backends() {
            for (n, nq, d, k) in
                [(1usize, 1usize, 32usize, 1usize), (700, 3, 384, 10), (5000, 2, 64, 50), (1030, 1, 100, 1024)]
            {
                let stored = unit(&mut rng, n, d);
                let q = unit(&mut rng, nq, d);
                let got = be.cosine_topk(&q, &stored, d, k).expect("topk");
                assert_eq!(got.len(), nq);
                for (qi, hits) in got.iter().enumerate() {
                    let mut all: Vec<(f64, u32)> = stored
                        .chunks(d)
                        .enumerate()
                        .map(|(i, s)| {
                            (
                                s.iter()
                                    .zip(&q[qi * d..(qi + 1) * d])
                                    .map(|(a, b)| f64::from(*a) * f64::from(*b))
                                    .sum(),
                                i as u32,
                            )
                        })
                        .collect();
                    all.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
                    assert_eq!(hits.len(), k, "{}", be.label());
                    for (j, hit) in hits.iter().enumerate() {
                        // Scores within f32 rounding; the index either matches or is a near-tie.
                        assert!(
                            (f64::from(hit.score) - all[j].0).abs() < 1e-5,
                            "{} rank {j}: {hit:?} vs {:?}",
                            be.label(),
                            all[j]
                        );
                        let exact = all.iter().find(|a| a.1 == hit.index).map(|a| a.0).unwrap_or(f64::NAN);
                        assert!(
                            (exact - all[j].0).abs() < 1e-5,
                            "{} rank {j}: index {} has score {exact}",
                            be.label(),
                            hit.index
                        );
                    }
                    let mut seen: Vec<u32> = hits.iter().map(|h| h.index).collect();
                    seen.sort_unstable();
                    seen.dedup();
                    assert_eq!(seen.len(), k, "{}: duplicate indices", be.label());
                }
                println!("{} topk n={n} nq={nq} d={d} k={k}: ok", be.label());
            }
        }
    }

    #[test]
    fn scrub_zeroes_and_verifies() {
        for be in backends() {
            for bytes in [1usize, 256, 4096 + 16, 3 << 20] {
                let got = be.scrub_roundtrip(bytes).expect("scrub");
                assert!(got >= bytes, "{}", be.label());
            }
        }
    }
}
