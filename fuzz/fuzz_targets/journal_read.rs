//! The ledger's journal reader on arbitrary file contents: it must never panic, and whatever it returns
//! as readable must chain (one epoch, each record starting where the previous ended).

#![no_main]

use bulwark_ledger::journal::read_file;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let f = read_file(data);
    for pair in f.records.windows(2) {
        assert_eq!(pair[0].epoch, pair[1].epoch);
        assert_eq!(pair[0].end(), pair[1].start);
    }
    assert!(f.prefix_end <= data.len());
});
