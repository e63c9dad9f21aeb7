//! Command-line interface of the `bulwark` binary.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Bulwark: sealed tenant vaults on a TPM-rooted appliance.
#[derive(Debug, Parser)]
#[command(name = "bulwark", version, about, propagate_version = true)]
pub struct Cli {
    /// The appliance's data directory.
    #[arg(long, global = true, default_value = "/var/lib/bulwark", env = "BULWARK_DATA_DIR")]
    pub data_dir: PathBuf,
    /// Which TPM to use: `auto` (the TPM device if /dev/tpmrm0 exists, else a swtpm the appliance starts
    /// and manages for its data dir), `device:/dev/tpmrm0`, or `swtpm:host=127.0.0.1,port=N`.
    #[arg(long, global = true, default_value = "auto")]
    pub tpm: String,
    /// Print one JSON object instead of text; a failure prints `{"error": …, "causes": […]}` as the last
    /// line of stderr.
    #[arg(long, global = true)]
    pub json: bool,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Provision this data dir: pick the hardware profile, create the TPM's storage root key, measure
    /// the runtime.
    Init(InitArgs),
    /// Create, list, delete or reseal tenants.
    #[command(subcommand)]
    Tenant(TenantCmd),
    /// Store and read a tenant's records.
    #[command(subcommand)]
    Vault(VaultCmd),
    /// The attestation ledgers.
    #[command(subcommand)]
    Ledger(LedgerCmd),
    /// The appliance itself.
    #[command(subcommand)]
    Appliance(ApplianceCmd),
    /// Measured-boot tools that need no TPM.
    #[command(subcommand)]
    Boot(BootCmd),
    /// TPM tools; `policy-pcr` needs no TPM.
    #[command(subcommand)]
    Tpm(TpmCmd),
    /// Scripted walkthrough on a fresh data dir under --data-dir: two tenants, data in each, one
    /// unlocked while the other stays sealed, and an unlock refused after the measured state changes.
    Demo,
}

/// `bulwark init`.
#[derive(Debug, Args)]
pub struct InitArgs {
    /// Hardware profile: an embedded id (`dev-swtpm`, `generic-x86-tpm2`) or a path to a profile file.
    /// Default: `generic-x86-tpm2` with a TPM device, `dev-swtpm` otherwise.
    #[arg(long)]
    pub profile: Option<String>,
    /// DEVELOPMENT ONLY, and only with a swtpm profile such as `dev-swtpm`: do not bind tenants to this
    /// executable's bytes, so they survive rebuilds. Recorded in the measured config; tenants sealed this
    /// way never unseal in normal mode. See docs/development-mode.md.
    #[arg(long)]
    pub danger_dev_unbound_executable: bool,
}

/// Tenant selection by immutable id.
#[derive(Debug, Args)]
pub struct TenantSel {
    /// The tenant's id (32 hex digits, as `tenant create` printed it).
    #[arg(long = "tenant")]
    pub tenant: String,
}

/// `bulwark tenant …`.
#[derive(Debug, Subcommand)]
pub enum TenantCmd {
    /// Create a tenant: a fresh KEK sealed by the TPM, an empty vault, and a recovery secret shown once.
    Create {
        /// Display name (1-64 of A-Z a-z 0-9 . _ -).
        name: String,
    },
    /// List tenants (no secrets, no unsealing).
    List,
    /// Print the tenant's ML-DSA-65 public key (SPKI PEM), for an auditor to pin.
    Pubkey {
        /// Which tenant.
        #[command(flatten)]
        sel: TenantSel,
    },
    /// Delete a tenant irreversibly: its TPM liveness bit is set first (crypto-shred), then its files go.
    Delete {
        /// Which tenant.
        #[command(flatten)]
        sel: TenantSel,
        /// The tenant's name, as `tenant list` shows it, to confirm which tenant goes.
        #[arg(long, value_name = "NAME", allow_hyphen_values = true)]
        name: String,
    },
    /// Reseal a tenant's KEK to the current measured state after a legitimate change (update of the
    /// binary, config or profile), using the tenant's recovery secret.
    Reseal {
        /// Which tenant.
        #[command(flatten)]
        sel: TenantSel,
        /// Read the recovery secret from this file (`-` for stdin).
        #[arg(long)]
        recovery_secret_file: PathBuf,
    },
}

/// `bulwark vault …`.
#[derive(Debug, Subcommand)]
pub enum VaultCmd {
    /// Store stdin under KEY. Empty input is refused unless `--allow-empty` is given, so a failed pipe
    /// never replaces a record with nothing.
    Put {
        /// Which tenant.
        #[command(flatten)]
        sel: TenantSel,
        /// Record key: 1-256 bytes of UTF-8, no control characters, and no invisible or text-direction
        /// characters (such as U+202E), so keys that look alike in a listing are alike.
        key: String,
        /// Store an empty value when stdin is empty.
        #[arg(long)]
        allow_empty: bool,
    },
    /// Print the record under KEY to stdout.
    Get {
        /// Which tenant.
        #[command(flatten)]
        sel: TenantSel,
        /// Record key.
        key: String,
    },
    /// List record keys, versions and sizes.
    List {
        /// Which tenant.
        #[command(flatten)]
        sel: TenantSel,
    },
    /// Delete the record under KEY.
    Delete {
        /// Which tenant.
        #[command(flatten)]
        sel: TenantSel,
        /// Record key.
        key: String,
    },
    /// Check every record and the vault's set digest.
    Verify {
        /// Which tenant.
        #[command(flatten)]
        sel: TenantSel,
    },
}

/// `bulwark ledger …`.
#[derive(Debug, Subcommand)]
pub enum LedgerCmd {
    /// Write an auditor bundle (tiles, entries, every checkpoint, public keys) for one tenant.
    Export {
        /// Which tenant.
        #[command(flatten)]
        sel: TenantSel,
        /// The bundle directory to create (must not exist or be empty).
        #[arg(long)]
        out: PathBuf,
    },
}

/// `bulwark appliance …`.
#[derive(Debug, Subcommand)]
pub enum ApplianceCmd {
    /// Print the appliance's ML-DSA-65 public key (SPKI PEM), which signs the appliance ledger.
    Pubkey,
    /// Reseal the appliance's signing key to the current measured state after a legitimate change
    /// (update of the binary, config or profile), using the recovery secret `init` printed.
    Reseal {
        /// Read the appliance key recovery secret from this file (`-` for stdin).
        #[arg(long)]
        recovery_secret_file: PathBuf,
    },
}

/// `bulwark boot …`.
#[derive(Debug, Subcommand)]
pub enum BootCmd {
    /// Parse and replay a TCG PC Client binary event log (crypto-agile or legacy SHA-1).
    Eventlog {
        /// The log file (e.g. /sys/kernel/security/tpm0/binary_bios_measurements).
        file: PathBuf,
    },
}

/// `bulwark tpm …`.
#[derive(Debug, Subcommand)]
pub enum TpmCmd {
    /// Compute a PolicyPCR digest (sha256 policy session) offline from PCR values.
    PolicyPcr {
        /// PCR bank the values come from: sha1, sha256, sha384 or sha512.
        #[arg(long)]
        bank: String,
        /// A PCR and its value, `INDEX=HEX`; repeat for each PCR.
        #[arg(long = "pcr", required = true)]
        pcrs: Vec<String>,
    },
}
