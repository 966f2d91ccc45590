#![no_main]
//! Fuzz target: `tenure_format::fuzzing::delta_sector` (see that function for what it checks).

libfuzzer_sys::fuzz_target!(|data: &[u8]| tenure_format::fuzzing::delta_sector(data));
