//! `sender_key_decrypt`: see `bluetick_fuzz::crypto_harness` for what it feeds and checks.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = bluetick_fuzz::crypto_harness::run_sender_key(data);
});
