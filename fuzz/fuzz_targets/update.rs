#![no_main]
// Fuzzes mod_rsession::fuzzing::update_header (see src/fuzzing.rs for what it asserts).
libfuzzer_sys::fuzz_target!(|data: &[u8]| mod_rsession::fuzzing::update_header(data));
