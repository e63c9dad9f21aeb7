//! `bulwark-verify`: the auditor's offline verifier for exported Bulwark ledger bundles.
//!
//! Trust model: the bundle is untrusted input; the only trusted inputs are the public keys (and optional
//! known checkpoints or receipts) given on the command line, obtained out of band. Keys are never taken
//! from the bundle. This binary has no async runtime, no TPM code, no GPU code and no network access;
//! all checks live in `bulwark_ledger::audit` and are listed in docs/FORMATS.md.
//!
//! Exit status: 0 when every check holds, 1 when the bundle fails verification (the first failure is
//! printed with its file, entry index and what failed), 2 when the command line or a key file is bad.

use std::io::{IsTerminal as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use bulwark_ledger::audit::{AuditOptions, AuditReport, Progress, verify_bundle};
use bulwark_ledger::{LedgerPublicKey, TenantId};
use clap::Parser;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Verify an exported Bulwark ledger bundle offline.
#[derive(Debug, Parser)]
#[command(name = "bulwark-verify", version, about)]
struct Args {
    /// The bundle directory (written by `bulwark ledger export`).
    bundle: PathBuf,
    /// The tenant's public key (SPKI PEM), obtained out of band. Pinned: the bundle's copy must match.
    #[arg(long = "key", value_name = "PEM")]
    key: PathBuf,
    /// The appliance's public key (SPKI PEM). Without it the appliance ledger is checked only against the
    /// bundle's own copy of its key, and the output says so.
    #[arg(long = "appliance-key", value_name = "PEM")]
    appliance_key: Option<PathBuf>,
    /// The tenant id the bundle must be for.
    #[arg(long)]
    tenant: Option<TenantId>,
    /// A checkpoint or receipt (.tlog-proof) of the tenant ledger you already hold; the bundle must
    /// extend it. Repeatable. This detects a bundle that was cut back as a whole.
    #[arg(long = "known", value_name = "FILE")]
    known: Vec<PathBuf>,
    /// Accept operations whose outcome is not recorded yet (in flight at export time).
    #[arg(long)]
    allow_pending: bool,
    /// Print nothing on success.
    #[arg(long, short)]
    quiet: bool,
}

struct Bar(ProgressBar);

impl Progress for Bar {
    fn phase(&self, name: &str, total: u64) {
        self.0.set_position(0);
        self.0.set_length(total);
        self.0.set_message(name.to_string());
    }
    fn advance(&self, n: u64) {
        self.0.inc(n);
    }
}

/// The text of the small file at `path` (a key, a checkpoint or a receipt), never reading more than
/// [`MAX_INPUT`] + 1 bytes (a device named as the file would otherwise be read forever).
fn read_small_text(path: &Path, what: &str) -> Result<String, String> {
    use std::io::Read as _;
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_INPUT as u64 + 1).read_to_end(&mut bytes))
        .map_err(|e| format!("cannot read {what} {}: {e}", path.display()))?;
    if bytes.len() > MAX_INPUT {
        return Err(format!("{what} {} is over {MAX_INPUT} bytes, so it is not one", path.display()));
    }
    String::from_utf8(bytes).map_err(|_| format!("{what} {} is not text", path.display()))
}

/// The largest key, checkpoint or receipt file read (an ML-DSA-65 public key in PEM is under 3 KiB, a
/// receipt with its proof under 16 KiB).
const MAX_INPUT: usize = 1 << 20;

fn read_key(path: &Path, what: &str) -> Result<LedgerPublicKey, String> {
    let text = read_small_text(path, what)?;
    LedgerPublicKey::from_spki_pem(&text).map_err(|e| format!("{what} {}: {e}", path.display()))
}

/// Writes the report to stdout; a failure is returned (the caller says so), never a panic.
fn print_report(r: &AuditReport) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    for (name, l) in [("tenant", &r.tenant), ("appliance", &r.appliance)] {
        writeln!(
            out,
            "{name} ledger {}: {} entries, {} OARs, {} outcomes, {} checkpoints, root {}{}",
            l.scope,
            l.head.size,
            l.oars,
            l.outcomes,
            l.checkpoints,
            l.head.root,
            if l.key_pinned { "" } else { " (key NOT pinned)" }
        )?;
        if !l.pending.is_empty() {
            writeln!(out, "  {} operations without outcome (allowed): counters {:?}", l.pending.len(), l.pending)?;
        }
    }
    writeln!(out, "tenant key published in the appliance ledger at entry {}", r.key_published_at)?;
    for w in &r.warnings {
        writeln!(out, "warning: {w}")?;
    }
    writeln!(out, "OK")?;
    out.flush()
}

fn main() -> ExitCode {
    let args = Args::parse();
    let setup = || -> Result<AuditOptions, String> {
        let tenant_key = read_key(&args.key, "tenant key")?;
        let appliance_key = args.appliance_key.as_ref().map(|p| read_key(p, "appliance key")).transpose()?;
        let mut known = Vec::new();
        for p in &args.known {
            known.push(read_small_text(p, "known checkpoint or receipt")?);
        }
        Ok(AuditOptions { tenant_key, appliance_key, tenant: args.tenant, allow_pending: args.allow_pending, known })
    };
    let opts = match setup() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("bulwark-verify: {e}");
            return ExitCode::from(2);
        }
    };
    let target = if std::io::stderr().is_terminal() && !args.quiet {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    };
    let bar = ProgressBar::with_draw_target(Some(0), target);
    if let Ok(style) = ProgressStyle::with_template("{msg:>10} [{bar:40}] {pos}/{len} ({per_sec}, eta {eta})") {
        bar.set_style(style.progress_chars("=> "));
    }
    let bar = Bar(bar);
    let result = verify_bundle(&args.bundle, &opts, &bar);
    bar.0.finish_and_clear();
    match result {
        Ok(report) => {
            // The exit status is the verdict; a report that cannot be written is said on stderr (a reader
            // that closed the pipe early is told nothing).
            if !args.quiet
                && let Err(e) = print_report(&report)
                && e.kind() != std::io::ErrorKind::BrokenPipe
            {
                eprintln!("bulwark-verify: the bundle holds, but the report could not be written to stdout: {e}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            let mut msg = e.to_string();
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                msg.push_str(&format!(": {s}"));
                src = s.source();
            }
            eprintln!("FAIL: {}: {msg}", args.bundle.display());
            ExitCode::from(1)
        }
    }
}
