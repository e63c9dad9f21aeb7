//! Secret key material held by the runtime: key-encryption keys and data keys.
//!
//! One recipe for every secret: heap-held, zeroized on drop, `Debug` prints `[REDACTED]`, no `Serialize`,
//! equality in constant time, bytes reached only through [`SecretKey::expose_secret`].

use std::fmt;

use rand::RngCore;
use subtle::ConstantTimeEq;
use zeroize::Zeroize;

/// A 256-bit secret key (a tenant KEK or DEK, or an ML-DSA seed).
pub struct SecretKey(Box<[u8; 32]>);

impl SecretKey {
    /// A fresh key from the operating system's CSPRNG.
    pub fn random() -> Self {
        let mut k = Box::new([0u8; 32]);
        rand::rngs::OsRng.fill_bytes(&mut k[..]);
        SecretKey(k)
    }

    /// Takes a key out of `bytes`, which is zeroized whatever the outcome. Fails unless it is 32 bytes.
    pub fn take_from(bytes: &mut [u8]) -> Option<Self> {
        let out = if bytes.len() == 32 {
            let mut k = Box::new([0u8; 32]);
            k.copy_from_slice(bytes);
            Some(SecretKey(k))
        } else {
            None
        };
        bytes.zeroize();
        out
    }

    /// The key bytes. Keep the borrow short and never copy them into an unzeroized buffer.
    pub fn expose_secret(&self) -> &[u8; 32] {
        &self.0
    }
}

impl Drop for SecretKey {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretKey([REDACTED])")
    }
}

impl PartialEq for SecretKey {
    fn eq(&self, other: &Self) -> bool {
        self.0[..].ct_eq(&other.0[..]).into()
    }
}
impl Eq for SecretKey {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_holds_no_key_bytes() {
        let k = SecretKey::random();
        let shown = format!("{k:?} {k:#?}");
        assert!(shown.contains("REDACTED"));
        assert!(!shown.contains(&hex::encode(k.expose_secret())));
        for b in k.expose_secret() {
            // No decimal rendering of the array either.
            assert!(!shown.contains(&format!("{b}, ")));
        }
    }

    #[test]
    fn take_from_zeroizes_source() {
        let mut src = [7u8; 32];
        let k = SecretKey::take_from(&mut src).unwrap();
        assert_eq!(src, [0u8; 32]);
        assert_eq!(k.expose_secret(), &[7u8; 32]);
        let mut short = [1u8; 5];
        assert!(SecretKey::take_from(&mut short).is_none());
        assert_eq!(short, [0u8; 5]);
    }
}
