//! The scripted walkthrough `bulwark demo`: the appliance's main job until the TLS API exists.
//!
//! On a fresh data dir under `--data-dir`: provision, create two tenants, store data in each, unlock one
//! while the other stays sealed, then change the measured state and show the unlock refused — and that
//! after a clean restart the other tenant's data is untouched.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::appliance::{Appliance, ApplianceError};
use crate::datadir::DataDir;
use crate::outln;

type Fallible = Result<(), Box<dyn std::error::Error + Send + Sync>>;

fn step(n: u32, text: &str) -> Result<(), crate::report::StdoutError> {
    crate::report::outln(format_args!("\n[{n}] {text}"))
}

/// Runs the walkthrough in a new directory `demo-<unix time>` under `parent`: its data dir is `data` there,
/// and the auditor bundle it exports goes beside it.
pub fn run(parent: &Path, tpm_choice: &str) -> Fallible {
    let stamp = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let root = parent.join(format!("demo-{stamp}"));
    outln!("Bulwark walkthrough in {}", root.display());

    step(
        1,
        "Provision the appliance: choose the hardware profile, create the TPM storage root key, measure the runtime.",
    )?;
    let dd = DataDir::new(&root.join("data"))?;
    let (mut app, _appliance_recovery) = Appliance::init(dd.clone(), tpm_choice, None, false)?;
    let managed = app.machine_mut().is_managed_swtpm();
    outln!(
        "    TPM: {}{}; profile {}; runtime PCR {} = {}",
        app.tcti(),
        if managed { " (a swtpm this appliance started for its data dir)" } else { "" },
        app.profile().id(),
        app.measured().pcr,
        hex::encode(&app.measured().value)
    );

    step(2, "Create two tenants, each with its own random KEK sealed by the TPM to this measured state.")?;
    let legal = app.create_tenant("legal")?;
    let trading = app.create_tenant("trading")?;
    outln!("    legal   = {}", legal.record.id);
    outln!("    trading = {}", trading.record.id);
    outln!("    (each got a one-time recovery secret; the walkthrough does not print them)");
    outln!("    the appliance ledger recorded both creations, with each tenant's ML-DSA-65 public key");

    step(3, "Store data in each tenant's vault (only that tenant's KEK is unsealed for each write).")?;
    {
        let t = app.unlock(legal.record.id)?;
        t.put("contract-2026-001", b"Indemnity capped at EUR 2M; governed by Irish law.")?;
        outln!("    legal:   stored contract-2026-001");
    }
    {
        let t = app.unlock(trading.record.id)?;
        t.put("limit/desk-7", b"Intraday VaR limit 1.2M")?;
        outln!("    trading: stored limit/desk-7");
    }

    step(4, "Unlock legal alone; trading stays sealed (its KEK is never unsealed in this step).")?;
    {
        let t = app.unlock_read_only(legal.record.id)?;
        let (v, _) = t.get("contract-2026-001")?;
        outln!("    legal reads contract-2026-001: {:?}", String::from_utf8_lossy(&v));
        let raw = std::fs::read(dd.tenant_dir(&trading.record.id).join("vault.redb"))?;
        let holds = |needle: &[u8]| raw.windows(needle.len()).any(|w| w == needle);
        outln!("    trading's vault file on disk contains its plaintext: {}", holds(b"VaR"));
        outln!("    ... or its record key in the clear: {}", holds(b"limit/desk-7"));
    }

    if !managed {
        outln!(
            "\n[5] Skipped: changing the measured state on a hardware TPM leaves its runtime PCR unusable until the \
             next reboot. Run the walkthrough with --tpm auto on a machine without /dev/tpmrm0 to see it."
        );
        outln!("\nWalkthrough complete.");
        return Ok(());
    }

    step(5, "Change the measured state: extend the runtime PCR, as a tampered binary or config would.")?;
    let pcr = app.profile().runtime_pcr();
    let bank = crate::measure::tpm_bank(app.profile().seal_bank());
    let nonce = Appliance::random_digest();
    let digest = bulwark_tpm::hash_for_bank(bank, &nonce);
    app.machine_mut().tpm.pcr_extend(crate::measure::tpm_pcr(pcr)?, &[(bank, digest.as_slice())])?;
    outln!("    extended PCR {pcr} with a random digest");
    match app.unlock(legal.record.id) {
        Err(e @ ApplianceError::MeasuredStateChanged { .. }) => {
            outln!("    unlock legal refused, as it must be:\n      {e}")
        }
        Err(e) => return Err(format!("unlock failed, but not for the expected reason: {e}").into()),
        Ok(_) => return Err("unlock succeeded after the measured state changed: the seal does not hold".into()),
    }

    step(
        6,
        "Restart cleanly (the swtpm power-cycles, the runtime measures itself again): trading's data is untouched.",
    )?;
    drop(app);
    let mut app = Appliance::open(dd, tpm_choice)?;
    let t = app.unlock_read_only(trading.record.id)?;
    let (v, receipt) = t.get("limit/desk-7")?;
    outln!("    trading reads limit/desk-7: {:?}", String::from_utf8_lossy(&v));
    outln!("    that read was attested first: OAR #{} in trading's ledger", receipt.index());
    outln!("    vault verified: {} record(s)", t.verify()?.0);

    step(7, "An auditor's view: export trading's ledger and verify it offline against pinned public keys.")?;
    let bundle = root.join("audit-bundle-trading");
    let appliance = app.appliance_ledger()?;
    t.export(&appliance, &bundle)?;
    let opts = bulwark_ledger::audit::AuditOptions {
        tenant_key: t.public_key().clone(),
        appliance_key: Some(appliance.public_key().clone()),
        tenant: Some(trading.record.id),
        allow_pending: false,
        known: Vec::new(),
    };
    let report = bulwark_ledger::audit::verify_bundle(&bundle, &opts, &bulwark_ledger::audit::NoProgress)?;
    outln!(
        "    {}: {} OARs, each with its outcome, under {} ML-DSA-65-signed checkpoints; verified",
        report.tenant.scope,
        report.tenant.oars,
        report.tenant.checkpoints
    );
    outln!(
        "    (the same check runs on an air-gapped machine: bulwark-verify {} --key <trading.pem>)",
        bundle.display()
    );

    outln!("\nWalkthrough complete. Data dir left for inspection: {}", app.data_dir().root().display());
    Ok(())
}
