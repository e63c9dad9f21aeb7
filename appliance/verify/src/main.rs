//! Offline verifier.
fn main() {}
