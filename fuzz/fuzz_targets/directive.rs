#![no_main]
// Fuzzes mod_rsession::fuzzing::directive (see src/fuzzing.rs for what it asserts).
libfuzzer_sys::fuzz_target!(|data: &[u8]| mod_rsession::fuzzing::directive(data));
