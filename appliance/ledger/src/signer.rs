//! ML-DSA-65 (FIPS 204) ledger keys: the secret seed, the unlocked signer and the public key.
//!
//! A ledger key is derived deterministically from a 32-byte seed (FIPS 204 ML-DSA.KeyGen_internal).
//! The runtime creates the seed when a tenant (or the appliance) is created and keeps it only under the
//! TPM-sealed KEK; it hands it to [`LedgerSigner::new`] when the tenant is unlocked. The encoded secret
//! key (FIPS 204 skEncode, 4,032 bytes) lives on the heap, is `mlock`ed best-effort (a warning is logged
//! when the limit refuses it), is zeroized on drop and never leaves this module: there is no export of
//! the secret key, only of the public key (SPKI DER / PEM).
//!
//! Two implementations of FIPS 204 are used on purpose. Signing uses libcrux-ml-dsa (formally verified,
//! with an AVX2 path chosen at run time): about 0.1 ms per signature here against about 0.8 ms for the
//! portable ml-dsa crate, and the signature's rejection loop makes the slow path's tail several
//! milliseconds, which the gate's latency budget cannot absorb. Every verification (the ledger's own
//! checkpoint on creation and on every open, recovery, the offline verifier) uses ml-dsa, so a signature
//! is always checked by an implementation other than the one that made it, and a key pair on which the
//! two disagreed would fail the very first check (a unit test also derives the key both ways).
//!
//! Excluding the key pages from core dumps (`madvise(MADV_DONTDUMP)`) needs `unsafe`, which this crate
//! forbids; [`harden_process`] instead marks the whole process non-dumpable and sets its core limit to 0,
//! which covers the same threat for a per-tenant worker. Both libraries build keys on the stack before
//! we box them, and signing decodes the key into stack temporaries; those transient copies are outside
//! our control without `unsafe`.
//!
//! Every signature is made with a FIPS 204 context string naming the ledger
//! ([`LedgerScope::context`]), so a checkpoint (and therefore an OAR) of one tenant never verifies as
//! another tenant's, nor as the appliance's.

use std::fmt;

use base64::Engine as _;
use ml_dsa::{MlDsa65, Signature, VerifyingKey};
use subtle::ConstantTimeEq as _;
use zeroize::{Zeroize as _, Zeroizing};

use crate::hash::Hash;
use crate::ids::{ApplianceId, TenantId};
use crate::oar::LedgerScope;

/// ML-DSA-65 public key length (FIPS 204 Table 2).
pub const PUBLIC_KEY_LEN: usize = 1952;
/// ML-DSA-65 signature length (FIPS 204 Table 2).
pub const SIGNATURE_LEN: usize = 3309;
/// DER prefix of an ML-DSA-65 SubjectPublicKeyInfo (RFC 9881 / draft-ietf-lamps-dilithium-certificates:
/// algorithm id-ml-dsa-65 = 2.16.840.1.101.3.4.3.18 without parameters, key as a BIT STRING).
pub const SPKI_PREFIX: [u8; 22] = [
    0x30, 0x82, 0x07, 0xb2, 0x30, 0x0b, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x03, 0x12, 0x03, 0x82,
    0x07, 0xa1, 0x00,
];
/// Total SPKI DER length for ML-DSA-65.
pub const SPKI_LEN: usize = SPKI_PREFIX.len() + PUBLIC_KEY_LEN;

const PEM_BEGIN: &str = "-----BEGIN PUBLIC KEY-----";
const PEM_END: &str = "-----END PUBLIC KEY-----";

/// A signing or key-handling step failed.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The operating system could not supply randomness.
    #[error("no randomness available")]
    Random(#[source] getrandom::Error),
    /// The public key is not an ML-DSA-65 SPKI in the expected encoding.
    #[error("not an ML-DSA-65 public key: {0}")]
    Malformed(&'static str),
    /// ML-DSA signing failed (context too long or the RNG failed).
    #[error("ML-DSA-65 signing failed")]
    Sign,
    /// The signature does not verify under this key and context.
    #[error("signature does not verify")]
    BadSignature,
}

/// A ledger key's 32-byte seed. Heap-held, zeroized on drop, Debug prints `[REDACTED]`, no Serialize;
/// read only through [`SignerSeed::expose_secret`].
pub struct SignerSeed(Box<Zeroizing<[u8; 32]>>);

impl SignerSeed {
    /// A fresh seed from the operating system's random source (call once, at tenant creation).
    pub fn generate() -> Result<Self, KeyError> {
        let mut s = Box::new(Zeroizing::new([0u8; 32]));
        getrandom::fill(s.as_mut_slice()).map_err(KeyError::Random)?;
        Ok(Self(s))
    }

    /// Take the seed from `bytes` (as unsealed); the source buffer is zeroized.
    pub fn from_bytes(bytes: &mut [u8; 32]) -> Self {
        let s = Box::new(Zeroizing::new(*bytes));
        bytes.zeroize();
        Self(s)
    }

    /// The seed bytes, to be sealed under the tenant's KEK. Never log or persist them in the clear.
    pub fn expose_secret(&self) -> &[u8; 32] {
        &self.0
    }
}

impl PartialEq for SignerSeed {
    fn eq(&self, other: &Self) -> bool {
        bool::from(self.0.as_slice().ct_eq(other.0.as_slice()))
    }
}

impl fmt::Debug for SignerSeed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SignerSeed([REDACTED])")
    }
}

/// An ML-DSA-65 public key of a ledger.
#[derive(Clone)]
pub struct LedgerPublicKey {
    raw: Box<[u8; PUBLIC_KEY_LEN]>,
    key: Box<VerifyingKey<MlDsa65>>,
}

impl PartialEq for LedgerPublicKey {
    fn eq(&self, other: &Self) -> bool {
        self.raw == other.raw
    }
}
impl Eq for LedgerPublicKey {}

impl fmt::Debug for LedgerPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LedgerPublicKey(sha256:{})", self.fingerprint())
    }
}

impl LedgerPublicKey {
    /// From the 1,952-byte FIPS 204 encoding (pkEncode).
    pub fn from_raw(raw: &[u8]) -> Result<Self, KeyError> {
        let arr: [u8; PUBLIC_KEY_LEN] =
            raw.try_into().map_err(|_| KeyError::Malformed("public key is not 1952 bytes"))?;
        let enc = ml_dsa::EncodedVerifyingKey::<MlDsa65>::try_from(raw).map_err(|_| KeyError::Malformed("length"))?;
        let key = VerifyingKey::<MlDsa65>::decode(&enc);
        Ok(Self { raw: Box::new(arr), key: Box::new(key) })
    }

    /// The 1,952-byte FIPS 204 encoding.
    pub fn raw(&self) -> &[u8; PUBLIC_KEY_LEN] {
        &self.raw
    }

    /// SubjectPublicKeyInfo DER (1,974 bytes).
    pub fn to_spki_der(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(SPKI_LEN);
        out.extend_from_slice(&SPKI_PREFIX);
        out.extend_from_slice(self.raw.as_slice());
        out
    }

    /// Parse SPKI DER strictly: exactly the ML-DSA-65 algorithm identifier, no parameters, no trailing
    /// bytes.
    pub fn from_spki_der(der: &[u8]) -> Result<Self, KeyError> {
        if der.len() != SPKI_LEN {
            return Err(KeyError::Malformed("SPKI is not 1974 bytes"));
        }
        let key = der.strip_prefix(SPKI_PREFIX.as_slice()).ok_or(KeyError::Malformed("SPKI is not id-ml-dsa-65"))?;
        Self::from_raw(key)
    }

    /// PEM "PUBLIC KEY" (RFC 7468 §13): the SPKI DER in base64, 64 characters per line.
    pub fn to_spki_pem(&self) -> String {
        let b64 = base64::engine::general_purpose::STANDARD.encode(self.to_spki_der());
        let mut out = String::with_capacity(b64.len() + 100);
        out.push_str(PEM_BEGIN);
        out.push('\n');
        for chunk in b64.as_bytes().chunks(64) {
            out.push_str(std::str::from_utf8(chunk).unwrap_or(""));
            out.push('\n');
        }
        out.push_str(PEM_END);
        out.push('\n');
        out
    }

    /// Parse a PEM public key strictly: one "PUBLIC KEY" block, lines of 64 base64 characters (the last
    /// may be shorter), canonical base64, optional final newline, nothing else.
    pub fn from_spki_pem(pem: &str) -> Result<Self, KeyError> {
        Self::from_spki_der(&Self::pem_to_der(pem)?)
    }

    /// The DER inside a strictly formed PEM "PUBLIC KEY" block, without decoding the key.
    pub(crate) fn pem_to_der(pem: &str) -> Result<Vec<u8>, KeyError> {
        let body = pem.strip_suffix('\n').unwrap_or(pem);
        let mut lines: Vec<&str> = body.split('\n').collect();
        if lines.len() < 3 || lines[0] != PEM_BEGIN || lines[lines.len() - 1] != PEM_END {
            return Err(KeyError::Malformed("not a PEM PUBLIC KEY block"));
        }
        lines.remove(0);
        lines.pop();
        let last = lines.len() - 1;
        for (i, l) in lines.iter().enumerate() {
            if l.is_empty() || l.len() > 64 || (i < last && l.len() != 64) {
                return Err(KeyError::Malformed("PEM lines must be 64 characters"));
            }
        }
        let joined: String = lines.concat();
        crate::hash::b64_decode(&joined).ok_or(KeyError::Malformed("PEM body is not canonical base64"))
    }

    /// SHA-256 of the SPKI DER: the digest the appliance ledger publishes for a tenant key.
    pub fn fingerprint(&self) -> Hash {
        Hash::of(&self.to_spki_der())
    }

    /// Verify an ML-DSA-65 signature over `message` made for `scope` (FIPS 204 ML-DSA.Verify with the
    /// scope's context string).
    pub fn verify(&self, scope: &LedgerScope, message: &[u8], signature: &[u8]) -> Result<(), KeyError> {
        let sig = Signature::<MlDsa65>::try_from(signature).map_err(|_| KeyError::BadSignature)?;
        if self.key.verify_with_context(message, scope.context().as_bytes(), &sig) {
            Ok(())
        } else {
            Err(KeyError::BadSignature)
        }
    }
}

/// The unlocked signer of one ledger (a tenant's or the appliance's).
pub struct LedgerSigner {
    scope: LedgerScope,
    // Declared before the lock guard so the key is zeroized and freed before its pages are unlocked.
    key: SecretSigningKey,
    public: LedgerPublicKey,
    _locks: Vec<region::LockGuard>,
}

/// libcrux's encoded ML-DSA-65 secret key, boxed and wiped on drop (the library type has no `Drop`).
struct SecretSigningKey(Box<libcrux_ml_dsa::ml_dsa_65::MLDSA65SigningKey>);

impl Drop for SecretSigningKey {
    fn drop(&mut self) {
        self.0.as_mut_slice().zeroize();
    }
}

/// The name the runtime uses for a tenant's signer: the same type, scoped to a tenant.
pub type TenantSigner = LedgerSigner;

impl fmt::Debug for LedgerSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LedgerSigner({}, key: [REDACTED], public: {:?})", self.scope, self.public)
    }
}

impl LedgerSigner {
    /// Expand `seed` into the signing key of `scope`'s ledger.
    pub fn new(scope: LedgerScope, seed: &SignerSeed) -> Result<Self, KeyError> {
        let mut pair = libcrux_ml_dsa::ml_dsa_65::generate_key_pair(*seed.expose_secret());
        let key = SecretSigningKey(Box::new(pair.signing_key.clone()));
        pair.signing_key.as_mut_slice().zeroize();
        let public = LedgerPublicKey::from_raw(pair.verification_key.as_slice())?;
        let mut locks = Vec::new();
        let bytes = key.0.as_slice();
        match region::lock(bytes.as_ptr(), bytes.len()) {
            Ok(g) => locks.push(g),
            Err(e) => tracing::warn!(
                scope = %scope,
                error = %e,
                "could not mlock the ledger signing key (raise RLIMIT_MEMLOCK); it may be swapped out"
            ),
        }
        Ok(Self { scope, key, public, _locks: locks })
    }

    /// A tenant's signer.
    pub fn tenant(tenant: TenantId, seed: &SignerSeed) -> Result<Self, KeyError> {
        Self::new(LedgerScope::Tenant(tenant), seed)
    }

    /// The appliance ledger's signer.
    pub fn appliance(appliance: ApplianceId, seed: &SignerSeed) -> Result<Self, KeyError> {
        Self::new(LedgerScope::Appliance(appliance), seed)
    }

    /// The ledger this key signs for.
    pub fn scope(&self) -> LedgerScope {
        self.scope
    }

    /// The public key.
    pub fn public_key(&self) -> &LedgerPublicKey {
        &self.public
    }

    /// Whether the secret key was locked into RAM.
    pub fn is_memory_locked(&self) -> bool {
        self._locks.len() == 1
    }

    /// Hedged ML-DSA-65 signature (FIPS 204 Algorithm 2, fresh 32-byte rnd from the OS) of `message`
    /// under this ledger's context string. Crate-private: the key signs checkpoint notes only.
    pub(crate) fn sign(&self, message: &[u8]) -> Result<Vec<u8>, KeyError> {
        let ctx = self.scope.context();
        let mut rnd = Zeroizing::new([0u8; 32]);
        getrandom::fill(rnd.as_mut_slice()).map_err(KeyError::Random)?;
        let sig =
            libcrux_ml_dsa::ml_dsa_65::sign(&self.key.0, message, ctx.as_bytes(), *rnd).map_err(|_| KeyError::Sign)?;
        Ok(sig.as_slice().to_vec())
    }
}

/// What [`harden_process`] managed to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hardening {
    /// The process is marked non-dumpable (no core dumps, no ptrace or /proc/pid/mem by the same uid).
    pub non_dumpable: bool,
    /// RLIMIT_CORE is 0.
    pub no_core_limit: bool,
}

/// Best-effort process hardening for a process that holds unlocked signers: mark it non-dumpable
/// (prctl PR_SET_DUMPABLE 0) and set RLIMIT_CORE to 0. Failures are logged and reported, not fatal.
/// Process-wide: the runtime calls it once in each tenant worker.
pub fn harden_process() -> Hardening {
    use rustix::process::{DumpableBehavior, Resource, Rlimit, set_dumpable_behavior, setrlimit};
    let non_dumpable = match set_dumpable_behavior(DumpableBehavior::NotDumpable) {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(error = %e, "could not mark the process non-dumpable");
            false
        }
    };
    let no_core_limit = match setrlimit(Resource::Core, Rlimit { current: Some(0), maximum: Some(0) }) {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(error = %e, "could not set RLIMIT_CORE to 0");
            false
        }
    };
    Hardening { non_dumpable, no_core_limit }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ml_dsa::pkcs8::EncodePublicKey as _;
    use ml_dsa::{SigningKey, signature::Keypair as _};

    fn tenant() -> LedgerScope {
        LedgerScope::Tenant(TenantId::from_bytes([0x42; 16]))
    }

    #[test]
    fn debug_is_redacted() {
        let mut raw = [0x5au8; 32];
        let seed = SignerSeed::from_bytes(&mut raw);
        assert_eq!(raw, [0; 32], "source buffer zeroized");
        let dbg = format!("{seed:?}");
        assert!(!dbg.contains("5a") && !dbg.contains("90") && dbg.contains("REDACTED"));
        let signer = LedgerSigner::new(tenant(), &seed).unwrap();
        let dbg = format!("{signer:?}");
        assert!(dbg.contains("REDACTED"));
        assert!(!dbg.to_lowercase().contains(&hex::encode([0x5a; 8])));
        let seed_bytes = format!("{:?}", seed.expose_secret());
        assert!(!dbg.contains(&seed_bytes));
    }

    #[test]
    fn spki_matches_ml_dsa_and_round_trips() {
        let seed = SignerSeed::generate().unwrap();
        let signer = LedgerSigner::new(tenant(), &seed).unwrap();
        let pk = signer.public_key();
        let theirs = SigningKey::<MlDsa65>::from_seed(&ml_dsa::Seed::from(*seed.expose_secret()))
            .verifying_key()
            .to_public_key_der()
            .unwrap();
        assert_eq!(pk.to_spki_der(), theirs.as_bytes());
        let pem = pk.to_spki_pem();
        assert_eq!(&LedgerPublicKey::from_spki_pem(&pem).unwrap(), pk);
        assert_eq!(&LedgerPublicKey::from_spki_pem(pem.trim_end()).unwrap(), pk);
        assert!(LedgerPublicKey::from_spki_pem(&pem.replace("PUBLIC KEY", "PRIVATE KEY")).is_err());
        assert!(LedgerPublicKey::from_spki_pem(&format!("{pem}\n")).is_err());
        assert!(LedgerPublicKey::from_spki_pem(&pem.replacen('\n', "\n\n", 2)).is_err());
        let mut der = pk.to_spki_der();
        der.push(0);
        assert!(LedgerPublicKey::from_spki_der(&der).is_err());
        der.pop();
        der[16] = 0x11; // id-ml-dsa-44
        assert!(LedgerPublicKey::from_spki_der(&der).is_err());
    }

    #[test]
    fn context_binds_the_scope() {
        let seed = SignerSeed::generate().unwrap();
        let a = tenant();
        let b = LedgerScope::Tenant(TenantId::from_bytes([0x43; 16]));
        let signer = LedgerSigner::new(a, &seed).unwrap();
        let sig = signer.sign(b"note").unwrap();
        assert_eq!(sig.len(), SIGNATURE_LEN);
        let pk = signer.public_key();
        pk.verify(&a, b"note", &sig).unwrap();
        assert!(pk.verify(&b, b"note", &sig).is_err());
        assert!(pk.verify(&a, b"note!", &sig).is_err());
        assert!(pk.verify(&a, b"note", &sig[..SIGNATURE_LEN - 1]).is_err());
        // Same seed, same key: deterministic key generation.
        assert_eq!(LedgerSigner::new(a, &seed).unwrap().public_key(), pk);
    }
}
