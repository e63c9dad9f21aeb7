//! `tokenizer.json` → token ids, packed for the variable-length kernels.
//!
//! Uses the `tokenizers` crate with only its pure-Rust features (WordPiece, BertNormalizer and
//! BertPreTokenizer need no regex engine; `fancy-regex` satisfies the crate's requirement of one;
//! no onig, no network, no progress bars). The file's own padding and truncation settings are
//! switched off; this module applies the brain's [`Truncation`] policy itself so the outcome is
//! explicit. Words the vocabulary lacks become `[UNK]` (the model's normal behaviour, not an
//! error); a tokenizer that could emit an id outside the model's vocabulary is rejected when
//! loaded.

use tokenizers::{Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

use super::ModelError;

/// What to do with a text longer than the token limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Truncation {
    /// Keep the first `limit - 2` word pieces plus `[CLS]`/`[SEP]` (sentence-transformers'
    /// behaviour); the result reports which texts were cut.
    #[default]
    Truncate,
    /// Refuse the batch with [`ModelError::TooLong`].
    Reject,
}

/// A batch of texts as packed token streams: no padding, sequence `b` owns tokens
/// `cu[b]..cu[b+1]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TokenBatch {
    /// Token ids.
    pub ids: Vec<u32>,
    /// Token-type (segment) ids.
    pub type_ids: Vec<u32>,
    /// Position ids (0-based within each sequence).
    pub pos_ids: Vec<u32>,
    /// Sequence offsets, `len() == sequences + 1`.
    pub cu: Vec<u32>,
    /// Which texts were truncated.
    pub truncated: Vec<bool>,
}

impl TokenBatch {
    /// Number of sequences.
    pub fn sequences(&self) -> usize {
        self.cu.len().saturating_sub(1)
    }
    /// Number of tokens.
    pub fn tokens(&self) -> usize {
        self.ids.len()
    }
    /// Builds a batch from per-sequence `(ids, type_ids)` (positions are 0..len). Fails when
    /// the batch has more than `u32::MAX` tokens.
    pub fn from_sequences(seqs: &[(Vec<u32>, Vec<u32>)]) -> Result<Self, ModelError> {
        let mut b = TokenBatch { cu: vec![0], ..Default::default() };
        for (ids, types) in seqs {
            b.push(ids, types, false)?;
        }
        Ok(b)
    }

    fn push(&mut self, ids: &[u32], types: &[u32], truncated: bool) -> Result<(), ModelError> {
        let too_many = || ModelError::Config("batch exceeds 2^32 - 1 tokens".into());
        let len = u32::try_from(ids.len()).map_err(|_| too_many())?;
        let end = u32::try_from(self.ids.len() + ids.len()).map_err(|_| too_many())?;
        self.ids.extend_from_slice(ids);
        self.type_ids.extend_from_slice(types);
        self.pos_ids.extend(0..len);
        self.cu.push(end);
        self.truncated.push(truncated);
        Ok(())
    }
    /// The sub-batch of sequences `[s0, s1)`, re-based to start at token 0.
    pub fn slice(&self, s0: usize, s1: usize) -> TokenBatch {
        let (t0, t1) = (self.cu[s0] as usize, self.cu[s1] as usize);
        TokenBatch {
            ids: self.ids[t0..t1].to_vec(),
            type_ids: self.type_ids[t0..t1].to_vec(),
            pos_ids: self.pos_ids[t0..t1].to_vec(),
            cu: self.cu[s0..=s1].iter().map(|&c| c - self.cu[s0]).collect(),
            truncated: self.truncated[s0..s1].to_vec(),
        }
    }
}

/// A loaded tokenizer with the brain's length policy.
pub struct TextTokenizer {
    tok: Tokenizer,
    limit: usize,
    policy: Truncation,
}

impl std::fmt::Debug for TextTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextTokenizer")
            .field("limit", &self.limit)
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

/// Longest text accepted before tokenizing, in bytes (bounds tokenizer work per text).
pub const MAX_TEXT_BYTES: usize = 1 << 20;

impl TextTokenizer {
    /// Loads `tokenizer.json`, checks it against the model's vocabulary size, and sets the
    /// token limit (`limit` includes `[CLS]` and `[SEP]`).
    pub fn from_json(json: &[u8], model_vocab: usize, limit: usize, policy: Truncation) -> Result<Self, ModelError> {
        let mut tok = Tokenizer::from_bytes(json).map_err(|e| ModelError::Tokenizer(e.to_string()))?;
        let n = tok.get_vocab_size(true);
        if n > model_vocab {
            return Err(ModelError::VocabMismatch { tokenizer: n, model: model_vocab });
        }
        if limit < 3 {
            return Err(ModelError::Config(format!("token limit {limit} is below 3")));
        }
        tok.with_padding(None);
        let trunc = match policy {
            Truncation::Truncate => Some(TruncationParams {
                direction: TruncationDirection::Right,
                max_length: limit,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
            }),
            Truncation::Reject => None,
        };
        tok.with_truncation(trunc).map_err(|e| ModelError::Tokenizer(e.to_string()))?;
        Ok(TextTokenizer { tok, limit, policy })
    }

    /// The token limit per text (with special tokens).
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Tokenizes `texts` (with special tokens) into one packed batch.
    pub fn encode(&self, texts: &[&str], model_vocab: usize) -> Result<TokenBatch, ModelError> {
        let mut b = TokenBatch { cu: vec![0], ..Default::default() };
        for (index, text) in texts.iter().enumerate() {
            if text.len() > MAX_TEXT_BYTES {
                return Err(ModelError::Encode { index, reason: format!("text longer than {MAX_TEXT_BYTES} bytes") });
            }
            let enc = self.tok.encode(*text, true).map_err(|e| ModelError::Encode { index, reason: e.to_string() })?;
            let ids = enc.get_ids();
            if ids.len() > self.limit {
                // Only reachable with Truncation::Reject (Truncate caps the length).
                return Err(ModelError::TooLong { index, tokens: ids.len(), limit: self.limit });
            }
            if ids.is_empty() {
                return Err(ModelError::Encode {
                    index,
                    reason: "no tokens (tokenizer adds no special tokens?)".into(),
                });
            }
            if let Some(&bad) = ids.iter().find(|&&i| i as usize >= model_vocab) {
                return Err(ModelError::Encode {
                    index,
                    reason: format!("token id {bad} outside vocabulary {model_vocab}"),
                });
            }
            let types = enc.get_type_ids();
            if types.len() != ids.len() {
                return Err(ModelError::Encode { index, reason: "type ids and ids differ in length".into() });
            }
            b.push(ids, types, self.policy == Truncation::Truncate && !enc.get_overflowing().is_empty())?;
        }
        Ok(b)
    }

    /// Id of a token string, if the vocabulary has it.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.tok.token_to_id(token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::tiny_tokenizer_json;

    fn tok(limit: usize, policy: Truncation) -> TextTokenizer {
        TextTokenizer::from_json(tiny_tokenizer_json().as_bytes(), 1000, limit, policy).expect("tokenizer")
    }

    #[test]
    fn wordpiece_with_special_tokens_and_unk() {
        let t = tok(64, Truncation::Truncate);
        let b = t.encode(&["The cat sat.", "zzzq"], 1000).expect("encode");
        let cls = t.token_id("[CLS]").expect("cls");
        let sep = t.token_id("[SEP]").expect("sep");
        let unk = t.token_id("[UNK]").expect("unk");
        assert_eq!(b.sequences(), 2);
        let s0 = &b.ids[b.cu[0] as usize..b.cu[1] as usize];
        assert_eq!(s0.first(), Some(&cls));
        assert_eq!(s0.last(), Some(&sep));
        assert_eq!(s0.len(), 6, "[CLS] the cat sat . [SEP]: {s0:?}");
        let s1 = &b.ids[b.cu[1] as usize..b.cu[2] as usize];
        assert_eq!(s1, &[cls, unk, sep], "an unknown word is [UNK]");
        assert_eq!(&b.pos_ids[b.cu[1] as usize..], &[0, 1, 2]);
        assert_eq!(b.truncated, vec![false, false]);
    }

    #[test]
    fn long_text_truncates_or_is_rejected() {
        let long = "the cat sat ".repeat(50);
        let t = tok(16, Truncation::Truncate);
        let b = t.encode(&[&long], 1000).expect("encode");
        assert_eq!(b.tokens(), 16);
        assert_eq!(b.truncated, vec![true]);
        assert_eq!(b.ids.last(), t.token_id("[SEP]").as_ref(), "truncation keeps the final [SEP]");
        let t = tok(16, Truncation::Reject);
        assert!(matches!(t.encode(&[&long], 1000), Err(ModelError::TooLong { index: 0, limit: 16, .. })));
    }

    #[test]
    fn vocabulary_larger_than_model_is_rejected() {
        let r = TextTokenizer::from_json(tiny_tokenizer_json().as_bytes(), 10, 64, Truncation::Truncate);
        assert!(matches!(r, Err(ModelError::VocabMismatch { model: 10, .. })));
        assert!(matches!(
            TextTokenizer::from_json(b"{not json", 10, 64, Truncation::Truncate),
            Err(ModelError::Tokenizer(_))
        ));
    }

    #[test]
    fn batch_slices_rebase() {
        let b = TokenBatch::from_sequences(&[(vec![1, 2], vec![0, 0]), (vec![3, 4, 5], vec![0, 0, 0])]).expect("batch");
        let s = b.slice(1, 2);
        assert_eq!(s.ids, vec![3, 4, 5]);
        assert_eq!(s.cu, vec![0, 3]);
        assert_eq!(s.pos_ids, vec![0, 1, 2]);
    }
}
