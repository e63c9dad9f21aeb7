//! ESAPI's OpenSSL library contexts, shared for the duration of a Bulwark TPM operation.
//!
//! tpm2-tss 3.2 (Debian 12's libtss2-esys) creates a fresh `OSSL_LIB_CTX` for every digest, HMAC and
//! nonce it computes, so that an OpenSSL TPM provider loaded into the process's global context is never
//! asked to hash for the TPM's own session. A fresh context must rebuild OpenSSL's name map and load the
//! default provider on first use, and ESAPI throws it away after one digest: on the machines Bulwark
//! has been measured on this costs more client CPU than the TPM's own work, several milliseconds per
//! unseal (docs/BENCHMARKS.md).
//!
//! Bulwark never loads an OpenSSL provider. This module defines `OSSL_LIB_CTX_new` in the executable,
//! which the dynamic linker binds ahead of libcrypto's (the symbol is exported by the link argument in
//! `.cargo/config.toml`). While the calling thread runs a [`Tpm`](crate::Tpm) operation and the global
//! context holds no provider other than OpenSSL's own `default` and `base`, it answers with that global
//! context, which `OSSL_LIB_CTX_free` never frees. Every other caller, and every call when the check
//! fails, gets a fresh context from libcrypto as before. Where the symbol is not exported (another
//! linker, `RUSTFLAGS` that replace the config), nothing changes and [`shared_contexts_active`] says so.

use std::cell::Cell;
use std::ffi::{CStr, c_char, c_int, c_void};
use std::sync::OnceLock;

thread_local! {
    /// Set while this thread runs a TPM operation (see [`SharedContexts`]).
    static IN_TPM_OPERATION: Cell<bool> = const { Cell::new(false) };
}

type CtxNew = unsafe extern "C" fn() -> *mut c_void;
type ProviderCb = unsafe extern "C" fn(*mut c_void, *mut c_void) -> c_int;
type ProviderDoAll = unsafe extern "C" fn(*mut c_void, ProviderCb, *mut c_void) -> c_int;
type ProviderName = unsafe extern "C" fn(*const c_void) -> *const c_char;
type InitCrypto = unsafe extern "C" fn(u64, *const c_void) -> c_int;

/// `OPENSSL_INIT_LOAD_CONFIG` (openssl/crypto.h).
const OPENSSL_INIT_LOAD_CONFIG: u64 = 0x0000_0040;

/// Marks the current thread as running a TPM operation until dropped.
pub(crate) struct SharedContexts {
    was: bool,
}

impl SharedContexts {
    pub(crate) fn enter() -> SharedContexts {
        // Settled before the flag is set, so libcrypto calls made by the check itself are not shared.
        let _ = plain_global_context();
        SharedContexts { was: IN_TPM_OPERATION.replace(true) }
    }
}

impl Drop for SharedContexts {
    fn drop(&mut self) {
        IN_TPM_OPERATION.set(self.was);
    }
}

/// Looks up `name` in the objects after the executable (`next`) or in the whole process.
fn symbol(name: &CStr, next: bool) -> *mut c_void {
    let handle = if next { libc::RTLD_NEXT } else { libc::RTLD_DEFAULT };
    // SAFETY: dlsym with a pseudo-handle and a NUL-terminated name only reads the loaded objects'
    // symbol tables; a missing symbol is a null pointer, which every caller checks.
    unsafe { libc::dlsym(handle, name.as_ptr()) }
}

/// libcrypto's own `OSSL_LIB_CTX_new`.
fn libcrypto_new() -> Option<CtxNew> {
    static REAL: OnceLock<usize> = OnceLock::new();
    let p = *REAL.get_or_init(|| symbol(c"OSSL_LIB_CTX_new", true) as usize);
    // SAFETY: a non-null result of dlsym for OSSL_LIB_CTX_new is libcrypto's function of this type
    // (`OSSL_LIB_CTX *OSSL_LIB_CTX_new(void)`, openssl/crypto.h).
    (p != 0).then(|| unsafe { std::mem::transmute::<usize, CtxNew>(p) })
}

/// The global context, when it holds no provider but OpenSSL's `default` and `base` (config loaded
/// first, so a provider the config activates is seen); checked once per process.
fn plain_global_context() -> Option<usize> {
    static GLOBAL: OnceLock<Option<usize>> = OnceLock::new();
    *GLOBAL.get_or_init(|| {
        let init = symbol(c"OPENSSL_init_crypto", false);
        let get0 = symbol(c"OSSL_LIB_CTX_get0_global_default", false);
        let do_all = symbol(c"OSSL_PROVIDER_do_all", false);
        let name = symbol(c"OSSL_PROVIDER_get0_name", false);
        if init.is_null() || get0.is_null() || do_all.is_null() || name.is_null() {
            return None;
        }
        // SAFETY: each pointer is libcrypto 3's exported function of the named type (openssl/crypto.h,
        // openssl/provider.h), found by name above and checked non-null.
        let (init, get0, do_all, name) = unsafe {
            (
                std::mem::transmute::<*mut c_void, InitCrypto>(init),
                std::mem::transmute::<*mut c_void, CtxNew>(get0),
                std::mem::transmute::<*mut c_void, ProviderDoAll>(do_all),
                std::mem::transmute::<*mut c_void, ProviderName>(name),
            )
        };
        struct Scan {
            name: ProviderName,
            foreign: bool,
        }
        unsafe extern "C" fn visit(provider: *mut c_void, data: *mut c_void) -> c_int {
            // SAFETY: `data` is the `Scan` passed to OSSL_PROVIDER_do_all below, alive for the call;
            // `provider` is a provider OpenSSL hands to this callback, valid during it, and the name
            // it returns is a NUL-terminated string owned by the provider.
            unsafe {
                let scan = &mut *data.cast::<Scan>();
                let n = (scan.name)(provider);
                let known = !n.is_null() && matches!(CStr::from_ptr(n).to_bytes(), b"default" | b"base");
                scan.foreign |= !known;
            }
            1
        }
        let mut scan = Scan { name, foreign: false };
        // SAFETY: OPENSSL_init_crypto(LOAD_CONFIG, NULL) and OSSL_LIB_CTX_get0_global_default() take
        // no pointers we own; OSSL_PROVIDER_do_all gets the global context, a callback of the
        // documented type and a pointer to `scan`, which outlives the call.
        unsafe {
            if init(OPENSSL_INIT_LOAD_CONFIG, std::ptr::null()) != 1 {
                return None;
            }
            let global = get0();
            if global.is_null() || do_all(global, visit, (&raw mut scan).cast()) != 1 || scan.foreign {
                return None;
            }
            Some(global as usize)
        }
    })
}

/// The interposed `OSSL_LIB_CTX *OSSL_LIB_CTX_new(void)` (see the module docs).
#[unsafe(no_mangle)]
pub extern "C" fn OSSL_LIB_CTX_new() -> *mut c_void {
    if IN_TPM_OPERATION.get()
        && let Some(global) = plain_global_context()
    {
        #[cfg(test)]
        tests::SHARED_SERVED.set(tests::SHARED_SERVED.get() + 1);
        return global as *mut c_void;
    }
    match libcrypto_new() {
        // SAFETY: libcrypto's OSSL_LIB_CTX_new takes no arguments and may be called from any thread.
        Some(new) => unsafe { new() },
        None => std::ptr::null_mut(),
    }
}

/// Whether ESAPI's library contexts are shared during TPM operations in this process: the symbol is
/// the one the process resolves, and the global context is plain. False also in a process that has not
/// loaded libcrypto (one that links no ESAPI call, such as a store-only bench): there is nothing to share.
pub fn shared_contexts_active() -> bool {
    std::ptr::eq(symbol(c"OSSL_LIB_CTX_new", false).cast_const(), OSSL_LIB_CTX_new as *const c_void)
        && plain_global_context().is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    thread_local! {
        /// How many times the interposer answered this thread with the global context.
        pub(super) static SHARED_SERVED: Cell<u64> = const { Cell::new(0) };
    }

    fn free(ctx: *mut c_void) {
        let f = symbol(c"OSSL_LIB_CTX_free", false);
        assert!(!f.is_null());
        // SAFETY: libcrypto's `void OSSL_LIB_CTX_free(OSSL_LIB_CTX *)`, given a context from
        // libcrypto's OSSL_LIB_CTX_new that nothing else holds.
        unsafe { std::mem::transmute::<*mut c_void, unsafe extern "C" fn(*mut c_void)>(f)(ctx) }
    }

    #[test]
    fn this_process_resolves_the_interposer_and_its_global_context_is_plain() {
        assert!(shared_contexts_active(), "OSSL_LIB_CTX_new is not exported: see .cargo/config.toml");
    }

    #[test]
    fn fresh_contexts_outside_tpm_operations_and_the_global_one_inside() {
        let global = plain_global_context().expect("plain global context") as *mut c_void;
        let outside = OSSL_LIB_CTX_new();
        assert!(!outside.is_null());
        assert_ne!(outside, global);
        free(outside);
        {
            let _op = SharedContexts::enter();
            assert_eq!(OSSL_LIB_CTX_new(), global);
            {
                let _nested = SharedContexts::enter();
                assert_eq!(OSSL_LIB_CTX_new(), global);
            }
            assert_eq!(OSSL_LIB_CTX_new(), global, "a nested operation's end keeps the outer one shared");
            let other_thread = std::thread::spawn(|| OSSL_LIB_CTX_new() as usize).join().expect("thread");
            assert_ne!(other_thread, global as usize, "the flag is per thread");
            free(other_thread as *mut c_void);
        }
        let after = OSSL_LIB_CTX_new();
        assert_ne!(after, global);
        free(after);
    }

    /// An OpenSSL config that activates a provider besides `default` (Debian's libssl3 ships `legacy`).
    const CONFIG_WITH_LEGACY: &str = "openssl_conf = openssl_init\n[openssl_init]\nproviders = provider_sect\n\
        [provider_sect]\ndefault = default_sect\nlegacy = legacy_sect\n[default_sect]\nactivate = 1\n\
        [legacy_sect]\nactivate = 1\n";

    #[test]
    fn a_config_that_loads_another_provider_keeps_esapi_on_private_contexts() {
        let dir = tempfile::tempdir().expect("tempdir");
        let conf = dir.path().join("openssl.cnf");
        std::fs::write(&conf, CONFIG_WITH_LEGACY).expect("write config");
        let out = std::process::Command::new(std::env::current_exe().expect("test binary"))
            .args(["--ignored", "--exact", "ossl::tests::child_with_another_provider", "--nocapture"])
            .env("OPENSSL_CONF", &conf)
            .env("BULWARK_OSSL_CHILD_DIR", dir.path())
            .output()
            .expect("spawn child");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success() && text.contains("child kept private contexts"), "child: {text}");
    }

    /// Helper for `a_config_that_loads_another_provider_keeps_esapi_on_private_contexts`: runs only
    /// when spawned by it.
    #[test]
    #[ignore = "spawned as a second process by a_config_that_loads_another_provider_keeps_esapi_on_private_contexts"]
    fn child_with_another_provider() {
        let Some(dir) = std::env::var_os("BULWARK_OSSL_CHILD_DIR") else { return };
        assert!(!shared_contexts_active(), "the legacy provider did not stop the sharing");
        let global = symbol(c"OSSL_LIB_CTX_get0_global_default", false);
        assert!(!global.is_null());
        {
            let _op = SharedContexts::enter();
            let ctx = OSSL_LIB_CTX_new();
            assert!(!ctx.is_null());
            // SAFETY: libcrypto's `OSSL_LIB_CTX *OSSL_LIB_CTX_get0_global_default(void)`, found by name.
            let global = unsafe { std::mem::transmute::<*mut c_void, CtxNew>(global)() };
            assert_ne!(ctx, global);
            free(ctx);
        }
        // ESAPI still works on its private contexts.
        let sw = crate::swtpm::Swtpm::start(&std::path::Path::new(&dir).join("swtpm")).expect("swtpm");
        let tpm = crate::Tpm::open(&sw.tcti().parse().expect("tcti")).expect("open");
        tpm.ensure_srk().expect("srk");
        assert_eq!(SHARED_SERVED.get(), 0);
        println!("child kept private contexts");
    }

    #[test]
    fn esapi_digests_of_a_tpm_operation_use_the_global_context() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sw = crate::swtpm::Swtpm::start(&dir.path().join("swtpm")).expect("swtpm");
        let tpm = crate::Tpm::open(&sw.tcti().parse().expect("tcti")).expect("open");
        let before = SHARED_SERVED.get();
        // Creating and verifying the SRK hashes its public area in ESAPI (the object's name).
        tpm.ensure_srk().expect("srk");
        assert!(SHARED_SERVED.get() > before, "no ESAPI digest went through the interposer");
    }
}
