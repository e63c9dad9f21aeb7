//! The ledger's history of every checkpoint it ever issued, as append-only segment files
//! `history/<K>` (K in tile-index path form), each holding up to [`SEGMENT_RECORDS`] records
//! `u32 big-endian length || checkpoint note`. Checkpoints are appended in groups (all those issued
//! through the journal since the last materialization) with one write and one fdatasync per segment
//! touched, and no new file except every 1,024 checkpoints.
//!
//! A crash during an append can leave any of the records of that last group damaged, in any order,
//! since the file's pages reach the disk in no particular order. Those checkpoints are still in the
//! journal (a journal file is reused only after the append succeeded), so opening the history cuts the
//! last segment at its first record that is not a well-formed note of this ledger, and then drops
//! trailing records whose signature does not verify; recovery appends them again from the journal.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};

use crate::ledger::{LedgerError, walk_files};
use crate::note::SignedCheckpoint;
use crate::oar::LedgerScope;
use crate::signer::LedgerPublicKey;
use crate::tiles;

/// Checkpoints per segment file.
pub const SEGMENT_RECORDS: usize = 1024;
/// Longest record accepted (a note with a few signatures).
const MAX_RECORD: usize = crate::note::MAX_NOTE_LEN;

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> LedgerError + '_ {
    move |source| LedgerError::Io { path: path.to_path_buf(), source }
}

/// Relative path of segment `k`.
pub fn segment_path(k: u64) -> String {
    format!("history/{}", tiles::index_path(k))
}

/// Split a segment into its records; a torn tail (incomplete length or note) is returned separately as
/// the byte offset where the complete records end.
fn split_records(bytes: &[u8]) -> (Vec<&[u8]>, usize) {
    let mut out = Vec::new();
    let mut pos = 0usize;
    while bytes.len() - pos >= 4 {
        let len = usize::try_from(u32::from_be_bytes([bytes[pos], bytes[pos + 1], bytes[pos + 2], bytes[pos + 3]]))
            .unwrap_or(usize::MAX);
        if len > MAX_RECORD || bytes.len() - pos - 4 < len {
            break;
        }
        out.push(&bytes[pos + 4..pos + 4 + len]);
        pos += 4 + len;
    }
    (out, pos)
}

/// The segments present, in order.
fn segments(ledger_dir: &Path) -> io::Result<Vec<u64>> {
    let dir = ledger_dir.join("history");
    let mut ks = Vec::new();
    if dir.is_dir() {
        walk_files(&dir, &mut |rel| {
            if let Some(k) = tiles::parse_index_path(rel) {
                ks.push(k);
            }
        })?;
    }
    ks.sort_unstable();
    Ok(ks)
}

/// The appending side of a ledger's history.
#[derive(Debug)]
pub struct History {
    ledger_dir: PathBuf,
    segment: u64,
    records: usize,
    /// Tree size of the newest record (appends at or below it are skipped).
    newest: Option<u64>,
    file: File,
}

/// Cheap structural check of one record of `scope`'s history: UTF-8, no NUL, the origin line first,
/// a final newline. A record damaged by a torn write fails it (or, failing that, the signature check).
fn well_formed(record: &[u8], scope: &LedgerScope) -> bool {
    let origin = scope.origin();
    record.len() > origin.len() + 1
        && record.starts_with(origin.as_bytes())
        && record[origin.len()] == b'\n'
        && record.ends_with(b"\n")
        && !record.contains(&0)
        && std::str::from_utf8(record).is_ok()
}

impl History {
    /// Open the history, cut off a torn last record and return the newest checkpoint (verified with
    /// `key` for `scope`), if any.
    pub fn open(
        ledger_dir: &Path,
        scope: &LedgerScope,
        key: &LedgerPublicKey,
    ) -> Result<(History, Option<SignedCheckpoint>), LedgerError> {
        let ks = segments(ledger_dir).map_err(io_err(ledger_dir))?;
        let mut newest = None;
        let mut current = None;
        // Walk back from the last segment to the newest complete, valid record.
        for (pos, k) in ks.iter().enumerate().rev() {
            let rel = segment_path(*k);
            let path = ledger_dir.join(&rel);
            let bytes = fs::read(&path).map_err(io_err(&path))?;
            let (mut records, mut end) = split_records(&bytes);
            let is_last = pos + 1 == ks.len();
            let mut verified_last = None;
            if is_last {
                // Records damaged by a crash during the last append (never all acknowledged there; the
                // journal still holds them).
                if let Some(bad) = records.iter().position(|r| !well_formed(r, scope)) {
                    end = records[..bad].iter().map(|r| 4 + r.len()).sum();
                    records.truncate(bad);
                }
                while let Some(last) = records.last() {
                    let ok = std::str::from_utf8(last).ok().and_then(|t| SignedCheckpoint::verify(t, scope, key).ok());
                    if ok.is_some() {
                        verified_last = ok;
                        break;
                    }
                    end -= 4 + last.len();
                    records.pop();
                }
            }
            if end != bytes.len() {
                if !is_last {
                    return Err(LedgerError::Corrupt { path: rel, what: "damaged record in a closed segment".into() });
                }
                let f = OpenOptions::new().write(true).open(&path).map_err(io_err(&path))?;
                f.set_len(end as u64).map_err(io_err(&path))?;
                f.sync_all().map_err(io_err(&path))?;
                tracing::warn!(
                    segment = rel,
                    bytes = bytes.len() - end,
                    "cut checkpoint records damaged by a crash (recovery writes them again from the journal)"
                );
            }
            if current.is_none() {
                current = Some((*k, records.len()));
            }
            if let Some(cp) = verified_last {
                newest = Some(cp);
                break;
            }
            if let Some(last) = records.last() {
                let text = std::str::from_utf8(last)
                    .map_err(|_| LedgerError::Corrupt { path: rel.clone(), what: "record is not UTF-8".into() })?;
                let cp = SignedCheckpoint::verify(text, scope, key)
                    .map_err(|source| LedgerError::Checkpoint { path: rel.clone(), source })?;
                newest = Some(cp);
                break;
            }
        }
        let (segment, records) = current.unwrap_or((0, 0));
        let path = ledger_dir.join(segment_path(segment));
        if let Some(parent) = path.parent()
            && !parent.is_dir()
        {
            fs::create_dir_all(parent).map_err(io_err(parent))?;
            sync_parent(parent)?;
        }
        let existed = path.exists();
        let file = OpenOptions::new().create(true).append(true).open(&path).map_err(io_err(&path))?;
        if !existed {
            sync_parent(&path)?;
        }
        let newest_size = newest.as_ref().map(|c: &SignedCheckpoint| c.head().size);
        Ok((History { ledger_dir: ledger_dir.to_path_buf(), segment, records, newest: newest_size, file }, newest))
    }

    /// Tree size of the newest checkpoint recorded.
    pub fn newest_size(&self) -> Option<u64> {
        self.newest
    }

    /// Append one checkpoint durably (see [`History::append_all`]).
    pub fn append(&mut self, cp: &SignedCheckpoint) -> Result<(), LedgerError> {
        self.append_all(std::slice::from_ref(cp))
    }

    /// Append checkpoints durably, in order: one write and one fdatasync per segment touched (a new
    /// segment file every 1,024 records). Checkpoints not larger than the newest one already recorded
    /// are skipped (recovery may offer some again).
    pub fn append_all(&mut self, cps: &[SignedCheckpoint]) -> Result<(), LedgerError> {
        let mut buf = Vec::new();
        for cp in cps {
            if self.newest.is_some_and(|n| cp.head().size <= n) {
                continue;
            }
            if self.records >= SEGMENT_RECORDS {
                self.flush(&mut buf)?;
                let next = self.segment + 1;
                let path = self.ledger_dir.join(segment_path(next));
                if let Some(parent) = path.parent() {
                    fs::create_dir_all(parent).map_err(io_err(parent))?;
                }
                self.file = OpenOptions::new().create(true).append(true).open(&path).map_err(io_err(&path))?;
                sync_parent(&path)?;
                self.segment = next;
                self.records = 0;
            }
            let text = cp.text().as_bytes();
            let len = u32::try_from(text.len()).map_err(|_| LedgerError::Unavailable("checkpoint too large".into()))?;
            buf.extend_from_slice(&len.to_be_bytes());
            buf.extend_from_slice(text);
            self.records += 1;
            self.newest = Some(cp.head().size);
        }
        self.flush(&mut buf)
    }

    fn flush(&mut self, buf: &mut Vec<u8>) -> Result<(), LedgerError> {
        if buf.is_empty() {
            return Ok(());
        }
        let path = self.ledger_dir.join(segment_path(self.segment));
        self.file.write_all(buf).map_err(io_err(&path))?;
        self.file.sync_data().map_err(io_err(&path))?;
        buf.clear();
        Ok(())
    }
}

fn sync_parent(path: &Path) -> Result<(), LedgerError> {
    let parent = path.parent().ok_or_else(|| LedgerError::NotALedger(path.to_path_buf()))?;
    File::open(parent).and_then(|d| d.sync_all()).map_err(io_err(parent))
}

/// The record bytes of a one-record segment (for creating a ledger).
pub fn single_record(cp: &SignedCheckpoint) -> Vec<u8> {
    let text = cp.text().as_bytes();
    let mut rec = Vec::with_capacity(4 + text.len());
    rec.extend_from_slice(&u32::try_from(text.len()).unwrap_or(u32::MAX).to_be_bytes());
    rec.extend_from_slice(text);
    rec
}

/// Every complete checkpoint note in the history, in order, unverified (export copies them; the
/// auditor verifies them).
pub fn read_all(ledger_dir: &Path) -> Result<Vec<String>, LedgerError> {
    let mut out = Vec::new();
    for k in segments(ledger_dir).map_err(io_err(ledger_dir))? {
        let rel = segment_path(k);
        let path = ledger_dir.join(&rel);
        let bytes = fs::read(&path).map_err(io_err(&path))?;
        let (records, _) = split_records(&bytes);
        for r in records {
            out.push(
                String::from_utf8(r.to_vec())
                    .map_err(|_| LedgerError::Corrupt { path: rel.clone(), what: "record is not UTF-8".into() })?,
            );
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::Hash;
    use crate::ids::TenantId;
    use crate::oar::TreeHead;
    use crate::signer::{LedgerSigner, SignerSeed};

    #[test]
    fn appends_roll_segments_and_torn_tails_are_cut() {
        let d = tempfile::tempdir().unwrap();
        let scope = LedgerScope::Tenant(TenantId::random().unwrap());
        let signer = LedgerSigner::new(scope, &SignerSeed::generate().unwrap()).unwrap();
        let key = signer.public_key().clone();
        let (mut h, newest) = History::open(d.path(), &scope, &key).unwrap();
        assert!(newest.is_none());
        let cps: Vec<SignedCheckpoint> = (0..3)
            .map(|i| SignedCheckpoint::sign(&signer, TreeHead { size: i, root: Hash::of(&i.to_be_bytes()) }).unwrap())
            .collect();
        h.records = SEGMENT_RECORDS - 1; // force a segment change after one record
        for cp in &cps {
            h.append(cp).unwrap();
        }
        assert_eq!(segments(d.path()).unwrap(), vec![0, 1]);
        assert_eq!(read_all(d.path()).unwrap(), cps.iter().map(|c| c.text().to_string()).collect::<Vec<_>>());
        drop(h);
        // A torn last record: half of it made it to disk.
        let seg1 = d.path().join(segment_path(1));
        let full = fs::read(&seg1).unwrap();
        let mut torn = full.clone();
        torn.extend_from_slice(&single_record(&cps[2])[..100]);
        fs::write(&seg1, &torn).unwrap();
        let (_, newest) = History::open(d.path(), &scope, &key).unwrap();
        assert_eq!(newest.unwrap(), cps[2]);
        assert_eq!(fs::read(&seg1).unwrap(), full);
        // A complete but garbled last record is cut too; the one before becomes the newest.
        let mut garbled = full.clone();
        let n = garbled.len();
        garbled[n - 10] ^= 1;
        fs::write(&seg1, &garbled).unwrap();
        let (_, newest) = History::open(d.path(), &scope, &key).unwrap();
        assert_eq!(newest.unwrap(), cps[1]);
    }
}
