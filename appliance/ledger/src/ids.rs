//! Identifiers every ledger, signature context and OAR is scoped by.
//!
//! A [`TenantId`] is 16 random bytes chosen at tenant creation and never reused; it is shown as 32
//! lowercase hex digits. An [`ApplianceId`] has the same shape and names one appliance (its ledger and
//! key). Both are `Copy`, parse strictly and print the same way they parse.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A string that is not a 32-digit lowercase hex id.
#[derive(Debug, thiserror::Error)]
pub enum IdError {
    /// Wrong length, uppercase digits or non-hex characters.
    #[error("not an id (expected 32 lowercase hex digits): {0:?}")]
    Malformed(String),
    /// The operating system could not supply randomness for a fresh id.
    #[error("no randomness available for a fresh id")]
    Random(#[source] getrandom::Error),
}

fn parse_hex16(s: &str) -> Result<[u8; 16], IdError> {
    let bad = || IdError::Malformed(s.chars().take(64).collect());
    if s.len() != 32 || !s.bytes().all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c)) {
        return Err(bad());
    }
    let mut out = [0u8; 16];
    hex::decode_to_slice(s, &mut out).map_err(|_| bad())?;
    Ok(out)
}

fn random16() -> Result<[u8; 16], IdError> {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).map_err(IdError::Random)?;
    Ok(b)
}

macro_rules! id16 {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        pub struct $name([u8; 16]);

        impl $name {
            /// A fresh id from the operating system's random source.
            pub fn random() -> Result<Self, IdError> {
                random16().map(Self)
            }
            /// The id from its 16 raw bytes.
            pub const fn from_bytes(bytes: [u8; 16]) -> Self {
                Self(bytes)
            }
            /// The 16 raw bytes (what signature contexts and records bind).
            pub const fn as_bytes(&self) -> &[u8; 16] {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&hex::encode(self.0))
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({})"), self)
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                parse_hex16(s).map(Self)
            }
        }
    };
}

id16!(
    /// A tenant's immutable id: 16 random bytes, shown as 32 lowercase hex digits. Every handle (vault,
    /// ledger, sealed KEK, signature context) is scoped by this id, never by a display name.
    TenantId
);

id16!(
    /// One appliance's id: 16 random bytes chosen at install, shown as 32 lowercase hex digits. It names
    /// the appliance ledger and binds the appliance key's signature context.
    ApplianceId
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects() {
        let t = TenantId::random().unwrap();
        assert_eq!(t.to_string().parse::<TenantId>().unwrap(), t);
        assert_eq!(t.to_string().len(), 32);
        let a = ApplianceId::from_bytes([0xab; 16]);
        assert_eq!(a.to_string(), "ab".repeat(16));
        assert_eq!(format!("{a:?}"), format!("ApplianceId({})", "ab".repeat(16)));
        for bad in [
            "",
            "legal",
            &"g".repeat(32),
            &"A".repeat(32),
            &"a".repeat(33),
            &"a".repeat(31),
            "+0123456789abcdef0123456789abcde",
        ] {
            assert!(bad.parse::<TenantId>().is_err(), "{bad}");
        }
    }

    #[test]
    fn postcard_is_16_raw_bytes() {
        let t = TenantId::from_bytes([7; 16]);
        let enc = postcard::to_stdvec(&t).unwrap();
        assert_eq!(enc, vec![7u8; 16]);
    }
}
