//! `client_frames`: see `bluetick_fuzz::client_harness` for what it feeds and checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    bluetick_fuzz::client_harness::run(data);
});
