//! TPM 2.0 access for Bulwark.
//!
//! Filled in by the sealed-vaults work: SRK, sealing, offline policy digests, NV, PCRs. The swtpm
//! process manager is here so every user of a software TPM (the appliance's embedded default and
//! every test) starts it the same way.

pub mod swtpm;
