//! The Bulwark appliance runtime.
//!
//! Trust model: this process acts for one tenant at a time. It unseals only the tenant a command names,
//! holds that tenant's KEK in zeroizing memory, and never writes a KEK, DEK or plaintext record to disk
//! or logs. Nothing here uses `unsafe` (the workspace forbids it outside `tpm/` and `kernels/`).
//! `expect`/`unwrap` are not used outside tests; every failure is a typed error naming its cause.

// stdout is written through `out!`/`outln!`, which return a failed write instead of panicking.
#![deny(clippy::print_stdout)]

pub mod appliance;
pub mod cli;
pub mod datadir;
pub mod demo;
pub mod ids;
pub mod machine;
pub mod measure;
pub mod registry;
pub mod report;
pub mod secret;
pub mod vault;
