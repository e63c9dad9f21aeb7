//! Kernel sources, run-time compilation with NVRTC, and the compiled-kernel cache.
//!
//! Every `.cu` file in `kernels/cu/` is embedded with `include_str!` behind `cu/common.cuh` and
//! compiled when a device needs it: to a native cubin for the device's own architecture
//! (`-arch=sm_90` on Hopper, `sm_80`/`sm_86`/`sm_89` on Ampere and Ada), or to PTX for
//! `compute_80`, the baseline any sm_80+ driver can JIT. The sources need no CUDA headers.
//!
//! Compiled images are cached by (SHA-256 of source + target + options + NVRTC version):
//! in memory in a [`KernelCache`] the caller owns, and optionally on disk in a folder the caller
//! names. A compiled kernel is code derived only from this crate's sources; it holds no tenant
//! data. It is still code that runs inside a tenant's context, so a disk cache folder must be
//! writable only by the process that owns it (the tenant worker's own data folder); each file
//! carries a SHA-256 of its body that is checked on load, which catches truncation and
//! corruption (not a writer who can also rewrite the hash; that is what the folder's
//! permissions are for).

use std::collections::HashMap;
use std::ffi::{CStr, CString, c_char};
use std::fmt;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::probe::{self, ProbeError};

/// Text shared by every kernel file (helpers, conversions, mma wrappers).
pub const COMMON_SOURCE: &str = include_str!("../cu/common.cuh");

/// One `.cu` file of kernels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KernelFile {
    /// `embed_ln.cu`: embedding gather fused with LayerNorm.
    EmbedLn,
    /// `layernorm.cu`: LayerNorm.
    LayerNorm,
    /// `gemm.cu`: tensor-core GEMM with fused epilogues (and a SIMT reference kernel).
    Gemm,
    /// `attention.cu`: fused variable-length attention (tensor-core and SIMT variants).
    Attention,
    /// `pool.cu`: masked mean / CLS pooling with L2 normalisation.
    Pool,
    /// `topk.cu`: cosine top-k over stored embeddings.
    TopK,
    /// `scrub.cu`: zero-and-verify of device memory.
    Scrub,
}

impl KernelFile {
    /// Every kernel file.
    pub const ALL: [KernelFile; 7] = [
        KernelFile::EmbedLn,
        KernelFile::LayerNorm,
        KernelFile::Gemm,
        KernelFile::Attention,
        KernelFile::Pool,
        KernelFile::TopK,
        KernelFile::Scrub,
    ];

    /// The file name under `kernels/cu/`.
    pub fn file_name(self) -> &'static str {
        match self {
            KernelFile::EmbedLn => "embed_ln.cu",
            KernelFile::LayerNorm => "layernorm.cu",
            KernelFile::Gemm => "gemm.cu",
            KernelFile::Attention => "attention.cu",
            KernelFile::Pool => "pool.cu",
            KernelFile::TopK => "topk.cu",
            KernelFile::Scrub => "scrub.cu",
        }
    }

    /// The file's own text (without the common prelude).
    pub fn body(self) -> &'static str {
        match self {
            KernelFile::EmbedLn => include_str!("../cu/embed_ln.cu"),
            KernelFile::LayerNorm => include_str!("../cu/layernorm.cu"),
            KernelFile::Gemm => include_str!("../cu/gemm.cu"),
            KernelFile::Attention => include_str!("../cu/attention.cu"),
            KernelFile::Pool => include_str!("../cu/pool.cu"),
            KernelFile::TopK => include_str!("../cu/topk.cu"),
            KernelFile::Scrub => include_str!("../cu/scrub.cu"),
        }
    }

    /// The complete translation unit handed to NVRTC: the common prelude, then the file.
    pub fn source(self) -> String {
        let mut s = String::with_capacity(COMMON_SOURCE.len() + self.body().len() + 1);
        s.push_str(COMMON_SOURCE);
        s.push('\n');
        s.push_str(self.body());
        s
    }

    /// The `extern "C"` entry points the file defines.
    pub fn functions(self) -> &'static [&'static str] {
        match self {
            KernelFile::EmbedLn => &["embed_ln_bf16", "embed_ln_f16"],
            KernelFile::LayerNorm => &["layernorm_bf16", "layernorm_f16"],
            KernelFile::Gemm => &["gemm_tc_bf16", "gemm_tc_f16", "gemm_simple_bf16", "gemm_simple_f16"],
            KernelFile::Attention => &[
                "attn_tc_d32_bf16",
                "attn_tc_d32_f16",
                "attn_tc_d64_bf16",
                "attn_tc_d64_f16",
                "attn_simple_d32_bf16",
                "attn_simple_d32_f16",
                "attn_simple_d64_bf16",
                "attn_simple_d64_f16",
            ],
            KernelFile::Pool => &["pool_l2_bf16", "pool_l2_f16"],
            KernelFile::TopK => &["topk_partial", "topk_merge"],
            KernelFile::Scrub => &["scrub_zero_verify"],
        }
    }
}

/// What NVRTC produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Target {
    /// PTX for a virtual architecture (`compute_XY`), JIT-compiled by the driver at load time.
    /// `Ptx(80)` is the baseline for every sm_80+ GPU.
    Ptx(u32),
    /// A native cubin for one real architecture (`sm_XY`), e.g. `Cubin(90)` for Hopper.
    Cubin(u32),
}

impl Target {
    /// The `-arch=` value.
    pub fn arch_flag(self) -> String {
        match self {
            Target::Ptx(cc) => format!("-arch=compute_{cc}"),
            Target::Cubin(cc) => format!("-arch=sm_{cc}"),
        }
    }
    fn extension(self) -> &'static str {
        match self {
            Target::Ptx(_) => "ptx",
            Target::Cubin(_) => "cubin",
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Ptx(cc) => write!(f, "compute_{cc} PTX"),
            Target::Cubin(cc) => write!(f, "sm_{cc} cubin"),
        }
    }
}

/// Options passed to every compile besides `-arch`. `-lineinfo` costs nothing at run time and
/// lets compute-sanitizer name source lines.
const OPTIONS: &[&str] = &["-std=c++17", "-lineinfo"];

/// Errors from compiling a kernel file or from the cache.
#[derive(Debug, Error)]
pub enum CompileError {
    /// NVRTC is not usable on this machine.
    #[error("NVRTC unavailable")]
    Unavailable(#[source] ProbeError),
    /// NVRTC rejected the source; `log` is NVRTC's program log.
    #[error("NVRTC failed to compile {file} for {target} (status {status}):\n{log}")]
    Rejected {
        /// The kernel file.
        file: &'static str,
        /// The target.
        target: Target,
        /// NVRTC status code.
        status: i32,
        /// NVRTC's compile log.
        log: String,
    },
    /// An NVRTC call other than the compile itself failed.
    #[error("NVRTC call {call} failed with status {status}")]
    Call {
        /// The NVRTC function.
        call: &'static str,
        /// NVRTC status code.
        status: i32,
    },
    /// Writing a cache file failed (reading failures fall back to compiling).
    #[error("kernel cache write {path}")]
    CacheWrite {
        /// The file being written.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// A compiled kernel file.
#[derive(Clone, PartialEq, Eq)]
pub struct Compiled {
    /// The kernel file.
    pub file: KernelFile,
    /// What it was compiled for.
    pub target: Target,
    /// PTX text (without a trailing NUL) or cubin bytes.
    pub image: Vec<u8>,
    /// NVRTC's log (warnings); empty when clean.
    pub log: String,
}

impl fmt::Debug for Compiled {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Compiled")
            .field("file", &self.file)
            .field("target", &self.target)
            .field("image_len", &self.image.len())
            .finish()
    }
}

/// Compiles one kernel file with NVRTC (no cache).
pub fn compile(file: KernelFile, target: Target) -> Result<Compiled, CompileError> {
    probe::nvrtc().map_err(CompileError::Unavailable)?;
    use cudarc::nvrtc::{result, sys};
    let src =
        CString::new(file.source()).map_err(|_| CompileError::Call { call: "source contains NUL", status: -1 })?;
    let name =
        CString::new(file.file_name()).map_err(|_| CompileError::Call { call: "name contains NUL", status: -1 })?;
    let prog = result::create_program(&src, Some(&name))
        .map_err(|e| CompileError::Call { call: "nvrtcCreateProgram", status: e.0 as i32 })?;
    let guard = ProgramGuard(prog);
    let mut options: Vec<String> = OPTIONS.iter().map(|s| (*s).to_owned()).collect();
    options.push(target.arch_flag());
    // SAFETY: `prog` was created above and is destroyed only by `guard`'s Drop; the option
    // strings contain no NUL (they are the constants above and a formatted -arch value).
    let compiled = unsafe { result::compile_program(prog, &options) };
    let log = program_log(prog);
    if let Err(e) = compiled {
        return Err(CompileError::Rejected { file: file.file_name(), target, status: e.0 as i32, log });
    }
    let image = match target {
        Target::Ptx(_) => {
            // SAFETY: `prog` is live and compiled successfully.
            let raw = unsafe { result::get_ptx(prog) }
                .map_err(|e| CompileError::Call { call: "nvrtcGetPTX", status: e.0 as i32 })?;
            let mut bytes: Vec<u8> = raw.iter().map(|&c| c as u8).collect();
            while bytes.last() == Some(&0) {
                bytes.pop();
            }
            bytes
        }
        Target::Cubin(_) => {
            let mut size = 0usize;
            // SAFETY: `prog` is live and compiled for a real architecture; `size` is a valid
            // out-pointer for one usize.
            let st = unsafe { sys::nvrtcGetCUBINSize(prog, &mut size) };
            if st != sys::nvrtcResult::NVRTC_SUCCESS {
                return Err(CompileError::Call { call: "nvrtcGetCUBINSize", status: st as i32 });
            }
            let mut buf = vec![0u8; size];
            // SAFETY: `buf` holds exactly the `size` bytes NVRTC reported for the cubin.
            let st = unsafe { sys::nvrtcGetCUBIN(prog, buf.as_mut_ptr().cast::<c_char>()) };
            if st != sys::nvrtcResult::NVRTC_SUCCESS {
                return Err(CompileError::Call { call: "nvrtcGetCUBIN", status: st as i32 });
            }
            buf
        }
    };
    drop(guard);
    Ok(Compiled { file, target, image, log })
}

struct ProgramGuard(cudarc::nvrtc::sys::nvrtcProgram);

impl Drop for ProgramGuard {
    fn drop(&mut self) {
        // SAFETY: the program was created by nvrtcCreateProgram and is destroyed once, here.
        // A failure to destroy leaks host memory only; there is nothing better to do in Drop.
        let _ = unsafe { cudarc::nvrtc::result::destroy_program(self.0) };
    }
}

fn program_log(prog: cudarc::nvrtc::sys::nvrtcProgram) -> String {
    // SAFETY: `prog` is a live program (the caller's guard destroys it later).
    match unsafe { cudarc::nvrtc::result::get_program_log(prog) } {
        Ok(raw) if raw.contains(&0) => {
            // SAFETY: `raw` contains a NUL (checked), so CStr::from_ptr stays inside it.
            let s = unsafe { CStr::from_ptr(raw.as_ptr()) };
            s.to_string_lossy().trim().to_owned()
        }
        _ => String::new(),
    }
}

/// The cache key of one compile: SHA-256 over the source, target, options and NVRTC version.
fn cache_key(file: KernelFile, target: Target, nvrtc_version: (i32, i32)) -> String {
    let mut h = Sha256::new();
    h.update(b"bulwark-kernels compile v1\0");
    h.update(file.source().as_bytes());
    h.update([0]);
    h.update(target.arch_flag().as_bytes());
    for o in OPTIONS {
        h.update([0]);
        h.update(o.as_bytes());
    }
    h.update(format!("\0nvrtc {}.{}", nvrtc_version.0, nvrtc_version.1).as_bytes());
    hex::encode(h.finalize())
}

const DISK_MAGIC: &[u8; 8] = b"BWKC1\0\0\0";

/// Cache of compiled kernels. Owned by the caller: in the appliance each tenant worker makes its
/// own, so nothing is shared between brain owners. Thread-safe.
pub struct KernelCache {
    mem: Mutex<HashMap<String, Arc<Compiled>>>,
    dir: Option<PathBuf>,
}

impl fmt::Debug for KernelCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KernelCache").field("dir", &self.dir).finish_non_exhaustive()
    }
}

impl Default for KernelCache {
    fn default() -> Self {
        Self::in_memory()
    }
}

impl KernelCache {
    /// A cache held in memory only.
    pub fn in_memory() -> Self {
        KernelCache { mem: Mutex::new(HashMap::new()), dir: None }
    }

    /// A cache that also keeps compiled images in `dir` (created with mode 0700 if missing).
    /// The folder must belong to the owner of this cache alone (see the module docs).
    pub fn with_disk(dir: impl Into<PathBuf>) -> Self {
        KernelCache { mem: Mutex::new(HashMap::new()), dir: Some(dir.into()) }
    }

    /// The disk folder, if any.
    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    /// Returns the compiled image of `file` for `target`, compiling it on a miss.
    pub fn get(&self, file: KernelFile, target: Target) -> Result<Arc<Compiled>, CompileError> {
        let version = probe::nvrtc().map(|n| n.version);
        // Without NVRTC a disk hit is still usable only if we know the key; the key includes
        // the NVRTC version, so no NVRTC means compile (which reports Unavailable).
        let version = version.map_err(CompileError::Unavailable)?;
        let key = cache_key(file, target, version);
        if let Some(hit) = self.lock().get(&key) {
            return Ok(hit.clone());
        }
        if let Some(image) = self.read_disk(&key, target) {
            let c = Arc::new(Compiled { file, target, image, log: String::new() });
            self.lock().insert(key, c.clone());
            return Ok(c);
        }
        let c = Arc::new(compile(file, target)?);
        self.write_disk(&key, target, &c.image)?;
        self.lock().insert(key, c.clone());
        Ok(c)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Compiled>>> {
        // A poisoned lock only means another thread panicked mid-insert of an Arc; the map is
        // still a valid map.
        self.mem.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn disk_path(&self, key: &str, target: Target) -> Option<PathBuf> {
        self.dir.as_ref().map(|d| d.join(format!("{key}.{}", target.extension())))
    }

    fn read_disk(&self, key: &str, target: Target) -> Option<Vec<u8>> {
        let path = self.disk_path(key, target)?;
        let bytes = std::fs::read(path).ok()?;
        let body = bytes.strip_prefix(DISK_MAGIC.as_slice())?;
        if body.len() < 32 {
            return None;
        }
        let (digest, image) = body.split_at(32);
        if Sha256::digest(image).as_slice() != digest {
            return None;
        }
        if matches!(target, Target::Ptx(_)) && image.contains(&0) {
            return None;
        }
        Some(image.to_vec())
    }

    fn write_disk(&self, key: &str, target: Target, image: &[u8]) -> Result<(), CompileError> {
        let (Some(dir), Some(path)) = (self.dir.as_ref(), self.disk_path(key, target)) else {
            return Ok(());
        };
        let err = |source| CompileError::CacheWrite { path: path.clone(), source };
        {
            use std::os::unix::fs::DirBuilderExt as _;
            std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(err)?;
        }
        let mut tmp = tempfile_in(dir).map_err(err)?;
        tmp.1.write_all(DISK_MAGIC).map_err(err)?;
        tmp.1.write_all(&Sha256::digest(image)).map_err(err)?;
        tmp.1.write_all(image).map_err(err)?;
        tmp.1.sync_all().map_err(err)?;
        std::fs::rename(&tmp.0, &path).map_err(err)?;
        Ok(())
    }
}

/// A fresh file in `dir` (mode 0600) for write-then-rename.
fn tempfile_in(dir: &Path) -> std::io::Result<(PathBuf, std::fs::File)> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut n = std::process::id() as u64;
    for _ in 0..64 {
        n = n.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let p = dir.join(format!(".tmp-{n:016x}"));
        match std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&p) {
            Ok(f) => return Ok((p, f)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(std::io::Error::new(std::io::ErrorKind::AlreadyExists, "no free temporary name"))
}

/// The target to compile for a device of compute capability `(major, minor)`: a native cubin
/// when this NVRTC knows the architecture, else the sm_80 PTX baseline (driver JIT).
pub fn target_for(major: u32, minor: u32) -> Target {
    let cc = major * 10 + minor;
    match cc {
        80 | 86 | 87 | 89 | 90 | 100 | 103 | 110 | 120 | 121 => Target::Cubin(cc),
        _ => Target::Ptx(80),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_are_embedded_and_nul_free() {
        for f in KernelFile::ALL {
            let s = f.source();
            assert!(!s.contains('\0'), "{}", f.file_name());
            for func in f.functions() {
                assert!(s.contains(func) || f == KernelFile::Attention, "{func} not in {}", f.file_name());
            }
        }
    }

    #[test]
    fn cache_key_depends_on_source_and_target() {
        let a = cache_key(KernelFile::Gemm, Target::Cubin(90), (13, 0));
        assert_eq!(a, cache_key(KernelFile::Gemm, Target::Cubin(90), (13, 0)));
        assert_ne!(a, cache_key(KernelFile::Gemm, Target::Ptx(80), (13, 0)));
        assert_ne!(a, cache_key(KernelFile::Scrub, Target::Cubin(90), (13, 0)));
        assert_ne!(a, cache_key(KernelFile::Gemm, Target::Cubin(90), (13, 1)));
    }

    #[test]
    fn hopper_gets_a_cubin_unknown_gets_ptx() {
        assert_eq!(target_for(9, 0), Target::Cubin(90));
        assert_eq!(target_for(8, 0), Target::Cubin(80));
        assert_eq!(target_for(8, 8), Target::Ptx(80));
    }

    /// Compiles every kernel file to sm_80 PTX, sm_90 PTX and an sm_90 cubin, and checks that
    /// every entry point is in the output. Skipped, saying so, when NVRTC is not available.
    #[test]
    fn nvrtc_compiles_every_kernel() {
        if let Err(e) = probe::nvrtc() {
            println!("SKIPPED nvrtc_compiles_every_kernel: {e}");
            return;
        }
        for target in [Target::Ptx(80), Target::Ptx(90), Target::Cubin(90)] {
            for f in KernelFile::ALL {
                let c = match compile(f, target) {
                    Ok(c) => c,
                    Err(e) => panic!("{e}"),
                };
                assert!(!c.image.is_empty());
                for func in f.functions() {
                    assert!(
                        c.image.windows(func.len()).any(|w| w == func.as_bytes()),
                        "{func} missing from {} {target}",
                        f.file_name()
                    );
                }
                if let Target::Cubin(_) = target {
                    assert_eq!(&c.image[..4], b"\x7fELF", "cubin is an ELF image");
                }
                if let Target::Ptx(cc) = target {
                    let text = String::from_utf8_lossy(&c.image);
                    assert!(text.contains(&format!(".target sm_{cc}")));
                }
                println!("compiled {} for {target}: {} bytes", f.file_name(), c.image.len());
            }
        }
    }

    #[test]
    fn disk_cache_round_trip_and_corruption() {
        if let Err(e) = probe::nvrtc() {
            println!("SKIPPED disk_cache_round_trip_and_corruption: {e}");
            return;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = KernelCache::with_disk(dir.path().join("k"));
        let a = cache.get(KernelFile::Scrub, Target::Ptx(80)).expect("compile");
        // A second cache over the same folder reads the file instead of compiling.
        let cache2 = KernelCache::with_disk(dir.path().join("k"));
        let b = cache2.get(KernelFile::Scrub, Target::Ptx(80)).expect("disk hit");
        assert_eq!(a.image, b.image);
        // Corrupt the file: the next cache ignores it and recompiles.
        let entry = std::fs::read_dir(dir.path().join("k"))
            .expect("read_dir")
            .filter_map(Result::ok)
            .find(|e| e.path().extension().is_some_and(|x| x == "ptx"))
            .expect("cache file");
        let mut bytes = std::fs::read(entry.path()).expect("read");
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(entry.path(), &bytes).expect("write");
        let key = cache_key(KernelFile::Scrub, Target::Ptx(80), probe::nvrtc().expect("nvrtc").version);
        let cache3 = KernelCache::with_disk(dir.path().join("k"));
        assert!(cache3.read_disk(&key, Target::Ptx(80)).is_none());
        let c = cache3.get(KernelFile::Scrub, Target::Ptx(80)).expect("recompile");
        assert_eq!(c.image, a.image);
    }
}
