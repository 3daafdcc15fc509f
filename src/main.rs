//! The `fhirflight` command line.
fn main() {}
