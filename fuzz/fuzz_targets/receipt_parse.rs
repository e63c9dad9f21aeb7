//! An operation's receipt as a tenant hands it to an auditor: parsing arbitrary text never panics, and a
//! receipt that parses prints back to text that parses to the same receipt.

#![no_main]

use bulwark_ledger::Receipt;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(receipt) = Receipt::parse(text) {
        let again = Receipt::parse(&receipt.to_text()).expect("a printed receipt parses");
        assert!(again == receipt, "a receipt changed on the way through its text");
    }
});
