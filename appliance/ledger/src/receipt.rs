//! Receipts in the c2sp.org/tlog-proof@v1 format: the entry (in the `extra` line), its index, its RFC
//! 6962 inclusion proof and the signed checkpoint it is proven against. A receipt is offline-verifiable
//! with the ledger's pinned public key alone.

use std::fmt;
use std::sync::Arc;

use crate::hash::{Hash, b64_decode, b64_encode, leaf_hash};
use crate::merkle::{MerkleError, inclusion_proof_len, verify_inclusion};
use crate::note::{NoteError, SignedCheckpoint};
use crate::oar::{Entry, EntryError, LedgerScope, TreeHead};
use crate::signer::LedgerPublicKey;

/// First line of every receipt.
pub const RECEIPT_HEADER: &str = "c2sp.org/tlog-proof@v1";

/// A receipt failed to parse or verify.
#[derive(Debug, thiserror::Error)]
pub enum ReceiptError {
    /// The text breaks the tlog-proof format; the text says how.
    #[error("malformed receipt: {0}")]
    Malformed(&'static str),
    /// The checkpoint does not verify.
    #[error("receipt checkpoint")]
    Checkpoint(#[source] NoteError),
    /// The inclusion proof does not lead to the checkpoint's root.
    #[error("receipt inclusion proof")]
    Proof(#[source] MerkleError),
    /// The entry in the receipt does not decode.
    #[error("receipt entry")]
    Entry(#[source] EntryError),
    /// The entry names another ledger.
    #[error("receipt entry belongs to {found}, not {expected}")]
    Scope {
        /// The entry's ledger.
        found: LedgerScope,
        /// The verifier's ledger.
        expected: LedgerScope,
    },
}

/// A tlog-proof receipt for one ledger entry.
#[derive(Clone, PartialEq, Eq)]
pub struct Receipt {
    index: u64,
    entry: Vec<u8>,
    proof: Vec<Hash>,
    checkpoint: Arc<str>,
}

impl fmt::Debug for Receipt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Receipt(index {}, {} proof hashes)", self.index, self.proof.len())
    }
}

/// What a verified receipt proves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedReceipt {
    /// The entry's index.
    pub index: u64,
    /// The decoded entry.
    pub entry: Entry,
    /// The signed tree head it is included in.
    pub head: TreeHead,
}

impl Receipt {
    pub(crate) fn new(index: u64, entry: Vec<u8>, proof: Vec<Hash>, checkpoint: Arc<str>) -> Self {
        Self { index, entry, proof, checkpoint }
    }

    /// The entry's index in the ledger.
    pub fn index(&self) -> u64 {
        self.index
    }

    /// The entry's bytes.
    pub fn entry(&self) -> &[u8] {
        &self.entry
    }

    /// The signed checkpoint note.
    pub fn checkpoint(&self) -> &str {
        &self.checkpoint
    }

    /// The receipt as c2sp.org/tlog-proof@v1 text (store with the extension `.tlog-proof`).
    pub fn to_text(&self) -> String {
        let mut s = String::with_capacity(self.checkpoint.len() + 64 * self.proof.len() + self.entry.len() * 2);
        s.push_str(RECEIPT_HEADER);
        s.push('\n');
        s.push_str("extra ");
        s.push_str(&b64_encode(&self.entry));
        s.push('\n');
        s.push_str(&format!("index {}\n", self.index));
        for h in &self.proof {
            s.push_str(&h.to_base64());
            s.push('\n');
        }
        s.push('\n');
        s.push_str(&self.checkpoint);
        s
    }

    /// Parse receipt text strictly (the `extra` line carrying the entry is required here).
    pub fn parse(text: &str) -> Result<Self, ReceiptError> {
        use ReceiptError::Malformed as M;
        let split = text.find("\n\n").ok_or(M("no blank line before the checkpoint"))?;
        let head = &text[..split];
        let checkpoint = &text[split + 2..];
        let mut lines = head.split('\n');
        if lines.next() != Some(RECEIPT_HEADER) {
            return Err(M("first line is not c2sp.org/tlog-proof@v1"));
        }
        let extra =
            lines.next().and_then(|l| l.strip_prefix("extra ")).ok_or(M("missing extra line with the entry"))?;
        let entry = b64_decode(extra).ok_or(M("extra is not canonical base64"))?;
        let idx = lines.next().and_then(|l| l.strip_prefix("index ")).ok_or(M("missing index line"))?;
        if idx.is_empty() || !idx.bytes().all(|c| c.is_ascii_digit()) || (idx.len() > 1 && idx.starts_with('0')) {
            return Err(M("index is not a canonical decimal"));
        }
        let index: u64 = idx.parse().map_err(|_| M("index out of range"))?;
        let mut proof = Vec::new();
        for l in lines {
            proof.push(Hash::from_base64(l).map_err(|_| M("proof line is not a base64 SHA-256 hash"))?);
            if proof.len() > 64 {
                return Err(M("proof longer than 64 hashes"));
            }
        }
        Ok(Self { index, entry, proof, checkpoint: Arc::from(checkpoint) })
    }

    /// Verify: the checkpoint is signed by `key` for `scope`, the proof has exactly the right length and
    /// leads from the entry's leaf hash to the checkpoint root, and the entry decodes and names `scope`.
    pub fn verify(&self, scope: &LedgerScope, key: &LedgerPublicKey) -> Result<VerifiedReceipt, ReceiptError> {
        let cp = SignedCheckpoint::verify(&self.checkpoint, scope, key).map_err(ReceiptError::Checkpoint)?;
        let head = cp.head();
        if self.index >= head.size {
            return Err(ReceiptError::Proof(MerkleError::Impossible("index not below the checkpoint size")));
        }
        if self.proof.len() != inclusion_proof_len(self.index, head.size).map_err(ReceiptError::Proof)? {
            return Err(ReceiptError::Proof(MerkleError::WrongLength));
        }
        verify_inclusion(self.index, head.size, &leaf_hash(&self.entry), &self.proof, &head.root)
            .map_err(ReceiptError::Proof)?;
        let entry = Entry::decode(&self.entry).map_err(ReceiptError::Entry)?;
        if entry.scope() != *scope {
            return Err(ReceiptError::Scope { found: entry.scope(), expected: *scope });
        }
        Ok(VerifiedReceipt { index: self.index, entry, head })
    }
}
