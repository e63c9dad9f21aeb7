//! Checkpoints (C2SP tlog-checkpoint) as signed notes (C2SP signed-note) with an ML-DSA-65 signature type.
//!
//! C2SP signed-note assigns no identifier to ML-DSA-65, so this crate uses the escape byte 0xFF followed by
//! the ASCII identifier `bulwark/ml-dsa-65/v1` (signed-note "Signature types": 0xFF is reserved for types
//! without an assigned byte and should be followed by a longer identifier). The key ID is computed as the
//! spec recommends, with that whole identifier as the signature type:
//!
//! ```text
//! key ID    = SHA-256(key name || 0x0A || 0xFF || "bulwark/ml-dsa-65/v1" || 1952-byte public key)[:4]
//! signature = ML-DSA-65.Sign(sk, M = note text, ctx = ledger context string)   (FIPS 204 Algorithm 2)
//! line      = "— " || key name || " " || base64(key ID || signature) || "\n"
//! ```
//!
//! The note text is the checkpoint body (origin, size, base64 root, each ending in a newline); the key
//! name is the origin. Parsing is strict: exactly three body lines, canonical decimal and base64, at most
//! 16 signature lines, each key (name, ID) at most once.

use crate::hash::{Hash, b64_decode, b64_encode};
use crate::oar::{LedgerScope, TreeHead};
use crate::signer::{KeyError, LedgerPublicKey, LedgerSigner, SIGNATURE_LEN};

/// The signature type bytes that go into the key ID: 0xFF then the identifier.
pub const NOTE_SIG_TYPE: &[u8] = b"\xffbulwark/ml-dsa-65/v1";
/// Most signature lines a note may carry.
pub const MAX_SIGNATURES: usize = 16;
/// Largest note accepted (16 signatures of ~4.5 KiB fit well below this).
pub const MAX_NOTE_LEN: usize = 96 * 1024;
const DASH: &str = "\u{2014} ";

/// A checkpoint or note failed to parse or verify.
#[derive(Debug, thiserror::Error)]
pub enum NoteError {
    /// The text breaks a signed-note or checkpoint rule; the text says which.
    #[error("malformed checkpoint: {0}")]
    Malformed(&'static str),
    /// The origin line names a different ledger.
    #[error("checkpoint origin is {found:?}, expected {expected:?}")]
    Origin {
        /// What the checkpoint says.
        found: String,
        /// What the verifier expected.
        expected: String,
    },
    /// No signature line belongs to the pinned key.
    #[error("no signature by the pinned key {name} (key ID {id})")]
    NoKnownSignature {
        /// The expected key name.
        name: String,
        /// The expected key ID, hex.
        id: String,
    },
    /// The pinned key's signature does not verify.
    #[error("the pinned key's signature does not verify")]
    BadSignature(#[source] KeyError),
    /// Signing failed.
    #[error("signing the checkpoint failed")]
    Sign(#[source] KeyError),
}

/// The signed-note key ID of `key` for `scope`.
pub fn key_id(scope: &LedgerScope, key: &LedgerPublicKey) -> [u8; 4] {
    let h = Hash::of_parts(&[scope.origin().as_bytes(), b"\n", NOTE_SIG_TYPE, key.raw().as_slice()]);
    [h.0[0], h.0[1], h.0[2], h.0[3]]
}

/// The checkpoint body (the signed note text) for a tree head.
pub fn checkpoint_body(scope: &LedgerScope, head: &TreeHead) -> String {
    format!("{}\n{}\n{}\n", scope.origin(), head.size, head.root.to_base64())
}

/// A checkpoint whose signature by the pinned key has been checked, with its exact text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedCheckpoint {
    head: TreeHead,
    text: String,
}

impl SignedCheckpoint {
    /// Sign the head of `signer`'s ledger.
    pub(crate) fn sign(signer: &LedgerSigner, head: TreeHead) -> Result<Self, NoteError> {
        let scope = signer.scope();
        let body = checkpoint_body(&scope, &head);
        let sig = signer.sign(body.as_bytes()).map_err(NoteError::Sign)?;
        let mut blob = Vec::with_capacity(4 + sig.len());
        blob.extend_from_slice(&key_id(&scope, signer.public_key()));
        blob.extend_from_slice(&sig);
        let text = format!("{body}\n{DASH}{} {}\n", scope.origin(), b64_encode(&blob));
        Ok(Self { head, text })
    }

    /// Parse `text` and verify it: origin must be `scope`'s, and it must carry a valid signature by `key`.
    pub fn verify(text: &str, scope: &LedgerScope, key: &LedgerPublicKey) -> Result<Self, NoteError> {
        let parsed = parse(text)?;
        let origin = scope.origin();
        if parsed.origin != origin {
            return Err(NoteError::Origin { found: parsed.origin.to_string(), expected: origin });
        }
        let id = key_id(scope, key);
        let mut found = None;
        for (name, blob) in &parsed.sigs {
            if *name == origin && blob.len() >= 4 && blob[..4] == id {
                if found.is_some() {
                    return Err(NoteError::Malformed("the pinned key signed twice"));
                }
                found = Some(&blob[4..]);
            }
        }
        let sig = found.ok_or_else(|| NoteError::NoKnownSignature { name: origin.clone(), id: hex::encode(id) })?;
        if sig.len() != SIGNATURE_LEN {
            return Err(NoteError::BadSignature(KeyError::BadSignature));
        }
        key.verify(scope, parsed.body.as_bytes(), sig).map_err(NoteError::BadSignature)?;
        Ok(Self { head: parsed.head, text: text.to_string() })
    }

    /// Parse without verifying any signature (for reading a tree head before the key is known). The result
    /// must not be trusted.
    pub fn parse_unverified(text: &str) -> Result<(String, TreeHead), NoteError> {
        let p = parse(text)?;
        Ok((p.origin.to_string(), p.head))
    }

    /// The tree head.
    pub fn head(&self) -> TreeHead {
        self.head
    }

    /// The exact note text.
    pub fn text(&self) -> &str {
        &self.text
    }
}

struct Parsed<'a> {
    body: &'a str,
    origin: &'a str,
    head: TreeHead,
    sigs: Vec<(&'a str, Vec<u8>)>,
}

fn parse(text: &str) -> Result<Parsed<'_>, NoteError> {
    use NoteError::Malformed as M;
    if text.len() > MAX_NOTE_LEN {
        return Err(M("note too large"));
    }
    if text.chars().any(|c| c < ' ' && c != '\n') {
        return Err(M("control character in note"));
    }
    let split = text.rfind("\n\n").ok_or(M("no blank line before the signatures"))?;
    let body = &text[..=split];
    let sig_text = &text[split + 2..];
    let sig_text = sig_text.strip_suffix('\n').ok_or(M("signature block must end with a newline"))?;
    let mut sigs = Vec::new();
    for line in sig_text.split('\n') {
        let rest = line.strip_prefix(DASH).ok_or(M("signature line does not start with an em dash"))?;
        let (name, b64) = rest.split_once(' ').ok_or(M("signature line has no key name"))?;
        if name.is_empty() || name.contains('+') || b64.contains(' ') {
            return Err(M("bad key name in signature line"));
        }
        let blob = b64_decode(b64).ok_or(M("signature is not canonical base64"))?;
        if blob.len() < 5 {
            return Err(M("signature too short"));
        }
        if sigs.iter().any(|(n, b): &(&str, Vec<u8>)| *n == name && b[..4] == blob[..4]) {
            return Err(M("duplicate signature line"));
        }
        sigs.push((name, blob));
        if sigs.len() > MAX_SIGNATURES {
            return Err(M("more than 16 signatures"));
        }
    }
    let lines: Vec<&str> = body.strip_suffix('\n').unwrap_or(body).split('\n').collect();
    if lines.len() != 3 {
        return Err(M("checkpoint body must be exactly origin, size and root"));
    }
    let origin = lines[0];
    if origin.is_empty() {
        return Err(M("empty origin"));
    }
    let size_s = lines[1];
    if size_s.is_empty() || !size_s.bytes().all(|c| c.is_ascii_digit()) || (size_s.len() > 1 && size_s.starts_with('0'))
    {
        return Err(M("tree size is not a canonical decimal"));
    }
    let size: u64 = size_s.parse().map_err(|_| M("tree size out of range"))?;
    let root = Hash::from_base64(lines[2]).map_err(|_| M("root hash is not 32 bytes of canonical base64"))?;
    Ok(Parsed { body, origin, head: TreeHead { size, root }, sigs })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::TenantId;
    use crate::signer::SignerSeed;

    fn setup() -> (LedgerScope, LedgerSigner) {
        let scope = LedgerScope::Tenant(TenantId::from_bytes([7; 16]));
        let signer = LedgerSigner::new(scope, &SignerSeed::generate().unwrap()).unwrap();
        (scope, signer)
    }

    #[test]
    fn sign_verify_and_reject() {
        let (scope, signer) = setup();
        let head = TreeHead { size: 12, root: Hash::of(b"root") };
        let cp = SignedCheckpoint::sign(&signer, head).unwrap();
        let text = cp.text().to_string();
        assert!(text.starts_with(&format!("{}\n12\n{}\n\n\u{2014} ", scope.origin(), head.root.to_base64())));
        let pk = signer.public_key();
        assert_eq!(SignedCheckpoint::verify(&text, &scope, pk).unwrap().head(), head);

        let other = LedgerScope::Tenant(TenantId::from_bytes([8; 16]));
        assert!(matches!(SignedCheckpoint::verify(&text, &other, pk), Err(NoteError::Origin { .. })));
        let (_, other_signer) = setup();
        assert!(matches!(
            SignedCheckpoint::verify(&text, &scope, other_signer.public_key()),
            Err(NoteError::NoKnownSignature { .. })
        ));
        let tampered = text.replacen("\n12\n", "\n13\n", 1);
        assert!(matches!(SignedCheckpoint::verify(&tampered, &scope, pk), Err(NoteError::BadSignature(_))));
        for bad in [
            text.replacen("\n12\n", "\n012\n", 1),
            text.replacen("\n12\n", "\n12\nextra\n", 1),
            text.trim_end().to_string(),
            text.replace('\n', "\r\n"),
        ] {
            assert!(SignedCheckpoint::verify(&bad, &scope, pk).is_err(), "{bad:?}");
        }
        // An extra signature by an unknown key is ignored.
        let extra = format!("{text}\u{2014} witness.example AAAAAAAA\n");
        assert!(SignedCheckpoint::verify(&extra, &scope, pk).is_ok());
    }
}
