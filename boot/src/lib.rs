//! The first link of Bulwark's trust chain: PCR arithmetic, TCG PC Client event logs, the runtime
//! measurement stage and hardware profiles.
//!
//! # Trust model
//!
//! This crate computes and checks; it never talks to a TPM itself. Everything it reads (event logs,
//! profile files, the runtime's own measurement log) is treated as untrusted input: parsers bound every
//! length by the bytes that remain and by documented caps, reject trailing data, and report the byte
//! offset of what was wrong. Nothing here panics on input; `unwrap`/`expect` appear only in tests.
//!
//! The only trusted facts are the values a TPM reports. An event log is believed only as far as it
//! replays to those values; the runtime stage ([`runtime`]) reaches the TPM through the [`runtime::PcrDevice`]
//! trait, which the appliance implements over its real TPM (and tests over a real swtpm).
//!
//! # What this crate must not depend on
//!
//! No TPM library (`tss-esapi`, `bulwark-tpm`), no async runtime (`tokio`), no GPU code: the offline
//! verifier and the image builder link it, and it has to stay small enough to audit. `bulwark-tpm` is a
//! dev-dependency only, for its swtpm process manager. No `unsafe` (the workspace forbids it here).
//!
//! # Modules
//!
//! - [`alg`]: the hash algorithms of PCR banks, by TCG algorithm id.
//! - [`pcr`]: PCR indices, extend arithmetic, a modelled bank of 24 PCRs.
//! - [`eventlog`]: TCG PC Client event logs (crypto-agile and legacy SHA-1): parse, replay, write, JSON.
//! - [`runtime`]: measure (or verify) the appliance's executable, config and hardware profile into the
//!   runtime PCR, once per TPM boot cycle, with a runtime event log that replays to it.
//! - [`profile`]: hardware profiles (`hw-profiles/*.toml`), loaded and validated.

pub mod alg;
pub mod eventlog;
pub mod pcr;
pub mod profile;
pub mod runtime;

/// Reads the file at `path`, but never more than `max` + 1 bytes, so that a caller can refuse an
/// oversized input without reading it all: a device or pipe named as the file (`/dev/zero`) would
/// otherwise be read until memory runs out. A result longer than `max` means the input is over the cap.
pub fn read_at_most(path: &std::path::Path, max: usize) -> std::io::Result<Vec<u8>> {
    use std::io::Read as _;
    let limit = u64::try_from(max).unwrap_or(u64::MAX).saturating_add(1);
    let mut bytes = Vec::new();
    std::fs::File::open(path)?.take(limit).read_to_end(&mut bytes)?;
    Ok(bytes)
}

pub use alg::HashAlg;
pub use pcr::PcrIndex;
