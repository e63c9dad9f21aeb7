//! An OAR entry from a bundle's entry tiles: decoding arbitrary bytes never panics, and what decodes is the
//! one canonical encoding of its value.

#![no_main]

use bulwark_ledger::oar::Entry;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(entry) = Entry::decode(data) {
        assert_eq!(entry.encode().expect("a decoded entry encodes"), data);
    }
});
