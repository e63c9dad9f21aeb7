//! The only place this crate calls C: a thin layer over the TSS 2.0 Enhanced System API (tpm2-tss
//! `libtss2-esys`, `-mu`, `-tctildr`), through the `tss2_esys` bindings tss-esapi 7.7 re-exports.
//!
//! Why not tss-esapi's safe `Context`: 7.7 has no TPM2_PolicyNV, TPM2_NV_SetBits or TPM2_ReadClock,
//! and keeps its `ESYS_CONTEXT` private, so those commands cannot be issued on the same connection
//! (swtpm serves one connection at a time, and a policy session lives in one ESYS context). So the
//! whole crate speaks ESAPI here, in small functions that each own exactly one FFI call.
//!
//! Invariants every function relies on:
//! - `Esys::ctx` and `Esys::tcti` are valid, initialized contexts from `connect` until `Drop`, and are
//!   only used through `&mut self` (ESAPI contexts are not thread-safe).
//! - Structures passed in are fully initialized Rust values of the bindgen `repr(C)` types; structures
//!   coming out are allocated by ESAPI with `calloc` and released with `Esys_Free` exactly once by
//!   [`Out`].
//! - Structures are built from wire bytes with the TSS marshalling library (`Tss2_MU_*`), so this
//!   module never writes C unions by hand beyond the symmetric definition of a session.

use std::ffi::CStr;
use std::ptr::null_mut;

use tss_esapi::tss2_esys as sys;
use zeroize::Zeroize;

use crate::rc::TpmRc;
use crate::secret::SecretBytes;

/// An ESAPI object or session handle (`ESYS_TR`).
pub(crate) type Tr = sys::ESYS_TR;

/// The password session (empty or `TR_SetAuth` value, no HMAC).
pub(crate) const PASSWORD: Tr = sys::ESYS_TR_PASSWORD;
const NONE: Tr = sys::ESYS_TR_NONE;
/// The owner hierarchy; its authValue is whatever [`Esys::tr_set_auth`] last set on this connection.
pub(crate) const RH_OWNER: Tr = sys::ESYS_TR_RH_OWNER;
/// The lockout hierarchy; its authValue likewise.
pub(crate) const RH_LOCKOUT: Tr = sys::ESYS_TR_RH_LOCKOUT;
/// The platform hierarchy; its authValue is never set on a connection (always the empty one).
const RH_PLATFORM: Tr = sys::ESYS_TR_RH_PLATFORM;
/// TPM_RH_PLATFORM as a TPM handle (Part 2, 7.4), the `enable` operand of TPM2_HierarchyControl.
const TPM_RH_PLATFORM: u32 = 0x4000_000C;

/// TPM_CAP_HANDLES (Part 2, 6.12).
const CAP_HANDLES: u32 = 0x0000_0001;
/// What TPM2_GetCapability(TPM_CAP_HANDLES) lists from each of these (Part 2, 7.2 and 7.4): transient
/// objects, loaded sessions (HMAC and policy), saved sessions.
const TRANSIENT_FIRST: u32 = 0x8000_0000;
const LOADED_SESSION_FIRST: u32 = 0x0200_0000;
const SAVED_SESSION_FIRST: u32 = 0x0300_0000;
/// TPM_CAP_TPM_PROPERTIES (Part 2, 6.12).
const CAP_TPM_PROPERTIES: u32 = 0x0000_0006;
/// TPM_PT_PERMANENT (Part 2, 6.13: PT_VAR + 0), answered as TPMA_PERMANENT.
const PT_PERMANENT: u32 = 0x0000_0200;
/// TPM_PT_STARTUP_CLEAR (Part 2, 6.13: PT_VAR + 1), answered as TPMA_STARTUP_CLEAR.
const PT_STARTUP_CLEAR: u32 = 0x0000_0201;

// TPM_SE (Part 2, 6.11) and TPMA_SESSION (Part 2, 8.4) values.
const SE_HMAC: u8 = 0x00;
const SE_POLICY: u8 = 0x01;
const SE_TRIAL: u8 = 0x03;
/// TPMA_SESSION continueSession.
pub(crate) const SESSION_CONTINUE: u8 = 0x01;
/// TPMA_SESSION decrypt: the first command parameter is encrypted.
pub(crate) const SESSION_DECRYPT: u8 = 0x20;
/// TPMA_SESSION encrypt: the first response parameter is encrypted.
pub(crate) const SESSION_ENCRYPT: u8 = 0x40;

// TPM_ALG_ID values (Part 2, 6.3).
const ALG_AES: u16 = 0x0006;
const ALG_SHA256: u16 = 0x000B;
const ALG_NULL: u16 = 0x0010;
const ALG_CFB: u16 = 0x0043;

/// A response code sentinel for "the marshalled structure had trailing bytes" (TSS2_MU_RC_BAD_SIZE).
const MU_BAD_SIZE: u32 = 0x0009_0010;
/// A response code sentinel for "ESAPI returned success but no output" (TSS2_ESYS_RC_GENERAL_FAILURE).
const ESYS_GENERAL_FAILURE: u32 = 0x0007_0001;

/// A failed ESAPI call: which command, and the response code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct EsysError {
    /// The TPM command or library function, e.g. "TPM2_Unseal".
    pub cmd: &'static str,
    /// What it returned.
    pub rc: TpmRc,
}

pub(crate) type R<T> = Result<T, EsysError>;

fn check(cmd: &'static str, rc: u32) -> R<()> {
    if rc == 0 { Ok(()) } else { Err(EsysError { cmd, rc: TpmRc(rc) }) }
}

fn len16(cmd: &'static str, n: usize) -> R<u16> {
    u16::try_from(n).map_err(|_| EsysError { cmd, rc: TpmRc(MU_BAD_SIZE) })
}

/// Plain C data for which the all-zero bit pattern is a valid value.
///
/// # Safety
/// Implement only for `repr(C)` structs made of integers, byte arrays and unions/structs of those
/// (no pointers, no enums with invalid zero discriminants).
pub(crate) unsafe trait Zeroable: Sized + Copy {
    /// The all-zero value (what C's `= {0}` gives).
    fn zeroed() -> Self {
        // SAFETY: by the trait's contract the all-zero bit pattern is a valid `Self`.
        unsafe { std::mem::zeroed() }
    }
}

macro_rules! zeroable {
    ($($t:ident),* $(,)?) => {$(
        // SAFETY: bindgen-generated repr(C) TSS structure of integers, byte arrays and unions of
        // those; no pointers or enums, so all-zero is a valid value.
        unsafe impl Zeroable for sys::$t {}
    )*};
}

zeroable!(
    TPM2B_DIGEST,
    TPML_DIGEST,
    TPM2B_PUBLIC,
    TPM2B_PRIVATE,
    TPML_PCR_SELECTION,
    TPM2B_SENSITIVE_CREATE,
    TPM2B_NV_PUBLIC,
    TPML_DIGEST_VALUES,
    TPMT_SYM_DEF,
    TPM2B_DATA,
    TPM2B_MAX_NV_BUFFER,
    TPM2B_SENSITIVE_DATA,
);

/// Conversion between a TSS structure and its TPM wire encoding, through `Tss2_MU_*`.
pub(crate) trait Wire: Zeroable {
    /// The TPM wire encoding.
    fn to_wire(&self) -> R<Vec<u8>>;
    /// Parses exactly `bytes` (trailing bytes are an error).
    fn from_wire(bytes: &[u8]) -> R<Self>;
}

macro_rules! wire {
    ($t:ident, $m:ident, $u:ident) => {
        impl Wire for sys::$t {
            fn to_wire(&self) -> R<Vec<u8>> {
                // A marshalled structure is never larger than its C representation plus size prefixes.
                let mut buf = vec![0u8; std::mem::size_of::<Self>() + 64];
                let mut off: sys::size_t = 0;
                let cap = buf.len() as sys::size_t;
                // SAFETY: `self` is a valid structure; `buf` is writable for `cap` bytes; the MU
                // function writes at most `cap` bytes and stores the count in `off`.
                let rc = unsafe { sys::$m(self, buf.as_mut_ptr(), cap, &mut off) };
                check(concat!("Tss2_MU_", stringify!($t), "_Marshal"), rc)?;
                let used = usize::try_from(off).map_err(|_| EsysError { cmd: "marshal", rc: TpmRc(MU_BAD_SIZE) })?;
                buf.truncate(used);
                Ok(buf)
            }

            fn from_wire(bytes: &[u8]) -> R<Self> {
                let mut out = Self::zeroed();
                let mut off: sys::size_t = 0;
                // SAFETY: `bytes` is readable for its length; `out` is a valid, writable structure; the
                // MU function reads at most `bytes.len()` bytes and bounds-checks every array size.
                let rc = unsafe { sys::$u(bytes.as_ptr(), bytes.len() as sys::size_t, &mut off, &mut out) };
                check(concat!("Tss2_MU_", stringify!($t), "_Unmarshal"), rc)?;
                if usize::try_from(off).ok() != Some(bytes.len()) {
                    return Err(EsysError {
                        cmd: concat!("Tss2_MU_", stringify!($t), "_Unmarshal"),
                        rc: TpmRc(MU_BAD_SIZE),
                    });
                }
                Ok(out)
            }
        }
    };
}

wire!(TPM2B_PUBLIC, Tss2_MU_TPM2B_PUBLIC_Marshal, Tss2_MU_TPM2B_PUBLIC_Unmarshal);
wire!(TPM2B_PRIVATE, Tss2_MU_TPM2B_PRIVATE_Marshal, Tss2_MU_TPM2B_PRIVATE_Unmarshal);
wire!(TPML_PCR_SELECTION, Tss2_MU_TPML_PCR_SELECTION_Marshal, Tss2_MU_TPML_PCR_SELECTION_Unmarshal);
wire!(TPM2B_NV_PUBLIC, Tss2_MU_TPM2B_NV_PUBLIC_Marshal, Tss2_MU_TPM2B_NV_PUBLIC_Unmarshal);
wire!(TPML_DIGEST_VALUES, Tss2_MU_TPML_DIGEST_VALUES_Marshal, Tss2_MU_TPML_DIGEST_VALUES_Unmarshal);

/// An output structure allocated by ESAPI; freed with `Esys_Free` on drop.
struct Out<T>(*mut T);

impl<T: Copy> Out<T> {
    fn new() -> Self {
        Out(null_mut())
    }

    fn slot(&mut self) -> *mut *mut T {
        &mut self.0
    }

    /// The structure, once ESAPI filled the slot.
    fn get_mut(&mut self, cmd: &'static str) -> R<&mut T> {
        if self.0.is_null() {
            return Err(EsysError { cmd, rc: TpmRc(ESYS_GENERAL_FAILURE) });
        }
        // SAFETY: non-null pointers in the slot come from ESAPI, which allocates a properly aligned,
        // initialized `T` that we own exclusively until `Drop` frees it.
        Ok(unsafe { &mut *self.0 })
    }

    fn read(mut self, cmd: &'static str) -> R<T> {
        self.get_mut(cmd).map(|v| *v)
    }
}

impl<T> Drop for Out<T> {
    fn drop(&mut self) {
        if !self.0.is_null() {
            // SAFETY: the pointer was allocated by ESAPI (calloc) for this output and is freed once.
            unsafe { sys::Esys_Free(self.0.cast()) };
            self.0 = null_mut();
        }
    }
}

fn digest2b(cmd: &'static str, bytes: &[u8]) -> R<sys::TPM2B_DIGEST> {
    let mut d = sys::TPM2B_DIGEST::zeroed();
    if bytes.len() > d.buffer.len() {
        return Err(EsysError { cmd, rc: TpmRc(MU_BAD_SIZE) });
    }
    d.size = len16(cmd, bytes.len())?;
    d.buffer[..bytes.len()].copy_from_slice(bytes);
    Ok(d)
}

/// What kind of session to start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SessionKind {
    /// HMAC session (authorizes by the entity's authValue).
    Hmac,
    /// Policy session.
    Policy,
    /// Trial policy session (computes a digest, authorizes nothing).
    Trial,
}

/// TPMS_CLOCK_INFO and time from TPM2_ReadClock.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TimeInfo {
    pub time: u64,
    pub clock: u64,
    pub reset_count: u32,
    pub restart_count: u32,
    pub safe: bool,
}

/// One connection to a TPM: a TCTI plus an ESAPI context, and the transient objects and sessions
/// created through it that must be flushed (swtpm has no resource manager: nothing is flushed for us).
pub(crate) struct Esys {
    ctx: *mut sys::ESYS_CONTEXT,
    tcti: *mut sys::TSS2_TCTI_CONTEXT,
    transients: Vec<Tr>,
}

// SAFETY: the ESAPI and TCTI contexts are reachable only through this struct, every use takes
// `&mut self`, and neither library keeps state tied to the creating thread, so moving the connection
// to another thread (behind the `Tpm` mutex) is sound.
unsafe impl Send for Esys {}

impl Esys {
    /// Opens the TCTI named by `conf` (a TCTI loader string like `swtpm:host=H,port=P`) and an ESAPI
    /// context on it.
    pub(crate) fn connect(conf: &CStr) -> R<Esys> {
        let mut tcti: *mut sys::TSS2_TCTI_CONTEXT = null_mut();
        // SAFETY: `conf` is a NUL-terminated string; `tcti` is a valid out-pointer.
        let rc = unsafe { sys::Tss2_TctiLdr_Initialize(conf.as_ptr(), &mut tcti) };
        check("Tss2_TctiLdr_Initialize", rc)?;
        let mut ctx: *mut sys::ESYS_CONTEXT = null_mut();
        // SAFETY: `tcti` is the initialized TCTI from above; a null ABI version means "the library's".
        let rc = unsafe { sys::Esys_Initialize(&mut ctx, tcti, null_mut()) };
        if let Err(e) = check("Esys_Initialize", rc) {
            // SAFETY: `tcti` was initialized by the loader above and is finalized once.
            unsafe { sys::Tss2_TctiLdr_Finalize(&mut tcti) };
            return Err(e);
        }
        Ok(Esys { ctx, tcti, transients: Vec::new() })
    }

    fn track(&mut self, tr: Tr) -> Tr {
        self.transients.push(tr);
        tr
    }

    /// Stops tracking `tr` (the TPM flushed it itself, e.g. a session used without continueSession).
    pub(crate) fn forget(&mut self, tr: Tr) {
        self.transients.retain(|t| *t != tr);
    }

    /// Flushes every transient object and session this connection still holds. Returns the first
    /// failure, after trying them all.
    pub(crate) fn flush_all(&mut self) -> R<()> {
        let mut first = Ok(());
        while let Some(tr) = self.transients.pop() {
            // SAFETY: `ctx` is valid; `tr` is a transient handle created on this context.
            let rc = unsafe { sys::Esys_FlushContext(self.ctx, tr) };
            if first.is_ok() {
                first = check("TPM2_FlushContext", rc);
            }
        }
        first
    }

    /// Flushes every transient object and session loaded in the TPM, whoever loaded them (found with
    /// TPM2_GetCapability(TPM_CAP_HANDLES)); returns how many went. Only for a TPM that no other client
    /// uses at the same time and that has no resource manager: there, anything loaded when an operation
    /// begins was left by a process that died before it could flush.
    pub(crate) fn flush_left_over(&mut self) -> R<usize> {
        let mut handles = std::collections::BTreeSet::new();
        for first in [TRANSIENT_FIRST, LOADED_SESSION_FIRST, SAVED_SESSION_FIRST] {
            handles.extend(self.loaded_handles(first)?);
        }
        for &handle in &handles {
            let mut tr: Tr = NONE;
            // SAFETY: `ctx` is valid; `tr` is a valid out-pointer.
            let rc = unsafe { sys::Esys_TR_FromTPMPublic(self.ctx, handle, NONE, NONE, NONE, &mut tr) };
            check("TPM2_ReadPublic", rc)?;
            // SAFETY: `ctx` is valid; `tr` was created on this context just now.
            check("TPM2_FlushContext", unsafe { sys::Esys_FlushContext(self.ctx, tr) })?;
        }
        Ok(handles.len())
    }

    /// The handles loaded in the TPM of the type `first` starts (TPM2_GetCapability(TPM_CAP_HANDLES)),
    /// up to the few a TPM holds at once.
    fn loaded_handles(&mut self, first: u32) -> R<Vec<u32>> {
        let data = self.capability(CAP_HANDLES, first, 64)?;
        // SAFETY: the capability tag says the union holds `handles` (ESAPI unmarshals the member the tag
        // selects); every member is plain integers, so reading it is defined in any case.
        let list = unsafe { data.data.handles };
        let count = usize::try_from(list.count).unwrap_or(usize::MAX).min(list.handle.len());
        Ok(list.handle[..count].to_vec())
    }

    /// Flushes one transient object or session.
    pub(crate) fn flush(&mut self, tr: Tr) -> R<()> {
        self.forget(tr);
        // SAFETY: `ctx` is valid; `tr` is a transient handle created on this context.
        check("TPM2_FlushContext", unsafe { sys::Esys_FlushContext(self.ctx, tr) })
    }

    /// An ESAPI handle for a persistent object or NV index (reads its public area from the TPM).
    pub(crate) fn tr_from_tpm_public(&mut self, handle: u32) -> R<Tr> {
        let mut tr: Tr = NONE;
        // SAFETY: `ctx` is valid; `tr` is a valid out-pointer.
        let rc = unsafe { sys::Esys_TR_FromTPMPublic(self.ctx, handle, NONE, NONE, NONE, &mut tr) };
        check("TPM2_ReadPublic", rc)?;
        Ok(tr)
    }

    /// Serializes an ESAPI handle's metadata (public area, name) so a later connection can rebuild it
    /// without a TPM round trip.
    pub(crate) fn tr_serialize(&mut self, tr: Tr) -> R<Vec<u8>> {
        let mut buf: Out<u8> = Out::new();
        let mut len: sys::size_t = 0;
        // SAFETY: `ctx` is valid; the out-pointers are valid; ESAPI allocates `len` bytes.
        let rc = unsafe { sys::Esys_TR_Serialize(self.ctx, tr, buf.slot(), &mut len) };
        check("Esys_TR_Serialize", rc)?;
        let len = usize::try_from(len).map_err(|_| EsysError { cmd: "Esys_TR_Serialize", rc: TpmRc(MU_BAD_SIZE) })?;
        if buf.0.is_null() {
            return Err(EsysError { cmd: "Esys_TR_Serialize", rc: TpmRc(ESYS_GENERAL_FAILURE) });
        }
        // SAFETY: ESAPI returned a buffer of exactly `len` initialized bytes, alive until `buf` drops.
        let bytes = unsafe { std::slice::from_raw_parts(buf.0, len) };
        Ok(bytes.to_vec())
    }

    /// Rebuilds a handle serialized by [`Self::tr_serialize`].
    pub(crate) fn tr_deserialize(&mut self, bytes: &[u8]) -> R<Tr> {
        let mut tr: Tr = NONE;
        // SAFETY: `ctx` is valid; `bytes` is readable for its length; ESAPI bounds-checks the parse.
        let rc = unsafe { sys::Esys_TR_Deserialize(self.ctx, bytes.as_ptr(), bytes.len() as sys::size_t, &mut tr) };
        check("Esys_TR_Deserialize", rc)?;
        Ok(tr)
    }

    /// Releases ESAPI's metadata for a persistent object or NV index (no TPM command).
    pub(crate) fn tr_close(&mut self, mut tr: Tr) {
        // SAFETY: `ctx` is valid; `tr` is a handle of this context. Failure only means it was not open.
        let _ = unsafe { sys::Esys_TR_Close(self.ctx, &mut tr) };
    }

    /// Sets the authValue ESAPI uses for `tr` in password and HMAC/policy sessions.
    pub(crate) fn tr_set_auth(&mut self, tr: Tr, auth: &[u8]) -> R<()> {
        let mut a = digest2b("Esys_TR_SetAuth", auth)?;
        // SAFETY: `ctx` is valid; `a` is a valid TPM2B_AUTH the call copies.
        let rc = unsafe { sys::Esys_TR_SetAuth(self.ctx, tr, &a) };
        a.buffer.zeroize();
        check("Esys_TR_SetAuth", rc)
    }

    /// TPM2_ReadPublic: the object's TPM2B_PUBLIC wire bytes.
    pub(crate) fn read_public(&mut self, tr: Tr) -> R<Vec<u8>> {
        let mut public: Out<sys::TPM2B_PUBLIC> = Out::new();
        let mut name: Out<sys::TPM2B_NAME> = Out::new();
        let mut qname: Out<sys::TPM2B_NAME> = Out::new();
        // SAFETY: `ctx` is valid; out-slots are valid and freed by `Out`.
        let rc =
            unsafe { sys::Esys_ReadPublic(self.ctx, tr, NONE, NONE, NONE, public.slot(), name.slot(), qname.slot()) };
        check("TPM2_ReadPublic", rc)?;
        public.read("TPM2_ReadPublic")?.to_wire()
    }

    /// TPM2_CreatePrimary in the owner hierarchy (empty owner auth) from a TPM2B_PUBLIC template.
    pub(crate) fn create_primary_owner(&mut self, template: &[u8]) -> R<Tr> {
        let public = sys::TPM2B_PUBLIC::from_wire(template)?;
        let sensitive = sys::TPM2B_SENSITIVE_CREATE::zeroed();
        let outside = sys::TPM2B_DATA::zeroed();
        let pcrs = sys::TPML_PCR_SELECTION::zeroed();
        let mut tr: Tr = NONE;
        let mut out_public: Out<sys::TPM2B_PUBLIC> = Out::new();
        let mut cdata: Out<sys::TPM2B_CREATION_DATA> = Out::new();
        let mut chash: Out<sys::TPM2B_DIGEST> = Out::new();
        let mut ticket: Out<sys::TPMT_TK_CREATION> = Out::new();
        // SAFETY: `ctx` is valid; inputs are initialized structures; out-slots are freed by `Out`.
        let rc = unsafe {
            sys::Esys_CreatePrimary(
                self.ctx,
                RH_OWNER,
                PASSWORD,
                NONE,
                NONE,
                &sensitive,
                &public,
                &outside,
                &pcrs,
                &mut tr,
                out_public.slot(),
                cdata.slot(),
                chash.slot(),
                ticket.slot(),
            )
        };
        check("TPM2_CreatePrimary", rc)?;
        Ok(self.track(tr))
    }

    /// TPM2_EvictControl by the owner: makes `obj` persistent at `persistent`.
    pub(crate) fn evict_control_owner(&mut self, obj: Tr, persistent: u32) -> R<Tr> {
        let mut tr: Tr = NONE;
        // SAFETY: `ctx` is valid; `tr` is a valid out-pointer.
        let rc = unsafe { sys::Esys_EvictControl(self.ctx, RH_OWNER, obj, PASSWORD, NONE, NONE, persistent, &mut tr) };
        check("TPM2_EvictControl", rc)?;
        Ok(tr)
    }

    /// TPM2_StartAuthSession, SHA-256, unbound. `salt_key` salts the session (ESAPI encrypts a random
    /// salt to that key), which gives it a session key and enables AES-128-CFB parameter encryption.
    pub(crate) fn start_session(&mut self, kind: SessionKind, salt_key: Option<Tr>) -> R<Tr> {
        let mut sym = sys::TPMT_SYM_DEF::zeroed();
        if salt_key.is_some() {
            sym.algorithm = ALG_AES;
            sym.keyBits.aes = 128;
            sym.mode.aes = ALG_CFB;
        } else {
            sym.algorithm = ALG_NULL;
        }
        let se = match kind {
            SessionKind::Hmac => SE_HMAC,
            SessionKind::Policy => SE_POLICY,
            SessionKind::Trial => SE_TRIAL,
        };
        let mut tr: Tr = NONE;
        // SAFETY: `ctx` is valid; `sym` is initialized; a null caller nonce lets ESAPI generate one.
        let rc = unsafe {
            sys::Esys_StartAuthSession(
                self.ctx,
                salt_key.unwrap_or(NONE),
                NONE,
                NONE,
                NONE,
                NONE,
                std::ptr::null(),
                se,
                &sym,
                ALG_SHA256,
                &mut tr,
            )
        };
        check("TPM2_StartAuthSession", rc)?;
        Ok(self.track(tr))
    }

    /// Sets (`set`) and clears (`mask & !set`) TPMA_SESSION bits for the session's next uses.
    pub(crate) fn session_attrs(&mut self, session: Tr, set: u8, mask: u8) -> R<()> {
        // SAFETY: `ctx` is valid; `session` is a session of this context.
        check("Esys_TRSess_SetAttributes", unsafe { sys::Esys_TRSess_SetAttributes(self.ctx, session, set, mask) })
    }

    /// TPM2_PolicyPCR. `digest` None: the TPM uses the current PCR values.
    pub(crate) fn policy_pcr(&mut self, session: Tr, digest: Option<&[u8; 32]>, selection: &[u8]) -> R<()> {
        let d = digest2b("TPM2_PolicyPCR", digest.map(|d| d.as_slice()).unwrap_or(&[]))?;
        let sel = sys::TPML_PCR_SELECTION::from_wire(selection)?;
        // SAFETY: `ctx` is valid; `d` and `sel` are initialized.
        let rc = unsafe { sys::Esys_PolicyPCR(self.ctx, session, NONE, NONE, NONE, &d, &sel) };
        check("TPM2_PolicyPCR", rc)
    }

    /// TPM2_PolicyNV, authorized by the index's own (empty) authValue through a password session.
    pub(crate) fn policy_nv(&mut self, session: Tr, nv: Tr, operand_b: &[u8], offset: u16, op: u16) -> R<()> {
        let operand = digest2b("TPM2_PolicyNV", operand_b)?;
        // SAFETY: `ctx` is valid; `operand` is initialized.
        let rc = unsafe { sys::Esys_PolicyNV(self.ctx, nv, nv, session, PASSWORD, NONE, NONE, &operand, offset, op) };
        check("TPM2_PolicyNV", rc)
    }

    /// TPM2_PolicyOR over 2..=8 branch digests.
    pub(crate) fn policy_or(&mut self, session: Tr, branches: &[[u8; 32]]) -> R<()> {
        let mut list = sys::TPML_DIGEST::zeroed();
        if branches.len() > list.digests.len() {
            return Err(EsysError { cmd: "TPM2_PolicyOR", rc: TpmRc(MU_BAD_SIZE) });
        }
        for (slot, b) in list.digests.iter_mut().zip(branches) {
            *slot = digest2b("TPM2_PolicyOR", b)?;
        }
        list.count =
            u32::try_from(branches.len()).map_err(|_| EsysError { cmd: "TPM2_PolicyOR", rc: TpmRc(MU_BAD_SIZE) })?;
        // SAFETY: `ctx` is valid; `list` is initialized with `count` digests.
        check("TPM2_PolicyOR", unsafe { sys::Esys_PolicyOR(self.ctx, session, NONE, NONE, NONE, &list) })
    }

    /// TPM2_PolicyAuthValue.
    pub(crate) fn policy_auth_value(&mut self, session: Tr) -> R<()> {
        // SAFETY: `ctx` is valid.
        check("TPM2_PolicyAuthValue", unsafe { sys::Esys_PolicyAuthValue(self.ctx, session, NONE, NONE, NONE) })
    }

    /// TPM2_PolicyGetDigest.
    pub(crate) fn policy_get_digest(&mut self, session: Tr) -> R<Vec<u8>> {
        let mut d: Out<sys::TPM2B_DIGEST> = Out::new();
        // SAFETY: `ctx` is valid; the out-slot is freed by `Out`.
        check("TPM2_PolicyGetDigest", unsafe {
            sys::Esys_PolicyGetDigest(self.ctx, session, NONE, NONE, NONE, d.slot())
        })?;
        let d = d.read("TPM2_PolicyGetDigest")?;
        Ok(d.buffer[..usize::from(d.size).min(d.buffer.len())].to_vec())
    }

    /// TPM2_Create of a sealed data object under `parent`, authorized by `session` (an HMAC session on
    /// the parent, ideally salted with decrypt set so `data` and `auth` cross the bus encrypted).
    /// Returns the TPM2B_PUBLIC and TPM2B_PRIVATE wire bytes.
    pub(crate) fn create_sealed(
        &mut self,
        parent: Tr,
        session: Tr,
        template: &[u8],
        data: &[u8],
        auth: &[u8],
    ) -> R<(Vec<u8>, Vec<u8>)> {
        let public = sys::TPM2B_PUBLIC::from_wire(template)?;
        let mut sensitive = sys::TPM2B_SENSITIVE_CREATE::zeroed();
        let result = (|| {
            let s = &mut sensitive.sensitive;
            if data.len() > s.data.buffer.len() || auth.len() > s.userAuth.buffer.len() {
                return Err(EsysError { cmd: "TPM2_Create", rc: TpmRc(MU_BAD_SIZE) });
            }
            s.data.size = len16("TPM2_Create", data.len())?;
            s.data.buffer[..data.len()].copy_from_slice(data);
            s.userAuth.size = len16("TPM2_Create", auth.len())?;
            s.userAuth.buffer[..auth.len()].copy_from_slice(auth);
            let outside = sys::TPM2B_DATA::zeroed();
            let pcrs = sys::TPML_PCR_SELECTION::zeroed();
            let mut out_private: Out<sys::TPM2B_PRIVATE> = Out::new();
            let mut out_public: Out<sys::TPM2B_PUBLIC> = Out::new();
            let mut cdata: Out<sys::TPM2B_CREATION_DATA> = Out::new();
            let mut chash: Out<sys::TPM2B_DIGEST> = Out::new();
            let mut ticket: Out<sys::TPMT_TK_CREATION> = Out::new();
            // SAFETY: `ctx` is valid; inputs are initialized structures; out-slots are freed by `Out`.
            let rc = unsafe {
                sys::Esys_Create(
                    self.ctx,
                    parent,
                    session,
                    NONE,
                    NONE,
                    &sensitive,
                    &public,
                    &outside,
                    &pcrs,
                    out_private.slot(),
                    out_public.slot(),
                    cdata.slot(),
                    chash.slot(),
                    ticket.slot(),
                )
            };
            check("TPM2_Create", rc)?;
            let public = out_public.read("TPM2_Create")?.to_wire()?;
            let private = out_private.read("TPM2_Create")?.to_wire()?;
            Ok((public, private))
        })();
        sensitive.sensitive.data.buffer.zeroize();
        sensitive.sensitive.userAuth.buffer.zeroize();
        result
    }

    /// TPM2_Load under `parent` (empty parent auth, password session).
    pub(crate) fn load(&mut self, parent: Tr, public: &[u8], private: &[u8]) -> R<Tr> {
        let public = sys::TPM2B_PUBLIC::from_wire(public)?;
        let private = sys::TPM2B_PRIVATE::from_wire(private)?;
        let mut tr: Tr = NONE;
        // SAFETY: `ctx` is valid; inputs are initialized; `tr` is a valid out-pointer.
        let rc = unsafe { sys::Esys_Load(self.ctx, parent, PASSWORD, NONE, NONE, &private, &public, &mut tr) };
        check("TPM2_Load", rc)?;
        Ok(self.track(tr))
    }

    /// TPM2_Unseal authorized by `session`; `encrypt_session`, if any, is a second (non-authorizing)
    /// session whose encrypt attribute protects the response. The response buffer is zeroed before it
    /// is freed.
    pub(crate) fn unseal(&mut self, obj: Tr, session: Tr, encrypt_session: Option<Tr>) -> R<SecretBytes> {
        let mut out: Out<sys::TPM2B_SENSITIVE_DATA> = Out::new();
        let s2 = encrypt_session.unwrap_or(NONE);
        // SAFETY: `ctx` is valid; the out-slot is freed by `Out`.
        let rc = unsafe { sys::Esys_Unseal(self.ctx, obj, session, s2, NONE, out.slot()) };
        let result = check("TPM2_Unseal", rc).and_then(|()| {
            let data = out.get_mut("TPM2_Unseal")?;
            let n = usize::from(data.size).min(data.buffer.len());
            let secret = SecretBytes::from_slice(&data.buffer[..n]);
            data.buffer.zeroize();
            Ok(secret)
        });
        if result.is_ok() {
            self.scrub_response_parameters();
        }
        result
    }

    /// The SAPI context's response-parameter area (inside its command/response buffer) of the last
    /// command: where the unsealed data sits in clear (ESAPI decrypts in place). Null if unavailable.
    fn response_parameters(&mut self) -> (*const u8, usize) {
        let mut sys_ctx: *mut sys::TSS2_SYS_CONTEXT = null_mut();
        // SAFETY: `ctx` is valid; `sys_ctx` is a valid out-pointer to ESAPI's own SAPI context.
        if unsafe { sys::Esys_GetSysContext(self.ctx, &mut sys_ctx) } != 0 || sys_ctx.is_null() {
            return (std::ptr::null(), 0);
        }
        let mut used: sys::size_t = 0;
        let mut buf: *const u8 = std::ptr::null();
        // SAFETY: `sys_ctx` is ESAPI's live SAPI context; the out-pointers are valid.
        if unsafe { sys::Tss2_Sys_GetRpBuffer(sys_ctx, &mut used, &mut buf) } != 0 || buf.is_null() {
            return (std::ptr::null(), 0);
        }
        // SAPI bounds responses by its buffer, TPM2_MAX_COMMAND_SIZE (4096) for ESAPI's context.
        (buf, usize::try_from(used).unwrap_or(0).min(4096))
    }

    /// Zeroes the last response's parameters in the SAPI buffer (best effort: skipped if SAPI does
    /// not hand out the area).
    fn scrub_response_parameters(&mut self) {
        let (buf, len) = self.response_parameters();
        if buf.is_null() || len == 0 {
            return;
        }
        // SAFETY: `buf..buf+len` lies inside the SAPI context's heap-allocated command/response
        // buffer (writable memory the context owns; the API's `const` only says SAPI does not expect
        // writes). The command has completed, SAPI re-marshals the next command from scratch, and no
        // Rust reference aliases this memory.
        unsafe { std::slice::from_raw_parts_mut(buf.cast_mut(), len) }.zeroize();
    }

    /// Test hook: a copy of the last response's parameter area.
    #[cfg(test)]
    pub(crate) fn last_response_parameters(&mut self) -> Vec<u8> {
        let (buf, len) = self.response_parameters();
        if buf.is_null() {
            return Vec::new();
        }
        // SAFETY: as in `scrub_response_parameters`, read-only.
        unsafe { std::slice::from_raw_parts(buf, len) }.to_vec()
    }

    /// TPM2_NV_DefineSpace by the owner with an empty index authValue. `public` is TPMS_NV_PUBLIC wire.
    pub(crate) fn nv_define_owner(&mut self, public: &[u8]) -> R<Tr> {
        let mut wire = Vec::with_capacity(public.len() + 2);
        wire.extend_from_slice(&len16("TPM2_NV_DefineSpace", public.len())?.to_be_bytes());
        wire.extend_from_slice(public);
        let nv_public = sys::TPM2B_NV_PUBLIC::from_wire(&wire)?;
        let auth = sys::TPM2B_DIGEST::zeroed();
        let mut tr: Tr = NONE;
        // SAFETY: `ctx` is valid; inputs are initialized; `tr` is a valid out-pointer.
        let rc =
            unsafe { sys::Esys_NV_DefineSpace(self.ctx, RH_OWNER, PASSWORD, NONE, NONE, &auth, &nv_public, &mut tr) };
        check("TPM2_NV_DefineSpace", rc)?;
        Ok(tr)
    }

    /// TPM2_NV_ReadPublic: (TPMS_NV_PUBLIC wire, Name).
    pub(crate) fn nv_read_public(&mut self, nv: Tr) -> R<(Vec<u8>, Vec<u8>)> {
        let mut public: Out<sys::TPM2B_NV_PUBLIC> = Out::new();
        let mut name: Out<sys::TPM2B_NAME> = Out::new();
        // SAFETY: `ctx` is valid; out-slots are freed by `Out`.
        let rc = unsafe { sys::Esys_NV_ReadPublic(self.ctx, nv, NONE, NONE, NONE, public.slot(), name.slot()) };
        check("TPM2_NV_ReadPublic", rc)?;
        let wire = public.read("TPM2_NV_ReadPublic")?.to_wire()?;
        let name = name.read("TPM2_NV_ReadPublic")?;
        let name = name.name[..usize::from(name.size).min(name.name.len())].to_vec();
        Ok((wire.get(2..).unwrap_or_default().to_vec(), name))
    }

    /// TPM2_HierarchyChangeAuth of `hierarchy` ([`RH_OWNER`] or [`RH_LOCKOUT`]) to `new_auth`, authorized
    /// (password session) by that hierarchy's authValue currently set on this connection.
    pub(crate) fn hierarchy_change_auth(&mut self, hierarchy: Tr, new_auth: &[u8]) -> R<()> {
        let mut a = digest2b("TPM2_HierarchyChangeAuth", new_auth)?;
        // SAFETY: `ctx` is valid; `a` is a valid TPM2B_AUTH the call copies.
        let rc = unsafe { sys::Esys_HierarchyChangeAuth(self.ctx, hierarchy, PASSWORD, NONE, NONE, &a) };
        a.buffer.zeroize();
        check("TPM2_HierarchyChangeAuth", rc)
    }

    /// TPM2_HierarchyControl disabling the platform hierarchy (`enable` = TPM_RH_PLATFORM, `state` = NO)
    /// under the platform's authValue, which this layer leaves empty. Disabled, the platform hierarchy
    /// answers nothing until the TPM's next TPM2_Startup(CLEAR) (Part 3, TPM2_HierarchyControl).
    pub(crate) fn disable_platform_hierarchy(&mut self) -> R<()> {
        // SAFETY: `ctx` is valid; both operands are plain integers.
        let rc = unsafe { sys::Esys_HierarchyControl(self.ctx, RH_PLATFORM, PASSWORD, NONE, NONE, TPM_RH_PLATFORM, 0) };
        check("TPM2_HierarchyControl", rc)
    }

    /// TPMA_PERMANENT (Part 2, 8.6), from TPM2_GetCapability of TPM_PT_PERMANENT: which hierarchy
    /// authorizations are set, among others. Needs no authorization.
    pub(crate) fn permanent_attributes(&mut self) -> R<u32> {
        self.variable_property(PT_PERMANENT)
    }

    /// TPMA_STARTUP_CLEAR (Part 2, 8.7), from TPM2_GetCapability of TPM_PT_STARTUP_CLEAR: which
    /// hierarchies are enabled since the last TPM2_Startup, among others. Needs no authorization.
    pub(crate) fn startup_clear_attributes(&mut self) -> R<u32> {
        self.variable_property(PT_STARTUP_CLEAR)
    }

    /// TPM2_GetCapability of up to `count` items of `capability` from `property` on, checked to be
    /// of the capability asked for (the first reply; what `moreData` says is left out).
    fn capability(&mut self, capability: u32, property: u32, count: u32) -> R<sys::TPMS_CAPABILITY_DATA> {
        const CMD: &str = "TPM2_GetCapability";
        let mut more: sys::TPMI_YES_NO = 0;
        let mut data: Out<sys::TPMS_CAPABILITY_DATA> = Out::new();
        // SAFETY: `ctx` is valid; `more` is a writable byte; the out-slot is freed by `Out`.
        let rc = unsafe {
            sys::Esys_GetCapability(self.ctx, NONE, NONE, NONE, capability, property, count, &mut more, data.slot())
        };
        check(CMD, rc)?;
        let data = data.read(CMD)?;
        if data.capability != capability {
            return Err(EsysError { cmd: CMD, rc: TpmRc(ESYS_GENERAL_FAILURE) });
        }
        Ok(data)
    }

    /// One TPM property of the PT_VAR group (Part 2, 6.13) by TPM2_GetCapability(TPM_CAP_TPM_PROPERTIES).
    fn variable_property(&mut self, property: u32) -> R<u32> {
        let data = self.capability(CAP_TPM_PROPERTIES, property, 1)?;
        let malformed = EsysError { cmd: "TPM2_GetCapability", rc: TpmRc(ESYS_GENERAL_FAILURE) };
        // SAFETY: the capability tag says the union holds `tpmProperties` (ESAPI unmarshals the member
        // the tag selects); every member is plain integers, so reading it is defined in any case.
        let props = unsafe { data.data.tpmProperties };
        let count = usize::try_from(props.count).unwrap_or(usize::MAX).min(props.tpmProperty.len());
        props.tpmProperty[..count].iter().find(|p| p.property == property).map(|p| p.value).ok_or(malformed)
    }

    /// TPM2_NV_SetBits by the owner.
    pub(crate) fn nv_set_bits_owner(&mut self, nv: Tr, bits: u64) -> R<()> {
        // SAFETY: `ctx` is valid.
        check("TPM2_NV_SetBits", unsafe { sys::Esys_NV_SetBits(self.ctx, RH_OWNER, nv, PASSWORD, NONE, NONE, bits) })
    }

    /// TPM2_NV_Read authorized by the index itself (`by_owner` false) or the owner, password session.
    pub(crate) fn nv_read(&mut self, nv: Tr, by_owner: bool, size: u16, offset: u16) -> R<Vec<u8>> {
        let auth = if by_owner { RH_OWNER } else { nv };
        let mut data: Out<sys::TPM2B_MAX_NV_BUFFER> = Out::new();
        // SAFETY: `ctx` is valid; the out-slot is freed by `Out`.
        let rc = unsafe { sys::Esys_NV_Read(self.ctx, auth, nv, PASSWORD, NONE, NONE, size, offset, data.slot()) };
        check("TPM2_NV_Read", rc)?;
        let d = data.read("TPM2_NV_Read")?;
        Ok(d.buffer[..usize::from(d.size).min(d.buffer.len())].to_vec())
    }

    /// TPM2_NV_Write authorized by the owner or the index itself, password session.
    pub(crate) fn nv_write(&mut self, nv: Tr, by_owner: bool, data: &[u8], offset: u16) -> R<()> {
        let auth = if by_owner { RH_OWNER } else { nv };
        let mut buf = sys::TPM2B_MAX_NV_BUFFER::zeroed();
        if data.len() > buf.buffer.len() {
            return Err(EsysError { cmd: "TPM2_NV_Write", rc: TpmRc(MU_BAD_SIZE) });
        }
        buf.size = len16("TPM2_NV_Write", data.len())?;
        buf.buffer[..data.len()].copy_from_slice(data);
        // SAFETY: `ctx` is valid; `buf` is initialized.
        check("TPM2_NV_Write", unsafe { sys::Esys_NV_Write(self.ctx, auth, nv, PASSWORD, NONE, NONE, &buf, offset) })
    }

    /// TPM2_NV_UndefineSpace by the owner. ESAPI closes `nv` on success.
    pub(crate) fn nv_undefine_owner(&mut self, nv: Tr) -> R<()> {
        // SAFETY: `ctx` is valid.
        check("TPM2_NV_UndefineSpace", unsafe {
            sys::Esys_NV_UndefineSpace(self.ctx, RH_OWNER, nv, PASSWORD, NONE, NONE)
        })
    }

    /// TPM2_PCR_Read: (pcrUpdateCounter, selection actually returned as wire bytes, values in order).
    /// The TPM returns at most 8 values per call; callers loop.
    pub(crate) fn pcr_read(&mut self, selection: &[u8]) -> R<(u32, sys::TPML_PCR_SELECTION, Vec<Vec<u8>>)> {
        let sel = sys::TPML_PCR_SELECTION::from_wire(selection)?;
        let mut counter: u32 = 0;
        let mut sel_out: Out<sys::TPML_PCR_SELECTION> = Out::new();
        let mut values: Out<sys::TPML_DIGEST> = Out::new();
        // SAFETY: `ctx` is valid; inputs initialized; out-slots are freed by `Out`.
        let rc = unsafe {
            sys::Esys_PCR_Read(self.ctx, NONE, NONE, NONE, &sel, &mut counter, sel_out.slot(), values.slot())
        };
        check("TPM2_PCR_Read", rc)?;
        let sel_out = sel_out.read("TPM2_PCR_Read")?;
        let values = values.read("TPM2_PCR_Read")?;
        let n = usize::try_from(values.count).unwrap_or(usize::MAX).min(values.digests.len());
        let v =
            values.digests[..n].iter().map(|d| d.buffer[..usize::from(d.size).min(d.buffer.len())].to_vec()).collect();
        Ok((counter, sel_out, v))
    }

    /// TPM2_PCR_Extend of PCR `pcr` with a TPML_DIGEST_VALUES (wire bytes), empty PCR auth.
    pub(crate) fn pcr_extend(&mut self, pcr: u8, digests: &[u8]) -> R<()> {
        let list = sys::TPML_DIGEST_VALUES::from_wire(digests)?;
        let handle = sys::ESYS_TR_PCR0 + u32::from(pcr);
        // SAFETY: `ctx` is valid; `list` is initialized.
        check("TPM2_PCR_Extend", unsafe { sys::Esys_PCR_Extend(self.ctx, handle, PASSWORD, NONE, NONE, &list) })
    }

    /// TPM2_ReadClock.
    pub(crate) fn read_clock(&mut self) -> R<TimeInfo> {
        let mut t: Out<sys::TPMS_TIME_INFO> = Out::new();
        // SAFETY: `ctx` is valid; the out-slot is freed by `Out`.
        check("TPM2_ReadClock", unsafe { sys::Esys_ReadClock(self.ctx, NONE, NONE, NONE, t.slot()) })?;
        let t = t.read("TPM2_ReadClock")?;
        Ok(TimeInfo {
            time: t.time,
            clock: t.clockInfo.clock,
            reset_count: t.clockInfo.resetCount,
            restart_count: t.clockInfo.restartCount,
            safe: t.clockInfo.safe != 0,
        })
    }
}

impl Drop for Esys {
    fn drop(&mut self) {
        // Best effort: a broken connection cannot flush, and swtpm then keeps the objects until it
        // restarts; callers flush explicitly at the end of every operation, so this is a backstop.
        let _ = self.flush_all();
        // SAFETY: both contexts were initialized in `connect` and are finalized exactly once here;
        // ESAPI does not finalize a TCTI it was handed, so the loader's is finalized after it.
        unsafe {
            sys::Esys_Finalize(&mut self.ctx);
            sys::Tss2_TctiLdr_Finalize(&mut self.tcti);
        }
    }
}
