//! TPM 2.0 access for Bulwark: TCTI choice, the storage root key, sealing tenant KEKs to the measured
//! state and tenant liveness, offline policy digests, NV, PCRs and the clock; plus the swtpm process
//! manager every software-TPM user starts the same way.
//!
//! # Trust model
//!
//! - Trusted: the TPM (hardware, or swtpm in development), and the tpm2-tss C libraries
//!   (`libtss2-esys`, `-mu`, `-tctildr`) this crate calls through tss-esapi 7.7's `tss2_esys` bindings.
//!   The path between us and a device TPM (the bus) or a remote swtpm is not trusted for secrecy:
//!   secrets cross it in sessions salted with the SRK (AES-128-CFB parameter encryption). A swtpm on
//!   loopback is not encrypted by default ([`SessionEncryption::Auto`]): whoever can read loopback
//!   traffic can read swtpm's state file, which holds every secret of that TPM.
//! - After an unseal, the plaintext ESAPI leaves in its response buffer is zeroed (`esys.rs`); the
//!   secret itself comes back as [`SecretBytes`].
//! - Not trusted: sealed-object bytes read from disk ([`SealedObject::from_bytes`] is a bounded parser
//!   that rejects trailing data and any public area that is not the template for the stored policy;
//!   the TPM's integrity check covers the rest), and every string from configuration.
//! - ESAPI's digests, HMACs and nonces run in OpenSSL's global library context during our TPM
//!   operations, not in a fresh context per digest as libtss2-esys 3.2 builds them (the private `ossl`
//!   module; [`shared_contexts_active`]). That is done only while the global context holds no provider
//!   but OpenSSL's `default` and `base`, checked once per process after the OpenSSL config is loaded:
//!   Bulwark loads no OpenSSL provider, and the appliance image ships the config.
//! - `unsafe` lives only in the private `esys` module (one FFI call per block, each with a `SAFETY:`
//!   line), the `ossl` module (the interposed `OSSL_LIB_CTX_new` and its `dlsym` lookups), and the
//!   one-time `set_var` of `TSS2_LOG` in `tpm.rs`. tss-esapi's safe `Context` cannot be
//!   used: 7.7 lacks TPM2_PolicyNV, TPM2_NV_SetBits and TPM2_ReadClock and keeps its ESAPI context
//!   private, and swtpm serves one connection at a time, so those commands cannot run on a second
//!   connection either. We use tss-esapi 7.7 for its `tss2_esys` bindings.
//! - `expect`/`unwrap` are not used outside tests.
//!
//! # Serialization
//!
//! A [`Tpm`] serializes its operations with a mutex and, across processes, with an exclusive `flock` on
//! a lock file named after the endpoint ([`lock_path`]); each logical operation (seal, unseal sequence,
//! NV operation) holds it from connect to flush. swtpm (one client at a time, no resource manager,
//! three object slots) is connected per operation; `/dev/tpmrm*` keeps its connection. Every transient
//! object and session is flushed at the end of the operation, also on error paths.
//!
//! # Must not depend on
//!
//! tokio or any async runtime, the appliance crates, CUDA.

mod esys;
mod lock;
mod ossl;
pub mod policy;
mod rc;
mod seal;
mod secret;
pub mod swtpm;
mod tcti;
mod tpm;

pub use lock::lock_path;
pub use ossl::shared_contexts_active;
pub use policy::{NvOperation, NvPublic, PcrBank, PcrIndex, PcrValues, PolicyDigest, PolicyError, policy_pcr_digest};
pub use rc::TpmRc;
pub use seal::{
    MAX_RECOVERY_AUTH, MAX_SEALED_SECRET, SEALED_ATTRIBUTES, SealPolicy, SealedFormatError, SealedObject, UnsealAuth,
};
pub use secret::SecretBytes;
pub use tcti::{SWTPM_SOCKET, TctiParseError, TctiSpec};
pub use tpm::{
    CLAIM_NV_BASE, ClockInfo, LIVENESS_NV_ATTRIBUTES, LIVENESS_NV_BASE, LivenessSlot, PlatformHierarchy, PolicyStep,
    SRK_ATTRIBUTES, SRK_HANDLE, SessionEncryption, Tpm, TpmError, TpmOptions, hash_for_bank,
};
