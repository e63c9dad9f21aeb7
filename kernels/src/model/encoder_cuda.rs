//! The encoder forward pass, embedding store and top-k search on one owner's GPU context.
//!
//! Weights are uploaded once as 16-bit (bf16 by default) with f32 biases and LayerNorm
//! parameters; the host staging copies are zeroized as soon as each tensor is on the device.
//! A batch's token ids, type ids, positions, sequence offsets and attention tiles travel in one
//! host-to-device copy; the layers then run as one stream of launches that, for batches up to
//! [`GRAPH_MAX_TOKENS`] tokens, is captured once per exact (tokens, sequences, tiles, pooling)
//! shape into a CUDA graph and replayed. Workspace buffers grow on demand; growing scrubs the old
//! ones (they held activations) and drops every captured graph, whose pointers would be stale.

use cudarc::driver::{CudaGraph, sys};

use super::{EncoderShape, HostWeights, ModelError, TokenBatch};
use crate::cpu::{Epilogue, Hit, Pooling};
use crate::cuda::{CudaDevice, DeviceBuffer, HalfFormat, Variant, attention_tiles};

/// Batches of at most this many tokens are replayed from captured CUDA graphs.
pub const GRAPH_MAX_TOKENS: usize = 4096;
/// Captured graphs kept per encoder (oldest dropped first).
const GRAPH_SLOTS: usize = 16;

struct DevLayer {
    wqkv: DeviceBuffer<u16>,
    bqkv: DeviceBuffer<f32>,
    wo: DeviceBuffer<u16>,
    bo: DeviceBuffer<f32>,
    ln1_g: DeviceBuffer<f32>,
    ln1_b: DeviceBuffer<f32>,
    w1: DeviceBuffer<u16>,
    b1: DeviceBuffer<f32>,
    w2: DeviceBuffer<u16>,
    b2: DeviceBuffer<f32>,
    ln2_g: DeviceBuffer<f32>,
    ln2_b: DeviceBuffer<f32>,
}

struct DevWeights {
    word: DeviceBuffer<u16>,
    pos: DeviceBuffer<u16>,
    typ: DeviceBuffer<u16>,
    emb_g: DeviceBuffer<f32>,
    emb_b: DeviceBuffer<f32>,
    layers: Vec<DevLayer>,
}

struct Workspace {
    tokens: usize,
    seqs: usize,
    tiles: usize,
    /// [ids | type ids | positions] (3 × tokens), cu (seqs + 1), tiles (2 × tiles).
    meta: DeviceBuffer<u32>,
    hid: DeviceBuffer<u16>,
    h1: DeviceBuffer<u16>,
    tmp: DeviceBuffer<u16>,
    ctx: DeviceBuffer<u16>,
    qkv: DeviceBuffer<u16>,
    ff: DeviceBuffer<u16>,
    pooled: DeviceBuffer<f32>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
struct GraphKey {
    tokens: usize,
    seqs: usize,
    tiles: usize,
    pooling: i32,
}

/// Stored embeddings on the device, `[capacity, hidden]` f32, rows `[0, len)` valid.
struct DevStore {
    mat: DeviceBuffer<f32>,
    len: usize,
}

/// Scratch and results of a top-k launch.
struct TopkScratch {
    cand_s: DeviceBuffer<f32>,
    cand_i: DeviceBuffer<u32>,
    out_s: DeviceBuffer<f32>,
    out_i: DeviceBuffer<u32>,
}

pub(crate) struct CudaEncoder {
    pub(crate) dev: CudaDevice,
    fmt: HalfFormat,
    variant: Variant,
    shape: EncoderShape,
    w: DevWeights,
    ws: Option<Workspace>,
    graphs: Vec<(GraphKey, CudaGraph)>,
    use_graphs: bool,
    store: Option<DevStore>,
    topk: Option<TopkScratch>,
}

// SAFETY: the only member that is not Send is `CudaGraph` (raw CUgraph / CUgraphExec handles).
// The CUDA driver lets any host thread use those handles provided calls on one graph are not
// concurrent ("Graph object thread safety" in the driver API guide). A CudaEncoder is used only
// through `&mut self` (its owner, EmbeddingBrain, is Send but not Sync), so calls are serialised,
// and every launch binds this encoder's context to the calling thread first.
unsafe impl Send for CudaEncoder {}

fn up16(dev: &CudaDevice, fmt: HalfFormat, v: &[f32]) -> Result<DeviceBuffer<u16>, ModelError> {
    let mut staged: Vec<u16> = v.iter().map(|&x| fmt.encode(x)).collect();
    let r = dev.upload(&staged);
    zeroize::Zeroize::zeroize(&mut staged);
    Ok(r?)
}

fn up32(dev: &CudaDevice, v: &[f32]) -> Result<DeviceBuffer<f32>, ModelError> {
    Ok(dev.upload(v)?)
}

impl CudaEncoder {
    /// Uploads `w` to `dev`. Fails for head sizes the attention kernel does not have (32, 64).
    pub(crate) fn new(
        dev: CudaDevice,
        shape: EncoderShape,
        w: &HostWeights,
        fmt: HalfFormat,
        variant: Variant,
        use_graphs: bool,
    ) -> Result<Self, ModelError> {
        if !matches!(shape.head_dim(), 32 | 64) {
            return Err(ModelError::Config(format!(
                "head size {} has no GPU attention kernel (32, 64)",
                shape.head_dim()
            )));
        }
        let mut layers = Vec::with_capacity(w.layers.len());
        for l in &w.layers {
            layers.push(DevLayer {
                wqkv: up16(&dev, fmt, &l.wqkv)?,
                bqkv: up32(&dev, &l.bqkv)?,
                wo: up16(&dev, fmt, &l.wo)?,
                bo: up32(&dev, &l.bo)?,
                ln1_g: up32(&dev, &l.ln1_g)?,
                ln1_b: up32(&dev, &l.ln1_b)?,
                w1: up16(&dev, fmt, &l.w1)?,
                b1: up32(&dev, &l.b1)?,
                w2: up16(&dev, fmt, &l.w2)?,
                b2: up32(&dev, &l.b2)?,
                ln2_g: up32(&dev, &l.ln2_g)?,
                ln2_b: up32(&dev, &l.ln2_b)?,
            });
        }
        let weights = DevWeights {
            word: up16(&dev, fmt, &w.word)?,
            pos: up16(&dev, fmt, &w.pos)?,
            typ: up16(&dev, fmt, &w.typ)?,
            emb_g: up32(&dev, &w.emb_g)?,
            emb_b: up32(&dev, &w.emb_b)?,
            layers,
        };
        // Host-to-device copies from pageable memory have consumed their sources on return;
        // synchronise so upload faults surface here.
        dev.synchronize()?;
        Ok(CudaEncoder {
            dev,
            fmt,
            variant,
            shape,
            w: weights,
            ws: None,
            graphs: Vec::new(),
            use_graphs,
            store: None,
            topk: None,
        })
    }

    fn ensure_workspace(&mut self, tokens: usize, seqs: usize, tiles: usize) -> Result<(), ModelError> {
        if let Some(ws) = &self.ws
            && ws.tokens >= tokens
            && ws.seqs >= seqs
            && ws.tiles >= tiles
        {
            return Ok(());
        }
        let grow = |need: usize, have: usize| need.max(have).next_power_of_two().max(64);
        let (old_t, old_s, old_n) = self.ws.as_ref().map_or((0, 0, 0), |w| (w.tokens, w.seqs, w.tiles));
        let (tc, sc, nc) = (grow(tokens, old_t), grow(seqs, old_s), grow(tiles, old_n));
        // Drop graphs (stale pointers) and the old workspace (scrubbed by Drop) first, so peak
        // memory is not old + new.
        self.graphs.clear();
        self.ws = None;
        let (h, f, d) = (self.shape.hidden(), self.shape.ffn(), &self.dev);
        self.ws = Some(Workspace {
            tokens: tc,
            seqs: sc,
            tiles: nc,
            meta: d.alloc(3 * tc + sc + 1 + 2 * nc)?,
            hid: d.alloc(tc * h)?,
            h1: d.alloc(tc * h)?,
            tmp: d.alloc(tc * h)?,
            ctx: d.alloc(tc * h)?,
            qkv: d.alloc(tc * 3 * h)?,
            ff: d.alloc(tc * f)?,
            pooled: d.alloc(sc * h)?,
        });
        Ok(())
    }

    /// Runs the encoder on `batch`; the pooled embeddings stay on the device in the workspace.
    fn run(&mut self, batch: &TokenBatch, pooling: Pooling) -> Result<(), ModelError> {
        let (t, b) = (batch.tokens(), batch.sequences());
        crate::cpu::check_seqlens(&batch.cu, t)?;
        let s = &self.shape;
        for (idx, rows, what) in [
            (&batch.ids, s.vocab(), "word"),
            (&batch.type_ids, s.type_vocab(), "token type"),
            (&batch.pos_ids, s.max_positions(), "position"),
        ] {
            if let Some((token, &index)) = idx.iter().enumerate().find(|(_, i)| **i as usize >= rows) {
                return Err(crate::cpu::ShapeError::Index { what, index, token, rows }.into());
            }
        }
        let tiles = attention_tiles(&batch.cu);
        let ntiles = tiles.len() / 2;
        self.ensure_workspace(t, b, ntiles)?;
        let Some(ws) = self.ws.as_mut() else {
            return Err(ModelError::Config("workspace missing".into()));
        };
        let tc = ws.tokens;
        let mut meta = Vec::with_capacity(3 * tc + ws.seqs + 1 + 2 * ws.tiles);
        meta.extend_from_slice(&batch.ids);
        meta.resize(tc, 0);
        meta.extend_from_slice(&batch.type_ids);
        meta.resize(2 * tc, 0);
        meta.extend_from_slice(&batch.pos_ids);
        meta.resize(3 * tc, 0);
        meta.extend_from_slice(&batch.cu);
        meta.resize(3 * tc + ws.seqs + 1, 0);
        meta.extend(tiles.iter().map(|&v| v as u32));
        ws.meta.write(0, &meta)?;
        zeroize::Zeroize::zeroize(&mut meta);

        let key = GraphKey { tokens: t, seqs: b, tiles: ntiles, pooling: pooling.mode() };
        if !(self.use_graphs && t <= GRAPH_MAX_TOKENS) {
            return self.enqueue(key, pooling);
        }
        if let Some((_, g)) = self.graphs.iter().find(|(k, _)| *k == key) {
            return g.launch().map_err(|e| graph_err("cuGraphLaunch", e));
        }
        let stream = self.dev.stream().clone();
        stream
            .begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
            .map_err(|e| graph_err("cuStreamBeginCapture", e))?;
        let enqueued = self.enqueue(key, pooling);
        let graph =
            stream.end_capture(sys::CUgraphInstantiate_flags(0)).map_err(|e| graph_err("cuStreamEndCapture", e));
        enqueued?;
        match graph? {
            Some(g) => {
                g.launch().map_err(|e| graph_err("cuGraphLaunch", e))?;
                if self.graphs.len() >= GRAPH_SLOTS {
                    self.graphs.remove(0);
                }
                self.graphs.push((key, g));
                Ok(())
            }
            // An empty capture cannot happen (there is always a launch); run eagerly if it does.
            None => self.enqueue(key, pooling),
        }
    }

    /// Enqueues every launch of one forward pass (eagerly or into a capture).
    fn enqueue(&mut self, key: GraphKey, pooling: Pooling) -> Result<(), ModelError> {
        let s = self.shape;
        let (h, f, eps, fmt, var) = (s.hidden(), s.ffn(), s.eps(), self.fmt, self.variant);
        let (t, b, nt) = (key.tokens, key.seqs, key.tiles);
        let d = &self.dev;
        let w = &self.w;
        let Some(ws) = self.ws.as_mut() else {
            return Err(ModelError::Config("workspace missing".into()));
        };
        let tc = ws.tokens;
        let cu_at = 3 * tc;
        let tiles_at = cu_at + ws.seqs + 1;
        let ids = ws.meta.slice(0, t)?;
        let types = ws.meta.slice(tc, t)?;
        let pos = ws.meta.slice(2 * tc, t)?;
        let cu = ws.meta.slice_as::<i32>(cu_at, b + 1)?;
        let tiles = ws.meta.slice_as::<i32>(tiles_at, 2 * nt)?;
        d.embed_layernorm(
            fmt,
            ids,
            types,
            pos,
            w.word.view(),
            w.pos.view(),
            w.typ.view(),
            w.emb_g.view(),
            w.emb_b.view(),
            ws.hid.view_mut(),
            t,
            h,
            eps,
        )?;
        let none = Epilogue::default();
        let resid = Epilogue { gelu: false, residual: true };
        let gelu = Epilogue { gelu: true, residual: false };
        for l in &w.layers {
            d.gemm(fmt, var, ws.hid.view(), l.wqkv.view(), l.bqkv.view(), None, ws.qkv.view_mut(), t, 3 * h, h, none)?;
            d.attention(fmt, var, ws.qkv.view(), ws.ctx.view_mut(), cu, tiles, b, t, s.heads(), s.head_dim(), nt)?;
            d.gemm(
                fmt,
                var,
                ws.ctx.view(),
                l.wo.view(),
                l.bo.view(),
                Some(ws.hid.view()),
                ws.tmp.view_mut(),
                t,
                h,
                h,
                resid,
            )?;
            d.layernorm(fmt, ws.tmp.view(), l.ln1_g.view(), l.ln1_b.view(), ws.h1.view_mut(), t, h, eps)?;
            d.gemm(fmt, var, ws.h1.view(), l.w1.view(), l.b1.view(), None, ws.ff.view_mut(), t, f, h, gelu)?;
            d.gemm(
                fmt,
                var,
                ws.ff.view(),
                l.w2.view(),
                l.b2.view(),
                Some(ws.h1.view()),
                ws.tmp.view_mut(),
                t,
                h,
                f,
                resid,
            )?;
            d.layernorm(fmt, ws.tmp.view(), l.ln2_g.view(), l.ln2_b.view(), ws.hid.view_mut(), t, h, eps)?;
        }
        d.pool_l2(fmt, ws.hid.view(), cu, ws.pooled.view_mut(), b, t, h, pooling)?;
        Ok(())
    }

    /// Embeddings `[sequences, hidden]` of `batch`, downloaded.
    pub(crate) fn forward(&mut self, batch: &TokenBatch, pooling: Pooling) -> Result<Vec<f32>, ModelError> {
        self.run(batch, pooling)?;
        let n = batch.sequences() * self.shape.hidden();
        let mut out = vec![0f32; n];
        if let Some(ws) = &self.ws {
            ws.pooled.read_into(0, &mut out)?;
        }
        Ok(out)
    }

    /// Embeds `batch` and appends the rows to the device store.
    pub(crate) fn ingest(&mut self, batch: &TokenBatch, pooling: Pooling) -> Result<(), ModelError> {
        self.run(batch, pooling)?;
        let (b, h) = (batch.sequences(), self.shape.hidden());
        let have = self.store.as_ref().map_or(0, |s| s.len);
        let cap = self.store.as_ref().map_or(0, |s| s.mat.len() / h);
        if have + b > cap {
            let new_cap = (have + b).next_power_of_two().max(1024);
            let mut mat = self.dev.alloc::<f32>(new_cap * h)?;
            if let Some(old) = &self.store {
                self.dev.copy(old.mat.slice(0, have * h)?, mat.slice_mut(0, have * h)?)?;
            }
            // The old matrix is scrubbed when replaced (Drop).
            self.store = Some(DevStore { mat, len: have });
        }
        let (Some(store), Some(ws)) = (self.store.as_mut(), self.ws.as_ref()) else {
            return Err(ModelError::Config("store missing".into()));
        };
        self.dev.copy(ws.pooled.slice(0, b * h)?, store.mat.slice_mut(have * h, b * h)?)?;
        store.len += b;
        self.dev.synchronize()?;
        Ok(())
    }

    /// Rows in the device store.
    pub(crate) fn stored(&self) -> usize {
        self.store.as_ref().map_or(0, |s| s.len)
    }

    /// Embeds the single-sequence `batch` and returns the best `k` stored rows.
    pub(crate) fn search(&mut self, batch: &TokenBatch, pooling: Pooling, k: usize) -> Result<Vec<Hit>, ModelError> {
        let n = self.stored();
        let k = k.min(n).min(crate::cuda::TOPK_MAX_K);
        if k == 0 || batch.sequences() != 1 {
            return Ok(Vec::new());
        }
        self.run(batch, pooling)?;
        let h = self.shape.hidden();
        let scratch = CudaDevice::topk_scratch_len(n, 1, k);
        let fits = self.topk.as_ref().is_some_and(|s| s.cand_s.len() >= scratch && s.out_s.len() >= k);
        if !fits {
            self.topk = None;
            let d = &self.dev;
            let cap = scratch.next_power_of_two();
            self.topk = Some(TopkScratch {
                cand_s: d.alloc(cap)?,
                cand_i: d.alloc(cap)?,
                out_s: d.alloc(k.next_power_of_two())?,
                out_i: d.alloc(k.next_power_of_two())?,
            });
        }
        let (Some(store), Some(ws), Some(sc)) = (self.store.as_ref(), self.ws.as_ref(), self.topk.as_mut()) else {
            return Err(ModelError::Config("search state missing".into()));
        };
        self.dev.topk(
            ws.pooled.slice(0, h)?,
            store.mat.slice(0, n * h)?,
            1,
            n,
            h,
            k,
            sc.cand_s.view_mut(),
            sc.cand_i.view_mut(),
            sc.out_s.view_mut(),
            sc.out_i.view_mut(),
        )?;
        let mut s = vec![0f32; k];
        let mut i = vec![0u32; k];
        sc.out_s.read_into(0, &mut s)?;
        sc.out_i.read_into(0, &mut i)?;
        Ok(s.into_iter().zip(i).filter(|(_, i)| *i != u32::MAX).map(|(score, index)| Hit { index, score }).collect())
    }

    /// Scrubs and frees every device buffer (weights, workspace, store, scratch), in that order
    /// of size, returning the bytes released; the first failure is returned after trying all.
    pub(crate) fn unload(mut self) -> Result<u64, crate::cuda::DeviceError> {
        self.graphs.clear();
        let mut total = 0u64;
        let mut first_err = None;
        let mut note = |r: Result<usize, crate::cuda::DeviceError>| match r {
            Ok(b) => total += b as u64,
            Err(e) => {
                if first_err.is_none() {
                    first_err = Some(e);
                }
            }
        };
        if let Some(ws) = self.ws.take() {
            for b in [ws.hid, ws.h1, ws.tmp, ws.ctx, ws.qkv, ws.ff] {
                note(b.release());
            }
            note(ws.meta.release());
            note(ws.pooled.release());
        }
        if let Some(s) = self.store.take() {
            note(s.mat.release());
        }
        if let Some(s) = self.topk.take() {
            note(s.cand_s.release());
            note(s.cand_i.release());
            note(s.out_s.release());
            note(s.out_i.release());
        }
        let w = self.w;
        for b in [w.word, w.pos, w.typ] {
            note(b.release());
        }
        note(w.emb_g.release());
        note(w.emb_b.release());
        for l in w.layers {
            for b in [l.wqkv, l.wo, l.w1, l.w2] {
                note(b.release());
            }
            for b in [l.bqkv, l.bo, l.ln1_g, l.ln1_b, l.b1, l.b2, l.ln2_g, l.ln2_b] {
                note(b.release());
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(total),
        }
    }
}

fn graph_err(call: &'static str, e: cudarc::driver::DriverError) -> ModelError {
    ModelError::Device(crate::cuda::DeviceError::Driver { call, code: format!("{:?}", e.0) })
}
