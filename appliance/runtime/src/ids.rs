//! Identifiers the runtime scopes everything by.

use std::fmt;
use std::str::FromStr;

use rand::RngCore;

/// A tenant's immutable id: 16 random bytes, shown as 32 lowercase hex digits. Every handle the runtime
/// gives out (vault, ledger, sealed KEK) is scoped by this id, never by the tenant's display name.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
pub struct TenantId([u8; 16]);

/// A string that is not a tenant id.
#[derive(Debug, thiserror::Error)]
#[error("not a tenant id (expected 32 lowercase hex digits): {0:?}")]
pub struct TenantIdError(String);

impl TenantId {
    /// A fresh random id.
    pub fn random() -> Self {
        let mut b = [0u8; 16];
        rand::rngs::OsRng.fill_bytes(&mut b);
        TenantId(b)
    }
    /// The raw bytes (bound into every AEAD and signature context).
    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}
impl fmt::Debug for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TenantId({self})")
    }
}

impl FromStr for TenantId {
    type Err = TenantIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut b = [0u8; 16];
        if s.len() != 32 || s.bytes().any(|c| c.is_ascii_uppercase()) {
            return Err(TenantIdError(s.chars().take(64).collect()));
        }
        hex::decode_to_slice(s, &mut b).map_err(|_| TenantIdError(s.chars().take(64).collect()))?;
        Ok(TenantId(b))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn round_trips_and_rejects() {
        let t = TenantId::random();
        assert_eq!(t.to_string().parse::<TenantId>().unwrap(), t);
        for bad in ["", "legal", &"g".repeat(32), &"A".repeat(32), &"a".repeat(33)] {
            assert!(bad.parse::<TenantId>().is_err(), "{bad}");
        }
    }
}
