//! A hardware profile file (`init --profile FILE`, or `D/profile.toml`): parsing arbitrary bytes never
//! panics.

#![no_main]

use bulwark_boot::profile::HwProfile;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = HwProfile::from_bytes(data);
});
