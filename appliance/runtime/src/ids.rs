//! Identifiers the runtime scopes everything by. The ledger crate defines them, because every OAR,
//! signature context and ledger is bound to the same ids; the runtime uses the very same types.

pub use bulwark_ledger::ids::{ApplianceId, IdError, TenantId};
