//! The CUDA device layer: one non-primary context per owner, device buffers that are scrubbed
//! (zeroed and verified) before they are freed, and typed, bounds-checked kernel launches.
//!
//! Layering: `cudarc::driver::{sys, result}` (raw driver calls) → this module's private helpers,
//! each `unsafe` block with its invariant → the safe types [`CudaDevice`], [`DeviceBuffer`] and
//! the launch methods, whose argument checks are the bounds the `// SAFETY:` lines rely on.
//!
//! Isolation:
//! - [`CudaDevice::open`] creates its own context with `cuCtxCreate_v4`
//!   (`CudaContext::new_non_primary`), never the process's primary context that
//!   `CudaContext::new` would share. Modules, streams, graphs and allocations live in that
//!   context and die with it.
//! - Memory comes from `cuMemAlloc` (not the stream-ordered pool, which is per device and would
//!   hand one context's freed blocks to another context of the same process). New blocks are
//!   zero-filled before use.
//! - A [`DeviceBuffer`] is scrubbed by `scrub_zero_verify` when dropped or on request: the kernel
//!   writes zeros and reads them back in the same pass, counting words; the host requires "no
//!   non-zero word" and "count == words". Only then is the block freed. A block whose scrub could
//!   not be verified is never freed back to the driver (it stays allocated until the context is
//!   destroyed) and is counted in [`MemStats::scrub_failures`]; the owner must then treat the
//!   device as tainted (see docs/kernels.md).

use std::marker::PhantomData;
use std::sync::{Arc, Mutex};

use cudarc::driver::{
    CudaContext, CudaFunction, CudaModule, CudaStream, DriverError, LaunchConfig, PushKernelArg, result, sys,
};
use thiserror::Error;

use crate::nvrtc::{CompileError, KernelCache, KernelFile, Target, target_for};
use crate::probe::{self, ProbeError};

/// 16-bit device storage format of weights and activations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum HalfFormat {
    /// bfloat16 (8-bit exponent): the default, same range as f32.
    #[default]
    Bf16,
    /// IEEE binary16.
    F16,
}

impl HalfFormat {
    fn idx(self) -> usize {
        match self {
            HalfFormat::Bf16 => 0,
            HalfFormat::F16 => 1,
        }
    }
    /// Rounds an f32 to this format (round to nearest even) and returns the bits.
    pub fn encode(self, v: f32) -> u16 {
        match self {
            HalfFormat::Bf16 => half::bf16::from_f32(v).to_bits(),
            HalfFormat::F16 => half::f16::from_f32(v).to_bits(),
        }
    }
    /// Widens bits of this format to f32 (exact).
    pub fn decode(self, bits: u16) -> f32 {
        match self {
            HalfFormat::Bf16 => half::bf16::from_bits(bits).to_f32(),
            HalfFormat::F16 => half::f16::from_bits(bits).to_f32(),
        }
    }
    /// Rounds every element through this format (what the device will see).
    pub fn round_slice(self, v: &mut [f32]) {
        for x in v {
            *x = self.decode(self.encode(*x));
        }
    }
}

/// Which GPU implementation of the two heavy kernels to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Variant {
    /// Tensor-core GEMM and attention (the production path).
    #[default]
    TensorCore,
    /// Plain SIMT kernels: slow, simple, for narrowing down a parity failure.
    Simple,
}

/// Errors of the device layer.
#[derive(Debug, Error)]
pub enum DeviceError {
    /// The CUDA driver library is not usable.
    #[error("CUDA driver unavailable")]
    NoDriver(#[source] ProbeError),
    /// NVRTC is not usable (kernels cannot be compiled).
    #[error("NVRTC unavailable")]
    NoNvrtc(#[source] ProbeError),
    /// The driver loaded but reports no such device.
    #[error("no CUDA device {ordinal} (found {count})")]
    NoDevice {
        /// The requested ordinal.
        ordinal: usize,
        /// Devices present.
        count: usize,
    },
    /// The device is older than sm_80 (the kernels need bf16 mma, ldmatrix, cp.async).
    #[error("GPU compute capability {0}.{1} is below the 8.0 these kernels need")]
    TooOld(u32, u32),
    /// A driver call failed.
    #[error("CUDA {call} failed: {code}")]
    Driver {
        /// What was being done.
        call: &'static str,
        /// The driver's error name (e.g. CUDA_ERROR_ILLEGAL_ADDRESS).
        code: String,
    },
    /// Compiling a kernel failed.
    #[error("kernel compile")]
    Compile(#[from] CompileError),
    /// Device memory is exhausted, or the owner's device-memory budget would be exceeded.
    #[error("out of device memory: {requested} bytes requested, {live} live, budget {budget}")]
    OutOfMemory {
        /// Bytes of the failed request.
        requested: usize,
        /// Bytes held by this device handle at the time.
        live: usize,
        /// The budget (`usize::MAX` when only the hardware limits).
        budget: usize,
    },
    /// A scrub's read-back was not all zeros, or did not cover every word.
    #[error("scrub verification failed: {bytes} bytes, nonzero={nonzero}, words checked {checked} of {expected}")]
    ScrubFailed {
        /// Size of the buffer.
        bytes: usize,
        /// A non-zero word was read back.
        nonzero: bool,
        /// Words the kernel reported checking.
        checked: u64,
        /// Words in the buffer.
        expected: u64,
    },
    /// A launch argument does not fit the kernel's bounds (a bug in the caller).
    #[error("kernel {kernel}: {what}")]
    Bounds {
        /// The kernel.
        kernel: &'static str,
        /// What is wrong.
        what: String,
    },
}

fn drv(call: &'static str) -> impl Fn(DriverError) -> DeviceError {
    // The enum's Debug name; DriverError's own Debug would call back into the driver.
    move |e| DeviceError::Driver { call, code: format!("{:?}", e.0) }
}

fn bounds(kernel: &'static str, what: impl Into<String>) -> DeviceError {
    DeviceError::Bounds { kernel, what: what.into() }
}

/// Whether a usable GPU is present: driver and NVRTC libraries, at least one device. Never
/// panics; returns the number of devices.
pub fn available() -> Result<usize, DeviceError> {
    probe::driver().map_err(DeviceError::NoDriver)?;
    probe::nvrtc().map_err(DeviceError::NoNvrtc)?;
    // cudarc opens the same driver library the probe just validated.
    let n = CudaContext::device_count().map_err(drv("cuDeviceGetCount"))?;
    let n = usize::try_from(n).unwrap_or(0);
    if n == 0 {
        return Err(DeviceError::NoDevice { ordinal: 0, count: 0 });
    }
    Ok(n)
}

/// Allocation accounting of one device handle.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemStats {
    /// Bytes currently allocated.
    pub live_bytes: usize,
    /// Highest `live_bytes` seen.
    pub peak_bytes: usize,
    /// Buffers currently allocated.
    pub live_buffers: usize,
    /// Bytes scrubbed and verified.
    pub scrubbed_bytes: u64,
    /// Successful verified scrubs.
    pub scrubs: u64,
    /// Scrubs that could not be verified (those blocks were not freed).
    pub scrub_failures: u64,
    /// Bytes held back from the driver because their scrub could not be verified.
    pub unscrubbed_bytes: usize,
}

/// Facts about the device behind a [`CudaDevice`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceInfo {
    /// Device ordinal.
    pub ordinal: usize,
    /// Marketing name.
    pub name: String,
    /// Compute capability.
    pub compute: (u32, u32),
    /// Streaming multiprocessors.
    pub sms: u32,
    /// Total device memory in bytes.
    pub total_mem: usize,
    /// What the kernels were compiled to.
    pub target: Target,
}

struct Inner {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    scrub: CudaFunction,
    /// 16 bytes: u32 nonzero flag, u32 pad, u64 word count. Holds no tenant data.
    flags: sys::CUdeviceptr,
    stats: Mutex<MemStats>,
    budget: usize,
    sms: u32,
    debug_sync: bool,
}

impl Inner {
    fn stats(&self) -> std::sync::MutexGuard<'_, MemStats> {
        // Counters only: a poisoned lock still holds consistent numbers.
        self.stats.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn bind(&self) -> Result<(), DeviceError> {
        self.ctx.bind_to_thread().map_err(drv("cuCtxSetCurrent"))
    }

    fn sync(&self) -> Result<(), DeviceError> {
        self.stream.synchronize().map_err(drv("cuStreamSynchronize"))
    }

    /// Zeroes `bytes` at `ptr` and verifies it in one kernel pass.
    fn scrub_verify(&self, ptr: sys::CUdeviceptr, bytes: usize) -> Result<(), DeviceError> {
        self.bind()?;
        let n16 = (bytes / 16) as u64;
        // SAFETY: `flags` is this handle's own 16-byte allocation, alive as long as `self`.
        unsafe { result::memset_d8_async(self.flags, 0, 16, self.stream.cu_stream()) }
            .map_err(drv("cuMemsetD8Async"))?;
        let threads = 256u32;
        let want = n16.div_ceil(u64::from(threads) * 4).max(1);
        let blocks = u32::try_from(want.min(u64::from(self.sms) * 16)).unwrap_or(1).max(1);
        let (p, n, f) = (ptr, n16, self.flags);
        let cfg = LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (threads, 1, 1), shared_mem_bytes: 0 };
        let mut b = self.stream.launch_builder(&self.scrub);
        b.arg(&p).arg(&n).arg(&f);
        // SAFETY: scrub.cu `scrub_zero_verify(uint4* p, u64 n16, u32* flags)`. `ptr` is a live
        // allocation of `bytes` bytes (a multiple of 256, so n16 * 16 == bytes) and the kernel's
        // grid-stride loop touches only words [0, n16). It writes nothing but that buffer and
        // the 16-byte `flags` block; it must not write any other buffer.
        unsafe { b.launch(cfg) }.map_err(drv("launch scrub_zero_verify"))?;
        let mut out = [0u32; 4];
        // SAFETY: `out` is 16 writable host bytes; `flags` is a live 16-byte device block.
        unsafe { result::memcpy_dtoh_async(&mut out[..], self.flags, self.stream.cu_stream()) }
            .map_err(drv("cuMemcpyDtoHAsync"))?;
        self.sync()?;
        let checked = u64::from(out[2]) | (u64::from(out[3]) << 32);
        if out[0] != 0 || checked != n16 {
            return Err(DeviceError::ScrubFailed { bytes, nonzero: out[0] != 0, checked, expected: n16 });
        }
        let mut s = self.stats();
        s.scrubs += 1;
        s.scrubbed_bytes += bytes as u64;
        Ok(())
    }

    /// Scrubs then frees; on a failed scrub keeps the block allocated and counts the failure.
    fn release(&self, ptr: sys::CUdeviceptr, bytes: usize) -> Result<(), DeviceError> {
        let scrubbed = self.scrub_verify(ptr, bytes);
        let mut s = self.stats();
        s.live_bytes = s.live_bytes.saturating_sub(bytes);
        s.live_buffers = s.live_buffers.saturating_sub(1);
        if let Err(e) = scrubbed {
            s.scrub_failures += 1;
            s.unscrubbed_bytes += bytes;
            return Err(e);
        }
        drop(s);
        // SAFETY: `ptr` came from cuMemAlloc in this context, is freed exactly once (here, by the
        // owning DeviceBuffer's release), and the stream was synchronised by scrub_verify, so no
        // queued work still uses it.
        unsafe { result::free_sync(ptr) }.map_err(drv("cuMemFree"))
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if self.bind().is_ok() {
            // SAFETY: `flags` was allocated by cuMemAlloc in this context and is freed once,
            // here, after every DeviceBuffer (each holds an Arc<Inner>) is gone.
            let _ = unsafe { result::free_sync(self.flags) };
        }
    }
}

/// The loaded kernels of one device.
struct Fns {
    embed_ln: [CudaFunction; 2],
    layernorm: [CudaFunction; 2],
    gemm_tc: [CudaFunction; 2],
    gemm_simple: [CudaFunction; 2],
    attn_tc: [[CudaFunction; 2]; 2],
    attn_simple: [[CudaFunction; 2]; 2],
    pool: [CudaFunction; 2],
    topk_partial: CudaFunction,
    topk_merge: CudaFunction,
    _modules: Vec<Arc<CudaModule>>,
}

/// Options for opening a device.
#[derive(Debug, Clone, Default)]
pub struct DeviceOptions {
    /// Device-memory budget of this handle in bytes (`None`: the hardware's limit). Exceeding it
    /// is [`DeviceError::OutOfMemory`].
    pub memory_budget: Option<usize>,
    /// Synchronise and check for errors after every launch (slow; for debugging and the
    /// sanitizer runs). Also enabled by `BULWARK_CUDA_DEBUG_SYNC=1`.
    pub debug_sync: bool,
}

/// One owner's handle on one GPU: its own CUDA context, stream, kernels and allocations.
/// Cheap to clone (shared handle); the context is destroyed when the last clone and the last
/// buffer are gone.
#[derive(Clone)]
pub struct CudaDevice {
    inner: Arc<Inner>,
    fns: Arc<Fns>,
    info: DeviceInfo,
}

impl std::fmt::Debug for CudaDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaDevice").field("info", &self.info).finish_non_exhaustive()
    }
}

const TILE_ROWS_GEMM: usize = 128;
const MAX_HIDDEN: usize = 1024;
const TOPK_CHUNK: usize = 512;
/// Largest k a top-k launch accepts.
pub const TOPK_MAX_K: usize = 1024;

impl CudaDevice {
    /// Opens device `ordinal` with a new non-primary context and compiles (or takes from
    /// `cache`) every kernel for its architecture.
    pub fn open(ordinal: usize, cache: &KernelCache, opts: &DeviceOptions) -> Result<Self, DeviceError> {
        let count = available()?;
        if ordinal >= count {
            return Err(DeviceError::NoDevice { ordinal, count });
        }
        let ctx = CudaContext::new_non_primary(ordinal, 0).map_err(drv("cuCtxCreate"))?;
        // SAFETY: this crate never uses cudarc's CudaSlice (buffers are raw cuMemAlloc blocks
        // used on the one stream below), so there is no cross-stream use to track.
        unsafe { ctx.disable_event_tracking() };
        let (major, minor) = ctx.compute_capability().map_err(drv("cuDeviceGetAttribute"))?;
        let (major, minor) = (u32::try_from(major).unwrap_or(0), u32::try_from(minor).unwrap_or(0));
        if major < 8 {
            return Err(DeviceError::TooOld(major, minor));
        }
        let sms = ctx
            .attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .map_err(drv("cuDeviceGetAttribute"))?;
        let info = DeviceInfo {
            ordinal,
            name: ctx.name().map_err(drv("cuDeviceGetName"))?,
            compute: (major, minor),
            sms: u32::try_from(sms).unwrap_or(1).max(1),
            total_mem: ctx.total_mem().map_err(drv("cuDeviceTotalMem"))?,
            target: target_for(major, minor),
        };
        let stream = ctx.new_stream().map_err(drv("cuStreamCreate"))?;
        let mut modules = Vec::new();
        let mut load = |file: KernelFile| -> Result<Arc<CudaModule>, DeviceError> {
            let compiled = cache.get(file, info.target)?;
            let ptx = match info.target {
                Target::Cubin(_) => cudarc::nvrtc::Ptx::from_binary(compiled.image.clone()),
                // PTX text without NUL (checked when compiled or read from disk).
                Target::Ptx(_) => cudarc::nvrtc::Ptx::from_src(String::from_utf8_lossy(&compiled.image).into_owned()),
            };
            let m = ctx.load_module(ptx).map_err(drv("cuModuleLoadData"))?;
            modules.push(m.clone());
            Ok(m)
        };
        let f = |m: &Arc<CudaModule>, name: &'static str| m.load_function(name).map_err(drv("cuModuleGetFunction"));
        let m_emb = load(KernelFile::EmbedLn)?;
        let m_ln = load(KernelFile::LayerNorm)?;
        let m_gemm = load(KernelFile::Gemm)?;
        let m_att = load(KernelFile::Attention)?;
        let m_pool = load(KernelFile::Pool)?;
        let m_topk = load(KernelFile::TopK)?;
        let m_scrub = load(KernelFile::Scrub)?;
        let fns = Fns {
            embed_ln: [f(&m_emb, "embed_ln_bf16")?, f(&m_emb, "embed_ln_f16")?],
            layernorm: [f(&m_ln, "layernorm_bf16")?, f(&m_ln, "layernorm_f16")?],
            gemm_tc: [f(&m_gemm, "gemm_tc_bf16")?, f(&m_gemm, "gemm_tc_f16")?],
            gemm_simple: [f(&m_gemm, "gemm_simple_bf16")?, f(&m_gemm, "gemm_simple_f16")?],
            attn_tc: [
                [f(&m_att, "attn_tc_d32_bf16")?, f(&m_att, "attn_tc_d32_f16")?],
                [f(&m_att, "attn_tc_d64_bf16")?, f(&m_att, "attn_tc_d64_f16")?],
            ],
            attn_simple: [
                [f(&m_att, "attn_simple_d32_bf16")?, f(&m_att, "attn_simple_d32_f16")?],
                [f(&m_att, "attn_simple_d64_bf16")?, f(&m_att, "attn_simple_d64_f16")?],
            ],
            pool: [f(&m_pool, "pool_l2_bf16")?, f(&m_pool, "pool_l2_f16")?],
            topk_partial: f(&m_topk, "topk_partial")?,
            topk_merge: f(&m_topk, "topk_merge")?,
            _modules: modules,
        };
        let scrub = f(&m_scrub, "scrub_zero_verify")?;
        ctx.bind_to_thread().map_err(drv("cuCtxSetCurrent"))?;
        // SAFETY: 16 bytes from cuMemAlloc in the context bound on the line above; freed in
        // Inner's Drop.
        let flags = unsafe { result::malloc_sync(16) }.map_err(drv("cuMemAlloc"))?;
        let debug_sync = opts.debug_sync || std::env::var("BULWARK_CUDA_DEBUG_SYNC").is_ok_and(|v| v == "1");
        let inner = Inner {
            ctx,
            stream,
            scrub,
            flags,
            stats: Mutex::new(MemStats::default()),
            budget: opts.memory_budget.unwrap_or(usize::MAX),
            sms: info.sms,
            debug_sync,
        };
        Ok(CudaDevice { inner: Arc::new(inner), fns: Arc::new(fns), info })
    }

    /// Facts about the device.
    pub fn info(&self) -> &DeviceInfo {
        &self.info
    }

    /// Allocation and scrub counters of this handle.
    pub fn stats(&self) -> MemStats {
        *self.inner.stats()
    }

    /// Whether this handle's context is a primary context (always false; for tests and audits).
    pub fn is_primary_context(&self) -> bool {
        self.inner.ctx.is_primary()
    }

    /// Raw context handle, to show two owners hold different contexts.
    pub fn context_id(&self) -> usize {
        self.inner.ctx.cu_ctx() as usize
    }

    /// Waits for all queued work and reports any asynchronous kernel fault.
    pub fn synchronize(&self) -> Result<(), DeviceError> {
        self.inner.bind()?;
        self.inner.sync()
    }

    /// Free and total memory of the device as the driver reports it.
    pub fn mem_info(&self) -> Result<(usize, usize), DeviceError> {
        self.inner.ctx.mem_get_info().map_err(drv("cuMemGetInfo"))
    }

    pub(crate) fn stream(&self) -> &Arc<CudaStream> {
        &self.inner.stream
    }

    /// Allocates `len` elements, zero-filled. Sizes are rounded up to 256 bytes.
    pub fn alloc<T: DeviceElem>(&self, len: usize) -> Result<DeviceBuffer<T>, DeviceError> {
        let raw = len.checked_mul(std::mem::size_of::<T>()).ok_or(DeviceError::OutOfMemory {
            requested: usize::MAX,
            live: self.stats().live_bytes,
            budget: self.inner.budget,
        })?;
        let bytes = raw.max(1).div_ceil(256) * 256;
        {
            let s = self.inner.stats();
            if s.live_bytes.saturating_add(bytes) > self.inner.budget {
                return Err(DeviceError::OutOfMemory {
                    requested: bytes,
                    live: s.live_bytes,
                    budget: self.inner.budget,
                });
            }
        }
        self.inner.bind()?;
        // SAFETY: cuMemAlloc of `bytes` in this handle's context (bound above); the block is
        // owned by the returned DeviceBuffer, which scrubs and frees it once.
        let ptr = match unsafe { result::malloc_sync(bytes) } {
            Ok(p) => p,
            Err(e) if e.0 == sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY => {
                return Err(DeviceError::OutOfMemory {
                    requested: bytes,
                    live: self.stats().live_bytes,
                    budget: self.inner.budget,
                });
            }
            Err(e) => return Err(drv("cuMemAlloc")(e)),
        };
        {
            let mut s = self.inner.stats();
            s.live_bytes += bytes;
            s.live_buffers += 1;
            s.peak_bytes = s.peak_bytes.max(s.live_bytes);
        }
        let buf = DeviceBuffer { dev: self.inner.clone(), ptr, len, bytes, live: true, _t: PhantomData };
        // SAFETY: `ptr` is the live `bytes`-byte block just allocated.
        unsafe { result::memset_d8_async(ptr, 0, bytes, self.inner.stream.cu_stream()) }
            .map_err(drv("cuMemsetD8Async"))?;
        Ok(buf)
    }

    /// Allocates and fills from `src`.
    pub fn upload<T: DeviceElem>(&self, src: &[T]) -> Result<DeviceBuffer<T>, DeviceError> {
        let mut b = self.alloc(src.len())?;
        b.write(0, src)?;
        Ok(b)
    }

    fn after_launch(&self, what: &'static str, r: Result<(), DriverError>) -> Result<(), DeviceError> {
        r.map_err(drv(what))?;
        if self.inner.debug_sync && !self.is_capturing() {
            self.inner.sync()?;
        }
        Ok(())
    }

    fn is_capturing(&self) -> bool {
        !matches!(self.inner.stream.capture_status(), Ok(sys::CUstreamCaptureStatus::CU_STREAM_CAPTURE_STATUS_NONE))
    }

    /// Embedding gather (token + position + type) fused with LayerNorm, `t` tokens of width
    /// `h`, into `out [t, h]`.
    #[allow(clippy::too_many_arguments)]
    pub fn embed_layernorm(
        &self,
        fmt: HalfFormat,
        ids: DevSlice<'_, u32>,
        type_ids: DevSlice<'_, u32>,
        pos_ids: DevSlice<'_, u32>,
        word: DevSlice<'_, u16>,
        pos: DevSlice<'_, u16>,
        typ: DevSlice<'_, u16>,
        gamma: DevSlice<'_, f32>,
        beta: DevSlice<'_, f32>,
        out: DevSliceMut<'_, u16>,
        t: usize,
        h: usize,
        eps: f32,
    ) -> Result<(), DeviceError> {
        const K: &str = "embed_ln";
        if h == 0 || h > MAX_HIDDEN || t == 0 {
            return Err(bounds(K, format!("t={t} h={h} (need t >= 1, 1 <= h <= {MAX_HIDDEN})")));
        }
        for (n, l) in [("ids", ids.len), ("type_ids", type_ids.len), ("pos_ids", pos_ids.len)] {
            if l < t {
                return Err(bounds(K, format!("{n} has {l} < {t}")));
            }
        }
        if gamma.len < h || beta.len < h || out.len < t * h {
            return Err(bounds(K, "gamma/beta/out too short"));
        }
        let rows = |s: &DevSlice<'_, u16>| s.len / h;
        let (v, p, tt) = (rows(&word), rows(&pos), rows(&typ));
        let (ti, hi, vi, pi, tti) = (to_i32(K, t)?, to_i32(K, h)?, to_i32(K, v)?, to_i32(K, p)?, to_i32(K, tt)?);
        let (a0, a1, a2, a3, a4, a5, a6, a7, a8) =
            (ids.ptr, type_ids.ptr, pos_ids.ptr, word.ptr, pos.ptr, typ.ptr, gamma.ptr, beta.ptr, out.ptr);
        let cfg =
            LaunchConfig { grid_dim: (grid1(K, t.div_ceil(8))?, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
        let f = &self.fns.embed_ln[fmt.idx()];
        self.inner.bind()?;
        let mut b = self.inner.stream.launch_builder(f);
        b.arg(&a0).arg(&a1).arg(&a2).arg(&a3).arg(&a4).arg(&a5).arg(&a6).arg(&a7).arg(&a8);
        b.arg(&ti).arg(&hi).arg(&vi).arg(&pi).arg(&tti).arg(&eps);
        // SAFETY: embed_ln.cu `embed_ln_*(const u32* ids, const u32* type_ids, const u32*
        // pos_ids, const u16* wemb, const u16* pemb, const u16* temb, const float* gamma, const
        // float* beta, u16* out, int T, int H, int V, int P, int TT, float eps)`. Rows >= T
        // return early; ids/type_ids/pos_ids hold >= T entries, gamma/beta >= H, out >= T*H
        // (checked above); V/P/TT are the table row counts, and an index outside its table
        // writes a NaN row instead of reading. Writes only `out`.
        let r = unsafe { b.launch(cfg) }.map(|_| ());
        self.after_launch("launch embed_ln", r)
    }

    /// Row-wise LayerNorm of `x [t, h]` into `out`.
    #[allow(clippy::too_many_arguments)]
    pub fn layernorm(
        &self,
        fmt: HalfFormat,
        x: DevSlice<'_, u16>,
        gamma: DevSlice<'_, f32>,
        beta: DevSlice<'_, f32>,
        out: DevSliceMut<'_, u16>,
        t: usize,
        h: usize,
        eps: f32,
    ) -> Result<(), DeviceError> {
        const K: &str = "layernorm";
        if h == 0 || h > MAX_HIDDEN || t == 0 {
            return Err(bounds(K, format!("t={t} h={h}")));
        }
        if x.len < t * h || out.len < t * h || gamma.len < h || beta.len < h {
            return Err(bounds(K, "buffer too short"));
        }
        if x.ptr == out.ptr {
            return Err(bounds(K, "x and out alias"));
        }
        let (ti, hi) = (to_i32(K, t)?, to_i32(K, h)?);
        let (a0, a1, a2, a3) = (x.ptr, gamma.ptr, beta.ptr, out.ptr);
        let cfg =
            LaunchConfig { grid_dim: (grid1(K, t.div_ceil(8))?, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
        self.inner.bind()?;
        let mut b = self.inner.stream.launch_builder(&self.fns.layernorm[fmt.idx()]);
        b.arg(&a0).arg(&a1).arg(&a2).arg(&a3).arg(&ti).arg(&hi).arg(&eps);
        // SAFETY: layernorm.cu `layernorm_*(const u16* x, const float* gamma, const float* beta,
        // u16* out, int T, int H, float eps)`; one warp per row, rows >= T return, columns < H;
        // x and out hold >= T*H, gamma/beta >= H (checked above), x != out. Writes only `out`.
        let r = unsafe { b.launch(cfg) }.map(|_| ());
        self.after_launch("launch layernorm", r)
    }

    /// `out[m, n] = epi(x[m, k] · w[n, k]^T + bias) (+ residual)`.
    #[allow(clippy::too_many_arguments)]
    pub fn gemm(
        &self,
        fmt: HalfFormat,
        variant: Variant,
        x: DevSlice<'_, u16>,
        w: DevSlice<'_, u16>,
        bias: DevSlice<'_, f32>,
        residual: Option<DevSlice<'_, u16>>,
        out: DevSliceMut<'_, u16>,
        m: usize,
        n: usize,
        k: usize,
        epi: crate::cpu::Epilogue,
    ) -> Result<(), DeviceError> {
        const K: &str = "gemm";
        if m == 0 || n == 0 || k == 0 || !n.is_multiple_of(8) || !k.is_multiple_of(8) {
            return Err(bounds(K, format!("m={m} n={n} k={k} (need n, k multiples of 8)")));
        }
        if x.len < m * k || w.len < n * k || bias.len < n || out.len < m * n {
            return Err(bounds(K, "buffer too short"));
        }
        if epi.residual != residual.is_some() {
            return Err(bounds(K, "residual flag and buffer disagree"));
        }
        let rptr = match residual {
            Some(r) if r.len < m * n => return Err(bounds(K, "residual too short")),
            Some(r) if r.ptr == out.ptr => return Err(bounds(K, "residual aliases out")),
            Some(r) => r.ptr,
            None => 0,
        };
        if out.ptr == x.ptr || out.ptr == w.ptr {
            return Err(bounds(K, "out aliases an input"));
        }
        let (mi, ni, ki, flags) = (to_i32(K, m)?, to_i32(K, n)?, to_i32(K, k)?, epi.flags());
        let (a0, a1, a2, a3, a4) = (x.ptr, w.ptr, bias.ptr, rptr, out.ptr);
        let (f, cfg) = match variant {
            Variant::TensorCore => (
                &self.fns.gemm_tc[fmt.idx()],
                LaunchConfig {
                    grid_dim: (grid1(K, n.div_ceil(TILE_ROWS_GEMM))?, grid_y(K, m.div_ceil(TILE_ROWS_GEMM))?, 1),
                    block_dim: (256, 1, 1),
                    shared_mem_bytes: 0,
                },
            ),
            Variant::Simple => (
                &self.fns.gemm_simple[fmt.idx()],
                LaunchConfig {
                    grid_dim: (grid1(K, n.div_ceil(32))?, grid_y(K, m.div_ceil(16))?, 1),
                    block_dim: (16, 16, 1),
                    shared_mem_bytes: 0,
                },
            ),
        };
        self.inner.bind()?;
        let mut b = self.inner.stream.launch_builder(f);
        b.arg(&a0).arg(&a1).arg(&a2).arg(&a3).arg(&a4).arg(&mi).arg(&ni).arg(&ki).arg(&flags);
        // SAFETY: gemm.cu `gemm_tc_*` / `gemm_simple_*(const u16* X, const u16* W, const float*
        // bias, const u16* R, u16* Y, int M, int N, int K, int flags)`. X holds >= M*K, W >= N*K,
        // bias >= N, Y (and R when flag 2 is set) >= M*N (checked above); K % 8 == 0 keeps every
        // 16-byte cp.async chunk inside a row, N % 8 == 0 keeps every stored column pair inside a
        // row; loads past M/N are predicated off (zero-fill) and stores are guarded by row < M,
        // col < N. R is null exactly when flag 2 is clear. Y aliases no input. Writes only Y.
        let r = unsafe { b.launch(cfg) }.map(|_| ());
        self.after_launch("launch gemm", r)
    }

    /// Packed variable-length attention: `qkv [t, 3h]` → `out [t, h]`, with `cu [b+1]` sequence
    /// offsets and `tiles` the (sequence, first row) pairs from [`attention_tiles`].
    #[allow(clippy::too_many_arguments)]
    pub fn attention(
        &self,
        fmt: HalfFormat,
        variant: Variant,
        qkv: DevSlice<'_, u16>,
        out: DevSliceMut<'_, u16>,
        cu: DevSlice<'_, i32>,
        tiles: DevSlice<'_, i32>,
        batch: usize,
        t: usize,
        heads: usize,
        head_dim: usize,
        ntiles: usize,
    ) -> Result<(), DeviceError> {
        const K: &str = "attention";
        let d = match head_dim {
            32 => 0,
            64 => 1,
            _ => return Err(bounds(K, format!("head_dim {head_dim} (supported: 32, 64)"))),
        };
        let h = heads * head_dim;
        if heads == 0 || t == 0 || batch == 0 || !h.is_multiple_of(8) {
            return Err(bounds(K, "empty batch or bad width"));
        }
        if qkv.len < t * 3 * h || out.len < t * h || cu.len < batch + 1 || tiles.len < 2 * ntiles {
            return Err(bounds(K, "buffer too short"));
        }
        let (hi, sl2) = (to_i32(K, h)?, std::f32::consts::LOG2_E / (head_dim as f32).sqrt());
        let (a0, a1, a2, a3) = (qkv.ptr, out.ptr, cu.ptr, tiles.ptr);
        self.inner.bind()?;
        let r = match variant {
            Variant::TensorCore => {
                let cfg = LaunchConfig {
                    grid_dim: (grid1(K, ntiles)?, grid_y(K, heads)?, 1),
                    block_dim: (128, 1, 1),
                    shared_mem_bytes: 0,
                };
                let mut b = self.inner.stream.launch_builder(&self.fns.attn_tc[d][fmt.idx()]);
                b.arg(&a0).arg(&a1).arg(&a2).arg(&a3).arg(&hi).arg(&sl2);
                // SAFETY: attention.cu `attn_tc_*(const u16* qkv, u16* out, const int* cu, const
                // int* tiles, int H, float sl2)`. `cu` (batch+1 offsets, 0..=t, increasing) and
                // `tiles` (ntiles pairs, each sequence < batch and row inside it) were built by
                // the host from a validated batch (`attention_tiles`) and uploaded unchanged;
                // every qkv read is predicated on token < cu[seq+1] <= t and column < 3H, every
                // store on token < cu[seq+1]; qkv >= 3*t*H, out >= t*H (checked above). Writes
                // only `out`.
                unsafe { b.launch(cfg) }.map(|_| ())
            }
            Variant::Simple => {
                let (bi, ti) = (to_i32(K, batch)?, to_i32(K, t)?);
                let cfg = LaunchConfig {
                    grid_dim: (grid1(K, t.div_ceil(128))?, grid_y(K, heads)?, 1),
                    block_dim: (128, 1, 1),
                    shared_mem_bytes: 0,
                };
                let mut b = self.inner.stream.launch_builder(&self.fns.attn_simple[d][fmt.idx()]);
                b.arg(&a0).arg(&a1).arg(&a2).arg(&bi).arg(&ti).arg(&hi).arg(&sl2);
                // SAFETY: attention.cu `attn_simple_*(const u16* qkv, u16* out, const int* cu,
                // int B, int T, int H, float sl2)`; threads with token >= T return; the binary
                // search stays in cu[0..=B] (batch+1 entries, checked); keys range over the
                // token's own sequence < T. Writes only `out`.
                unsafe { b.launch(cfg) }.map(|_| ())
            }
        };
        self.after_launch("launch attention", r)
    }

    /// Pooling per sequence + L2 normalisation: `x [t, h]` → `out [batch, h]` f32.
    #[allow(clippy::too_many_arguments)]
    pub fn pool_l2(
        &self,
        fmt: HalfFormat,
        x: DevSlice<'_, u16>,
        cu: DevSlice<'_, i32>,
        out: DevSliceMut<'_, f32>,
        batch: usize,
        t: usize,
        h: usize,
        pooling: crate::cpu::Pooling,
    ) -> Result<(), DeviceError> {
        const K: &str = "pool_l2";
        if batch == 0 || h == 0 || h > MAX_HIDDEN {
            return Err(bounds(K, format!("batch={batch} h={h}")));
        }
        if x.len < t * h || cu.len < batch + 1 || out.len < batch * h {
            return Err(bounds(K, "buffer too short"));
        }
        let (hi, mode) = (to_i32(K, h)?, pooling.mode());
        let (a0, a1, a2) = (x.ptr, cu.ptr, out.ptr);
        let cfg = LaunchConfig { grid_dim: (grid1(K, batch)?, 1, 1), block_dim: (128, 1, 1), shared_mem_bytes: 0 };
        self.inner.bind()?;
        let mut b = self.inner.stream.launch_builder(&self.fns.pool[fmt.idx()]);
        b.arg(&a0).arg(&a1).arg(&a2).arg(&hi).arg(&mode);
        // SAFETY: pool.cu `pool_l2_*(const u16* x, const int* cu, float* out, int H, int mode)`;
        // block b reads rows [cu[b], cu[b+1]) (host-built offsets within 0..=t, x >= t*H) and
        // columns < H <= 8 * 128 (checked); writes only out[b*H .. b*H+H), out >= batch*H.
        let r = unsafe { b.launch(cfg) }.map(|_| ());
        self.after_launch("launch pool_l2", r)
    }

    /// Scratch sizes (candidate entries) a top-k over `n` stored rows needs for `nq` queries.
    pub fn topk_scratch_len(n: usize, nq: usize, k: usize) -> usize {
        n.div_ceil(TOPK_CHUNK) * k * nq
    }

    /// Cosine top-k: for each of `nq` queries `q [nq, h]`, the best `k` of `stored [n, h]`
    /// into `out_s / out_i [nq, k]` (best first). `cand_s / cand_i` are scratch of
    /// [`Self::topk_scratch_len`] entries.
    #[allow(clippy::too_many_arguments)]
    pub fn topk(
        &self,
        q: DevSlice<'_, f32>,
        stored: DevSlice<'_, f32>,
        nq: usize,
        n: usize,
        h: usize,
        k: usize,
        cand_s: DevSliceMut<'_, f32>,
        cand_i: DevSliceMut<'_, u32>,
        out_s: DevSliceMut<'_, f32>,
        out_i: DevSliceMut<'_, u32>,
    ) -> Result<(), DeviceError> {
        const K: &str = "topk";
        if nq == 0 || n == 0 || h == 0 || h > MAX_HIDDEN || k == 0 || k > TOPK_MAX_K || k > n {
            return Err(bounds(K, format!("nq={nq} n={n} h={h} k={k}")));
        }
        let chunks = n.div_ceil(TOPK_CHUNK);
        let scratch = Self::topk_scratch_len(n, nq, k);
        if q.len < nq * h
            || stored.len < n * h
            || cand_s.len < scratch
            || cand_i.len < scratch
            || out_s.len < nq * k
            || out_i.len < nq * k
        {
            return Err(bounds(K, "buffer too short"));
        }
        let (ni, hi, ki, nci) = (to_i32(K, n)?, to_i32(K, h)?, to_i32(K, k)?, to_i32(K, chunks * k)?);
        let (a0, a1, a2, a3) = (q.ptr, stored.ptr, cand_s.ptr, cand_i.ptr);
        let (a4, a5) = (out_s.ptr, out_i.ptr);
        self.inner.bind()?;
        let cfg = LaunchConfig {
            grid_dim: (grid1(K, chunks)?, grid_y(K, nq)?, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut b = self.inner.stream.launch_builder(&self.fns.topk_partial);
        b.arg(&a0).arg(&a1).arg(&ni).arg(&hi).arg(&ki).arg(&a2).arg(&a3);
        // SAFETY: topk.cu `topk_partial(const float* Q, const float* S, int n, int H, int k,
        // float* cand_s, u32* cand_i)`; block (c, q) reads Q[q*H..+H] (q < nq, Q >= nq*H), rows
        // [c*512, min(n, c*512+512)) of S (S >= n*H), H <= 1024 fits its shared copy; float4
        // loads are used only when H % 128 == 0 (16-byte aligned rows, 256-byte aligned base);
        // writes cand_*[(q*chunks + c)*k .. +k) < nq*chunks*k (checked). Writes only cand_*.
        let r = unsafe { b.launch(cfg) }.map(|_| ());
        self.after_launch("launch topk_partial", r)?;
        let cfg = LaunchConfig { grid_dim: (grid1(K, nq)?, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
        let mut b = self.inner.stream.launch_builder(&self.fns.topk_merge);
        b.arg(&a2).arg(&a3).arg(&nci).arg(&ki).arg(&a4).arg(&a5);
        // SAFETY: topk.cu `topk_merge(float* cand_s, u32* cand_i, int ncand, int k, float*
        // out_s, u32* out_i)`; block q reads and marks cand_*[q*ncand .. +ncand) (ncand =
        // chunks*k, scratch >= nq*ncand) and writes out_*[q*k .. +k) (out >= nq*k, checked).
        // Writes only cand_* (consumed scratch) and out_*.
        let r = unsafe { b.launch(cfg) }.map(|_| ());
        self.after_launch("launch topk_merge", r)
    }

    /// Device-to-device copy of `src` into `dst` (same element type, `src.len <= dst.len`).
    pub fn copy<T: DeviceElem>(&self, src: DevSlice<'_, T>, dst: DevSliceMut<'_, T>) -> Result<(), DeviceError> {
        if src.len > dst.len {
            return Err(bounds("copy", "destination too short"));
        }
        self.inner.bind()?;
        // SAFETY: both are live device ranges of this context; `src.len` elements fit in dst.
        unsafe {
            result::memcpy_dtod_async(
                dst.ptr,
                src.ptr,
                src.len * std::mem::size_of::<T>(),
                self.inner.stream.cu_stream(),
            )
        }
        .map_err(drv("cuMemcpyDtoDAsync"))
    }

    /// Enqueues a plain `cuMemsetD8` of the whole buffer with `byte` (for the memset-vs-scrub
    /// benchmark and for filling test patterns).
    pub fn memset<T: DeviceElem>(&self, buf: &mut DeviceBuffer<T>, byte: u8) -> Result<(), DeviceError> {
        self.inner.bind()?;
        // SAFETY: the whole allocation of `buf`, which is live and owned by this context.
        unsafe { result::memset_d8_async(buf.ptr, byte, buf.bytes, self.inner.stream.cu_stream()) }
            .map_err(drv("cuMemsetD8Async"))
    }

    /// Timing helper for benchmarks: runs `f` `reps` times between two device events and
    /// returns the mean milliseconds per run (callers repeat this and take medians).
    pub fn time_ms(&self, reps: usize, mut f: impl FnMut() -> Result<(), DeviceError>) -> Result<f64, DeviceError> {
        self.inner.bind()?;
        let start =
            self.inner.ctx.new_event(Some(sys::CUevent_flags::CU_EVENT_DEFAULT)).map_err(drv("cuEventCreate"))?;
        let end = self.inner.ctx.new_event(Some(sys::CUevent_flags::CU_EVENT_DEFAULT)).map_err(drv("cuEventCreate"))?;
        start.record(&self.inner.stream).map_err(drv("cuEventRecord"))?;
        for _ in 0..reps {
            f()?;
        }
        end.record(&self.inner.stream).map_err(drv("cuEventRecord"))?;
        end.synchronize().map_err(drv("cuEventSynchronize"))?;
        let ms = start.elapsed_ms(&end).map_err(drv("cuEventElapsedTime"))?;
        Ok(f64::from(ms) / reps.max(1) as f64)
    }
}

fn to_i32(kernel: &'static str, v: usize) -> Result<i32, DeviceError> {
    i32::try_from(v).map_err(|_| bounds(kernel, format!("{v} exceeds i32")))
}
fn grid1(kernel: &'static str, v: usize) -> Result<u32, DeviceError> {
    match u32::try_from(v) {
        Ok(x) if x >= 1 && x < i32::MAX as u32 => Ok(x),
        _ => Err(bounds(kernel, format!("grid.x {v} out of range"))),
    }
}
fn grid_y(kernel: &'static str, v: usize) -> Result<u32, DeviceError> {
    match u32::try_from(v) {
        Ok(x) if (1..=65535).contains(&x) => Ok(x),
        _ => Err(bounds(kernel, format!("grid.y {v} out of range"))),
    }
}

/// The (sequence, first row) of every 64-row query tile of a packed batch, flattened, as the
/// attention kernel's `tiles` argument. `cu` must already be validated.
pub fn attention_tiles(cu: &[u32]) -> Vec<i32> {
    let mut v = Vec::new();
    for (b, w) in cu.windows(2).enumerate() {
        let mut r = w[0];
        while r < w[1] {
            v.push(i32::try_from(b).unwrap_or(i32::MAX));
            v.push(i32::try_from(r).unwrap_or(i32::MAX));
            r += 64;
        }
    }
    v
}

/// Element types that live in device buffers.
pub trait DeviceElem: Copy + Default + cudarc::driver::DeviceRepr + 'static {}
impl DeviceElem for u16 {}
impl DeviceElem for u32 {}
impl DeviceElem for i32 {}
impl DeviceElem for f32 {}

/// A device allocation owned by one [`CudaDevice`]; scrubbed and verified before it is freed.
pub struct DeviceBuffer<T: DeviceElem> {
    dev: Arc<Inner>,
    ptr: sys::CUdeviceptr,
    len: usize,
    bytes: usize,
    /// False once `release` has scrubbed and freed the block (Drop then does nothing).
    live: bool,
    _t: PhantomData<T>,
}

impl<T: DeviceElem> std::fmt::Debug for DeviceBuffer<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceBuffer").field("len", &self.len).field("bytes", &self.bytes).finish()
    }
}

/// A read-only range of a device buffer, for kernel arguments.
#[derive(Debug, Clone, Copy)]
pub struct DevSlice<'a, T> {
    ptr: sys::CUdeviceptr,
    len: usize,
    _b: PhantomData<&'a T>,
}

/// A writable range of a device buffer, for kernel arguments.
#[derive(Debug)]
pub struct DevSliceMut<'a, T> {
    ptr: sys::CUdeviceptr,
    len: usize,
    _b: PhantomData<&'a mut T>,
}

impl<T> DevSlice<'_, T> {
    /// Elements in the range.
    pub fn len(&self) -> usize {
        self.len
    }
    /// Whether the range is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl<T: DeviceElem> DeviceBuffer<T> {
    /// Elements.
    pub fn len(&self) -> usize {
        self.len
    }
    /// Whether it holds no elements.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// Allocated bytes (rounded up to 256).
    pub fn bytes(&self) -> usize {
        self.bytes
    }
    /// The whole buffer as a kernel input.
    pub fn view(&self) -> DevSlice<'_, T> {
        DevSlice { ptr: self.ptr, len: self.len, _b: PhantomData }
    }
    /// The whole buffer as a kernel output.
    pub fn view_mut(&mut self) -> DevSliceMut<'_, T> {
        DevSliceMut { ptr: self.ptr, len: self.len, _b: PhantomData }
    }
    /// Elements `[start, start + len)` as a kernel input.
    pub fn slice(&self, start: usize, len: usize) -> Result<DevSlice<'_, T>, DeviceError> {
        self.check_range(start, len)?;
        Ok(DevSlice { ptr: self.ptr + (start * std::mem::size_of::<T>()) as u64, len, _b: PhantomData })
    }
    /// Elements `[start, start + len)` as a kernel output.
    pub fn slice_mut(&mut self, start: usize, len: usize) -> Result<DevSliceMut<'_, T>, DeviceError> {
        self.check_range(start, len)?;
        Ok(DevSliceMut { ptr: self.ptr + (start * std::mem::size_of::<T>()) as u64, len, _b: PhantomData })
    }
    /// Elements `[start, start + len)` read as another element type of the same size (the
    /// packed metadata buffer holds both u32 ids and i32 offsets).
    pub(crate) fn slice_as<U: DeviceElem>(&self, start: usize, len: usize) -> Result<DevSlice<'_, U>, DeviceError> {
        if std::mem::size_of::<U>() != std::mem::size_of::<T>() {
            return Err(bounds("slice_as", "element sizes differ"));
        }
        self.check_range(start, len)?;
        Ok(DevSlice { ptr: self.ptr + (start * std::mem::size_of::<T>()) as u64, len, _b: PhantomData })
    }
    fn check_range(&self, start: usize, len: usize) -> Result<(), DeviceError> {
        match start.checked_add(len) {
            Some(e) if e <= self.len => Ok(()),
            _ => Err(bounds("slice", format!("[{start}, +{len}) outside {} elements", self.len))),
        }
    }
    /// Copies `src` into elements `[offset, offset + src.len())` (stream-ordered).
    pub fn write(&mut self, offset: usize, src: &[T]) -> Result<(), DeviceError> {
        self.check_range(offset, src.len())?;
        if src.is_empty() {
            return Ok(());
        }
        self.dev.bind()?;
        let dst = self.ptr + (offset * std::mem::size_of::<T>()) as u64;
        // SAFETY: the destination range lies inside this live allocation (checked); a
        // host-to-device copy from pageable memory has consumed `src` when the call returns.
        unsafe { result::memcpy_htod_async(dst, src, self.dev.stream.cu_stream()) }.map_err(drv("cuMemcpyHtoDAsync"))
    }
    /// Copies elements `[offset, offset + dst.len())` to the host after all queued work.
    pub fn read_into(&self, offset: usize, dst: &mut [T]) -> Result<(), DeviceError> {
        self.check_range(offset, dst.len())?;
        if dst.is_empty() {
            return Ok(());
        }
        self.dev.bind()?;
        let src = self.ptr + (offset * std::mem::size_of::<T>()) as u64;
        // SAFETY: the source range lies inside this live allocation (checked); `dst` is a
        // writable host slice of exactly the copied size, and the stream is synchronised before
        // it is read.
        unsafe { result::memcpy_dtoh_async(dst, src, self.dev.stream.cu_stream()) }
            .map_err(drv("cuMemcpyDtoHAsync"))?;
        self.dev.sync()
    }
    /// The whole buffer on the host.
    pub fn to_vec(&self) -> Result<Vec<T>, DeviceError> {
        let mut v = vec![T::default(); self.len];
        self.read_into(0, &mut v)?;
        Ok(v)
    }
    /// Zeroes and verifies the whole allocation now (the buffer stays usable).
    pub fn scrub(&mut self) -> Result<(), DeviceError> {
        self.dev.scrub_verify(self.ptr, self.bytes)
    }
    /// Scrubs, verifies and frees, reporting the outcome (Drop does the same silently).
    pub fn release(mut self) -> Result<usize, DeviceError> {
        self.live = false;
        self.dev.release(self.ptr, self.bytes).map(|()| self.bytes)
    }
}

impl<T: DeviceElem> Drop for DeviceBuffer<T> {
    fn drop(&mut self) {
        if self.live {
            // Failures are counted in MemStats::scrub_failures; the block then stays allocated.
            let _ = self.dev.release(self.ptr, self.bytes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiles_cover_every_row_once() {
        let cu = [0u32, 1, 65, 200];
        let t = attention_tiles(&cu);
        assert_eq!(t, vec![0, 0, 1, 1, 2, 65, 2, 129, 2, 193]);
    }

    #[test]
    fn half_formats_round_trip() {
        for f in [HalfFormat::Bf16, HalfFormat::F16] {
            for v in [0.0f32, 1.0, -2.5, 0.125] {
                assert_eq!(f.decode(f.encode(v)), v);
            }
        }
        assert_eq!(HalfFormat::Bf16.encode(1.0), 0x3f80);
        assert_eq!(HalfFormat::F16.encode(1.0), 0x3c00);
    }

    #[test]
    fn no_gpu_is_an_error_not_a_panic() {
        match available() {
            Ok(n) => println!("{n} CUDA device(s) present"),
            Err(e) => println!("no CUDA backend: {e}"),
        }
    }
}
