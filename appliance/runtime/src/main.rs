//! `bulwark`: the appliance's command-line entry point.

// stdout is written through `out!`/`outln!`, which return a failed write instead of panicking.
#![deny(clippy::print_stdout)]

use std::fs::File;
use std::io::{IsTerminal, Write};
use std::os::fd::AsFd;
use std::path::Path;
use std::process::ExitCode;

use bulwark_appliance::appliance::{Appliance, RecoverySecret};
use bulwark_appliance::cli::{ApplianceCmd, BootCmd, Cli, Command, LedgerCmd, TenantCmd, TpmCmd, VaultCmd};
use bulwark_appliance::datadir::DataDir;
use bulwark_appliance::ids::TenantId;
use bulwark_appliance::secret::Plaintext;
use bulwark_appliance::vault::MAX_VALUE_LEN;
use bulwark_appliance::{demo, out, outln, report};
use clap::Parser;
use serde_json::json;
use zeroize::Zeroizing;

type Fallible = Result<(), Box<dyn std::error::Error + Send + Sync>>;

fn main() -> ExitCode {
    // No child this process starts (swtpm, the TSS's socat relay) inherits what its parent left open.
    bulwark_tpm::swtpm::close_inherited_descriptors_on_exec();
    report::init_logging();
    report::install_panic_hook();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // A command line clap refuses, asked for as --json: its message as the one JSON error object.
        Err(e) if e.use_stderr() && std::env::args_os().any(|a| a == "--json") => {
            let text = e.render().to_string();
            report::print_error_json(&*Box::<dyn std::error::Error>::from(
                text.trim_end().trim_start_matches("error: "),
            ));
            return ExitCode::from(2);
        }
        Err(e) => e.exit(),
    };
    let json = cli.json;
    match run(cli).and_then(|()| Ok(report::flush_stdout()?)) {
        Ok(()) => ExitCode::SUCCESS,
        // The reader closed the pipe (`| head`): the command did its work, and nobody is left to tell.
        Err(e) if e.downcast_ref::<report::StdoutError>().is_some_and(report::StdoutError::reader_gone) => {
            ExitCode::SUCCESS
        }
        Err(e) if json => {
            report::print_error_json(&*e);
            ExitCode::FAILURE
        }
        Err(e) => {
            report::print_error(&*e);
            ExitCode::FAILURE
        }
    }
}

fn tenant_id(s: &str) -> Result<TenantId, Box<dyn std::error::Error + Send + Sync>> {
    s.parse::<TenantId>()
        .map_err(|e| format!("--tenant: {e}; tenants are named by id (`bulwark tenant list` shows each one's)").into())
}

/// The value for `vault put`, read whole from stdin before anything is unsealed. Refused, with nothing
/// stored: a terminal on stdin (the value must be piped in), an empty stdin unless `allow_empty` (an
/// upstream command that failed would otherwise replace the record with nothing), and a value over the
/// limit.
fn read_stdin_value(allow_empty: bool) -> Result<Plaintext, Box<dyn std::error::Error + Send + Sync>> {
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        return Err("`vault put` reads the value from stdin: pipe or redirect it in \
                    (e.g. `printf secret | bulwark vault put --tenant ID KEY`); nothing was stored"
            .into());
    }
    // One byte over the limit tells a value that is too large.
    let buf = stdin_unbuffered()
        .and_then(|f| Plaintext::read_from(f, MAX_VALUE_LEN + 1))
        .map_err(|e| format!("cannot read the value from stdin: {e}; nothing was stored"))?;
    if buf.len() > MAX_VALUE_LEN {
        return Err(format!("value on stdin is over the {MAX_VALUE_LEN}-byte limit; nothing was stored").into());
    }
    if buf.is_empty() && !allow_empty {
        return Err("stdin is empty; nothing was stored (pass --allow-empty to store an empty value)".into());
    }
    Ok(buf)
}

/// Standard input as a plain file (a duplicate of descriptor 0): read this way, none of it passes through
/// the process-wide buffer of `std::io::stdin()`, which is never wiped.
fn stdin_unbuffered() -> std::io::Result<File> {
    Ok(File::from(std::io::stdin().as_fd().try_clone_to_owned()?))
}

/// Standard output as a plain file (a duplicate of descriptor 1), for bytes that must not stay behind in
/// std's process-wide stdout buffer, which is never wiped: a record's plaintext, a recovery secret.
fn stdout_unbuffered() -> std::io::Result<File> {
    std::io::stdout().flush()?;
    Ok(File::from(std::io::stdout().as_fd().try_clone_to_owned()?))
}

/// Most bytes of output that holds a recovery secret (a few lines, or one JSON object with a path in it).
const SECRET_OUTPUT_MAX: usize = 64 << 10;

/// Prints what `render` writes, which holds a recovery secret that was just made and is shown only now:
/// built in a zeroizing buffer with room enough that it never moves (no unwiped copy is left behind),
/// then written straight to descriptor 1. If stdout cannot take it, the error says what was made and
/// `lost`: what to do now that the secret is gone.
fn print_secret(lost: &str, render: impl FnOnce(&mut Vec<u8>) -> std::io::Result<()>) -> Fallible {
    let mut buf = Zeroizing::new(Vec::with_capacity(SECRET_OUTPUT_MAX));
    render(&mut buf)
        .and_then(|()| stdout_unbuffered())
        .and_then(|mut out| out.write_all(&buf))
        .map_err(|e| format!("the recovery secret could not be written to stdout ({e}) and is lost: {lost}"))?;
    Ok(())
}

/// The recovery secret in `path` (`-`: stdin), read into a buffer that is wiped and never moves.
fn read_recovery(path: &Path) -> Result<RecoverySecret, Box<dyn std::error::Error + Send + Sync>> {
    let (from, file) = if path.as_os_str() == "-" {
        ("stdin".to_string(), stdin_unbuffered())
    } else {
        (path.display().to_string(), File::open(path))
    };
    let bytes = file
        .and_then(|f| Plaintext::read_from(f, 4096))
        .map_err(|e| format!("cannot read the recovery secret from {from}: {e}"))?;
    let text = std::str::from_utf8(&bytes).map_err(|_| format!("the recovery secret in {from} is not text"))?;
    Ok(RecoverySecret::parse(text)?)
}

fn run(cli: Cli) -> Fallible {
    let json = cli.json;
    match cli.command {
        Command::Boot(BootCmd::Eventlog { file }) => {
            let bytes = bulwark_boot::read_at_most(&file, bulwark_boot::eventlog::MAX_LOG_SIZE)
                .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
            let log = bulwark_boot::eventlog::parse(&bytes)?;
            let replay = bulwark_boot::eventlog::pcr_values_json(&log.replay()?);
            if json {
                outln!("{replay}");
            } else {
                outln!("{}", serde_json::to_string_pretty(&replay)?);
            }
            Ok(())
        }
        Command::Tpm(TpmCmd::PolicyPcr { bank, pcrs }) => {
            let digest = report::policy_pcr(&bank, &pcrs)?;
            if json {
                outln!("{}", json!({ "bank": bank, "policy_digest": hex::encode(digest) }));
            } else {
                outln!("{}", hex::encode(digest));
            }
            Ok(())
        }
        Command::Demo => demo::run(&cli.data_dir, &cli.tpm),
        Command::Init(args) => {
            let dd = DataDir::new(&cli.data_dir)?;
            let (app, recovery) =
                Appliance::init(dd, &cli.tpm, args.profile.as_deref(), args.danger_dev_unbound_executable)?;
            let secret = recovery.expose_text();
            // The secret is borrowed into the output, never copied into a JSON value.
            #[derive(serde::Serialize)]
            struct Initialised<'a> {
                data_dir: &'a Path,
                profile: &'a str,
                tpm: String,
                runtime_pcr: u8,
                runtime_pcr_value: String,
                appliance_recovery_secret: &'a str,
            }
            let out = Initialised {
                data_dir: app.data_dir().root(),
                profile: app.profile().id(),
                tpm: app.tcti().to_string(),
                runtime_pcr: app.measured().pcr,
                runtime_pcr_value: hex::encode(&app.measured().value),
                appliance_recovery_secret: secret.as_str(),
            };
            let lost = format!(
                "{} was initialised, but without this secret its appliance key cannot be resealed after a \
                 legitimate change of measured state; to start over, remove the data dir (on a TPM device, also \
                 clear the TPM from the firmware setup) and run `bulwark init` again with a working stdout",
                out.data_dir.display()
            );
            print_secret(&lost, |buf| {
                if json {
                    serde_json::to_writer(&mut *buf, &out)?;
                    writeln!(buf)
                } else {
                    writeln!(
                        buf,
                        "initialised {} (profile {}, runtime PCR {} = {})",
                        out.data_dir.display(),
                        out.profile,
                        out.runtime_pcr,
                        out.runtime_pcr_value
                    )?;
                    writeln!(
                        buf,
                        "appliance key recovery secret (shown once, store it offline): {}",
                        out.appliance_recovery_secret
                    )
                }
            })
        }
        Command::Ledger(LedgerCmd::Export { sel, out }) => {
            let mut app = Appliance::open(DataDir::new(&cli.data_dir)?, &cli.tpm)?;
            let id = tenant_id(&sel.tenant)?;
            let appliance = app.appliance_ledger()?;
            let t = app.unlock_read_only(id)?;
            t.export(&appliance, &out)?;
            if json {
                outln!("{}", json!({"tenant": id.to_string(), "bundle": out}));
            } else {
                outln!("wrote the auditor bundle of tenant {id} to {}", out.display());
            }
            Ok(())
        }
        Command::Appliance(ApplianceCmd::Pubkey) => {
            let mut app = Appliance::open(DataDir::new(&cli.data_dir)?, &cli.tpm)?;
            out!("{}", app.appliance_ledger()?.public_key().to_spki_pem());
            Ok(())
        }
        Command::Appliance(ApplianceCmd::Reseal { recovery_secret_file }) => {
            let secret = read_recovery(&recovery_secret_file)?;
            let mut app = Appliance::open(DataDir::new(&cli.data_dir)?, &cli.tpm)?;
            let done = app.reseal_appliance(&secret)?;
            if json {
                outln!("{}", json!({"resealed": "appliance", "took_lockout": done.took_lockout}));
            } else {
                outln!("resealed the appliance signing key to the current measured state");
                if done.took_lockout {
                    outln!(
                        "took the TPM's lockout hierarchy (this data dir predates that): no one else can clear the TPM now"
                    );
                }
            }
            Ok(())
        }
        Command::Tenant(cmd) => {
            let mut app = Appliance::open(DataDir::new(&cli.data_dir)?, &cli.tpm)?;
            tenant_cmd(&mut app, cmd, json)
        }
        Command::Vault(cmd) => {
            let mut app = Appliance::open(DataDir::new(&cli.data_dir)?, &cli.tpm)?;
            vault_cmd(&mut app, cmd, json)
        }
    }
}

fn tenant_cmd(app: &mut Appliance, cmd: TenantCmd, json: bool) -> Fallible {
    match cmd {
        TenantCmd::Create { name } => {
            let created = app.create_tenant(&name)?;
            let r = &created.record;
            let secret = created.recovery.expose_text();
            // The secret is borrowed into the output, never copied into a JSON value.
            #[derive(serde::Serialize)]
            struct Created<'a> {
                id: String,
                name: &'a str,
                created_unix: u64,
                liveness_slot: u64,
                recovery_secret: &'a str,
            }
            let out = Created {
                id: r.id.to_string(),
                name: &r.name,
                created_unix: r.created_unix,
                liveness_slot: r.slot.0,
                recovery_secret: secret.as_str(),
            };
            let lost = format!(
                "tenant {} ({}) was created; to get a recovery secret for it, delete it (`bulwark tenant delete \
                 --tenant {} --name={}`) and create it again with a working stdout",
                out.name, out.id, out.id, out.name
            );
            print_secret(&lost, |buf| {
                if json {
                    serde_json::to_writer(&mut *buf, &out)?;
                    writeln!(buf)
                } else {
                    writeln!(buf, "created tenant {} ({})", out.name, out.id)?;
                    writeln!(buf, "recovery secret (shown once, store it offline): {}", out.recovery_secret)
                }
            })?;
            eprintln!("note: the recovery secret is shown only now; store it offline");
            Ok(())
        }
        TenantCmd::List => {
            let list = app.list_tenants()?;
            if json {
                let items: Vec<_> = list
                    .iter()
                    .map(|t| json!({"id": t.id.to_string(), "name": t.name, "created_unix": t.created_unix}))
                    .collect();
                outln!("{}", json!({ "tenants": items }));
            } else {
                for t in list {
                    outln!("{}  {}", t.id, t.name);
                }
            }
            Ok(())
        }
        TenantCmd::Pubkey { sel } => {
            let t = app.unlock_read_only(tenant_id(&sel.tenant)?)?;
            out!("{}", t.public_key().to_spki_pem());
            Ok(())
        }
        TenantCmd::Delete { sel, name } => {
            let rec = app.delete_tenant(tenant_id(&sel.tenant)?, &name)?;
            if json {
                outln!("{}", json!({"deleted": rec.id.to_string(), "name": rec.name}));
            } else {
                outln!("deleted tenant {} ({}); its key is shredded in the TPM", rec.name, rec.id);
            }
            Ok(())
        }
        TenantCmd::Reseal { sel, recovery_secret_file } => {
            let id = tenant_id(&sel.tenant)?;
            let secret = read_recovery(&recovery_secret_file)?;
            app.reseal(id, &secret)?;
            if json {
                outln!("{}", json!({"resealed": id.to_string()}));
            } else {
                outln!("resealed tenant {id} to the current measured state");
            }
            Ok(())
        }
    }
}

fn vault_cmd(app: &mut Appliance, cmd: VaultCmd, json: bool) -> Fallible {
    match cmd {
        VaultCmd::Put { sel, key, allow_empty } => {
            let id = tenant_id(&sel.tenant)?;
            let value = read_stdin_value(allow_empty)?;
            let t = app.unlock(id)?;
            let (version, receipt) = t.put(&key, &value)?;
            if json {
                outln!(
                    "{}",
                    json!({"tenant": id.to_string(), "key": key, "version": version, "receipt": receipt.to_text()})
                );
            }
            Ok(())
        }
        VaultCmd::Get { sel, key } => {
            let id = tenant_id(&sel.tenant)?;
            let t = app.unlock_read_only(id)?;
            let (value, _receipt) = t.get(&key)?;
            // Straight to descriptor 1: no copy of the plaintext stays in std's stdout buffer.
            stdout_unbuffered().and_then(|mut out| out.write_all(&value)).map_err(report::StdoutError)?;
            Ok(())
        }
        VaultCmd::List { sel } => {
            let id = tenant_id(&sel.tenant)?;
            let t = app.unlock_read_only(id)?;
            let (list, _receipt) = t.list()?;
            if json {
                outln!("{}", json!({"tenant": id.to_string(), "records": list}));
            } else {
                for r in list {
                    outln!("{}\tv{}\t{} bytes", r.key, r.version, r.len);
                }
            }
            Ok(())
        }
        VaultCmd::Delete { sel, key } => {
            let id = tenant_id(&sel.tenant)?;
            let t = app.unlock(id)?;
            t.delete(&key)?;
            if json {
                outln!("{}", json!({"tenant": id.to_string(), "deleted": key}));
            }
            Ok(())
        }
        VaultCmd::Verify { sel } => {
            let id = tenant_id(&sel.tenant)?;
            let t = app.unlock_read_only(id)?;
            let (n, _receipt) = t.verify()?;
            if json {
                outln!("{}", json!({"tenant": id.to_string(), "records": n, "ok": true}));
            } else {
                outln!("vault of {id} verified: {n} records");
            }
            Ok(())
        }
    }
}
