//! The C2SP tlog-tiles layout (height 8) and an in-memory tree that keeps only what appends and recent
//! proofs need: the rightmost (partial) tile at every level, with all its interior nodes, plus a small
//! cache of full tiles read back from disk.
//!
//! Paths: `tile/<L>/<N>` for full tiles, `tile/<L>/<N>.p/<W>` for partial ones, and the same under
//! `tile/entries/` for entry bundles. `<N>` is written in zero-padded 3-digit groups, every group but the
//! last prefixed with `x` (1234067 → `x001/x234/067`).

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::hash::{HASH_LEN, Hash, leaf_hash, node_hash};
use crate::merkle::{MerkleError, NodeSource};

/// Tile height: each tile spans 8 tree levels.
pub const TILE_HEIGHT: u8 = 8;
/// Hashes in a full tile.
pub const TILE_WIDTH: usize = 256;
/// Largest entry an entry bundle can carry (uint16 length prefix).
pub const MAX_ENTRY_LEN: usize = u16::MAX as usize;
/// Full tiles kept in memory before older ones are dropped (they are re-read from disk when needed).
const CACHE_TILES: usize = 64;

/// `N` written as tlog-tiles path elements (`x001/x234/067`).
pub fn index_path(n: u64) -> String {
    let digits = n.to_string();
    let pad = (3 - digits.len() % 3) % 3;
    let padded = format!("{}{}", "0".repeat(pad), digits);
    let groups: Vec<&str> = padded.as_bytes().chunks(3).map(|c| std::str::from_utf8(c).unwrap_or("000")).collect();
    let last = groups.len() - 1;
    groups
        .iter()
        .enumerate()
        .map(|(i, g)| if i < last { format!("x{g}") } else { (*g).to_string() })
        .collect::<Vec<_>>()
        .join("/")
}

/// Parse path elements written by [`index_path`]; `None` unless the text is exactly canonical.
pub fn parse_index_path(s: &str) -> Option<u64> {
    let parts: Vec<&str> = s.split('/').collect();
    let last = parts.len().checked_sub(1)?;
    let mut digits = String::new();
    for (i, p) in parts.iter().enumerate() {
        let g = if i < last { p.strip_prefix('x')? } else { p };
        if g.len() != 3 || !g.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        digits.push_str(g);
    }
    let n: u64 = digits.parse().ok()?;
    (index_path(n) == s).then_some(n)
}

/// Width suffix: `""` for a full tile, `".p/W"` for a partial one.
fn width_suffix(width: usize) -> String {
    if width == TILE_WIDTH { String::new() } else { format!(".p/{width}") }
}

/// Relative path of hash tile (`level`, `n`) of `width` hashes (1..=256).
pub fn tile_path(level: u8, n: u64, width: usize) -> String {
    format!("tile/{level}/{}{}", index_path(n), width_suffix(width))
}

/// Relative path of entry bundle `n` holding `width` entries (1..=256).
pub fn entries_path(n: u64, width: usize) -> String {
    format!("tile/entries/{}{}", index_path(n), width_suffix(width))
}

/// Encode an entry bundle: each entry as a big-endian uint16 length then its bytes.
pub fn encode_bundle<'a>(entries: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut out = Vec::new();
    for e in entries {
        let len = u16::try_from(e.len()).unwrap_or(u16::MAX);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&e[..usize::from(len)]);
    }
    out
}

/// Decode an entry bundle that must hold exactly `want` entries and nothing after them.
pub fn decode_bundle(bytes: &[u8], want: usize) -> Result<Vec<&[u8]>, String> {
    let mut out = Vec::with_capacity(want);
    let mut rest = bytes;
    while !rest.is_empty() {
        if rest.len() < 2 {
            return Err(format!("truncated length prefix after entry {}", out.len()));
        }
        let len = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
        rest = &rest[2..];
        if rest.len() < len {
            return Err(format!("entry {} claims {len} bytes, {} remain", out.len(), rest.len()));
        }
        out.push(&rest[..len]);
        rest = &rest[len..];
        if out.len() > want {
            return Err(format!("more than the expected {want} entries"));
        }
    }
    if out.len() != want {
        return Err(format!("holds {} entries, expected {want}", out.len()));
    }
    Ok(out)
}

/// Split the bytes of a hash tile into hashes; the length must be a whole number of hashes.
pub fn decode_tile(bytes: &[u8], want: usize) -> Result<Vec<Hash>, String> {
    if bytes.len() != want * HASH_LEN {
        return Err(format!("is {} bytes, expected {} ({want} hashes)", bytes.len(), want * HASH_LEN));
    }
    Ok(bytes.chunks_exact(HASH_LEN).map(|c| Hash(c.try_into().unwrap_or([0; HASH_LEN]))).collect())
}

/// One tile with every interior node: `levels[r]` holds the complete nodes `r` levels above the
/// tile's own hashes (`levels[0]`); `levels[8]` holds the tile's root once it is full.
#[derive(Debug, Clone, Default)]
pub struct TileNodes {
    levels: [Vec<Hash>; 9],
}

impl TileNodes {
    /// Build from the tile's hashes (at most 256).
    pub fn from_hashes(hashes: &[Hash]) -> Self {
        let mut t = Self::default();
        for h in hashes {
            t.push(*h);
        }
        t
    }

    /// Number of hashes in the tile.
    pub fn width(&self) -> usize {
        self.levels[0].len()
    }

    /// The tile's hashes.
    pub fn hashes(&self) -> &[Hash] {
        &self.levels[0]
    }

    /// Append one hash; returns the tile's root when this hash fills it.
    pub fn push(&mut self, h: Hash) -> Option<Hash> {
        debug_assert!(self.width() < TILE_WIDTH);
        self.levels[0].push(h);
        let mut r = 0;
        while r < 8 && self.levels[r].len().is_multiple_of(2) {
            let n = self.levels[r].len();
            let parent = node_hash(&self.levels[r][n - 2], &self.levels[r][n - 1]);
            self.levels[r + 1].push(parent);
            r += 1;
        }
        (self.width() == TILE_WIDTH).then(|| self.levels[8][0])
    }

    fn get(&self, r: usize, j: u64) -> Option<Hash> {
        let j = usize::try_from(j).ok()?;
        self.levels.get(r)?.get(j).copied()
    }

    /// The tile's bytes as stored on disk.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.levels[0].iter().flat_map(|h| h.0).collect()
    }
}

/// A Merkle tree as the rightmost partial tile of every level plus full tiles (cached, else read from
/// `dir`). Appends keep the edge up to date; a writer drains [`Tree::take_changes`] to learn which tiles
/// to persist.
#[derive(Debug)]
pub struct Tree {
    size: u64,
    edge: Vec<TileNodes>,
    dir: Option<PathBuf>,
    cache: RefCell<TileCache>,
    changes: Changes,
    entries_edge: Vec<Vec<u8>>,
    keep_entries: bool,
}

#[derive(Debug, Default)]
struct TileCache {
    map: HashMap<(u8, u64), Arc<TileNodes>>,
    order: VecDeque<(u8, u64)>,
}

impl TileCache {
    fn insert(&mut self, key: (u8, u64), t: Arc<TileNodes>) {
        if self.map.insert(key, t).is_none() {
            self.order.push_back(key);
        }
        while self.order.len() > CACHE_TILES {
            if let Some(old) = self.order.pop_front() {
                self.map.remove(&old);
            }
        }
    }
}

/// Tiles and entry bundles that changed since the last [`Tree::take_changes`].
#[derive(Debug, Default)]
pub struct Changes {
    /// Hash tiles to write: (level, index, bytes, width).
    pub tiles: Vec<(u8, u64, Vec<u8>, usize)>,
    /// Entry bundles to write: (index, bytes, width).
    pub bundles: Vec<(u64, Vec<u8>, usize)>,
    touched: Vec<(u8, u64)>,
    bundle_touched: Option<u64>,
    completed_bundles: Vec<(u64, Vec<u8>)>,
}

impl Tree {
    /// An empty tree. `dir` is where full tiles can be read back from; `keep_entries` makes the tree
    /// also track the entry bundle being filled (the writer needs it, a verifier does not).
    pub fn new(dir: Option<PathBuf>, keep_entries: bool) -> Self {
        Self {
            size: 0,
            edge: vec![TileNodes::default()],
            dir,
            cache: RefCell::new(TileCache::default()),
            changes: Changes::default(),
            entries_edge: Vec::new(),
            keep_entries,
        }
    }

    /// Rebuild the tree of `size` leaves from the tiles (and, with `keep_entries`, the entry bundle) that
    /// a ledger directory holds for that size.
    pub fn load(dir: &Path, size: u64, keep_entries: bool) -> Result<Self, TileError> {
        let mut t = Self::new(Some(dir.to_path_buf()), keep_entries);
        t.size = size;
        t.edge.clear();
        let mut level: u8 = 0;
        loop {
            let shift = u32::from(level) * u32::from(TILE_HEIGHT);
            let above = size.checked_shr(shift).unwrap_or(0);
            if above == 0 && level > 0 {
                break;
            }
            let width = usize::try_from(above % TILE_WIDTH as u64).unwrap_or(0);
            let n = above / TILE_WIDTH as u64;
            if width == 0 {
                t.edge.push(TileNodes::default());
            } else {
                let rel = tile_path(level, n, width);
                let bytes = read_file(dir, &rel)?;
                let hashes = decode_tile(&bytes, width).map_err(|what| TileError::Malformed { path: rel, what })?;
                t.edge.push(TileNodes::from_hashes(&hashes));
            }
            if level == 0 && keep_entries && width > 0 {
                let rel = entries_path(n, width);
                let bytes = read_file(dir, &rel)?;
                let entries =
                    decode_bundle(&bytes, width).map_err(|what| TileError::Malformed { path: rel.clone(), what })?;
                for (i, (e, h)) in entries.iter().zip(t.edge[0].hashes()).enumerate() {
                    if leaf_hash(e) != *h {
                        return Err(TileError::Malformed {
                            path: rel,
                            what: format!("entry {i} does not match its tile hash"),
                        });
                    }
                }
                t.entries_edge = entries.into_iter().map(<[u8]>::to_vec).collect();
            }
            level += 1;
            if level > 7 {
                break;
            }
        }
        if t.edge.is_empty() {
            t.edge.push(TileNodes::default());
        }
        Ok(t)
    }

    /// Number of leaves.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Append one entry (its leaf hash is computed here) and return the leaf hash.
    pub fn append_entry(&mut self, entry: &[u8]) -> Hash {
        let h = leaf_hash(entry);
        if self.keep_entries {
            self.entries_edge.push(entry.to_vec());
            let n = self.size / TILE_WIDTH as u64;
            self.changes.bundle_touched = Some(n);
            if self.entries_edge.len() == TILE_WIDTH {
                let bytes = encode_bundle(self.entries_edge.iter().map(Vec::as_slice));
                self.changes.completed_bundles.push((n, bytes));
                self.entries_edge.clear();
                self.changes.bundle_touched = None;
            }
        }
        self.append_leaf_hash(h);
        h
    }

    /// Append one leaf hash.
    pub fn append_leaf_hash(&mut self, h: Hash) {
        let mut level = 0usize;
        let mut carry = Some(h);
        while let Some(hash) = carry.take() {
            if self.edge.len() <= level {
                self.edge.push(TileNodes::default());
            }
            let lv = u8::try_from(level).unwrap_or(u8::MAX);
            let shift = (u32::from(lv) + 1) * u32::from(TILE_HEIGHT);
            let n = self.size.checked_shr(shift).unwrap_or(0);
            if let Some(root) = self.edge[level].push(hash) {
                let full = Arc::new(std::mem::take(&mut self.edge[level]));
                self.changes.tiles.push((lv, n, full.to_bytes(), TILE_WIDTH));
                self.changes.touched.retain(|k| *k != (lv, n));
                self.cache.borrow_mut().insert((lv, n), full);
                carry = Some(root);
            } else if !self.changes.touched.contains(&(lv, n)) {
                self.changes.touched.push((lv, n));
            }
            level += 1;
        }
        self.size += 1;
    }

    /// Everything written since the last call: completed tiles and bundles, plus the current partial
    /// tile of each touched level and the current partial bundle.
    pub fn take_changes(&mut self) -> Changes {
        let mut ch = std::mem::take(&mut self.changes);
        for (level, n) in std::mem::take(&mut ch.touched) {
            let t = &self.edge[usize::from(level)];
            if t.width() > 0 {
                ch.tiles.push((level, n, t.to_bytes(), t.width()));
            }
        }
        for (n, bytes) in std::mem::take(&mut ch.completed_bundles) {
            ch.bundles.push((n, bytes, TILE_WIDTH));
        }
        if let Some(n) = ch.bundle_touched.take()
            && !self.entries_edge.is_empty()
        {
            let bytes = encode_bundle(self.entries_edge.iter().map(Vec::as_slice));
            ch.bundles.push((n, bytes, self.entries_edge.len()));
        }
        ch
    }

    /// The current (partial) tile at `level`, if the tree reaches that level.
    pub fn edge_tile(&self, level: u8) -> Option<&TileNodes> {
        self.edge.get(usize::from(level))
    }

    /// Number of tile levels the tree currently spans.
    pub fn levels(&self) -> usize {
        self.edge.len()
    }

    /// Forget pending changes (after a failed write the caller reloads from disk instead).
    pub fn discard_changes(&mut self) {
        self.changes = Changes::default();
    }

    fn full_tile(&self, level: u8, n: u64) -> Result<Arc<TileNodes>, MerkleError> {
        if let Some(t) = self.cache.borrow().map.get(&(level, n)) {
            return Ok(Arc::clone(t));
        }
        let dir = self.dir.as_ref().ok_or(MerkleError::MissingNode { level: level * TILE_HEIGHT, index: n })?;
        let rel = tile_path(level, n, TILE_WIDTH);
        let bytes = read_file(dir, &rel).map_err(|e| MerkleError::Store(e.to_string()))?;
        let hashes = decode_tile(&bytes, TILE_WIDTH).map_err(|w| MerkleError::Store(format!("{rel}: {w}")))?;
        let t = Arc::new(TileNodes::from_hashes(&hashes));
        self.cache.borrow_mut().insert((level, n), Arc::clone(&t));
        Ok(t)
    }
}

impl NodeSource for Tree {
    fn node(&self, level: u8, index: u64) -> Result<Hash, MerkleError> {
        let missing = MerkleError::MissingNode { level, index };
        let tl = level / TILE_HEIGHT;
        let r = u32::from(level % TILE_HEIGHT);
        if usize::from(tl) >= self.edge.len() {
            return Err(missing);
        }
        let first = index.checked_shl(r).filter(|f| f >> r == index).ok_or(missing.clone())?;
        let n = first / TILE_WIDTH as u64;
        let j = (first % TILE_WIDTH as u64) >> r;
        let shift = (u32::from(tl) + 1) * u32::from(TILE_HEIGHT);
        let edge_n = self.size.checked_shr(shift).unwrap_or(0);
        let r = r as usize;
        if n == edge_n {
            self.edge[usize::from(tl)].get(r, j).ok_or(missing)
        } else if n < edge_n {
            self.full_tile(tl, n)?.get(r, j).ok_or(missing)
        } else {
            Err(missing)
        }
    }
}

/// A tile or bundle could not be read back.
#[derive(Debug, thiserror::Error)]
pub enum TileError {
    /// The file is missing or unreadable.
    #[error("cannot read {path}")]
    Read {
        /// Path relative to the ledger directory.
        path: String,
        /// The I/O cause.
        #[source]
        source: std::io::Error,
    },
    /// The file's contents do not fit its name.
    #[error("{path} {what}")]
    Malformed {
        /// Path relative to the ledger directory.
        path: String,
        /// What is wrong.
        what: String,
    },
}

fn read_file(dir: &Path, rel: &str) -> Result<Vec<u8>, TileError> {
    std::fs::read(dir.join(rel)).map_err(|source| TileError::Read { path: rel.to_string(), source })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::merkle::{MemoryTree, consistency_proof, inclusion_proof, root};
    use proptest::prelude::*;

    #[test]
    fn index_paths() {
        assert_eq!(index_path(0), "000");
        assert_eq!(index_path(7), "007");
        assert_eq!(index_path(999), "999");
        assert_eq!(index_path(1000), "x001/000");
        assert_eq!(index_path(1234067), "x001/x234/067");
        assert_eq!(tile_path(0, 5, 256), "tile/0/005");
        assert_eq!(tile_path(1, 1234067, 17), "tile/1/x001/x234/067.p/17");
        assert_eq!(entries_path(0, 3), "tile/entries/000.p/3");
        for n in [0u64, 5, 999, 1000, 1234067, u64::MAX] {
            assert_eq!(parse_index_path(&index_path(n)), Some(n));
        }
        for bad in ["", "1", "0000", "x000/001", "001/002", "x001/02", "x01/002", "abc"] {
            assert_eq!(parse_index_path(bad), None, "{bad}");
        }
    }

    #[test]
    fn bundles_are_strict() {
        let b = encode_bundle([b"ab".as_slice(), b"".as_slice(), b"xyz".as_slice()]);
        assert_eq!(b, [0, 2, b'a', b'b', 0, 0, 0, 3, b'x', b'y', b'z']);
        assert_eq!(decode_bundle(&b, 3).unwrap(), vec![b"ab".as_slice(), b"", b"xyz"]);
        assert!(decode_bundle(&b, 2).is_err());
        assert!(decode_bundle(&b, 4).is_err());
        assert!(decode_bundle(&b[..b.len() - 1], 3).is_err());
        let mut extra = b.clone();
        extra.push(0);
        assert!(decode_bundle(&extra, 3).is_err());
        assert!(decode_tile(&[0u8; 65], 2).is_err());
        assert_eq!(decode_tile(&[0u8; 64], 2).unwrap().len(), 2);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(12))]
        /// The tiled tree answers every root and proof exactly like the whole-tree reference, for sizes
        /// that cross tile boundaries on two levels; and a tree reloaded from its written tiles agrees.
        #[test]
        fn tiled_matches_reference(n in 1u64..70_000, seed in any::<u64>()) {
            let dir = tempfile::tempdir().unwrap();
            let mut tiled = Tree::new(Some(dir.path().to_path_buf()), true);
            let mut reference = MemoryTree::default();
            for i in 0..n {
                let e = format!("{seed}:{i}").into_bytes();
                let h = tiled.append_entry(&e);
                reference.push(h);
                if i % 997 == 0 || i + 1 == n {
                    write_changes(dir.path(), tiled.take_changes());
                }
            }
            let picks = [1, n / 3 + 1, n / 2 + 1, n];
            for s in picks {
                prop_assert_eq!(root(&tiled, s).unwrap(), root(&reference, s).unwrap());
            }
            let idx = seed % n;
            prop_assert_eq!(inclusion_proof(&tiled, idx, n).unwrap(), inclusion_proof(&reference, idx, n).unwrap());
            let old = 1 + (seed / 3) % n;
            prop_assert_eq!(consistency_proof(&tiled, old, n).unwrap(), consistency_proof(&reference, old, n).unwrap());
            let loaded = Tree::load(dir.path(), n, true).unwrap();
            prop_assert_eq!(root(&loaded, n).unwrap(), root(&reference, n).unwrap());
            prop_assert_eq!(inclusion_proof(&loaded, idx, n).unwrap(), inclusion_proof(&reference, idx, n).unwrap());
        }
    }

    fn write_changes(dir: &Path, ch: Changes) {
        for (level, n, bytes, width) in ch.tiles {
            let p = dir.join(tile_path(level, n, width));
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, bytes).unwrap();
        }
        for (n, bytes, width) in ch.bundles {
            let p = dir.join(entries_path(n, width));
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, bytes).unwrap();
        }
    }

    #[test]
    fn size_256_has_level1_partial_of_width_1() {
        let mut t = Tree::new(None, false);
        for i in 0..256u32 {
            t.append_entry(&i.to_be_bytes());
        }
        let ch = t.take_changes();
        let names: Vec<String> = ch.tiles.iter().map(|(l, n, _, w)| tile_path(*l, *n, *w)).collect();
        assert_eq!(names, vec!["tile/0/000".to_string(), "tile/1/000.p/1".to_string()]);
    }
}
