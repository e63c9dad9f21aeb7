//! Offline verification of an exported bundle, for `bulwark-verify`.
//!
//! Keys are pinned by the caller, never taken from the bundle (the bundle's copies must match the pinned
//! keys byte for byte; an appliance key left unpinned is checked against the bundle's copy and reported
//! as unpinned). For each ledger the verifier:
//!
//! 1. accepts only the files the format allows, with canonical names, and refuses sizes the bundle
//!    cannot hold;
//! 2. parses every checkpoint strictly, requires `checkpoint` to equal the newest one in `checkpoints/`
//!    (anything else is a rollback) and each history file's name to be its size;
//! 3. streams every entry: strict decoding, the ledger's scope, `prev_head` equal to the recomputed head
//!    before it, OAR counters 0, 1, 2, … without gaps, low-water marks, non-decreasing time, each
//!    outcome naming a pending OAR by counter, index and leaf hash, nothing completed twice;
//! 4. re-derives every tile (full and partial) from the entries and compares it byte for byte;
//! 5. at each checkpoint size: recomputes the root, checks an RFC 9162 consistency proof from the
//!    previous checkpoint and an inclusion proof for every OAR and outcome since;
//! 6. requires every OAR to have its outcome (unless pending OARs are allowed);
//! 7. verifies every checkpoint's ML-DSA-65 signature under the pinned key and the ledger's context;
//! 8. for the tenant, requires the appliance ledger to have published the pinned tenant key.
//!
//! The first failure is returned with the file, entry index (where there is one) and what failed.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::export::BUNDLE_MARKER;
use crate::hash::{Hash, leaf_hash};
use crate::ids::TenantId;
use crate::ledger::{parse_tile_rel, tile_within, walk_files};
use crate::merkle;
use crate::note::SignedCheckpoint;
use crate::oar::{Digest, Entry, LedgerScope, OpKind, Status, Target, TreeHead};
use crate::signer::LedgerPublicKey;
use crate::tiles::{self, TILE_HEIGHT, TILE_WIDTH, Tree};

/// The bundle does not verify.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// A check failed in a file.
    #[error("{file}: {what}")]
    File {
        /// Path within the bundle.
        file: String,
        /// What failed.
        what: String,
    },
    /// A check failed for one entry.
    #[error("{file}: entry {index}: {what}")]
    Entry {
        /// Path within the bundle.
        file: String,
        /// Entry index in the ledger.
        index: u64,
        /// What failed.
        what: String,
    },
    /// A file could not be read.
    #[error("cannot read {file}")]
    Io {
        /// Path within the bundle.
        file: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

fn ferr(file: impl Into<String>, what: impl Into<String>) -> AuditError {
    AuditError::File { file: file.into(), what: what.into() }
}

/// Progress callbacks (the CLI draws a bar; tests pass [`NoProgress`]).
pub trait Progress {
    /// A phase starts with `total` units of work.
    fn phase(&self, name: &str, total: u64);
    /// `n` more units are done.
    fn advance(&self, n: u64);
}

/// A [`Progress`] that shows nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoProgress;

impl Progress for NoProgress {
    fn phase(&self, _: &str, _: u64) {}
    fn advance(&self, _: u64) {}
}

/// What the verifier is told by the auditor (never by the bundle).
#[derive(Debug, Clone)]
pub struct AuditOptions {
    /// The tenant's public key, obtained out of band.
    pub tenant_key: LedgerPublicKey,
    /// The appliance's public key, if the auditor has it.
    pub appliance_key: Option<LedgerPublicKey>,
    /// The tenant id the auditor expects, if known.
    pub tenant: Option<TenantId>,
    /// Accept OARs that have no outcome yet (operations in flight at export time).
    pub allow_pending: bool,
    /// Tenant checkpoints or receipts the auditor already holds (text). Each must verify under the pinned
    /// key, and the bundle must extend it: this is what exposes a bundle that was truncated or rolled
    /// back as a whole.
    pub known: Vec<String>,
}

/// Facts about one verified ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerReport {
    /// The ledger.
    pub scope: LedgerScope,
    /// Its verified head.
    pub head: TreeHead,
    /// Checkpoints verified.
    pub checkpoints: usize,
    /// OARs.
    pub oars: u64,
    /// Outcome records.
    pub outcomes: u64,
    /// Counters of OARs without an outcome (only when allowed).
    pub pending: Vec<u64>,
    /// Whether the key was pinned by the auditor (false: checked only against the bundle's copy).
    pub key_pinned: bool,
}

/// The result of a successful verification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditReport {
    /// The tenant ledger.
    pub tenant: LedgerReport,
    /// The appliance ledger.
    pub appliance: LedgerReport,
    /// Index in the appliance ledger of the OAR that published the pinned tenant key.
    pub key_published_at: u64,
    /// Things that hold but an auditor should know.
    pub warnings: Vec<String>,
}

/// Verify the bundle at `dir`. See the module docs for every check.
pub fn verify_bundle(dir: &Path, opts: &AuditOptions, progress: &dyn Progress) -> Result<AuditReport, AuditError> {
    let manifest = read_string(dir, "BUNDLE")?;
    let mut lines = manifest.strip_suffix('\n').ok_or_else(|| ferr("BUNDLE", "must end with a newline"))?.split('\n');
    if lines.next() != Some(BUNDLE_MARKER) {
        return Err(ferr("BUNDLE", format!("first line must be {BUNDLE_MARKER:?} (unknown bundle format)")));
    }
    let scope_line = |l: Option<&str>, key: &str| -> Result<LedgerScope, AuditError> {
        l.and_then(|l| l.strip_prefix(key))
            .and_then(|l| l.strip_prefix(' '))
            .and_then(LedgerScope::from_origin)
            .ok_or_else(|| ferr("BUNDLE", format!("missing or malformed {key} line")))
    };
    let tscope = scope_line(lines.next(), "tenant")?;
    let ascope = scope_line(lines.next(), "appliance")?;
    if lines.next().is_some() {
        return Err(ferr("BUNDLE", "unexpected extra lines"));
    }
    let LedgerScope::Tenant(tenant_id) = tscope else {
        return Err(ferr("BUNDLE", "tenant line does not name a tenant ledger"));
    };
    if !matches!(ascope, LedgerScope::Appliance(_)) {
        return Err(ferr("BUNDLE", "appliance line does not name the appliance ledger"));
    }
    if let Some(want) = opts.tenant
        && want != tenant_id
    {
        return Err(ferr("BUNDLE", format!("bundle is for tenant {tenant_id}, expected {want}")));
    }
    let top: BTreeSet<String> = list_dir(dir, "")?;
    let want_top: BTreeSet<String> = ["BUNDLE", "appliance", "tenant"].iter().map(|s| s.to_string()).collect();
    if top != want_top {
        let extra: Vec<_> = top.difference(&want_top).cloned().collect();
        let missing: Vec<_> = want_top.difference(&top).cloned().collect();
        return Err(ferr(".", format!("unexpected entries {extra:?}, missing {missing:?}")));
    }

    let mut warnings = Vec::new();
    let tenant = LedgerAudit::new(dir, "tenant", tscope, &opts.tenant_key, true)?;
    let akey_bundle;
    let (akey, apinned) = match &opts.appliance_key {
        Some(k) => (k, true),
        None => {
            let pem = read_string(&dir.join("appliance"), "key.pub.pem").map_err(|e| rel_err(e, "appliance/"))?;
            akey_bundle = LedgerPublicKey::from_spki_pem(&pem)
                .map_err(|e| ferr("appliance/key.pub.pem", format!("not an ML-DSA-65 public key: {e}")))?;
            warnings.push(
                "appliance key not pinned (no --appliance-key): appliance ledger signatures were checked against the \
                 bundle's own copy of the key only"
                    .to_string(),
            );
            (&akey_bundle, false)
        }
    };
    let appliance = LedgerAudit::new(dir, "appliance", ascope, akey, apinned)?;
    let mut known_heads = Vec::new();
    for (i, text) in opts.known.iter().enumerate() {
        let what = format!("known checkpoint #{}", i + 1);
        let head = if text.starts_with(crate::receipt::RECEIPT_HEADER) {
            let r = crate::receipt::Receipt::parse(text).map_err(|e| ferr(&what, e.to_string()))?;
            r.verify(&tscope, &opts.tenant_key).map_err(|e| ferr(&what, format!("does not verify: {e}")))?.head
        } else {
            SignedCheckpoint::verify(text, &tscope, &opts.tenant_key)
                .map_err(|e| ferr(&what, format!("does not verify: {e}")))?
                .head()
        };
        if head.size > tenant.head.size {
            return Err(ferr(
                "tenant/checkpoint",
                format!(
                    "bundle ends at size {} but {what} has size {}: the ledger was truncated or rolled back",
                    tenant.head.size, head.size
                ),
            ));
        }
        known_heads.push((what, head));
    }
    let total = tenant.head.size + appliance.head.size;
    progress.phase("entries", total);
    let tstream = tenant.stream(progress, opts.allow_pending, &known_heads)?;
    let astream = appliance.stream(progress, opts.allow_pending, &[])?;
    progress.phase("signatures", (tenant.checkpoints.len() + appliance.checkpoints.len()) as u64);
    tenant.verify_signatures(progress)?;
    appliance.verify_signatures(progress)?;

    // The appliance ledger must have published exactly the pinned tenant key for this tenant.
    let fp = opts.tenant_key.fingerprint();
    let published = astream
        .published
        .iter()
        .find(|(t, h, _, ok)| *t == tenant_id && *h == fp && *ok)
        .map(|(_, _, index, _)| *index)
        .ok_or_else(|| {
            ferr(
                "appliance/",
                format!("no successful tenant.create or key.publish for tenant {tenant_id} with the pinned key (sha256 {fp})"),
            )
        })?;
    if let Some(i) = astream.deleted.iter().find(|(t, _)| *t == tenant_id).map(|(_, i)| *i) {
        warnings.push(format!("the appliance ledger records the deletion of tenant {tenant_id} at entry {i}"));
    }
    Ok(AuditReport {
        tenant: tenant.report(&tstream),
        appliance: appliance.report(&astream),
        key_published_at: published,
        warnings,
    })
}

fn rel_err(e: AuditError, prefix: &str) -> AuditError {
    match e {
        AuditError::File { file, what } => AuditError::File { file: format!("{prefix}{file}"), what },
        AuditError::Entry { file, index, what } => AuditError::Entry { file: format!("{prefix}{file}"), index, what },
        AuditError::Io { file, source } => AuditError::Io { file: format!("{prefix}{file}"), source },
    }
}

/// The most one bundle file may hold: an entry bundle of a full tile of the longest entries. Hash tiles,
/// checkpoints and keys are far smaller.
const MAX_BUNDLE_FILE: u64 = (TILE_WIDTH * (2 + tiles::MAX_ENTRY_LEN)) as u64;

/// Reads bundle file `rel`. The bundle is not trusted: a file that is not a regular file (a symbolic link,
/// a device, a FIFO) or that is larger than [`MAX_BUNDLE_FILE`] is refused before it is read, so that
/// no bundle can make the verifier read without end or exhaust its memory.
fn read_bytes(dir: &Path, rel: &str) -> Result<Vec<u8>, AuditError> {
    use std::io::Read as _;
    let path = dir.join(rel);
    let io_err = |source| AuditError::Io { file: rel.to_string(), source };
    let refuse = |what: String| AuditError::File { file: rel.to_string(), what };
    let meta = fs::symlink_metadata(&path).map_err(io_err)?;
    if !meta.file_type().is_file() {
        return Err(refuse("is not a regular file (a bundle holds only regular files)".into()));
    }
    let over = || refuse(format!("is over the {MAX_BUNDLE_FILE}-byte cap for one bundle file"));
    if meta.len() > MAX_BUNDLE_FILE {
        return Err(over());
    }
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    // The file may have grown since it was looked at.
    fs::File::open(&path).and_then(|f| f.take(MAX_BUNDLE_FILE + 1).read_to_end(&mut bytes)).map_err(io_err)?;
    if bytes.len() as u64 > MAX_BUNDLE_FILE {
        return Err(over());
    }
    Ok(bytes)
}

fn read_string(dir: &Path, rel: &str) -> Result<String, AuditError> {
    let b = read_bytes(dir, rel)?;
    String::from_utf8(b).map_err(|_| ferr(rel, "not UTF-8"))
}

fn list_dir(dir: &Path, rel: &str) -> Result<BTreeSet<String>, AuditError> {
    let p = if rel.is_empty() { dir.to_path_buf() } else { dir.join(rel) };
    let rd = fs::read_dir(&p).map_err(|source| AuditError::Io { file: rel.to_string(), source })?;
    let mut out = BTreeSet::new();
    for e in rd {
        let e = e.map_err(|source| AuditError::Io { file: rel.to_string(), source })?;
        out.insert(e.file_name().to_string_lossy().into_owned());
    }
    Ok(out)
}

struct LedgerAudit<'a> {
    root: PathBuf,
    prefix: String,
    scope: LedgerScope,
    key: &'a LedgerPublicKey,
    key_pinned: bool,
    head: TreeHead,
    /// (size, file, text) sorted by size.
    checkpoints: Vec<(u64, String, String)>,
}

#[derive(Default)]
struct Streamed {
    oars: u64,
    outcomes: u64,
    pending: Vec<u64>,
    /// (tenant, key fingerprint, OAR index, outcome succeeded) for tenant.create / key.publish.
    published: Vec<(TenantId, Hash, u64, bool)>,
    /// (tenant, OAR index) for tenant.delete that succeeded.
    deleted: Vec<(TenantId, u64)>,
}

struct PendingEntry {
    index: u64,
    leaf: Hash,
    publish: Option<(TenantId, Hash)>,
    delete: Option<TenantId>,
}

impl<'a> LedgerAudit<'a> {
    fn new(
        bundle: &Path,
        name: &str,
        scope: LedgerScope,
        key: &'a LedgerPublicKey,
        key_pinned: bool,
    ) -> Result<Self, AuditError> {
        let root = bundle.join(name);
        let prefix = format!("{name}/");
        let wrap = |e: AuditError| rel_err(e, &prefix);
        // The reference copy of the key must be the pinned key, in canonical PEM (compared as text; the
        // key is only decoded to explain a mismatch).
        let pem = read_string(&root, "key.pub.pem").map_err(wrap)?;
        if pem != key.to_spki_pem() {
            let what = match LedgerPublicKey::pem_to_der(&pem) {
                Err(e) => format!("not a PEM public key: {e}"),
                Ok(der) if der == key.to_spki_der() => "not in canonical PEM form".to_string(),
                Ok(_) => "differs from the pinned public key (wrong key or wrong tenant)".to_string(),
            };
            return Err(ferr(format!("{prefix}key.pub.pem"), what));
        }
        // Every file must be one the format allows.
        let mut files = Vec::new();
        walk_files(&root, &mut |rel| files.push(rel.to_string()))
            .map_err(|source| AuditError::Io { file: prefix.clone(), source })?;
        let mut checkpoints = Vec::new();
        let mut tile_files = BTreeSet::new();
        let mut entry_bundles = 0u64;
        for rel in &files {
            let f = format!("{prefix}{rel}");
            if rel == "key.pub.pem" || rel == "checkpoint" {
                continue;
            }
            if let Some(idx) = rel.strip_prefix("checkpoints/") {
                let size =
                    tiles::parse_index_path(idx).ok_or_else(|| ferr(&f, "not a canonical checkpoint file name"))?;
                let text = read_string(&root, rel).map_err(wrap)?;
                let (origin, head) = SignedCheckpoint::parse_unverified(&text).map_err(|e| ferr(&f, e.to_string()))?;
                if origin != scope.origin() {
                    return Err(ferr(&f, format!("origin {origin:?} is not {:?}", scope.origin())));
                }
                if head.size != size {
                    return Err(ferr(&f, format!("holds a checkpoint of size {}, its name says {size}", head.size)));
                }
                checkpoints.push((size, f, text));
                continue;
            }
            match parse_tile_rel(rel) {
                Some((level, _, _)) => {
                    if level.is_none() {
                        entry_bundles += 1;
                    }
                    tile_files.insert(rel.clone());
                }
                None => return Err(ferr(&f, "unexpected file in the bundle")),
            }
        }
        checkpoints.sort_by_key(|(s, _, _)| *s);
        let latest = read_string(&root, "checkpoint").map_err(wrap)?;
        let (newest_size, newest_file, newest_text) =
            checkpoints.last().cloned().ok_or_else(|| ferr(format!("{prefix}checkpoints/"), "no checkpoints"))?;
        if latest != newest_text {
            let what = match SignedCheckpoint::parse_unverified(&latest) {
                Ok((_, h)) if h.size < newest_size => {
                    format!(
                        "rolled back: it is the checkpoint of size {}, but {newest_file} has size {newest_size}",
                        h.size
                    )
                }
                Ok((_, h)) => format!("size {} differs from the newest history checkpoint {newest_file}", h.size),
                Err(e) => e.to_string(),
            };
            return Err(ferr(format!("{prefix}checkpoint"), what));
        }
        let (_, head) = SignedCheckpoint::parse_unverified(&latest)
            .map_err(|e| ferr(format!("{prefix}checkpoint"), e.to_string()))?;
        // Impossible sizes: the bundle cannot hold more entries than its bundles can carry.
        if head.size > entry_bundles.saturating_mul(TILE_WIDTH as u64) {
            return Err(ferr(
                format!("{prefix}checkpoint"),
                format!("size {} is impossible: the bundle has {entry_bundles} entry bundles", head.size),
            ));
        }
        // Exactly the tiles the final size needs: full tiles and the final partial at each level.
        let mut expected = BTreeSet::new();
        let mut level: u8 = 0;
        loop {
            let shift = u32::from(level) * u32::from(TILE_HEIGHT);
            let hashes = head.size.checked_shr(shift).unwrap_or(0);
            if hashes == 0 {
                break;
            }
            let full = hashes / TILE_WIDTH as u64;
            let partial = usize::try_from(hashes % TILE_WIDTH as u64).unwrap_or(0);
            for n in 0..full {
                expected.insert(tiles::tile_path(level, n, TILE_WIDTH));
                if level == 0 {
                    expected.insert(tiles::entries_path(n, TILE_WIDTH));
                }
            }
            if partial > 0 {
                expected.insert(tiles::tile_path(level, full, partial));
                if level == 0 {
                    expected.insert(tiles::entries_path(full, partial));
                }
            }
            level += 1;
        }
        if let Some(extra) = tile_files.difference(&expected).next() {
            let (lvl, n, w) = parse_tile_rel(extra).unwrap_or((None, 0, 0));
            let why = if tile_within(lvl.unwrap_or(0), n, w, head.size) {
                "not needed for the latest checkpoint (the bundle must hold only full tiles and the final partials)"
            } else {
                "lies beyond the latest checkpoint"
            };
            return Err(ferr(format!("{prefix}{extra}"), format!("unexpected tile: {why}")));
        }
        if let Some(missing) = expected.difference(&tile_files).next() {
            return Err(ferr(format!("{prefix}{missing}"), "missing (the ledger is truncated)"));
        }
        Ok(Self { root, prefix, scope, key, key_pinned, head, checkpoints })
    }

    fn report(&self, s: &Streamed) -> LedgerReport {
        LedgerReport {
            scope: self.scope,
            head: self.head,
            checkpoints: self.checkpoints.len(),
            oars: s.oars,
            outcomes: s.outcomes,
            pending: s.pending.clone(),
            key_pinned: self.key_pinned,
        }
    }

    fn stream(
        &self,
        progress: &dyn Progress,
        allow_pending: bool,
        known: &[(String, TreeHead)],
    ) -> Result<Streamed, AuditError> {
        let size = self.head.size;
        let mut tree = Tree::new(Some(self.root.clone()), false);
        let mut out = Streamed::default();
        let mut pending: BTreeMap<u64, PendingEntry> = BTreeMap::new();
        let mut next_counter = 0u64;
        let mut last_time = 0u64;
        // Checkpoints in size order; `next_cp` is the next one to reach.
        let mut next_cp = 0usize;
        let mut prev_cp: Option<TreeHead> = None;
        let mut since_cp: Vec<(u64, Hash)> = Vec::new();
        self.reach_checkpoints(&tree, &mut next_cp, &mut since_cp, &mut prev_cp)?;
        let bundles = size.div_ceil(TILE_WIDTH as u64);
        for n in 0..bundles {
            let width = if (n + 1) * TILE_WIDTH as u64 <= size {
                TILE_WIDTH
            } else {
                usize::try_from(size % TILE_WIDTH as u64).unwrap_or(0)
            };
            let rel = tiles::entries_path(n, width);
            let file = format!("{}{rel}", self.prefix);
            let bytes = read_bytes(&self.root, &rel).map_err(|e| rel_err(e, &self.prefix))?;
            let entries = tiles::decode_bundle(&bytes, width).map_err(|w| ferr(&file, w))?;
            // The bundle's level-0 tile names each entry's leaf hash: a mismatch pins the altered entry.
            let tile_rel = tiles::tile_path(0, n, width);
            let tile_bytes = read_bytes(&self.root, &tile_rel).map_err(|e| rel_err(e, &self.prefix))?;
            let tile =
                tiles::decode_tile(&tile_bytes, width).map_err(|w| ferr(format!("{}{tile_rel}", self.prefix), w))?;
            for (k, raw) in entries.iter().enumerate() {
                let index = n * TILE_WIDTH as u64 + k as u64;
                let eerr = |what: String| AuditError::Entry { file: file.clone(), index, what };
                if tile[k] != leaf_hash(raw) {
                    return Err(eerr(format!(
                        "does not hash to its leaf in {}{tile_rel}: the entry or the tile was altered",
                        self.prefix
                    )));
                }
                let entry = Entry::decode(raw).map_err(|e| eerr(format!("{e}")))?;
                if entry.scope() != self.scope {
                    return Err(eerr(format!("belongs to {}, not {}", entry.scope(), self.scope)));
                }
                let prev = entry.prev_head();
                let root_before = merkle::root(&tree, index).map_err(|e| eerr(e.to_string()))?;
                if prev.size != index || prev.root != root_before {
                    return Err(eerr("prev_head does not match the ledger head before this entry".into()));
                }
                let leaf = tile[k];
                match &entry {
                    Entry::Oar(o) => {
                        if o.counter != next_counter {
                            return Err(eerr(format!(
                                "OAR counter {} where {next_counter} was due (gap or reorder)",
                                o.counter
                            )));
                        }
                        let low = pending.keys().next().copied().unwrap_or(o.counter).min(o.counter);
                        if o.low_water != low {
                            return Err(eerr(format!("low-water mark {} where {low} is pending", o.low_water)));
                        }
                        if o.time_ms < last_time {
                            return Err(eerr("time goes backwards".into()));
                        }
                        last_time = o.time_ms;
                        let publish = match (o.op, o.target, o.params) {
                            (OpKind::TenantCreate | OpKind::KeyPublish, Target::Tenant(t), Digest::Public(h)) => {
                                Some((t, h))
                            }
                            _ => None,
                        };
                        let delete = match (o.op, o.target) {
                            (OpKind::TenantDelete, Target::Tenant(t)) => Some(t),
                            _ => None,
                        };
                        pending.insert(o.counter, PendingEntry { index, leaf, publish, delete });
                        next_counter += 1;
                        out.oars += 1;
                    }
                    Entry::Outcome(r) => {
                        let p = pending.remove(&r.counter).ok_or_else(|| {
                            eerr(format!(
                                "outcome for OAR {} which is not pending (unknown or completed twice)",
                                r.counter
                            ))
                        })?;
                        if r.oar_index != p.index || r.oar_leaf != p.leaf {
                            return Err(eerr(format!("outcome does not name OAR {}'s index and leaf hash", r.counter)));
                        }
                        if r.time_ms < last_time {
                            return Err(eerr("time goes backwards".into()));
                        }
                        last_time = r.time_ms;
                        let ok = r.status == Status::Succeeded;
                        if let Some((t, h)) = p.publish {
                            out.published.push((t, h, p.index, ok));
                        }
                        if let (Some(t), true) = (p.delete, ok) {
                            out.deleted.push((t, p.index));
                        }
                        out.outcomes += 1;
                    }
                }
                since_cp.push((index, leaf));
                tree.append_leaf_hash(leaf);
                self.reach_checkpoints(&tree, &mut next_cp, &mut since_cp, &mut prev_cp)?;
                // Full tiles completed by this entry must match the bundle's files.
                self.compare_tiles(&mut tree, false)?;
            }
            progress.advance(width as u64);
        }
        self.compare_tiles(&mut tree, true)?;
        for (what, head) in known {
            let root = merkle::root(&tree, head.size).map_err(|e| ferr(what, e.to_string()))?;
            if root != head.root {
                return Err(ferr(
                    format!("{}checkpoint", self.prefix),
                    format!("the ledger contradicts {what} at size {} (history was rewritten)", head.size),
                ));
            }
        }
        if let Some((s, file, _)) = self.checkpoints.get(next_cp) {
            return Err(ferr(file, format!("size {s} was never reached by the entries")));
        }
        if !pending.is_empty() {
            let first = pending.iter().next().map(|(c, p)| (*c, p.index)).unwrap_or((0, 0));
            if !allow_pending {
                return Err(AuditError::Entry {
                    file: format!("{}tile/entries", self.prefix),
                    index: first.1,
                    what: format!(
                        "OAR {} has no outcome ({} operations without outcome; --allow-pending accepts operations in flight)",
                        first.0,
                        pending.len()
                    ),
                });
            }
            out.pending = pending.keys().copied().collect();
        }
        Ok(out)
    }

    /// Compare tiles the tree has completed (and, at the end, the final partial tiles) with the files.
    fn compare_tiles(&self, tree: &mut Tree, at_end: bool) -> Result<(), AuditError> {
        let ch = tree.take_changes();
        for (level, n, bytes, width) in ch.tiles {
            if width == TILE_WIDTH {
                self.compare_file(&tiles::tile_path(level, n, width), &bytes)?;
            }
        }
        if at_end {
            let size = tree.size();
            let mut level: u8 = 0;
            loop {
                let shift = u32::from(level) * u32::from(TILE_HEIGHT);
                let hashes = size.checked_shr(shift).unwrap_or(0);
                if hashes == 0 {
                    break;
                }
                let partial = usize::try_from(hashes % TILE_WIDTH as u64).unwrap_or(0);
                if partial > 0 {
                    let t = tree.edge_tile(level).ok_or_else(|| ferr(&self.prefix, "tree level missing"))?;
                    self.compare_file(&tiles::tile_path(level, hashes / TILE_WIDTH as u64, partial), &t.to_bytes())?;
                }
                level += 1;
            }
        }
        Ok(())
    }

    fn compare_file(&self, rel: &str, want: &[u8]) -> Result<(), AuditError> {
        let got = read_bytes(&self.root, rel).map_err(|e| rel_err(e, &self.prefix))?;
        if got != want {
            return Err(ferr(
                format!("{}{rel}", self.prefix),
                "tile differs from the hashes recomputed from the entries",
            ));
        }
        Ok(())
    }

    /// Check every checkpoint whose size the tree has just reached: root, consistency with the previous
    /// checkpoint, inclusion of every entry since.
    fn reach_checkpoints(
        &self,
        tree: &Tree,
        next: &mut usize,
        since: &mut Vec<(u64, Hash)>,
        prev: &mut Option<TreeHead>,
    ) -> Result<(), AuditError> {
        while let Some((s, file, text)) = self.checkpoints.get(*next) {
            let s = *s;
            if s != tree.size() {
                break;
            }
            let (_, head) = SignedCheckpoint::parse_unverified(text).map_err(|e| ferr(file, e.to_string()))?;
            let root = merkle::root(tree, s).map_err(|e| ferr(file, e.to_string()))?;
            if root != head.root {
                return Err(ferr(file, format!("root {} does not match the entries (recomputed {root})", head.root)));
            }
            if let Some(p) = *prev
                && p.size > 0
            {
                let proof = merkle::consistency_proof(tree, p.size, s).map_err(|e| ferr(file, e.to_string()))?;
                merkle::verify_consistency(p.size, s, &p.root, &head.root, &proof)
                    .map_err(|e| ferr(file, format!("not consistent with the checkpoint of size {}: {e}", p.size)))?;
            }
            for (i, leaf) in since.drain(..) {
                let proof = merkle::inclusion_proof(tree, i, s).map_err(|e| ferr(file, e.to_string()))?;
                merkle::verify_inclusion(i, s, &leaf, &proof, &head.root).map_err(|e| AuditError::Entry {
                    file: file.clone(),
                    index: i,
                    what: format!("inclusion: {e}"),
                })?;
            }
            *prev = Some(head);
            *next += 1;
        }
        Ok(())
    }

    fn verify_signatures(&self, progress: &dyn Progress) -> Result<(), AuditError> {
        for (_, file, text) in &self.checkpoints {
            SignedCheckpoint::verify(text, &self.scope, self.key).map_err(|e| {
                let mut what = e.to_string();
                if let Some(src) = std::error::Error::source(&e) {
                    what.push_str(&format!(": {src}"));
                }
                ferr(file, what)
            })?;
            progress.advance(1);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::export_bundle;
    use crate::gate::Gate;
    use crate::ledger::Ledger;
    use crate::oar::{Entry, OarDraft};
    use crate::signer::{LedgerSigner, SignerSeed};
    use crate::testutil::{World, put, runtime, world};

    fn bundle(w: &World) -> (tempfile::TempDir, PathBuf) {
        let out = tempfile::tempdir().unwrap();
        let b = out.path().join("bundle");
        export_bundle(&w.tenant_dir, &w.appliance_dir, &w.tenant_key, &w.appliance_key, &b).unwrap();
        (out, b)
    }

    fn opts(w: &World) -> AuditOptions {
        AuditOptions {
            tenant_key: w.tenant_key.clone(),
            appliance_key: Some(w.appliance_key.clone()),
            tenant: Some(w.tenant),
            allow_pending: false,
            known: vec![],
        }
    }

    #[test]
    fn exported_bundle_verifies() {
        let w = world(3);
        let (_t, b) = bundle(&w);
        let r = verify_bundle(&b, &opts(&w), &NoProgress).unwrap();
        assert_eq!(r.tenant.head.size, 6);
        assert_eq!((r.tenant.oars, r.tenant.outcomes), (3, 3));
        assert_eq!(r.tenant.checkpoints, 7);
        assert_eq!(r.appliance.head.size, 2);
        assert_eq!(r.key_published_at, 0);
        assert!(r.warnings.is_empty());
        // Without the appliance key: still verifies, with a warning.
        let mut o = opts(&w);
        o.appliance_key = None;
        let r = verify_bundle(&b, &o, &NoProgress).unwrap();
        assert!(!r.appliance.key_pinned && r.warnings.len() == 1);
    }

    #[test]
    fn a_file_that_is_not_a_plain_bounded_file_is_refused_before_it_is_read() {
        // Before, a checkpoint linked to /dev/zero was read until memory ran out, and a FIFO hung the
        // verifier for good.
        let w = world(1);
        let (_t, b) = bundle(&w);
        let cp = b.join("tenant/checkpoint");
        let tile = b.join("tenant/tile/entries/000.p/2");
        let original = fs::read(&tile).unwrap();
        type Make = fn(&Path);
        let cases: [(&Path, &str, Make); 4] = [
            (&cp, "is not a regular file", |p| std::os::unix::fs::symlink("/dev/zero", p).unwrap()),
            (&cp, "is not a regular file", |p| {
                assert!(std::process::Command::new("mkfifo").arg(p).status().unwrap().success());
            }),
            (&cp, "is not a regular file", |p| fs::create_dir(p).unwrap()),
            (&tile, "is over the 16777472-byte cap", |p| {
                fs::File::create(p).unwrap().set_len(MAX_BUNDLE_FILE + 1).unwrap();
            }),
        ];
        let checkpoint = fs::read(&cp).unwrap();
        for (path, needle, make) in cases {
            fs::remove_file(path).unwrap();
            make(path);
            let e = verify_bundle(&b, &opts(&w), &NoProgress).unwrap_err().to_string();
            assert!(e.contains(needle), "{e}");
            let _ = fs::remove_dir(path);
            let _ = fs::remove_file(path);
            fs::write(&cp, &checkpoint).unwrap();
            fs::write(&tile, &original).unwrap();
        }
        verify_bundle(&b, &opts(&w), &NoProgress).unwrap();
    }

    #[test]
    fn wrong_keys_and_wrong_tenant_fail() {
        let w = world(1);
        let (_t, b) = bundle(&w);
        let mut o = opts(&w);
        o.tenant_key = w.appliance_key.clone();
        let e = verify_bundle(&b, &o, &NoProgress).unwrap_err().to_string();
        assert!(e.contains("tenant/key.pub.pem") && e.contains("pinned"), "{e}");
        let mut o = opts(&w);
        o.tenant = Some(crate::TenantId::random().unwrap());
        assert!(verify_bundle(&b, &o, &NoProgress).is_err());
        // Pinned key of another tenant, with the bundle's reference copy replaced to match it: the
        // signatures (and the appliance's publication) still give it away.
        let other = LedgerSigner::tenant(w.tenant, &SignerSeed::generate().unwrap()).unwrap();
        std::fs::write(b.join("tenant/key.pub.pem"), other.public_key().to_spki_pem()).unwrap();
        let mut o = opts(&w);
        o.tenant_key = other.public_key().clone();
        let e = verify_bundle(&b, &o, &NoProgress).unwrap_err().to_string();
        assert!(e.contains("checkpoints/") && e.contains("no signature by the pinned key"), "{e}");
    }

    #[test]
    fn rollback_and_truncation_are_reported() {
        let w = world(2);
        let (_t, b) = bundle(&w);
        let full = verify_bundle(&b, &opts(&w), &NoProgress).unwrap();

        // `checkpoint` replaced by an older one.
        let older = std::fs::read(b.join("tenant/checkpoints/002")).unwrap();
        let (_t2, b2) = bundle(&w);
        std::fs::write(b2.join("tenant/checkpoint"), &older).unwrap();
        let e = verify_bundle(&b2, &opts(&w), &NoProgress).unwrap_err().to_string();
        assert!(e.contains("tenant/checkpoint") && e.contains("rolled back"), "{e}");

        // A truncated ledger: the last entry bundle is gone.
        let (_t3, b3) = bundle(&w);
        std::fs::remove_file(b3.join("tenant/tile/entries/000.p/4")).unwrap();
        let e = verify_bundle(&b3, &opts(&w), &NoProgress).unwrap_err().to_string();
        assert!(e.contains("tenant/checkpoint") && e.contains("impossible"), "{e}");
        let (_t3b, b3b) = bundle(&w);
        std::fs::remove_file(b3b.join("tenant/tile/0/000.p/4")).unwrap();
        let e = verify_bundle(&b3b, &opts(&w), &NoProgress).unwrap_err().to_string();
        assert!(e.contains("tenant/tile/0/000.p/4") && e.contains("truncated"), "{e}");

        // A consistently cut-back bundle (an export taken at an older state, every file coherent)
        // verifies on its own but not against a checkpoint the auditor already holds.
        let young = world(1);
        let (_t4, b4) = bundle(&young);
        let scope = LedgerScope::Tenant(young.tenant);
        let gate =
            Gate::open(&young.tenant_dir, LedgerSigner::new(scope, &young.tenant_seed).unwrap(), runtime()).unwrap();
        let att = gate.attest(put("later")).unwrap();
        gate.complete(att, crate::Outcome::success(crate::Digest::None)).unwrap();
        gate.close().unwrap();
        let (_t5, b5) = bundle(&young);
        let later = verify_bundle(&b5, &opts(&young), &NoProgress).unwrap();
        assert_eq!(later.tenant.head.size, 4);
        let held_later = std::fs::read_to_string(b5.join("tenant/checkpoint")).unwrap();
        let mut o = opts(&young);
        assert_eq!(verify_bundle(&b4, &o, &NoProgress).unwrap().tenant.head.size, 2);
        o.known = vec![held_later];
        let e = verify_bundle(&b4, &o, &NoProgress).unwrap_err().to_string();
        assert!(e.contains("truncated or rolled back"), "{e}");
        assert_eq!(full.tenant.head.size, 4);
    }

    #[test]
    fn another_tenants_oar_fails() {
        // Tenant A's OAR, appended to tenant B's ledger and validly signed by B's key.
        let a = world(1);
        let (la, _) = Ledger::open(&a.tenant_dir, LedgerScope::Tenant(a.tenant), &a.tenant_key).unwrap();
        let a_oar = la.entry(0).unwrap();
        assert!(matches!(Entry::decode(&a_oar).unwrap(), Entry::Oar(_)));
        drop(la);
        let b = world(1);
        let bscope = LedgerScope::Tenant(b.tenant);
        let bsigner = LedgerSigner::new(bscope, &b.tenant_seed).unwrap();
        let (mut lb, _) = Ledger::open(&b.tenant_dir, bscope, &b.tenant_key).unwrap();
        lb.append(&a_oar);
        lb.commit(&bsigner).unwrap();
        drop(lb);
        let (_t, bundle_dir) = bundle(&b);
        let e = verify_bundle(&bundle_dir, &opts(&b), &NoProgress).unwrap_err().to_string();
        assert!(e.contains("entry 2") && e.contains(&format!("belongs to bulwark.ledger/tenant/{}", a.tenant)), "{e}");
    }

    #[test]
    fn pending_operations_need_the_flag() {
        let w = world(1);
        let scope = LedgerScope::Tenant(w.tenant);
        let gate = Gate::open(&w.tenant_dir, LedgerSigner::new(scope, &w.tenant_seed).unwrap(), runtime()).unwrap();
        let att = gate.attest(put("in flight")).unwrap();
        gate.sync_tiles().unwrap();
        let (_t, b) = bundle(&w);
        let e = verify_bundle(&b, &opts(&w), &NoProgress).unwrap_err().to_string();
        assert!(e.contains("entry 2") && e.contains("no outcome"), "{e}");
        let mut o = opts(&w);
        o.allow_pending = true;
        assert_eq!(verify_bundle(&b, &o, &NoProgress).unwrap().tenant.pending, vec![1]);
        gate.complete(att, crate::Outcome::success(crate::Digest::None)).unwrap();
        let _ = OarDraft::new;
    }

    /// Byte ranges of signature payloads in a checkpoint note (base64 after "— name ").
    fn signature_ranges(text: &[u8]) -> Vec<std::ops::Range<usize>> {
        let mut out = vec![];
        let mut pos = 0;
        for line in text.split_inclusive(|b| *b == b'\n') {
            if line.starts_with("\u{2014} ".as_bytes())
                && let Some(sp) = line.iter().skip(4).position(|b| *b == b' ')
            {
                out.push(pos + 4 + sp + 1..pos + line.len() - 1);
            }
            pos += line.len();
        }
        out
    }

    /// Every single-byte change of every file in a small bundle makes verification fail. In debug builds
    /// (ML-DSA verification is ~25x slower unoptimised) the bytes inside signature payloads are sampled
    /// (every 53rd); `cargo test --release` flips every byte.
    #[test]
    fn every_single_byte_flip_fails() {
        use std::os::unix::fs::FileExt as _;
        let w = world(1);
        let (_t, b) = bundle(&w);
        let o = opts(&w);
        verify_bundle(&b, &o, &NoProgress).unwrap();
        let mut files = vec![];
        walk_files(&b, &mut |rel| files.push(rel.to_string())).unwrap();
        let sample = if cfg!(debug_assertions) { 53 } else { 1 };
        let mut flips = 0usize;
        for rel in &files {
            let path = b.join(rel);
            let orig = std::fs::read(&path).unwrap();
            // Patch the byte in place: rewriting a truncated file costs a flush per write on ext4.
            let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
            let sig = if rel.contains("checkpoint") { signature_ranges(&orig) } else { vec![] };
            for (i, byte) in orig.iter().enumerate() {
                if sig.iter().any(|r| r.contains(&i)) && i % sample != 0 {
                    continue;
                }
                f.write_all_at(&[byte ^ 0x01], i as u64).unwrap();
                let res = verify_bundle(&b, &o, &NoProgress);
                f.write_all_at(&[*byte], i as u64).unwrap();
                assert!(res.is_err(), "flipping byte {i} of {rel} still verifies");
                flips += 1;
            }
        }
        verify_bundle(&b, &o, &NoProgress).unwrap();
        assert!(flips > 1000, "{flips} flips");
    }
}
