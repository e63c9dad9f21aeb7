//! The ledger's write-ahead journal: how a batch becomes durable with one write and one `fdatasync`.
//!
//! Writing a batch straight into tlog tiles means creating several files (the partial tiles of each
//! level, the partial entry bundle, the checkpoint) and three rounds of `fsync` (files, directories,
//! checkpoint), each round a queue of virtio requests on this hardware. The gate's latency budget cannot
//! absorb that on every batch, so a batch is first made durable as one journal record: its entries and
//! the checkpoint signed over them. The tiles, `checkpoint` and the history are written later, in the
//! background, by [`crate::ledger::Materialization`], in the crash-safe order the module docs of
//! [`crate::ledger`] describe; recovery replays the journal into them.
//!
//! Two files, `journal.0` and `journal.1`, take turns. Records go to the active file; when the
//! background writer starts on everything journaled so far, the other file becomes active under the
//! next epoch. A file is only reused once all of its records are in the tiles, so at any moment the
//! records not yet in the tiles lie in at most these two files. A file is overwritten from offset 0;
//! records of its previous epoch may follow the new ones, and reading stops there.
//!
//! Record layout (all integers big-endian):
//!
//! ```text
//! record = "bwj1" || epoch:u64 || len:u32 || body (len bytes) || SHA-256("bulwark-journal/v1" || epoch || len || body)
//! body   = start:u64 || count:u32 || count × (entry_len:u32 || entry) || cp_len:u32 || checkpoint note
//! ```
//!
//! `start` is the index of the record's first entry; the checkpoint covers the tree of `start + count`
//! entries. Each record is written and synced before the next is begun, so only a file's last record
//! can be torn by a crash, and a torn record fails its hash. An intact record of the current epoch found
//! after a damaged one therefore means damage, not a crash (its predecessor had been synced): reading
//! reports it rather than dropping the acknowledged records behind it. The marker and the epoch in
//! front of every record make that search cheap. The journal is internal to the appliance: it is never
//! exported, and an auditor never needs it.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use crate::ledger::LedgerError;
use crate::note::MAX_NOTE_LEN;
use crate::tiles::MAX_ENTRY_LEN;

/// The two journal files, relative to the ledger directory.
pub const JOURNAL_FILES: [&str; 2] = ["journal.0", "journal.1"];
const LABEL: &[u8] = b"bulwark-journal/v1";
/// The first bytes of every record.
const MAGIC: &[u8; 4] = b"bwj1";
/// Marker, epoch and length.
const HEADER: usize = 4 + 8 + 4;
/// Most entries one record may hold (the gate's largest batch, outcomes included).
const MAX_RECORD_ENTRIES: usize = 2 * crate::gate::MAX_BATCH;

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> LedgerError + '_ {
    move |source| LedgerError::Io { path: path.to_path_buf(), source }
}

/// One decoded journal record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalRecord {
    /// The epoch the record was written under.
    pub epoch: u64,
    /// Index of the first entry.
    pub start: u64,
    /// The entries, in order.
    pub entries: Vec<Vec<u8>>,
    /// The signed checkpoint over the tree of `start + entries.len()` entries.
    pub checkpoint: String,
}

impl JournalRecord {
    /// Index one past the record's last entry.
    pub fn end(&self) -> u64 {
        self.start + self.entries.len() as u64
    }
}

/// Where records are appended.
#[derive(Debug)]
pub struct Journal {
    paths: [PathBuf; 2],
    files: [File; 2],
    active: usize,
    epoch: u64,
    offset: u64,
    /// Entries written to the active file under this epoch.
    entries: u64,
}

fn record_hash(epoch: [u8; 8], len: [u8; 4], body: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(LABEL);
    h.update(epoch);
    h.update(len);
    h.update(body);
    h.finalize().into()
}

/// Encode one record (framing and hash included).
pub fn encode_record(epoch: u64, start: u64, entries: &[Vec<u8>], checkpoint: &str) -> Result<Vec<u8>, LedgerError> {
    let too_big = || LedgerError::Unavailable("a journal record would exceed 4 GiB".into());
    let body_len = 8 + 4 + entries.iter().map(|e| 4 + e.len()).sum::<usize>() + 4 + checkpoint.len();
    let len = u32::try_from(body_len).map_err(|_| too_big())?;
    let mut out = Vec::with_capacity(HEADER + body_len + 32);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&epoch.to_be_bytes());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&start.to_be_bytes());
    out.extend_from_slice(&u32::try_from(entries.len()).map_err(|_| too_big())?.to_be_bytes());
    for e in entries {
        out.extend_from_slice(&u32::try_from(e.len()).map_err(|_| too_big())?.to_be_bytes());
        out.extend_from_slice(e);
    }
    out.extend_from_slice(&u32::try_from(checkpoint.len()).map_err(|_| too_big())?.to_be_bytes());
    out.extend_from_slice(checkpoint.as_bytes());
    let hash = record_hash(epoch.to_be_bytes(), len.to_be_bytes(), &out[HEADER..]);
    out.extend_from_slice(&hash);
    Ok(out)
}

/// A strict reader over one record body.
struct Body<'a>(&'a [u8]);

impl<'a> Body<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    fn u32(&mut self) -> Option<usize> {
        let b = self.take(4)?;
        usize::try_from(u32::from_be_bytes([b[0], b[1], b[2], b[3]])).ok()
    }
    fn u64(&mut self) -> Option<u64> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Some(u64::from_be_bytes(a))
    }
}

/// Decode the record at the start of `bytes`; returns it and its total length, or `None` where no
/// intact record starts (zeros, a torn write, the end of the file).
pub fn decode_record(bytes: &[u8]) -> Option<(JournalRecord, usize)> {
    let mut outer = Body(bytes);
    if outer.take(4)? != MAGIC {
        return None;
    }
    let epoch = outer.u64()?;
    let len = outer.u32()?;
    let body = outer.take(len)?;
    let hash = outer.take(32)?;
    let len4 = u32::try_from(len).ok()?.to_be_bytes();
    if record_hash(epoch.to_be_bytes(), len4, body) != hash {
        return None;
    }
    let mut b = Body(body);
    let start = b.u64()?;
    let count = b.u32()?;
    if count > MAX_RECORD_ENTRIES {
        return None;
    }
    let mut entries = Vec::with_capacity(count);
    for _ in 0..count {
        let n = b.u32()?;
        if n > MAX_ENTRY_LEN {
            return None;
        }
        entries.push(b.take(n)?.to_vec());
    }
    let n = b.u32()?;
    if n > MAX_NOTE_LEN {
        return None;
    }
    let checkpoint = String::from_utf8(b.take(n)?.to_vec()).ok()?;
    if !b.0.is_empty() {
        return None;
    }
    Some((JournalRecord { epoch, start, entries, checkpoint }, HEADER + len + 32))
}

/// One file's contents: the records of its current epoch (from offset 0 while records are intact, share
/// the first record's epoch and follow each other without gaps), and every intact record found further
/// on (stale records of earlier epochs, or, after damage, records that should have been read).
#[derive(Debug, Default)]
pub struct FileRecords {
    /// The readable prefix.
    pub records: Vec<JournalRecord>,
    /// Intact records after the prefix, with their offsets.
    pub beyond: Vec<(usize, JournalRecord)>,
    /// Where the prefix ends.
    pub prefix_end: usize,
}

/// Read one journal file (see [`FileRecords`]).
pub fn read_file(bytes: &[u8]) -> FileRecords {
    let mut out = FileRecords::default();
    let mut pos = 0usize;
    while let Some((rec, used)) = bytes.get(pos..).and_then(decode_record) {
        if let Some(prev) = out.records.last()
            && (rec.epoch != prev.epoch || rec.start != prev.end())
        {
            break;
        }
        out.records.push(rec);
        pos += used;
    }
    out.prefix_end = pos;
    let mut at = pos;
    while let Some(found) = bytes.get(at..).and_then(|rest| rest.windows(MAGIC.len()).position(|w| w == MAGIC)) {
        let off = at + found;
        if let Some((rec, _)) = decode_record(&bytes[off..]) {
            out.beyond.push((off, rec));
        }
        at = off + 1;
    }
    out
}

/// Whether an intact record after a prefix shows damage rather than leftovers: it belongs to the
/// prefix's epoch and lies beyond it, or (the first record of a pass being the damaged one) it is of an
/// epoch newer than every readable record of both files.
fn damage(files: &[FileRecords]) -> Option<(usize, usize)> {
    let newest = files.iter().flat_map(|f| f.records.iter().map(|r| r.epoch)).max();
    for (i, f) in files.iter().enumerate() {
        let last = f.records.last();
        for (off, rec) in &f.beyond {
            let same_pass = last.is_some_and(|l| rec.epoch == l.epoch && rec.start >= l.end());
            let newer = newest.is_none_or(|n| rec.epoch > n);
            if same_pass || newer {
                return Some((i, *off));
            }
        }
    }
    None
}

impl Journal {
    /// Open both journal files (creating missing ones) and return every record still in them, ordered
    /// by epoch. The next epoch is above every epoch found.
    pub fn open(ledger_dir: &Path) -> Result<(Journal, Vec<JournalRecord>), LedgerError> {
        let paths = JOURNAL_FILES.map(|n| ledger_dir.join(n));
        let mut created = false;
        let mut records: Vec<FileRecords> = Vec::with_capacity(2);
        let mut open = |p: &Path| -> Result<File, LedgerError> {
            let existed = p.exists();
            let f =
                OpenOptions::new().read(true).write(true).create(true).truncate(false).open(p).map_err(io_err(p))?;
            created |= !existed;
            records.push(if existed { read_file(&fs::read(p).map_err(io_err(p))?) } else { FileRecords::default() });
            Ok(f)
        };
        let files = [open(&paths[0])?, open(&paths[1])?];
        if created {
            File::open(ledger_dir).and_then(|d| d.sync_all()).map_err(io_err(ledger_dir))?;
        }
        if let Some((i, off)) = damage(&records) {
            return Err(LedgerError::Corrupt {
                path: JOURNAL_FILES[i].to_string(),
                what: format!(
                    "a damaged record precedes an intact one at offset {off}; acknowledged batches may be \
                     behind it, so the journal is not replayed"
                ),
            });
        }
        let mut all: Vec<JournalRecord> = records.into_iter().flat_map(|f| f.records).collect();
        all.sort_by_key(|r| (r.epoch, r.start));
        let epoch = all.last().map_or(0, |r| r.epoch + 1);
        Ok((Journal { paths, files, active: 0, epoch, offset: 0, entries: 0 }, all))
    }

    /// Append one record to the active file and `fdatasync` it. On error the caller must re-read the
    /// ledger (the record may or may not be durable).
    pub fn append(&mut self, start: u64, entries: &[Vec<u8>], checkpoint: &str) -> Result<(), LedgerError> {
        if entries.len() > MAX_RECORD_ENTRIES {
            return Err(LedgerError::Unavailable("too many entries for one journal record".into()));
        }
        let rec = encode_record(self.epoch, start, entries, checkpoint)?;
        let (f, p) = (&self.files[self.active], &self.paths[self.active]);
        f.write_all_at(&rec, self.offset).map_err(io_err(p))?;
        f.sync_data().map_err(io_err(p))?;
        self.offset += rec.len() as u64;
        self.entries += entries.len() as u64;
        Ok(())
    }

    /// Make the other file active under the next epoch. Only once every record in that file is in the
    /// tiles (the caller's invariant).
    pub fn switch(&mut self) {
        self.active ^= 1;
        self.epoch += 1;
        self.offset = 0;
        self.entries = 0;
    }

    /// Empty both files and start a new epoch in the first. Only when every record is in the tiles (the
    /// caller's invariant). Keeps the next open from reading records it would only skip; not synced, since
    /// records that outlive a crash here are all skipped by replay anyway.
    pub fn reset(&mut self) -> Result<(), LedgerError> {
        for (f, p) in self.files.iter().zip(&self.paths) {
            f.set_len(0).map_err(io_err(p))?;
        }
        self.active = 0;
        self.epoch += 1;
        self.offset = 0;
        self.entries = 0;
        Ok(())
    }

    /// Entries written to the active file since it became active.
    pub fn active_entries(&self) -> u64 {
        self.entries
    }

    /// Bytes written to the active file since it became active.
    pub fn active_bytes(&self) -> u64 {
        self.offset
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(epoch: u64, start: u64, n: usize) -> Vec<u8> {
        let entries: Vec<Vec<u8>> = (0..n).map(|i| vec![u8::try_from(i % 251).unwrap(); 10 + i]).collect();
        encode_record(epoch, start, &entries, "origin\n1\nroot\n\n— sig\n").unwrap()
    }

    #[test]
    fn records_round_trip_and_every_damage_is_refused() {
        let r = rec(3, 7, 4);
        let (d, used) = decode_record(&r).unwrap();
        assert_eq!(&r[..4], MAGIC);
        assert_eq!((d.epoch, d.start, d.end(), used), (3, 7, 11, r.len()));
        assert_eq!(d.entries[2], vec![2u8; 12]);
        for i in 0..r.len() {
            let mut b = r.clone();
            b[i] ^= 0x01;
            assert!(decode_record(&b).is_none(), "flip at {i} accepted");
        }
        for cut in 0..r.len() {
            assert!(decode_record(&r[..cut]).is_none(), "cut at {cut} accepted");
        }
        assert!(decode_record(&[0u8; 64]).is_none());
    }

    #[test]
    fn a_reused_file_stops_at_the_previous_epoch_and_at_a_torn_tail() {
        // Epoch 1 wrote three records; epoch 3 overwrote the start with two longer ones.
        let mut old = Vec::new();
        for (s, n) in [(0u64, 2usize), (2, 2), (4, 2)] {
            old.extend(rec(1, s, n));
        }
        let mut new = rec(3, 10, 3);
        new.extend(rec(3, 13, 1));
        let mut file = old.clone();
        file[..new.len()].copy_from_slice(&new);
        let got = read_file(&file);
        assert_eq!(got.records.iter().map(|r| (r.epoch, r.start)).collect::<Vec<_>>(), vec![(3, 10), (3, 13)]);
        assert!(got.beyond.iter().all(|(_, r)| r.epoch == 1), "only stale records beyond");
        assert_eq!(damage(&[got]), None);
        // A torn third record: the first two stand, and a torn tail is not damage.
        let mut torn = new.clone();
        let third = rec(3, 14, 5);
        torn.extend_from_slice(&third[..third.len() - 9]);
        let got = read_file(&torn);
        assert_eq!(got.records.len(), 2);
        assert_eq!(damage(&[got]), None);
        assert!(read_file(&[]).records.is_empty());
    }

    #[test]
    fn a_damaged_record_before_intact_ones_is_reported() {
        let mut file = Vec::new();
        for (s, n) in [(0u64, 2usize), (2, 2), (4, 2)] {
            file.extend(rec(5, s, n));
        }
        let second = rec(5, 0, 2).len() + 20;
        // The middle record damaged: the third is intact and of the same pass.
        let mut bad = file.clone();
        bad[second] ^= 0x10;
        let got = read_file(&bad);
        assert_eq!(got.records.len(), 1);
        assert!(damage(&[got]).is_some());
        // The first record damaged: the others are newer than anything readable.
        let mut bad = file.clone();
        bad[20] ^= 0x10;
        let other = read_file(&rec(4, 0, 1));
        assert!(damage(&[read_file(&bad), other]).is_some());
        // A record of the same pass that does not follow on is damage too.
        let mut gap = rec(5, 0, 2);
        gap.extend(rec(5, 7, 1));
        assert!(damage(&[read_file(&gap)]).is_some());
        // And it stops the journal from opening.
        let d = tempfile::tempdir().unwrap();
        let mut b2 = file.clone();
        b2[second] ^= 0x10;
        std::fs::write(d.path().join(JOURNAL_FILES[0]), &b2).unwrap();
        let err = Journal::open(d.path()).unwrap_err();
        assert!(matches!(err, LedgerError::Corrupt { ref path, .. } if path == "journal.0"), "{err:?}");
    }

    #[test]
    fn journal_files_alternate_by_epoch() {
        let d = tempfile::tempdir().unwrap();
        let (mut j, recs) = Journal::open(d.path()).unwrap();
        assert!(recs.is_empty());
        j.append(0, &[b"a".to_vec()], "cp1").unwrap();
        j.append(1, &[b"b".to_vec(), b"c".to_vec()], "cp3").unwrap();
        assert_eq!(j.active_entries(), 3);
        j.switch();
        j.append(3, &[b"d".to_vec()], "cp4").unwrap();
        drop(j);
        let (j, recs) = Journal::open(d.path()).unwrap();
        assert_eq!(
            recs.iter().map(|r| (r.epoch, r.start, r.end())).collect::<Vec<_>>(),
            vec![(0, 0, 1), (0, 1, 3), (1, 3, 4)]
        );
        assert_eq!(recs[2].checkpoint, "cp4");
        assert_eq!(j.epoch, 2);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

        #[test]
        fn any_bytes_and_any_damage_read_without_panicking(
            junk in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600),
            cut in 0usize..2000,
            flip in 0usize..2000,
        ) {
            let _ = read_file(&junk);
            let mut file = rec(2, 0, 3);
            file.extend(rec(2, 3, 1));
            file.extend(junk);
            let cut = cut.min(file.len());
            let mut damaged = file[..cut].to_vec();
            if !damaged.is_empty() {
                let at = flip % damaged.len();
                damaged[at] ^= 0x41;
            }
            let got = read_file(&damaged);
            for pair in got.records.windows(2) {
                proptest::prop_assert_eq!(pair[0].end(), pair[1].start);
            }
            let _ = damage(&[got]);
        }
    }
}
