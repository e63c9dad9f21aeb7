//! RFC 6962 / RFC 9162 Merkle tree algorithms over any store of perfect-subtree hashes.
//!
//! Trees are addressed as in RFC 9162 §2.1: MTH(D[a:b]) for the leaf range `a..b`. A [`NodeSource`] only
//! has to answer for *perfect* subtrees (a power-of-two range aligned to its size); every other range
//! that appears in the RFC's recursion is folded from those. Proof generation follows RFC 9162
//! §2.1.3.1 (PATH) and §2.1.4.1 (SUBPROOF); verification follows §2.1.3.2 and §2.1.4.2 exactly, with
//! strict proof-length checks.

use crate::hash::{Hash, empty_root, node_hash};

/// Trees deeper than this cannot exist (sizes are u64).
pub const MAX_LEVEL: u8 = 63;

/// A Merkle computation or proof check failed.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum MerkleError {
    /// A requested node lies outside the tree or is not a complete subtree.
    #[error("no complete subtree at level {level}, index {index} in this tree")]
    MissingNode {
        /// Height of the subtree (0 = leaf).
        level: u8,
        /// Index of the subtree among those of its height.
        index: u64,
    },
    /// The proof's index or sizes are impossible (index beyond size, first size beyond second).
    #[error("impossible proof parameters: {0}")]
    Impossible(&'static str),
    /// The proof has more or fewer hashes than the sizes require.
    #[error("proof has the wrong number of hashes")]
    WrongLength,
    /// The recomputed root differs from the claimed one.
    #[error("proof does not lead to the claimed root")]
    RootMismatch,
    /// The store could not produce a node (I/O, missing tile); the text names the cause.
    #[error("tree store: {0}")]
    Store(String),
}

/// Anything that can produce the hash of a perfect subtree: the leaves `index·2^level ..
/// (index+1)·2^level`.
pub trait NodeSource {
    /// The hash of the perfect subtree at `level` (0 = a leaf hash) and `index`.
    fn node(&self, level: u8, index: u64) -> Result<Hash, MerkleError>;
}

/// The largest power of two strictly smaller than `n` (n ≥ 2), RFC 9162's k.
fn split_point(n: u64) -> u64 {
    debug_assert!(n >= 2);
    1u64 << (63 - (n - 1).leading_zeros())
}

/// MTH(D[start:end]) for any range produced by the RFC's recursion (`start` a multiple of the largest
/// power of two not exceeding `end - start`) or the whole tree (`start` = 0).
pub fn subtree_hash<S: NodeSource + ?Sized>(src: &S, start: u64, end: u64) -> Result<Hash, MerkleError> {
    if end < start {
        return Err(MerkleError::Impossible("range end before start"));
    }
    let n = end - start;
    if n == 0 {
        return Ok(empty_root());
    }
    if n.is_power_of_two() && start.is_multiple_of(n) {
        let level = u8::try_from(n.trailing_zeros()).map_err(|_| MerkleError::Impossible("level"))?;
        return src.node(level, start >> level);
    }
    let k = split_point(n);
    let left = subtree_hash(src, start, start + k)?;
    let right = subtree_hash(src, start + k, end)?;
    Ok(node_hash(&left, &right))
}

/// The root hash of the tree of `size` leaves.
pub fn root<S: NodeSource + ?Sized>(src: &S, size: u64) -> Result<Hash, MerkleError> {
    subtree_hash(src, 0, size)
}

/// RFC 9162 §2.1.3.1: the inclusion proof of leaf `index` in the tree of `size` leaves, leaf side first.
pub fn inclusion_proof<S: NodeSource + ?Sized>(src: &S, index: u64, size: u64) -> Result<Vec<Hash>, MerkleError> {
    if index >= size {
        return Err(MerkleError::Impossible("leaf index not below tree size"));
    }
    let mut out = Vec::with_capacity(64);
    path(src, index, 0, size, &mut out)?;
    Ok(out)
}

fn path<S: NodeSource + ?Sized>(src: &S, m: u64, start: u64, end: u64, out: &mut Vec<Hash>) -> Result<(), MerkleError> {
    let n = end - start;
    if n <= 1 {
        return Ok(());
    }
    let k = split_point(n);
    if m < k {
        path(src, m, start, start + k, out)?;
        out.push(subtree_hash(src, start + k, end)?);
    } else {
        path(src, m - k, start + k, end, out)?;
        out.push(subtree_hash(src, start, start + k)?);
    }
    Ok(())
}

/// RFC 9162 §2.1.4.1: the consistency proof between the trees of `old` and `new` leaves
/// (0 < old ≤ new; empty when old = new).
pub fn consistency_proof<S: NodeSource + ?Sized>(src: &S, old: u64, new: u64) -> Result<Vec<Hash>, MerkleError> {
    if old == 0 || old > new {
        return Err(MerkleError::Impossible("consistency needs 0 < old size <= new size"));
    }
    let mut out = Vec::with_capacity(64);
    subproof(src, old, 0, new, true, &mut out)?;
    Ok(out)
}

fn subproof<S: NodeSource + ?Sized>(
    src: &S,
    m: u64,
    start: u64,
    end: u64,
    whole: bool,
    out: &mut Vec<Hash>,
) -> Result<(), MerkleError> {
    let n = end - start;
    if m == n {
        if !whole {
            out.push(subtree_hash(src, start, end)?);
        }
        return Ok(());
    }
    let k = split_point(n);
    if m <= k {
        subproof(src, m, start, start + k, whole, out)?;
        out.push(subtree_hash(src, start + k, end)?);
    } else {
        subproof(src, m - k, start + k, end, false, out)?;
        out.push(subtree_hash(src, start, start + k)?);
    }
    Ok(())
}

/// The number of hashes an inclusion proof of `index` in a tree of `size` must have.
pub fn inclusion_proof_len(index: u64, size: u64) -> Result<usize, MerkleError> {
    if index >= size {
        return Err(MerkleError::Impossible("leaf index not below tree size"));
    }
    let (mut lo, mut hi, mut m, mut len) = (0u64, size, index, 0usize);
    while hi - lo > 1 {
        let k = split_point(hi - lo);
        if m < k {
            hi = lo + k;
        } else {
            lo += k;
            m -= k;
        }
        len += 1;
    }
    Ok(len)
}

/// RFC 9162 §2.1.3.2: check that `leaf` is at `index` in the tree of `size` leaves with root `root`.
pub fn verify_inclusion(index: u64, size: u64, leaf: &Hash, proof: &[Hash], root: &Hash) -> Result<(), MerkleError> {
    if index >= size {
        return Err(MerkleError::Impossible("leaf index not below tree size"));
    }
    if proof.len() != inclusion_proof_len(index, size)? {
        return Err(MerkleError::WrongLength);
    }
    let (mut fnode, mut snode) = (index, size - 1);
    let mut r = *leaf;
    for p in proof {
        if snode == 0 {
            return Err(MerkleError::WrongLength);
        }
        if fnode & 1 == 1 || fnode == snode {
            r = node_hash(p, &r);
            if fnode & 1 == 0 {
                while fnode & 1 == 0 && fnode != 0 {
                    fnode >>= 1;
                    snode >>= 1;
                }
            }
        } else {
            r = node_hash(&r, p);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    if snode != 0 {
        return Err(MerkleError::WrongLength);
    }
    if &r != root {
        return Err(MerkleError::RootMismatch);
    }
    Ok(())
}

/// RFC 9162 §2.1.4.2: check that the tree of `old` leaves with root `old_root` is a prefix of the tree
/// of `new` leaves with root `new_root`. `old` = 0 is consistent with anything when the proof is empty
/// (RFC 9162 defines no proof for it); `old` = `new` needs an empty proof and equal roots.
pub fn verify_consistency(
    old: u64,
    new: u64,
    old_root: &Hash,
    new_root: &Hash,
    proof: &[Hash],
) -> Result<(), MerkleError> {
    if old > new {
        return Err(MerkleError::Impossible("old tree larger than new tree"));
    }
    if old == 0 {
        if !proof.is_empty() {
            return Err(MerkleError::WrongLength);
        }
        return if *old_root == empty_root() { Ok(()) } else { Err(MerkleError::RootMismatch) };
    }
    if old == new {
        if !proof.is_empty() {
            return Err(MerkleError::WrongLength);
        }
        return if old_root == new_root { Ok(()) } else { Err(MerkleError::RootMismatch) };
    }
    if proof.is_empty() {
        return Err(MerkleError::WrongLength);
    }
    let mut path: Vec<Hash> = Vec::with_capacity(proof.len() + 1);
    if old.is_power_of_two() {
        path.push(*old_root);
    }
    path.extend_from_slice(proof);
    let (mut fnode, mut snode) = (old - 1, new - 1);
    while fnode & 1 == 1 {
        fnode >>= 1;
        snode >>= 1;
    }
    let mut fr = path[0];
    let mut sr = path[0];
    for c in &path[1..] {
        if snode == 0 {
            return Err(MerkleError::WrongLength);
        }
        if fnode & 1 == 1 || fnode == snode {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            if fnode & 1 == 0 {
                while fnode & 1 == 0 && fnode != 0 {
                    fnode >>= 1;
                    snode >>= 1;
                }
            }
        } else {
            sr = node_hash(&sr, c);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    if snode != 0 {
        return Err(MerkleError::WrongLength);
    }
    if &fr != old_root || &sr != new_root {
        return Err(MerkleError::RootMismatch);
    }
    Ok(())
}

/// A whole tree held in memory as its leaf hashes: a small, obviously-correct store for tests, receipts of
/// short trees and the reference comparisons in the test suite.
#[derive(Debug, Clone, Default)]
pub struct MemoryTree {
    leaves: Vec<Hash>,
}

impl MemoryTree {
    /// A tree over these leaf hashes.
    pub fn new(leaves: Vec<Hash>) -> Self {
        Self { leaves }
    }
    /// Number of leaves.
    pub fn size(&self) -> u64 {
        self.leaves.len() as u64
    }
    /// Append one leaf hash.
    pub fn push(&mut self, leaf: Hash) {
        self.leaves.push(leaf);
    }
}

impl NodeSource for MemoryTree {
    fn node(&self, level: u8, index: u64) -> Result<Hash, MerkleError> {
        let missing = MerkleError::MissingNode { level, index };
        if level > MAX_LEVEL {
            return Err(missing);
        }
        let width = 1u64 << level;
        let start = index.checked_mul(width).ok_or(missing.clone())?;
        let end = start.checked_add(width).ok_or(missing.clone())?;
        if end > self.size() {
            return Err(missing);
        }
        if level == 0 {
            let i = usize::try_from(index).map_err(|_| missing)?;
            return Ok(self.leaves[i]);
        }
        let left = self.node(level - 1, index * 2)?;
        let right = self.node(level - 1, index * 2 + 1)?;
        Ok(node_hash(&left, &right))
    }
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation)] // test trees have a few hundred leaves
pub(crate) mod tests {
    use super::*;
    use crate::hash::leaf_hash;
    use proptest::prelude::*;

    /// The eight leaves of the RFC 6962 reference implementation's test tree.
    pub(crate) fn rfc_leaves() -> Vec<Vec<u8>> {
        ["", "00", "10", "2021", "3031", "40414243", "5051525354555657", "606162636465666768696a6b6c6d6e6f"]
            .iter()
            .map(|h| hex::decode(h).unwrap())
            .collect()
    }

    fn h(s: &str) -> Hash {
        Hash::from_slice(&hex::decode(s).unwrap()).unwrap()
    }

    fn k_of(n: usize) -> usize {
        usize::try_from(split_point(n as u64)).unwrap()
    }

    /// RFC 6962 §2.1 MTH written directly from the definition over raw entries: the slow reference.
    pub(crate) fn reference_mth(entries: &[Vec<u8>]) -> Hash {
        match entries.len() {
            0 => empty_root(),
            1 => leaf_hash(&entries[0]),
            n => {
                let k = k_of(n);
                node_hash(&reference_mth(&entries[..k]), &reference_mth(&entries[k..]))
            }
        }
    }

    fn reference_path(m: usize, d: &[Vec<u8>]) -> Vec<Hash> {
        if d.len() <= 1 {
            return vec![];
        }
        let k = k_of(d.len());
        if m < k {
            let mut p = reference_path(m, &d[..k]);
            p.push(reference_mth(&d[k..]));
            p
        } else {
            let mut p = reference_path(m - k, &d[k..]);
            p.push(reference_mth(&d[..k]));
            p
        }
    }

    fn reference_subproof(m: usize, d: &[Vec<u8>], whole: bool) -> Vec<Hash> {
        if m == d.len() {
            return if whole { vec![] } else { vec![reference_mth(d)] };
        }
        let k = k_of(d.len());
        if m <= k {
            let mut p = reference_subproof(m, &d[..k], whole);
            p.push(reference_mth(&d[k..]));
            p
        } else {
            let mut p = reference_subproof(m - k, &d[k..], false);
            p.push(reference_mth(&d[..k]));
            p
        }
    }

    fn tree_of(entries: &[Vec<u8>]) -> MemoryTree {
        MemoryTree::new(entries.iter().map(|e| leaf_hash(e)).collect())
    }

    const ROOTS: [&str; 8] = [
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    ];

    #[test]
    fn rfc6962_known_roots() {
        let leaves = rfc_leaves();
        for n in 1..=8 {
            let t = tree_of(&leaves[..n]);
            assert_eq!(root(&t, n as u64).unwrap(), h(ROOTS[n - 1]), "size {n}");
            assert_eq!(reference_mth(&leaves[..n]), h(ROOTS[n - 1]));
        }
        assert_eq!(root(&MemoryTree::default(), 0).unwrap(), empty_root());
    }

    #[test]
    fn rfc6962_known_proofs() {
        let leaves = rfc_leaves();
        let t = tree_of(&leaves);
        let cases_incl: [(u64, u64, &[&str]); 3] = [
            (
                0,
                8,
                &[
                    "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
                ],
            ),
            (
                5,
                8,
                &[
                    "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                    "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
                ],
            ),
            (2, 3, &["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"]),
        ];
        for (i, n, want) in cases_incl {
            let p = inclusion_proof(&t, i, n).unwrap();
            let want: Vec<Hash> = want.iter().map(|s| h(s)).collect();
            assert_eq!(p, want, "inclusion {i}/{n}");
            let leaf = leaf_hash(&leaves[i as usize]);
            verify_inclusion(i, n, &leaf, &p, &h(ROOTS[n as usize - 1])).unwrap();
        }
        let cases_cons: [(u64, u64, &[&str]); 3] = [
            (
                1,
                8,
                &[
                    "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
                ],
            ),
            (
                6,
                8,
                &[
                    "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
                    "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
                ],
            ),
            (
                2,
                5,
                &[
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                ],
            ),
        ];
        for (m, n, want) in cases_cons {
            let p = consistency_proof(&t, m, n).unwrap();
            let want: Vec<Hash> = want.iter().map(|s| h(s)).collect();
            assert_eq!(p, want, "consistency {m}/{n}");
            verify_consistency(m, n, &h(ROOTS[m as usize - 1]), &h(ROOTS[n as usize - 1]), &p).unwrap();
        }
    }

    #[test]
    fn verification_is_strict() {
        let leaves = rfc_leaves();
        let t = tree_of(&leaves);
        let r8 = h(ROOTS[7]);
        let leaf = leaf_hash(&leaves[5]);
        let p = inclusion_proof(&t, 5, 8).unwrap();
        let mut long = p.clone();
        long.push(p[0]);
        assert_eq!(verify_inclusion(5, 8, &leaf, &long, &r8), Err(MerkleError::WrongLength));
        assert_eq!(verify_inclusion(5, 8, &leaf, &p[..2], &r8), Err(MerkleError::WrongLength));
        assert!(matches!(verify_inclusion(8, 8, &leaf, &p, &r8), Err(MerkleError::Impossible(_))));
        assert_eq!(verify_inclusion(4, 8, &leaf, &p, &r8), Err(MerkleError::RootMismatch));
        let c = consistency_proof(&t, 6, 8).unwrap();
        assert_eq!(verify_consistency(6, 8, &h(ROOTS[5]), &r8, &c[..2]), Err(MerkleError::WrongLength));
        let mut c2 = c.clone();
        c2.push(c[0]);
        assert_eq!(verify_consistency(6, 8, &h(ROOTS[5]), &r8, &c2), Err(MerkleError::WrongLength));
        assert_eq!(verify_consistency(6, 8, &h(ROOTS[4]), &r8, &c), Err(MerkleError::RootMismatch));
        assert!(verify_consistency(8, 6, &r8, &h(ROOTS[5]), &c).is_err());
        assert!(verify_consistency(8, 8, &r8, &r8, &[]).is_ok());
        assert!(verify_consistency(8, 8, &r8, &r8, &c).is_err());
        assert!(verify_consistency(0, 8, &empty_root(), &r8, &[]).is_ok());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        #[test]
        fn matches_reference(n in 1usize..300, seed in any::<u64>()) {
            let entries: Vec<Vec<u8>> = (0..n).map(|i| format!("{seed}-{i}").into_bytes()).collect();
            let t = tree_of(&entries);
            for size in [1, n / 2 + 1, n] {
                prop_assert_eq!(root(&t, size as u64).unwrap(), reference_mth(&entries[..size]));
            }
            let idx = (seed as usize) % n;
            let p = inclusion_proof(&t, idx as u64, n as u64).unwrap();
            prop_assert_eq!(&p, &reference_path(idx, &entries));
            prop_assert_eq!(p.len(), inclusion_proof_len(idx as u64, n as u64).unwrap());
            verify_inclusion(idx as u64, n as u64, &leaf_hash(&entries[idx]), &p, &reference_mth(&entries)).unwrap();
            let m = 1 + (seed as usize / 7) % n;
            let c = consistency_proof(&t, m as u64, n as u64).unwrap();
            prop_assert_eq!(&c, &reference_subproof(m, &entries, true));
            verify_consistency(m as u64, n as u64, &reference_mth(&entries[..m]), &reference_mth(&entries), &c).unwrap();
        }
    }
}
