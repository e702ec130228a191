#![no_main]
// Fuzzes mod_rsession::fuzzing::cookie_header (see src/fuzzing.rs for what it asserts).
libfuzzer_sys::fuzz_target!(|data: &[u8]| mod_rsession::fuzzing::cookie_header(data));
