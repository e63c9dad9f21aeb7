//! Bulwark appliance.
fn main() {}
