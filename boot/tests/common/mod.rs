//! Test helpers: a [`PcrDevice`] over a real swtpm, driven through tpm2-tools.
//!
//! This is not a fake TPM: every call runs a tpm2-tools command against the swtpm the test started.

#![allow(dead_code)]
// Test code: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use bulwark_boot::alg::HashAlg;
use bulwark_boot::eventlog::PcrValues;
use bulwark_boot::pcr::PcrIndex;
use bulwark_boot::runtime::PcrDevice;

/// A tpm2-tools command failed.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ToolError(pub String);

/// Runs `tool args` against the TPM at `tcti`, returning stdout.
pub fn tool(tcti: &str, tool: &str, args: &[&str]) -> Result<String, ToolError> {
    let out = Command::new(tool)
        .args(args)
        .env("TPM2TOOLS_TCTI", tcti)
        .env("TSS2_LOG", "all+NONE")
        .output()
        .map_err(|e| ToolError(format!("cannot run {tool}: {e}")))?;
    if !out.status.success() {
        return Err(ToolError(format!(
            "{tool} {args:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The swtpm's PCRs through tpm2-tools.
pub struct Tpm2Tools {
    pub tcti: String,
    pub scratch: tempfile::TempDir,
}

impl Tpm2Tools {
    pub fn new(tcti: String) -> Self {
        Tpm2Tools { tcti, scratch: tempfile::tempdir().unwrap() }
    }

    /// Whether bank `alg` is active (PCR 0 reads back a value of the right size).
    pub fn bank_active(&mut self, alg: HashAlg) -> bool {
        matches!(self.pcr_read(alg, PcrIndex::new(0).unwrap()), Ok(v) if v.len() == alg.digest_size())
    }
}

pub fn extend_arg(pcr: PcrIndex, digests: &[(HashAlg, Vec<u8>)]) -> String {
    let parts: Vec<String> = digests.iter().map(|(a, d)| format!("{}={}", a.name(), hex::encode(d))).collect();
    format!("{}:{}", pcr.get(), parts.join(","))
}

impl PcrDevice for Tpm2Tools {
    type Error = ToolError;

    fn reset_count(&mut self) -> Result<u32, ToolError> {
        let out = tool(&self.tcti, "tpm2_readclock", &[])?;
        out.lines()
            .find_map(|l| l.trim().strip_prefix("reset_count:"))
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| ToolError(format!("no reset_count in tpm2_readclock output: {out}")))
    }

    fn pcr_read(&mut self, alg: HashAlg, pcr: PcrIndex) -> Result<Vec<u8>, ToolError> {
        let file = self.scratch.path().join("pcr.bin");
        let _ = std::fs::remove_file(&file);
        let sel = format!("{}:{}", alg.name(), pcr.get());
        tool(&self.tcti, "tpm2_pcrread", &["-o", path_str(&file), &sel])?;
        std::fs::read(&file).map_err(|e| ToolError(format!("reading tpm2_pcrread output: {e}")))
    }

    fn pcr_extend(&mut self, pcr: PcrIndex, digests: &[(HashAlg, Vec<u8>)]) -> Result<(), ToolError> {
        tool(&self.tcti, "tpm2_pcrextend", &[&extend_arg(pcr, digests)]).map(|_| ())
    }
}

pub fn path_str(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Runs `tpm2_eventlog` on `bytes` and reads the `pcrs:` section it prints.
pub fn tpm2_eventlog_pcrs(bytes: &[u8]) -> PcrValues {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("log.bin");
    std::fs::write(&file, bytes).unwrap();
    let out = Command::new("tpm2_eventlog").arg(&file).env("TSS2_LOG", "all+NONE").output().unwrap();
    assert!(out.status.success(), "tpm2_eventlog failed: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    let section = text.split("\npcrs:\n").nth(1).expect("a pcrs: section");
    let mut values: PcrValues = BTreeMap::new();
    let mut bank = None;
    for line in section.lines() {
        let t = line.trim();
        if let Some(name) = t.strip_suffix(':') {
            bank = Some(name.parse::<HashAlg>().unwrap());
        } else if let Some((idx, hex)) = t.split_once(':') {
            let v = hex::decode(hex.trim().trim_start_matches("0x")).unwrap();
            values.entry(bank.unwrap()).or_default().insert(idx.trim().parse().unwrap(), v);
        }
    }
    values
}
