//! Export of an auditor bundle: a tenant ledger and the appliance ledger, each as tiles, entry bundles
//! and every checkpoint up to a consistent snapshot, plus reference copies of the public keys and a
//! format marker. Layout in docs/FORMATS.md §Bundle. The verifier pins keys from its command line; the
//! copies here are only for reference.
//!
//! Export may run while a gate appends: it snapshots each ledger at its latest durable checkpoint and
//! copies exactly the tiles that checkpoint needs (a partial tile the writer has since replaced by its
//! full tile is cut back to the snapshot width, which tlog-tiles guarantees is a prefix).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::ledger::{LEDGER_MARKER, checkpoint_history_path};
use crate::merkle;
use crate::note::SignedCheckpoint;
use crate::oar::{LedgerScope, TreeHead};
use crate::signer::LedgerPublicKey;
use crate::tiles::{self, TILE_HEIGHT, TILE_WIDTH, Tree};

/// First line of the bundle's `BUNDLE` file.
pub const BUNDLE_MARKER: &str = "bulwark-bundle 1";

/// An export failed.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// Reading the ledger or writing the bundle failed.
    #[error("export I/O failed at {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The output directory exists and is not empty.
    #[error("output directory {0} is not empty")]
    NotEmpty(PathBuf),
    /// The source is not a ledger, or its key is not the given key.
    #[error("{path}: {what}")]
    Source {
        /// The ledger directory.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> ExportError + '_ {
    move |source| ExportError::Io { path: path.to_path_buf(), source }
}

/// What was exported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportSummary {
    /// The tenant ledger's head in the bundle.
    pub tenant: TreeHead,
    /// The appliance ledger's head in the bundle.
    pub appliance: TreeHead,
}

/// Write an auditor bundle to `out_dir` (created; must be absent or empty): the tenant ledger at
/// `ledger_dir` under `tenant/`, the appliance ledger at `appliance_ledger_dir` under `appliance/`, each
/// with its public key (which must be the key the ledger was created with), and `BUNDLE` last. An export
/// that fails leaves `out_dir` as it found it (absent, or empty).
pub fn export_bundle(
    ledger_dir: &Path,
    appliance_ledger_dir: &Path,
    tenant_key: &LedgerPublicKey,
    appliance_key: &LedgerPublicKey,
    out_dir: &Path,
) -> Result<ExportSummary, ExportError> {
    let existed = out_dir.exists();
    if existed && fs::read_dir(out_dir).map_err(io_err(out_dir))?.next().is_some() {
        return Err(ExportError::NotEmpty(out_dir.to_path_buf()));
    }
    fs::create_dir_all(out_dir).map_err(io_err(out_dir))?;
    // Everything the bundle holds, into the empty `out_dir`.
    let written = (|| -> Result<ExportSummary, ExportError> {
        let (tscope, tenant) = export_ledger(ledger_dir, tenant_key, &out_dir.join("tenant"))?;
        if !matches!(tscope, LedgerScope::Tenant(_)) {
            return Err(ExportError::Source { path: ledger_dir.to_path_buf(), what: "not a tenant ledger".into() });
        }
        let (ascope, appliance) = export_ledger(appliance_ledger_dir, appliance_key, &out_dir.join("appliance"))?;
        if !matches!(ascope, LedgerScope::Appliance(_)) {
            return Err(ExportError::Source {
                path: appliance_ledger_dir.to_path_buf(),
                what: "not the appliance ledger".into(),
            });
        }
        let manifest = format!("{BUNDLE_MARKER}\ntenant {}\nappliance {}\n", tscope.origin(), ascope.origin());
        let p = out_dir.join("BUNDLE");
        crate::fsutil::write_durable(&p, manifest.as_bytes()).map_err(io_err(&p))?;
        Ok(ExportSummary { tenant, appliance })
    })();
    if written.is_err() {
        // A bundle that stopped half way (a full disk, say) is no bundle: leave the output as it was
        // found, so nobody hands it to an auditor and the export can simply be run again.
        remove_partial(out_dir, existed);
    }
    written
}

/// Removes what a failed export wrote: `out_dir` itself if the export created it, else what it wrote
/// into it. Best effort (the export's own error is the one reported).
fn remove_partial(out_dir: &Path, existed: bool) {
    if !existed {
        let _ = fs::remove_dir_all(out_dir);
        return;
    }
    for name in ["tenant", "appliance"] {
        let _ = fs::remove_dir_all(out_dir.join(name));
    }
    let _ = fs::remove_file(out_dir.join("BUNDLE"));
}

/// Copy one ledger's snapshot into `out` (which must not exist).
pub fn export_ledger(dir: &Path, key: &LedgerPublicKey, out: &Path) -> Result<(LedgerScope, TreeHead), ExportError> {
    let src_err = |what: String| ExportError::Source { path: dir.to_path_buf(), what };
    let marker_path = dir.join("LEDGER");
    let marker = fs::read_to_string(&marker_path).map_err(io_err(&marker_path))?;
    let scope = marker
        .strip_prefix(LEDGER_MARKER)
        .and_then(|r| r.strip_suffix('\n'))
        .and_then(LedgerScope::from_origin)
        .ok_or_else(|| src_err("not a bulwark ledger directory".into()))?;
    let pem_path = dir.join("key.pub.pem");
    let pem = fs::read_to_string(&pem_path).map_err(io_err(&pem_path))?;
    if LedgerPublicKey::from_spki_pem(&pem).ok().as_ref() != Some(key) {
        return Err(src_err("the ledger was created with a different key".into()));
    }
    // The snapshot is the newest checkpoint in the history: it is appended after its tiles are durable
    // (`checkpoint` may be renamed a moment earlier). A record being appended right now may be
    // incomplete: the last one is skipped if it does not verify yet.
    let mut notes = crate::history::read_all(dir).map_err(|e| src_err(format!("checkpoint history: {e}")))?;
    let newest = |notes: &[String]| {
        let last = notes.last().ok_or_else(|| src_err("the checkpoint history is empty".into()))?;
        SignedCheckpoint::verify(last, &scope, key)
            .map_err(|e| src_err(format!("newest checkpoint in the history: {e}")))
    };
    let cp = match newest(&notes) {
        Ok(cp) => cp,
        Err(_) if notes.len() > 1 => {
            notes.pop();
            newest(&notes)?
        }
        Err(e) => return Err(e),
    };
    let head = cp.head();

    fs::create_dir_all(out).map_err(io_err(out))?;
    let put = |rel: &str, bytes: &[u8]| -> Result<(), ExportError> {
        let p = out.join(rel);
        if let Some(parent) = p.parent() {
            fs::create_dir_all(parent).map_err(io_err(parent))?;
        }
        fs::write(&p, bytes).map_err(io_err(&p))
    };
    put("key.pub.pem", key.to_spki_pem().as_bytes())?;
    put("checkpoint", cp.text().as_bytes())?;

    // Every checkpoint up to the snapshot, one file per checkpoint.
    for text in &notes {
        let (_, h) =
            SignedCheckpoint::parse_unverified(text).map_err(|e| src_err(format!("checkpoint history: {e}")))?;
        if h.size <= head.size {
            put(&checkpoint_history_path(h.size), text.as_bytes())?;
        }
    }

    // Tiles and entry bundles for the snapshot size.
    let size = head.size;
    let mut level: u8 = 0;
    loop {
        let span_shift = u32::from(level) * u32::from(TILE_HEIGHT);
        let hashes_at_level = size.checked_shr(span_shift).unwrap_or(0);
        if hashes_at_level == 0 {
            break;
        }
        let full = hashes_at_level / TILE_WIDTH as u64;
        let partial = usize::try_from(hashes_at_level % TILE_WIDTH as u64).unwrap_or(0);
        for n in 0..full {
            copy_tile(dir, out, level, n, TILE_WIDTH, false)?;
            if level == 0 {
                copy_tile(dir, out, 0, n, TILE_WIDTH, true)?;
            }
        }
        if partial > 0 {
            copy_tile(dir, out, level, full, partial, false)?;
            if level == 0 {
                copy_tile(dir, out, 0, full, partial, true)?;
            }
        }
        level += 1;
    }

    // Self-check: the copied tiles reproduce the checkpoint's root.
    let tree = Tree::load(out, size, true).map_err(|e| src_err(format!("exported tiles do not load: {e}")))?;
    let root = merkle::root(&tree, size).map_err(|e| src_err(format!("exported tree: {e}")))?;
    if root != head.root {
        return Err(src_err(format!("exported tiles give root {root}, the checkpoint says {}", head.root)));
    }
    Ok((scope, head))
}

/// Copy tile (or entry bundle) `n` of `width` at `level`; if the partial file is gone because the tile
/// has since filled up, cut the full tile back to `width`.
fn copy_tile(dir: &Path, out: &Path, level: u8, n: u64, width: usize, entries: bool) -> Result<(), ExportError> {
    let rel = if entries { tiles::entries_path(n, width) } else { tiles::tile_path(level, n, width) };
    let src = dir.join(&rel);
    let bytes = match fs::read(&src) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound && width < TILE_WIDTH => {
            let full_rel =
                if entries { tiles::entries_path(n, TILE_WIDTH) } else { tiles::tile_path(level, n, TILE_WIDTH) };
            let full_path = dir.join(&full_rel);
            let full = fs::read(&full_path).map_err(io_err(&full_path))?;
            let bad = |what: String| ExportError::Source { path: full_path.clone(), what };
            if entries {
                let all = tiles::decode_bundle(&full, TILE_WIDTH).map_err(bad)?;
                tiles::encode_bundle(all.into_iter().take(width))
            } else {
                if full.len() != TILE_WIDTH * crate::hash::HASH_LEN {
                    return Err(bad("full tile has the wrong length".into()));
                }
                full[..width * crate::hash::HASH_LEN].to_vec()
            }
        }
        Err(e) => return Err(ExportError::Io { path: src, source: e }),
    };
    let p = out.join(&rel);
    if let Some(parent) = p.parent() {
        fs::create_dir_all(parent).map_err(io_err(parent))?;
    }
    fs::write(&p, bytes).map_err(io_err(&p))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::world;

    #[test]
    fn a_failed_export_leaves_its_output_as_it_found_it() {
        let w = world(2);
        let out = tempfile::tempdir().unwrap();
        // The appliance ledger is read after the tenant's is written: make it fail there.
        let not_a_ledger = out.path().join("not-a-ledger");
        fs::create_dir_all(&not_a_ledger).unwrap();
        let fresh = out.path().join("bundle");
        assert!(export_bundle(&w.tenant_dir, &not_a_ledger, &w.tenant_key, &w.appliance_key, &fresh).is_err());
        assert!(!fresh.exists(), "a failed export left {}", fresh.display());
        let empty = out.path().join("empty");
        fs::create_dir_all(&empty).unwrap();
        assert!(export_bundle(&w.tenant_dir, &not_a_ledger, &w.tenant_key, &w.appliance_key, &empty).is_err());
        assert_eq!(fs::read_dir(&empty).unwrap().count(), 0, "a failed export left files in a directory it was given");
        // Run again with what it needs: it writes the bundle where the failed one was.
        export_bundle(&w.tenant_dir, &w.appliance_dir, &w.tenant_key, &w.appliance_key, &fresh).unwrap();
        assert!(fresh.join("BUNDLE").is_file());
    }
}
