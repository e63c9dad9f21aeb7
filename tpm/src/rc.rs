//! TSS2/TPM response codes, printed the way an operator can look them up.
//!
//! A `TSS2_RC` is 32 bits: bits 16..24 name the software layer that produced it (0 = the TPM itself,
//! 7 = ESAPI, 8 = SAPI, 9 = marshalling, 10 = TCTI, ...), the low 16 bits the code. TPM codes come in two
//! formats (TPM 2.0 Library Part 2, section 6.6 "TPM_RC"): format 1 (bit 7 set) carries an error number
//! in bits 0..6 and names the handle, parameter or session it applies to in bits 8..12; format 0 carries
//! the code in bits 0..7 with bit 8 (VER1) or bit 11 (WARN) set.

use std::fmt;

/// A TSS2 response code (`TSS2_RC`), from the TPM or from a library layer.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TpmRc(pub u32);

/// The library layer (bits 16..24) of a TSS2 response code.
const LAYER_SHIFT: u32 = 16;
const LAYER_TPM: u32 = 0;
const LAYER_ESAPI: u32 = 7;
const LAYER_SAPI: u32 = 8;
const LAYER_MU: u32 = 9;
const LAYER_TCTI: u32 = 10;
const LAYER_RESMGR: u32 = 11;
const LAYER_RESMGR_TPM: u32 = 12;

const RC_FMT1: u32 = 0x080;
const RC_VER1: u32 = 0x100;
const RC_WARN: u32 = 0x900;

/// Base codes (the TPM_RC_* constant without handle/parameter/session number).
pub(crate) mod codes {
    pub const VALUE: u32 = 0x084;
    pub const HANDLE: u32 = 0x08B;
    pub const AUTH_FAIL: u32 = 0x08E;
    pub const BAD_AUTH: u32 = 0x0A2;
    pub const POLICY_FAIL: u32 = 0x09D;
    pub const POLICY: u32 = 0x126;
    pub const PCR_CHANGED: u32 = 0x128;
    pub const FAILURE: u32 = 0x101;
    pub const NV_UNINITIALIZED: u32 = 0x14A;
    pub const SENSITIVE: u32 = 0x155;
    pub const OBJECT_MEMORY: u32 = 0x902;
    pub const SESSION_MEMORY: u32 = 0x903;
    pub const SESSION_HANDLES: u32 = 0x905;
    pub const OBJECT_HANDLES: u32 = 0x906;
}

impl TpmRc {
    /// Whether this is success (zero).
    pub fn is_success(self) -> bool {
        self.0 == 0
    }

    /// The layer that produced the code (0 = TPM).
    pub fn layer(self) -> u32 {
        (self.0 >> LAYER_SHIFT) & 0xFF
    }

    /// Whether the code came from the TPM (directly or through a resource manager), as opposed to the
    /// client libraries.
    pub fn is_from_tpm(self) -> bool {
        matches!(self.layer(), LAYER_TPM | LAYER_RESMGR_TPM)
    }

    /// Whether the TCTI (transport) layer failed: the TPM was unreachable or the connection broke.
    pub fn is_transport(self) -> bool {
        self.layer() == LAYER_TCTI
    }

    /// Whether this is a TPM format-1 code about a command *parameter* (as opposed to a handle or
    /// session), e.g. TPM_RC_INTEGRITY on Load's inPrivate.
    pub fn is_parameter_error(self) -> bool {
        let low = self.0 & 0xFFFF;
        self.is_from_tpm() && low & RC_FMT1 != 0 && low & 0x40 != 0
    }

    /// The base TPM_RC value with the handle/parameter/session number stripped (format-1 codes), or
    /// the low 12 bits (format-0 codes). Only meaningful when [`Self::is_from_tpm`].
    pub fn base(self) -> u32 {
        let low = self.0 & 0xFFFF;
        if low & RC_FMT1 != 0 { (low & 0x3F) | RC_FMT1 } else { low & 0xFFF }
    }

    fn tpm_name(self) -> Option<&'static str> {
        let b = self.base();
        let name = match b {
            0x081 => "TPM_RC_ASYMMETRIC",
            0x082 => "TPM_RC_ATTRIBUTES",
            0x083 => "TPM_RC_HASH",
            0x084 => "TPM_RC_VALUE",
            0x085 => "TPM_RC_HIERARCHY",
            0x087 => "TPM_RC_KEY_SIZE",
            0x088 => "TPM_RC_MGF",
            0x089 => "TPM_RC_MODE",
            0x08A => "TPM_RC_TYPE",
            0x08B => "TPM_RC_HANDLE",
            0x08C => "TPM_RC_KDF",
            0x08D => "TPM_RC_RANGE",
            0x08E => "TPM_RC_AUTH_FAIL",
            0x08F => "TPM_RC_NONCE",
            0x090 => "TPM_RC_PP",
            0x092 => "TPM_RC_SCHEME",
            0x095 => "TPM_RC_SIZE",
            0x096 => "TPM_RC_SYMMETRIC",
            0x097 => "TPM_RC_TAG",
            0x098 => "TPM_RC_SELECTOR",
            0x09A => "TPM_RC_INSUFFICIENT",
            0x09B => "TPM_RC_SIGNATURE",
            0x09C => "TPM_RC_KEY",
            0x09D => "TPM_RC_POLICY_FAIL",
            0x09F => "TPM_RC_INTEGRITY",
            0x0A0 => "TPM_RC_TICKET",
            0x0A1 => "TPM_RC_RESERVED_BITS",
            0x0A2 => "TPM_RC_BAD_AUTH",
            0x0A3 => "TPM_RC_EXPIRED",
            0x0A4 => "TPM_RC_POLICY_CC",
            0x0A5 => "TPM_RC_BINDING",
            0x0A6 => "TPM_RC_CURVE",
            0x0A7 => "TPM_RC_ECC_POINT",
            0x100 => "TPM_RC_INITIALIZE",
            0x101 => "TPM_RC_FAILURE",
            0x103 => "TPM_RC_SEQUENCE",
            0x10B => "TPM_RC_PRIVATE",
            0x119 => "TPM_RC_HMAC",
            0x120 => "TPM_RC_DISABLED",
            0x121 => "TPM_RC_EXCLUSIVE",
            0x124 => "TPM_RC_AUTH_TYPE",
            0x125 => "TPM_RC_AUTH_MISSING",
            0x126 => "TPM_RC_POLICY",
            0x127 => "TPM_RC_PCR",
            0x128 => "TPM_RC_PCR_CHANGED",
            0x12D => "TPM_RC_UPGRADE",
            0x12E => "TPM_RC_TOO_MANY_CONTEXTS",
            0x12F => "TPM_RC_AUTH_UNAVAILABLE",
            0x130 => "TPM_RC_REBOOT",
            0x131 => "TPM_RC_UNBALANCED",
            0x142 => "TPM_RC_COMMAND_SIZE",
            0x143 => "TPM_RC_COMMAND_CODE",
            0x144 => "TPM_RC_AUTHSIZE",
            0x145 => "TPM_RC_AUTH_CONTEXT",
            0x146 => "TPM_RC_NV_RANGE",
            0x147 => "TPM_RC_NV_SIZE",
            0x148 => "TPM_RC_NV_LOCKED",
            0x149 => "TPM_RC_NV_AUTHORIZATION",
            0x14A => "TPM_RC_NV_UNINITIALIZED",
            0x14B => "TPM_RC_NV_SPACE",
            0x14C => "TPM_RC_NV_DEFINED",
            0x150 => "TPM_RC_BAD_CONTEXT",
            0x151 => "TPM_RC_CPHASH",
            0x152 => "TPM_RC_PARENT",
            0x153 => "TPM_RC_NEEDS_TEST",
            0x154 => "TPM_RC_NO_RESULT",
            0x155 => "TPM_RC_SENSITIVE",
            0x901 => "TPM_RC_CONTEXT_GAP",
            0x902 => "TPM_RC_OBJECT_MEMORY",
            0x903 => "TPM_RC_SESSION_MEMORY",
            0x904 => "TPM_RC_MEMORY",
            0x905 => "TPM_RC_SESSION_HANDLES",
            0x906 => "TPM_RC_OBJECT_HANDLES",
            0x907 => "TPM_RC_LOCALITY",
            0x908 => "TPM_RC_YIELDED",
            0x909 => "TPM_RC_CANCELED",
            0x90A => "TPM_RC_TESTING",
            0x920 => "TPM_RC_NV_RATE",
            0x921 => "TPM_RC_LOCKOUT",
            0x922 => "TPM_RC_RETRY",
            0x923 => "TPM_RC_NV_UNAVAILABLE",
            _ => return None,
        };
        // Format-0 codes must carry VER1 or WARN to be one of the above.
        if b & RC_FMT1 == 0 && b & (RC_VER1 | RC_WARN) == 0 {
            return None;
        }
        Some(name)
    }

    /// For format-1 TPM codes: which handle, parameter or session the error refers to.
    fn tpm_subject(self) -> Option<String> {
        let low = self.0 & 0xFFFF;
        if low & RC_FMT1 == 0 {
            return None;
        }
        let n = (low >> 8) & 0xF;
        if n == 0 {
            return None;
        }
        Some(if low & 0x40 != 0 {
            format!("parameter {n}")
        } else if n & 0x8 != 0 {
            format!("session {}", n & 0x7)
        } else {
            format!("handle {n}")
        })
    }

    fn layer_name(self) -> &'static str {
        match self.layer() {
            LAYER_TPM => "TPM",
            LAYER_ESAPI => "ESAPI",
            LAYER_SAPI => "SAPI",
            LAYER_MU => "marshalling",
            LAYER_TCTI => "TCTI",
            LAYER_RESMGR => "resource manager",
            LAYER_RESMGR_TPM => "TPM via resource manager",
            _ => "TSS",
        }
    }

    /// Names of the common library-layer codes (`TSS2_BASE_RC_*`, TSS 2.0 TCTI/ESAPI specs).
    fn base_rc_name(self) -> Option<&'static str> {
        Some(match self.0 & 0xFFFF {
            1 => "GENERAL_FAILURE",
            2 => "NOT_IMPLEMENTED",
            3 => "BAD_CONTEXT",
            4 => "ABI_MISMATCH",
            5 => "BAD_REFERENCE",
            6 => "INSUFFICIENT_BUFFER",
            7 => "BAD_SEQUENCE",
            8 => "NO_CONNECTION",
            9 => "TRY_AGAIN",
            10 => "IO_ERROR",
            11 => "BAD_VALUE",
            12 => "NOT_PERMITTED",
            13 => "INVALID_SESSIONS",
            14 => "NO_DECRYPT_PARAM",
            15 => "NO_ENCRYPT_PARAM",
            16 => "BAD_SIZE",
            17 => "MALFORMED_RESPONSE",
            18 => "INSUFFICIENT_CONTEXT",
            19 => "INSUFFICIENT_RESPONSE",
            20 => "INCOMPATIBLE_TCTI",
            21 => "NOT_SUPPORTED",
            22 => "BAD_TCTI_STRUCTURE",
            23 => "MEMORY",
            24 => "BAD_TR",
            25 => "MULTIPLE_DECRYPT_SESSIONS",
            26 => "MULTIPLE_ENCRYPT_SESSIONS",
            27 => "RSP_AUTH_FAILED",
            _ => return None,
        })
    }
}

impl fmt::Display for TpmRc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_from_tpm() {
            let via = if self.layer() == LAYER_RESMGR_TPM { ", via resource manager" } else { "" };
            match (self.tpm_name(), self.tpm_subject()) {
                (Some(n), Some(s)) => write!(f, "{n} (0x{:04x}, {s}{via})", self.0 & 0xFFFF),
                (Some(n), None) => write!(f, "{n} (0x{:04x}{via})", self.0 & 0xFFFF),
                (None, _) => write!(f, "TPM response code 0x{:04x}{via}", self.0 & 0xFFFF),
            }
        } else {
            match self.base_rc_name() {
                Some(n) => write!(f, "{} error {n} (0x{:08x})", self.layer_name(), self.0),
                None => write!(f, "{} error 0x{:08x}", self.layer_name(), self.0),
            }
        }
    }
}

impl fmt::Debug for TpmRc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TpmRc({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_format1_with_session() {
        assert_eq!(TpmRc(0x99d).to_string(), "TPM_RC_POLICY_FAIL (0x099d, session 1)");
        assert_eq!(TpmRc(0x98e).to_string(), "TPM_RC_AUTH_FAIL (0x098e, session 1)");
        assert_eq!(TpmRc(0x1c4).to_string(), "TPM_RC_VALUE (0x01c4, parameter 1)");
        assert_eq!(TpmRc(0x18b).to_string(), "TPM_RC_HANDLE (0x018b, handle 1)");
        assert_eq!(TpmRc(0x1c4).base(), codes::VALUE);
        assert!(
            TpmRc(0x1df).is_parameter_error()
                && !TpmRc(0x18b).is_parameter_error()
                && !TpmRc(0x99d).is_parameter_error()
        );
    }

    #[test]
    fn names_format0_and_warnings() {
        assert_eq!(TpmRc(0x128).to_string(), "TPM_RC_PCR_CHANGED (0x0128)");
        assert_eq!(TpmRc(0x126).to_string(), "TPM_RC_POLICY (0x0126)");
        assert_eq!(TpmRc(0x902).to_string(), "TPM_RC_OBJECT_MEMORY (0x0902)");
        assert_eq!(TpmRc(0x0001_0902).to_string(), "TSS error 0x00010902");
    }

    #[test]
    fn names_library_layers() {
        assert_eq!(TpmRc(0x000a_000a).to_string(), "TCTI error IO_ERROR (0x000a000a)");
        assert!(TpmRc(0x000a_000a).is_transport());
        assert_eq!(TpmRc(0x0007_0007).to_string(), "ESAPI error BAD_SEQUENCE (0x00070007)");
        assert_eq!(TpmRc(0x000c_0128).to_string(), "TPM_RC_PCR_CHANGED (0x0128, via resource manager)");
    }
}
