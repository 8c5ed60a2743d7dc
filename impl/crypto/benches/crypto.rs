//! Criterion benchmarks of the crypto core (filled in with the crypto modules).
fn main() {}
