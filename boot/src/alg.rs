//! Hash algorithms of TPM PCR banks.
//!
//! Algorithm identifiers are the `TPM_ALG_ID` values of the TCG Algorithm Registry (also listed in
//! TPM 2.0 Library Part 2, section 6.3): SHA-1 `0x0004`, SHA-256 `0x000B`, SHA-384 `0x000C`. Event logs
//! and TPM commands name banks by these ids; profiles and the CLI name them `sha1`, `sha256`, `sha384`.

use std::fmt;
use std::str::FromStr;

use sha1::Digest as _;

/// What can go wrong naming a hash algorithm.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AlgError {
    /// The name is not one of `sha1`, `sha256`, `sha384`.
    #[error("unknown hash algorithm {0:?} (expected sha1, sha256 or sha384)")]
    UnknownName(String),
}

/// A PCR bank's hash algorithm.
///
/// Ordered SHA-1 < SHA-256 < SHA-384, which is the order maps keyed by it print in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HashAlg {
    /// SHA-1 (FIPS 180-4), 20-byte digests. Kept for legacy logs and TPMs; never a sealing bank by choice.
    Sha1,
    /// SHA-256 (FIPS 180-4), 32-byte digests.
    Sha256,
    /// SHA-384 (FIPS 180-4), 48-byte digests.
    Sha384,
}

impl HashAlg {
    /// Every supported algorithm, in order.
    pub const ALL: [HashAlg; 3] = [HashAlg::Sha1, HashAlg::Sha256, HashAlg::Sha384];

    /// The largest digest size of any supported algorithm, in bytes.
    pub const MAX_DIGEST_SIZE: usize = 48;

    /// The TCG algorithm id (`TPM_ALG_ID`).
    pub const fn tcg_id(self) -> u16 {
        match self {
            HashAlg::Sha1 => 0x0004,
            HashAlg::Sha256 => 0x000B,
            HashAlg::Sha384 => 0x000C,
        }
    }

    /// The algorithm with TCG id `id`, or `None` for an id this crate cannot compute.
    pub const fn from_tcg_id(id: u16) -> Option<HashAlg> {
        match id {
            0x0004 => Some(HashAlg::Sha1),
            0x000B => Some(HashAlg::Sha256),
            0x000C => Some(HashAlg::Sha384),
            _ => None,
        }
    }

    /// The digest size in bytes.
    pub const fn digest_size(self) -> usize {
        match self {
            HashAlg::Sha1 => 20,
            HashAlg::Sha256 => 32,
            HashAlg::Sha384 => 48,
        }
    }

    /// The lower-case name used in profiles, JSON and the CLI.
    pub const fn name(self) -> &'static str {
        match self {
            HashAlg::Sha1 => "sha1",
            HashAlg::Sha256 => "sha256",
            HashAlg::Sha384 => "sha384",
        }
    }

    /// The digest of `data`.
    pub fn digest(self, data: &[u8]) -> Vec<u8> {
        let mut h = Hasher::new(self);
        h.update(data);
        h.finalize()
    }

    /// A digest of all zero bytes, the reset value of most PCRs and the digest EV_NO_ACTION events carry.
    pub fn zero_digest(self) -> Vec<u8> {
        vec![0; self.digest_size()]
    }
}

impl fmt::Display for HashAlg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for HashAlg {
    type Err = AlgError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        HashAlg::ALL.into_iter().find(|a| a.name() == s).ok_or_else(|| AlgError::UnknownName(s.to_owned()))
    }
}

/// An incremental hash for one algorithm, for measuring data too large to hold at once.
#[derive(Clone)]
pub struct Hasher(Inner);

#[derive(Clone)]
enum Inner {
    Sha1(sha1::Sha1),
    Sha256(sha2::Sha256),
    Sha384(sha2::Sha384),
}

impl fmt::Debug for Hasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Hasher").field(&self.alg()).finish()
    }
}

impl Hasher {
    /// A fresh hash state for `alg`.
    pub fn new(alg: HashAlg) -> Self {
        Hasher(match alg {
            HashAlg::Sha1 => Inner::Sha1(sha1::Sha1::new()),
            HashAlg::Sha256 => Inner::Sha256(sha2::Sha256::new()),
            HashAlg::Sha384 => Inner::Sha384(sha2::Sha384::new()),
        })
    }

    /// The algorithm this state computes.
    pub fn alg(&self) -> HashAlg {
        match self.0 {
            Inner::Sha1(_) => HashAlg::Sha1,
            Inner::Sha256(_) => HashAlg::Sha256,
            Inner::Sha384(_) => HashAlg::Sha384,
        }
    }

    /// Feeds `data`.
    pub fn update(&mut self, data: &[u8]) {
        match &mut self.0 {
            Inner::Sha1(h) => h.update(data),
            Inner::Sha256(h) => h.update(data),
            Inner::Sha384(h) => h.update(data),
        }
    }

    /// The digest of everything fed so far.
    pub fn finalize(self) -> Vec<u8> {
        match self.0 {
            Inner::Sha1(h) => h.finalize().to_vec(),
            Inner::Sha256(h) => h.finalize().to_vec(),
            Inner::Sha384(h) => h.finalize().to_vec(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_sizes_and_names_round_trip() {
        for alg in HashAlg::ALL {
            assert_eq!(HashAlg::from_tcg_id(alg.tcg_id()), Some(alg));
            assert_eq!(alg.name().parse::<HashAlg>().unwrap(), alg);
            assert_eq!(alg.to_string(), alg.name());
            assert_eq!(alg.digest(b"").len(), alg.digest_size());
            assert!(alg.digest_size() <= HashAlg::MAX_DIGEST_SIZE);
        }
        assert_eq!(HashAlg::Sha1.tcg_id(), 0x0004);
        assert_eq!(HashAlg::Sha256.tcg_id(), 0x000B);
        assert_eq!(HashAlg::Sha384.tcg_id(), 0x000C);
        assert_eq!(HashAlg::from_tcg_id(0x000D), None, "SHA-512 is not a supported bank");
        assert!(matches!("SHA256".parse::<HashAlg>(), Err(AlgError::UnknownName(_))));
        assert!("md5".parse::<HashAlg>().is_err());
    }

    #[test]
    fn digests_match_fips_180_4_examples() {
        // "abc" examples from FIPS 180-4 / the NIST CSRC example values.
        assert_eq!(hex::encode(HashAlg::Sha1.digest(b"abc")), "a9993e364706816aba3e25717850c26c9cd0d89d");
        assert_eq!(
            hex::encode(HashAlg::Sha256.digest(b"abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            hex::encode(HashAlg::Sha384.digest(b"abc")),
            "cb00753f45a35e8bb5a03d699ac65007272c32ab0eded1631a8b605a43ff5bed\
             8086072ba1e7cc2358baeca134c825a7"
        );
    }

    #[test]
    fn incremental_hash_equals_one_shot() {
        for alg in HashAlg::ALL {
            let mut h = Hasher::new(alg);
            h.update(b"ab");
            h.update(b"c");
            assert_eq!(h.alg(), alg);
            assert_eq!(h.finalize(), alg.digest(b"abc"));
        }
    }

    #[test]
    fn serde_names() {
        #[derive(serde::Deserialize)]
        struct T {
            a: HashAlg,
        }
        let t: T = toml::from_str("a = \"sha384\"").unwrap();
        assert_eq!(t.a, HashAlg::Sha384);
        assert!(toml::from_str::<T>("a = \"sha512\"").is_err());
    }
}
