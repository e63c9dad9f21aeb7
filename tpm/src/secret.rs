//! The secret type unsealed data comes back in.

use std::fmt;

use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

/// Secret bytes (an unsealed KEK): heap-held, zeroized on drop, never printed, compared in constant
/// time, reached only through [`SecretBytes::expose_secret`]. Deliberately not `Clone` or `Serialize`.
pub struct SecretBytes(Zeroizing<Vec<u8>>);

impl SecretBytes {
    /// Copies `bytes` into a new secret. The allocation is sized once, so no stale copy is left behind
    /// by a reallocation.
    pub fn from_slice(bytes: &[u8]) -> Self {
        let mut v = Vec::with_capacity(bytes.len());
        v.extend_from_slice(bytes);
        SecretBytes(Zeroizing::new(v))
    }

    /// The secret bytes. Keep the borrow short; do not copy them into unzeroized memory.
    pub fn expose_secret(&self) -> &[u8] {
        &self.0
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the secret is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretBytes([REDACTED])")
    }
}

impl PartialEq for SecretBytes {
    fn eq(&self, other: &Self) -> bool {
        self.0.as_slice().ct_eq(other.0.as_slice()).into()
    }
}

impl Eq for SecretBytes {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_holds_no_secret_bytes() {
        let bytes: Vec<u8> = (0x41..0x61).collect();
        let s = SecretBytes::from_slice(&bytes);
        let dbg = format!("{s:?} {s:#?}");
        assert!(dbg.contains("[REDACTED]"));
        for w in bytes.windows(3) {
            assert!(!dbg.contains(std::str::from_utf8(w).unwrap()), "{dbg}");
        }
        assert!(!dbg.contains("65") && !dbg.contains("0x41"), "{dbg}");
        assert_eq!(s.expose_secret(), bytes.as_slice());
        assert_eq!(s, SecretBytes::from_slice(&bytes));
        assert_ne!(s, SecretBytes::from_slice(b"other"));
    }
}
