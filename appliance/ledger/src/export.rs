//! Export of an auditor bundle: a tenant ledger and the appliance ledger, each as tiles, entry bundles
//! and every checkpoint up to a consistent snapshot, plus reference copies of the public keys and a
//! format marker. Layout in docs/FORMATS.md §Bundle. The verifier pins keys from its command line; the
//! copies here are only for reference.
//!
//! Export may run while a gate appends: it snapshots each ledger at its latest durable checkpoint and
//! copies exactly the tiles that checkpoint needs (a partial tile the writer has since replaced by its
//! full tile is cut back to the snapshot width, which tlog-tiles guarantees is a prefix).

use std::collections::BTreeSet;
use std::ffi::{OsStr, OsString};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::fsutil;
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
    #[error("output directory {0} is not empty; export into a new or empty directory (nothing was exported)")]
    NotEmpty(PathBuf),
    /// The output directory holds a finished bundle.
    #[error(
        "output directory {0} holds an auditor bundle already; export into a new or empty directory (nothing was \
             exported)"
    )]
    HoldsBundle(PathBuf),
    /// The output directory holds what an export that was stopped before it finished left.
    #[error(
        "output directory {0} holds an unfinished bundle (an export was stopped before it wrote the BUNDLE file): \
         it is no bundle; remove it and export again (nothing was exported)"
    )]
    Unfinished(PathBuf),
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
    if existed {
        refuse_non_empty(out_dir)?;
    }
    let mut written = Written::default();
    fsutil::create_dirs(out_dir, &mut written.paths).map_err(io_err(out_dir))?;
    // Everything the bundle holds, into the empty `out_dir`.
    let written = (|| -> Result<ExportSummary, ExportError> {
        let w = &mut written;
        let (tscope, tenant) = export_ledger(ledger_dir, tenant_key, &out_dir.join("tenant"), w)?;
        if !matches!(tscope, LedgerScope::Tenant(_)) {
            return Err(ExportError::Source { path: ledger_dir.to_path_buf(), what: "not a tenant ledger".into() });
        }
        let (ascope, appliance) = export_ledger(appliance_ledger_dir, appliance_key, &out_dir.join("appliance"), w)?;
        if !matches!(ascope, LedgerScope::Appliance(_)) {
            return Err(ExportError::Source {
                path: appliance_ledger_dir.to_path_buf(),
                what: "not the appliance ledger".into(),
            });
        }
        // `BUNDLE` says the bundle is whole, so all the rest is durable before it is written.
        fsutil::sync_paths(&w.paths).map_err(io_err(out_dir))?;
        let manifest = format!("{BUNDLE_MARKER}\ntenant {}\nappliance {}\n", tscope.origin(), ascope.origin());
        let p = out_dir.join("BUNDLE");
        fsutil::write_durable(&p, manifest.as_bytes()).map_err(io_err(&p))?;
        Ok(ExportSummary { tenant, appliance })
    })();
    if written.is_err() {
        // A bundle that stopped half way (a full disk, say) is no bundle: leave the output as it was
        // found, so nobody hands it to an auditor and the export can simply be run again.
        remove_partial(out_dir, existed);
    }
    written
}

/// Refuses a non-empty `out_dir`, saying what it holds: a finished bundle, what an export that was
/// stopped left (the bundle's own names without its `BUNDLE` file), or anything else.
fn refuse_non_empty(out_dir: &Path) -> Result<(), ExportError> {
    let mut names = BTreeSet::new();
    for entry in fs::read_dir(out_dir).map_err(io_err(out_dir))? {
        names.insert(entry.map_err(io_err(out_dir))?.file_name());
    }
    if names.is_empty() {
        return Ok(());
    }
    let ours = |n: &OsString| {
        n == "tenant"
            || n == "appliance"
            || n == "BUNDLE"
            || n.to_str().is_some_and(|n| n.ends_with(fsutil::TMP_SUFFIX))
    };
    let path = out_dir.to_path_buf();
    Err(if !names.iter().all(ours) {
        ExportError::NotEmpty(path)
    } else if names.contains(OsStr::new("BUNDLE")) {
        ExportError::HoldsBundle(path)
    } else {
        ExportError::Unfinished(path)
    })
}

/// What an export wrote: each file, and each directory that got a new name, to be synced before the
/// bundle's `BUNDLE` file is written.
#[derive(Default)]
struct Written {
    paths: BTreeSet<PathBuf>,
}

impl Written {
    /// Writes a new file at `path` (and the directories above it).
    fn file(&mut self, path: &Path, bytes: &[u8]) -> Result<(), ExportError> {
        let dir = path.parent().unwrap_or(Path::new("."));
        fsutil::create_dirs(dir, &mut self.paths).map_err(io_err(dir))?;
        fs::write(path, bytes).map_err(io_err(path))?;
        self.paths.insert(path.to_path_buf());
        self.paths.insert(dir.to_path_buf());
        Ok(())
    }
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
fn export_ledger(
    dir: &Path,
    key: &LedgerPublicKey,
    out: &Path,
    w: &mut Written,
) -> Result<(LedgerScope, TreeHead), ExportError> {
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

    w.file(&out.join("key.pub.pem"), key.to_spki_pem().as_bytes())?;
    w.file(&out.join("checkpoint"), cp.text().as_bytes())?;

    // Every checkpoint up to the snapshot, one file per checkpoint.
    for text in &notes {
        let (_, h) =
            SignedCheckpoint::parse_unverified(text).map_err(|e| src_err(format!("checkpoint history: {e}")))?;
        if h.size <= head.size {
            w.file(&out.join(checkpoint_history_path(h.size)), text.as_bytes())?;
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
            copy_tile(dir, out, w, level, n, TILE_WIDTH, false)?;
            if level == 0 {
                copy_tile(dir, out, w, 0, n, TILE_WIDTH, true)?;
            }
        }
        if partial > 0 {
            copy_tile(dir, out, w, level, full, partial, false)?;
            if level == 0 {
                copy_tile(dir, out, w, 0, full, partial, true)?;
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
fn copy_tile(
    dir: &Path,
    out: &Path,
    w: &mut Written,
    level: u8,
    n: u64,
    width: usize,
    entries: bool,
) -> Result<(), ExportError> {
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
    w.file(&out.join(&rel), &bytes)
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

    #[test]
    fn an_output_directory_in_use_is_refused_by_what_it_holds() {
        let w = world(2);
        let out = tempfile::tempdir().unwrap();
        let export = |dir: &Path| export_bundle(&w.tenant_dir, &w.appliance_dir, &w.tenant_key, &w.appliance_key, dir);
        let bundle = out.path().join("bundle");
        export(&bundle).unwrap();
        let before = crate::testutil::snapshot(&bundle);
        assert!(matches!(export(&bundle), Err(ExportError::HoldsBundle(_))));
        assert_eq!(crate::testutil::snapshot(&bundle), before, "a refused export changed the bundle");
        // What an export that was killed before its BUNDLE file leaves: the same, less that file (and
        // perhaps its temporary name).
        let stopped = out.path().join("stopped");
        export(&stopped).unwrap();
        fs::rename(stopped.join("BUNDLE"), stopped.join(format!("BUNDLE{}", fsutil::TMP_SUFFIX))).unwrap();
        let e = export(&stopped).unwrap_err();
        assert!(matches!(e, ExportError::Unfinished(_)), "{e:?}");
        assert!(e.to_string().contains("remove it and export again"), "{e}");
        fs::remove_file(stopped.join(format!("BUNDLE{}", fsutil::TMP_SUFFIX))).unwrap();
        fs::remove_dir_all(stopped.join("appliance")).unwrap();
        assert!(matches!(export(&stopped), Err(ExportError::Unfinished(_))));
        // Anything else is the user's, and named as just not empty.
        let other = out.path().join("other");
        fs::create_dir_all(other.join("tenant")).unwrap();
        fs::write(other.join("notes.txt"), b"mine").unwrap();
        assert!(matches!(export(&other), Err(ExportError::NotEmpty(_))));
        assert_eq!(fs::read(other.join("notes.txt")).unwrap(), b"mine");
        // Removed as the error says, the export runs.
        fs::remove_dir_all(&stopped).unwrap();
        export(&stopped).unwrap();
        assert!(stopped.join("BUNDLE").is_file());
    }
}
