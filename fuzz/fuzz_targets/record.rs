#![no_main]
// Fuzzes mod_rsession::fuzzing::record (see src/fuzzing.rs for what it asserts).
libfuzzer_sys::fuzz_target!(|data: &[u8]| mod_rsession::fuzzing::record(data));
