//! Sealed KEK blobs read from disk: the bounded parser must never panic, and what it accepts must
//! re-encode to the same bytes (no field is ignored).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(obj) = bulwark_tpm::SealedObject::from_bytes(data) {
        assert_eq!(obj.to_bytes(), data);
    }
});
