//! Finding the CUDA driver and NVRTC libraries before anything in `cudarc` is touched.
//!
//! `cudarc` (built with `dynamic-loading`) opens `libcuda` / `libnvrtc` on first use and panics
//! when it cannot, or when a symbol it needs is missing. Everything in this crate that reaches
//! `cudarc` goes through [`driver`] or [`nvrtc`] first: they try the same file names `cudarc`
//! will try, in the same order, and check that the first library that opens exports every symbol
//! this crate calls. A machine without CUDA therefore gets a [`ProbeError`], never a panic.
//!
//! The results are computed once per process (the set of loadable libraries does not change
//! while a process runs, and `cudarc` itself keeps the first library it opened).

use std::sync::OnceLock;

use thiserror::Error;

/// Why a CUDA library cannot be used.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum ProbeError {
    /// No candidate file name could be opened (the library is not installed or not on the
    /// loader path).
    #[error(
        "{library} not found (tried {tried}); install the NVIDIA driver / NVRTC or add its folder to LD_LIBRARY_PATH"
    )]
    NotFound {
        /// Library base name (`cuda`, `nvrtc`).
        library: &'static str,
        /// The file names tried, comma separated.
        tried: String,
    },
    /// The library opened but lacks a symbol this crate calls (too old a driver or NVRTC).
    #[error("{file} lacks symbol {symbol}; a CUDA 13.0 or newer driver / NVRTC is required")]
    MissingSymbol {
        /// The file that opened.
        file: String,
        /// The missing symbol.
        symbol: &'static str,
    },
    /// NVRTC opened but its companion `libnvrtc-builtins` did not (NVRTC cannot compile
    /// without it).
    #[error("{file} not found next to NVRTC; put NVRTC's lib folder on LD_LIBRARY_PATH")]
    BuiltinsMissing {
        /// The builtins file name that was tried.
        file: String,
    },
    /// NVRTC reported an error when asked for its version.
    #[error("nvrtcVersion failed with status {0}")]
    Version(i32),
}

/// Driver API symbols this crate (through `cudarc`) calls.
const DRIVER_SYMBOLS: &[&str] = &[
    "cuInit",
    "cuDeviceGet",
    "cuDeviceGetCount",
    "cuDeviceGetAttribute",
    "cuDeviceGetName",
    "cuDeviceTotalMem_v2",
    "cuCtxCreate_v4",
    "cuCtxDestroy_v2",
    "cuCtxSetCurrent",
    "cuCtxGetCurrent",
    "cuCtxSynchronize",
    "cuStreamCreate",
    "cuStreamDestroy_v2",
    "cuStreamSynchronize",
    "cuStreamBeginCapture_v2",
    "cuStreamEndCapture",
    "cuGraphInstantiateWithFlags",
    "cuGraphLaunch",
    "cuGraphExecDestroy",
    "cuGraphDestroy",
    "cuMemAlloc_v2",
    "cuMemFree_v2",
    "cuMemsetD8Async",
    "cuMemcpyHtoDAsync_v2",
    "cuMemcpyDtoHAsync_v2",
    "cuMemcpyDtoDAsync_v2",
    "cuMemGetInfo_v2",
    "cuModuleLoadData",
    "cuModuleGetFunction",
    "cuModuleUnload",
    "cuLaunchKernel",
    "cuEventCreate",
    "cuEventRecord",
    "cuEventSynchronize",
    "cuEventElapsedTime_v2",
    "cuEventDestroy_v2",
    "cuGetErrorName",
    "cuGetErrorString",
];

/// NVRTC symbols this crate calls.
const NVRTC_SYMBOLS: &[&str] = &[
    "nvrtcVersion",
    "nvrtcCreateProgram",
    "nvrtcCompileProgram",
    "nvrtcDestroyProgram",
    "nvrtcGetPTXSize",
    "nvrtcGetPTX",
    "nvrtcGetCUBINSize",
    "nvrtcGetCUBIN",
    "nvrtcGetProgramLogSize",
    "nvrtcGetProgramLog",
];

/// A library that opened and exports every symbol we need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundLibrary {
    /// The file name that opened (as passed to the dynamic loader).
    pub file: String,
}

/// NVRTC that opened, with its version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundNvrtc {
    /// The file name that opened.
    pub file: String,
    /// NVRTC (major, minor) version.
    pub version: (i32, i32),
}

/// Probes for the CUDA driver library (`libcuda.so.1` and the other names `cudarc` tries).
pub fn driver() -> Result<FoundLibrary, ProbeError> {
    static RESULT: OnceLock<Result<FoundLibrary, ProbeError>> = OnceLock::new();
    RESULT.get_or_init(|| open_checked("cuda", &cudarc::get_lib_name_candidates("cuda"), DRIVER_SYMBOLS)).clone()
}

/// Probes for NVRTC and its builtins library.
pub fn nvrtc() -> Result<FoundNvrtc, ProbeError> {
    static RESULT: OnceLock<Result<FoundNvrtc, ProbeError>> = OnceLock::new();
    RESULT.get_or_init(probe_nvrtc).clone()
}

fn probe_nvrtc() -> Result<FoundNvrtc, ProbeError> {
    let found = open_checked("nvrtc", &cudarc::get_lib_name_candidates("nvrtc"), NVRTC_SYMBOLS)?;
    let version = nvrtc_version(&found.file)?;
    // NVRTC dlopens libnvrtc-builtins.so.<major>.<minor> when it compiles; without it every
    // compile fails, so report that here with the file name.
    let builtins = format!("libnvrtc-builtins.so.{}.{}", version.0, version.1);
    // SAFETY: opening a shared library runs its initialisers; libnvrtc-builtins is NVIDIA's
    // data-only companion of NVRTC and is opened the same way by NVRTC itself.
    let opened = unsafe { libloading::Library::new(&builtins) };
    if opened.is_err() {
        return Err(ProbeError::BuiltinsMissing { file: builtins });
    }
    Ok(FoundNvrtc { file: found.file, version })
}

fn nvrtc_version(file: &str) -> Result<(i32, i32), ProbeError> {
    type VersionFn = unsafe extern "C" fn(*mut i32, *mut i32) -> i32;
    // SAFETY: `file` opened a moment ago in `open_checked`; opening it again returns the same
    // already-initialised library.
    let lib = unsafe { libloading::Library::new(file) }
        .map_err(|_| ProbeError::NotFound { library: "nvrtc", tried: file.to_owned() })?;
    // SAFETY: nvrtcVersion has the C signature `nvrtcResult nvrtcVersion(int*, int*)`, which
    // `VersionFn` spells out; its presence was checked in `open_checked`.
    let f = unsafe { lib.get::<VersionFn>(b"nvrtcVersion\0") }
        .map_err(|_| ProbeError::MissingSymbol { file: file.to_owned(), symbol: "nvrtcVersion" })?;
    let (mut major, mut minor) = (0i32, 0i32);
    // SAFETY: both pointers are to live, writable i32 locals; NVRTC writes one int to each.
    let status = unsafe { f(&mut major, &mut minor) };
    if status != 0 {
        return Err(ProbeError::Version(status));
    }
    Ok((major, minor))
}

fn open_checked(
    library: &'static str,
    candidates: &[String],
    symbols: &[&'static str],
) -> Result<FoundLibrary, ProbeError> {
    for file in candidates {
        // SAFETY: opening a shared library runs its initialisers. The candidates are the
        // NVIDIA library names cudarc itself would open; we open them no earlier than cudarc
        // would, and only to look symbols up.
        let Ok(lib) = (unsafe { libloading::Library::new(file) }) else {
            continue;
        };
        // cudarc keeps the first candidate that opens, so the symbols must be in this one.
        for &symbol in symbols {
            let mut name = symbol.as_bytes().to_vec();
            name.push(0);
            // SAFETY: the symbol is only looked up, never called, so the pointer type is
            // irrelevant; `*const ()` is a plain address.
            let found = unsafe { lib.get::<*const ()>(name.as_slice()) };
            if found.is_err() {
                return Err(ProbeError::MissingSymbol { file: file.clone(), symbol });
            }
        }
        return Ok(FoundLibrary { file: file.clone() });
    }
    let mut tried: Vec<&str> = Vec::new();
    for c in candidates {
        if !tried.contains(&c.as_str()) {
            tried.push(c);
        }
    }
    Err(ProbeError::NotFound { library, tried: tried.join(", ") })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_library_is_an_error_not_a_panic() {
        let err = open_checked("nope", &["libbulwark-no-such-library.so.7".to_owned()], &[]);
        assert!(matches!(err, Err(ProbeError::NotFound { library: "nope", .. })));
    }

    #[test]
    fn missing_symbol_is_reported() {
        // libc is always there; it has no CUDA symbols.
        let err = open_checked("c", &["libc.so.6".to_owned()], &["cuInit"]);
        assert!(matches!(err, Err(ProbeError::MissingSymbol { symbol: "cuInit", .. })), "{err:?}");
    }

    #[test]
    fn probes_answer_without_panicking() {
        // Whatever this machine has, both probes return (never panic), and twice the same.
        assert_eq!(driver(), driver());
        assert_eq!(nvrtc(), nvrtc());
        match nvrtc() {
            Ok(found) => println!("NVRTC found: {} version {:?}", found.file, found.version),
            Err(e) => println!("NVRTC not available: {e}"),
        }
        match driver() {
            Ok(found) => println!("CUDA driver found: {}", found.file),
            Err(e) => println!("CUDA driver not available: {e}"),
        }
    }
}
