//! The Bulwark appliance runtime.
//!
//! Trust model: this process acts for one tenant at a time. It unseals only the tenant a command names,
//! holds that tenant's KEK in zeroizing memory, and never writes a KEK, DEK or plaintext record to disk
//! or logs. Nothing here uses `unsafe` (the workspace forbids it outside `tpm/` and `kernels/`).

pub mod datadir;
pub mod ids;
pub mod registry;
pub mod secret;
pub mod vault;
