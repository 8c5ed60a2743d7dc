//! `wire_decode`: see `bluetick_fuzz::wire_harness` for what it feeds and checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    bluetick_fuzz::wire_harness::run(data);
});
