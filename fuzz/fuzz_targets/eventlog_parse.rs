//! Untrusted TCG event logs: parsing and replay must never panic or allocate without bound.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(log) = bulwark_boot::eventlog::parse(data) {
        let _ = log.replay();
    }
});
