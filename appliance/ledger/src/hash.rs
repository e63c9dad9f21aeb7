//! SHA-256 hashes and the RFC 6962 §2.1 Merkle hashing rules (0x00 leaf prefix, 0x01 node prefix).

use std::fmt;

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// Length of every hash in the ledger (SHA-256).
pub const HASH_LEN: usize = 32;

/// A SHA-256 value: a Merkle tree node, a leaf hash or a digest of some bytes.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default)]
pub struct Hash(pub [u8; HASH_LEN]);

/// Bytes that are not a hash.
#[derive(Debug, thiserror::Error)]
pub enum HashError {
    /// Not exactly 32 bytes.
    #[error("a hash is 32 bytes, got {0}")]
    Length(usize),
    /// Not canonical standard base64 (RFC 4648 §4).
    #[error("hash is not canonical base64")]
    Base64,
}

impl Hash {
    /// SHA-256 of `data`.
    pub fn of(data: &[u8]) -> Self {
        Hash(Sha256::digest(data).into())
    }

    /// SHA-256 over several byte strings, concatenated.
    pub fn of_parts(parts: &[&[u8]]) -> Self {
        let mut h = Sha256::new();
        for p in parts {
            h.update(p);
        }
        Hash(h.finalize().into())
    }

    /// The hash from exactly 32 bytes.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, HashError> {
        let arr: [u8; HASH_LEN] = bytes.try_into().map_err(|_| HashError::Length(bytes.len()))?;
        Ok(Hash(arr))
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; HASH_LEN] {
        &self.0
    }

    /// Standard base64 with padding (44 characters), as checkpoints and proofs write hashes.
    pub fn to_base64(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.0)
    }

    /// Parse canonical standard base64 of exactly 32 bytes.
    pub fn from_base64(s: &str) -> Result<Self, HashError> {
        let bytes = b64_decode(s).ok_or(HashError::Base64)?;
        Self::from_slice(&bytes)
    }
}

impl fmt::Debug for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hash({})", hex::encode(self.0))
    }
}

impl fmt::Display for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

/// Strict standard base64 decoding: padding required, no whitespace, no non-zero trailing bits, and the
/// result must re-encode to the same text (so every distinct string decodes to distinct bytes).
pub(crate) fn b64_decode(s: &str) -> Option<Vec<u8>> {
    let engine = &base64::engine::general_purpose::STANDARD;
    let out = engine.decode(s).ok()?;
    (engine.encode(&out) == s).then_some(out)
}

/// Standard base64 with padding.
pub(crate) fn b64_encode(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(data)
}

/// RFC 6962 §2.1: the hash of an empty tree, SHA-256 of the empty string.
pub fn empty_root() -> Hash {
    Hash::of(&[])
}

/// RFC 6962 §2.1: MTH({d}) = SHA-256(0x00 || d).
pub fn leaf_hash(entry: &[u8]) -> Hash {
    Hash::of_parts(&[&[0x00], entry])
}

/// RFC 6962 §2.1: MTH(D[n]) = SHA-256(0x01 || left || right).
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut buf = [0u8; 1 + 2 * HASH_LEN];
    buf[0] = 0x01;
    buf[1..=HASH_LEN].copy_from_slice(&left.0);
    buf[1 + HASH_LEN..].copy_from_slice(&right.0);
    Hash::of(&buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_root_is_sha256_of_nothing() {
        assert_eq!(empty_root().to_string(), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    }

    #[test]
    fn base64_is_strict() {
        let h = Hash::of(b"x");
        let s = h.to_base64();
        assert_eq!(Hash::from_base64(&s).unwrap(), h);
        // A non-canonical final character (non-zero padding bits) decodes to the same bytes in lax
        // decoders; it must be refused here.
        let mut chars: Vec<char> = s.chars().collect();
        let last = chars.len() - 2;
        chars[last] = match chars[last] {
            'A' => 'B',
            _ => 'A',
        };
        let tweaked: String = chars.into_iter().collect();
        if let Ok(other) = Hash::from_base64(&tweaked) {
            assert_ne!(other, h);
        }
        assert!(Hash::from_base64(&format!(" {s}")).is_err());
        assert!(Hash::from_base64(&s[..s.len() - 1]).is_err());
        assert!(Hash::from_base64(&b64_encode(&[0u8; 31])).is_err());
        assert!(b64_decode("QQ").is_none());
        assert!(b64_decode("QR==").is_none());
        assert_eq!(b64_decode("QQ==").unwrap(), b"A");
    }
}
