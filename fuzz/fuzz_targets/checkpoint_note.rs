//! A signed checkpoint (an auditor reads these from a bundle it does not trust): parsing and verifying
//! arbitrary text never panics, and a note that verifies under the pinned key names the tree head that
//! the unverified parse reads. The pinned key is the tenant key whose checkpoints seed the corpus, so the
//! fuzzer starts from notes that verify.

#![no_main]

use std::sync::OnceLock;

use bulwark_ledger::note::SignedCheckpoint;
use bulwark_ledger::{LedgerPublicKey, LedgerScope, TenantId};
use libfuzzer_sys::fuzz_target;

fn pinned() -> &'static (LedgerScope, LedgerPublicKey) {
    static KEY: OnceLock<(LedgerScope, LedgerPublicKey)> = OnceLock::new();
    KEY.get_or_init(|| {
        let tenant: TenantId = "9c6528ccfd406068b9da9f6a286359b9".parse().expect("tenant id");
        let key = LedgerPublicKey::from_spki_pem(include_str!("../corpus/checkpoint_note_key.pem")).expect("key");
        (LedgerScope::Tenant(tenant), key)
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let unverified = SignedCheckpoint::parse_unverified(text);
    let (scope, key) = pinned();
    if let Ok(note) = SignedCheckpoint::verify(text, scope, key) {
        let (_, head) = unverified.expect("a note that verifies also parses");
        assert_eq!(note.head(), head);
    }
});
